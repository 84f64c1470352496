//! The connection tables as an operator sees them (`xdplb conn list`, `conn flush`, like
//! `ipvsadm -Lnc` and `conntrack -L/-D`): each tracked flow with its client, VIP, backend,
//! state and idle time, read by the batched walk of [`Conntrack`]; and flushing flows with their
//! reverse translations, so that no reverse entry outlives its flow.
//!
//! A flow's age comes from the coarse stamp the data path writes when the flow begins
//! ([`FlowState::born`], about a second's resolution), its idle time from its last packet.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use lb_common::{
    FlowKey,
    conntrack::{FlowState, Timeouts, backend_port, is_expired, reverse_key, state_name},
    flow::{FAMILY_IPV4, PROTO_TCP, PROTO_UDP},
    maps::{CONNTRACK_MAP, EMBRYONIC_MAP, EMBRYONIC_REVERSE_MAP, REVERSE_NAT_MAP, ReverseNat},
};
use serde::{Deserialize, Serialize};

use crate::{
    balancer::{Proto, Vip, VipInfo},
    maps::{Conntrack, open_map},
    model::addr16,
};

/// Flows `conn list` shows unless told otherwise.
pub const DEFAULT_LIMIT: usize = 1000;

/// Which flows: those of a VIP, of a backend address, or both (none: every flow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnFilter {
    pub vip: Option<Vip>,
    pub backend: Option<SocketAddr>,
}

/// One tracked flow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnView {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The VIP (`ADDR:PORT/PROTO`) the flow is to: the configured one (a wildcard-port VIP
    /// with port 0), or the flow's destination if no VIP has it any more.
    pub vip: String,
    /// The flow's destination address and port.
    pub destination: SocketAddr,
    /// The backend the flow is pinned to; `None` if its id is no backend of the VIP now.
    pub backend: Option<SocketAddr>,
    pub backend_id: u32,
    pub protocol: Proto,
    /// `syn-sent`, `established`, `fin`, `closed` (TCP), `udp`.
    pub state: String,
    /// `conntrack`, or `embryonic` for a half-open flow (SYN seen, handshake not complete).
    pub table: String,
    /// Seconds since the flow began (to about a second: `lb_common::conntrack::age_ns`).
    #[serde(default)]
    pub age_secs: u64,
    /// Seconds since its last packet (to the data path's refresh granularity, a second).
    pub idle_secs: f64,
    /// Idle past its state's timeout: the data path treats its next packet as a new flow's.
    pub expired: bool,
}

/// What `GET /v1/connections` answers: the first `limit` matching flows and how many more
/// there are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnList {
    pub connections: Vec<ConnView>,
    /// Flows that matched the filter.
    pub matched: usize,
    /// Matching flows left out past the limit.
    pub more: usize,
    /// Entries walked in both tables.
    pub walked: usize,
}

/// What `DELETE /v1/connections` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlushView {
    /// Flows deleted from the connection and embryonic tables.
    pub flushed: usize,
    /// Their reverse translations deleted with them.
    pub reverse_flushed: usize,
}

/// VIPs and backends by what the tables hold: VIP by (address, port, protocol), backend by id.
pub struct Names {
    vips: HashMap<(IpAddr, u16, u8), Vip>,
    backends: HashMap<u32, (Vip, SocketAddr)>,
}

impl Names {
    pub fn new(vips: &[VipInfo]) -> Self {
        let mut names = Self {
            vips: HashMap::new(),
            backends: HashMap::new(),
        };
        for info in vips {
            let v = info.vip;
            names
                .vips
                .insert((v.addr, v.port, proto_number(v.proto)), v);
            for b in &info.backends {
                names.backends.insert(b.id, (v, b.spec.addr));
            }
        }
        names
    }

    /// The VIP a flow to `dst`:`port` of `proto` belongs to: the exact one, else the
    /// wildcard-port one, as the data path looks it up.
    fn vip(&self, dst: IpAddr, port: u16, proto: u8) -> Option<Vip> {
        self.vips
            .get(&(dst, port, proto))
            .or_else(|| self.vips.get(&(dst, 0, proto)))
            .copied()
    }

    /// The backend `id` is, if it is one of `vip`'s.
    fn backend(&self, id: u32, vip: Option<Vip>) -> Option<SocketAddr> {
        self.backends
            .get(&id)
            .filter(|(of, _)| Some(*of) == vip)
            .map(|(_, addr)| *addr)
    }
}

fn proto_number(proto: Proto) -> u8 {
    match proto {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
    }
}

fn ip(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

/// A flow of the table `table` as [`ConnView`] shows it, at `now_ns` (`CLOCK_MONOTONIC`).
pub fn describe(
    names: &Names,
    key: &FlowKey,
    state: &FlowState,
    table: &str,
    now_ns: u64,
    timeouts: &Timeouts,
) -> ConnView {
    let dst = ip(&key.dst_addr, key.family);
    let dst_port = u16::from_be_bytes(key.dst_port);
    let vip = names.vip(dst, dst_port, key.proto);
    let protocol = if key.proto == PROTO_UDP {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    ConnView {
        client: SocketAddr::new(
            ip(&key.src_addr, key.family),
            u16::from_be_bytes(key.src_port),
        ),
        vip: vip.map_or_else(
            || {
                Vip {
                    addr: dst,
                    port: dst_port,
                    proto: protocol,
                }
                .to_string()
            },
            |v| v.to_string(),
        ),
        destination: SocketAddr::new(dst, dst_port),
        backend: names.backend(state.backend_id, vip),
        backend_id: state.backend_id,
        protocol,
        state: state_name(state.state).to_owned(),
        table: table.to_owned(),
        age_secs: lb_common::conntrack::age_ns(state.born, now_ns) / 1_000_000_000,
        idle_secs: now_ns.saturating_sub(state.last_seen_ns) as f64 / 1e9,
        expired: is_expired(state, now_ns, timeouts),
    }
}

impl ConnFilter {
    /// Whether `conn` is one of the flows asked for.
    pub fn matches(&self, conn: &ConnView) -> bool {
        self.vip.is_none_or(|v| conn.vip == v.to_string())
            && self.backend.is_none_or(|b| conn.backend == Some(b))
    }
}

/// The flows of `tables` (name and table) that `filter` matches, the first `limit` of them
/// (connection table first), at `now_ns`.
pub fn list(
    tables: &[(&str, &Conntrack)],
    vips: &[VipInfo],
    filter: &ConnFilter,
    limit: usize,
    now_ns: u64,
    timeouts: &Timeouts,
) -> crate::maps::MapsResult<ConnList> {
    let names = Names::new(vips);
    let mut out = ConnList {
        connections: Vec::new(),
        matched: 0,
        more: 0,
        walked: 0,
    };
    for (name, table) in tables {
        out.walked += table.for_each_entry(|key, state| {
            let conn = describe(&names, key, state, name, now_ns, timeouts);
            if filter.matches(&conn) {
                out.matched += 1;
                if out.connections.len() < limit {
                    out.connections.push(conn);
                } else {
                    out.more += 1;
                }
            }
        })?;
    }
    Ok(out)
}

/// Opens the pinned connection table `name` under the pin directory `dir`.
pub fn open_table(dir: &Path, name: &str) -> anyhow::Result<Conntrack> {
    open_map(dir, name)
}

/// Deletes the flows that `filter` matches from the connection and embryonic tables pinned
/// under `dir`, each with its reverse translation (the entry `REVERSE_NAT` or
/// `EMBRYONIC_REVERSE` holds for it, if it names the flow's backend). The next packet of a
/// flushed flow is handled as that of a flow whose state was lost: a SYN opens a new flow, a
/// mid-stream packet is picked up and counted as `lost_state`.
pub fn flush(
    dir: &Path,
    vips: &[VipInfo],
    filter: &ConnFilter,
    now_ns: u64,
    timeouts: &Timeouts,
) -> anyhow::Result<FlushView> {
    let names = Names::new(vips);
    let mut view = FlushView {
        flushed: 0,
        reverse_flushed: 0,
    };
    for (table, reverse) in [
        (CONNTRACK_MAP, REVERSE_NAT_MAP),
        (EMBRYONIC_MAP, EMBRYONIC_REVERSE_MAP),
    ] {
        let walk = open_table(dir, table)?;
        let mut doomed = Vec::new();
        walk.for_each_entry(|key, state| {
            let conn = describe(&names, key, state, table, now_ns, timeouts);
            if filter.matches(&conn) {
                doomed.push((*key, state.backend_id, conn.backend));
            }
        })?;
        let mut flows = walk.into_map();
        let mut reverses: BpfHashMap<MapData, FlowKey, ReverseNat> = open_map(dir, reverse)?;
        for (key, backend_id, backend) in doomed {
            match flows.remove(&key) {
                Ok(()) => view.flushed += 1,
                // Gone meanwhile: expired and evicted, or closed.
                Err(err) if is_not_found(&err) => continue,
                Err(err) => return Err(err.into()),
            }
            let Some(backend) = backend else { continue };
            let port = backend_port(backend.port().to_be_bytes(), key.dst_port);
            let rkey = reverse_key(&key, &addr16(backend.ip()), port);
            if reverses
                .get(&rkey, 0)
                .is_ok_and(|entry| entry.backend_id == backend_id)
            {
                match reverses.remove(&rkey) {
                    Ok(()) => view.reverse_flushed += 1,
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
    Ok(view)
}

fn is_not_found(err: &aya::maps::MapError) -> bool {
    match err {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::{BackendInfo, BackendSpec, VipOptions};
    use lb_common::conntrack::{DEFAULT_TIMEOUTS, STATE_ESTABLISHED};

    fn info(vip: &str, backends: &[(&str, u32)]) -> VipInfo {
        VipInfo {
            vip: vip.parse().unwrap(),
            id: 1,
            options: VipOptions::default(),
            backends: backends
                .iter()
                .map(|(addr, id)| BackendInfo {
                    spec: BackendSpec::new(addr.parse().unwrap(), 1),
                    id: *id,
                })
                .collect(),
            table_digest: None,
        }
    }

    fn key(client: &str, dst: &str) -> FlowKey {
        let (c, d): (SocketAddr, SocketAddr) = (client.parse().unwrap(), dst.parse().unwrap());
        FlowKey {
            src_addr: addr16(c.ip()),
            dst_addr: addr16(d.ip()),
            src_port: c.port().to_be_bytes(),
            dst_port: d.port().to_be_bytes(),
            proto: PROTO_TCP,
            family: FAMILY_IPV4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn a_flow_is_named_by_its_vip_and_backend_and_filtered_by_them() {
        let vips = [
            info(
                "198.19.0.1:80/tcp",
                &[("10.1.0.2:8080", 7), ("10.2.0.2:8080", 8)],
            ),
            info("198.19.0.2:0/tcp", &[("10.3.0.2:0", 9)]),
        ];
        let names = Names::new(&vips);
        let state = FlowState {
            backend_id: 8,
            state: STATE_ESTABLISHED,
            born: [0; 3],
            last_seen_ns: 1_000_000_000,
        };
        let now = 3_500_000_000;
        let conn = describe(
            &names,
            &key("10.0.0.9:40000", "198.19.0.1:80"),
            &state,
            "conntrack",
            now,
            &DEFAULT_TIMEOUTS,
        );
        assert_eq!(conn.client, "10.0.0.9:40000".parse().unwrap());
        assert_eq!(conn.vip, "198.19.0.1:80/tcp");
        assert_eq!(conn.backend, Some("10.2.0.2:8080".parse().unwrap()));
        assert_eq!(conn.state, "established");
        assert!((conn.idle_secs - 2.5).abs() < 1e-9);
        assert!(!conn.expired);

        let by_backend = |b: &str| ConnFilter {
            vip: None,
            backend: Some(b.parse().unwrap()),
        };
        assert!(by_backend("10.2.0.2:8080").matches(&conn));
        assert!(!by_backend("10.1.0.2:8080").matches(&conn));
        let by_vip = |v: &str| ConnFilter {
            vip: Some(v.parse().unwrap()),
            backend: None,
        };
        assert!(by_vip("198.19.0.1:80/tcp").matches(&conn));
        assert!(!by_vip("198.19.0.2:0/tcp").matches(&conn));
        assert!(ConnFilter::default().matches(&conn));

        // A wildcard-port VIP names a flow to any of its ports; a backend id of another VIP
        // is no backend of this flow's.
        let wild = describe(
            &names,
            &key("10.0.0.9:40001", "198.19.0.2:443"),
            &FlowState {
                backend_id: 8,
                ..state
            },
            "embryonic",
            now,
            &DEFAULT_TIMEOUTS,
        );
        assert_eq!(wild.vip, "198.19.0.2:0/tcp");
        assert_eq!(wild.destination, "198.19.0.2:443".parse().unwrap());
        assert_eq!(wild.backend, None);
        assert!(by_vip("198.19.0.2:0/tcp").matches(&wild));

        // A flow of a VIP removed since: named by its destination.
        let gone = describe(
            &names,
            &key("10.0.0.9:40002", "198.19.0.3:53"),
            &state,
            "conntrack",
            now,
            &DEFAULT_TIMEOUTS,
        );
        assert_eq!(gone.vip, "198.19.0.3:53/tcp");
        assert_eq!(gone.backend, None);
    }

    #[test]
    fn an_idle_flow_past_its_timeout_is_marked_expired() {
        let names = Names::new(&[]);
        let state = FlowState {
            backend_id: 1,
            state: STATE_ESTABLISHED,
            born: [0; 3],
            last_seen_ns: 0,
        };
        let late = DEFAULT_TIMEOUTS.tcp_established_ns + 1;
        let conn = describe(
            &names,
            &key("10.0.0.9:1", "198.19.0.1:80"),
            &state,
            "conntrack",
            late,
            &DEFAULT_TIMEOUTS,
        );
        assert!(conn.expired);
    }
}
