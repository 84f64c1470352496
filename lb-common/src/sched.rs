//! Scheduler choices of the data path, as pure functions: weighted round-robin over a
//! precomputed sequence, uniform random choice, and weighted least-connections by the power of
//! two choices.

/// The cursor after `cursor` in a sequence of `len` entries: `cursor + 1`, or 0 once that
/// reaches `len` (so a cursor left past the end of a shrunk sequence restarts at 0, and `len`
/// 0 gives 0).
#[inline(always)]
pub fn next_cursor(cursor: u32, len: u32) -> u32 {
    let next = cursor.wrapping_add(1);
    if next >= len { 0 } else { next }
}

/// A uniform index in `0..len` from a uniform 32-bit random number (multiply-shift, bias below
/// `len / 2^32`); 0 if `len` is 0.
#[inline(always)]
pub fn random_index(rand: u32, len: u32) -> u32 {
    ((u64::from(rand) * u64::from(len)) >> 32) as u32
}

/// Two uniform, distinct indices in `0..len` from one random number, for the power of two
/// choices; `(0, 0)` if `len < 2`.
///
/// The first is [`random_index`]; the second draws from the `len - 1` other indices using the
/// low half of the same product (the entropy the first draw left unused).
#[inline(always)]
pub fn two_choices(rand: u32, len: u32) -> (u32, u32) {
    if len < 2 {
        return (0, 0);
    }
    let product = u64::from(rand) * u64::from(len);
    let first = (product >> 32) as u32;
    let other = random_index(product as u32, len - 1);
    let second = if other >= first { other + 1 } else { other };
    (first, second)
}

/// A backend's load for least-connections: its open connections and its weight.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Connections currently assigned.
    pub conns: u32,
    /// Relative capacity; 0 means "do not pick unless nothing else".
    pub weight: u32,
}

/// Whether `a` is strictly less loaded than `b`: `a.conns / a.weight < b.conns / b.weight`,
/// compared exactly by cross-multiplying in u64. Weight 0 is more loaded than any nonzero weight.
#[inline(always)]
pub fn less_loaded(a: Load, b: Load) -> bool {
    match (a.weight, b.weight) {
        (0, _) => false,
        (_, 0) => true,
        (aw, bw) => u64::from(a.conns) * u64::from(bw) < u64::from(b.conns) * u64::from(aw),
    }
}

/// The index of the less loaded of two candidates; ties go to the first.
#[inline(always)]
pub fn pick_least_loaded(a_idx: u32, a: Load, b_idx: u32, b: Load) -> u32 {
    if less_loaded(b, a) { b_idx } else { a_idx }
}

#[cfg(feature = "alloc")]
pub use builder::*;

#[cfg(feature = "alloc")]
mod builder {
    use alloc::vec::Vec;

    /// Greatest common divisor.
    fn gcd(mut a: u64, mut b: u64) -> u64 {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }

    /// The weights a round-robin cycle of at most `max_len` entries uses: `weights` unchanged if
    /// their sum fits, else divided by their common divisor, else scaled to sum exactly to
    /// `max_len` by largest-remainder apportionment, so each is within one entry of its exact
    /// share `w * max_len / sum`.
    ///
    /// Nonzero weights stay at least 1. When that forces it (more nonzero weights than room for
    /// their exact shares), the extra entries are taken from the largest scaled weights; with
    /// more nonzero weights than `max_len`, every nonzero weight is 1 and the sum exceeds
    /// `max_len`.
    pub fn fit_weights(weights: &[u32], max_len: usize) -> Vec<u32> {
        let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        // Clamped so that `w * max_len` fits in u64.
        let max_len = max_len.min(u32::MAX as usize) as u64;
        if sum <= max_len {
            return weights.to_vec();
        }
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w)));
        if sum / divisor <= max_len {
            return weights
                .iter()
                .map(|&w| (u64::from(w) / divisor) as u32)
                .collect();
        }
        let mut fitted: Vec<u32> = weights
            .iter()
            .map(|&w| (u64::from(w) * max_len / sum) as u32)
            .collect();
        let given: u64 = fitted.iter().map(|&w| u64::from(w)).sum();
        let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
        by_remainder
            .sort_by_key(|&i| (core::cmp::Reverse(u64::from(weights[i]) * max_len % sum), i));
        for &i in by_remainder.iter().take((max_len - given) as usize) {
            fitted[i] += 1;
        }
        for i in 0..fitted.len() {
            if weights[i] > 0 && fitted[i] == 0 {
                fitted[i] = 1;
                // Give the entry back from the largest weight that can spare one.
                let donor = (0..fitted.len())
                    .filter(|&j| fitted[j] > 1)
                    .max_by_key(|&j| (fitted[j], core::cmp::Reverse(j)));
                if let Some(j) = donor {
                    fitted[j] -= 1;
                }
            }
        }
        fitted
    }

    /// One full cycle of nginx's smooth weighted round-robin over `weights` (as
    /// [`fit_weights`] fits them into `max_len`): a sequence of indices into `weights` where
    /// index `i` appears `w_i` times, spread out (`5, 1, 1` gives `0 0 1 0 2 0 0`). Weight 0 is
    /// never chosen; all weights 0 gives an empty sequence.
    ///
    /// Each step adds every weight to its backend's current value, picks the largest current
    /// value (the first on ties) and subtracts the total from it.
    pub fn smooth_wrr_sequence(weights: &[u32], max_len: usize) -> Vec<u32> {
        let weights = fit_weights(weights, max_len);
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = alloc::vec![0i64; weights.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best: Option<(usize, i64)> = None;
            for (i, (cur, &w)) in current.iter_mut().zip(&weights).enumerate() {
                if w == 0 {
                    continue;
                }
                *cur += i64::from(w);
                if best.is_none_or(|(_, value)| *cur > value) {
                    best = Some((i, *cur));
                }
            }
            if let Some((i, _)) = best {
                current[i] -= total;
                sequence.push(i as u32);
            }
        }
        sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cursor_wraps() {
        assert_eq!(next_cursor(0, 3), 1);
        assert_eq!(next_cursor(1, 3), 2);
        assert_eq!(next_cursor(2, 3), 0);
        assert_eq!(next_cursor(7, 3), 0); // stale after the sequence shrank
        assert_eq!(next_cursor(u32::MAX, 3), 0);
        assert_eq!(next_cursor(0, 0), 0);
        assert_eq!(next_cursor(0, 1), 0);
    }

    #[test]
    fn random_index_covers_the_range_evenly() {
        assert_eq!(random_index(u32::MAX, 0), 0);
        assert_eq!(random_index(0, 7), 0);
        assert_eq!(random_index(u32::MAX, 7), 6);
        // Evenly spaced inputs hit every index equally often.
        let mut counts = [0u32; 10];
        for i in 0..10_000u64 {
            let rand = (i << 32).div_ceil(10_000);
            counts[random_index(rand as u32, 10) as usize] += 1;
        }
        assert_eq!(counts, [1000; 10]);
    }

    #[test]
    fn less_loaded_compares_conns_per_weight() {
        let l = |conns, weight| Load { conns, weight };
        assert!(less_loaded(l(2, 3), l(1, 1))); // 0.67 < 1
        assert!(!less_loaded(l(1, 1), l(2, 3)));
        assert!(!less_loaded(l(2, 2), l(1, 1))); // equal: not strictly less
        assert!(less_loaded(
            l(u32::MAX, u32::MAX),
            l(u32::MAX, u32::MAX - 1)
        ));
        assert!(less_loaded(l(1000, 1), l(0, 0))); // weight 0 loses to any weight
        assert!(!less_loaded(l(0, 0), l(1000, 1)));
        assert!(!less_loaded(l(0, 0), l(0, 0)));
        assert_eq!(pick_least_loaded(4, l(1, 1), 9, l(1, 1)), 4); // tie: first
        assert_eq!(pick_least_loaded(4, l(0, 0), 9, l(0, 0)), 4);
        assert_eq!(pick_least_loaded(4, l(2, 1), 9, l(1, 1)), 9);
        assert_eq!(pick_least_loaded(4, l(0, 0), 9, l(50, 1)), 9);
        assert_eq!(pick_least_loaded(4, l(50, 1), 9, l(0, 0)), 4);
    }

    #[test]
    fn two_choices_degenerate_lengths() {
        assert_eq!(two_choices(12345, 0), (0, 0));
        assert_eq!(two_choices(12345, 1), (0, 0));
        for rand in [0, 1, u32::MAX / 2, u32::MAX] {
            let (a, b) = two_choices(rand, 2);
            assert_eq!(a + b, 1);
        }
    }

    /// Every ordered pair of distinct indices comes up about equally often.
    #[test]
    fn two_choices_pairs_are_uniform() {
        let len = 5u32;
        let mut counts = [[0u32; 5]; 5];
        let mut x = 0x2545_f491_u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let (a, b) = two_choices(x, len);
            counts[a as usize][b as usize] += 1;
        }
        let expected = 200_000.0 / 20.0;
        for (a, row) in counts.iter().enumerate() {
            for (b, &n) in row.iter().enumerate() {
                if a == b {
                    assert_eq!(n, 0);
                } else {
                    let dev = (f64::from(n) - expected).abs() / expected;
                    assert!(dev < 0.05, "pair ({a}, {b}) drawn {n} times");
                }
            }
        }
    }

    /// Weighted least-connections by two choices, with each pick adding a connection, splits
    /// 100k connections 3:1:1 to within 2 percentage points.
    #[test]
    fn p2c_follows_weights() {
        let weights = [3u32, 1, 1];
        let mut conns = [0u32; 3];
        let mut x = 0x9e37_79b9_u32;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let (a, b) = two_choices(x, 3);
            let load = |i: u32| Load {
                conns: conns[i as usize],
                weight: weights[i as usize],
            };
            let pick = pick_least_loaded(a, load(a), b, load(b));
            conns[pick as usize] += 1;
        }
        for (i, want) in [60.0, 20.0, 20.0].into_iter().enumerate() {
            let share = f64::from(conns[i]) / 1000.0;
            assert!(
                (share - want).abs() <= 2.0,
                "backend {i}: {share}% of picks"
            );
        }
    }

    proptest! {
        #[test]
        fn two_choices_distinct_and_in_range(rand: u32, len in 2..=u32::MAX) {
            let (a, b) = two_choices(rand, len);
            prop_assert!(a < len && b < len);
            prop_assert_ne!(a, b);
        }

        #[test]
        fn random_index_in_range(rand: u32, len in 1..=u32::MAX) {
            prop_assert!(random_index(rand, len) < len);
        }
    }

    #[cfg(feature = "alloc")]
    mod builder {
        use super::super::*;
        use proptest::prelude::*;

        fn counts(sequence: &[u32], n: usize) -> Vec<u32> {
            let mut counts = vec![0; n];
            for &i in sequence {
                counts[i as usize] += 1;
            }
            counts
        }

        #[test]
        fn nginx_example() {
            assert_eq!(smooth_wrr_sequence(&[5, 1, 1], 100), [0, 0, 1, 0, 2, 0, 0]);
        }

        #[test]
        fn zero_weights() {
            assert_eq!(smooth_wrr_sequence(&[], 10), Vec::<u32>::new());
            assert_eq!(smooth_wrr_sequence(&[0, 0], 10), Vec::<u32>::new());
            assert_eq!(smooth_wrr_sequence(&[0, 2, 0, 1], 10), [1, 3, 1]);
        }

        #[test]
        fn common_divisor_is_removed_before_scaling() {
            assert_eq!(fit_weights(&[300, 600, 0], 100), [1, 2, 0]);
            assert_eq!(fit_weights(&[300, 600], 900), [300, 600]);
        }

        #[test]
        fn tiny_weights_keep_one_entry() {
            // Exact shares 9.98, 0.01, 0.01: the two small ones get an entry each.
            assert_eq!(fit_weights(&[1000, 1, 1], 10), [8, 1, 1]);
            // More nonzero weights than room: one entry each, longer than asked.
            assert_eq!(smooth_wrr_sequence(&[5, 0, 7, 9], 2), [0, 2, 3]);
        }

        proptest! {
            /// When the cycle fits, index i appears exactly w_i times.
            #[test]
            fn counts_equal_weights_when_they_fit(weights in prop::collection::vec(0..20u32, 0..20)) {
                let sum: u32 = weights.iter().sum();
                let sequence = smooth_wrr_sequence(&weights, sum as usize);
                prop_assert_eq!(counts(&sequence, weights.len()), weights);
            }

            /// Smooth: in every prefix of `k` entries, each index has been picked within two
            /// picks of its proportional count `k * w_i / W` (a plain `a a a a b` order of large
            /// weights is off by nearly `w_i`; nginx's order measured stays below 1.25).
            #[test]
            fn picks_are_spread_out(weights in prop::collection::vec(1..20u32, 1..10)) {
                let sequence = smooth_wrr_sequence(&weights, 10_000);
                let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
                let mut picked = vec![0u64; weights.len()];
                for (k, &i) in sequence.iter().enumerate() {
                    picked[i as usize] += 1;
                    for (&w, &c) in weights.iter().zip(&picked) {
                        let (exact, got) = ((k as u64 + 1) * u64::from(w), c * total);
                        prop_assert!(
                            exact.abs_diff(got) < 2 * total,
                            "{:?}: {:?} at {}", weights, sequence, k
                        );
                    }
                }
            }

            /// Scaled down to max_len with every exact share at least one entry, each index
            /// appears within one entry of its exact share `w * len / sum`.
            #[test]
            fn scaling_is_within_one_entry(
                weights in prop::collection::vec(1_000..=10_000u32, 1..20),
                max_len in 200..2_000usize,
            ) {
                let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
                let sequence = smooth_wrr_sequence(&weights, max_len);
                prop_assert!(sequence.len() <= max_len);
                let len = sequence.len() as u64;
                for (&w, &c) in weights.iter().zip(&counts(&sequence, weights.len())) {
                    let (exact, got) = (u64::from(w) * len, u64::from(c) * sum);
                    prop_assert!(exact.abs_diff(got) < sum, "{} -> {} of {}", w, c, len);
                }
            }

            /// Scaled down to max_len, each index appears within one entry of its exact share
            /// (unless some weight's exact share is below one entry and it takes its minimum
            /// of one entry from the largest); every nonzero weight keeps at least one entry.
            #[test]
            fn scaling_keeps_proportions(
                weights in prop::collection::vec(0..=10_000u32, 1..50),
                max_len in 50..2_000usize,
            ) {
                let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
                let sequence = smooth_wrr_sequence(&weights, max_len);
                let counts = counts(&sequence, weights.len());
                if sum <= max_len as u64 {
                    prop_assert_eq!(counts, weights);
                    return Ok(());
                }
                prop_assert!(sequence.len() <= max_len);
                let len = sequence.len() as u64;
                let below_one = weights
                    .iter()
                    .any(|&w| w > 0 && u64::from(w) * (max_len as u64) < sum);
                for (&w, &c) in weights.iter().zip(&counts) {
                    prop_assert_eq!(w == 0, c == 0, "{} -> {}", w, c);
                    if !below_one {
                        // |c - w * len / sum| < 1, cross-multiplied.
                        let (exact, got) = (u64::from(w) * len, u64::from(c) * sum);
                        prop_assert!(exact.abs_diff(got) < sum, "{} -> {} of {}", w, c, len);
                    }
                }
            }
        }
    }
}
