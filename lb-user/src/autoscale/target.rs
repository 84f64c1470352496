//! Target tracking: as many backends as the signal needs at the target per-backend load.

use std::collections::VecDeque;

use super::{Decision, History, Limiter, Limits, Policy};

/// [`TargetTracking`]'s parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetConfig {
    /// The per-backend load to hold.
    pub target_per_backend: f64,
    /// The signal is averaged over this many seconds before use (1: the latest sample).
    pub metric_window_s: u64,
    /// A lower backend count must have been wanted for this long before scaling in.
    pub scale_in_window_s: u64,
}

impl TargetConfig {
    /// Defaults: a 30 s average, a 5 min scale-in stabilisation window.
    pub fn new(target_per_backend: f64) -> Self {
        Self {
            target_per_backend,
            metric_window_s: 30,
            scale_in_window_s: 300,
        }
    }
}

/// Target tracking: `desired = ceil(mean signal / target per backend)`.
///
/// Scales out as soon as more backends are wanted; scales in only to the highest count wanted
/// during the last `scale_in_window_s` seconds, and only once the policy has watched a whole
/// window (so a lower count must have held for the whole window).
#[derive(Clone, Debug)]
pub struct TargetTracking {
    config: TargetConfig,
    limiter: Limiter,
    /// Sliding maximum of recent recommendations: `(time, count)`, counts decreasing.
    recent: VecDeque<(u64, u32)>,
    first: Option<u64>,
}

impl TargetTracking {
    /// A policy with no history yet.
    pub fn new(config: TargetConfig, limits: Limits) -> Self {
        Self {
            config,
            limiter: Limiter::new(limits),
            recent: VecDeque::new(),
            first: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TargetConfig {
        &self.config
    }

    /// The backend count for a load, at the target.
    pub fn count_for(&self, load: f64) -> u32 {
        count_for(load, self.config.target_per_backend)
    }

    /// What target tracking wants before limits and cooldowns, with the reason; updates the
    /// stabilisation window (call once per second).
    pub fn recommend(&mut self, now: u64, history: &History, current: u32) -> (u32, String) {
        let Some(load) = history.mean_last(self.config.metric_window_s) else {
            return (current, "no samples".into());
        };
        let raw = self.count_for(load);
        self.first.get_or_insert(now);
        while self.recent.back().is_some_and(|&(_, c)| c <= raw) {
            self.recent.pop_back();
        }
        self.recent.push_back((now, raw));
        let window = self.config.scale_in_window_s;
        while self.recent.front().is_some_and(|&(t, _)| t + window <= now) {
            self.recent.pop_front();
        }
        let target = self.config.target_per_backend;
        if raw >= current {
            return (raw, format!("load {load:.0} at {target:.0}/backend"));
        }
        let watched = self.first.is_some_and(|f| f + window <= now + 1);
        if !watched {
            return (current, "scale-in window not yet watched".into());
        }
        let highest = self.recent.front().map_or(raw, |&(_, c)| c);
        (
            highest.min(current),
            format!("load {load:.0} at {target:.0}/backend, highest in {window}s"),
        )
    }
}

/// `ceil(load / target)`, at least 0.
pub(super) fn count_for(load: f64, target: f64) -> u32 {
    if load <= 0.0 || target <= 0.0 {
        return 0;
    }
    // A hair of tolerance so that exactly 8.0 backends' worth is 8, not 9 after rounding error.
    (load / target - 1e-9).ceil().min(f64::from(u32::MAX)) as u32
}

impl Policy for TargetTracking {
    fn name(&self) -> &str {
        "target"
    }

    fn decide(&mut self, now: u64, history: &History, current: u32) -> Decision {
        let (wanted, reason) = self.recommend(now, history, current);
        self.limiter.apply(now, current, wanted, reason)
    }
}
