//! `xdplb`: the agent (`xdplb run`) and the CLI that drives it over its API socket.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use lb_common::maps::{DEFAULT_CONNTRACK_CAPACITY, PIN_LAYOUT, Settings};
use lb_user::{
    agent::{self, Agent, DEFAULT_STATE_FILE},
    api::{self, BackendView, DEFAULT_SOCKET, Shutdown, StatsView, StatusView, VipView},
    autoscale::live::Status as AutoscaleStatus,
    balancer::{BackendSpec, Balancer, Scheduler, Vip, VipOptions},
    client::{call, segment},
    config::Config,
    health::Monitor,
    loader::{AttachMode, LoadOptions, Loaded},
    maps::BpfMaps,
    pin::{DEFAULT_PIN_DIR, Pinned, PinnedVersion},
};
use log::{error, info, warn};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(name = "xdplb", version, about = "A layer-4 load balancer on XDP")]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Output format of the CLI commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Log at debug level (the verifier's whole log if the kernel refuses the program, the
    /// counters per VIP and backend at stop). RUST_LOG overrides it.
    #[arg(short = 'v', long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load (or adopt) and attach the program, serve the API until stopped.
    Run(RunArgs),
    /// Add, remove, list and show VIPs.
    #[command(subcommand)]
    Vip(VipCommand),
    /// Add, remove, change, drain and list a VIP's backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Packet counters and traffic per VIP and backend.
    Stats {
        /// Print again every this many seconds until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
    /// What the agent runs.
    Status,
    /// Bring the running VIPs and backends to a config file: print the plan, apply it.
    Apply {
        /// The config file (TOML).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check a config file without an agent: exit 0 if it is good, 1 with every error on a line
    /// of its own.
    Check {
        /// The config file (TOML).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// The running configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The interfaces the program runs on: list, attach one more, detach one.
    #[command(subcommand)]
    Iface(IfaceCommand),
    /// Stop the agent. The program stays attached (traffic flows) unless --detach.
    Stop {
        /// Also detach the program from every interface and unpin everything.
        #[arg(long)]
        detach: bool,
    },
    /// Autoscaling: what the agent's autoscalers see and decide, and an offline simulator.
    #[command(subcommand)]
    Autoscale(AutoscaleCommand),
}

#[derive(Subcommand)]
enum IfaceCommand {
    /// The interfaces the program is attached to.
    List,
    /// Attach the program to an interface of the agent's network namespace (until the agent
    /// restarts without it in --iface).
    Attach {
        name: String,
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        xdp_mode: AttachMode,
    },
    /// Detach the program from an interface.
    Detach { name: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the running configuration as a config file (VIPs and backends as they are now,
    /// health checks, autoscaling, connection table), to keep changes made with the CLI.
    Export,
}

#[derive(Subcommand)]
enum AutoscaleCommand {
    /// Each autoscaled VIP (or one): signal, forecast, desired and actual backends, the last
    /// decisions and their reasons.
    Status {
        /// Only this VIP (`ADDR:PORT/PROTO`).
        vip: Option<Vip>,
    },
    /// Replay a load trace against the scaling policies and report how each does (offline; no
    /// agent needed).
    Simulate(lb_user::autoscale::cli::SimulateArgs),
}

#[derive(Subcommand)]
enum VipCommand {
    /// Add a VIP (`ADDR:PORT/PROTO`, port 0: every port).
    Add {
        vip: Vip,
        #[arg(long, default_value = "maglev")]
        scheduler: Scheduler,
        /// Maglev table size (a prime).
        #[arg(long)]
        ring_size: Option<u32>,
    },
    /// Remove a VIP and its backends.
    Del { vip: Vip },
    /// Change a VIP's scheduler or ring size.
    Set {
        vip: Vip,
        #[arg(long)]
        scheduler: Option<Scheduler>,
        #[arg(long)]
        ring_size: Option<u32>,
    },
    /// List every VIP.
    List,
    /// One VIP and its backends.
    Show { vip: Vip },
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Add a backend to a VIP.
    Add {
        vip: Vip,
        address: SocketAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend; its tracked flows move to other backends.
    Del { vip: Vip, address: SocketAddr },
    /// Change a backend's weight and/or state.
    Set {
        vip: Vip,
        address: SocketAddr,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long, value_parser = ["up", "draining", "down"])]
        state: Option<String>,
    },
    /// Stop new flows to a backend; its tracked flows continue (`list` shows when none are left).
    Drain { vip: Vip, address: SocketAddr },
    /// A VIP's backends with their state, active connections and traffic.
    List { vip: Vip },
}

#[derive(Args)]
struct RunArgs {
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", required = true, value_name = "IF")]
    ifaces: Vec<String>,
    /// XDP attach mode: `auto` tries native and falls back to skb.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    xdp_mode: AttachMode,
    /// Where the program, maps and links are pinned; an agent finding them there adopts them.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pin_dir: PathBuf,
    /// Where the agent keeps its state (VIPs, backends, ids) across restarts.
    #[arg(long, default_value = DEFAULT_STATE_FILE, value_name = "FILE")]
    state_file: PathBuf,
    /// Nothing outlives the agent: no state file, and the program is detached at exit.
    #[arg(long)]
    ephemeral: bool,
    /// Log the packet counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    stats_interval: u64,
    /// A VIP to balance, `ADDR:PORT/PROTO[=SCHEDULER]` (used when there is no saved state).
    #[arg(long = "vip", value_name = "VIP[=SCHEDULER]", value_parser = parse_vip)]
    vips: Vec<(Vip, Scheduler)>,
    /// A backend of a VIP, `VIP=ADDR:PORT[@WEIGHT]` (used when there is no saved state).
    #[arg(long = "backend", value_name = "VIP=ADDR:PORT[@WEIGHT]", value_parser = parse_backend)]
    backends: Vec<(Vip, BackendSpec)>,
    /// Flows the connection table holds (fixed when the program is first loaded; the
    /// config's `conntrack.capacity` wins if given).
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_CAPACITY, value_name = "FLOWS")]
    conntrack_capacity: u32,
    /// Config file (TOML): VIPs, backends, health checks, conntrack settings. Used when there
    /// is no saved state; afterwards, change it with `xdplb apply -f`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Also serve the API on this TCP address; requires --api-token-file.
    #[arg(long, value_name = "ADDR", requires = "api_token_file")]
    api_tcp: Option<SocketAddr>,
    /// File holding the bearer token that TCP API requests must carry.
    #[arg(long, value_name = "FILE", requires = "api_tcp")]
    api_token_file: Option<PathBuf>,
    /// Autoscalers decide and report (`xdplb autoscale status`, logs, metrics) but change no
    /// backend.
    #[arg(long)]
    autoscale_dry_run: bool,
    /// Replace the pinned program with this binary's even if it is the same build: pinned maps
    /// that fit are kept (tracked connections survive), the interfaces switch atomically.
    #[arg(long)]
    replace_program: bool,
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            eprintln!("xdplb: error: {}", one_line(&err.to_string()));
            return ExitCode::FAILURE;
        }
    };
    let level = if cli.verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Run(args) => run(args, &cli.socket),
        Command::Check { file } => return check(&file),
        Command::Autoscale(AutoscaleCommand::Simulate(args)) => {
            lb_user::autoscale::cli::simulate_command(&args)
        }
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| rt.block_on(client_command(command, &cli.socket, cli.output))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xdplb: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `xdplb check -f FILE`: the config's errors, one line each, or what it holds.
fn check(file: &Path) -> ExitCode {
    let checked = Config::load(file).and_then(|config| {
        lb_user::config::check_rules(&config)
            .map_err(|err| lb_user::config::ConfigError::Invalid(vec![err.to_string()]))?;
        Ok(config)
    });
    match checked {
        Ok(config) => {
            let backends: usize = config.vips.iter().map(|v| v.backends.len()).sum();
            println!(
                "{}: ok ({} VIPs, {backends} backends)",
                file.display(),
                config.vips.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            let message = match err {
                lb_user::config::ConfigError::InFile { error, .. } => error.to_string(),
                other => other.to_string(),
            };
            for line in message.lines() {
                eprintln!("xdplb: error: {}: {line}", file.display());
            }
            ExitCode::FAILURE
        }
    }
}

/// clap's message on one line: the error and, if it lists them, the values it accepts.
fn one_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match lines.find(|l| l.starts_with("[possible values") || l.starts_with("tip:")) {
        Some(more) => format!("{first} {more}"),
        None => first.to_owned(),
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What happens to the program when the agent stops.
#[derive(Copy, Clone, PartialEq, Eq)]
enum AtExit {
    /// Stays attached and pinned; a new agent adopts it.
    Stays,
    /// Detached and unpinned by the agent (`stop --detach`, `--ephemeral`, a failed start).
    Detach,
    /// Goes away with the agent's private mount namespace, whatever the agent does.
    GoesWithMountNamespace,
}

fn run(args: RunArgs, socket: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Catch the signals before loading anything: from here on SIGTERM/SIGINT stop the agent in
    // order (an ephemeral one detaching) instead of killing it with its objects pinned, and
    // SIGHUP does not kill it at all.
    let signals = {
        let _runtime = runtime.enter();
        Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        }
    };
    // Everything that can be checked is checked before anything is touched: a start that fails
    // leaves the state file, the pins and the interfaces as they were.
    if let Some((vip, _)) = args
        .backends
        .iter()
        .find(|(v, _)| !args.vips.iter().any(|(w, _)| w == v))
    {
        anyhow::bail!("--backend for {vip}, which is not a --vip");
    }
    for iface in &args.ifaces {
        lb_user::loader::if_index(iface).context("--iface")?;
    }
    lb_user::caps::check()?;
    let config = args
        .config
        .as_ref()
        .map(Config::load)
        .transpose()
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    // One agent per state file and per pin directory.
    let (state_lock, saved) = if args.ephemeral {
        (None, None)
    } else {
        let lock = lock_state_file(&args.state_file)?;
        (Some(lock), agent::load_state(&args.state_file)?)
    };
    api::check_socket(socket)?;
    if args.ephemeral {
        lb_user::pin::remove_stale_ephemeral(&args.pin_dir);
    }
    let pin_dir = if args.ephemeral {
        args.pin_dir.with_file_name(format!(
            "{}-ephemeral-{}",
            args.pin_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("xdplb"),
            std::process::id()
        ))
    } else {
        args.pin_dir.clone()
    };
    let mounted_here = lb_user::pin::ensure_bpffs(&pin_dir)?;
    let private = lb_user::pin::is_private_mount(&pin_dir, mounted_here);
    if private {
        warn!(
            "{} is on a bpffs private to this mount namespace (as `ip netns exec` makes): the \
             program is detached when the agent exits, and no restart can adopt it; start the \
             agent with `nsenter --net=/var/run/netns/NS xdplb run ...` (or give it the host's \
             bpffs) to keep traffic flowing across restarts",
            pin_dir.display()
        );
    }
    let created_dir = !pin_dir.exists();
    std::fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let pin_lock = match lb_user::pin::Lock::take(&pin_dir, "the pin directory") {
        Ok(lock) => lock,
        Err(err) => {
            if created_dir {
                let _ = std::fs::remove_dir(&pin_dir);
            }
            return Err(err);
        }
    };
    let adopting = Pinned::exists(&pin_dir);
    let version = PinnedVersion::read(&pin_dir);
    if adopting && version.layout > PIN_LAYOUT {
        anyhow::bail!(
            "{} holds a balancer of pin layout {}, newer than this xdplb's {PIN_LAYOUT}: run \
             the newer xdplb, or remove it with `xdplb stop --detach` (tracked connections are \
             lost)",
            pin_dir.display(),
            version.layout
        );
    }
    let replace = adopting && (args.replace_program || version != PinnedVersion::ours());
    let pinned = if adopting {
        info!("adopting the balancer pinned in {}", pin_dir.display());
        Pinned::open(&pin_dir).inspect(|pinned| pinned.remove_staged())
    } else {
        let conntrack_capacity = config
            .as_ref()
            .filter(|_| args.conntrack_capacity == DEFAULT_CONNTRACK_CAPACITY)
            .map_or(args.conntrack_capacity, |c| c.conntrack.capacity);
        Loaded::load_with(LoadOptions {
            conntrack_capacity,
            ..LoadOptions::default()
        })
        .and_then(|loaded| Pinned::create(loaded, &pin_dir))
    };
    let pinned = match pinned {
        Ok(pinned) => pinned,
        Err(err) => {
            if !adopting {
                let _ = std::fs::remove_dir_all(&pin_dir);
            }
            return Err(err);
        }
    };
    let result = serve(
        &args,
        config,
        saved,
        socket,
        pinned,
        (adopting, replace.then_some(version)),
        (runtime, signals),
    );
    let at_exit = match &result {
        Ok(true) => AtExit::Detach,
        _ if args.ephemeral => AtExit::Detach,
        // A fresh program that never came up is not left behind.
        Err(_) if !adopting => AtExit::Detach,
        _ if private => AtExit::GoesWithMountNamespace,
        _ => AtExit::Stays,
    };
    let dir = pin_dir.display();
    match at_exit {
        AtExit::Detach => {
            // The agent's handle is gone with it; the pins say what there is to remove.
            Pinned::open(&pin_dir)?.remove()?;
            info!("stopped: detached the program and removed its pins in {dir}");
            // `stop --detach` is the operator's uninstall; a failed start keeps the state.
            if matches!(result, Ok(true)) && !args.ephemeral {
                let _ = std::fs::remove_file(&args.state_file);
            }
        }
        AtExit::GoesWithMountNamespace => info!(
            "stopped: the program is detached as the agent exits, with its pins in {dir}, which \
             are private to this mount namespace"
        ),
        AtExit::Stays if result.is_ok() => {
            info!("stopped, leaving the program attached (pinned in {dir}): a new agent adopts it")
        }
        AtExit::Stays => {}
    }
    drop((pin_lock, state_lock));
    result.map(|_| ())
}

/// Locks `state_file` (through `STATE_FILE.lock` next to it, since the file itself is replaced
/// on every save) for this agent alone.
fn lock_state_file(state_file: &Path) -> anyhow::Result<lb_user::pin::Lock> {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    lb_user::pin::Lock::take(&path, "the state file's lock")
}

/// Runs the agent until SIGTERM/SIGINT or `xdplb stop`; returns whether to detach.
fn serve(
    args: &RunArgs,
    config: Option<Config>,
    saved: Option<agent::SavedState>,
    socket: &Path,
    mut pinned: Pinned,
    (adopting, replace): (bool, Option<PinnedVersion>),
    (runtime, signals): (tokio::runtime::Runtime, Signals),
) -> anyhow::Result<bool> {
    // Settings come from the running program, before a replacement stages new maps.
    let adopted_settings = adopting.then(|| pinned.maps()?.settings()).transpose()?;
    if let Some(from) = &replace {
        let current = pinned.conntrack_capacity()?;
        let asked = config
            .as_ref()
            .map(|c| c.conntrack.capacity)
            .filter(|&c| c != DEFAULT_CONNTRACK_CAPACITY)
            .unwrap_or(args.conntrack_capacity);
        let conntrack_capacity = if asked == DEFAULT_CONNTRACK_CAPACITY {
            current
        } else {
            asked
        };
        info!(
            "replacing the pinned program ({from}) with this one ({}){}",
            PinnedVersion::ours(),
            if args.replace_program {
                ": --replace-program"
            } else {
                ""
            }
        );
        pinned.stage_replacement(LoadOptions {
            conntrack_capacity,
            slots: pinned.maps()?.slots_capacity(),
        })?;
    }
    let maps = pinned.maps()?;
    let slots = maps.slots_capacity();
    let settings = if let Some(settings) = adopted_settings {
        settings
    } else {
        // A fresh program: the timeouts of the config given, else of the one last applied.
        let timeouts = config
            .as_ref()
            .or(saved.as_ref().map(|s| &s.config))
            .map(|c| c.conntrack.timeouts())
            .unwrap_or_default();
        Settings {
            timeouts,
            ..Settings::default()
        }
    };
    let mut held = Default::default();
    let mut saved_pools = Vec::new();
    let mut applied_config = Config::default();
    let restored = saved.is_some();
    let balancer = match saved {
        Some(saved) => {
            if !args.vips.is_empty() || !args.backends.is_empty() {
                warn!(
                    "{} holds the agent's state: --vip/--backend are ignored (change VIPs with the CLI)",
                    args.state_file.display()
                );
            }
            info!(
                "restoring {} from {}",
                if adopting {
                    "the adopted maps"
                } else {
                    "a fresh program"
                },
                args.state_file.display()
            );
            held = saved.held.into_iter().collect();
            saved_pools = saved.autoscale;
            applied_config = saved.config;
            Balancer::restore(maps, slots, settings, saved.snapshot)?
        }
        None => Balancer::new(maps, slots, settings)?,
    };
    let state_file = if args.ephemeral {
        std::env::temp_dir().join(format!("xdplb-ephemeral-{}.state.json", std::process::id()))
    } else {
        args.state_file.clone()
    };
    let api_tcp = match (&args.api_tcp, &args.api_token_file) {
        (Some(addr), Some(file)) => Some((*addr, api::read_token(file)?)),
        _ => None,
    };
    let mut agent = Agent {
        balancer,
        capacity: pinned.conntrack_capacity()?,
        pinned,
        state_file: state_file.clone(),
        started: Instant::now(),
        active: Default::default(),
        config: applied_config,
        monitor: None,
        held,
        autoscale: Default::default(),
        autoscale_dry_run: args.autoscale_dry_run,
        saved: Vec::new(),
    };
    agent.sync_autoscale(&saved_pools);
    // The config file, when there is one, wins over the saved state.
    if let (Some(config), Some(path)) = (config, &args.config) {
        let plan = agent
            .apply_config(config)
            .with_context(|| format!("applying {}", path.display()))?;
        log_plan(path, &plan);
    }
    if !restored {
        configure(&mut agent.balancer, args)?;
    }
    agent::log_vips(&agent.balancer);
    if replace.is_some() {
        agent.pinned.finish_replacement()?;
        info!("the new program runs; the old one is freed");
    }
    for iface in &args.ifaces {
        agent.pinned.attach(iface, args.xdp_mode)?;
    }
    // The interfaces are the command line's: those an earlier agent attached and this one is
    // not given are detached.
    for iface in agent.pinned.ifaces() {
        if !args.ifaces.contains(&iface) {
            agent.pinned.detach(&iface)?;
            info!("{iface}: detached (not given with --iface)");
        }
    }
    if let Err(err) = agent.save_if_changed() {
        // The data path runs what was restored or configured; changes are refused until the
        // state can be saved.
        warn!("saving the state: {err:#}");
    }
    let shared = api::share(agent);
    let detach = runtime.block_on(run_agent(
        Arc::clone(&shared),
        socket,
        args.stats_interval,
        args.metrics,
        api_tcp,
        signals,
        args.config.clone(),
    ))?;
    if args.ephemeral {
        let _ = std::fs::remove_file(&state_file);
    }
    Ok(detach)
}

async fn run_agent(
    shared: agent::Shared,
    socket: &Path,
    stats_interval: u64,
    metrics: Option<SocketAddr>,
    api_tcp: Option<(SocketAddr, String)>,
    mut signals: Signals,
    config: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(Shutdown::Running);
    // Removes the socket at exit, if it is still this agent's.
    let (listener, _bound) = api::bind(socket)?;
    if let Some((addr, token)) = api_tcp {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the API address {addr}"))?;
        let app = api::router_with_token(Arc::clone(&shared), shutdown_tx.clone(), token);
        tokio::spawn(async move { axum::serve(tcp, app).await });
        info!("API also on http://{addr} (bearer token required)");
    }
    let app = api::router(Arc::clone(&shared), shutdown_tx);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let conntrack = {
        let agent = shared.lock().expect("agent lock");
        lb_user::pin::open_map(agent.pinned.dir(), lb_common::maps::CONNTRACK_MAP)?
    };
    tokio::spawn(agent::count_connections_every(
        Arc::clone(&shared),
        conntrack,
        Duration::from_secs(1),
    ));
    tokio::spawn(agent::autoscale_every(
        Arc::clone(&shared),
        Duration::from_secs(1),
    ));
    let (health_tx, health_rx) = tokio::sync::mpsc::unbounded_channel();
    {
        let mut agent = shared.lock().expect("agent lock");
        agent.monitor = Some(Monitor::new(health_tx));
        agent.sync_health();
    }
    tokio::spawn(agent::apply_health_events(Arc::clone(&shared), health_rx));
    if let Some(addr) = metrics {
        serve_metrics(Arc::clone(&shared), addr).await?;
    }
    info!("agent ready; API on {}", socket.display());
    notify(&[sd_notify::NotifyState::Ready]);

    let period = Duration::from_secs(stats_interval.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let detach = loop {
        tokio::select! {
            _ = signals.term.recv() => break false,
            _ = signals.int.recv() => break false,
            _ = signals.hup.recv() => match &config {
                Some(path) => reload(&shared, path),
                None => warn!("SIGHUP: the agent runs without --config, so there is nothing to reload"),
            },
            changed = shutdown_rx.changed() => {
                if changed.is_err() { break false; }
                if let Shutdown::Stop { detach } = *shutdown_rx.borrow() { break detach; }
            }
            _ = ticker.tick(), if stats_interval > 0 => {
                log_counters(&shared.lock().expect("agent lock"), "counters");
            }
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    server.abort();
    let mut agent = shared.lock().expect("agent lock");
    agent.monitor = None;
    log_counters(&agent, "stopping; counters");
    Ok(detach)
}

/// Logs what applying the config file `path` changed, one line per change.
fn log_plan(path: &Path, plan: &lb_user::config::Plan) {
    if plan.is_empty() {
        info!("config {}: no changes", path.display());
    }
    for change in &plan.changes {
        info!("config {}: {change}", path.display());
    }
}

/// Reloads the config file `path` (SIGHUP): applied as `xdplb apply -f` would, or refused with
/// the reason and nothing changed.
fn reload(shared: &agent::Shared, path: &Path) {
    info!("SIGHUP: reloading {}", path.display());
    let mut reloading = vec![sd_notify::NotifyState::Reloading];
    reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
    notify(&reloading);
    let applied = Config::load(path)
        .map_err(|err| err.to_string())
        .and_then(|config| {
            let mut agent = shared.lock().unwrap_or_else(|p| p.into_inner());
            agent.apply_config(config).map_err(|err| err.to_string())
        });
    match applied {
        Ok(plan) => log_plan(path, &plan),
        Err(err) => {
            for line in err.lines() {
                error!("reload refused, nothing changed: {line}");
            }
        }
    }
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd (a `Type=notify` unit) how the agent is; nothing without `NOTIFY_SOCKET`.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        warn!("notifying systemd: {err}");
    }
}

/// Serves `/metrics` on `addr` in the background.
async fn serve_metrics(shared: agent::Shared, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let shared = Arc::clone(&shared);
            async move {
                let agent = shared.lock().unwrap_or_else(|p| p.into_inner());
                match lb_user::metrics::render(&agent) {
                    Ok(text) => (axum::http::StatusCode::OK, text),
                    Err(err) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{err:#}"),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    info!("metrics on http://{addr}/metrics");
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
    Ok(())
}

/// Logs the counters that are not zero on one line, and per VIP and backend at debug level.
fn log_counters(agent: &Agent, what: &str) {
    match agent.pinned.counters() {
        Ok(counters) => {
            let nonzero: Vec<String> = counters
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(c, v)| format!("{}={v}", c.name()))
                .collect();
            info!(
                "{what}: {}",
                if nonzero.is_empty() {
                    "all zero".to_owned()
                } else {
                    nonzero.join(" ")
                }
            );
        }
        Err(err) => warn!("reading counters: {err:#}"),
    }
    if log::log_enabled!(log::Level::Debug) {
        match report(agent) {
            Ok(report) => report.lines().for_each(|line| log::debug!("{line}")),
            Err(err) => warn!("reading counters: {err:#}"),
        }
    }
}

/// The global counters, then packets, bytes and new flows per VIP and backend.
fn report(agent: &Agent) -> anyhow::Result<String> {
    let mut out = agent.pinned.counters()?.to_string();
    for info in agent.balancer.vips() {
        let view = api::vip_view(agent, &info).map_err(|e| anyhow::anyhow!(e.1))?;
        out += &vip_line(&view);
        for b in &view.backends {
            out += &backend_line(b);
        }
    }
    Ok(out)
}

fn vip_line(v: &VipView) -> String {
    format!(
        "VIP {:<28} {:<21} packets {:>10} bytes {:>12} new flows {:>8}\n",
        v.vip,
        v.scheduler.to_string(),
        v.packets,
        v.bytes,
        v.new_flows
    )
}

fn backend_line(b: &BackendView) -> String {
    let health = match b.healthy {
        Some(true) => "ok",
        Some(false) => "FAIL",
        None => "-",
    };
    format!(
        "  backend {:<24} w {:>5} {:<8} health {:<4} active {:>6}{} packets {:>10} bytes {:>12} new flows {:>8}\n",
        b.address.to_string(),
        b.weight,
        b.state.to_string(),
        health,
        b.active_connections,
        if b.drained { " drained" } else { "        " },
        b.packets,
        b.bytes,
        b.new_flows
    )
}

/// `autoscale status` of one VIP, as text.
fn autoscale_lines(s: &AutoscaleStatus) -> String {
    let addrs = |v: &[SocketAddr]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let mut out = format!(
        "{}  policy {} on {}{}, {}..={} backends{}\n",
        s.vip,
        s.policy,
        s.signal,
        s.target_per_backend
            .map_or(String::new(), |t| format!(", target {t}/backend")),
        s.min,
        s.max,
        if s.dry_run { " [dry run]" } else { "" }
    );
    let m = &s.sample;
    out += &format!(
        "  signal        active {:.0}  new/s {:.1}  packets/s {:.0}  bytes/s {:.0}\n",
        m.active_connections, m.new_connections, m.packets, m.bytes
    );
    out += &format!(
        "  forecast      {}\n",
        s.forecast.map_or("-".to_owned(), |f| format!("{f:.0}"))
    );
    out += &format!(
        "  backends      desired {}  allocated {}  in rotation {}\n",
        s.desired, s.allocated, s.serving
    );
    out += &format!("  provisioning  {}\n", addrs(&s.provisioning));
    out += &format!("  draining      {}\n", addrs(&s.draining));
    out += &format!("  standby       {}\n", addrs(&s.standby));
    out += &format!("  reason        {}\n", s.reason);
    for (name, h) in [
        ("scale-up", &s.scale_up_hook),
        ("scale-down", &s.scale_down_hook),
    ] {
        if h.runs > 0 {
            out += &format!(
                "  {name:<13} runs {}  failures {}{}\n",
                h.runs,
                h.failures,
                h.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!("  last error: {e}"))
            );
        }
    }
    out += &format!("  decisions     {} out, {} in\n", s.scale_outs, s.scale_ins);
    for d in &s.decisions {
        out += &format!(
            "    {:>6}s  {} -> {}  {}{}: {}\n",
            d.at_s,
            d.from,
            d.to,
            d.reason,
            if d.dry_run { " [dry run]" } else { "" },
            d.actions.join(", ")
        );
    }
    out
}

fn vip_path(vip: &Vip) -> String {
    let addr = SocketAddr::new(vip.addr, vip.port).to_string();
    format!("/v1/vips/{}/{}", vip.proto, segment(&addr))
}

fn print<T: serde::Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => print!("{}", table()),
    }
    Ok(())
}

async fn client_command(command: Command, socket: &Path, output: Output) -> anyhow::Result<()> {
    match command {
        Command::Run(_)
        | Command::Check { .. }
        | Command::Autoscale(AutoscaleCommand::Simulate(_)) => {
            unreachable!("handled in main")
        }
        Command::Iface(IfaceCommand::List) => {
            let ifaces: Vec<String> = call(socket, Method::GET, "/v1/interfaces", None).await?;
            print(output, &ifaces, || {
                ifaces.iter().map(|i| format!("{i}\n")).collect()
            })
        }
        Command::Iface(IfaceCommand::Attach { name, xdp_mode }) => {
            let mode = match xdp_mode {
                AttachMode::Auto => "auto",
                AttachMode::Native => "native",
                AttachMode::Skb => "skb",
            };
            let body = json!({ "name": name, "xdp_mode": mode });
            let ifaces: Vec<String> =
                call(socket, Method::POST, "/v1/interfaces", Some(body)).await?;
            print(output, &ifaces, || format!("attached to {name}\n"))
        }
        Command::Iface(IfaceCommand::Detach { name }) => {
            let path = format!("/v1/interfaces/{}", segment(&name));
            call::<serde_json::Value>(socket, Method::DELETE, &path, None).await?;
            print(output, &json!({ "detached": name }), || {
                format!("detached from {name}\n")
            })
        }
        Command::Config(ConfigCommand::Export) => {
            let (status, bytes) =
                lb_user::client::request(socket, Method::GET, "/v1/config", None).await?;
            if !status.is_success() {
                anyhow::bail!("{}", String::from_utf8_lossy(&bytes));
            }
            print!("{}", String::from_utf8_lossy(&bytes));
            Ok(())
        }
        Command::Autoscale(AutoscaleCommand::Status { vip }) => {
            let views: Vec<AutoscaleStatus> = match vip {
                Some(vip) => {
                    let path = format!(
                        "/v1/autoscale{}",
                        vip_path(&vip).trim_start_matches("/v1/vips")
                    );
                    vec![call(socket, Method::GET, &path, None).await?]
                }
                None => call(socket, Method::GET, "/v1/autoscale", None).await?,
            };
            print(output, &views, || {
                if views.is_empty() {
                    return "no VIP is autoscaled\n".to_owned();
                }
                views.iter().map(autoscale_lines).collect()
            })
        }
        Command::Vip(VipCommand::Add {
            vip,
            scheduler,
            ring_size,
        }) => {
            let body = json!({ "vip": vip.to_string(), "scheduler": scheduler.name(), "ring_size": ring_size });
            let view: VipView = call(socket, Method::POST, "/v1/vips", Some(body)).await?;
            print(output, &view, || vip_line(&view))
        }
        Command::Vip(VipCommand::Del { vip }) => {
            call::<serde_json::Value>(socket, Method::DELETE, &vip_path(&vip), None).await?;
            print(output, &json!({ "removed": vip.to_string() }), || {
                format!("removed VIP {vip}\n")
            })
        }
        Command::Vip(VipCommand::Set {
            vip,
            scheduler,
            ring_size,
        }) => {
            let body = json!({ "scheduler": scheduler.map(|s| s.name()), "ring_size": ring_size });
            let view: VipView = call(socket, Method::PATCH, &vip_path(&vip), Some(body)).await?;
            print(output, &view, || vip_line(&view))
        }
        Command::Vip(VipCommand::List) => {
            let vips: Vec<VipView> = call(socket, Method::GET, "/v1/vips", None).await?;
            print(output, &vips, || vips.iter().map(vip_line).collect())
        }
        Command::Vip(VipCommand::Show { vip }) => {
            let view: VipView = call(socket, Method::GET, &vip_path(&vip), None).await?;
            print(output, &view, || {
                vip_line(&view) + &view.backends.iter().map(backend_line).collect::<String>()
            })
        }
        Command::Backend(BackendCommand::Add {
            vip,
            address,
            weight,
        }) => {
            let body = json!({ "address": address.to_string(), "weight": weight });
            let view: VipView = call(
                socket,
                Method::POST,
                &format!("{}/backends", vip_path(&vip)),
                Some(body),
            )
            .await?;
            print(output, &view, || {
                vip_line(&view) + &view.backends.iter().map(backend_line).collect::<String>()
            })
        }
        Command::Backend(BackendCommand::Del { vip, address }) => {
            let path = format!(
                "{}/backends/{}",
                vip_path(&vip),
                segment(&address.to_string())
            );
            call::<serde_json::Value>(socket, Method::DELETE, &path, None).await?;
            print(output, &json!({ "removed": address }), || {
                format!("removed backend {address} from {vip}\n")
            })
        }
        Command::Backend(BackendCommand::Set {
            vip,
            address,
            weight,
            state,
        }) => {
            set_backend(
                socket,
                output,
                &vip,
                address,
                json!({ "weight": weight, "state": state }),
            )
            .await
        }
        Command::Backend(BackendCommand::Drain { vip, address }) => {
            set_backend(
                socket,
                output,
                &vip,
                address,
                json!({ "state": "draining" }),
            )
            .await
        }
        Command::Backend(BackendCommand::List { vip }) => {
            let backends: Vec<BackendView> = call(
                socket,
                Method::GET,
                &format!("{}/backends", vip_path(&vip)),
                None,
            )
            .await?;
            print(output, &backends, || {
                backends.iter().map(backend_line).collect()
            })
        }
        Command::Stats { watch } => loop {
            let stats: StatsView = call(socket, Method::GET, "/v1/stats", None).await?;
            print(output, &stats, || {
                let mut out: String = stats
                    .counters
                    .iter()
                    .filter(|(_, v)| *v > 0)
                    .map(|(name, v)| format!("{name:<24} {v:>14}\n"))
                    .collect();
                for v in &stats.vips {
                    out += &vip_line(v);
                    out += &v.backends.iter().map(backend_line).collect::<String>();
                }
                out
            })?;
            match watch {
                Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
                None => return Ok(()),
            }
        },
        Command::Status => {
            let status: StatusView = call(socket, Method::GET, "/v1/status", None).await?;
            print(output, &status, || {
                format!(
                    "version    {}\npinned in  {}\ninterfaces {}\nuptime     {} s\nVIPs       {}\nbackends   {}\n",
                    status.version,
                    status.pin_dir,
                    status.interfaces.join(" "),
                    status.uptime_secs,
                    status.vips,
                    status.backends
                )
            })
        }
        Command::Apply { file, dry_run } => {
            let text =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let path = format!("/v1/apply?dry_run={dry_run}");
            let (status, bytes) =
                lb_user::client::request(socket, Method::POST, &path, Some(text)).await?;
            let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if !status.is_success() {
                let message = answer
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("refused");
                anyhow::bail!("{}: {message}", file.display());
            }
            let view: api::ApplyView = serde_json::from_value(answer)?;
            print(output, &view, || {
                let mut out = if view.plan.is_empty() {
                    "no changes\n".to_owned()
                } else {
                    view.plan.join("\n") + "\n"
                };
                out += if view.plan.is_empty() {
                    ""
                } else if view.applied {
                    "applied\n"
                } else {
                    "(dry run: nothing changed)\n"
                };
                out
            })
        }
        Command::Stop { detach } => {
            call::<serde_json::Value>(
                socket,
                Method::POST,
                "/v1/stop",
                Some(json!({ "detach": detach })),
            )
            .await?;
            // Wait until the agent has let go of its socket.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(socket).is_ok()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            print(
                output,
                &json!({ "stopped": true, "detached": detach }),
                || {
                    if detach {
                        "stopped and detached\n".into()
                    } else {
                        "stopped\n".into()
                    }
                },
            )
        }
    }
}

async fn set_backend(
    socket: &Path,
    output: Output,
    vip: &Vip,
    address: SocketAddr,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let path = format!(
        "{}/backends/{}",
        vip_path(vip),
        segment(&address.to_string())
    );
    let view: VipView = call(socket, Method::PATCH, &path, Some(body)).await?;
    print(output, &view, || {
        vip_line(&view) + &view.backends.iter().map(backend_line).collect::<String>()
    })
}
