//! Reply translations without per-flow state: which backend address:port belongs to which VIP
//! (`lb_common::maps::BACKEND_VIPS_MAP`), and which backends' flows therefore record no
//! reverse entry (`BACKEND_FLAG_STATELESS_REPLY`). See `lb_common::maps::ReverseNat` for how
//! the data path uses them.
//!
//! A backend address:port gets an entry when a VIP with a port uses it. It is *shared* when
//! anything else could also send replies from it: another VIP, a wildcard-port VIP with the
//! same backend port, or a wildcard-port VIP whose backend keeps the client's port. The entry
//! of a shared backend names its *owner*, the VIP whose flows opened before the sharing began
//! record no reverse entry; so the owner of an entry stays the owner while it uses the backend.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::maps::{BackendKey, REPLY_SHARED, ReverseNat};

use super::{Vip, VipState};
use crate::model::{addr16, family};

/// The entries that `vips` call for, and the ids of the backends whose flows need no reverse
/// entry. `written` is what the map held before: its owners are kept while they still use
/// their backend.
pub(super) fn plan(
    vips: &BTreeMap<Vip, VipState>,
    written: &BTreeMap<BackendKey, ReverseNat>,
) -> (BTreeMap<BackendKey, ReverseNat>, BTreeSet<u32>) {
    struct User {
        vip: Vip,
        vip_id: u32,
        backend_id: u32,
    }
    // Users that may own the entry (VIPs with a port), users that may not (wildcard-port VIPs
    // with a backend port), and addresses whose every port a wildcard VIP's backend may use.
    let mut owners: BTreeMap<BackendKey, Vec<User>> = BTreeMap::new();
    let mut others: BTreeSet<BackendKey> = BTreeSet::new();
    let mut any_port: BTreeSet<([u8; 16], u8, u8)> = BTreeSet::new();
    for (vip, state) in vips {
        let proto = vip.proto.number();
        for b in &state.backends {
            let ip = b.spec.addr.ip();
            let key = |port: u16| BackendKey {
                addr: addr16(ip),
                port: port.to_be_bytes(),
                proto,
                family: family(ip),
            };
            match (vip.port, b.spec.addr.port()) {
                (0, 0) => {
                    any_port.insert((addr16(ip), proto, family(ip)));
                }
                (0, port) => {
                    others.insert(key(port));
                }
                (vip_port, port) => {
                    let port = if port == 0 { vip_port } else { port };
                    owners.entry(key(port)).or_default().push(User {
                        vip: *vip,
                        vip_id: state.id,
                        backend_id: b.id,
                    });
                }
            }
        }
    }
    let mut entries = BTreeMap::new();
    let mut stateless = BTreeSet::new();
    for (key, users) in owners {
        let shared = users.len() > 1
            || others.contains(&key)
            || any_port.contains(&(key.addr, key.proto, key.family));
        let names = |u: &&User, e: &ReverseNat| {
            u.vip_id == e.vip_id
                && addr16(u.vip.addr) == e.vip_addr
                && u.vip.port.to_be_bytes() == e.vip_port
        };
        let owner = written
            .get(&key)
            .and_then(|e| users.iter().find(|u| names(u, e)))
            .or_else(|| users.iter().min_by_key(|u| u.vip_id))
            .expect("every key has a user");
        entries.insert(
            key,
            ReverseNat {
                vip_addr: addr16(owner.vip.addr),
                vip_port: owner.vip.port.to_be_bytes(),
                flags: if shared { REPLY_SHARED } else { 0 },
                _pad: 0,
                vip_id: owner.vip_id,
                backend_id: owner.backend_id,
            },
        );
        if !shared {
            stateless.insert(owner.backend_id);
        }
    }
    (entries, stateless)
}
