use super::*;
use crate::maps::MemMaps;
use lb_common::{
    maglev::{DEFAULT_RING_SIZE, MAX_WEIGHT},
    maps::{BACKEND_DRAINING, MAX_BACKENDS, VipAddrKey, VipKey, VipMeta},
};

fn balancer() -> Balancer<MemMaps> {
    Balancer::new(MemMaps::default(), 1 << 20, Settings::default()).unwrap()
}

fn vip() -> Vip {
    "198.19.0.1:80/tcp".parse().unwrap()
}

fn backend(i: u8, weight: u32) -> BackendSpec {
    BackendSpec::new(SocketAddr::from(([198, 18, i, 2], 8080)), weight)
}

fn table(b: &Balancer<MemMaps>, vip: &Vip) -> Vec<u32> {
    let meta = b.maps().vips[&vip.key()];
    b.maps().region(meta.table_off, meta.table_len)
}

#[test]
fn parses_vips_and_schedulers() {
    let v: Vip = "[fd00::1]:0/udp".parse().unwrap();
    assert_eq!(v.port, 0);
    assert_eq!(v.proto, Proto::Udp);
    assert!(matches!(
        "1.2.3.4:80/sctp".parse::<Vip>(),
        Err(Error::BadProto(_))
    ));
    assert!(matches!(
        "1.2.3.4/tcp".parse::<Vip>(),
        Err(Error::BadVip(_))
    ));
    for s in Scheduler::ALL {
        assert_eq!(s.name().parse::<Scheduler>().unwrap(), s);
    }
    assert_eq!(
        "fastest".parse::<Scheduler>().unwrap_err().to_string(),
        "unknown scheduler \"fastest\": expected one of maglev, source-hash, round-robin, \
         weighted-round-robin, random, weighted-random, least-conn (or ipvsadm's rr, wrr, lc, \
         wlc, sh, mh)"
    );
    // ipvsadm's names, and any case.
    for (alias, s) in [
        ("rr", Scheduler::RoundRobin),
        ("WRR", Scheduler::WeightedRoundRobin),
        ("lc", Scheduler::LeastConn),
        ("Wlc", Scheduler::LeastConn),
        ("sh", Scheduler::SourceHash),
        ("MH", Scheduler::Maglev),
        ("Round-Robin", Scheduler::RoundRobin),
    ] {
        assert_eq!(alias.parse::<Scheduler>().unwrap(), s, "{alias}");
    }
    assert!("r".parse::<Scheduler>().is_err());
}

#[test]
fn refused_changes_change_nothing() {
    let mut b = balancer();
    b.add_vip(vip(), VipOptions::default()).unwrap();
    b.set_backends(&vip(), vec![backend(1, 1), backend(2, 1)])
        .unwrap();
    let before = (b.vips(), b.maps().vips.clone(), b.maps().backends.clone());

    let v6 = BackendSpec::new("[fd00::2]:80".parse().unwrap(), 1);
    assert!(matches!(
        b.add_backend(&vip(), v6),
        Err(Error::FamilyMismatch { .. })
    ));
    assert!(matches!(
        b.add_backend(&vip(), backend(3, MAX_WEIGHT + 1)),
        Err(Error::WeightOutOfRange { .. })
    ));
    assert!(matches!(
        b.add_backend(&vip(), backend(1, 5)),
        Err(Error::BackendExists { .. })
    ));
    assert!(matches!(
        b.set_backends(&vip(), vec![backend(3, 1), backend(3, 2)]),
        Err(Error::BackendExists { .. })
    ));
    assert!(matches!(
        b.add_vip(vip(), VipOptions::default()),
        Err(Error::VipExists(_))
    ));
    let bad_ring = VipOptions {
        scheduler: Scheduler::Maglev,
        ring_size: 65536,
        ..VipOptions::default()
    };
    assert!(matches!(
        b.set_vip_options(&vip(), bad_ring),
        Err(Error::BadRingSize(65536))
    ));
    assert!(matches!(
        b.remove_backend(&vip(), backend(9, 1).addr),
        Err(Error::UnknownBackend { .. })
    ));

    assert_eq!(
        (b.vips(), b.maps().vips.clone(), b.maps().backends.clone()),
        before
    );
}

#[test]
fn existing_backends_keep_their_ids_and_removed_ones_are_retired() {
    let mut b = balancer();
    b.add_vip(vip(), VipOptions::default()).unwrap();
    b.set_backends(&vip(), vec![backend(1, 1), backend(2, 1)])
        .unwrap();
    let ids: Vec<u32> = b
        .vip(&vip())
        .unwrap()
        .backends
        .iter()
        .map(|x| x.id)
        .collect();
    b.add_backend(&vip(), backend(3, 1)).unwrap();
    b.remove_backend(&vip(), backend(1, 1).addr).unwrap();
    let now: Vec<u32> = b
        .vip(&vip())
        .unwrap()
        .backends
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(now[0], ids[1], "backend 2 kept its id");
    assert_eq!(
        b.maps().backends[&backend_index(ids[0])].state,
        BACKEND_UNUSED
    );
    let t = table(&b, &vip());
    assert_eq!(t.len(), DEFAULT_RING_SIZE as usize);
    assert!(!t.contains(&ids[0]), "the removed backend is in no slot");
}

#[test]
fn tables_follow_the_scheduler_and_leave_out_draining_down_and_zero_weight() {
    let mut b = balancer();
    let opts = VipOptions {
        scheduler: Scheduler::WeightedRoundRobin,
        ring_size: DEFAULT_RING_SIZE,
        ..VipOptions::default()
    };
    b.add_vip(vip(), opts).unwrap();
    b.set_backends(
        &vip(),
        vec![backend(1, 3), backend(2, 1), backend(3, 1), backend(4, 0)],
    )
    .unwrap();
    let info = b.vip(&vip()).unwrap();
    let id = |i: usize| info.backends[i].id;
    let t = table(&b, &vip());
    assert_eq!(t.len(), 5);
    assert_eq!(t.iter().filter(|&&x| x == id(0)).count(), 3);
    assert!(!t.contains(&id(3)), "weight 0 takes no new flows");

    b.update_backend(
        &vip(),
        backend(1, 3).addr,
        None,
        Some(BackendState::Draining),
    )
    .unwrap();
    b.update_backend(&vip(), backend(2, 1).addr, None, Some(BackendState::Down))
        .unwrap();
    assert_eq!(table(&b, &vip()), vec![id(2)]);
    let info = b.vip(&vip()).unwrap();
    assert_eq!(
        b.maps().backends[&backend_index(info.backends[0].id)].state,
        BACKEND_DRAINING
    );

    b.set_vip_options(
        &vip(),
        VipOptions {
            scheduler: Scheduler::LeastConn,
            ring_size: 3,
            ..VipOptions::default()
        },
    )
    .unwrap();
    let meta = b.maps().vips[&vip().key()];
    assert_eq!(meta.table_len, 0);
    assert_eq!(b.maps().region(meta.list_off, meta.list_len), vec![id(2)]);
}

#[test]
fn the_address_filter_holds_every_vip_and_backend_address() {
    let in_filter = |b: &Balancer<MemMaps>, kind, addr: IpAddr| {
        let (word, mask) = filter_slot(kind, &addr16(addr));
        b.maps().filter.get(&word).is_some_and(|w| w & mask != 0)
    };
    let mut b = balancer();
    assert!(b.maps().filter.is_empty());
    let v = vip();
    b.add_vip(v, VipOptions::default()).unwrap();
    assert!(in_filter(&b, FilterKind::Vip, v.addr));
    assert!(!in_filter(&b, FilterKind::Backend, v.addr));
    b.set_backends(&v, vec![backend(1, 1), backend(2, 1)])
        .unwrap();
    for i in [1, 2] {
        assert!(in_filter(&b, FilterKind::Backend, backend(i, 1).addr.ip()));
    }
    b.set_backends(&v, vec![backend(2, 1)]).unwrap();
    assert!(!in_filter(&b, FilterKind::Backend, backend(1, 1).addr.ip()));
    assert!(in_filter(&b, FilterKind::Backend, backend(2, 1).addr.ip()));
    // A restored balancer writes the whole filter again.
    let snapshot = b.snapshot();
    let mut maps = MemMaps::default();
    maps.filter.insert(7, u64::MAX);
    let restored = Balancer::restore(maps, 1 << 20, Settings::default(), snapshot).unwrap();
    assert_eq!(restored.maps().filter, b.maps().filter);
    b.remove_vip(&v).unwrap();
    assert!(b.maps().filter.is_empty(), "{:?}", b.maps().filter);
}

#[test]
fn vip_addresses_are_counted_per_protocol() {
    let mut b = balancer();
    let a: Vip = "198.19.0.1:80/tcp".parse().unwrap();
    let c: Vip = "198.19.0.1:443/tcp".parse().unwrap();
    b.add_vip(a, VipOptions::default()).unwrap();
    b.add_vip(c, VipOptions::default()).unwrap();
    assert_eq!(b.maps().vip_addrs[&a.addr_key()], 2);
    b.remove_vip(&a).unwrap();
    assert_eq!(b.maps().vip_addrs[&a.addr_key()], 1);
    b.remove_vip(&c).unwrap();
    assert!(b.maps().vip_addrs.is_empty());
    assert!(b.maps().vips.is_empty());
}

#[test]
fn a_restored_balancer_takes_over_ids_regions_and_maps() {
    let mut b = balancer();
    b.add_vip(vip(), VipOptions::default()).unwrap();
    b.set_backends(&vip(), vec![backend(1, 1), backend(2, 2)])
        .unwrap();
    let udp: Vip = "198.19.0.1:53/udp".parse().unwrap();
    b.add_vip(
        udp,
        VipOptions {
            scheduler: Scheduler::RoundRobin,
            ring_size: 3,
            ..VipOptions::default()
        },
    )
    .unwrap();
    b.set_backends(&udp, vec![backend(3, 1)]).unwrap();
    let json = serde_json::to_string(&b.snapshot()).unwrap();
    let before = b.vips();

    // A new agent over the same maps, which lost their VIP entries meanwhile.
    let mut maps = std::mem::take(b.maps_mut());
    maps.vips.clear();
    maps.vip_addrs.clear();
    let snapshot: Snapshot = serde_json::from_str(&json).unwrap();
    let mut restored = Balancer::restore(maps, 1 << 20, Settings::default(), snapshot).unwrap();
    assert_eq!(restored.vips(), before);
    assert_eq!(restored.maps().vips.len(), 2);
    assert_eq!(restored.maps().vip_addrs[&vip().addr_key()], 1);
    assert_eq!(restored.maps().vip_addrs[&udp.addr_key()], 1);
    assert_eq!(table(&restored, &vip()).len(), DEFAULT_RING_SIZE as usize);

    // Changes after the restore keep the old ids and use free regions and ids only.
    restored.add_backend(&vip(), backend(4, 1)).unwrap();
    let after = restored.vip(&vip()).unwrap();
    assert_eq!(after.backends[..2], before[1].backends[..]);
    let ids: std::collections::HashSet<u32> = restored
        .vips()
        .iter()
        .flat_map(|v| v.backends.iter().map(|b| b.id))
        .collect();
    assert_eq!(ids.len(), 4, "no id handed out twice");
}

/// The maps as the data path sees them: VIP entries, address counts, backends in use, the
/// tables every VIP entry points to, the filter.
type Seen = (
    Vec<(VipKey, VipMeta, Vec<u32>, Vec<u32>)>,
    Vec<(VipAddrKey, u32)>,
    Vec<(u32, Backend)>,
    Vec<(u32, u64)>,
);

fn seen(maps: &MemMaps) -> Seen {
    let mut vips: Vec<_> = maps
        .vips
        .iter()
        .map(|(k, m)| {
            (
                *k,
                *m,
                maps.region(m.table_off, m.table_len),
                maps.region(m.list_off, m.list_len),
            )
        })
        .collect();
    vips.sort_by_key(|v| (v.0.addr, v.0.port, v.0.proto));
    let mut addrs: Vec<_> = maps.vip_addrs.iter().map(|(k, c)| (*k, *c)).collect();
    addrs.sort_by_key(|a| a.0.addr.to_vec());
    let mut backends: Vec<_> = maps
        .backends
        .iter()
        .filter(|(_, b)| b.state != BACKEND_UNUSED)
        .map(|(i, b)| (*i, *b))
        .collect();
    backends.sort_by_key(|b| b.0);
    let mut filter: Vec<_> = maps.filter.iter().map(|(i, w)| (*i, *w)).collect();
    filter.sort_unstable();
    (vips, addrs, backends, filter)
}

fn two_vips() -> (Balancer<MemMaps>, Vip) {
    let mut b = balancer();
    b.add_vip(vip(), VipOptions::default()).unwrap();
    b.set_backends(&vip(), vec![backend(1, 1), backend(2, 3), backend(3, 1)])
        .unwrap();
    let udp: Vip = "198.19.0.2:53/udp".parse().unwrap();
    let options = VipOptions {
        scheduler: Scheduler::WeightedRoundRobin,
        ring_size: 3,
        ..VipOptions::default()
    };
    b.add_vip(udp, options).unwrap();
    b.set_backends(&udp, vec![backend(4, 2), backend(5, 1)])
        .unwrap();
    (b, udp)
}

#[test]
fn a_snapshot_restored_onto_empty_maps_gives_the_data_path_everything() {
    let (b, _) = two_vips();
    let snapshot = b.snapshot();
    let restored =
        Balancer::restore(MemMaps::default(), 1 << 20, Settings::default(), snapshot).unwrap();
    assert_eq!(restored.vips(), b.vips());
    assert_eq!(seen(restored.maps()), seen(b.maps()));
    assert!(!table(&restored, &vip()).is_empty());
}

#[test]
fn restoring_removes_what_an_unsaved_change_left_in_the_maps() {
    let (mut b, udp) = two_vips();
    let snapshot = b.snapshot();
    let expected = seen(b.maps());
    // Changes made to the maps but never saved: a VIP on a new address, a VIP on a known
    // address, a backend, a removed VIP.
    let ghost: Vip = "198.19.0.9:80/tcp".parse().unwrap();
    b.add_vip(ghost, VipOptions::default()).unwrap();
    b.set_backends(&ghost, vec![backend(9, 1)]).unwrap();
    b.add_vip("198.19.0.1:443/tcp".parse().unwrap(), VipOptions::default())
        .unwrap();
    b.add_backend(&vip(), backend(8, 1)).unwrap();
    b.remove_vip(&udp).unwrap();
    let maps = std::mem::take(b.maps_mut());
    let restored = Balancer::restore(maps, 1 << 20, Settings::default(), snapshot).unwrap();
    assert_eq!(seen(restored.maps()), expected);
}

#[test]
fn an_aborted_change_leaves_maps_and_state_as_they_were() {
    let (mut b, udp) = two_vips();
    let before = (b.vips(), b.snapshot().vips.len(), seen(b.maps()));
    let checkpoint = b.begin();
    b.add_backend(&vip(), backend(7, 2)).unwrap();
    b.remove_vip(&udp).unwrap();
    b.add_vip("198.19.0.3:80/tcp".parse().unwrap(), VipOptions::default())
        .unwrap();
    assert_eq!(seen(b.maps()), before.2, "writes are held back");
    b.abort(checkpoint);
    assert_eq!((b.vips(), b.snapshot().vips.len(), seen(b.maps())), before);
    // Ids and regions are as they were: the same change again gives the same result as on
    // a balancer that never saw the aborted one.
    let (mut twin, _) = two_vips();
    b.add_backend(&vip(), backend(7, 2)).unwrap();
    twin.add_backend(&vip(), backend(7, 2)).unwrap();
    assert_eq!(b.vips(), twin.vips());
    assert_eq!(seen(b.maps()), seen(twin.maps()));
}

#[test]
fn a_committed_change_reaches_the_maps_as_if_made_directly() {
    let (mut b, udp) = two_vips();
    let (mut direct, _) = two_vips();
    let _checkpoint = b.begin();
    b.add_backend(&vip(), backend(7, 2)).unwrap();
    b.remove_vip(&udp).unwrap();
    b.commit().unwrap();
    direct.add_backend(&vip(), backend(7, 2)).unwrap();
    direct.remove_vip(&udp).unwrap();
    assert_eq!(b.vips(), direct.vips());
    assert_eq!(seen(b.maps()), seen(direct.maps()));
}

#[test]
fn reused_backend_slots_get_a_new_generation() {
    let mut ids = BackendIds::new();
    let first = ids.alloc().unwrap();
    ids.free(first);
    // FIFO: every other slot is used before this one comes back.
    let mut again = None;
    for _ in 0..MAX_BACKENDS {
        let id = ids.alloc().unwrap();
        if backend_index(id) == backend_index(first) {
            again = Some(id);
        }
    }
    let again = again.unwrap();
    assert_ne!(again, first);
}

fn backend_key(addr: &str, proto: u8) -> BackendKey {
    let addr: SocketAddr = addr.parse().unwrap();
    BackendKey {
        addr: addr16(addr.ip()),
        port: addr.port().to_be_bytes(),
        proto,
        family: crate::model::family(addr.ip()),
    }
}

fn stateless_flag(b: &Balancer<MemMaps>, id: u32) -> bool {
    b.maps().backends[&backend_index(id)].flags & BACKEND_FLAG_STATELESS_REPLY != 0
}

#[test]
fn a_backend_of_one_vip_is_translated_statelessly_and_a_shared_one_keeps_its_first_owner() {
    use lb_common::{flow::PROTO_TCP, maps::REPLY_SHARED};
    let mut b = balancer();
    let (a, other): (Vip, Vip) = (
        "198.19.0.1:80/tcp".parse().unwrap(),
        "198.19.0.9:443/tcp".parse().unwrap(),
    );
    // `other` takes the lower VIP id: ids are handed out from 0 up.
    b.add_vip(other, VipOptions::default()).unwrap();
    b.add_vip(a, VipOptions::default()).unwrap();
    b.set_backends(&a, vec![backend(1, 1), backend(2, 1)])
        .unwrap();
    let key = backend_key("198.18.1.2:8080", PROTO_TCP);
    let entry = b.maps().backend_vips[&key];
    assert_eq!(entry.flags, 0);
    assert_eq!(
        (entry.vip_addr, entry.vip_port),
        (addr16(a.addr), 80u16.to_be_bytes())
    );
    let a_ids: Vec<u32> = b.vip(&a).unwrap().backends.iter().map(|x| x.id).collect();
    assert_eq!(entry.backend_id, a_ids[0]);
    assert!(a_ids.iter().all(|&id| stateless_flag(&b, id)));
    assert_eq!(b.maps().backend_vips.len(), 2);

    // Shared with `other` (lower id): marked shared, owner still `a`, whose flows now record
    // reverse entries too.
    b.set_backends(&other, vec![backend(1, 1)]).unwrap();
    let entry = b.maps().backend_vips[&key];
    assert_eq!(entry.flags, REPLY_SHARED);
    assert_eq!(entry.vip_addr, addr16(a.addr), "the first owner stays");
    assert!(!stateless_flag(&b, a_ids[0]));
    assert!(
        stateless_flag(&b, a_ids[1]),
        "the other backend is still a's alone"
    );
    let other_id = b.vip(&other).unwrap().backends[0].id;
    assert!(!stateless_flag(&b, other_id));

    // A restarted agent keeps the owner it finds in the maps.
    let restored = Balancer::restore(
        std::mem::take(b.maps_mut()),
        1 << 20,
        Settings::default(),
        b.snapshot(),
    )
    .unwrap();
    assert_eq!(restored.maps().backend_vips[&key].vip_addr, addr16(a.addr));
    let mut b = restored;

    // `a` lets it go: `other` has it alone again, statelessly.
    b.set_backends(&a, vec![backend(2, 1)]).unwrap();
    let entry = b.maps().backend_vips[&key];
    assert_eq!(entry.flags, 0);
    assert_eq!(
        (entry.vip_addr, entry.vip_id),
        (addr16(other.addr), b.vip(&other).unwrap().id)
    );
    assert!(stateless_flag(&b, other_id));

    // Removing the VIPs removes their entries.
    b.remove_vip(&other).unwrap();
    b.remove_vip(&a).unwrap();
    assert!(b.maps().backend_vips.is_empty());
}

#[test]
fn wildcard_port_vips_need_per_flow_reverse_entries() {
    use lb_common::{flow::PROTO_TCP, maps::REPLY_SHARED};
    let mut b = balancer();
    let wild: Vip = "198.19.0.2:0/tcp".parse().unwrap();
    b.add_vip(wild, VipOptions::default()).unwrap();
    b.set_backends(
        &wild,
        vec![BackendSpec::new("198.18.1.2:0".parse().unwrap(), 1)],
    )
    .unwrap();
    assert!(
        b.maps().backend_vips.is_empty(),
        "no port to key a reply by"
    );
    assert!(!stateless_flag(&b, b.vip(&wild).unwrap().backends[0].id));
    // A VIP with a port on the same address: its replies may come from the wildcard's flows.
    b.add_vip(vip(), VipOptions::default()).unwrap();
    b.set_backends(&vip(), vec![backend(1, 1)]).unwrap();
    let entry = b.maps().backend_vips[&backend_key("198.18.1.2:8080", PROTO_TCP)];
    assert_eq!(entry.flags, REPLY_SHARED);
    assert!(!stateless_flag(&b, b.vip(&vip()).unwrap().backends[0].id));
}

fn with_sources(allow: &[&str], deny: &[&str], rate: u32) -> VipOptions {
    VipOptions {
        allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
        deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
        source_rate_limit: rate,
        ..VipOptions::default()
    }
}

/// The source prefix list entries in the maps, as (address prefix, verdict) per VIP id.
fn acl(b: &Balancer<MemMaps>) -> std::collections::BTreeSet<(u32, String, u8)> {
    b.maps()
        .acl
        .iter()
        .map(|(k, v)| {
            let len = k.prefix_len - lb_common::acl::ACL_MATCH_BITS;
            let addr = std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&k.addr[..4]).unwrap());
            (k.vip_id, format!("{addr}/{len}"), *v)
        })
        .collect()
}

#[test]
fn source_lists_and_limits_reach_the_maps_and_leave_with_the_vip() {
    use lb_common::{
        acl::{ACL_ALLOW, ACL_DENY},
        maps::{VIP_FLAG_ACL, VIP_FLAG_SOURCE_LIMIT},
    };
    let mut b = balancer();
    b.add_vip(vip(), with_sources(&["10.0.0.0/8"], &["10.1.0.0/16"], 5))
        .unwrap();
    b.set_backends(&vip(), vec![backend(1, 1)]).unwrap();
    let id = b.vip(&vip()).unwrap().id;
    let entries = |list: &[(&str, u8)]| {
        list.iter()
            .map(|(p, v)| (id, (*p).to_owned(), *v))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        acl(&b),
        entries(&[
            ("0.0.0.0/0", ACL_DENY),
            ("10.0.0.0/8", ACL_ALLOW),
            ("10.1.0.0/16", ACL_DENY)
        ])
    );
    let meta = b.maps().vips[&vip().key()];
    assert_eq!(meta.flags, VIP_FLAG_ACL | VIP_FLAG_SOURCE_LIMIT);
    let backend_flags = |b: &Balancer<MemMaps>| {
        let info = b.vip(&vip()).unwrap();
        b.maps().backends[&backend_index(info.backends[0].id)].flags
    };
    assert_eq!(backend_flags(&b) & BACKEND_FLAG_ACL, BACKEND_FLAG_ACL);
    let limit = b.maps().source_limits[&id];
    assert_eq!((limit.rate, limit.burst, limit.prefix_len), (5, 5, 32));

    // Deny only, no limit: the implicit deny-all and the old entries go; flags follow.
    b.set_vip_options(&vip(), with_sources(&[], &["192.0.2.0/24"], 0))
        .unwrap();
    assert_eq!(acl(&b), entries(&[("192.0.2.0/24", ACL_DENY)]));
    assert_eq!(b.maps().vips[&vip().key()].flags, VIP_FLAG_ACL);
    assert!(!b.maps().source_limits.contains_key(&id));

    // Nothing: no entry, no flag, backends unflagged.
    b.set_vip_options(&vip(), VipOptions::default()).unwrap();
    assert!(acl(&b).is_empty());
    assert_eq!(b.maps().vips[&vip().key()].flags, 0);
    assert_eq!(backend_flags(&b) & BACKEND_FLAG_ACL, 0);

    b.set_vip_options(&vip(), with_sources(&["10.0.0.0/8"], &[], 7))
        .unwrap();
    b.remove_vip(&vip()).unwrap();
    assert!(acl(&b).is_empty());
    assert!(b.maps().source_limits.is_empty());
}

#[test]
fn refused_source_changes_change_nothing() {
    let mut b = balancer();
    b.add_vip(vip(), with_sources(&["10.0.0.0/8"], &[], 5))
        .unwrap();
    let before = (b.vips(), acl(&b), b.maps().vips.clone());
    for (options, err) in [
        (
            with_sources(&["fd00::/8"], &[], 0),
            "source prefix fd00::/8 is not of VIP 198.19.0.1:80/tcp's address family",
        ),
        (
            with_sources(&["10.0.0.0/8"], &["10.0.0.0/8"], 0),
            "source prefix 10.0.0.0/8 is listed twice (in allow or deny, or in both)",
        ),
        (
            VipOptions {
                source_prefix_len: Some(40),
                ..with_sources(&[], &[], 5)
            },
            "source prefix length 40 is out of range 0..=32 for VIP 198.19.0.1:80/tcp",
        ),
    ] {
        assert_eq!(
            b.set_vip_options(&vip(), options).unwrap_err().to_string(),
            err
        );
        assert_eq!((b.vips(), acl(&b), b.maps().vips.clone()), before);
    }
}

#[test]
fn source_lists_are_restored_and_stale_entries_removed() {
    let mut b = balancer();
    b.add_vip(vip(), with_sources(&["10.0.0.0/8"], &[], 3))
        .unwrap();
    let snapshot = b.snapshot();
    let mut maps = MemMaps::default();
    // An entry an interrupted change left behind.
    let stale = lb_common::acl::AclKey {
        prefix_len: lb_common::acl::acl_prefix_len(24),
        vip_id: 99,
        family: 4,
        ..Default::default()
    };
    maps.acl.insert(stale, 1);
    let restored = Balancer::restore(maps, 1 << 20, Settings::default(), snapshot).unwrap();
    assert_eq!(acl(&restored), acl(&b));
    assert_eq!(restored.maps().source_limits, b.maps().source_limits);
    assert_eq!(
        restored.vip(&vip()).unwrap().options,
        b.vip(&vip()).unwrap().options
    );
}
