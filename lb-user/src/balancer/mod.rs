//! The balancer's desired state and the one place that turns it into map contents: VIPs,
//! their backends (with weights and states), id allocation, and each VIP's scheduling tables.
//!
//! Every change is validated first and refused whole with an [`Error`] naming what is wrong;
//! nothing is written for a refused change. A VIP's tables are rebuilt on every backend change,
//! written into fresh regions of the slots array and switched to in one map update.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    acl::AclKey,
    conntrack::Timeouts,
    filter::{FILTER_MAP_WORDS, FilterKind, filter_slot},
    maps::{
        BACKEND_FLAG_ACL, BACKEND_FLAG_STATELESS_REPLY, BACKEND_UNUSED, Backend, BackendKey,
        BackendLoad, MAX_ACL_ENTRIES, MAX_VIPS, ReverseNat, Settings, Stats, backend_index,
    },
};

mod ids;
pub mod plan;
mod replies;
mod restore;
mod tables;

use ids::BackendIds;
use tables::{acl_of, backend_value, build_tables, meta, source_limit, table_digest};

pub use crate::model::{
    BackendSpec, BackendState, Error, Forwarding, Proto, Scheduler, SourcePrefix, Vip, VipOptions,
    check_backend, check_backend_forwarding, check_vip,
};
use crate::{
    maps::{Maps, Staged},
    model::addr16,
    regions::{Region, Regions},
};

/// About what writing one entry of the slots array costs (`BPF_MAP_UPDATE_BATCH` copies and
/// updates entry by entry; measured 0.45-0.6 µs): a whole table of 1,048,573 slots takes
/// half a second, more than waiting out the quarantine of the region that holds the VIP's
/// table before last, where only the slots that moved are written.
const SLOT_WRITE: std::time::Duration = std::time::Duration::from_nanos(500);

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
    /// The region of the table before this one, freed when the VIP switched away from it: the
    /// next table goes there if it is free again, and writes only the slots that differ.
    #[serde(skip)]
    previous_table: Option<Region>,
}

/// A VIP as shown to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipInfo {
    pub vip: Vip,
    pub id: u32,
    pub options: VipOptions,
    pub backends: Vec<BackendInfo>,
    /// The digest of its `maglev` or `source-hash` table (`tables::table_digest`).
    pub table_digest: Option<String>,
}

/// What the balancer holds besides its maps: everything a change may touch, so that a
/// checkpoint is a copy of it.
#[derive(Debug, Clone)]
struct State {
    vips: BTreeMap<Vip, VipState>,
    vip_ids: Vec<u32>,
    backend_ids: BackendIds,
    regions: Regions,
    /// The address filter as last written to the maps; `None` until written (what adopted maps
    /// hold is unknown).
    filter: Option<Vec<u64>>,
    /// What the data path's settings map holds.
    settings: Settings,
    /// The stateless reply translations as last written (`replies::plan`); `None` until
    /// written (what adopted maps hold is read back then).
    replies: Option<BTreeMap<BackendKey, ReverseNat>>,
    /// Backends written with `BACKEND_FLAG_STATELESS_REPLY`.
    stateless: BTreeSet<u32>,
    /// The gateway's own addresses, as last written to `LOCAL_ADDRS` and the filter.
    locals: BTreeSet<IpAddr>,
}

/// The balancer as it was when a change began ([`Balancer::begin`]).
#[derive(Debug)]
pub struct Checkpoint(State);

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
    state: State,
}

impl<M: Maps> Balancer<M> {
    /// A balancer with no VIPs over `maps`, whose slots array has `slots` entries.
    pub fn new(mut maps: M, slots: u32, mut settings: Settings) -> Result<Self, Error> {
        // 0 is what a never-filled next hop holds: the data path's generation never is.
        settings.next_hop_generation = settings.next_hop_generation.max(1);
        maps.set_settings(&settings)?;
        // The address filter is written with the first change (or at the end of `restore`):
        // writing it empty now would cut off the flows of maps being adopted.
        Ok(Self {
            maps: Staged::new(maps),
            state: State {
                vips: BTreeMap::new(),
                vip_ids: (0..MAX_VIPS).rev().collect(),
                backend_ids: BackendIds::new(),
                regions: Regions::new(slots),
                filter: None,
                settings,
                replies: None,
                stateless: BTreeSet::new(),
                locals: BTreeSet::new(),
            },
        })
    }

    /// Tells the data path the gateway's own addresses: a backend's packet to one of them (an
    /// answer to a health probe) is not translated as a VIP's reply. New ones are written
    /// before the filter lets the data path look them up, gone ones after.
    pub fn set_local_addrs(
        &mut self,
        addrs: impl IntoIterator<Item = IpAddr>,
    ) -> Result<(), Error> {
        let new: BTreeSet<IpAddr> = addrs.into_iter().collect();
        for addr in new.difference(&self.state.locals) {
            self.maps.set_local_addr(&local_key(*addr), true)?;
        }
        let old = std::mem::replace(&mut self.state.locals, new);
        self.publish_filter(&[])?;
        for addr in old.difference(&self.state.locals) {
            self.maps.set_local_addr(&local_key(*addr), false)?;
        }
        Ok(())
    }

    /// The gateway's own addresses, as the data path knows them.
    pub fn local_addrs(&self) -> Vec<IpAddr> {
        self.state.locals.iter().copied().collect()
    }

    /// Starts a new generation of next hops: every next hop the data path kept is looked up
    /// again at its next packet (routes, neighbours or interfaces changed).
    pub fn refresh_next_hops(&mut self) -> Result<(), Error> {
        let mut settings = self.state.settings;
        settings.next_hop_generation = match settings.next_hop_generation.wrapping_add(1) {
            0 => 1,
            next => next,
        };
        self.maps.set_settings(&settings)?;
        self.state.settings = settings;
        Ok(())
    }

    /// The data path's entry of backend `b` of the VIP with id `vip_id` and `options`, with the
    /// flags last published for it.
    fn backend_entry(&self, b: &BackendInfo, vip_id: u32, options: &VipOptions) -> Backend {
        let mut flags = if self.state.stateless.contains(&b.id) {
            BACKEND_FLAG_STATELESS_REPLY
        } else {
            0
        };
        if options.has_acl() {
            flags |= BACKEND_FLAG_ACL;
        }
        backend_value(b, vip_id, flags, options.forwarding)
    }

    /// Writes the source prefix list entries `new` has and `old` has not (or with another
    /// verdict): before the VIP or its backends are switched to check them.
    fn add_acl(
        &mut self,
        old: &BTreeMap<AclKey, u8>,
        new: &BTreeMap<AclKey, u8>,
    ) -> Result<(), Error> {
        let others: usize = self
            .state
            .vips
            .iter()
            .map(|(vip, state)| acl_of(vip, state.id, &state.options).len())
            .sum::<usize>()
            - old.len();
        if others + new.len() > MAX_ACL_ENTRIES as usize {
            return Err(Error::AclFull(MAX_ACL_ENTRIES));
        }
        for (key, verdict) in new {
            if old.get(key) != Some(verdict) {
                self.maps.set_acl(key, Some(*verdict))?;
            }
        }
        Ok(())
    }

    /// Deletes the entries `old` has and `new` has not: once nothing checks them.
    fn remove_acl(
        &mut self,
        old: &BTreeMap<AclKey, u8>,
        new: &BTreeMap<AclKey, u8>,
    ) -> Result<(), Error> {
        for key in old.keys() {
            if !new.contains_key(key) {
                self.maps.set_acl(key, None)?;
            }
        }
        Ok(())
    }

    /// Writes the stateless reply translations the VIPs call for now (`replies::plan`) and the
    /// backends whose flag changes: new and changed entries first, so that a backend becoming
    /// shared is marked so before its flows record reverse entries or stop doing so; flags
    /// next; entries no longer called for last.
    fn publish_replies(&mut self) -> Result<(), Error> {
        let known = self.state.replies.is_some();
        let written = match &self.state.replies {
            Some(replies) => replies.clone(),
            None => self.maps.backend_vips()?.into_iter().collect(),
        };
        let (entries, stateless) = replies::plan(&self.state.vips, &written);
        for (key, entry) in &entries {
            if !known || written.get(key) != Some(entry) {
                self.maps.set_backend_vip(key, Some(entry))?;
            }
        }
        let old = std::mem::replace(&mut self.state.stateless, stateless);
        let changed: Vec<Backend> = self
            .state
            .vips
            .values()
            .flat_map(|state| {
                state
                    .backends
                    .iter()
                    .filter(|b| old.contains(&b.id) != self.state.stateless.contains(&b.id))
                    .map(|b| self.backend_entry(b, state.id, &state.options))
            })
            .collect();
        for backend in changed {
            self.maps.set_backend(backend_index(backend.id), &backend)?;
        }
        for key in written.keys() {
            if !entries.contains_key(key) {
                self.maps.set_backend_vip(key, None)?;
            }
        }
        self.state.replies = Some(entries);
        Ok(())
    }

    /// The connection-table timeouts the data path uses.
    pub fn timeouts(&self) -> Timeouts {
        self.state.settings.timeouts
    }

    /// New flows per second per CPU above which consistent-hash VIPs schedule without state (0:
    /// no limit).
    pub fn new_flow_rate_limit(&self) -> u32 {
        self.state.settings.new_flow_rate_limit
    }

    /// Changes [`Balancer::new_flow_rate_limit`]; live from the next new flow.
    pub fn set_new_flow_rate_limit(&mut self, limit: u32) -> Result<(), Error> {
        let settings = Settings {
            new_flow_rate_limit: limit,
            ..self.state.settings
        };
        self.maps.set_settings(&settings)?;
        self.state.settings = settings;
        Ok(())
    }

    /// Changes the connection-table timeouts; tracked flows get them from their next packet.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<(), Error> {
        let settings = Settings {
            timeouts,
            ..self.state.settings
        };
        self.maps.set_settings(&settings)?;
        self.state.settings = settings;
        Ok(())
    }

    /// The address filter's words for every VIP address and backend address, and `extra`.
    fn filter_words(&self, extra: &[(FilterKind, IpAddr)]) -> Vec<u64> {
        let mut words = vec![0u64; FILTER_MAP_WORDS as usize];
        let mut set = |kind, addr: IpAddr| {
            let (word, mask) = filter_slot(kind, &addr16(addr));
            words[word as usize] |= mask;
        };
        for (vip, state) in &self.state.vips {
            set(FilterKind::Vip, vip.addr);
            for b in &state.backends {
                set(FilterKind::Backend, b.spec.addr.ip());
            }
        }
        for &addr in &self.state.locals {
            set(FilterKind::Local, addr);
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
            if self.state.filter.as_ref().is_none_or(|old| old[i] != word) {
                self.maps.set_filter_word(i as u32, word)?;
            }
        }
        self.state.filter = Some(words);
        Ok(())
    }

    /// Starts a change whose map writes are held back until [`Balancer::commit`] (or dropped
    /// by [`Balancer::abort`] with the returned checkpoint), so that the change can be saved
    /// before the data path sees it.
    pub fn begin(&mut self) -> Checkpoint {
        let checkpoint = Checkpoint(self.state.clone());
        self.maps.hold();
        self.state.regions.defer_frees();
        checkpoint
    }

    /// Makes the held map writes, in the order the change made them.
    pub fn commit(&mut self) -> Result<(), Error> {
        let result = self.maps.release();
        self.state.regions.end_deferral();
        Ok(result?)
    }

    /// Drops the held map writes and goes back to `checkpoint`: as if the change was never
    /// made.
    pub fn abort(&mut self, checkpoint: Checkpoint) {
        self.maps.discard();
        self.state = checkpoint.0;
    }

    /// What [`Balancer::restore`] needs to take over.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            vips: self
                .state
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
        if self.state.vips.contains_key(&vip) {
            return Err(Error::VipExists(vip));
        }
        check_vip(&vip, &options)?;
        let id = *self.state.vip_ids.last().ok_or(Error::TooManyVips)?;
        // The source checks are in place before the VIP takes a packet.
        self.add_acl(&BTreeMap::new(), &acl_of(&vip, id, &options))?;
        self.maps
            .set_source_limit(id, &source_limit(&vip, &options))?;
        let state = VipState {
            id,
            options,
            backends: Vec::new(),
            table: None,
            list: None,
            previous_table: None,
        };
        // The filter lets the VIP's packets through before the VIP exists.
        self.publish_filter(&[(FilterKind::Vip, vip.addr)])?;
        self.maps.set_vip(&vip.key(), &meta(&state))?;
        let addr_key = vip.addr_key();
        let count = self.vips_on_addr(&vip) + 1;
        self.maps.set_vip_addr(&addr_key, count)?;
        self.state.vip_ids.pop();
        self.state.vips.insert(vip, state);
        Ok(())
    }

    fn vips_on_addr(&self, vip: &Vip) -> u32 {
        self.state
            .vips
            .keys()
            .filter(|v| v.addr == vip.addr && v.proto == vip.proto)
            .count() as u32
    }

    /// Removes a VIP and its backends. Its tracked flows end (their packets are passed).
    pub fn remove_vip(&mut self, vip: &Vip) -> Result<(), Error> {
        if !self.state.vips.contains_key(vip) {
            return Err(Error::UnknownVip(*vip));
        }
        let remaining = self.vips_on_addr(vip) - 1;
        self.maps.remove_vip(&vip.key())?;
        self.maps.set_vip_addr(&vip.addr_key(), remaining)?;
        let state = self.state.vips.remove(vip).expect("checked above");
        self.remove_acl(&acl_of(vip, state.id, &state.options), &BTreeMap::new())?;
        if state.options.source_rate_limit > 0 {
            self.maps.set_source_limit(state.id, &Default::default())?;
        }
        self.publish_replies()?;
        for backend in &state.backends {
            self.retire_backend(backend.id)?;
        }
        for region in [state.table, state.list].into_iter().flatten() {
            self.state.regions.free(region);
        }
        self.state.vip_ids.push(state.id);
        self.publish_filter(&[])
    }

    /// Changes a VIP's scheduler, ring size or forwarding mode; its tables are rebuilt. A new
    /// mode is written into its backends' entries before the VIP's: tracked flows follow it
    /// from their next packet (and break unless their backend serves both ways: the backend
    /// sees the VIP's address where it saw its own, or the reverse).
    pub fn set_vip_options(&mut self, vip: &Vip, options: VipOptions) -> Result<(), Error> {
        check_vip(vip, &options)?;
        let state = self.state.vips.get(vip).ok_or(Error::UnknownVip(*vip))?;
        let backends = state.backends.iter().map(|b| b.spec).collect::<Vec<_>>();
        self.apply(vip, options, backends)
    }

    /// Replaces a VIP's backends: those already there keep their ids (and so their tracked
    /// flows), new ones are added, missing ones removed.
    pub fn set_backends(&mut self, vip: &Vip, backends: Vec<BackendSpec>) -> Result<(), Error> {
        let options = self
            .state
            .vips
            .get(vip)
            .ok_or(Error::UnknownVip(*vip))?
            .options
            .clone();
        self.set_vip(vip, options, backends)
    }

    /// Replaces a VIP's options and backends in one step, as [`Balancer::set_vip_options`]
    /// and [`Balancer::set_backends`] do.
    pub fn set_vip(
        &mut self,
        vip: &Vip,
        options: VipOptions,
        backends: Vec<BackendSpec>,
    ) -> Result<(), Error> {
        check_vip(vip, &options)?;
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
            .state
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
            check_backend_forwarding(vip, options.forwarding, spec.addr)?;
        }
        let state = self.state.vips.get(vip).ok_or(Error::UnknownVip(*vip))?;
        let new_count = specs
            .iter()
            .filter(|s| !state.backends.iter().any(|b| b.spec.addr == s.addr))
            .count();
        if new_count > self.state.backend_ids.free.len() {
            return Err(Error::TooManyBackends);
        }

        // Ids: kept for backends already there, new for the others.
        let mut backends = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = match state.backends.iter().find(|b| b.spec.addr == spec.addr) {
                Some(existing) => existing.id,
                None => self
                    .state
                    .backend_ids
                    .alloc()
                    .ok_or(Error::TooManyBackends)?,
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
        if needed > self.state.regions.available() {
            self.release_new_ids(vip, &backends);
            return Err(Error::NoRoomInTables {
                needed,
                available: self.state.regions.available(),
            });
        }

        // Source checks before the backends and the VIP that use them; the old ones go last.
        let vip_id = state.id;
        let old_acl = acl_of(vip, vip_id, &state.options);
        let new_acl = acl_of(vip, vip_id, &options);
        if let Err(err) = self.add_acl(&old_acl, &new_acl) {
            self.release_new_ids(vip, &backends);
            return Err(err);
        }
        self.maps
            .set_source_limit(vip_id, &source_limit(vip, &options))?;
        // Backends first (a table never names a backend the data path does not know).
        for b in &backends {
            let entry = self.backend_entry(b, vip_id, &options);
            self.maps.set_backend(backend_index(b.id), &entry)?;
        }
        let prefer = self.state.vips[vip].previous_table;
        let table_region = self.write_region(&table, prefer)?;
        let list_region = self.write_region(&list, None)?;
        let state = self.state.vips.get_mut(vip).expect("checked above");
        let old = std::mem::replace(
            state,
            VipState {
                id: state.id,
                options,
                backends,
                table: table_region,
                list: list_region,
                previous_table: None,
            },
        );
        state.previous_table = old.table;
        // New backends' replies are let through the filter before the VIP sends them flows;
        // the old ones' until the VIP has switched.
        let old_addrs: Vec<(FilterKind, IpAddr)> = old
            .backends
            .iter()
            .map(|b| (FilterKind::Backend, b.spec.addr.ip()))
            .collect();
        self.publish_filter(&old_addrs)?;
        self.publish_replies()?;
        self.maps
            .set_vip(&vip.key(), &meta(&self.state.vips[vip]))?;
        // Only now, with no table naming them, retire the removed backends and old regions.
        let gone: Vec<u32> = old
            .backends
            .iter()
            .map(|o| o.id)
            .filter(|id| !self.state.vips[vip].backends.iter().any(|b| b.id == *id))
            .collect();
        for id in gone {
            self.retire_backend(id)?;
        }
        for region in [old.table, old.list].into_iter().flatten() {
            self.state.regions.free(region);
        }
        self.remove_acl(&old_acl, &new_acl)?;
        self.publish_filter(&[])?;
        if old.options.forwarding != self.state.vips[vip].options.forwarding {
            // A next hop kept for NAT may be a router's: `dsr-l2` wants the backend itself.
            self.refresh_next_hops()?;
        }
        Ok(())
    }

    fn release_new_ids(&mut self, vip: &Vip, backends: &[BackendInfo]) {
        let existing = &self.state.vips[vip].backends;
        let new: Vec<u32> = backends
            .iter()
            .filter(|b| !existing.iter().any(|e| e.id == b.id))
            .map(|b| b.id)
            .collect();
        for id in new {
            self.state.backend_ids.free(id);
        }
    }

    /// Writes `ids` into a new region: `prefer` if it is of that size and free, or will be
    /// before a whole table could be written elsewhere ([`SLOT_WRITE`] an entry).
    fn write_region(
        &mut self,
        ids: &[u32],
        prefer: Option<Region>,
    ) -> Result<Option<Region>, Error> {
        if ids.is_empty() {
            return Ok(None);
        }
        let len = ids.len() as u32;
        let wait = SLOT_WRITE * len;
        let region = self
            .state
            .regions
            .alloc_preferring(len, prefer, wait)
            .ok_or(Error::NoRoomInTables {
                needed: u64::from(len),
                available: self.state.regions.available(),
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
        self.state.backend_ids.free(id);
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
        self.state
            .vips
            .iter()
            .map(|(vip, state)| VipInfo {
                vip: *vip,
                id: state.id,
                options: state.options.clone(),
                backends: state.backends.clone(),
                table_digest: table_digest(&state.options, &state.backends),
            })
            .collect()
    }

    /// One VIP.
    pub fn vip(&self, vip: &Vip) -> Result<VipInfo, Error> {
        let state = self.state.vips.get(vip).ok_or(Error::UnknownVip(*vip))?;
        Ok(VipInfo {
            vip: *vip,
            id: state.id,
            options: state.options.clone(),
            backends: state.backends.clone(),
            table_digest: table_digest(&state.options, &state.backends),
        })
    }

    /// Traffic of a VIP.
    pub fn vip_stats(&self, vip: &Vip) -> Result<Stats, Error> {
        let state = self.state.vips.get(vip).ok_or(Error::UnknownVip(*vip))?;
        Ok(self.maps.vip_stats(state.id)?)
    }

    /// Traffic of a backend, by id.
    pub fn backend_stats(&self, id: u32) -> Result<Stats, Error> {
        Ok(self.maps.backend_stats(backend_index(id))?)
    }
}

fn local_key(addr: IpAddr) -> lb_common::maps::AddrKey {
    lb_common::maps::AddrKey {
        addr: addr16(addr),
        family: crate::model::family(addr),
        _pad: [0; 3],
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

#[cfg(test)]
mod tests;
