//! Network-namespace topologies for end-to-end tests: a client, a gateway (where xdplb runs)
//! and N backends, joined by veth pairs, with addresses and routes so that the client reaches
//! every backend through the gateway.
//!
//! ```text
//!   client (eth0) ── (gc) gateway (gb0) ── (eth0) backend 0
//!                              (gb1) ── (eth0) backend 1 ...
//! ```
//!
//! Addresses come from the benchmarking range 198.18.0.0/15 and the ULA prefix fd00::/64s,
//! inside namespaces this harness creates: client net 0, backend `i` net `i + 1`, the host
//! part is `.1` on the gateway side and `.2` on the far side. Namespaces get unique names and
//! are deleted on `Drop` (which runs when a test panics too); deleting a namespace deletes its
//! veths. Namespaces left by a killed run are removed by the next [`Topology::new`].

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Prefix of every namespace this harness creates.
pub const NS_PREFIX: &str = "xlb-";

/// Gateway interface facing the client.
pub const GW_CLIENT_IF: &str = "gc";
/// Name of the single interface in the client and in each backend.
pub const HOST_IF: &str = "eth0";

/// Gateway interface facing backend `i`.
pub fn gw_backend_if(i: usize) -> String {
    format!("gb{i}")
}

/// The IPv4 address of host `host` (1: gateway side, 2: far side) on net `net`.
pub fn net_v4(net: usize, host: u8) -> Ipv4Addr {
    let net = u8::try_from(net).expect("at most 255 nets");
    Ipv4Addr::new(198, 18, net, host)
}

/// The IPv6 address of host `host` on net `net`.
pub fn net_v6(net: usize, host: u8) -> Ipv6Addr {
    let net = u16::try_from(net).expect("at most 65535 nets");
    Ipv6Addr::new(0xfd00, 0, 0, net, 0, 0, 0, u16::from(host))
}

/// `mac` as `ip` writes it: `02:00:00:00:00:01`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The ident the tests' servers on backend `i` answer with: `b{i}`.
pub fn ident(i: usize) -> String {
    format!("b{i}")
}

/// A network namespace made by this harness, and its one host address.
#[derive(Debug, Clone)]
pub struct Netns {
    pub name: String,
    /// The address of this host's `eth0` (for the gateway: its client-facing address).
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Netns {
    /// Runs `f` on a thread that has entered this namespace, and returns its result. Sockets
    /// that `f` opens belong to this namespace, wherever they are used afterwards.
    pub fn run<R, F>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter().unwrap_or_else(|err| panic!("{err:#}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Like [`Netns::run`], but in the background; `f` must own what it uses.
    pub fn spawn<R, F>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.clone();
        thread::spawn(move || {
            ns.enter().unwrap_or_else(|err| panic!("{err:#}"));
            f()
        })
    }

    /// Moves the calling thread into this namespace.
    fn enter(&self) -> anyhow::Result<()> {
        let path = Path::new("/var/run/netns").join(&self.name);
        let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering namespace {}", self.name))
    }

    /// A command that runs `program` inside this network namespace. It enters the network
    /// namespace only (`nsenter --net`), not a private mount namespace as `ip netns exec`
    /// does, so that what it pins in bpffs is visible to, and outlives it for, the rest of the
    /// system, as on a real gateway.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg(program);
        cmd
    }

    /// Runs `program args…` in this namespace and returns its output; fails if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        run_ok(self.command(program).args(args))
    }

    /// A permanent neighbour entry: `ip` is at `mac` on `dev`, so that nothing waits for ARP
    /// or neighbour discovery.
    pub fn permanent_neighbour(&self, ip: &str, mac: [u8; 6], dev: &str) -> anyhow::Result<()> {
        let mac = mac_string(mac);
        let args = [
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ];
        self.exec("ip", &args)?;
        Ok(())
    }

    /// The MAC address of `iface` in this namespace.
    pub fn mac(&self, iface: &str) -> anyhow::Result<[u8; 6]> {
        let out =
            run_ok(Command::new("ip").args(["-n", &self.name, "link", "show", "dev", iface]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .with_context(|| format!("no MAC address for {iface} in {text}"))?;
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(hex.split(':')) {
            *byte = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC {hex}"))?;
        }
        Ok(mac)
    }

    /// Starts a TCP server on `[::]:port` (IPv4 and IPv6) that answers each line it reads
    /// with `"{ident} {line}"`, so that clients see which server answered.
    pub fn tcp_server(&self, port: u16, ident: &str) -> Server {
        let listener = self.run(|| {
            TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
                .unwrap_or_else(|err| panic!("{}: bind tcp/{port}: {err}", self.name))
        });
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        Server::start(ident, move |ident, stop, accepted| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let ident = ident.clone();
                        let stop = Arc::clone(&stop);
                        thread::spawn(move || serve_lines(stream, &ident, &stop));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    /// Starts a UDP server on `[::]:port` that answers each datagram with
    /// `"{ident} {datagram}"`.
    pub fn udp_server(&self, port: u16, ident: &str) -> Server {
        self.udp_server_on(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), ident)
    }

    /// [`Netns::udp_server`] bound to `addr`: its answers come from `addr` (a server bound to
    /// every address answers from the address the route to the client gives, which behind
    /// direct server return is not the VIP the client asked).
    pub fn udp_server_on(&self, addr: SocketAddr, ident: &str) -> Server {
        let socket = self.run(|| {
            UdpSocket::bind(addr)
                .unwrap_or_else(|err| panic!("{}: bind udp {addr}: {err}", self.name))
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("udp read timeout");
        Server::start(ident, move |ident, stop, accepted| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((len, peer)) = socket.recv_from(&mut buf) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let mut reply = format!("{ident} ").into_bytes();
                    reply.extend_from_slice(&buf[..len]);
                    let _ = socket.send_to(&reply, peer);
                }
            }
        })
    }
}

impl Netns {
    /// Starts nginx (one worker, in this namespace) on `[::]:port` and `0.0.0.0:port`,
    /// answering every HTTP request with status 200 and the body `"{ident}\n"`; waits until it
    /// accepts connections. Stopped on drop.
    pub fn nginx(&self, port: u16, ident: &str) -> anyhow::Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("{}-nginx-{port}", self.name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen {port};\n    listen [::]:{port};\n\
                 location / {{ return 200 \"{ident}\\n\"; }}\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let child = self
            .command("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx (Debian: apt-get install nginx-light)")?;
        let mut nginx = Nginx { child, dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .run(|| TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), IO_TIMEOUT))
            .is_err()
        {
            if let Some(status) = nginx.child.try_wait()? {
                let stderr = nginx.child.stderr.take().map(read_all).unwrap_or_default();
                bail!("{}: nginx exited ({status}): {stderr}", self.name);
            }
            if Instant::now() > deadline {
                bail!("{}: nginx not listening on {port} after 5 s", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

/// A running nginx ([`Netns::nginx`]); stopped (and its directory removed) on drop.
pub struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT would wait for open connections; SIGTERM stops at once.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/1.1 `GET path` to `addr` on a new connection; the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response)
        .with_context(|| format!("reading the response from {addr}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

fn serve_lines(stream: TcpStream, ident: &str, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                if writer
                    .write_all(format!("{ident} {line}").as_bytes())
                    .is_err()
                {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A server thread; stops (and closes its sockets) on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start<F>(ident: &str, body: F) -> Self
    where
        F: FnOnce(String, Arc<AtomicBool>, Arc<AtomicU32>) + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (ident, thread_stop, thread_accepted) =
            (ident.to_owned(), Arc::clone(&stop), Arc::clone(&accepted));
        let thread = thread::spawn(move || body(ident, thread_stop, thread_accepted));
        Self {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// TCP connections accepted, or UDP datagrams received, so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `line` on a new TCP connection to `addr` and returns the answer line (trimmed).
pub fn tcp_request(addr: SocketAddr, line: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&mut stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading the answer from {addr}"))?;
    Ok(answer.trim_end().to_owned())
}

/// Sends `payload` in one UDP datagram to `addr` and returns the answer and who sent it.
pub fn udp_request(addr: SocketAddr, payload: &str) -> anyhow::Result<(String, SocketAddr)> {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(payload.as_bytes(), addr)?;
    let mut buf = [0u8; 2048];
    let (len, from) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("waiting for the answer from {addr}"))?;
    Ok((String::from_utf8_lossy(&buf[..len]).into_owned(), from))
}

/// Timeout of a test connection's connect and reads.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The ident of the server that answered `answer` to `line`, if the answer is well-formed.
pub fn ident_of(answer: &str, line: &str) -> Option<String> {
    answer
        .strip_suffix(line)
        .and_then(|rest| rest.strip_suffix(' '))
        .filter(|ident| !ident.is_empty() && !ident.contains(' '))
        .map(str::to_owned)
}

/// One TCP connection through which lines are exchanged.
pub struct Conn {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    /// [`Conn::connect`] from the local address `source` (one of many a client holds), and from
    /// its port unless 0 (any).
    pub fn connect_from(source: SocketAddr, addr: SocketAddr) -> anyhow::Result<Self> {
        use nix::sys::{
            socket::{
                AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt,
                socket, sockopt,
            },
            time::{TimeVal, TimeValLike as _},
        };
        use std::os::fd::AsRawFd as _;
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        // Bounds `connect` too.
        let timeout = TimeVal::milliseconds(IO_TIMEOUT.as_millis() as i64);
        setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
        bind(fd.as_raw_fd(), &SockaddrStorage::from(source))
            .with_context(|| format!("binding to {source}"))?;
        connect(fd.as_raw_fd(), &SockaddrStorage::from(addr))
            .with_context(|| format!("connecting from {source} to {addr}"))?;
        let stream = TcpStream::from(fd);
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    /// Sends `line` and returns the ident of the server that answered it. An answer arriving
    /// on this connection at all means it came from the address the client connected to.
    pub fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        self.stream.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        self.reader
            .read_line(&mut answer)
            .with_context(|| format!("reading the answer to {line:?}"))?;
        let answer = answer.trim_end();
        ident_of(answer, line)
            .with_context(|| format!("answer {answer:?} to {line:?} is not \"IDENT {line}\""))
    }
}

/// Client, gateway and backends, removed on drop.
pub struct Topology {
    pub client: Netns,
    pub gateway: Netns,
    pub backends: Vec<Netns>,
    /// A router between the client and the rest ([`Topology::direct_return`]).
    pub router: Option<Netns>,
}

/// The gateway's interface on the shared segment of [`Topology::direct_return`].
pub const DSR_GW_IF: &str = "gc";
/// Its peer: the router's bridge port towards the gateway.
pub const DSR_GW_PORT: &str = "pgw";
/// The VIP the backends of [`Topology::direct_return`] hold on their loopback.
pub const DSR_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Its IPv6 twin.
pub const DSR_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 1);

/// Backend `i`'s address on the shared segment of [`Topology::direct_return`].
pub fn dsr_backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        198,
        18,
        1,
        10 + u8::try_from(i).expect("at most 245 backends"),
    )
}

/// Backend `i`'s IPv6 address on the shared segment of [`Topology::direct_return`].
pub fn dsr_backend_v6(i: usize) -> Ipv6Addr {
    net_v6(1, 10 + u8::try_from(i).expect("at most 245 backends"))
}

impl Topology {
    /// Builds a topology with `backends` backends (1 to 250).
    pub fn new(backends: usize) -> anyhow::Result<Self> {
        if !(1..=250).contains(&backends) {
            bail!("a topology has 1 to 250 backends, not {backends}");
        }
        remove_stale_namespaces();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let host = |role: &str, net: usize| Netns {
            name: format!("{id}-{role}"),
            v4: net_v4(net, 2),
            v6: net_v6(net, 2),
        };
        // Built up in place so that a failure half-way still cleans up through Drop.
        let mut topo = Self {
            client: host("cli", 0),
            gateway: Netns {
                name: format!("{id}-gw"),
                v4: net_v4(0, 1),
                v6: net_v6(0, 1),
            },
            backends: Vec::new(),
            router: None,
        };
        for ns in [&topo.client, &topo.gateway] {
            add_namespace(&ns.name)?;
        }
        let gw = topo.gateway.name.clone();
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ] {
            run_ok(
                Command::new("ip")
                    .args(["netns", "exec", &gw, "sysctl", "-qw"])
                    .arg(format!("{key}={value}")),
            )?;
        }
        link_hosts(&gw, GW_CLIENT_IF, &topo.client, 0)?;
        for i in 0..backends {
            let backend = host(&format!("b{i}"), i + 1);
            add_namespace(&backend.name)?;
            topo.backends.push(backend.clone());
            link_hosts(&gw, &gw_backend_if(i), &backend, i + 1)?;
        }
        Ok(topo)
    }

    /// Direct server return, as the README's "Forwarding modes" sets it up: the client
    /// (198.18.0.2) behind a router, whose bridge joins the router (198.18.1.1), the gateway
    /// (198.18.1.254, interface [`DSR_GW_IF`]) and `backends` backends ([`dsr_backend_v4`]) on
    /// one L2 segment. The router sends the VIP [`DSR_VIP`] to the gateway; the backends hold
    /// it on `lo` with ARP for it suppressed (`arp_ignore=1`, `arp_announce=2`) and route
    /// everything else, their answers to the client included, to the router: the gateway sees
    /// requests only. IPv6 likewise (client `fd00::2`, segment `fd00:0:0:1::/64`, VIP
    /// [`DSR_VIP6`], which on `lo` draws no neighbour advertisement without any sysctl).
    ///
    /// The gateway sends `dsr-l2` frames back out of the interface they came in on (XDP_TX), to
    /// the router's bridge port [`DSR_GW_PORT`]. Here (6.18) a veth delivers XDP_TX'd frames to
    /// its peer only while the peer runs an XDP program of its own (GRO alone, which serves
    /// XDP_REDIRECT, did not): the caller attaches one there (an XDP_PASS program).
    pub fn direct_return(backends: usize) -> anyhow::Result<Self> {
        if !(1..=245).contains(&backends) {
            bail!("a direct-return topology has 1 to 245 backends, not {backends}");
        }
        remove_stale_namespaces();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{NS_PREFIX}{}-d{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut topo = Self {
            client: Netns {
                name: format!("{id}-cli"),
                v4: net_v4(0, 2),
                v6: net_v6(0, 2),
            },
            gateway: Netns {
                name: format!("{id}-gw"),
                v4: net_v4(1, 254),
                v6: net_v6(1, 254),
            },
            backends: Vec::new(),
            router: Some(Netns {
                name: format!("{id}-rtr"),
                v4: net_v4(1, 1),
                v6: net_v6(1, 1),
            }),
        };
        let router = topo.router.clone().expect("just set");
        let (rtr, gw) = (router.name.clone(), topo.gateway.name.clone());
        for ns in [&topo.client.name, &rtr, &gw] {
            add_namespace(ns)?;
        }
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        let sysctl = |ns: &str, key: &str, value: &str| {
            run_ok(
                Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-qw"])
                    .arg(format!("{key}={value}")),
            )
        };
        for ns in [&rtr, &gw] {
            sysctl(ns, "net.ipv4.ip_forward", "1")?;
            sysctl(ns, "net.ipv6.conf.all.forwarding", "1")?;
        }
        let ip6_addr = |ns: &str, addr: &str, dev: &str| {
            ip(&["-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad"])
        };
        // Client <-> router.
        let cli = topo.client.name.clone();
        ip(&[
            "-n", &rtr, "link", "add", "rc", "type", "veth", "peer", "name", HOST_IF, "netns", &cli,
        ])?;
        ip(&["-n", &rtr, "addr", "add", "198.18.0.1/24", "dev", "rc"])?;
        ip(&["-n", &cli, "addr", "add", "198.18.0.2/24", "dev", HOST_IF])?;
        ip(&["-n", &rtr, "link", "set", "rc", "up"])?;
        ip(&["-n", &cli, "link", "set", HOST_IF, "up"])?;
        ip(&["-n", &cli, "route", "add", "default", "via", "198.18.0.1"])?;
        ip6_addr(&rtr, "fd00::1/64", "rc")?;
        ip6_addr(&cli, "fd00::2/64", HOST_IF)?;
        ip(&[
            "-n", &cli, "-6", "route", "add", "default", "via", "fd00::1",
        ])?;
        // The segment: a bridge in the router's namespace.
        ip(&["-n", &rtr, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &rtr, "addr", "add", "198.18.1.1/24", "dev", "br0"])?;
        ip6_addr(&rtr, "fd00:0:0:1::1/64", "br0")?;
        ip(&["-n", &rtr, "link", "set", "br0", "up"])?;
        let port = |far: &str, port: &str, far_if: &str, (addr, addr6): (&str, &str)| {
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
            ip6_addr(far, &format!("{addr6}/64"), far_if)?;
            ip(&["-n", far, "link", "set", far_if, "up"])?;
            // Frames the gateway sends back with XDP_TX arrive on this side as XDP frames,
            // which a veth delivers only with GRO on (or a program of its own), set once both
            // ends are up.
            run_ok(
                Command::new("ip")
                    .args(["netns", "exec", &rtr, "ethtool", "-K", port, "gro", "on"]),
            )?;
            ip(&["-n", far, "route", "add", "default", "via", "198.18.1.1"])?;
            ip(&[
                "-n",
                far,
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:0:0:1::1",
            ])?;
            anyhow::Ok(())
        };
        port(
            &gw,
            DSR_GW_PORT,
            DSR_GW_IF,
            ("198.18.1.254", "fd00:0:0:1::fe"),
        )?;
        ip(&[
            "-n",
            &rtr,
            "-6",
            "route",
            "add",
            &format!("{DSR_VIP6}/128"),
            "via",
            "fd00:0:0:1::fe",
        ])?;
        ip(&[
            "-n",
            &rtr,
            "route",
            "add",
            &format!("{DSR_VIP}/32"),
            "via",
            "198.18.1.254",
        ])?;
        for i in 0..backends {
            let backend = Netns {
                name: format!("{id}-b{i}"),
                v4: dsr_backend_v4(i),
                v6: dsr_backend_v6(i),
            };
            add_namespace(&backend.name)?;
            topo.backends.push(backend.clone());
            let b = backend.name.as_str();
            for (key, value) in [
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
            ] {
                sysctl(b, key, value)?;
            }
            ip(&[
                "-n",
                b,
                "addr",
                "add",
                &format!("{DSR_VIP}/32"),
                "dev",
                "lo",
            ])?;
            ip(&[
                "-n",
                b,
                "-6",
                "addr",
                "add",
                &format!("{DSR_VIP6}/128"),
                "dev",
                "lo",
            ])?;
            port(
                b,
                &format!("pb{i}"),
                HOST_IF,
                (&backend.v4.to_string(), &backend.v6.to_string()),
            )?;
        }
        Ok(topo)
    }

    /// Gateway interfaces: the client-facing one first, then one per backend.
    pub fn gateway_ifaces(&self) -> Vec<String> {
        std::iter::once(GW_CLIENT_IF.to_owned())
            .chain((0..self.backends.len()).map(gw_backend_if))
            .collect()
    }

    /// True if an XDP program is attached to the gateway's interface `iface`.
    pub fn xdp_attached(&self, iface: &str) -> bool {
        let out = self
            .gateway
            .exec("ip", &["link", "show", "dev", iface])
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).contains(" xdp")
    }

    /// True once no XDP program is attached to the gateway's interface `iface`, waiting up to
    /// two seconds: a link whose last reference was a pin (removed, or in a mount namespace
    /// that ended) is released by the kernel in the background.
    pub fn xdp_detached_soon(&self, iface: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.xdp_attached(iface) {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.client)
            .chain(std::iter::once(&self.gateway))
            .chain(&self.backends)
            .chain(&self.router)
        {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Adds `ns`, with `lo` up and no duplicate address detection on the interfaces it gets.
///
/// The tests add their addresses `nodad`, but a new veth's link-local address would still be
/// tentative for a second or two, and the kernel sends a neighbour solicitation of its own
/// (not one a packet triggered, like the agent's managed entries for `dsr-l2` backends) only
/// from a usable link-local address: until then the solicitation waits for its one-second
/// retransmission, and IPv6 health checks with a short timeout failed right after start.
pub fn add_namespace(ns: &str) -> anyhow::Result<()> {
    run_ok(Command::new("ip").args(["netns", "add", ns]))?;
    run_ok(
        Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw"])
            .args([
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]),
    )?;
    run_ok(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
    Ok(())
}

/// Joins `far`'s `eth0` to the gateway's `gw_if` on net `net`, with addresses, a default
/// route on the far side via the gateway, and GRO on the far side so that frames the
/// gateway XDP-redirects into the veth are delivered.
fn link_hosts(gw: &str, gw_if: &str, far: &Netns, net: usize) -> anyhow::Result<()> {
    run_ok(Command::new("ip").args([
        "-n", gw, "link", "add", gw_if, "type", "veth", "peer", "name", HOST_IF, "netns", &far.name,
    ]))?;
    for (ns, ifname, v4, v6) in [
        (gw, gw_if, net_v4(net, 1), net_v6(net, 1)),
        (far.name.as_str(), HOST_IF, far.v4, far.v6),
    ] {
        run_ok(Command::new("ip").args([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            ifname,
        ]))?;
        run_ok(Command::new("ip").args([
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            ifname,
            "nodad",
        ]))?;
        run_ok(Command::new("ip").args(["-n", ns, "link", "set", ifname, "up"]))?;
    }
    run_ok(Command::new("ip").args([
        "-n",
        &far.name,
        "route",
        "add",
        "default",
        "via",
        &net_v4(net, 1).to_string(),
    ]))?;
    run_ok(Command::new("ip").args([
        "-n",
        &far.name,
        "-6",
        "route",
        "add",
        "default",
        "via",
        &net_v6(net, 1).to_string(),
    ]))?;
    run_ok(Command::new("ip").args([
        "netns", "exec", &far.name, "ethtool", "-K", HOST_IF, "gro", "on",
    ]))?;
    Ok(())
}

/// Deletes namespaces of earlier runs whose process is gone.
pub fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Namespaces made by this harness that exist now.
pub fn harness_namespaces() -> Vec<String> {
    fs::read_dir("/var/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(NS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `cmd`, failing with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<Output> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Runs `cmd` to completion (stdin empty, output captured), killing it and panicking if it
/// takes longer than `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("starting {cmd:?}: {err}"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|err| panic!("running {cmd:?}: {err}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// Starts `cmd` with piped stdout and stderr.
pub fn spawn_piped(cmd: &mut Command) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// Reads everything left in a child's pipe.
pub fn read_all(mut pipe: impl std::io::Read) -> String {
    let mut out = String::new();
    let _ = pipe.read_to_string(&mut out);
    out
}

/// True if `ip` is `addr`'s address, ignoring the port.
pub fn same_ip(addr: SocketAddr, ip: impl Into<IpAddr>) -> bool {
    addr.ip() == ip.into()
}
