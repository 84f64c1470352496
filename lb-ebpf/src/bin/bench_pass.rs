//! Benchmark baseline: the cheapest XDP program, which passes every packet. `cargo xtask bench`
//! runs it beside the balancer to show what a `BPF_PROG_TEST_RUN` of a program costs by itself.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

lb_ebpf::program_boilerplate!("bench_pass");
