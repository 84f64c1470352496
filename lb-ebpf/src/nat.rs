//! NAT: rewriting one side (address and port) of a packet, with its checksums. The checksum
//! arithmetic is `lb_common::nat`.

use lb_common::{
    Counter,
    flow::PROTO_UDP,
    nat::{L4Checksum, Rewrite, classify, pseudo_header_sum},
};

use crate::{
    parse::{Ipv4Fixed, Ipv6Fixed, L3, L4},
    ptr::Packet,
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
/// Returns the kind of TCP/UDP checksum the packet carries.
#[inline(always)]
pub fn rewrite(
    pkt: &Packet,
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
    let kind = classify(
        l4.check,
        pseudo_header_sum(v6, &l3.src, &l3.dst, l3.proto, l3.l4_len),
        is_udp,
        v6,
    );
    let change = Rewrite {
        v6,
        old_addr,
        new_addr: addr,
        old_port,
        new_port: port,
    };

    if v6 {
        // SAFETY: no other reference into the packet is live while this one is.
        let ip: &mut Ipv6Fixed =
            unsafe { pkt.ref_mut_at(l3.l3_off) }.ok_or(Counter::DropTruncated)?;
        match side {
            Side::Src => ip.src = *addr,
            Side::Dst => ip.dst = *addr,
        }
    } else {
        // SAFETY: as above.
        let ip: &mut Ipv4Fixed =
            unsafe { pkt.ref_mut_at(l3.l3_off) }.ok_or(Counter::DropTruncated)?;
        let new = [addr[0], addr[1], addr[2], addr[3]];
        match side {
            Side::Src => ip.src = new,
            Side::Dst => ip.dst = new,
        }
        ip.check = change
            .ipv4_header_checksum(u16::from_be_bytes(ip.check))
            .to_be_bytes();
    }
    // SAFETY: as above.
    let port_field: &mut [u8; 2] =
        unsafe { pkt.ref_mut_at(l3.l4_off + port_off) }.ok_or(Counter::DropTruncated)?;
    *port_field = port;
    // SAFETY: as above.
    let check: &mut [u8; 2] =
        unsafe { pkt.ref_mut_at(l4.check_off) }.ok_or(Counter::DropTruncated)?;
    *check = change.l4_checksum(l4.check, kind, is_udp).to_be_bytes();
    Ok(kind)
}
