//! Traffic generator of the end-to-end benchmark (`cargo xtask bench`), run with
//! `BPF_PROG_TEST_RUN` in XDP live-frames mode, where the kernel transmits every frame the
//! program returns `XDP_TX` for out of the ingress interface.
//!
//! Live frames are recycled: a page comes back to the generator as the last receiver left it
//! (the gateway rewrites MACs, TTL and addresses in place). So the program writes the frame's
//! Ethernet, IPv4 and UDP headers from `BENCH_GEN_HEADERS` (set by the benchmark) into every
//! frame, with a random source port in 32768..=65535 (UDP checksum updated incrementally,
//! RFC 1624) so that the balancer under test sees many flows. With the map unset, the frame
//! goes out as it is.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

/// Ethernet (no VLAN), IPv4 without options, UDP.
const HEADERS: usize = 14 + 20 + 8;
/// Offset of the UDP header.
const L4_OFFSET: usize = 14 + 20;

/// Entry 0: the headers every frame gets; an EtherType of 0 means "unset".
#[map(name = "BENCH_GEN_HEADERS")]
static BENCH_GEN_HEADERS: Array<[u8; HEADERS]> = Array::with_max_entries(1, 0);

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + HEADERS > end {
        return xdp_action::XDP_TX;
    }
    let Some(template) = BENCH_GEN_HEADERS.get(0) else {
        return xdp_action::XDP_TX;
    };
    if template[12] == 0 && template[13] == 0 {
        return xdp_action::XDP_TX;
    }
    // SAFETY: the first `HEADERS` bytes lie inside the packet (checked just above); `u8`
    // arrays have no alignment requirement.
    let head = unsafe { &mut *(start as *mut [u8; HEADERS]) };
    *head = *template;
    // SAFETY: a BPF helper without arguments.
    let port = (unsafe { bpf_get_prandom_u32() } as u16) | 0x8000;
    let old = u16::from_be_bytes([head[L4_OFFSET], head[L4_OFFSET + 1]]);
    let csum = u16::from_be_bytes([head[L4_OFFSET + 6], head[L4_OFFSET + 7]]);
    head[L4_OFFSET..L4_OFFSET + 2].copy_from_slice(&port.to_be_bytes());
    // A zero UDP checksum means "none" (IPv4): leave it so.
    if csum != 0 {
        // HC' = ~(~HC + ~m + m')
        let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(port);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let mut new = !(sum as u16);
        if new == 0 {
            new = 0xffff;
        }
        head[L4_OFFSET + 6..L4_OFFSET + 8].copy_from_slice(&new.to_be_bytes());
    }
    xdp_action::XDP_TX
}

lb_ebpf::program_boilerplate!("bench_gen");
