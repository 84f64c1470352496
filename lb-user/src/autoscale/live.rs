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

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use lb_common::maps::Stats;
use serde::{Deserialize, Serialize};

use super::{History, Policy};
use crate::{
    autoscale::config::{AutoscaleConfig, Signal},
    balancer::{BackendSpec, BackendState, Balancer, Vip, VipInfo},
    health::{CheckKind, HealthCheck},
    maps::Maps,
};

/// Seconds of history kept per signal.
pub const HISTORY_S: usize = 3_600;
/// Decisions kept for `autoscale status`.
pub const DECISIONS_KEPT: usize = 20;
/// Longest wait between two attempts of a failing hook.
pub const MAX_BACKOFF_S: u64 = 60;

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
    /// Allocated backends before.
    pub from: u32,
    /// Desired backends.
    pub to: u32,
    pub reason: String,
    /// What was done (`add 10.1.0.3:80 (standby)`, `drain 10.1.0.2:80`, ...).
    pub actions: Vec<String>,
    pub dry_run: bool,
}

/// Slow work a tick asks for, to be run without the agent's lock.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    /// Check a new backend before it takes traffic.
    Probe {
        vip: Vip,
        addr: SocketAddr,
        kind: CheckKind,
        target: SocketAddr,
        timeout: Duration,
    },
    /// Run the `scale-up` hook; it prints the new backend's address.
    ScaleUp {
        vip: Vip,
        argv: Vec<String>,
        timeout: Duration,
    },
    /// Run the `scale-down` hook with a drained backend's address.
    ScaleDown {
        vip: Vip,
        addr: SocketAddr,
        argv: Vec<String>,
        timeout: Duration,
    },
}

impl Job {
    /// The VIP the job is for.
    pub fn vip(&self) -> Vip {
        match self {
            Job::Probe { vip, .. } | Job::ScaleUp { vip, .. } | Job::ScaleDown { vip, .. } => *vip,
        }
    }
}

/// How a [`Job`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum JobResult {
    Probe {
        addr: SocketAddr,
        result: Result<(), String>,
    },
    ScaleUp(Result<SocketAddr, String>),
    ScaleDown {
        addr: SocketAddr,
        result: Result<(), String>,
    },
}

/// A backend being brought in: it joins once its health check passes.
#[derive(Clone, Debug)]
struct Provisioning {
    addr: SocketAddr,
    origin: Origin,
    since: u64,
    probing: bool,
}

/// A hook's attempts: running count, failures and when it may run again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HookStats {
    pub running: u32,
    pub runs: u64,
    pub failures: u64,
    /// Failures in a row (sets the backoff).
    pub consecutive: u32,
    /// Seconds since start before which the hook is not run again.
    pub retry_at_s: u64,
    pub last_error: Option<String>,
}

impl HookStats {
    fn ready(&self, now: u64) -> bool {
        now >= self.retry_at_s
    }

    fn succeeded(&mut self) {
        self.running = self.running.saturating_sub(1);
        self.consecutive = 0;
        self.last_error = None;
    }

    fn failed(&mut self, now: u64, error: String) {
        self.running = self.running.saturating_sub(1);
        self.failures += 1;
        self.consecutive += 1;
        self.retry_at_s = now + backoff_s(self.consecutive);
        self.last_error = Some(error);
    }
}

/// Seconds to wait after `n` failures in a row: 1, 2, 4, ... up to [`MAX_BACKOFF_S`].
pub fn backoff_s(n: u32) -> u64 {
    1u64.checked_shl(n.saturating_sub(1))
        .unwrap_or(u64::MAX)
        .min(MAX_BACKOFF_S)
}

/// What survives an agent restart: where the pool's backends came from and what is draining.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedPool {
    pub origins: Vec<(SocketAddr, Origin)>,
    pub draining: Vec<SocketAddr>,
    pub spare: Vec<SocketAddr>,
    pub releases: Vec<SocketAddr>,
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
    spare: VecDeque<SocketAddr>,
    /// Drained hook backends still to hand to `scale-down`.
    releases: Vec<SocketAddr>,
    scale_up: HookStats,
    scale_down: HookStats,
    decisions: VecDeque<DecisionRecord>,
    scale_outs: u64,
    scale_ins: u64,
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
    pub desired: u32,
    /// Backends taking new flows.
    pub serving: u32,
    /// Serving, plus backends being provisioned.
    pub allocated: u32,
    pub provisioning: Vec<SocketAddr>,
    pub draining: Vec<SocketAddr>,
    pub standby: Vec<SocketAddr>,
    pub reason: String,
    pub scale_outs: u64,
    pub scale_ins: u64,
    pub scale_up_hook: HookStats,
    pub scale_down_hook: HookStats,
    pub decisions: Vec<DecisionRecord>,
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
            desired: serving(info),
            reason: "starting".into(),
            origins: info
                .backends
                .iter()
                .map(|b| (b.spec.addr, Origin::Config))
                .collect(),
            provisioning: Vec::new(),
            draining: BTreeMap::new(),
            spare: VecDeque::new(),
            releases: Vec::new(),
            scale_up: HookStats::default(),
            scale_down: HookStats::default(),
            decisions: VecDeque::new(),
            scale_outs: 0,
            scale_ins: 0,
        };
        this.refill_spare(info);
        this
    }

    /// Takes a changed config: a new policy (the history stays), the new standby list.
    pub fn reconfigure(&mut self, config: AutoscaleConfig, info: &VipInfo) {
        if config != self.config {
            let dropped: Vec<_> = (self.config.standby.iter())
                .filter(|a| !config.standby.contains(a))
                .copied()
                .collect();
            self.spare.retain(|a| !dropped.contains(a));
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
        self.spare.retain(|a| !in_vip(a));
        for addr in self.config.standby.clone() {
            let busy = in_vip(&addr) || self.provisioning.iter().any(|p| p.addr == addr);
            if !busy && !self.spare.contains(&addr) {
                self.spare.push_back(addr);
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
            spare: self.spare.iter().copied().collect(),
            releases: self.releases.clone(),
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
            if !present(addr) && !self.spare.contains(addr) {
                self.spare.push_back(*addr);
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
        let history = &self.histories[&self.config.signal];
        let decision = self.policy.decide(now, history, allocated);
        self.desired = decision.desired;
        self.reason = decision.reason.clone();
        if decision.desired > allocated {
            let wanted = decision.desired - allocated;
            if dry_run {
                actions.push(format!("would add {wanted}"));
            } else {
                self.scale_out(now, wanted, balancer, &mut actions, &mut jobs);
            }
        } else if decision.desired < allocated {
            let surplus = allocated - decision.desired;
            if dry_run {
                actions.push(format!("would drain {surplus}"));
            } else {
                self.scale_in(now, surplus, balancer, &info, active, &mut actions);
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
                "autoscale {}: {} -> {} backends ({}){}: {}",
                self.vip,
                record.from,
                record.to,
                record.reason,
                if dry_run { " [dry run]" } else { "" },
                record.actions.join(", ")
            );
            if record.to > record.from {
                self.scale_outs += 1;
            } else {
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

    /// Serving backends plus those on their way in (provisioning or a running `scale-up`).
    fn allocated(&self, info: &VipInfo) -> u32 {
        serving(info) + self.provisioning.len() as u32 + self.scale_up.running
    }

    fn finish_drains<M: Maps>(
        &mut self,
        now: u64,
        balancer: &mut Balancer<M>,
        info: &VipInfo,
        active: &HashMap<u32, u32>,
        actions: &mut Vec<String>,
    ) {
        let drain_timeout = self.config.drain_timeout.as_secs();
        let mut done = Vec::new();
        for (&addr, &since) in &self.draining {
            let Some(b) = info.backends.iter().find(|b| b.spec.addr == addr) else {
                done.push((addr, None));
                continue;
            };
            if b.spec.state != BackendState::Draining {
                // An operator took it back: not ours to drain any more.
                done.push((addr, None));
                continue;
            }
            let flows = active.get(&b.id).copied().unwrap_or(0);
            if flows == 0 {
                done.push((addr, Some("drained")));
            } else if now.saturating_sub(since) >= drain_timeout {
                done.push((addr, Some("drain timeout")));
            }
        }
        for (addr, remove) in done {
            self.draining.remove(&addr);
            let Some(why) = remove else { continue };
            if let Err(err) = balancer.remove_backend(&self.vip, addr) {
                log::warn!("autoscale {}: removing {addr}: {err}", self.vip);
                continue;
            }
            actions.push(format!("remove {addr} ({why})"));
            match self.origins.remove(&addr).unwrap_or(Origin::Config) {
                Origin::Hook if !self.config.scale_down.is_empty() => self.releases.push(addr),
                Origin::Hook => {}
                Origin::Config | Origin::Standby => self.spare.push_back(addr),
            }
        }
    }

    fn expire_provisioning(&mut self, now: u64, actions: &mut Vec<String>) {
        let timeout = self.config.provision_timeout.as_secs();
        let (expired, kept): (Vec<_>, Vec<_>) = self
            .provisioning
            .drain(..)
            .partition(|p| now.saturating_sub(p.since) >= timeout);
        self.provisioning = kept;
        for p in expired {
            actions.push(format!(
                "give up on {} (no passing health check in {}s)",
                p.addr, timeout
            ));
            self.release(p.addr, p.origin);
        }
    }

    /// A backend that will not join: back to the end of the spare list, or to `scale-down`.
    fn release(&mut self, addr: SocketAddr, origin: Origin) {
        match origin {
            Origin::Hook if !self.config.scale_down.is_empty() => self.releases.push(addr),
            Origin::Hook => {}
            Origin::Config | Origin::Standby => self.spare.push_back(addr),
        }
    }

    fn scale_out<M: Maps>(
        &mut self,
        now: u64,
        mut wanted: u32,
        balancer: &mut Balancer<M>,
        actions: &mut Vec<String>,
        jobs: &mut Vec<Job>,
    ) {
        // Cheapest first: take back a backend being drained.
        while wanted > 0 {
            let Some((&addr, _)) = self.draining.iter().max_by_key(|(_, since)| **since) else {
                break;
            };
            self.draining.remove(&addr);
            match balancer.update_backend(&self.vip, addr, None, Some(BackendState::Up)) {
                Ok(()) => {
                    actions.push(format!("undrain {addr}"));
                    wanted -= 1;
                }
                Err(err) => log::warn!("autoscale {}: undraining {addr}: {err}", self.vip),
            }
        }
        while wanted > 0 {
            let Some(addr) = self.spare.pop_front() else {
                break;
            };
            let origin = if self.config.standby.contains(&addr) {
                Origin::Standby
            } else {
                Origin::Config
            };
            self.provisioning.push(Provisioning {
                addr,
                origin,
                since: now,
                probing: false,
            });
            actions.push(format!("bring in {addr} (standby)"));
            wanted -= 1;
        }
        if wanted > 0 && !self.config.scale_up.is_empty() {
            if self.scale_up.ready(now) {
                for _ in 0..wanted {
                    jobs.push(Job::ScaleUp {
                        vip: self.vip,
                        argv: self.config.scale_up.clone(),
                        timeout: self.config.hook_timeout,
                    });
                    self.scale_up.running += 1;
                    self.scale_up.runs += 1;
                }
                actions.push(format!("run scale-up x{wanted}"));
            } else {
                actions.push(format!(
                    "scale-up backing off until {}s",
                    self.scale_up.retry_at_s
                ));
            }
        } else if wanted > 0 {
            actions.push(format!(
                "{wanted} short: no standby backend left, no scale-up hook"
            ));
        }
    }

    fn scale_in<M: Maps>(
        &mut self,
        now: u64,
        mut surplus: u32,
        balancer: &mut Balancer<M>,
        info: &VipInfo,
        active: &HashMap<u32, u32>,
        actions: &mut Vec<String>,
    ) {
        // Backends not yet in take no traffic: drop them first, newest first.
        while surplus > 0 {
            let Some(p) = self.provisioning.pop() else {
                break;
            };
            actions.push(format!("cancel {}", p.addr));
            self.release(p.addr, p.origin);
            surplus -= 1;
        }
        // Then drain the serving backends with the fewest open flows; among equals, those the
        // hook made (they cost the most to keep), then standby ones, then the config's.
        let rank = |addr: &SocketAddr| match self.origins.get(addr) {
            Some(Origin::Hook) => 0,
            Some(Origin::Standby) => 1,
            Some(Origin::Config) | None => 2,
        };
        let mut candidates: Vec<_> = info
            .backends
            .iter()
            .filter(|b| b.spec.state == BackendState::Up)
            .map(|b| {
                let flows = active.get(&b.id).copied().unwrap_or(0);
                (flows, rank(&b.spec.addr), b.spec.addr)
            })
            .collect();
        candidates.sort();
        for (_, _, addr) in candidates.into_iter().take(surplus as usize) {
            match balancer.update_backend(&self.vip, addr, None, Some(BackendState::Draining)) {
                Ok(()) => {
                    self.draining.insert(addr, now);
                    actions.push(format!("drain {addr}"));
                }
                Err(err) => log::warn!("autoscale {}: draining {addr}: {err}", self.vip),
            }
        }
    }

    fn start_jobs(&mut self, now: u64, health: &HealthCheck, jobs: &mut Vec<Job>) {
        for p in self.provisioning.iter_mut().filter(|p| !p.probing) {
            p.probing = true;
            jobs.push(Job::Probe {
                vip: self.vip,
                addr: p.addr,
                kind: health.kind.clone(),
                target: health.target(p.addr),
                timeout: health.timeout,
            });
        }
        if !self.releases.is_empty() && self.scale_down.running == 0 && self.scale_down.ready(now) {
            for &addr in &self.releases {
                jobs.push(Job::ScaleDown {
                    vip: self.vip,
                    addr,
                    argv: self.config.scale_down.clone(),
                    timeout: self.config.hook_timeout,
                });
                self.scale_down.running += 1;
                self.scale_down.runs += 1;
            }
        }
    }

    /// Takes the outcome of a job at `now`.
    pub fn on_result<M: Maps>(&mut self, now: u64, result: JobResult, balancer: &mut Balancer<M>) {
        match result {
            JobResult::Probe { addr, result } => {
                let Some(at) = self.provisioning.iter().position(|p| p.addr == addr) else {
                    return; // cancelled meanwhile
                };
                match result {
                    Ok(()) => {
                        let p = self.provisioning.remove(at);
                        match balancer.add_backend(&self.vip, BackendSpec::new(addr, 1)) {
                            Ok(()) => {
                                log::info!("autoscale {}: {addr} is healthy: added", self.vip);
                                self.origins.insert(addr, p.origin);
                            }
                            Err(err) => {
                                log::warn!("autoscale {}: adding {addr}: {err}", self.vip);
                                self.release(addr, p.origin);
                            }
                        }
                    }
                    Err(err) => {
                        log::debug!("autoscale {}: {addr} not healthy yet: {err}", self.vip);
                        self.provisioning[at].probing = false;
                    }
                }
            }
            JobResult::ScaleUp(Ok(addr)) => {
                self.scale_up.succeeded();
                let known = balancer
                    .vip(&self.vip)
                    .is_ok_and(|i| i.backends.iter().any(|b| b.spec.addr == addr))
                    || self.provisioning.iter().any(|p| p.addr == addr);
                if known {
                    log::warn!(
                        "autoscale {}: scale-up printed {addr}, already in the pool",
                        self.vip
                    );
                    return;
                }
                log::info!("autoscale {}: scale-up gave {addr}", self.vip);
                self.provisioning.push(Provisioning {
                    addr,
                    origin: Origin::Hook,
                    since: now,
                    probing: false,
                });
            }
            JobResult::ScaleUp(Err(err)) => {
                log::warn!("autoscale {}: scale-up failed: {err}", self.vip);
                self.scale_up.failed(now, err);
            }
            JobResult::ScaleDown { addr, result } => match result {
                Ok(()) => {
                    self.scale_down.succeeded();
                    self.releases.retain(|a| *a != addr);
                    log::info!("autoscale {}: scale-down released {addr}", self.vip);
                }
                Err(err) => {
                    log::warn!("autoscale {}: scale-down {addr} failed: {err}", self.vip);
                    self.scale_down.failed(now, err);
                }
            },
        }
    }

    /// What `autoscale status` shows.
    pub fn status(&self, info: Option<&VipInfo>) -> Status {
        let serving_now = info.map_or(0, serving);
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
            provisioning: self.provisioning.iter().map(|p| p.addr).collect(),
            draining: self.draining.keys().copied().collect(),
            standby: self.spare.iter().copied().collect(),
            reason: self.reason.clone(),
            scale_outs: self.scale_outs,
            scale_ins: self.scale_ins,
            scale_up_hook: self.scale_up.clone(),
            scale_down_hook: self.scale_down.clone(),
            decisions: self.decisions.iter().cloned().collect(),
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

/// Runs a job to its end (every part of it bounded by its timeout).
pub async fn run_job(job: Job) -> JobResult {
    match job {
        Job::Probe {
            addr,
            kind,
            target,
            timeout,
            ..
        } => JobResult::Probe {
            addr,
            result: crate::health::probe(&kind, target, timeout).await,
        },
        Job::ScaleUp {
            vip, argv, timeout, ..
        } => JobResult::ScaleUp(
            run_hook(&vip, &argv, None, timeout)
                .await
                .and_then(|out| parse_hook_address(&out, vip.port)),
        ),
        Job::ScaleDown {
            vip,
            addr,
            argv,
            timeout,
        } => JobResult::ScaleDown {
            addr,
            result: run_hook(&vip, &argv, Some(addr), timeout).await.map(drop),
        },
    }
}

/// The address a `scale-up` hook printed: the first non-empty line, `ADDR:PORT`, or a bare
/// address that takes the VIP's port.
pub fn parse_hook_address(stdout: &str, vip_port: u16) -> Result<SocketAddr, String> {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("printed no address")?;
    line.parse::<SocketAddr>()
        .or_else(|_| {
            line.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, vip_port))
        })
        .map_err(|_| format!("printed {line:?}, not ADDR:PORT"))
}

/// Runs a hook (`argv`, plus `addr` as the last argument if given) with `XDPLB_VIP` set; its
/// stdout if it exits 0 within `timeout`. A hook that times out is killed.
async fn run_hook(
    vip: &Vip,
    argv: &[String],
    addr: Option<SocketAddr>,
    timeout: Duration,
) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("no program")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .args(addr.map(|a| a.to_string()))
        .env("XDPLB_VIP", vip.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|err| format!("starting {program}: {err}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{program} timed out after {}",
                crate::duration::format_duration(timeout)
            )
        })?
        .map_err(|err| format!("running {program}: {err}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(format!("{program} failed ({}): {last}", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use lb_common::maps::Settings;

    use super::*;
    use crate::{balancer::VipOptions, config::Config, maps::MemMaps};

    const CONFIG: &str = r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[[vip.backend]]
address = "10.1.0.2:80"
[vip.autoscale]
policy = "target"
target-per-backend = 10
min = 1
max = 3
max-step = 2
scale-out-cooldown = "0s"
scale-in-cooldown = "5s"
metric-window = "1s"
scale-in-window = "5s"
drain-timeout = "60s"
provision-timeout = "10s"
standby = ["10.1.0.3:80", "10.1.0.4:80"]
"#;

    struct Rig {
        balancer: Balancer<MemMaps>,
        scaler: VipAutoscaler,
        vip: Vip,
        /// Open flows per backend address.
        flows: HashMap<SocketAddr, u32>,
        now: u64,
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    impl Rig {
        fn new(text: &str) -> Self {
            let config = Config::parse(text).unwrap();
            let vip_config = &config.vips[0];
            let vip = vip_config.vip();
            let mut balancer =
                Balancer::new(MemMaps::default(), 1 << 20, Settings::default()).unwrap();
            balancer.add_vip(vip, VipOptions::default()).unwrap();
            balancer.set_backends(&vip, vip_config.backends()).unwrap();
            let info = balancer.vip(&vip).unwrap();
            let scaler = VipAutoscaler::new(vip, vip_config.autoscale.clone().unwrap(), &info);
            Self {
                balancer,
                scaler,
                vip,
                flows: HashMap::new(),
                now: 0,
            }
        }

        /// Spreads `total` open flows evenly over the backends taking new flows.
        fn load(&mut self, total: u32) {
            let info = self.balancer.vip(&self.vip).unwrap();
            let up: Vec<_> = info
                .backends
                .iter()
                .filter(|b| b.spec.state == BackendState::Up)
                .map(|b| b.spec.addr)
                .collect();
            self.flows.retain(|a, _| !up.contains(a));
            for (i, a) in up.iter().enumerate() {
                let share =
                    total / up.len() as u32 + u32::from((i as u32) < total % up.len() as u32);
                self.flows.insert(*a, share);
            }
        }

        /// One second: a tick, with every probe answered `healthy`.
        fn second(&mut self, healthy: bool) -> Vec<Job> {
            self.now += 1;
            let info = self.balancer.vip(&self.vip).unwrap();
            let active = info
                .backends
                .iter()
                .map(|b| (b.id, self.flows.get(&b.spec.addr).copied().unwrap_or(0)))
                .collect();
            let jobs = self.scaler.tick(
                self.now,
                &mut self.balancer,
                &active,
                &HealthCheck::default(),
                false,
            );
            for job in &jobs {
                if let Job::Probe { addr, .. } = job {
                    let result = if healthy {
                        Ok(())
                    } else {
                        Err("refused".into())
                    };
                    self.scaler.on_result(
                        self.now,
                        JobResult::Probe {
                            addr: *addr,
                            result,
                        },
                        &mut self.balancer,
                    );
                }
            }
            jobs
        }

        /// The running scale-up hook fails.
        fn hook_fails(&mut self) {
            let failed = JobResult::ScaleUp(Err("exit 1".into()));
            self.scaler.on_result(self.now, failed, &mut self.balancer);
        }

        fn states(&self) -> Vec<(SocketAddr, BackendState)> {
            let info = self.balancer.vip(&self.vip).unwrap();
            info.backends
                .iter()
                .map(|b| (b.spec.addr, b.spec.state))
                .collect()
        }
    }

    #[test]
    fn standby_backends_join_under_load_and_drain_before_leaving() {
        let mut rig = Rig::new(CONFIG);
        rig.load(5);
        rig.second(true);
        assert_eq!(rig.states().len(), 1, "5 flows fit one backend");

        rig.load(25);
        let jobs = rig.second(true);
        assert_eq!(jobs.len(), 2, "two probes: {jobs:?}");
        assert_eq!(
            rig.states(),
            [
                (addr("10.1.0.2:80"), BackendState::Up),
                (addr("10.1.0.3:80"), BackendState::Up),
                (addr("10.1.0.4:80"), BackendState::Up),
            ]
        );
        let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
        assert_eq!((status.desired, status.serving), (3, 3));
        assert!(status.standby.is_empty());
        assert_eq!(status.decisions.len(), 1);
        assert!(status.decisions[0].reason.contains("load 25"), "{status:?}");

        // Load falls to 5 flows: 1 long-lived on 10.1.0.3, 4 on 10.1.0.4.
        let fell = rig.now;
        rig.flows = HashMap::from([(addr("10.1.0.3:80"), 1), (addr("10.1.0.4:80"), 4)]);
        let draining = |rig: &Rig| -> Vec<SocketAddr> {
            rig.states()
                .into_iter()
                .filter(|(_, s)| *s == BackendState::Draining)
                .map(|(a, _)| a)
                .collect()
        };
        while draining(&rig).is_empty() {
            assert!(rig.now < fell + 10, "no scale-in: {:?}", rig.states());
            rig.second(true);
        }
        assert!(rig.now >= fell + 5, "scale-in only after the 5 s window");
        assert_eq!(
            draining(&rig),
            [addr("10.1.0.2:80"), addr("10.1.0.3:80")],
            "the backends with the fewest flows drain"
        );
        // The idle one leaves at the next tick; the one with a flow stays until it closes.
        rig.second(true);
        assert_eq!(
            rig.states(),
            [
                (addr("10.1.0.3:80"), BackendState::Draining),
                (addr("10.1.0.4:80"), BackendState::Up),
            ]
        );
        rig.second(true);
        assert_eq!(rig.states().len(), 2, "kept while its flow is open");
        rig.flows.remove(&addr("10.1.0.3:80"));
        rig.second(true);
        assert_eq!(rig.states(), [(addr("10.1.0.4:80"), BackendState::Up)]);
        let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
        assert_eq!(
            status.standby.len(),
            2,
            "drained backends are standby again"
        );
    }

    #[test]
    fn a_restarted_autoscaler_keeps_origins_drains_and_spares() {
        let mut rig = Rig::new(CONFIG);
        rig.load(25);
        rig.second(true);
        assert_eq!(rig.states().len(), 3);
        // Load falls; 2 flows stay on 10.1.0.3, so it stays (draining or up) while the config's
        // 10.1.0.2 drains, leaves and becomes a spare.
        rig.flows = HashMap::from([(addr("10.1.0.3:80"), 2)]);
        while rig.states().len() == 3 {
            assert!(rig.now < 20, "no scale-in: {:?}", rig.states());
            rig.second(true);
        }
        let info = rig.balancer.vip(&rig.vip).unwrap();
        let saved = rig.scaler.save();
        assert!(saved.spare.contains(&addr("10.1.0.2:80")), "{saved:?}");

        let config = rig.scaler.config().clone();
        let mut restarted = VipAutoscaler::new(rig.vip, config.clone(), &info);
        restarted.restore(&saved, &info, 100);
        let mut again = restarted.save();
        let mut want = saved.clone();
        for pool in [&mut again, &mut want] {
            pool.origins.sort_by_key(|(a, _)| *a);
            pool.spare.sort();
        }
        assert_eq!(again, want);

        // A config change keeps the spares it still lists (and those the pool gave back);
        // a standby backend dropped from the config leaves the list.
        let mut fewer = config.clone();
        fewer.standby.retain(|a| *a != addr("10.1.0.4:80"));
        fewer.max = 2;
        restarted.reconfigure(fewer, &info);
        let spare = restarted.status(Some(&info)).standby;
        assert!(spare.contains(&addr("10.1.0.2:80")), "{spare:?}");
        assert!(!spare.contains(&addr("10.1.0.4:80")), "{spare:?}");
    }

    #[test]
    fn a_backend_that_goes_down_is_made_up_for() {
        let mut rig = Rig::new(CONFIG);
        rig.load(5);
        rig.second(true);
        let b0 = addr("10.1.0.2:80");
        rig.balancer
            .update_backend(&rig.vip, b0, None, Some(BackendState::Down))
            .unwrap();
        rig.second(true);
        assert_eq!(
            rig.states(),
            [
                (b0, BackendState::Down),
                (addr("10.1.0.3:80"), BackendState::Up)
            ],
            "a standby backend replaces the one that is down"
        );
        // It comes back: one too many, so one drains once the scale-in window has passed.
        rig.balancer
            .update_backend(&rig.vip, b0, None, Some(BackendState::Up))
            .unwrap();
        rig.flows.clear();
        for _ in 0..10 {
            rig.second(true);
        }
        assert_eq!(rig.states().len(), 1, "{:?}", rig.states());
    }

    #[test]
    fn an_unhealthy_standby_backend_is_given_up_after_the_provision_timeout() {
        let mut rig = Rig::new(CONFIG);
        rig.load(15);
        rig.second(false);
        let status = rig.scaler.status(None);
        assert_eq!(status.provisioning, [addr("10.1.0.3:80")]);
        assert_eq!(rig.states().len(), 1, "not added before it passes");
        for _ in 0..9 {
            rig.second(false);
        }
        rig.second(false);
        let status = rig.scaler.status(None);
        // Given up on 10.1.0.3 and moved on to 10.1.0.4 in the same tick.
        assert_eq!(status.provisioning, [addr("10.1.0.4:80")], "{status:?}");
        rig.second(true);
        assert!(rig.states().iter().any(|(a, _)| *a == addr("10.1.0.4:80")));
    }

    #[test]
    fn dry_run_decides_but_changes_nothing() {
        let mut rig =
            Rig::new(&CONFIG.replace("policy = \"target\"", "policy = \"target\"\ndry-run = true"));
        rig.load(30);
        let jobs = rig.second(true);
        assert!(jobs.is_empty());
        assert_eq!(rig.states().len(), 1);
        let status = rig.scaler.status(rig.balancer.vip(&rig.vip).ok().as_ref());
        assert_eq!(status.desired, 3);
        assert_eq!(status.decisions[0].actions, ["would add 2"]);
        assert!(status.decisions[0].dry_run);
    }

    #[test]
    fn hooks_provision_release_and_back_off() {
        let text = CONFIG
            .replace("standby = [\"10.1.0.3:80\", \"10.1.0.4:80\"]", "")
            .replace("max = 3", "max = 2")
            + "scale-up = [\"/bin/new\"]\nscale-down = [\"/bin/release\"]\n";
        let mut rig = Rig::new(&text);
        rig.load(15);
        let jobs = rig.second(true);
        assert!(matches!(&jobs[..], [Job::ScaleUp { argv, .. }] if argv == &["/bin/new"]));
        // Fails: retried after 1 s, then after 2 s.
        rig.hook_fails();
        assert_eq!(
            rig.scaler.status(None).scale_up_hook.retry_at_s,
            rig.now + 1
        );
        assert_eq!(rig.second(true).len(), 1, "retried");
        rig.hook_fails();
        assert_eq!(
            rig.scaler.status(None).scale_up_hook.retry_at_s,
            rig.now + 2
        );
        assert!(rig.second(true).is_empty(), "backing off");
        let jobs = rig.second(true);
        assert_eq!(jobs.len(), 1, "retried after the backoff");
        rig.scaler.on_result(
            rig.now,
            JobResult::ScaleUp(Ok(addr("10.1.0.9:80"))),
            &mut rig.balancer,
        );
        rig.second(true);
        assert!(rig.states().iter().any(|(a, _)| *a == addr("10.1.0.9:80")));
        assert_eq!(rig.scaler.status(None).scale_up_hook.failures, 2);

        // Scale in: the hook backend (fewer flows) drains, leaves, and goes to scale-down.
        rig.flows = HashMap::from([(addr("10.1.0.2:80"), 3)]);
        let mut released = None;
        for _ in 0..10 {
            for job in rig.second(true) {
                if let Job::ScaleDown { addr, argv, .. } = job {
                    assert_eq!(argv, ["/bin/release"]);
                    released = Some(addr);
                }
            }
        }
        assert_eq!(released, Some(addr("10.1.0.9:80")));
        assert_eq!(rig.states(), [(addr("10.1.0.2:80"), BackendState::Up)]);
    }

    #[test]
    fn hook_output_is_an_address() {
        assert_eq!(
            parse_hook_address("\n10.1.0.9:8080\n", 80),
            Ok(addr("10.1.0.9:8080"))
        );
        assert_eq!(parse_hook_address("10.1.0.9", 80), Ok(addr("10.1.0.9:80")));
        assert!(
            parse_hook_address("", 80)
                .unwrap_err()
                .contains("no address")
        );
        assert!(
            parse_hook_address("oops", 80)
                .unwrap_err()
                .contains("\"oops\"")
        );
        assert_eq!(backoff_s(1), 1);
        assert_eq!(backoff_s(3), 4);
        assert_eq!(backoff_s(40), MAX_BACKOFF_S);
    }

    #[tokio::test]
    async fn hooks_run_with_a_timeout() {
        let vip: Vip = "198.19.0.1:80/tcp".parse().unwrap();
        let sh = |script: &str| vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let up = run_job(Job::ScaleUp {
            vip,
            argv: sh("echo \"$XDPLB_VIP\" >&2; echo 10.1.0.7:80"),
            timeout: Duration::from_secs(5),
        })
        .await;
        assert_eq!(up, JobResult::ScaleUp(Ok(addr("10.1.0.7:80"))));
        let slow = run_job(Job::ScaleUp {
            vip,
            argv: sh("sleep 5"),
            timeout: Duration::from_millis(100),
        })
        .await;
        assert!(matches!(slow, JobResult::ScaleUp(Err(e)) if e.contains("timed out")));
        let down = run_job(Job::ScaleDown {
            vip,
            addr: addr("10.1.0.7:80"),
            argv: sh("test \"$0\" = 10.1.0.7:80 || { echo wrong: $0 >&2; exit 3; }"),
            timeout: Duration::from_secs(5),
        })
        .await;
        assert_eq!(
            down,
            JobResult::ScaleDown {
                addr: addr("10.1.0.7:80"),
                result: Ok(())
            }
        );
    }
}
