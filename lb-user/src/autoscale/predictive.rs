//! Predictive scaling: forecast the signal and provision for the peak ahead.

use super::{
    Bounds, Decision, History, Limiter, Limits, Policy,
    target::{TargetConfig, TargetTracking, count_for},
};

/// Holt-Winters smoothing factors.
#[derive(Clone, Debug, PartialEq)]
pub struct HoltWintersParams {
    /// Level smoothing (0..1).
    pub alpha: f64,
    /// Trend smoothing (0..1).
    pub beta: f64,
    /// Seasonal smoothing (0..1).
    pub gamma: f64,
    /// Robustness: a one-step error beyond this many RMS errors is clipped to it before it
    /// updates the level, trend and season (and the RMS itself), so that a one-off event (a
    /// flash sale) is not learnt as part of the season. 0: no clipping.
    pub clip: f64,
}

impl HoltWintersParams {
    /// The defaults: α 0.3, β 0.01, γ 0.3, errors clipped at 3 RMS.
    pub fn robust() -> Self {
        Self {
            alpha: 0.3,
            beta: 0.01,
            gamma: 0.3,
            clip: 3.0,
        }
    }
}

/// Additive Holt-Winters on a bucketed series with a season of `season` buckets.
///
/// Initialised from the first season (level: its mean, trend: 0, seasonal terms: deviations
/// from the mean), then updated bucket by bucket. Each update sees the observation with its
/// one-step error clipped to `clip` × the smoothed RMS error (a Huber-style robust update): an
/// outlier moves the model only as much as an ordinary large error would.
#[derive(Clone, Debug)]
pub struct HoltWinters {
    params: HoltWintersParams,
    season: usize,
    level: f64,
    trend: f64,
    seasonal: Vec<f64>,
    warmup: Vec<f64>,
    seen: u64,
    sq_error: Option<f64>,
}

impl HoltWinters {
    /// A model with a season of `season` buckets (at least 2).
    pub fn new(season: usize, params: HoltWintersParams) -> Self {
        Self {
            params,
            season: season.max(2),
            level: 0.0,
            trend: 0.0,
            seasonal: Vec::new(),
            warmup: Vec::new(),
            seen: 0,
            sq_error: None,
        }
    }

    fn observe(&mut self, index: u64, y: f64) -> Option<f64> {
        self.seen += 1;
        let m = self.season;
        if self.seasonal.is_empty() {
            self.warmup.push(y);
            if self.warmup.len() == m {
                self.level = self.warmup.iter().sum::<f64>() / m as f64;
                // The first season ends at `index`: bucket `index - m + 1 + k` has phase
                // `(index - m + 1 + k) % m`.
                self.seasonal = vec![0.0; m];
                let start = index + 1 - m as u64;
                for (k, v) in self.warmup.drain(..).enumerate() {
                    self.seasonal[((start + k as u64) % m as u64) as usize] = v - self.level;
                }
            }
            return None;
        }
        let HoltWintersParams {
            alpha,
            beta,
            gamma,
            clip,
        } = self.params;
        let i = (index % m as u64) as usize;
        let s = self.seasonal[i];
        let predicted = self.level + self.trend + s;
        let mut error = y - predicted;
        if let Some(sq) = self.sq_error
            && clip > 0.0
        {
            let bound = clip * sq.sqrt();
            error = error.clamp(-bound, bound);
        }
        let y = predicted + error;
        let level = alpha * (y - s) + (1.0 - alpha) * (self.level + self.trend);
        self.trend = beta * (level - self.level) + (1.0 - beta) * self.trend;
        self.level = level;
        self.seasonal[i] = gamma * (y - level) + (1.0 - gamma) * s;
        Some(error)
    }

    fn forecast(&self, last: u64, h: u64) -> Option<f64> {
        if self.seasonal.is_empty() {
            return None;
        }
        let i = ((last + h) % self.season as u64) as usize;
        Some(self.level + h as f64 * self.trend + self.seasonal[i])
    }
}

/// A linear trend model (Holt's double exponential smoothing) on a bucketed series.
#[derive(Clone, Debug)]
pub struct Trend {
    alpha: f64,
    beta: f64,
    state: Option<(f64, f64)>,
    seen: u64,
    sq_error: Option<f64>,
}

impl Trend {
    /// A model with level smoothing `alpha` and trend smoothing `beta`.
    pub fn new(alpha: f64, beta: f64) -> Self {
        Self {
            alpha,
            beta,
            state: None,
            seen: 0,
            sq_error: None,
        }
    }

    fn observe(&mut self, y: f64) -> Option<f64> {
        self.seen += 1;
        let Some((level, trend)) = self.state else {
            self.state = Some((y, 0.0));
            return None;
        };
        let error = y - (level + trend);
        let next = self.alpha * y + (1.0 - self.alpha) * (level + trend);
        let trend = self.beta * (next - level) + (1.0 - self.beta) * trend;
        self.state = Some((next, trend));
        Some(error)
    }
}

/// The forecasting model of a [`Predictive`] policy.
#[derive(Clone, Debug)]
pub enum Forecaster {
    /// Seasonal: additive Holt-Winters.
    HoltWinters(HoltWinters),
    /// Level and trend only.
    Trend(Trend),
}

impl Forecaster {
    /// Feeds the mean of bucket `index`.
    fn observe(&mut self, index: u64, y: f64) {
        let error = match self {
            Forecaster::HoltWinters(m) => m.observe(index, y),
            Forecaster::Trend(m) => m.observe(y),
        };
        if let Some(e) = error {
            let sq = match self {
                Forecaster::HoltWinters(m) => &mut m.sq_error,
                Forecaster::Trend(m) => &mut m.sq_error,
            };
            *sq = Some(sq.map_or(e * e, |s| 0.98 * s + 0.02 * e * e));
        }
    }

    /// The forecast for bucket `last + h`, `last` being the last bucket fed.
    fn forecast(&self, last: u64, h: u64) -> Option<f64> {
        match self {
            Forecaster::HoltWinters(m) => m.forecast(last, h),
            Forecaster::Trend(m) => m.state.map(|(l, b)| l + h as f64 * b),
        }
    }

    /// Buckets fed so far.
    fn seen(&self) -> u64 {
        match self {
            Forecaster::HoltWinters(m) => m.seen,
            Forecaster::Trend(m) => m.seen,
        }
    }

    /// The smoothed root-mean-square one-step error.
    fn rms_error(&self) -> f64 {
        match self {
            Forecaster::HoltWinters(m) => m.sq_error,
            Forecaster::Trend(m) => m.sq_error,
        }
        .map_or(0.0, f64::sqrt)
    }
}

/// [`Predictive`]'s parameters.
#[derive(Clone, Debug)]
pub struct PredictiveConfig {
    /// The reactive part (and the fallback).
    pub target: TargetConfig,
    /// The model.
    pub forecaster: Forecaster,
    /// The model sees the signal as means over buckets of this many seconds.
    pub bucket_s: u64,
    /// Provision for the forecast peak over this many seconds ahead (at least the
    /// provisioning delay).
    pub horizon_s: u64,
    /// Target tracking alone until the model has seen this many seconds.
    pub min_history_s: u64,
    /// Add this many one-step RMS errors to the forecast (headroom for noise the model
    /// cannot predict).
    pub error_margin: f64,
}

impl PredictiveConfig {
    /// A daily Holt-Winters model on 5 min buckets, a horizon of the lead time plus 10 min,
    /// one RMS error of headroom, active after two days.
    pub fn daily(target_per_backend: f64, lead_s: u64) -> Self {
        let bucket_s = 300;
        Self {
            target: TargetConfig::new(target_per_backend),
            forecaster: Forecaster::HoltWinters(HoltWinters::new(
                (86_400 / bucket_s) as usize,
                HoltWintersParams::robust(),
            )),
            bucket_s,
            horizon_s: lead_s + 600,
            min_history_s: 2 * 86_400,
            error_margin: 1.0,
        }
    }

    /// A trend model on 1 min buckets, active after 10 min.
    pub fn trend(target_per_backend: f64, lead_s: u64) -> Self {
        Self {
            target: TargetConfig::new(target_per_backend),
            forecaster: Forecaster::Trend(Trend::new(0.5, 0.2)),
            bucket_s: 60,
            horizon_s: lead_s + 120,
            min_history_s: 600,
            error_margin: 1.0,
        }
    }
}

/// Predictive scaling: `desired = max(target tracking, ceil(forecast peak over the horizon /
/// target))`; target tracking alone until the model has seen `min_history_s`.
#[derive(Clone, Debug)]
pub struct Predictive {
    config: PredictiveConfig,
    reactive: TargetTracking,
    limiter: Limiter,
    seen: Option<u64>,
    /// The bucket being filled: index, sum, samples.
    bucket: Option<(u64, f64, u32)>,
    last_bucket: Option<u64>,
}

impl Predictive {
    /// A policy with no history yet.
    pub fn new(config: PredictiveConfig, limits: Limits) -> Self {
        Self {
            reactive: TargetTracking::new(config.target.clone(), limits.clone()),
            config,
            limiter: Limiter::new(limits),
            seen: None,
            bucket: None,
            last_bucket: None,
        }
    }

    fn feed(&mut self, history: &History) {
        let bucket_s = self.config.bucket_s.max(1);
        for (t, v) in history.since(self.seen) {
            let index = t / bucket_s;
            match &mut self.bucket {
                Some((i, sum, n)) if *i == index => {
                    *sum += v;
                    *n += 1;
                }
                slot => {
                    if let Some((i, sum, n)) = slot.take() {
                        self.config.forecaster.observe(i, sum / f64::from(n));
                        self.last_bucket = Some(i);
                    }
                    *slot = Some((index, v, 1));
                }
            }
            self.seen = Some(t);
        }
    }

    /// The forecast peak over the horizon plus the error margin, once the model is active.
    pub fn forecast_peak(&self) -> Option<f64> {
        let c = &self.config;
        let bucket_s = c.bucket_s.max(1);
        if c.forecaster.seen() * bucket_s < c.min_history_s {
            return None;
        }
        let last = self.last_bucket?;
        let now = self.seen?;
        // From the bucket now being filled to the one holding now + horizon.
        let first = now / bucket_s - last;
        let end = (now + c.horizon_s) / bucket_s - last;
        let peak = (first.max(1)..=end.max(1))
            .filter_map(|h| c.forecaster.forecast(last, h))
            .fold(f64::NEG_INFINITY, f64::max);
        Some(peak + c.error_margin * c.forecaster.rms_error())
    }
}

impl Policy for Predictive {
    fn name(&self) -> &str {
        "predictive"
    }

    fn set_scheduled(&mut self, now: u64, bounds: Option<Bounds>) {
        self.limiter.set_scheduled(now, bounds);
    }

    fn decide(&mut self, now: u64, history: &History, current: u32) -> Decision {
        self.feed(history);
        let (reactive, why) = self.reactive.recommend(now, history, current);
        let (wanted, reason) = match self.forecast_peak() {
            Some(peak) => {
                let ahead = count_for(peak, self.config.target.target_per_backend);
                if ahead > reactive {
                    (
                        ahead,
                        format!("forecast peak {peak:.0} within {}s", self.config.horizon_s),
                    )
                } else {
                    (reactive, why)
                }
            }
            None => (reactive, format!("{why} (model warming up)")),
        };
        self.limiter.apply(now, current, wanted, reason)
    }

    fn forecast(&self) -> Option<f64> {
        self.forecast_peak()
    }
}
