//! ICMP and ICMPv6 decisions: which messages the balancer answers or translates, and the
//! checksum updates of each translation.
//!
//! An ICMP error quotes the packet it is about: its IP header and at least the first 8 bytes
//! of its transport header (the ports). Translating an error about a VIP flow rewrites one
//! address and port of the quoted packet (and so the quoted IPv4 header checksum), sometimes one
//! outer address, and the ICMP checksum, which covers the quoted bytes (and, for ICMPv6, the
//! outer addresses through the pseudo-header). The quoted TCP/UDP checksum, when the quote
//! reaches it, is updated incrementally as well (Katran leaves it): it is what the translated
//! packet would have carried, even though the quote is usually too short to verify it.

use crate::{
    csum::ChecksumUpdate,
    nat::{L4Checksum, Rewrite},
};

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// Code of [`ICMP_DEST_UNREACH`]: fragmentation needed and DF set.
pub const ICMP_FRAG_NEEDED: u8 = 4;

pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Protocol numbers of ICMP and ICMPv6.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// Offset of the quoted IP header from the start of the ICMP header.
pub const QUOTE_OFFSET: usize = 8;

/// Bytes of the original packet a too-big answer quotes: its IP header (IPv4 without options,
/// IPv6 without extension headers) and the first 8 bytes of its transport header (the ports,
/// and the TCP sequence number a stack checks the error against).
#[inline(always)]
pub const fn too_big_quote_len(v6: bool) -> usize {
    if v6 { 40 + 8 } else { 20 + 8 }
}

/// Bytes a too-big answer puts in front of the quote (after the Ethernet header): its own IP
/// header and the ICMP header.
#[inline(always)]
pub const fn too_big_header_len(v6: bool) -> usize {
    if v6 { 40 + 8 } else { 20 + 8 }
}

/// True if a translated packet too big for its route is answered with ICMP: always for IPv6
/// (routers never fragment it), for IPv4 only with DF set (`frags` is the flags and fragment
/// offset word); without DF the kernel fragments it.
#[inline(always)]
pub const fn answers_too_big(v6: bool, frags: u16) -> bool {
    v6 || frags & 0x4000 != 0
}

/// The type, code and the last 4 bytes of the ICMP header of a too-big answer for a route of
/// `mtu` bytes: fragmentation needed (the next-hop MTU in the low 16 bits) or packet too big
/// (the MTU, 32 bits).
#[inline(always)]
pub const fn too_big_header(v6: bool, mtu: u16) -> (u8, u8, [u8; 4]) {
    let m = mtu.to_be_bytes();
    if v6 {
        (ICMPV6_PACKET_TOO_BIG, 0, [0, 0, m[0], m[1]])
    } else {
        (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, [0, 0, m[0], m[1]])
    }
}

/// What the balancer does with an ICMP message, by its type.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An echo request: answered if it is to a VIP address and echo answers are on.
    EchoRequest,
    /// An error quoting a packet (unreachable, fragmentation needed or packet too big, time
    /// exceeded): translated if the quoted packet belongs to a VIP flow.
    Error,
    /// Anything else: the kernel's.
    Other,
}

/// The [`Kind`] of an ICMP (`v6` false) or ICMPv6 message of type `icmp_type`.
#[inline(always)]
pub const fn kind(v6: bool, icmp_type: u8) -> Kind {
    match (v6, icmp_type) {
        (false, ICMP_ECHO_REQUEST) | (true, ICMPV6_ECHO_REQUEST) => Kind::EchoRequest,
        (false, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED)
        | (true, ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED) => Kind::Error,
        _ => Kind::Other,
    }
}

/// The checksum of the echo reply made from an echo request by turning its type into the
/// reply's and swapping its addresses (which changes no sum, ICMPv6's pseudo-header included).
/// `type_code` is the request's first word (type and code), `old` its checksum.
#[inline(always)]
pub const fn echo_reply_checksum(v6: bool, type_code: u16, old: u16) -> u16 {
    let reply = if v6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    ChecksumUpdate::new(old)
        .remove_u16(type_code)
        .add_u16(((reply as u16) << 8) | (type_code & 0xff))
        .into_checksum()
}

/// Removes `old` and adds `new`: IPv4 addresses in the first 4 of 16 bytes.
#[inline(always)]
const fn replace_addr(
    update: ChecksumUpdate,
    v6: bool,
    old: &[u8; 16],
    new: &[u8; 16],
) -> ChecksumUpdate {
    if v6 {
        update.remove_bytes16(old).add_bytes16(new)
    } else {
        update
            .remove_bytes4(&[old[0], old[1], old[2], old[3]])
            .add_bytes4(&[new[0], new[1], new[2], new[3]])
    }
}

/// One ICMP error being translated: an address and port of the quoted packet replaced, and
/// possibly an outer address.
#[derive(Copy, Clone, Debug)]
pub struct ErrorRewrite<'a> {
    pub v6: bool,
    /// The quoted packet's address being replaced, and its replacement.
    pub quoted_addr: (&'a [u8; 16], &'a [u8; 16]),
    /// The quoted packet's port being replaced, and its replacement.
    pub quoted_port: ([u8; 2], [u8; 2]),
    /// The outer address being replaced and its replacement, if one is.
    pub outer_addr: Option<(&'a [u8; 16], &'a [u8; 16])>,
}

impl ErrorRewrite<'_> {
    /// The quoted IPv4 header's checksum after its address changes.
    #[inline(always)]
    pub fn quoted_ipv4_checksum(&self, old: u16) -> u16 {
        let (from, to) = self.quoted_addr;
        replace_addr(ChecksumUpdate::new(old), false, from, to).into_checksum()
    }

    /// The outer IPv4 header's checksum after its address change (if any).
    #[inline(always)]
    pub fn outer_ipv4_checksum(&self, old: u16) -> u16 {
        match self.outer_addr {
            Some((from, to)) => {
                replace_addr(ChecksumUpdate::new(old), false, from, to).into_checksum()
            }
            None => old,
        }
    }

    /// The quoted TCP (`is_udp` false) or UDP checksum after the rewrite. A quoted packet was
    /// on the wire, so its checksum is a full one (or an IPv4 UDP 0, which stays 0).
    #[inline(always)]
    pub fn quoted_l4_checksum(&self, old: u16, is_udp: bool) -> u16 {
        let (old_addr, new_addr) = self.quoted_addr;
        let (old_port, new_port) = self.quoted_port;
        let kind = if is_udp && !self.v6 && old == 0 {
            L4Checksum::None
        } else {
            L4Checksum::Full
        };
        Rewrite {
            v6: self.v6,
            old_addr,
            new_addr,
            old_port,
            new_port,
        }
        .l4_checksum(old, kind, is_udp)
    }

    /// The ICMP (ICMPv6) checksum after the rewrite, from the old one `old`; for IPv4 the
    /// quoted header's checksum before and after (`quoted_ipv4_checksum`; ignored for IPv6);
    /// and the quoted TCP/UDP checksum before and after, if the quote reaches it.
    #[inline(always)]
    pub fn icmp_checksum(
        &self,
        old: u16,
        quoted_check: (u16, u16),
        quoted_l4_check: Option<(u16, u16)>,
    ) -> u16 {
        let (from, to) = self.quoted_addr;
        let (old_port, new_port) = self.quoted_port;
        let mut update = replace_addr(ChecksumUpdate::new(old), self.v6, from, to)
            .remove_bytes2(&old_port)
            .add_bytes2(&new_port);
        if self.v6 {
            // The pseudo-header's addresses are the outer ones.
            if let Some((from, to)) = self.outer_addr {
                update = update.remove_bytes16(from).add_bytes16(to);
            }
        } else {
            update = update.remove_u16(quoted_check.0).add_u16(quoted_check.1);
        }
        if let Some((before, after)) = quoted_l4_check {
            update = update.remove_u16(before).add_u16(after);
        }
        update.into_checksum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sum(bytes: &[u8]) -> u16 {
        let mut sum: u64 = bytes
            .chunks(2)
            .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// The checksum of an ICMP (`v6` false) or ICMPv6 message, its checksum field ignored.
    fn icmp_checksum(v6: bool, src: &[u8; 16], dst: &[u8; 16], msg: &[u8]) -> u16 {
        let mut m = msg.to_vec();
        m[2..4].fill(0);
        if v6 {
            let pseudo = [
                &src[..],
                dst,
                &(m.len() as u32).to_be_bytes(),
                &[0, 0, 0, PROTO_ICMPV6],
            ]
            .concat();
            !sum(&[pseudo, m].concat())
        } else {
            !sum(&m)
        }
    }

    fn ipv4_checksum(h: &[u8]) -> u16 {
        let mut h = h.to_vec();
        h[10..12].fill(0);
        !sum(&h)
    }

    fn addr(v6: bool, mut a: [u8; 16]) -> [u8; 16] {
        if !v6 {
            a[4..].fill(0);
        }
        a
    }

    fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn too_big_answers() {
        assert!(answers_too_big(true, 0));
        assert!(answers_too_big(false, 0x4000));
        assert!(!answers_too_big(false, 0));
        assert!(!answers_too_big(false, 0x2000));
        assert_eq!(too_big_header(false, 1280), (3, 4, [0, 0, 5, 0]));
        assert_eq!(too_big_header(true, 1280), (2, 0, [0, 0, 5, 0]));
        assert_eq!(too_big_quote_len(false) + too_big_header_len(false), 56);
        assert_eq!(too_big_quote_len(true) + too_big_header_len(true), 96);
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(false, 8), Kind::EchoRequest);
        assert_eq!(kind(false, 3), Kind::Error);
        assert_eq!(kind(false, 11), Kind::Error);
        assert_eq!(kind(false, 0), Kind::Other);
        assert_eq!(kind(false, 128), Kind::Other);
        assert_eq!(kind(true, 128), Kind::EchoRequest);
        assert_eq!(kind(true, 2), Kind::Error);
        assert_eq!(kind(true, 1), Kind::Error);
        assert_eq!(kind(true, 3), Kind::Error);
        assert_eq!(kind(true, 8), Kind::Other);
        assert_eq!(kind(true, 135), Kind::Other);
    }

    proptest! {
        /// An echo reply's checksum is what summing the reply from scratch gives.
        #[test]
        fn echo_reply_matches_recomputation(
            v6: bool, code: u8, src: [u8; 16], dst: [u8; 16],
            rest in prop::collection::vec(any::<u8>(), 4..64),
        ) {
            let (src, dst) = (addr(v6, src), addr(v6, dst));
            let request = if v6 { ICMPV6_ECHO_REQUEST } else { ICMP_ECHO_REQUEST };
            let mut msg = [&[request, code, 0, 0][..], &rest].concat();
            let old = icmp_checksum(v6, &src, &dst, &msg);
            put(&mut msg, 2, &old.to_be_bytes());
            let new = echo_reply_checksum(v6, u16::from_be_bytes([request, code]), old);
            msg[0] = if v6 { ICMPV6_ECHO_REPLY } else { ICMP_ECHO_REPLY };
            prop_assert_eq!(new, icmp_checksum(v6, &dst, &src, &msg));
        }

        /// Translating an error (a quoted address and port, maybe an outer address) gives
        /// the checksums summing the translated message from scratch gives.
        #[test]
        fn error_rewrite_matches_recomputation(
            v6: bool, icmp_head: [u8; 8],
            outer_src: [u8; 16], outer_dst: [u8; 16], new_outer: [u8; 16],
            quoted_src: [u8; 16], quoted_dst: [u8; 16], new_quoted: [u8; 16],
            ports: [u8; 4], new_port: [u8; 2], ip_fields: [u8; 12],
            rewrite_source: bool, outer_changes: bool, udp: bool,
            udp_no_checksum in prop::bool::weighted(0.1),
            tail in prop::collection::vec(any::<u8>(), 16..64),
        ) {
            let (outer_src, outer_dst, new_outer) =
                (addr(v6, outer_src), addr(v6, outer_dst), addr(v6, new_outer));
            let (quoted_src, quoted_dst, new_quoted) =
                (addr(v6, quoted_src), addr(v6, quoted_dst), addr(v6, new_quoted));
            // The quoted packet: an IP header with random fields, then ports and more.
            let (ip_len, src_at, dst_at) = if v6 { (40, 8, 24) } else { (20, 12, 16) };
            let mut quoted = vec![0u8; ip_len];
            put(&mut quoted, 0, &ip_fields[..8]);
            let n = if v6 { 16 } else { 4 };
            put(&mut quoted, src_at, &quoted_src[..n]);
            put(&mut quoted, dst_at, &quoted_dst[..n]);
            if !v6 {
                quoted[0] = 0x45;
                let c = ipv4_checksum(&quoted);
                put(&mut quoted, 10, &c.to_be_bytes());
            }
            let proto = if udp { 17 } else { 6 };
            quoted[if v6 { 6 } else { 9 }] = proto;
            if !v6 {
                let c = ipv4_checksum(&quoted);
                put(&mut quoted, 10, &c.to_be_bytes());
            }
            // The transport segment, with a correct checksum (the pseudo-header's length is the
            // segment's: the whole of it is quoted here).
            let check_at = if udp { 6 } else { 16 };
            let mut segment = [&ports[..], &tail].concat();
            let l4_check = |seg: &[u8], src: &[u8; 16], dst: &[u8; 16]| -> u16 {
                let mut seg = seg.to_vec();
                seg[check_at..check_at + 2].fill(0);
                let len = seg.len();
                let pseudo = if v6 {
                    [&src[..], dst, &(len as u32).to_be_bytes(), &[0, 0, 0, proto]].concat()
                } else {
                    [&src[..4], &dst[..4], &[0, proto], &(len as u16).to_be_bytes()].concat()
                };
                match !sum(&[pseudo, seg].concat()) {
                    0 if udp => 0xffff,
                    c => c,
                }
            };
            let no_checksum = udp && !v6 && udp_no_checksum;
            let c = if no_checksum { 0 } else { l4_check(&segment, &quoted_src, &quoted_dst) };
            put(&mut segment, check_at, &c.to_be_bytes());
            quoted.extend_from_slice(&segment);
            let mut msg = [&icmp_head[..], &quoted].concat();
            let old_icmp = icmp_checksum(v6, &outer_src, &outer_dst, &msg);
            put(&mut msg, 2, &old_icmp.to_be_bytes());

            let (addr_at, port_at, old_addr) = if rewrite_source {
                (src_at, 0, quoted_src)
            } else {
                (dst_at, 2, quoted_dst)
            };
            let old_port = [ports[port_at], ports[port_at + 1]];
            let rewrite = ErrorRewrite {
                v6,
                quoted_addr: (&old_addr, &new_quoted),
                quoted_port: (old_port, new_port),
                outer_addr: outer_changes.then_some((&outer_dst, &new_outer)),
            };
            // Apply it.
            let base = QUOTE_OFFSET;
            put(&mut msg, base + addr_at, &new_quoted[..n]);
            put(&mut msg, base + ip_len + port_at, &new_port);
            let old_quoted_check = u16::from_be_bytes([msg[base + 10], msg[base + 11]]);
            let new_quoted_check = rewrite.quoted_ipv4_checksum(old_quoted_check);
            if !v6 {
                put(&mut msg, base + 10, &new_quoted_check.to_be_bytes());
                prop_assert_eq!(new_quoted_check, ipv4_checksum(&msg[base..base + 20]));
            }
            let l4_at = base + ip_len + check_at;
            let old_l4 = u16::from_be_bytes([msg[l4_at], msg[l4_at + 1]]);
            let new_l4 = rewrite.quoted_l4_checksum(old_l4, udp);
            put(&mut msg, l4_at, &new_l4.to_be_bytes());
            let (new_src, new_dst) = if rewrite_source {
                (new_quoted, quoted_dst)
            } else {
                (quoted_src, new_quoted)
            };
            let want_l4 = if no_checksum {
                0
            } else {
                l4_check(&msg[base + ip_len..], &new_src, &new_dst)
            };
            prop_assert_eq!(new_l4, want_l4);
            let new_dst = if outer_changes { new_outer } else { outer_dst };
            prop_assert_eq!(
                rewrite.icmp_checksum(
                    old_icmp,
                    (old_quoted_check, new_quoted_check),
                    Some((old_l4, new_l4)),
                ),
                icmp_checksum(v6, &outer_src, &new_dst, &msg)
            );
            if !v6 {
                let mut outer = [0u8; 20];
                outer[0] = 0x45;
                put(&mut outer, 1, &ip_fields[..8]);
                put(&mut outer, 12, &outer_src[..4]);
                put(&mut outer, 16, &outer_dst[..4]);
                let old = ipv4_checksum(&outer);
                put(&mut outer, 16, &new_dst[..4]);
                prop_assert_eq!(rewrite.outer_ipv4_checksum(old), ipv4_checksum(&outer));
            }
        }
    }
}
