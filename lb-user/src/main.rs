//! `xdplb`: the agent and its command line.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use lb_common::maps::{DEFAULT_CONNTRACK_CAPACITY, Settings};
use lb_user::{
    balancer::{BackendSpec, Balancer, Scheduler, Vip, VipOptions},
    dataplane::Counters,
    loader::{AttachMode, LoadOptions, Loaded},
    maps::BpfMaps,
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
    /// A VIP to balance, `ADDR:PORT/PROTO[=SCHEDULER]` (port 0: every port; scheduler
    /// maglev by default). Repeat for several.
    #[arg(long = "vip", value_name = "VIP[=SCHEDULER]", value_parser = parse_vip)]
    vips: Vec<(Vip, Scheduler)>,
    /// A backend of a VIP, `VIP=ADDR:PORT[@WEIGHT]` (weight 1 by default). Repeat for several.
    #[arg(long = "backend", value_name = "VIP=ADDR:PORT[@WEIGHT]", value_parser = parse_backend)]
    backends: Vec<(Vip, BackendSpec)>,
    /// Flows the connection table holds.
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_CAPACITY, value_name = "FLOWS")]
    conntrack_capacity: u32,
}

fn parse_vip(s: &str) -> Result<(Vip, Scheduler), String> {
    let (vip, scheduler) = s.split_once('=').unwrap_or((s, "maglev"));
    Ok((
        vip.parse()
            .map_err(|e: lb_user::balancer::Error| e.to_string())?,
        scheduler
            .parse()
            .map_err(|e: lb_user::balancer::Error| e.to_string())?,
    ))
}

fn parse_backend(s: &str) -> Result<(Vip, BackendSpec), String> {
    let (vip, backend) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected VIP=ADDR:PORT[@WEIGHT]"))?;
    let (addr, weight) = backend.split_once('@').unwrap_or((backend, "1"));
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an ADDR:PORT"))?;
    let weight = weight
        .parse()
        .map_err(|_| format!("weight {weight:?} is not a whole number"))?;
    Ok((
        vip.parse()
            .map_err(|e: lb_user::balancer::Error| e.to_string())?,
        BackendSpec::new(addr, weight),
    ))
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
    let mut loaded = Loaded::load_with(LoadOptions {
        conntrack_capacity: args.conntrack_capacity,
        ..LoadOptions::default()
    })?;
    let mut balancer = loaded.balancer(Settings::default())?;
    configure(&mut balancer, &args)?;
    for iface in &args.ifaces {
        loaded.attach(iface, args.xdp_mode)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(wait_for_shutdown(&loaded, &balancer, args.stats_interval))?;
    info!(
        "detaching; final counters:\n{}",
        report(&loaded, &balancer)?
    );
    drop(loaded);
    info!("detached");
    Ok(())
}

/// Applies the VIPs and backends given on the command line, all or nothing.
fn configure(balancer: &mut Balancer<BpfMaps>, args: &RunArgs) -> anyhow::Result<()> {
    if let Some((vip, _)) = args
        .backends
        .iter()
        .find(|(v, _)| !args.vips.iter().any(|(w, _)| w == v))
    {
        anyhow::bail!("--backend for {vip}, which is not a --vip");
    }
    for (vip, scheduler) in &args.vips {
        let options = VipOptions {
            scheduler: *scheduler,
            ..VipOptions::default()
        };
        balancer.add_vip(*vip, options)?;
        let backends: Vec<BackendSpec> = args
            .backends
            .iter()
            .filter(|(v, _)| v == vip)
            .map(|(_, b)| *b)
            .collect();
        balancer.set_backends(vip, backends)?;
    }
    for info in balancer.vips() {
        let backends: Vec<String> = info
            .backends
            .iter()
            .map(|b| format!("{}@{}", b.spec.addr, b.spec.weight))
            .collect();
        info!(
            "VIP {} ({}): {}",
            info.vip,
            info.options.scheduler,
            backends.join(" ")
        );
    }
    Ok(())
}

/// The global counters, then packets, bytes and new flows per VIP and backend.
fn report(loaded: &Loaded, balancer: &Balancer<BpfMaps>) -> anyhow::Result<String> {
    let mut out = Counters::read(&loaded.ebpf)?.to_string();
    for info in balancer.vips() {
        let s = balancer.vip_stats(&info.vip)?;
        out += &format!(
            "VIP {:<28} packets {:>10} bytes {:>12} new flows {:>8}\n",
            info.vip.to_string(),
            s.packets,
            s.bytes,
            s.new_flows
        );
        for b in &info.backends {
            let s = balancer.backend_stats(b.id)?;
            out += &format!(
                "  backend {:<24} packets {:>10} bytes {:>12} new flows {:>8}\n",
                b.spec.addr.to_string(),
                s.packets,
                s.bytes,
                s.new_flows
            );
        }
    }
    Ok(out)
}

async fn wait_for_shutdown(
    loaded: &Loaded,
    balancer: &Balancer<BpfMaps>,
    stats_interval: u64,
) -> anyhow::Result<()> {
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
                info!("counters:\n{}", report(loaded, balancer)?);
            }
        }
    }
}
