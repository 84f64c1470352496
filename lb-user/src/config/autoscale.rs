//! The `[vip.autoscale]` table: how the agent grows and shrinks a VIP's backend pool.
//!
//! ```toml
//! [vip.autoscale]
//! policy = "target"                 # rules | target | predictive
//! signal = "active-connections"     # active-connections | new-connections | packets | bytes
//! target-per-backend = 800          # the signal to hold per unit of weight (per second for
//!                                   #   rates); a backend of weight 1 is one unit
//! min = 1                           # capacity in units of weight, 1..=65536
//! max = 10
//! max-step = 2                      # most capacity added or removed by one decision
//! scale-out-cooldown = "30s"        # after a scale-out, before the next one ("0s": none)
//! scale-in-cooldown = "5m"          # after any action, before a scale-in
//! metric-window = "30s"             # target, predictive: the signal is averaged over this
//! scale-in-window = "5m"            # target, predictive: a lower count must hold this long
//! scale-out-window = "0s"           # target, predictive: above target this long to scale out
//! tolerance-percent = 15            # target, predictive: size for target x (1 - 15%), scale in
//!                                   #   only below target x (1 - 2 x 15%): 0..=50
//! forecast = "holt-winters"         # predictive: holt-winters | trend
//! season = "24h"                    # holt-winters: the season's length
//! bucket = "5m"                     # predictive: the model sees means over buckets this long
//! horizon = "10m"                   # predictive: provision for the forecast peak this far ahead
//! min-history = "48h"               # predictive: target tracking alone until then
//! standby = ["10.1.0.3:80", "10.1.0.4:80@3"]  # servers that exist but are out of rotation,
//!                                   #   ADDR:PORT@WEIGHT (weight 1..=10000, default 1)
//! scale-up = ["/usr/local/bin/new-backend", "web"]  # prints ADDR:PORT[@WEIGHT] of a new backend
//! scale-down = ["/usr/local/bin/release-backend"]   # called with ADDR:PORT appended
//! hook-timeout = "30s"
//! provision-timeout = "2m"          # a new backend must pass its health check within this
//! drain-timeout = "10m"             # a drained backend is removed at the latest after this
//! dry-run = false                   # decide and report, change nothing
//!
//! [[vip.autoscale.rule]]            # policy rules only; default rules follow the target
//! above = 1200                      # or below = ...: per-backend signal
//! for = "30s"
//! change = 2                        # backends to add (negative: remove)
//!
//! [[vip.autoscale.schedule]]        # scheduled capacity, times in UTC
//! name = "sale"                     # shown in reasons and status (default: schedule[N])
//! start = "2026-03-04T20:45:00Z"    # a one-off window: RFC 3339 start and end
//! end = "2026-03-04T22:45:00Z"
//! # cron = "0 21 * * FRI"           # or a recurring one: a cron expression and a duration
//! # duration = "2h"
//! # timezone = "Europe/Paris"       # the cron's time zone (IANA name; default UTC)
//! min = 20                          # the pool's minimum during the window, and/or
//! # max = 4                         #   its maximum
//! lead = "10m"                      # min holds from this long before each start
//!                                   #   (default: provision-timeout)
//! ```

use std::{net::SocketAddr, time::Duration};

use jiff::tz::TimeZone;
use lb_common::maps::MAX_BACKENDS;
use serde::{Deserialize, Serialize};

use super::{
    BackendConfig, ConfigError, Errors, check_backend_of, field, format_duration, parse_duration,
};
use crate::{
    autoscale::{
        Comparison, PolicyKind, Schedule,
        config::{
            AutoscaleConfig, ForecastModel, RuleConfig, Signal, WeightedBackend, WeightedError,
        },
        schedule::{When, Window, format_time, parse_cron, parse_time},
    },
    balancer::BackendState,
};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAutoscale {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_per_backend: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_step: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_out_cooldown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_in_cooldown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metric_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_in_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_out_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tolerance_percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forecast: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    season: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    horizon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_history: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    standby: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    scale_up: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    scale_down: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hook_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provision_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drain_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dry_run: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rule: Vec<RawRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    schedule: Vec<RawWindow>,
}

/// A `[[vip.autoscale.schedule]]` entry (and a `[[schedule]]` of a simulator's schedule file).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawWindow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lead: Option<String>,
}

/// A simulator's schedule file: `[[schedule]]` entries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduleFile {
    #[serde(default)]
    schedule: Vec<RawWindow>,
}

/// Where conflicts between two recurring windows are looked for: a year from 2024-01-01 (a
/// leap year; every weekday falls on every day of the month within it).
const CONFLICT_REFERENCE: i64 = 1_704_067_200;

/// The schedule windows of a pool with bounds `[min, max]`; a window without `lead` gets
/// `default_lead`. Errors at `prefix.schedule[N]`.
fn schedule_from_raw(
    raw: Vec<RawWindow>,
    prefix: &str,
    (min, max): (u32, u32),
    default_lead: Duration,
    errors: &mut Errors,
) -> Schedule {
    let mut windows: Vec<Window> = Vec::new();
    let backends_max = i64::from(MAX_BACKENDS);
    for (i, w) in raw.into_iter().enumerate() {
        let at = field(prefix, &format!("schedule[{i}]"));
        let path = |name: &str| field(&at, name);
        let before = errors.0.len();
        let name = w.name.unwrap_or_else(|| format!("schedule[{i}]"));
        if name.is_empty() {
            errors.add(path("name"), "must not be empty");
        } else if windows.iter().any(|o| o.name == name) {
            errors.add(path("name"), format!("duplicate window name {name:?}"));
        }
        let when = match (w.start, w.end, w.cron, w.duration) {
            (Some(start), Some(end), None, None) => {
                if w.timezone.is_some() {
                    errors.add(
                        path("timezone"),
                        "only for cron windows (start and end carry their offsets)",
                    );
                }
                let parsed = |name: &str, text: &str, errors: &mut Errors| {
                    parse_time(text).map_err(|e| errors.add(path(name), e)).ok()
                };
                let start_t = parsed("start", &start, errors);
                let end_t = parsed("end", &end, errors);
                match (start_t, end_t) {
                    (Some(s), Some(e)) if e <= s => {
                        errors.add(path("end"), format!("{end} is not after start ({start})"));
                        None
                    }
                    (Some(start), Some(end)) => Some(When::Once { start, end }),
                    _ => None,
                }
            }
            (None, None, Some(expression), Some(duration)) => {
                let cron = parse_cron(&expression)
                    .map_err(|e| errors.add(path("cron"), format!("{expression:?}: {e}")))
                    .ok();
                let duration = errors.duration(&path("duration"), &duration);
                let tz = match w.timezone.as_deref() {
                    None => Some(TimeZone::UTC),
                    Some(name) => TimeZone::get(name)
                        .map_err(|e| errors.add(path("timezone"), format!("{name:?}: {e}")))
                        .ok(),
                };
                match (cron, duration, tz) {
                    (Some(cron), Some(d), Some(tz)) => Some(When::Every {
                        cron: Box::new(cron),
                        expression,
                        duration_s: d.as_secs(),
                        tz,
                    }),
                    _ => None,
                }
            }
            _ => {
                errors.add(
                    &at,
                    "needs start and end (a one-off window) or cron and duration (a recurring one)",
                );
                None
            }
        };
        let bound = |name: &str, value: Option<i64>, errors: &mut Errors| {
            value.and_then(|n| errors.int::<u32>(&path(name), n, 1..=backends_max))
        };
        let w_min = bound("min", w.min, errors);
        let w_max = bound("max", w.max, errors);
        if w.min.is_none() && w.max.is_none() {
            errors.add(&at, "needs min, max or both");
        }
        if let (Some(lo), Some(hi)) = (w_min, w_max)
            && lo > hi
        {
            errors.add(
                path("min"),
                format!("{lo} is above the window's max ({hi})"),
            );
        }
        if let Some(lo) = w_min.filter(|&lo| lo > max) {
            errors.add(path("min"), format!("{lo} is above the pool's max ({max})"));
        }
        if let Some(hi) = w_max.filter(|&hi| hi < min) {
            errors.add(path("max"), format!("{hi} is below the pool's min ({min})"));
        }
        let lead = match &w.lead {
            Some(text) => duration_or_zero(errors, &path("lead"), text),
            None => Some(default_lead),
        };
        if let (Some(when), Some(lead)) = (when, lead)
            && errors.0.len() == before
        {
            windows.push(Window {
                name,
                when,
                min: w_min,
                max: w_max,
                lead_s: lead.as_secs(),
            });
        }
    }
    let schedule = Schedule::new(windows);
    for (i, j, t) in schedule.conflicts(CONFLICT_REFERENCE) {
        let (a, b) = (&schedule.windows[i], &schedule.windows[j]);
        let (lo, hi) = match (a.min, b.max) {
            (Some(lo), Some(hi)) if lo > hi => (a, b),
            _ => (b, a),
        };
        errors.add(
            field(prefix, "schedule"),
            format!(
                "windows {:?} (min {}) and {:?} (max {}) are both in force at {}: a minimum above a maximum",
                lo.name,
                lo.min.unwrap_or(0),
                hi.name,
                hi.max.unwrap_or(0),
                format_time(t),
            ),
        );
    }
    schedule
}

/// Reads a simulator's schedule file (`[[schedule]]` entries shaped like
/// `[[vip.autoscale.schedule]]`) for a pool of `[min, max]`.
pub fn schedule_from_toml(
    text: &str,
    bounds: (u32, u32),
    default_lead: Duration,
) -> Result<Schedule, ConfigError> {
    let deserializer =
        toml::de::Deserializer::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let raw: RawScheduleFile = serde_path_to_error::deserialize(deserializer)
        .map_err(|e| ConfigError::Syntax(format!("{}: {}", e.path(), e.inner())))?;
    let mut errors = Errors::default();
    let schedule = schedule_from_raw(raw.schedule, "", bounds, default_lead, &mut errors);
    errors.finish(schedule)
}

impl From<&Window> for RawWindow {
    fn from(w: &Window) -> Self {
        let (start, end, cron, duration, timezone) = match &w.when {
            When::Once { start, end } => (
                Some(format_time(*start)),
                Some(format_time(*end)),
                None,
                None,
                None,
            ),
            When::Every {
                expression,
                duration_s,
                tz,
                ..
            } => (
                None,
                None,
                Some(expression.clone()),
                Some(format_duration(Duration::from_secs(*duration_s))),
                tz.iana_name()
                    .filter(|_| *tz != TimeZone::UTC)
                    .map(str::to_owned),
            ),
        };
        RawWindow {
            name: Some(w.name.clone()),
            start,
            end,
            cron,
            duration,
            timezone,
            min: w.min.map(i64::from),
            max: w.max.map(i64::from),
            lead: Some(format_duration(Duration::from_secs(w.lead_s))),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    above: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    below: Option<i64>,
    #[serde(rename = "for")]
    duration: String,
    change: i64,
}

/// A duration that may be zero.
fn duration_or_zero(errors: &mut Errors, path: &str, text: &str) -> Option<Duration> {
    parse_duration(text)
        .map_err(|err| errors.add(path, err))
        .ok()
}

/// `[vip.autoscale]` of the VIP at `vip` with `backends`; errors at `prefix`.
pub(super) fn from_raw(
    raw: RawAutoscale,
    prefix: &str,
    vip: Option<SocketAddr>,
    backends: &[BackendConfig],
    errors: &mut Errors,
) -> AutoscaleConfig {
    let path = |name: &str| field(prefix, name);
    let mut c = AutoscaleConfig::default();
    if let Some(p) = &raw.policy {
        match p.parse::<PolicyKind>() {
            Ok(p) => c.policy = p,
            Err(err) => errors.add(path("policy"), err),
        }
    }
    if let Some(s) = &raw.signal {
        match s.parse::<Signal>() {
            Ok(s) => c.signal = s,
            Err(err) => errors.add(path("signal"), err),
        }
    }
    c.target_per_backend = raw
        .target_per_backend
        .and_then(|t| errors.int(&path("target-per-backend"), t, 1..=i64::MAX));
    let backends_max = i64::from(MAX_BACKENDS);
    if let Some(n) = raw
        .min
        .and_then(|n| errors.int(&path("min"), n, 1..=backends_max))
    {
        c.min = n;
    }
    if let Some(n) = raw
        .max
        .and_then(|n| errors.int(&path("max"), n, 1..=backends_max))
    {
        c.max = n;
    }
    if c.max < c.min {
        errors.add(
            path("max"),
            format!("{} is less than min ({})", c.max, c.min),
        );
    }
    if let Some(n) = raw
        .max_step
        .and_then(|n| errors.int(&path("max-step"), n, 1..=backends_max))
    {
        c.max_step = n;
    }
    if let Some(n) = raw
        .tolerance_percent
        .and_then(|n| errors.int(&path("tolerance-percent"), n, 0..=50))
    {
        c.tolerance_percent = n;
    }
    for (name, text, slot) in [
        (
            "scale-out-cooldown",
            &raw.scale_out_cooldown,
            &mut c.scale_out_cooldown,
        ),
        (
            "scale-in-cooldown",
            &raw.scale_in_cooldown,
            &mut c.scale_in_cooldown,
        ),
        (
            "scale-in-window",
            &raw.scale_in_window,
            &mut c.scale_in_window,
        ),
        (
            "scale-out-window",
            &raw.scale_out_window,
            &mut c.scale_out_window,
        ),
    ] {
        if let Some(d) = text
            .as_deref()
            .and_then(|t| duration_or_zero(errors, &path(name), t))
        {
            *slot = d;
        }
    }
    for (name, text, slot) in [
        ("metric-window", &raw.metric_window, &mut c.metric_window),
        ("season", &raw.season, &mut c.season),
        ("bucket", &raw.bucket, &mut c.bucket),
        ("horizon", &raw.horizon, &mut c.horizon),
        ("hook-timeout", &raw.hook_timeout, &mut c.hook_timeout),
        (
            "provision-timeout",
            &raw.provision_timeout,
            &mut c.provision_timeout,
        ),
        ("drain-timeout", &raw.drain_timeout, &mut c.drain_timeout),
    ] {
        if let Some(d) = text
            .as_deref()
            .and_then(|t| errors.duration(&path(name), t))
        {
            *slot = d;
        }
    }
    c.min_history = raw
        .min_history
        .as_deref()
        .and_then(|t| duration_or_zero(errors, &path("min-history"), t));
    for (name, d) in [("metric-window", c.metric_window), ("bucket", c.bucket)] {
        if d < Duration::from_secs(1) {
            errors.add(path(name), "must be at least 1s");
        }
    }
    match raw.forecast.as_deref() {
        None | Some("holt-winters") => {}
        Some("trend") => c.forecast = ForecastModel::Trend,
        Some(other) => errors.add(
            path("forecast"),
            format!("unknown model {other:?}: expected holt-winters or trend"),
        ),
    }
    if c.forecast == ForecastModel::HoltWinters
        && c.bucket >= Duration::from_secs(1)
        && c.season.as_secs() / c.bucket.as_secs() < 2
    {
        errors.add(
            path("season"),
            format!(
                "{} holds fewer than two buckets of {}",
                format_duration(c.season),
                format_duration(c.bucket)
            ),
        );
    }
    c.dry_run = raw.dry_run.unwrap_or(false);

    let has_rules = !raw.rule.is_empty();
    for (i, r) in raw.rule.into_iter().enumerate() {
        let rule_path = path(&format!("rule[{i}]"));
        let at = |name: &str| field(&rule_path, name);
        let (comparison, threshold) = match (r.above, r.below) {
            (Some(t), None) => (Comparison::Above, t),
            (None, Some(t)) => (Comparison::Below, t),
            _ => {
                errors.add(&rule_path, "needs exactly one of above and below");
                continue;
            }
        };
        let name = if comparison == Comparison::Above {
            "above"
        } else {
            "below"
        };
        let threshold = errors.int(&at(name), threshold, 0..=i64::MAX);
        let duration = errors.duration(&at("for"), &r.duration);
        let change = errors.int(&at("change"), r.change, -backends_max..=backends_max);
        if change == Some(0) {
            errors.add(at("change"), "must not be 0");
        }
        if let (Some(threshold), Some(duration), Some(change)) = (threshold, duration, change) {
            c.rules.push(RuleConfig {
                comparison,
                threshold,
                duration,
                change,
            });
        }
    }
    if has_rules && c.policy != PolicyKind::Rules {
        errors.add(
            path("rule"),
            format!(
                "rules are only used by policy \"rules\", not {:?}",
                c.policy.as_str()
            ),
        );
    }
    let needs_target = c.policy != PolicyKind::Rules || !has_rules;
    if needs_target && c.target_per_backend.is_none() && raw.target_per_backend.is_none() {
        errors.add(
            path("target-per-backend"),
            format!("required by policy {:?}", c.policy.as_str()),
        );
    }

    for (name, argv) in [("scale-up", &raw.scale_up), ("scale-down", &raw.scale_down)] {
        if argv.first().is_some_and(|p| p.is_empty()) {
            errors.add(path(name), "the program must not be empty");
        }
    }
    c.scale_up = raw.scale_up;
    c.scale_down = raw.scale_down;
    c.schedule = schedule_from_raw(
        raw.schedule,
        prefix,
        (c.min, c.max),
        c.provision_timeout,
        errors,
    );

    for (j, text) in raw.standby.iter().enumerate() {
        let at = path(&format!("standby[{j}]"));
        let standby = match text.parse::<WeightedBackend>() {
            Ok(s) => s,
            Err(WeightedError::Weight(err)) => {
                errors.add(&at, err);
                continue;
            }
            Err(WeightedError::Address(_)) => {
                errors.add(
                    &at,
                    format!("{text:?} is not ADDR:PORT or ADDR:PORT@WEIGHT, e.g. 10.1.0.3:80@2"),
                );
                continue;
            }
        };
        let addr = standby.addr;
        let as_backend = BackendConfig {
            address: addr,
            weight: standby.weight,
            state: BackendState::Up,
        };
        if let Some(vip) = vip {
            check_backend_of(vip, &as_backend, &at, errors);
        }
        if backends.iter().any(|b| b.address == addr) {
            errors.add(&at, format!("{addr} is also a backend of the VIP"));
        } else if c.standby.iter().any(|s| s.addr == addr) {
            errors.add(&at, format!("duplicate standby backend {addr}"));
        } else {
            c.standby.push(standby);
        }
    }
    c
}

impl From<AutoscaleConfig> for RawAutoscale {
    fn from(c: AutoscaleConfig) -> Self {
        let d = |d: Duration| Some(format_duration(d));
        RawAutoscale {
            policy: Some(c.policy.as_str().to_owned()),
            signal: Some(c.signal.name().to_owned()),
            target_per_backend: c.target_per_backend.map(|t| t as i64),
            min: Some(c.min.into()),
            max: Some(c.max.into()),
            max_step: Some(c.max_step.into()),
            scale_out_cooldown: d(c.scale_out_cooldown),
            scale_in_cooldown: d(c.scale_in_cooldown),
            metric_window: d(c.metric_window),
            scale_in_window: d(c.scale_in_window),
            scale_out_window: d(c.scale_out_window),
            tolerance_percent: Some(c.tolerance_percent.into()),
            forecast: Some(c.forecast.name().to_owned()),
            season: d(c.season),
            bucket: d(c.bucket),
            horizon: d(c.horizon),
            min_history: c.min_history.map(format_duration),
            standby: c.standby.iter().map(ToString::to_string).collect(),
            scale_up: c.scale_up,
            scale_down: c.scale_down,
            hook_timeout: d(c.hook_timeout),
            provision_timeout: d(c.provision_timeout),
            drain_timeout: d(c.drain_timeout),
            dry_run: c.dry_run.then_some(true),
            rule: c
                .rules
                .into_iter()
                .map(|r| {
                    let threshold = Some(r.threshold as i64);
                    let (above, below) = match r.comparison {
                        Comparison::Above => (threshold, None),
                        Comparison::Below => (None, threshold),
                    };
                    RawRule {
                        above,
                        below,
                        duration: format_duration(r.duration),
                        change: r.change.into(),
                    }
                })
                .collect(),
            schedule: c.schedule.windows.iter().map(RawWindow::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        autoscale::schedule::When,
        config::{Config, ConfigError},
    };

    const VIP: &str = "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
                       [[vip.backend]]\naddress = \"10.1.0.2:80\"\n[vip.autoscale]\n";

    fn errors(table: &str) -> Vec<String> {
        match Config::parse(&format!("{VIP}{table}")) {
            Err(ConfigError::Invalid(errors)) => errors,
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn a_full_table_round_trips() {
        let text = format!(
            "{VIP}policy = \"rules\"\nsignal = \"new-connections\"\nmin = 2\nmax = 8\n\
             standby = [\"10.1.0.3:80\"]\nscale-up = [\"/bin/up\", \"web\"]\n\
             scale-down = [\"/bin/down\"]\ndrain-timeout = \"2m\"\ndry-run = true\n\
             [[vip.autoscale.rule]]\nabove = 50\nfor = \"30s\"\nchange = 2\n\
             [[vip.autoscale.rule]]\nbelow = 10\nfor = \"5m\"\nchange = -1\n"
        );
        let config = Config::parse(&text).unwrap();
        let a = config.vips[0].autoscale.as_ref().unwrap();
        assert_eq!((a.min, a.max, a.rules.len()), (2, 8, 2));
        assert_eq!(a.rules[1].change, -1);
        assert_eq!(a.scale_up, ["/bin/up", "web"]);
        assert!(a.dry_run);
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn the_tolerance_band_and_windows_are_read_and_checked() {
        let text = format!(
            "{VIP}target-per-backend = 500\ntolerance-percent = 20\nscale-out-window = \"15s\"\n"
        );
        let config = Config::parse(&text).unwrap();
        let a = config.vips[0].autoscale.as_ref().unwrap();
        assert_eq!(a.tolerance_percent, 20);
        assert_eq!(a.scale_out_window.as_secs(), 15);
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
        let e = errors(
            "target-per-backend = 500\ntolerance-percent = 80\nscale-out-window = \"soon\"\n",
        )
        .join("\n");
        for field in ["autoscale.tolerance-percent", "autoscale.scale-out-window"] {
            assert!(e.contains(field), "{field:?} not in:\n{e}");
        }
    }

    #[test]
    fn bad_tables_name_their_fields() {
        let e = errors("policy = \"magic\"\nsignal = \"vibes\"\nmin = 5\nmax = 2\n");
        let joined = e.join("\n");
        for expected in [
            "vip[0] (198.19.0.1:80/tcp) autoscale.policy: unknown policy \"magic\"",
            "autoscale.signal: unknown signal \"vibes\"",
            "autoscale.max: 2 is less than min (5)",
            "autoscale.target-per-backend: required by policy \"target\"",
        ] {
            assert!(joined.contains(expected), "{expected:?} not in:\n{joined}");
        }
        let e = errors(
            "target-per-backend = 10\nstandby = [\"10.1.0.2:80\", \"[fd00::1]:80\", \"x\"]\n\
             [[vip.autoscale.rule]]\nabove = 5\nbelow = 3\nfor = \"1s\"\nchange = 1\n",
        )
        .join("\n");
        for expected in [
            "autoscale.standby[0]: 10.1.0.2:80 is also a backend of the VIP",
            "autoscale.standby[1].address: [fd00::1]:80 is IPv6 but the VIP is IPv4",
            "autoscale.standby[2]: \"x\" is not ADDR:PORT or ADDR:PORT@WEIGHT",
            "autoscale.rule[0]: needs exactly one of above and below",
        ] {
            assert!(e.contains(expected), "{expected:?} not in:\n{e}");
        }
        let e = errors("target-per-backend = 10\n[[vip.autoscale.rule]]\nabove = 5\nfor = \"0s\"\nchange = 0\n")
            .join("\n");
        for expected in [
            "autoscale.rule[0].for: \"0s\" must be more than 0",
            "autoscale.rule[0].change: must not be 0",
            "autoscale.rule: rules are only used by policy \"rules\"",
        ] {
            assert!(e.contains(expected), "{expected:?} not in:\n{e}");
        }
    }

    #[test]
    fn standby_entries_carry_weights() {
        let text = format!(
            "{VIP}target-per-backend = 10\n\
             standby = [\"10.1.0.3:80@3\", \"10.1.0.4:80\", \"10.1.0.5:80@10000\"]\n"
        );
        let config = Config::parse(&text).unwrap();
        let a = config.vips[0].autoscale.as_ref().unwrap();
        let weights: Vec<_> = a
            .standby
            .iter()
            .map(|s| (s.addr.to_string(), s.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("10.1.0.3:80".to_owned(), 3),
                ("10.1.0.4:80".to_owned(), 1),
                ("10.1.0.5:80".to_owned(), 10_000)
            ]
        );
        let toml = config.to_toml();
        assert!(toml.contains("\"10.1.0.3:80@3\""), "{toml}");
        assert_eq!(Config::parse(&toml).unwrap(), config);

        let e = errors(
            "target-per-backend = 10\n\
             standby = [\"10.1.0.3:80\", \"10.1.0.4:80@20000\", \"10.1.0.5:80@0\", \"10.1.0.6:80@x\", \"10.1.0.7@2\"]\n",
        )
        .join("\n");
        for expected in [
            "vip[0] (198.19.0.1:80/tcp) autoscale.standby[1]: weight 20000 is out of range 1..=10000",
            "autoscale.standby[2]: weight 0 is out of range 1..=10000",
            "autoscale.standby[3]: weight \"x\" is not a number",
            "autoscale.standby[4]: \"10.1.0.7@2\" is not ADDR:PORT or ADDR:PORT@WEIGHT",
        ] {
            assert!(e.contains(expected), "{expected:?} not in:\n{e}");
        }
    }

    #[test]
    fn schedules_are_read_defaulted_and_round_trip() {
        let text = format!(
            "{VIP}target-per-backend = 500\nmin = 2\nmax = 30\nprovision-timeout = \"3m\"\n\
             [[vip.autoscale.schedule]]\nname = \"sale\"\nstart = \"2026-03-04T21:00:00Z\"\n\
             end = \"2026-03-04T22:30:00+00:00\"\nmin = 20\n\
             [[vip.autoscale.schedule]]\ncron = \"0 1 * * *\"\nduration = \"5h\"\nmax = 4\n\
             lead = \"0s\"\ntimezone = \"Europe/Paris\"\n"
        );
        let config = Config::parse(&text).unwrap();
        let a = config.vips[0].autoscale.as_ref().unwrap();
        let [sale, nights] = &a.schedule.windows[..] else {
            panic!("two windows: {:?}", a.schedule);
        };
        assert_eq!(
            (sale.name.as_str(), sale.min, sale.max),
            ("sale", Some(20), None)
        );
        assert_eq!(sale.lead_s, 180, "the provision-timeout by default");
        assert_eq!(
            sale.when,
            When::Once {
                start: 1_772_658_000,
                end: 1_772_663_400
            }
        );
        assert_eq!(
            (nights.name.as_str(), nights.max, nights.lead_s),
            ("schedule[1]", Some(4), 0)
        );
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn bad_schedules_name_their_fields() {
        let e = errors(
            "target-per-backend = 10\nmin = 2\nmax = 10\n\
             [[vip.autoscale.schedule]]\ncron = \"0 25 * * *\"\nduration = \"0s\"\nmin = 3\n\
             [[vip.autoscale.schedule]]\nstart = \"2026-03-04T22:00:00Z\"\n\
             end = \"2026-03-04T21:00:00Z\"\nmin = 3\n\
             [[vip.autoscale.schedule]]\nstart = \"tomorrow\"\nend = \"2026-03-04T21:00:00Z\"\n\
             min = 11\n\
             [[vip.autoscale.schedule]]\nstart = \"2026-03-04T21:00:00Z\"\nduration = \"1h\"\n\
             max = 1\n\
             [[vip.autoscale.schedule]]\ncron = \"0 * * * *\"\nduration = \"1h\"\n\
             min = 6\nmax = 5\nlead = \"soon\"\ntimezone = \"Mars/Olympus\"\n\
             [[vip.autoscale.schedule]]\nname = \"idle\"\ncron = \"0 * * * *\"\nduration = \"1m\"\n",
        )
        .join("\n");
        for expected in [
            "autoscale.schedule[0].cron: \"0 25 * * *\": ",
            "autoscale.schedule[0].duration: \"0s\" must be more than 0",
            "autoscale.schedule[1].end: 2026-03-04T21:00:00Z is not after start (2026-03-04T22:00:00Z)",
            "autoscale.schedule[2].start: \"tomorrow\" is not an RFC 3339 time",
            "autoscale.schedule[2].min: 11 is above the pool's max (10)",
            "autoscale.schedule[3]: needs start and end (a one-off window) or cron and duration",
            "autoscale.schedule[3].max: 1 is below the pool's min (2)",
            "autoscale.schedule[4].min: 6 is above the window's max (5)",
            "autoscale.schedule[4].lead: ",
            "autoscale.schedule[4].timezone: \"Mars/Olympus\": ",
            "autoscale.schedule[5]: needs min, max or both",
        ] {
            assert!(e.contains(expected), "{expected:?} not in:\n{e}");
        }
    }

    #[test]
    fn conflicting_schedules_are_refused() {
        let window = |extra: &str| {
            format!(
                "target-per-backend = 10\nmin = 1\nmax = 30\n\
                 [[vip.autoscale.schedule]]\nname = \"sale\"\nstart = \"2026-03-06T20:00:00Z\"\n\
                 end = \"2026-03-06T23:00:00Z\"\nmin = 20\nlead = \"10m\"\n\
                 [[vip.autoscale.schedule]]\n{extra}"
            )
        };
        // A cap every evening from 22:00 meets the sale (a Friday) at 22:00.
        let e = errors(&window(
            "name = \"evenings\"\ncron = \"0 22 * * *\"\nduration = \"2h\"\nmax = 5\n",
        ))
        .join("\n");
        let expected = "autoscale.schedule: windows \"sale\" (min 20) and \"evenings\" (max 5) \
                        are both in force at 2026-03-06T22:00:00Z";
        assert!(e.contains(expected), "{expected:?} not in:\n{e}");
        // Two recurring ones: every Friday evening against every first of the month.
        let e = errors(
            "target-per-backend = 10\nmin = 1\nmax = 30\n\
             [[vip.autoscale.schedule]]\nname = \"fridays\"\ncron = \"0 20 * * FRI\"\n\
             duration = \"3h\"\nmin = 10\n\
             [[vip.autoscale.schedule]]\nname = \"firsts\"\ncron = \"0 0 1 * *\"\n\
             duration = \"24h\"\nmax = 4\n",
        )
        .join("\n");
        assert!(
            e.contains("windows \"fridays\" (min 10) and \"firsts\" (max 4)"),
            "{e}"
        );
        // Not conflicting: the cap ends before the sale's lead, or allows its minimum.
        for extra in [
            "cron = \"0 12 * * *\"\nduration = \"7h\"\nmax = 5\n",
            "cron = \"0 22 * * *\"\nduration = \"2h\"\nmax = 25\n",
            "cron = \"0 22 * * *\"\nduration = \"2h\"\nmin = 25\n",
        ] {
            let text = format!("{VIP}{}", window(extra));
            assert!(Config::parse(&text).is_ok(), "{extra}");
        }
    }
}
