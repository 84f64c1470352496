//! `ipip` forwarding: the packet leaves whole, byte for byte as the client sent it, inside an
//! outer IPv4 (IPv6) header to the backend's address, from a source in the configured prefix
//! whose low bits vary with the flow (one source per flow, several over flows); the route may
//! go through a router; tracked flows keep their backend; a request too big for the route once
//! encapsulated is answered from the VIP with an MTU that leaves room for the outer header if
//! it may not be fragmented, and dropped if it may.
//!
//! The outer header is read by etherparse (its checksum recomputed there), not by the
//! program's own code.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use etherparse::{Icmpv4Type, Icmpv6Type, Ipv4HeaderSlice, Ipv6HeaderSlice, icmpv4};
use lb_tests::{
    fixture::{Case, Expect, XdpAction},
    lab::PacketLab,
    packet::{L4, frame, patch_ipv4, tcp_flags, verify_checksums},
    sa, vip,
};
use lb_user::balancer::{BackendSpec, BackendState, Forwarding};

use super::{ACK, SYN};

const VIP4: &str = "198.19.0.40:80";
const VIP6: &str = "[fd00:ffff::40]:80";
/// To a host behind a router (backend 0 routes the lab's 10.9.0.0/16).
const VIP_ROUTED: &str = "198.19.0.41:80";
const PSH_ACK: L4 = L4::Tcp(tcp_flags::PSH | tcp_flags::ACK);

fn ipip(lab: &mut PacketLab, v: &str, backends: &[&str]) {
    lab.add_forwarded_vip(v, Forwarding::Ipip, backends);
}

/// The outer sources seen, by flow name.
type Sources = Arc<Mutex<BTreeMap<&'static str, BTreeSet<IpAddr>>>>;

/// Accepts `input` encapsulated for `backend`, leaving for MAC `dst_mac` from `src_mac`: the
/// outer header's fields and checksum right, the inner packet byte for byte `input`'s. Records
/// the outer source under `flow` in `sources`.
fn encapsulated(
    input: &[u8],
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    backend: &str,
    flow: &'static str,
    sources: &Sources,
) -> Expect {
    let input = input.to_vec();
    let backend: IpAddr = backend.parse().expect("backend address");
    let sources = Arc::clone(sources);
    Expect::Check(Box::new(move |out| {
        if out[..6] != dst_mac || out[6..12] != src_mac {
            return Err(format!("MACs {:02x?}", &out[..12]));
        }
        if out[12..14] != input[12..14] {
            return Err("Ethernet type changed".into());
        }
        let (source, outer_len) = match backend {
            IpAddr::V4(dst) => {
                let ip = Ipv4HeaderSlice::from_slice(&out[14..]).map_err(|e| e.to_string())?;
                let inner = Ipv4HeaderSlice::from_slice(&input[14..]).map_err(|e| e.to_string())?;
                let header = ip.to_header();
                if header.calc_header_checksum() != ip.header_checksum() {
                    return Err("outer IPv4 checksum wrong".into());
                }
                if ip.protocol().0 != 4 || ip.ttl() != 64 || ip.destination_addr() != dst {
                    return Err(format!("outer header {header:?}"));
                }
                if ip.total_len() as usize != out.len() - 14
                    || ip.dont_fragment() != inner.dont_fragment()
                    || ip.more_fragments()
                    || ip.ihl() != 5
                {
                    return Err(format!("outer header {header:?}"));
                }
                let src = ip.source_addr();
                if src.octets()[..2] != [10, 255] {
                    return Err(format!("outer source {src} outside 10.255.0.0/16"));
                }
                (IpAddr::V4(src), 20)
            }
            IpAddr::V6(dst) => {
                let ip = Ipv6HeaderSlice::from_slice(&out[14..]).map_err(|e| e.to_string())?;
                if ip.next_header().0 != 41 || ip.hop_limit() != 64 || ip.destination_addr() != dst
                {
                    return Err(format!("outer header {:?}", ip.to_header()));
                }
                if ip.payload_length() as usize != out.len() - 14 - 40 {
                    return Err("outer payload length".into());
                }
                let src = ip.source_addr();
                if src.segments()[..6] != [0xfd00, 0xffff, 0xffff, 0, 0, 0] {
                    return Err(format!("outer source {src} outside fd00:ffff:ffff::/96"));
                }
                (IpAddr::V6(src), 40)
            }
        };
        if out[14 + outer_len..] != input[14..] {
            return Err("inner packet changed".into());
        }
        // A fragment's checksum covers the whole datagram: nothing to verify in one piece.
        let fragment = input[12..14] == [0x08, 0x00]
            && u16::from_be_bytes([input[20], input[21]]) & 0x3fff != 0;
        if !fragment {
            verify_checksums(&input)?;
        }
        sources
            .lock()
            .expect("sources")
            .entry(flow)
            .or_default()
            .insert(source);
        Ok(())
    }))
}

#[test]
#[ignore = "needs root"]
fn ipip_encapsulation() {
    let mut lab = PacketLab::set_up();
    lab.topo
        .gateway
        .exec("ip", &["route", "add", "10.9.0.0/16", "via", "198.18.1.2"])
        .expect("route via backend 0");
    ipip(&mut lab, &format!("{VIP4}/tcp"), &["198.18.1.2:80"]);
    ipip(&mut lab, &format!("{VIP4}/udp"), &["198.18.1.2:80"]);
    ipip(&mut lab, &format!("{VIP6}/tcp"), &["[fd00:0:0:1::2]:80"]);
    ipip(&mut lab, &format!("{VIP_ROUTED}/tcp"), &["10.9.0.2:80"]);
    let sources = Sources::default();
    let b0 = (lab.gb0_mac, lab.b0_mac);
    let to_b0 = |input: &[u8], backend: &str, flow: &'static str| {
        encapsulated(input, b0, backend, flow, &sources)
    };
    let client = |port: u16| sa(&format!("198.18.0.2:{port}"));
    let client6 = |port: u16| sa(&format!("[fd00::2]:{port}"));
    let syn = frame(client(41000), sa(VIP4), SYN, b"");
    let ack = frame(client(41000), sa(VIP4), ACK, b"");
    let data = frame(client(41000), sa(VIP4), PSH_ACK, b"GET / HTTP/1.1\r\n\r\n");
    let udp = frame(client(5353), sa(VIP4), L4::Udp, b"query");
    let syn6 = frame(client6(41000), sa(VIP6), SYN, b"");
    let ack6 = frame(client6(41000), sa(VIP6), ACK, b"");
    let routed = frame(client(41000), sa(VIP_ROUTED), SYN, b"");
    let mut cases = vec![
        Case::new(
            "SYN to an ipip VIP: encapsulated whole to backend 0",
            syn.clone(),
            XdpAction::Redirect,
            to_b0(&syn, "198.18.1.2", "tcp4"),
        )
        .counter("fwd_redirect"),
        Case::new(
            "its handshake ACK: the same backend, the same outer source",
            ack.clone(),
            XdpAction::Redirect,
            to_b0(&ack, "198.18.1.2", "tcp4"),
        )
        .counter("fwd_redirect"),
        Case::new(
            "data of the tracked flow",
            data.clone(),
            XdpAction::Redirect,
            to_b0(&data, "198.18.1.2", "tcp4"),
        )
        .counter("fwd_redirect"),
        Case::new(
            "UDP to an ipip VIP",
            udp.clone(),
            XdpAction::Redirect,
            to_b0(&udp, "198.18.1.2", "udp4"),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv6 SYN: IPv6 in IPv6",
            syn6.clone(),
            XdpAction::Redirect,
            to_b0(&syn6, "fd00:0:0:1::2", "tcp6"),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv6 handshake ACK, the same outer source",
            ack6.clone(),
            XdpAction::Redirect,
            to_b0(&ack6, "fd00:0:0:1::2", "tcp6"),
        )
        .counter("fwd_redirect"),
        Case::new(
            "backend behind a router: encapsulated to it, sent to the router",
            routed.clone(),
            XdpAction::Redirect,
            to_b0(&routed, "10.9.0.2", "routed"),
        )
        .counter("fwd_redirect"),
    ];
    // More flows, to see the outer source vary.
    const FLOWS: [&str; 8] = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"];
    for (i, flow) in FLOWS.iter().enumerate() {
        let syn = frame(client(42000 + i as u16), sa(VIP4), SYN, b"");
        let syn6 = frame(client6(42000 + i as u16), sa(VIP6), SYN, b"");
        cases.push(
            Case::new(
                format!("flow {flow}"),
                syn.clone(),
                XdpAction::Redirect,
                to_b0(&syn, "198.18.1.2", flow),
            )
            .counter("fwd_redirect"),
        );
        let flow6 = ["g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7"][i];
        cases.push(
            Case::new(
                format!("IPv6 flow {flow6}"),
                syn6.clone(),
                XdpAction::Redirect,
                to_b0(&syn6, "fd00:0:0:1::2", flow6),
            )
            .counter("fwd_redirect"),
        );
    }
    assert_eq!(lab.run(lab.gc, &cases), cases.len());

    let seen = sources.lock().expect("sources").clone();
    for (flow, srcs) in &seen {
        assert_eq!(srcs.len(), 1, "flow {flow} had outer sources {srcs:?}");
    }
    let distinct = |prefix: char| {
        seen.iter()
            .filter(|(flow, _)| flow.starts_with(prefix))
            .flat_map(|(_, s)| s)
            .collect::<BTreeSet<_>>()
            .len()
    };
    assert!(
        distinct('f') >= 2,
        "IPv4 outer sources over 8 flows: {seen:?}"
    );
    assert!(
        distinct('g') >= 2,
        "IPv6 outer sources over 8 flows: {seen:?}"
    );

    // Backend 1 joins and backend 0 drains: the tracked flow stays on backend 0.
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
    let after = [Case::new(
        "tracked flow keeps its draining backend",
        data.clone(),
        XdpAction::Redirect,
        to_b0(&data, "198.18.1.2", "tcp4"),
    )
    .counter("fwd_redirect")];
    assert_eq!(lab.run(lab.gc, &after), 1);
    assert_eq!(sources.lock().expect("sources")["tcp4"].len(), 1);
}

/// An ICMP "too big" answer from `vip` to the client `client`, with `mtu`, its checksums as
/// etherparse computes them, quoting `input`'s IP packet from its start.
fn too_big_answer(input: &[u8], vip: IpAddr, client: IpAddr, mtu: u16) -> Expect {
    let input = input.to_vec();
    Expect::Check(Box::new(move |out| {
        let headers =
            etherparse::PacketHeaders::from_ethernet_slice(out).map_err(|e| e.to_string())?;
        let payload = headers.payload.slice();
        let quote = payload.len().min(input.len() - 14);
        if quote < 28 || payload[..quote] != input[14..14 + quote] {
            return Err("the quote is not the packet as sent".into());
        }
        let ok = match (&headers.net, &headers.transport) {
            (
                Some(etherparse::NetHeaders::Ipv4(ip, _)),
                Some(etherparse::TransportHeader::Icmpv4(icmp)),
            ) => {
                let want = etherparse::Icmpv4Header::with_checksum(
                    Icmpv4Type::DestinationUnreachable(
                        icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
                    ),
                    payload,
                );
                ip.header_checksum == ip.calc_header_checksum()
                    && (IpAddr::from(ip.source), IpAddr::from(ip.destination)) == (vip, client)
                    && *icmp == want
            }
            (
                Some(etherparse::NetHeaders::Ipv6(ip, _)),
                Some(etherparse::TransportHeader::Icmpv6(icmp)),
            ) => {
                let want = etherparse::Icmpv6Header::with_checksum(
                    Icmpv6Type::PacketTooBig {
                        mtu: u32::from(mtu),
                    },
                    ip.source,
                    ip.destination,
                    payload,
                )
                .map_err(|e| e.to_string())?;
                (IpAddr::from(ip.source), IpAddr::from(ip.destination)) == (vip, client)
                    && *icmp == want
            }
            _ => false,
        };
        if !ok {
            return Err(format!("not too big with MTU {mtu} from {vip} to {client}"));
        }
        Ok(())
    }))
}

/// The MTU edges on a route of 1280 bytes to the backend: the largest packet that fits once
/// encapsulated goes, one byte more with DF (IPv6: always) is answered from the VIP with the
/// MTU less the outer header, one byte more without DF is dropped.
#[test]
#[ignore = "needs root"]
fn ipip_mtu_edges() {
    let mut lab = PacketLab::set_up();
    let gw = &lab.topo.gateway;
    // Locked: a forwarding lookup ignores an IPv4 route's MTU otherwise.
    for (addr, ip) in [("198.18.1.9/32", "-4"), ("fd00:0:0:1::9/128", "-6")] {
        gw.exec(
            "ip",
            &[
                ip, "route", "add", addr, "dev", "gb0", "mtu", "lock", "1280",
            ],
        )
        .expect("small route");
    }
    gw.permanent_neighbour("198.18.1.9", lab.b0_mac, "gb0")
        .expect("neighbour");
    gw.permanent_neighbour("fd00:0:0:1::9", lab.b0_mac, "gb0")
        .expect("neighbour");
    ipip(&mut lab, "198.19.0.45:80/tcp", &["198.18.1.9:80"]);
    ipip(&mut lab, "[fd00:ffff::45]:80/tcp", &["[fd00:0:0:1::9]:80"]);
    let sources = Sources::default();
    let b0 = (lab.gb0_mac, lab.b0_mac);
    // 20 bytes of IPv4 and 20 of TCP, 20 of outer header: 1220 bytes of payload fill 1280.
    let syn = |port: u16, payload: usize| {
        frame(
            sa(&format!("198.18.0.2:{port}")),
            sa("198.19.0.45:80"),
            SYN,
            &vec![0x42; payload],
        )
    };
    // 40 of IPv6, 20 of TCP, 40 of outer header: 1180.
    let syn6 = |port: u16, payload: usize| {
        frame(
            sa(&format!("[fd00::2]:{port}")),
            sa("[fd00:ffff::45]:80"),
            SYN,
            &vec![0x42; payload],
        )
    };
    let fits = syn(42001, 1220);
    let fits6 = syn6(42001, 1180);
    let (vip4, vip6): (IpAddr, IpAddr) = (
        "198.19.0.45".parse().expect("vip"),
        "fd00:ffff::45".parse().expect("vip"),
    );
    let (client4, client6): (IpAddr, IpAddr) = (
        "198.18.0.2".parse().expect("client"),
        "fd00::2".parse().expect("client"),
    );
    let cases = [
        Case::new(
            "1260 bytes, 1280 encapsulated: sent",
            fits.clone(),
            XdpAction::Redirect,
            encapsulated(&fits, b0, "198.18.1.9", "fits", &sources),
        )
        .counter("fwd_redirect"),
        Case::new(
            "1261 bytes with DF: fragmentation needed (MTU 1260) from the VIP",
            syn(42002, 1221),
            XdpAction::Tx,
            too_big_answer(&syn(42002, 1221), vip4, client4, 1260),
        )
        .counter("icmp_too_big_tx"),
        Case::new(
            "1261 bytes without DF: dropped",
            patch_ipv4(syn(42003, 1221), 20, 0),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_ipip_too_big"),
        Case::new(
            "IPv6, 1240 bytes, 1280 encapsulated: sent",
            fits6.clone(),
            XdpAction::Redirect,
            encapsulated(&fits6, b0, "fd00:0:0:1::9", "fits6", &sources),
        )
        .counter("fwd_redirect"),
        Case::new(
            "IPv6, 1241 bytes: packet too big (MTU 1240) from the VIP",
            syn6(42002, 1181),
            XdpAction::Tx,
            too_big_answer(&syn6(42002, 1181), vip6, client6, 1240),
        )
        .counter("icmp_too_big_tx"),
    ];
    assert_eq!(lab.run(lab.gc, &cases), cases.len());
}

/// `frame`'s IP packet inside an outer header from `src` to `dst` (IPv4 with protocol 4 and
/// the flags-and-offset word `frags`, or IPv6 with next header `proto`), behind `frame`'s own
/// Ethernet header (type: the outer family's): what a backend receives.
fn tunnelled(frame: &[u8], src: IpAddr, dst: IpAddr, proto: u8, frags: u16) -> Vec<u8> {
    let inner = &frame[14..];
    let mut out = frame[..12].to_vec();
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let mut ip = etherparse::Ipv4Header::new(
                inner.len() as u16,
                64,
                etherparse::IpNumber(proto),
                src.octets(),
                dst.octets(),
            )
            .expect("outer header");
            ip.dont_fragment = frags & 0x4000 != 0;
            ip.more_fragments = frags & 0x2000 != 0;
            ip.fragment_offset = etherparse::IpFragOffset::try_new(frags & 0x1fff).expect("offset");
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut out).expect("outer header");
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out.extend_from_slice(&[0x86, 0xdd]);
            etherparse::Ipv6Header {
                payload_length: inner.len() as u16,
                next_header: etherparse::IpNumber(proto),
                hop_limit: 64,
                source: src.octets(),
                destination: dst.octets(),
                ..Default::default()
            }
            .write(&mut out)
            .expect("outer header");
        }
        _ => panic!("mixed families"),
    }
    out.extend_from_slice(inner);
    out
}

/// The backends' decapsulation program (`xdplb decap`), through `BPF_PROG_TEST_RUN`: an
/// IPv4-in-IPv4 or IPv6-in-IPv6 packet goes to the stack as the inner packet behind the same
/// Ethernet header; anything else (a plain packet, a fragment of a tunnelled one, IPv6 in
/// IPv4) passes as it came.
#[test]
#[ignore = "needs root"]
fn decap_program() {
    use aya::programs::{TestRun as _, TestRunOptions, Xdp};

    let mut ebpf = lb_user::decap::load().expect("loading the decapsulation program");
    let program: &mut Xdp = ebpf
        .program_mut(lb_user::decap::DECAP_PROGRAM)
        .expect("decap program")
        .try_into()
        .expect("XDP");
    let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
    let syn = frame(sa("198.18.0.2:41000"), sa(VIP4), SYN, b"");
    let data = frame(
        sa("198.18.0.2:41000"),
        sa(VIP4),
        PSH_ACK,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let syn6 = frame(sa("[fd00::2]:41000"), sa(VIP6), SYN, b"");
    let (gw4, b4) = (ip("10.255.12.34"), ip("198.18.1.2"));
    let (gw6, b6) = (ip("fd00:ffff:ffff::1234"), ip("fd00:0:0:1::2"));
    let cases = [
        Case::new(
            "IPv4 in IPv4: the inner packet",
            tunnelled(&syn, gw4, b4, 4, 0),
            XdpAction::Pass,
            Expect::Frame(syn.clone()),
        ),
        Case::new(
            "IPv4 in IPv4 with DF and a payload: the inner packet",
            tunnelled(&data, gw4, b4, 4, 0x4000),
            XdpAction::Pass,
            Expect::Frame(data.clone()),
        ),
        Case::new(
            "IPv6 in IPv6: the inner packet",
            tunnelled(&syn6, gw6, b6, 41, 0),
            XdpAction::Pass,
            Expect::Frame(syn6.clone()),
        ),
        Case::new(
            "a plain packet: as it came",
            syn.clone(),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "a plain IPv6 packet: as it came",
            syn6.clone(),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "a first fragment of a tunnelled packet: as it came (the stack reassembles)",
            tunnelled(&data, gw4, b4, 4, 0x2000),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "IPv6 in IPv4: as it came",
            tunnelled(&syn6, gw4, b4, 41, 0),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
    ];
    let ran = lb_tests::fixture::run_cases(&cases, |input| {
        let mut output = vec![0u8; input.len() + 512];
        let result = program.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut output),
            ..TestRunOptions::new()
        })?;
        output.truncate(result.data_size_out as usize);
        Ok(lb_tests::fixture::Outcome {
            action: result.return_value,
            output,
            counters: Vec::new(),
        })
    });
    assert_eq!(ran, cases.len());
}

/// The outer source prefixes come from the settings the agent writes (`--ipip-source-v4`,
/// `--ipip-source-v6`): with 100.64.7.0/24 (8 bits varied) every flow's outer source is in it,
/// and with fd00:1::/120 likewise.
#[test]
#[ignore = "needs root"]
fn ipip_outer_source_follows_the_settings() {
    use lb_common::encap::source_bits;
    use lb_user::maps::Maps as _;

    let mut lab = PacketLab::set_up();
    ipip(&mut lab, &format!("{VIP4}/tcp"), &["198.18.1.2:80"]);
    ipip(&mut lab, &format!("{VIP6}/tcp"), &["[fd00:0:0:1::2]:80"]);
    // After the VIPs: written as the agent's start does, past the balancer's own copy.
    let mut s = lab.balancer.maps().settings().expect("settings");
    s.ipip_source_v4 = [100, 64, 7, 0];
    s.ipip_source_bits_v4 = source_bits(false, 24);
    s.ipip_source_v6 = "fd00:1::".parse::<std::net::Ipv6Addr>().unwrap().octets();
    s.ipip_source_bits_v6 = source_bits(true, 120);
    lab.balancer
        .maps_mut()
        .set_settings(&s)
        .expect("write settings");
    let seen = Arc::new(Mutex::new(BTreeSet::<IpAddr>::new()));
    let outer_source = |input: &[u8]| {
        let seen = Arc::clone(&seen);
        let v6 = input[12..14] == [0x86, 0xdd];
        Expect::Check(Box::new(move |out| {
            let src: IpAddr = if v6 {
                Ipv6HeaderSlice::from_slice(&out[14..])
                    .map_err(|e| e.to_string())?
                    .source_addr()
                    .into()
            } else {
                Ipv4HeaderSlice::from_slice(&out[14..])
                    .map_err(|e| e.to_string())?
                    .source_addr()
                    .into()
            };
            let inside = match src {
                IpAddr::V4(a) => a.octets()[..3] == [100, 64, 7],
                IpAddr::V6(a) => {
                    a.segments()[..7] == [0xfd00, 1, 0, 0, 0, 0, 0] && a.segments()[7] < 0x100
                }
            };
            if !inside {
                return Err(format!("outer source {src} outside the configured prefix"));
            }
            seen.lock().expect("seen").insert(src);
            Ok(())
        }))
    };
    let mut cases = Vec::new();
    for i in 0..8u16 {
        let syn = frame(sa(&format!("198.18.0.2:{}", 43000 + i)), sa(VIP4), SYN, b"");
        let syn6 = frame(sa(&format!("[fd00::2]:{}", 43000 + i)), sa(VIP6), SYN, b"");
        cases.push(
            Case::new(
                format!("IPv4 flow {i}"),
                syn.clone(),
                XdpAction::Redirect,
                outer_source(&syn),
            )
            .counter("fwd_redirect"),
        );
        cases.push(
            Case::new(
                format!("IPv6 flow {i}"),
                syn6.clone(),
                XdpAction::Redirect,
                outer_source(&syn6),
            )
            .counter("fwd_redirect"),
        );
    }
    assert_eq!(lab.run(lab.gc, &cases), cases.len());
    let seen = seen.lock().expect("seen");
    assert!(seen.iter().filter(|a| a.is_ipv4()).count() >= 2, "{seen:?}");
    assert!(seen.iter().filter(|a| a.is_ipv6()).count() >= 2, "{seen:?}");
}

/// An `ipip` VIP's fragmented datagram: every fragment is encapsulated whole to the first
/// one's backend, from the same outer source (the flow's, from the first fragment's ports).
#[test]
#[ignore = "needs root"]
fn ipip_later_fragments_follow_their_first() {
    let mut lab = PacketLab::set_up();
    ipip(&mut lab, &format!("{VIP4}/udp"), &["198.18.1.2:80"]);
    let sources = Sources::default();
    let b0 = (lab.gb0_mac, lab.b0_mac);
    let body: Vec<u8> = (0..100).map(|i: u32| (i * 7 + 3) as u8).collect();
    let whole = frame(sa("198.18.0.2:41009"), sa(VIP4), L4::Udp, &body);
    let pieces = lb_tests::packet::fragments(&whole, 0x7778, &[48, 108]);
    let cases: Vec<Case> = pieces
        .iter()
        .zip(["first fragment", "later fragment"])
        .map(|(piece, which)| {
            Case::new(
                format!("ipip: the {which} is encapsulated to backend 0"),
                piece.clone(),
                XdpAction::Redirect,
                encapsulated(piece, b0, "198.18.1.2", "fragments", &sources),
            )
            .counter("fwd_redirect")
        })
        .collect();
    assert_eq!(lab.run(lab.gc, &cases), 2);
    let seen = sources.lock().unwrap();
    assert_eq!(
        seen["fragments"].len(),
        1,
        "one outer source for the datagram: {seen:?}"
    );
}

/// The agent's encapsulation of health checks through the tunnel (`[vip.health] path =
/// "vip"`), a TC program, through `BPF_PROG_TEST_RUN` with the socket mark in the `__sk_buff`
/// context: a check's packet (its mark has a tunnel) leaves inside an outer header from its
/// own source to the backend, the Ethernet header and the inner packet unchanged; a packet
/// without a mark or with another mark leaves as it came; a check whose family is not its
/// tunnel's is dropped rather than sent unencapsulated.
#[test]
#[ignore = "needs root"]
fn probe_encap_program() {
    use aya::programs::{TestRun as _, TestRunOptions};
    use lb_user::probe_encap::ProbeEncap;

    const TC_ACT_OK: u32 = 0;
    const TC_ACT_SHOT: u32 = 2;
    let (mark4, mark6, other) = (0x786c_0000, 0x786c_0001, 0x786c_0002);
    let (b4, b6): (IpAddr, IpAddr) = (
        "198.18.1.11".parse().unwrap(),
        "fd00:0:0:1::b".parse().unwrap(),
    );
    let mut encap = ProbeEncap::load().expect("loading the encapsulation program");
    encap.set_tunnel(mark4, b4).expect("IPv4 tunnel");
    encap.set_tunnel(mark6, b6).expect("IPv6 tunnel");

    let check = frame(sa("198.18.1.254:40000"), sa("198.19.0.1:80"), SYN, b"");
    let check6 = frame(
        sa("[fd00:0:0:1::fe]:40000"),
        sa("[fd00:ffff::1]:80"),
        PSH_ACK,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let df = u16::from_be_bytes([check[20], check[21]]) & 0x4000;
    // Description, input, socket mark, expected action, expected output (`None`: the input).
    type TcCase<'a> = (&'a str, &'a [u8], u32, u32, Option<Vec<u8>>);
    let cases: [TcCase; 6] = [
        (
            "an IPv4 check, encapsulated to its backend from its own source",
            &check,
            mark4,
            TC_ACT_OK,
            Some(tunnelled(
                &check,
                "198.18.1.254".parse().unwrap(),
                b4,
                4,
                df,
            )),
        ),
        (
            "an IPv6 check, in IPv6 to its backend",
            &check6,
            mark6,
            TC_ACT_OK,
            Some(tunnelled(
                &check6,
                "fd00:0:0:1::fe".parse().unwrap(),
                b6,
                41,
                0,
            )),
        ),
        ("an unmarked packet, as it came", &check, 0, TC_ACT_OK, None),
        (
            "another mark's packet, as it came",
            &check,
            other,
            TC_ACT_OK,
            None,
        ),
        (
            "an IPv4 check with an IPv6 tunnel, dropped",
            &check,
            mark6,
            TC_ACT_SHOT,
            None,
        ),
        (
            "an IPv6 check with an IPv4 tunnel, dropped",
            &check6,
            mark4,
            TC_ACT_SHOT,
            None,
        ),
    ];
    let program = encap.classifier().expect("classifier");
    for (desc, input, mark, action, expected) in cases {
        // struct __sk_buff { len, pkt_type, mark, ... }: the mark is one of the fields a test
        // run may set.
        let ctx: Vec<u8> = [0u32, 0, mark]
            .iter()
            .flat_map(|f| f.to_ne_bytes())
            .collect();
        let mut output = vec![0u8; input.len() + 128];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut output),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|err| panic!("{desc}: test run: {err}"));
        assert_eq!(result.return_value, action, "{desc}");
        if action != TC_ACT_OK {
            continue;
        }
        output.truncate(result.data_size_out as usize);
        let expected = expected.unwrap_or_else(|| input.to_vec());
        assert_eq!(
            output,
            expected,
            "{desc}\n{}",
            lb_tests::packet::hex_diff(&output, &expected)
        );
    }

    // Its tunnel removed, a mark's packets leave as they came.
    encap.remove_tunnel(mark4).expect("tunnel removed");
    let program = encap.classifier().expect("classifier");
    let ctx: Vec<u8> = [0u32, 0, mark4]
        .iter()
        .flat_map(|f| f.to_ne_bytes())
        .collect();
    let mut output = vec![0u8; check.len() + 128];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(&check),
            data_out: Some(&mut output),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        })
        .expect("test run");
    output.truncate(result.data_size_out as usize);
    assert_eq!((result.return_value, output), (TC_ACT_OK, check.clone()));
}

/// A backend's answer to a health check through the tunnel comes from the VIP (an `ipip`
/// one) to the gateway's own address: the balancer passes it to the stack, untouched.
#[test]
#[ignore = "needs root"]
fn ipip_check_answers_pass() {
    let mut lab = PacketLab::set_up();
    ipip(&mut lab, &format!("{VIP4}/tcp"), &["198.18.1.2:80"]);
    ipip(&mut lab, &format!("{VIP6}/tcp"), &["[fd00:0:0:1::2]:80"]);
    lab.balancer
        .set_local_addrs([
            "198.18.1.1".parse().unwrap(),
            "fd00:0:0:1::1".parse().unwrap(),
        ])
        .expect("local addresses");
    let syn_ack = L4::Tcp(tcp_flags::SYN | tcp_flags::ACK);
    let cases = [
        Case::new(
            "an IPv4 check's answer from the VIP to the gateway passes",
            lab.sent_by_b0(VIP4, "198.18.1.1:50000", syn_ack, b""),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
        Case::new(
            "an IPv6 check's answer from the VIP to the gateway passes",
            lab.sent_by_b0(VIP6, "[fd00:0:0:1::1]:50000", syn_ack, b""),
            XdpAction::Pass,
            Expect::Unchanged,
        ),
    ];
    assert_eq!(lab.run(lab.gb0, &cases), cases.len());
}
