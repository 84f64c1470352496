//! `ipip` forwarding end to end, through a running agent: a client behind a router, the gateway
//! and three backends ([`Topology::direct_return`]: the backends hold the VIP on `lo` and route
//! their answers to the router). The gateway encapsulates each request to its backend's
//! address; the backends run `xdplb decap --iface eth0`, which strips the outer header, and
//! answer the client directly from the VIP. Real TCP connections and UDP exchanges complete;
//! the weights hold; the gateway sees the requests and none of the answers; held connections
//! survive a backend added and another drained.
//!
//! This kernel has no ipip/ip6tnl module, so the kernel's own decapsulation is not run here;
//! the README gives its setup.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use aya::programs::{Xdp, XdpMode};
use lb_tests::{
    agent::{Agent, Decap, VIP, path_str},
    netns::{
        DSR_GW_IF, DSR_GW_PORT, DSR_VIP, DSR_VIP6, Topology, dsr_backend_v4, dsr_backend_v6, ident,
    },
    traffic::{
        assert_weighted, held_connections_survive_add_and_drain, http_spread, spread, udp_spread,
    },
};
use lb_user::{
    api::StatsView,
    balancer::Forwarding,
    bench_objects::{BASELINE_PASS, load_baseline},
};

const BACKENDS: usize = 3;
/// Weighted round-robin, so that the shares are exact up to the per-CPU cursors' phase.
const WEIGHTS: [usize; BACKENDS] = [1, 2, 3];
const CONNECTIONS: usize = 300;
const UDP_EXCHANGES: usize = 300;
/// The VIP's port for HTTP, served by nginx on the backends.
const HTTP_PORT: u16 = 8080;

fn backend(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(dsr_backend_v4(i).into(), port)
}

fn backend6(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(dsr_backend_v6(i).into(), port)
}

fn config() -> String {
    let mut text = String::from(
        "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
         scheduler = \"weighted-round-robin\"\nforwarding = \"ipip\"\n",
    );
    for (i, weight) in WEIGHTS.iter().enumerate() {
        text += &format!(
            "[[vip.backend]]\naddress = \"{}\"\nweight = {weight}\n",
            backend(i, 80),
        );
    }
    for port in [53, HTTP_PORT] {
        let proto = if port == 53 { "udp" } else { "tcp" };
        text += &format!(
            "[[vip]]\naddress = \"198.19.0.1:{port}\"\nprotocol = \"{proto}\"\n\
             scheduler = \"weighted-round-robin\"\nforwarding = \"ipip\"\n"
        );
        for (i, weight) in WEIGHTS.iter().enumerate() {
            text += &format!(
                "[[vip.backend]]\naddress = \"{}\"\nweight = {weight}\n",
                backend(i, port),
            );
        }
    }
    text += "[[vip]]\naddress = \"[fd00:ffff::1]:80\"\nprotocol = \"tcp\"\n\
             forwarding = \"ipip\"\n";
    for i in 0..BACKENDS {
        text += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend6(i, 80));
    }
    text
}

fn counters(agent: &Agent) -> BTreeMap<String, u64> {
    agent
        .json::<StatsView>(&["stats"])
        .counters
        .into_iter()
        .collect()
}

/// As in `dsr.rs`: the topology, an XDP_PASS program on the router's port to the gateway (a
/// veth delivers XDP_TX'd frames to a peer that runs one), the client's transmit checksum
/// offload off.
fn topology() -> (Topology, aya::Ebpf) {
    let topo = Topology::direct_return(BACKENDS).expect("topology");
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

#[test]
#[ignore = "needs root"]
fn ipip_answers_bypass_the_gateway() {
    let (topo, _pass) = topology();
    let _decap = Decap::attach(&topo.backends);
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
    let mut agent = Agent::new(&topo);
    agent.ifaces = vec![DSR_GW_IF.to_owned()];
    let file = agent.file("xdplb.toml", &config());
    agent.start(&["--config", &path_str(&file)]);
    let vips = agent.vips();
    assert!(
        vips.iter().all(|v| v.forwarding == Forwarding::Ipip),
        "{vips:?}"
    );
    assert!(agent.ok(&["vip", "list"]).contains("ipip"));

    let before = counters(&agent);
    let vip = SocketAddr::from((DSR_VIP, 80));
    let tally = spread(&topo.client, vip, CONNECTIONS, "ipip");
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

    // The gateway forwarded every request and saw no answer.
    let after = counters(&agent);
    let delta = |name: &str| after[name] - before.get(name).copied().unwrap_or(0);
    let forwarded = delta("fwd_tx") + delta("fwd_redirect");
    assert!(
        forwarded >= (6 * CONNECTIONS + UDP_EXCHANGES) as u64,
        "{forwarded} requests forwarded"
    );
    assert_eq!(delta("reply_tx") + delta("reply_redirect"), 0);
    assert_eq!(
        delta("drop_ipip_no_route") + delta("drop_ipip_too_big"),
        0,
        "{after:?}"
    );

    // IPv6 in IPv6.
    let vip6 = SocketAddr::from((DSR_VIP6, 80));
    let tally6 = spread(&topo.client, vip6, 30, "ipip6");
    assert_eq!(
        tally6.len(),
        BACKENDS,
        "IPv6 over every backend: {tally6:?}"
    );
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

/// Without the decapsulation program the backends drop what the gateway sends them (nothing
/// there takes protocol 4), so connections fail: the test above depends on `xdplb decap`.
#[test]
#[ignore = "needs root"]
fn ipip_without_decap_reaches_no_server() {
    let (topo, _pass) = topology();
    let _tcp: Vec<_> = (0..BACKENDS)
        .map(|i| topo.backends[i].tcp_server(80, &ident(i)))
        .collect();
    let mut agent = Agent::new(&topo);
    agent.ifaces = vec![DSR_GW_IF.to_owned()];
    let file = agent.file("xdplb.toml", &config());
    agent.start(&["--config", &path_str(&file)]);
    let vip = SocketAddr::from((DSR_VIP, 80));
    let answered = topo.client.run(|| {
        (0..3)
            .filter(|n| lb_tests::netns::tcp_request(vip, &format!("q{n}")).is_ok())
            .count()
    });
    assert_eq!(answered, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters(&agent)["fwd_tx"] + counters(&agent)["fwd_redirect"] == 0 {
        assert!(Instant::now() < deadline, "nothing forwarded");
        std::thread::sleep(Duration::from_millis(50));
    }
}
