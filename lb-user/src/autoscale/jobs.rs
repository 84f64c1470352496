//! The slow work of autoscaling, run without the agent's lock: probing a new backend, and the
//! `scale-up` and `scale-down` hooks with their backoff.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::config::{WeightedBackend, WeightedError};
use crate::{balancer::Vip, health::CheckKind};

/// Longest wait between two attempts of a failing hook.
pub const MAX_BACKOFF_S: u64 = 60;

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
    ScaleUp(Result<WeightedBackend, String>),
    ScaleDown {
        addr: SocketAddr,
        result: Result<(), String>,
    },
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
    pub(super) fn ready(&self, now: u64) -> bool {
        now >= self.retry_at_s
    }

    pub(super) fn succeeded(&mut self) {
        self.running = self.running.saturating_sub(1);
        self.consecutive = 0;
        self.last_error = None;
    }

    pub(super) fn failed(&mut self, now: u64, error: String) {
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

/// The backend a `scale-up` hook printed: the first non-empty line, `ADDR:PORT`, or a bare
/// address that takes the VIP's port, either with `@WEIGHT` (1..=10000; 1 without).
pub fn parse_hook_address(stdout: &str, vip_port: u16) -> Result<WeightedBackend, String> {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("printed no address")?;
    WeightedBackend::parse_with(line, |bare| {
        bare.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, vip_port))
    })
    .map_err(|err| match err {
        WeightedError::Address(_) => format!("printed {line:?}, not ADDR:PORT[@WEIGHT]"),
        WeightedError::Weight(why) => format!("printed {line:?}: {why}"),
    })
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
