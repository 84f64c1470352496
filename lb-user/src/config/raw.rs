//! The config file's shape: what TOML and serde check (syntax, keys, value types), and the
//! way back from a [`super::Config`] to it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;

/// The file as written: strings and integers, checked by the semantic pass.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) conntrack: Option<RawConntrack>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ipip: Option<RawIpip>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cluster: Option<cluster::RawCluster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) bgp: Option<cluster::RawBgp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) vip: Vec<RawVip>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawIpip {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) source_v4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) source_v6: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConntrack {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) capacity: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) embryonic_capacity: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) new_flow_rate_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tcp_syn_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tcp_established_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tcp_fin_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tcp_rst_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) udp_timeout: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawVip {
    pub(super) address: String,
    pub(super) protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ring_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) deny: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) source_rate_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) source_prefix_len: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) forwarding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) health: Option<RawHealth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) backend: Vec<RawBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) autoscale: Option<autoscale::RawAutoscale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) sorry: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) notify_up: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) notify_down: Vec<String>,
}

/// `[vip.health]` as the file (or the API's `health` object) gives it, before validation.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_expect_status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_expect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawBackend {
    pub(super) address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) state: Option<String>,
}

// --- Back to the file's shape --------------------------------------------------------------

impl From<Config> for RawConfig {
    fn from(config: Config) -> Self {
        RawConfig {
            conntrack: (config.conntrack != ConntrackConfig::default())
                .then(|| config.conntrack.into()),
            ipip: (config.ipip != IpipConfig::default()).then(|| RawIpip {
                source_v4: config.ipip.source_v4.map(|p| p.to_string()),
                source_v6: config.ipip.source_v6.map(|p| p.to_string()),
            }),
            cluster: config.cluster.map(Into::into),
            bgp: config.bgp.map(Into::into),
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
pub(super) fn raw_conntrack(config: ConntrackConfig, full: bool) -> RawConntrack {
    let default = ConntrackConfig::default();
    let duration =
        |d: Duration, default: Duration| (full || d != default).then(|| format_duration(d));
    RawConntrack {
        capacity: (full || config.capacity != default.capacity).then_some(config.capacity.into()),
        embryonic_capacity: config.embryonic_capacity.map(i64::from),
        new_flow_rate_limit: config.new_flow_rate_limit.map(i64::from),
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
            allow: config.allow.iter().map(ToString::to_string).collect(),
            deny: config.deny.iter().map(ToString::to_string).collect(),
            source_rate_limit: (config.source_rate_limit != 0)
                .then_some(config.source_rate_limit.into()),
            source_prefix_len: config.source_prefix_len.map(Into::into),
            forwarding: (config.forwarding != Forwarding::Nat)
                .then(|| config.forwarding.name().to_owned()),
            health: (config.health != HealthCheck::default()).then(|| raw_health(config.health)),
            backend: config.backends.into_iter().map(RawBackend::from).collect(),
            autoscale: config.autoscale.map(Into::into),
            notify_up: config.notify_up,
            notify_down: config.notify_down,
            sorry: config.sorry.map(|a| a.to_string()),
        }
    }
}

pub(super) fn raw_health(check: HealthCheck) -> RawHealth {
    raw_health_with(check, false)
}

/// The `[vip.health]` table; with `full`, defaults are written out too.
pub(super) fn raw_health_with(check: HealthCheck, full: bool) -> RawHealth {
    let default = HealthCheck::default();
    let mut raw = RawHealth {
        kind: Some(check.kind.name().to_owned()),
        interval: (full || check.interval != default.interval)
            .then(|| format_duration(check.interval)),
        timeout: (full || check.timeout != default.timeout).then(|| format_duration(check.timeout)),
        rise: (full || check.rise != default.rise).then_some(check.rise.into()),
        fall: (full || check.fall != default.fall).then_some(check.fall.into()),
        port: check.port.map(i64::from),
        path: (full || check.path != default.path).then(|| check.path.name().to_owned()),
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
        CheckKind::Exec { argv } => raw.exec_command = Some(argv),
        CheckKind::Https {
            method,
            path,
            expect_status,
            insecure,
            server_name,
        } => {
            raw.http_method = Some(method);
            raw.http_path = Some(path);
            raw.http_expect_status = Some(expect_status.into());
            raw.insecure = Some(insecure);
            raw.tls_server_name = server_name;
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
