//! End-to-end tests in network namespaces: the program attached to a real veth, real sockets.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use lb_common::Counter;
use lb_tests::netns::{GW_CLIENT_IF, Topology, read_all, spawn_piped, tcp_request};
use lb_user::{
    counters::Counters,
    loader::{AttachMode, AttachedMode},
};

fn ping(topo: &Topology, target: &str, count: u32) {
    topo.client
        .exec(
            "ping",
            &["-c", &count.to_string(), "-i", "0.05", "-W", "2", target],
        )
        .unwrap_or_else(|err| panic!("ping {target}: {err:#}"));
}

#[test]
#[ignore = "needs root"]
fn attached_program_counts_real_traffic_through_the_gateway() {
    let topo = Topology::new(1).expect("topology");
    let mut loaded = lb_tests::program::load();
    let mode = topo
        .gateway
        .run(|| loaded.attach(GW_CLIENT_IF, AttachMode::Native))
        .expect("attach in native mode");
    assert_eq!(mode, AttachedMode::Native);
    assert!(topo.xdp_attached(GW_CLIENT_IF));

    // The echo requests cross the gateway's client-facing interface inbound: not to a VIP,
    // passed and counted (IPv6 neighbour discovery may add a few).
    let before = Counters::read(&loaded.ebpf).expect("counters");
    ping(&topo, &topo.backends[0].v4.to_string(), 5);
    ping(&topo, &topo.backends[0].v6.to_string(), 3);
    let after = Counters::read(&loaded.ebpf).expect("counters");
    let pings = after.get(Counter::PassNonVip) - before.get(Counter::PassNonVip);
    assert!(
        (8..=16).contains(&pings),
        "{pings} packets counted for 8 pings"
    );

    // A TCP exchange with a server in the backend namespace: passed and counted.
    let server = topo.backends[0].tcp_server(8080, "b0");
    let target = SocketAddr::from((topo.backends[0].v4, 8080));
    let answer = topo
        .client
        .run(|| tcp_request(target, "hello"))
        .expect("tcp request");
    assert_eq!(answer, "b0 hello");
    assert_eq!(server.accepted(), 1);
    let end = Counters::read(&loaded.ebpf).expect("counters");
    // SYN, ACK, data, and at least one more (ACK of the answer or FIN).
    assert!(
        end.get(Counter::PassNonVip) - after.get(Counter::PassNonVip) >= 4,
        "{end}"
    );
    // Nothing here is for a VIP: nothing but passes.
    let passed = end.get(Counter::PassNonVip) + end.get(Counter::PassNonIp);
    assert_eq!(end.total(), passed, "{end}");

    drop(loaded);
    assert!(
        !topo.xdp_attached(GW_CLIENT_IF),
        "dropping the program detaches it"
    );
}

#[test]
#[ignore = "needs root"]
fn xdplb_run_attaches_counts_and_detaches_on_sigterm() {
    let topo = Topology::new(1).expect("topology");
    let mut daemon = spawn_piped(
        topo.gateway
            .command(lb_tests::xdplb_bin().to_str().expect("utf-8 path"))
            .args([
                "--socket",
                &format!("/tmp/xdplb-test-{}.sock", std::process::id()),
            ])
            .args([
                "run",
                "--ephemeral",
                "--iface",
                GW_CLIENT_IF,
                "--xdp-mode",
                "auto",
            ]),
    )
    .expect("start xdplb");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topo.xdp_attached(GW_CLIENT_IF) {
        assert!(
            daemon.try_wait().expect("wait").is_none(),
            "xdplb exited early: {}",
            read_all(daemon.stderr.take().expect("stderr"))
        );
        assert!(
            Instant::now() < deadline,
            "xdplb did not attach within 10 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    ping(&topo, &topo.backends[0].v4.to_string(), 3);

    let status = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("kill");
    assert!(status.success());
    let output = daemon.wait_with_output().expect("xdplb output");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "xdplb failed: {log}");
    assert!(!topo.xdp_attached(GW_CLIENT_IF), "xdplb left XDP attached");
    assert!(log.contains("XDP attached in native mode"), "{log}");
    // The last counters line: `stopping; counters: pass_non_ip=1 pass_non_vip=3`.
    let counted: u64 = log
        .lines()
        .rev()
        .filter(|line| line.contains("counters: "))
        .flat_map(str::split_whitespace)
        .find_map(|field| field.strip_prefix(&format!("{}=", Counter::PassNonVip.name())))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no final {} counter in the log: {log}",
                Counter::PassNonVip.name()
            )
        });
    assert!(counted >= 3, "the three echo requests, counted {counted}");
}

#[test]
#[ignore = "needs root"]
fn xdplb_run_refuses_an_unknown_interface() {
    let topo = Topology::new(1).expect("topology");
    let output = topo
        .gateway
        .command(lb_tests::xdplb_bin().to_str().expect("utf-8 path"))
        .args(["run", "--ephemeral", "--iface", "nosuchif0"])
        .output()
        .expect("run xdplb");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(r#"no interface named "nosuchif0""#),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{stderr}"
    );
}
