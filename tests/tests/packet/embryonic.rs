//! The embryonic table and the new-flow rate limit: a SYN's flow waits in the embryonic table
//! and the handshake ACK promotes it, backend and all, into the connection table; a SYN flood
//! evicts no established flow; over the rate limit a maglev VIP's new flows get no state while
//! a round-robin VIP's still do.

use lb_common::{
    FlowKey,
    conntrack::{FlowState, STATE_ESTABLISHED, STATE_SYN_SENT},
    counters::Event,
    flow::{PROTO_TCP, PROTO_UDP},
    maps::{CONNTRACK_MAP, EMBRYONIC_MAP, Settings},
};
use lb_tests::{
    fixture::{Case, Expect, XdpAction, to_one_of},
    lab::PacketLab,
    packet::{L4, frame},
    sa,
};
use lb_user::{counters::Events, loader::LoadOptions, maps::Maps as _};

use super::{ACK, SYN};

const VIP: &str = "198.19.0.1:80";
const BACKEND: &str = "198.18.1.2:8080";
const MAGLEV_VIP: &str = "198.19.1.1:80";
const ROUND_ROBIN_VIP: &str = "198.19.1.3:80";
const BACKENDS: [&str; 2] = ["198.18.1.2:8080", "198.18.2.2:8080"];

fn entry(lab: &PacketLab, map: &str, key: &FlowKey) -> Option<FlowState> {
    lab.flow_entry(map, key)
}

fn entries(lab: &PacketLab, map: &str) -> usize {
    lab.flow_entries::<FlowState>(map)
}

fn tcp_key(client: &str, vip: &str) -> FlowKey {
    lb_tests::flow_key(sa(client), sa(vip), PROTO_TCP)
}

fn events(lab: &PacketLab) -> Events {
    Events::read(&lab.loaded.ebpf).expect("events")
}

/// Runs one frame through the program as arriving from the client; its XDP action.
fn send(lab: &mut PacketLab, input: &[u8]) -> u32 {
    let ingress = lab.gc;
    let loaded = &mut lab.loaded;
    lab.topo.gateway.run(|| {
        lb_tests::program::test_run(loaded, input, Some(ingress))
            .expect("test run")
            .action
    })
}

#[test]
#[ignore = "needs root"]
fn syn_is_embryonic_and_the_handshake_ack_promotes_it() {
    let mut lab = PacketLab::set_up();
    let client = "198.18.0.2:41000";
    let key = tcp_key(client, VIP);
    let before = events(&lab);

    let syn = [Case::new(
        "SYN: forwarded, its flow recorded as embryonic",
        frame(sa(client), sa(VIP), SYN, b""),
        XdpAction::Redirect,
        Expect::Frame(lab.to_b0(client, BACKEND, SYN, b"")),
    )
    .counter("fwd_redirect")];
    lab.run(lab.gc, &syn);
    let half_open = entry(&lab, EMBRYONIC_MAP, &key).expect("an embryonic entry");
    assert_eq!(half_open.state, STATE_SYN_SENT);
    assert_eq!(
        entry(&lab, CONNTRACK_MAP, &key),
        None,
        "no connection entry yet"
    );
    let after_syn = events(&lab);
    assert_eq!(
        after_syn.get(Event::EmbryonicInsert),
        before.get(Event::EmbryonicInsert) + 1
    );

    let retransmitted = [Case::new(
        "retransmitted SYN: still embryonic",
        frame(sa(client), sa(VIP), SYN, b""),
        XdpAction::Redirect,
        Expect::Frame(lab.to_b0(client, BACKEND, SYN, b"")),
    )];
    lab.run(lab.gc, &retransmitted);
    assert!(entry(&lab, EMBRYONIC_MAP, &key).is_some());
    assert_eq!(entry(&lab, CONNTRACK_MAP, &key), None);

    let handshake_ack = [Case::new(
        "handshake ACK: promoted, same backend",
        frame(sa(client), sa(VIP), ACK, b""),
        XdpAction::Redirect,
        Expect::Frame(lab.to_b0(client, BACKEND, ACK, b"")),
    )
    .counter("fwd_redirect")];
    lab.run(lab.gc, &handshake_ack);
    let established = entry(&lab, CONNTRACK_MAP, &key).expect("a connection entry");
    assert_eq!(established.backend_id, half_open.backend_id, "same backend");
    assert_eq!(established.state, STATE_ESTABLISHED);
    assert_eq!(entry(&lab, EMBRYONIC_MAP, &key), None, "moved, not copied");
    let after_ack = events(&lab);
    assert_eq!(
        after_ack.get(Event::Promoted),
        before.get(Event::Promoted) + 1
    );
    assert_eq!(
        after_ack.get(Event::LostState),
        before.get(Event::LostState)
    );

    // A TCP packet without SYN whose flow no table holds: lost state, picked up as established.
    let stray = "198.18.0.2:41001";
    let lost = [Case::new(
        "ACK of a flow no table holds: scheduled again, counted as lost state",
        frame(sa(stray), sa(VIP), ACK, b"data"),
        XdpAction::Redirect,
        Expect::Frame(lab.to_b0(stray, BACKEND, ACK, b"data")),
    )
    .counter("fwd_redirect")];
    lab.run(lab.gc, &lost);
    assert_eq!(
        events(&lab).get(Event::LostState),
        before.get(Event::LostState) + 1
    );
    let picked_up = entry(&lab, CONNTRACK_MAP, &tcp_key(stray, VIP)).expect("picked up");
    assert_eq!(picked_up.state, STATE_ESTABLISHED);

    // UDP flows go straight to the connection table.
    let udp_client = "198.18.0.2:5354";
    let udp = [Case::new(
        "UDP: recorded in the connection table",
        frame(sa(udp_client), sa("198.19.0.1:53"), L4::Udp, b"query"),
        XdpAction::Redirect,
        Expect::Frame(lab.to_b0(udp_client, BACKEND, L4::Udp, b"query")),
    )];
    lab.run(lab.gc, &udp);
    let udp_key = lb_tests::flow_key(sa(udp_client), sa("198.19.0.1:53"), PROTO_UDP);
    assert!(entry(&lab, CONNTRACK_MAP, &udp_key).is_some());
    assert_eq!(entry(&lab, EMBRYONIC_MAP, &udp_key), None);
}

/// Established flows, then thousands of SYNs from distinct sources, more than either table
/// holds: the SYNs evict each other, never an established flow.
#[test]
#[ignore = "needs root"]
fn syn_flood_evicts_no_established_flow() {
    const ESTABLISHED: u16 = 50;
    const FLOOD: u32 = 6_000;
    let mut lab = PacketLab::set_up_with(LoadOptions {
        conntrack_capacity: 1_024,
        embryonic_capacity: 256,
        ..LoadOptions::default()
    });
    let clients: Vec<String> = (0..ESTABLISHED)
        .map(|i| format!("198.18.0.2:{}", 42_000 + i))
        .collect();
    for client in &clients {
        for flags in [SYN, ACK] {
            let action = send(&mut lab, &frame(sa(client), sa(VIP), flags, b""));
            assert_eq!(action, XdpAction::Redirect as u32, "{client}");
        }
        assert!(entry(&lab, CONNTRACK_MAP, &tcp_key(client, VIP)).is_some());
    }
    let before = events(&lab);

    // Spoofed sources in 10.98.0.0/16, as the flood test sends them.
    for i in 0..FLOOD {
        let src = format!(
            "10.98.{}.{}:{}",
            (i >> 8) & 0xff,
            i & 0xff,
            1024 + (i % 50_000)
        );
        let action = send(&mut lab, &frame(sa(&src), sa(VIP), SYN, b""));
        assert_eq!(action, XdpAction::Redirect as u32, "flood SYN {i}");
    }
    let after = events(&lab);
    assert_eq!(
        after.get(Event::EmbryonicInsert) - before.get(Event::EmbryonicInsert),
        u64::from(FLOOD),
        "every SYN went to the embryonic table"
    );
    assert!(
        entries(&lab, EMBRYONIC_MAP) <= 256,
        "the embryonic table holds at most its capacity"
    );

    for client in &clients {
        let key = tcp_key(client, VIP);
        let state = entry(&lab, CONNTRACK_MAP, &key)
            .unwrap_or_else(|| panic!("{client}'s established flow was evicted"));
        assert_eq!(state.state, STATE_ESTABLISHED);
    }
    let data: Vec<Case> = clients
        .iter()
        .map(|client| {
            Case::new(
                "established flow after the flood: still tracked",
                frame(sa(client), sa(VIP), ACK, b"after"),
                XdpAction::Redirect,
                Expect::Frame(lab.to_b0(client, BACKEND, ACK, b"after")),
            )
            .counter("fwd_redirect")
        })
        .collect();
    lab.run(lab.gc, &data);
    assert_eq!(
        events(&lab).get(Event::LostState),
        before.get(Event::LostState),
        "no established flow lost its state"
    );
}

fn set_rate_limit(lab: &mut PacketLab, limit: u32) {
    let maps = lab.balancer.maps_mut();
    let current = maps.settings().expect("settings");
    maps.set_settings(&Settings {
        new_flow_rate_limit: limit,
        ..current
    })
    .expect("set settings");
}

/// Over the rate limit, a maglev VIP's new flow is forwarded with no state, and its next
/// packets (stateless too) reach the same backend; a round-robin VIP's new flow still gets an
/// entry.
#[test]
#[ignore = "needs root"]
fn over_the_rate_limit_maglev_flows_get_no_state() {
    const LIMIT: u32 = 20;
    // The limit is per CPU: every run on one CPU (threads inherit the mask), so that the
    // flows below all count against one window.
    let mut cpu0 = nix::sched::CpuSet::new();
    cpu0.set(0).expect("cpu 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0).expect("pin to cpu 0");
    let mut lab = PacketLab::set_up();
    set_rate_limit(&mut lab, LIMIT);
    let before = events(&lab);
    // Enough new flows inside one second to pass the limit.
    let mut stateless = None;
    for i in 0..(4 * LIMIT) {
        let client = format!("198.18.0.2:{}", 43_000 + i);
        let action = send(&mut lab, &frame(sa(&client), sa(MAGLEV_VIP), SYN, b""));
        assert_eq!(action, XdpAction::Redirect as u32);
        let key = tcp_key(&client, MAGLEV_VIP);
        if entry(&lab, EMBRYONIC_MAP, &key).is_none() {
            assert_eq!(entry(&lab, CONNTRACK_MAP, &key), None, "{client}");
            stateless = Some(client);
            break;
        }
    }
    let client = stateless.expect("a new flow over the limit got no state");
    let after = events(&lab);
    assert_eq!(
        after.get(Event::StatelessNewFlow),
        before.get(Event::StatelessNewFlow) + 1
    );
    // At most LIMIT per one-second window; the loop may straddle two.
    let inserted = after.get(Event::EmbryonicInsert) - before.get(Event::EmbryonicInsert);
    assert!(inserted <= 2 * u64::from(LIMIT), "{inserted} inserts");

    // Its next packets hash to one backend (the one the SYN went to), still without state.
    let mut outputs = Vec::new();
    for flags in [SYN, ACK, ACK] {
        let input = frame(sa(&client), sa(MAGLEV_VIP), flags, b"");
        let ingress = lab.gc;
        let loaded = &mut lab.loaded;
        let outcome = lab
            .topo
            .gateway
            .run(|| lb_tests::program::test_run(loaded, &input, Some(ingress)).expect("test run"));
        assert_eq!(outcome.action, XdpAction::Redirect as u32);
        // The destination address of the rewritten IPv4 frame (14 + 16..20).
        outputs.push(outcome.output[30..34].to_vec());
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{outputs:?}");
    let key = tcp_key(&client, MAGLEV_VIP);
    assert_eq!(entry(&lab, EMBRYONIC_MAP, &key), None);
    assert_eq!(entry(&lab, CONNTRACK_MAP, &key), None);

    // A round-robin VIP would send the next packets elsewhere: its flows keep state.
    let rr_client = "198.18.0.2:44000";
    let rr = [Case::new(
        "round-robin over the limit: still recorded",
        frame(sa(rr_client), sa(ROUND_ROBIN_VIP), SYN, b""),
        XdpAction::Redirect,
        to_one_of(&BACKENDS),
    )];
    lab.run(lab.gc, &rr);
    assert!(entry(&lab, EMBRYONIC_MAP, &tcp_key(rr_client, ROUND_ROBIN_VIP)).is_some());

    // Limit 0: no limit.
    set_rate_limit(&mut lab, 0);
    let free = "198.18.0.2:44001";
    send(&mut lab, &frame(sa(free), sa(MAGLEV_VIP), SYN, b""));
    assert!(entry(&lab, EMBRYONIC_MAP, &tcp_key(free, MAGLEV_VIP)).is_some());
}
