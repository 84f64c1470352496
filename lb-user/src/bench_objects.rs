//! The benchmark programs, `lb-ebpf`'s binaries other than the balancer, embedded only with
//! the `bench` feature, which lb-tests enables: `build.rs` builds them only then, and the
//! agent's library goes without them.

use anyhow::{Context as _, bail};
use aya::{Ebpf, programs::Xdp};

use crate::loader::{capability_hint, refused};

/// Benchmark baseline: an XDP program `bench_pass` that returns `XDP_PASS`. Empty without
/// bpf-linker, like the main object.
pub static BASELINE_PASS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_pass"));

/// Benchmark baseline: an XDP program `bench_tx` that swaps the MAC addresses and returns
/// `XDP_TX`. Empty without bpf-linker.
pub static BASELINE_TX: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_tx"));

/// End-to-end benchmark generator: an XDP program `bench_gen` that writes the headers held in
/// its map `BENCH_GEN_HEADERS` (Ethernet, IPv4, UDP: 42 bytes) into the frame with a random
/// source port and returns `XDP_TX`, for `BPF_PROG_TEST_RUN` in live-frames mode. Empty without
/// bpf-linker.
pub static BASELINE_GEN: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_gen"));

/// End-to-end benchmark sink: an XDP program `bench_drop` that drops every frame. Empty without
/// bpf-linker.
pub static BASELINE_DROP: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_drop"));

/// Benchmark cost breakdown: an object `bench_steps` with one XDP program per step of the data
/// path, over the balancer's maps. Empty without `XDPLB_BUILD_EBPF=1`.
pub static BENCH_STEPS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_steps"));

/// Loads a benchmark baseline object ([`BASELINE_PASS`], [`BASELINE_TX`], [`BASELINE_GEN`],
/// [`BASELINE_DROP`]) and its one XDP program, named `program`, into the kernel.
pub fn load_baseline(object: &[u8], program: &str) -> anyhow::Result<Ebpf> {
    if object.is_empty() {
        bail!(
            "the benchmark baselines were built as stubs (no bpf-linker); run `cargo xtask bench`"
        );
    }
    let mut ebpf = Ebpf::load(object)
        .context("loading a baseline object")
        .map_err(capability_hint)?;
    let xdp: &mut Xdp = ebpf
        .program_mut(program)
        .with_context(|| format!("no program {program:?} in the baseline object"))?
        .try_into()
        .context("baseline program is not XDP")?;
    xdp.load()
        .map_err(|err| refused(err, &format!("the baseline {program}")))?;
    Ok(ebpf)
}
