//! Packet fixtures: the real XDP program through `BPF_PROG_TEST_RUN`.
//!
//! The program runs in the gateway namespace of a real topology, with permanent neighbour
//! entries, so that `bpf_fib_lookup` answers as it would on a gateway
//! ([`PacketLab`]): each case gives the ingress interface, and the expected output frames carry
//! the gateway's and the next hop's real MAC addresses. Expected frames are built with
//! etherparse, so their checksums come from an implementation independent of the program's
//! incremental updates.
//!
//! One table per file: [`requests`] and [`schedulers`] (from the client), [`malformed`], and
//! [`replies`] (from backend 0, to the flows the requests opened); [`icmp`], [`fastpath`] and
//! [`fragments`] run in labs of their own.

mod acl;
mod cluster;
mod dsr;
mod embryonic;
mod fastpath;
mod fragments;
mod icmp;
mod ipip;
mod malformed;
mod replies;
mod requests;
mod schedulers;

use lb_tests::{
    lab::PacketLab,
    packet::{L4, frame, tcp_flags},
    sa, vip,
};

const SYN: L4 = L4::Tcp(tcp_flags::SYN);
const ACK: L4 = L4::Tcp(tcp_flags::ACK);

/// The client's address of the first tracked flows, IPv4 and IPv6.
const CLIENT: &str = "198.18.0.2:40000";
const CLIENT6: &str = "[fd00::2]:40000";

/// The frames several tables start from: a TCP SYN and a UDP query to the IPv4 and IPv6 VIPs.
struct Frames {
    syn: Vec<u8>,
    udp: Vec<u8>,
    syn6: Vec<u8>,
    udp6: Vec<u8>,
}

fn frames() -> Frames {
    Frames {
        syn: frame(sa(CLIENT), sa("198.19.0.1:80"), SYN, b""),
        udp: frame(
            sa("198.18.0.2:5353"),
            sa("198.19.0.1:53"),
            L4::Udp,
            b"query",
        ),
        syn6: frame(sa(CLIENT6), sa("[fd00:ffff::1]:80"), SYN, b""),
        udp6: frame(
            sa("[fd00::2]:5353"),
            sa("[fd00:ffff::1]:53"),
            L4::Udp,
            b"query",
        ),
    }
}

/// Every table, in one lab: the requests, schedulers and malformed tables arriving from the
/// client, then the replies to the requests' flows arriving from backend 0.
#[test]
#[ignore = "needs root"]
fn fixtures() {
    let mut lab = PacketLab::set_up();
    let mut ran = 0;
    for table in [
        requests::cases(&lab),
        schedulers::cases(),
        malformed::cases(),
        malformed::strict_cases(&lab),
    ] {
        ran += lab.run(lab.gc, &table);
    }
    for (src, dst, proto) in malformed::EXPIRING {
        assert!(
            !lab.tracked(src, dst, proto),
            "a packet with an expiring TTL created the flow {src} -> {dst}"
        );
    }
    ran += lab.run(lab.gb0, &replies::cases(&lab));
    assert!(ran >= 80, "{ran} fixtures");

    // The flows and their traffic were counted for the VIP and its backend.
    let v = vip("198.19.0.1:80/tcp");
    let stats = lab.balancer.vip_stats(&v).expect("vip stats");
    assert!(stats.new_flows >= 4, "{stats:?}");
    let b0 = lab.balancer.vip(&v).unwrap().backends[0].id;
    let b0_stats = lab.balancer.backend_stats(b0).expect("backend stats");
    assert!(
        b0_stats.packets >= stats.packets,
        "replies count for the backend too: {b0_stats:?} vs {stats:?}"
    );
}
