//! End-to-end balancing through the attached XDP program: a client, a gateway running xdplb on
//! every interface and N backends, each in its own network namespace, with real TCP and UDP
//! sockets. Backend `i` answers as `b{i}` on port 8080, so every answer names its server.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use lb_common::{
    Counter, FlowKey,
    flow::{FAMILY_IPV4, PROTO_TCP},
    hash::flow_hash,
    maglev::{self, MaglevBackend},
    maps::Settings,
};
use lb_tests::{
    netns::{Conn, IO_TIMEOUT, Netns, Server, Topology, ident, ident_of, tcp_request},
    traffic::Tally,
};
use lb_user::{
    balancer::{BackendSpec, BackendState, Balancer, Proto, Scheduler, Vip, VipOptions},
    counters::Counters,
    loader::{AttachMode, Loaded},
    maps::BpfMaps,
};

const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 1);
const BACKEND_PORT: u16 = 8080;
/// Client threads making connections at once (the servers accept in bursts).
const CLIENT_THREADS: usize = 8;
/// A request loop gives up after this many failed requests, so a broken data path fails fast.
const MAX_FAILURES: usize = 5;

/// Collects failures across client threads, and says when to stop trying.
#[derive(Default)]
struct Failures {
    count: AtomicUsize,
    first: std::sync::Mutex<Vec<String>>,
}

impl Failures {
    fn add(&self, err: &anyhow::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.first
            .lock()
            .expect("failures lock")
            .push(format!("{err:#}"));
    }

    fn too_many(&self) -> bool {
        self.count.load(Ordering::Relaxed) >= MAX_FAILURES
    }

    fn check(&self, what: &str) {
        let count = self.count.load(Ordering::Relaxed);
        assert!(
            count == 0,
            "{what}: {count} failed, e.g. {:?}",
            self.first.lock().expect("failures lock")
        );
    }
}

/// Makes `n` new TCP connections from `ns` to `addr` (each: connect, one line, close), a few
/// at a time, and counts which backend answered each. Panics if any fails.
fn tcp_spread(ns: &Netns, addr: SocketAddr, n: usize) -> Tally {
    let failures = Failures::default();
    let tallies = ns.run(|| {
        thread::scope(|scope| {
            let workers: Vec<_> = (0..CLIENT_THREADS)
                .map(|t| {
                    let failures = &failures;
                    scope.spawn(move || {
                        let mut tally = Tally::new();
                        for i in (t..n).step_by(CLIENT_THREADS) {
                            if failures.too_many() {
                                break;
                            }
                            let line = format!("req{i}");
                            match Conn::connect(addr).and_then(|mut c| c.ask(&line)) {
                                Ok(ident) => *tally.entry(ident).or_default() += 1,
                                Err(err) => failures.add(&err),
                            }
                        }
                        tally
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("client thread"))
                .collect::<Vec<_>>()
        })
    });
    failures.check(&format!("{n} TCP connections to {addr}"));
    let mut total = Tally::new();
    for tally in tallies {
        for (ident, count) in tally {
            *total.entry(ident).or_default() += count;
        }
    }
    total
}

/// Opens `n` TCP connections from `ns` to `addr`, one exchange each, and keeps them open.
fn tcp_hold(ns: &Netns, addr: SocketAddr, n: usize) -> Vec<(Conn, String)> {
    let failures = Failures::default();
    let held = ns.run(|| {
        thread::scope(|scope| {
            let workers: Vec<_> = (0..CLIENT_THREADS)
                .map(|t| {
                    let failures = &failures;
                    scope.spawn(move || {
                        let mut held = Vec::new();
                        for i in (t..n).step_by(CLIENT_THREADS) {
                            if failures.too_many() {
                                break;
                            }
                            let mut conn = match Conn::connect(addr) {
                                Ok(conn) => conn,
                                Err(err) => {
                                    failures.add(&err);
                                    continue;
                                }
                            };
                            match conn.ask(&format!("hold{i}")) {
                                Ok(ident) => held.push((conn, ident)),
                                Err(err) => failures.add(&err),
                            }
                        }
                        held
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("client thread"))
                .collect::<Vec<_>>()
        })
    });
    failures.check(&format!("holding {n} TCP connections to {addr}"));
    held
}

/// Sends `n` datagrams from `ns` to `addr`, each from its own socket on client ports
/// `first_port..first_port + n` (so each is a new flow, whatever came before), checks that
/// every answer came from `addr`, and counts which backend answered each.
fn udp_spread(ns: &Netns, addr: SocketAddr, n: usize, first_port: u16) -> Tally {
    ns.run(|| {
        let mut tally = Tally::new();
        for (i, port) in (first_port..).take(n).enumerate() {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                .unwrap_or_else(|err| panic!("binding UDP port {port}: {err}"));
            socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let ident = udp_exchange(&socket, addr, &format!("dgram{i}-"), 1).remove(0);
            *tally.entry(ident).or_default() += 1;
        }
        tally
    })
}

/// Sends `count` datagrams on `socket` (one fixed 5-tuple) to `addr`, checks that every answer
/// came from `addr`, and returns who answered each.
fn udp_exchange(socket: &UdpSocket, addr: SocketAddr, tag: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let payload = format!("{tag}{i}");
            socket
                .send_to(payload.as_bytes(), addr)
                .unwrap_or_else(|err| panic!("sending {payload:?} to {addr}: {err}"));
            let mut buf = [0u8; 2048];
            let (len, from) = socket
                .recv_from(&mut buf)
                .unwrap_or_else(|err| panic!("no answer to {payload:?} from {addr}: {err}"));
            assert_eq!(from, addr, "the answer to {payload:?} came from {from}");
            let answer = String::from_utf8_lossy(&buf[..len]);
            ident_of(&answer, &payload)
                .unwrap_or_else(|| panic!("bad answer {answer:?} to {payload:?}"))
        })
        .collect()
}

fn total(tally: &Tally) -> usize {
    tally.values().sum()
}

/// `b0 61.2%, b1 19.0%, b2 19.8% (of 1000)`.
fn shares(tally: &Tally) -> String {
    let n = total(tally).max(1);
    let mut out = String::new();
    for (ident, count) in tally {
        let _ = write!(out, "{ident} {:.1}%, ", 100.0 * *count as f64 / n as f64);
    }
    let _ = write!(out, "(of {})", total(tally));
    out
}

/// Panics unless each backend's share of `tally` is within `tolerance` percentage points of
/// its `expected` share (in percent, by backend index), and no one else answered.
fn assert_shares(what: &str, tally: &Tally, expected: &[f64], tolerance: f64) {
    let n = total(tally) as f64;
    eprintln!("{what}: {}", shares(tally));
    let strangers: Vec<&String> = tally
        .keys()
        .filter(|ident| !(0..expected.len()).any(|i| **ident == lb_tests::netns::ident(i)))
        .collect();
    assert!(
        strangers.is_empty(),
        "{what}: answers from unexpected servers {strangers:?}: {}",
        shares(tally)
    );
    for (i, want) in expected.iter().enumerate() {
        let got = 100.0 * tally.get(&ident(i)).copied().unwrap_or(0) as f64 / n;
        assert!(
            (got - want).abs() <= tolerance,
            "{what}: {} got {got:.1}% of the flows, expected {want:.1}% ± {tolerance} pp; \
             shares: {}",
            ident(i),
            shares(tally)
        );
    }
}

/// Waits (at most 5 s) until no interface of `topo` has a tentative IPv6 address: until
/// duplicate address detection of the link-local addresses is over, the gateway does not
/// resolve IPv6 neighbours, and the first IPv6 packets through it wait or are lost.
fn wait_for_ipv6(topo: &Topology) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for ns in [&topo.client, &topo.gateway]
        .into_iter()
        .chain(&topo.backends)
    {
        loop {
            let out = ns
                .exec("ip", &["-6", "addr", "show", "tentative"])
                .unwrap_or_else(|err| panic!("{}: ip addr: {err:#}", ns.name));
            if out.stdout.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: IPv6 addresses still tentative after 5 s: {}",
                ns.name,
                String::from_utf8_lossy(&out.stdout)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A topology with xdplb attached to every gateway interface, its balancer, and TCP and UDP
/// servers on port 8080 of every backend.
///
/// Fields drop in order: servers first, then the balancer and program (detaching), and the
/// namespaces last.
struct Lab {
    _tcp_servers: Vec<Server>,
    _udp_servers: Vec<Server>,
    balancer: Balancer<BpfMaps>,
    loaded: Loaded,
    topo: Topology,
}

impl Lab {
    fn new(backends: usize) -> Self {
        let topo =
            Topology::new(backends).unwrap_or_else(|err| panic!("building the topology: {err:#}"));
        let mut loaded = lb_tests::program::load();
        for iface in topo.gateway_ifaces() {
            topo.gateway
                .run(|| loaded.attach(&iface, AttachMode::Native))
                .unwrap_or_else(|err| panic!("attaching to {iface}: {err:#}"));
        }
        let balancer = loaded
            .balancer(Settings::default())
            .unwrap_or_else(|err| panic!("taking the maps: {err:#}"));
        let tcp_servers = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| ns.tcp_server(BACKEND_PORT, &ident(i)))
            .collect();
        let udp_servers = topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| ns.udp_server(BACKEND_PORT, &ident(i)))
            .collect();
        Self {
            _tcp_servers: tcp_servers,
            _udp_servers: udp_servers,
            balancer,
            loaded,
            topo,
        }
    }

    fn client(&self) -> &Netns {
        &self.topo.client
    }

    /// Backend `i`'s server address, IPv4.
    fn backend_v4(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.topo.backends[i].v4, BACKEND_PORT))
    }

    /// Backend `i`'s server address, IPv6.
    fn backend_v6(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.topo.backends[i].v6, BACKEND_PORT))
    }

    /// Adds VIP `vip` with `scheduler` and `backends`.
    fn add_vip(&mut self, vip: &str, scheduler: Scheduler, backends: Vec<BackendSpec>) -> Vip {
        let vip: Vip = vip.parse().expect("VIP syntax");
        let options = VipOptions {
            scheduler,
            ..VipOptions::default()
        };
        self.balancer
            .add_vip(vip, options)
            .unwrap_or_else(|err| panic!("adding VIP {vip}: {err}"));
        self.balancer
            .set_backends(&vip, backends)
            .unwrap_or_else(|err| panic!("setting the backends of {vip}: {err}"));
        vip
    }

    /// IPv4 backends `0..n` on port 8080, with `weights` (1 for those not given).
    fn specs_v4(&self, n: usize, weights: &[u32]) -> Vec<BackendSpec> {
        (0..n)
            .map(|i| BackendSpec::new(self.backend_v4(i), weights.get(i).copied().unwrap_or(1)))
            .collect()
    }

    fn set_scheduler(&mut self, vip: &Vip, scheduler: Scheduler) {
        let options = VipOptions {
            scheduler,
            ..VipOptions::default()
        };
        self.balancer
            .set_vip_options(vip, options)
            .unwrap_or_else(|err| panic!("switching {vip} to {scheduler}: {err}"));
    }

    fn counters(&self) -> Counters {
        Counters::read(&self.loaded.ebpf).unwrap_or_else(|err| panic!("counters: {err:#}"))
    }

    /// Waits (at most 3 s) until the program has seen no packet for 200 ms.
    fn wait_until_quiet(&self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = self.counters().total();
        loop {
            thread::sleep(Duration::from_millis(200));
            let now = self.counters().total();
            if now == seen {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "traffic did not stop within 3 s:\n{}",
                self.counters()
            );
            seen = now;
        }
    }

    fn new_flows(&self, vip: &Vip) -> u64 {
        self.balancer
            .vip_stats(vip)
            .unwrap_or_else(|err| panic!("stats of {vip}: {err}"))
            .new_flows
    }
}

/// How much `counter` grew from `before` to `after`.
fn grew(before: &Counters, after: &Counters, counter: Counter) -> u64 {
    after.get(counter) - before.get(counter)
}

/// Which way translated packets should go in a phase of the first test.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Path {
    /// Partial checksums (transmit offload on): translated, then passed to the kernel.
    Kernel,
    /// Full checksums: translated and redirected by the program, both directions.
    Fast,
}

/// Checks that the traffic of one kind (`what`) took `path`, from the counters around it.
fn assert_path(what: &str, path: Path, before: &Counters, after: &Counters) {
    let grown = |counter| grew(before, after, counter);
    match path {
        Path::Kernel => {
            assert!(
                grown(Counter::PassPartialChecksum) > 0,
                "{what}: with transmit checksum offload on, no packet was passed as \
                 partial-checksum; counters:\n{after}"
            );
            // A partial checksum is completed by the kernel on the way out: a frame the
            // program transmitted itself would arrive with an incomplete checksum. Packets the
            // kernel builds whole (RSTs, TIME_WAIT ACKs) carry full checksums even with offload
            // on and rightly take the fast path: allow a few, nothing systematic.
            let partial = grown(Counter::PassPartialChecksum);
            for counter in [
                Counter::FwdTx,
                Counter::FwdRedirect,
                Counter::ReplyTx,
                Counter::ReplyRedirect,
            ] {
                assert!(
                    grown(counter) * 50 <= partial,
                    "{what}: with partial checksums, {} grew by {} ({partial} partial); \
                     counters:\n{after}",
                    counter.name(),
                    grown(counter)
                );
            }
        }
        Path::Fast => {
            for counter in [Counter::FwdRedirect, Counter::ReplyRedirect] {
                assert!(
                    grown(counter) > 0,
                    "{what}: with full checksums, {} did not grow; counters:\n{after}",
                    counter.name()
                );
            }
            // A full checksum that happens to equal the pseudo-header sum (about one packet in
            // 65536) is told apart by summing the segment (up to 1480 bytes): allow a stray
            // one, nothing systematic (a kind of packet the fast path missed would be hundreds).
            let fast = grown(Counter::FwdRedirect) + grown(Counter::ReplyRedirect);
            let partial = grown(Counter::PassPartialChecksum);
            assert!(
                partial <= 2,
                "{what}: with transmit checksum offload off, {partial} packets were still seen \
                 as partial ({fast} took the fast path); counters:\n{after}"
            );
        }
    }
    for counter in [
        Counter::DropNoBackend,
        Counter::DropInternal,
        Counter::DropTruncated,
        Counter::PassFib,
    ] {
        assert_eq!(
            grown(counter),
            0,
            "{what}: {} grew; counters:\n{after}",
            counter.name()
        );
    }
}

/// Traffic through the TCP VIP `tcp`, the UDP VIP `udp` and the IPv6 TCP VIP `tcp6`, checked
/// end to end: every exchange completes, answers come from the VIP, every backend takes some
/// flows, each kind takes `path`, and each VIP counts one new flow per connection or socket.
fn exchange_through_vips(lab: &Lab, [tcp, udp, tcp6]: [&Vip; 3], path: Path) {
    const TCP: usize = 300;
    const UDP: usize = 100;
    const TCP6: usize = 30;
    // Client UDP ports of this phase, distinct from the other phase's.
    let udp_port = match path {
        Path::Kernel => 40_000,
        Path::Fast => 41_000,
    };
    let backends = lab.topo.backends.len();
    for (vip, flows) in [(tcp, TCP), (udp, UDP), (tcp6, TCP6)] {
        let what = format!("{path:?} path, {vip}");
        let addr = SocketAddr::new(vip.addr, vip.port);
        if addr.is_ipv6() {
            wait_for_ipv6(&lab.topo);
        }
        let (counters, new_flows) = (lab.counters(), lab.new_flows(vip));
        let tally = match vip.proto {
            Proto::Tcp => tcp_spread(lab.client(), addr, flows),
            Proto::Udp => udp_spread(lab.client(), addr, flows, udp_port),
        };
        eprintln!("{what}: {}", shares(&tally));
        assert_eq!(total(&tally), flows, "{what}");
        for i in 0..backends.min(flows / 10) {
            assert!(
                tally.get(&ident(i)).is_some_and(|&n| n > 0),
                "{what}: {} answered no flow: {}",
                ident(i),
                shares(&tally)
            );
        }
        assert_path(&what, path, &counters, &lab.counters());
        assert_eq!(
            lab.new_flows(vip) - new_flows,
            flows as u64,
            "{what}: the VIP's new-flow count grew by {} for {flows} new connections/sockets",
            lab.new_flows(vip) - new_flows
        );
    }
}

/// TCP (IPv4 and IPv6) and UDP through Maglev VIPs: every exchange completes with answers from
/// the VIP, every backend serves some flows, and the translated packets take the kernel path
/// while senders offload checksums, the program's own redirect path once they do not.
#[test]
#[ignore = "needs root"]
fn tcp_and_udp_through_a_vip_reach_every_backend_and_replies_come_from_the_vip() {
    let mut lab = Lab::new(3);
    let specs = lab.specs_v4(3, &[]);
    let tcp = lab.add_vip("198.19.0.1:80/tcp", Scheduler::Maglev, specs.clone());
    let udp = lab.add_vip("198.19.0.1:53/udp", Scheduler::Maglev, specs);
    let specs6 = (0..3)
        .map(|i| BackendSpec::new(lab.backend_v6(i), 1))
        .collect();
    let tcp6 = lab.add_vip("[fd00:ffff::1]:80/tcp", Scheduler::Maglev, specs6);
    assert_eq!(tcp.addr, IpAddr::from(VIP_V4));
    assert_eq!(tcp6.addr, IpAddr::from(VIP_V6));

    // Default offloads: the senders' checksums are partial, the kernel forwards.
    exchange_through_vips(&lab, [&tcp, &udp, &tcp6], Path::Kernel);

    // Full checksums: the program forwards both directions itself.
    for ns in std::iter::once(lab.client()).chain(&lab.topo.backends) {
        ns.exec("ethtool", &["-K", "eth0", "tx", "off"])
            .unwrap_or_else(|err| panic!("{}: ethtool: {err:#}", ns.name));
    }
    // The last connections of the first phase close in the background: let them finish.
    lab.wait_until_quiet();
    exchange_through_vips(&lab, [&tcp, &udp, &tcp6], Path::Fast);
    eprintln!("counters at the end:\n{}", lab.counters());
}

/// Weights 3:1:1 give 60/20/20 % of new flows (± 5 pp) with weighted round-robin, weighted
/// random and Maglev.
#[test]
#[ignore = "needs root"]
fn weighted_schedulers_share_flows_by_weight() {
    const FLOWS: usize = 2000;
    let mut lab = Lab::new(3);
    let specs = lab.specs_v4(3, &[3, 1, 1]);
    let vip = lab.add_vip("198.19.0.1:80/tcp", Scheduler::Maglev, specs);
    let addr = SocketAddr::new(vip.addr, vip.port);
    for scheduler in [
        Scheduler::WeightedRoundRobin,
        Scheduler::WeightedRandom,
        Scheduler::Maglev,
    ] {
        lab.set_scheduler(&vip, scheduler);
        let tally = tcp_spread(lab.client(), addr, FLOWS);
        assert_shares(scheduler.name(), &tally, &[60.0, 20.0, 20.0], 5.0);
    }
}

/// Round-robin and random ignore the weights 3:1:1: a third of the new flows each (± 5 pp).
#[test]
#[ignore = "needs root"]
fn unweighted_schedulers_ignore_weights_and_share_flows_evenly() {
    const FLOWS: usize = 2000;
    let mut lab = Lab::new(3);
    let specs = lab.specs_v4(3, &[3, 1, 1]);
    let vip = lab.add_vip("198.19.0.1:80/tcp", Scheduler::RoundRobin, specs);
    let addr = SocketAddr::new(vip.addr, vip.port);
    let third = 100.0 / 3.0;
    for scheduler in [Scheduler::RoundRobin, Scheduler::Random] {
        lab.set_scheduler(&vip, scheduler);
        let tally = tcp_spread(lab.client(), addr, FLOWS);
        assert_shares(scheduler.name(), &tally, &[third, third, third], 5.0);
    }
}

/// Least-connections with weights 3:1:1 spreads 1000 connections held open 60/20/20 (± 5 pp).
#[test]
#[ignore = "needs root"]
fn least_conn_shares_open_connections_by_weight() {
    const FLOWS: usize = 1000;
    let mut lab = Lab::new(3);
    let specs = lab.specs_v4(3, &[3, 1, 1]);
    let vip = lab.add_vip("198.19.0.1:80/tcp", Scheduler::LeastConn, specs);
    let addr = SocketAddr::new(vip.addr, vip.port);
    let held = tcp_hold(lab.client(), addr, FLOWS);
    let mut tally = Tally::new();
    for (_, ident) in &held {
        *tally.entry(ident.clone()).or_default() += 1;
    }
    assert_eq!(total(&tally), FLOWS);
    assert_shares("least-conn", &tally, &[60.0, 20.0, 20.0], 5.0);
    // The connections were open all along: every one still answers, on the same backend.
    let mut held = held;
    for (i, (conn, ident)) in held.iter_mut().enumerate().step_by(50) {
        let again = conn
            .ask(&format!("still{i}"))
            .unwrap_or_else(|err| panic!("held connection {i}: {err:#}"));
        assert_eq!(&again, ident, "held connection {i} changed backend");
    }
}

/// Source-hash sends every connection from one client address to one backend, and different
/// addresses to different backends.
#[test]
#[ignore = "needs root"]
fn source_hash_keeps_each_client_address_on_one_backend() {
    const FLOWS: usize = 120;
    const PER_ADDRESS: usize = 16;
    const ADDRESSES: u8 = 12;
    let mut lab = Lab::new(3);
    let specs = lab.specs_v4(3, &[]);
    let vip = lab.add_vip("198.19.0.1:80/tcp", Scheduler::SourceHash, specs);
    let addr = SocketAddr::new(vip.addr, vip.port);

    let tally = tcp_spread(lab.client(), addr, FLOWS);
    eprintln!("source-hash from {}: {}", lab.client().v4, shares(&tally));
    assert_eq!(
        tally.len(),
        1,
        "{FLOWS} connections from one client address reached several backends: {}",
        shares(&tally)
    );

    // More client addresses; a host route to the VIP picks each in turn as the source.
    let mut chosen = BTreeMap::new();
    for host in 10..10 + ADDRESSES {
        let source = Ipv4Addr::new(198, 18, 0, host);
        let client = lab.client();
        client
            .exec(
                "ip",
                &["addr", "add", &format!("{source}/24"), "dev", "eth0"],
            )
            .unwrap_or_else(|err| panic!("adding {source}: {err:#}"));
        client
            .exec(
                "ip",
                &[
                    "route",
                    "replace",
                    &format!("{VIP_V4}/32"),
                    "via",
                    "198.18.0.1",
                    "src",
                    &source.to_string(),
                ],
            )
            .unwrap_or_else(|err| panic!("routing from {source}: {err:#}"));
        let sources = client.run(|| {
            let conn = Conn::connect(addr).expect("connect");
            conn.stream.local_addr().expect("local address").ip()
        });
        assert_eq!(sources, IpAddr::from(source), "the route picks the source");
        let tally = tcp_spread(client, addr, PER_ADDRESS);
        assert_eq!(
            tally.len(),
            1,
            "connections from {source} reached several backends: {}",
            shares(&tally)
        );
        chosen.insert(source, tally.into_keys().next().expect("one backend"));
    }
    eprintln!("source-hash by client address: {chosen:?}");
    let used: BTreeSet<&String> = chosen.values().collect();
    assert!(
        used.len() > 1,
        "{ADDRESSES} client addresses all hashed to one backend: {chosen:?}"
    );
}

/// The backend (ident) that `vip`'s Maglev table, as configured now, gives a new TCP flow from
/// `client`: the agent's table and the data path's hash, recomputed from `lb_common`.
fn maglev_picks(lab: &Lab, vip: &Vip, clients: &[SocketAddr]) -> Vec<String> {
    let info = lab
        .balancer
        .vip(vip)
        .unwrap_or_else(|err| panic!("{vip}: {err}"));
    let addr16 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    let members: Vec<MaglevBackend> = info
        .backends
        .iter()
        .filter(|b| b.spec.state == BackendState::Up && b.spec.weight > 0)
        .map(|b| {
            MaglevBackend::new(
                b.id,
                b.spec.weight,
                addr16(b.spec.addr.ip()),
                b.spec.addr.port().to_be_bytes(),
            )
        })
        .collect();
    let table = maglev::build_table(&members, info.options.ring_size).expect("Maglev table");
    let ident_of_id = |id: u32| {
        let addr = info
            .backends
            .iter()
            .find(|b| b.id == id)
            .expect("a configured backend")
            .spec
            .addr;
        (0..lab.topo.backends.len())
            .find(|&i| lab.backend_v4(i) == addr)
            .map(ident)
            .expect("a backend of the topology")
    };
    let seed = Settings::default().hash_seed;
    clients
        .iter()
        .map(|client| {
            let key = FlowKey {
                src_addr: addr16(client.ip()),
                dst_addr: addr16(vip.addr),
                src_port: client.port().to_be_bytes(),
                dst_port: vip.port.to_be_bytes(),
                proto: PROTO_TCP,
                family: FAMILY_IPV4,
                _pad: [0; 2],
            };
            let slot = maglev::slot(flow_hash(&key, seed), table.len() as u32);
            ident_of_id(table[slot as usize])
        })
        .collect()
}

/// Long-lived connections keep their backend, unbroken, while a backend is added (although the
/// new Maglev table sends some of them elsewhere); new flows reach the added one.
#[test]
#[ignore = "needs root"]
fn a_flow_keeps_its_backend_while_another_backend_is_added() {
    const FLOWS: usize = 32;
    const ROUNDS_BEFORE: usize = 10;
    const ROUNDS_AFTER: usize = 60;
    let mut lab = Lab::new(4);
    let specs = lab.specs_v4(3, &[]);
    let vip = lab.add_vip("198.19.0.1:80/tcp", Scheduler::Maglev, specs);
    let addr = SocketAddr::new(vip.addr, vip.port);

    let mut flows = tcp_hold(lab.client(), addr, FLOWS);
    let clients: Vec<SocketAddr> = flows
        .iter()
        .map(|(conn, _)| conn.stream.local_addr().expect("local address"))
        .collect();
    let backends: Vec<String> = flows.iter().map(|(_, ident)| ident.clone()).collect();
    assert_eq!(
        maglev_picks(&lab, &vip, &clients),
        backends,
        "the data path's Maglev choices differ from the agent's table and the flow hash"
    );

    let started = Instant::now();
    let mut moved = 0;
    for round in 0..ROUNDS_BEFORE + ROUNDS_AFTER {
        if round == ROUNDS_BEFORE {
            let fourth = BackendSpec::new(lab.backend_v4(3), 1);
            lab.balancer
                .add_backend(&vip, fourth)
                .unwrap_or_else(|err| panic!("adding b3: {err}"));
            // The flows the new table sends elsewhere: only the connection table keeps them.
            moved = maglev_picks(&lab, &vip, &clients)
                .iter()
                .zip(&backends)
                .filter(|(new, old)| new != old)
                .count();
            assert!(
                moved > 0,
                "adding b3 remaps none of the {FLOWS} flows: nothing to check"
            );
        }
        for (i, (conn, ident)) in flows.iter_mut().enumerate() {
            let now = conn
                .ask(&format!("flow{i}-round{round}"))
                .unwrap_or_else(|err| {
                    panic!("flow {i} (on {ident}) broke in round {round}: {err:#}")
                });
            assert_eq!(
                &now, ident,
                "flow {i} moved from {ident} to {now} in round {round} (b3 added in round \
                 {ROUNDS_BEFORE})"
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{FLOWS} flows ({moved} of them remapped by the new table) kept their backends over {} \
         rounds in {:?}",
        ROUNDS_BEFORE + ROUNDS_AFTER,
        started.elapsed()
    );

    // The new backend is in use: new flows reach it.
    let tally = tcp_spread(lab.client(), addr, 100);
    eprintln!("after adding b3: {}", shares(&tally));
    assert!(
        tally.get("b3").is_some_and(|&n| n > 0),
        "no new flow reached the added backend b3: {}",
        shares(&tally)
    );
}

/// Removing a backend moves its tracked UDP flow to another backend, and new flows avoid it.
#[test]
#[ignore = "needs root"]
fn removed_backend_flows_move_and_new_flows_avoid_it() {
    let mut lab = Lab::new(3);
    let specs = lab.specs_v4(3, &[]);
    let tcp = lab.add_vip("198.19.0.1:80/tcp", Scheduler::Maglev, specs.clone());
    let udp = lab.add_vip("198.19.0.1:53/udp", Scheduler::Maglev, specs);
    let udp_addr = SocketAddr::new(udp.addr, udp.port);

    // One UDP flow: a fixed client socket, so a fixed 5-tuple.
    let socket = lab.client().run(|| {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        socket
    });
    let first = udp_exchange(&socket, udp_addr, "before", 10);
    let pinned = first[0].clone();
    assert!(
        first.iter().all(|ident| *ident == pinned),
        "one UDP flow was answered by several backends: {first:?}"
    );
    let index: usize = pinned[1..].parse().expect("backend ident");
    let removed = lab.backend_v4(index);
    for vip in [&udp, &tcp] {
        lab.balancer
            .remove_backend(vip, removed)
            .unwrap_or_else(|err| panic!("removing {removed} from {vip}: {err}"));
    }

    // The same 5-tuple moves to one of the others, and stays there.
    let after = udp_exchange(&socket, udp_addr, "after", 10);
    assert!(
        after
            .iter()
            .all(|ident| *ident == after[0] && *ident != pinned),
        "after removing {pinned}, its UDP flow was answered by {after:?}"
    );
    eprintln!("UDP flow moved from {pinned} to {}", after[0]);

    let tally = tcp_spread(lab.client(), SocketAddr::new(tcp.addr, tcp.port), 150);
    eprintln!("new TCP flows without {pinned}: {}", shares(&tally));
    assert!(
        !tally.contains_key(&pinned),
        "new flows reached the removed backend {pinned}: {}",
        shares(&tally)
    );
    assert_eq!(
        tally.len(),
        2,
        "new flows should use both remaining backends: {}",
        shares(&tally)
    );
}

/// Sets the integer socket option `level`/`name` of `socket` to `value`, or panics.
fn set_int_option(socket: &UdpSocket, level: i32, name: i32, value: i32) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the descriptor is the open socket's, borrowed for the call; the option value is a
    // live `i32` of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

/// A datagram to a VIP whose TTL (hop limit) expires at the gateway is not translated: the
/// kernel's ICMP time exceeded quotes the VIP the client sent to, so it reaches the client's
/// socket connected to the VIP (quoting a backend, it would match no socket). No flow is
/// recorded for it.
#[test]
#[ignore = "needs root"]
fn an_expiring_datagram_to_a_vip_gets_time_exceeded_naming_the_vip() {
    let mut lab = Lab::new(1);
    wait_for_ipv6(&lab.topo);
    let v4 = lab.add_vip(
        "198.19.0.1:53/udp",
        Scheduler::Maglev,
        vec![BackendSpec::new(lab.backend_v4(0), 1)],
    );
    let v6 = lab.add_vip(
        "[fd00:ffff::1]:53/udp",
        Scheduler::Maglev,
        vec![BackendSpec::new(lab.backend_v6(0), 1)],
    );
    // The gateway routes the VIPs onward, so that what the program passes untranslated is
    // forwarded, and an expiring packet answered with time exceeded (without a route the
    // kernel would answer "network unreachable" instead).
    let b0 = &lab.topo.backends[0];
    for (family, route, via) in [
        ("-4", "198.19.0.1/32", b0.v4.to_string()),
        ("-6", "fd00:ffff::1/128", b0.v6.to_string()),
    ] {
        lab.topo
            .gateway
            .exec("ip", &[family, "route", "add", route, "via", &via])
            .unwrap_or_else(|err| panic!("route to {route}: {err:#}"));
    }
    let cases = [
        (
            v4,
            SocketAddr::from((VIP_V4, 53)),
            libc::IPPROTO_IP,
            libc::IP_TTL,
            libc::IP_RECVERR,
        ),
        (
            v6,
            SocketAddr::from((VIP_V6, 53)),
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            libc::IPV6_RECVERR,
        ),
    ];
    for (vip, addr, level, ttl_option, recverr_option) in cases {
        let before = lab.counters();
        let flows_before = lab.new_flows(&vip);
        let error = lab.client().run(|| {
            let any: SocketAddr = if addr.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            // At the usual TTL the backend answers through the VIP.
            let socket = UdpSocket::bind(any).expect("bind");
            socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let answered = udp_exchange(&socket, addr, "full-ttl-", 1);
            assert_eq!(answered, ["b0"], "{addr}");
            // At TTL 1, time exceeded comes back instead, as an error on the socket.
            let socket = UdpSocket::bind(any).expect("bind");
            socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            socket.connect(addr).expect("connect");
            set_int_option(&socket, level, recverr_option, 1);
            set_int_option(&socket, level, ttl_option, 1);
            socket.send(b"ttl-1").expect("send");
            let mut buf = [0u8; 2048];
            socket.recv(&mut buf)
        });
        match error {
            Err(err) if err.raw_os_error() == Some(libc::EHOSTUNREACH) => {}
            other => {
                panic!("{addr}: expected time exceeded (EHOSTUNREACH) on the socket, got {other:?}")
            }
        }
        let after = lab.counters();
        assert_eq!(
            grew(&before, &after, Counter::PassTtlExpired),
            1,
            "{addr}:\n{after}"
        );
        assert_eq!(
            lab.new_flows(&vip) - flows_before,
            1,
            "{addr}: only the full-TTL exchange opens a flow"
        );
    }
}

/// Traffic to a backend's own address passes through the gateway untranslated, at a port that
/// is no VIP's backend port (a VIP's backend `ADDR:PORT` is the VIP's: its packets leave as the
/// VIP's, see the README's limits).
#[test]
#[ignore = "needs root"]
fn non_vip_traffic_is_still_routed() {
    let mut lab = Lab::new(2);
    let specs: Vec<BackendSpec> = (0..2)
        .map(|i| {
            let server = lab.backend_v4(i);
            BackendSpec::new(SocketAddr::new(server.ip(), server.port() + 1), 1)
        })
        .collect();
    let vip = lab.add_vip("198.19.0.1:80/tcp", Scheduler::Maglev, specs);
    let before = lab.counters();

    let direct = lab.backend_v4(0);
    let answer = lab
        .client()
        .run(|| tcp_request(direct, "direct"))
        .unwrap_or_else(|err| panic!("TCP to {direct}: {err:#}"));
    assert_eq!(answer, "b0 direct");
    let target = lab.topo.backends[0].v4.to_string();
    lab.client()
        .exec("ping", &["-c", "3", "-i", "0.05", "-W", "2", &target])
        .unwrap_or_else(|err| panic!("ping {target}: {err:#}"));

    let after = lab.counters();
    // The three echo requests and replies, and the TCP exchange both ways.
    assert!(
        grew(&before, &after, Counter::PassNonVip) >= 6 + 6,
        "direct traffic was not passed as non-VIP:\n{after}"
    );
    for counter in [
        Counter::FwdTx,
        Counter::FwdRedirect,
        Counter::ReplyTx,
        Counter::ReplyRedirect,
        Counter::PassPartialChecksum,
    ] {
        assert_eq!(
            grew(&before, &after, counter),
            0,
            "direct traffic was translated ({}):\n{after}",
            counter.name()
        );
    }
    let stats = lab
        .balancer
        .vip_stats(&vip)
        .unwrap_or_else(|err| panic!("stats: {err}"));
    assert_eq!(
        stats.packets, 0,
        "the VIP counted direct traffic: {stats:?}"
    );
}
