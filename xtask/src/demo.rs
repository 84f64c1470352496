//! `cargo xtask demo`: xdplb in a self-contained topology of network namespaces (no NIC
//! needed). It builds the release binary, creates a client, a gateway and two backends, runs
//! `xdplb` on the gateway, sends traffic, shows the counters, and removes everything. It fails
//! if what it shows is wrong (a backend that never answers, answers against the weights, a
//! reply that does not come from the VIP, a ping that gets no answer), so `cargo xtask test`
//! runs it as the test of the README's first command.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_tests::netns::{Topology, harness_namespaces, tcp_request, udp_request};

use crate::build_release_xdplb;

const PORT: u16 = 8080;

/// The demo's VIP address (the gateway does not own it; xdplb answers for it).
const VIP: &str = "198.19.0.1";

pub fn run() -> anyhow::Result<()> {
    if !lb_tests::is_root() {
        bail!("the demo needs root: it creates network namespaces and attaches XDP programs");
    }
    let xdplb = build_release_xdplb()?;
    let namespaces_before = harness_namespaces();

    let topo = Topology::new(2).context("creating the demo topology")?;
    // Full checksums from the hosts, so that xdplb forwards in XDP rather than handing
    // offloaded (partial-checksum) packets to the kernel.
    for ns in std::iter::once(&topo.client).chain(&topo.backends) {
        ns.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
    }
    println!(
        "\n== topology: client {} -> gateway -> backends {} and {}; VIP {VIP}",
        topo.client.v4, topo.backends[0].v4, topo.backends[1].v4
    );
    let servers: Vec<_> = topo
        .backends
        .iter()
        .enumerate()
        .flat_map(|(i, ns)| {
            [
                ns.tcp_server(PORT, &format!("backend-{i}")),
                ns.udp_server(PORT, &format!("backend-{i}")),
            ]
        })
        .collect();

    let ifaces = topo.gateway_ifaces();
    let tcp_vip = format!("{VIP}:80/tcp");
    let udp_vip = format!("{VIP}:53/udp");
    println!("== starting xdplb on the gateway ({})", ifaces.join(", "));
    let mut daemon = topo
        .gateway
        .command(xdplb.to_str().context("non-UTF-8 path")?);
    let socket = std::env::temp_dir().join(format!("xdplb-demo-{}.sock", std::process::id()));
    daemon.arg("--socket").arg(&socket);
    daemon.args(["run", "--ephemeral", "--stats-interval", "3"]);
    daemon.args([
        "--vip",
        &format!("{tcp_vip}=weighted-round-robin"),
        "--vip",
        &udp_vip,
    ]);
    for (backend, weight) in topo.backends.iter().zip([3, 1]) {
        daemon.args([
            "--backend",
            &format!("{tcp_vip}={}:{PORT}@{weight}", backend.v4),
        ]);
        daemon.args(["--backend", &format!("{udp_vip}={}:{PORT}", backend.v4)]);
    }
    for iface in &ifaces {
        daemon.args(["--iface", iface]);
    }
    let mut daemon = daemon
        .stdin(Stdio::null())
        .spawn()
        .context("starting xdplb")?;
    let result = wait_until_ready(&mut daemon, &socket).and_then(|()| traffic(&topo));

    println!("== stopping xdplb (SIGTERM); it prints its final counters");
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()?;
    let status = wait_for(&mut daemon, Duration::from_secs(10))?;
    drop(servers);
    drop(topo);

    let left: Vec<_> = harness_namespaces()
        .into_iter()
        .filter(|ns| !namespaces_before.contains(ns))
        .collect();
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    result?;
    ensure!(status.success(), "xdplb exited with {status}");
    println!("== done: xdplb detached, namespaces removed");
    Ok(())
}

/// Waits until the agent answers on its socket, which it binds once it has attached.
fn wait_until_ready(
    daemon: &mut std::process::Child,
    socket: &std::path::Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Some(status) = daemon.try_wait()? {
            bail!("xdplb exited during start-up ({status})");
        }
        if Instant::now() > deadline {
            bail!("xdplb did not come up within 60 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn traffic(topo: &Topology) -> anyhow::Result<()> {
    let vip: std::net::IpAddr = VIP.parse()?;
    let tcp = SocketAddr::new(vip, 80);
    let answers = topo.client.run(|| {
        (0..40)
            .map(|n| tcp_request(tcp, &format!("request {n}")))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let count = |who: &str| answers.iter().filter(|a| a.starts_with(who)).count();
    let (heavy, light) = (count("backend-0 "), count("backend-1 "));
    println!(
        "   40 TCP connections to {tcp} (weighted-round-robin 3:1): backend-0 answered {heavy}, backend-1 {light}"
    );
    ensure!(
        heavy + light == answers.len() && heavy > light && light > 0,
        "the TCP answers do not follow the weights 3:1: {answers:?}"
    );
    let udp = SocketAddr::new(vip, 53);
    let replies = topo.client.run(|| {
        (0..10)
            .map(|n| udp_request(udp, &format!("datagram {n}")))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let from_vip = replies.iter().all(|(_, from)| *from == udp);
    println!(
        "   10 UDP datagrams to {udp} (maglev): {} replies, all from the VIP: {from_vip}",
        replies.len()
    );
    ensure!(from_vip, "UDP replies not from the VIP: {replies:?}");
    let out = topo.client.exec(
        "ping",
        &["-c", "3", "-i", "0.2", &topo.backends[0].v4.to_string()],
    )?;
    let summary = String::from_utf8_lossy(&out.stdout);
    println!(
        "   ping {} (not a VIP, routed by the gateway): {}",
        topo.backends[0].v4,
        summary.lines().rev().nth(1).unwrap_or_default()
    );
    thread::sleep(Duration::from_millis(3500));
    Ok(())
}
fn wait_for(
    child: &mut std::process::Child,
    limit: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("xdplb did not exit within {limit:?} of SIGTERM");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
