//! What `[vip.autoscale]` asks for, once parsed: the signal, the policy and its settings, the
//! pool. `crate::config` reads it from the file; the live autoscaler and the simulator build
//! their policies from it.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use lb_common::maglev::MAX_WEIGHT;
use serde::{Deserialize, Serialize};

use super::{
    Comparison, Forecaster, HoltWinters, HoltWintersParams, Limits, Policy, PolicyKind, Predictive,
    PredictiveConfig, RulesPolicy, Schedule, StepRule, TargetConfig, TargetTracking, Trend,
};

/// The load signal a policy scales on, per VIP (and per backend for rules).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Signal {
    /// Open tracked connections.
    #[default]
    ActiveConnections,
    /// New connections per second.
    NewConnections,
    /// Packets per second (client to VIP).
    Packets,
    /// Bytes per second (client to VIP).
    Bytes,
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 4] = [
        Signal::ActiveConnections,
        Signal::NewConnections,
        Signal::Packets,
        Signal::Bytes,
    ];

    /// The name configs use.
    pub fn name(self) -> &'static str {
        match self {
            Signal::ActiveConnections => "active-connections",
            Signal::NewConnections => "new-connections",
            Signal::Packets => "packets",
            Signal::Bytes => "bytes",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            format!("unknown signal {s:?}: expected active-connections, new-connections, packets or bytes")
        })
    }
}

/// The model of the `predictive` policy.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum ForecastModel {
    /// Seasonal (additive Holt-Winters).
    #[default]
    HoltWinters,
    /// Level and trend.
    Trend,
}

impl ForecastModel {
    pub fn name(self) -> &'static str {
        match self {
            ForecastModel::HoltWinters => "holt-winters",
            ForecastModel::Trend => "trend",
        }
    }
}

/// A `[[vip.autoscale.rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleConfig {
    /// Above or below the threshold.
    pub comparison: Comparison,
    /// Per-backend signal.
    pub threshold: u64,
    /// How long the condition must hold.
    pub duration: Duration,
    /// Backends to add (negative: remove).
    pub change: i32,
}

/// A backend the autoscaler may bring in, with its capacity in units of weight: a standby
/// entry or a `scale-up` answer, written `ADDR:PORT` (weight 1) or `ADDR:PORT@WEIGHT`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WeightedBackend {
    pub addr: SocketAddr,
    /// `1..=MAX_WEIGHT`: a backend of weight 0 would add no capacity.
    pub weight: u32,
}

impl WeightedBackend {
    /// A backend of weight 1.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, weight: 1 }
    }

    /// Parses `ADDR:PORT` or `ADDR:PORT@WEIGHT`; `bare` makes the address of a text without a
    /// port (a hook's `10.1.0.9`), or refuses it.
    pub fn parse_with(
        text: &str,
        bare: impl Fn(&str) -> Option<SocketAddr>,
    ) -> Result<Self, WeightedError> {
        let (addr_text, weight) = match text.rsplit_once('@') {
            Some((a, w)) => {
                let weight: u64 = w
                    .parse()
                    .map_err(|_| WeightedError::Weight(format!("weight {w:?} is not a number")))?;
                if !(1..=u64::from(MAX_WEIGHT)).contains(&weight) {
                    return Err(WeightedError::Weight(format!(
                        "weight {weight} is out of range 1..={MAX_WEIGHT}"
                    )));
                }
                (a, weight as u32)
            }
            None => (text, 1),
        };
        let addr = addr_text
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| bare(addr_text))
            .ok_or_else(|| WeightedError::Address(addr_text.to_owned()))?;
        Ok(Self { addr, weight })
    }
}

/// Why a [`WeightedBackend`] did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightedError {
    /// The part before `@` is no address.
    Address(String),
    /// The weight is not a number in `1..=MAX_WEIGHT`.
    Weight(String),
}

impl FromStr for WeightedBackend {
    type Err = WeightedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_with(s, |_| None)
    }
}

/// `ADDR:PORT`, with `@WEIGHT` unless the weight is 1.
impl fmt::Display for WeightedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weight == 1 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}@{}", self.addr, self.weight)
        }
    }
}

/// A VIP's `[vip.autoscale]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoscaleConfig {
    pub policy: PolicyKind,
    pub signal: Signal,
    /// The signal to hold per unit of weight (a weight-1 backend is one unit); `None` only for
    /// `rules` with rules of its own.
    pub target_per_backend: Option<u64>,
    /// Capacity bounds and step, in units of weight like the policies' decisions.
    pub min: u32,
    pub max: u32,
    pub max_step: u32,
    pub scale_out_cooldown: Duration,
    pub scale_in_cooldown: Duration,
    pub metric_window: Duration,
    pub scale_in_window: Duration,
    pub scale_out_window: Duration,
    /// The tolerance band around the target, in percent (0..=50).
    pub tolerance_percent: u32,
    pub rules: Vec<RuleConfig>,
    pub forecast: ForecastModel,
    pub season: Duration,
    pub bucket: Duration,
    pub horizon: Duration,
    /// `None`: two seasons (holt-winters) or ten buckets (trend).
    pub min_history: Option<Duration>,
    pub standby: Vec<WeightedBackend>,
    /// Program and arguments; empty: no hook.
    pub scale_up: Vec<String>,
    /// Program and arguments (the backend's address is appended); empty: no hook.
    pub scale_down: Vec<String>,
    pub hook_timeout: Duration,
    pub provision_timeout: Duration,
    pub drain_timeout: Duration,
    pub dry_run: bool,
    /// Scheduled capacity: windows that raise the minimum or cap the maximum.
    pub schedule: Schedule,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        Self {
            policy: PolicyKind::Target,
            signal: Signal::default(),
            target_per_backend: None,
            min: 1,
            max: 10,
            max_step: 2,
            scale_out_cooldown: Duration::from_secs(30),
            scale_in_cooldown: Duration::from_secs(300),
            metric_window: Duration::from_secs(30),
            scale_in_window: Duration::from_secs(300),
            scale_out_window: Duration::ZERO,
            tolerance_percent: (super::target::DEFAULT_TOLERANCE * 100.0) as u32,
            rules: Vec::new(),
            forecast: ForecastModel::HoltWinters,
            season: Duration::from_secs(86_400),
            bucket: Duration::from_secs(300),
            horizon: Duration::from_secs(600),
            min_history: None,
            standby: Vec::new(),
            scale_up: Vec::new(),
            scale_down: Vec::new(),
            hook_timeout: Duration::from_secs(30),
            provision_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(600),
            dry_run: false,
            schedule: Schedule::default(),
        }
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

impl AutoscaleConfig {
    /// Bounds, cooldowns and step.
    pub fn limits(&self) -> Limits {
        Limits {
            min: self.min,
            max: self.max,
            max_step: self.max_step,
            scale_out_cooldown_s: secs(self.scale_out_cooldown),
            scale_in_cooldown_s: secs(self.scale_in_cooldown),
        }
    }

    /// A fresh policy as configured.
    pub fn policy(&self) -> Box<dyn Policy> {
        let limits = self.limits();
        let target = self.target_per_backend.unwrap_or(1) as f64;
        let target_config = TargetConfig {
            target_per_backend: target,
            metric_window_s: secs(self.metric_window).max(1),
            scale_in_window_s: secs(self.scale_in_window),
            scale_out_window_s: secs(self.scale_out_window),
            tolerance: f64::from(self.tolerance_percent) / 100.0,
        };
        match self.policy {
            PolicyKind::Rules if self.rules.is_empty() => {
                Box::new(RulesPolicy::for_target(target, limits))
            }
            PolicyKind::Rules => Box::new(RulesPolicy::new(
                self.rules
                    .iter()
                    .map(|r| StepRule {
                        comparison: r.comparison,
                        threshold: r.threshold as f64,
                        duration_s: secs(r.duration).max(1),
                        change: r.change,
                    })
                    .collect(),
                limits,
            )),
            PolicyKind::Target => Box::new(TargetTracking::new(target_config, limits)),
            PolicyKind::Predictive => {
                let bucket_s = secs(self.bucket).max(1);
                let (forecaster, default_history) = match self.forecast {
                    ForecastModel::HoltWinters => (
                        Forecaster::HoltWinters(HoltWinters::new(
                            (secs(self.season) / bucket_s) as usize,
                            HoltWintersParams::robust(),
                        )),
                        2 * secs(self.season),
                    ),
                    ForecastModel::Trend => {
                        (Forecaster::Trend(Trend::new(0.5, 0.2)), 10 * bucket_s)
                    }
                };
                Box::new(Predictive::new(
                    PredictiveConfig {
                        target: target_config,
                        forecaster,
                        bucket_s,
                        horizon_s: secs(self.horizon),
                        min_history_s: self.min_history.map_or(default_history, secs),
                        error_margin: 1.0,
                    },
                    limits,
                ))
            }
        }
    }
}
