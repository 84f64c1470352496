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
