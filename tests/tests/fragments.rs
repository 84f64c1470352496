//! Fragmented UDP through a VIP, end to end: a client sends datagrams of about 4000 bytes to
//! UDP VIPs (IPv4 and IPv6) across 1500-byte links, so its kernel cuts each into three
//! fragments; xdplb on the gateway sends every fragment of a datagram to one backend, whose
//! kernel reassembles it, and translates the backend's fragmented echo back to come from the
//! VIP, which the client's kernel reassembles in turn.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_common::{Counter, maps::Settings};
use lb_tests::netns::{IO_TIMEOUT, Netns, Topology, ident};
use lb_user::{
    balancer::{BackendSpec, Vip, VipOptions},
    counters::Counters,
    loader::AttachMode,
};

const BACKEND_PORT: u16 = 8080;
const BACKENDS: usize = 2;
/// Datagrams per VIP, each from its own client port (its own flow).
const DATAGRAMS: u16 = 12;
/// Bytes of each datagram's payload: three fragments on a 1500-byte link.
const SIZE: usize = 4000;

/// A UDP server on `[::]:8080` of `ns` that answers each datagram with `"{ident} "` and the
/// datagram, whatever its size; stops when the returned flag is set.
fn echo_server(ns: &Netns, ident: String) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    let socket = ns
        .run(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, BACKEND_PORT)))
        .unwrap_or_else(|err| panic!("{}: bind udp/{BACKEND_PORT}: {err}", ns.name));
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stopped.load(Ordering::Relaxed) {
            if let Ok((len, peer)) = socket.recv_from(&mut buf) {
                let mut reply = format!("{ident} ").into_bytes();
                reply.extend_from_slice(&buf[..len]);
                let _ = socket.send_to(&reply, peer);
            }
        }
    });
    (stop, handle)
}

/// Waits (at most 5 s) until no interface of `topo` has a tentative IPv6 address (duplicate
/// address detection holds IPv6 neighbour resolution back until then).
fn wait_for_ipv6(topo: &Topology) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for ns in [&topo.client, &topo.gateway]
        .into_iter()
        .chain(&topo.backends)
    {
        while !ns
            .exec("ip", &["-6", "addr", "show", "tentative"])
            .expect("ip addr")
            .stdout
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "{}: IPv6 still tentative",
                ns.name
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A payload of `SIZE` bytes that names its datagram throughout.
fn payload(tag: &str) -> Vec<u8> {
    tag.bytes().cycle().take(SIZE).collect()
}

#[test]
#[ignore = "needs root"]
fn large_udp_datagrams_are_reassembled_at_the_backend_and_the_client() {
    let topo = Topology::new(BACKENDS).unwrap_or_else(|err| panic!("topology: {err:#}"));
    let mut loaded = lb_tests::program::load();
    for iface in topo.gateway_ifaces() {
        topo.gateway
            .run(|| loaded.attach(&iface, AttachMode::Native))
            .unwrap_or_else(|err| panic!("attaching to {iface}: {err:#}"));
    }
    let mut balancer = loaded
        .balancer(Settings::default())
        .unwrap_or_else(|err| panic!("maps: {err:#}"));
    let servers: Vec<_> = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| echo_server(ns, ident(i)))
        .collect();
    let vips: [(Vip, Vec<BackendSpec>); 2] = [
        (
            "198.19.0.1:53/udp".parse().unwrap(),
            topo.backends
                .iter()
                .map(|b| BackendSpec::new(SocketAddr::from((b.v4, BACKEND_PORT)), 1))
                .collect(),
        ),
        (
            "[fd00:ffff::1]:53/udp".parse().unwrap(),
            topo.backends
                .iter()
                .map(|b| BackendSpec::new(SocketAddr::from((b.v6, BACKEND_PORT)), 1))
                .collect(),
        ),
    ];
    for (vip, specs) in &vips {
        balancer.add_vip(*vip, VipOptions::default()).expect("vip");
        balancer.set_backends(vip, specs.clone()).expect("backends");
    }
    wait_for_ipv6(&topo);

    let before = Counters::read(&loaded.ebpf).expect("counters");
    let mut answered_by = std::collections::BTreeSet::new();
    for (vip, _) in &vips {
        let addr = SocketAddr::new(vip.addr, vip.port);
        let unspecified: IpAddr = match vip.addr {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        topo.client.run(|| {
            for n in 0..DATAGRAMS {
                let socket = UdpSocket::bind((unspecified, 43000 + n)).expect("bind");
                socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                let sent = payload(&format!("{addr} #{n} "));
                socket.send_to(&sent, addr).expect("send");
                let mut buf = vec![0u8; 65536];
                let (len, from) = socket.recv_from(&mut buf).unwrap_or_else(|err| {
                    panic!("no answer to datagram {n} of {SIZE} bytes to {addr}: {err}")
                });
                assert_eq!(from, addr, "the answer came from {from}, not the VIP");
                let answer = &buf[..len];
                let space = answer.iter().position(|b| *b == b' ').expect("an ident");
                assert_eq!(
                    &answer[space + 1..],
                    &sent[..],
                    "datagram {n} to {addr} came back altered ({len} bytes)"
                );
                answered_by.insert(String::from_utf8_lossy(&answer[..space]).into_owned());
            }
        });
    }
    let after = Counters::read(&loaded.ebpf).expect("counters");
    let grew = |c: Counter| after.get(c) - before.get(c);
    // Three fragments each way per datagram, every one translated (a later fragment the
    // program left alone would reach the backend or the client with the wrong address, and
    // its datagram would never be reassembled).
    let translated: u64 = [
        Counter::FwdTx,
        Counter::FwdRedirect,
        Counter::ReplyTx,
        Counter::ReplyRedirect,
        Counter::PassFib,
        Counter::PassNoNeighbour,
    ]
    .map(grew)
    .iter()
    .sum();
    let datagrams = 2 * u64::from(DATAGRAMS);
    eprintln!("{translated} fragments translated for {datagrams} exchanges; counters:\n{after}");
    assert!(
        translated >= 6 * datagrams,
        "{translated} packets translated for {datagrams} exchanges of 3 fragments each way; \
         counters:\n{after}"
    );
    for c in [Counter::DropFragment, Counter::DropFragmentOrphan] {
        assert_eq!(grew(c), 0, "{}; counters:\n{after}", c.name());
    }
    assert_eq!(
        answered_by.len(),
        BACKENDS,
        "every backend answers some datagrams: {answered_by:?}"
    );
    for (stop, handle) in servers {
        stop.store(true, Ordering::Relaxed);
        handle.join().expect("server");
    }
    drop(balancer);
    drop(loaded);
}
