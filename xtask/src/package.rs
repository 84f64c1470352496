//! `cargo xtask package`: the Debian package, and its round trip (`cargo xtask test` runs it as
//! root): lintian, install, man page, completions, the unit, purge.
//!
//! The package is built by cargo-deb from `[package.metadata.deb]` in `lb-user/Cargo.toml`:
//! the release `xdplb` binary (its XDP objects embedded), the systemd unit and sysusers file,
//! the example config and `/etc/default/xdplb` (conffiles), and the man pages and shell
//! completions, which the binary writes from its own CLI definition (`xdplb man`, `xdplb
//! completions`) into `target/release/xdplb-package/` before cargo-deb runs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{cargo, run_step, target_dir};

/// Where the generated man pages and completions go (cargo-deb's assets name them there).
fn generated_dir() -> PathBuf {
    target_dir("release").join("xdplb-package")
}

/// Builds the .deb; returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    ensure_cargo_deb()?;
    let xdplb = crate::build_release_xdplb()?;
    let out = generated_dir();
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let man = out.join("man");
    run_step("man pages", Command::new(&xdplb).arg("man").arg(&man))?;
    // Debian installs man pages gzipped; -n leaves the name and time out (reproducible).
    for page in fs::read_dir(&man)? {
        run_step_quiet(Command::new("gzip").args(["-9nf"]).arg(page?.path()))?;
    }
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in [("bash", "xdplb"), ("zsh", "_xdplb"), ("fish", "xdplb.fish")] {
        let script = Command::new(&xdplb)
            .args(["completions", shell])
            .output()
            .context("running xdplb completions")?;
        ensure!(script.status.success(), "xdplb completions {shell} failed");
        fs::write(completions.join(file), script.stdout)?;
    }
    let debs = target_dir("debian");
    run_step(
        "cargo deb",
        cargo()
            .args(["deb", "-p", "lb-user", "--no-build", "-o"])
            .arg(&debs),
    )?;
    newest_deb(&debs)
}

/// The most recently written .deb in `dir`.
fn newest_deb(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    debs.pop()
        .map(|(_, p)| p)
        .with_context(|| format!("cargo deb wrote no .deb in {}", dir.display()))
}

/// cargo-deb: installed with `cargo install --locked` the first time a package is asked for
/// (only packaging needs it, so `setup` leaves it out).
fn ensure_cargo_deb() -> anyhow::Result<()> {
    let installed = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if installed {
        return Ok(());
    }
    run_step(
        "installing cargo-deb",
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "install",
            "cargo-deb",
            "--locked",
        ]),
    )
}

fn run_step_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// What the package installs, besides the binary (the round trip checks each is there, then
/// gone).
const INSTALLED: [&str; 9] = [
    "/usr/bin/xdplb",
    "/etc/xdplb/xdplb.toml",
    "/etc/default/xdplb",
    "/usr/lib/systemd/system/xdplb.service",
    "/usr/lib/sysusers.d/xdplb.conf",
    "/usr/share/man/man1/xdplb.1.gz",
    "/usr/share/bash-completion/completions/xdplb",
    "/usr/share/zsh/vendor-completions/_xdplb",
    "/usr/share/fish/vendor_completions.d/xdplb.fish",
];

/// Purges the package when dropped, so that a failed round trip leaves no /usr/bin/xdplb.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "xdplb"]).status();
    }
}

/// Builds the package, runs lintian on it (no errors), installs it, checks what it installed
/// (man page, completions, config, unit), purges it and checks that it is all gone.
pub fn round_trip() -> anyhow::Result<()> {
    let deb = build()?;
    let lintian = Command::new("lintian")
        .args(["--no-tag-display-limit"])
        .arg(&deb)
        .output()
        .context("running lintian (apt-get install lintian)")?;
    let report = String::from_utf8_lossy(&lintian.stdout);
    eprint!("{report}");
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    ensure!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));

    ensure!(
        !Path::new("/usr/bin/xdplb").exists()
            || output(Command::new("dpkg").args(["-S", "/usr/bin/xdplb"])).is_ok(),
        "/usr/bin/xdplb exists and is not from the package: not overwriting it"
    );
    let guard = Installed;
    run_step("dpkg -i", Command::new("dpkg").arg("-i").arg(&deb))?;
    for path in INSTALLED {
        ensure!(
            Path::new(path).exists(),
            "the package did not install {path}"
        );
    }
    let version = output(Command::new("/usr/bin/xdplb").arg("--version"))?;
    ensure!(version.starts_with("xdplb "), "{version}");
    let check =
        output(Command::new("/usr/bin/xdplb").args(["check", "-f", "/etc/xdplb/xdplb.toml"]))?;
    ensure!(check.contains(": ok"), "{check}");
    let man = output(
        Command::new("man")
            .arg("xdplb")
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
    )?;
    ensure!(
        man.contains("A layer-4 load balancer on XDP") && man.contains("xdplb-vip(1)"),
        "man xdplb:\n{man}"
    );
    let man = output(
        Command::new("man")
            .arg("xdplb-backend-add")
            .env("MANPAGER", "cat"),
    )?;
    ensure!(man.contains("VIP's port"), "man xdplb-backend-add:\n{man}");
    let complete = output(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/xdplb && complete -p xdplb",
    ]))?;
    ensure!(complete.contains("xdplb"), "{complete}");
    // The completion answers: the subcommands after `xdplb `.
    let words = output(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/xdplb && COMP_WORDS=(xdplb ba) \
         COMP_CWORD=1 COMP_LINE='xdplb ba' COMP_POINT=8 && _xdplb xdplb ba xdplb && \
         echo \"${COMPREPLY[@]}\"",
    ]))?;
    ensure!(
        words.split_whitespace().any(|w| w == "backend"),
        "bash completion of `xdplb ba`: {words}"
    );
    // The README's `systemctl enable --now xdplb`: enabling works without a running systemd
    // (it links the unit); starting needs systemd as PID 1, which the test machine lacks.
    if Path::new("/usr/bin/systemctl").exists() {
        let wants = Path::new("/etc/systemd/system/multi-user.target.wants/xdplb.service");
        run_step(
            "systemctl enable xdplb",
            Command::new("systemctl").args(["enable", "xdplb"]),
        )?;
        ensure!(
            wants.exists(),
            "systemctl enable xdplb did not link {}",
            wants.display()
        );
        run_step(
            "systemctl disable xdplb",
            Command::new("systemctl").args(["disable", "xdplb"]),
        )?;
        ensure!(
            !wants.exists(),
            "systemctl disable xdplb left {}",
            wants.display()
        );
    }
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let verify = output(
            Command::new("systemd-analyze")
                .args(["verify", "/usr/lib/systemd/system/xdplb.service"]),
        )?;
        ensure!(
            !verify.contains("xdplb.service:"),
            "systemd-analyze verify:\n{verify}"
        );
    }
    run_step(
        "dpkg --purge",
        Command::new("dpkg").args(["--purge", "xdplb"]),
    )?;
    std::mem::forget(guard);
    let left: Vec<&str> = INSTALLED
        .into_iter()
        .chain(["/etc/xdplb", "/var/lib/xdplb"])
        .filter(|p| Path::new(p).exists())
        .collect();
    ensure!(left.is_empty(), "left after dpkg --purge: {left:?}");
    eprintln!(
        "xtask: package round trip: {} built, linted, installed, checked, purged",
        deb.display()
    );
    Ok(())
}
