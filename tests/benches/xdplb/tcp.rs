//! TCP with real clients and servers: connections per second (wrk with `Connection: close`
//! against nginx, one request per connection) and bulk throughput (iperf3, one stream), from
//! the client namespace through the gateway to the sink namespace, for xdplb (NAT, native XDP
//! on both gateway veths), nftables DNAT and plain routing, on one topology; and plain routing
//! with xdplb attached but balancing nothing, which tells the cost of XDP on veth itself from
//! the balancer's.
//!
//! Client and sink compute their checksums (`ethtool -K eth0 tx off`, which also turns TSO
//! off), the same for all three, so that xdplb sees full checksums and takes its own fast path
//! rather than handing partial ones to the kernel.

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::bench::{Tcp, TcpRow};
use lb_tests::{
    netns::{GW_CLIENT_IF, HOST_IF, Netns, Topology, gw_backend_if, run_bounded},
    vip,
};
use lb_user::{
    balancer::{BackendSpec, VipOptions},
    counters::Counters,
    loader::AttachMode,
};
use serde_json::Value;

use lb_common::Counter;

use super::{median, min, nft_dnat, ns_ok};

const VIP_IP: &str = "198.19.0.1";
/// The paths, in the order they run; path `k` (from 0) uses HTTP port `HTTP_PORT + k` and
/// iperf3 port `IPERF_PORT + k`, on the VIP and on the sink. Without that, a path would reuse
/// 4-tuples the sink still holds in TIME-WAIT from the path before, and through a NAT the
/// client's TCP timestamps for them (offset per destination address) are older than the sink
/// remembers: PAWS drops the SYN, and the client retries a second later.
const PATHS: [&str; 4] = ["plain_routing", "xdp_pass_through", "xdplb", "nftables"];
const HTTP_PORT: u16 = 8000;
const IPERF_PORT: u16 = 5200;

/// The HTTP and iperf3 ports of `path`.
fn ports(path: &str) -> (u16, u16) {
    let k = PATHS.iter().position(|p| *p == path).expect("a path") as u16;
    (HTTP_PORT + k, IPERF_PORT + k)
}
/// wrk connections (and so connections in flight).
const WRK_CONNECTIONS: u32 = 32;

/// `rounds` runs of `secs` seconds of each tool through each path.
pub fn tcp(rounds: usize, secs: u64) -> Tcp {
    for tool in ["nginx", "wrk", "iperf3"] {
        assert!(
            Command::new(tool)
                .arg(if tool == "nginx" { "-v" } else { "--version" })
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            "{tool} is missing: `cargo xtask setup` (as root) installs it with apt \
             (packages nginx-light, wrk, iperf3)"
        );
    }
    let topo = Topology::new(1).unwrap_or_else(|err| panic!("topology: {err:#}"));
    let (client, gateway, sink) = (&topo.client, &topo.gateway, &topo.backends[0]);
    for ns in [client, sink] {
        ns_ok(ns, "ethtool", &["-K", HOST_IF, "tx", "off"]);
    }
    for setting in [
        "net.ipv4.ip_local_port_range=1024 65535",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        ns_ok(client, "sysctl", &["-qw", setting]);
    }
    let nginx = Daemon::nginx(sink);
    let iperf: Vec<Daemon> = PATHS
        .iter()
        .map(|path| {
            let port = ports(path).1.to_string();
            Daemon::spawn(
                sink,
                "iperf3",
                &["-s", "-B", &sink.v4.to_string(), "-p", &port],
                None,
            )
        })
        .collect();
    for path in PATHS {
        let (http, iperf) = ports(path);
        wait_listening(sink, SocketAddr::new(sink.v4.into(), http));
        wait_listening(sink, SocketAddr::new(sink.v4.into(), iperf));
    }

    // Rounds go through every path in turn (set up, measured, taken down), so that a burst of
    // other work on the machine spreads over the paths.
    let sink_ip = sink.v4.to_string();
    let mut samples: Vec<Samples> = PATHS.iter().map(|_| Samples::default()).collect();
    for _ in 0..rounds {
        for (k, path) in PATHS.iter().enumerate() {
            let s = &mut samples[k];
            match *path {
                "plain_routing" => s.round(client, path, &sink_ip, secs),
                "nftables" => {
                    let (http, iperf) = ports(path);
                    let dports = format!("{{ {http}, {iperf} }}");
                    nft_dnat(gateway, "xlb_bench_tcp", (VIP_IP, "tcp", &dports), &sink_ip)
                        .unwrap_or_else(|err| panic!("nftables DNAT rule: {err:#}"));
                    s.round(client, path, VIP_IP, secs);
                    gateway
                        .exec("nft", &["delete", "table", "ip", "xlb_bench_tcp"])
                        .unwrap_or_else(|err| panic!("removing the nftables table: {err:#}"));
                }
                _ => {
                    let mut loaded = lb_tests::program::load();
                    let gb0 = gw_backend_if(0);
                    for iface in [GW_CLIENT_IF, gb0.as_str()] {
                        gateway
                            .run(|| loaded.attach(iface, AttachMode::Native))
                            .unwrap_or_else(|err| panic!("attaching xdplb to {iface}: {err:#}"));
                    }
                    // Pass-through: no VIP, every packet goes through the program and on to
                    // the kernel. xdplb: the VIP's ports to the sink's.
                    let balancing = *path == "xdplb";
                    let mut balancer = loaded.balancer(Default::default()).expect("balancer");
                    if balancing {
                        let (http, iperf) = ports(path);
                        for port in [http, iperf] {
                            let v = vip(&format!("{VIP_IP}:{port}/tcp"));
                            balancer.add_vip(v, VipOptions::default()).expect("add vip");
                            balancer
                                .set_backends(
                                    &v,
                                    vec![BackendSpec::new(
                                        SocketAddr::new(sink.v4.into(), port),
                                        1,
                                    )],
                                )
                                .expect("backends");
                        }
                    }
                    let before = Counters::read(&loaded.ebpf).expect("counters");
                    s.round(
                        client,
                        path,
                        if balancing { VIP_IP } else { &sink_ip },
                        secs,
                    );
                    let after = Counters::read(&loaded.ebpf).expect("counters");
                    for &c in Counter::ALL {
                        *s.program_counters.entry(c.name()).or_default() +=
                            after.get(c) - before.get(c);
                    }
                    // `loaded` detaches here.
                }
            }
        }
    }
    let mut rows = Vec::new();
    for (path, s) in PATHS.iter().zip(samples) {
        let counter = |name: &str| s.program_counters.get(name).copied().unwrap_or(0);
        match *path {
            "xdplb" => {
                let by_xdp: u64 = ["fwd_tx", "fwd_redirect", "reply_tx", "reply_redirect"]
                    .iter()
                    .map(|name| counter(name))
                    .sum();
                assert!(
                    by_xdp > 0,
                    "xdplb forwarded nothing itself: {:?}",
                    s.program_counters
                );
            }
            "xdp_pass_through" => {
                assert!(
                    counter("pass_non_vip") > 0,
                    "nothing went through the program"
                );
            }
            _ => {}
        }
        rows.push(s.row(path));
    }
    drop(iperf);
    drop(nginx);

    // Each path's rates over nftables' and plain routing's.
    let rates = |name: &str| {
        rows.iter()
            .find(|row| row.name == name)
            .map(|row| (row.conn_per_s, row.gbit_per_s))
    };
    let (nftables, plain) = (rates("nftables"), rates("plain_routing"));
    for row in &mut rows {
        row.conn_per_s_ratio_to_nftables = nftables.map(|(conns, _)| row.conn_per_s / conns);
        row.conn_per_s_ratio_to_plain = plain.map(|(conns, _)| row.conn_per_s / conns);
        row.gbit_per_s_ratio_to_nftables = nftables.map(|(_, gbits)| row.gbit_per_s / gbits);
        row.gbit_per_s_ratio_to_plain = plain.map(|(_, gbits)| row.gbit_per_s / gbits);
    }
    Tcp {
        method: format!(
            "client → gateway → sink namespaces over veth; client and sink eth0 tx checksum \
             offload off (so no TSO); conn/s: wrk -t1 -c{WRK_CONNECTIONS} -d{secs}s -H \
             'Connection: close' against nginx (1 worker, `return 200`), one request per \
             connection; throughput: iperf3 -t {secs}, one stream, received bits/s; median of \
             {rounds} round(s), each round through every path in turn; all processes share \
             the machine's CPUs"
        ),
        rounds,
        seconds: secs,
        rows,
    }
}

/// What one path's rounds measured.
#[derive(Default)]
struct Samples {
    conns: Vec<f64>,
    errors: u64,
    latencies: Vec<String>,
    gbits: Vec<f64>,
    retransmits: u64,
    /// The client's TCP counters, summed over the rounds.
    client_counters: std::collections::BTreeMap<String, u64>,
    /// xdplb's outcome counters (paths with the program attached), summed over the rounds.
    program_counters: std::collections::BTreeMap<&'static str, u64>,
}

impl Samples {
    /// One wrk and one iperf3 run of `path` against `addr`.
    fn round(&mut self, client: &Netns, path: &str, addr: &str, secs: u64) {
        let (http, iperf_port) = ports(path);
        let before = tcp_counters(client);
        let (rate, errors, latency) = wrk(client, addr, http, secs);
        let (bits, retransmits) = iperf(client, addr, iperf_port, secs);
        let after = tcp_counters(client);
        for (name, value) in after {
            *self.client_counters.entry(name.clone()).or_default() +=
                value - before.get(&name).copied().unwrap_or(0);
        }
        self.conns.push(rate);
        self.errors += errors;
        self.latencies.push(latency);
        self.gbits.push(bits / 1e9);
        self.retransmits += retransmits;
        eprintln!("bench: {path}: {rate:.0} conn/s, {:.2} Gbit/s", bits / 1e9);
    }

    /// Its row of the table, with nothing to compare it with yet.
    fn row(&self, path: &str) -> TcpRow {
        let what = match path {
            "plain_routing" => "kernel forwarding to the sink's address, no balancer",
            "xdp_pass_through" => {
                "kernel forwarding to the sink's address with xdplb attached to gc and gb0 but \
                 balancing nothing (every packet: pass_non_vip)"
            }
            "xdplb" => "xdplb NAT to the sink, native XDP on gc and gb0",
            _ => "nftables DNAT (prerouting, numgen inc mod 1 map) to the sink",
        };
        TcpRow {
            name: path.to_owned(),
            what: what.to_owned(),
            conn_per_s: median(&self.conns),
            conn_per_s_min: min(&self.conns),
            conn_per_s_runs: self.conns.clone(),
            wrk_errors: self.errors,
            wrk_latency_avg_stdev_max: self.latencies.clone(),
            gbit_per_s: median(&self.gbits),
            gbit_per_s_min: min(&self.gbits),
            gbit_per_s_runs: self.gbits.clone(),
            iperf_retransmits: self.retransmits,
            client_tcp_counters: self.client_counters.clone(),
            xdplb_counters: self
                .program_counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            conn_per_s_ratio_to_nftables: None,
            conn_per_s_ratio_to_plain: None,
            gbit_per_s_ratio_to_nftables: None,
            gbit_per_s_ratio_to_plain: None,
        }
    }
}

/// The client's TCP counters that tell lost handshakes and retransmissions (`nstat`).
fn tcp_counters(client: &Netns) -> std::collections::BTreeMap<String, u64> {
    const NAMES: [&str; 5] = [
        "TcpActiveOpens",
        "TcpRetransSegs",
        "TcpExtTCPSynRetrans",
        "TcpOutRsts",
        "TcpAttemptFails",
    ];
    let out = client
        .exec("nstat", &["-asz"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            NAMES.contains(&name).then(|| (name.to_owned(), value))
        })
        .collect()
}

/// wrk from the client: requests (= connections) per second and socket errors.
fn wrk(client: &Netns, addr: &str, port: u16, secs: u64) -> (f64, u64, String) {
    let out = run_bounded(
        client
            .command("wrk")
            .args(["-t1", &format!("-c{WRK_CONNECTIONS}")])
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "2s", "-H", "Connection: close"])
            .arg(format!("http://{addr}:{port}/")),
        Duration::from_secs(secs + 15),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    let rate: f64 = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    // "Socket errors: connect 0, read 0, write 0, timeout 0" (only when there are some).
    let errors = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Socket errors:"))
        .map_or(0, |rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    let non_2xx = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert_eq!(non_2xx, 0, "wrk got error responses:\n{text}");
    assert!(rate > 0.0, "no requests completed:\n{text}");
    // "    Latency   1.23ms  456.00us  12.34ms   89.00%": average, deviation, maximum.
    let latency = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Latency"))
        .map(|rest| {
            rest.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    (rate, errors, latency)
}

/// iperf3 from the client: received bits per second and retransmits.
fn iperf(client: &Netns, addr: &str, port: u16, secs: u64) -> (f64, u64) {
    let out = run_bounded(
        client
            .command("iperf3")
            .args(["-c", addr, "-p", &port.to_string(), "-J"])
            .args(["-t", &secs.to_string(), "--connect-timeout", "3000"]),
        Duration::from_secs(secs + 15),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("iperf3 -J output ({err}):\n{text}"));
    assert!(
        out.status.success() && report["error"].is_null(),
        "iperf3 failed: {}",
        report["error"]
    );
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no received rate in iperf3's report:\n{text}"));
    assert!(bits > 0.0, "iperf3 moved nothing");
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_u64()
        .unwrap_or(0);
    (bits, retransmits)
}

/// Waits (bounded) until `addr` accepts connections from inside `ns`.
fn wait_listening(ns: &Netns, addr: SocketAddr) {
    let start = Instant::now();
    while ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing listens on {addr} in {}",
            ns.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server process in a namespace, ended (SIGTERM, then SIGKILL) on drop, with its files.
struct Daemon {
    child: Child,
    dir: Option<PathBuf>,
}

impl Daemon {
    fn spawn(ns: &Netns, program: &str, args: &[&str], dir: Option<PathBuf>) -> Self {
        let child = ns
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {program}: {err}"));
        Self { child, dir }
    }

    /// nginx in the foreground (master and one worker), `return 200` on every request.
    fn nginx(ns: &Netns) -> Self {
        let listen: String = PATHS
            .iter()
            .map(|path| format!("    listen {}:{} backlog=4096;\n", ns.v4, ports(path).0))
            .collect();
        let dir = std::env::temp_dir().join(format!("xdplb-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\n\
                 daemon off;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n\
                 \x20 access_log off;\n\
                 \x20 client_body_temp_path {d}/body;\n\
                 \x20 server {{\n{listen}\
                 \x20   keepalive_timeout 0;\n\
                 \x20   location / {{ return 200 \"ok\\n\"; }}\n\
                 \x20 }}\n\
                 }}\n"
            ),
        )
        .expect("nginx.conf");
        let conf = conf.to_string_lossy().into_owned();
        let error_log = format!("{d}/error.log");
        Self::spawn(
            ns,
            "nginx",
            &["-c", &conf, "-e", &error_log],
            Some(dir.clone()),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // nsenter execs the server, so the child's pid is the server's.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
