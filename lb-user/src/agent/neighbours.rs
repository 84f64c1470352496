//! `dsr-l2` sends a VIP's packets to the backend's MAC, which the data path takes from the
//! kernel's neighbour table (`bpf_fib_lookup`); a backend the gateway never talks to would
//! have none, and its packets would be dropped (`drop_dsr_no_neighbour`). So the agent gives
//! every `dsr-l2` backend a *managed* neighbour entry (`NTF_EXT_MANAGED`, Linux 5.16+, as
//! `ip neigh replace ADDR dev IF managed` makes): the kernel resolves it and keeps it reachable
//! without any traffic. The entry goes on the interface the route to the backend leaves by; a
//! backend behind a gateway gets none (the data path drops its packets as `drop_dsr_no_route`).
//! An entry that is already there (permanent, or learnt from a health check) is left as it is,
//! and tried again a second later; a managed one (left by an agent before a restart) is taken
//! over. Entries the agent made for backends that are gone are removed.

use std::{collections::BTreeSet, io, net::IpAddr, time::Duration};

use log::{info, warn};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::Shared;
use crate::model::Forwarding;

/// The addresses of every `dsr-l2` backend.
fn wanted(agent: &Shared) -> BTreeSet<IpAddr> {
    let agent = agent.lock().unwrap_or_else(|p| p.into_inner());
    agent
        .balancer
        .vips()
        .into_iter()
        .filter(|info| info.options.forwarding == Forwarding::DsrL2)
        .flat_map(|info| info.backends.into_iter().map(|b| b.spec.addr.ip()))
        .collect()
}

/// Every `period`, until the runtime stops: a managed neighbour entry for each new `dsr-l2`
/// backend (retried until it takes), and none any more for backends that are gone.
pub async fn manage_dsr_neighbours_every(agent: Shared, period: Duration) {
    let mut managed: BTreeSet<(IpAddr, u32)> = BTreeSet::new();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let wanted = wanted(&agent);
        if wanted.is_empty() && managed.is_empty() {
            continue;
        }
        let known = managed.clone();
        let result = tokio::task::spawn_blocking(move || sync(&wanted, known)).await;
        match result {
            Ok(Ok(now)) => managed = now,
            Ok(Err(err)) => warn!("managed neighbour entries for dsr-l2 backends: {err}"),
            Err(err) => warn!("managed neighbour entries for dsr-l2 backends: {err}"),
        }
    }
}

/// Adds entries for the addresses of `wanted` that `managed` (address, interface) lacks and
/// removes those no longer wanted; returns the entries there are now.
fn sync(
    wanted: &BTreeSet<IpAddr>,
    mut managed: BTreeSet<(IpAddr, u32)>,
) -> io::Result<BTreeSet<(IpAddr, u32)>> {
    let netlink = Netlink::open()?;
    for &(addr, ifindex) in &managed.clone() {
        if !wanted.contains(&addr) {
            netlink.neighbour(addr, ifindex, false)?;
            managed.remove(&(addr, ifindex));
        }
    }
    for &addr in wanted {
        if managed.iter().any(|(a, _)| *a == addr) {
            continue;
        }
        match netlink.on_link_ifindex(addr)? {
            Some(ifindex) => match netlink.neighbour(addr, ifindex, true) {
                Ok(()) => {
                    info!("dsr-l2 backend {addr}: managed neighbour entry on ifindex {ifindex}");
                    managed.insert((addr, ifindex));
                }
                // A managed entry is an earlier agent's: taken over. Another is someone else's:
                // it serves as long as it lasts.
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                    if netlink.is_managed(addr, ifindex)? {
                        info!("dsr-l2 backend {addr}: managed neighbour entry taken over");
                        managed.insert((addr, ifindex));
                    }
                }
                Err(err) => warn!("dsr-l2 backend {addr}: no managed neighbour entry ({err})"),
            },
            None => warn!(
                "dsr-l2 backend {addr} is not on a directly connected network: its packets are \
                 dropped (drop_dsr_no_route)"
            ),
        }
    }
    Ok(managed)
}

/// A neighbour message about `addr` on interface `ifindex`, without flags.
fn neighbour_message(addr: IpAddr, ifindex: u32) -> NeighbourMessage {
    let mut neighbour = NeighbourMessage::default();
    let (family, dst) = match addr {
        IpAddr::V4(v4) => (AddressFamily::Inet, NeighbourAddress::Inet(v4)),
        IpAddr::V6(v6) => (AddressFamily::Inet6, NeighbourAddress::Inet6(v6)),
    };
    neighbour.header.family = family;
    neighbour.header.ifindex = ifindex;
    neighbour.header.state = NeighbourState::None;
    neighbour
        .attributes
        .push(NeighbourAttribute::Destination(dst));
    neighbour
}

/// A netlink route socket for requests.
pub(super) struct Netlink(Socket);

impl Netlink {
    pub(super) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self(socket))
    }

    /// Sends `message` with `flags` and returns the messages of the answer, up to its ACK, its
    /// end or its first message; an error the kernel answers with is an `Err`.
    pub(super) fn request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut message = NetlinkMessage::from(message);
        message.header.flags = flags;
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        self.0.send(&buf, 0)?;
        let (reply, _) = self.0.recv_from_full()?;
        let mut answers = Vec::new();
        let mut rest = reply.as_slice();
        while !rest.is_empty() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|err| io::Error::other(err.to_string()))?;
            let len = (message.header.length as usize).next_multiple_of(4);
            match message.payload {
                NetlinkPayload::Error(err) => {
                    if let Some(code) = err.code {
                        return Err(io::Error::from_raw_os_error(-code.get()));
                    }
                }
                NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                _ => {}
            }
            if len == 0 || len > rest.len() {
                break;
            }
            rest = &rest[len..];
        }
        Ok(answers)
    }

    /// Sends the dump request `message` and returns every message of the answer, up to its
    /// end (over as many reads as it takes).
    pub(super) fn dump(
        &self,
        message: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut message = NetlinkMessage::from(message);
        message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        self.0.send(&buf, 0)?;
        let mut answers = Vec::new();
        loop {
            let (reply, _) = self.0.recv_from_full()?;
            let mut rest = reply.as_slice();
            while !rest.is_empty() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|err| io::Error::other(err.to_string()))?;
                let len = (message.header.length as usize).next_multiple_of(4);
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(err) => {
                        if let Some(code) = err.code {
                            return Err(io::Error::from_raw_os_error(-code.get()));
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
                if len == 0 || len > rest.len() {
                    break;
                }
                rest = &rest[len..];
            }
        }
    }

    /// The interface the route to `addr` leaves by, if that route is a directly connected one
    /// (no gateway).
    pub(super) fn on_link_ifindex(&self, addr: IpAddr) -> io::Result<Option<u32>> {
        Ok(self
            .route_hop(addr)?
            .filter(|hop| hop.gateway == addr)
            .map(|hop| hop.ifindex))
    }

    /// The hop of the main routing's unicast route to `addr`: its interface and its gateway
    /// (`addr` itself on a directly connected network); `None` without one.
    pub(super) fn route_hop(&self, addr: IpAddr) -> io::Result<Option<super::probe_routes::Hop>> {
        let mut route = RouteMessage::default();
        let (family, len, dst) = match addr {
            IpAddr::V4(v4) => (AddressFamily::Inet, 32, RouteAddress::Inet(v4)),
            IpAddr::V6(v6) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(v6)),
        };
        route.header.address_family = family;
        route.header.destination_prefix_length = len;
        route.attributes.push(RouteAttribute::Destination(dst));
        let answers = self.request(RouteNetlinkMessage::GetRoute(route), NLM_F_REQUEST)?;
        for answer in answers {
            let RouteNetlinkMessage::NewRoute(route) = answer else {
                continue;
            };
            if route.header.kind != RouteType::Unicast {
                return Ok(None);
            }
            let mut gateway = addr;
            let mut ifindex = None;
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gateway = (*v4).into(),
                    RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => gateway = (*v6).into(),
                    RouteAttribute::Oif(index) => ifindex = Some(*index),
                    _ => {}
                }
            }
            return Ok(ifindex.map(|ifindex| super::probe_routes::Hop { ifindex, gateway }));
        }
        Ok(None)
    }

    /// Whether the neighbour entry of `addr` on interface `ifindex` is a managed one.
    fn is_managed(&self, addr: IpAddr, ifindex: u32) -> io::Result<bool> {
        let answers = self.request(
            RouteNetlinkMessage::GetNeighbour(neighbour_message(addr, ifindex)),
            NLM_F_REQUEST,
        )?;
        let managed = |n: &NeighbourMessage| {
            n.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::ExtFlags(f) if f.contains(NeighbourExtFlags::Managed))
            })
        };
        Ok(answers
            .iter()
            .any(|answer| matches!(answer, RouteNetlinkMessage::NewNeighbour(n) if managed(n))))
    }

    /// Adds (`add`) or removes the managed neighbour entry of `addr` on interface `ifindex`.
    fn neighbour(&self, addr: IpAddr, ifindex: u32, add: bool) -> io::Result<()> {
        let mut neighbour = neighbour_message(addr, ifindex);
        if add {
            neighbour
                .attributes
                .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
            self.request(
                RouteNetlinkMessage::NewNeighbour(neighbour),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )?;
        } else {
            match self.request(
                RouteNetlinkMessage::DelNeighbour(neighbour),
                NLM_F_REQUEST | NLM_F_ACK,
            ) {
                // Gone already (the interface went away, or someone removed it).
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }
}
