//! Health checks through the `dsr-l2` path (`[vip.health] path = "vip"`): a check of a backend
//! connects to the VIP, and its packets must reach that backend's MAC, as the data path sends
//! clients' packets. The checks are the agent's own sockets, which XDP never sees, so the
//! kernel routes them: each such backend gets a socket mark (`SO_MARK`), a routing table of the
//! same number holding one route, `default via BACKEND dev IF onlink`, and a rule at priority
//! [`PROBE_RULE_PRIORITY`], `fwmark MARK lookup MARK` (what `ip rule add` and `ip route add
//! ... table` make). The kernel then resolves the backend's MAC and sends the check to it with
//! the VIP as destination; the backend answers from the VIP to the gateway's own address, on
//! the shared segment. A backend that lacks the VIP (or does not serve on it) fails the check.
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

/// The first socket mark (and routing table) of a probed backend: "xl" in the high bytes, so
/// that it is recognisable in `ip rule` and unlikely to meet anyone else's.
pub const PROBE_MARK_BASE: u32 = 0x786c_0000;
/// How many backends can be probed through the VIP at once.
pub const PROBE_MARKS: u32 = 0x1_0000;
/// The priority of the agent's rules (before the main table's, 32766).
pub const PROBE_RULE_PRIORITY: u32 = 1_000;

/// The marks of `wanted` backends: those in `current` keep theirs, the others get the lowest
/// free ones; a backend beyond [`PROBE_MARKS`] gets none.
pub fn assign_marks(
    current: &BTreeMap<IpAddr, u32>,
    wanted: &BTreeSet<IpAddr>,
) -> BTreeMap<IpAddr, u32> {
    let mut marks: BTreeMap<IpAddr, u32> = current
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
            warn!("probe routes of dsr-l2 backends: {err}");
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
/// IPv4 and IPv6, and nobody else's; how many.
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
            if ours {
                ignore_missing(netlink.request(
                    RouteNetlinkMessage::DelRule(rule),
                    NLM_F_REQUEST | NLM_F_ACK,
                ))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// [`sync`] of `marks`, a failure logged.
pub(super) fn sync_logged(
    marks: &BTreeMap<IpAddr, u32>,
    installed: &mut BTreeMap<(IpAddr, u32), u32>,
) {
    let wanted: BTreeSet<(IpAddr, u32)> = marks.iter().map(|(&a, &m)| (a, m)).collect();
    if wanted.is_empty() && installed.is_empty() {
        return;
    }
    if let Err(err) = sync(&wanted, installed) {
        warn!("probe routes of dsr-l2 backends: {err}");
    }
}

/// Installs the rule and route of each (backend, mark) of `wanted` that `installed` (with
/// their interfaces) lacks, and removes those no longer wanted, keeping `installed` up to date
/// as it goes.
fn sync(
    wanted: &BTreeSet<(IpAddr, u32)>,
    installed: &mut BTreeMap<(IpAddr, u32), u32>,
) -> io::Result<()> {
    let netlink = Netlink::open()?;
    for (&(addr, mark), &ifindex) in &installed.clone() {
        if !wanted.contains(&(addr, mark)) {
            ignore_missing(netlink.request(
                RouteNetlinkMessage::DelRule(rule_message(addr, mark)),
                NLM_F_REQUEST | NLM_F_ACK,
            ))?;
            ignore_missing(netlink.request(
                RouteNetlinkMessage::DelRoute(route_message(addr, mark, ifindex)),
                NLM_F_REQUEST | NLM_F_ACK,
            ))?;
            installed.remove(&(addr, mark));
        }
    }
    for &(addr, mark) in wanted {
        if installed.contains_key(&(addr, mark)) {
            continue;
        }
        let Some(ifindex) = netlink.on_link_ifindex(addr)? else {
            warn!(
                "dsr-l2 backend {addr} is not on a directly connected network: no health check \
                 through the VIP can reach it"
            );
            continue;
        };
        netlink.request(
            RouteNetlinkMessage::NewRoute(route_message(addr, mark, ifindex)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        match netlink.request(
            RouteNetlinkMessage::NewRule(rule_message(addr, mark)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) => return Err(err),
        }
        info!("dsr-l2 backend {addr}: health checks through the VIP marked {mark:#x}");
        installed.insert((addr, mark), ifindex);
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

/// `default via ADDR dev IFINDEX onlink table MARK`.
fn route_message(addr: IpAddr, mark: u32, ifindex: u32) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = family(addr);
    route.header.destination_prefix_length = 0;
    route.header.table = RouteHeader::RT_TABLE_UNSPEC;
    route.header.protocol = RouteProtocol::Static;
    route.header.scope = RouteScope::Universe;
    route.header.kind = RouteType::Unicast;
    route.header.flags = RouteFlags::Onlink;
    let gateway = match addr {
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
