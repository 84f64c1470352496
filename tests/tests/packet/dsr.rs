//! `dsr-l2` forwarding: the frame leaves with its IP packet byte for byte as the client sent it
//! (destination the VIP, TTL and checksums unchanged), only the MACs rewritten to the backend's
//! and the egress interface's; tracked flows keep their backend and advance on client packets
//! alone; no reverse translation is ever recorded; an ICMP error about a flow's reply reaches
//! its backend unchanged; a request too big for the backend's link is answered from the VIP;
//! and what cannot be sent to the backend's MAC is dropped, never passed to a kernel that would
//! route it by the VIP.

use std::net::Ipv6Addr;

use etherparse::Icmpv6Type;
use lb_common::{
    conntrack::STATE_ESTABLISHED,
    flow::PROTO_TCP,
    maps::{CONNTRACK_MAP, REVERSE_NAT_MAP, ReverseNat},
};
use lb_tests::{
    fixture::{Case, Expect, XdpAction},
    lab::{PacketLab, SAME_PORT_HOST, SAME_PORT_MAC, UNRESOLVED_HOST},
    netns::gw_backend_if,
    packet::{CLIENT_MAC, GATEWAY_MAC, L4, Link, frame, frame_with, patch_ipv4, tcp_flags},
    sa, vip,
};
use lb_user::balancer::{BackendSpec, BackendState, Forwarding, VipOptions};

use super::{
    ACK, SYN,
    icmp::{FRAG_NEEDED, icmp4, quote},
};

const VIP4: &str = "198.19.0.30:80";
const VIP6: &str = "[fd00:ffff::30]:80";
/// Every port, to backend 0 at every port: a NAT flow to it would record a reverse entry.
const VIP_ANY: &str = "198.19.0.31:0";
/// To a host on the client side: out of the interface the packet came in on.
const VIP_SAME_PORT: &str = "198.19.0.32:80";
/// To a host with a route but no neighbour entry.
const VIP_UNRESOLVED: &str = "198.19.0.33:80";
/// To a host behind a router (backend 0 routes the lab's 10.9.0.0/16).
const VIP_ROUTED: &str = "198.19.0.34:80";
const CLIENT: &str = "198.18.0.2:41000";
const CLIENT6: &str = "[fd00::2]:41000";
const PSH_ACK: L4 = L4::Tcp(tcp_flags::PSH | tcp_flags::ACK);

fn dsr(lab: &mut PacketLab, v: &str, backends: &[&str]) {
    lab.add_forwarded_vip(v, Forwarding::DsrL2, backends);
}

/// `input` as it leaves for a host with MAC `dst_mac` out of the interface with MAC `src_mac`:
/// the Ethernet addresses rewritten, every other byte the same.
fn switched(input: &[u8], src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let mut out = input.to_vec();
    out[..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    out
}

#[test]
#[ignore = "needs root"]
fn dsr_l2() {
    let mut lab = PacketLab::set_up();
    let b1_mac = lab.topo.backends[1].mac("eth0").expect("b1 mac");
    let gb1_mac = lab.topo.gateway.mac(&gw_backend_if(1)).expect("gb1 mac");
    lab.topo
        .gateway
        .exec("ip", &["route", "add", "10.9.0.0/16", "via", "198.18.1.2"])
        .expect("route via backend 0");
    dsr(&mut lab, &format!("{VIP4}/tcp"), &["198.18.1.2:80"]);
    dsr(&mut lab, &format!("{VIP4}/udp"), &["198.18.1.2:80"]);
    dsr(&mut lab, &format!("{VIP6}/tcp"), &["[fd00:0:0:1::2]:80"]);
    dsr(&mut lab, &format!("{VIP_ANY}/tcp"), &["198.18.1.2:0"]);
    dsr(
        &mut lab,
        &format!("{VIP_SAME_PORT}/tcp"),
        &[&format!("{SAME_PORT_HOST}:80")],
    );
    dsr(
        &mut lab,
        &format!("{VIP_UNRESOLVED}/tcp"),
        &[&format!("{UNRESOLVED_HOST}:80")],
    );
    dsr(&mut lab, &format!("{VIP_ROUTED}/tcp"), &["10.9.0.2:80"]);
    let reverse_before = lab.flow_entries::<ReverseNat>(REVERSE_NAT_MAP);

    let (gb0_mac, b0_mac, gc_mac) = (lab.gb0_mac, lab.b0_mac, lab.gc_mac);
    let error = icmp4(
        (lab.client_mac, gc_mac),
        "203.0.113.9",
        "198.19.0.30",
        64,
        FRAG_NEEDED,
        &quote(VIP4, CLIENT, true),
    );
    let to_b0 = |input: &[u8]| switched(input, gb0_mac, b0_mac);
    let syn = frame(sa(CLIENT), sa(VIP4), SYN, b"");
    let ack = frame(sa(CLIENT), sa(VIP4), ACK, b"");
    let data = frame(sa(CLIENT), sa(VIP4), PSH_ACK, b"GET / HTTP/1.1\r\n\r\n");
    let udp = frame(sa("198.18.0.2:5353"), sa(VIP4), L4::Udp, b"query");
    let syn6 = frame(sa(CLIENT6), sa(VIP6), SYN, b"");
    let ack6 = frame(sa(CLIENT6), sa(VIP6), ACK, b"");
    let any = frame(sa("198.18.0.2:41001"), sa("198.19.0.31:4242"), SYN, b"");
    let same_port = frame(sa(CLIENT), sa(VIP_SAME_PORT), SYN, b"");
    let unresolved = frame(sa(CLIENT), sa(VIP_UNRESOLVED), SYN, b"");
    let routed = frame(sa(CLIENT), sa(VIP_ROUTED), SYN, b"");
    let cases = [
        Case::new(
            "SYN to a dsr-l2 VIP: the IP packet as sent, to backend 0's MAC",
            syn.clone(),
            XdpAction::Redirect,
            Expect::Frame(to_b0(&syn)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "its handshake ACK, as sent, to the same backend",
            ack.clone(),
            XdpAction::Redirect,
            Expect::Frame(to_b0(&ack)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "data of the tracked flow, as sent",
            data.clone(),
            XdpAction::Redirect,
            Expect::Frame(to_b0(&data)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "ICMP error about the flow's reply: to its backend unchanged, which holds the VIP",
            error.clone(),
            XdpAction::Redirect,
            Expect::Frame(to_b0(&error)),
        )
        .counter("icmp_to_backend_redirect"),
        Case::new(
            "UDP to a dsr-l2 VIP, as sent",
            udp.clone(),
            XdpAction::Redirect,
            Expect::Frame(to_b0(&udp)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv6 SYN to a dsr-l2 VIP, hop limit kept",
            syn6.clone(),
            XdpAction::Redirect,
            Expect::Frame(to_b0(&syn6)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv6 handshake ACK",
            ack6.clone(),
            XdpAction::Redirect,
            Expect::Frame(to_b0(&ack6)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "every-port dsr-l2 VIP: the client's port kept",
            any.clone(),
            XdpAction::Redirect,
            Expect::Frame(to_b0(&any)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "backend on the client side: back out of the ingress with its MAC",
            same_port.clone(),
            XdpAction::Tx,
            Expect::Frame(switched(&same_port, gc_mac, SAME_PORT_MAC)),
        )
        .counter("fwd_tx"),
        Case::new(
            "backend whose MAC is not resolved: dropped, not routed by the VIP",
            unresolved,
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_dsr_no_neighbour"),
        Case::new(
            "backend behind a router: dropped, the router would send it back",
            routed,
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_dsr_no_route"),
    ];
    lab.run(lab.gc, &cases);

    // Client packets alone established the flows, and no reverse translation was recorded,
    // not even for the every-port VIP.
    for (client, v) in [(CLIENT, VIP4), (CLIENT6, VIP6)] {
        let key = lb_tests::flow_key(sa(client), sa(v), PROTO_TCP);
        let state = lab.flow_entry(CONNTRACK_MAP, &key).expect("tracked");
        assert_eq!(state.state, STATE_ESTABLISHED, "{client} -> {v}");
    }
    assert_eq!(
        lab.flow_entries::<ReverseNat>(REVERSE_NAT_MAP),
        reverse_before,
        "a dsr-l2 flow records no reverse translation"
    );

    // Backend 1 joins and backend 0 drains: the tracked flow stays on backend 0, a new one
    // goes to backend 1.
    lab.balancer
        .set_backends(
            &vip(&format!("{VIP4}/tcp")),
            vec![
                BackendSpec {
                    state: BackendState::Draining,
                    ..BackendSpec::new(sa("198.18.1.2:80"), 1)
                },
                BackendSpec::new(sa("198.18.2.2:80"), 1),
            ],
        )
        .expect("drain");
    let other = frame(sa("198.18.0.2:41002"), sa(VIP4), SYN, b"");
    let after = [
        Case::new(
            "tracked flow keeps its draining backend",
            data.clone(),
            XdpAction::Redirect,
            Expect::Frame(to_b0(&data)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "a new flow goes to backend 1's MAC, out of its interface",
            other.clone(),
            XdpAction::Redirect,
            Expect::Frame(switched(&other, gb1_mac, b1_mac)),
        )
        .counter("fwd_redirect"),
    ];
    lab.run(lab.gc, &after);

    // Back to NAT, live: the tracked flow follows the new mode from its next packet.
    lab.balancer
        .set_vip(
            &vip(&format!("{VIP4}/tcp")),
            VipOptions::default(),
            vec![
                BackendSpec {
                    state: BackendState::Draining,
                    ..BackendSpec::new(sa("198.18.1.2:80"), 1)
                },
                BackendSpec::new(sa("198.18.2.2:80"), 1),
            ],
        )
        .expect("to nat");
    let nat = Link {
        src_mac: gb0_mac,
        dst_mac: b0_mac,
        ttl: 63,
    };
    let translated = [Case::new(
        "after a switch to NAT the same flow is translated",
        data,
        XdpAction::Redirect,
        Expect::Frame(frame_with(
            nat,
            sa(CLIENT),
            sa("198.18.1.2:80"),
            PSH_ACK,
            b"GET / HTTP/1.1\r\n\r\n",
        )),
    )
    .counter("fwd_redirect")];
    lab.run(lab.gc, &translated);
}

/// The MTU edges on a route of 1280 bytes to the backend: the largest packet that fits goes as
/// it is, one byte more with DF is answered from the VIP with fragmentation needed, one byte
/// more without DF is dropped (the program does not fragment; the kernel would route the
/// fragments by the VIP). IPv6 the same: the largest packet goes, one byte more is answered
/// from the VIP with packet too big.
#[test]
#[ignore = "needs root"]
fn dsr_l2_mtu_edges() {
    let mut lab = PacketLab::set_up();
    let gw = &lab.topo.gateway;
    // Locked: a forwarding lookup ignores an IPv4 route's MTU otherwise.
    gw.exec(
        "ip",
        &[
            "route",
            "add",
            "198.18.1.9/32",
            "dev",
            "gb0",
            "mtu",
            "lock",
            "1280",
        ],
    )
    .expect("small route");
    for args in [
        &["-6", "route", "add", "fd00:0:0:1::9/128", "dev", "gb0"][..],
        // The IPv6 lookup takes the MTU of the device (or of a learnt exception), not the
        // route's.
        &["link", "set", "gb0", "mtu", "1280"],
    ] {
        let out = gw.exec("ip", args).expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    for addr in ["198.18.1.9", "fd00:0:0:1::9"] {
        gw.permanent_neighbour(addr, lab.b0_mac, "gb0")
            .expect("neighbour");
    }
    dsr(&mut lab, "198.19.0.35:80/tcp", &["198.18.1.9:80"]);
    dsr(&mut lab, "[fd00:ffff::35]:80/tcp", &["[fd00:0:0:1::9]:80"]);
    let (gb0_mac, b0_mac) = (lab.gb0_mac, lab.b0_mac);
    // 20 bytes of IPv4 and 20 of TCP: 1240 bytes of payload fill 1280.
    let syn = |port: u16, payload: usize| {
        frame(
            sa(&format!("198.18.0.2:{port}")),
            sa("198.19.0.35:80"),
            SYN,
            &vec![0x42; payload],
        )
    };
    let fits = syn(42001, 1240);
    let too_big = syn(42002, 1241);
    let answer = {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
            .ipv4([198, 19, 0, 35], [198, 18, 0, 2], 64)
            .icmpv4(FRAG_NEEDED)
            .write(&mut out, &too_big[14..14 + 28])
            .expect("answer");
        out
    };
    // 40 bytes of IPv6 and 20 of TCP: 1220 bytes of payload fill 1280.
    let syn6 = |port: u16, payload: usize| {
        frame(
            sa(&format!("[fd00::2]:{port}")),
            sa("[fd00:ffff::35]:80"),
            SYN,
            &vec![0x42; payload],
        )
    };
    let fits6 = syn6(42011, 1220);
    let too_big6 = syn6(42012, 1221);
    let answer6 = {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
            .ipv6(
                "fd00:ffff::35".parse::<Ipv6Addr>().expect("vip").octets(),
                "fd00::2".parse::<Ipv6Addr>().expect("client").octets(),
                64,
            )
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut out, &too_big6[14..14 + 48])
            .expect("answer");
        out
    };
    let cases = [
        Case::new(
            "1280 bytes, the route's MTU: sent as it is",
            fits.clone(),
            XdpAction::Redirect,
            Expect::Frame(switched(&fits, gb0_mac, b0_mac)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "1281 bytes with DF: fragmentation needed (MTU 1280) from the VIP",
            too_big.clone(),
            XdpAction::Tx,
            Expect::Frame(answer),
        )
        .counter("icmp_too_big_tx"),
        Case::new(
            "1281 bytes without DF: dropped",
            patch_ipv4(syn(42003, 1241), 20, 0),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_dsr_no_route"),
        Case::new(
            "IPv6, 1280 bytes, the link's MTU: sent as it is",
            fits6.clone(),
            XdpAction::Redirect,
            Expect::Frame(switched(&fits6, gb0_mac, b0_mac)),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv6, 1281 bytes: packet too big (MTU 1280) from the VIP",
            too_big6,
            XdpAction::Tx,
            Expect::Frame(answer6),
        )
        .counter("icmp_too_big_tx"),
    ];
    assert_eq!(lab.run(lab.gc, &cases), 5);
}
