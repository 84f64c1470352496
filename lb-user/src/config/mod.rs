//! The config file (TOML): connection tracking, VIPs, their backends and health checks. It is
//! the daemon's config, the input of the declarative `xdplb apply -f FILE`, and the format the
//! agent writes its state back in.
//!
//! ```toml
//! [conntrack]                 # optional
//! capacity = 1000000          # flows, 1..=100_000_000
//! embryonic-capacity = 125000 # half-open TCP flows; default capacity / 8 (fixed at load)
//! new-flow-rate-limit = 0     # new flows/s per CPU before maglev/source-hash VIPs go
//!                             # stateless; 0 = off (read at start)
//! tcp-syn-timeout = "5s"      # durations: a whole number and ns, us, ms, s, m or h
//! tcp-established-timeout = "15m"
//! tcp-fin-timeout = "60s"
//! tcp-rst-timeout = "10s"
//! udp-timeout = "5m"
//!
//! [ipip]                      # optional: outer sources of ipip VIPs' packets, whose low bits
//!                             # (at most 16) vary per flow; a flag of `xdplb run` wins
//! source-v4 = "10.255.0.0/16" # an IPv4 prefix, /8 to /32
//! source-v6 = "fd00:ffff:ffff::/96" # an IPv6 prefix, /16 to /128
//!
//! [[vip]]
//! address = "198.19.0.1:80"   # ADDR:PORT, IPv6 as "[fd00::1]:80"; port 0 = every port
//! protocol = "tcp"            # tcp | udp
//! scheduler = "maglev"        # optional, default maglev
//! ring-size = 65537           # optional; a prime, checked for maglev and source-hash
//! forwarding = "nat"          # optional: nat (default) | dsr-l2 (backends on the L2 segment
//!                             # hold the VIP and answer directly; their port is the VIP's) |
//!                             # ipip (the same, tunnelled to routed backends running
//!                             # `xdplb decap`)
//!
//! [vip.health]                # optional; default kind none
//! kind = "http"               # none | tcp | http | udp
//! interval = "1s"
//! timeout = "500ms"           # <= interval
//! rise = 2
//! fall = 3
//! port = 8081                 # optional: check this port instead of the backend's
//! http-method = "GET"         # http only
//! http-path = "/healthz"      # http only
//! http-expect-status = 200    # http only
//! udp-payload = "ping"        # udp only
//! udp-expect = "pong"         # udp only; the reply must start with this
//!
//! [[vip.backend]]
//! address = "198.18.1.2:8080"
//! weight = 1                  # 0..=10000
//! state = "up"                # up | draining | down
//! ```
//!
//! A VIP may also have an `[vip.autoscale]` table: see the `autoscale` submodule. Several
//! gateways behind one ECMP router: `[cluster]` and `[bgp]`, see the `cluster` submodule
//! (with `etcd-endpoints`, the desired config lives in etcd: `crate::cluster::store`).
//!
//! Parsing is in two steps: the file's shape (TOML syntax, unknown keys and value types, with
//! toml's line and column), then a semantic pass whose errors name the field by its path,
//! e.g. `vip[1] (198.19.0.1:80/tcp) backend[0].weight: 20000 is out of range 0..=10000`. A
//! [`Config`] is therefore always valid; its serde implementations go through the same steps.
//!
//! [`plan`] compares the balancer's VIPs with a config, and [`apply_plan`] makes the balancer
//! match it, all or nothing.

mod autoscale;
mod cluster;
mod raw;
mod semantic;

pub use crate::balancer::plan::{Change, Plan};
use raw::*;
use semantic::*;

pub use crate::{
    autoscale::config::{AutoscaleConfig, ForecastModel, RuleConfig, Signal},
    duration::{format_duration, parse_duration},
};
pub use autoscale::schedule_from_toml;
pub use cluster::{
    BgpConfig, BgpPeer, ClusterConfig, DEFAULT_ETCD_PREFIX, DEFAULT_HOLD_TIME, cluster_safe,
};
pub use raw::RawHealth as HealthSettings;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{
    conntrack::{DEFAULT_TIMEOUTS, Timeouts},
    maglev::{DEFAULT_RING_SIZE, MAX_WEIGHT},
    maps::{DEFAULT_CONNTRACK_CAPACITY, MAX_BACKENDS, MAX_VIPS},
};
use serde::{Deserialize, Serialize};

use crate::{
    balancer::{
        BackendSpec, BackendState, Balancer, Error, Forwarding, Proto, Scheduler, SourcePrefix,
        Vip, VipInfo, VipOptions, plan::Target,
    },
    health::{CheckKind, HealthCheck, ProbePath},
    maps::Maps,
};

/// Largest connection table a config may ask for.
pub const MAX_CONNTRACK_CAPACITY: u32 = 100_000_000;
/// Largest health check `rise` or `fall`.
pub const MAX_RISE_FALL: u32 = 100;

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An error in a file, with its path.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        error: Box<ConfigError>,
    },
    /// Not TOML, or not the config's shape (unknown key, wrong type): toml's message, with
    /// line and column.
    #[error("{0}")]
    Syntax(String),
    /// Semantic errors, one line each, each starting with the path of its field.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A whole config: what the balancer should be.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig", into = "RawConfig")]
pub struct Config {
    /// `[conntrack]`; defaults if the table is left out.
    pub conntrack: ConntrackConfig,
    /// `[ipip]`: the outer source prefixes of `ipip` VIPs' packets.
    pub ipip: IpipConfig,
    /// `[cluster]`: several gateways behind ECMP, their config in etcd (see `cluster`).
    pub cluster: Option<ClusterConfig>,
    /// `[bgp]`: the VIP announcements (see `cluster`).
    pub bgp: Option<BgpConfig>,
    /// Every `[[vip]]`, in the file's order.
    pub vips: Vec<VipConfig>,
}

/// The `[ipip]` table: the outer source prefixes of `ipip` VIPs' packets, whose low bits (at
/// most 16) vary per flow. A prefix left out stays as it is (`run --ipip-source-v4/-v6`, the
/// running program's, or the default); the agent's flags win over the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpipConfig {
    /// `source-v4`: an IPv4 prefix, [`MIN_IPIP_SOURCE_LEN_V4`] to 32 bits long.
    pub source_v4: Option<SourcePrefix>,
    /// `source-v6`: an IPv6 prefix, [`MIN_IPIP_SOURCE_LEN_V6`] to 128 bits long.
    pub source_v6: Option<SourcePrefix>,
}

/// Shortest IPv4 `[ipip] source-v4`: a shorter prefix would lend the outer sources the
/// addresses of networks that are not the operator's.
pub const MIN_IPIP_SOURCE_LEN_V4: u8 = 8;
/// Shortest IPv6 `[ipip] source-v6`.
pub const MIN_IPIP_SOURCE_LEN_V6: u8 = 16;

/// The `[conntrack]` table: size of the connection table and its timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawConntrack", into = "RawConntrack")]
pub struct ConntrackConfig {
    /// Flows, `1..=MAX_CONNTRACK_CAPACITY`.
    pub capacity: u32,
    /// Half-open TCP flows the embryonic table holds, `1..=MAX_CONNTRACK_CAPACITY` (fixed when
    /// the program is loaded); `None`: an eighth of `capacity`.
    pub embryonic_capacity: Option<u32>,
    /// New flows per second per CPU above which new flows of consistent-hash VIPs get no
    /// state (0: no limit); `None`: left as it is.
    pub new_flow_rate_limit: Option<u32>,
    /// Idle timeout of half-open TCP flows.
    pub tcp_syn_timeout: Duration,
    /// Idle timeout of established TCP flows.
    pub tcp_established_timeout: Duration,
    /// Idle timeout of closing TCP flows (a FIN was seen).
    pub tcp_fin_timeout: Duration,
    /// How long a reset TCP flow is kept.
    pub tcp_rst_timeout: Duration,
    /// Idle timeout of UDP flows.
    pub udp_timeout: Duration,
}

/// A `[[vip]]`: the VIP, its settings, health check and backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawVip", into = "RawVip")]
pub struct VipConfig {
    /// Address and port (0: every port).
    pub address: SocketAddr,
    /// Transport protocol.
    pub protocol: Proto,
    /// How new flows pick a backend.
    pub scheduler: Scheduler,
    /// Size of the Maglev table (used by `maglev` and `source-hash`).
    pub ring_size: u32,
    /// `allow`: source prefixes let in (if any, only those).
    pub allow: Vec<SourcePrefix>,
    /// `deny`: source prefixes dropped.
    pub deny: Vec<SourcePrefix>,
    /// `source-rate-limit`: new flows a second per source prefix; 0 none.
    pub source_rate_limit: u32,
    /// `source-prefix-len`: the limit counts sources per prefix of this length.
    pub source_prefix_len: Option<u8>,
    /// How packets reach the backend.
    pub forwarding: Forwarding,
    /// The check of each backend ([`CheckKind::None`] if the table is left out).
    pub health: HealthCheck,
    /// The backends, in the file's order.
    pub backends: Vec<BackendConfig>,
    /// `[vip.autoscale]`: the agent grows and shrinks the backend list.
    pub autoscale: Option<AutoscaleConfig>,
    /// `notify-up`: a command (program and arguments) run when a health check brings a
    /// backend back, with `VIP`, `BACKEND` and `STATE` (`up`) set; empty: none.
    pub notify_up: Vec<String>,
    /// `notify-down`: the same when a health check takes a backend down (`STATE` `down`).
    pub notify_down: Vec<String>,
    /// `sorry`: a backend the agent puts in the tables only while no other takes new flows,
    /// and drains when one does again.
    pub sorry: Option<SocketAddr>,
}

/// A `[[vip.backend]]`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawBackend", into = "RawBackend")]
pub struct BackendConfig {
    /// Address and port (0 only for a VIP on every port: the client's port is kept).
    pub address: SocketAddr,
    /// `0..=MAX_WEIGHT`; 0 takes no new flows.
    pub weight: u32,
    /// Up unless set.
    pub state: BackendState,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CONNTRACK_CAPACITY,
            embryonic_capacity: None,
            new_flow_rate_limit: None,
            tcp_syn_timeout: Duration::from_nanos(DEFAULT_TIMEOUTS.tcp_syn_ns),
            tcp_established_timeout: Duration::from_nanos(DEFAULT_TIMEOUTS.tcp_established_ns),
            tcp_fin_timeout: Duration::from_nanos(DEFAULT_TIMEOUTS.tcp_fin_ns),
            tcp_rst_timeout: Duration::from_nanos(DEFAULT_TIMEOUTS.tcp_rst_ns),
            udp_timeout: Duration::from_nanos(DEFAULT_TIMEOUTS.udp_ns),
        }
    }
}

impl ConntrackConfig {
    /// The timeouts as the data path takes them.
    pub fn timeouts(&self) -> Timeouts {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Timeouts {
            tcp_syn_ns: ns(self.tcp_syn_timeout),
            tcp_established_ns: ns(self.tcp_established_timeout),
            tcp_fin_ns: ns(self.tcp_fin_timeout),
            tcp_rst_ns: ns(self.tcp_rst_timeout),
            udp_ns: ns(self.udp_timeout),
        }
    }
}

/// toml's message on one line, with where it is: `line 7, column 1: unknown field ...`.
fn syntax_message(text: &str, err: &toml::de::Error) -> String {
    let message = err
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

impl Config {
    /// Parses and validates a config.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let syntax = |err: toml::de::Error| ConfigError::Syntax(syntax_message(text, &err));
        let deserializer = toml::de::Deserializer::parse(text).map_err(syntax)?;
        // serde_path_to_error names the field a type error is about (`vip[0].address`).
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let message = syntax_message(text, err.inner());
            ConfigError::Syntax(match path.as_str() {
                "" | "." => message,
                _ => format!("{path}: {message}"),
            })
        })?;
        Config::try_from(raw)
    }

    /// Reads, parses and validates the config file at `path`; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|error| ConfigError::InFile {
            path: path.to_owned(),
            error: Box::new(error),
        })
    }

    /// The config as TOML, leaving out what is at its default; [`Config::parse`] gives it back.
    pub fn to_toml(&self) -> String {
        toml::to_string(&RawConfig::from(self.clone()))
            // The raw form is strings, integers, tables and arrays of tables only.
            .expect("a config always serializes to TOML")
    }

    /// The config of `vip`, if it has one.
    pub fn vip(&self, vip: &Vip) -> Option<&VipConfig> {
        self.vips.iter().find(|v| v.vip() == *vip)
    }
}

impl VipConfig {
    /// The VIP.
    pub fn vip(&self) -> Vip {
        Vip {
            addr: self.address.ip(),
            port: self.address.port(),
            proto: self.protocol,
        }
    }

    /// The VIP's settings.
    pub fn options(&self) -> VipOptions {
        VipOptions {
            scheduler: self.scheduler,
            ring_size: self.ring_size,
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            source_rate_limit: self.source_rate_limit,
            source_prefix_len: self.source_prefix_len,
            forwarding: self.forwarding,
        }
    }

    /// The backends, in the config's order.
    pub fn backends(&self) -> Vec<BackendSpec> {
        self.backends.iter().map(BackendConfig::spec).collect()
    }

    /// The health check of each backend.
    pub fn health(&self) -> HealthCheck {
        self.health.clone()
    }

    /// The config of a VIP as the balancer has it, with no health check.
    pub fn from_info(info: &VipInfo) -> Self {
        Self {
            address: SocketAddr::new(info.vip.addr, info.vip.port),
            protocol: info.vip.proto,
            scheduler: info.options.scheduler,
            ring_size: info.options.ring_size,
            allow: info.options.allow.clone(),
            deny: info.options.deny.clone(),
            source_rate_limit: info.options.source_rate_limit,
            source_prefix_len: info.options.source_prefix_len,
            forwarding: info.options.forwarding,
            health: HealthCheck::default(),
            backends: info
                .backends
                .iter()
                .map(|b| BackendConfig {
                    address: b.spec.addr,
                    weight: b.spec.weight,
                    state: b.spec.state,
                })
                .collect(),
            autoscale: None,
            notify_up: Vec::new(),
            notify_down: Vec::new(),
            sorry: None,
        }
    }
}

impl BackendConfig {
    /// The backend as the balancer takes it.
    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            addr: self.address,
            weight: self.weight,
            state: self.state,
        }
    }
}

// --- Plan and apply ------------------------------------------------------------------------

/// The fields of two tables that differ, as `field now -> new` (`-` for a field not set).
fn field_changes<T: Serialize>(now: T, new: T) -> Vec<String> {
    let table = |value: T| match toml::Value::try_from(value) {
        Ok(toml::Value::Table(table)) => table,
        _ => toml::Table::new(),
    };
    let (now, new) = (table(now), table(new));
    let show = |value: Option<&toml::Value>| match value {
        None => "-".to_owned(),
        Some(toml::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let mut keys: Vec<&String> = now.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| now.get(*key) != new.get(*key))
        .map(|key| format!("{key} {} -> {}", show(now.get(key)), show(new.get(key))))
        .collect()
}

/// `check` as `[vip.health]` gives it, settings left at their defaults left out.
pub fn health_settings(check: HealthCheck) -> HealthSettings {
    raw_health(check)
}

/// A VIP's health check changed as `vip set --health…` asks (the API's `health` object, shaped
/// as `[vip.health]`): the fields given replace `current`'s; a new `kind` keeps the interval,
/// timeout, rise, fall, port and path but none of the old kind's own fields. Validated as the
/// file's `[vip.health]` of a VIP forwarding by `forwarding` is, each error naming its field.
pub fn merge_health(
    current: &HealthCheck,
    change: HealthSettings,
    forwarding: Forwarding,
) -> Result<HealthCheck, ConfigError> {
    let mut raw = raw_health_with(current.clone(), true);
    if change
        .kind
        .as_deref()
        .is_some_and(|kind| kind != current.kind.name())
    {
        raw.http_method = None;
        raw.http_path = None;
        raw.http_expect_status = None;
        raw.udp_payload = None;
        raw.udp_expect = None;
        raw.exec_command = None;
        raw.insecure = None;
        raw.tls_server_name = None;
    }
    macro_rules! given {
        ($($field:ident),*) => {
            $(if change.$field.is_some() {
                raw.$field = change.$field;
            })*
        };
    }
    given!(
        kind,
        interval,
        timeout,
        rise,
        fall,
        port,
        path,
        http_method,
        http_path,
        http_expect_status,
        udp_payload,
        udp_expect,
        exec_command,
        insecure,
        tls_server_name
    );
    let mut errors = Errors::default();
    let check = health_from_raw(Some(raw), "health", &mut errors);
    if check.path == ProbePath::Vip && forwarding != Forwarding::DsrL2 {
        errors.add(
            "health.path",
            format!(
                "\"vip\" probes through the dsr-l2 path; this VIP forwards by {forwarding}: use \
                 \"direct\""
            ),
        );
    }
    errors.finish(check)
}

/// The one copy of a `sorry` backend's checks (`sorry` in the file, `vip set --sorry`, the
/// API's `sorry`): an address that can be a backend of `vip` forwarded by `forwarding`, as
/// `backend add` checks one, and none of the VIP's own `backends`.
pub fn check_sorry(
    vip: &Vip,
    forwarding: Forwarding,
    sorry: SocketAddr,
    backends: &[SocketAddr],
) -> Result<(), String> {
    crate::model::check_backend_addr(vip, sorry).map_err(|err| err.to_string())?;
    crate::model::check_backend_forwarding(vip, forwarding, sorry)
        .map_err(|err| err.to_string())?;
    if backends.contains(&sorry) {
        return Err(format!("{sorry} is one of the VIP's backends"));
    }
    Ok(())
}

/// The one copy of a `notify-up` or `notify-down` command's check (the file's, `vip set
/// --notify-up`'s, the API's): a program, then its arguments; an empty list is no command.
pub fn check_notify(argv: &[String]) -> Result<(), String> {
    if argv
        .first()
        .is_some_and(|program| program.trim().is_empty())
    {
        return Err("the program must not be empty: [\"/path/to/program\", \"arg\", ...]".into());
    }
    Ok(())
}

/// The changes of health checks, autoscaling and connection-table timeouts that take the
/// settings of `now` to those of `new` (VIPs that `new` removes are left out: their removal
/// says it all).
pub fn settings_changes(now: &Config, new: &Config) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut push = |subject: String, fields: Vec<String>| {
        if !fields.is_empty() {
            changes.push(Change::Settings { subject, fields });
        }
    };
    push(
        "conntrack".to_owned(),
        field_changes(
            raw_conntrack(now.conntrack.clone(), true),
            raw_conntrack(new.conntrack.clone(), true),
        ),
    );
    let ipip = |c: &Config| {
        let text = |p: Option<SourcePrefix>| p.map_or_else(|| "-".to_owned(), |p| p.to_string());
        RawIpip {
            source_v4: Some(text(c.ipip.source_v4)),
            source_v6: Some(text(c.ipip.source_v6)),
        }
    };
    push("ipip".to_owned(), field_changes(ipip(now), ipip(new)));
    for vip in &new.vips {
        let before = now.vip(&vip.vip());
        let health = |v: Option<&VipConfig>| {
            raw_health_with(v.map(|v| v.health.clone()).unwrap_or_default(), true)
        };
        push(
            format!("health of {}", vip.vip()),
            field_changes(health(before), health(Some(vip))),
        );
        let autoscale = |v: Option<&VipConfig>| {
            v.and_then(|v| v.autoscale.clone())
                .map(autoscale::RawAutoscale::from)
        };
        push(
            format!("autoscale of {}", vip.vip()),
            field_changes(autoscale(before), autoscale(Some(vip))),
        );
        let none = Vec::new();
        let notify: Vec<String> = [
            (
                "notify-up",
                before.map_or(&none, |v| &v.notify_up),
                &vip.notify_up,
            ),
            (
                "notify-down",
                before.map_or(&none, |v| &v.notify_down),
                &vip.notify_down,
            ),
        ]
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| format!("{name} {a:?} -> {b:?}"))
        .chain({
            let sorry = |v: Option<&VipConfig>| {
                v.and_then(|v| v.sorry)
                    .map_or_else(|| "-".to_owned(), |a| a.to_string())
            };
            let (a, b) = (sorry(before), sorry(Some(vip)));
            (a != b).then(|| format!("sorry {a} -> {b}"))
        })
        .collect();
        push(format!("hooks of {}", vip.vip()), notify);
    }
    changes
}

/// The targets a config asks for: its VIPs, in its order.
pub fn targets(config: &Config) -> Vec<Target> {
    config
        .vips
        .iter()
        .map(|v| Target {
            vip: v.vip(),
            options: v.options(),
            backends: v.backends(),
        })
        .collect()
}

/// The changes that take a balancer with VIPs `current` (as [`Balancer::vips`] gives them) to
/// `desired`. Backends are compared as sets: their order in the config does not matter.
pub fn plan(current: &[VipInfo], desired: &Config) -> Plan {
    crate::balancer::plan::plan(current, &targets(desired))
}

/// Makes `balancer` match `desired` exactly, all or nothing, and returns what changed: the
/// config is checked against the balancer's rules first (see [`crate::balancer::plan::apply`]).
pub fn apply_plan<M: Maps>(balancer: &mut Balancer<M>, desired: &Config) -> Result<Plan, Error> {
    check_rules(desired)?;
    crate::balancer::plan::apply(balancer, &targets(desired))
}

/// The balancer's own checks of a whole config, so that a [`Config`] built by hand is refused
/// before anything changes. A parsed [`Config`] always passes.
pub fn check_rules(config: &Config) -> Result<(), Error> {
    if config.vips.len() > MAX_VIPS as usize {
        return Err(Error::TooManyVips);
    }
    let backends: usize = config.vips.iter().map(|v| v.backends.len()).sum();
    if backends > MAX_BACKENDS as usize {
        return Err(Error::TooManyBackends);
    }
    let mut vips = HashSet::new();
    for v in &config.vips {
        let vip = v.vip();
        if !vips.insert(vip) {
            return Err(Error::VipExists(vip));
        }
        crate::model::check_vip(&vip, &v.options())?;
        let mut addrs = HashSet::new();
        for b in &v.backends {
            let backend = b.address;
            if !addrs.insert(backend) {
                return Err(Error::BackendExists { vip, backend });
            }
            crate::model::check_backend(&vip, &b.spec())?;
            crate::model::check_backend_forwarding(&vip, v.forwarding, backend)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
