//! The connection tables: a flow keeps its backend while it is tracked, the backend keeps
//! taking its flows (up or draining) and the entry has not expired. Half-open TCP flows wait
//! in the embryonic table until the client's handshake ACK moves them to the connection table,
//! so that new flows (a SYN flood's) evict only each other. State transitions, expiry, the
//! promotion and the new-flow rate limit are `lb_common::conntrack`'s pure functions.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::LruHashMap};
use lb_common::{
    Counter, FlowKey,
    conntrack::{
        FlowState, FlowTable, STATE_NEW, STATE_UDP, Timeouts, born_stamp, is_expired,
        new_flow_table, next_state, over_rate, promotes, settle_new_flow, stateless_new_flow,
        touch,
    },
    counters::Event,
    flow::PROTO_TCP,
    maps::{Backend, BackendKey, REPLY_SHARED, ReverseNat, Settings, VipMeta},
};

use core::mem::MaybeUninit;

use crate::{
    maps::{BACKEND_VIPS, CONNTRACK, EMBRYONIC, EMBRYONIC_REVERSE, FLOW_RATE, REVERSE_NAT},
    parse::{L3, L4},
    ptr::{copy16, zeroed_in_place},
    select, stats,
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
/// (picked now by this CPU, rather than found in a table or recorded by another CPU).
///
/// The connection table first, then (TCP) the embryonic table, whose entry the client's
/// handshake ACK promotes; a new flow is recorded in the table [`new_flow_table`] says, or
/// nowhere if this CPU is over the new-flow rate limit and the VIP hashes consistently.
/// What [`backend_for`] found of a VIP packet's flow, for the bookkeeping that follows.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A tracked flow.
    Known,
    /// A new flow, recorded in this table (or, over the rate limit, nowhere).
    New(FlowTable),
    /// A half-open flow this packet completed: moved to the connection table.
    Promoted,
}

#[inline(always)]
pub fn backend_for(
    key: &FlowKey,
    meta: &VipMeta,
    tcp_flags: u8,
    now: u64,
    settings: &Settings,
) -> Result<(u32, &'static Backend, Seen), Counter> {
    let timeouts = &settings.timeouts;
    let is_tcp = key.proto == PROTO_TCP;
    let initial = if is_tcp { STATE_NEW } else { STATE_UDP };
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
            return Ok((entry.backend_id, backend, Seen::Known));
        }
        // Expired, or its backend is gone or down: schedule again, in place (field by field:
        // a whole `FlowState` written at once zeroes its padding with a `memset` call).
        let (id, backend) = select::pick(meta, key, settings.hash_seed)?;
        entry.backend_id = id;
        entry.state = next_state(initial, tcp_flags, true);
        entry.born = born_stamp(now);
        entry.last_seen_ns = now;
        return Ok((id, backend, Seen::New(FlowTable::Connections)));
    }
    if is_tcp && let Some((id, backend, seen)) = embryonic(key, tcp_flags, now, timeouts) {
        return Ok((id, backend, seen));
    }
    let table = new_flow_table(is_tcp, tcp_flags);
    if is_tcp && table == FlowTable::Connections {
        stats::count_event(Event::LostState);
    }
    let over = match FLOW_RATE.get_ptr_mut(0) {
        // SAFETY: this CPU's element of a per-CPU array; XDP runs with preemption disabled.
        Some(window) => over_rate(unsafe { &mut *window }, now, settings.new_flow_rate_limit),
        None => false,
    };
    let (id, backend) = select::pick(meta, key, settings.hash_seed)?;
    if stateless_new_flow(meta.scheduler, over) {
        stats::count_event(Event::StatelessNewFlow);
        return Ok((id, backend, Seen::New(table)));
    }
    let map = match table {
        FlowTable::Embryonic => &EMBRYONIC,
        FlowTable::Connections => &CONNTRACK,
    };
    // Zeroed in place, then field by field: a `FlowState { .. }` literal zeroes its 3 bytes of
    // padding with a call of the byte-at-a-time `memset` (see `ptr::set_v4`).
    let mut entry = MaybeUninit::<FlowState>::uninit();
    let entry = zeroed_in_place(&mut entry);
    entry.backend_id = id;
    entry.state = next_state(initial, tcp_flags, true);
    entry.born = born_stamp(now);
    entry.last_seen_ns = now;
    // Only if no other CPU recorded the flow since the lookup above: the first entry decides
    // (`settle_new_flow`). A full table evicts its least recently used entry instead of failing.
    let inserted = map.insert(key, entry, u64::from(BPF_NOEXIST)).is_ok();
    let recorded = if inserted {
        None
    } else {
        recorded_backend(map, key, tcp_flags, now, timeouts)
    };
    let (id, new_flow) = settle_new_flow(id, inserted, recorded.map(|(id, _)| id));
    let backend = match recorded {
        Some((_, winner)) if !new_flow => winner,
        _ => backend,
    };
    if inserted && table == FlowTable::Embryonic {
        stats::count_event(Event::EmbryonicInsert);
    }
    let seen = if new_flow {
        Seen::New(table)
    } else {
        Seen::Known
    };
    Ok((id, backend, seen))
}

/// The backend of the half-open flow `key`, if the embryonic table holds it live with a
/// backend that keeps its flows. A client packet that [`promotes`] the flow moves its entry,
/// backend and all, into the connection table. A dead entry is removed, so that the flow
/// counts as new (and its insert is not refused).
#[inline(always)]
fn embryonic(
    key: &FlowKey,
    tcp_flags: u8,
    now: u64,
    timeouts: &Timeouts,
) -> Option<(u32, &'static Backend, Seen)> {
    let entry = EMBRYONIC.get_ptr_mut(key)?;
    // SAFETY: as in `backend_for`; the element stays valid for this RCU read section even once
    // removed below.
    let entry = unsafe { &mut *entry };
    let id = entry.backend_id;
    let backend = match select::backend(id) {
        Some(backend) if backend.keeps_flows_of(id) && !is_expired(entry, now, timeouts) => backend,
        _ => {
            let _ = EMBRYONIC.remove(key);
            return None;
        }
    };
    if !promotes(tcp_flags) {
        touch(entry, tcp_flags, true, now);
        return Some((id, backend, Seen::Known));
    }
    let state = next_state(entry.state, tcp_flags, true);
    let mut promoted = MaybeUninit::<FlowState>::uninit();
    let promoted = zeroed_in_place(&mut promoted);
    promoted.backend_id = id;
    promoted.state = state;
    promoted.born = entry.born;
    promoted.last_seen_ns = now;
    // Another CPU may have promoted the flow since the lookup: its entry holds the same
    // backend, and stays (and that CPU records the reverse translation).
    let seen = if CONNTRACK
        .insert(key, promoted, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        stats::count_event(Event::Promoted);
        Seen::Promoted
    } else {
        Seen::Known
    };
    let _ = EMBRYONIC.remove(key);
    Some((id, backend, seen))
}

/// The live entry another CPU recorded for flow `key` in `map` (the packet's state change
/// applied), and its backend, if it keeps taking the flow's packets.
#[inline(always)]
fn recorded_backend(
    map: &LruHashMap<FlowKey, FlowState>,
    key: &FlowKey,
    tcp_flags: u8,
    now: u64,
    timeouts: &Timeouts,
) -> Option<(u32, &'static Backend)> {
    let entry = map.get_ptr_mut(key)?;
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
/// backend's FIN/RST shorten its life. False if the flow has no entry (connection or
/// embryonic).
#[inline(always)]
pub fn saw_reply(key: &FlowKey, tcp_flags: u8, now: u64) -> bool {
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        // A handshake in progress (the backend's SYN-ACK): its entry is embryonic until the
        // client's ACK, and the backend's packets do not change it.
        return EMBRYONIC.get_ptr(key).is_some();
    };
    // SAFETY: as in `backend_for`.
    let entry = unsafe { &mut *entry };
    touch(entry, tcp_flags, false, now);
    true
}

/// True if the flow `key` (client → VIP) has a connection entry or an embryonic one.
#[inline(always)]
pub fn is_tracked(key: &FlowKey) -> bool {
    CONNTRACK.get_ptr(key).is_some() || EMBRYONIC.get_ptr(key).is_some()
}

/// The backend id the flow `key` (client → VIP) is tracked to, in its connection entry or its
/// embryonic one.
#[inline(always)]
pub fn tracked_backend_id(key: &FlowKey) -> Option<u32> {
    let entry = CONNTRACK.get_ptr(key).or_else(|| EMBRYONIC.get_ptr(key))?;
    // SAFETY: a pointer the lookup returned, read at once.
    Some(unsafe { (*entry).backend_id })
}

/// Records the reverse translation of the flow `key` (client → VIP), sent to
/// `backend`:`port`, the backend `backend_id` of the VIP `vip_id`, in the reverse table that
/// goes with `table`: its replies, the flow backend → client, are to come from the VIP again.
/// The entry's key and value are built in `other` and `reverse`, working memory outside the
/// stack (the scratch's).
#[inline(always)]
pub fn record_reverse(
    table: FlowTable,
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
    let map = match table {
        FlowTable::Embryonic => &EMBRYONIC_REVERSE,
        FlowTable::Connections => &REVERSE_NAT,
    };
    map.insert(other, reverse, 0)
        .map_err(|_| Counter::DropInternal)
}

/// [`reply_translation`]: the flow's own reverse entry translates the packet.
pub const BY_FLOW: u32 = 1;
/// [`reply_translation`]: the VIP that has the backend alone translates the packet.
pub const BY_BACKEND: u32 = 2;
/// [`reply_translation`]: the owner of a shared backend's entry translates the packet, if the
/// flow it names is tracked (a flow opened while the owner had the backend alone).
pub const BY_OWNER: u32 = 3;

/// The translation of a reply: the packet's flow is `key` (backend → client) and its source
/// `backend`. Copied into `out`; [`BY_FLOW`], [`BY_BACKEND`] or [`BY_OWNER`] says by what, 0
/// that the packet is no reply of a flow xdplb translates. See [`ReverseNat`] for the order of
/// the lookups: a backend that belongs to one VIP needs no per-flow state, and its packets are
/// that VIP's whether or not their flow is still in a table (so that a backend's address never
/// leaves towards a client, even after its flow was evicted); a guess for a shared backend
/// ([`BY_OWNER`]) holds only for a tracked flow, which the caller checks.
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
    // One lookup after the other, each copied at once: `or_else` of the two pointers compiles
    // to a branchless OR of pointers, which the verifier refuses.
    if let Some(entry) = REVERSE_NAT.get_ptr(key) {
        // SAFETY: a pointer the lookup returned; copied at once.
        copy_reverse(out, unsafe { &*entry });
        return BY_FLOW;
    }
    if let Some(entry) = EMBRYONIC_REVERSE.get_ptr(key) {
        // SAFETY: as above.
        copy_reverse(out, unsafe { &*entry });
        return BY_FLOW;
    }
    match stateless {
        Some(entry) => {
            // SAFETY: as above.
            copy_reverse(out, unsafe { &*entry });
            BY_OWNER
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
