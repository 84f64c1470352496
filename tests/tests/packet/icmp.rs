//! ICMP: echo requests to VIP addresses answered (and passed when answers are off), and errors
//! about VIP flows translated both ways, IPv4 and IPv6.
//!
//! Inputs and expected outputs are built with etherparse: the expected ICMP, ICMPv6 and quoted
//! IPv4 header checksums are computed from scratch over the translated bytes, so they check
//! the program's incremental updates. Quotes are the IP header and the first 8 bytes of the
//! transport header (ports, and UDP's checksum or TCP's sequence number) as routers may send,
//! or the whole transport header (TCP's checksum included).

use std::net::{IpAddr, SocketAddr};

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4, icmpv6};
use lb_common::maps::Settings;
use lb_tests::{
    fixture::{Case, Expect, XdpAction},
    lab::PacketLab,
    packet::{CLIENT_MAC, GATEWAY_MAC, icmp_echo},
    sa,
};
use lb_user::maps::Maps;

use super::{ACK, SYN};

const CLIENT: &str = "198.18.0.2:41001";
const CLIENT6: &str = "[fd00::2]:41001";
const VIP: &str = "198.19.0.1:80";
const VIP6: &str = "[fd00:ffff::1]:80";
const BACKEND: &str = "198.18.1.2:8080";
const BACKEND6: &str = "[fd00:0:0:1::2]:8080";
/// Routers on the way: one in the internet, one between the gateway and the backends.
const ROUTER: &str = "203.0.113.9";
const ROUTER6: &str = "2001:db8::9";
const INNER_ROUTER: &str = "198.18.1.254";
const INNER_ROUTER6: &str = "fd00:0:0:1::fe";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// The packet `src` → `dst` (TCP, or UDP) as an ICMP error quotes it: its IP header and the
/// first 8 bytes of its transport header.
pub(super) fn quote(src: &str, dst: &str, tcp: bool) -> Vec<u8> {
    quote_bytes(src, dst, tcp, 8)
}

/// As [`quote`], quoting `l4_bytes` of the transport header and payload.
fn quote_bytes(src: &str, dst: &str, tcp: bool, l4_bytes: usize) -> Vec<u8> {
    let (src, dst): (SocketAddr, SocketAddr) = (sa(src), sa(dst));
    let builder = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 60),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 60),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    let payload = [0x5a; 200];
    if tcp {
        builder
            .tcp(src.port(), dst.port(), 0x1234_5678, 64240)
            .ack(0x9abc_def0)
            .write(&mut out, &payload)
    } else {
        builder
            .udp(src.port(), dst.port())
            .write(&mut out, &payload)
    }
    .expect("quoted packet");
    let ip_len = if src.is_ipv4() { 20 } else { 40 };
    out.truncate(ip_len + l4_bytes);
    out
}

/// An ICMP error frame `macs.0` → `macs.1`, `src` → `dst` with `ttl`, quoting `quoted`.
pub(super) fn icmp4(
    macs: ([u8; 6], [u8; 6]),
    src: &str,
    dst: &str,
    ttl: u8,
    kind: Icmpv4Type,
    quoted: &[u8],
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
        panic!("not IPv4");
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(s.octets(), d.octets(), ttl)
        .icmpv4(kind)
        .write(&mut out, quoted)
        .expect("icmp frame");
    out
}

/// An ICMPv6 error frame, as [`icmp4`].
fn icmp6(
    macs: ([u8; 6], [u8; 6]),
    src: &str,
    dst: &str,
    hops: u8,
    kind: Icmpv6Type,
    quoted: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (ip(src), ip(dst)) else {
        panic!("not IPv6");
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(s.octets(), d.octets(), hops)
        .icmpv6(kind)
        .write(&mut out, quoted)
        .expect("icmpv6 frame");
    out
}

fn echo6(macs: ([u8; 6], [u8; 6]), src: [u8; 16], dst: [u8; 16], reply: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv6(src, dst, 64);
    let b = if reply {
        b.icmpv6_echo_reply(7, 3)
    } else {
        b.icmpv6_echo_request(7, 3)
    };
    b.write(&mut out, b"ping6").expect("echo6");
    out
}

fn echo4_reply(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
        .ipv4(src, dst, 64)
        .icmpv4_echo_reply(1, 1)
        .write(&mut out, b"ping")
        .expect("echo reply");
    out
}

pub(super) const FRAG_NEEDED: Icmpv4Type =
    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1280,
    });
const PORT_UNREACHABLE: Icmpv4Type =
    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port);
const TTL_EXCEEDED: Icmpv4Type =
    Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit);
const TOO_BIG: Icmpv6Type = Icmpv6Type::PacketTooBig { mtu: 1280 };
const PORT_UNREACHABLE6: Icmpv6Type =
    Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port);
const HOPS_EXCEEDED: Icmpv6Type =
    Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded);

fn set_echo(lab: &mut PacketLab, on: bool) {
    let maps = lab.balancer.maps_mut();
    let mut settings: Settings = maps.settings().expect("settings");
    settings.icmp_echo = u8::from(on);
    maps.set_settings(&settings).expect("set settings");
}

#[test]
#[ignore = "needs root"]
fn icmp_fixtures() {
    let mut lab = PacketLab::set_up();
    let from_client = (lab.client_mac, lab.gc_mac);
    let to_backend = (lab.gb0_mac, lab.b0_mac);
    let from_backend = (lab.b0_mac, lab.gb0_mac);
    let to_client = (lab.gc_mac, lab.client_mac);
    let (client4, client6) = (sa(CLIENT).ip(), sa(CLIENT6).ip());
    let (client4, client6) = (client4.to_string(), client6.to_string());

    // The flows the errors are about.
    let opened = [
        Case::new(
            "IPv4 flow opened",
            lb_tests::packet::frame(sa(CLIENT), sa(VIP), SYN, b""),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0(CLIENT, BACKEND, SYN, b"")),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv6 flow opened",
            lb_tests::packet::frame(sa(CLIENT6), sa(VIP6), SYN, b""),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0(CLIENT6, BACKEND6, SYN, b"")),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv4 UDP flow opened",
            lb_tests::packet::frame(
                sa("198.18.0.2:5353"),
                sa("198.19.0.1:53"),
                lb_tests::packet::L4::Udp,
                b"q",
            ),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0("198.18.0.2:5353", BACKEND, lb_tests::packet::L4::Udp, b"q")),
        )
        .counter("fwd_redirect"),
    ];
    lab.run(lab.gc, &opened);

    let v6_vip_addr = match sa(VIP6).ip() {
        IpAddr::V6(a) => a.octets(),
        _ => unreachable!(),
    };
    let v6_client_addr = match sa(CLIENT6).ip() {
        IpAddr::V6(a) => a.octets(),
        _ => unreachable!(),
    };
    let from_internet = [
        Case::new(
            "IPv4 echo request to a VIP address is answered from it",
            icmp_echo([198, 19, 0, 1]),
            XdpAction::Tx,
            Expect::Frame(echo4_reply([198, 19, 0, 1], [198, 18, 0, 2])),
        )
        .counter("icmp_echo_tx"),
        Case::new(
            "IPv6 echo request to a VIP address is answered from it",
            echo6(
                (CLIENT_MAC, GATEWAY_MAC),
                v6_client_addr,
                v6_vip_addr,
                false,
            ),
            XdpAction::Tx,
            Expect::Frame(echo6(
                (GATEWAY_MAC, CLIENT_MAC),
                v6_vip_addr,
                v6_client_addr,
                true,
            )),
        )
        .counter("icmp_echo_tx"),
        Case::new(
            "IPv4 echo request to another address is passed untouched",
            icmp_echo([198, 18, 1, 2]),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "IPv4 fragmentation needed about a VIP's reply goes to the flow's backend",
            icmp4(
                from_client,
                ROUTER,
                "198.19.0.1",
                64,
                FRAG_NEEDED,
                &quote(VIP, CLIENT, true),
            ),
            XdpAction::Redirect,
            Expect::Frame(icmp4(
                to_backend,
                ROUTER,
                "198.18.1.2",
                63,
                FRAG_NEEDED,
                &quote(BACKEND, CLIENT, true),
            )),
        )
        .counter("icmp_to_backend_redirect"),
        Case::new(
            "IPv6 packet too big about a VIP's reply goes to the flow's backend",
            icmp6(
                from_client,
                ROUTER6,
                "fd00:ffff::1",
                64,
                TOO_BIG,
                &quote(VIP6, CLIENT6, true),
            ),
            XdpAction::Redirect,
            Expect::Frame(icmp6(
                to_backend,
                ROUTER6,
                "fd00:0:0:1::2",
                63,
                TOO_BIG,
                &quote(BACKEND6, CLIENT6, true),
            )),
        )
        .counter("icmp_to_backend_redirect"),
        Case::new(
            "IPv4 error quoting the whole TCP header: its checksum is translated too",
            icmp4(
                from_client,
                ROUTER,
                "198.19.0.1",
                64,
                FRAG_NEEDED,
                &quote_bytes(VIP, CLIENT, true, 40),
            ),
            XdpAction::Redirect,
            Expect::Frame(icmp4(
                to_backend,
                ROUTER,
                "198.18.1.2",
                63,
                FRAG_NEEDED,
                &quote_bytes(BACKEND, CLIENT, true, 40),
            )),
        )
        .counter("icmp_to_backend_redirect"),
        Case::new(
            "IPv4 error about a VIP packet of no tracked flow is passed untouched",
            icmp4(
                from_client,
                ROUTER,
                "198.19.0.1",
                64,
                FRAG_NEEDED,
                &quote(VIP, "198.18.0.2:41999", true),
            ),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "IPv6 error about a VIP packet of no tracked flow is passed untouched",
            icmp6(
                from_client,
                ROUTER6,
                "fd00:ffff::1",
                64,
                TOO_BIG,
                &quote(VIP6, "[fd00::2]:41999", true),
            ),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
    ];
    let mut ran = lab.run(lab.gc, &from_internet);

    let from_backends = [
        Case::new(
            "IPv4 port unreachable from the backend reaches the client from the VIP",
            icmp4(
                from_backend,
                "198.18.1.2",
                &client4,
                64,
                PORT_UNREACHABLE,
                &quote("198.18.0.2:5353", BACKEND, false),
            ),
            XdpAction::Redirect,
            Expect::Frame(icmp4(
                to_client,
                "198.19.0.1",
                &client4,
                63,
                PORT_UNREACHABLE,
                &quote("198.18.0.2:5353", "198.19.0.1:53", false),
            )),
        )
        .counter("icmp_to_client_redirect"),
        Case::new(
            "IPv4 time exceeded from a router names the VIP as the quoted destination",
            icmp4(
                from_backend,
                INNER_ROUTER,
                &client4,
                64,
                TTL_EXCEEDED,
                &quote(CLIENT, BACKEND, true),
            ),
            XdpAction::Redirect,
            Expect::Frame(icmp4(
                to_client,
                INNER_ROUTER,
                &client4,
                63,
                TTL_EXCEEDED,
                &quote(CLIENT, VIP, true),
            )),
        )
        .counter("icmp_to_client_redirect"),
        Case::new(
            "IPv6 port unreachable from the backend reaches the client from the VIP",
            icmp6(
                from_backend,
                "fd00:0:0:1::2",
                &client6,
                64,
                PORT_UNREACHABLE6,
                &quote(CLIENT6, BACKEND6, true),
            ),
            XdpAction::Redirect,
            Expect::Frame(icmp6(
                to_client,
                "fd00:ffff::1",
                &client6,
                63,
                PORT_UNREACHABLE6,
                &quote(CLIENT6, VIP6, true),
            )),
        )
        .counter("icmp_to_client_redirect"),
        Case::new(
            "IPv6 error quoting the whole TCP header: its checksum is translated too",
            icmp6(
                from_backend,
                "fd00:0:0:1::2",
                &client6,
                64,
                PORT_UNREACHABLE6,
                &quote_bytes(CLIENT6, BACKEND6, true, 40),
            ),
            XdpAction::Redirect,
            Expect::Frame(icmp6(
                to_client,
                "fd00:ffff::1",
                &client6,
                63,
                PORT_UNREACHABLE6,
                &quote_bytes(CLIENT6, VIP6, true, 40),
            )),
        )
        .counter("icmp_to_client_redirect"),
        Case::new(
            "IPv6 hop limit exceeded from a router names the VIP as the quoted destination",
            icmp6(
                from_backend,
                INNER_ROUTER6,
                &client6,
                64,
                HOPS_EXCEEDED,
                &quote(CLIENT6, BACKEND6, true),
            ),
            XdpAction::Redirect,
            Expect::Frame(icmp6(
                to_client,
                INNER_ROUTER6,
                &client6,
                63,
                HOPS_EXCEEDED,
                &quote(CLIENT6, VIP6, true),
            )),
        )
        .counter("icmp_to_client_redirect"),
        Case::new(
            "IPv4 error about a packet to a port no VIP uses is passed untouched",
            icmp4(
                from_backend,
                "198.18.1.2",
                &client4,
                64,
                PORT_UNREACHABLE,
                &quote("198.18.0.2:5353", "198.18.1.2:9999", false),
            ),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
    ];
    ran += lab.run(lab.gb0, &from_backends);

    set_echo(&mut lab, false);
    let echo_off = [
        Case::new(
            "IPv4 echo request to a VIP address is passed when answers are off",
            icmp_echo([198, 19, 0, 1]),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "IPv6 echo request to a VIP address is passed when answers are off",
            echo6(
                (CLIENT_MAC, GATEWAY_MAC),
                v6_client_addr,
                v6_vip_addr,
                false,
            ),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
    ];
    ran += lab.run(lab.gc, &echo_off);
    assert_eq!(ran, 16);
}

/// A VIP whose backend sits behind a link of MTU 1280 (IPv4 and IPv6): a translated packet
/// longer than that is answered from the VIP, quoting the packet as the client sent it.
#[test]
#[ignore = "needs root"]
fn too_big_for_the_route_to_the_backend() {
    let mut lab = PacketLab::set_up();
    let b0_mac = lab.b0_mac;
    small_route(&lab, "gb0", ("198.18.1.9", "fd00:0:0:1::9"), b0_mac);
    add_vips(
        &mut lab,
        &[
            ("198.19.0.9:80/tcp", "198.18.1.9:8080"),
            ("[fd00:ffff::9]:80/tcp", "[fd00:0:0:1::9]:8080"),
        ],
    );
    let big = vec![0x42; 1400];
    let frame = lb_tests::packet::frame;
    let syn4 = frame(sa("198.18.0.2:42001"), sa("198.19.0.9:80"), SYN, &big);
    let syn6 = frame(sa("[fd00::2]:42001"), sa("[fd00:ffff::9]:80"), SYN, &big);
    let answer = |v6: bool, input: &[u8]| -> Vec<u8> {
        let mut out = Vec::new();
        let b = PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC);
        if v6 {
            b.ipv6(ip6("fd00:ffff::9"), ip6("fd00::2"), 64)
                .icmpv6(TOO_BIG)
                .write(&mut out, &input[14..14 + 48])
        } else {
            b.ipv4([198, 19, 0, 9], [198, 18, 0, 2], 64)
                .icmpv4(FRAG_NEEDED)
                .write(&mut out, &input[14..14 + 28])
        }
        .expect("answer");
        out
    };
    let cases = [
        Case::new(
            "IPv4 with DF, too big for the backend's route: fragmentation needed from the VIP",
            syn4.clone(),
            XdpAction::Tx,
            Expect::Frame(answer(false, &syn4)),
        )
        .counter("icmp_too_big_tx"),
        Case::new(
            "IPv6 too big for the backend's route: packet too big from the VIP",
            syn6.clone(),
            XdpAction::Tx,
            Expect::Frame(answer(true, &syn6)),
        )
        .counter("icmp_too_big_tx"),
        Case::new(
            "IPv4 without DF, too big: the kernel fragments it",
            lb_tests::packet::patch_ipv4(syn4.clone(), 20, 0),
            XdpAction::Pass,
            Expect::Check(Box::new(|_| Ok(()))),
        )
        .counter("pass_fib"),
        Case::new(
            "IPv4 with a partial (offloaded) checksum, too big: answered by the program, not \
             left to the kernel to answer about the backend",
            lb_tests::packet::partial(syn4.clone(), ip("198.18.0.2"), ip("198.19.0.9")),
            XdpAction::Tx,
            Expect::Frame(answer(
                false,
                &lb_tests::packet::partial(syn4.clone(), ip("198.18.0.2"), ip("198.19.0.9")),
            )),
        )
        .counter("icmp_too_big_tx"),
        Case::new(
            "IPv4 that fits the route is sent on",
            frame(sa("198.18.0.2:42002"), sa("198.19.0.9:80"), SYN, b"small"),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0("198.18.0.2:42002", "198.18.1.9:8080", SYN, b"small")),
        )
        .counter("fwd_redirect"),
    ];
    assert_eq!(lab.run(lab.gc, &cases), 5);
}

/// A VIP whose client sits behind a link of MTU 1280 (IPv4 and IPv6): a backend's reply longer
/// than that goes to the kernel as the backend sent it, so that the kernel's fragmentation
/// needed / packet too big tells the backend about its own packet.
#[test]
#[ignore = "needs root"]
fn replies_too_big_for_the_route_to_the_client() {
    let mut lab = PacketLab::set_up();
    let client_mac = lab.client_mac;
    small_route(&lab, "gc", ("198.18.0.9", "fd00::9"), client_mac);
    add_vips(
        &mut lab,
        &[
            ("198.19.0.8:80/tcp", "198.18.1.8:8080"),
            ("[fd00:ffff::8]:80/tcp", "[fd00:0:0:1::8]:8080"),
        ],
    );
    let big = vec![0x42; 1400];
    let reply4 = lab.sent_by_b0("198.18.1.8:8080", "198.18.0.9:42001", ACK, &big);
    let reply6 = lab.sent_by_b0("[fd00:0:0:1::8]:8080", "[fd00::9]:42001", ACK, &big);
    let partial4 = lb_tests::packet::partial(reply4.clone(), ip("198.18.1.8"), ip("198.18.0.9"));
    let cases = [
        Case::new(
            "IPv4 reply with DF, too big for the client's route: passed untranslated",
            reply4.clone(),
            XdpAction::Pass,
            Expect::Frame(reply4.clone()),
        )
        .counter("pass_reply_too_big"),
        Case::new(
            "IPv6 reply too big for the client's route: passed untranslated",
            reply6.clone(),
            XdpAction::Pass,
            Expect::Frame(reply6.clone()),
        )
        .counter("pass_reply_too_big"),
        Case::new(
            "IPv4 reply with a partial checksum, too big: passed untranslated",
            partial4.clone(),
            XdpAction::Pass,
            Expect::Frame(partial4),
        )
        .counter("pass_reply_too_big"),
        Case::new(
            "IPv4 reply without DF, too big: translated, the kernel fragments it",
            lb_tests::packet::patch_ipv4(reply4.clone(), 20, 0),
            XdpAction::Pass,
            Expect::Check(Box::new(|out: &[u8]| {
                (out[26..30] == [198, 19, 0, 8])
                    .then_some(())
                    .ok_or_else(|| format!("source not the VIP: {:?}", &out[26..30]))
            })),
        )
        .counter("pass_fib"),
        Case::new(
            "IPv4 reply that fits the route is translated and sent on",
            lab.sent_by_b0("198.18.1.8:8080", "198.18.0.9:42002", ACK, b"small"),
            XdpAction::Redirect,
            Expect::Frame(lab.to_client("198.19.0.8:80", "198.18.0.9:42002", ACK, b"small")),
        )
        .counter("reply_redirect"),
    ];
    assert_eq!(lab.run(lab.gb0, &cases), 5);
}

/// Routes of MTU 1280 from the gateway to the hosts `v4` and `v6` on `dev`, whose MAC is `mac`.
/// IPv4: locked, since a forwarding lookup ignores an IPv4 route's MTU otherwise (unless
/// ip_forward_use_pmtu is set). IPv6: the lookup takes the MTU of the device (or of a learnt
/// exception), not the route's, so `dev` itself gets 1280.
fn small_route(lab: &PacketLab, dev: &str, (v4, v6): (&str, &str), mac: [u8; 6]) {
    let gw = &lab.topo.gateway;
    let v4_route = format!("{v4}/32");
    let v6_route = format!("{v6}/128");
    for args in [
        &["route", "add", &v4_route, "dev", dev, "mtu", "lock", "1280"][..],
        &["-6", "route", "add", &v6_route, "dev", dev],
        &["link", "set", dev, "mtu", "1280"],
    ] {
        let out = gw.exec("ip", args).expect("ip route");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    for addr in [v4, v6] {
        gw.permanent_neighbour(addr, mac, dev).expect("neighbour");
    }
}

/// VIPs, each with its one backend: `(vip, backend)`.
fn add_vips(lab: &mut PacketLab, vips: &[(&str, &str)]) {
    for (v, backend) in vips {
        lab.balancer
            .add_vip(lb_tests::vip(v), Default::default())
            .expect("vip");
        lab.balancer
            .set_backends(
                &lb_tests::vip(v),
                vec![lb_user::balancer::BackendSpec::new(sa(backend), 1)],
            )
            .expect("backends");
    }
}

fn ip6(s: &str) -> [u8; 16] {
    match ip(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("not IPv6"),
    }
}
