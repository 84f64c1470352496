//! Test packets, built with etherparse, and readable one-line summaries of frames.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv6Extensions,
    Ipv6FragmentHeader, Ipv6Header, LaxPacketHeaders, LinkHeader, NetHeaders, PacketBuilder,
    TransportHeader, ip_number,
};

use crate::sa;

/// MAC address of the client side in fixtures.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC address of the gateway in fixtures.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// TCP flag bits, as in the header's flags byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The transport layer of a test packet.
#[derive(Copy, Clone, Debug)]
pub enum L4 {
    /// TCP with these flags (see [`tcp_flags`]).
    Tcp(u8),
    Udp,
}

/// An Ethernet frame from `src` to `dst` (both IPv4 or both IPv6) carrying `l4` and `payload`,
/// with correct lengths and checksums, from [`CLIENT_MAC`] to [`GATEWAY_MAC`] with TTL 64.
pub fn frame(src: SocketAddr, dst: SocketAddr, l4: L4, payload: &[u8]) -> Vec<u8> {
    frame_with(Link::default(), src, dst, l4, payload)
}

/// The link-layer addresses and TTL (hop limit) of a test frame.
#[derive(Copy, Clone, Debug)]
pub struct Link {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub ttl: u8,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: GATEWAY_MAC,
            ttl: 64,
        }
    }
}

/// [`frame`] with the given MAC addresses and TTL.
pub fn frame_with(link: Link, src: SocketAddr, dst: SocketAddr, l4: L4, payload: &[u8]) -> Vec<u8> {
    let ip = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => IpHeaders::Ipv4(
            Ipv4Header::new(
                0,
                link.ttl,
                ip_number::TCP,
                s.ip().octets(),
                d.ip().octets(),
            )
            .expect("valid IPv4 header"),
            Ipv4Extensions::default(),
        ),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                hop_limit: link.ttl,
                source: s.ip().octets(),
                destination: d.ip().octets(),
                ..Default::default()
            },
            Ipv6Extensions::default(),
        ),
        _ => panic!("mixed address families: {src} -> {dst}"),
    };
    let builder = PacketBuilder::ethernet2(link.src_mac, link.dst_mac).ip(ip);
    let mut out = Vec::new();
    match l4 {
        L4::Tcp(flags) => {
            let mut tcp = builder.tcp(src.port(), dst.port(), 1000, 65535);
            if flags & tcp_flags::FIN != 0 {
                tcp = tcp.fin();
            }
            if flags & tcp_flags::SYN != 0 {
                tcp = tcp.syn();
            }
            if flags & tcp_flags::RST != 0 {
                tcp = tcp.rst();
            }
            if flags & tcp_flags::PSH != 0 {
                tcp = tcp.psh();
            }
            if flags & tcp_flags::ACK != 0 {
                tcp = tcp.ack(1);
            }
            tcp.write(&mut out, payload)
        }
        L4::Udp => builder.udp(src.port(), dst.port()).write(&mut out, payload),
    }
    .expect("writing a test packet");
    out
}

/// `frame` with an 802.1Q tag carrying `vid` inserted after the MAC addresses.
pub fn with_vlan(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00]);
    out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// One line on what a frame carries, for failure messages.
pub fn describe(frame: &[u8]) -> String {
    let Ok(headers) = LaxPacketHeaders::from_ethernet(frame) else {
        return format!("{} bytes, not Ethernet", frame.len());
    };
    let mut out = format!("{} bytes", frame.len());
    match &headers.link {
        Some(LinkHeader::Ethernet2(eth)) => {
            let _ = write!(out, ", eth type {:#06x}", eth.ether_type.0);
        }
        _ => out.push_str(", no Ethernet header"),
    }
    if let Some(vlan) = headers.vlan() {
        let _ = write!(out, ", vlan {vlan:?}");
    }
    match &headers.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            let _ = write!(
                out,
                ", IPv4 {} > {} ttl {} csum {:#06x}",
                std::net::Ipv4Addr::from(ip.source),
                std::net::Ipv4Addr::from(ip.destination),
                ip.time_to_live,
                ip.header_checksum
            );
        }
        Some(NetHeaders::Ipv6(ip, _)) => {
            let _ = write!(
                out,
                ", IPv6 {} > {} hop {}",
                std::net::Ipv6Addr::from(ip.source),
                std::net::Ipv6Addr::from(ip.destination),
                ip.hop_limit
            );
        }
        Some(other) => {
            let _ = write!(out, ", {other:?}");
        }
        None => {}
    }
    match &headers.transport {
        Some(TransportHeader::Tcp(tcp)) => {
            let _ = write!(
                out,
                ", TCP {} > {} csum {:#06x}",
                tcp.source_port, tcp.destination_port, tcp.checksum
            );
        }
        Some(TransportHeader::Udp(udp)) => {
            let _ = write!(
                out,
                ", UDP {} > {} csum {:#06x}",
                udp.source_port, udp.destination_port, udp.checksum
            );
        }
        Some(other) => {
            let _ = write!(out, ", {other:?}");
        }
        None => {}
    }
    if let Some(err) = &headers.stop_err {
        let _ = write!(out, " (then: {err:?})");
    }
    out
}

/// A hex dump of `actual` against `expected`, 16 bytes a row, marking the rows that differ.
pub fn hex_diff(expected: &[u8], actual: &[u8]) -> String {
    let rows = expected.len().max(actual.len()).div_ceil(16);
    let hex = |bytes: &[u8], row: usize| {
        bytes
            .iter()
            .skip(row * 16)
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = String::new();
    for row in 0..rows {
        let (e, a) = (hex(expected, row), hex(actual, row));
        let mark = if e == a { ' ' } else { '!' };
        let _ = writeln!(out, "{mark} {:04x}  expected {e:<47}  actual {a}", row * 16);
    }
    out
}

/// Checks the IPv4 header checksum and the TCP/UDP checksum of `frame` with etherparse, an
/// implementation independent of the code under test.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let packet = SlicedPacket::from_ethernet(frame).map_err(|err| format!("unparsable: {err}"))?;
    let payload = match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => tcp.payload(),
        Some(TransportSlice::Udp(udp)) => udp.payload(),
        _ => return Err("no TCP/UDP header".into()),
    };
    let (computed, found) = match (&packet.net, &packet.transport) {
        (Some(NetSlice::Ipv4(ip)), transport) => {
            let header = ip.header().to_header();
            if header.calc_header_checksum() != header.header_checksum {
                return Err(format!(
                    "bad IPv4 header checksum {:#06x}",
                    header.header_checksum
                ));
            }
            match transport {
                Some(TransportSlice::Tcp(tcp)) => (
                    tcp.to_header()
                        .calc_checksum_ipv4(&header, payload)
                        .map_err(|e| e.to_string())?,
                    tcp.checksum(),
                ),
                Some(TransportSlice::Udp(udp)) if udp.checksum() == 0 => return Ok(()),
                Some(TransportSlice::Udp(udp)) => (
                    udp.to_header()
                        .calc_checksum_ipv4(&header, payload)
                        .map_err(|e| e.to_string())?,
                    udp.checksum(),
                ),
                _ => unreachable!(),
            }
        }
        (Some(NetSlice::Ipv6(ip)), transport) => {
            let header = ip.header().to_header();
            match transport {
                Some(TransportSlice::Tcp(tcp)) => (
                    tcp.to_header()
                        .calc_checksum_ipv6(&header, payload)
                        .map_err(|e| e.to_string())?,
                    tcp.checksum(),
                ),
                Some(TransportSlice::Udp(udp)) => (
                    udp.to_header()
                        .calc_checksum_ipv6(&header, payload)
                        .map_err(|e| e.to_string())?,
                    udp.checksum(),
                ),
                _ => unreachable!(),
            }
        }
        _ => return Err("not IP".into()),
    };
    if computed != found {
        return Err(format!(
            "bad TCP/UDP checksum {found:#06x}, expected {computed:#06x}"
        ));
    }
    Ok(())
}

/// The partial checksum a sender with transmit offload puts in the TCP/UDP checksum field: the
/// folded, uncomplemented sum of the pseudo-header. Written independently of the code under
/// test.
pub fn partial_checksum(
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    proto: u8,
    l4_len: usize,
) -> u16 {
    let mut bytes = Vec::new();
    match (src, dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&[0, proto]);
            bytes.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&(l4_len as u32).to_be_bytes());
            bytes.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Byte offset of the TCP/UDP checksum field in an untagged frame without IP options or
/// extension headers.
pub fn l4_checksum_offset(frame: &[u8]) -> usize {
    let ipv6 = frame[12..14] == [0x86, 0xdd];
    let l4 = if ipv6 { 14 + 40 } else { 14 + 20 };
    let proto = if ipv6 { frame[14 + 6] } else { frame[14 + 9] };
    l4 + if proto == 17 { 6 } else { 16 }
}

// --- Frames altered after they were built, and frames that are not TCP or UDP ------------

/// The frame with its L4 checksum set to `check`, nothing else fixed.
pub fn set_checksum(mut frame: Vec<u8>, check: u16) -> Vec<u8> {
    let at = l4_checksum_offset(&frame);
    frame[at..at + 2].copy_from_slice(&check.to_be_bytes());
    frame
}

/// The frame with the L4 checksum replaced by a partial one for its addresses (transmit offload).
pub fn partial(frame: Vec<u8>, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let ipv6 = frame[12..14] == [0x86, 0xdd];
    let (proto, l4_len) = if ipv6 {
        (
            frame[20],
            usize::from(u16::from_be_bytes([frame[18], frame[19]])),
        )
    } else {
        (
            frame[23],
            usize::from(u16::from_be_bytes([frame[16], frame[17]])) - 20,
        )
    };
    let check = partial_checksum(src, dst, proto, l4_len);
    set_checksum(frame, check)
}

/// A payload of `len` bytes that gives the TCP segment `src` → `dst` (ACK) a full checksum
/// equal to its pseudo-header sum: the value a partial checksum would hold.
pub fn colliding_payload(src: &str, dst: &str, len: usize) -> Vec<u8> {
    (0..=u16::MAX)
        .map(|n| {
            let mut payload = n.to_be_bytes().to_vec();
            payload.resize(len, 0x5a);
            payload
        })
        .find(|payload| {
            let f = frame(sa(src), sa(dst), L4::Tcp(tcp_flags::ACK), payload);
            let at = l4_checksum_offset(&f);
            let check = u16::from_be_bytes([f[at], f[at + 1]]);
            check == partial_checksum(sa(src).ip(), sa(dst).ip(), 6, 20 + len)
        })
        .expect("some payload collides")
}

/// Cuts `frame` to `len` bytes, fixing nothing.
pub fn cut(frame: &[u8], len: usize) -> Vec<u8> {
    frame[..len].to_vec()
}

/// Sets byte `at` of an IPv4 `frame` to `value` and repairs the IPv4 header checksum.
pub fn patch_ipv4(mut frame: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    frame[at] = value;
    frame[24] = 0;
    frame[25] = 0;
    let ihl = usize::from(frame[14] & 0x0f).max(5) * 4;
    let mut sum: u32 = frame[14..14 + ihl]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame
}

/// IPv4 frame with 4 bytes of options (IHL 6) before the TCP header.
pub fn with_ipv4_options(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..34].to_vec();
    out.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    out.extend_from_slice(&frame[34..]);
    let tot_len = u16::from_be_bytes([out[16], out[17]]) + 4;
    out[16..18].copy_from_slice(&tot_len.to_be_bytes());
    patch_ipv4(out, 14, 0x46)
}

/// IPv6 frame with one extension header (`next_hdr`, 8 bytes) before the transport header.
pub fn with_ipv6_ext(frame: &[u8], next_hdr: u8) -> Vec<u8> {
    let proto = frame[20];
    let mut out = frame[..54].to_vec();
    out[20] = next_hdr;
    let plen = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&[proto, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&frame[54..]);
    out
}

/// The IP datagram of an untagged `frame` (IPv4 without options or IPv6 without extension
/// headers) cut into fragments with identification `id`, as a sender's stack cuts it: the
/// fragments' payloads end at the byte offsets `ends` of the datagram's IP payload (multiples
/// of 8 but the last, which is the payload's end). IPv4 fragments have DF clear; IPv6 ones
/// carry a fragment header. Headers are built with etherparse.
pub fn fragments(frame: &[u8], id: u32, ends: &[usize]) -> Vec<Vec<u8>> {
    let ipv6 = frame[12..14] == [0x86, 0xdd];
    let (ip4, ip6) = if ipv6 {
        (
            None,
            Some(Ipv6Header::from_slice(&frame[14..]).expect("IPv6").0),
        )
    } else {
        (
            Some(Ipv4Header::from_slice(&frame[14..]).expect("IPv4").0),
            None,
        )
    };
    let payload = match (&ip4, &ip6) {
        (Some(ip), _) => &frame[14 + ip.header_len()..14 + usize::from(ip.total_len)],
        (_, Some(ip)) => &frame[54..54 + usize::from(ip.payload_length)],
        _ => unreachable!(),
    };
    assert_eq!(
        ends.last(),
        Some(&payload.len()),
        "the last fragment ends the datagram"
    );
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        assert!(
            start % 8 == 0 && end > start,
            "fragment {i} at {start}..{end}"
        );
        let more = i + 1 < ends.len();
        let offset = IpFragOffset::try_new((start / 8) as u16).expect("an offset");
        let chunk = &payload[start..end];
        let mut f = frame[..14].to_vec();
        if let Some(mut ip) = ip4.clone() {
            ip.identification = id as u16;
            ip.dont_fragment = false;
            ip.more_fragments = more;
            ip.fragment_offset = offset;
            ip.set_payload_len(chunk.len()).expect("a length");
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut f).expect("IPv4 header");
        } else if let Some(mut ip) = ip6.clone() {
            let frag = Ipv6FragmentHeader::new(ip.next_header, offset, more, id);
            ip.next_header = IpNumber::IPV6_FRAGMENTATION_HEADER;
            ip.set_payload_length(Ipv6FragmentHeader::LEN + chunk.len())
                .expect("a length");
            ip.write(&mut f).expect("IPv6 header");
            frag.write(&mut f).expect("fragment header");
        }
        f.extend_from_slice(chunk);
        out.push(f);
        start = end;
    }
    out
}

/// An ARP request from the client for the gateway.
pub fn arp_request() -> Vec<u8> {
    let mut out = vec![0xff; 6];
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&[198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
    out
}

/// An ICMP echo request from the client to `dst`.
pub fn icmp_echo(dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
        .ipv4([198, 18, 0, 2], dst, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, b"ping")
        .expect("icmp");
    out
}

// --- Lengths, offsets and TTLs that disagree with the frame -------------------------------

/// Byte offset of the TCP/UDP header in an untagged frame without IP options or extension
/// headers.
pub fn l4_offset(frame: &[u8]) -> usize {
    if frame[12..14] == [0x86, 0xdd] {
        14 + 40
    } else {
        14 + 20
    }
}

/// The frame with its TCP data offset set to `words` (0–15), nothing else fixed.
pub fn with_tcp_data_offset(mut frame: Vec<u8>, words: u8) -> Vec<u8> {
    let at = l4_offset(&frame) + 12;
    frame[at] = (words << 4) | (frame[at] & 0x0f);
    frame
}

/// The frame with its UDP length field set to `len`, nothing else fixed.
pub fn with_udp_length(mut frame: Vec<u8>, len: u16) -> Vec<u8> {
    let at = l4_offset(&frame) + 4;
    frame[at..at + 2].copy_from_slice(&len.to_be_bytes());
    frame
}

/// The frame with the IP header's length (IPv4 total length, repairing the header checksum;
/// IPv6 payload length) changed by `delta` bytes, nothing else fixed.
pub fn with_ip_length_off_by(frame: Vec<u8>, delta: i32) -> Vec<u8> {
    let ipv6 = frame[12..14] == [0x86, 0xdd];
    let at = if ipv6 { 18 } else { 16 };
    let len = i32::from(u16::from_be_bytes([frame[at], frame[at + 1]])) + delta;
    let [hi, lo] = u16::try_from(len).expect("a length").to_be_bytes();
    if ipv6 {
        let mut frame = frame;
        frame[at] = hi;
        frame[at + 1] = lo;
        frame
    } else {
        patch_ipv4(patch_ipv4(frame, at, hi), at + 1, lo)
    }
}

/// The frame with TTL (hop limit) `ttl`, the IPv4 header checksum repaired.
pub fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    if frame[12..14] == [0x86, 0xdd] {
        frame[21] = ttl;
        frame
    } else {
        patch_ipv4(frame, 22, ttl)
    }
}

/// The frame followed by `len` bytes of Ethernet padding (zeros the IP header does not count).
pub fn padded(frame: &[u8], len: usize) -> Vec<u8> {
    let mut out = frame.to_vec();
    out.resize(frame.len() + len, 0);
    out
}
