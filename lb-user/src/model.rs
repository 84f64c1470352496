//! The balancer's vocabulary: VIPs, protocols, schedulers, backends and their states, with
//! their parsing, display, map key encoding and the one copy of their validation.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use lb_common::{
    acl::MAX_ACL_PREFIXES,
    flow::{FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP},
    limit::{DEFAULT_SOURCE_PREFIX_V4, DEFAULT_SOURCE_PREFIX_V6},
    maglev::{self, DEFAULT_RING_SIZE, MAX_WEIGHT},
    maps::{
        BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP, MAX_BACKENDS, MAX_VIPS, VipAddrKey, VipKey,
        forwarding, scheduler,
    },
};

/// Transport protocol of a VIP.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(Error::BadProto(s.to_owned())),
        }
    }
}

impl Proto {
    pub(crate) fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

/// A VIP: address, port (0: every port) and protocol.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Vip {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.addr, self.port),
            self.proto
        )
    }
}

impl FromStr for Vip {
    type Err = Error;
    /// `ADDR:PORT/PROTO`, e.g. `198.19.0.1:80/tcp` or `[fd00::1]:0/udp`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let (addr, proto) = s
            .rsplit_once('/')
            .ok_or_else(|| Error::BadVip(s.to_owned()))?;
        let addr: SocketAddr = addr.parse().map_err(|_| Error::BadVip(s.to_owned()))?;
        Ok(Vip {
            addr: addr.ip(),
            port: addr.port(),
            proto: proto.parse()?,
        })
    }
}

pub(crate) fn family(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => FAMILY_IPV4,
        IpAddr::V6(_) => FAMILY_IPV6,
    }
}

pub(crate) fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Vip {
    pub(crate) fn key(&self) -> VipKey {
        VipKey {
            addr: addr16(self.addr),
            port: self.port.to_be_bytes(),
            proto: self.proto.number(),
            family: family(self.addr),
        }
    }

    pub(crate) fn addr_key(&self) -> VipAddrKey {
        VipAddrKey {
            addr: addr16(self.addr),
            proto: self.proto.number(),
            family: family(self.addr),
            _pad: [0; 2],
        }
    }
}

/// How a VIP picks backends for new flows.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// Maglev consistent hashing over the 5-tuple (weighted).
    #[default]
    Maglev,
    /// The Maglev table keyed by client address: affinity by client IP.
    SourceHash,
    RoundRobin,
    /// Smooth weighted round-robin.
    WeightedRoundRobin,
    Random,
    WeightedRandom,
    /// Weighted least connections, by two random choices.
    LeastConn,
}

/// ipvsadm's scheduler names, accepted as aliases of ours. `lc` and `wlc` both map to
/// `least-conn`, which weighs the connections by the backends' weights (with equal weights it
/// is plain least-connections).
pub const SCHEDULER_ALIASES: [(&str, Scheduler); 6] = [
    ("rr", Scheduler::RoundRobin),
    ("wrr", Scheduler::WeightedRoundRobin),
    ("lc", Scheduler::LeastConn),
    ("wlc", Scheduler::LeastConn),
    ("sh", Scheduler::SourceHash),
    ("mh", Scheduler::Maglev),
];

impl Scheduler {
    pub const ALL: [Scheduler; 7] = [
        Scheduler::Maglev,
        Scheduler::SourceHash,
        Scheduler::RoundRobin,
        Scheduler::WeightedRoundRobin,
        Scheduler::Random,
        Scheduler::WeightedRandom,
        Scheduler::LeastConn,
    ];

    pub(crate) fn number(self) -> u8 {
        match self {
            Scheduler::Maglev => scheduler::MAGLEV,
            Scheduler::SourceHash => scheduler::SOURCE_HASH,
            Scheduler::RoundRobin => scheduler::ROUND_ROBIN,
            Scheduler::WeightedRoundRobin => scheduler::WEIGHTED_ROUND_ROBIN,
            Scheduler::Random => scheduler::RANDOM,
            Scheduler::WeightedRandom => scheduler::WEIGHTED_RANDOM,
            Scheduler::LeastConn => scheduler::LEAST_CONN,
        }
    }

    pub fn name(self) -> &'static str {
        scheduler::NAMES[usize::from(self.number())]
    }

    /// ipvsadm's names for it.
    pub fn aliases(self) -> impl Iterator<Item = &'static str> {
        SCHEDULER_ALIASES
            .into_iter()
            .filter(move |(_, s)| *s == self)
            .map(|(alias, _)| alias)
    }

    /// What it does, in a few words (the CLI's help).
    pub fn about(self) -> &'static str {
        match self {
            Scheduler::Maglev => "Maglev consistent hashing over the 5-tuple (weighted)",
            Scheduler::SourceHash => "Maglev keyed by client address: affinity by client IP",
            Scheduler::RoundRobin => "each backend in turn",
            Scheduler::WeightedRoundRobin => "smooth weighted round-robin",
            Scheduler::Random => "a backend at random",
            Scheduler::WeightedRandom => "a backend at random, by weight",
            Scheduler::LeastConn => "weighted least connections, by two random choices",
        }
    }

    /// Whether it picks from a Maglev table (and so has a ring size).
    pub fn is_hashed(self) -> bool {
        matches!(self, Scheduler::Maglev | Scheduler::SourceHash)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheduler {
    type Err = Error;
    /// Our names and ipvsadm's, in any case.
    fn from_str(s: &str) -> Result<Self, Error> {
        let names = Scheduler::ALL
            .into_iter()
            .map(|sched| (sched.name(), sched));
        names
            .chain(SCHEDULER_ALIASES)
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, sched)| sched)
            .ok_or_else(|| Error::UnknownScheduler(s.to_owned()))
    }
}

/// The CLI's view: our names with ipvsadm's as aliases. Arguments of this type set
/// `ignore_case` so that clap, like [`FromStr`], takes any case.
impl clap::ValueEnum for Scheduler {
    fn value_variants<'a>() -> &'a [Self] {
        &Scheduler::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(
            clap::builder::PossibleValue::new(self.name())
                .aliases(self.aliases())
                .help(self.about()),
        )
    }
}

/// How a VIP's packets reach the chosen backend.
#[derive(
    Copy,
    Clone,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarding {
    /// Destination address and port rewritten to the backend's; replies come back through
    /// the gateway and are translated back.
    #[default]
    Nat,
    /// Direct server return on one L2 segment: only the destination MAC changes; the backend
    /// holds the VIP and answers the client directly.
    DsrL2,
    /// Direct server return through an IP-in-IP tunnel (not supported by the data path yet).
    Ipip,
}

impl Forwarding {
    pub const ALL: [Forwarding; 3] = [Forwarding::Nat, Forwarding::DsrL2, Forwarding::Ipip];

    pub(crate) fn number(self) -> u8 {
        match self {
            Forwarding::Nat => forwarding::NAT,
            Forwarding::DsrL2 => forwarding::DSR_L2,
            Forwarding::Ipip => forwarding::IPIP,
        }
    }

    pub fn name(self) -> &'static str {
        forwarding::NAMES[usize::from(self.number())]
    }

    /// Whether the packet keeps its destination (the VIP) and port: the backend must then
    /// listen on the VIP's port.
    pub fn is_direct(self) -> bool {
        self != Forwarding::Nat
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Forwarding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Forwarding::ALL
            .into_iter()
            .find(|mode| mode.name() == s)
            .ok_or_else(|| Error::UnknownForwarding(s.to_owned()))
    }
}

/// A VIP's settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VipOptions {
    pub scheduler: Scheduler,
    /// Size of the Maglev table (`maglev`, `source-hash`); a prime.
    pub ring_size: u32,
    /// Source prefixes let in; if any, only sources under one of them are (the longest prefix
    /// of either list that holds a source decides: `lb_common::acl`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<SourcePrefix>,
    /// Source prefixes dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<SourcePrefix>,
    /// New flows a second per source prefix (also the burst); 0: no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub source_rate_limit: u32,
    /// Sources counted together by the limit: prefixes of this length (default /32 for IPv4,
    /// /64 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix_len: Option<u8>,
    /// How packets reach the backend; state files written before the mode existed are NAT.
    #[serde(default)]
    pub forwarding: Forwarding,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for VipOptions {
    fn default() -> Self {
        Self {
            scheduler: Scheduler::Maglev,
            ring_size: DEFAULT_RING_SIZE,
            allow: Vec::new(),
            deny: Vec::new(),
            source_rate_limit: 0,
            source_prefix_len: None,
            forwarding: Forwarding::Nat,
        }
    }
}

impl VipOptions {
    /// True if the VIP has allow or deny prefixes.
    pub fn has_acl(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }

    /// The source prefix length the limit counts by, for a VIP at `addr`.
    pub fn source_prefix_len_for(&self, addr: IpAddr) -> u8 {
        self.source_prefix_len.unwrap_or(match addr {
            IpAddr::V4(_) => DEFAULT_SOURCE_PREFIX_V4,
            IpAddr::V6(_) => DEFAULT_SOURCE_PREFIX_V6,
        })
    }
}

/// A source address prefix of a VIP's allow or deny list, `ADDR/LEN` (a bare address is the
/// whole address). Host bits must be zero: `10.1.2.3/8` is refused, not read as `10.0.0.0/8`,
/// since either reading could be the mistake.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePrefix {
    pub addr: IpAddr,
    pub len: u8,
}

fn max_prefix_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl SourcePrefix {
    /// The prefix as `lb_common::acl` takes it.
    pub fn bits(&self) -> lb_common::acl::Prefix {
        (addr16(self.addr), self.len)
    }
}

impl fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for SourcePrefix {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: String| Error::BadPrefix {
            prefix: s.to_owned(),
            why,
        };
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("expected ADDR/LEN, e.g. 10.0.0.0/8 or fd00::/16".to_owned()))?;
        let max = max_prefix_len(addr);
        let len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|&len| len <= max)
                .ok_or_else(|| bad(format!("the length must be a number from 0 to {max}")))?,
        };
        let masked = lb_common::limit::mask_source(&addr16(addr), len);
        if masked != addr16(addr) {
            let network = match addr {
                IpAddr::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&masked[..4]).expect("4 bytes")),
                IpAddr::V6(_) => IpAddr::from(masked),
            };
            return Err(bad(format!(
                "host bits are set (the network is {network}/{len})"
            )));
        }
        Ok(Self { addr, len })
    }
}

impl serde::Serialize for SourcePrefix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SourcePrefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A backend's state.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Takes new flows.
    #[default]
    Up,
    /// Keeps its flows, takes no new ones.
    Draining,
    /// Failed: takes nothing; its tracked flows move.
    Down,
}

impl BackendState {
    pub(crate) fn number(self) -> u8 {
        match self {
            BackendState::Up => BACKEND_UP,
            BackendState::Draining => BACKEND_DRAINING,
            BackendState::Down => BACKEND_DOWN,
        }
    }
}

impl FromStr for BackendState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "up" => Ok(BackendState::Up),
            "draining" => Ok(BackendState::Draining),
            "down" => Ok(BackendState::Down),
            _ => Err(format!(
                "unknown state {s:?}: expected up, draining or down"
            )),
        }
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendState::Up => "up",
            BackendState::Draining => "draining",
            BackendState::Down => "down",
        })
    }
}

/// Why a change was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("VIP {0} already exists")]
    VipExists(Vip),
    #[error("no VIP {0}")]
    UnknownVip(Vip),
    #[error("backend {backend} of VIP {vip} already exists")]
    BackendExists { vip: Vip, backend: SocketAddr },
    #[error("no backend {backend} in VIP {vip}")]
    UnknownBackend { vip: Vip, backend: SocketAddr },
    #[error("backend {backend} is not of VIP {vip}'s address family")]
    FamilyMismatch { vip: Vip, backend: SocketAddr },
    #[error("weight {weight} of backend {backend} is out of range 0..={MAX_WEIGHT}")]
    WeightOutOfRange { backend: SocketAddr, weight: u32 },
    #[error("backend {backend} has port 0, which only a VIP with port 0 (every port) allows")]
    BackendPortZero { backend: SocketAddr },
    #[error("ring size {0} is not a prime between 3 and {max}", max = maglev::MAX_RING_SIZE)]
    BadRingSize(u32),
    #[error("VIP address {0} is {why}", why = problem_name(.0))]
    BadVipAddress(IpAddr),
    #[error("backend {backend} cannot be a backend: its address is {why}")]
    BadBackendAddress {
        backend: SocketAddr,
        why: &'static str,
    },
    #[error("bad VIP {0:?}: expected ADDR:PORT/PROTO, e.g. 198.19.0.1:80/tcp")]
    BadVip(String),
    #[error(
        "bad backend {0:?}: expected ADDR[:PORT], e.g. 198.18.1.2:8080, [fd00::2]:8080 or \
         198.18.1.2 (the VIP's port)"
    )]
    BadBackend(String),
    #[error("bad protocol {0:?}: expected tcp or udp")]
    BadProto(String),
    #[error(
        "unknown scheduler {0:?}: expected one of {names} (or ipvsadm's {aliases})",
        names = scheduler::NAMES.join(", "),
        aliases = SCHEDULER_ALIASES.map(|(alias, _)| alias).join(", ")
    )]
    UnknownScheduler(String),
    #[error("unknown forwarding mode {0:?}: expected one of {names}", names = forwarding::NAMES.join(", "))]
    UnknownForwarding(String),
    #[error(
        "backend {backend} of VIP {vip} must listen on the VIP's port (or have port 0): \
         forwarding {forwarding} leaves the destination port as the client sent it"
    )]
    DirectPortMismatch {
        vip: Vip,
        backend: SocketAddr,
        forwarding: Forwarding,
    },
    #[error("too many VIPs (at most {MAX_VIPS})")]
    TooManyVips,
    #[error("too many backends (at most {MAX_BACKENDS} in all)")]
    TooManyBackends,
    #[error("no room for {needed} more table entries (slots array has {available} free)")]
    NoRoomInTables { needed: u64, available: u64 },
    #[error("bad source prefix {prefix:?}: {why}")]
    BadPrefix { prefix: String, why: String },
    #[error("source prefix {prefix} is not of VIP {vip}'s address family")]
    PrefixFamilyMismatch { vip: Vip, prefix: SourcePrefix },
    #[error("source prefix {0} is listed twice (in allow or deny, or in both)")]
    PrefixTwice(SourcePrefix),
    #[error(
        "too many source prefixes: {0} (at most {MAX_ACL_PREFIXES} a VIP, allow and deny together)"
    )]
    TooManyPrefixes(usize),
    #[error("too many source prefixes in all VIPs (the data path holds at most {0} entries)")]
    AclFull(u32),
    #[error("source prefix length {len} is out of range 0..={max} for VIP {vip}")]
    BadSourcePrefixLen { vip: Vip, len: u8, max: u8 },
    #[error("a saved snapshot cannot be taken over: {0}")]
    BadSnapshot(String),
    #[error("writing the data path's maps failed: {0}")]
    Maps(#[from] MapsError),
}

/// Input refused before anything was tried (arguments that do not fit together, a bad config
/// file), with its message: the CLI exits with its "bad input" code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Why a map operation failed: the map, what was done to it, and the kernel's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {map}: {message}")]
pub struct MapsError {
    pub map: &'static str,
    pub op: &'static str,
    pub message: String,
}

impl MapsError {
    pub fn new(map: &'static str, op: &'static str, message: impl Into<String>) -> Self {
        Self {
            map,
            op,
            message: message.into(),
        }
    }
}

pub type MapsResult<T> = Result<T, MapsError>;

/// A backend as configured.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: BackendState,
}

impl BackendSpec {
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            weight,
            state: BackendState::Up,
        }
    }

    pub(crate) fn takes_new_flows(&self) -> bool {
        self.state == BackendState::Up && self.weight > 0
    }
}

/// Why an address cannot be a VIP or a backend: traffic to it never leaves the host, or is
/// not for one host.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AddrProblem {
    /// `0.0.0.0` or `::`.
    Unspecified,
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// `224.0.0.0/4` or `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
}

impl AddrProblem {
    /// What is wrong with `addr`, if anything. An IPv4-mapped IPv6 address is judged as the
    /// IPv4 address it maps.
    pub fn of(addr: IpAddr) -> Option<Self> {
        let addr = addr.to_canonical();
        if addr.is_unspecified() {
            Some(Self::Unspecified)
        } else if addr.is_loopback() {
            Some(Self::Loopback)
        } else if addr.is_multicast() {
            Some(Self::Multicast)
        } else if matches!(addr, IpAddr::V4(a) if a.is_broadcast()) {
            Some(Self::Broadcast)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
        }
    }
}

fn problem_name(addr: &IpAddr) -> &'static str {
    AddrProblem::of(*addr).map_or("refused", AddrProblem::name)
}

/// An address that cannot be a VIP: unspecified, loopback, multicast or broadcast.
pub fn is_bad_vip_addr(addr: IpAddr) -> bool {
    AddrProblem::of(addr).is_some()
}

/// A Maglev table size the balancer takes: a prime in `3..=MAX_RING_SIZE`.
pub fn is_good_ring_size(size: u32) -> bool {
    (3..=maglev::MAX_RING_SIZE).contains(&size) && maglev::is_prime(size)
}

/// The one copy of a VIP's validation: an address that can be a VIP (not unspecified,
/// loopback, multicast or broadcast), a ring size that is a prime in range for the hashed
/// schedulers.
pub fn check_vip(vip: &Vip, options: &VipOptions) -> Result<(), Error> {
    if is_bad_vip_addr(vip.addr) {
        return Err(Error::BadVipAddress(vip.addr));
    }
    if options.scheduler.is_hashed() && !is_good_ring_size(options.ring_size) {
        return Err(Error::BadRingSize(options.ring_size));
    }
    check_sources(vip, options)
}

/// A VIP's source prefix lists and limit: prefixes of the VIP's family, none twice, at most
/// [`MAX_ACL_PREFIXES`]; a source prefix length within the family's.
pub fn check_sources(vip: &Vip, options: &VipOptions) -> Result<(), Error> {
    let count = options.allow.len() + options.deny.len();
    if count > MAX_ACL_PREFIXES {
        return Err(Error::TooManyPrefixes(count));
    }
    let mut seen = std::collections::BTreeSet::new();
    for prefix in options.allow.iter().chain(&options.deny) {
        if family(prefix.addr) != family(vip.addr) {
            return Err(Error::PrefixFamilyMismatch {
                vip: *vip,
                prefix: *prefix,
            });
        }
        if !seen.insert(*prefix) {
            return Err(Error::PrefixTwice(*prefix));
        }
    }
    let max = max_prefix_len(vip.addr);
    if let Some(len) = options.source_prefix_len.filter(|&len| len > max) {
        return Err(Error::BadSourcePrefixLen {
            vip: *vip,
            len,
            max,
        });
    }
    Ok(())
}

/// Whether `backend` can be a backend of `vip` forwarded by `forwarding`: in the direct modes
/// the packet keeps the port the client sent to, so the backend's port is the VIP's, or 0.
pub fn check_backend_forwarding(
    vip: &Vip,
    forwarding: Forwarding,
    backend: SocketAddr,
) -> Result<(), Error> {
    if forwarding.is_direct() && backend.port() != 0 && backend.port() != vip.port {
        return Err(Error::DirectPortMismatch {
            vip: *vip,
            backend,
            forwarding,
        });
    }
    Ok(())
}

/// The one copy of a backend's validation against its VIP: an address that can be a backend
/// (not unspecified, loopback, multicast, broadcast, nor the VIP's own), family, weight, port.
pub fn check_backend(vip: &Vip, spec: &BackendSpec) -> Result<(), Error> {
    check_backend_addr(vip, spec.addr)?;
    if spec.weight > MAX_WEIGHT {
        return Err(Error::WeightOutOfRange {
            backend: spec.addr,
            weight: spec.weight,
        });
    }
    Ok(())
}

/// Whether `backend` can be a backend of `vip`: an address of one host that is not the VIP's
/// own, of the VIP's family, with a port unless the VIP takes every port. (The weight is the
/// spec's; see [`check_backend`].)
/// A backend's address as operators write it: `ADDR:PORT`, or the address alone
/// (`198.18.1.2`, `fd00::2`, `[fd00::2]`), which takes the VIP's port `vip_port`.
pub fn parse_backend_addr(s: &str, vip_port: u16) -> Result<SocketAddr, Error> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, vip_port))
        .map_err(|_| Error::BadBackend(s.to_owned()))
}

pub fn check_backend_addr(vip: &Vip, backend: SocketAddr) -> Result<(), Error> {
    if let Some(problem) = AddrProblem::of(backend.ip()) {
        return Err(Error::BadBackendAddress {
            backend,
            why: problem.name(),
        });
    }
    if backend.ip().to_canonical() == vip.addr.to_canonical() {
        return Err(Error::BadBackendAddress {
            backend,
            why: "the VIP's own",
        });
    }
    if family(backend.ip()) != family(vip.addr) {
        return Err(Error::FamilyMismatch { vip: *vip, backend });
    }
    if backend.port() == 0 && vip.port != 0 {
        return Err(Error::BackendPortZero { backend });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(s: &str) -> Vip {
        s.parse().unwrap()
    }

    fn backend(s: &str) -> BackendSpec {
        BackendSpec::new(s.parse().unwrap(), 1)
    }

    #[test]
    fn vips_of_no_single_host_are_refused() {
        for (addr, why) in [
            ("0.0.0.0:80/tcp", "unspecified"),
            ("[::]:80/tcp", "unspecified"),
            ("127.0.0.1:80/tcp", "loopback"),
            ("127.9.9.9:80/tcp", "loopback"),
            ("[::1]:80/tcp", "loopback"),
            ("[::ffff:127.0.0.1]:80/tcp", "loopback"),
            ("224.0.0.1:80/udp", "multicast"),
            ("[ff02::1]:80/udp", "multicast"),
            ("255.255.255.255:80/udp", "broadcast"),
        ] {
            let v = vip(addr);
            let err = check_vip(&v, &VipOptions::default()).unwrap_err();
            assert_eq!(err, Error::BadVipAddress(v.addr), "{addr}");
            assert_eq!(err.to_string(), format!("VIP address {} is {why}", v.addr));
        }
        check_vip(&vip("198.19.0.1:80/tcp"), &VipOptions::default()).unwrap();
        check_vip(&vip("[fd00::1]:80/tcp"), &VipOptions::default()).unwrap();
    }

    #[test]
    fn backends_of_no_single_host_or_at_the_vip_are_refused() {
        let v4 = vip("198.19.0.1:80/tcp");
        let v6 = vip("[fd00::1]:80/tcp");
        for (v, addr, why) in [
            (v4, "0.0.0.0:8080", "unspecified"),
            (v6, "[::]:8080", "unspecified"),
            (v4, "255.255.255.255:8080", "broadcast"),
            (v4, "239.1.2.3:8080", "multicast"),
            (v6, "[ff05::2]:8080", "multicast"),
            (v4, "127.0.0.1:8080", "loopback"),
            (v6, "[::1]:8080", "loopback"),
            (v4, "198.19.0.1:8080", "the VIP's own"),
            (v4, "198.19.0.1:80", "the VIP's own"),
            (v6, "[fd00::1]:8080", "the VIP's own"),
        ] {
            let spec = backend(addr);
            let err = check_backend(&v, &spec).unwrap_err();
            assert_eq!(
                err,
                Error::BadBackendAddress {
                    backend: spec.addr,
                    why
                },
                "{addr}"
            );
            assert_eq!(
                err.to_string(),
                format!("backend {addr} cannot be a backend: its address is {why}")
            );
        }
        check_backend(&v4, &backend("198.18.1.2:8080")).unwrap();
        check_backend(&v6, &backend("[fd00::2]:8080")).unwrap();
    }

    #[test]
    fn source_prefixes_parse_or_say_why_not() {
        let p: SourcePrefix = "10.0.0.0/8".parse().unwrap();
        assert_eq!((p.addr, p.len), ("10.0.0.0".parse().unwrap(), 8));
        assert_eq!("192.0.2.7".parse::<SourcePrefix>().unwrap().len, 32);
        assert_eq!("fd00::/16".parse::<SourcePrefix>().unwrap().len, 16);
        assert_eq!("fd00::1".parse::<SourcePrefix>().unwrap().len, 128);
        assert_eq!(p.to_string(), "10.0.0.0/8");
        for (s, why) in [
            (
                "10.1.2.3/8",
                "host bits are set (the network is 10.0.0.0/8)",
            ),
            ("fd00::1/16", "host bits are set (the network is fd00::/16)"),
            ("10.0.0.0/33", "the length must be a number from 0 to 32"),
            ("fd00::/129", "the length must be a number from 0 to 128"),
            ("10.0.0.0/x", "the length must be a number from 0 to 32"),
            (
                "10.0.0/8",
                "expected ADDR/LEN, e.g. 10.0.0.0/8 or fd00::/16",
            ),
            ("none", "expected ADDR/LEN, e.g. 10.0.0.0/8 or fd00::/16"),
        ] {
            let err = s.parse::<SourcePrefix>().unwrap_err();
            assert_eq!(
                err,
                Error::BadPrefix {
                    prefix: s.to_owned(),
                    why: why.to_owned()
                },
                "{s}"
            );
        }
    }

    #[test]
    fn source_lists_are_checked_against_the_vip() {
        let v = vip("198.19.0.1:80/tcp");
        let prefix = |s: &str| s.parse::<SourcePrefix>().unwrap();
        let with = |allow: &[&str], deny: &[&str]| VipOptions {
            allow: allow.iter().map(|s| prefix(s)).collect(),
            deny: deny.iter().map(|s| prefix(s)).collect(),
            ..VipOptions::default()
        };
        check_vip(&v, &with(&["10.0.0.0/8"], &["10.1.0.0/16"])).unwrap();
        assert_eq!(
            check_vip(&v, &with(&["fd00::/8"], &[])),
            Err(Error::PrefixFamilyMismatch {
                vip: v,
                prefix: prefix("fd00::/8")
            })
        );
        assert_eq!(
            check_vip(&v, &with(&["10.0.0.0/8"], &["10.0.0.0/8"])),
            Err(Error::PrefixTwice(prefix("10.0.0.0/8")))
        );
        let many: Vec<String> = (0..=MAX_ACL_PREFIXES)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            check_vip(&v, &with(&many, &[])),
            Err(Error::TooManyPrefixes(MAX_ACL_PREFIXES + 1))
        );
        let long = VipOptions {
            source_rate_limit: 5,
            source_prefix_len: Some(33),
            ..VipOptions::default()
        };
        assert_eq!(
            check_vip(&v, &long),
            Err(Error::BadSourcePrefixLen {
                vip: v,
                len: 33,
                max: 32
            })
        );
        assert_eq!(long.source_prefix_len_for(v.addr), 33);
        assert_eq!(VipOptions::default().source_prefix_len_for(v.addr), 32);
        let v6 = vip("[fd00::1]:80/tcp");
        assert_eq!(VipOptions::default().source_prefix_len_for(v6.addr), 64);
    }

    #[test]
    fn backend_checks_keep_family_weight_and_port() {
        let v = vip("198.19.0.1:80/tcp");
        assert!(matches!(
            check_backend(&v, &backend("[fd00::2]:80")),
            Err(Error::FamilyMismatch { .. })
        ));
        assert!(matches!(
            check_backend(&v, &backend("198.18.1.2:0")),
            Err(Error::BackendPortZero { .. })
        ));
        let heavy = BackendSpec::new("198.18.1.2:80".parse().unwrap(), MAX_WEIGHT + 1);
        assert!(matches!(
            check_backend(&v, &heavy),
            Err(Error::WeightOutOfRange { .. })
        ));
    }

    #[test]
    fn forwarding_modes_parse_and_print_as_the_data_path_numbers_them() {
        for mode in Forwarding::ALL {
            assert_eq!(mode.name().parse::<Forwarding>(), Ok(mode));
            assert_eq!(
                mode.to_string(),
                forwarding::NAMES[usize::from(mode.number())]
            );
        }
        assert_eq!(Forwarding::DsrL2.number(), forwarding::DSR_L2);
        let err = "dsr".parse::<Forwarding>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown forwarding mode \"dsr\": expected one of nat, dsr-l2, ipip"
        );
    }

    #[test]
    fn direct_modes_want_the_vips_port() {
        let v = vip("198.19.0.1:80/tcp");
        let wild = vip("198.19.0.1:0/tcp");
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        check_backend_forwarding(&v, Forwarding::Nat, addr("198.18.1.2:8080")).unwrap();
        check_backend_forwarding(&v, Forwarding::DsrL2, addr("198.18.1.2:80")).unwrap();
        check_backend_forwarding(&wild, Forwarding::DsrL2, addr("198.18.1.2:0")).unwrap();
        let err =
            check_backend_forwarding(&v, Forwarding::DsrL2, addr("198.18.1.2:8080")).unwrap_err();
        assert!(matches!(err, Error::DirectPortMismatch { .. }));
        assert!(
            err.to_string().contains("must listen on the VIP's port"),
            "{err}"
        );
        assert!(
            check_backend_forwarding(&wild, Forwarding::DsrL2, addr("198.18.1.2:8080")).is_err()
        );
        check_backend_forwarding(&v, Forwarding::Ipip, addr("198.18.1.2:80")).unwrap();
        assert!(check_backend_forwarding(&v, Forwarding::Ipip, addr("198.18.1.2:8080")).is_err());
        let ipip = VipOptions {
            forwarding: Forwarding::Ipip,
            ..VipOptions::default()
        };
        assert_eq!(check_vip(&v, &ipip), Ok(()));
    }

    #[test]
    fn options_saved_before_the_mode_existed_are_nat() {
        let old: VipOptions =
            serde_json::from_str(r#"{"scheduler":"maglev","ring_size":65537}"#).unwrap();
        assert_eq!(old.forwarding, Forwarding::Nat);
    }
}
