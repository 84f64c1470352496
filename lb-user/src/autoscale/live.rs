//! Autoscaling in the agent: each autoscaled VIP's signals, sampled every second, its policy,
//! and its pool (standby backends, hook-provisioned backends, drains).
//!
//! [`VipAutoscaler::tick`] runs once a second under the agent's lock: it samples the signals,
//! finishes drains, asks the policy, and carries out its decision on the balancer (drains start
//! at once; new backends are probed first). Anything slow (health probes of new backends, the
//! `scale-up` and `scale-down` hooks) comes back as [`Job`]s for the caller to run outside the
//! lock; their [`JobResult`]s are handed to [`VipAutoscaler::on_result`]. A failing or hanging
//! hook never blocks the agent: it has a timeout, and is retried with exponential backoff.
//!
//! Scale-in is always drain first: a backend leaves the pool only once it has no open flow left
//! (or after `drain-timeout`).
//!
//! The policy decides a capacity in units of weight; [`super::capacity`] says which backends
//! cover it. A running `scale-up` counts for the weight its last answer had (1 before any), and
//! runs again while the capacity is short.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
};

use lb_common::maps::Stats;
use serde::{Deserialize, Serialize};

pub use super::jobs::{
    HookStats, Job, JobResult, MAX_BACKOFF_S, backoff_s, parse_hook_address, run_job,
};
use super::{
    History, Policy,
    schedule::{Bounds, Occurrence},
};
use crate::{
    autoscale::config::{AutoscaleConfig, Signal, WeightedBackend},
    balancer::{BackendSpec, BackendState, Balancer, Vip, VipInfo},
    health::HealthCheck,
    maps::Maps,
};

/// Seconds of history kept per signal.
pub const HISTORY_S: usize = 3_600;
/// Decisions kept for `autoscale status`.
pub const DECISIONS_KEPT: usize = 20;

/// Where a backend of an autoscaled pool came from, which says where it goes when scaled in.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The config's backend list, or added by an operator: back to standby when scaled in.
    Config,
    /// The standby list: back to standby.
    Standby,
    /// The `scale-up` hook: handed to `scale-down` once drained.
    Hook,
}

/// One second's signals of a VIP or a backend.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub active_connections: f64,
    pub new_connections: f64,
    pub packets: f64,
    pub bytes: f64,
}

impl Sample {
    /// The value of `signal`.
    pub fn get(&self, signal: Signal) -> f64 {
        match signal {
            Signal::ActiveConnections => self.active_connections,
            Signal::NewConnections => self.new_connections,
            Signal::Packets => self.packets,
            Signal::Bytes => self.bytes,
        }
    }

    fn rates(active: u32, now: Stats, before: Option<Stats>, dt: u64) -> Self {
        let dt = dt.max(1) as f64;
        let rate = |n: u64, b: Option<u64>| b.map_or(0.0, |b| n.saturating_sub(b) as f64 / dt);
        Self {
            active_connections: f64::from(active),
            new_connections: rate(now.new_flows, before.map(|b| b.new_flows)),
            packets: rate(now.packets, before.map(|b| b.packets)),
            bytes: rate(now.bytes, before.map(|b| b.bytes)),
        }
    }
}

/// A decision that changed (or, in dry-run mode, would have changed) the pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Seconds since the agent started.
    pub at_s: u64,
    /// Allocated capacity before.
    pub from: u32,
    /// Desired capacity.
    pub to: u32,
    pub reason: String,
    /// What was done (`add 10.1.0.3:80 (standby)`, `drain 10.1.0.2:80`, ...).
    pub actions: Vec<String>,
    pub dry_run: bool,
}

/// A backend being brought in: it joins once its health check passes.
#[derive(Clone, Debug)]
struct Provisioning {
    addr: SocketAddr,
    weight: u32,
    origin: Origin,
    since: u64,
    probing: bool,
}

/// What survives an agent restart: where the pool's backends came from and what is draining.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedPool {
    pub origins: Vec<(SocketAddr, Origin)>,
    pub draining: Vec<SocketAddr>,
    pub spare: Vec<SocketAddr>,
    pub releases: Vec<SocketAddr>,
    /// The weights of the spares whose weight is not 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<(SocketAddr, u32)>,
}

/// The autoscaler of one VIP.
pub struct VipAutoscaler {
    vip: Vip,
    config: AutoscaleConfig,
    policy: Box<dyn Policy>,
    histories: BTreeMap<Signal, History>,
    last_stats: Option<(u64, Stats)>,
    last_backend_stats: HashMap<u32, Stats>,
    sample: Sample,
    per_backend: BTreeMap<SocketAddr, Sample>,
    desired: u32,
    /// The policy's last reason.
    reason: String,
    origins: HashMap<SocketAddr, Origin>,
    provisioning: Vec<Provisioning>,
    /// Backends this autoscaler drains, since when.
    draining: BTreeMap<SocketAddr, u64>,
    /// Standby backends free to bring in, in the order to try them.
    spare: VecDeque<WeightedBackend>,
    /// The weight of the last backend `scale-up` gave: what a running one is counted for.
    hook_weight: u32,
    /// Drained hook backends still to hand to `scale-down`.
    releases: Vec<SocketAddr>,
    scale_up: HookStats,
    scale_down: HookStats,
    decisions: VecDeque<DecisionRecord>,
    scale_outs: u64,
    scale_ins: u64,
    /// The unix time of the last tick (the schedule is read at it).
    unix: i64,
    /// Tests: unix time = this + the tick's `now`, instead of the wall clock.
    clock_offset: Option<i64>,
}

/// What `autoscale status` shows of a VIP's schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleStatus {
    /// The bounds in force now (the pool's own when no window is).
    pub min: u32,
    pub max: u32,
    /// Windows in force (including those within their lead time).
    pub active: Vec<Occurrence>,
    /// The window that starts next.
    pub next: Option<Occurrence>,
}

/// What `autoscale status` shows of a VIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub vip: String,
    pub policy: String,
    pub signal: String,
    pub target_per_backend: Option<u64>,
    pub min: u32,
    pub max: u32,
    pub dry_run: bool,
    pub sample: Sample,
    pub per_backend: BTreeMap<SocketAddr, Sample>,
    pub forecast: Option<f64>,
    /// The desired capacity, in units of weight.
    pub desired: u32,
    /// Backends taking new flows.
    pub serving: u32,
    /// Serving, plus backends being provisioned.
    pub allocated: u32,
    /// The weights of the backends serving.
    #[serde(default)]
    pub serving_capacity: u32,
    /// The weights of the backends allocated (serving, provisioning, and running `scale-up`s
    /// at the weight of the hook's last answer).
    #[serde(default)]
    pub capacity: u32,
    /// The weight of every backend of the pool: in the VIP, provisioning or standby.
    #[serde(default)]
    pub weights: BTreeMap<SocketAddr, u32>,
    pub provisioning: Vec<SocketAddr>,
    pub draining: Vec<SocketAddr>,
    pub standby: Vec<SocketAddr>,
    pub reason: String,
    pub scale_outs: u64,
    pub scale_ins: u64,
    pub scale_up_hook: HookStats,
    pub scale_down_hook: HookStats,
    pub decisions: Vec<DecisionRecord>,
    /// Present when the VIP has schedule windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleStatus>,
}

impl VipAutoscaler {
    /// An autoscaler for `vip` as the balancer has it now.
    pub fn new(vip: Vip, config: AutoscaleConfig, info: &VipInfo) -> Self {
        let mut this = Self {
            vip,
            policy: config.policy(),
            histories: Signal::ALL
                .into_iter()
                .map(|s| (s, History::new(HISTORY_S)))
                .collect(),
            config,
            last_stats: None,
            last_backend_stats: HashMap::new(),
            sample: Sample::default(),
            per_backend: BTreeMap::new(),
            desired: serving_capacity(info),
            reason: "starting".into(),
            origins: info
                .backends
                .iter()
                .map(|b| (b.spec.addr, Origin::Config))
                .collect(),
            provisioning: Vec::new(),
            draining: BTreeMap::new(),
            spare: VecDeque::new(),
            hook_weight: 1,
            releases: Vec::new(),
            scale_up: HookStats::default(),
            scale_down: HookStats::default(),
            decisions: VecDeque::new(),
            scale_outs: 0,
            scale_ins: 0,
            unix: 0,
            clock_offset: None,
        };
        this.refill_spare(info);
        this
    }

    /// Tests: read the schedule at `offset + now` rather than the wall clock.
    pub fn set_clock_offset(&mut self, offset: i64) {
        self.clock_offset = Some(offset);
    }

    fn unix_time(&self, now: u64) -> i64 {
        match self.clock_offset {
            Some(offset) => offset.saturating_add_unsigned(now),
            None => jiff::Timestamp::now().as_second(),
        }
    }

    /// The bounds the schedule sets at the last tick.
    fn scheduled_bounds(&self) -> Bounds {
        (self.config.schedule).bounds(self.unix, self.config.min, self.config.max)
    }

    /// Takes a changed config: a new policy (the history stays), the new standby list.
    pub fn reconfigure(&mut self, config: AutoscaleConfig, info: &VipInfo) {
        if config != self.config {
            let listed = |c: &AutoscaleConfig, a: SocketAddr| {
                c.standby.iter().find(|s| s.addr == a).map(|s| s.weight)
            };
            let dropped: Vec<_> = (self.config.standby.iter())
                .filter(|s| listed(&config, s.addr).is_none())
                .map(|s| s.addr)
                .collect();
            self.spare.retain(|s| !dropped.contains(&s.addr));
            for spare in &mut self.spare {
                if let Some(weight) = listed(&config, spare.addr) {
                    spare.weight = weight;
                }
            }
            self.policy = config.policy();
            self.config = config;
        }
        self.refill_spare(info);
    }

    /// The config it runs.
    pub fn config(&self) -> &AutoscaleConfig {
        &self.config
    }

    /// Puts every configured standby backend that is neither in the VIP nor on its way in on
    /// the spare list, and takes off it whatever is in the VIP now (an operator added it).
    fn refill_spare(&mut self, info: &VipInfo) {
        let in_vip = |a: &SocketAddr| info.backends.iter().any(|b| b.spec.addr == *a);
        self.spare.retain(|s| !in_vip(&s.addr));
        for standby in self.config.standby.clone() {
            let addr = standby.addr;
            let busy = in_vip(&addr) || self.provisioning.iter().any(|p| p.addr == addr);
            if !busy && !self.spare.iter().any(|s| s.addr == addr) {
                self.spare.push_back(standby);
            }
        }
    }

    /// What a restart must keep.
    pub fn save(&self) -> SavedPool {
        let mut origins: Vec<_> = self.origins.iter().map(|(a, o)| (*a, *o)).collect();
        origins.sort_by_key(|(a, _)| *a);
        SavedPool {
            origins,
            draining: self.draining.keys().copied().collect(),
            spare: self.spare.iter().map(|s| s.addr).collect(),
            releases: self.releases.clone(),
            weights: (self.spare.iter())
                .filter(|s| s.weight != 1)
                .map(|s| (s.addr, s.weight))
                .collect(),
        }
    }

    /// Takes back what a previous agent saved; drains restart their clocks at `now`.
    pub fn restore(&mut self, saved: &SavedPool, info: &VipInfo, now: u64) {
        let present = |a: &SocketAddr| info.backends.iter().any(|b| b.spec.addr == *a);
        for (addr, origin) in &saved.origins {
            if present(addr) {
                self.origins.insert(*addr, *origin);
            }
        }
        for addr in saved.draining.iter().filter(|a| present(a)) {
            self.draining.insert(*addr, now);
        }
        for addr in &saved.spare {
            if !present(addr) && !self.spare.iter().any(|s| s.addr == *addr) {
                let weight = (saved.weights.iter().find(|(a, _)| a == addr))
                    .map(|(_, w)| *w)
                    .or_else(|| {
                        self.config
                            .standby
                            .iter()
                            .find(|s| s.addr == *addr)
                            .map(|s| s.weight)
                    })
                    .unwrap_or(1);
                self.spare.push_back(WeightedBackend {
                    addr: *addr,
                    weight,
                });
            }
        }
        self.releases = saved.releases.clone();
    }

    /// One second of autoscaling at `now` (seconds since start): sample, finish drains, decide,
    /// act. `active` holds open flows per backend id. Returns the slow work to run.
    pub fn tick<M: Maps>(
        &mut self,
        now: u64,
        balancer: &mut Balancer<M>,
        active: &HashMap<u32, u32>,
        health: &HealthCheck,
        dry_run: bool,
    ) -> Vec<Job> {
        let Ok(info) = balancer.vip(&self.vip) else {
            return Vec::new();
        };
        self.sample(now, balancer, &info, active);
        let dry_run = dry_run || self.config.dry_run;
        let mut actions = Vec::new();
        let mut jobs = Vec::new();
        if !dry_run {
            self.finish_drains(now, balancer, &info, active, &mut actions);
            self.expire_provisioning(now, &mut actions);
        }
        let info = balancer.vip(&self.vip).unwrap_or(info);
        let allocated = self.allocated(&info);
        self.unix = self.unix_time(now);
        if !self.config.schedule.is_empty() {
            let bounds = self.scheduled_bounds();
            self.policy.set_scheduled(now, Some(bounds));
        }
        let history = &self.histories[&self.config.signal];
        let decision = self.policy.decide(now, history, allocated);
        self.desired = decision.desired;
        self.reason = decision.reason.clone();
        if decision.desired > allocated {
            let wanted = decision.desired - allocated;
            if dry_run {
                actions.push(format!("would add {wanted}"));
            } else {
                self.scale_out(
                    now,
                    wanted,
                    allocated,
                    balancer,
                    &info,
                    &mut actions,
                    &mut jobs,
                );
            }
        }
        // A scale-in that finds no backend to fit in the surplus holds: no action to count.
        let mut held = false;
        if decision.desired < allocated {
            let surplus = allocated - decision.desired;
            if dry_run {
                actions.push(format!("would drain {surplus}"));
            } else {
                held = !self.scale_in(now, surplus, balancer, &info, active, &mut actions);
            }
        }
        if decision.desired != allocated {
            let record = DecisionRecord {
                at_s: now,
                from: allocated,
                to: decision.desired,
                reason: decision.reason,
                actions: actions.clone(),
                dry_run,
            };
            log::info!(
                "autoscale {}: capacity {} -> {} ({}){}: {}",
                self.vip,
                record.from,
                record.to,
                record.reason,
                if dry_run { " [dry run]" } else { "" },
                record.actions.join(", ")
            );
            if record.to > record.from {
                self.scale_outs += 1;
            } else if !held {
                self.scale_ins += 1;
            }
            self.decisions.push_back(record);
            while self.decisions.len() > DECISIONS_KEPT {
                self.decisions.pop_front();
            }
        } else if !actions.is_empty() {
            log::info!("autoscale {}: {}", self.vip, actions.join(", "));
        }
        if !dry_run {
            self.start_jobs(now, health, &mut jobs);
        }
        jobs
    }

    fn sample<M: Maps>(
        &mut self,
        now: u64,
        balancer: &Balancer<M>,
        info: &VipInfo,
        active: &HashMap<u32, u32>,
    ) {
        let stats = balancer.vip_stats(&self.vip).unwrap_or_default();
        let dt = self.last_stats.map_or(1, |(t, _)| now.saturating_sub(t));
        let before = self.last_stats.map(|(_, s)| s);
        let mut total_active = 0;
        let mut per_backend = BTreeMap::new();
        let mut backend_stats = HashMap::new();
        for b in &info.backends {
            let n = active.get(&b.id).copied().unwrap_or(0);
            total_active += n;
            let s = balancer.backend_stats(b.id).unwrap_or_default();
            let prev = self.last_backend_stats.get(&b.id).copied();
            per_backend.insert(b.spec.addr, Sample::rates(n, s, prev, dt));
            backend_stats.insert(b.id, s);
        }
        self.sample = Sample::rates(total_active, stats, before, dt);
        self.per_backend = per_backend;
        self.last_backend_stats = backend_stats;
        self.last_stats = Some((now, stats));
        for (signal, history) in &mut self.histories {
            history.push(now, self.sample.get(*signal));
        }
    }

    /// The capacity of the backends serving plus those on their way in (provisioning, or a
    /// running `scale-up` at the weight of its last answer).
    fn allocated(&self, info: &VipInfo) -> u32 {
        serving_capacity(info)
            + self.provisioning.iter().map(|p| p.weight).sum::<u32>()
            + self.scale_up.running * self.hook_weight
    }

    /// What `autoscale status` shows.
    pub fn status(&self, info: Option<&VipInfo>) -> Status {
        let serving_now = info.map_or(0, serving);
        let serving_capacity = info.map_or(0, serving_capacity);
        let mut weights: BTreeMap<SocketAddr, u32> = (info.iter())
            .flat_map(|i| &i.backends)
            .map(|b| (b.spec.addr, b.spec.weight))
            .collect();
        weights.extend(self.provisioning.iter().map(|p| (p.addr, p.weight)));
        weights.extend(self.spare.iter().map(|s| (s.addr, s.weight)));
        Status {
            vip: self.vip.to_string(),
            policy: self.config.policy.as_str().to_owned(),
            signal: self.config.signal.name().to_owned(),
            target_per_backend: self.config.target_per_backend,
            min: self.config.min,
            max: self.config.max,
            dry_run: self.config.dry_run,
            sample: self.sample,
            per_backend: self.per_backend.clone(),
            forecast: self.policy.forecast(),
            desired: self.desired,
            serving: serving_now,
            allocated: serving_now + self.provisioning.len() as u32 + self.scale_up.running,
            serving_capacity,
            capacity: serving_capacity
                + self.provisioning.iter().map(|p| p.weight).sum::<u32>()
                + self.scale_up.running * self.hook_weight,
            weights,
            provisioning: self.provisioning.iter().map(|p| p.addr).collect(),
            draining: self.draining.keys().copied().collect(),
            standby: self.spare.iter().map(|s| s.addr).collect(),
            reason: self.reason.clone(),
            scale_outs: self.scale_outs,
            scale_ins: self.scale_ins,
            scale_up_hook: self.scale_up.clone(),
            scale_down_hook: self.scale_down.clone(),
            decisions: self.decisions.iter().cloned().collect(),
            schedule: (!self.config.schedule.is_empty()).then(|| {
                let bounds = self.scheduled_bounds();
                ScheduleStatus {
                    min: bounds.min,
                    max: bounds.max,
                    active: self.config.schedule.active(self.unix),
                    next: self.config.schedule.next(self.unix),
                }
            }),
        }
    }
}

/// Backends in rotation: up. Draining ones are on their way out, and one that is down (for a
/// failed health check, or by an operator) is no capacity: the pool makes up for it, and
/// scales in again if it comes back.
fn serving(info: &VipInfo) -> u32 {
    info.backends
        .iter()
        .filter(|b| b.spec.state == BackendState::Up)
        .count() as u32
}

/// The weights of the backends in rotation: the pool's capacity now.
fn serving_capacity(info: &VipInfo) -> u32 {
    info.backends
        .iter()
        .filter(|b| b.spec.state == BackendState::Up)
        .map(|b| b.spec.weight)
        .sum()
}

mod pool;
#[cfg(test)]
mod tests;
