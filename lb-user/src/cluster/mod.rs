//! Several gateways behind one ECMP router: each announces its VIPs by BGP (`bgp`), and they
//! schedule alike (the `[cluster]` hash seed, `maglev`/`source-hash` tables that depend only
//! on the backends' addresses), and share one desired config in etcd (`store`: the key
//! layout; the agent's side is `crate::agent::cluster`).

pub mod bgp;
pub mod store;
