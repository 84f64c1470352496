//! Test harnesses for xdplb, shared by every test and by `cargo xtask demo`:
//!
//! - [`fixture`]: Katran-style tables of packet cases (description, input packet, expected XDP
//!   action, expected output packet) run through `BPF_PROG_TEST_RUN`;
//! - [`packet`]: test packets built with etherparse, and readable summaries of them;
//! - [`netns`]: client / gateway / backend topologies in network namespaces.

pub mod fixture;
pub mod netns;
pub mod packet;

/// True when running as root, which the BPF and namespace tests need.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Tests that need root (BPF or namespaces) are marked `#[ignore = "needs root"]`: cargo
/// reports them as ignored rather than passed when they cannot run, and `cargo xtask test`
/// runs them (`--include-ignored`) when it is root and says loudly that it skipped them when not.
pub const NEEDS_ROOT: &str = "needs root";
