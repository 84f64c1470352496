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
//! ```

use std::{net::SocketAddr, time::Duration};

use lb_common::maps::MAX_BACKENDS;
use serde::{Deserialize, Serialize};

use super::{BackendConfig, Errors, check_backend_of, field, format_duration, parse_duration};
use crate::{
    autoscale::{
        Comparison, PolicyKind,
        config::{
            AutoscaleConfig, ForecastModel, RuleConfig, Signal, WeightedBackend, WeightedError,
        },
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
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

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
}
