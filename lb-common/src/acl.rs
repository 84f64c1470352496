//! Per-VIP source prefix lists (allow and deny), kept in one LPM trie,
//! [`ACL_MAP`](crate::maps::ACL_MAP): [`AclKey`] → [`ACL_ALLOW`] or [`ACL_DENY`].
//!
//! Semantics (as Cilium's `loadBalancerSourceRanges`, with deny lists besides):
//! - the longest prefix that holds the source decides, allow or deny;
//! - a VIP with any allow prefix lets in only sources that one of them holds: the agent adds a
//!   deny entry of length 0 for the VIP ([`acl_entries`]), which every source matches and any
//!   longer prefix overrides;
//! - a VIP without allow prefixes lets in every source no deny prefix holds.
//!
//! An LPM key's prefix length counts the bits after the length field, so the VIP id and family
//! come first, and [`ACL_MATCH_BITS`] is added to the address prefix: an entry only ever
//! matches its own VIP and family.

use core::mem::size_of;

/// Value of an [`ACL_MAP`](crate::maps::ACL_MAP) entry: sources under the prefix are let in.
pub const ACL_ALLOW: u8 = 1;
/// Value of an [`ACL_MAP`](crate::maps::ACL_MAP) entry: sources under the prefix are dropped.
pub const ACL_DENY: u8 = 2;

/// Bits of an [`AclKey`] before the address (VIP id, family, padding): always matched.
pub const ACL_MATCH_BITS: u32 = 64;

/// Most allow and deny prefixes of one VIP, together.
pub const MAX_ACL_PREFIXES: usize = 1024;

/// A whole key of [`ACL_MAP`](crate::maps::ACL_MAP), as the kernel reads it: the prefix length
/// (in bits of what follows it), then [`AclMatch`]'s fields.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclKey {
    /// [`ACL_MATCH_BITS`] plus the address prefix length ([`acl_prefix_len`]).
    pub prefix_len: u32,
    pub vip_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    /// The prefix (host bits zero), or the source looked up.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<AclKey>() == 28);

/// The data part of an [`AclKey`] (what aya's `lpm_trie::Key` wraps).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclMatch {
    pub vip_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<AclMatch>() + 4 == size_of::<AclKey>());

/// The LPM prefix length of an address prefix of `addr_bits` bits.
#[inline(always)]
pub const fn acl_prefix_len(addr_bits: u8) -> u32 {
    ACL_MATCH_BITS + addr_bits as u32
}

/// Whether a source is let in, given the value of its longest matching entry (`None`: no
/// entry holds it, so the VIP has no allow prefix and no deny prefix holds it).
#[inline(always)]
pub const fn acl_allows(verdict: Option<u8>) -> bool {
    match verdict {
        None => true,
        Some(v) => v == ACL_ALLOW,
    }
}

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, integers and byte arrays with explicit padding (sizes asserted above);
// every bit pattern is valid.
unsafe impl aya::Pod for AclMatch {}

/// An address prefix: the address (16 bytes, IPv4 in the first 4) and its length in bits.
pub type Prefix = ([u8; 16], u8);

/// True if `addr` is under `prefix`.
pub fn prefix_holds(prefix: &Prefix, addr: &[u8; 16]) -> bool {
    let (net, len) = prefix;
    (0..16).all(|i| {
        let mask = crate::limit::prefix_mask(*len, i);
        net[i] & mask == addr[i] & mask
    })
}

/// The entries of VIP `vip_id` (of `family`) for these allow and deny prefixes: one per
/// prefix, and a deny of length 0 if there are allow prefixes and no prefix of length 0 (see
/// the module's semantics). A prefix in both lists is the caller's to refuse (here deny wins).
#[cfg(any(test, feature = "alloc"))]
pub fn acl_entries(
    vip_id: u32,
    family: u8,
    allow: &[Prefix],
    deny: &[Prefix],
) -> alloc::collections::BTreeMap<AclKey, u8> {
    let key = |(addr, len): &Prefix| AclKey {
        prefix_len: acl_prefix_len(*len),
        vip_id,
        family,
        _pad: [0; 3],
        addr: *addr,
    };
    let mut entries = alloc::collections::BTreeMap::new();
    if !allow.is_empty() {
        entries.insert(key(&([0; 16], 0)), ACL_DENY);
    }
    for prefix in allow {
        entries.insert(key(prefix), ACL_ALLOW);
    }
    for prefix in deny {
        entries.insert(key(prefix), ACL_DENY);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the longest-prefix lookup of the trie answers for `addr` over `entries`.
    fn lpm(entries: &alloc::collections::BTreeMap<AclKey, u8>, addr: &[u8; 16]) -> Option<u8> {
        entries
            .iter()
            .filter(|(k, _)| prefix_holds(&(k.addr, (k.prefix_len - ACL_MATCH_BITS) as u8), addr))
            .max_by_key(|(k, _)| k.prefix_len)
            .map(|(_, v)| *v)
    }

    /// The semantics as documented, straight from the lists.
    fn spec(allow: &[Prefix], deny: &[Prefix], addr: &[u8; 16]) -> bool {
        let longest = |list: &[Prefix]| {
            list.iter()
                .filter(|p| prefix_holds(p, addr))
                .map(|p| i32::from(p.1))
                .max()
        };
        match (longest(allow), longest(deny)) {
            (None, None) => allow.is_empty(),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(d)) => a > d,
        }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    /// A v4 prefix with its host bits cleared.
    fn prefix() -> impl Strategy<Value = Prefix> {
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(a, len)| (crate::limit::mask_source(&v4(a), len), len))
    }

    proptest! {
        /// The trie's longest-prefix answer over the entries is the documented semantics, for
        /// lists without a prefix in both (which the agent refuses).
        #[test]
        fn entries_implement_the_semantics(
            allow in proptest::collection::vec(prefix(), 0..6),
            deny in proptest::collection::vec(prefix(), 0..6),
            addrs in proptest::collection::vec(any::<[u8; 4]>(), 1..20),
        ) {
            prop_assume!(allow.iter().all(|a| !deny.contains(a)));
            let entries = acl_entries(7, 4, &allow, &deny);
            for a in addrs {
                let addr = v4(a);
                prop_assert_eq!(acl_allows(lpm(&entries, &addr)), spec(&allow, &deny, &addr));
            }
        }
    }

    #[test]
    fn longest_prefix_wins_both_ways() {
        let allow = [(v4([10, 0, 0, 0]), 8)];
        let deny = [(v4([10, 1, 0, 0]), 16)];
        let entries = acl_entries(1, 4, &allow, &deny);
        assert!(acl_allows(lpm(&entries, &v4([10, 2, 3, 4]))));
        assert!(!acl_allows(lpm(&entries, &v4([10, 1, 3, 4]))));
        assert!(!acl_allows(lpm(&entries, &v4([11, 1, 3, 4]))));
        let allow = [(v4([10, 1, 2, 0]), 24)];
        let deny = [(v4([10, 1, 0, 0]), 16)];
        let entries = acl_entries(1, 4, &allow, &deny);
        assert!(acl_allows(lpm(&entries, &v4([10, 1, 2, 9]))));
        assert!(!acl_allows(lpm(&entries, &v4([10, 1, 3, 9]))));
        // Deny only: everything else is let in.
        let entries = acl_entries(1, 4, &[], &deny);
        assert!(acl_allows(lpm(&entries, &v4([192, 0, 2, 1]))));
        assert_eq!(entries.len(), 1);
    }
}
