use lb_common::maps::Settings;

use std::{collections::BTreeMap, time::Duration};

use super::*;
use crate::{balancer::VipOptions, config::Config, maps::MemMaps};

const CONFIG: &str = r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[[vip.backend]]
address = "10.1.0.2:80"
[vip.autoscale]
policy = "target"
target-per-backend = 10
min = 1
max = 3
max-step = 2
scale-out-cooldown = "0s"
scale-in-cooldown = "5s"
metric-window = "1s"
scale-in-window = "5s"
drain-timeout = "60s"
provision-timeout = "10s"
standby = ["10.1.0.3:80", "10.1.0.4:80"]
"#;

struct Rig {
    balancer: Balancer<MemMaps>,
    scaler: VipAutoscaler,
    vip: Vip,
    /// Open flows per backend address.
    flows: HashMap<SocketAddr, u32>,
    now: u64,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl Rig {
    fn new(text: &str) -> Self {
        let config = Config::parse(text).unwrap();
        let vip_config = &config.vips[0];
        let vip = vip_config.vip();
        let mut balancer = Balancer::new(MemMaps::default(), 1 << 20, Settings::default()).unwrap();
        balancer.add_vip(vip, VipOptions::default()).unwrap();
        balancer.set_backends(&vip, vip_config.backends()).unwrap();
        let info = balancer.vip(&vip).unwrap();
        let scaler = VipAutoscaler::new(vip, vip_config.autoscale.clone().unwrap(), &info);
        Self {
            balancer,
            scaler,
            vip,
            flows: HashMap::new(),
            now: 0,
        }
    }

    /// Spreads `total` open flows evenly over the backends taking new flows.
    fn load(&mut self, total: u32) {
        let info = self.balancer.vip(&self.vip).unwrap();
        let up: Vec<_> = info
            .backends
            .iter()
            .filter(|b| b.spec.state == BackendState::Up)
            .map(|b| b.spec.addr)
            .collect();
        self.flows.retain(|a, _| !up.contains(a));
        for (i, a) in up.iter().enumerate() {
            let share = total / up.len() as u32 + u32::from((i as u32) < total % up.len() as u32);
            self.flows.insert(*a, share);
        }
    }

    /// One second: a tick, with every probe answered `healthy`.
    fn second(&mut self, healthy: bool) -> Vec<Job> {
        self.now += 1;
        let info = self.balancer.vip(&self.vip).unwrap();
        let active = info
            .backends
            .iter()
            .map(|b| (b.id, self.flows.get(&b.spec.addr).copied().unwrap_or(0)))
            .collect();
        let jobs = self.scaler.tick(
            self.now,
            &mut self.balancer,
            &active,
            &HealthCheck::default(),
            false,
        );
        for job in &jobs {
            if let Job::Probe { addr, .. } = job {
                let result = if healthy {
                    Ok(())
                } else {
                    Err("refused".into())
                };
                self.scaler.on_result(
                    self.now,
                    JobResult::Probe {
                        addr: *addr,
                        result,
                    },
                    &mut self.balancer,
                    &BTreeMap::new(),
                );
            }
        }
        jobs
    }

    /// The running scale-up hook answers `text`, with `claimed` the other VIPs' backends.
    fn hook_answers(&mut self, text: &str, claimed: &BTreeMap<SocketAddr, Vip>) {
        let answer = JobResult::ScaleUp(parse_hook_address(text, 80));
        self.scaler
            .on_result(self.now, answer, &mut self.balancer, claimed);
    }

    /// The running scale-up hook fails.
    fn hook_fails(&mut self) {
        let failed = JobResult::ScaleUp(Err("exit 1".into()));
        self.scaler
            .on_result(self.now, failed, &mut self.balancer, &BTreeMap::new());
    }

    fn states(&self) -> Vec<(SocketAddr, BackendState)> {
        let info = self.balancer.vip(&self.vip).unwrap();
        info.backends
            .iter()
            .map(|b| (b.spec.addr, b.spec.state))
            .collect()
    }
}

#[test]
fn standby_backends_join_under_load_and_drain_before_leaving() {
    let mut rig = Rig::new(CONFIG);
    rig.load(5);
    rig.second(true);
    assert_eq!(rig.states().len(), 1, "5 flows fit one backend");

    rig.load(25);
    let jobs = rig.second(true);
    assert_eq!(jobs.len(), 2, "two probes: {jobs:?}");
    assert_eq!(
        rig.states(),
        [
            (addr("10.1.0.2:80"), BackendState::Up),
            (addr("10.1.0.3:80"), BackendState::Up),
            (addr("10.1.0.4:80"), BackendState::Up),
        ]
    );
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    assert_eq!((status.desired, status.serving), (3, 3));
    assert!(status.standby.is_empty());
    assert_eq!(status.decisions.len(), 1);
    assert!(status.decisions[0].reason.contains("load 25"), "{status:?}");

    // Load falls to 5 flows: 1 long-lived on 10.1.0.3, 4 on 10.1.0.4.
    let fell = rig.now;
    rig.flows = HashMap::from([(addr("10.1.0.3:80"), 1), (addr("10.1.0.4:80"), 4)]);
    let draining = |rig: &Rig| -> Vec<SocketAddr> {
        rig.states()
            .into_iter()
            .filter(|(_, s)| *s == BackendState::Draining)
            .map(|(a, _)| a)
            .collect()
    };
    while draining(&rig).is_empty() {
        assert!(rig.now < fell + 10, "no scale-in: {:?}", rig.states());
        rig.second(true);
    }
    assert!(rig.now >= fell + 5, "scale-in only after the 5 s window");
    assert_eq!(
        draining(&rig),
        [addr("10.1.0.2:80"), addr("10.1.0.3:80")],
        "the backends with the fewest flows drain"
    );
    // The idle one leaves at the next tick; the one with a flow stays until it closes.
    rig.second(true);
    assert_eq!(
        rig.states(),
        [
            (addr("10.1.0.3:80"), BackendState::Draining),
            (addr("10.1.0.4:80"), BackendState::Up),
        ]
    );
    rig.second(true);
    assert_eq!(rig.states().len(), 2, "kept while its flow is open");
    rig.flows.remove(&addr("10.1.0.3:80"));
    rig.second(true);
    assert_eq!(rig.states(), [(addr("10.1.0.4:80"), BackendState::Up)]);
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    assert_eq!(
        status.standby.len(),
        2,
        "drained backends are standby again"
    );
}

#[test]
fn a_restarted_autoscaler_keeps_origins_drains_and_spares() {
    let mut rig = Rig::new(CONFIG);
    rig.load(25);
    rig.second(true);
    assert_eq!(rig.states().len(), 3);
    // Load falls; 2 flows stay on 10.1.0.3, so it stays (draining or up) while the config's
    // 10.1.0.2 drains, leaves and becomes a spare.
    rig.flows = HashMap::from([(addr("10.1.0.3:80"), 2)]);
    while rig.states().len() == 3 {
        assert!(rig.now < 20, "no scale-in: {:?}", rig.states());
        rig.second(true);
    }
    let info = rig.balancer.vip(&rig.vip).unwrap();
    let saved = rig.scaler.save();
    assert!(saved.spare.contains(&addr("10.1.0.2:80")), "{saved:?}");

    let config = rig.scaler.config().clone();
    let mut restarted = VipAutoscaler::new(rig.vip, config.clone(), &info);
    restarted.restore(&saved, &info, 100);
    let mut again = restarted.save();
    let mut want = saved.clone();
    for pool in [&mut again, &mut want] {
        pool.origins.sort_by_key(|(a, _)| *a);
        pool.spare.sort();
    }
    assert_eq!(again, want);

    // A config change keeps the spares it still lists (and those the pool gave back);
    // a standby backend dropped from the config leaves the list.
    let mut fewer = config.clone();
    fewer.standby.retain(|s| s.addr != addr("10.1.0.4:80"));
    fewer.max = 2;
    restarted.reconfigure(fewer, &info);
    let spare = restarted.status(Some(&info)).standby;
    assert!(spare.contains(&addr("10.1.0.2:80")), "{spare:?}");
    assert!(!spare.contains(&addr("10.1.0.4:80")), "{spare:?}");
}

#[test]
fn a_backend_that_goes_down_is_made_up_for() {
    let mut rig = Rig::new(CONFIG);
    rig.load(5);
    rig.second(true);
    let b0 = addr("10.1.0.2:80");
    rig.balancer
        .update_backend(&rig.vip, b0, None, Some(BackendState::Down))
        .unwrap();
    rig.second(true);
    assert_eq!(
        rig.states(),
        [
            (b0, BackendState::Down),
            (addr("10.1.0.3:80"), BackendState::Up)
        ],
        "a standby backend replaces the one that is down"
    );
    // It comes back: one too many, so one drains once the scale-in window has passed.
    rig.balancer
        .update_backend(&rig.vip, b0, None, Some(BackendState::Up))
        .unwrap();
    rig.flows.clear();
    for _ in 0..10 {
        rig.second(true);
    }
    assert_eq!(rig.states().len(), 1, "{:?}", rig.states());
}

#[test]
fn an_unhealthy_standby_backend_is_given_up_after_the_provision_timeout() {
    let mut rig = Rig::new(CONFIG);
    rig.load(15);
    rig.second(false);
    let status = rig.scaler.status(None);
    assert_eq!(status.provisioning, [addr("10.1.0.3:80")]);
    assert_eq!(rig.states().len(), 1, "not added before it passes");
    for _ in 0..9 {
        rig.second(false);
    }
    rig.second(false);
    let status = rig.scaler.status(None);
    // Given up on 10.1.0.3 and moved on to 10.1.0.4 in the same tick.
    assert_eq!(status.provisioning, [addr("10.1.0.4:80")], "{status:?}");
    rig.second(true);
    assert!(rig.states().iter().any(|(a, _)| *a == addr("10.1.0.4:80")));
}

#[test]
fn dry_run_decides_but_changes_nothing() {
    let mut rig =
        Rig::new(&CONFIG.replace("policy = \"target\"", "policy = \"target\"\ndry-run = true"));
    rig.load(30);
    let jobs = rig.second(true);
    assert!(jobs.is_empty());
    assert_eq!(rig.states().len(), 1);
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    assert_eq!(status.desired, 3);
    assert_eq!(status.decisions[0].actions, ["would add 2"]);
    assert!(status.decisions[0].dry_run);
}

#[test]
fn hooks_provision_release_and_back_off() {
    let text = CONFIG
        .replace("standby = [\"10.1.0.3:80\", \"10.1.0.4:80\"]", "")
        .replace("max = 3", "max = 2")
        + "scale-up = [\"/bin/new\"]\nscale-down = [\"/bin/release\"]\n";
    let mut rig = Rig::new(&text);
    rig.load(15);
    let jobs = rig.second(true);
    assert!(matches!(&jobs[..], [Job::ScaleUp { argv, .. }] if argv == &["/bin/new"]));
    // Fails: retried after 1 s, then after 2 s.
    rig.hook_fails();
    assert_eq!(
        rig.scaler.status(None).scale_up_hook.retry_at_s,
        rig.now + 1
    );
    assert_eq!(rig.second(true).len(), 1, "retried");
    rig.hook_fails();
    assert_eq!(
        rig.scaler.status(None).scale_up_hook.retry_at_s,
        rig.now + 2
    );
    assert!(rig.second(true).is_empty(), "backing off");
    let jobs = rig.second(true);
    assert_eq!(jobs.len(), 1, "retried after the backoff");
    rig.hook_answers("10.1.0.9:80", &BTreeMap::new());
    rig.second(true);
    assert!(rig.states().iter().any(|(a, _)| *a == addr("10.1.0.9:80")));
    assert_eq!(rig.scaler.status(None).scale_up_hook.failures, 2);

    // Scale in: the hook backend (fewer flows) drains, leaves, and goes to scale-down.
    rig.flows = HashMap::from([(addr("10.1.0.2:80"), 3)]);
    let mut released = None;
    for _ in 0..10 {
        for job in rig.second(true) {
            if let Job::ScaleDown { addr, argv, .. } = job {
                assert_eq!(argv, ["/bin/release"]);
                released = Some(addr);
            }
        }
    }
    assert_eq!(released, Some(addr("10.1.0.9:80")));
    assert_eq!(rig.states(), [(addr("10.1.0.2:80"), BackendState::Up)]);
}

#[test]
fn hook_output_is_an_address() {
    let weighted = |a: &str, weight| WeightedBackend {
        addr: addr(a),
        weight,
    };
    assert_eq!(
        parse_hook_address("\n10.1.0.9:8080\n", 80),
        Ok(weighted("10.1.0.9:8080", 1))
    );
    assert_eq!(
        parse_hook_address("10.1.0.9", 80),
        Ok(weighted("10.1.0.9:80", 1))
    );
    assert_eq!(
        parse_hook_address("10.1.0.9:8080@3\n", 80),
        Ok(weighted("10.1.0.9:8080", 3))
    );
    // A port-less answer with a weight still takes the VIP's port.
    assert_eq!(
        parse_hook_address("10.1.0.9@2", 80),
        Ok(weighted("10.1.0.9:80", 2))
    );
    for (bad, why) in [
        (
            "10.1.0.9:80@20000",
            "weight 20000 is out of range 1..=10000",
        ),
        ("10.1.0.9:80@0", "weight 0 is out of range 1..=10000"),
        ("10.1.0.9:80@three", "weight \"three\" is not a number"),
        ("10.1.0.9:80@", "weight \"\" is not a number"),
    ] {
        let err = parse_hook_address(bad, 80).unwrap_err();
        assert_eq!(err, format!("printed {bad:?}: {why}"));
    }
    assert!(
        parse_hook_address("", 80)
            .unwrap_err()
            .contains("no address")
    );
    assert!(
        parse_hook_address("oops", 80)
            .unwrap_err()
            .contains("\"oops\"")
    );
    assert_eq!(backoff_s(1), 1);
    assert_eq!(backoff_s(3), 4);
    assert_eq!(backoff_s(40), MAX_BACKOFF_S);
}

#[tokio::test]
async fn hooks_run_with_a_timeout() {
    let vip: Vip = "198.19.0.1:80/tcp".parse().unwrap();
    let sh = |script: &str| vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let up = run_job(Job::ScaleUp {
        vip,
        argv: sh("echo \"$XDPLB_VIP\" >&2; echo 10.1.0.7:80"),
        timeout: Duration::from_secs(5),
    })
    .await;
    assert_eq!(
        up,
        JobResult::ScaleUp(Ok(WeightedBackend::new(addr("10.1.0.7:80"))))
    );
    let slow = run_job(Job::ScaleUp {
        vip,
        argv: sh("sleep 5"),
        timeout: Duration::from_millis(100),
    })
    .await;
    assert!(matches!(slow, JobResult::ScaleUp(Err(e)) if e.contains("timed out")));
    let down = run_job(Job::ScaleDown {
        vip,
        addr: addr("10.1.0.7:80"),
        argv: sh("test \"$0\" = 10.1.0.7:80 || { echo wrong: $0 >&2; exit 3; }"),
        timeout: Duration::from_secs(5),
    })
    .await;
    assert_eq!(
        down,
        JobResult::ScaleDown {
            addr: addr("10.1.0.7:80"),
            result: Ok(())
        }
    );
}

/// [`CONFIG`] with standby 10.1.0.3@3 and 10.1.0.4@1, room for 6 units, no tolerance band.
fn weighted_config() -> String {
    CONFIG
        .replace(
            "standby = [\"10.1.0.3:80\", \"10.1.0.4:80\"]",
            "standby = [\"10.1.0.3:80@3\", \"10.1.0.4:80@1\"]\ntolerance-percent = 0",
        )
        .replace("max = 3", "max = 6")
        .replace("max-step = 2", "max-step = 4")
}

#[test]
fn standby_backends_cover_the_gap_in_weight_and_scale_in_drains_only_what_fits() {
    let b2 = addr("10.1.0.2:80");
    let b3 = addr("10.1.0.3:80");
    let b4 = addr("10.1.0.4:80");
    let mut rig = Rig::new(&weighted_config());
    // 15 at 10 per unit: 2 units, a gap of 1: the weight-1 backend, though listed second.
    rig.load(15);
    rig.second(true);
    assert_eq!(
        rig.states(),
        [(b2, BackendState::Up), (b4, BackendState::Up)],
        "a gap of 1 takes the weight-1 backend"
    );
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    assert_eq!((status.desired, status.capacity), (2, 2));
    assert_eq!(status.weights[&b3], 3, "{status:?}");

    // 45: 5 units, a gap of 3: the weight-3 backend, which joins with its weight.
    rig.load(45);
    rig.second(true);
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    assert_eq!(
        (status.desired, status.capacity, status.serving_capacity),
        (5, 5, 5)
    );
    assert_eq!(status.serving, 3);
    let info = rig.balancer.vip(&rig.vip).unwrap();
    let weight = |a| {
        info.backends
            .iter()
            .find(|b| b.spec.addr == a)
            .unwrap()
            .spec
            .weight
    };
    assert_eq!((weight(b2), weight(b3), weight(b4)), (1, 3, 1));
    assert!(
        status.decisions[1].actions == ["bring in 10.1.0.3:80@3 (standby)"],
        "{status:?}"
    );

    // 25: 3 units, a surplus of 2. The weight-3 backend does not fit: the two of weight 1 go.
    rig.load(25);
    let fell = rig.now;
    while rig.scaler.status(None).draining.is_empty() {
        assert!(rig.now < fell + 10, "no scale-in: {:?}", rig.states());
        rig.second(true);
    }
    let mut draining = rig.scaler.status(None).draining;
    draining.sort();
    assert_eq!(draining, [b2, b4], "only what fits in the surplus drains");

    // 5: 1 unit wanted, 3 left in one backend of weight 3: none fits, the pool holds.
    rig.flows.clear();
    rig.load(5);
    for _ in 0..10 {
        rig.second(true);
    }
    assert_eq!(rig.states(), [(b3, BackendState::Up)], "{:?}", rig.states());
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    assert_eq!((status.desired, status.capacity), (1, 3));
    assert!(
        (status.decisions.last().unwrap().actions.iter())
            .any(|a| a == "hold: no backend fits a surplus of 2"),
        "{status:?}"
    );
    // The weight-1 backends are standby again, with their weights.
    let saved = rig.scaler.save();
    assert_eq!(saved.spare.len(), 2, "{saved:?}");
    assert!(saved.weights.is_empty(), "{saved:?}");
}

#[test]
fn spare_weights_survive_a_restart() {
    let rig = Rig::new(&weighted_config());
    let info = rig.balancer.vip(&rig.vip).unwrap();
    let mut saved = rig.scaler.save();
    assert_eq!(saved.weights, [(addr("10.1.0.3:80"), 3)]);
    // A backend of the config that was scaled in, with weight 4, is a spare too.
    saved.spare.push(addr("10.1.0.5:80"));
    saved.weights.push((addr("10.1.0.5:80"), 4));
    let mut restarted = VipAutoscaler::new(rig.vip, rig.scaler.config().clone(), &info);
    restarted.restore(&saved, &info, 100);
    assert_eq!(restarted.save(), saved);
    let status = restarted.status(Some(&info));
    assert_eq!(status.weights[&addr("10.1.0.5:80")], 4, "{status:?}");
    assert_eq!(status.weights[&addr("10.1.0.4:80")], 1, "{status:?}");
}

#[test]
fn scale_up_answers_of_another_vips_backend_or_this_pools_are_refused() {
    let text = CONFIG
        .replace("standby = [\"10.1.0.3:80\", \"10.1.0.4:80\"]", "")
        .replace("max = 3", "max = 6")
        .replace("max-step = 2", "max-step = 4")
        + "tolerance-percent = 0\nscale-up = [\"/bin/new\"]\n";
    let mut rig = Rig::new(&text);
    let other: Vip = "198.19.0.2:80/tcp".parse().unwrap();
    let claimed = BTreeMap::from([(addr("10.1.0.8:80"), other)]);
    rig.load(15);
    assert_eq!(rig.second(true).len(), 1, "one scale-up for a gap of 1");

    rig.hook_answers("10.1.0.8:80", &claimed);
    let status = rig.scaler.status(None);
    assert_eq!(status.scale_up_hook.failures, 1);
    assert_eq!(
        status.scale_up_hook.last_error.as_deref(),
        Some("scale-up answered 10.1.0.8:80, a backend of 198.19.0.2:80/tcp: refused")
    );
    assert!(status.provisioning.is_empty());

    // Backoff 1 s, then again; this time the VIP's own backend.
    assert_eq!(rig.second(true).len(), 1, "asked again");
    rig.hook_answers("10.1.0.2", &claimed);
    let status = rig.scaler.status(None);
    assert_eq!(status.scale_up_hook.failures, 2);
    assert!(
        (status.scale_up_hook.last_error.as_deref())
            .is_some_and(|e| e.contains("10.1.0.2:80, already in the pool: refused")),
        "{status:?}"
    );
    // A bad weight is a failure too.
    while rig.second(true).is_empty() {
        assert!(rig.now < 10, "not asked again");
    }
    rig.hook_answers("10.1.0.9:80@20000", &claimed);
    assert_eq!(rig.scaler.status(None).scale_up_hook.failures, 3);

    // Then a good answer, of weight 2: more than the gap, taken as it is.
    while rig.second(true).is_empty() {
        assert!(rig.now < 20, "not asked again");
    }
    rig.hook_answers("10.1.0.9:80@2", &claimed);
    rig.second(true);
    let info = rig.balancer.vip(&rig.vip).unwrap();
    let b9 = info
        .backends
        .iter()
        .find(|b| b.spec.addr == addr("10.1.0.9:80"));
    assert_eq!(b9.map(|b| b.spec.weight), Some(2), "{info:?}");
    let status = rig.scaler.status(Some(&info));
    assert_eq!((status.capacity, status.scale_up_hook.runs), (3, 4));

    // 45: 5 units, a gap of 2: one run, counted for the weight of the last answer.
    rig.load(45);
    let jobs = rig.second(true);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    assert_eq!(
        status.decisions.last().unwrap().actions,
        ["run scale-up x1"]
    );
    assert_eq!(status.capacity, 3 + 2, "a running scale-up counts for 2");
}

#[test]
fn a_schedule_window_brings_standby_in_before_it_opens_and_drains_them_after() {
    // The window opens at unix 1000 (tick 100 with the offset below), 20 s lead, 30 s long.
    let text = format!(
        "{CONFIG}[[vip.autoscale.schedule]]\nname = \"sale\"\nstart = \"1970-01-01T00:16:40Z\"\n\
         end = \"1970-01-01T00:17:10Z\"\nmin = 3\nlead = \"20s\"\n"
    );
    let mut rig = Rig::new(&text);
    rig.scaler.set_clock_offset(900);
    rig.load(2);
    while rig.now < 79 {
        rig.second(true);
    }
    assert_eq!(rig.states().len(), 1, "light load, before the lead");
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    let schedule = status.schedule.expect("a schedule status");
    assert!(schedule.active.is_empty());
    assert_eq!(schedule.next.as_ref().map(|o| o.start), Some(1000));
    assert_eq!((schedule.min, schedule.max), (1, 3));

    rig.second(true); // tick 80: unix 980, the window's start - lead.
    assert_eq!(rig.states().len(), 3, "{:?}", rig.states());
    assert!(rig.states().iter().all(|(_, s)| *s == BackendState::Up));
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    assert_eq!(status.decisions[0].reason, "schedule \"sale\": min 3");
    let schedule = status.schedule.expect("a schedule status");
    assert_eq!(schedule.min, 3);
    assert_eq!(schedule.active.len(), 1);
    assert_eq!(schedule.active[0].name, "sale");

    // Light load all through: they stay until the end (unix 1030, tick 130), then the
    // scale-in cooldown (5 s) runs, then they drain.
    rig.flows = HashMap::from([(addr("10.1.0.3:80"), 1)]);
    while rig.now < 129 {
        rig.second(true);
        assert_eq!(rig.states().len(), 3, "tick {}", rig.now);
    }
    let ended = rig.now + 1;
    while rig.states().iter().all(|(_, s)| *s == BackendState::Up) {
        assert!(rig.now < ended + 10, "no scale-in after the window");
        rig.second(true);
    }
    assert!(
        rig.now >= ended + 5,
        "the scale-in cooldown runs from the end"
    );
    // Drain first: the idle ones drain, then leave; the one with a flow stays.
    let draining: Vec<_> = (rig.states().into_iter())
        .filter(|(_, s)| *s == BackendState::Draining)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(draining, [addr("10.1.0.2:80"), addr("10.1.0.4:80")]);
    rig.second(true);
    assert_eq!(rig.states(), [(addr("10.1.0.3:80"), BackendState::Up)]);
    let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
    let schedule = status.schedule.expect("a schedule status");
    assert!(
        schedule.active.is_empty() && schedule.next.is_none(),
        "{schedule:?}"
    );
}
