//! A VIP's new table written where its table before last was (free again after the
//! quarantine) writes only the slots that differ from it, and the slots array then holds
//! exactly what the in-memory twin, which writes every slot, holds.

use std::{collections::HashMap, net::SocketAddr};

use lb_common::maps::Settings;
use lb_user::{
    balancer::{BackendSpec, BackendState, Balancer, Vip, VipOptions},
    maps::{BpfMaps, Maps, MemMaps},
    regions::QUARANTINE,
};

fn vip() -> Vip {
    "198.19.0.1:80/tcp".parse().unwrap()
}

fn backend(i: u8) -> SocketAddr {
    ([198, 18, i, 2], 8080).into()
}

/// The meta of the twin's one VIP.
fn only_meta(twin: &Balancer<MemMaps>) -> lb_common::maps::VipMeta {
    let vips = &twin.maps().vips;
    assert_eq!(vips.len(), 1, "one VIP");
    *vips.values().next().expect("one VIP")
}

/// The VIP's table region in the twin: offset, and the ids it holds.
fn twin_table(twin: &Balancer<MemMaps>) -> (u32, Vec<u32>) {
    let meta = only_meta(twin);
    (
        meta.table_off,
        twin.maps().region(meta.table_off, meta.table_len),
    )
}

/// Makes `change` on both balancers; returns the slots the kernel's wrote for it, and the
/// slots of the VIP's new table and list whose content the twin shows changed (or never
/// written before): what the kernel's should have written.
fn both(
    kernel: &mut Balancer<BpfMaps>,
    twin: &mut Balancer<MemMaps>,
    weight: Option<u32>,
    state: Option<BackendState>,
) -> (u64, u64) {
    let before_twin: HashMap<u32, u32> = twin.maps().slots.clone();
    let before = kernel.maps().slots_written();
    kernel
        .update_backend(&vip(), backend(1), weight, state)
        .expect("kernel change");
    twin.update_backend(&vip(), backend(1), weight, state)
        .expect("twin change");
    let meta = only_meta(twin);
    let expected = [
        (meta.table_off, meta.table_len),
        (meta.list_off, meta.list_len),
    ]
    .into_iter()
    .flat_map(|(off, len)| off..off + len)
    .filter(|i| before_twin.get(i) != twin.maps().slots.get(i))
    .count() as u64;
    (kernel.maps().slots_written() - before, expected)
}

/// The kernel's slots hold the twin's table for the VIP.
fn check_table(kernel: &Balancer<BpfMaps>, twin: &Balancer<MemMaps>, when: &str) {
    let (off, ids) = twin_table(twin);
    let differ = (off..)
        .zip(&ids)
        .filter(|&(i, &id)| kernel.maps().slot(i).expect("reading a slot") != id)
        .count();
    assert_eq!(differ, 0, "{when}: slots that differ from the twin's");
}

#[test]
#[ignore = "needs root"]
fn a_table_over_its_table_before_last_writes_only_the_slots_that_moved() {
    let mut loaded = lb_tests::program::load();
    let mut kernel = loaded.balancer(Settings::default()).expect("balancer");
    let slots = kernel.maps().slots_capacity();
    let mut twin = Balancer::new(MemMaps::default(), slots, Settings::default()).unwrap();
    let specs: Vec<BackendSpec> = (1..=3).map(|i| BackendSpec::new(backend(i), 1)).collect();
    let ring = VipOptions::default().ring_size;
    for b in [&mut kernel as &mut dyn AddVip, &mut twin] {
        b.add(vip(), specs.clone());
    }
    assert_eq!(kernel.maps().slots_written(), u64::from(ring) + 3);
    check_table(&kernel, &twin, "first table");
    let (first_off, first) = twin_table(&twin);

    // Backend 1 down: a new region (the first is in use), written whole.
    let (down, expected) = both(&mut kernel, &mut twin, None, Some(BackendState::Down));
    let (second_off, second) = twin_table(&twin);
    assert_ne!(second_off, first_off);
    assert_eq!(
        (down, expected),
        (u64::from(ring) + 2, u64::from(ring) + 2),
        "a new table and list, written whole"
    );
    check_table(&kernel, &twin, "backend 1 down");

    // Up again once the first region is out of quarantine: the same table as the first, in
    // the first's region, which holds it already; at most the list is written.
    std::thread::sleep(QUARANTINE * 2);
    let (up, expected) = both(&mut kernel, &mut twin, None, Some(BackendState::Up));
    let (third_off, third) = twin_table(&twin);
    assert_eq!((third_off, &third), (first_off, &first));
    assert_eq!(up, expected);
    assert!(up <= 3, "{up} slots written");
    check_table(&kernel, &twin, "backend 1 up");

    // Weight 3 for backend 1: a table in the second's region, written where it differs.
    std::thread::sleep(QUARANTINE * 2);
    let (heavier, expected) = both(&mut kernel, &mut twin, Some(3), None);
    let (fourth_off, fourth) = twin_table(&twin);
    assert_eq!(fourth_off, second_off);
    let moved = lb_common::maglev::changed_slots(&second, &fourth) as u64;
    assert!(moved > 0 && moved < u64::from(ring), "{moved} slots moved");
    assert_eq!(heavier, expected);
    assert!(
        (moved..=moved + 3).contains(&heavier),
        "{heavier} slots written, {moved} moved"
    );
    check_table(&kernel, &twin, "backend 1 weight 3");
}

/// Adds the VIP with its backends, on either balancer.
trait AddVip {
    fn add(&mut self, vip: Vip, specs: Vec<BackendSpec>);
}

impl<M: Maps> AddVip for Balancer<M> {
    fn add(&mut self, vip: Vip, specs: Vec<BackendSpec>) {
        self.add_vip(vip, VipOptions::default()).expect("add vip");
        self.set_backends(&vip, specs).expect("backends");
    }
}
