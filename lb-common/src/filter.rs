//! The address filter: a bitmap that tells the data path, with one array load, that a packet
//! is certainly not to a VIP address, certainly not from a backend or certainly not to the
//! gateway itself, before it pays for the exact hash lookups (`VIP_ADDRS`, `BACKEND_VIPS`,
//! `LOCAL_ADDRS`).
//!
//! [`ADDR_FILTER_MAP`](crate::maps::ADDR_FILTER_MAP) is an array of `u64` words: the first
//! [`FILTER_WORDS`] hold one bit per hash of a VIP address, the next [`FILTER_WORDS`] one bit per
//! hash of a backend address, the last one bit per hash of a local address. A set bit means "maybe" (other addresses share it), a clear bit
//! "no". The agent sets the bits of every VIP and backend address before the data path needs
//! them, and clears them once nothing uses them.

/// Bits per part of the filter.
pub const FILTER_BITS: u32 = 1 << 16;
/// `u64` words per part.
pub const FILTER_WORDS: u32 = FILTER_BITS / 64;
/// Entries of the filter map: the VIP part, the backend part, the local part.
pub const FILTER_MAP_WORDS: u32 = 3 * FILTER_WORDS;

/// Which part of the filter.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum FilterKind {
    /// Destination addresses of VIPs.
    Vip = 0,
    /// Source addresses of backends (their replies).
    Backend = 1,
    /// The gateway's own addresses (replies to its health probes are not a VIP's).
    Local = 2,
}

/// The bit of `addr` (16 bytes, IPv4 in the first 4 and zeros after) in the `kind` half: its
/// word's index in the map and the mask within the word.
#[inline(always)]
pub fn filter_slot(kind: FilterKind, addr: &[u8; 16]) -> (u32, u64) {
    let word = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let folded =
        word(0) ^ word(4).rotate_left(7) ^ word(8).rotate_left(14) ^ word(12).rotate_left(21);
    // Fibonacci hashing: the top 16 bits of the product mix every input bit.
    let bit = folded.wrapping_mul(0x9e37_79b1) >> 16;
    (kind as u32 * FILTER_WORDS + bit / 64, 1u64 << (bit % 64))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    #[test]
    fn halves_are_apart_and_in_range() {
        let addr = v4([10, 1, 0, 2]);
        let (vip, mask) = filter_slot(FilterKind::Vip, &addr);
        let (backend, mask2) = filter_slot(FilterKind::Backend, &addr);
        assert_eq!(mask, mask2);
        assert_eq!(backend, vip + FILTER_WORDS);
        assert!(vip < FILTER_WORDS && backend < FILTER_MAP_WORDS);
        assert_eq!(mask.count_ones(), 1);
    }

    #[test]
    fn neighbouring_addresses_spread_over_the_bits() {
        // A /16 of backends and a block of IPv6 addresses: few share a bit.
        for addrs in [
            (0..=255u8)
                .flat_map(|c| (0..=255u8).map(move |d| v4([10, 1, c, d])))
                .take(4096)
                .collect::<Vec<_>>(),
            (0..4096u16)
                .map(|i| {
                    let mut a = [0u8; 16];
                    a[0] = 0xfd;
                    a[14..].copy_from_slice(&i.to_be_bytes());
                    a
                })
                .collect(),
        ] {
            let bits: HashSet<(u32, u64)> = addrs
                .iter()
                .map(|a| filter_slot(FilterKind::Backend, a))
                .collect();
            assert!(bits.len() > 3900, "{} distinct bits of 4096", bits.len());
        }
    }
}
