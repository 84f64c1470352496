//! Established flows survive a SYN flood: the real agent with a small connection table
//! (10,000 flows), 50 long-lived connections exchanging lines and a new connection every
//! 100 ms, while the client namespace sends ~15 s of SYNs with spoofed sources from
//! 10.98.0.0/16 through a raw socket, far more than the table holds. The gateway routes
//! 10.98.0.0/16 back to the client namespace, which forwards nothing, so the backends'
//! SYN-ACKs end there. Run for `maglev` (with the new-flow rate limit: flood flows go
//! stateless) and `round-robin`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, BACKENDS, VIP, VIP_ADDR, backend_addr, offload_off, serve, strs},
    netns::{Netns, Topology},
    traffic::{chatter, dialer, hold},
};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket,
};

const HELD: usize = 50;
const FLOOD_FOR: Duration = Duration::from_secs(15);
/// SYNs per 10 ms batch: 5,000 per second, 75,000 in all, 7.5 times the connection table.
const BATCH: u32 = 50;
const BATCH_PERIOD: Duration = Duration::from_millis(10);
const FLOOD_NET: &str = "10.98.0.0/16";

/// Sends SYNs from distinct spoofed 10.98.0.0/16 sources to the VIP from `client`, paced, for
/// [`FLOOD_FOR`] at most; returns how many were sent.
fn flood(client: &Netns) -> u32 {
    client.run(|| {
        // IPPROTO_RAW: the kernel takes the IP header as given (IP_HDRINCL).
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Raw,
        )
        .expect("raw socket");
        let vip = match VIP_ADDR.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => unreachable!("an IPv4 VIP"),
        };
        let to = SockaddrIn::from(SocketAddrV4::new(vip, 0));
        let start = Instant::now();
        let mut sent = 0u32;
        let max = (FLOOD_FOR.as_millis() / BATCH_PERIOD.as_millis()) as u32 * BATCH;
        while start.elapsed() < FLOOD_FOR && sent < max {
            for _ in 0..BATCH {
                let n = sent;
                let src = Ipv4Addr::new(10, 98, (n >> 8) as u8, n as u8);
                let port = 1024 + (n >> 16) as u16;
                let builder = etherparse::PacketBuilder::ipv4(src.octets(), vip.octets(), 64)
                    .tcp(port, VIP_ADDR.port(), n, 64_240)
                    .syn();
                let mut packet = Vec::with_capacity(builder.size(0));
                builder.write(&mut packet, &[]).expect("SYN");
                // A full socket buffer drops a SYN: the flood is best effort, the count says.
                if sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &packet,
                    &to,
                    MsgFlags::empty(),
                )
                .is_ok()
                {
                    sent += 1;
                }
            }
            thread::sleep(BATCH_PERIOD);
        }
        sent
    })
}

/// Packets the client namespace received with a backend's address as source: none may leave
/// the gateway untranslated. A second counter (from the VIP) shows the rule sees traffic.
fn count_sources(client: &Netns) {
    let backends: Vec<String> = (0..BACKENDS)
        .map(|i| backend_addr(i).ip().to_string())
        .collect();
    let rules = format!(
        "table ip flood {{\n chain pre {{\n  type filter hook prerouting priority -300;\n  \
         ip saddr {{ {} }} counter\n  ip saddr {} counter\n }}\n}}\n",
        backends.join(", "),
        VIP_ADDR.ip()
    );
    let mut nft = client.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().expect("nft");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), rules.as_bytes())
        .expect("nft rules");
    assert!(child.wait().expect("nft").success(), "nft -f failed");
}

/// The packet counts of the two rules of [`count_sources`]: (from a backend, from the VIP).
fn source_counts(client: &Netns) -> (u64, u64) {
    let out = client
        .exec("nft", &["list", "table", "ip", "flood"])
        .expect("nft list");
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .split("packets ")
        .skip(1)
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a packet count")
        })
        .collect();
    assert_eq!(counts.len(), 2, "{text}");
    (counts[0], counts[1])
}

/// The load tests of this file run one at a time: each is sized for the machine to itself
/// (two floods at once, or a flood beside a million-entry fill, starve the legitimate clients'
/// threads on two CPUs).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// With `shared`, another VIP (port 81, added first, so it owns the backends' stateless
/// reply entries) uses the same backends: every reply of the flooded VIP's flows then needs
/// the flow's own reverse translation, which the flood must not evict either.
fn flood_spares_established_flows(scheduler: &str, shared: bool) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let topo = Topology::new(BACKENDS).expect("topology");
    offload_off(&topo);
    let _servers = serve(&topo);
    // The flood's sources are routed back to the client, which forwards nothing: the
    // backends' SYN-ACKs end there.
    topo.gateway
        .exec(
            "ip",
            &[
                "route",
                "add",
                FLOOD_NET,
                "via",
                &topo.client.v4.to_string(),
            ],
        )
        .expect("route to the flood's sources");
    count_sources(&topo.client);
    let mut agent = Agent::new(&topo);
    let vip = format!("{VIP}={scheduler}");
    let scheduler = if shared {
        format!("{scheduler} (backends shared with another VIP)")
    } else {
        scheduler.to_owned()
    };
    let mut args = Vec::new();
    if shared {
        let other = VIP.replace(":80/", ":81/");
        assert_ne!(other, VIP);
        args.extend(["--vip".to_owned(), other.clone()]);
        for i in 0..BACKENDS {
            args.extend([
                "--backend".to_owned(),
                format!("{other}={}", backend_addr(i)),
            ]);
        }
    }
    args.extend([
        "--vip".to_owned(),
        vip.clone(),
        "--conntrack-capacity".to_owned(),
        "10000".to_owned(),
        "--new-flow-rate-limit".to_owned(),
        "2000".to_owned(),
    ]);
    for i in 0..BACKENDS {
        args.push("--backend".to_owned());
        args.push(format!("{VIP}={}", backend_addr(i)));
    }
    agent.start(&strs(&args));

    let epoch = Instant::now();
    let chats = chatter(hold(&topo.client, VIP_ADDR, HELD), epoch);
    let dials = dialer(&topo.client, VIP_ADDR, Duration::from_millis(100), epoch);
    thread::sleep(Duration::from_millis(500));
    let sent = flood(&topo.client);
    thread::sleep(Duration::from_millis(500));
    let chats = chats.finish();
    let dials = dials.finish().remove(0);
    let stats = agent.ok(&["stats"]);

    assert!(
        sent > 30_000,
        "{scheduler}: only {sent} SYNs sent, too few to overflow the table"
    );
    let broken: Vec<&String> = chats.iter().filter_map(|c| c.failure.as_ref()).collect();
    assert!(
        broken.is_empty(),
        "{scheduler}: {} of {HELD} held connections broke: {broken:?}\n{stats}",
        broken.len()
    );
    assert!(
        chats.iter().all(|c| c.exchanges > 100),
        "{scheduler}: held connections stalled\n{stats}"
    );
    let dialed = dials.answered.len() + dials.failures.len();
    assert!(dialed >= 100, "{scheduler}: {dialed} new connections tried");
    assert!(
        dials.failures.len() * 100 <= dialed,
        "{scheduler}: {} of {dialed} new connections failed: {:?}\n{stats}",
        dials.failures.len(),
        dials.failures
    );
    // The flood's SYNs show in the events: embryonic entries (round-robin) or flows sent on
    // without state over the rate limit (maglev).
    let event = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let flood_events = event("embryonic_insert") + event("stateless_new_flow");
    assert!(
        flood_events > u64::from(sent) / 2,
        "{scheduler}: {flood_events} embryonic or stateless new flows for {sent} SYNs\n{stats}"
    );
    // And in the tables' fill, as the agent last counted it: the held connections in the
    // connection table, the flood's half-open flows in the embryonic table, within its size.
    let embryonic = event("embryonic_entries");
    let capacity = event("embryonic_capacity");
    assert!(
        embryonic > 0 && embryonic <= capacity,
        "{scheduler}: {embryonic} embryonic entries of {capacity}\n{stats}"
    );
    assert!(
        event("conntrack_entries") >= HELD as u64,
        "{scheduler}: the held connections are not in the connection table\n{stats}"
    );
    let (from_backend, from_vip) = source_counts(&topo.client);
    assert_eq!(
        from_backend, 0,
        "{scheduler}: packets left the gateway with a backend's address as source"
    );
    assert!(
        from_vip > 1_000,
        "{scheduler}: only {from_vip} packets from the VIP seen"
    );
    eprintln!(
        "{scheduler}: {sent} SYNs, {HELD} held connections unbroken, {} of {dialed} new \
         connections answered, {from_vip} packets from the VIP\n{stats}",
        dials.answered.len()
    );
}

#[test]
#[ignore = "needs root"]
fn syn_flood_spares_established_flows_maglev() {
    flood_spares_established_flows("maglev", false);
}

#[test]
#[ignore = "needs root"]
fn syn_flood_spares_established_flows_round_robin() {
    flood_spares_established_flows("round-robin", false);
}

#[test]
#[ignore = "needs root"]
fn syn_flood_spares_established_flows_to_shared_backends() {
    flood_spares_established_flows("round-robin", true);
}

/// The agent's CPU over `window`: its user and system clock ticks from `/proc/PID/stat`.
fn agent_cpu(pid: u32, window: Duration) -> f64 {
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent stat");
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (before, start) = (ticks(), Instant::now());
    thread::sleep(window);
    let used = (ticks() - before) as f64 / per_second;
    used / start.elapsed().as_secs_f64()
}

/// A full connection table (1,000,000 open flows, as a flood of established connections would
/// leave it) does not saturate the agent: counting connections stays under a fifth of a CPU.
#[test]
#[ignore = "needs root"]
fn the_agent_stays_light_with_a_full_connection_table() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    use aya::maps::{HashMap, IterableMap as _, MapData};
    use lb_common::{
        FlowKey,
        conntrack::{FlowState, STATE_ESTABLISHED},
        flow::{FAMILY_IPV4, PROTO_TCP},
        maps::{CONNTRACK_MAP, DEFAULT_CONNTRACK_CAPACITY},
    };

    let topo = Topology::new(1).expect("topology");
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&[
        "--vip".to_owned(),
        VIP.to_owned(),
        "--backend".to_owned(),
        format!("{VIP}={}", backend_addr(0)),
    ]));
    let table: HashMap<MapData, FlowKey, FlowState> =
        lb_user::maps::open_map(&agent.pin_dir, CONNTRACK_MAP).expect("pinned CONNTRACK");
    let now = lb_user::agent::monotonic_ns().expect("clock");
    let vip = match VIP_ADDR.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => unreachable!("an IPv4 VIP"),
    };
    let fill = Instant::now();
    let flows: Vec<(FlowKey, FlowState)> = (0..DEFAULT_CONNTRACK_CAPACITY)
        .map(|i| {
            let mut key = FlowKey {
                proto: PROTO_TCP,
                family: FAMILY_IPV4,
                ..FlowKey::default()
            };
            key.src_addr[..4].copy_from_slice(&[10, 97, (i >> 16) as u8, (i >> 8) as u8]);
            key.src_port = (i as u16).to_be_bytes();
            key.dst_addr[..4].copy_from_slice(&vip);
            key.dst_port = VIP_ADDR.port().to_be_bytes();
            let state = FlowState {
                backend_id: 1 + i % 7,
                state: STATE_ESTABLISHED,
                born: [0; 3],
                last_seen_ns: now,
            };
            (key, state)
        })
        .collect();
    for batch in flows.chunks(1 << 16) {
        let (keys, states): (Vec<FlowKey>, Vec<FlowState>) = batch.iter().copied().unzip();
        lb_user::maps::update_batch(table.map(), &keys, &states).expect("flows written");
    }
    eprintln!(
        "{DEFAULT_CONNTRACK_CAPACITY} flows written in {:.1} s",
        fill.elapsed().as_secs_f64()
    );
    // One pass at least over the full table, then the share of a CPU the agent uses.
    thread::sleep(Duration::from_secs(2));
    let cpu = agent_cpu(agent.pid(), Duration::from_secs(10));
    eprintln!(
        "agent CPU with a full connection table: {:.1}%",
        cpu * 100.0
    );
    assert!(
        cpu < 0.20,
        "the agent used {:.0}% of a CPU with a full connection table",
        cpu * 100.0
    );
    let start = Instant::now();
    agent.ok(&["vip", "list"]);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the CLI answered in {:?}",
        start.elapsed()
    );
    agent.stop(true);
}
