//! Loading the embedded XDP program and attaching it to interfaces.

use std::fmt;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use log::{info, warn};

/// The XDP program's object file, built by `build.rs`. Empty when built without bpf-linker.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

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

/// The loaded program and its maps. Dropping it detaches the program everywhere.
pub struct Loaded {
    pub ebpf: Ebpf,
}

impl Loaded {
    /// Loads the embedded object and the XDP program into the kernel (verifier included).
    pub fn load() -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!(
                "this xdplb binary was built without its XDP program (bpf-linker was not found \
                 at build time); run `cargo xtask build`"
            );
        }
        let mut loaded = Self {
            ebpf: Ebpf::load(OBJECT).context("loading the XDP object")?,
        };
        loaded
            .program()?
            .load()
            .context("loading the XDP program into the kernel")?;
        Ok(loaded)
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
        if_index(iface)?;
        let program = self.program()?;
        let attached = match mode {
            AttachMode::Native => attach_in(program, iface, AttachedMode::Native)?,
            AttachMode::Skb => attach_in(program, iface, AttachedMode::Skb)?,
            AttachMode::Auto => match attach_in(program, iface, AttachedMode::Native) {
                Ok(native) => native,
                Err(err) => {
                    warn!("{err:#}; falling back to skb mode");
                    attach_in(program, iface, AttachedMode::Skb)?
                }
            },
        };
        info!("{iface}: XDP attached in {attached} mode");
        Ok(attached)
    }
}

fn attach_in(program: &mut Xdp, iface: &str, mode: AttachedMode) -> anyhow::Result<AttachedMode> {
    let xdp_mode = match mode {
        AttachedMode::Native => XdpMode::Driver,
        AttachedMode::Skb => XdpMode::Skb,
    };
    program
        .attach(iface, xdp_mode)
        .with_context(|| format!("attaching XDP to {iface} in {mode} mode"))?;
    Ok(mode)
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
