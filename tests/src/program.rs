//! The real XDP program, loaded (verifier included) and run once per packet through
//! `BPF_PROG_TEST_RUN`.

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::Counter;
use lb_user::{
    counters::Counters,
    loader::{LoadOptions, Loaded},
};

use crate::fixture::Outcome;

/// Loads the embedded XDP program (verifier included), or panics with the reason.
pub fn load() -> Loaded {
    load_with(LoadOptions::default())
}

/// Loads the embedded XDP program with the map sizes of `options`, or panics with the reason.
pub fn load_with(options: LoadOptions) -> Loaded {
    Loaded::load_with(options).unwrap_or_else(|err| panic!("loading the XDP program: {err:#}"))
}

/// Runs the program once on `input` through `BPF_PROG_TEST_RUN`, as if it arrived on
/// interface `ingress` (an ifindex of the calling thread's namespace; `None`: loopback).
pub fn test_run(
    loaded: &mut Loaded,
    input: &[u8],
    ingress: Option<u32>,
) -> anyhow::Result<Outcome> {
    let before = Counters::read(&loaded.ebpf)?;
    // Room for the program to grow the frame (encapsulation) and for the kernel's headroom.
    let mut output = vec![0u8; input.len() + 512];
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let ctx: Vec<u8> = [0, input.len() as u32, 0, ingress.unwrap_or(0), 0, 0]
        .iter()
        .flat_map(|field| field.to_ne_bytes())
        .collect();
    let result = loaded.program()?.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut output),
        ctx_in: ingress.map(|_| ctx.as_slice()),
        ..TestRunOptions::new()
    })?;
    output.truncate(result.data_size_out as usize);
    let after = Counters::read(&loaded.ebpf)?;
    let counters = Counter::ALL
        .iter()
        .filter(|&&c| after.get(c) != before.get(c))
        .map(|c| c.name().to_owned())
        .collect();
    Ok(Outcome {
        action: result.return_value,
        output,
        counters,
    })
}
