//! Cluster mode's key layout in etcd, and the pure steps between it and a config: the VIPs a
//! set of keys holds ([`vips_from_store`]), and the writes that make the keys hold a desired
//! set of VIPs, guarded by the revisions they were read at ([`diff`]).
//!
//! Under the prefix (`[cluster] etcd-prefix`, `/xdplb/` by default):
//!
//! | key | value |
//! | --- | --- |
//! | `vips/PROTO/ADDR:PORT/config` | the VIP's config, as JSON, without its backends |
//! | `vips/PROTO/ADDR:PORT/backends/ADDR:PORT` | one backend (address, weight, state) |
//! | `vips/changed` | bumped by every write: the revision of the last change |
//! | `gateways/NAME` | a gateway's report (bound to its lease) |
//! | `leaders/PROTO/ADDR:PORT` | the gateway running that VIP's autoscaler (bound to its lease) |
//!
//! One key per backend lets two gateways add backends to a VIP at once without conflict.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    balancer::Vip,
    config::{BackendConfig, VipConfig},
};

/// Where the VIPs live, under the prefix.
pub const VIPS: &str = "vips/";
/// The key every write bumps, under the prefix.
pub const CHANGED: &str = "vips/changed";
/// Gateways' reports, under the prefix.
pub const GATEWAYS: &str = "gateways/";
/// Autoscaler leaders, under the prefix.
pub const LEADERS: &str = "leaders/";

/// A key's value and the revision it was last written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mod_revision: i64,
    pub value: Vec<u8>,
}

/// The keys under `PREFIX/vips/` as read at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreView {
    pub keys: BTreeMap<String, Entry>,
}

impl StoreView {
    /// The revision of the last change it holds: the highest of its keys' (every write bumps
    /// [`CHANGED`], so deletions count too).
    pub fn revision(&self) -> i64 {
        self.keys
            .values()
            .map(|e| e.mod_revision)
            .max()
            .unwrap_or(0)
    }
}

/// `PROTO/ADDR:PORT`: a VIP in keys.
pub fn vip_segment(vip: &Vip) -> String {
    format!(
        "{}/{}",
        vip.proto,
        std::net::SocketAddr::new(vip.addr, vip.port)
    )
}

/// The key of a VIP's config.
pub fn vip_key(prefix: &str, vip: &Vip) -> String {
    format!("{prefix}{VIPS}{}/config", vip_segment(vip))
}

/// The prefix of every key of a VIP.
pub fn vip_prefix(prefix: &str, vip: &Vip) -> String {
    format!("{prefix}{VIPS}{}/", vip_segment(vip))
}

/// The key of a VIP's backend.
pub fn backend_key(prefix: &str, vip: &Vip, backend: std::net::SocketAddr) -> String {
    format!("{prefix}{VIPS}{}/backends/{backend}", vip_segment(vip))
}

/// The key of a VIP's autoscaler leader.
pub fn leader_key(prefix: &str, vip: &Vip) -> String {
    format!("{prefix}{LEADERS}{}", vip_segment(vip))
}

/// The VIP of a leader key's tail (`PROTO/ADDR:PORT`).
pub fn vip_of_segment(segment: &str) -> Option<Vip> {
    let (proto, addr) = segment.split_once('/')?;
    format!("{addr}/{proto}").parse().ok()
}

/// The VIPs the store holds, in key order, with their backends in key order; and what could
/// not be read (one line per key), which is left out.
pub fn vips_from_store(prefix: &str, store: &StoreView) -> (Vec<VipConfig>, Vec<String>) {
    let mut vips: BTreeMap<Vip, VipConfig> = BTreeMap::new();
    let mut backends: Vec<(Vip, String, BackendConfig)> = Vec::new();
    let mut problems = Vec::new();
    for (key, entry) in &store.keys {
        let Some(tail) = key.strip_prefix(prefix).and_then(|k| k.strip_prefix(VIPS)) else {
            continue;
        };
        let parts: Vec<&str> = tail.split('/').collect();
        let vip = |proto: &str, addr: &str| vip_of_segment(&format!("{proto}/{addr}"));
        match parts.as_slice() {
            [proto, addr, "config"] => {
                match (
                    vip(proto, addr),
                    serde_json::from_slice::<VipConfig>(&entry.value),
                ) {
                    (Some(v), Ok(mut config)) if config.vip() == v => {
                        config.backends.clear();
                        vips.insert(v, config);
                    }
                    (_, Err(err)) => problems.push(format!("{key}: {err}")),
                    _ => problems.push(format!("{key}: not the VIP its key names")),
                }
            }
            [proto, addr, "backends", backend] => {
                match (
                    vip(proto, addr),
                    serde_json::from_slice::<BackendConfig>(&entry.value),
                ) {
                    (Some(v), Ok(b)) if b.address.to_string() == *backend => {
                        backends.push((v, key.clone(), b));
                    }
                    (_, Err(err)) => problems.push(format!("{key}: {err}")),
                    _ => problems.push(format!("{key}: not the backend its key names")),
                }
            }
            ["changed"] => {}
            _ => problems.push(format!("{key}: not a key of the layout")),
        }
    }
    for (vip, key, backend) in backends {
        match vips.get_mut(&vip) {
            Some(config) => config.backends.push(backend),
            None => problems.push(format!("{key}: a backend of no VIP")),
        }
    }
    (vips.into_values().collect(), problems)
}

/// What a key must be for a write to go through.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expect {
    /// Absent.
    Absent,
    /// Last written at this revision.
    ModRevision(i64),
}

/// One write, and what it assumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes `value` at `key`.
    Put { key: String, value: Vec<u8> },
    /// Deletes `key`.
    Delete { key: String },
    /// Deletes every key under `prefix`.
    DeletePrefix { prefix: String },
}

/// The writes of one change and the revisions they assume (every key read: none changed
/// since means no one else's write is lost).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub ops: Vec<Op>,
    pub expect: BTreeMap<String, Expect>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What the writes may touch.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Every VIP: those missing from the desired list are deleted.
    All,
    /// The backends of these VIPs only (an autoscaler's pool).
    Backends(BTreeSet<Vip>),
}

/// The writes that make `store` hold `desired` (within `scope`), each key guarded by the
/// revision it was read at, and the VIP of each backend write guarded too (a VIP deleted
/// meanwhile takes its backends along, and a backend written then would be orphaned).
pub fn diff(prefix: &str, store: &StoreView, desired: &[VipConfig], scope: &Scope) -> Writes {
    let mut writes = Writes::default();
    let expect_of = |key: &str| {
        store
            .keys
            .get(key)
            .map_or(Expect::Absent, |e| Expect::ModRevision(e.mod_revision))
    };
    let (current, _) = vips_from_store(prefix, store);
    let current: BTreeMap<Vip, &VipConfig> = current.iter().map(|v| (v.vip(), v)).collect();
    let in_scope = |vip: &Vip| match scope {
        Scope::All => true,
        Scope::Backends(vips) => vips.contains(vip),
    };
    let put = |writes: &mut Writes, key: String, value: Vec<u8>| {
        if store.keys.get(&key).is_none_or(|e| e.value != value) {
            writes.expect.insert(key.clone(), expect_of(&key));
            writes.ops.push(Op::Put { key, value });
        }
    };
    for vip_config in desired.iter().filter(|v| in_scope(&v.vip())) {
        let vip = vip_config.vip();
        let vip_key = vip_key(prefix, &vip);
        if matches!(scope, Scope::All) {
            let mut bare = vip_config.clone();
            bare.backends.clear();
            put(&mut writes, vip_key.clone(), to_json(&bare));
        } else if !current.contains_key(&vip) {
            continue;
        }
        let before = writes.ops.len();
        let old: Vec<std::net::SocketAddr> = current
            .get(&vip)
            .map(|c| c.backends.iter().map(|b| b.address).collect())
            .unwrap_or_default();
        for backend in &vip_config.backends {
            put(
                &mut writes,
                backend_key(prefix, &vip, backend.address),
                to_json(backend),
            );
        }
        for addr in old
            .iter()
            .filter(|a| !vip_config.backends.iter().any(|b| b.address == **a))
        {
            let key = backend_key(prefix, &vip, *addr);
            writes.expect.insert(key.clone(), expect_of(&key));
            writes.ops.push(Op::Delete { key });
        }
        if writes.ops.len() > before {
            writes.expect.insert(vip_key.clone(), expect_of(&vip_key));
        }
    }
    if matches!(scope, Scope::All) {
        for vip in current.keys() {
            if !desired.iter().any(|v| v.vip() == *vip) {
                let key = vip_key(prefix, vip);
                writes.expect.insert(key.clone(), expect_of(&key));
                // Backends written meanwhile go too: the VIP is gone.
                writes.ops.push(Op::DeletePrefix {
                    prefix: vip_prefix(prefix, vip),
                });
            }
        }
    }
    writes
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("configs serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const P: &str = "/xdplb/";

    fn vips(text: &str) -> Vec<VipConfig> {
        Config::parse(text).unwrap().vips
    }

    /// `store` after `writes`, each written at the next revision, if their expectations
    /// hold (as an etcd transaction would).
    fn commit(store: &StoreView, writes: &Writes) -> Option<StoreView> {
        for (key, expect) in &writes.expect {
            let now = store.keys.get(key).map(|e| e.mod_revision);
            let ok = match expect {
                Expect::Absent => now.is_none(),
                Expect::ModRevision(r) => now == Some(*r),
            };
            if !ok {
                return None;
            }
        }
        let mut next = store.clone();
        let revision = store.revision() + 1;
        for op in &writes.ops {
            match op {
                Op::Put { key, value } => {
                    next.keys.insert(
                        key.clone(),
                        Entry {
                            mod_revision: revision,
                            value: value.clone(),
                        },
                    );
                }
                Op::Delete { key } => {
                    next.keys.remove(key);
                }
                Op::DeletePrefix { prefix } => next.keys.retain(|k, _| !k.starts_with(prefix)),
            }
        }
        next.keys.insert(
            format!("{P}{CHANGED}"),
            Entry {
                mod_revision: revision,
                value: Vec::new(),
            },
        );
        Some(next)
    }

    const TWO: &str = r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[[vip.backend]]
address = "10.0.1.2:8080"
[[vip.backend]]
address = "10.0.2.2:8080"
weight = 3
state = "draining"
[[vip]]
address = "[fd00::1]:53"
protocol = "udp"
scheduler = "source-hash"
"#;

    #[test]
    fn a_config_written_reads_back_the_same() {
        let desired = vips(TWO);
        let writes = diff(P, &StoreView::default(), &desired, &Scope::All);
        assert!(
            writes.expect.values().all(|e| *e == Expect::Absent),
            "{writes:?}"
        );
        let store = commit(&StoreView::default(), &writes).unwrap();
        let (back, problems) = vips_from_store(P, &store);
        assert!(problems.is_empty(), "{problems:?}");
        let sorted = |mut v: Vec<VipConfig>| {
            v.sort_by_key(VipConfig::vip);
            v
        };
        assert_eq!(sorted(back), sorted(desired.clone()));
        assert!(diff(P, &store, &desired, &Scope::All).is_empty());
        assert!(
            store
                .keys
                .contains_key("/xdplb/vips/udp/[fd00::1]:53/config")
        );
        assert!(
            store
                .keys
                .contains_key("/xdplb/vips/tcp/198.19.0.1:80/backends/10.0.2.2:8080")
        );
    }

    #[test]
    fn concurrent_backend_adds_both_go_through_and_a_stale_change_does_not() {
        let store = commit(
            &StoreView::default(),
            &diff(P, &StoreView::default(), &vips(TWO), &Scope::All),
        )
        .unwrap();
        let with = |extra: &str| {
            let mut v = vips(TWO);
            v[0].backends.push(BackendConfig {
                address: extra.parse().unwrap(),
                weight: 1,
                state: Default::default(),
            });
            v
        };
        // Two gateways read the same store and add different backends.
        let a = diff(P, &store, &with("10.0.3.2:8080"), &Scope::All);
        let b = diff(P, &store, &with("10.0.4.2:8080"), &Scope::All);
        let after_a = commit(&store, &a).unwrap();
        let after_b = commit(&after_a, &b).expect("a different backend does not conflict");
        let (v, _) = vips_from_store(P, &after_b);
        assert_eq!(
            v.iter()
                .find(|v| v.address.port() == 80)
                .unwrap()
                .backends
                .len(),
            4
        );
        // A weight change read before another's weight change of the same backend conflicts.
        let mut w1 = vips(TWO);
        w1[0].backends[0].weight = 5;
        let mut w2 = vips(TWO);
        w2[0].backends[0].weight = 7;
        let first = commit(&store, &diff(P, &store, &w1, &Scope::All)).unwrap();
        assert!(commit(&first, &diff(P, &store, &w2, &Scope::All)).is_none());
        // Deleting the VIP meanwhile makes a backend add conflict (no orphan).
        let gone = commit(&store, &diff(P, &store, &vips(TWO)[1..], &Scope::All)).unwrap();
        assert!(gone.keys.keys().all(|k| !k.contains(":80/")), "{gone:?}");
        assert!(commit(&gone, &a).is_none());
    }

    #[test]
    fn an_autoscaler_writes_only_its_vips_backends() {
        let store = commit(
            &StoreView::default(),
            &diff(P, &StoreView::default(), &vips(TWO), &Scope::All),
        )
        .unwrap();
        let mut desired = vips(TWO);
        desired[0].backends.remove(0);
        desired[0].ring_size = 13;
        desired.remove(1);
        let vip = desired[0].vip();
        let writes = diff(P, &store, &desired, &Scope::Backends([vip].into()));
        assert_eq!(
            writes.ops,
            vec![Op::Delete {
                key: "/xdplb/vips/tcp/198.19.0.1:80/backends/10.0.1.2:8080".into()
            }]
        );
        assert!(
            writes
                .expect
                .contains_key("/xdplb/vips/tcp/198.19.0.1:80/config")
        );
        assert!(diff(P, &store, &desired, &Scope::Backends(BTreeSet::new())).is_empty());
    }

    #[test]
    fn keys_outside_the_layout_are_reported_and_left_out() {
        let mut store = StoreView::default();
        for (key, value) in [
            ("/xdplb/vips/tcp/198.19.0.1:80/config", "nonsense"),
            (
                "/xdplb/vips/tcp/198.19.0.9:80/backends/10.0.1.2:8080",
                r#"{"address":"10.0.1.2:8080"}"#,
            ),
            ("/xdplb/vips/what", "x"),
        ] {
            store.keys.insert(
                key.into(),
                Entry {
                    mod_revision: 1,
                    value: value.into(),
                },
            );
        }
        let (v, problems) = vips_from_store(P, &store);
        assert!(v.is_empty());
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
