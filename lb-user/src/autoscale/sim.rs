//! Replays a trace against a policy, second by second.

use std::{collections::VecDeque, fmt::Write as _};

use super::{History, Policy, Schedule, Trace};

/// The simulated pool.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The per-backend load the pool is sized for ("above target" is measured against it).
    pub target_per_backend: f64,
    /// Seconds from a scale-out decision until the new backend serves.
    pub provisioning_delay_s: u64,
    /// Seconds a removed backend keeps serving (draining) before its capacity is gone.
    pub drain_delay_s: u64,
    /// The fewest backends (also given to the policy's limits by the CLI).
    pub min: u32,
    /// The most backends.
    pub max: u32,
    /// Backends serving at the start.
    pub initial: u32,
    /// Keep one [`SimPoint`] every this many seconds (the metrics use every second).
    pub record_every_s: u64,
    /// Samples the policy's [`History`] holds.
    pub history_capacity: usize,
    /// Scheduled capacity windows, evaluated each second at `epoch + t`.
    pub schedule: Schedule,
    /// The unix time of the trace's second 0. 0 (the default) reads the trace's timestamps as
    /// unix seconds; the shipped traces count from 0 and are given one (e.g. a Monday) to put
    /// a schedule's RFC 3339 times on them.
    pub epoch: i64,
}

impl SimConfig {
    /// Defaults: 5 min provisioning, 1 min drain, 1..=1000 backends, 1 to start, a point a
    /// minute, an hour of history.
    pub fn new(target_per_backend: f64) -> Self {
        Self {
            target_per_backend,
            provisioning_delay_s: 300,
            drain_delay_s: 60,
            min: 1,
            max: 1000,
            initial: 1,
            record_every_s: 60,
            history_capacity: 3600,
            schedule: Schedule::default(),
            epoch: 0,
        }
    }
}

/// The pool at one second.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct SimPoint {
    /// Seconds since the start of the trace.
    pub t: u64,
    /// The signal.
    pub load: f64,
    /// Serving backends × target per backend.
    pub capacity: f64,
    /// Backends allocated: serving, provisioning and draining.
    pub allocated: u32,
    /// Backends serving (including draining ones).
    pub serving: u32,
}

/// What a simulation measured.
#[derive(Clone, Debug, PartialEq)]
pub struct SimResult {
    /// The policy's name.
    pub policy: String,
    /// Seconds simulated.
    pub seconds: u64,
    /// Seconds where load / serving backends exceeded the target.
    pub time_above_target_s: u64,
    /// Allocated backends summed over every second, / 60.
    pub backend_minutes: f64,
    /// Decisions that changed the backend count.
    pub actions: u32,
    /// Of which scale-outs.
    pub scale_outs: u32,
    /// The most backends allocated at once.
    pub peak_allocated: u32,
    /// The pool every `record_every_s` seconds.
    pub points: Vec<SimPoint>,
    /// The spans of seconds above target, `[from, to)`.
    pub above_spans: Vec<(u64, u64)>,
}

impl SimResult {
    /// Scaling actions per simulated day.
    pub fn actions_per_day(&self) -> f64 {
        f64::from(self.actions) * 86_400.0 / self.seconds.max(1) as f64
    }

    /// Seconds above target within `[from, to)`.
    pub fn above_target_between(&self, from: u64, to: u64) -> u64 {
        (self.above_spans.iter())
            .map(|&(a, b)| b.min(to).saturating_sub(a.max(from)))
            .sum()
    }

    /// One line: policy, time above target, backend-minutes, actions.
    pub fn summary(&self) -> String {
        format!(
            "{:<10} above target {:>6}s ({:>5.2}%)  backend-minutes {:>9.1}  actions {:>4} ({} out, {} in, {:.1}/day)  peak {} backends",
            self.policy,
            self.time_above_target_s,
            100.0 * self.time_above_target_s as f64 / self.seconds.max(1) as f64,
            self.backend_minutes,
            self.actions,
            self.scale_outs,
            self.actions - self.scale_outs,
            self.actions_per_day(),
            self.peak_allocated,
        )
    }
}

/// Writes the recorded points of several runs (same trace, same recording step) as one CSV:
/// `t,load,<policy>_capacity,<policy>_backends,...`.
pub fn points_csv(results: &[&SimResult]) -> String {
    let mut out = String::from("t,load");
    for r in results {
        let _ = write!(out, ",{0}_capacity,{0}_backends", r.policy);
    }
    out.push('\n');
    let rows = results.iter().map(|r| r.points.len()).min().unwrap_or(0);
    for i in 0..rows {
        let p = results[0].points[i];
        let _ = write!(out, "{},{:.1}", p.t, p.load);
        for r in results {
            let q = r.points[i];
            let _ = write!(out, ",{:.1},{}", q.capacity, q.allocated);
        }
        out.push('\n');
    }
    out
}

/// Replays `trace` (from its first to its last timestamp, one step a second, linear between
/// samples) against `policy`.
///
/// Each second: the signal is pushed to the history, the schedule's bounds are handed to the
/// policy, the policy decides, the decision is
/// carried out (added backends serve after `provisioning_delay_s`; removed ones are the
/// provisioning ones first, then serving ones, which drain for `drain_delay_s` before their
/// capacity is gone), then the second is measured.
pub fn simulate(trace: &Trace, policy: &mut dyn Policy, config: &SimConfig) -> SimResult {
    let (start, end) = trace.span();
    let mut history = History::new(config.history_capacity);
    // Ready times of provisioning backends (increasing), end times of draining ones.
    let mut provisioning: VecDeque<u64> = VecDeque::new();
    let mut draining: VecDeque<u64> = VecDeque::new();
    let mut serving = config.initial.clamp(config.min, config.max.max(config.min));
    let mut result = SimResult {
        policy: policy.name().to_owned(),
        seconds: 0,
        time_above_target_s: 0,
        backend_minutes: 0.0,
        actions: 0,
        scale_outs: 0,
        peak_allocated: 0,
        points: Vec::new(),
        above_spans: Vec::new(),
    };
    let max = config.max.max(config.min);
    // The schedule as one-off windows over the trace, read again only when it can change.
    let unix = |t: u64| config.epoch.saturating_add_unsigned(t);
    let (schedule, edges) = config.schedule.expand(unix(start), unix(end) + 1, 100_000);
    let mut next_edge = 0;
    let mut backend_seconds: u64 = 0;
    for t in start..=end {
        let load = trace.at(t);
        history.push(t, load);
        if !schedule.is_empty() && (t == start || edges.get(next_edge) == Some(&unix(t))) {
            while edges.get(next_edge).is_some_and(|&e| e <= unix(t)) {
                next_edge += 1;
            }
            let bounds = schedule.bounds(unix(t), config.min, max);
            policy.set_scheduled(t, Some(bounds));
        }
        let current = serving + provisioning.len() as u32;
        let decision = policy.decide(t, &history, current);
        if decision.desired > current {
            result.actions += 1;
            result.scale_outs += 1;
            for _ in current..decision.desired {
                provisioning.push_back(t + config.provisioning_delay_s);
            }
        } else if decision.desired < current {
            result.actions += 1;
            let mut remove = current - decision.desired;
            while remove > 0 && provisioning.pop_back().is_some() {
                remove -= 1;
            }
            for _ in 0..remove.min(serving) {
                serving -= 1;
                draining.push_back(t + config.drain_delay_s);
            }
        }
        while provisioning.front().is_some_and(|&r| r <= t) {
            provisioning.pop_front();
            serving += 1;
        }
        while draining.front().is_some_and(|&d| d <= t) {
            draining.pop_front();
        }
        let serving_now = serving + draining.len() as u32;
        let allocated = serving_now + provisioning.len() as u32;
        if load > config.target_per_backend * f64::from(serving_now) {
            result.time_above_target_s += 1;
            match result.above_spans.last_mut() {
                Some((_, end)) if *end == t => *end = t + 1,
                _ => result.above_spans.push((t, t + 1)),
            }
        }
        backend_seconds += u64::from(allocated);
        result.peak_allocated = result.peak_allocated.max(allocated);
        result.seconds += 1;
        if (t - start) % config.record_every_s.max(1) == 0 {
            result.points.push(SimPoint {
                t,
                load,
                capacity: config.target_per_backend * f64::from(serving_now),
                allocated,
                serving: serving_now,
            });
        }
    }
    result.backend_minutes = backend_seconds as f64 / 60.0;
    result
}
