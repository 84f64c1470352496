use lb_common::maps::{Settings, forwarding};

use super::*;
use crate::maps::MemMaps;

#[test]
fn settings_changes_name_each_changed_field_with_defaults_written_out() {
    let now = Config::parse(
        "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
         [vip.health]\nkind = \"tcp\"\n",
    )
    .unwrap();
    let new = Config::parse(
        "[conntrack]\nudp-timeout = \"30s\"\n\
         [[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
         [vip.health]\nkind = \"tcp\"\ninterval = \"2s\"\n\
         [[vip]]\naddress = \"198.19.0.2:80\"\nprotocol = \"tcp\"\n",
    )
    .unwrap();
    let lines: Vec<String> = settings_changes(&now, &new)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "~ conntrack: udp-timeout 5m -> 30s",
            "~ health of 198.19.0.1:80/tcp: interval 1s -> 2s",
        ]
    );
    assert!(settings_changes(&new, &new).is_empty());
}

const FULL: &str = r#"
[conntrack]
capacity = 2000000
tcp-syn-timeout = "20s"
tcp-established-timeout = "1h"
tcp-fin-timeout = "60s"
tcp-rst-timeout = "5s"
udp-timeout = "90s"

[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
scheduler = "maglev"
ring-size = 31

[vip.health]
kind = "http"
interval = "2s"
timeout = "900ms"
rise = 1
fall = 5
port = 8081
http-method = "HEAD"
http-path = "/healthz"
http-expect-status = 204

[[vip.backend]]
address = "198.18.1.2:8080"
weight = 3

[[vip.backend]]
address = "198.18.2.2:8080"
state = "draining"

[[vip]]
address = "[fd00::1]:0"
protocol = "udp"
scheduler = "round-robin"

[vip.health]
kind = "udp"
udp-payload = "hello"
udp-expect = "olleh"

[[vip.backend]]
address = "[fd00::2]:0"
weight = 0
state = "down"
"#;

fn parse(text: &str) -> Config {
    Config::parse(text).unwrap_or_else(|err| panic!("{err}"))
}

fn error(text: &str) -> String {
    match Config::parse(text) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn parses_the_full_example() {
    let config = parse(FULL);
    assert_eq!(config.conntrack.capacity, 2_000_000);
    let t = config.conntrack.timeouts();
    assert_eq!(t.tcp_syn_ns, 20_000_000_000);
    assert_eq!(t.tcp_established_ns, 3_600_000_000_000);
    assert_eq!(t.tcp_rst_ns, 5_000_000_000);
    assert_eq!(t.udp_ns, 90_000_000_000);

    let v = &config.vips[0];
    assert_eq!(v.vip(), "198.19.0.1:80/tcp".parse().unwrap());
    assert_eq!(
        v.options(),
        VipOptions {
            scheduler: Scheduler::Maglev,
            ring_size: 31,
            ..VipOptions::default()
        }
    );
    assert_eq!(
        v.backends(),
        vec![
            BackendSpec::new("198.18.1.2:8080".parse().unwrap(), 3),
            BackendSpec {
                addr: "198.18.2.2:8080".parse().unwrap(),
                weight: 1,
                state: BackendState::Draining,
            },
        ]
    );
    assert_eq!(
        v.health(),
        HealthCheck {
            kind: CheckKind::Http {
                method: "HEAD".to_owned(),
                path: "/healthz".to_owned(),
                expect_status: 204,
            },
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(900),
            rise: 1,
            fall: 5,
            port: Some(8081),
            path: ProbePath::Direct,
        }
    );
    let v = &config.vips[1];
    assert_eq!(v.vip(), "[fd00::1]:0/udp".parse().unwrap());
    assert_eq!(v.options().scheduler, Scheduler::RoundRobin);
    assert_eq!(v.options().ring_size, DEFAULT_RING_SIZE);
    assert_eq!(
        v.health().kind,
        CheckKind::Udp {
            payload: b"hello".to_vec(),
            expect: Some(b"olleh".to_vec())
        }
    );
    assert_eq!(v.backends()[0].state, BackendState::Down);
}

/// ipvsadm's scheduler names in any case, and backends without a port (the VIP's).
#[test]
fn ipvsadm_aliases_and_backends_without_a_port() {
    let config = parse(
        "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\nscheduler = \"WLC\"\n\
         [[vip.backend]]\naddress = \"198.18.1.2\"\n\
         [[vip.backend]]\naddress = \"198.18.1.3:8080\"\n\
         [[vip]]\naddress = \"[fd00::1]:53\"\nprotocol = \"udp\"\nscheduler = \"sh\"\n\
         [[vip.backend]]\naddress = \"[fd00::2]\"\n\
         [[vip.backend]]\naddress = \"fd00::3\"\n",
    );
    assert_eq!(config.vips[0].scheduler, Scheduler::LeastConn);
    let addrs: Vec<String> = config.vips[0]
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(addrs, ["198.18.1.2:80", "198.18.1.3:8080"]);
    assert_eq!(config.vips[1].scheduler, Scheduler::SourceHash);
    let addrs: Vec<String> = config.vips[1]
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(addrs, ["[fd00::2]:53", "[fd00::3]:53"]);
}

#[test]
fn defaults() {
    let config = parse(
        r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[[vip.backend]]
address = "198.18.1.2:8080"
"#,
    );
    assert_eq!(config.conntrack, ConntrackConfig::default());
    assert_eq!(config.conntrack.timeouts(), DEFAULT_TIMEOUTS);
    assert_eq!(config.vips[0].options(), VipOptions::default());
    assert_eq!(config.vips[0].health(), HealthCheck::default());
    assert_eq!(
        config.vips[0].backends(),
        vec![BackendSpec::new("198.18.1.2:8080".parse().unwrap(), 1)]
    );
    assert_eq!(parse(""), Config::default());

    let http = parse(
        r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[vip.health]
kind = "http"
"#,
    );
    assert_eq!(
        http.vips[0].health().kind,
        CheckKind::Http {
            method: "GET".to_owned(),
            path: "/".to_owned(),
            expect_status: 200
        }
    );
}

#[test]
fn round_trips() {
    let config = parse(FULL);
    let text = config.to_toml();
    assert_eq!(parse(&text), config, "{text}");
    assert_eq!(parse(&text).to_toml(), text);
    // Through serde too (the state file could as well be JSON).
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), config);
    // Defaults are left out.
    let small = parse(
        "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"198.18.1.2:8080\"\n",
    );
    assert_eq!(
        small.to_toml(),
        "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\nscheduler = \"maglev\"\n\n\
         [[vip.backend]]\naddress = \"198.18.1.2:8080\"\nweight = 1\n"
    );
    assert_eq!(Config::default().to_toml(), "");
}

#[test]
fn serde_validates_too() {
    let err = serde_json::from_str::<VipConfig>(
        r#"{"address": "198.19.0.1:80", "protocol": "tcp", "scheduler": "fastest"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("scheduler: unknown scheduler \"fastest\""),
        "{err}"
    );
    let err = serde_json::from_str::<BackendConfig>(r#"{"address": "x", "weight": 1}"#)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("address: \"x\" is not ADDR:PORT"), "{err}");
}

#[test]
fn durations() {
    for (text, want) in [
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("900ms", Duration::from_millis(900)),
        ("1h", Duration::from_secs(3600)),
        ("250us", Duration::from_micros(250)),
        ("7ns", Duration::from_nanos(7)),
        ("0s", Duration::ZERO),
    ] {
        assert_eq!(parse_duration(text), Ok(want), "{text}");
        assert_eq!(parse_duration(&format_duration(want)), Ok(want), "{text}");
    }
    assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    for bad in ["", "30", "s", "1.5s", "-1s", "30 s", "30sec", "5M", " 5m"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        parse_duration("99999999999h"),
        Err("duration \"99999999999h\" is too long".to_owned())
    );
}

/// A one-VIP config with `vip` added to the VIP table, `health` as its health table and
/// `backend` as its one backend's table.
fn one(vip: &str, health: &str, backend: &str) -> String {
    let health = if health.is_empty() {
        String::new()
    } else {
        format!("[vip.health]\n{health}\n")
    };
    format!(
        "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n{vip}\n{health}\
         [[vip.backend]]\naddress = \"198.18.1.2:8080\"\n{backend}\n"
    )
}

const V: &str = "vip[0] (198.19.0.1:80/tcp)";

#[test]
fn bad_input_names_the_field() {
    let vip_line = |address: &str, protocol: &str| {
        format!("[[vip]]\naddress = \"{address}\"\nprotocol = \"{protocol}\"\n")
    };
    let cases: Vec<(String, String)> = vec![
        (
            one("scheduler = \"fastest\"", "", ""),
            "vip[0].scheduler: unknown scheduler \"fastest\": expected one of maglev, \
             source-hash, round-robin, weighted-round-robin, random, weighted-random, \
             least-conn (or ipvsadm's rr, wrr, lc, wlc, sh, mh)"
                .to_owned(),
        ),
        (
            format!(
                "{}{}[[vip.backend]]\naddress = \"198.18.1.2:8080\"\nweight = 20000\n",
                vip_line("198.19.0.1:80", "tcp"),
                vip_line("198.19.0.2:80", "tcp")
            ),
            "vip[1] (198.19.0.2:80/tcp) backend[0].weight: 20000 is out of range 0..=10000"
                .to_owned(),
        ),
        (
            one("", "", "weight = -1"),
            format!("{V} backend[0].weight: -1 is out of range 0..=10000"),
        ),
        (
            format!(
                "{}{}{}",
                vip_line("198.19.0.1:80", "tcp"),
                vip_line("198.19.0.1:80", "udp"),
                vip_line("198.19.0.1:80", "tcp")
            ),
            "vip[2].address: duplicate VIP 198.19.0.1:80/tcp, first at vip[0]".to_owned(),
        ),
        (
            vip_line("198.19.0.1", "tcp"),
            "vip[0].address: \"198.19.0.1\" is not ADDR:PORT, e.g. 198.19.0.1:80 or \
             [fd00::1]:80"
                .to_owned(),
        ),
        (
            vip_line("224.0.0.1:80", "tcp"),
            "vip[0].address: VIP address 224.0.0.1 is multicast".to_owned(),
        ),
        (
            vip_line("127.0.0.1:80", "tcp"),
            "vip[0].address: VIP address 127.0.0.1 is loopback".to_owned(),
        ),
        (
            format!(
                "{}[[vip.backend]]\naddress = \"127.0.0.1:8080\"\n",
                vip_line("198.19.0.1:80", "tcp")
            ),
            format!(
                "{V} backend[0].address: backend 127.0.0.1:8080 cannot be a backend: its \
                 address is loopback"
            ),
        ),
        (
            format!(
                "{}[[vip.backend]]\naddress = \"198.19.0.1:8080\"\n",
                vip_line("198.19.0.1:80", "tcp")
            ),
            format!(
                "{V} backend[0].address: backend 198.19.0.1:8080 cannot be a backend: its \
                 address is the VIP's own"
            ),
        ),
        (
            vip_line("198.19.0.1:80", "sctp"),
            "vip[0].protocol: bad protocol \"sctp\": expected tcp or udp".to_owned(),
        ),
        (
            one("ring-size = 65536", "", ""),
            "vip[0].ring-size: ring size 65536 is not a prime between 3 and 1048573".to_owned(),
        ),
        (
            one("scheduler = \"source-hash\"\nring-size = 2", "", ""),
            "vip[0].ring-size: ring size 2 is not a prime between 3 and 1048573".to_owned(),
        ),
        (
            format!(
                "{}[[vip.backend]]\naddress = \"[fd00::2]:80\"\n",
                vip_line("198.19.0.1:80", "tcp")
            ),
            format!("{V} backend[0].address: [fd00::2]:80 is IPv6 but the VIP is IPv4"),
        ),
        (
            format!(
                "{}[[vip.backend]]\naddress = \"198.18.1.2:8080\"\n\
                 [[vip.backend]]\naddress = \"198.18.1.2:8080\"\nweight = 2\n",
                vip_line("198.19.0.1:80", "tcp")
            ),
            format!(
                "{V} backend[1].address: duplicate backend 198.18.1.2:8080, first at \
                 backend[0]"
            ),
        ),
        (
            format!(
                "{}[[vip.backend]]\naddress = \"198.18.1.2:0\"\n",
                vip_line("198.19.0.1:80", "tcp")
            ),
            format!(
                "{V} backend[0].address: backend 198.18.1.2:0 has port 0, which only a VIP \
                 with port 0 (every port) allows"
            ),
        ),
        (
            format!(
                "{}[[vip.backend]]\naddress = \"198.18.1.2:http\"\n",
                vip_line("198.19.0.1:80", "tcp")
            ),
            format!(
                "{V} backend[0].address: bad backend \"198.18.1.2:http\": expected \
                 ADDR[:PORT], e.g. 198.18.1.2:8080, [fd00::2]:8080 or 198.18.1.2 (the VIP's port)"
            ),
        ),
        (
            one("", "", "state = \"dead\""),
            format!("{V} backend[0].state: unknown state \"dead\": expected up, draining or down"),
        ),
        (
            one("", "kind = \"tcp\"\ntimeout = \"2s\"", ""),
            format!("{V} health.timeout: 2s is longer than the interval (1s)"),
        ),
        (
            one("", "kind = \"tcp\"\ninterval = \"100ms\"", ""),
            format!("{V} health.timeout: 500ms is longer than the interval (100ms)"),
        ),
        (
            one("", "kind = \"tcp\"\nhttp-path = \"/healthz\"", ""),
            format!("{V} health.http-path: only allowed with kind \"http\", not \"tcp\""),
        ),
        (
            one("", "kind = \"http\"\nudp-expect = \"pong\"", ""),
            format!("{V} health.udp-expect: only allowed with kind \"udp\", not \"http\""),
        ),
        (
            one("", "http-expect-status = 200", ""),
            format!("{V} health.http-expect-status: only allowed with kind \"http\", not \"none\""),
        ),
        (
            one("", "kind = \"icmp\"", ""),
            format!(
                "{V} health.kind: unknown kind \"icmp\": expected none, tcp, http, https, udp or exec"
            ),
        ),
        (
            one("", "kind = \"tcp\"\nrise = 0", ""),
            format!("{V} health.rise: 0 is out of range 1..=100"),
        ),
        (
            one("", "kind = \"tcp\"\nfall = 101", ""),
            format!("{V} health.fall: 101 is out of range 1..=100"),
        ),
        (
            one("", "kind = \"tcp\"\nport = 70000", ""),
            format!("{V} health.port: 70000 is out of range 1..=65535"),
        ),
        (
            one("", "kind = \"tcp\"\ninterval = \"0s\"", ""),
            format!("{V} health.interval: \"0s\" must be more than 0"),
        ),
        (
            one("", "kind = \"tcp\"\ninterval = \"1 second\"", ""),
            format!(
                "{V} health.interval: bad duration \"1 second\": expected a whole number \
                 and a unit (ms, s, m, h), e.g. \"30s\""
            ),
        ),
        (
            one("", "kind = \"http\"\nhttp-method = \"GET /x\"", ""),
            format!("{V} health.http-method: \"GET /x\" is not an HTTP method"),
        ),
        (
            one("", "kind = \"http\"\nhttp-path = \"healthz\"", ""),
            format!(
                "{V} health.http-path: \"healthz\" must start with \"/\" and have no spaces \
                 or control characters"
            ),
        ),
        (
            one("", "kind = \"http\"\nhttp-expect-status = 99", ""),
            format!("{V} health.http-expect-status: 99 is out of range 100..=599"),
        ),
        (
            one("", "kind = \"udp\"\nudp-payload = \"\"", ""),
            format!("{V} health.udp-payload: must not be empty"),
        ),
        (
            "[conntrack]\ncapacity = 0\n".to_owned(),
            "conntrack.capacity: 0 is out of range 1..=100000000".to_owned(),
        ),
        (
            "[conntrack]\nudp-timeout = \"5 minutes\"\n".to_owned(),
            "conntrack.udp-timeout: bad duration \"5 minutes\": expected a whole number and \
             a unit (ms, s, m, h), e.g. \"30s\""
                .to_owned(),
        ),
    ];
    assert!(cases.len() >= 15);
    for (text, want) in cases {
        assert_eq!(error(&text), want, "for:\n{text}");
    }
}

#[test]
fn every_error_is_reported_and_typed_errors_are_invalid() {
    let text = format!(
        "[conntrack]\ncapacity = 0\n{}",
        one(
            "scheduler = \"fastest\"",
            "kind = \"tcp\"\nrise = 0",
            "weight = 20000"
        )
    );
    match Config::parse(&text) {
        Err(ConfigError::Invalid(errors)) => assert_eq!(
            errors,
            vec![
                "conntrack.capacity: 0 is out of range 1..=100000000".to_owned(),
                "vip[0].scheduler: unknown scheduler \"fastest\": expected one of maglev, \
                 source-hash, round-robin, weighted-round-robin, random, weighted-random, \
                 least-conn (or ipvsadm's rr, wrr, lc, wlc, sh, mh)"
                    .to_owned(),
                format!("{V} health.rise: 0 is out of range 1..=100"),
                format!("{V} backend[0].weight: 20000 is out of range 0..=10000"),
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn too_many_vips() {
    let text: String = (0..=MAX_VIPS)
        .map(|i| {
            format!(
                "[[vip]]\naddress = \"198.19.{}.{}:80\"\nprotocol = \"tcp\"\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    assert_eq!(error(&text), "vip: 4097 VIPs, at most 4096");
}

#[test]
fn syntax_and_shape_errors_keep_tomls_message() {
    // Typos in keys are errors, wherever they are.
    let err = error(&one("sheduler = \"maglev\"", "", ""));
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("unknown field `sheduler`"), "{err}");
    let err = error(&one("", "", "wieght = 2"));
    assert!(err.contains("unknown field `wieght`"), "{err}");
    let err = error(&one("", "kind = \"tcp\"\nintervall = \"1s\"", ""));
    assert!(err.contains("unknown field `intervall`"), "{err}");
    let err = error("[conntrak]\ncapacity = 1\n");
    assert!(err.contains("unknown field `conntrak`"), "{err}");
    // Wrong types and bad TOML.
    let err = error(&one("", "kind = \"tcp\"\ninterval = 1", ""));
    assert!(
        err.contains("invalid type: integer `1`, expected a string"),
        "{err}"
    );
    assert!(err.contains("health.interval: "), "names the field: {err}");
    let err = error("[[vip]\naddress = \"198.19.0.1:80\"\n");
    assert!(err.starts_with("line 1, column "), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    let err = error("[[vip]]\naddress = \"198.19.0.1:80\"\n");
    assert!(err.contains("missing field `protocol`"), "{err}");
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("xdplb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xdplb.toml");
    std::fs::write(&path, one("scheduler = \"fastest\"", "", "")).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: vip[0].scheduler: unknown", path.display())),
        "{err}"
    );
    std::fs::write(&path, FULL).unwrap();
    assert_eq!(Config::load(&path).unwrap(), parse(FULL));
    std::fs::remove_dir_all(&dir).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.starts_with("reading "), "{err}");
}

fn balancer(slots: u32) -> Balancer<MemMaps> {
    Balancer::new(MemMaps::default(), slots, Settings::default()).unwrap()
}

/// A balancer's VIPs without ids, backends sorted by address.
fn state(b: &Balancer<MemMaps>) -> Vec<(Vip, VipOptions, Vec<BackendSpec>)> {
    b.vips()
        .into_iter()
        .map(|info| {
            let mut specs: Vec<BackendSpec> = info.backends.iter().map(|b| b.spec).collect();
            specs.sort_by_key(|s| s.addr);
            (info.vip, info.options, specs)
        })
        .collect()
}

/// A config's VIPs the same way, sorted by VIP like [`Balancer::vips`].
fn wanted(config: &Config) -> Vec<(Vip, VipOptions, Vec<BackendSpec>)> {
    let mut out: Vec<_> = config
        .vips
        .iter()
        .map(|v| {
            let mut specs = v.backends();
            specs.sort_by_key(|s| s.addr);
            (v.vip(), v.options(), specs)
        })
        .collect();
    out.sort_by_key(|(vip, _, _)| *vip);
    out
}

const BEFORE: &str = r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
[[vip.backend]]
address = "198.18.1.2:8080"
[[vip.backend]]
address = "198.18.2.2:8080"
[[vip.backend]]
address = "198.18.3.2:8080"

[[vip]]
address = "198.19.0.2:53"
protocol = "udp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.1.2:53"
"#;

const AFTER: &str = r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
scheduler = "weighted-round-robin"
[[vip.backend]]
address = "198.18.4.2:8080"
[[vip.backend]]
address = "198.18.2.2:8080"
weight = 3
[[vip.backend]]
address = "198.18.1.2:8080"
state = "draining"

[[vip]]
address = "[fd00::1]:443"
protocol = "tcp"
ring-size = 31
[[vip.backend]]
address = "[fd00::2]:443"
weight = 2
state = "down"
"#;

#[test]
fn plan_of_a_changed_file() {
    let mut b = balancer(1 << 20);
    apply_plan(&mut b, &parse(BEFORE)).unwrap();
    let plan = plan(&b.vips(), &parse(AFTER));
    assert_eq!(
        plan.to_string(),
        "- vip 198.19.0.2:53/udp\n\
         ~ vip 198.19.0.1:80/tcp: maglev -> weighted-round-robin\n\
         - backend 198.18.3.2:8080 from 198.19.0.1:80/tcp\n\
         + backend 198.18.4.2:8080 to 198.19.0.1:80/tcp (weight 1)\n\
         ~ backend 198.18.2.2:8080 of 198.19.0.1:80/tcp: weight 1 -> 3\n\
         ~ backend 198.18.1.2:8080 of 198.19.0.1:80/tcp: state up -> draining\n\
         + vip [fd00::1]:443/tcp (maglev, ring-size 31)\n\
         + backend [fd00::2]:443 to [fd00::1]:443/tcp (weight 2, down)"
    );
    assert_eq!(plan.len(), 8);
    assert_eq!(
        plan.changes[4],
        Change::UpdateBackend {
            vip: "198.19.0.1:80/tcp".parse().unwrap(),
            addr: "198.18.2.2:8080".parse().unwrap(),
            weight: Some((1, 3)),
            state: None,
        }
    );
    let both = Change::UpdateBackend {
        vip: "198.19.0.1:80/tcp".parse().unwrap(),
        addr: "198.18.2.2:8080".parse().unwrap(),
        weight: Some((1, 3)),
        state: Some((BackendState::Up, BackendState::Down)),
    };
    assert_eq!(
        both.to_string(),
        "~ backend 198.18.2.2:8080 of 198.19.0.1:80/tcp: weight 1 -> 3, state up -> down"
    );
    assert_eq!(Plan::default().to_string(), "no changes");
}

#[test]
fn apply_brings_the_balancer_to_the_config() {
    let mut b = balancer(1 << 20);
    let before = parse(BEFORE);
    let plan = apply_plan(&mut b, &before).unwrap();
    assert_eq!(plan.len(), 6);
    assert_eq!(state(&b), wanted(&before));
    assert!(
        apply_plan(&mut b, &before).unwrap().is_empty(),
        "idempotent"
    );

    let vip: Vip = "198.19.0.1:80/tcp".parse().unwrap();
    let id_of = |b: &Balancer<MemMaps>, addr: &str| {
        let addr: SocketAddr = addr.parse().unwrap();
        b.vip(&vip)
            .unwrap()
            .backends
            .iter()
            .find(|x| x.spec.addr == addr)
            .map(|x| x.id)
    };
    let kept = id_of(&b, "198.18.2.2:8080");

    let after = parse(AFTER);
    apply_plan(&mut b, &after).unwrap();
    assert_eq!(state(&b), wanted(&after));
    assert_eq!(
        id_of(&b, "198.18.2.2:8080"),
        kept,
        "kept backends keep their ids"
    );
    assert_eq!(id_of(&b, "198.18.3.2:8080"), None);
    assert!(super::plan(&b.vips(), &after).is_empty());

    // Order of backends in the file does not matter; an empty config removes everything.
    let mut reordered = after.clone();
    reordered.vips[0].backends.reverse();
    assert!(apply_plan(&mut b, &reordered).unwrap().is_empty());
    apply_plan(&mut b, &Config::default()).unwrap();
    assert!(b.vips().is_empty());
    assert!(b.maps().vips.is_empty());
}

#[test]
fn a_failed_apply_is_rolled_back() {
    // 100 slots: VIP A (maglev, ring 31: 31 + 2 list entries) and C (round-robin, 2 + 2)
    // fit; B with a ring of 97 does not fit next to A.
    let mut b = balancer(100);
    let before = parse(
        r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
ring-size = 31
[[vip.backend]]
address = "198.18.1.2:8080"
[[vip.backend]]
address = "198.18.2.2:8080"

[[vip]]
address = "198.19.0.3:80"
protocol = "tcp"
scheduler = "round-robin"
[[vip.backend]]
address = "198.18.1.2:8080"
[[vip.backend]]
address = "198.18.2.2:8080"
"#,
    );
    apply_plan(&mut b, &before).unwrap();
    let vip_a: Vip = "198.19.0.1:80/tcp".parse().unwrap();
    let ids_a = b.vip(&vip_a).unwrap().backends;
    let desired = parse(
        r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
ring-size = 31
[[vip.backend]]
address = "198.18.1.2:8080"
weight = 5
[[vip.backend]]
address = "198.18.2.2:8080"

[[vip]]
address = "198.19.0.2:80"
protocol = "tcp"
ring-size = 97
[[vip.backend]]
address = "198.18.3.2:8080"
[[vip.backend]]
address = "198.18.4.2:8080"
"#,
    );
    let err = apply_plan(&mut b, &desired).unwrap_err();
    assert!(matches!(err, Error::NoRoomInTables { .. }), "{err}");
    assert_eq!(state(&b), wanted(&before), "rolled back");
    let after_a = b.vip(&vip_a).unwrap().backends;
    assert_eq!(after_a, ids_a, "A's backends kept their ids and weights");
    // The balancer still works: a config that fits (the 100 slots are fragmented by
    // now) applies.
    let mut fits = desired.clone();
    fits.vips[1].ring_size = 29;
    apply_plan(&mut b, &fits).unwrap();
    assert_eq!(state(&b), wanted(&fits));
}

#[test]
fn hand_built_configs_are_checked_before_anything_changes() {
    let mut b = balancer(1 << 20);
    apply_plan(&mut b, &parse(BEFORE)).unwrap();
    let before = state(&b);
    let mut bad = parse(AFTER);
    bad.vips[1].backends[0].weight = MAX_WEIGHT + 1;
    assert!(matches!(
        apply_plan(&mut b, &bad),
        Err(Error::WeightOutOfRange { .. })
    ));
    let mut bad = parse(AFTER);
    bad.vips[1].backends[0].address = "198.18.9.9:443".parse().unwrap();
    assert!(matches!(
        apply_plan(&mut b, &bad),
        Err(Error::FamilyMismatch { .. })
    ));
    let mut bad = parse(AFTER);
    bad.vips.push(bad.vips[0].clone());
    assert!(matches!(apply_plan(&mut b, &bad), Err(Error::VipExists(_))));
    assert_eq!(state(&b), before);
}

#[test]
fn from_info_gives_the_balancers_state_back() {
    let mut b = balancer(1 << 20);
    let after = parse(AFTER);
    apply_plan(&mut b, &after).unwrap();
    let config = Config {
        conntrack: ConntrackConfig::default(),
        ipip: IpipConfig::default(),
        cluster: None,
        bgp: None,
        vips: b.vips().iter().map(VipConfig::from_info).collect(),
    };
    assert_eq!(wanted(&config), wanted(&after));
    assert!(plan(&b.vips(), &parse(&config.to_toml())).is_empty());
}

#[test]
fn flood_settings_parse_check_and_round_trip() {
    let config = parse(
        "[conntrack]\ncapacity = 8000\nembryonic-capacity = 500\nnew-flow-rate-limit = 3000\n",
    );
    assert_eq!(config.conntrack.embryonic_capacity, Some(500));
    assert_eq!(config.conntrack.new_flow_rate_limit, Some(3000));
    let text = config.to_toml();
    assert_eq!(parse(&text), config, "{text}");
    let unset = parse("[conntrack]\ncapacity = 8000\n");
    assert_eq!(unset.conntrack.embryonic_capacity, None);
    assert_eq!(unset.conntrack.new_flow_rate_limit, None);
    assert_eq!(
        parse("[conntrack]\nnew-flow-rate-limit = 0\n")
            .conntrack
            .new_flow_rate_limit,
        Some(0)
    );
    assert!(
        error("[conntrack]\nembryonic-capacity = 0\n").contains("conntrack.embryonic-capacity")
    );
    assert!(
        error("[conntrack]\nnew-flow-rate-limit = -1\n").contains("conntrack.new-flow-rate-limit")
    );
}

#[test]
fn source_checks_parse_check_round_trip_and_apply() {
    let config = parse(&one(
        "allow = [\"10.0.0.0/8\", \"192.0.2.7\"]\ndeny = [\"10.1.0.0/16\"]\n\
         source-rate-limit = 5\nsource-prefix-len = 24",
        "",
        "",
    ));
    let options = config.vips[0].options();
    assert_eq!(
        options
            .allow
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.0/8", "192.0.2.7/32"]
    );
    assert_eq!(options.deny[0].to_string(), "10.1.0.0/16");
    assert_eq!(options.source_rate_limit, 5);
    assert_eq!(options.source_prefix_len, Some(24));
    let text = config.to_toml();
    assert_eq!(parse(&text), config, "{text}");
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), config);

    let mut b = balancer(1 << 20);
    apply_plan(&mut b, &config).unwrap();
    assert_eq!(b.vips()[0].options, options);
    assert_eq!(VipConfig::from_info(&b.vips()[0]).options(), options);
    // Changing only the lists is a plan of one VIP change.
    let fewer = parse(&one("allow = [\"10.0.0.0/8\"]", "", ""));
    assert_eq!(
        plan(&b.vips(), &fewer).to_string(),
        "~ vip 198.19.0.1:80/tcp: maglev, allow 10.0.0.0/8 192.0.2.7/32, deny 10.1.0.0/16, \
         source-rate-limit 5, source-prefix-len 24 -> maglev, allow 10.0.0.0/8"
    );

    for (vip, expected) in [
        (
            "allow = [\"10.1.2.3/8\"]",
            "vip[0].allow[0]: bad source prefix \"10.1.2.3/8\": host bits are set (the network \
                 is 10.0.0.0/8)",
        ),
        (
            "deny = [\"10.0.0.0/40\"]",
            "vip[0].deny[0]: bad source prefix \"10.0.0.0/40\": the length must be a number \
                 from 0 to 32",
        ),
        (
            "allow = [\"fd00::/8\"]",
            "vip[0].allow/deny: source prefix fd00::/8 is not of VIP 198.19.0.1:80/tcp's \
                 address family",
        ),
        (
            "allow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.0/8\"]",
            "vip[0].allow/deny: source prefix 10.0.0.0/8 is listed twice (in allow or deny, \
                 or in both)",
        ),
        (
            "source-rate-limit = -1",
            "vip[0].source-rate-limit: -1 is out of range 0..=4294967295",
        ),
        (
            "source-rate-limit = 5\nsource-prefix-len = 33",
            "vip[0].source-prefix-len: source prefix length 33 is out of range 0..=32 for VIP \
                 198.19.0.1:80/tcp",
        ),
    ] {
        let err = error(&one(vip, "", ""));
        assert!(err.contains(expected), "{vip}:\n{err}\nwanted {expected}");
    }
}

#[test]
fn forwarding_is_read_checked_and_written_back() {
    let dsr = parse(
        r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
forwarding = "dsr-l2"
[[vip.backend]]
address = "198.18.1.2:80"
"#,
    );
    assert_eq!(dsr.vips[0].options().forwarding, Forwarding::DsrL2);
    assert!(
        dsr.to_toml().contains("forwarding = \"dsr-l2\""),
        "{}",
        dsr.to_toml()
    );
    assert_eq!(Config::parse(&dsr.to_toml()).unwrap(), dsr);
    // NAT is the default and is left out.
    let nat = parse(&one("", "", ""));
    assert_eq!(nat.vips[0].options().forwarding, Forwarding::Nat);
    assert!(!nat.to_toml().contains("forwarding"));

    let vip = |forwarding: &str, backend: &str| {
        format!(
            "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\nforwarding = \
             \"{forwarding}\"\n[[vip.backend]]\naddress = \"{backend}\"\n"
        )
    };
    let err = error(&vip("dsr", "198.18.1.2:80"));
    assert!(
        err.contains("vip[0].forwarding: unknown forwarding mode \"dsr\""),
        "{err}"
    );
    let err = error(&vip("dsr-l2", "198.18.1.2:8080"));
    assert!(
        err.contains("backend[0].address: backend 198.18.1.2:8080 of VIP 198.19.0.1:80/tcp must listen on the VIP's port"),
        "{err}"
    );
    let err = error(&vip("ipip", "198.18.1.2:8080"));
    assert!(err.contains("must listen on the VIP's port"), "{err}");
}

#[test]
fn ipip_sources_are_read_checked_and_written_back() {
    let config = parse("[ipip]\nsource-v4 = \"100.64.0.0/16\"\nsource-v6 = \"fd00:7::/96\"\n");
    assert_eq!(
        config.ipip.source_v4,
        Some("100.64.0.0/16".parse().unwrap())
    );
    assert_eq!(config.ipip.source_v6, Some("fd00:7::/96".parse().unwrap()));
    assert!(config.to_toml().contains("[ipip]"), "{}", config.to_toml());
    assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
    // Left out: nothing, and nothing written.
    let none = parse("[ipip]\n");
    assert_eq!(none.ipip, IpipConfig::default());
    assert!(!parse("").to_toml().contains("ipip"));

    let err = error("[ipip]\nsource-v4 = \"fd00::/64\"\nsource-v6 = \"10.0.0.0/8\"\n");
    assert!(
        err.contains(
            "ipip.source-v4: fd00::/64 is an IPv6 prefix; ipip.source-v4 takes an IPv4 one"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "ipip.source-v6: 10.0.0.0/8 is an IPv4 prefix; ipip.source-v6 takes an IPv6 one"
        ),
        "{err}"
    );
    let err = error("[ipip]\nsource-v4 = \"64.0.0.0/2\"\nsource-v6 = \"fc00::/7\"\n");
    assert!(
        err.contains("ipip.source-v4: 64.0.0.0/2 is too short") && err.contains("at least /8"),
        "{err}"
    );
    assert!(
        err.contains("ipip.source-v6: fc00::/7 is too short") && err.contains("at least /16"),
        "{err}"
    );
    let err = error("[ipip]\nsource-v4 = \"10.0.0.0/33\"\n");
    assert!(
        err.contains("ipip.source-v4:") && err.contains("from 0 to 32"),
        "{err}"
    );
    let err = error("[ipip]\nsource-v4 = \"10.0.0.1/16\"\n");
    assert!(
        err.contains("ipip.source-v4:") && err.contains("host bits are set"),
        "{err}"
    );
    let err = error("[ipip]\nsource = \"10.0.0.0/16\"\n");
    assert!(err.contains("source"), "{err}");

    // A change is a settings change of the plan.
    let changes = settings_changes(&none, &config);
    assert!(format!("{changes:?}").contains("source-v4"), "{changes:?}");
}

#[test]
fn health_path_is_read_checked_and_written_back() {
    let vip = |forwarding: &str, path: &str| {
        format!(
            "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\nforwarding = \
             \"{forwarding}\"\n[vip.health]\nkind = \"tcp\"\npath = \"{path}\"\n\
             [[vip.backend]]\naddress = \"198.18.1.2:80\"\n"
        )
    };
    let through = parse(&vip("dsr-l2", "vip"));
    assert_eq!(through.vips[0].health().path, ProbePath::Vip);
    assert!(
        through.to_toml().contains("path = \"vip\""),
        "{}",
        through.to_toml()
    );
    assert_eq!(Config::parse(&through.to_toml()).unwrap(), through);
    // Through the ipip tunnel too.
    let tunnel = parse(&vip("ipip", "vip"));
    assert_eq!(tunnel.vips[0].health().path, ProbePath::Vip);
    assert_eq!(Config::parse(&tunnel.to_toml()).unwrap(), tunnel);
    // Direct is the default and is left out.
    let direct = parse(&vip("dsr-l2", "direct"));
    assert_eq!(direct.vips[0].health().path, ProbePath::Direct);
    assert!(!direct.to_toml().contains("path ="), "{}", direct.to_toml());

    let err = error(&vip("nat", "vip"));
    assert!(
        err.contains("vip[0] (198.19.0.1:80/tcp) health.path: \"vip\" probes through the dsr-l2 or ipip path; this VIP forwards by nat"),
        "{err}"
    );
    let err = error(&vip("dsr-l2", "backend"));
    assert!(
        err.contains("health.path: unknown path \"backend\": expected direct or vip"),
        "{err}"
    );
}

#[test]
fn a_new_forwarding_mode_and_its_backend_ports_apply_together() {
    let mut b = balancer(1 << 20);
    let nat = parse(&one("", "", ""));
    apply_plan(&mut b, &nat).unwrap();
    let generation = b.maps().settings.next_hop_generation;
    let dsr = parse(
        r#"
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
forwarding = "dsr-l2"
[[vip.backend]]
address = "198.18.1.2:80"
"#,
    );
    let plan = apply_plan(&mut b, &dsr).unwrap();
    assert!(
        plan.to_string()
            .contains("~ vip 198.19.0.1:80/tcp: maglev -> maglev, forwarding dsr-l2"),
        "{plan}"
    );
    let vip: Vip = "198.19.0.1:80/tcp".parse().unwrap();
    assert_eq!(b.maps().vips[&vip.key()].forwarding, forwarding::DSR_L2);
    let info = b.vip(&vip).unwrap();
    let entry = b.maps().backends[&lb_common::maps::backend_index(info.backends[0].id)];
    assert_eq!(entry.forwarding, forwarding::DSR_L2);
    assert_eq!(entry.port, 80u16.to_be_bytes());
    // Next hops kept for NAT are looked up again.
    assert_ne!(b.maps().settings.next_hop_generation, generation);
}

const CLUSTER: &str = r#"
[cluster]
hash-seed = 7
[bgp]
local-asn = 65001
router-id = "10.0.1.2"
announce = ["198.19.0.1"]
[[bgp.peer]]
address = "10.0.1.1"
asn = 65000
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
"#;

#[test]
fn cluster_and_bgp_parse_with_defaults_and_round_trip() {
    let config = parse(CLUSTER);
    assert_eq!(
        config.cluster,
        Some(ClusterConfig {
            hash_seed: 7,
            ..ClusterConfig::default()
        })
    );
    let bgp = config.bgp.clone().expect("bgp");
    assert_eq!(bgp.local_asn, 65001);
    assert_eq!(bgp.hold_time, DEFAULT_HOLD_TIME);
    assert!(!bgp.bfd);
    assert_eq!(bgp.next_hop, None);
    assert_eq!(bgp.peers[0].port, 179);
    assert_eq!(bgp.announce, vec!["198.19.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(parse(&config.to_toml()), config);
}

#[test]
fn cluster_refuses_schedulers_that_are_not_cluster_safe() {
    let text = format!("{CLUSTER}scheduler = \"round-robin\"\n");
    let err = error(&text);
    assert!(
        err.contains("vip[0] (198.19.0.1:80/tcp) scheduler: round-robin is not cluster-safe"),
        "{err}"
    );
    // source-hash is.
    parse(&format!("{CLUSTER}scheduler = \"source-hash\"\n"));
    // Without [cluster] or [bgp], any scheduler goes.
    parse("[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\nscheduler = \"random\"\n");
}

#[test]
fn bgp_errors_name_their_field() {
    let text = r#"
[cluster]
hash-seed = -1
[bgp]
router-id = "fd00::1"
hold-time = 1
next-hop = "nowhere"
announce = ["198.19.0.9"]
[[bgp.peer]]
asn = 0
port = 70000
[[vip]]
address = "198.19.0.1:80"
protocol = "tcp"
"#;
    let err = error(text);
    for field in [
        "cluster.hash-seed: -1 is out of range",
        "bgp.local-asn: missing",
        "bgp.router-id: \"fd00::1\" is not an IPv4 address",
        "bgp.hold-time: 1 is out of range 3..=65535",
        "bgp.next-hop: \"nowhere\" is not an IP address",
        "bgp.peer[0].address: missing",
        "bgp.peer[0].asn: 0 is out of range",
        "bgp.peer[0].port: 70000 is out of range",
        "bgp.announce[0]: 198.19.0.9 is the address of no [[vip]]",
    ] {
        assert!(err.contains(field), "{field} missing from:\n{err}");
    }
    assert!(
        error("[bgp]\nlocal-asn = 1\nrouter-id = \"1.2.3.4\"\n").contains("bgp.peer: at least one")
    );
}

#[test]
fn merge_health_keeps_what_is_not_given_and_validates_as_the_file() {
    let current = HealthCheck {
        kind: CheckKind::Http {
            method: "GET".to_owned(),
            path: "/healthz".to_owned(),
            expect_status: 200,
        },
        interval: Duration::from_secs(2),
        ..HealthCheck::default()
    };
    let given = |f: fn(&mut HealthSettings)| {
        let mut s = HealthSettings::default();
        f(&mut s);
        merge_health(&current, s, Forwarding::Nat)
    };
    // One setting: the rest is kept.
    let check = given(|s| s.http_expect_status = Some(204)).unwrap();
    assert_eq!(check.interval, Duration::from_secs(2));
    assert_eq!(
        check.kind,
        CheckKind::Http {
            method: "GET".to_owned(),
            path: "/healthz".to_owned(),
            expect_status: 204
        }
    );
    // A new kind drops the old kind's own settings, keeps the common ones.
    let check = given(|s| s.kind = Some("tcp".to_owned())).unwrap();
    assert_eq!(
        (check.kind, check.interval),
        (CheckKind::Tcp, Duration::from_secs(2))
    );
    // Errors name the field, as in a file.
    let err = given(|s| {
        s.kind = Some("tcp".to_owned());
        s.http_path = Some("/x".to_owned());
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("health.http-path: only allowed with kind \"http\""),
        "{err}"
    );
    let err = given(|s| s.timeout = Some("3s".to_owned()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("health.timeout: 3s is longer than the interval (2s)"),
        "{err}"
    );
    let err = given(|s| s.path = Some("vip".to_owned()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("health.path"), "{err}");
    assert!(
        merge_health(
            &current,
            HealthSettings {
                path: Some("vip".to_owned()),
                ..HealthSettings::default()
            },
            Forwarding::DsrL2
        )
        .is_ok()
    );
}

#[test]
fn health_kinds_and_hooks_are_checked_as_the_file_gives_them() {
    let vip = "[[vip]]\naddress = \"198.19.0.1:80\"\nprotocol = \"tcp\"\n";
    let backend = "[[vip.backend]]\naddress = \"10.0.1.2:8080\"\n";
    let errors = |text: &str| match Config::parse(text) {
        Ok(_) => String::new(),
        Err(err) => err.to_string(),
    };
    let err = errors(&format!("{vip}sorry = \"10.0.1.2:8080\"\n{backend}"));
    assert!(
        err.contains("sorry: 10.0.1.2:8080 is one of the VIP's backends"),
        "{err}"
    );
    let err = errors(&format!("{vip}sorry = \"nowhere\"\n{backend}"));
    assert!(err.contains("sorry: \"nowhere\" is not ADDR:PORT"), "{err}");
    // The checks of any backend, shared with `vip set --sorry` (config::check_sorry).
    let err = errors(&format!("{vip}sorry = \"127.0.0.1:8080\"\n{backend}"));
    assert!(
        err.contains("sorry: backend 127.0.0.1:8080 cannot be"),
        "{err}"
    );
    let err = errors(&format!("{vip}sorry = \"[fd00::2]:8080\"\n{backend}"));
    assert!(
        err.contains("sorry: backend [fd00::2]:8080 is not of"),
        "{err}"
    );
    let err = errors(&format!(
        "{vip}forwarding = \"dsr-l2\"\nsorry = \"10.0.9.2:8080\"\n\
         [[vip.backend]]\naddress = \"10.0.1.2:80\"\n"
    ));
    assert!(err.contains("sorry: backend 10.0.9.2:8080 of VIP"), "{err}");
    let err = errors(&format!("{vip}notify-up = [\"\"]\n{backend}"));
    assert!(
        err.contains("notify-up: the program must not be empty"),
        "{err}"
    );
    let err = errors(&format!("{vip}[vip.health]\nkind = \"exec\"\n{backend}"));
    assert!(
        err.contains("health.exec-command: kind \"exec\" needs a command"),
        "{err}"
    );
    let err = errors(&format!(
        "{vip}[vip.health]\nkind = \"http\"\ninsecure = true\n{backend}"
    ));
    assert!(
        err.contains("health.insecure: only allowed with kind \"https\""),
        "{err}"
    );

    let config = Config::parse(&format!(
        "{vip}sorry = \"10.0.9.2:8080\"\nnotify-down = [\"/bin/true\", \"x\"]\n\
         [vip.health]\nkind = \"https\"\nhttp-path = \"/h\"\ninsecure = true\n{backend}"
    ))
    .unwrap();
    let v = &config.vips[0];
    assert_eq!(v.sorry, Some("10.0.9.2:8080".parse().unwrap()));
    assert_eq!(v.notify_down, ["/bin/true", "x"]);
    assert!(matches!(
        &v.health.kind,
        CheckKind::Https { path, insecure: true, server_name: None, .. } if path == "/h"
    ));
    // And back to the file's shape, unchanged.
    let again = Config::parse(&config.to_toml()).unwrap();
    assert_eq!(again, config);
}
