//! Typed access to the XDP program's maps, behind a trait so that the balancer's logic can be
//! unit-tested against an in-memory twin ([`MemMaps`]) and run against the kernel ([`BpfMaps`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray},
};
use lb_common::maps::{
    ADDR_FILTER_MAP, AddrKey, BACKEND_LOAD_MAP, BACKEND_OPENED_MAP, BACKEND_STATS_MAP,
    BACKEND_UNUSED, BACKEND_VIPS_MAP, BACKENDS_MAP, Backend, BackendKey, BackendLoad,
    LOCAL_ADDRS_MAP, ReverseNat, SETTINGS_MAP, SLOTS_MAP, Settings, Stats, VIP_ADDRS_MAP,
    VIP_STATS_MAP, VIPS_MAP, VipAddrKey, VipKey, VipMeta,
};
use lb_common::{
    FlowKey,
    conntrack::{FlowState, Timeouts, is_expired},
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
        })
    }

    /// The number of entries of the slots array.
    pub fn slots_capacity(&self) -> u32 {
        self.slots.len()
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
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let end = u64::from(off) + ids.len() as u64;
        if end > u64::from(self.slots.len()) {
            return Err(MapsError::new(
                SLOTS_MAP,
                "writing",
                format!("slots {off}..{end} are past its end"),
            ));
        }
        let fd = self.slots.map().fd().as_fd().as_raw_fd();
        // One syscall per batch instead of one per slot: a table of 65,537 slots is written in
        // milliseconds. Kernels without batch updates for arrays (before 5.6) get one a slot.
        for (at, chunk) in (off..).step_by(BATCH).zip(ids.chunks(BATCH)) {
            let keys: Vec<u32> = (at..).take(chunk.len()).collect();
            match update_batch(fd, &keys, chunk) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) && at == off => {
                    for (i, id) in (off..).zip(ids) {
                        self.slots.set(i, id, 0).on(SLOTS_MAP, "updating")?;
                    }
                    return Ok(());
                }
                Err(err) => {
                    return Err(MapsError::new(SLOTS_MAP, "batch-updating", err.to_string()));
                }
            }
        }
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
}

/// Slots written by one batch update.
const BATCH: usize = 1 << 16;

/// `BPF_MAP_UPDATE_BATCH`: sets `keys[i]` to `values[i]` in the map `fd` (of `u32` keys and
/// values) in one syscall.
fn update_batch(fd: i32, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
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
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `keys` and `values` hold
    // `count` u32 each (the map's key and value size) and outlive the call, which only reads
    // them; the kernel writes back only `count`, inside `attr`.
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

/// The connection table, for counting flows (a handle of its own, so that walking it needs
/// nothing else).
pub type Conntrack = BpfHashMap<MapData, FlowKey, FlowState>;

/// Tracked flows per backend id that are open and have not expired at `now_ns` (the data path's
/// `CLOCK_MONOTONIC`), by walking the connection table; and the number of entries walked.
pub fn active_flows(
    conntrack: &Conntrack,
    now_ns: u64,
    timeouts: &Timeouts,
) -> (HashMap<u32, u32>, usize) {
    let mut active: HashMap<u32, u32> = HashMap::new();
    let mut walked = 0;
    for (_, state) in conntrack.iter().flatten() {
        walked += 1;
        let open = !matches!(
            state.state,
            lb_common::conntrack::STATE_CLOSED | lb_common::conntrack::STATE_FIN
        );
        if open && !is_expired(&state, now_ns, timeouts) {
            *active.entry(state.backend_id).or_default() += 1;
        }
    }
    (active, walked)
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
}
