//! Mutation fuzz of the data path: valid requests to the VIPs, replies from backends, packets
//! for elsewhere and fragments of datagrams (in order, or a later one first), built with
//! etherparse and mutated (truncation, bit flips, length and offset fields, TTLs, padding, VLAN
//! tags and IPv6 extension-header chains), run through the real program with
//! `BPF_PROG_TEST_RUN` in the packet fixtures' lab and judged by an oracle:
//!
//! - a model of the strict parsing rules (README, "What the data path does with a packet"),
//!   written here independently of `lb_common::parse`, says what may become of each packet:
//!   passed untouched, dropped, balanced or (from a backend) translated back; the action must be
//!   one of those;
//! - the outcome counters, read per batch, grew by one per packet, each action's counters by
//!   the packets that got that action, and each counter within what the model allows;
//! - a packet not for a VIP passes unchanged;
//! - a translated packet is well formed (etherparse), only its addresses, ports, TTL,
//!   checksums and MACs changed, and its checksums are valid where the input's were (a partial
//!   checksum stays the partial one for its new addresses);
//! - a flow keeps its backend while it cannot have expired;
//! - a later fragment gets the translation of its datagram's first fragment (only its address
//!   changed, its payload untouched) while that cannot have expired, and none without one; a
//!   first fragment's checksum changes exactly by the rewrite (it covers the whole datagram).
//!
//! `XDPLB_FUZZ_PACKETS` (default 1,000,000) sets the number of packets, `XDPLB_FUZZ_SEED` the
//! seed (printed at the start), `XDPLB_FUZZ_BATCH` the packets between counter reads (1 names
//! the packet a counter mismatch comes from).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::{SlicedPacket, TransportSlice};
use lb_common::{Counter, counters::xdp_action};
use lb_tests::{
    lab::PacketLab,
    packet::{
        L4, Link, arp_request, describe, fragments, frame_with, icmp_echo, partial, tcp_flags,
        with_ipv6_ext, with_vlan,
    },
};
use lb_user::{counters::Counters, model::Proto};

const DEFAULT_PACKETS: u64 = 1_000_000;
const DEFAULT_BATCH: usize = 1024;
/// The run stops with a failure if it takes longer than this, whatever the packet count.
const TIME_LIMIT: Duration = Duration::from_secs(900);
/// Within this of its last translated packet a flow cannot have expired, so it must keep its
/// backend: the shortest idle timeout (the half-open one), less the second by which a lazily
/// stamped entry may expire early (`REFRESH_NS`), less a second for the coarse clock.
const STICKY_WITHIN: Duration = {
    let t = lb_common::conntrack::DEFAULT_TIMEOUTS;
    let all = [
        t.tcp_syn_ns,
        t.tcp_established_ns,
        t.tcp_fin_ns,
        t.tcp_rst_ns,
        t.udp_ns,
    ];
    let (mut shortest, mut i) = (u64::MAX, 0);
    while i < all.len() {
        if all[i] < shortest {
            shortest = all[i];
        }
        i += 1;
    }
    Duration::from_nanos(shortest - lb_common::conntrack::REFRESH_NS - 1_000_000_000)
};
/// Within this of its first fragment's translation, a later fragment must get it (the fragment
/// timeout less a second for the coarse clock); after this, it must not (plus a second).
const FRAG_SURE: Duration = Duration::from_nanos(lb_common::frag::FRAG_TIMEOUT_NS - 1_000_000_000);
const FRAG_LIVE: Duration = Duration::from_nanos(lb_common::frag::FRAG_TIMEOUT_NS + 1_000_000_000);
/// Failures reported before the run stops.
const MAX_FAILURES: usize = 10;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const EXT_HEADERS: [u8; 4] = [0, 43, 60, 44];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
        Err(_) => default,
    }
}

// --- The lab's configuration, as the oracle sees it -----------------------------------------

struct Config {
    /// (address, protocol) of every VIP.
    vip_addrs: HashSet<(IpAddr, u8)>,
    /// (address, port, protocol) of every VIP, and whether it has backends.
    vips: HashMap<(IpAddr, u16, u8), bool>,
    /// Every backend address.
    backend_addrs: HashSet<IpAddr>,
    /// The VIPs, for making requests: address, port, protocol.
    targets: Vec<(IpAddr, u16, u8)>,
    /// Backend address and port, for making replies.
    backends: Vec<SocketAddr>,
}

impl Config {
    fn of(lab: &PacketLab) -> Self {
        let mut config = Config {
            vip_addrs: HashSet::new(),
            vips: HashMap::new(),
            backend_addrs: HashSet::new(),
            targets: Vec::new(),
            backends: Vec::new(),
        };
        for info in lab.balancer.vips() {
            let proto = match info.vip.proto {
                Proto::Tcp => PROTO_TCP,
                Proto::Udp => PROTO_UDP,
            };
            let (addr, port) = (info.vip.addr, info.vip.port);
            config.vip_addrs.insert((addr, proto));
            config
                .vips
                .insert((addr, port, proto), !info.backends.is_empty());
            config.targets.push((addr, port, proto));
            for backend in &info.backends {
                config.backend_addrs.insert(backend.spec.addr.ip());
                config.backends.push(backend.spec.addr);
            }
        }
        assert!(config.targets.len() >= 10 && !config.backends.is_empty());
        config
    }

    fn is_vip_addr(&self, addr: IpAddr) -> bool {
        self.vip_addrs.iter().any(|(a, _)| *a == addr)
    }
}

// --- The model of the strict parsing rules ----------------------------------------------

/// What the model reads off a frame's IP header and what it says of it.
#[derive(Clone, Debug)]
struct Ip {
    v6: bool,
    l3_off: usize,
    src: IpAddr,
    dst: IpAddr,
    /// The transport protocol, or an extension header's number if the chain was not followed.
    proto: u8,
    transport_unknown: bool,
    l4_off: usize,
    l4_len: usize,
    ttl: u8,
    /// The first rule the packet breaks, if it is to a VIP.
    problem: Option<Counter>,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`].
    frag: u8,
    /// The IPv4 identification or IPv6 fragment identification.
    frag_id: u32,
}

const FRAG_NONE: u8 = 0;
const FRAG_FIRST: u8 = 1;
const FRAG_LATER: u8 = 2;

/// RFC 791 and 8200: offset 0 and more to come is a first fragment, any offset a later one.
fn frag_class(more: bool, offset: u16) -> u8 {
    match (more, offset) {
        (false, 0) => FRAG_NONE,
        (true, 0) => FRAG_FIRST,
        _ => FRAG_LATER,
    }
}

/// What a fragment that is not balanced as it stands gets: only TCP and UDP first fragments
/// are; later fragments take their first fragment's translation (see [`Fate::LaterFragment`]).
fn frag_problem(frag: u8, proto: u8) -> Option<Counter> {
    match frag {
        FRAG_NONE => None,
        FRAG_FIRST if matches!(proto, PROTO_TCP | PROTO_UDP) => None,
        _ => Some(Counter::DropFragment),
    }
}

/// What may become of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Passed untouched, counted so.
    Untouched(Counter),
    /// Dropped, counted so.
    Dropped(Counter),
    /// Translated to one of the VIP's backends.
    Balanced,
    /// From a backend address and well formed: translated to come from the VIP if it belongs
    /// to a tracked flow (or the backend port is one VIP's alone), passed untouched otherwise,
    /// or dropped untouched if the port is several VIPs' and the flow unknown.
    MaybeReply,
    /// As [`Fate::MaybeReply`], but arriving on the client side, which does not lead to that
    /// backend: dropped as spoofed if it names a flow, passed untouched otherwise.
    MaybeSpoofed,
    /// ICMP or ICMPv6: an echo request to a VIP answered, an error about a tracked flow
    /// translated, anything else passed untouched.
    Icmp,
    /// A later fragment to a VIP: to the backend its first fragment went to if that was
    /// translated within the fragment timeout, dropped as an orphan otherwise.
    LaterFragment,
    /// A later fragment from a backend address: translated to come from the VIP its first
    /// fragment was translated to, if it was (within the timeout); passed untouched otherwise.
    MaybeLaterReply,
}

const BALANCED: [Counter; 5] = [
    Counter::FwdTx,
    Counter::FwdRedirect,
    Counter::PassFib,
    Counter::PassNoNeighbour,
    Counter::PassPartialChecksum,
];
const MAYBE_SPOOFED: [Counter; 2] = [Counter::DropSpoofedReply, Counter::PassNonVip];
const ICMP: [Counter; 8] = [
    Counter::IcmpEchoTx,
    Counter::IcmpToBackendTx,
    Counter::IcmpToBackendRedirect,
    Counter::IcmpToClientTx,
    Counter::IcmpToClientRedirect,
    Counter::PassNonVip,
    Counter::PassFib,
    Counter::PassNoNeighbour,
];
const LATER_FRAGMENT: [Counter; 5] = [
    Counter::FwdTx,
    Counter::FwdRedirect,
    Counter::PassFib,
    Counter::PassNoNeighbour,
    Counter::DropFragmentOrphan,
];
const MAYBE_LATER_REPLY: [Counter; 5] = [
    Counter::ReplyTx,
    Counter::ReplyRedirect,
    Counter::PassFib,
    Counter::PassNoNeighbour,
    Counter::PassNonVip,
];
const MAYBE_REPLY: [Counter; 8] = [
    Counter::ReplyTx,
    Counter::ReplyRedirect,
    Counter::PassFib,
    Counter::PassNoNeighbour,
    Counter::PassPartialChecksum,
    Counter::PassNonVip,
    Counter::PassReplyTooBig,
    Counter::DropUntrackedReply,
];

impl Fate {
    fn counters(self) -> &'static [Counter] {
        match self {
            // `Counter::ALL` is in index order.
            Fate::Untouched(c) | Fate::Dropped(c) => {
                std::slice::from_ref(&Counter::ALL[c as usize])
            }
            Fate::Balanced => &BALANCED,
            Fate::MaybeReply => &MAYBE_REPLY,
            Fate::MaybeSpoofed => &MAYBE_SPOOFED,
            Fate::Icmp => &ICMP,
            Fate::LaterFragment => &LATER_FRAGMENT,
            Fate::MaybeLaterReply => &MAYBE_LATER_REPLY,
        }
    }
}

fn u16_at(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn ipv4(f: &[u8], l3: usize) -> Option<Ip> {
    if f.len() < l3 + 20 {
        return None;
    }
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    let tot_len = usize::from(u16_at(f, l3 + 2));
    let frags = u16_at(f, l3 + 6);
    let avail = f.len() - l3;
    let problem = if f[l3] >> 4 != 4 || ihl < 20 || tot_len < ihl {
        Some(Counter::DropBadHeader)
    } else if tot_len > avail {
        Some(Counter::DropTruncated)
    } else if ihl > 20 {
        Some(Counter::DropIpOptions)
    } else {
        frag_problem(frag_class(frags & 0x2000 != 0, frags & 0x1fff), f[l3 + 9])
    };
    let addr = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&f[at..at + 4]).unwrap());
    Some(Ip {
        v6: false,
        l3_off: l3,
        src: addr(l3 + 12),
        dst: addr(l3 + 16),
        proto: f[l3 + 9],
        transport_unknown: false,
        l4_off: l3 + 20,
        l4_len: tot_len.saturating_sub(20),
        ttl: f[l3 + 8],
        problem,
        frag: frag_class(frags & 0x2000 != 0, frags & 0x1fff),
        frag_id: u32::from(u16_at(f, l3 + 4)),
    })
}

fn ipv6(f: &[u8], l3: usize) -> Option<Ip> {
    if f.len() < l3 + 40 {
        return None;
    }
    let addr = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap());
    let mut ip = Ip {
        v6: true,
        l3_off: l3,
        src: addr(l3 + 8),
        dst: addr(l3 + 24),
        proto: f[l3 + 6],
        transport_unknown: false,
        l4_off: l3 + 40,
        l4_len: usize::from(u16_at(f, l3 + 4)),
        ttl: f[l3 + 7],
        problem: None,
        frag: FRAG_NONE,
        frag_id: 0,
    };
    if f[l3] >> 4 != 6 {
        ip.problem = Some(Counter::DropBadHeader);
    } else if 40 + ip.l4_len > f.len() - l3 {
        ip.problem = Some(Counter::DropTruncated);
    } else {
        // Up to 4 extension headers; a fragment header ends the chain, unless it is an atomic
        // fragment's (offset 0, no more: a whole packet).
        let mut followed = 0;
        while EXT_HEADERS.contains(&ip.proto) && ip.problem.is_none() {
            if followed == 4 {
                ip.problem = Some(Counter::DropExtHeaders);
                break;
            }
            followed += 1;
            let readable = f.len() >= ip.l4_off + 2;
            if ip.proto == 44 && f.len() >= ip.l4_off + 8 {
                if ip.l4_len < 8 {
                    ip.problem = Some(Counter::DropBadHeader);
                } else {
                    let word = u16_at(f, ip.l4_off + 2);
                    ip.proto = f[ip.l4_off];
                    ip.frag = frag_class(word & 1 != 0, word >> 3);
                    ip.frag_id =
                        u32::from_be_bytes(f[ip.l4_off + 4..ip.l4_off + 8].try_into().unwrap());
                    ip.l4_off += 8;
                    ip.l4_len -= 8;
                    if ip.frag != FRAG_NONE {
                        ip.problem = frag_problem(ip.frag, ip.proto);
                        break;
                    }
                }
            } else if ip.proto == 44 {
                if readable {
                    ip.proto = f[ip.l4_off];
                }
                ip.problem = Some(Counter::DropFragment);
            } else if !readable {
                ip.problem = Some(Counter::DropTruncated);
            } else {
                let len = (usize::from(f[ip.l4_off + 1]) + 1) * 8;
                if len > ip.l4_len {
                    ip.problem = Some(Counter::DropBadHeader);
                } else {
                    ip.proto = f[ip.l4_off];
                    ip.l4_off += len;
                    ip.l4_len -= len;
                }
            }
        }
    }
    ip.transport_unknown = EXT_HEADERS.contains(&ip.proto);
    Some(ip)
}

/// The IP header of a frame (behind at most one VLAN tag), or the fate of one without.
fn ip_of(f: &[u8]) -> Result<Ip, Fate> {
    let mut ether_type = u16_at(f, 12);
    let mut l3 = 14;
    if ether_type == 0x8100 || ether_type == 0x88a8 {
        if f.len() < 18 {
            return Err(Fate::Untouched(Counter::PassMalformed));
        }
        ether_type = u16_at(f, 16);
        l3 = 18;
    }
    let ip = match ether_type {
        ETH_P_IP => ipv4(f, l3),
        ETH_P_IPV6 => ipv6(f, l3),
        _ => return Err(Fate::Untouched(Counter::PassNonIp)),
    };
    let mut ip = ip.ok_or(Fate::Untouched(Counter::PassMalformed))?;
    if ip.problem.is_none() && ip.frag == FRAG_FIRST {
        // A first fragment must hold its transport header; its UDP length is the datagram's.
        ip.problem = match ip.proto {
            PROTO_TCP if f.len() < ip.l4_off + 20 || ip.l4_len < 20 => Some(Counter::DropFragment),
            PROTO_TCP => {
                let header = usize::from(f[ip.l4_off + 12] >> 4) * 4;
                if header < 20 {
                    Some(Counter::DropBadL4Header)
                } else {
                    (header > ip.l4_len).then_some(Counter::DropFragment)
                }
            }
            PROTO_UDP if f.len() < ip.l4_off + 8 || ip.l4_len < 8 => Some(Counter::DropFragment),
            PROTO_UDP => {
                let len = usize::from(u16_at(f, ip.l4_off + 4));
                if len < 8 {
                    Some(Counter::DropBadL4Header)
                } else {
                    (len <= ip.l4_len).then_some(Counter::DropFragment)
                }
            }
            _ => Some(Counter::DropFragment),
        }
        .or((ip.ttl <= 1).then_some(Counter::PassTtlExpired));
    } else if ip.problem.is_none() {
        ip.problem = match ip.proto {
            PROTO_TCP if f.len() < ip.l4_off + 20 => Some(Counter::DropTruncated),
            PROTO_TCP => {
                let header = usize::from(f[ip.l4_off + 12] >> 4) * 4;
                (header < 20 || header > ip.l4_len).then_some(Counter::DropBadL4Header)
            }
            PROTO_UDP if f.len() < ip.l4_off + 8 => Some(Counter::DropTruncated),
            PROTO_UDP => {
                let len = usize::from(u16_at(f, ip.l4_off + 4));
                (len < 8 || len != ip.l4_len).then_some(Counter::DropBadL4Header)
            }
            _ => None,
        }
        .or((ip.ttl <= 1).then_some(Counter::PassTtlExpired));
    }
    Ok(ip)
}

/// What may become of `f`, and its IP header if it has one.
fn fate(f: &[u8], config: &Config) -> (Fate, Option<Ip>) {
    let ip = match ip_of(f) {
        Ok(ip) => ip,
        Err(fate) => return (fate, None),
    };
    if matches!(ip.proto, PROTO_ICMP | PROTO_ICMPV6) {
        return (Fate::Icmp, Some(ip));
    }
    let to_vip = if ip.transport_unknown {
        config.vip_addrs.contains(&(ip.dst, PROTO_TCP))
            || config.vip_addrs.contains(&(ip.dst, PROTO_UDP))
    } else {
        config.vip_addrs.contains(&(ip.dst, ip.proto))
    };
    let later = ip.frag == FRAG_LATER && ip.problem == Some(Counter::DropFragment);
    let fate = if to_vip && later {
        if ip.ttl <= 1 {
            Fate::Untouched(Counter::PassTtlExpired)
        } else {
            Fate::LaterFragment
        }
    } else if to_vip {
        match ip.problem {
            Some(c) if c.action() == xdp_action::PASS => Fate::Untouched(c),
            Some(c) => Fate::Dropped(c),
            None => {
                let port = u16_at(f, ip.l4_off + 2);
                let vip = config
                    .vips
                    .get(&(ip.dst, port, ip.proto))
                    .or_else(|| config.vips.get(&(ip.dst, 0, ip.proto)));
                match vip {
                    None => Fate::Untouched(Counter::PassNonVip),
                    Some(false) => Fate::Dropped(Counter::DropNoBackend),
                    Some(true) => Fate::Balanced,
                }
            }
        }
    } else if config.backend_addrs.contains(&ip.src) && later {
        if ip.ttl <= 1 {
            Fate::Untouched(Counter::PassNonVip)
        } else {
            Fate::MaybeLaterReply
        }
    } else if config.backend_addrs.contains(&ip.src)
        && ip.problem.is_none()
        && matches!(ip.proto, PROTO_TCP | PROTO_UDP)
    {
        Fate::MaybeReply
    } else {
        Fate::Untouched(Counter::PassNonVip)
    };
    (fate, Some(ip))
}

// --- Checksums, summed here from scratch ------------------------------------------------

fn sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo_sum(f: &[u8], ip: &Ip) -> u64 {
    let l4_len = ip.l4_len as u64;
    let addrs = if ip.v6 {
        &f[ip.l3_off + 8..ip.l3_off + 40]
    } else {
        &f[ip.l3_off + 12..ip.l3_off + 20]
    };
    sum(addrs) + u64::from(ip.proto) + (l4_len & 0xffff) + (l4_len >> 16)
}

fn check_offset(ip: &Ip) -> usize {
    ip.l4_off + if ip.proto == PROTO_UDP { 6 } else { 16 }
}

/// The TCP/UDP checksum field of a well-formed `f`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4Sum {
    /// A correct full checksum.
    Full,
    /// The partial checksum for its pseudo-header (and no correct full one).
    Partial,
    /// UDP with checksum 0: none (IPv4) or an invalid one (IPv6).
    None,
    Wrong,
}

fn l4_sum(f: &[u8], ip: &Ip) -> L4Sum {
    let at = check_offset(ip);
    let field = u16_at(f, at);
    // IPv4's "no checksum"; never valid for IPv6 (RFC 8200 8.1), where the receiver drops it:
    // either way the translation keeps it 0 (`lb_common::csum::udp_checksum_after`).
    if ip.proto == PROTO_UDP && field == 0 {
        return L4Sum::None;
    }
    let segment = &f[ip.l4_off..ip.l4_off + ip.l4_len];
    if fold(pseudo_sum(f, ip) + sum(segment)) == 0xffff {
        L4Sum::Full
    } else if field == fold(pseudo_sum(f, ip)) {
        L4Sum::Partial
    } else {
        L4Sum::Wrong
    }
}

/// An ICMP message the program answered or translated keeps valid checksums (IPv4 header,
/// ICMP/ICMPv6 with its pseudo-header) where the input's were valid.
fn icmp_checksums_kept(input: &[u8], output: &[u8]) -> Result<(), String> {
    let valid = |f: &[u8]| -> Option<(bool, bool)> {
        let ip = ip_of(f).ok()?;
        let end = (ip.l4_off + ip.l4_len).min(f.len());
        let message = f.get(ip.l4_off..end)?;
        let icmp = if ip.v6 {
            fold(pseudo_sum(f, &ip) + sum(message)) == 0xffff
        } else {
            fold(sum(message)) == 0xffff
        };
        Some((ip.v6 || ipv4_header_ok(f, &ip), icmp))
    };
    let (Some((header_in, icmp_in)), Some((header_out, icmp_out))) = (valid(input), valid(output))
    else {
        return Err("an ICMP message in or out that does not parse".into());
    };
    if header_in && !header_out {
        return Err("ICMP: the IPv4 header checksum broke".into());
    }
    if header_in && icmp_in && !icmp_out {
        return Err("ICMP: the ICMP checksum broke".into());
    }
    Ok(())
}

fn ipv4_header_ok(f: &[u8], ip: &Ip) -> bool {
    fold(sum(&f[ip.l3_off..ip.l3_off + 20])) == 0xffff
}

/// Repairs the IPv4 header checksum and the full TCP/UDP checksum of `f` where its headers
/// let them be computed.
fn repair_checksums(f: &mut [u8]) {
    let Ok(ip) = ip_of(f) else { return };
    if !ip.v6
        && f[ip.l3_off] & 0x0f >= 5
        && f.len() >= ip.l3_off + usize::from(f[ip.l3_off] & 0x0f) * 4
    {
        let (start, len) = (ip.l3_off, usize::from(f[ip.l3_off] & 0x0f) * 4);
        f[start + 10..start + 12].fill(0);
        let check = !fold(sum(&f[start..start + len]));
        f[start + 10..start + 12].copy_from_slice(&check.to_be_bytes());
    }
    let header = if ip.proto == PROTO_UDP { 8 } else { 20 };
    if !matches!(ip.proto, PROTO_TCP | PROTO_UDP)
        || ip.l4_len < header
        || f.len() < ip.l4_off + ip.l4_len
    {
        return;
    }
    let at = check_offset(&ip);
    f[at..at + 2].fill(0);
    let mut check = !fold(pseudo_sum(f, &ip) + sum(&f[ip.l4_off..ip.l4_off + ip.l4_len]));
    if ip.proto == PROTO_UDP && check == 0 {
        check = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&check.to_be_bytes());
}

// --- Making packets -------------------------------------------------------------------

struct Maker<'a> {
    rng: fastrand::Rng,
    config: &'a Config,
    /// Fragments of datagrams already begun, to come among the next packets.
    pending: Vec<Vec<u8>>,
}

const CLIENTS: [&str; 2] = ["198.18.0.2", "198.18.0.9"];
const CLIENTS6: [&str; 2] = ["fd00::2", "fd00::9"];
const CLIENT_PORTS: std::ops::Range<u16> = 41000..41048;

impl Maker<'_> {
    fn l4(&mut self, proto: u8) -> L4 {
        if proto == PROTO_UDP {
            return L4::Udp;
        }
        use tcp_flags::*;
        let flags = [SYN, SYN, ACK, PSH | ACK, FIN | ACK, RST, SYN | ACK];
        L4::Tcp(*self.rng.choice(&flags).unwrap())
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = *self.rng.choice(&[0, 1, 2, 7, 18, 64, 300]).unwrap();
        std::iter::repeat_with(|| self.rng.u8(..))
            .take(len)
            .collect()
    }

    fn client(&mut self, v6: bool) -> SocketAddr {
        let addr = if v6 {
            IpAddr::V6(
                self.rng
                    .choice(CLIENTS6)
                    .unwrap()
                    .parse::<Ipv6Addr>()
                    .unwrap(),
            )
        } else {
            IpAddr::V4(
                self.rng
                    .choice(CLIENTS)
                    .unwrap()
                    .parse::<Ipv4Addr>()
                    .unwrap(),
            )
        };
        SocketAddr::new(addr, self.rng.u16(CLIENT_PORTS))
    }

    fn link(&mut self) -> Link {
        Link {
            ttl: *self.rng.choice(&[64, 64, 64, 2, 1]).unwrap(),
            ..Link::default()
        }
    }

    /// A valid packet: to a VIP, from a backend to a client, or for elsewhere; or a fragment of
    /// a datagram to a VIP or from a backend.
    fn base(&mut self) -> Vec<u8> {
        if !self.pending.is_empty() && (self.rng.bool() || self.pending.len() > 64) {
            return self.pending.remove(0);
        }
        if self.rng.u8(..100) < 8 {
            return self.fragmented();
        }
        let roll = self.rng.u8(..100);
        let (frame, v6, src, dst) = if roll < 55 {
            let (addr, port, proto) = *self.rng.choice(&self.config.targets).unwrap();
            let port = if port == 0 { self.rng.u16(1..) } else { port };
            let dst = SocketAddr::new(addr, port);
            let src = self.client(addr.is_ipv6());
            let (link, l4, payload) = (self.link(), self.l4(proto), self.payload());
            (
                frame_with(link, src, dst, l4, &payload),
                addr.is_ipv6(),
                src,
                dst,
            )
        } else if roll < 85 {
            let backend = *self.rng.choice(&self.config.backends).unwrap();
            let src = if backend.port() == 0 {
                SocketAddr::new(backend.ip(), self.rng.u16(1..))
            } else {
                backend
            };
            let dst = self.client(src.is_ipv6());
            let proto = if self.rng.bool() {
                PROTO_TCP
            } else {
                PROTO_UDP
            };
            let (link, l4, payload) = (self.link(), self.l4(proto), self.payload());
            (
                frame_with(link, src, dst, l4, &payload),
                src.is_ipv6(),
                src,
                dst,
            )
        } else {
            match self.rng.u8(..6) {
                0 => return arp_request(),
                1 => return icmp_echo([198, 19, 0, 1]),
                _ => {
                    let v6 = self.rng.bool();
                    let dst: SocketAddr = if v6 {
                        *self
                            .rng
                            .choice(&[
                                "[fd00:0:0:1::2]:8080".parse().unwrap(),
                                "[fd00::99]:80".parse().unwrap(),
                            ])
                            .unwrap()
                    } else {
                        *self
                            .rng
                            .choice(&[
                                "198.18.1.2:8080".parse().unwrap(),
                                "10.1.2.3:80".parse().unwrap(),
                            ])
                            .unwrap()
                    };
                    let src = self.client(v6);
                    let proto = if self.rng.bool() {
                        PROTO_TCP
                    } else {
                        PROTO_UDP
                    };
                    let (link, l4, payload) = (self.link(), self.l4(proto), self.payload());
                    (frame_with(link, src, dst, l4, &payload), v6, src, dst)
                }
            }
        };
        let mut frame = frame;
        if self.rng.u8(..10) == 0 {
            frame = partial(frame, src.ip(), dst.ip());
        }
        if v6 && self.rng.u8(..4) == 0 {
            for _ in 0..self.rng.usize(1..=5) {
                let kind = *self.rng.choice(&[0, 43, 60, 60, 44]).unwrap();
                frame = with_ipv6_ext(&frame, kind);
            }
        }
        if self.rng.u8(..10) == 0 {
            frame = with_vlan(&frame, self.rng.u16(1..4095));
        }
        frame
    }

    /// The first fragment of a datagram to a VIP or from a backend, cut in two or three; the
    /// rest go to `pending`. One in eight comes after its second fragment.
    fn fragmented(&mut self) -> Vec<u8> {
        let (src, dst, proto) = if self.rng.bool() {
            let (addr, port, proto) = *self.rng.choice(&self.config.targets).unwrap();
            let port = if port == 0 { self.rng.u16(1..) } else { port };
            (
                self.client(addr.is_ipv6()),
                SocketAddr::new(addr, port),
                proto,
            )
        } else {
            let backend = *self.rng.choice(&self.config.backends).unwrap();
            let src = if backend.port() == 0 {
                SocketAddr::new(backend.ip(), self.rng.u16(1..))
            } else {
                backend
            };
            let proto = if self.rng.bool() {
                PROTO_TCP
            } else {
                PROTO_UDP
            };
            (src, self.client(src.is_ipv6()), proto)
        };
        let len = *self.rng.choice(&[24, 64, 200, 300]).unwrap();
        let payload: Vec<u8> = std::iter::repeat_with(|| self.rng.u8(..))
            .take(len)
            .collect();
        let (link, l4) = (self.link(), self.l4(proto));
        let frame = frame_with(link, src, dst, l4, &payload);
        let l4_len = len + if proto == PROTO_UDP { 8 } else { 20 };
        let mut ends = Vec::new();
        let mut at = 0;
        for _ in 1..self.rng.usize(2..=3) {
            let room = (l4_len - 1 - at) / 8;
            if room == 0 {
                break;
            }
            at += 8 * self.rng.usize(1..=room);
            ends.push(at);
        }
        ends.push(l4_len);
        let random = self.rng.u32(..);
        let id = *self.rng.choice(&[0, 1, 0x1234, random]).unwrap();
        let mut pieces = fragments(&frame, id, &ends);
        if self.rng.u8(..8) == 0 {
            pieces.swap(0, 1);
        }
        let first = pieces.remove(0);
        self.pending.extend(pieces);
        first
    }

    /// `frame` with one mutation applied.
    fn mutate(&mut self, f: &mut Vec<u8>) {
        let ip = ip_of(f).ok();
        let interesting = |rng: &mut fastrand::Rng, current: u16| -> u16 {
            let random = rng.u16(..);
            *rng.choice(&[
                0,
                4,
                8,
                19,
                20,
                21,
                current.wrapping_sub(1),
                current.wrapping_add(1),
                current.wrapping_add(8),
                1000,
                0xffff,
                random,
            ])
            .unwrap()
        };
        match self.rng.u8(..10) {
            0 => {
                let len = self.rng.usize(14..=f.len());
                f.truncate(len);
            }
            1 | 2 => {
                let at = self.rng.usize(..f.len().min(14 + 4 + 40 + 48 + 20));
                f[at] ^= 1 << self.rng.u8(..8);
            }
            3 => {
                let at = self.rng.usize(..f.len());
                f[at] ^= 1 << self.rng.u8(..8);
            }
            4 | 5 => {
                let Some(ip) = ip else { return };
                let field = match (self.rng.u8(..3), ip.v6) {
                    (0, false) => ip.l3_off + 2,
                    (0, true) => ip.l3_off + 4,
                    (1, _) if ip.proto == PROTO_UDP => ip.l4_off + 4,
                    (1, _) if ip.proto == PROTO_TCP => {
                        if f.len() > ip.l4_off + 12 {
                            let words = self.rng.u8(..16);
                            f[ip.l4_off + 12] = (words << 4) | (f[ip.l4_off + 12] & 0x0f);
                        }
                        return;
                    }
                    (_, false) => {
                        f[ip.l3_off] = 0x40 | self.rng.u8(..16);
                        return;
                    }
                    _ => ip.l3_off + 4,
                };
                if f.len() >= field + 2 {
                    let value = interesting(&mut self.rng, u16_at(f, field));
                    f[field..field + 2].copy_from_slice(&value.to_be_bytes());
                }
            }
            6 => {
                let Some(ip) = ip else { return };
                let at = ip.l3_off + if ip.v6 { 7 } else { 8 };
                let random = self.rng.u8(..);
                f[at] = *self.rng.choice(&[0, 1, 2, random]).unwrap();
            }
            7 => {
                let len = self.rng.usize(1..=32);
                let byte = if self.rng.bool() { 0 } else { self.rng.u8(..) };
                f.resize(f.len() + len, byte);
            }
            8 => {
                // An IPv6 extension header's length or type.
                let Some(ip) = ip.filter(|ip| ip.v6 && ip.l4_off > ip.l3_off + 40) else {
                    return;
                };
                let at = ip.l3_off + 40 + self.rng.usize(..2);
                f[at] = if at == ip.l3_off + 40 {
                    *self.rng.choice(&[0, 6, 17, 43, 44, 58, 60]).unwrap()
                } else {
                    self.rng.u8(..)
                };
            }
            _ => {
                // The EtherType (or the one behind the tag).
                let at = if matches!(u16_at(f, 12), 0x8100 | 0x88a8) && f.len() >= 18 {
                    16
                } else {
                    12
                };
                let random = self.rng.u16(..);
                let value: u16 = *self
                    .rng
                    .choice(&[ETH_P_IP, ETH_P_IPV6, 0x8100, 0x88a8, 0x0806, random])
                    .unwrap();
                f[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
        }
    }
}

// --- The oracle -----------------------------------------------------------------------

/// A flow's 5-tuple as the client sent it.
type Tuple = (IpAddr, u16, IpAddr, u16, u8);

/// A fragmented datagram as its fragments arrive: source, destination, identification,
/// protocol, and whether it is a reply (from a backend).
type Datagram = (IpAddr, IpAddr, u32, u8, bool);

fn datagram(ip: &Ip, reply: bool) -> Datagram {
    (ip.src, ip.dst, ip.frag_id, ip.proto, reply)
}

#[derive(Default)]
struct Oracle {
    /// Backend (address, port) of every translated flow, and when it was last translated.
    flows: HashMap<Tuple, (SocketAddr, Instant)>,
    /// The address every translated first fragment got (the backend's, or for a reply the
    /// VIP's), and when.
    datagrams: HashMap<Datagram, (IpAddr, Instant)>,
    /// Later fragments translated, and dropped as orphans.
    later_translated: u64,
    orphans: u64,
    translated: u64,
    fates: HashMap<String, u64>,
}

impl Oracle {
    /// Judges one run of the program: `Err` says what is wrong.
    fn judge(
        &mut self,
        input: &[u8],
        action: u32,
        output: &[u8],
        fate: Fate,
        ip: Option<&Ip>,
        config: &Config,
    ) -> Result<(), String> {
        let actions: Vec<u32> = fate.counters().iter().map(|c| c.action()).collect();
        if !actions.contains(&action) {
            return Err(format!("{fate:?} allows actions {actions:?}, got {action}"));
        }
        *self.fates.entry(format!("{fate:?}")).or_default() += 1;
        let unchanged = input == output;
        match fate {
            Fate::Dropped(_) => Ok(()),
            Fate::Untouched(_) if unchanged => Ok(()),
            Fate::Untouched(_) => Err("passed, but changed".into()),
            Fate::MaybeSpoofed if unchanged => Ok(()),
            Fate::Icmp if unchanged => Ok(()),
            Fate::Icmp => icmp_checksums_kept(input, output),
            Fate::MaybeSpoofed => Err("spoofed reply, but changed".into()),
            Fate::MaybeReply
                if unchanged && matches!(action, xdp_action::PASS | xdp_action::DROP) =>
            {
                Ok(())
            }
            Fate::Balanced if unchanged => Err("balanced, but not translated".into()),
            Fate::LaterFragment | Fate::MaybeLaterReply => {
                let ip = ip.expect("a fragment has an IP header");
                let reply = fate == Fate::MaybeLaterReply;
                let first = self.datagrams.get(&datagram(ip, reply)).copied();
                if unchanged && matches!(action, xdp_action::DROP | xdp_action::PASS) {
                    self.orphans += 1;
                    // Once the LRU map may be full (its per-CPU free lists take some of it),
                    // an entry may have been evicted.
                    let may_evict =
                        self.datagrams.len() > lb_common::maps::FRAGMENTS_CAPACITY as usize / 2;
                    return match first {
                        Some((_, when)) if when.elapsed() < FRAG_SURE && !may_evict => {
                            Err(format!(
                                "later fragment not translated, {:?} after its first was",
                                when.elapsed()
                            ))
                        }
                        _ => Ok(()),
                    };
                }
                self.later_translated += 1;
                let (out_src, out_dst) = later_translated(input, output, action, ip, reply)?;
                let got = if reply { out_src } else { out_dst };
                match first {
                    Some((addr, when)) if addr == got && when.elapsed() < FRAG_LIVE => Ok(()),
                    Some((addr, when)) => Err(format!(
                        "later fragment translated to {got}, its first to {addr} {:?} ago",
                        when.elapsed()
                    )),
                    None => Err(format!("later fragment translated to {got}, no first was")),
                }
            }
            Fate::Balanced | Fate::MaybeReply => {
                let ip = ip.expect("a packet to translate has an IP header");
                self.translated += 1;
                let (out_src, out_dst) = translated(input, output, action, ip)?;
                let tuple = (ip.src, sport(input, ip), ip.dst, dport(input, ip), ip.proto);
                if ip.frag == FRAG_FIRST {
                    let reply = fate == Fate::MaybeReply;
                    let got = if reply { out_src.ip() } else { out_dst.ip() };
                    self.datagrams
                        .insert(datagram(ip, reply), (got, Instant::now()));
                }
                if fate == Fate::MaybeReply {
                    if !config.is_vip_addr(out_src.ip()) {
                        return Err(format!("reply translated to come from {out_src}, no VIP"));
                    }
                    return Ok(());
                }
                if !config.backend_addrs.contains(&out_dst.ip()) {
                    return Err(format!("sent to {out_dst}, no backend"));
                }
                let now = Instant::now();
                if let Some((backend, last)) = self.flows.get(&tuple)
                    && *backend != out_dst
                    && now - *last < STICKY_WITHIN
                {
                    return Err(format!(
                        "flow {tuple:?} moved from {backend} to {out_dst} after {:?}",
                        now - *last
                    ));
                }
                self.flows.insert(tuple, (out_dst, now));
                Ok(())
            }
        }
    }
}

fn sport(f: &[u8], ip: &Ip) -> u16 {
    u16_at(f, ip.l4_off)
}

fn dport(f: &[u8], ip: &Ip) -> u16 {
    u16_at(f, ip.l4_off + 2)
}

/// Checks a translated `output` against its `input`; returns its source and destination.
fn translated(
    input: &[u8],
    output: &[u8],
    action: u32,
    ip: &Ip,
) -> Result<(SocketAddr, SocketAddr), String> {
    if output.len() != input.len() {
        return Err(format!("length {} became {}", input.len(), output.len()));
    }
    // etherparse follows fewer extension-header chains than the program (one header of a
    // kind, in the RFC's order): what it could parse before, it must parse after.
    let l4_parses = |f: &[u8]| {
        SlicedPacket::from_ethernet(f).is_ok_and(|p| {
            matches!(
                p.transport,
                Some(TransportSlice::Tcp(_) | TransportSlice::Udp(_))
            )
        })
    };
    if l4_parses(input) && !l4_parses(output) {
        return Err(format!(
            "etherparse cannot parse the translated packet: {:?}",
            SlicedPacket::from_ethernet(output).err()
        ));
    }
    let Ok(out_ip) = ip_of(output) else {
        return Err("no IP header after translation".into());
    };
    if out_ip.problem.is_some_and(|p| p != Counter::PassTtlExpired) {
        return Err(format!(
            "translated packet breaks a rule: {:?}",
            out_ip.problem
        ));
    }
    // Only MACs, addresses, ports, TTL and checksums change; the rest is as it came.
    let ttl_at = ip.l3_off + if ip.v6 { 7 } else { 8 };
    let forwarded = matches!(action, xdp_action::TX | xdp_action::REDIRECT);
    let expected_ttl = if forwarded { ip.ttl - 1 } else { ip.ttl };
    if output[ttl_at] != expected_ttl {
        return Err(format!("TTL {} became {}", ip.ttl, output[ttl_at]));
    }
    let fixed = |f: &[u8]| -> Vec<u8> {
        let mut f = f.to_vec();
        f[..12].fill(0);
        f[ttl_at] = 0;
        if ip.v6 {
            f[ip.l3_off + 8..ip.l3_off + 40].fill(0);
        } else {
            f[ip.l3_off + 10..ip.l3_off + 20].fill(0);
        }
        f[ip.l4_off..ip.l4_off + 4].fill(0);
        let at = check_offset(ip);
        f[at..at + 2].fill(0);
        f
    };
    if fixed(input) != fixed(output) {
        return Err("bytes other than addresses, ports, TTL, checksums and MACs changed".into());
    }
    if !ip.v6 && ipv4_header_ok(input, ip) && !ipv4_header_ok(output, &out_ip) {
        return Err("IPv4 header checksum wrong after translation".into());
    }
    // A full checksum must stay correct; a partial one must become the partial one for the
    // new addresses (checked as such: it may be a correct full one by chance as well).
    let field = u16_at(output, check_offset(&out_ip));
    if ip.frag == FRAG_FIRST {
        // The checksum covers the whole datagram: what the rewrite must keep is the sum of
        // addresses, ports and checksum field (RFC 1624), 0 and 0xffff alike.
        let kept = |f: &[u8], ip: &Ip| {
            let addrs = if ip.v6 {
                &f[ip.l3_off + 8..ip.l3_off + 40]
            } else {
                &f[ip.l3_off + 12..ip.l3_off + 20]
            };
            let at = check_offset(ip);
            u64::from(fold(
                sum(addrs) + sum(&f[ip.l4_off..ip.l4_off + 4]) + sum(&f[at..at + 2]),
            )) % 0xffff
        };
        // UDP's 0 stays 0 (see `l4_sum`).
        let none = ip.proto == PROTO_UDP && u16_at(input, check_offset(ip)) == 0;
        let ok = if none {
            field == 0
        } else {
            kept(input, ip) == kept(output, &out_ip)
        };
        if !ok {
            return Err(format!(
                "first fragment's checksum {:#06x} became {field:#06x}, not by the rewrite",
                u16_at(input, check_offset(ip))
            ));
        }
        return Ok((
            SocketAddr::new(out_ip.src, sport(output, &out_ip)),
            SocketAddr::new(out_ip.dst, dport(output, &out_ip)),
        ));
    }
    let ok = match l4_sum(input, ip) {
        L4Sum::Full => l4_sum(output, &out_ip) == L4Sum::Full,
        L4Sum::Partial => field == fold(pseudo_sum(output, &out_ip)),
        L4Sum::None => field == 0,
        L4Sum::Wrong => true,
    };
    if !ok {
        return Err(format!(
            "TCP/UDP checksum {:?} became {:#06x} ({:?})",
            l4_sum(input, ip),
            field,
            l4_sum(output, &out_ip)
        ));
    }
    Ok((
        SocketAddr::new(out_ip.src, sport(output, &out_ip)),
        SocketAddr::new(out_ip.dst, dport(output, &out_ip)),
    ))
}

/// Checks a translated later fragment `output` against its `input`: only its destination
/// address (a request) or source address (a reply), TTL, IPv4 header checksum and MACs may
/// change, its payload not at all. Returns its source and destination.
fn later_translated(
    input: &[u8],
    output: &[u8],
    action: u32,
    ip: &Ip,
    reply: bool,
) -> Result<(IpAddr, IpAddr), String> {
    if output.len() != input.len() {
        return Err(format!("length {} became {}", input.len(), output.len()));
    }
    let Ok(out_ip) = ip_of(output) else {
        return Err("no IP header after translation".into());
    };
    let ttl_at = ip.l3_off + if ip.v6 { 7 } else { 8 };
    let forwarded = matches!(action, xdp_action::TX | xdp_action::REDIRECT);
    let expected_ttl = if forwarded { ip.ttl - 1 } else { ip.ttl };
    if output[ttl_at] != expected_ttl {
        return Err(format!("TTL {} became {}", ip.ttl, output[ttl_at]));
    }
    let fixed = |f: &[u8]| -> Vec<u8> {
        let mut f = f.to_vec();
        f[..12].fill(0);
        f[ttl_at] = 0;
        if ip.v6 {
            f[ip.l3_off + 8..ip.l3_off + 40].fill(0);
        } else {
            f[ip.l3_off + 10..ip.l3_off + 20].fill(0);
        }
        f
    };
    if fixed(input) != fixed(output) {
        return Err(
            "a later fragment: bytes other than addresses, TTL, checksum and MACs \
                    changed"
                .into(),
        );
    }
    if !ip.v6 && ipv4_header_ok(input, ip) && !ipv4_header_ok(output, &out_ip) {
        return Err("IPv4 header checksum wrong after translation".into());
    }
    let (kept, side) = if reply {
        (out_ip.dst == ip.dst, "destination")
    } else {
        (out_ip.src == ip.src, "source")
    };
    if !kept {
        return Err(format!("a later fragment's {side} changed"));
    }
    Ok((out_ip.src, out_ip.dst))
}

// --- The run --------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn mutation_fuzz() {
    let packets: u64 = env_or("XDPLB_FUZZ_PACKETS", DEFAULT_PACKETS);
    let batch_size: usize = env_or("XDPLB_FUZZ_BATCH", DEFAULT_BATCH).max(1);
    let seed: u64 = env_or("XDPLB_FUZZ_SEED", fastrand::u64(..));
    println!("mutation fuzz: {packets} packets, seed {seed} (XDPLB_FUZZ_SEED={seed} repeats it)");

    let mut lab = PacketLab::set_up();
    let config = Config::of(&lab);
    let (gc, gb0) = (lab.gc, lab.gb0);
    let gb1 = lab
        .topo
        .gateway
        .run(|| lb_user::loader::if_index(&lb_tests::netns::gw_backend_if(1)))
        .expect("gb1");
    // The interface a packet from `src` comes in on: a backend's net (198.18.N.0/24 and
    // fd00:0:0:N::/64 are net N: 0 the client side, 1 and 2 backends 0 and 1).
    let home = |src: IpAddr| {
        let net = match src {
            IpAddr::V4(v4) => v4.octets()[2],
            IpAddr::V6(v6) => v6.octets()[7],
        };
        match net {
            1 => gb0,
            2 => gb1,
            _ => gc,
        }
    };
    let loaded = &mut lab.loaded;
    let (elapsed, oracle) = lab.topo.gateway.run(|| {
        let mut maker = Maker {
            rng: fastrand::Rng::with_seed(seed),
            config: &config,
            pending: Vec::new(),
        };
        let mut oracle = Oracle::default();
        let mut failures = Vec::new();
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, .. }
        let mut ctx: Vec<u8> = [0, 0, 0, gc, 0, 0]
            .iter()
            .flat_map(|field| field.to_ne_bytes())
            .collect();
        let mut output = vec![0u8; 4096];
        let start = Instant::now();
        let mut before = Counters::read(&loaded.ebpf).expect("counters");
        let mut batch = Batch::default();
        let mut sent = 0u64;
        let mut last = String::new();
        while sent < packets && failures.len() < MAX_FAILURES {
            assert!(
                start.elapsed() < TIME_LIMIT,
                "{sent} packets in {:?}: too slow (seed {seed})",
                start.elapsed()
            );
            let mut input = maker.base();
            for _ in 0..maker.rng.usize(..=3) {
                maker.mutate(&mut input);
            }
            if maker.rng.bool() {
                repair_checksums(&mut input);
            }
            let (mut fate, ip) = fate(&input, &config);
            // Replies come in where their backend is; one in eight from the client side, where
            // they are spoofed.
            let mut ingress = gc;
            if let (Fate::MaybeReply | Fate::MaybeLaterReply, Some(ip)) = (fate, &ip) {
                ingress = home(ip.src);
                if ingress != gc && maker.rng.u8(..8) == 0 {
                    (fate, ingress) = (Fate::MaybeSpoofed, gc);
                }
            }
            ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
            let result = loaded
                .program()
                .expect("program")
                .test_run(TestRunOptions {
                    data_in: Some(&input),
                    data_out: Some(&mut output),
                    ctx_in: Some(&ctx),
                    ..TestRunOptions::new()
                })
                .unwrap_or_else(|err| panic!("test run of {}: {err}", describe(&input)));
            sent += 1;
            let (action, out) = (
                result.return_value,
                &output[..result.data_size_out as usize],
            );
            if let Err(what) = oracle.judge(&input, action, out, fate, ip.as_ref(), &config) {
                failures.push(format!(
                    "packet {sent}: {what}\n  input:  {}\n          {}\n  output: {}",
                    describe(&input),
                    hex(&input),
                    describe(out)
                ));
            }
            batch.add(fate, action);
            if batch_size == 1 {
                last = format!(
                    "\n  packet: {fate:?}: {} ({})",
                    describe(&input),
                    hex(&input)
                );
            }
            if sent.is_multiple_of(batch_size as u64) || sent == packets {
                let after = Counters::read(&loaded.ebpf).expect("counters");
                let wrong = batch.check(&before, &after);
                if !wrong.is_empty() {
                    failures.push(format!(
                        "batch ending at packet {sent}: {}{}",
                        wrong.join("; "),
                        if batch_size == 1 {
                            &last
                        } else {
                            " (XDPLB_FUZZ_BATCH=1 names the packet)"
                        }
                    ));
                    break;
                }
                (before, batch) = (after, Batch::default());
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures (seed {seed}):\n{}",
            failures.len(),
            failures.join("\n")
        );
        (start.elapsed(), oracle)
    });
    let rate = packets as f64 / elapsed.as_secs_f64();
    println!(
        "{packets} packets in {elapsed:.1?} ({rate:.0}/s), {} translated, {} flows; \
         {} fragmented datagrams, {} later fragments translated, {} not",
        oracle.translated,
        oracle.flows.len(),
        oracle.datagrams.len(),
        oracle.later_translated,
        oracle.orphans
    );
    let mut fates: Vec<_> = oracle.fates.into_iter().collect();
    fates.sort();
    for (fate, count) in fates {
        println!("  {fate}: {count}");
    }
    assert!(
        oracle.translated > packets / 20,
        "too few packets translated to judge"
    );
}

/// One batch's expectations of the outcome counters.
#[derive(Default)]
struct Batch {
    /// Packets by the action they got.
    by_action: [u64; 5],
    /// By counter: packets whose fate allows only it, and packets whose fate allows it.
    must: HashMap<Counter, u64>,
    may: HashMap<Counter, u64>,
}

impl Batch {
    fn add(&mut self, fate: Fate, action: u32) {
        self.by_action[action.min(4) as usize] += 1;
        let allowed = fate.counters();
        if let [only] = allowed {
            *self.must.entry(*only).or_default() += 1;
        }
        for c in allowed {
            *self.may.entry(*c).or_default() += 1;
        }
    }

    /// What is wrong with the counters' growth from `before` to `after` over the batch: each
    /// packet counted once, each action's counters grown by the packets that got it, each
    /// counter within what the packets' fates allow.
    fn check(&self, before: &Counters, after: &Counters) -> Vec<String> {
        let delta = |c: Counter| after.get(c) - before.get(c);
        let n: u64 = self.by_action.iter().sum();
        let mut wrong = Vec::new();
        let counted: u64 = Counter::ALL.iter().map(|c| delta(*c)).sum();
        if counted != n {
            wrong.push(format!("{n} packets, {counted} counted"));
        }
        for (action, count) in self.by_action.iter().enumerate() {
            let counted: u64 = Counter::ALL
                .iter()
                .filter(|c| c.action() == action as u32)
                .map(|c| delta(*c))
                .sum();
            if counted != *count {
                wrong.push(format!(
                    "action {action}: {count} packets, its counters grew by {counted}"
                ));
            }
        }
        for c in Counter::ALL {
            let lo = self.must.get(c).copied().unwrap_or(0);
            let hi = self.may.get(c).copied().unwrap_or(0);
            if !(lo..=hi).contains(&delta(*c)) {
                wrong.push(format!(
                    "{} grew by {}, not {lo}..={hi}",
                    c.name(),
                    delta(*c)
                ));
            }
        }
        wrong
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
