//! Capacity in units of weight: which backends a pool brings in to cover a gap, and which it
//! lets go for a surplus.
//!
//! The policies decide a capacity (a backend of weight 3 is three units); the pool carries the
//! decision out with whole backends, so it can rarely hit the capacity exactly. The rules:
//!
//! - Scaling out, [`fill`] takes, one at a time, the candidate with the smallest weight that
//!   covers what is still missing; when none does, the heaviest (it closes most of the gap),
//!   and goes on. Among equal weights the earlier candidate wins. A candidate whose weight would
//!   take the capacity above `max` is never taken.
//! - Scaling in, [`trim`] takes the candidates in their order of preference, each whose weight
//!   still fits in the surplus, so the capacity never falls below the desired one. When none
//!   fits, nothing is let go.
//!
//! A candidate of weight 0 is no capacity: neither function takes it.

/// The candidates (by index into `weights`, in the order taken) that bring `gap` more units with
/// at most `room` units added, and the units they add. Short of `gap` only when the candidates
/// run out or would go past `room`.
pub fn fill(weights: &[u32], gap: u32, room: u32) -> (Vec<usize>, u32) {
    let mut taken = Vec::new();
    let mut added = 0u32;
    while added < gap {
        let missing = gap - added;
        let left = room.saturating_sub(added);
        let fits = |i: &usize| {
            let w = weights[*i];
            w > 0 && w <= left && !taken.contains(i)
        };
        let candidates = || (0..weights.len()).filter(fits);
        // The smallest that covers the gap (the first of equals), else the heaviest (the first
        // of equals).
        let covering = candidates()
            .filter(|&i| weights[i] >= missing)
            .min_by_key(|&i| (weights[i], i));
        let pick = covering.or_else(|| candidates().max_by_key(|&i| (weights[i], usize::MAX - i)));
        let Some(i) = pick else {
            break;
        };
        taken.push(i);
        added += weights[i];
    }
    (taken, added)
}

/// The candidates (by index into `weights`, in order of preference) to let go for a surplus of
/// `surplus` units: each whose weight still fits, so no more than `surplus` units go; and the
/// units they take away.
pub fn trim(weights: &[u32], surplus: u32) -> (Vec<usize>, u32) {
    let mut taken = Vec::new();
    let mut removed = 0u32;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0 && w <= surplus - removed {
            taken.push(i);
            removed += w;
        }
    }
    (taken, removed)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_backend_that_covers_the_gap_is_taken() {
        // Standby 10.1.0.3@3 and 10.1.0.4@1.
        assert_eq!(fill(&[3, 1], 3, 10), (vec![0], 3));
        assert_eq!(fill(&[3, 1], 1, 10), (vec![1], 1));
        // A gap of 2: the weight-3 one covers it, the weight-1 one would not.
        assert_eq!(fill(&[3, 1], 2, 10), (vec![0], 3));
        // A gap of 5: the heaviest first, then what covers the rest.
        assert_eq!(fill(&[1, 3, 2, 2], 5, 10), (vec![1, 2], 5));
        // Nothing above max: with 2 units of room, only the weight-1 one.
        assert_eq!(fill(&[3, 1], 3, 2), (vec![1], 1));
        // Weight 0 is no capacity.
        assert_eq!(fill(&[0, 0], 1, 10), (vec![], 0));
        // Equal weights: list order.
        assert_eq!(fill(&[1, 1, 1], 2, 10), (vec![0, 1], 2));
    }

    #[test]
    fn only_what_fits_in_the_surplus_goes() {
        assert_eq!(trim(&[3, 1], 1), (vec![1], 1));
        assert_eq!(trim(&[3, 1], 2), (vec![1], 1));
        assert_eq!(trim(&[3, 1], 4), (vec![0, 1], 4));
        assert_eq!(trim(&[3, 3], 2), (vec![], 0), "none fits: hold");
        assert_eq!(trim(&[0, 2], 3), (vec![1], 2));
    }

    proptest! {
        #[test]
        fn fill_never_passes_room_and_stops_only_when_stuck(
            weights in proptest::collection::vec(0u32..6, 0..8),
            gap in 0u32..20,
            room in 0u32..25,
        ) {
            let (taken, added) = fill(&weights, gap, room);
            prop_assert_eq!(added, taken.iter().map(|&i| weights[i]).sum::<u32>());
            prop_assert!(added <= room);
            let mut unique = taken.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), taken.len());
            if added < gap {
                // Every candidate left is weight 0 or would pass the room.
                for (i, &w) in weights.iter().enumerate() {
                    prop_assert!(taken.contains(&i) || w == 0 || added + w > room);
                }
            } else if let Some(&last) = taken.last() {
                // Every backend taken was needed: without the last, the gap is open.
                prop_assert!(added - weights[last] < gap);
            } else {
                prop_assert_eq!(gap, 0);
            }
        }

        #[test]
        fn trim_never_goes_below_the_desired_capacity(
            weights in proptest::collection::vec(0u32..6, 0..8),
            surplus in 0u32..20,
        ) {
            let (taken, removed) = trim(&weights, surplus);
            prop_assert_eq!(removed, taken.iter().map(|&i| weights[i]).sum::<u32>());
            prop_assert!(removed <= surplus);
            // Nothing left out would still fit.
            for (i, &w) in weights.iter().enumerate() {
                prop_assert!(taken.contains(&i) || w == 0 || removed + w > surplus);
            }
        }
    }
}
