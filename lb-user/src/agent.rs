//! The running agent: the balancer over the pinned maps, its state file, and the periodic work
//! (connection counts for least-connections).

use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::conntrack::Timeouts;
use log::{info, warn};

use crate::{
    balancer::{Balancer, Snapshot},
    maps::BpfMaps,
    pin::Pinned,
};

/// Default state file.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xdplb/state.json";

/// What the agent saves after every accepted change, and restores from at start.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SavedState {
    pub snapshot: Snapshot,
}

/// The agent's state, shared by the API handlers and the periodic tasks.
pub struct Agent {
    pub balancer: Balancer<BpfMaps>,
    pub pinned: Pinned,
    pub state_file: PathBuf,
    pub started: Instant,
    pub timeouts: Timeouts,
    /// Active (open, unexpired) tracked flows per backend id, as last counted.
    pub active: HashMap<u32, u32>,
}

pub type Shared = Arc<Mutex<Agent>>;

impl Agent {
    /// Writes the state file atomically (a temporary file renamed over it).
    pub fn save(&self) -> anyhow::Result<()> {
        let state = SavedState {
            snapshot: self.balancer.snapshot(),
        };
        write_atomically(&self.state_file, &serde_json::to_vec_pretty(&state)?)
    }

    /// Counts active flows per backend from the connection table and publishes them for
    /// least-connections.
    pub fn count_connections(&mut self) -> anyhow::Result<()> {
        let now = monotonic_ns()?;
        let (active, _walked) = self.balancer.maps().active_flows(now, &self.timeouts);
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

/// Reads a state file; `None` if there is none.
pub fn load_state(path: &Path) -> anyhow::Result<Option<SavedState>> {
    match fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("reading state file {}", path.display())
            })?))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading state file {}", path.display())),
    }
}

/// Writes `bytes` to `path` so that readers see the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the data path's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> anyhow::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// Counts connections every `period` until the runtime stops.
pub async fn count_connections_every(agent: Shared, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        let agent = Arc::clone(&agent);
        let result = tokio::task::spawn_blocking(move || {
            agent.lock().expect("agent lock").count_connections()
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!("counting connections: {err:#}"),
            Err(err) => warn!("counting connections: {err}"),
        }
    }
}

/// Logs what the agent restored or built at start.
pub fn log_vips(balancer: &Balancer<BpfMaps>) {
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
