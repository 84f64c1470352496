//! Test harnesses for xdplb, shared by every test, the benchmarks and `cargo xtask` (demo, bench):
//!
//! - [`bench`]: the benchmarks' results, as the benchmark writes them and xtask reads them;
//! - [`fixture`]: Katran-style tables of packet cases (description, input packet, expected XDP
//!   action, expected output packet) run through `BPF_PROG_TEST_RUN`;
//! - [`packet`]: test packets built with etherparse, and readable summaries of them;
//! - [`netns`]: client / gateway / backend topologies in network namespaces;
//! - [`traffic`]: connections through a VIP, counted by backend, held, or kept busy;
//! - [`program`] (feature `xdplb`): the real XDP program, loaded and run once per packet;
//! - [`lab`] (feature `xdplb`): the gateway the packet fixtures run in;
//! - [`agent`] (feature `xdplb`): `xdplb run` in a topology's gateway, driven by its CLI.
//!
//! Without the `xdplb` feature (as xtask uses it), nothing here links the agent: the fixture
//! runner takes the program as a closure.

use std::{net::SocketAddr, path::PathBuf};

#[cfg(feature = "xdplb")]
pub mod agent;
pub mod bench;
pub mod cluster;
pub mod fixture;
#[cfg(feature = "xdplb")]
pub mod lab;
pub mod netns;
pub mod packet;
#[cfg(feature = "xdplb")]
pub mod program;
pub mod traffic;

/// True when running as root, which the BPF and namespace tests need.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Tests that need root (BPF or namespaces) are marked `#[ignore = "needs root"]`: cargo
/// reports them as ignored rather than passed when they cannot run, and `cargo xtask test`
/// runs them (`--include-ignored`) when it is root and says loudly that it skipped them when not.
pub const NEEDS_ROOT: &str = "needs root";

/// The `xdplb` binary built next to the running test binary (in the target directory of its
/// profile), or a panic that says to build it.
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

/// `s` as a socket address (`198.19.0.1:80`, `[fd00::1]:80`), or a panic that names it.
pub fn sa(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| panic!("bad socket address {s}"))
}

/// `s` as a VIP (`198.19.0.1:80/tcp`), or a panic that says why not.
#[cfg(feature = "xdplb")]
pub fn vip(s: &str) -> lb_user::balancer::Vip {
    s.parse().unwrap_or_else(|err| panic!("bad VIP {s}: {err}"))
}

/// The connection table's key for the flow `src` → `dst` over `proto` (6 or 17), as the XDP
/// program writes it.
#[cfg(feature = "xdplb")]
pub fn flow_key(src: SocketAddr, dst: SocketAddr, proto: u8) -> lb_common::FlowKey {
    use lb_common::flow::{FAMILY_IPV4, FAMILY_IPV6};
    let addr16 = |addr: std::net::IpAddr| match addr {
        std::net::IpAddr::V4(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    lb_common::FlowKey {
        src_addr: addr16(src.ip()),
        dst_addr: addr16(dst.ip()),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        proto,
        family: if src.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        },
        _pad: [0; 2],
    }
}
