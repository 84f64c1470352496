//! The capabilities the agent needs, checked at start so that a missing one is one clear line
//! instead of a verifier log.
//!
//! `CAP_BPF` creates the maps and loads the program, `CAP_PERFMON` lets the verifier accept
//! the program's pointer arithmetic on packet and map values (without it the load fails),
//! `CAP_NET_ADMIN` loads an XDP program and attaches it. `CAP_SYS_ADMIN` stands in for
//! `CAP_BPF` and `CAP_PERFMON`, as on kernels before 5.8.

/// A capability the agent needs: its number, name and what for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Cap {
    pub number: u32,
    pub name: &'static str,
    pub why: &'static str,
}

pub const CAP_NET_ADMIN: Cap = Cap {
    number: 12,
    name: "CAP_NET_ADMIN",
    why: "to load an XDP program and attach it",
};
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: Cap = Cap {
    number: 38,
    name: "CAP_PERFMON",
    why: "for the verifier to accept the program",
};
pub const CAP_BPF: Cap = Cap {
    number: 39,
    name: "CAP_BPF",
    why: "to create the maps and load the program",
};

/// What the agent needs, as documented (README, systemd unit).
pub const REQUIRED: [Cap; 3] = [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON];

/// The capabilities of `REQUIRED` missing from the effective set `effective` (a bit per
/// capability number).
pub fn missing(effective: u64) -> Vec<Cap> {
    let has = |n: u32| effective & (1 << n) != 0;
    REQUIRED
        .into_iter()
        .filter(|cap| {
            let covered = has(CAP_SYS_ADMIN) && (*cap == CAP_BPF || *cap == CAP_PERFMON);
            !has(cap.number) && !covered
        })
        .collect()
}

/// The effective capability set of this process (`CapEff` in `/proc/self/status`).
pub fn effective() -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .context("no CapEff in /proc/self/status")?;
    u64::from_str_radix(hex.trim(), 16).context("parsing CapEff")
}

/// Fails with one line naming each missing capability and what it is for.
pub fn check() -> anyhow::Result<()> {
    let missing = missing(effective()?);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing
        .iter()
        .map(|cap| format!("{} ({})", cap.name, cap.why))
        .collect();
    anyhow::bail!(
        "missing capabilities: {}; run as root, or grant exactly {} (the systemd unit does)",
        names.join(", "),
        REQUIRED.map(|c| c.name).join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[u32]) -> u64 {
        caps.iter().fold(0, |acc, n| acc | 1 << n)
    }

    #[test]
    fn names_what_is_missing() {
        assert!(missing(set(&[12, 38, 39])).is_empty());
        assert_eq!(missing(set(&[12, 39])), [CAP_PERFMON]);
        assert_eq!(missing(0), REQUIRED);
        // CAP_SYS_ADMIN covers BPF and PERFMON, not NET_ADMIN.
        assert!(missing(set(&[12, 21])).is_empty());
        assert_eq!(missing(set(&[21])), [CAP_NET_ADMIN]);
        assert!(missing(u64::MAX).is_empty());
    }
}
