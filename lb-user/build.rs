//! Builds the XDP program (`lb-ebpf`) for `bpfel-unknown-none` with aya-build and leaves the
//! object in `OUT_DIR/lb`, where `loader.rs` embeds it. With this crate's `bench` feature it
//! builds the benchmark programs too, `lb-ebpf`'s other binaries, which `bench_objects.rs`
//! embeds: the baselines (`OUT_DIR/bench_pass`, `OUT_DIR/bench_tx`), the end-to-end benchmark's
//! generator and sink (`OUT_DIR/bench_gen`, `OUT_DIR/bench_drop`) and the per-step cost
//! breakdown (`OUT_DIR/bench_steps`).
//!
//! It builds with the nightly pinned in `lb-ebpf/rust-toolchain.toml` (never the floating
//! `nightly`), and tells the loader which one (`XDPLB_EBPF_BUILT_WITH`), for its error messages.
//!
//! `XDPLB_BUILD_EBPF` decides: `1` builds (and fails without bpf-linker or the pinned nightly),
//! `0` writes an empty stub, unset builds when `bpf-linker` is on `PATH` and the pinned nightly
//! is installed and writes the stub otherwise, so that `cargo check` and `cargo clippy` work on
//! a machine without the BPF toolchain. A binary with the stub refuses to load and says how to
//! get the real object.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

#[path = "../xtask/src/toolchain.rs"]
mod toolchain;

const OBJECT: &str = "lb";
/// The backends' decapsulation program (`xdplb decap`), built and embedded always.
const DECAP_OBJECT: &str = "decap";
/// The agent's TC program for health checks through the `ipip` tunnel, built and embedded
/// always.
const PROBE_ENCAP_OBJECT: &str = "probe_encap";
/// The benchmark baselines, generator, sink and step programs: the binaries of `lb-ebpf`'s
/// `bench` feature, built with this crate's.
const BENCH_OBJECTS: [&str; 5] = [
    "bench_pass",
    "bench_tx",
    "bench_gen",
    "bench_drop",
    "bench_steps",
];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=XDPLB_BUILD_EBPF");
    git_revision();
    let bench = env::var_os("CARGO_FEATURE_BENCH").is_some();
    let bench_objects: &[&str] = if bench { &BENCH_OBJECTS } else { &[] };
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .parent()
        .context("lb-user has no parent directory")?;

    println!(
        "cargo:rerun-if-changed={}",
        workspace.join(toolchain::FILE).display()
    );
    let nightly = toolchain::pinned(workspace)?;
    // `rustup run` fails, rather than installing, when the toolchain is missing.
    let rustc_vv = output("rustup", &["run", &nightly, "rustc", "-vV"]);
    let linker = find_on_path("bpf-linker");
    let build = match env::var("XDPLB_BUILD_EBPF").as_deref() {
        Ok("1") => {
            if linker.is_none() {
                bail!("XDPLB_BUILD_EBPF=1 but bpf-linker is not on PATH: run `cargo xtask setup`");
            }
            if rustc_vv.is_none() {
                bail!(
                    "XDPLB_BUILD_EBPF=1 but {nightly}, pinned in {}, is not installed: run \
                     `cargo xtask setup`",
                    toolchain::FILE
                );
            }
            true
        }
        Ok("0") => false,
        Ok(other) => bail!("XDPLB_BUILD_EBPF must be 0 or 1, not {other:?}"),
        Err(_) => linker.is_some() && rustc_vv.is_some(),
    };

    if !build {
        println!(
            "cargo:warning=building xdplb without its XDP program (stub object); \
             `cargo xtask build` installs bpf-linker and {nightly} and builds the real one"
        );
        // Until bpf-linker and the pinned nightly show up, look again on every build.
        if let Some(home) = env::var_os("CARGO_HOME").or_else(|| env::var_os("HOME")) {
            println!(
                "cargo:rerun-if-changed={}",
                PathBuf::from(home).join("bin/bpf-linker").display()
            );
        }
        if rustc_vv.is_none()
            && let Some(dir) = toolchain_dir(&nightly)
        {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
        println!("cargo:rustc-env=XDPLB_EBPF_BUILT_WITH=");
        for object in [OBJECT, DECAP_OBJECT, PROBE_ENCAP_OBJECT]
            .into_iter()
            .chain(bench_objects.iter().copied())
        {
            fs::write(out_dir.join(object), [])
                .with_context(|| format!("writing the stub object {object}"))?;
        }
        return Ok(());
    }

    let llvm = rustc_vv
        .as_deref()
        .and_then(toolchain::llvm_version)
        .unwrap_or("unknown");
    println!("cargo:rustc-env=XDPLB_EBPF_BUILT_WITH={nightly} (LLVM {llvm})");

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
            no_default_features: true,
            features: if bench { &["bench"] } else { &[] },
        }],
        aya_build::Toolchain::Custom(&nightly),
    )
}

/// Tells `xdplb --version` the git revision (`XDPLB_GIT_REVISION`: the short hash, or
/// `unknown` outside a git tree, e.g. from a source tarball), and rebuilds when HEAD moves.
fn git_revision() {
    let git = |args: &[&str]| output("git", args).map(|out| out.trim().to_owned());
    let revision = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=XDPLB_GIT_REVISION={revision}");
    // HEAD names the branch; the branch's ref file (or packed-refs) moves with each commit.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten().map(PathBuf::from) {
        // Only files that exist: a missing one would rerun this script on every build.
        let path = if path.is_relative() {
            env::current_dir()
                .map(|dir| dir.join(&path))
                .unwrap_or(path)
        } else {
            path
        };
        if path.is_file() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where rustup keeps `toolchain` for this host, if it can be told.
fn toolchain_dir(toolchain: &str) -> Option<PathBuf> {
    let rustup_home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".rustup")))?;
    let host = env::var("HOST").ok()?;
    Some(rustup_home.join(format!("toolchains/{toolchain}-{host}")))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
