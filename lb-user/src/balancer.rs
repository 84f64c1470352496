//! The balancer's desired state and the one place that turns it into map contents: VIPs,
//! their backends (with weights and states), id allocation, and each VIP's scheduling tables.
//!
//! Every change is validated first and refused whole with an [`Error`] naming what is wrong;
//! nothing is written for a refused change. A VIP's tables are rebuilt on every backend change,
//! written into fresh regions of the slots array and switched to in one map update.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    conntrack::Timeouts,
    filter::{FILTER_MAP_WORDS, FilterKind, filter_slot},
    maglev::{self, MaglevBackend},
    maps::{
        BACKEND_UNUSED, Backend, BackendLoad, MAX_BACKENDS, MAX_VIPS, Settings, Stats, VipAddrKey,
        VipKey, VipMeta, backend_index,
    },
    sched::smooth_wrr_sequence,
};

pub use crate::model::{
    BackendSpec, BackendState, Error, Proto, Scheduler, Vip, VipOptions, check_backend, check_vip,
};
use crate::{
    maps::{Maps, Staged},
    model::{addr16, family},
    regions::{Region, Regions},
};

/// Longest weighted round-robin cycle; larger weight sums are scaled down to fit.
pub const MAX_WRR_CYCLE: usize = 65_536;

/// A backend of a VIP, with the id the data path knows it by.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendInfo {
    pub spec: BackendSpec,
    pub id: u32,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct VipState {
    id: u32,
    options: VipOptions,
    backends: Vec<BackendInfo>,
    table: Option<Region>,
    list: Option<Region>,
}

/// A VIP as shown to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipInfo {
    pub vip: Vip,
    pub id: u32,
    pub options: VipOptions,
    pub backends: Vec<BackendInfo>,
}

/// Allocates backend ids: slot index in the low bits, a generation above that changes on every
/// reuse of the slot; freed slots are reused last-in-last-out (FIFO) to make reuse rare.
#[derive(Debug, Clone)]
struct BackendIds {
    free: VecDeque<u32>,
    generation: Vec<u16>,
}

impl BackendIds {
    fn new() -> Self {
        Self {
            free: (0..MAX_BACKENDS).collect(),
            generation: vec![0; MAX_BACKENDS as usize],
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        let index = self.free.pop_front()?;
        let generation = &mut self.generation[index as usize];
        *generation = generation.wrapping_add(1);
        Some(u32::from(*generation) << 16 | index)
    }

    fn free(&mut self, id: u32) {
        self.free.push_back(backend_index(id));
    }

    /// Takes `id` (index and generation) out of the free slots; false if it is not free.
    fn reserve(&mut self, id: u32) -> bool {
        let index = backend_index(id);
        let Some(at) = self.free.iter().position(|&i| i == index) else {
            return false;
        };
        self.free.remove(at);
        self.generation[index as usize] = (id >> 16) as u16;
        true
    }
}

/// The balancer as it was when a change began ([`Balancer::begin`]).
#[derive(Debug)]
pub struct Checkpoint {
    vips: BTreeMap<Vip, VipState>,
    vip_ids: Vec<u32>,
    backend_ids: BackendIds,
    regions: Regions,
    filter: Option<Vec<u64>>,
    settings: Settings,
}

/// Everything the balancer needs to take over maps that a previous agent wrote: each VIP with
/// its id, options, backends (with ids) and table regions.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    vips: Vec<(Vip, VipState)>,
}

impl Snapshot {
    /// The VIPs it holds.
    pub fn vips(&self) -> impl Iterator<Item = &Vip> {
        self.vips.iter().map(|(vip, _)| vip)
    }
}

/// The balancer: desired state plus the maps it is written to.
pub struct Balancer<M: Maps> {
    maps: Staged<M>,
    vips: BTreeMap<Vip, VipState>,
    vip_ids: Vec<u32>,
    backend_ids: BackendIds,
    regions: Regions,
    /// The address filter as last written to the maps; `None` until written (what adopted maps
    /// hold is unknown).
    filter: Option<Vec<u64>>,
    /// What the data path's settings map holds.
    settings: Settings,
}

impl<M: Maps> Balancer<M> {
    /// A balancer with no VIPs over `maps`, whose slots array has `slots` entries.
    pub fn new(mut maps: M, slots: u32, settings: Settings) -> Result<Self, Error> {
        maps.set_settings(&settings)?;
        // The address filter is written with the first change (or at the end of `restore`):
        // writing it empty now would cut off the flows of maps being adopted.
        Ok(Self {
            maps: Staged::new(maps),
            vips: BTreeMap::new(),
            vip_ids: (0..MAX_VIPS).rev().collect(),
            backend_ids: BackendIds::new(),
            regions: Regions::new(slots),
            filter: None,
            settings,
        })
    }

    /// The connection-table timeouts the data path uses.
    pub fn timeouts(&self) -> Timeouts {
        self.settings.timeouts
    }

    /// Changes the connection-table timeouts; tracked flows get them from their next packet.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<(), Error> {
        let settings = Settings {
            timeouts,
            ..self.settings
        };
        self.maps.set_settings(&settings)?;
        self.settings = settings;
        Ok(())
    }

    /// The address filter's words for every VIP address and backend address, and `extra`.
    fn filter_words(&self, extra: &[(FilterKind, IpAddr)]) -> Vec<u64> {
        let mut words = vec![0u64; FILTER_MAP_WORDS as usize];
        let mut set = |kind, addr: IpAddr| {
            let (word, mask) = filter_slot(kind, &addr16(addr));
            words[word as usize] |= mask;
        };
        for (vip, state) in &self.vips {
            set(FilterKind::Vip, vip.addr);
            for b in &state.backends {
                set(FilterKind::Backend, b.spec.addr.ip());
            }
        }
        for &(kind, addr) in extra {
            set(kind, addr);
        }
        words
    }

    /// Writes the address filter for the VIPs and backends now, and `extra` addresses that
    /// must stay (or already be) in it while a change is under way; only the words that differ
    /// from what was last written.
    fn publish_filter(&mut self, extra: &[(FilterKind, IpAddr)]) -> Result<(), Error> {
        let words = self.filter_words(extra);
        for (i, &word) in words.iter().enumerate() {
            if self.filter.as_ref().is_none_or(|old| old[i] != word) {
                self.maps.set_filter_word(i as u32, word)?;
            }
        }
        self.filter = Some(words);
        Ok(())
    }

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
            if !balancer.vip_ids.contains(&state.id) {
                return Err(Error::Maps(format!(
                    "snapshot: VIP id {} used twice",
                    state.id
                )));
            }
            balancer.vip_ids.retain(|&id| id != state.id);
            for region in [state.table, state.list].into_iter().flatten() {
                if !balancer.regions.reserve(region) {
                    return Err(Error::Maps(format!(
                        "snapshot: table region {region:?} of {vip} overlaps another"
                    )));
                }
            }
            for b in &state.backends {
                check_backend(&vip, &b.spec)?;
                if !balancer.backend_ids.reserve(b.id) {
                    return Err(Error::Maps(format!(
                        "snapshot: backend id {:#x} used twice",
                        b.id
                    )));
                }
            }
            balancer.vips.insert(vip, state);
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
        let names: Vec<Vip> = self.vips.keys().copied().collect();
        for vip in &names {
            let state = self.vips[vip].clone();
            for b in &state.backends {
                self.maps
                    .set_backend(backend_index(b.id), &backend_value(b))?;
            }
            let (table, list) = build_tables(&state.options, &state.backends)?;
            let table = self.rewrite_region(vip, state.table, &table)?;
            let list = self.rewrite_region(vip, state.list, &list)?;
            let state = self.vips.get_mut(vip).expect("listed above");
            (state.table, state.list) = (table, list);
        }
        self.filter = None;
        self.publish_filter(&[])?;
        let mut counts: std::collections::HashMap<VipAddrKey, u32> =
            std::collections::HashMap::new();
        for (vip, state) in &self.vips {
            self.maps.set_vip(&vip.key(), &meta(state))?;
            *counts.entry(vip.addr_key()).or_default() += 1;
        }
        for (key, count) in &counts {
            self.maps.set_vip_addr(key, *count)?;
        }
        let keys: std::collections::HashSet<VipKey> = self.vips.keys().map(Vip::key).collect();
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
        let used: std::collections::HashSet<u32> = self
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
                let new = self.write_region(ids)?;
                if let Some(old) = old {
                    self.regions.free(old);
                }
                Ok(new)
            }
        }
    }

    /// Starts a change whose map writes are held back until [`Balancer::commit`] (or dropped
    /// by [`Balancer::abort`] with the returned checkpoint), so that the change can be saved
    /// before the data path sees it.
    pub fn begin(&mut self) -> Checkpoint {
        let checkpoint = Checkpoint {
            vips: self.vips.clone(),
            vip_ids: self.vip_ids.clone(),
            backend_ids: self.backend_ids.clone(),
            regions: self.regions.clone(),
            filter: self.filter.clone(),
            settings: self.settings,
        };
        self.maps.hold();
        self.regions.defer_frees();
        checkpoint
    }

    /// Makes the held map writes, in the order the change made them.
    pub fn commit(&mut self) -> Result<(), Error> {
        let result = self.maps.release();
        self.regions.end_deferral();
        Ok(result?)
    }

    /// Drops the held map writes and goes back to `checkpoint`: as if the change was never
    /// made.
    pub fn abort(&mut self, checkpoint: Checkpoint) {
        self.maps.discard();
        let Checkpoint {
            vips,
            vip_ids,
            backend_ids,
            regions,
            filter,
            settings,
        } = checkpoint;
        self.settings = settings;
        self.vips = vips;
        self.vip_ids = vip_ids;
        self.backend_ids = backend_ids;
        self.regions = regions;
        self.filter = filter;
    }

    /// What [`Balancer::restore`] needs to take over.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            vips: self
                .vips
                .iter()
                .map(|(vip, state)| (*vip, state.clone()))
                .collect(),
        }
    }

    pub fn maps(&self) -> &M {
        self.maps.inner()
    }

    pub fn maps_mut(&mut self) -> &mut M {
        self.maps.inner_mut()
    }

    /// Adds a VIP with no backends (its packets are dropped until it has some).
    pub fn add_vip(&mut self, vip: Vip, options: VipOptions) -> Result<(), Error> {
        if self.vips.contains_key(&vip) {
            return Err(Error::VipExists(vip));
        }
        check_vip(&vip, &options)?;
        let id = *self.vip_ids.last().ok_or(Error::TooManyVips)?;
        let state = VipState {
            id,
            options,
            backends: Vec::new(),
            table: None,
            list: None,
        };
        // The filter lets the VIP's packets through before the VIP exists.
        self.publish_filter(&[(FilterKind::Vip, vip.addr)])?;
        self.maps.set_vip(&vip.key(), &meta(&state))?;
        let addr_key = vip.addr_key();
        let count = self.vips_on_addr(&vip) + 1;
        self.maps.set_vip_addr(&addr_key, count)?;
        self.vip_ids.pop();
        self.vips.insert(vip, state);
        Ok(())
    }

    fn vips_on_addr(&self, vip: &Vip) -> u32 {
        self.vips
            .keys()
            .filter(|v| v.addr == vip.addr && v.proto == vip.proto)
            .count() as u32
    }

    /// Removes a VIP and its backends. Its tracked flows end (their packets are passed).
    pub fn remove_vip(&mut self, vip: &Vip) -> Result<(), Error> {
        if !self.vips.contains_key(vip) {
            return Err(Error::UnknownVip(*vip));
        }
        let remaining = self.vips_on_addr(vip) - 1;
        self.maps.remove_vip(&vip.key())?;
        self.maps.set_vip_addr(&vip.addr_key(), remaining)?;
        let state = self.vips.remove(vip).expect("checked above");
        for backend in &state.backends {
            self.retire_backend(backend.id)?;
        }
        for region in [state.table, state.list].into_iter().flatten() {
            self.regions.free(region);
        }
        self.vip_ids.push(state.id);
        self.publish_filter(&[])
    }

    /// Changes a VIP's scheduler or ring size; its tables are rebuilt.
    pub fn set_vip_options(&mut self, vip: &Vip, options: VipOptions) -> Result<(), Error> {
        check_vip(vip, &options)?;
        let state = self.vips.get(vip).ok_or(Error::UnknownVip(*vip))?;
        let backends = state.backends.iter().map(|b| b.spec).collect::<Vec<_>>();
        self.apply(vip, options, backends)
    }

    /// Replaces a VIP's backends: those already there keep their ids (and so their tracked
    /// flows), new ones are added, missing ones removed.
    pub fn set_backends(&mut self, vip: &Vip, backends: Vec<BackendSpec>) -> Result<(), Error> {
        let options = self.vips.get(vip).ok_or(Error::UnknownVip(*vip))?.options;
        let mut seen = std::collections::HashSet::new();
        for b in &backends {
            if !seen.insert(b.addr) {
                return Err(Error::BackendExists {
                    vip: *vip,
                    backend: b.addr,
                });
            }
        }
        self.apply(vip, options, backends)
    }

    /// Adds one backend to a VIP.
    pub fn add_backend(&mut self, vip: &Vip, backend: BackendSpec) -> Result<(), Error> {
        let mut specs = self.specs(vip)?;
        if specs.iter().any(|b| b.addr == backend.addr) {
            return Err(Error::BackendExists {
                vip: *vip,
                backend: backend.addr,
            });
        }
        specs.push(backend);
        self.set_backends(vip, specs)
    }

    /// Removes one backend from a VIP; its tracked flows move to other backends.
    pub fn remove_backend(&mut self, vip: &Vip, backend: SocketAddr) -> Result<(), Error> {
        let mut specs = self.specs(vip)?;
        let before = specs.len();
        specs.retain(|b| b.addr != backend);
        if specs.len() == before {
            return Err(Error::UnknownBackend { vip: *vip, backend });
        }
        self.set_backends(vip, specs)
    }

    /// Changes one backend's weight and/or state.
    pub fn update_backend(
        &mut self,
        vip: &Vip,
        backend: SocketAddr,
        weight: Option<u32>,
        state: Option<BackendState>,
    ) -> Result<(), Error> {
        let mut specs = self.specs(vip)?;
        let spec = specs
            .iter_mut()
            .find(|b| b.addr == backend)
            .ok_or(Error::UnknownBackend { vip: *vip, backend })?;
        if let Some(weight) = weight {
            spec.weight = weight;
        }
        if let Some(state) = state {
            spec.state = state;
        }
        self.set_backends(vip, specs)
    }

    fn specs(&self, vip: &Vip) -> Result<Vec<BackendSpec>, Error> {
        Ok(self
            .vips
            .get(vip)
            .ok_or(Error::UnknownVip(*vip))?
            .backends
            .iter()
            .map(|b| b.spec)
            .collect())
    }

    /// Validates, then writes backends and tables, then switches the VIP to them.
    fn apply(
        &mut self,
        vip: &Vip,
        options: VipOptions,
        specs: Vec<BackendSpec>,
    ) -> Result<(), Error> {
        for spec in &specs {
            check_backend(vip, spec)?;
        }
        let state = self.vips.get(vip).ok_or(Error::UnknownVip(*vip))?;
        let new_count = specs
            .iter()
            .filter(|s| !state.backends.iter().any(|b| b.spec.addr == s.addr))
            .count();
        if new_count > self.backend_ids.free.len() {
            return Err(Error::TooManyBackends);
        }

        // Ids: kept for backends already there, new for the others.
        let mut backends = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = match state.backends.iter().find(|b| b.spec.addr == spec.addr) {
                Some(existing) => existing.id,
                None => self.backend_ids.alloc().ok_or(Error::TooManyBackends)?,
            };
            backends.push(BackendInfo { spec, id });
        }
        let (table, list) = match build_tables(&options, &backends) {
            Ok(tables) => tables,
            Err(err) => {
                self.release_new_ids(vip, &backends);
                return Err(err);
            }
        };
        let needed = table.len() as u64 + list.len() as u64;
        if needed > self.regions.available() {
            self.release_new_ids(vip, &backends);
            return Err(Error::NoRoomInTables {
                needed,
                available: self.regions.available(),
            });
        }

        // Backends first (a table never names a backend the data path does not know).
        for b in &backends {
            self.maps
                .set_backend(backend_index(b.id), &backend_value(b))?;
        }
        let table_region = self.write_region(&table)?;
        let list_region = self.write_region(&list)?;
        let state = self.vips.get_mut(vip).expect("checked above");
        let old = std::mem::replace(
            state,
            VipState {
                id: state.id,
                options,
                backends,
                table: table_region,
                list: list_region,
            },
        );
        // New backends' replies are let through the filter before the VIP sends them flows;
        // the old ones' until the VIP has switched.
        let old_addrs: Vec<(FilterKind, IpAddr)> = old
            .backends
            .iter()
            .map(|b| (FilterKind::Backend, b.spec.addr.ip()))
            .collect();
        self.publish_filter(&old_addrs)?;
        self.maps.set_vip(&vip.key(), &meta(&self.vips[vip]))?;
        // Only now, with no table naming them, retire the removed backends and old regions.
        let gone: Vec<u32> = old
            .backends
            .iter()
            .map(|o| o.id)
            .filter(|id| !self.vips[vip].backends.iter().any(|b| b.id == *id))
            .collect();
        for id in gone {
            self.retire_backend(id)?;
        }
        for region in [old.table, old.list].into_iter().flatten() {
            self.regions.free(region);
        }
        self.publish_filter(&[])
    }

    fn release_new_ids(&mut self, vip: &Vip, backends: &[BackendInfo]) {
        let existing = &self.vips[vip].backends;
        let new: Vec<u32> = backends
            .iter()
            .filter(|b| !existing.iter().any(|e| e.id == b.id))
            .map(|b| b.id)
            .collect();
        for id in new {
            self.backend_ids.free(id);
        }
    }

    fn write_region(&mut self, ids: &[u32]) -> Result<Option<Region>, Error> {
        if ids.is_empty() {
            return Ok(None);
        }
        let len = ids.len() as u32;
        let region = self.regions.alloc(len).ok_or(Error::NoRoomInTables {
            needed: u64::from(len),
            available: self.regions.available(),
        })?;
        self.maps.write_slots(region.off, ids)?;
        Ok(Some(region))
    }

    fn retire_backend(&mut self, id: u32) -> Result<(), Error> {
        let unused = Backend {
            state: BACKEND_UNUSED,
            ..Backend::default()
        };
        self.maps.set_backend(backend_index(id), &unused)?;
        self.backend_ids.free(id);
        Ok(())
    }

    /// Publishes `active` connections of backend `id` for least-connections; the data path
    /// adds the flows it opens from now on.
    pub fn publish_load(&mut self, id: u32, active: u32) -> Result<(), Error> {
        let index = backend_index(id);
        let opened_base = self.maps.opened(index)?;
        self.maps.set_backend_load(
            index,
            &BackendLoad {
                active,
                _pad: [0; 4],
                opened_base,
            },
        )?;
        Ok(())
    }

    /// Every VIP, in order.
    pub fn vips(&self) -> Vec<VipInfo> {
        self.vips
            .iter()
            .map(|(vip, state)| VipInfo {
                vip: *vip,
                id: state.id,
                options: state.options,
                backends: state.backends.clone(),
            })
            .collect()
    }

    /// One VIP.
    pub fn vip(&self, vip: &Vip) -> Result<VipInfo, Error> {
        let state = self.vips.get(vip).ok_or(Error::UnknownVip(*vip))?;
        Ok(VipInfo {
            vip: *vip,
            id: state.id,
            options: state.options,
            backends: state.backends.clone(),
        })
    }

    /// Traffic of a VIP.
    pub fn vip_stats(&self, vip: &Vip) -> Result<Stats, Error> {
        let state = self.vips.get(vip).ok_or(Error::UnknownVip(*vip))?;
        Ok(self.maps.vip_stats(state.id)?)
    }

    /// Traffic of a backend, by id.
    pub fn backend_stats(&self, id: u32) -> Result<Stats, Error> {
        Ok(self.maps.backend_stats(backend_index(id))?)
    }
}

impl crate::loader::Loaded {
    /// A balancer over this program's maps (taking them out of `ebpf`), with `settings`.
    pub fn balancer(
        &mut self,
        settings: Settings,
    ) -> anyhow::Result<Balancer<crate::maps::BpfMaps>> {
        let maps = crate::maps::BpfMaps::new(&mut self.ebpf)?;
        Ok(Balancer::new(maps, self.options().slots, settings)?)
    }
}

fn backend_value(b: &BackendInfo) -> Backend {
    Backend {
        addr: addr16(b.spec.addr.ip()),
        port: b.spec.addr.port().to_be_bytes(),
        family: family(b.spec.addr.ip()),
        state: b.spec.state.number(),
        id: b.id,
        weight: b.spec.weight,
        _pad: [0; 4],
    }
}

fn meta(state: &VipState) -> VipMeta {
    let (table_off, table_len) = state.table.map_or((0, 0), |r| (r.off, r.len));
    let (list_off, list_len) = state.list.map_or((0, 0), |r| (r.off, r.len));
    VipMeta {
        vip_id: state.id,
        scheduler: state.options.scheduler.number(),
        _pad: [0; 3],
        table_off,
        table_len,
        list_off,
        list_len,
    }
}

/// The scheduling table and the list of backends taking new flows, as backend ids.
fn build_tables(
    options: &VipOptions,
    backends: &[BackendInfo],
) -> Result<(Vec<u32>, Vec<u32>), Error> {
    let active: Vec<&BackendInfo> = backends
        .iter()
        .filter(|b| b.spec.takes_new_flows())
        .collect();
    let list: Vec<u32> = active.iter().map(|b| b.id).collect();
    if active.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let cycle = |weights: Vec<u32>| -> Vec<u32> {
        smooth_wrr_sequence(&weights, MAX_WRR_CYCLE)
            .into_iter()
            .map(|i| active[i as usize].id)
            .collect()
    };
    let table = match options.scheduler {
        Scheduler::Maglev | Scheduler::SourceHash => {
            let members: Vec<MaglevBackend> = active
                .iter()
                .map(|b| {
                    MaglevBackend::new(
                        b.id,
                        b.spec.weight,
                        addr16(b.spec.addr.ip()),
                        b.spec.addr.port().to_be_bytes(),
                    )
                })
                .collect();
            maglev::build_table(&members, options.ring_size)
                .map_err(|_| Error::BadRingSize(options.ring_size))?
        }
        Scheduler::RoundRobin => cycle(vec![1; active.len()]),
        Scheduler::WeightedRoundRobin | Scheduler::WeightedRandom => {
            cycle(active.iter().map(|b| b.spec.weight).collect())
        }
        Scheduler::Random | Scheduler::LeastConn => Vec::new(),
    };
    Ok((table, list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::MemMaps;
    use lb_common::{
        maglev::{DEFAULT_RING_SIZE, MAX_WEIGHT},
        maps::BACKEND_DRAINING,
    };

    fn balancer() -> Balancer<MemMaps> {
        Balancer::new(MemMaps::default(), 1 << 20, Settings::default()).unwrap()
    }

    fn vip() -> Vip {
        "198.19.0.1:80/tcp".parse().unwrap()
    }

    fn backend(i: u8, weight: u32) -> BackendSpec {
        BackendSpec::new(SocketAddr::from(([198, 18, i, 2], 8080)), weight)
    }

    fn table(b: &Balancer<MemMaps>, vip: &Vip) -> Vec<u32> {
        let meta = b.maps().vips[&vip.key()];
        b.maps().region(meta.table_off, meta.table_len)
    }

    #[test]
    fn parses_vips_and_schedulers() {
        let v: Vip = "[fd00::1]:0/udp".parse().unwrap();
        assert_eq!(v.port, 0);
        assert_eq!(v.proto, Proto::Udp);
        assert!(matches!(
            "1.2.3.4:80/sctp".parse::<Vip>(),
            Err(Error::BadProto(_))
        ));
        assert!(matches!(
            "1.2.3.4/tcp".parse::<Vip>(),
            Err(Error::BadVip(_))
        ));
        for s in Scheduler::ALL {
            assert_eq!(s.name().parse::<Scheduler>().unwrap(), s);
        }
        assert_eq!(
            "fastest".parse::<Scheduler>().unwrap_err().to_string(),
            "unknown scheduler \"fastest\": expected one of maglev, source-hash, round-robin, \
             weighted-round-robin, random, weighted-random, least-conn"
        );
    }

    #[test]
    fn refused_changes_change_nothing() {
        let mut b = balancer();
        b.add_vip(vip(), VipOptions::default()).unwrap();
        b.set_backends(&vip(), vec![backend(1, 1), backend(2, 1)])
            .unwrap();
        let before = (b.vips(), b.maps().vips.clone(), b.maps().backends.clone());

        let v6 = BackendSpec::new("[fd00::2]:80".parse().unwrap(), 1);
        assert!(matches!(
            b.add_backend(&vip(), v6),
            Err(Error::FamilyMismatch { .. })
        ));
        assert!(matches!(
            b.add_backend(&vip(), backend(3, MAX_WEIGHT + 1)),
            Err(Error::WeightOutOfRange { .. })
        ));
        assert!(matches!(
            b.add_backend(&vip(), backend(1, 5)),
            Err(Error::BackendExists { .. })
        ));
        assert!(matches!(
            b.set_backends(&vip(), vec![backend(3, 1), backend(3, 2)]),
            Err(Error::BackendExists { .. })
        ));
        assert!(matches!(
            b.add_vip(vip(), VipOptions::default()),
            Err(Error::VipExists(_))
        ));
        let bad_ring = VipOptions {
            scheduler: Scheduler::Maglev,
            ring_size: 65536,
        };
        assert!(matches!(
            b.set_vip_options(&vip(), bad_ring),
            Err(Error::BadRingSize(65536))
        ));
        assert!(matches!(
            b.remove_backend(&vip(), backend(9, 1).addr),
            Err(Error::UnknownBackend { .. })
        ));

        assert_eq!(
            (b.vips(), b.maps().vips.clone(), b.maps().backends.clone()),
            before
        );
    }

    #[test]
    fn existing_backends_keep_their_ids_and_removed_ones_are_retired() {
        let mut b = balancer();
        b.add_vip(vip(), VipOptions::default()).unwrap();
        b.set_backends(&vip(), vec![backend(1, 1), backend(2, 1)])
            .unwrap();
        let ids: Vec<u32> = b
            .vip(&vip())
            .unwrap()
            .backends
            .iter()
            .map(|x| x.id)
            .collect();
        b.add_backend(&vip(), backend(3, 1)).unwrap();
        b.remove_backend(&vip(), backend(1, 1).addr).unwrap();
        let now: Vec<u32> = b
            .vip(&vip())
            .unwrap()
            .backends
            .iter()
            .map(|x| x.id)
            .collect();
        assert_eq!(now[0], ids[1], "backend 2 kept its id");
        assert_eq!(
            b.maps().backends[&backend_index(ids[0])].state,
            BACKEND_UNUSED
        );
        let t = table(&b, &vip());
        assert_eq!(t.len(), DEFAULT_RING_SIZE as usize);
        assert!(!t.contains(&ids[0]), "the removed backend is in no slot");
    }

    #[test]
    fn tables_follow_the_scheduler_and_leave_out_draining_down_and_zero_weight() {
        let mut b = balancer();
        let opts = VipOptions {
            scheduler: Scheduler::WeightedRoundRobin,
            ring_size: DEFAULT_RING_SIZE,
        };
        b.add_vip(vip(), opts).unwrap();
        b.set_backends(
            &vip(),
            vec![backend(1, 3), backend(2, 1), backend(3, 1), backend(4, 0)],
        )
        .unwrap();
        let info = b.vip(&vip()).unwrap();
        let id = |i: usize| info.backends[i].id;
        let t = table(&b, &vip());
        assert_eq!(t.len(), 5);
        assert_eq!(t.iter().filter(|&&x| x == id(0)).count(), 3);
        assert!(!t.contains(&id(3)), "weight 0 takes no new flows");

        b.update_backend(
            &vip(),
            backend(1, 3).addr,
            None,
            Some(BackendState::Draining),
        )
        .unwrap();
        b.update_backend(&vip(), backend(2, 1).addr, None, Some(BackendState::Down))
            .unwrap();
        assert_eq!(table(&b, &vip()), vec![id(2)]);
        let info = b.vip(&vip()).unwrap();
        assert_eq!(
            b.maps().backends[&backend_index(info.backends[0].id)].state,
            BACKEND_DRAINING
        );

        b.set_vip_options(
            &vip(),
            VipOptions {
                scheduler: Scheduler::LeastConn,
                ring_size: 3,
            },
        )
        .unwrap();
        let meta = b.maps().vips[&vip().key()];
        assert_eq!(meta.table_len, 0);
        assert_eq!(b.maps().region(meta.list_off, meta.list_len), vec![id(2)]);
    }

    #[test]
    fn the_address_filter_holds_every_vip_and_backend_address() {
        let in_filter = |b: &Balancer<MemMaps>, kind, addr: IpAddr| {
            let (word, mask) = filter_slot(kind, &addr16(addr));
            b.maps().filter.get(&word).is_some_and(|w| w & mask != 0)
        };
        let mut b = balancer();
        assert!(b.maps().filter.is_empty());
        let v = vip();
        b.add_vip(v, VipOptions::default()).unwrap();
        assert!(in_filter(&b, FilterKind::Vip, v.addr));
        assert!(!in_filter(&b, FilterKind::Backend, v.addr));
        b.set_backends(&v, vec![backend(1, 1), backend(2, 1)])
            .unwrap();
        for i in [1, 2] {
            assert!(in_filter(&b, FilterKind::Backend, backend(i, 1).addr.ip()));
        }
        b.set_backends(&v, vec![backend(2, 1)]).unwrap();
        assert!(!in_filter(&b, FilterKind::Backend, backend(1, 1).addr.ip()));
        assert!(in_filter(&b, FilterKind::Backend, backend(2, 1).addr.ip()));
        // A restored balancer writes the whole filter again.
        let snapshot = b.snapshot();
        let mut maps = MemMaps::default();
        maps.filter.insert(7, u64::MAX);
        let restored = Balancer::restore(maps, 1 << 20, Settings::default(), snapshot).unwrap();
        assert_eq!(restored.maps().filter, b.maps().filter);
        b.remove_vip(&v).unwrap();
        assert!(b.maps().filter.is_empty(), "{:?}", b.maps().filter);
    }

    #[test]
    fn vip_addresses_are_counted_per_protocol() {
        let mut b = balancer();
        let a: Vip = "198.19.0.1:80/tcp".parse().unwrap();
        let c: Vip = "198.19.0.1:443/tcp".parse().unwrap();
        b.add_vip(a, VipOptions::default()).unwrap();
        b.add_vip(c, VipOptions::default()).unwrap();
        assert_eq!(b.maps().vip_addrs[&a.addr_key()], 2);
        b.remove_vip(&a).unwrap();
        assert_eq!(b.maps().vip_addrs[&a.addr_key()], 1);
        b.remove_vip(&c).unwrap();
        assert!(b.maps().vip_addrs.is_empty());
        assert!(b.maps().vips.is_empty());
    }

    #[test]
    fn a_restored_balancer_takes_over_ids_regions_and_maps() {
        let mut b = balancer();
        b.add_vip(vip(), VipOptions::default()).unwrap();
        b.set_backends(&vip(), vec![backend(1, 1), backend(2, 2)])
            .unwrap();
        let udp: Vip = "198.19.0.1:53/udp".parse().unwrap();
        b.add_vip(
            udp,
            VipOptions {
                scheduler: Scheduler::RoundRobin,
                ring_size: 3,
            },
        )
        .unwrap();
        b.set_backends(&udp, vec![backend(3, 1)]).unwrap();
        let json = serde_json::to_string(&b.snapshot()).unwrap();
        let before = b.vips();

        // A new agent over the same maps, which lost their VIP entries meanwhile.
        let mut maps = std::mem::take(b.maps_mut());
        maps.vips.clear();
        maps.vip_addrs.clear();
        let snapshot: Snapshot = serde_json::from_str(&json).unwrap();
        let mut restored = Balancer::restore(maps, 1 << 20, Settings::default(), snapshot).unwrap();
        assert_eq!(restored.vips(), before);
        assert_eq!(restored.maps().vips.len(), 2);
        assert_eq!(restored.maps().vip_addrs[&vip().addr_key()], 1);
        assert_eq!(restored.maps().vip_addrs[&udp.addr_key()], 1);
        assert_eq!(table(&restored, &vip()).len(), DEFAULT_RING_SIZE as usize);

        // Changes after the restore keep the old ids and use free regions and ids only.
        restored.add_backend(&vip(), backend(4, 1)).unwrap();
        let after = restored.vip(&vip()).unwrap();
        assert_eq!(after.backends[..2], before[1].backends[..]);
        let ids: std::collections::HashSet<u32> = restored
            .vips()
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect();
        assert_eq!(ids.len(), 4, "no id handed out twice");
    }

    /// The maps as the data path sees them: VIP entries, address counts, backends in use, the
    /// tables every VIP entry points to, the filter.
    type Seen = (
        Vec<(VipKey, VipMeta, Vec<u32>, Vec<u32>)>,
        Vec<(VipAddrKey, u32)>,
        Vec<(u32, Backend)>,
        Vec<(u32, u64)>,
    );

    fn seen(maps: &MemMaps) -> Seen {
        let mut vips: Vec<_> = maps
            .vips
            .iter()
            .map(|(k, m)| {
                (
                    *k,
                    *m,
                    maps.region(m.table_off, m.table_len),
                    maps.region(m.list_off, m.list_len),
                )
            })
            .collect();
        vips.sort_by_key(|v| (v.0.addr, v.0.port, v.0.proto));
        let mut addrs: Vec<_> = maps.vip_addrs.iter().map(|(k, c)| (*k, *c)).collect();
        addrs.sort_by_key(|a| a.0.addr.to_vec());
        let mut backends: Vec<_> = maps
            .backends
            .iter()
            .filter(|(_, b)| b.state != BACKEND_UNUSED)
            .map(|(i, b)| (*i, *b))
            .collect();
        backends.sort_by_key(|b| b.0);
        let mut filter: Vec<_> = maps.filter.iter().map(|(i, w)| (*i, *w)).collect();
        filter.sort_unstable();
        (vips, addrs, backends, filter)
    }

    fn two_vips() -> (Balancer<MemMaps>, Vip) {
        let mut b = balancer();
        b.add_vip(vip(), VipOptions::default()).unwrap();
        b.set_backends(&vip(), vec![backend(1, 1), backend(2, 3), backend(3, 1)])
            .unwrap();
        let udp: Vip = "198.19.0.2:53/udp".parse().unwrap();
        let options = VipOptions {
            scheduler: Scheduler::WeightedRoundRobin,
            ring_size: 3,
        };
        b.add_vip(udp, options).unwrap();
        b.set_backends(&udp, vec![backend(4, 2), backend(5, 1)])
            .unwrap();
        (b, udp)
    }

    #[test]
    fn a_snapshot_restored_onto_empty_maps_gives_the_data_path_everything() {
        let (b, _) = two_vips();
        let snapshot = b.snapshot();
        let restored =
            Balancer::restore(MemMaps::default(), 1 << 20, Settings::default(), snapshot).unwrap();
        assert_eq!(restored.vips(), b.vips());
        assert_eq!(seen(restored.maps()), seen(b.maps()));
        assert!(!table(&restored, &vip()).is_empty());
    }

    #[test]
    fn restoring_removes_what_an_unsaved_change_left_in_the_maps() {
        let (mut b, udp) = two_vips();
        let snapshot = b.snapshot();
        let expected = seen(b.maps());
        // Changes made to the maps but never saved: a VIP on a new address, a VIP on a known
        // address, a backend, a removed VIP.
        let ghost: Vip = "198.19.0.9:80/tcp".parse().unwrap();
        b.add_vip(ghost, VipOptions::default()).unwrap();
        b.set_backends(&ghost, vec![backend(9, 1)]).unwrap();
        b.add_vip("198.19.0.1:443/tcp".parse().unwrap(), VipOptions::default())
            .unwrap();
        b.add_backend(&vip(), backend(8, 1)).unwrap();
        b.remove_vip(&udp).unwrap();
        let maps = std::mem::take(b.maps_mut());
        let restored = Balancer::restore(maps, 1 << 20, Settings::default(), snapshot).unwrap();
        assert_eq!(seen(restored.maps()), expected);
    }

    #[test]
    fn an_aborted_change_leaves_maps_and_state_as_they_were() {
        let (mut b, udp) = two_vips();
        let before = (b.vips(), b.snapshot().vips.len(), seen(b.maps()));
        let checkpoint = b.begin();
        b.add_backend(&vip(), backend(7, 2)).unwrap();
        b.remove_vip(&udp).unwrap();
        b.add_vip("198.19.0.3:80/tcp".parse().unwrap(), VipOptions::default())
            .unwrap();
        assert_eq!(seen(b.maps()), before.2, "writes are held back");
        b.abort(checkpoint);
        assert_eq!((b.vips(), b.snapshot().vips.len(), seen(b.maps())), before);
        // Ids and regions are as they were: the same change again gives the same result as on
        // a balancer that never saw the aborted one.
        let (mut twin, _) = two_vips();
        b.add_backend(&vip(), backend(7, 2)).unwrap();
        twin.add_backend(&vip(), backend(7, 2)).unwrap();
        assert_eq!(b.vips(), twin.vips());
        assert_eq!(seen(b.maps()), seen(twin.maps()));
    }

    #[test]
    fn a_committed_change_reaches_the_maps_as_if_made_directly() {
        let (mut b, udp) = two_vips();
        let (mut direct, _) = two_vips();
        let _checkpoint = b.begin();
        b.add_backend(&vip(), backend(7, 2)).unwrap();
        b.remove_vip(&udp).unwrap();
        b.commit().unwrap();
        direct.add_backend(&vip(), backend(7, 2)).unwrap();
        direct.remove_vip(&udp).unwrap();
        assert_eq!(b.vips(), direct.vips());
        assert_eq!(seen(b.maps()), seen(direct.maps()));
    }

    #[test]
    fn reused_backend_slots_get_a_new_generation() {
        let mut ids = BackendIds::new();
        let first = ids.alloc().unwrap();
        ids.free(first);
        // FIFO: every other slot is used before this one comes back.
        let mut again = None;
        for _ in 0..MAX_BACKENDS {
            let id = ids.alloc().unwrap();
            if backend_index(id) == backend_index(first) {
                again = Some(id);
            }
        }
        let again = again.unwrap();
        assert_ne!(again, first);
    }
}
