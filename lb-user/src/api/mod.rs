//! The agent's HTTP/JSON API, versioned under `/v1`, served on a Unix socket (mode 0600: only
//! root changes the balancer). Every change is validated first and applied all-or-nothing; a
//! refused request gets a 4xx with `{"error": "..."}` naming what is wrong, and changes nothing.
//!
//! VIPs are addressed as `/v1/vips/{protocol}/{address:port}` (IPv6 as `[addr]:port`,
//! percent-encoded by clients), backends as `.../backends/{address:port}`.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tokio::sync::watch;

pub use crate::agent::{BackendView, VipView};
pub use serve::{Limits, serve};
pub use types::*;

mod conns;
mod serve;
mod types;
use crate::{
    agent::{Agent, ApplyError, Shared, cluster},
    autoscale::live::Status as AutoscaleStatus,
    balancer::{
        self, BackendSpec, BackendState, Forwarding, Proto, Scheduler, Vip, VipInfo, VipOptions,
    },
    config::Config,
    health::ProbePath,
};

/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/xdplb/xdplb.sock";

/// An API error: status and message.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<balancer::Error> for ApiError {
    fn from(err: balancer::Error) -> Self {
        use balancer::Error as E;
        let status = match &err {
            E::UnknownVip(_) | E::UnknownBackend { .. } => StatusCode::NOT_FOUND,
            E::VipExists(_) | E::BackendExists { .. } => StatusCode::CONFLICT,
            E::Maps(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, err.to_string())
    }
}

impl From<ApplyError> for ApiError {
    fn from(err: ApplyError) -> Self {
        match err {
            ApplyError::Refused(message) => bad(message),
            ApplyError::Balancer(err) => err.into(),
            ApplyError::Failed(err) => err.into(),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Deepest nesting of arrays and objects a JSON body may have (the requests are flat; serde_json
/// alone would recurse 128 levels).
pub const MAX_JSON_DEPTH: usize = 16;

/// How deeply the arrays and objects of a JSON text nest (brackets inside strings do not
/// count). Stops counting past `limit`.
fn json_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    break;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses a JSON body; a refusal names the field (`weight: invalid type: ...`).
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> ApiResult<T> {
    if json_depth(bytes, MAX_JSON_DEPTH) > MAX_JSON_DEPTH {
        return Err(bad(format!(
            "bad request body: nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut json).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path.is_empty() || path == "." {
            bad(format!("bad request body: {inner}"))
        } else {
            bad(format!("bad request body: {path}: {inner}"))
        }
    })
}

/// What the API asks of the daemon's main loop.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    Stop { detach: bool },
}

#[derive(Clone)]
struct ApiState {
    agent: Shared,
    shutdown: watch::Sender<Shutdown>,
    /// Who waits for the agent: one change at a time, after the reads.
    queue: Arc<Queue>,
}

/// The order in which API requests get the agent: changes one at a time (the others wait here,
/// without a thread each), and reads before the next change, so that a read waits for at most
/// the change in progress however many are queued.
#[derive(Default)]
struct Queue {
    writes: tokio::sync::Mutex<()>,
    reads: std::sync::atomic::AtomicUsize,
    reads_done: tokio::sync::Notify,
}

/// A read waiting for or holding the agent.
struct Reading<'a>(&'a Queue);

impl<'a> Reading<'a> {
    fn new(queue: &'a Queue) -> Self {
        queue
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(queue)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if self
            .0
            .reads
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.reads_done.notify_waiters();
        }
    }
}

impl Queue {
    /// Waits for this change's turn: the changes before it done, and no read waiting.
    async fn write_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let turn = self.writes.lock().await;
        loop {
            let done = self.reads_done.notified();
            tokio::pin!(done);
            // Registered before the check, so that the last read's notification is not missed.
            done.as_mut().enable();
            if self.reads.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return turn;
            }
            done.await;
        }
    }
}

fn parse_state(s: &str) -> ApiResult<BackendState> {
    s.parse()
        .map_err(|err: String| bad(format!("state: {err}")))
}

fn parse_addr(field: &str, s: &str) -> ApiResult<SocketAddr> {
    s.parse()
        .map_err(|_| bad(format!("{field}: {s:?} is not an ADDR:PORT")))
}

/// A backend's address, `ADDR:PORT` or `ADDR` with the port of `vip`.
fn parse_backend(field: &str, s: &str, vip: &Vip) -> ApiResult<SocketAddr> {
    crate::model::parse_backend_addr(s, vip.port).map_err(|err| bad(format!("{field}: {err}")))
}

fn vip_from_path(proto: &str, addr: &str) -> ApiResult<Vip> {
    let proto: Proto = proto.parse()?;
    let addr = parse_addr("vip", addr)?;
    Ok(Vip {
        addr: addr.ip(),
        port: addr.port(),
        proto,
    })
}

/// The view of one VIP (locks nothing: the caller holds the agent).
pub fn vip_view(agent: &Agent, info: &VipInfo) -> ApiResult<VipView> {
    Ok(agent.vip_view(info)?)
}

fn lock(agent: &Shared) -> std::sync::MutexGuard<'_, Agent> {
    agent
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `work` on the agent in a blocking thread: waiting for the agent's lock, and the work
/// itself (a change rebuilds and writes Maglev tables of up to a million slots), never hold
/// up the async workers that serve the API and run the periodic tasks.
async fn with_agent<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce(&mut Agent) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let _reading = Reading::new(&state.queue);
    on_agent(state, work).await
}

/// [`with_agent`] for a change, which has waited for its turn.
async fn on_agent<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce(&mut Agent) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let agent = Arc::clone(&state.agent);
    tokio::task::spawn_blocking(move || work(&mut lock(&agent)))
        .await
        .map_err(|err| ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
}

/// Applies `change` and saves the state before the data path sees it ([`Agent::change`]);
/// refused changes, and changes that cannot be saved, change nothing. Changes run one at a
/// time, off the async workers ([`with_agent`]).
///
/// In cluster mode the change is worked out on the agent and undone ([`Agent::tentative`]),
/// written to the store, and answered once the store's watch has brought it back here.
async fn change<T: Send + 'static>(
    state: &ApiState,
    change: impl Fn(&mut Agent) -> ApiResult<T> + Send + Sync + 'static,
) -> ApiResult<T> {
    let _turn = state.queue.write_turn().await;
    if lock(&state.agent).cluster.is_none() {
        return on_agent(state, move |agent| agent.change(change)).await;
    }
    let mut value = None;
    cluster::write(&state.agent, |agent| {
        let (answer, desired) = agent.tentative(&change)?;
        value = Some(answer);
        let store = agent.cluster.as_ref().expect("cluster mode");
        Ok::<_, ApiError>(crate::cluster::store::diff(
            store.prefix(),
            &store.store,
            &desired.vips,
            &crate::cluster::store::Scope::All,
        ))
    })
    .await?
    .map_err(ApiError::from)?;
    value.ok_or_else(|| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "no answer".into()))
}

impl From<cluster::WriteError> for ApiError {
    fn from(err: cluster::WriteError) -> Self {
        let status = match err {
            cluster::WriteError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            cluster::WriteError::Conflict => StatusCode::CONFLICT,
            cluster::WriteError::NotApplied(..) => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError(status, err.to_string())
    }
}

/// `GET /v1/cluster`: the gateways of the cluster, what each applied, the autoscaler leaders.
async fn cluster_status(State(state): State<ApiState>) -> ApiResult<Json<cluster::ClusterView>> {
    cluster::view(&state.agent)
        .await
        .map(Json)
        .map_err(|err| bad(format!("{err:#}")))
}

async fn status(State(state): State<ApiState>) -> ApiResult<Json<StatusView>> {
    with_agent(&state, |agent| {
        let vips = agent.balancer.vips();
        let mut health = HealthSummary::default();
        for view in vip_views(agent)? {
            for b in &view.backends {
                match b.state {
                    balancer::BackendState::Up => health.up += 1,
                    balancer::BackendState::Draining => health.draining += 1,
                    balancer::BackendState::Down => health.down += 1,
                }
                match b.healthy {
                    Some(true) => health.healthy += 1,
                    Some(false) => health.failing += 1,
                    None => health.unchecked += 1,
                }
            }
        }
        let fill: std::collections::HashMap<_, _> = agent.table_fill()?.into_iter().collect();
        let version = crate::pin::PinnedVersion::read(agent.pinned.dir());
        let interfaces = agent.pinned.ifaces();
        Ok(Json(StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pin_dir: agent.pinned.dir().display().to_string(),
            xdp: interfaces
                .iter()
                .map(|name| IfaceXdp {
                    name: name.clone(),
                    mode: crate::agent::xdp_mode::xdp_mode(name)
                        .map_or_else(|err| format!("unknown ({err:#})"), str::to_owned),
                })
                .collect(),
            interfaces,
            uptime_secs: agent.started.elapsed().as_secs(),
            vips: vips.len(),
            backends: vips.iter().map(|v| v.backends.len()).sum(),
            store: agent.cluster.as_ref().map(|c| c.status()),
            bgp: agent.bgp.clone(),
            program: ProgramStatus {
                tag: agent.pinned.program_tag(),
                layout: version.layout,
                object: version.object,
                origin: agent.about.program.clone(),
            },
            tables: TablesStatus {
                conntrack_entries: fill["conntrack_entries"],
                conntrack_capacity: fill["conntrack_capacity"],
                embryonic_entries: fill["embryonic_entries"],
                embryonic_capacity: fill["embryonic_capacity"],
            },
            about: agent.about.clone(),
            state_file: agent.state_file.display().to_string(),
            health,
        }))
    })
    .await
}

fn vip_views(agent: &Agent) -> ApiResult<Vec<VipView>> {
    agent
        .balancer
        .vips()
        .iter()
        .map(|i| vip_view(agent, i))
        .collect()
}

async fn list_vips(State(state): State<ApiState>) -> ApiResult<Json<Vec<VipView>>> {
    with_agent(&state, |agent| vip_views(agent).map(Json)).await
}

async fn add_vip(
    State(state): State<ApiState>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<VipView>)> {
    let req: AddVip = body(&bytes)?;
    let vip: Vip = req.vip.parse()?;
    let mut options = VipOptions::default();
    if let Some(s) = &req.scheduler {
        options.scheduler = s.parse()?;
    }
    if let Some(r) = req.ring_size {
        options.ring_size = r;
    }
    options.allow = prefixes(&req.allow)?;
    options.deny = prefixes(&req.deny)?;
    options.source_rate_limit = req.source_rate_limit.unwrap_or(0);
    options.source_prefix_len = req.source_prefix_len;
    if let Some(f) = &req.forwarding {
        options.forwarding = f.parse()?;
    }
    let health_path = probe_path(req.health_path.as_deref())?;
    let view = change(&state, move |agent| {
        agent
            .check_cluster_safe(&vip, options.scheduler)
            .map_err(bad)?;
        agent.balancer.add_vip(vip, options.clone())?;
        if let Some(path) = health_path {
            agent.set_health_path(&vip, path)?;
        }
        vip_view(agent, &agent.balancer.vip(&vip)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn show_vip(
    State(state): State<ApiState>,
    UrlPath((proto, addr)): UrlPath<(String, String)>,
) -> ApiResult<Json<VipView>> {
    let vip = vip_from_path(&proto, &addr)?;
    with_agent(&state, move |agent| {
        let info = agent.balancer.vip(&vip)?;
        Ok(Json(vip_view(agent, &info)?))
    })
    .await
}

/// `GET /v1/autoscale`: every autoscaled VIP's autoscaler.
async fn list_autoscale(State(state): State<ApiState>) -> ApiResult<Json<Vec<AutoscaleStatus>>> {
    with_agent(&state, |agent| {
        Ok(Json(
            agent
                .autoscale
                .iter()
                .map(|(vip, a)| a.status(agent.balancer.vip(vip).ok().as_ref()))
                .collect(),
        ))
    })
    .await
}

/// `GET /v1/autoscale/{proto}/{addr}`: one VIP's autoscaler.
async fn show_autoscale(
    State(state): State<ApiState>,
    UrlPath((proto, addr)): UrlPath<(String, String)>,
) -> ApiResult<Json<AutoscaleStatus>> {
    let vip = vip_from_path(&proto, &addr)?;
    with_agent(&state, move |agent| {
        let info = agent.balancer.vip(&vip)?;
        let scaler = agent.autoscale.get(&vip).ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("VIP {vip} is not autoscaled (its config has no [vip.autoscale])"),
            )
        })?;
        Ok(Json(scaler.status(Some(&info))))
    })
    .await
}

async fn set_vip(
    State(state): State<ApiState>,
    UrlPath((proto, addr)): UrlPath<(String, String)>,
    bytes: Bytes,
) -> ApiResult<Json<VipView>> {
    let vip = vip_from_path(&proto, &addr)?;
    let req: SetVip = body(&bytes)?;
    let scheduler = req
        .scheduler
        .as_deref()
        .map(str::parse::<Scheduler>)
        .transpose()?;
    let ring_size = req.ring_size;
    let allow = req.allow.as_deref().map(prefixes).transpose()?;
    let deny = req.deny.as_deref().map(prefixes).transpose()?;
    let (rate, prefix_len) = (req.source_rate_limit, req.source_prefix_len);
    let forwarding = req
        .forwarding
        .as_deref()
        .map(str::parse::<Forwarding>)
        .transpose()?;
    let health_path = probe_path(req.health_path.as_deref())?;
    let health = req.health;
    let (notify_up, notify_down) = (req.notify_up, req.notify_down);
    let sorry = req
        .sorry
        .map(|s| {
            s.map(|text| parse_backend("sorry", &text, &vip))
                .transpose()
        })
        .transpose()?;
    Ok(Json(
        change(&state, move |agent| {
            let mut options = agent.balancer.vip(&vip)?.options;
            if let Some(s) = scheduler {
                options.scheduler = s;
            }
            if let Some(r) = ring_size {
                options.ring_size = r;
            }
            if let Some(allow) = &allow {
                options.allow = allow.clone();
            }
            if let Some(deny) = &deny {
                options.deny = deny.clone();
            }
            if let Some(rate) = rate {
                options.source_rate_limit = rate;
            }
            if prefix_len.is_some() {
                options.source_prefix_len = prefix_len;
            }
            if let Some(f) = forwarding {
                options.forwarding = f;
            }
            let applied = agent.config.vip(&vip).map(|v| v.health.path);
            let path = health_path.or(applied).unwrap_or_default();
            if options.forwarding == Forwarding::Nat && path == ProbePath::Vip {
                return Err(bad(format!(
                    "health path \"vip\" probes through the dsr-l2 or ipip path; {vip} would \
                     forward by nat: set --health-path direct too"
                )));
            }
            agent
                .check_cluster_safe(&vip, options.scheduler)
                .map_err(bad)?;
            agent.balancer.set_vip_options(&vip, options)?;
            if let Some(health) = health.clone() {
                agent.set_health(&vip, health)?;
            }
            if let Some(path) = health_path {
                agent.set_health_path(&vip, path)?;
            }
            agent.set_hooks(&vip, notify_up.clone(), notify_down.clone(), sorry)?;
            // The answer shows the sorry backend as the change leaves it.
            agent.sync_sorry()?;
            vip_view(agent, &agent.balancer.vip(&vip)?)
        })
        .await?,
    ))
}

/// A health check path as a request gives it.
fn probe_path(text: Option<&str>) -> ApiResult<Option<ProbePath>> {
    text.map(|t| t.parse::<ProbePath>().map_err(bad))
        .transpose()
}

/// Source prefixes as a request gives them.
fn prefixes(list: &[String]) -> Result<Vec<balancer::SourcePrefix>, balancer::Error> {
    list.iter().map(|s| s.parse()).collect()
}

async fn del_vip(
    State(state): State<ApiState>,
    UrlPath((proto, addr)): UrlPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let vip = vip_from_path(&proto, &addr)?;
    change(&state, move |agent| Ok(agent.remove_vip(&vip)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_backends(
    State(state): State<ApiState>,
    UrlPath((proto, addr)): UrlPath<(String, String)>,
) -> ApiResult<Json<Vec<BackendView>>> {
    let vip = vip_from_path(&proto, &addr)?;
    with_agent(&state, move |agent| {
        let info = agent.balancer.vip(&vip)?;
        Ok(Json(vip_view(agent, &info)?.backends))
    })
    .await
}

async fn add_backend(
    State(state): State<ApiState>,
    UrlPath((proto, addr)): UrlPath<(String, String)>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<VipView>)> {
    let vip = vip_from_path(&proto, &addr)?;
    let req: AddBackend = body(&bytes)?;
    let mut spec = BackendSpec::new(
        parse_backend("address", &req.address, &vip)?,
        req.weight.unwrap_or(1),
    );
    if let Some(s) = &req.state {
        spec.state = parse_state(s)?;
    }
    let view = change(&state, move |agent| {
        agent.balancer.add_backend(&vip, spec)?;
        vip_view(agent, &agent.balancer.vip(&vip)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn set_backend(
    State(state): State<ApiState>,
    UrlPath((proto, addr, backend)): UrlPath<(String, String, String)>,
    bytes: Bytes,
) -> ApiResult<Json<VipView>> {
    let vip = vip_from_path(&proto, &addr)?;
    let backend = parse_backend("backend", &backend, &vip)?;
    let req: SetBackend = body(&bytes)?;
    let new_state = req.state.as_deref().map(parse_state).transpose()?;
    if req.weight.is_none() && new_state.is_none() {
        return Err(bad("nothing to change: give weight and/or state"));
    }
    let weight = req.weight;
    Ok(Json(
        change(&state, move |agent| {
            agent.set_backend(&vip, backend, weight, new_state)?;
            agent.sync_sorry()?;
            vip_view(agent, &agent.balancer.vip(&vip)?)
        })
        .await?,
    ))
}

async fn del_backend(
    State(state): State<ApiState>,
    UrlPath((proto, addr, backend)): UrlPath<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let vip = vip_from_path(&proto, &addr)?;
    let backend = parse_backend("backend", &backend, &vip)?;
    change(&state, move |agent| {
        Ok(agent.balancer.remove_backend(&vip, backend)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(state): State<ApiState>) -> ApiResult<Json<StatsView>> {
    with_agent(&state, |agent| {
        let counters = agent
            .pinned
            .counters()?
            .iter()
            .map(|(c, v)| (c.name().to_owned(), v))
            .collect();
        let events = agent
            .pinned
            .events()?
            .iter()
            .map(|(e, v)| (e.name().to_owned(), v))
            .collect();
        let vips = vip_views(agent)?;
        let tables = agent
            .table_fill()?
            .into_iter()
            .map(|(name, v)| (name.to_owned(), v))
            .collect();
        Ok(Json(StatsView {
            counters,
            events,
            tables,
            vips,
        }))
    })
    .await
}

/// `POST /v1/stats/zero`: the outcome counters, the events and every VIP's and backend's
/// traffic back to zero. What is not a count since some moment stays: active connections and
/// the tables' fill (counted from the tables), and the flows opened per backend that
/// least-connections counts its load from.
async fn zero_stats(State(state): State<ApiState>) -> ApiResult<Json<ZeroView>> {
    with_agent(&state, |agent| {
        let vips = agent.balancer.vips();
        let vip_ids: Vec<u32> = vips.iter().map(|v| v.id).collect();
        let backends: Vec<u32> = vips
            .iter()
            .flat_map(|v| v.backends.iter())
            .map(|b| lb_common::maps::backend_index(b.id))
            .collect();
        agent.pinned.zero_stats(&vip_ids, &backends)?;
        log::info!(
            "{}",
            crate::agent::audit::line(
                crate::agent::audit::Source::Api,
                &format!(
                    "stats zero: counters, events, {} VIPs, {} backends",
                    vip_ids.len(),
                    backends.len()
                )
            )
        );
        Ok(Json(ZeroView {
            zeroed: vec![
                "counters".into(),
                "events".into(),
                "vip traffic".into(),
                "backend traffic".into(),
            ],
            kept: vec![
                "active connections".into(),
                "table fill".into(),
                "flows opened per backend (least-connections' load)".into(),
            ],
        }))
    })
    .await
}

/// `dry_run` from the query string: absent, `true`/`1` or `false`/`0`.
fn dry_run(query: Option<&str>) -> ApiResult<bool> {
    let mut dry_run = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "true")) {
            ("dry_run", "true" | "1") => dry_run = true,
            ("dry_run", "false" | "0") => dry_run = false,
            ("dry_run", other) => {
                return Err(bad(format!("dry_run: {other:?} is not true or false")));
            }
            (other, _) => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    Ok(dry_run)
}

/// `POST /v1/apply[?dry_run=true]` with a config file (TOML) as the body: the plan from the
/// running state to the file, applied all-or-nothing unless `dry_run`.
async fn apply(
    State(state): State<ApiState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    bytes: Bytes,
) -> ApiResult<Json<ApplyView>> {
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("the config is not UTF-8"))?;
    let dry_run = dry_run(query.as_deref())?;
    let desired = Config::parse(text).map_err(|err| bad(err.to_string()))?;
    let lines = |plan: &crate::config::Plan| {
        if plan.is_empty() {
            Vec::new()
        } else {
            plan.to_string().lines().map(str::to_owned).collect()
        }
    };
    let plan = if dry_run {
        with_agent(&state, move |agent| Ok(agent.plan_config(&desired)?)).await?
    } else if lock(&state.agent).cluster.is_some() {
        let _turn = state.queue.write_turn().await;
        let mut plan = None;
        cluster::write(&state.agent, |agent| {
            plan = Some(agent.plan_config(&desired)?);
            let store = agent.cluster.as_ref().expect("cluster mode");
            let (current, _) = crate::cluster::store::vips_from_store(store.prefix(), &store.store);
            // An autoscaled VIP's list only seeds it: its pool is its autoscaler's.
            let mut vips = desired.vips.clone();
            for vip in vips.iter_mut().filter(|v| v.autoscale.is_some()) {
                if let Some(now) = current.iter().find(|c| c.vip() == vip.vip()) {
                    vip.backends = now.backends.clone();
                }
            }
            Ok::<_, ApiError>(crate::cluster::store::diff(
                store.prefix(),
                &store.store,
                &vips,
                &crate::cluster::store::Scope::All,
            ))
        })
        .await?
        .map_err(ApiError::from)?;
        plan.unwrap_or_default()
    } else {
        let _turn = state.queue.write_turn().await;
        on_agent(&state, move |agent| Ok(agent.apply_config(desired)?)).await?
    };
    Ok(Json(ApplyView {
        plan: lines(&plan),
        applied: !dry_run,
    }))
}

/// `GET /v1/interfaces`: the interfaces the program is attached to.
async fn list_ifaces(State(state): State<ApiState>) -> ApiResult<Json<Vec<String>>> {
    with_agent(&state, |agent| Ok(Json(agent.pinned.ifaces()))).await
}

/// `POST /v1/interfaces`: attaches the program to one more interface (until the agent is
/// restarted without it).
async fn attach_iface(
    State(state): State<ApiState>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<Vec<String>>)> {
    use clap::ValueEnum as _;
    let req: AttachIface = body(&bytes)?;
    let mode = match req.xdp_mode.as_deref() {
        None => crate::loader::AttachMode::Auto,
        Some(mode) => crate::loader::AttachMode::from_str(mode, false)
            .map_err(|_| bad(format!("xdp_mode: {mode:?} is not auto, native or skb")))?,
    };
    with_agent(&state, move |agent| {
        if agent.pinned.ifaces().contains(&req.name) {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("the program is already attached to {}", req.name),
            ));
        }
        crate::loader::if_index(&req.name)
            .map_err(|err| ApiError(StatusCode::NOT_FOUND, format!("{err:#}")))?;
        agent.pinned.attach(&req.name, mode)?;
        // The program may now redirect to it: next hops through it are worth looking up again.
        agent.balancer.refresh_next_hops()?;
        log::info!(
            "{}",
            crate::agent::audit::line(
                crate::agent::audit::Source::Api,
                &format!("iface attach {}", req.name)
            )
        );
        Ok((StatusCode::CREATED, Json(agent.pinned.ifaces())))
    })
    .await
}

/// `DELETE /v1/interfaces/{name}`: detaches the program from an interface.
async fn detach_iface(
    State(state): State<ApiState>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    with_agent(&state, move |agent| {
        if !agent.pinned.ifaces().contains(&name) {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("the program is not attached to {name}"),
            ));
        }
        agent.pinned.detach(&name)?;
        // Kept next hops through it must not be used to redirect there any more.
        agent.balancer.refresh_next_hops()?;
        log::info!(
            "{}",
            crate::agent::audit::line(
                crate::agent::audit::Source::Api,
                &format!("iface detach {name}")
            )
        );
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// `GET /v1/config`: the running configuration as a config file (TOML).
async fn running_config(State(state): State<ApiState>) -> ApiResult<String> {
    with_agent(&state, |agent| Ok(agent.running_config().to_toml())).await
}

async fn stop(State(state): State<ApiState>, bytes: Bytes) -> ApiResult<StatusCode> {
    let req: Stop = body(&bytes)?;
    let _ = state.shutdown.send(Shutdown::Stop { detach: req.detach });
    Ok(StatusCode::ACCEPTED)
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such API path (see /v1/...)".into(),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path".into(),
    )
}

/// The API's routes, with the request bodies bounded by `limits` ([`serve::buffer_body`]).
pub fn router(agent: Shared, shutdown: watch::Sender<Shutdown>, limits: &Limits) -> Router {
    let vip = "/v1/vips/{proto}/{addr}";
    let state = ApiState {
        agent,
        shutdown,
        queue: Arc::default(),
    };
    let bodies = (limits.max_body, limits.body_timeout);
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/stats", get(stats))
        .route("/v1/stats/zero", post(zero_stats))
        .route("/v1/stop", post(stop))
        .route("/v1/apply", post(apply))
        .route("/v1/config", get(running_config))
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/interfaces", get(list_ifaces).post(attach_iface))
        .route("/v1/interfaces/{name}", axum::routing::delete(detach_iface))
        .route("/v1/connections", get(conns::list).delete(conns::flush))
        .route("/v1/autoscale", get(list_autoscale))
        .route("/v1/autoscale/{proto}/{addr}", get(show_autoscale))
        .route("/v1/vips", get(list_vips).post(add_vip))
        .route(vip, get(show_vip).patch(set_vip).delete(del_vip))
        .route(
            &format!("{vip}/backends"),
            get(list_backends).post(add_backend),
        )
        .route(
            &format!("{vip}/backends/{{backend}}"),
            axum::routing::patch(set_backend).delete(del_backend),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                serve::buffer_body(bodies, request, next)
            },
        ))
}

/// The API's routes behind a bearer token: every request must carry
/// `Authorization: Bearer TOKEN` (the scheme in any case, RFC 7235), compared in constant time;
/// anything else is 401, before any of its body is read.
pub fn router_with_token(
    agent: Shared,
    shutdown: watch::Sender<Shutdown>,
    token: String,
    limits: &Limits,
) -> Router {
    let token = Arc::new(token);
    router(agent, shutdown, limits).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let token = Arc::clone(&token);
            async move {
                let given = request
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(bearer_token)
                    .unwrap_or("");
                if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    next.run(request).await
                } else {
                    ApiError(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong bearer token".into(),
                    )
                    .into_response()
                }
            }
        },
    ))
}

/// The token of an `Authorization` header of the `Bearer` scheme, whose name is
/// case-insensitive (RFC 7235 section 2.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches(' '))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the API token from `path`: one line, at least 16 characters, in a file that only its
/// owner may read or write (anyone else who can read it can drive the balancer).
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the API token file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the API token file {} has mode {mode:o}: group and others may not read or write it \
             (chmod 600 {})",
            path.display(),
            path.display()
        );
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API token file {}", path.display()))?
        .trim()
        .to_owned();
    if token.len() < 16 {
        anyhow::bail!(
            "the API token in {} is shorter than 16 characters",
            path.display()
        );
    }
    Ok(token)
}

/// Checks that the API socket can be bound at `path`: nothing is there, or a socket that no
/// agent answers on (left by one that is gone). A live agent's socket, or anything that is not
/// a socket, is refused. Removes the stale socket.
pub fn check_socket(path: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("another xdplb agent is listening on {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it (give --socket another path)",
            path.display()
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("checking {}", path.display())),
    }
    Ok(())
}

/// Binds the API socket at `path` with mode 0600, after [`check_socket`].
pub fn bind(path: &Path) -> anyhow::Result<(tokio::net::UnixListener, BoundSocket)> {
    use anyhow::Context as _;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    check_socket(path)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let meta = std::fs::symlink_metadata(path)?;
    let bound = BoundSocket {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    Ok((listener, bound))
}

/// The API socket this agent bound; dropping it removes the socket if it is still this one.
#[derive(Debug)]
pub struct BoundSocket {
    path: std::path::PathBuf,
    id: (u64, u64),
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Shared agent handle from an agent.
pub fn share(agent: Agent) -> Shared {
    Arc::new(Mutex::new(agent))
}

#[cfg(test)]
mod tests;
