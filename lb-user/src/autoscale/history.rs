//! A bounded per-second history of one signal.

use std::collections::VecDeque;

/// The last `capacity` samples of a signal, one per second, oldest first.
///
/// Samples are pushed with strictly increasing timestamps; gaps are allowed (consumers that need
/// continuity check the timestamps).
#[derive(Clone, Debug)]
pub struct History {
    samples: VecDeque<(u64, f64)>,
    capacity: usize,
    pushed: u64,
}

impl History {
    /// An empty history keeping at most `capacity` samples (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            samples: VecDeque::with_capacity(capacity),
            capacity,
            pushed: 0,
        }
    }

    /// Records `value` at second `t`; a sample at or before the latest one replaces nothing and
    /// is ignored.
    pub fn push(&mut self, t: u64, value: f64) {
        if self.latest().is_some_and(|(last, _)| t <= last) {
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((t, value));
        self.pushed += 1;
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<(u64, f64)> {
        self.samples.back().copied()
    }

    /// Samples held now.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Samples ever pushed (including those the ring has dropped).
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// The samples held, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, f64)> + '_ {
        self.samples.iter().copied()
    }

    /// The samples newer than `after` (all of them for `None`), oldest first.
    pub fn since(&self, after: Option<u64>) -> impl Iterator<Item = (u64, f64)> + '_ {
        let start = after.map_or(0, |a| self.samples.partition_point(|&(t, _)| t <= a));
        self.samples.range(start..).copied()
    }

    /// The mean of the samples of the last `seconds` seconds (up to the newest sample), or
    /// `None` if there is none.
    pub fn mean_last(&self, seconds: u64) -> Option<f64> {
        let (now, _) = self.latest()?;
        let from = now.saturating_sub(seconds.max(1) - 1);
        let (sum, n) = self
            .samples
            .iter()
            .rev()
            .take_while(|&&(t, _)| t >= from)
            .fold((0.0, 0u32), |(s, n), &(_, v)| (s + v, n + 1));
        Some(sum / f64::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_samples() {
        let mut h = History::new(3);
        for t in 0..5 {
            h.push(t, t as f64);
        }
        h.push(4, 100.0); // not newer: ignored
        assert_eq!(h.iter().collect::<Vec<_>>(), [(2, 2.0), (3, 3.0), (4, 4.0)]);
        assert_eq!(h.pushed(), 5);
        assert_eq!(h.since(Some(2)).count(), 2);
        assert_eq!(h.since(None).count(), 3);
        assert_eq!(h.mean_last(2), Some(3.5));
        assert_eq!(h.mean_last(100), Some(3.0));
    }
}
