//! Packet fixtures: the real XDP program through `BPF_PROG_TEST_RUN`.

mod common;

use lb_common::Counter;
use lb_tests::{
    fixture::{Case, Expect, XdpAction, run_cases},
    packet::{CLIENT_MAC, GATEWAY_MAC, L4, frame, tcp_flags, with_vlan},
};
use lb_user::dataplane::Counters;

fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().expect("socket address")
}

/// An ARP request from the client for 198.18.0.1.
fn arp_request() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&[0x08, 0x06]);
    out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&[198, 18, 0, 2]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[198, 18, 0, 1]);
    out
}

#[test]
#[ignore = "needs root"]
fn passes_and_counts_every_frame() {
    let mut loaded = common::load();
    let tcp4 = frame(
        addr("198.18.0.2:40000"),
        addr("198.18.1.2:80"),
        L4::Tcp(tcp_flags::SYN),
        b"",
    );
    let udp6 = frame(
        addr("[fd00::2]:5353"),
        addr("[fd00:0:0:1::2]:53"),
        L4::Udp,
        b"query",
    );
    let mut truncated_ip4 = tcp4.clone();
    truncated_ip4.truncate(14 + 10);
    let mut gateway_bound = arp_request();
    gateway_bound[..6].copy_from_slice(&GATEWAY_MAC);

    let cases = [
        Case::new(
            "IPv4 TCP SYN is passed untouched",
            tcp4.clone(),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "IPv6 UDP is passed untouched",
            udp6.clone(),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "802.1Q-tagged IPv4 is passed untouched",
            with_vlan(&tcp4, 42),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "802.1Q-tagged IPv6 is passed untouched",
            with_vlan(&udp6, 7),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "ARP is passed untouched",
            arp_request(),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "unicast ARP is passed untouched",
            gateway_bound,
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "IPv4 cut inside its header is passed untouched",
            truncated_ip4,
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "VLAN tag cut short is passed untouched",
            with_vlan(&tcp4, 1)[..16].to_vec(),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
    ];

    let before = Counters::read(&loaded.ebpf).expect("counters");
    let ran = run_cases(&cases, |input| common::test_run(&mut loaded, input));
    let after = Counters::read(&loaded.ebpf).expect("counters");

    let delta = |c| after.get(c) - before.get(c);
    assert_eq!(ran, cases.len());
    assert_eq!(delta(Counter::PassIpv4), 2, "IPv4 frames: plain and tagged");
    assert_eq!(delta(Counter::PassIpv6), 2, "IPv6 frames: plain and tagged");
    assert_eq!(delta(Counter::PassNonIp), 2, "ARP frames");
    assert_eq!(delta(Counter::PassTruncated), 2, "truncated frames");
    assert_eq!(
        after.total() - before.total(),
        cases.len() as u64,
        "one counter per frame"
    );
}
