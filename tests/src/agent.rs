//! The agent in a topology: `xdplb run` in the gateway namespace, driven by `xdplb` commands,
//! with the conventions of the agent tests (the VIP 198.19.0.1:80/tcp, backends answering as
//! `b0`, `b1`, ... on port 8080).
//!
//! Each [`Agent`] has its own API socket, pin dir (`/sys/fs/bpf/xdplb-test-*`) and state file;
//! dropping it stops the daemon with `xdplb stop --detach` (or kills it) and removes what it
//! left, also when the test fails. Every wait has a deadline.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use lb_user::{
    api::{BackendView, VipView},
    autoscale::live::Status as AutoscaleStatus,
};
use serde::de::DeserializeOwned;

use crate::netns::{HOST_IF, Netns, Server, Topology, ident, net_v4, run_bounded};

/// The VIP the agent tests balance.
pub const VIP: &str = "198.19.0.1:80/tcp";
/// [`VIP`]'s address and port.
pub const VIP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)), 80);
/// The port the backends' servers listen on.
pub const BACKEND_PORT: u16 = 8080;
/// Backends of the agent tests' topologies (unless a test says otherwise).
pub const BACKENDS: usize = 3;
/// Longest a CLI command may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the agent may take to stop, or to answer.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the agent may take to start: the kernel verifies the program at every fresh load
/// (a second or two alone, far more while other tests load theirs on the same two cores).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT_AGENT: AtomicUsize = AtomicUsize::new(0);

/// One test's agent: its socket, pin dir, state file, logs and config files, and the daemon
/// (`xdplb run` in the gateway namespace) while it runs. Dropping it stops the daemon with
/// `xdplb stop --detach` (killing it if that fails) and removes the pins and files.
pub struct Agent {
    gateway: Netns,
    /// The interfaces `xdplb run` is given (`--iface`): every gateway interface at first.
    pub ifaces: Vec<String>,
    /// Socket, state file, logs and config files.
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub state_file: PathBuf,
    /// The running daemon.
    pub daemon: Option<Child>,
    /// Daemons started so far; the log of the `n`th is `run{n}.log`.
    runs: usize,
}

impl Agent {
    pub fn new(topo: &Topology) -> Self {
        Self::in_namespace(&topo.gateway, topo.gateway_ifaces())
    }

    /// An agent running in `gateway`, on `ifaces`.
    pub fn in_namespace(gateway: &Netns, ifaces: Vec<String>) -> Self {
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_AGENT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("xdplb-agent-test-{id}"));
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        Self {
            gateway: gateway.clone(),
            ifaces,
            state_file: dir.join("state.json"),
            dir,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/xdplb-test-{id}")),
            daemon: None,
            runs: 0,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("xdplb.sock")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_file.clone()
    }

    /// Writes `text` to the file `name` in the test's directory.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        path
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.join(format!("run{run}.log"))
    }

    /// What the current (or last) daemon logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path(self.runs)).unwrap_or_default()
    }

    /// Starts `xdplb run` on every gateway interface, with this agent's socket, pin dir and
    /// state file and `extra` arguments, and waits until it says it is ready.
    pub fn start(&mut self, extra: &[&str]) {
        self.start_in(self.gateway.command(&bin()), extra);
    }

    /// The arguments of `xdplb run` with this agent's socket, pin dir, state file and every
    /// gateway interface, then `extra`.
    pub fn run_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["--socket".into(), path_str(&self.socket()), "run".into()];
        args.extend(["--pin-dir".into(), path_str(&self.pin_dir)]);
        args.extend(["--state-file".into(), path_str(&self.state_file)]);
        for iface in &self.ifaces {
            args.extend(["--iface".into(), iface.clone()]);
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    }

    /// [`Agent::start`] with `cmd` (which runs the binary in the gateway namespace).
    pub fn start_in(&mut self, mut cmd: Command, extra: &[&str]) {
        assert!(self.daemon.is_none(), "an agent is already running");
        self.runs += 1;
        let log_path = self.log_path(self.runs);
        let log = fs::File::create(&log_path)
            .unwrap_or_else(|err| panic!("{}: {err}", log_path.display()));
        cmd.args(self.run_args(extra))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        self.daemon = Some(cmd.spawn().expect("starting xdplb run"));
        let deadline = Instant::now() + START_TIMEOUT;
        while !(self.log().contains("agent ready") && UnixStream::connect(self.socket()).is_ok()) {
            let exited = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().expect("waiting for xdplb"));
            if let Some(status) = exited {
                self.daemon = None;
                panic!(
                    "xdplb run exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "xdplb run was not ready within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `xdplb run` with this agent's arguments and `extra` in the gateway namespace,
    /// expecting it to fail at start; returns its output.
    pub fn start_fails(&self, extra: &[&str]) -> Output {
        let output = run_bounded(
            self.gateway.command(&bin()).args(self.run_args(extra)),
            START_TIMEOUT,
        );
        assert!(
            !output.status.success(),
            "xdplb run {extra:?} did not fail: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("a running agent").id()
    }

    /// Runs `xdplb --socket SOCKET args...` (on the host: the socket is a file).
    pub fn cli(&self, args: &[&str]) -> Output {
        run_bounded(
            Command::new(bin())
                .arg("--socket")
                .arg(self.socket())
                .args(args),
            CLI_TIMEOUT,
        )
    }

    /// Runs a CLI command that must succeed, and returns its output.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "xdplb {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Runs a CLI command with `-o json` that must succeed, and reads its output as a `T`.
    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let text = self.ok(&[&["-o", "json"], args].concat());
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("xdplb {args:?}: {err} in {text}"))
    }

    /// `xdplb vip list -o json`.
    pub fn vips(&self) -> Vec<VipView> {
        self.json(&["vip", "list"])
    }

    /// `GET /v1/vips` straight over the API socket, from this process: what [`Agent::vips`]
    /// shows, without starting the CLI. For polls that time the agents: a CLI run costs tens
    /// of milliseconds, several times that on a loaded machine, and a poll of three gateways
    /// through it would measure mostly itself.
    pub fn vips_now(&self) -> Vec<VipView> {
        let mut stream = UnixStream::connect(self.socket()).expect("the agent's API socket");
        stream
            .set_read_timeout(Some(AGENT_TIMEOUT))
            .expect("a read timeout");
        stream
            .write_all(b"GET /v1/vips HTTP/1.1\r\nHost: xdplb\r\nConnection: close\r\n\r\n")
            .expect("sending the request");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("reading the answer");
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
        serde_json::from_str(body).unwrap_or_else(|err| panic!("GET /v1/vips: {err} in {body}"))
    }

    /// `xdplb backend list VIP -o json`, by backend address.
    pub fn backends(&self) -> BTreeMap<String, BackendView> {
        self.json::<Vec<BackendView>>(&["backend", "list", VIP])
            .into_iter()
            .map(|b| (b.address.to_string(), b))
            .collect()
    }

    /// Polls `backend list` until `ready` holds for backend `addr`, until `limit` after
    /// `since`; returns when it did, measured from `since`, or the last view if it never did.
    pub fn wait_for_backend(
        &self,
        addr: SocketAddr,
        since: Instant,
        limit: Duration,
        ready: impl Fn(&BackendView) -> bool,
    ) -> Result<Duration, Box<BackendView>> {
        let key = addr.to_string();
        loop {
            let backends = self.backends();
            let view = backends
                .get(&key)
                .unwrap_or_else(|| panic!("no backend {key} in {backends:?}"));
            if ready(view) {
                return Ok(since.elapsed());
            }
            if since.elapsed() > limit {
                return Err(Box::new(view.clone()));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts `xdplb --socket SOCKET args...` without input or output and returns at once, for
    /// a caller that times the command.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(bin())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the xdplb CLI")
    }

    /// `xdplb -o json autoscale status VIP`: the VIP's autoscaler.
    pub fn autoscale(&self) -> AutoscaleStatus {
        let mut views: Vec<AutoscaleStatus> = self.json(&["autoscale", "status", VIP]);
        assert_eq!(views.len(), 1, "{views:#?}");
        views.remove(0)
    }

    /// `xdplb stop [--detach]`, then waits until the daemon has exited, successfully.
    pub fn stop(&mut self, detach: bool) {
        let args: &[&str] = if detach {
            &["stop", "--detach"]
        } else {
            &["stop"]
        };
        self.ok(args);
        let status = self.wait_for_exit();
        assert!(
            status.success(),
            "xdplb run failed: {status}\n{}",
            self.log()
        );
    }

    /// Waits (bounded) for the daemon to exit; kills it if it does not.
    pub fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let mut daemon = self.daemon.take().expect("a running agent");
        let deadline = Instant::now() + AGENT_TIMEOUT;
        loop {
            if let Some(status) = daemon.try_wait().expect("waiting for xdplb") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = daemon.kill();
                let _ = daemon.wait();
                panic!(
                    "xdplb run did not exit within {AGENT_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if thread::panicking() {
            for run in 1..=self.runs {
                let log = fs::read_to_string(self.log_path(run)).unwrap_or_default();
                eprintln!("--- log of xdplb run #{run} ---\n{log}");
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            if matches!(daemon.try_wait(), Ok(None)) {
                let _ = self.cli(&["stop", "--detach"]);
                let deadline = Instant::now() + AGENT_TIMEOUT;
                while matches!(daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Left by an agent stopped without --detach, or killed: unpinning the links detaches
        // the program (nothing else holds them).
        if self.pin_dir.exists() {
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `path` as a string (it must be UTF-8), as command-line arguments take it.
pub fn path_str(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").to_owned()
}

/// The `xdplb` binary's path, as [`Netns::command`] takes it.
pub fn bin() -> String {
    crate::xdplb_bin()
        .to_str()
        .expect("UTF-8 binary path")
        .to_owned()
}

/// `--vip VIP --backend VIP=b0 ...`: the VIP and the topology's backends, weight 1.
pub fn vip_args() -> Vec<String> {
    let mut args = vec!["--vip".to_owned(), VIP.to_owned()];
    for i in 0..BACKENDS {
        args.push("--backend".to_owned());
        args.push(format!("{VIP}={}", backend_addr(i)));
    }
    args
}

/// The arguments as `&str`s, as [`Agent::start`] takes them.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Backend `i`'s address and port.
pub fn backend_addr(i: usize) -> SocketAddr {
    SocketAddr::new(net_v4(i + 1, 2).into(), BACKEND_PORT)
}

/// The backend servers, `b{i}` on port 8080 of backend `i` (a test stops one by setting it to
/// `None`).
pub fn serve(topo: &Topology) -> Vec<Option<Server>> {
    (0..topo.backends.len())
        .map(|i| Some(topo.backends[i].tcp_server(BACKEND_PORT, &ident(i))))
        .collect()
}

/// Turns transmit checksum offload off in the client and the backends, so that the program
/// forwards translated packets itself (the fast path) instead of handing them to the kernel.
pub fn offload_off(topo: &Topology) {
    for ns in std::iter::once(&topo.client).chain(&topo.backends) {
        ns.exec("ethtool", &["-K", "eth0", "tx", "off"])
            .unwrap_or_else(|err| panic!("{}: ethtool: {err:#}", ns.name));
    }
}

/// What `vip list -o json` says about the configuration, without the traffic: one line per
/// VIP, for readable comparisons.
pub fn configuration(vips: &[VipView]) -> Vec<String> {
    vips.iter()
        .map(|v| {
            let backends: Vec<String> = v
                .backends
                .iter()
                .map(|b| format!("{} weight {} {} id {}", b.address, b.weight, b.state, b.id))
                .collect();
            format!(
                "{} {} ring {}: {}",
                v.vip,
                v.scheduler,
                v.ring_size,
                backends.join(", ")
            )
        })
        .collect()
}

/// The configuration of every VIP as `vip list -o json` shows it: scheduler, ring size,
/// backends with weights and states, and the digest of its lookup table (slot by slot, the
/// backends' addresses). Backend ids are each agent's own (a gateway restarted gives the
/// backends added meanwhile other ids), so they are left out; the digests do not depend on
/// them. Gateways of one cluster show the same.
pub fn tables(agent: &Agent) -> Vec<String> {
    let vips = agent.vips_now();
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

/// Waits (3 s from `since`) until every agent shows the same [`tables`]; `what` names the
/// moment in the messages.
pub fn same_tables(agents: &[Agent], what: &str, since: Instant) {
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

/// The backends' addresses of `vip` (`ADDR:PORT/PROTO`) on `agent`.
pub fn backends_of(agent: &Agent, vip: &str) -> BTreeSet<String> {
    agent
        .vips_now()
        .into_iter()
        .filter(|v| format!("{}/{}", v.address, v.protocol) == vip)
        .flat_map(|v| v.backends.into_iter().map(|b| b.address.to_string()))
        .collect()
}

/// Polls `done` every 20 ms until it holds or `limit` passed since `since`; returns how long
/// it took, or panics with `what`.
pub fn wait_until(
    what: &str,
    since: Instant,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Duration {
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

/// `/metrics` of the agent serving them on `addr` in `ns`, with curl.
pub fn scrape_metrics(ns: &Netns, addr: &str) -> String {
    let out = ns
        .exec(
            "curl",
            &["-sS", "--max-time", "5", &format!("http://{addr}/metrics")],
        )
        .unwrap_or_else(|err| panic!("scraping {addr}: {err:#}"));
    String::from_utf8(out.stdout).expect("UTF-8 metrics")
}

/// The samples of metric `name` in Prometheus text: its labels as written (`a="1",b="2"`) and
/// its value.
pub fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            let labels = if labels.is_empty() {
                labels
            } else {
                labels.strip_prefix('{')?.strip_suffix('}')?
            };
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` with exactly `labels`, if there is such a sample.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(l, _)| *l == labels)
        .map(|(_, v)| v)
}

/// `xdplb decap --iface eth0` on each backend (through `nsenter --net`, so that the pin is in
/// the host's bpffs), detached again when dropped.
pub struct Decap<'a>(&'a [Netns]);

impl<'a> Decap<'a> {
    pub fn attach(backends: &'a [Netns]) -> Self {
        for b in backends {
            b.exec(&bin(), &["decap", "--iface", HOST_IF])
                .unwrap_or_else(|err| panic!("xdplb decap on {}: {err:#}", b.name));
        }
        Self(backends)
    }
}

impl Drop for Decap<'_> {
    fn drop(&mut self) {
        for b in self.0 {
            let _ = b.exec(&bin(), &["decap", "--iface", HOST_IF, "--detach"]);
        }
    }
}
