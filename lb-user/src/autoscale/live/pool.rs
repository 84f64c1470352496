//! The pool of one autoscaled VIP: bringing backends in (standby or `scale-up`), probing them,
//! draining and releasing them, and what the slow jobs report back.

use std::net::SocketAddr;

use super::*;
use crate::autoscale::capacity;

impl VipAutoscaler {
    pub(super) fn finish_drains<M: Maps>(
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
                done.push((addr, 1, None));
                continue;
            };
            if b.spec.state != BackendState::Draining {
                // An operator took it back: not ours to drain any more.
                done.push((addr, 1, None));
                continue;
            }
            let flows = active.get(&b.id).copied().unwrap_or(0);
            if flows == 0 {
                done.push((addr, b.spec.weight, Some("drained")));
            } else if now.saturating_sub(since) >= drain_timeout {
                done.push((addr, b.spec.weight, Some("drain timeout")));
            }
        }
        for (addr, weight, remove) in done {
            self.draining.remove(&addr);
            let Some(why) = remove else { continue };
            if let Err(err) = balancer.remove_backend(&self.vip, addr) {
                log::warn!("autoscale {}: removing {addr}: {err}", self.vip);
                continue;
            }
            actions.push(format!("remove {addr} ({why})"));
            let origin = self.origins.remove(&addr).unwrap_or(Origin::Config);
            // A weight-0 backend (an operator's) is no capacity: the pool keeps it as weight 1.
            let weight = weight.max(1);
            self.release(WeightedBackend { addr, weight }, origin);
        }
    }

    pub(super) fn expire_provisioning(&mut self, now: u64, actions: &mut Vec<String>) {
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
            self.release(
                WeightedBackend {
                    addr: p.addr,
                    weight: p.weight,
                },
                p.origin,
            );
        }
    }

    /// A backend that will not join: back to the end of the spare list, or to `scale-down`.
    pub(super) fn release(&mut self, backend: WeightedBackend, origin: Origin) {
        match origin {
            Origin::Hook if !self.config.scale_down.is_empty() => self.releases.push(backend.addr),
            Origin::Hook => {}
            Origin::Config | Origin::Standby => self.spare.push_back(backend),
        }
    }

    /// Brings in `wanted` more units of capacity on top of `allocated`: backends being drained
    /// first (newest drain first), then standby ones (in list order), each picked by
    /// [`capacity::fill`] and never past `max`; then the `scale-up` hook for what is missing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scale_out<M: Maps>(
        &mut self,
        now: u64,
        wanted: u32,
        allocated: u32,
        balancer: &mut Balancer<M>,
        info: &VipInfo,
        actions: &mut Vec<String>,
        jobs: &mut Vec<Job>,
    ) {
        let mut room = self.config.max.saturating_sub(allocated);
        let mut wanted = wanted;
        // Cheapest first: take back a backend being drained.
        let mut draining: Vec<_> = self
            .draining
            .iter()
            .map(|(a, since)| (*since, *a))
            .collect();
        draining.sort_by(|a, b| b.cmp(a));
        let weight_of = |addr: SocketAddr| {
            (info.backends.iter())
                .find(|b| b.spec.addr == addr)
                .map_or(1, |b| b.spec.weight)
        };
        let weights: Vec<u32> = draining.iter().map(|(_, a)| weight_of(*a)).collect();
        let (picked, _) = capacity::fill(&weights, wanted, room);
        for i in picked {
            let addr = draining[i].1;
            self.draining.remove(&addr);
            match balancer.update_backend(&self.vip, addr, None, Some(BackendState::Up)) {
                Ok(()) => {
                    actions.push(format!("undrain {addr}"));
                    wanted = wanted.saturating_sub(weights[i]);
                    room = room.saturating_sub(weights[i]);
                }
                Err(err) => log::warn!("autoscale {}: undraining {addr}: {err}", self.vip),
            }
        }
        let weights: Vec<u32> = self.spare.iter().map(|s| s.weight).collect();
        let (picked, added) = capacity::fill(&weights, wanted, room);
        let picked: Vec<WeightedBackend> = picked.into_iter().map(|i| self.spare[i]).collect();
        self.spare.retain(|s| !picked.contains(s));
        for standby in picked {
            let origin = if self.config.standby.iter().any(|s| s.addr == standby.addr) {
                Origin::Standby
            } else {
                Origin::Config
            };
            self.provisioning.push(Provisioning {
                addr: standby.addr,
                weight: standby.weight,
                origin,
                since: now,
                probing: false,
            });
            actions.push(format!("bring in {standby} (standby)"));
        }
        wanted = wanted.saturating_sub(added);
        if wanted > 0 && !self.config.scale_up.is_empty() {
            if self.scale_up.ready(now) {
                // Each run counts for the weight of the hook's last answer.
                let runs = wanted.div_ceil(self.hook_weight.max(1));
                for _ in 0..runs {
                    jobs.push(Job::ScaleUp {
                        vip: self.vip,
                        argv: self.config.scale_up.clone(),
                        timeout: self.config.hook_timeout,
                    });
                    self.scale_up.running += 1;
                    self.scale_up.runs += 1;
                }
                actions.push(format!("run scale-up x{runs}"));
            } else {
                actions.push(format!(
                    "scale-up backing off until {}s",
                    self.scale_up.retry_at_s
                ));
            }
        } else if wanted > 0 {
            actions.push(format!(
                "{wanted} short: no standby backend left that fits, no scale-up hook"
            ));
        }
    }

    /// Lets go of at most `surplus` units of capacity, never more (see [`capacity::trim`]):
    /// backends still provisioning first (newest first: they take no traffic yet), then the
    /// serving backends with the fewest open flows; among equals, those the hook made (they
    /// cost the most to keep), then standby ones, then the config's. A backend of weight 0 (an
    /// operator's choice) is no capacity and stays. Whether any backend was let go.
    pub(super) fn scale_in<M: Maps>(
        &mut self,
        now: u64,
        surplus: u32,
        balancer: &mut Balancer<M>,
        info: &VipInfo,
        active: &HashMap<u32, u32>,
        actions: &mut Vec<String>,
    ) -> bool {
        let rank = |addr: &SocketAddr| match self.origins.get(addr) {
            Some(Origin::Hook) => 0,
            Some(Origin::Standby) => 1,
            Some(Origin::Config) | None => 2,
        };
        let mut serving: Vec<_> = info
            .backends
            .iter()
            .filter(|b| b.spec.state == BackendState::Up)
            .map(|b| {
                let flows = active.get(&b.id).copied().unwrap_or(0);
                (flows, rank(&b.spec.addr), b.spec.addr, b.spec.weight)
            })
            .collect();
        serving.sort();
        let provisioning = self.provisioning.len();
        let weights: Vec<u32> = (self.provisioning.iter().rev().map(|p| p.weight))
            .chain(serving.iter().map(|(_, _, _, w)| *w))
            .collect();
        let (picked, _) = capacity::trim(&weights, surplus);
        if picked.is_empty() {
            actions.push(format!("hold: no backend fits a surplus of {surplus}"));
            return false;
        }
        let (cancel, drain): (Vec<usize>, Vec<usize>) =
            picked.into_iter().partition(|&i| i < provisioning);
        let cancelled: Vec<SocketAddr> = (cancel.iter())
            .map(|&i| self.provisioning[provisioning - 1 - i].addr)
            .collect();
        for addr in cancelled {
            let Some(at) = self.provisioning.iter().position(|p| p.addr == addr) else {
                continue;
            };
            let p = self.provisioning.remove(at);
            actions.push(format!("cancel {}", p.addr));
            let backend = WeightedBackend {
                addr: p.addr,
                weight: p.weight,
            };
            self.release(backend, p.origin);
        }
        for i in drain {
            let addr = serving[i - provisioning].2;
            match balancer.update_backend(&self.vip, addr, None, Some(BackendState::Draining)) {
                Ok(()) => {
                    self.draining.insert(addr, now);
                    actions.push(format!("drain {addr}"));
                }
                Err(err) => log::warn!("autoscale {}: draining {addr}: {err}", self.vip),
            }
        }
        true
    }

    pub(super) fn start_jobs(&mut self, now: u64, health: &HealthCheck, jobs: &mut Vec<Job>) {
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

    /// Takes the outcome of a job at `now`. `claimed` holds the backends other VIPs use (in
    /// their pools or on their standby lists): a `scale-up` answer naming one is refused.
    pub fn on_result<M: Maps>(
        &mut self,
        now: u64,
        result: JobResult,
        balancer: &mut Balancer<M>,
        claimed: &BTreeMap<SocketAddr, Vip>,
    ) {
        match result {
            JobResult::Probe { addr, result } => {
                let Some(at) = self.provisioning.iter().position(|p| p.addr == addr) else {
                    return; // cancelled meanwhile
                };
                match result {
                    Ok(()) => {
                        let p = self.provisioning.remove(at);
                        match balancer.add_backend(&self.vip, BackendSpec::new(addr, p.weight)) {
                            Ok(()) => {
                                log::info!("autoscale {}: {addr} is healthy: added", self.vip);
                                self.origins.insert(addr, p.origin);
                            }
                            Err(err) => {
                                log::warn!("autoscale {}: adding {addr}: {err}", self.vip);
                                let backend = WeightedBackend {
                                    addr,
                                    weight: p.weight,
                                };
                                self.release(backend, p.origin);
                            }
                        }
                    }
                    Err(err) => {
                        log::debug!("autoscale {}: {addr} not healthy yet: {err}", self.vip);
                        self.provisioning[at].probing = false;
                    }
                }
            }
            JobResult::ScaleUp(Ok(backend)) => {
                if let Some(why) = self.refusal(backend.addr, balancer, claimed) {
                    let err = format!("scale-up answered {}, {why}: refused", backend.addr);
                    log::warn!("autoscale {}: {err}", self.vip);
                    self.scale_up.failed(now, err);
                    return;
                }
                self.scale_up.succeeded();
                self.hook_weight = backend.weight;
                log::info!("autoscale {}: scale-up gave {backend}", self.vip);
                self.provisioning.push(Provisioning {
                    addr: backend.addr,
                    weight: backend.weight,
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

    /// Why a `scale-up` answer of `addr` cannot join the pool, if it cannot: another VIP uses
    /// it, or this pool has it already (in the VIP, on its way in, or on standby).
    fn refusal<M: Maps>(
        &self,
        addr: SocketAddr,
        balancer: &Balancer<M>,
        claimed: &BTreeMap<SocketAddr, Vip>,
    ) -> Option<String> {
        if let Some(other) = claimed.get(&addr).filter(|v| **v != self.vip) {
            return Some(format!("a backend of {other}"));
        }
        let in_vip = balancer
            .vip(&self.vip)
            .is_ok_and(|i| i.backends.iter().any(|b| b.spec.addr == addr));
        let on_its_way = self.provisioning.iter().any(|p| p.addr == addr);
        let standby = self.spare.iter().any(|s| s.addr == addr)
            || self.config.standby.iter().any(|s| s.addr == addr);
        (in_vip || on_its_way || standby).then(|| "already in the pool".to_owned())
    }
}
