//! Packet fixtures: the real XDP program through `BPF_PROG_TEST_RUN`.
//!
//! The program runs in the gateway namespace of a real topology, with permanent neighbour
//! entries, so that `bpf_fib_lookup` answers as it would on a gateway: each case gives the
//! ingress interface, and the expected output frames carry the gateway's and the next hop's
//! real MAC addresses. Expected frames are built with etherparse, so their checksums come from
//! an implementation independent of the program's incremental updates.

use std::net::SocketAddr;

use lb_tests::{
    fixture::{Case, Expect, XdpAction, to_one_of},
    lab::{PacketLab, SAME_PORT_HOST, UNRESOLVED_HOST},
    packet::{
        L4, Link, arp_request, colliding_payload, cut, frame, frame_with, icmp_echo, partial,
        patch_ipv4, set_checksum, tcp_flags, verify_checksums, with_ipv4_options, with_ipv6_ext,
        with_vlan,
    },
    sa, vip,
};

const SYN: L4 = L4::Tcp(tcp_flags::SYN);
const ACK: L4 = L4::Tcp(tcp_flags::ACK);

#[test]
#[ignore = "needs root"]
fn fixtures() {
    let mut lab = PacketLab::set_up();
    let client = "198.18.0.2:40000";
    let client6 = "[fd00::2]:40000";
    let syn = frame(sa(client), sa("198.19.0.1:80"), SYN, b"");
    let udp = frame(
        sa("198.18.0.2:5353"),
        sa("198.19.0.1:53"),
        L4::Udp,
        b"query",
    );
    let syn6 = frame(sa(client6), sa("[fd00:ffff::1]:80"), SYN, b"");
    let udp6 = frame(
        sa("[fd00::2]:5353"),
        sa("[fd00:ffff::1]:53"),
        L4::Udp,
        b"query",
    );
    let collide = colliding_payload("198.18.0.2:40010", "198.19.0.1:80", 2);
    let collide_odd = colliding_payload("198.18.0.2:40011", "198.19.0.1:80", 3);

    // Requests, arriving from the client.
    let from_client = vec![
        // Balancing and NAT, IPv4 and IPv6, TCP and UDP.
        Case::new(
            "IPv4 TCP SYN to a VIP is translated to the backend and redirected",
            syn.clone(),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0(client, "198.18.1.2:8080", SYN, b"")),
        )
        .counter("fwd_redirect"),
        Case::new(
            "the same flow's next packet (with data) goes to the same backend",
            frame(
                sa(client),
                sa("198.19.0.1:80"),
                ACK,
                b"GET / HTTP/1.1\r\n\r\n",
            ),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0(client, "198.18.1.2:8080", ACK, b"GET / HTTP/1.1\r\n\r\n")),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv4 UDP to a VIP",
            udp.clone(),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0("198.18.0.2:5353", "198.18.1.2:8080", L4::Udp, b"query")),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv4 UDP without checksum keeps checksum 0",
            set_checksum(
                frame(sa("198.18.0.2:5354"), sa("198.19.0.1:53"), L4::Udp, b"q"),
                0,
            ),
            XdpAction::Redirect,
            Expect::Frame(set_checksum(
                lab.to_b0("198.18.0.2:5354", "198.18.1.2:8080", L4::Udp, b"q"),
                0,
            )),
        ),
        Case::new(
            "IPv6 TCP SYN to a VIP",
            syn6.clone(),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0(client6, "[fd00:0:0:1::2]:8080", SYN, b"")),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv6 UDP to a VIP",
            udp6.clone(),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0("[fd00::2]:5353", "[fd00:0:0:1::2]:8080", L4::Udp, b"query")),
        ),
        Case::new(
            "IPv4 TCP with data and PSH",
            frame(
                sa("198.18.0.2:40001"),
                sa("198.19.0.1:80"),
                L4::Tcp(tcp_flags::ACK | tcp_flags::PSH),
                &[7; 333],
            ),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0(
                "198.18.0.2:40001",
                "198.18.1.2:8080",
                L4::Tcp(tcp_flags::ACK | tcp_flags::PSH),
                &[7; 333],
            )),
        ),
        Case::new(
            "TCP RST of a tracked flow is still forwarded",
            frame(
                sa(client),
                sa("198.19.0.1:80"),
                L4::Tcp(tcp_flags::RST),
                b"",
            ),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0(client, "198.18.1.2:8080", L4::Tcp(tcp_flags::RST), b"")),
        ),
        // Wildcard-port VIPs.
        Case::new(
            "wildcard-port TCP VIP keeps the destination port (443)",
            frame(sa(client), sa("198.19.0.2:443"), SYN, b""),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0(client, "198.18.1.2:443", SYN, b"")),
        ),
        Case::new(
            "wildcard-port UDP VIP keeps the destination port (5000)",
            frame(sa("198.18.0.2:6000"), sa("198.19.0.2:5000"), L4::Udp, b"x"),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0("198.18.0.2:6000", "198.18.1.2:5000", L4::Udp, b"x")),
        ),
        Case::new(
            "an exact-port VIP wins over the address's wildcard VIP",
            frame(sa(client), sa("198.19.0.2:8443"), SYN, b""),
            XdpAction::Redirect,
            to_one_of(&["198.18.2.2:9443"]),
        ),
        // Each scheduler.
        Case::new(
            "maglev picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 1)),
                sa("198.19.1.1:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "source-hash picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 2)),
                sa("198.19.1.2:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "round-robin picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 3)),
                sa("198.19.1.3:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "weighted-round-robin picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 4)),
                sa("198.19.1.4:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "random picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 5)),
                sa("198.19.1.5:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "weighted-random picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 6)),
                sa("198.19.1.6:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "least-conn picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 7)),
                sa("198.19.1.7:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        // Forwarding decisions.
        Case::new(
            "a backend reached through the ingress interface: XDP_TX",
            frame(sa(client), sa("198.19.0.3:80"), SYN, b""),
            XdpAction::Tx,
            Expect::Frame(frame_with(
                Link {
                    src_mac: lab.gc_mac,
                    dst_mac: [2, 0, 0, 0, 0, 0x33],
                    ttl: 63,
                },
                sa(client),
                sa(&format!("{SAME_PORT_HOST}:8080")),
                SYN,
                b"",
            )),
        )
        .counter("fwd_tx"),
        Case::new(
            "unresolved next hop: translated and passed to the kernel to resolve",
            frame(sa(client), sa("198.19.0.4:80"), SYN, b""),
            XdpAction::Pass,
            Expect::Frame(frame(
                sa(client),
                sa(&format!("{UNRESOLVED_HOST}:8080")),
                SYN,
                b"",
            )),
        )
        .counter("pass_no_neighbour"),
        Case::new(
            "TTL 1: translated and passed, for the kernel's time-exceeded",
            frame_with(
                Link {
                    ttl: 1,
                    ..Link::default()
                },
                sa("198.18.0.2:40002"),
                sa("198.19.0.1:80"),
                SYN,
                b"",
            ),
            XdpAction::Pass,
            Expect::Frame(frame_with(
                Link {
                    ttl: 1,
                    ..Link::default()
                },
                sa("198.18.0.2:40002"),
                sa("198.18.1.2:8080"),
                SYN,
                b"",
            )),
        )
        .counter("pass_fib"),
        Case::new(
            "802.1Q-tagged IPv4 to a VIP: translated, passed to the kernel",
            with_vlan(
                &frame(sa("198.18.0.2:40003"), sa("198.19.0.1:80"), SYN, b""),
                42,
            ),
            XdpAction::Pass,
            Expect::Frame(with_vlan(
                &frame(sa("198.18.0.2:40003"), sa("198.18.1.2:8080"), SYN, b""),
                42,
            )),
        )
        .counter("pass_fib"),
        Case::new(
            "802.1Q-tagged IPv6 to a VIP: translated, passed to the kernel",
            with_vlan(
                &frame(sa("[fd00::2]:40003"), sa("[fd00:ffff::1]:80"), SYN, b""),
                7,
            ),
            XdpAction::Pass,
            Expect::Frame(with_vlan(
                &frame(sa("[fd00::2]:40003"), sa("[fd00:0:0:1::2]:8080"), SYN, b""),
                7,
            )),
        ),
        Case::new(
            "partial (offloaded) TCP checksum: translated as partial and passed",
            partial(
                frame(sa("198.18.0.2:40004"), sa("198.19.0.1:80"), SYN, b"abc"),
                "198.18.0.2".parse().unwrap(),
                "198.19.0.1".parse().unwrap(),
            ),
            XdpAction::Pass,
            Expect::Frame(partial(
                frame(sa("198.18.0.2:40004"), sa("198.18.1.2:8080"), SYN, b"abc"),
                "198.18.0.2".parse().unwrap(),
                "198.18.1.2".parse().unwrap(),
            )),
        )
        .counter("pass_partial_checksum"),
        Case::new(
            "partial (offloaded) IPv6 UDP checksum: translated as partial and passed",
            partial(
                frame(sa("[fd00::2]:5355"), sa("[fd00:ffff::1]:53"), L4::Udp, b"q"),
                "fd00::2".parse().unwrap(),
                "fd00:ffff::1".parse().unwrap(),
            ),
            XdpAction::Pass,
            Expect::Frame(partial(
                frame(
                    sa("[fd00::2]:5355"),
                    sa("[fd00:0:0:1::2]:8080"),
                    L4::Udp,
                    b"q",
                ),
                "fd00::2".parse().unwrap(),
                "fd00:0:0:1::2".parse().unwrap(),
            )),
        ),
        Case::new(
            "a full checksum that equals the pseudo-header sum is told from a partial one",
            frame(sa("198.18.0.2:40010"), sa("198.19.0.1:80"), ACK, &collide),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0("198.18.0.2:40010", "198.18.1.2:8080", ACK, &collide)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "the same for an odd-length segment",
            frame(
                sa("198.18.0.2:40011"),
                sa("198.19.0.1:80"),
                ACK,
                &collide_odd,
            ),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0("198.18.0.2:40011", "198.18.1.2:8080", ACK, &collide_odd)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv6 with a hop-by-hop header to a VIP is balanced",
            with_ipv6_ext(
                &frame(sa("[fd00::2]:40005"), sa("[fd00:ffff::1]:80"), SYN, b""),
                0,
            ),
            XdpAction::Redirect,
            Expect::Check(Box::new(|out| {
                if out.len() == 14 + 40 + 8 + 20 {
                    Ok(())
                } else {
                    Err(format!("length {}", out.len()))
                }
            })),
        ),
        // Not for a VIP: passed untouched.
        Case::new(
            "IPv4 TCP to a non-VIP address is passed untouched",
            frame(sa(client), sa("198.18.1.2:8080"), SYN, b""),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "IPv6 TCP to a non-VIP address is passed untouched",
            frame(sa(client6), sa("[fd00:0:0:1::2]:8080"), SYN, b""),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "a VIP address on a port with no VIP is passed untouched",
            frame(sa(client), sa("198.19.0.1:81"), SYN, b""),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "UDP to a TCP-only VIP address is passed untouched",
            frame(sa(client), sa("198.19.0.3:80"), L4::Udp, b"x"),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "ICMP echo to a VIP address is passed untouched",
            icmp_echo([198, 19, 0, 1]),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "ICMP echo to another address is passed untouched",
            icmp_echo([198, 18, 1, 2]),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "ARP is passed untouched",
            arp_request(),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_ip"),
        Case::new(
            "an unknown EtherType (LLDP) is passed untouched",
            {
                let mut f = syn.clone();
                f[12] = 0x88;
                f[13] = 0xcc;
                f
            },
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_ip"),
        Case::new(
            "IPv4 options, not to a VIP: passed untouched",
            with_ipv4_options(&frame(sa(client), sa("198.18.1.2:8080"), SYN, b"")),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "an IPv4 fragment not to a VIP: passed untouched",
            patch_ipv4(
                frame(sa(client), sa("198.18.1.2:8080"), L4::Udp, b"frag"),
                20,
                0x20,
            ),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "a VIP without backends drops",
            frame(sa(client), sa("198.19.0.5:80"), SYN, b""),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_no_backend"),
        // Bad input to a VIP: dropped and counted by reason.
        Case::new(
            "Ethernet header only: passed (no IP to judge)",
            cut(&syn, 14),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_malformed"),
        Case::new(
            "cut inside the VLAN tag: passed",
            cut(&with_vlan(&syn, 1), 16),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_malformed"),
        Case::new(
            "cut inside the IPv4 header (no address to judge): passed",
            cut(&syn, 14 + 12),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_malformed"),
        Case::new(
            "cut inside the IPv6 header: passed",
            cut(&syn6, 14 + 30),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_malformed"),
        Case::new(
            "to a VIP, cut inside the TCP header: dropped",
            cut(&syn, 14 + 20 + 10),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_truncated"),
        Case::new(
            "to a VIP, cut inside the UDP header: dropped",
            cut(&udp, 14 + 20 + 4),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_truncated"),
        Case::new(
            "to an IPv6 VIP, cut inside the TCP header: dropped",
            cut(&syn6, 14 + 40 + 12),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_truncated"),
        Case::new(
            "to a VIP, IHL 4 (bad header): dropped",
            patch_ipv4(syn.clone(), 14, 0x44),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_bad_header"),
        Case::new(
            "to a VIP, IP version 6 in an IPv4 EtherType: dropped",
            patch_ipv4(syn.clone(), 14, 0x65),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_bad_header"),
        Case::new(
            "to a VIP, total length shorter than the header: dropped",
            patch_ipv4(syn.clone(), 17, 10),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_bad_header"),
        Case::new(
            "to a VIP, IPv4 options: dropped",
            with_ipv4_options(&syn),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_ip_options"),
        Case::new(
            "to a VIP, first IPv4 fragment (MF): dropped",
            patch_ipv4(udp.clone(), 20, 0x20),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_fragment"),
        Case::new(
            "to a VIP, later IPv4 fragment (offset > 0): dropped",
            patch_ipv4(udp.clone(), 21, 0x10),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_fragment"),
        Case::new(
            "to an IPv6 VIP, fragment header: dropped",
            with_ipv6_ext(&udp6, 44),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_fragment"),
    ];
    let mut ran = lab.run(lab.gc, &from_client);

    // Replies, arriving from backend 0, of the flows the requests above opened.
    let from_backend = vec![
        Case::new(
            "TCP reply of a tracked flow is translated to come from the VIP",
            lab.sent_by_b0(
                "198.18.1.2:8080",
                client,
                L4::Tcp(tcp_flags::SYN | tcp_flags::ACK),
                b"",
            ),
            XdpAction::Redirect,
            Expect::Frame(lab.to_client(
                "198.19.0.1:80",
                client,
                L4::Tcp(tcp_flags::SYN | tcp_flags::ACK),
                b"",
            )),
        )
        .counter("reply_redirect"),
        Case::new(
            "UDP reply of a tracked flow",
            lab.sent_by_b0("198.18.1.2:8080", "198.18.0.2:5353", L4::Udp, b"answer"),
            XdpAction::Redirect,
            Expect::Frame(lab.to_client("198.19.0.1:53", "198.18.0.2:5353", L4::Udp, b"answer")),
        )
        .counter("reply_redirect"),
        Case::new(
            "IPv6 TCP reply of a tracked flow",
            lab.sent_by_b0("[fd00:0:0:1::2]:8080", client6, ACK, b"data"),
            XdpAction::Redirect,
            Expect::Frame(lab.to_client("[fd00:ffff::1]:80", client6, ACK, b"data")),
        ),
        Case::new(
            "reply of a wildcard-port flow comes from the port the client used",
            lab.sent_by_b0("198.18.1.2:443", client, ACK, b""),
            XdpAction::Redirect,
            Expect::Frame(lab.to_client("198.19.0.2:443", client, ACK, b"")),
        ),
        Case::new(
            "partial-checksum reply: translated as partial and passed",
            partial(
                lab.sent_by_b0("198.18.1.2:8080", "198.18.0.2:40004", ACK, b"x"),
                "198.18.1.2".parse().unwrap(),
                "198.18.0.2".parse().unwrap(),
            ),
            XdpAction::Pass,
            Expect::Frame(partial(
                frame_with(
                    Link {
                        src_mac: lab.b0_mac,
                        dst_mac: lab.gb0_mac,
                        ttl: 64,
                    },
                    sa("198.19.0.1:80"),
                    sa("198.18.0.2:40004"),
                    ACK,
                    b"x",
                ),
                "198.19.0.1".parse().unwrap(),
                "198.18.0.2".parse().unwrap(),
            )),
        )
        .counter("pass_partial_checksum"),
        Case::new(
            "a backend's packet to a client port with no tracked flow is passed untouched",
            lab.sent_by_b0("198.18.1.2:8080", "198.18.0.2:49999", ACK, b""),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
    ];
    ran += lab.run(lab.gb0, &from_backend);
    assert!(ran >= 40, "{ran} fixtures");

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

#[test]
#[ignore = "needs root"]
fn weighted_round_robin_over_test_run_follows_the_weights() {
    let mut lab = PacketLab::set_up();
    let gc = lab.gc;
    let loaded = &mut lab.loaded;
    // 1000 new flows to the weighted-round-robin VIP (3:1 between two backends).
    let counts = lab.topo.gateway.run(|| {
        let mut to_b0 = 0;
        for port in 0..1000u16 {
            let input = frame(
                SocketAddr::from(([198, 18, 0, 2], 20000 + port)),
                sa("198.19.1.4:80"),
                SYN,
                b"",
            );
            let out = lb_tests::program::test_run(loaded, &input, Some(gc)).expect("test run");
            assert_eq!(out.action, XdpAction::Redirect as u32);
            verify_checksums(&out.output).expect("checksums");
            if out.output[30..34] == [198, 18, 1, 2] {
                to_b0 += 1;
            }
        }
        to_b0
    });
    // Per-CPU cursors each walk the 3:1 cycle, so the share is 75% up to one cycle per CPU.
    assert!(
        (740..=760).contains(&counts),
        "{counts} of 1000 to the weight-3 backend"
    );
}
