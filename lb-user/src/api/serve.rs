//! Serving the API on one listener within bounds no client can push the agent past: so many
//! connections at most (the oldest idle one closed to make room for a new one), a deadline for
//! each request's head (which is also how long a connection may sit idle) and for its body, and
//! a largest body. Each listener has its own bounds, so the clients of one (a TCP port anyone
//! may reach) cannot crowd out those of another (the root-only Unix socket).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{StatusCode, header::CONTENT_LENGTH},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use http_body_util::BodyExt as _;
use hyper::service::Service as _;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::Notify;

use super::ApiError;

/// The bounds of one listener.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; past it, the oldest idle one is closed for a new one (and a
    /// new one is closed at once if none is idle).
    pub max_connections: usize,
    /// How long a request's head may take to arrive, counted from the connection's start or
    /// the end of its last response: also how long a connection may stay idle.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive once its head has.
    pub body_timeout: Duration,
    /// Largest request body, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
        }
    }
}

/// Reads the whole request body within `max_body` bytes and `body_timeout` before the
/// handlers see it: 413 past the size (at once if the `Content-Length` says so), 408 past the
/// time.
pub(super) async fn buffer_body(
    (max_body, body_timeout): (usize, Duration),
    request: Request,
    next: Next,
) -> Response {
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {max_body} bytes"),
        )
        .into_response()
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let read = http_body_util::Limited::new(body, max_body).collect();
    let bytes = match tokio::time::timeout(body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(err)) => {
            return ApiError(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {err}"),
            )
            .into_response();
        }
        Err(_) => {
            return ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {body_timeout:?}"),
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A listener the API is served on: the Unix socket or a TCP port.
pub trait Accept: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(io, _)| io)
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        tokio::net::TcpListener::accept(self)
            .await
            .map(|(io, _)| io)
    }
}

/// Whether an accept error concerns only the connection that was being accepted.
fn is_connection_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        err.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    )
}

/// Serves `app` on `listener` within `limits` until the task is dropped. `name` says which
/// listener in the logs.
pub async fn serve<L: Accept>(mut listener: L, app: Router, limits: Limits, name: String) {
    let open = Arc::new(Connections::new(limits.max_connections));
    let mut refusals = Throttled::new(Duration::from_secs(10));
    let mut evictions = Throttled::new(Duration::from_secs(10));
    let mut failures = Throttled::new(Duration::from_secs(10));
    loop {
        // A connection closed for room closes before the next is accepted: the listener holds
        // at most so many descriptors, even in a burst.
        open.closed_all().await;
        let io = match listener.accept().await {
            Ok(io) => io,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of file descriptors, say: the agent's other work needs some too.
                if let Some(n) = failures.count() {
                    log::warn!("API {name}: accepting a connection failed ({n} times): {err}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (admitted, evicted) = open.admit();
        let Some(conn) = admitted else {
            if let Some(n) = refusals.count() {
                log::warn!(
                    "API {name}: {n} connection(s) refused: {} open, every one busy",
                    limits.max_connections
                );
            }
            continue;
        };
        if evicted && let Some(n) = evictions.count() {
            log::warn!(
                "API {name}: {} connections open, the limit: closed the {n} oldest idle one(s) \
                 for new ones",
                limits.max_connections
            );
        }
        let service = TowerToHyperService::new(app.clone());
        let in_flight = Arc::clone(&conn.in_flight);
        let service = hyper::service::service_fn(move |request| {
            let busy = Busy::new(Arc::clone(&in_flight));
            let response = service.call(request);
            async move {
                let response = response.await;
                drop(busy);
                response
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(io), service);
        tokio::spawn(async move {
            tokio::select! {
                // Errors are the client's: a reset, a timeout, a malformed request.
                _ = connection => {}
                () = conn.evict.notified() => {}
            }
            drop(conn);
        });
    }
}

/// Counts events and says how many when it last logged, at most once per period.
struct Throttled {
    period: Duration,
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            count: 0,
        }
    }

    /// Counts one; `Some(events since the last log)` if it is time to log.
    fn count(&mut self) -> Option<u64> {
        self.count += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < self.period) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// A request in flight on a connection, from its head to its response.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(in_flight: Arc<AtomicUsize>) -> Self {
        in_flight.fetch_add(1, Ordering::Relaxed);
        Self(in_flight)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open connection as the listener tracks it.
struct Entry {
    in_flight: Arc<AtomicUsize>,
    evict: Arc<Notify>,
}

/// A listener's open connections, in the order they were accepted.
struct Connections {
    max: usize,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Entry>>,
    /// Connections told to close for room that have not closed yet.
    closing: AtomicUsize,
    closed: Notify,
}

/// An admitted connection; dropping it forgets it.
struct Admitted {
    id: u64,
    in_flight: Arc<AtomicUsize>,
    evict: Arc<Notify>,
    open: Arc<Connections>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.open.table().remove(&self.id).is_none() {
            // It was closed for room.
            self.open.closing.fetch_sub(1, Ordering::SeqCst);
            self.open.closed.notify_waiters();
        }
    }
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            next: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
            closing: AtomicUsize::new(0),
            closed: Notify::new(),
        }
    }

    /// Waits until every connection told to close for room has closed.
    async fn closed_all(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before the check, so that the last close is not missed.
            closed.as_mut().enable();
            if self.closing.load(Ordering::SeqCst) == 0 {
                return;
            }
            closed.await;
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection, closing the oldest idle one if there are `max` already; `None`
    /// if they are all busy. Also says whether one was closed.
    fn admit(self: &Arc<Self>) -> (Option<Admitted>, bool) {
        let mut open = self.table();
        let mut evicted = false;
        if open.len() >= self.max {
            let idle = oldest_idle(
                open.iter()
                    .map(|(id, e)| (*id, e.in_flight.load(Ordering::Relaxed))),
            );
            let Some(entry) = idle.and_then(|id| open.remove(&id)) else {
                return (None, false);
            };
            // A stored permit: the connection's task ends even if it is not waiting yet.
            self.closing.fetch_add(1, Ordering::SeqCst);
            entry.evict.notify_one();
            evicted = true;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            in_flight: Arc::default(),
            evict: Arc::default(),
        };
        let admitted = Admitted {
            id,
            in_flight: Arc::clone(&entry.in_flight),
            evict: Arc::clone(&entry.evict),
            open: Arc::clone(self),
        };
        open.insert(id, entry);
        (Some(admitted), evicted)
    }
}

/// The first connection of `open` (in accept order: `(id, requests in flight)`) with no
/// request in flight.
fn oldest_idle(open: impl IntoIterator<Item = (u64, usize)>) -> Option<u64> {
    open.into_iter()
        .find(|&(_, in_flight)| in_flight == 0)
        .map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        assert_eq!(oldest_idle([(3, 1), (5, 0), (9, 0)]), Some(5));
        assert_eq!(oldest_idle([(3, 1), (5, 2)]), None);
        assert_eq!(oldest_idle([]), None);
    }

    #[test]
    fn admission_closes_the_oldest_idle_connection_past_the_limit() {
        let open = Arc::new(Connections::new(2));
        let (a, _) = open.admit();
        let (b, _) = open.admit();
        let (a, b) = (a.unwrap(), b.unwrap());
        let _busy = Busy::new(Arc::clone(&a.in_flight));
        let (c, evicted) = open.admit();
        assert!(evicted);
        assert!(c.is_some());
        // b was idle: it is told to close (a stored permit) and forgotten; the next accept
        // waits until it has closed.
        assert!(!open.table().contains_key(&b.id));
        assert!(open.table().contains_key(&a.id));
        assert_eq!(open.closing.load(Ordering::SeqCst), 1);
        drop(b);
        assert_eq!(open.closing.load(Ordering::SeqCst), 0);
        let c = c.unwrap();
        let _busy_c = Busy::new(Arc::clone(&c.in_flight));
        // Everything busy: the new one is refused.
        let (d, evicted) = open.admit();
        assert!(d.is_none() && !evicted);
        drop(c);
        drop(_busy_c);
        assert_eq!(open.table().len(), 1);
    }

    #[test]
    fn throttled_logs_once_per_period_with_the_count() {
        let mut t = Throttled::new(Duration::from_secs(3600));
        assert_eq!(t.count(), Some(1));
        assert_eq!(t.count(), None);
        assert_eq!(t.count(), None);
        t.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(t.count(), Some(3));
    }
}
