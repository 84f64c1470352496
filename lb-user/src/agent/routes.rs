//! The data path follows the kernel's network state. It keeps each backend's next hop (egress
//! interface, MAC addresses, MTU) from its own FIB lookup and uses it for up to a second
//! (`lb_common::maps::NextHop`); on any link, neighbour or route change the agent starts a new
//! next-hop generation, so that every kept next hop is looked up again at its next packet. And
//! it knows the gateway's own addresses (a backend's packet to one of them answers the gateway,
//! not a VIP's client), which the agent updates on every address change.

use std::{net::IpAddr, time::Duration};

use log::{debug, warn};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, SocketAddr, TokioSocket, protocols};

use super::Shared;

/// Shortest time between two new generations: a burst of changes (a link going down takes its
/// routes and neighbours with it) makes one or two, not hundreds.
const SETTLE: Duration = Duration::from_millis(50);

/// The addresses of the gateway's interfaces (in the agent's network namespace).
pub fn local_addrs() -> anyhow::Result<Vec<IpAddr>> {
    let mut addrs = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifaddr.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            addrs.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            addrs.push(IpAddr::V6(v6.ip()));
        }
    }
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Gives the data path the gateway's addresses as they are now.
pub fn publish_local_addrs(agent: &Shared) {
    let result = local_addrs().and_then(|addrs| {
        let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
        Ok(agent.balancer.set_local_addrs(addrs)?)
    });
    if let Err(err) = result {
        warn!("telling the data path the gateway's addresses: {err:#}");
    }
}

/// Starts a new next-hop generation after every batch of link, neighbour and route changes,
/// and gives the data path the gateway's addresses again after address changes, until the
/// runtime stops. Without a netlink socket, kept next hops still expire by age.
pub async fn refresh_next_hops_on_changes(agent: Shared) {
    let socket = match subscribe() {
        Ok(socket) => socket,
        Err(err) => {
            warn!(
                "not following route changes ({err}): next hops the data path keeps are looked up \
                 again only once a second"
            );
            return;
        }
    };
    loop {
        let changed = match socket.recv_from_full().await {
            Ok((buf, _)) => route_changes(&buf),
            // The socket's buffer overflowed (ENOBUFS): changes were lost, so assume some.
            Err(err) => {
                debug!("route change socket: {err}");
                Changes {
                    next_hops: 1,
                    addresses: 1,
                }
            }
        };
        if changed.addresses > 0 {
            publish_local_addrs(&agent);
        }
        if changed.next_hops == 0 {
            continue;
        }
        let changed = changed.next_hops;
        debug!("{changed} link, neighbour or route changes: next hops are looked up again");
        let result = agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .balancer
            .refresh_next_hops();
        if let Err(err) = result {
            warn!("starting a new next-hop generation: {err:#}");
        }
        tokio::time::sleep(SETTLE).await;
    }
}

fn subscribe() -> std::io::Result<TokioSocket> {
    let mut socket = TokioSocket::new(protocols::NETLINK_ROUTE)?;
    let groups = libc::RTMGRP_LINK
        | libc::RTMGRP_NEIGH
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV6_ROUTE
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV6_IFADDR;
    socket
        .socket_mut()
        .bind(&SocketAddr::new(0, groups as u32))?;
    Ok(socket)
}

/// Changes in one batch of netlink messages.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    /// Link, neighbour and route changes: next hops may have moved.
    next_hops: usize,
    /// Address changes.
    addresses: usize,
}

/// The changes the netlink messages in `buf` make.
fn route_changes(buf: &[u8]) -> Changes {
    use RouteNetlinkMessage::*;
    let mut changes = Changes::default();
    let mut rest = buf;
    while !rest.is_empty() {
        let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) else {
            // Unreadable: it was sent to a group about changes, so take it for both kinds.
            changes.next_hops += 1;
            changes.addresses += 1;
            return changes;
        };
        let len = (message.header.length as usize).next_multiple_of(4);
        if let NetlinkPayload::InnerMessage(inner) = message.payload {
            match inner {
                NewLink(_) | DelLink(_) | NewNeighbour(_) | DelNeighbour(_) | NewRoute(_)
                | DelRoute(_) => changes.next_hops += 1,
                NewAddress(_) | DelAddress(_) => changes.addresses += 1,
                _ => {}
            }
        }
        if len == 0 || len > rest.len() {
            break;
        }
        rest = &rest[len..];
    }
    changes
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{
        address::AddressMessage, link::LinkMessage, neighbour::NeighbourMessage,
        route::RouteMessage,
    };

    use super::*;

    fn wire(messages: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for message in messages {
            let mut message = NetlinkMessage::from(message);
            message.finalize();
            let mut buf = vec![0; message.buffer_len()];
            message.serialize(&mut buf);
            out.extend_from_slice(&buf);
        }
        out
    }

    #[test]
    fn sorts_the_changes_of_a_batch() {
        use RouteNetlinkMessage::*;
        let batch = wire(vec![
            NewNeighbour(NeighbourMessage::default()),
            NewAddress(AddressMessage::default()),
            DelRoute(RouteMessage::default()),
            NewLink(LinkMessage::default()),
        ]);
        assert_eq!(
            route_changes(&batch),
            Changes {
                next_hops: 3,
                addresses: 1
            }
        );
        assert_eq!(
            route_changes(&wire(vec![GetLink(LinkMessage::default())])),
            Changes::default()
        );
        // What cannot be read counts as a change: better one lookup too many than a stale hop.
        assert_eq!(
            route_changes(&[1, 2, 3]),
            Changes {
                next_hops: 1,
                addresses: 1
            }
        );
    }
}
