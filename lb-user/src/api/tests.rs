//! The API in process, over the in-memory maps: what it refuses, with which status and message,
//! and that a refusal changes nothing (neither the balancer nor the state file). No root
//! needed.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use http_body_util::BodyExt as _;
use lb_common::maps::Settings;
use tower::ServiceExt as _;

use super::*;
use crate::{
    agent::Dataplane,
    balancer::{BackendSpec, Balancer, VipOptions},
    counters::Counters,
    loader::AttachMode,
    maps::{DynMaps, MemMaps},
};

/// A stand-in for the pinned program: interfaces by name, no counters.
struct Program {
    dir: PathBuf,
    ifaces: Vec<String>,
}

impl Dataplane for Program {
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn ifaces(&self) -> Vec<String> {
        self.ifaces.clone()
    }
    fn attach(&mut self, iface: &str, _: AttachMode) -> anyhow::Result<()> {
        self.ifaces.push(iface.to_owned());
        Ok(())
    }
    fn detach(&mut self, iface: &str) -> anyhow::Result<()> {
        self.ifaces.retain(|i| i != iface);
        Ok(())
    }
    fn counters(&self) -> anyhow::Result<Counters> {
        Ok(Counters::default())
    }
    fn events(&self) -> anyhow::Result<crate::counters::Events> {
        Ok(crate::counters::Events::default())
    }
    fn conntrack_capacity(&self) -> anyhow::Result<u32> {
        Ok(lb_common::maps::DEFAULT_CONNTRACK_CAPACITY)
    }
    fn embryonic_capacity(&self) -> anyhow::Result<u32> {
        Ok(lb_common::maps::DEFAULT_EMBRYONIC_CAPACITY)
    }
    fn finish_replacement(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// An agent with VIP 198.19.0.1:80/tcp and two backends, saving into a directory of its own.
fn agent(name: &str) -> (Shared, PathBuf) {
    let dir = std::env::temp_dir().join(format!("xdplb-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let maps: DynMaps = Box::<MemMaps>::default();
    let mut balancer = Balancer::new(maps, 1 << 20, Settings::default()).unwrap();
    let vip: Vip = "198.19.0.1:80/tcp".parse().unwrap();
    balancer.add_vip(vip, VipOptions::default()).unwrap();
    let backends = ["198.18.1.2:8080", "198.18.2.2:8080"]
        .map(|a| BackendSpec::new(a.parse().unwrap(), 1))
        .to_vec();
    balancer.set_backends(&vip, backends).unwrap();
    let program = Program {
        dir: dir.clone(),
        ifaces: vec!["eth0".into()],
    };
    let mut agent = Agent::new(balancer, Box::new(program), dir.join("state.json")).unwrap();
    agent.save().unwrap();
    (share(agent), dir)
}

async fn send(app: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// What a refusal must leave as it was.
fn seen(shared: &Shared, dir: &Path) -> (Vec<VipInfo>, Vec<String>, Vec<u8>) {
    let agent = shared.lock().unwrap();
    (
        agent.balancer.vips(),
        agent.pinned.ifaces(),
        std::fs::read(dir.join("state.json")).unwrap(),
    )
}

#[tokio::test]
async fn refusals_name_the_problem_and_change_nothing() {
    let (shared, dir) = agent("refusals");
    let (shutdown, _) = watch::channel(Shutdown::Running);
    let app = router(std::sync::Arc::clone(&shared), shutdown, &Limits::default());
    let vip = "/v1/vips/tcp/198.19.0.1:80";
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_toml = format!("x = {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let loopback_backend = "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
        [[vip.backend]]\naddress = \"127.0.0.1:8080\"\n";
    let capacity = "[conntrack]\ncapacity = 5000\n\n[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n";
    let embryonic = capacity.replace("capacity = 5000", "embryonic-capacity = 5000");
    let cases: &[(&str, &str, &str, StatusCode, &str)] = &[
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "nonsense"}"#,
            StatusCode::BAD_REQUEST,
            "bad VIP",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "198.19.0.2:80/tcp", "bogus": 1}"#,
            StatusCode::BAD_REQUEST,
            "bogus",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "198.19.0.2:80/tcp", "scheduler": "fastest"}"#,
            StatusCode::BAD_REQUEST,
            "unknown scheduler",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "198.19.0.2:80/tcp", "ring_size": 100}"#,
            StatusCode::BAD_REQUEST,
            "ring size 100",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "198.19.0.2:80/tcp", "allow": ["10.1.2.3/8"]}"#,
            StatusCode::BAD_REQUEST,
            "bad source prefix \"10.1.2.3/8\": host bits are set (the network is 10.0.0.0/8)",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "198.19.0.2:80/tcp", "deny": ["fd00::/8"]}"#,
            StatusCode::BAD_REQUEST,
            "source prefix fd00::/8 is not of VIP 198.19.0.2:80/tcp's address family",
        ),
        (
            "PATCH",
            vip,
            r#"{"allow": ["10.0.0.0/8"], "deny": ["10.0.0.0/8"]}"#,
            StatusCode::BAD_REQUEST,
            "source prefix 10.0.0.0/8 is listed twice",
        ),
        (
            "PATCH",
            vip,
            r#"{"allow": ["none"]}"#,
            StatusCode::BAD_REQUEST,
            "bad source prefix \"none\"",
        ),
        (
            "PATCH",
            vip,
            r#"{"source_rate_limit": 5, "source_prefix_len": 33}"#,
            StatusCode::BAD_REQUEST,
            "source prefix length 33 is out of range 0..=32",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "224.0.0.1:80/tcp"}"#,
            StatusCode::BAD_REQUEST,
            "multicast",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "127.0.0.1:80/tcp"}"#,
            StatusCode::BAD_REQUEST,
            "VIP address 127.0.0.1 is loopback",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "[::1]:80/tcp"}"#,
            StatusCode::BAD_REQUEST,
            "VIP address ::1 is loopback",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "0.0.0.0:80/tcp"}"#,
            StatusCode::BAD_REQUEST,
            "VIP address 0.0.0.0 is unspecified",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "[::]:80/udp"}"#,
            StatusCode::BAD_REQUEST,
            "VIP address :: is unspecified",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "[ff02::1]:80/udp"}"#,
            StatusCode::BAD_REQUEST,
            "VIP address ff02::1 is multicast",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "255.255.255.255:80/udp"}"#,
            StatusCode::BAD_REQUEST,
            "VIP address 255.255.255.255 is broadcast",
        ),
        (
            "POST",
            "/v1/vips",
            &deep_json,
            StatusCode::BAD_REQUEST,
            "nested deeper than 16 levels",
        ),
        (
            "POST",
            "/v1/vips",
            r#"{"vip": "198.19.0.1:80/tcp"}"#,
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            "POST",
            "/v1/vips",
            "not json",
            StatusCode::BAD_REQUEST,
            "expected",
        ),
        (
            "PATCH",
            "/v1/vips/tcp/198.19.0.9:80",
            r#"{"scheduler": "random"}"#,
            StatusCode::NOT_FOUND,
            "no VIP",
        ),
        (
            "DELETE",
            "/v1/vips/sctp/198.19.0.1:80",
            "",
            StatusCode::BAD_REQUEST,
            "sctp",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "198.18.1.2:8080"}"#,
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "[fd00::2]:8080"}"#,
            StatusCode::BAD_REQUEST,
            "address family",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "198.18.3.2:8080", "weight": 20000}"#,
            StatusCode::BAD_REQUEST,
            "weight 20000",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "198.18.3.2:0"}"#,
            StatusCode::BAD_REQUEST,
            "port 0",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "0.0.0.0:8080"}"#,
            StatusCode::BAD_REQUEST,
            "backend 0.0.0.0:8080 cannot be a backend: its address is unspecified",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "255.255.255.255:8080"}"#,
            StatusCode::BAD_REQUEST,
            "its address is broadcast",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "224.0.0.5:8080"}"#,
            StatusCode::BAD_REQUEST,
            "its address is multicast",
        ),
        (
            "PATCH",
            "/v1/vips/tcp/198.19.0.1:80",
            r#"{"forwarding": "dsr-l2"}"#,
            StatusCode::BAD_REQUEST,
            "must listen on the VIP's port",
        ),
        (
            "PATCH",
            "/v1/vips/tcp/198.19.0.1:80",
            r#"{"forwarding": "tunnel"}"#,
            StatusCode::BAD_REQUEST,
            "unknown forwarding mode \"tunnel\"",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "127.0.0.1:8080"}"#,
            StatusCode::BAD_REQUEST,
            "its address is loopback",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "198.19.0.1:8080"}"#,
            StatusCode::BAD_REQUEST,
            "its address is the VIP's own",
        ),
        (
            "POST",
            "/v1/apply",
            loopback_backend,
            StatusCode::BAD_REQUEST,
            "127.0.0.1:8080 cannot be a backend: its address is loopback",
        ),
        (
            "POST",
            "/v1/apply",
            &deep_toml,
            StatusCode::BAD_REQUEST,
            "recursion",
        ),
        (
            "POST",
            "/v1/vips/tcp/198.19.0.1:80/backends",
            r#"{"address": "nowhere"}"#,
            StatusCode::BAD_REQUEST,
            "address",
        ),
        (
            "PATCH",
            "/v1/vips/tcp/198.19.0.1:80/backends/198.18.1.2:8080",
            r#"{"state": "sleeping"}"#,
            StatusCode::BAD_REQUEST,
            "sleeping",
        ),
        (
            "PATCH",
            "/v1/vips/tcp/198.19.0.1:80/backends/198.18.1.2:8080",
            "{}",
            StatusCode::BAD_REQUEST,
            "nothing to change",
        ),
        (
            "DELETE",
            "/v1/vips/tcp/198.19.0.1:80/backends/198.18.9.2:8080",
            "",
            StatusCode::NOT_FOUND,
            "no backend",
        ),
        (
            "POST",
            "/v1/apply?dry_run=maybe",
            "",
            StatusCode::BAD_REQUEST,
            "dry_run",
        ),
        (
            "POST",
            "/v1/apply",
            "[[vip]\naddress = ",
            StatusCode::BAD_REQUEST,
            "line 1",
        ),
        (
            "POST",
            "/v1/apply",
            capacity,
            StatusCode::BAD_REQUEST,
            "conntrack.capacity",
        ),
        (
            "POST",
            "/v1/apply",
            &embryonic,
            StatusCode::BAD_REQUEST,
            "conntrack.embryonic-capacity",
        ),
        (
            "POST",
            "/v1/interfaces",
            r#"{"name": "eth1", "xdp_mode": "turbo"}"#,
            StatusCode::BAD_REQUEST,
            "turbo",
        ),
        (
            "POST",
            "/v1/interfaces",
            r#"{"name": "eth0"}"#,
            StatusCode::CONFLICT,
            "already attached",
        ),
        (
            "DELETE",
            "/v1/interfaces/nosuch0",
            "",
            StatusCode::NOT_FOUND,
            "nosuch0",
        ),
        (
            "GET",
            "/v1/nothing",
            "",
            StatusCode::NOT_FOUND,
            "no such API path",
        ),
        (
            "DELETE",
            "/v1/status",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "not allowed",
        ),
    ];
    let before = seen(&shared, &dir);
    let mut wrong = Vec::new();
    for &(method, path, body, status, names) in cases {
        let (got, answer) = send(&app, method, path, body).await;
        let message = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_default();
        if got != status || !message.contains(names) {
            wrong.push(format!(
                "{method} {path} {body}: {got} {answer:?}, want {status} naming {names:?}"
            ));
        }
        if seen(&shared, &dir) != before {
            wrong.push(format!("{method} {path} {body}: changed the agent"));
        }
    }
    // The harness sees a change when there is one.
    let (got, _) = send(
        &app,
        "POST",
        &format!("{vip}/backends"),
        r#"{"address": "198.18.3.2:8080"}"#,
    )
    .await;
    assert_eq!(got, StatusCode::CREATED);
    assert_ne!(seen(&shared, &dir), before, "an accepted change is seen");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// ipvsadm's scheduler names (any case) and a backend without a port, which takes the VIP's.
#[tokio::test]
async fn ipvsadm_aliases_and_backends_without_a_port() {
    let (shared, dir) = agent("aliases");
    let (shutdown, _) = watch::channel(Shutdown::Running);
    let app = router(std::sync::Arc::clone(&shared), shutdown, &Limits::default());
    let (got, answer) = send(
        &app,
        "POST",
        "/v1/vips",
        r#"{"vip": "198.19.0.2:443/tcp", "scheduler": "WRR"}"#,
    )
    .await;
    assert_eq!(got, StatusCode::CREATED, "{answer}");
    let view: VipView = serde_json::from_str(&answer).expect("a VIP");
    assert_eq!(view.scheduler, Scheduler::WeightedRoundRobin);
    let backends = "/v1/vips/tcp/198.19.0.2:443/backends";
    let (got, answer) = send(&app, "POST", backends, r#"{"address": "198.18.3.2"}"#).await;
    assert_eq!(got, StatusCode::CREATED, "{answer}");
    let view: VipView = serde_json::from_str(&answer).expect("a VIP");
    let addrs: Vec<String> = view
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(addrs, ["198.18.3.2:443"]);
    let (got, answer) = send(
        &app,
        "PATCH",
        &format!("{backends}/198.18.3.2"),
        r#"{"weight": 3}"#,
    )
    .await;
    assert_eq!(got, StatusCode::OK, "{answer}");
    let (got, answer) = send(
        &app,
        "PATCH",
        "/v1/vips/tcp/198.19.0.2:443",
        r#"{"scheduler": "Lc"}"#,
    )
    .await;
    assert_eq!(got, StatusCode::OK, "{answer}");
    let view: VipView = serde_json::from_str(&answer).expect("a VIP");
    assert_eq!(view.scheduler, Scheduler::LeastConn);
    assert_eq!(view.backends[0].weight, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config's new-flow rate limit is live once applied (as SIGHUP applies the file); a file
/// that leaves it out keeps the one running.
#[tokio::test]
async fn an_applied_new_flow_rate_limit_is_live() {
    let (shared, dir) = agent("rate-limit");
    let (shutdown, _) = watch::channel(Shutdown::Running);
    let app = router(std::sync::Arc::clone(&shared), shutdown, &Limits::default());
    let vip = "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
        [[vip.backend]]\naddress = \"198.18.1.2:8080\"\n";
    let limit = || shared.lock().unwrap().balancer.new_flow_rate_limit();
    assert_eq!(limit(), 0);
    let with_limit = format!("[conntrack]\nnew-flow-rate-limit = 300\n\n{vip}");
    let (got, answer) = send(&app, "POST", "/v1/apply", &with_limit).await;
    assert_eq!(got, StatusCode::OK, "{answer}");
    assert!(
        answer.contains("new-flow-rate-limit"),
        "the plan names it: {answer}"
    );
    assert_eq!(limit(), 300);
    let (got, answer) = send(&app, "POST", "/v1/apply", vip).await;
    assert_eq!(got, StatusCode::OK, "{answer}");
    assert_eq!(limit(), 300, "left out, the limit stays");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config's `[ipip]` source prefixes are live once applied; a file that leaves one out keeps
/// the one running; the agent's flag wins over the file.
#[tokio::test]
async fn applied_ipip_sources_are_live_and_the_flags_win() {
    let (shared, dir) = agent("ipip-sources");
    let (shutdown, _) = watch::channel(Shutdown::Running);
    let app = router(std::sync::Arc::clone(&shared), shutdown, &Limits::default());
    let vip = "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
        [[vip.backend]]\naddress = \"198.18.1.2:8080\"\n";
    let sources = || shared.lock().unwrap().balancer.ipip_sources();
    let with =
        format!("[ipip]\nsource-v4 = \"100.64.7.0/24\"\nsource-v6 = \"fd00:1::/112\"\n\n{vip}");
    let (got, answer) = send(&app, "POST", "/v1/apply", &with).await;
    assert_eq!(got, StatusCode::OK, "{answer}");
    assert!(answer.contains("source-v4"), "the plan names it: {answer}");
    let ((v4, bits4), (v6, bits6)) = sources();
    assert_eq!((v4, bits4), ([100, 64, 7, 0], 8));
    assert_eq!((v6[..4].to_vec(), bits6), (vec![0xfd, 0, 0, 1], 16));
    let (got, answer) = send(&app, "POST", "/v1/apply", vip).await;
    assert_eq!(got, StatusCode::OK, "{answer}");
    assert_eq!(
        sources().0,
        ([100, 64, 7, 0], 8),
        "left out, the prefix stays"
    );
    // `run --ipip-source-v4` given: the file's IPv4 prefix is not applied, its IPv6 one is.
    shared.lock().unwrap().ipip_source_flags = (Some("10.9.0.0/16".parse().unwrap()), None);
    let other =
        format!("[ipip]\nsource-v4 = \"100.64.8.0/24\"\nsource-v6 = \"fd00:2::/120\"\n\n{vip}");
    let (got, answer) = send(&app, "POST", "/v1/apply", &other).await;
    assert_eq!(got, StatusCode::OK, "{answer}");
    let ((v4, bits4), (v6, bits6)) = sources();
    assert_eq!((v4, bits4), ([10, 9, 0, 0], 16));
    assert_eq!((v6[..4].to_vec(), bits6), (vec![0xfd, 0, 0, 2], 8));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request with `body` and, if given, an `Authorization` header.
fn request_with(method: &str, path: &str, auth: Option<&str>, body: Body) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    builder.body(body).unwrap()
}

const TOKEN: &str = "0123456789abcdef-token";

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
    let (shared, dir) = agent("bearer");
    let (shutdown, _) = watch::channel(Shutdown::Running);
    let app = router_with_token(shared, shutdown, TOKEN.to_owned(), &Limits::default());
    for (auth, want) in [
        (Some(format!("Bearer {TOKEN}")), StatusCode::OK),
        (Some(format!("bearer {TOKEN}")), StatusCode::OK),
        (Some(format!("BEARER {TOKEN}")), StatusCode::OK),
        (Some(format!("bEaReR  {TOKEN}")), StatusCode::OK),
        (Some(format!("Bearer {TOKEN}x")), StatusCode::UNAUTHORIZED),
        (Some(format!("Basic {TOKEN}")), StatusCode::UNAUTHORIZED),
        (Some(format!("Bearer{TOKEN}")), StatusCode::UNAUTHORIZED),
        (Some(TOKEN.to_owned()), StatusCode::UNAUTHORIZED),
        (None, StatusCode::UNAUTHORIZED),
    ] {
        let request = request_with("GET", "/v1/status", auth.as_deref(), Body::empty());
        let got = app.clone().oneshot(request).await.unwrap().status();
        assert_eq!(got, want, "{auth:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An API on a Unix socket of its own, served by [`serve`] within `limits`, behind [`TOKEN`]
/// if `token`.
async fn served(name: &str, limits: Limits, token: bool) -> (PathBuf, PathBuf) {
    let (shared, dir) = agent(name);
    let (shutdown, _) = watch::channel(Shutdown::Running);
    let app = if token {
        router_with_token(shared, shutdown, TOKEN.to_owned(), &limits)
    } else {
        router(shared, shutdown, &limits)
    };
    let socket = dir.join("api.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(serve(listener, app, limits, name.to_owned()));
    (socket, dir)
}

/// Sends `head` (and no more), then reads what comes back until the server closes, within
/// `within`; the answer and how long it took.
async fn exchange(socket: &Path, head: &str, within: Duration) -> (String, Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = std::time::Instant::now();
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer to {head:?} within {within:?}"))
        .unwrap();
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

fn quick(limits: Limits) -> Limits {
    Limits {
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        ..limits
    }
}

#[tokio::test]
async fn the_token_is_checked_before_the_body_is_read_and_a_slow_body_times_out() {
    let (socket, dir) = served("slow-body", quick(Limits::default()), true).await;
    let head = "POST /v1/vips HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                Content-Length: 100\r\n";
    // No token: refused at once, with 99 bytes of the body never sent.
    let (answer, took) = exchange(&socket, &format!("{head}\r\n{{"), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(took < Duration::from_millis(400), "{took:?}");
    // The token: the body is waited for, up to the body timeout.
    let authorized = format!("{head}Authorization: Bearer {TOKEN}\r\n\r\n{{");
    let (answer, took) = exchange(&socket, &authorized, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 400ms"), "{answer}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bodies_past_the_limit_are_refused_unread() {
    let (socket, dir) = served("big-body", quick(Limits::default()), false).await;
    let head = format!(
        "POST /v1/apply HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        Limits::default().max_body + 1
    );
    let (answer, _) = exchange(&socket, &head, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 1048576 bytes"), "{answer}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_after_the_header_timeout() {
    let (socket, dir) = served("idle", quick(Limits::default()), false).await;
    for head in ["", "GET /v1/status HTTP/1.1\r\nHost: x\r\n"] {
        let (answer, took) = exchange(&socket, head, Duration::from_secs(5)).await;
        assert!(!answer.contains("200 OK"), "{answer}");
        assert!(took >= Duration::from_millis(400), "{head:?}: {took:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_is_served_while_idle_connections_hold_the_limit() {
    use tokio::io::AsyncReadExt as _;
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let (socket, dir) = served("crowded", limits, false).await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    let (answer, took) = exchange(
        &socket,
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The oldest idle connections were closed to make room.
    let mut buf = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await;
    assert!(matches!(first, Ok(Ok(0))), "{first:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_files_others_may_read_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("xdplb-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = read_token(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("has mode {mode:o}")) && err.contains("chmod 600"),
            "{mode:o}: {err}"
        );
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(read_token(&path).unwrap(), TOKEN, "{mode:o}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_depth_counts_brackets_outside_strings() {
    assert_eq!(json_depth(br#"{"a": [1, {"b": 2}]}"#, 16), 3);
    assert_eq!(json_depth(br#"{"a": "[[[[\"{{{"}"#, 16), 1);
    assert_eq!(json_depth(b"[[[[[[", 3), 4);
    assert_eq!(json_depth(b"42", 16), 0);
}

#[tokio::test]
async fn source_checks_are_set_shown_replaced_and_cleared() {
    let (shared, dir) = agent("sources");
    let (shutdown, _) = watch::channel(Shutdown::Running);
    let app = router(std::sync::Arc::clone(&shared), shutdown, &Limits::default());
    let (status, body) = send(
        &app,
        "POST",
        "/v1/vips",
        r#"{"vip": "198.19.0.2:80/tcp", "allow": ["10.0.0.0/8"], "deny": ["10.1.0.0/16"],
            "source_rate_limit": 5}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let view: VipView = serde_json::from_str(&body).unwrap();
    assert_eq!(view.allow, ["10.0.0.0/8"]);
    assert_eq!(view.deny, ["10.1.0.0/16"]);
    assert_eq!(view.source_rate_limit, Some(5));
    assert_eq!(view.source_prefix_len, Some(32));
    // Saved: the state file holds them.
    let saved = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(saved.contains("10.1.0.0/16"), "{saved}");

    let path = "/v1/vips/tcp/198.19.0.2:80";
    let (status, body) = send(&app, "PATCH", path, r#"{"allow": ["192.0.2.0/24"]}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view: VipView = serde_json::from_str(&body).unwrap();
    assert_eq!(view.allow, ["192.0.2.0/24"]);
    assert_eq!(view.deny, ["10.1.0.0/16"], "a list not given is kept");
    assert_eq!(view.source_rate_limit, Some(5));

    let (status, body) = send(
        &app,
        "PATCH",
        path,
        r#"{"allow": [], "deny": [], "source_rate_limit": 0}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view: VipView = serde_json::from_str(&body).unwrap();
    assert!(view.allow.is_empty() && view.deny.is_empty());
    assert_eq!(view.source_rate_limit, None);
    let options = shared
        .lock()
        .unwrap()
        .balancer
        .vip(&"198.19.0.2:80/tcp".parse().unwrap())
        .unwrap()
        .options;
    assert_eq!(options, VipOptions::default());
}

#[tokio::test]
async fn a_vip_takes_and_shows_its_forwarding_mode() {
    let (shared, _dir) = agent("forwarding");
    let (shutdown, _) = watch::channel(Shutdown::Running);
    let app = router(std::sync::Arc::clone(&shared), shutdown, &Limits::default());
    let (status, body) = send(
        &app,
        "POST",
        "/v1/vips",
        r#"{"vip": "198.19.0.2:80/tcp", "forwarding": "dsr-l2"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body.contains(r#""forwarding":"dsr-l2""#), "{body}");
    let (status, body) = send(
        &app,
        "POST",
        "/v1/vips/tcp/198.19.0.2:80/backends",
        r#"{"address": "198.18.1.2:80"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        &app,
        "PATCH",
        "/v1/vips/tcp/198.19.0.2:80",
        r#"{"forwarding": "nat"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""forwarding":"nat""#), "{body}");
}

#[tokio::test]
async fn notify_commands_and_the_sorry_backend_are_set_replaced_and_cleared() {
    let (shared, dir) = agent("hooks");
    let (shutdown, _) = watch::channel(Shutdown::Running);
    let app = router(std::sync::Arc::clone(&shared), shutdown, &Limits::default());
    let path = "/v1/vips/tcp/198.19.0.1:80";
    let (status, body) = send(
        &app,
        "PATCH",
        path,
        r#"{"notify_up": ["/bin/up", "x"], "notify_down": ["/bin/down"], "sorry": "198.18.9.2:8080"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view: VipView = serde_json::from_str(&body).unwrap();
    assert_eq!(view.notify_up, ["/bin/up", "x"]);
    assert_eq!(view.notify_down, ["/bin/down"]);
    assert_eq!(view.sorry, Some("198.18.9.2:8080".parse().unwrap()));
    assert_eq!(view.backends.len(), 2, "the sorry backend waits: {body}");
    let saved = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(saved.contains("198.18.9.2:8080"), "{saved}");

    // Refused, naming the field, and nothing changed.
    let before = seen(&shared, &dir);
    for (body, error) in [
        (
            r#"{"sorry": "198.18.1.2:8080"}"#,
            "sorry: 198.18.1.2:8080 is one of",
        ),
        (
            r#"{"sorry": "[fd00::2]:80"}"#,
            "sorry: backend [fd00::2]:80 is not of",
        ),
        (
            r#"{"sorry": "127.0.0.1:80"}"#,
            "sorry: backend 127.0.0.1:80 cannot be",
        ),
        (r#"{"sorry": "nowhere"}"#, "sorry: bad backend"),
        (
            r#"{"notify_up": ["", "x"]}"#,
            "notify_up: the program must not be empty",
        ),
        (
            r#"{"notify_down": [], "sorry": "198.18.2.2:8080"}"#,
            "sorry: 198.18.2.2:8080 is one of",
        ),
    ] {
        let (status, answer) = send(&app, "PATCH", path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer.contains(error), "{body}: {answer}");
    }
    assert_eq!(seen(&shared, &dir), before);

    // Every backend down: the sorry backend takes new flows; replaced, the old one leaves.
    for b in ["198.18.1.2:8080", "198.18.2.2:8080"] {
        let (status, body) = send(
            &app,
            "PATCH",
            &format!("{path}/backends/{b}"),
            r#"{"state": "down"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let up = |view: &VipView| -> Vec<String> {
        view.backends
            .iter()
            .filter(|b| b.state == BackendState::Up)
            .map(|b| b.address.to_string())
            .collect()
    };
    let (_, body) = send(&app, "GET", path, "").await;
    assert_eq!(
        up(&serde_json::from_str(&body).unwrap()),
        ["198.18.9.2:8080"]
    );
    let (status, body) = send(&app, "PATCH", path, r#"{"sorry": "198.18.9.3"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view: VipView = serde_json::from_str(&body).unwrap();
    assert_eq!(up(&view), ["198.18.9.3:80"], "{body}");
    assert_eq!(view.backends.len(), 3, "{body}");

    // Cleared: `[]` and `null`; a field left out is kept.
    let (status, body) = send(&app, "PATCH", path, r#"{"notify_up": [], "sorry": null}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view: VipView = serde_json::from_str(&body).unwrap();
    assert!(view.notify_up.is_empty() && view.sorry.is_none(), "{body}");
    assert_eq!(view.notify_down, ["/bin/down"]);
    assert_eq!(view.backends.len(), 2, "the sorry backend left: {body}");
}
