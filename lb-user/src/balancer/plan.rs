//! A declarative change of the balancer: the plan from the VIPs it has to the VIPs it should
//! have ([`Target`]s), and making it, all or nothing.

use std::{fmt, net::SocketAddr};

use lb_common::maglev::DEFAULT_RING_SIZE;

use super::{BackendSpec, BackendState, Balancer, Error, Forwarding, Vip, VipInfo, VipOptions};
use crate::maps::Maps;

/// One change that [`apply_plan`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new VIP (its backends follow as [`Change::AddBackend`]).
    AddVip {
        /// The VIP.
        vip: Vip,
        /// Its settings.
        options: VipOptions,
    },
    /// A VIP removed, with its backends.
    RemoveVip(Vip),
    /// New settings of a VIP.
    SetVipOptions {
        /// The VIP.
        vip: Vip,
        /// The settings it has now.
        from: VipOptions,
        /// The new settings.
        options: VipOptions,
    },
    /// A new backend of a VIP.
    AddBackend {
        /// The VIP.
        vip: Vip,
        /// The backend.
        spec: BackendSpec,
    },
    /// A backend removed from a VIP.
    RemoveBackend {
        /// The VIP.
        vip: Vip,
        /// The backend.
        addr: SocketAddr,
    },
    /// A backend's new weight and/or state.
    UpdateBackend {
        /// The VIP.
        vip: Vip,
        /// The backend.
        addr: SocketAddr,
        /// `(now, new)` if the weight changes.
        weight: Option<(u32, u32)>,
        /// `(now, new)` if the state changes.
        state: Option<(BackendState, BackendState)>,
    },
    /// Settings the balancer does not hold: a VIP's health check or autoscaling, the
    /// connection table's timeouts.
    Settings {
        /// `health of VIP`, `autoscale of VIP`, `conntrack`.
        subject: String,
        /// One `field now -> new` per field that changes.
        fields: Vec<String>,
    },
}

/// `maglev`, or `maglev, ring-size 31` when the ring size is not the default, then
/// `, forwarding dsr-l2` when the mode is not NAT.
fn describe(options: &VipOptions) -> String {
    let mut out = options.scheduler.to_string();
    if options.ring_size != DEFAULT_RING_SIZE {
        out += &format!(", ring-size {}", options.ring_size);
    }
    let list = |prefixes: &[crate::model::SourcePrefix]| {
        prefixes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !options.allow.is_empty() {
        out += &format!(", allow {}", list(&options.allow));
    }
    if !options.deny.is_empty() {
        out += &format!(", deny {}", list(&options.deny));
    }
    if options.source_rate_limit != 0 {
        out += &format!(", source-rate-limit {}", options.source_rate_limit);
    }
    if let Some(len) = options.source_prefix_len {
        out += &format!(", source-prefix-len {len}");
    }
    if options.forwarding != Forwarding::Nat {
        out += &format!(", forwarding {}", options.forwarding);
    }
    out
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddVip { vip, options } => write!(f, "+ vip {vip} ({})", describe(options)),
            Change::RemoveVip(vip) => write!(f, "- vip {vip}"),
            Change::SetVipOptions { vip, from, options } => {
                write!(
                    f,
                    "~ vip {vip}: {} -> {}",
                    describe(from),
                    describe(options)
                )
            }
            Change::AddBackend { vip, spec } => {
                write!(
                    f,
                    "+ backend {} to {vip} (weight {}",
                    spec.addr, spec.weight
                )?;
                if spec.state != BackendState::Up {
                    write!(f, ", {}", spec.state)?;
                }
                f.write_str(")")
            }
            Change::RemoveBackend { vip, addr } => write!(f, "- backend {addr} from {vip}"),
            Change::UpdateBackend {
                vip,
                addr,
                weight,
                state,
            } => {
                write!(f, "~ backend {addr} of {vip}:")?;
                if let Some((from, to)) = weight {
                    write!(f, " weight {from} -> {to}")?;
                }
                if let Some((from, to)) = state {
                    let comma = if weight.is_some() { "," } else { "" };
                    write!(f, "{comma} state {from} -> {to}")?;
                }
                Ok(())
            }
            Change::Settings { subject, fields } => {
                write!(f, "~ {subject}: {}", fields.join(", "))
            }
        }
    }
}

/// What [`apply`] changes to make the balancer match its targets: VIPs removed first, then,
/// in the targets' order, each VIP's settings and backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The changes, in the order they are made.
    pub changes: Vec<Change>,
}

impl Plan {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// How many changes there are.
    pub fn len(&self) -> usize {
        self.changes.len()
    }
}

impl fmt::Display for Plan {
    /// One line per change, or `no changes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return f.write_str("no changes");
        }
        for (i, change) in self.changes.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{change}")?;
        }
        Ok(())
    }
}

/// One VIP as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub vip: Vip,
    pub options: VipOptions,
    pub backends: Vec<BackendSpec>,
}

impl Target {
    /// The VIPs as the balancer has them.
    pub fn from_infos(infos: &[VipInfo]) -> Vec<Target> {
        infos
            .iter()
            .map(|info| Target {
                vip: info.vip,
                options: info.options.clone(),
                backends: info.backends.iter().map(|b| b.spec).collect(),
            })
            .collect()
    }
}

fn backend_changes(vip: Vip, current: &[BackendSpec], desired: &[BackendSpec]) -> Vec<Change> {
    let mut changes: Vec<Change> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.addr == c.addr))
        .map(|c| Change::RemoveBackend { vip, addr: c.addr })
        .collect();
    for d in desired {
        match current.iter().find(|c| c.addr == d.addr) {
            None => changes.push(Change::AddBackend { vip, spec: *d }),
            Some(c) if c != d => changes.push(Change::UpdateBackend {
                vip,
                addr: d.addr,
                weight: (c.weight != d.weight).then_some((c.weight, d.weight)),
                state: (c.state != d.state).then_some((c.state, d.state)),
            }),
            Some(_) => {}
        }
    }
    changes
}

/// The changes that take a balancer with VIPs `current` (as [`Balancer::vips`] gives them) to
/// `desired`. Backends are compared as sets: their order does not matter.
pub fn plan(current: &[VipInfo], desired: &[Target]) -> Plan {
    let mut changes: Vec<Change> = current
        .iter()
        .filter(|info| !desired.iter().any(|t| t.vip == info.vip))
        .map(|info| Change::RemoveVip(info.vip))
        .collect();
    for target in desired {
        let vip = target.vip;
        match current.iter().find(|info| info.vip == vip) {
            Some(info) => {
                if info.options != target.options {
                    changes.push(Change::SetVipOptions {
                        vip,
                        from: info.options.clone(),
                        options: target.options.clone(),
                    });
                }
                let now: Vec<BackendSpec> = info.backends.iter().map(|b| b.spec).collect();
                changes.extend(backend_changes(vip, &now, &target.backends));
            }
            None => {
                changes.push(Change::AddVip {
                    vip,
                    options: target.options.clone(),
                });
                changes.extend(backend_changes(vip, &[], &target.backends));
            }
        }
    }
    Plan { changes }
}

/// Brings `balancer` to `targets`: removes the VIPs not in it (freeing room first), then sets
/// each VIP's options and backends. Stops at the first error, unless `best_effort`, which goes
/// on and returns the first error at the end.
fn converge<M: Maps>(
    balancer: &mut Balancer<M>,
    targets: &[Target],
    best_effort: bool,
) -> Result<(), Error> {
    let mut first_error = None;
    let mut check = |result: Result<(), Error>| -> Result<(), Error> {
        match result {
            Err(err) if best_effort => {
                log::error!("{err}");
                first_error.get_or_insert(err);
                Ok(())
            }
            other => other,
        }
    };
    let current = balancer.vips();
    for info in &current {
        if !targets.iter().any(|t| t.vip == info.vip) {
            check(balancer.remove_vip(&info.vip))?;
        }
    }
    for target in targets {
        let vip = &target.vip;
        let now: Vec<BackendSpec> = match current.iter().find(|info| info.vip == *vip) {
            // Options and backends in one step: a new forwarding mode may need new backend
            // ports, which neither allows alone.
            Some(info) if info.options != target.options => {
                check(balancer.set_vip(vip, target.options.clone(), target.backends.clone()))?;
                continue;
            }
            Some(info) => info.backends.iter().map(|b| b.spec).collect(),
            None => {
                let added = balancer.add_vip(*vip, target.options.clone());
                let ok = added.is_ok();
                check(added)?;
                if !ok {
                    continue;
                }
                Vec::new()
            }
        };
        if !backend_changes(*vip, &now, &target.backends).is_empty() {
            check(balancer.set_backends(vip, target.backends.clone()))?;
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Makes `balancer` match `desired` exactly and returns what changed. Each VIP switches to its
/// new backends in one step ([`Balancer::set_backends`]: backends it keeps keep their ids and
/// flows).
///
/// All or nothing: if a change fails (no room in the tables, say), the VIPs are put back as
/// they were before the error is returned. A VIP removed and put back that way gets new ids
/// (its tracked flows move). If even that fails, it is logged and the balancer is left between
/// the two.
pub fn apply<M: Maps>(balancer: &mut Balancer<M>, desired: &[Target]) -> Result<Plan, Error> {
    let before = balancer.vips();
    let plan = plan(&before, desired);
    if plan.is_empty() {
        return Ok(plan);
    }
    if let Err(err) = converge(balancer, desired, false) {
        log::warn!("applying the config failed ({err}); rolling back");
        if let Err(rollback) = converge(balancer, &Target::from_infos(&before), true) {
            log::error!(
                "rolling back failed too ({rollback}): the balancer is between the old and the \
                 new config"
            );
        }
        return Err(err);
    }
    Ok(plan)
}
