//! `xdplb autoscale simulate`: replay a trace against the policies.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::{
    Limits, PolicyKind, SimConfig, SimResult, Trace,
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
    let config = SimConfig {
        provisioning_delay_s: args.provisioning_delay,
        drain_delay_s: args.drain_delay,
        min: args.min,
        max: args.max,
        initial: args.min,
        ..SimConfig::new(args.target_per_backend)
    };
    let results = run_policies(&trace, &kinds, &config);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report(args, &results))?
        );
    } else {
        for r in &results {
            println!("{}", r.summary());
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

/// What `simulate -o json` prints: the run's settings and each policy's figures (those of
/// [`SimResult::summary`]).
pub fn json_report(args: &SimulateArgs, results: &[SimResult]) -> serde_json::Value {
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
        "policies": policies,
    })
}
