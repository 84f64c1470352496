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
    /// The health check, shaped as the config's `[vip.health]` (`{"kind": "http",
    /// "http-path": "/healthz"}`): the fields given replace the VIP's; a new kind drops the
    /// old kind's own fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::config::HealthSettings>,
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
