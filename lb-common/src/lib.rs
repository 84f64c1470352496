//! Shared between the XDP program (`lb-ebpf`, `no_std`, `bpfel-unknown-none`) and the agent
//! (`lb-user`): map names and layouts, and the pure decision logic both sides run unchanged.
#![cfg_attr(not(test), no_std)]

pub mod counters;
pub mod flow;

pub use counters::Counter;
pub use flow::FlowKey;
