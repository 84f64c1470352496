//! NAT rewrite decisions: the new TCP/UDP checksum when an address and a port of a flow are
//! replaced, for the three kinds of checksum a packet can carry.
//!
//! A packet handed over by a local stack with transmit checksum offload (veth, and real NICs
//! before the driver) carries a *partial* checksum: the field holds the folded, uncomplemented
//! sum of the pseudo-header only, and whoever transmits completes it over the payload. Such a
//! field changes only with the pseudo-header (addresses, length, protocol), never with ports,
//! and it changes uncomplemented. A *full* checksum changes with both, complemented (RFC 1624).
//! An IPv4 UDP checksum of 0 means "none" and stays 0.

use crate::csum::{ChecksumUpdate, udp_checksum_after};

/// What a TCP/UDP checksum field holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum L4Checksum {
    /// Covers pseudo-header, header and payload.
    Full,
    /// Pseudo-header only, to be completed on transmit.
    Partial,
    /// IPv4 UDP without checksum (0).
    None,
}

/// The folded, uncomplemented one's-complement sum of a TCP/UDP pseudo-header: what a partial
/// checksum field holds. `src`/`dst` are 16 bytes; for IPv4 (`v6` false) the first 4 count.
#[inline(always)]
pub fn pseudo_header_sum(v6: bool, src: &[u8; 16], dst: &[u8; 16], proto: u8, l4_len: u32) -> u16 {
    let start = ChecksumUpdate::new(0xffff); // running sum 0
    let sum = if v6 {
        start.add_bytes16(src).add_bytes16(dst).add_u32(l4_len)
    } else {
        start
            .add_bytes4(&[src[0], src[1], src[2], src[3]])
            .add_bytes4(&[dst[0], dst[1], dst[2], dst[3]])
            .add_u16(l4_len as u16)
    };
    !sum.add_u16(u16::from(proto)).into_checksum()
}

/// Classifies a checksum field, given the packet's [`pseudo_header_sum`].
///
/// A full checksum can equal the pseudo-header sum by chance (about one packet in 65536), so
/// [`L4Checksum::Partial`] here means "partial, or a full one that collides": the caller must
/// then sum the segment and ask [`full_checksum_verifies`] to tell the two apart.
#[inline(always)]
pub fn classify(check: u16, pseudo_sum: u16, is_udp: bool, v6: bool) -> L4Checksum {
    if is_udp && !v6 && check == 0 {
        L4Checksum::None
    } else if check == pseudo_sum {
        L4Checksum::Partial
    } else {
        L4Checksum::Full
    }
}

/// Folds a running one's-complement sum to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The one's-complement sum of an odd-length segment's 16-bit words (the last byte padded with
/// zero), from its first byte and the sum of the big-endian words that start at offset 1.
/// Summing from offset 1 pairs every byte with the other half of a word, which only swaps the
/// bytes of the sum (RFC 1071 §2(B)); the first byte is then the high half of word 0.
#[inline(always)]
pub const fn odd_segment_sum(first_byte: u8, sum_from_offset_1: u16) -> u16 {
    fold(sum_from_offset_1.swap_bytes() as u64 + ((first_byte as u64) << 8))
}

/// True if a segment whose 16-bit words (checksum field included) sum to `segment_sum` carries
/// a full, correct checksum for a pseudo-header summing to `pseudo_sum`: the whole sum is
/// all ones.
#[inline(always)]
pub const fn full_checksum_verifies(pseudo_sum: u16, segment_sum: u16) -> bool {
    fold(pseudo_sum as u64 + segment_sum as u64) == 0xffff
}

/// One address and one port of a flow being replaced.
#[derive(Copy, Clone, Debug)]
pub struct Rewrite<'a> {
    pub v6: bool,
    pub old_addr: &'a [u8; 16],
    pub new_addr: &'a [u8; 16],
    pub old_port: [u8; 2],
    pub new_port: [u8; 2],
}

impl Rewrite<'_> {
    #[inline(always)]
    fn addresses(&self, update: ChecksumUpdate) -> ChecksumUpdate {
        if self.v6 {
            update
                .remove_bytes16(self.old_addr)
                .add_bytes16(self.new_addr)
        } else {
            let (o, n) = (self.old_addr, self.new_addr);
            update
                .remove_bytes4(&[o[0], o[1], o[2], o[3]])
                .add_bytes4(&[n[0], n[1], n[2], n[3]])
        }
    }

    /// The IPv4 header checksum after the address change.
    #[inline(always)]
    pub fn ipv4_header_checksum(&self, old: u16) -> u16 {
        self.addresses(ChecksumUpdate::new(old)).into_checksum()
    }

    /// The TCP/UDP checksum field after the rewrite, for a field of kind `kind`.
    #[inline(always)]
    pub fn l4_checksum(&self, old: u16, kind: L4Checksum, is_udp: bool) -> u16 {
        match kind {
            L4Checksum::None => 0,
            // Uncomplemented: run RFC 1624 on the complement and complement back.
            L4Checksum::Partial => !self.addresses(ChecksumUpdate::new(!old)).into_checksum(),
            L4Checksum::Full => {
                let update = self
                    .addresses(ChecksumUpdate::new(old))
                    .remove_bytes2(&self.old_port)
                    .add_bytes2(&self.new_port);
                if is_udp {
                    udp_checksum_after(old, update)
                } else {
                    update.into_checksum()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Reference: the full checksum of a TCP segment or UDP datagram, summed from scratch.
    fn full(v6: bool, src: &[u8; 16], dst: &[u8; 16], proto: u8, l4: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut add = |bytes: &[u8]| {
            for chunk in bytes.chunks(2) {
                let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
                sum += u32::from(word);
            }
        };
        let n = if v6 { 16 } else { 4 };
        add(&src[..n]);
        add(&dst[..n]);
        add(&[0, proto]);
        if v6 {
            add(&(l4.len() as u32).to_be_bytes());
        } else {
            add(&(l4.len() as u16).to_be_bytes());
        }
        add(l4);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn addr(v6: bool, bytes: [u8; 16]) -> [u8; 16] {
        if v6 {
            bytes
        } else {
            [
                bytes[0], bytes[1], bytes[2], bytes[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]
        }
    }

    proptest! {
        /// Rewriting the destination of a packet with a full checksum gives what summing the
        /// rewritten packet from scratch gives; with a partial one, the partial sum of the
        /// rewritten pseudo-header.
        #[test]
        fn rewrite_matches_recomputation(
            v6: bool, udp: bool,
            src: [u8; 16], dst: [u8; 16], new_dst: [u8; 16],
            sport: u16, dport: u16, new_dport: u16,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (src, dst, new_dst) = (addr(v6, src), addr(v6, dst), addr(v6, new_dst));
            let proto = if udp { 17 } else { 6 };
            let header_len = if udp { 8 } else { 20 };
            let mut l4 = vec![0u8; header_len];
            l4[0..2].copy_from_slice(&sport.to_be_bytes());
            l4[2..4].copy_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&payload);
            let check_at = if udp { 6 } else { 16 };
            let before = full(v6, &src, &dst, proto, &l4);
            let before = if udp && before == 0 { 0xffff } else { before };
            let rewrite = Rewrite {
                v6, old_addr: &dst, new_addr: &new_dst,
                old_port: dport.to_be_bytes(), new_port: new_dport.to_be_bytes(),
            };
            let pseudo = pseudo_header_sum(v6, &src, &dst, proto, l4.len() as u32);
            let kind = classify(before, pseudo, udp, v6);
            let after = rewrite.l4_checksum(before, kind, udp);

            l4[2..4].copy_from_slice(&new_dport.to_be_bytes());
            if kind == L4Checksum::Full {
                l4[check_at..check_at + 2].copy_from_slice(&after.to_be_bytes());
                // Summing a packet with a correct checksum in place gives 0 (or -0).
                let verify = full(v6, &src, &new_dst, proto, &l4);
                prop_assert!(verify == 0 || verify == 0xffff, "checksum {after:#06x} does not verify");
            }

            // The partial form: what the stack would have put there for the rewritten packet.
            let partial_before = pseudo;
            let partial_after = rewrite.l4_checksum(partial_before, L4Checksum::Partial, udp);
            prop_assert_eq!(partial_after, pseudo_header_sum(v6, &src, &new_dst, proto, l4.len() as u32));
            prop_assert_eq!(classify(partial_before, pseudo, udp, v6), L4Checksum::Partial);
        }

        #[test]
        fn ipv4_header_checksum_follows_the_address(old: [u8; 4], new: [u8; 4], rest: [u8; 12]) {
            let header = |a: [u8; 4]| {
                let mut h = [0u8; 20];
                h[..12].copy_from_slice(&rest);
                h[10] = 0; h[11] = 0;
                h[16..20].copy_from_slice(&a);
                h[0] = 0x45;
                h
            };
            let sum = |h: &[u8; 20]| {
                let mut s: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
                while s > 0xffff { s = (s & 0xffff) + (s >> 16); }
                !(s as u16)
            };
            let (a, b) = (header(old), header(new));
            let mut o16 = [0u8; 16]; o16[..4].copy_from_slice(&old);
            let mut n16 = [0u8; 16]; n16[..4].copy_from_slice(&new);
            let rewrite = Rewrite { v6: false, old_addr: &o16, new_addr: &n16, old_port: [0; 2], new_port: [0; 2] };
            prop_assert_eq!(rewrite.ipv4_header_checksum(sum(&a)), sum(&b));
        }
    }

    proptest! {
        /// A segment with a correct full checksum verifies; the same segment carrying the
        /// partial (pseudo-header) value instead does not, unless the two are equal.
        #[test]
        fn full_checksums_verify_and_partial_ones_do_not(
            src: [u8; 4], dst: [u8; 4], ports: [u8; 4],
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (src, dst) = (addr(false, [src[0], src[1], src[2], src[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), addr(false, [dst[0], dst[1], dst[2], dst[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
            let mut l4 = vec![0u8; 20];
            l4[..4].copy_from_slice(&ports);
            l4.extend_from_slice(&payload);
            let check = full(false, &src, &dst, 6, &l4);
            let pseudo = pseudo_header_sum(false, &src, &dst, 6, l4.len() as u32);
            let words = |seg: &[u8]| fold(seg.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum());
            l4[16..18].copy_from_slice(&check.to_be_bytes());
            prop_assert!(full_checksum_verifies(pseudo, words(&l4)));
            l4[16..18].copy_from_slice(&pseudo.to_be_bytes());
            prop_assert_eq!(full_checksum_verifies(pseudo, words(&l4)), pseudo == check);
        }
    }

    proptest! {
        #[test]
        fn odd_segments_sum_from_offset_one_like_from_zero(
            bytes in proptest::collection::vec(any::<u8>(), 1..200).prop_filter("odd", |b| b.len() % 2 == 1),
        ) {
            let words = |seg: &[u8]| fold(seg.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum());
            prop_assert_eq!(odd_segment_sum(bytes[0], words(&bytes[1..])), words(&bytes));
        }
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let rewrite = Rewrite {
            v6: false,
            old_addr: &a,
            new_addr: &b,
            old_port: [0, 80],
            new_port: [0, 81],
        };
        let kind = classify(0, 0x1234, true, false);
        assert_eq!(kind, L4Checksum::None);
        assert_eq!(rewrite.l4_checksum(0, kind, true), 0);
        // Over IPv6, 0 is not "none".
        assert_ne!(classify(0, 0x1234, true, true), L4Checksum::None);
    }
}
