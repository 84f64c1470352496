//! Cluster mode end to end: three gateways (each an agent in its own topology, with its own
//! client and its own copies of the 3 backends) share one config in etcd, which runs in a
//! namespace of its own linked to each gateway. A change through one gateway's CLI reaches the
//! others within a second; concurrent changes through two gateways both survive; one gateway
//! runs the autoscaler of an autoscaled VIP, and another takes over when it is killed; with
//! etcd stopped traffic flows, `status` says so and changes are refused; with etcd back the
//! gateways converge again.

use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{
        Agent, VIP, VIP_ADDR, backend_addr, configuration, offload_off, sample, scrape_metrics,
        serve,
    },
    netns::{NS_PREFIX, Netns, Topology, ident_of, run_bounded, run_ok, tcp_request},
};
use lb_user::{agent::cluster::ClusterView, api::StatusView};

const GATEWAYS: usize = 3;
/// Where each agent serves its metrics, inside its gateway namespace.
const METRICS: &str = "127.0.0.1:9100";
/// The autoscaled VIP.
const VIP2: &str = "198.19.0.2:80/tcp";
/// The lease TTL of the agents' keys.
const TTL: Duration = lb_user::agent::cluster::LEASE_TTL;

/// etcd's address on its link to gateway `i`.
fn etcd_addr(i: usize) -> String {
    format!("10.250.{i}.1")
}

/// The namespace etcd runs in, with a link to every gateway; etcd itself while it runs.
struct Etcd {
    ns: String,
    data: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
}

impl Etcd {
    fn new(gateways: &[&Netns]) -> Self {
        let ns = format!("{NS_PREFIX}{}-etcd", std::process::id());
        let data = std::env::temp_dir().join(format!("xdplb-etcd-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&data);
        let etcd = Self {
            log: data.with_extension("log"),
            ns: ns.clone(),
            data,
            daemon: None,
        };
        let ip = |args: &[&str]| {
            run_ok(Command::new("ip").args(args))
                .unwrap_or_else(|err| panic!("ip {args:?}: {err:#}"))
        };
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        for (i, gw) in gateways.iter().enumerate() {
            let ours = format!("et{i}");
            ip(&[
                "-n", &ns, "link", "add", &ours, "type", "veth", "peer", "name", "etcd0", "netns",
                &gw.name,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", etcd_addr(i)),
                "dev",
                &ours,
            ]);
            ip(&[
                "-n",
                &gw.name,
                "addr",
                "add",
                &format!("10.250.{i}.2/24"),
                "dev",
                "etcd0",
            ]);
            ip(&["-n", &ns, "link", "set", &ours, "up"]);
            ip(&["-n", &gw.name, "link", "set", "etcd0", "up"]);
        }
        etcd
    }

    fn client_urls() -> String {
        (0..GATEWAYS)
            .map(|i| format!("http://{}:2379", etcd_addr(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts etcd (on the data kept from a previous start, if any) and waits until it answers.
    fn start(&mut self) {
        assert!(self.daemon.is_none());
        let log = fs::File::create(&self.log).expect("etcd log");
        let daemon = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &Self::client_urls()])
            .args([
                "--advertise-client-urls",
                &format!("http://{}:2379", etcd_addr(0)),
            ])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "test=http://127.0.0.1:2380"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = run_bounded(
                Command::new("nsenter")
                    .arg(format!("--net=/var/run/netns/{}", self.ns))
                    .args([
                        "etcdctl",
                        "--endpoints",
                        &Self::client_urls(),
                        "--command-timeout=1s",
                        "endpoint",
                        "health",
                    ]),
                Duration::from_secs(5),
            );
            if health.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 30 s:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = fs::remove_dir_all(&self.data);
        let _ = fs::remove_file(&self.log);
    }
}

fn config(i: usize) -> String {
    format!(
        r#"[cluster]
etcd-endpoints = ["http://{etcd}:2379"]
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
drain-timeout = "60s"
standby = ["{b1}", "{b2}"]
"#,
        etcd = etcd_addr(i),
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

/// The configuration of every VIP as `vip list -o json` shows it: scheduler, ring size,
/// backends with weights and states, and the digest of its lookup table (slot by slot, the
/// backends' addresses). Backend ids are each agent's own (a gateway restarted gives the
/// backends added meanwhile other ids), so they are left out; the digests do not depend on
/// them.
fn tables(agent: &Agent) -> Vec<String> {
    let vips = agent.vips();
    let mut lines: Vec<String> = configuration(&vips)
        .into_iter()
        .map(|line| {
            line.split(", ")
                .map(|part| part.split(" id ").next().unwrap_or(part))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    for v in &vips {
        let digest = v
            .table_digest
            .as_deref()
            .unwrap_or_else(|| panic!("{} ({:?}) shows no table digest", v.vip, v.scheduler));
        lines.push(format!("{} table {digest}", v.vip));
    }
    lines
}

fn backends_of(agent: &Agent, vip: &str) -> BTreeSet<String> {
    agent
        .vips()
        .into_iter()
        .filter(|v| format!("{}/{}", v.address, v.protocol) == vip)
        .flat_map(|v| v.backends.into_iter().map(|b| b.address.to_string()))
        .collect()
}

/// Polls `done` every 20 ms until it holds or `limit` passed since `since`; returns how long
/// it took, or panics with `what`.
fn wait(what: &str, since: Instant, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    loop {
        if done() {
            // When the check ended: a check that starts in time but ends late does not count.
            let took = since.elapsed();
            assert!(
                took <= limit,
                "{what}: only after {took:?}, not within {limit:?}"
            );
            return took;
        }
        assert!(since.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
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
    agents[killed].start(&[
        "--config",
        files[killed].to_str().expect("UTF-8"),
        "--metrics",
        METRICS,
    ]);
    wait(
        "the restarted gateway caught up",
        Instant::now(),
        Duration::from_secs(10),
        || backends_of(&agents[killed], VIP2).len() == 3,
    );

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

/// Waits (3 s from `since`) until every gateway shows the same [`tables`].
fn same_tables(agents: &[Agent], what: &str, since: Instant) {
    loop {
        let all: Vec<Vec<String>> = agents.iter().map(tables).collect();
        if all.iter().all(|t| *t == all[0]) {
            eprintln!("identical tables {what} after {:?}", since.elapsed());
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(3),
            "tables differ {what}: {all:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
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
