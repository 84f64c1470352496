//! Test packets, built with etherparse, and readable one-line summaries of frames.

use std::{fmt::Write as _, net::SocketAddr};

use etherparse::{
    IpHeaders, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6Header, LaxPacketHeaders,
    LinkHeader, NetHeaders, PacketBuilder, TransportHeader, ip_number,
};

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
/// with correct lengths and checksums.
pub fn frame(src: SocketAddr, dst: SocketAddr, l4: L4, payload: &[u8]) -> Vec<u8> {
    let ip = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => IpHeaders::Ipv4(
            Ipv4Header::new(0, 64, ip_number::TCP, s.ip().octets(), d.ip().octets())
                .expect("valid IPv4 header"),
            Ipv4Extensions::default(),
        ),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                hop_limit: 64,
                source: s.ip().octets(),
                destination: d.ip().octets(),
                ..Default::default()
            },
            Ipv6Extensions::default(),
        ),
        _ => panic!("mixed address families: {src} -> {dst}"),
    };
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC).ip(ip);
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
