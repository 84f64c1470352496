//! The pool of one autoscaled VIP: bringing backends in (standby or `scale-up`), probing them,
//! draining and releasing them, and what the slow jobs report back.

use std::net::SocketAddr;

use super::*;

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
            self.release(p.addr, p.origin);
        }
    }

    /// A backend that will not join: back to the end of the spare list, or to `scale-down`.
    pub(super) fn release(&mut self, addr: SocketAddr, origin: Origin) {
        match origin {
            Origin::Hook if !self.config.scale_down.is_empty() => self.releases.push(addr),
            Origin::Hook => {}
            Origin::Config | Origin::Standby => self.spare.push_back(addr),
        }
    }

    pub(super) fn scale_out<M: Maps>(
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

    pub(super) fn scale_in<M: Maps>(
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
}
