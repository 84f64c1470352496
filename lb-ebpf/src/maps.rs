//! The program's maps. Names and sizes come from `lb-common` so the agent finds them.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use lb_common::counters::COUNTER_COUNT;

/// One `u64` per [`lb_common::Counter`], per CPU.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);
