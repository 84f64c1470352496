//! IP fragments of VIP traffic (Cilium's design): the first fragment of a datagram carries the
//! TCP/UDP header and is balanced like any packet; what it was translated to is remembered in
//! [`FRAGMENTS_MAP`](crate::maps::FRAGMENTS_MAP) under the datagram's addresses, protocol and
//! IP id (IPv4) or fragment id (IPv6), so that its later fragments, which carry no ports, reach
//! the same backend with the same address translation. A later fragment whose first fragment was
//! not seen (or too long ago: [`FRAG_TIMEOUT_NS`]) is an orphan, dropped and counted.
//!
//! The TCP/UDP checksum of a fragmented datagram covers the whole datagram and lives in the
//! first fragment: the incremental update for the address and port change applies there as for
//! a whole packet, and later fragments, only their IP addresses rewritten, need no L4 change.

use core::mem::size_of;

use crate::{
    Counter,
    flow::{PROTO_TCP, PROTO_UDP},
    nat::L4Checksum,
    parse::{TCP_HEADER_LEN, UDP_HEADER_LEN},
};

/// [`classify`]: not a fragment (or an IPv6 atomic fragment: offset 0, no more fragments).
pub const FRAG_NONE: u8 = 0;
/// [`classify`]: the first fragment, offset 0 with more to come; it holds the TCP/UDP header.
pub const FRAG_FIRST: u8 = 1;
/// [`classify`]: a later fragment (offset above 0): payload only.
pub const FRAG_LATER: u8 = 2;

/// How long the translation of a first fragment is used for its later fragments. A datagram's
/// fragments leave its sender back to back and arrive within milliseconds of each other; the
/// entry must not outlive that by much, since the 16-bit IPv4 id of a fast sender comes round
/// again within seconds (65536 datagrams at 30k/s: about 2 s), and a stale entry would send an
/// orphan of a new datagram where the old one went. The LRU map evicts older entries too.
pub const FRAG_TIMEOUT_NS: u64 = 2_000_000_000;

/// The fragment class of a packet whose header says more fragments follow (`more`) and places
/// it at `offset` (in 8-byte units) in its datagram.
#[inline(always)]
pub const fn classify(more: bool, offset: u16) -> u8 {
    if offset != 0 {
        FRAG_LATER
    } else if more {
        FRAG_FIRST
    } else {
        FRAG_NONE
    }
}

/// The fragment class of an IPv4 packet, from its flags/fragment offset word (host order).
#[inline(always)]
pub const fn ipv4_class(frags: u16) -> u8 {
    classify(frags & 0x2000 != 0, frags & 0x1fff)
}

/// The fragment class of an IPv6 packet with a fragment header, from the header's
/// offset/flags word (host order: 13 bits of offset, 2 reserved, the M flag).
#[inline(always)]
pub const fn ipv6_class(offset_flags: u16) -> u8 {
    classify(offset_flags & 1 != 0, offset_flags >> 3)
}

/// Why a packet of fragment class `class` carrying `proto` is not balanced as it stands: a
/// later fragment has no ports (it takes its first fragment's translation, or is an orphan),
/// and only a TCP or UDP first fragment can be balanced; `None` for the rest, whose transport
/// header [`first_fragment_problem`] then checks.
#[inline(always)]
pub const fn fragment_problem(class: u8, proto: u8) -> Option<Counter> {
    match class {
        FRAG_FIRST if proto == PROTO_TCP || proto == PROTO_UDP => None,
        FRAG_NONE => None,
        _ => Some(Counter::DropFragment),
    }
}

/// The transport header of a first fragment against the fragment's `l4_len` bytes of payload
/// (from its IP header); `field` is the TCP data offset byte or the UDP length. The header must
/// lie within the fragment (else it cannot be handled: [`Counter::DropFragment`]); a TCP data
/// offset under 5 words or a UDP length under 8 is a bad header; a UDP length that the
/// fragment holds whole contradicts the more-fragments flag ([`Counter::DropFragment`]).
#[inline(always)]
pub const fn first_fragment_problem(proto: u8, l4_len: u32, field: u16) -> Option<Counter> {
    if proto == PROTO_TCP {
        let header = (field as u32 >> 4) * 4;
        if l4_len < TCP_HEADER_LEN {
            Some(Counter::DropFragment)
        } else if header < TCP_HEADER_LEN {
            Some(Counter::DropBadL4Header)
        } else if header > l4_len {
            Some(Counter::DropFragment)
        } else {
            None
        }
    } else if proto == PROTO_UDP {
        if l4_len < UDP_HEADER_LEN {
            Some(Counter::DropFragment)
        } else if (field as u32) < UDP_HEADER_LEN {
            Some(Counter::DropBadL4Header)
        } else if field as u32 <= l4_len {
            Some(Counter::DropFragment)
        } else {
            None
        }
    } else {
        Some(Counter::DropFragment)
    }
}

/// The kind of TCP/UDP checksum a first fragment carries in `check`: a sender's stack completes
/// the checksum before it fragments, so it is never partial (and the pseudo-header sum a
/// partial one would equal is not known from one fragment): full, or none for IPv4 UDP with 0.
#[inline(always)]
pub const fn first_fragment_checksum(check: u16, is_udp: bool, v6: bool) -> L4Checksum {
    if is_udp && !v6 && check == 0 {
        L4Checksum::None
    } else {
        L4Checksum::Full
    }
}

/// True if an entry stamped at `stamp_ns` still translates fragments at `now_ns`.
#[inline(always)]
pub const fn is_live(stamp_ns: u64, now_ns: u64) -> bool {
    now_ns.wrapping_sub(stamp_ns) < FRAG_TIMEOUT_NS
}

/// [`FragKey::direction`]: client to VIP (the entry gives the backend).
pub const TO_BACKEND: u8 = 1;
/// [`FragKey::direction`]: backend to client, a reply (the entry gives the VIP).
pub const TO_CLIENT: u8 = 2;

/// A fragmented datagram: the key of [`FRAGMENTS_MAP`](crate::maps::FRAGMENTS_MAP), as its
/// fragments arrive (before translation). Addresses as in [`crate::FlowKey`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// The IPv4 identification (zero-extended) or the IPv6 fragment header's identification,
    /// as a big-endian number.
    pub id: u32,
    pub proto: u8,
    /// [`crate::flow::FAMILY_IPV4`] or [`crate::flow::FAMILY_IPV6`].
    pub family: u8,
    /// [`TO_BACKEND`] or [`TO_CLIENT`].
    pub direction: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<FragKey>() == 40);

/// What the first fragment of a datagram was translated to: the value of
/// [`FRAGMENTS_MAP`](crate::maps::FRAGMENTS_MAP).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    /// The address later fragments get: the backend's (destination, [`TO_BACKEND`]) or the
    /// VIP's (source, [`TO_CLIENT`]).
    pub addr: [u8; 16],
    /// The first fragment's ports as it arrived (network byte order).
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// The backend (full id): a later fragment to it goes there only while it keeps its flows.
    pub backend_id: u32,
    pub vip_id: u32,
    pub _pad: [u8; 4],
    /// `bpf_ktime_get_coarse_ns()` when the first fragment passed ([`is_live`]).
    pub stamp_ns: u64,
}
const _: () = assert!(size_of::<FragEntry>() == 40);

#[cfg(feature = "user")]
// SAFETY: both are `repr(C)`, `Copy`, made of integers and byte arrays with every padding byte
// an explicit field (the size assertions above check there is no implicit padding), so every
// bit pattern is a valid value.
unsafe impl aya::Pod for FragKey {}
#[cfg(feature = "user")]
// SAFETY: as for `FragKey`.
unsafe impl aya::Pod for FragEntry {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_cases_of_rfc_791_and_8200() {
        assert_eq!(ipv4_class(0), FRAG_NONE);
        assert_eq!(ipv4_class(0x4000), FRAG_NONE, "DF alone");
        assert_eq!(ipv4_class(0x2000), FRAG_FIRST);
        assert_eq!(ipv4_class(0x2000 | 185), FRAG_LATER, "MF and an offset");
        assert_eq!(ipv4_class(185), FRAG_LATER, "the last fragment");
        assert_eq!(ipv6_class(0), FRAG_NONE, "atomic fragment");
        assert_eq!(ipv6_class(1), FRAG_FIRST);
        assert_eq!(ipv6_class(6), FRAG_NONE, "reserved bits are no offset");
        assert_eq!(ipv6_class(185 << 3), FRAG_LATER);
        assert_eq!(ipv6_class((185 << 3) | 1), FRAG_LATER);
    }

    #[test]
    fn first_fragments_hold_their_transport_header() {
        // UDP: 1472 bytes of a 4008-byte datagram.
        assert_eq!(first_fragment_problem(PROTO_UDP, 1480, 4008), None);
        assert_eq!(
            first_fragment_problem(PROTO_UDP, 1480, 1480),
            Some(Counter::DropFragment),
            "a UDP length the fragment holds whole"
        );
        assert_eq!(
            first_fragment_problem(PROTO_UDP, 1480, 7),
            Some(Counter::DropBadL4Header)
        );
        assert_eq!(
            first_fragment_problem(PROTO_UDP, 4, 4008),
            Some(Counter::DropFragment)
        );
        assert_eq!(first_fragment_problem(PROTO_TCP, 24, 5 << 4), None);
        assert_eq!(
            first_fragment_problem(PROTO_TCP, 24, 8 << 4),
            Some(Counter::DropFragment),
            "options beyond the fragment"
        );
        assert_eq!(
            first_fragment_problem(PROTO_TCP, 16, 5 << 4),
            Some(Counter::DropFragment)
        );
        assert_eq!(
            first_fragment_problem(PROTO_TCP, 40, 4 << 4),
            Some(Counter::DropBadL4Header)
        );
        assert_eq!(
            first_fragment_problem(1, 40, 0),
            Some(Counter::DropFragment)
        );
    }

    #[test]
    fn only_ipv4_udp_zero_is_no_checksum() {
        assert_eq!(first_fragment_checksum(0, true, false), L4Checksum::None);
        assert_eq!(first_fragment_checksum(0, true, true), L4Checksum::Full);
        assert_eq!(first_fragment_checksum(0, false, false), L4Checksum::Full);
        assert_eq!(
            first_fragment_checksum(0x1234, true, false),
            L4Checksum::Full
        );
    }

    proptest! {
        /// RFC 791: a fragment has MF set or a non-zero offset; the first one has offset 0.
        #[test]
        fn ipv4_classes(frags: u16) {
            let (mf, offset) = (frags & 0x2000 != 0, frags & 0x1fff);
            let expected = match (mf, offset) {
                (false, 0) => FRAG_NONE,
                (true, 0) => FRAG_FIRST,
                _ => FRAG_LATER,
            };
            prop_assert_eq!(ipv4_class(frags), expected);
            prop_assert_eq!(ipv4_class(frags), ipv4_class(frags & !0xc000), "DF and the reserved bit do not matter");
        }

        #[test]
        fn ipv6_classes(offset in 0u16..8192, reserved in 0u16..4, more: bool) {
            let word = (offset << 3) | (reserved << 1) | u16::from(more);
            prop_assert_eq!(ipv6_class(word), classify(more, offset));
        }

        /// Only TCP/UDP first fragments and whole packets get past; later fragments never.
        #[test]
        fn only_first_tcp_udp_fragments_are_balanced(class in 0u8..3, proto: u8) {
            let ok = class == FRAG_NONE
                || (class == FRAG_FIRST && (proto == PROTO_TCP || proto == PROTO_UDP));
            prop_assert_eq!(fragment_problem(class, proto).is_none(), ok);
        }

        /// A first fragment passes exactly when its header lies within it and (UDP) the
        /// datagram is longer than the fragment.
        #[test]
        fn first_fragment_reference(udp: bool, l4_len in 0u32..70000, field: u16) {
            let ok = if udp {
                l4_len >= 8 && field >= 8 && u32::from(field) > l4_len
            } else {
                let header = u32::from(field as u8 >> 4) * 4;
                (20..=60).contains(&header) && header <= l4_len
            };
            let proto = if udp { PROTO_UDP } else { PROTO_TCP };
            let field = if udp { field } else { field & 0xff };
            prop_assert_eq!(first_fragment_problem(proto, l4_len, field).is_none(), ok);
        }

        #[test]
        fn entries_live_for_the_timeout(stamp: u64, age: u64) {
            let now = stamp.wrapping_add(age);
            prop_assert_eq!(is_live(stamp, now), age < FRAG_TIMEOUT_NS);
        }
    }
}
