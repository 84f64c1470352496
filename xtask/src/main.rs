//! `cargo xtask`: everything beyond plain cargo that building, testing and showing xdplb needs.
//! Every command first runs the setup check, so a fresh clone needs nothing else.

mod bench;
mod demo;
mod package;
mod setup;
mod test;
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and demo xdplb")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build and the tests need (idempotent).
    Setup,
    /// Build everything, the XDP program included.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run lints, host unit tests, packet fixtures and namespace tests.
    Test(test::TestArgs),
    /// Run a self-contained demo in network namespaces, then clean up.
    Demo,
    /// Run the benchmarks (as root) and write target/bench/results.json.
    Bench(bench::BenchArgs),
    /// Build the Debian package (target/debian/xdplb_*.deb) with cargo-deb, installing
    /// cargo-deb first if needed.
    Package,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = setup::ensure().and_then(|()| match cli.command {
        Task::Setup => Ok(()),
        Task::Build { release } => build(release),
        Task::Test(args) => test::run(&args),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(&args),
        Task::Package => package::build().map(|deb| println!("{}", deb.display())),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
}

/// A `cargo` command in the workspace that builds the real XDP program.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace()).env("XDPLB_BUILD_EBPF", "1");
    cmd
}

/// Runs `cmd`, failing if it fails; says what it runs and how long it took.
pub fn run_step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {what}");
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    eprintln!("xtask: {what}: done in {:.1?}", start.elapsed());
    Ok(())
}

/// Builds the workspace (and the XDP program); returns the target profile directory.
pub fn build(release: bool) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
    ]);
    if release {
        cmd.arg("--release");
    }
    run_step(if release { "build (release)" } else { "build" }, &mut cmd)
}

/// Builds the release `xdplb` binary alone (what the demo runs and the package ships); returns
/// its path.
pub fn build_release_xdplb() -> anyhow::Result<PathBuf> {
    run_step(
        "build xdplb (release)",
        cargo().args(["build", "--release", "-p", "lb-user", "--bin", "xdplb"]),
    )?;
    Ok(target_dir("release").join("xdplb"))
}

/// Where cargo puts binaries for `profile` (`debug` or `release`).
pub fn target_dir(profile: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join(profile)
}
