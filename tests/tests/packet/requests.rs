//! Requests, arriving from the client: balancing and NAT (IPv4 and IPv6, TCP and UDP),
//! wildcard-port VIPs, the forwarding decisions, and what is not for a VIP.

use lb_tests::{
    fixture::{Case, Expect, XdpAction, to_one_of},
    lab::{PacketLab, SAME_PORT_HOST, SAME_PORT_MAC, UNRESOLVED_HOST},
    packet::{
        L4, Link, arp_request, colliding_payload, frame, frame_with, icmp_echo, partial,
        patch_ipv4, set_checksum, tcp_flags, with_ipv4_options, with_ipv6_ext, with_vlan,
    },
    sa,
};

use super::{ACK, CLIENT, CLIENT6, Frames, SYN, frames};

/// The requests table (the flows it opens are the replies table's).
pub fn cases(lab: &PacketLab) -> Vec<Case> {
    let (client, client6) = (CLIENT, CLIENT6);
    let Frames {
        syn,
        udp,
        syn6,
        udp6,
    } = frames();
    let collide = colliding_payload("198.18.0.2:40010", "198.19.0.1:80", 2);
    let collide_odd = colliding_payload("198.18.0.2:40011", "198.19.0.1:80", 3);
    vec![
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
            "IPv6 UDP with checksum 0 (never valid there) keeps checksum 0",
            set_checksum(
                frame(sa("[fd00::2]:5353"), sa("[fd00:ffff::1]:53"), L4::Udp, b"q"),
                0,
            ),
            XdpAction::Redirect,
            Expect::Frame(set_checksum(
                lab.to_b0("[fd00::2]:5353", "[fd00:0:0:1::2]:8080", L4::Udp, b"q"),
                0,
            )),
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
        // Forwarding decisions.
        Case::new(
            "a backend reached through the ingress interface: XDP_TX",
            frame(sa(client), sa("198.19.0.3:80"), SYN, b""),
            XdpAction::Tx,
            Expect::Frame(frame_with(
                Link {
                    src_mac: lab.gc_mac,
                    dst_mac: SAME_PORT_MAC,
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
            "TTL 1: passed untranslated, for the kernel's time-exceeded to name the VIP",
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
            Expect::Unchanged,
        )
        .counter("pass_ttl_expired"),
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
    ]
}
