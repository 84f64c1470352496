//! Prometheus metrics, built from the maps at every scrape: [`collect`] reads them (under the
//! agent's lock), [`encode`] writes them in the classic Prometheus text format (without it).
//!
//! The classic format (`text/plain; version=0.0.4`, [`CONTENT_TYPE`]) rather than OpenMetrics:
//! `promtool check metrics` and every Prometheus version parse it, and it keeps the types.

use prometheus_client::{
    encoding::text::encode_registry,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    agent::{Agent, Health},
    balancer::BackendState,
};

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics of the agent and its data path, as [`CONTENT_TYPE`] text.
pub fn render(agent: &Agent) -> anyhow::Result<String> {
    Ok(encode(&collect(agent)?)?)
}

/// `registry` in the classic Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    encode_registry(&mut out, registry)?;
    Ok(openmetrics_to_classic(&out))
}

/// The classic text format of prometheus-client's OpenMetrics text (without `# EOF`): a
/// counter family `x` has samples `x_total`, which the classic format describes as `x_total`
/// in its `# HELP` and `# TYPE` lines; `# UNIT` lines have no classic equivalent.
pub fn openmetrics_to_classic(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::with_capacity(text.len() + 256);
    let counter_name = |line: &str| {
        line.strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
            .map(str::to_owned)
    };
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("# UNIT ") || *line == "# EOF" {
            continue;
        }
        if let Some(name) = counter_name(line) {
            out += &format!("# TYPE {name}_total counter\n");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            let counter = lines[i + 1..]
                .iter()
                .take_while(|l| l.starts_with('#'))
                .find_map(|l| counter_name(l))
                .is_some_and(|n| n == name);
            if counter {
                out += &format!("# HELP {name}_total{}\n", &rest[name.len()..]);
                continue;
            }
        }
        out += line;
        out.push('\n');
    }
    out
}

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// The metrics of the agent and its data path, read now: the only part that needs the agent.
pub fn collect(agent: &Agent) -> anyhow::Result<Registry> {
    let mut registry = Registry::with_prefix("xdplb");
    let info = gauge_family(&mut registry, "agent_info", "The agent: version");
    info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])
        .set(1);
    let uptime = gauge_family(
        &mut registry,
        "agent_uptime_seconds",
        "Seconds since the agent started",
    );
    uptime
        .get_or_create(&vec![])
        .set(agent.started.elapsed().as_secs() as i64);
    if let Some(cluster) = &agent.cluster {
        let status = cluster.status();
        gauge_family(
            &mut registry,
            "cluster_store_up",
            "Cluster mode: 1 while etcd answers, 0 while the agent serves its last config",
        )
        .get_or_create(&vec![])
        .set(i64::from(status.up));
        gauge_family(
            &mut registry,
            "cluster_applied_revision",
            "Cluster mode: the etcd revision of the config this agent runs",
        )
        .get_or_create(&vec![])
        .set(status.applied_revision);
    }

    let packets = counter_family(
        &mut registry,
        "packets",
        "Packets by outcome (forwarded, passed, dropped by reason)",
    );
    for (counter, value) in agent.pinned.counters()?.iter() {
        packets
            .get_or_create(&vec![("outcome", counter.name().to_owned())])
            .inc_by(value);
    }
    let events = counter_family(
        &mut registry,
        "conntrack_events",
        "Connection-table events: lost_state (a non-SYN TCP packet of no tracked flow), \
         embryonic_insert, promoted, stateless_new_flow (over the new-flow rate limit)",
    );
    let lost_state = counter_family(
        &mut registry,
        "conntrack_lost_state_packets",
        "Non-SYN TCP packets of no tracked flow (connection-table misses: state lost to a \
         restart, an eviction or another gateway), scheduled as new flows",
    );
    for (event, value) in agent.pinned.events()?.iter() {
        events
            .get_or_create(&vec![("event", event.name().to_owned())])
            .inc_by(value);
        if event.name() == "lost_state" {
            lost_state.get_or_create(&vec![]).inc_by(value);
        }
    }

    let tables = gauge_family(
        &mut registry,
        "table_entries",
        "Connection tables at the last count: conntrack and embryonic entries (expired ones not \
         yet evicted included), embryonic_live (half-open flows within the SYN timeout), and \
         each table's capacity",
    );
    let capacity = gauge_family(
        &mut registry,
        "table_capacity_entries",
        "Entries each connection table holds at most (conntrack, embryonic)",
    );
    let used = gauge_family(
        &mut registry,
        "table_used_entries",
        "Entries in each connection table at the last count (conntrack, embryonic), expired \
         ones not yet evicted included",
    );
    for (name, value) in agent.table_fill()? {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        tables
            .get_or_create(&vec![("table", name.to_owned())])
            .set(value);
        if let Some(table) = name.strip_suffix("_capacity") {
            capacity
                .get_or_create(&vec![("table", table.to_owned())])
                .set(value);
        } else if let Some(table) = name.strip_suffix("_entries") {
            used.get_or_create(&vec![("table", table.to_owned())])
                .set(value);
        }
    }

    if let Some(bgp) = &agent.bgp {
        let announced = gauge_family(
            &mut registry,
            "bgp_announced",
            "1 if the VIP address is announced by BGP now, 0 if withdrawn ([bgp] announce)",
        );
        for addr in &bgp.configured {
            announced
                .get_or_create(&vec![("vip", addr.to_string())])
                .set(i64::from(bgp.announced.contains(addr)));
        }
        let sessions = gauge_family(
            &mut registry,
            "bgp_session_established",
            "1 if the BGP session with the peer is established",
        );
        for s in &bgp.sessions {
            sessions
                .get_or_create(&vec![("peer", s.name.clone())])
                .set(i64::from(s.info.starts_with("Established")));
        }
    }

    let vip_packets = counter_family(&mut registry, "vip_packets", "Packets per VIP");
    let vip_bytes = counter_family(&mut registry, "vip_bytes", "Bytes per VIP");
    let vip_flows = counter_family(&mut registry, "vip_new_flows", "New flows per VIP");
    let be_packets = counter_family(
        &mut registry,
        "backend_packets",
        "Packets per backend, both directions",
    );
    let be_bytes = counter_family(
        &mut registry,
        "backend_bytes",
        "Bytes per backend, both directions",
    );
    let be_flows = counter_family(&mut registry, "backend_new_flows", "New flows per backend");
    let be_active = gauge_family(
        &mut registry,
        "backend_active_connections",
        "Open tracked flows per backend",
    );
    let be_weight = gauge_family(&mut registry, "backend_weight", "Weight per backend");
    let be_up = gauge_family(
        &mut registry,
        "backend_up",
        "1 if the backend takes new flows",
    );
    let be_healthy = gauge_family(
        &mut registry,
        "backend_healthy",
        "Health check result (1 healthy), for checked backends",
    );
    let admin_state = gauge_family(
        &mut registry,
        "backend_admin_state",
        "1 for a backend's admin state as the operator set it (up, draining, down), whatever \
         its health",
    );
    let health_state = gauge_family(
        &mut registry,
        "backend_health_state",
        "1 for a backend's operational state from its health checks (healthy, failing, \
         unchecked)",
    );
    let last_ok = gauge_family(
        &mut registry,
        "backend_last_check_success",
        "1 if the backend's last health check passed, 0 if it failed; absent before the first",
    );
    let last_at = Family::<Labels, FloatGauge>::default();
    registry.register(
        "backend_last_check_timestamp_seconds",
        "When the backend's last health check ended (Unix time)",
        last_at.clone(),
    );
    let transitions = counter_family(
        &mut registry,
        "health_transitions",
        "Health check flips per backend",
    );
    let checks = counter_family(
        &mut registry,
        "health_checks",
        "Health checks run per backend",
    );
    let check_failures = counter_family(
        &mut registry,
        "health_check_failures",
        "Failed health checks per backend, by cause: backend (counted against it) or local (the \
         agent's own: out of file descriptors, memory or ports, or a timer that fired late; \
         not counted against it)",
    );
    let vip_info = gauge_family(
        &mut registry,
        "vip_info",
        "A VIP's settings as labels: scheduler, forwarding (nat, dsr-l2, ipip)",
    );
    for info in agent.balancer.vips() {
        let view = agent.vip_view(&info)?;
        let vip = vec![("vip", view.vip.clone())];
        vip_info
            .get_or_create(&vec![
                ("vip", view.vip.clone()),
                ("scheduler", view.scheduler.to_string()),
                ("forwarding", view.forwarding.to_string()),
            ])
            .set(1);
        vip_packets.get_or_create(&vip).inc_by(view.packets);
        vip_bytes.get_or_create(&vip).inc_by(view.bytes);
        vip_flows.get_or_create(&vip).inc_by(view.new_flows);
        for b in &view.backends {
            let labels = vec![
                ("vip", view.vip.clone()),
                ("backend", b.address.to_string()),
            ];
            be_packets.get_or_create(&labels).inc_by(b.packets);
            be_bytes.get_or_create(&labels).inc_by(b.bytes);
            be_flows.get_or_create(&labels).inc_by(b.new_flows);
            be_active
                .get_or_create(&labels)
                .set(i64::from(b.active_connections));
            be_weight.get_or_create(&labels).set(i64::from(b.weight));
            let up = b.state == BackendState::Up && b.weight > 0;
            be_up.get_or_create(&labels).set(i64::from(up));
            if let Some(healthy) = b.healthy {
                be_healthy.get_or_create(&labels).set(i64::from(healthy));
            }
            let with = |k: &'static str, v: String| {
                let mut labels = labels.clone();
                labels.push((k, v));
                labels
            };
            let admin = b.admin_state.unwrap_or(b.state);
            for state in [BackendState::Up, BackendState::Draining, BackendState::Down] {
                admin_state
                    .get_or_create(&with("state", state.to_string()))
                    .set(i64::from(admin == state));
            }
            for health in [Health::Healthy, Health::Failing, Health::Unchecked] {
                health_state
                    .get_or_create(&with("state", health.to_string()))
                    .set(i64::from(b.health == health));
            }
            if let (Some(ok), Some(at)) = (b.last_check_ok, b.last_check) {
                last_ok.get_or_create(&labels).set(i64::from(ok));
                last_at.get_or_create(&labels).set(at);
            }
            if let Some(stats) = agent
                .monitor
                .as_ref()
                .and_then(|m| m.stats(&(info.vip, b.address)))
            {
                transitions.get_or_create(&labels).inc_by(stats.transitions);
                checks.get_or_create(&labels).inc_by(stats.checks);
                for (cause, n) in [("backend", stats.failures), ("local", stats.local_failures)] {
                    let mut labels = labels.clone();
                    labels.push(("cause", cause.to_owned()));
                    check_failures.get_or_create(&labels).inc_by(n);
                }
            }
        }
    }
    autoscale(agent, &mut registry);
    Ok(registry)
}

/// The autoscalers: signal, forecast, desired and actual backends, decisions and hook failures.
fn autoscale(agent: &Agent, registry: &mut Registry) {
    let signal = Family::<Labels, FloatGauge>::default();
    registry.register(
        "autoscale_signal",
        "The signal the VIP's policy scales on (total over its backends)",
        signal.clone(),
    );
    let forecast = Family::<Labels, FloatGauge>::default();
    registry.register(
        "autoscale_forecast",
        "The predictive policy's forecast peak over its horizon",
        forecast.clone(),
    );
    let desired = gauge_family(
        registry,
        "autoscale_desired_backends",
        "Capacity the policy wants, in units of weight (backends, when every weight is 1)",
    );
    let capacity = gauge_family(
        registry,
        "autoscale_capacity",
        "Capacity of the pool in units of weight by state (in-rotation, allocated)",
    );
    let backends = gauge_family(
        registry,
        "autoscale_backends",
        "Backends of the pool by state (in-rotation, provisioning, draining, standby)",
    );
    let decisions = counter_family(
        registry,
        "autoscale_decisions",
        "Scaling decisions by direction (out, in)",
    );
    let schedule_min = gauge_family(
        registry,
        "autoscale_schedule_min_backends",
        "The pool's minimum now, in units of weight, raised by schedule windows (VIPs with a schedule)",
    );
    let hook_runs = counter_family(registry, "autoscale_hook_runs", "Hook runs by hook");
    let hook_failures = counter_family(
        registry,
        "autoscale_hook_failures",
        "Hook failures (non-zero exit, timeout, bad output) by hook",
    );
    for (vip, scaler) in &agent.autoscale {
        let s = scaler.status(agent.balancer.vip(vip).ok().as_ref());
        let labels = vec![("vip", s.vip.clone())];
        let with = |k: &'static str, v: &str| vec![("vip", s.vip.clone()), (k, v.to_owned())];
        signal
            .get_or_create(&with("signal", &s.signal))
            .set(s.sample.get(scaler.config().signal));
        if let Some(f) = s.forecast {
            forecast.get_or_create(&labels).set(f);
        }
        desired.get_or_create(&labels).set(i64::from(s.desired));
        for (state, units) in [
            ("in-rotation", s.serving_capacity),
            ("allocated", s.capacity),
        ] {
            capacity
                .get_or_create(&with("state", state))
                .set(i64::from(units));
        }
        if let Some(sc) = &s.schedule {
            schedule_min.get_or_create(&labels).set(i64::from(sc.min));
        }
        for (state, n) in [
            ("in-rotation", s.serving as usize),
            ("provisioning", s.provisioning.len()),
            ("draining", s.draining.len()),
            ("standby", s.standby.len()),
        ] {
            backends.get_or_create(&with("state", state)).set(n as i64);
        }
        decisions
            .get_or_create(&with("direction", "out"))
            .inc_by(s.scale_outs);
        decisions
            .get_or_create(&with("direction", "in"))
            .inc_by(s.scale_ins);
        for (hook, h) in [
            ("scale-up", &s.scale_up_hook),
            ("scale-down", &s.scale_down_hook),
        ] {
            hook_runs.get_or_create(&with("hook", hook)).inc_by(h.runs);
            hook_failures
                .get_or_create(&with("hook", hook))
                .inc_by(h.failures);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_described_by_their_sample_names() {
        let mut registry = Registry::with_prefix("xdplb");
        let c = counter_family(&mut registry, "vip_new_flows", "New flows per VIP");
        c.get_or_create(&vec![("vip", "198.19.0.1:80/tcp".to_owned())])
            .inc_by(3);
        let g = gauge_family(&mut registry, "table_capacity_entries", "Capacity");
        g.get_or_create(&vec![("table", "conntrack".to_owned())])
            .set(7);
        let text = encode(&registry).unwrap();
        assert_eq!(
            text,
            "# HELP xdplb_vip_new_flows_total New flows per VIP.\n\
             # TYPE xdplb_vip_new_flows_total counter\n\
             xdplb_vip_new_flows_total{vip=\"198.19.0.1:80/tcp\"} 3\n\
             # HELP xdplb_table_capacity_entries Capacity.\n\
             # TYPE xdplb_table_capacity_entries gauge\n\
             xdplb_table_capacity_entries{table=\"conntrack\"} 7\n"
        );
    }

    #[test]
    fn units_and_eof_are_dropped() {
        let text = "# HELP a_seconds A.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\n\
                    a_seconds_total 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_classic(text),
            "# HELP a_seconds_total A.\n# TYPE a_seconds_total counter\na_seconds_total 1\n"
        );
    }
}
