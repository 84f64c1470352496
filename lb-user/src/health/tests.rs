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
                let response = format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n");
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
        path: ProbePath::Direct,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut monitor = Monitor::new(tx).unwrap();
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
        path: ProbePath::Direct,
    };
    let closed = closed_tcp_port().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut monitor = Monitor::new(tx).unwrap();
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

#[test]
fn running_out_of_local_resources_is_the_agents_failure() {
    for errno in [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOBUFS,
        libc::ENOMEM,
        libc::EADDRNOTAVAIL,
    ] {
        assert!(is_local_errno(errno), "{errno}");
        let failure = io_error("connect", &io::Error::from_raw_os_error(errno));
        assert!(failure.local, "{failure:?}");
    }
    for errno in [
        libc::ECONNREFUSED,
        libc::ECONNRESET,
        libc::EHOSTUNREACH,
        libc::ENETUNREACH,
        libc::ETIMEDOUT,
    ] {
        assert!(!is_local_errno(errno), "{errno}");
        assert!(!io_error("connect", &io::Error::from_raw_os_error(errno)).local);
    }
}

/// A TCP server that accepts and never answers: an HTTP check of it times out.
async fn silent_http_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, server)
}

#[tokio::test]
async fn a_timeout_on_time_is_the_backends_failure() {
    let (addr, _server) = silent_http_server().await;
    let timeout = Duration::from_millis(300);
    let failure = check(&http("/", 200), addr, timeout).await.unwrap_err();
    assert!(!failure.local, "{failure:?}");
    assert_eq!(failure.reason, "timed out after 300ms");
}

#[tokio::test(flavor = "current_thread")]
async fn a_timeout_noticed_late_is_the_agents_failure() {
    let (addr, _server) = silent_http_server().await;
    let timeout = Duration::from_millis(100);
    let probe = tokio::spawn(async move { check(&http("/", 200), addr, timeout).await });
    // Let the check start (connect and send), then hold the runtime's only thread well past
    // the check's deadline, as a busy agent would.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    std::thread::sleep(timeout + late_allowance(timeout) + Duration::from_millis(400));
    let failure = probe.await.unwrap().unwrap_err();
    assert!(failure.local, "{failure:?}");
    assert!(failure.reason.contains("late"), "{failure:?}");
}
