//! Parsing: Ethernet, one 802.1Q/802.1ad tag, IPv4 or IPv6 (extension headers up to a bound),
//! TCP or UDP. Stage helpers return `Err(Counter)` with the final outcome.
//!
//! Parsing is strict for packets to a VIP: lengths and offsets must agree with each other and
//! with the frame (the checks are `lb_common::parse`'s), and an expiring TTL is not translated.
//! Anything else keeps passing untouched whatever its headers say: the kernel judges it.

use lb_common::{
    Counter,
    flow::{FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP},
    frag::{
        FRAG_FIRST, FRAG_NONE, first_fragment_problem, fragment_problem, ipv4_class, ipv6_class,
    },
    parse::{
        IPV4_HEADER_LEN, after_ext_header, ipv4_problem, ipv6_problem, tcp_problem, ttl_problem,
        udp_problem,
    },
};
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::ptr::{Packet, copy16, set_v4};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers the parser follows before the transport header.
const MAX_EXT_HEADERS: usize = 4;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// Fixed part of the IPv4 header, read as bytes.
#[repr(C)]
pub struct Ipv4Fixed {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frags: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// The IPv6 header, read as bytes.
#[repr(C)]
pub struct Ipv6Fixed {
    pub vcf: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first two bytes of an IPv6 extension header.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    len: u8,
}

/// The IPv6 fragment header.
#[repr(C)]
struct FragHdr {
    next_hdr: u8,
    _reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

const FRAG_HDR_LEN: usize = 8;

/// Where the IP header is and what it says.
pub struct L3 {
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Offset of the IP header; 14, or 18 behind a VLAN tag.
    pub l3_off: usize,
    /// The transport protocol (after IPv6 extension headers); an extension header's number if
    /// the chain was not followed to its end (see [`L3::transport_unknown`]).
    pub proto: u8,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// Length of transport header and payload, from the IP header.
    pub l4_len: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub vlan: bool,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// Why a packet to a VIP is not balanced, if it is not: it cannot be safely (lengths,
    /// options, fragments, ...), or must not be (TTL about to expire). A later fragment's is
    /// [`Counter::DropFragment`]; it has no ports, and takes its first fragment's translation
    /// (`frag`).
    pub problem: Option<Counter>,
    /// `lb_common::frag::FRAG_*`: whether the packet is a fragment, and which.
    pub frag: u8,
    /// The IPv4 identification or IPv6 fragment identification of a fragment.
    pub frag_id: u32,
}

impl L3 {
    pub fn v6(&self) -> bool {
        self.family == FAMILY_IPV6
    }

    /// True if the parser stopped inside the IPv6 extension header chain, so the transport
    /// protocol is not known.
    pub fn transport_unknown(&self) -> bool {
        self.v6() && is_ext_header(self.proto)
    }
}

fn is_ext_header(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
    )
}

/// Finds and reads the IP header into `out`. `Err` is the outcome for frames that are not IP
/// we can read addresses from.
///
/// Strict parsing (`lb_common::parse`): `out.problem` is the first of the IP header's problems;
/// [`strict`] adds the TCP/UDP header's and the TTL's.
#[inline(always)]
pub fn parse_l3(pkt: &Packet, out: &mut L3) -> Result<(), Counter> {
    let eth: &EthHdr = pkt.ref_at(0).ok_or(Counter::PassMalformed)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3_off = EthHdr::LEN;
    let mut vlan = false;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let tag: &VlanHdr = pkt.ref_at(l3_off).ok_or(Counter::PassMalformed)?;
        ether_type = u16::from_be(tag.ether_type);
        l3_off += VlanHdr::LEN;
        vlan = true;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(pkt, l3_off, vlan, out),
        ETH_P_IPV6 => parse_ipv6(pkt, l3_off, vlan, out),
        _ => Err(Counter::PassNonIp),
    }
}

/// The rest of strict parsing, for a packet the program may translate (to a VIP, or from a
/// backend): `Err` is the first problem of its IP header (from [`parse_l3`]), TCP/UDP header
/// lengths or TTL, also kept in `l3.problem`. Apart from [`parse_l3`] so that the packets
/// passed as neither (most of them, on a busy router) do not pay for it.
#[inline(always)]
pub fn strict(pkt: &Packet, l3: &mut L3) -> Result<(), Counter> {
    if l3.problem.is_none() {
        l3.problem = if l3.frag == FRAG_FIRST {
            first_fragment_transport_problem(pkt, l3)
        } else {
            transport_problem(pkt, l3)
        }
        .or(ttl_problem(l3.ttl));
    }
    match l3.problem {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// Reads the IPv4 header into `l3`.
#[inline(always)]
fn parse_ipv4(pkt: &Packet, l3_off: usize, vlan: bool, l3: &mut L3) -> Result<(), Counter> {
    let ip: &Ipv4Fixed = pkt.ref_at(l3_off).ok_or(Counter::PassMalformed)?;
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let avail = pkt.len() - l3_off as u64;
    l3.frag = ipv4_class(u16::from_be_bytes(ip.frags));
    l3.frag_id = u32::from(u16::from_be_bytes(ip.id));
    l3.problem = ipv4_problem(ip.vihl, tot_len, avail).or(fragment_problem(l3.frag, ip.proto));
    l3.family = FAMILY_IPV4;
    l3.l3_off = l3_off;
    l3.proto = ip.proto;
    l3.l4_off = l3_off + 20;
    l3.l4_len = u32::from(tot_len).saturating_sub(IPV4_HEADER_LEN);
    set_v4(&mut l3.src, &ip.src);
    set_v4(&mut l3.dst, &ip.dst);
    l3.vlan = vlan;
    l3.ttl = ip.ttl;
    Ok(())
}

/// Reads the IPv6 header into `l3` and follows its extension headers.
#[inline(always)]
fn parse_ipv6(pkt: &Packet, l3_off: usize, vlan: bool, l3: &mut L3) -> Result<(), Counter> {
    let ip: &Ipv6Fixed = pkt.ref_at(l3_off).ok_or(Counter::PassMalformed)?;
    let payload_len = u16::from_be_bytes(ip.payload_len);
    l3.family = FAMILY_IPV6;
    l3.l3_off = l3_off;
    l3.proto = ip.next_hdr;
    l3.l4_off = l3_off + 40;
    l3.l4_len = u32::from(payload_len);
    copy16(&mut l3.src, &ip.src);
    copy16(&mut l3.dst, &ip.dst);
    l3.vlan = vlan;
    l3.ttl = ip.hop_limit;
    l3.frag = FRAG_NONE;
    l3.frag_id = 0;
    l3.problem = ipv6_problem(ip.vcf[0], payload_len, pkt.len() - l3_off as u64);
    if l3.problem.is_some() {
        return Ok(());
    }
    for _ in 0..MAX_EXT_HEADERS {
        match l3.proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = pkt.ref_at::<ExtHdr>(l3.l4_off) else {
                    l3.problem = Some(Counter::DropTruncated);
                    return Ok(());
                };
                let len = (usize::from(ext.len) + 1) * 8;
                match after_ext_header(l3.l4_len, len as u32) {
                    Ok(left) => l3.l4_len = left,
                    Err(problem) => {
                        l3.problem = Some(problem);
                        return Ok(());
                    }
                }
                l3.proto = ext.next_hdr;
                l3.l4_off += len;
            }
            IPPROTO_FRAGMENT => {
                if !fragment_header(pkt, l3) {
                    return Ok(());
                }
            }
            _ => return Ok(()),
        }
    }
    if is_ext_header(l3.proto) {
        l3.problem = Some(Counter::DropExtHeaders);
    }
    Ok(())
}

/// Reads the IPv6 fragment header at `l3.l4_off` into `l3`. False if the chain ends there: a
/// fragment (its header is the last the parser follows: the transport header of a first
/// fragment must come next) or a header cut short; true for an atomic fragment (offset 0, no
/// more: a whole packet, RFC 6946), after which the chain goes on.
///
/// Not inlined: the parser is part of the entry function, whose stack frame adds up with those
/// of every call below it.
#[inline(never)]
fn fragment_header(pkt: &Packet, l3: &mut L3) -> bool {
    let Some(hdr) = pkt.ref_at::<FragHdr>(l3.l4_off) else {
        // The protocol it carries, so a fragment to a VIP is known as one.
        if let Some(ext) = pkt.ref_at::<ExtHdr>(l3.l4_off) {
            l3.proto = ext.next_hdr;
        }
        l3.problem = Some(Counter::DropFragment);
        return false;
    };
    match after_ext_header(l3.l4_len, FRAG_HDR_LEN as u32) {
        Ok(left) => l3.l4_len = left,
        Err(problem) => {
            l3.problem = Some(problem);
            return false;
        }
    }
    l3.proto = hdr.next_hdr;
    l3.l4_off += FRAG_HDR_LEN;
    l3.frag = ipv6_class(u16::from_be_bytes(hdr.offset_flags));
    l3.frag_id = u32::from_be_bytes(hdr.id);
    if l3.frag == FRAG_NONE {
        return true;
    }
    l3.problem = fragment_problem(l3.frag, l3.proto);
    false
}

/// The TCP data offset or UDP length against the segment's length from the IP header; a
/// header cut short by the frame is a truncated packet. Other protocols have no problem here.
#[inline(always)]
fn transport_problem(pkt: &Packet, l3: &L3) -> Option<Counter> {
    match l3.proto {
        PROTO_TCP => match pkt.ref_at::<TcpStart>(l3.l4_off) {
            Some(tcp) => tcp_problem(tcp.data_off, l3.l4_len),
            None => Some(Counter::DropTruncated),
        },
        PROTO_UDP => match pkt.ref_at::<UdpHdr>(l3.l4_off) {
            Some(udp) => udp_problem(u16::from_be_bytes(udp.len), l3.l4_len),
            None => Some(Counter::DropTruncated),
        },
        _ => None,
    }
}

/// [`transport_problem`] for a first fragment (`lb_common::frag::first_fragment_problem`):
/// its transport header must lie within it; a UDP length gives the whole datagram.
#[inline(always)]
fn first_fragment_transport_problem(pkt: &Packet, l3: &L3) -> Option<Counter> {
    let field = match l3.proto {
        PROTO_TCP => match pkt.ref_at::<TcpStart>(l3.l4_off) {
            Some(tcp) => u16::from(tcp.data_off),
            None => return Some(Counter::DropFragment),
        },
        PROTO_UDP => match pkt.ref_at::<UdpHdr>(l3.l4_off) {
            Some(udp) => u16::from_be_bytes(udp.len),
            None => return Some(Counter::DropFragment),
        },
        _ => return Some(Counter::DropFragment),
    };
    first_fragment_problem(l3.proto, l3.l4_len, field)
}

/// The ports and the fields of the transport header the balancer uses.
pub struct L4 {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
    /// Offset of the checksum field.
    pub check_off: usize,
    pub check: u16,
}

/// The first 14 bytes of a TCP header (up to and including the flags), then the checksum.
#[repr(C)]
struct TcpStart {
    ports: [[u8; 2]; 2],
    seq_ack: [u8; 8],
    data_off: u8,
    flags: u8,
    window: [u8; 2],
    check: [u8; 2],
    urg: [u8; 2],
}

#[repr(C)]
struct UdpHdr {
    ports: [[u8; 2]; 2],
    len: [u8; 2],
    check: [u8; 2],
}

/// Reads the TCP or UDP header into `out`; false if it is cut short or the protocol is
/// another.
#[inline(always)]
pub fn parse_l4(pkt: &Packet, l3: &L3, out: &mut L4) -> bool {
    match l3.proto {
        PROTO_TCP => {
            let Some(tcp) = pkt.ref_at::<TcpStart>(l3.l4_off) else {
                return false;
            };
            out.src_port = tcp.ports[0];
            out.dst_port = tcp.ports[1];
            out.tcp_flags = tcp.flags;
            out.check_off = l3.l4_off + 16;
            out.check = u16::from_be_bytes(tcp.check);
            true
        }
        PROTO_UDP => {
            let Some(udp) = pkt.ref_at::<UdpHdr>(l3.l4_off) else {
                return false;
            };
            out.src_port = udp.ports[0];
            out.dst_port = udp.ports[1];
            out.tcp_flags = 0;
            out.check_off = l3.l4_off + 6;
            out.check = u16::from_be_bytes(udp.check);
            true
        }
        _ => false,
    }
}
