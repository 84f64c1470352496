//! Consistency across gateways: a TCP packet without SYN of a flow no table holds (one that
//! ECMP moved here from a lost gateway) to a `maglev` VIP goes to the backend its slot names,
//! which is what any gateway holding the same backends picks, whatever order they were added
//! in and whatever ids they got; and it is tracked from then on, not dropped or reset.

use std::net::SocketAddr;

use lb_common::{
    flow::PROTO_TCP,
    hash::flow_hash,
    maglev::{self, MaglevBackend},
};
use lb_tests::{
    fixture::{Case, Expect, XdpAction},
    lab::PacketLab,
    packet::{frame, verify_checksums},
    sa, vip,
};
use lb_user::balancer::{BackendSpec, VipOptions};

use super::ACK;

const VIP: &str = "198.19.3.1:80";
const BACKENDS: [&str; 2] = ["198.18.1.2:8080", "198.18.2.2:8080"];

/// The backend of `client`'s flow by the table built from the backends' addresses alone (ids
/// made up here), as every gateway builds it.
fn slot_backend(client: &str, ring_size: u32, seed: u32) -> SocketAddr {
    let members: Vec<MaglevBackend> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let SocketAddr::V4(a) = sa(b) else {
                unreachable!()
            };
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&a.ip().octets());
            MaglevBackend::new(1000 + i as u32, 1, addr, a.port().to_be_bytes())
        })
        .collect();
    let table = maglev::build_table(&members, ring_size).expect("table");
    let key = lb_tests::flow_key(sa(client), sa(VIP), PROTO_TCP);
    let id = table[maglev::slot(flow_hash(&key, seed), ring_size) as usize];
    sa(BACKENDS[(id - 1000) as usize])
}

/// An ACK from `client` to the VIP, expected at `backend` with valid checksums.
fn ack_to(client: &str, backend: SocketAddr) -> Case {
    Case::new(
        format!("ACK of an unknown flow from {client}: to its slot's backend {backend}"),
        frame(sa(client), sa(VIP), ACK, b"moved"),
        XdpAction::Redirect,
        Expect::Check(Box::new(move |out| {
            verify_checksums(out)?;
            let headers =
                etherparse::PacketHeaders::from_ethernet_slice(out).map_err(|e| e.to_string())?;
            let dst = match (&headers.net, &headers.transport) {
                (
                    Some(etherparse::NetHeaders::Ipv4(ip, _)),
                    Some(etherparse::TransportHeader::Tcp(tcp)),
                ) => SocketAddr::from((ip.destination, tcp.destination_port)),
                _ => return Err("not TCP/IPv4".into()),
            };
            if dst == backend {
                Ok(())
            } else {
                Err(format!("sent to {dst}, not {backend}"))
            }
        })),
    )
    .counter("fwd_redirect")
}

/// Sets the VIP's backends in `order`; gives their ids and the table digest.
fn set(lab: &mut PacketLab, order: &[usize]) -> (Vec<u32>, String) {
    let v = vip(&format!("{VIP}/tcp"));
    let specs = order
        .iter()
        .map(|&i| BackendSpec::new(sa(BACKENDS[i]), 1))
        .collect();
    lab.balancer.set_backends(&v, specs).expect("backends");
    let info = lab.balancer.vip(&v).expect("vip");
    let ids = info.backends.iter().map(|b| b.id).collect();
    (ids, info.table_digest.expect("a maglev digest"))
}

#[test]
#[ignore = "needs root"]
fn unknown_flows_follow_the_table_whatever_the_ids() {
    let mut lab = PacketLab::set_up();
    let v = vip(&format!("{VIP}/tcp"));
    lab.balancer
        .add_vip(v, VipOptions::default())
        .expect("maglev vip");
    let ring_size = VipOptions::default().ring_size;
    let seed = 0;

    // In one order, then removed and added again in the other, after another VIP took ids.
    let (first_ids, first_digest) = set(&mut lab, &[0, 1]);
    let clients: Vec<String> = (0..16)
        .map(|i| format!("198.18.0.2:{}", 42000 + i))
        .collect();
    let cases: Vec<Case> = clients
        .iter()
        .map(|c| ack_to(c, slot_backend(c, ring_size, seed)))
        .collect();
    let spread: std::collections::BTreeSet<SocketAddr> = clients
        .iter()
        .map(|c| slot_backend(c, ring_size, seed))
        .collect();
    assert_eq!(spread.len(), 2, "the flows cover both backends");
    assert_eq!(lab.run(lab.gc, &cases), cases.len());
    // Tracked now: each flow has its connection entry.
    for c in &clients {
        assert!(lab.tracked(c, VIP, PROTO_TCP), "{c} tracked");
    }

    lab.balancer.remove_vip(&v).expect("remove");
    let filler = vip("198.19.3.2:80/tcp");
    lab.balancer
        .add_vip(filler, VipOptions::default())
        .expect("filler");
    lab.balancer
        .set_backends(&filler, vec![BackendSpec::new(sa("198.18.1.2:8081"), 1)])
        .expect("filler backends");
    lab.balancer
        .add_vip(v, VipOptions::default())
        .expect("maglev vip again");
    let (second_ids, second_digest) = set(&mut lab, &[1, 0]);
    assert_ne!(
        (first_ids[0], first_ids[1]),
        (second_ids[1], second_ids[0]),
        "other ids"
    );
    assert_eq!(first_digest, second_digest, "the same table by address");
    let clients: Vec<String> = (0..16)
        .map(|i| format!("198.18.0.2:{}", 43000 + i))
        .collect();
    let cases: Vec<Case> = clients
        .iter()
        .map(|c| ack_to(c, slot_backend(c, ring_size, seed)))
        .collect();
    assert_eq!(lab.run(lab.gc, &cases), cases.len());
}
