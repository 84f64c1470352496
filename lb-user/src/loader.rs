//! Loading the embedded XDP program and attaching it to interfaces.

use std::{fmt, io};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::xdp::DevMapHash,
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::maps::{
    CONNTRACK_MAP, DEFAULT_CONNTRACK_CAPACITY, DEFAULT_EMBRYONIC_CAPACITY, DEFAULT_SLOTS,
    EMBRYONIC_MAP, EMBRYONIC_REVERSE_MAP, REVERSE_NAT_MAP, SLOTS_MAP, TX_PORTS_MAP,
};

use log::{debug, info, warn};

/// The XDP program's object file, built by `build.rs`. Empty when built without bpf-linker.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// The toolchain that built the objects (`nightly-2026-05-20 (LLVM 22.1.4)`), from `build.rs`;
/// empty for the stubs.
const BUILT_WITH: &str = env!("XDPLB_EBPF_BUILT_WITH");

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
    /// Half-open TCP flows the embryonic table holds.
    pub embryonic_capacity: u32,
    /// Entries of the slots array that holds every VIP's tables.
    pub slots: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conntrack_capacity: DEFAULT_CONNTRACK_CAPACITY,
            embryonic_capacity: DEFAULT_EMBRYONIC_CAPACITY,
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
        Self::load_reusing(options, &[])
    }

    /// The sizes it was loaded with.
    pub fn options(&self) -> LoadOptions {
        self.options
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

/// One line for a program the kernel did not load: missing capabilities for `EPERM`, otherwise
/// what the verifier said, where, and which toolchain built the program (a new LLVM can emit
/// code the verifier refuses). The verifier's full log goes to the debug log.
pub(crate) fn refused(err: ProgramError, what: &str) -> anyhow::Error {
    let (io_error, log) = match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => (io_error, verifier_log.to_string()),
        err => {
            return capability_hint(
                anyhow!(err).context(format!("loading {what} into the kernel")),
            );
        }
    };
    debug!("the verifier's log for {what}:\n{log}");
    if io_error.raw_os_error() == Some(libc::EPERM) {
        return capability_hint(
            anyhow!(io_error).context(format!("the kernel did not load {what}")),
        );
    }
    let cause = match verifier_cause(&log) {
        Some(cause) => cause.to_string(),
        None => "no verifier message".to_owned(),
    };
    // EACCES: the verifier refuses what it allows only to CAP_PERFMON (pointer arithmetic, ...).
    let why = if io_error.raw_os_error() == Some(libc::EACCES) {
        CAPABILITIES.to_owned()
    } else {
        format!("built with {BUILT_WITH}")
    };
    anyhow!(
        "the kernel refused {what} ({io_error}): {cause}; {why}; `xdplb -v` (RUST_LOG=debug) \
         shows the verifier's full log"
    )
}

/// What loading the program takes, said when the kernel answers `EPERM` or `EACCES`.
const CAPABILITIES: &str = "xdplb needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON";

/// Prefixes an error whose cause is `EPERM` with the capabilities xdplb needs.
pub(crate) fn capability_hint(err: anyhow::Error) -> anyhow::Error {
    let eperm = err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|err| err.raw_os_error() == Some(libc::EPERM))
    });
    if eperm {
        err.context(format!("not permitted: {CAPABILITIES}"))
    } else {
        err
    }
}

/// What a verifier log says went wrong: its closing message, the instruction it stopped at and
/// that instruction's source line, when the log has them.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifierCause<'a> {
    pub message: Vec<&'a str>,
    pub instruction: Option<&'a str>,
    pub source: Option<&'a str>,
}

/// Reads the cause from a verifier log: the message lines after the last instruction (at most
/// two, without the statistics the kernel appends), that instruction (`3833: (5f) r9 &= r1`)
/// and the last source line before it (`conntrack.rs:69`). `None` if the log has no message.
pub fn verifier_cause(log: &str) -> Option<VerifierCause<'_>> {
    const STATISTICS: [&str; 3] = ["verification time", "stack depth", "processed "];
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .filter(|line| !STATISTICS.iter().any(|prefix| line.starts_with(prefix)))
        .collect();
    // Instructions and register states start with an instruction index: `3833: (5f) r9 &= r1`.
    let numbered = |line: &str| {
        line.split_once(':').is_some_and(|(index, _)| {
            !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())
        })
    };
    let last_numbered = lines.iter().rposition(|line| numbered(line));
    let after = last_numbered.map_or(0, |index| index + 1);
    let message: Vec<&str> = lines[after..]
        .iter()
        .copied()
        .filter(|line| !line.starts_with(';'))
        .collect();
    if message.is_empty() {
        return None;
    }
    let message = message[message.len().saturating_sub(2)..].to_vec();
    let instruction = last_numbered
        .map(|index| lines[index])
        .filter(|line| line.contains(": ("))
        .map(|line| {
            line.split_once(" ;")
                .map_or(line, |(insn, _)| insn)
                .trim_end()
        });
    let source = last_numbered.and_then(|index| {
        lines[..index]
            .iter()
            .rev()
            .find(|line| line.starts_with(';'))
            .and_then(|line| line.rsplit_once(" @ "))
            .map(|(_, source)| source)
    });
    Some(VerifierCause {
        message,
        instruction,
        source,
    })
}

impl fmt::Display for VerifierCause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message.join("; "))?;
        match (self.instruction, self.source) {
            (Some(insn), Some(source)) => write!(f, ", at instruction {insn} ({source})"),
            (Some(insn), None) => write!(f, ", at instruction {insn}"),
            (None, _) => Ok(()),
        }
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

/// A map as declared by an object or as pinned: what decides whether a pinned map can serve a
/// new program unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for MapSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

impl MapSpec {
    /// Whether a map of this spec can serve as one declared `declared`. The loader adds
    /// `BPF_F_RDONLY_PROG` to device maps when it creates them; that is no difference.
    pub fn fits(&self, declared: &MapSpec) -> bool {
        const BPF_F_RDONLY_PROG: u32 = 1 << 7;
        MapSpec {
            flags: self.flags & !BPF_F_RDONLY_PROG,
            ..self.clone()
        } == MapSpec {
            flags: declared.flags & !BPF_F_RDONLY_PROG,
            ..declared.clone()
        }
    }

    /// The spec of a map pinned at `path`.
    pub fn pinned(path: &std::path::Path) -> anyhow::Result<Self> {
        let info = aya::maps::MapInfo::from_pin(path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Self {
            map_type: info.map_type()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }
}

/// The maps the embedded object declares, by name, with the sizes of `options`. Global data
/// sections (`.rodata` and the like) belong to one program and are left out.
pub fn declared_maps(options: &LoadOptions) -> anyhow::Result<Vec<(String, MapSpec)>> {
    if OBJECT.is_empty() {
        bail!("this xdplb binary was built without its XDP program; run `cargo xtask build`");
    }
    let object = aya_obj::Object::parse(OBJECT).context("parsing the XDP object")?;
    let mut maps: Vec<(String, MapSpec)> = object
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, map)| {
            let max_entries = match name.as_str() {
                CONNTRACK_MAP | REVERSE_NAT_MAP => options.conntrack_capacity,
                EMBRYONIC_MAP | EMBRYONIC_REVERSE_MAP => options.embryonic_capacity,
                SLOTS_MAP => options.slots,
                _ => map.max_entries(),
            };
            let spec = MapSpec {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries,
                flags: map.map_flags(),
            };
            (name.clone(), spec)
        })
        .collect();
    maps.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(maps)
}

/// A short fingerprint of the embedded object (FNV-1a): a new build of the program has another.
pub fn object_fingerprint() -> String {
    let hash = OBJECT.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Times the program load is tried when the verifier is interrupted.
const LOAD_ATTEMPTS: u32 = 5;

impl Loaded {
    /// Loads the embedded object like [`Loaded::load_with`], with the maps named in `reuse`
    /// taken from their pins instead of created.
    pub fn load_reusing(
        options: LoadOptions,
        reuse: &[(String, std::path::PathBuf)],
    ) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!("this xdplb binary was built without its XDP program; run `cargo xtask build`");
        }
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(CONNTRACK_MAP, options.conntrack_capacity)
            .map_max_entries(REVERSE_NAT_MAP, options.conntrack_capacity)
            .map_max_entries(EMBRYONIC_MAP, options.embryonic_capacity)
            .map_max_entries(EMBRYONIC_REVERSE_MAP, options.embryonic_capacity)
            .map_max_entries(SLOTS_MAP, options.slots);
        for (name, path) in reuse {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(OBJECT)
            .context("loading the XDP object")
            .map_err(capability_hint)?;
        let mut loaded = Self { ebpf, options };
        // The verifier gives up with EAGAIN when a signal arrives while it works (a second or
        // more for this program on a busy machine); like libbpf, try again a few times.
        let mut attempts = 1;
        loop {
            match loaded.program()?.load() {
                Ok(()) => break,
                Err(aya::programs::ProgramError::LoadError { io_error, .. })
                    if io_error.raw_os_error() == Some(libc::EAGAIN)
                        && attempts < LOAD_ATTEMPTS =>
                {
                    attempts += 1;
                    log::debug!("the verifier was interrupted (EAGAIN); loading again");
                }
                Err(err) => return Err(refused(err, "the XDP program")),
            }
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::{VerifierCause, verifier_cause};

    /// The end of the log with which the kernel refused the program built by LLVM 23.
    const LLVM_23_LOG: &str = "\
0: R1=ctx() R10=fp0
; unsafe { (*self.ctx).data as usize } @ xdp.rs:16
0: (61) r7 = *(u32 *)(r1 +0)          ; R1=ctx() R7=pkt(r=0)
; } @ conntrack.rs:69
3830: (18) r1 = 0xffffffff00000000    ; frame1: R1=0xffffffff00000000
3832: (bf) r9 = r0                    ; frame1: R0=map_value(map=BACKENDS,ks=4,vs=32) R9=map_value(map=BACKENDS,ks=4,vs=32)
3833: (5f) r9 &= r1
math between map_value pointer and -4294967296 is not allowed
verification time 1518061 usec
stack depth 144+104+16+104+128
processed 178994 insns (limit 1000000) max_states_per_insn 5 total_states 4758 peak_states 180 mark_read 0
";

    #[test]
    fn names_the_verifiers_message_instruction_and_source_line() {
        let cause = verifier_cause(LLVM_23_LOG).expect("a cause");
        assert_eq!(
            cause,
            VerifierCause {
                message: vec!["math between map_value pointer and -4294967296 is not allowed"],
                instruction: Some("3833: (5f) r9 &= r1"),
                source: Some("conntrack.rs:69"),
            }
        );
        assert_eq!(
            cause.to_string(),
            "math between map_value pointer and -4294967296 is not allowed, \
             at instruction 3833: (5f) r9 &= r1 (conntrack.rs:69)"
        );
    }

    #[test]
    fn keeps_the_last_two_message_lines_and_drops_register_states() {
        let log = "\
395: (85) call bpf_cpumask_and#65708
invalid access to map value, value_size=1320 off=1280 size=1024
R3 max value is outside of the allowed memory range
processed 365 insns (limit 1000000) max_states_per_insn 1 total_states 35 peak_states 35 mark_read 19
";
        let cause = verifier_cause(log).expect("a cause");
        assert_eq!(
            cause.message,
            [
                "invalid access to map value, value_size=1320 off=1280 size=1024",
                "R3 max value is outside of the allowed memory range"
            ]
        );
        assert_eq!(
            cause.instruction,
            Some("395: (85) call bpf_cpumask_and#65708")
        );
        assert_eq!(cause.source, None);
    }

    #[test]
    fn reads_a_message_without_instructions() {
        let cause =
            verifier_cause("back-edge from insn 12 to 4\nprocessed 0 insns\n").expect("a cause");
        assert_eq!(cause.to_string(), "back-edge from insn 12 to 4");
    }

    #[test]
    fn has_no_cause_without_a_message() {
        assert_eq!(verifier_cause(""), None);
        assert_eq!(verifier_cause("0: R1=ctx() R10=fp0\n"), None);
        assert_eq!(
            verifier_cause("3: (95) exit\nverification time 5 usec\n"),
            None
        );
    }
}
