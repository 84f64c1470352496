//! `cargo xtask bench [--quick]`: builds in release, runs the benchmarks (the `bench` test of
//! `lb-tests`, which needs root), prints a table and leaves `target/bench/results.json`.

use clap::Args;
use serde_json::Value;

use crate::{cargo, run_step, target_dir};

#[derive(Args)]
pub struct BenchArgs {
    /// Fewer calls per figure: under 3 minutes instead of up to 20.
    #[arg(long)]
    quick: bool,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !lb_tests::is_root() {
        anyhow::bail!("the benchmarks run the XDP program through BPF_PROG_TEST_RUN: run as root");
    }
    // `target/bench/results.json`: `target_dir` appends a profile name, here `bench`.
    let out = target_dir("bench").join("results.json");
    run_step(
        if args.quick {
            "benchmarks (quick)"
        } else {
            "benchmarks"
        },
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "lb-tests",
                "--test",
                "bench",
                "--",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("XDPLB_BENCH", "1")
            .env("XDPLB_BENCH_QUICK", if args.quick { "1" } else { "0" })
            .env("XDPLB_BENCH_OUT", &out),
    )?;
    let text = std::fs::read_to_string(&out)
        .map_err(|err| anyhow::anyhow!("reading {}: {err}", out.display()))?;
    let results: Value = serde_json::from_str(&text)?;
    print_table(&results);
    println!();
    println!("results: {}", out.display());
    Ok(())
}

fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    println!();
    println!(
        "xdplb benchmarks{} on CPU {} (kernel {})",
        if r["quick"].as_bool() == Some(true) {
            " (quick)"
        } else {
            ""
        },
        r["cpu"],
        s(&r["kernel"])
    );
    println!("method: {}", s(&r["method"]));
    println!();
    println!("Per-packet cost (BPF_PROG_TEST_RUN, 5 runs)");
    println!(
        "  {:<20} {:>9} {:>9} {:>7}  {:<9} {:<22} what",
        "case", "ns min", "ns med", "x TX", "method", "outcome"
    );
    for row in r["per_packet"].as_array().into_iter().flatten() {
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
    for row in r["scaling"].as_array().into_iter().flatten() {
        println!(
            "  {:<20} {:>9.1} {:>9.1}  {}",
            s(&row["name"]),
            f(&row["ns_min"]),
            f(&row["ns_median"]),
            s(&row["what"])
        );
    }
    println!();
    println!("Maglev table build (lb_common::maglev::build_table, in-process, release)");
    println!(
        "  {:>8} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "backends", "M", "ms min", "ms med", "remapped", "ideal 1/N"
    );
    for row in r["maglev"].as_array().into_iter().flatten() {
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
    println!();
    println!("Memory (kernel memlock of the map / capacity)");
    println!(
        "  {:<12} {:>9} {:>5} {:>6} {:>14} {:>10}",
        "map", "capacity", "key", "value", "memlock bytes", "B/flow"
    );
    let mut total = 0.0;
    for row in r["memory"].as_array().into_iter().flatten() {
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
}

/// The section "End-to-end over veth (pps)".
fn print_end_to_end(e: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let ratio = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
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
    for row in e["rows"].as_array().into_iter().flatten() {
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
