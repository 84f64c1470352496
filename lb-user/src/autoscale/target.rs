//! Target tracking: as many backends as the signal needs at the target per-backend load.

use std::collections::VecDeque;

use super::{Bounds, Decision, History, Limiter, Limits, Policy};

/// [`TargetTracking`]'s parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetConfig {
    /// The per-backend load to hold.
    pub target_per_backend: f64,
    /// The signal is averaged over this many seconds before use (1: the latest sample).
    pub metric_window_s: u64,
    /// A lower backend count must have been wanted for this long before scaling in.
    pub scale_in_window_s: u64,
    /// The per-backend signal must have been above the target for this long before scaling out.
    pub scale_out_window_s: u64,
    /// The tolerance band, a fraction of the target (0..0.5): the pool is sized for
    /// `target × (1 − tolerance)` per backend, scales out when the signal goes above `target`
    /// and in when it falls below `target × (1 − 2 × tolerance)`. 0: size for the target exactly.
    pub tolerance: f64,
}

impl TargetConfig {
    /// Defaults: a 30 s average, a 5 min scale-in and no scale-out stabilisation window, a 15%
    /// tolerance band.
    pub fn new(target_per_backend: f64) -> Self {
        Self {
            target_per_backend,
            metric_window_s: 30,
            scale_in_window_s: 300,
            scale_out_window_s: 0,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// No tolerance band: the pool sized for the target exactly.
    pub fn exact(target_per_backend: f64) -> Self {
        Self {
            tolerance: 0.0,
            ..Self::new(target_per_backend)
        }
    }
}

/// The default tolerance band (15%).
pub const DEFAULT_TOLERANCE: f64 = 0.15;

impl TargetConfig {
    /// The per-backend load the pool is sized for.
    fn aim(&self) -> f64 {
        self.target_per_backend * (1.0 - self.tolerance.clamp(0.0, 0.5))
    }
}

/// Target tracking: `desired = ceil(mean signal / (target per backend × (1 − tolerance)))`.
///
/// Scales out once the per-backend signal has been above the target for `scale_out_window_s`;
/// scales in only while it is below the tolerance band, to the highest count wanted during the
/// last `scale_in_window_s` seconds, and only once the policy has watched a whole window (so a
/// lower count must have held for the whole window). Inside the band it holds: noise around a
/// boundary makes no actions.
#[derive(Clone, Debug)]
pub struct TargetTracking {
    config: TargetConfig,
    limiter: Limiter,
    /// Sliding maximum of recent recommendations: `(time, count)`, counts decreasing.
    recent: VecDeque<(u64, u32)>,
    first: Option<u64>,
    /// Since when the per-backend signal has been above the target.
    above_since: Option<u64>,
}

impl TargetTracking {
    /// A policy with no history yet.
    pub fn new(config: TargetConfig, limits: Limits) -> Self {
        Self {
            config,
            limiter: Limiter::new(limits),
            recent: VecDeque::new(),
            first: None,
            above_since: None,
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
        let needed = self.count_for(load);
        let raw = count_for(load, self.config.aim());
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
        if needed > current {
            let since = *self.above_since.get_or_insert(now);
            let window = self.config.scale_out_window_s;
            if since + window > now {
                return (
                    current,
                    format!("above target for {}s of {window}s", now - since),
                );
            }
            return (raw, format!("load {load:.0} at {target:.0}/backend"));
        }
        self.above_since = None;
        let low = target * (1.0 - 2.0 * self.config.tolerance.clamp(0.0, 0.5));
        if raw >= current || load >= low * f64::from(current) {
            return (current, format!("load {load:.0} within the band"));
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

    fn set_scheduled(&mut self, now: u64, bounds: Option<Bounds>) {
        self.limiter.set_scheduled(now, bounds);
    }

    fn decide(&mut self, now: u64, history: &History, current: u32) -> Decision {
        let (wanted, reason) = self.recommend(now, history, current);
        self.limiter.apply(now, current, wanted, reason)
    }
}
