//! What the API takes and gives: request bodies and answers, shared with the CLI, which sends
//! and reads them.

use serde::{Deserialize, Serialize};

use crate::agent::VipView;

/// The global counters and every VIP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsView {
    pub counters: Vec<(String, u64)>,
    /// The connection tables' events (`lb_common::counters::Event`), by name.
    #[serde(default)]
    pub events: Vec<(String, u64)>,
    /// How full the connection tables were at the agent's last count: `conntrack_entries`,
    /// `conntrack_capacity`, `embryonic_entries`, `embryonic_live`, `embryonic_capacity`.
    #[serde(default)]
    pub tables: Vec<(String, u64)>,
    pub vips: Vec<VipView>,
}

/// What `/v1/status` says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub version: String,
    pub pin_dir: String,
    pub interfaces: Vec<String>,
    pub uptime_secs: u64,
    pub vips: usize,
    pub backends: usize,
    /// Cluster mode: whether the store answers, the revision applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::agent::cluster::StoreStatus>,
    /// The BGP announcements (with `[bgp]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<crate::cluster::bgp::BgpStatus>,
}

/// `POST /v1/interfaces`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachIface {
    pub name: String,
    /// `auto` (default), `native` or `skb`.
    pub xdp_mode: Option<String>,
}

/// `POST /v1/vips`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddVip {
    /// `ADDR:PORT/PROTO`.
    pub vip: String,
    pub scheduler: Option<String>,
    pub ring_size: Option<u32>,
    /// Source prefixes let in (`ADDR/LEN`); if any, only those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Source prefixes dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// New flows a second per source prefix; 0 or none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_rate_limit: Option<u32>,
    /// The limit's source prefix length (default 32 for IPv4, 64 for IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix_len: Option<u8>,
    /// `nat` (default), `dsr-l2` or `ipip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<String>,
}

/// `PATCH /v1/vips/...`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVip {
    pub scheduler: Option<String>,
    pub ring_size: Option<u32>,
    /// Replaces the allow list (`[]` empties it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Replaces the deny list (`[]` empties it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
    /// 0 removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_rate_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix_len: Option<u8>,
    /// `nat`, `dsr-l2` or `ipip`: tracked flows follow the new mode from their next packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<String>,
}

/// `POST /v1/vips/.../backends`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBackend {
    pub address: String,
    pub weight: Option<u32>,
    pub state: Option<String>,
}

/// `PATCH /v1/vips/.../backends/...`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBackend {
    pub weight: Option<u32>,
    pub state: Option<String>,
}

/// `POST /v1/stop`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// Also detach the program and unpin everything.
    pub detach: bool,
}

/// What `POST /v1/apply` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApplyView {
    /// One line per change (`+ vip ...`, `~ backend ...`), empty if none.
    pub plan: Vec<String>,
    pub applied: bool,
}
