//! The pinned nightly that builds the XDP program, read from `lb-ebpf/rust-toolchain.toml`.
//! `cargo xtask setup` installs it; `lb-user/build.rs` includes this file (`#[path]`) and builds
//! with it, so a plain `cargo build` uses the pin too.

use std::path::Path;

use anyhow::Context as _;

/// The toolchain file, relative to the workspace root.
pub const FILE: &str = "lb-ebpf/rust-toolchain.toml";

/// The pinned toolchain (`nightly-YYYY-MM-DD`) of the workspace at `workspace`.
pub fn pinned(workspace: &Path) -> anyhow::Result<String> {
    let path = workspace.join(FILE);
    let toml =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    channel(&toml)
        .map(str::to_owned)
        .with_context(|| format!("no `channel = \"...\"` in {}", path.display()))
}

/// The value of the `channel = "..."` line of a toolchain file.
pub fn channel(toml: &str) -> Option<&str> {
    toml.lines().find_map(|line| {
        let value = line.trim().strip_prefix("channel")?.trim_start();
        let (channel, _) = value
            .strip_prefix('=')?
            .trim()
            .strip_prefix('"')?
            .split_once('"')?;
        (!channel.is_empty()).then_some(channel)
    })
}

/// The LLVM version in `rustc -vV` output (`LLVM version: 22.1.4`).
pub fn llvm_version(rustc_vv: &str) -> Option<&str> {
    rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::{channel, llvm_version};

    #[test]
    fn reads_the_channel_of_a_toolchain_file() {
        let toml = "# a comment\n[toolchain]\nchannel = \"nightly-2026-05-20\" # pinned\ncomponents = [\"rust-src\"]\n";
        assert_eq!(channel(toml), Some("nightly-2026-05-20"));
        assert_eq!(
            channel("[toolchain]\nchannel=\"nightly\"\n"),
            Some("nightly")
        );
        assert_eq!(
            channel("[toolchain]\n# channel = \"x\"\nprofile = \"minimal\"\n"),
            None
        );
        assert_eq!(channel("[toolchain]\nchannel = \"\"\n"), None);
        assert_eq!(channel("[toolchain]\nchannels = \"nightly\"\n"), None);
    }

    #[test]
    fn reads_the_llvm_version_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_version(vv), Some("22.1.4"));
        assert_eq!(llvm_version("rustc 1.97.0\n"), None);
    }
}
