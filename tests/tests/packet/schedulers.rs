//! Schedulers: each picks a backend of its VIP, and weighted round-robin follows the weights
//! over many new flows.

use std::net::SocketAddr;

use lb_tests::{
    fixture::{Case, XdpAction, to_one_of},
    lab::PacketLab,
    packet::{frame, verify_checksums},
    sa,
};

use super::SYN;

/// One new flow to each scheduler's VIP (198.19.1.1.., backends 3:1).
pub fn cases() -> Vec<Case> {
    vec![
        // Each scheduler.
        Case::new(
            "maglev picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 1)),
                sa("198.19.1.1:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "source-hash picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 2)),
                sa("198.19.1.2:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "round-robin picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 3)),
                sa("198.19.1.3:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "weighted-round-robin picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 4)),
                sa("198.19.1.4:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "random picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 5)),
                sa("198.19.1.5:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "weighted-random picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 6)),
                sa("198.19.1.6:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
        Case::new(
            "least-conn picks a backend of the VIP",
            frame(
                sa(&format!("198.18.0.2:{}", 41000 + 7)),
                sa("198.19.1.7:80"),
                SYN,
                b"",
            ),
            XdpAction::Redirect,
            to_one_of(&["198.18.1.2:8080", "198.18.2.2:8080"]),
        ),
    ]
}

#[test]
#[ignore = "needs root"]
fn weighted_round_robin_over_test_run_follows_the_weights() {
    let mut lab = PacketLab::set_up();
    let gc = lab.gc;
    let loaded = &mut lab.loaded;
    // 1000 new flows to the weighted-round-robin VIP (3:1 between two backends).
    let counts = lab.topo.gateway.run(|| {
        let mut to_b0 = 0;
        for port in 0..1000u16 {
            let input = frame(
                SocketAddr::from(([198, 18, 0, 2], 20000 + port)),
                sa("198.19.1.4:80"),
                SYN,
                b"",
            );
            let out = lb_tests::program::test_run(loaded, &input, Some(gc)).expect("test run");
            assert_eq!(out.action, XdpAction::Redirect as u32);
            verify_checksums(&out.output).expect("checksums");
            if out.output[30..34] == [198, 18, 1, 2] {
                to_b0 += 1;
            }
        }
        to_b0
    });
    // Per-CPU cursors each walk the 3:1 cycle, so the share is 75% up to one cycle per CPU.
    assert!(
        (740..=760).contains(&counts),
        "{counts} of 1000 to the weight-3 backend"
    );
}
