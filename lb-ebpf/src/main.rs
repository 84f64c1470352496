//! The xdplb XDP program: parse, count, pass. Stages live in their own modules; only `main`
//! and `ptr` touch the `XdpContext`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod maps;
mod parse;
mod ptr;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::Counter;

use crate::{parse::L3, ptr::Packet};

#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    let (counter, action) = match try_lb(&Packet::new(&ctx)) {
        Ok(done) => done,
        Err(counter) => (counter, xdp_action::XDP_PASS),
    };
    stats::count(counter);
    action
}

#[inline(always)]
fn try_lb(pkt: &Packet) -> Result<(Counter, u32), Counter> {
    let counter = match parse::parse_l3(pkt)? {
        L3::Ipv4 => Counter::PassIpv4,
        L3::Ipv6 => Counter::PassIpv6,
    };
    Ok((counter, xdp_action::XDP_PASS))
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: any reachable panic fails verification.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    panic!("lb-ebpf is an XDP program; it is built for bpfel-unknown-none by lb-user's build.rs");
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
