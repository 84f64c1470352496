//! Sink of the end-to-end benchmark (`cargo xtask bench`): drops every frame, so that the
//! receiving namespace spends nothing on the packets it counts (the veth's `rx_packets` counts
//! every frame its XDP program saw, dropped ones included).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

lb_ebpf::program_boilerplate!("bench_drop");
