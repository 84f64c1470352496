//! Picking a backend for a new flow, by the VIP's scheduler. The choices themselves are the
//! pure functions of `lb_common::{maglev, sched, hash}`; this module only reads the maps.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    Counter, FlowKey,
    hash::{addr_hash, flow_hash},
    maglev,
    maps::{BACKEND_UP, Backend, VipMeta, backend_index, scheduler},
    sched::{self, Load},
};

use crate::maps::{BACKEND_LOAD, BACKEND_OPENED, BACKENDS, RR_CURSORS, SLOTS};

/// The backend id at position `pos` of the region starting at `off`.
#[inline(always)]
fn slot(off: u32, pos: u32) -> Option<u32> {
    SLOTS.get(off.wrapping_add(pos)).copied()
}

#[inline(always)]
fn random() -> u32 {
    // SAFETY: a BPF helper without arguments or preconditions.
    unsafe { bpf_get_prandom_u32() }
}

/// The backend with id `id`, if it is up.
#[inline(always)]
pub fn backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(backend_index(id))
}

/// Least-connections load of backend `id`: what the agent published plus the flows opened
/// since.
#[inline(always)]
fn load(id: u32) -> Load {
    let index = backend_index(id);
    let weight = backend(id).map_or(0, |b| b.weight);
    let opened = opened(index);
    let conns = BACKEND_LOAD.get(index).map_or(0, |published| {
        let since = opened.saturating_sub(published.opened_base);
        u64::from(published.active)
            .saturating_add(since)
            .min(u64::from(u32::MAX)) as u32
    });
    Load { conns, weight }
}

/// Flows opened to backend slot `index` so far, across CPUs.
#[inline(always)]
fn opened(index: u32) -> u64 {
    BACKEND_OPENED.get_ptr(index).map_or(0, |ptr| {
        // SAFETY: a live, aligned `u64` array element; an aligned 8-byte load is single-copy
        // atomic in BPF, and the BPF backend cannot lower an `AtomicU64::load`.
        unsafe { ptr.read_volatile() }
    })
}

/// Counts a flow opened to backend slot `index`, atomically across CPUs.
#[inline(always)]
pub fn count_opened(index: u32) {
    let Some(ptr) = BACKEND_OPENED.get_ptr_mut(index) else {
        return;
    };
    // The BPF target has atomic adds but no compare-and-swap, so core offers no `fetch_add`
    // there; the intrinsic compiles to the BPF atomic add instruction.
    #[cfg(target_arch = "bpf")]
    // SAFETY: `ptr` is a live, aligned `u64` element of an array map.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            ptr, 1,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as above; only ever accessed atomically.
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(ptr)
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Picks the backend for a new flow `key` of the VIP `meta`.
#[inline(always)]
pub fn pick(meta: &VipMeta, key: &FlowKey, seed: u32) -> Result<(u32, &'static Backend), Counter> {
    let id = match meta.scheduler {
        scheduler::MAGLEV | scheduler::SOURCE_HASH => {
            if meta.table_len == 0 {
                return Err(Counter::DropNoBackend);
            }
            let hash = if meta.scheduler == scheduler::MAGLEV {
                flow_hash(key, seed)
            } else {
                addr_hash(&key.src_addr, seed)
            };
            slot(meta.table_off, maglev::slot(hash, meta.table_len))
        }
        scheduler::ROUND_ROBIN | scheduler::WEIGHTED_ROUND_ROBIN => {
            if meta.table_len == 0 {
                return Err(Counter::DropNoBackend);
            }
            let cursor = RR_CURSORS
                .get_ptr_mut(meta.vip_id)
                .ok_or(Counter::DropInternal)?;
            // SAFETY: this CPU's slot of a per-CPU array; XDP runs with preemption disabled, so
            // nothing else touches it meanwhile.
            let cursor = unsafe { &mut *cursor };
            let pos = sched::next_cursor(*cursor, meta.table_len);
            *cursor = pos;
            slot(meta.table_off, pos)
        }
        scheduler::RANDOM => {
            if meta.list_len == 0 {
                return Err(Counter::DropNoBackend);
            }
            slot(meta.list_off, sched::random_index(random(), meta.list_len))
        }
        scheduler::WEIGHTED_RANDOM => {
            if meta.table_len == 0 {
                return Err(Counter::DropNoBackend);
            }
            slot(
                meta.table_off,
                sched::random_index(random(), meta.table_len),
            )
        }
        scheduler::LEAST_CONN => match meta.list_len {
            0 => return Err(Counter::DropNoBackend),
            1 => slot(meta.list_off, 0),
            len => {
                let (i, j) = sched::two_choices(random(), len);
                let a = slot(meta.list_off, i).ok_or(Counter::DropInternal)?;
                let b = slot(meta.list_off, j).ok_or(Counter::DropInternal)?;
                Some(sched::pick_least_loaded(a, load(a), b, load(b)))
            }
        },
        _ => return Err(Counter::DropInternal),
    };
    let id = id.ok_or(Counter::DropInternal)?;
    match backend(id) {
        Some(b) if b.id == id && b.state == BACKEND_UP => Ok((id, b)),
        // An empty table slot, or a backend the agent is taking out of this table right now.
        _ => Err(Counter::DropNoBackend),
    }
}
