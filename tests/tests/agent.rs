//! End-to-end tests of the agent and its CLI: `xdplb run` in the gateway namespace of a
//! topology (client, gateway, three backends answering as `b0`, `b1`, `b2` on port 8080),
//! driven by `xdplb` commands and by `curl` on its API socket, with real TCP connections
//! through the VIP 198.19.0.1:80/tcp.
//!
//! Each test has its own topology, API socket, pin dir (`/sys/fs/bpf/xdplb-test-*`) and state
//! file; an [`Agent`] guard stops the daemon with `xdplb stop --detach` (or kills it) and removes
//! what it left, also when the test fails. Every wait has a deadline.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use lb_common::Counter;
use lb_tests::netns::{Conn, GW_CLIENT_IF, Netns, Server, Topology};

const VIP: &str = "198.19.0.1:80/tcp";
const VIP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)), 80);
const BACKEND_PORT: u16 = 8080;
const BACKENDS: usize = 3;
/// Longest a CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the agent may take to stop, or to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the agent may take to start: the kernel verifies the program at every fresh load
/// (a second or two alone, far more while other tests load theirs on the same two cores).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between two exchanges on a held connection.
const CHAT_PERIOD: Duration = Duration::from_millis(50);

// --- The agent -----------------------------------------------------------------------------

static NEXT_AGENT: AtomicUsize = AtomicUsize::new(0);

/// One test's agent: its socket, pin dir, state file, logs and config files, and the daemon
/// (`xdplb run` in the gateway namespace) while it runs. Dropping it stops the daemon with
/// `xdplb stop --detach` (killing it if that fails) and removes the pins and files.
struct Agent {
    gateway: Netns,
    ifaces: Vec<String>,
    /// Socket, state file, logs and config files.
    dir: PathBuf,
    pin_dir: PathBuf,
    state_file: PathBuf,
    daemon: Option<Child>,
    /// Daemons started so far; the log of the `n`th is `run{n}.log`.
    runs: usize,
}

impl Agent {
    fn new(topo: &Topology) -> Self {
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_AGENT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("xdplb-agent-test-{id}"));
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        Self {
            gateway: topo.gateway.clone(),
            ifaces: topo.gateway_ifaces(),
            state_file: dir.join("state.json"),
            dir,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/xdplb-test-{id}")),
            daemon: None,
            runs: 0,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("xdplb.sock")
    }

    fn state_file(&self) -> PathBuf {
        self.state_file.clone()
    }

    /// Writes `text` to the file `name` in the test's directory.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        path
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.join(format!("run{run}.log"))
    }

    /// What the current (or last) daemon logged.
    fn log(&self) -> String {
        fs::read_to_string(self.log_path(self.runs)).unwrap_or_default()
    }

    /// Starts `xdplb run` on every gateway interface, with this agent's socket, pin dir and
    /// state file and `extra` arguments, and waits until it says it is ready.
    fn start(&mut self, extra: &[&str]) {
        self.start_in(self.gateway.command(&bin()), extra);
    }

    /// The arguments of `xdplb run` with this agent's socket, pin dir, state file and every
    /// gateway interface, then `extra`.
    fn run_args(&self, extra: &[&str]) -> Vec<String> {
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
    fn start_in(&mut self, mut cmd: Command, extra: &[&str]) {
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
    fn start_fails(&self, extra: &[&str]) -> Output {
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
    fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("a running agent").id()
    }

    /// Runs `xdplb --socket SOCKET args...` (on the host: the socket is a file).
    fn cli(&self, args: &[&str]) -> Output {
        run_bounded(
            Command::new(bin())
                .arg("--socket")
                .arg(self.socket())
                .args(args),
            CLI_TIMEOUT,
        )
    }

    /// Runs a CLI command that must succeed, and returns its output.
    fn ok(&self, args: &[&str]) -> String {
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

    /// Runs a CLI command with `-o json` that must succeed, and parses its output.
    fn json(&self, args: &[&str]) -> Json {
        let text = self.ok(&[&["-o", "json"], args].concat());
        Json::parse(&text).unwrap_or_else(|err| panic!("xdplb {args:?}: {err} in {text}"))
    }

    /// `xdplb backend list VIP -o json`, by backend address.
    fn backends(&self) -> BTreeMap<String, Json> {
        self.json(&["backend", "list", VIP])
            .arr()
            .iter()
            .map(|b| (b.get("address").str().to_owned(), b.clone()))
            .collect()
    }

    /// Polls `backend list` until `ready` holds for backend `addr`, until `limit` after
    /// `since`; returns when it did, measured from `since`, or the last view if it never did.
    fn wait_for_backend(
        &self,
        addr: SocketAddr,
        since: Instant,
        limit: Duration,
        ready: impl Fn(&Json) -> bool,
    ) -> Result<Duration, Json> {
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
                return Err(view.clone());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `xdplb stop [--detach]`, then waits until the daemon has exited, successfully.
    fn stop(&mut self, detach: bool) {
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
    fn wait_for_exit(&mut self) -> std::process::ExitStatus {
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

fn path_str(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").to_owned()
}

fn bin() -> String {
    common::xdplb_bin()
        .to_str()
        .expect("UTF-8 binary path")
        .to_owned()
}

/// Runs `cmd` to completion, killing it and failing if it takes longer than `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("starting {cmd:?}: {err}"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|err| panic!("running {cmd:?}: {err}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// `--vip VIP --backend VIP=b0 ...`: the VIP and the topology's backends, weight 1.
fn vip_args() -> Vec<String> {
    let mut args = vec!["--vip".to_owned(), VIP.to_owned()];
    for i in 0..BACKENDS {
        args.push("--backend".to_owned());
        args.push(format!("{VIP}={}", backend_addr(i)));
    }
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Backend `i`'s address and port.
fn backend_addr(i: usize) -> SocketAddr {
    SocketAddr::new(lb_tests::netns::net_v4(i + 1, 2).into(), BACKEND_PORT)
}

fn ident(i: usize) -> String {
    format!("b{i}")
}

/// The backend servers, `b{i}` on port 8080 of backend `i`.
fn serve(topo: &Topology) -> Vec<Option<Server>> {
    (0..topo.backends.len())
        .map(|i| Some(topo.backends[i].tcp_server(BACKEND_PORT, &ident(i))))
        .collect()
}

/// Turns transmit checksum offload off in the client and the backends, so that the program
/// forwards translated packets itself (the fast path) instead of handing them to the kernel.
fn offload_off(topo: &Topology) {
    for ns in std::iter::once(&topo.client).chain(&topo.backends) {
        ns.exec("ethtool", &["-K", "eth0", "tx", "off"])
            .unwrap_or_else(|err| panic!("{}: ethtool: {err:#}", ns.name));
    }
}

/// What `vip list -o json` says about the configuration, without the traffic: one line per
/// VIP, for readable comparisons.
fn configuration(vips: &Json) -> Vec<String> {
    vips.arr()
        .iter()
        .map(|v| {
            let backends: Vec<String> = v
                .get("backends")
                .arr()
                .iter()
                .map(|b| {
                    format!(
                        "{} weight {} {} id {}",
                        b.get("address").str(),
                        b.get("weight").u64(),
                        b.get("state").str(),
                        b.get("id").u64()
                    )
                })
                .collect();
            format!(
                "{} {} ring {}: {}",
                v.get("vip").str(),
                v.get("scheduler").str(),
                v.get("ring_size").u64(),
                backends.join(", ")
            )
        })
        .collect()
}

// --- Traffic -------------------------------------------------------------------------------

/// How many answers each backend gave, by ident.
type Tally = BTreeMap<String, usize>;

/// Makes `n` new connections from `client` to the VIP, one exchange each, and counts which
/// backend answered each. Panics if any fails.
fn spread(client: &Netns, n: usize, tag: &str) -> Tally {
    let (tally, failures) = client.run(|| {
        let mut tally = Tally::new();
        let mut failures = Vec::new();
        for i in 0..n {
            let line = format!("{tag}{i}");
            match Conn::connect(VIP_ADDR).and_then(|mut c| c.ask(&line)) {
                Ok(ident) => *tally.entry(ident).or_default() += 1,
                Err(err) => failures.push(format!("{err:#}")),
            }
            if failures.len() >= 5 {
                break;
            }
        }
        (tally, failures)
    });
    assert!(
        failures.is_empty(),
        "{tag}: new connections to {VIP_ADDR} failed: {failures:?} (answered: {tally:?})"
    );
    tally
}

/// Opens `n` connections from `client` to the VIP, one exchange each, and keeps them open.
fn hold(client: &Netns, n: usize) -> Vec<(Conn, String)> {
    client.run(|| {
        (0..n)
            .map(|i| {
                let mut conn = Conn::connect(VIP_ADDR)
                    .unwrap_or_else(|err| panic!("held connection {i}: {err:#}"));
                let ident = conn
                    .ask(&format!("hold{i}"))
                    .unwrap_or_else(|err| panic!("held connection {i}: {err:#}"));
                (conn, ident)
            })
            .collect()
    })
}

/// Threads working in the background until [`Background::finish`] (or drop), counting their
/// successful exchanges as they go.
struct Background<R> {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<R>>,
}

impl<R> Background<R> {
    fn new() -> Self {
        Self {
            stop: Arc::default(),
            progress: Arc::default(),
            threads: Vec::new(),
        }
    }

    /// Successful exchanges so far.
    fn progress(&self) -> usize {
        self.progress.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> Vec<R> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    }
}

impl<R> Drop for Background<R> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What happened on one held connection.
struct Chat {
    ident: String,
    exchanges: usize,
    /// The first failure (the connection is given up then), with when it happened.
    failure: Option<String>,
}

/// Exchanges a line on each held connection every [`CHAT_PERIOD`], one thread each, until
/// finished; the connections are closed then. An answer from another backend is a failure.
fn chatter(conns: Vec<(Conn, String)>, epoch: Instant) -> Background<Chat> {
    let mut bg = Background::new();
    for (i, (mut conn, ident)) in conns.into_iter().enumerate() {
        let (stop, progress) = (Arc::clone(&bg.stop), Arc::clone(&bg.progress));
        bg.threads.push(thread::spawn(move || {
            let mut chat = Chat {
                ident,
                exchanges: 0,
                failure: None,
            };
            while !stop.load(Ordering::Relaxed) {
                let line = format!("conn{i}-{}", chat.exchanges);
                match conn.ask(&line) {
                    Ok(now) if now == chat.ident => {
                        chat.exchanges += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(now) => {
                        chat.failure = Some(format!(
                            "at {:?}: {line:?} answered by {now}, not {}",
                            epoch.elapsed(),
                            chat.ident
                        ));
                        break;
                    }
                    Err(err) => {
                        chat.failure = Some(format!("at {:?}: {err:#}", epoch.elapsed()));
                        break;
                    }
                }
                thread::sleep(CHAT_PERIOD);
            }
            chat
        }));
    }
    bg
}

/// New connections made in the background, and when each succeeded.
struct Dialed {
    answered: Vec<(Instant, String)>,
    failures: Vec<String>,
}

/// Makes a new connection to the VIP (one exchange) every `period` until finished.
fn dialer(client: &Netns, period: Duration, epoch: Instant) -> Background<Dialed> {
    let mut bg = Background::new();
    let (stop, progress) = (Arc::clone(&bg.stop), Arc::clone(&bg.progress));
    bg.threads.push(client.spawn(move || {
        let mut dialed = Dialed {
            answered: Vec::new(),
            failures: Vec::new(),
        };
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let line = format!("dial{i}");
            match Conn::connect(VIP_ADDR).and_then(|mut c| c.ask(&line)) {
                Ok(ident) => {
                    dialed.answered.push((Instant::now(), ident));
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => dialed
                    .failures
                    .push(format!("at {:?}: {err:#}", epoch.elapsed())),
            }
            i += 1;
            thread::sleep(period);
        }
        dialed
    }));
    bg
}

// --- JSON ----------------------------------------------------------------------------------

/// A JSON value, parsed just enough to read the agent's answers (numbers are kept as text).
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut parser = JsonParser {
            text: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value()?;
        parser.space();
        if parser.pos != text.len() {
            return Err(format!("trailing text at byte {}", parser.pos));
        }
        Ok(value)
    }

    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(fields) => fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no {key:?} in {self:?}")),
            _ => panic!("{self:?} is not an object (looking for {key:?})"),
        }
    }

    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            _ => panic!("{self:?} is not a string"),
        }
    }

    fn u64(&self) -> u64 {
        match self {
            Json::Num(n) => n
                .parse()
                .unwrap_or_else(|_| panic!("{n} is not a whole number")),
            _ => panic!("{self:?} is not a number"),
        }
    }

    /// A boolean, or `None` for `null`.
    fn opt_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            Json::Null => None,
            _ => panic!("{self:?} is not a boolean or null"),
        }
    }

    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(items) => items,
            _ => panic!("{self:?} is not an array"),
        }
    }
}

struct JsonParser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl JsonParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn next(&mut self) -> Result<u8, String> {
        let byte = self.peek().ok_or("unexpected end")?;
        self.pos += 1;
        Ok(byte)
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.space();
        match self.next()? {
            b if b == byte => Ok(()),
            b => Err(format!(
                "expected {:?}, found {:?} at byte {}",
                byte as char,
                b as char,
                self.pos - 1
            )),
        }
    }

    /// Consumes `byte` if it comes next (after spaces).
    fn eat(&mut self, byte: u8) -> bool {
        self.space();
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.text[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(format!("bad literal at byte {}", self.pos))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.space();
        match self.peek().ok_or("unexpected end")? {
            b'{' => {
                self.pos += 1;
                let mut fields = Vec::new();
                if self.eat(b'}') {
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    self.expect(b':')?;
                    fields.push((key, self.value()?));
                    if !self.eat(b',') {
                        self.expect(b'}')?;
                        return Ok(Json::Obj(fields));
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    if !self.eat(b',') {
                        self.expect(b']')?;
                        return Ok(Json::Arr(items));
                    }
                }
            }
            b'"' => Ok(Json::Str(self.string()?)),
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'n' => self.literal("null", Json::Null),
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.pos += 1;
                }
                let number = std::str::from_utf8(&self.text[start..self.pos]).expect("ASCII");
                Ok(Json::Num(number.to_owned()))
            }
            b => Err(format!("unexpected {:?} at byte {}", b as char, self.pos)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => match self.next()? {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'u' => {
                        let hex = self
                            .text
                            .get(self.pos..self.pos + 4)
                            .ok_or("short \\u escape")?;
                        self.pos += 4;
                        let code = u32::from_str_radix(std::str::from_utf8(hex).unwrap_or(""), 16)
                            .map_err(|_| "bad \\u escape")?;
                        let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                        out.extend_from_slice(c.to_string().as_bytes());
                    }
                    other => out.push(other),
                },
                b => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|err| err.to_string())
    }
}

// --- Prometheus text -----------------------------------------------------------------------

/// The samples of metric `name`: its labels as written (`a="1",b="2"`) and its value.
/// `/metrics` of the agent serving them on `addr` in `ns`, with curl.
fn scrape_metrics(ns: &Netns, addr: &str) -> String {
    let out = ns
        .exec(
            "curl",
            &["-sS", "--max-time", "5", &format!("http://{addr}/metrics")],
        )
        .unwrap_or_else(|err| panic!("scraping {addr}: {err:#}"));
    String::from_utf8(out.stdout).expect("UTF-8 metrics")
}

fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
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
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(l, _)| *l == labels)
        .map(|(_, v)| v)
}

// --- Tests ---------------------------------------------------------------------------------

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
    assert_eq!(agent.json(&["vip", "list"]), Json::Arr(Vec::new()));

    let added = agent.ok(&["vip", "add", VIP, "--scheduler", "maglev"]);
    assert!(added.contains(VIP), "{added}");
    for i in 0..BACKENDS {
        let addr = backend_addr(i).to_string();
        let shown = agent.ok(&["backend", "add", VIP, &addr]);
        assert!(shown.contains(&addr), "{shown}");
    }

    let tally = spread(&topo.client, FLOWS, "cli");
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
    let vips = agent.json(&["vip", "list"]);
    assert_eq!(vips.arr().len(), 1, "{vips:?}");
    assert_eq!(vips.arr()[0].get("new_flows").u64(), FLOWS as u64);

    let backends = agent.backends();
    assert_eq!(backends.len(), BACKENDS, "{backends:?}");
    for i in 0..BACKENDS {
        let b = &backends[&backend_addr(i).to_string()];
        assert_eq!(b.get("weight").u64(), 1, "{b:?}");
        assert_eq!(b.get("state").str(), "up", "{b:?}");
        assert_eq!(b.get("healthy").opt_bool(), None, "no health check: {b:?}");
        assert_eq!(
            b.get("new_flows").u64(),
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
    assert!(!common::xdp_attached(&topo, GW_CLIENT_IF));
    assert!(!agent.pin_dir.exists());
}

/// A tcp health check (every 200 ms, fall 2, rise 2) takes a backend whose server stopped down
/// in time, new connections then all succeed without it, and it comes back when the server does.
#[test]
#[ignore = "needs root"]
fn health_check_removes_a_failed_backend() {
    const INTERVAL: Duration = Duration::from_millis(200);
    const FALL: u32 = 2;
    const RISE: u32 = 2;
    /// Scheduling allowance on top of the check's own timing.
    const SLACK: Duration = Duration::from_millis(300);
    const VICTIM: usize = 1;
    let topo = Topology::new(BACKENDS).expect("topology");
    let mut servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    let mut config = format!(
        "[[vip]]\naddress = \"{VIP_ADDR}\"\nprotocol = \"tcp\"\n\n[vip.health]\nkind = \"tcp\"\n\
         interval = \"{}ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\n",
        INTERVAL.as_millis()
    );
    for i in 0..BACKENDS {
        config += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend_addr(i));
    }
    let config = agent.file("health.toml", &config);
    agent.start(&["--config", config.to_str().expect("UTF-8 path")]);

    // Every backend is checked, and healthy.
    let started = Instant::now();
    for i in 0..BACKENDS {
        agent
            .wait_for_backend(backend_addr(i), started, Duration::from_secs(3), |b| {
                b.get("healthy").opt_bool() == Some(true) && b.get("state").str() == "up"
            })
            .unwrap_or_else(|b| panic!("{} never checked healthy: {b:?}", ident(i)));
    }
    let tally = spread(&topo.client, 30, "before");
    assert_eq!(tally.len(), BACKENDS, "{tally:?}");

    // The server stops: the backend is down within fall × interval + one interval.
    let victim = backend_addr(VICTIM);
    let stopped = Instant::now();
    servers[VICTIM] = None;
    let down_limit = INTERVAL * (FALL + 1) + SLACK;
    let down = agent
        .wait_for_backend(victim, stopped, Duration::from_secs(5), |b| {
            b.get("state").str() == "down" && b.get("healthy").opt_bool() == Some(false)
        })
        .unwrap_or_else(|b| panic!("{victim} not down 5 s after its server stopped: {b:?}"));
    eprintln!("{victim} down {down:?} after its server stopped (limit {down_limit:?})");
    assert!(
        down <= down_limit,
        "{victim} was taken down after {down:?}, more than {down_limit:?}"
    );

    // From then on, no new connection fails, and none reaches it.
    let flows_before = agent.backends()[&victim.to_string()].get("new_flows").u64();
    let tally = spread(&topo.client, 60, "without");
    eprintln!("60 connections with {} down: {tally:?}", ident(VICTIM));
    assert!(!tally.contains_key(&ident(VICTIM)), "{tally:?}");
    assert_eq!(tally.len(), BACKENDS - 1, "{tally:?}");
    let flows_after = agent.backends()[&victim.to_string()].get("new_flows").u64();
    assert_eq!(
        flows_after, flows_before,
        "new flows were sent to the backend that is down"
    );

    // The server is back: so is the backend, within rise × interval.
    let restarted = Instant::now();
    servers[VICTIM] = Some(topo.backends[VICTIM].tcp_server(BACKEND_PORT, &ident(VICTIM)));
    let up_limit = INTERVAL * RISE + SLACK;
    let up = agent
        .wait_for_backend(victim, restarted, Duration::from_secs(5), |b| {
            b.get("state").str() == "up" && b.get("healthy").opt_bool() == Some(true)
        })
        .unwrap_or_else(|b| panic!("{victim} not up 5 s after its server restarted: {b:?}"));
    eprintln!("{victim} up {up:?} after its server restarted (limit {up_limit:?})");
    assert!(
        up <= up_limit,
        "{victim} came back after {up:?}, more than {up_limit:?}"
    );
    let tally = spread(&topo.client, 60, "after");
    assert!(
        tally.get(&ident(VICTIM)).is_some_and(|&n| n > 0),
        "no new connection reached {} after it came back: {tally:?}",
        ident(VICTIM)
    );
    let log = agent.log();
    assert!(log.contains("failed its health check"), "{log}");
    assert!(log.contains("healthy again"), "{log}");
}

/// Draining a backend keeps its established connections working while new connections avoid
/// it; once they close, it shows as drained.
#[test]
#[ignore = "needs root"]
fn drain_keeps_existing_connections_and_avoids_new_ones() {
    const HELD: usize = 15;
    const NEW: usize = 60;
    let topo = Topology::new(BACKENDS).expect("topology");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));

    let epoch = Instant::now();
    let held = hold(&topo.client, HELD);
    let mut per_backend = Tally::new();
    for (_, ident) in &held {
        *per_backend.entry(ident.clone()).or_default() += 1;
    }
    // The backend with the most held connections (some, surely, of 15 over 3).
    let (target, on_target) = per_backend
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(ident, n)| (ident.clone(), *n))
        .expect("held connections");
    let index: usize = target[1..].parse().expect("backend ident");
    let target_addr = backend_addr(index);
    eprintln!("held connections per backend: {per_backend:?}; draining {target}");
    let chats = chatter(held, epoch);

    let drained_at = Instant::now();
    agent.ok(&["backend", "drain", VIP, &target_addr.to_string()]);
    let view = &agent.backends()[&target_addr.to_string()];
    assert_eq!(view.get("state").str(), "draining", "{view:?}");
    let table = agent.ok(&["backend", "list", VIP]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&target_addr.to_string()) && l.contains("draining")),
        "{table}"
    );

    // New connections avoid it, while the held ones go on.
    let tally = spread(&topo.client, NEW, "new");
    eprintln!("{NEW} new connections while {target} drains: {tally:?}");
    assert!(!tally.contains_key(&target), "{tally:?}");
    assert_eq!(tally.len(), BACKENDS - 1, "{tally:?}");

    // Connections are counted every 2 s: by now the held ones have been, after the drain.
    let progress = chats.progress();
    thread::sleep(
        (drained_at + Duration::from_millis(2200)).saturating_duration_since(Instant::now()),
    );
    assert!(chats.progress() > progress, "the held connections stalled");
    let view = &agent.backends()[&target_addr.to_string()];
    assert_eq!(view.get("state").str(), "draining", "{view:?}");
    assert_eq!(
        view.get("active_connections").u64(),
        on_target as u64,
        "{view:?}"
    );
    assert_eq!(view.get("drained").opt_bool(), Some(false), "{view:?}");

    // Every held connection kept its backend and never failed, 2 s and more after the drain.
    let chats = chats.finish();
    let lasted = drained_at.elapsed();
    let failures: Vec<&String> = chats.iter().filter_map(|c| c.failure.as_ref()).collect();
    assert!(failures.is_empty(), "held connections failed: {failures:?}");
    let on_drained: usize = chats
        .iter()
        .filter(|c| c.ident == target)
        .map(|c| c.exchanges)
        .sum();
    eprintln!(
        "{on_target} held connections to {target} exchanged {on_drained} lines in all, the last \
         {lasted:?} after the drain"
    );
    assert!(lasted >= Duration::from_secs(2));

    // Closed: it shows as drained at the next count.
    let closed = Instant::now();
    let drained = agent
        .wait_for_backend(target_addr, closed, Duration::from_secs(5), |b| {
            b.get("drained").opt_bool() == Some(true)
        })
        .unwrap_or_else(|b| panic!("{target} not drained 5 s after its connections closed: {b:?}"));
    eprintln!("{target} drained {drained:?} after its connections closed");
    let table = agent.ok(&["backend", "list", VIP]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&target_addr.to_string()) && l.contains("drained")),
        "{table}"
    );
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
        configuration(&Json::parse(&before).expect("JSON")),
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
    let after = configuration(&agent.json(&["vip", "list"]));
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
    let tally = spread(&topo.client, 40, "applied");
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
        configuration(&Json::parse(&unchanged).expect("JSON")),
        configuration(&agent.json(&["vip", "list"]))
    );
}

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
    let before = configuration(&agent.json(&["vip", "list"]));

    let epoch = Instant::now();
    let held = hold(&topo.client, HELD);
    let chats = chatter(held, epoch);
    let dials = dialer(&topo.client, Duration::from_millis(20), epoch);
    thread::sleep(Duration::from_millis(500));

    let packets = agent.json(&["vip", "list"]).arr()[0].get("packets").u64();
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
            common::xdp_attached(&topo, &iface),
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
        configuration(&agent.json(&["vip", "list"])),
        before,
        "the restarted agent's VIPs"
    );
    // The adopted maps, not fresh ones: the counters went on.
    let adopted = agent.json(&["vip", "list"]).arr()[0].get("packets").u64();
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
            .all(|(_, ident)| (0..BACKENDS).any(|i| *ident == self::ident(i))),
        "unexpected answers: {:?}",
        dials.answered
    );

    agent.stop(true);
    for iface in topo.gateway_ifaces() {
        assert!(
            !common::xdp_attached(&topo, &iface),
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

/// Is `output` a refusal as the CLI promises: exit code 1, one line `xdplb: error: ...` on
/// stderr that names `names`, nothing on stdout? With `logs`, the agent's log lines
/// (`[timestamp LEVEL target] ...`) may come before it.
fn check_refusal(output: &Output, names: &str, logs: bool) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut problems = Vec::new();
    if output.status.code() != Some(1) {
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
        (&["backend", "add", VIP, "198.18.1.2"], "198.18.1.2"),
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
            r#"{"address": "198.18.9.2"}"#,
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
        let message = Json::parse(&answer)
            .ok()
            .filter(|json| matches!(json, Json::Obj(_)))
            .map(|json| json.get("error").str().to_owned());
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

    let tally = spread(&topo.client, FLOWS, "metrics");
    let held = hold(&topo.client, HELD);
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
    let api_packets = agent.json(&["vip", "list"]).arr()[0].get("packets").u64();
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
    let json = Json::parse(&answer).unwrap_or_else(|err| panic!("{err}: {answer}"));
    let mut ifaces: Vec<&str> = json.get("interfaces").arr().iter().map(Json::str).collect();
    ifaces.sort_unstable();
    let mut expected = topo.gateway_ifaces();
    expected.sort_unstable();
    assert_eq!(ifaces, expected, "{answer}");
    assert_eq!(json.get("vips").u64(), 1, "{answer}");
    assert_eq!(json.get("backends").u64(), BACKENDS as u64, "{answer}");
    assert_eq!(json.get("version").str(), version, "{answer}");
    assert_eq!(
        json.get("pin_dir").str(),
        agent.pin_dir.to_str().expect("UTF-8 path"),
        "{answer}"
    );
}

// --- Autoscaling -----------------------------------------------------------------------------

/// Longest an autoscaling step may take (decisions come every second; probes, drains and
/// hooks add a few).
const SCALE_TIMEOUT: Duration = Duration::from_secs(20);

impl Agent {
    /// `xdplb -o json autoscale status VIP`: the VIP's autoscaler.
    fn autoscale(&self) -> serde_json::Value {
        let text = self.ok(&["-o", "json", "autoscale", "status", VIP]);
        let mut views: Vec<serde_json::Value> = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("autoscale status: {err} in {text}"));
        assert_eq!(views.len(), 1, "{text}");
        views.remove(0)
    }

    /// The VIP's backends and their states.
    fn backend_states(&self) -> BTreeMap<String, String> {
        self.backends()
            .into_iter()
            .map(|(addr, b)| (addr, b.get("state").str().to_owned()))
            .collect()
    }

    /// Polls until `done` holds for the backends' states, for at most [`SCALE_TIMEOUT`].
    fn wait_for_pool(&self, what: &str, done: impl Fn(&BTreeMap<String, String>) -> bool) {
        let deadline = Instant::now() + SCALE_TIMEOUT;
        loop {
            let states = self.backend_states();
            if done(&states) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {SCALE_TIMEOUT:?}; backends {states:?}; autoscaler {:#}",
                self.autoscale()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
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
    assert_eq!(status["serving"], 1, "{status:#}");
    assert_eq!(status["standby"].as_array().map(Vec::len), Some(STANDBY));

    // A bounded ramp of held connections: 2 fit one backend, 12 need three, 18 need the max, 4.
    let mut held = hold(&topo.client, 2);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count_state(&agent.backend_states(), "up"),
        1,
        "2 connections need 1 backend"
    );
    held.extend(hold(&topo.client, 10));
    agent.wait_for_pool("scale-out to 3 for 12 connections", |s| {
        count_state(s, "up") == 3
    });
    let tally = spread(&topo.client, 30, "new");
    let b0 = ident(0);
    let on_new = tally.keys().filter(|i| **i != b0).count();
    assert!(
        on_new >= 1,
        "new connections land on the added backends: {tally:?}"
    );
    held.extend(hold(&topo.client, 6));
    agent.wait_for_pool("scale-out to max = 4 for 18 connections", |s| {
        count_state(s, "up") == 4
    });
    let status = agent.autoscale();
    assert!(
        status["standby"].as_array().is_some_and(Vec::is_empty),
        "{status:#}"
    );
    assert!(
        status["decisions"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("at 4/backend")),
        "{status:#}"
    );

    // Connections opened before the scale-out all went to b0: hold a few more (bounded) until
    // two added backends hold some.
    for _ in 0..5 {
        let added: std::collections::BTreeSet<&String> =
            held.iter().map(|(_, i)| i).filter(|i| **i != b0).collect();
        if added.len() >= 2 {
            break;
        }
        held.extend(hold(&topo.client, 4));
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
    agent.wait_for_pool("scale-in to 1 backend in rotation", |s| {
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
    let drained = status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| d["actions"].to_string().contains("drain"));
    assert!(drained, "a scale-in decision that drains: {status:#}");

    // Their last connections close: the drained backends leave and are standby again.
    drop(survivors);
    agent.wait_for_pool("drained backends removed", |s| s.len() == 1);
    let status = agent.autoscale();
    assert_eq!(
        status["standby"].as_array().map(Vec::len),
        Some(STANDBY),
        "{status:#}"
    );
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

#[test]
#[ignore = "needs root"]
fn autoscaling_hooks_start_and_release_backend_servers() {
    let topo = Topology::new(3).expect("topology");
    offload_off(&topo);
    // Only b0 runs; the scale-up hook starts b1, then b2, in their namespaces.
    let _b0 = topo.backends[0].tcp_server(BACKEND_PORT, &ident(0));
    let mut agent = Agent::new(&topo);
    let dir = agent.dir.clone();
    let pids = Pids(dir.join("pids"));
    agent.file("server.py", LINE_SERVER);
    let pool: String = (1..3)
        .map(|i| format!("{} {}\n", topo.backends[i].name, backend_addr(i)))
        .collect();
    agent.file("pool", &pool);
    agent.file("next", "1\n");
    let up = agent.file(
        "scale-up.sh",
        &format!(
            r#"#!/bin/sh
# Starts the next backend server of the pool in its namespace and prints its address.
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
nsenter --net=/run/netns/$ns python3 server.py hook-b$n {BACKEND_PORT} </dev/null >/dev/null 2>&1 9>&- &
echo $! >> pids
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
        &autoscale_config(
            &[0],
            &format!(
                "max = 3\nscale-up = [\"{}\"]\nscale-down = [\"{}\"]\nhook-timeout = \"5s\"",
                up.display(),
                down.display()
            ),
        ),
    );
    agent.start(&["--config", config.to_str().expect("UTF-8 path")]);

    let held = hold(&topo.client, 10);
    agent.wait_for_pool("two hook backends join for 10 connections", |s| {
        count_state(s, "up") == 3
    });
    let states = agent.backend_states();
    for i in 1..3 {
        assert!(
            states.contains_key(&backend_addr(i).to_string()),
            "{states:?}"
        );
    }
    let tally = spread(&topo.client, 30, "new");
    assert!(
        tally.keys().any(|ident| ident.starts_with("hook-b")),
        "new connections reach the servers the hook started: {tally:?}"
    );
    let status = agent.autoscale();
    assert_eq!(status["scale_up_hook"]["runs"], 2, "{status:#}");
    assert_eq!(status["scale_up_hook"]["failures"], 0, "{status:#}");

    // Load falls: the hook backends drain, leave and go to scale-down; b0 stays.
    drop(held);
    agent.wait_for_pool("back to b0 alone", |s| s.len() == 1);
    let states = agent.backend_states();
    assert!(
        states.contains_key(&backend_addr(0).to_string()),
        "{states:?}"
    );
    let deadline = Instant::now() + SCALE_TIMEOUT;
    let released = loop {
        let released = fs::read_to_string(dir.join("released")).unwrap_or_default();
        if released.lines().count() == 2 || Instant::now() > deadline {
            break released;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let mut released: Vec<&str> = released.lines().collect();
    released.sort();
    assert_eq!(
        released,
        [backend_addr(1).to_string(), backend_addr(2).to_string()],
        "scale-down gets each drained hook backend"
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
    let held = hold(&topo.client, 10);
    let deadline = Instant::now() + SCALE_TIMEOUT;
    let status = loop {
        let status = agent.autoscale();
        if status["desired"] == 3 {
            break status;
        }
        assert!(Instant::now() < deadline, "no decision: {status:#}");
        thread::sleep(Duration::from_millis(100));
    };
    let decision = &status["decisions"][0];
    assert_eq!(decision["dry_run"], true, "{status:#}");
    assert_eq!(decision["actions"][0], "would add 2", "{status:#}");
    assert_eq!(status["sample"]["active_connections"], 10.0, "{status:#}");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.backend_states().len(),
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

// --- Outages: restore, failed starts, unsaved changes, ghosts, a second agent, signals -----

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
    let vips = agent.json(&["vip", "list"]);
    let names = vips
        .arr()
        .iter()
        .map(|v| {
            v.get("vip")
                .str()
                .trim_end_matches("/tcp")
                .trim_end_matches("/udp")
                .to_owned()
        })
        .collect();
    let backends = vips
        .arr()
        .iter()
        .map(|v| v.get("backends").arr().len())
        .sum();
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
    let before = configuration(&agent.json(&["vip", "list"]));
    spread(&topo.client, 10, "before");
    agent.stop(false);
    // As a reboot does: the pins, and with them the program and its maps, are gone.
    fs::remove_dir_all(&agent.pin_dir).expect("removing the pins");
    for iface in topo.gateway_ifaces() {
        assert!(
            common::xdp_detached_soon(&topo, &iface),
            "{iface}: still attached"
        );
    }
    agent.start(&[]);
    assert!(
        agent.log().contains("restoring a fresh program"),
        "{}",
        agent.log()
    );
    assert_eq!(configuration(&agent.json(&["vip", "list"])), before);
    let tally = spread(&topo.client, 90, "after");
    assert_eq!(tally.values().sum::<usize>(), 90, "{tally:?}");
    assert_eq!(
        tally.len(),
        BACKENDS,
        "every backend takes flows: {tally:?}"
    );
    let stats = agent.json(&["stats"]);
    let dropped = stats
        .get("counters")
        .arr()
        .iter()
        .find(|pair| pair.arr()[0].str() == "drop_no_backend")
        .map(|pair| pair.arr()[1].u64());
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
    spread(&topo.client, 10, "private");
    agent.stop(false);
    let log = agent.log();
    assert!(
        log.contains("the program is detached as the agent exits"),
        "{log}"
    );
    assert!(!log.contains("leaving the program attached"), "{log}");
    for iface in topo.gateway_ifaces() {
        assert!(
            common::xdp_detached_soon(&topo, &iface),
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
        assert!(!common::xdp_attached(&topo, &iface), "{iface}: attached");
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
    let before = configuration(&agent.json(&["vip", "list"]));
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
    assert_eq!(configuration(&agent.json(&["vip", "list"])), before);
    // A second agent on the same state file, with pins and a socket of its own.
    let other = agent.dir.join("other");
    fs::create_dir_all(&other).expect("dir");
    let output = run_bounded(
        topo.gateway
            .command(&bin())
            .arg("--socket")
            .arg(other.join("xdplb.sock"))
            .args(["run", "--pin-dir"])
            .arg(format!("{}-second", agent.pin_dir.display()))
            .arg("--state-file")
            .arg(agent.state_file())
            .args(["--iface", GW_CLIENT_IF]),
        START_TIMEOUT,
    );
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
    assert_eq!(configuration(&agent.json(&["vip", "list"])), before);
    spread(&topo.client, 30, "first");
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
    fs::create_dir_all(&other).expect("dir");
    let output = run_bounded(
        topo.gateway
            .command(&bin())
            .arg("--socket")
            .arg(other.join("xdplb.sock"))
            .args(["run", "--pin-dir"])
            .arg(&agent.pin_dir)
            .arg("--state-file")
            .arg(other.join("state.json"))
            .args(["--iface", GW_CLIENT_IF, "--vip", "198.19.0.7:80/tcp"]),
        START_TIMEOUT,
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
    let tally = spread(&topo.client, 60, "first");
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
    let before = (
        configuration(&agent.json(&["vip", "list"])),
        pinned_maps(&agent.pin_dir),
    );
    let third = backend_addr(2).to_string();

    disk.fill("filler");
    let out = agent.cli(&["backend", "add", VIP, &third]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(
        (
            configuration(&agent.json(&["vip", "list"])),
            pinned_maps(&agent.pin_dir)
        ),
        before,
        "a refused change changed the agent or the data path"
    );
    let tally = spread(&topo.client, 60, "full");
    assert!(!tally.contains_key(&ident(2)), "b2 took flows: {tally:?}");
    assert!(
        !disk.0.join("state.tmp").exists(),
        "a partial state file was left"
    );

    fs::remove_file(disk.0.join("filler")).expect("freeing space");
    agent.ok(&["backend", "add", VIP, &third]);
    let after = configuration(&agent.json(&["vip", "list"]));
    assert_ne!(after, before.0);
    agent.stop(false);
    agent.start(&[]);
    assert_eq!(configuration(&agent.json(&["vip", "list"])), after);
    let tally = spread(&topo.client, 90, "room");
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
    let tally = spread(&topo.client, 60, "after");
    assert_eq!(tally.len(), BACKENDS, "{tally:?}");
    // Whatever the kill left, the agent can remove it all.
    for vip in &vips {
        agent.ok(&["vip", "del", &format!("{vip}/tcp")]);
    }
    assert_eq!(pinned_maps(&agent.pin_dir), (BTreeMap::new(), 0));
    agent.stop(true);
}

// --- Lifecycle: reload, config as source of truth, check, export, interfaces --------------

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
    let weights: Vec<u64> = agent
        .backends()
        .values()
        .map(|b| b.get("weight").u64())
        .collect();
    assert_eq!(weights, [3, 1, 0]);
    let tally = spread(&topo.client, 100, "reloaded");
    assert!(
        !tally.contains_key(&ident(2)),
        "weight 0 took flows: {tally:?}"
    );
    assert!(
        tally[&ident(0)] > tally[&ident(1)],
        "weights 3:1: {tally:?}"
    );
    let before = configuration(&agent.json(&["vip", "list"]));

    agent.file("xdplb.toml", &weights_config(&[2, 99_999, 1], ""));
    sighup(&agent);
    wait_for_log(&agent, "reload refused, nothing changed", 1);
    assert!(agent.log().contains("backend[1].weight"), "{}", agent.log());
    assert_eq!(configuration(&agent.json(&["vip", "list"])), before);
    agent.stop(false);

    agent.start(&strs(&vip_args()));
    sighup(&agent);
    wait_for_log(&agent, "nothing to reload", 1);
    let exited = agent
        .daemon
        .as_mut()
        .and_then(|d| d.try_wait().expect("wait"));
    assert!(exited.is_none(), "SIGHUP killed the agent: {exited:?}");
    spread(&topo.client, 10, "after-hup");
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
    let from_file = configuration(&agent.json(&["vip", "list"]));
    agent.ok(&["backend", "add", VIP, &backend_addr(2).to_string()]);
    agent.ok(&[
        "backend",
        "set",
        VIP,
        &backend_addr(0).to_string(),
        "--weight",
        "5",
    ]);
    let changed = configuration(&agent.json(&["vip", "list"]));

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
    assert_eq!(configuration(&agent.json(&["vip", "list"])), from_file);
    agent.stop(false);
    // The exported file keeps the CLI's changes.
    agent.start(&["--config", &path_str(&export)]);
    assert_eq!(configuration(&agent.json(&["vip", "list"])), changed);
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
    assert_eq!(out.status.code(), Some(1), "{stderr}");
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
        assert!(
            !common::xdp_attached(&topo, iface),
            "{iface} still attached"
        );
    }
    for iface in kept {
        assert!(common::xdp_attached(&topo, iface), "{iface} detached");
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
    assert!(common::xdp_attached(&topo, &dropped[0]));
    let out = agent.cli(&["iface", "attach", "nosuch0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch0"));
    agent.ok(&["iface", "detach", &dropped[0]]);
    assert!(!common::xdp_attached(&topo, &dropped[0]));
    let out = agent.cli(&["iface", "detach", &dropped[0]]);
    assert_eq!(out.status.code(), Some(1));
    agent.stop(true);
}

/// `xdplb check -f FILE` needs no agent: exit 0 for a good file, 1 with every error on a line
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
    assert_eq!(out.status.code(), Some(1), "{stderr}");
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
    let chats = chatter(hold(&topo.client, HELD), epoch);
    let dials = dialer(&topo.client, Duration::from_millis(20), epoch);
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
        assert!(common::xdp_attached(&topo, &iface), "{iface}: detached");
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
    let tally = spread(&topo.client, 30, "nobody");
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
