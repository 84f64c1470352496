//! The command line: `xdplb run` and the commands that drive a running agent.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use lb_user::{
    api::DEFAULT_SOCKET,
    balancer::{BackendState, Forwarding, Scheduler, Vip},
    daemon::DaemonOptions,
    loader::AttachMode,
};

/// What `xdplb --help` ends with: examples and the exit codes (README: Exit codes).
const MAIN_AFTER_HELP: &str = "\
Examples:
  xdplb run --iface eth0 --vip 198.19.0.1:80/tcp=wlc --backend 198.19.0.1:80/tcp=10.0.0.2
  xdplb vip add 198.19.0.1:443/tcp --scheduler rr
  xdplb backend add 198.19.0.1:443/tcp 10.0.0.3 --weight 2
  XDPLB_SOCKET=/run/xdplb/xdplb.sock xdplb stats -o json

Exit codes:
  0  ok
  1  failed (e.g. missing capabilities, no such interface, the kernel refused)
  2  bad input (arguments, a config file)
  3  the agent cannot be reached, or did not answer in time
  4  the agent refused the request (HTTP 4xx: bad value, no such VIP, already exists)
  5  the agent failed at the request (HTTP 5xx)";

#[derive(Parser)]
#[command(name = "xdplb", about = "A layer-4 load balancer on XDP", after_help = MAIN_AFTER_HELP)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "XDPLB_SOCKET", default_value = DEFAULT_SOCKET,
          value_name = "PATH")]
    pub socket: PathBuf,
    /// Seconds the CLI waits for each answer of the agent before giving up.
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS",
          value_parser = parse_timeout)]
    pub timeout: f64,
    /// Output format of the CLI commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Log at debug level (the verifier's whole log if the kernel refuses the program, the
    /// counters per VIP and backend at stop). RUST_LOG overrides it.
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent: load (or adopt) and attach the program, serve the API until stopped.
    #[command(after_help = "\
Examples:
  xdplb run --iface eth0 --config /etc/xdplb/xdplb.toml
  xdplb run --iface eth0 --vip 198.19.0.1:80/tcp=mh --backend 198.19.0.1:80/tcp=10.0.0.2@3")]
    Run(Box<DaemonOptions>),
    /// Add, remove, list and show VIPs.
    #[command(
        subcommand,
        after_help = "Example:\n  xdplb vip add 198.19.0.1:80/tcp --scheduler wrr"
    )]
    Vip(VipCommand),
    /// Add, remove, change, drain and list a VIP's backends.
    #[command(
        subcommand,
        after_help = "Example:\n  xdplb backend add 198.19.0.1:80/tcp 10.0.0.2:8080 --weight 2"
    )]
    Backend(BackendCommand),
    /// Packet counters and traffic per VIP and backend.
    #[command(
        after_help = "Examples:\n  xdplb stats\n  xdplb stats -o json\n  xdplb stats --watch 0.5\n  xdplb stats --zero"
    )]
    Stats {
        /// Print again every this many seconds (fractions too, at least 0.1) until
        /// interrupted, each frame with its time and the rates since the one before.
        #[arg(long, value_name = "SECONDS", value_parser = parse_watch)]
        watch: Option<f64>,
        /// Set the counters, events and per-VIP and per-backend traffic to zero (active
        /// connections, table fill and least-connections' opened-flow counts stay).
        #[arg(long, conflicts_with = "watch")]
        zero: bool,
    },
    /// A full-screen live view: VIPs and backends with rates, connections, health, the
    /// autoscalers, table fill and drops; refreshed every second. q quits.
    #[command(after_help = "Examples:\n  xdplb top\n  xdplb top --interval 0.5")]
    Top {
        /// Seconds between refreshes (at least 0.1).
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_watch)]
        interval: f64,
    },
    /// What the agent runs.
    #[command(after_help = "Example:\n  xdplb status -o json")]
    Status,
    /// Cluster mode: the gateways sharing the config in etcd.
    #[command(subcommand, after_help = "Example:\n  xdplb cluster status -o json")]
    Cluster(ClusterCommand),
    /// The connection table: list tracked flows, flush them.
    #[command(
        subcommand,
        after_help = "Examples:\n  xdplb conn list --vip 198.19.0.1:80/tcp\n  xdplb conn flush --backend 10.1.0.2:8080"
    )]
    Conn(ConnCommand),
    /// Bring the running VIPs and backends to a config file: print the plan, apply it.
    #[command(after_help = "Example:\n  xdplb apply -f /etc/xdplb/xdplb.toml --dry-run")]
    Apply {
        /// The config file (TOML).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check a config file without an agent: exit 0 if it is good, 2 with every error on a line
    /// of its own.
    #[command(after_help = "Example:\n  xdplb check -f /etc/xdplb/xdplb.toml")]
    Check {
        /// The config file (TOML).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// The running configuration.
    #[command(
        subcommand,
        after_help = "Example:\n  xdplb config export > /etc/xdplb/xdplb.toml"
    )]
    Config(ConfigCommand),
    /// The interfaces the program runs on: list, attach one more, detach one.
    #[command(subcommand, after_help = "Example:\n  xdplb iface attach eth1")]
    Iface(IfaceCommand),
    /// Stop the agent. The program stays attached (traffic flows) unless --detach.
    #[command(after_help = "Examples:\n  xdplb stop\n  xdplb stop --detach")]
    Stop {
        /// Also detach the program from every interface and unpin everything.
        #[arg(long)]
        detach: bool,
    },
    /// Autoscaling: what the agent's autoscalers see and decide, and an offline simulator.
    #[command(subcommand, after_help = "Example:\n  xdplb autoscale status")]
    Autoscale(AutoscaleCommand),
    /// On an `ipip` backend: attach (or replace, hitless) the XDP program that strips the
    /// outer header of IPv4-in-IPv4 and IPv6-in-IPv6 packets arriving on an interface, pinned
    /// so that it stays after this command exits; no agent needed.
    #[command(
        after_help = "Examples:\n  xdplb decap --iface eth0\n  xdplb decap --iface eth0 --detach"
    )]
    Decap {
        /// The interface the encapsulated packets arrive on.
        #[arg(long, value_name = "IF")]
        iface: String,
        /// Detach it instead.
        #[arg(long)]
        detach: bool,
        /// XDP attach mode: `auto` tries native and falls back to skb.
        #[arg(long, value_enum, default_value_t)]
        xdp_mode: lb_user::loader::AttachMode,
        /// Where the links are pinned, a directory per interface.
        #[arg(long, value_name = "DIR", default_value = lb_user::decap::DECAP_PIN_ROOT)]
        pin_root: PathBuf,
    },
    /// Print a shell's completion script for xdplb (the package installs them).
    #[command(
        hide = true,
        after_help = "Example:\n  xdplb completions bash > /usr/share/bash-completion/completions/xdplb"
    )]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages, xdplb.1 and one per subcommand, to a directory (the package
    /// installs them).
    #[command(hide = true, after_help = "Example:\n  xdplb man target/man")]
    Man {
        /// The directory to write the pages to (created if missing).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ConnCommand {
    /// Tracked flows (like `ipvsadm -Lnc`): client, VIP, backend, protocol, state, age, idle
    /// time; half-open flows come from the embryonic table and are marked so.
    #[command(after_help = "Example:\n  xdplb conn list --vip 198.19.0.1:80/tcp --limit 20")]
    List {
        #[command(flatten)]
        filter: ConnFilterArgs,
        /// Show at most this many flows (and count the rest).
        #[arg(long, value_name = "N", default_value_t = lb_user::conns::DEFAULT_LIMIT)]
        limit: usize,
    },
    /// Delete tracked flows (and their reverse translations); their next packet is handled as
    /// that of a flow whose state was lost. Without a filter, every flow.
    #[command(after_help = "Example:\n  xdplb conn flush --backend 10.1.0.2:8080")]
    Flush {
        #[command(flatten)]
        filter: ConnFilterArgs,
    },
}

/// Which flows `conn list` and `conn flush` take.
#[derive(clap::Args, Debug, Default)]
pub struct ConnFilterArgs {
    /// Only the flows of this VIP (`ADDR:PORT/PROTO`).
    #[arg(long, value_name = "VIP")]
    pub vip: Option<Vip>,
    /// Only the flows pinned to this backend (`ADDR:PORT`).
    #[arg(long, value_name = "ADDR")]
    pub backend: Option<SocketAddr>,
}

#[derive(Subcommand)]
pub enum IfaceCommand {
    /// The interfaces the program is attached to.
    #[command(after_help = "Example:\n  xdplb iface list")]
    List,
    /// Attach the program to an interface of the agent's network namespace (until the agent
    /// restarts without it in --iface).
    #[command(after_help = "Example:\n  xdplb iface attach eth1 --xdp-mode native")]
    Attach {
        /// The interface.
        name: String,
        /// XDP attach mode: `auto` tries native and falls back to skb.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        xdp_mode: AttachMode,
    },
    /// Detach the program from an interface.
    #[command(after_help = "Example:\n  xdplb iface detach eth1")]
    Detach {
        /// The interface.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the running configuration as a config file (VIPs and backends as they are now,
    /// health checks, autoscaling, connection table), to keep changes made with the CLI.
    #[command(after_help = "Example:\n  xdplb config export > xdplb.toml")]
    Export,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The gateways, the etcd revision each has applied and what each announces, the
    /// autoscaler leader of each VIP.
    #[command(after_help = "Example:\n  xdplb cluster status")]
    Status,
}

#[derive(Subcommand)]
pub enum AutoscaleCommand {
    /// Each autoscaled VIP (or one): signal, forecast, desired and actual backends, the last
    /// decisions and their reasons.
    #[command(after_help = "Example:\n  xdplb autoscale status 198.19.0.1:80/tcp -o json")]
    Status {
        /// Only this VIP (`ADDR:PORT/PROTO`).
        vip: Option<Vip>,
    },
    /// Replay a load trace against the scaling policies and report how each does (offline; no
    /// agent needed).
    #[command(after_help = "\
Examples:
  xdplb autoscale simulate --trace examples/traces/flash-sale.csv
  xdplb autoscale simulate --trace examples/traces/flash-sale.csv --policy target -o json")]
    Simulate(lb_user::autoscale::cli::SimulateArgs),
}

#[derive(Subcommand)]
pub enum VipCommand {
    /// Add a VIP (`ADDR:PORT/PROTO`, port 0: every port).
    #[command(after_help = "\
Examples:
  xdplb vip add 198.19.0.1:80/tcp
  xdplb vip add 198.19.0.1:53/udp --scheduler sh
  xdplb vip add [fd00::1]:0/tcp --forwarding dsr-l2 --allow 10.0.0.0/8")]
    Add {
        /// The VIP: `ADDR:PORT/PROTO`, e.g. 198.19.0.1:80/tcp or [fd00::1]:443/tcp.
        vip: Vip,
        /// How new flows pick a backend; ipvsadm's names (rr, wrr, lc, wlc, sh, mh) work too,
        /// in any case.
        #[arg(long, default_value = "maglev", ignore_case = true)]
        scheduler: Scheduler,
        /// Maglev table size (a prime).
        #[arg(long)]
        ring_size: Option<u32>,
        #[command(flatten)]
        sources: SourceArgs,
        /// How packets reach the backend: nat, dsr-l2 (backends on the gateway's L2 segment
        /// hold the VIP and answer clients directly) or ipip (the same through an IP-in-IP
        /// tunnel, to backends anywhere running `xdplb decap`).
        #[arg(long, default_value = "nat")]
        forwarding: Forwarding,
        /// Where its health checks go: direct (the backend's own address) or vip (to the VIP
        /// as the data path sends clients' packets; dsr-l2 and ipip only). The check itself
        /// comes from the config file.
        #[arg(long, value_name = "PATH", value_parser = ["direct", "vip"])]
        health_path: Option<String>,
    },
    /// Remove a VIP and its backends.
    #[command(after_help = "Example:\n  xdplb vip del 198.19.0.1:80/tcp")]
    Del {
        /// The VIP: `ADDR:PORT/PROTO`.
        vip: Vip,
    },
    /// Change a VIP's scheduler, ring size, source checks, forwarding mode (tracked flows
    /// follow a new mode from their next packet), health check, notify commands or sorry
    /// backend.
    #[command(after_help = "\
Examples:
  xdplb vip set 198.19.0.1:80/tcp --scheduler WLC
  xdplb vip set 198.19.0.1:80/tcp --health http --health-uri /healthz --health-interval 2s
  xdplb vip set 198.19.0.1:80/tcp --sorry 10.0.9.2:8080 --notify-down \"/usr/local/bin/page down\"
  xdplb vip set 198.19.0.1:80/tcp --sorry none --notify-down none")]
    Set {
        /// The VIP: `ADDR:PORT/PROTO`.
        vip: Vip,
        /// How new flows pick a backend (ipvsadm's names work too, in any case).
        #[arg(long, ignore_case = true)]
        scheduler: Option<Scheduler>,
        /// Maglev table size (a prime).
        #[arg(long)]
        ring_size: Option<u32>,
        #[command(flatten)]
        sources: SourceArgs,
        /// How packets reach the backend: nat, dsr-l2 or ipip.
        #[arg(long)]
        forwarding: Option<Forwarding>,
        /// Where its health checks go: direct or vip (dsr-l2 and ipip only).
        #[arg(long, value_name = "PATH", value_parser = ["direct", "vip"])]
        health_path: Option<String>,
        #[command(flatten)]
        health: Box<HealthArgs>,
        /// Run this command (program and arguments, split on spaces) when a health check
        /// brings a backend back, with VIP, BACKEND and STATE=up set; `none` removes it.
        #[arg(long, value_name = "COMMAND")]
        notify_up: Option<String>,
        /// Run this command when a health check takes a backend down (STATE=down); `none`
        /// removes it.
        #[arg(long, value_name = "COMMAND")]
        notify_down: Option<String>,
        /// A backend (`ADDR:PORT`, or `ADDR` for the VIP's port) that takes new flows only
        /// while no other backend does; `none` removes it.
        #[arg(long, value_name = "ADDR")]
        sorry: Option<String>,
    },
    /// List every VIP.
    #[command(after_help = "Example:\n  xdplb vip list -o json")]
    List,
    /// One VIP and its backends.
    #[command(after_help = "Example:\n  xdplb vip show 198.19.0.1:80/tcp")]
    Show {
        /// The VIP: `ADDR:PORT/PROTO`.
        vip: Vip,
    },
}

#[derive(Subcommand)]
pub enum BackendCommand {
    /// Add a backend to a VIP.
    #[command(after_help = "\
Examples:
  xdplb backend add 198.19.0.1:80/tcp 10.0.0.2:8080 --weight 3
  xdplb backend add 198.19.0.1:80/tcp 10.0.0.3       (port 80, the VIP's)")]
    Add {
        /// The VIP: `ADDR:PORT/PROTO`.
        vip: Vip,
        /// The backend: `ADDR:PORT`, or `ADDR` alone for the VIP's port.
        address: String,
        /// Its share of new flows, relative to the other backends' (0..=10000).
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend; its tracked flows move to other backends.
    #[command(after_help = "Example:\n  xdplb backend del 198.19.0.1:80/tcp 10.0.0.2:8080")]
    Del {
        /// The VIP: `ADDR:PORT/PROTO`.
        vip: Vip,
        /// The backend: `ADDR:PORT`, or `ADDR` alone for the VIP's port.
        address: String,
    },
    /// Change a backend's weight and/or state.
    #[command(
        after_help = "Example:\n  xdplb backend set 198.19.0.1:80/tcp 10.0.0.2:8080 --weight 5 --state up"
    )]
    Set {
        /// The VIP: `ADDR:PORT/PROTO`.
        vip: Vip,
        /// The backend: `ADDR:PORT`, or `ADDR` alone for the VIP's port.
        address: String,
        /// Its new weight (0..=10000).
        #[arg(long)]
        weight: Option<u32>,
        /// Its new state: up, draining or down.
        #[arg(long)]
        state: Option<BackendState>,
    },
    /// Stop new flows to a backend; its tracked flows continue (`list` shows when none are left).
    #[command(after_help = "Example:\n  xdplb backend drain 198.19.0.1:80/tcp 10.0.0.2:8080")]
    Drain {
        /// The VIP: `ADDR:PORT/PROTO`.
        vip: Vip,
        /// The backend: `ADDR:PORT`, or `ADDR` alone for the VIP's port.
        address: String,
    },
    /// A VIP's backends with their state, active connections and traffic.
    #[command(after_help = "Example:\n  xdplb backend list 198.19.0.1:80/tcp -o json")]
    List {
        /// The VIP: `ADDR:PORT/PROTO`.
        vip: Vip,
    },
}

/// A timeout in seconds: a number above 0, at most a day.
fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(secs),
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0 and at most 86400"
        )),
    }
}

/// Shortest period of `stats --watch` and `top`.
pub const MIN_WATCH_SECS: f64 = 0.1;

/// A watch period in seconds: a number from 0.1 to a day.
fn parse_watch(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(secs) if (MIN_WATCH_SECS..=86_400.0).contains(&secs) => Ok(secs),
        _ => Err(format!(
            "{s:?} is not a number of seconds from {MIN_WATCH_SECS} to 86400"
        )),
    }
}

/// A VIP's health check, as `vip set` changes it: the `[vip.health]` fields of the config file.
/// Those given replace the VIP's; a new kind drops the old kind's own settings.
#[derive(clap::Args, Debug, Default)]
pub struct HealthArgs {
    /// The check: none, tcp, http, https, udp or exec.
    #[arg(id = "health", long = "health", value_name = "KIND",
          value_parser = ["none", "tcp", "http", "https", "udp", "exec"])]
    pub kind: Option<String>,
    /// Time between two checks (`1s`, `500ms`).
    #[arg(
        id = "health_interval",
        long = "health-interval",
        value_name = "DURATION"
    )]
    pub interval: Option<String>,
    /// How long one check may take, at most the interval.
    #[arg(
        id = "health_timeout",
        long = "health-timeout",
        value_name = "DURATION"
    )]
    pub timeout: Option<String>,
    /// Consecutive successes that bring a failing backend back (1..=100).
    #[arg(id = "health_rise", long = "health-rise", value_name = "N")]
    pub rise: Option<i64>,
    /// Consecutive failures that take a backend down (1..=100).
    #[arg(id = "health_fall", long = "health-fall", value_name = "N")]
    pub fall: Option<i64>,
    /// Check this port instead of the backend's.
    #[arg(id = "health_port", long = "health-port", value_name = "PORT")]
    pub port: Option<i64>,
    /// http: the request method (default GET).
    #[arg(id = "health_method", long = "health-method", value_name = "METHOD")]
    pub http_method: Option<String>,
    /// http: the request target, e.g. `/healthz` (default `/`).
    #[arg(id = "health_uri", long = "health-uri", value_name = "PATH")]
    pub http_path: Option<String>,
    /// http: the status that counts as healthy (default 200).
    #[arg(
        id = "health_expect_status",
        long = "health-expect-status",
        value_name = "CODE"
    )]
    pub http_expect_status: Option<i64>,
    /// udp: the datagram sent (default `ping`).
    #[arg(
        id = "health_udp_payload",
        long = "health-udp-payload",
        value_name = "TEXT"
    )]
    pub udp_payload: Option<String>,
    /// udp: what the reply must start with (any reply if left out).
    #[arg(
        id = "health_udp_expect",
        long = "health-udp-expect",
        value_name = "TEXT"
    )]
    pub udp_expect: Option<String>,
    /// exec: the command, split on spaces (a script for anything more); it is run with
    /// XDPLB_BACKEND (ADDR:PORT), XDPLB_BACKEND_ADDR and XDPLB_BACKEND_PORT set, exit 0 is
    /// healthy, and it is killed at the timeout.
    #[arg(id = "health_command", long = "health-command", value_name = "COMMAND")]
    pub exec_command: Option<String>,
    /// https: skip verifying the certificate (true), or verify it against the Mozilla roots
    /// (false, the default).
    #[arg(id = "health_insecure", long = "health-insecure", value_name = "BOOL")]
    pub insecure: Option<bool>,
    /// https: the name the certificate must have (the backend's address by default).
    #[arg(
        id = "health_server_name",
        long = "health-server-name",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,
}

/// A `--notify-up`/`--notify-down` value as the API takes it: `none` is no command (`[]`),
/// anything else a program and its arguments, split on spaces, checked as the config file's.
pub fn notify_command(flag: &str, text: &str) -> Result<Vec<String>, lb_user::model::BadInput> {
    if text == "none" {
        return Ok(Vec::new());
    }
    let argv: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    if argv.is_empty() {
        return Err(lb_user::model::BadInput(format!(
            "--{flag}: the program must not be empty (`--{flag} none` removes the command)"
        )));
    }
    lb_user::config::check_notify(&argv)
        .map_err(|err| lb_user::model::BadInput(format!("--{flag}: {err}")))?;
    Ok(argv)
}

impl HealthArgs {
    /// The API's `health` object, if any health flag was given.
    pub fn settings(self) -> Option<lb_user::config::HealthSettings> {
        let settings = lb_user::config::HealthSettings {
            kind: self.kind,
            interval: self.interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
            port: self.port,
            http_method: self.http_method,
            http_path: self.http_path,
            http_expect_status: self.http_expect_status,
            udp_payload: self.udp_payload,
            udp_expect: self.udp_expect,
            path: None,
            insecure: self.insecure,
            tls_server_name: self.tls_server_name,
            exec_command: self
                .exec_command
                .map(|c| c.split_whitespace().map(str::to_owned).collect()),
        };
        (settings != lb_user::config::HealthSettings::default()).then_some(settings)
    }
}

/// A VIP's source checks, as `vip add` and `vip set` take them.
#[derive(clap::Args, Debug, Default)]
pub struct SourceArgs {
    /// Let in only sources under this prefix (`ADDR/LEN`; repeat for more). `vip set`
    /// replaces the list; `--allow none` empties it.
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<String>,
    /// Drop sources under this prefix (repeatable; the longest prefix of either list that
    /// holds a source decides). `vip set` replaces the list; `--deny none` empties it.
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<String>,
    /// New flows a second per source prefix (also the burst); 0 removes the limit.
    #[arg(long, value_name = "N")]
    pub source_rate_limit: Option<u32>,
    /// The limit counts sources per prefix of this length (default 32 for IPv4, 64 for IPv6).
    #[arg(long, value_name = "LEN")]
    pub source_prefix_len: Option<u8>,
}

impl SourceArgs {
    /// A list as `vip set` sends it: none if not given, empty for `none`.
    pub fn replacement(list: &[String]) -> Option<Vec<String>> {
        match list {
            [] => None,
            [none] if none == "none" => Some(Vec::new()),
            _ => Some(list.to_vec()),
        }
    }
}
