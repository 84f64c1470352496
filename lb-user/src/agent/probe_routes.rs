//! Health checks through the data path's path (`[vip.health] path = "vip"`): a check of a
//! backend connects to the VIP, and its packets must reach that backend as the data path sends
//! clients' packets. The checks are the agent's own sockets, which XDP never sees, so the
//! kernel routes them: each such backend gets a socket mark (`SO_MARK`), a routing table of the
//! same number holding one route, `default via NEXT_HOP dev IF onlink`, and a rule at priority
//! [`PROBE_RULE_PRIORITY`], `fwmark MARK lookup MARK` (what `ip rule add` and `ip route add
//! ... table` make).
//!
//! - `dsr-l2` ([`Via::Mac`]): the next hop is the backend itself, on a directly connected
//!   network. The kernel resolves its MAC and sends the check to it with the VIP as
//!   destination.
//! - `ipip` ([`Via::Tunnel`]): the next hop is the route's to the backend's address (the
//!   backend, or a router), and the agent's TC program on that route's interface
//!   ([`crate::probe_encap`]) encapsulates each packet of the mark to the backend, as the data
//!   path does; its rule is made only once the program and the mark's tunnel are in place, so
//!   that no check leaves unencapsulated.
//!
//! The backend answers from the VIP to the gateway's own address. A backend that lacks the VIP
//! (or does not serve on it, or, through the tunnel, does not decapsulate) fails the check.
//!
//! Only marked sockets match the rules, so nothing else on the gateway is routed by them. An
//! agent starting removes the rules an earlier one left (at [`PROBE_RULE_PRIORITY`], for a
//! mark of [`PROBE_MARK_BASE`]'s range; nobody else's) before adding its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    time::Duration,
};

use log::{info, warn};
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
        RouteScope, RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleMessage},
};

use super::{Shared, neighbours::Netlink};
use crate::probe_encap::ProbeEncap;

/// The first socket mark (and routing table) of a probed backend: "xl" in the high bytes, so
/// that it is recognisable in `ip rule` and unlikely to meet anyone else's.
pub const PROBE_MARK_BASE: u32 = 0x786c_0000;
/// How many backends can be probed through the VIP at once.
pub const PROBE_MARKS: u32 = 0x1_0000;
/// The priority of the agent's rules (before the main table's, 32766).
pub const PROBE_RULE_PRIORITY: u32 = 1_000;

/// How a backend's checks through the VIP reach it: its forwarding mode's way.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// To its MAC, unchanged (`dsr-l2`).
    Mac,
    /// Encapsulated to its address (`ipip`).
    Tunnel,
}

/// A backend's address and the way its checks through the VIP reach it: what a mark is for.
pub type ProbeKey = (IpAddr, Via);

/// Where a mark's route goes: the interface and the next hop.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub ifindex: u32,
    pub gateway: IpAddr,
}

/// The marks of `wanted` backends: those in `current` keep theirs, the others get the lowest
/// free ones; a backend beyond [`PROBE_MARKS`] gets none.
pub fn assign_marks<K: Ord + Copy>(
    current: &BTreeMap<K, u32>,
    wanted: &BTreeSet<K>,
) -> BTreeMap<K, u32> {
    let mut marks: BTreeMap<K, u32> = current
        .iter()
        .filter(|(addr, _)| wanted.contains(addr))
        .map(|(&addr, &mark)| (addr, mark))
        .collect();
    let used: BTreeSet<u32> = marks.values().copied().collect();
    let mut free = (PROBE_MARK_BASE..PROBE_MARK_BASE + PROBE_MARKS).filter(|m| !used.contains(m));
    for &addr in wanted {
        if marks.contains_key(&addr) {
            continue;
        }
        let Some(mark) = free.next() else {
            break;
        };
        marks.insert(addr, mark);
    }
    marks
}

/// Every `period`, until the runtime stops: the rules and routes of
/// [`super::Agent::probe_marks`] tried again where they failed ([`super::Agent::sync_health`]
/// makes them as it gives the marks, before the first check).
pub async fn manage_probe_routes_every(agent: Shared, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let agent = std::sync::Arc::clone(&agent);
        let synced = tokio::task::spawn_blocking(move || {
            agent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sync_probe_routes();
        })
        .await;
        if let Err(err) = synced {
            warn!("probe routes of backends checked through the VIP: {err}");
        }
    }
}

/// Removes the rules an earlier agent left, before the first check, and logs how many.
pub fn sweep_probe_rules() {
    match sweep() {
        Ok(0) => {}
        Ok(n) => info!("removed {n} probe routing rules left by an earlier agent"),
        Err(err) => warn!("probe routing rules left by an earlier agent: {err}"),
    }
}

/// Removes every rule of the agent's (at [`PROBE_RULE_PRIORITY`], for a mark of its range),
/// IPv4 and IPv6, and nobody else's, with the routes of its table; how many rules.
fn sweep() -> io::Result<usize> {
    let netlink = Netlink::open()?;
    let mut removed = 0;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RuleMessage::default();
        query.header.family = family;
        for answer in netlink.dump(RouteNetlinkMessage::GetRule(query))? {
            let RouteNetlinkMessage::NewRule(rule) = answer else {
                continue;
            };
            let ours = rule
                .attributes
                .contains(&RuleAttribute::Priority(PROBE_RULE_PRIORITY))
                && rule.attributes.iter().any(|a| {
                    matches!(a, RuleAttribute::FwMark(m)
                        if (PROBE_MARK_BASE..PROBE_MARK_BASE + PROBE_MARKS).contains(m))
                });
            let table = rule.attributes.iter().find_map(|a| match a {
                RuleAttribute::Table(t) => Some(*t),
                _ => None,
            });
            if ours {
                ignore_missing(netlink.request(
                    RouteNetlinkMessage::DelRule(rule),
                    NLM_F_REQUEST | NLM_F_ACK,
                ))?;
                removed += 1;
                if let Some(table) = table {
                    clear_table(&netlink, family, table)?;
                }
            }
        }
    }
    Ok(removed)
}

/// Deletes the default routes of `table` (of `family`): a probe table holds one.
fn clear_table(netlink: &Netlink, family: AddressFamily, table: u32) -> io::Result<()> {
    // One route per table; a few more tries in case a crash left a replaced one behind.
    for _ in 0..4 {
        let mut route = RouteMessage::default();
        route.header.address_family = family;
        route.header.table = RouteHeader::RT_TABLE_UNSPEC;
        route.header.scope = RouteScope::NoWhere;
        route.attributes.push(RouteAttribute::Table(table));
        match netlink.request(
            RouteNetlinkMessage::DelRoute(route),
            NLM_F_REQUEST | NLM_F_ACK,
        ) {
            Ok(_) => {}
            Err(err) if matches!(err.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => break,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// [`sync`] of `marks`, a failure logged.
pub(super) fn sync_logged(
    marks: &BTreeMap<ProbeKey, u32>,
    installed: &mut BTreeMap<(ProbeKey, u32), Hop>,
    encap: &mut Option<ProbeEncap>,
) {
    let wanted: BTreeSet<(ProbeKey, u32)> = marks.iter().map(|(&k, &m)| (k, m)).collect();
    if wanted.is_empty() && installed.is_empty() && encap.is_none() {
        return;
    }
    if let Err(err) = sync(&wanted, installed, encap) {
        warn!("probe routes of backends checked through the VIP: {err:#}");
    }
}

/// Installs the rule and route of each (backend, mark) of `wanted` that `installed` (with
/// their hops) lacks, and removes those no longer wanted, keeping `installed` up to date as it
/// goes; for [`Via::Tunnel`], also the encapsulation on the route's interface (`encap`, loaded
/// when first needed, dropped when no tunnel is left).
fn sync(
    wanted: &BTreeSet<(ProbeKey, u32)>,
    installed: &mut BTreeMap<(ProbeKey, u32), Hop>,
    encap: &mut Option<ProbeEncap>,
) -> anyhow::Result<()> {
    let netlink = Netlink::open()?;
    for (&((addr, via), mark), &hop) in &installed.clone() {
        if !wanted.contains(&((addr, via), mark)) {
            ignore_missing(netlink.request(
                RouteNetlinkMessage::DelRule(rule_message(addr, mark)),
                NLM_F_REQUEST | NLM_F_ACK,
            ))?;
            ignore_missing(netlink.request(
                RouteNetlinkMessage::DelRoute(route_message(mark, hop)),
                NLM_F_REQUEST | NLM_F_ACK,
            ))?;
            if via == Via::Tunnel
                && let Some(encap) = encap.as_mut()
            {
                encap.remove_tunnel(mark)?;
            }
            installed.remove(&((addr, via), mark));
        }
    }
    for &((addr, via), mark) in wanted {
        if installed.contains_key(&((addr, via), mark)) {
            continue;
        }
        let hop = match via {
            Via::Mac => match netlink.on_link_ifindex(addr)? {
                Some(ifindex) => Hop {
                    ifindex,
                    gateway: addr,
                },
                None => {
                    warn!(
                        "dsr-l2 backend {addr} is not on a directly connected network: no health \
                         check through the VIP can reach it"
                    );
                    continue;
                }
            },
            Via::Tunnel => match netlink.route_hop(addr)? {
                Some(hop) => hop,
                None => {
                    warn!(
                        "ipip backend {addr} has no unicast route: no health check through the \
                         tunnel can reach it"
                    );
                    continue;
                }
            },
        };
        netlink.request(
            RouteNetlinkMessage::NewRoute(route_message(mark, hop)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        if via == Via::Tunnel {
            // The program and the tunnel before the rule: a check routed by the rule without
            // them would reach the backend unencapsulated.
            let program = match encap {
                Some(program) => program,
                None => encap.insert(ProbeEncap::load()?),
            };
            program.attach(hop.ifindex)?;
            program.set_tunnel(mark, addr)?;
        }
        match netlink.request(
            RouteNetlinkMessage::NewRule(rule_message(addr, mark)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) => return Err(err.into()),
        }
        match via {
            Via::Mac => {
                info!("dsr-l2 backend {addr}: health checks through the VIP marked {mark:#x}")
            }
            Via::Tunnel => info!(
                "ipip backend {addr}: health checks through the tunnel marked {mark:#x}, via {}",
                hop.gateway
            ),
        }
        installed.insert(((addr, via), mark), hop);
    }
    // The encapsulation stays on the interfaces the tunnels' routes leave by, and only there.
    if let Some(program) = encap.as_mut() {
        let used: BTreeSet<u32> = installed
            .iter()
            .filter(|(((_, via), _), _)| *via == Via::Tunnel)
            .map(|(_, hop)| hop.ifindex)
            .collect();
        let attached: Vec<u32> = program.ifaces().collect();
        for ifindex in attached {
            if !used.contains(&ifindex) {
                program.detach(ifindex)?;
            }
        }
        if used.is_empty() && program.is_empty() {
            info!("no health check through the ipip tunnel left: encapsulation unloaded");
            *encap = None;
        }
    }
    Ok(())
}

fn ignore_missing<T>(result: io::Result<T>) -> io::Result<()> {
    match result {
        Err(err) if err.raw_os_error() != Some(libc::ENOENT) => Err(err),
        _ => Ok(()),
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `fwmark MARK lookup MARK priority PROBE_RULE_PRIORITY`, of `addr`'s family.
fn rule_message(addr: IpAddr, mark: u32) -> RuleMessage {
    let mut rule = RuleMessage::default();
    rule.header.family = family(addr);
    rule.header.action = RuleAction::ToTable;
    rule.attributes.extend([
        RuleAttribute::Priority(PROBE_RULE_PRIORITY),
        RuleAttribute::FwMark(mark),
        RuleAttribute::FwMask(u32::MAX),
        RuleAttribute::Table(mark),
    ]);
    rule
}

/// `default via HOP.GATEWAY dev HOP.IFINDEX onlink table MARK`.
fn route_message(mark: u32, hop: Hop) -> RouteMessage {
    let Hop { ifindex, gateway } = hop;
    let mut route = RouteMessage::default();
    route.header.address_family = family(gateway);
    route.header.destination_prefix_length = 0;
    route.header.table = RouteHeader::RT_TABLE_UNSPEC;
    route.header.protocol = RouteProtocol::Static;
    route.header.scope = RouteScope::Universe;
    route.header.kind = RouteType::Unicast;
    route.header.flags = RouteFlags::Onlink;
    let gateway = match gateway {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    };
    route.attributes.extend([
        RouteAttribute::Table(mark),
        RouteAttribute::Gateway(gateway),
        RouteAttribute::Oif(ifindex),
    ]);
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn marks_are_kept_and_the_lowest_free_ones_given() {
        let wanted: BTreeSet<IpAddr> = [ip("10.0.0.1"), ip("10.0.0.2")].into();
        let first = assign_marks(&BTreeMap::new(), &wanted);
        assert_eq!(first[&ip("10.0.0.1")], PROBE_MARK_BASE);
        assert_eq!(first[&ip("10.0.0.2")], PROBE_MARK_BASE + 1);
        // 10.0.0.1 leaves, fd00::1 comes: 10.0.0.2 keeps its mark, fd00::1 gets the freed one.
        let wanted: BTreeSet<IpAddr> = [ip("10.0.0.2"), ip("fd00::1")].into();
        let second = assign_marks(&first, &wanted);
        assert_eq!(second.len(), 2);
        assert_eq!(second[&ip("10.0.0.2")], PROBE_MARK_BASE + 1);
        assert_eq!(second[&ip("fd00::1")], PROBE_MARK_BASE);
        assert_eq!(assign_marks(&second, &BTreeSet::new()), BTreeMap::new());
    }

    #[test]
    fn marks_are_distinct_and_in_range() {
        let wanted: BTreeSet<IpAddr> = (0..300u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let marks = assign_marks(&BTreeMap::new(), &wanted);
        let distinct: BTreeSet<u32> = marks.values().copied().collect();
        assert_eq!(distinct.len(), 300);
        assert!(
            distinct
                .iter()
                .all(|m| (PROBE_MARK_BASE..PROBE_MARK_BASE + PROBE_MARKS).contains(m))
        );
    }
}
