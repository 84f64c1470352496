//! `GET /v1/connections` and `DELETE /v1/connections` ([`crate::conns`]): the connection
//! tables read and flushed off the agent's lock (a walk of a full table takes a few hundred
//! milliseconds); the lock is held only to copy the VIPs and the pin directory.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use serde::Deserialize;

use super::{ApiError, ApiResult, ApiState, bad, parse_addr, with_agent};
use crate::{
    agent::{audit, monotonic_ns},
    conns::{self, ConnFilter, ConnList, DEFAULT_LIMIT, FlushView},
};

/// The query of both routes: `vip=ADDR:PORT/PROTO`, `backend=ADDR:PORT`, and for the listing
/// `limit=N` (default [`DEFAULT_LIMIT`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnQuery {
    pub vip: Option<String>,
    pub backend: Option<String>,
    pub limit: Option<usize>,
}

fn filter(query: &ConnQuery) -> ApiResult<ConnFilter> {
    Ok(ConnFilter {
        vip: query.vip.as_deref().map(str::parse).transpose()?,
        backend: query
            .backend
            .as_deref()
            .map(|b| parse_addr("backend", b))
            .transpose()?,
    })
}

fn query(query: Result<Query<ConnQuery>, QueryRejection>) -> ApiResult<ConnQuery> {
    query
        .map(|Query(q)| q)
        .map_err(|err| bad(format!("bad query: {}", err.body_text())))
}

/// What the walk needs from the agent.
async fn snapshot(
    state: &ApiState,
) -> ApiResult<(
    std::path::PathBuf,
    Vec<crate::balancer::VipInfo>,
    lb_common::conntrack::Timeouts,
)> {
    with_agent(state, |agent| {
        Ok((
            agent.pinned.dir().to_owned(),
            agent.balancer.vips(),
            agent.balancer.timeouts(),
        ))
    })
    .await
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| {
            ApiError(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                err.to_string(),
            )
        })?
        .map_err(ApiError::from)
}

/// `GET /v1/connections[?vip=...][&backend=...][&limit=N]`.
pub(super) async fn list(
    State(state): State<ApiState>,
    q: Result<Query<ConnQuery>, QueryRejection>,
) -> ApiResult<Json<ConnList>> {
    let q = query(q)?;
    let filter = filter(&q)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    let (dir, vips, timeouts) = snapshot(&state).await?;
    let listed = blocking(move || {
        let tables = [
            (
                "conntrack",
                conns::open_table(&dir, lb_common::maps::CONNTRACK_MAP)?,
            ),
            (
                "embryonic",
                conns::open_table(&dir, lb_common::maps::EMBRYONIC_MAP)?,
            ),
        ];
        let tables: Vec<(&str, &crate::maps::Conntrack)> =
            tables.iter().map(|(n, t)| (*n, t)).collect();
        Ok(conns::list(
            &tables,
            &vips,
            &filter,
            limit,
            monotonic_ns()?,
            &timeouts,
        )?)
    })
    .await?;
    Ok(Json(listed))
}

/// `DELETE /v1/connections[?vip=...][&backend=...]`: every matching flow, with its reverse
/// translation.
pub(super) async fn flush(
    State(state): State<ApiState>,
    q: Result<Query<ConnQuery>, QueryRejection>,
) -> ApiResult<Json<FlushView>> {
    let q = query(q)?;
    if q.limit.is_some() {
        return Err(bad(
            "limit: a flush has no limit (it deletes every matching flow)",
        ));
    }
    let filter = filter(&q)?;
    let (dir, vips, timeouts) = snapshot(&state).await?;
    let flushed = blocking(move || {
        let view = conns::flush(&dir, &vips, &filter, monotonic_ns()?, &timeouts)?;
        let what = match (&filter.vip, &filter.backend) {
            (None, None) => "every flow".to_owned(),
            (vip, backend) => [
                vip.map(|v| format!("vip={v}")),
                backend.map(|b| format!("backend={b}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" "),
        };
        log::info!(
            "{}",
            audit::line(
                audit::Source::Api,
                &format!(
                    "conn flush {what}: {} flows, {} reverse translations",
                    view.flushed, view.reverse_flushed
                )
            )
        );
        Ok(view)
    })
    .await?;
    Ok(Json(flushed))
}
