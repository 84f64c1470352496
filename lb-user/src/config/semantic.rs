//! The semantic pass: from the file's shape to a valid [`super::Config`], every error named by
//! the path of its field.

use super::*;

/// Errors found so far, each `path: message`.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<String>);

impl Errors {
    pub(super) fn add(&mut self, path: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(format!("{path}: {message}"));
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }

    /// `value` if it is in `range` and fits `T`, else an error at `path`.
    pub(super) fn int<T: TryFrom<i64>>(
        &mut self,
        path: &str,
        value: i64,
        range: RangeInclusive<i64>,
    ) -> Option<T> {
        match T::try_from(value) {
            Ok(v) if range.contains(&value) => Some(v),
            _ => {
                self.add(
                    path,
                    format!(
                        "{value} is out of range {}..={}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    /// A positive duration, else an error at `path`.
    pub(super) fn duration(&mut self, path: &str, text: &str) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.add(path, format!("{text:?} must be more than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(err) => {
                self.add(path, err);
                None
            }
        }
    }

    pub(super) fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        let parsed = text.parse();
        if parsed.is_err() {
            self.add(
                path,
                format!("{text:?} is not ADDR:PORT, e.g. 198.19.0.1:80 or [fd00::1]:80"),
            );
        }
        parsed.ok()
    }
}

/// `prefix.name`, or `name` alone at the top.
pub(super) fn field(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A table inside a VIP: `vip[0] (198.19.0.1:80/tcp) backend[1]`.
pub(super) fn inside(prefix: &str, vip: Option<Vip>, name: &str) -> String {
    match (prefix.is_empty(), vip) {
        (true, _) => name.to_owned(),
        (false, Some(vip)) => format!("{prefix} ({vip}) {name}"),
        (false, None) => format!("{prefix} {name}"),
    }
}

pub(super) fn family_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// An HTTP method: a token (RFC 9110), so that it cannot break the request line.
pub(super) fn is_http_method(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn is_http_path(text: &str) -> bool {
    text.starts_with('/') && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub(super) fn conntrack_from_raw(raw: RawConntrack, errors: &mut Errors) -> ConntrackConfig {
    let mut config = ConntrackConfig::default();
    let max = i64::from(MAX_CONNTRACK_CAPACITY);
    if let Some(c) = raw
        .capacity
        .and_then(|c| errors.int("conntrack.capacity", c, 1..=max))
    {
        config.capacity = c;
    }
    config.embryonic_capacity = raw
        .embryonic_capacity
        .and_then(|c| errors.int("conntrack.embryonic-capacity", c, 1..=max));
    config.new_flow_rate_limit = raw
        .new_flow_rate_limit
        .and_then(|c| errors.int("conntrack.new-flow-rate-limit", c, 0..=i64::from(u32::MAX)));
    let timeouts = [
        (
            "conntrack.tcp-syn-timeout",
            raw.tcp_syn_timeout,
            &mut config.tcp_syn_timeout,
        ),
        (
            "conntrack.tcp-established-timeout",
            raw.tcp_established_timeout,
            &mut config.tcp_established_timeout,
        ),
        (
            "conntrack.tcp-fin-timeout",
            raw.tcp_fin_timeout,
            &mut config.tcp_fin_timeout,
        ),
        (
            "conntrack.tcp-rst-timeout",
            raw.tcp_rst_timeout,
            &mut config.tcp_rst_timeout,
        ),
        (
            "conntrack.udp-timeout",
            raw.udp_timeout,
            &mut config.udp_timeout,
        ),
    ];
    for (path, text, slot) in timeouts {
        if let Some(d) = text.and_then(|t| errors.duration(path, &t)) {
            *slot = d;
        }
    }
    config
}

/// The `[ipip]` table: each prefix of its own family, not shorter than the family's minimum.
pub(super) fn ipip_from_raw(raw: RawIpip, errors: &mut Errors) -> IpipConfig {
    let mut prefix = |path: &str, text: Option<String>, v6: bool| {
        let text = text?;
        let prefix = match text.parse::<SourcePrefix>() {
            Ok(prefix) => prefix,
            Err(err) => {
                errors.add(path, err);
                return None;
            }
        };
        let (family, min) = if v6 {
            ("IPv6", MIN_IPIP_SOURCE_LEN_V6)
        } else {
            ("IPv4", MIN_IPIP_SOURCE_LEN_V4)
        };
        if prefix.addr.is_ipv6() != v6 {
            errors.add(
                path,
                format!(
                    "{prefix} is an {} prefix; {path} takes an {family} one",
                    family_name(prefix.addr)
                ),
            );
            return None;
        }
        if prefix.len < min {
            errors.add(
                path,
                format!(
                    "{prefix} is too short: the outer sources would take addresses of other \
                     networks; at least /{min}"
                ),
            );
            return None;
        }
        Some(prefix)
    };
    IpipConfig {
        source_v4: prefix("ipip.source-v4", raw.source_v4, false),
        source_v6: prefix("ipip.source-v6", raw.source_v6, true),
    }
}

/// A VIP's config (with placeholders where there were errors) and the VIP if its address and
/// protocol are valid.
pub(super) fn vip_from_raw(
    raw: RawVip,
    prefix: &str,
    errors: &mut Errors,
) -> (Option<Vip>, VipConfig) {
    let addr_path = field(prefix, "address");
    let address = errors.socket_addr(&addr_path, &raw.address);
    if let Some(a) = address
        && crate::model::is_bad_vip_addr(a.ip())
    {
        errors.add(&addr_path, Error::BadVipAddress(a.ip()));
    }
    let protocol = raw
        .protocol
        .parse::<Proto>()
        .map_err(|err| errors.add(field(prefix, "protocol"), err))
        .ok();
    let vip = address.zip(protocol).map(|(a, proto)| Vip {
        addr: a.ip(),
        port: a.port(),
        proto,
    });
    let scheduler = match raw.scheduler {
        None => Some(Scheduler::default()),
        Some(name) => name
            .parse::<Scheduler>()
            .map_err(|err| errors.add(field(prefix, "scheduler"), err))
            .ok(),
    };
    let ring_path = field(prefix, "ring-size");
    let ring_size = match raw.ring_size {
        None => DEFAULT_RING_SIZE,
        Some(n) => errors
            .int(&ring_path, n, 0..=i64::from(u32::MAX))
            .unwrap_or(DEFAULT_RING_SIZE),
    };
    if scheduler.is_some_and(Scheduler::is_hashed) && !crate::model::is_good_ring_size(ring_size) {
        errors.add(&ring_path, Error::BadRingSize(ring_size));
    }
    let forwarding_path = field(prefix, "forwarding");
    let forwarding = match raw.forwarding {
        None => Forwarding::Nat,
        Some(name) => match name.parse::<Forwarding>() {
            Ok(mode) => mode,
            Err(err) => {
                errors.add(&forwarding_path, err);
                Forwarding::Nat
            }
        },
    };
    let health_prefix = inside(prefix, vip, "health");
    let health = health_from_raw(raw.health, &health_prefix, errors);
    for (name, argv) in [
        ("notify-up", &raw.notify_up),
        ("notify-down", &raw.notify_down),
    ] {
        if let Err(err) = super::check_notify(argv) {
            errors.add(inside(prefix, vip, name), err);
        }
    }
    if health.path == ProbePath::Vip && forwarding == Forwarding::Nat {
        errors.add(
            field(&health_prefix, "path"),
            format!(
                "\"vip\" probes through the dsr-l2 or ipip path; this VIP forwards by \
                 {forwarding}: use \"direct\""
            ),
        );
    }
    let sources = sources_from_raw(
        (raw.allow, raw.deny),
        (raw.source_rate_limit, raw.source_prefix_len),
        vip,
        prefix,
        errors,
    );

    let mut backends = Vec::with_capacity(raw.backend.len());
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (j, b) in raw.backend.into_iter().enumerate() {
        let path = inside(prefix, vip, &format!("backend[{j}]"));
        let vip_port = address.map(|a| a.port());
        let (valid, backend) = backend_from_raw(b, vip_port, &path, errors);
        if valid && let Some(a) = address {
            check_backend_of(a, &backend, &path, errors);
            if let Some(v) = vip
                && let Err(err) =
                    crate::model::check_backend_forwarding(&v, forwarding, backend.address)
            {
                errors.add(field(&path, "address"), err);
            }
        }
        if valid {
            if let Some(first) = seen.get(&backend.address) {
                errors.add(
                    field(&path, "address"),
                    format!(
                        "duplicate backend {}, first at backend[{first}]",
                        backend.address
                    ),
                );
            } else {
                seen.insert(backend.address, j);
            }
        }
        backends.push(backend);
    }
    let sorry = raw.sorry.as_deref().and_then(|text| {
        let at = inside(prefix, vip, "sorry");
        let Ok(addr) = text.parse::<SocketAddr>() else {
            errors.add(at, format!("{text:?} is not ADDR:PORT"));
            return None;
        };
        let own: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
        match vip.map(|v| super::check_sorry(&v, forwarding, addr, &own)) {
            Some(Err(err)) => {
                errors.add(at, err);
                None
            }
            _ => Some(addr),
        }
    });
    let autoscale = raw.autoscale.map(|a| {
        autoscale::from_raw(
            a,
            &inside(prefix, vip, "autoscale"),
            address,
            &backends,
            errors,
        )
    });

    let config = VipConfig {
        address: address.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        protocol: protocol.unwrap_or(Proto::Tcp),
        scheduler: scheduler.unwrap_or_default(),
        ring_size,
        allow: sources.allow,
        deny: sources.deny,
        source_rate_limit: sources.source_rate_limit,
        source_prefix_len: sources.source_prefix_len,
        forwarding,
        health,
        backends,
        autoscale,
        notify_up: raw.notify_up,
        notify_down: raw.notify_down,
        sorry,
    };
    (vip, config)
}

/// A VIP's `allow`, `deny`, `source-rate-limit` and `source-prefix-len`, checked against the
/// VIP (when its address is valid) by the balancer's own rules
/// ([`crate::model::check_sources`]); what is wrong is left out, with an error.
fn sources_from_raw(
    (allow, deny): (Vec<String>, Vec<String>),
    (rate, prefix_len): (Option<i64>, Option<i64>),
    vip: Option<Vip>,
    prefix: &str,
    errors: &mut Errors,
) -> VipOptions {
    let mut parse = |name: &str, list: Vec<String>| -> Vec<SourcePrefix> {
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.parse::<SourcePrefix>()
                    .map_err(|err| errors.add(format!("{}[{i}]", field(prefix, name)), err))
                    .ok()
            })
            .collect()
    };
    let mut options = VipOptions {
        allow: parse("allow", allow),
        deny: parse("deny", deny),
        ..VipOptions::default()
    };
    if let Some(n) = rate {
        options.source_rate_limit = errors
            .int(
                &field(prefix, "source-rate-limit"),
                n,
                0..=i64::from(u32::MAX),
            )
            .unwrap_or(0);
    }
    if let Some(n) = prefix_len {
        options.source_prefix_len = errors.int(&field(prefix, "source-prefix-len"), n, 0..=128);
    }
    if let Some(vip) = vip
        && let Err(err) = crate::model::check_sources(&vip, &options)
    {
        let name = match err {
            Error::BadSourcePrefixLen { .. } => "source-prefix-len",
            Error::TooManyPrefixes(_) => "allow",
            _ => "allow/deny",
        };
        errors.add(field(prefix, name), err);
    }
    options
}

/// Whether `backend` may belong to the VIP at `vip`, by the balancer's own rules
/// ([`crate::model::check_backend_addr`]).
pub(super) fn check_backend_of(
    vip: SocketAddr,
    backend: &BackendConfig,
    path: &str,
    errors: &mut Errors,
) {
    // The protocol plays no part in which addresses may be backends.
    let at = Vip {
        addr: vip.ip(),
        port: vip.port(),
        proto: Proto::Tcp,
    };
    match crate::model::check_backend_addr(&at, backend.address) {
        Ok(()) => {}
        Err(Error::FamilyMismatch { .. }) => {
            let (v, b) = (vip.ip(), backend.address.ip());
            errors.add(
                field(path, "address"),
                format!(
                    "{} is {} but the VIP is {}",
                    backend.address,
                    family_name(b),
                    family_name(v)
                ),
            );
        }
        Err(err) => errors.add(field(path, "address"), err),
    }
}

/// A backend's config, and whether its address is valid. An address without a port takes the
/// VIP's, `vip_port` (when the VIP's address is valid).
pub(super) fn backend_from_raw(
    raw: RawBackend,
    vip_port: Option<u16>,
    prefix: &str,
    errors: &mut Errors,
) -> (bool, BackendConfig) {
    let address = match vip_port {
        Some(port) => crate::model::parse_backend_addr(&raw.address, port)
            .map_err(|err| errors.add(field(prefix, "address"), err))
            .ok(),
        None => errors.socket_addr(&field(prefix, "address"), &raw.address),
    };
    let weight = match raw.weight {
        None => 1,
        Some(w) => errors
            .int(&field(prefix, "weight"), w, 0..=i64::from(MAX_WEIGHT))
            .unwrap_or(1),
    };
    let state = match raw.state {
        None => BackendState::Up,
        Some(s) => s
            .parse::<BackendState>()
            .map_err(|err| errors.add(field(prefix, "state"), err))
            .unwrap_or_default(),
    };
    let config = BackendConfig {
        address: address.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        weight,
        state,
    };
    (address.is_some(), config)
}

pub(super) fn health_from_raw(
    raw: Option<RawHealth>,
    prefix: &str,
    errors: &mut Errors,
) -> HealthCheck {
    let mut check = HealthCheck::default();
    let Some(raw) = raw else {
        return check;
    };
    let path = |name: &str| field(prefix, name);

    let before = errors.0.len();
    if let Some(d) = raw
        .interval
        .as_deref()
        .and_then(|t| errors.duration(&path("interval"), t))
    {
        check.interval = d;
    }
    if let Some(d) = raw
        .timeout
        .as_deref()
        .and_then(|t| errors.duration(&path("timeout"), t))
    {
        check.timeout = d;
    }
    // Compared only if both are valid.
    if errors.0.len() == before && check.timeout > check.interval {
        errors.add(
            path("timeout"),
            format!(
                "{} is longer than the interval ({})",
                format_duration(check.timeout),
                format_duration(check.interval)
            ),
        );
    }
    let counts = 1..=i64::from(MAX_RISE_FALL);
    if let Some(n) = raw
        .rise
        .and_then(|n| errors.int(&path("rise"), n, counts.clone()))
    {
        check.rise = n;
    }
    if let Some(n) = raw
        .fall
        .and_then(|n| errors.int(&path("fall"), n, counts.clone()))
    {
        check.fall = n;
    }
    if let Some(port) = raw.port {
        check.port = errors.int(&path("port"), port, 1..=i64::from(u16::MAX));
    }

    match raw.path.as_deref() {
        None | Some("direct") => {}
        Some("vip") => check.path = ProbePath::Vip,
        Some(other) => errors.add(
            path("path"),
            format!("unknown path {other:?}: expected direct or vip"),
        ),
    }

    let kind = raw.kind.as_deref().unwrap_or("none");
    if !matches!(kind, "none" | "tcp" | "http" | "https" | "udp" | "exec") {
        errors.add(
            path("kind"),
            format!("unknown kind {kind:?}: expected none, tcp, http, https, udp or exec"),
        );
        return check;
    }
    let only_for = [
        ("http", "http-method", raw.http_method.is_some()),
        ("http", "http-path", raw.http_path.is_some()),
        (
            "http",
            "http-expect-status",
            raw.http_expect_status.is_some(),
        ),
        ("udp", "udp-payload", raw.udp_payload.is_some()),
        ("udp", "udp-expect", raw.udp_expect.is_some()),
        ("exec", "exec-command", raw.exec_command.is_some()),
        ("https", "insecure", raw.insecure.is_some()),
        ("https", "tls-server-name", raw.tls_server_name.is_some()),
    ];
    for (owner, name, set) in only_for {
        // The http settings are https's too.
        if set && kind != owner && !(owner == "http" && kind == "https") {
            errors.add(
                path(name),
                format!("only allowed with kind {owner:?}, not {kind:?}"),
            );
        }
    }

    check.kind = match kind {
        "tcp" => CheckKind::Tcp,
        "http" | "https" => {
            let method = raw.http_method.unwrap_or_else(|| "GET".to_owned());
            if !is_http_method(&method) {
                errors.add(
                    path("http-method"),
                    format!("{method:?} is not an HTTP method"),
                );
            }
            let http_path = raw.http_path.unwrap_or_else(|| "/".to_owned());
            if !is_http_path(&http_path) {
                errors.add(
                    path("http-path"),
                    format!(
                        "{http_path:?} must start with \"/\" and have no spaces or control \
                         characters"
                    ),
                );
            }
            let expect_status = match raw.http_expect_status {
                None => 200,
                Some(s) => errors
                    .int(&path("http-expect-status"), s, 100..=599)
                    .unwrap_or(200),
            };
            if kind == "https" {
                if let Some(name) = &raw.tls_server_name
                    && tokio_rustls::rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
                {
                    errors.add(
                        path("tls-server-name"),
                        format!("{name:?} is not a DNS name or an address"),
                    );
                }
                CheckKind::Https {
                    method,
                    path: http_path,
                    expect_status,
                    insecure: raw.insecure.unwrap_or(false),
                    server_name: raw.tls_server_name,
                }
            } else {
                CheckKind::Http {
                    method,
                    path: http_path,
                    expect_status,
                }
            }
        }
        "udp" => {
            let payload = raw.udp_payload.unwrap_or_else(|| "ping".to_owned());
            if payload.is_empty() {
                errors.add(path("udp-payload"), "must not be empty");
            }
            CheckKind::Udp {
                payload: payload.into_bytes(),
                expect: raw.udp_expect.map(String::into_bytes),
            }
        }
        "exec" => {
            let argv = raw.exec_command.unwrap_or_default();
            if argv.first().is_none_or(String::is_empty) {
                errors.add(
                    path("exec-command"),
                    "kind \"exec\" needs a command: [\"/path/to/program\", \"arg\", ...]",
                );
            }
            CheckKind::Exec { argv }
        }
        _ => CheckKind::None,
    };
    check
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let conntrack = raw
            .conntrack
            .map(|c| conntrack_from_raw(c, &mut errors))
            .unwrap_or_default();
        if raw.vip.len() > MAX_VIPS as usize {
            errors.add("vip", format!("{} VIPs, at most {MAX_VIPS}", raw.vip.len()));
        }
        let backends: usize = raw.vip.iter().map(|v| v.backend.len()).sum();
        if backends > MAX_BACKENDS as usize {
            errors.add(
                "vip[*].backend",
                format!("{backends} backends in all, at most {MAX_BACKENDS}"),
            );
        }
        let mut vips = Vec::with_capacity(raw.vip.len());
        let mut seen: HashMap<Vip, usize> = HashMap::new();
        for (i, v) in raw.vip.into_iter().enumerate() {
            let prefix = format!("vip[{i}]");
            let (vip, config) = vip_from_raw(v, &prefix, &mut errors);
            if let Some(vip) = vip {
                if let Some(first) = seen.get(&vip) {
                    errors.add(
                        field(&prefix, "address"),
                        format!("duplicate VIP {vip}, first at vip[{first}]"),
                    );
                } else {
                    seen.insert(vip, i);
                }
            }
            vips.push(config);
        }
        let ipip = raw
            .ipip
            .map(|r| ipip_from_raw(r, &mut errors))
            .unwrap_or_default();
        let cluster = raw
            .cluster
            .map(|c| cluster::cluster_from_raw(c, &mut errors));
        let vip_addrs: Vec<IpAddr> = vips.iter().map(|v| v.address.ip()).collect();
        let bgp = raw
            .bgp
            .map(|b| cluster::bgp_from_raw(b, &vip_addrs, &mut errors));
        if cluster.is_some() || bgp.is_some() {
            for (i, v) in vips.iter().enumerate() {
                if !cluster::cluster_safe(v.scheduler) {
                    errors.add(
                        format!("vip[{i}] ({}/{}) scheduler", v.address, v.protocol),
                        format!(
                            "{} is not cluster-safe: with [cluster] or [bgp], use maglev or \
                             source-hash (the same backend for a flow on every gateway)",
                            v.scheduler
                        ),
                    );
                }
            }
        }
        errors.finish(Config {
            conntrack,
            ipip,
            cluster,
            bgp,
            vips,
        })
    }
}

impl TryFrom<RawConntrack> for ConntrackConfig {
    type Error = ConfigError;

    fn try_from(raw: RawConntrack) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let config = conntrack_from_raw(raw, &mut errors);
        errors.finish(config)
    }
}

impl TryFrom<RawVip> for VipConfig {
    type Error = ConfigError;

    fn try_from(raw: RawVip) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let (_, config) = vip_from_raw(raw, "", &mut errors);
        errors.finish(config)
    }
}

impl TryFrom<RawBackend> for BackendConfig {
    type Error = ConfigError;

    fn try_from(raw: RawBackend) -> Result<Self, ConfigError> {
        let mut errors = Errors::default();
        let (_, config) = backend_from_raw(raw, None, "", &mut errors);
        errors.finish(config)
    }
}
