//! The agent serving: API, metrics, periodic tasks, signals (SIGHUP reloads), systemd
//! notifications, the counters logged, until it is stopped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use log::{error, info, warn};

use super::Signals;
use crate::{
    agent::{self, Agent},
    api::{self, Shutdown},
    config::Config,
    health::Monitor,
    render::{backend_line, vip_line},
};

pub(super) async fn run_agent(
    shared: agent::Shared,
    socket: &Path,
    stats_interval: u64,
    metrics: Option<SocketAddr>,
    (api_runtime, api_tcp, limits): (
        &tokio::runtime::Handle,
        Option<(SocketAddr, String)>,
        api::Limits,
    ),
    mut signals: Signals,
    config: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(Shutdown::Running);
    // The API has a runtime of its own: the periodic tasks wait for the agent's lock on this
    // one's workers, and the API must answer meanwhile. Its listeners are registered with its
    // own reactor, so that nothing here has to run for it to accept.
    let (listener, tcp, _bound) = {
        let _api = api_runtime.enter();
        // Removes the socket at exit, if it is still this agent's.
        let (listener, bound) = api::bind(socket)?;
        let tcp = match &api_tcp {
            Some((addr, _)) => {
                Some(bind_tcp(*addr).with_context(|| format!("binding the API address {addr}"))?)
            }
            None => None,
        };
        (listener, tcp, bound)
    };
    if let (Some(tcp), Some((addr, token))) = (tcp, api_tcp) {
        let app = api::router_with_token(Arc::clone(&shared), shutdown_tx.clone(), token, &limits);
        api_runtime.spawn(api::serve(tcp, app, limits, format!("http://{addr}")));
        info!("API also on http://{addr} (bearer token required)");
    }
    let app = api::router(Arc::clone(&shared), shutdown_tx, &limits);
    let server = api_runtime.spawn(api::serve(
        listener,
        app,
        limits,
        socket.display().to_string(),
    ));
    let (conntrack, embryonic) = {
        let agent = shared.lock().expect("agent lock");
        let dir = agent.pinned.dir();
        (
            crate::maps::open_map(dir, lb_common::maps::CONNTRACK_MAP)?,
            crate::maps::open_map(dir, lb_common::maps::EMBRYONIC_MAP)?,
        )
    };
    tokio::spawn(agent::count_connections_every(
        Arc::clone(&shared),
        conntrack,
        embryonic,
        Duration::from_secs(1),
    ));
    // Before the first health probe: its answers must not be taken for a VIP's replies.
    agent::publish_local_addrs(&shared);
    tokio::spawn(agent::refresh_next_hops_on_changes(Arc::clone(&shared)));
    tokio::spawn(agent::manage_dsr_neighbours_every(
        Arc::clone(&shared),
        Duration::from_secs(1),
    ));
    tokio::spawn(agent::manage_probe_routes_every(
        Arc::clone(&shared),
        Duration::from_secs(1),
    ));
    let lease = if shared.lock().expect("agent lock").cluster.is_some() {
        tokio::spawn(agent::cluster::follow_store(Arc::clone(&shared)));
        Some(tokio::spawn(agent::cluster::keep_lease(Arc::clone(
            &shared,
        ))))
    } else {
        None
    };
    tokio::spawn(agent::autoscale_every(
        Arc::clone(&shared),
        Duration::from_secs(1),
    ));
    // Before the first check makes its own.
    tokio::task::spawn_blocking(agent::sweep_probe_rules)
        .await
        .context("removing earlier probe rules")?;
    let (health_tx, health_rx) = tokio::sync::mpsc::unbounded_channel();
    {
        let mut agent = shared.lock().expect("agent lock");
        agent.monitor = Some(Monitor::new(health_tx).context("starting the health checks")?);
        agent.sync_health();
    }
    tokio::spawn(agent::apply_health_events(Arc::clone(&shared), health_rx));
    if let Some(addr) = metrics {
        serve_metrics(Arc::clone(&shared), addr).await?;
    }
    info!(
        "agent ready; API on {} (at most {} connections per listener, {:?} to send a request)",
        socket.display(),
        limits.max_connections,
        limits.header_timeout
    );
    notify(&[sd_notify::NotifyState::Ready]);

    let period = Duration::from_secs(stats_interval.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let detach = loop {
        tokio::select! {
            _ = signals.term.recv() => break false,
            _ = signals.int.recv() => break false,
            _ = signals.hup.recv() => match &config {
                Some(path) => {
                    // A reload may rebuild large tables: off the async workers.
                    let (shared, path) = (Arc::clone(&shared), path.clone());
                    if let Err(err) = tokio::task::spawn_blocking(move || reload(&shared, &path)).await {
                        error!("SIGHUP: the reload failed: {err}");
                    }
                }
                None => warn!("SIGHUP: the agent runs without --config, so there is nothing to reload"),
            },
            changed = shutdown_rx.changed() => {
                if changed.is_err() { break false; }
                if let Shutdown::Stop { detach } = *shutdown_rx.borrow() { break detach; }
            }
            _ = ticker.tick(), if stats_interval > 0 => {
                log_counters(&shared.lock().expect("agent lock"), "counters");
            }
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    server.abort();
    if let Some(lease) = lease {
        // Stopped before the release, so that it cannot take a new lease after it.
        lease.abort();
        let _ = lease.await;
        agent::cluster::release_lease(&shared).await;
    }
    let mut agent = shared.lock().expect("agent lock");
    agent.monitor = None;
    log_counters(&agent, "stopping; counters");
    Ok(detach)
}

/// A TCP listener on `addr` with a backlog as long as tokio's own `bind` gives, so that a burst
/// of connections waits to be accepted instead of having its SYNs dropped.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Logs what applying the config file `path` changed, one line per change.
pub(super) fn log_plan(path: &Path, plan: &crate::config::Plan) {
    if plan.is_empty() {
        info!("config {}: no changes", path.display());
    }
    for change in &plan.changes {
        info!("config {}: {change}", path.display());
    }
}

/// Reloads the config file `path` (SIGHUP): applied as `xdplb apply -f` would, or refused with
/// the reason and nothing changed.
fn reload(shared: &agent::Shared, path: &Path) {
    info!("SIGHUP: reloading {}", path.display());
    let mut reloading = vec![sd_notify::NotifyState::Reloading];
    reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
    notify(&reloading);
    let applied = Config::load(path)
        .map_err(|err| err.to_string())
        .and_then(|mut config| {
            let mut agent = shared.lock().unwrap_or_else(|p| p.into_inner());
            // In cluster mode the VIPs are the store's, and `[cluster]` is read at start.
            if agent.cluster.is_some() {
                config.vips = agent.running_config().vips;
                config.cluster = agent.config.cluster.clone();
            }
            agent
                .apply_config_from(config, agent::audit::Source::Reload)
                .map_err(|err| err.to_string())
        });
    match applied {
        Ok(plan) => log_plan(path, &plan),
        Err(err) => {
            for line in err.lines() {
                error!("reload refused, nothing changed: {line}");
            }
        }
    }
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd (a `Type=notify` unit) how the agent is; nothing without `NOTIFY_SOCKET`.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        warn!("notifying systemd: {err}");
    }
}

/// Serves `/metrics` on `addr` in the background. The agent's lock is held while the maps are
/// read, not while the text is written or sent.
async fn serve_metrics(shared: agent::Shared, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let shared = Arc::clone(&shared);
            async move {
                use axum::http::{StatusCode, header::CONTENT_TYPE};
                let collected = {
                    let agent = shared.lock().unwrap_or_else(|p| p.into_inner());
                    crate::metrics::collect(&agent)
                };
                let text = collected.and_then(|registry| {
                    crate::metrics::encode(&registry).context("encoding the metrics")
                });
                match text {
                    Ok(text) => (
                        StatusCode::OK,
                        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                        text,
                    ),
                    Err(err) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                        format!("{err:#}\n"),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    info!("metrics on http://{addr}/metrics");
    Ok(())
}

/// Logs the counters that are not zero on one line, and per VIP and backend at debug level.
fn log_counters(agent: &Agent, what: &str) {
    match agent.pinned.counters() {
        Ok(counters) => {
            let nonzero: Vec<String> = counters
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(c, v)| format!("{}={v}", c.name()))
                .collect();
            info!(
                "{what}: {}",
                if nonzero.is_empty() {
                    "all zero".to_owned()
                } else {
                    nonzero.join(" ")
                }
            );
        }
        Err(err) => warn!("reading counters: {err:#}"),
    }
    if log::log_enabled!(log::Level::Debug) {
        match report(agent) {
            Ok(report) => report.lines().for_each(|line| log::debug!("{line}")),
            Err(err) => warn!("reading counters: {err:#}"),
        }
    }
}

/// The global counters, then packets, bytes and new flows per VIP and backend.
fn report(agent: &Agent) -> anyhow::Result<String> {
    let mut out = agent.pinned.counters()?.to_string();
    for info in agent.balancer.vips() {
        let view = agent.vip_view(&info)?;
        out += &vip_line(&view);
        for b in &view.backends {
            out += &backend_line(b);
        }
    }
    Ok(out)
}
