//! The balancer over the kernel's maps writes what it writes over the in-memory twin that its
//! unit tests use: the tables in the slots array (written in batches), entry for entry.

use lb_common::maps::Settings;
use lb_user::{
    balancer::{BackendSpec, Balancer, Scheduler, Vip, VipOptions},
    maps::{Maps, MemMaps},
};

fn changes<M: Maps>(b: &mut Balancer<M>) {
    let maglev: Vip = "198.19.0.1:80/tcp".parse().unwrap();
    let wrr: Vip = "198.19.0.2:53/udp".parse().unwrap();
    let backend = |i: u8, w| BackendSpec::new(([198, 18, i, 2], 8080).into(), w);
    b.add_vip(maglev, VipOptions::default()).unwrap();
    b.set_backends(&maglev, (1..=5).map(|i| backend(i, u32::from(i))).collect())
        .unwrap();
    let options = VipOptions {
        scheduler: Scheduler::WeightedRoundRobin,
        ..VipOptions::default()
    };
    b.add_vip(wrr, options).unwrap();
    b.set_backends(&wrr, vec![backend(7, 3), backend(8, 1)])
        .unwrap();
    // A change that rewrites the Maglev table into a new region.
    b.remove_backend(&maglev, backend(3, 3).addr).unwrap();
}

#[test]
#[ignore = "needs root"]
fn kernel_slots_hold_what_the_twin_holds() {
    let mut loaded = lb_tests::program::load();
    let mut kernel = loaded.balancer(Settings::default()).expect("balancer");
    let slots = kernel.maps().slots_capacity();
    let mut twin = Balancer::new(MemMaps::default(), slots, Settings::default()).unwrap();
    changes(&mut kernel);
    changes(&mut twin);
    assert_eq!(kernel.vips(), twin.vips());
    let written = &twin.maps().slots;
    assert!(
        written.len() > 2 * 65_537,
        "{} slots written",
        written.len()
    );
    let mut differ = 0;
    for (&index, &id) in written {
        if kernel.maps().slot(index).expect("reading a slot") != id {
            differ += 1;
        }
    }
    assert_eq!(differ, 0, "slots that differ from the twin's");
}
