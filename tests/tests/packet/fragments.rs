//! Fragments of VIP traffic: a first fragment is balanced and its translation remembered, its
//! later fragments follow it to the same backend with only the destination rewritten; an
//! orphan later fragment (no first fragment seen, or seen too long ago) is dropped and counted;
//! a backend's fragmented reply is translated back to come from the VIP (and a later fragment
//! too big for the route to the client passed untranslated, as a whole reply would be).
//!
//! Expected frames are the whole datagram as the gateway would send it unfragmented, built by
//! etherparse, then cut the way the input was: so the first fragment's TCP/UDP checksum (over
//! the whole datagram) and every IPv4 header checksum come from an implementation independent
//! of the program's incremental updates, and a later fragment's payload must be untouched.

use aya::maps::{HashMap, MapData};
use lb_common::{
    flow::{FAMILY_IPV4, FAMILY_IPV6, PROTO_UDP},
    frag::{FragEntry, FragKey, TO_BACKEND},
    maps::FRAGMENTS_MAP,
};
use lb_tests::{
    fixture::{Case, Expect, XdpAction},
    lab::PacketLab,
    packet::{L4, fragments, frame, set_checksum, with_ipv6_ext, with_ttl},
    sa, vip,
};

use super::{ACK, SYN};

const CLIENT: &str = "198.18.0.2:41001";
const CLIENT6: &str = "[fd00::2]:41001";
const VIP: &str = "198.19.0.1:53";
const VIP6: &str = "[fd00:ffff::1]:53";
const BACKEND: &str = "198.18.1.2:8080";
const BACKEND6: &str = "[fd00:0:0:1::2]:8080";

/// A payload of `len` bytes that is not all one value.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// The input fragments of the datagram `whole` and the expected output fragments of its
/// translation `translated`, both cut at `ends` with identification `id`.
fn cut(whole: &[u8], translated: &[u8], id: u32, ends: &[usize]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    (fragments(whole, id, ends), fragments(translated, id, ends))
}

fn forwarded(desc: &str, input: &[u8], output: &[u8]) -> Case {
    Case::new(
        desc,
        input.to_vec(),
        XdpAction::Redirect,
        Expect::Frame(output.to_vec()),
    )
    .counter("fwd_redirect")
}

fn dropped(desc: &str, input: &[u8], counter: &'static str) -> Case {
    Case::new(desc, input.to_vec(), XdpAction::Drop, Expect::Unchanged).counter(counter)
}

fn fragments_map(lab: &mut PacketLab) -> HashMap<&mut MapData, FragKey, FragEntry> {
    HashMap::try_from(lab.loaded.ebpf.map_mut(FRAGMENTS_MAP).expect("map")).expect("typed")
}

fn addr16(s: &str) -> [u8; 16] {
    lb_tests::flow_key(sa(s), sa(s), PROTO_UDP).src_addr
}

fn backend_id(lab: &PacketLab, v: &str) -> u32 {
    lab.balancer.vip(&vip(v)).expect("vip").backends[0].id
}

#[test]
#[ignore = "needs root"]
fn later_fragments_follow_their_first() {
    let mut lab = PacketLab::set_up();
    let body = payload(100);

    // 1. Datagrams cut in two or three, in order: each fragment to the first one's backend.
    let (udp_in, udp_out) = cut(
        &frame(sa(CLIENT), sa(VIP), L4::Udp, &body),
        &lab.to_b0(CLIENT, BACKEND, L4::Udp, &body),
        0x1234,
        &[48, 108],
    );
    let (udp6_in, udp6_out) = cut(
        &frame(sa(CLIENT6), sa(VIP6), L4::Udp, &body),
        &lab.to_b0(CLIENT6, BACKEND6, L4::Udp, &body),
        0xdead_beef,
        &[24, 64, 108],
    );
    let tcp_client = "198.18.0.2:41002";
    let (tcp_in, tcp_out) = cut(
        &frame(sa(tcp_client), sa("198.19.0.1:80"), ACK, &body),
        &lab.to_b0(tcp_client, BACKEND, ACK, &body),
        0x2345,
        &[40, 120],
    );
    // IPv4 UDP without checksum: it stays without.
    let zero_client = "198.18.0.2:41003";
    let (zero_in, zero_out) = cut(
        &set_checksum(frame(sa(zero_client), sa(VIP), L4::Udp, &body), 0),
        &set_checksum(lab.to_b0(zero_client, BACKEND, L4::Udp, &body), 0),
        0x3456,
        &[16, 108],
    );
    let orphan_client = "198.18.0.2:41004";
    let (orphan, orphan_out) = cut(
        &frame(sa(orphan_client), sa(VIP), L4::Udp, &body),
        &lab.to_b0(orphan_client, BACKEND, L4::Udp, &body),
        0x4567,
        &[48, 108],
    );
    let orphan6 = fragments(
        &frame(sa("[fd00::2]:41004"), sa(VIP6), L4::Udp, &body),
        0x4567,
        &[48, 108],
    );
    let split_tcp = fragments(
        &frame(sa("198.18.0.2:41005"), sa("198.19.0.1:80"), SYN, &body),
        0x5678,
        &[16, 120],
    );
    let atomic_client = "[fd00::2]:41006";
    let requests =
        vec![
        forwarded(
            "first IPv4 UDP fragment: balanced, port and datagram checksum rewritten",
            &udp_in[0],
            &udp_out[0],
        ),
        forwarded(
            "its later fragment: to the same backend, only the destination rewritten",
            &udp_in[1],
            &udp_out[1],
        ),
        Case::new(
            "its later fragment again, TTL 1: passed untranslated for the kernel's time exceeded",
            with_ttl(udp_in[1].clone(), 1),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_ttl_expired"),
        forwarded("first IPv6 UDP fragment: balanced", &udp6_in[0], &udp6_out[0]),
        forwarded("second IPv6 fragment: same backend", &udp6_in[1], &udp6_out[1]),
        forwarded("last IPv6 fragment: same backend", &udp6_in[2], &udp6_out[2]),
        forwarded("first TCP fragment: balanced", &tcp_in[0], &tcp_out[0]),
        forwarded("later TCP fragment: same backend", &tcp_in[1], &tcp_out[1]),
        forwarded(
            "first UDP fragment without checksum: it stays 0",
            &zero_in[0],
            &zero_out[0],
        ),
        forwarded("its later fragment", &zero_in[1], &zero_out[1]),
        dropped(
            "a later fragment whose first was not seen: an orphan",
            &orphan[1],
            "drop_fragment_orphan",
        ),
        dropped(
            "an IPv6 later fragment whose first was not seen: an orphan",
            &orphan6[1],
            "drop_fragment_orphan",
        ),
        dropped(
            "a first TCP fragment that does not hold the whole TCP header",
            &split_tcp[0],
            "drop_fragment",
        ),
        forwarded(
            "an IPv6 atomic fragment (offset 0, no more) is a whole packet: balanced",
            &with_ipv6_ext(
                &frame(sa(atomic_client), sa(VIP6), L4::Udp, &body),
                44,
            ),
            &with_ipv6_ext(&lab.to_b0(atomic_client, BACKEND6, L4::Udp, &body), 44),
        ),
    ];
    lab.run(lab.gc, &requests);
    // The orphan's first fragment, arriving after it, is balanced; the orphan stays lost.
    lab.run(
        lab.gc,
        &[forwarded(
            "the orphan's first fragment, late",
            &orphan[0],
            &orphan_out[0],
        )],
    );

    // 2. What the first fragment left: its datagram's key, to the VIP's backend.
    let b0 = backend_id(&lab, "198.19.0.1:53/udp");
    let key = FragKey {
        src_addr: addr16(CLIENT),
        dst_addr: addr16(VIP),
        id: 0x1234,
        proto: PROTO_UDP,
        family: FAMILY_IPV4,
        direction: TO_BACKEND,
        _pad: 0,
    };
    let entry = fragments_map(&mut lab).get(&key, 0).expect("recorded");
    assert_eq!(entry.backend_id, b0);
    assert_eq!(entry.addr, addr16(BACKEND));
    assert_eq!(
        (entry.src_port, entry.dst_port),
        (41001u16.to_be_bytes(), 53u16.to_be_bytes())
    );
    let key6 = FragKey {
        src_addr: addr16(CLIENT6),
        dst_addr: addr16(VIP6),
        id: 0xdead_beef,
        family: FAMILY_IPV6,
        ..key
    };
    assert_eq!(
        fragments_map(&mut lab)
            .get(&key6, 0)
            .expect("recorded")
            .backend_id,
        backend_id(&lab, "[fd00:ffff::1]:53/udp")
    );

    // 3. An entry older than the timeout translates nothing: the clock is faked by stamping
    //    every entry at boot.
    let late_client = "198.18.0.2:41007";
    let (late_in, late_out) = cut(
        &frame(sa(late_client), sa(VIP), L4::Udp, &body),
        &lab.to_b0(late_client, BACKEND, L4::Udp, &body),
        0x6789,
        &[48, 108],
    );
    lab.run(
        lab.gc,
        &[forwarded("a first fragment", &late_in[0], &late_out[0])],
    );
    {
        let mut map = fragments_map(&mut lab);
        let keys: Vec<FragKey> = map.keys().map(|k| k.expect("key")).collect();
        assert!(keys.len() >= 5, "{} entries", keys.len());
        for key in keys {
            let mut entry = map.get(&key, 0).expect("entry");
            entry.stamp_ns = 1;
            map.insert(key, entry, 0).expect("aged");
        }
    }
    lab.run(
        lab.gc,
        &[dropped(
            "its later fragment, after the entry's timeout: an orphan",
            &late_in[1],
            "drop_fragment_orphan",
        )],
    );
    // A new first fragment with the same key starts afresh.
    lab.run(
        lab.gc,
        &[
            forwarded("the first fragment sent again", &late_in[0], &late_out[0]),
            forwarded("and then its later fragment", &late_in[1], &late_out[1]),
        ],
    );

    // 4. The backend's fragmented reply to the first UDP flow: translated to come from the VIP.
    let answer = payload(200);
    let (reply_in, reply_out) = cut(
        &lab.sent_by_b0(BACKEND, CLIENT, L4::Udp, &answer),
        &lab.to_client(VIP, CLIENT, L4::Udp, &answer),
        0x789a,
        &[104, 208],
    );
    let (reply6_in, reply6_out) = cut(
        &lab.sent_by_b0(BACKEND6, CLIENT6, L4::Udp, &answer),
        &lab.to_client(VIP6, CLIENT6, L4::Udp, &answer),
        0x789a_bcde,
        &[96, 208],
    );
    let stray = fragments(
        &lab.sent_by_b0(BACKEND, CLIENT, L4::Udp, &answer),
        0x89ab,
        &[104, 208],
    );
    let reply = |desc: &str, input: &[u8], output: &[u8]| {
        Case::new(
            desc,
            input.to_vec(),
            XdpAction::Redirect,
            Expect::Frame(output.to_vec()),
        )
        .counter("reply_redirect")
    };
    let replies = vec![
        reply(
            "first fragment of a reply: translated as a whole reply is",
            &reply_in[0],
            &reply_out[0],
        ),
        reply(
            "its later fragment: the source becomes the VIP",
            &reply_in[1],
            &reply_out[1],
        ),
        reply("first IPv6 reply fragment", &reply6_in[0], &reply6_out[0]),
        reply("later IPv6 reply fragment", &reply6_in[1], &reply6_out[1]),
        Case::new(
            "a backend's later fragment whose first was not seen: passed untouched",
            stray[1].clone(),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
    ];
    lab.run(lab.gb0, &replies);

    // 5. A reply's later fragment too big for the route to the client (IPv6: it may not be
    //    fragmented again) is passed untranslated, as a whole reply is, so that the kernel's
    //    packet too big is about the backend's own packet.
    let gw = &lab.topo.gateway;
    for args in [
        &["-6", "route", "add", "fd00::9/128", "dev", "gc"][..],
        &["link", "set", "gc", "mtu", "1280"],
    ] {
        let out = gw.exec("ip", args).expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    gw.permanent_neighbour("fd00::9", lab.client_mac, "gc")
        .expect("neighbour");
    let far = "[fd00::9]:42001";
    let long = payload(1600);
    let (big_in, big_out) = cut(
        &lab.sent_by_b0(BACKEND6, far, L4::Udp, &long),
        &lab.to_client(VIP6, far, L4::Udp, &long),
        0x9abc_def0,
        &[256, 1608],
    );
    lab.run(
        lab.gb0,
        &[
            reply(
                "first fragment of a long reply, within the route's MTU: translated",
                &big_in[0],
                &big_out[0],
            ),
            Case::new(
                "its later fragment, beyond the route's MTU: passed untranslated",
                big_in[1].clone(),
                XdpAction::Pass,
                Expect::Unchanged,
            )
            .counter("pass_reply_too_big"),
        ],
    );
}

/// A `dsr-l2` VIP's datagram: every fragment is switched to the first one's backend (only the
/// MACs change, the IP header stays as the client sent it), later ones included.
#[test]
#[ignore = "needs root"]
fn dsr_l2_later_fragments_follow_their_first() {
    let mut lab = PacketLab::set_up();
    let v = vip("198.19.0.40:53/udp");
    let options = lb_user::balancer::VipOptions {
        forwarding: lb_user::balancer::Forwarding::DsrL2,
        ..Default::default()
    };
    lab.balancer.add_vip(v, options).expect("dsr vip");
    lab.balancer
        .set_backends(
            &v,
            vec![lb_user::balancer::BackendSpec::new(sa("198.18.1.2:53"), 1)],
        )
        .expect("dsr backend");
    let body = payload(100);
    let whole = frame(sa(CLIENT), sa("198.19.0.40:53"), L4::Udp, &body);
    let input = fragments(&whole, 0x7777, &[48, 108]);
    let switched = |f: &[u8]| {
        let mut out = f.to_vec();
        out[..6].copy_from_slice(&lab.b0_mac);
        out[6..12].copy_from_slice(&lab.gb0_mac);
        out
    };
    let cases = [
        forwarded(
            "dsr-l2: a first fragment is switched to its backend",
            &input[0],
            &switched(&input[0]),
        ),
        forwarded(
            "dsr-l2: its later fragment follows, switched too",
            &input[1],
            &switched(&input[1]),
        ),
    ];
    assert_eq!(lab.run(lab.gc, &cases), 2);
}
