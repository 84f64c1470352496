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
    /// The agent's walk of a full connection table.
    #[serde(default)]
    pub agent_walk: Option<AgentWalk>,
    /// Each goal of the performance issue against what this run measured ([`goals`]).
    #[serde(default)]
    pub goals: Vec<Goal>,
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

/// A case of the per-packet table, in its two columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PacketRow {
    pub name: String,
    pub what: String,
    /// `repeat=1` (one call per packet) or `repeat=N` (a hot loop).
    pub method: String,
    /// On the forwarding path: in a gateway namespace with forwarding on, routes and resolved
    /// neighbours, the packet arriving on an interface (`xdp_md.ingress_ifindex`), so that a
    /// translated packet leaves by `XDP_TX` or `XDP_REDIRECT`. `None`: not measured there.
    pub forwarding: Option<PacketCost>,
    /// In the host namespace, forwarding off, no ingress interface: `bpf_fib_lookup` answers
    /// "forwarding disabled" and translated packets end in `pass_fib`. `None`: not measured
    /// there.
    pub forwarding_off: Option<PacketCost>,
}

/// What a case of the per-packet table cost in one column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PacketCost {
    /// The outcome counters the case's packet is counted under (checked on its first call).
    pub outcome: String,
    pub ns_min: f64,
    pub ns_median: f64,
    /// `ns_min` over the `XDP_TX` baseline's, measured in the same column.
    pub ratio_to_tx: f64,
    pub runs: Vec<f64>,
}

/// The two columns of the per-packet table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Path {
    Forwarding,
    ForwardingOff,
}

impl Path {
    pub const ALL: [Path; 2] = [Path::Forwarding, Path::ForwardingOff];

    pub fn name(self) -> &'static str {
        match self {
            Path::Forwarding => "forwarding path",
            Path::ForwardingOff => "forwarding off",
        }
    }
}

impl PacketRow {
    /// Its cost in column `path`, if measured there.
    pub fn on(&self, path: Path) -> Option<&PacketCost> {
        match path {
            Path::Forwarding => self.forwarding.as_ref(),
            Path::ForwardingOff => self.forwarding_off.as_ref(),
        }
    }
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
    /// A `perf record` of one more round of the xdplb case (`--profile`).
    #[serde(default)]
    pub profile: Option<Profile>,
}

/// Where the CPUs' time went during one round of the xdplb end-to-end case: `perf record -a -g`
/// with the software `cpu-clock` event, summarized from `perf report`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub method: String,
    /// Forwarded packets per second of the profiled round (perf's own cost included).
    pub forwarded_pps: f64,
    pub samples: u64,
    /// Share of the samples per category of symbol (BPF program, veth/NAPI/XDP frames, ...).
    pub categories: Vec<Share>,
    /// The same, of the benchmark's and the gateway's samples only (not idle, not other
    /// processes sharing the machine).
    #[serde(default)]
    pub categories_ours: Vec<Share>,
    /// Share of the samples per command (the generator thread, NAPI threads, ksoftirqd, idle).
    pub commands: Vec<Share>,
    /// Share of the samples per command and category (the largest).
    #[serde(default)]
    pub by_command: Vec<Share>,
    /// The symbols with the most samples.
    pub symbols: Vec<Share>,
    /// The full summary, written next to results.json.
    pub summary_path: String,
}

/// A name and its share of the samples (0 to 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub name: String,
    pub share: f64,
}

/// CPU time of one pass of the agent's count of active flows
/// (`lb_user::maps::active_flows`) over a full connection table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentWalk {
    pub method: String,
    /// Entries written into the table, and entries one pass walked.
    pub entries: usize,
    pub walked: usize,
    /// Seconds to fill the table.
    pub fill_seconds: f64,
    /// CPU time (user + system) of the walking thread, per pass.
    pub cpu_ms_min: f64,
    pub cpu_ms_median: f64,
    /// Of the median pass, the time in the kernel (the map syscalls).
    pub system_ms_median: f64,
    pub wall_ms_median: f64,
    pub cpu_ms_runs: Vec<f64>,
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

/// Which side of its target a goal wants the figure on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bound {
    AtMost,
    AtLeast,
}

impl Bound {
    pub fn symbol(self) -> &'static str {
        match self {
            Bound::AtMost => "≤",
            Bound::AtLeast => "≥",
        }
    }

    fn holds(self, value: f64, target: f64) -> bool {
        match self {
            Bound::AtMost => value <= target,
            Bound::AtLeast => value >= target,
        }
    }
}

/// A goal of the performance issue and what this run measured for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub name: String,
    pub what: String,
    /// The figure, in `unit`; `None`: not measured in this run.
    pub measured: Option<f64>,
    pub unit: String,
    /// For a goal that is a ratio: what it is a ratio to (`XDP_TX baseline`), and that
    /// figure in `unit`.
    pub reference: Option<String>,
    pub reference_value: Option<f64>,
    /// `measured` over `reference_value`.
    pub ratio: Option<f64>,
    pub bound: Bound,
    /// The target: of `ratio` if the goal has a reference, else of `measured`.
    pub target: f64,
    /// `None`: not measured.
    pub met: Option<bool>,
    /// How this run measured it, where that differs from the goal (a quick run's smaller
    /// table).
    pub note: String,
}

impl Goal {
    /// A goal on the figure itself.
    fn absolute(
        name: &str,
        what: &str,
        unit: &str,
        measured: Option<f64>,
        bound: Bound,
        target: f64,
    ) -> Self {
        Self {
            name: name.to_owned(),
            what: what.to_owned(),
            measured,
            unit: unit.to_owned(),
            reference: None,
            reference_value: None,
            ratio: None,
            bound,
            target,
            met: measured.map(|m| bound.holds(m, target)),
            note: String::new(),
        }
    }

    /// A goal on the figure's ratio to `reference`.
    fn ratio(
        name: &str,
        what: &str,
        unit: &str,
        measured: Option<f64>,
        (reference, reference_value): (&str, Option<f64>),
        bound: Bound,
        target: f64,
    ) -> Self {
        let ratio = measured.zip(reference_value).map(|(m, r)| m / r);
        Self {
            reference: Some(reference.to_owned()),
            reference_value,
            ratio,
            met: ratio.map(|r| bound.holds(r, target)),
            ..Self::absolute(name, what, unit, measured, bound, target)
        }
    }

    fn note(mut self, note: String) -> Self {
        self.note = note;
        self
    }

    /// The target as the table prints it: `≤ 6× XDP_TX baseline`, `≤ 10 ms`.
    pub fn target_text(&self) -> String {
        match &self.reference {
            Some(reference) => format!("{} {}× {reference}", self.bound.symbol(), self.target),
            None => format!("{} {} {}", self.bound.symbol(), self.target, self.unit),
        }
    }

    /// `met`, `NOT met` or `not measured`.
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        }
    }
}

/// The goals of the performance issue, each with what `r` measured for it (per-packet costs
/// on the forwarding path, as minimums; times as medians).
pub fn goals(r: &Results) -> Vec<Goal> {
    use Bound::{AtLeast, AtMost};
    let fwd_ns = |name: &str| {
        r.per_packet
            .iter()
            .find(|row| row.name == name)
            .and_then(|row| row.on(Path::Forwarding))
            .map(|cost| cost.ns_min)
    };
    let tx = ("XDP_TX baseline", fwd_ns("baseline_tx"));
    let per_packet = |name: &str, what: &str, case: &str, target: f64| {
        Goal::ratio(name, what, "ns", fwd_ns(case), tx, AtMost, target)
    };

    // The largest table of the forwarding path's flows lines: its flows in turn and its one flow.
    let on_line = |line: &str| {
        r.scaling
            .iter()
            .filter(|row| row.line == line)
            .max_by_key(|row| row.x)
    };
    let many = on_line("flows_many_active_forwarding");
    let single = on_line("flows_forwarding");
    let flows = many.map_or(0, |row| row.x);
    let many_goal = Goal::ratio(
        "many_active_flows",
        "1,000,000 flows in the table, 50,000 active in turn (forwarding path)",
        "ns",
        many.map(|row| row.ns_min),
        (
            "one tracked flow in the same table",
            single.map(|row| row.ns_min),
        ),
        AtMost,
        2.0,
    );
    let many_goal = if many.is_some() && flows != 1_000_000 {
        many_goal.note(format!("measured with {flows} flows in the table"))
    } else {
        many_goal
    };

    // Control plane: `xdplb backend set` to the new table live, median.
    let cp = r.control_plane.as_ref();
    let ring = |size: u32| {
        cp.and_then(|cp| cp.rings.iter().find(|r| r.ring_size == size))
            .map(|r| r.live_ms_median)
    };
    // M = 65537: its ring row, else what control.rs measures as `live_ms_*` (that ring).
    let live_default_ring = ring(65537).or(cp.map(|cp| cp.live_ms_median));
    let live_largest_ring = ring(1_048_573);

    let e2e_pps = |name: &str| {
        r.end_to_end
            .as_ref()
            .and_then(|e| e.rows.iter().find(|row| row.name == name))
            .and_then(|row| row.forwarded.as_ref())
            .map(|f| f.forwarded_pps)
    };
    let xdplb_pps = e2e_pps("xdplb");
    let walk = r.agent_walk.as_ref();
    let walk_goal = Goal::absolute(
        "agent_walk",
        "agent's pass over a 1,000,000-flow connection table, CPU time (median)",
        "ms",
        walk.map(|w| w.cpu_ms_median),
        AtMost,
        100.0,
    );
    let walk_goal = match walk {
        Some(w) if w.walked != 1_000_000 => {
            walk_goal.note(format!("the pass walked {} entries", w.walked))
        }
        _ => walk_goal,
    };

    vec![
        per_packet(
            "tracked_tcp",
            "TCP ACK of a tracked flow (forwarding path)",
            "tcp_ack_tracked",
            6.0,
        ),
        per_packet(
            "tracked_udp",
            "UDP of a tracked flow (forwarding path)",
            "udp_tracked",
            6.0,
        ),
        per_packet(
            "new_flow_tcp",
            "TCP SYN, new flow (forwarding path)",
            "tcp_syn_new_flow",
            25.0,
        ),
        per_packet(
            "new_flow_udp",
            "UDP, new flow (forwarding path)",
            "udp_new_flow",
            25.0,
        ),
        per_packet(
            "non_vip",
            "packet to an address that is no VIP (forwarding path)",
            "non_vip",
            2.5,
        ),
        many_goal,
        Goal::absolute(
            "control_plane_65537",
            "CLI change to the new table live, M = 65537 (median)",
            "ms",
            live_default_ring,
            AtMost,
            10.0,
        ),
        Goal::absolute(
            "control_plane_1048573",
            "CLI change to the new table live, M = 1,048,573 (median)",
            "ms",
            live_largest_ring,
            AtMost,
            100.0,
        ),
        walk_goal,
        Goal::ratio(
            "end_to_end_vs_routing",
            "end to end over veth, forwarded packets/s (median)",
            "pps",
            xdplb_pps,
            ("plain kernel routing", e2e_pps("plain_routing")),
            AtLeast,
            1.0,
        ),
        Goal::ratio(
            "end_to_end_vs_nftables",
            "end to end over veth, forwarded packets/s (median)",
            "pps",
            xdplb_pps,
            ("nftables DNAT", e2e_pps("nftables")),
            AtLeast,
            3.0,
        ),
    ]
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

    fn empty() -> Results {
        Results {
            quick: false,
            cpu: 1,
            kernel: String::new(),
            machine: Machine {
                cpu_model: String::new(),
                cpus: 2,
                memory_gib: 1.0,
                loadavg_at_start: String::new(),
            },
            method: String::new(),
            only: String::new(),
            per_packet: Vec::new(),
            scaling: Vec::new(),
            scaling_lines: Vec::new(),
            maglev: None,
            control_plane: None,
            breakdown: None,
            memory: Vec::new(),
            end_to_end: None,
            tcp: None,
            agent_walk: None,
            goals: Vec::new(),
            seconds: 0.0,
        }
    }

    fn cost(ns: f64) -> PacketCost {
        PacketCost {
            outcome: "fwd_redirect".to_owned(),
            ns_min: ns,
            ns_median: ns,
            ratio_to_tx: f64::NAN,
            runs: vec![ns],
        }
    }

    fn packet(name: &str, forwarding: Option<f64>, forwarding_off: Option<f64>) -> PacketRow {
        PacketRow {
            name: name.to_owned(),
            what: String::new(),
            method: "repeat=1".to_owned(),
            forwarding: forwarding.map(cost),
            forwarding_off: forwarding_off.map(cost),
        }
    }

    fn scaling(line: &str, x: usize, ns: f64) -> ScalingRow {
        ScalingRow {
            line: line.to_owned(),
            x,
            name: format!("{line}_{x}"),
            what: String::new(),
            ns_min: ns,
            ns_median: ns,
            runs: vec![ns],
        }
    }

    fn goal<'a>(goals: &'a [Goal], name: &str) -> &'a Goal {
        goals
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no goal {name}"))
    }

    #[test]
    fn every_goal_is_listed_and_not_measured_without_figures() {
        let goals = goals(&empty());
        assert_eq!(goals.len(), 11);
        for g in &goals {
            assert_eq!((g.met, g.measured, g.ratio), (None, None, None), "{g:?}");
            assert_eq!(g.verdict(), "not measured");
        }
    }

    #[test]
    fn per_packet_goals_are_ratios_to_the_forwarding_paths_tx_baseline() {
        let mut r = empty();
        r.per_packet = vec![
            packet("baseline_tx", Some(10.0), Some(5.0)),
            packet("tcp_ack_tracked", Some(60.0), Some(20.0)),
            packet("udp_tracked", Some(61.0), Some(20.0)),
            packet("tcp_syn_new_flow", None, Some(20.0)),
            packet("udp_new_flow", Some(240.0), None),
            packet("non_vip", Some(26.0), Some(1.0)),
        ];
        let goals = goals(&r);
        let tcp = goal(&goals, "tracked_tcp");
        assert_eq!((tcp.ratio, tcp.met), (Some(6.0), Some(true)));
        assert_eq!(tcp.target_text(), "≤ 6× XDP_TX baseline");
        assert_eq!(goal(&goals, "tracked_udp").met, Some(false));
        // Measured with forwarding off only: not a figure of the forwarding path.
        assert_eq!(goal(&goals, "new_flow_tcp").met, None);
        assert_eq!(goal(&goals, "new_flow_udp").ratio, Some(24.0));
        assert_eq!(goal(&goals, "non_vip").met, Some(false));
    }

    #[test]
    fn many_active_flows_compare_with_one_flow_of_the_largest_table() {
        let mut r = empty();
        r.scaling = vec![
            scaling("flows_forwarding", 1_000, 100.0),
            scaling("flows_forwarding", 100_000, 150.0),
            scaling("flows_many_active_forwarding", 1_000, 100.0),
            scaling("flows_many_active_forwarding", 100_000, 450.0),
            // Forwarding off is not the goal's line.
            scaling("flows_many_active", 100_000, 150.0),
        ];
        let goals = goals(&r);
        let many = goal(&goals, "many_active_flows");
        assert_eq!((many.ratio, many.met), (Some(3.0), Some(false)));
        assert_eq!(many.note, "measured with 100000 flows in the table");
    }

    #[test]
    fn control_plane_walk_and_end_to_end_goals() {
        let mut r = empty();
        r.control_plane = Some(ControlPlane {
            method: String::new(),
            changes: 2,
            polls: 0,
            live_ms_min: 5.0,
            live_ms_median: 12.0,
            cli_ms_min: 0.0,
            cli_ms_median: 0.0,
            live_ms: Vec::new(),
            cli_ms: Vec::new(),
            slots_write: Vec::new(),
            rings: Vec::new(),
            conntrack_walk: None,
        });
        r.agent_walk = Some(AgentWalk {
            method: String::new(),
            entries: 1_000_000,
            walked: 1_000_000,
            fill_seconds: 1.0,
            cpu_ms_min: 90.0,
            cpu_ms_median: 99.0,
            system_ms_median: 80.0,
            wall_ms_median: 100.0,
            cpu_ms_runs: vec![90.0, 99.0, 120.0],
        });
        let e2e = |name: &str, pps: f64| EndToEndRow {
            forwarded: Some(Forwarded {
                forwarded_pps: pps,
                forwarded_pps_min: pps,
                forwarded_pps_max: pps,
                offered_pps: pps,
                generator_kernel_pps: pps,
                packets: 1,
                seconds: 1.0,
                runs_pps: vec![pps],
            }),
            ..row(name, None, "")
        };
        r.end_to_end = Some(EndToEnd {
            method: String::new(),
            seconds_per_case: 1,
            threaded_napi: true,
            rounds: 1,
            generator_ceiling_pps: 1e6,
            rows: vec![
                e2e("plain_routing", 500e3),
                e2e("xdplb", 600e3),
                e2e("nftables", 250e3),
            ],
            profile: None,
        });
        let goals = goals(&r);
        let cp = goal(&goals, "control_plane_65537");
        assert_eq!((cp.measured, cp.met), (Some(12.0), Some(false)));
        assert_eq!(cp.target_text(), "≤ 10 ms");
        assert_eq!(goal(&goals, "control_plane_1048573").met, None);
        assert_eq!(goal(&goals, "agent_walk").met, Some(true));
        let routing = goal(&goals, "end_to_end_vs_routing");
        assert_eq!((routing.ratio, routing.met), (Some(1.2), Some(true)));
        assert_eq!(routing.target_text(), "≥ 1× plain kernel routing");
        let nft = goal(&goals, "end_to_end_vs_nftables");
        assert_eq!((nft.ratio, nft.met), (Some(2.4), Some(false)));
    }
}
