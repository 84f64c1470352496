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

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: any reachable panic fails verification.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    panic!(
        "bench_drop is an XDP program; it is built for bpfel-unknown-none by lb-user's build.rs"
    );
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
