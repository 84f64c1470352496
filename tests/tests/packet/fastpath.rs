//! The fast paths and what they keep: replies translated without per-flow state (but not the
//! backends' answers to the gateway itself, nor replies spoofed from the client side), the
//! fallback of a backend shared by several VIPs, the next hops the program keeps per backend (fresh,
//! stale by generation or by age), and a backend set down while its flow is tracked.
//!
//! Each step is a fixture table run through the real program; between steps the test changes
//! the maps the way the agent or time would, and checks what the program left in them.

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use lb_common::{
    flow::PROTO_TCP,
    maps::{
        CONNTRACK_MAP, EMBRYONIC_MAP, EMBRYONIC_REVERSE_MAP, NEXT_HOP_TTL_NS, NEXT_HOPS_MAP,
        NextHop, REVERSE_NAT_MAP, ReverseNat, backend_index,
    },
};
use lb_tests::{
    fixture::{Case, Expect, XdpAction},
    lab::PacketLab,
    packet::{L4, Link, frame, frame_with, tcp_flags},
    sa, vip,
};
use lb_user::balancer::{BackendSpec, BackendState, VipOptions};

use super::{ACK, SYN};

const CLIENT_A: &str = "[fd00::2]:42001";
const CLIENT_B: &str = "[fd00::2]:42002";
/// Backend 0 at a port no fixture VIP uses (IPv6: the lab's wildcard-port VIPs, whose backend
/// keeps the client's port, would share every port of its IPv4 address): one VIP gets it alone,
/// then a second shares it.
const BACKEND: &str = "[fd00:0:0:1::2]:8081";
const VIP_A: &str = "[fd00:ffff::21]:80";
const VIP_B: &str = "[fd00:ffff::22]:80";

fn reverse_entries(lab: &PacketLab) -> usize {
    lab.flow_entries::<ReverseNat>(REVERSE_NAT_MAP)
}

/// The backend of the flow in the connection table, else in the embryonic table (a flow whose
/// handshake has not completed).
fn tracked_backend(lab: &PacketLab, client: &str, vip: &str) -> Option<u32> {
    let key = lb_tests::flow_key(sa(client), sa(vip), PROTO_TCP);
    [CONNTRACK_MAP, EMBRYONIC_MAP]
        .iter()
        .find_map(|name| lab.flow_entry(name, &key))
        .map(|state| state.backend_id)
}

fn tracked_state(lab: &PacketLab, client: &str, vip: &str) -> Option<u8> {
    let key = lb_tests::flow_key(sa(client), sa(vip), PROTO_TCP);
    lab.flow_entry(CONNTRACK_MAP, &key).map(|state| state.state)
}

fn next_hops(lab: &mut PacketLab) -> PerCpuArray<&mut MapData, NextHop> {
    PerCpuArray::try_from(lab.loaded.ebpf.map_mut(NEXT_HOPS_MAP).expect("map")).expect("typed")
}

fn settings_generation(lab: &PacketLab) -> u32 {
    lab.balancer
        .maps()
        .settings()
        .expect("settings")
        .next_hop_generation
}

fn coarse_now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).unwrap();
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// A MAC no host has: a kept next hop with it shows that the program used the kept one.
const PLANTED_MAC: [u8; 6] = [0x02, 0xee, 0xee, 0xee, 0xee, 0xee];

#[test]
#[ignore = "needs root"]
fn stateless_replies_shared_backends_and_next_hops() {
    let mut lab = PacketLab::set_up();
    let b = &mut lab.balancer;
    b.add_vip(vip(&format!("{VIP_A}/tcp")), VipOptions::default())
        .unwrap();
    b.set_backends(
        &vip(&format!("{VIP_A}/tcp")),
        vec![BackendSpec::new(sa(BACKEND), 1)],
    )
    .unwrap();

    // 1. A backend that one VIP has alone: its new flow records no reverse entry, and its
    //    replies are translated all the same.
    let reverse_before = reverse_entries(&lab);
    let opened = [Case::new(
        "new flow to a backend one VIP has alone",
        frame(sa(CLIENT_A), sa(VIP_A), SYN, b""),
        XdpAction::Redirect,
        Expect::Frame(lab.to_b0(CLIENT_A, BACKEND, SYN, b"")),
    )
    .counter("fwd_redirect")];
    lab.run(lab.gc, &opened);
    assert!(
        tracked_backend(&lab, CLIENT_A, VIP_A).is_some(),
        "the flow is tracked"
    );
    assert_eq!(
        reverse_entries(&lab),
        reverse_before,
        "a backend of one VIP needs no per-flow reverse entry"
    );
    let syn_ack = L4::Tcp(tcp_flags::SYN | tcp_flags::ACK);
    let replies = [
        Case::new(
            "reply from a backend one VIP has alone, translated without per-flow state",
            lab.sent_by_b0(BACKEND, CLIENT_A, syn_ack, b""),
            XdpAction::Redirect,
            Expect::Frame(lab.to_client(VIP_A, CLIENT_A, syn_ack, b"")),
        )
        .counter("reply_redirect"),
        Case::new(
            "its reply to a flow no table holds any more is translated too: its address never \
             leaves towards a client",
            lab.sent_by_b0(BACKEND, "[fd00::2]:42999", ACK, b"late"),
            XdpAction::Redirect,
            Expect::Frame(lab.to_client(VIP_A, "[fd00::2]:42999", ACK, b"late")),
        )
        .counter("reply_redirect"),
    ];
    lab.run(lab.gb0, &replies);

    // ...but not its answers to the gateway itself (health probes), whatever their port.
    lab.balancer
        .set_local_addrs([
            "198.18.1.1".parse().unwrap(),
            "fd00:0:0:1::1".parse().unwrap(),
        ])
        .expect("local addresses");
    let to_gateway = [
        Case::new(
            "a backend's answer to the gateway's own address (a health probe) is not translated",
            lab.sent_by_b0(BACKEND, "[fd00:0:0:1::1]:50000", syn_ack, b""),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
        Case::new(
            "nor is an IPv4 one from a backend port VIPs share",
            lab.sent_by_b0("198.18.1.2:8080", "198.18.1.1:50001", syn_ack, b""),
            XdpAction::Pass,
            Expect::Unchanged,
        )
        .counter("pass_non_vip"),
    ];
    lab.run(lab.gb0, &to_gateway);

    // ...nor a "reply" that arrives from the client side: spoofed, it would end the flow.
    let rst = L4::Tcp(tcp_flags::RST);
    let spoofed = [Case::new(
        "a reply spoofed from the client side with a backend's address is dropped",
        frame(sa(BACKEND), sa(CLIENT_A), rst, b""),
        XdpAction::Drop,
        Expect::Unchanged,
    )
    .counter("drop_spoofed_reply")];
    lab.run(lab.gc, &spoofed);
    assert_ne!(
        tracked_state(&lab, CLIENT_A, VIP_A),
        Some(lb_common::conntrack::STATE_CLOSED),
        "the spoofed RST left the flow alone"
    );

    // 2. A second VIP shares the backend: its flows record reverse entries, and the flows the
    //    first VIP opened before keep coming from the first VIP.
    lab.balancer
        .add_vip(vip(&format!("{VIP_B}/tcp")), VipOptions::default())
        .unwrap();
    lab.balancer
        .set_backends(
            &vip(&format!("{VIP_B}/tcp")),
            vec![BackendSpec::new(sa(BACKEND), 1)],
        )
        .unwrap();
    let reverse_before = reverse_entries(&lab);
    let half_open_before = lab.flow_entries::<ReverseNat>(EMBRYONIC_REVERSE_MAP);
    let opened = [Case::new(
        "new flow to a backend two VIPs share",
        frame(sa(CLIENT_B), sa(VIP_B), SYN, b""),
        XdpAction::Redirect,
        Expect::Frame(lab.to_b0(CLIENT_B, BACKEND, SYN, b"")),
    )];
    lab.run(lab.gc, &opened);
    assert_eq!(
        lab.flow_entries::<ReverseNat>(EMBRYONIC_REVERSE_MAP),
        half_open_before + 1,
        "a half-open flow to a shared backend records its reverse entry with the half-open"
    );
    assert_eq!(
        reverse_entries(&lab),
        reverse_before,
        "a SYN (a flood's too) takes no place among established flows' reverse entries"
    );
    let replies = [
        Case::new(
            "shared backend: the SYN-ACK comes from the half-open flow's VIP",
            lab.sent_by_b0(BACKEND, CLIENT_B, syn_ack, b""),
            XdpAction::Redirect,
            Expect::Frame(lab.to_client(VIP_B, CLIENT_B, syn_ack, b"")),
        ),
        Case::new(
            "shared backend: a flow opened before the sharing falls back to the first VIP",
            lab.sent_by_b0(BACKEND, CLIENT_A, ACK, b"x"),
            XdpAction::Redirect,
            Expect::Frame(lab.to_client(VIP_A, CLIENT_A, ACK, b"x")),
        ),
        Case::new(
            "shared backend: a reply of no tracked flow is dropped, not leaked untranslated",
            lab.sent_by_b0(BACKEND, "[fd00::77]:40000", syn_ack, b""),
            XdpAction::Drop,
            Expect::Unchanged,
        )
        .counter("drop_untracked_reply"),
    ];
    lab.run(lab.gb0, &replies);
    let handshake = [Case::new(
        "the client's handshake ACK to the shared backend",
        frame(sa(CLIENT_B), sa(VIP_B), ACK, b""),
        XdpAction::Redirect,
        Expect::Frame(lab.to_b0(CLIENT_B, BACKEND, ACK, b"")),
    )];
    lab.run(lab.gc, &handshake);
    assert_eq!(
        reverse_entries(&lab),
        reverse_before + 1,
        "the handshake ACK records the established flow's reverse entry"
    );
    // Its half-open entry gone (as a flood would evict it), the flow keeps its VIP.
    let mut half_open: aya::maps::HashMap<&mut aya::maps::MapData, lb_common::FlowKey, ReverseNat> =
        aya::maps::HashMap::try_from(lab.loaded.ebpf.map_mut(EMBRYONIC_REVERSE_MAP).expect("map"))
            .expect("typed");
    for key in half_open.keys().flatten().collect::<Vec<_>>() {
        half_open.remove(&key).expect("remove");
    }
    let established = [Case::new(
        "shared backend: an established flow's reply comes from its VIP",
        lab.sent_by_b0(BACKEND, CLIENT_B, ACK, b"y"),
        XdpAction::Redirect,
        Expect::Frame(lab.to_client(VIP_B, CLIENT_B, ACK, b"y")),
    )];
    lab.run(lab.gb0, &established);

    // 3. Next hops. The tracked flow's packets use the next hop kept for backend 0's slot;
    //    one planted with a MAC no host has shows it is used while fresh...
    let id = tracked_backend(&lab, CLIENT_A, VIP_A).expect("tracked");
    let index = backend_index(id);
    let kept = next_hops(&mut lab).get(&index, 0).expect("kept hop");
    let hop = *kept
        .iter()
        .find(|h| h.generation != 0)
        .expect("a CPU kept the next hop");
    assert_eq!(hop.ifindex, lab.gb0, "kept egress");
    assert_eq!(hop.dmac, lab.b0_mac, "kept next-hop MAC");
    let generation = settings_generation(&lab);
    assert_eq!(hop.generation, generation);
    let plant = |lab: &mut PacketLab, generation: u32, looked_up_ns: u64| {
        let planted = NextHop {
            dmac: PLANTED_MAC,
            generation,
            looked_up_ns,
            ..hop
        };
        let cpus = aya::util::nr_cpus().expect("cpus");
        let values = PerCpuValues::try_from(vec![planted; cpus]).expect("values");
        next_hops(lab).set(index, values, 0).expect("plant");
    };
    plant(&mut lab, generation, coarse_now_ns());
    let to_planted = Link {
        src_mac: lab.gb0_mac,
        dst_mac: PLANTED_MAC,
        ttl: 63,
    };
    let fresh = [Case::new(
        "tracked flow: the kept next hop is used while fresh",
        frame(sa(CLIENT_A), sa(VIP_A), ACK, b"1"),
        XdpAction::Redirect,
        Expect::Frame(frame_with(to_planted, sa(CLIENT_A), sa(BACKEND), ACK, b"1")),
    )
    .counter("fwd_redirect")];
    lab.run(lab.gc, &fresh);

    // ...and not once the agent starts a new generation, or once it is older than its TTL:
    //    the FIB is asked again and its answer kept.
    lab.balancer.refresh_next_hops().expect("new generation");
    let to_b0 = lab.to_b0(CLIENT_A, BACKEND, ACK, b"2");
    let stale = |desc: &str| {
        Case::new(
            desc,
            frame(sa(CLIENT_A), sa(VIP_A), ACK, b"2"),
            XdpAction::Redirect,
            Expect::Frame(to_b0.clone()),
        )
        .counter("fwd_redirect")
    };
    let by_generation = [stale("stale next hop (older generation): looked up again")];
    lab.run(lab.gc, &by_generation);
    let generation = settings_generation(&lab);
    plant(
        &mut lab,
        generation,
        coarse_now_ns().saturating_sub(2 * NEXT_HOP_TTL_NS),
    );
    let by_age = [stale(
        "stale next hop (older than its TTL): looked up again",
    )];
    lab.run(lab.gc, &by_age);
    let kept = next_hops(&mut lab).get(&index, 0).expect("kept hop");
    assert!(
        kept.iter()
            .any(|h| h.dmac == lab.b0_mac && h.generation == generation),
        "the new answer is kept: {kept:?}"
    );
    assert!(
        kept.iter()
            .all(|h| h.dmac != PLANTED_MAC || h.looked_up_ns < coarse_now_ns() - NEXT_HOP_TTL_NS),
        "no CPU still uses the planted hop as fresh: {kept:?}"
    );

    // 4. The flow's backend is set down while the flow is tracked (and its next hop kept):
    //    the next packet is scheduled again, to the VIP's other backend.
    let two = vip("198.19.1.1:80/tcp");
    let client = "198.18.0.2:42100";
    let first = [Case::new(
        "maglev flow opened",
        frame(sa(client), sa("198.19.1.1:80"), SYN, b""),
        XdpAction::Redirect,
        lb_tests::fixture::to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
    )];
    lab.run(lab.gc, &first);
    let id = tracked_backend(&lab, client, "198.19.1.1:80").expect("tracked");
    let info = lab.balancer.vip(&two).unwrap();
    let (down, other) = if info.backends[0].id == id {
        (info.backends[0].spec.addr, info.backends[1].spec.addr)
    } else {
        (info.backends[1].spec.addr, info.backends[0].spec.addr)
    };
    lab.balancer
        .update_backend(&two, down, None, Some(BackendState::Down))
        .unwrap();
    let moved = [Case::new(
        "backend set down while its flow is tracked: the flow moves to the other backend",
        frame(sa(client), sa("198.19.1.1:80"), ACK, b"after"),
        XdpAction::Redirect,
        lb_tests::fixture::to_one_of(if other == sa("198.18.2.2:8080") {
            &["198.18.2.2:8080"]
        } else {
            &["198.18.1.2:8080"]
        }),
    )
    .counter("fwd_redirect")];
    lab.run(lab.gc, &moved);
    let now = tracked_backend(&lab, client, "198.19.1.1:80").expect("tracked");
    assert_ne!(now, id, "the entry names the new backend");
}
