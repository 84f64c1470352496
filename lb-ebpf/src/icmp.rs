//! ICMP and ICMPv6: echo requests to a VIP address answered from the VIP, and errors about a
//! VIP flow translated both ways (decisions and checksums: `lb_common::icmp`; the quoted
//! TCP/UDP checksum is updated too when the quote reaches it).
//!
//! - An error from the internet about a VIP's reply (outer destination the VIP, quoting
//!   VIP:port → client:port) goes to the flow's backend: the outer destination and the quoted
//!   source become the backend's. A `dsr-l2` backend holds the VIP and sent that reply itself:
//!   the error reaches it unchanged, with the backend's MAC, as the flow's packets do.
//! - An error from the backend side about a client's packet (quoting client:port →
//!   backend:port) goes to the client naming the VIP: the quoted destination becomes VIP:port
//!   (found as replies find it), and the outer source too if it is the backend itself.
//!
//! Every other ICMP message is the kernel's.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::maps::{backend_index, forwarding};
use lb_common::{
    Counter,
    csum::ChecksumUpdate,
    flow::{PROTO_TCP, PROTO_UDP},
    frag::FRAG_NONE,
    icmp::{
        ErrorRewrite, Kind, PROTO_ICMP, PROTO_ICMPV6, QUOTE_OFFSET, answers_too_big,
        echo_reply_checksum, kind, too_big_header, too_big_header_len, too_big_quote_len,
    },
};
use network_types::eth::EthHdr;

use crate::{
    conntrack::{BY_OWNER, is_tracked, reply_translation, set_key, tracked_backend_id},
    fwd::{self, Direction},
    maps::{Quoted, SETTINGS, Scratch},
    parse::{Ipv4Fixed, Ipv6Fixed, L3},
    ptr::{Packet, copy16, set_v4},
    select, vip,
};

/// The ICMP header: type, code, checksum and the 4 bytes that depend on the type.
#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: [u8; 2],
    rest: [u8; 4],
}

/// True if the packet is ICMP (IPv4) or ICMPv6 (IPv6): [`handle`] decides its outcome.
#[inline(always)]
pub fn is_icmp(l3: &L3) -> bool {
    l3.proto == if l3.v6() { PROTO_ICMPV6 } else { PROTO_ICMP }
}

/// The outcome of an ICMP or ICMPv6 packet.
///
/// Not inlined: an alternative to the TCP/UDP paths, with a stack frame of its own.
#[inline(never)]
pub fn handle(pkt: &mut Packet, s: &mut Scratch) -> Counter {
    // Fragments and IPv4 options: the kernel's, like everything not to a VIP.
    if s.l3.problem.is_some() {
        return Counter::PassNonVip;
    }
    let Some(hdr) = pkt.ref_at::<IcmpHdr>(s.l3.l4_off) else {
        return Counter::PassNonVip;
    };
    match kind(s.l3.v6(), hdr.kind) {
        Kind::EchoRequest => echo(pkt, &s.l3),
        Kind::Error => error(pkt, s),
        Kind::Other => Counter::PassNonVip,
    }
}

/// An echo request: answered from the VIP address it was sent to, back out of the interface
/// it came in on, if echo answers are on; the kernel's otherwise.
#[inline(always)]
fn echo(pkt: &mut Packet, l3: &L3) -> Counter {
    if !vip::may_be_vip_addr(l3) || !vip::has_vips(&l3.dst, l3.family) {
        return Counter::PassNonVip;
    }
    match SETTINGS.get(0) {
        Some(settings) if settings.icmp_echo != 0 => {}
        _ => return Counter::PassNonVip,
    }
    // Swapping the addresses changes neither the IPv4 header checksum nor the ICMPv6
    // pseudo-header's sum: only the type changes what the checksum covers.
    if l3.v6() {
        let Some(ip) = pkt.ref_mut_at::<Ipv6Fixed>(l3.l3_off) else {
            return Counter::PassNonVip;
        };
        let (src, dst) = (ip.src.as_chunks_mut::<8>().0, ip.dst.as_chunks_mut::<8>().0);
        core::mem::swap(&mut src[0], &mut dst[0]);
        core::mem::swap(&mut src[1], &mut dst[1]);
    } else {
        let Some(ip) = pkt.ref_mut_at::<Ipv4Fixed>(l3.l3_off) else {
            return Counter::PassNonVip;
        };
        core::mem::swap(&mut ip.src, &mut ip.dst);
    }
    let Some(hdr) = pkt.ref_mut_at::<IcmpHdr>(l3.l4_off) else {
        return Counter::PassNonVip;
    };
    let type_code = u16::from_be_bytes([hdr.kind, hdr.code]);
    let check = echo_reply_checksum(l3.v6(), type_code, u16::from_be_bytes(hdr.check));
    hdr.kind = if l3.v6() {
        lb_common::icmp::ICMPV6_ECHO_REPLY
    } else {
        lb_common::icmp::ICMP_ECHO_REPLY
    };
    hdr.check = check.to_be_bytes();
    let Some(eth) = pkt.ref_mut_at::<EthHdr>(0) else {
        return Counter::PassNonVip;
    };
    // Byte by byte: a whole 6-byte move is a `memmove` call (see `ptr`).
    for i in 0..6 {
        core::mem::swap(&mut eth.src_addr[i], &mut eth.dst_addr[i]);
    }
    Counter::IcmpEchoTx
}

/// Reads the packet an error quotes into `q`: false unless it is a TCP or UDP packet whose IP
/// header (IPv4 without options; IPv6 without extension headers) and ports are there.
#[inline(always)]
fn read_quote(pkt: &Packet, l3: &L3, q: &mut Quoted) -> bool {
    q.ip_off = l3.l4_off + QUOTE_OFFSET;
    if l3.v6() {
        let Some(ip) = pkt.ref_at::<Ipv6Fixed>(q.ip_off) else {
            return false;
        };
        q.proto = ip.next_hdr;
        copy16(&mut q.src, &ip.src);
        copy16(&mut q.dst, &ip.dst);
        q.l4_off = q.ip_off + 40;
    } else {
        let Some(ip) = pkt.ref_at::<Ipv4Fixed>(q.ip_off) else {
            return false;
        };
        if ip.vihl != 0x45 {
            return false;
        }
        q.proto = ip.proto;
        set_v4(&mut q.src, &ip.src);
        set_v4(&mut q.dst, &ip.dst);
        q.l4_off = q.ip_off + 20;
    }
    if q.proto != PROTO_TCP && q.proto != PROTO_UDP {
        return false;
    }
    let Some(ports) = pkt.ref_at::<[[u8; 2]; 2]>(q.l4_off) else {
        return false;
    };
    q.src_port = ports[0];
    q.dst_port = ports[1];
    true
}

/// An ICMP error: translated if it is about a VIP flow, the kernel's otherwise.
#[inline(always)]
fn error(pkt: &mut Packet, s: &mut Scratch) -> Counter {
    if !read_quote(pkt, &s.l3, &mut s.quoted) {
        return Counter::PassNonVip;
    }
    if vip::may_be_vip_addr(&s.l3)
        && let Some(outcome) = to_backend(pkt, s)
    {
        return outcome;
    }
    if vip::may_be_backend_addr(&s.quoted.dst) {
        return to_client(pkt, s);
    }
    Counter::PassNonVip
}

/// An error about a VIP's reply (quoting VIP:port → client:port), to the flow's backend; `None`
/// if the quoted packet is of no tracked flow.
#[inline(always)]
fn to_backend(pkt: &mut Packet, s: &mut Scratch) -> Option<Counter> {
    let q = &s.quoted;
    set_key(
        &mut s.key,
        (&q.dst, q.dst_port),
        (&q.src, q.src_port),
        (q.proto, s.l3.family),
    );
    let id = tracked_backend_id(&s.key)?;
    let backend = select::backend(id)?;
    if !backend.keeps_flows_of(id) {
        return None;
    }
    if backend.forwarding == forwarding::DSR_L2 {
        let generation = SETTINGS.get(0)?.next_hop_generation;
        // SAFETY: a BPF helper without arguments or preconditions.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        return Some(
            match fwd::to_backend::<true>(pkt, s, backend_index(id), generation, now) {
                Counter::FwdTx => Counter::IcmpToBackendTx,
                Counter::FwdRedirect => Counter::IcmpToBackendRedirect,
                // No ICMP answers ICMP: an error too big for the backend's link is dropped.
                Counter::IcmpTooBigTx => Counter::DropDsrNoRoute,
                other => other,
            },
        );
    }
    if backend.forwarding == forwarding::IPIP {
        let settings = SETTINGS.get(0)?;
        // SAFETY: a BPF helper without arguments or preconditions.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        // The error as it came, encapsulated; `s.key` is the flow's, so is its outer source.
        return Some(
            match fwd::ipip_to_backend(pkt, s, backend_index(id), settings, now) {
                Counter::FwdTx => Counter::IcmpToBackendTx,
                Counter::FwdRedirect => Counter::IcmpToBackendRedirect,
                // No ICMP answers ICMP.
                Counter::IcmpTooBigTx => Counter::DropIpipTooBig,
                other => other,
            },
        );
    }
    // Port 0 on a backend: the flow kept the port the client asked for (wildcard VIPs).
    let port = if backend.port == [0; 2] {
        q.src_port
    } else {
        backend.port
    };
    let change = ErrorRewrite {
        v6: s.l3.v6(),
        quoted_addr: (&q.src, &backend.addr),
        quoted_port: (q.src_port, port),
        outer_addr: Some((&s.l3.dst, &backend.addr)),
    };
    if !rewrite(pkt, &s.l3, q, &change, QuotedSide::Src, OuterSide::Dst) {
        return Some(Counter::PassNonVip);
    }
    Some(fwd::forward(pkt, &s.l3, Direction::IcmpToBackend))
}

/// An error about a client's packet (quoting client:port → backend:port), to the client naming
/// the VIP instead of the backend.
#[inline(always)]
fn to_client(pkt: &mut Packet, s: &mut Scratch) -> Counter {
    let q = &s.quoted;
    // The flow of the backend's replies, and the backend as replies name it.
    set_key(
        &mut s.key,
        (&q.dst, q.dst_port),
        (&q.src, q.src_port),
        (q.proto, s.l3.family),
    );
    copy16(&mut s.source.addr, &q.dst);
    s.source.port = q.dst_port;
    s.source.proto = q.proto;
    s.source.family = s.l3.family;
    let by = reply_translation(&s.key, &s.source, &mut s.reverse);
    if by == 0 {
        return Counter::PassNonVip;
    }
    // As for replies: a shared backend's owner speaks for it only about a tracked flow.
    if by == BY_OWNER {
        set_key(
            &mut s.other,
            (&q.src, q.src_port),
            (&s.reverse.vip_addr, s.reverse.vip_port),
            (q.proto, s.l3.family),
        );
        if !is_tracked(&s.other) {
            return Counter::PassNonVip;
        }
    }
    let from_backend = same16(&s.l3.src, &q.dst);
    let change = ErrorRewrite {
        v6: s.l3.v6(),
        quoted_addr: (&q.dst, &s.reverse.vip_addr),
        quoted_port: (q.dst_port, s.reverse.vip_port),
        outer_addr: from_backend.then_some((&s.l3.src, &s.reverse.vip_addr)),
    };
    let outer = if from_backend {
        OuterSide::Src
    } else {
        OuterSide::None
    };
    if !rewrite(pkt, &s.l3, q, &change, QuotedSide::Dst, outer) {
        return Counter::PassNonVip;
    }
    fwd::forward(pkt, &s.l3, Direction::IcmpToClient)
}

/// `a == b` in two 8-byte compares (an array `==` is a call of `memcmp`).
#[inline(always)]
fn same16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (a.as_chunks::<8>().0, b.as_chunks::<8>().0);
    u64::from_ne_bytes(a[0]) == u64::from_ne_bytes(b[0])
        && u64::from_ne_bytes(a[1]) == u64::from_ne_bytes(b[1])
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum QuotedSide {
    Src,
    Dst,
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum OuterSide {
    Src,
    Dst,
    None,
}

/// Writes `change` into the packet: the quoted address (`quoted` side) and port, the quoted
/// IPv4 header checksum, the outer address (`outer` side) and its IPv4 header checksum, and the
/// ICMP checksum. False if the packet is shorter than its headers said.
#[inline(always)]
fn rewrite(
    pkt: &mut Packet,
    l3: &L3,
    q: &Quoted,
    change: &ErrorRewrite<'_>,
    quoted: QuotedSide,
    outer: OuterSide,
) -> bool {
    let (_, new_addr) = change.quoted_addr;
    let mut quoted_check = (0, 0);
    if l3.v6() {
        let Some(ip) = pkt.ref_mut_at::<Ipv6Fixed>(q.ip_off) else {
            return false;
        };
        match quoted {
            QuotedSide::Src => copy16(&mut ip.src, new_addr),
            QuotedSide::Dst => copy16(&mut ip.dst, new_addr),
        }
    } else {
        let Some(ip) = pkt.ref_mut_at::<Ipv4Fixed>(q.ip_off) else {
            return false;
        };
        let new = [new_addr[0], new_addr[1], new_addr[2], new_addr[3]];
        match quoted {
            QuotedSide::Src => ip.src = new,
            QuotedSide::Dst => ip.dst = new,
        }
        let old = u16::from_be_bytes(ip.check);
        quoted_check = (old, change.quoted_ipv4_checksum(old));
        ip.check = quoted_check.1.to_be_bytes();
    }
    let port_off = match quoted {
        QuotedSide::Src => 0,
        QuotedSide::Dst => 2,
    };
    let Some(port) = pkt.ref_mut_at::<[u8; 2]>(q.l4_off + port_off) else {
        return false;
    };
    *port = change.quoted_port.1;
    // The quoted TCP/UDP checksum, if the quote (as long as the outer IP header says) reaches it.
    let is_udp = q.proto == PROTO_UDP;
    let check_off = q.l4_off + if is_udp { 6 } else { 16 };
    let mut quoted_l4 = None;
    if check_off + 2 <= l3.l4_off + l3.l4_len as usize
        && let Some(field) = pkt.ref_mut_at::<[u8; 2]>(check_off)
    {
        let old = u16::from_be_bytes(*field);
        let new = change.quoted_l4_checksum(old, is_udp);
        *field = new.to_be_bytes();
        quoted_l4 = Some((old, new));
    }

    if let Some((_, new_outer)) = change.outer_addr {
        if l3.v6() {
            let Some(ip) = pkt.ref_mut_at::<Ipv6Fixed>(l3.l3_off) else {
                return false;
            };
            match outer {
                OuterSide::Src => copy16(&mut ip.src, new_outer),
                OuterSide::Dst => copy16(&mut ip.dst, new_outer),
                OuterSide::None => {}
            }
        } else {
            let Some(ip) = pkt.ref_mut_at::<Ipv4Fixed>(l3.l3_off) else {
                return false;
            };
            let new = [new_outer[0], new_outer[1], new_outer[2], new_outer[3]];
            match outer {
                OuterSide::Src => ip.src = new,
                OuterSide::Dst => ip.dst = new,
                OuterSide::None => {}
            }
            ip.check = change
                .outer_ipv4_checksum(u16::from_be_bytes(ip.check))
                .to_be_bytes();
        }
    }
    let Some(hdr) = pkt.ref_mut_at::<IcmpHdr>(l3.l4_off) else {
        return false;
    };
    hdr.check = change
        .icmp_checksum(u16::from_be_bytes(hdr.check), quoted_check, quoted_l4)
        .to_be_bytes();
    true
}

/// Answers a packet to a VIP, already translated for its backend, that is too big for the
/// route there (`mtu`): ICMP fragmentation needed (IPv4 with DF) or packet too big (IPv6) from
/// the VIP to the client, back out of the interface the packet came in on, quoting the packet
/// as the client sent it (its destination put back to the VIP and port in `s`). IPv4 without
/// DF is passed for the kernel to fragment; a packet that cannot be answered is dropped.
///
/// The frame is cut to the quote and grown in front for the new headers; `l3` is still the
/// packet as it arrived (untagged: tagged frames never reach the FIB lookup).
#[inline(never)]
pub fn too_big(pkt: &mut Packet, s: &Scratch) -> Counter {
    if s.l3.frag != FRAG_NONE {
        return fragment_too_big(pkt, &s.l3);
    }
    match answer_too_big(pkt, &s.l3, s.l4.dst_port, s.too_big_mtu) {
        Some(outcome) => outcome,
        // Never handed to the kernel translated: it would answer the client about the backend.
        None => Counter::DropInternal,
    }
}

/// A translated fragment too big for the route to its backend: IPv4 without DF is the
/// kernel's to fragment further, as a whole packet would be; a fragment that may not be
/// fragmented again (IPv6, or IPv4 with DF) is dropped: the answer would quote a fragment.
#[inline(always)]
fn fragment_too_big(pkt: &Packet, l3: &L3) -> Counter {
    if !l3.v6()
        && let Some(ip) = pkt.ref_at::<Ipv4Fixed>(l3.l3_off)
        && !answers_too_big(false, u16::from_be_bytes(ip.frags))
    {
        return Counter::PassFib;
    }
    Counter::DropFragment
}

const ETH_LEN: usize = 14;

#[inline(always)]
fn answer_too_big(pkt: &mut Packet, l3: &L3, vip_port: [u8; 2], mtu: u16) -> Option<Counter> {
    let v6 = l3.v6();
    if l3.l3_off != ETH_LEN || l3.l4_off != ETH_LEN + if v6 { 40 } else { 20 } {
        return None;
    }
    // 1. Put the client's destination back, in place.
    let mut backend = [0u8; 16];
    // The IP length: what the frame is cut from (a frame length would make the compiler
    // subtract a packet pointer from a number, which the verifier refuses).
    let ip_len: i32;
    if v6 {
        let ip = pkt.ref_mut_at::<Ipv6Fixed>(ETH_LEN)?;
        ip_len = i32::from(u16::from_be_bytes(ip.payload_len)) + 40;
        copy16(&mut backend, &ip.dst);
        copy16(&mut ip.dst, &l3.dst);
    } else {
        let ip = pkt.ref_mut_at::<Ipv4Fixed>(ETH_LEN)?;
        if !answers_too_big(false, u16::from_be_bytes(ip.frags)) {
            // Without DF the kernel fragments it.
            return Some(Counter::PassFib);
        }
        ip_len = i32::from(u16::from_be_bytes(ip.tot_len));
        set_v4(&mut backend, &ip.dst);
        ip.dst = [l3.dst[0], l3.dst[1], l3.dst[2], l3.dst[3]];
        let change = ErrorRewrite {
            v6: false,
            quoted_addr: (&backend, &l3.dst),
            quoted_port: ([0; 2], [0; 2]),
            outer_addr: None,
        };
        ip.check = change
            .quoted_ipv4_checksum(u16::from_be_bytes(ip.check))
            .to_be_bytes();
    }
    let l4_off = l3.l4_off;
    let port = pkt.ref_mut_at::<[u8; 2]>(l4_off + 2)?;
    let backend_port = *port;
    *port = vip_port;
    if l3.proto == PROTO_UDP {
        // The UDP checksum is quoted: put back the one the client sent.
        let change = ErrorRewrite {
            v6,
            quoted_addr: (&backend, &l3.dst),
            quoted_port: (backend_port, vip_port),
            outer_addr: None,
        };
        let check = pkt.ref_mut_at::<[u8; 2]>(l4_off + 6)?;
        *check = change
            .quoted_l4_checksum(u16::from_be_bytes(*check), true)
            .to_be_bytes();
    }

    // 2. The MACs, before the new headers cover them.
    let dst_mac = (*pkt.ref_at::<[u8; 4]>(0)?, *pkt.ref_at::<[u8; 2]>(4)?);
    let src_mac = (*pkt.ref_at::<[u8; 4]>(6)?, *pkt.ref_at::<[u8; 2]>(10)?);
    let ether_type = *pkt.ref_at::<[u8; 2]>(12)?;

    // 3. Cut the frame to Ethernet + quote, then make room for the new headers.
    let quote_len = too_big_quote_len(v6);
    let room = too_big_header_len(v6);
    let cut = quote_len as i32 - ip_len;
    if cut >= 0 || !pkt.adjust_tail(cut) || !pkt.adjust_head(-(room as i32)) {
        return Some(Counter::DropInternal);
    }

    // 4. Ethernet back where it came from; IP from the VIP to the client; ICMP.
    *pkt.ref_mut_at::<[u8; 4]>(0)? = src_mac.0;
    *pkt.ref_mut_at::<[u8; 2]>(4)? = src_mac.1;
    *pkt.ref_mut_at::<[u8; 4]>(6)? = dst_mac.0;
    *pkt.ref_mut_at::<[u8; 2]>(10)? = dst_mac.1;
    *pkt.ref_mut_at::<[u8; 2]>(12)? = ether_type;
    let icmp_len = (8 + quote_len) as u16;
    let icmp_off = ETH_LEN + room - 8;
    let (kind, code, rest) = too_big_header(v6, mtu);
    let start = if v6 {
        let ip = pkt.ref_mut_at::<Ipv6Fixed>(ETH_LEN)?;
        ip.vcf = [0x60, 0, 0, 0];
        ip.payload_len = icmp_len.to_be_bytes();
        ip.next_hdr = PROTO_ICMPV6;
        ip.hop_limit = 64;
        copy16(&mut ip.src, &l3.dst);
        copy16(&mut ip.dst, &l3.src);
        // The ICMPv6 pseudo-header.
        ChecksumUpdate::new(0xffff)
            .add_bytes16(&l3.dst)
            .add_bytes16(&l3.src)
            .add_u32(u32::from(icmp_len))
            .add_u16(u16::from(PROTO_ICMPV6))
    } else {
        let ip = pkt.ref_mut_at::<Ipv4Fixed>(ETH_LEN)?;
        ip.vihl = 0x45;
        ip.tos = 0;
        ip.tot_len = (20 + icmp_len).to_be_bytes();
        ip.id = [0; 2];
        ip.frags = [0x40, 0];
        ip.ttl = 64;
        ip.proto = PROTO_ICMP;
        ip.check = [0; 2];
        ip.src = [l3.dst[0], l3.dst[1], l3.dst[2], l3.dst[3]];
        ip.dst = [l3.src[0], l3.src[1], l3.src[2], l3.src[3]];
        let check = sum_words::<10>(pkt, ETH_LEN, ChecksumUpdate::new(0xffff))?.into_checksum();
        pkt.ref_mut_at::<Ipv4Fixed>(ETH_LEN)?.check = check.to_be_bytes();
        ChecksumUpdate::new(0xffff)
    };
    let hdr = pkt.ref_mut_at::<IcmpHdr>(icmp_off)?;
    hdr.kind = kind;
    hdr.code = code;
    hdr.check = [0; 2];
    hdr.rest = rest;
    // Constant offsets and counts in each branch: a count the compiler cannot see through
    // becomes a trip count computed from packet pointers, which the verifier refuses.
    let sum = if v6 {
        sum_words::<28>(pkt, ETH_LEN + 40, start)?
    } else {
        sum_words::<18>(pkt, ETH_LEN + 20, start)?
    };
    let check = sum.into_checksum();
    pkt.ref_mut_at::<IcmpHdr>(icmp_off)?.check = check.to_be_bytes();
    Some(Counter::IcmpTooBigTx)
}

/// `update` with the `N` 16-bit words at `off` added. One bounds check for all of them: a
/// check per word lets the compiler turn the loop's exit into arithmetic on the packet's end
/// pointer, which the verifier refuses.
#[inline(always)]
fn sum_words<const N: usize>(
    pkt: &Packet,
    off: usize,
    mut update: ChecksumUpdate,
) -> Option<ChecksumUpdate> {
    let words = pkt.ref_at::<[[u8; 2]; N]>(off)?;
    for word in words {
        update = update.add_bytes2(word);
    }
    Some(update)
}
