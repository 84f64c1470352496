//! The benchmarks, a bench target of its own (`harness = false`), run by
//! `cargo xtask bench [--quick] [--only GROUPS]`, which builds in release and runs, as root,
//! `cargo bench -p lb-tests --bench xdplb -- [--quick] [--only GROUPS] --out PATH`.
//!
//! Results go to `PATH` as JSON; xtask prints them as a table.
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
//!
//! **End to end over veth.** Forwarded packets per second of small UDP frames through a gateway
//! namespace running xdplb, nftables DNAT or plain routing (see [`end_to_end`]).

mod control;
mod profile;
mod steps;
mod tcp;
mod walk;

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
    process::Command,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapInfo},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_common::{
    Counter, FlowKey,
    conntrack::FlowState,
    maglev::{DEFAULT_RING_SIZE, MAX_RING_SIZE, MaglevBackend, build_table, changed_slots},
    maps::{CONNTRACK_MAP, REVERSE_NAT_MAP},
};
use lb_tests::bench::{
    EndToEnd, EndToEndRow, Forwarded, Machine, MaglevRow, MemoryRow, PacketCost, PacketRow, Path,
    Results, ScalingLine, ScalingRow, SlotsWrite,
};
use lb_tests::{
    fixture::XdpAction,
    netns::{GW_CLIENT_IF, HOST_IF, Netns, Topology, gw_backend_if, net_v4},
    packet::{L4, Link, describe, frame, frame_with, tcp_flags},
    sa, vip,
};
use lb_user::{
    balancer::{BackendSpec, Balancer, Forwarding as Mode, VipOptions},
    bench_objects::{BASELINE_DROP, BASELINE_GEN, BASELINE_PASS, BASELINE_TX, load_baseline},
    counters::Counters,
    loader::{AttachMode, LoadOptions, Loaded, if_index},
    maps::BpfMaps,
};
use serde_json::Value;

const SYN: L4 = L4::Tcp(tcp_flags::SYN);
const ACK: L4 = L4::Tcp(tcp_flags::ACK);
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

/// The command line: `--quick`, `--only GROUPS` (comma-separated), `--out PATH`, `--profile`;
/// and `--bench`, which `cargo bench` adds.
struct Args {
    quick: bool,
    /// Groups to run; empty: all.
    only: String,
    out: String,
    /// Profile one more round of the end-to-end xdplb case with `perf record`.
    profile: bool,
}

impl Args {
    fn parse() -> Self {
        let mut args = Self {
            quick: false,
            only: String::new(),
            out: "results.json".to_owned(),
            profile: false,
        };
        let mut given = std::env::args().skip(1);
        while let Some(arg) = given.next() {
            let mut value = |name: &str| {
                given
                    .next()
                    .unwrap_or_else(|| panic!("{name} needs a value"))
            };
            match arg.as_str() {
                "--quick" => args.quick = true,
                "--only" => args.only = value("--only"),
                "--out" => args.out = value("--out"),
                "--profile" => args.profile = true,
                "--bench" => {}
                other => panic!(
                    "unknown argument {other:?} (--quick, --only GROUPS, --out PATH, --profile)"
                ),
            }
        }
        args
    }
}

fn main() {
    let Args {
        quick,
        only,
        out,
        profile,
    } = Args::parse();
    let out_dir = std::path::Path::new(&out)
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_owned();
    if !lb_tests::is_root() {
        panic!("the benchmarks run the XDP program through BPF_PROG_TEST_RUN: run as root");
    }
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
    let machine = machine();
    let cpu = pin_to_last_cpu();
    let start = Instant::now();

    let mut pass = load_baseline(BASELINE_PASS, "bench_pass").expect("baseline pass");
    let mut tx = load_baseline(BASELINE_TX, "bench_tx").expect("baseline tx");
    let pass = xdp(&mut pass, "bench_pass");
    let tx = xdp(&mut tx, "bench_tx");
    let mut loaded = lb_tests::program::load();
    let memory = memory(&mut loaded);
    let mut balancer = loaded.balancer(Default::default()).expect("balancer");
    add_case_vips(&mut balancer);

    // `--only tcp,end_to_end` runs only those groups (the others are null).
    let wanted = |group: &str| only.is_empty() || only.split(',').any(|g| g.trim() == group);
    let fwd = (wanted("per_packet") || wanted("scaling")).then(Forwarding::new);

    let (mut per_packet, mut scaling_rows, mut scaling_lines) =
        (Vec::new(), Vec::new(), Vec::new());
    if wanted("per_packet") {
        eprintln!(
            "bench: per-packet cost ({} calls x {RUNS} runs)",
            params.calls
        );
        // The forwarding path's column has a program of its own: its new flows do not fill the
        // other's connection table.
        let fwd = fwd.as_ref().expect("forwarding gateway");
        let mut fwd_loaded = lb_tests::program::load();
        let mut fwd_balancer = fwd_loaded.balancer(Default::default()).expect("balancer");
        add_case_vips(&mut fwd_balancer);
        fwd.add_tx_ports(&mut fwd_loaded);
        per_packet = per_packet_rows(
            &mut [
                Column {
                    path: Path::Forwarding,
                    fwd: Some(fwd),
                    loaded: &mut fwd_loaded,
                },
                Column {
                    path: Path::ForwardingOff,
                    fwd: None,
                    loaded: &mut loaded,
                },
            ],
            pass,
            tx,
            &params,
        );
        drop(fwd_balancer);
        drop(fwd_loaded);
        let tx_ns = per_packet
            .iter()
            .find(|row| row.name == "baseline_tx")
            .and_then(|row| row.forwarding_off.as_ref())
            .map(|cost| cost.ns_min)
            .expect("baseline_tx row");
        per_packet.extend(hot_rows(&mut loaded, &mut balancer, &params, tx_ns));
    }
    if wanted("scaling") {
        eprintln!("bench: scaling");
        (scaling_rows, scaling_lines) = scaling(
            &mut loaded,
            &mut balancer,
            pass,
            fwd.as_ref().expect("forwarding gateway"),
            &params,
            quick,
        );
    }
    drop(balancer);
    drop(loaded);
    drop(fwd);
    let maglev = wanted("maglev").then(|| {
        eprintln!("bench: maglev");
        maglev()
    });
    let control_plane = wanted("control_plane").then(|| {
        eprintln!("bench: control plane (agent and CLI)");
        let mut cp = control::control_plane(if quick { 6 } else { 20 });
        cp.slots_write = slots_write();
        cp.conntrack_walk = Some(control::conntrack_walk(if quick { 3 } else { 10 }, quick));
        cp
    });
    let breakdown = wanted("breakdown").then(|| {
        eprintln!("bench: cost breakdown (one program per step)");
        steps::breakdown(&params)
    });
    // Out of the way of the per-packet figures: the generator has a CPU, the gateway the other.
    let end_to_end = wanted("end_to_end").then(|| {
        eprintln!("bench: end to end over veth");
        let profile = profile.then_some(out_dir.as_path());
        if quick {
            end_to_end(3, 1, profile)
        } else {
            end_to_end(5, 2, profile)
        }
    });
    let tcp = wanted("tcp").then(|| {
        eprintln!("bench: TCP connections and throughput");
        if quick {
            tcp::tcp(1, 2)
        } else {
            tcp::tcp(5, 3)
        }
    });

    let agent_walk = wanted("agent_walk").then(|| {
        eprintln!("bench: the agent's walk of a full connection table");
        walk::agent_walk(if quick { 3 } else { 5 })
    });

    let mut results = Results {
        quick,
        cpu,
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        machine,
        method: "repeat=1 test_run per packet; ns = mean(kernel duration) - same for XDP_PASS \
                 baseline + XDP_PASS baseline at repeat=N, per column; forwarding path: in a \
                 gateway namespace with forwarding on, routes and permanent neighbours, \
                 ingress_ifindex gc (replies gb0), egress in TX_PORTS (translated packets end \
                 in fwd_redirect / reply_redirect); forwarding off: host namespace, no ingress \
                 ifindex (translated packets end in pass_fib)"
            .to_owned(),
        per_packet,
        only,
        scaling: scaling_rows,
        scaling_lines,
        maglev,
        control_plane,
        breakdown,
        memory,
        end_to_end,
        tcp,
        agent_walk,
        goals: Vec::new(),
        seconds: start.elapsed().as_secs_f64(),
    };
    results.goals = lb_tests::bench::goals(&results);
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
    packet: Box<dyn Fn(usize) -> Vec<u8> + Send + Sync>,
    check: Check,
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Check {
    /// Translated: destination is one of the backends.
    ToBackend,
    /// A reply, translated: source is the VIP.
    FromVip,
    /// Passed unchanged.
    Untouched,
    /// `dsr-l2`: the IP packet unchanged, sent to backend 0's MAC (forwarding path; dropped as
    /// `drop_dsr_no_route` with forwarding off, where the FIB gives no route).
    Direct,
    /// `ipip`: the packet unchanged inside an outer IPv4 header (protocol 4), sent to backend
    /// 0's MAC (forwarding path; dropped as `drop_ipip_no_route` with forwarding off).
    Encapsulated,
}

/// A `dsr-l2` VIP whose one backend is backend 0's own address (on the link, as `dsr-l2`
/// needs; the benchmark's other backends are routed via backend 0).
const DSR_VIP: &str = "198.19.0.2:80/tcp";
/// An `ipip` VIP, its one backend backend 0's own address, as for [`DSR_VIP`].
const IPIP_VIP: &str = "198.19.0.3:80/tcp";

/// The benchmark's backends ([`backends`]), which the forwarding gateway routes via backend 0.
const BACKENDS_NET: &str = "10.1.0.0/16";

/// A gateway namespace on the forwarding path: IPv4 forwarding on, the client net on `gc`,
/// backend 0's net on `gb0`, the benchmark's backends ([`BACKENDS_NET`]) routed via backend
/// 0's address, and the client's and backend 0's MAC addresses resolved (permanent neighbour
/// entries), so that `bpf_fib_lookup` succeeds and a translated packet leaves by
/// `XDP_REDIRECT` (or `XDP_TX` when its egress is the interface it came in on).
struct Forwarding {
    topo: Topology,
    /// ifindexes of `gc` and `gb0` in the gateway.
    gc: u32,
    gb0: u32,
    client_mac: [u8; 6],
    b0_mac: [u8; 6],
}

impl Forwarding {
    fn new() -> Self {
        let topo = Topology::new(1).unwrap_or_else(|err| panic!("topology: {err:#}"));
        let gw = &topo.gateway;
        let mac = |ns: &Netns| {
            ns.mac(HOST_IF)
                .unwrap_or_else(|err| panic!("MAC of {}: {err:#}", ns.name))
        };
        let (client_mac, b0_mac) = (mac(&topo.client), mac(&topo.backends[0]));
        let gb0 = gw_backend_if(0);
        let b0 = topo.backends[0].v4.to_string();
        for (ip, mac, dev) in [
            (topo.client.v4.to_string(), client_mac, GW_CLIENT_IF),
            (b0.clone(), b0_mac, gb0.as_str()),
        ] {
            gw.permanent_neighbour(&ip, mac, dev)
                .unwrap_or_else(|err| panic!("neighbour entry of {ip}: {err:#}"));
        }
        ns_ok(
            gw,
            "ip",
            &["route", "add", BACKENDS_NET, "via", &b0, "dev", &gb0],
        );
        let (gc, gb0) = gw.run(|| {
            (
                if_index(GW_CLIENT_IF).expect("gc"),
                if_index(&gb0).expect("gb0"),
            )
        });
        Self {
            topo,
            gc,
            gb0,
            client_mac,
            b0_mac,
        }
    }

    /// Runs `f` in the gateway namespace, on the benchmark's CPU.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.topo.gateway.run(|| {
            pin_to_last_cpu();
            f()
        })
    }

    /// Lets `loaded` redirect packets out of `gc` and `gb0`.
    fn add_tx_ports(&self, loaded: &mut Loaded) {
        self.run(|| {
            for iface in [GW_CLIENT_IF, "gb0"] {
                loaded
                    .add_tx_port(iface)
                    .unwrap_or_else(|err| panic!("TX_PORTS: {err:#}"));
            }
        });
    }

    /// The `xdp_md` of a packet of `len` bytes arriving on `gc` (or on `gb0`, a reply).
    fn ctx(&self, len: usize, reply: bool) -> Vec<u8> {
        xdp_ctx(if reply { self.gb0 } else { self.gc }, len)
    }
}

/// Runs `f` where a column is measured: in the forwarding gateway, or on this thread (the host
/// namespace, forwarding off).
fn at<R: Send>(fwd: Option<&Forwarding>, f: impl FnOnce() -> R + Send) -> R {
    match fwd {
        Some(fwd) => fwd.run(f),
        None => f(),
    }
}

/// A column of the per-packet table: a loaded program with the cases' VIPs
/// ([`add_case_vips`]), and the forwarding gateway it runs in (`None`: forwarding off).
struct Column<'a> {
    path: Path,
    fwd: Option<&'a Forwarding>,
    loaded: &'a mut Loaded,
}

/// [`TCP_VIP`] and [`UDP_VIP`], two backends each.
fn add_case_vips(balancer: &mut Balancer<BpfMaps>) {
    for v in [TCP_VIP, UDP_VIP] {
        balancer
            .add_vip(vip(v), VipOptions::default())
            .expect("add vip");
        balancer
            .set_backends(&vip(v), backends(2))
            .expect("backends");
    }
    let dsr = VipOptions {
        forwarding: Mode::DsrL2,
        ..VipOptions::default()
    };
    balancer.add_vip(vip(DSR_VIP), dsr).expect("dsr vip");
    balancer
        .set_backends(
            &vip(DSR_VIP),
            vec![BackendSpec::new(sa(&format!("{}:80", net_v4(1, 2))), 1)],
        )
        .expect("dsr backend");
    let ipip = VipOptions {
        forwarding: Mode::Ipip,
        ..VipOptions::default()
    };
    balancer.add_vip(vip(IPIP_VIP), ipip).expect("ipip vip");
    balancer
        .set_backends(
            &vip(IPIP_VIP),
            vec![BackendSpec::new(sa(&format!("{}:80", net_v4(1, 2))), 1)],
        )
        .expect("ipip backend");
}

/// The per-packet cases, with the tracked flows they need set up in `column`'s program.
fn cases(column: &mut Column) -> Vec<Case> {
    let tcp_vip = sa("198.19.0.1:80");
    let udp_vip = sa("198.19.0.1:53");
    // A tracked TCP flow and a tracked UDP flow, and the backend the TCP flow went to.
    let client = sa(&format!("{CLIENT}:40000"));
    let dsr_vip = sa("198.19.0.2:80");
    let syn = frame(client, tcp_vip, SYN, &[]);
    let udp = frame(client, udp_vip, L4::Udp, b"x");
    let dsr_syn = frame(client, dsr_vip, SYN, &[]);
    let ipip_vip = sa("198.19.0.3:80");
    let ipip_syn = frame(client, ipip_vip, SYN, &[]);
    let ctx = |len: usize| column.fwd.map(|fwd| fwd.ctx(len, false));
    let (syn_ctx, udp_ctx) = (ctx(syn.len()), ctx(udp.len()));
    let loaded = &mut *column.loaded;
    let backend = at(column.fwd, || {
        let program = loaded.program().expect("program");
        let first = run_once_ctx(program, &syn, syn_ctx.as_deref());
        run_once_ctx(program, &udp, udp_ctx.as_deref());
        run_once_ctx(program, &dsr_syn, syn_ctx.as_deref());
        run_once_ctx(program, &ipip_syn, syn_ctx.as_deref());
        addrs(&first.1).1
    });
    // New flows: distinct sources (10.0.0.0/8 and ports) for every call of every run.
    let new_source = |i: usize| {
        let i = u32::try_from(i).expect("call index");
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            1024 + (i % 60_000) as u16,
        )
    };
    vec![
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
            what: "reply direction (backend to client) of a tracked TCP flow (arrives on gb0)",
            packet: Box::new(move |_| frame(backend, client, ACK, &[])),
            check: Check::FromVip,
        },
        Case {
            name: "dsr_tcp_syn_new_flow",
            what: "TCP SYN to a dsr-l2 VIP, new flow (schedule + embryonic entry, MACs only)",
            packet: Box::new(move |i| frame(new_source(i), dsr_vip, SYN, &[])),
            check: Check::Direct,
        },
        Case {
            name: "dsr_tcp_ack_tracked",
            what: "TCP ACK of a tracked flow of a dsr-l2 VIP (MACs only)",
            packet: Box::new(move |_| frame(client, dsr_vip, ACK, &[])),
            check: Check::Direct,
        },
        Case {
            name: "ipip_tcp_syn_new_flow",
            what: "TCP SYN to an ipip VIP, new flow (schedule + embryonic entry, encapsulated)",
            packet: Box::new(move |i| frame(new_source(i), ipip_vip, SYN, &[])),
            check: Check::Encapsulated,
        },
        Case {
            name: "ipip_tcp_ack_tracked",
            what: "TCP ACK of a tracked flow of an ipip VIP (encapsulated)",
            packet: Box::new(move |_| frame(client, ipip_vip, ACK, &[])),
            check: Check::Encapsulated,
        },
        Case {
            name: "non_vip",
            what: "TCP to an address that is no VIP",
            packet: Box::new(move |_| frame(client, sa("203.0.113.9:80"), ACK, &[])),
            check: Check::Untouched,
        },
    ]
}

/// Checks the first call of `case` in `column` (new flows: a tuple the runs do not use):
/// action, outcome counter, rewritten addresses and, on the forwarding path, MAC addresses.
/// Returns the outcome counter.
fn check_case(column: &mut Column, case: &Case, index: usize) -> String {
    let tcp_vip = sa("198.19.0.1:80");
    let input = (case.packet)(index);
    let reply = case.check == Check::FromVip;
    let ingress = column.fwd.map(|fwd| if reply { fwd.gb0 } else { fwd.gc });
    let loaded = &mut *column.loaded;
    let outcome = at(column.fwd, || {
        lb_tests::program::test_run(loaded, &input, ingress).expect("test_run")
    });
    let shown = format!(
        "{} ({}): action {}, counters {:?}, {}",
        case.name,
        column.path.name(),
        outcome.action,
        outcome.counters,
        describe(&outcome.output)
    );
    let forwarding = column.fwd.is_some();
    let (action, counter) = match (case.check, forwarding) {
        (Check::Untouched, _) => (XdpAction::Pass, Counter::PassNonVip),
        (Check::Direct, true) => (XdpAction::Redirect, Counter::FwdRedirect),
        (Check::Direct, false) => (XdpAction::Drop, Counter::DropDsrNoRoute),
        (Check::Encapsulated, true) => (XdpAction::Redirect, Counter::FwdRedirect),
        (Check::Encapsulated, false) => (XdpAction::Drop, Counter::DropIpipNoRoute),
        (Check::ToBackend, true) => (XdpAction::Redirect, Counter::FwdRedirect),
        (Check::FromVip, true) => (XdpAction::Redirect, Counter::ReplyRedirect),
        (_, false) => (XdpAction::Pass, Counter::PassFib),
    };
    assert_eq!(outcome.action, action as u32, "{shown}");
    assert_eq!(outcome.counters, [counter.name()], "{shown}");
    if case.check == Check::Encapsulated {
        if forwarding {
            assert_eq!(outcome.output[14 + 9], 4, "outer protocol: {shown}");
            assert_eq!(
                outcome.output[14 + 20..],
                input[14..],
                "inner packet: {shown}"
            );
            assert_eq!(
                outcome.output[..6],
                column.fwd.map(|f| f.b0_mac).unwrap_or_default()
            );
        } else {
            assert_eq!(outcome.output, input, "{shown}");
        }
        return counter.name().to_owned();
    }
    let (src, dst) = addrs(&outcome.output);
    match case.check {
        Check::ToBackend => assert!(
            dst.ip().to_string().starts_with("10.1."),
            "not translated to a backend: {shown}"
        ),
        Check::FromVip => assert_eq!(src, tcp_vip, "{shown}"),
        Check::Untouched => assert_eq!(outcome.output, input, "{shown}"),
        Check::Direct => assert_eq!(outcome.output[12..], input[12..], "{shown}"),
        Check::Encapsulated => unreachable!("checked above"),
    }
    if let (Some(fwd), Check::ToBackend | Check::FromVip | Check::Direct) = (column.fwd, case.check)
    {
        let next_hop = if reply { fwd.client_mac } else { fwd.b0_mac };
        assert_eq!(outcome.output[..6], next_hop, "next hop's MAC: {shown}");
    }
    counter.name().to_owned()
}

/// The per-packet table: the baselines and every case in each column, the columns measured in
/// turns (run 1 of every column, then run 2, ...).
fn per_packet_rows(
    columns: &mut [Column],
    pass: &mut Xdp,
    tx: &mut Xdp,
    p: &Params,
) -> Vec<PacketRow> {
    let client = sa(&format!("{CLIENT}:40000"));
    let pass_frame = frame(client, sa("198.19.0.1:80"), ACK, &[]);
    assert_eq!(run_once(pass, &pass_frame).0, XdpAction::Pass as u32);
    let (action, swapped) = run_once(tx, &pass_frame);
    assert_eq!(action, XdpAction::Tx as u32);
    assert_eq!(swapped[..6], pass_frame[6..12], "bench_tx swaps MACs");

    let check_index = RUNS * p.calls + 1;
    let cases: Vec<Vec<Case>> = columns.iter_mut().map(cases).collect();
    let outcomes: Vec<Vec<String>> = columns
        .iter_mut()
        .zip(&cases)
        .map(|(column, cases)| {
            cases
                .iter()
                .map(|case| check_case(column, case, check_index))
                .collect()
        })
        .collect();

    // ns per packet of each column and run: [pass, tx, tx by the repeat=1 method, cases...]
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); 3 + cases[0].len()]; columns.len()];
    for run in 0..RUNS {
        for ((column, cases), samples) in columns.iter_mut().zip(&cases).zip(&mut samples) {
            let fwd = column.fwd;
            let ctx_of = |packet: &[u8], reply: bool| fwd.map(|fwd| fwd.ctx(packet.len(), reply));
            let pass_ctx = ctx_of(&pass_frame, false);
            let loaded = &mut *column.loaded;
            let (pass, tx, pass_frame) = (&mut *pass, &mut *tx, &pass_frame);
            at(fwd, || {
                let one = std::slice::from_ref(pass_frame);
                let ctx = pass_ctx.as_deref();
                let pass_loop = repeated_ctx(pass, pass_frame, ctx, p.repeat);
                let pass_call = per_call_ctx(pass, one, ctx, p.calls);
                samples[0].push(pass_loop);
                samples[1].push(repeated_ctx(tx, pass_frame, ctx, p.repeat));
                samples[2].push(per_call_ctx(tx, one, ctx, p.calls) - pass_call + pass_loop);
                for (i, case) in cases.iter().enumerate() {
                    let packets: Vec<Vec<u8>> = (0..p.calls)
                        .map(|call| (case.packet)(run * p.calls + call))
                        .collect();
                    let ctx = ctx_of(&packets[0], case.check == Check::FromVip);
                    let program = loaded.program().expect("program");
                    let ns = per_call_ctx(program, &packets, ctx.as_deref(), p.calls);
                    samples[3 + i].push(ns - pass_call + pass_loop);
                }
            });
        }
    }

    let names: Vec<(&str, &str, &str)> = [
        ("baseline_pass", "XDP_PASS baseline", "repeat=N"),
        ("baseline_tx", "swap MACs + XDP_TX baseline", "repeat=N"),
        (
            "baseline_tx_check",
            "the XDP_TX baseline measured like the cases (method check)",
            "repeat=1",
        ),
    ]
    .into_iter()
    .chain(
        cases[0]
            .iter()
            .map(|case| (case.name, case.what, "repeat=1")),
    )
    .collect();
    let mut rows: Vec<PacketRow> = names
        .iter()
        .map(|(name, what, method)| PacketRow {
            name: (*name).to_owned(),
            what: (*what).to_owned(),
            method: (*method).to_owned(),
            forwarding: None,
            forwarding_off: None,
        })
        .collect();
    for (c, column) in columns.iter().enumerate() {
        let tx_ns = min(&samples[c][1]);
        for (k, row) in rows.iter_mut().enumerate() {
            let runs = &samples[c][k];
            let outcome = match k {
                0 => "XDP_PASS".to_owned(),
                1 | 2 => "XDP_TX".to_owned(),
                _ => outcomes[c][k - 3].clone(),
            };
            let cost = PacketCost {
                outcome,
                ns_min: min(runs),
                ns_median: median(runs),
                ratio_to_tx: min(runs) / tx_ns,
                runs: runs.clone(),
            };
            eprintln!(
                "bench: {} ({}): {:.1} ns",
                row.name,
                column.path.name(),
                cost.ns_min
            );
            match column.path {
                Path::Forwarding => row.forwarding = Some(cost),
                Path::ForwardingOff => row.forwarding_off = Some(cost),
            }
        }
    }
    rows
}

/// Established-flow cost in a hot loop: one call with `repeat = N`, like the baselines.
///
/// A translated packet no longer goes to the VIP, so two VIPs are set up as each other's only
/// backend: a packet to VIP A is translated to VIP B, and on the next run, as a packet to VIP B,
/// back to VIP A. Every run is then a tracked TCP flow of a VIP (lookups, conntrack hit, NAT,
/// checksums, FIB, counters), and the packet is the original again every second run. The runs'
/// outcome counters are checked: exactly `repeat` translated packets, nothing else. Beside it,
/// the non-VIP case, which leaves the packet as it was, the same way.
fn hot_rows(
    loaded: &mut Loaded,
    balancer: &mut Balancer<BpfMaps>,
    p: &Params,
    tx_ns: f64,
) -> Vec<PacketRow> {
    let (a, b) = (sa("198.19.0.10:80"), sa("198.19.0.11:80"));
    for (this, other) in [(a, b), (b, a)] {
        let v = vip(&format!("{this}/tcp"));
        balancer.add_vip(v, VipOptions::default()).expect("add vip");
        balancer
            .set_backends(&v, vec![BackendSpec::new(other, 1)])
            .expect("backends");
    }
    let client = sa(&format!("{CLIENT}:43000"));
    let program = loaded.program().expect("program");
    let (action, to_b) = run_once(program, &frame(client, a, SYN, &[]));
    assert_eq!(
        (action, addrs(&to_b).1),
        (XdpAction::Pass as u32, b),
        "VIP A goes to VIP B"
    );
    let (action, to_a) = run_once(program, &to_b);
    assert_eq!(
        (action, addrs(&to_a).1),
        (XdpAction::Pass as u32, a),
        "VIP B goes to VIP A"
    );
    let ack = frame(client, a, ACK, &[]);
    let non_vip = frame(client, sa("203.0.113.9:80"), ACK, &[]);
    // Even, so that the packet ends as it started.
    let repeat = p.repeat & !1;
    let mut rows = Vec::new();
    for (name, what, input, counter) in [
        (
            "tcp_ack_tracked_hot",
            "TCP ACK of a tracked flow, hot loop (repeat=N; two VIPs that are each other's backend)",
            &ack,
            Counter::PassFib,
        ),
        (
            "non_vip_hot",
            "TCP to an address that is no VIP, hot loop (repeat=N)",
            &non_vip,
            Counter::PassNonVip,
        ),
    ] {
        let runs: Vec<f64> = (0..RUNS)
            .map(|_| {
                let before = Counters::read(&loaded.ebpf).expect("counters");
                let ns = repeated(loaded.program().expect("program"), input, repeat);
                let after = Counters::read(&loaded.ebpf).expect("counters");
                for &c in Counter::ALL {
                    let expected = if c == counter { u64::from(repeat) } else { 0 };
                    assert_eq!(
                        after.get(c) - before.get(c),
                        expected,
                        "{name}: counter {} over {repeat} runs",
                        c.name()
                    );
                }
                ns
            })
            .collect();
        eprintln!("bench: {name}: {:.1} ns", min(&runs));
        // Forwarding off only: on the forwarding path every run would decrement the TTL of
        // the packet it runs on again.
        rows.push(PacketRow {
            name: name.to_owned(),
            what: what.to_owned(),
            method: "repeat=N".to_owned(),
            forwarding: None,
            forwarding_off: Some(PacketCost {
                outcome: counter.name().to_owned(),
                ns_min: min(&runs),
                ns_median: median(&runs),
                ratio_to_tx: min(&runs) / tx_ns,
                runs,
            }),
        });
    }
    rows
}

/// Established-flow cost (a tracked TCP ACK, the repeat=1 method) along three lines that
/// should be flat: backends behind the VIP, VIPs, and flows in the connection table. Returns
/// the rows and, per line, its spread (largest / smallest - 1, of the minimums and of the
/// medians).
fn scaling(
    loaded: &mut Loaded,
    balancer: &mut Balancer<BpfMaps>,
    pass: &mut Xdp,
    fwd: &Forwarding,
    p: &Params,
    quick: bool,
) -> (Vec<ScalingRow>, Vec<ScalingLine>) {
    let tcp_vip = sa("198.19.0.1:80");
    let mut rows = Vec::new();
    // One run: the mean cost of `p.calls` calls cycling through `packets` (all of one length),
    // forwarding off or, with `on`, on the forwarding path (arriving on `gc`).
    let mut sample = |loaded: &mut Loaded, packets: &[Vec<u8>], on: Option<&Forwarding>| -> f64 {
        let ctx = on.map(|fwd| fwd.ctx(packets[0].len(), false));
        let ctx = ctx.as_deref();
        let pass = &mut *pass;
        at(on, || {
            let pass_loop = repeated_ctx(pass, &packets[0], ctx, p.repeat);
            let pass_call = per_call_ctx(pass, &packets[..1], ctx, p.calls);
            let program = loaded.program().expect("program");
            per_call_ctx(program, packets, ctx, p.calls) - pass_call + pass_loop
        })
    };
    let row = |line: &str, x: usize, name: String, what: String, runs: Vec<f64>| {
        eprintln!("bench: {name}: {:.1} ns", min(&runs));
        ScalingRow {
            line: line.to_owned(),
            x,
            name,
            what,
            ns_min: min(&runs),
            ns_median: median(&runs),
            runs,
        }
    };
    // A tracked flow of `client` to the TCP VIP (an ACK through the program: picked up
    // mid-stream, it goes straight to the connection table), checked.
    let track = |loaded: &mut Loaded, client: SocketAddr, to: SocketAddr| {
        let (action, out) = run_once(
            loaded.program().expect("program"),
            &frame(client, to, ACK, &[]),
        );
        assert_eq!(action, XdpAction::Pass as u32);
        assert!(
            addrs(&out).1.ip().to_string().starts_with("10.1."),
            "{}",
            describe(&out)
        );
    };

    // Backends: one VIP per backend count (2, 100, 1,000, 10,000 equal backends, maglev), a
    // tracked flow to each, measured in turns (run 1 of every case, then run 2, ...), so that
    // a burst of other work on the machine spreads over the cases instead of hitting one.
    let sizes = [2usize, 100, 1_000, 10_000];
    let cases: Vec<(usize, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let addr = sa(&format!("198.19.1.{}:80", k + 1));
            let v = vip(&format!("{addr}/tcp"));
            balancer.add_vip(v, VipOptions::default()).expect("add vip");
            balancer.set_backends(&v, backends(n)).expect("backends");
            let client = sa(&format!("{CLIENT}:{}", 41_000 + k));
            track(loaded, client, addr);
            (n, frame(client, addr, ACK, &[]))
        })
        .collect();
    let mut runs = vec![Vec::new(); cases.len()];
    for _ in 0..RUNS {
        for (i, (_, packet)) in cases.iter().enumerate() {
            runs[i].push(sample(loaded, std::slice::from_ref(packet), None));
        }
    }
    for ((n, _), runs) in cases.iter().zip(runs) {
        rows.push(row(
            "backends",
            *n,
            format!("ack_{n}_backends"),
            format!("TCP ACK of a tracked flow, {n} backends behind the VIP (maglev)"),
            runs,
        ));
    }

    // VIPs: two freshly loaded programs, one with the one TCP VIP (2 backends), one with it and
    // 999 more VIPs (other addresses, 2 backends each, Maglev rings of 257 so that 1,000 rings
    // fit the slots array); the same tracked flow in each, measured in turns.
    {
        let small = VipOptions {
            ring_size: 257,
            ..VipOptions::default()
        };
        let client = sa(&format!("{CLIENT}:42001"));
        let ack = frame(client, tcp_vip, ACK, &[]);
        let mut programs: Vec<(usize, Loaded, Balancer<BpfMaps>)> = [1usize, 1_000]
            .into_iter()
            .map(|count| {
                let mut fresh = lb_tests::program::load();
                let mut fresh_balancer = fresh.balancer(Default::default()).expect("balancer");
                add_tcp_vip(&mut fresh_balancer);
                for i in 0..count as u32 - 1 {
                    let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 4, 1)) + i);
                    let v = vip(&format!("{addr}:80/tcp"));
                    fresh_balancer.add_vip(v, small.clone()).expect("add vip");
                    fresh_balancer
                        .set_backends(&v, backends(2))
                        .expect("backends");
                }
                track(&mut fresh, client, tcp_vip);
                (count, fresh, fresh_balancer)
            })
            .collect();
        let mut runs = vec![Vec::new(); programs.len()];
        for _ in 0..RUNS {
            for (i, (_, fresh, _)) in programs.iter_mut().enumerate() {
                runs[i].push(sample(fresh, std::slice::from_ref(&ack), None));
            }
        }
        for ((count, _, _), runs) in programs.iter().zip(runs) {
            let (name, what) = if *count == 1 {
                (
                    "ack_1_vip".to_owned(),
                    "TCP ACK of a tracked flow, 1 VIP".to_owned(),
                )
            } else {
                (
                    format!("ack_{count}_vips"),
                    format!(
                        "TCP ACK of a tracked flow, {count} VIPs ({} more addresses)",
                        count - 1
                    ),
                )
            };
            rows.push(row("vips", *count, name, what, runs));
        }
    }

    // Flows: one freshly loaded program per table fill (1,000, and 1,000,000 or in a quick run
    // 100,000), its tables twice that size (so nothing is evicted), filled with SYNs of
    // distinct 5-tuples (10.128.0.0/9) through test_run. Measured in turns: a tracked flow
    // (the first), and ACKs of up to `p.calls` different flows spread over the table, one per
    // call, as when many flows are active and their entries are not in the cache.
    let largest = if quick { 100_000 } else { 1_000_000 };
    let note = |target: usize| {
        if quick && target == largest {
            " (quick run: 100,000 instead of 1,000,000)"
        } else {
            ""
        }
    };
    let client = sa(&format!("{CLIENT}:42000"));
    let mut tables: Vec<(usize, Loaded, Balancer<BpfMaps>)> = Vec::new();
    // Table, flows in it, line, name, what, packets, forwarding path or not.
    type FlowCase<'a> = (
        usize,
        usize,
        String,
        String,
        String,
        Vec<Vec<u8>>,
        Option<&'a Forwarding>,
    );
    let mut cases: Vec<FlowCase> = Vec::new();
    for target in [1_000usize, largest] {
        let fill = Instant::now();
        let mut fresh = Loaded::load_with(LoadOptions {
            conntrack_capacity: 2 * target as u32,
            ..LoadOptions::default()
        })
        .expect("loading the XDP program");
        let mut fresh_balancer = fresh.balancer(Default::default()).expect("balancer");
        add_tcp_vip(&mut fresh_balancer);
        track(&mut fresh, client, tcp_vip);
        let program = fresh.program().expect("program");
        // ACKs: a flow picked up mid-stream goes straight to the connection table (a SYN
        // would wait in the embryonic table for its handshake).
        let mut syn = frame(client, tcp_vip, ACK, &[]);
        for next in 0..target as u32 - 1 {
            set_source(
                &mut syn,
                Ipv4Addr::from(0x0a80_0000 + next),
                1024 + (next % 60_000) as u16,
            );
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(&syn),
                    ..TestRunOptions::new()
                })
                .expect("test_run");
            assert_eq!(result.return_value, XdpAction::Pass as u32);
        }
        let counted = tracked_flows(&mut fresh);
        assert_eq!(counted, target, "flows in the connection table");
        eprintln!(
            "bench: {target} flows filled and counted in {:.1?}",
            fill.elapsed()
        );
        let spread_over = p.calls.min(target - 1);
        let acks: Vec<Vec<u8>> = (0..spread_over)
            .map(|k| {
                let i = (k * (target - 1) / spread_over) as u32;
                let mut ack = frame(client, tcp_vip, ACK, &[]);
                set_source(
                    &mut ack,
                    Ipv4Addr::from(0x0a80_0000 + i),
                    1024 + (i % 60_000) as u16,
                );
                ack
            })
            .collect();
        let middle = &acks[acks.len() / 2];
        let (action, out) = run_once(fresh.program().expect("program"), middle);
        assert_eq!(action, XdpAction::Pass as u32);
        assert!(addrs(&out).1.ip().to_string().starts_with("10.1."));
        // The same on the forwarding path: it leaves by XDP_REDIRECT towards backend 0's net.
        fwd.add_tx_ports(&mut fresh);
        let ctx = fwd.ctx(middle.len(), false);
        let program = fresh.program().expect("program");
        let (action, out) = fwd.run(|| run_once_ctx(program, middle, Some(&ctx)));
        assert_eq!(action, XdpAction::Redirect as u32, "{}", describe(&out));
        assert!(addrs(&out).1.ip().to_string().starts_with("10.1."));
        assert_eq!(out[..6], fwd.b0_mac, "next hop's MAC");
        let table = tables.len();
        let note = note(target);
        for (on, suffix, path) in [
            (None, "", "forwarding off"),
            (Some(fwd), "_forwarding", "forwarding path"),
        ] {
            cases.push((
                table,
                target,
                format!("flows{suffix}"),
                format!("ack_{target}_flows{suffix}"),
                format!(
                    "TCP ACK of a tracked flow, connection table holding {counted} \
                     flows{note}, {path}"
                ),
                vec![frame(client, tcp_vip, ACK, &[])],
                on,
            ));
            cases.push((
                table,
                target,
                format!("flows_many_active{suffix}"),
                format!("ack_{target}_flows_many_active{suffix}"),
                format!(
                    "TCP ACKs of {spread_over} different tracked flows in turn, table holding \
                     {counted} flows{note}, {path}"
                ),
                acks.clone(),
                on,
            ));
        }
        tables.push((target, fresh, fresh_balancer));
    }
    let mut runs = vec![Vec::new(); cases.len()];
    for _ in 0..RUNS {
        for (i, case) in cases.iter().enumerate() {
            runs[i].push(sample(&mut tables[case.0].1, &case.5, case.6));
        }
    }
    for (case, runs) in cases.into_iter().zip(runs) {
        rows.push(row(&case.2, case.1, case.3, case.4, runs));
    }
    drop(tables);

    let mut lines = Vec::new();
    for line in [
        "backends",
        "vips",
        "flows",
        "flows_many_active",
        "flows_forwarding",
        "flows_many_active_forwarding",
    ] {
        let on_line = || rows.iter().filter(|row| row.line == line);
        let spread = |v: Vec<f64>| max(&v) / min(&v) - 1.0;
        lines.push(ScalingLine {
            line: line.to_owned(),
            xs: on_line().map(|row| row.x).collect(),
            spread_min: spread(on_line().map(|row| row.ns_min).collect()),
            spread_median: spread(on_line().map(|row| row.ns_median).collect()),
        });
    }
    (rows, lines)
}

/// Sets the IPv4 source address and TCP/UDP source port of an Ethernet + IPv4 (no options)
/// frame, updating both checksums incrementally (RFC 1624).
fn set_source(frame: &mut [u8], addr: Ipv4Addr, port: u16) {
    const IP: usize = 14;
    const L4: usize = IP + 20;
    let l4_check = if frame[IP + 9] == 6 { L4 + 16 } else { L4 + 6 };
    let word = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let old: [u16; 3] = [word(frame, IP + 12), word(frame, IP + 14), word(frame, L4)];
    frame[IP + 12..IP + 16].copy_from_slice(&addr.octets());
    frame[L4..L4 + 2].copy_from_slice(&port.to_be_bytes());
    let new: [u16; 3] = [word(frame, IP + 12), word(frame, IP + 14), word(frame, L4)];
    let update = |check: u16, words: &[(u16, u16)]| {
        let mut sum = u32::from(!check);
        for &(o, n) in words {
            sum += u32::from(!o) + u32::from(n);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    };
    let addr_words = [(old[0], new[0]), (old[1], new[1])];
    let ip_check = update(word(frame, IP + 10), &addr_words);
    frame[IP + 10..IP + 12].copy_from_slice(&ip_check.to_be_bytes());
    let l4 = update(
        word(frame, l4_check),
        &[addr_words[0], addr_words[1], (old[2], new[2])],
    );
    frame[l4_check..l4_check + 2].copy_from_slice(&l4.to_be_bytes());
}

/// Maglev table build time and the share of the table that moves when one backend goes.
fn maglev() -> Vec<MaglevRow> {
    [DEFAULT_RING_SIZE, MAX_RING_SIZE]
        .into_iter()
        .flat_map(|ring| [10u32, 100, 1_000, 10_000].map(|n| (ring, n)))
        .map(|(ring, n)| {
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
            eprintln!(
                "bench: maglev M={ring}, {n} backends: {:.2} ms",
                min(&times)
            );
            MaglevRow {
                backends: n,
                ring_size: ring,
                build_ms_min: min(&times),
                build_ms_median: median(&times),
                remapped_share: moved,
                ideal_share: 1.0 / f64::from(n),
                runs: times,
            }
        })
        .collect()
}

/// Time to write a whole Maglev ring into the slots array the way the agent does
/// (`Maps::write_slots`: batches of updates, every entry different from what the array holds),
/// at M = 65537 and at the largest M.
fn slots_write() -> Vec<SlotsWrite> {
    use lb_user::maps::Maps as _;
    let mut loaded = lb_tests::program::load();
    let mut maps = BpfMaps::new(&mut loaded.ebpf).expect("maps");
    [DEFAULT_RING_SIZE, MAX_RING_SIZE]
        .into_iter()
        .map(|ring| {
            let times: Vec<f64> = (0..3)
                .map(|run| {
                    // Every entry differs from the run before's: `write_slots` skips entries
                    // it knows to hold the id already.
                    let ids: Vec<u32> = (0..ring).map(|i| (i + run) % 100).collect();
                    let start = Instant::now();
                    maps.write_slots(0, &ids).expect("write_slots");
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            eprintln!("bench: writing {ring} slots: {:.1} ms", min(&times));
            SlotsWrite {
                ring_size: ring,
                ms_min: min(&times),
                ms_median: median(&times),
            }
        })
        .collect()
}

/// Bytes per tracked flow of the connection and reverse tables: the kernel's `memlock` of each
/// map (`/proc/self/fdinfo`) at its loaded capacity, divided by the capacity.
fn memory(loaded: &mut Loaded) -> Vec<MemoryRow> {
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
        rows.push(MemoryRow {
            map: name,
            capacity: info.max_entries(),
            key_size: info.key_size(),
            value_size: info.value_size(),
            memlock_bytes: memlock,
            bytes_per_flow: memlock as f64 / f64::from(info.max_entries()),
        });
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

/// The XDP program `name` of an object (a baseline's, `bench_steps`').
fn xdp<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| panic!("no XDP program {name}"))
}

/// One call with `repeat = 1`: the action and the output frame.
fn run_once(program: &mut Xdp, input: &[u8]) -> (u32, Vec<u8>) {
    run_once_ctx(program, input, None)
}

/// [`run_once`] with an `xdp_md` context (see [`xdp_ctx`]).
fn run_once_ctx(program: &mut Xdp, input: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
    let mut output = vec![0u8; input.len() + 512];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut output),
            ctx_in: ctx,
            ..TestRunOptions::new()
        })
        .expect("test_run");
    output.truncate(result.data_size_out as usize);
    (result.return_value, output)
}

/// The `xdp_md` of a packet of `len` bytes that arrived on `ifindex`.
fn xdp_ctx(ifindex: u32, len: usize) -> Vec<u8> {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    [0, len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|field| field.to_ne_bytes())
        .collect()
}

/// Mean kernel-measured ns of `calls` calls with `repeat = 1`, cycling through `packets`.
fn per_call(program: &mut Xdp, packets: &[Vec<u8>], calls: usize) -> f64 {
    per_call_ctx(program, packets, None, calls)
}

/// [`per_call`] with an `xdp_md` context for every call.
fn per_call_ctx(program: &mut Xdp, packets: &[Vec<u8>], ctx: Option<&[u8]>, calls: usize) -> f64 {
    let mut total = 0u128;
    for call in 0..calls {
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&packets[call % packets.len()]),
                ctx_in: ctx,
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
    repeated_ctx(program, input, None, repeat)
}

/// [`repeated`] with an `xdp_md` context.
fn repeated_ctx(program: &mut Xdp, input: &[u8], ctx: Option<&[u8]>, repeat: u32) -> f64 {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(input),
            ctx_in: ctx,
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

/// Adds [`TCP_VIP`] with two backends.
fn add_tcp_vip(balancer: &mut Balancer<BpfMaps>) {
    balancer
        .add_vip(vip(TCP_VIP), VipOptions::default())
        .expect("add vip");
    balancer
        .set_backends(&vip(TCP_VIP), backends(2))
        .expect("backends");
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

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// CPU model, CPU count and memory of this machine, for the results.
fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Machine {
        cpu_model: model,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: mem_kb as f64 / (1024.0 * 1024.0),
        loadavg_at_start: load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// End to end over veth.
// ---------------------------------------------------------------------------------------------

/// The VIP of the end-to-end runs, and the sink (backend 0 of the topology) behind it.
const E2E_VIP: &str = "198.19.0.1:9";
const E2E_SINK: &str = "198.18.1.2:9";
/// 60 bytes: Ethernet, IPv4 and UDP headers and 18 bytes of payload, 64 on the wire with FCS.
const E2E_PAYLOAD: usize = 18;
/// Ethernet, IPv4 and UDP headers, which `bench_gen` writes into every frame.
const GEN_HEADERS: usize = 14 + 20 + 8;
/// Frames per live-frames batch (the kernel's default is 64, its maximum 256).
const E2E_BATCH: u32 = 64;
/// Runs (frames) per `BPF_PROG_TEST_RUN` call of the generator; it checks the clock between
/// calls.
const E2E_CHUNK: u32 = 100_000;

/// Forwarded packets per second of small UDP frames, over veth: generator (the topology's
/// client) → gateway → sink (backend 0), for xdplb (NAT, native XDP on `gc` and `gb0`), an
/// nftables DNAT rule, and plain routing to the sink's address; plus the generator's ceiling
/// (the same generator into an XDP program on `gc` that drops what it counts).
///
/// The generator is `bench_gen` run by `BPF_PROG_TEST_RUN` in XDP live-frames mode from a
/// thread in the generator's namespace: every frame is transmitted out of its `eth0`, a 60-byte
/// UDP frame from 198.18.0.2 with a random source port (many flows) to the VIP (or the sink).
/// The sink runs `bench_drop` on its `eth0`, whose `rx_packets` counts every frame it got; the
/// forwarded rate is that count over the generator's wall time. `gc` has GRO on (which
/// gives a veth the NAPI context frames sent to it by XDP need) and threaded NAPI if the
/// kernel lets us, so that the gateway's work runs in a kernel thread beside the generator.
///
/// With `profile` (a directory), one more round of the xdplb case runs under `perf record`
/// (see [`profile`]); its data and summary go to that directory.
fn end_to_end(rounds: usize, secs: u64, profile: Option<&std::path::Path>) -> EndToEnd {
    let topo = Topology::new(1).unwrap_or_else(|err| panic!("topology: {err:#}"));
    let (generator, gateway, sink) = (&topo.client, &topo.gateway, &topo.backends[0]);
    let mac = |ns: &Netns, iface: &str| {
        ns.mac(iface)
            .unwrap_or_else(|err| panic!("MAC of {iface}: {err:#}"))
    };
    let (gen_mac, gc_mac, sink_mac) = (
        mac(generator, HOST_IF),
        mac(gateway, GW_CLIENT_IF),
        mac(sink, HOST_IF),
    );
    let gb0 = gw_backend_if(0);
    let sink_ip = sa(E2E_SINK).ip().to_string();
    gateway
        .permanent_neighbour(&sink_ip, sink_mac, &gb0)
        .unwrap_or_else(|err| panic!("the sink's neighbour entry: {err:#}"));
    ns_ok(gateway, "ethtool", &["-K", GW_CLIENT_IF, "gro", "on"]);
    let threaded = Command::new("ip")
        .args(["netns", "exec", &gateway.name, "sh", "-c"])
        .arg(format!("echo 1 > /sys/class/net/{GW_CLIENT_IF}/threaded"))
        .status()
        .is_ok_and(|status| status.success());
    if !threaded {
        eprintln!(
            "bench: threaded NAPI on {GW_CLIENT_IF} refused; the gateway shares the generator's CPU"
        );
    }

    let mut sink_drop = load_baseline(BASELINE_DROP, "bench_drop").expect("bench_drop");
    sink.run(|| xdp(&mut sink_drop, "bench_drop").attach(HOST_IF, XdpMode::Driver))
        .unwrap_or_else(|err| panic!("attaching bench_drop to the sink: {err}"));
    let mut gen_ebpf = load_baseline(BASELINE_GEN, "bench_gen").expect("bench_gen");
    let mut gen_headers: Array<MapData, [u8; GEN_HEADERS]> = gen_ebpf
        .take_map("BENCH_GEN_HEADERS")
        .expect("map BENCH_GEN_HEADERS")
        .try_into()
        .expect("BENCH_GEN_HEADERS type");
    let gen_prog = xdp(&mut gen_ebpf, "bench_gen");

    let link = Link {
        src_mac: gen_mac,
        dst_mac: gc_mac,
        ttl: 64,
    };
    let source = SocketAddr::new(IpAddr::V4(generator.v4), 1024);
    let payload = [0u8; E2E_PAYLOAD];
    let to_vip = frame_with(link, source, sa(E2E_VIP), L4::Udp, &payload);
    let to_sink = frame_with(link, source, sa(E2E_SINK), L4::Udp, &payload);
    let duration = Duration::from_secs(secs);
    let mut run = |frame: &[u8], counter: (&Netns, &str), rounds: usize| {
        // Frames come back from the gateway rewritten: the generator writes these headers into
        // every frame it sends.
        let headers: [u8; GEN_HEADERS] = frame[..GEN_HEADERS].try_into().expect("headers");
        gen_headers.set(0, headers, 0).expect("BENCH_GEN_HEADERS");
        let runs: Vec<(Offered, u64)> = (0..rounds)
            .map(|_| {
                let before = rx_packets(counter.0, counter.1);
                let offered = generate(generator, gen_prog, frame, duration);
                // Let the rings drain.
                std::thread::sleep(Duration::from_millis(100));
                (offered, rx_packets(counter.0, counter.1) - before)
            })
            .collect();
        Measured::new(runs)
    };

    // The generator's ceiling: everything it sends dropped (and counted) on arrival at `gc`.
    let ceiling = {
        let mut drop = load_baseline(BASELINE_DROP, "bench_drop").expect("bench_drop");
        gateway
            .run(|| xdp(&mut drop, "bench_drop").attach(GW_CLIENT_IF, XdpMode::Driver))
            .unwrap_or_else(|err| panic!("attaching bench_drop to {GW_CLIENT_IF}: {err}"));
        run(&to_sink, (gateway, GW_CLIENT_IF), rounds)
        // `drop` detaches here.
    };
    eprintln!(
        "bench: generator: offers {:.0} pps, {:.0} pps arrive at the gateway",
        ceiling.offered_pps, ceiling.pps
    );

    let mut rows: Vec<(&str, &str, Option<Measured>, String)> = Vec::new();
    let mut profiled = None;

    // Plain routing, no balancer.
    let plain = run(&to_sink, (sink, HOST_IF), rounds);
    rows.push((
        "plain_routing",
        "kernel IPv4 forwarding to 198.18.1.2, no balancer, no netfilter rules",
        Some(plain),
        String::new(),
    ));

    // xdplb, NAT mode, native XDP on both gateway interfaces.
    {
        let mut loaded = lb_tests::program::load();
        for iface in [GW_CLIENT_IF, gb0.as_str()] {
            gateway
                .run(|| loaded.attach(iface, AttachMode::Native))
                .unwrap_or_else(|err| panic!("attaching xdplb to {iface}: {err:#}"));
        }
        let mut balancer = loaded.balancer(Default::default()).expect("balancer");
        let vip_udp = vip(&format!("{E2E_VIP}/udp"));
        balancer
            .add_vip(vip_udp, VipOptions::default())
            .expect("add vip");
        balancer
            .set_backends(&vip_udp, vec![BackendSpec::new(sa(E2E_SINK), 1)])
            .expect("backends");
        let measured = run(&to_vip, (sink, HOST_IF), rounds);
        if let Some(dir) = profile {
            std::fs::create_dir_all(dir).expect("results directory");
            let recording = profile::Recording::start(&dir.join("perf-xdplb.data"));
            let pps = run(&to_vip, (sink, HOST_IF), 1).pps;
            let data = recording.stop();
            profiled = Some(profile::summarize(
                &data,
                &dir.join("profile-xdplb.txt"),
                pps,
            ));
        }
        rows.push((
            "xdplb",
            "xdplb NAT to 198.18.1.2, native XDP on gc and gb0 (redirect through the devmap)",
            Some(measured),
            String::new(),
        ));
        // The same program passing everything to the kernel: frames to the sink's own address.
        let measured = run(&to_sink, (sink, HOST_IF), rounds);
        rows.push((
            "xdp_pass_through",
            "kernel forwarding to 198.18.1.2 with xdplb attached to gc and gb0, balancing \
             nothing (every frame: pass_non_vip)",
            Some(measured),
            String::new(),
        ));
        // `loaded` detaches here.
    }

    // nftables DNAT in the gateway's prerouting hook (conntrack included).
    let (vip_ip, sink_ip) = (sa(E2E_VIP).ip().to_string(), sa(E2E_SINK).ip().to_string());
    let nft = nft_dnat(gateway, "xlb_bench", (&vip_ip, "udp", "9"), &sink_ip);
    match nft {
        Ok(()) => {
            let measured = run(&to_vip, (sink, HOST_IF), rounds);
            let _ = gateway.exec("nft", &["delete", "table", "ip", "xlb_bench"]);
            rows.push((
                "nftables",
                "nftables: prerouting nat chain, dnat to numgen inc mod 1 map { 0 : 198.18.1.2 }",
                Some(measured),
                String::new(),
            ));
        }
        Err(err) => {
            eprintln!("bench: nftables row skipped: {err:#}");
            rows.push((
                "nftables",
                "nftables DNAT (skipped)",
                None,
                format!("skipped: {err:#}"),
            ));
        }
    }

    let pps_of = |name: &str| {
        rows.iter()
            .find(|row| row.0 == name)
            .and_then(|row| row.2.as_ref().map(|m| m.pps))
    };
    let (nft_pps, plain_pps) = (pps_of("nftables"), pps_of("plain_routing"));
    let mut out_rows = vec![ceiling.row(
        "generator_ceiling",
        "generator into bench_drop on the gateway's gc (no forwarding)",
    )];
    for (name, what, measured, note) in rows {
        let Some(measured) = measured else {
            out_rows.push(EndToEndRow {
                name: name.to_owned(),
                what: what.to_owned(),
                forwarded: None,
                ratio_to_nftables: None,
                ratio_to_plain: None,
                ratio_to_ceiling: None,
                note,
            });
            continue;
        };
        eprintln!(
            "bench: {name}: {:.0} pps forwarded of {:.0} offered",
            measured.pps, measured.offered_pps
        );
        out_rows.push(EndToEndRow {
            ratio_to_nftables: nft_pps.map(|n| measured.pps / n),
            ratio_to_plain: plain_pps.map(|p| measured.pps / p),
            ratio_to_ceiling: Some(measured.pps / ceiling.pps),
            note,
            ..measured.row(name, what)
        });
    }
    drop(topo);
    EndToEnd {
        method: format!(
            "generator: bench_gen in BPF_PROG_TEST_RUN XDP live-frames mode (batch {E2E_BATCH}) \
             in the generator namespace, median of {rounds} runs of {secs} s per case, 60-byte UDP frames (64 on the \
             wire), random source port 32768-65535 from one source address; sink: bench_drop \
             on its eth0, forwarded pps = sink eth0 rx_packets / generator wall time; gateway \
             gc: GRO on, threaded NAPI {}",
            if threaded { "on" } else { "refused" }
        ),
        seconds_per_case: secs,
        threaded_napi: threaded,
        rounds,
        generator_ceiling_pps: ceiling.pps,
        rows: out_rows,
        profile: profiled,
    }
}

/// One case of the end-to-end table: its runs and their medians.
struct Measured {
    runs: Vec<(Offered, u64)>,
    /// Median received (forwarded) packets per second of wall time.
    pps: f64,
    /// Median of what the generator sent per second.
    offered_pps: f64,
}

impl Measured {
    fn new(runs: Vec<(Offered, u64)>) -> Self {
        let pps: Vec<f64> = runs.iter().map(|(o, r)| o.rate(*r)).collect();
        let offered: Vec<f64> = runs.iter().map(|(o, _)| o.pps()).collect();
        Self {
            pps: median(&pps),
            offered_pps: median(&offered),
            runs,
        }
    }

    /// Its row of the table, with nothing to compare it with yet.
    fn row(&self, name: &str, what: &str) -> EndToEndRow {
        let pps: Vec<f64> = self.runs.iter().map(|(o, r)| o.rate(*r)).collect();
        let kernel_pps: Vec<f64> = self.runs.iter().map(|(o, _)| o.kernel_pps()).collect();
        EndToEndRow {
            name: name.to_owned(),
            what: what.to_owned(),
            forwarded: Some(Forwarded {
                forwarded_pps: self.pps,
                forwarded_pps_min: min(&pps),
                forwarded_pps_max: pps.iter().copied().fold(0.0, f64::max),
                offered_pps: self.offered_pps,
                generator_kernel_pps: median(&kernel_pps),
                packets: self.runs.iter().map(|(_, r)| r).sum::<u64>(),
                seconds: self.runs.iter().map(|(o, _)| o.seconds).sum::<f64>(),
                runs_pps: pps,
            }),
            ratio_to_nftables: None,
            ratio_to_plain: None,
            ratio_to_ceiling: None,
            note: String::new(),
        }
    }
}

/// What the generator sent in one run.
#[derive(Copy, Clone)]
struct Offered {
    frames: u64,
    /// Wall time of the run.
    seconds: f64,
    /// The kernel's own time for the frames (`duration` is per frame in live-frames mode).
    kernel_seconds: f64,
}

impl Offered {
    fn pps(&self) -> f64 {
        self.frames as f64 / self.seconds
    }

    fn kernel_pps(&self) -> f64 {
        self.frames as f64 / self.kernel_seconds
    }

    /// `packets` over the run's wall time.
    fn rate(&self, packets: u64) -> f64 {
        packets as f64 / self.seconds
    }
}

/// Sends `frame` (as changed by `bench_gen`) out of the generator's `eth0` for `duration`, from
/// a thread in its namespace pinned to one CPU.
fn generate(generator: &Netns, program: &mut Xdp, frame: &[u8], duration: Duration) -> Offered {
    generator.run(|| {
        let cpu = pin_to_last_cpu();
        let ifindex = if_index(HOST_IF).expect("generator eth0");
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|field| field.to_ne_bytes())
            .collect();
        let (mut frames, mut kernel) = (0u64, 0f64);
        let start = Instant::now();
        while start.elapsed() < duration {
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat: E2E_CHUNK,
                    attrs: TestRunAttrs::new().xdp_live_frames(E2E_BATCH),
                    ..TestRunOptions::new()
                })
                .unwrap_or_else(|err| panic!("live-frames test_run on CPU {cpu}: {err}"));
            frames += u64::from(E2E_CHUNK);
            kernel += result.duration.as_secs_f64() * f64::from(E2E_CHUNK);
        }
        Offered {
            frames,
            seconds: start.elapsed().as_secs_f64(),
            kernel_seconds: kernel,
        }
    })
}

/// nftables DNAT load balancing in `gateway`: a table `table` whose prerouting chain sends
/// packets to `vip_ip` for `proto` port(s) `dports` (nft syntax: `9`, `{ 80, 5201 }`) to
/// `sink_ip` through a `numgen` map (one entry: the benchmarks have one sink).
fn nft_dnat(
    gateway: &Netns,
    table: &str,
    (vip_ip, proto, dports): (&str, &str, &str),
    sink_ip: &str,
) -> anyhow::Result<()> {
    gateway.exec("nft", &["add", "table", "ip", table])?;
    let chain = "{ type nat hook prerouting priority dstnat; policy accept; }";
    gateway.exec("nft", &["add", "chain", "ip", table, "prerouting", chain])?;
    let map = format!("{{ 0 : {sink_ip} }}");
    gateway.exec(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            table,
            "prerouting",
            "ip",
            "daddr",
            vip_ip,
            proto,
            "dport",
            dports,
            "dnat",
            "to",
            "numgen",
            "inc",
            "mod",
            "1",
            "map",
            &map,
        ],
    )?;
    Ok(())
}

/// The `rx_packets` counter of `iface` in `ns`.
fn rx_packets(ns: &Netns, iface: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-s", "-j", "link", "show", "dev", iface])
        .output()
        .expect("ip -s link");
    let links: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("ip -s -j link show {iface}: {err}"));
    links[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packets in {links}"))
}

/// Runs `program args…` in `ns`, or panics with its error.
fn ns_ok(ns: &Netns, program: &str, args: &[&str]) {
    ns.exec(program, args)
        .unwrap_or_else(|err| panic!("{program} {args:?} in {}: {err:#}", ns.name));
}
