//! Per-VIP source checks: the allow and deny prefix lists (longest prefix wins; any allow prefix
//! makes the VIP allow-only), checked on every packet, tracked flows' too; and the new-flow limit
//! per source prefix, a token bucket that only new flows draw on.
//!
//! Each step is a fixture table run through the real program; between steps the test changes
//! the VIP's options the way the agent would, or moves a bucket's clock back.

use aya::maps::{HashMap, MapData};
use lb_common::{
    flow::PROTO_TCP,
    limit::{SourceKey, TokenBucket},
    maps::{CONNTRACK_MAP, SOURCE_BUCKETS_MAP},
};
use lb_tests::{
    fixture::{Case, Expect, XdpAction},
    lab::PacketLab,
    packet::{L4, frame},
    sa, vip,
};
use lb_user::balancer::VipOptions;

use super::{ACK, SYN};

const VIP: &str = "198.19.0.1:80";
const BACKEND: &str = "198.18.1.2:8080";
const VIP6: &str = "[fd00:ffff::1]:80";
const BACKEND6: &str = "[fd00:0:0:1::2]:8080";

fn sources(allow: &[&str], deny: &[&str], rate: u32, prefix_len: Option<u8>) -> VipOptions {
    VipOptions {
        allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
        deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
        source_rate_limit: rate,
        source_prefix_len: prefix_len,
        ..VipOptions::default()
    }
}

fn set(lab: &mut PacketLab, v: &str, options: VipOptions) {
    lab.balancer
        .set_vip_options(&vip(&format!("{v}/tcp")), options)
        .expect("set vip options");
}

/// A TCP packet from `client` to VIP, forwarded to backend 0.
fn passes(lab: &PacketLab, desc: &str, client: &str, flags: L4) -> Case {
    let (vip, backend) = if client.starts_with('[') {
        (VIP6, BACKEND6)
    } else {
        (VIP, BACKEND)
    };
    Case::new(
        desc,
        frame(sa(client), sa(vip), flags, b""),
        XdpAction::Redirect,
        Expect::Frame(lab.to_b0(client, backend, flags, b"")),
    )
    .counter("fwd_redirect")
}

/// A TCP packet from `client` to VIP, dropped and counted under `counter`.
fn dropped(desc: &str, client: &str, flags: L4, counter: &'static str) -> Case {
    let vip = if client.starts_with('[') { VIP6 } else { VIP };
    Case::new(
        desc,
        frame(sa(client), sa(vip), flags, b""),
        XdpAction::Drop,
        Expect::Unchanged,
    )
    .counter(counter)
}

#[test]
#[ignore = "needs root"]
fn prefix_lists_longest_prefix_wins_and_tracked_flows_are_checked() {
    let mut lab = PacketLab::set_up();
    set(
        &mut lab,
        VIP,
        sources(&["10.0.0.0/8", "10.1.2.0/24"], &["10.1.0.0/16"], 0, None),
    );
    set(&mut lab, VIP6, sources(&[], &["fd00:bad::/32"], 0, None));
    let cases = [
        passes(&lab, "under allow /8: balanced", "10.2.0.5:40000", SYN),
        dropped(
            "deny /16 inside allow /8: the longer deny wins",
            "10.1.3.4:40000",
            SYN,
            "drop_acl",
        ),
        passes(
            &lab,
            "allow /24 inside deny /16: the longer allow wins",
            "10.1.2.9:40000",
            SYN,
        ),
        dropped(
            "under no allow prefix of an allow-only VIP",
            "192.0.2.1:40000",
            SYN,
            "drop_acl",
        ),
        dropped(
            "not even a stray ACK of an unknown flow gets through",
            "192.0.2.1:40001",
            ACK,
            "drop_acl",
        ),
        dropped(
            "IPv6 under deny /32",
            "[fd00:bad::5]:40000",
            SYN,
            "drop_acl",
        ),
        passes(
            &lab,
            "IPv6 under no prefix of a deny-only VIP",
            "[fd00::2]:40000",
            SYN,
        ),
        Case::new(
            "another VIP, without lists: unaffected",
            frame(sa("192.0.2.1:5353"), sa("198.19.0.1:53"), L4::Udp, b"query"),
            XdpAction::Redirect,
            Expect::Frame(lab.to_b0("192.0.2.1:5353", BACKEND, L4::Udp, b"query")),
        ),
    ];
    lab.run(lab.gc, &cases);
    assert!(!lab.tracked("10.1.3.4:40000", VIP, PROTO_TCP));

    // An allowed flow completes its handshake and is tracked; then its source is denied.
    let client = "10.2.0.5:40000";
    lab.run(lab.gc, &[passes(&lab, "handshake ACK", client, ACK)]);
    assert!(lab.tracked(client, VIP, PROTO_TCP), "tracked");
    set(
        &mut lab,
        VIP,
        sources(
            &["10.0.0.0/8", "10.1.2.0/24"],
            &["10.1.0.0/16", "10.2.0.0/16"],
            0,
            None,
        ),
    );
    lab.run(
        lab.gc,
        &[dropped(
            "tracked flow of a source denied since: dropped",
            client,
            ACK,
            "drop_acl",
        )],
    );
    assert!(
        lab.flow_entry(
            CONNTRACK_MAP,
            &lb_tests::flow_key(sa(client), sa(VIP), PROTO_TCP)
        )
        .is_some(),
        "dropped on the tracked path: the entry is still there"
    );

    // Lists removed: everyone again, the tracked flow included.
    set(&mut lab, VIP, VipOptions::default());
    lab.run(
        lab.gc,
        &[
            passes(&lab, "lists removed: tracked flow again", client, ACK),
            passes(&lab, "lists removed: any source", "192.0.2.1:40002", SYN),
        ],
    );
}

fn buckets(lab: &mut PacketLab) -> HashMap<&mut MapData, SourceKey, TokenBucket> {
    HashMap::try_from(lab.loaded.ebpf.map_mut(SOURCE_BUCKETS_MAP).expect("map")).expect("typed")
}

#[test]
#[ignore = "needs root"]
fn new_flows_per_source_are_limited_and_tracked_flows_never() {
    let mut lab = PacketLab::set_up();
    set(&mut lab, VIP, sources(&[], &[], 3, None));
    let a = |port: u16| format!("10.0.0.1:{port}");
    let mut cases: Vec<Case> = (0..3)
        .map(|i| {
            passes(
                &lab,
                &format!("new flow {} of 3 from one source", i + 1),
                &a(50_000 + i),
                SYN,
            )
        })
        .collect();
    cases.push(dropped(
        "the fourth in the same second: dropped",
        &a(50_003),
        SYN,
        "drop_source_rate_limit",
    ));
    cases.push(dropped(
        "a stray ACK of no tracked flow is a new flow too",
        &a(50_004),
        ACK,
        "drop_source_rate_limit",
    ));
    cases.push(passes(
        &lab,
        "another source: its own bucket",
        "10.0.0.2:50000",
        SYN,
    ));
    cases.push(passes(
        &lab,
        "a retransmitted SYN of a tracked flow: not limited",
        &a(50_000),
        SYN,
    ));
    cases.push(passes(
        &lab,
        "the handshake ACK of a tracked flow: not limited",
        &a(50_001),
        ACK,
    ));
    lab.run(lab.gc, &cases);
    assert!(!lab.tracked(&a(50_003), VIP, PROTO_TCP));

    // A second later (the bucket's clock moved back a second), three more, not four.
    let mut map = buckets(&mut lab);
    let keys: Vec<SourceKey> = map.keys().map(|k| k.expect("key")).collect();
    assert_eq!(keys.len(), 2, "one bucket per source");
    for key in &keys {
        let mut bucket = map.get(key, 0).expect("bucket");
        bucket.stamp_ns -= 1_000_000_000;
        map.insert(key, bucket, 0).expect("moved back");
    }
    let mut cases: Vec<Case> = (10..13)
        .map(|i| passes(&lab, "refilled after a second", &a(50_000 + i), SYN))
        .collect();
    cases.push(dropped(
        "and empty again",
        &a(50_013),
        SYN,
        "drop_source_rate_limit",
    ));
    lab.run(lab.gc, &cases);

    // Sources counted per /24: two addresses of one /24 share a bucket of 2.
    set(&mut lab, VIP, sources(&[], &[], 2, Some(24)));
    lab.run(
        lab.gc,
        &[
            passes(&lab, "first of the /24", "10.9.9.1:50000", SYN),
            passes(&lab, "second, another address", "10.9.9.2:50000", SYN),
            dropped(
                "third, a third address of the same /24",
                "10.9.9.3:50000",
                SYN,
                "drop_source_rate_limit",
            ),
            passes(&lab, "another /24", "10.9.8.1:50000", SYN),
        ],
    );

    // The limit removed: no bucket is consulted.
    set(&mut lab, VIP, VipOptions::default());
    lab.run(
        lab.gc,
        &[passes(&lab, "limit removed", "10.9.9.4:50000", SYN)],
    );
}
