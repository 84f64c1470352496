//! The agent's walk of the connection table: CPU time of one pass of
//! `lb_user::maps::active_flows` (what the agent runs to count each backend's active flows)
//! over the real `CONNTRACK` map of the loaded object, filled with 1,000,000 open, fresh flows.

use std::time::{Duration, Instant};

use aya::maps::IterableMap as _;
use lb_common::{
    FlowKey,
    conntrack::{DEFAULT_TIMEOUTS, FlowState, STATE_ESTABLISHED, STATE_UDP},
    flow::{FAMILY_IPV4, PROTO_TCP, PROTO_UDP},
    maps::CONNTRACK_MAP,
};
use lb_tests::bench::AgentWalk;
use lb_user::maps::{Conntrack, active_flows, update_batch};
use nix::sys::resource::{UsageWho, getrusage};

use super::{median, min};

/// Flows in the table (its default capacity).
const FLOWS: usize = 1_000_000;
/// Entries per `BPF_MAP_UPDATE_BATCH` call.
const BATCH: usize = 1 << 16;
/// Backends the flows are spread over.
const BACKENDS: u32 = 100;

/// `runs` passes of `active_flows` over a full table, from this (pinned) thread.
pub fn agent_walk(runs: usize) -> AgentWalk {
    let mut loaded = lb_tests::program::load();
    assert_eq!(
        loaded.options().conntrack_capacity as usize,
        FLOWS,
        "the default capacity"
    );
    let table: Conntrack = loaded
        .ebpf
        .take_map(CONNTRACK_MAP)
        .expect("CONNTRACK map")
        .try_into()
        .expect("CONNTRACK type");
    let now = monotonic_ns();

    let fill = Instant::now();
    let entries: Vec<(FlowKey, FlowState)> = (0..FLOWS as u32).map(|i| flow(i, now)).collect();
    for chunk in entries.chunks(BATCH) {
        let (keys, values): (Vec<FlowKey>, Vec<FlowState>) = chunk.iter().copied().unzip();
        update_batch(table.map().map(), &keys, &values)
            .unwrap_or_else(|err| panic!("BPF_MAP_UPDATE_BATCH of {CONNTRACK_MAP}: {err}"));
    }
    let fill_seconds = fill.elapsed().as_secs_f64();
    eprintln!("bench: {FLOWS} flows written into {CONNTRACK_MAP} in {fill_seconds:.2} s");

    let mut cpu_ms = Vec::new();
    let mut system_ms = Vec::new();
    let mut wall_ms = Vec::new();
    let mut walked = 0;
    for _ in 0..runs {
        let before = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
        let start = Instant::now();
        let (active, count) = active_flows(&table, monotonic_ns(), &DEFAULT_TIMEOUTS);
        let wall = start.elapsed();
        let after = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1_000)
        };
        let user = tv(after.user_time()) - tv(before.user_time());
        let system = tv(after.system_time()) - tv(before.system_time());
        // Every flow written is open and fresh, so every entry walked counts.
        let counted: u64 = active.values().map(|&n| u64::from(n)).sum();
        assert_eq!(counted, count as u64, "every walked flow is active");
        assert_eq!(active.len(), BACKENDS as usize, "flows of every backend");
        walked = count;
        cpu_ms.push(ms(user + system));
        system_ms.push(ms(system));
        wall_ms.push(ms(wall));
        eprintln!(
            "bench: active_flows over {count} entries: {:.1} ms CPU ({:.1} ms system), {:.1} ms wall",
            ms(user + system),
            ms(system),
            ms(wall)
        );
    }
    // An LRU map may evict a few entries before it is full; nearly all must be there.
    assert!(
        walked >= FLOWS * 99 / 100,
        "{walked} of {FLOWS} flows in the table"
    );
    AgentWalk {
        method: format!(
            "the loaded object's CONNTRACK (LRU hash, capacity {FLOWS}) filled with {FLOWS} \
             open, fresh IPv4 flows over {BACKENDS} backends (BPF_MAP_UPDATE_BATCH); \
             CPU time (getrusage RUSAGE_THREAD, user + system) of one call of \
             lb_user::maps::active_flows, {runs} passes"
        ),
        entries: FLOWS,
        walked,
        fill_seconds,
        cpu_ms_min: min(&cpu_ms),
        cpu_ms_median: median(&cpu_ms),
        system_ms_median: median(&system_ms),
        wall_ms_median: median(&wall_ms),
        cpu_ms_runs: cpu_ms,
    }
}

/// Flow `i`: a client of 10.128.0.0/9 to a VIP, TCP established or (every fourth) UDP, on
/// backend `i % BACKENDS`, last seen `now`.
fn flow(i: u32, now: u64) -> (FlowKey, FlowState) {
    let udp = i % 4 == 3;
    let mut key = FlowKey {
        src_port: (1024 + (i % 60_000) as u16).to_be_bytes(),
        dst_port: if udp { 53u16 } else { 80 }.to_be_bytes(),
        proto: if udp { PROTO_UDP } else { PROTO_TCP },
        family: FAMILY_IPV4,
        ..FlowKey::default()
    };
    key.src_addr[..4].copy_from_slice(&(0x0a80_0000 + i).to_be_bytes());
    key.dst_addr[..4].copy_from_slice(&[198, 19, 0, 1]);
    let state = FlowState {
        backend_id: i % BACKENDS,
        state: if udp { STATE_UDP } else { STATE_ESTABLISHED },
        born: [0; 3],
        last_seen_ns: now,
    };
    (key, state)
}

/// `CLOCK_MONOTONIC` in ns: the data path's clock.
fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}
