//! Pool limits shared by every policy: bounds, cooldowns and step size, and the bounds a
//! schedule sets for the moment.

use super::{Bounds, Decision};

/// The bounds a policy's decisions are held to.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// The fewest backends.
    pub min: u32,
    /// The most backends.
    pub max: u32,
    /// The most backends added or removed by one decision.
    pub max_step: u32,
    /// Seconds after a scale-out before the next scale-out.
    pub scale_out_cooldown_s: u64,
    /// Seconds after any scaling action before a scale-in.
    pub scale_in_cooldown_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min: 1,
            max: 1000,
            max_step: 50,
            scale_out_cooldown_s: 60,
            scale_in_cooldown_s: 300,
        }
    }
}

/// Applies [`Limits`] to what a policy wants and remembers the last actions for the cooldowns.
#[derive(Clone, Debug)]
pub struct Limiter {
    limits: Limits,
    last_out: Option<u64>,
    last_action: Option<u64>,
    /// The bounds a schedule sets now, if any window is in force.
    scheduled: Option<Bounds>,
}

impl Limiter {
    /// A limiter that has seen no action yet.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            last_out: None,
            last_action: None,
            scheduled: None,
        }
    }

    /// The bounds in force: the limits', or those a schedule set.
    pub fn bounds(&self) -> (u32, u32) {
        let (min, max) = (self.limits.min, self.limits.max.max(self.limits.min));
        match &self.scheduled {
            Some(b) => (
                b.min.clamp(min, max),
                b.max.clamp(b.min.clamp(min, max), max),
            ),
            None => (min, max),
        }
    }

    /// Takes the bounds a schedule sets at `now` (`None`: no window in force). When a raised
    /// minimum falls, the scale-in cooldown starts: the pool comes down through the normal
    /// scale-in path, not at the second a window ends.
    pub fn set_scheduled(&mut self, now: u64, bounds: Option<Bounds>) {
        let before = self.bounds().0;
        self.scheduled = bounds.filter(|b| b.reason.is_some());
        if self.bounds().0 < before {
            self.last_action = Some(now);
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The time of the last action, if any.
    pub fn last_action(&self) -> Option<u64> {
        self.last_action
    }

    /// Turns a wish into a decision: clamps `wanted` to `[min, max]` (the scheduled ones when
    /// a window is in force), holds during cooldowns (except to bring a pool outside
    /// `[min, max]` back inside), limits the step, and records the action. A wish the schedule
    /// overrides gets the schedule's reason.
    pub fn apply(&mut self, now: u64, current: u32, wanted: u32, reason: String) -> Decision {
        let (min, max) = self.bounds();
        let l = &self.limits;
        let clamped = wanted.clamp(min, max);
        let by_schedule = (clamped > wanted && min > l.min) || (clamped < wanted && max < l.max);
        let reason = match &self.scheduled {
            Some(Bounds {
                reason: Some(why), ..
            }) if by_schedule => why.clone(),
            _ => reason,
        };
        let wanted = clamped;
        let out_of_bounds = current < min || current > max;
        let step = l.max_step.max(1);
        let desired = if wanted > current {
            let cooling = self
                .last_out
                .is_some_and(|t| now < t + l.scale_out_cooldown_s);
            if cooling && !out_of_bounds {
                return Decision::hold(current, format!("scale-out cooldown ({reason})"));
            }
            wanted.min(current.saturating_add(step)).max(min)
        } else if wanted < current {
            let cooling = self
                .last_action
                .is_some_and(|t| now < t + l.scale_in_cooldown_s);
            if cooling && !out_of_bounds {
                return Decision::hold(current, format!("scale-in cooldown ({reason})"));
            }
            wanted.max(current.saturating_sub(step)).min(max)
        } else {
            return Decision::hold(current, reason);
        };
        if desired > current {
            self.last_out = Some(now);
        }
        if desired != current {
            self.last_action = Some(now);
        }
        Decision { desired, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_steps_and_cooldowns() {
        let mut l = Limiter::new(Limits {
            min: 2,
            max: 10,
            max_step: 3,
            scale_out_cooldown_s: 10,
            scale_in_cooldown_s: 100,
        });
        assert_eq!(l.apply(0, 2, 50, "x".into()).desired, 5);
        assert_eq!(l.apply(5, 5, 50, "x".into()).desired, 5, "out cooldown");
        assert_eq!(l.apply(10, 5, 50, "x".into()).desired, 8);
        assert_eq!(l.apply(20, 8, 50, "x".into()).desired, 10, "max");
        assert_eq!(l.apply(100, 10, 0, "x".into()).desired, 10, "in cooldown");
        assert_eq!(l.apply(120, 10, 0, "x".into()).desired, 7);
        assert_eq!(
            l.apply(121, 1, 5, "x".into()).desired,
            4,
            "below min: no cooldown"
        );
    }

    fn raised(min: u32) -> Option<Bounds> {
        Some(Bounds {
            min,
            max: 10,
            reason: Some(format!("schedule \"sale\": min {min}")),
        })
    }

    #[test]
    fn a_scheduled_minimum_scales_out_at_once_and_ends_into_the_scale_in_cooldown() {
        let mut l = Limiter::new(Limits {
            min: 1,
            max: 10,
            max_step: 2,
            scale_out_cooldown_s: 60,
            scale_in_cooldown_s: 100,
        });
        assert_eq!(l.apply(0, 1, 3, "load".into()).desired, 3);
        l.set_scheduled(10, raised(8));
        let d = l.apply(10, 3, 3, "load".into());
        assert_eq!(
            d.desired, 8,
            "to the raised minimum, in the scale-out cooldown, past max-step"
        );
        assert_eq!(d.reason, "schedule \"sale\": min 8");
        let d = l.apply(500, 8, 2, "load 900".into());
        assert_eq!(
            (d.desired, d.reason.as_str()),
            (8, "schedule \"sale\": min 8")
        );
        assert_eq!(
            l.apply(501, 8, 9, "load".into()).desired,
            9,
            "above it: the policy's"
        );
        l.set_scheduled(600, None);
        assert_eq!(l.bounds(), (1, 10));
        assert_eq!(
            l.apply(650, 9, 2, "x".into()).desired,
            9,
            "cooldown from the end"
        );
        assert_eq!(l.apply(700, 9, 2, "x".into()).desired, 7);
        let capped = Some(Bounds {
            min: 1,
            max: 4,
            reason: Some("schedule \"night\": max 4".into()),
        });
        l.set_scheduled(800, capped);
        let d = l.apply(900, 7, 7, "load".into());
        assert_eq!(
            (d.desired, d.reason.as_str()),
            (4, "schedule \"night\": max 4")
        );
    }
}
