//! The agent's CLI and API, end to end: `xdplb run` in the gateway namespace of a topology
//! (client, gateway, three backends answering as `b0`, `b1`, `b2` on port 8080), driven by
//! `xdplb` commands and by `curl` on its API socket, with real TCP connections through the VIP
//! 198.19.0.1:80/tcp: VIPs and backends added, `apply` with its plan, bad input refused, and
//! `/metrics` and `/v1/status`.
//!
//! The agent's other tests, by theme: `backends.rs` (health checks, drains), `lifecycle.rs`,
//! `outages.rs`, `autoscale.rs`. Each test has its own topology and
//! [`Agent`](lb_tests::agent::Agent) guard (its own socket, pin dir and state file), which
//! cleans up also when the test fails. Every wait has a deadline.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use lb_common::Counter;
use lb_tests::{
    agent::{
        Agent, BACKENDS, CLI_TIMEOUT, START_TIMEOUT, VIP, VIP_ADDR, backend_addr, bin,
        configuration, sample, samples, scrape_metrics, serve, strs, vip_args,
    },
    netns::{GW_CLIENT_IF, Topology, ident, run_bounded},
    traffic::{Tally, hold, spread},
};
use lb_user::{
    api::{StatusView, VipView},
    balancer::BackendState,
};

/// An agent started with no VIPs takes a VIP and three backends from the CLI; connections
/// through the VIP reach all three; `vip list`, `backend list -o json` and `status` show it.
#[test]
#[ignore = "needs root"]
fn cli_drives_a_running_agent() {
    const FLOWS: usize = 60;
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&[]);
    assert_eq!(agent.vips(), Vec::new());

    let added = agent.ok(&["vip", "add", VIP, "--scheduler", "maglev"]);
    assert!(added.contains(VIP), "{added}");
    for i in 0..BACKENDS {
        let addr = backend_addr(i).to_string();
        let shown = agent.ok(&["backend", "add", VIP, &addr]);
        assert!(shown.contains(&addr), "{shown}");
    }

    let tally = spread(&topo.client, VIP_ADDR, FLOWS, "cli");
    eprintln!("{FLOWS} connections through {VIP}: {tally:?}");
    assert_eq!(tally.values().sum::<usize>(), FLOWS);
    for i in 0..BACKENDS {
        assert!(
            tally.get(&ident(i)).is_some_and(|&n| n > 0),
            "{} answered none of {FLOWS} connections: {tally:?}",
            ident(i)
        );
    }

    let list = agent.ok(&["vip", "list"]);
    assert!(
        list.lines()
            .any(|l| l.contains(VIP) && l.contains("maglev")),
        "{list}"
    );
    let vips = agent.vips();
    assert_eq!(vips.len(), 1, "{vips:?}");
    assert_eq!(vips[0].new_flows, FLOWS as u64);

    let backends = agent.backends();
    assert_eq!(backends.len(), BACKENDS, "{backends:?}");
    for i in 0..BACKENDS {
        let b = &backends[&backend_addr(i).to_string()];
        assert_eq!(b.weight, 1, "{b:?}");
        assert_eq!(b.state, BackendState::Up, "{b:?}");
        assert_eq!(b.healthy, None, "no health check: {b:?}");
        assert_eq!(
            b.new_flows,
            tally[&ident(i)] as u64,
            "new flows of {}: {b:?}",
            ident(i)
        );
    }

    let status = agent.ok(&["status"]);
    let ifaces = status
        .lines()
        .find_map(|l| l.strip_prefix("interfaces"))
        .unwrap_or_else(|| panic!("no interfaces in {status}"));
    let mut listed: Vec<&str> = ifaces.split_whitespace().collect();
    listed.sort_unstable();
    let mut expected = topo.gateway_ifaces();
    expected.sort_unstable();
    assert_eq!(listed, expected, "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["VIPs", "1"])),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["backends", "3"])),
        "{status}"
    );

    agent.stop(true);
    assert!(!topo.xdp_attached(GW_CLIENT_IF));
    assert!(!agent.pin_dir.exists());
}

/// `apply -f --dry-run` prints the plan and changes nothing; `apply -f` applies it; applying
/// the same file again changes nothing.
#[test]
#[ignore = "needs root"]
fn apply_file_prints_the_plan_and_applies_it() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let [b0, b1, b2] = [0, 1, 2].map(backend_addr);
    let [u0, u1] = [0, 1].map(|i| SocketAddr::new(backend_addr(i).ip(), 5353));
    let config_a = agent.file(
        "a.toml",
        &format!(
            "[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n\n\
             [[vip.backend]]\naddress = \"{b0}\"\n\n[[vip.backend]]\naddress = \"{b1}\"\n"
        ),
    );
    let config_b = agent.file(
        "b.toml",
        &format!(
            "[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n\
             scheduler = \"weighted-round-robin\"\n\n\
             [[vip.backend]]\naddress = \"{b0}\"\nweight = 3\n\n\
             [[vip.backend]]\naddress = \"{b2}\"\n\n\
             [[vip]]\naddress = \"198.19.0.1:53\"\nprotocol = \"udp\"\nscheduler = \"random\"\n\n\
             [[vip.backend]]\naddress = \"{u0}\"\n\n\
             [[vip.backend]]\naddress = \"{u1}\"\nweight = 2\nstate = \"draining\"\n"
        ),
    );
    let config_b = config_b.to_str().expect("UTF-8 path");
    agent.start(&["--config", config_a.to_str().expect("UTF-8 path")]);
    let before = agent.ok(&["-o", "json", "vip", "list"]);
    assert_eq!(
        configuration(&serde_json::from_str::<Vec<VipView>>(&before).expect("JSON")),
        [format!(
            "{VIP} maglev ring 65537: {b0} weight 1 up id 65536, {b1} weight 1 up id 65537"
        )]
    );

    let plan = [
        format!("~ vip {VIP}: maglev -> weighted-round-robin"),
        format!("- backend {b1} from {VIP}"),
        format!("~ backend {b0} of {VIP}: weight 1 -> 3"),
        format!("+ backend {b2} to {VIP} (weight 1)"),
        "+ vip 198.19.0.1:53/udp (random)".to_owned(),
        format!("+ backend {u0} to 198.19.0.1:53/udp (weight 1)"),
        format!("+ backend {u1} to 198.19.0.1:53/udp (weight 2, draining)"),
    ];
    let dry = agent.ok(&["apply", "-f", config_b, "--dry-run"]);
    assert_eq!(
        dry,
        format!("{}\n(dry run: nothing changed)\n", plan.join("\n")),
        "the dry run's plan"
    );
    assert_eq!(
        agent.ok(&["-o", "json", "vip", "list"]),
        before,
        "a dry run changed the VIPs"
    );

    let applied = agent.ok(&["apply", "-f", config_b]);
    assert_eq!(applied, format!("{}\napplied\n", plan.join("\n")));
    let after = configuration(&agent.vips());
    assert_eq!(after.len(), 2, "{after:#?}");
    let line = |prefix: &str| {
        after
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {after:#?}"))
    };
    let tcp = line(&format!("{VIP} weighted-round-robin ring 65537: "));
    assert!(tcp.contains(&format!("{b0} weight 3 up")), "{tcp}");
    assert!(tcp.contains(&format!("{b2} weight 1 up")), "{tcp}");
    assert!(!tcp.contains(&b1.to_string()), "{tcp}");
    let udp = line("198.19.0.1:53/udp random ring 65537: ");
    assert!(udp.contains(&format!("{u0} weight 1 up")), "{udp}");
    assert!(udp.contains(&format!("{u1} weight 2 draining")), "{udp}");

    // Applied to the data path too: new connections reach b0 and b2, never b1.
    let tally = spread(&topo.client, VIP_ADDR, 40, "applied");
    eprintln!("40 connections after the apply: {tally:?}");
    assert_eq!(tally.keys().collect::<Vec<_>>(), ["b0", "b2"], "{tally:?}");

    let unchanged = agent.ok(&["-o", "json", "vip", "list"]);
    for args in [
        ["apply", "-f", config_b, "--dry-run"].as_slice(),
        ["apply", "-f", config_b].as_slice(),
    ] {
        let again = agent.ok(args);
        assert_eq!(
            again.lines().next(),
            Some("no changes"),
            "xdplb {args:?}: {again}"
        );
        assert!(
            !again.lines().any(|l| l.starts_with(['+', '-', '~'])),
            "xdplb {args:?}: {again}"
        );
    }
    assert_eq!(
        configuration(&serde_json::from_str::<Vec<VipView>>(&unchanged).expect("JSON")),
        configuration(&agent.vips())
    );
}

/// Is `output` a refusal as the CLI promises: exit code 2 (bad input, refused before any
/// request) or 4 (refused by the agent), one line `xdplb: error: ...` on
/// stderr that names `names`, nothing on stdout? With `logs`, the agent's log lines
/// (`[timestamp LEVEL target] ...`) may come before it.
fn check_refusal(output: &Output, names: &str, logs: bool) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut problems = Vec::new();
    if !matches!(output.status.code(), Some(2 | 4)) {
        problems.push(format!("exit status {}", output.status));
    }
    let lines: Vec<&str> = stderr
        .trim_end()
        .lines()
        .filter(|l| !(logs && l.starts_with('[')))
        .collect();
    if lines.len() != 1 {
        problems.push(format!("{} lines on stderr", lines.len()));
    }
    if !lines
        .first()
        .is_some_and(|l| l.starts_with("xdplb: error: "))
    {
        problems.push("the error does not start with \"xdplb: error: \"".to_owned());
    }
    if !stderr.contains(names) {
        problems.push(format!("the message does not name {names:?}"));
    }
    if !stdout.trim().is_empty() {
        problems.push(format!("stdout: {stdout:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}; stderr: {stderr:?}", problems.join(", ")))
    }
}

/// Bad input through the CLI, `apply -f`, `run --config` and the API is refused with a clear
/// message, and changes nothing.
#[test]
#[ignore = "needs root"]
fn bad_input_is_refused_with_a_clear_message_and_changes_nothing() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));
    let before = agent.ok(&["-o", "json", "vip", "list"]);
    let state_before = fs::read(agent.state_file()).expect("state file");
    let [b0, _, b2] = [0, 1, 2].map(|i| backend_addr(i).to_string());
    let mut mismatches = Vec::new();

    // The CLI, with what its message must name.
    let cli_cases: &[(&[&str], &str)] = &[
        (&["vip", "add", "198.19.0.1/tcp"], "198.19.0.1/tcp"),
        (&["vip", "add", "198.19.0.1:80/sctp"], "sctp"),
        (&["vip", "add", VIP], "already exists"),
        (&["vip", "add", "224.0.0.1:80/tcp"], "224.0.0.1"),
        (
            &["vip", "add", "198.19.0.2:80/tcp", "--scheduler", "fastest"],
            "fastest",
        ),
        (
            &["vip", "add", "198.19.0.2:80/tcp", "--ring-size", "100"],
            "ring size 100",
        ),
        (
            &["vip", "set", VIP, "--ring-size", "65536"],
            "ring size 65536",
        ),
        (
            &["vip", "show", "198.19.0.9:80/tcp"],
            "no VIP 198.19.0.9:80/tcp",
        ),
        (
            &["vip", "del", "198.19.0.9:80/tcp"],
            "no VIP 198.19.0.9:80/tcp",
        ),
        (
            &["backend", "add", VIP, "198.18.1.2:http"],
            "198.18.1.2:http",
        ),
        (&["backend", "add", VIP, &b0], "already exists"),
        (
            &[
                "backend",
                "add",
                VIP,
                "198.18.9.2:8080",
                "--weight",
                "10001",
            ],
            "weight 10001",
        ),
        (
            &["backend", "add", VIP, "198.18.9.2:8080", "--weight", "-1"],
            "-1",
        ),
        (&["backend", "add", VIP, "[fd00::9]:8080"], "address family"),
        (&["backend", "add", VIP, "198.18.9.2:0"], "port 0"),
        (
            &["backend", "add", "198.19.0.9:80/tcp", "198.18.9.2:8080"],
            "no VIP 198.19.0.9:80/tcp",
        ),
        (
            &["backend", "set", VIP, &b2, "--weight", "20000"],
            "weight 20000",
        ),
        (
            &["backend", "set", VIP, &b2, "--state", "sleeping"],
            "sleeping",
        ),
        (&["backend", "set", VIP, &b2], "nothing to change"),
        (
            &["backend", "drain", VIP, "198.18.9.2:8080"],
            "no backend 198.18.9.2:8080",
        ),
        (
            &["backend", "del", VIP, "198.18.9.2:8080"],
            "no backend 198.18.9.2:8080",
        ),
        (
            &["backend", "list", "198.19.0.9:80/tcp"],
            "no VIP 198.19.0.9:80/tcp",
        ),
    ];
    for (args, names) in cli_cases {
        if let Err(why) = check_refusal(&agent.cli(args), names, false) {
            mismatches.push(format!("xdplb {}: {why}", args.join(" ")));
        }
    }

    // Config files, through `apply -f` (and its dry run) and `run --config`.
    let vip_head = format!("[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n");
    let file_cases = [
        (
            "typo",
            format!("{vip_head}\n[[vip.backend]]\naddress = \"{b0}\"\nwieght = 3\n"),
            "wieght",
        ),
        (
            "weight",
            format!("{vip_head}\n[[vip.backend]]\naddress = \"{b0}\"\nweight = 20000\n"),
            "backend[0].weight",
        ),
        (
            "duplicate",
            format!("{vip_head}\n{vip_head}"),
            "vip[1].address",
        ),
        (
            "duration",
            format!("{vip_head}\n[vip.health]\nkind = \"tcp\"\ninterval = \"2 seconds\"\n"),
            "health.interval",
        ),
        (
            "family",
            format!("{vip_head}\n[[vip.backend]]\naddress = \"[fd00::9]:8080\"\n"),
            "backend[0].address",
        ),
        (
            "scheduler",
            format!("{vip_head}scheduler = \"fastest\"\n"),
            "vip[0].scheduler",
        ),
        (
            "state",
            format!("{vip_head}\n[[vip.backend]]\naddress = \"{b0}\"\nstate = \"sleeping\"\n"),
            "backend[0].state",
        ),
        (
            "ring",
            format!("{vip_head}ring-size = 1000\n"),
            "vip[0].ring-size",
        ),
    ];
    for (name, text, names) in &file_cases {
        let path = agent.file(&format!("bad-{name}.toml"), text);
        let path = path.to_str().expect("UTF-8 path");
        for args in [
            ["apply", "-f", path].as_slice(),
            ["apply", "-f", path, "--dry-run"].as_slice(),
        ] {
            if let Err(why) = check_refusal(&agent.cli(args), names, false) {
                mismatches.push(format!("xdplb {} ({name}): {why}", args.join(" ")));
            }
        }
    }
    // `xdplb run` refuses to start, and leaves nothing behind.
    let bad_config = agent.dir.join("bad-weight.toml");
    let bad_config = bad_config.to_str().expect("UTF-8 path");
    let bad_pins = PathBuf::from(format!("{}-bad", agent.pin_dir.display()));
    let bad_socket = agent.dir.join("bad.sock");
    let bad_state = agent.dir.join("bad-state.json");
    let run_cases: &[(&[&str], &str)] = &[
        (&["--config", bad_config], "backend[0].weight"),
        (
            &[
                "--vip",
                VIP,
                "--backend",
                "198.19.0.2:80/tcp=198.18.1.2:8080",
            ],
            "198.19.0.2:80/tcp",
        ),
        (&["--vip", "198.19.0.1/tcp"], "198.19.0.1/tcp"),
    ];
    for (args, names) in run_cases {
        let output = run_bounded(
            topo.gateway
                .command(&bin())
                .arg("--socket")
                .arg(&bad_socket)
                .args(["run", "--iface", GW_CLIENT_IF, "--pin-dir"])
                .arg(&bad_pins)
                .arg("--state-file")
                .arg(&bad_state)
                .args(*args),
            START_TIMEOUT,
        );
        if let Err(why) = check_refusal(&output, names, true) {
            mismatches.push(format!("xdplb run {}: {why}", args.join(" ")));
        }
        for left in [&bad_pins, &bad_socket, &bad_state] {
            assert!(
                !left.exists(),
                "a refused `run {}` left {}",
                args.join(" "),
                left.display()
            );
        }
    }

    // The API, directly: method, path, body, expected status, what the message must name.
    let backends = format!("/v1/vips/tcp/{VIP_ADDR}/backends");
    let backend = format!("{backends}/{b0}");
    let api_cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/v1/vips", "{bad", 400, "bad request body"),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "198.19.0.2:80/tcp", "bogus": 1}"#,
            400,
            "bogus",
        ),
        ("POST", "/v1/vips", r#"{"scheduler": "maglev"}"#, 400, "vip"),
        ("POST", "/v1/vips", r#"{"vip": 5}"#, 400, "vip"),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "198.19.0.2:80/tcp", "ring_size": "big"}"#,
            400,
            "ring_size",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "198.19.0.2/tcp"}"#,
            400,
            "198.19.0.2/tcp",
        ),
        (
            "POST",
            "/v1/vips",
            &format!(r#"{{"vip": "{VIP}"}}"#),
            409,
            "already exists",
        ),
        (
            "POST",
            &backends,
            &format!(r#"{{"address": "{b0}"}}"#),
            409,
            "already exists",
        ),
        (
            "POST",
            &backends,
            r#"{"address": "198.18.9.2:http"}"#,
            400,
            "address",
        ),
        ("POST", &backends, r#"{"weight": 1}"#, 400, "address"),
        (
            "PATCH",
            &backend,
            r#"{"weight": 10001}"#,
            400,
            "weight 10001",
        ),
        ("PATCH", &backend, r#"{"weight": "heavy"}"#, 400, "weight"),
        ("PATCH", &backend, r#"{"state": "sleeping"}"#, 400, "state"),
        (
            "GET",
            "/v1/vips/tcp/198.19.0.9:80",
            "",
            404,
            "no VIP 198.19.0.9:80/tcp",
        ),
        (
            "DELETE",
            "/v1/vips/tcp/198.19.0.9:80",
            "",
            404,
            "no VIP 198.19.0.9:80/tcp",
        ),
        ("GET", "/v1/vips/sctp/198.19.0.1:80", "", 400, "sctp"),
        ("GET", "/v1/nothing-here", "", 404, "no such API path"),
        ("DELETE", "/v1/vips", "", 405, ""),
        ("POST", "/v1/stop", "{}", 400, "detach"),
        (
            "POST",
            "/v1/apply",
            "[[vip]]\naddress = 1\n",
            400,
            "address",
        ),
    ];
    for (method, path, body, status, names) in api_cases {
        let (got, answer) = curl(&agent.socket(), method, path, body);
        let message = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|json| Some(json.get("error")?.as_str()?.to_owned()));
        let ok = got == *status && message.as_ref().is_some_and(|m| m.contains(names));
        if !ok {
            mismatches.push(format!(
                "{method} {path} {body:?}: {got} {answer:?}, expected {status} with \
                 {{\"error\": ...}} naming {names:?}"
            ));
        }
    }

    assert_eq!(
        agent.ok(&["-o", "json", "vip", "list"]),
        before,
        "refused input changed the VIPs"
    );
    assert_eq!(
        fs::read(agent.state_file()).expect("state file"),
        state_before,
        "refused input changed the state file"
    );
    let cases = cli_cases.len() + 2 * file_cases.len() + run_cases.len() + api_cases.len();
    eprintln!(
        "{cases} cases of bad input, {} not refused as promised",
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {cases} cases of bad input were not refused as promised:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// `curl --unix-socket SOCKET -X METHOD -d BODY http://xdplb/PATH`: the status and the body.
fn curl(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, "-w", "\n%{http_code}"]);
    if !body.is_empty() {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let output = run_bounded(cmd.arg(format!("http://xdplb{path}")), CLI_TIMEOUT);
    assert!(
        output.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 answer");
    let (answer, status) = text.rsplit_once('\n').expect("status line");
    (status.parse().expect("HTTP status"), answer.to_owned())
}

/// `/metrics` (scraped inside the gateway namespace) has the packet counters, per-VIP and
/// per-backend series, active connections, health and agent info with values that match the
/// traffic; `/v1/status` over the socket lists the interfaces.
#[test]
#[ignore = "needs root"]
fn metrics_and_api_over_curl() {
    const METRICS: &str = "127.0.0.1:9464";
    const FLOWS: usize = 30;
    const HELD: usize = 6;
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let mut config = format!(
        "[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n\n[vip.health]\nkind = \"tcp\"\n\
         interval = \"200ms\"\ntimeout = \"100ms\"\n"
    );
    for i in 0..BACKENDS {
        config += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend_addr(i));
    }
    let config = agent.file("metrics.toml", &config);
    agent.start(&[
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--metrics",
        METRICS,
    ]);
    let scrape = || scrape_metrics(&topo.gateway, METRICS);

    let tally = spread(&topo.client, VIP_ADDR, FLOWS, "metrics");
    let held = hold(&topo.client, VIP_ADDR, HELD);
    let mut held_on = Tally::new();
    for (_, ident) in &held {
        *held_on.entry(ident.clone()).or_default() += 1;
    }
    // Active connections are counted every 2 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape();
        let active: f64 = samples(&text, "xdplb_backend_active_connections")
            .iter()
            .map(|(_, v)| v)
            .sum();
        if active == HELD as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "active connections never reached {HELD}:\n{text}"
        );
        thread::sleep(Duration::from_millis(100));
    };

    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(&text, "xdplb_agent_info", &format!("version=\"{version}\"")),
        Some(1.0),
        "{text}"
    );
    // The held connections, as the same count saw them, and the tables' sizes.
    let table = |name: &str| sample(&text, "xdplb_table_entries", &format!("table=\"{name}\""));
    assert!(
        table("conntrack_entries").is_some_and(|n| n >= HELD as f64),
        "{text}"
    );
    assert_eq!(
        table("conntrack_capacity"),
        Some(f64::from(lb_common::maps::DEFAULT_CONNTRACK_CAPACITY)),
        "{text}"
    );
    assert_eq!(
        table("embryonic_capacity"),
        Some(f64::from(lb_common::maps::DEFAULT_EMBRYONIC_CAPACITY)),
        "{text}"
    );
    for counter in Counter::ALL {
        let labels = format!("outcome=\"{}\"", counter.name());
        assert!(
            sample(&text, "xdplb_packets_total", &labels).is_some(),
            "no xdplb_packets_total{{{labels}}}:\n{text}"
        );
    }
    let packets = |outcome: &str| {
        sample(
            &text,
            "xdplb_packets_total",
            &format!("outcome=\"{outcome}\""),
        )
        .unwrap_or(0.0)
    };
    let translated = [
        "fwd_tx",
        "fwd_redirect",
        "pass_partial_checksum",
        "pass_no_neighbour",
    ]
    .iter()
    .map(|o| packets(o))
    .sum::<f64>();
    // SYN, ACK, request and FIN at least, per connection.
    let flows = (FLOWS + HELD) as f64;
    assert!(
        translated >= 3.0 * flows,
        "{translated} packets translated:\n{text}"
    );
    assert_eq!(packets("drop_internal"), 0.0, "{text}");
    assert_eq!(packets("drop_no_backend"), 0.0, "{text}");

    let vip = format!("vip=\"{VIP}\"");
    let vip_packets = sample(&text, "xdplb_vip_packets_total", &vip)
        .unwrap_or_else(|| panic!("no xdplb_vip_packets_total{{{vip}}}:\n{text}"));
    assert!(vip_packets >= 3.0 * flows, "{vip_packets}:\n{text}");
    assert_eq!(
        sample(&text, "xdplb_vip_new_flows_total", &vip),
        Some(flows),
        "{text}"
    );
    let api_packets = agent.vips()[0].packets;
    assert!(
        api_packets as f64 >= vip_packets,
        "the API counts {api_packets} packets, the metrics {vip_packets}"
    );

    for i in 0..BACKENDS {
        let labels = format!("vip=\"{VIP}\",backend=\"{}\"", backend_addr(i));
        let active = sample(&text, "xdplb_backend_active_connections", &labels);
        let expected = held_on.get(&ident(i)).copied().unwrap_or(0) as f64;
        assert_eq!(
            active,
            Some(expected),
            "active connections {labels}:\n{text}"
        );
        assert_eq!(
            sample(&text, "xdplb_backend_healthy", &labels),
            Some(1.0),
            "health {labels}:\n{text}"
        );
        for cause in ["backend", "local"] {
            assert_eq!(
                sample(
                    &text,
                    "xdplb_health_check_failures_total",
                    &format!("{labels},cause=\"{cause}\"")
                ),
                Some(0.0),
                "{cause} failures of a healthy backend {labels}:\n{text}"
            );
        }
        let new_flows = sample(&text, "xdplb_backend_new_flows_total", &labels);
        let answered = tally.get(&ident(i)).copied().unwrap_or(0) as f64;
        assert_eq!(
            new_flows,
            Some(answered + expected),
            "new flows {labels}:\n{text}"
        );
    }
    drop(held);

    let (status, answer) = curl(&agent.socket(), "GET", "/v1/status", "");
    assert_eq!(status, 200, "{answer}");
    let status: StatusView =
        serde_json::from_str(&answer).unwrap_or_else(|err| panic!("{err}: {answer}"));
    let mut ifaces = status.interfaces.clone();
    ifaces.sort_unstable();
    let mut expected = topo.gateway_ifaces();
    expected.sort_unstable();
    assert_eq!(ifaces, expected, "{answer}");
    assert_eq!(status.vips, 1, "{answer}");
    assert_eq!(status.backends, BACKENDS, "{answer}");
    assert_eq!(status.version, version, "{answer}");
    assert_eq!(
        status.pin_dir,
        agent.pin_dir.to_str().expect("UTF-8 path"),
        "{answer}"
    );
}

/// ipvsadm's habits and the CLI's contract with scripts: scheduler aliases in any case and
/// backends without a port (the VIP's) from `run`, `vip add` and `backend add`, with real
/// connections to the port-less backends; `stats -o json` as objects; `XDPLB_SOCKET`; exit
/// codes 2 (bad input), 3 (agent unreachable) and 4 (refused by the agent). Code 5 is checked
/// by `outages.rs` (a full disk), 1 by `lifecycle.rs` (missing capabilities).
#[test]
#[ignore = "needs root"]
fn ipvsadm_habits_xdplb_socket_and_exit_codes() {
    const VIP2: &str = "198.19.0.2:8080/tcp";
    const FLOWS: usize = 20;
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let [ip0, ip1] = [0, 1].map(|i| backend_addr(i).ip().to_string());
    agent.start(&[
        "--vip",
        &format!("{VIP2}=WLC"),
        "--backend",
        &format!("{VIP2}={ip0}"),
    ]);
    agent.ok(&["backend", "add", VIP2, &ip1]);
    agent.ok(&["vip", "add", VIP, "--scheduler", "Rr"]);
    let vips = agent.vips();
    let shown = |vip: &str| {
        vips.iter()
            .find(|v| v.vip == vip)
            .unwrap_or_else(|| panic!("no {vip} in {vips:?}"))
    };
    assert_eq!(shown(VIP2).scheduler.name(), "least-conn");
    assert_eq!(shown(VIP).scheduler.name(), "round-robin");
    let addrs: Vec<String> = shown(VIP2)
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(addrs, [format!("{ip0}:8080"), format!("{ip1}:8080")]);
    let tally = spread(
        &topo.client,
        "198.19.0.2:8080".parse().expect("address"),
        FLOWS,
        "portless",
    );
    assert_eq!(tally.values().sum::<usize>(), FLOWS, "{tally:?}");
    assert!(
        tally.keys().all(|k| *k == ident(0) || *k == ident(1)),
        "{tally:?}"
    );

    // Counters as an object of numbers, which the typed view reads back.
    let stats: serde_json::Value =
        serde_json::from_str(&agent.ok(&["stats", "-o", "json"])).expect("JSON");
    let counters = stats["counters"].as_object().expect("counters: an object");
    assert!(counters.values().all(serde_json::Value::is_u64), "{stats}");
    assert!(
        counters
            .values()
            .filter_map(serde_json::Value::as_u64)
            .sum::<u64>()
            >= FLOWS as u64,
        "{stats}"
    );
    assert!(stats["tables"].is_object(), "{stats}");
    let typed: lb_user::api::StatsView = agent.json(&["stats"]);
    assert_eq!(typed.counters.len(), counters.len());

    // XDPLB_SOCKET, for every command.
    let with_env = |socket: &Path, args: &[&str]| {
        run_bounded(
            Command::new(bin()).env("XDPLB_SOCKET", socket).args(args),
            CLI_TIMEOUT,
        )
    };
    let out = with_env(&agent.socket(), &["vip", "list"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(VIP2),
        "{out:?}"
    );

    // The exit codes.
    let nowhere = agent.dir.join("nowhere.sock");
    let out = with_env(&nowhere, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "unreachable: {stderr}");
    assert!(stderr.contains("nowhere.sock"), "{stderr}");
    let cases: &[(&[&str], i32)] = &[
        (&["vip", "show", "198.19.0.9:80/tcp"], 4),
        (&["vip", "add", VIP2], 4),
        (&["backend", "add", VIP2, &ip0], 4),
        (&["backend", "add", VIP2, "198.18.1.2:http"], 2),
        (
            &["vip", "add", "198.19.0.3:80/tcp", "--scheduler", "fastest"],
            2,
        ),
        (&["vip", "add"], 2),
        (&["stats", "--nonsense"], 2),
    ];
    for (args, code) in cases {
        let out = agent.cli(args);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "xdplb {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    agent.stop(true);
}

/// The commands and subcommands `xdplb [path] --help` lists under "Commands:".
fn subcommands(path: &[String]) -> Vec<String> {
    let out = run_bounded(Command::new(bin()).args(path).arg("--help"), CLI_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Every `--help`, walked from `xdplb --help` down, has an example, and describes each
/// positional argument (under "Arguments:", on its line or the next).
#[test]
fn every_help_has_an_example_and_describes_its_arguments() {
    let mut problems = Vec::new();
    let mut todo = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        seen += 1;
        let out = run_bounded(Command::new(bin()).args(&path).arg("--help"), CLI_TIMEOUT);
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let name = format!("xdplb {} --help", path.join(" "));
        if !out.status.success() || !help.contains("Example") {
            problems.push(format!("{name}: no example"));
        }
        let lines: Vec<&str> = help.lines().collect();
        let args = lines
            .iter()
            .position(|l| *l == "Arguments:")
            .map_or(&[][..], |i| &lines[i + 1..]);
        for (i, line) in args.iter().enumerate() {
            if line.is_empty() {
                break;
            }
            let Some(rest) = line.strip_prefix("  <") else {
                continue;
            };
            let described_here = rest
                .split_once('>')
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let described_below = args
                .get(i + 1)
                .is_some_and(|next| next.starts_with("        ") && !next.trim().is_empty());
            if !described_here && !described_below {
                problems.push(format!("{name}: {} has no description", line.trim()));
            }
        }
        for sub in subcommands(&path) {
            let mut deeper = path.clone();
            deeper.push(sub);
            todo.push(deeper);
        }
    }
    assert!(seen > 20, "walked only {seen} helps");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The exit codes are documented where scripts' authors look.
    let out = run_bounded(Command::new(bin()).arg("--help"), CLI_TIMEOUT);
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "Exit codes:",
        "  2  bad input",
        "  3  the agent cannot be reached",
        "  4  the agent refused",
    ] {
        assert!(help.contains(line), "{help}");
    }
}

/// `xdplb --version` names the crate version, the git revision it was built from and the
/// embedded program's fingerprint (16 hex digits, as in the pin directory's `object-HASH`).
#[test]
fn version_names_the_git_revision_and_the_program() {
    let out = run_bounded(Command::new(bin()).arg("--version"), CLI_TIMEOUT);
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        version.starts_with(&format!("xdplb {} (git ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let revision = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    // Built from this tree: its revision (a commit since the build would make this stale, but
    // build.rs watches HEAD, so a test build is never behind).
    if let Some(revision) = revision {
        assert!(
            version.contains(&format!("git {revision},")),
            "{version} vs {revision}"
        );
    }
    let program = version
        .rsplit_once("program ")
        .map(|(_, p)| p.trim_end_matches(')'))
        .unwrap_or_else(|| panic!("no program in {version}"));
    assert_eq!(program.len(), 16, "{version}");
    assert!(program.chars().all(|c| c.is_ascii_hexdigit()), "{version}");
}

/// `autoscale simulate -o json` prints JSON: the settings and each policy's figures.
#[test]
fn autoscale_simulate_prints_json() {
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/traces/flash-sale.csv");
    let out = run_bounded(
        Command::new(bin())
            .args(["autoscale", "simulate", "-o", "json", "--trace"])
            .arg(&trace),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out.stdout)));
    let policies = report["policies"].as_array().expect("policies");
    let names: Vec<&str> = policies
        .iter()
        .filter_map(|p| p["policy"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{report}");
    for p in policies {
        for key in [
            "time_above_target_s",
            "actions",
            "scale_outs",
            "scale_ins",
            "peak_backends",
        ] {
            assert!(p[key].is_u64(), "{key} in {p}");
        }
        assert!(
            p["backend_minutes"].as_f64().is_some_and(|m| m > 0.0),
            "{p}"
        );
        assert!(p["peak_backends"].as_u64() >= Some(1), "{p}");
    }
    assert_eq!(report["target_per_backend"], 500.0);
}

/// `vip add/set --health-path`: `vip` is refused for a `nat` VIP (and nothing changes), taken
/// for an `ipip` one and shown by `vip show`; switching that VIP to `nat` is refused while its
/// checks go through the VIP, and taken with `--health-path direct`.
#[test]
#[ignore = "needs root"]
fn health_path_from_the_cli() {
    const V: &str = "198.19.0.9:80/tcp";
    let topo = Topology::new(1).expect("topology");
    let mut agent = Agent::new(&topo);
    agent.start(&[]);
    let show = |agent: &Agent| agent.json::<VipView>(&["vip", "show", V]);

    let refused = agent.cli(&["vip", "add", V, "--health-path", "vip"]);
    check_refusal(&refused, "forwards by nat", false).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !agent.ok(&["vip", "list"]).contains("198.19.0.9"),
        "nothing added"
    );

    agent.ok(&[
        "vip",
        "add",
        V,
        "--forwarding",
        "ipip",
        "--health-path",
        "vip",
    ]);
    let view = show(&agent);
    assert_eq!(view.health_path.as_deref(), Some("vip"), "{view:?}");

    let refused = agent.cli(&["vip", "set", V, "--forwarding", "nat"]);
    check_refusal(&refused, "--health-path direct", false).unwrap_or_else(|e| panic!("{e}"));
    let view = show(&agent);
    assert_eq!(
        (view.forwarding, view.health_path.as_deref()),
        (lb_user::balancer::Forwarding::Ipip, Some("vip"))
    );

    agent.ok(&[
        "vip",
        "set",
        V,
        "--forwarding",
        "nat",
        "--health-path",
        "direct",
    ]);
    let view = show(&agent);
    assert_eq!(
        (view.forwarding, view.health_path.as_deref()),
        (lb_user::balancer::Forwarding::Nat, None)
    );
}
