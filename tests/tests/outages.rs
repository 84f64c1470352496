//! The agent through outages: a reboot (restore onto a fresh program), a private mount
//! namespace, failed starts, a second agent, a stale socket, a full state disk, `kill -9` in
//! the middle of an apply. The state file, the data path and what the agent lists stay
//! consistent, and traffic through the VIP flows afterwards.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{
        Agent, BACKENDS, START_TIMEOUT, VIP, VIP_ADDR, backend_addr, bin, configuration, serve,
        strs, vip_args,
    },
    netns::{GW_CLIENT_IF, Topology, ident, run_bounded},
    traffic::spread,
};
use lb_user::api::StatsView;

/// What the data path holds, read from the pinned maps: every VIP entry (as `ADDR:PORT`, with
/// its table length), and the backend slots in use.
fn pinned_maps(pin_dir: &Path) -> (BTreeMap<String, u32>, usize) {
    use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
    use lb_common::maps::{BACKENDS_MAP, Backend, VIPS_MAP, VipKey, VipMeta};
    let open = |name: &str| {
        let path = pin_dir.join("maps").join(name);
        Map::from_map_data(
            MapData::from_pin(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display())),
        )
        .expect("pinned map")
    };
    let vips: BpfHashMap<MapData, VipKey, VipMeta> =
        open(VIPS_MAP).try_into().expect("VIPS is a hash map");
    let vips = vips
        .iter()
        .map(|entry| {
            let (key, meta) = entry.expect("reading VIPS");
            let addr: [u8; 4] = key.addr[..4].try_into().expect("4 bytes");
            let vip = SocketAddr::new(Ipv4Addr::from(addr).into(), u16::from_be_bytes(key.port));
            (vip.to_string(), meta.table_len)
        })
        .collect();
    let backends: Array<MapData, Backend> =
        open(BACKENDS_MAP).try_into().expect("BACKENDS is an array");
    let used = backends
        .iter()
        .filter(|b| b.as_ref().expect("reading BACKENDS").state != 0)
        .count();
    (vips, used)
}

/// What the agent lists, in the terms of [`pinned_maps`]: every VIP (with its table length
/// from the data path's point of view: non-zero if it has backends taking flows), and the
/// number of backends.
fn listed(agent: &Agent) -> (BTreeSet<String>, usize) {
    let vips = agent.vips();
    let names = vips
        .iter()
        .map(|v| {
            v.vip
                .trim_end_matches("/tcp")
                .trim_end_matches("/udp")
                .to_owned()
        })
        .collect();
    let backends = vips.iter().map(|v| v.backends.len()).sum();
    (names, backends)
}

/// A reboot detaches the program and empties bpffs: the agent restores its saved state onto
/// a fresh program, which carries the VIP's traffic as soon as the agent says it is ready.
#[test]
#[ignore = "needs root"]
fn restore_onto_a_fresh_program_carries_traffic() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));
    let before = configuration(&agent.vips());
    spread(&topo.client, VIP_ADDR, 10, "before");
    agent.stop(false);
    // As a reboot does: the pins, and with them the program and its maps, are gone.
    fs::remove_dir_all(&agent.pin_dir).expect("removing the pins");
    for iface in topo.gateway_ifaces() {
        assert!(topo.xdp_detached_soon(&iface), "{iface}: still attached");
    }
    agent.start(&[]);
    assert!(
        agent.log().contains("restoring a fresh program"),
        "{}",
        agent.log()
    );
    assert_eq!(configuration(&agent.vips()), before);
    let tally = spread(&topo.client, VIP_ADDR, 90, "after");
    assert_eq!(tally.values().sum::<usize>(), 90, "{tally:?}");
    assert_eq!(
        tally.len(),
        BACKENDS,
        "every backend takes flows: {tally:?}"
    );
    let stats: StatsView = agent.json(&["stats"]);
    let dropped = stats
        .counters
        .iter()
        .find(|(name, _)| name == "drop_no_backend")
        .map(|&(_, count)| count);
    assert_eq!(dropped, Some(0), "dropped as if the VIP had no backend");
    agent.stop(true);
}

/// `ip netns exec` gives the agent a private mount namespace, and so a bpffs that dies with
/// it: the agent says so at start, and its stop message says what really happens. An
/// ephemeral agent's stop says one thing, and it is true.
#[test]
#[ignore = "needs root"]
fn a_private_mount_namespace_is_warned_about_and_stop_messages_are_true() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let mut ip = Command::new("ip");
    ip.args(["netns", "exec", &topo.gateway.name, &bin()]);
    agent.start_in(ip, &strs(&vip_args()));
    let log = agent.log();
    assert!(log.contains("private to this mount namespace"), "{log}");
    assert!(
        log.contains("nsenter --net="),
        "the warning says how: {log}"
    );
    spread(&topo.client, VIP_ADDR, 10, "private");
    agent.stop(false);
    let log = agent.log();
    assert!(
        log.contains("the program is detached as the agent exits"),
        "{log}"
    );
    assert!(!log.contains("leaving the program attached"), "{log}");
    for iface in topo.gateway_ifaces() {
        assert!(
            topo.xdp_detached_soon(&iface),
            "{iface}: attached after the private-namespace agent exited"
        );
    }
    // The host's bpffs never saw the pins.
    assert!(!agent.pin_dir.exists());

    agent.start(&[&["--ephemeral"], &strs(&vip_args())[..]].concat());
    agent.stop(false);
    let log = agent.log();
    let stops: Vec<&str> = log.lines().filter(|l| l.contains("stopped")).collect();
    assert_eq!(stops.len(), 1, "one stop line: {log}");
    assert!(stops[0].contains("detached the program"), "{log}");
    assert!(!log.contains("leaving the program attached"), "{log}");
    for iface in topo.gateway_ifaces() {
        assert!(!topo.xdp_attached(&iface), "{iface}: attached");
    }
}

/// A start that fails (a mistyped interface, a corrupt state file, a second agent on the same
/// state file) leaves the state file as it was, so the next good start has everything.
#[test]
#[ignore = "needs root"]
fn a_failed_start_keeps_the_state_file() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));
    let before = configuration(&agent.vips());
    agent.stop(false);
    // With no pins, a failed start used to remove what it had made, the state file included.
    fs::remove_dir_all(&agent.pin_dir).expect("removing the pins");
    let saved = fs::read(agent.state_file()).expect("state file");

    let out = agent.start_fails(&["--iface", "nosuch0"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuch0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(agent.state_file()).ok(), Some(saved.clone()));
    assert!(!agent.pin_dir.exists(), "a failed start left pins");

    fs::write(agent.state_file(), b"{ not json").expect("corrupting");
    let out = agent.start_fails(&[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("state file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(agent.state_file()).ok().as_deref(),
        Some(&b"{ not json"[..])
    );
    fs::write(agent.state_file(), &saved).expect("repairing");

    agent.start(&[]);
    assert_eq!(configuration(&agent.vips()), before);
    // A second agent on the same state file, with pins and a socket of its own.
    let second_pins = PathBuf::from(format!("{}-second", agent.pin_dir.display()));
    let output = second_agent(&topo, &agent, &second_pins, &agent.state_file(), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a second agent started: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", agent.pid())),
        "the refusal names the running agent: {stderr}"
    );
    assert!(
        agent.state_file().exists(),
        "the second agent removed the state file"
    );
    assert_eq!(configuration(&agent.vips()), before);
    spread(&topo.client, VIP_ADDR, 30, "first");
    agent.stop(true);
}

/// A second agent on the same pin directory is refused, naming the first one's pid, and the
/// first one's traffic goes on untouched.
#[test]
#[ignore = "needs root"]
fn a_second_agent_on_the_same_pins_is_refused() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));
    let other = agent.dir.join("other");
    let output = second_agent(
        &topo,
        &agent,
        &agent.pin_dir,
        &other.join("state.json"),
        &["--vip", "198.19.0.7:80/tcp"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pin directory") && stderr.contains(&format!("pid {}", agent.pid())),
        "{stderr}"
    );
    assert!(!other.join("state.json").exists());
    let (pinned, _) = pinned_maps(&agent.pin_dir);
    assert_eq!(pinned.keys().collect::<Vec<_>>(), ["198.19.0.1:80"]);
    let tally = spread(&topo.client, VIP_ADDR, 60, "first");
    assert_eq!(tally.len(), BACKENDS, "{tally:?}");
    agent.stop(true);
}

/// `--socket PATH` replaces a socket that no agent serves, and nothing else.
#[test]
#[ignore = "needs root"]
fn the_socket_option_leaves_other_files_alone() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let mut agent = Agent::new(&topo);
    fs::write(agent.socket(), "precious").expect("writing");
    let out = agent.start_fails(&strs(&vip_args()));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(agent.socket()).ok().as_deref(),
        Some("precious")
    );
    assert!(
        !agent.pin_dir.exists(),
        "the refused start pinned something"
    );
    fs::remove_file(agent.socket()).expect("removing");
    // A socket left by an agent that was killed: nobody answers there, so it is replaced.
    drop(std::os::unix::net::UnixListener::bind(agent.socket()).expect("binding"));
    agent.start(&strs(&vip_args()));
    agent.ok(&["status"]);
    agent.stop(true);
    assert!(!agent.socket().exists(), "the agent left its socket");
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(path: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&path).expect("mount point");
        lb_tests::netns::run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&path),
        )
        .expect("mounting a tmpfs");
        Self(path)
    }

    /// Fills it up with the file `name`.
    fn fill(&self, name: &str) {
        use std::io::Write as _;
        let mut file = fs::File::create(self.0.join(name)).expect("filler");
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// With the state directory on a full filesystem, a change is refused with the cause and the
/// data path stays as it was; once there is room, the same change is made and kept.
#[test]
#[ignore = "needs root"]
fn a_change_that_cannot_be_saved_changes_nothing() {
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let disk = Tmpfs::new(agent.dir.join("state"), "256k");
    agent.state_file = disk.0.join("state.json");
    let two = format!("--backend={VIP}={}", backend_addr(1));
    agent.start(&[
        "--vip",
        VIP,
        "--backend",
        &format!("{VIP}={}", backend_addr(0)),
        &two,
    ]);
    let before = (configuration(&agent.vips()), pinned_maps(&agent.pin_dir));
    let third = backend_addr(2).to_string();

    disk.fill("filler");
    let out = agent.cli(&["backend", "add", VIP, &third]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 5: the agent failed at the request (HTTP 5xx).
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(
        (configuration(&agent.vips()), pinned_maps(&agent.pin_dir)),
        before,
        "a refused change changed the agent or the data path"
    );
    let tally = spread(&topo.client, VIP_ADDR, 60, "full");
    assert!(!tally.contains_key(&ident(2)), "b2 took flows: {tally:?}");
    let mut left: Vec<String> = fs::read_dir(&disk.0)
        .expect("state dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["filler", "state.json", "state.json.lock"],
        "a partial state file was left"
    );

    fs::remove_file(disk.0.join("filler")).expect("freeing space");
    agent.ok(&["backend", "add", VIP, &third]);
    let after = configuration(&agent.vips());
    assert_ne!(after, before.0);
    agent.stop(false);
    agent.start(&[]);
    assert_eq!(configuration(&agent.vips()), after);
    let tally = spread(&topo.client, VIP_ADDR, 90, "room");
    assert_eq!(tally.len(), BACKENDS, "{tally:?}");
    agent.stop(true);
}

/// `kill -9` in the middle of an `apply` that adds many VIPs, then a restart: what the data
/// path holds is exactly what the agent lists (no ghost VIP or backend it cannot see or
/// delete), and traffic flows.
#[test]
#[ignore = "needs root"]
fn kill_9_during_apply_leaves_no_ghosts() {
    const ADDED: usize = 60;
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));
    let mut config = String::new();
    for i in 0..ADDED {
        config += &format!(
            "[[vip]]\naddress = \"198.19.1.{}:80\"\nprotocol = \"tcp\"\n\
             [[vip.backend]]\naddress = \"{}\"\n",
            i + 1,
            backend_addr(i % BACKENDS)
        );
    }
    config += &format!("[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n");
    for i in 0..BACKENDS {
        config += &format!("[[vip.backend]]\naddress = \"{}\"\n", backend_addr(i));
    }
    let file = agent.file("many.toml", &config);
    let mut apply = Command::new(bin())
        .arg("--socket")
        .arg(agent.socket())
        .args(["apply", "-f"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("xdplb apply");
    // Kill the agent while the data path holds some of the new VIPs but not all.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (pinned, _) = pinned_maps(&agent.pin_dir);
        if pinned.len() > 1 && pinned.len() < ADDED + 1 {
            eprintln!(
                "killing the agent with {} VIPs in the data path",
                pinned.len()
            );
            break;
        }
        assert!(
            pinned.len() <= ADDED && Instant::now() < deadline,
            "the apply was never seen half-way ({} VIPs in the data path)",
            pinned.len()
        );
        thread::sleep(Duration::from_millis(1));
    }
    let mut daemon = agent.daemon.take().expect("running");
    daemon.kill().expect("kill -9");
    daemon.wait().expect("reaping");
    let _ = apply.wait();

    agent.start(&[]);
    let (vips, backends) = listed(&agent);
    let (pinned, used) = pinned_maps(&agent.pin_dir);
    assert_eq!(
        pinned.keys().cloned().collect::<BTreeSet<_>>(),
        vips,
        "the data path's VIPs are the agent's"
    );
    assert_eq!(used, backends, "the data path's backends are the agent's");
    assert!(
        pinned.values().all(|&len| len > 0),
        "every VIP has its table: {pinned:?}"
    );
    let tally = spread(&topo.client, VIP_ADDR, 60, "after");
    assert_eq!(tally.len(), BACKENDS, "{tally:?}");
    // Whatever the kill left, the agent can remove it all.
    for vip in &vips {
        agent.ok(&["vip", "del", &format!("{vip}/tcp")]);
    }
    assert_eq!(pinned_maps(&agent.pin_dir), (BTreeMap::new(), 0));
    agent.stop(true);
}

/// Runs a second `xdplb run` beside `agent`, with a socket of its own, the pin directory
/// `pin_dir` and the state file `state_file`, on the client-facing interface; its output.
fn second_agent(
    topo: &Topology,
    agent: &Agent,
    pin_dir: &Path,
    state_file: &Path,
    extra: &[&str],
) -> std::process::Output {
    let other = agent.dir.join("other");
    fs::create_dir_all(&other).expect("dir");
    run_bounded(
        topo.gateway
            .command(&bin())
            .arg("--socket")
            .arg(other.join("xdplb.sock"))
            .args(["run", "--pin-dir"])
            .arg(pin_dir)
            .arg("--state-file")
            .arg(state_file)
            .args(["--iface", GW_CLIENT_IF])
            .args(extra),
        START_TIMEOUT,
    )
}
