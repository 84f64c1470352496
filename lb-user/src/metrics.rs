//! Prometheus metrics (text format), built from the maps at every scrape.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::agent::Agent;

type Labels = Vec<(&'static str, String)>;

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

/// The metrics of the agent and its data path.
pub fn render(agent: &Agent) -> anyhow::Result<String> {
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
    for (event, value) in agent.pinned.events()?.iter() {
        events
            .get_or_create(&vec![("event", event.name().to_owned())])
            .inc_by(value);
    }

    let tables = gauge_family(
        &mut registry,
        "table_entries",
        "Connection tables at the last count: conntrack and embryonic entries (expired ones not \
         yet evicted included), embryonic_live (half-open flows within the SYN timeout), and \
         each table's capacity",
    );
    for (name, value) in agent.table_fill()? {
        tables
            .get_or_create(&vec![("table", name.to_owned())])
            .set(i64::try_from(value).unwrap_or(i64::MAX));
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
            let up = b.state == crate::balancer::BackendState::Up && b.weight > 0;
            be_up.get_or_create(&labels).set(i64::from(up));
            if let Some(healthy) = b.healthy {
                be_healthy.get_or_create(&labels).set(i64::from(healthy));
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
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// The autoscalers: signal, forecast, desired and actual backends, decisions and hook failures.
fn autoscale(agent: &Agent, registry: &mut Registry) {
    let signal = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(
        "autoscale_signal",
        "The signal the VIP's policy scales on (total over its backends)",
        signal.clone(),
    );
    let forecast = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(
        "autoscale_forecast",
        "The predictive policy's forecast peak over its horizon",
        forecast.clone(),
    );
    let desired = gauge_family(
        registry,
        "autoscale_desired_backends",
        "Backends the policy wants",
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
