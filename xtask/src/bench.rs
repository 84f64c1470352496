//! `cargo xtask bench [--quick]`: builds in release, runs the benchmarks (the `xdplb` bench
//! target of `lb-tests`, which needs root), prints a table and leaves
//! `target/bench/results.json` and an SVG chart per group next to it.

mod chart;

use clap::Args;
use serde_json::Value;

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
    /// breakdown, end_to_end, tcp).
    #[arg(long, value_name = "GROUPS")]
    only: Option<String>,
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
    let results: Value = serde_json::from_str(&text)?;
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

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

fn rows(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn ratio(v: &Value) -> String {
    v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"))
}

fn print_table(r: &Value) {
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    println!();
    println!(
        "xdplb benchmarks{} on CPU {} (kernel {}; {} × {}, {:.0} GiB; load average at start {}) in {:.0} s",
        if r["quick"].as_bool() == Some(true) {
            " (quick)"
        } else {
            ""
        },
        r["cpu"],
        s(&r["kernel"]),
        r["machine"]["cpus"],
        s(&r["machine"]["cpu_model"]),
        f(&r["machine"]["memory_gib"]),
        s(&r["machine"]["loadavg_at_start"]),
        f(&r["seconds"]),
    );
    println!("method: {}", s(&r["method"]));
    println!();
    println!("Per-packet cost (BPF_PROG_TEST_RUN, 5 runs)");
    println!(
        "  {:<20} {:>9} {:>9} {:>7}  {:<9} {:<22} what",
        "case", "ns min", "ns med", "x TX", "method", "outcome"
    );
    for row in rows(&r["per_packet"]) {
        println!(
            "  {:<20} {:>9.1} {:>9.1} {:>7.2}  {:<9} {:<22} {}",
            s(&row["name"]),
            f(&row["ns_min"]),
            f(&row["ns_median"]),
            f(&row["ratio_to_tx"]),
            s(&row["method"]),
            s(&row["outcome"]),
            s(&row["what"])
        );
    }
    println!();
    println!("Scaling (established flow, repeat=1 method)");
    println!("  {:<20} {:>9} {:>9}  what", "case", "ns min", "ns med");
    for row in rows(&r["scaling"]) {
        println!(
            "  {:<20} {:>9.1} {:>9.1}  {}",
            s(&row["name"]),
            f(&row["ns_min"]),
            f(&row["ns_median"]),
            s(&row["what"])
        );
    }
    for line in rows(&r["scaling_lines"]) {
        println!(
            "  spread over {:<9} {:>+8.1}% (minimums) {:>+8.1}% (medians)   target: within ±10%",
            s(&line["line"]),
            100.0 * f(&line["spread_min"]),
            100.0 * f(&line["spread_median"])
        );
    }
    println!();
    println!("Maglev table build (lb_common::maglev::build_table, in-process, release)");
    println!(
        "  {:>8} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "backends", "M", "ms min", "ms med", "remapped", "ideal 1/N"
    );
    for row in rows(&r["maglev"]) {
        println!(
            "  {:>8} {:>7} {:>10.2} {:>10.2} {:>9.3}% {:>9.3}%",
            u(&row["backends"]),
            u(&row["ring_size"]),
            f(&row["build_ms_min"]),
            f(&row["build_ms_median"]),
            100.0 * f(&row["remapped_share"]),
            100.0 * f(&row["ideal_share"])
        );
    }
    let cp = &r["control_plane"];
    println!();
    println!("Control plane: CLI change to the new table live in the data path");
    println!("  method: {}", s(&cp["method"]));
    println!(
        "  live after   {:>8.1} ms min {:>8.1} ms median",
        f(&cp["live_ms_min"]),
        f(&cp["live_ms_median"])
    );
    println!(
        "  CLI exited   {:>8.1} ms min {:>8.1} ms median",
        f(&cp["cli_ms_min"]),
        f(&cp["cli_ms_median"])
    );
    for row in rows(&cp["slots_write"]) {
        println!(
            "  writing a ring of {:>7} slots (one map update each): {:>8.1} ms min {:>8.1} ms median",
            row["ring_size"],
            f(&row["ms_min"]),
            f(&row["ms_median"])
        );
    }
    print_breakdown(&r["breakdown"]);
    println!();
    println!("Memory (kernel memlock of the map / capacity)");
    println!(
        "  {:<12} {:>9} {:>5} {:>6} {:>14} {:>10}",
        "map", "capacity", "key", "value", "memlock bytes", "B/flow"
    );
    let mut total = 0.0;
    for row in rows(&r["memory"]) {
        total += f(&row["bytes_per_flow"]);
        println!(
            "  {:<12} {:>9} {:>5} {:>6} {:>14} {:>10.1}",
            s(&row["map"]),
            u(&row["capacity"]),
            u(&row["key_size"]),
            u(&row["value_size"]),
            u(&row["memlock_bytes"]),
            f(&row["bytes_per_flow"])
        );
    }
    println!("  {:<12} {:>48.1}", "per flow", total);
    print_end_to_end(&r["end_to_end"]);
    print_tcp(&r["tcp"]);
}

/// The section "Cost breakdown".
fn print_breakdown(b: &Value) {
    println!();
    println!("Cost breakdown (ns over XDP_PASS, one program per step)");
    if b.is_null() {
        println!("  (not in the results)");
        return;
    }
    println!("  method: {}", s(&b["method"]));
    println!("  {:<16} {:>9} {:>9}  what", "step", "hot", "per call");
    for row in rows(&b["rows"]) {
        println!(
            "  {:<22} {:>9.1} {:>9.1}  {}",
            s(&row["name"]),
            f(&row["ns_hot_min"]),
            f(&row["ns_call_min"]),
            s(&row["what"])
        );
    }
    for sum in rows(&b["sums"]) {
        println!(
            "  sum {:<18} {:>9.1} {:>9.1}  (hot with a real FIB lookup: {:.1})",
            s(&sum["name"]),
            f(&sum["ns_hot"]),
            f(&sum["ns_call"]),
            f(&sum["ns_hot_with_fib"])
        );
    }
}

/// The section "End-to-end over veth (pps)".
fn print_end_to_end(e: &Value) {
    println!();
    println!("End-to-end over veth (pps)");
    if e.is_null() {
        println!("  (not in the results)");
        return;
    }
    println!("  method: {}", s(&e["method"]));
    println!(
        "  {:<18} {:>12} {:>12} {:>9} {:>9} {:>12}  what",
        "case", "forwarded", "offered", "x nft", "x plain", "gen ceiling"
    );
    let ceiling = f(&e["generator_ceiling_pps"]);
    for row in rows(&e["rows"]) {
        if row["forwarded_pps"].is_null() {
            println!("  {:<18} {:>12}  {}", s(&row["name"]), "-", s(&row["note"]));
            continue;
        }
        println!(
            "  {:<18} {:>12.0} {:>12.0} {:>9} {:>9} {:>12.0}  {}",
            s(&row["name"]),
            f(&row["forwarded_pps"]),
            f(&row["offered_pps"]),
            ratio(&row["ratio_to_nftables"]),
            ratio(&row["ratio_to_plain"]),
            ceiling,
            s(&row["what"])
        );
    }
}

/// The section "TCP with real clients and servers".
fn print_tcp(t: &Value) {
    println!();
    println!("TCP with real clients and servers (wrk + nginx, iperf3)");
    if t.is_null() {
        println!("  (not in the results)");
        return;
    }
    println!("  method: {}", s(&t["method"]));
    println!(
        "  {:<18} {:>10} {:>7} {:>7} {:>7} {:>9} {:>7} {:>7}",
        "path", "conn/s", "x nft", "x plain", "errors", "Gbit/s", "x nft", "x plain"
    );
    for row in rows(&t["rows"]) {
        println!(
            "  {:<18} {:>10.0} {:>7} {:>7} {:>7} {:>9.2} {:>7} {:>7}",
            s(&row["name"]),
            f(&row["conn_per_s"]),
            ratio(&row["conn_per_s_ratio_to_nftables"]),
            ratio(&row["conn_per_s_ratio_to_plain"]),
            row["wrk_errors"].as_u64().unwrap_or(0),
            f(&row["gbit_per_s"]),
            ratio(&row["gbit_per_s_ratio_to_nftables"]),
            ratio(&row["gbit_per_s_ratio_to_plain"]),
        );
    }
}

/// One SVG per group: file name and text.
fn charts(r: &Value) -> Vec<(&'static str, String)> {
    use chart::{BASELINE, Bar, OTHER, PLAIN, Panel, XDPLB, svg};
    let quick = if r["quick"].as_bool() == Some(true) {
        " (quick run)"
    } else {
        ""
    };
    let machine = format!(
        "kernel {}, {} × {}{quick}",
        s(&r["kernel"]),
        r["machine"]["cpus"],
        s(&r["machine"]["cpu_model"])
    );
    let mut out = Vec::new();

    // Per-packet cost.
    let tx = rows(&r["per_packet"])
        .find(|row| row["name"] == "baseline_tx")
        .map_or(f64::NAN, |row| f(&row["ns_min"]));
    let mut panel = Panel::new("ns per packet (minimum of 5 runs)", "ns per packet")
        .marker(
            format!("4× XDP_TX (established target) {:.0} ns", 4.0 * tx),
            4.0 * tx,
        )
        .marker(
            format!("8× XDP_TX (new-flow target) {:.0} ns", 8.0 * tx),
            8.0 * tx,
        );
    for row in rows(&r["per_packet"]) {
        let name = s(&row["name"]);
        let color = if name.starts_with("baseline") {
            BASELINE
        } else {
            XDPLB
        };
        panel = panel.bar(
            Bar::new(
                format!("{name} ({})", s(&row["method"])),
                f(&row["ns_min"]),
                format!(
                    "{:.0} ns, {:.1}× TX",
                    f(&row["ns_min"]),
                    f(&row["ratio_to_tx"])
                ),
            )
            .color(color),
        );
    }
    out.push((
        "per_packet.svg",
        svg(
            "xdplb: per-packet cost (BPF_PROG_TEST_RUN)",
            &format!("repeat=1: one call per packet, call overhead subtracted; repeat=N: hot loop; {machine}"),
            &[panel],
        ),
    ));

    // Scaling: one panel per line, with its spread.
    let mut panels = Vec::new();
    for line in rows(&r["scaling_lines"]) {
        let name = s(&line["line"]);
        let mut panel = Panel::new(
            format!(
                "by {name}: spread {:+.1}% (minimums), {:+.1}% (medians); target ±10%",
                100.0 * f(&line["spread_min"]),
                100.0 * f(&line["spread_median"])
            ),
            "ns per packet (tracked TCP ACK, repeat=1 method)",
        );
        for row in rows(&r["scaling"]).filter(|row| row["line"] == line["line"]) {
            panel = panel.bar(Bar::new(
                format!("{} {}", row["x"], name.replace('_', " ")),
                f(&row["ns_min"]),
                format!(
                    "{:.0} ns (median {:.0})",
                    f(&row["ns_min"]),
                    f(&row["ns_median"])
                ),
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
    let mut rings: Vec<u64> = rows(&r["maglev"])
        .filter_map(|row| row["ring_size"].as_u64())
        .collect();
    rings.dedup();
    let panels: Vec<Panel> = rings
        .iter()
        .map(|&ring| {
            let mut panel = Panel::new(format!("M = {ring}"), "ms to build the table (minimum)");
            for row in rows(&r["maglev"]).filter(|row| row["ring_size"] == ring) {
                panel = panel.bar(Bar::new(
                    format!("{} backends", row["backends"]),
                    f(&row["build_ms_min"]),
                    format!(
                        "{:.1} ms; one removed remaps {:.2}% (ideal {:.2}%)",
                        f(&row["build_ms_min"]),
                        100.0 * f(&row["remapped_share"]),
                        100.0 * f(&row["ideal_share"])
                    ),
                ));
            }
            panel
        })
        .collect();
    let cp = &r["control_plane"];
    let mut panels = panels;
    panels.push(
        Panel::new("CLI change (`xdplb backend set`) to new table live", "ms")
            .bar(Bar::new(
                "live in the data path",
                f(&cp["live_ms_median"]),
                format!(
                    "{:.1} ms median (min {:.1})",
                    f(&cp["live_ms_median"]),
                    f(&cp["live_ms_min"])
                ),
            ))
            .bars(rows(&cp["slots_write"]).map(|row| {
                Bar::new(
                    format!("writing {} slots", row["ring_size"]),
                    f(&row["ms_min"]),
                    format!("{:.1} ms (min), one map update per slot", f(&row["ms_min"])),
                )
                .color(OTHER)
            }))
            .bar(
                Bar::new(
                    "CLI process exited",
                    f(&cp["cli_ms_median"]),
                    format!(
                        "{:.1} ms median (min {:.1})",
                        f(&cp["cli_ms_median"]),
                        f(&cp["cli_ms_min"])
                    ),
                )
                .color(BASELINE),
            ),
    );
    out.push((
        "control_plane.svg",
        svg(
            "xdplb: Maglev table builds and control-plane latency",
            &machine,
            &panels,
        ),
    ));

    // Cost breakdown.
    let b = &r["breakdown"];
    let mut hot = Panel::new("hot loop (repeat=N), ns over XDP_PASS", "ns");
    let mut call = Panel::new("one call per packet (repeat=1), ns over XDP_PASS", "ns");
    for row in rows(&b["rows"]) {
        hot = hot.bar(Bar::new(
            s(&row["name"]),
            f(&row["ns_hot_min"]),
            format!("{:.1} ns", f(&row["ns_hot_min"])),
        ));
        call = call.bar(
            Bar::new(
                s(&row["name"]),
                f(&row["ns_call_min"]),
                format!("{:.1} ns", f(&row["ns_call_min"])),
            )
            .color(OTHER),
        );
    }
    for sum in rows(&b["sums"]) {
        hot = hot.bar(
            Bar::new(
                format!("sum: {}", s(&sum["name"])),
                f(&sum["ns_hot"]),
                format!("{:.1} ns", f(&sum["ns_hot"])),
            )
            .color(BASELINE),
        );
        call = call.bar(
            Bar::new(
                format!("sum: {}", s(&sum["name"])),
                f(&sum["ns_call"]),
                format!("{:.1} ns", f(&sum["ns_call"])),
            )
            .color(BASELINE),
        );
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
    let e = &r["end_to_end"];
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
    for row in rows(&e["rows"]) {
        let name = s(&row["name"]);
        pps = pps.bar(
            Bar::new(
                name.clone(),
                f(&row["forwarded_pps"]),
                format!(
                    "{:.0}k pps; × nft {}, × plain {}",
                    f(&row["forwarded_pps"]) / 1e3,
                    ratio(&row["ratio_to_nftables"]),
                    ratio(&row["ratio_to_plain"])
                ),
            )
            .color(color_of(&name)),
        );
    }
    let t = &r["tcp"];
    let mut conns = Panel::new(
        "TCP connections per second (wrk, Connection: close, nginx)",
        "connections/s",
    );
    let mut gbits = Panel::new("TCP throughput (iperf3, one stream)", "Gbit/s");
    for row in rows(&t["rows"]) {
        let name = s(&row["name"]);
        conns = conns.bar(
            Bar::new(
                name.clone(),
                f(&row["conn_per_s"]),
                format!(
                    "{:.0}/s; × nft {}, × plain {}",
                    f(&row["conn_per_s"]),
                    ratio(&row["conn_per_s_ratio_to_nftables"]),
                    ratio(&row["conn_per_s_ratio_to_plain"])
                ),
            )
            .color(color_of(&name)),
        );
        gbits = gbits.bar(
            Bar::new(
                name.clone(),
                f(&row["gbit_per_s"]),
                format!(
                    "{:.2} Gbit/s; × nft {}, × plain {}",
                    f(&row["gbit_per_s"]),
                    ratio(&row["gbit_per_s_ratio_to_nftables"]),
                    ratio(&row["gbit_per_s_ratio_to_plain"])
                ),
            )
            .color(color_of(&name)),
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
    for row in rows(&r["memory"]) {
        total += f(&row["bytes_per_flow"]);
        mem = mem.bar(Bar::new(
            format!("{} ({} entries)", s(&row["map"]), row["capacity"]),
            f(&row["bytes_per_flow"]),
            format!(
                "{:.1} B per flow, {:.1} MB",
                f(&row["bytes_per_flow"]),
                f(&row["memlock_bytes"]) / 1e6
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
