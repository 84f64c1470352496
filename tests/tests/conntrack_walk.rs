//! The agent's count of active connections per backend, read from the connection table in
//! batches (`BPF_MAP_LOOKUP_BATCH`), is exactly what the table holds: the same as one lookup
//! per entry, whatever the batch size, hash buckets of several entries included.

use std::collections::HashMap;

use lb_common::{
    FlowKey,
    conntrack::{
        DEFAULT_TIMEOUTS, FlowState, STATE_CLOSED, STATE_ESTABLISHED, STATE_FIN, STATE_SYN_SENT,
        STATE_UDP,
    },
    maps::CONNTRACK_MAP,
};
use lb_user::{
    loader::{LoadOptions, Loaded},
    maps::{Conntrack, active_flows, active_flows_by_iter},
};

const SECOND_NS: u64 = 1_000_000_000;
/// The table's capacity: 1024 hash buckets. Filled to 600 entries, far enough from full that
/// the LRU map evicts nothing (it starts evicting when fewer than 128 free entries are left for
/// a CPU to take), close enough that many buckets hold two or more entries.
const CAPACITY: u32 = 1024;
const ENTRIES: u32 = 600;

fn key(i: u32) -> FlowKey {
    let mut key = FlowKey {
        proto: 6,
        family: 4,
        ..FlowKey::default()
    };
    key.src_addr[..4].copy_from_slice(&(0x0a80_0000 + i).to_be_bytes());
    key.dst_addr[..4].copy_from_slice(&[198, 19, 0, 1]);
    key.src_port = (1024 + (i % 60_000) as u16).to_be_bytes();
    key.dst_port = 80u16.to_be_bytes();
    key
}

/// Entry `i` and whether it is an active connection at `now`: five backends (two of them
/// sharing a slot index, ids `7` and `1 << 16 | 7`), every state, fresh and expired entries.
fn entry(i: u32, now: u64) -> (FlowState, bool) {
    let backend_id = [7, 1 << 16 | 7, 12, 3, 40_000][(i % 5) as usize];
    let (state, active) = match (i / 5) % 6 {
        0 => (STATE_ESTABLISHED, true),
        1 => (STATE_SYN_SENT, true),
        2 => (STATE_UDP, true),
        3 => (STATE_FIN, false),
        4 => (STATE_CLOSED, false),
        _ => (STATE_ESTABLISHED, false),
    };
    // Established entries of the last kind were last seen beyond their timeout.
    let idle = if (i / 5) % 6 == 5 {
        DEFAULT_TIMEOUTS.tcp_established_ns + SECOND_NS
    } else {
        i as u64 % 3 * SECOND_NS
    };
    let flow = FlowState {
        backend_id,
        state,
        last_seen_ns: now - idle,
        ..FlowState::default()
    };
    (flow, active)
}

#[test]
#[ignore = "needs root"]
fn batched_walk_counts_exactly_what_the_table_holds() {
    let mut loaded = Loaded::load_with(LoadOptions {
        conntrack_capacity: CAPACITY,
        ..LoadOptions::default()
    })
    .unwrap_or_else(|err| panic!("loading the XDP program: {err:#}"));
    let mut map: aya::maps::HashMap<_, FlowKey, FlowState> = loaded
        .ebpf
        .take_map(CONNTRACK_MAP)
        .expect("connection table")
        .try_into()
        .expect("connection table type");
    let now = 1_000_000 * SECOND_NS;

    // An empty table: the first batch call is the last.
    let empty = Conntrack::new(map);
    assert_eq!(
        active_flows(&empty, now, &DEFAULT_TIMEOUTS),
        (HashMap::new(), 0)
    );
    map = empty.into_map();

    let mut expected: HashMap<u32, u32> = HashMap::new();
    for i in 0..ENTRIES {
        let (flow, active) = entry(i, now);
        map.insert(key(i), flow, 0).expect("inserting an entry");
        if active {
            *expected.entry(flow.backend_id).or_default() += 1;
        }
    }
    assert_eq!(expected.len(), 5, "every backend has active flows");
    assert_eq!(
        expected.values().sum::<u32>(),
        ENTRIES / 6 * 3,
        "half the entries are active"
    );

    // One entry a time: the table holds every entry inserted.
    let mut table = Conntrack::new(map);
    let by_iter = active_flows_by_iter(&table, now, &DEFAULT_TIMEOUTS);
    assert_eq!(
        by_iter,
        (expected.clone(), ENTRIES as usize),
        "one lookup per entry"
    );

    // Batches of 1 entry: every bucket holding two entries or more is refused (ENOSPC) until
    // the batch has grown to hold it; odd sizes end batches anywhere; large ones read the
    // table in one call.
    for batch in [1, 7, 64, 8192] {
        let map = table.into_map();
        table = Conntrack::with_batch(map, batch);
        for pass in 0..2 {
            let counted = active_flows(&table, now, &DEFAULT_TIMEOUTS);
            assert_eq!(counted, by_iter, "batches of {batch}, pass {pass}");
        }
        if batch == 1 {
            assert!(
                table.batch() > 1,
                "600 entries in 1024 buckets share buckets: the batch grew"
            );
        }
    }

    // Every entry expired: all walked, none active.
    let later = now + DEFAULT_TIMEOUTS.tcp_established_ns + 10 * SECOND_NS;
    let (active, walked) = active_flows(&table, later, &DEFAULT_TIMEOUTS);
    assert_eq!((active, walked), (HashMap::new(), ENTRIES as usize));
}
