//! Backends leaving and coming back under traffic, through a running agent: a health check
//! takes a failed backend down and brings it back, and a drained backend keeps its
//! connections while new ones avoid it.

use std::{
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, BACKEND_PORT, BACKENDS, VIP, VIP_ADDR, backend_addr, serve, strs, vip_args},
    netns::{Topology, ident},
    traffic::{Tally, chatter, hold, spread},
};
use lb_user::balancer::BackendState;

/// A tcp health check (every 200 ms, fall 2, rise 2) takes a backend whose server stopped down
/// in time, new connections then all succeed without it, and it comes back when the server does.
#[test]
#[ignore = "needs root"]
fn health_check_removes_a_failed_backend() {
    const INTERVAL: Duration = Duration::from_millis(200);
    const FALL: u32 = 2;
    const RISE: u32 = 2;
    /// Scheduling allowance on top of the check's own timing.
    const SLACK: Duration = Duration::from_millis(300);
    const VICTIM: usize = 1;
    let topo = Topology::new(BACKENDS).expect("topology");
    let mut servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let mut config = format!(
        "[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n\n[vip.health]\nkind = \"tcp\"\n\
         interval = \"{}ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\n",
        INTERVAL.as_millis()
    );
    for i in 0..BACKENDS {
        config += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend_addr(i));
    }
    let config = agent.file("health.toml", &config);
    agent.start(&["--config", config.to_str().expect("UTF-8 path")]);

    // Every backend is checked, and healthy.
    let started = Instant::now();
    for i in 0..BACKENDS {
        agent
            .wait_for_backend(backend_addr(i), started, Duration::from_secs(3), |b| {
                b.healthy == Some(true) && b.state == BackendState::Up
            })
            .unwrap_or_else(|b| panic!("{} never checked healthy: {b:?}", ident(i)));
    }
    let tally = spread(&topo.client, VIP_ADDR, 30, "before");
    assert_eq!(tally.len(), BACKENDS, "{tally:?}");

    // The server stops: the backend is down within fall × interval + one interval.
    let victim = backend_addr(VICTIM);
    let stopped = Instant::now();
    servers[VICTIM] = None;
    let down_limit = INTERVAL * (FALL + 1) + SLACK;
    let down = agent
        .wait_for_backend(victim, stopped, Duration::from_secs(5), |b| {
            b.state == BackendState::Down && b.healthy == Some(false)
        })
        .unwrap_or_else(|b| panic!("{victim} not down 5 s after its server stopped: {b:?}"));
    eprintln!("{victim} down {down:?} after its server stopped (limit {down_limit:?})");
    assert!(
        down <= down_limit,
        "{victim} was taken down after {down:?}, more than {down_limit:?}"
    );

    // From then on, no new connection fails, and none reaches it.
    let flows_before = agent.backends()[&victim.to_string()].new_flows;
    let tally = spread(&topo.client, VIP_ADDR, 60, "without");
    eprintln!("60 connections with {} down: {tally:?}", ident(VICTIM));
    assert!(!tally.contains_key(&ident(VICTIM)), "{tally:?}");
    assert_eq!(tally.len(), BACKENDS - 1, "{tally:?}");
    let flows_after = agent.backends()[&victim.to_string()].new_flows;
    assert_eq!(
        flows_after, flows_before,
        "new flows were sent to the backend that is down"
    );

    // The server is back: so is the backend, within rise × interval.
    let restarted = Instant::now();
    servers[VICTIM] = Some(topo.backends[VICTIM].tcp_server(BACKEND_PORT, &ident(VICTIM)));
    let up_limit = INTERVAL * RISE + SLACK;
    let up = agent
        .wait_for_backend(victim, restarted, Duration::from_secs(5), |b| {
            b.state == BackendState::Up && b.healthy == Some(true)
        })
        .unwrap_or_else(|b| panic!("{victim} not up 5 s after its server restarted: {b:?}"));
    eprintln!("{victim} up {up:?} after its server restarted (limit {up_limit:?})");
    assert!(
        up <= up_limit,
        "{victim} came back after {up:?}, more than {up_limit:?}"
    );
    let tally = spread(&topo.client, VIP_ADDR, 60, "after");
    assert!(
        tally.get(&ident(VICTIM)).is_some_and(|&n| n > 0),
        "no new connection reached {} after it came back: {tally:?}",
        ident(VICTIM)
    );
    let log = agent.log();
    assert!(log.contains("failed its health check"), "{log}");
    assert!(log.contains("healthy again"), "{log}");
}

/// Draining a backend keeps its established connections working while new connections avoid
/// it; once they close, it shows as drained.
#[test]
#[ignore = "needs root"]
fn drain_keeps_existing_connections_and_avoids_new_ones() {
    const HELD: usize = 15;
    const NEW: usize = 60;
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));

    let epoch = Instant::now();
    let held = hold(&topo.client, VIP_ADDR, HELD);
    let mut per_backend = Tally::new();
    for (_, ident) in &held {
        *per_backend.entry(ident.clone()).or_default() += 1;
    }
    // The backend with the most held connections (some, surely, of 15 over 3).
    let (target, on_target) = per_backend
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(ident, n)| (ident.clone(), *n))
        .expect("held connections");
    let index: usize = target[1..].parse().expect("backend ident");
    let target_addr = backend_addr(index);
    eprintln!("held connections per backend: {per_backend:?}; draining {target}");
    let chats = chatter(held, epoch);

    let drained_at = Instant::now();
    agent.ok(&["backend", "drain", VIP, &target_addr.to_string()]);
    let view = &agent.backends()[&target_addr.to_string()];
    assert_eq!(view.state, BackendState::Draining, "{view:?}");
    let table = agent.ok(&["backend", "list", VIP]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&target_addr.to_string()) && l.contains("draining")),
        "{table}"
    );

    // New connections avoid it, while the held ones go on.
    let tally = spread(&topo.client, VIP_ADDR, NEW, "new");
    eprintln!("{NEW} new connections while {target} drains: {tally:?}");
    assert!(!tally.contains_key(&target), "{tally:?}");
    assert_eq!(tally.len(), BACKENDS - 1, "{tally:?}");

    // Connections are counted every 2 s: by now the held ones have been, after the drain.
    let progress = chats.progress();
    thread::sleep(
        (drained_at + Duration::from_millis(2200)).saturating_duration_since(Instant::now()),
    );
    assert!(chats.progress() > progress, "the held connections stalled");
    let view = &agent.backends()[&target_addr.to_string()];
    assert_eq!(view.state, BackendState::Draining, "{view:?}");
    assert_eq!(
        u64::from(view.active_connections),
        on_target as u64,
        "{view:?}"
    );
    assert!(!view.drained, "{view:?}");

    // Every held connection kept its backend and never failed, 2 s and more after the drain.
    let chats = chats.finish();
    let lasted = drained_at.elapsed();
    let failures: Vec<&String> = chats.iter().filter_map(|c| c.failure.as_ref()).collect();
    assert!(failures.is_empty(), "held connections failed: {failures:?}");
    let on_drained: usize = chats
        .iter()
        .filter(|c| c.ident == target)
        .map(|c| c.exchanges)
        .sum();
    eprintln!(
        "{on_target} held connections to {target} exchanged {on_drained} lines in all, the last \
         {lasted:?} after the drain"
    );
    assert!(lasted >= Duration::from_secs(2));

    // Closed: it shows as drained at the next count.
    let closed = Instant::now();
    let drained = agent
        .wait_for_backend(target_addr, closed, Duration::from_secs(5), |b| b.drained)
        .unwrap_or_else(|b| panic!("{target} not drained 5 s after its connections closed: {b:?}"));
    eprintln!("{target} drained {drained:?} after its connections closed");
    let table = agent.ok(&["backend", "list", VIP]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&target_addr.to_string()) && l.contains("drained")),
        "{table}"
    );
}
