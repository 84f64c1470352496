//! Shared by the integration tests: the real XDP program, run through `BPF_PROG_TEST_RUN`.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::PathBuf;

use aya::programs::{TestRun as _, TestRunOptions};
use lb_tests::fixture::Outcome;
use lb_user::loader::Loaded;

/// Loads the embedded XDP program (verifier included), or panics with the reason.
pub fn load() -> Loaded {
    Loaded::load().unwrap_or_else(|err| panic!("loading the XDP program: {err:#}"))
}

/// Runs the program once on `input` through `BPF_PROG_TEST_RUN`.
pub fn test_run(loaded: &mut Loaded, input: &[u8]) -> anyhow::Result<Outcome> {
    // Room for the program to grow the frame (encapsulation) and for the kernel's headroom.
    let mut output = vec![0u8; input.len() + 512];
    let result = loaded.program()?.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut output),
        ..TestRunOptions::new()
    })?;
    output.truncate(result.data_size_out as usize);
    Ok(Outcome {
        action: result.return_value,
        output,
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
