//! Path-MTU discovery through the balancer, end to end: the gateway's routes to the backend
//! and to the client take at most 1280 bytes (an MTU the kernel's forwarding honours, locked),
//! the client and the backend have 1500-byte links, so full-sized segments (DF set, as TCP
//! sends them) are too big for the gateway's next hop both ways. Uploads: the program answers
//! the client from the VIP with fragmentation needed / packet too big. Downloads: the program
//! hands the backend's too-big reply to the kernel untranslated, whose answer quotes the
//! backend's own packet. Each side lowers its path MTU and the transfer goes on. 1 MB up and
//! 1 MB down, IPv4 and IPv6, each bounded in time.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use lb_common::{Counter, counters::COUNTERS_MAP};
use lb_tests::{agent::Agent, netns::Topology, sa};
use lb_user::bench_objects::{BASELINE_PASS, load_baseline};

const SIZE: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(30);

/// Serves `conns` connections on port 8080: `U` then `SIZE` bytes up, answered with `ok`; or
/// `D`, answered with `SIZE` bytes. Returns once every connection is served, or at `LIMIT`.
fn serve(conns: usize, ready: mpsc::Sender<()>) -> Result<(), String> {
    let listener = TcpListener::bind("[::]:8080").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    ready.send(()).ok();
    let start = Instant::now();
    let mut served = 0;
    while served < conns {
        if start.elapsed() > LIMIT {
            return Err(format!(
                "served {served} of {conns} connections in {LIMIT:?}"
            ));
        }
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        conn.set_nonblocking(false).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(LIMIT))
            .map_err(|e| e.to_string())?;
        conn.set_write_timeout(Some(LIMIT))
            .map_err(|e| e.to_string())?;
        let mut mode = [0u8];
        conn.read_exact(&mut mode).map_err(|e| e.to_string())?;
        if mode[0] == b'U' {
            let mut buf = vec![0u8; SIZE];
            conn.read_exact(&mut buf)
                .map_err(|e| format!("upload: {e}"))?;
            conn.write_all(b"ok").map_err(|e| e.to_string())?;
        } else {
            conn.write_all(&vec![0x5a; SIZE])
                .map_err(|e| format!("download: {e}"))?;
        }
        served += 1;
    }
    Ok(())
}

/// One transfer to `vip`: up (`U`) or down (`D`); the time it took.
fn transfer(vip: SocketAddr, mode: u8) -> Duration {
    let start = Instant::now();
    let mut conn = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {vip}: {e}"));
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    conn.set_write_timeout(Some(LIMIT)).unwrap();
    conn.write_all(&[mode]).unwrap();
    if mode == b'U' {
        conn.write_all(&vec![0xa5; SIZE])
            .unwrap_or_else(|e| panic!("upload to {vip}: {e}"));
        let mut ok = [0u8; 2];
        conn.read_exact(&mut ok)
            .unwrap_or_else(|e| panic!("upload to {vip} not acknowledged: {e}"));
        assert_eq!(&ok, b"ok");
    } else {
        let mut buf = vec![0u8; SIZE];
        conn.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("download from {vip}: {e}"));
        assert!(buf.iter().all(|b| *b == 0x5a));
    }
    let took = start.elapsed();
    assert!(took < LIMIT, "{took:?}");
    took
}

fn counters(agent: &Agent) -> String {
    let path = agent.pin_dir.join("maps").join(COUNTERS_MAP);
    let map: PerCpuArray<MapData, u64> =
        Map::from_map_data(MapData::from_pin(&path).expect("pinned counters"))
            .expect("map")
            .try_into()
            .expect("per-cpu array");
    Counter::ALL
        .iter()
        .filter_map(|c| {
            let n: u64 = map.get(&(*c as u32), 0).ok()?.iter().sum();
            (n > 0).then(|| format!("{}={n}", c.name()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Drops what the client and the backend have learnt about path MTUs.
fn forget_path_mtus(topo: &Topology) {
    for host in [&topo.client, &topo.backends[0]] {
        for family in ["-4", "-6"] {
            let out = host
                .exec("ip", &[family, "route", "flush", "cache"])
                .expect("ip route flush cache");
            assert!(out.status.success(), "{out:?}");
        }
    }
}

fn counter(agent: &Agent, counter: Counter) -> u64 {
    let path = agent.pin_dir.join("maps").join(COUNTERS_MAP);
    let map: PerCpuArray<MapData, u64> =
        Map::from_map_data(MapData::from_pin(&path).expect("pinned counters"))
            .expect("map")
            .try_into()
            .expect("per-cpu array");
    map.get(&(counter as u32), 0).expect("counter").iter().sum()
}

#[test]
#[ignore = "needs root"]
fn transfers_through_smaller_mtus_with_full_checksums() {
    transfers_through_smaller_mtus(false);
}

#[test]
#[ignore = "needs root"]
fn transfers_through_smaller_mtus_with_partial_checksums() {
    transfers_through_smaller_mtus(true);
}

fn transfers_through_smaller_mtus(offload: bool) {
    let topo = Topology::new(1).expect("topology");
    let gw = &topo.gateway;
    for args in [
        &[
            "route",
            "add",
            "198.18.1.2/32",
            "dev",
            "gb0",
            "mtu",
            "lock",
            "1280",
        ][..],
        &[
            "-6",
            "route",
            "add",
            "fd00:0:0:1::2/128",
            "dev",
            "gb0",
            "mtu",
            "lock",
            "1280",
        ],
        &[
            "route",
            "add",
            "198.18.0.2/32",
            "dev",
            "gc",
            "mtu",
            "lock",
            "1280",
        ],
        &[
            "-6",
            "route",
            "add",
            "fd00::2/128",
            "dev",
            "gc",
            "mtu",
            "lock",
            "1280",
        ],
    ] {
        let out = gw.exec("ip", args).expect("ip route");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    // Full checksums, or partial ones (veth's transmit offload): the program hands a packet with
    // a partial checksum to the kernel translated, and must not let the kernel answer it.
    for host in [&topo.client, &topo.backends[0]] {
        let tx = if offload { "on" } else { "off" };
        let out = host
            .exec("ethtool", &["-K", "eth0", "tx", tx])
            .expect("ethtool");
        assert!(out.status.success(), "{out:?}");
    }
    // The answers leave by XDP_TX, and veth delivers an XDP_TX frame only to a peer with an
    // XDP program of its own (GRO is not enough: `veth_xdp_flush` wakes the peer only then). A
    // real NIC has no such condition. The client gets a program that passes everything.
    let mut pass = load_baseline(BASELINE_PASS, "bench_pass").expect("baseline pass");
    topo.client
        .run(|| {
            let prog: &mut Xdp = pass
                .program_mut("bench_pass")
                .expect("bench_pass")
                .try_into()
                .expect("XDP");
            prog.attach("eth0", XdpMode::Driver)
        })
        .expect("attaching a pass program to the client");
    let (ready, wait) = mpsc::channel();
    let server = topo.backends[0].spawn(move || serve(4, ready));
    wait.recv_timeout(Duration::from_secs(5))
        .expect("server listening");
    let mut agent = Agent::new(&topo);
    agent.start(&[
        "--vip",
        "198.19.0.1:80/tcp",
        "--backend",
        "198.19.0.1:80/tcp=198.18.1.2:8080",
        "--vip",
        "[fd00:ffff::1]:80/tcp",
        "--backend",
        "[fd00:ffff::1]:80/tcp=[fd00:0:0:1::2]:8080",
    ]);
    // Each transfer starts from nothing learnt: a host that has learnt the smaller path MTU
    // announces a smaller MSS, and then neither side sends anything too big. Each must make
    // its mechanism work, or the test did not test it: the backend's reply passed back
    // untranslated (down), the program's answer from the VIP (up).
    let transfer_through = |vip: SocketAddr, mode: u8, mechanism: Counter| {
        forget_path_mtus(&topo);
        let before = counter(&agent, mechanism);
        let took = match topo.client.spawn(move || transfer(vip, mode)).join() {
            Ok(took) => took,
            Err(_) => panic!(
                "transfer {} {vip} failed; counters: {}",
                mode as char,
                counters(&agent)
            ),
        };
        assert!(
            counter(&agent, mechanism) > before,
            "transfer {} {vip}: no {} — the test did not test it",
            mode as char,
            mechanism.name()
        );
        took
    };
    for vip in ["198.19.0.1:80", "[fd00:ffff::1]:80"] {
        let vip = sa(vip);
        let down = transfer_through(vip, b'D', Counter::PassReplyTooBig);
        let up = transfer_through(vip, b'U', Counter::IcmpTooBigTx);
        eprintln!("{vip}: 1 MB down in {down:?}, up in {up:?}");
    }
    server.join().expect("server").expect("served");
    agent.stop(true);
    drop::<Ebpf>(pass);
}
