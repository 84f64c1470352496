//! VIP announcements through BIRD 2, driven through its control socket.
//!
//! The agent runs its own `bird -f` child with a config generated from `[bgp]`
//! ([`bird_config`]): one static protocol per family whose routes (one blackhole route per
//! announced VIP address, /32 or /128) are exported to every peer; BIRD installs nothing in
//! the kernel. Announcing or withdrawing rewrites the routes' include file and asks BIRD to
//! `configure`, which keeps the sessions up. The child gets `PR_SET_PDEATHSIG`, so it dies
//! with the agent: its sessions end with a Cease and the router withdraws at once; if both die
//! hard, the router's hold timer does (or BFD, with `bfd = true`).
//!
//! An address is announced while the program is attached and one of its VIPs has a backend
//! taking new flows (up, weight > 0: health checks take failing backends down)
//! ([`announced`]).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{BufRead, BufReader, Write as _},
    net::IpAddr,
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::{agent::Shared, balancer::VipInfo, config::BgpConfig};

/// The BIRD executable.
pub const BIRD: &str = "bird";

/// What `status` shows of the announcements.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BgpStatus {
    /// The VIP addresses announced now.
    pub announced: Vec<IpAddr>,
    /// The addresses `[bgp] announce` lists.
    pub configured: Vec<IpAddr>,
    /// Each BGP session, as BIRD reports it.
    pub sessions: Vec<BgpSession>,
    /// The last error talking to BIRD, if the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One BGP session (`birdc show protocols`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BgpSession {
    /// The protocol's name: `peer0`, `peer1`, … in `[[bgp.peer]]` order.
    pub name: String,
    /// `up`, `start`, `down`…
    pub state: String,
    /// `Established`, `Active`, `Connect`…
    pub info: String,
}

/// The addresses to announce: those of `announce` that one of `vips` has, with a backend
/// taking new flows, while the program is `attached`.
pub fn announced(announce: &[IpAddr], vips: &[VipInfo], attached: bool) -> BTreeSet<IpAddr> {
    if !attached {
        return BTreeSet::new();
    }
    announce
        .iter()
        .copied()
        .filter(|addr| {
            vips.iter()
                .any(|v| v.vip.addr == *addr && v.backends.iter().any(|b| b.spec.takes_new_flows()))
        })
        .collect()
}

/// BIRD's config: `routes4` and `routes6` are the include files of the announced routes.
pub fn bird_config(config: &BgpConfig, routes4: &Path, routes6: &Path) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "# Written by xdplb from its [bgp] config; do not edit.");
    let _ = writeln!(c, "router id {};", config.router_id);
    let _ = writeln!(c, "log stderr all;");
    let _ = writeln!(c, "protocol device {{ }}");
    // BIRD takes `include` only at the start of a line.
    for (name, family, routes) in [("xdplb_v4", "ipv4", routes4), ("xdplb_v6", "ipv6", routes6)] {
        let _ = writeln!(
            c,
            "protocol static {name} {{\n  {family};\n  include \"{}\";\n}}",
            routes.display()
        );
    }
    if config.bfd {
        let _ = writeln!(c, "protocol bfd {{ }}");
    }
    let keepalive = (config.hold_time / 3).max(1);
    for (i, peer) in config.peers.iter().enumerate() {
        let (family, source) = match peer.address {
            IpAddr::V4(_) => ("ipv4", "xdplb_v4"),
            IpAddr::V6(_) => ("ipv6", "xdplb_v6"),
        };
        let next_hop = match config.next_hop {
            Some(addr) => format!("next hop address {addr}"),
            None => "next hop self".to_owned(),
        };
        let _ = writeln!(c, "protocol bgp peer{i} {{");
        let _ = writeln!(c, "  local as {};", config.local_asn);
        let _ = writeln!(
            c,
            "  neighbor {} port {} as {};",
            peer.address, peer.port, peer.asn
        );
        let _ = writeln!(c, "  hold time {};", config.hold_time);
        let _ = writeln!(c, "  keepalive time {keepalive};");
        let _ = writeln!(c, "  connect retry time 1;");
        let _ = writeln!(c, "  error wait time 1, 5;");
        if config.bfd {
            let _ = writeln!(c, "  bfd on;");
        }
        let _ = writeln!(
            c,
            "  {family} {{ import none; export where proto = \"{source}\"; {next_hop}; }};"
        );
        let _ = writeln!(c, "}}");
    }
    c
}

/// The static routes announcing `addrs` of one family, one a line.
pub fn routes(addrs: impl IntoIterator<Item = IpAddr>) -> String {
    let mut out = String::new();
    for addr in addrs {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let _ = writeln!(out, "route {addr}/{len} blackhole;");
    }
    out
}

/// Sends `command` on BIRD's control socket and gives its reply's lines, without their codes.
/// A reply code of 8xxx or 9xxx (BIRD's errors) is an error.
pub fn command(socket: &Path, command: &str) -> anyhow::Result<Vec<String>> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to BIRD at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // The greeting: "0001 BIRD 2.0.12 ready."
    read_reply(&mut reader)?;
    (&stream).write_all(format!("{command}\n").as_bytes())?;
    read_reply(&mut reader).with_context(|| format!("BIRD: {command}"))
}

/// One reply: lines `CODE-text` (more follow), ` text` (the same code goes on) and a last
/// `CODE text`.
fn read_reply(reader: &mut impl BufRead) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("BIRD closed the control socket");
        }
        let line = line.trim_end_matches('\n');
        let coded = line.len() >= 5 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit);
        if !coded {
            lines.push(line.strip_prefix(' ').unwrap_or(line).to_owned());
            continue;
        }
        let code = &line[..4];
        let text = line[5..].to_owned();
        if code.starts_with('8') || code.starts_with('9') {
            bail!("{code} {text}");
        }
        lines.push(text);
        if line.as_bytes()[4] == b' ' {
            return Ok(lines);
        }
    }
}

/// The BGP sessions in the lines of `show protocols`.
pub fn sessions(lines: &[String]) -> Vec<BgpSession> {
    lines
        .iter()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[1] != "BGP" {
                return None;
            }
            Some(BgpSession {
                name: fields[0].to_owned(),
                state: fields[3].to_owned(),
                info: fields.get(5..).map(|f| f.join(" ")).unwrap_or_default(),
            })
        })
        .collect()
}

/// The agent's BIRD child.
pub struct Speaker {
    child: Child,
    socket: PathBuf,
    routes4: PathBuf,
    routes6: PathBuf,
    /// What BIRD was last told to announce.
    announced: BTreeSet<IpAddr>,
}

impl Speaker {
    /// Starts BIRD with the config of `config`, its files and control socket in `dir`,
    /// announcing nothing yet.
    pub fn start(config: &BgpConfig, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (conf, socket) = (dir.join("bird.conf"), dir.join("bird.ctl"));
        let (routes4, routes6) = (dir.join("routes4.conf"), dir.join("routes6.conf"));
        write_file(&routes4, "")?;
        write_file(&routes6, "")?;
        write_file(&conf, &bird_config(config, &routes4, &routes6))?;
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(BIRD);
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .stdin(Stdio::null());
        // SAFETY: `prctl` is async-signal-safe and touches no memory of the parent's.
        unsafe {
            cmd.pre_exec(|| {
                // BIRD ends with the agent, however the agent ends.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {BIRD} (install BIRD 2: apt-get install bird2)"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{BIRD} exited ({status}) with the config {}",
                    conf.display()
                );
            }
            if command(&socket, "show status").is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{BIRD} did not open its control socket {}",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        info!(
            "BGP: BIRD runs (pid {}), control socket {}",
            child.id(),
            socket.display()
        );
        Ok(Self {
            child,
            socket,
            routes4,
            routes6,
            announced: BTreeSet::new(),
        })
    }

    /// Announces exactly `addrs`: rewrites the routes and reconfigures BIRD if they changed.
    pub fn announce(&mut self, addrs: &BTreeSet<IpAddr>) -> anyhow::Result<()> {
        if *addrs == self.announced {
            return Ok(());
        }
        write_file(
            &self.routes4,
            &routes(addrs.iter().copied().filter(IpAddr::is_ipv4)),
        )?;
        write_file(
            &self.routes6,
            &routes(addrs.iter().copied().filter(IpAddr::is_ipv6)),
        )?;
        command(&self.socket, "configure")?;
        for addr in addrs.difference(&self.announced) {
            info!("BGP: announcing {addr}");
        }
        for addr in self.announced.difference(addrs) {
            info!("BGP: withdrawing {addr}");
        }
        self.announced = addrs.clone();
        Ok(())
    }

    /// The BGP sessions.
    pub fn sessions(&self) -> anyhow::Result<Vec<BgpSession>> {
        Ok(sessions(&command(&self.socket, "show protocols")?))
    }

    /// Whether BIRD still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Shuts BIRD down: its sessions end with a Cease, so the peers withdraw its routes now.
    pub fn stop(mut self) {
        if let Err(err) = command(&self.socket, "down") {
            warn!("BGP: asking BIRD to shut down: {err:#}");
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !self.running() {
                info!("BGP: BIRD stopped, every announcement withdrawn");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!("BGP: BIRD did not stop in 3 s: killed");
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Written whole or not at all (BIRD may read it at any time).
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Keeps BIRD's announcements matching the agent's state (every `interval`), and its session
/// states in [`crate::agent::Agent::bgp`], until `stop` is set: then shuts BIRD down.
pub fn announce_until(
    mut speaker: Speaker,
    shared: Shared,
    stop: Arc<AtomicBool>,
    interval: Duration,
) {
    let mut last_sessions = Instant::now() - Duration::from_secs(60);
    let mut logged_exit = false;
    while !stop.load(Ordering::Relaxed) {
        let (configured, desired) = {
            let agent = shared.lock().expect("agent lock");
            let configured = agent
                .config
                .bgp
                .as_ref()
                .map(|b| b.announce.clone())
                .unwrap_or_default();
            let attached = !agent.pinned.ifaces().is_empty();
            let desired = announced(&configured, &agent.balancer.vips(), attached);
            (configured, desired)
        };
        let mut error = None;
        if !speaker.running() {
            if !logged_exit {
                warn!("BGP: BIRD exited: nothing is announced");
                logged_exit = true;
            }
            error = Some("BIRD exited".to_owned());
            speaker.announced.clear();
        } else if let Err(err) = speaker.announce(&desired) {
            warn!("BGP: {err:#}");
            error = Some(format!("{err:#}"));
        }
        let sessions = if error.is_none() && last_sessions.elapsed() >= Duration::from_secs(1) {
            last_sessions = Instant::now();
            match speaker.sessions() {
                Ok(s) => Some(s),
                Err(err) => {
                    error = Some(format!("{err:#}"));
                    None
                }
            }
        } else {
            None
        };
        {
            let mut agent = shared.lock().expect("agent lock");
            let status = agent.bgp.get_or_insert_with(BgpStatus::default);
            status.announced = speaker.announced.iter().copied().collect();
            status.configured = configured;
            if let Some(sessions) = sessions {
                status.sessions = sessions;
            }
            status.error = error;
        }
        std::thread::sleep(interval);
    }
    speaker.stop();
    if let Ok(mut agent) = shared.lock()
        && let Some(status) = agent.bgp.as_mut()
    {
        status.announced.clear();
        status.sessions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        balancer::{BackendInfo, BackendSpec, BackendState, VipOptions},
        config::BgpPeer,
    };

    fn config() -> BgpConfig {
        BgpConfig {
            local_asn: 65001,
            router_id: "10.0.1.2".parse().unwrap(),
            peers: vec![BgpPeer {
                address: "10.0.1.1".parse().unwrap(),
                asn: 65000,
                port: 179,
            }],
            hold_time: 9,
            bfd: true,
            next_hop: None,
            announce: vec!["198.19.0.1".parse().unwrap()],
        }
    }

    fn vip(addr: &str, states: &[BackendState]) -> VipInfo {
        VipInfo {
            vip: format!("{addr}:80/tcp").parse().unwrap(),
            id: 0,
            options: VipOptions::default(),
            backends: states
                .iter()
                .enumerate()
                .map(|(i, state)| BackendInfo {
                    spec: BackendSpec {
                        addr: format!("10.0.2.{}:80", i + 1).parse().unwrap(),
                        weight: 1,
                        state: *state,
                    },
                    id: i as u32,
                })
                .collect(),
            table_digest: None,
        }
    }

    #[test]
    fn announces_only_attached_vips_with_a_backend_taking_flows() {
        let a: IpAddr = "198.19.0.1".parse().unwrap();
        let b: IpAddr = "198.19.0.2".parse().unwrap();
        let up = [BackendState::Down, BackendState::Up];
        let down = [BackendState::Down, BackendState::Draining];
        let vips = [vip("198.19.0.1", &up), vip("198.19.0.2", &up)];
        assert_eq!(announced(&[a], &vips, true), BTreeSet::from([a]));
        assert_eq!(announced(&[a, b], &vips, true), BTreeSet::from([a, b]));
        assert!(announced(&[a], &vips, false).is_empty());
        assert!(announced(&[a], &[vip("198.19.0.1", &down)], true).is_empty());
        assert!(announced(&[a], &[vip("198.19.0.1", &[])], true).is_empty());
        // Any VIP on the address will do.
        let two = [vip("198.19.0.1", &down), vip("198.19.0.1", &up)];
        assert_eq!(announced(&[a], &two, true), BTreeSet::from([a]));
    }

    #[test]
    fn routes_are_host_routes() {
        let addrs: Vec<IpAddr> = vec!["198.19.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        assert_eq!(
            routes(addrs),
            "route 198.19.0.1/32 blackhole;\nroute fd00::1/128 blackhole;\n"
        );
        assert_eq!(routes([]), "");
    }

    #[test]
    fn config_exports_the_static_routes_to_each_peer() {
        let text = bird_config(&config(), Path::new("/r4"), Path::new("/r6"));
        for needed in [
            "router id 10.0.1.2;",
            "\n  include \"/r4\";\n",
            "protocol bfd { }",
            "neighbor 10.0.1.1 port 179 as 65000;",
            "local as 65001;",
            "hold time 9;",
            "bfd on;",
            "ipv4 { import none; export where proto = \"xdplb_v4\"; next hop self; };",
        ] {
            assert!(text.contains(needed), "{needed} missing from\n{text}");
        }
        let mut other = config();
        other.next_hop = Some("10.9.9.9".parse().unwrap());
        other.bfd = false;
        let text = bird_config(&other, Path::new("/r4"), Path::new("/r6"));
        assert!(text.contains("next hop address 10.9.9.9;"));
        assert!(!text.contains("bfd"));
    }

    #[test]
    fn reads_replies_and_sessions() {
        let reply = "2002-Name       Proto      Table      State  Since         Info\n\
                     1002-device1    Device     ---        up     03:30:00.000\n \
                     xdplb_v4   Static     master4    up     03:30:00.000\n \
                     peer0      BGP        ---        up     03:30:01.000  Established\n\
                     0000 \n";
        let lines = read_reply(&mut reply.as_bytes()).unwrap();
        assert_eq!(
            sessions(&lines),
            vec![BgpSession {
                name: "peer0".into(),
                state: "up".into(),
                info: "Established".into(),
            }]
        );
        let err = read_reply(&mut "8002 Access denied\n".as_bytes()).unwrap_err();
        assert!(err.to_string().contains("Access denied"));
    }
}
