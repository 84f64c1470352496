//! Shared between the XDP program (`lb-ebpf`, `no_std`, `bpfel-unknown-none`) and the agent
//! (`lb-user`): map names and layouts, and the pure decision logic both sides run unchanged.
#![cfg_attr(not(test), no_std)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;

pub mod acl;
pub mod conntrack;
pub mod counters;
pub mod csum;
pub mod encap;
pub mod filter;
pub mod flow;
pub mod frag;
pub mod hash;
pub mod icmp;
pub mod limit;
pub mod maglev;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod probe;
pub mod sched;

pub use counters::Counter;
pub use flow::FlowKey;
