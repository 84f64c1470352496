//! Health checks of backends: one probe ([`probe`]: TCP connect, a minimal HTTP/1.1 request or
//! a UDP request/reply), the rise/fall hysteresis that turns probe results into a health state
//! ([`Tracker`]), and the [`Monitor`] that runs a probe loop per watched backend in tokio tasks
//! and reports each change of health as a [`HealthEvent`].
//!
//! The checks judge the backends, not the agent: they run on a runtime of their own (its own
//! thread), so that no API load can hold them up, and a check that fails for a reason of the
//! agent's own (out of file descriptors or buffers, or a timeout that fired late because the
//! agent's thread did not run) is logged and counted but not held against the backend.
//!
//! Backends start healthy: a check only ever takes a backend out after `fall` consecutive
//! failures, and puts it back after `rise` consecutive successes.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream, UdpSocket},
    sync::mpsc::UnboundedSender,
    task::JoinHandle,
    time::MissedTickBehavior,
};

use crate::balancer::Vip;

/// Longest HTTP status line (and headers before it) read before giving up.
const MAX_STATUS_LINE: usize = 4096;
/// Largest UDP reply read (a datagram cannot be larger).
const MAX_UDP_REPLY: usize = 65_536;
/// Shortest interval a monitor probes at, whatever it is given.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// What one check does.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CheckKind {
    /// No check: the backend is always healthy.
    #[default]
    None,
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP/1.1 request gets a response with this status code.
    Http {
        /// Request method, e.g. `GET`.
        method: String,
        /// Request target, e.g. `/healthz`.
        path: String,
        /// The status code that counts as healthy.
        expect_status: u16,
    },
    /// A UDP datagram gets a reply (starting with `expect`, if set).
    Udp {
        /// The datagram sent.
        payload: Vec<u8>,
        /// What the reply must start with; any reply will do if `None`.
        expect: Option<Vec<u8>>,
    },
    /// An HTTP/1.1 request over TLS gets a response with this status code.
    Https {
        /// Request method, e.g. `GET`.
        method: String,
        /// Request target, e.g. `/healthz`.
        path: String,
        /// The status code that counts as healthy.
        expect_status: u16,
        /// Skip the certificate's verification (self-signed backends); otherwise it must chain
        /// to a Mozilla root (webpki-roots) and name `server_name`.
        insecure: bool,
        /// The name the certificate must have; the backend's address if `None`.
        server_name: Option<String>,
    },
    /// A command exits 0 (see [`EXEC_ENV`] for what it is told); killed at the timeout.
    Exec {
        /// The program and its arguments.
        argv: Vec<String>,
    },
}

/// The environment of an `exec` check: the address checked, as `ADDR:PORT`, `ADDR` and `PORT`.
pub const EXEC_ENV: [&str; 3] = ["XDPLB_BACKEND", "XDPLB_BACKEND_ADDR", "XDPLB_BACKEND_PORT"];

impl CheckKind {
    /// The kind's name in the config file: `none`, `tcp`, `http`, `udp` or `exec`.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Udp { .. } => "udp",
            CheckKind::Exec { .. } => "exec",
            CheckKind::Https { .. } => "https",
        }
    }
}

/// Where a check's packets go.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum ProbePath {
    /// To the backend's own address (or the check's port on it).
    #[default]
    Direct,
    /// To the VIP's address, delivered as the data path does: to the backend's MAC (`dsr-l2`),
    /// or encapsulated to its address (`ipip`). A backend that does not hold the VIP, or does
    /// not decapsulate, fails. `nat` VIPs probe directly.
    Vip,
}

impl std::str::FromStr for ProbePath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(ProbePath::Direct),
            "vip" => Ok(ProbePath::Vip),
            other => Err(format!(
                "unknown health check path {other:?}: expected direct or vip"
            )),
        }
    }
}

impl ProbePath {
    /// The path's name in the config file: `direct` or `vip`.
    pub fn name(self) -> &'static str {
        match self {
            ProbePath::Direct => "direct",
            ProbePath::Vip => "vip",
        }
    }
}

/// Where one watch's checks go: an address, and the socket mark (`SO_MARK`) that routes them
/// (the agent's rule for the mark sends them to one backend's MAC, or through its tunnel; see
/// `agent::probe_routes`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The address checked.
    pub addr: SocketAddr,
    /// The mark of the check's sockets, if any.
    pub mark: Option<u32>,
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self { addr, mark: None }
    }
}

/// A VIP's health check, applied to each of its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// What one check does.
    pub kind: CheckKind,
    /// Time between the starts of two checks.
    pub interval: Duration,
    /// How long one check may take; longer counts as a failure.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy backend healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub fall: u32,
    /// Check this port instead of the backend's.
    pub port: Option<u16>,
    /// Where the checks go.
    pub path: ProbePath,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: CheckKind::None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            port: None,
            path: ProbePath::Direct,
        }
    }
}

impl HealthCheck {
    /// Where to check `backend`: its address, with [`HealthCheck::port`] if set.
    pub fn target(&self, backend: SocketAddr) -> SocketAddr {
        match self.port {
            Some(port) => SocketAddr::new(backend.ip(), port),
            None => backend,
        }
    }
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What happened: `connection refused`, `timed out after 500ms`, `status 503, ...`.
    pub reason: String,
    /// The failure is the agent's, not the backend's: out of file descriptors, of buffers, of
    /// memory or of local ports, or a timeout that fired well after its deadline.
    pub local: bool,
}

impl Failure {
    fn backend(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            local: false,
        }
    }
}

/// How late past its deadline a check's timeout may fire and still count against the backend:
/// later, the agent's own thread did not run in time, and nothing says the backend was slow.
pub fn late_allowance(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(100))
}

/// Whether an error number says the agent, not the backend, failed: out of file descriptors
/// (`EMFILE`, `ENFILE`), buffers (`ENOBUFS`), memory (`ENOMEM`) or local ports
/// (`EADDRNOTAVAIL`).
pub fn is_local_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL
    )
}

/// Runs one check of `kind` against `target`, all of it within `timeout`. `Err` says why it
/// failed (`connection refused`, `timed out after 500ms`, `status 503, expected 200`, ...).
/// [`CheckKind::None`] always succeeds.
pub async fn probe(kind: &CheckKind, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    check(kind, target, timeout).await.map_err(|f| f.reason)
}

/// [`probe`], saying also whether a failure is the agent's own ([`Failure::local`]).
pub async fn check(
    kind: &CheckKind,
    target: impl Into<Target>,
    timeout: Duration,
) -> Result<(), Failure> {
    let Target { addr: target, mark } = target.into();
    let check = async {
        match kind {
            CheckKind::None => Ok(()),
            CheckKind::Tcp => connect(target, mark).await.map(drop),
            CheckKind::Http {
                method,
                path,
                expect_status,
            } => probe_http(target, mark, method, path, *expect_status).await,
            CheckKind::Udp { payload, expect } => {
                probe_udp(target, mark, payload, expect.as_deref()).await
            }
            CheckKind::Exec { argv } => probe_exec(target, argv).await,
            CheckKind::Https {
                method,
                path,
                expect_status,
                insecure,
                server_name,
            } => {
                let stream = connect(target, mark).await?;
                let stream =
                    tls::handshake(stream, target, *insecure, server_name.as_deref()).await?;
                http_exchange(stream, target, method, path, *expect_status).await
            }
        }
    };
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => {
            let late = started.elapsed().saturating_sub(timeout);
            if late > late_allowance(timeout) {
                Err(Failure {
                    reason: format!(
                        "timed out after {timeout:?}, noticed {late:?} late (the agent was busy)"
                    ),
                    local: true,
                })
            } else {
                Err(Failure::backend(format!("timed out after {timeout:?}")))
            }
        }
    }
}

/// A TCP connection to `target` from a socket with `mark`, if any.
async fn connect(target: SocketAddr, mark: Option<u32>) -> Result<TcpStream, Failure> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|err| io_error("socket", &err))?;
    if let Some(mark) = mark {
        set_mark(&socket, mark)?;
    }
    socket
        .connect(target)
        .await
        .map_err(|err| io_error("connect", &err))
}

/// Marks `socket`'s packets with `mark` (`SO_MARK`, which needs `CAP_NET_ADMIN`): a failure
/// is the agent's own.
fn set_mark(socket: &impl std::os::fd::AsFd, mark: u32) -> Result<(), Failure> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Mark, &mark).map_err(|err| {
        Failure {
            reason: format!("setting the socket mark: {err}"),
            local: true,
        }
    })
}

fn io_error(what: &str, err: &io::Error) -> Failure {
    let reason = match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => format!("{what}: connection reset"),
        _ => format!("{what}: {err}"),
    };
    Failure {
        reason,
        local: err.raw_os_error().is_some_and(is_local_errno),
    }
}

async fn probe_http(
    target: SocketAddr,
    mark: Option<u32>,
    method: &str,
    path: &str,
    expect_status: u16,
) -> Result<(), Failure> {
    let stream = connect(target, mark).await?;
    http_exchange(stream, target, method, path, expect_status).await
}

/// One request on `stream` (plain TCP or TLS), judged by the response's status code.
async fn http_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    target: SocketAddr,
    method: &str,
    path: &str,
    expect_status: u16,
) -> Result<(), Failure> {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| io_error("sending the request", &err))?;
    let mut response = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let line = loop {
        if let Some(end) = response.iter().position(|&b| b == b'\n') {
            break &response[..end];
        }
        if response.len() > MAX_STATUS_LINE {
            return Err(Failure::backend(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes"
            )));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|err| io_error("reading the response", &err))?;
        if n == 0 {
            return Err(Failure::backend("connection closed before the status line"));
        }
        response.extend_from_slice(&chunk[..n]);
    };
    let status = parse_status_line(line).map_err(Failure::backend)?;
    if status == expect_status {
        Ok(())
    } else {
        Err(Failure::backend(format!(
            "status {status}, expected {expect_status}"
        )))
    }
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`, with or without `\r`).
fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("bad status line {text:?}"));
    }
    code.parse()
        .map_err(|_| format!("bad status line {text:?}"))
}

async fn probe_udp(
    target: SocketAddr,
    mark: Option<u32>,
    payload: &[u8],
    expect: Option<&[u8]>,
) -> Result<(), Failure> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|err| io_error("bind", &err))?;
    if let Some(mark) = mark {
        set_mark(&socket, mark)?;
    }
    // Connected, so that only the target's replies are received and an ICMP port unreachable
    // shows up as "connection refused".
    socket
        .connect(target)
        .await
        .map_err(|err| io_error("connect", &err))?;
    socket
        .send(payload)
        .await
        .map_err(|err| io_error("send", &err))?;
    let mut reply = vec![0u8; MAX_UDP_REPLY];
    let n = socket
        .recv(&mut reply)
        .await
        .map_err(|err| io_error("receive", &err))?;
    let reply = &reply[..n];
    match expect {
        Some(expect) if !reply.starts_with(expect) => Err(Failure::backend(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply[..n.min(64)])
        ))),
        _ => Ok(()),
    }
}

/// Runs `argv` with the target in its environment ([`EXEC_ENV`]): healthy if it exits 0. It
/// is killed when dropped, so the check's timeout ends it.
async fn probe_exec(target: SocketAddr, argv: &[String]) -> Result<(), Failure> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Failure::backend("no command"))?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .env(EXEC_ENV[0], target.to_string())
        .env(EXEC_ENV[1], target.ip().to_string())
        .env(EXEC_ENV[2], target.port().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            let mut failure = io_error(&format!("starting {program}"), &err);
            // A missing program is the operator's, not the backend's, but it must show.
            failure.local &= err.kind() != io::ErrorKind::NotFound;
            failure
        })?;
    let output = child
        .wait_with_output()
        .await
        .map_err(|err| io_error(&format!("running {program}"), &err))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or("").trim();
    Err(Failure::backend(if last.is_empty() {
        format!("{program} failed ({})", output.status)
    } else {
        format!("{program} failed ({}): {last}", output.status)
    }))
}

/// Rise/fall hysteresis over check results. Pure and synchronous.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive results disagreeing with `healthy`.
    streak: u32,
}

impl Tracker {
    /// A tracker in state `initially_healthy`; `rise` and `fall` below 1 count as 1.
    pub fn new(rise: u32, fall: u32, initially_healthy: bool) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: initially_healthy,
            streak: 0,
        }
    }

    /// The current health.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check result; `Some(new health)` exactly when the health flips: healthy to
    /// unhealthy after `fall` consecutive failures, unhealthy to healthy after `rise`
    /// consecutive successes.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.healthy = ok;
        self.streak = 0;
        Some(ok)
    }
}

/// What a [`Monitor`] watches: a backend of a VIP.
pub type WatchKey = (Vip, SocketAddr);

/// A change of a watched backend's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    /// The backend, as watched.
    pub key: WatchKey,
    /// Its new health.
    pub healthy: bool,
    /// Why, e.g. `3 consecutive failed checks, last: connection refused`.
    pub reason: String,
}

/// The last check of a watch that counted (local failures do not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCheck {
    /// When it ended.
    pub at: SystemTime,
    /// Its failure, if it failed.
    pub error: Option<String>,
}

/// The last failure of a watch, kept after later checks succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastFailure {
    /// When it ended.
    pub at: SystemTime,
    /// Why it failed.
    pub error: String,
}

/// Counters of one watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Checks run.
    pub checks: u64,
    /// Checks that failed (for the backend's reasons).
    pub failures: u64,
    /// Checks that failed for the agent's own reasons ([`Failure::local`]), not counted
    /// against the backend.
    pub local_failures: u64,
    /// Changes of health.
    pub transitions: u64,
    /// The current health.
    pub healthy: bool,
    /// The last check that counted; `None` before the first.
    pub last: Option<LastCheck>,
    /// The last failed check, if any failed.
    pub last_failure: Option<LastFailure>,
}

#[derive(Debug)]
struct Counters {
    checks: AtomicU64,
    failures: AtomicU64,
    local_failures: AtomicU64,
    transitions: AtomicU64,
    healthy: AtomicBool,
    /// The last check and the last failure; written once per check, read by views.
    last: Mutex<(Option<LastCheck>, Option<LastFailure>)>,
}

impl Counters {
    fn new(from: CheckStats) -> Self {
        Self {
            checks: AtomicU64::new(from.checks),
            failures: AtomicU64::new(from.failures),
            local_failures: AtomicU64::new(from.local_failures),
            transitions: AtomicU64::new(from.transitions),
            healthy: AtomicBool::new(from.healthy),
            last: Mutex::new((from.last, from.last_failure)),
        }
    }

    fn record_last(&self, error: Option<String>) {
        let at = SystemTime::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(error) = &error {
            last.1 = Some(LastFailure {
                at,
                error: error.clone(),
            });
        }
        last.0 = Some(LastCheck { at, error });
    }

    fn load(&self) -> CheckStats {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        CheckStats {
            checks: self.checks.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            local_failures: self.local_failures.load(Ordering::Relaxed),
            transitions: self.transitions.load(Ordering::Relaxed),
            healthy: self.healthy.load(Ordering::Relaxed),
            last: last.0,
            last_failure: last.1,
        }
    }
}

#[derive(Debug)]
struct Watch {
    target: Target,
    check: HealthCheck,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

/// Runs the health checks of watched backends, one tokio task each on a runtime of its own
/// (one thread, `xdplb-health`), and sends a [`HealthEvent`] on every change of health.
/// Dropping it stops every check.
#[derive(Debug)]
pub struct Monitor {
    events: UnboundedSender<HealthEvent>,
    watches: HashMap<WatchKey, Watch>,
    /// Always `Some` but in `drop`.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Monitor {
    /// A monitor watching nothing yet, reporting to `events`; fails if its thread cannot be
    /// started.
    pub fn new(events: UnboundedSender<HealthEvent>) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("xdplb-health")
            .enable_all()
            .build()?;
        Ok(Self {
            events,
            watches: HashMap::new(),
            runtime: Some(runtime),
        })
    }

    /// Checks `target` with `check` every `check.interval`, the first check at once, and
    /// reports changes of health as `key`'s. A new key starts healthy.
    ///
    /// Replaces an existing watch of `key`, keeping its health and counters; the same target
    /// and check again leave the running watch alone. [`CheckKind::None`] watches nothing: it
    /// ends a watch of `key`, and if that watch had found the backend unhealthy, reports it
    /// healthy (nothing holds it down any more).
    pub fn watch(&mut self, key: WatchKey, target: impl Into<Target>, check: HealthCheck) {
        let target = target.into();
        if let Some(existing) = self.watches.get(&key)
            && existing.target == target
            && existing.check == check
        {
            return;
        }
        let previous = self.watches.remove(&key).map(|old| {
            old.task.abort();
            old.counters.load()
        });
        if check.kind == CheckKind::None {
            if previous.as_ref().is_some_and(|stats| !stats.healthy) {
                // A closed receiver only means nobody listens any more.
                let _ = self.events.send(HealthEvent {
                    key,
                    healthy: true,
                    reason: "health check removed".to_owned(),
                });
            }
            return;
        }
        let counters = Arc::new(Counters::new(previous.unwrap_or(CheckStats {
            healthy: true,
            ..CheckStats::default()
        })));
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let task = runtime.spawn(run(
            key,
            target,
            check.clone(),
            Arc::clone(&counters),
            self.events.clone(),
        ));
        self.watches.insert(
            key,
            Watch {
                target,
                check,
                counters,
                task,
            },
        );
    }

    /// Stops checking `key`; nothing is reported.
    pub fn unwatch(&mut self, key: &WatchKey) {
        if let Some(watch) = self.watches.remove(key) {
            watch.task.abort();
        }
    }

    /// Stops checking every key not in `keep`.
    pub fn unwatch_all_except(&mut self, keep: &HashSet<WatchKey>) {
        self.watches.retain(|key, watch| {
            let kept = keep.contains(key);
            if !kept {
                watch.task.abort();
            }
            kept
        });
    }

    /// The counters of `key`'s watch, if it is watched.
    pub fn stats(&self, key: &WatchKey) -> Option<CheckStats> {
        self.watches.get(key).map(|watch| watch.counters.load())
    }

    /// The watched keys, in no particular order.
    pub fn watched(&self) -> impl Iterator<Item = &WatchKey> {
        self.watches.keys()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for watch in self.watches.values() {
            watch.task.abort();
        }
        // Without waiting: the monitor may be dropped on an async worker.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The probe loop of one watch.
async fn run(
    key: WatchKey,
    target: Target,
    check: HealthCheck,
    counters: Arc<Counters>,
    events: UnboundedSender<HealthEvent>,
) {
    let mut tracker = Tracker::new(
        check.rise,
        check.fall,
        counters.healthy.load(Ordering::Relaxed),
    );
    let mut ticker = tokio::time::interval(check.interval.max(MIN_INTERVAL));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        ticker.tick().await;
        let result = self::check(&check.kind, target, check.timeout).await;
        counters.checks.fetch_add(1, Ordering::Relaxed);
        let ok = match result {
            Ok(()) => {
                counters.record_last(None);
                true
            }
            Err(failure) if failure.local => {
                counters.local_failures.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "backend {} of {}: check not counted, it failed for the agent's own reason: \
                     {}",
                    key.1,
                    key.0,
                    failure.reason
                );
                continue;
            }
            Err(failure) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                counters.record_last(Some(failure.reason.clone()));
                last_error = failure.reason;
                false
            }
        };
        let Some(healthy) = tracker.record(ok) else {
            continue;
        };
        counters.transitions.fetch_add(1, Ordering::Relaxed);
        counters.healthy.store(healthy, Ordering::Relaxed);
        let reason = if healthy {
            format!("{} consecutive successful checks", check.rise.max(1))
        } else {
            format!(
                "{} consecutive failed checks, last: {last_error}",
                check.fall.max(1)
            )
        };
        log::debug!(
            "backend {} of {}: {} ({reason})",
            key.1,
            key.0,
            if healthy { "healthy" } else { "unhealthy" }
        );
        if events
            .send(HealthEvent {
                key,
                healthy,
                reason,
            })
            .is_err()
        {
            // Nobody listens any more.
            return;
        }
    }
}

mod tls;

#[cfg(test)]
mod tests;
