//! The map names are written twice: once in `lb-common`, for the agent, and once in the
//! `#[map(name = "…")]` attributes of `lb-ebpf`, which take only literals. The loaded program
//! has a map under every name `lb-common` declares, and no map that `lb-common` does not
//! declare, apart from the program's own working memory.

use std::collections::BTreeSet;

use lb_common::{
    counters::{COUNTERS_MAP, EVENTS_MAP},
    maps::{
        ACL_MAP, ADDR_FILTER_MAP, BACKEND_LOAD_MAP, BACKEND_OPENED_MAP, BACKEND_STATS_MAP,
        BACKEND_VIPS_MAP, BACKENDS_MAP, CONNTRACK_MAP, EMBRYONIC_MAP, EMBRYONIC_REVERSE_MAP,
        FLOW_RATE_MAP, FRAGMENTS_MAP, LOCAL_ADDRS_MAP, NEXT_HOPS_MAP, REVERSE_NAT_MAP,
        RR_CURSORS_MAP, SETTINGS_MAP, SLOTS_MAP, SOURCE_BUCKETS_MAP, SOURCE_LIMITS_MAP,
        TX_PORTS_MAP, VIP_ADDRS_MAP, VIP_STATS_MAP, VIPS_MAP,
    },
};

/// Every map name `lb-common` declares.
const DECLARED: [&str; 26] = [
    COUNTERS_MAP,
    VIPS_MAP,
    VIP_ADDRS_MAP,
    BACKENDS_MAP,
    SLOTS_MAP,
    CONNTRACK_MAP,
    REVERSE_NAT_MAP,
    RR_CURSORS_MAP,
    BACKEND_LOAD_MAP,
    BACKEND_OPENED_MAP,
    VIP_STATS_MAP,
    BACKEND_STATS_MAP,
    TX_PORTS_MAP,
    SETTINGS_MAP,
    ADDR_FILTER_MAP,
    BACKEND_VIPS_MAP,
    NEXT_HOPS_MAP,
    LOCAL_ADDRS_MAP,
    EMBRYONIC_MAP,
    EMBRYONIC_REVERSE_MAP,
    FLOW_RATE_MAP,
    EVENTS_MAP,
    ACL_MAP,
    SOURCE_LIMITS_MAP,
    SOURCE_BUCKETS_MAP,
    FRAGMENTS_MAP,
];

/// Maps only the program uses (its per-CPU scratch): the agent never opens them by name.
const PRIVATE: [&str; 1] = ["SCRATCH"];

#[test]
#[ignore = "needs root"]
fn the_program_has_exactly_the_maps_lb_common_declares() {
    let loaded = lb_tests::program::load();
    for name in DECLARED {
        assert!(
            loaded.ebpf.map(name).is_some(),
            "lb-common declares the map {name}, the XDP object has none of that name"
        );
    }
    for name in PRIVATE {
        assert!(
            loaded.ebpf.map(name).is_some(),
            "no map {name} in the XDP object: take it off `PRIVATE`"
        );
    }
    let known: BTreeSet<&str> = DECLARED.into_iter().chain(PRIVATE).collect();
    assert_eq!(known.len(), DECLARED.len() + PRIVATE.len(), "a name twice");
    // Global data sections (`.rodata`, `.bss`) are maps too, named after their section.
    let undeclared: Vec<&str> = loaded
        .ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|name| !name.starts_with('.') && !known.contains(name))
        .collect();
    assert!(
        undeclared.is_empty(),
        "the XDP object has maps that lb-common does not declare: {undeclared:?}"
    );
}
