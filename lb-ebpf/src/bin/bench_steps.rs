//! Cost breakdown of the data path (`cargo xtask bench`): one XDP program per step of the
//! balancer's pipeline, each running the balancer's own stage code (its modules are compiled
//! in from `src/`, with the same maps under the same names), so that `BPF_PROG_TEST_RUN` can
//! time every step on its own.
//!
//! `step_parse` fills this CPU's per-CPU scratch from the packet; every other step reads the
//! parse results from there (the benchmark runs `step_parse` first, on the same CPU), so a
//! step's time is its own work plus one per-CPU array lookup (`step_scratch` measures that
//! with the scratch copies). Every step leaves the packet as it found it, so it can be timed
//! with `repeat = N`. Each returns `XDP_PASS` when it did what it is there to time (the lookup
//! hit, the FIB answered, ...) and `XDP_DROP` otherwise, which the benchmark checks.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![allow(clippy::needless_borrows_for_generic_args)]
// The balancer's modules: this program uses only part of each.
#![allow(dead_code, unused_imports)]

#[path = "../conntrack.rs"]
mod conntrack;
#[path = "../fwd.rs"]
mod fwd;
#[path = "../icmp.rs"]
mod icmp;
#[path = "../maps.rs"]
mod maps;
#[path = "../nat.rs"]
mod nat;
#[path = "../parse.rs"]
mod parse;
#[path = "../ptr.rs"]
mod ptr;
#[path = "../select.rs"]
mod select;
#[path = "../stats.rs"]
mod stats;
#[path = "../vip.rs"]
mod vip;

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{HashMap, LruHashMap},
    programs::XdpContext,
};
use lb_common::{
    Counter, FlowKey,
    conntrack::FlowState,
    maps::{DEFAULT_CONNTRACK_CAPACITY, ReverseNat, VipMeta, backend_index},
    nat::L4Checksum,
};

use crate::{
    conntrack::Seen,
    maps::{CONNTRACK, SCRATCH, SETTINGS, Scratch},
    nat::Side,
    parse::{Ipv4Fixed, L3, L4},
    ptr::{Packet, copy16, zeroed_in_place},
};

const PASS: u32 = xdp_action::XDP_PASS;
const MISS: u32 = xdp_action::XDP_DROP;

/// This CPU's scratch.
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's element of a per-CPU array; XDP runs with preemption disabled, so only
    // this run uses it until it returns.
    SCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut *s })
}

#[inline(always)]
fn pass_if(hit: bool) -> u32 {
    if hit { PASS } else { MISS }
}

/// Parse Ethernet, IP and TCP/UDP into the scratch.
#[xdp]
pub fn step_parse(mut ctx: XdpContext) -> u32 {
    let pkt = Packet::new(&mut ctx);
    let Some(s) = scratch() else { return MISS };
    pass_if(parse::parse_l3(&pkt, &mut s.l3).is_ok() && parse::parse_l4(&pkt, &s.l3, &mut s.l4))
}

/// The scratch lookup and the copies the pipeline makes into it: the flow key, the key of the
/// other direction and the reverse translation.
#[xdp]
pub fn step_scratch(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    conntrack::set_key(
        &mut s.other,
        (&s.l3.dst, s.l4.dst_port),
        (&s.l3.src, s.l4.src_port),
        (s.l3.proto, s.l3.family),
    );
    copy16(&mut s.reverse.vip_addr, &s.l3.dst);
    s.reverse.vip_port = s.l4.dst_port;
    s.reverse.flags = 0;
    s.reverse._pad = 0;
    s.reverse.vip_id = 0;
    s.reverse.backend_id = 0;
    PASS
}

/// Is the destination a VIP address (`VIP_ADDRS`, a hash map)?
#[xdp]
pub fn step_vip_addr(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    pass_if(vip::is_vip_addr(&s.l3))
}

/// Which VIP (`VIPS`, a hash map without preallocation; exact port).
#[xdp]
pub fn step_vip(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    pass_if(vip::lookup(&s.l3, s.l4.dst_port).is_some())
}

/// One `bpf_ktime_get_coarse_ns`, the clock the balancer stamps flows with.
#[xdp]
pub fn step_ktime(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    // SAFETY: a BPF helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    s.reverse.vip_id = now as u32;
    PASS
}

/// One `bpf_ktime_get_ns`, the precise clock, for comparison.
#[xdp]
pub fn step_ktime_precise(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    // SAFETY: a BPF helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    s.reverse.vip_id = now as u32;
    PASS
}

/// The VIP lookup and the connection table lookup of a tracked flow (`CONNTRACK`, an LRU hash
/// keyed by the 40-byte flow key), its backend and state update. The first run tracks the
/// flow. The clock is a constant, so that `step_ktime` is not counted twice.
#[xdp]
pub fn step_conntrack(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    let Some(meta) = vip::lookup(&s.l3, s.l4.dst_port) else {
        return MISS;
    };
    let Some(settings) = SETTINGS.get(0) else {
        return MISS;
    };
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    match conntrack::backend_for(&s.key, &meta, s.l4.tcp_flags, 1, settings) {
        Ok((_, _, seen)) => pass_if(seen == Seen::Known),
        Err(_) => MISS,
    }
}

/// The tracked fast path: the connection table first (`CONNTRACK`, 40-byte key), no VIP
/// lookup, the backend's entry (one `BACKENDS` array load) and the entry touched lazily. The
/// flow is the one `step_conntrack` tracked (it runs first).
#[xdp]
pub fn step_tracked(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    let Some(settings) = SETTINGS.get(0) else {
        return MISS;
    };
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    pass_if(conntrack::tracked(&s.key, s.l4.tcp_flags, 1, &settings.timeouts).is_some())
}

/// The next hop kept for a backend: one per-CPU `NEXT_HOPS` array load and its freshness
/// check, which stands in for `bpf_fib_lookup` while fresh. The first run keeps one.
#[xdp]
pub fn step_next_hop(_ctx: XdpContext) -> u32 {
    let Some(settings) = SETTINGS.get(0) else {
        return MISS;
    };
    let Some(hop) = maps::NEXT_HOPS.get_ptr_mut(1) else {
        return MISS;
    };
    // SAFETY: this CPU's element of a per-CPU array; XDP runs with preemption disabled.
    let hop = unsafe { &mut *hop };
    if !hop.is_fresh(settings.next_hop_generation, 1, 64) {
        hop.generation = settings.next_hop_generation;
        hop.looked_up_ns = 1;
        hop.mtu = 1500;
        return MISS;
    }
    PASS
}

/// The VIP lookup and a new flow to a backend one VIP has alone: a random source address, so
/// the connection table misses; then the scheduler (the VIP's Maglev ring), the one new
/// connection entry and the atomic count of opened flows, as in the balancer.
#[xdp]
pub fn step_new_flow_one_insert(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    let Some(meta) = vip::lookup(&s.l3, s.l4.dst_port) else {
        return MISS;
    };
    let Some(settings) = SETTINGS.get(0) else {
        return MISS;
    };
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    // SAFETY: a BPF helper without arguments or preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    s.key.src_addr[..4].copy_from_slice(&random.to_ne_bytes());
    let Ok((id, _, seen)) = conntrack::backend_for(&s.key, &meta, s.l4.tcp_flags, 1, settings)
    else {
        return MISS;
    };
    select::count_opened(backend_index(id));
    pass_if(matches!(seen, Seen::New(_)))
}

/// The VIP lookup and a new flow: a random source address, so the connection table misses;
/// then the scheduler (the VIP's Maglev ring), the new connection entry, the reverse entry and
/// the atomic count of opened flows, as in the balancer.
#[xdp]
pub fn step_new_flow(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    let Some(meta) = vip::lookup(&s.l3, s.l4.dst_port) else {
        return MISS;
    };
    let Some(settings) = SETTINGS.get(0) else {
        return MISS;
    };
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    // SAFETY: a BPF helper without arguments or preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    s.key.src_addr[..4].copy_from_slice(&random.to_ne_bytes());
    let Ok((id, backend, seen)) =
        conntrack::backend_for(&s.key, &meta, s.l4.tcp_flags, 1, settings)
    else {
        return MISS;
    };
    let Seen::New(table) = seen else {
        return MISS;
    };
    if conntrack::record_reverse(
        table,
        &s.key,
        (&backend.addr, backend.port),
        (meta.vip_id, id),
        &mut s.other,
        &mut s.reverse,
    )
    .is_err()
    {
        return MISS;
    }
    select::count_opened(backend_index(id));
    PASS
}

/// One insert of a new flow (a random source address) into the connection table, the LRU
/// hash map of the balancer: the part of a new flow that `step_new_flow` does twice.
#[xdp]
pub fn step_lru_insert(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    let entry = random_flow(s);
    pass_if(CONNTRACK.insert(&s.key, &entry, 0).is_ok())
}

/// Candidates for the connection table, same key and value, same capacity: an LRU hash with
/// per-CPU LRU lists, and a plain preallocated hash (no eviction).
#[map(name = "BENCH_LRU_PERCPU")]
static BENCH_LRU_PERCPU: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_CAPACITY, BPF_F_NO_COMMON_LRU);

#[map(name = "BENCH_HASH")]
static BENCH_HASH: HashMap<FlowKey, FlowState> =
    HashMap::with_max_entries(DEFAULT_CONNTRACK_CAPACITY, 0);

/// A new flow's key (random source address) and entry, in the scratch.
#[inline(always)]
fn random_flow(s: &mut Scratch) -> FlowState {
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    // SAFETY: a BPF helper without arguments or preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    s.key.src_addr[..4].copy_from_slice(&random.to_ne_bytes());
    FlowState {
        backend_id: 0,
        state: 0,
        born: [0; 3],
        last_seen_ns: 1,
    }
}

/// As `step_lru_insert`, into an LRU hash with per-CPU lists (`BPF_F_NO_COMMON_LRU`).
#[xdp]
pub fn step_lru_percpu_insert(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    let entry = random_flow(s);
    pass_if(BENCH_LRU_PERCPU.insert(&s.key, &entry, 0).is_ok())
}

/// As `step_lru_insert`, into a plain preallocated hash map.
#[xdp]
pub fn step_hash_insert(_ctx: XdpContext) -> u32 {
    let Some(s) = scratch() else { return MISS };
    let entry = random_flow(s);
    pass_if(BENCH_HASH.insert(&s.key, &entry, 0).is_ok())
}

/// The counters of one packet: its outcome, its VIP's and its backend's traffic (three
/// per-CPU arrays).
#[xdp]
pub fn step_counters(mut ctx: XdpContext) -> u32 {
    let pkt = Packet::new(&mut ctx);
    stats::count(Counter::PassFib);
    stats::count_traffic(0, 0, pkt.len(), false);
    PASS
}

/// The NAT rewrite with its checksum updates (IPv4 header, TCP/UDP with the pseudo-header),
/// here to the packet's own destination, so that the packet stays as it was.
#[xdp]
pub fn step_rewrite(mut ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(&mut ctx);
    let Some(s) = scratch() else { return MISS };
    let (addr, port) = (s.l3.dst, s.l4.dst_port);
    match nat::rewrite(&mut pkt, &s.l3, &s.l4, Side::Dst, &addr, port) {
        Ok(kind) => pass_if(kind == L4Checksum::Full),
        Err(_) => MISS,
    }
}

/// `bpf_fib_lookup` for the packet's IPv4 addresses, its parameters filled as the balancer's
/// `fwd::forward` fills them. Without an ingress interface it fails at once.
#[xdp]
pub fn step_fib(mut ctx: XdpContext) -> u32 {
    let pkt = Packet::new(&mut ctx);
    let Some(s) = scratch() else { return MISS };
    let mut params = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    // As in `fwd::forward`: zeroed without a `memset` call. An all-zero `bpf_fib_lookup`
    // (integers, byte arrays and unions of them) is valid.
    let params = zeroed_in_place(&mut params);
    params.l4_protocol = s.l3.proto;
    params.ifindex = pkt.ingress_ifindex;
    let Some(ip) = pkt.ref_at::<Ipv4Fixed>(s.l3.l3_off) else {
        return MISS;
    };
    params.family = 2;
    params.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
    params.__bindgen_anon_2.tos = ip.tos;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    pass_if(pkt.fib_lookup(params) == i64::from(BPF_FIB_LKUP_RET_SUCCESS))
}

lb_ebpf::program_boilerplate!("bench_steps");
