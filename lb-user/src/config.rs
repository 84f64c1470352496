//! The config file (TOML): connection tracking, VIPs, their backends and health checks. It is
//! the daemon's config, the input of the declarative `xdplb apply -f FILE`, and the format the
//! agent writes its state back in.
//!
//! ```toml
//! [conntrack]                 # optional
//! capacity = 1000000          # flows, 1..=100_000_000
//! tcp-syn-timeout = "30s"     # durations: a whole number and ns, us, ms, s, m or h
//! tcp-established-timeout = "15m"
//! tcp-fin-timeout = "60s"
//! tcp-rst-timeout = "10s"
//! udp-timeout = "5m"
//!
//! [[vip]]
//! address = "198.19.0.1:80"   # ADDR:PORT, IPv6 as "[fd00::1]:80"; port 0 = every port
//! protocol = "tcp"            # tcp | udp
//! scheduler = "maglev"        # optional, default maglev
//! ring-size = 65537           # optional; a prime, checked for maglev and source-hash
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
//! A VIP may also have an `[vip.autoscale]` table: see the `autoscale` submodule.
//!
//! Parsing is in two steps: the file's shape (TOML syntax, unknown keys and value types, with
//! toml's line and column), then a semantic pass whose errors name the field by its path,
//! e.g. `vip[1] (198.19.0.1:80/tcp) backend[0].weight: 20000 is out of range 0..=10000`. A
//! [`Config`] is therefore always valid; its serde implementations go through the same steps.
//!
//! [`plan`] compares the balancer's VIPs with a config, and [`apply_plan`] makes the balancer
//! match it, all or nothing.

mod autoscale;

pub use crate::{
    autoscale::config::{AutoscaleConfig, ForecastModel, RuleConfig, Signal},
    duration::{format_duration, parse_duration},
};

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
        BackendSpec, BackendState, Balancer, Error, Proto, Scheduler, Vip, VipInfo, VipOptions,
    },
    health::{CheckKind, HealthCheck},
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
    /// Every `[[vip]]`, in the file's order.
    pub vips: Vec<VipConfig>,
}

/// The `[conntrack]` table: size of the connection table and its timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawConntrack", into = "RawConntrack")]
pub struct ConntrackConfig {
    /// Flows, `1..=MAX_CONNTRACK_CAPACITY`.
    pub capacity: u32,
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
    /// The check of each backend ([`CheckKind::None`] if the table is left out).
    pub health: HealthCheck,
    /// The backends, in the file's order.
    pub backends: Vec<BackendConfig>,
    /// `[vip.autoscale]`: the agent grows and shrinks the backend list.
    pub autoscale: Option<AutoscaleConfig>,
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

// --- The file's shape ----------------------------------------------------------------------

/// The file as written: strings and integers, checked by the semantic pass.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conntrack: Option<RawConntrack>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vip: Vec<RawVip>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConntrack {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capacity: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp_syn_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp_established_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp_fin_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp_rst_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    udp_timeout: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVip {
    address: String,
    protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ring_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<RawHealth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    backend: Vec<RawBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    autoscale: Option<autoscale::RawAutoscale>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rise: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fall: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_expect_status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    udp_payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    udp_expect: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBackend {
    address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<String>,
}

// --- The semantic pass ---------------------------------------------------------------------

/// Errors found so far, each `path: message`.
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn add(&mut self, path: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(format!("{path}: {message}"));
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }

    /// `value` if it is in `range` and fits `T`, else an error at `path`.
    fn int<T: TryFrom<i64>>(
        &mut self,
        path: &str,
        value: i64,
        range: RangeInclusive<i64>,
    ) -> Option<T> {
        match T::try_from(value) {
            Ok(v) if range.contains(&value) => Some(v),
            _ => {
                self.add(
                    path,
                    format!(
                        "{value} is out of range {}..={}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    /// A positive duration, else an error at `path`.
    fn duration(&mut self, path: &str, text: &str) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.add(path, format!("{text:?} must be more than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(err) => {
                self.add(path, err);
                None
            }
        }
    }

    fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        let parsed = text.parse();
        if parsed.is_err() {
            self.add(
                path,
                format!("{text:?} is not ADDR:PORT, e.g. 198.19.0.1:80 or [fd00::1]:80"),
            );
        }
        parsed.ok()
    }
}

/// `prefix.name`, or `name` alone at the top.
fn field(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A table inside a VIP: `vip[0] (198.19.0.1:80/tcp) backend[1]`.
fn inside(prefix: &str, vip: Option<Vip>, name: &str) -> String {
    match (prefix.is_empty(), vip) {
        (true, _) => name.to_owned(),
        (false, Some(vip)) => format!("{prefix} ({vip}) {name}"),
        (false, None) => format!("{prefix} {name}"),
    }
}

fn family_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// An HTTP method: a token (RFC 9110), so that it cannot break the request line.
fn is_http_method(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_http_path(text: &str) -> bool {
    text.starts_with('/') && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn conntrack_from_raw(raw: RawConntrack, errors: &mut Errors) -> ConntrackConfig {
    let mut config = ConntrackConfig::default();
    let max = i64::from(MAX_CONNTRACK_CAPACITY);
    if let Some(c) = raw
        .capacity
        .and_then(|c| errors.int("conntrack.capacity", c, 1..=max))
    {
        config.capacity = c;
    }
    let timeouts = [
        (
            "conntrack.tcp-syn-timeout",
            raw.tcp_syn_timeout,
            &mut config.tcp_syn_timeout,
        ),
        (
            "conntrack.tcp-established-timeout",
            raw.tcp_established_timeout,
            &mut config.tcp_established_timeout,
        ),
        (
            "conntrack.tcp-fin-timeout",
            raw.tcp_fin_timeout,
            &mut config.tcp_fin_timeout,
        ),
        (
            "conntrack.tcp-rst-timeout",
            raw.tcp_rst_timeout,
            &mut config.tcp_rst_timeout,
        ),
        (
            "conntrack.udp-timeout",
            raw.udp_timeout,
            &mut config.udp_timeout,
        ),
    ];
    for (path, text, slot) in timeouts {
        if let Some(d) = text.and_then(|t| errors.duration(path, &t)) {
            *slot = d;
        }
    }
    config
}

/// A VIP's config (with placeholders where there were errors) and the VIP if its address and
/// protocol are valid.
fn vip_from_raw(raw: RawVip, prefix: &str, errors: &mut Errors) -> (Option<Vip>, VipConfig) {
    let addr_path = field(prefix, "address");
    let address = errors.socket_addr(&addr_path, &raw.address);
    if let Some(a) = address
        && crate::model::is_bad_vip_addr(a.ip())
    {
        errors.add(&addr_path, Error::BadVipAddress(a.ip()));
    }
    let protocol = raw
        .protocol
        .parse::<Proto>()
        .map_err(|err| errors.add(field(prefix, "protocol"), err))
        .ok();
    let vip = address.zip(protocol).map(|(a, proto)| Vip {
        addr: a.ip(),
        port: a.port(),
        proto,
    });
    let scheduler = match raw.scheduler {
        None => Some(Scheduler::default()),
        Some(name) => name
            .parse::<Scheduler>()
            .map_err(|err| errors.add(field(prefix, "scheduler"), err))
            .ok(),
    };
    let ring_path = field(prefix, "ring-size");
    let ring_size = match raw.ring_size {
        None => DEFAULT_RING_SIZE,
        Some(n) => errors
            .int(&ring_path, n, 0..=i64::from(u32::MAX))
            .unwrap_or(DEFAULT_RING_SIZE),
    };
    if scheduler.is_some_and(Scheduler::is_hashed) && !crate::model::is_good_ring_size(ring_size) {
        errors.add(&ring_path, Error::BadRingSize(ring_size));
    }
    let health = health_from_raw(raw.health, &inside(prefix, vip, "health"), errors);

    let mut backends = Vec::with_capacity(raw.backend.len());
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (j, b) in raw.backend.into_iter().enumerate() {
        let path = inside(prefix, vip, &format!("backend[{j}]"));
        let (valid, backend) = backend_from_raw(b, &path, errors);
        if valid && let Some(a) = address {
            check_backend_of(a, &backend, &path, errors);
        }
        if valid {
            if let Some(first) = seen.get(&backend.address) {
                errors.add(
                    field(&path, "address"),
                    format!(
                        "duplicate backend {}, first at backend[{first}]",
                        backend.address
                    ),
                );
            } else {
                seen.insert(backend.address, j);
            }
        }
        backends.push(backend);
    }
    let autoscale = raw.autoscale.map(|a| {
        autoscale::from_raw(
            a,
            &inside(prefix, vip, "autoscale"),
            address,
            &backends,
            errors,
        )
    });

    let config = VipConfig {
        address: address.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        protocol: protocol.unwrap_or(Proto::Tcp),
        scheduler: scheduler.unwrap_or_default(),
        ring_size,
        health,
        backends,
        autoscale,
    };
    (vip, config)
}

/// Whether `backend` may belong to the VIP at `vip`.
fn check_backend_of(vip: SocketAddr, backend: &BackendConfig, path: &str, errors: &mut Errors) {
    let (v, b) = (vip.ip(), backend.address.ip());
    if v.is_ipv4() != b.is_ipv4() {
        errors.add(
            field(path, "address"),
            format!(
                "{} is {} but the VIP is {}",
                backend.address,
                family_name(b),
                family_name(v)
            ),
        );
    } else if backend.address.port() == 0 && vip.port() != 0 {
        errors.add(
            field(path, "address"),
            Error::BackendPortZero {
                backend: backend.address,
            },
        );
    }
}

/// A backend's config, and whether its address is valid.
fn backend_from_raw(raw: RawBackend, prefix: &str, errors: &mut Errors) -> (bool, BackendConfig) {
    let address = errors.socket_addr(&field(prefix, "address"), &raw.address);
    let weight = match raw.weight {
        None => 1,
        Some(w) => errors
            .int(&field(prefix, "weight"), w, 0..=i64::from(MAX_WEIGHT))
            .unwrap_or(1),
    };
    let state = match raw.state {
        None => BackendState::Up,
        Some(s) => s
            .parse::<BackendState>()
            .map_err(|err| errors.add(field(prefix, "state"), err))
            .unwrap_or_default(),
    };
    let config = BackendConfig {
        address: address.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        weight,
        state,
    };
    (address.is_some(), config)
}

fn health_from_raw(raw: Option<RawHealth>, prefix: &str, errors: &mut Errors) -> HealthCheck {
    let mut check = HealthCheck::default();
    let Some(raw) = raw else {
        return check;
    };
    let path = |name: &str| field(prefix, name);

    let before = errors.0.len();
    if let Some(d) = raw
        .interval
        .as_deref()
        .and_then(|t| errors.duration(&path("interval"), t))
    {
        check.interval = d;
    }
    if let Some(d) = raw
        .timeout
        .as_deref()
        .and_then(|t| errors.duration(&path("timeout"), t))
    {
        check.timeout = d;
    }
    // Compared only if both are valid.
    if errors.0.len() == before && check.timeout > check.interval {
        errors.add(
            path("timeout"),
            format!(
                "{} is longer than the interval ({})",
                format_duration(check.timeout),
                format_duration(check.interval)
            ),
        );
    }
    let counts = 1..=i64::from(MAX_RISE_FALL);
    if let Some(n) = raw
        .rise
        .and_then(|n| errors.int(&path("rise"), n, counts.clone()))
    {
        check.rise = n;
    }
    if let Some(n) = raw
        .fall
        .and_then(|n| errors.int(&path("fall"), n, counts.clone()))
    {
        check.fall = n;
    }
    if let Some(port) = raw.port {
        check.port = errors.int(&path("port"), port, 1..=i64::from(u16::MAX));
    }

    let kind = raw.kind.as_deref().unwrap_or("none");
    if !matches!(kind, "none" | "tcp" | "http" | "udp") {
        errors.add(
            path("kind"),
            format!("unknown kind {kind:?}: expected none, tcp, http or udp"),
        );
        return check;
    }
    let only_for = [
        ("http", "http-method", raw.http_method.is_some()),
        ("http", "http-path", raw.http_path.is_some()),
        (
            "http",
            "http-expect-status",
            raw.http_expect_status.is_some(),
        ),
        ("udp", "udp-payload", raw.udp_payload.is_some()),
        ("udp", "udp-expect", raw.udp_expect.is_some()),
    ];
    for (owner, name, set) in only_for {
        if set && kind != owner {
            errors.add(
                path(name),
                format!("only allowed with kind {owner:?}, not {kind:?}"),
            );
        }
    }

    check.kind = match kind {
        "tcp" => CheckKind::Tcp,
        "http" => {
            let method = raw.http_method.unwrap_or_else(|| "GET".to_owned());
            if !is_http_method(&method) {
                errors.add(
                    path("http-method"),
                    format!("{method:?} is not an HTTP method"),
                );
            }
            let http_path = raw.http_path.unwrap_or_else(|| "/".to_owned());
            if !is_http_path(&http_path) {
                errors.add(
                    path("http-path"),
                    format!(
                        "{http_path:?} must start with \"/\" and have no spaces or control \
                         characters"
                    ),
                );
            }
            let expect_status = match raw.http_expect_status {
                None => 200,
                Some(s) => errors
                    .int(&path("http-expect-status"), s, 100..=599)
                    .unwrap_or(200),
            };
            CheckKind::Http {
                method,
                path: http_path,
                expect_status,
            }
        }
        "udp" => {
            let payload = raw.udp_payload.unwrap_or_else(|| "ping".to_owned());
            if payload.is_empty() {
                errors.add(path("udp-payload"), "must not be empty");
            }
            CheckKind::Udp {
                payload: payload.into_bytes(),
                expect: raw.udp_expect.map(String::into_bytes),
            }
        }
        _ => CheckKind::None,
    };
    check
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let conntrack = raw
            .conntrack
            .map(|c| conntrack_from_raw(c, &mut errors))
            .unwrap_or_default();
        if raw.vip.len() > MAX_VIPS as usize {
            errors.add("vip", format!("{} VIPs, at most {MAX_VIPS}", raw.vip.len()));
        }
        let backends: usize = raw.vip.iter().map(|v| v.backend.len()).sum();
        if backends > MAX_BACKENDS as usize {
            errors.add(
                "vip[*].backend",
                format!("{backends} backends in all, at most {MAX_BACKENDS}"),
            );
        }
        let mut vips = Vec::with_capacity(raw.vip.len());
        let mut seen: HashMap<Vip, usize> = HashMap::new();
        for (i, v) in raw.vip.into_iter().enumerate() {
            let prefix = format!("vip[{i}]");
            let (vip, config) = vip_from_raw(v, &prefix, &mut errors);
            if let Some(vip) = vip {
                if let Some(first) = seen.get(&vip) {
                    errors.add(
                        field(&prefix, "address"),
                        format!("duplicate VIP {vip}, first at vip[{first}]"),
                    );
                } else {
                    seen.insert(vip, i);
                }
            }
            vips.push(config);
        }
        errors.finish(Config { conntrack, vips })
    }
}

impl TryFrom<RawConntrack> for ConntrackConfig {
    type Error = ConfigError;

    fn try_from(raw: RawConntrack) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let config = conntrack_from_raw(raw, &mut errors);
        errors.finish(config)
    }
}

impl TryFrom<RawVip> for VipConfig {
    type Error = ConfigError;

    fn try_from(raw: RawVip) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let (_, config) = vip_from_raw(raw, "", &mut errors);
        errors.finish(config)
    }
}

impl TryFrom<RawBackend> for BackendConfig {
    type Error = ConfigError;

    fn try_from(raw: RawBackend) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let (_, config) = backend_from_raw(raw, "", &mut errors);
        errors.finish(config)
    }
}

// --- Back to the file's shape --------------------------------------------------------------

impl From<Config> for RawConfig {
    fn from(config: Config) -> Self {
        RawConfig {
            conntrack: (config.conntrack != ConntrackConfig::default())
                .then(|| config.conntrack.into()),
            vip: config.vips.into_iter().map(RawVip::from).collect(),
        }
    }
}

impl From<ConntrackConfig> for RawConntrack {
    fn from(config: ConntrackConfig) -> Self {
        raw_conntrack(config, false)
    }
}

/// The `[conntrack]` table; with `full`, defaults are written out too.
fn raw_conntrack(config: ConntrackConfig, full: bool) -> RawConntrack {
    let default = ConntrackConfig::default();
    let duration =
        |d: Duration, default: Duration| (full || d != default).then(|| format_duration(d));
    RawConntrack {
        capacity: (full || config.capacity != default.capacity).then_some(config.capacity.into()),
        tcp_syn_timeout: duration(config.tcp_syn_timeout, default.tcp_syn_timeout),
        tcp_established_timeout: duration(
            config.tcp_established_timeout,
            default.tcp_established_timeout,
        ),
        tcp_fin_timeout: duration(config.tcp_fin_timeout, default.tcp_fin_timeout),
        tcp_rst_timeout: duration(config.tcp_rst_timeout, default.tcp_rst_timeout),
        udp_timeout: duration(config.udp_timeout, default.udp_timeout),
    }
}

impl From<VipConfig> for RawVip {
    fn from(config: VipConfig) -> Self {
        RawVip {
            address: config.address.to_string(),
            protocol: config.protocol.to_string(),
            scheduler: Some(config.scheduler.name().to_owned()),
            ring_size: (config.ring_size != DEFAULT_RING_SIZE).then_some(config.ring_size.into()),
            health: (config.health != HealthCheck::default()).then(|| raw_health(config.health)),
            backend: config.backends.into_iter().map(RawBackend::from).collect(),
            autoscale: config.autoscale.map(Into::into),
        }
    }
}

fn raw_health(check: HealthCheck) -> RawHealth {
    raw_health_with(check, false)
}

/// The `[vip.health]` table; with `full`, defaults are written out too.
fn raw_health_with(check: HealthCheck, full: bool) -> RawHealth {
    let default = HealthCheck::default();
    let mut raw = RawHealth {
        kind: Some(check.kind.name().to_owned()),
        interval: (full || check.interval != default.interval)
            .then(|| format_duration(check.interval)),
        timeout: (full || check.timeout != default.timeout).then(|| format_duration(check.timeout)),
        rise: (full || check.rise != default.rise).then_some(check.rise.into()),
        fall: (full || check.fall != default.fall).then_some(check.fall.into()),
        port: check.port.map(i64::from),
        ..RawHealth::default()
    };
    match check.kind {
        CheckKind::None | CheckKind::Tcp => {}
        CheckKind::Http {
            method,
            path,
            expect_status,
        } => {
            raw.http_method = Some(method);
            raw.http_path = Some(path);
            raw.http_expect_status = Some(expect_status.into());
        }
        CheckKind::Udp { payload, expect } => {
            raw.udp_payload = Some(String::from_utf8_lossy(&payload).into_owned());
            raw.udp_expect = expect.map(|e| String::from_utf8_lossy(&e).into_owned());
        }
    }
    raw
}

impl From<BackendConfig> for RawBackend {
    fn from(config: BackendConfig) -> Self {
        RawBackend {
            address: config.address.to_string(),
            weight: Some(config.weight.into()),
            state: (config.state != BackendState::Up).then(|| config.state.to_string()),
        }
    }
}

// --- Plan and apply ------------------------------------------------------------------------

/// One change that [`apply_plan`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new VIP (its backends follow as [`Change::AddBackend`]).
    AddVip {
        /// The VIP.
        vip: Vip,
        /// Its settings.
        options: VipOptions,
    },
    /// A VIP removed, with its backends.
    RemoveVip(Vip),
    /// New settings of a VIP.
    SetVipOptions {
        /// The VIP.
        vip: Vip,
        /// The settings it has now.
        from: VipOptions,
        /// The new settings.
        options: VipOptions,
    },
    /// A new backend of a VIP.
    AddBackend {
        /// The VIP.
        vip: Vip,
        /// The backend.
        spec: BackendSpec,
    },
    /// A backend removed from a VIP.
    RemoveBackend {
        /// The VIP.
        vip: Vip,
        /// The backend.
        addr: SocketAddr,
    },
    /// A backend's new weight and/or state.
    UpdateBackend {
        /// The VIP.
        vip: Vip,
        /// The backend.
        addr: SocketAddr,
        /// `(now, new)` if the weight changes.
        weight: Option<(u32, u32)>,
        /// `(now, new)` if the state changes.
        state: Option<(BackendState, BackendState)>,
    },
    /// Settings the balancer does not hold: a VIP's health check or autoscaling, the
    /// connection table's timeouts.
    Settings {
        /// `health of VIP`, `autoscale of VIP`, `conntrack`.
        subject: String,
        /// One `field now -> new` per field that changes.
        fields: Vec<String>,
    },
}

/// `maglev`, or `maglev, ring-size 31` when the ring size is not the default.
fn describe(options: &VipOptions) -> String {
    if options.ring_size == DEFAULT_RING_SIZE {
        options.scheduler.to_string()
    } else {
        format!("{}, ring-size {}", options.scheduler, options.ring_size)
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddVip { vip, options } => write!(f, "+ vip {vip} ({})", describe(options)),
            Change::RemoveVip(vip) => write!(f, "- vip {vip}"),
            Change::SetVipOptions { vip, from, options } => {
                write!(
                    f,
                    "~ vip {vip}: {} -> {}",
                    describe(from),
                    describe(options)
                )
            }
            Change::AddBackend { vip, spec } => {
                write!(
                    f,
                    "+ backend {} to {vip} (weight {}",
                    spec.addr, spec.weight
                )?;
                if spec.state != BackendState::Up {
                    write!(f, ", {}", spec.state)?;
                }
                f.write_str(")")
            }
            Change::RemoveBackend { vip, addr } => write!(f, "- backend {addr} from {vip}"),
            Change::UpdateBackend {
                vip,
                addr,
                weight,
                state,
            } => {
                write!(f, "~ backend {addr} of {vip}:")?;
                if let Some((from, to)) = weight {
                    write!(f, " weight {from} -> {to}")?;
                }
                if let Some((from, to)) = state {
                    let comma = if weight.is_some() { "," } else { "" };
                    write!(f, "{comma} state {from} -> {to}")?;
                }
                Ok(())
            }
            Change::Settings { subject, fields } => {
                write!(f, "~ {subject}: {}", fields.join(", "))
            }
        }
    }
}

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
    }
    changes
}

/// What [`apply_plan`] changes to make the balancer match a config: VIPs removed first, then,
/// in the config's order, each VIP's settings and backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The changes, in the order they are made.
    pub changes: Vec<Change>,
}

impl Plan {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// How many changes there are.
    pub fn len(&self) -> usize {
        self.changes.len()
    }
}

impl fmt::Display for Plan {
    /// One line per change, or `no changes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return f.write_str("no changes");
        }
        for (i, change) in self.changes.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{change}")?;
        }
        Ok(())
    }
}

/// One VIP as it should be.
struct Target {
    vip: Vip,
    options: VipOptions,
    backends: Vec<BackendSpec>,
}

impl Target {
    fn from_config(config: &Config) -> Vec<Target> {
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

    fn from_infos(infos: &[VipInfo]) -> Vec<Target> {
        infos
            .iter()
            .map(|info| Target {
                vip: info.vip,
                options: info.options,
                backends: info.backends.iter().map(|b| b.spec).collect(),
            })
            .collect()
    }
}

fn backend_changes(vip: Vip, current: &[BackendSpec], desired: &[BackendSpec]) -> Vec<Change> {
    let mut changes: Vec<Change> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.addr == c.addr))
        .map(|c| Change::RemoveBackend { vip, addr: c.addr })
        .collect();
    for d in desired {
        match current.iter().find(|c| c.addr == d.addr) {
            None => changes.push(Change::AddBackend { vip, spec: *d }),
            Some(c) if c != d => changes.push(Change::UpdateBackend {
                vip,
                addr: d.addr,
                weight: (c.weight != d.weight).then_some((c.weight, d.weight)),
                state: (c.state != d.state).then_some((c.state, d.state)),
            }),
            Some(_) => {}
        }
    }
    changes
}

fn plan_targets(current: &[VipInfo], desired: &[Target]) -> Plan {
    let mut changes: Vec<Change> = current
        .iter()
        .filter(|info| !desired.iter().any(|t| t.vip == info.vip))
        .map(|info| Change::RemoveVip(info.vip))
        .collect();
    for target in desired {
        let vip = target.vip;
        match current.iter().find(|info| info.vip == vip) {
            Some(info) => {
                if info.options != target.options {
                    changes.push(Change::SetVipOptions {
                        vip,
                        from: info.options,
                        options: target.options,
                    });
                }
                let now: Vec<BackendSpec> = info.backends.iter().map(|b| b.spec).collect();
                changes.extend(backend_changes(vip, &now, &target.backends));
            }
            None => {
                changes.push(Change::AddVip {
                    vip,
                    options: target.options,
                });
                changes.extend(backend_changes(vip, &[], &target.backends));
            }
        }
    }
    Plan { changes }
}

/// The changes that take a balancer with VIPs `current` (as [`Balancer::vips`] gives them) to
/// `desired`. Backends are compared as sets: their order in the config does not matter.
pub fn plan(current: &[VipInfo], desired: &Config) -> Plan {
    plan_targets(current, &Target::from_config(desired))
}

/// Makes `balancer` match `desired` exactly and returns what changed. Each VIP switches to its
/// new backends in one step ([`Balancer::set_backends`]: backends it keeps keep their ids and
/// flows).
///
/// All or nothing: the config is checked against the balancer's rules first, and if a change
/// still fails (no room in the tables, say), the VIPs are put back as they were before the
/// error is returned. A VIP removed and put back that way gets new ids (its tracked flows
/// move). If even that fails, it is logged and the balancer is left between the two.
pub fn apply_plan<M: Maps>(balancer: &mut Balancer<M>, desired: &Config) -> Result<Plan, Error> {
    check_rules(desired)?;
    let before = balancer.vips();
    let targets = Target::from_config(desired);
    let plan = plan_targets(&before, &targets);
    if plan.is_empty() {
        return Ok(plan);
    }
    if let Err(err) = converge(balancer, &targets, false) {
        log::warn!("applying the config failed ({err}); rolling back");
        if let Err(rollback) = converge(balancer, &Target::from_infos(&before), true) {
            log::error!(
                "rolling back failed too ({rollback}): the balancer is between the old and the \
                 new config"
            );
        }
        return Err(err);
    }
    Ok(plan)
}

/// Brings `balancer` to `targets`: removes the VIPs not in it (freeing room first), then sets
/// each VIP's options and backends. Stops at the first error, unless `best_effort`, which goes
/// on and returns the first error at the end.
fn converge<M: Maps>(
    balancer: &mut Balancer<M>,
    targets: &[Target],
    best_effort: bool,
) -> Result<(), Error> {
    let mut first_error = None;
    let mut check = |result: Result<(), Error>| -> Result<(), Error> {
        match result {
            Err(err) if best_effort => {
                log::error!("{err}");
                first_error.get_or_insert(err);
                Ok(())
            }
            other => other,
        }
    };
    let current = balancer.vips();
    for info in &current {
        if !targets.iter().any(|t| t.vip == info.vip) {
            check(balancer.remove_vip(&info.vip))?;
        }
    }
    for target in targets {
        let vip = &target.vip;
        let now: Vec<BackendSpec> = match current.iter().find(|info| info.vip == *vip) {
            Some(info) => {
                if info.options != target.options {
                    check(balancer.set_vip_options(vip, target.options))?;
                }
                info.backends.iter().map(|b| b.spec).collect()
            }
            None => {
                let added = balancer.add_vip(*vip, target.options);
                let ok = added.is_ok();
                check(added)?;
                if !ok {
                    continue;
                }
                Vec::new()
            }
        };
        if !backend_changes(*vip, &now, &target.backends).is_empty() {
            check(balancer.set_backends(vip, target.backends.clone()))?;
        }
    }
    first_error.map_or(Ok(()), Err)
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
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::maps::Settings;

    use super::*;
    use crate::maps::MemMaps;

    #[test]
    fn settings_changes_name_each_changed_field_with_defaults_written_out() {
        let now = Config::parse(
            "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
             [vip.health]\nkind = \"tcp\"\n",
        )
        .unwrap();
        let new = Config::parse(
            "[conntrack]\nudp-timeout = \"30s\"\n\
             [[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
             [vip.health]\nkind = \"tcp\"\ninterval = \"2s\"\n\
             [[vip]]\naddress = \"198.19.0.2:80\"\nprotocol = \"tcp\"\n",
        )
        .unwrap();
        let lines: Vec<String> = settings_changes(&now, &new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "~ conntrack: udp-timeout 5m -> 30s",
                "~ health of 198.19.0.1:80/tcp: interval 1s -> 2s",
            ]
        );
        assert!(settings_changes(&new, &new).is_empty());
    }

    const FULL: &str = r#"
[conntrack]
capacity = 2000000
tcp-syn-timeout = "20s"
tcp-established-timeout = "1h"
tcp-fin-timeout = "60s"
tcp-rst-timeout = "5s"
udp-timeout = "90s"

[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
scheduler = "maglev"
ring-size = 31

[vip.health]
kind = "http"
interval = "2s"
timeout = "900ms"
rise = 1
fall = 5
port = 8081
http-method = "HEAD"
http-path = "/healthz"
http-expect-status = 204

[[vip.backend]]
address = "198.18.1.2:8080"
weight = 3

[[vip.backend]]
address = "198.18.2.2:8080"
state = "draining"

[[vip]]
address = "[fd00::1]:0"
protocol = "udp"
scheduler = "round-robin"

[vip.health]
kind = "udp"
udp-payload = "hello"
udp-expect = "olleh"

[[vip.backend]]
address = "[fd00::2]:0"
weight = 0
state = "down"
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text).unwrap_or_else(|err| panic!("{err}"))
    }

    fn error(text: &str) -> String {
        match Config::parse(text) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn parses_the_full_example() {
        let config = parse(FULL);
        assert_eq!(config.conntrack.capacity, 2_000_000);
        let t = config.conntrack.timeouts();
        assert_eq!(t.tcp_syn_ns, 20_000_000_000);
        assert_eq!(t.tcp_established_ns, 3_600_000_000_000);
        assert_eq!(t.tcp_rst_ns, 5_000_000_000);
        assert_eq!(t.udp_ns, 90_000_000_000);

        let v = &config.vips[0];
        assert_eq!(v.vip(), "198.19.0.1:80/tcp".parse().unwrap());
        assert_eq!(
            v.options(),
            VipOptions {
                scheduler: Scheduler::Maglev,
                ring_size: 31
            }
        );
        assert_eq!(
            v.backends(),
            vec![
                BackendSpec::new("198.18.1.2:8080".parse().unwrap(), 3),
                BackendSpec {
                    addr: "198.18.2.2:8080".parse().unwrap(),
                    weight: 1,
                    state: BackendState::Draining,
                },
            ]
        );
        assert_eq!(
            v.health(),
            HealthCheck {
                kind: CheckKind::Http {
                    method: "HEAD".to_owned(),
                    path: "/healthz".to_owned(),
                    expect_status: 204,
                },
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(900),
                rise: 1,
                fall: 5,
                port: Some(8081),
            }
        );
        let v = &config.vips[1];
        assert_eq!(v.vip(), "[fd00::1]:0/udp".parse().unwrap());
        assert_eq!(v.options().scheduler, Scheduler::RoundRobin);
        assert_eq!(v.options().ring_size, DEFAULT_RING_SIZE);
        assert_eq!(
            v.health().kind,
            CheckKind::Udp {
                payload: b"hello".to_vec(),
                expect: Some(b"olleh".to_vec())
            }
        );
        assert_eq!(v.backends()[0].state, BackendState::Down);
    }

    #[test]
    fn defaults() {
        let config = parse(
            r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[[vip.backend]]
address = "198.18.1.2:8080"
"#,
        );
        assert_eq!(config.conntrack, ConntrackConfig::default());
        assert_eq!(config.conntrack.timeouts(), DEFAULT_TIMEOUTS);
        assert_eq!(config.vips[0].options(), VipOptions::default());
        assert_eq!(config.vips[0].health(), HealthCheck::default());
        assert_eq!(
            config.vips[0].backends(),
            vec![BackendSpec::new("198.18.1.2:8080".parse().unwrap(), 1)]
        );
        assert_eq!(parse(""), Config::default());

        let http = parse(
            r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[vip.health]
kind = "http"
"#,
        );
        assert_eq!(
            http.vips[0].health().kind,
            CheckKind::Http {
                method: "GET".to_owned(),
                path: "/".to_owned(),
                expect_status: 200
            }
        );
    }

    #[test]
    fn round_trips() {
        let config = parse(FULL);
        let text = config.to_toml();
        assert_eq!(parse(&text), config, "{text}");
        assert_eq!(parse(&text).to_toml(), text);
        // Through serde too (the state file could as well be JSON).
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), config);
        // Defaults are left out.
        let small = parse(
            "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
             [[vip.backend]]\naddress = \"198.18.1.2:8080\"\n",
        );
        assert_eq!(
            small.to_toml(),
            "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\nscheduler = \"maglev\"\n\n\
             [[vip.backend]]\naddress = \"198.18.1.2:8080\"\nweight = 1\n"
        );
        assert_eq!(Config::default().to_toml(), "");
    }

    #[test]
    fn serde_validates_too() {
        let err = serde_json::from_str::<VipConfig>(
            r#"{"address": "198.19.0.1:80", "protocol": "tcp", "scheduler": "fastest"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("scheduler: unknown scheduler \"fastest\""),
            "{err}"
        );
        let err = serde_json::from_str::<BackendConfig>(r#"{"address": "x", "weight": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("address: \"x\" is not ADDR:PORT"), "{err}");
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("900ms", Duration::from_millis(900)),
            ("1h", Duration::from_secs(3600)),
            ("250us", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            assert_eq!(parse_duration(&format_duration(want)), Ok(want), "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        for bad in ["", "30", "s", "1.5s", "-1s", "30 s", "30sec", "5M", " 5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_duration("99999999999h"),
            Err("duration \"99999999999h\" is too long".to_owned())
        );
    }

    /// A one-VIP config with `vip` added to the VIP table, `health` as its health table and
    /// `backend` as its one backend's table.
    fn one(vip: &str, health: &str, backend: &str) -> String {
        let health = if health.is_empty() {
            String::new()
        } else {
            format!("[vip.health]\n{health}\n")
        };
        format!(
            "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n{vip}\n{health}\
             [[vip.backend]]\naddress = \"198.18.1.2:8080\"\n{backend}\n"
        )
    }

    const V: &str = "vip[0] (198.19.0.1:80/tcp)";

    #[test]
    fn bad_input_names_the_field() {
        let vip_line = |address: &str, protocol: &str| {
            format!("[[vip]]\naddress = \"{address}\"\nprotocol = \"{protocol}\"\n")
        };
        let cases: Vec<(String, String)> = vec![
            (
                one("scheduler = \"fastest\"", "", ""),
                "vip[0].scheduler: unknown scheduler \"fastest\": expected one of maglev, \
                 source-hash, round-robin, weighted-round-robin, random, weighted-random, \
                 least-conn"
                    .to_owned(),
            ),
            (
                format!(
                    "{}{}[[vip.backend]]\naddress = \"198.18.1.2:8080\"\nweight = 20000\n",
                    vip_line("198.19.0.1:80", "tcp"),
                    vip_line("198.19.0.2:80", "tcp")
                ),
                "vip[1] (198.19.0.2:80/tcp) backend[0].weight: 20000 is out of range 0..=10000"
                    .to_owned(),
            ),
            (
                one("", "", "weight = -1"),
                format!("{V} backend[0].weight: -1 is out of range 0..=10000"),
            ),
            (
                format!(
                    "{}{}{}",
                    vip_line("198.19.0.1:80", "tcp"),
                    vip_line("198.19.0.1:80", "udp"),
                    vip_line("198.19.0.1:80", "tcp")
                ),
                "vip[2].address: duplicate VIP 198.19.0.1:80/tcp, first at vip[0]".to_owned(),
            ),
            (
                vip_line("198.19.0.1", "tcp"),
                "vip[0].address: \"198.19.0.1\" is not ADDR:PORT, e.g. 198.19.0.1:80 or \
                 [fd00::1]:80"
                    .to_owned(),
            ),
            (
                vip_line("224.0.0.1:80", "tcp"),
                "vip[0].address: VIP address 224.0.0.1 is unspecified, multicast or broadcast"
                    .to_owned(),
            ),
            (
                vip_line("198.19.0.1:80", "sctp"),
                "vip[0].protocol: bad protocol \"sctp\": expected tcp or udp".to_owned(),
            ),
            (
                one("ring-size = 65536", "", ""),
                "vip[0].ring-size: ring size 65536 is not a prime between 3 and 1048573".to_owned(),
            ),
            (
                one("scheduler = \"source-hash\"\nring-size = 2", "", ""),
                "vip[0].ring-size: ring size 2 is not a prime between 3 and 1048573".to_owned(),
            ),
            (
                format!(
                    "{}[[vip.backend]]\naddress = \"[fd00::2]:80\"\n",
                    vip_line("198.19.0.1:80", "tcp")
                ),
                format!("{V} backend[0].address: [fd00::2]:80 is IPv6 but the VIP is IPv4"),
            ),
            (
                format!(
                    "{}[[vip.backend]]\naddress = \"198.18.1.2:8080\"\n\
                     [[vip.backend]]\naddress = \"198.18.1.2:8080\"\nweight = 2\n",
                    vip_line("198.19.0.1:80", "tcp")
                ),
                format!(
                    "{V} backend[1].address: duplicate backend 198.18.1.2:8080, first at \
                     backend[0]"
                ),
            ),
            (
                format!(
                    "{}[[vip.backend]]\naddress = \"198.18.1.2:0\"\n",
                    vip_line("198.19.0.1:80", "tcp")
                ),
                format!(
                    "{V} backend[0].address: backend 198.18.1.2:0 has port 0, which only a VIP \
                     with port 0 (every port) allows"
                ),
            ),
            (
                format!(
                    "{}[[vip.backend]]\naddress = \"198.18.1.2\"\n",
                    vip_line("198.19.0.1:80", "tcp")
                ),
                format!(
                    "{V} backend[0].address: \"198.18.1.2\" is not ADDR:PORT, e.g. \
                     198.19.0.1:80 or [fd00::1]:80"
                ),
            ),
            (
                one("", "", "state = \"dead\""),
                format!(
                    "{V} backend[0].state: unknown state \"dead\": expected up, draining or down"
                ),
            ),
            (
                one("", "kind = \"tcp\"\ntimeout = \"2s\"", ""),
                format!("{V} health.timeout: 2s is longer than the interval (1s)"),
            ),
            (
                one("", "kind = \"tcp\"\ninterval = \"100ms\"", ""),
                format!("{V} health.timeout: 500ms is longer than the interval (100ms)"),
            ),
            (
                one("", "kind = \"tcp\"\nhttp-path = \"/healthz\"", ""),
                format!("{V} health.http-path: only allowed with kind \"http\", not \"tcp\""),
            ),
            (
                one("", "kind = \"http\"\nudp-expect = \"pong\"", ""),
                format!("{V} health.udp-expect: only allowed with kind \"udp\", not \"http\""),
            ),
            (
                one("", "http-expect-status = 200", ""),
                format!(
                    "{V} health.http-expect-status: only allowed with kind \"http\", not \"none\""
                ),
            ),
            (
                one("", "kind = \"icmp\"", ""),
                format!("{V} health.kind: unknown kind \"icmp\": expected none, tcp, http or udp"),
            ),
            (
                one("", "kind = \"tcp\"\nrise = 0", ""),
                format!("{V} health.rise: 0 is out of range 1..=100"),
            ),
            (
                one("", "kind = \"tcp\"\nfall = 101", ""),
                format!("{V} health.fall: 101 is out of range 1..=100"),
            ),
            (
                one("", "kind = \"tcp\"\nport = 70000", ""),
                format!("{V} health.port: 70000 is out of range 1..=65535"),
            ),
            (
                one("", "kind = \"tcp\"\ninterval = \"0s\"", ""),
                format!("{V} health.interval: \"0s\" must be more than 0"),
            ),
            (
                one("", "kind = \"tcp\"\ninterval = \"1 second\"", ""),
                format!(
                    "{V} health.interval: bad duration \"1 second\": expected a whole number \
                     and a unit (ms, s, m, h), e.g. \"30s\""
                ),
            ),
            (
                one("", "kind = \"http\"\nhttp-method = \"GET /x\"", ""),
                format!("{V} health.http-method: \"GET /x\" is not an HTTP method"),
            ),
            (
                one("", "kind = \"http\"\nhttp-path = \"healthz\"", ""),
                format!(
                    "{V} health.http-path: \"healthz\" must start with \"/\" and have no spaces \
                     or control characters"
                ),
            ),
            (
                one("", "kind = \"http\"\nhttp-expect-status = 99", ""),
                format!("{V} health.http-expect-status: 99 is out of range 100..=599"),
            ),
            (
                one("", "kind = \"udp\"\nudp-payload = \"\"", ""),
                format!("{V} health.udp-payload: must not be empty"),
            ),
            (
                "[conntrack]\ncapacity = 0\n".to_owned(),
                "conntrack.capacity: 0 is out of range 1..=100000000".to_owned(),
            ),
            (
                "[conntrack]\nudp-timeout = \"5 minutes\"\n".to_owned(),
                "conntrack.udp-timeout: bad duration \"5 minutes\": expected a whole number and \
                 a unit (ms, s, m, h), e.g. \"30s\""
                    .to_owned(),
            ),
        ];
        assert!(cases.len() >= 15);
        for (text, want) in cases {
            assert_eq!(error(&text), want, "for:\n{text}");
        }
    }

    #[test]
    fn every_error_is_reported_and_typed_errors_are_invalid() {
        let text = format!(
            "[conntrack]\ncapacity = 0\n{}",
            one(
                "scheduler = \"fastest\"",
                "kind = \"tcp\"\nrise = 0",
                "weight = 20000"
            )
        );
        match Config::parse(&text) {
            Err(ConfigError::Invalid(errors)) => assert_eq!(
                errors,
                vec![
                    "conntrack.capacity: 0 is out of range 1..=100000000".to_owned(),
                    "vip[0].scheduler: unknown scheduler \"fastest\": expected one of maglev, \
                     source-hash, round-robin, weighted-round-robin, random, weighted-random, \
                     least-conn"
                        .to_owned(),
                    format!("{V} health.rise: 0 is out of range 1..=100"),
                    format!("{V} backend[0].weight: 20000 is out of range 0..=10000"),
                ]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_many_vips() {
        let text: String = (0..=MAX_VIPS)
            .map(|i| {
                format!(
                    "[[vip]]\naddress = \"198.19.{}.{}:80\"\nprotocol = \"tcp\"\n",
                    i / 250,
                    i % 250 + 1
                )
            })
            .collect();
        assert_eq!(error(&text), "vip: 4097 VIPs, at most 4096");
    }

    #[test]
    fn syntax_and_shape_errors_keep_tomls_message() {
        // Typos in keys are errors, wherever they are.
        let err = error(&one("sheduler = \"maglev\"", "", ""));
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("unknown field `sheduler`"), "{err}");
        let err = error(&one("", "", "wieght = 2"));
        assert!(err.contains("unknown field `wieght`"), "{err}");
        let err = error(&one("", "kind = \"tcp\"\nintervall = \"1s\"", ""));
        assert!(err.contains("unknown field `intervall`"), "{err}");
        let err = error("[conntrak]\ncapacity = 1\n");
        assert!(err.contains("unknown field `conntrak`"), "{err}");
        // Wrong types and bad TOML.
        let err = error(&one("", "kind = \"tcp\"\ninterval = 1", ""));
        assert!(
            err.contains("invalid type: integer `1`, expected a string"),
            "{err}"
        );
        assert!(err.contains("health.interval: "), "names the field: {err}");
        let err = error("[[vip]\naddress = \"198.19.0.1:80\"\n");
        assert!(err.starts_with("line 1, column "), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        let err = error("[[vip]]\naddress = \"198.19.0.1:80\"\n");
        assert!(err.contains("missing field `protocol`"), "{err}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("xdplb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("xdplb.toml");
        std::fs::write(&path, one("scheduler = \"fastest\"", "", "")).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: vip[0].scheduler: unknown", path.display())),
            "{err}"
        );
        std::fs::write(&path, FULL).unwrap();
        assert_eq!(Config::load(&path).unwrap(), parse(FULL));
        std::fs::remove_dir_all(&dir).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.starts_with("reading "), "{err}");
    }

    fn balancer(slots: u32) -> Balancer<MemMaps> {
        Balancer::new(MemMaps::default(), slots, Settings::default()).unwrap()
    }

    /// A balancer's VIPs without ids, backends sorted by address.
    fn state(b: &Balancer<MemMaps>) -> Vec<(Vip, VipOptions, Vec<BackendSpec>)> {
        b.vips()
            .into_iter()
            .map(|info| {
                let mut specs: Vec<BackendSpec> = info.backends.iter().map(|b| b.spec).collect();
                specs.sort_by_key(|s| s.addr);
                (info.vip, info.options, specs)
            })
            .collect()
    }

    /// A config's VIPs the same way, sorted by VIP like [`Balancer::vips`].
    fn wanted(config: &Config) -> Vec<(Vip, VipOptions, Vec<BackendSpec>)> {
        let mut out: Vec<_> = config
            .vips
            .iter()
            .map(|v| {
                let mut specs = v.backends();
                specs.sort_by_key(|s| s.addr);
                (v.vip(), v.options(), specs)
            })
            .collect();
        out.sort_by_key(|(vip, _, _)| *vip);
        out
    }

    const BEFORE: &str = r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[[vip.backend]]
address = "198.18.1.2:8080"
[[vip.backend]]
address = "198.18.2.2:8080"
[[vip.backend]]
address = "198.18.3.2:8080"

[[vip]]
address = "198.19.0.2:53"
protocol = "udp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.1.2:53"
"#;

    const AFTER: &str = r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
scheduler = "weighted-round-robin"
[[vip.backend]]
address = "198.18.4.2:8080"
[[vip.backend]]
address = "198.18.2.2:8080"
weight = 3
[[vip.backend]]
address = "198.18.1.2:8080"
state = "draining"

[[vip]]
address = "[fd00::1]:443"
protocol = "tcp"
ring-size = 31
[[vip.backend]]
address = "[fd00::2]:443"
weight = 2
state = "down"
"#;

    #[test]
    fn plan_of_a_changed_file() {
        let mut b = balancer(1 << 20);
        apply_plan(&mut b, &parse(BEFORE)).unwrap();
        let plan = plan(&b.vips(), &parse(AFTER));
        assert_eq!(
            plan.to_string(),
            "- vip 198.19.0.2:53/udp\n\
             ~ vip 198.19.0.1:80/tcp: maglev -> weighted-round-robin\n\
             - backend 198.18.3.2:8080 from 198.19.0.1:80/tcp\n\
             + backend 198.18.4.2:8080 to 198.19.0.1:80/tcp (weight 1)\n\
             ~ backend 198.18.2.2:8080 of 198.19.0.1:80/tcp: weight 1 -> 3\n\
             ~ backend 198.18.1.2:8080 of 198.19.0.1:80/tcp: state up -> draining\n\
             + vip [fd00::1]:443/tcp (maglev, ring-size 31)\n\
             + backend [fd00::2]:443 to [fd00::1]:443/tcp (weight 2, down)"
        );
        assert_eq!(plan.len(), 8);
        assert_eq!(
            plan.changes[4],
            Change::UpdateBackend {
                vip: "198.19.0.1:80/tcp".parse().unwrap(),
                addr: "198.18.2.2:8080".parse().unwrap(),
                weight: Some((1, 3)),
                state: None,
            }
        );
        let both = Change::UpdateBackend {
            vip: "198.19.0.1:80/tcp".parse().unwrap(),
            addr: "198.18.2.2:8080".parse().unwrap(),
            weight: Some((1, 3)),
            state: Some((BackendState::Up, BackendState::Down)),
        };
        assert_eq!(
            both.to_string(),
            "~ backend 198.18.2.2:8080 of 198.19.0.1:80/tcp: weight 1 -> 3, state up -> down"
        );
        assert_eq!(Plan::default().to_string(), "no changes");
    }

    #[test]
    fn apply_brings_the_balancer_to_the_config() {
        let mut b = balancer(1 << 20);
        let before = parse(BEFORE);
        let plan = apply_plan(&mut b, &before).unwrap();
        assert_eq!(plan.len(), 6);
        assert_eq!(state(&b), wanted(&before));
        assert!(
            apply_plan(&mut b, &before).unwrap().is_empty(),
            "idempotent"
        );

        let vip: Vip = "198.19.0.1:80/tcp".parse().unwrap();
        let id_of = |b: &Balancer<MemMaps>, addr: &str| {
            let addr: SocketAddr = addr.parse().unwrap();
            b.vip(&vip)
                .unwrap()
                .backends
                .iter()
                .find(|x| x.spec.addr == addr)
                .map(|x| x.id)
        };
        let kept = id_of(&b, "198.18.2.2:8080");

        let after = parse(AFTER);
        apply_plan(&mut b, &after).unwrap();
        assert_eq!(state(&b), wanted(&after));
        assert_eq!(
            id_of(&b, "198.18.2.2:8080"),
            kept,
            "kept backends keep their ids"
        );
        assert_eq!(id_of(&b, "198.18.3.2:8080"), None);
        assert!(plan_targets(&b.vips(), &Target::from_config(&after)).is_empty());

        // Order of backends in the file does not matter; an empty config removes everything.
        let mut reordered = after.clone();
        reordered.vips[0].backends.reverse();
        assert!(apply_plan(&mut b, &reordered).unwrap().is_empty());
        apply_plan(&mut b, &Config::default()).unwrap();
        assert!(b.vips().is_empty());
        assert!(b.maps().vips.is_empty());
    }

    #[test]
    fn a_failed_apply_is_rolled_back() {
        // 100 slots: VIP A (maglev, ring 31: 31 + 2 list entries) and C (round-robin, 2 + 2)
        // fit; B with a ring of 97 does not fit next to A.
        let mut b = balancer(100);
        let before = parse(
            r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
ring-size = 31
[[vip.backend]]
address = "198.18.1.2:8080"
[[vip.backend]]
address = "198.18.2.2:8080"

[[vip]]
address = "198.19.0.3:80"
protocol = "tcp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.1.2:8080"
[[vip.backend]]
address = "198.18.2.2:8080"
"#,
        );
        apply_plan(&mut b, &before).unwrap();
        let vip_a: Vip = "198.19.0.1:80/tcp".parse().unwrap();
        let ids_a = b.vip(&vip_a).unwrap().backends;
        let desired = parse(
            r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
ring-size = 31
[[vip.backend]]
address = "198.18.1.2:8080"
weight = 5
[[vip.backend]]
address = "198.18.2.2:8080"

[[vip]]
address = "198.19.0.2:80"
protocol = "tcp"
ring-size = 97
[[vip.backend]]
address = "198.18.3.2:8080"
[[vip.backend]]
address = "198.18.4.2:8080"
"#,
        );
        let err = apply_plan(&mut b, &desired).unwrap_err();
        assert!(matches!(err, Error::NoRoomInTables { .. }), "{err}");
        assert_eq!(state(&b), wanted(&before), "rolled back");
        let after_a = b.vip(&vip_a).unwrap().backends;
        assert_eq!(after_a, ids_a, "A's backends kept their ids and weights");
        // The balancer still works: a config that fits (the 100 slots are fragmented by
        // now) applies.
        let mut fits = desired.clone();
        fits.vips[1].ring_size = 29;
        apply_plan(&mut b, &fits).unwrap();
        assert_eq!(state(&b), wanted(&fits));
    }

    #[test]
    fn hand_built_configs_are_checked_before_anything_changes() {
        let mut b = balancer(1 << 20);
        apply_plan(&mut b, &parse(BEFORE)).unwrap();
        let before = state(&b);
        let mut bad = parse(AFTER);
        bad.vips[1].backends[0].weight = MAX_WEIGHT + 1;
        assert!(matches!(
            apply_plan(&mut b, &bad),
            Err(Error::WeightOutOfRange { .. })
        ));
        let mut bad = parse(AFTER);
        bad.vips[1].backends[0].address = "198.18.9.9:443".parse().unwrap();
        assert!(matches!(
            apply_plan(&mut b, &bad),
            Err(Error::FamilyMismatch { .. })
        ));
        let mut bad = parse(AFTER);
        bad.vips.push(bad.vips[0].clone());
        assert!(matches!(apply_plan(&mut b, &bad), Err(Error::VipExists(_))));
        assert_eq!(state(&b), before);
    }

    #[test]
    fn from_info_gives_the_balancers_state_back() {
        let mut b = balancer(1 << 20);
        let after = parse(AFTER);
        apply_plan(&mut b, &after).unwrap();
        let config = Config {
            conntrack: ConntrackConfig::default(),
            vips: b.vips().iter().map(VipConfig::from_info).collect(),
        };
        assert_eq!(wanted(&config), wanted(&after));
        assert!(plan(&b.vips(), &parse(&config.to_toml())).is_empty());
    }
}
