//! The agent's side of health checks through the `ipip` tunnel (`[vip.health] path = "vip"`):
//! a TC program on the egress of the interfaces the agent routes its marked checks out of. A
//! packet whose socket mark has an entry in [`PROBE_TUNNELS`] (`lb_common::probe`) gets an
//! outer header to that backend, after the Ethernet header (`bpf_skb_adjust_room`, whose ENCAP
//! flags keep a partial checksum's offsets pointing at the inner transport header), as the
//! balancer encapsulates clients' packets; every other packet leaves as it came. A check's
//! packet that cannot be encapsulated is dropped: sent as it is, it would reach a backend
//! without decapsulation as a plain packet to the VIP, and pass.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_FIXED_GSO,
        BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use lb_common::{
    encap::{ETH_P_IPV4, IPV4_OUTER_LEN, IPV6_OUTER_LEN},
    flow::FAMILY_IPV4,
    probe::{MAX_PROBE_TUNNELS, ProbeTunnel, ipv4_outer, ipv6_outer},
};

const ETH_LEN: usize = 14;

/// Socket mark → the backend a check with that mark is encapsulated to; written by the agent.
#[map(name = "PROBE_TUNNELS")]
static PROBE_TUNNELS: HashMap<u32, ProbeTunnel> =
    HashMap::with_max_entries(MAX_PROBE_TUNNELS, BPF_F_NO_PREALLOC);

#[classifier]
pub fn probe_encap(ctx: TcContext) -> i32 {
    match encapsulate(&ctx) {
        Ok(()) => TC_ACT_OK,
        Err(action) => action,
    }
}

/// Encapsulates a marked check's packet; `Err` carries the action for any other outcome:
/// `TC_ACT_OK` for a packet that is not a check's, `TC_ACT_SHOT` for a check's that could not
/// be encapsulated.
#[inline(always)]
fn encapsulate(ctx: &TcContext) -> Result<(), i32> {
    // SAFETY: `skb` is the context pointer the kernel passed to this program, valid for its
    // whole run; `mark` is a readable field of `__sk_buff`.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark == 0 {
        return Err(TC_ACT_OK);
    }
    // SAFETY: the value is copied out at once, before any other map call.
    let Some(tunnel) = (unsafe { PROBE_TUNNELS.get(mark) }).copied() else {
        return Err(TC_ACT_OK);
    };
    let ether_type = u16::from_be_bytes(ctx.load::<[u8; 2]>(12).map_err(|_| TC_ACT_SHOT)?);
    if !tunnel.carries(ether_type) {
        return Err(TC_ACT_SHOT);
    }
    if tunnel.family == FAMILY_IPV4 && ether_type == ETH_P_IPV4 {
        let inner = ctx.load::<[u8; 20]>(ETH_LEN).map_err(|_| TC_ACT_SHOT)?;
        let dst = [tunnel.dst[0], tunnel.dst[1], tunnel.dst[2], tunnel.dst[3]];
        let outer = ipv4_outer(&inner, &dst).ok_or(TC_ACT_SHOT)?;
        ctx.adjust_room(
            IPV4_OUTER_LEN as i32,
            BPF_ADJ_ROOM_MAC,
            u64::from(BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4),
        )
        .map_err(|_| TC_ACT_SHOT)?;
        ctx.store(ETH_LEN, &outer, 0).map_err(|_| TC_ACT_SHOT)?;
    } else {
        let inner = ctx.load::<[u8; 40]>(ETH_LEN).map_err(|_| TC_ACT_SHOT)?;
        let outer = ipv6_outer(&inner, &tunnel.dst).ok_or(TC_ACT_SHOT)?;
        ctx.adjust_room(
            IPV6_OUTER_LEN as i32,
            BPF_ADJ_ROOM_MAC,
            u64::from(BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6),
        )
        .map_err(|_| TC_ACT_SHOT)?;
        ctx.store(ETH_LEN, &outer, 0).map_err(|_| TC_ACT_SHOT)?;
    }
    Ok(())
}

lb_ebpf::program_boilerplate!("probe_encap");
