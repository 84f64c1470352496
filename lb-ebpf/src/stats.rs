//! Counting outcomes.

use lb_common::Counter;

use crate::maps::COUNTERS;

/// Adds one to `counter` on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the slot belongs to this CPU's copy of a per-CPU array and XDP programs run
        // with preemption disabled, so nothing else writes it concurrently.
        unsafe { *slot += 1 };
    }
}
