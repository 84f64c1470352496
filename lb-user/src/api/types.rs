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
