//! The state file: read at start, written atomically and durably after every change.

use std::{fs, io::Write as _, path::Path};

use anyhow::Context as _;

use super::SavedState;

/// Reads a state file; `None` if there is none.
pub fn load_state(path: &Path) -> anyhow::Result<Option<SavedState>> {
    match fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("reading state file {}", path.display())
            })?))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading state file {}", path.display())),
    }
}

/// Writes `bytes` to `path` so that readers see the old or the new content, never a mix, and
/// the new content survives a crash once this returns. On failure `path` is as it was.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A temporary file next to it (removed if anything fails), synced, renamed over it.
    let written = (|| -> std::io::Result<()> {
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|err| err.error)?;
        Ok(())
    })();
    written.with_context(|| format!("writing {}", path.display()))?;
    // The rename itself is durable once the directory is.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the data path's `bpf_ktime_get_coarse_ns`
/// (which lags it by at most a tick, nothing against timeouts of seconds).
pub fn monotonic_ns() -> anyhow::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}
