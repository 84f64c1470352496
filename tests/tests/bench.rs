//! Benchmarks, run by `cargo xtask bench [--quick]` (which sets `XDPLB_BENCH=1`); every other
//! run of this test, `cargo xtask test` included, returns at once.
//!
//! Results go to `$XDPLB_BENCH_OUT` as JSON; xtask prints them as a table.
//!
//! **Per-packet cost.** `BPF_PROG_TEST_RUN` with `repeat = N` runs the program again on the
//! buffer it already rewrote, so after the first run a translated packet no longer goes to the
//! VIP. So every measured packet is its own `repeat = 1` call, and its cost is the kernel's own
//! `duration` of that call (not the syscall's wall time): the mean over the calls, minus the same
//! mean for the `XDP_PASS` baseline (timer and dispatch overhead of a one-run call), plus the
//! `XDP_PASS` baseline's `duration` from one `repeat = N` call (what a run costs in a loop). The
//! `XDP_TX` baseline is measured both ways, which checks the method. The first call of every
//! case is checked (action, counter, rewritten addresses). The program runs without an ingress
//! interface, so translated packets end in `pass_fib` (FIB lookup included, no transmit).

mod common;

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
    time::Instant,
};

use aya::{
    maps::{HashMap, Map, MapData, MapInfo},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_common::{
    FlowKey,
    conntrack::FlowState,
    maglev::{DEFAULT_RING_SIZE, MaglevBackend, build_table, changed_slots},
    maps::{CONNTRACK_MAP, REVERSE_NAT_MAP},
};
use lb_tests::packet::{L4, describe, frame, tcp_flags};
use lb_user::{
    balancer::{BackendSpec, Balancer, Vip, VipOptions},
    loader::{BASELINE_PASS, BASELINE_TX, Loaded, load_baseline},
    maps::BpfMaps,
};
use serde_json::{Value, json};

const SYN: L4 = L4::Tcp(tcp_flags::SYN);
const ACK: L4 = L4::Tcp(tcp_flags::ACK);
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// Measurement runs per figure; min and median are reported.
const RUNS: usize = 5;

const TCP_VIP: &str = "198.19.0.1:80/tcp";
const UDP_VIP: &str = "198.19.0.1:53/udp";
const CLIENT: &str = "198.18.0.2";

struct Params {
    /// `repeat = 1` calls per case and run.
    calls: usize,
    /// `repeat` of the baselines' loop run.
    repeat: u32,
}

#[test]
#[ignore = "benchmark: needs root; run by `cargo xtask bench`"]
fn xtask_bench_suite() {
    if std::env::var("XDPLB_BENCH").as_deref() != Ok("1") {
        eprintln!("bench: skipped (only `cargo xtask bench` runs it, with XDPLB_BENCH=1)");
        return;
    }
    let quick = std::env::var("XDPLB_BENCH_QUICK").as_deref() == Ok("1");
    let params = if quick {
        Params {
            calls: 10_000,
            repeat: 500_000,
        }
    } else {
        Params {
            // 5 runs of 50,000 new TCP and as many new UDP flows: 500,000 flows, half the
            // connection table, so new flows never pay for LRU eviction.
            calls: 50_000,
            repeat: 5_000_000,
        }
    };
    let out = std::env::var("XDPLB_BENCH_OUT").unwrap_or_else(|_| "results.json".into());
    let cpu = pin_to_last_cpu();
    let start = Instant::now();

    let mut pass = load_baseline(BASELINE_PASS, "bench_pass").expect("baseline pass");
    let mut tx = load_baseline(BASELINE_TX, "bench_tx").expect("baseline tx");
    let pass = xdp(&mut pass, "bench_pass");
    let tx = xdp(&mut tx, "bench_tx");
    let mut loaded = common::load();
    let memory = memory(&mut loaded);
    let mut balancer = loaded.balancer(Default::default()).expect("balancer");
    for v in [TCP_VIP, UDP_VIP] {
        balancer
            .add_vip(vip(v), VipOptions::default())
            .expect("add vip");
        balancer
            .set_backends(&vip(v), backends(2))
            .expect("backends");
    }

    eprintln!(
        "bench: per-packet cost ({} calls x {RUNS} runs)",
        params.calls
    );
    let per_packet = per_packet(&mut loaded, pass, tx, &params);
    eprintln!("bench: scaling");
    let scaling = scaling(&mut loaded, &mut balancer, pass, &params);
    eprintln!("bench: maglev");
    let maglev = maglev();

    let results = json!({
        "quick": quick,
        "cpu": cpu,
        "kernel": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        "method": "repeat=1 test_run per packet; ns = mean(kernel duration) - same for XDP_PASS baseline + XDP_PASS baseline at repeat=N; no ingress ifindex (translated packets end in pass_fib)",
        "per_packet": per_packet,
        "scaling": scaling,
        "maglev": maglev,
        "memory": memory,
        "seconds": start.elapsed().as_secs_f64(),
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).expect("results directory");
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results).expect("json"))
        .unwrap_or_else(|err| panic!("writing {out}: {err}"));
    eprintln!("bench: wrote {out} in {:.1?}", start.elapsed());
}

/// One packet case of the per-packet table: its packets and what its first call must do.
struct Case {
    name: &'static str,
    what: &'static str,
    /// The packet of call `i` (distinct per call for new flows).
    packet: Box<dyn Fn(usize) -> Vec<u8>>,
    check: Check,
}

#[derive(Copy, Clone)]
enum Check {
    /// Passed translated: destination is one of the backends.
    ToBackend,
    /// Passed translated: source is the VIP.
    FromVip,
    /// Passed unchanged.
    Untouched,
}

fn per_packet(loaded: &mut Loaded, pass: &mut Xdp, tx: &mut Xdp, p: &Params) -> Vec<Value> {
    let tcp_vip = sa("198.19.0.1:80");
    let udp_vip = sa("198.19.0.1:53");
    // A tracked TCP flow and a tracked UDP flow, and the backend the TCP flow went to.
    let client = sa(&format!("{CLIENT}:40000"));
    let first = run_once(
        loaded.program().expect("program"),
        &frame(client, tcp_vip, SYN, &[]),
    );
    let backend = addrs(&first.1).1;
    run_once(
        loaded.program().expect("program"),
        &frame(client, udp_vip, L4::Udp, b"x"),
    );
    // New flows: distinct sources (10.0.0.0/8 and ports) for every call of every run.
    let new_source = |i: usize| {
        let i = u32::try_from(i).expect("call index");
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            1024 + (i % 60_000) as u16,
        )
    };
    let cases = vec![
        Case {
            name: "tcp_syn_new_flow",
            what: "TCP SYN to a VIP, new flow (schedule + create conntrack and reverse entries)",
            packet: Box::new(move |i| frame(new_source(i), tcp_vip, SYN, &[])),
            check: Check::ToBackend,
        },
        Case {
            name: "tcp_ack_tracked",
            what: "TCP ACK of a tracked flow",
            packet: Box::new(move |_| frame(client, tcp_vip, ACK, &[])),
            check: Check::ToBackend,
        },
        Case {
            name: "udp_tracked",
            what: "UDP to a VIP, tracked flow",
            packet: Box::new(move |_| frame(client, udp_vip, L4::Udp, b"x")),
            check: Check::ToBackend,
        },
        Case {
            name: "udp_new_flow",
            what: "UDP to a VIP, new flow",
            packet: Box::new(move |i| frame(new_source(i), udp_vip, L4::Udp, b"x")),
            check: Check::ToBackend,
        },
        Case {
            name: "tcp_reply",
            what: "reply direction (backend to client) of a tracked TCP flow",
            packet: Box::new(move |_| frame(backend, client, ACK, &[])),
            check: Check::FromVip,
        },
        Case {
            name: "non_vip",
            what: "TCP to an address that is no VIP",
            packet: Box::new(move |_| frame(client, sa("203.0.113.9:80"), ACK, &[])),
            check: Check::Untouched,
        },
    ];

    // Check the first call of every case (new flows: a tuple the runs below do not use).
    let check_index = RUNS * p.calls + 1;
    let mut outcomes = Vec::new();
    for case in &cases {
        let input = (case.packet)(check_index);
        let outcome = common::test_run(loaded, &input, None).expect("test_run");
        let shown = format!(
            "action {}, counters {:?}, {}",
            outcome.action,
            outcome.counters,
            describe(&outcome.output)
        );
        assert_eq!(outcome.action, XDP_PASS, "{}: {shown}", case.name);
        let (src, dst) = addrs(&outcome.output);
        match case.check {
            Check::ToBackend => assert!(
                dst.ip().to_string().starts_with("10.1."),
                "{}: not translated to a backend: {shown}",
                case.name
            ),
            Check::FromVip => assert_eq!(src, tcp_vip, "{}: {shown}", case.name),
            Check::Untouched => assert_eq!(outcome.output, input, "{}", case.name),
        }
        outcomes.push(outcome.counters.join(","));
    }
    let pass_frame = frame(client, tcp_vip, ACK, &[]);
    assert_eq!(run_once(pass, &pass_frame).0, XDP_PASS);
    let (action, swapped) = run_once(tx, &pass_frame);
    assert_eq!(action, XDP_TX);
    assert_eq!(swapped[..6], pass_frame[6..12], "bench_tx swaps MACs");

    // ns per packet of each run: [pass, tx, tx by the repeat=1 method, cases...]
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len() + 3];
    for run in 0..RUNS {
        let one = std::slice::from_ref(&pass_frame);
        let pass_loop = repeated(pass, &pass_frame, p.repeat);
        let pass_call = per_call(pass, one, p.calls);
        samples[0].push(pass_loop);
        samples[1].push(repeated(tx, &pass_frame, p.repeat));
        samples[2].push(per_call(tx, one, p.calls) - pass_call + pass_loop);
        for (i, case) in cases.iter().enumerate() {
            let packets: Vec<Vec<u8>> = (0..p.calls)
                .map(|call| (case.packet)(run * p.calls + call))
                .collect();
            let program = loaded.program().expect("program");
            samples[3 + i].push(per_call(program, &packets, p.calls) - pass_call + pass_loop);
        }
    }
    let tx_ns = min(&samples[1]);
    let row = |name: &str, what: &str, method: &str, outcome: &str, runs: &[f64]| {
        json!({
            "name": name,
            "what": what,
            "method": method,
            "outcome": outcome,
            "ns_min": min(runs),
            "ns_median": median(runs),
            "ratio_to_tx": min(runs) / tx_ns,
            "runs": runs,
        })
    };
    let mut rows = vec![
        row(
            "baseline_pass",
            "XDP_PASS baseline",
            "repeat=N",
            "XDP_PASS",
            &samples[0],
        ),
        row(
            "baseline_tx",
            "swap MACs + XDP_TX baseline",
            "repeat=N",
            "XDP_TX",
            &samples[1],
        ),
        row(
            "baseline_tx_check",
            "the XDP_TX baseline measured like the cases (method check)",
            "repeat=1",
            "XDP_TX",
            &samples[2],
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        rows.push(row(
            case.name,
            case.what,
            "repeat=1",
            &outcomes[i],
            &samples[3 + i],
        ));
    }
    rows
}

/// Established-flow cost against the number of backends behind the VIP, and against the
/// number of flows in the connection table.
fn scaling(
    loaded: &mut Loaded,
    balancer: &mut Balancer<BpfMaps>,
    pass: &mut Xdp,
    p: &Params,
) -> Vec<Value> {
    let tcp_vip = sa("198.19.0.1:80");
    let pass_frame = frame(tcp_vip, tcp_vip, ACK, &[]);
    let mut rows = Vec::new();
    let mut measure = |loaded: &mut Loaded, name: String, what: String, input: Vec<u8>| {
        let packets = [input];
        let runs: Vec<f64> = (0..RUNS)
            .map(|_| {
                let pass_loop = repeated(pass, &pass_frame, p.repeat);
                let pass_call = per_call(pass, &packets[..1], p.calls);
                let program = loaded.program().expect("program");
                per_call(program, &packets, p.calls) - pass_call + pass_loop
            })
            .collect();
        eprintln!("bench: {name}: {:.1} ns", min(&runs));
        rows.push(json!({
            "name": name,
            "what": what,
            "ns_min": min(&runs),
            "ns_median": median(&runs),
            "runs": runs,
        }));
    };

    // A fresh flow after each change of the backend set (maglev, equal weights).
    for (n, port) in [(2usize, 41_000u16), (100, 41_001), (1_000, 41_002)] {
        balancer
            .set_backends(&vip(TCP_VIP), backends(n))
            .expect("backends");
        let client = sa(&format!("{CLIENT}:{port}"));
        let (action, out) = run_once(
            loaded.program().expect("program"),
            &frame(client, tcp_vip, SYN, &[]),
        );
        assert_eq!(action, XDP_PASS);
        assert!(addrs(&out).1.ip().to_string().starts_with("10.1."));
        measure(
            loaded,
            format!("ack_{n}_backends"),
            format!("TCP ACK of a tracked flow, {n} backends (maglev)"),
            frame(client, tcp_vip, ACK, &[]),
        );
    }

    // The connection table holding 1,000, then 100,000 flows, in a freshly loaded program (the
    // one above holds the new flows of the per-packet runs): fill it with SYNs of distinct
    // 5-tuples (10.128.0.0/9) through test_run; the measured flow is one of them.
    let mut fresh = common::load();
    let mut fresh_balancer = fresh.balancer(Default::default()).expect("balancer");
    fresh_balancer
        .add_vip(vip(TCP_VIP), VipOptions::default())
        .expect("add vip");
    fresh_balancer
        .set_backends(&vip(TCP_VIP), backends(2))
        .expect("backends");
    let client = sa(&format!("{CLIENT}:42000"));
    run_once(
        fresh.program().expect("program"),
        &frame(client, tcp_vip, SYN, &[]),
    );
    let mut next = 0u32;
    for target in [1_000usize, 100_000] {
        let program = fresh.program().expect("program");
        while (next as usize) + 1 < target {
            let src = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + next)),
                1024 + (next % 60_000) as u16,
            );
            next += 1;
            run_once(program, &frame(src, tcp_vip, SYN, &[]));
        }
        let counted = tracked_flows(&mut fresh);
        assert_eq!(counted, target, "flows in the connection table");
        measure(
            &mut fresh,
            format!("ack_{target}_flows"),
            format!("TCP ACK of a tracked flow, connection table holding {counted} flows"),
            frame(client, tcp_vip, ACK, &[]),
        );
    }
    rows
}

/// Maglev table build time and the share of the table that moves when one backend goes.
fn maglev() -> Vec<Value> {
    let ring = DEFAULT_RING_SIZE;
    [10u32, 100, 1_000, 10_000]
        .into_iter()
        .map(|n| {
            let all: Vec<MaglevBackend> = (0..n)
                .map(|i| {
                    let mut addr = [0; 16];
                    addr[..4].copy_from_slice(&(0x0a01_0000 + i).to_be_bytes());
                    MaglevBackend::new(i, 1, addr, 8080u16.to_be_bytes())
                })
                .collect();
            let times: Vec<f64> = (0..RUNS)
                .map(|_| {
                    let start = Instant::now();
                    black_box(build_table(black_box(&all), ring).expect("table"));
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let before = build_table(&all, ring).expect("table");
            let mut fewer = all.clone();
            fewer.remove(n as usize / 2);
            let after = build_table(&fewer, ring).expect("table");
            let moved = changed_slots(&before, &after) as f64 / f64::from(ring);
            eprintln!("bench: maglev {n} backends: {:.2} ms", min(&times));
            json!({
                "backends": n,
                "ring_size": ring,
                "build_ms_min": min(&times),
                "build_ms_median": median(&times),
                "remapped_share": moved,
                "ideal_share": 1.0 / f64::from(n),
                "runs": times,
            })
        })
        .collect()
}

/// Bytes per tracked flow of the connection and reverse tables: the kernel's `memlock` of each
/// map (`/proc/self/fdinfo`) at its loaded capacity, divided by the capacity.
fn memory(loaded: &mut Loaded) -> Vec<Value> {
    let mut rows = Vec::new();
    for id in map_ids(loaded) {
        let info = MapInfo::from_id(id).expect("map info");
        let name = info.name_as_str().unwrap_or_default().to_owned();
        if name != CONNTRACK_MAP && name != REVERSE_NAT_MAP {
            continue;
        }
        let fd = info.fd().expect("map fd");
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))
                .expect("fdinfo");
        let memlock: u64 = fdinfo
            .lines()
            .find_map(|line| line.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("memlock in fdinfo");
        rows.push(json!({
            "map": name,
            "capacity": info.max_entries(),
            "key_size": info.key_size(),
            "value_size": info.value_size(),
            "memlock_bytes": memlock,
            "bytes_per_flow": memlock as f64 / f64::from(info.max_entries()),
        }));
    }
    assert_eq!(rows.len(), 2, "both flow tables found");
    rows
}

/// Flows in the connection table: walks it, through its id (the balancer owns the map).
fn tracked_flows(loaded: &mut Loaded) -> usize {
    let id = map_ids(loaded)
        .into_iter()
        .find(|&id| {
            MapInfo::from_id(id).is_ok_and(|info| info.name_as_str() == Some(CONNTRACK_MAP))
        })
        .expect("connection table");
    let map = Map::LruHashMap(MapData::from_id(id).expect("map"));
    let table: HashMap<_, FlowKey, FlowState> = map.try_into().expect("connection table type");
    table.keys().filter(Result::is_ok).count()
}

/// Ids of the maps the balancer program uses.
fn map_ids(loaded: &mut Loaded) -> Vec<u32> {
    loaded
        .program()
        .expect("program")
        .info()
        .expect("program info")
        .map_ids()
        .expect("map ids")
        .expect("kernel reports map ids")
}

/// Pins this thread to the last CPU it may run on; returns that CPU.
fn pin_to_last_cpu() -> usize {
    use nix::{sched::CpuSet, unistd::Pid};
    let allowed = nix::sched::sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
    let cpu = (0..CpuSet::count())
        .rev()
        .find(|&c| allowed.is_set(c).unwrap_or(false))
        .expect("some CPU");
    let mut one = CpuSet::new();
    one.set(cpu).expect("cpu set");
    nix::sched::sched_setaffinity(Pid::from_raw(0), &one).expect("sched_setaffinity");
    cpu
}

/// The one XDP program of a baseline object.
fn xdp<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("no XDP program {name}"))
}

/// One call with `repeat = 1`: the action and the output frame.
fn run_once(program: &mut Xdp, input: &[u8]) -> (u32, Vec<u8>) {
    let mut output = vec![0u8; input.len() + 512];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut output),
            ..TestRunOptions::new()
        })
        .expect("test_run");
    output.truncate(result.data_size_out as usize);
    (result.return_value, output)
}

/// Mean kernel-measured ns of `calls` calls with `repeat = 1`, cycling through `packets`.
fn per_call(program: &mut Xdp, packets: &[Vec<u8>], calls: usize) -> f64 {
    let mut total = 0u128;
    for call in 0..calls {
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&packets[call % packets.len()]),
                ..TestRunOptions::new()
            })
            .expect("test_run");
        total += result.duration.as_nanos();
    }
    total as f64 / calls as f64
}

/// Kernel-measured ns per run of one call with `repeat` runs (only for programs whose path does
/// not depend on what they wrote: the baselines).
fn repeated(program: &mut Xdp, input: &[u8], repeat: u32) -> f64 {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(input),
            repeat,
            ..TestRunOptions::new()
        })
        .expect("test_run");
    result.duration.as_nanos() as f64
}

/// Source and destination of a frame's IP/L4 headers.
fn addrs(frame: &[u8]) -> (SocketAddr, SocketAddr) {
    let sliced = SlicedPacket::from_ethernet(frame).expect("frame parses");
    let (src, dst): (IpAddr, IpAddr) = match sliced.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => panic!("no IP header"),
    };
    let (sp, dp) = match sliced.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => panic!("no TCP/UDP header"),
    };
    (SocketAddr::new(src, sp), SocketAddr::new(dst, dp))
}

/// `n` equal backends 10.1.x.y:8080.
fn backends(n: usize) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| {
            let addr = Ipv4Addr::from(0x0a01_0000 + u32::try_from(i).expect("backend index") + 2);
            BackendSpec::new(SocketAddr::new(addr.into(), 8080), 1)
        })
        .collect()
}

fn sa(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| panic!("bad socket address {s}"))
}

fn vip(s: &str) -> Vip {
    s.parse().unwrap_or_else(|err| panic!("bad VIP {s}: {err}"))
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
