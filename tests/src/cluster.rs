//! Several gateways behind one ECMP router running BIRD 2: a client holding many source
//! addresses, the router (BGP sessions to every gateway, routes merged into kernel multipath
//! routes, flows spread by their L4 hash), N gateways and M backends on one bridged segment.
//!
//! ```text
//!   client (eth0) ── (rc) router (br0) ─┬─ (pg0) ── (gc) gateway 0   ... gateway N-1
//!                                       └─ (pb0) ── (eth0) backend 0 ... backend M-1
//! ```
//!
//! The backends hold the VIP on `lo` and answer the client directly through the router
//! (direct server return; with `ipip` forwarding they run `xdplb decap`). Nothing routes the
//! VIP until a gateway announces it.
//!
//! [`Etcd`] is the cluster store: etcd in a namespace of its own, with a point-to-point link to
//! each gateway (10.250.`i`.0/24: etcd .1, gateway `i` .2 on its interface [`ETCD_GW_IF`]),
//! apart from every address above (198.18.0.0/23, `fd00:0:0:1::/64`).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{
    DSR_VIP, HOST_IF, NS_PREFIX, Netns, add_namespace, dsr_backend_v4, net_v6,
    remove_stale_namespaces, run_bounded, run_ok,
};

/// The router's AS.
pub const ROUTER_ASN: u32 = 65000;
/// The gateways' AS (one for all: their paths are equal, so the router merges them).
pub const GATEWAY_ASN: u32 = 65001;
/// The router's address on the segment, the gateways' BGP peer.
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Each gateway's interface on the segment.
pub const CLUSTER_GW_IF: &str = "gc";
/// How many source addresses the client holds besides its own.
pub const CLIENT_SOURCES: usize = 100;

/// The client's `i`th extra source address, 198.18.0.100 and up.
pub fn client_source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        198,
        18,
        0,
        100 + u8::try_from(i).expect("at most 100 sources"),
    ))
}

/// Gateway `i`'s address on the segment, 198.18.1.200 and up.
pub fn gateway_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        198,
        18,
        1,
        200 + u8::try_from(i).expect("at most 50 gateways"),
    )
}

/// The router's port towards gateway `i`.
pub fn gateway_port(i: usize) -> String {
    format!("pg{i}")
}

/// The router's BIRD config: a BGP session with each of `gateways` gateways, their routes
/// merged into multipath kernel routes.
pub fn router_bird_config(gateways: usize) -> String {
    let mut c = format!(
        "router id {ROUTER_ADDR};\n\
         protocol device {{ }}\n\
         protocol kernel {{\n  ipv4 {{ import none; export all; }};\n  merge paths on;\n}}\n"
    );
    for i in 0..gateways {
        c += &format!(
            "protocol bgp gw{i} {{\n  local {ROUTER_ADDR} as {ROUTER_ASN};\n  \
             neighbor {} as {GATEWAY_ASN};\n  hold time 9;\n  keepalive time 3;\n  \
             connect retry time 1;\n  error wait time 1, 5;\n  \
             ipv4 {{ import all; export none; }};\n}}\n",
            gateway_v4(i)
        );
    }
    c
}

/// The namespaces of a cluster, and the router's BIRD; removed on drop.
pub struct Cluster {
    pub client: Netns,
    pub router: Netns,
    pub gateways: Vec<Netns>,
    pub backends: Vec<Netns>,
    /// The router's config, socket and log.
    pub dir: PathBuf,
    bird: Option<Child>,
}

impl Cluster {
    pub fn new(gateways: usize, backends: usize) -> anyhow::Result<Self> {
        if !(1..=50).contains(&gateways) || !(1..=100).contains(&backends) {
            bail!("a cluster has 1 to 50 gateways and 1 to 100 backends");
        }
        remove_stale_namespaces();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NS_PREFIX}{}-c{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("xdplb-cluster-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ns = |name: String, v4: Ipv4Addr, host: u8| Netns {
            name,
            v4,
            v6: net_v6(1, host),
        };
        let cluster = Self {
            client: ns(format!("{id}-cli"), Ipv4Addr::new(198, 18, 0, 2), 2),
            router: ns(format!("{id}-rtr"), ROUTER_ADDR, 1),
            gateways: (0..gateways)
                .map(|i| ns(format!("{id}-gw{i}"), gateway_v4(i), 200 + i as u8))
                .collect(),
            backends: (0..backends)
                .map(|i| ns(format!("{id}-b{i}"), dsr_backend_v4(i), 10 + i as u8))
                .collect(),
            dir,
            bird: None,
        };
        for ns in cluster.all() {
            add_namespace(&ns.name)?;
        }
        let (rtr, cli) = (cluster.router.name.clone(), cluster.client.name.clone());
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        let sysctl = |ns: &str, key: &str, value: &str| {
            run_ok(
                Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-qw"])
                    .arg(format!("{key}={value}")),
            )
        };
        sysctl(&rtr, "net.ipv4.ip_forward", "1")?;
        // ECMP by the L4 hash: the flows of one source spread too.
        sysctl(&rtr, "net.ipv4.fib_multipath_hash_policy", "1")?;
        // Client <-> router; the client's many sources.
        ip(&[
            "-n", &rtr, "link", "add", "rc", "type", "veth", "peer", "name", HOST_IF, "netns", &cli,
        ])?;
        ip(&["-n", &rtr, "addr", "add", "198.18.0.1/24", "dev", "rc"])?;
        ip(&["-n", &cli, "addr", "add", "198.18.0.2/24", "dev", HOST_IF])?;
        for i in 0..CLIENT_SOURCES {
            let addr = format!("{}/24", client_source(i));
            ip(&["-n", &cli, "addr", "add", &addr, "dev", HOST_IF])?;
        }
        ip(&["-n", &rtr, "link", "set", "rc", "up"])?;
        ip(&["-n", &cli, "link", "set", HOST_IF, "up"])?;
        ip(&["-n", &cli, "route", "add", "default", "via", "198.18.0.1"])?;
        // The segment.
        ip(&["-n", &rtr, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &rtr, "addr", "add", "198.18.1.1/24", "dev", "br0"])?;
        ip(&["-n", &rtr, "link", "set", "br0", "up"])?;
        let port = |far: &str, port: &str, far_if: &str, addr: Ipv4Addr| {
            ip(&[
                "-n", &rtr, "link", "add", port, "type", "veth", "peer", "name", far_if, "netns",
                far,
            ])?;
            ip(&["-n", &rtr, "link", "set", port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                far,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                far_if,
            ])?;
            ip(&["-n", far, "link", "set", far_if, "up"])?;
            // Frames a gateway sends back with XDP_TX arrive here as XDP frames (see
            // `Topology::direct_return`).
            run_ok(
                Command::new("ip")
                    .args(["netns", "exec", &rtr, "ethtool", "-K", port, "gro", "on"]),
            )?;
            ip(&["-n", far, "route", "add", "default", "via", "198.18.1.1"])?;
            anyhow::Ok(())
        };
        for (i, gw) in cluster.gateways.iter().enumerate() {
            // `bpf_fib_lookup` answers only where forwarding is on.
            sysctl(&gw.name, "net.ipv4.ip_forward", "1")?;
            port(&gw.name, &gateway_port(i), CLUSTER_GW_IF, gw.v4)?;
        }
        for (i, b) in cluster.backends.iter().enumerate() {
            for (key, value) in [
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
            ] {
                sysctl(&b.name, key, value)?;
            }
            ip(&[
                "-n",
                &b.name,
                "addr",
                "add",
                &format!("{DSR_VIP}/32"),
                "dev",
                "lo",
            ])?;
            port(&b.name, &format!("pb{i}"), HOST_IF, b.v4)?;
        }
        Ok(cluster)
    }

    fn all(&self) -> impl Iterator<Item = &Netns> {
        [&self.client, &self.router]
            .into_iter()
            .chain(&self.gateways)
            .chain(&self.backends)
    }

    fn router_socket(&self) -> PathBuf {
        self.dir.join("router.ctl")
    }

    /// Starts BIRD in the router's namespace with [`router_bird_config`].
    pub fn start_router(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.join("router.conf");
        fs::write(&conf, router_bird_config(self.gateways.len()))?;
        let log = fs::File::create(self.dir.join("router.log"))?;
        let child = self
            .router
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(self.router_socket())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the router's bird")?;
        self.bird = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.birdc("show status").is_err() {
            if Instant::now() > deadline {
                bail!("the router's bird did not start: {}", self.router_log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The router's BIRD log.
    pub fn router_log(&self) -> String {
        fs::read_to_string(self.dir.join("router.log")).unwrap_or_default()
    }

    /// `birdc -s SOCKET COMMAND` on the router's BIRD.
    pub fn birdc(&self, command: &str) -> anyhow::Result<String> {
        let socket = self.router_socket();
        let out = run_ok(
            Command::new("birdc")
                .arg("-s")
                .arg(&socket)
                .args(command.split_whitespace()),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The next hops of the router's kernel route to the VIP (none: no route).
    pub fn vip_paths(&self) -> Vec<Ipv4Addr> {
        let out = self
            .router
            .exec("ip", &["-4", "route", "show", &format!("{DSR_VIP}/32")])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect()
    }

    /// Waits (up to `limit`) until the router's route to the VIP has `n` next hops; gives how
    /// long that took, or the next hops it had at the end.
    pub fn wait_for_paths(&self, n: usize, limit: Duration) -> Result<Duration, Vec<Ipv4Addr>> {
        let start = Instant::now();
        loop {
            let paths = self.vip_paths();
            if paths.len() == n {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(paths);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- the router's BIRD log ---\n{}", self.router_log());
        }
        if let Some(mut bird) = self.bird.take() {
            let _ = bird.kill();
            let _ = bird.wait();
        }
        for ns in self.all() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Each gateway's interface on its link to etcd.
pub const ETCD_GW_IF: &str = "etcd0";

/// etcd's address on its link to gateway `i`.
pub fn etcd_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, u8::try_from(i).expect("at most 256 gateways"), 1)
}

/// Gateway `i`'s address on its link to etcd.
pub fn etcd_gateway_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, u8::try_from(i).expect("at most 256 gateways"), 2)
}

/// The namespace etcd runs in, with a link to every gateway; etcd itself while it runs. The
/// namespace, the data and the log go on drop.
pub struct Etcd {
    ns: String,
    gateways: usize,
    data: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
}

impl Etcd {
    /// etcd's namespace, linked to each of `gateways` (etcd is not started yet).
    pub fn new(gateways: &[&Netns]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{NS_PREFIX}{}-etcd{n}", std::process::id());
        let data = std::env::temp_dir().join(format!("xdplb-etcd-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&data);
        let etcd = Self {
            log: data.with_extension("log"),
            ns: ns.clone(),
            gateways: gateways.len(),
            data,
            daemon: None,
        };
        let ip = |args: &[&str]| {
            run_ok(Command::new("ip").args(args))
                .unwrap_or_else(|err| panic!("ip {args:?}: {err:#}"))
        };
        add_namespace(&ns).unwrap_or_else(|err| panic!("{ns}: {err:#}"));
        for (i, gw) in gateways.iter().enumerate() {
            let ours = format!("et{i}");
            ip(&[
                "-n", &ns, "link", "add", &ours, "type", "veth", "peer", "name", ETCD_GW_IF,
                "netns", &gw.name,
            ]);
            let addr = format!("{}/24", etcd_addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &ours]);
            let addr = format!("{}/24", etcd_gateway_addr(i));
            ip(&["-n", &gw.name, "addr", "add", &addr, "dev", ETCD_GW_IF]);
            ip(&["-n", &ns, "link", "set", &ours, "up"]);
            ip(&["-n", &gw.name, "link", "set", ETCD_GW_IF, "up"]);
        }
        etcd
    }

    /// The URL gateway `i` reaches etcd at.
    pub fn endpoint(i: usize) -> String {
        format!("http://{}:2379", etcd_addr(i))
    }

    fn client_urls(&self) -> String {
        (0..self.gateways)
            .map(Self::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts etcd (on the data kept from a previous start, if any) and waits until it answers.
    pub fn start(&mut self) {
        assert!(self.daemon.is_none(), "etcd is already running");
        let log = fs::File::create(&self.log).expect("etcd log");
        let urls = self.client_urls();
        let daemon = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &urls])
            .args(["--advertise-client-urls", &Self::endpoint(0)])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "test=http://127.0.0.1:2380"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = run_bounded(
                Command::new("nsenter")
                    .arg(format!("--net=/var/run/netns/{}", self.ns))
                    .args([
                        "etcdctl",
                        "--endpoints",
                        &urls,
                        "--command-timeout=1s",
                        "endpoint",
                        "health",
                    ]),
                Duration::from_secs(5),
            );
            if health.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 30 s:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The keys under `prefix` in the store now, read with `etcdctl`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = run_bounded(
            Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{}", self.ns))
                .args([
                    "etcdctl",
                    "--endpoints",
                    &self.client_urls(),
                    "--command-timeout=2s",
                    "get",
                    "--prefix",
                    "--keys-only",
                    prefix,
                ]),
            Duration::from_secs(5),
        );
        assert!(
            out.status.success(),
            "etcdctl get {prefix}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Kills etcd (its data stays for the next [`Etcd::start`]).
    pub fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- etcd's log ---\n{}", self.log());
        }
        self.stop();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.data);
        let _ = fs::remove_file(&self.log);
    }
}
