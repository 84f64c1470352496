//! Traffic through a VIP from a topology's client, with real TCP connections to the servers
//! of [`Netns::tcp_server`](crate::netns::Netns::tcp_server), which answer every line with
//! their ident: connections made one after another and counted by backend, connections held
//! open, and threads that keep exchanging lines in the background while a test changes things.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::{Conn, Netns, http_get, udp_request};

/// Time between two exchanges on a held connection.
pub const CHAT_PERIOD: Duration = Duration::from_millis(50);

/// How many answers each backend gave, by ident.
pub type Tally = BTreeMap<String, usize>;

/// Makes `n` new connections from `client` to `addr`, one after the other, one exchange each
/// (line `{tag}{i}`), and counts which backend answered each. Panics if any fails.
pub fn spread(client: &Netns, addr: SocketAddr, n: usize, tag: &str) -> Tally {
    let (tally, failures) = client.run(|| {
        let mut tally = Tally::new();
        let mut failures = Vec::new();
        for i in 0..n {
            let line = format!("{tag}{i}");
            match Conn::connect(addr).and_then(|mut c| c.ask(&line)) {
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
        "{tag}: new connections to {addr} failed: {failures:?} (answered: {tally:?})"
    );
    tally
}

/// Opens `n` connections from `client` to `addr`, one exchange each, and keeps them open, with
/// the ident of the backend that answered.
pub fn hold(client: &Netns, addr: SocketAddr, n: usize) -> Vec<(Conn, String)> {
    client.run(|| {
        (0..n)
            .map(|i| {
                let mut conn = Conn::connect(addr)
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
pub struct Background<R> {
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
    pub fn progress(&self) -> usize {
        self.progress.load(Ordering::Relaxed)
    }

    /// Stops the threads and returns what each found.
    pub fn finish(mut self) -> Vec<R> {
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
pub struct Chat {
    /// The backend that answered the connection's first exchange.
    pub ident: String,
    pub exchanges: usize,
    /// The first failure (the connection is given up then), with when it happened.
    pub failure: Option<String>,
}

/// Exchanges a line on each held connection every [`CHAT_PERIOD`], one thread each, until
/// finished; the connections are closed then. An answer from another backend is a failure.
pub fn chatter(conns: Vec<(Conn, String)>, epoch: Instant) -> Background<Chat> {
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
pub struct Dialed {
    /// When each connection was answered, and by which backend.
    pub answered: Vec<(Instant, String)>,
    pub failures: Vec<String>,
}

/// Makes a new connection from `client` to `addr` (one exchange) every `period` until finished.
pub fn dialer(
    client: &Netns,
    addr: SocketAddr,
    period: Duration,
    epoch: Instant,
) -> Background<Dialed> {
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
            match Conn::connect(addr).and_then(|mut c| c.ask(&line)) {
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

#[cfg(feature = "xdplb")]
/// Connections held to `addr` (the agent's VIP `vip`) survive a backend added and another
/// drained: backend `added` (ident `b2`) is removed, 12 connections are held, `added` comes
/// back with weight 3 and `drained` (ident `b0`) is drained; every held connection still
/// answers from its backend (one of them from `b0`), and new ones avoid `b0` and reach `b2`.
pub fn held_connections_survive_add_and_drain(
    agent: &crate::agent::Agent,
    client: &Netns,
    (vip, addr): (&str, SocketAddr),
    (added, drained): (SocketAddr, SocketAddr),
) {
    agent.ok(&["backend", "del", vip, &added.to_string()]);
    let mut held = hold(client, addr, 12);
    agent.ok(&["backend", "add", vip, &added.to_string(), "--weight", "3"]);
    agent.ok(&["backend", "drain", vip, &drained.to_string()]);
    for (n, (conn, ident)) in held.iter_mut().enumerate() {
        let again = conn
            .ask(&format!("again{n}"))
            .unwrap_or_else(|err| panic!("held connection {n} to {ident}: {err:#}"));
        assert_eq!(&again, ident, "held connection {n} changed backend");
    }
    assert!(
        held.iter().any(|(_, ident)| ident == "b0"),
        "a held connection is on the drained backend"
    );
    let fresh = spread(client, addr, 30, "fresh");
    assert!(
        !fresh.contains_key("b0") && fresh.contains_key("b2"),
        "new connections avoid the drained backend and reach the added one: {fresh:?}"
    );
}

/// Asserts that `tally` (answers by backend ident `b0`, `b1`, ...) of `n` spreads over the
/// backends as `weights` do, each share within 5 percentage points.
pub fn assert_weighted(what: &str, tally: &Tally, n: usize, weights: &[usize]) {
    let total: usize = weights.iter().sum();
    for (i, weight) in weights.iter().enumerate() {
        let got = tally.get(&crate::netns::ident(i)).copied().unwrap_or(0);
        let share = got as f64 / n as f64;
        let want = *weight as f64 / total as f64;
        assert!(
            (share - want).abs() <= 0.05,
            "{what}: backend {i} got {got} of {n}, share {share:.3} for weight {weight} \
             ({want:.3}): {tally:?}"
        );
    }
}

/// Makes `n` HTTP GETs from `client` to `addr`, each on a connection of its own, and counts
/// which backend answered each (the body's first line, the ident the backend's nginx serves).
/// Panics if any fails or is not a 200.
pub fn http_spread(client: &Netns, addr: SocketAddr, n: usize) -> Tally {
    let mut tally = Tally::new();
    client.run(|| {
        for i in 0..n {
            let (status, body) = http_get(addr, &format!("/r{i}"))
                .unwrap_or_else(|err| panic!("HTTP GET {i}: {err:#}"));
            assert_eq!(status, 200, "HTTP GET {i}: {body}");
            *tally.entry(body.trim_end().to_owned()).or_default() += 1;
        }
    });
    tally
}

/// Makes `n` UDP exchanges from `client` with `addr` and counts which backend answered each
/// (the answer's first word). Panics if any fails or is answered from another address.
pub fn udp_spread(client: &Netns, addr: SocketAddr, n: usize) -> Tally {
    let mut tally = Tally::new();
    client.run(|| {
        for i in 0..n {
            let (answer, from) = udp_request(addr, &format!("q{i}"))
                .unwrap_or_else(|err| panic!("UDP exchange {i}: {err:#}"));
            assert_eq!(from, addr, "the answer comes from the VIP");
            let ident = answer.split(' ').next().unwrap_or_default().to_owned();
            *tally.entry(ident).or_default() += 1;
        }
    });
    tally
}
