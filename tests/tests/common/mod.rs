//! Shared by the integration tests: the real XDP program, run through `BPF_PROG_TEST_RUN`.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::PathBuf;

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::Counter;
use lb_tests::fixture::Outcome;
use lb_user::{counters::Counters, loader::Loaded};

/// Loads the embedded XDP program (verifier included), or panics with the reason.
pub fn load() -> Loaded {
    Loaded::load().unwrap_or_else(|err| panic!("loading the XDP program: {err:#}"))
}

/// Runs the program once on `input` through `BPF_PROG_TEST_RUN`, as if it arrived on
/// interface `ingress` (an ifindex of the calling thread's namespace; `None`: loopback).
pub fn test_run(
    loaded: &mut Loaded,
    input: &[u8],
    ingress: Option<u32>,
) -> anyhow::Result<Outcome> {
    let before = Counters::read(&loaded.ebpf)?;
    // Room for the program to grow the frame (encapsulation) and for the kernel's headroom.
    let mut output = vec![0u8; input.len() + 512];
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let ctx: Vec<u8> = [0, input.len() as u32, 0, ingress.unwrap_or(0), 0, 0]
        .iter()
        .flat_map(|field| field.to_ne_bytes())
        .collect();
    let result = loaded.program()?.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut output),
        ctx_in: ingress.map(|_| ctx.as_slice()),
        ..TestRunOptions::new()
    })?;
    output.truncate(result.data_size_out as usize);
    let after = Counters::read(&loaded.ebpf)?;
    let counters = Counter::ALL
        .iter()
        .filter(|&&c| after.get(c) != before.get(c))
        .map(|c| c.name().to_owned())
        .collect();
    Ok(Outcome {
        action: result.return_value,
        output,
        counters,
    })
}

/// The `xdplb` binary built next to this test binary.
pub fn xdplb_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("xdplb"))
        .expect("target directory");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// True if an XDP program is attached to `iface` of the topology's gateway.
pub fn xdp_attached(topo: &lb_tests::netns::Topology, iface: &str) -> bool {
    let out = topo
        .gateway
        .exec("ip", &["link", "show", "dev", iface])
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout).contains(" xdp")
}

/// True once no XDP program is attached to `iface` of the topology's gateway, waiting up to
/// two seconds: a link whose last reference was a pin (removed, or in a mount namespace that
/// ended) is released by the kernel in the background.
pub fn xdp_detached_soon(topo: &lb_tests::netns::Topology, iface: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while xdp_attached(topo, iface) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}
