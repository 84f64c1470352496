//! `xdplb`: the agent and its command line.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use lb_user::{
    dataplane::Counters,
    loader::{AttachMode, Loaded},
};
use log::info;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(name = "xdplb", version, about = "A layer-4 load balancer on XDP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it and run until Ctrl-C or SIGTERM, then detach.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", required = true, value_name = "IF")]
    ifaces: Vec<String>,
    /// XDP attach mode: `auto` tries native and falls back to skb.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    xdp_mode: AttachMode,
    /// Log the packet counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    stats_interval: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xdplb: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut loaded = Loaded::load()?;
    for iface in &args.ifaces {
        loaded.attach(iface, args.xdp_mode)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(wait_for_shutdown(&loaded, args.stats_interval))?;
    info!(
        "detaching; final counters:\n{}",
        Counters::read(&loaded.ebpf)?
    );
    drop(loaded);
    info!("detached");
    Ok(())
}

async fn wait_for_shutdown(loaded: &Loaded, stats_interval: u64) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let period = Duration::from_secs(stats_interval.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    info!("running; Ctrl-C or SIGTERM detaches and exits");
    loop {
        tokio::select! {
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
            _ = ticker.tick(), if stats_interval > 0 => {
                info!("counters:\n{}", Counters::read(&loaded.ebpf)?);
            }
        }
    }
}
