//! What the API takes and gives: request bodies and answers, shared with the CLI, which sends
//! and reads them.

use serde::{Deserialize, Serialize};

use crate::agent::VipView;

/// The global counters and every VIP. The named numbers are JSON objects
/// (`{"forwarded": 12, ...}`) in the order the data path declares them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsView {
    #[serde(with = "named_numbers")]
    pub counters: Vec<(String, u64)>,
    /// The connection tables' events (`lb_common::counters::Event`), by name.
    #[serde(default, with = "named_numbers")]
    pub events: Vec<(String, u64)>,
    /// How full the connection tables were at the agent's last count: `conntrack_entries`,
    /// `conntrack_capacity`, `embryonic_entries`, `embryonic_live`, `embryonic_capacity`.
    #[serde(default, with = "named_numbers")]
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
    /// Each interface's XDP mode as the kernel reports it.
    #[serde(default)]
    pub xdp: Vec<IfaceXdp>,
    /// The loaded program.
    #[serde(default)]
    pub program: ProgramStatus,
    /// The connection tables' fill at the last count, and their capacity.
    #[serde(default)]
    pub tables: TablesStatus,
    /// How the agent was started: program origin, files, endpoints.
    #[serde(default)]
    pub about: crate::agent::About,
    /// The state file.
    #[serde(default)]
    pub state_file: String,
    /// Backends by admin state and by health.
    #[serde(default)]
    pub health: HealthSummary,
}

/// An interface and the XDP mode its program runs in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IfaceXdp {
    pub name: String,
    /// `native`, `generic`, `offload`, `multiple`, `none`, or why it is not known.
    pub mode: String,
}

/// The program the agent runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgramStatus {
    /// The kernel's tag of the program (as `bpftool prog` shows it).
    pub tag: Option<String>,
    /// The pin layout version of the pinned maps.
    pub layout: u32,
    /// The fingerprint of the pinned program's object.
    pub object: Option<String>,
    /// `loaded`, `adopted` or `replaced` (see [`crate::agent::About`]).
    pub origin: String,
}

/// The connection tables at the last count.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TablesStatus {
    pub conntrack_entries: u64,
    pub conntrack_capacity: u64,
    pub embryonic_entries: u64,
    pub embryonic_capacity: u64,
}

/// Backends by admin state (as operators set it) and by their last health check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthSummary {
    pub up: usize,
    pub draining: usize,
    pub down: usize,
    /// Whose last check passed.
    pub healthy: usize,
    /// Whose last check failed.
    pub failing: usize,
    /// Of VIPs without a health check.
    pub unchecked: usize,
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
    /// Where the health checks go: `direct` (default) or `vip` (`dsr-l2` and `ipip` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
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
    /// Where the health checks go: `direct` or `vip` (`dsr-l2` and `ipip` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// The health check, shaped as the config's `[vip.health]` (`{"kind": "http",
    /// "http-path": "/healthz"}`): the fields given replace the VIP's; a new kind drops the
    /// old kind's own fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::config::HealthSettings>,
    /// Replaces the `notify-up` command (program and arguments; `[]` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_up: Option<Vec<String>>,
    /// Replaces the `notify-down` command (`[]` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_down: Option<Vec<String>>,
    /// The `sorry` backend, `ADDR:PORT`; `null` removes it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub sorry: Option<Option<String>>,
}

/// A field that may be given as `null`: `Some(None)`, told apart from a field left out
/// (`None`, by `#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
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

/// Name-number pairs as a JSON object, keeping their order both ways.
mod named_numbers {
    use std::fmt;

    use serde::{
        Deserializer, Serializer,
        de::{MapAccess, Visitor},
    };

    pub fn serialize<S: Serializer>(pairs: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(pairs.iter().map(|(name, n)| (name, n)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, u64)>, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Vec<(String, u64)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of counters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(pairs)
            }
        }
        d.deserialize_map(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::StatsView;

    #[test]
    fn stats_counters_are_an_object_in_their_order() {
        let stats = StatsView {
            counters: vec![("forwarded".into(), 12), ("dropped".into(), 0)],
            events: vec![],
            tables: vec![("conntrack_entries".into(), 3)],
            vips: vec![],
        };
        let json = serde_json::to_string(&stats).expect("serializes");
        assert!(
            json.starts_with(r#"{"counters":{"forwarded":12,"dropped":0},"events":{},"tables":{"conntrack_entries":3}"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<StatsView>(&json).expect("parses"),
            stats
        );
    }
}

/// What `POST /v1/stats/zero` answers: what it set to zero, and what it kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ZeroView {
    pub zeroed: Vec<String>,
    pub kept: Vec<String>,
}
