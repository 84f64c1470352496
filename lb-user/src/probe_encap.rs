//! The agent's TC program for health checks through the `ipip` tunnel
//! (`lb-ebpf/src/bin/probe_encap.rs`, `[vip.health] path = "vip"`): loaded when the first such
//! check needs it, attached to the egress of each interface the checks' routes leave by, its
//! map holding the tunnel of each check's socket mark. Nothing is pinned: the program and its
//! links live as long as the agent that checks, and dropping [`ProbeEncap`] detaches it.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use lb_common::probe::{PROBE_TUNNELS_MAP, ProbeTunnel};
use log::info;

use crate::loader::capability_hint;

/// The program's object, built by `build.rs` from `lb-ebpf`'s `probe_encap` binary. Empty
/// without bpf-linker, like the balancer's.
pub static PROBE_ENCAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe_encap"));

/// Name of the TC program in [`PROBE_ENCAP_OBJECT`].
pub const PROBE_ENCAP_PROGRAM: &str = "probe_encap";

/// The loaded program, the interfaces it is attached to and the tunnels in its map.
pub struct ProbeEncap {
    ebpf: Ebpf,
    /// Interface index → its link.
    links: BTreeMap<u32, SchedClassifierLinkId>,
    /// Mark → backend, as in the map.
    tunnels: BTreeMap<u32, IpAddr>,
}

impl std::fmt::Debug for ProbeEncap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeEncap")
            .field("ifaces", &self.links.keys().collect::<Vec<_>>())
            .field("tunnels", &self.tunnels)
            .finish()
    }
}

impl ProbeEncap {
    /// Loads the program into the kernel, attached nowhere, its map empty.
    pub fn load() -> anyhow::Result<Self> {
        if PROBE_ENCAP_OBJECT.is_empty() {
            bail!(
                "xdplb was built without its eBPF programs (stub object); run `cargo xtask build`"
            );
        }
        let mut ebpf = Ebpf::load(PROBE_ENCAP_OBJECT)
            .context("loading the health checks' encapsulation object")
            .map_err(capability_hint)?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(PROBE_ENCAP_PROGRAM)
            .context("no probe_encap program in its object")?
            .try_into()
            .context("probe_encap is not a TC program")?;
        program
            .load()
            .context("the kernel refused the health checks' encapsulation program")
            .map_err(capability_hint)?;
        Ok(Self {
            ebpf,
            links: BTreeMap::new(),
            tunnels: BTreeMap::new(),
        })
    }

    fn program(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(PROBE_ENCAP_PROGRAM)
            .context("no probe_encap program")?
            .try_into()?)
    }

    /// The interfaces (indexes) the program is attached to.
    pub fn ifaces(&self) -> impl Iterator<Item = u32> + '_ {
        self.links.keys().copied()
    }

    /// Attaches the program to the egress of interface `ifindex`, if it is not yet.
    pub fn attach(&mut self, ifindex: u32) -> anyhow::Result<()> {
        if self.links.contains_key(&ifindex) {
            return Ok(());
        }
        let name = nix::net::if_::if_indextoname(ifindex)
            .with_context(|| format!("no interface of index {ifindex}"))?;
        let name = name.to_string_lossy().into_owned();
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        if !tcx {
            // Before TCX, TC programs hang off a clsact qdisc, which may be there already.
            let _ = aya::programs::tc::qdisc_add_clsact(&name);
        }
        let id = self
            .program()?
            .attach(&name, TcAttachType::Egress)
            .with_context(|| format!("attaching the health checks' encapsulation to {name}"))?;
        info!("{name}: health checks through the ipip tunnel encapsulated on egress");
        self.links.insert(ifindex, id);
        Ok(())
    }

    /// Detaches the program from interface `ifindex`, if it is attached there.
    pub fn detach(&mut self, ifindex: u32) -> anyhow::Result<()> {
        let Some(id) = self.links.remove(&ifindex) else {
            return Ok(());
        };
        self.program()?
            .detach(id)
            .with_context(|| format!("detaching the encapsulation from interface {ifindex}"))
    }

    fn map(&mut self) -> anyhow::Result<HashMap<&mut MapData, u32, ProbeTunnel>> {
        Ok(HashMap::try_from(
            self.ebpf
                .map_mut(PROBE_TUNNELS_MAP)
                .context("no PROBE_TUNNELS map")?,
        )?)
    }

    /// Encapsulates checks marked `mark` to `backend`.
    pub fn set_tunnel(&mut self, mark: u32, backend: IpAddr) -> anyhow::Result<()> {
        if self.tunnels.get(&mark) == Some(&backend) {
            return Ok(());
        }
        let tunnel = match backend {
            IpAddr::V4(v4) => ProbeTunnel::v4(v4.octets()),
            IpAddr::V6(v6) => ProbeTunnel::v6(v6.octets()),
        };
        self.map()?
            .insert(mark, tunnel, 0)
            .with_context(|| format!("the tunnel of mark {mark:#x}"))?;
        self.tunnels.insert(mark, backend);
        Ok(())
    }

    /// Stops encapsulating checks marked `mark`.
    pub fn remove_tunnel(&mut self, mark: u32) -> anyhow::Result<()> {
        if self.tunnels.remove(&mark).is_none() {
            return Ok(());
        }
        match self.map()?.remove(&mark) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("removing the tunnel of {mark:#x}")),
        }
    }

    /// Whether any tunnel is left.
    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    /// The program, for test runs.
    pub fn classifier(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        self.program()
    }
}
