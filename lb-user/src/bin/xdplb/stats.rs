//! `xdplb stats`: the counters once, `--watch` them with rates, or `--zero` them.

use std::time::{Duration, Instant};

use hyper::Method;
use lb_user::{
    api::{StatsView, ZeroView},
    client::{Endpoint, call},
    rates::{VipRate, si, vip_rates},
    render::{backend_line, vip_line},
};

use crate::{cli::Output, commands::print};

/// The counters and traffic as the table shows them.
fn table(stats: &StatsView) -> String {
    let mut out: String = stats
        .counters
        .iter()
        .chain(&stats.events)
        .filter(|(_, v)| *v > 0)
        .chain(&stats.tables)
        .map(|(name, v)| format!("{name:<24} {v:>14}\n"))
        .collect();
    for v in &stats.vips {
        out += &vip_line(v);
        out += &v.backends.iter().map(backend_line).collect::<String>();
    }
    out
}

/// The rates of one frame as the table shows them.
fn rate_lines(rates: &[VipRate], secs: f64) -> String {
    let mut out = format!(
        "rates over {secs:.2} s{:>31}{:>12}{:>14}\n",
        "packets/s", "bits/s", "new flows/s"
    );
    for v in rates {
        out += &format!(
            "VIP {:<36} {:>12} {:>12} {:>14}\n",
            v.vip,
            si(v.rate.packets_per_sec),
            si(v.rate.bits_per_sec),
            si(v.rate.new_flows_per_sec)
        );
        for b in &v.backends {
            out += &format!(
                "  backend {:<32} {:>12} {:>12} {:>14}\n",
                b.address.to_string(),
                si(b.rate.packets_per_sec),
                si(b.rate.bits_per_sec),
                si(b.rate.new_flows_per_sec)
            );
        }
    }
    out
}

/// One frame of `stats --watch -o json`: a line of its own.
#[derive(serde::Serialize)]
struct Frame<'a> {
    at: String,
    /// Seconds since the frame before (none for the first).
    interval_secs: Option<f64>,
    stats: &'a StatsView,
    /// Rates since the frame before (empty for the first).
    rates: Vec<VipRate>,
}

pub async fn command(
    watch: Option<f64>,
    zero: bool,
    endpoint: Endpoint<'_>,
    output: Output,
) -> anyhow::Result<()> {
    if zero {
        let view: ZeroView = call(endpoint, Method::POST, "/v1/stats/zero", None).await?;
        return print(output, &view, || {
            format!(
                "zeroed: {}\nkept: {}\n",
                view.zeroed.join(", "),
                view.kept.join(", ")
            )
        });
    }
    let Some(period) = watch else {
        let stats: StatsView = call(endpoint, Method::GET, "/v1/stats", None).await?;
        return print(output, &stats, || table(&stats));
    };
    let period = Duration::from_secs_f64(period);
    let mut before: Option<(Instant, StatsView)> = None;
    let mut next = Instant::now();
    loop {
        let stats: StatsView = call(endpoint, Method::GET, "/v1/stats", None).await?;
        let (now, at) = (Instant::now(), jiff::Timestamp::now());
        let secs = before
            .as_ref()
            .map(|(then, _)| now.duration_since(*then).as_secs_f64());
        let rates = match (&before, secs) {
            (Some((_, old)), Some(secs)) => vip_rates(&old.vips, &stats.vips, secs),
            _ => Vec::new(),
        };
        match output {
            Output::Json => println!(
                "{}",
                serde_json::to_string(&Frame {
                    at: at.to_string(),
                    interval_secs: secs,
                    stats: &stats,
                    rates: rates.clone(),
                })?
            ),
            Output::Table => {
                let mut out = format!("--- {at:.3}\n");
                out += &table(&stats);
                if let Some(secs) = secs {
                    out += &rate_lines(&rates, secs);
                }
                print!("{out}");
            }
        }
        use std::io::Write as _;
        std::io::stdout().flush()?;
        before = Some((now, stats));
        next += period;
        tokio::time::sleep_until(next.max(Instant::now()).into()).await;
    }
}
