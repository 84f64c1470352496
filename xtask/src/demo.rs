//! `cargo xtask demo`: xdplb in a self-contained topology of network namespaces (no NIC
//! needed). It builds the release binary, creates a client, a gateway and two backends, runs
//! `xdplb` on the gateway, sends traffic, shows the counters, and removes everything.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_tests::netns::{Topology, harness_namespaces, tcp_request, udp_request};

use crate::{build, target_dir};

const PORT: u16 = 8080;

pub fn run() -> anyhow::Result<()> {
    if !lb_tests::is_root() {
        bail!("the demo needs root: it creates network namespaces and attaches XDP programs");
    }
    build(true)?;
    let xdplb = target_dir("release").join("xdplb");
    let namespaces_before = harness_namespaces();

    let topo = Topology::new(2).context("creating the demo topology")?;
    println!(
        "\n== topology: client {} -> gateway -> backends {} and {}",
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
    println!("== starting xdplb on the gateway ({})", ifaces.join(", "));
    let mut daemon = topo
        .gateway
        .command(xdplb.to_str().context("non-UTF-8 path")?);
    daemon.arg("run").arg("--stats-interval").arg("2");
    for iface in &ifaces {
        daemon.args(["--iface", iface]);
    }
    let mut daemon = daemon
        .stdin(Stdio::null())
        .spawn()
        .context("starting xdplb")?;
    let result = traffic(&topo);

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

fn traffic(topo: &Topology) -> anyhow::Result<()> {
    thread::sleep(Duration::from_secs(1));
    for (i, backend) in topo.backends.iter().enumerate() {
        for target in [
            SocketAddr::from((backend.v4, PORT)),
            SocketAddr::from((backend.v6, PORT)),
        ] {
            let answers = topo.client.run(|| {
                (0..10)
                    .map(|n| tcp_request(target, &format!("request {n}")))
                    .collect::<anyhow::Result<Vec<_>>>()
            })?;
            let (udp, _) = topo.client.run(|| udp_request(target, "datagram"))?;
            println!(
                "   backend {i} at {target}: 10 TCP requests answered ({:?} ...), UDP: {udp:?}",
                answers[0]
            );
        }
    }
    let out = topo.client.exec(
        "ping",
        &["-c", "5", "-i", "0.2", &topo.backends[0].v4.to_string()],
    )?;
    let summary = String::from_utf8_lossy(&out.stdout);
    println!(
        "   ping: {}",
        summary.lines().rev().nth(1).unwrap_or_default()
    );
    thread::sleep(Duration::from_millis(2500));
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
