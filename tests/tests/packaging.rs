//! The systemd unit: systemd accepts it, and it grants exactly the capabilities the agent
//! checks for.

use std::{fs, process::Command};

const UNIT: &str = include_str!("../../packaging/systemd/xdplb.service");

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let dir = std::env::temp_dir().join(format!("xdplb-unit-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("dir");
    // The unit names the installed binary; verify checks that it is there.
    let bin = lb_tests::xdplb_bin();
    let unit = UNIT.replace("/usr/bin/xdplb", bin.to_str().expect("UTF-8 path"));
    let path = dir.join("xdplb.service");
    fs::write(&path, unit).expect("writing the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd) is needed: `cargo xtask setup` installs it");
    let _ = fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("xdplb")).collect();
    assert!(out.status.success(), "{stderr}");
    assert!(about_unit.is_empty(), "{stderr}");
}

#[test]
fn the_unit_grants_exactly_the_capabilities_the_agent_needs() {
    let required: Vec<&str> = lb_user::caps::REQUIRED.iter().map(|c| c.name).collect();
    for key in ["AmbientCapabilities=", "CapabilityBoundingSet="] {
        let line = UNIT
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"));
        let mut granted: Vec<&str> = line[key.len()..].split_whitespace().collect();
        granted.sort_unstable();
        let mut wanted = required.clone();
        wanted.sort_unstable();
        assert_eq!(granted, wanted, "{line}");
    }
    assert!(UNIT.contains("\nUser=xdplb\n"), "runs as its own user");
    assert!(UNIT.contains("\nType=notify\n"));
    assert!(UNIT.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
}

/// The package's example config, `/etc/xdplb/xdplb.toml`: `xdplb check` accepts it as shipped
/// (everything commented out) and with its example uncommented (one `#` taken off each
/// setting line, the `##` explanations kept), which uses an ipvsadm scheduler name and a
/// backend without a port.
#[test]
fn the_example_config_checks_as_shipped_and_uncommented() {
    let shipped = include_str!("../../packaging/xdplb.toml");
    let uncommented: String = shipped
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        uncommented.contains("\nscheduler = \"wlc\"\n"),
        "{uncommented}"
    );
    let dir = std::env::temp_dir().join(format!("xdplb-example-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("dir");
    let mut results = Vec::new();
    for (name, text) in [
        ("shipped", shipped.to_owned()),
        ("uncommented", uncommented),
    ] {
        let path = dir.join(format!("{name}.toml"));
        fs::write(&path, text).expect("writing the config");
        let out = Command::new(lb_tests::xdplb_bin())
            .args(["check", "-f"])
            .arg(&path)
            .output()
            .expect("running xdplb check");
        results.push((name, out));
    }
    let _ = fs::remove_dir_all(&dir);
    for (name, out) in &results {
        assert!(out.status.success(), "{name}: {out:?}");
    }
    let said = |i: usize| String::from_utf8_lossy(&results[i].1.stdout).into_owned();
    assert!(said(0).contains("ok (0 VIPs, 0 backends)"), "{}", said(0));
    assert!(said(1).contains("ok (1 VIPs, 2 backends)"), "{}", said(1));
}

/// The package's Debian changelog names this version (cargo-deb ships it; lintian wants one).
#[test]
fn the_debian_changelog_names_this_version() {
    let changelog = include_str!("../../packaging/debian/changelog");
    let first = changelog.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("xdplb ({}-", env!("CARGO_PKG_VERSION"))),
        "bump packaging/debian/changelog: {first}"
    );
}
