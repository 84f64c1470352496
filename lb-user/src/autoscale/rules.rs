//! Step rules: "average per backend above 800 for 30 s: add 2".

use super::{Bounds, Decision, History, Limiter, Limits, Policy};

/// Which side of the threshold a rule watches.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// Per-backend signal strictly above the threshold.
    Above,
    /// Per-backend signal strictly below the threshold.
    Below,
}

/// One step rule on the per-backend signal (signal / allocated backends).
#[derive(Clone, Debug, PartialEq)]
pub struct StepRule {
    /// Above or below.
    pub comparison: Comparison,
    /// The per-backend threshold.
    pub threshold: f64,
    /// Seconds the condition must hold, every sample of them.
    pub duration_s: u64,
    /// Backends to add (positive) or remove (negative) when the rule fires.
    pub change: i32,
}

impl StepRule {
    fn holds(&self, per_backend: f64) -> bool {
        match self.comparison {
            Comparison::Above => per_backend > self.threshold,
            Comparison::Below => per_backend < self.threshold,
        }
    }
}

/// Step rules, checked in order every second; the first whose condition has held for its whole
/// duration fires (then the limits' cooldowns apply).
///
/// A condition's run starts over after every scaling action: the samples it counts were all
/// taken with the pool as it is now. A gap in the samples also breaks a run.
#[derive(Clone, Debug)]
pub struct RulesPolicy {
    rules: Vec<StepRule>,
    limiter: Limiter,
    /// Per rule, the first second of its current run of samples meeting the condition.
    runs: Vec<Option<u64>>,
    seen: Option<u64>,
}

impl RulesPolicy {
    /// A policy with these rules.
    pub fn new(rules: Vec<StepRule>, limits: Limits) -> Self {
        let runs = vec![None; rules.len()];
        Self {
            rules,
            limiter: Limiter::new(limits),
            runs,
            seen: None,
        }
    }

    /// Default rules for a target per-backend load `t`: above 1.5·t for 30 s: +5;
    /// above 0.9·t for 60 s: +2; below 0.5·t for 5 min: -1.
    pub fn for_target(target: f64, limits: Limits) -> Self {
        let rule = |comparison, k: f64, duration_s, change| StepRule {
            comparison,
            threshold: k * target,
            duration_s,
            change,
        };
        Self::new(
            vec![
                rule(Comparison::Above, 1.5, 30, 5),
                rule(Comparison::Above, 0.9, 60, 2),
                rule(Comparison::Below, 0.5, 300, -1),
            ],
            limits,
        )
    }

    /// The rules.
    pub fn rules(&self) -> &[StepRule] {
        &self.rules
    }
}

impl Policy for RulesPolicy {
    fn name(&self) -> &str {
        "rules"
    }

    fn set_scheduled(&mut self, now: u64, bounds: Option<Bounds>) {
        self.limiter.set_scheduled(now, bounds);
    }

    fn decide(&mut self, now: u64, history: &History, current: u32) -> Decision {
        let backends = f64::from(current.max(1));
        for (t, value) in history.since(self.seen) {
            let continuous = self.seen.is_none_or(|s| t == s + 1);
            for (rule, run) in self.rules.iter().zip(&mut self.runs) {
                *run = if !rule.holds(value / backends) {
                    None
                } else if continuous {
                    Some(run.unwrap_or(t))
                } else {
                    Some(t)
                };
            }
            self.seen = Some(t);
        }
        // Holds go through the limiter too: a scheduled minimum applies whatever the rules.
        let Some(seen) = self.seen else {
            return self
                .limiter
                .apply(now, current, current, "no samples".into());
        };
        let fired = self
            .rules
            .iter()
            .zip(&self.runs)
            .enumerate()
            .find(|(_, (rule, run))| run.is_some_and(|r| seen + 1 - r >= rule.duration_s.max(1)));
        let Some((i, (rule, _))) = fired else {
            return (self.limiter).apply(now, current, current, "no rule fired".into());
        };
        let wanted = current.saturating_add_signed(rule.change);
        let side = match rule.comparison {
            Comparison::Above => "above",
            Comparison::Below => "below",
        };
        let reason = format!(
            "rule {i}: {side} {:.0}/backend for {}s",
            rule.threshold, rule.duration_s
        );
        let decision = self.limiter.apply(now, current, wanted, reason);
        if decision.desired != current {
            self.runs.iter_mut().for_each(|r| *r = None);
        }
        decision
    }
}
