//! Cost breakdown: the data path's steps timed one by one, each as its own XDP program
//! (`lb-ebpf/src/bin/bench_steps.rs`, built from the balancer's own modules, with the same maps
//! driven by the same [`Balancer`]), in a hot loop (`repeat = N`) and one call per packet (the
//! method of the per-packet table), both as ns over the `XDP_PASS` baseline measured the same
//! way. They run in a gateway namespace with the packet arriving on its client-facing veth, so
//! that `bpf_fib_lookup` answers from real routes; `fib_forwarding_off` is the same lookup
//! where the per-packet runs make it: in the host namespace, with no ingress interface given
//! (so loopback) and IPv4 forwarding off, where it returns `BPF_FIB_LKUP_RET_FWD_DISABLED` at
//! once.

use aya::{Ebpf, programs::Xdp};
use lb_tests::bench::{Breakdown, StepRow, StepSum};
use lb_tests::{
    fixture::XdpAction,
    netns::{GW_CLIENT_IF, HOST_IF, Topology, gw_backend_if},
    sa,
};
use lb_user::{
    balancer::Balancer,
    bench_objects::{BASELINE_PASS, BENCH_STEPS, load_baseline},
    loader::if_index,
    maps::BpfMaps,
};

use super::{
    ACK, CLIENT, Params, RUNS, add_tcp_vip, frame, median, min, per_call, per_call_ctx,
    pin_to_last_cpu, repeated, repeated_ctx, run_once_ctx, xdp,
};

/// Inserts per run of `step_new_flow` and `step_lru_insert` in the hot loop: with their calls
/// they stay below the table's 1,000,000 entries, so that nothing is evicted.
const NEW_FLOW_REPEAT: u32 = 40_000;
/// Calls per run of those two steps (one per packet).
const NEW_FLOW_CALLS: usize = 20_000;

/// A step: its program, what it does, which packet, whether it gets the ingress interface,
/// and the action that says it did its work.
struct Step {
    program: &'static str,
    what: &'static str,
    to_sink: bool,
    ingress: bool,
    expect: XdpAction,
}

const STEPS: &[Step] = &[
    Step {
        program: "step_parse",
        what: "parse Ethernet, IPv4, TCP into the per-CPU scratch",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_scratch",
        what: "per-CPU scratch lookup + copies (flow key, other-direction key, reverse entry)",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_vip_addr",
        what: "is the destination a VIP address: VIP_ADDRS hash lookup (20-byte key), hit",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_vip",
        what: "which VIP: VIPS hash lookup (no prealloc, 20-byte key), hit",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_ktime",
        what: "bpf_ktime_get_coarse_ns (the clock flows are stamped with)",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_ktime_precise",
        what: "bpf_ktime_get_ns, the precise clock, for comparison",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_conntrack",
        what: "VIPS lookup + CONNTRACK LRU hash lookup (40-byte key) of a tracked flow, backend, state update",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_tracked",
        what: "tracked fast path: CONNTRACK lookup first (40-byte key), BACKENDS load, lazy touch; no VIP lookup",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_next_hop",
        what: "kept next hop: NEXT_HOPS per-CPU array load + freshness check (instead of bpf_fib_lookup)",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_new_flow_one_insert",
        what: "VIPS lookup + new flow to a single-VIP backend: CONNTRACK miss, Maglev pick, one CONNTRACK insert, atomic count",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_new_flow",
        what: "VIPS lookup + new flow: CONNTRACK miss, Maglev pick, CONNTRACK and REVERSE_NAT inserts, atomic count",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_lru_insert",
        what: "one insert of a new flow into CONNTRACK (LRU hash, 40-byte key, random source)",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_lru_percpu_insert",
        what: "the same insert into an LRU hash with per-CPU lists (BPF_F_NO_COMMON_LRU), same size",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_hash_insert",
        what: "the same insert into a plain preallocated hash (no LRU), same size",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_counters",
        what: "outcome counter + VIP and backend traffic (3 per-CPU arrays)",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_rewrite",
        what: "NAT rewrite: checksum kind, IPv4 header and TCP checksum updates",
        to_sink: false,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_fib",
        what: "bpf_fib_lookup, real route and neighbour (packet to the sink, arrived on gc)",
        to_sink: true,
        ingress: true,
        expect: XdpAction::Pass,
    },
    Step {
        program: "step_fib",
        what: "bpf_fib_lookup in the host namespace, ingress lo, forwarding off: returns at once (as in the per-packet runs)",
        to_sink: true,
        ingress: false,
        expect: XdpAction::Drop,
    },
];

/// Which steps make up the balancer's established path and its new-flow path (as sums).
const ESTABLISHED: &[&str] = &[
    "step_parse",
    "step_scratch",
    "step_tracked",
    "step_ktime",
    "step_counters",
    "step_rewrite",
    "step_next_hop",
];
const NEW_FLOW: &[&str] = &[
    "step_parse",
    "step_scratch",
    "step_vip_addr",
    "step_new_flow_one_insert",
    "step_ktime",
    "step_counters",
    "step_rewrite",
    "step_next_hop",
];

/// Rows of the breakdown and the sums of the established and new-flow paths.
pub fn breakdown(p: &Params) -> Breakdown {
    assert!(
        !BENCH_STEPS.is_empty(),
        "bench_steps was built as a stub (no bpf-linker): run `cargo xtask bench`"
    );
    let mut ebpf =
        Ebpf::load(BENCH_STEPS).unwrap_or_else(|err| panic!("loading bench_steps: {err}"));
    for name in ["step_parse"]
        .into_iter()
        .chain(STEPS.iter().map(|s| s.program))
    {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("no XDP program {name} in bench_steps"));
        if prog.fd().is_err() {
            prog.load()
                .unwrap_or_else(|err| panic!("loading {name}: {err}"));
        }
    }
    let maps = BpfMaps::new(&mut ebpf).expect("bench_steps maps");
    let mut balancer = Balancer::new(
        maps,
        lb_common::maps::DEFAULT_SLOTS,
        lb_common::maps::Settings::default(),
    )
    .expect("balancer over bench_steps");
    add_tcp_vip(&mut balancer);
    let mut pass_obj = load_baseline(BASELINE_PASS, "bench_pass").expect("baseline pass");

    let topo = Topology::new(1).unwrap_or_else(|err| panic!("topology: {err:#}"));
    let sink = &topo.backends[0];
    let sink_mac = sink
        .mac(HOST_IF)
        .unwrap_or_else(|err| panic!("sink MAC: {err:#}"));
    topo.gateway
        .permanent_neighbour(&sink.v4.to_string(), sink_mac, &gw_backend_if(0))
        .unwrap_or_else(|err| panic!("the sink's neighbour entry: {err:#}"));
    let client = sa(&format!("{CLIENT}:40000"));
    let to_vip = frame(client, sa("198.19.0.1:80"), ACK, &[]);
    let to_sink = frame(client, sa(&format!("{}:80", sink.v4)), ACK, &[]);

    let mut rows: Vec<StepRow> = topo.gateway.run(|| {
        pin_to_last_cpu();
        let ifindex = if_index(GW_CLIENT_IF).expect("gc");
        let ctx = super::xdp_ctx(ifindex, to_vip.len());
        // The scratch of this CPU, which every other step reads.
        let (action, _) = run_once_ctx(xdp(&mut ebpf, "step_parse"), &to_vip, Some(&ctx));
        assert_eq!(action, XdpAction::Pass as u32, "step_parse");
        let base = Base::new(xdp(&mut pass_obj, "bench_pass"), &to_vip, p);
        STEPS
            .iter()
            .filter(|step| step.ingress)
            .map(|step| {
                let input = if step.to_sink { &to_sink } else { &to_vip };
                measure(&mut ebpf, step, input, Some(&ctx), &base, p)
            })
            .collect()
    });
    // The same CPU as above (the benchmark thread is pinned to it), so the same scratch.
    let base = Base::new(xdp(&mut pass_obj, "bench_pass"), &to_vip, p);
    for step in STEPS.iter().filter(|step| !step.ingress) {
        let input = if step.to_sink { &to_sink } else { &to_vip };
        rows.push(measure(&mut ebpf, step, input, None, &base, p));
    }
    drop(topo);

    // The row of a step's program (the real FIB lookup, not the one with forwarding off).
    let step = |program: &str| {
        rows.iter()
            .find(|row| row.program == program && row.name != "fib_forwarding_off")
            .unwrap_or_else(|| panic!("no row of {program}"))
    };
    let fib = step("step_fib").ns_hot_min;
    let sum = |name: &str, steps: &[&str]| {
        let of = |key: fn(&StepRow) -> f64| steps.iter().map(|program| key(step(program))).sum();
        let ns_hot: f64 = of(|row| row.ns_hot_min);
        StepSum {
            name: name.to_owned(),
            steps: steps.iter().map(|program| (*program).to_owned()).collect(),
            ns_hot,
            ns_hot_with_fib: ns_hot + fib,
            ns_call: of(|row| row.ns_call_min),
        }
    };
    let sums = vec![sum("established", ESTABLISHED), sum("new_flow", NEW_FLOW)];
    Breakdown {
        method: "one XDP program per step (bench_steps: the balancer's own modules and maps), \
                 ns over the XDP_PASS baseline measured the same way; hot = one call with \
                 repeat=N (steps that insert flows: 40,000, and 20,000 calls), call = one repeat=1 call per packet (the \
                 per-packet table's method); run in a gateway namespace, packet arriving on gc"
            .to_owned(),
        rows,
        sums,
    }
}

/// The `XDP_PASS` baseline, hot and per call, which every step's time is taken over.
struct Base {
    hot: f64,
    call: f64,
}

impl Base {
    fn new(pass: &mut Xdp, input: &[u8], p: &Params) -> Self {
        let hot: Vec<f64> = (0..RUNS).map(|_| repeated(pass, input, p.repeat)).collect();
        let call: Vec<f64> = (0..RUNS)
            .map(|_| per_call(pass, std::slice::from_ref(&input.to_vec()), p.calls))
            .collect();
        Self {
            hot: min(&hot),
            call: min(&call),
        }
    }
}

/// Times one step (its program checked first), hot and per call.
fn measure(
    ebpf: &mut Ebpf,
    step: &Step,
    input: &Vec<u8>,
    ctx: Option<&[u8]>,
    base: &Base,
    p: &Params,
) -> StepRow {
    let program = xdp(ebpf, step.program);
    // The first call may set things up (tracking the flow of `step_conntrack`).
    run_once_ctx(program, input, ctx);
    let (action, output) = run_once_ctx(program, input, ctx);
    assert_eq!(
        action, step.expect as u32,
        "{} ({})",
        step.program, step.what
    );
    assert_eq!(
        &output, input,
        "{} leaves the packet as it was",
        step.program
    );
    let inserts = matches!(
        step.program,
        "step_new_flow"
            | "step_new_flow_one_insert"
            | "step_lru_insert"
            | "step_lru_percpu_insert"
            | "step_hash_insert"
    );
    let repeat = if inserts {
        NEW_FLOW_REPEAT.min(p.repeat)
    } else {
        p.repeat
    };
    let hot: Vec<f64> = (0..RUNS)
        .map(|_| repeated_ctx(program, input, ctx, repeat) - base.hot)
        .collect();
    let calls = if inserts {
        NEW_FLOW_CALLS.min(p.calls)
    } else {
        p.calls
    };
    let call: Vec<f64> = (0..RUNS)
        .map(|_| per_call_ctx(program, std::slice::from_ref(input), ctx, calls) - base.call)
        .collect();
    let name = if step.ingress {
        step.program.trim_start_matches("step_").to_owned()
    } else {
        "fib_forwarding_off".to_owned()
    };
    eprintln!(
        "bench: step {name}: {:.1} ns hot, {:.1} ns per call",
        min(&hot),
        min(&call)
    );
    StepRow {
        name,
        program: step.program.to_owned(),
        what: step.what.to_owned(),
        ns_hot_min: min(&hot),
        ns_hot_median: median(&hot),
        ns_call_min: min(&call),
        ns_call_median: median(&call),
    }
}
