//! `cargo xtask test`: lints, host unit tests, packet fixtures, namespace tests, the package
//! round trip and the demo.

use std::time::Instant;

use clap::Args;

use crate::{cargo, run_step};

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    no_lint: bool,
    /// Only tests whose name contains this (passed to the test harness). The package round
    /// trip and then the demo run when there is no filter or `package` (`demo`) has it.
    filter: Option<String>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    if !args.no_lint {
        run_step(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--", "--check"]),
        )?;
        run_step(
            "cargo clippy -D warnings",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    // The namespace tests start the `xdplb` binary, so build it as well as the test targets.
    run_step(
        "build",
        cargo().args([
            "build",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--all-targets",
        ]),
    )?;

    let root = lb_tests::is_root();
    let mut test = cargo();
    test.args(["test", "--workspace", "--exclude", "lb-ebpf", "--"]);
    if root {
        // Tests that need root (BPF_PROG_TEST_RUN, XDP on veths, namespaces) are `#[ignore]`d
        // so that a plain `cargo test` reports them as ignored rather than passed.
        test.arg("--include-ignored");
    }
    if let Some(filter) = &args.filter {
        test.arg(filter);
    }
    let tests = run_step("tests", &mut test);
    if !root {
        eprintln!();
        eprintln!("xtask: ************************************************************");
        eprintln!("xtask: SKIPPED: the packet-fixture and namespace tests need root.");
        eprintln!("xtask: They are listed as `ignored` above; run as root to run them.");
        eprintln!("xtask: ************************************************************");
    }
    tests?;
    if root && selects(args, "package") {
        // Installs the package on this machine and purges it again (also when a check fails).
        crate::package::round_trip()?;
    }
    if root && selects(args, "demo") {
        // The README's first command, on the release binary the package round trip built.
        eprintln!("xtask: cargo xtask demo");
        crate::demo::run()?;
    }
    eprintln!("xtask: all tests passed in {:.1?}", start.elapsed());
    Ok(())
}

/// True if the filter of `args` (none, or a part of `step`'s name, or a name containing it)
/// selects the step `step` that runs after the tests.
fn selects(args: &TestArgs, step: &str) -> bool {
    args.filter
        .as_deref()
        .is_none_or(|f| step.contains(f) || f.contains(step))
}
