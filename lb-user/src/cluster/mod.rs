//! Several gateways behind one ECMP router: each announces its VIPs by BGP (`bgp`), and they
//! schedule alike (the `[cluster]` hash seed, `maglev`/`source-hash` tables that depend only
//! on the backends' addresses).

pub mod bgp;
