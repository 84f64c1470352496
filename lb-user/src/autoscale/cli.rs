//! `xdplb autoscale simulate`: replay a trace against the policies.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::{
    Limits, PolicyKind, Schedule, SimConfig, SimResult, Trace,
    schedule::{Occurrence, parse_time},
    sim::points_csv,
    simulate,
    svg::{ChartOptions, chart},
};

/// The arguments of `xdplb autoscale simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The trace: a `timestamp,signal` CSV file.
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// The policy: rules, target, predictive or all.
    #[arg(long, default_value = "all", value_parser = ["rules", "target", "predictive", "all"])]
    pub policy: String,
    /// The per-backend load to hold.
    #[arg(long, default_value_t = 500.0, value_name = "N")]
    pub target_per_backend: f64,
    /// Seconds before an added backend serves.
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub provisioning_delay: u64,
    /// Seconds a removed backend drains before its capacity is gone.
    #[arg(long, default_value_t = 60, value_name = "S")]
    pub drain_delay: u64,
    /// The fewest backends.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min: u32,
    /// The most backends.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max: u32,
    /// Scheduled capacity: a TOML file of `[[schedule]]` entries shaped like
    /// `[[vip.autoscale.schedule]]` (their lead defaults to the provisioning delay), or an
    /// xdplb config, whose autoscaled VIP's windows are taken.
    #[arg(long, value_name = "FILE")]
    pub schedule: Option<PathBuf>,
    /// With a config as --schedule: the VIP (`ADDR:PORT/PROTO`) whose windows to take, when it
    /// has several autoscaled VIPs.
    #[arg(long, value_name = "VIP", requires = "schedule")]
    pub vip: Option<String>,
    /// The time of the trace's timestamp 0 (RFC 3339), for the schedule's times. The default
    /// reads the timestamps as unix seconds; the shipped traces count from 0.
    #[arg(long, default_value = "1970-01-01T00:00:00Z", value_name = "TIME")]
    pub epoch: String,
    /// Write the simulated time series (one row a minute) to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub out_csv: Option<PathBuf>,
    /// Write a chart of the runs to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub out_svg: Option<PathBuf>,
}

/// Runs the chosen policies on the trace: the results, in the order of [`PolicyKind::ALL`].
pub fn run_policies(trace: &Trace, kinds: &[PolicyKind], config: &SimConfig) -> Vec<SimResult> {
    let limits = Limits {
        min: config.min,
        max: config.max,
        ..Limits::default()
    };
    kinds
        .iter()
        .map(|kind| {
            let mut policy = kind.build(
                config.target_per_backend,
                config.provisioning_delay_s,
                limits.clone(),
            );
            simulate(trace, policy.as_mut(), config)
        })
        .collect()
}

/// Runs the command: prints one summary line per policy (or, with `json`, a JSON object of the
/// same figures), writes the CSV and SVG if asked.
pub fn simulate_command(args: &SimulateArgs, json: bool) -> anyhow::Result<()> {
    let trace = Trace::load(&args.trace)?;
    anyhow::ensure!(
        args.target_per_backend > 0.0,
        "--target-per-backend must be positive"
    );
    anyhow::ensure!(args.min <= args.max, "--min is above --max");
    let kinds: Vec<PolicyKind> = match args.policy.as_str() {
        "all" => PolicyKind::ALL.to_vec(),
        one => vec![one.parse().map_err(anyhow::Error::msg)?],
    };
    let epoch = parse_time(&args.epoch).map_err(|e| anyhow::anyhow!("--epoch: {e}"))?;
    let schedule = match &args.schedule {
        None => Schedule::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            read_schedule(
                &text,
                args.vip.as_deref(),
                (args.min, args.max),
                args.provisioning_delay,
            )
            .with_context(|| format!("in {}", path.display()))?
        }
    };
    let config = SimConfig {
        provisioning_delay_s: args.provisioning_delay,
        drain_delay_s: args.drain_delay,
        min: args.min,
        max: args.max,
        initial: args.min,
        schedule,
        epoch,
        ..SimConfig::new(args.target_per_backend)
    };
    let results = run_policies(&trace, &kinds, &config);
    let windows = trace_windows(&trace, &config);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report(args, &config, &windows, &results))?
        );
    } else {
        for o in &windows {
            println!("schedule   {o}");
        }
        for r in &results {
            println!("{}", r.summary());
            if !windows.is_empty() {
                println!(
                    "           above target during the windows {}s",
                    above_in_windows(r, &windows, &config)
                );
            }
        }
    }
    let refs: Vec<&SimResult> = results.iter().collect();
    if let Some(path) = &args.out_csv {
        std::fs::write(path, points_csv(&refs))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.out_svg {
        let title = format!(
            "{}: target {}/backend, provisioning {}s",
            args.trace.display(),
            args.target_per_backend,
            args.provisioning_delay
        );
        std::fs::write(path, chart(&refs, &ChartOptions::new(title)))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The schedule of `--schedule`'s text: `[[schedule]]` entries for a pool of `bounds` (their
/// lead defaulting to `provisioning_delay_s`), or, in an xdplb config (it has `[[vip]]`), the
/// windows of its autoscaled VIP (`vip`, or the only one).
pub fn read_schedule(
    text: &str,
    vip: Option<&str>,
    bounds: (u32, u32),
    provisioning_delay_s: u64,
) -> anyhow::Result<Schedule> {
    let is_config = text
        .parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("vip"));
    if !is_config {
        return Ok(crate::config::schedule_from_toml(
            text,
            bounds,
            std::time::Duration::from_secs(provisioning_delay_s),
        )?);
    }
    let config = crate::config::Config::parse(text)?;
    let autoscaled: Vec<_> = (config.vips.iter())
        .filter(|v| vip.is_none_or(|want| v.vip().to_string() == want))
        .filter_map(|v| v.autoscale.as_ref())
        .collect();
    match &autoscaled[..] {
        [one] => Ok(one.schedule.clone()),
        [] => anyhow::bail!(
            "no autoscaled VIP{}",
            vip.map_or(String::new(), |v| format!(" {v}"))
        ),
        _ => anyhow::bail!("several autoscaled VIPs: pick one with --vip ADDR:PORT/PROTO"),
    }
}

/// The schedule's occurrences that meet the trace, at most 1000.
pub fn trace_windows(trace: &Trace, config: &SimConfig) -> Vec<Occurrence> {
    let (start, end) = trace.span();
    let unix = |t: u64| config.epoch.saturating_add_unsigned(t);
    let mut out: Vec<Occurrence> = (config.schedule.windows.iter())
        .flat_map(|w| w.occurrences(unix(start), unix(end) + 1, 1000))
        .collect();
    out.sort_by_key(|o| o.start);
    out.truncate(1000);
    out
}

/// Seconds above target while one of `windows` is open (from its start to its end).
pub fn above_in_windows(result: &SimResult, windows: &[Occurrence], config: &SimConfig) -> u64 {
    let t = |unix: i64| u64::try_from(unix - config.epoch).unwrap_or(0);
    let mut spans: Vec<(u64, u64)> = windows.iter().map(|o| (t(o.start), t(o.end))).collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, b) in spans {
        match merged.last_mut() {
            Some((_, end)) if a <= *end => *end = (*end).max(b),
            _ => merged.push((a, b)),
        }
    }
    (merged.iter())
        .map(|&(a, b)| result.above_target_between(a, b))
        .sum()
}

/// What `simulate -o json` prints: the run's settings, the schedule's windows on the trace and
/// each policy's figures (those of [`SimResult::summary`], and the time above target during
/// the windows).
pub fn json_report(
    args: &SimulateArgs,
    config: &SimConfig,
    windows: &[Occurrence],
    results: &[SimResult],
) -> serde_json::Value {
    let policies: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "policy": r.policy,
                "seconds": r.seconds,
                "time_above_target_s": r.time_above_target_s,
                "time_above_target_percent":
                    100.0 * r.time_above_target_s as f64 / r.seconds.max(1) as f64,
                "backend_minutes": r.backend_minutes,
                "actions": r.actions,
                "actions_per_day": r.actions_per_day(),
                "scale_outs": r.scale_outs,
                "scale_ins": r.actions - r.scale_outs,
                "peak_backends": r.peak_allocated,
                "time_above_target_in_windows_s": above_in_windows(r, windows, config),
            })
        })
        .collect();
    serde_json::json!({
        "trace": args.trace,
        "target_per_backend": args.target_per_backend,
        "provisioning_delay_s": args.provisioning_delay,
        "drain_delay_s": args.drain_delay,
        "min": args.min,
        "max": args.max,
        "epoch": args.epoch,
        "schedule": windows.iter().map(|o| serde_json::json!({
            "name": o.name,
            "start": super::schedule::format_time(o.start),
            "end": super::schedule::format_time(o.end),
            "provision_from": super::schedule::format_time(o.provision_from),
            "min": o.min,
            "max": o.max,
        })).collect::<Vec<_>>(),
        "policies": policies,
    })
}
