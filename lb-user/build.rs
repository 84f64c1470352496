//! Builds the XDP program (`lb-ebpf`) for `bpfel-unknown-none` with aya-build and leaves the
//! object in `OUT_DIR/lb`, where `loader.rs` embeds it, next to the benchmark baselines
//! (`OUT_DIR/bench_pass`, `OUT_DIR/bench_tx`) and the end-to-end benchmark's generator and
//! sink (`OUT_DIR/bench_gen`, `OUT_DIR/bench_drop`) and the per-step cost breakdown
//! (`OUT_DIR/bench_steps`); every binary of `lb-ebpf` lands there.
//!
//! `XDPLB_BUILD_EBPF` decides: `1` builds (and fails without bpf-linker), `0` writes an empty
//! stub, unset builds when `bpf-linker` is on `PATH` and writes the stub otherwise, so that
//! `cargo check` and `cargo clippy` work on a machine without the BPF toolchain. A binary with
//! the stub refuses to load and says how to get the real object.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, bail};

const OBJECT: &str = "lb";
/// The benchmark baselines, generator, sink and step programs, other binaries of `lb-ebpf`.
const BASELINES: [&str; 5] = [
    "bench_pass",
    "bench_tx",
    "bench_gen",
    "bench_drop",
    "bench_steps",
];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=XDPLB_BUILD_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .parent()
        .context("lb-user has no parent directory")?;

    let linker = find_on_path("bpf-linker");
    let build = match env::var("XDPLB_BUILD_EBPF").as_deref() {
        Ok("1") => match &linker {
            Some(_) => true,
            None => {
                bail!("XDPLB_BUILD_EBPF=1 but bpf-linker is not on PATH: run `cargo xtask setup`")
            }
        },
        Ok("0") => false,
        Ok(other) => bail!("XDPLB_BUILD_EBPF must be 0 or 1, not {other:?}"),
        Err(_) => linker.is_some(),
    };

    if !build {
        println!(
            "cargo:warning=building xdplb without its XDP program (stub object); \
             `cargo xtask build` builds the real one"
        );
        // Until bpf-linker shows up, look again on every build.
        if let Some(home) = env::var_os("CARGO_HOME").or_else(|| env::var_os("HOME")) {
            println!(
                "cargo:rerun-if-changed={}",
                PathBuf::from(home).join("bin/bpf-linker").display()
            );
        }
        for object in std::iter::once(OBJECT).chain(BASELINES) {
            fs::write(out_dir.join(object), [])
                .with_context(|| format!("writing the stub object {object}"))?;
        }
        return Ok(());
    }

    if let Some(linker) = linker {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // aya-build watches the eBPF crate; the shared crate is compiled into it too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("lb-common").display()
    );
    let ebpf_dir = workspace.join("lb-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path to lb-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
