//! Scheduled capacity: windows of time that raise a pool's minimum or cap its maximum.
//!
//! A window is one-off (`start`, `end`) or recurring (a cron expression, matched in UTC or a
//! named time zone, and a `duration`). Its `min` holds from `lead` before each start until the
//! end, so that the backends are serving when the window opens; its `max` holds from the start
//! to the end.
//! Times are unix seconds (UTC); [`Schedule::bounds`] gives a pool's effective minimum and
//! maximum at a time: the highest minimum and the lowest cap of the windows in force, never
//! outside the pool's own `[min, max]`. Should a raised minimum ever meet a lower cap (config
//! checking refuses windows that could), the minimum wins: capacity over cost.

use std::fmt;

use croner::Cron;
use jiff::{Timestamp, Zoned, tz::TimeZone};
use serde::{Deserialize, Serialize};

/// Cron occurrences looked at when checking two recurring windows for conflicts.
const CONFLICT_OCCURRENCES: usize = 2_000;
/// How far ahead conflicts between recurring windows are looked for (a year and a day: every
/// month and weekday combination).
pub const CONFLICT_HORIZON_S: i64 = 366 * 86_400;

/// When a window is in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum When {
    /// Once, from `start` to `end` (unix seconds, end excluded).
    Once { start: i64, end: i64 },
    /// From each time the cron expression matches (in `tz`, UTC by default), for
    /// `duration_s`.
    Every {
        cron: Box<Cron>,
        /// The expression as written.
        expression: String,
        duration_s: u64,
        tz: TimeZone,
    },
}

/// One `[[vip.autoscale.schedule]]` entry, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The name shown in reasons and status (`window N` when none was given).
    pub name: String,
    pub when: When,
    /// The pool's minimum during the window.
    pub min: Option<u32>,
    /// The pool's maximum during the window.
    pub max: Option<u32>,
    /// Seconds before each start from which `min` holds.
    pub lead_s: u64,
}

/// A parsed cron expression, or why not.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    expression.parse::<Cron>().map_err(|e| e.to_string())
}

/// Parses an RFC 3339 time (`2026-03-04T20:00:00Z`) to unix seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    text.parse::<Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))
}

/// Unix seconds as RFC 3339, UTC.
pub fn format_time(t: i64) -> String {
    Timestamp::from_second(t).map_or_else(|_| t.to_string(), |ts| ts.to_string())
}

fn zoned(t: i64, tz: &TimeZone) -> Option<Zoned> {
    Timestamp::from_second(t)
        .ok()
        .map(|ts| ts.to_zoned(tz.clone()))
}

/// One occurrence of a window: what `autoscale status` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occurrence {
    pub name: String,
    /// Unix seconds.
    pub start: i64,
    /// Unix seconds, excluded.
    pub end: i64,
    /// Unix seconds: `start − lead`, from when the minimum holds.
    pub provision_from: i64,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

impl fmt::Display for Occurrence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} .. {}",
            self.name,
            format_time(self.start),
            format_time(self.end)
        )?;
        if let Some(min) = self.min {
            write!(f, " min {min}")?;
        }
        if let Some(max) = self.max {
            write!(f, " max {max}")?;
        }
        Ok(())
    }
}

impl Window {
    fn occurrence(&self, start: i64, end: i64) -> Occurrence {
        Occurrence {
            name: self.name.clone(),
            start,
            end,
            provision_from: start.saturating_sub_unsigned(self.lead_s),
            min: self.min,
            max: self.max,
        }
    }

    /// The occurrence in force at `t` (from `start − lead` to `end`), if any.
    pub fn around(&self, t: i64) -> Option<Occurrence> {
        match &self.when {
            When::Once { start, end } => {
                let o = self.occurrence(*start, *end);
                (o.provision_from <= t && t < o.end).then_some(o)
            }
            When::Every {
                cron,
                duration_s,
                tz,
                ..
            } => {
                // The latest start at or before t + lead: later occurrences have not begun
                // provisioning, and if this one has ended, so have the earlier ones (same
                // duration).
                let probe = zoned(t.saturating_add_unsigned(self.lead_s), tz)?;
                let start = cron.find_previous_occurrence(&probe, true).ok()?;
                let start = start.timestamp().as_second();
                let o = self.occurrence(start, start.saturating_add_unsigned(*duration_s));
                (t < o.end).then_some(o)
            }
        }
    }

    /// The first occurrence starting after `t`.
    pub fn next_after(&self, t: i64) -> Option<Occurrence> {
        match &self.when {
            When::Once { start, end } => (*start > t).then(|| self.occurrence(*start, *end)),
            When::Every {
                cron,
                duration_s,
                tz,
                ..
            } => {
                let start = cron.find_next_occurrence(&zoned(t, tz)?, false).ok()?;
                let start = start.timestamp().as_second();
                Some(self.occurrence(start, start.saturating_add_unsigned(*duration_s)))
            }
        }
    }

    /// The occurrences whose `[start − lead, end)` meets `[from, to)`, at most `limit` (of
    /// occurrences overlapping each other, the one in force at `from` stands for them all).
    pub fn occurrences(&self, from: i64, to: i64, limit: usize) -> Vec<Occurrence> {
        let mut out = Vec::new();
        let mut next = self.around(from).or_else(|| self.next_after(from));
        while let Some(o) = next {
            if o.provision_from >= to || out.len() >= limit {
                break;
            }
            next = self.next_after(o.start);
            out.push(o);
        }
        out
    }
}

/// The bounds in force at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
    /// Why, when a window changed them: `schedule "sale": min 20`.
    pub reason: Option<String>,
}

/// A pool's schedule: its windows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub windows: Vec<Window>,
}

impl Schedule {
    /// A schedule of these windows.
    pub fn new(windows: Vec<Window>) -> Self {
        Self { windows }
    }

    /// No windows.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The effective bounds at `t` of a pool configured with `[min, max]`: the highest
    /// minimum of the windows in force (from `lead` before their start), the lowest cap of
    /// those open, both held inside `[min, max]`, the minimum winning over a lower cap.
    pub fn bounds(&self, t: i64, min: u32, max: u32) -> Bounds {
        let max = max.max(min);
        let (mut lo, mut hi) = (min, max);
        let (mut lo_from, mut hi_from) = (None, None);
        for w in &self.windows {
            let Some(o) = w.around(t) else { continue };
            if let Some(m) = o.min.filter(|&m| m > lo) {
                lo = m.min(max);
                lo_from = Some(o.name.clone());
            }
            if let Some(m) = o.max.filter(|&m| m < hi && t >= o.start) {
                hi = m.max(min);
                hi_from = Some(o.name.clone());
            }
        }
        hi = hi.max(lo);
        let mut parts = Vec::new();
        if let Some(name) = lo_from {
            parts.push(format!("schedule {name:?}: min {lo}"));
        }
        if let Some(name) = hi_from.filter(|_| hi < max) {
            parts.push(format!("schedule {name:?}: max {hi}"));
        }
        Bounds {
            min: lo,
            max: hi,
            reason: (!parts.is_empty()).then(|| parts.join(", ")),
        }
    }

    /// The same schedule over `[from, to)` as one-off windows, one per occurrence (at most
    /// `limit` per window), with the times at which its bounds can change, sorted: cheap to
    /// read every second, where a cron search per window each second is not.
    pub fn expand(&self, from: i64, to: i64, limit: usize) -> (Schedule, Vec<i64>) {
        let mut windows = Vec::new();
        let mut edges = Vec::new();
        for w in &self.windows {
            for o in w.occurrences(from, to, limit) {
                edges.extend([o.provision_from, o.start, o.end]);
                windows.push(Window {
                    name: o.name,
                    when: When::Once {
                        start: o.start,
                        end: o.end,
                    },
                    min: o.min,
                    max: o.max,
                    lead_s: w.lead_s,
                });
            }
        }
        edges.sort_unstable();
        edges.dedup();
        (Schedule::new(windows), edges)
    }

    /// The occurrences in force at `t` (including those in their lead time).
    pub fn active(&self, t: i64) -> Vec<Occurrence> {
        let mut out: Vec<_> = self.windows.iter().filter_map(|w| w.around(t)).collect();
        out.sort_by_key(|o| o.start);
        out
    }

    /// The occurrence of any window that starts next after `t`.
    pub fn next(&self, t: i64) -> Option<Occurrence> {
        (self.windows.iter())
            .filter_map(|w| w.next_after(t))
            .min_by_key(|o| o.start)
    }

    /// Pairs of windows (by index) that can be in force at once with one's minimum above the
    /// other's maximum (a minimum from `lead` before its start, a cap from its start), with the
    /// first time they are. A
    /// one-off window is compared over its own span; two recurring windows over
    /// [`CONFLICT_HORIZON_S`] from `reference`, at most [`CONFLICT_OCCURRENCES`] each.
    pub fn conflicts(&self, reference: i64) -> Vec<(usize, usize, i64)> {
        let span = |w: &Window| match &w.when {
            When::Once { start, end } => Some((start.saturating_sub_unsigned(w.lead_s), *end)),
            When::Every { .. } => None,
        };
        let clash =
            |x: &Window, y: &Window| matches!((x.min, y.max), (Some(lo), Some(hi)) if lo > hi);
        let mut out = Vec::new();
        for (i, a) in self.windows.iter().enumerate() {
            for (j, b) in self.windows.iter().enumerate().skip(i + 1) {
                if !clash(a, b) && !clash(b, a) {
                    continue;
                }
                let (from, to) = match (span(a), span(b)) {
                    (Some(x), Some(y)) => (x.0.max(y.0), x.1.min(y.1)),
                    (Some(x), None) | (None, Some(x)) => x,
                    (None, None) => (reference, reference.saturating_add(CONFLICT_HORIZON_S)),
                };
                if from >= to {
                    continue;
                }
                let xs = a.occurrences(from, to, CONFLICT_OCCURRENCES);
                let ys = b.occurrences(from, to, CONFLICT_OCCURRENCES);
                // A minimum holds from its lead, a cap from its start.
                let both = |lo: &Occurrence, hi: &Occurrence| {
                    let s = lo.provision_from.max(hi.start);
                    let bites = matches!((lo.min, hi.max), (Some(l), Some(h)) if l > h);
                    (bites && s < lo.end.min(hi.end)).then_some(s)
                };
                let meet = (xs.iter())
                    .flat_map(|x| ys.iter().filter_map(move |y| both(x, y).or(both(y, x))))
                    .min();
                if let Some(t) = meet {
                    out.push((i, j, t));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const H: i64 = 3600;
    const DAY: i64 = 86_400;

    fn once(name: &str, start: i64, end: i64, min: Option<u32>, max: Option<u32>) -> Window {
        Window {
            name: name.into(),
            when: When::Once { start, end },
            min,
            max,
            lead_s: 600,
        }
    }

    fn every(name: &str, cron: &str, duration_s: u64, min: Option<u32>) -> Window {
        Window {
            name: name.into(),
            when: When::Every {
                cron: Box::new(parse_cron(cron).unwrap()),
                expression: cron.into(),
                duration_s,
                tz: TimeZone::UTC,
            },
            min,
            max: None,
            lead_s: 600,
        }
    }

    #[test]
    fn times_and_crons_parse() {
        assert_eq!(parse_time("1970-01-02T00:00:00Z"), Ok(DAY));
        assert_eq!(parse_time("1970-01-01T02:00:00+01:00"), Ok(H));
        assert!(parse_time("tomorrow").is_err());
        assert!(parse_cron("0 21 * * *").is_ok());
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("every day").is_err());
        assert_eq!(format_time(DAY), "1970-01-02T00:00:00Z");
    }

    #[test]
    fn a_one_off_window_raises_the_minimum_from_its_lead() {
        let s = Schedule::new(vec![once("sale", 10 * H, 12 * H, Some(20), None)]);
        let at = |t| s.bounds(t, 2, 50);
        assert_eq!(at(10 * H - 601).min, 2, "before the lead");
        let b = at(10 * H - 600);
        assert_eq!((b.min, b.max), (20, 50), "from start - lead");
        assert_eq!(b.reason.as_deref(), Some("schedule \"sale\": min 20"));
        assert_eq!(at(12 * H - 1).min, 20);
        assert_eq!(
            at(12 * H),
            Bounds {
                min: 2,
                max: 50,
                reason: None
            }
        );
        assert_eq!(s.bounds(11 * H, 2, 8).min, 8, "never above the pool's max");
    }

    #[test]
    fn a_cap_holds_from_the_start_and_a_minimum_wins_over_it() {
        let s = Schedule::new(vec![
            once("night", 0, 8 * H, None, Some(3)),
            once("batch", 2 * H, 3 * H, Some(5), None),
        ]);
        let b = s.bounds(H, 1, 10);
        assert_eq!((b.min, b.max), (1, 3));
        assert_eq!(b.reason.as_deref(), Some("schedule \"night\": max 3"));
        let b = s.bounds(2 * H, 1, 10);
        assert_eq!((b.min, b.max), (5, 5), "the minimum wins");
        assert_eq!(s.bounds(H, 4, 10).max, 4, "never below the pool's min");
    }

    #[test]
    fn a_cron_window_recurs_with_its_lead() {
        // Every day at 21:00 UTC for 90 minutes.
        let s = Schedule::new(vec![every("evening", "0 21 * * *", 5400, Some(9))]);
        for day in [0, 1, 30] {
            let start = day * DAY + 21 * H;
            assert_eq!(s.bounds(start - 601, 1, 20).min, 1, "day {day}");
            assert_eq!(s.bounds(start - 600, 1, 20).min, 9, "day {day}");
            assert_eq!(s.bounds(start + 5399, 1, 20).min, 9, "day {day}");
            assert_eq!(s.bounds(start + 5400, 1, 20).min, 1, "day {day}");
        }
        let active = s.active(21 * H);
        assert_eq!(active.len(), 1);
        assert_eq!((active[0].start, active[0].end), (21 * H, 21 * H + 5400));
        let next = s.next(21 * H).unwrap();
        assert_eq!(next.start, DAY + 21 * H);
        assert_eq!(
            next.to_string(),
            "\"evening\" 1970-01-02T21:00:00Z .. 1970-01-02T22:30:00Z min 9"
        );
    }

    #[test]
    fn a_cron_window_can_follow_a_time_zone() {
        let paris = TimeZone::get("Europe/Paris").expect("the system's time zone database");
        let w = Window {
            when: When::Every {
                cron: Box::new(parse_cron("0 21 * * *").unwrap()),
                expression: "0 21 * * *".into(),
                duration_s: 3600,
                tz: paris,
            },
            ..every("evening", "0 21 * * *", 3600, Some(5))
        };
        // 21:00 in Paris: 20:00 UTC in winter, 19:00 UTC in summer.
        let winter = parse_time("2026-03-04T00:00:00Z").unwrap();
        assert_eq!(
            w.next_after(winter).map(|o| format_time(o.start)),
            Some("2026-03-04T20:00:00Z".into())
        );
        let summer = parse_time("2026-07-01T00:00:00Z").unwrap();
        assert_eq!(
            w.next_after(summer).map(|o| format_time(o.start)),
            Some("2026-07-01T19:00:00Z".into())
        );
        assert!(w.around(summer + 19 * H - 600).is_some(), "from its lead");
    }

    #[test]
    fn occurrences_list_every_start_in_a_range() {
        let w = every("hourly", "0 * * * *", 600, Some(2));
        let starts: Vec<_> = w
            .occurrences(0, 3 * H, 100)
            .iter()
            .map(|o| o.start)
            .collect();
        // The lead puts 03:00's occurrence in the range too.
        assert_eq!(starts, [0, H, 2 * H, 3 * H]);
        assert_eq!(w.occurrences(0, DAY, 5).len(), 5);
    }

    #[test]
    fn an_expanded_schedule_has_the_same_bounds() {
        let s = Schedule::new(vec![
            every("evening", "30 20 * * *", 7200, Some(9)),
            Window {
                max: Some(3),
                ..every("night", "0 2 * * *", 3 * 3600, None)
            },
            once("sale", DAY + 21 * H, DAY + 23 * H, Some(15), None),
        ]);
        let (e, edges) = s.expand(0, 3 * DAY, 100);
        assert_eq!(e.windows.len(), 3 + 3 + 1);
        assert!(edges.windows(2).all(|w| w[0] < w[1]));
        for t in (0..3 * DAY).step_by(300) {
            assert_eq!(e.bounds(t, 1, 20), s.bounds(t, 1, 20), "at {t}");
        }
    }

    #[test]
    fn conflicts_are_windows_in_force_together_with_min_above_max() {
        let s = Schedule::new(vec![
            once("sale", 10 * H, 12 * H, Some(20), None),
            once("night", 0, 10 * H - 900, None, Some(5)),
            once("later", 13 * H, 14 * H, None, Some(5)),
        ]);
        // The sale's lead (600 s) does not reach the night's end: no conflict.
        assert!(s.conflicts(0).is_empty());
        let s = Schedule::new(vec![
            once("sale", 10 * H, 12 * H, Some(20), None),
            once("night", 0, 10 * H - 300, None, Some(5)),
        ]);
        assert_eq!(s.conflicts(0), [(0, 1, 10 * H - 600)]);
        // Every Friday evening vs the 1st of each month: they meet on a Friday the 1st.
        let s = Schedule::new(vec![
            every("friday", "0 20 * * FRI", 3 * 3600, Some(10)),
            Window {
                max: Some(4),
                ..every("first", "0 0 1 * *", DAY as u64, None)
            },
        ]);
        let found = s.conflicts(0);
        assert_eq!(found.len(), 1);
        let t = zoned(found[0].2, &TimeZone::UTC).unwrap();
        assert_eq!((t.day(), t.weekday()), (1, jiff::civil::Weekday::Friday));
        // Min below the other's max: no conflict whatever the overlap.
        let s = Schedule::new(vec![
            every("a", "0 * * * *", 1800, Some(3)),
            Window {
                max: Some(4),
                ..every("b", "30 * * * *", 1800, None)
            },
        ]);
        assert!(s.conflicts(0).is_empty());
    }

    proptest! {
        #[test]
        fn effective_bounds_stay_inside_the_pool(
            min in 1u32..20,
            extra in 0u32..20,
            windows in prop::collection::vec(
                (0i64..40, 1i64..20, prop::option::of(0u32..50), prop::option::of(0u32..50)),
                0..5,
            ),
            t in -5i64..70,
        ) {
            let max = min + extra;
            let s = Schedule::new(
                windows
                    .iter()
                    .enumerate()
                    .map(|(i, &(start, len, lo, hi))| {
                        once(&format!("w{i}"), start * H, (start + len) * H, lo, hi)
                    })
                    .collect(),
            );
            let b = s.bounds(t * H, min, max);
            prop_assert!(min <= b.min && b.min <= b.max && b.max <= max, "{b:?}");
            // The raised minimum is the highest active one, held to the pool's max.
            let highest = s
                .active(t * H)
                .iter()
                .filter_map(|o| o.min)
                .max()
                .map_or(min, |m| m.clamp(min, max));
            prop_assert_eq!(b.min, highest);
        }
    }
}
