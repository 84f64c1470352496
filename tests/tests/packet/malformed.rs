//! Malformed input: frames cut short, bad IPv4 headers, options and fragments, lengths and
//! offsets that disagree with the frame, extension-header chains too long to follow, and TTLs
//! about to expire. To a VIP they are dropped and counted by reason (an expiring TTL is passed
//! untranslated); where there is no address to judge, or the packet is not for a VIP, passed.

use lb_tests::{
    fixture::{Case, Expect, XdpAction, to_one_of},
    lab::PacketLab,
    packet::{
        L4, cut, frame, padded, patch_ipv4, with_ip_length_off_by, with_ipv4_options,
        with_ipv6_ext, with_tcp_data_offset, with_ttl, with_udp_length, with_vlan,
    },
    sa,
};

use super::{Frames, SYN, frames};

/// Flows to a VIP whose packets have TTL (hop limit) 1 or 0: passed untranslated, so none of
/// them may be in the connection table afterwards.
pub const EXPIRING: [(&str, &str, u8); 3] = [
    ("198.18.0.2:40020", "198.19.0.1:80", 6),
    ("198.18.0.2:40021", "198.19.0.1:53", 17),
    ("[fd00::2]:40022", "[fd00:ffff::1]:80", 6),
];

/// IPv6 `frame` behind `n` extension headers: up to 4 in an order etherparse follows too
/// (hop-by-hop, destination options, routing, destination options), then more destination
/// options.
fn behind_ext_headers(frame: &[u8], n: usize) -> Vec<u8> {
    let chain = [0, 60, 43, 60].into_iter().chain(std::iter::repeat(60));
    let mut kinds: Vec<u8> = chain.take(n).collect();
    // Each header is inserted in front of the ones before it.
    kinds.reverse();
    kinds
        .iter()
        .fold(frame.to_vec(), |f, &kind| with_ipv6_ext(&f, kind))
}

/// Lengths and offsets that disagree with the frame, extension-header chains and TTLs, to the
/// VIPs and elsewhere.
pub fn strict_cases(lab: &PacketLab) -> Vec<Case> {
    let Frames {
        syn,
        udp,
        syn6,
        udp6,
    } = frames();
    let drop = |desc: String, input: Vec<u8>, counter: &'static str| {
        Case::new(desc, input, XdpAction::Drop, Expect::Unchanged).counter(counter)
    };
    let mut cases = Vec::new();
    for (family, syn, udp) in [("IPv4", &syn, &udp), ("IPv6", &syn6, &udp6)] {
        for words in [0, 4, 15] {
            cases.push(drop(
                format!("to an {family} VIP, TCP data offset {words}: dropped"),
                with_tcp_data_offset(syn.clone(), words),
                "drop_bad_l4_header",
            ));
        }
        for len in [0, 4, 1000] {
            cases.push(drop(
                format!("to an {family} VIP, UDP length {len}: dropped"),
                with_udp_length(udp.clone(), len),
                "drop_bad_l4_header",
            ));
        }
        cases.push(drop(
            format!("to an {family} VIP, UDP length one short of the payload: dropped"),
            with_udp_length(udp.clone(), 8 + 4),
            "drop_bad_l4_header",
        ));
        cases.push(drop(
            format!("to an {family} VIP, IP length one beyond the frame: dropped"),
            with_ip_length_off_by(syn.clone(), 1),
            "drop_truncated",
        ));
        cases.push(drop(
            format!("to an {family} VIP, TCP segment shorter than its header: dropped"),
            with_ip_length_off_by(syn.clone(), -1),
            "drop_bad_l4_header",
        ));
        cases.push(drop(
            format!("to an {family} VIP, UDP datagram shorter than its length says: dropped"),
            with_ip_length_off_by(udp.clone(), -1),
            "drop_bad_l4_header",
        ));
    }
    cases.extend([
        drop(
            "to a VIP, IPv4 total length 1000 in a short frame: dropped".into(),
            with_ip_length_off_by(syn.clone(), 1000 - 40),
            "drop_truncated",
        ),
        drop(
            "to a VIP, IHL 15 beyond the total length: dropped".into(),
            patch_ipv4(padded(&syn, 20), 14, 0x4f),
            "drop_bad_header",
        ),
        drop(
            "to a VIP, IPv4 header cut short by its total length (19): dropped".into(),
            with_ip_length_off_by(syn.clone(), -21),
            "drop_bad_header",
        ),
        drop(
            "to an IPv6 VIP, an extension header longer than the payload: dropped".into(),
            {
                let mut f = with_ipv6_ext(&syn6, 60);
                f[54 + 1] = 10; // 88 bytes, in a 28-byte payload
                f
            },
            "drop_bad_header",
        ),
        drop(
            "to an IPv6 VIP, 5 extension headers (more than the parser follows): dropped".into(),
            behind_ext_headers(&syn6, 5),
            "drop_ext_headers",
        ),
        drop(
            "to an IPv6 UDP VIP, 6 extension headers: dropped".into(),
            behind_ext_headers(&udp6, 6),
            "drop_ext_headers",
        ),
        drop(
            "to an IPv6 VIP, cut inside its 2nd extension header: dropped".into(),
            cut(&behind_ext_headers(&syn6, 2), 14 + 40 + 9),
            "drop_truncated",
        ),
    ]);
    cases.extend([
        Case::new(
            "to an IPv6 VIP, 4 extension headers: balanced",
            behind_ext_headers(
                &frame(sa("[fd00::2]:40023"), sa("[fd00:ffff::1]:80"), SYN, b""),
                4,
            ),
            XdpAction::Redirect,
            to_one_of(&["[fd00:0:0:1::2]:8080"]),
        )
        .counter("fwd_redirect"),
        Case::new(
            "to a VIP, 6 bytes of Ethernet padding after the IP packet: balanced",
            padded(
                &frame(sa("198.18.0.2:40024"), sa("198.19.0.1:80"), SYN, b""),
                6,
            ),
            XdpAction::Redirect,
            Expect::Frame(padded(
                &lab.to_b0("198.18.0.2:40024", "198.18.1.2:8080", SYN, b""),
                6,
            )),
        )
        .counter("fwd_redirect"),
        Case::new(
            "to a UDP VIP, padding after the datagram: balanced",
            padded(
                &frame(sa("198.18.0.2:40025"), sa("198.19.0.1:53"), L4::Udp, b"q"),
                9,
            ),
            XdpAction::Redirect,
            Expect::Frame(padded(
                &lab.to_b0("198.18.0.2:40025", "198.18.1.2:8080", L4::Udp, b"q"),
                9,
            )),
        )
        .counter("fwd_redirect"),
    ]);
    // TTL (hop limit) about to expire: passed as it came, and no flow recorded.
    for (i, (src, dst, proto)) in EXPIRING.into_iter().enumerate() {
        let l4 = if proto == 6 { SYN } else { L4::Udp };
        let ttl = if i == 0 { 0 } else { 1 };
        cases.push(
            Case::new(
                format!("to a VIP {dst}, TTL {ttl}: passed untranslated"),
                with_ttl(frame(sa(src), sa(dst), l4, b"x"), ttl),
                XdpAction::Pass,
                Expect::Unchanged,
            )
            .counter("pass_ttl_expired"),
        );
    }
    cases.push(
        Case::new(
            "to a VIP, TTL 2: balanced",
            with_ttl(
                frame(sa("198.18.0.2:40026"), sa("198.19.0.1:80"), SYN, b""),
                2,
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080"]),
        )
        .counter("fwd_redirect"),
    );
    // Not for a VIP: whatever the lengths say, passed untouched for the kernel to judge.
    let elsewhere = frame(
        sa("198.18.0.2:5353"),
        sa("198.18.1.2:53"),
        L4::Udp,
        b"query",
    );
    let elsewhere6 = frame(sa("[fd00::2]:40000"), sa("[fd00:0:0:1::2]:80"), SYN, b"");
    for (desc, input) in [
        ("UDP length 1000", with_udp_length(elsewhere.clone(), 1000)),
        (
            "IP length beyond the frame",
            with_ip_length_off_by(elsewhere.clone(), 1),
        ),
        ("TTL 1", with_ttl(elsewhere, 1)),
        (
            "TCP data offset 15",
            with_tcp_data_offset(elsewhere6.clone(), 15),
        ),
        ("5 extension headers", behind_ext_headers(&elsewhere6, 5)),
    ] {
        cases.push(
            Case::new(
                format!("not to a VIP, {desc}: passed untouched"),
                input,
                XdpAction::Pass,
                Expect::Unchanged,
            )
            .counter("pass_non_vip"),
        );
    }
    cases
}

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
            "to a VIP, first IPv4 fragment (MF) whose UDP length says it is whole: dropped",
            patch_ipv4(udp.clone(), 20, 0x20),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_fragment"),
        Case::new(
            "to a VIP, later IPv4 fragment (offset > 0) whose first was not seen: dropped",
            patch_ipv4(udp.clone(), 21, 0x10),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_fragment_orphan"),
        Case::new(
            "to an IPv6 VIP, first fragment (M) whose UDP length says it is whole: dropped",
            {
                let mut f = with_ipv6_ext(&udp6, 44);
                f[14 + 40 + 3] = 1;
                f
            },
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_fragment"),
        Case::new(
            "to an IPv6 VIP, a fragment header the payload cuts short: dropped",
            {
                let mut f = cut(&with_ipv6_ext(&udp6, 44), 14 + 40 + 4);
                f[18..20].copy_from_slice(&4u16.to_be_bytes());
                f
            },
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_fragment"),
        Case::new(
            "to a VIP, an ICMP fragment: not balanced, the kernel's",
            patch_ipv4(patch_ipv4(udp.clone(), 23, 1), 20, 0x20),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
    ]
}
