//! Counting outcomes and traffic.

use lb_common::{Counter, counters::Event, maps::Stats};

use crate::maps::{BACKEND_STATS, COUNTERS, EVENTS, VIP_STATS};

/// Adds one to `counter` on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the slot belongs to this CPU's copy of a per-CPU array and XDP programs run
        // with preemption disabled, so nothing else writes it concurrently.
        unsafe { *slot += 1 };
    }
}

/// Adds one to `event` on this CPU.
#[inline(always)]
pub fn count_event(event: Event) {
    if let Some(slot) = EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: as in `count`: this CPU's slot of a per-CPU array, no concurrent writer.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn add(slot: Option<*mut Stats>, bytes: u64, new_flow: bool) {
    if let Some(stats) = slot {
        // SAFETY: as in `count`: this CPU's slot of a per-CPU array, no concurrent writer.
        let stats = unsafe { &mut *stats };
        stats.packets += 1;
        stats.bytes += bytes;
        stats.new_flows += u64::from(new_flow);
    }
}

/// Counts a packet of `bytes` for VIP `vip_id` and backend slot `backend_index`.
#[inline(always)]
pub fn count_traffic(vip_id: u32, backend_index: u32, bytes: u64, new_flow: bool) {
    add(VIP_STATS.get_ptr_mut(vip_id), bytes, new_flow);
    add(BACKEND_STATS.get_ptr_mut(backend_index), bytes, new_flow);
}
