//! Cluster mode: the desired config of several gateways lives in etcd ([`crate::cluster::store`] has
//! the key layout). Each agent loads it, watches it and applies every change; registers itself
//! under `gateways/` with a lease; runs for the autoscaler leadership of each autoscaled VIP;
//! and writes the operator's changes (and, when it leads, its autoscalers' decisions) to etcd.
//! While etcd is unreachable the agent keeps serving what it last applied and refuses changes.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use log::{error, info, warn};

use super::{Agent, Shared};
use crate::{
    balancer::Vip,
    cluster::store::{
        self as cluster, CHANGED, Entry, Expect, GATEWAYS, LEADERS, Op, Scope, StoreView, VIPS,
        Writes,
    },
    config::{ClusterConfig, Config, VipConfig},
};

/// The lease of a gateway's keys (its report, the leaderships it holds): a gateway that dies
/// is gone from `gateways/` and loses its leaderships this long after its last keepalive.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the lease is kept alive.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(500);
/// How often a gateway runs for the leaderships it lacks.
const ELECT_EVERY: Duration = Duration::from_millis(100);
/// Longest one request to etcd may take before the store counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Changes arriving this close together are applied as one.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// How long a write waits for this agent to apply it.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent knows of the cluster store.
pub struct ClusterState {
    pub config: ClusterConfig,
    /// This gateway's name.
    pub gateway: String,
    client: Option<Client>,
    /// The keys under `PREFIX/vips/` as last read (writes are guarded by their revisions).
    pub store: StoreView,
    /// The revision of the store's config this agent runs.
    pub applied_revision: i64,
    /// Since when etcd has not answered (`None`: it answers).
    pub down_since: Option<SystemTime>,
    /// Why the store's config at the last revision read is not what this agent runs.
    pub refused: Option<String>,
    /// Who runs each autoscaled VIP's autoscaler, as last seen.
    pub leaders: BTreeMap<Vip, String>,
    /// The file's VIPs, to write into an empty store once.
    seed: Option<Vec<VipConfig>>,
    applied: tokio::sync::watch::Sender<i64>,
    /// The lease this gateway's report and leaderships are bound to, while it holds one.
    lease: Option<i64>,
}

/// Whether etcd answers, and what this agent applied (`status`, the metrics).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreStatus {
    pub gateway: String,
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub up: bool,
    /// Unix seconds since which etcd has not answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<u64>,
    pub applied_revision: i64,
    /// Why the store's config is not what this agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// What a gateway writes at `PREFIX/gateways/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayReport {
    pub name: String,
    pub applied_revision: i64,
    /// The VIP addresses this gateway announces to its routers now (`[bgp]`).
    #[serde(default)]
    pub announced: Vec<String>,
}

/// `xdplb cluster status`: the gateways, what each applied, the autoscaler leaders.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterView {
    /// This agent's view of the store.
    pub store: StoreStatus,
    /// etcd's revision now (0 if it did not answer).
    pub revision: i64,
    /// The revision of the last change of the config in the store.
    pub config_revision: i64,
    pub gateways: Vec<GatewayReport>,
    pub leaders: Vec<LeaderView>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaderView {
    pub vip: String,
    pub gateway: String,
}

/// Why a write did not go through.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "the cluster store (etcd at {0}) is unreachable: changes are refused until it is back \
         (the gateways keep serving their last config)"
    )]
    Unreachable(String),
    #[error(
        "the cluster store kept changing under this change (other gateways' writes): nothing \
         was written; try again"
    )]
    Conflict,
    #[error("written to the cluster store at revision {0}, but not applied here within {1:?}: {2}")]
    NotApplied(i64, Duration, String),
}

impl ClusterState {
    pub fn new(config: ClusterConfig, seed: Vec<VipConfig>) -> Self {
        Self {
            gateway: config.gateway(),
            config,
            client: None,
            store: StoreView::default(),
            applied_revision: 0,
            down_since: Some(SystemTime::now()),
            refused: None,
            leaders: BTreeMap::new(),
            seed: (!seed.is_empty()).then_some(seed),
            applied: tokio::sync::watch::channel(0).0,
            lease: None,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.config.etcd_prefix
    }

    pub fn status(&self) -> StoreStatus {
        StoreStatus {
            gateway: self.gateway.clone(),
            endpoints: self.config.etcd_endpoints.clone(),
            prefix: self.config.etcd_prefix.clone(),
            up: self.down_since.is_none(),
            unreachable_since: self.down_since.map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
            applied_revision: self.applied_revision,
            refused: self.refused.clone(),
        }
    }

    /// Whether this gateway runs `vip`'s autoscaler.
    pub fn leads(&self, vip: &Vip) -> bool {
        self.leaders.get(vip) == Some(&self.gateway)
    }

    /// A handle for waiting until a revision is applied.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<i64> {
        self.applied.subscribe()
    }

    fn unreachable(&self) -> WriteError {
        WriteError::Unreachable(self.config.etcd_endpoints.join(","))
    }

    /// Writes are refused while the store does not answer.
    pub fn check_up(&self) -> Result<(), WriteError> {
        match self.down_since {
            None => Ok(()),
            Some(_) => Err(self.unreachable()),
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Agent> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on the cluster state (cluster mode only).
fn with_cluster<T>(shared: &Shared, f: impl FnOnce(&mut ClusterState) -> T) -> Option<T> {
    lock(shared).cluster.as_mut().map(f)
}

async fn timed<T, E: std::error::Error + Send + Sync + 'static>(
    what: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, future)
        .await
        .with_context(|| format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| what.to_owned())
}

/// The etcd client, connected on first use.
async fn client(shared: &Shared) -> anyhow::Result<Client> {
    let (existing, endpoints) = with_cluster(shared, |c| {
        (c.client.clone(), c.config.etcd_endpoints.clone())
    })
    .context("not in cluster mode")?;
    if let Some(client) = existing {
        return Ok(client);
    }
    let options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), REQUEST_TIMEOUT);
    let client = timed(
        "connecting to etcd",
        Client::connect(endpoints, Some(options)),
    )
    .await?;
    with_cluster(shared, |c| c.client = Some(client.clone()));
    Ok(client)
}

/// Records that etcd did not answer.
fn mark_down(shared: &Shared, err: &anyhow::Error) {
    with_cluster(shared, |c| {
        if c.down_since.is_none() {
            error!(
                "the cluster store is unreachable ({err:#}): serving the last config applied \
                 (revision {}), refusing changes",
                c.applied_revision
            );
            c.down_since = Some(SystemTime::now());
            c.leaders.clear();
        }
    });
}

/// Follows the store until the runtime stops: a full read and apply, then a watch from that
/// revision; after an error (etcd unreachable, the watch cancelled) the same again.
pub async fn follow_store(shared: Shared) {
    loop {
        if let Err(err) = follow_once(&shared).await {
            mark_down(&shared, &err);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn follow_once(shared: &Shared) -> anyhow::Result<()> {
    let mut client = client(shared).await?;
    let prefix = with_cluster(shared, |c| c.prefix().to_owned()).unwrap_or_default();
    let vips = format!("{prefix}{VIPS}");
    let revision = resync(shared, &mut client, &vips).await?;
    let mut stream = timed(
        "watching the store",
        client.watch(
            vips.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        ),
    )
    .await?;
    loop {
        let message = tokio::select! {
            message = stream.message() => message.context("watching the store")?,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                // The lease task saw etcd go away: read everything again once it is back.
                if with_cluster(shared, |c| c.down_since.is_some()).unwrap_or(true) {
                    anyhow::bail!("the store went away");
                }
                continue;
            }
        };
        let message = message.context("the watch ended")?;
        if message.canceled() {
            anyhow::bail!(
                "the watch was cancelled (compacted at {}): {}",
                message.compact_revision(),
                message.cancel_reason()
            );
        }
        let applied = with_cluster(shared, |c| c.applied_revision).unwrap_or(0);
        let news = message
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .any(|kv| kv.mod_revision() > applied);
        if news {
            // A batch of writes (an `apply -f`, an autoscaler's step) lands as one.
            tokio::time::sleep(DEBOUNCE).await;
            resync(shared, &mut client, &vips).await?;
        }
    }
}

/// Reads every key of the config, writes the file's VIPs into an empty store (once), and
/// applies what the store holds. Returns the revision read at.
async fn resync(shared: &Shared, client: &mut Client, vips: &str) -> anyhow::Result<i64> {
    let (revision, mut store) = read_store(client, vips).await?;
    let seed = with_cluster(shared, |c| c.seed.take()).flatten();
    if let Some(seed) = seed
        && store.keys.is_empty()
    {
        let prefix = with_cluster(shared, |c| c.prefix().to_owned()).unwrap_or_default();
        let writes = cluster::diff(&prefix, &store, &seed, &Scope::All);
        let gateway = with_cluster(shared, |c| c.gateway.clone()).unwrap_or_default();
        match commit(client, &prefix, &gateway, &writes).await? {
            Some(rev) => {
                info!("the cluster store was empty: wrote the config file's VIPs (revision {rev})")
            }
            None => info!("the cluster store was seeded by another gateway meanwhile"),
        }
        store = read_store(client, vips).await?.1;
    }
    let shared2 = shared.clone();
    tokio::task::spawn_blocking(move || apply_store(&mut lock(&shared2), store))
        .await
        .context("applying the store's config")?;
    Ok(revision)
}

async fn read_store(client: &mut Client, vips: &str) -> anyhow::Result<(i64, StoreView)> {
    let response = timed(
        "reading the store",
        client.get(vips, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let keys = response
        .kvs()
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key_str().ok()?.to_owned(),
                Entry {
                    mod_revision: kv.mod_revision(),
                    value: kv.value().to_vec(),
                },
            ))
        })
        .collect();
    Ok((revision, StoreView { keys }))
}

/// Makes the agent run what `store` holds: its VIPs with this gateway's own connection table
/// settings and health holds.
pub fn apply_store(agent: &mut Agent, store: StoreView) {
    let Some(cluster) = agent.cluster.as_mut() else {
        return;
    };
    let revision = store.revision();
    let (vips, problems) = cluster::vips_from_store(cluster.prefix(), &store);
    for problem in &problems {
        warn!("cluster store: left out {problem}");
    }
    cluster.store = store;
    if cluster.down_since.take().is_some() {
        info!("the cluster store answers (revision {revision})");
    }
    let desired = Config {
        conntrack: agent.config.conntrack.clone(),
        ipip: agent.config.ipip.clone(),
        cluster: agent.config.cluster.clone(),
        bgp: agent.config.bgp.clone(),
        vips,
    };
    let result = agent.apply_config(desired);
    let cluster = agent.cluster.as_mut().expect("cluster mode");
    match result {
        Ok(plan) => {
            for change in &plan.changes {
                info!("cluster store revision {revision}: {change}");
            }
            cluster.applied_revision = revision;
            cluster.refused = None;
            cluster.applied.send_replace(revision);
        }
        Err(err) => {
            let message = format!("{err}");
            if cluster.refused.as_ref() != Some(&message) {
                error!(
                    "cluster store revision {revision} refused here, kept the running config: {message}"
                );
            }
            cluster.refused = Some(message);
        }
    }
}

/// Writes `writes` in one transaction that goes through only if every key read is as it
/// was; bumps [`CHANGED`]. Returns the revision written at, or `None` on a conflict.
pub async fn commit(
    client: &mut Client,
    prefix: &str,
    gateway: &str,
    writes: &Writes,
) -> anyhow::Result<Option<i64>> {
    let compares: Vec<Compare> = writes
        .expect
        .iter()
        .map(|(key, expect)| match expect {
            Expect::Absent => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Expect::ModRevision(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, *r),
        })
        .collect();
    let mut ops: Vec<TxnOp> = writes
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value } => TxnOp::put(key.clone(), value.clone(), None),
            Op::Delete { key } => TxnOp::delete(key.clone(), None),
            Op::DeletePrefix { prefix } => {
                TxnOp::delete(prefix.clone(), Some(DeleteOptions::new().with_prefix()))
            }
        })
        .collect();
    ops.push(TxnOp::put(format!("{prefix}{CHANGED}"), gateway, None));
    let response = timed(
        "writing to the store",
        client.txn(Txn::new().when(compares).and_then(ops)),
    )
    .await?;
    Ok(response
        .succeeded()
        .then(|| response.header().map_or(0, |h| h.revision())))
}

/// Writes what `plan` computes from the store as this agent last read it (the desired VIPs
/// and the writes to get there), retrying on conflicts after the agent caught up; waits until
/// this agent applied the write. `plan` runs with the agent locked.
pub async fn write<E: From<anyhow::Error>>(
    shared: &Shared,
    mut plan: impl FnMut(&mut Agent) -> Result<Writes, E>,
) -> Result<Result<(), WriteError>, E> {
    for _ in 0..8 {
        let (writes, mut applied, prefix, gateway) = {
            let mut agent = lock(shared);
            let cluster = agent
                .cluster
                .as_ref()
                .context("not in cluster mode")
                .map_err(E::from)?;
            if let Err(err) = cluster.check_up() {
                return Ok(Err(err));
            }
            let (applied, prefix, gateway) = (
                cluster.applied(),
                cluster.prefix().to_owned(),
                cluster.gateway.clone(),
            );
            (plan(&mut agent)?, applied, prefix, gateway)
        };
        if writes.is_empty() {
            return Ok(Ok(()));
        }
        let unreachable = || lock(shared).cluster.as_ref().map(ClusterState::unreachable);
        let mut client = match client(shared).await {
            Ok(client) => client,
            Err(err) => {
                mark_down(shared, &err);
                return Ok(Err(unreachable()
                    .context("not in cluster mode")
                    .map_err(E::from)?));
            }
        };
        match commit(&mut client, &prefix, &gateway, &writes).await {
            Ok(Some(revision)) => {
                let waited = tokio::time::timeout(
                    APPLY_TIMEOUT,
                    applied.wait_for(|applied| *applied >= revision),
                )
                .await;
                return Ok(match waited {
                    Ok(Ok(_)) => Ok(()),
                    _ => Err(WriteError::NotApplied(
                        revision,
                        APPLY_TIMEOUT,
                        with_cluster(shared, |c| c.refused.clone())
                            .flatten()
                            .unwrap_or_else(|| "the agent did not catch up".into()),
                    )),
                });
            }
            Ok(None) => {
                // Someone else wrote first: wait for the watch to bring it, then plan again.
                let seen = *applied.borrow_and_update();
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    applied.wait_for(|applied| *applied > seen),
                )
                .await;
            }
            Err(err) => {
                mark_down(shared, &err);
                return Ok(Err(unreachable()
                    .context("not in cluster mode")
                    .map_err(E::from)?));
            }
        }
    }
    Ok(Err(WriteError::Conflict))
}

/// Keeps this gateway's lease alive, its report under `gateways/` current, and runs for the
/// autoscaler leadership of every autoscaled VIP, until the runtime stops.
pub async fn keep_lease(shared: Shared) {
    loop {
        if let Err(err) = lease_once(&shared).await {
            mark_down(&shared, &err);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Gives up this gateway's lease as the agent stops (after [`keep_lease`] was stopped), so that
/// its report goes and another gateway takes its autoscaler leaderships at once rather than when
/// the lease expires. Bounded by the request timeout: an unreachable etcd lets the lease expire.
pub async fn release_lease(shared: &Shared) {
    let Some(Some(lease)) = with_cluster(shared, |c| c.lease.take()) else {
        return;
    };
    let revoked = async {
        let mut client = client(shared).await?;
        timed("giving up the lease", client.lease_revoke(lease)).await
    };
    match revoked.await {
        Ok(_) => info!("gave up the cluster lease: leaderships released"),
        Err(err) => warn!("{err:#}; the lease expires in {LEASE_TTL:?}"),
    }
}

async fn lease_once(shared: &Shared) -> anyhow::Result<()> {
    let mut client = client(shared).await?;
    let ttl = i64::try_from(LEASE_TTL.as_secs()).unwrap_or(5);
    let lease = timed("granting a lease", client.lease_grant(ttl, None))
        .await?
        .id();
    with_cluster(shared, |c| c.lease = Some(lease));
    let (mut keeper, mut answers) =
        timed("keeping the lease alive", client.lease_keep_alive(lease)).await?;
    let (prefix, gateway) =
        with_cluster(shared, |c| (c.prefix().to_owned(), c.gateway.clone())).unwrap_or_default();
    let mut kept = Instant::now();
    let mut reported = None;
    loop {
        if kept.elapsed() >= KEEPALIVE_EVERY {
            timed("keeping the lease alive", keeper.keep_alive()).await?;
            let answer = timed("keeping the lease alive", answers.message())
                .await?
                .context("the lease's keepalive stream ended")?;
            if answer.ttl() <= 0 {
                anyhow::bail!("the lease expired");
            }
            kept = Instant::now();
        }
        let (report, autoscaled) = {
            let agent = lock(shared);
            let applied = agent.cluster.as_ref().map_or(0, |c| c.applied_revision);
            let autoscaled: BTreeSet<Vip> = agent
                .config
                .vips
                .iter()
                .filter(|v| v.autoscale.is_some())
                .map(VipConfig::vip)
                .collect();
            (
                GatewayReport {
                    name: gateway.clone(),
                    applied_revision: applied,
                    announced: agent.bgp.as_ref().map_or_else(Vec::new, |bgp| {
                        bgp.announced.iter().map(ToString::to_string).collect()
                    }),
                },
                autoscaled,
            )
        };
        let value = serde_json::to_vec(&report)?;
        if reported.as_ref() != Some(&value) {
            timed(
                "registering the gateway",
                client.put(
                    format!("{prefix}{GATEWAYS}{gateway}"),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
            )
            .await?;
            reported = Some(value);
        }
        let mut leaders = BTreeMap::new();
        for vip in autoscaled {
            let key = cluster::leader_key(&prefix, &vip);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    gateway.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let response = timed("running for leader", client.txn(txn)).await?;
            let leader = if response.succeeded() {
                gateway.clone()
            } else {
                response
                    .op_responses()
                    .into_iter()
                    .find_map(|r| match r {
                        TxnOpResponse::Get(get) => get
                            .kvs()
                            .first()
                            .and_then(|kv| kv.value_str().ok().map(str::to_owned)),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            leaders.insert(vip, leader);
        }
        with_cluster(shared, |c| {
            for (vip, leader) in &leaders {
                if c.leaders.get(vip) != Some(leader) {
                    if *leader == c.gateway {
                        info!("leading the autoscaler of {vip}");
                    } else {
                        info!("{leader} leads the autoscaler of {vip}");
                    }
                }
            }
            c.leaders = leaders;
        });
        tokio::time::sleep(ELECT_EVERY).await;
    }
}

/// Writes the pools of the VIPs whose autoscaler this gateway leads, as its autoscalers left
/// them, to the store (the other gateways follow). A conflict or an unreachable store is
/// logged: the next step writes again.
pub async fn publish_pools(shared: &Shared) {
    let leading = with_cluster(shared, |c| {
        c.leaders
            .iter()
            .filter(|(_, leader)| **leader == c.gateway)
            .map(|(vip, _)| *vip)
            .collect::<BTreeSet<Vip>>()
    });
    let Some(leading) = leading.filter(|l| !l.is_empty()) else {
        return;
    };
    let scope = Scope::Backends(leading);
    let result = write(shared, |agent| {
        let cluster = agent.cluster.as_ref().context("not in cluster mode")?;
        anyhow::Ok(cluster::diff(
            cluster.prefix(),
            &cluster.store,
            &agent.running_config().vips,
            &scope,
        ))
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!("writing the autoscaled pools to the cluster store: {err}"),
        Err(err) => warn!("writing the autoscaled pools to the cluster store: {err:#}"),
    }
}

/// What `xdplb cluster status` shows, read from etcd now (only this agent's view if etcd does
/// not answer).
pub async fn view(shared: &Shared) -> anyhow::Result<ClusterView> {
    let (status, prefix, config_revision) = with_cluster(shared, |c| {
        (c.status(), c.prefix().to_owned(), c.store.revision())
    })
    .context("this agent is not in cluster mode ([cluster] etcd-endpoints is not set)")?;
    let mut view = ClusterView {
        store: status,
        revision: 0,
        config_revision,
        gateways: Vec::new(),
        leaders: Vec::new(),
    };
    let read = async {
        let mut client = client(shared).await?;
        let gateways = timed(
            "reading the gateways",
            client.get(
                format!("{prefix}{GATEWAYS}"),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await?;
        let leaders = timed(
            "reading the leaders",
            client.get(
                format!("{prefix}{LEADERS}"),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await?;
        anyhow::Ok((gateways, leaders))
    };
    match read.await {
        Ok((gateways, leaders)) => {
            view.revision = leaders.header().map_or(0, |h| h.revision());
            view.gateways = gateways
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect();
            let leader_prefix = format!("{prefix}{LEADERS}");
            view.leaders = leaders
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let segment = kv.key_str().ok()?.strip_prefix(&leader_prefix)?;
                    Some(LeaderView {
                        vip: cluster::vip_of_segment(segment)?.to_string(),
                        gateway: kv.value_str().ok()?.to_owned(),
                    })
                })
                .collect();
        }
        Err(err) => mark_down(shared, &err),
    }
    Ok(view)
}
