//! Acceptance tests: the policies on synthetic and shipped traces, the chart.

use std::path::PathBuf;

use super::{
    cli::run_policies,
    svg::{ChartOptions, chart, chart_points},
    *,
};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path)
}

fn limits(min: u32, max: u32) -> Limits {
    Limits {
        min,
        max,
        ..Limits::default()
    }
}

/// Feeds `signal(t)` for `t` in `range` with a fixed pool of `current`; the seconds at which
/// the policy asked for a change, with the count it asked for.
fn fires(
    policy: &mut dyn Policy,
    range: std::ops::Range<u64>,
    current: u32,
    signal: impl Fn(u64) -> f64,
) -> Vec<(u64, u32)> {
    let mut history = History::new(3600);
    range
        .filter_map(|t| {
            history.push(t, signal(t));
            let d = policy.decide(t, &history, current);
            (d.desired != current).then_some((t, d.desired))
        })
        .collect()
}

fn above_800_for_30s() -> RulesPolicy {
    RulesPolicy::new(
        vec![StepRule {
            comparison: Comparison::Above,
            threshold: 800.0,
            duration_s: 30,
            change: 2,
        }],
        Limits {
            scale_out_cooldown_s: 120,
            ..limits(1, 100)
        },
    )
}

#[test]
fn step_rule_needs_its_whole_duration() {
    // 10 backends; 9000 total (900 per backend) from t = 100 for 29 s, then 500.
    let short = fires(&mut above_800_for_30s(), 0..400, 10, |t| {
        if (100..129).contains(&t) {
            9000.0
        } else {
            5000.0
        }
    });
    assert_eq!(short, [], "29 s above the threshold must not fire");
    // For 30 s exactly: fires at the 30th second, t = 129, once.
    let exact = fires(&mut above_800_for_30s(), 0..400, 10, |t| {
        if (100..130).contains(&t) {
            9000.0
        } else {
            5000.0
        }
    });
    assert_eq!(exact, [(129, 12)]);
    // A one-second dip resets the run.
    let dip = fires(&mut above_800_for_30s(), 0..200, 10, |t| {
        if (100..160).contains(&t) && t != 120 {
            9000.0
        } else {
            5000.0
        }
    });
    assert_eq!(dip, [(150, 12)]);
}

#[test]
fn step_rule_respects_its_cooldown() {
    // Above the threshold throughout (the pool is not resized here): fires at 29, then every
    // 120 s cooldown (the run restarts after each action, and 30 s < 120 s).
    let fired = fires(&mut above_800_for_30s(), 0..400, 10, |_| 9000.0);
    assert_eq!(fired, [(29, 12), (149, 12), (269, 12), (389, 12)]);
    // A scale-in rule: below 200 for 300 s, remove 1, with the scale-in cooldown.
    let mut rules = RulesPolicy::new(
        vec![StepRule {
            comparison: Comparison::Below,
            threshold: 200.0,
            duration_s: 300,
            change: -1,
        }],
        Limits {
            scale_in_cooldown_s: 600,
            ..limits(1, 100)
        },
    );
    let fired = fires(&mut rules, 0..1500, 10, |_| 1000.0);
    assert_eq!(fired, [(299, 9), (899, 9), (1499, 9)]);
}

#[test]
fn rules_policy_in_the_simulator_fires_at_the_expected_second() {
    // 4 backends at 500 each: 1500 until t = 600 (375 per backend: no rule), then 4000 (1000
    // per backend). The default rules: above 750 for 30 s: +5; above 450 for 60 s: +2.
    let trace = Trace::new(vec![
        (0, 1500.0),
        (599, 1500.0),
        (600, 4000.0),
        (1800, 4000.0),
    ])
    .expect("trace");
    let config = SimConfig {
        initial: 4,
        provisioning_delay_s: 60,
        ..SimConfig::new(500.0)
    };
    let result = simulate(
        &trace,
        &mut RulesPolicy::for_target(500.0, limits(1, 100)),
        &config,
    );
    // 1000 per backend > 750 (1.5 x 500) from t = 600: +5 at t = 629, serving at 689.
    let changes: Vec<_> = result
        .points
        .windows(2)
        .filter(|w| w[0].allocated != w[1].allocated)
        .map(|w| (w[1].t, w[1].allocated))
        .collect();
    assert_eq!(result.scale_outs, 1, "{} {changes:?}", result.summary());
    assert_eq!(result.time_above_target_s, 89);
    let p = result.points.iter().find(|p| p.t == 660).expect("point");
    assert_eq!((p.allocated, p.serving), (9, 4));
    let p = result.points.iter().find(|p| p.t == 720).expect("point");
    assert_eq!((p.allocated, p.serving), (9, 9));
}

#[test]
fn target_tracking_converges_on_a_step() {
    // 2000 then 10000 at 500 per backend: 4, then 20 backends; back to 2000: 4 again once the
    // lower count held for the 300 s window (and the scale-in cooldown passed).
    let trace = Trace::new(vec![
        (0, 2000.0),
        (1000, 2000.0),
        (1001, 10_000.0),
        (3000, 10_000.0),
        (3001, 2000.0),
        (5000, 2000.0),
    ])
    .expect("trace");
    let config = SimConfig {
        initial: 4,
        provisioning_delay_s: 120,
        ..SimConfig::new(500.0)
    };
    let mut policy = TargetTracking::new(TargetConfig::exact(500.0), limits(1, 100));
    let result = simulate(&trace, &mut policy, &config);
    let at = |t| {
        result
            .points
            .iter()
            .find(|p| p.t == t)
            .expect("point")
            .allocated
    };
    assert_eq!(at(960), 4);
    assert_eq!(at(2940), 20);
    assert_eq!(at(4980), 4);
    // The 30 s average crosses thresholds on the way up: a few steps, each at most 60 s apart.
    assert!(result.scale_outs <= 3, "{}", result.summary());
    // Down: not before the 300 s stabilisation window.
    let first_down = result
        .points
        .iter()
        .find(|p| p.t > 3000 && p.allocated < 20)
        .expect("scaled in");
    assert!(first_down.t >= 3300, "scaled in at {}", first_down.t);
    // Above target only while the new backends provisioned: about 120 s + the averaging lag.
    assert!(
        (120..=200).contains(&result.time_above_target_s),
        "{}",
        result.summary()
    );
}

#[test]
fn target_tracking_does_not_flap_under_noise() {
    // An hour of ±10% noise (a new value every 10 s) around 5000 at 500 per backend.
    let mut rng = traces::Rng::new(3);
    let trace = Trace::new(
        (0..=360)
            .map(|i| (i * 10, 5000.0 * (1.0 + 0.1 * (2.0 * rng.unit() - 1.0))))
            .collect(),
    )
    .expect("trace");
    let config = SimConfig {
        initial: 10,
        ..SimConfig::new(500.0)
    };
    let mut policy = TargetTracking::new(TargetConfig::new(500.0), limits(1, 100));
    let result = simulate(&trace, &mut policy, &config);
    assert!(result.actions <= 4, "{}", result.summary());
    let last = result.points.last().expect("points").allocated;
    assert!((10..=12).contains(&last), "{}", result.summary());
}

#[test]
fn target_tracking_holds_min_max_and_step() {
    let trace = Trace::new(vec![(0, 100.0), (10, 100_000.0), (600, 100_000.0)]).expect("trace");
    let config = SimConfig {
        initial: 3,
        min: 3,
        max: 40,
        provisioning_delay_s: 0,
        ..SimConfig::new(500.0)
    };
    let lim = Limits {
        max_step: 10,
        scale_out_cooldown_s: 30,
        ..limits(3, 40)
    };
    let result = simulate(
        &trace,
        &mut TargetTracking::new(TargetConfig::new(500.0), lim),
        &config,
    );
    assert_eq!(result.peak_allocated, 40);
    assert_eq!(result.points[0].allocated, 3, "never below min");
    // 3 -> 13 -> 23 -> 33 -> 40: four scale-outs, the cooldown between them.
    assert_eq!(result.scale_outs, 4, "{}", result.summary());
}

#[test]
fn predictive_falls_back_to_target_tracking_while_warming_up() {
    // One day of a diurnal trace: the daily model needs two days, so it equals target tracking.
    let trace = traces::diurnal_week();
    let day: Vec<_> = trace
        .samples()
        .iter()
        .copied()
        .filter(|&(t, _)| t <= 86_400)
        .collect();
    let day = Trace::new(day).expect("trace");
    let config = SimConfig::new(500.0);
    let target = simulate(
        &day,
        &mut TargetTracking::new(TargetConfig::new(500.0), Limits::default()),
        &config,
    );
    let predictive = simulate(
        &day,
        &mut Predictive::new(PredictiveConfig::daily(500.0, 300), Limits::default()),
        &config,
    );
    assert_eq!(target.points, predictive.points);
}

#[test]
fn trend_model_scales_ahead_of_a_ramp() {
    // A steady climb from 2000 to 12000 over 2 h: the trend model asks for backends ahead.
    let trace = Trace::new(vec![(0, 2000.0), (1800, 2000.0), (9000, 12_000.0)]).expect("trace");
    let config = SimConfig {
        initial: 4,
        ..SimConfig::new(500.0)
    };
    let target = simulate(
        &trace,
        &mut TargetTracking::new(TargetConfig::new(500.0), Limits::default()),
        &config,
    );
    let trend = simulate(
        &trace,
        &mut Predictive::new(PredictiveConfig::trend(500.0, 300), Limits::default()),
        &config,
    );
    assert!(
        trend.time_above_target_s * 2 < target.time_above_target_s,
        "trend: {}\ntarget: {}",
        trend.summary(),
        target.summary()
    );
}

fn diurnal_config() -> SimConfig {
    SimConfig {
        provisioning_delay_s: 300,
        initial: 6,
        ..SimConfig::new(500.0)
    }
}

#[test]
fn predictive_beats_target_on_the_diurnal_week() {
    let trace = Trace::load(&repo_file("examples/traces/diurnal-week.csv")).expect("trace");
    let results = run_policies(&trace, &PolicyKind::ALL, &diurnal_config());
    for r in &results {
        eprintln!("{}", r.summary());
    }
    let [target, _rules, predictive] = &results[..] else {
        panic!("three results");
    };
    let above = predictive.time_above_target_s as f64 / target.time_above_target_s as f64;
    let cost = predictive.backend_minutes / target.backend_minutes;
    assert!(
        above <= 0.7,
        "predictive above target {:.0}% of target's",
        above * 100.0
    );
    assert!(
        cost <= 1.15,
        "predictive uses {:.1}% more",
        (cost - 1.0) * 100.0
    );
}

#[test]
fn flash_sale_report() {
    let trace = Trace::load(&repo_file("examples/traces/flash-sale.csv")).expect("trace");
    let results = run_policies(&trace, &PolicyKind::ALL, &diurnal_config());
    for r in &results {
        eprintln!("{}", r.summary());
        // Every policy reaches the ~40 backends the sale needs, and gives them back after.
        assert!(r.peak_allocated >= 38, "{}", r.summary());
        let last = r.points.last().expect("points").allocated;
        // Target tracking and predictive give them back within the trace; the default rules
        // (-1 per 5 min) more slowly.
        let back = if r.policy == "rules" { 30 } else { 8 };
        assert!(last <= back, "{} (ends with {last})", r.summary());
    }
}

#[test]
fn shipped_traces_are_the_generated_ones() {
    for (name, trace) in traces::all() {
        let path = repo_file("examples/traces").join(name);
        let csv = trace.to_csv();
        if std::env::var_os("XDPLB_WRITE_TRACES").is_some() {
            std::fs::write(&path, &csv).expect("writing the trace");
        }
        let shipped = std::fs::read_to_string(&path).expect("reading the trace");
        assert!(shipped.len() < 1 << 20, "{name} is over 1 MB");
        assert_eq!(shipped, csv, "{name} differs from its generator");
        assert_eq!(Trace::parse_csv(&shipped).expect("parses"), trace);
    }
}

#[test]
fn diurnal_chart_renders() {
    let trace = Trace::load(&repo_file("examples/traces/diurnal-week.csv")).expect("trace");
    let kinds = [PolicyKind::Target, PolicyKind::Predictive];
    let results = run_policies(&trace, &kinds, &diurnal_config());
    let refs: Vec<&SimResult> = results.iter().collect();
    let options = ChartOptions {
        from: 4 * 86_400,
        to: 6 * 86_400,
        max_points: 1500,
        ..ChartOptions::new(
            "diurnal-week.csv, days 5-6: target tracking vs predictive (500/backend, 300 s provisioning)",
        )
    };
    let svg = chart(&refs, &options);
    if std::env::var_os("XDPLB_WRITE_CHART").is_some() {
        std::fs::write(repo_file("docs/autoscale-diurnal.svg"), &svg).expect("writing the chart");
    }
    assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
    assert!(svg.trim_end().ends_with("</svg>"));
    let n = chart_points(&results[0], &options).len();
    assert_eq!(n, 24 * 60 + 1, "one point every two minutes over two days");
    let counts: Vec<usize> = svg
        .lines()
        .filter(|l| l.starts_with("<polyline"))
        .map(|l| {
            let points = l
                .split("points=\"")
                .nth(1)
                .expect("points")
                .trim_end_matches("\"/>");
            for pair in points.split(' ') {
                let (x, y) = pair.split_once(',').expect("x,y");
                let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
                assert!((0.0..=1200.0).contains(&x) && (0.0..=560.0).contains(&y));
            }
            points.split(' ').count()
        })
        .collect();
    // Load, then per policy capacity and backends (a step line: two points per change).
    assert_eq!(counts, [n, n, 2 * n - 1, n, 2 * n - 1]);
    assert_eq!(svg.matches("<svg").count(), 1);
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
}

/// The policies on `examples/traces/sale-week.csv` with the diurnal defaults, printed.
fn sale_week_results(kinds: &[PolicyKind]) -> Vec<SimResult> {
    let trace = Trace::load(&repo_file("examples/traces/sale-week.csv")).expect("trace");
    let results = run_policies(&trace, kinds, &diurnal_config());
    for r in &results {
        eprintln!("{}", r.summary());
    }
    results
}

#[test]
fn predictive_beats_target_on_the_sale_week() {
    let results = sale_week_results(&[PolicyKind::Target, PolicyKind::Predictive]);
    let [target, predictive] = &results[..] else {
        panic!("two results");
    };
    let above = predictive.time_above_target_s as f64 / target.time_above_target_s as f64;
    let cost = predictive.backend_minutes / target.backend_minutes;
    eprintln!(
        "predictive: {:.1}% less time above target, {:+.1}% backend-minutes",
        (1.0 - above) * 100.0,
        (cost - 1.0) * 100.0
    );
    assert!(
        above <= 0.7,
        "predictive above target {:.0}% of target's",
        above * 100.0
    );
    assert!(
        cost <= 1.10,
        "predictive uses {:.1}% more",
        (cost - 1.0) * 100.0
    );
}

#[test]
fn predictive_does_not_learn_the_sale_as_season() {
    let results = sale_week_results(&[PolicyKind::Predictive]);
    let predictive = &results[0];
    let (start, length) = traces::SALE_WEEK_SALE;
    let at = |t: u64| {
        predictive
            .points
            .iter()
            .find(|p| p.t == t)
            .expect("point")
            .allocated
    };
    let peak = |from: u64, to: u64| {
        predictive
            .points
            .iter()
            .filter(|p| (from..to).contains(&p.t))
            .map(|p| p.allocated)
            .max()
            .expect("points")
    };
    // The sale itself is met (by target tracking): ~10x the evening's backends.
    assert!(
        peak(start, start + length) >= 8 * at(start - 3600),
        "sale peak {} vs {} an hour before",
        peak(start, start + length),
        at(start - 3600)
    );
    // On each later day, the sale's hour looks like the hour before it.
    for day in 1..=3 {
        let s = start + day * 86_400;
        let (during, before) = (peak(s, s + length), at(s - 3600));
        eprintln!(
            "day {}: {during} backends at the sale's hour, {before} an hour before",
            3 + day
        );
        assert!(
            f64::from(during) <= 1.5 * f64::from(before),
            "day {}: {during} backends at the sale's hour, {before} an hour before",
            3 + day
        );
    }
}

#[test]
fn tolerance_band_cuts_target_tracking_churn() {
    let trace = Trace::load(&repo_file("examples/traces/diurnal-week.csv")).expect("trace");
    let run = |target: TargetConfig| {
        let r = simulate(
            &trace,
            &mut TargetTracking::new(target, Limits::default()),
            &diurnal_config(),
        );
        eprintln!("{}", r.summary());
        r
    };
    let exact = run(TargetConfig::exact(500.0));
    let banded = run(TargetConfig::new(500.0));
    assert!(
        banded.actions * 4 <= exact.actions,
        "{} actions with the band, {} without",
        banded.actions,
        exact.actions
    );
    assert!(
        banded.time_above_target_s as f64 <= 1.1 * exact.time_above_target_s as f64,
        "above target {}s with the band, {}s without",
        banded.time_above_target_s,
        exact.time_above_target_s
    );
}

/// The sale week's second 0 in the README and the schedule example: a Monday, so that the
/// sale runs on Wednesday 2026-03-04 from 21:00 to 22:30 UTC.
const SALE_WEEK_EPOCH: &str = "2026-03-02T00:00:00Z";

/// `examples/schedules/sale-week.toml`, for a pool of 1..=1000 with 300 s provisioning.
fn sale_schedule() -> Schedule {
    let text = std::fs::read_to_string(repo_file("examples/schedules/sale-week.toml"))
        .expect("reading the schedule");
    crate::config::schedule_from_toml(&text, (1, 1000), std::time::Duration::from_secs(300))
        .expect("a valid schedule")
}

fn sale_week_config(schedule: Schedule) -> SimConfig {
    SimConfig {
        schedule,
        epoch: schedule::parse_time(SALE_WEEK_EPOCH).expect("epoch"),
        ..diurnal_config()
    }
}

#[test]
fn the_simulator_takes_a_schedule_file_or_a_configs_vip() {
    let file = std::fs::read_to_string(repo_file("examples/schedules/sale-week.toml"))
        .expect("reading the schedule");
    let from_file = cli::read_schedule(&file, None, (1, 1000), 300).expect("a schedule");
    assert_eq!(from_file, sale_schedule());
    let vip = |addr: &str, window: &str| {
        format!(
            "[[vip]]\naddress = \"{addr}\"\nprotocol = \"tcp\"\n[[vip.backend]]\n\
             address = \"10.1.0.2:80\"\n[vip.autoscale]\ntarget-per-backend = 500\nmax = 300\n\
             provision-timeout = \"5m\"\n[[vip.autoscale.schedule]]\nname = \"{window}\"\n\
             start = \"2026-03-04T21:00:00Z\"\nend = \"2026-03-04T22:30:00Z\"\nmin = 220\n"
        )
    };
    let one = vip("198.19.0.1:80", "sale");
    let from_config = cli::read_schedule(&one, None, (1, 1000), 60).expect("a schedule");
    assert_eq!(from_config, sale_schedule(), "the VIP's windows, lead 5m");
    let two = format!("{one}{}", vip("198.19.0.2:80", "other"));
    let e = cli::read_schedule(&two, None, (1, 1000), 60).unwrap_err();
    assert!(e.to_string().contains("pick one with --vip"), "{e}");
    let picked = cli::read_schedule(&two, Some("198.19.0.2:80/tcp"), (1, 1000), 60).unwrap();
    assert_eq!(picked.windows[0].name, "other");
    let e = cli::read_schedule(&two, Some("198.19.0.3:80/tcp"), (1, 1000), 60).unwrap_err();
    assert!(
        e.to_string()
            .contains("no autoscaled VIP 198.19.0.3:80/tcp"),
        "{e}"
    );
}

#[test]
fn the_sale_schedule_covers_the_sale() {
    let epoch = schedule::parse_time(SALE_WEEK_EPOCH).expect("epoch");
    let schedule = sale_schedule();
    let [window] = &schedule.windows[..] else {
        panic!("one window");
    };
    let (start, length) = traces::SALE_WEEK_SALE;
    assert_eq!(
        window.when,
        schedule::When::Once {
            start: epoch + start as i64,
            end: epoch + (start + length) as i64
        }
    );
    assert_eq!(window.lead_s, 300, "the provisioning delay by default");
}

#[test]
fn a_schedule_covering_the_sale_cuts_time_above_target_during_it() {
    let trace = Trace::load(&repo_file("examples/traces/sale-week.csv")).expect("trace");
    let (start, length) = traces::SALE_WEEK_SALE;
    for kind in [PolicyKind::Target, PolicyKind::Predictive] {
        let without = &run_policies(&trace, &[kind], &sale_week_config(Schedule::default()))[0];
        let with = &run_policies(&trace, &[kind], &sale_week_config(sale_schedule()))[0];
        let (a, b) = (
            without.above_target_between(start, start + length),
            with.above_target_between(start, start + length),
        );
        let cost = with.backend_minutes / without.backend_minutes;
        eprintln!(
            "{kind}: above target during the sale {a}s without the schedule, {b}s with it \
             ({:.0}% less); {:+.1}% backend-minutes\n  {}\n  {}",
            100.0 * (1.0 - b as f64 / a.max(1) as f64),
            100.0 * (cost - 1.0),
            without.summary(),
            with.summary(),
        );
        assert!(a > 0, "{kind}: never above target without the schedule");
        assert!(b * 5 <= a, "{kind}: {b}s with the schedule vs {a}s without");
        // Provisioned before the window: serving 220 at its start.
        let at = |r: &SimResult, t: u64| r.points.iter().find(|p| p.t == t).expect("point").serving;
        assert!(
            at(with, start) >= 220,
            "{kind}: {} serving at the start",
            at(with, start)
        );
        assert!(at(with, start - 600) < 100, "{kind}: not before the lead");
        // Back down after it: an hour after the end, as without the schedule.
        let later = start + length + 3600;
        assert!(
            at(with, later) <= at(without, later) + 2,
            "{kind}: {} backends an hour after the sale, {} without the schedule",
            at(with, later),
            at(without, later)
        );
    }
}

#[test]
fn sale_week_chart_renders() {
    let trace = Trace::load(&repo_file("examples/traces/sale-week.csv")).expect("trace");
    let kinds = [PolicyKind::Target, PolicyKind::Predictive];
    let mut results = run_policies(&trace, &kinds, &sale_week_config(Schedule::default()));
    let mut scheduled = run_policies(
        &trace,
        &[PolicyKind::Predictive],
        &sale_week_config(sale_schedule()),
    );
    scheduled[0].policy = "predictive + schedule".into();
    results.append(&mut scheduled);
    let refs: Vec<&SimResult> = results.iter().collect();
    let (start, length) = traces::SALE_WEEK_SALE;
    let options = ChartOptions {
        windows: vec![(start, start + length, "schedule \"sale\": min 220".into())],
        backends: false,
        zoom: Some((
            start - 2 * 3600,
            start + length + 2 * 3600,
            "day 3 (Wed 2026-03-04), 19:00 to 00:30 UTC: target and predictive (one line) lag the \
             sale; with the schedule, the capacity is there at 21:00"
                .into(),
        )),
        days: true,
        ..ChartOptions::new(
            "sale-week.csv: load and capacity, 500/backend, 300 s provisioning (the sale's window \
             shaded)",
        )
    };
    let svg = chart(&refs, &options);
    if std::env::var_os("XDPLB_WRITE_CHART").is_some() {
        std::fs::write(repo_file("docs/autoscale-sale-week.svg"), &svg).expect("writing the chart");
    }
    // Two panels of load and three capacities each, the window shaded in both.
    assert_eq!(svg.matches("<polyline").count(), 8);
    assert_eq!(
        svg.matches("fill=\"#f2c14e\"").count(),
        3,
        "two panels and the legend"
    );
    for label in ["day 1", "day 7", "21:00", "predictive + schedule capacity<"] {
        assert!(svg.contains(&format!(">{label}")), "{label:?} missing");
    }
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    let shipped =
        std::fs::read_to_string(repo_file("docs/autoscale-sale-week.svg")).expect("the chart");
    assert!(
        shipped == svg,
        "docs/autoscale-sale-week.svg differs: XDPLB_WRITE_CHART=1 rewrites it"
    );
}
