//! The balancer's kernel objects pinned in bpffs, so that they outlive the agent: the program,
//! every map and one link per interface. A restarted or upgraded agent adopts them instead of
//! loading anew, and traffic never notices; `xdplb stop --detach` unpins them, which detaches.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/xdplb`): `prog`, `maps/NAME`,
//! `links/IFNAME`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    maps::{MapData, PerCpuArray, xdp::DevMapHash},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
    },
};
use aya_obj::programs::XdpAttachType;
use lb_common::{
    counters::{COUNTERS_MAP, EVENTS_MAP},
    maps::{CONNTRACK_MAP, PIN_LAYOUT, REVERSE_NAT_MAP, TX_PORTS_MAP},
};
use log::info;

use crate::{
    counters::{Counters, Events},
    loader::{AttachMode, AttachedMode, LoadOptions, Loaded, PROGRAM, attach_program, if_index},
    maps::BpfMaps,
    maps::{NEXT, current_map_path, map_path},
};

pub use crate::maps::{open_map, open_untyped};

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdplb";

/// Maps whose contents only the data path has (tracked connections): a replacement program
/// must take them as they are pinned, or not at all. Every other map is rebuilt from the state
/// or only counts.
const CARRIED: [&str; 2] = [CONNTRACK_MAP, REVERSE_NAT_MAP];

/// What a pin directory says it holds: the pin layout and the program's fingerprint, from
/// the empty directories `layout-N` and `object-HASH` in it (bpffs holds no plain files).
/// Pins from before the layout was versioned have neither: layout 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedVersion {
    pub layout: u32,
    pub object: Option<String>,
}

impl PinnedVersion {
    /// Reads the markers in `dir`.
    pub fn read(dir: &Path) -> Self {
        let mut version = Self {
            layout: 0,
            object: None,
        };
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(layout) = name.strip_prefix("layout-").and_then(|n| n.parse().ok()) {
                version.layout = version.layout.max(layout);
            } else if let Some(object) = name.strip_prefix("object-") {
                version.object = Some(object.to_owned());
            }
        }
        version
    }

    /// This agent's: [`PIN_LAYOUT`] and the embedded program.
    pub fn ours() -> Self {
        Self {
            layout: PIN_LAYOUT,
            object: Some(crate::loader::object_fingerprint()),
        }
    }

    /// Makes `dir`'s markers say `self`.
    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("layout-") || name.starts_with("object-") {
                fs::remove_dir(entry.path())?;
            }
        }
        fs::create_dir(dir.join(format!("layout-{}", self.layout)))?;
        if let Some(object) = &self.object {
            fs::create_dir(dir.join(format!("object-{object}")))?;
        }
        Ok(())
    }
}

impl std::fmt::Display for PinnedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pin layout {}, program {}",
            self.layout,
            self.object.as_deref().unwrap_or("unknown")
        )
    }
}

/// The pinned program, maps and links of a balancer.
pub struct Pinned {
    dir: PathBuf,
    program: Xdp,
    links: BTreeMap<String, PinnedLink>,
}

/// Mounts bpffs on `/sys/fs/bpf` if `dir` is below it and it is not mounted yet; true if it
/// mounted it.
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<bool> {
    const BPFFS: &str = "/sys/fs/bpf";
    if !dir.starts_with(BPFFS) {
        return Ok(false);
    }
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(false);
    }
    info!("mounting bpffs on {BPFFS}");
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs on {BPFFS}"))?;
    Ok(true)
}

/// True if the pins under `dir` will not outlive the agent: this process runs in a mount
/// namespace of its own (as `ip netns exec` makes one), and the bpffs holding `dir` is one that
/// the rest of the system does not see (the agent mounted it there, `mounted_here`, or it is
/// another filesystem than the one the other side sees at that path). The other side is
/// init's mount namespace, or where init's cannot be read, the parent process's. False when
/// it cannot tell.
pub fn is_private_mount(dir: &Path, mounted_here: bool) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let ours = fs::read_link("/proc/self/ns/mnt");
    let (reference, theirs) = match fs::read_link("/proc/1/ns/mnt") {
        Ok(theirs) => (1, theirs),
        Err(_) => {
            let parent = nix::unistd::getppid().as_raw();
            match fs::read_link(format!("/proc/{parent}/ns/mnt")) {
                Ok(theirs) => (parent, theirs),
                Err(_) => return false,
            }
        }
    };
    if ours.ok().is_none_or(|ours| ours == theirs) {
        return false;
    }
    if mounted_here {
        return true;
    }
    let Some(existing) = dir.ancestors().find(|d| d.exists()) else {
        return false;
    };
    let (Ok(here), Ok(absolute)) = (fs::metadata(existing), existing.canonicalize()) else {
        return false;
    };
    let there = Path::new(&format!("/proc/{reference}/root"))
        .join(absolute.strip_prefix("/").unwrap_or(&absolute));
    match fs::metadata(there) {
        Ok(there) => (there.dev(), there.ino()) != (here.dev(), here.ino()),
        Err(err) => err.kind() == std::io::ErrorKind::NotFound,
    }
}

/// An exclusive lock on a file or directory, held until dropped (or the process exits).
#[derive(Debug)]
pub struct Lock {
    _locked: nix::fcntl::Flock<fs::File>,
}

impl Lock {
    /// Takes an exclusive lock on `path` (which must exist) without waiting; `what` names it
    /// in the refusal, which names the process holding it.
    pub fn take(path: &Path, what: &str) -> anyhow::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(locked) => Ok(Self { _locked: locked }),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = file
                    .metadata()
                    .ok()
                    .and_then(|m| flock_holder(m.dev(), m.ino()))
                    .map_or_else(|| "another process".to_owned(), |pid| format!("pid {pid}"));
                bail!(
                    "{what} {} is in use by another xdplb agent ({holder}); stop it first \
                     (`xdplb stop`) or give this one its own",
                    path.display()
                )
            }
            Err((_, err)) => Err(err).with_context(|| format!("locking {}", path.display())),
        }
    }
}

/// The pid holding a `flock` on the file `(dev, ino)`, from `/proc/locks`.
fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let wanted = format!("{major:02x}:{minor:02x}:{ino}");
    fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .find_map(|line| {
            // `1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == "FLOCK")?;
            let pid = fields.get(at + 3)?;
            (fields.get(at + 4)? == &wanted).then(|| pid.parse().ok())?
        })
}

/// Removes the pin directories `{prefix}-ephemeral-{pid}` next to `dir` whose agent is gone
/// (killed before it could detach): unpinning detaches their programs and frees their maps.
pub fn remove_stale_ephemeral(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    let prefix = format!("{name}-ephemeral-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => info!(
                    "removed {}, left by an agent that is gone",
                    entry.path().display()
                ),
                Err(err) => log::warn!("removing {}: {err}", entry.path().display()),
            }
        }
    }
}

impl Pinned {
    /// True if a balancer is pinned under `dir`.
    pub fn exists(dir: &Path) -> bool {
        dir.join("prog").exists()
    }

    /// Pins a freshly loaded program and all its maps under `dir`, then opens them from there.
    pub fn create(mut loaded: Loaded, dir: &Path) -> anyhow::Result<Self> {
        ensure_bpffs(dir)?;
        if Self::exists(dir) {
            bail!("{} already holds a pinned balancer", dir.display());
        }
        fs::create_dir_all(dir.join("maps"))
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::create_dir_all(dir.join("links"))?;
        for (name, map) in loaded.ebpf.maps() {
            map.pin(map_path(dir, name))
                .with_context(|| format!("pinning map {name}"))?;
        }
        loaded
            .program()?
            .pin(dir.join("prog"))
            .context("pinning the program")?;
        drop(loaded);
        PinnedVersion::ours().write(dir)?;
        Self::open(dir)
    }

    /// The first half of replacing the pinned program with the embedded one (an upgrade, or
    /// `--replace-program`): loads it with every pinned map whose type, key, value, capacity
    /// and flags it declares alike (so the connection table and the reverse translations
    /// survive; a pinned one of those that does not fit is refused), and pins it and the maps it
    /// creates next to the old ones, as `prog-next` and
    /// `maps/NAME-next` (each map made anew is logged, with why). Traffic still runs the old
    /// program. [`Pinned::maps`] opens the new program's maps from here on, for filling.
    pub fn stage_replacement(&mut self, options: LoadOptions) -> anyhow::Result<()> {
        self.remove_staged();
        let mut reuse = Vec::new();
        let mut created = Vec::new();
        for (name, spec) in crate::loader::declared_maps(&options)? {
            let path = map_path(&self.dir, &name);
            let why = match crate::loader::MapSpec::pinned(&path) {
                Ok(pinned) if pinned.fits(&spec) => {
                    reuse.push((name, path));
                    continue;
                }
                Ok(pinned) if CARRIED.contains(&name.as_str()) => bail!(
                    "map {name} is pinned as {pinned}, this program's is {spec}: the tracked \
                     connections it holds cannot be carried over; `xdplb stop --detach`, then \
                     start, makes it anew (they are lost)"
                ),
                Ok(pinned) => format!("pinned as {pinned}, now {spec}"),
                Err(_) => "not pinned".to_owned(),
            };
            created.push((name, why));
        }
        for (name, why) in &created {
            log::warn!("map {name} is made anew ({why}): what it held is lost");
        }
        let mut loaded = Loaded::load_reusing(options, &reuse)?;
        for (name, _) in &created {
            let map = loaded
                .ebpf
                .map(name)
                .with_context(|| format!("no map {name} in the XDP object"))?;
            map.pin(map_path(&self.dir, &format!("{name}{NEXT}")))
                .with_context(|| format!("pinning map {name}"))?;
        }
        loaded
            .program()?
            .pin(self.dir.join(format!("prog{NEXT}")))
            .context("pinning the new program")
    }

    /// The second half: every interface's link switches to the staged program atomically
    /// (`bpf_link_update`), and its pins take the place of the old ones, which are freed.
    pub fn finish_replacement(&mut self) -> anyhow::Result<()> {
        let next = self.dir.join(format!("prog{NEXT}"));
        let mut program =
            Xdp::from_pin(&next, XdpAttachType::Interface).context("opening the staged program")?;
        for iface in self.links.keys() {
            let link = PinnedLink::from_pin(self.dir.join("links").join(iface))
                .with_context(|| format!("opening the link of {iface}"))?;
            let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(link))
                .with_context(|| format!("the link of {iface} is not an XDP link"))?;
            let id = program
                .attach_to_link(link)
                .with_context(|| format!("switching {iface} to the new program"))?;
            // The link lives on through its pin; this handle goes.
            drop(program.take_link(id)?);
            info!("{iface}: switched to the new program");
        }
        for entry in fs::read_dir(self.dir.join("maps"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(map) = name.strip_suffix(NEXT) {
                fs::rename(entry.path(), map_path(&self.dir, map))
                    .with_context(|| format!("replacing the pin of map {map}"))?;
            }
        }
        fs::rename(&next, self.dir.join("prog")).context("replacing the program's pin")?;
        PinnedVersion::ours().write(&self.dir)?;
        *self = Self::open(&self.dir)?;
        Ok(())
    }

    /// Removes what a replacement that did not finish left: `-next` pins.
    pub fn remove_staged(&self) {
        let _ = fs::remove_file(self.dir.join(format!("prog{NEXT}")));
        for entry in fs::read_dir(self.dir.join("maps"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_name().to_string_lossy().ends_with(NEXT) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Opens the balancer pinned under `dir`, with the links it has.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let program = Xdp::from_pin(dir.join("prog"), XdpAttachType::Interface)
            .with_context(|| format!("opening the pinned program in {}", dir.display()))?;
        let mut links = BTreeMap::new();
        for entry in fs::read_dir(dir.join("links"))?.flatten() {
            let iface = entry.file_name().to_string_lossy().into_owned();
            let link = PinnedLink::from_pin(entry.path())
                .with_context(|| format!("opening the pinned link of {iface}"))?;
            links.insert(iface, link);
        }
        Ok(Self {
            dir: dir.to_owned(),
            program,
            links,
        })
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The program's tag (the kernel's hash of its instructions, as `bpftool prog` shows it).
    pub fn program_tag(&self) -> anyhow::Result<String> {
        Ok(format!("{:016x}", self.program.info()?.tag()))
    }

    /// Interfaces the program is attached to.
    pub fn ifaces(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// The typed maps the balancer writes.
    pub fn maps(&self) -> anyhow::Result<BpfMaps> {
        BpfMaps::open(&self.dir)
    }

    /// The settings the running program uses, also those of a program from before the `ipip`
    /// prefixes were added to them (read as [`Settings::from_v2_bytes`]), which an upgrade
    /// adopts and replaces.
    pub fn settings(&self) -> anyhow::Result<lb_common::maps::Settings> {
        use aya::maps::Array;
        use lb_common::maps::{SETTINGS_MAP, SETTINGS_V2_SIZE, Settings};
        if let Ok(map) = open_map::<Array<MapData, Settings>>(&self.dir, SETTINGS_MAP) {
            return Ok(map.get(&0, 0)?);
        }
        let old: Array<MapData, [u8; SETTINGS_V2_SIZE]> = open_map(&self.dir, SETTINGS_MAP)?;
        Ok(Settings::from_v2_bytes(&old.get(&0, 0)?))
    }

    /// Flows the connection table holds.
    pub fn conntrack_capacity(&self) -> anyhow::Result<u32> {
        self.capacity(lb_common::maps::CONNTRACK_MAP)
    }

    /// Entries the pinned map `name` holds at most.
    pub fn capacity(&self, name: &str) -> anyhow::Result<u32> {
        let path = current_map_path(&self.dir, name);
        let map = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        Ok(map.info()?.max_entries())
    }

    /// The outcome counters.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let map: PerCpuArray<MapData, u64> = open_map(&self.dir, COUNTERS_MAP)?;
        Counters::from_map(&map)
    }

    /// Sets the outcome counters, the connection tables' event counts, and the traffic of the
    /// VIPs `vip_ids` and of the backends at `backend_indices` to zero on every CPU. An
    /// increment the data path makes while its counter is written may be lost.
    pub fn zero_stats(&self, vip_ids: &[u32], backend_indices: &[u32]) -> anyhow::Result<()> {
        for name in [COUNTERS_MAP, EVENTS_MAP] {
            let mut map: PerCpuArray<MapData, u64> = open_map(&self.dir, name)?;
            let indices: Vec<u32> = (0..map.len()).collect();
            zero_per_cpu(&mut map, &indices).with_context(|| format!("zeroing {name}"))?;
        }
        for (name, indices) in [
            (lb_common::maps::VIP_STATS_MAP, vip_ids),
            (lb_common::maps::BACKEND_STATS_MAP, backend_indices),
        ] {
            let mut map: PerCpuArray<MapData, lb_common::maps::Stats> = open_map(&self.dir, name)?;
            zero_per_cpu(&mut map, indices).with_context(|| format!("zeroing {name}"))?;
        }
        Ok(())
    }

    /// The connection tables' event counts, summed over CPUs.
    pub fn events(&self) -> anyhow::Result<Events> {
        let map: PerCpuArray<MapData, u64> = open_map(&self.dir, EVENTS_MAP)?;
        Events::from_map(&map)
    }

    /// Attaches to `iface` (of the calling thread's namespace) and pins the link; an interface
    /// already attached by an earlier agent is kept as it is. Returns the mode, or `None` if it
    /// was already attached.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> anyhow::Result<Option<AttachedMode>> {
        let ifindex = if_index(iface)?;
        let mut tx_ports: DevMapHash<MapData> = open_map(&self.dir, TX_PORTS_MAP)?;
        tx_ports
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding {iface} to {TX_PORTS_MAP}"))?;
        if self.links.contains_key(iface) {
            info!("{iface}: XDP already attached (adopted)");
            return Ok(None);
        }
        let (id, attached) = attach_program(&mut self.program, iface, mode)?;
        let link: FdLink = self
            .program
            .take_link(id)?
            .try_into()
            .context("XDP link is not a bpf_link (kernel too old to pin it)")?;
        let pinned = link
            .pin(self.dir.join("links").join(iface))
            .with_context(|| format!("pinning the link of {iface}"))?;
        self.links.insert(iface.to_owned(), pinned);
        info!("{iface}: XDP attached in {attached} mode");
        Ok(Some(attached))
    }

    /// Detaches the program from `iface`: its link is unpinned and closed, and the program no
    /// longer redirects packets out of it.
    pub fn detach(&mut self, iface: &str) -> anyhow::Result<()> {
        let link = self
            .links
            .remove(iface)
            .with_context(|| format!("the program is not attached to {iface}"))?;
        // Closing the last handle of an unpinned link detaches it.
        drop(
            link.unpin()
                .with_context(|| format!("unpinning the link of {iface}"))?,
        );
        if let Ok(ifindex) = if_index(iface) {
            let mut tx_ports: DevMapHash<MapData> = open_map(&self.dir, TX_PORTS_MAP)?;
            let _ = tx_ports.remove(ifindex);
        }
        Ok(())
    }

    /// Unpins everything: the program is detached from every interface and its maps are freed
    /// once nothing else holds them.
    pub fn remove(self) -> anyhow::Result<()> {
        for (iface, link) in self.links {
            link.unpin()
                .with_context(|| format!("unpinning the link of {iface}"))?;
        }
        fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

/// Name of the program in the pin directory, for messages.
pub const PROGRAM_NAME: &str = PROGRAM;

/// Writes the default value to `indices` of a per-CPU array, on every CPU.
fn zero_per_cpu<T: aya::Pod + Default + Clone>(
    map: &mut PerCpuArray<MapData, T>,
    indices: &[u32],
) -> anyhow::Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
    for &index in indices {
        let zeros = aya::maps::PerCpuValues::try_from(vec![T::default(); cpus])?;
        map.set(index, zeros, 0)?;
    }
    Ok(())
}
