//! Malformed input: frames cut short, bad IPv4 headers, options and fragments. To a VIP they
//! are dropped and counted by reason; where there is no address to judge, passed.

use lb_tests::{
    fixture::{Case, Expect, XdpAction},
    packet::{cut, patch_ipv4, with_ipv4_options, with_ipv6_ext, with_vlan},
};

use super::{Frames, frames};

/// The malformed table.
pub fn cases() -> Vec<Case> {
    let Frames {
        syn,
        udp,
        syn6,
        udp6,
    } = frames();
    vec![
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
    ]
}
