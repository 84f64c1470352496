//! Health checks of backends: one probe ([`probe`]: TCP connect, a minimal HTTP/1.1 request or
//! a UDP request/reply), the rise/fall hysteresis that turns probe results into a health state
//! ([`Tracker`]), and the [`Monitor`] that runs a probe loop per watched backend in tokio tasks
//! and reports each change of health as a [`HealthEvent`].
//!
//! Backends start healthy: a check only ever takes a backend out after `fall` consecutive
//! failures, and puts it back after `rise` consecutive successes.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
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
}

impl CheckKind {
    /// The kind's name in the config file: `none`, `tcp`, `http` or `udp`.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Udp { .. } => "udp",
        }
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

/// Runs one check of `kind` against `target`, all of it within `timeout`. `Err` says why it
/// failed (`connection refused`, `timed out after 500ms`, `status 503, expected 200`, ...).
/// [`CheckKind::None`] always succeeds.
pub async fn probe(kind: &CheckKind, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    let check = async {
        match kind {
            CheckKind::None => Ok(()),
            CheckKind::Tcp => TcpStream::connect(target)
                .await
                .map(drop)
                .map_err(|err| io_error("connect", &err)),
            CheckKind::Http {
                method,
                path,
                expect_status,
            } => probe_http(target, method, path, *expect_status).await,
            CheckKind::Udp { payload, expect } => {
                probe_udp(target, payload, expect.as_deref()).await
            }
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

fn io_error(what: &str, err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => format!("{what}: connection reset"),
        _ => format!("{what}: {err}"),
    }
}

async fn probe_http(
    target: SocketAddr,
    method: &str,
    path: &str,
    expect_status: u16,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|err| io_error("connect", &err))?;
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
            return Err(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes"
            ));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|err| io_error("reading the response", &err))?;
        if n == 0 {
            return Err("connection closed before the status line".to_owned());
        }
        response.extend_from_slice(&chunk[..n]);
    };
    let status = parse_status_line(line)?;
    if status == expect_status {
        Ok(())
    } else {
        Err(format!("status {status}, expected {expect_status}"))
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
    payload: &[u8],
    expect: Option<&[u8]>,
) -> Result<(), String> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|err| io_error("bind", &err))?;
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
        Some(expect) if !reply.starts_with(expect) => Err(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&reply[..n.min(64)])
        )),
        _ => Ok(()),
    }
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

/// Counters of one watch.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Checks run.
    pub checks: u64,
    /// Checks that failed.
    pub failures: u64,
    /// Changes of health.
    pub transitions: u64,
    /// The current health.
    pub healthy: bool,
}

#[derive(Debug)]
struct Counters {
    checks: AtomicU64,
    failures: AtomicU64,
    transitions: AtomicU64,
    healthy: AtomicBool,
}

impl Counters {
    fn new(from: CheckStats) -> Self {
        Self {
            checks: AtomicU64::new(from.checks),
            failures: AtomicU64::new(from.failures),
            transitions: AtomicU64::new(from.transitions),
            healthy: AtomicBool::new(from.healthy),
        }
    }

    fn load(&self) -> CheckStats {
        CheckStats {
            checks: self.checks.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            transitions: self.transitions.load(Ordering::Relaxed),
            healthy: self.healthy.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
struct Watch {
    target: SocketAddr,
    check: HealthCheck,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

/// Runs the health checks of watched backends, one tokio task each, and sends a
/// [`HealthEvent`] on every change of health. Must be used within a tokio runtime. Dropping it
/// stops every check.
#[derive(Debug)]
pub struct Monitor {
    events: UnboundedSender<HealthEvent>,
    watches: HashMap<WatchKey, Watch>,
}

impl Monitor {
    /// A monitor watching nothing yet, reporting to `events`.
    pub fn new(events: UnboundedSender<HealthEvent>) -> Self {
        Self {
            events,
            watches: HashMap::new(),
        }
    }

    /// Checks `target` with `check` every `check.interval`, the first check at once, and
    /// reports changes of health as `key`'s. A new key starts healthy.
    ///
    /// Replaces an existing watch of `key`, keeping its health and counters; the same target
    /// and check again leave the running watch alone. [`CheckKind::None`] watches nothing: it
    /// ends a watch of `key`, and if that watch had found the backend unhealthy, reports it
    /// healthy (nothing holds it down any more).
    pub fn watch(&mut self, key: WatchKey, target: SocketAddr, check: HealthCheck) {
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
            if previous.is_some_and(|stats| !stats.healthy) {
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
        let task = tokio::spawn(run(
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
    }
}

/// The probe loop of one watch.
async fn run(
    key: WatchKey,
    target: SocketAddr,
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
        let result = probe(&check.kind, target, check.timeout).await;
        counters.checks.fetch_add(1, Ordering::Relaxed);
        let ok = result.is_ok();
        if let Err(err) = result {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            last_error = err;
        }
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        net::{TcpListener, UdpSocket},
        sync::mpsc,
    };

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);

    fn http(path: &str, expect_status: u16) -> CheckKind {
        CheckKind::Http {
            method: "GET".to_owned(),
            path: path.to_owned(),
            expect_status,
        }
    }

    /// A port on 127.0.0.1 that nothing listens on (bound, then released).
    async fn closed_tcp_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// An HTTP server answering `status` for `/healthz` and 404 for anything else.
    async fn http_server(status: u16) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 256];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let ok = text.starts_with("GET /healthz HTTP/1.1\r\n")
                        && text.contains(&format!("\r\nHost: {addr}\r\n"))
                        && text.contains("\r\nConnection: close\r\n");
                    let status = if ok { status } else { 404 };
                    let response =
                        format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n");
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_probe() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        assert_eq!(probe(&CheckKind::Tcp, open, TIMEOUT).await, Ok(()));
        let closed = closed_tcp_port().await;
        assert_eq!(
            probe(&CheckKind::Tcp, closed, TIMEOUT).await,
            Err("connection refused".to_owned())
        );
        assert_eq!(probe(&CheckKind::None, closed, TIMEOUT).await, Ok(()));
    }

    #[tokio::test]
    async fn http_probe() {
        let ok = http_server(200).await;
        let failing = http_server(503).await;
        assert_eq!(probe(&http("/healthz", 200), ok, TIMEOUT).await, Ok(()));
        assert_eq!(
            probe(&http("/healthz", 200), failing, TIMEOUT).await,
            Err("status 503, expected 200".to_owned())
        );
        assert_eq!(
            probe(&http("/healthz", 503), failing, TIMEOUT).await,
            Ok(())
        );
        assert_eq!(
            probe(&http("/wrong", 200), ok, TIMEOUT).await,
            Err("status 404, expected 200".to_owned())
        );
        assert_eq!(
            probe(&http("/healthz", 200), closed_tcp_port().await, TIMEOUT).await,
            Err("connection refused".to_owned())
        );
    }

    #[tokio::test]
    async fn http_probe_times_out_on_a_silent_server() {
        // Accepts (the kernel does) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        assert_eq!(
            probe(&http("/", 200), addr, Duration::from_millis(100)).await,
            Err("timed out after 100ms".to_owned())
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Ok(503));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc OK").is_err());
    }

    /// A UDP server answering every datagram with "pong " and the datagram.
    async fn udp_echo() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let mut reply = b"pong ".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn udp_probe() {
        let echo = udp_echo().await;
        let udp = |expect: Option<&str>| CheckKind::Udp {
            payload: b"ping".to_vec(),
            expect: expect.map(|e| e.as_bytes().to_vec()),
        };
        assert_eq!(probe(&udp(None), echo, TIMEOUT).await, Ok(()));
        assert_eq!(probe(&udp(Some("pong")), echo, TIMEOUT).await, Ok(()));
        assert_eq!(
            probe(&udp(Some("hello")), echo, TIMEOUT).await,
            Err("unexpected reply \"pong ping\"".to_owned())
        );

        // Something is bound there but never answers: the check times out.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        assert_eq!(
            probe(&udp(None), addr, Duration::from_millis(100)).await,
            Err("timed out after 100ms".to_owned())
        );
        // Nothing is bound there: the ICMP port unreachable fails it (or, if it is filtered,
        // the timeout).
        drop(silent);
        let err = probe(&udp(None), addr, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            err == "connection refused" || err == "timed out after 100ms",
            "{err}"
        );
    }

    /// What, rise, fall, initially healthy, results, the flip expected after each result.
    type TrackerCase<'a> = (&'a str, u32, u32, bool, &'a [bool], &'a [Option<bool>]);

    #[test]
    fn tracker_rise_and_fall() {
        #[rustfmt::skip]
        let table: &[TrackerCase] = &[
            ("healthy stays healthy", 2, 3, true, &[true, true], &[None, None]),
            ("fall after 3 failures", 2, 3, true,
                &[false, false, false, false],
                &[None, None, Some(false), None]),
            ("a success resets the failure streak", 2, 3, true,
                &[false, false, true, false, false, false],
                &[None, None, None, None, None, Some(false)]),
            ("rise after 2 successes", 2, 3, false,
                &[true, true, true],
                &[None, Some(true), None]),
            ("a failure resets the success streak", 2, 3, false,
                &[true, false, true, true],
                &[None, None, None, Some(true)]),
            ("rise and fall of 1 flip at once", 1, 1, true,
                &[false, false, true, true, false],
                &[Some(false), None, Some(true), None, Some(false)]),
            ("rise and fall of 0 count as 1", 0, 0, true,
                &[false, true],
                &[Some(false), Some(true)]),
            ("full cycle", 2, 2, true,
                &[false, false, true, true, false, false],
                &[None, Some(false), None, Some(true), None, Some(false)]),
        ];
        for &(what, rise, fall, initially, results, flips) in table {
            let mut tracker = Tracker::new(rise, fall, initially);
            let got: Vec<Option<bool>> = results.iter().map(|&ok| tracker.record(ok)).collect();
            assert_eq!(got, flips, "{what}");
        }
    }

    fn key(backend: SocketAddr) -> WatchKey {
        ("198.19.0.1:80/tcp".parse().unwrap(), backend)
    }

    #[tokio::test]
    async fn monitor_reports_a_backend_going_down_and_coming_back() {
        let interval = Duration::from_millis(50);
        let check = HealthCheck {
            kind: CheckKind::Tcp,
            interval,
            timeout: Duration::from_millis(40),
            rise: 2,
            fall: 3,
            port: None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut monitor = Monitor::new(tx);
        monitor.watch(key(addr), addr, check.clone());

        // Healthy from the start: a few checks and no event.
        tokio::time::sleep(interval * 3).await;
        assert!(rx.try_recv().is_err(), "no event while healthy");
        let stats = monitor.stats(&key(addr)).unwrap();
        assert!(stats.checks >= 2 && stats.failures == 0 && stats.healthy);

        // Down: reported within fall × interval + one interval (plus scheduling slack).
        drop(listener);
        let started = Instant::now();
        let bound = interval * (check.fall + 1) + Duration::from_millis(50);
        let event = tokio::time::timeout(bound, rx.recv())
            .await
            .expect("reported unhealthy in time")
            .unwrap();
        assert_eq!(event.key, key(addr));
        assert!(!event.healthy);
        assert_eq!(
            event.reason,
            "3 consecutive failed checks, last: connection refused"
        );
        assert!(started.elapsed() <= bound);
        let stats = monitor.stats(&key(addr)).unwrap();
        assert!(!stats.healthy && stats.failures >= 3 && stats.transitions == 1);

        // Back on the same port: healthy again after `rise` successes.
        let listener = TcpListener::bind(addr).await.unwrap();
        let bound = interval * (check.rise + 1) + Duration::from_millis(50);
        let event = tokio::time::timeout(bound, rx.recv())
            .await
            .expect("reported healthy in time")
            .unwrap();
        assert!(event.healthy);
        assert_eq!(event.reason, "2 consecutive successful checks");
        assert_eq!(monitor.stats(&key(addr)).unwrap().transitions, 2);
        drop(listener);
    }

    #[tokio::test]
    async fn monitor_replaces_unwatches_and_stops_on_drop() {
        let interval = Duration::from_millis(20);
        let check = HealthCheck {
            kind: CheckKind::Tcp,
            interval,
            timeout: Duration::from_millis(20),
            rise: 1,
            fall: 1,
            port: None,
        };
        let closed = closed_tcp_port().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut monitor = Monitor::new(tx);
        monitor.watch(key(closed), closed, check.clone());
        let event = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!event.healthy);

        // Replacing the check keeps the health: no new event while it keeps failing.
        let slower = HealthCheck {
            interval: interval * 2,
            ..check.clone()
        };
        monitor.watch(key(closed), closed, slower);
        tokio::time::sleep(interval * 4).await;
        assert!(rx.try_recv().is_err());
        assert!(!monitor.stats(&key(closed)).unwrap().healthy);

        // No check any more: healthy again, and nothing is watched.
        monitor.watch(key(closed), closed, HealthCheck::default());
        let event = rx.recv().await.unwrap();
        assert!(event.healthy);
        assert_eq!(event.reason, "health check removed");
        assert!(monitor.stats(&key(closed)).is_none());

        // unwatch and unwatch_all_except.
        let other = closed_tcp_port().await;
        monitor.watch(key(closed), closed, check.clone());
        monitor.watch(key(other), other, check.clone());
        monitor.unwatch_all_except(&HashSet::from([key(other)]));
        assert_eq!(monitor.watched().collect::<Vec<_>>(), vec![&key(other)]);
        monitor.unwatch(&key(other));
        assert_eq!(monitor.watched().count(), 0);

        // Dropping the monitor ends the tasks, which drops their senders: the channel closes.
        monitor.watch(key(other), other, check);
        drop(monitor);
        tokio::time::timeout(Duration::from_secs(1), async {
            while rx.recv().await.is_some() {}
        })
        .await
        .expect("channel closed after drop");
    }
}
