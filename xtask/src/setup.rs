//! Idempotent setup of what the eBPF build needs: the pinned nightly toolchain with `rust-src`
//! (for `-Z build-std=core`), bpf-linker built against that nightly's own LLVM, and the system tools
//! the tests drive (iproute2, ethtool, ping, curl, nsenter, bird) and the benchmarks run (nft, nginx,
//! wrk, iperf3).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{run_step, toolchain, workspace};

/// The bpf-linker release we build against the pinned nightly's LLVM.
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
    // The agent's BGP speaker, and the router of the several-gateways test.
    ("bird", "bird2"),
    ("birdc", "bird2"),
    // The package's round trip (`cargo xtask test`): lintian on the .deb, `man xdplb` once
    // installed.
    ("lintian", "lintian"),
    ("man", "man-db"),
    // The agent's etcd client compiles etcd's protos at build time: protoc and Google's
    // well-known protos (a file, not a command); the cluster tests run etcd itself.
    ("protoc", "protobuf-compiler"),
    (
        "/usr/include/google/protobuf/empty.proto",
        "libprotobuf-dev",
    ),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    // `xdplb top` is tested as a terminal program, in a tmux pane.
    ("tmux", "tmux"),
    // The metrics test: `promtool check metrics` on a scrape, and a Prometheus scraping the
    // agent for the types it keeps.
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    // Cron schedule windows in a named time zone read the system's zone database.
    ("/usr/share/zoneinfo/Europe/Paris", "tzdata"),
];

/// Checks everything and installs what is missing, saying what it does.
pub fn ensure() -> anyhow::Result<()> {
    ensure_lint_tools()?;
    let nightly = toolchain::pinned(workspace())?;
    let llvm_major = ensure_nightly(&nightly)?;
    ensure_rust_src(&nightly)?;
    ensure_bpf_linker(&nightly, llvm_major)?;
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

/// Makes sure the pinned nightly is installed (exactly that one: the floating `nightly` may
/// carry an LLVM whose code the verifier refuses) and returns the major version of its LLVM.
fn ensure_nightly(nightly: &str) -> anyhow::Result<u32> {
    if output("rustup", &["--version"]).is_none() {
        bail!(
            "rustup is not installed: xdplb builds its XDP program with a rustup nightly toolchain"
        );
    }
    // `rustup run` does not install a missing toolchain; it fails.
    let version = match output("rustup", &["run", nightly, "rustc", "-vV"]) {
        Some(version) => version,
        None => {
            run_step(
                &format!(
                    "installing {nightly}, pinned in {} (minimal profile, with rust-src)",
                    toolchain::FILE
                ),
                Command::new("rustup").args([
                    "toolchain",
                    "install",
                    nightly,
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                    "--no-self-update",
                ]),
            )
            .with_context(|| format!("installing the pinned toolchain {nightly} failed"))?;
            output("rustup", &["run", nightly, "rustc", "-vV"]).with_context(|| {
                format!("{nightly} was installed but `rustup run {nightly} rustc -vV` fails")
            })?
        }
    };
    llvm_major(&version)
        .with_context(|| format!("no LLVM version in `rustc -vV` of {nightly}:\n{version}"))
}

/// The LLVM major version from `rustc -vV` output (`LLVM version: 22.1.4`).
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    toolchain::llvm_version(rustc_vv)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn nightly_sysroot(nightly: &str) -> anyhow::Result<PathBuf> {
    output("rustup", &["run", nightly, "rustc", "--print", "sysroot"])
        .map(|s| PathBuf::from(s.trim()))
        .with_context(|| format!("`rustup run {nightly} rustc --print sysroot` failed"))
}

fn ensure_rust_src(nightly: &str) -> anyhow::Result<()> {
    let core = nightly_sysroot(nightly)?.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        return Ok(());
    }
    run_step(
        &format!("installing rust-src for {nightly}"),
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", nightly]),
    )
}

/// bpf-linker is kept if it is the version we want and is linked with the pinned nightly's own
/// `libLLVM` (whose soname names both LLVM's and rustc's versions); otherwise it is (re)built
/// against it.
fn ensure_bpf_linker(nightly: &str, llvm_major: u32) -> anyhow::Result<()> {
    let (libllvm, soname) = nightly_libllvm(nightly, llvm_major)?;
    let prefix = llvm_prefix(llvm_major, &libllvm, &soname)?;
    let wanted = || {
        output("bpf-linker", &["--version"])
            .is_some_and(|version| version.contains(BPF_LINKER_VERSION))
            && linked_llvm().as_deref() == Some(soname.as_str())
    };
    if wanted() {
        return Ok(());
    }
    run_step(
        &format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm_major} of {nightly} \
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
    if !wanted() {
        bail!(
            "bpf-linker was installed but the one on PATH does not run with {soname}; \
             is ~/.cargo/bin first on PATH?"
        );
    }
    Ok(())
}

/// The `libLLVM` soname the bpf-linker on `PATH` is linked with, from `ldd`.
fn linked_llvm() -> Option<String> {
    let linker = find_on_path("bpf-linker")?;
    let ldd = output("ldd", &[linker.to_str()?])?;
    llvm_soname(&ldd).map(str::to_owned)
}

/// The `libLLVM` soname in `ldd` output
/// (`libLLVM.so.22.1-rust-1.97.0-nightly => /root/.cargo/xdplb-llvm-22/lib/... (0x...)`).
fn llvm_soname(ldd: &str) -> Option<&str> {
    ldd.split_whitespace()
        .find(|word| word.starts_with("libLLVM"))
}

/// The pinned nightly's `libLLVM`: its path and its file name, which is also its soname
/// (`libLLVM.so.22.1-rust-1.97.0-nightly`).
fn nightly_libllvm(nightly: &str, llvm_major: u32) -> anyhow::Result<(PathBuf, String)> {
    let sysroot_lib = nightly_sysroot(nightly)?.join("lib");
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
    Ok((sysroot_lib.join(&soname), soname))
}

/// A folder whose `lib/` holds `libllvm` under both the name the bpf-linker build links with
/// (`libLLVM.so`) and its soname, so the installed bpf-linker finds it at run time. It lives
/// under `$CARGO_HOME`, next to the bpf-linker binary that needs it. Links that point elsewhere
/// (at a toolchain that may go away) are replaced by a rename, so a bpf-linker starting
/// meanwhile never misses its library.
fn llvm_prefix(llvm_major: u32, libllvm: &Path, soname: &str) -> anyhow::Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join(format!("xdplb-llvm-{llvm_major}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", soname] {
        let link = lib.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == libllvm) {
            continue;
        }
        let temporary = lib.join(format!(".{name}.{}", std::process::id()));
        let _ = fs::remove_file(&temporary);
        std::os::unix::fs::symlink(libllvm, &temporary)
            .and_then(|()| fs::rename(&temporary, &link))
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(prefix)
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}

/// Installs the missing system tools with apt when root on Debian; says what to do otherwise.
fn ensure_system_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = SYSTEM_TOOLS
        .iter()
        .filter(|(tool, _)| {
            if tool.starts_with('/') {
                !Path::new(tool).exists()
            } else {
                !on_path(tool)
            }
        })
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
    use super::{llvm_major, llvm_soname};

    #[test]
    fn reads_the_llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.97.0\n"), None);
    }

    #[test]
    fn reads_the_llvm_soname_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd1a9e6000)\n\tlibLLVM.so.22.1-rust-1.97.0-nightly => /root/.cargo/xdplb-llvm-22/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x00007f7746600000)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f7746400000)\n";
        assert_eq!(
            llvm_soname(ldd),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(
            llvm_soname("\tlibLLVM.so.23.1-rust-1.101.0-nightly => not found\n"),
            Some("libLLVM.so.23.1-rust-1.101.0-nightly")
        );
        assert_eq!(llvm_soname("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"), None);
    }
}
