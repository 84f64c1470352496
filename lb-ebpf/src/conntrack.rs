//! The connection table: a flow keeps its backend while it is tracked, the backend keeps
//! taking its flows (up or draining) and the entry has not expired. State transitions and
//! expiry are `lb_common::conntrack`'s pure functions.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    Counter, FlowKey,
    conntrack::{
        FlowState, STATE_NEW, STATE_UDP, Timeouts, is_expired, next_state, settle_new_flow, touch,
    },
    flow::PROTO_TCP,
    maps::{Backend, BackendKey, REPLY_SHARED, ReverseNat, VipMeta},
};

use core::mem::MaybeUninit;

use crate::{
    maps::{BACKEND_VIPS, CONNTRACK, REVERSE_NAT},
    parse::{L3, L4},
    ptr::{copy16, zeroed_in_place},
    select,
};

/// The backend of the tracked flow `key`, if it has a live entry whose backend keeps taking
/// its packets (up or draining): the whole lookup of an established flow's packet. The flow
/// key holds the VIP address and port, so a hit also proves the packet is for a VIP; a miss,
/// an expired entry or a backend gone or down is left to [`backend_for`] after the VIP lookup.
#[inline(always)]
pub fn tracked(
    key: &FlowKey,
    tcp_flags: u8,
    now: u64,
    timeouts: &Timeouts,
) -> Option<(u32, &'static Backend)> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: as in `backend_for`.
    let entry = unsafe { &mut *entry };
    let id = entry.backend_id;
    if is_expired(entry, now, timeouts) {
        return None;
    }
    let backend = select::backend(id)?;
    if !backend.keeps_flows_of(id) {
        return None;
    }
    touch(entry, tcp_flags, true, now);
    Some((id, backend))
}

/// The backend for a packet of flow `key` to the VIP `meta`, and whether the flow is new
/// (picked now by this CPU, rather than found in the table or recorded by another CPU).
#[inline(always)]
pub fn backend_for(
    key: &FlowKey,
    meta: &VipMeta,
    tcp_flags: u8,
    now: u64,
    seed: u32,
    timeouts: &Timeouts,
) -> Result<(u32, &'static Backend, bool), Counter> {
    let initial = if key.proto == PROTO_TCP {
        STATE_NEW
    } else {
        STATE_UDP
    };
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a pointer the lookup returned, valid for this run. Two CPUs may update one
        // flow's entry at once; each writes whole, valid fields, and the worst outcome is a
        // stale timestamp or state, which the next packet corrects.
        let entry = unsafe { &mut *entry };
        if !is_expired(entry, now, timeouts)
            && let Some(backend) = select::backend(entry.backend_id)
            && backend.keeps_flows_of(entry.backend_id)
        {
            touch(entry, tcp_flags, true, now);
            return Ok((entry.backend_id, backend, false));
        }
        // Expired, or its backend is gone or down: schedule again, in place (field by field:
        // a whole `FlowState` written at once zeroes its padding with a `memset` call).
        let (id, backend) = select::pick(meta, key, seed)?;
        entry.backend_id = id;
        entry.state = next_state(initial, tcp_flags, true);
        entry.last_seen_ns = now;
        return Ok((id, backend, true));
    }
    let (id, backend) = select::pick(meta, key, seed)?;
    // Zeroed in place, then field by field: a `FlowState { .. }` literal zeroes its 3 bytes of
    // padding with a call of the byte-at-a-time `memset` (see `ptr::set_v4`).
    let mut entry = MaybeUninit::<FlowState>::uninit();
    let entry = zeroed_in_place(&mut entry);
    entry.backend_id = id;
    entry.state = next_state(initial, tcp_flags, true);
    entry.last_seen_ns = now;
    // Only if no other CPU recorded the flow since the lookup above: the first entry decides
    // (`settle_new_flow`). A full table evicts its least recently used entry instead of failing.
    let inserted = CONNTRACK.insert(key, entry, u64::from(BPF_NOEXIST)).is_ok();
    let recorded = if inserted {
        None
    } else {
        recorded_backend(key, tcp_flags, now, timeouts)
    };
    let (id, new_flow) = settle_new_flow(id, inserted, recorded.map(|(id, _)| id));
    let backend = match recorded {
        Some((_, winner)) if !new_flow => winner,
        _ => backend,
    };
    Ok((id, backend, new_flow))
}

/// The live entry another CPU recorded for flow `key` (the packet's state change applied), and
/// its backend, if it keeps taking the flow's packets.
#[inline(always)]
fn recorded_backend(
    key: &FlowKey,
    tcp_flags: u8,
    now: u64,
    timeouts: &Timeouts,
) -> Option<(u32, &'static Backend)> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: as in `backend_for`.
    let entry = unsafe { &mut *entry };
    let id = entry.backend_id;
    let backend = select::backend(id)?;
    if is_expired(entry, now, timeouts) || !backend.keeps_flows_of(id) {
        return None;
    }
    touch(entry, tcp_flags, true, now);
    Some((id, backend))
}

/// Notes a reply packet of the client-side flow `key`: refreshes the entry and lets the
/// backend's FIN/RST shorten its life. False if the flow has no entry.
#[inline(always)]
pub fn saw_reply(key: &FlowKey, tcp_flags: u8, now: u64) -> bool {
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: as in `backend_for`.
    let entry = unsafe { &mut *entry };
    touch(entry, tcp_flags, false, now);
    true
}

/// True if the flow `key` (client → VIP) has a connection entry.
#[inline(always)]
pub fn is_tracked(key: &FlowKey) -> bool {
    CONNTRACK.get_ptr(key).is_some()
}

/// [`reply_translation`]: the flow's own reverse entry translates the packet.
pub const BY_FLOW: u32 = 1;
/// [`reply_translation`]: the backend's VIP translates the packet, if the flow is tracked.
pub const BY_BACKEND: u32 = 2;

/// Records the reverse translation of the new flow `key` (client → VIP), sent to
/// `backend`:`port`, the backend `backend_id` of the VIP `vip_id`: its replies, the flow
/// backend → client, are to come from the VIP again. The entry's key and value are built in
/// `other` and `reverse`, working memory outside the stack (the scratch's).
#[inline(always)]
pub fn record_reverse(
    key: &FlowKey,
    (backend, port): (&[u8; 16], [u8; 2]),
    (vip_id, backend_id): (u32, u32),
    other: &mut FlowKey,
    reverse: &mut ReverseNat,
) -> Result<(), Counter> {
    set_key(
        other,
        (backend, port),
        (&key.src_addr, key.src_port),
        (key.proto, key.family),
    );
    copy16(&mut reverse.vip_addr, &key.dst_addr);
    reverse.vip_port = key.dst_port;
    reverse.flags = 0;
    reverse._pad = 0;
    reverse.vip_id = vip_id;
    reverse.backend_id = backend_id;
    REVERSE_NAT
        .insert(other, reverse, 0)
        .map_err(|_| Counter::DropInternal)
}

/// The translation of a reply: the packet's flow is `key` (backend → client) and its source
/// `backend`. Copied into `out`; [`BY_FLOW`] or [`BY_BACKEND`] says by what, 0 that the
/// packet is no reply of a flow xdplb translates. See [`ReverseNat`] for the order of the
/// lookups: a backend that belongs to one VIP needs no per-flow reverse state. A translation
/// [`BY_BACKEND`] holds only for a tracked flow (the caller checks the connection entry it
/// names): the backend's answers to anything else (its own clients through the gateway, the
/// gateway's probes) are not the VIP's.
///
/// BPF functions return one scalar in a register, so the result is a plain number.
#[inline(always)]
pub fn reply_translation(key: &FlowKey, backend: &BackendKey, out: &mut ReverseNat) -> u32 {
    let stateless = BACKEND_VIPS.get_ptr(backend);
    if let Some(entry) = stateless {
        // SAFETY: a pointer the lookup returned; BACKEND_VIPS is not preallocated, so the
        // element stays valid for this RCU read section even if the agent replaces it.
        let entry = unsafe { &*entry };
        if entry.flags & REPLY_SHARED == 0 {
            copy_reverse(out, entry);
            return BY_BACKEND;
        }
    }
    if let Some(entry) = REVERSE_NAT.get_ptr(key) {
        // SAFETY: a pointer the lookup returned; copied at once.
        copy_reverse(out, unsafe { &*entry });
        return BY_FLOW;
    }
    match stateless {
        Some(entry) => {
            // SAFETY: as above.
            copy_reverse(out, unsafe { &*entry });
            BY_BACKEND
        }
        None => 0,
    }
}

#[inline(always)]
fn copy_reverse(out: &mut ReverseNat, entry: &ReverseNat) {
    copy16(&mut out.vip_addr, &entry.vip_addr);
    out.vip_port = entry.vip_port;
    out.vip_id = entry.vip_id;
    out.backend_id = entry.backend_id;
}

/// Sets `key` to the flow `src`:`src_port` → `dst`:`dst_port` with `proto` and `family`,
/// field by field (whole-array moves of addresses compile to byte-at-a-time `memmove` calls:
/// see `ptr::copy16`).
#[inline(always)]
pub fn set_key(
    key: &mut FlowKey,
    (src, src_port): (&[u8; 16], [u8; 2]),
    (dst, dst_port): (&[u8; 16], [u8; 2]),
    (proto, family): (u8, u8),
) {
    copy16(&mut key.src_addr, src);
    copy16(&mut key.dst_addr, dst);
    key.src_port = src_port;
    key.dst_port = dst_port;
    key.proto = proto;
    key.family = family;
    key._pad = [0; 2];
}

/// Sets `key` to the flow of the packet with these headers.
#[inline(always)]
pub fn set_packet_key(key: &mut FlowKey, l3: &L3, l4: &L4) {
    set_key(
        key,
        (&l3.src, l4.src_port),
        (&l3.dst, l4.dst_port),
        (l3.proto, l3.family),
    );
}
