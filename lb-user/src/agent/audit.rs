//! The audit trail: every accepted change logged at info, one line each, with what changed
//! and where it came from (`change source=api + vip 198.19.0.1:80/tcp (maglev, nat)`). The
//! lines are the plan that takes the balancer from before the change to after it, so they read
//! as `xdplb apply --dry-run` prints plans, whatever made the change. Health transitions are
//! not changes an operator made; they are logged on their own (`failed its health check`).

use std::fmt;

use crate::{
    balancer::{VipInfo, plan::Target},
    config::{self, Change, Config},
};

/// Where a change came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The API (the CLI's commands).
    Api,
    /// `xdplb apply` (`POST /v1/apply`).
    Apply,
    /// The config file, reloaded on SIGHUP.
    Reload,
    /// The config file, applied at start.
    Start,
    /// An autoscaler.
    Autoscale,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Api => "api",
            Source::Apply => "apply",
            Source::Reload => "reload",
            Source::Start => "start",
            Source::Autoscale => "autoscale",
        })
    }
}

/// What the audit trail compares: the VIPs and the config applied, before a change.
pub struct Before {
    vips: Vec<VipInfo>,
    config: Config,
}

impl Before {
    pub fn new(vips: Vec<VipInfo>, config: &Config) -> Self {
        Self {
            vips,
            config: config.clone(),
        }
    }
}

/// The changes from `before` to the VIPs `after` and the config `config`.
pub fn changes(before: &Before, after: &[VipInfo], config: &Config) -> Vec<Change> {
    let mut changes = crate::balancer::plan::plan(&before.vips, &Target::from_infos(after)).changes;
    changes.extend(config::settings_changes(&before.config, config));
    changes
}

/// The audit line of `change` from `source`.
pub fn line(source: Source, change: &impl fmt::Display) -> String {
    format!("change source={source} {change}")
}

/// Logs each of `changes` from `source`, one line each.
pub fn log(source: Source, changes: &[Change]) {
    for change in changes {
        log::info!("{}", line(source, change));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::{BackendInfo, BackendSpec, BackendState, VipOptions};

    fn info(backends: &[(&str, BackendState)]) -> VipInfo {
        VipInfo {
            vip: "198.19.0.1:80/tcp".parse().unwrap(),
            id: 1,
            options: VipOptions::default(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (addr, state))| {
                    let mut spec = BackendSpec::new(addr.parse().unwrap(), 1);
                    spec.state = *state;
                    BackendInfo { spec, id: i as u32 }
                })
                .collect(),
            table_digest: None,
        }
    }

    #[test]
    fn a_change_is_the_plan_from_before_to_after_with_its_source() {
        let before = Before::new(vec![], &Config::default());
        let after = [info(&[("10.1.0.2:8080", BackendState::Up)])];
        let lines: Vec<String> = changes(&before, &after, &Config::default())
            .iter()
            .map(|c| line(Source::Api, c))
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("change source=api + vip 198.19.0.1:80/tcp"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("change source=api + backend 10.1.0.2:8080 to 198.19.0.1:80/tcp"),
            "{lines:?}"
        );

        let before = Before::new(after.to_vec(), &Config::default());
        let drained = [info(&[("10.1.0.2:8080", BackendState::Draining)])];
        let lines: Vec<String> = changes(&before, &drained, &Config::default())
            .iter()
            .map(|c| line(Source::Autoscale, c))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("change source=autoscale ~ backend 10.1.0.2:8080"),
            "{lines:?}"
        );
        assert!(lines[0].contains("draining"), "{lines:?}");

        assert!(changes(&before, &after, &Config::default()).is_empty());
    }
}
