//! Control plane: from a CLI command to the new table being live in the data path.
//!
//! `xdplb run` in the gateway namespace of a two-backend topology, with its own socket, pin dir
//! and state file. Each change is `xdplb backend set VIP B0 --state down` (or `up` again): the
//! agent rebuilds the VIP's Maglev ring (M = 65537, then the same at M = 1,048,573), writes it
//! into a fresh region of the slots array and switches the VIP's entry in `VIPS` to it, which
//! is the moment a packet sees the new table. The benchmark polls that entry in the pinned
//! `VIPS` map from the moment it starts the CLI process, and records when it changed (live) and
//! when the CLI exited. After every `down`, real TCP connections from the client to the VIP
//! must all land on the other backend.
//!
//! Also here, the agent's other periodic work on a large table: counting connections over a
//! full connection table ([`conntrack_walk`]).

use std::{
    net::SocketAddr,
    process::Child,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use lb_common::{
    FlowKey,
    conntrack::{DEFAULT_TIMEOUTS, FlowState, STATE_ESTABLISHED},
    maglev::{DEFAULT_RING_SIZE, MAX_RING_SIZE},
    maps::{CONNTRACK_MAP, VIPS_MAP, VipKey, VipMeta},
};
use lb_tests::bench::{ConntrackWalk, ControlPlane, ControlRing};
use lb_tests::{
    agent::{Agent, VIP, VIP_ADDR},
    netns::{Server, Topology, ident_of, tcp_request},
};

use super::{median, min};

/// How long a CLI command may take to finish, a change to show.
const TIMEOUT: Duration = Duration::from_secs(20);

/// `changes` CLI changes at each ring size, alternately taking backend 0 down and up again.
/// Without the slots array's write times (`slots_write`) and the connection-table walk, which
/// the caller measures.
pub fn control_plane(changes: usize) -> ControlPlane {
    let topo = Topology::new(2).unwrap_or_else(|err| panic!("topology: {err:#}"));
    let _servers: Vec<Server> = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| ns.tcp_server(80, &format!("b{i}")))
        .collect();
    let backend = |i: usize| SocketAddr::new(topo.backends[i].v4.into(), 80).to_string();
    let mut agent = Agent::new(&topo);
    agent.start(&[]);
    agent.ok(&["vip", "add", VIP]);
    for i in 0..2 {
        agent.ok(&["backend", "add", VIP, &backend(i)]);
    }
    let vips: HashMap<MapData, VipKey, VipMeta> =
        lb_user::pin::open_map(&agent.pin_dir, VIPS_MAP).expect("pinned VIPS map");
    let table = || -> (u32, u32) {
        let entries: Vec<(VipKey, VipMeta)> = vips.iter().map(|e| e.expect("VIPS entry")).collect();
        assert_eq!(entries.len(), 1, "one VIP");
        (entries[0].1.table_off, entries[0].1.table_len)
    };

    let (mut rings, mut polls) = (Vec::new(), 0u64);
    for ring in [DEFAULT_RING_SIZE, MAX_RING_SIZE] {
        agent.ok(&["vip", "set", VIP, "--ring-size", &ring.to_string()]);
        assert_eq!(table().1, ring, "the VIP's table has {ring} slots");
        let (mut live_ms, mut cli_ms) = (Vec::new(), Vec::new());
        for change in 0..changes {
            let state = if change % 2 == 0 { "down" } else { "up" };
            let before = table();
            let start = Instant::now();
            let mut cli = agent.spawn_cli(&["backend", "set", VIP, &backend(0), "--state", state]);
            let live = loop {
                polls += 1;
                if table() != before {
                    break start.elapsed();
                }
                assert!(
                    start.elapsed() < TIMEOUT,
                    "change {change} ({state}) at M={ring} not live within {TIMEOUT:?}"
                );
                std::hint::spin_loop();
            };
            let status = wait_bounded(&mut cli, start);
            let done = start.elapsed();
            assert!(status, "xdplb backend set ... --state {state} failed");
            assert_eq!(table().1, ring, "the new table has {ring} slots");
            live_ms.push(live.as_secs_f64() * 1e3);
            cli_ms.push(done.as_secs_f64() * 1e3);
            if state == "down" {
                // New connections now all go to backend 1.
                for n in 0..4 {
                    let line = format!("after change {change} at M={ring}, connection {n}");
                    let answer = topo
                        .client
                        .run(|| tcp_request(VIP_ADDR, &line))
                        .unwrap_or_else(|err| panic!("{line}: {err:#}"));
                    assert_eq!(ident_of(&answer, &line).as_deref(), Some("b1"), "{line}");
                }
            }
        }
        eprintln!(
            "bench: M={ring}: CLI change live after {:.1} ms (median), CLI done after {:.1} ms",
            median(&live_ms),
            median(&cli_ms)
        );
        rings.push(ControlRing {
            ring_size: ring,
            changes,
            live_ms_min: min(&live_ms),
            live_ms_median: median(&live_ms),
            cli_ms_min: min(&cli_ms),
            cli_ms_median: median(&cli_ms),
            live_ms,
            cli_ms,
        });
    }
    agent.stop(true);
    let default = rings[0].clone();
    ControlPlane {
        method: format!(
            "xdplb run in a gateway namespace; {changes} changes `xdplb backend set VIP B0 \
             --state down|up` (2 backends) at Maglev M=65537 (the figures here) and at \
             M=1048573 (in `rings`); live = from starting the CLI process to the VIP's entry in \
             the pinned VIPS map pointing at the new table (polled); cli = until the CLI \
             exited; after every down, 4 new TCP connections land on the other backend"
        ),
        changes,
        polls,
        live_ms_min: default.live_ms_min,
        live_ms_median: default.live_ms_median,
        cli_ms_min: default.cli_ms_min,
        cli_ms_median: default.cli_ms_median,
        live_ms: default.live_ms,
        cli_ms: default.cli_ms,
        slots_write: Vec::new(),
        rings,
        conntrack_walk: None,
    }
}

/// User and system CPU time of the calling thread.
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value it is given, which lives
    // across the call.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(
            libc::getrusage(libc::RUSAGE_THREAD, &mut usage),
            0,
            "getrusage"
        );
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// Connection counting as the agent does it every second (`lb_user::maps::active_flows`) over
/// the real program's connection table at its default capacity, filled with established
/// flows of 100 backends: `passes` passes, and one pass of the walk it replaced unless `quick`.
pub fn conntrack_walk(passes: usize, quick: bool) -> ConntrackWalk {
    use lb_user::maps::{Conntrack, WALK_BATCH, active_flows, active_flows_by_iter};
    let mut loaded = lb_tests::program::load();
    let capacity = loaded.options().conntrack_capacity;
    let mut map: HashMap<MapData, FlowKey, FlowState> = loaded
        .ebpf
        .take_map(CONNTRACK_MAP)
        .expect("connection table")
        .try_into()
        .expect("connection table type");
    let now = lb_user::agent::monotonic_ns().expect("clock");
    let fill = Instant::now();
    for i in 0..capacity {
        let mut key = FlowKey {
            proto: 6,
            family: 4,
            ..FlowKey::default()
        };
        key.src_addr[..4].copy_from_slice(&(0x0a80_0000 + i).to_be_bytes());
        key.dst_addr[..4].copy_from_slice(&[198, 19, 0, 1]);
        key.src_port = (1024 + (i % 60_000) as u16).to_be_bytes();
        key.dst_port = 80u16.to_be_bytes();
        let flow = FlowState {
            backend_id: i % 100,
            state: STATE_ESTABLISHED,
            last_seen_ns: now,
            ..FlowState::default()
        };
        map.insert(key, flow, 0).expect("inserting a flow");
    }
    let table = Conntrack::new(map);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // Per pass: CPU (user + system), system, wall time, entries walked.
    let mut runs: Vec<(f64, f64, f64, usize)> = Vec::new();
    for _ in 0..passes {
        let ((user, sys), wall) = (thread_cpu(), Instant::now());
        let (active, walked) = active_flows(&table, now, &DEFAULT_TIMEOUTS);
        let wall = wall.elapsed();
        let (user_end, sys_end) = thread_cpu();
        let total: u32 = active.values().sum();
        assert_eq!(total as usize, walked, "every flow is active");
        assert_eq!(active.len(), 100, "flows of 100 backends");
        let sys = ms(sys_end - sys);
        runs.push((ms(user_end - user) + sys, sys, ms(wall), walked));
    }
    let cpu_ms: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let wall_ms: Vec<f64> = runs.iter().map(|r| r.2).collect();
    let entries: Vec<usize> = runs.iter().map(|r| r.3).collect();
    let sys_ms_of_min = runs
        .iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(0.0, |r| r.1);
    let walked = entries[0];
    assert!(
        entries.iter().all(|&e| e == walked),
        "every pass walked the same table: {entries:?}"
    );
    assert!(
        walked as f64 >= 0.99 * f64::from(capacity),
        "the table is full: {walked} of {capacity}"
    );
    let by_iter_cpu_ms = (!quick).then(|| {
        let (user, sys) = thread_cpu();
        let (_, by_iter) = active_flows_by_iter(&table, now, &DEFAULT_TIMEOUTS);
        assert_eq!(by_iter, walked, "both walks see the same table");
        let (user_end, sys_end) = thread_cpu();
        ms(user_end - user) + ms(sys_end - sys)
    });
    eprintln!(
        "bench: counting connections over {walked} entries (filled in {:.1?}): {:.1} ms CPU \
         (min, {sys_ms_of_min:.1} ms of it in the kernel; wall {:.1} ms), one lookup per \
         entry: {}",
        fill.elapsed(),
        min(&cpu_ms),
        min(&wall_ms),
        by_iter_cpu_ms.map_or("not measured".to_owned(), |ms| format!("{ms:.0} ms CPU"))
    );
    ConntrackWalk {
        method: format!(
            "the real program's CONNTRACK (LRU hash) at its default capacity, filled from user \
             space with established flows of 100 backends; {passes} passes of \
             lb_user::maps::active_flows (BPF_MAP_LOOKUP_BATCH), CPU time of the walking \
             thread (getrusage(RUSAGE_THREAD), user + system)"
        ),
        capacity,
        entries: walked,
        batch: WALK_BATCH.max(table.batch()),
        cpu_ms_min: min(&cpu_ms),
        cpu_ms_median: median(&cpu_ms),
        sys_ms_of_min,
        wall_ms_min: min(&wall_ms),
        cpu_ms,
        by_iter_cpu_ms,
    }
}

/// Waits for `child` until [`TIMEOUT`] after `start`; kills it past that. True if it succeeded.
fn wait_bounded(child: &mut Child, start: Instant) -> bool {
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the CLI") {
            return status.success();
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
