//! Direct server return (`dsr-l2`) end to end, through a running agent: a client behind a
//! router, the gateway and three backends on one L2 segment, the backends holding the VIP on
//! `lo` with ARP for it suppressed and routing their answers to the router
//! ([`Topology::direct_return`]). Real TCP connections (HTTP to nginx, and a line protocol) and
//! UDP exchanges complete, answered from the VIP; the weights hold for each; the gateway sees the requests and none of the answers; held
//! connections survive a backend added and another drained. IPv6 too (connections and UDP).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use aya::programs::{Xdp, XdpMode};
use lb_tests::{
    agent::{Agent, VIP, path_str, sample, scrape_metrics},
    netns::{
        DSR_GW_IF, DSR_GW_PORT, DSR_VIP, DSR_VIP6, Topology, dsr_backend_v4, dsr_backend_v6, ident,
        udp_request,
    },
    traffic::{
        assert_weighted, held_connections_survive_add_and_drain, http_spread, spread, udp_spread,
    },
};
use lb_user::{
    api::{BackendView, StatsView},
    balancer::Forwarding,
    bench_objects::{BASELINE_PASS, load_baseline},
};

const BACKENDS: usize = 3;
/// Weighted round-robin, so that the shares are exact up to the per-CPU cursors' phase (a hash
/// over 300 random client ports would be off by several points by chance alone).
const WEIGHTS: [usize; BACKENDS] = [1, 2, 3];
const CONNECTIONS: usize = 300;
const UDP_EXCHANGES: usize = 300;
/// The VIP's port for HTTP, served by nginx on the backends.
const HTTP_PORT: u16 = 8080;
/// In the gateway's namespace.
const METRICS: &str = "127.0.0.1:9464";

fn backend(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(dsr_backend_v4(i).into(), port)
}

const VIP6: &str = "[fd00:ffff::1]:80/tcp";
const IPV6_CONNECTIONS: usize = 60;

fn backend6(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(dsr_backend_v6(i).into(), port)
}

fn config(backends: &[usize]) -> String {
    let mut text = String::from(
        "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
         scheduler = \"weighted-round-robin\"\nforwarding = \"dsr-l2\"\n\
         [vip.health]\nkind = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\n",
    );
    for &i in backends {
        text += &format!(
            "[[vip.backend]]\naddress = \"{}\"\nweight = {}\n",
            backend(i, 80),
            WEIGHTS[i]
        );
    }
    text += "[[vip]]\naddress = \"198.19.0.1:53\"\nprotocol = \"udp\"\n\
             scheduler = \"weighted-round-robin\"\nforwarding = \"dsr-l2\"\n";
    for &i in backends {
        text += &format!(
            "[[vip.backend]]\naddress = \"{}\"\nweight = {}\n",
            backend(i, 53),
            WEIGHTS[i]
        );
    }
    text += &format!(
        "[[vip]]\naddress = \"198.19.0.1:{HTTP_PORT}\"\nprotocol = \"tcp\"\n\
         scheduler = \"weighted-round-robin\"\nforwarding = \"dsr-l2\"\n"
    );
    for &i in backends {
        text += &format!(
            "[[vip.backend]]\naddress = \"{}\"\nweight = {}\n",
            backend(i, HTTP_PORT),
            WEIGHTS[i]
        );
    }
    text += "[[vip]]\naddress = \"[fd00:ffff::1]:80\"\nprotocol = \"tcp\"\n\
             forwarding = \"dsr-l2\"\n[vip.health]\nkind = \"tcp\"\ninterval = \"500ms\"\n\
             timeout = \"400ms\"\n";
    for &i in backends {
        text += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend6(i, 80));
    }
    text += "[[vip]]\naddress = \"[fd00:ffff::1]:53\"\nprotocol = \"udp\"\n\
             scheduler = \"round-robin\"\nforwarding = \"dsr-l2\"\n";
    for &i in backends {
        text += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend6(i, 53));
    }
    text
}

/// Asserts that each backend's share of `tally` (of `n`) is within 5 points of its weight's.
fn counters(agent: &Agent) -> BTreeMap<String, u64> {
    agent
        .json::<StatsView>(&["stats"])
        .counters
        .into_iter()
        .collect()
}

/// [`Topology::direct_return`] with `backends` backends, an XDP_PASS program on the router's
/// port to the gateway (kept while the returned object lives; see `direct_return`) and the
/// client's transmit checksum offload off: a local sender's partial checksums would reach the
/// backends as they are (nothing on a direct path completes them; real NICs deliver full ones).
fn topology(backends: usize) -> (Topology, aya::Ebpf) {
    let topo = Topology::direct_return(backends).expect("topology");
    let router = topo.router.as_ref().expect("a router");
    let mut pass = load_baseline(BASELINE_PASS, "bench_pass").expect("XDP_PASS program");
    router.run(|| {
        let program: &mut Xdp = pass
            .program_mut("bench_pass")
            .and_then(|p| p.try_into().ok())
            .expect("bench_pass");
        program
            .attach(DSR_GW_PORT, XdpMode::Driver)
            .expect("XDP_PASS on the router's port to the gateway");
    });
    topo.client
        .exec("ethtool", &["-K", "eth0", "tx", "off"])
        .expect("client tx offload off");
    (topo, pass)
}

/// Without health checks nothing on the gateway talks to the backends, yet their MACs are
/// resolved: the agent gives each `dsr-l2` backend a managed neighbour entry, takes them over
/// after a restart, and removes one with its backend.
#[test]
#[ignore = "needs root"]
fn dsr_l2_backends_macs_are_kept_without_health_checks() {
    let (topo, _pass) = topology(2);
    let _tcp: Vec<_> = (0..2)
        .map(|i| topo.backends[i].tcp_server(80, &ident(i)))
        .collect();
    let mut agent = Agent::new(&topo);
    agent.ifaces = vec![DSR_GW_IF.to_owned()];
    let file = agent.file(
        "xdplb.toml",
        "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\nforwarding = \"dsr-l2\"\n\
         [[vip.backend]]\naddress = \"198.18.1.10:80\"\n\
         [[vip.backend]]\naddress = \"198.18.1.11:80\"\n",
    );
    agent.start(&["--config", &path_str(&file)]);
    let neighbours = || {
        let out = topo
            .gateway
            .exec("ip", &["neigh", "show"])
            .expect("ip neigh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(0..2).all(|i| {
        neighbours()
            .lines()
            .any(|l| l.starts_with(&format!("{} ", backend(i, 80).ip())) && l.contains("managed"))
    }) {
        assert!(
            Instant::now() < deadline,
            "no managed entries: {}",
            neighbours()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let tally = spread(&topo.client, SocketAddr::from((DSR_VIP, 80)), 40, "managed");
    assert_eq!(tally.len(), 2, "{tally:?}");
    let dropped = counters(&agent)["drop_dsr_no_neighbour"];
    assert_eq!(dropped, 0);

    // A restarted agent takes the entries over, and removes one with its backend.
    agent.stop(false);
    agent.start(&["--config", &path_str(&file)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent
        .log()
        .contains("198.18.1.11: managed neighbour entry taken over")
    {
        assert!(Instant::now() < deadline, "not taken over: {}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.ok(&["backend", "del", VIP, &backend(1, 80).to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while neighbours()
        .lines()
        .any(|l| l.starts_with("198.18.1.11 ") && l.contains("managed"))
    {
        assert!(Instant::now() < deadline, "entry kept: {}", neighbours());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root"]
fn dsr_l2_answers_bypass_the_gateway() {
    let (topo, _pass) = topology(BACKENDS);
    let _tcp: Vec<_> = (0..BACKENDS)
        .map(|i| topo.backends[i].tcp_server(80, &ident(i)))
        .collect();
    // Bound to the VIP: a server bound to every address would answer from the backend's own.
    let _udp: Vec<_> = (0..BACKENDS)
        .map(|i| topo.backends[i].udp_server_on(SocketAddr::from((DSR_VIP, 53)), &ident(i)))
        .collect();
    let _nginx: Vec<_> = (0..BACKENDS)
        .map(|i| {
            topo.backends[i]
                .nginx(HTTP_PORT, &ident(i))
                .unwrap_or_else(|err| panic!("nginx on backend {i}: {err:#}"))
        })
        .collect();
    let _udp6: Vec<_> = (0..BACKENDS)
        .map(|i| topo.backends[i].udp_server_on(SocketAddr::from((DSR_VIP6, 53)), &ident(i)))
        .collect();
    let mut agent = Agent::new(&topo);
    agent.ifaces = vec![DSR_GW_IF.to_owned()];
    let file = agent.file("xdplb.toml", &config(&[0, 1, 2]));
    agent.start(&["--config", &path_str(&file), "--metrics", METRICS]);

    // The health checks reach each backend, which also resolves its MAC for the data path.
    for i in 0..BACKENDS {
        agent
            .wait_for_backend(
                backend(i, 80),
                Instant::now(),
                Duration::from_secs(20),
                |b| b.healthy == Some(true),
            )
            .unwrap_or_else(|view| panic!("backend {i} never healthy: {view:?}"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let views: Vec<BackendView> = agent.json(&["backend", "list", VIP6]);
        if views.iter().all(|b| b.healthy == Some(true)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "IPv6 backends never healthy: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let vips = agent.vips();
    assert!(
        vips.iter().all(|v| v.forwarding == Forwarding::DsrL2),
        "{vips:?}"
    );
    assert!(agent.ok(&["vip", "list"]).contains("dsr-l2"));
    let metrics = scrape_metrics(&topo.gateway, METRICS);
    assert_eq!(
        sample(
            &metrics,
            "xdplb_vip_info",
            r#"vip="198.19.0.1:80/tcp",scheduler="weighted-round-robin",forwarding="dsr-l2""#
        ),
        Some(1.0),
        "{metrics}"
    );
    // The backend's port must be the VIP's: nothing rewrites it.
    let refused = agent.cli(&["backend", "add", VIP, "198.18.1.10:8080"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("must listen on the VIP's port"), "{stderr}");

    let before = counters(&agent);
    let vip = SocketAddr::from((DSR_VIP, 80));
    let tally = spread(&topo.client, vip, CONNECTIONS, "dsr");
    assert_weighted("line-protocol connections", &tally, CONNECTIONS, &WEIGHTS);
    // HTTP to nginx: each GET on a connection of its own, answered by the backend's nginx.
    let http_tally = http_spread(
        &topo.client,
        SocketAddr::from((DSR_VIP, HTTP_PORT)),
        CONNECTIONS,
    );
    assert_weighted("HTTP GETs to nginx", &http_tally, CONNECTIONS, &WEIGHTS);
    let udp_tally = udp_spread(&topo.client, SocketAddr::from((DSR_VIP, 53)), UDP_EXCHANGES);
    assert_weighted("UDP exchanges", &udp_tally, UDP_EXCHANGES, &WEIGHTS);

    // The gateway forwarded every request and saw no answer: each connection's SYN-ACK,
    // answer and FIN would be three packets more, over 1800 in all.
    let after = counters(&agent);
    let delta = |name: &str| after[name] - before.get(name).copied().unwrap_or(0);
    let forwarded = delta("fwd_tx") + delta("fwd_redirect");
    assert!(
        forwarded >= (6 * CONNECTIONS + UDP_EXCHANGES) as u64,
        "{forwarded} requests forwarded"
    );
    assert_eq!(delta("reply_tx") + delta("reply_redirect"), 0);
    let other: u64 = after
        .keys()
        .filter(|name| !["fwd_tx", "fwd_redirect", "pass_non_ip"].contains(&name.as_str()))
        .map(|name| delta(name))
        .sum();
    assert!(
        other < CONNECTIONS as u64,
        "the gateway saw {other} packets besides requests and ARP (health-check answers \
         only, or answers that should have bypassed it): {after:?}"
    );

    // IPv6: the same, from the IPv6 VIP.
    let vip6 = SocketAddr::from((DSR_VIP6, 80));
    let tally6 = spread(&topo.client, vip6, IPV6_CONNECTIONS, "dsr6");
    assert_eq!(
        tally6.len(),
        BACKENDS,
        "IPv6 over every backend: {tally6:?}"
    );
    let udp6 = SocketAddr::from((DSR_VIP6, 53));
    topo.client.run(|| {
        for n in 0..BACKENDS {
            let (_, from) = udp_request(udp6, &format!("q6{n}"))
                .unwrap_or_else(|err| panic!("IPv6 UDP exchange {n}: {err:#}"));
            assert_eq!(from, udp6, "the answer comes from the VIP");
        }
    });
    let last = counters(&agent);
    assert_eq!(last["reply_tx"] + last["reply_redirect"], 0, "{last:?}");

    // Held connections survive a backend added and another drained.
    held_connections_survive_add_and_drain(
        &agent,
        &topo.client,
        (VIP, vip),
        (backend(2, 80), backend(0, 80)),
    );
}

/// `[vip.health] path = "vip"`: the check connects to the VIP and reaches the backend's MAC as
/// the data path's packets do, so a backend that lacks the VIP on `lo` (it would drop every
/// client's packet) is marked down, while the usual check of its own address finds it up.
/// IPv6 too.
#[test]
#[ignore = "needs root"]
fn dsr_l2_health_checks_through_the_vip() {
    let (topo, _pass) = topology(2);
    let _tcp: Vec<_> = (0..2)
        .flat_map(|i| {
            [
                topo.backends[i].tcp_server(80, &ident(i)),
                topo.backends[i].tcp_server(81, &ident(i)),
            ]
        })
        .collect();
    for args in [
        ["addr", "del", &format!("{DSR_VIP}/32"), "dev", "lo"],
        ["addr", "del", &format!("{DSR_VIP6}/128"), "dev", "lo"],
    ] {
        topo.backends[1]
            .exec("ip", &args)
            .expect("the VIPs off backend 1");
    }
    let mut agent = Agent::new(&topo);
    agent.ifaces = vec![DSR_GW_IF.to_owned()];
    let mut text = String::new();
    for (port, path) in [(80, "vip"), (81, "direct")] {
        text += &format!(
            "[[vip]]\naddress = \"198.19.0.1:{port}\"\nprotocol = \"tcp\"\n\
             forwarding = \"dsr-l2\"\n[vip.health]\nkind = \"tcp\"\npath = \"{path}\"\n\
             interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 2\n"
        );
        for i in 0..2 {
            text += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend(i, port));
        }
    }
    text += "[[vip]]\naddress = \"[fd00:ffff::1]:80\"\nprotocol = \"tcp\"\n\
             forwarding = \"dsr-l2\"\n[vip.health]\nkind = \"tcp\"\npath = \"vip\"\n\
             interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 2\n";
    for i in 0..2 {
        text += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend6(i, 80));
    }
    let file = agent.file("xdplb.toml", &text);
    agent.start(&["--config", &path_str(&file)]);

    let health_of = |vip: &str| -> BTreeMap<String, Option<bool>> {
        agent
            .json::<Vec<BackendView>>(&["backend", "list", vip])
            .into_iter()
            .map(|b| (b.address.to_string(), b.healthy))
            .collect()
    };
    let health = |port: u16| health_of(&format!("198.19.0.1:{port}/tcp"));
    let b0 = |port| backend(0, port).to_string();
    let b1 = |port| backend(1, port).to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let v6 = |i: usize| health_of(VIP6).get(&backend6(i, 80).to_string()).copied();
    while health(80).get(&b1(80)) != Some(&Some(false))
        || health(80).get(&b0(80)) != Some(&Some(true))
        || v6(1) != Some(Some(false))
        || v6(0) != Some(Some(true))
    {
        assert!(
            Instant::now() < deadline,
            "backend 1 without the VIP not down: {:?} {:?}\n{}",
            health(80),
            health_of(VIP6),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Several intervals more: backend 0, which holds the VIP, stays up through the VIP, and
    // both stay up checked directly.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (vip, direct) = (health(80), health(81));
        assert_eq!(vip.get(&b0(80)), Some(&Some(true)), "{vip:?}");
        assert_eq!(vip.get(&b1(80)), Some(&Some(false)), "{vip:?}");
        assert_eq!(direct.get(&b0(81)), Some(&Some(true)), "{direct:?}");
        assert_eq!(direct.get(&b1(81)), Some(&Some(true)), "{direct:?}");
        let v6 = health_of(VIP6);
        assert_eq!(
            v6.get(&backend6(0, 80).to_string()),
            Some(&Some(true)),
            "{v6:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Clients reach backend 0 only.
    let tally = spread(&topo.client, SocketAddr::from((DSR_VIP, 80)), 20, "vip");
    assert_eq!(tally.get(&ident(0)), Some(&20), "{tally:?}");

    // The VIP back on backend 1: it comes back up.
    topo.backends[1]
        .exec(
            "ip",
            &["addr", "add", &format!("{DSR_VIP}/32"), "dev", "lo"],
        )
        .expect("the VIP back on backend 1");
    let deadline = Instant::now() + Duration::from_secs(15);
    while health(80).get(&b1(80)) != Some(&Some(true)) {
        assert!(
            Instant::now() < deadline,
            "backend 1 with the VIP not up: {:?}",
            health(80)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rules = topo.gateway.exec("ip", &["rule", "show"]).expect("ip rule");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert_eq!(
        rules.lines().filter(|l| l.starts_with("1000:")).count(),
        2,
        "an IPv4 rule per backend checked through the VIP: {rules}"
    );
    let rules6 = topo
        .gateway
        .exec("ip", &["-6", "rule", "show"])
        .expect("ip -6 rule");
    let rules6 = String::from_utf8_lossy(&rules6.stdout);
    assert_eq!(
        rules6.lines().filter(|l| l.starts_with("1000:")).count(),
        2,
        "an IPv6 rule per backend checked through the VIP: {rules6}"
    );

    // A restarted agent removes the rules the last one left, with their tables' routes, and
    // only those, before adding its own: someone else's rule at the same priority, and its
    // table, stay. A rule and table of the agent's range that no backend uses any more (as a
    // crash leaves them) go too.
    let stale = (0x786c_0000u32 + 0x50).to_string();
    for args in [
        &[
            "rule", "add", "priority", "1000", "fwmark", "0x4242", "table", "4242",
        ][..],
        &["route", "add", "unreachable", "default", "table", "4242"],
        &[
            "rule", "add", "priority", "1000", "fwmark", &stale, "table", &stale,
        ],
        &["route", "add", "unreachable", "default", "table", &stale],
    ] {
        topo.gateway.exec("ip", args).expect("ip");
    }
    let table = |id: &str| {
        let out = topo
            .gateway
            .exec("ip", &["route", "show", "table", id])
            .expect("ip route show table");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(table(&stale).contains("unreachable default"));
    agent.stop(false);
    agent.start(&["--config", &path_str(&file)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent
        .log()
        .contains("removed 5 probe routing rules left by an earlier agent")
    {
        assert!(Instant::now() < deadline, "not swept: {}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = topo.gateway.exec("ip", &["rule", "show"]).expect("ip rule");
        let rules = String::from_utf8_lossy(&out.stdout).into_owned();
        let at_1000: Vec<&str> = rules.lines().filter(|l| l.starts_with("1000:")).collect();
        if at_1000.len() == 3 {
            assert!(
                at_1000.iter().any(|l| l.contains("fwmark 0x4242")),
                "{rules}"
            );
            assert_eq!(table(&stale), "", "the stale probe table's route stays");
            assert!(
                table("4242").contains("unreachable default"),
                "someone else's table"
            );
            break;
        }
        assert!(Instant::now() < deadline, "rules after a restart: {rules}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
