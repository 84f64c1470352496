//! The xdplb agent: loads and attaches the XDP program and owns its maps.
//!
//! The `xdplb` binary (`main.rs`) is a thin CLI over this library; the test harness uses the
//! library directly to run the real program through `BPF_PROG_TEST_RUN`.

pub mod agent;
pub mod api;
pub mod autoscale;
pub mod balancer;
#[cfg(feature = "bench")]
pub mod bench_objects;
pub mod caps;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conns;
pub mod counters;
pub mod daemon;
pub mod decap;

pub mod duration;
pub mod health;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod pin;
pub mod probe_encap;
pub mod rates;
pub mod regions;
pub mod render;
