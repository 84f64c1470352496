//! Typed access to the XDP program's maps, behind a trait so that the balancer's logic can be
//! unit-tested against an in-memory twin ([`MemMaps`]) and run against the kernel ([`BpfMaps`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
};
use lb_common::maps::{
    ADDR_FILTER_MAP, AddrKey, BACKEND_LOAD_MAP, BACKEND_OPENED_MAP, BACKEND_STATS_MAP,
    BACKEND_UNUSED, BACKEND_VIPS_MAP, BACKENDS_MAP, Backend, BackendKey, BackendLoad,
    LOCAL_ADDRS_MAP, ReverseNat, SETTINGS_MAP, SLOTS_MAP, Settings, Stats, VIP_ADDRS_MAP,
    VIP_STATS_MAP, VIPS_MAP, VipAddrKey, VipKey, VipMeta,
};
use lb_common::{
    FlowKey,
    conntrack::{FlowState, Timeouts, is_active},
};
use lb_common::{
    acl::{AclKey, AclMatch},
    limit::SourceLimit,
    maps::{ACL_MAP, SOURCE_LIMITS_MAP},
};

pub use crate::model::{MapsError, MapsResult};

/// Names the map and the operation of an aya error.
trait On<T> {
    fn on(self, map: &'static str, op: &'static str) -> MapsResult<T>;
}

impl<T> On<T> for Result<T, aya::maps::MapError> {
    fn on(self, map: &'static str, op: &'static str) -> MapsResult<T> {
        self.map_err(|err| MapsError::new(map, op, err.to_string()))
    }
}

/// What the balancer writes and reads in the data path's maps.
pub trait Maps {
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> MapsResult<()>;
    fn remove_vip(&mut self, key: &VipKey) -> MapsResult<()>;
    /// Sets (count > 0) or removes (count 0) an address's VIP count.
    fn set_vip_addr(&mut self, key: &VipAddrKey, count: u32) -> MapsResult<()>;
    fn set_backend(&mut self, index: u32, backend: &Backend) -> MapsResult<()>;
    fn write_slots(&mut self, off: u32, ids: &[u32]) -> MapsResult<()>;
    fn set_backend_load(&mut self, index: u32, load: &BackendLoad) -> MapsResult<()>;
    fn set_settings(&mut self, settings: &Settings) -> MapsResult<()>;
    /// Sets word `index` of the address filter (`lb_common::filter`).
    fn set_filter_word(&mut self, index: u32, word: u64) -> MapsResult<()>;
    /// Flows the data path opened to backend slot `index`, ever.
    fn opened(&self, index: u32) -> MapsResult<u64>;
    fn vip_stats(&self, vip_id: u32) -> MapsResult<Stats>;
    fn backend_stats(&self, index: u32) -> MapsResult<Stats>;
    /// The keys of every VIP entry.
    fn vip_keys(&self) -> MapsResult<Vec<VipKey>>;
    /// The keys of every VIP-address entry.
    fn vip_addr_keys(&self) -> MapsResult<Vec<VipAddrKey>>;
    /// The indexes of the backend slots that are not [`BACKEND_UNUSED`].
    fn used_backends(&self) -> MapsResult<Vec<u32>>;
    /// Sets (`Some`) or removes (`None`) the stateless reply translation of a backend
    /// address:port (`lb_common::maps::BACKEND_VIPS_MAP`).
    fn set_backend_vip(&mut self, key: &BackendKey, entry: Option<&ReverseNat>) -> MapsResult<()>;
    /// Every stateless reply translation.
    fn backend_vips(&self) -> MapsResult<Vec<(BackendKey, ReverseNat)>>;
    /// Adds (`true`) or removes (`false`) one of the gateway's own addresses
    /// (`lb_common::maps::LOCAL_ADDRS_MAP`).
    fn set_local_addr(&mut self, key: &AddrKey, present: bool) -> MapsResult<()>;
    /// Every address in `LOCAL_ADDRS_MAP`.
    fn local_addrs(&self) -> MapsResult<Vec<AddrKey>>;
    /// Writes (`Some`) or deletes (`None`) an entry of the source prefix lists.
    fn set_acl(&mut self, key: &AclKey, verdict: Option<u8>) -> MapsResult<()>;
    /// Every entry of the source prefix lists.
    fn acl_keys(&self) -> MapsResult<Vec<AclKey>>;
    /// Writes VIP `vip_id`'s per-source new-flow limit.
    fn set_source_limit(&mut self, vip_id: u32, limit: &SourceLimit) -> MapsResult<()>;
}

/// Maps behind a pointer: the agent's balancer works over the kernel's maps or, in tests, the
/// in-memory twin, through one type.
pub type DynMaps = Box<dyn Maps + Send>;

impl<T: Maps + ?Sized> Maps for Box<T> {
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> MapsResult<()> {
        (**self).set_vip(key, meta)
    }
    fn remove_vip(&mut self, key: &VipKey) -> MapsResult<()> {
        (**self).remove_vip(key)
    }
    fn set_vip_addr(&mut self, key: &VipAddrKey, count: u32) -> MapsResult<()> {
        (**self).set_vip_addr(key, count)
    }
    fn set_backend(&mut self, index: u32, backend: &Backend) -> MapsResult<()> {
        (**self).set_backend(index, backend)
    }
    fn write_slots(&mut self, off: u32, ids: &[u32]) -> MapsResult<()> {
        (**self).write_slots(off, ids)
    }
    fn set_backend_load(&mut self, index: u32, load: &BackendLoad) -> MapsResult<()> {
        (**self).set_backend_load(index, load)
    }
    fn set_settings(&mut self, settings: &Settings) -> MapsResult<()> {
        (**self).set_settings(settings)
    }
    fn set_filter_word(&mut self, index: u32, word: u64) -> MapsResult<()> {
        (**self).set_filter_word(index, word)
    }
    fn opened(&self, index: u32) -> MapsResult<u64> {
        (**self).opened(index)
    }
    fn vip_stats(&self, vip_id: u32) -> MapsResult<Stats> {
        (**self).vip_stats(vip_id)
    }
    fn backend_stats(&self, index: u32) -> MapsResult<Stats> {
        (**self).backend_stats(index)
    }
    fn vip_keys(&self) -> MapsResult<Vec<VipKey>> {
        (**self).vip_keys()
    }
    fn vip_addr_keys(&self) -> MapsResult<Vec<VipAddrKey>> {
        (**self).vip_addr_keys()
    }
    fn used_backends(&self) -> MapsResult<Vec<u32>> {
        (**self).used_backends()
    }
    fn set_backend_vip(&mut self, key: &BackendKey, entry: Option<&ReverseNat>) -> MapsResult<()> {
        (**self).set_backend_vip(key, entry)
    }
    fn backend_vips(&self) -> MapsResult<Vec<(BackendKey, ReverseNat)>> {
        (**self).backend_vips()
    }
    fn set_local_addr(&mut self, key: &AddrKey, present: bool) -> MapsResult<()> {
        (**self).set_local_addr(key, present)
    }
    fn local_addrs(&self) -> MapsResult<Vec<AddrKey>> {
        (**self).local_addrs()
    }
    fn set_acl(&mut self, key: &AclKey, verdict: Option<u8>) -> MapsResult<()> {
        (**self).set_acl(key, verdict)
    }
    fn acl_keys(&self) -> MapsResult<Vec<AclKey>> {
        (**self).acl_keys()
    }
    fn set_source_limit(&mut self, vip_id: u32, limit: &SourceLimit) -> MapsResult<()> {
        (**self).set_source_limit(vip_id, limit)
    }
}

/// One write the balancer makes to the maps.
#[derive(Debug, Clone, PartialEq)]
pub enum MapWrite {
    Vip(VipKey, VipMeta),
    RemoveVip(VipKey),
    VipAddr(VipAddrKey, u32),
    Backend(u32, Backend),
    Slots(u32, Vec<u32>),
    BackendLoad(u32, BackendLoad),
    Settings(Settings),
    FilterWord(u32, u64),
    BackendVip(BackendKey, Option<ReverseNat>),
    LocalAddr(AddrKey, bool),
    Acl(AclKey, Option<u8>),
    SourceLimit(u32, SourceLimit),
}

impl MapWrite {
    /// Makes this write to `maps`.
    pub fn apply_to(&self, maps: &mut impl Maps) -> MapsResult<()> {
        match self {
            MapWrite::Vip(key, meta) => maps.set_vip(key, meta),
            MapWrite::RemoveVip(key) => maps.remove_vip(key),
            MapWrite::VipAddr(key, count) => maps.set_vip_addr(key, *count),
            MapWrite::Backend(index, backend) => maps.set_backend(*index, backend),
            MapWrite::Slots(off, ids) => maps.write_slots(*off, ids),
            MapWrite::BackendLoad(index, load) => maps.set_backend_load(*index, load),
            MapWrite::Settings(settings) => maps.set_settings(settings),
            MapWrite::FilterWord(index, word) => maps.set_filter_word(*index, *word),
            MapWrite::BackendVip(key, entry) => maps.set_backend_vip(key, entry.as_ref()),
            MapWrite::LocalAddr(key, present) => maps.set_local_addr(key, *present),
            MapWrite::Acl(key, verdict) => maps.set_acl(key, *verdict),
            MapWrite::SourceLimit(vip_id, limit) => maps.set_source_limit(*vip_id, limit),
        }
    }
}

/// Maps whose writes can be held back: while held, writes are recorded instead of made, and
/// then made in order ([`Staged::release`]) or dropped ([`Staged::discard`]). This is how a
/// change is saved before the data path sees it. Reads always go to the maps.
#[derive(Debug)]
pub struct Staged<M> {
    inner: M,
    held: Option<Vec<MapWrite>>,
}

impl<M: Maps> Staged<M> {
    pub fn new(inner: M) -> Self {
        Self { inner, held: None }
    }

    pub fn inner(&self) -> &M {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut M {
        &mut self.inner
    }

    /// From now on, records writes instead of making them.
    pub fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Makes the recorded writes, in order, and stops holding.
    pub fn release(&mut self) -> MapsResult<()> {
        for write in self.held.take().unwrap_or_default() {
            write.apply_to(&mut self.inner)?;
        }
        Ok(())
    }

    /// Drops the recorded writes and stops holding.
    pub fn discard(&mut self) {
        self.held = None;
    }

    fn write(&mut self, write: MapWrite) -> MapsResult<()> {
        match &mut self.held {
            Some(held) => {
                held.push(write);
                Ok(())
            }
            None => write.apply_to(&mut self.inner),
        }
    }
}

impl<M: Maps> Maps for Staged<M> {
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> MapsResult<()> {
        self.write(MapWrite::Vip(*key, *meta))
    }
    fn remove_vip(&mut self, key: &VipKey) -> MapsResult<()> {
        self.write(MapWrite::RemoveVip(*key))
    }
    fn set_vip_addr(&mut self, key: &VipAddrKey, count: u32) -> MapsResult<()> {
        self.write(MapWrite::VipAddr(*key, count))
    }
    fn set_backend(&mut self, index: u32, backend: &Backend) -> MapsResult<()> {
        self.write(MapWrite::Backend(index, *backend))
    }
    fn write_slots(&mut self, off: u32, ids: &[u32]) -> MapsResult<()> {
        self.write(MapWrite::Slots(off, ids.to_vec()))
    }
    fn set_backend_load(&mut self, index: u32, load: &BackendLoad) -> MapsResult<()> {
        self.write(MapWrite::BackendLoad(index, *load))
    }
    fn set_settings(&mut self, settings: &Settings) -> MapsResult<()> {
        self.write(MapWrite::Settings(*settings))
    }
    fn set_filter_word(&mut self, index: u32, word: u64) -> MapsResult<()> {
        self.write(MapWrite::FilterWord(index, word))
    }
    fn opened(&self, index: u32) -> MapsResult<u64> {
        self.inner.opened(index)
    }
    fn vip_stats(&self, vip_id: u32) -> MapsResult<Stats> {
        self.inner.vip_stats(vip_id)
    }
    fn backend_stats(&self, index: u32) -> MapsResult<Stats> {
        self.inner.backend_stats(index)
    }
    fn vip_keys(&self) -> MapsResult<Vec<VipKey>> {
        self.inner.vip_keys()
    }
    fn vip_addr_keys(&self) -> MapsResult<Vec<VipAddrKey>> {
        self.inner.vip_addr_keys()
    }
    fn used_backends(&self) -> MapsResult<Vec<u32>> {
        self.inner.used_backends()
    }
    fn set_backend_vip(&mut self, key: &BackendKey, entry: Option<&ReverseNat>) -> MapsResult<()> {
        self.write(MapWrite::BackendVip(*key, entry.copied()))
    }
    fn backend_vips(&self) -> MapsResult<Vec<(BackendKey, ReverseNat)>> {
        self.inner.backend_vips()
    }
    fn set_local_addr(&mut self, key: &AddrKey, present: bool) -> MapsResult<()> {
        self.write(MapWrite::LocalAddr(*key, present))
    }
    fn local_addrs(&self) -> MapsResult<Vec<AddrKey>> {
        self.inner.local_addrs()
    }
    fn set_acl(&mut self, key: &AclKey, verdict: Option<u8>) -> MapsResult<()> {
        self.write(MapWrite::Acl(*key, verdict))
    }
    fn acl_keys(&self) -> MapsResult<Vec<AclKey>> {
        self.inner.acl_keys()
    }
    fn set_source_limit(&mut self, vip_id: u32, limit: &SourceLimit) -> MapsResult<()> {
        self.write(MapWrite::SourceLimit(vip_id, *limit))
    }
}

/// The kernel's maps of a loaded program.
pub struct BpfMaps {
    vips: BpfHashMap<MapData, VipKey, VipMeta>,
    vip_addrs: BpfHashMap<MapData, VipAddrKey, u32>,
    backends: Array<MapData, Backend>,
    backend_vips: BpfHashMap<MapData, BackendKey, ReverseNat>,
    local_addrs: BpfHashMap<MapData, AddrKey, u32>,
    slots: Array<MapData, u32>,
    backend_load: Array<MapData, BackendLoad>,
    backend_opened: Array<MapData, u64>,
    settings: Array<MapData, Settings>,
    addr_filter: Array<MapData, u64>,
    vip_stats: PerCpuArray<MapData, Stats>,
    backend_stats: PerCpuArray<MapData, Stats>,
    acl: LpmTrie<MapData, AclMatch, u8>,
    source_limits: Array<MapData, SourceLimit>,
    /// What the slots array holds, as far as this handle wrote it; allocated at the first
    /// write.
    shadow: Option<SlotsShadow>,
    /// Entries of the slots array written, ever.
    slots_written: u64,
}

/// What a handle last wrote to the slots array, so that a table written over an older one
/// writes only the entries that differ. Only the agent writes the array (the data path reads
/// it), and one agent at a time, so what it wrote is what the array holds. Entries it never
/// wrote (maps adopted from a previous agent) are not known, and are always written.
struct SlotsShadow {
    ids: Vec<u32>,
    /// One bit per entry: set if `ids` holds what the array holds.
    known: Vec<u64>,
}

impl SlotsShadow {
    /// Nothing known of an array of `len` entries.
    fn new(len: u32) -> Self {
        Self {
            ids: vec![0; len as usize],
            known: vec![0; len.div_ceil(64) as usize],
        }
    }

    /// Whether entry `i` is known to hold `id`.
    fn holds(&self, i: u32, id: u32) -> bool {
        let i = i as usize;
        self.known[i / 64] & (1 << (i % 64)) != 0 && self.ids[i] == id
    }

    /// Entries `keys` are not known any more.
    fn forget(&mut self, keys: &[u32]) {
        for &i in keys {
            let i = i as usize;
            self.known[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Entries `keys` hold `values`.
    fn remember(&mut self, keys: &[u32], values: &[u32]) {
        for (&i, &id) in keys.iter().zip(values) {
            let i = i as usize;
            self.ids[i] = id;
            self.known[i / 64] |= 1 << (i % 64);
        }
    }
}

/// Converts map `name` to its typed form.
fn typed<T>(map: aya::maps::Map, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl BpfMaps {
    /// Takes the maps out of a loaded program (the program keeps using them).
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Self::from_source(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("no map {name} in the XDP object"))
        })
    }

    /// Opens the maps pinned under `dir` (see `crate::pin`).
    pub fn open(dir: &std::path::Path) -> anyhow::Result<Self> {
        Self::from_source(|name| open_untyped(dir, name))
    }

    /// The maps, each got by name from `source`.
    fn from_source(
        mut source: impl FnMut(&str) -> anyhow::Result<aya::maps::Map>,
    ) -> anyhow::Result<Self> {
        macro_rules! field {
            ($name:expr) => {
                typed(source($name)?, $name)?
            };
        }
        Ok(Self {
            vips: field!(VIPS_MAP),
            vip_addrs: field!(VIP_ADDRS_MAP),
            backends: field!(BACKENDS_MAP),
            backend_vips: field!(BACKEND_VIPS_MAP),
            local_addrs: field!(LOCAL_ADDRS_MAP),
            slots: field!(SLOTS_MAP),
            backend_load: field!(BACKEND_LOAD_MAP),
            backend_opened: field!(BACKEND_OPENED_MAP),
            settings: field!(SETTINGS_MAP),
            addr_filter: field!(ADDR_FILTER_MAP),
            vip_stats: field!(VIP_STATS_MAP),
            backend_stats: field!(BACKEND_STATS_MAP),
            acl: field!(ACL_MAP),
            source_limits: field!(SOURCE_LIMITS_MAP),
            shadow: None,
            slots_written: 0,
        })
    }

    /// The number of entries of the slots array.
    pub fn slots_capacity(&self) -> u32 {
        self.slots.len()
    }

    /// Entries of the slots array this handle wrote, ever (those it knew to hold the id
    /// already are not written again).
    pub fn slots_written(&self) -> u64 {
        self.slots_written
    }

    /// Entry `index` of the slots array.
    pub fn slot(&self, index: u32) -> anyhow::Result<u32> {
        Ok(self.slots.get(&index, 0)?)
    }

    /// The settings the data path uses.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Ok(self.settings.get(&0, 0)?)
    }
}

fn sum(per_cpu: aya::maps::PerCpuValues<Stats>) -> Stats {
    per_cpu.iter().fold(Stats::default(), |a, s| Stats {
        packets: a.packets + s.packets,
        bytes: a.bytes + s.bytes,
        new_flows: a.new_flows + s.new_flows,
    })
}

impl Maps for BpfMaps {
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> MapsResult<()> {
        self.vips.insert(key, meta, 0).on(VIPS_MAP, "updating")
    }
    fn remove_vip(&mut self, key: &VipKey) -> MapsResult<()> {
        self.vips.remove(key).on(VIPS_MAP, "deleting from")
    }
    fn set_vip_addr(&mut self, key: &VipAddrKey, count: u32) -> MapsResult<()> {
        if count == 0 {
            self.vip_addrs
                .remove(key)
                .on(VIP_ADDRS_MAP, "deleting from")
        } else {
            self.vip_addrs
                .insert(key, count, 0)
                .on(VIP_ADDRS_MAP, "updating")
        }
    }
    fn set_backend(&mut self, index: u32, backend: &Backend) -> MapsResult<()> {
        self.backends
            .set(index, backend, 0)
            .on(BACKENDS_MAP, "updating")
    }
    fn write_slots(&mut self, off: u32, ids: &[u32]) -> MapsResult<()> {
        use aya::maps::IterableMap as _;
        let end = u64::from(off) + ids.len() as u64;
        if end > u64::from(self.slots.len()) {
            return Err(MapsError::new(
                SLOTS_MAP,
                "writing",
                format!("slots {off}..{end} are past its end"),
            ));
        }
        // Only the entries that differ from what the array holds: a new table written where
        // an earlier one of the same VIP was differs from it in the slots that moved.
        let shadow = self
            .shadow
            .get_or_insert_with(|| SlotsShadow::new(self.slots.len()));
        let (keys, values): (Vec<u32>, Vec<u32>) = (off..)
            .zip(ids)
            .filter(|&(i, &id)| !shadow.holds(i, id))
            .unzip();
        if keys.is_empty() {
            return Ok(());
        }
        // Until the writes are done, what the array holds there is not known.
        shadow.forget(&keys);
        let map = self.slots.map();
        // One syscall per batch instead of one per slot: a table of 65,537 slots is written in
        // milliseconds. Kernels without batch updates for arrays (before 5.6) get one a slot.
        for (first, (k, v)) in keys.chunks(BATCH).zip(values.chunks(BATCH)).enumerate() {
            match update_batch(map, k, v) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) && first == 0 => {
                    for (i, id) in keys.iter().zip(&values) {
                        self.slots.set(*i, id, 0).on(SLOTS_MAP, "updating")?;
                    }
                    break;
                }
                Err(err) => {
                    return Err(MapsError::new(SLOTS_MAP, "batch-updating", err.to_string()));
                }
            }
        }
        if let Some(shadow) = &mut self.shadow {
            shadow.remember(&keys, &values);
        }
        self.slots_written += keys.len() as u64;
        Ok(())
    }
    fn set_backend_load(&mut self, index: u32, load: &BackendLoad) -> MapsResult<()> {
        self.backend_load
            .set(index, load, 0)
            .on(BACKEND_LOAD_MAP, "updating")
    }
    fn set_settings(&mut self, settings: &Settings) -> MapsResult<()> {
        self.settings
            .set(0, settings, 0)
            .on(SETTINGS_MAP, "updating")
    }
    fn set_filter_word(&mut self, index: u32, word: u64) -> MapsResult<()> {
        self.addr_filter
            .set(index, word, 0)
            .on(ADDR_FILTER_MAP, "updating")
    }
    fn opened(&self, index: u32) -> MapsResult<u64> {
        self.backend_opened
            .get(&index, 0)
            .on(BACKEND_OPENED_MAP, "reading")
    }
    fn vip_stats(&self, vip_id: u32) -> MapsResult<Stats> {
        self.vip_stats
            .get(&vip_id, 0)
            .map(sum)
            .on(VIP_STATS_MAP, "reading")
    }
    fn backend_stats(&self, index: u32) -> MapsResult<Stats> {
        self.backend_stats
            .get(&index, 0)
            .map(sum)
            .on(BACKEND_STATS_MAP, "reading")
    }
    fn vip_keys(&self) -> MapsResult<Vec<VipKey>> {
        self.vips
            .keys()
            .collect::<Result<_, _>>()
            .on(VIPS_MAP, "listing")
    }
    fn vip_addr_keys(&self) -> MapsResult<Vec<VipAddrKey>> {
        self.vip_addrs
            .keys()
            .collect::<Result<_, _>>()
            .on(VIP_ADDRS_MAP, "listing")
    }
    fn used_backends(&self) -> MapsResult<Vec<u32>> {
        let mut used = Vec::new();
        for (index, backend) in self.backends.iter().enumerate() {
            if backend.on(BACKENDS_MAP, "reading")?.state != BACKEND_UNUSED {
                used.push(index as u32);
            }
        }
        Ok(used)
    }
    fn set_backend_vip(&mut self, key: &BackendKey, entry: Option<&ReverseNat>) -> MapsResult<()> {
        match entry {
            Some(entry) => self
                .backend_vips
                .insert(key, entry, 0)
                .on(BACKEND_VIPS_MAP, "updating"),
            None => self
                .backend_vips
                .remove(key)
                .on(BACKEND_VIPS_MAP, "deleting from"),
        }
    }
    fn backend_vips(&self) -> MapsResult<Vec<(BackendKey, ReverseNat)>> {
        self.backend_vips
            .iter()
            .collect::<Result<_, _>>()
            .on(BACKEND_VIPS_MAP, "listing")
    }
    fn set_local_addr(&mut self, key: &AddrKey, present: bool) -> MapsResult<()> {
        if present {
            self.local_addrs
                .insert(key, 1, 0)
                .on(LOCAL_ADDRS_MAP, "updating")
        } else {
            self.local_addrs
                .remove(key)
                .on(LOCAL_ADDRS_MAP, "deleting from")
        }
    }
    fn local_addrs(&self) -> MapsResult<Vec<AddrKey>> {
        self.local_addrs
            .keys()
            .collect::<Result<_, _>>()
            .on(LOCAL_ADDRS_MAP, "listing")
    }
    fn set_acl(&mut self, key: &AclKey, verdict: Option<u8>) -> MapsResult<()> {
        let lpm = LpmKey::new(
            key.prefix_len,
            AclMatch {
                vip_id: key.vip_id,
                family: key.family,
                _pad: key._pad,
                addr: key.addr,
            },
        );
        match verdict {
            Some(verdict) => self.acl.insert(&lpm, verdict, 0).on(ACL_MAP, "updating"),
            None => self.acl.remove(&lpm).on(ACL_MAP, "deleting from"),
        }
    }
    fn acl_keys(&self) -> MapsResult<Vec<AclKey>> {
        self.acl
            .keys()
            .map(|key| {
                key.map(|key| {
                    let data = key.data();
                    AclKey {
                        prefix_len: key.prefix_len(),
                        vip_id: data.vip_id,
                        family: data.family,
                        _pad: data._pad,
                        addr: data.addr,
                    }
                })
            })
            .collect::<Result<_, _>>()
            .on(ACL_MAP, "listing")
    }
    fn set_source_limit(&mut self, vip_id: u32, limit: &SourceLimit) -> MapsResult<()> {
        self.source_limits
            .set(vip_id, limit, 0)
            .on(SOURCE_LIMITS_MAP, "updating")
    }
}

/// Slots written by one batch update.
const BATCH: usize = 1 << 16;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `BPF_MAP_UPDATE_BATCH`: sets `keys[i]` to `values[i]` in `map` in one syscall. `K` and `V`
/// must be the map's key and value sizes (checked: the kernel reads `count` of each).
pub fn update_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let info = map.info().map_err(std::io::Error::other)?;
    if keys.len() != values.len()
        || info.key_size() as usize != size_of::<K>()
        || info.value_size() as usize != size_of::<V>()
    {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).map_err(std::io::Error::other)?,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `keys` and `values` hold
    // `count` elements each of exactly the map's key and value sizes (checked above) and
    // outlive the call, which only reads them; the kernel writes back only `count`, inside
    // `attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// --- Pinned maps ---------------------------------------------------------------------------
//
// Layout under a pin directory (see `crate::pin`): `maps/NAME`, and `maps/NAME-next` for the
// maps of a replacement program until it takes over.

/// Suffix of the pins of a replacement program and its new maps until it takes over (bpffs
/// refuses names with a dot).
pub const NEXT: &str = "-next";

/// Where map `name` is pinned under the pin directory `dir`.
pub fn map_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("maps").join(name)
}

/// Where map `name` is pinned under `dir`: the staged one of a replacement in progress if
/// there is one.
pub fn current_map_path(dir: &Path, name: &str) -> PathBuf {
    let staged = map_path(dir, &format!("{name}{NEXT}"));
    if staged.exists() {
        staged
    } else {
        map_path(dir, name)
    }
}

/// Opens pinned map `name` under `dir`: the staged one of a replacement in progress if there
/// is one (see `Pinned::stage_replacement`).
pub fn open_untyped(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = current_map_path(dir, name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// Opens pinned map `name` under `dir` as a typed map.
pub fn open_map<T>(dir: &Path, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(open_untyped(dir, name)?)
        .with_context(|| format!("pinned map {name} has an unexpected type"))
}

/// The connection table, for counting flows: a handle of its own (walking it needs nothing
/// else), and the buffers its walks reuse.
pub struct Conntrack {
    map: BpfHashMap<MapData, FlowKey, FlowState>,
    walk: std::sync::Mutex<Walk>,
}

/// Entries asked for per `BPF_MAP_LOOKUP_BATCH` call: 8192 keys and values are 448 KiB of
/// buffers, and a 1,000,000-entry table takes about 120 calls.
pub const WALK_BATCH: usize = 8192;

/// What a walk of the connection table keeps from one pass to the next.
struct Walk {
    keys: Vec<FlowKey>,
    values: Vec<FlowState>,
    /// False once the kernel refused batch lookups (before 5.6): walk one entry at a time.
    batched: bool,
}

impl TryFrom<Map> for Conntrack {
    type Error = aya::maps::MapError;

    fn try_from(map: Map) -> Result<Self, Self::Error> {
        Ok(Self::new(map.try_into()?))
    }
}

impl Conntrack {
    /// Walks `map` in batches of [`WALK_BATCH`] entries.
    pub fn new(map: BpfHashMap<MapData, FlowKey, FlowState>) -> Self {
        Self::with_batch(map, WALK_BATCH)
    }

    /// Walks `map` in batches of `batch` entries (at least 1; a batch grows when a hash bucket
    /// holds more entries than it).
    pub fn with_batch(map: BpfHashMap<MapData, FlowKey, FlowState>, batch: usize) -> Self {
        let batch = batch.max(1);
        Self {
            map,
            walk: std::sync::Mutex::new(Walk {
                keys: vec![FlowKey::default(); batch],
                values: vec![FlowState::default(); batch],
                batched: true,
            }),
        }
    }

    /// The map.
    pub fn map(&self) -> &BpfHashMap<MapData, FlowKey, FlowState> {
        &self.map
    }

    /// The map back.
    pub fn into_map(self) -> BpfHashMap<MapData, FlowKey, FlowState> {
        self.map
    }

    /// Entries fetched per batch now (grown past the one asked for if a bucket needed it).
    pub fn batch(&self) -> usize {
        self.walk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .len()
    }

    /// Calls `each` with every entry's value, in batches of lookups (one syscall per batch,
    /// buffers reused across walks); returns how many entries it saw. Entries that the data
    /// path adds or removes during the walk may or may not be seen, as with any walk of a live
    /// hash map; each bucket is read whole, under its lock.
    pub fn for_each(&self, mut each: impl FnMut(&FlowState)) -> MapsResult<usize> {
        self.for_each_entry(|_, state| each(state))
    }

    /// [`Conntrack::for_each`] with every entry's key too.
    pub fn for_each_entry(&self, mut each: impl FnMut(&FlowKey, &FlowState)) -> MapsResult<usize> {
        use aya::maps::IterableMap as _;
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let mut walk = self.walk.lock().unwrap_or_else(|p| p.into_inner());
        if walk.batched {
            let fd = self.map.map().fd().as_fd().as_raw_fd();
            match walk.batches(fd, &mut each) {
                Err((err, true)) if matches!(err.raw_os_error(), Some(libc::EINVAL | ENOTSUPP)) => {
                    // Refused at the first call: this kernel has no batch lookups.
                    log::info!(
                        "the kernel has no batch lookups ({err}): walking the connection table one entry at a time"
                    );
                    walk.batched = false;
                }
                result => {
                    return result.map_err(|(err, _)| {
                        MapsError::new(
                            lb_common::maps::CONNTRACK_MAP,
                            "batch-reading",
                            err.to_string(),
                        )
                    });
                }
            }
        }
        drop(walk);
        self.for_each_entry_by_iter(each)
    }

    /// [`Conntrack::for_each`] one entry at a time (two syscalls an entry): for kernels without
    /// batch lookups, and to check the batched walk against.
    pub fn for_each_by_iter(&self, mut each: impl FnMut(&FlowState)) -> MapsResult<usize> {
        self.for_each_entry_by_iter(|_, state| each(state))
    }

    fn for_each_entry_by_iter(
        &self,
        mut each: impl FnMut(&FlowKey, &FlowState),
    ) -> MapsResult<usize> {
        let mut walked = 0;
        for (key, state) in self.map.iter().flatten() {
            each(&key, &state);
            walked += 1;
        }
        Ok(walked)
    }
}

/// The kernel's `ENOTSUPP` (not in libc: it is not meant to reach user space, but the batch
/// commands answer it for map types without them).
const ENOTSUPP: i32 = 524;

impl Walk {
    /// Reads the map `fd` in batches, calling `each` with every entry; how many there were.
    /// On error, also whether it came at the first call, before `each` saw anything (how a
    /// kernel without batch lookups answers).
    fn batches(
        &mut self,
        fd: i32,
        each: &mut impl FnMut(&FlowKey, &FlowState),
    ) -> Result<usize, (std::io::Error, bool)> {
        let mut walked = 0;
        // The kernel's opaque position (a bucket index for hash maps); none before the first
        // call.
        let (mut at, mut next) = (None::<u64>, 0u64);
        loop {
            match lookup_batch(fd, at.as_ref(), &mut next, &mut self.keys, &mut self.values) {
                Ok(count) => {
                    for (key, value) in self.keys[..count].iter().zip(&self.values[..count]) {
                        each(key, value);
                    }
                    walked += count;
                }
                Err((err, count)) => match err.raw_os_error() {
                    // The end of the table, with its last entries.
                    Some(libc::ENOENT) => {
                        for (key, value) in self.keys[..count].iter().zip(&self.values[..count]) {
                            each(key, value);
                        }
                        return Ok(walked + count);
                    }
                    // One bucket holds more entries than a batch: grow it and read that bucket
                    // again (the position did not move).
                    Some(libc::ENOSPC) if count == 0 => {
                        let grown = self.keys.len() * 2;
                        self.keys.resize(grown, FlowKey::default());
                        self.values.resize(grown, FlowState::default());
                        continue;
                    }
                    _ => return Err((err, at.is_none())),
                },
            }
            at = Some(next);
        }
    }
}

/// `BPF_MAP_LOOKUP_BATCH`: reads up to `keys.len()` entries of the hash map `fd` into `keys`
/// and `values`, from position `token` (the start if `None`), and writes the position after
/// them to `next`. Returns how many it read; on error, also how many it read (the kernel
/// answers `ENOENT` with the last entries of the table).
fn lookup_batch(
    fd: i32,
    token: Option<&u64>,
    next: &mut u64,
    keys: &mut [FlowKey],
    values: &mut [FlowState],
) -> Result<usize, (std::io::Error, usize)> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: token.map_or(0, |t| t as *const u64 as u64),
        out_batch: next as *mut u64 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed. `keys` and `values` have
    // room for `count` entries of the map's key and value types (`FlowKey`, `FlowState`: plain
    // `repr(C)` integers, valid for any bytes the kernel writes); `token` and `next` are 8
    // bytes each, more than the hash map's 4-byte position. All outlive the call, which writes
    // only into them and `attr.count`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    let count = (attr.count as usize).min(keys.len());
    if ret < 0 {
        return Err((std::io::Error::last_os_error(), count));
    }
    Ok(count)
}

/// Counts per backend id: backend ids in a slot of their index (`lb_common::maps::
/// backend_index`), as the data path does; an id whose slot another id holds goes to a map.
struct PerBackend {
    slots: Vec<(u32, u32)>,
    others: HashMap<u32, u32>,
}

impl PerBackend {
    fn new() -> Self {
        Self {
            slots: vec![(0, 0); lb_common::maps::MAX_BACKENDS as usize],
            others: HashMap::new(),
        }
    }

    fn add(&mut self, id: u32) {
        let slot = &mut self.slots[lb_common::maps::backend_index(id) as usize];
        if slot.1 == 0 || slot.0 == id {
            *slot = (id, slot.1 + 1);
        } else {
            *self.others.entry(id).or_default() += 1;
        }
    }

    fn into_map(self) -> HashMap<u32, u32> {
        let mut counts = self.others;
        for (id, count) in self.slots {
            if count > 0 {
                counts.insert(id, count);
            }
        }
        counts
    }
}

/// Tracked flows per backend id that are open and have not expired at `now_ns` (the data path's
/// `CLOCK_MONOTONIC`), by walking the connection table in batches; and the number of entries
/// walked. A walk that fails part way counts what it saw, and logs why.
pub fn active_flows(
    conntrack: &Conntrack,
    now_ns: u64,
    timeouts: &Timeouts,
) -> (HashMap<u32, u32>, usize) {
    count_active(now_ns, timeouts, |each| conntrack.for_each(each))
}

/// [`active_flows`] walking one entry at a time, as it did before batch lookups: what the
/// batched walk is checked against.
pub fn active_flows_by_iter(
    conntrack: &Conntrack,
    now_ns: u64,
    timeouts: &Timeouts,
) -> (HashMap<u32, u32>, usize) {
    count_active(now_ns, timeouts, |each| conntrack.for_each_by_iter(each))
}

fn count_active(
    now_ns: u64,
    timeouts: &Timeouts,
    walk: impl FnOnce(&mut dyn FnMut(&FlowState)) -> MapsResult<usize>,
) -> (HashMap<u32, u32>, usize) {
    let mut active = PerBackend::new();
    let mut walked = 0;
    let result = walk(&mut |state: &FlowState| {
        walked += 1;
        if is_active(state, now_ns, timeouts) {
            active.add(state.backend_id);
        }
    });
    if let Err(err) = result {
        log::warn!("counting connections: {err} (counted the {walked} entries read before)");
    }
    (active.into_map(), walked)
}

/// An in-memory twin of the maps, for unit tests of the balancer.
#[derive(Debug, Default)]
pub struct MemMaps {
    pub vips: HashMap<VipKey, VipMeta>,
    pub vip_addrs: HashMap<VipAddrKey, u32>,
    pub backends: HashMap<u32, Backend>,
    pub slots: HashMap<u32, u32>,
    pub backend_load: HashMap<u32, BackendLoad>,
    pub opened: HashMap<u32, u64>,
    pub settings: Settings,
    /// Non-zero words of the address filter.
    pub filter: HashMap<u32, u64>,
    pub backend_vips: HashMap<BackendKey, ReverseNat>,
    pub local_addrs: std::collections::HashSet<AddrKey>,
    pub acl: HashMap<AclKey, u8>,
    pub source_limits: HashMap<u32, SourceLimit>,
}

impl MemMaps {
    /// The ids in the slots region `[off, off + len)`.
    pub fn region(&self, off: u32, len: u32) -> Vec<u32> {
        (off..off + len)
            .map(|i| self.slots.get(&i).copied().unwrap_or(0))
            .collect()
    }
}

impl Maps for MemMaps {
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> MapsResult<()> {
        self.vips.insert(*key, *meta);
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> MapsResult<()> {
        self.vips.remove(key);
        Ok(())
    }
    fn set_vip_addr(&mut self, key: &VipAddrKey, count: u32) -> MapsResult<()> {
        if count == 0 {
            self.vip_addrs.remove(key);
        } else {
            self.vip_addrs.insert(*key, count);
        }
        Ok(())
    }
    fn set_backend(&mut self, index: u32, backend: &Backend) -> MapsResult<()> {
        self.backends.insert(index, *backend);
        Ok(())
    }
    fn write_slots(&mut self, off: u32, ids: &[u32]) -> MapsResult<()> {
        for (i, id) in (off..).zip(ids) {
            self.slots.insert(i, *id);
        }
        Ok(())
    }
    fn set_backend_load(&mut self, index: u32, load: &BackendLoad) -> MapsResult<()> {
        self.backend_load.insert(index, *load);
        Ok(())
    }
    fn set_settings(&mut self, settings: &Settings) -> MapsResult<()> {
        self.settings = *settings;
        Ok(())
    }
    fn set_filter_word(&mut self, index: u32, word: u64) -> MapsResult<()> {
        if word == 0 {
            self.filter.remove(&index);
        } else {
            self.filter.insert(index, word);
        }
        Ok(())
    }
    fn opened(&self, index: u32) -> MapsResult<u64> {
        Ok(self.opened.get(&index).copied().unwrap_or(0))
    }
    fn vip_stats(&self, _vip_id: u32) -> MapsResult<Stats> {
        Ok(Stats::default())
    }
    fn backend_stats(&self, _index: u32) -> MapsResult<Stats> {
        Ok(Stats::default())
    }
    fn vip_keys(&self) -> MapsResult<Vec<VipKey>> {
        Ok(self.vips.keys().copied().collect())
    }
    fn vip_addr_keys(&self) -> MapsResult<Vec<VipAddrKey>> {
        Ok(self.vip_addrs.keys().copied().collect())
    }
    fn used_backends(&self) -> MapsResult<Vec<u32>> {
        let mut used: Vec<u32> = self
            .backends
            .iter()
            .filter(|(_, b)| b.state != BACKEND_UNUSED)
            .map(|(&index, _)| index)
            .collect();
        used.sort_unstable();
        Ok(used)
    }
    fn set_backend_vip(&mut self, key: &BackendKey, entry: Option<&ReverseNat>) -> MapsResult<()> {
        match entry {
            Some(entry) => self.backend_vips.insert(*key, *entry),
            None => self.backend_vips.remove(key),
        };
        Ok(())
    }
    fn backend_vips(&self) -> MapsResult<Vec<(BackendKey, ReverseNat)>> {
        Ok(self.backend_vips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_local_addr(&mut self, key: &AddrKey, present: bool) -> MapsResult<()> {
        if present {
            self.local_addrs.insert(*key);
        } else {
            self.local_addrs.remove(key);
        }
        Ok(())
    }
    fn local_addrs(&self) -> MapsResult<Vec<AddrKey>> {
        Ok(self.local_addrs.iter().copied().collect())
    }
    fn set_acl(&mut self, key: &AclKey, verdict: Option<u8>) -> MapsResult<()> {
        match verdict {
            Some(verdict) => self.acl.insert(*key, verdict),
            None => self.acl.remove(key),
        };
        Ok(())
    }
    fn acl_keys(&self) -> MapsResult<Vec<AclKey>> {
        Ok(self.acl.keys().copied().collect())
    }
    fn set_source_limit(&mut self, vip_id: u32, limit: &SourceLimit) -> MapsResult<()> {
        if *limit == SourceLimit::default() {
            self.source_limits.remove(&vip_id);
        } else {
            self.source_limits.insert(vip_id, *limit);
        }
        Ok(())
    }
}
