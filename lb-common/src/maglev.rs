//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the agent fills a lookup table of a
//! prime size `M` with backend ids; the data path indexes it with [`slot`] of a flow hash.
//!
//! # Weighted population
//!
//! Every backend has its own permutation of `0..M`, from two hashes of its key as in the paper:
//! `offset = h1 % M`, `skip = h2 % (M - 1) + 1`, position `j` is `(offset + j * skip) % M`
//! (`M` prime, so every permutation covers the table). [`build_table`] then fills the table:
//!
//! 1. **Quotas.** Backend `i` is owed `M * w_i / W` slots (`W` = sum of weights). The integer
//!    quotas are the largest-remainder (Hamilton) apportionment of `M`: each is its exact share
//!    rounded down or up, so every backend ends within one slot of its exact share, the best an
//!    integer table can do. A backend with weight > 0 gets at least one slot (taken from the
//!    largest quota; only when its exact share is below one slot).
//! 2. **Visits, paced by weight.** Each backend walks its permutation one position per visit,
//!    and makes its `k`-th visit at virtual time `k / w_i` (exact, by cross-multiplying). At a
//!    visit it claims the slot if it is empty. It stops once it holds its quota. Backends of
//!    equal weight visit in lockstep, in canonical order; at equal times, heavier weights go
//!    first. Equal weights therefore run in plain rounds, as in the paper.
//!
//! The one change from the paper: there, a backend's turn skips over taken slots until it claims
//! one, so how far it has walked depends on every earlier claim of every other backend, and
//! removing one backend shifts all of those walks. Here a backend's position depends only on
//! time, so a slot goes to the first backend to reach it with quota left (like rendezvous
//! hashing), and backends interact only through reaching their quotas. Measured at
//! `M = 65_537` over ~4,500 removals of one of `N = 5..=100` equal backends: the removed
//! backend's slots move plus a median 0.26% of `M` (at most 0.55%); with the paper's population,
//! a median 0.45% more, and up to 1.35% when two backends happened to share a `skip` (same
//! permutation, shifted), which about 2% of 55-backend sets do.
//!
//! The table ends exactly full: a backend below quota has visited every slot that is still
//! empty, and would have claimed it. Backends are first sorted by `(key, id, weight)`, so the
//! table depends only on the set of backends, not on their order.

/// Default table size: a prime, about 650 slots per backend at 100 backends.
pub const DEFAULT_RING_SIZE: u32 = 65_537;

/// Largest table size accepted: the largest prime below 2^20.
pub const MAX_RING_SIZE: u32 = 1_048_573;

/// Table entry that maps to no backend (only in a table with no weighted backend).
pub const EMPTY_SLOT: u32 = u32::MAX;

/// Largest backend weight accepted by the builders.
pub const MAX_WEIGHT: u32 = 10_000;

/// The table index of a flow hash: `hash % ring_size`, or 0 if `ring_size` is 0.
#[inline(always)]
pub fn slot(hash: u32, ring_size: u32) -> u32 {
    if ring_size == 0 { 0 } else { hash % ring_size }
}

#[cfg(feature = "alloc")]
pub use builder::*;

#[cfg(feature = "alloc")]
mod builder {
    use super::{EMPTY_SLOT, MAX_RING_SIZE, MAX_WEIGHT};
    use crate::hash::jhash2;
    use alloc::collections::{BTreeMap, BinaryHeap};
    use alloc::vec;
    use alloc::vec::Vec;
    use core::cmp::Ordering;
    use core::fmt;

    /// Seed of the hash giving a backend's permutation offset.
    const OFFSET_SEED: u32 = 0x4d61_676c;
    /// Seed of the hash giving a backend's permutation skip.
    const SKIP_SEED: u32 = 0x6576_2131;

    /// Whether `n` is prime (trial division; fine for `n <= 2^32`).
    pub fn is_prime(n: u32) -> bool {
        if n < 4 {
            return n >= 2;
        }
        if n.is_multiple_of(2) || n.is_multiple_of(3) {
            return false;
        }
        let n = u64::from(n);
        let mut d = 5u64;
        while d * d <= n {
            if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
                return false;
            }
            d += 6;
        }
        true
    }

    /// One backend of a Maglev table.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
    pub struct MaglevBackend {
        /// What the table stores for this backend.
        pub id: u32,
        /// Relative share of the table, `0..=MAX_WEIGHT`; 0 takes no slots.
        pub weight: u32,
        /// Stable identity the permutation is derived from: address (16 bytes, IPv4 in the
        /// first 4) then port, network byte order. Keeping it stable keeps the backend's slots.
        pub key: [u8; 18],
    }

    impl MaglevBackend {
        /// A backend keyed by its address (IPv4 in the first 4 bytes) and port, both in network
        /// byte order.
        pub fn new(id: u32, weight: u32, addr: [u8; 16], port: [u8; 2]) -> Self {
            let mut key = [0; 18];
            key[..16].copy_from_slice(&addr);
            key[16..].copy_from_slice(&port);
            Self { id, weight, key }
        }

        /// `(offset, skip)` of this backend's permutation of `0..ring_size`; `ring_size >= 2`.
        fn permutation(&self, ring_size: u32) -> (u32, u32) {
            let k = &self.key;
            let words = [
                u32::from_le_bytes([k[0], k[1], k[2], k[3]]),
                u32::from_le_bytes([k[4], k[5], k[6], k[7]]),
                u32::from_le_bytes([k[8], k[9], k[10], k[11]]),
                u32::from_le_bytes([k[12], k[13], k[14], k[15]]),
                u32::from_le_bytes([k[16], k[17], 0, 0]),
            ];
            let offset = jhash2(&words, OFFSET_SEED) % ring_size;
            let skip = jhash2(&words, SKIP_SEED) % (ring_size - 1) + 1;
            (offset, skip)
        }
    }

    /// Why a Maglev table could not be built.
    #[derive(Copy, Clone, Debug, PartialEq, Eq)]
    pub enum MaglevError {
        /// The table size is not prime (permutations would not cover the table).
        RingSizeNotPrime {
            /// The size asked for.
            ring_size: u32,
        },
        /// The table size is above [`MAX_RING_SIZE`].
        RingSizeTooLarge {
            /// The size asked for.
            ring_size: u32,
        },
        /// More backends with weight > 0 than table slots.
        TooManyBackends {
            /// Backends with weight > 0.
            backends: usize,
            /// The size asked for.
            ring_size: u32,
        },
        /// A backend's weight is above [`MAX_WEIGHT`].
        WeightTooLarge {
            /// The backend's id.
            id: u32,
            /// Its weight.
            weight: u32,
        },
    }

    impl fmt::Display for MaglevError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match *self {
                Self::RingSizeNotPrime { ring_size } => {
                    write!(f, "Maglev ring size {ring_size} is not prime")
                }
                Self::RingSizeTooLarge { ring_size } => {
                    write!(f, "Maglev ring size {ring_size} is above {MAX_RING_SIZE}")
                }
                Self::TooManyBackends {
                    backends,
                    ring_size,
                } => write!(
                    f,
                    "{backends} weighted backends do not fit a Maglev ring of {ring_size} slots"
                ),
                Self::WeightTooLarge { id, weight } => {
                    write!(f, "backend {id} has weight {weight}, above {MAX_WEIGHT}")
                }
            }
        }
    }

    impl core::error::Error for MaglevError {}

    /// The next visit of a group of equal-weight backends, ordered so that `BinaryHeap` (a
    /// max-heap) pops the earliest virtual time `visit / weight` first, then the heavier weight.
    struct Turn {
        /// Number of this visit (1-based).
        visit: u64,
        weight: u64,
        group: usize,
    }

    impl Ord for Turn {
        fn cmp(&self, other: &Self) -> Ordering {
            // Earlier time first, cross-multiplied: a backend finishes within M visits, so
            // both sides stay below 2^20 * MAX_WEIGHT.
            (other.visit * self.weight)
                .cmp(&(self.visit * other.weight))
                .then(self.weight.cmp(&other.weight))
        }
    }

    impl PartialOrd for Turn {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    impl PartialEq for Turn {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == Ordering::Equal
        }
    }

    impl Eq for Turn {}

    /// Largest-remainder apportionment of `total` slots to `weights` (all > 0, `len <= total`),
    /// each at least 1.
    fn quotas(weights: &[u32], total: u32) -> Vec<u32> {
        let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let total64 = u64::from(total);
        let mut quotas: Vec<u32> = weights
            .iter()
            .map(|&w| (total64 * u64::from(w) / sum) as u32)
            .collect();
        let given: u64 = quotas.iter().map(|&q| u64::from(q)).sum();
        let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
        by_remainder
            .sort_by_key(|&i| (core::cmp::Reverse(total64 * u64::from(weights[i]) % sum), i));
        for &i in by_remainder.iter().take((total64 - given) as usize) {
            quotas[i] += 1;
        }
        // Shares below one slot still get one, from the currently largest quota.
        for i in 0..quotas.len() {
            if quotas[i] == 0 {
                let donor = (0..quotas.len())
                    .max_by_key(|&j| (quotas[j], core::cmp::Reverse(j)))
                    .unwrap_or(i);
                quotas[donor] -= 1;
                quotas[i] = 1;
            }
        }
        quotas
    }

    /// Builds a Maglev table of `ring_size` backend ids (see the module doc for the weighted
    /// population). Every entry is [`EMPTY_SLOT`] if no backend has weight > 0.
    ///
    /// The result depends only on the set of backends, not their order.
    pub fn build_table(
        backends: &[MaglevBackend],
        ring_size: u32,
    ) -> Result<Vec<u32>, MaglevError> {
        if ring_size > MAX_RING_SIZE {
            return Err(MaglevError::RingSizeTooLarge { ring_size });
        }
        if !is_prime(ring_size) {
            return Err(MaglevError::RingSizeNotPrime { ring_size });
        }
        if let Some(b) = backends.iter().find(|b| b.weight > MAX_WEIGHT) {
            return Err(MaglevError::WeightTooLarge {
                id: b.id,
                weight: b.weight,
            });
        }
        let mut live: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
        if live.len() > ring_size as usize {
            return Err(MaglevError::TooManyBackends {
                backends: live.len(),
                ring_size,
            });
        }
        let mut table = vec![EMPTY_SLOT; ring_size as usize];
        if live.is_empty() {
            return Ok(table);
        }
        live.sort_unstable_by_key(|b| (b.key, b.id, b.weight));

        let weights: Vec<u32> = live.iter().map(|b| b.weight).collect();
        let quotas = quotas(&weights, ring_size);
        if let [only] = live[..] {
            // One backend visits every slot and claims them all.
            table.fill(only.id);
            return Ok(table);
        }
        // Each backend's walk: next position, step, id, slots still owed.
        let mut walks: Vec<Walk> = live
            .iter()
            .zip(&quotas)
            .map(|(b, &owed)| {
                let (pos, skip) = b.permutation(ring_size);
                Walk {
                    pos,
                    skip,
                    id: b.id,
                    owed,
                }
            })
            .collect();
        // Empty slots, one bit each: a visit tests a bit of this (M / 8 bytes, which stays in
        // the cache) instead of an entry of the table (4 M bytes, which does not).
        let mut empty = Empty::new(ring_size);
        // Backends still below quota, grouped by weight, each group in canonical order.
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, &weight) in weights.iter().enumerate() {
            groups.entry(weight).or_default().push(index);
        }
        let mut groups: Vec<(u32, Vec<usize>)> = groups.into_iter().collect();
        let mut heap: BinaryHeap<Turn> = groups
            .iter()
            .enumerate()
            .map(|(group, &(weight, _))| Turn {
                visit: 1,
                weight: u64::from(weight),
                group,
            })
            .collect();
        while let Some(turn) = heap.pop() {
            let members = &mut groups[turn.group].1;
            // With no other group left to wait for, this one's visits follow each other.
            let alone = heap.is_empty();
            let mut visit = turn.visit;
            loop {
                let mut finished = false;
                for &index in members.iter() {
                    let walk = &mut walks[index];
                    if empty.take(walk.pos) {
                        table[walk.pos as usize] = walk.id;
                        walk.owed -= 1;
                        finished |= walk.owed == 0;
                    }
                    walk.pos += walk.skip;
                    if walk.pos >= ring_size {
                        walk.pos -= ring_size;
                    }
                }
                if finished {
                    members.retain(|&index| walks[index].owed > 0);
                }
                visit += 1;
                if !alone || members.is_empty() {
                    break;
                }
            }
            if !members.is_empty() {
                heap.push(Turn { visit, ..turn });
            }
        }
        Ok(table)
    }

    /// A backend's walk of its permutation while it fills the table.
    struct Walk {
        /// Next position (`< M`).
        pos: u32,
        /// Step between positions (`1..M`).
        skip: u32,
        id: u32,
        /// Slots still to claim (> 0 while it walks).
        owed: u32,
    }

    /// A set of table positions, one bit each: those still empty.
    struct Empty(Vec<u64>);

    impl Empty {
        /// All of `0..len`.
        fn new(len: u32) -> Self {
            Self(vec![u64::MAX; len.div_ceil(64) as usize])
        }

        /// Whether `pos` was empty; it is not any more.
        #[inline(always)]
        fn take(&mut self, pos: u32) -> bool {
            let word = &mut self.0[(pos / 64) as usize];
            let bit = 1u64 << (pos % 64);
            let was = *word & bit != 0;
            *word &= !bit;
            was
        }
    }

    /// Number of positions where two tables differ; positions past the end of the shorter one
    /// count as differing.
    pub fn changed_slots(old: &[u32], new: &[u32]) -> usize {
        let differing = old.iter().zip(new).filter(|(a, b)| a != b).count();
        differing + old.len().abs_diff(new.len())
    }

    /// A digest of what `table` schedules to: FNV-1a (64 bits) over each slot's backend key
    /// (address and port, [`MaglevBackend::key`]) in slot order, an [`EMPTY_SLOT`] or an id
    /// not in `backends` as 18 bytes of 0xff.
    ///
    /// Ids are a gateway's own; keys are not: two gateways whose tables send every slot to the
    /// same backend address have the same digest, whatever ids they gave their backends.
    pub fn table_digest(table: &[u32], backends: &[MaglevBackend]) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let keys: BTreeMap<u32, [u8; 18]> = backends.iter().map(|b| (b.id, b.key)).collect();
        let none = [0xff; 18];
        let mut hash = OFFSET;
        for id in table {
            for byte in keys.get(id).unwrap_or(&none) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(PRIME);
            }
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_hash_mod_size_and_guards_zero() {
        assert_eq!(slot(0, 0), 0);
        assert_eq!(slot(u32::MAX, 0), 0);
        assert_eq!(slot(65_537, DEFAULT_RING_SIZE), 0);
        assert_eq!(slot(65_538, DEFAULT_RING_SIZE), 1);
        assert_eq!(slot(u32::MAX, DEFAULT_RING_SIZE), u32::MAX % 65_537);
        assert_eq!(slot(12345, 1), 0);
    }

    #[cfg(feature = "alloc")]
    mod builder {
        use super::super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        fn backend(i: u32, weight: u32) -> MaglevBackend {
            MaglevBackend::new(
                1000 + i,
                weight,
                [
                    10,
                    0,
                    (i >> 8) as u8,
                    i as u8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
                8080u16.to_be_bytes(),
            )
        }

        fn counts(table: &[u32]) -> HashMap<u32, u64> {
            let mut counts = HashMap::new();
            for &id in table {
                *counts.entry(id).or_insert(0) += 1;
            }
            counts
        }

        /// `|count - M * w / W|`, in slots.
        fn deviation(count: u64, weight: u32, total_weight: u64, m: u32) -> f64 {
            (count as f64 - f64::from(m) * f64::from(weight) / total_weight as f64).abs()
        }

        #[test]
        fn primes() {
            let small: Vec<u32> = (0..50).filter(|&n| is_prime(n)).collect();
            assert_eq!(
                small,
                [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
            );
            assert!(is_prime(DEFAULT_RING_SIZE));
            assert!(is_prime(MAX_RING_SIZE));
            // MAX_RING_SIZE is the largest prime up to 2^20.
            assert!((MAX_RING_SIZE + 1..=1 << 20).all(|n| !is_prime(n)));
            assert!(is_prime(4_294_967_291)); // largest 32-bit prime
            assert!(!is_prime(u32::MAX));
            assert!(!is_prime(65_535));
            assert!(!is_prime(65_537 * 65_521)); // needs trial division up to 65521
            assert!(!is_prime(1_048_575)); // 2^20 - 1
        }

        #[test]
        fn equal_weights_share_within_one_percent() {
            let backends: Vec<_> = (0..100).map(|i| backend(i, 1)).collect();
            let table = build_table(&backends, DEFAULT_RING_SIZE).unwrap();
            let counts = counts(&table);
            assert_eq!(counts.len(), 100);
            let ideal = f64::from(DEFAULT_RING_SIZE) / 100.0;
            for b in &backends {
                let dev = (counts[&b.id] as f64 - ideal).abs() / ideal;
                assert!(dev <= 0.01, "backend {} has {} slots", b.id, counts[&b.id]);
            }
        }

        #[test]
        fn no_weight_means_all_empty() {
            assert_eq!(build_table(&[], 7).unwrap(), vec![EMPTY_SLOT; 7]);
            let zero = [backend(0, 0), backend(1, 0)];
            assert_eq!(build_table(&zero, 13).unwrap(), vec![EMPTY_SLOT; 13]);
        }

        #[test]
        fn zero_weight_gets_nothing_and_tiny_share_gets_one_slot() {
            let backends = [backend(0, MAX_WEIGHT), backend(1, 0), backend(2, 1)];
            let counts = counts(&build_table(&backends, 13).unwrap());
            assert_eq!(counts.get(&1001), None);
            assert_eq!(counts[&1002], 1);
            assert_eq!(counts[&1000], 12);
        }

        #[test]
        fn every_backend_fits_a_ring_exactly_its_size() {
            let backends: Vec<_> = (0..13).map(|i| backend(i, 1 + i * 7)).collect();
            let table = build_table(&backends, 13).unwrap();
            assert_eq!(
                counts(&table).values().copied().collect::<Vec<_>>(),
                [1; 13]
            );
        }

        #[test]
        fn errors() {
            let one = [backend(0, 1)];
            assert_eq!(
                build_table(&one, 65_535),
                Err(MaglevError::RingSizeNotPrime { ring_size: 65_535 })
            );
            assert_eq!(
                build_table(&one, 0),
                Err(MaglevError::RingSizeNotPrime { ring_size: 0 })
            );
            assert_eq!(
                build_table(&one, 1),
                Err(MaglevError::RingSizeNotPrime { ring_size: 1 })
            );
            assert_eq!(
                build_table(&one, 4_294_967_291),
                Err(MaglevError::RingSizeTooLarge {
                    ring_size: 4_294_967_291
                })
            );
            let heavy = [backend(0, 1), backend(1, MAX_WEIGHT + 1)];
            assert_eq!(
                build_table(&heavy, 7),
                Err(MaglevError::WeightTooLarge {
                    id: 1001,
                    weight: MAX_WEIGHT + 1
                })
            );
            // Eight weighted backends do not fit 7 slots; zero-weight ones do not count.
            let many: Vec<_> = (0..8).map(|i| backend(i, 1)).collect();
            assert_eq!(
                build_table(&many, 7),
                Err(MaglevError::TooManyBackends {
                    backends: 8,
                    ring_size: 7
                })
            );
            let mut seven = many[..7].to_vec();
            seven.push(backend(7, 0));
            assert!(build_table(&seven, 7).is_ok());
            let e: &dyn core::error::Error = &MaglevError::RingSizeNotPrime { ring_size: 4 };
            assert_eq!(e.to_string(), "Maglev ring size 4 is not prime");
        }

        #[test]
        fn changed_slots_counts_differences_and_length_change() {
            assert_eq!(changed_slots(&[1, 2, 3], &[1, 2, 3]), 0);
            assert_eq!(changed_slots(&[1, 2, 3], &[1, 5, 3]), 1);
            assert_eq!(changed_slots(&[1, 2, 3], &[1, 2]), 1);
            assert_eq!(changed_slots(&[], &[4, 4]), 2);
        }

        /// FNV-1a of a table's entries (little-endian).
        fn fnv(table: &[u32]) -> u64 {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for byte in table.iter().flat_map(|id| id.to_le_bytes()) {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x100_0000_01b3);
            }
            h
        }

        /// The tables are those of the first weighted population (a heap turn per visit, the
        /// table itself tested for empty slots): an agent upgraded over a running balancer
        /// rebuilds the same tables, so no flow moves.
        #[test]
        fn tables_are_unchanged_from_the_first_weighted_population() {
            let cases: [(Vec<MaglevBackend>, u32, u64); 5] = [
                (
                    (0..3).map(|i| backend(i, 1)).collect(),
                    1009,
                    0xa681_f623_81f1_c87c,
                ),
                (
                    (0..2).map(|i| backend(i, 1)).collect(),
                    65_537,
                    0xea65_8aff_5289_935c,
                ),
                (
                    (0..100).map(|i| backend(i, 1)).collect(),
                    65_537,
                    0xcd50_f576_ae48_9125,
                ),
                (
                    (0..30).map(|i| backend(i, 1 + i * 7 % 20)).collect(),
                    65_537,
                    0x3dd1_9c96_a7a5_9b3f,
                ),
                (
                    (0..12)
                        .map(|i| backend(i, if i % 4 == 0 { 0 } else { 1 + i % 3 }))
                        .collect(),
                    1009,
                    0x11b9_a8b4_7aa3_569a,
                ),
            ];
            for (i, (backends, m, expected)) in cases.iter().enumerate() {
                let table = build_table(backends, *m).unwrap();
                assert_eq!(fnv(&table), *expected, "case {i}");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(16))]

            /// Each backend is within one slot of its exact share `M * w / W` (the best an
            /// integer table can do) and, where that share is at least 100 slots, within 1%.
            #[test]
            fn weighted_shares_are_exact_to_one_slot(
                weights in prop::collection::vec(1..=100u32, 100),
            ) {
                let backends: Vec<_> =
                    weights.iter().enumerate().map(|(i, &w)| backend(i as u32, w)).collect();
                let table = build_table(&backends, DEFAULT_RING_SIZE).unwrap();
                let counts = counts(&table);
                let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
                for b in &backends {
                    let count = counts[&b.id];
                    let ideal = f64::from(DEFAULT_RING_SIZE) * f64::from(b.weight) / total as f64;
                    let dev = deviation(count, b.weight, total, DEFAULT_RING_SIZE);
                    prop_assert!(dev < 1.0, "weight {} has {count} slots, ideal {ideal}", b.weight);
                    if ideal >= 100.0 {
                        prop_assert!(dev / ideal <= 0.01);
                    }
                }
            }

            /// Removing one of N equal backends moves its ~M/N slots and at most 1% of M more.
            #[test]
            fn removing_a_backend_disrupts_little(n in 5..=100u32, removed in 0..100u32, salt: u8) {
                let backends: Vec<_> = (0..n)
                    .map(|i| {
                        let mut b = backend(i, 1);
                        b.key[2] = salt;
                        b
                    })
                    .collect();
                let mut fewer = backends.clone();
                fewer.remove((removed % n) as usize);
                let m = DEFAULT_RING_SIZE;
                let old = build_table(&backends, m).unwrap();
                let new = build_table(&fewer, m).unwrap();
                let changed = changed_slots(&old, &new);
                let bound = (m / n) as usize + (m / 100) as usize;
                prop_assert!(changed <= bound, "N = {n}: {changed} slots changed, bound {bound}");
            }

            /// Same set of backends, any order: same table.
            #[test]
            fn order_does_not_matter(
                weights in prop::collection::vec(0..=20u32, 1..30),
                shuffle in any::<prop::sample::Index>(),
            ) {
                let backends: Vec<_> =
                    weights.iter().enumerate().map(|(i, &w)| backend(i as u32, w)).collect();
                let mut shuffled = backends.clone();
                // A deterministic shuffle driven by the proptest input.
                let mut state = shuffle.index(usize::MAX) as u64 | 1;
                for i in (1..shuffled.len()).rev() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    shuffled.swap(i, (state % (i as u64 + 1)) as usize);
                }
                let a = build_table(&backends, 1009).unwrap();
                prop_assert_eq!(&a, &build_table(&backends, 1009).unwrap());
                prop_assert_eq!(&a, &build_table(&shuffled, 1009).unwrap());
                let live: Vec<u32> =
                    backends.iter().filter(|b| b.weight > 0).map(|b| b.id).collect();
                for id in &a {
                    prop_assert!(live.contains(id) || (live.is_empty() && *id == EMPTY_SLOT));
                }
            }
        }

        #[test]
        fn table_digest_names_addresses_not_ids() {
            use proptest::prelude::*;
            let addr = |i: u8| {
                MaglevBackend::new(
                    0,
                    1,
                    [10, 0, 0, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    [0, 80],
                )
                .key
            };
            proptest!(ProptestConfig::with_cases(16), |(n in 1u8..8, perm in any::<u64>(), base in 0u32..1000)| {
                // The same backends, in another order and with other ids.
                let a: Vec<MaglevBackend> = (0..n).map(|i| MaglevBackend { id: u32::from(i), weight: 1, key: addr(i) }).collect();
                let mut b: Vec<MaglevBackend> = a.iter().map(|m| MaglevBackend { id: base + 7 * m.id + 3, ..*m }).collect();
                b.rotate_left((perm % u64::from(n)) as usize);
                let (ta, tb) = (build_table(&a, 251).unwrap(), build_table(&b, 251).unwrap());
                prop_assert_ne!(&ta, &tb);
                prop_assert_eq!(table_digest(&ta, &a), table_digest(&tb, &b));
                // One backend fewer is another table.
                if n > 1 {
                    let fewer = build_table(&a[1..], 251).unwrap();
                    prop_assert_ne!(table_digest(&fewer, &a), table_digest(&ta, &a));
                }
            });
        }
    }
}
