//! Health check kinds and hooks through a running agent: an `exec` check (the backend in its
//! environment, exit 0 healthy, killed at the timeout) and the VIP's `notify-up` and
//! `notify-down` commands on backend transitions, and the `sorry` backend.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, BACKEND_PORT, BACKENDS, VIP, VIP_ADDR, backend_addr, serve},
    netns::{Conn, Topology, ident},
    traffic::spread,
};
use lb_user::{agent::Health, balancer::BackendState};

/// The backend the exec check fails while `DIR/fail` exists.
const VICTIM: usize = 1;

/// An executable shell script `name` in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A notify command that appends its arguments and environment to `DIR/notify.log`: the script
/// and the log.
fn notify_script(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("notify.log");
    let script = script(
        dir,
        "notify.sh",
        &format!("echo \"$1 $STATE $BACKEND $VIP\" >> {}", log.display()),
    );
    (script, log)
}

/// Waits (bounded) until the sorry backend `sorry` is in the VIP's tables, up.
fn wait_for_sorry(agent: &Agent, sorry: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent
        .backends()
        .get(&sorry.to_string())
        .is_none_or(|b| b.state != BackendState::Up)
    {
        assert!(
            Instant::now() < deadline,
            "no sorry backend with every other down: {:?}",
            agent.backends()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until `path` has a line containing `text`; its content.
fn wait_for_line(path: &Path, text: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let content = fs::read_to_string(path).unwrap_or_default();
        if content.lines().any(|l| l.contains(text)) {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {text:?} in {} after {limit:?}:\n{content}",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// An exec check is run with the backend in its environment and judges by its exit code; the
/// VIP's notify commands run on each transition with VIP, BACKEND and STATE; a check that
/// outlives its timeout is killed.
#[test]
#[ignore = "needs root"]
fn exec_checks_and_notify_hooks() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let dir = agent.dir.clone();
    let victim = backend_addr(VICTIM);
    let flag = dir.join("fail");
    fs::write(&flag, "").expect("flag");
    let check = script(
        &dir,
        "check.sh",
        &format!(
            "echo \"$XDPLB_BACKEND $XDPLB_BACKEND_ADDR $XDPLB_BACKEND_PORT\" >> {log}\n\
             if [ -e {flag} ] && [ \"$XDPLB_BACKEND_ADDR\" = {ip} ]; then\n  \
             echo 'refused by the test' >&2\n  exit 1\nfi",
            log = dir.join("exec.log").display(),
            flag = flag.display(),
            ip = victim.ip()
        ),
    );
    let (notify, notify_log) = notify_script(&dir);
    let mut config = format!(
        "[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n\
         notify-up = [\"{n}\", \"hook\"]\nnotify-down = [\"{n}\", \"hook\"]\n\n\
         [vip.health]\nkind = \"exec\"\nexec-command = [\"{c}\"]\n\
         interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n",
        n = notify.display(),
        c = check.display()
    );
    for i in 0..BACKENDS {
        config += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend_addr(i));
    }
    let config = agent.file("xdplb.toml", &config);
    agent.start(&["--config", config.to_str().expect("UTF-8 path")]);

    let started = Instant::now();
    let failing = agent
        .wait_for_backend(victim, started, Duration::from_secs(10), |b| {
            b.health == Health::Failing && b.state == BackendState::Down
        })
        .map(|_| agent.backends()[&victim.to_string()].clone())
        .unwrap_or_else(|b| panic!("{victim} never failed its exec check: {b:?}"));
    assert!(
        failing
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused by the test")),
        "{failing:?}"
    );
    for i in (0..BACKENDS).filter(|&i| i != VICTIM) {
        agent
            .wait_for_backend(backend_addr(i), started, Duration::from_secs(10), |b| {
                b.health == Health::Healthy
            })
            .unwrap_or_else(|b| panic!("{} not healthy: {b:?}", ident(i)));
    }
    let exec_log = fs::read_to_string(dir.join("exec.log")).expect("exec.log");
    for i in 0..BACKENDS {
        let b = backend_addr(i);
        let line = format!("{b} {} {}", b.ip(), b.port());
        assert!(exec_log.contains(&line), "{line:?} not in:\n{exec_log}");
    }
    wait_for_line(
        &notify_log,
        &format!("hook down {victim} {VIP}"),
        Duration::from_secs(5),
    );

    // The check passes again: the backend is back, and notify-up ran.
    fs::remove_file(&flag).expect("flag");
    agent
        .wait_for_backend(victim, Instant::now(), Duration::from_secs(10), |b| {
            b.health == Health::Healthy && b.state == BackendState::Up
        })
        .unwrap_or_else(|b| panic!("{victim} not back: {b:?}"));
    let notified = wait_for_line(
        &notify_log,
        &format!("hook up {victim} {VIP}"),
        Duration::from_secs(5),
    );
    assert_eq!(
        notified.lines().count(),
        2,
        "one notification per transition:\n{notified}"
    );

    // A check that outlives its timeout is killed.
    let pid_file = dir.join("sleep.pid");
    let sleeper = script(
        &dir,
        "sleep.sh",
        &format!("echo $$ > {}\nexec sleep 30", pid_file.display()),
    );
    agent.ok(&[
        "vip",
        "set",
        VIP,
        "--health-command",
        &sleeper.display().to_string(),
    ]);
    for i in 0..BACKENDS {
        agent
            .wait_for_backend(
                backend_addr(i),
                Instant::now(),
                Duration::from_secs(10),
                |b| {
                    b.health == Health::Failing
                        && b.last_error
                            .as_deref()
                            .is_some_and(|e| e.contains("timed out"))
                },
            )
            .unwrap_or_else(|b| panic!("{} not failing by timeout: {b:?}", ident(i)));
    }
    agent.ok(&["vip", "set", VIP, "--health", "none"]);
    thread::sleep(Duration::from_millis(500));
    let pid = fs::read_to_string(&pid_file).expect("sleep.pid");
    let pid = pid.trim();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie about to be reaped.
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if stat.is_empty() || state == Some('Z') {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out check {pid} still runs: {stat}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent.log().contains("failed its health check"),
        "{}",
        agent.log()
    );
}

/// A VIP's `sorry` backend is out of the tables while another backend takes new flows, takes
/// every new flow once all are down, and is drained when one comes back: new flows go to it,
/// a connection opened on the sorry backend keeps working.
#[test]
#[ignore = "needs root"]
fn the_sorry_backend_takes_new_flows_only_while_every_other_is_down() {
    const SORRY: usize = 2;
    let topo = Topology::new(3).expect("topology");
    let mut servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let sorry = backend_addr(SORRY);
    let mut config = format!(
        "[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\nsorry = \"{sorry}\"\n\n\
         [vip.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\n\
         fall = 2\n"
    );
    for i in 0..SORRY {
        config += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend_addr(i));
    }
    let config = agent.file("xdplb.toml", &config);
    agent.start(&["--config", config.to_str().expect("UTF-8 path")]);
    for i in 0..SORRY {
        agent
            .wait_for_backend(
                backend_addr(i),
                Instant::now(),
                Duration::from_secs(10),
                |b| b.health == Health::Healthy,
            )
            .unwrap_or_else(|b| panic!("{} never healthy: {b:?}", ident(i)));
    }
    assert!(
        !agent.backends().contains_key(&sorry.to_string()),
        "the sorry backend is in the tables with others up: {:?}",
        agent.backends()
    );
    let tally = spread(&topo.client, VIP_ADDR, 20, "before");
    assert!(!tally.contains_key(&ident(SORRY)), "{tally:?}");

    // Every other backend down: the sorry backend takes every new flow.
    servers[0] = None;
    servers[1] = None;
    wait_for_sorry(&agent, sorry);
    let tally = spread(&topo.client, VIP_ADDR, 20, "sorry");
    assert_eq!(tally.get(&ident(SORRY)), Some(&20), "{tally:?}");
    let mut held = topo
        .client
        .run(|| Conn::connect(VIP_ADDR))
        .expect("a connection to the sorry backend");
    assert_eq!(held.ask("held").expect("answer"), ident(SORRY));
    // Not saved as the operator's: the exported config has it as `sorry` alone.
    let exported = agent.ok(&["config", "export"]);
    assert_eq!(
        exported.matches(&sorry.to_string()).count(),
        1,
        "{exported}"
    );

    // One comes back: new flows go to it, the sorry backend drains.
    servers[0] = Some(topo.backends[0].tcp_server(BACKEND_PORT, &ident(0)));
    agent
        .wait_for_backend(sorry, Instant::now(), Duration::from_secs(10), |b| {
            b.state == BackendState::Draining
        })
        .unwrap_or_else(|b| panic!("the sorry backend not drained: {b:?}"));
    let tally = spread(&topo.client, VIP_ADDR, 20, "after");
    assert_eq!(tally.get(&ident(0)), Some(&20), "{tally:?}");
    assert_eq!(held.ask("still").expect("answer"), ident(SORRY));
    assert!(agent.log().contains("the sorry backend"), "{}", agent.log());
}

/// `vip set --sorry` and `--notify-down` on a running agent, without a config file: bad
/// values are refused naming the flag (exit 2 before the agent is asked, 4 when the agent
/// refuses) and change nothing; a notify-down command set so runs when a backend fails; a
/// sorry backend set so takes every new connection once the others are down, and leaves the
/// tables when removed with `--sorry none`.
#[test]
#[ignore = "needs root"]
fn vip_set_gives_a_sorry_backend_and_notify_commands() {
    const SORRY: usize = 2;
    let topo = Topology::new(3).expect("topology");
    let mut servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let dir = agent.dir.clone();
    let (b0, b1, sorry) = (backend_addr(0), backend_addr(1), backend_addr(SORRY));
    agent.start(&[
        "--vip",
        VIP,
        "--backend",
        &format!("{VIP}={b0}"),
        "--backend",
        &format!("{VIP}={b1}"),
    ]);
    agent.ok(&[
        "vip",
        "set",
        VIP,
        "--health",
        "tcp",
        "--health-interval",
        "200ms",
        "--health-timeout",
        "100ms",
        "--health-rise",
        "2",
        "--health-fall",
        "2",
    ]);
    let (notify, notify_log) = notify_script(&dir);
    for (args, code, error) in [
        (
            vec!["--sorry", "127.0.0.1:80"],
            2,
            "--sorry: backend 127.0.0.1:80 cannot be a backend",
        ),
        (
            vec!["--sorry", "[fd00::9]:80"],
            2,
            "--sorry: backend [fd00::9]:80 is not of",
        ),
        (
            vec!["--notify-down", " "],
            2,
            "--notify-down: the program must not be empty",
        ),
        (
            vec!["--sorry", &b0.to_string(), "--notify-up", "/bin/true"],
            4,
            &format!("sorry: {b0} is one of the VIP's backends"),
        ),
    ] {
        let out = agent.cli(&[&["vip", "set", VIP][..], &args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(error), "{args:?}: {stderr}");
    }
    let view: lb_user::api::VipView = agent.json(&["vip", "show", VIP]);
    assert!(
        view.sorry.is_none() && view.notify_up.is_empty() && view.notify_down.is_empty(),
        "a refusal changed nothing: {view:?}"
    );
    assert_eq!(view.backends.len(), 2, "{view:?}");

    let command = format!("{} hook", notify.display());
    agent.ok(&[
        "vip",
        "set",
        VIP,
        "--sorry",
        &sorry.to_string(),
        "--notify-down",
        &command,
    ]);
    let view: lb_user::api::VipView = agent.json(&["vip", "show", VIP]);
    assert_eq!(view.sorry, Some(sorry));
    assert_eq!(
        view.notify_down,
        [notify.display().to_string(), "hook".into()]
    );
    let shown = agent.ok(&["vip", "show", VIP]);
    assert!(
        shown.contains(&format!("hooks: notify-down {command}; sorry {sorry}")),
        "{shown}"
    );
    // The audit trail has the change.
    let audit = format!("change source=api ~ hooks of {VIP}: notify-down [] -> [");
    assert!(agent.log().contains(&audit), "{}", agent.log());
    assert!(
        agent.log().contains(&format!("sorry - -> {sorry}")),
        "{}",
        agent.log()
    );
    for b in [b0, b1] {
        agent
            .wait_for_backend(b, Instant::now(), Duration::from_secs(10), |v| {
                v.health == Health::Healthy
            })
            .unwrap_or_else(|v| panic!("{b} never healthy: {v:?}"));
    }
    assert!(
        !agent.backends().contains_key(&sorry.to_string()),
        "{:?}",
        agent.backends()
    );

    // A backend fails: the notify-down command set through the CLI runs.
    servers[0] = None;
    wait_for_line(
        &notify_log,
        &format!("hook down {b0} {VIP}"),
        Duration::from_secs(10),
    );
    // Every other backend down: a new connection lands on the sorry backend.
    servers[1] = None;
    wait_for_sorry(&agent, sorry);
    let tally = spread(&topo.client, VIP_ADDR, 10, "sorry");
    assert_eq!(tally.get(&ident(SORRY)), Some(&10), "{tally:?}");

    // Removed: it leaves the tables, and the command is gone.
    agent.ok(&[
        "vip",
        "set",
        VIP,
        "--sorry",
        "none",
        "--notify-down",
        "none",
    ]);
    let view: lb_user::api::VipView = agent.json(&["vip", "show", VIP]);
    assert_eq!((view.sorry, view.notify_down.len()), (None, 0), "{view:?}");
    assert!(
        !agent.backends().contains_key(&sorry.to_string()),
        "{:?}",
        agent.backends()
    );
}

/// A Python HTTPS server on a backend, killed when dropped.
struct HttpsServer(std::process::Child);

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An https check against a real TLS server with a self-signed certificate: healthy with
/// `insecure = true`, failing the handshake when the certificate is verified, and failing on
/// a status other than the one expected.
#[test]
#[ignore = "needs root"]
fn https_checks_verify_or_skip_the_certificate() {
    const TLS_PORT: u16 = 8443;
    let topo = Topology::new(1).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let dir = agent.dir.join("www");
    fs::create_dir_all(&dir).expect("www");
    fs::write(dir.join("healthz"), "ok\n").expect("healthz");
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=xdplb-test",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(&dir)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
    let server = HttpsServer(
        topo.backends[0]
            .command("python3")
            .args([
                "-c",
                &format!(
                    "import http.server, ssl\n\
                     s = http.server.HTTPServer(('0.0.0.0', {TLS_PORT}), \
                     http.server.SimpleHTTPRequestHandler)\n\
                     c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
                     c.load_cert_chain('cert.pem', 'key.pem')\n\
                     s.socket = c.wrap_socket(s.socket, server_side=True)\n\
                     s.serve_forever()\n"
                ),
            ])
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let backend = backend_addr(0);
    let url = format!("https://{}:{TLS_PORT}/healthz", backend.ip());
    let deadline = Instant::now() + Duration::from_secs(10);
    while topo
        .gateway
        .exec("curl", &["-sSk", "--max-time", "2", &url])
        .is_err()
    {
        assert!(Instant::now() < deadline, "the https server never answered");
        thread::sleep(Duration::from_millis(100));
    }

    let config = format!(
        "[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n\n[vip.health]\nkind = \
         \"https\"\nport = {TLS_PORT}\nhttp-path = \"/healthz\"\ninsecure = true\n\
         interval = \"500ms\"\ntimeout = \"400ms\"\nrise = 1\nfall = 1\n\n\
         [[vip.backend]]\naddress = \"{backend}\"\n"
    );
    let config = agent.file("xdplb.toml", &config);
    agent.start(&["--config", config.to_str().expect("UTF-8 path")]);
    agent
        .wait_for_backend(backend, Instant::now(), Duration::from_secs(10), |b| {
            b.health == Health::Healthy && b.last_check_ok == Some(true)
        })
        .unwrap_or_else(|b| panic!("never healthy over https: {b:?}"));

    // Verified, the self-signed certificate fails the handshake.
    agent.ok(&["vip", "set", VIP, "--health-insecure", "false"]);
    let failing = |needle: &'static str| {
        move |b: &lb_user::api::BackendView| {
            b.health == Health::Failing
                && b.last_check_ok == Some(false)
                && b.last_error.as_deref().is_some_and(|e| e.contains(needle))
        }
    };
    agent
        .wait_for_backend(
            backend,
            Instant::now(),
            Duration::from_secs(10),
            failing("TLS handshake"),
        )
        .unwrap_or_else(|b| panic!("a self-signed certificate passed verification: {b:?}"));

    agent.ok(&[
        "vip",
        "set",
        VIP,
        "--health-insecure",
        "true",
        "--health-uri",
        "/missing",
    ]);
    agent
        .wait_for_backend(
            backend,
            Instant::now(),
            Duration::from_secs(10),
            failing("status 404, expected 200"),
        )
        .unwrap_or_else(|b| panic!("a 404 passed: {b:?}"));
    drop(server);
}
