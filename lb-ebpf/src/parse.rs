//! Parsing: Ethernet, one 802.1Q/802.1ad tag, then the IP version.

use lb_common::Counter;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

use crate::ptr::Packet;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// The network layer a frame carries.
pub enum L3 {
    Ipv4,
    Ipv6,
}

/// Finds the IP header. `Err` carries the outcome for frames that are not IP we can read.
#[inline(always)]
pub fn parse_l3(pkt: &Packet) -> Result<L3, Counter> {
    let eth: &EthHdr = pkt.ref_at(0).ok_or(Counter::PassTruncated)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut offset = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: &VlanHdr = pkt.ref_at(offset).ok_or(Counter::PassTruncated)?;
        ether_type = u16::from_be(vlan.ether_type);
        offset += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => {
            let _: &Ipv4Hdr = pkt.ref_at(offset).ok_or(Counter::PassTruncated)?;
            Ok(L3::Ipv4)
        }
        ETH_P_IPV6 => {
            let _: &Ipv6Hdr = pkt.ref_at(offset).ok_or(Counter::PassTruncated)?;
            Ok(L3::Ipv6)
        }
        _ => Err(Counter::PassNonIp),
    }
}
