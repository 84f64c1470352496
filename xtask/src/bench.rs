//! `cargo xtask bench [--quick]`: builds in release, runs the benchmarks (the `xdplb` bench
//! target of `lb-tests`, which needs root), prints a table and leaves
//! `target/bench/results.json` and an SVG chart per group next to it.

mod chart;

use clap::Args;
use lb_tests::bench::{AgentWalk, Breakdown, ControlPlane, EndToEnd, Goal, Path, Results, Tcp};

use crate::{cargo, run_step, target_dir};

#[derive(Args)]
pub struct BenchArgs {
    /// Fewer calls per figure: under 3 minutes instead of up to 20.
    #[arg(long)]
    quick: bool,
    /// Run nothing: print the table and write the charts of the last results.json again.
    #[arg(long)]
    report: bool,
    /// Run only these groups (comma-separated: per_packet, scaling, maglev, control_plane,
    /// breakdown, end_to_end, tcp, agent_walk).
    #[arg(long, value_name = "GROUPS")]
    only: Option<String>,
    /// Profile one more round of the end-to-end xdplb case with `perf record -a -g`; the
    /// data and a summary go to target/bench/ (perf-xdplb.data, profile-xdplb.txt).
    #[arg(long)]
    profile: bool,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // `target/bench/results.json`: `target_dir` appends a profile name, here `bench`.
    let out = target_dir("bench").join("results.json");
    if !args.report {
        measure(args, &out)?;
    }
    report(&out)
}

/// Builds and runs the benchmarks, which write `out`.
fn measure(args: &BenchArgs, out: &std::path::Path) -> anyhow::Result<()> {
    if !lb_tests::is_root() {
        anyhow::bail!("the benchmarks run the XDP program through BPF_PROG_TEST_RUN: run as root");
    }
    // The control-plane benchmark drives the agent through its CLI.
    run_step(
        "build xdplb (release)",
        cargo().args(["build", "--release", "-p", "lb-user", "--bin", "xdplb"]),
    )?;
    let mut bench = cargo();
    bench
        .args(["bench", "-p", "lb-tests", "--bench", "xdplb", "--"])
        .arg("--out")
        .arg(out);
    if args.quick {
        bench.arg("--quick");
    }
    if let Some(only) = &args.only {
        bench.args(["--only", only]);
    }
    if args.profile {
        bench.arg("--profile");
    }
    run_step(
        if args.quick {
            "benchmarks (quick)"
        } else {
            "benchmarks"
        },
        &mut bench,
    )
}

/// Prints the table of `out` and writes the charts next to it.
fn report(out: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(out)
        .map_err(|err| anyhow::anyhow!("reading {}: {err}", out.display()))?;
    let results: Results = serde_json::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "reading {}: {err} (written by another version of the benchmarks? \
             `cargo xtask bench` writes it again)",
            out.display()
        )
    })?;
    print_table(&results);
    let dir = out.parent().expect("results in a directory");
    let charts = charts(&results);
    for (name, svg) in &charts {
        let path = dir.join(name);
        std::fs::write(&path, svg)
            .map_err(|err| anyhow::anyhow!("writing {}: {err}", path.display()))?;
    }
    println!();
    println!("results: {}", out.display());
    println!(
        "charts:  {}",
        charts
            .iter()
            .map(|(name, _)| dir.join(name).display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// A ratio with two decimals, or `-` if there is none.
fn ratio(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{x:.2}"))
}

fn print_table(r: &Results) {
    println!();
    println!(
        "xdplb benchmarks{} on CPU {} (kernel {}; {} × {}, {:.0} GiB; load average at start {}) in {:.0} s",
        if r.quick { " (quick)" } else { "" },
        r.cpu,
        r.kernel,
        r.machine.cpus,
        r.machine.cpu_model,
        r.machine.memory_gib,
        r.machine.loadavg_at_start,
        r.seconds,
    );
    println!("method: {}", r.method);
    println!();
    print_goals(&r.goals);
    println!();
    println!(
        "Per-packet cost (BPF_PROG_TEST_RUN, 5 runs): forwarding path | forwarding off \
         (each column × its own XDP_TX baseline)"
    );
    println!(
        "  {:<20} {:>8} {:>8} {:>7} {:<15} | {:>8} {:>8} {:>7} {:<13} {:<9} what",
        "case",
        "ns min",
        "ns med",
        "x TX",
        "outcome",
        "ns min",
        "ns med",
        "x TX",
        "outcome",
        "method"
    );
    for row in &r.per_packet {
        let column = |path: Path, width: usize| match row.on(path) {
            Some(c) => format!(
                "{:>8.1} {:>8.1} {:>7.2} {:<width$}",
                c.ns_min, c.ns_median, c.ratio_to_tx, c.outcome
            ),
            None => format!("{:>8} {:>8} {:>7} {:<width$}", "-", "-", "-", ""),
        };
        println!(
            "  {:<20} {} | {} {:<9} {}",
            row.name,
            column(Path::Forwarding, 15),
            column(Path::ForwardingOff, 13),
            row.method,
            row.what
        );
    }
    println!();
    println!("Scaling (established flow, repeat=1 method)");
    println!("  {:<20} {:>9} {:>9}  what", "case", "ns min", "ns med");
    for row in &r.scaling {
        println!(
            "  {:<20} {:>9.1} {:>9.1}  {}",
            row.name, row.ns_min, row.ns_median, row.what
        );
    }
    for line in &r.scaling_lines {
        println!(
            "  spread over {:<9} {:>+8.1}% (minimums) {:>+8.1}% (medians)   target: within ±10%",
            line.line,
            100.0 * line.spread_min,
            100.0 * line.spread_median
        );
    }
    println!();
    println!("Maglev table build (lb_common::maglev::build_table, in-process, release)");
    println!(
        "  {:>8} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "backends", "M", "ms min", "ms med", "remapped", "ideal 1/N"
    );
    for row in r.maglev.iter().flatten() {
        println!(
            "  {:>8} {:>7} {:>10.2} {:>10.2} {:>9.3}% {:>9.3}%",
            row.backends,
            row.ring_size,
            row.build_ms_min,
            row.build_ms_median,
            100.0 * row.remapped_share,
            100.0 * row.ideal_share
        );
    }
    print_control_plane(r.control_plane.as_ref());
    print_breakdown(r.breakdown.as_ref());
    println!();
    println!("Memory (kernel memlock of the map / capacity)");
    println!(
        "  {:<12} {:>9} {:>5} {:>6} {:>14} {:>10}",
        "map", "capacity", "key", "value", "memlock bytes", "B/flow"
    );
    let mut total = 0.0;
    for row in &r.memory {
        total += row.bytes_per_flow;
        println!(
            "  {:<12} {:>9} {:>5} {:>6} {:>14} {:>10.1}",
            row.map,
            row.capacity,
            row.key_size,
            row.value_size,
            row.memlock_bytes,
            row.bytes_per_flow
        );
    }
    println!("  {:<12} {:>48.1}", "per flow", total);
    print_end_to_end(r.end_to_end.as_ref());
    print_tcp(r.tcp.as_ref());
    print_agent_walk(r.agent_walk.as_ref());
}

/// A goal's figure in its unit: `12.3 ns`, `540k pps`.
fn figure(value: Option<f64>, unit: &str) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if unit == "pps" => format!("{:.0}k pps", v / 1e3),
        Some(v) => format!("{v:.1} {unit}"),
    }
}

/// The section "Goals": one row per goal of the performance issue.
fn print_goals(goals: &[Goal]) {
    println!();
    println!("Goals (per-packet: forwarding path, minimums; times: medians)");
    if goals.is_empty() {
        println!("  (not in the results)");
        return;
    }
    println!(
        "  {:<24} {:>12} {:>8} {:>12}  {:<42} {:<12} what",
        "goal", "measured", "ratio", "reference", "target", "verdict"
    );
    for goal in goals {
        println!(
            "  {:<24} {:>12} {:>8} {:>12}  {:<42} {:<12} {}{}",
            goal.name,
            figure(goal.measured, &goal.unit),
            goal.ratio.map_or("-".to_owned(), |r| format!("{r:.2}×")),
            figure(goal.reference_value, &goal.unit),
            goal.target_text(),
            goal.verdict(),
            goal.what,
            if goal.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", goal.note)
            }
        );
    }
}

/// The section "Agent walk".
fn print_agent_walk(w: Option<&AgentWalk>) {
    println!();
    println!("Agent walk: CPU time of one pass of active_flows over the connection table");
    let Some(w) = w else {
        println!("  (not in the results)");
        return;
    };
    println!("  method: {}", w.method);
    println!(
        "  {} entries walked (of {} written in {:.2} s): {:.1} ms CPU min, {:.1} ms median \
         ({:.1} ms of it in the kernel), {:.1} ms wall median",
        w.walked,
        w.entries,
        w.fill_seconds,
        w.cpu_ms_min,
        w.cpu_ms_median,
        w.system_ms_median,
        w.wall_ms_median
    );
}

/// The section "Control plane".
fn print_control_plane(cp: Option<&ControlPlane>) {
    println!();
    println!("Control plane: CLI change to the new table live in the data path");
    let Some(cp) = cp else {
        println!("  (not in the results)");
        return;
    };
    println!("  method: {}", cp.method);
    println!(
        "  live after   {:>8.1} ms min {:>8.1} ms median",
        cp.live_ms_min, cp.live_ms_median
    );
    println!(
        "  CLI exited   {:>8.1} ms min {:>8.1} ms median",
        cp.cli_ms_min, cp.cli_ms_median
    );
    for row in &cp.slots_write {
        println!(
            "  writing a whole ring of {:>7} slots (batched updates): {:>8.1} ms min {:>8.1} ms median",
            row.ring_size, row.ms_min, row.ms_median
        );
    }
    for ring in &cp.rings {
        println!(
            "  M = {:>7}: live after {:>8.1} ms min {:>8.1} ms median; CLI exited {:>8.1} ms median",
            ring.ring_size, ring.live_ms_min, ring.live_ms_median, ring.cli_ms_median
        );
    }
    if let Some(walk) = &cp.conntrack_walk {
        println!(
            "  counting connections over {} entries: {:.1} ms CPU min ({:.1} ms in the kernel), {:.1} ms median{}",
            walk.entries,
            walk.cpu_ms_min,
            walk.sys_ms_of_min,
            walk.cpu_ms_median,
            walk.by_iter_cpu_ms.map_or(String::new(), |ms| format!(
                " (a lookup per entry: {ms:.0} ms)"
            ))
        );
    }
}

/// The section "Cost breakdown".
fn print_breakdown(b: Option<&Breakdown>) {
    println!();
    println!("Cost breakdown (ns over XDP_PASS, one program per step)");
    let Some(b) = b else {
        println!("  (not in the results)");
        return;
    };
    println!("  method: {}", b.method);
    println!("  {:<16} {:>9} {:>9}  what", "step", "hot", "per call");
    for row in &b.rows {
        println!(
            "  {:<22} {:>9.1} {:>9.1}  {}",
            row.name, row.ns_hot_min, row.ns_call_min, row.what
        );
    }
    for sum in &b.sums {
        println!(
            "  sum {:<18} {:>9.1} {:>9.1}  (hot with a real FIB lookup: {:.1})",
            sum.name, sum.ns_hot, sum.ns_call, sum.ns_hot_with_fib
        );
    }
}

/// The section "End-to-end over veth (pps)".
fn print_end_to_end(e: Option<&EndToEnd>) {
    println!();
    println!("End-to-end over veth (pps)");
    let Some(e) = e else {
        println!("  (not in the results)");
        return;
    };
    println!("  method: {}", e.method);
    println!(
        "  {:<18} {:>12} {:>12} {:>9} {:>9} {:>12}  what",
        "case", "forwarded", "offered", "x nft", "x plain", "gen ceiling"
    );
    for row in &e.rows {
        let Some(forwarded) = &row.forwarded else {
            println!("  {:<18} {:>12}  {}", row.name, "-", row.note);
            continue;
        };
        println!(
            "  {:<18} {:>12.0} {:>12.0} {:>9} {:>9} {:>12.0}  {}",
            row.name,
            forwarded.forwarded_pps,
            forwarded.offered_pps,
            ratio(row.ratio_to_nftables),
            ratio(row.ratio_to_plain),
            e.generator_ceiling_pps,
            row.what
        );
    }
    if let Some(p) = &e.profile {
        println!(
            "  profile of one more xdplb round ({:.0} pps while recording, {} samples; {}):",
            p.forwarded_pps, p.samples, p.summary_path
        );
        for share in &p.categories {
            println!("    {:>6.2}%  {}", 100.0 * share.share, share.name);
        }
        println!("    of the benchmark's and the gateway's samples only:");
        for share in &p.categories_ours {
            println!("    {:>6.2}%  {}", 100.0 * share.share, share.name);
        }
        println!("    by command:");
        for share in &p.commands {
            println!("    {:>6.2}%  {}", 100.0 * share.share, share.name);
        }
    }
}

/// The section "TCP with real clients and servers".
fn print_tcp(t: Option<&Tcp>) {
    println!();
    println!("TCP with real clients and servers (wrk + nginx, iperf3)");
    let Some(t) = t else {
        println!("  (not in the results)");
        return;
    };
    println!("  method: {}", t.method);
    println!(
        "  {:<18} {:>10} {:>7} {:>7} {:>7} {:>9} {:>7} {:>7}",
        "path", "conn/s", "x nft", "x plain", "errors", "Gbit/s", "x nft", "x plain"
    );
    for row in &t.rows {
        println!(
            "  {:<18} {:>10.0} {:>7} {:>7} {:>7} {:>9.2} {:>7} {:>7}",
            row.name,
            row.conn_per_s,
            ratio(row.conn_per_s_ratio_to_nftables),
            ratio(row.conn_per_s_ratio_to_plain),
            row.wrk_errors,
            row.gbit_per_s,
            ratio(row.gbit_per_s_ratio_to_nftables),
            ratio(row.gbit_per_s_ratio_to_plain),
        );
    }
}

/// One SVG per group: file name and text.
fn charts(r: &Results) -> Vec<(&'static str, String)> {
    use chart::{BASELINE, Bar, OTHER, PLAIN, Panel, XDPLB, svg};
    let quick = if r.quick { " (quick run)" } else { "" };
    let machine = format!(
        "kernel {}, {} × {}{quick}",
        r.kernel, r.machine.cpus, r.machine.cpu_model
    );
    let mut out = Vec::new();

    // Goals: each figure over its target, so that 1 is the target on every row (for a "≥"
    // goal, the target over the figure).
    let mut goals = Panel::new(
        "each goal: how far from its target (≤ 1: met)",
        "figure / target (for ≥ goals: target / figure)",
    )
    .marker("target", 1.0);
    for goal in &r.goals {
        let value = goal.ratio.or(goal.measured).map(|v| match goal.bound {
            lb_tests::bench::Bound::AtMost => v / goal.target,
            lb_tests::bench::Bound::AtLeast => goal.target / v,
        });
        let text = match (goal.measured, goal.ratio) {
            (None, _) => format!("not measured; target {}", goal.target_text()),
            (Some(m), Some(ratio)) => format!(
                "{}: {}, {ratio:.2}× (target {})",
                goal.verdict(),
                figure(Some(m), &goal.unit),
                goal.target_text()
            ),
            (Some(m), None) => format!(
                "{}: {} (target {})",
                goal.verdict(),
                figure(Some(m), &goal.unit),
                goal.target_text()
            ),
        };
        let color = match goal.met {
            Some(true) => PLAIN,
            Some(false) => OTHER,
            None => BASELINE,
        };
        goals =
            goals.bar(Bar::new(goal.name.clone(), value.unwrap_or(f64::NAN), text).color(color));
    }
    out.push((
        "goals.svg",
        svg(
            "xdplb: the performance goals, met or not",
            &format!("per-packet goals on the forwarding path; {machine}"),
            &[goals],
        ),
    ));

    // Per-packet cost: one panel per column, each with its own XDP_TX baseline's targets.
    let mut panels = Vec::new();
    for path in Path::ALL {
        let tx = r
            .per_packet
            .iter()
            .find(|row| row.name == "baseline_tx")
            .and_then(|row| row.on(path))
            .map_or(f64::NAN, |cost| cost.ns_min);
        let mut panel = Panel::new(
            format!("{}: ns per packet (minimum of 5 runs)", path.name()),
            "ns per packet",
        )
        .marker(
            format!("6× XDP_TX (tracked-flow target) {:.0} ns", 6.0 * tx),
            6.0 * tx,
        )
        .marker(
            format!("25× XDP_TX (new-flow target) {:.0} ns", 25.0 * tx),
            25.0 * tx,
        );
        for row in &r.per_packet {
            let Some(cost) = row.on(path) else {
                continue;
            };
            let color = if row.name.starts_with("baseline") {
                BASELINE
            } else {
                XDPLB
            };
            panel = panel.bar(
                Bar::new(
                    format!("{} ({})", row.name, row.method),
                    cost.ns_min,
                    format!(
                        "{:.0} ns, {:.1}× TX, {}",
                        cost.ns_min, cost.ratio_to_tx, cost.outcome
                    ),
                )
                .color(color),
            );
        }
        panels.push(panel);
    }
    out.push((
        "per_packet.svg",
        svg(
            "xdplb: per-packet cost (BPF_PROG_TEST_RUN), forwarding path and forwarding off",
            &format!("repeat=1: one call per packet, call overhead subtracted; repeat=N: hot loop; {machine}"),
            &panels,
        ),
    ));

    // Scaling: one panel per line, with its spread.
    let mut panels = Vec::new();
    for line in &r.scaling_lines {
        let name = &line.line;
        let mut panel = Panel::new(
            format!(
                "by {name}: spread {:+.1}% (minimums), {:+.1}% (medians); target ±10%",
                100.0 * line.spread_min,
                100.0 * line.spread_median
            ),
            "ns per packet (tracked TCP ACK, repeat=1 method)",
        );
        for row in r.scaling.iter().filter(|row| row.line == line.line) {
            panel = panel.bar(Bar::new(
                format!("{} {}", row.x, name.replace('_', " ")),
                row.ns_min,
                format!("{:.0} ns (median {:.0})", row.ns_min, row.ns_median),
            ));
        }
        panels.push(panel);
    }
    out.push((
        "scaling.svg",
        svg(
            "xdplb: established-flow cost as the tables grow",
            &machine,
            &panels,
        ),
    ));

    // Maglev builds, one panel per ring size.
    let maglev = r.maglev.as_deref().unwrap_or_default();
    let mut rings: Vec<u32> = maglev.iter().map(|row| row.ring_size).collect();
    rings.dedup();
    let mut panels: Vec<Panel> = rings
        .iter()
        .map(|&ring| {
            let mut panel = Panel::new(format!("M = {ring}"), "ms to build the table (minimum)");
            for row in maglev.iter().filter(|row| row.ring_size == ring) {
                panel = panel.bar(Bar::new(
                    format!("{} backends", row.backends),
                    row.build_ms_min,
                    format!(
                        "{:.1} ms; one removed remaps {:.2}% (ideal {:.2}%)",
                        row.build_ms_min,
                        100.0 * row.remapped_share,
                        100.0 * row.ideal_share
                    ),
                ));
            }
            panel
        })
        .collect();
    if let Some(cp) = &r.control_plane {
        panels.push(
            Panel::new("CLI change (`xdplb backend set`) to new table live", "ms")
                .bar(Bar::new(
                    "live in the data path",
                    cp.live_ms_median,
                    format!(
                        "{:.1} ms median (min {:.1})",
                        cp.live_ms_median, cp.live_ms_min
                    ),
                ))
                .bars(cp.slots_write.iter().map(|row| {
                    Bar::new(
                        format!("writing {} slots", row.ring_size),
                        row.ms_min,
                        format!("{:.1} ms (min), a whole ring, batched updates", row.ms_min),
                    )
                    .color(OTHER)
                }))
                .bar(
                    Bar::new(
                        "CLI process exited",
                        cp.cli_ms_median,
                        format!(
                            "{:.1} ms median (min {:.1})",
                            cp.cli_ms_median, cp.cli_ms_min
                        ),
                    )
                    .color(BASELINE),
                ),
        );
    }
    out.push((
        "control_plane.svg",
        svg(
            "xdplb: Maglev table builds and control-plane latency",
            &machine,
            &panels,
        ),
    ));

    // Cost breakdown.
    let mut hot = Panel::new("hot loop (repeat=N), ns over XDP_PASS", "ns");
    let mut call = Panel::new("one call per packet (repeat=1), ns over XDP_PASS", "ns");
    if let Some(b) = &r.breakdown {
        for row in &b.rows {
            hot = hot.bar(Bar::new(
                row.name.clone(),
                row.ns_hot_min,
                format!("{:.1} ns", row.ns_hot_min),
            ));
            call = call.bar(
                Bar::new(
                    row.name.clone(),
                    row.ns_call_min,
                    format!("{:.1} ns", row.ns_call_min),
                )
                .color(OTHER),
            );
        }
        for sum in &b.sums {
            hot = hot.bar(
                Bar::new(
                    format!("sum: {}", sum.name),
                    sum.ns_hot,
                    format!("{:.1} ns", sum.ns_hot),
                )
                .color(BASELINE),
            );
            call = call.bar(
                Bar::new(
                    format!("sum: {}", sum.name),
                    sum.ns_call,
                    format!("{:.1} ns", sum.ns_call),
                )
                .color(BASELINE),
            );
        }
    }
    out.push((
        "breakdown.svg",
        svg(
            "xdplb: cost of each data-path step (bench_steps programs)",
            &machine,
            &[hot, call],
        ),
    ));

    // End to end and TCP.
    let color_of = |name: &str| match name {
        "xdplb" => XDPLB,
        "nftables" => OTHER,
        "plain_routing" => PLAIN,
        "xdp_pass_through" => "#8fb3d9",
        _ => BASELINE,
    };
    let mut pps = Panel::new(
        "64-byte UDP frames forwarded per second (median)",
        "packets/s",
    );
    for row in r.end_to_end.iter().flat_map(|e| &e.rows) {
        let forwarded = row.forwarded.as_ref().map_or(f64::NAN, |f| f.forwarded_pps);
        pps = pps.bar(
            Bar::new(
                row.name.clone(),
                forwarded,
                format!(
                    "{:.0}k pps; × nft {}, × plain {}",
                    forwarded / 1e3,
                    ratio(row.ratio_to_nftables),
                    ratio(row.ratio_to_plain)
                ),
            )
            .color(color_of(&row.name)),
        );
    }
    let mut conns = Panel::new(
        "TCP connections per second (wrk, Connection: close, nginx)",
        "connections/s",
    );
    let mut gbits = Panel::new("TCP throughput (iperf3, one stream)", "Gbit/s");
    for row in r.tcp.iter().flat_map(|t| &t.rows) {
        conns = conns.bar(
            Bar::new(
                row.name.clone(),
                row.conn_per_s,
                format!(
                    "{:.0}/s; × nft {}, × plain {}",
                    row.conn_per_s,
                    ratio(row.conn_per_s_ratio_to_nftables),
                    ratio(row.conn_per_s_ratio_to_plain)
                ),
            )
            .color(color_of(&row.name)),
        );
        gbits = gbits.bar(
            Bar::new(
                row.name.clone(),
                row.gbit_per_s,
                format!(
                    "{:.2} Gbit/s; × nft {}, × plain {}",
                    row.gbit_per_s,
                    ratio(row.gbit_per_s_ratio_to_nftables),
                    ratio(row.gbit_per_s_ratio_to_plain)
                ),
            )
            .color(color_of(&row.name)),
        );
    }
    out.push((
        "end_to_end.svg",
        svg(
            "xdplb vs nftables DNAT vs plain routing, generator → gateway → sink over veth",
            &machine,
            &[pps, conns, gbits],
        ),
    ));

    // Memory.
    let mut mem = Panel::new("bytes per tracked flow, from the kernel's memlock", "bytes");
    let mut total = 0.0;
    for row in &r.memory {
        total += row.bytes_per_flow;
        mem = mem.bar(Bar::new(
            format!("{} ({} entries)", row.map, row.capacity),
            row.bytes_per_flow,
            format!(
                "{:.1} B per flow, {:.1} MB",
                row.bytes_per_flow,
                row.memlock_bytes as f64 / 1e6
            ),
        ));
    }
    mem = mem.bar(Bar::new("per tracked flow", total, format!("{total:.1} B")).color(BASELINE));
    out.push((
        "memory.svg",
        svg("xdplb: memory of the flow tables", &machine, &[mem]),
    ));
    out
}
