//! The benchmarks' results: what the benchmark (`tests/benches/xdplb`) writes to
//! `target/bench/results.json` and `cargo xtask bench` reads back for its table and charts.
//! One type for both, so that a field renamed on one side fails to compile on the other
//! instead of printing NaN.
//!
//! Times are in ns (`ns_*`) or ms (`*_ms*`); `*_min` and `*_median` are over the runs (`runs`).
//! A group left out with `--only` is `None` (or empty).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One run of the benchmarks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// A `--quick` run: fewer calls per figure, smaller tables.
    pub quick: bool,
    /// The CPU the benchmark thread ran on.
    pub cpu: usize,
    /// The kernel's release.
    pub kernel: String,
    pub machine: Machine,
    /// How the per-packet figures are measured.
    pub method: String,
    /// The groups run (`--only`); empty: all.
    pub only: String,
    pub per_packet: Vec<PacketRow>,
    pub scaling: Vec<ScalingRow>,
    pub scaling_lines: Vec<ScalingLine>,
    pub maglev: Option<Vec<MaglevRow>>,
    pub control_plane: Option<ControlPlane>,
    pub breakdown: Option<Breakdown>,
    pub memory: Vec<MemoryRow>,
    pub end_to_end: Option<EndToEnd>,
    pub tcp: Option<Tcp>,
    /// Wall time of the whole run.
    pub seconds: f64,
}

/// The machine the benchmarks ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    /// `/proc/loadavg`'s three averages when the run started.
    pub loadavg_at_start: String,
}

/// A case of the per-packet table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PacketRow {
    pub name: String,
    pub what: String,
    /// `repeat=1` (one call per packet) or `repeat=N` (a hot loop).
    pub method: String,
    /// The outcome counters the case's packet is counted under.
    pub outcome: String,
    pub ns_min: f64,
    pub ns_median: f64,
    /// `ns_min` over the `XDP_TX` baseline's.
    pub ratio_to_tx: f64,
    pub runs: Vec<f64>,
}

/// A case of the scaling table: one point `x` of a line (backends, VIPs, flows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingRow {
    pub line: String,
    pub x: usize,
    pub name: String,
    pub what: String,
    pub ns_min: f64,
    pub ns_median: f64,
    pub runs: Vec<f64>,
}

/// How flat a scaling line is: largest over smallest, minus one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingLine {
    pub line: String,
    pub xs: Vec<usize>,
    pub spread_min: f64,
    pub spread_median: f64,
}

/// A Maglev table build, and the share of the table that moves when one backend goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaglevRow {
    pub backends: u32,
    pub ring_size: u32,
    pub build_ms_min: f64,
    pub build_ms_median: f64,
    pub remapped_share: f64,
    /// 1 / backends: the least any consistent hash can move.
    pub ideal_share: f64,
    pub runs: Vec<f64>,
}

/// From a CLI change to the new table live in the data path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlPlane {
    pub method: String,
    pub changes: usize,
    /// Reads of the VIPS map while waiting for the changes.
    pub polls: u64,
    pub live_ms_min: f64,
    pub live_ms_median: f64,
    pub cli_ms_min: f64,
    pub cli_ms_median: f64,
    pub live_ms: Vec<f64>,
    pub cli_ms: Vec<f64>,
    pub slots_write: Vec<SlotsWrite>,
    // --- Agent-side performance (issue 13): both ring sizes, the connection-table walk. ---
    /// The same changes at each ring size measured (M = 65537, whose figures are also the
    /// ones above, and M = 1,048,573).
    #[serde(default)]
    pub rings: Vec<ControlRing>,
    /// The agent's connection counting over a full connection table.
    #[serde(default)]
    pub conntrack_walk: Option<ConntrackWalk>,
}

/// CLI changes to live at one Maglev ring size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlRing {
    pub ring_size: u32,
    pub changes: usize,
    pub live_ms_min: f64,
    pub live_ms_median: f64,
    pub cli_ms_min: f64,
    pub cli_ms_median: f64,
    pub live_ms: Vec<f64>,
    pub cli_ms: Vec<f64>,
}

/// One pass of the agent's connection counting (`lb_user::maps::active_flows`) over a full
/// connection table, in CPU time of the walking thread (user and system).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConntrackWalk {
    pub method: String,
    /// The table's capacity and the entries it held (an LRU map evicts a little before full).
    pub capacity: u32,
    pub entries: usize,
    /// Entries per `BPF_MAP_LOOKUP_BATCH`.
    pub batch: usize,
    pub cpu_ms_min: f64,
    pub cpu_ms_median: f64,
    /// The system (kernel) part of `cpu_ms_min`'s pass.
    pub sys_ms_of_min: f64,
    pub wall_ms_min: f64,
    pub cpu_ms: Vec<f64>,
    /// One pass of the walk it replaced (a lookup per entry); `None` if not measured.
    pub by_iter_cpu_ms: Option<f64>,
}

/// Writing a Maglev ring into the slots array, one map update per slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotsWrite {
    pub ring_size: u32,
    pub ms_min: f64,
    pub ms_median: f64,
}

/// The data path's steps timed one by one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    pub method: String,
    pub rows: Vec<StepRow>,
    pub sums: Vec<StepSum>,
}

/// One step, in ns over the `XDP_PASS` baseline: in a hot loop and one call per packet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub name: String,
    /// The `bench_steps` program that does the step.
    pub program: String,
    pub what: String,
    pub ns_hot_min: f64,
    pub ns_hot_median: f64,
    pub ns_call_min: f64,
    pub ns_call_median: f64,
}

/// The steps of one path (established, new flow) added up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSum {
    pub name: String,
    pub steps: Vec<String>,
    pub ns_hot: f64,
    /// `ns_hot` plus a FIB lookup with a real route.
    pub ns_hot_with_fib: f64,
    pub ns_call: f64,
}

/// Kernel memory of a flow table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryRow {
    pub map: String,
    pub capacity: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub memlock_bytes: u64,
    pub bytes_per_flow: f64,
}

/// Forwarded packets per second over veth, for xdplb and what it is compared with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndToEnd {
    pub method: String,
    pub seconds_per_case: u64,
    pub threaded_napi: bool,
    pub rounds: usize,
    /// What reaches the gateway when it forwards nothing.
    pub generator_ceiling_pps: f64,
    pub rows: Vec<EndToEndRow>,
}

/// A case of the end-to-end table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndToEndRow {
    pub name: String,
    pub what: String,
    /// The figures; `None` for a case that could not run (see `note`).
    #[serde(flatten)]
    pub forwarded: Option<Forwarded>,
    /// `forwarded_pps` over nftables', plain routing's and the generator's ceiling; `None`
    /// where there is nothing to compare (the ceiling's own row, a case that did not run).
    #[serde(default)]
    pub ratio_to_nftables: Option<f64>,
    #[serde(default)]
    pub ratio_to_plain: Option<f64>,
    #[serde(default)]
    pub ratio_to_ceiling: Option<f64>,
    /// Why a case did not run, or empty.
    #[serde(default)]
    pub note: String,
}

/// What a case of the end-to-end table measured, medians over its runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forwarded {
    pub forwarded_pps: f64,
    pub forwarded_pps_min: f64,
    pub forwarded_pps_max: f64,
    /// What the generator sent per second of wall time.
    pub offered_pps: f64,
    /// What the generator sent per second of the kernel's own time.
    pub generator_kernel_pps: f64,
    pub packets: u64,
    pub seconds: f64,
    pub runs_pps: Vec<f64>,
}

/// TCP with real clients and servers, through each path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tcp {
    pub method: String,
    pub rounds: usize,
    pub seconds: u64,
    pub rows: Vec<TcpRow>,
}

/// One path of the TCP table: connections per second (wrk) and throughput (iperf3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcpRow {
    pub name: String,
    pub what: String,
    pub conn_per_s: f64,
    pub conn_per_s_min: f64,
    pub conn_per_s_runs: Vec<f64>,
    pub wrk_errors: u64,
    /// wrk's latency line of each round: average, deviation, maximum.
    pub wrk_latency_avg_stdev_max: Vec<String>,
    pub gbit_per_s: f64,
    pub gbit_per_s_min: f64,
    pub gbit_per_s_runs: Vec<f64>,
    pub iperf_retransmits: u64,
    /// The client's TCP counters (`nstat`), summed over the rounds.
    pub client_tcp_counters: BTreeMap<String, u64>,
    /// xdplb's outcome counters that grew, summed over the rounds.
    pub xdplb_counters: BTreeMap<String, u64>,
    /// `conn_per_s` and `gbit_per_s` over nftables' and plain routing's.
    pub conn_per_s_ratio_to_nftables: Option<f64>,
    pub conn_per_s_ratio_to_plain: Option<f64>,
    pub gbit_per_s_ratio_to_nftables: Option<f64>,
    pub gbit_per_s_ratio_to_plain: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, forwarded: Option<Forwarded>, note: &str) -> EndToEndRow {
        EndToEndRow {
            name: name.to_owned(),
            what: "what".to_owned(),
            forwarded,
            ratio_to_nftables: None,
            ratio_to_plain: Some(1.5),
            ratio_to_ceiling: None,
            note: note.to_owned(),
        }
    }

    #[test]
    fn an_end_to_end_row_with_and_without_figures_reads_back_as_written() {
        let measured = Forwarded {
            forwarded_pps: 1e6,
            forwarded_pps_min: 0.9e6,
            forwarded_pps_max: 1.1e6,
            offered_pps: 2e6,
            generator_kernel_pps: 3e6,
            packets: 42,
            seconds: 2.0,
            runs_pps: vec![1e6],
        };
        for row in [
            row("xdplb", Some(measured), ""),
            row("nftables", None, "skipped"),
        ] {
            let text = serde_json::to_string(&row).expect("serializes");
            let back: EndToEndRow = serde_json::from_str(&text).expect(&text);
            assert_eq!(back, row, "{text}");
        }
        // As the benchmark wrote a skipped case before these types: name, what and note only.
        let old: EndToEndRow =
            serde_json::from_str(r#"{"name": "nftables", "what": "w", "note": "skipped: no nft"}"#)
                .expect("an old skipped row");
        assert_eq!(old.forwarded, None);
        assert_eq!(old.note, "skipped: no nft");
    }
}
