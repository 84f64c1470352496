//! The several-gateways acceptance in one topology ([`lb_tests::cluster::Cluster`]): three
//! gateways behind one ECMP router, each announcing the VIP by BGP through its own BIRD 2, all
//! three in cluster mode on one etcd ([`lb_tests::cluster::Etcd`], linked to each gateway).
//! Gateway 0 seeds the store from its file (2 of the 3 backends); a backend added through
//! gateway 1's CLI is on all three within a second, with identical tables; `cluster status`
//! lists the gateways, their applied revisions and what they announce. The router learns three
//! paths; 100 long-lived TCP connections from 100 source addresses spread over all three
//! gateways; one gateway's agent stops, its announcement is withdrawn, and every connection it
//! carried goes on through the others (a non-SYN packet missing their connection tables is
//! scheduled by the same Maglev table and seed, so to the same backend); new connections
//! succeed throughout. Then health checks failing on one gateway only (its own probes dropped
//! by nftables) withdraw its announcement, passing again restore it, `kill -9` of its agent
//! withdraws it (BIRD dies with the agent), and `vip del` removes the VIP from the store and
//! the router. Leader loss and etcd down are in `cluster_store.rs`.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{Xdp, XdpMode};
use lb_tests::{
    agent::{
        Agent, Decap, VIP, backends_of, path_str, same_tables, sample, scrape_metrics, wait_until,
    },
    cluster::{
        CLIENT_SOURCES, CLUSTER_GW_IF, Cluster, Etcd, GATEWAY_ASN, ROUTER_ADDR, ROUTER_ASN,
        client_source, gateway_port, gateway_v4,
    },
    netns::{Conn, DSR_VIP, ident},
    traffic::dialer,
};
use lb_user::{
    agent::{VipView, cluster::ClusterView},
    api::{StatsView, StatusView},
    bench_objects::{BASELINE_PASS, load_baseline},
};

const GATEWAYS: usize = 3;
const BACKENDS: usize = 3;
const METRICS_PORT: u16 = 9108;
/// The cluster's key prefix in etcd.
const PREFIX: &str = "/xdplb-ecmp/";

/// Gateway `i`'s config: `[cluster]` on etcd, `[bgp]`, and the VIP on maglev with `ipip` and a
/// TCP health check, with backends 0 and 1 (the store holds what gateway 0's file says).
fn config(cluster: &Cluster, i: usize) -> String {
    let mut text = format!(
        "[cluster]\nhash-seed = 7\netcd-endpoints = [\"{}\"]\netcd-prefix = \"{PREFIX}\"\n\
         gateway-name = \"gw{i}\"\n\
         [bgp]\nlocal-asn = {GATEWAY_ASN}\nrouter-id = \"{}\"\nhold-time = 9\n\
         announce = [\"{DSR_VIP}\"]\n\
         [[bgp.peer]]\naddress = \"{ROUTER_ADDR}\"\nasn = {ROUTER_ASN}\n\
         [[vip]]\naddress = \"{DSR_VIP}:80\"\nprotocol = \"tcp\"\nscheduler = \"maglev\"\n\
         forwarding = \"ipip\"\n\
         [vip.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n",
        Etcd::endpoint(i),
        gateway_v4(i)
    );
    for b in &cluster.backends[..2] {
        text += &format!("[[vip.backend]]\naddress = \"{}:80\"\n", b.v4);
    }
    text
}

/// Whether every backend of every VIP on `agent` passes its health check.
fn all_healthy(agent: &Agent, backends: usize) -> bool {
    let vips = agent.vips();
    vips.iter().map(|v| v.backends.len()).sum::<usize>() == backends
        && vips
            .iter()
            .flat_map(|v| &v.backends)
            .all(|b| b.healthy == Some(true))
}

fn new_flows(agent: &Agent) -> u64 {
    agent.vips().iter().map(|v: &VipView| v.new_flows).sum()
}

fn event(agent: &Agent, name: &str) -> u64 {
    let stats: StatsView = agent.json(&["stats"]);
    stats
        .events
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| *v)
}

fn announced(agent: &Agent) -> Vec<String> {
    let status: StatusView = agent.json(&["status"]);
    let bgp = status.bgp.expect("status has bgp");
    bgp.announced.iter().map(ToString::to_string).collect()
}

#[test]
#[ignore = "needs root"]
fn ecmp_over_three_gateways_survives_losing_one() {
    let mut cluster = Cluster::new(GATEWAYS, BACKENDS).expect("cluster topology");
    cluster.start_router().expect("the router's BIRD");
    // A veth delivers a gateway's XDP_TX'd frames to a peer running an XDP program.
    let mut pass = load_baseline(BASELINE_PASS, "bench_pass").expect("XDP_PASS program");
    cluster.router.run(|| {
        let program: &mut Xdp = pass
            .program_mut("bench_pass")
            .and_then(|p| p.try_into().ok())
            .expect("bench_pass");
        for i in 0..GATEWAYS {
            program
                .attach(&gateway_port(i), XdpMode::Driver)
                .expect("XDP_PASS on the router's port to a gateway");
        }
    });
    cluster
        .client
        .exec("ethtool", &["-K", "eth0", "tx", "off"])
        .expect("client tx offload off");
    let _decap = Decap::attach(&cluster.backends);
    let _servers: Vec<_> = (0..BACKENDS)
        .map(|i| cluster.backends[i].tcp_server(80, &ident(i)))
        .collect();

    let mut etcd = Etcd::new(&cluster.gateways.iter().collect::<Vec<_>>());
    etcd.start();

    // Gateway 0 first: its file seeds the empty store; the others then run what it holds.
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let mut agents: Vec<Agent> = (0..GATEWAYS)
        .map(|i| Agent::in_namespace(&cluster.gateways[i], vec![CLUSTER_GW_IF.to_owned()]))
        .collect();
    let started = Instant::now();
    for (i, agent) in agents.iter_mut().enumerate() {
        let file = agent.file("xdplb.toml", &config(&cluster, i));
        agent.start(&["--config", &path_str(&file), "--metrics", &metrics]);
        if i == 0 {
            wait_until(
                "gateway 0 seeded the store and runs its VIP",
                Instant::now(),
                Duration::from_secs(10),
                || backends_of(agent, VIP).len() == 2,
            );
        }
    }
    wait_until(
        "the seeded VIP on every gateway",
        Instant::now(),
        Duration::from_secs(10),
        || agents.iter().all(|a| backends_of(a, VIP).len() == 2),
    );
    eprintln!(
        "{GATEWAYS} agents ready {:?} after the first start",
        started.elapsed()
    );

    // A backend added through gateway 1's CLI reaches every gateway within a second of the
    // command's answer, with the same table everywhere.
    let b2 = format!("{}:80", cluster.backends[2].v4);
    let t = Instant::now();
    agents[1].ok(&["backend", "add", VIP, &b2]);
    let answered = Instant::now();
    let took = wait_until(
        "the added backend on every gateway",
        answered,
        Duration::from_secs(1),
        || agents.iter().all(|a| backends_of(a, VIP).contains(&b2)),
    );
    eprintln!(
        "a backend added on gw1 was on all {GATEWAYS} gateways {took:?} after the answer, \
         {:?} after the command started",
        t.elapsed()
    );
    // Each gateway probes it itself; once all pass, the tables are the same.
    wait_until(
        "the added backend healthy on every gateway",
        answered,
        Duration::from_secs(5),
        || agents.iter().all(|a| all_healthy(a, BACKENDS)),
    );
    same_tables(&agents, "once the added backend is healthy", Instant::now());

    // Three paths, one per gateway.
    let took = cluster
        .wait_for_paths(GATEWAYS, Duration::from_secs(20))
        .unwrap_or_else(|paths| {
            panic!(
                "the router has {paths:?}, not {GATEWAYS} paths to the VIP\n{}",
                cluster.birdc("show protocols all").unwrap_or_default()
            )
        });
    eprintln!("router had {GATEWAYS} paths {took:?} after the tables agreed");
    let mut paths = cluster.vip_paths();
    paths.sort();
    assert_eq!(
        paths,
        (0..GATEWAYS).map(gateway_v4).collect::<Vec<_>>(),
        "{}",
        cluster.birdc("show route all").unwrap_or_default()
    );
    // The same table everywhere.
    let digests: Vec<Option<String>> = agents
        .iter()
        .map(|a| a.vips()[0].table_digest.clone())
        .collect();
    assert!(digests[0].is_some(), "{digests:?}");
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    for agent in &agents {
        assert_eq!(announced(agent), vec![DSR_VIP.to_string()]);
        let text = agent.ok(&["status"]);
        assert!(text.contains(&format!("announced  {DSR_VIP}")), "{text}");
    }

    // `cluster status` on any gateway: the three, each at the store's config revision and
    // announcing the VIP; no autoscaled VIP, so no autoscaler leader.
    let view = wait_for_view(&agents[2], |v| {
        v.gateways.len() == GATEWAYS
            && v.gateways.iter().all(|g| {
                g.applied_revision == v.config_revision && g.announced == [DSR_VIP.to_string()]
            })
    });
    let names: Vec<&str> = view.gateways.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["gw0", "gw1", "gw2"], "{view:#?}");
    assert!(view.store.up && view.config_revision > 0, "{view:#?}");
    assert!(view.leaders.is_empty(), "{view:#?}");
    let text = agents[0].ok(&["cluster", "status"]);
    for i in 0..GATEWAYS {
        let line = format!(
            "{:<20} {:>7}  {DSR_VIP}",
            format!("gw{i}"),
            view.config_revision
        );
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }

    // 100 long-lived connections, one from each source address.
    let vip = SocketAddr::from((DSR_VIP, 80));
    let opened: Vec<anyhow::Result<(Conn, String)>> = cluster.client.run(|| {
        (0..CLIENT_SOURCES)
            .map(|i| {
                let mut conn = Conn::connect_from(SocketAddr::new(client_source(i), 0), vip)?;
                let ident = conn.ask(&format!("hello{i}"))?;
                Ok((conn, ident))
            })
            .collect()
    });
    let failed: Vec<String> = opened
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("{i}: {e:#}")))
        .collect();
    if !failed.is_empty() {
        let stats: Vec<String> = agents.iter().map(|a| a.ok(&["stats"])).collect();
        panic!("connections failed: {failed:?}\n{}", stats.join("\n"));
    }
    let mut conns: Vec<(Conn, String)> = opened.into_iter().map(Result::unwrap).collect();
    let flows: Vec<u64> = agents.iter().map(new_flows).collect();
    eprintln!("new flows per gateway: {flows:?}");
    assert!(
        flows.iter().all(|&f| f > 0),
        "ECMP spread the connections over every gateway: {flows:?}"
    );
    assert!(
        flows.iter().sum::<u64>() >= CLIENT_SOURCES as u64,
        "{flows:?}"
    );

    // Gateway 0 stops while new connections keep being made.
    let epoch = Instant::now();
    let dials = dialer(&cluster.client, vip, Duration::from_millis(100), epoch);
    std::thread::sleep(Duration::from_millis(300));
    let lost_before: u64 = agents[1..].iter().map(|a| event(a, "lost_state")).sum();
    let stopped = Instant::now();
    agents[0].stop(false);
    cluster
        .wait_for_paths(GATEWAYS - 1, Duration::from_secs(5))
        .unwrap_or_else(|paths| panic!("after the stop the router still has {paths:?}"));
    let withdrawn = stopped.elapsed();
    eprintln!("gateway 0 withdrawn {withdrawn:?} after `xdplb stop`");
    assert!(!cluster.vip_paths().contains(&gateway_v4(0)));
    std::thread::sleep(Duration::from_millis(300));

    // Every connection carries on, on its backend.
    let mut failures = Vec::new();
    for (i, (conn, ident)) in conns.iter_mut().enumerate() {
        match conn.ask(&format!("after{i}")) {
            Ok(now) if now == *ident => {}
            Ok(now) => failures.push(format!("{i}: answered by {now}, not {ident}")),
            Err(err) => failures.push(format!("{i}: {err:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CLIENT_SOURCES} connections broke: {failures:?}",
        failures.len()
    );
    // Those that were on gateway 0 reached the others without state there.
    let lost_after: u64 = agents[1..].iter().map(|a| event(a, "lost_state")).sum();
    assert!(
        lost_after > lost_before,
        "no flow moved to the other gateways ({lost_before} -> {lost_after})"
    );
    let dialed = dials.finish().remove(0);
    assert!(
        dialed.failures.is_empty(),
        "new connections failed around the loss: {:?}",
        dialed.failures
    );
    assert!(
        dialed.answered.len() >= 5,
        "{} dialed",
        dialed.answered.len()
    );

    // Gateway 1's own probes are dropped on their way out (the VIP's config is the cluster's,
    // the same everywhere): its checks fail, it withdraws, gateway 2 stays. The clients'
    // packets it forwards leave by XDP, which the output hook does not see.
    let label = format!("vip=\"{DSR_VIP}\"");
    let nft = |args: &[&str]| {
        cluster.gateways[1]
            .exec("nft", args)
            .unwrap_or_else(|err| panic!("nft {args:?}: {err:#}"))
    };
    nft(&["add", "table", "inet", "t"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "t",
        "out",
        "{ type filter hook output priority 0; }",
    ]);
    nft(&[
        "add", "rule", "inet", "t", "out", "tcp", "dport", "80", "drop",
    ]);
    let took = cluster
        .wait_for_paths(1, Duration::from_secs(5))
        .unwrap_or_else(|paths| panic!("with no healthy backend the router still has {paths:?}"));
    eprintln!("gateway 1 withdrawn {took:?} after its checks began failing");
    assert_eq!(cluster.vip_paths(), vec![gateway_v4(2)]);
    assert!(announced(&agents[1]).is_empty());
    let text = scrape_metrics(&cluster.gateways[1], &metrics);
    assert_eq!(
        sample(&text, "xdplb_bgp_announced", &label),
        Some(0.0),
        "{text}"
    );
    let text = scrape_metrics(&cluster.gateways[2], &metrics);
    assert_eq!(
        sample(&text, "xdplb_bgp_announced", &label),
        Some(1.0),
        "{text}"
    );
    // Still served, through gateway 2.
    let mut still = 0;
    for (i, (conn, ident)) in conns.iter_mut().enumerate() {
        if conn
            .ask(&format!("again{i}"))
            .is_ok_and(|now| now == *ident)
        {
            still += 1;
        }
    }
    assert_eq!(
        still, CLIENT_SOURCES,
        "connections through the last gateway"
    );

    // Healthy again, gateway 1 announces again; killed with SIGKILL, its BIRD dies with it
    // (PR_SET_PDEATHSIG), the session ends and the router withdraws without waiting out the
    // hold time.
    nft(&["delete", "table", "inet", "t"]);
    let took = cluster
        .wait_for_paths(2, Duration::from_secs(5))
        .unwrap_or_else(|paths| panic!("gateway 1 did not announce again: {paths:?}"));
    eprintln!("gateway 1 announced again {took:?} after its checks passed");
    let daemon = agents[1].daemon.as_mut().expect("gateway 1's agent");
    daemon.kill().expect("SIGKILL");
    let _ = daemon.wait();
    agents[1].daemon = None;
    let took = cluster
        .wait_for_paths(1, Duration::from_secs(5))
        .unwrap_or_else(|paths| panic!("after kill -9 the router still has {paths:?}"));
    eprintln!("gateway 1 withdrawn {took:?} after kill -9");
    assert_eq!(cluster.vip_paths(), vec![gateway_v4(2)]);

    // In a cluster, a scheduler that is not cluster-safe is refused, naming the VIP.
    let refused = agents[2].cli(&[
        "vip",
        "add",
        "198.19.0.1:81/tcp",
        "--scheduler",
        "round-robin",
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "round-robin accepted in a cluster"
    );
    assert!(
        stderr.contains("VIP 198.19.0.1:81/tcp: scheduler round-robin is not cluster-safe"),
        "{stderr}"
    );

    // `vip del` on gateway 2 deletes the VIP from the store, for every gateway: nothing
    // routes it any more.
    agents[2].ok(&["vip", "del", VIP]);
    cluster
        .wait_for_paths(0, Duration::from_secs(5))
        .unwrap_or_else(|paths| panic!("after vip del the router still has {paths:?}"));
    assert!(announced(&agents[2]).is_empty());
    assert!(agents[2].vips().is_empty());
    // Left: `vips/changed`, the marker every change rewrites.
    let keys = etcd.keys(&format!("{PREFIX}vips/"));
    assert_eq!(
        keys,
        [format!("{PREFIX}vips/changed")],
        "the store holds {keys:?}"
    );
    drop(conns);
}

/// `cluster status -o json` on `agent`, once `done` holds (within 5 s).
fn wait_for_view(agent: &Agent, done: impl Fn(&ClusterView) -> bool) -> ClusterView {
    let t = Instant::now();
    loop {
        let view: ClusterView = agent.json(&["cluster", "status"]);
        if done(&view) {
            return view;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "cluster status: {view:#?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
