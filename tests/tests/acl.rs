//! Per-VIP source checks end to end, with real sockets: a client address the VIP's allow list
//! holds connects and is answered, one it does not hold cannot connect; `xdplb vip set` changes
//! the lists live; bad input is refused with its reason and changes nothing; the lists survive
//! a restart onto a fresh program (from the state file, as after a reboot); and a per-source new-flow limit lets
//! through about its rate of quick connects from one address.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, BACKENDS, VIP, VIP_ADDR, serve, strs, vip_args},
    netns::{Topology, ident_of},
};
use lb_user::api::{StatsView, VipView};
use nix::sys::{
    socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    },
    time::TimeVal,
};

/// The client namespace's own address (allowed first, denied later).
const FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// A second address the test gives the client.
const SECOND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// How long a connect waits: a dropped SYN is retransmitted only after a second, so a connect
/// that times out sent one SYN.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// A TCP connection to `dst` from `src` (bound first), given up after [`CONNECT_TIMEOUT`].
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> nix::Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        panic!("an IPv4 VIP")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Linux bounds connect() by the send timeout.
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &TimeVal::from(libc::timeval {
            tv_sec: 0,
            tv_usec: CONNECT_TIMEOUT.as_micros() as libc::suseconds_t,
        }),
    )?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    Ok(TcpStream::from(fd))
}

/// Whether `src` in the client namespace can open a connection to the VIP and be answered.
fn answered(topo: &Topology, src: Ipv4Addr) -> bool {
    topo.client.run(|| match connect_from(src, VIP_ADDR) {
        Ok(stream) => {
            use std::io::{BufRead as _, BufReader, Write as _};
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("read timeout");
            (&stream).write_all(b"hello\n").expect("send");
            let mut answer = String::new();
            BufReader::new(&stream)
                .read_line(&mut answer)
                .expect("an answer on an open connection");
            assert!(
                ident_of(answer.trim_end(), "hello").is_some(),
                "not a backend's answer: {answer:?}"
            );
            true
        }
        Err(nix::errno::Errno::EINPROGRESS | nix::errno::Errno::EAGAIN) => false,
        Err(err) => panic!("connect from {src}: {err}"),
    })
}

fn counter(agent: &Agent, name: &str) -> u64 {
    let stats: StatsView = agent.json(&["stats"]);
    stats
        .counters
        .iter()
        .find(|(n, _)| n == name)
        .map(|&(_, count)| count)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn show(agent: &Agent) -> VipView {
    agent.json(&["vip", "show", VIP])
}

#[test]
#[ignore = "needs root"]
fn source_lists_and_limits_end_to_end() {
    let topo = Topology::new(BACKENDS).expect("topology");
    topo.client
        .exec(
            "ip",
            &["addr", "add", &format!("{SECOND}/24"), "dev", "eth0"],
        )
        .expect("second client address");
    let _servers = serve(&topo);
    let mut agent = Agent::new(&topo);
    agent.start(&strs(&vip_args()));
    assert!(
        answered(&topo, FIRST) && answered(&topo, SECOND),
        "no lists yet"
    );

    // Allow only the first address.
    agent.ok(&["vip", "set", VIP, "--allow", &format!("{FIRST}/32")]);
    let dropped = counter(&agent, "drop_acl");
    assert!(answered(&topo, FIRST), "allowed");
    assert!(!answered(&topo, SECOND), "not allowed");
    assert!(counter(&agent, "drop_acl") > dropped, "counted");
    let text = agent.ok(&["vip", "show", VIP]);
    assert!(
        text.contains(&format!("sources: allow {FIRST}/32")),
        "{text}"
    );

    // `vip add` takes them too.
    agent.ok(&[
        "vip",
        "add",
        "198.19.0.9:80/tcp",
        "--deny",
        "10.0.0.0/8",
        "--deny",
        "192.0.2.0/24",
        "--source-rate-limit",
        "3",
        "--source-prefix-len",
        "24",
    ]);
    let added: VipView = agent.json(&["vip", "show", "198.19.0.9:80/tcp"]);
    assert_eq!(added.deny, ["10.0.0.0/8", "192.0.2.0/24"]);
    assert_eq!(
        (added.source_rate_limit, added.source_prefix_len),
        (Some(3), Some(24))
    );
    agent.ok(&["vip", "del", "198.19.0.9:80/tcp"]);

    // Bad input: refused with its reason, nothing changed.
    let before = show(&agent);
    for (args, why) in [
        (
            vec!["--allow", "198.18.0.3/16"],
            "host bits are set (the network is 198.18.0.0/16)",
        ),
        (vec!["--deny", "fd00::/8"], "is not of VIP"),
        (vec!["--allow", "198.18.0.0/33"], "from 0 to 32"),
        (
            vec!["--source-rate-limit", "5", "--source-prefix-len", "40"],
            "source prefix length 40 is out of range 0..=32",
        ),
    ] {
        let output = agent.cli(&[&["vip", "set", VIP][..], &args].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} accepted");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        let after = show(&agent);
        assert_eq!(
            (&after.allow, &after.deny, after.source_rate_limit),
            (&before.allow, &before.deny, before.source_rate_limit),
            "{args:?} changed the VIP"
        );
    }
    assert!(!answered(&topo, SECOND), "still not allowed");

    // Live change: the allow list emptied, the first address denied.
    agent.ok(&[
        "vip",
        "set",
        VIP,
        "--allow",
        "none",
        "--deny",
        &format!("{FIRST}/32"),
    ]);
    assert!(!answered(&topo, FIRST), "denied now");
    assert!(answered(&topo, SECOND), "allowed now");

    // A restart onto a fresh program (as after a reboot: pins gone) keeps the lists: the
    // state file has them.
    agent.stop(false);
    std::fs::remove_dir_all(&agent.pin_dir).expect("removing the pins");
    for iface in topo.gateway_ifaces() {
        assert!(topo.xdp_detached_soon(&iface), "{iface}: still attached");
    }
    agent.start(&[]);
    assert!(
        agent.log().contains("restoring a fresh program"),
        "{}",
        agent.log()
    );
    let view = show(&agent);
    assert_eq!(view.deny, [format!("{FIRST}/32")]);
    assert!(view.allow.is_empty());
    assert!(!answered(&topo, FIRST), "denied after the restart");
    assert!(answered(&topo, SECOND), "allowed after the restart");

    // A new-flow limit of 5 a second per source: 20 quick connects from one address.
    agent.ok(&[
        "vip",
        "set",
        VIP,
        "--deny",
        "none",
        "--source-rate-limit",
        "5",
    ]);
    assert_eq!(show(&agent).source_rate_limit, Some(5));
    let limited = counter(&agent, "drop_source_rate_limit");
    let started = Instant::now();
    let (passed, refused) = topo.client.run(|| {
        let mut passed = 0u64;
        let mut refused = 0u64;
        let mut held = Vec::new();
        for _ in 0..20 {
            match connect_from(SECOND, VIP_ADDR) {
                Ok(stream) => {
                    passed += 1;
                    held.push(stream);
                }
                Err(nix::errno::Errno::EINPROGRESS | nix::errno::Errno::EAGAIN) => refused += 1,
                Err(err) => panic!("connect: {err}"),
            }
        }
        (passed, refused)
    });
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("source limit 5/s: {passed} of 20 quick connects passed in {elapsed:.2} s");
    // The bucket starts full (5), refills 5 a second; one more for a refill landing between
    // the clock reads.
    let most = 5.0 + 5.0 * elapsed + 1.0;
    assert!(
        (passed as f64) <= most,
        "{passed} connects passed in {elapsed:.2} s, at most {most:.1} may"
    );
    assert!(passed >= 5, "the burst of 5 passes: {passed}");
    assert!(refused >= 1, "some are refused: {passed} passed");
    assert!(
        counter(&agent, "drop_source_rate_limit") >= limited + refused,
        "every refused connect's SYN counted"
    );
    // Another address has a bucket of its own.
    assert!(answered(&topo, FIRST), "another source");
    agent.stop(true);
}
