//! IP-in-IP encapsulation (`ipip` forwarding): the outer header's fields, as pure functions.
//!
//! An IPv4 VIP's packet goes inside an outer IPv4 header (protocol 4), an IPv6 VIP's inside an
//! outer IPv6 header (next header 41). The outer destination is the backend; the outer source
//! is a configured prefix whose low bits come from the flow's hash (Katran's technique), so
//! that a backend's NIC, hashing the outer addresses, spreads flows over its receive queues
//! while every packet of one flow keeps one source.

use crate::csum::ChecksumUpdate;

/// Outer IPv4 header length: no options.
pub const IPV4_OUTER_LEN: usize = 20;
/// Outer IPv6 header length: no extension headers.
pub const IPV6_OUTER_LEN: usize = 40;
/// IP protocol number of IPv4 inside IP (RFC 2003).
pub const PROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6 inside IP (RFC 2473).
pub const PROTO_IPV6: u8 = 41;
/// TTL (hop limit) of the outer header.
pub const OUTER_TTL: u8 = 64;
/// The IPv4 "don't fragment" bit of the flags-and-offset word.
pub const IPV4_DF: u16 = 0x4000;
/// Most low bits of the outer source taken from the flow hash (the last two bytes).
pub const MAX_SOURCE_BITS: u8 = 16;

/// The outer header's length for a packet of the family (`v6`).
#[inline(always)]
pub const fn outer_len(v6: bool) -> usize {
    if v6 { IPV6_OUTER_LEN } else { IPV4_OUTER_LEN }
}

/// The last two bytes of the outer source address: `prefix_low` (the configured prefix's last
/// two bytes) with its low `bits` (at most [`MAX_SOURCE_BITS`]) replaced by the hash's.
#[inline(always)]
pub const fn source_low_bytes(prefix_low: [u8; 2], bits: u8, hash: u32) -> [u8; 2] {
    let bits = if bits > MAX_SOURCE_BITS {
        MAX_SOURCE_BITS
    } else {
        bits
    };
    let mask = ((1u32 << bits) - 1) as u16;
    // The hash's high half: jhash mixes it as well as the low one, and the low bits of the flow
    // hash also pick Maglev slots, so the two choices stay independent.
    let varied = (hash >> 16) as u16 ^ hash as u16;
    let low = (u16::from_be_bytes(prefix_low) & !mask) | (varied & mask);
    low.to_be_bytes()
}

/// How many low bits of the outer source vary for a configured prefix of length `len` in the
/// family (`v6`): its host bits, at most [`MAX_SOURCE_BITS`].
#[inline(always)]
pub const fn source_bits(v6: bool, len: u8) -> u8 {
    let max: u8 = if v6 { 128 } else { 32 };
    let host = max - if len > max { max } else { len };
    if host > MAX_SOURCE_BITS {
        MAX_SOURCE_BITS
    } else {
        host
    }
}

/// The IPv6 flow label (20 bits) of the outer header for a flow of hash `hash`.
#[inline(always)]
pub const fn flow_label(hash: u32) -> u32 {
    hash & 0x000F_FFFF
}

/// The first word of an outer IPv6 header: version 6, traffic class `tclass`, flow label from
/// `hash`, as the 4 bytes that go in the packet.
#[inline(always)]
pub const fn ipv6_first_word(tclass: u8, hash: u32) -> [u8; 4] {
    ((6u32 << 28) | ((tclass as u32) << 20) | flow_label(hash)).to_be_bytes()
}

/// The header checksum of an outer IPv4 header (version 4, IHL 5, identification 0, TTL
/// [`OUTER_TTL`], protocol [`PROTO_IPIP`]) with these fields: the one's complement of the
/// one's-complement sum of its ten 16-bit words.
#[inline(always)]
pub const fn ipv4_outer_checksum(
    tos: u8,
    tot_len: u16,
    frags: u16,
    src: &[u8; 4],
    dst: &[u8; 4],
) -> u16 {
    // `new(0xFFFF)` starts from a sum of zero.
    ChecksumUpdate::new(0xFFFF)
        .add_u16(u16::from_be_bytes([0x45, tos]))
        .add_u16(tot_len)
        .add_u16(frags)
        .add_u16(u16::from_be_bytes([OUTER_TTL, PROTO_IPIP]))
        .add_bytes4(src)
        .add_bytes4(dst)
        .into_checksum()
}

/// The flags-and-offset word of the outer IPv4 header for an inner one with `inner_frags`:
/// the inner packet's "don't fragment" bit, nothing else (RFC 2003, 3.1).
#[inline(always)]
pub const fn ipv4_outer_frags(inner_frags: u16) -> u16 {
    inner_frags & IPV4_DF
}

/// Ethernet type of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// Ethernet type of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

/// How many bytes of outer header the decapsulation program (`xdplb decap`) strips from a
/// frame of Ethernet type `ether_type` whose IP header starts with the byte `first`, carries
/// `proto` (IPv4 protocol, IPv6 next header) with the flags-and-offset word `frags` (IPv4;
/// 0 for IPv6), and whose payload starts with the byte `inner_first`: 20 for IPv4 in IPv4
/// (IHL 5, not a fragment), 40 for IPv6 in IPv6 (no extension headers before it), the inner
/// packet's version matching; 0 for anything else, which goes to the stack as it came. Only
/// same-family tunnels: the Ethernet type then stays.
#[inline(always)]
pub const fn decap_len(
    ether_type: u16,
    first: u8,
    proto: u8,
    frags: u16,
    inner_first: u8,
) -> usize {
    if ether_type == ETH_P_IPV4
        && first == 0x45
        && proto == PROTO_IPIP
        && frags & 0x3fff == 0
        && inner_first >> 4 == 4
    {
        IPV4_OUTER_LEN
    } else if ether_type == ETH_P_IPV6
        && first >> 4 == 6
        && proto == PROTO_IPV6
        && inner_first >> 4 == 6
    {
        IPV6_OUTER_LEN
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 the slow way: sum the header's words with end-around carry, with the checksum
    /// field zero, and complement.
    fn reference(header: &[u8; 20]) -> u16 {
        let mut sum: u32 = 0;
        for (i, pair) in header.chunks(2).enumerate() {
            if i == 5 {
                continue;
            }
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            while sum > 0xFFFF {
                sum = (sum & 0xFFFF) + (sum >> 16);
            }
        }
        !(sum as u16)
    }

    fn header(tos: u8, tot_len: u16, frags: u16, src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[1] = tos;
        h[2..4].copy_from_slice(&tot_len.to_be_bytes());
        h[6..8].copy_from_slice(&frags.to_be_bytes());
        h[8] = OUTER_TTL;
        h[9] = PROTO_IPIP;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        h
    }

    proptest! {
        #[test]
        fn outer_checksum_matches_a_full_sum(
            tos: u8, tot_len: u16, df: bool, src: [u8; 4], dst: [u8; 4],
        ) {
            let frags = if df { IPV4_DF } else { 0 };
            let ours = ipv4_outer_checksum(tos, tot_len, frags, &src, &dst);
            let mut h = header(tos, tot_len, frags, src, dst);
            prop_assert_eq!(ours, reference(&h));
            // And the header with it in place sums to all ones.
            h[10..12].copy_from_slice(&ours.to_be_bytes());
            let mut sum: u32 = h.chunks(2).map(|p| u32::from(u16::from_be_bytes([p[0], p[1]]))).sum();
            while sum > 0xFFFF {
                sum = (sum & 0xFFFF) + (sum >> 16);
            }
            prop_assert_eq!(sum, 0xFFFF);
        }

        #[test]
        fn source_keeps_the_prefix_bits(prefix: [u8; 2], bits in 0u8..=20, hash: u32) {
            let low = source_low_bytes(prefix, bits, hash);
            let kept = !(((1u32 << bits.min(16)) - 1) as u16);
            prop_assert_eq!(
                u16::from_be_bytes(low) & kept,
                u16::from_be_bytes(prefix) & kept
            );
        }
    }

    #[test]
    fn sources_spread_over_flows() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..64u32 {
            let hash = crate::hash::jhash2(&[i], 7);
            seen.insert(source_low_bytes([0, 0], 16, hash));
        }
        assert!(seen.len() > 60, "{} distinct sources of 64", seen.len());
        assert_eq!(source_low_bytes([0xab, 0xcd], 0, 0xffff_ffff), [0xab, 0xcd]);
    }

    #[test]
    fn source_bits_are_the_host_bits_up_to_16() {
        assert_eq!(source_bits(false, 16), 16);
        assert_eq!(source_bits(false, 8), 16);
        assert_eq!(source_bits(false, 24), 8);
        assert_eq!(source_bits(false, 32), 0);
        assert_eq!(source_bits(true, 96), 16);
        assert_eq!(source_bits(true, 120), 8);
        assert_eq!(source_bits(true, 128), 0);
        assert_eq!(source_bits(true, 200), 0);
    }

    #[test]
    fn ipv6_first_word_fields() {
        let w = u32::from_be_bytes(ipv6_first_word(0xb8, 0xfff1_2345));
        assert_eq!(w >> 28, 6);
        assert_eq!((w >> 20) & 0xff, 0xb8);
        assert_eq!(w & 0xf_ffff, 0x1_2345);
    }

    #[test]
    fn decap_strips_same_family_tunnels_only() {
        assert_eq!(decap_len(ETH_P_IPV4, 0x45, 4, 0x4000, 0x45), 20);
        assert_eq!(decap_len(ETH_P_IPV6, 0x60, 41, 0, 0x60), 40);
        // Options, fragments, another protocol, a mismatched inner version, 6-in-4, 4-in-6.
        assert_eq!(decap_len(ETH_P_IPV4, 0x46, 4, 0, 0x45), 0);
        assert_eq!(decap_len(ETH_P_IPV4, 0x45, 4, 0x2000, 0x45), 0);
        assert_eq!(decap_len(ETH_P_IPV4, 0x45, 4, 0x0001, 0x45), 0);
        assert_eq!(decap_len(ETH_P_IPV4, 0x45, 6, 0, 0x45), 0);
        assert_eq!(decap_len(ETH_P_IPV4, 0x45, 4, 0, 0x60), 0);
        assert_eq!(decap_len(ETH_P_IPV4, 0x45, 41, 0, 0x60), 0);
        assert_eq!(decap_len(ETH_P_IPV6, 0x60, 4, 0, 0x45), 0);
        assert_eq!(decap_len(0x0806, 0x45, 4, 0, 0x45), 0);
    }

    #[test]
    fn outer_frags_copy_only_df() {
        assert_eq!(ipv4_outer_frags(0x4000), 0x4000);
        assert_eq!(ipv4_outer_frags(0x2000 | 0x0123), 0);
        assert_eq!(ipv4_outer_frags(0x6001), 0x4000);
    }
}
