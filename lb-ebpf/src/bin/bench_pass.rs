//! Benchmark baseline: the cheapest XDP program, which passes every packet. `cargo xtask bench`
//! runs it beside the balancer to show what a `BPF_PROG_TEST_RUN` of a program costs by itself.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: any reachable panic fails verification.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    panic!(
        "bench_pass is an XDP program; it is built for bpfel-unknown-none by lb-user's build.rs"
    );
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
