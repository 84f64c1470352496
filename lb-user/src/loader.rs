//! Loading the embedded XDP program and attaching it to interfaces.

use std::fmt;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::xdp::DevMapHash,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::maps::{
    CONNTRACK_MAP, DEFAULT_CONNTRACK_CAPACITY, DEFAULT_SLOTS, REVERSE_NAT_MAP, SLOTS_MAP, Settings,
    TX_PORTS_MAP,
};

use crate::{balancer::Balancer, maps::BpfMaps};
use log::{info, warn};

/// The XDP program's object file, built by `build.rs`. Empty when built without bpf-linker.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// Benchmark baseline: an XDP program `bench_pass` that returns `XDP_PASS`. Empty without
/// bpf-linker, like the main object.
pub static BASELINE_PASS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_pass"));

/// Benchmark baseline: an XDP program `bench_tx` that swaps the MAC addresses and returns
/// `XDP_TX`. Empty without bpf-linker.
pub static BASELINE_TX: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_tx"));

/// End-to-end benchmark generator: an XDP program `bench_gen` that writes the headers held in
/// its map `BENCH_GEN_HEADERS` (Ethernet, IPv4, UDP: 42 bytes) into the frame with a random
/// source port and returns `XDP_TX`, for `BPF_PROG_TEST_RUN` in live-frames mode. Empty without
/// bpf-linker.
pub static BASELINE_GEN: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_gen"));

/// End-to-end benchmark sink: an XDP program `bench_drop` that drops every frame. Empty without
/// bpf-linker.
pub static BASELINE_DROP: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_drop"));

/// Benchmark cost breakdown: an object `bench_steps` with one XDP program per step of the data
/// path, over the balancer's maps. Empty without `XDPLB_BUILD_EBPF=1`.
pub static BENCH_STEPS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_steps"));

/// Loads a benchmark baseline object ([`BASELINE_PASS`], [`BASELINE_TX`], [`BASELINE_GEN`],
/// [`BASELINE_DROP`]) and its one XDP program, named `program`, into the kernel.
pub fn load_baseline(object: &[u8], program: &str) -> anyhow::Result<Ebpf> {
    if object.is_empty() {
        bail!(
            "the benchmark baselines were built as stubs (no bpf-linker); run `cargo xtask bench`"
        );
    }
    let mut ebpf = Ebpf::load(object).context("loading a baseline object")?;
    let xdp: &mut Xdp = ebpf
        .program_mut(program)
        .with_context(|| format!("no program {program:?} in the baseline object"))?
        .try_into()
        .context("baseline program is not XDP")?;
    xdp.load()
        .with_context(|| format!("loading the baseline {program} into the kernel"))?;
    Ok(ebpf)
}

/// Name of the XDP program (the `#[xdp]` function) in the object.
pub const PROGRAM: &str = "lb";

/// How to attach: `Auto` tries native (driver) mode and falls back to generic (skb) mode.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachMode {
    #[default]
    Auto,
    Native,
    Skb,
}

/// The mode an attachment actually got.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Skb,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

/// Sizes fixed when the program is loaded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Flows the connection table holds (and as many reverse translations).
    pub conntrack_capacity: u32,
    /// Entries of the slots array that holds every VIP's tables.
    pub slots: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conntrack_capacity: DEFAULT_CONNTRACK_CAPACITY,
            slots: DEFAULT_SLOTS,
        }
    }
}

/// The loaded program and its maps. Dropping it detaches the program everywhere.
pub struct Loaded {
    pub ebpf: Ebpf,
    options: LoadOptions,
}

impl Loaded {
    /// Loads the embedded object and the XDP program into the kernel (verifier included),
    /// with the default sizes.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_with(LoadOptions::default())
    }

    /// Loads with the given sizes.
    pub fn load_with(options: LoadOptions) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!(
                "this xdplb binary was built without its XDP program (bpf-linker was not found \
                 at build time); run `cargo xtask build`"
            );
        }
        let ebpf = EbpfLoader::new()
            .map_max_entries(CONNTRACK_MAP, options.conntrack_capacity)
            .map_max_entries(REVERSE_NAT_MAP, options.conntrack_capacity)
            .map_max_entries(SLOTS_MAP, options.slots)
            .load(OBJECT)
            .context("loading the XDP object")?;
        let mut loaded = Self { ebpf, options };
        loaded
            .program()?
            .load()
            .context("loading the XDP program into the kernel")?;
        Ok(loaded)
    }

    /// A balancer over this program's maps (taking them out of `ebpf`), with `settings`.
    pub fn balancer(&mut self, settings: Settings) -> anyhow::Result<Balancer<BpfMaps>> {
        let maps = BpfMaps::new(&mut self.ebpf)?;
        Ok(Balancer::new(maps, self.options.slots, settings)?)
    }

    /// Lets the program redirect packets out of `iface` (of the calling thread's namespace).
    pub fn add_tx_port(&mut self, iface: &str) -> anyhow::Result<()> {
        let ifindex = if_index(iface)?;
        let mut tx_ports: DevMapHash<_> = self
            .ebpf
            .map_mut(TX_PORTS_MAP)
            .with_context(|| format!("no map {TX_PORTS_MAP} in the XDP object"))?
            .try_into()?;
        tx_ports
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding {iface} to {TX_PORTS_MAP}"))
    }

    /// The XDP program.
    pub fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        self.ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("no program {PROGRAM:?} in the XDP object"))?
            .try_into()
            .context("program is not XDP")
    }

    /// Attaches the program to `iface`. The attachment lasts as long as `self`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> anyhow::Result<AttachedMode> {
        // The program may redirect translated packets out of every interface it runs on.
        self.add_tx_port(iface)?;
        let (_, attached) = attach_program(self.program()?, iface, mode)?;
        info!("{iface}: XDP attached in {attached} mode");
        Ok(attached)
    }
}

/// Attaches `program` to `iface` in `mode` (`Auto`: native, falling back to skb with a log
/// line). Returns the link and the mode it got.
pub fn attach_program(
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> anyhow::Result<(XdpLinkId, AttachedMode)> {
    let attach_in = |program: &mut Xdp, mode: AttachedMode| {
        let xdp_mode = match mode {
            AttachedMode::Native => XdpMode::Driver,
            AttachedMode::Skb => XdpMode::Skb,
        };
        program
            .attach(iface, xdp_mode)
            .map(|id| (id, mode))
            .with_context(|| format!("attaching XDP to {iface} in {mode} mode"))
    };
    match mode {
        AttachMode::Native => attach_in(program, AttachedMode::Native),
        AttachMode::Skb => attach_in(program, AttachedMode::Skb),
        AttachMode::Auto => attach_in(program, AttachedMode::Native).or_else(|err| {
            warn!("{err:#}; falling back to skb mode");
            attach_in(program, AttachedMode::Skb)
        }),
    }
}

/// The index of interface `iface` in this network namespace.
pub fn if_index(iface: &str) -> anyhow::Result<u32> {
    let name =
        std::ffi::CString::new(iface).with_context(|| format!("bad interface name {iface:?}"))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface named {iface:?}"),
        index => Ok(index),
    }
}
