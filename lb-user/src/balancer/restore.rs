//! Taking over maps that a previous agent wrote, or a fresh program, from a saved snapshot: the
//! maps are brought to exactly what the balancer holds.

use lb_common::maps::{BACKEND_UNUSED, Backend, Settings, VipAddrKey, VipKey, backend_index};

use super::{
    Balancer, Error, Snapshot, Vip, acl_of, build_tables, check_backend, check_backend_forwarding,
    check_vip, meta, source_limit,
};
use crate::{maps::Maps, regions::Region};

impl<M: Maps> Balancer<M> {
    /// A balancer over maps that hold `snapshot`, or a part of it, or nothing at all: a
    /// restarted agent adopting the maps of the previous one, or a saved state restored onto a
    /// fresh program. Ids and table regions are taken over as they are, and the maps are then
    /// brought to exactly the snapshot ([`Balancer::reconcile`]).
    pub fn restore(
        maps: M,
        slots: u32,
        settings: Settings,
        snapshot: Snapshot,
    ) -> Result<Self, Error> {
        let mut balancer = Self::new(maps, slots, settings)?;
        for (vip, state) in snapshot.vips {
            check_vip(&vip, &state.options)?;
            if !balancer.state.vip_ids.contains(&state.id) {
                return Err(Error::BadSnapshot(format!(
                    "VIP id {} used twice",
                    state.id
                )));
            }
            balancer.state.vip_ids.retain(|&id| id != state.id);
            for region in [state.table, state.list].into_iter().flatten() {
                if !balancer.state.regions.reserve(region) {
                    return Err(Error::BadSnapshot(format!(
                        "table region {region:?} of {vip} overlaps another"
                    )));
                }
            }
            for b in &state.backends {
                check_backend(&vip, &b.spec)?;
                check_backend_forwarding(&vip, state.options.forwarding, b.spec.addr)?;
                if !balancer.state.backend_ids.reserve(b.id) {
                    return Err(Error::BadSnapshot(format!(
                        "backend id {:#x} used twice",
                        b.id
                    )));
                }
            }
            balancer.state.vips.insert(vip, state);
        }
        balancer.reconcile()?;
        Ok(balancer)
    }

    /// Writes the maps to hold exactly what the balancer holds: every backend, table, VIP and
    /// filter word is written again, and the VIPs, VIP addresses and backends it does not hold
    /// are removed (left by a change that was interrupted before it was saved). Idempotent, and
    /// in an order that keeps the flows of what it holds going: backends, tables, filter and
    /// VIPs first, removals last.
    pub fn reconcile(&mut self) -> Result<(), Error> {
        let names: Vec<Vip> = self.state.vips.keys().copied().collect();
        for vip in &names {
            let state = self.state.vips[vip].clone();
            for (key, verdict) in acl_of(vip, state.id, &state.options) {
                self.maps.set_acl(&key, Some(verdict))?;
            }
            self.maps
                .set_source_limit(state.id, &source_limit(vip, &state.options))?;
            for b in &state.backends {
                let entry = self.backend_entry(b, state.id, &state.options);
                self.maps.set_backend(backend_index(b.id), &entry)?;
            }
            let (table, list) = build_tables(&state.options, &state.backends)?;
            let table = self.rewrite_region(vip, state.table, &table)?;
            let list = self.rewrite_region(vip, state.list, &list)?;
            let state = self.state.vips.get_mut(vip).expect("listed above");
            (state.table, state.list) = (table, list);
        }
        self.state.filter = None;
        self.publish_filter(&[])?;
        self.state.replies = None;
        self.publish_replies()?;
        let locals: std::collections::HashSet<_> = self
            .state
            .locals
            .iter()
            .map(|a| super::local_key(*a))
            .collect();
        for key in &locals {
            self.maps.set_local_addr(key, true)?;
        }
        for key in self.maps.local_addrs()? {
            if !locals.contains(&key) {
                self.maps.set_local_addr(&key, false)?;
            }
        }
        let mut counts: std::collections::HashMap<VipAddrKey, u32> =
            std::collections::HashMap::new();
        for (vip, state) in &self.state.vips {
            self.maps.set_vip(&vip.key(), &meta(state))?;
            *counts.entry(vip.addr_key()).or_default() += 1;
        }
        for (key, count) in &counts {
            self.maps.set_vip_addr(key, *count)?;
        }
        let keys: std::collections::HashSet<VipKey> =
            self.state.vips.keys().map(Vip::key).collect();
        for key in self.maps.vip_keys()? {
            if !keys.contains(&key) {
                self.maps.remove_vip(&key)?;
            }
        }
        for key in self.maps.vip_addr_keys()? {
            if !counts.contains_key(&key) {
                self.maps.set_vip_addr(&key, 0)?;
            }
        }
        let acl: std::collections::BTreeSet<_> = self
            .state
            .vips
            .iter()
            .flat_map(|(vip, state)| acl_of(vip, state.id, &state.options).into_keys())
            .collect();
        for key in self.maps.acl_keys()? {
            if !acl.contains(&key) {
                self.maps.set_acl(&key, None)?;
            }
        }
        let used: std::collections::HashSet<u32> = self
            .state
            .vips
            .values()
            .flat_map(|s| s.backends.iter().map(|b| backend_index(b.id)))
            .collect();
        let unused = Backend {
            state: BACKEND_UNUSED,
            ..Backend::default()
        };
        for index in self.maps.used_backends()? {
            if !used.contains(&index) {
                self.maps.set_backend(index, &unused)?;
            }
        }
        Ok(())
    }

    /// Writes `ids` into `region` again, or into a new region if their lengths differ (tables
    /// built by another version of the agent).
    fn rewrite_region(
        &mut self,
        vip: &Vip,
        region: Option<Region>,
        ids: &[u32],
    ) -> Result<Option<Region>, Error> {
        match region {
            Some(region) if region.len as usize == ids.len() => {
                self.maps.write_slots(region.off, ids)?;
                Ok(Some(region))
            }
            old => {
                if old.is_some() {
                    log::info!("{vip}: its table changed size; written to a new region");
                }
                let new = self.write_region(ids, None)?;
                if let Some(old) = old {
                    self.state.regions.free(old);
                }
                Ok(new)
            }
        }
    }
}
