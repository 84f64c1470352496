//! Text for people: one line per VIP and backend, `autoscale status`, as the CLI prints them
//! and the agent logs them.

use std::net::SocketAddr;

use crate::{
    api::{BackendView, VipView},
    autoscale::live::Status as AutoscaleStatus,
};

pub fn vip_line(v: &VipView) -> String {
    format!(
        "VIP {:<28} {:<21} {:<6} packets {:>10} bytes {:>12} new flows {:>8}\n",
        v.vip,
        v.scheduler.to_string(),
        v.forwarding.to_string(),
        v.packets,
        v.bytes,
        v.new_flows
    ) + &sources_line(v)
        + &health_line(v)
        + &hooks_line(v)
}

/// The VIP's notify commands and sorry backend, if any: `  hooks: notify-down /bin/page; sorry
/// 10.0.9.2:8080`.
fn hooks_line(v: &VipView) -> String {
    let mut parts = Vec::new();
    if !v.notify_up.is_empty() {
        parts.push(format!("notify-up {}", v.notify_up.join(" ")));
    }
    if !v.notify_down.is_empty() {
        parts.push(format!("notify-down {}", v.notify_down.join(" ")));
    }
    if let Some(sorry) = v.sorry {
        parts.push(format!("sorry {sorry}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("  hooks: {}\n", parts.join("; "))
    }
}

/// The VIP's health check, if it has one: `  health: kind http, http-path /healthz, ...`.
fn health_line(v: &VipView) -> String {
    let Some(check) = &v.health_check else {
        return String::new();
    };
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(check) else {
        return String::new();
    };
    let mut parts = vec![format!("kind {}", check.kind.as_deref().unwrap_or("none"))];
    for (key, value) in fields.iter().filter(|(k, _)| *k != "kind") {
        match value {
            serde_json::Value::String(s) => parts.push(format!("{key} {s}")),
            other => parts.push(format!("{key} {other}")),
        }
    }
    format!("  health: {}\n", parts.join(", "))
}

/// The VIP's source checks, if it has any: `  sources: allow ...; deny ...; limit ...`.
fn sources_line(v: &VipView) -> String {
    let mut parts = Vec::new();
    if !v.allow.is_empty() {
        parts.push(format!("allow {}", v.allow.join(" ")));
    }
    if !v.deny.is_empty() {
        parts.push(format!("deny {}", v.deny.join(" ")));
    }
    if let Some(rate) = v.source_rate_limit {
        let len = v
            .source_prefix_len
            .map_or(String::new(), |l| format!(" per /{l}"));
        parts.push(format!("limit {rate} new flows/s{len}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("  sources: {}\n", parts.join("; "))
    }
}

/// One backend as a line: its admin state (as the operator set it) and its operational state
/// (the health checks', with the last error while failing) side by side.
pub fn backend_line(b: &BackendView) -> String {
    let admin = b.admin_state.unwrap_or(b.state);
    let mut health = b.health.to_string();
    if b.health == crate::agent::Health::Failing
        && let Some(error) = &b.last_error
    {
        let ago = b
            .last_error_at
            .and_then(|at| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?;
                Some((now.as_secs_f64() - at).max(0.0))
            })
            .map(|s| format!(", {s:.0}s ago"))
            .unwrap_or_default();
        health = format!("failing ({error}{ago})");
    }
    format!(
        "  backend {:<24} w {:>5} admin {:<8} health {:<9} active {:>6}{} packets {:>10} bytes {:>12} new flows {:>8}\n",
        b.address.to_string(),
        b.weight,
        admin.to_string(),
        health,
        b.active_connections,
        if b.drained { " drained" } else { "        " },
        b.packets,
        b.bytes,
        b.new_flows
    )
}

/// `autoscale status` of one VIP, as text.
pub fn autoscale_lines(s: &AutoscaleStatus) -> String {
    // Each with its weight, unless 1.
    let addrs = |v: &[SocketAddr]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.iter()
                .map(|a| match s.weights.get(a) {
                    Some(&w) if w != 1 => format!("{a}@{w}"),
                    _ => a.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let mut out = format!(
        "{}  policy {} on {}{}, {}..={} backends{}\n",
        s.vip,
        s.policy,
        s.signal,
        s.target_per_backend
            .map_or(String::new(), |t| format!(", target {t}/backend")),
        s.min,
        s.max,
        if s.dry_run { " [dry run]" } else { "" }
    );
    let m = &s.sample;
    out += &format!(
        "  signal        active {:.0}  new/s {:.1}  packets/s {:.0}  bytes/s {:.0}\n",
        m.active_connections, m.new_connections, m.packets, m.bytes
    );
    out += &format!(
        "  forecast      {}\n",
        s.forecast.map_or("-".to_owned(), |f| format!("{f:.0}"))
    );
    out += &format!(
        "  capacity      desired {}  allocated {}  in rotation {}\n",
        s.desired, s.capacity, s.serving_capacity
    );
    out += &format!(
        "  backends      allocated {}  in rotation {}\n",
        s.allocated, s.serving
    );
    out += &format!("  provisioning  {}\n", addrs(&s.provisioning));
    out += &format!("  draining      {}\n", addrs(&s.draining));
    out += &format!("  standby       {}\n", addrs(&s.standby));
    out += &format!("  reason        {}\n", s.reason);
    if let Some(sc) = &s.schedule {
        out += &format!("  schedule      now {}..={} backends\n", sc.min, sc.max);
        for o in &sc.active {
            out += &format!("    active      {o}\n");
        }
        match &sc.next {
            Some(o) => out += &format!("    next        {o}\n"),
            None => out += "    next        -\n",
        }
    }
    for (name, h) in [
        ("scale-up", &s.scale_up_hook),
        ("scale-down", &s.scale_down_hook),
    ] {
        if h.runs > 0 {
            out += &format!(
                "  {name:<13} runs {}  failures {}{}\n",
                h.runs,
                h.failures,
                h.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!("  last error: {e}"))
            );
        }
    }
    out += &format!("  decisions     {} out, {} in\n", s.scale_outs, s.scale_ins);
    for d in &s.decisions {
        out += &format!(
            "    {:>6}s  {} -> {}  {}{}: {}\n",
            d.at_s,
            d.from,
            d.to,
            d.reason,
            if d.dry_run { " [dry run]" } else { "" },
            d.actions.join(", ")
        );
    }
    out
}

/// The BGP part of `xdplb status`: what is announced, what is held back, each session.
pub fn bgp_lines(bgp: &crate::cluster::bgp::BgpStatus) -> String {
    let list = |addrs: &[std::net::IpAddr]| {
        if addrs.is_empty() {
            "-".to_owned()
        } else {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let held: Vec<std::net::IpAddr> = bgp
        .configured
        .iter()
        .filter(|a| !bgp.announced.contains(a))
        .copied()
        .collect();
    let mut out = format!(
        "announced  {}\nwithdrawn  {}\n",
        list(&bgp.announced),
        list(&held)
    );
    for s in &bgp.sessions {
        out += &format!("bgp {:<6} {} {}\n", s.name, s.state, s.info);
    }
    if let Some(err) = &bgp.error {
        out += &format!("bgp error  {err}\n");
    }
    out
}

/// The parts of `xdplb status` after the counts: XDP modes, program, tables, files and
/// endpoints, health.
pub fn status_lines(s: &crate::api::StatusView) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let pct = |e: u64, c: u64| {
        if c == 0 {
            0.0
        } else {
            e as f64 * 100.0 / c as f64
        }
    };
    let t = &s.tables;
    let mut out = String::new();
    for x in &s.xdp {
        out += &format!("xdp        {} {}\n", x.name, x.mode);
    }
    out += &format!(
        "program    tag {} layout {} object {} ({})\n",
        opt(s.program.tag.clone()),
        s.program.layout,
        opt(s.program.object.clone()),
        s.program.origin
    );
    out += &format!(
        "conntrack  {}/{} ({:.1}%)\nembryonic  {}/{} ({:.1}%)\n",
        t.conntrack_entries,
        t.conntrack_capacity,
        pct(t.conntrack_entries, t.conntrack_capacity),
        t.embryonic_entries,
        t.embryonic_capacity,
        pct(t.embryonic_entries, t.embryonic_capacity)
    );
    out += &format!(
        "config     {}\nstate      {}\napi        {}{}\nmetrics    {}\n",
        opt(s
            .about
            .config_file
            .as_ref()
            .map(|p| p.display().to_string())),
        s.state_file,
        s.about.api_socket.display(),
        s.about
            .api_tcp
            .map_or(String::new(), |a| format!(" and tcp {a}")),
        opt(s.about.metrics.map(|a| a.to_string()))
    );
    let h = &s.health;
    out += &format!(
        "health     {} up, {} draining, {} down (admin); {} healthy, {} failing, {} unchecked\n",
        h.up, h.draining, h.down, h.healthy, h.failing, h.unchecked
    );
    out
}
