//! Replies, arriving from backend 0, of the flows the requests table opened: translated to
//! come from the VIP and sent to the client.

use lb_tests::{
    fixture::{Case, Expect, XdpAction},
    lab::PacketLab,
    packet::{L4, Link, frame_with, partial, tcp_flags, with_ttl, with_udp_length},
    sa,
};

use super::{ACK, CLIENT, CLIENT6};

/// The replies table: it runs after the requests table, whose flows it replies to.
pub fn cases(lab: &PacketLab) -> Vec<Case> {
    let (client, client6) = (CLIENT, CLIENT6);
    vec![
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
            "a reply of a tracked flow with TTL 1 is passed untranslated (the kernel answers \
             the backend)",
            with_ttl(lab.sent_by_b0("198.18.1.2:8080", client, ACK, b"late"), 1),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "a reply of a tracked flow with a bad UDP length is passed untouched",
            with_udp_length(
                lab.sent_by_b0("198.18.1.2:8080", "198.18.0.2:5353", L4::Udp, b"answer"),
                1000,
            ),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "a packet from a backend port that only a wildcard-port VIP uses, with no tracked \
             flow, is passed untouched",
            lab.sent_by_b0("198.18.1.2:7777", "198.18.0.2:49999", ACK, b""),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
    ]
}
