//! Autoscaling, the pure part: signals, policies and a simulator.
//!
//! Everything here is kernel-free and deterministic. A VIP's load signal (active connections,
//! new connections/s, packets/s or bytes/s: to this module just an `f64` per second) is kept in a
//! bounded [`History`]. A [`Policy`] looks at that history every second and returns a
//! [`Decision`]: how many backends the pool should have. Three policies exist:
//!
//! - [`RulesPolicy`]: step rules on the per-backend signal ("above 800 for 30 s: add 2").
//! - [`TargetTracking`]: `ceil(signal / target per backend)`, scaling out at once and in only
//!   after a stabilisation window.
//! - [`Predictive`]: forecasts the signal (Holt-Winters or a trend model) and provisions for the
//!   forecast peak over a horizon, never below what target tracking asks for.
//!
//! All of them respect the pool's [`Limits`] (min/max, separate cooldowns, a maximum step).
//! Scale-in is always "drain first": a decision to go from 10 to 9 backends asks the agent to
//! drain one backend and remove it once drained.
//!
//! A pool's [`Schedule`] raises its minimum or caps its maximum over windows of time (one-off
//! or cron); the caller reads it each second and hands the bounds to the policy
//! ([`Policy::set_scheduled`]), whose [`Limiter`] holds its decisions to them.
//!
//! [`simulate`] replays a [`Trace`] against a policy, modelling provisioning and drain delays,
//! and reports time above target, backend-minutes and scaling actions; [`svg::chart`] draws the
//! result.

pub mod capacity;
mod history;
mod jobs;
mod limits;
pub mod live;
mod predictive;
mod rules;
pub mod schedule;
mod sim;
mod target;
mod trace;

pub mod cli;
pub mod config;
pub mod svg;
pub mod traces;

#[cfg(test)]
mod tests;

use std::{fmt, str::FromStr};

pub use history::History;
pub use limits::{Limiter, Limits};
pub use predictive::{
    Forecaster, HoltWinters, HoltWintersParams, Predictive, PredictiveConfig, Trend,
};
pub use rules::{Comparison, RulesPolicy, StepRule};
pub use schedule::{Bounds, Schedule};
pub use sim::{SimConfig, SimPoint, SimResult, simulate};
pub use target::{TargetConfig, TargetTracking};
pub use trace::{Trace, TraceError};

/// What a policy wants: the capacity the pool should have, and why.
///
/// Capacity is counted in units of weight: a backend of weight 1 is one unit, one of weight 3
/// three. With backends of weight 1 (the default) it is the number of backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The desired capacity (allocated, including backends still provisioning).
    pub desired: u32,
    /// A human-readable explanation ("hold", "rule 0: above 800/backend for 30s", ...).
    pub reason: String,
}

impl Decision {
    /// Keep the pool as it is.
    pub fn hold(current: u32, reason: impl Into<String>) -> Self {
        Self {
            desired: current,
            reason: reason.into(),
        }
    }
}

/// A scaling policy for one VIP.
///
/// `decide` is called once per second, after the second's sample was pushed to `history`;
/// `current` is the allocated capacity (the weights of the backends serving or provisioning,
/// not draining), and "per backend" figures are per unit of weight. The
/// policy assumes its decision is carried out (it starts its cooldowns when `desired` differs
/// from `current`).
pub trait Policy: Send {
    /// The policy's short name (`rules`, `target`, `predictive`).
    fn name(&self) -> &str;
    /// The desired capacity at `now` (seconds).
    fn decide(&mut self, now: u64, history: &History, current: u32) -> Decision;
    /// The load the policy expects to provision for, if it forecasts (shown in status).
    fn forecast(&self) -> Option<f64> {
        None
    }
    /// Takes the bounds the pool's schedule sets at `now` (`None`: no window in force); called
    /// before `decide`.
    fn set_scheduled(&mut self, now: u64, bounds: Option<Bounds>);
}

/// The policies by name, as the CLI and configs spell them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// [`RulesPolicy`].
    Rules,
    /// [`TargetTracking`].
    Target,
    /// [`Predictive`].
    Predictive,
}

impl PolicyKind {
    /// Every policy, in the order reports list them.
    pub const ALL: [PolicyKind; 3] = [
        PolicyKind::Target,
        PolicyKind::Rules,
        PolicyKind::Predictive,
    ];

    /// The policy's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Rules => "rules",
            PolicyKind::Target => "target",
            PolicyKind::Predictive => "predictive",
        }
    }

    /// The policy with the defaults for a pool: `target_per_backend` is the per-backend load to
    /// hold, `lead_s` how far ahead a backend must be asked for (its provisioning delay).
    pub fn build(self, target_per_backend: f64, lead_s: u64, limits: Limits) -> Box<dyn Policy> {
        match self {
            PolicyKind::Rules => Box::new(RulesPolicy::for_target(target_per_backend, limits)),
            PolicyKind::Target => Box::new(TargetTracking::new(
                TargetConfig::new(target_per_backend),
                limits,
            )),
            PolicyKind::Predictive => Box::new(Predictive::new(
                PredictiveConfig::daily(target_per_backend, lead_s),
                limits,
            )),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown policy {s:?} (rules, target, predictive)"))
    }
}
