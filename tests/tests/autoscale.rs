//! Autoscaling end to end: the agent with `[vip.autoscale]` in its config brings in standby
//! backends or starts them with its scale-up hook as held connections ramp up, drains and
//! releases them as the load falls, and in dry-run mode decides and reports without changing
//! anything. Backends answer as `b0`, `b1`, ... (or `hook-b1`, ...) on port 8080.

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{
        Agent, BACKEND_PORT, VIP, VIP_ADDR, backend_addr, offload_off, sample, scrape_metrics,
        serve,
    },
    netns::{Conn, Topology, ident},
    traffic::{hold, spread},
};

/// Longest an autoscaling step may take (decisions come every second; probes, drains and
/// hooks add a few).
const SCALE_TIMEOUT: Duration = Duration::from_secs(20);

/// The VIP's backends and their states.
fn backend_states(agent: &Agent) -> BTreeMap<String, String> {
    agent
        .backends()
        .into_iter()
        .map(|(addr, b)| (addr, b.state.to_string()))
        .collect()
}

/// Polls until `done` holds for the backends' states, for at most [`SCALE_TIMEOUT`].
fn wait_for_pool(agent: &Agent, what: &str, done: impl Fn(&BTreeMap<String, String>) -> bool) {
    let deadline = Instant::now() + SCALE_TIMEOUT;
    loop {
        let states = backend_states(agent);
        if done(&states) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SCALE_TIMEOUT:?}; backends {states:?}; autoscaler {:#?}",
            agent.autoscale()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The VIP's backends and their weights.
fn weights(agent: &Agent) -> BTreeMap<String, u32> {
    (agent.backends().into_iter())
        .map(|(addr, b)| (addr, b.weight))
        .collect()
}

fn count_state(states: &BTreeMap<String, String>, state: &str) -> usize {
    states.values().filter(|s| *s == state).count()
}

/// A config: the VIP with backends `active`, a TCP health check, and `[vip.autoscale]` holding
/// `autoscale` (target 4 connections per backend, quick windows for a test).
fn autoscale_config(active: &[usize], autoscale: &str) -> String {
    let backends: String = active
        .iter()
        .map(|&i| format!("[[vip.backend]]\naddress = \"{}\"\n", backend_addr(i)))
        .collect();
    format!(
        r#"[[vip]]
address = "{VIP_ADDR}"
protocol = "tcp"
[vip.health]
kind = "tcp"
interval = "1s"
timeout = "500ms"
{backends}[vip.autoscale]
policy = "target"
target-per-backend = 4
min = 1
max-step = 3
scale-out-cooldown = "0s"
scale-in-cooldown = "3s"
metric-window = "1s"
scale-in-window = "3s"
tolerance-percent = 0
drain-timeout = "60s"
{autoscale}
"#
    )
}

#[test]
#[ignore = "needs root"]
fn autoscaling_brings_in_standby_backends_and_drains_them_when_load_falls() {
    const STANDBY: usize = 3;
    let topo = Topology::new(1 + STANDBY).expect("topology");
    offload_off(&topo);
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let standby: Vec<String> = (1..=STANDBY)
        .map(|i| format!("\"{}\"", backend_addr(i)))
        .collect();
    let config = agent.file(
        "autoscale.toml",
        &autoscale_config(
            &[0],
            &format!("max = 4\nstandby = [{}]", standby.join(", ")),
        ),
    );
    agent.start(&["--config", config.to_str().expect("UTF-8 path")]);
    let status = agent.autoscale();
    assert_eq!(status.serving, 1, "{status:#?}");
    assert_eq!(status.standby.len(), STANDBY);

    // A bounded ramp of held connections: 2 fit one backend, 12 need three, 18 need the max, 4.
    let mut held = hold(&topo.client, VIP_ADDR, 2);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count_state(&backend_states(&agent), "up"),
        1,
        "2 connections need 1 backend"
    );
    held.extend(hold(&topo.client, VIP_ADDR, 10));
    wait_for_pool(&agent, "scale-out to 3 for 12 connections", |s| {
        count_state(s, "up") == 3
    });
    let tally = spread(&topo.client, VIP_ADDR, 30, "new");
    let b0 = ident(0);
    let on_new = tally.keys().filter(|i| **i != b0).count();
    assert!(
        on_new >= 1,
        "new connections land on the added backends: {tally:?}"
    );
    held.extend(hold(&topo.client, VIP_ADDR, 6));
    wait_for_pool(&agent, "scale-out to max = 4 for 18 connections", |s| {
        count_state(s, "up") == 4
    });
    let status = agent.autoscale();
    assert!(status.standby.is_empty(), "{status:#?}");
    assert!(
        status
            .decisions
            .first()
            .is_some_and(|d| d.reason.contains("at 4/backend")),
        "{status:#?}"
    );

    // Connections opened before the scale-out all went to b0: hold a few more (bounded) until
    // two added backends hold some.
    for _ in 0..5 {
        let added: std::collections::BTreeSet<&String> =
            held.iter().map(|(_, i)| i).filter(|i| **i != b0).collect();
        if added.len() >= 2 {
            break;
        }
        held.extend(hold(&topo.client, VIP_ADDR, 4));
    }

    // Load falls: keep one long-lived connection on each of two added backends, close the rest.
    let mut survivors: Vec<(Conn, String)> = Vec::new();
    for (conn, ident) in held {
        if ident != b0 && !survivors.iter().any(|(_, i)| *i == ident) && survivors.len() < 2 {
            survivors.push((conn, ident));
        }
    }
    assert_eq!(survivors.len(), 2, "held connections on two added backends");
    // One backend stays in rotation; the drained ones without flows leave, those holding a
    // survivor stay (draining) while it is open.
    let kept = survivors.len();
    wait_for_pool(&agent, "scale-in to 1 backend in rotation", |s| {
        count_state(s, "up") == 1
            && count_state(s, "draining") + 1 == s.len()
            && s.len() <= 1 + kept
    });
    for (conn, ident) in &mut survivors {
        let answer = conn
            .ask("still there?")
            .unwrap_or_else(|err| panic!("a long-lived connection to {ident} broke: {err:#}"));
        assert_eq!(&answer, ident, "a long-lived connection moved");
    }
    let status = agent.autoscale();
    let drained = status
        .decisions
        .iter()
        .any(|d| d.actions.iter().any(|a| a.contains("drain")));
    assert!(drained, "a scale-in decision that drains: {status:#?}");

    // Their last connections close: the drained backends leave and are standby again.
    drop(survivors);
    wait_for_pool(&agent, "drained backends removed", |s| s.len() == 1);
    let status = agent.autoscale();
    assert_eq!(status.standby.len(), STANDBY, "{status:#?}");
    // Each of the autoscaler's changes is in the audit trail, as the autoscaler's: backends
    // brought in, drained, removed.
    let log = agent.log();
    let changes: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("change source=autoscale ").map(|(_, c)| c))
        .collect();
    assert!(
        changes.iter().any(|c| c.starts_with("+ backend")),
        "{changes:#?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("~ backend") && c.ends_with("-> draining")),
        "{changes:#?}"
    );
    assert!(
        changes.iter().any(|c| c.starts_with("- backend")),
        "{changes:#?}"
    );
    agent.stop(true);
}

/// Standby backends with weights: b1 of weight 3, b2 of weight 1, b0 (weight 1) in the pool.
/// 14 connections at 4 per unit need 4 units, a gap of 3, which b1 covers alone.
#[test]
#[ignore = "needs root"]
fn autoscaling_brings_in_the_standby_backend_whose_weight_covers_the_gap() {
    let topo = Topology::new(3).expect("topology");
    offload_off(&topo);
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let (b1, b2) = (backend_addr(1), backend_addr(2));
    // Above target for 2 s before scaling out: the decision sees all 14 connections, not the
    // first few of them.
    let config = agent.file(
        "autoscale.toml",
        &autoscale_config(
            &[0],
            &format!("max = 5\nscale-out-window = \"2s\"\nstandby = [\"{b1}@3\", \"{b2}\"]"),
        ),
    );
    agent.start(&["--config", config.to_str().expect("UTF-8 path")]);
    let status = agent.autoscale();
    assert_eq!(status.weights.get(&b1), Some(&3), "{status:#?}");
    assert_eq!((status.desired, status.capacity), (1, 1), "{status:#?}");

    let held = hold(&topo.client, VIP_ADDR, 14);
    wait_for_pool(&agent, "b1 joins for 14 connections", |s| {
        count_state(s, "up") == 2 && s.contains_key(&b1.to_string())
    });
    assert_eq!(
        weights(&agent),
        BTreeMap::from([(backend_addr(0).to_string(), 1), (b1.to_string(), 3)]),
        "b1 joins alone, with its weight"
    );
    let status = agent.autoscale();
    assert_eq!(
        (status.desired, status.capacity, status.serving_capacity),
        (4, 4, 4),
        "{status:#?}"
    );
    assert_eq!(status.standby, [b2], "{status:#?}");
    let text = agent.ok(&["autoscale", "status"]);
    assert!(
        text.contains("capacity      desired 4  allocated 4  in rotation 4"),
        "{text}"
    );
    assert!(
        text.contains(&format!("bring in {b1}@3 (standby)")),
        "{text}"
    );
    let tally = spread(&topo.client, VIP_ADDR, 20, "new");
    assert!(
        tally.contains_key(&ident(1)),
        "new connections reach b1: {tally:?}"
    );
    drop(held);
    agent.stop(true);
}

/// A backend server as its own process: a Python line server answering `IDENT LINE`.
const LINE_SERVER: &str = r#"
import socket, sys, threading
ident, port = sys.argv[1].encode(), int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(128)
def serve(c):
    with c, c.makefile("rb") as lines:
        for line in lines:
            c.sendall(ident + b" " + line)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Kills the processes listed in a pid file on drop.
struct Pids(PathBuf);

impl Drop for Pids {
    fn drop(&mut self) {
        for pid in fs::read_to_string(&self.0)
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Capacity in weight, with a scale-up hook. b0 has weight 2; 10 connections at 4 per unit need
/// 3 units. The hook's first answer names a backend of another VIP: refused. Its next names b1
/// with weight 2 (4 units: one too many, but no backend fits a surplus of 1, so the pool holds);
/// any run after that finds the pool used up and fails.
#[test]
#[ignore = "needs root"]
fn autoscaling_hooks_start_and_release_backend_servers() {
    const OTHER_VIP: &str = "198.19.0.1:81/tcp";
    let topo = Topology::new(2).expect("topology");
    offload_off(&topo);
    // Only b0 runs; the scale-up hook starts b1 in its namespace.
    let _b0 = topo.backends[0].tcp_server(BACKEND_PORT, &ident(0));
    let mut agent = Agent::new(&topo);
    let dir = agent.dir.clone();
    let pids = Pids(dir.join("pids"));
    agent.file("server.py", LINE_SERVER);
    // Another VIP's backend (no server: it is refused before any probe), then b1 of weight 2.
    let taken = std::net::SocketAddr::new(backend_addr(1).ip(), 9090);
    let pool = format!(
        "- {taken}\n{} {}@2\n",
        topo.backends[1].name,
        backend_addr(1)
    );
    agent.file("pool", &pool);
    agent.file("next", "1\n");
    let up = agent.file(
        "scale-up.sh",
        &format!(
            r#"#!/bin/sh
# Starts the next backend server of the pool in its namespace (none for "-") and prints its
# address.
set -eu
cd {dir}
exec 9>lock
flock 9
n=$(cat next)
echo $((n + 1)) > next
line=$(sed -n "${{n}}p" pool)
[ -n "$line" ] || {{ echo "the pool is used up" >&2; exit 1; }}
ns=${{line% *}}
addr=${{line#* }}
if [ "$ns" != - ]; then
    nsenter --net=/run/netns/$ns python3 server.py hook-b$n {BACKEND_PORT} </dev/null >/dev/null 2>&1 9>&- &
    echo $! >> pids
fi
echo "$addr"
"#,
            dir = dir.display()
        ),
    );
    let down = agent.file(
        "scale-down.sh",
        &format!(
            "#!/bin/sh\n# Records the released backend.\necho \"$1\" >> {}/released\n",
            dir.display()
        ),
    );
    for script in [&up, &down] {
        fs::set_permissions(script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod hook");
    }
    let config = agent.file(
        "autoscale.toml",
        &format!(
            "{}\n[[vip]]\naddress = \"198.19.0.1:81\"\nprotocol = \"tcp\"\n\
             [[vip.backend]]\naddress = \"{taken}\"\n",
            autoscale_config(
                &[0],
                &format!(
                    "max = 4\nscale-up = [\"{}\"]\nscale-down = [\"{}\"]\nhook-timeout = \"5s\"",
                    up.display(),
                    down.display()
                ),
            )
            .replace(
                &format!("address = \"{}\"\n", backend_addr(0)),
                &format!("address = \"{}\"\nweight = 2\n", backend_addr(0)),
            )
        ),
    );
    agent.start(&["--config", config.to_str().expect("UTF-8 path")]);

    let held = hold(&topo.client, VIP_ADDR, 10);
    let b1 = backend_addr(1).to_string();
    wait_for_pool(&agent, "b1 joins for 10 connections", |s| {
        count_state(s, "up") == 2 && s.contains_key(&b1)
    });
    assert_eq!(
        weights(&agent),
        BTreeMap::from([(backend_addr(0).to_string(), 2), (b1.clone(), 2)]),
        "b1 joins with the weight the hook gave"
    );
    let tally = spread(&topo.client, VIP_ADDR, 30, "new");
    assert!(
        tally.keys().any(|ident| ident.starts_with("hook-b")),
        "new connections reach the server the hook started: {tally:?}"
    );
    // 4 units for 3: once the scale-in window has passed, the pool holds, as no backend fits.
    let deadline = Instant::now() + SCALE_TIMEOUT;
    let status = loop {
        let status = agent.autoscale();
        let holds = (status.decisions.iter())
            .any(|d| d.actions == ["hold: no backend fits a surplus of 1"]);
        if holds {
            break status;
        }
        assert!(Instant::now() < deadline, "no hold: {status:#?}");
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (status.desired, status.capacity, status.serving),
        (3, 4, 2),
        "{status:#?}"
    );
    assert_eq!(status.scale_ins, 0, "a hold is no scale-in: {status:#?}");
    assert_eq!(
        status.weights.get(&backend_addr(1)),
        Some(&2),
        "{status:#?}"
    );
    assert!(status.scale_up_hook.failures >= 1, "{status:#?}");
    let refused = format!("scale-up answered {taken}, a backend of {OTHER_VIP}: refused");
    assert!(agent.log().contains(&refused), "{refused:?} not logged");
    let other: Vec<String> = agent
        .json::<Vec<lb_user::api::BackendView>>(&["backend", "list", OTHER_VIP])
        .into_iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(
        other,
        [taken.to_string()],
        "the other VIP keeps its backend"
    );

    // Load falls: the hook backend drains, leaves and goes to scale-down; b0 stays.
    drop(held);
    wait_for_pool(&agent, "back to b0 alone", |s| s.len() == 1);
    let states = backend_states(&agent);
    assert!(
        states.contains_key(&backend_addr(0).to_string()),
        "{states:?}"
    );
    let deadline = Instant::now() + SCALE_TIMEOUT;
    let released = loop {
        let released = fs::read_to_string(dir.join("released")).unwrap_or_default();
        if !released.is_empty() || Instant::now() > deadline {
            break released;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        released.lines().collect::<Vec<_>>(),
        [b1.as_str()],
        "scale-down gets the drained hook backend, and only it"
    );
    agent.stop(true);
    drop(pids);
}

#[test]
#[ignore = "needs root"]
fn autoscaling_dry_run_decides_reports_and_changes_nothing() {
    const METRICS: &str = "127.0.0.1:9465";
    let topo = Topology::new(3).expect("topology");
    offload_off(&topo);
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let config = agent.file(
        "autoscale.toml",
        &autoscale_config(
            &[0],
            &format!(
                "max = 3\nstandby = [\"{}\", \"{}\"]",
                backend_addr(1),
                backend_addr(2)
            ),
        ),
    );
    agent.start(&[
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--autoscale-dry-run",
        "--metrics",
        METRICS,
    ]);
    let held = hold(&topo.client, VIP_ADDR, 10);
    let deadline = Instant::now() + SCALE_TIMEOUT;
    let status = loop {
        let status = agent.autoscale();
        if status.desired == 3 {
            break status;
        }
        assert!(Instant::now() < deadline, "no decision: {status:#?}");
        thread::sleep(Duration::from_millis(100));
    };
    // The decision that reached 3: the connections are opened one after another, so an
    // earlier tick may have seen only some of them and decided on fewer.
    let decision = status
        .decisions
        .iter()
        .find(|d| d.to == 3)
        .unwrap_or_else(|| panic!("no decision to 3 recorded: {status:#?}"));
    assert!(decision.dry_run, "{status:#?}");
    assert_eq!(
        decision.actions.first().map(String::as_str),
        Some("would add 2"),
        "{status:#?}"
    );
    assert_eq!(status.sample.active_connections, 10.0, "{status:#?}");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        backend_states(&agent).len(),
        1,
        "a dry run changes no backend"
    );

    let text = agent.ok(&["autoscale", "status"]);
    for expected in [
        "policy target on active-connections, target 4/backend, 1..=3 backends",
        "desired 3  allocated 1  in rotation 1",
        "1 -> 3  load 10 at 4/backend [dry run]: would add 2",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let metrics = scrape_metrics(&topo.gateway, METRICS);
    let vip = format!("vip=\"{VIP}\"");
    assert_eq!(
        sample(&metrics, "xdplb_autoscale_desired_backends", &vip),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "xdplb_autoscale_signal",
            &format!("{vip},signal=\"active-connections\"")
        ),
        Some(10.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "xdplb_autoscale_decisions_total",
            &format!("{vip},direction=\"out\"")
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // Unknown VIPs and VIPs without autoscaling are clear errors.
    let out = agent.cli(&["autoscale", "status", "198.19.0.9:80/tcp"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("198.19.0.9:80/tcp"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(held);
    agent.stop(true);
}

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

#[test]
#[ignore = "needs root"]
fn a_schedule_window_brings_standby_in_before_it_opens_and_drains_them_after() {
    const METRICS: &str = "127.0.0.1:9466";
    let topo = Topology::new(3).expect("topology");
    offload_off(&topo);
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    // A window opening 30 s from now for 10 s, its minimum of 3 held from 15 s before (the
    // agent has those 15 s to start).
    let start = unix_now() + 30;
    let end = start + 10;
    let time = lb_user::autoscale::schedule::format_time;
    let config = agent.file(
        "autoscale.toml",
        &autoscale_config(
            &[0],
            &format!(
                "max = 3\nstandby = [\"{}\", \"{}\"]\n[[vip.autoscale.schedule]]\n\
                 name = \"sale\"\nstart = \"{}\"\nend = \"{}\"\nmin = 3\nlead = \"15s\"\n",
                backend_addr(1),
                backend_addr(2),
                time(start),
                time(end),
            ),
        ),
    );
    agent.start(&[
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--metrics",
        METRICS,
    ]);
    let status = agent.autoscale();
    let schedule = status.schedule.clone().expect("a schedule in the status");
    assert!(unix_now() < start - 15, "the agent took too long to start");
    assert_eq!(status.serving, 1, "{status:#?}");
    assert!(schedule.active.is_empty(), "{schedule:#?}");
    assert_eq!(
        schedule
            .next
            .as_ref()
            .map(|o| (o.name.as_str(), o.start, o.min)),
        Some(("sale", start, Some(3)))
    );

    // No load at all: the standby backends join for the window, before it opens.
    wait_for_pool(&agent, "the standby backends join in the lead", |s| {
        count_state(s, "up") == 3
    });
    assert!(unix_now() >= start - 15, "joined before the lead");
    let status = agent.autoscale();
    assert!(
        status
            .decisions
            .last()
            .is_some_and(|d| d.reason == "schedule \"sale\": min 3"),
        "{status:#?}"
    );
    // They take real connections: hold (bounded) two on b0 and one on each of b1 and b2.
    let want = |who: &String| if *who == ident(0) { 2 } else { 1 };
    let mut kept: Vec<(Conn, String)> = Vec::new();
    for _ in 0..10 {
        for (conn, ident) in hold(&topo.client, VIP_ADDR, 4) {
            if kept.iter().filter(|(_, i)| *i == ident).count() < want(&ident) {
                kept.push((conn, ident));
            }
        }
        if kept.len() == 4 {
            break;
        }
    }
    let idents: Vec<&String> = kept.iter().map(|(_, i)| i).collect();
    assert_eq!(kept.len(), 4, "connections on every backend: {idents:?}");
    assert!(unix_now() < start, "all this before the window opens");
    let metrics = scrape_metrics(&topo.gateway, METRICS);
    assert_eq!(
        sample(
            &metrics,
            "xdplb_autoscale_schedule_min_backends",
            &format!("vip=\"{VIP}\"")
        ),
        Some(3.0),
        "{metrics}"
    );
    let text = agent.ok(&["autoscale", "status"]);
    assert!(text.contains("schedule      now 3..=3 backends"), "{text}");
    assert!(text.contains("active      \"sale\""), "{text}");

    // After the end: 4 connections need one backend at 4 each. The two with the fewest flows
    // drain (b1 and b2, one held connection each), their connections keep working, then they
    // leave once those close.
    thread::sleep(Duration::from_secs(
        u64::try_from(end - unix_now()).unwrap_or(0),
    ));
    assert_eq!(
        count_state(&backend_states(&agent), "up"),
        3,
        "kept to the end"
    );
    wait_for_pool(&agent, "b1 and b2 drain after the window", |s| {
        count_state(s, "up") == 1 && count_state(s, "draining") == 2
    });
    assert!(unix_now() >= end, "drained only after the end");
    for (conn, ident) in &mut kept {
        let answer = conn
            .ask("still there?")
            .unwrap_or_else(|err| panic!("a held connection to {ident} broke: {err:#}"));
        assert_eq!(&answer, ident, "a held connection moved");
    }
    let (on_b0, on_standby): (Vec<_>, Vec<_>) = kept.into_iter().partition(|(_, i)| *i == ident(0));
    drop(on_standby);
    wait_for_pool(&agent, "the drained backends leave", |s| s.len() == 1);
    assert_eq!(
        backend_states(&agent)
            .get(&backend_addr(0).to_string())
            .map(String::as_str),
        Some("up")
    );
    let status = agent.autoscale();
    assert_eq!(status.standby.len(), 2, "{status:#?}");
    let schedule = status.schedule.expect("a schedule in the status");
    assert!(
        schedule.active.is_empty() && schedule.next.is_none(),
        "{schedule:#?}"
    );
    drop(on_b0);
    agent.stop(true);
}
