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

/// Counts connections every `period` (or less often when a pass is costly: see
/// [`next_count_in`]) until the runtime stops. The walk of the connection table
/// (batched lookups: tens of milliseconds of CPU for a million entries) runs on its own map
/// handle without the agent's lock, so the API stays responsive; the lock is taken only to
/// publish.
pub async fn count_connections_every(
    agent: Shared,
    conntrack: crate::maps::Conntrack,
    embryonic: crate::maps::Conntrack,
    period: Duration,
) {
    let conntrack = Arc::new(conntrack);
    let embryonic = Arc::new(embryonic);
    loop {
        let timeouts = agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .balancer
            .timeouts();
        let (table, half_open) = (Arc::clone(&conntrack), Arc::clone(&embryonic));
        let counted = tokio::task::spawn_blocking(move || {
            let cpu = thread_cpu_time();
            let counted = monotonic_ns().map(|now| {
                let (active, entries) = crate::maps::active_flows(&table, now, &timeouts);
                let (live, embryonic) = crate::maps::active_flows(&half_open, now, &timeouts);
                let tables = super::TableFill {
                    conntrack: entries,
                    embryonic,
                    embryonic_live: live.values().map(|n| *n as usize).sum(),
                };
                (active, tables)
            });
            (counted, thread_cpu_time().saturating_sub(cpu))
        })
        .await;
        let (result, cpu) = match counted {
            Ok((Ok((active, tables)), cpu)) => (
                agent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .publish_connections(active, tables),
                cpu,
            ),
            Ok((Err(err), cpu)) => (Err(err), cpu),
            Err(err) => (Err(err.into()), Duration::ZERO),
        };
        if let Err(err) = result {
            warn!("counting connections: {err:#}");
        }
        tokio::time::sleep(next_count_in(period, cpu)).await;
    }
}

/// Most of a CPU the connection count may take: with a table so full that a pass costs more
/// than this share of `period`, passes are spaced out.
const COUNT_CPU_SHARE: u32 = 10;

/// How long to wait for the next count after a pass that took `cpu` of CPU time: `period`, or
/// longer when the pass took more than a tenth of it, so that counting never takes more than a
/// tenth of a CPU (a full million-entry table costs a few hundred milliseconds a pass).
fn next_count_in(period: Duration, cpu: Duration) -> Duration {
    period.max(cpu * COUNT_CPU_SHARE).saturating_sub(cpu)
}

/// The calling thread's CPU time so far.
fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
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
            "VIP {} ({}, {}): {}",
            info.vip,
            info.options.scheduler,
            info.options.forwarding,
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
                let (jobs, cluster) = {
                    let mut locked = agent.lock().unwrap_or_else(|p| p.into_inner());
                    if locked.autoscale.is_empty() {
                        continue;
                    }
                    let before = super::audit::Before::new(locked.balancer.vips(), &locked.config);
                    let jobs = locked.autoscale_tick();
                    locked.audit(super::audit::Source::Autoscale, &before);
                    locked.sync_health();
                    if let Err(err) = locked.save_if_changed() {
                        warn!("saving the state: {err:#}");
                    }
                    (jobs, locked.cluster.is_some())
                };
                if cluster {
                    super::cluster::publish_pools(&agent).await;
                }
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
                let cluster = {
                    let mut locked = agent.lock().unwrap_or_else(|p| p.into_inner());
                    let now = locked.now_s();
                    let cluster = locked.cluster.is_some();
                    let before = super::audit::Before::new(locked.balancer.vips(), &locked.config);
                    // Only a scale-up answer is checked against the other VIPs' backends.
                    let claimed = match &result {
                        crate::autoscale::live::JobResult::ScaleUp(Ok(_)) => {
                            locked.claimed_backends(&vip)
                        }
                        _ => Default::default(),
                    };
                    let Agent { autoscale, balancer, .. } = &mut *locked;
                    if let Some(scaler) = autoscale.get_mut(&vip) {
                        scaler.on_result(now, result, balancer, &claimed);
                        locked.audit(super::audit::Source::Autoscale, &before);
                        locked.sync_health();
                        if let Err(err) = locked.save_if_changed() {
                            warn!("saving the state: {err:#}");
                        }
                    }
                    cluster
                };
                if cluster {
                    super::cluster::publish_pools(&agent).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod count_tests {
    use super::*;

    #[test]
    fn counting_takes_at_most_a_tenth_of_a_cpu() {
        let second = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(
            next_count_in(second, ms(20)),
            ms(980),
            "cheap passes keep the period"
        );
        assert_eq!(
            next_count_in(second, ms(300)),
            ms(2700),
            "a 300 ms pass every 3 s"
        );
        for cpu in [0, 50, 99, 100, 101, 300, 2_000] {
            let cpu = ms(cpu);
            let cycle = cpu + next_count_in(second, cpu);
            assert!(cycle >= second, "{cpu:?}");
            assert!(
                cpu * COUNT_CPU_SHARE <= cycle.max(cpu * COUNT_CPU_SHARE),
                "{cpu:?}"
            );
            assert!(cpu.as_secs_f64() / cycle.as_secs_f64() <= 0.1 + 1e-9 || cycle == second);
        }
    }
}
