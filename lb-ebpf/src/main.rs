//! The xdplb XDP program. One readable pipeline:
//! parse → VIP? (address filter, then `VIP_ADDRS`) → L4 → VIP lookup (exact, then port 0) → connection table → pick a backend
//! for new flows → record the reverse translation → count → rewrite → FIB → transmit;
//! and for replies of tracked flows: reverse lookup → rewrite → FIB → transmit.
//!
//! Stages return `Result<_, Counter>`; every outcome counter implies its XDP action
//! (`Counter::action`). Only `main` and `ptr` touch the `XdpContext`.
//!
//! Addresses move field by field through `ptr::copy16` and friends: whole-array moves and
//! zero fills compile to calls of byte-at-a-time `memmove`/`memset` loops (see `ptr`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF atomic add, which core exposes only as an intrinsic on a target without CAS.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// Map keys and values are passed by reference: by value they would be copied onto the 512-byte
// BPF stack, which is exactly what the scratch map exists to avoid.
#![allow(clippy::needless_borrows_for_generic_args)]

mod conntrack;
mod fwd;
mod maps;
mod nat;
mod parse;
mod ptr;
mod select;
mod stats;
mod vip;

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext};
use lb_common::{Counter, maps::backend_index, nat::L4Checksum};

use crate::{
    fwd::Direction,
    maps::{REVERSE_NAT, SCRATCH, SETTINGS, Scratch},
    nat::Side,
    ptr::{Packet, copy16},
};

#[xdp]
pub fn lb(mut ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(&mut ctx);
    let outcome = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's element of a per-CPU array; XDP runs with preemption disabled, so
        // only this run uses it until it returns.
        Some(scratch) => match try_lb(&mut pkt, unsafe { &mut *scratch }) {
            Ok(outcome) | Err(outcome) => outcome,
        },
        None => Counter::DropInternal,
    };
    stats::count(outcome);
    outcome.action()
}

#[inline(always)]
fn try_lb(pkt: &mut Packet, s: &mut Scratch) -> Result<Counter, Counter> {
    parse::parse_l3(pkt, &mut s.l3)?;
    if vip::may_be_vip_addr(&s.l3) && vip::is_vip_addr(&s.l3) {
        Ok(to_vip(pkt, s))
    } else {
        Ok(from_backend(pkt, s))
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a BPF helper without arguments or preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A packet to a VIP address: balance it, or drop it if that cannot be done safely.
///
/// Not inlined: the request and reply paths are alternatives, and as separate BPF functions
/// their stack frames do not add up against the 512-byte limit.
///
/// BPF functions return one scalar in a register, so the result is the outcome itself.
#[inline(never)]
fn to_vip(pkt: &mut Packet, s: &mut Scratch) -> Counter {
    match balance(pkt, s) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

#[inline(always)]
fn balance(pkt: &mut Packet, s: &mut Scratch) -> Result<Counter, Counter> {
    parse::strict(pkt, &mut s.l3)?;
    if !parse::parse_l4(pkt, &s.l3, &mut s.l4) {
        return Err(Counter::DropTruncated);
    }
    let meta = vip::lookup(&s.l3, s.l4.dst_port).ok_or(Counter::PassNonVip)?;
    let settings = SETTINGS.get(0).ok_or(Counter::DropInternal)?;
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    let (id, backend, new_flow) = conntrack::backend_for(
        &s.key,
        &meta,
        s.l4.tcp_flags,
        now(),
        settings.hash_seed,
        &settings.timeouts,
    )?;
    // Port 0 on a backend: keep the port the client asked for (wildcard VIPs).
    let port = if backend.port == [0; 2] {
        s.l4.dst_port
    } else {
        backend.port
    };
    let index = backend_index(id);
    if new_flow {
        conntrack::record_reverse(
            &s.key,
            (&backend.addr, port),
            (meta.vip_id, id),
            &mut s.other,
            &mut s.reverse,
        )?;
        select::count_opened(index);
    }
    stats::count_traffic(meta.vip_id, index, pkt.len(), new_flow);
    if nat::rewrite(pkt, &s.l3, &s.l4, Side::Dst, &backend.addr, port)? == L4Checksum::Partial {
        return Ok(Counter::PassPartialChecksum);
    }
    Ok(fwd::forward(pkt, &s.l3, Direction::ToBackend))
}

/// Any other IP packet: a reply of a tracked flow is translated back to come from its VIP;
/// everything else goes to the kernel untouched.
#[inline(never)]
fn from_backend(pkt: &mut Packet, s: &mut Scratch) -> Counter {
    match translate_reply(pkt, s) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

#[inline(always)]
fn translate_reply(pkt: &mut Packet, s: &mut Scratch) -> Result<Counter, Counter> {
    if !vip::may_be_from_backend(&s.l3)
        || parse::strict(pkt, &mut s.l3).is_err()
        || !parse::parse_l4(pkt, &s.l3, &mut s.l4)
    {
        return Err(Counter::PassNonVip);
    }
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    let reverse = REVERSE_NAT.get_ptr(&s.key).ok_or(Counter::PassNonVip)?;
    // SAFETY: a pointer the lookup returned; copied at once.
    let reverse = unsafe { &*reverse };
    copy16(&mut s.reverse.vip_addr, &reverse.vip_addr);
    s.reverse.vip_port = reverse.vip_port;
    s.reverse.vip_id = reverse.vip_id;
    s.reverse.backend_id = reverse.backend_id;
    conntrack::set_key(
        &mut s.other,
        (&s.l3.dst, s.l4.dst_port),
        (&s.reverse.vip_addr, s.reverse.vip_port),
        (s.l3.proto, s.l3.family),
    );
    conntrack::saw_reply(&s.other, s.l4.tcp_flags, now());
    stats::count_traffic(
        s.reverse.vip_id,
        backend_index(s.reverse.backend_id),
        pkt.len(),
        false,
    );
    let (vip_addr, vip_port) = (s.reverse.vip_addr, s.reverse.vip_port);
    if nat::rewrite(pkt, &s.l3, &s.l4, Side::Src, &vip_addr, vip_port)? == L4Checksum::Partial {
        return Ok(Counter::PassPartialChecksum);
    }
    Ok(fwd::forward(pkt, &s.l3, Direction::ToClient))
}

lb_ebpf::program_boilerplate!("lb-ebpf");
