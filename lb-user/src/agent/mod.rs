//! The running agent: the balancer over the pinned maps, its state file, and the periodic work
//! (connection counts for least-connections).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context as _;
use log::{info, warn};

use crate::{
    autoscale::live::{Job, SavedPool, VipAutoscaler},
    balancer::{BackendState, Balancer, Forwarding, Proto, Scheduler, Snapshot, Vip, VipInfo},
    config::{self, Config, Plan, VipConfig},
    health::{CheckKind, HealthCheck, HealthEvent, Monitor, ProbePath, Target, WatchKey},
    maps::DynMaps,
    pin::Pinned,
};

pub use neighbours::manage_dsr_neighbours_every;
pub use probe_routes::{ProbeKey, Via, manage_probe_routes_every, sweep_probe_rules};
pub use routes::{local_addrs, publish_local_addrs, refresh_next_hops_on_changes};
pub use state_file::{load_state, monotonic_ns, write_atomically};
pub use tasks::{apply_health_events, autoscale_every, count_connections_every, log_vips};

pub mod audit;
pub mod cluster;
mod neighbours;
mod probe_routes;
mod routes;
mod state_file;
mod tasks;
pub mod xdp_mode;

/// Default state file.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xdplb/state.json";

/// What the agent saves after every accepted change, and restores from at start.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SavedState {
    pub snapshot: Snapshot,
    /// The last config applied (for what the balancer does not hold: health checks).
    #[serde(default)]
    pub config: Config,
    /// Backends a failed health check took down, with the state to give back on recovery.
    #[serde(default)]
    pub held: Vec<(WatchKey, BackendState)>,
    /// Autoscaled pools: where their backends came from, what is draining.
    #[serde(default)]
    pub autoscale: Vec<(Vip, SavedPool)>,
}

/// A VIP with its backends and traffic, as the API and the CLI show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct VipView {
    pub vip: String,
    pub address: std::net::SocketAddr,
    pub protocol: Proto,
    pub scheduler: Scheduler,
    pub ring_size: u32,
    /// Source prefixes let in (if any, only those).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Source prefixes dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// New flows a second per source prefix (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_rate_limit: Option<u32>,
    /// The source prefix length the limit counts by (with a limit only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix_len: Option<u8>,
    /// How packets reach the backends (absent from an older agent's answer: NAT).
    #[serde(default)]
    pub forwarding: Forwarding,
    /// Where the health checks go, `direct` or `vip` (absent: direct).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendView>,
    /// The digest of its `maglev` or `source-hash` table: equal on every gateway that
    /// schedules each slot to the same backend address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_digest: Option<String>,
    /// The health check of its backends, as `[vip.health]` would give it (`None`: no check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<config::HealthSettings>,
    /// `notify-up`: run when a check brings a backend back (empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify_up: Vec<String>,
    /// `notify-down`: run when a check takes a backend down (empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify_down: Vec<String>,
    /// The `sorry` backend: new flows only while no other backend takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry: Option<std::net::SocketAddr>,
}

/// A backend with its state, load and traffic.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct BackendView {
    pub address: std::net::SocketAddr,
    pub weight: u32,
    pub state: BackendState,
    pub id: u32,
    /// Open, unexpired tracked flows, as last counted.
    pub active_connections: u32,
    /// Draining (or weight 0) and no tracked flow left: safe to remove.
    pub drained: bool,
    /// What the health check says; `None` if the VIP has none.
    pub healthy: Option<bool>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// The state as the operator set it (`up`, `draining`, `down`): a backend its health check
    /// holds down shows the state it goes back to, while `state` is the one in the tables.
    #[serde(default)]
    pub admin_state: Option<BackendState>,
    /// The operational state, from the health checks alone.
    #[serde(default)]
    pub health: Health,
    /// When the last check ended (Unix seconds) and whether it passed; `None` before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_ok: Option<bool>,
    /// The last failed check's error and when it ended (Unix seconds), kept after recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<f64>,
}

/// Longest a `notify-up` or `notify-down` command may run before it is killed.
pub const NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A backend's operational state, as its health checks see it (apart from the admin state).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check (the VIP has none), or none has run yet.
    #[default]
    Unchecked,
    /// The checks pass (or fail fewer than `fall` times in a row).
    Healthy,
    /// The checks failed `fall` times in a row, and have not passed `rise` times since.
    Failing,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Unchecked => "unchecked",
            Health::Healthy => "healthy",
            Health::Failing => "failing",
        })
    }
}

/// Seconds since the Unix epoch, to the millisecond.
fn unix_seconds(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64 / 1000.0)
}

/// Why a config was not applied. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config asks for what a running agent cannot do.
    #[error("{0}")]
    Refused(String),
    /// The balancer refused a change.
    #[error(transparent)]
    Balancer(#[from] crate::balancer::Error),
    /// Applying or saving failed.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

/// The agent's state, shared by the API handlers and the periodic tasks.
pub struct Agent {
    pub balancer: Balancer<DynMaps>,
    /// The program the agent runs: pinned, or a stand-in in tests.
    pub pinned: Box<dyn Dataplane>,
    pub state_file: PathBuf,
    pub started: Instant,
    /// Flows the connection table holds, fixed when the program was loaded.
    pub capacity: u32,
    /// Active (open, unexpired) tracked flows per backend id, as last counted.
    pub active: HashMap<u32, u32>,
    /// How full the connection tables were at the last count.
    pub tables: TableFill,
    /// The last config applied: health checks per VIP.
    pub config: Config,
    /// Health checks; `None` until the runtime runs.
    pub monitor: Option<Monitor>,
    /// Backends a failed health check took down, with the state to give back on recovery.
    pub held: HashMap<WatchKey, BackendState>,
    /// The autoscaler of every VIP whose config has `[vip.autoscale]`.
    pub autoscale: BTreeMap<Vip, VipAutoscaler>,
    /// Autoscalers decide and report but change nothing (`run --autoscale-dry-run`).
    pub autoscale_dry_run: bool,
    /// The state file's content as last written.
    pub saved: Vec<u8>,
    /// The socket mark of each `dsr-l2` or `ipip` backend checked through the VIP (`path =
    /// "vip"`), which [`manage_probe_routes_every`] routes to it.
    pub probe_marks: BTreeMap<ProbeKey, u32>,
    /// The rules and routes of [`Agent::probe_marks`] in place, with their hops.
    pub probe_routes: BTreeMap<(ProbeKey, u32), probe_routes::Hop>,
    /// The encapsulation of the checks through the `ipip` tunnel, while there are any.
    pub probe_encap: Option<crate::probe_encap::ProbeEncap>,
    /// `run --ipip-source-v4/-v6`, which win over the config's `[ipip]`.
    pub ipip_source_flags: (
        Option<crate::balancer::SourcePrefix>,
        Option<crate::balancer::SourcePrefix>,
    ),
    /// Cluster mode: the desired config lives in etcd ([`cluster`]).
    pub cluster: Option<cluster::ClusterState>,
    /// The BGP announcements, with `[bgp]` (`crate::cluster::bgp`).
    pub bgp: Option<crate::cluster::bgp::BgpStatus>,
    /// How the agent was started, for `status`.
    pub about: About,
}

pub type Shared = Arc<Mutex<Agent>>;

/// What `status` says about how the agent was started: where its program came from, its
/// files and its endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct About {
    /// `loaded` (a fresh program), `adopted` (the one an earlier agent left running) or
    /// `replaced` (adopted maps, this agent's program).
    pub program: String,
    pub config_file: Option<PathBuf>,
    pub api_socket: PathBuf,
    pub api_tcp: Option<std::net::SocketAddr>,
    pub metrics: Option<std::net::SocketAddr>,
}

/// Entries the connection tables held at the last count: a full embryonic table is the sign
/// of a SYN flood (its oldest half-open flows are evicted first), a full connection table
/// evicts established flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableFill {
    /// Entries of the connection table, expired ones not yet evicted included.
    pub conntrack: usize,
    /// Entries of the embryonic table.
    pub embryonic: usize,
    /// Half-open flows of the embryonic table within the SYN timeout.
    pub embryonic_live: usize,
}

/// The program an agent runs, as the agent uses it: where it is pinned, its interfaces, its
/// counters. [`Pinned`] is the real one.
pub trait Dataplane: Send {
    /// The pin directory.
    fn dir(&self) -> &Path;
    /// Interfaces the program is attached to.
    fn ifaces(&self) -> Vec<String>;
    /// Attaches the program to `iface` (kept if it already is).
    fn attach(&mut self, iface: &str, mode: crate::loader::AttachMode) -> anyhow::Result<()>;
    /// Detaches the program from `iface`.
    fn detach(&mut self, iface: &str) -> anyhow::Result<()>;
    /// The outcome counters.
    fn counters(&self) -> anyhow::Result<crate::counters::Counters>;
    /// The connection tables' event counts (lost state, embryonic entries, promotions,
    /// stateless new flows).
    fn events(&self) -> anyhow::Result<crate::counters::Events>;
    /// Flows the connection table holds.
    fn conntrack_capacity(&self) -> anyhow::Result<u32>;
    /// Half-open flows the embryonic table holds.
    fn embryonic_capacity(&self) -> anyhow::Result<u32>;
    /// Switches the interfaces to a staged replacement program ([`Pinned::stage_replacement`]).
    fn finish_replacement(&mut self) -> anyhow::Result<()>;
    /// The loaded program's tag (as `bpftool prog` shows it), if known.
    fn program_tag(&self) -> Option<String> {
        None
    }
    /// Zeroes the outcome counters, the events, and the traffic of the VIPs `vip_ids` and the
    /// backends at `backend_indices` ([`Pinned::zero_stats`]).
    fn zero_stats(&self, _vip_ids: &[u32], _backend_indices: &[u32]) -> anyhow::Result<()> {
        anyhow::bail!("this data path cannot zero its counters")
    }
}

impl Dataplane for Pinned {
    fn dir(&self) -> &Path {
        Pinned::dir(self)
    }
    fn ifaces(&self) -> Vec<String> {
        Pinned::ifaces(self)
    }
    fn attach(&mut self, iface: &str, mode: crate::loader::AttachMode) -> anyhow::Result<()> {
        Pinned::attach(self, iface, mode).map(drop)
    }
    fn detach(&mut self, iface: &str) -> anyhow::Result<()> {
        Pinned::detach(self, iface)
    }
    fn counters(&self) -> anyhow::Result<crate::counters::Counters> {
        Pinned::counters(self)
    }
    fn events(&self) -> anyhow::Result<crate::counters::Events> {
        Pinned::events(self)
    }
    fn conntrack_capacity(&self) -> anyhow::Result<u32> {
        Pinned::conntrack_capacity(self)
    }
    fn embryonic_capacity(&self) -> anyhow::Result<u32> {
        Pinned::capacity(self, lb_common::maps::EMBRYONIC_MAP)
    }
    fn finish_replacement(&mut self) -> anyhow::Result<()> {
        Pinned::finish_replacement(self)
    }
    fn zero_stats(&self, vip_ids: &[u32], backend_indices: &[u32]) -> anyhow::Result<()> {
        Pinned::zero_stats(self, vip_ids, backend_indices)
    }
    fn program_tag(&self) -> Option<String> {
        Pinned::program_tag(self).ok()
    }
}

impl Agent {
    /// An agent running `balancer` over the program `pinned`, saving to `state_file`; no
    /// config applied, no backend held down, autoscalers acting.
    pub fn new(
        balancer: Balancer<DynMaps>,
        pinned: Box<dyn Dataplane>,
        state_file: PathBuf,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            balancer,
            capacity: pinned.conntrack_capacity()?,
            pinned,
            state_file,
            started: Instant::now(),
            active: HashMap::new(),
            tables: TableFill::default(),
            config: Config::default(),
            monitor: None,
            held: HashMap::new(),
            autoscale: BTreeMap::new(),
            autoscale_dry_run: false,
            saved: Vec::new(),
            probe_marks: BTreeMap::new(),
            probe_routes: BTreeMap::new(),
            probe_encap: None,
            ipip_source_flags: (None, None),
            cluster: None,
            bgp: None,
            about: About::default(),
        })
    }

    /// Writes the state file atomically (a temporary file renamed over it).
    pub fn save(&mut self) -> anyhow::Result<()> {
        let state = self.state()?;
        write_atomically(&self.state_file, &state)?;
        self.saved = state;
        Ok(())
    }

    /// Writes the state file if the state differs from what was last written.
    pub fn save_if_changed(&mut self) -> anyhow::Result<()> {
        let state = self.state()?;
        if state != self.saved {
            write_atomically(&self.state_file, &state)?;
            self.saved = state;
        }
        Ok(())
    }

    /// Makes an operator's change all or nothing, and durable before it is live: `change` runs
    /// with the balancer's map writes held back, the state it leads to is saved, and only then
    /// do the writes reach the data path. A change that fails, or whose state cannot be saved
    /// (a full disk), is undone: the maps, the agent and the state file stay as they were.
    /// Logs what changed in the audit trail as made through the API ([`Agent::change_from`]).
    pub fn change<T, E: From<anyhow::Error>>(
        &mut self,
        change: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        self.change_from(audit::Source::Api, change)
    }

    /// [`Agent::change`] from `source`: what changed is logged in the audit trail, one line a
    /// change ([`audit`]).
    pub fn change_from<T, E: From<anyhow::Error>>(
        &mut self,
        source: audit::Source,
        change: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        let before = audit::Before::new(self.balancer.vips(), &self.config);
        let checkpoint = self.balancer.begin();
        let (config, held) = (self.config.clone(), self.held.clone());
        let result = change(self).and_then(|value| {
            self.sync_sorry()
                .map_err(|err| anyhow::anyhow!("the sorry backend: {err}"))?;
            self.save()
                .context("saving the state (the change was not made)")?;
            Ok(value)
        });
        let value = match result {
            Ok(value) => value,
            Err(err) => {
                self.balancer.abort(checkpoint);
                (self.config, self.held) = (config, held);
                return Err(err);
            }
        };
        if let Err(err) = self.balancer.commit() {
            // Saved, but the data path took only part of it: write it all again.
            let repaired = self.balancer.reconcile();
            return Err(anyhow::anyhow!(
                "the change was saved, but writing it to the data path failed ({err}); {}",
                match repaired {
                    Ok(()) => "rewrote the data path from the saved state".to_owned(),
                    Err(again) => format!("rewriting it failed too ({again})"),
                }
            )
            .into());
        }
        audit::log(
            source,
            &audit::changes(&before, &self.balancer.vips(), &self.config),
        );
        self.sync_autoscale(&[]);
        self.sync_health();
        if let Err(err) = self.save_if_changed() {
            warn!("saving the autoscalers' state: {err:#}");
        }
        Ok(value)
    }

    /// What the agent's config would be after `change`, which is then undone: the maps, the
    /// agent and the state file stay as they are. In cluster mode a change is worked out so,
    /// written to the store, and made when the store's watch brings it back.
    pub fn tentative<T, E>(
        &mut self,
        change: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<(T, Config), E> {
        let checkpoint = self.balancer.begin();
        let (config, held) = (self.config.clone(), self.held.clone());
        let result = change(self).map(|value| (value, self.running_config()));
        self.balancer.abort(checkpoint);
        (self.config, self.held) = (config, held);
        result
    }

    /// Logs in the audit trail what changed since `before`, as from `source`.
    pub fn audit(&self, source: audit::Source, before: &audit::Before) {
        audit::log(
            source,
            &audit::changes(before, &self.balancer.vips(), &self.config),
        );
    }

    /// The state file's content.
    fn state(&self) -> anyhow::Result<Vec<u8>> {
        let state = SavedState {
            snapshot: self.balancer.snapshot(),
            config: self.config.clone(),
            held: self.held.iter().map(|(k, v)| (*k, *v)).collect(),
            autoscale: self
                .autoscale
                .iter()
                .map(|(vip, a)| (*vip, a.save()))
                .collect(),
        };
        Ok(serde_json::to_vec_pretty(&state)?)
    }

    /// What applying `desired` changes, in order: VIPs and backends, then health checks,
    /// autoscaling and timeouts. Refused if it asks for what cannot change on a running
    /// program.
    pub fn plan_config(&self, desired: &Config) -> Result<Plan, ApplyError> {
        let capacity = desired.conntrack.capacity;
        // The default is what a file that leaves the capacity out has: that keeps the table.
        if capacity != self.capacity && capacity != lb_common::maps::DEFAULT_CONNTRACK_CAPACITY {
            return Err(ApplyError::Refused(format!(
                "conntrack.capacity: the connection table holds {} flows, fixed when the program \
                 was loaded; {capacity} takes a new program (`xdplb stop --detach`, then \
                 `xdplb run`), and tracked connections are lost",
                self.capacity
            )));
        }
        if let Some(embryonic) = desired.conntrack.embryonic_capacity {
            let loaded = self
                .pinned
                .embryonic_capacity()
                .map_err(|err| ApplyError::Refused(format!("{err:#}")))?;
            if embryonic != loaded {
                return Err(ApplyError::Refused(format!(
                    "conntrack.embryonic-capacity: the embryonic table holds {loaded} half-open \
                     flows, fixed when the program was loaded; {embryonic} takes a new program \
                     (`xdplb stop --detach`, then `xdplb run`), and tracked connections are lost"
                )));
            }
        }
        config::check_rules(desired)?;
        let mut plan = config::plan(&self.balancer.vips(), &self.effective(desired));
        // Capacity is not a change here: it is the same, or left out.
        let mut now = self.config.clone();
        now.conntrack.capacity = capacity;
        plan.changes.extend(config::settings_changes(&now, desired));
        Ok(plan)
    }

    /// Applies `desired` as `xdplb apply -f` does: all or nothing, saved before it is live;
    /// backends the agent keeps keep their ids and tracked flows. Returns what changed.
    pub fn apply_config(&mut self, desired: Config) -> Result<Plan, ApplyError> {
        self.apply_config_from(desired, audit::Source::Apply)
    }

    /// [`Agent::apply_config`], logged in the audit trail as from `source`.
    pub fn apply_config_from(
        &mut self,
        desired: Config,
        source: audit::Source,
    ) -> Result<Plan, ApplyError> {
        let plan = self.plan_config(&desired)?;
        self.change_from(source, |agent| {
            let effective = agent.effective(&desired);
            config::apply_plan(&mut agent.balancer, &effective)?;
            let timeouts = desired.conntrack.timeouts();
            if timeouts != agent.balancer.timeouts() {
                agent.balancer.set_timeouts(timeouts)?;
            }
            // Left out, the limit stays as it is (set by `run --new-flow-rate-limit`, or by the
            // file last applied).
            if let Some(limit) = desired.conntrack.new_flow_rate_limit
                && limit != agent.balancer.new_flow_rate_limit()
            {
                agent.balancer.set_new_flow_rate_limit(limit)?;
            }
            // The flags win; a prefix neither gives stays as it is.
            let (v4, v6) = agent.ipip_source_flags;
            agent
                .balancer
                .set_ipip_sources(v4.or(desired.ipip.source_v4), v6.or(desired.ipip.source_v6))?;
            agent.hold_after_apply(&desired);
            agent.config = desired;
            if agent.cluster.is_some() {
                // The store's pool holds the standby backends its autoscaler brought in; as a
                // config file (the state file's) they are standby only.
                for vip in &mut agent.config.vips {
                    if let Some(autoscale) = &vip.autoscale {
                        vip.backends
                            .retain(|b| !autoscale.standby.iter().any(|s| s.addr == b.address));
                    }
                }
            }
            Ok(plan)
        })
    }

    /// The configuration the agent runs, as a config file would give it: VIPs and backends as
    /// the balancer has them (a backend held down by its health check with the state it goes
    /// back to), health checks, autoscaling and the connection table as last applied.
    pub fn running_config(&self) -> Config {
        let mut running = Config {
            conntrack: self.config.conntrack.clone(),
            ipip: self.config.ipip.clone(),
            cluster: self.config.cluster.clone(),
            bgp: self.config.bgp.clone(),
            vips: Vec::new(),
        };
        running.conntrack.capacity = self.capacity;
        for info in self.balancer.vips() {
            let mut vip = VipConfig::from_info(&info);
            if let Some(applied) = self.config.vip(&info.vip) {
                vip.health = applied.health.clone();
                vip.autoscale = applied.autoscale.clone();
                vip.notify_up = applied.notify_up.clone();
                vip.notify_down = applied.notify_down.clone();
                vip.sorry = applied.sorry;
                // The agent's, not the operator's.
                vip.backends.retain(|b| Some(b.address) != applied.sorry);
            }
            for backend in &mut vip.backends {
                if let Some(state) = self.held.get(&(info.vip, backend.address)) {
                    backend.state = *state;
                }
            }
            running.vips.push(vip);
        }
        running
    }

    /// Changes `vip`'s health check as `vip set --health…` asks (see [`config::merge_health`]);
    /// the checks follow when the change is made ([`Agent::change`]).
    pub fn set_health(
        &mut self,
        vip: &Vip,
        change: config::HealthSettings,
    ) -> Result<HealthCheck, ApplyError> {
        let info = self.balancer.vip(vip)?;
        let current = self
            .config
            .vip(vip)
            .map(VipConfig::health)
            .unwrap_or_default();
        let check = config::merge_health(&current, change, info.options.forwarding)
            .map_err(|err| ApplyError::Refused(err.to_string()))?;
        match self.config.vips.iter_mut().find(|v| v.vip() == *vip) {
            Some(applied) => applied.health = check.clone(),
            None => {
                let mut applied = VipConfig::from_info(&info);
                applied.health = check.clone();
                self.config.vips.push(applied);
            }
        }
        Ok(check)
    }

    /// Refuses a scheduler that is not cluster-safe for `vip` when the agent runs in a cluster
    /// (its config has `[cluster]` or `[bgp]`).
    pub fn check_cluster_safe(&self, vip: &Vip, scheduler: Scheduler) -> Result<(), String> {
        if (self.config.cluster.is_some() || self.config.bgp.is_some())
            && !crate::config::cluster_safe(scheduler)
        {
            return Err(format!(
                "VIP {vip}: scheduler {scheduler} is not cluster-safe: with [cluster] or [bgp], \
                 use maglev or source-hash (the same backend for a flow on every gateway)"
            ));
        }
        Ok(())
    }

    /// A VIP with its backends, their health, load and traffic.
    pub fn vip_view(&self, info: &VipInfo) -> Result<VipView, crate::balancer::Error> {
        let stats = self.balancer.vip_stats(&info.vip)?;
        let backends = info
            .backends
            .iter()
            .map(|b| {
                let s = self.balancer.backend_stats(b.id)?;
                let active = self.active.get(&b.id).copied().unwrap_or(0);
                let check = self
                    .monitor
                    .as_ref()
                    .and_then(|m| m.stats(&(info.vip, b.spec.addr)));
                let healthy = check.as_ref().map(|s| s.healthy);
                let health = match &check {
                    Some(c) if !c.healthy => Health::Failing,
                    Some(c) if c.last.is_some() => Health::Healthy,
                    _ => Health::Unchecked,
                };
                let last = check.as_ref().and_then(|c| c.last.as_ref());
                let failure = check.as_ref().and_then(|c| c.last_failure.as_ref());
                let admin_state = self
                    .held
                    .get(&(info.vip, b.spec.addr))
                    .copied()
                    .unwrap_or(b.spec.state);
                Ok(BackendView {
                    admin_state: Some(admin_state),
                    health,
                    last_check: last.map(|l| unix_seconds(l.at)),
                    last_check_ok: last.map(|l| l.error.is_none()),
                    last_error: failure.map(|f| f.error.clone()),
                    last_error_at: failure.map(|f| unix_seconds(f.at)),
                    address: b.spec.addr,
                    weight: b.spec.weight,
                    state: b.spec.state,
                    id: b.id,
                    active_connections: active,
                    drained: (b.spec.state == BackendState::Draining || b.spec.weight == 0)
                        && active == 0,
                    healthy,
                    packets: s.packets,
                    bytes: s.bytes,
                    new_flows: s.new_flows,
                })
            })
            .collect::<Result<Vec<_>, crate::balancer::Error>>()?;
        let applied = self.config.vip(&info.vip);
        Ok(VipView {
            vip: info.vip.to_string(),
            address: std::net::SocketAddr::new(info.vip.addr, info.vip.port),
            protocol: info.vip.proto,
            scheduler: info.options.scheduler,
            ring_size: info.options.ring_size,
            allow: info.options.allow.iter().map(ToString::to_string).collect(),
            deny: info.options.deny.iter().map(ToString::to_string).collect(),
            source_rate_limit: (info.options.source_rate_limit != 0)
                .then_some(info.options.source_rate_limit),
            source_prefix_len: (info.options.source_rate_limit != 0)
                .then(|| info.options.source_prefix_len_for(info.vip.addr)),
            forwarding: info.options.forwarding,
            health_path: self
                .config
                .vip(&info.vip)
                .map(|v| v.health.path)
                .filter(|&p| p != ProbePath::Direct)
                .map(|p| p.name().to_owned()),
            packets: stats.packets,
            bytes: stats.bytes,
            new_flows: stats.new_flows,
            backends,
            table_digest: info.table_digest.clone(),
            health_check: self
                .config
                .vip(&info.vip)
                .map(VipConfig::health)
                .filter(|check| check.kind != CheckKind::None)
                .map(config::health_settings),
            notify_up: applied.map(|v| v.notify_up.clone()).unwrap_or_default(),
            notify_down: applied.map(|v| v.notify_down.clone()).unwrap_or_default(),
            sorry: applied.and_then(|v| v.sorry),
        })
    }

    /// Watches every backend of every VIP that has a health check, and nothing else.
    pub fn sync_health(&mut self) {
        let Some(monitor) = self.monitor.as_mut() else {
            return;
        };
        let mut keep = std::collections::HashSet::new();
        let vips: Vec<_> = self
            .balancer
            .vips()
            .into_iter()
            .filter_map(|info| {
                let check = self.config.vip(&info.vip)?.health();
                let via = match info.options.forwarding {
                    Forwarding::DsrL2 => Some(Via::Mac),
                    Forwarding::Ipip => Some(Via::Tunnel),
                    Forwarding::Nat => None,
                }
                .filter(|_| check.path == ProbePath::Vip && check.kind != CheckKind::None);
                Some((info, check, via))
            })
            .collect();
        let through_vip: std::collections::BTreeSet<ProbeKey> = vips
            .iter()
            .filter_map(|(info, _, via)| via.map(|via| (info, via)))
            .flat_map(|(info, via)| info.backends.iter().map(move |b| (b.spec.addr.ip(), via)))
            .collect();
        self.probe_marks = probe_routes::assign_marks(&self.probe_marks, &through_vip);
        // Before the first check: one without its route would go the main table's way.
        probe_routes::sync_logged(
            &self.probe_marks,
            &mut self.probe_routes,
            &mut self.probe_encap,
        );
        for (info, check, via) in vips {
            for b in &info.backends {
                let key = (info.vip, b.spec.addr);
                let direct = check.target(b.spec.addr);
                let mark = via.and_then(|via| self.probe_marks.get(&(b.spec.addr.ip(), via)));
                let target = match mark {
                    Some(&mark) => Target {
                        addr: std::net::SocketAddr::new(info.vip.addr, direct.port()),
                        mark: Some(mark),
                    },
                    _ => direct.into(),
                };
                monitor.watch(key, target, check.clone());
                keep.insert(key);
            }
        }
        monitor.unwatch_all_except(&keep);
        self.held.retain(|key, _| keep.contains(key));
    }

    /// Makes the rule and route of each [`Agent::probe_marks`] entry that lacks them, and
    /// removes those of marks given up; a failure is logged (and tried again by
    /// [`manage_probe_routes_every`]).
    pub fn sync_probe_routes(&mut self) {
        probe_routes::sync_logged(
            &self.probe_marks,
            &mut self.probe_routes,
            &mut self.probe_encap,
        );
    }

    /// Seconds since the agent started: the autoscalers' clock.
    pub fn now_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Runs an autoscaler for every VIP whose config asks for one (a new one, or the running
    /// one with the new config), and none for the others; `saved` holds what a previous agent
    /// left.
    pub fn sync_autoscale(&mut self, saved: &[(Vip, SavedPool)]) {
        let now = self.now_s();
        let mut keep = Vec::new();
        for vip_config in &self.config.vips {
            let (Some(config), Ok(info)) =
                (&vip_config.autoscale, self.balancer.vip(&vip_config.vip()))
            else {
                continue;
            };
            let vip = info.vip;
            keep.push(vip);
            match self.autoscale.get_mut(&vip) {
                Some(running) => running.reconfigure(config.clone(), &info),
                None => {
                    let mut scaler = VipAutoscaler::new(vip, config.clone(), &info);
                    if let Some((_, pool)) = saved.iter().find(|(v, _)| *v == vip) {
                        scaler.restore(pool, &info, now);
                    }
                    info!(
                        "autoscaling {vip}: policy {}, {} per backend of {}, {}..={} backends",
                        config.policy,
                        config
                            .target_per_backend
                            .map_or("-".into(), |t| t.to_string()),
                        config.signal,
                        config.min,
                        config.max
                    );
                    self.autoscale.insert(vip, scaler);
                }
            }
        }
        self.autoscale.retain(|vip, _| keep.contains(vip));
    }

    /// The backends the VIPs other than `except` use, in the balancer or on their standby
    /// lists, with the VIP using each: what a `scale-up` answer for `except` must not name.
    pub fn claimed_backends(&self, except: &Vip) -> BTreeMap<SocketAddr, Vip> {
        let mut claimed = BTreeMap::new();
        for info in self.balancer.vips() {
            if info.vip != *except {
                claimed.extend(info.backends.iter().map(|b| (b.spec.addr, info.vip)));
            }
        }
        for vip in &self.config.vips {
            if let Some(autoscale) = &vip.autoscale
                && vip.vip() != *except
            {
                claimed.extend(autoscale.standby.iter().map(|s| (s.addr, vip.vip())));
            }
        }
        claimed
    }

    /// One autoscaling second for every autoscaled VIP; the slow work to run.
    pub fn autoscale_tick(&mut self) -> Vec<Job> {
        let now = self.now_s();
        let mut jobs = Vec::new();
        for (vip, scaler) in &mut self.autoscale {
            // In cluster mode one gateway runs each VIP's autoscaler; the others follow the
            // store.
            if self.cluster.as_ref().is_some_and(|c| !c.leads(vip)) {
                continue;
            }
            let health = self.config.vip(vip).map(|v| v.health()).unwrap_or_default();
            jobs.extend(scaler.tick(
                now,
                &mut self.balancer,
                &self.active,
                &health,
                self.autoscale_dry_run,
            ));
        }
        jobs
    }

    /// What `desired` comes to on this agent: an autoscaled VIP keeps the backends its
    /// autoscaler gave it (the config's list only seeds a new VIP), and every backend a failed
    /// health check holds down stays down.
    pub fn effective(&self, desired: &Config) -> Config {
        let mut effective = desired.clone();
        for vip in &mut effective.vips {
            // In cluster mode the pool is the store's, written by the autoscaler's leader.
            if vip.autoscale.is_some()
                && self.cluster.is_none()
                && self.autoscale.contains_key(&vip.vip())
                && let Ok(info) = self.balancer.vip(&vip.vip())
            {
                vip.backends = crate::config::VipConfig::from_info(&info).backends;
            }
            // The sorry backend stays as the agent has it (see `sync_sorry`).
            if let Some(sorry) = vip.sorry
                && !vip.backends.iter().any(|b| b.address == sorry)
                && let Ok(info) = self.balancer.vip(&vip.vip())
                && let Some(b) = info.backends.iter().find(|b| b.spec.addr == sorry)
            {
                vip.backends.push(crate::config::BackendConfig {
                    address: sorry,
                    weight: b.spec.weight,
                    state: self
                        .held
                        .get(&(vip.vip(), sorry))
                        .copied()
                        .unwrap_or(b.spec.state),
                });
            }
        }
        self.with_health(&effective)
    }

    /// `desired` with every backend a failed health check holds down kept down: what to
    /// apply so that a config never brings back a backend that is failing.
    pub fn with_health(&self, desired: &Config) -> Config {
        let mut effective = desired.clone();
        for vip in &mut effective.vips {
            let key_vip = vip.vip();
            for backend in &mut vip.backends {
                if self.held.contains_key(&(key_vip, backend.address)) {
                    backend.state = BackendState::Down;
                }
            }
        }
        effective
    }

    /// After `desired` was applied: what each held backend goes back to on recovery is now
    /// what the config says.
    pub fn hold_after_apply(&mut self, desired: &Config) {
        for vip in &desired.vips {
            for backend in &vip.backends {
                if let Some(state) = self.held.get_mut(&(vip.vip(), backend.address)) {
                    *state = backend.state;
                }
            }
        }
    }

    /// Removes `vip` and what the applied config holds for it (health check, autoscaling), so
    /// that the same address added again starts from its defaults.
    pub fn remove_vip(&mut self, vip: &Vip) -> Result<(), crate::balancer::Error> {
        self.balancer.remove_vip(vip)?;
        self.config.vips.retain(|v| v.vip() != *vip);
        Ok(())
    }

    /// Changes `vip`'s `notify-up` and `notify-down` commands and its `sorry` backend as `vip
    /// set` asks: each given replaces the VIP's (an empty command or `Some(None)` removes it),
    /// checked as the config file's are ([`config::check_notify`], [`config::check_sorry`]).
    /// A sorry backend replaced or removed leaves the tables with the change; the new one
    /// enters them when [`Agent::change`] syncs it.
    pub fn set_hooks(
        &mut self,
        vip: &Vip,
        notify_up: Option<Vec<String>>,
        notify_down: Option<Vec<String>>,
        sorry: Option<Option<std::net::SocketAddr>>,
    ) -> Result<(), ApplyError> {
        let info = self.balancer.vip(vip)?;
        for (name, argv) in [("notify_up", &notify_up), ("notify_down", &notify_down)] {
            if let Some(argv) = argv {
                config::check_notify(argv)
                    .map_err(|err| ApplyError::Refused(format!("{name}: {err}")))?;
            }
        }
        let current = self.config.vip(vip).and_then(|v| v.sorry);
        if let Some(Some(new)) = sorry {
            let own: Vec<_> = info
                .backends
                .iter()
                .map(|b| b.spec.addr)
                .filter(|&a| Some(a) != current)
                .collect();
            config::check_sorry(vip, info.options.forwarding, new, &own)
                .map_err(|err| ApplyError::Refused(format!("sorry: {err}")))?;
        }
        if let Some(wanted) = sorry
            && let Some(old) = current
            && wanted != Some(old)
            && info.backends.iter().any(|b| b.spec.addr == old)
        {
            self.balancer.remove_backend(vip, old)?;
            self.held.remove(&(*vip, old));
        }
        let applied = match self.config.vips.iter_mut().position(|v| v.vip() == *vip) {
            Some(i) => &mut self.config.vips[i],
            None => {
                self.config.vips.push(VipConfig::from_info(&info));
                self.config.vips.last_mut().expect("just pushed")
            }
        };
        if let Some(argv) = notify_up {
            applied.notify_up = argv;
        }
        if let Some(argv) = notify_down {
            applied.notify_down = argv;
        }
        if let Some(sorry) = sorry {
            applied.sorry = sorry;
        }
        Ok(())
    }

    /// Sets where `vip`'s health checks go (`vip add/set --health-path`), kept with its check
    /// in the applied config (a VIP the file does not name gets an entry there, with no check
    /// until one is applied). Refused for a `nat` VIP: only `dsr-l2` and `ipip` have a path of
    /// their own to probe through.
    pub fn set_health_path(&mut self, vip: &Vip, path: ProbePath) -> Result<(), ApplyError> {
        let info = self.balancer.vip(vip)?;
        if path == ProbePath::Vip && info.options.forwarding == Forwarding::Nat {
            return Err(ApplyError::Refused(format!(
                "health path \"vip\" probes through the dsr-l2 or ipip path; {vip} forwards by \
                 nat: use \"direct\""
            )));
        }
        match self.config.vips.iter_mut().find(|v| v.vip() == *vip) {
            Some(applied) => applied.health.path = path,
            None => {
                let mut applied = VipConfig::from_info(&info);
                applied.health.path = path;
                self.config.vips.push(applied);
            }
        }
        Ok(())
    }

    /// Sets a backend's weight and/or state as an operator asks. A backend that is down for a
    /// failed health check stays down; the state is what it gets back on recovery.
    pub fn set_backend(
        &mut self,
        vip: &crate::balancer::Vip,
        addr: std::net::SocketAddr,
        weight: Option<u32>,
        state: Option<BackendState>,
    ) -> Result<(), crate::balancer::Error> {
        match (self.held.get_mut(&(*vip, addr)), state) {
            (Some(held), Some(state)) => {
                self.balancer.update_backend(vip, addr, weight, None)?;
                *held = state;
            }
            (Some(_), None) => self.balancer.update_backend(vip, addr, weight, None)?,
            (None, state) => self.balancer.update_backend(vip, addr, weight, state)?,
        }
        Ok(())
    }

    /// Takes a backend down when its health check fails and gives it back its state when it
    /// recovers.
    pub fn on_health(&mut self, event: &HealthEvent) -> anyhow::Result<()> {
        let (vip, addr) = event.key;
        let Ok(info) = self.balancer.vip(&vip) else {
            return Ok(());
        };
        let Some(backend) = info.backends.iter().find(|b| b.spec.addr == addr) else {
            return Ok(());
        };
        if event.healthy {
            if let Some(state) = self.held.remove(&event.key) {
                info!(
                    "{addr} of {vip} is healthy again ({}): back to {state}",
                    event.reason
                );
                self.notify(&vip, addr, true);
                self.balancer
                    .update_backend(&vip, addr, None, Some(state))?;
            }
        } else if let std::collections::hash_map::Entry::Vacant(entry) = self.held.entry(event.key)
        {
            warn!(
                "{addr} of {vip} failed its health check ({}): down",
                event.reason
            );
            entry.insert(backend.spec.state);
            self.notify(&vip, addr, false);
            self.balancer
                .update_backend(&vip, addr, None, Some(BackendState::Down))?;
        }
        self.sync_sorry()?;
        self.save()
    }

    /// Puts each VIP's `sorry` backend in the tables (up) while none of its other backends
    /// takes new flows (all down, draining or at weight 0), and drains it once one does: its
    /// tracked flows finish there, new ones go to the others.
    pub fn sync_sorry(&mut self) -> Result<(), crate::balancer::Error> {
        let wanted: Vec<(Vip, std::net::SocketAddr)> = self
            .config
            .vips
            .iter()
            .filter_map(|v| Some((v.vip(), v.sorry?)))
            .collect();
        for (vip, sorry) in wanted {
            let Ok(info) = self.balancer.vip(&vip) else {
                continue;
            };
            let others_up = info.backends.iter().any(|b| {
                b.spec.addr != sorry && b.spec.state == BackendState::Up && b.spec.weight > 0
            });
            let now = info
                .backends
                .iter()
                .find(|b| b.spec.addr == sorry)
                .map(|b| b.spec.state);
            let held = self.held.contains_key(&(vip, sorry));
            match (others_up, now) {
                (false, None) => {
                    info!("{vip}: no backend takes new flows; the sorry backend {sorry} does");
                    self.balancer.add_backend(
                        &vip,
                        crate::balancer::BackendSpec {
                            addr: sorry,
                            weight: 1,
                            state: BackendState::Up,
                        },
                    )?;
                }
                (false, Some(BackendState::Draining)) if !held => {
                    info!("{vip}: no backend takes new flows; the sorry backend {sorry} does");
                    self.balancer
                        .update_backend(&vip, sorry, None, Some(BackendState::Up))?;
                }
                (true, Some(BackendState::Up)) => {
                    info!(
                        "{vip}: a backend takes new flows again; draining the sorry backend \
                         {sorry}"
                    );
                    self.balancer.update_backend(
                        &vip,
                        sorry,
                        None,
                        Some(BackendState::Draining),
                    )?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs the VIP's `notify-up` or `notify-down` command, if it has one, for `backend`: in
    /// the background, with `VIP`, `BACKEND` and `STATE` (`up`, `down`) set, killed after
    /// [`NOTIFY_TIMEOUT`]; its failure is logged.
    fn notify(&self, vip: &Vip, backend: std::net::SocketAddr, up: bool) {
        let Some(applied) = self.config.vip(vip) else {
            return;
        };
        let argv = if up {
            &applied.notify_up
        } else {
            &applied.notify_down
        };
        let Some((program, args)) = argv.split_first() else {
            return;
        };
        let state = if up { "up" } else { "down" };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env("VIP", vip.to_string())
            .env("BACKEND", backend.to_string())
            .env("STATE", state)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let what = format!("notify-{state} of {vip} for {backend}");
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!("{what}: not run, no runtime");
            return;
        };
        runtime.spawn(async move {
            let child = match cmd.spawn() {
                Ok(child) => child,
                Err(err) => return warn!("{what}: starting {err}"),
            };
            match tokio::time::timeout(NOTIFY_TIMEOUT, child.wait_with_output()).await {
                Ok(Ok(out)) if out.status.success() => {}
                Ok(Ok(out)) => warn!(
                    "{what} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Ok(Err(err)) => warn!("{what}: {err}"),
                Err(_) => warn!("{what}: killed after {NOTIFY_TIMEOUT:?}"),
            }
        });
    }

    /// Publishes counted active flows per backend for least-connections.
    /// [`TableFill`] with the tables' capacities, by name (as `/v1/stats` and the metrics
    /// name them).
    pub fn table_fill(&self) -> anyhow::Result<[(&'static str, u64); 5]> {
        let t = self.tables;
        Ok([
            ("conntrack_entries", t.conntrack as u64),
            (
                "conntrack_capacity",
                u64::from(self.pinned.conntrack_capacity()?),
            ),
            ("embryonic_entries", t.embryonic as u64),
            ("embryonic_live", t.embryonic_live as u64),
            (
                "embryonic_capacity",
                u64::from(self.pinned.embryonic_capacity()?),
            ),
        ])
    }

    pub fn publish_connections(
        &mut self,
        active: HashMap<u32, u32>,
        tables: TableFill,
    ) -> anyhow::Result<()> {
        self.tables = tables;
        let ids: Vec<u32> = self
            .balancer
            .vips()
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect();
        for id in ids {
            self.balancer
                .publish_load(id, active.get(&id).copied().unwrap_or(0))?;
        }
        self.active = active;
        Ok(())
    }
}
