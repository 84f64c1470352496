//! The daemon, `xdplb run`: from the checks at start to the last log line at stop. The agent
//! it runs lives in [`crate::agent`], its API in [`crate::api`].

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use lb_common::maps::{DEFAULT_CONNTRACK_CAPACITY, PIN_LAYOUT, Settings};
use log::{info, warn};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    agent::{self, Agent, DEFAULT_STATE_FILE},
    api,
    balancer::{BackendSpec, Balancer, Scheduler, Vip, VipOptions},
    config::Config,
    loader::{AttachMode, LoadOptions, Loaded},
    maps::DynMaps,
    pin::{DEFAULT_PIN_DIR, Pinned, PinnedVersion},
};

/// What `xdplb run` is given.
#[derive(Clone, Debug, clap::Args)]
pub struct DaemonOptions {
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", required = true, value_name = "IF")]
    pub ifaces: Vec<String>,
    /// XDP attach mode: `auto` tries native and falls back to skb.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,
    /// Where the program, maps and links are pinned; an agent finding them there adopts them.
    #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
    /// Where the agent keeps its state (VIPs, backends, ids) across restarts.
    #[arg(long, default_value = DEFAULT_STATE_FILE, value_name = "FILE")]
    pub state_file: PathBuf,
    /// Nothing outlives the agent: no state file, and the program is detached at exit.
    #[arg(long)]
    pub ephemeral: bool,
    /// Log the packet counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub stats_interval: u64,
    /// A VIP to balance, `ADDR:PORT/PROTO[=SCHEDULER]` (used when there is no saved state);
    /// ipvsadm's scheduler names (rr, wrr, lc, wlc, sh, mh) work too, in any case.
    #[arg(long = "vip", value_name = "VIP[=SCHEDULER]", value_parser = parse_vip)]
    pub vips: Vec<(Vip, Scheduler)>,
    /// A backend of a VIP, `VIP=ADDR[:PORT][@WEIGHT]` (without a port: the VIP's; used when
    /// there is no saved state).
    #[arg(long = "backend", value_name = "VIP=ADDR[:PORT][@WEIGHT]", value_parser = parse_backend)]
    pub backends: Vec<(Vip, BackendSpec)>,
    /// Flows the connection table holds (fixed when the program is first loaded; the
    /// config's `conntrack.capacity` wins if given).
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_CAPACITY, value_name = "FLOWS")]
    pub conntrack_capacity: u32,
    /// Half-open TCP flows the embryonic table holds (fixed when the program is loaded;
    /// default: an eighth of the connection table's capacity, or the config's
    /// `conntrack.embryonic_capacity`).
    #[arg(long, value_name = "FLOWS")]
    pub embryonic_capacity: Option<u32>,
    /// New flows per second per CPU above which new flows of `maglev` and `source-hash` VIPs
    /// are sent on without state (0: no limit; default: the config's
    /// `conntrack.new_flow_rate_limit`, else the running program's, else 0).
    #[arg(long, value_name = "FLOWS")]
    pub new_flow_rate_limit: Option<u32>,
    /// The outer IPv4 source prefix of `ipip` VIPs' packets: the low bits (at most 16) vary
    /// per flow (default: the config's `[ipip] source-v4`, else the running program's, else
    /// 10.255.0.0/16; the flag wins over the file, on reload too). Backends must accept
    /// encapsulated packets from it.
    #[arg(long, value_name = "PREFIX")]
    pub ipip_source_v4: Option<crate::model::SourcePrefix>,
    /// As `--ipip-source-v4`, for IPv6 VIPs (`[ipip] source-v6`; default:
    /// fd00:ffff:ffff::/96).
    #[arg(long, value_name = "PREFIX")]
    pub ipip_source_v6: Option<crate::model::SourcePrefix>,
    /// Config file (TOML): VIPs, backends, health checks, autoscaling, the connection table.
    /// The source of truth: applied over the saved state at start and again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Also serve the API on this TCP address; requires --api-token-file.
    #[arg(long, value_name = "ADDR", requires = "api_token_file")]
    pub api_tcp: Option<SocketAddr>,
    /// File holding the bearer token that TCP API requests must carry; only its owner may
    /// read it (mode 600).
    #[arg(long, value_name = "FILE", requires = "api_tcp")]
    pub api_token_file: Option<PathBuf>,
    /// API connections open at once, per listener (the Unix socket, --api-tcp); past it the
    /// oldest idle one is closed for a new one.
    #[arg(long, default_value_t = 256, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub api_max_connections: u16,
    /// Seconds an API client has to send a request's head (from connecting, or from the end of
    /// its last answer: so also how long a connection may stay idle), and again its body.
    #[arg(long, default_value_t = api::Limits::default().header_timeout.as_secs(),
          value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub api_timeout: u64,
    /// Autoscalers decide and report (`xdplb autoscale status`, logs, metrics) but change no
    /// backend.
    #[arg(long)]
    pub autoscale_dry_run: bool,
    /// Replace the pinned program with this binary's even if it is the same build: pinned maps
    /// that fit are kept (tracked connections survive), the interfaces switch atomically.
    #[arg(long)]
    pub replace_program: bool,
    /// Leave ICMP echo requests to VIP addresses to the kernel instead of answering them in the
    /// data path.
    #[arg(long)]
    pub no_icmp_echo: bool,
    /// The API socket (the CLI's global `--socket`).
    #[arg(skip)]
    pub socket: PathBuf,
}

pub fn parse_vip(s: &str) -> Result<(Vip, Scheduler), String> {
    let (vip, scheduler) = s.split_once('=').unwrap_or((s, "maglev"));
    Ok((
        vip.parse()
            .map_err(|e: crate::balancer::Error| e.to_string())?,
        scheduler
            .parse()
            .map_err(|e: crate::balancer::Error| e.to_string())?,
    ))
}

/// `VIP=ADDR[:PORT][@WEIGHT]`: a backend without a port takes the VIP's.
pub fn parse_backend(s: &str) -> Result<(Vip, BackendSpec), String> {
    let (vip, backend) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected VIP=ADDR[:PORT][@WEIGHT]"))?;
    let vip: Vip = vip
        .parse()
        .map_err(|e: crate::balancer::Error| e.to_string())?;
    let (addr, weight) = backend.split_once('@').unwrap_or((backend, "1"));
    let addr = crate::model::parse_backend_addr(addr, vip.port).map_err(|e| e.to_string())?;
    let weight = weight
        .parse()
        .map_err(|_| format!("weight {weight:?} is not a whole number"))?;
    Ok((vip, BackendSpec::new(addr, weight)))
}

mod serving;

use serving::{log_plan, run_agent};

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

/// Runs the agent until it is stopped: checks, locks, loads or adopts the program, restores
/// and applies its state and config, attaches, serves the API.
pub fn run(args: DaemonOptions) -> anyhow::Result<()> {
    let socket = args.socket.as_path();
    raise_file_limit();
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
        return Err(
            crate::model::BadInput(format!("--backend for {vip}, which is not a --vip")).into(),
        );
    }
    for iface in &args.ifaces {
        crate::loader::if_index(iface).context("--iface")?;
    }
    crate::caps::check()?;
    let config = args
        .config
        .as_ref()
        .map(Config::load)
        .transpose()
        .map_err(|err| crate::model::BadInput(err.to_string()))?;
    // One agent per state file and per pin directory.
    let (state_lock, saved) = if args.ephemeral {
        (None, None)
    } else {
        let lock = lock_state_file(&args.state_file)?;
        (Some(lock), agent::load_state(&args.state_file)?)
    };
    api::check_socket(socket)?;
    if args.ephemeral {
        crate::pin::remove_stale_ephemeral(&args.pin_dir);
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
    let mounted_here = crate::pin::ensure_bpffs(&pin_dir)?;
    let private = crate::pin::is_private_mount(&pin_dir, mounted_here);
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
    let pin_lock = match crate::pin::Lock::take(&pin_dir, "the pin directory") {
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
            embryonic_capacity: embryonic_capacity(&args, config.as_ref(), conntrack_capacity),
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

/// Raises the soft limit on open files to the hard one: every API connection, health check and
/// map takes a file descriptor, and running out of them fails health checks along with
/// everything else.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!("open files limit raised from {soft} to {hard}"),
            Err(err) => warn!("raising the open files limit from {soft} to {hard}: {err}"),
        },
        Ok(_) => {}
        Err(err) => warn!("reading the open files limit: {err}"),
    }
}

/// Locks `state_file` (through `STATE_FILE.lock` next to it, since the file itself is replaced
/// on every save) for this agent alone.
fn lock_state_file(state_file: &Path) -> anyhow::Result<crate::pin::Lock> {
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
    crate::pin::Lock::take(&path, "the state file's lock")
}

/// Runs the agent until SIGTERM/SIGINT or `xdplb stop`; returns whether to detach.
fn serve(
    args: &DaemonOptions,
    config: Option<Config>,
    saved: Option<agent::SavedState>,
    socket: &Path,
    mut pinned: Pinned,
    (adopting, replace): (bool, Option<PinnedVersion>),
    (runtime, signals): (tokio::runtime::Runtime, Signals),
) -> anyhow::Result<bool> {
    // Settings come from the running program, before a replacement stages new maps.
    let adopted_settings = adopting.then(|| pinned.settings()).transpose()?;
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
            embryonic_capacity: embryonic_capacity(args, config.as_ref(), conntrack_capacity),
            // Not through `pinned.maps()`: the running program's maps may be of another
            // layout (its settings were shorter before `ipip`).
            slots: pinned.capacity(lb_common::maps::SLOTS_MAP)?,
        })?;
    }
    let maps = pinned.maps()?;
    let slots = maps.slots_capacity();
    let maps: DynMaps = Box::new(maps);
    let mut settings = if let Some(settings) = adopted_settings {
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
    settings.icmp_echo = u8::from(!args.no_icmp_echo);
    settings = Settings {
        new_flow_rate_limit: args
            .new_flow_rate_limit
            .or(config
                .as_ref()
                .and_then(|c| c.conntrack.new_flow_rate_limit))
            .unwrap_or(settings.new_flow_rate_limit),
        ..settings
    };
    // The flags win over the file's `[ipip]`; what both leave out stays as it is.
    let file_ipip = config.as_ref().map(|c| c.ipip.clone()).unwrap_or_default();
    settings = with_ipip_sources(
        settings,
        args.ipip_source_v4.or(file_ipip.source_v4),
        args.ipip_source_v6.or(file_ipip.source_v6),
    )?;
    // Every gateway of a cluster hashes with the same seed: the config's, else the one last
    // applied, else what the program runs with.
    if let Some(cluster) = config
        .as_ref()
        .or(saved.as_ref().map(|s| &s.config))
        .and_then(|c| c.cluster.clone())
    {
        settings.hash_seed = cluster.hash_seed;
    }
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
    let mut agent = Agent::new(balancer, Box::new(pinned), state_file.clone())?;
    agent.config = applied_config;
    agent.held = held;
    agent.autoscale_dry_run = args.autoscale_dry_run;
    agent.ipip_source_flags = (args.ipip_source_v4, args.ipip_source_v6);
    agent.about = agent::About {
        program: match (adopting, &replace) {
            (false, _) => "loaded",
            (true, None) => "adopted",
            (true, Some(_)) => "replaced",
        }
        .to_owned(),
        config_file: args.config.clone(),
        api_socket: socket.to_owned(),
        api_tcp: api_tcp.as_ref().map(|(addr, _)| *addr),
        metrics: args.metrics,
    };
    agent.sync_autoscale(&saved_pools);
    // The config file, when there is one, wins over the saved state; in cluster mode its VIPs
    // only seed an empty store, and the agent runs what it last applied until the store
    // answers.
    if let (Some(mut config), Some(path)) = (config, &args.config) {
        if let Some(cluster) = config.cluster.clone().filter(|c| c.enabled()) {
            let seed = std::mem::replace(&mut config.vips, agent.running_config().vips);
            info!(
                "cluster mode: the config lives in etcd ({}, prefix {}), this gateway is {:?}",
                cluster.etcd_endpoints.join(","),
                cluster.etcd_prefix,
                cluster.gateway()
            );
            agent.cluster = Some(agent::cluster::ClusterState::new(cluster, seed));
        }
        let plan = agent
            .apply_config_from(config, crate::agent::audit::Source::Start)
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
    let bgp_config = agent.config.bgp.clone();
    let shared = api::share(agent);
    // Announcements start once the program is attached, and end before the agent does.
    let bgp = match bgp_config {
        Some(bgp) => {
            let dir = socket.with_extension("bird");
            let speaker = crate::cluster::bgp::Speaker::start(&bgp, &dir)
                .context("starting the BGP speaker of [bgp]")?;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (shared, flag) = (Arc::clone(&shared), Arc::clone(&stop));
            let thread = std::thread::Builder::new()
                .name("xdplb-bgp".into())
                .spawn(move || {
                    crate::cluster::bgp::announce_until(
                        speaker,
                        shared,
                        flag,
                        std::time::Duration::from_millis(200),
                    )
                })
                .context("starting the BGP thread")?;
            Some((thread, stop))
        }
        None => None,
    };
    let timeout = std::time::Duration::from_secs(args.api_timeout);
    let limits = api::Limits {
        max_connections: usize::from(args.api_max_connections),
        header_timeout: timeout,
        body_timeout: timeout,
        ..api::Limits::default()
    };
    let api_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("xdplb-api")
        .enable_all()
        .build()
        .context("starting the API's runtime")?;
    let detach = runtime.block_on(run_agent(
        Arc::clone(&shared),
        socket,
        args.stats_interval,
        args.metrics,
        (api_runtime.handle(), api_tcp, limits),
        signals,
        args.config.clone(),
    ));
    // Withdrawn first: the router stops sending flows here before the agent is gone.
    if let Some((thread, stop)) = bgp {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = thread.join();
    }
    // Requests still being answered are cut short: the agent is stopping.
    api_runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    let detach = detach?;
    if args.ephemeral {
        let _ = std::fs::remove_file(&state_file);
    }
    Ok(detach)
}

/// Applies the VIPs and backends given on the command line, all or nothing.
/// (`run` has checked that every `--backend` is of a `--vip`.)
fn configure(balancer: &mut Balancer<DynMaps>, args: &DaemonOptions) -> anyhow::Result<()> {
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

/// The embryonic table's capacity: `--embryonic-capacity`, else the config's, else an eighth
/// of the connection table's.
fn embryonic_capacity(
    args: &DaemonOptions,
    config: Option<&Config>,
    conntrack_capacity: u32,
) -> u32 {
    args.embryonic_capacity
        .or(config.and_then(|c| c.conntrack.embryonic_capacity))
        .unwrap_or(lb_common::maps::embryonic_capacity_for(conntrack_capacity))
}

/// `settings` with the `ipip` outer source prefixes given (each of its own family).
fn with_ipip_sources(
    mut settings: Settings,
    v4: Option<crate::model::SourcePrefix>,
    v6: Option<crate::model::SourcePrefix>,
) -> anyhow::Result<Settings> {
    use lb_common::encap::source_bits;
    use std::net::IpAddr;
    if let Some(prefix) = v4 {
        let IpAddr::V4(addr) = prefix.addr else {
            anyhow::bail!("--ipip-source-v4 {prefix} is not an IPv4 prefix");
        };
        settings.ipip_source_v4 = addr.octets();
        settings.ipip_source_bits_v4 = source_bits(false, prefix.len);
    }
    if let Some(prefix) = v6 {
        let IpAddr::V6(addr) = prefix.addr else {
            anyhow::bail!("--ipip-source-v6 {prefix} is not an IPv6 prefix");
        };
        settings.ipip_source_v6 = addr.octets();
        settings.ipip_source_bits_v6 = source_bits(true, prefix.len);
    }
    Ok(settings)
}

#[cfg(test)]
mod ipip_source_tests {
    use super::*;

    #[test]
    fn ipip_sources_set_the_prefix_and_its_varied_bits() {
        let p = |s: &str| s.parse::<crate::model::SourcePrefix>().unwrap();
        let s = with_ipip_sources(
            Settings::default(),
            Some(p("100.64.7.0/24")),
            Some(p("fd00:1::/112")),
        )
        .unwrap();
        assert_eq!(s.ipip_source_v4, [100, 64, 7, 0]);
        assert_eq!(s.ipip_source_bits_v4, 8);
        assert_eq!(s.ipip_source_v6[..4], [0xfd, 0, 0, 1]);
        assert_eq!(s.ipip_source_bits_v6, 16);
        assert!(with_ipip_sources(Settings::default(), Some(p("fd00::/64")), None).is_err());
        assert!(with_ipip_sources(Settings::default(), None, Some(p("10.0.0.0/8"))).is_err());
        let unchanged = with_ipip_sources(Settings::default(), None, None).unwrap();
        assert_eq!(unchanged, Settings::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_takes_ipvsadm_schedulers_and_backends_without_a_port() {
        let (vip, scheduler) = parse_vip("198.19.0.1:80/tcp=WLC").unwrap();
        assert_eq!(vip.to_string(), "198.19.0.1:80/tcp");
        assert_eq!(scheduler, Scheduler::LeastConn);
        assert_eq!(
            parse_vip("198.19.0.1:80/tcp=mh").unwrap().1,
            Scheduler::Maglev
        );
        let (_, spec) = parse_backend("198.19.0.1:80/tcp=10.0.0.2@3").unwrap();
        assert_eq!(
            (spec.addr.to_string(), spec.weight),
            ("10.0.0.2:80".into(), 3)
        );
        let (_, spec) = parse_backend("[fd00::1]:443/tcp=[fd00::2]").unwrap();
        assert_eq!(spec.addr.to_string(), "[fd00::2]:443");
        let (_, spec) = parse_backend("198.19.0.1:80/tcp=10.0.0.2:8080").unwrap();
        assert_eq!(spec.addr.to_string(), "10.0.0.2:8080");
        assert!(parse_backend("198.19.0.1:80/tcp=10.0.0.2:http").is_err());
    }
}
