//! Health checks of `ipip` backends through the tunnel (`[vip.health] path = "vip"`): the
//! agent's check connects to the VIP from a socket marked for one backend, and a TC program
//! on the egress interface of the route to that backend encapsulates each packet with that
//! mark as the data path encapsulates clients' packets, so that a backend missing its VIP or
//! its decapsulation fails the check (Katran's healthchecking design). The program's map and
//! the outer headers it writes, as pure functions.
//!
//! The outer source is the inner packet's: the gateway's own address toward the backend,
//! which the kernel picked when it routed the marked socket. The backend's answer comes back
//! unencapsulated, from the VIP to that address.

use core::mem::size_of;

use crate::{
    encap::{
        ETH_P_IPV4, ETH_P_IPV6, IPV4_DF, IPV4_OUTER_LEN, IPV6_OUTER_LEN, OUTER_TTL, PROTO_IPIP,
        PROTO_IPV6, ipv4_outer_checksum,
    },
    flow::{FAMILY_IPV4, FAMILY_IPV6},
};

/// The tunnel of each marked check: socket mark (`u32`) → [`ProbeTunnel`].
pub const PROBE_TUNNELS_MAP: &str = "PROBE_TUNNELS";
/// Most entries of [`PROBE_TUNNELS_MAP`] (not preallocated).
pub const MAX_PROBE_TUNNELS: u32 = 0x1_0000;

/// Value of [`PROBE_TUNNELS_MAP`]: where a marked check's packets are encapsulated to.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeTunnel {
    /// The backend's address, the outer destination (IPv4 in the first 4 bytes).
    pub dst: [u8; 16],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`]: the VIP's, the backend's and the tunnel's.
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ProbeTunnel>() == 20);

impl ProbeTunnel {
    /// A tunnel to the IPv4 backend `dst`.
    pub const fn v4(dst: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[0] = dst[0];
        addr[1] = dst[1];
        addr[2] = dst[2];
        addr[3] = dst[3];
        Self {
            dst: addr,
            family: FAMILY_IPV4,
            _pad: [0; 3],
        }
    }

    /// A tunnel to the IPv6 backend `dst`.
    pub const fn v6(dst: [u8; 16]) -> Self {
        Self {
            dst,
            family: FAMILY_IPV6,
            _pad: [0; 3],
        }
    }

    /// Whether a frame of Ethernet type `ether_type` goes through this tunnel: the same
    /// family's only (the decapsulation takes same-family tunnels only).
    #[inline(always)]
    pub const fn carries(&self, ether_type: u16) -> bool {
        (ether_type == ETH_P_IPV4 && self.family == FAMILY_IPV4)
            || (ether_type == ETH_P_IPV6 && self.family == FAMILY_IPV6)
    }
}

/// The outer IPv4 header of a check's packet whose IPv4 header is `inner`, to `dst`: no
/// options, the inner type of service and "don't fragment" bit, identification 0, TTL
/// [`OUTER_TTL`], protocol 4, the inner source, the checksum. `None` if `inner` is not an IPv4
/// header or the packet would exceed 65535 bytes.
#[inline(always)]
pub const fn ipv4_outer(inner: &[u8; 20], dst: &[u8; 4]) -> Option<[u8; IPV4_OUTER_LEN]> {
    if inner[0] >> 4 != 4 {
        return None;
    }
    let inner_len = u16::from_be_bytes([inner[2], inner[3]]);
    let Some(tot_len) = inner_len.checked_add(IPV4_OUTER_LEN as u16) else {
        return None;
    };
    let tos = inner[1];
    let frags = u16::from_be_bytes([inner[6], inner[7]]) & IPV4_DF;
    let src = [inner[12], inner[13], inner[14], inner[15]];
    let csum = ipv4_outer_checksum(tos, tot_len, frags, &src, dst);
    let [len_hi, len_lo] = tot_len.to_be_bytes();
    let [frags_hi, frags_lo] = frags.to_be_bytes();
    let [csum_hi, csum_lo] = csum.to_be_bytes();
    Some([
        0x45, tos, len_hi, len_lo, 0, 0, frags_hi, frags_lo, OUTER_TTL, PROTO_IPIP, csum_hi,
        csum_lo, src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3],
    ])
}

/// The outer IPv6 header of a check's packet whose IPv6 header is `inner`, to `dst`: the
/// inner first word (traffic class, flow label), next header 41, hop limit [`OUTER_TTL`], the
/// inner source. `None` if `inner` is not an IPv6 header or the payload would exceed 65535
/// bytes.
#[inline(always)]
pub const fn ipv6_outer(inner: &[u8; 40], dst: &[u8; 16]) -> Option<[u8; IPV6_OUTER_LEN]> {
    if inner[0] >> 4 != 6 {
        return None;
    }
    let inner_payload = u16::from_be_bytes([inner[4], inner[5]]);
    let Some(payload) = inner_payload.checked_add(IPV6_OUTER_LEN as u16) else {
        return None;
    };
    let mut outer = [0u8; IPV6_OUTER_LEN];
    let mut i = 0;
    while i < 4 {
        outer[i] = inner[i];
        i += 1;
    }
    let [hi, lo] = payload.to_be_bytes();
    outer[4] = hi;
    outer[5] = lo;
    outer[6] = PROTO_IPV6;
    outer[7] = OUTER_TTL;
    let mut i = 0;
    while i < 16 {
        outer[8 + i] = inner[8 + i];
        outer[24 + i] = dst[i];
        i += 1;
    }
    Some(outer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum_ok(h: &[u8; 20]) -> bool {
        let mut sum: u32 = h
            .chunks(2)
            .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
            .sum();
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        sum == 0xFFFF
    }

    proptest! {
        #[test]
        fn ipv4_outer_wraps_the_inner_header(
            tos: u8, len in 20u16..=65515, df: bool, mf: bool, src: [u8; 4], vip: [u8; 4],
            dst: [u8; 4],
        ) {
            let mut inner = [0u8; 20];
            inner[0] = 0x45;
            inner[1] = tos;
            inner[2..4].copy_from_slice(&len.to_be_bytes());
            let frags = if df { IPV4_DF } else { 0 } | if mf { 0x2000 } else { 0 };
            inner[6..8].copy_from_slice(&frags.to_be_bytes());
            inner[8] = 64;
            inner[9] = 6;
            inner[12..16].copy_from_slice(&src);
            inner[16..20].copy_from_slice(&vip);
            let outer = ipv4_outer(&inner, &dst).expect("an outer header");
            prop_assert_eq!(outer[0], 0x45);
            prop_assert_eq!(outer[1], tos);
            prop_assert_eq!(u16::from_be_bytes([outer[2], outer[3]]), len + 20);
            prop_assert_eq!(
                u16::from_be_bytes([outer[6], outer[7]]),
                if df { IPV4_DF } else { 0 }
            );
            prop_assert_eq!(outer[8], OUTER_TTL);
            prop_assert_eq!(outer[9], PROTO_IPIP);
            prop_assert_eq!(&outer[12..16], &src);
            prop_assert_eq!(&outer[16..20], &dst);
            prop_assert!(sum_ok(&outer));
        }

        #[test]
        fn ipv6_outer_wraps_the_inner_header(
            word: u32, len in 0u16..=65495, src: [u8; 16], vip: [u8; 16], dst: [u8; 16],
        ) {
            let mut inner = [0u8; 40];
            inner[0..4].copy_from_slice(&((6 << 28) | (word & 0x0fff_ffff)).to_be_bytes());
            inner[4..6].copy_from_slice(&len.to_be_bytes());
            inner[6] = 17;
            inner[7] = 64;
            inner[8..24].copy_from_slice(&src);
            inner[24..40].copy_from_slice(&vip);
            let outer = ipv6_outer(&inner, &dst).expect("an outer header");
            prop_assert_eq!(&outer[0..4], &inner[0..4]);
            prop_assert_eq!(u16::from_be_bytes([outer[4], outer[5]]), len + 40);
            prop_assert_eq!(outer[6], PROTO_IPV6);
            prop_assert_eq!(outer[7], OUTER_TTL);
            prop_assert_eq!(&outer[8..24], &src);
            prop_assert_eq!(&outer[24..40], &dst);
        }
    }

    #[test]
    fn no_outer_header_for_another_version_or_too_long_a_packet() {
        let mut inner = [0u8; 20];
        inner[0] = 0x60;
        assert_eq!(ipv4_outer(&inner, &[10, 0, 0, 1]), None);
        inner[0] = 0x45;
        inner[2..4].copy_from_slice(&65_516u16.to_be_bytes());
        assert_eq!(ipv4_outer(&inner, &[10, 0, 0, 1]), None);
        let mut inner6 = [0u8; 40];
        inner6[0] = 0x45;
        assert_eq!(ipv6_outer(&inner6, &[0; 16]), None);
        inner6[0] = 0x60;
        inner6[4..6].copy_from_slice(&65_496u16.to_be_bytes());
        assert_eq!(ipv6_outer(&inner6, &[0; 16]), None);
    }

    #[test]
    fn a_tunnel_carries_its_own_family_only() {
        let v4 = ProbeTunnel::v4([198, 18, 1, 10]);
        assert_eq!(&v4.dst[..4], &[198, 18, 1, 10]);
        assert!(v4.carries(ETH_P_IPV4));
        assert!(!v4.carries(ETH_P_IPV6));
        assert!(!v4.carries(0x0806));
        let v6 = ProbeTunnel::v6([0xfd; 16]);
        assert!(v6.carries(ETH_P_IPV6));
        assert!(!v6.carries(ETH_P_IPV4));
    }
}
