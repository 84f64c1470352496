//! The `[cluster]` table: where a gateway of several finds the shared desired config (etcd)
//! and the name it goes by there.
//!
//! ```toml
//! [cluster]
//! etcd-endpoints = ["http://10.0.0.9:2379"] # cluster mode when not empty
//! etcd-prefix = "/xdplb/"                   # every key of the cluster under it
//! gateway-name = "gw1"                      # default: the host name
//! ```

use serde::{Deserialize, Serialize};

use super::semantic::Errors;

/// Default `etcd-prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/xdplb/";

/// `[cluster]`: empty endpoints (the default) is a gateway on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// etcd's client URLs (`http://ADDR:PORT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_endpoints: Vec<String>,
    /// The key prefix every key of this cluster lives under; starts and ends with `/`.
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    /// This gateway's name in `PREFIX/gateways/` and as autoscaler leader; default: the host
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_name: Option<String>,
}

fn default_prefix() -> String {
    DEFAULT_ETCD_PREFIX.to_owned()
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            etcd_endpoints: Vec::new(),
            etcd_prefix: default_prefix(),
            gateway_name: None,
        }
    }
}

impl ClusterConfig {
    /// Cluster mode: the desired config lives in etcd.
    pub fn enabled(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// `gateway-name`, else the host name.
    pub fn gateway(&self) -> String {
        self.gateway_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "xdplb".to_owned())
        })
    }

    /// Adds what is wrong with it to `errors`.
    pub(super) fn check(&self, errors: &mut Errors) {
        for (i, url) in self.etcd_endpoints.iter().enumerate() {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                errors.add(
                    format!("cluster.etcd-endpoints[{i}]"),
                    format!("{url:?} is not an http://HOST:PORT URL"),
                );
            }
        }
        let p = &self.etcd_prefix;
        if !p.starts_with('/') || !p.ends_with('/') {
            errors.add(
                "cluster.etcd-prefix",
                format!("{p:?} must start and end with '/'"),
            );
        }
        if let Some(name) = &self.gateway_name
            && (name.is_empty() || name.contains('/') || name.len() > 64)
        {
            errors.add(
                "cluster.gateway-name",
                format!("{name:?} must be 1 to 64 characters without '/'"),
            );
        }
    }
}
