//! The API in process, over the in-memory maps: what it refuses, with which status and message,
//! and that a refusal changes nothing (neither the balancer nor the state file). No root
//! needed.

use std::path::{Path, PathBuf};

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
    fn conntrack_capacity(&self) -> anyhow::Result<u32> {
        Ok(lb_common::maps::DEFAULT_CONNTRACK_CAPACITY)
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
    let app = router(std::sync::Arc::clone(&shared), shutdown);
    let vip = "/v1/vips/tcp/198.19.0.1:80";
    let capacity = "[conntrack]\ncapacity = 5000\n\n[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n";
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
            r#"{"vip": "224.0.0.1:80/tcp"}"#,
            StatusCode::BAD_REQUEST,
            "multicast",
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
