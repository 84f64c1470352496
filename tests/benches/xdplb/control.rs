//! Control plane: from a CLI command to the new table being live in the data path.
//!
//! `xdplb run` in the gateway namespace of a two-backend topology, with its own socket, pin dir
//! and state file. Each change is `xdplb backend set VIP B0 --state down` (or `up` again): the
//! agent rebuilds the VIP's Maglev ring (M = 65537), writes it into a fresh region of the slots
//! array and switches the VIP's entry in `VIPS` to it, which is the moment a packet sees the
//! new table. The benchmark polls that entry in the pinned `VIPS` map from the moment it starts
//! the CLI process, and records when it changed (live) and when the CLI exited. After every
//! `down`, real TCP connections from the client to the VIP must all land on the other backend.

use std::{
    net::SocketAddr,
    process::Child,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use lb_common::maps::{VIPS_MAP, VipKey, VipMeta};
use lb_tests::bench::ControlPlane;
use lb_tests::{
    agent::{Agent, VIP, VIP_ADDR},
    netns::{Server, Topology, ident_of, tcp_request},
};

use super::{median, min};

/// How long a CLI command may take to finish, a change to show.
const TIMEOUT: Duration = Duration::from_secs(20);

/// `changes` CLI changes, alternately taking backend 0 down and up again.
/// Without the slots array's write times (`slots_write`), which the caller measures.
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
    let table_off = || -> u32 {
        let entries: Vec<(VipKey, VipMeta)> = vips.iter().map(|e| e.expect("VIPS entry")).collect();
        assert_eq!(entries.len(), 1, "one VIP");
        entries[0].1.table_off
    };

    let (mut live_ms, mut cli_ms, mut polls) = (Vec::new(), Vec::new(), 0u64);
    for change in 0..changes {
        let state = if change % 2 == 0 { "down" } else { "up" };
        let before = table_off();
        let start = Instant::now();
        let mut cli = agent.spawn_cli(&["backend", "set", VIP, &backend(0), "--state", state]);
        let live = loop {
            polls += 1;
            if table_off() != before {
                break start.elapsed();
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "change {change} ({state}) not live within {TIMEOUT:?}"
            );
            std::hint::spin_loop();
        };
        let status = wait_bounded(&mut cli, start);
        let done = start.elapsed();
        assert!(status, "xdplb backend set ... --state {state} failed");
        live_ms.push(live.as_secs_f64() * 1e3);
        cli_ms.push(done.as_secs_f64() * 1e3);
        if state == "down" {
            // New connections now all go to backend 1.
            for n in 0..4 {
                let line = format!("after change {change}, connection {n}");
                let answer = topo
                    .client
                    .run(|| tcp_request(VIP_ADDR, &line))
                    .unwrap_or_else(|err| panic!("{line}: {err:#}"));
                assert_eq!(ident_of(&answer, &line).as_deref(), Some("b1"), "{line}");
            }
        }
    }
    eprintln!(
        "bench: CLI change live after {:.1} ms (median), CLI done after {:.1} ms",
        median(&live_ms),
        median(&cli_ms)
    );
    agent.stop(true);
    ControlPlane {
        method: format!(
            "xdplb run in a gateway namespace; {changes} changes `xdplb backend set VIP B0 \
             --state down|up` (Maglev M=65537, 2 backends); live = from starting the CLI \
             process to the VIP's entry in the pinned VIPS map pointing at the new table \
             (polled); cli = until the CLI exited; after every down, 4 new TCP connections \
             land on the other backend"
        ),
        changes,
        polls,
        live_ms_min: min(&live_ms),
        live_ms_median: median(&live_ms),
        cli_ms_min: min(&cli_ms),
        cli_ms_median: median(&cli_ms),
        live_ms,
        cli_ms,
        slots_write: Vec::new(),
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
