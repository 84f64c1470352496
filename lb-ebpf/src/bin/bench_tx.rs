//! Benchmark baseline: the smallest program that touches the packet and sends it back, the way
//! a reflector would: it swaps the Ethernet source and destination and returns `XDP_TX`.
//! `cargo xtask bench` reports the balancer's per-packet cost as a ratio to this one.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Destination and source MAC addresses, the first 12 bytes of the frame.
const MACS: usize = 12;

#[xdp]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + MACS > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the 12 bytes at `start` lie inside the packet (checked just above), and
    // `[u8; 12]` has no alignment requirement.
    let macs = unsafe { &mut *(start as *mut [u8; MACS]) };
    let mut swapped = [0u8; MACS];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    *macs = swapped;
    xdp_action::XDP_TX
}

lb_ebpf::program_boilerplate!("bench_tx");
