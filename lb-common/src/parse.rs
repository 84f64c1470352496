//! Strict parsing: whether the lengths and offsets a packet's headers give agree with each other
//! and with the frame, and whether it may be translated at all (TTL). Each check returns the
//! outcome for a packet to a VIP that fails it, `None` if it passes; the XDP program asks them
//! in the order below and keeps the first answer.
//!
//! A frame longer than its IP header says (Ethernet padding up to the 60-byte minimum) is
//! fine: the IP header's length is what the packet is, and the padding is never read.

use crate::Counter;

/// Length of an IPv4 header without options, and of the fixed IPv6 header.
pub const IPV4_HEADER_LEN: u32 = 20;
pub const IPV6_HEADER_LEN: u32 = 40;
/// Length of a TCP header without options, and of a UDP header.
pub const TCP_HEADER_LEN: u32 = 20;
pub const UDP_HEADER_LEN: u32 = 8;

/// An IPv4 header's first byte (version and IHL) and total length, against the `avail` bytes
/// of frame from the IP header on.
///
/// In order: a version other than 4, an IHL under 5 or a total length shorter than the header
/// is a bad header; a total length beyond the frame is a truncated packet; options are not
/// balanced. Fragments are `crate::frag`'s.
#[inline(always)]
pub fn ipv4_problem(vihl: u8, tot_len: u16, avail: u64) -> Option<Counter> {
    let ihl = u32::from(vihl & 0x0f) * 4;
    let tot_len = u32::from(tot_len);
    if vihl >> 4 != 4 || ihl < IPV4_HEADER_LEN || tot_len < ihl {
        Some(Counter::DropBadHeader)
    } else if u64::from(tot_len) > avail {
        Some(Counter::DropTruncated)
    } else if ihl > IPV4_HEADER_LEN {
        Some(Counter::DropIpOptions)
    } else {
        None
    }
}

/// An IPv6 header's first byte (version and traffic class) and payload length against the
/// `avail` bytes of frame from the IP header on: a version other than 6 is a bad header, a
/// payload beyond the frame a truncated packet.
#[inline(always)]
pub fn ipv6_problem(vtc: u8, payload_len: u16, avail: u64) -> Option<Counter> {
    if vtc >> 4 != 6 {
        Some(Counter::DropBadHeader)
    } else if u64::from(IPV6_HEADER_LEN) + u64::from(payload_len) > avail {
        Some(Counter::DropTruncated)
    } else {
        None
    }
}

/// The payload left after an IPv6 extension header of `ext_len` bytes, or a bad header if the
/// extension header does not fit in the `payload_len` bytes left.
#[inline(always)]
pub fn after_ext_header(payload_len: u32, ext_len: u32) -> Result<u32, Counter> {
    payload_len
        .checked_sub(ext_len)
        .ok_or(Counter::DropBadHeader)
}

/// A TCP header's data offset byte (the offset in its high 4 bits, in 32-bit words) against
/// the segment's length from the IP header: under 5 words, or beyond the segment, is a bad
/// TCP header.
#[inline(always)]
pub fn tcp_problem(data_off: u8, segment_len: u32) -> Option<Counter> {
    let header_len = u32::from(data_off >> 4) * 4;
    if header_len < TCP_HEADER_LEN || header_len > segment_len {
        Some(Counter::DropBadL4Header)
    } else {
        None
    }
}

/// A UDP header's length field against the datagram's length from the IP header: anything
/// but equal (and at least the 8-byte header) is a bad UDP header.
#[inline(always)]
pub fn udp_problem(udp_len: u16, datagram_len: u32) -> Option<Counter> {
    let udp_len = u32::from(udp_len);
    if udp_len < UDP_HEADER_LEN || udp_len != datagram_len {
        Some(Counter::DropBadL4Header)
    } else {
        None
    }
}

/// A packet whose TTL (hop limit) would expire here is not translated: the kernel gets it as it
/// came and answers ICMP time exceeded about the VIP the client sent to, and no flow is
/// created for it.
#[inline(always)]
pub fn ttl_problem(ttl: u8) -> Option<Counter> {
    if ttl <= 1 {
        Some(Counter::PassTtlExpired)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Reference: what each check is meant to say, written as the RFCs put it.
    fn ipv4_reference(version: u8, ihl: u8, tot_len: u16, avail: u64) -> &'static str {
        let header = usize::from(ihl) * 4;
        if version != 4 || header < 20 || usize::from(tot_len) < header {
            "bad"
        } else if u64::from(tot_len) > avail {
            "truncated"
        } else if header > 20 {
            "options"
        } else {
            "ok"
        }
    }

    fn name(problem: Option<Counter>) -> &'static str {
        match problem {
            None => "ok",
            Some(Counter::DropBadHeader) => "bad",
            Some(Counter::DropTruncated) => "truncated",
            Some(Counter::DropIpOptions) => "options",
            Some(other) => other.name(),
        }
    }

    #[test]
    fn the_issue_cases() {
        // A 40-byte IPv4 TCP packet in a 40-byte frame (from the IP header on).
        assert_eq!(ipv4_problem(0x45, 40, 40), None);
        assert_eq!(ipv4_problem(0x45, 40, 60), None, "padding");
        assert_eq!(ipv4_problem(0x45, 41, 40), Some(Counter::DropTruncated));
        assert_eq!(ipv4_problem(0x44, 40, 40), Some(Counter::DropBadHeader));
        assert_eq!(ipv4_problem(0x4f, 40, 80), Some(Counter::DropBadHeader));
        assert_eq!(ipv4_problem(0x46, 44, 44), Some(Counter::DropIpOptions));
        assert_eq!(ipv6_problem(0x60, 20, 60), None);
        assert_eq!(ipv6_problem(0x60, 21, 60), Some(Counter::DropTruncated));
        assert_eq!(ipv6_problem(0x40, 20, 60), Some(Counter::DropBadHeader));
        for doff in [0, 4, 15] {
            assert_eq!(
                tcp_problem(doff << 4, 20),
                Some(Counter::DropBadL4Header),
                "data offset {doff}"
            );
        }
        assert_eq!(tcp_problem(5 << 4, 20), None);
        assert_eq!(tcp_problem(15 << 4, 60), None);
        for len in [0, 4, 1000] {
            assert_eq!(
                udp_problem(len, 13),
                Some(Counter::DropBadL4Header),
                "length {len}"
            );
        }
        assert_eq!(udp_problem(13, 13), None);
        assert_eq!(udp_problem(8, 8), None);
        assert_eq!(after_ext_header(16, 8), Ok(8));
        assert_eq!(after_ext_header(8, 16), Err(Counter::DropBadHeader));
        assert_eq!(ttl_problem(0), Some(Counter::PassTtlExpired));
        assert_eq!(ttl_problem(1), Some(Counter::PassTtlExpired));
        assert_eq!(ttl_problem(2), None);
    }

    proptest! {
        #[test]
        fn ipv4_matches_the_reference(vihl: u8, tot_len: u16, avail in 0u64..70000) {
            prop_assert_eq!(
                name(ipv4_problem(vihl, tot_len, avail)),
                ipv4_reference(vihl >> 4, vihl & 0x0f, tot_len, avail)
            );
        }

        /// A well-formed packet passes whatever padding follows it.
        #[test]
        fn padding_is_fine(payload in 0u16..1480, padding in 0u64..64) {
            let tot_len = 20 + payload;
            let frame_v4 = u64::from(tot_len) + padding;
            let frame_v6 = 40 + u64::from(payload) + padding;
            prop_assert_eq!(ipv4_problem(0x45, tot_len, frame_v4), None);
            prop_assert_eq!(ipv6_problem(0x6f, payload, frame_v6), None);
        }

        #[test]
        fn ipv6_payload_fits_the_frame(vtc: u8, payload_len: u16, avail in 0u64..70000) {
            let expected = if vtc >> 4 != 6 {
                Some(Counter::DropBadHeader)
            } else if 40 + u64::from(payload_len) > avail {
                Some(Counter::DropTruncated)
            } else {
                None
            };
            prop_assert_eq!(ipv6_problem(vtc, payload_len, avail), expected);
        }

        /// The TCP header passes exactly when it is 20 to 60 bytes and within the segment.
        #[test]
        fn tcp_header_within_the_segment(data_off: u8, segment_len in 0u32..70000) {
            let header = u32::from(data_off >> 4) * 4;
            let ok = (20..=60).contains(&header) && header <= segment_len;
            prop_assert_eq!(tcp_problem(data_off, segment_len).is_none(), ok);
        }

        #[test]
        fn udp_length_is_the_datagram(udp_len: u16, datagram_len in 0u32..70000) {
            let ok = udp_len >= 8 && u32::from(udp_len) == datagram_len;
            prop_assert_eq!(udp_problem(udp_len, datagram_len).is_none(), ok);
        }

        #[test]
        fn ext_headers_consume_the_payload(payload: u16, ext in 0u32..2049) {
            let payload = u32::from(payload);
            match after_ext_header(payload, ext) {
                Ok(left) => prop_assert_eq!(left + ext, payload),
                Err(problem) => {
                    prop_assert!(ext > payload);
                    prop_assert_eq!(problem, Counter::DropBadHeader);
                }
            }
        }

        #[test]
        fn only_expiring_packets_stay_untranslated(ttl: u8) {
            prop_assert_eq!(ttl_problem(ttl).is_some(), ttl < 2);
        }
    }
}
