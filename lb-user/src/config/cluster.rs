//! `[cluster]` and `[bgp]`: what several gateways behind one ECMP router share, and how each
//! announces its VIPs to the router (through its own BIRD 2, `crate::cluster::bgp`).
//!
//! ```toml
//! [cluster]
//! hash-seed = 0               # u32, the same on every gateway (default 0)
//! etcd-endpoints = ["http://10.0.0.9:2379"] # the desired config in etcd (cluster mode)
//! etcd-prefix = "/xdplb/"     # every key of this cluster under it (default /xdplb/)
//! gateway-name = "gw1"        # this gateway in etcd (default: the host name)
//!
//! [bgp]
//! local-asn = 65001           # 1..=4294967295
//! router-id = "10.0.1.2"      # IPv4
//! hold-time = 9               # seconds, 3..=65535 (default 9)
//! bfd = false                 # BFD on every session (default false)
//! next-hop = "self"           # "self" (default: the session's own address) or an address
//! announce = ["198.19.0.1"]   # VIP addresses announced (each must be a [[vip]]'s)
//!
//! [[bgp.peer]]
//! address = "10.0.1.1"
//! asn = 65000
//! port = 179                  # optional, default 179
//! ```
//!
//! With either table, every VIP must use a cluster-safe scheduler (`maglev`, `source-hash`):
//! only those send a flow to the same backend on every gateway.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::semantic::Errors;
use super::*;

/// Default BGP hold time, seconds: a dead gateway's routes go within 9 s (3 keepalives).
pub const DEFAULT_HOLD_TIME: u16 = 9;

/// Default `etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/xdplb/";

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Seed of the flow and address hashes (`Settings::hash_seed`).
    pub hash_seed: u32,
    /// etcd's client URLs (`http://ADDR:PORT`); not empty: the desired config lives in etcd
    /// (`crate::cluster::store`).
    pub etcd_endpoints: Vec<String>,
    /// The key prefix every key of this cluster lives under; starts and ends with `/`.
    pub etcd_prefix: String,
    /// This gateway's name in etcd; default: the host name.
    pub gateway_name: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            hash_seed: 0,
            etcd_endpoints: Vec::new(),
            etcd_prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            gateway_name: None,
        }
    }
}

impl ClusterConfig {
    /// Cluster mode: the desired config lives in etcd.
    pub fn enabled(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// `gateway-name`, else the host name.
    pub fn gateway(&self) -> String {
        self.gateway_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "xdplb".to_owned())
        })
    }
}

/// `[bgp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub peers: Vec<BgpPeer>,
    pub hold_time: u16,
    pub bfd: bool,
    /// `None`: the session's own address (`next hop self`).
    pub next_hop: Option<IpAddr>,
    /// The VIP addresses announced, each only while one of its VIPs has a backend taking
    /// flows.
    pub announce: Vec<IpAddr>,
}

/// A `[[bgp.peer]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BgpPeer {
    pub address: IpAddr,
    pub asn: u32,
    pub port: u16,
}

/// Whether VIPs with `scheduler` send a flow to the same backend on every gateway holding the
/// same backends.
pub fn cluster_safe(scheduler: Scheduler) -> bool {
    matches!(scheduler, Scheduler::Maglev | Scheduler::SourceHash)
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawCluster {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) hash_seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) etcd_endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) etcd_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) gateway_name: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawBgp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) local_asn: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) router_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) hold_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) bfd: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) next_hop: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) announce: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) peer: Vec<RawPeer>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) asn: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) port: Option<i64>,
}

pub(super) fn cluster_from_raw(raw: RawCluster, errors: &mut Errors) -> ClusterConfig {
    for (i, url) in raw.etcd_endpoints.iter().enumerate() {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
            errors.add(
                format!("cluster.etcd-endpoints[{i}]"),
                format!("{url:?} is not an http://HOST:PORT URL"),
            );
        }
    }
    let etcd_prefix = raw
        .etcd_prefix
        .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_owned());
    if !etcd_prefix.starts_with('/') || !etcd_prefix.ends_with('/') {
        errors.add(
            "cluster.etcd-prefix",
            format!("{etcd_prefix:?} must start and end with '/'"),
        );
    }
    if let Some(name) = &raw.gateway_name
        && (name.is_empty() || name.contains('/') || name.len() > 64)
    {
        errors.add(
            "cluster.gateway-name",
            format!("{name:?} must be 1 to 64 characters without '/'"),
        );
    }
    ClusterConfig {
        hash_seed: raw
            .hash_seed
            .and_then(|s| errors.int("cluster.hash-seed", s, 0..=i64::from(u32::MAX)))
            .unwrap_or(0),
        etcd_endpoints: raw.etcd_endpoints,
        etcd_prefix,
        gateway_name: raw.gateway_name,
    }
}

fn ip(errors: &mut Errors, path: &str, text: &str) -> Option<IpAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.add(path, format!("{text:?} is not an IP address"));
            None
        }
    }
}

/// `[bgp]`, its announced addresses checked against `vip_addrs` (every `[[vip]]`'s).
pub(super) fn bgp_from_raw(raw: RawBgp, vip_addrs: &[IpAddr], errors: &mut Errors) -> BgpConfig {
    let asn = |errors: &mut Errors, path: &str, value: Option<i64>| match value {
        Some(v) => errors.int(path, v, 1..=i64::from(u32::MAX)).unwrap_or(0),
        None => {
            errors.add(path, "missing");
            0
        }
    };
    let local_asn = asn(errors, "bgp.local-asn", raw.local_asn);
    let router_id = match raw.router_id.as_deref() {
        None => {
            errors.add("bgp.router-id", "missing");
            Ipv4Addr::UNSPECIFIED
        }
        Some(text) => text.parse().unwrap_or_else(|_| {
            errors.add("bgp.router-id", format!("{text:?} is not an IPv4 address"));
            Ipv4Addr::UNSPECIFIED
        }),
    };
    let hold_time = raw
        .hold_time
        .and_then(|h| errors.int("bgp.hold-time", h, 3..=65_535))
        .unwrap_or(DEFAULT_HOLD_TIME);
    let next_hop = match raw.next_hop.as_deref() {
        None | Some("self") => None,
        Some(text) => ip(errors, "bgp.next-hop", text),
    };
    if raw.peer.is_empty() {
        errors.add("bgp.peer", "at least one [[bgp.peer]] is needed");
    }
    let mut peers = Vec::with_capacity(raw.peer.len());
    for (i, p) in raw.peer.into_iter().enumerate() {
        let path = |name: &str| format!("bgp.peer[{i}].{name}");
        let address = match p.address.as_deref() {
            Some(text) => ip(errors, &path("address"), text),
            None => {
                errors.add(path("address"), "missing");
                None
            }
        };
        let asn = asn(errors, &path("asn"), p.asn);
        let port = p
            .port
            .and_then(|port| errors.int(&path("port"), port, 1..=65_535))
            .unwrap_or(179);
        if let Some(address) = address {
            peers.push(BgpPeer { address, asn, port });
        }
    }
    let mut announce = Vec::with_capacity(raw.announce.len());
    for (i, text) in raw.announce.iter().enumerate() {
        let path = format!("bgp.announce[{i}]");
        if let Some(addr) = ip(errors, &path, text) {
            if !vip_addrs.contains(&addr) {
                errors.add(&path, format!("{addr} is the address of no [[vip]]"));
            } else if !announce.contains(&addr) {
                announce.push(addr);
            }
        }
    }
    BgpConfig {
        local_asn,
        router_id,
        peers,
        hold_time,
        bfd: raw.bfd.unwrap_or(false),
        next_hop,
        announce,
    }
}

impl From<ClusterConfig> for RawCluster {
    fn from(c: ClusterConfig) -> Self {
        RawCluster {
            hash_seed: Some(i64::from(c.hash_seed)),
            etcd_prefix: (c.enabled() || c.etcd_prefix != DEFAULT_ETCD_PREFIX)
                .then_some(c.etcd_prefix),
            etcd_endpoints: c.etcd_endpoints,
            gateway_name: c.gateway_name,
        }
    }
}

impl From<BgpConfig> for RawBgp {
    fn from(c: BgpConfig) -> Self {
        RawBgp {
            local_asn: Some(i64::from(c.local_asn)),
            router_id: Some(c.router_id.to_string()),
            hold_time: Some(i64::from(c.hold_time)),
            bfd: Some(c.bfd),
            next_hop: Some(c.next_hop.map_or("self".to_owned(), |a| a.to_string())),
            announce: c.announce.iter().map(ToString::to_string).collect(),
            peer: c
                .peers
                .iter()
                .map(|p| RawPeer {
                    address: Some(p.address.to_string()),
                    asn: Some(i64::from(p.asn)),
                    port: Some(i64::from(p.port)),
                })
                .collect(),
        }
    }
}
