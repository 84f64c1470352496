//! Pool limits shared by every policy: bounds, cooldowns and step size.

use super::Decision;

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
}

impl Limiter {
    /// A limiter that has seen no action yet.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            last_out: None,
            last_action: None,
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

    /// Turns a wish into a decision: clamps `wanted` to `[min, max]`, holds during cooldowns
    /// (except to bring a pool outside `[min, max]` back inside), limits the step, and records
    /// the action.
    pub fn apply(&mut self, now: u64, current: u32, wanted: u32, reason: String) -> Decision {
        let l = &self.limits;
        let max = l.max.max(l.min);
        let wanted = wanted.clamp(l.min, max);
        let out_of_bounds = current < l.min || current > max;
        let step = l.max_step.max(1);
        let desired = if wanted > current {
            let cooling = self
                .last_out
                .is_some_and(|t| now < t + l.scale_out_cooldown_s);
            if cooling && !out_of_bounds {
                return Decision::hold(current, format!("scale-out cooldown ({reason})"));
            }
            wanted.min(current.saturating_add(step)).max(l.min)
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
}
