//! The agent's life: a restart that leaves the program attached under long-lived
//! connections, SIGHUP reloads, `--config` as the source of truth at start, `check` and
//! `config export`, settings applied live, interfaces following the command line, an upgrade
//! in place under load, a non-root user with the documented capabilities, and systemd
//! notifications.

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{
        AGENT_TIMEOUT, Agent, BACKENDS, CLI_TIMEOUT, START_TIMEOUT, VIP, VIP_ADDR, backend_addr,
        bin, configuration, offload_off, path_str, serve, strs, vip_args,
    },
    netns::{Topology, ident, run_bounded},
    traffic::{chatter, dialer, hold, spread},
};

/// `xdplb stop` leaves the program attached: 50 long-lived connections keep exchanging lines
/// while no agent runs and after a new agent adopts the pinned program and restores the
/// state; new connections succeed throughout. `stop --detach` then removes everything.
#[test]
#[ignore = "needs root"]
fn restart_keeps_long_lived_connections() {
    const HELD: usize = 50;
    /// How long no agent runs at all.
    const GAP: Duration = Duration::from_millis(500);
    let topo = Topology::new(BACKENDS).expect("topology");
    offload_off(&topo);
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));
    let before = configuration(&agent.vips());

    let epoch = Instant::now();
    let held = hold(&topo.client, VIP_ADDR, HELD);
    let chats = chatter(held, epoch);
    let dials = dialer(&topo.client, VIP_ADDR, Duration::from_millis(20), epoch);
    thread::sleep(Duration::from_millis(500));

    let packets = agent.vips()[0].packets;
    let stop_at = Instant::now();
    agent.stop(false);
    let exited = stop_at.elapsed();
    assert!(
        agent.log().contains("leaving the program attached"),
        "{}",
        agent.log()
    );
    for iface in topo.gateway_ifaces() {
        assert!(
            topo.xdp_attached(&iface),
            "{iface}: detached by a plain stop"
        );
    }
    assert!(agent.pin_dir.exists(), "a plain stop removed the pins");
    let progress = (chats.progress(), dials.progress());
    thread::sleep(GAP);
    let without_agent = (chats.progress() - progress.0, dials.progress() - progress.1);

    agent.start(&[]);
    let ready = stop_at.elapsed();
    let restarted = Instant::now();
    let log = agent.log();
    assert!(log.contains("adopting"), "{log}");
    assert_eq!(
        configuration(&agent.vips()),
        before,
        "the restarted agent's VIPs"
    );
    // The adopted maps, not fresh ones: the counters went on.
    let adopted = agent.vips()[0].packets;
    assert!(
        adopted > packets,
        "the VIP counted {packets} packets before the restart, {adopted} after"
    );
    thread::sleep(Duration::from_millis(2000));
    let after_restart = chats.progress() - progress.0 - without_agent.0;

    let chats = chats.finish();
    let dials = dials.finish().remove(0);
    eprintln!(
        "restart: old agent gone {exited:?} after `stop`, new one ready {ready:?} after it; \
         with no agent for {GAP:?}: {} exchanges on held connections and {} new connections; \
         {after_restart} exchanges in the 2 s after the restart; {} new connections in all",
        without_agent.0,
        without_agent.1,
        dials.answered.len()
    );
    let failures: Vec<&String> = chats.iter().filter_map(|c| c.failure.as_ref()).collect();
    assert!(
        failures.is_empty(),
        "{} of {HELD} held connections failed: {failures:?}",
        failures.len()
    );
    assert!(
        dials.failures.is_empty(),
        "new connections failed around the restart: {:?}",
        dials.failures
    );
    assert!(
        without_agent.0 >= HELD && without_agent.1 > 0,
        "traffic stalled while no agent ran: {without_agent:?}"
    );
    assert!(after_restart >= HELD, "traffic stalled after the restart");
    let window = dials
        .answered
        .iter()
        .filter(|(at, _)| *at >= stop_at && *at <= restarted)
        .count();
    assert!(window > 0, "no new connection in the restart window");
    assert!(
        dials
            .answered
            .iter()
            .all(|(_, ident)| (0..BACKENDS).any(|i| *ident == lb_tests::netns::ident(i))),
        "unexpected answers: {:?}",
        dials.answered
    );

    agent.stop(true);
    for iface in topo.gateway_ifaces() {
        assert!(
            !topo.xdp_attached(&iface),
            "{iface}: still attached after --detach"
        );
    }
    assert!(
        !agent.pin_dir.exists(),
        "{} left behind",
        agent.pin_dir.display()
    );
    assert!(
        !agent.state_file().exists(),
        "{} left behind",
        agent.state_file().display()
    );
}

/// A config file with the VIP and backends `b0..` at `weights` (and `extra` TOML after each
/// backend list).
fn weights_config(weights: &[u32], extra: &str) -> String {
    let mut text = format!("[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n{extra}\n");
    for (i, w) in weights.iter().enumerate() {
        text += &format!(
            "[[vip.backend]]\naddress = \"{}\"\nweight = {w}\n",
            backend_addr(i)
        );
    }
    text
}

/// Waits (bounded) until the agent's log has `count` lines containing `what`.
fn wait_for_log(agent: &Agent, what: &str, count: usize) {
    let deadline = Instant::now() + AGENT_TIMEOUT;
    while agent.log().matches(what).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in the log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn sighup(agent: &Agent) {
    let pid = nix::unistd::Pid::from_raw(agent.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
}

/// SIGHUP reloads `--config`: the plan is logged line by line and the new weights are live; a
/// bad file is refused with the field named, and nothing changes. Without `--config`, SIGHUP
/// is logged and the agent runs on.
#[test]
#[ignore = "needs root"]
fn sighup_reloads_the_config_file() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let file = agent.file("xdplb.toml", &weights_config(&[1, 1, 1], ""));
    agent.start(&["--config", &path_str(&file)]);
    assert!(agent.log().contains("config"), "{}", agent.log());

    agent.file("xdplb.toml", &weights_config(&[3, 1, 0], ""));
    sighup(&agent);
    wait_for_log(&agent, "SIGHUP: reloading", 1);
    let b0 = format!("~ backend {} of {VIP}: weight 1 -> 3", backend_addr(0));
    let b2 = format!("~ backend {} of {VIP}: weight 1 -> 0", backend_addr(2));
    wait_for_log(&agent, &b2, 1);
    assert!(agent.log().contains(&b0), "{}", agent.log());
    let weights: Vec<u32> = agent.backends().values().map(|b| b.weight).collect();
    assert_eq!(weights, [3, 1, 0]);
    let tally = spread(&topo.client, VIP_ADDR, 100, "reloaded");
    assert!(
        !tally.contains_key(&ident(2)),
        "weight 0 took flows: {tally:?}"
    );
    assert!(
        tally[&ident(0)] > tally[&ident(1)],
        "weights 3:1: {tally:?}"
    );
    let before = configuration(&agent.vips());

    agent.file("xdplb.toml", &weights_config(&[2, 99_999, 1], ""));
    sighup(&agent);
    wait_for_log(&agent, "reload refused, nothing changed", 1);
    assert!(agent.log().contains("backend[1].weight"), "{}", agent.log());
    assert_eq!(configuration(&agent.vips()), before);
    agent.stop(false);

    agent.start(&strs(&vip_args()));
    sighup(&agent);
    wait_for_log(&agent, "nothing to reload", 1);
    let exited = agent
        .daemon
        .as_mut()
        .and_then(|d| d.try_wait().expect("wait"));
    assert!(exited.is_none(), "SIGHUP killed the agent: {exited:?}");
    spread(&topo.client, VIP_ADDR, 10, "after-hup");
    agent.stop(true);
}

/// With `--config`, the file wins over the saved state at start: changes made with the CLI
/// are undone (the plan is logged), unless kept with `xdplb config export`, which gives a file
/// that `xdplb check` accepts and `apply` finds nothing to change in.
#[test]
#[ignore = "needs root"]
fn the_config_file_wins_over_saved_state_at_start() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let file = agent.file(
        "xdplb.toml",
        &weights_config(
            &[1, 1],
            "[vip.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n",
        ),
    );
    let file = path_str(&file);
    agent.start(&["--config", &file]);
    let from_file = configuration(&agent.vips());
    agent.ok(&["backend", "add", VIP, &backend_addr(2).to_string()]);
    agent.ok(&[
        "backend",
        "set",
        VIP,
        &backend_addr(0).to_string(),
        "--weight",
        "5",
    ]);
    let changed = configuration(&agent.vips());

    let exported = agent.ok(&["config", "export"]);
    let export = agent.file("export.toml", &exported);
    let check = agent.ok(&["check", "-f", &path_str(&export)]);
    assert!(check.contains("ok (1 VIPs, 3 backends)"), "{check}");
    assert!(
        exported.contains("kind = \"tcp\""),
        "health kept: {exported}"
    );
    assert_eq!(
        agent.ok(&["apply", "-f", &path_str(&export), "--dry-run"]),
        "no changes\n"
    );

    agent.stop(false);
    agent.start(&["--config", &file]);
    let log = agent.log();
    assert!(
        log.contains(&format!("- backend {} from {VIP}", backend_addr(2))),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "~ backend {} of {VIP}: weight 5 -> 1",
            backend_addr(0)
        )),
        "{log}"
    );
    assert_eq!(configuration(&agent.vips()), from_file);
    agent.stop(false);
    // The exported file keeps the CLI's changes.
    agent.start(&["--config", &path_str(&export)]);
    assert_eq!(configuration(&agent.vips()), changed);
    // `vip del` forgets the VIP's settings with it: the same address added again starts
    // without the old health check.
    agent.ok(&["vip", "del", VIP]);
    agent.ok(&["vip", "add", VIP]);
    let exported = agent.ok(&["config", "export"]);
    assert!(
        !exported.contains("kind = \"tcp\""),
        "the deleted VIP's health check came back: {exported}"
    );
    agent.stop(true);
}

/// `apply` shows health, autoscaling and timeout changes in its plan and applies timeouts
/// live; a capacity change is refused with what it takes.
#[test]
#[ignore = "needs root"]
fn apply_plans_settings_and_applies_timeouts_live() {
    use aya::maps::{Array, Map, MapData};
    use lb_common::maps::{SETTINGS_MAP, Settings};
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let file = agent.file("a.toml", &weights_config(&[1, 1, 1], ""));
    agent.start(&["--config", &path_str(&file)]);
    let settings = || -> Settings {
        let path = agent.pin_dir.join("maps").join(SETTINGS_MAP);
        let map: Array<MapData, Settings> =
            Map::from_map_data(MapData::from_pin(&path).expect("pinned settings"))
                .expect("map")
                .try_into()
                .expect("array");
        map.get(&0, 0).expect("settings")
    };
    let text = format!(
        "[conntrack]\ntcp-established-timeout = \"5m\"\n\n{}",
        weights_config(
            &[1, 1, 1],
            "[vip.health]\nkind = \"http\"\nhttp-path = \"/up\"\nrise = 1\n"
        )
    );
    let b = agent.file("b.toml", &text);
    let dry = agent.ok(&["apply", "-f", &path_str(&b), "--dry-run"]);
    assert!(
        dry.contains("~ conntrack: tcp-established-timeout 15m -> 5m"),
        "{dry}"
    );
    assert!(dry.contains(&format!("~ health of {VIP}: ")), "{dry}");
    assert!(dry.contains("http-path - -> /up"), "{dry}");
    assert!(dry.contains("kind none -> http"), "{dry}");
    assert!(dry.contains("rise 2 -> 1"), "{dry}");
    assert_eq!(
        settings().timeouts.tcp_established_ns,
        15 * 60 * 1_000_000_000,
        "a dry run changed the timeouts"
    );
    agent.ok(&["apply", "-f", &path_str(&b)]);
    assert_eq!(
        settings().timeouts.tcp_established_ns,
        5 * 60 * 1_000_000_000
    );

    let c = agent.file(
        "c.toml",
        &text.replace("[conntrack]\n", "[conntrack]\ncapacity = 5000\n"),
    );
    let out = agent.cli(&["apply", "-f", &path_str(&c)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "refused by the agent: {stderr}");
    assert!(stderr.contains("conntrack.capacity"), "{stderr}");
    assert!(
        stderr.contains("xdplb stop --detach"),
        "says what it takes: {stderr}"
    );
    agent.stop(true);
}

/// The interfaces follow the command line: restarted with fewer `--iface`, the agent
/// detaches the others and says so; `xdplb iface attach/detach` change them live.
#[test]
#[ignore = "needs root"]
fn interfaces_follow_the_command_line() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));
    agent.stop(false);
    let all = topo.gateway_ifaces();
    let (kept, dropped) = all.split_at(2);
    agent.ifaces = kept.to_vec();
    agent.start(&[]);
    for iface in dropped {
        assert!(
            agent
                .log()
                .contains(&format!("{iface}: detached (not given with --iface)")),
            "{}",
            agent.log()
        );
        assert!(!topo.xdp_attached(iface), "{iface} still attached");
    }
    for iface in kept {
        assert!(topo.xdp_attached(iface), "{iface} detached");
    }
    let mut listed: Vec<String> = agent
        .ok(&["iface", "list"])
        .lines()
        .map(String::from)
        .collect();
    listed.sort();
    let mut expected = kept.to_vec();
    expected.sort();
    assert_eq!(listed, expected);

    agent.ok(&["iface", "attach", &dropped[0]]);
    assert!(topo.xdp_attached(&dropped[0]));
    let out = agent.cli(&["iface", "attach", "nosuch0"]);
    assert_eq!(out.status.code(), Some(4), "refused by the agent");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch0"));
    agent.ok(&["iface", "detach", &dropped[0]]);
    assert!(!topo.xdp_attached(&dropped[0]));
    let out = agent.cli(&["iface", "detach", &dropped[0]]);
    assert_eq!(out.status.code(), Some(4), "refused by the agent");
    agent.stop(true);
}

/// `xdplb check -f FILE` needs no agent: exit 0 for a good file, 2 with every error on a line
/// of its own.
#[test]
fn check_validates_a_config_without_an_agent() {
    let dir = std::env::temp_dir().join(format!("xdplb-check-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("dir");
    let good = dir.join("good.toml");
    fs::write(&good, weights_config(&[1, 2], "")).expect("write");
    let out = run_bounded(
        Command::new(bin()).args(["check", "-f"]).arg(&good),
        CLI_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 VIPs, 2 backends)"));
    let bad = dir.join("bad.toml");
    fs::write(
        &bad,
        weights_config(
            &[99_999, 1],
            "ring-size = 10\n[vip.health]\nkind = \"tcp\"\ninterval = \"fast\"\n",
        ),
    )
    .expect("write");
    let out = run_bounded(
        Command::new(bin()).args(["check", "-f"]).arg(&bad),
        CLI_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "one line per error: {stderr}");
    assert!(
        lines.iter().all(|l| l.starts_with("xdplb: error: ")),
        "{stderr}"
    );
    for field in ["ring-size", "health.interval", "backend[0].weight"] {
        assert!(
            lines.iter().any(|l| l.contains(field)),
            "no line names {field}: {stderr}"
        );
    }
}

/// The ids of the pinned program and connection table.
fn pinned_ids(pin_dir: &Path) -> (u32, u32) {
    use aya::{maps::MapInfo, programs::Xdp};
    let program = Xdp::from_pin(
        pin_dir.join("prog"),
        aya_obj::programs::XdpAttachType::Interface,
    )
    .expect("pinned program");
    let conntrack = MapInfo::from_pin(pin_dir.join("maps").join(lb_common::maps::CONNTRACK_MAP))
        .expect("pinned conntrack");
    (program.info().expect("program info").id(), conntrack.id())
}

/// An upgrade in place under load: 50 long-lived connections and a new one every 20 ms go on
/// without a failed exchange while a new agent replaces the pinned program (forced with
/// `--replace-program`, then because the pins are of an older layout), keeping the connection
/// table. Pins of a newer layout are refused in one line.
#[test]
#[ignore = "needs root"]
fn replacing_the_program_under_load_fails_no_exchange() {
    const HELD: usize = 50;
    let topo = Topology::new(BACKENDS).expect("topology");
    offload_off(&topo);
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));
    let epoch = Instant::now();
    let chats = chatter(hold(&topo.client, VIP_ADDR, HELD), epoch);
    let dials = dialer(&topo.client, VIP_ADDR, Duration::from_millis(20), epoch);
    thread::sleep(Duration::from_millis(500));

    let (program, conntrack) = pinned_ids(&agent.pin_dir);
    agent.stop(false);
    agent.start(&["--replace-program"]);
    let log = agent.log();
    assert!(log.contains("replacing the pinned program"), "{log}");
    assert!(!log.contains("is made anew"), "every map fits: {log}");
    let (replaced, kept) = pinned_ids(&agent.pin_dir);
    assert_ne!(replaced, program, "the program was not replaced");
    assert_eq!(kept, conntrack, "the connection table was not kept");
    thread::sleep(Duration::from_millis(1000));

    // Pins from before the layout was versioned: an upgrade replaces the program by itself.
    agent.stop(false);
    for entry in fs::read_dir(&agent.pin_dir).expect("pin dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("layout-") || name.starts_with("object-") {
            fs::remove_dir(entry.path()).expect("removing a marker");
        }
    }
    agent.start(&[]);
    assert!(
        agent
            .log()
            .contains("replacing the pinned program (pin layout 0"),
        "{}",
        agent.log()
    );
    let (upgraded, kept) = pinned_ids(&agent.pin_dir);
    assert_ne!(upgraded, replaced);
    assert_eq!(kept, conntrack);
    thread::sleep(Duration::from_millis(1000));
    let chats = chats.finish();
    let dials = dials.finish().remove(0);

    let failures: Vec<&String> = chats.iter().filter_map(|c| c.failure.as_ref()).collect();
    assert!(failures.is_empty(), "held connections failed: {failures:?}");
    assert!(
        dials.failures.is_empty(),
        "new connections failed: {:?}",
        dials.failures
    );
    assert!(
        dials.answered.len() > 50,
        "{} new connections",
        dials.answered.len()
    );
    for iface in topo.gateway_ifaces() {
        assert!(topo.xdp_attached(&iface), "{iface}: detached");
    }

    // A connection table that does not fit the new program cannot be carried over: refused in
    // one line that names it, and nothing changes.
    agent.stop(false);
    let out = agent.start_fails(&["--replace-program", "--conntrack-capacity", "5000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("map CONNTRACK") && stderr.contains("xdplb stop --detach"),
        "{stderr}"
    );
    assert_eq!(pinned_ids(&agent.pin_dir), (upgraded, conntrack));

    // A newer layout than this agent knows is refused, and left as it is.
    fs::create_dir(agent.pin_dir.join("layout-99")).expect("marker");
    let out = agent.start_fails(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("pin layout 99"), "{stderr}");
    assert_eq!(pinned_ids(&agent.pin_dir).0, upgraded);
    fs::remove_dir(agent.pin_dir.join("layout-99")).expect("marker");
    agent.start(&[]);
    agent.stop(true);
}

/// A non-root user holding exactly the documented capabilities (CAP_BPF, CAP_NET_ADMIN,
/// CAP_PERFMON) runs the agent; with one of them missing, the start fails with one line that
/// names it.
#[test]
#[ignore = "needs root"]
fn a_non_root_user_with_the_documented_capabilities_runs_the_agent() {
    const NOBODY: u32 = 65_534;
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    // What a package sets up for its user: its own state, socket and pin directories.
    fs::create_dir_all(&agent.pin_dir).expect("pin dir");
    for path in [&agent.dir, &agent.pin_dir] {
        let owner = Some(nix::unistd::Uid::from_raw(NOBODY));
        let group = Some(nix::unistd::Gid::from_raw(NOBODY));
        nix::unistd::chown(path, owner, group).expect("chown");
    }
    let as_nobody = |caps: &str| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", topo.gateway.name))
            .arg("setpriv")
            .args([
                "--reuid",
                &NOBODY.to_string(),
                "--regid",
                &NOBODY.to_string(),
            ])
            .args(["--clear-groups", "--inh-caps", &format!("-all,{caps}")])
            .args(["--ambient-caps", &format!("-all,{caps}")])
            .args(["--bounding-set", &format!("-all,{caps}")])
            .arg("--")
            .arg(bin());
        cmd
    };
    let run_args = agent.run_args(&strs(&vip_args()));
    let out = run_bounded(as_nobody("+bpf,+net_admin").args(&run_args), START_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("CAP_PERFMON"), "{stderr}");

    agent.start_in(as_nobody("+bpf,+net_admin,+perfmon"), &strs(&vip_args()));
    let status = fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&NOBODY.to_string())),
        "{status}"
    );
    let tally = spread(&topo.client, VIP_ADDR, 30, "nobody");
    assert_eq!(tally.len(), BACKENDS, "{tally:?}");
    agent.ok(&[
        "backend",
        "set",
        VIP,
        &backend_addr(0).to_string(),
        "--weight",
        "2",
    ]);
    agent.stop(false);
    agent.start_in(as_nobody("+bpf,+net_admin,+perfmon"), &[]);
    assert!(agent.log().contains("adopting"), "{}", agent.log());
    agent.stop(true);
}

/// Under systemd (`Type=notify`), the agent says READY=1 once it serves, RELOADING=1 and then
/// READY=1 around a reload, STOPPING=1 when it stops.
#[test]
#[ignore = "needs root"]
fn the_agent_notifies_systemd() {
    use std::os::unix::net::UnixDatagram;
    let topo = Topology::new(BACKENDS).expect("topology");
    let mut agent = Agent::new(&topo);
    let notify_path = agent.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(AGENT_TIMEOUT))
        .expect("timeout");
    let next = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let file = agent.file("xdplb.toml", &weights_config(&[1, 1, 1], ""));
    let mut cmd = topo.gateway.command(&bin());
    cmd.env("NOTIFY_SOCKET", &notify_path);
    agent.start_in(cmd, &["--config", &path_str(&file)]);
    assert_eq!(next(), "READY=1\n");
    sighup(&agent);
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1\n");
    agent.stop(false);
    assert_eq!(next(), "STOPPING=1\n");
    agent.start(&[]);
    agent.stop(true);
}
