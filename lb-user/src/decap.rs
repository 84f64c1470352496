//! `xdplb decap --iface IF [--detach]`: the backends' side of `ipip` forwarding. Attaches the
//! decapsulation program (`lb-ebpf/src/bin/decap.rs`: IPv4-in-IPv4 and IPv6-in-IPv6 packets
//! arriving on the interface lose their outer header and go to the stack) and pins its link
//! under [`DECAP_PIN_ROOT`]`/netns-INODE/IF` (the network namespace's inode: backends in
//! namespaces of one host may all have an `eth0`), so that it stays attached after the command
//! exits. Run again,
//! it replaces the program in the pinned link atomically (`bpf_link_update`: no packet goes
//! undecapsulated); `--detach` unpins the link, which detaches the program.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use log::{info, warn};

use crate::loader::{AttachMode, attach_program, capability_hint};

/// The decapsulation program's object, built by `build.rs` from `lb-ebpf`'s `decap` binary.
/// Empty without bpf-linker, like the balancer's.
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap"));

/// Name of the XDP program in [`DECAP_OBJECT`].
pub const DECAP_PROGRAM: &str = "decap";

/// Where the links are pinned, one directory per interface.
pub const DECAP_PIN_ROOT: &str = "/sys/fs/bpf/xdplb-decap";

/// Loads [`DECAP_OBJECT`] and its program into the kernel.
pub fn load() -> anyhow::Result<Ebpf> {
    if DECAP_OBJECT.is_empty() {
        bail!("xdplb was built without its XDP programs (stub object); run `cargo xtask build`");
    }
    let mut ebpf = Ebpf::load(DECAP_OBJECT)
        .context("loading the decapsulation object")
        .map_err(capability_hint)?;
    let program: &mut Xdp = ebpf
        .program_mut(DECAP_PROGRAM)
        .context("no decap program in its object")?
        .try_into()
        .context("decap is not an XDP program")?;
    program
        .load()
        .context("the kernel refused the decapsulation program")
        .map_err(capability_hint)?;
    Ok(ebpf)
}

/// The directory of `iface`'s pins: per network namespace (of the calling thread), per
/// interface.
fn iface_dir(root: &Path, iface: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let netns = fs::metadata("/proc/thread-self/ns/net")
        .context("reading this thread's network namespace")?
        .ino();
    Ok(root.join(format!("netns-{netns}")).join(iface))
}

/// Attaches the decapsulation program to `iface` (of the calling thread's network namespace)
/// and pins its link under `root/netns-INODE/IFACE`; if a link is pinned there already, switches it to the
/// program just loaded, atomically.
pub fn attach(root: &Path, iface: &str, mode: AttachMode) -> anyhow::Result<()> {
    let mounted_here = crate::pin::ensure_bpffs(root)?;
    if crate::pin::is_private_mount(root, mounted_here) {
        warn!(
            "{} is on a bpffs private to this mount namespace (as `ip netns exec` makes): the \
             program is detached when this command exits; run it with `nsenter --net=/var/run/\
             netns/NS xdplb decap ...` (or give it the host's bpffs)",
            root.display()
        );
    }
    let dir = iface_dir(root, iface)?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ebpf = load()?;
    let program: &mut Xdp = ebpf
        .program_mut(DECAP_PROGRAM)
        .context("no decap program")?
        .try_into()?;
    let path = dir.join("link");
    if path.exists() {
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening the pinned link {}", path.display()))?;
        let link = XdpLink::try_from(FdLink::from(link))
            .with_context(|| format!("{} is not an XDP link", path.display()))?;
        let id = program
            .attach_to_link(link)
            .with_context(|| format!("switching {iface} to the new decapsulation program"))?;
        // The link lives on through its pin.
        drop(program.take_link(id)?);
        info!("{iface}: decapsulation program replaced");
        return Ok(());
    }
    let (id, attached) = attach_program(program, iface, mode)?;
    let link: FdLink = program
        .take_link(id)?
        .try_into()
        .context("XDP link is not a bpf_link (kernel too old to pin it)")?;
    link.pin(&path)
        .with_context(|| format!("pinning the link of {iface}"))?;
    info!("{iface}: decapsulation program attached in {attached} mode");
    Ok(())
}

/// Detaches the decapsulation program from `iface`: its pinned link is removed.
pub fn detach(root: &Path, iface: &str) -> anyhow::Result<()> {
    let dir = iface_dir(root, iface)?;
    let path = dir.join("link");
    let link = PinnedLink::from_pin(&path).with_context(|| {
        format!(
            "no decapsulation program pinned for {iface} ({})",
            path.display()
        )
    })?;
    // Closing the last handle of an unpinned link detaches it.
    drop(
        link.unpin()
            .with_context(|| format!("unpinning {}", path.display()))?,
    );
    let _ = fs::remove_dir(&dir);
    if let Some(netns) = dir.parent() {
        let _ = fs::remove_dir(netns);
    }
    info!("{iface}: decapsulation program detached");
    Ok(())
}
