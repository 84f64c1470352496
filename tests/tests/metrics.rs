//! The metrics and health views of a running agent: `/metrics` in the classic text format that
//! `promtool check metrics` passes and a real Prometheus keeps the types of, every metric the
//! Grafana dashboard queries present, and a backend's admin and operational states apart.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_tests::{
    agent::{Agent, BACKEND_PORT, BACKENDS, VIP, VIP_ADDR, backend_addr, sample, samples, serve},
    netns::{Netns, Topology, ident},
    traffic::spread,
};
use lb_user::{agent::Health, api::BackendView, balancer::BackendState};

/// Where the agent serves its metrics, in the gateway namespace.
const METRICS: &str = "127.0.0.1:9782";
/// Where the test's Prometheus listens, in the gateway namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";
/// Longest Prometheus may take to start, scrape and answer with the metadata.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// An agent balancing [`VIP`] over every backend, checked by tcp every 200 ms (fall 2, rise 2),
/// serving metrics on [`METRICS`].
fn start(topo: &Topology) -> Agent {
    let mut agent = Agent::new(topo);
    let mut config = format!(
        "[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n\n[vip.health]\nkind = \"tcp\"\n\
         interval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n"
    );
    for i in 0..BACKENDS {
        config += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend_addr(i));
    }
    let config = agent.file("xdplb.toml", &config);
    agent.start(&[
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--metrics",
        METRICS,
    ]);
    let started = Instant::now();
    for i in 0..BACKENDS {
        agent
            .wait_for_backend(backend_addr(i), started, Duration::from_secs(10), |b| {
                b.health == Health::Healthy && b.last_check_ok == Some(true)
            })
            .unwrap_or_else(|b| panic!("{} never checked healthy: {b:?}", ident(i)));
    }
    agent
}

/// `curl` in `ns`, bounded, with `args` before the URL; its standard output.
fn curl(ns: &Netns, args: &[&str], url: &str) -> String {
    let mut all = vec!["-sS", "--max-time", "5"];
    all.extend_from_slice(args);
    all.push(url);
    let out = ns
        .exec("curl", &all)
        .unwrap_or_else(|err| panic!("curl {url}: {err:#}"));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `promtool check metrics` of `text`: its exit status and everything it printed.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool");
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), printed)
}

/// The metric names the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/xdplb.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, exprs: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => exprs.push(e.clone()),
                        _ => walk(v, exprs),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "queries in the dashboard: {exprs:?}");
    let mut names = BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("xdplb_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

/// A Prometheus server in a namespace, killed when dropped.
struct Prometheus(Child, PathBuf);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prometheus in `ns`, scraping [`METRICS`] every second, its files in `dir`.
fn prometheus(ns: &Netns, dir: PathBuf) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: \
             xdplb\n    static_configs:\n      - targets: [\"{METRICS}\"]\n"
        ),
    )
    .expect("prometheus.yml");
    let child = ns
        .command("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prometheus-data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("prometheus.log")).expect("log file"),
        ))
        .spawn()
        .expect("prometheus (apt install prometheus)");
    Prometheus(child, dir)
}

/// `/metrics` is classic Prometheus text with its content type, `promtool check metrics`
/// reports nothing, the new families are there with units in their names, every metric the
/// Grafana dashboard queries is present, and a real Prometheus scraping the agent keeps each
/// metric's type.
#[test]
#[ignore = "needs root"]
fn metrics_pass_promtool_and_keep_their_types_in_prometheus() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let agent = start(&topo);
    let tally = spread(&topo.client, VIP_ADDR, 30, "m");
    assert_eq!(tally.values().sum::<usize>(), 30, "{tally:?}");

    let url = format!("http://{METRICS}/metrics");
    let content_type = curl(
        &topo.gateway,
        &["-o", "/dev/null", "-w", "%{content_type}"],
        &url,
    );
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    // The tables are counted every second: until the count after the connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = curl(&topo.gateway, &[], &url);
        if sample(&text, "xdplb_table_used_entries", "table=\"conntrack\"")
            .is_some_and(|n| n >= 1.0)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no tracked flow counted:\n{text}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    let (ok, printed) = promtool_check(&text);
    assert!(
        ok && printed.trim().is_empty(),
        "promtool: {printed}\n{text}"
    );

    let vip = format!("vip=\"{VIP}\"");
    let flows = sample(&text, "xdplb_vip_new_flows_total", &vip).unwrap_or_default();
    assert!(
        flows >= 30.0,
        "{flows} new flows after 30 connections\n{text}"
    );
    assert!(
        sample(&text, "xdplb_table_capacity_entries", "table=\"conntrack\"")
            .is_some_and(|c| c > 0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "xdplb_conntrack_lost_state_packets_total", ""),
        Some(0.0),
        "{text}"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for i in 0..BACKENDS {
        let labels = format!("{vip},backend=\"{}\"", backend_addr(i));
        assert_eq!(
            sample(&text, "xdplb_backend_last_check_success", &labels),
            Some(1.0),
            "{text}"
        );
        let at = sample(&text, "xdplb_backend_last_check_timestamp_seconds", &labels)
            .unwrap_or_else(|| panic!("no last check time for {labels}\n{text}"));
        assert!((now - at).abs() < 10.0, "last check at {at}, now {now}");
    }

    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| samples(&text, name).is_empty())
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the agent does not serve: {missing:?}\n{text}"
    );

    let prometheus = prometheus(&topo.gateway, agent.dir.clone());
    let expected = [
        ("xdplb_vip_new_flows_total", "counter"),
        ("xdplb_packets_total", "counter"),
        ("xdplb_conntrack_lost_state_packets_total", "counter"),
        ("xdplb_table_capacity_entries", "gauge"),
        ("xdplb_table_used_entries", "gauge"),
        ("xdplb_backend_last_check_success", "gauge"),
        ("xdplb_backend_last_check_timestamp_seconds", "gauge"),
        ("xdplb_backend_admin_state", "gauge"),
    ];
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let metadata = loop {
        // Refused until Prometheus listens.
        let answer = topo
            .gateway
            .exec(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "5",
                    &format!("http://{PROMETHEUS}/api/v1/metadata"),
                ],
            )
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_else(|err| format!("{err:#}"));
        let json: Option<serde_json::Value> = serde_json::from_str(&answer).ok();
        if let Some(data) = json.as_ref().and_then(|j| j.get("data"))
            && expected.iter().all(|(name, _)| data.get(name).is_some())
        {
            break data.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus had not the metadata after {PROMETHEUS_TIMEOUT:?}: {answer}\n{}",
            std::fs::read_to_string(prometheus.1.join("prometheus.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(500));
    };
    for (name, kind) in expected {
        let got = metadata[name][0]["type"].as_str();
        assert_eq!(got, Some(kind), "{name}: {}", metadata[name]);
    }
    drop(prometheus);
    drop(agent);
}

/// A backend whose server stopped is failing (with the error and when) while its admin state
/// stays as the operator set it; a drain set meanwhile shows as both draining and failing, in
/// the JSON, the table and the metrics; when the server is back, the backend is healthy and
/// still draining.
#[test]
#[ignore = "needs root"]
fn health_shows_the_admin_and_the_operational_state_apart() {
    const VICTIM: usize = 1;
    let topo = Topology::new(BACKENDS).expect("topology");
    let mut servers = serve(&topo);
    let agent = start(&topo);
    let victim = backend_addr(VICTIM);
    let stopped = Instant::now();
    servers[VICTIM] = None;
    let view = |b: &BackendView| b.health == Health::Failing && b.state == BackendState::Down;
    agent
        .wait_for_backend(victim, stopped, Duration::from_secs(10), view)
        .unwrap_or_else(|b| panic!("{victim} not failing 10 s after its server stopped: {b:?}"));
    agent.ok(&["backend", "drain", VIP, &victim.to_string()]);

    let b = agent.backends()[&victim.to_string()].clone();
    assert_eq!(b.admin_state, Some(BackendState::Draining), "{b:?}");
    assert_eq!(b.state, BackendState::Down, "{b:?}");
    assert_eq!(b.health, Health::Failing, "{b:?}");
    assert_eq!(b.last_check_ok, Some(false), "{b:?}");
    let error = b.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("connection refused"), "{b:?}");
    let failed_at = b.last_error_at.expect("when it failed");
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
        - stopped.elapsed().as_secs_f64();
    assert!(failed_at >= started_at - 1.0, "{b:?}");
    let listed: serde_json::Value = agent.json(&["backend", "list", VIP]);
    let listed = listed
        .as_array()
        .and_then(|all| all.iter().find(|b| b["address"] == victim.to_string()))
        .unwrap_or_else(|| panic!("{victim} not in {listed}"));
    for (field, value) in [
        ("admin_state", "draining"),
        ("health", "failing"),
        ("state", "down"),
    ] {
        assert_eq!(listed[field], value, "{listed}");
    }
    let table = agent.ok(&["backend", "list", VIP]);
    let line = table
        .lines()
        .find(|l| l.contains(&victim.to_string()))
        .unwrap_or_else(|| panic!("{victim} not in {table}"));
    assert!(
        line.contains("admin draining") && line.contains("health failing (connection refused"),
        "{line}"
    );
    let others = table.lines().filter(|l| l.contains("admin up  ")).count();
    assert_eq!(others, BACKENDS - 1, "{table}");

    let text = curl(&topo.gateway, &[], &format!("http://{METRICS}/metrics"));
    let labels = format!("vip=\"{VIP}\",backend=\"{victim}\"");
    for (name, state, value) in [
        ("xdplb_backend_admin_state", "draining", 1.0),
        ("xdplb_backend_admin_state", "up", 0.0),
        ("xdplb_backend_admin_state", "down", 0.0),
        ("xdplb_backend_health_state", "failing", 1.0),
        ("xdplb_backend_health_state", "healthy", 0.0),
    ] {
        assert_eq!(
            sample(&text, name, &format!("{labels},state=\"{state}\"")),
            Some(value),
            "{name} {state}\n{text}"
        );
    }
    assert_eq!(
        sample(&text, "xdplb_backend_last_check_success", &labels),
        Some(0.0),
        "{text}"
    );

    let restarted = Instant::now();
    servers[VICTIM] = Some(topo.backends[VICTIM].tcp_server(BACKEND_PORT, &ident(VICTIM)));
    let b = agent
        .wait_for_backend(victim, restarted, Duration::from_secs(10), |b| {
            b.health == Health::Healthy
        })
        .map(|_| agent.backends()[&victim.to_string()].clone())
        .unwrap_or_else(|b| panic!("{victim} not healthy 10 s after its server restarted: {b:?}"));
    assert_eq!(b.state, BackendState::Draining, "{b:?}");
    assert_eq!(b.admin_state, Some(BackendState::Draining), "{b:?}");
    assert_eq!(b.last_check_ok, Some(true), "{b:?}");
    assert!(
        b.last_error
            .as_deref()
            .is_some_and(|e| e.contains("connection refused")),
        "the last error is kept after recovery: {b:?}"
    );
}

/// `vip set --health …` changes a running VIP's check, as the README shows it: an http check
/// the line servers cannot pass makes every backend fail with the reason, `vip show` gives the
/// check, a tcp check brings them back; bad settings are refused naming their field, and
/// change nothing.
#[test]
#[ignore = "needs root"]
fn vip_set_changes_the_health_check() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let agent = start(&topo);

    // The README's command.
    agent.ok(&[
        "vip",
        "set",
        VIP,
        "--health",
        "http",
        "--health-uri",
        "/healthz",
        "--health-interval",
        "2s",
    ]);
    let shown = agent.ok(&["vip", "show", VIP]);
    assert!(
        shown.contains("health: kind http,")
            && shown.contains("http-path /healthz")
            && shown.contains("interval 2s"),
        "{shown}"
    );
    let vip: serde_json::Value = agent.json(&["vip", "show", VIP]);
    assert_eq!(vip["health_check"]["kind"], "http", "{vip}");
    assert_eq!(vip["health_check"]["http-path"], "/healthz", "{vip}");
    // Fall 2 at 2 s: down within about 4 s.
    let changed = Instant::now();
    for i in 0..BACKENDS {
        agent
            .wait_for_backend(backend_addr(i), changed, Duration::from_secs(15), |b| {
                b.health == Health::Failing
                    && b.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("bad status line"))
            })
            .unwrap_or_else(|b| panic!("{} not failing the http check: {b:?}", ident(i)));
    }

    for (args, field) in [
        (&["--health-interval", "2x"][..], "health.interval"),
        (
            &["--health", "tcp", "--health-uri", "/x"][..],
            "health.http-path",
        ),
        (&["--health-rise", "0"][..], "health.rise"),
        (&["--health-timeout", "5s"][..], "health.timeout"),
    ] {
        let mut all = vec!["vip", "set", VIP];
        all.extend_from_slice(args);
        let out = agent.cli(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
    }
    let vip: serde_json::Value = agent.json(&["vip", "show", VIP]);
    assert_eq!(
        vip["health_check"]["kind"], "http",
        "refused, yet changed: {vip}"
    );

    agent.ok(&[
        "vip",
        "set",
        VIP,
        "--health",
        "tcp",
        "--health-interval",
        "200ms",
    ]);
    let changed = Instant::now();
    for i in 0..BACKENDS {
        agent
            .wait_for_backend(backend_addr(i), changed, Duration::from_secs(10), |b| {
                b.health == Health::Healthy && b.state == BackendState::Up
            })
            .unwrap_or_else(|b| panic!("{} not back with a tcp check: {b:?}", ident(i)));
    }
    let vip: serde_json::Value = agent.json(&["vip", "show", VIP]);
    assert_eq!(vip["health_check"]["kind"], "tcp", "{vip}");
    assert!(vip["health_check"].get("http-path").is_none(), "{vip}");
}
