//! Raw schema → runtime [`Config`]: every rule about what values mean.
//!
//! Problems are reported as a key path plus a message; `mod.rs` turns the path into a
//! line and column only when there is a problem, so validation itself never touches text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::Authority;
use ipnet::IpNet;

use super::locate::KeyPath;
use super::model::*;
use super::schema::*;

/// Longest duration accepted anywhere: far beyond any sane timeout, and small enough that
/// `Instant + duration` can never overflow downstream.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// The sid table is sized from `capacity`; this keeps a typo from reserving terabytes.
const MAX_SESSIONS: u64 = 100_000_000;

/// One thing wrong with a config.
#[derive(Debug)]
pub(crate) struct Problem {
    /// The key the message is about.
    pub key: KeyPath,
    pub message: String,
    /// Where to point instead of `key`, when `key` is absent from the file.
    pub at: Option<KeyPath>,
}

type R<T> = Result<T, Problem>;

fn bad<T>(key: &KeyPath, message: impl Into<String>) -> R<T> {
    Err(Problem {
        key: key.clone(),
        message: message.into(),
        at: None,
    })
}

pub(crate) fn validate(raw: RawConfig) -> R<Config> {
    let root = KeyPath::root();
    let listeners = listeners(raw.listeners, &root.key("listeners"))?;
    let admin = match raw.admin {
        None => None,
        Some(a) => Some(admin(a, &root.key("admin"), &listeners)?),
    };
    let trusted_proxies = raw
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, s)| cidr(s, &root.key("trusted_proxies").index(i)))
        .collect::<R<Vec<_>>>()?;
    let limits = limits(raw.limits.unwrap_or_default(), &root.key("limits"))?;
    let backends = backends(raw.backends, &root.key("backends"))?;
    no_server_is_a_listener(&listeners, &backends, &root.key("backends"))?;
    let routes = routes(raw.routes, &backends, &root.key("routes"))?;
    let shutdown_grace = match raw.shutdown_grace {
        None => DEFAULT_SHUTDOWN_GRACE,
        Some(spec) => duration(&spec, &root.key("shutdown_grace"))?,
    };
    let access_log = match raw.access_log {
        None => None,
        Some(a) => Some(access_log(a, &root.key("access_log"))?),
    };
    let registry = match raw.registry {
        None => None,
        Some(r) => Some(registry(r, &root.key("registry"))?),
    };
    Ok(Config {
        registry,
        access_log,
        warnings: Vec::new(),
        shutdown_grace,
        source: None,
        listeners,
        admin,
        trusted_proxies,
        limits,
        routes,
        backends,
    })
}

fn access_log(raw: RawAccessLog, path: &KeyPath) -> R<AccessLogConfig> {
    let file = match raw.path.as_deref().map(str::trim) {
        None | Some("stderr") => None,
        Some("") => return bad(&path.key("path"), "empty path: give a file, or stderr"),
        Some(p) => Some(PathBuf::from(p)),
    };
    let queue = match raw.queue {
        None => DEFAULT_ACCESS_QUEUE,
        Some(n @ 1..=1_000_000) => n as usize,
        Some(n) => {
            return bad(
                &path.key("queue"),
                format!("{n} is out of range: 1 to 1000000 lines (8192 is usual)"),
            )
        }
    };
    Ok(AccessLogConfig {
        path: file,
        format: match raw.format {
            RawAccessFormat::Plain => AccessFormat::Plain,
            RawAccessFormat::Json => AccessFormat::Json,
        },
        queue,
    })
}

fn registry(raw: RawRegistry, path: &KeyPath) -> R<RegistryConfig> {
    let redis = match (raw.redis, raw.cluster) {
        (Some(url), None) => {
            let url = url.trim();
            if let Err(why) = redis_url(url) {
                return bad(&path.key("redis"), why);
            }
            RedisAt::Node(url.to_owned())
        }
        (None, Some(nodes)) => {
            if nodes.is_empty() {
                return bad(&path.key("cluster"), "name at least one node of the cluster, e.g. [redis://10.0.0.1:7000, redis://10.0.0.2:7000]");
            }
            let mut urls = Vec::with_capacity(nodes.len());
            for (i, url) in nodes.iter().enumerate() {
                let url = url.trim();
                if let Err(why) = redis_url(url) {
                    return bad(&path.key("cluster").index(i), why);
                }
                if url.starts_with("redis+unix:") || url.starts_with("unix:") {
                    return bad(&path.key("cluster").index(i), "a cluster node is reached over TCP: redis://host:port");
                }
                urls.push(url.to_owned());
            }
            RedisAt::Cluster(urls)
        }
        (Some(_), Some(_)) => {
            return bad(&path.key("cluster"), "redis and cluster both say where Redis is: keep one (redis: one server, cluster: nodes of a Redis Cluster)")
        }
        (None, None) => {
            return bad(&path.key("redis"), "required key is missing: the registry's Redis URL, e.g. redis: redis://127.0.0.1:6379 (or cluster: [...] for a Redis Cluster)")
        }
    };
    let prefix = raw
        .prefix
        .unwrap_or_else(|| DEFAULT_REGISTRY_PREFIX.to_owned());
    // Printable, no spaces and no braces: the prefix starts every key, and a brace would
    // change the key's Redis Cluster hash tag.
    let printable = prefix
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if prefix.is_empty() || prefix.len() > 64 || !printable {
        return bad(
            &path.key("prefix"),
            format!("{prefix:?}: the prefix must be 1 to 64 printable ASCII characters, without spaces or braces (e.g. tether, or tether-eu)"),
        );
    }
    let within = |spec: Option<DurationSpec>, key: &str, default: Duration| -> R<Duration> {
        let d = match spec {
            None => return Ok(default),
            Some(spec) => duration(&spec, &path.key(key))?,
        };
        if d.is_zero() || d > Duration::from_secs(5) {
            return bad(
                &path.key(key),
                format!("{} is out of range: more than 0 and at most 5s (a request waits this long when Redis is slow)", humantime::format_duration(d)),
            );
        }
        Ok(d)
    };
    Ok(RegistryConfig {
        redis,
        prefix,
        lookup_timeout: within(raw.lookup_timeout, "lookup_timeout", DEFAULT_LOOKUP_TIMEOUT)?,
        write_timeout: within(
            raw.write_timeout,
            "write_timeout",
            DEFAULT_REGISTRY_WRITE_TIMEOUT,
        )?,
    })
}

/// Checks a Redis URL the way the client will read it, so a typo is a config error and
/// not a registry that never connects.
fn redis_url(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    let example = "e.g. redis://127.0.0.1:6379, redis://:password@redis.internal:6379/0 or redis+unix:///run/redis.sock";
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("redis" | "redis+unix" | "unix") => {}
        Some("rediss") => {
            return Err(format!(
                "rediss:// (TLS to Redis) is not supported yet; {example}"
            ))
        }
        _ => return Err(format!("{url:?} is not a Redis URL; {example}")),
    }
    match url.into_connection_info() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{url:?} is not a Redis URL ({e}); {example}")),
    }
}

fn listeners(raw: Vec<RawListener>, path: &KeyPath) -> R<Vec<ListenerConfig>> {
    if raw.is_empty() {
        return bad(
            path,
            "at least one listener is needed, e.g. - bind: \"0.0.0.0:8080\"",
        );
    }
    let mut out: Vec<ListenerConfig> = Vec::with_capacity(raw.len());
    for (i, l) in raw.into_iter().enumerate() {
        let p = path.index(i);
        let bind = bind_addr(&l.bind, &p.key("bind"))?;
        if let Some(j) = out.iter().position(|o| binds_clash(o.bind, bind)) {
            return bad(
                &p.key("bind"),
                format!("{bind} is already bound by listeners[{j}]; each listener needs its own address"),
            );
        }
        let tls = match l.tls {
            None => None,
            Some(t) => Some(tls(t, &p.key("tls"))?),
        };
        let redirect_https = match l.redirect_https {
            None => None,
            Some(_) if tls.is_some() => return bad(
                &p.key("redirect_https"),
                "a TLS listener cannot redirect to HTTPS; put redirect_https on a plain listener",
            ),
            Some(port @ 1..=65535) => Some(port as u16),
            Some(port) => {
                return bad(
                    &p.key("redirect_https"),
                    format!(
                        "port {port} is out of range 1-65535 (the port clients are redirected to)"
                    ),
                )
            }
        };
        if l.max_connections == Some(0) {
            return bad(
                &p.key("max_connections"),
                "0 would accept nothing; remove the key for no per-listener cap",
            );
        }
        out.push(ListenerConfig {
            bind,
            tls,
            redirect_https,
            max_connections: l.max_connections,
            proxy_protocol: l.proxy_protocol.map(|p| match p {
                RawProxyProtocol::V1 => ProxyProtocol::V1,
                RawProxyProtocol::V2 => ProxyProtocol::V2,
                RawProxyProtocol::Any => ProxyProtocol::Any,
            }),
        });
    }
    Ok(out)
}

/// Refuses a server that is one of tether's own listeners: every request sent there comes
/// back to tether, which sends it there again, some thousand times deep until descriptors
/// run out — while `check` had said the file was fine.
///
/// Only what is certain is refused: a server written as the listener's own address, or as
/// a loopback or unspecified address on the port of a listener bound to every interface
/// (`[::]` is taken as dual-stack, the Linux default). A host name is not resolved here.
fn no_server_is_a_listener(
    listeners: &[ListenerConfig],
    backends: &[BackendConfig],
    path: &KeyPath,
) -> R<()> {
    for b in backends {
        for (i, s) in b.servers.iter().enumerate() {
            let host = s.addr.host().trim_start_matches('[').trim_end_matches(']');
            let (Ok(ip), Some(port)) = (host.parse::<std::net::IpAddr>(), s.addr.port_u16()) else {
                continue;
            };
            let local = ip.is_loopback() || ip.is_unspecified();
            let reaches = |l: &&ListenerConfig| {
                let bind = l.bind;
                bind.port() == port
                    && (bind.ip() == ip
                        || (local
                            && bind.ip().is_unspecified()
                            && (bind.is_ipv6() || ip.is_ipv4())))
            };
            if let Some(j) = listeners.iter().position(|l| reaches(&l)) {
                return bad(
                    &path.key(&b.name).key("servers").index(i).key("addr"),
                    format!(
                        "{} is tether's own listeners[{j}] (bind {}): requests would loop back into tether; give the address of a Socket.IO server",
                        s.addr, listeners[j].bind
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Two sockets that the kernel would refuse to bind together. Port 0 never clashes: each
/// gets its own free port.
fn binds_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn tls(raw: RawTls, path: &KeyPath) -> R<TlsConfig> {
    let p = path.key("certificates");
    if raw.certificates.is_empty() {
        return bad(&p, "tls needs at least one { cert: FILE, key: FILE } pair");
    }
    let mut certificates = Vec::with_capacity(raw.certificates.len());
    for (i, c) in raw.certificates.into_iter().enumerate() {
        for (name, value) in [("cert", &c.cert), ("key", &c.key)] {
            if value.trim().is_empty() {
                return bad(&p.index(i).key(name), "empty path; give a PEM file");
            }
        }
        if c.default && certificates.iter().any(|p: &CertPair| p.default) {
            return bad(
                &p.index(i).key("default"),
                "only one certificate of a listener can be the default",
            );
        }
        certificates.push(CertPair {
            cert: PathBuf::from(c.cert),
            key: PathBuf::from(c.key),
            default: c.default,
        });
    }
    let hsts = match raw.hsts {
        None => None,
        Some(h) => Some(Hsts {
            max_age: match h.max_age {
                None => Duration::from_secs(365 * 24 * 3600),
                Some(spec) => duration(&spec, &path.key("hsts").key("max_age"))?,
            },
            include_subdomains: h.include_subdomains,
            preload: h.preload,
        }),
    };
    Ok(TlsConfig { certificates, hsts })
}

/// The shortest admin token accepted, in bytes (the cookie secret's minimum too).
const MIN_ADMIN_TOKEN: usize = 16;

fn admin(mut raw: RawAdmin, path: &KeyPath, listeners: &[ListenerConfig]) -> R<AdminConfig> {
    let bind = bind_addr(&raw.bind, &path.key("bind"))?;
    if let Some(var) = raw.token_env.take() {
        if raw.token.is_some() {
            return bad(
                &path.key("token_env"),
                "token and token_env both name the token: keep one",
            );
        }
        match std::env::var(&var) {
            Ok(t) => raw.token = Some(t.trim_end().to_owned()),
            Err(_) => {
                return bad(
                    &path.key("token_env"),
                    format!("the environment variable {var} is not set (or not UTF-8); it must hold the admin token"),
                )
            }
        }
    }
    if let Some(j) = listeners.iter().position(|l| binds_clash(l.bind, bind)) {
        return bad(
            &path.key("bind"),
            format!("{bind} is already bound by listeners[{j}]"),
        );
    }
    if let Some(t) = &raw.token {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return bad(
                &path.key("token"),
                "the token must be non-empty printable ASCII without spaces (it travels in an Authorization header); remove the key for no token",
            );
        }
        // As for cookie secrets: a short token is guessed by a script that tries them.
        if t.len() < MIN_ADMIN_TOKEN {
            return bad(
                &path.key("token"),
                format!("the token is {} bytes; at least {MIN_ADMIN_TOKEN} are needed (e.g. the output of `openssl rand -hex 32`)", t.len()),
            );
        }
    }
    if raw.token.is_none() && !bind.ip().is_loopback() {
        return bad(
            &path.key("bind"),
            format!("{bind} is reachable from other hosts, and the admin API can drain servers, put them in maintenance (ending their sessions) and reload the config: set admin.token (then every request needs Authorization: Bearer <token>), or bind a loopback address such as 127.0.0.1:{}", bind.port()),
        );
    }
    let mut hosts = Vec::with_capacity(raw.hosts.len());
    for (i, h) in raw.hosts.iter().enumerate() {
        let name = h.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty()
            || name.contains(':')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return bad(
                &path.key("hosts").index(i),
                format!("{h:?} is not a host name (no port, no scheme), e.g. admin.example.com"),
            );
        }
        hosts.push(name);
    }
    Ok(AdminConfig {
        bind,
        token: raw.token,
        hosts,
    })
}

fn bind_addr(s: &str, path: &KeyPath) -> R<SocketAddr> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let err = |why: String| bad(path, format!("invalid address {s:?}: {why}"));
    let (host, port) = match host_port(s) {
        Ok(parts) => parts,
        Err(why) => return err(why.say(EXAMPLE_BIND)),
    };
    if port > u64::from(u16::MAX) {
        return err(format!(
            "port {port} is out of range: 1-65535, or 0 for any free port"
        ));
    }
    err(format!(
        "{host:?} is not an IP address; binds take one, host names are not resolved (0.0.0.0 or [::] for every interface, 127.0.0.1 for this host only)"
    ))
}

const EXAMPLE_BIND: &str =
    "ip:port such as 0.0.0.0:8080 or \"[::]:8080\" (IPv6 in brackets, quoted)";
const EXAMPLE_ADDR: &str =
    "host:port such as 127.0.0.1:3001, node-1.internal:3000 or \"[::1]:3001\" (IPv6 in brackets, quoted)";

/// Why a `host:port` is not one, said against an example of what is expected.
enum NotHostPort {
    Empty,
    Scheme,
    NoPort,
    BadPort(String),
    /// An IPv6 address without brackets, and what was probably meant.
    Unbracketed(String),
}

impl NotHostPort {
    fn say(&self, example: &str) -> String {
        match self {
            NotHostPort::Empty => format!("empty; expected {example}"),
            NotHostPort::Scheme => format!("expected {example}, without a scheme"),
            NotHostPort::NoPort => format!("the port is missing; expected {example}"),
            NotHostPort::BadPort(p) => format!("{p:?} is not a port number; expected {example}"),
            NotHostPort::Unbracketed(meant) => {
                format!("an IPv6 address takes brackets and a port after them, e.g. {meant}")
            }
        }
    }
}

/// Splits `host:port` (`[v6]:port` too) and reads the port as a number of any size, so
/// that an out-of-range port is told apart from a missing or malformed one.
fn host_port(s: &str) -> Result<(&str, u64), NotHostPort> {
    if s.trim().is_empty() {
        return Err(NotHostPort::Empty);
    }
    if s.contains("://") {
        return Err(NotHostPort::Scheme);
    }
    if s.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(NotHostPort::NoPort);
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        // `::1:8080` is itself an IPv6 address: the brackets are what is missing.
        let meant = match s.rsplit_once(':') {
            Some((ip, port)) if ip.parse::<std::net::Ipv6Addr>().is_ok() && !port.is_empty() => {
                format!("[{ip}]:{port}")
            }
            _ => format!("[{s}]:PORT"),
        };
        return Err(NotHostPort::Unbracketed(meant));
    }
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((_, after)) => match after.strip_prefix(':') {
                Some(port) => (&s[..s.len() - port.len() - 1], port),
                None if after.is_empty() => return Err(NotHostPort::NoPort),
                None => return Err(NotHostPort::BadPort(after.to_owned())),
            },
            None => return Err(NotHostPort::NoPort),
        },
        None => s.rsplit_once(':').ok_or(NotHostPort::NoPort)?,
    };
    if port.is_empty() {
        return Err(NotHostPort::NoPort);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NotHostPort::BadPort(port.to_owned()));
    }
    // Saturates: a port of twenty digits is as out of range as 65536.
    let n = port.parse().unwrap_or(u64::MAX);
    Ok((host, n))
}

/// A bare IP means just that host; a CIDR with host bits set is taken as its network.
fn cidr(s: &str, path: &KeyPath) -> R<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Some((ip, len)) = s.split_once('/') {
        let max = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => 32,
            Ok(std::net::IpAddr::V6(_)) => 128,
            Err(_) => 0,
        };
        let digits = !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit());
        if max > 0 && digits && len.parse::<u64>().map_or(true, |n| n > max) {
            return bad(
                path,
                format!("invalid CIDR {s:?}: the prefix length /{len} is out of range 0-{max}"),
            );
        }
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => bad(
            path,
            format!("invalid CIDR {s:?}: expected an IP (10.0.0.1, ::1) or a network (10.0.0.0/8, fd00::/8)"),
        ),
    }
}

fn limits(raw: RawLimits, path: &KeyPath) -> R<Limits> {
    let d = Limits::default();
    let max_header_bytes = match raw.max_header_bytes {
        None => d.max_header_bytes,
        Some(n @ 1024..=1_048_576) => n as usize,
        Some(n) => {
            return bad(
                &path.key("max_header_bytes"),
                format!("{n} is out of range 1024..=1048576"),
            )
        }
    };
    let header_read_timeout = positive(
        raw.header_read_timeout,
        d.header_read_timeout,
        &path.key("header_read_timeout"),
    )?;
    let idle_timeout = positive(raw.idle_timeout, d.idle_timeout, &path.key("idle_timeout"))?;
    let body_read_timeout = positive(
        raw.body_read_timeout,
        d.body_read_timeout,
        &path.key("body_read_timeout"),
    )?;
    let h2_max_streams = match raw.h2_max_streams {
        None => d.h2_max_streams,
        Some(n @ 1..=10_000) => n as u32,
        Some(n) => {
            return bad(
                &path.key("h2_max_streams"),
                format!("{n} is out of range 1..=10000"),
            )
        }
    };
    let max_payload = match raw.max_payload {
        None => d.max_payload,
        Some(n @ 1024..=1_073_741_824) => n,
        Some(n) => {
            return bad(
                &path.key("max_payload"),
                format!("{n} bytes is out of range 1024..=1073741824"),
            )
        }
    };
    if raw.max_connections == Some(0) {
        return bad(
            &path.key("max_connections"),
            "0 would accept nothing; remove the key to derive it from the open-file limit",
        );
    }
    let per_client = client_limits(raw.per_client.unwrap_or_default(), &path.key("per_client"))?;
    Ok(Limits {
        max_header_bytes,
        header_read_timeout,
        idle_timeout,
        h2_max_streams,
        body_read_timeout,
        max_payload,
        max_connections: raw.max_connections,
        per_client,
    })
}

fn client_limits(raw: RawClientLimits, path: &KeyPath) -> R<ClientLimits> {
    let d = ClientLimits::default();
    let connections = match raw.connections {
        None => d.connections,
        Some(n @ 1..=1_000_000) => n as u32,
        Some(n) => {
            return bad(
                &path.key("connections"),
                format!("{n} is out of range 1..=1000000"),
            )
        }
    };
    let rate = |raw: Option<RawRate>, default: Rate, key: &str| -> R<Rate> {
        raw.map_or(Ok(default), |r| rate(r, &path.key(key)))
    };
    let nets = |list: &[String], key: &str| -> R<Vec<IpNet>> {
        list.iter()
            .enumerate()
            .map(|(i, s)| cidr(s, &path.key(key).index(i)))
            .collect()
    };
    Ok(ClientLimits {
        connections,
        handshakes: rate(raw.handshakes, d.handshakes, "handshakes")?,
        requests: rate(raw.requests, d.requests, "requests")?,
        allow: nets(&raw.allow, "allow")?,
        deny: nets(&raw.deny, "deny")?,
    })
}

/// A token bucket's `{ per_second, burst }`: a finite rate above 0, a burst of at least 1.
fn rate(r: RawRate, path: &KeyPath) -> R<Rate> {
    if !(r.per_second.is_finite() && r.per_second > 0.0 && r.per_second <= 1e9) {
        return bad(
            &path.key("per_second"),
            format!("{} is not a rate above 0 (tokens per second)", r.per_second),
        );
    }
    if !(1..=1_000_000_000).contains(&r.burst) {
        return bad(
            &path.key("burst"),
            format!("{} is out of range 1..=1000000000", r.burst),
        );
    }
    Ok(Rate {
        per_second: r.per_second,
        burst: r.burst as u32,
    })
}

fn routes(
    raw: Option<Vec<RawRoute>>,
    backends: &[BackendConfig],
    path: &KeyPath,
) -> R<Vec<RouteConfig>> {
    let Some(raw) = raw else {
        if let [_] = backends {
            return Ok(vec![RouteConfig {
                host: None,
                path_prefix: "/".to_owned(),
                backend: Some(0),
            }]);
        }
        let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        return Err(Problem {
            key: path.clone(),
            message: format!(
                "missing: with {} backends ({}) tether cannot guess which one a request goes to; add routes, e.g. - {{ path_prefix: \"/\", backend: {} }}",
                names.len(),
                names.join(", "),
                names.first().unwrap_or(&"NAME"),
            ),
            at: Some(KeyPath::root().key("backends")),
        });
    };
    if raw.is_empty() {
        return bad(path, "empty: no request could be routed; list at least one route (or, with one backend, remove the key)");
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let p = path.index(i);
        let backend = match (r.backend, r.deny) {
            (Some(_), true) => {
                return bad(
                    &p.key("deny"),
                    "a deny rule refuses the requests it matches: it has no backend; remove one of the two",
                )
            }
            (None, false) => {
                return bad(
                    &p,
                    "a route needs a backend (or deny: true to refuse what it matches)",
                )
            }
            (None, true) => None,
            (Some(name), false) => match backends.iter().position(|b| b.name == name) {
                Some(i) => Some(i),
                None => {
                    let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
                    return bad(
                        &p.key("backend"),
                        format!(
                            "unknown backend `{name}`; defined backends: {}",
                            names.join(", ")
                        ),
                    );
                }
            },
        };
        if !r.path_prefix.starts_with('/')
            || r.path_prefix
                .contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
        {
            return bad(
                &p.key("path_prefix"),
                format!("invalid path prefix {:?}: it must start with \"/\" and hold no spaces, '?' or '#'", r.path_prefix),
            );
        }
        let host = match r.host {
            None => None,
            Some(h) => Some(host_match(&h, &p.key("host"))?),
        };
        out.push(RouteConfig {
            host,
            path_prefix: r.path_prefix,
            backend,
        });
    }
    Ok(out)
}

fn host_match(h: &str, path: &KeyPath) -> R<HostMatch> {
    let lower = h.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let is_ipv6 = name.starts_with('[')
        && name.ends_with(']')
        && name[1..name.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    let is_name = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !(is_name || (is_ipv6 && !suffix)) {
        return bad(
            path,
            format!("invalid host {h:?}: expected a name such as example.com or *.example.com, without port or scheme; omit host to match any"),
        );
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_owned())
    })
}

fn backends(raw: Backends, path: &KeyPath) -> R<Vec<BackendConfig>> {
    if raw.0.is_empty() {
        return bad(path, "at least one backend is needed");
    }
    raw.0
        .into_iter()
        .map(|(name, b)| {
            let p = path.key(&name);
            if !is_ident(&name) {
                return bad(&p, format!("invalid backend name {name:?}: use letters, digits, '.', '_' or '-' (it appears in admin URLs and metrics)"));
            }
            backend(name, b, &p)
        })
        .collect()
}

fn backend(name: String, raw: RawBackend, path: &KeyPath) -> R<BackendConfig> {
    let discover = match raw.discover {
        None => None,
        Some(d) => Some(discover(d, &path.key("discover"))?),
    };
    let servers = servers(raw.servers, discover.is_some(), &path.key("servers"))?;
    let lf = raw.load_factor;
    // Written so that NaN fails too.
    if !(lf > 1.0 && lf <= 10.0) {
        return bad(
            &path.key("load_factor"),
            format!("{lf} is out of range: it must be > 1.0 and <= 10 (1.25 is usual)"),
        );
    }
    let hash_key = hash_key(raw.hash_key, &path.key("hash_key"))?;
    let cookie = match raw.cookie {
        None => None,
        Some(c) => Some(cookie(c, &path.key("cookie"))?),
    };
    let sessions = sessions(raw.sessions.unwrap_or_default(), &path.key("sessions"))?;
    let timeouts = timeouts(raw.timeouts.unwrap_or_default(), &path.key("timeouts"))?;
    let health = match raw.health {
        None => None,
        Some(h) => Some(health(h, &path.key("health"))?),
    };
    let max_connections = max_connections(raw.max_connections, &path.key("max_connections"))?;
    let handshakes = match raw.handshakes {
        None => None,
        Some(r) => Some(rate(r, &path.key("handshakes"))?),
    };
    let slow_start = match raw.slow_start {
        None => None,
        Some(spec) => Some(positive(
            Some(spec),
            Duration::ZERO,
            &path.key("slow_start"),
        )?),
    };
    let migrate_rate = match raw.migrate_rate {
        None => DEFAULT_MIGRATE_RATE,
        Some(r) if migrate_rate_in_range(r) => r,
        Some(r) => {
            return bad(
                &path.key("migrate_rate"),
                format!("{r} is out of range: sessions per second, more than 0 and at most 100000 (50 is usual)"),
            )
        }
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => {
            if let Some(ca) = &t.ca {
                if ca.trim().is_empty() {
                    return bad(
                        &path.key("tls").key("ca"),
                        "empty path; give a PEM CA bundle or remove the key",
                    );
                }
            }
            if let Some(name) = &t.server_name {
                if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                    return bad(
                        &path.key("tls").key("server_name"),
                        format!("{name:?} is not a DNS name or IP address"),
                    );
                }
            }
            Some(UpstreamTls {
                ca: t.ca.map(PathBuf::from),
                server_name: t.server_name,
            })
        }
    };
    let proxy_protocol = match raw.proxy_protocol {
        None => None,
        Some(RawProxyProtocol::V1) => Some(SendProxy::V1),
        Some(RawProxyProtocol::V2) => Some(SendProxy::V2),
        Some(RawProxyProtocol::Any) => return bad(
            &path.key("proxy_protocol"),
            "`any` is what a listener accepts; towards servers say which header to send: v1 or v2",
        ),
    };
    Ok(BackendConfig {
        tls,
        proxy_protocol,
        health,
        max_connections,
        handshakes,
        slow_start,
        migrate_rate,
        discover,
        name,
        servers,
        balance: match raw.balance {
            RawBalance::Sticky => Balance::Sticky,
            RawBalance::RoundRobin => Balance::RoundRobin,
        },
        placement: match raw.placement {
            RawPlacement::LeastSessions => Placement::LeastSessions,
            RawPlacement::Hash => Placement::Hash,
        },
        hash_key,
        load_factor: lf,
        cookie,
        sessions,
        timeouts,
    })
}

fn servers(raw: Vec<RawServer>, discovered: bool, path: &KeyPath) -> R<Vec<ServerConfig>> {
    if raw.is_empty() && !discovered {
        return bad(
            path,
            "at least one server is needed, e.g. - { id: node-1, addr: \"127.0.0.1:3001\" }",
        );
    }
    let mut out: Vec<ServerConfig> = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let p = path.index(i);
        if !is_ident(&s.id) {
            return bad(
                &p.key("id"),
                format!(
                    "invalid server id {:?}: use letters, digits, '.', '_' or '-'",
                    s.id
                ),
            );
        }
        if let Some(j) = out.iter().position(|o| o.id == s.id) {
            return bad(&p.key("id"), format!("duplicate server id `{}` (also servers[{j}]); ids must be unique within a backend", s.id));
        }
        let addr = authority(&s.addr, &p.key("addr"))?;
        if !(1..=1000).contains(&s.weight) {
            return bad(
                &p.key("weight"),
                format!("{} is out of range 1..=1000", s.weight),
            );
        }
        out.push(ServerConfig {
            id: s.id,
            addr,
            weight: s.weight as u32,
            state: match s.state {
                RawServerState::Ready => ServerState::Ready,
                RawServerState::Draining => ServerState::Draining,
                RawServerState::Maint => ServerState::Maint,
            },
            max_connections: max_connections(s.max_connections, &p.key("max_connections"))?,
            sid_prefix: sid_prefix(s.sid_prefix, &out, &p.key("sid_prefix"))?,
        });
    }
    Ok(out)
}

/// A server's `sid_prefix`: non-empty, only characters a sid may carry, and neither a
/// prefix of another server's prefix nor extended by one (a sid would name both).
fn sid_prefix(raw: Option<String>, earlier: &[ServerConfig], path: &KeyPath) -> R<Option<String>> {
    let Some(prefix) = raw else {
        return Ok(None);
    };
    if prefix.is_empty() {
        return bad(path, "empty sid_prefix: give the text every sid of this server starts with, e.g. \"n1-\", or leave it out");
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
    {
        return bad(
            path,
            format!("invalid sid_prefix {prefix:?}: {c:?} cannot appear in a sid; use letters, digits, '-', '_', '.' or '~'"),
        );
    }
    for (j, o) in earlier.iter().enumerate() {
        let Some(other) = o.sid_prefix.as_deref() else {
            continue;
        };
        if other.starts_with(&prefix) || prefix.starts_with(other) {
            let why = if other == prefix {
                "is also".to_owned()
            } else {
                format!("overlaps {other:?} of")
            };
            return bad(
                path,
                format!("sid_prefix {prefix:?} {why} servers[{j}] (`{}`): a sid must name one server, so no prefix may start another", o.id),
            );
        }
    }
    Ok(Some(prefix))
}

fn authority(s: &str, path: &KeyPath) -> R<Authority> {
    let err = |why: String| bad(path, format!("invalid address {s:?}: {why}"));
    let (host, port) = match host_port(s) {
        Ok(parts) => parts,
        Err(why) => return err(why.say(EXAMPLE_ADDR)),
    };
    match port {
        0 => return err("port 0 cannot be connected to; give the server's port".to_owned()),
        65536.. => return err(format!("port {port} is out of range 1-65535")),
        _ => {}
    }
    match s.parse::<Authority>() {
        Ok(a) if !s.contains('@') && !a.host().is_empty() && a.port_u16().is_some() => Ok(a),
        _ if host.is_empty() => err(format!("the host is missing; expected {EXAMPLE_ADDR}")),
        _ => err(format!(
            "{host:?} is not a host name or IP address; expected {EXAMPLE_ADDR}"
        )),
    }
}

fn hash_key(raw: RawHashKey, path: &KeyPath) -> R<HashKey> {
    Ok(match raw {
        RawHashKey::ClientIp => HashKey::ClientIp,
        RawHashKey::Header(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => HashKey::Header(name),
            Err(_) => return bad(&path.key("header"), format!("invalid header name {h:?}")),
        },
        RawHashKey::Query(q) if !q.is_empty() => HashKey::Query(q),
        RawHashKey::Query(_) => return bad(&path.key("query"), "empty query parameter name"),
        RawHashKey::Cookie(c) if is_token(&c) => HashKey::Cookie(c),
        RawHashKey::Cookie(c) => {
            return bad(&path.key("cookie"), format!("invalid cookie name {c:?}"))
        }
    })
}

fn cookie(raw: RawCookie, path: &KeyPath) -> R<CookieConfig> {
    if !is_token(&raw.name) {
        return bad(
            &path.key("name"),
            format!(
                "invalid cookie name {:?}: use letters, digits and !#$%&'*+-.^_`|~",
                raw.name
            ),
        );
    }
    if raw.secret.len() < 16 {
        return bad(
            &path.key("secret"),
            format!("the secret is {} bytes; at least 16 are needed to sign cookies (e.g. the output of `openssl rand -hex 32`)", raw.secret.len()),
        );
    }
    let same_site = match raw.same_site {
        RawSameSite::Lax => SameSite::Lax,
        RawSameSite::Strict => SameSite::Strict,
        RawSameSite::None => SameSite::None,
    };
    if same_site == SameSite::None && !raw.secure {
        return bad(
            &path.key("same_site"),
            "same_site: none needs secure: true (browsers drop such cookies otherwise)",
        );
    }
    let max_age = match raw.max_age {
        None => None,
        Some(spec) => Some(positive(Some(spec), Duration::ZERO, &path.key("max_age"))?),
    };
    Ok(CookieConfig {
        name: raw.name,
        secret: raw.secret.into_bytes(),
        secure: raw.secure,
        same_site,
        max_age,
    })
}

fn sessions(raw: RawSessions, path: &KeyPath) -> R<SessionConfig> {
    let d = SessionConfig::default();
    let capacity = match raw.capacity {
        None => d.capacity,
        // 0: no table; sessions stay by cookie or by their servers' `sid_prefix`.
        Some(n @ 0..=MAX_SESSIONS) => n as usize,
        Some(n) => {
            return bad(
                &path.key("capacity"),
                format!("{n} is out of range 0..={MAX_SESSIONS}"),
            )
        }
    };
    let idle_margin = match raw.idle_margin {
        None => d.idle_margin,
        Some(spec) => duration(&spec, &path.key("idle_margin"))?,
    };
    Ok(SessionConfig {
        capacity,
        idle_margin,
    })
}

fn timeouts(raw: RawTimeouts, path: &KeyPath) -> R<Timeouts> {
    let d = Timeouts::default();
    let tunnel_idle = match raw.tunnel_idle {
        Some(DurationSpec::Text(t)) if t == "auto" => None,
        None => d.tunnel_idle,
        spec => Some(positive(spec, Duration::ZERO, &path.key("tunnel_idle"))?),
    };
    Ok(Timeouts {
        connect: positive(raw.connect, d.connect, &path.key("connect"))?,
        response: positive(raw.response, d.response, &path.key("response"))?,
        tunnel_idle,
    })
}

fn health(raw: RawHealth, path: &KeyPath) -> R<HealthConfig> {
    if !raw.path.starts_with('/') || raw.path.contains(|c: char| c.is_whitespace()) {
        return bad(
            &path.key("path"),
            format!(
                "invalid path {:?}: it must start with \"/\" and hold no spaces",
                raw.path
            ),
        );
    }
    if !(100..=599).contains(&raw.expect_status) {
        return bad(
            &path.key("expect_status"),
            format!("{} is not an HTTP status (100..=599)", raw.expect_status),
        );
    }
    let interval = positive(
        raw.interval,
        defaults::HEALTH_INTERVAL,
        &path.key("interval"),
    )?;
    let timeout = positive(raw.timeout, defaults::HEALTH_TIMEOUT, &path.key("timeout"))?;
    for (name, n) in [("rise", raw.rise), ("fall", raw.fall)] {
        if !(1..=1000).contains(&n) {
            return bad(&path.key(name), format!("{n} is out of range 1..=1000"));
        }
    }
    Ok(HealthConfig {
        mode: match raw.mode {
            RawHealthMode::Http => HealthMode::Http {
                path: raw.path,
                expect_status: raw.expect_status as u16,
            },
            RawHealthMode::Tcp => HealthMode::Tcp,
        },
        interval,
        timeout,
        rise: raw.rise as u32,
        fall: raw.fall as u32,
    })
}

fn max_connections(raw: Option<u64>, path: &KeyPath) -> R<Option<u64>> {
    match raw {
        Some(0) => bad(
            path,
            "0 would refuse every session; remove the key for no limit",
        ),
        other => Ok(other),
    }
}

fn discover(raw: RawDiscover, path: &KeyPath) -> R<DiscoverConfig> {
    let dns = authority(&raw.dns, &path.key("dns"))?;
    let interval = positive(
        raw.interval,
        defaults::DISCOVER_INTERVAL,
        &path.key("interval"),
    )?;
    Ok(DiscoverConfig { dns, interval })
}

/// A duration that must be non-zero, `default` when absent.
fn positive(spec: Option<DurationSpec>, default: Duration, path: &KeyPath) -> R<Duration> {
    let Some(spec) = spec else { return Ok(default) };
    let d = duration(&spec, path)?;
    if d.is_zero() {
        return bad(path, "must be greater than 0");
    }
    Ok(d)
}

fn duration(spec: &DurationSpec, path: &KeyPath) -> R<Duration> {
    let d = match spec {
        DurationSpec::Seconds(n) => Duration::from_secs(*n),
        DurationSpec::Text(t) => match super::duration::parse(t) {
            Ok(d) => d,
            Err(why) => return bad(path, format!("invalid duration {t:?}: {why}")),
        },
    };
    if d > MAX_DURATION {
        return bad(
            path,
            format!(
                "{} is too long; at most 366 days",
                humantime::format_duration(d)
            ),
        );
    }
    Ok(d)
}

/// Names that appear in admin URLs, metric labels and cookies: no escaping ever needed.
fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// RFC 6265 cookie-name: an RFC 7230 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> KeyPath {
        KeyPath::root().key("x")
    }

    fn servers_yaml(extra: &str, servers: &[&str]) -> String {
        let mut y =
            format!("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n{extra}    servers:\n");
        for (i, s) in servers.iter().enumerate() {
            y.push_str(&format!(
                "      - {{ id: s{i}, addr: \"127.0.0.1:{}\"{s} }}\n",
                i + 1
            ));
        }
        y
    }

    fn load(yaml: &str) -> Result<Config, String> {
        crate::config::parse(yaml, std::path::Path::new("<t>")).map_err(|e| e.to_string())
    }

    #[test]
    fn sid_prefixes_are_sid_text_and_name_one_server() {
        let ok = load(&servers_yaml(
            "",
            &[", sid_prefix: \"n1-\"", ", sid_prefix: n2.", ""],
        ))
        .unwrap();
        let prefixes: Vec<_> = ok.backends[0]
            .servers
            .iter()
            .map(|s| s.sid_prefix.clone())
            .collect();
        assert_eq!(prefixes, [Some("n1-".into()), Some("n2.".into()), None]);
        for (servers, says) in [
            (&[", sid_prefix: \"\""][..], "empty sid_prefix"),
            (&[", sid_prefix: \"n/1\""], "'/' cannot appear in a sid"),
            (&[", sid_prefix: \"n 1\""], "' ' cannot appear in a sid"),
            (
                &[", sid_prefix: a", ", sid_prefix: a"],
                "\"a\" is also servers[0] (`s0`)",
            ),
            (
                &[", sid_prefix: ab", ", sid_prefix: a"],
                "\"a\" overlaps \"ab\" of servers[0]",
            ),
            (
                &[", sid_prefix: a", ", sid_prefix: ab"],
                "\"ab\" overlaps \"a\" of servers[0]",
            ),
        ] {
            let err = load(&servers_yaml("", servers)).unwrap_err();
            assert!(
                err.contains("sid_prefix") && err.contains(says),
                "{servers:?}: {err}"
            );
        }
        // Two backends may share a prefix: a sid is looked up in its route's backend only.
        let two = format!(
            "{}  c:\n    servers:\n      - {{ id: x, addr: \"127.0.0.1:9\", sid_prefix: a }}\nroutes:\n  - {{ path_prefix: /, backend: b }}\n",
            servers_yaml("", &[", sid_prefix: a"])
        );
        load(&two).unwrap();
    }

    #[test]
    fn a_registry_needs_a_redis_url_tether_can_use() {
        let with = |r: &str| load(&format!("{}registry:\n{r}", servers_yaml("", &[""])));
        let c = with("  redis: redis://127.0.0.1:6379/2\n").unwrap();
        let r = c.registry.unwrap();
        assert_eq!(r.prefix, "tether");
        assert_eq!(r.lookup_timeout, DEFAULT_LOOKUP_TIMEOUT);
        let c =
            with("  redis: redis+unix:///run/redis.sock\n  prefix: eu-1\n  lookup_timeout: 20ms\n")
                .unwrap();
        assert_eq!(
            c.registry.unwrap().lookup_timeout,
            Duration::from_millis(20)
        );
        for (bad, says) in [
            ("  redis: 127.0.0.1:6379\n", "is not a Redis URL"),
            ("  redis: http://127.0.0.1:6379\n", "is not a Redis URL"),
            (
                "  redis: \"redis://127.0.0.1:port\"\n",
                "is not a Redis URL (",
            ),
            ("  redis: \"redis://[::1\"\n", "is not a Redis URL ("),
            ("  redis: rediss://r:6380\n", "not supported yet"),
            ("  redis: \"\"\n", "is not a Redis URL"),
            (
                "  redis: redis://r\n  prefix: \"a{b}\"\n",
                "registry.prefix",
            ),
            (
                "  redis: redis://r\n  lookup_timeout: 0s\n",
                "registry.lookup_timeout",
            ),
            (
                "  redis: redis://r\n  write_timeout: 1m\n",
                "registry.write_timeout",
            ),
            ("  prefix: x\n", "registry.redis: required key is missing"),
            ("  redis: redis://a\n  cluster: [redis://b]\n", "keep one"),
            (
                "  cluster: []\n",
                "registry.cluster: name at least one node",
            ),
            (
                "  cluster: [redis://a:7000, \"b:7000\"]\n",
                "registry.cluster[1]: ",
            ),
            ("  cluster: [\"redis+unix:///r.sock\"]\n", "over TCP"),
        ] {
            let err = with(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_migrate_rate_is_a_positive_number_of_sessions_per_second() {
        let c = load(&servers_yaml("    migrate_rate: 12.5\n", &[""])).unwrap();
        assert_eq!(c.backends[0].migrate_rate, 12.5);
        let c = load(&servers_yaml("", &[""])).unwrap();
        assert_eq!(c.backends[0].migrate_rate, DEFAULT_MIGRATE_RATE);
        for (bad, says) in [
            ("0", "out of range"),
            ("-5", "out of range"),
            ("200000", "out of range"),
            (".nan", "out of range"),
            ("fast", "backends.b.migrate_rate: expected"),
            ("50/s", "backends.b.migrate_rate: expected"),
        ] {
            let err =
                load(&servers_yaml(&format!("    migrate_rate: {bad}\n"), &[""])).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(err.contains("<t>:5:"), "{bad}: located: {err}");
        }
    }

    #[test]
    fn a_backend_handshakes_cap_is_a_rate_above_zero() {
        let c = load(&servers_yaml(
            "    handshakes: { per_second: 200, burst: 400 }\n",
            &[""],
        ))
        .unwrap();
        assert_eq!(
            c.backends[0].handshakes,
            Some(Rate {
                per_second: 200.0,
                burst: 400
            })
        );
        assert_eq!(
            load(&servers_yaml("", &[""])).unwrap().backends[0].handshakes,
            None
        );
        for (bad, says) in [
            (
                "{ per_second: 0, burst: 10 }",
                "backends.b.handshakes.per_second: 0 is not a rate above 0",
            ),
            (
                "{ per_second: -5, burst: 10 }",
                "backends.b.handshakes.per_second: -5 is not a rate above 0",
            ),
            (
                "{ per_second: .nan, burst: 10 }",
                "backends.b.handshakes.per_second: NaN is not a rate above 0",
            ),
            (
                "{ per_second: 10, burst: 0 }",
                "backends.b.handshakes.burst: 0 is out of range",
            ),
            (
                "{ per_second: fast, burst: 10 }",
                "backends.b.handshakes.per_second",
            ),
            (
                "{ per_second: 10, burst: -1 }",
                "backends.b.handshakes.burst",
            ),
            ("200", "backends.b.handshakes"),
        ] {
            let err = load(&servers_yaml(&format!("    handshakes: {bad}\n"), &[""])).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sessions_capacity_zero_means_no_table() {
        let c = load(&servers_yaml("    sessions:\n      capacity: 0\n", &[""])).unwrap();
        assert_eq!(c.backends[0].sessions.capacity, 0);
        let err = load(&servers_yaml(
            "    sessions:\n      capacity: 100000001\n",
            &[""],
        ))
        .unwrap_err();
        assert!(err.contains("out of range 0..=100000000"), "{err}");
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        let ok = |s: &str| duration(&DurationSpec::Text(s.into()), &p()).unwrap();
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2s"), Duration::from_secs(2));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("7"), Duration::from_secs(7));
        assert_eq!(
            duration(&DurationSpec::Seconds(9), &p()).unwrap(),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn huge_durations_are_rejected_not_overflowed() {
        assert!(duration(&DurationSpec::Seconds(u64::MAX), &p()).is_err());
        assert!(duration(&DurationSpec::Text("99999999999999999999999s".into()), &p()).is_err());
        assert!(duration(&DurationSpec::Text("99999999999999999999999".into()), &p()).is_err());
    }

    #[test]
    fn wildcard_host_becomes_a_suffix_and_exact_host_is_lowercased() {
        assert_eq!(
            host_match("*.Example.COM", &p()).unwrap(),
            HostMatch::Suffix(".example.com".into())
        );
        assert_eq!(
            host_match("Example.com", &p()).unwrap(),
            HostMatch::Exact("example.com".into())
        );
        assert_eq!(
            host_match("[::1]", &p()).unwrap(),
            HostMatch::Exact("[::1]".into())
        );
        for bad in [
            "*",
            "*.",
            "a.*.com",
            "example.com:8080",
            "http://x",
            "",
            "a..b",
            "*.[::1]",
        ] {
            assert!(host_match(bad, &p()).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn bare_ips_become_host_networks_and_cidrs_are_truncated() {
        assert_eq!(cidr("127.0.0.1", &p()).unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(cidr("::1", &p()).unwrap().to_string(), "::1/128");
        assert_eq!(cidr("10.1.2.3/8", &p()).unwrap().to_string(), "10.0.0.0/8");
        let too_long = why(cidr("10.0.0.0/33", &p()));
        assert!(
            too_long.ends_with("the prefix length /33 is out of range 0-32"),
            "{too_long}"
        );
        let too_long = why(cidr("fd00::/129", &p()));
        assert!(
            too_long.ends_with("/129 is out of range 0-128"),
            "{too_long}"
        );
        assert!(why(cidr("10.0.0.0/x", &p())).contains("expected an IP"));
        let long = "9".repeat(30);
        assert!(why(cidr(&format!("::/{long}"), &p())).contains("out of range 0-128"));
    }

    #[test]
    fn server_addresses_need_host_and_port() {
        assert!(authority("127.0.0.1:3001", &p()).is_ok());
        assert!(authority("node-1.internal:3000", &p()).is_ok());
        assert!(authority("[::1]:3000", &p()).is_ok());
        for bad in [
            "127.0.0.1",
            ":3001",
            "h:0",
            "h:99999",
            "user@h:1",
            "http://h:1",
            "",
            "h:1/x",
        ] {
            assert!(authority(bad, &p()).is_err(), "{bad} accepted");
        }
    }

    fn why(r: R<impl std::fmt::Debug>) -> String {
        r.expect_err("refused").message
    }

    #[test]
    fn a_bind_is_refused_for_the_reason_it_fails() {
        assert_eq!(
            bind_addr("[::]:0", &p()).unwrap(),
            "[::]:0".parse::<SocketAddr>().unwrap()
        );
        let cases = [
            (
                "127.0.0.1:99999",
                "port 99999 is out of range: 1-65535, or 0 for any free port",
            ),
            ("[::1]:65536", "port 65536 is out of range"),
            ("127.0.0.1:123456789012345678901234", "is out of range"),
            ("127.0.0.1", "the port is missing"),
            ("127.0.0.1:", "the port is missing"),
            (
                "::1",
                "an IPv6 address takes brackets and a port after them, e.g. [::1]:PORT",
            ),
            ("[::1]", "the port is missing"),
            ("fe80::1:8080", "e.g. [fe80::1]:8080"),
            ("127.0.0.1:http", "\"http\" is not a port number"),
            ("127.0.0.1:-1", "\"-1\" is not a port number"),
            ("::1:8080", "e.g. [::1]:8080"),
            ("localhost:8080", "\"localhost\" is not an IP address"),
            ("http://0.0.0.0:80", "without a scheme"),
            ("", "empty"),
        ];
        for (addr, expected) in cases {
            let msg = why(bind_addr(addr, &p()));
            assert!(msg.contains(expected), "{addr}: {msg}");
        }
    }

    #[test]
    fn a_server_address_is_refused_for_the_reason_it_fails() {
        let cases = [
            ("127.0.0.1:99999", "port 99999 is out of range 1-65535"),
            ("h:0", "port 0 cannot be connected to"),
            ("127.0.0.1", "the port is missing"),
            ("h:", "the port is missing"),
            ("h:x", "\"x\" is not a port number"),
            (":3001", "the host is missing"),
            ("user@h:1", "\"user@h\" is not a host name or IP address"),
            ("a b:1", "\"a b\" is not a host name or IP address"),
            ("http://h:1", "without a scheme"),
        ];
        for (addr, expected) in cases {
            let msg = why(authority(addr, &p()));
            assert!(msg.contains(expected), "{addr}: {msg}");
            assert!(
                !msg.contains("missing") || expected.contains("missing"),
                "{addr}: {msg}"
            );
        }
        // The examples show how an IPv6 address is written, quoted for YAML.
        assert!(
            why(authority("127.0.0.1", &p())).ends_with(
                "expected host:port such as 127.0.0.1:3001, node-1.internal:3000 or \"[::1]:3001\" (IPv6 in brackets, quoted)"
            ),
            "{}",
            why(authority("127.0.0.1", &p()))
        );
        assert!(why(bind_addr("", &p())).contains("\"[::]:8080\" (IPv6 in brackets, quoted)"));
    }

    #[test]
    fn a_server_that_is_a_listener_of_tether_is_refused_at_its_addr() {
        let parse = |bind: &str, addr: &str| {
            let yaml = format!(
                "listeners:\n  - bind: 127.0.0.1:9000\n  - bind: \"{bind}\"\nbackends:\n  chat:\n    servers:\n      - {{ id: a, addr: \"127.0.0.1:1\" }}\n      - {{ id: b, addr: \"{addr}\" }}\n"
            );
            crate::config::parse(&yaml, std::path::Path::new("t.yaml")).map(drop)
        };
        for (bind, addr) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.2:8080"),
            ("0.0.0.0:8080", "0.0.0.0:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("[::]:8080", "127.0.0.1:8080"),
            ("[::1]:8080", "[::1]:8080"),
            ("10.1.2.3:8080", "10.1.2.3:8080"),
        ] {
            let err = parse(bind, addr).expect_err(addr).to_string();
            assert_eq!(
                err,
                format!("t.yaml:8:24: backends.chat.servers[1].addr: {addr} is tether's own listeners[1] (bind {bind}): requests would loop back into tether; give the address of a Socket.IO server"),
            );
        }
        for (bind, addr) in [
            ("127.0.0.1:8080", "127.0.0.1:8081"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("127.0.0.1:0", "127.0.0.1:1"),
            ("0.0.0.0:8080", "[::1]:8080"),
            ("0.0.0.0:8080", "10.1.2.3:8080"),
            ("0.0.0.0:8080", "node-1.internal:8080"),
        ] {
            assert!(parse(bind, addr).is_ok(), "{bind} {addr}");
        }
    }

    #[test]
    fn clashing_binds_are_detected_but_port_zero_never_clashes() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(binds_clash(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(binds_clash(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(!binds_clash(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!binds_clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!binds_clash(a("[::]:80"), a("0.0.0.0:80")));
    }

    #[test]
    fn an_admin_api_reachable_from_other_hosts_needs_a_token() {
        let yaml = |admin: &str| {
            format!(
                "listeners:\n  - bind: 127.0.0.1:0\nadmin: {admin}\nbackends:\n  b:\n    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n"
            )
        };
        let parse =
            |admin: &str| crate::config::parse(&yaml(admin), std::path::Path::new("t.yaml"));
        let err = parse("{ bind: \"0.0.0.0:9900\" }").unwrap_err().to_string();
        assert!(
            err.starts_with("t.yaml:3:")
                && err.contains("admin.bind")
                && err.contains("admin.token"),
            "{err}"
        );
        assert!(parse("{ bind: \"0.0.0.0:9900\", token: 0123456789abcdef }").is_ok());
        let err = parse("{ bind: \"0.0.0.0:9900\", token: abc }")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.yaml:3:")
                && err.contains("admin.token: the token is 3 bytes; at least 16"),
            "{err}"
        );
        assert!(parse("{ bind: \"127.0.0.1:9900\" }").is_ok());
        assert!(parse("{ bind: \"[::1]:9900\" }").is_ok());
        // From the environment (a Kubernetes Secret); the variable is this test's own.
        std::env::set_var("TETHER_VALIDATE_TEST_TOKEN", "0123456789abcdef\n");
        assert!(parse("{ bind: \"0.0.0.0:9900\", token_env: TETHER_VALIDATE_TEST_TOKEN }").is_ok());
        let err = parse("{ bind: \"0.0.0.0:9900\", token_env: TETHER_VALIDATE_TEST_UNSET }")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin.token_env") && err.contains("not set"),
            "{err}"
        );
        let hosts = parse("{ bind: \"127.0.0.1:9900\", hosts: [Admin.Example.COM.] }").unwrap();
        assert_eq!(hosts.admin.unwrap().hosts, ["admin.example.com"]);
        let err = parse("{ bind: \"127.0.0.1:9900\", hosts: [\"http://x\"] }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.hosts[0]"), "{err}");
    }
}
