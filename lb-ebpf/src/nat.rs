//! NAT: rewriting one side (address and port) of a packet, with its checksums. The checksum
//! arithmetic is `lb_common::nat`.

use lb_common::{
    Counter,
    flow::PROTO_UDP,
    frag::{FRAG_FIRST, first_fragment_checksum},
    nat::{
        L4Checksum, Rewrite, classify, fold, full_checksum_verifies, odd_segment_sum,
        pseudo_header_sum,
    },
};

use crate::{
    parse::{Ipv4Fixed, Ipv6Fixed, L3, L4},
    ptr::{Packet, copy16},
};

/// Which side of the packet to rewrite.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Side {
    /// Source address and port (the reply direction: backend → VIP).
    Src,
    /// Destination address and port (the request direction: VIP → backend).
    Dst,
}

/// Rewrites `side` to `addr`:`port` and updates the IPv4 header and TCP/UDP checksums.
/// Returns the kind of TCP/UDP checksum the packet carries. A first fragment's checksum covers
/// the whole datagram and is never partial (`lb_common::frag::first_fragment_checksum`): the
/// same incremental update keeps it right.
#[inline(always)]
pub fn rewrite(
    pkt: &mut Packet,
    l3: &L3,
    l4: &L4,
    side: Side,
    addr: &[u8; 16],
    port: [u8; 2],
) -> Result<L4Checksum, Counter> {
    let v6 = l3.v6();
    let is_udp = l3.proto == PROTO_UDP;
    let (old_addr, old_port, port_off) = match side {
        Side::Src => (&l3.src, l4.src_port, 0),
        Side::Dst => (&l3.dst, l4.dst_port, 2),
    };
    let pseudo = pseudo_header_sum(v6, &l3.src, &l3.dst, l3.proto, l3.l4_len);
    let first_fragment = l3.frag == FRAG_FIRST;
    let mut kind = if first_fragment {
        first_fragment_checksum(l4.check, is_udp, v6)
    } else {
        classify(l4.check, pseudo, is_udp, v6)
    };
    // A full checksum may equal the pseudo-header sum by chance: only then, sum the segment.
    if kind == L4Checksum::Partial {
        let sum = segment_sum(pkt, l3);
        if sum != NO_SUM && full_checksum_verifies(pseudo, sum as u16) {
            kind = L4Checksum::Full;
        }
    }
    let change = Rewrite {
        v6,
        old_addr,
        new_addr: addr,
        old_port,
        new_port: port,
    };
    rewrite_ip(pkt, l3, side, addr, &change)?;
    let port_field: &mut [u8; 2] = pkt
        .ref_mut_at(l3.l4_off + port_off)
        .ok_or(Counter::DropTruncated)?;
    *port_field = port;
    let check: &mut [u8; 2] = pkt.ref_mut_at(l4.check_off).ok_or(Counter::DropTruncated)?;
    *check = change.l4_checksum(l4.check, kind, is_udp).to_be_bytes();
    Ok(kind)
}

/// Rewrites the `side` address of a later fragment to `addr`, with the IPv4 header checksum:
/// it carries no transport header, and the datagram's TCP/UDP checksum, in the first
/// fragment, took the change there.
#[inline(always)]
pub fn rewrite_address(
    pkt: &mut Packet,
    l3: &L3,
    side: Side,
    addr: &[u8; 16],
) -> Result<(), Counter> {
    let old_addr = match side {
        Side::Src => &l3.src,
        Side::Dst => &l3.dst,
    };
    let change = Rewrite {
        v6: l3.v6(),
        old_addr,
        new_addr: addr,
        old_port: [0; 2],
        new_port: [0; 2],
    };
    rewrite_ip(pkt, l3, side, addr, &change)
}

/// Undoes a [`rewrite_address`] of `side` to `translated`: the parsed address back, and (IPv4)
/// a header checksum to match.
#[inline(always)]
pub fn restore_address(
    pkt: &mut Packet,
    l3: &L3,
    side: Side,
    translated: &[u8; 16],
) -> Result<(), Counter> {
    let addr = match side {
        Side::Src => &l3.src,
        Side::Dst => &l3.dst,
    };
    let back = Rewrite {
        v6: l3.v6(),
        old_addr: translated,
        new_addr: addr,
        old_port: [0; 2],
        new_port: [0; 2],
    };
    rewrite_ip(pkt, l3, side, addr, &back)
}

/// The address part of a rewrite: the IP header's `side` address and (IPv4) its checksum.
#[inline(always)]
fn rewrite_ip(
    pkt: &mut Packet,
    l3: &L3,
    side: Side,
    addr: &[u8; 16],
    change: &Rewrite,
) -> Result<(), Counter> {
    if l3.v6() {
        let ip: &mut Ipv6Fixed = pkt.ref_mut_at(l3.l3_off).ok_or(Counter::DropTruncated)?;
        match side {
            Side::Src => copy16(&mut ip.src, addr),
            Side::Dst => copy16(&mut ip.dst, addr),
        }
    } else {
        let ip: &mut Ipv4Fixed = pkt.ref_mut_at(l3.l3_off).ok_or(Counter::DropTruncated)?;
        let new = [addr[0], addr[1], addr[2], addr[3]];
        match side {
            Side::Src => ip.src = new,
            Side::Dst => ip.dst = new,
        }
        ip.check = change
            .ipv4_header_checksum(u16::from_be_bytes(ip.check))
            .to_be_bytes();
    }
    Ok(())
}

/// Undoes a [`rewrite`] of `side` to `translated`: the packet gets back the address, port and
/// L4 checksum parsed into `l3` and `l4`, and (IPv4) a header checksum to match. Only for a
/// rewrite that returned [`L4Checksum::Full`] or `None` (the L4 checksum is the parsed one).
#[inline(always)]
pub fn restore(
    pkt: &mut Packet,
    l3: &L3,
    l4: &L4,
    side: Side,
    translated: &[u8; 16],
) -> Result<(), Counter> {
    let (addr, port, port_off) = match side {
        Side::Src => (&l3.src, l4.src_port, 0),
        Side::Dst => (&l3.dst, l4.dst_port, 2),
    };
    if l3.v6() {
        let ip: &mut Ipv6Fixed = pkt.ref_mut_at(l3.l3_off).ok_or(Counter::DropTruncated)?;
        match side {
            Side::Src => copy16(&mut ip.src, addr),
            Side::Dst => copy16(&mut ip.dst, addr),
        }
    } else {
        let ip: &mut Ipv4Fixed = pkt.ref_mut_at(l3.l3_off).ok_or(Counter::DropTruncated)?;
        let back = Rewrite {
            v6: false,
            old_addr: translated,
            new_addr: addr,
            old_port: [0; 2],
            new_port: [0; 2],
        };
        ip.check = back
            .ipv4_header_checksum(u16::from_be_bytes(ip.check))
            .to_be_bytes();
        let old = [addr[0], addr[1], addr[2], addr[3]];
        match side {
            Side::Src => ip.src = old,
            Side::Dst => ip.dst = old,
        }
    }
    let port_field: &mut [u8; 2] = pkt
        .ref_mut_at(l3.l4_off + port_off)
        .ok_or(Counter::DropTruncated)?;
    *port_field = port;
    let check: &mut [u8; 2] = pkt.ref_mut_at(l4.check_off).ok_or(Counter::DropTruncated)?;
    *check = l4.check.to_be_bytes();
    Ok(())
}

/// [`segment_sum`] could not sum the segment.
const NO_SUM: u32 = u32::MAX;

/// Longest segment [`segment_sum`] sums; a longer one whose checksum is ambiguous is taken to
/// be partial.
const MAX_SUMMED_SEGMENT: u32 = 1480;

/// The one's-complement sum of the TCP/UDP segment's 16-bit words (checksum field included,
/// an odd last byte padded with zero), or [`NO_SUM`] if it is longer than
/// [`MAX_SUMMED_SEGMENT`] or cut short. (A BPF function returns one scalar in a register, so no
/// `Option`.)
///
/// An odd-length segment is summed in words from offset 1 (`odd_segment_sum` turns that into
/// the sum from offset 0): the verifier accepts 2-byte reads in the loop, but not the
/// compiler's code for a lone last byte.
///
/// Not inlined: the loop is verified once, and it runs for about one packet in 65536.
#[inline(never)]
fn segment_sum(pkt: &Packet, l3: &L3) -> u32 {
    let len = l3.l4_len;
    // Bound the start on its own: the compiler adds it to the packet pointer outside the loop.
    let start = l3.l4_off;
    if !(2..=MAX_SUMMED_SEGMENT).contains(&len) || start > crate::ptr::MAX_OFFSET {
        return NO_SUM;
    }
    let odd = len % 2 == 1;
    let (base, count) = if odd {
        (start + 1, len - 1)
    } else {
        (start, len)
    };
    let mut sum: u64 = 0;
    for i in 0..MAX_SUMMED_SEGMENT / 2 {
        let at = 2 * i;
        if at + 2 > count {
            break;
        }
        let Some(word) = pkt.ref_at::<[u8; 2]>(base + at as usize) else {
            return NO_SUM;
        };
        sum += u64::from(u16::from_be_bytes(*word));
    }
    if !odd {
        return u32::from(fold(sum));
    }
    let Some(first) = pkt.ref_at::<[u8; 2]>(start) else {
        return NO_SUM;
    };
    u32::from(odd_segment_sum(first[0], fold(sum)))
}
