//! `xdplb conn list` and `xdplb conn flush`: the connection table through the API.

use hyper::Method;
use lb_user::{
    client::{Endpoint, call, segment},
    conns::{ConnList, ConnView, FlushView},
};

use crate::{
    cli::{ConnCommand, ConnFilterArgs, Output},
    commands::print,
};

/// `/v1/connections` with the filter (and limit) as its query.
fn path(filter: &ConnFilterArgs, limit: Option<usize>) -> String {
    let mut query = Vec::new();
    if let Some(vip) = &filter.vip {
        query.push(format!("vip={}", segment(&vip.to_string())));
    }
    if let Some(backend) = &filter.backend {
        query.push(format!("backend={}", segment(&backend.to_string())));
    }
    if let Some(limit) = limit {
        query.push(format!("limit={limit}"));
    }
    if query.is_empty() {
        "/v1/connections".to_owned()
    } else {
        format!("/v1/connections?{}", query.join("&"))
    }
}

pub async fn command(
    command: ConnCommand,
    endpoint: Endpoint<'_>,
    output: Output,
) -> anyhow::Result<()> {
    match command {
        ConnCommand::List { filter, limit } => {
            let list: ConnList =
                call(endpoint, Method::GET, &path(&filter, Some(limit)), None).await?;
            print(output, &list, || table(&list))
        }
        ConnCommand::Flush { filter } => {
            let view: FlushView =
                call(endpoint, Method::DELETE, &path(&filter, None), None).await?;
            print(output, &view, || {
                format!(
                    "flushed {} flows ({} reverse translations)\n",
                    view.flushed, view.reverse_flushed
                )
            })
        }
    }
}

fn line(c: &ConnView) -> String {
    format!(
        "{:<5} {:<45} {:<45} {:<45} {:<12} {:>8} {:>10.1}{}\n",
        c.protocol.to_string().to_uppercase(),
        c.client.to_string(),
        c.vip,
        c.backend
            .map_or_else(|| format!("? (id {})", c.backend_id), |b| b.to_string()),
        c.state,
        c.age_secs,
        c.idle_secs,
        match (c.table.as_str(), c.expired) {
            ("embryonic", true) => "  embryonic expired",
            ("embryonic", false) => "  embryonic",
            (_, true) => "  expired",
            _ => "",
        }
    )
}

fn table(list: &ConnList) -> String {
    let mut out = format!(
        "{:<5} {:<45} {:<45} {:<45} {:<12} {:>8} {:>10}\n",
        "PROTO", "CLIENT", "VIP", "BACKEND", "STATE", "AGE (s)", "IDLE (s)"
    );
    out.extend(list.connections.iter().map(line));
    if list.more > 0 {
        out += &format!(
            "... and {} more (of {} matching; --limit)\n",
            list.more, list.matched
        );
    } else {
        out += &format!("{} flows\n", list.matched);
    }
    out
}
