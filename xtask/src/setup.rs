//! Idempotent setup of what the eBPF build needs: a nightly toolchain with `rust-src` (for
//! `-Z build-std=core`), bpf-linker built against the nightly's own LLVM, and the system tools
//! the tests drive (iproute2, ethtool, ping, curl, nsenter) and the benchmarks run (nft, nginx,
//! wrk, iperf3).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run_step;

/// The bpf-linker release we build against the nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Commands the tests and the demo run, and the Debian packages that provide them.
const SYSTEM_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    ("curl", "curl"),
    ("nsenter", "util-linux"),
    ("flock", "util-linux"),
    // The autoscaling test's scale-up hook starts backend servers written in Python.
    ("python3", "python3-minimal"),
    // The packaging test checks the systemd unit with `systemd-analyze verify`; the privileges
    // test drops to a user with `setpriv`.
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
];

/// Checks everything and installs what is missing, saying what it does.
pub fn ensure() -> anyhow::Result<()> {
    ensure_lint_tools()?;
    let llvm_major = ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker(llvm_major)?;
    ensure_system_tools()
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo fmt` and `cargo clippy` for the host toolchain, which `cargo xtask test` runs.
fn ensure_lint_tools() -> anyhow::Result<()> {
    if output("cargo", &["fmt", "--version"]).is_some()
        && output("cargo", &["clippy", "--version"]).is_some()
    {
        return Ok(());
    }
    run_step(
        "installing rustfmt and clippy",
        Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]),
    )
}

/// Makes sure a nightly toolchain exists and returns the major version of its LLVM.
fn ensure_nightly() -> anyhow::Result<u32> {
    if output("rustup", &["--version"]).is_none() {
        bail!(
            "rustup is not installed: xdplb builds its XDP program with a rustup nightly toolchain"
        );
    }
    let version = match output("rustc", &["+nightly", "-vV"]) {
        Some(version) => version,
        None => {
            run_step(
                "installing the nightly toolchain (minimal profile, with rust-src)",
                Command::new("rustup").args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]),
            )
            .context("no nightly toolchain is installed, and installing one failed")?;
            output("rustc", &["+nightly", "-vV"])
                .context("the nightly toolchain was installed but `rustc +nightly -vV` fails")?
        }
    };
    llvm_major(&version)
        .with_context(|| format!("no LLVM version in `rustc +nightly -vV`:\n{version}"))
}

/// The LLVM major version from `rustc -vV` output (`LLVM version: 22.1.4`).
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    output("rustc", &["+nightly", "--print", "sysroot"])
        .map(|s| PathBuf::from(s.trim()))
        .context("`rustc +nightly --print sysroot` failed")
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let core = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        return Ok(());
    }
    run_step(
        "installing rust-src for the nightly toolchain",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

/// bpf-linker works if it runs on its own (its LLVM found through its RUNPATH) and is the
/// version we want; otherwise it is (re)built against the nightly's `libLLVM`.
fn ensure_bpf_linker(llvm_major: u32) -> anyhow::Result<()> {
    if let Some(version) = output("bpf-linker", &["--version"])
        && version.contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    let prefix = llvm_prefix(llvm_major)?;
    run_step(
        &format!(
            "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} \
             (takes about 2 minutes)"
        ),
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    match output("bpf-linker", &["--version"]) {
        Some(_) => Ok(()),
        None => bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?"),
    }
}

/// A folder whose `lib/` holds the nightly's `libLLVM` under both the name the bpf-linker build
/// links with (`libLLVM.so`) and its soname, so the installed bpf-linker finds it at run time.
/// It lives under `$CARGO_HOME`, next to the bpf-linker binary that needs it.
fn llvm_prefix(llvm_major: u32) -> anyhow::Result<PathBuf> {
    let sysroot_lib = nightly_sysroot()?.join("lib");
    let soname = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| {
            name.starts_with(&format!("libLLVM.so.{llvm_major}.")) && name.contains("-rust-")
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.{llvm_major}.*-rust-* in {}",
                sysroot_lib.display()
            )
        })?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join(format!("xdplb-llvm-{llvm_major}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&soname), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(prefix)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Installs the missing system tools with apt when root on Debian; says what to do otherwise.
fn ensure_system_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = SYSTEM_TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !lb_tests::is_root() || !on_path("apt-get") {
        eprintln!(
            "xtask: warning: missing tools for the tests and the demo; install: {}",
            missing.join(" ")
        );
        return Ok(());
    }
    run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    run_step(
        &format!("installing {}", missing.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn reads_the_llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.97.0\n"), None);
    }
}
