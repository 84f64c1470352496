//! The backends' side of `ipip` forwarding (`xdplb decap --iface IF`): an XDP program that
//! strips the outer header of IPv4-in-IPv4 (protocol 4) and IPv6-in-IPv6 (next header 41)
//! packets and passes the inner packet to the stack, for kernels or images without the
//! ipip/ip6tnl modules. Every such packet arriving on the interface is decapsulated, whatever
//! its outer addresses (the balancer's outer sources vary per flow); everything else passes as
//! it came (`lb_common::encap::decap_len`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

// The balancer's bounds-checked packet access; this program uses a part of it.
#[allow(dead_code)]
#[path = "../ptr.rs"]
mod ptr;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::encap::decap_len;

use crate::ptr::Packet;

const ETH_LEN: usize = 14;

#[xdp]
pub fn decap(mut ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(&mut ctx);
    match strip(&mut pkt) {
        Some(true) | None => xdp_action::XDP_PASS,
        // The headroom could not be given back: the frame is no longer what came in.
        Some(false) => xdp_action::XDP_DROP,
    }
}

/// Strips the outer header if the frame carries one to strip: `Some(true)` if it did,
/// `None` if there was none, `Some(false)` if the kernel refused to move the start.
#[inline(always)]
fn strip(pkt: &mut Packet) -> Option<bool> {
    let eth = pkt.ref_at::<[u8; ETH_LEN]>(0)?;
    let ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let (dst_mac, src_mac) = (
        ([eth[0], eth[1], eth[2], eth[3]], [eth[4], eth[5]]),
        ([eth[6], eth[7], eth[8], eth[9]], [eth[10], eth[11]]),
    );
    let first = *pkt.ref_at::<u8>(ETH_LEN)?;
    let (proto, frags, inner_off) = if first >> 4 == 6 {
        (*pkt.ref_at::<u8>(ETH_LEN + 6)?, 0, ETH_LEN + 40)
    } else {
        let frags = pkt.ref_at::<[u8; 2]>(ETH_LEN + 6)?;
        (
            *pkt.ref_at::<u8>(ETH_LEN + 9)?,
            u16::from_be_bytes(*frags),
            ETH_LEN + 20,
        )
    };
    let inner_first = *pkt.ref_at::<u8>(inner_off)?;
    let len = decap_len(ether_type, first, proto, frags, inner_first);
    if len == 0 {
        return None;
    }
    if !pkt.adjust_head(len as i32) {
        return Some(false);
    }
    // Ethernet, as it was, in front of the inner packet; the type is the same family's.
    *pkt.ref_mut_at::<[u8; 4]>(0)? = dst_mac.0;
    *pkt.ref_mut_at::<[u8; 2]>(4)? = dst_mac.1;
    *pkt.ref_mut_at::<[u8; 4]>(6)? = src_mac.0;
    *pkt.ref_mut_at::<[u8; 2]>(10)? = src_mac.1;
    *pkt.ref_mut_at::<[u8; 2]>(12)? = ether_type.to_be_bytes();
    Some(true)
}

lb_ebpf::program_boilerplate!("decap");
