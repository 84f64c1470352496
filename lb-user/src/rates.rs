//! Rates from two readings of the counters (`xdplb stats --watch`, `xdplb top`): packets,
//! bits and new flows a second per VIP and backend. A counter that went down (zeroed with
//! `stats --zero`, or a VIP removed and added again) counts as no traffic, not a negative rate.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::api::{BackendView, VipView};

/// Traffic a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub packets_per_sec: f64,
    pub bits_per_sec: f64,
    pub new_flows_per_sec: f64,
}

/// A backend's rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRate {
    pub address: SocketAddr,
    #[serde(flatten)]
    pub rate: Rate,
}

/// A VIP's rates and its backends'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipRate {
    pub vip: String,
    #[serde(flatten)]
    pub rate: Rate,
    pub backends: Vec<BackendRate>,
}

/// The rate of counters that went from `before` to `now` (packets, bytes, new flows) in
/// `secs` seconds; zero for a counter that went down, or over no time.
pub fn rate(before: (u64, u64, u64), now: (u64, u64, u64), secs: f64) -> Rate {
    if secs <= 0.0 {
        return Rate::default();
    }
    let per_sec = |b: u64, n: u64| n.saturating_sub(b) as f64 / secs;
    Rate {
        packets_per_sec: per_sec(before.0, now.0),
        bits_per_sec: per_sec(before.1, now.1) * 8.0,
        new_flows_per_sec: per_sec(before.2, now.2),
    }
}

fn counts_vip(v: &VipView) -> (u64, u64, u64) {
    (v.packets, v.bytes, v.new_flows)
}

fn counts_backend(b: &BackendView) -> (u64, u64, u64) {
    (b.packets, b.bytes, b.new_flows)
}

/// The rates of every VIP of `now` and its backends, against `before` (read `secs` seconds
/// earlier). A VIP or backend new since counts from zero.
pub fn vip_rates(before: &[VipView], now: &[VipView], secs: f64) -> Vec<VipRate> {
    now.iter()
        .map(|v| {
            let old = before.iter().find(|o| o.vip == v.vip);
            let backends = v
                .backends
                .iter()
                .map(|b| {
                    let old_b = old
                        .and_then(|o| o.backends.iter().find(|ob| ob.address == b.address))
                        .map_or((0, 0, 0), counts_backend);
                    BackendRate {
                        address: b.address,
                        rate: rate(old_b, counts_backend(b), secs),
                    }
                })
                .collect();
            VipRate {
                vip: v.vip.clone(),
                rate: rate(old.map_or((0, 0, 0), counts_vip), counts_vip(v), secs),
                backends,
            }
        })
        .collect()
}

/// `n` with an SI prefix (`1.5k`, `12.0M`), for rates in tables.
pub fn si(n: f64) -> String {
    const PREFIXES: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, prefix) in PREFIXES {
        if n.abs() >= scale {
            return format!("{:.1}{prefix}", n / scale);
        }
    }
    format!("{n:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_time_and_never_negative() {
        let r = rate((100, 1000, 10), (300, 3000, 30), 0.5);
        assert_eq!(r.packets_per_sec, 400.0);
        assert_eq!(r.bits_per_sec, 32_000.0);
        assert_eq!(r.new_flows_per_sec, 40.0);
        // Zeroed in between: no negative rate.
        assert_eq!(rate((100, 1000, 10), (5, 50, 1), 1.0), Rate::default());
        assert_eq!(rate((1, 1, 1), (2, 2, 2), 0.0), Rate::default());
    }

    #[test]
    fn si_prefixes() {
        assert_eq!(si(12.0), "12.0");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(2_500_000.0), "2.5M");
        assert_eq!(si(3e9), "3.0G");
    }
}
