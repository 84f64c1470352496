//! Incremental Internet-checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`), for
//! rewriting addresses and ports without re-summing the packet.
//!
//! Build a [`ChecksumUpdate`] from the checksum in the header, remove every 16-bit word that
//! changes and add its replacement, then write [`ChecksumUpdate::into_checksum`] back (for UDP,
//! [`udp_checksum_after`]). Words are big-endian, as they sit in the packet. A TCP/UDP checksum
//! covers the pseudo-header, so rewriting an IP address updates it with the same address words
//! as the IPv4 header checksum.
//!
//! Eqn. 3 gives exactly the checksum a full recomputation would (never the other zero), as long
//! as the checksummed data is not all zeros, which a TCP/UDP pseudo-header or IPv4 header never
//! is.

/// A checksum being updated: the running one's-complement sum `~HC + ~m + m' + ...`, kept
/// unfolded in 64 bits (no carry handling per word, no branches) and folded to 16 bits once, by
/// [`into_checksum`](Self::into_checksum). Folding gives the same result as end-around-carry
/// addition of 16-bit words: the same value modulo `0xFFFF`, and zero only if every term is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChecksumUpdate {
    sum: u64,
}

impl ChecksumUpdate {
    /// Starts from the checksum as read from the header (`u16::from_be_bytes`).
    #[inline(always)]
    pub const fn new(old_checksum: u16) -> Self {
        Self {
            sum: !old_checksum as u64,
        }
    }

    /// Adds a 16-bit word.
    #[inline(always)]
    #[must_use]
    pub const fn add_u16(self, word: u16) -> Self {
        Self {
            sum: self.sum.wrapping_add(word as u64),
        }
    }

    /// Removes a 16-bit word that was covered by the checksum.
    #[inline(always)]
    #[must_use]
    pub const fn remove_u16(self, word: u16) -> Self {
        self.add_u16(!word)
    }

    /// Adds a 32-bit value (its two 16-bit words; `hi * 2^16 + lo` equals `hi + lo` modulo
    /// `0xFFFF`).
    #[inline(always)]
    #[must_use]
    pub const fn add_u32(self, value: u32) -> Self {
        Self {
            sum: self.sum.wrapping_add(value as u64),
        }
    }

    /// Removes a 32-bit value (its two 16-bit words).
    #[inline(always)]
    #[must_use]
    pub const fn remove_u32(self, value: u32) -> Self {
        self.add_u32(!value)
    }

    /// Adds two packet bytes (a port), big-endian.
    #[inline(always)]
    #[must_use]
    pub const fn add_bytes2(self, bytes: &[u8; 2]) -> Self {
        self.add_u16(u16::from_be_bytes(*bytes))
    }

    /// Removes two packet bytes (a port), big-endian.
    #[inline(always)]
    #[must_use]
    pub const fn remove_bytes2(self, bytes: &[u8; 2]) -> Self {
        self.remove_u16(u16::from_be_bytes(*bytes))
    }

    /// Adds four packet bytes (an IPv4 address), big-endian.
    #[inline(always)]
    #[must_use]
    pub const fn add_bytes4(self, bytes: &[u8; 4]) -> Self {
        self.add_u32(u32::from_be_bytes(*bytes))
    }

    /// Removes four packet bytes (an IPv4 address), big-endian.
    #[inline(always)]
    #[must_use]
    pub const fn remove_bytes4(self, bytes: &[u8; 4]) -> Self {
        self.remove_u32(u32::from_be_bytes(*bytes))
    }

    /// Adds sixteen packet bytes (an IPv6 address), big-endian.
    #[inline(always)]
    #[must_use]
    pub const fn add_bytes16(self, b: &[u8; 16]) -> Self {
        self.add_bytes4(&[b[0], b[1], b[2], b[3]])
            .add_bytes4(&[b[4], b[5], b[6], b[7]])
            .add_bytes4(&[b[8], b[9], b[10], b[11]])
            .add_bytes4(&[b[12], b[13], b[14], b[15]])
    }

    /// Removes sixteen packet bytes (an IPv6 address), big-endian.
    #[inline(always)]
    #[must_use]
    pub const fn remove_bytes16(self, b: &[u8; 16]) -> Self {
        self.remove_bytes4(&[b[0], b[1], b[2], b[3]])
            .remove_bytes4(&[b[4], b[5], b[6], b[7]])
            .remove_bytes4(&[b[8], b[9], b[10], b[11]])
            .remove_bytes4(&[b[12], b[13], b[14], b[15]])
    }

    /// The updated checksum, to write back with `to_be_bytes` (IPv4 header, TCP, ICMP).
    #[inline(always)]
    pub const fn into_checksum(self) -> u16 {
        let mut sum = (self.sum & 0xffff_ffff) + (self.sum >> 32); // < 2^33
        sum = (sum & 0xffff) + (sum >> 16); // < 2^17 + 2^16
        sum = (sum & 0xffff) + (sum >> 16); // <= 0x10001
        sum = (sum & 0xffff) + (sum >> 16); // <= 0xffff
        !(sum as u16)
    }
}

/// The updated UDP checksum: 0 stays 0 (IPv4 "no checksum"; never valid for IPv6), and a
/// computed 0 is sent as `0xFFFF` (RFC 768). `old` is the checksum `update` started from.
#[inline(always)]
pub const fn udp_checksum_after(old: u16, update: ChecksumUpdate) -> u16 {
    if old == 0 {
        return 0;
    }
    match update.into_checksum() {
        0 => 0xffff,
        checksum => checksum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TCP: u8 = 6;
    const UDP: u8 = 17;

    /// One's-complement sum of big-endian words, odd length padded with a zero byte.
    fn ones_sum(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut sum: u64 = bytes
            .chunks(2)
            .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// The full checksum of a TCP/UDP `segment` (its checksum field ignored) under `pseudo`.
    fn l4_checksum(pseudo: &[u8], proto: u8, segment: &[u8]) -> u16 {
        let mut seg = segment.to_vec();
        let at = checksum_offset(proto);
        seg[at..at + 2].fill(0);
        let checksum = !ones_sum(&[pseudo, &seg]);
        if proto == UDP && checksum == 0 {
            0xffff
        } else {
            checksum
        }
    }

    fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> Vec<u8> {
        [&src[..], &dst, &[0, proto], &(len as u16).to_be_bytes()].concat()
    }

    fn pseudo_v6(src: [u8; 16], dst: [u8; 16], proto: u8, len: usize) -> Vec<u8> {
        [
            &src[..],
            &dst,
            &(len as u32).to_be_bytes(),
            &[0, 0, 0, proto],
        ]
        .concat()
    }

    fn checksum_offset(proto: u8) -> usize {
        if proto == TCP { 16 } else { 6 }
    }

    /// A TCP (20-byte header) or UDP segment with random header fields and payload.
    fn segment(proto: u8, ports: [u8; 4], header: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let mut seg = ports.to_vec();
        if proto == TCP {
            seg.extend_from_slice(&header[..12]); // seq, ack, offset, flags, window
            seg.extend_from_slice(&[0, 0]); // checksum
            seg.extend_from_slice(&header[12..14]); // urgent pointer
        } else {
            seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
        }
        seg.extend_from_slice(payload);
        seg
    }

    fn read_checksum(proto: u8, seg: &[u8]) -> u16 {
        let at = checksum_offset(proto);
        u16::from_be_bytes([seg[at], seg[at + 1]])
    }

    fn write_checksum(proto: u8, seg: &mut [u8], checksum: u16) {
        let at = checksum_offset(proto);
        seg[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
    }

    /// The L4 checksum after an incremental update, with UDP's rules for UDP.
    fn finish(proto: u8, old: u16, update: ChecksumUpdate) -> u16 {
        if proto == UDP {
            udp_checksum_after(old, update)
        } else {
            update.into_checksum()
        }
    }

    fn proto() -> impl Strategy<Value = u8> {
        prop_oneof![Just(TCP), Just(UDP)]
    }

    /// A 20-byte IPv4 header with a valid checksum.
    fn ipv4_header(fields: [u8; 8], proto: u8, src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[1..8].copy_from_slice(&fields[..7]); // tos, total length, id, flags/fragment
        h[8] = fields[7]; // ttl
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let checksum = !ones_sum(&[&h]);
        h[10..12].copy_from_slice(&checksum.to_be_bytes());
        h
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
        let update = ChecksumUpdate::new(0xdd2f)
            .remove_u16(0x5555)
            .add_u16(0x3285);
        assert_eq!(update.into_checksum(), 0x0000);
        assert_eq!(udp_checksum_after(0xdd2f, update), 0xffff);
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        let update = ChecksumUpdate::new(0)
            .remove_bytes4(&[10, 0, 0, 1])
            .add_bytes4(&[10, 0, 0, 2]);
        assert_eq!(udp_checksum_after(0, update), 0);
    }

    #[test]
    fn u32_and_byte_variants_agree() {
        let a = ChecksumUpdate::new(0x1234)
            .remove_u32(0xc0a8_0001)
            .add_u32(0x0a00_0002);
        let b = ChecksumUpdate::new(0x1234)
            .remove_bytes4(&[192, 168, 0, 1])
            .add_bytes4(&[10, 0, 0, 2]);
        let c = ChecksumUpdate::new(0x1234)
            .remove_u16(0xc0a8)
            .remove_u16(0x0001)
            .add_u16(0x0a00)
            .add_u16(0x0002);
        assert_eq!(a, b);
        assert_eq!(a.into_checksum(), c.into_checksum());
        assert_ne!(a.into_checksum(), 0x1234);
    }

    /// RFC 1624 eqn. 3 word by word, with end-around carry after every addition.
    fn eqn3(old: u16, ops: &[(bool, u16)]) -> u16 {
        let mut sum = !old;
        for &(add, word) in ops {
            let term = if add { word } else { !word };
            let (s, carry) = sum.overflowing_add(term);
            sum = s + u16::from(carry);
        }
        !sum
    }

    /// UDP checksums whose computed value is 0 (sent as 0xFFFF), before and after the rewrite.
    #[test]
    fn udp_computed_zero_edges() {
        let (src, dst, new_dst) = ([192, 0, 2, 1], [198, 51, 100, 1], [10, 0, 0, 9]);
        let payload = [0x12, 0x34, 0, 0];
        let at = 8 + 2; // the payload's last word
        for zero_after in [false, true] {
            let mut seg = segment(UDP, [0x30, 0x39, 0, 53], [0; 16], &payload);
            // Choose the payload's last word so the chosen side sums to 0xFFFF.
            let target = if zero_after { new_dst } else { dst };
            let fix = l4_checksum(&pseudo_v4(src, target, UDP, seg.len()), UDP, &seg);
            seg[at..at + 2].copy_from_slice(&fix.to_be_bytes());
            let old = l4_checksum(&pseudo_v4(src, dst, UDP, seg.len()), UDP, &seg);
            let want = l4_checksum(&pseudo_v4(src, new_dst, UDP, seg.len()), UDP, &seg);
            assert_eq!(if zero_after { want } else { old }, 0xffff);
            let update = ChecksumUpdate::new(old)
                .remove_bytes4(&dst)
                .add_bytes4(&new_dst);
            assert_eq!(udp_checksum_after(old, update), want);
        }
    }

    proptest! {
        /// IPv4 TCP/UDP: rewriting the destination (DNAT) or the source (SNAT) address and
        /// port updates the L4 checksum and the IPv4 header checksum as a recomputation would.
        #[test]
        fn ipv4_rewrite_matches_recomputation(
            proto in proto(),
            src: [u8; 4], dst: [u8; 4], ports: [u8; 4],
            new_addr: [u8; 4], new_port: [u8; 2],
            header: [u8; 16], ip_fields: [u8; 8],
            payload in prop::collection::vec(any::<u8>(), 0..64),
            rewrite_source: bool,
            udp_no_checksum in prop::bool::weighted(0.1),
        ) {
            let mut seg = segment(proto, ports, header, &payload);
            let old = if proto == UDP && udp_no_checksum {
                0
            } else {
                l4_checksum(&pseudo_v4(src, dst, proto, seg.len()), proto, &seg)
            };
            write_checksum(proto, &mut seg, old);
            let mut ip = ipv4_header(ip_fields, proto, src, dst);

            let (addr_at, port_at) = if rewrite_source { (12, 0) } else { (16, 2) };
            let old_addr: [u8; 4] = ip[addr_at..addr_at + 4].try_into().unwrap();
            let old_port: [u8; 2] = seg[port_at..port_at + 2].try_into().unwrap();
            ip[addr_at..addr_at + 4].copy_from_slice(&new_addr);
            seg[port_at..port_at + 2].copy_from_slice(&new_port);

            let ip_old = u16::from_be_bytes([ip[10], ip[11]]);
            let ip_new = ChecksumUpdate::new(ip_old)
                .remove_bytes4(&old_addr)
                .add_bytes4(&new_addr)
                .into_checksum();
            ip[10..12].fill(0);
            prop_assert_eq!(ip_new, !ones_sum(&[&ip]));

            let l4_old = read_checksum(proto, &seg);
            let update = ChecksumUpdate::new(l4_old)
                .remove_bytes4(&old_addr)
                .add_bytes4(&new_addr)
                .remove_bytes2(&old_port)
                .add_bytes2(&new_port);
            let l4_new = finish(proto, l4_old, update);
            let (s, d) = if rewrite_source { (new_addr, dst) } else { (src, new_addr) };
            let want = if proto == UDP && l4_old == 0 {
                0
            } else {
                l4_checksum(&pseudo_v4(s, d, proto, seg.len()), proto, &seg)
            };
            prop_assert_eq!(l4_new, want);
        }

        /// IPv6 TCP/UDP: the pseudo-header carries the full 16-byte addresses.
        #[test]
        fn ipv6_rewrite_matches_recomputation(
            proto in proto(),
            src: [u8; 16], dst: [u8; 16], ports: [u8; 4],
            new_addr: [u8; 16], new_port: [u8; 2],
            header: [u8; 16],
            payload in prop::collection::vec(any::<u8>(), 0..64),
            rewrite_source: bool,
        ) {
            let mut seg = segment(proto, ports, header, &payload);
            let old = l4_checksum(&pseudo_v6(src, dst, proto, seg.len()), proto, &seg);
            write_checksum(proto, &mut seg, old);

            let port_at = if rewrite_source { 0 } else { 2 };
            let old_addr = if rewrite_source { src } else { dst };
            let old_port: [u8; 2] = seg[port_at..port_at + 2].try_into().unwrap();
            seg[port_at..port_at + 2].copy_from_slice(&new_port);

            let update = ChecksumUpdate::new(old)
                .remove_bytes16(&old_addr)
                .add_bytes16(&new_addr)
                .remove_bytes2(&old_port)
                .add_bytes2(&new_port);
            let (s, d) = if rewrite_source { (new_addr, dst) } else { (src, new_addr) };
            let want = l4_checksum(&pseudo_v6(s, d, proto, seg.len()), proto, &seg);
            prop_assert_eq!(finish(proto, old, update), want);
        }

        /// The unfolded 64-bit sum, folded once, equals word-by-word end-around-carry addition
        /// exactly, including which zero comes out; 32-bit variants equal their word pairs.
        #[test]
        fn folding_matches_word_by_word(
            old in prop_oneof![Just(0u16), Just(0xffff), any::<u16>()],
            ops in prop::collection::vec(
                (any::<bool>(), prop_oneof![Just(0u16), Just(0xffff), any::<u16>()]),
                0..40,
            ),
        ) {
            let mut update = ChecksumUpdate::new(old);
            for &(add, word) in &ops {
                update = if add { update.add_u16(word) } else { update.remove_u16(word) };
            }
            prop_assert_eq!(update.into_checksum(), eqn3(old, &ops));

            let mut wide = ChecksumUpdate::new(old);
            let mut pairs = Vec::new();
            for pair in ops.chunks_exact(2) {
                let value = u32::from(pair[0].1) << 16 | u32::from(pair[1].1);
                wide = if pair[0].0 { wide.add_u32(value) } else { wide.remove_u32(value) };
                pairs.extend_from_slice(&[(pair[0].0, pair[0].1), (pair[0].0, pair[1].1)]);
            }
            prop_assert_eq!(wide.into_checksum(), eqn3(old, &pairs));
        }

        /// Removing then adding the same words leaves the checksum as it was (for a checksum
        /// of real data, i.e. not the all-zeros sum).
        #[test]
        fn remove_then_add_is_identity(old in 0..0xffffu16, words: Vec<u16>) {
            let mut update = ChecksumUpdate::new(old);
            for &w in &words {
                update = update.remove_u16(w).add_u16(w);
            }
            prop_assert_eq!(update.into_checksum(), old);
        }
    }
}
