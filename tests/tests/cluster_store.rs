//! Cluster mode end to end: three gateways (each an agent in its own topology, with its own
//! client and its own copies of the 3 backends) share one config in etcd, which runs in a
//! namespace of its own linked to each gateway ([`lb_tests::cluster::Etcd`]). A change through
//! one gateway's CLI reaches the others within a second; concurrent changes through two
//! gateways both survive; one gateway runs the autoscaler of an autoscaled VIP, and another
//! takes over when it is killed (within the lease's TTL) or stopped (at once); with etcd
//! stopped traffic flows, `status` says so and changes are refused; with etcd back the gateways
//! converge again. The same store behind ECMP and BGP,
//! with one backend set for all three gateways, is in `cluster.rs`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Child,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{
        Agent, VIP, VIP_ADDR, backend_addr, backends_of, offload_off, same_tables, sample,
        scrape_metrics, serve, wait_until as wait,
    },
    cluster::Etcd,
    netns::{Topology, ident_of, tcp_request},
};
use lb_user::{agent::cluster::ClusterView, api::StatusView};

const GATEWAYS: usize = 3;
/// Where each agent serves its metrics, inside its gateway namespace.
const METRICS: &str = "127.0.0.1:9100";
/// The autoscaled VIP.
const VIP2: &str = "198.19.0.2:80/tcp";
/// The lease TTL of the agents' keys.
const TTL: Duration = lb_user::agent::cluster::LEASE_TTL;

fn config(i: usize) -> String {
    format!(
        r#"[cluster]
etcd-endpoints = ["{etcd}"]
etcd-prefix = "/xdplb-test/"
gateway-name = "gw{i}"

[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[[vip.backend]]
address = "{b0}"
[[vip.backend]]
address = "{b1}"

[[vip]]
address = "198.19.0.2:80"
protocol = "tcp"
[vip.health]
kind = "tcp"
interval = "200ms"
timeout = "100ms"
rise = 1
fall = 2
[[vip.backend]]
address = "{b0}"
[vip.autoscale]
policy = "target"
target-per-backend = 4
min = {{MIN}}
max = 3
scale-out-cooldown = "0s"
scale-in-cooldown = "3s"
metric-window = "1s"
scale-in-window = "3s"
tolerance-percent = 0
drain-timeout = "60s"
standby = ["{b1}", "{b2}"]
"#,
        etcd = Etcd::endpoint(i),
        b0 = backend_addr(0),
        b1 = backend_addr(1),
        b2 = backend_addr(2),
    )
}

/// Gateway `i`'s config file: `min` backends for the autoscaled VIP; with `b2`, backend 2 in
/// the first VIP too.
fn config_with_min(i: usize, min: u32, b2: bool) -> String {
    let mut text = config(i).replace("{MIN}", &min.to_string());
    if b2 {
        let b1 = format!("address = \"{}\"\n", backend_addr(1));
        text = text.replacen(
            &b1,
            &format!("{b1}[[vip.backend]]\naddress = \"{}\"\n", backend_addr(2)),
            1,
        );
    }
    text
}

fn cluster(agent: &Agent) -> ClusterView {
    agent.json(&["cluster", "status"])
}

fn leader(agent: &Agent) -> Option<String> {
    cluster(agent)
        .leaders
        .into_iter()
        .find(|l| l.vip == VIP2)
        .map(|l| l.gateway)
}

/// Starts a gateway that was stopped or killed again, with its file, and waits (bounded) until
/// it has caught up with the store: the autoscaled pool at 3.
fn rejoin(agent: &mut Agent, file: &Path) {
    agent.start(&[
        "--config",
        file.to_str().expect("UTF-8"),
        "--metrics",
        METRICS,
    ]);
    wait(
        "the gateway caught up",
        Instant::now(),
        Duration::from_secs(10),
        || backends_of(agent, VIP2).len() == 3,
    );
}

#[test]
#[ignore = "needs root"]
fn gateways_share_one_pool_in_etcd() {
    let topos: Vec<Topology> = (0..GATEWAYS)
        .map(|_| Topology::new(3).expect("topology"))
        .collect();
    let _servers: Vec<_> = topos
        .iter()
        .map(|t| {
            offload_off(t);
            serve(t)
        })
        .collect();
    let mut etcd = Etcd::new(&topos.iter().map(|t| &t.gateway).collect::<Vec<_>>());
    etcd.start();
    let mut agents: Vec<Agent> = topos.iter().map(Agent::new).collect();
    let files: Vec<PathBuf> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| a.file("cluster.toml", &config_with_min(i, 2, false)))
        .collect();
    for (agent, file) in agents.iter_mut().zip(&files) {
        agent.start(&[
            "--config",
            file.to_str().expect("UTF-8"),
            "--metrics",
            METRICS,
        ]);
    }
    // Every gateway runs what the store holds: the first one's file seeded it.
    let t0 = Instant::now();
    wait(
        "the seeded config on every gateway",
        t0,
        Duration::from_secs(10),
        || agents.iter().all(|a| backends_of(a, VIP).len() == 2),
    );

    // A backend added through gateway 0 is on every gateway within a second, identically.
    let b2 = backend_addr(2).to_string();
    let t = Instant::now();
    agents[0].ok(&["backend", "add", VIP, &b2]);
    let answered = Instant::now();
    eprintln!("backend add on gw0 answered after {:?}", t.elapsed());
    assert!(
        backends_of(&agents[0], VIP).contains(&b2),
        "answered once applied here"
    );
    // Within a second of the answer (the change is in the store then): on a loaded machine
    // the add itself, which rebuilds tables here, takes a good part of a second.
    let took = wait(
        "the added backend everywhere",
        answered,
        Duration::from_secs(1),
        || agents.iter().all(|a| backends_of(a, VIP).contains(&b2)),
    );
    eprintln!(
        "a backend added on gw0 was on all {GATEWAYS} gateways {took:?} after the answer, \
         {:?} after the command started",
        t.elapsed()
    );
    same_tables(&agents, "after a backend add", t);

    // Two gateways add different backends at once: both survive.
    let extra = ["10.0.9.2:8080", "10.0.9.3:8080"];
    let adds: Vec<Child> = (1..=2)
        .map(|i| agents[i].spawn_cli(&["backend", "add", VIP, extra[i - 1], "--weight", "0"]))
        .collect();
    for mut add in adds {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = add.try_wait().expect("waiting for the CLI") {
                break status;
            }
            assert!(Instant::now() < deadline, "a concurrent add did not finish");
            thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "a concurrent add failed");
    }
    wait(
        "both concurrent adds everywhere",
        Instant::now(),
        Duration::from_secs(2),
        || {
            agents
                .iter()
                .all(|a| extra.iter().all(|e| backends_of(a, VIP).contains(*e)))
        },
    );
    for e in extra {
        agents[0].ok(&["backend", "del", VIP, e]);
    }

    // `cluster status`: the three gateways, each at the same revision.
    let view = wait_for_view(&agents[0], |v| {
        v.gateways.len() == GATEWAYS
            && v.gateways
                .iter()
                .all(|g| g.applied_revision == v.config_revision)
    });
    let names: BTreeSet<_> = view.gateways.iter().map(|g| g.name.clone()).collect();
    assert_eq!(names, (0..GATEWAYS).map(|i| format!("gw{i}")).collect());

    // The autoscaler's leader brought the pool to min = 2 from the standby list, everywhere.
    wait(
        "the autoscaled pool at min = 2 everywhere",
        Instant::now(),
        Duration::from_secs(15),
        || agents.iter().all(|a| backends_of(a, VIP2).len() == 2),
    );
    let first = wait_for(&agents[0], "a leader", |l| l.is_some()).expect("a leader");
    let killed: usize = first.trim_start_matches("gw").parse().expect("gwN");
    let other = (killed + 1) % GATEWAYS;
    let mut daemon = agents[killed].daemon.take().expect("running");
    daemon.kill().expect("SIGKILL");
    let _ = daemon.wait();
    let t = Instant::now();
    let took = wait("another leader", t, TTL + Duration::from_secs(1), || {
        leader(&agents[other]).is_some_and(|l| l != first)
    });
    let second = leader(&agents[other]).expect("a leader");
    eprintln!("{first} killed: {second} leads after {took:?}");
    // The new leader manages the pool: min = 3 brings in the last standby backend.
    let file = agents[other].file("min3.toml", &config_with_min(other, 3, true));
    agents[other].ok(&["apply", "-f", file.to_str().expect("UTF-8")]);
    wait(
        "the pool at min = 3",
        Instant::now(),
        Duration::from_secs(15),
        || {
            (0..GATEWAYS)
                .filter(|i| *i != killed)
                .all(|i| backends_of(&agents[i], VIP2).len() == 3)
        },
    );
    // The killed gateway comes back and catches up.
    rejoin(&mut agents[killed], &files[killed]);
    // A leader stopped with `xdplb stop` gives up its lease: another gateway leads at once, not
    // when the lease would have expired.
    let stopped: usize = second.trim_start_matches("gw").parse().expect("gwN");
    let watcher = (stopped + 1) % GATEWAYS;
    let t = Instant::now();
    agents[stopped].stop(false);
    let took = wait("a leader after a stop", t, TTL / 2, || {
        leader(&agents[watcher]).is_some_and(|l| l != second)
    });
    assert!(
        agents[stopped].log().contains("gave up the cluster lease"),
        "{}",
        agents[stopped].log()
    );
    eprintln!(
        "{second} stopped: {} leads after {took:?}",
        leader(&agents[watcher]).expect("a leader")
    );
    rejoin(&mut agents[stopped], &files[stopped]);

    // etcd stops: traffic flows, `status` says so, changes are refused.
    etcd.stop();
    let status: StatusView = agents[1].json(&["status"]);
    assert!(status.store.is_some());
    wait(
        "status: store unreachable",
        Instant::now(),
        Duration::from_secs(5),
        || {
            agents.iter().all(|a| {
                let status: StatusView = a.json(&["status"]);
                status
                    .store
                    .is_some_and(|s| !s.up && s.unreachable_since.is_some())
            })
        },
    );
    let metrics = scrape_metrics(&topos[1].gateway, METRICS);
    assert_eq!(
        sample(&metrics, "xdplb_cluster_store_up", ""),
        Some(0.0),
        "{metrics}"
    );
    let text = agents[1].ok(&["status"]);
    assert!(text.contains("unreachable since"), "{text}");
    let answer = topos[1]
        .client
        .run(|| tcp_request(VIP_ADDR, "hello"))
        .expect("a TCP exchange through the VIP with etcd down");
    assert!(ident_of(&answer, "hello").is_some(), "{answer}");
    let refused = agents[1].cli(&["backend", "set", VIP, &b2, "--weight", "5"]);
    assert!(!refused.status.success(), "a change with etcd down");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("unreachable"), "{message}");

    // etcd is back: the gateways resync, and a change reaches all three within seconds.
    etcd.start();
    wait(
        "store up again everywhere",
        Instant::now(),
        Duration::from_secs(10),
        || {
            agents.iter().all(|a| {
                let status: StatusView = a.json(&["status"]);
                status.store.is_some_and(|s| s.up)
            })
        },
    );
    let metrics = scrape_metrics(&topos[1].gateway, METRICS);
    assert_eq!(
        sample(&metrics, "xdplb_cluster_store_up", ""),
        Some(1.0),
        "{metrics}"
    );
    let status: StatusView = agents[1].json(&["status"]);
    assert_eq!(
        sample(&metrics, "xdplb_cluster_applied_revision", ""),
        status.store.map(|s| s.applied_revision as f64),
        "{metrics}"
    );
    let t = Instant::now();
    agents[2].ok(&["backend", "set", VIP, &b2, "--weight", "5"]);
    wait(
        "a change after etcd came back, everywhere",
        t,
        Duration::from_secs(3),
        || {
            agents.iter().all(|a| {
                a.vips()
                    .iter()
                    .flat_map(|v| &v.backends)
                    .any(|b| b.address.to_string() == b2 && b.weight == 5)
            })
        },
    );
    same_tables(&agents, "after etcd's return", t);
}

fn wait_for_view(agent: &Agent, done: impl Fn(&ClusterView) -> bool) -> ClusterView {
    let t = Instant::now();
    loop {
        let view = cluster(agent);
        if done(&view) {
            return view;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "cluster status: {view:#?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(agent: &Agent, what: &str, done: impl Fn(&Option<String>) -> bool) -> Option<String> {
    let t = Instant::now();
    loop {
        let l = leader(agent);
        if done(&l) {
            return l;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: {:#?}",
            cluster(agent)
        );
        thread::sleep(Duration::from_millis(50));
    }
}
