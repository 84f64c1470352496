//! Fragments of VIP traffic (`lb_common::frag`): a first fragment, which holds the ports, is
//! balanced (or translated back, from a backend) like a whole packet, and what it was
//! translated to is remembered in `FRAGMENTS`; later fragments, which hold no ports, take that
//! translation: their address is rewritten, nothing else. A later fragment to a VIP whose first
//! fragment was not seen is an orphan and dropped; one from a backend passes untouched.

use lb_common::{
    Counter,
    frag::{FRAG_LATER, FragKey, TO_BACKEND, TO_CLIENT, is_live},
    maps::{backend_index, forwarding},
    parse::ttl_problem,
};

use crate::{
    conntrack,
    fwd::{self, Direction},
    maps::{FRAGMENTS, SETTINGS, Scratch},
    nat::{self, Side},
    parse::L3,
    ptr::{Packet, copy16},
    select, stats, vip,
};

/// True if the packet is a later fragment whose IP header is otherwise fine: its way is
/// [`later_to_vip`] or [`later_from_backend`].
#[inline(always)]
pub fn is_later(l3: &L3) -> bool {
    l3.frag == FRAG_LATER && l3.problem == Some(Counter::DropFragment)
}

/// Remembers that the first fragment in `s` (its headers as it arrived) goes `direction`
/// ([`TO_BACKEND`] or [`TO_CLIENT`]) translated to `addr`, for the backend `backend_id` of
/// the VIP `vip_id`. A failed insert (none expected: a full LRU map evicts) leaves the later
/// fragments orphans, counted as such.
#[inline(always)]
pub fn remember(
    s: &mut Scratch,
    direction: u8,
    addr: &[u8; 16],
    (backend_id, vip_id): (u32, u32),
    now: u64,
) {
    set_key(&mut s.frag_key, &s.l3, direction);
    let entry = &mut s.frag_entry;
    copy16(&mut entry.addr, addr);
    entry.src_port = s.l4.src_port;
    entry.dst_port = s.l4.dst_port;
    entry.backend_id = backend_id;
    entry.vip_id = vip_id;
    entry._pad = [0; 4];
    entry.stamp_ns = now;
    let _ = FRAGMENTS.insert(&s.frag_key, &s.frag_entry, 0);
}

/// Field by field, padding included (see `conntrack::set_key`).
#[inline(always)]
fn set_key(key: &mut FragKey, l3: &L3, direction: u8) {
    copy16(&mut key.src_addr, &l3.src);
    copy16(&mut key.dst_addr, &l3.dst);
    key.id = l3.frag_id;
    key.proto = l3.proto;
    key.family = l3.family;
    key.direction = direction;
    key._pad = 0;
}

/// Copies the live entry of the datagram of the later fragment in `s`, going `direction`,
/// into `s.frag_entry`; false if there is none.
#[inline(always)]
fn find(s: &mut Scratch, direction: u8, now: u64) -> bool {
    set_key(&mut s.frag_key, &s.l3, direction);
    let Some(found) = FRAGMENTS.get_ptr(&s.frag_key) else {
        return false;
    };
    // SAFETY: a pointer the lookup returned, read at once. Another CPU may overwrite the
    // element meanwhile (a new first fragment of the same key): each field read is whole.
    let found = unsafe { &*found };
    if !is_live(found.stamp_ns, now) {
        return false;
    }
    let entry = &mut s.frag_entry;
    copy16(&mut entry.addr, &found.addr);
    entry.src_port = found.src_port;
    entry.dst_port = found.dst_port;
    entry.backend_id = found.backend_id;
    entry.vip_id = found.vip_id;
    true
}

/// A later fragment to a VIP address: to the backend its first fragment went to, while that
/// backend keeps its flows; an orphan is dropped.
///
/// Not inlined: an alternative to `main::to_vip`'s balancing, with a stack frame of its own.
#[inline(never)]
pub fn later_to_vip(pkt: &mut Packet, s: &mut Scratch) -> Counter {
    match to_backend(pkt, s) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

#[inline(always)]
fn to_backend(pkt: &mut Packet, s: &mut Scratch) -> Result<Counter, Counter> {
    if let Some(problem) = ttl_problem(s.l3.ttl) {
        return Err(problem);
    }
    let now = crate::now();
    if !find(s, TO_BACKEND, now) {
        return Err(Counter::DropFragmentOrphan);
    }
    let id = s.frag_entry.backend_id;
    let backend = select::backend(id).ok_or(Counter::DropNoBackend)?;
    if !backend.keeps_flows_of(id) {
        return Err(Counter::DropNoBackend);
    }
    let settings = SETTINGS.get(0).ok_or(Counter::DropInternal)?;
    // The flow's ports, for whatever reads them on the way out.
    s.l4.src_port = s.frag_entry.src_port;
    s.l4.dst_port = s.frag_entry.dst_port;
    let index = backend_index(id);
    stats::count_traffic(u32::from(backend.vip_id), index, pkt.len(), false);
    let generation = settings.next_hop_generation;
    if backend.forwarding == forwarding::DSR_L2 {
        // Switched like its first fragment: the IP header stays as the client sent it.
        return Ok(fwd::to_backend::<true>(pkt, s, index, generation, now));
    }
    if backend.forwarding == forwarding::IPIP {
        // Encapsulated like its first fragment, with the same outer source (the flow's hash).
        conntrack::set_packet_key(&mut s.key, &s.l3, &s.l4);
        return Ok(fwd::ipip_to_backend(pkt, s, index, settings, now));
    }
    nat::rewrite_address(pkt, &s.l3, Side::Dst, &backend.addr)?;
    Ok(fwd::to_backend::<false>(pkt, s, index, generation, now))
}

/// A later fragment from a backend address: translated to come from the VIP, as its first
/// fragment was, if it was; passed untouched otherwise (not ours to judge).
///
/// Not inlined, like [`later_to_vip`].
#[inline(never)]
pub fn later_from_backend(pkt: &mut Packet, s: &mut Scratch) -> Counter {
    match to_client(pkt, s) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

#[inline(always)]
fn to_client(pkt: &mut Packet, s: &mut Scratch) -> Result<Counter, Counter> {
    if !vip::may_be_from_backend(&s.l3) || ttl_problem(s.l3.ttl).is_some() {
        return Err(Counter::PassNonVip);
    }
    let now = crate::now();
    if !find(s, TO_CLIENT, now) {
        return Err(Counter::PassNonVip);
    }
    let settings = SETTINGS.get(0).ok_or(Counter::DropInternal)?;
    let index = backend_index(s.frag_entry.backend_id);
    // As for the first fragment (`main::translate_reply`): replies come from where the
    // backend is.
    let egress = fwd::backend_ifindex(pkt, &s.l3, index, settings.next_hop_generation, now);
    if egress != 0 && egress != pkt.ingress_ifindex {
        return Err(Counter::DropSpoofedReply);
    }
    stats::count_traffic(s.frag_entry.vip_id, index, pkt.len(), false);
    nat::rewrite_address(pkt, &s.l3, Side::Src, &s.frag_entry.addr)?;
    let outcome = fwd::forward(pkt, &s.l3, Direction::ToClient);
    if outcome == Counter::PassReplyTooBig {
        // As for a whole reply: the kernel's too-big answer must be about the backend's own
        // packet.
        nat::restore_address(pkt, &s.l3, Side::Src, &s.frag_entry.addr)?;
    }
    Ok(outcome)
}
