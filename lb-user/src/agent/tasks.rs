//! The agent's periodic work: health events, connection counts, autoscaling.

use std::{sync::Arc, time::Duration};

use log::{info, warn};

use super::{Agent, Shared, monotonic_ns};
use crate::{balancer::Balancer, health::HealthEvent};

/// Applies health events until the channel closes.
pub async fn apply_health_events(
    agent: Shared,
    mut events: tokio::sync::mpsc::UnboundedReceiver<HealthEvent>,
) {
    while let Some(event) = events.recv().await {
        let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = agent.on_health(&event) {
            warn!("applying a health change of {}: {err:#}", event.key.1);
        }
    }
}

/// Counts connections every `period` until the runtime stops. The walk of the connection table
/// (batched lookups: tens of milliseconds of CPU for a million entries) runs on its own map
/// handle without the agent's lock, so the API stays responsive; the lock is taken only to
/// publish.
pub async fn count_connections_every(
    agent: Shared,
    conntrack: crate::maps::Conntrack,
    period: Duration,
) {
    let conntrack = Arc::new(conntrack);
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        let timeouts = agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .balancer
            .timeouts();
        let table = Arc::clone(&conntrack);
        let counted = tokio::task::spawn_blocking(move || {
            monotonic_ns().map(|now| crate::maps::active_flows(&table, now, &timeouts).0)
        })
        .await;
        let result = match counted {
            Ok(Ok(active)) => agent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .publish_connections(active),
            Ok(Err(err)) => Err(err),
            Err(err) => Err(err.into()),
        };
        if let Err(err) = result {
            warn!("counting connections: {err:#}");
        }
    }
}

/// Logs what the agent restored or built at start.
pub fn log_vips<M: crate::maps::Maps>(balancer: &Balancer<M>) {
    for info in balancer.vips() {
        let backends: Vec<String> = info
            .backends
            .iter()
            .map(|b| format!("{}@{}({})", b.spec.addr, b.spec.weight, b.spec.state))
            .collect();
        info!(
            "VIP {} ({}): {}",
            info.vip,
            info.options.scheduler,
            backends.join(" ")
        );
    }
}

/// Runs the autoscalers every second until the runtime stops: ticks under the lock, then runs
/// the slow work (probes, hooks) in tasks of its own and feeds their results back.
pub async fn autoscale_every(agent: Shared, period: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let jobs = {
                    let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
                    if agent.autoscale.is_empty() {
                        continue;
                    }
                    let jobs = agent.autoscale_tick();
                    agent.sync_health();
                    if let Err(err) = agent.save_if_changed() {
                        warn!("saving the state: {err:#}");
                    }
                    jobs
                };
                for job in jobs {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let vip = job.vip();
                        let result = crate::autoscale::live::run_job(job).await;
                        let _ = tx.send((vip, result));
                    });
                }
            }
            Some((vip, result)) = rx.recv() => {
                let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
                let now = agent.now_s();
                let Agent { autoscale, balancer, .. } = &mut *agent;
                if let Some(scaler) = autoscale.get_mut(&vip) {
                    scaler.on_result(now, result, balancer);
                    agent.sync_health();
                    if let Err(err) = agent.save_if_changed() {
                        warn!("saving the state: {err:#}");
                    }
                }
            }
        }
    }
}
