//! The xdplb XDP program. One readable pipeline:
//! parse → VIP address? (address filter) → L4 → connection table: a tracked flow's packet goes
//! straight to rewrite → next hop → transmit;
//! otherwise `VIP_ADDRS` → VIP lookup (exact, then port 0) → the VIP's source checks, if it
//! has any (`acl`: prefix lists on every packet, tracked flows' too; a per-source new-flow
//! limit) → the embryonic table (a half-open
//! flow's; the handshake ACK promotes it) → pick a backend → record the flow (embryonic if a
//! SYN, nowhere under a flood if the VIP hashes consistently)
//! (and its reverse translation if its backend is shared by several VIPs) → count → rewrite →
//! next hop → transmit;
//! and for replies: the backend's VIP (or the flow's reverse entry) → rewrite → FIB → transmit;
//! ICMP: echo requests to a VIP answered, errors about VIP flows translated (`icmp`);
//! fragments: a first fragment balanced (or translated back) as above and its translation
//! remembered, later fragments given the same one (`frag`).
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

mod acl;
mod conntrack;
mod frag;
mod fwd;
mod icmp;
mod maps;
mod nat;
mod parse;
mod ptr;
mod select;
mod stats;
mod vip;

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext};
use lb_common::{
    Counter,
    conntrack::FlowTable,
    frag::{FRAG_FIRST, TO_BACKEND, TO_CLIENT},
    maps::{
        BACKEND_FLAG_ACL, BACKEND_FLAG_STATELESS_REPLY, Backend, Settings, backend_index,
        forwarding,
    },
    nat::L4Checksum,
};

use crate::{
    conntrack::Seen,
    fwd::Direction,
    maps::{SCRATCH, SETTINGS, Scratch},
    nat::Side,
    ptr::{Packet, copy16},
};

#[xdp]
pub fn lb(mut ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(&mut ctx);
    let outcome = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's element of a per-CPU array; XDP runs with preemption disabled, so
        // only this run uses it until it returns.
        Some(scratch) => {
            // SAFETY: as above.
            let s = unsafe { &mut *scratch };
            match try_lb(&mut pkt, s) {
                // Built here, at the top of the call stack: see `fwd::to_backend`.
                Ok(Counter::IcmpTooBigTx) => icmp::too_big(&mut pkt, s),
                Ok(outcome) | Err(outcome) => outcome,
            }
        }
        None => Counter::DropInternal,
    };
    stats::count(outcome);
    outcome.action()
}

#[inline(always)]
fn try_lb(pkt: &mut Packet, s: &mut Scratch) -> Result<Counter, Counter> {
    parse::parse_l3(pkt, &mut s.l3)?;
    if icmp::is_icmp(&s.l3) {
        return Ok(icmp::handle(pkt, s));
    }
    if vip::may_be_vip_addr(&s.l3) {
        if let Some(outcome) = tracked(pkt, s) {
            return Ok(outcome);
        }
        if vip::is_vip_addr(&s.l3) {
            return Ok(if frag::is_later(&s.l3) {
                frag::later_to_vip(pkt, s)
            } else {
                to_vip(pkt, s)
            });
        }
    }
    // Not from inside `to_vip` and `from_backend`: a call deeper, the stack frames of the
    // forwarding calls would add up beyond 512 bytes.
    if frag::is_later(&s.l3) {
        return Ok(frag::later_from_backend(pkt, s));
    }
    Ok(from_backend(pkt, s))
}

/// A packet of a tracked flow, sent on to its backend; `None` if the packet is no such thing
/// (then the VIP lookup decides).
///
/// Not inlined, like [`to_vip`]: BPF functions return one scalar, here an outcome or none.
#[inline(never)]
fn tracked(pkt: &mut Packet, s: &mut Scratch) -> Option<Counter> {
    // A packet that cannot be balanced safely (malformed, TTL expiring) is left to the VIP
    // path, which drops or passes it untranslated with its counter.
    if parse::strict(pkt, &mut s.l3).is_err() || !parse::parse_l4(pkt, &s.l3, &mut s.l4) {
        return None;
    }
    let settings = SETTINGS.get(0)?;
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    let now = now();
    let (id, backend) = conntrack::tracked(&s.key, s.l4.tcp_flags, now, &settings.timeouts)?;
    // Prefix lists hold for every packet: a source denied since its flow began is cut off.
    if backend.flags & BACKEND_FLAG_ACL != 0
        && !acl::allowed(&s.key, u32::from(backend.vip_id), &mut s.acl)
    {
        return Some(Counter::DropAcl);
    }
    Some(
        match send_to_backend(pkt, s, settings, (id, backend), Seen::Known, now) {
            Ok(outcome) | Err(outcome) => outcome,
        },
    )
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
    let now = now();
    acl::check(s, &meta, now)?;
    let (id, backend, seen) = conntrack::backend_for(&s.key, &meta, s.l4.tcp_flags, now, settings)?;
    send_to_backend(pkt, s, settings, (id, backend), seen, now)
}

/// The rest of a VIP packet's way once its backend is known: the new flow's bookkeeping,
/// counting, rewrite (NAT) and next hop, by the backend's forwarding mode (its VIP's, which the
/// agent writes into every backend entry, so tracked flows need no VIP lookup).
#[inline(always)]
fn send_to_backend(
    pkt: &mut Packet,
    s: &mut Scratch,
    settings: &Settings,
    (id, backend): (u32, &Backend),
    seen: Seen,
    now: u64,
) -> Result<Counter, Counter> {
    // Port 0 on a backend: keep the port the client asked for (wildcard VIPs).
    let port = if backend.port == [0; 2] {
        s.l4.dst_port
    } else {
        backend.port
    };
    let index = backend_index(id);
    let mode = backend.forwarding;
    if mode != forwarding::NAT && mode != forwarding::DSR_L2 && mode != forwarding::IPIP {
        return Err(Counter::DropInternal);
    }
    // A new flow to a backend several VIPs share records its reverse translation, a half-open
    // one apart (a SYN flood evicts only those), moved when the handshake completes. Direct
    // server return: replies never come back, so there is nothing to translate.
    let record = match seen {
        Seen::Known => None,
        Seen::New(table) => Some(table),
        Seen::Promoted => Some(FlowTable::Connections),
    };
    if let Some(table) = record
        && forwarding::replies_through_gateway(mode)
        && backend.flags & BACKEND_FLAG_STATELESS_REPLY == 0
    {
        conntrack::record_reverse(
            table,
            &s.key,
            (&backend.addr, port),
            (u32::from(backend.vip_id), id),
            &mut s.other,
            &mut s.reverse,
        )?;
    }
    let new_flow = matches!(seen, Seen::New(_));
    if new_flow {
        select::count_opened(index);
    }
    stats::count_traffic(u32::from(backend.vip_id), index, pkt.len(), new_flow);
    if s.l3.frag == FRAG_FIRST {
        let ids = (id, u32::from(backend.vip_id));
        frag::remember(s, TO_BACKEND, &backend.addr, ids, now);
    }
    let generation = settings.next_hop_generation;
    if mode == forwarding::DSR_L2 {
        return Ok(fwd::to_backend::<true>(pkt, s, index, generation, now));
    }
    if mode == forwarding::IPIP {
        // Nothing is rewritten: the packet goes whole inside the outer header.
        return Ok(fwd::ipip_to_backend(pkt, s, index, settings, now));
    }
    if nat::rewrite(pkt, &s.l3, &s.l4, Side::Dst, &backend.addr, port)? == L4Checksum::Partial {
        // The kernel finishes the checksum and forwards it, unless it is too big for the
        // route: then the answer, from the VIP, is the program's.
        s.too_big_mtu = fwd::too_big_for_route(pkt, &s.l3);
        if s.too_big_mtu != 0 {
            return Ok(Counter::IcmpTooBigTx);
        }
        return Ok(Counter::PassPartialChecksum);
    }
    Ok(fwd::to_backend::<false>(pkt, s, index, generation, now))
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
    // A backend's answer to the gateway itself (a health probe) is no VIP's reply, whatever
    // its source port.
    if !vip::may_be_from_backend(&s.l3)
        || s.l3.problem.is_some()
        || vip::is_to_gateway(&s.l3)
        || parse::strict(pkt, &mut s.l3).is_err()
        || !parse::parse_l4(pkt, &s.l3, &mut s.l4)
    {
        return Err(Counter::PassNonVip);
    }
    conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
    copy16(&mut s.source.addr, &s.l3.src);
    s.source.port = s.l4.src_port;
    s.source.proto = s.l3.proto;
    s.source.family = s.l3.family;
    let by = conntrack::reply_translation(&s.key, &s.source, &mut s.reverse);
    if by == 0 {
        return Err(Counter::PassNonVip);
    }
    // Replies come from where the backend is: one spoofed from the client side with a
    // backend's address would otherwise end or shorten the flow it names.
    let settings = SETTINGS.get(0).ok_or(Counter::DropInternal)?;
    let now = now();
    let egress = fwd::backend_ifindex(
        pkt,
        &s.l3,
        backend_index(s.reverse.backend_id),
        settings.next_hop_generation,
        now,
    );
    if egress != 0 && egress != pkt.ingress_ifindex {
        return Err(Counter::DropSpoofedReply);
    }
    conntrack::set_key(
        &mut s.other,
        (&s.l3.dst, s.l4.dst_port),
        (&s.reverse.vip_addr, s.reverse.vip_port),
        (s.l3.proto, s.l3.family),
    );
    if !conntrack::saw_reply(&s.other, s.l4.tcp_flags, now) && by == conntrack::BY_OWNER {
        return Err(Counter::DropUntrackedReply);
    }
    stats::count_traffic(
        s.reverse.vip_id,
        backend_index(s.reverse.backend_id),
        pkt.len(),
        false,
    );
    let (vip_addr, vip_port) = (s.reverse.vip_addr, s.reverse.vip_port);
    let outcome = if nat::rewrite(pkt, &s.l3, &s.l4, Side::Src, &vip_addr, vip_port)?
        == L4Checksum::Partial
    {
        // The kernel finishes the checksum and forwards it, unless it is too big for the
        // route (below).
        if fwd::too_big_for_route(pkt, &s.l3) == 0 {
            return Ok(Counter::PassPartialChecksum);
        }
        Counter::PassReplyTooBig
    } else {
        fwd::forward(pkt, &s.l3, Direction::ToClient)
    };
    if outcome == Counter::PassReplyTooBig {
        // Back to the backend's own addresses (still in the parsed `s.l3`, `s.l4`): see
        // `Counter::PassReplyTooBig`.
        nat::restore(pkt, &s.l3, &s.l4, Side::Src, &vip_addr)?;
    } else if s.l3.frag == FRAG_FIRST {
        // Its later fragments follow it (`frag`).
        let ids = (s.reverse.backend_id, s.reverse.vip_id);
        frag::remember(s, TO_CLIENT, &vip_addr, ids, now);
    }
    Ok(outcome)
}

lb_ebpf::program_boilerplate!("lb-ebpf");
