//! Forwarding a translated packet: the kernel's FIB gives the next hop and the egress
//! interface; the packet leaves by XDP_TX (same interface) or XDP_REDIRECT through the devmap.
//! Anything the FIB cannot answer goes to the kernel, translated, to forward or resolve.
//!
//! Packets to a backend use the next hop this CPU kept for the backend (`NEXT_HOPS`) while it
//! is fresh (`NextHop::is_fresh`: looked up less than a second ago, in the agent's current
//! generation, and the packet fits its MTU), and look it up again otherwise.
//!
//! `dsr-l2` packets keep their IP header as the client sent it (destination the VIP): the next
//! hop is looked up for the backend's address and must be the backend itself (a directly
//! connected route), the TTL is left alone, and only the MACs change. What the program cannot
//! send that way is dropped, never passed: the kernel would route it by the VIP.

use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    bpf_fib_lookup,
};
use lb_common::{
    Counter,
    csum::ChecksumUpdate,
    encap,
    hash::flow_hash,
    icmp::answers_too_big,
    maps::{NextHop, Settings},
};
use network_types::eth::EthHdr;

use core::mem::MaybeUninit;

use crate::{
    maps::{BACKENDS, NEXT_HOPS, Scratch, TX_PORTS},
    parse::{Ipv4Fixed, Ipv6Fixed, L3},
    ptr::{Packet, copy6, copy16, set_v4, zeroed_in_place},
};

/// Sends a packet translated towards backend slot `index` to it: by the next hop this CPU kept
/// for the backend if it is fresh under the agent's `generation` at `now`, else as [`forward`]
/// does, keeping what the FIB answered. A packet too big for the route is answered with ICMP
/// from the VIP: the outcome is then [`Counter::IcmpTooBigTx`], with the route's MTU in
/// `s.too_big_mtu`, and `main` builds the answer (`icmp::too_big`) at the top of the call
/// stack, where its frame fits in the 512 bytes.
///
/// Not inlined, like [`forward`]; with `DSR_L2`, the packet is sent as `dsr-l2` (see the
/// module comment), a separate BPF function.
#[inline(never)]
pub fn to_backend<const DSR_L2: bool>(
    pkt: &mut Packet,
    s: &mut Scratch,
    index: u32,
    generation: u32,
    now: u64,
) -> Counter {
    let outcome = send_to_backend(pkt, s, index, generation, now, DSR_L2);
    if DSR_L2 {
        outcome.for_dsr_l2()
    } else {
        outcome
    }
}

#[inline(always)]
fn send_to_backend(
    pkt: &mut Packet,
    s: &mut Scratch,
    index: u32,
    generation: u32,
    now: u64,
    dsr_l2: bool,
) -> Counter {
    let (l3, too_big_mtu) = (&s.l3, &mut s.too_big_mtu);
    if l3.vlan {
        return Counter::PassFib;
    }
    let Some(hop) = NEXT_HOPS.get_ptr_mut(index) else {
        return Counter::DropInternal;
    };
    // SAFETY: this CPU's element of a per-CPU array; XDP runs with preemption disabled, so
    // only this run uses it until it returns.
    let hop = unsafe { &mut *hop };
    let Some((len, hop_limit)) = ip_len_and_hop_limit(pkt, l3) else {
        return Counter::PassFib;
    };
    if !hop.is_fresh(generation, now, len) {
        let keep = Keep {
            hop,
            generation,
            now,
        };
        let to = if dsr_l2 {
            let Some(backend) = BACKENDS.get(index) else {
                return Counter::DropInternal;
            };
            Some(&backend.addr)
        } else {
            None
        };
        return lookup_and_send(
            pkt,
            l3,
            Direction::ToBackend,
            Some(keep),
            Some(too_big_mtu),
            to,
        );
    }
    if dsr_l2 {
        // Switched, not routed: the IP header stays as the client sent it.
        if !set_macs(pkt, &hop.dmac, &hop.smac) {
            return Counter::PassFib;
        }
    } else {
        // The kernel answers an expiring packet with ICMP time exceeded.
        if hop_limit <= 1 {
            return Counter::PassFib;
        }
        if !decrement_hop_limit(pkt, l3) || !set_macs(pkt, &hop.dmac, &hop.smac) {
            return Counter::PassFib;
        }
    }
    if hop.ifindex == pkt.ingress_ifindex {
        return Counter::FwdTx;
    }
    // The egress was in `TX_PORTS` when the hop was kept, and the agent starts a new generation
    // when it changes `TX_PORTS`; a packet that races that change, with its MACs already
    // rewritten, would be dropped by the kernel too.
    match TX_PORTS.redirect(hop.ifindex, 0) {
        Ok(_) => Counter::FwdRedirect,
        Err(_) => Counter::DropInternal,
    }
}

/// The interface that leads to backend slot `index`, whose address is the source of the reply
/// `l3`: from the next hop this CPU kept for the backend while it is fresh, else from a FIB
/// lookup towards the backend (kept when complete). 0 if the FIB cannot tell (no route,
/// forwarding off): the caller then has nothing to check against.
///
/// Not inlined, so its FIB parameters take stack only while it runs.
#[inline(never)]
pub fn backend_ifindex(pkt: &Packet, l3: &L3, index: u32, generation: u32, now: u64) -> u32 {
    let Some(hop) = NEXT_HOPS.get_ptr_mut(index) else {
        return 0;
    };
    // SAFETY: as in `to_backend`.
    let hop = unsafe { &mut *hop };
    let Some((len, _)) = ip_len_and_hop_limit(pkt, l3) else {
        return 0;
    };
    if hop.is_fresh(generation, now, len) {
        return hop.ifindex;
    }
    let mut params = MaybeUninit::<bpf_fib_lookup>::uninit();
    // As in `lookup_and_send`.
    let params = zeroed_in_place(&mut params);
    params.l4_protocol = l3.proto;
    params.ifindex = pkt.ingress_ifindex;
    params.__bindgen_anon_1.tot_len = len;
    if l3.v6() {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(&l3.dst);
        params.__bindgen_anon_4.ipv6_dst = words(&l3.src);
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = words(&l3.dst)[0];
        params.__bindgen_anon_4.ipv4_dst = words(&l3.src)[0];
    }
    match pkt.fib_lookup(params) as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            keep_answer(hop, params, generation, now);
            params.ifindex
        }
        // The route is known, the neighbour not yet: the egress is still the answer.
        BPF_FIB_LKUP_RET_NO_NEIGH => params.ifindex,
        _ => 0,
    }
}

/// Keeps a successful FIB answer (`params`) as a backend's next hop, of `generation`, at `now`.
#[inline(always)]
fn keep_answer(hop: &mut NextHop, params: &bpf_fib_lookup, generation: u32, now: u64) {
    copy6(&mut hop.dmac, &params.dmac);
    copy6(&mut hop.smac, &params.smac);
    hop.ifindex = params.ifindex;
    // SAFETY: a union of two `u16`s; after a successful lookup the kernel has set
    // `mtu_result` (the route's MTU).
    hop.mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    hop.generation = generation;
    hop.looked_up_ns = now;
}

/// Where to keep the answer of a next-hop lookup for a backend.
struct Keep<'a> {
    hop: &'a mut NextHop,
    generation: u32,
    now: u64,
}

/// The IP length (header included) and the TTL or hop limit of the packet.
#[inline(always)]
fn ip_len_and_hop_limit(pkt: &Packet, l3: &L3) -> Option<(u16, u8)> {
    if l3.v6() {
        let ip = pkt.ref_at::<Ipv6Fixed>(l3.l3_off)?;
        Some((
            u16::from_be_bytes(ip.payload_len).saturating_add(40),
            ip.hop_limit,
        ))
    } else {
        let ip = pkt.ref_at::<Ipv4Fixed>(l3.l3_off)?;
        Some((u16::from_be_bytes(ip.tot_len), ip.ttl))
    }
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Which way a translated packet goes.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Direction {
    /// Client to backend.
    ToBackend,
    /// Backend to client.
    ToClient,
    /// An ICMP error about a VIP's reply, to the flow's backend.
    IcmpToBackend,
    /// An ICMP error about a client's packet, to the client.
    IcmpToClient,
}

/// Sends the translated packet towards its (new) destination. Returns the `*Tx` or
/// `*Redirect` outcome of `direction` when the program transmits it, a `Pass*` one otherwise.
///
/// Not inlined, so its FIB parameters take stack only while it runs.
#[inline(never)]
pub fn forward(pkt: &mut Packet, l3: &L3, direction: Direction) -> Counter {
    lookup_and_send(pkt, l3, direction, None, None, None)
}

/// [`forward`], keeping a successful answer in `keep`; with `too_big_mtu`, a packet too big for
/// the route is left to `main` to answer (see [`to_backend`]). With `l2_to`, the packet is a
/// `dsr-l2` one for the backend at that address: the route is looked up to it, must be
/// directly connected (the kernel names no gateway), and the IP header is left untouched.
#[inline(always)]
fn lookup_and_send(
    pkt: &mut Packet,
    l3: &L3,
    direction: Direction,
    keep: Option<Keep<'_>>,
    too_big_mtu: Option<&mut u16>,
    l2_to: Option<&[u8; 16]>,
) -> Counter {
    let (tx, redirect) = match direction {
        Direction::ToBackend => (Counter::FwdTx, Counter::FwdRedirect),
        Direction::ToClient => (Counter::ReplyTx, Counter::ReplyRedirect),
        Direction::IcmpToBackend => (Counter::IcmpToBackendTx, Counter::IcmpToBackendRedirect),
        Direction::IcmpToClient => (Counter::IcmpToClientTx, Counter::IcmpToClientRedirect),
    };
    // Tagged frames would need the egress VLAN worked out: the kernel does that.
    if l3.vlan {
        return Counter::PassFib;
    }
    let mut params = MaybeUninit::<bpf_fib_lookup>::uninit();
    let Some((params, hop_limit, frags)) = fib_params(pkt, l3, &mut params, l2_to) else {
        return Counter::PassFib;
    };
    // IPv6, or IPv4 with DF: a packet too big for the route is answered, not fragmented.
    let no_fragments = answers_too_big(l3.v6(), frags);

    match pkt.fib_lookup(params) as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Counter::PassNoNeighbour,
        // dsr-l2 without DF: the kernel would fragment it, but route it by the VIP.
        BPF_FIB_LKUP_RET_FRAG_NEEDED if l2_to.is_some() && !no_fragments => {
            return Counter::PassFib;
        }
        // Never handed to the kernel translated: it would answer the client about the backend.
        BPF_FIB_LKUP_RET_FRAG_NEEDED if let Some(out) = too_big_mtu => {
            // SAFETY: a union of two `u16`s; with this answer the kernel has set `mtu_result`.
            *out = unsafe { params.__bindgen_anon_1.mtu_result };
            return Counter::IcmpTooBigTx;
        }
        // A reply the route cannot take whole: `main` puts the backend's addresses back, so the
        // kernel's too-big answer tells the backend about its own packet. One it may fragment
        // goes on translated.
        BPF_FIB_LKUP_RET_FRAG_NEEDED if direction == Direction::ToClient && no_fragments => {
            return Counter::PassReplyTooBig;
        }
        _ => return Counter::PassFib,
    }
    if let Some(to) = l2_to {
        // With a gateway on the route, the kernel put the gateway's address in the
        // destination: a router would send the VIP's packet back, not to the backend.
        // SAFETY: unions of integer arrays and integers, all of them valid.
        let direct = unsafe {
            if l3.v6() {
                params.__bindgen_anon_4.ipv6_dst == words(to)
            } else {
                params.__bindgen_anon_4.ipv4_dst == words(to)[0]
            }
        };
        if !direct {
            return Counter::PassFib;
        }
    } else if hop_limit <= 1 {
        // The kernel answers an expiring packet with ICMP time exceeded.
        return Counter::PassFib;
    }
    let egress = params.ifindex;
    let same_port = egress == pkt.ingress_ifindex;
    if !same_port && TX_PORTS.get_ifindex(egress).is_none() {
        return Counter::PassFib;
    }
    if l2_to.is_none() && !decrement_hop_limit(pkt, l3) {
        return Counter::PassFib;
    }
    if !set_macs(pkt, &params.dmac, &params.smac) {
        return Counter::PassFib;
    }
    if let Some(Keep {
        hop,
        generation,
        now,
    }) = keep
    {
        keep_answer(hop, params, generation, now);
    }
    if same_port {
        return tx;
    }
    match TX_PORTS.redirect(egress, 0) {
        Ok(_) => redirect,
        Err(_) => Counter::PassFib,
    }
}

/// The MTU of the route `l3`'s packet takes when it is too big for it and may not be
/// fragmented (IPv4 with DF, or IPv6); 0 when it fits, may be fragmented, or the FIB has no
/// answer. For packets the program hands the kernel translated (partial checksums): the kernel
/// would answer a too-big one about its translated addresses.
#[inline(never)]
pub fn too_big_for_route(pkt: &Packet, l3: &L3) -> u16 {
    let mut params = MaybeUninit::<bpf_fib_lookup>::uninit();
    let Some((params, _, frags)) = fib_params(pkt, l3, &mut params, None) else {
        return 0;
    };
    if l3.vlan
        || pkt.fib_lookup(params) as u32 != BPF_FIB_LKUP_RET_FRAG_NEEDED
        || !answers_too_big(l3.v6(), frags)
    {
        return 0;
    }
    // SAFETY: a union of two `u16`s; with this answer the kernel has set `mtu_result`.
    unsafe { params.__bindgen_anon_1.mtu_result }
}

/// FIB lookup parameters for the packet `l3` as it is now, in `params` (towards `to` instead
/// of its destination, if given); with its hop limit and (IPv4) flags-and-offset word.
#[inline(always)]
fn fib_params<'a>(
    pkt: &Packet,
    l3: &L3,
    params: &'a mut MaybeUninit<bpf_fib_lookup>,
    to: Option<&[u8; 16]>,
) -> Option<(&'a mut bpf_fib_lookup, u8, u16)> {
    // Not `mem::zeroed()`: that is a call of the byte-at-a-time `memset` (see `ptr::set_v4`).
    // An all-zero `bpf_fib_lookup` (integers, byte arrays and unions of them) is valid.
    let params = zeroed_in_place(params);
    params.l4_protocol = l3.proto;
    params.ifindex = pkt.ingress_ifindex;
    let mut frags = 0;
    let hop_limit = if l3.v6() {
        let ip = pkt.ref_at::<Ipv6Fixed>(l3.l3_off)?;
        params.family = AF_INET6;
        params.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.payload_len).saturating_add(40);
        params.__bindgen_anon_3.ipv6_src = words(&ip.src);
        params.__bindgen_anon_4.ipv6_dst = words(to.unwrap_or(&ip.dst));
        ip.hop_limit
    } else {
        let ip = pkt.ref_at::<Ipv4Fixed>(l3.l3_off)?;
        params.family = AF_INET;
        params.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
        params.__bindgen_anon_2.tos = ip.tos;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
        params.__bindgen_anon_4.ipv4_dst = match to {
            Some(to) => words(to)[0],
            None => u32::from_ne_bytes(ip.dst),
        };
        frags = u16::from_be_bytes(ip.frags);
        ip.ttl
    };
    Some((params, hop_limit, frags))
}

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

#[inline(always)]
fn decrement_hop_limit(pkt: &mut Packet, l3: &L3) -> bool {
    if l3.v6() {
        let Some(ip) = pkt.ref_mut_at::<Ipv6Fixed>(l3.l3_off) else {
            return false;
        };
        ip.hop_limit -= 1;
    } else {
        let Some(ip) = pkt.ref_mut_at::<Ipv4Fixed>(l3.l3_off) else {
            return false;
        };
        let old = u16::from_be_bytes([ip.ttl, ip.proto]);
        ip.ttl -= 1;
        let new = u16::from_be_bytes([ip.ttl, ip.proto]);
        ip.check = ChecksumUpdate::new(u16::from_be_bytes(ip.check))
            .remove_u16(old)
            .add_u16(new)
            .into_checksum()
            .to_be_bytes();
    }
    true
}

#[inline(always)]
fn set_macs(pkt: &mut Packet, dmac: &[u8; 6], smac: &[u8; 6]) -> bool {
    let Some(eth) = pkt.ref_mut_at::<EthHdr>(0) else {
        return false;
    };
    copy6(&mut eth.dst_addr, dmac);
    copy6(&mut eth.src_addr, smac);
    true
}

/// Sends the packet, unchanged, to backend slot `index` inside an outer IP header (`ipip`, see
/// `lb_common::encap`): the outer destination is the backend, the outer source the configured
/// prefix with low bits from the flow's hash (`s.key`), and the route is the one to the
/// backend, by the next hop this CPU kept while it is fresh (as [`to_backend`]), through a
/// router or not. A packet too big for the route once encapsulated is answered with ICMP
/// (`main` builds it, as for [`to_backend`], with the MTU less the outer header in
/// `s.too_big_mtu`) if it may not be fragmented, and dropped if it may: the program does not
/// fragment. Nothing is passed to the kernel unencapsulated (`Counter::for_ipip`).
#[inline(never)]
pub fn ipip_to_backend(
    pkt: &mut Packet,
    s: &mut Scratch,
    index: u32,
    settings: &Settings,
    now: u64,
) -> Counter {
    send_encapsulated(pkt, s, index, settings, now).for_ipip()
}

#[inline(always)]
fn send_encapsulated(
    pkt: &mut Packet,
    s: &mut Scratch,
    index: u32,
    settings: &Settings,
    now: u64,
) -> Counter {
    let l3 = &s.l3;
    // Tagged frames would need the egress VLAN worked out; the IP header must follow Ethernet.
    if l3.vlan || l3.l3_off != EthHdr::LEN {
        return Counter::PassFib;
    }
    let Some(backend) = BACKENDS.get(index) else {
        return Counter::DropInternal;
    };
    let Some(hop) = NEXT_HOPS.get_ptr_mut(index) else {
        return Counter::DropInternal;
    };
    // SAFETY: as in `to_backend`.
    let hop = unsafe { &mut *hop };
    let v6 = l3.v6();
    let hash = flow_hash(&s.key, settings.hash_seed);
    let Some(inner) = inner_fields(pkt, v6) else {
        return Counter::PassFib;
    };
    let Some(outer_len) = inner.len.checked_add(encap::outer_len(v6) as u16) else {
        return Counter::DropIpipTooBig;
    };
    let src = &mut s.outer_src;
    if v6 {
        copy16(src, &settings.ipip_source_v6);
        let low = encap::source_low_bytes([src[14], src[15]], settings.ipip_source_bits_v6, hash);
        src[14] = low[0];
        src[15] = low[1];
    } else {
        let v4 = &settings.ipip_source_v4;
        let low = encap::source_low_bytes([v4[2], v4[3]], settings.ipip_source_bits_v4, hash);
        set_v4(src, &[v4[0], v4[1], low[0], low[1]]);
    }
    let outer = Outer {
        v6,
        hash,
        inner,
        len: outer_len,
    };
    let generation = settings.next_hop_generation;
    if hop.is_fresh(generation, now, outer_len) {
        if !encapsulate(pkt, &outer, &s.outer_src, &backend.addr)
            || !set_macs(pkt, &hop.dmac, &hop.smac)
        {
            return Counter::PassFib;
        }
        if hop.ifindex == pkt.ingress_ifindex {
            return Counter::FwdTx;
        }
        // As in `to_backend`.
        return match TX_PORTS.redirect(hop.ifindex, 0) {
            Ok(_) => Counter::FwdRedirect,
            Err(_) => Counter::DropInternal,
        };
    }
    let mut params = MaybeUninit::<bpf_fib_lookup>::uninit();
    // As in `fib_params`.
    let params = zeroed_in_place(&mut params);
    params.ifindex = pkt.ingress_ifindex;
    params.__bindgen_anon_1.tot_len = outer_len;
    if v6 {
        params.family = AF_INET6;
        params.l4_protocol = encap::PROTO_IPV6;
        params.__bindgen_anon_3.ipv6_src = words(&s.outer_src);
        params.__bindgen_anon_4.ipv6_dst = words(&backend.addr);
    } else {
        params.family = AF_INET;
        params.l4_protocol = encap::PROTO_IPIP;
        params.__bindgen_anon_2.tos = inner.tos;
        params.__bindgen_anon_3.ipv4_src = words(&s.outer_src)[0];
        params.__bindgen_anon_4.ipv4_dst = words(&backend.addr)[0];
    }
    match pkt.fib_lookup(params) as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        // Encapsulated, the kernel resolves the next hop and forwards it by the backend's
        // address.
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            if !encapsulate(pkt, &outer, &s.outer_src, &backend.addr) {
                return Counter::PassFib;
            }
            return Counter::PassNoNeighbour;
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            if !answers_too_big(v6, inner.frags) {
                return Counter::DropIpipTooBig;
            }
            // SAFETY: a union of two `u16`s; with this answer the kernel has set `mtu_result`.
            let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
            s.too_big_mtu = mtu.saturating_sub(encap::outer_len(v6) as u16);
            return Counter::IcmpTooBigTx;
        }
        _ => return Counter::PassFib,
    }
    let egress = params.ifindex;
    let same_port = egress == pkt.ingress_ifindex;
    if !same_port && TX_PORTS.get_ifindex(egress).is_none() {
        return Counter::PassFib;
    }
    if !encapsulate(pkt, &outer, &s.outer_src, &backend.addr)
        || !set_macs(pkt, &params.dmac, &params.smac)
    {
        return Counter::PassFib;
    }
    keep_answer(hop, params, generation, now);
    if same_port {
        return Counter::FwdTx;
    }
    match TX_PORTS.redirect(egress, 0) {
        Ok(_) => Counter::FwdRedirect,
        Err(_) => Counter::PassFib,
    }
}

/// What the outer header takes from the inner one.
#[derive(Copy, Clone)]
struct InnerFields {
    /// IP length, header included.
    len: u16,
    /// IPv4 TOS or IPv6 traffic class.
    tos: u8,
    /// IPv4 flags-and-offset word (0 for IPv6).
    frags: u16,
}

struct Outer {
    v6: bool,
    hash: u32,
    inner: InnerFields,
    /// IP length of the encapsulated packet.
    len: u16,
}

#[inline(always)]
fn inner_fields(pkt: &Packet, v6: bool) -> Option<InnerFields> {
    if v6 {
        let ip = pkt.ref_at::<Ipv6Fixed>(EthHdr::LEN)?;
        Some(InnerFields {
            len: u16::from_be_bytes(ip.payload_len).checked_add(40)?,
            tos: (u16::from_be_bytes([ip.vcf[0], ip.vcf[1]]) >> 4) as u8,
            frags: 0,
        })
    } else {
        let ip = pkt.ref_at::<Ipv4Fixed>(EthHdr::LEN)?;
        Some(InnerFields {
            len: u16::from_be_bytes(ip.tot_len),
            tos: ip.tos,
            frags: u16::from_be_bytes(ip.frags),
        })
    }
}

/// Puts the outer header in front of the IP packet: room made with `bpf_xdp_adjust_head`,
/// Ethernet (its MACs as they were, for the kernel if the packet is passed) moved to the new
/// front, then the header from `src` to `dst`. False if the kernel gave no room.
#[inline(always)]
fn encapsulate(pkt: &mut Packet, outer: &Outer, src: &[u8; 16], dst: &[u8; 16]) -> bool {
    let v6 = outer.v6;
    let room = encap::outer_len(v6);
    if !pkt.adjust_head(-(room as i32)) {
        return false;
    }
    // The old Ethernet header is still there, `room` bytes in: moved to the front a piece at a
    // time, through registers (the stack is short on this path).
    let Some(old) = pkt.ref_at::<EthRaw>(room) else {
        return false;
    };
    let (d0, d1, s0, s1) = (old.dst_hi, old.dst_lo, old.src_hi, old.src_lo);
    let Some(eth) = pkt.ref_mut_at::<EthRaw>(0) else {
        return false;
    };
    eth.dst_hi = d0;
    eth.dst_lo = d1;
    eth.src_hi = s0;
    eth.src_lo = s1;
    eth.ether_type = if v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
    if v6 {
        let Some(ip) = pkt.ref_mut_at::<Ipv6Fixed>(EthHdr::LEN) else {
            return false;
        };
        ip.vcf = encap::ipv6_first_word(outer.inner.tos, outer.hash);
        ip.payload_len = (outer.len - encap::IPV6_OUTER_LEN as u16).to_be_bytes();
        ip.next_hdr = encap::PROTO_IPV6;
        ip.hop_limit = encap::OUTER_TTL;
        copy16(&mut ip.src, src);
        copy16(&mut ip.dst, dst);
    } else {
        let Some(ip) = pkt.ref_mut_at::<Ipv4Fixed>(EthHdr::LEN) else {
            return false;
        };
        let (src4, dst4) = (
            [src[0], src[1], src[2], src[3]],
            [dst[0], dst[1], dst[2], dst[3]],
        );
        let frags = encap::ipv4_outer_frags(outer.inner.frags);
        ip.vihl = 0x45;
        ip.tos = outer.inner.tos;
        ip.tot_len = outer.len.to_be_bytes();
        ip.id = [0; 2];
        ip.frags = frags.to_be_bytes();
        ip.ttl = encap::OUTER_TTL;
        ip.proto = encap::PROTO_IPIP;
        ip.check = encap::ipv4_outer_checksum(outer.inner.tos, outer.len, frags, &src4, &dst4)
            .to_be_bytes();
        ip.src = src4;
        ip.dst = dst4;
    }
    true
}

/// An Ethernet header, as bytes in 4- and 2-byte pieces (moves of those stay inline).
#[repr(C)]
struct EthRaw {
    dst_hi: [u8; 4],
    dst_lo: [u8; 2],
    src_hi: [u8; 4],
    src_lo: [u8; 2],
    ether_type: [u8; 2],
}
