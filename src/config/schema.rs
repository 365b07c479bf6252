//! The file's shape, as serde sees it.
//!
//! These structs mirror the YAML one to one so that serde_yaml can reject unknown keys
//! (`deny_unknown_fields` everywhere: a misspelt key silently falling back to its default
//! is the worst kind of config bug) and wrong types, with a position. Values that need
//! interpreting (addresses, durations, CIDRs) stay strings here; `validate` gives them
//! meaning, so that every semantic rule lives in one place.
//!
//! Defaults of `limits`, `sessions` and `timeouts` belong to the runtime types'
//! `Default` impls in `model.rs`; the others are the constants in [`defaults`].

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Defaults with no runtime `Default` to live in.
pub mod defaults {
    use std::time::Duration;

    pub const PATH_PREFIX: &str = "/";
    pub const LOAD_FACTOR: f64 = 1.25;
    pub const WEIGHT: u64 = 1;
    pub const COOKIE_NAME: &str = "tether";
    pub const HEALTH_PATH: &str = "/health";
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTH_RISE: u64 = 2;
    pub const HEALTH_FALL: u64 = 3;
    pub const DISCOVER_INTERVAL: Duration = Duration::from_secs(5);
}

/// The whole file. `listeners` and `backends` are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// At least one.
    pub listeners: Vec<RawListener>,
    /// Absent: no admin listener.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// CIDRs or bare IPs. Default `[]`: forwarding headers are never believed.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// May be omitted only when there is exactly one backend (a catch-all route to it).
    #[serde(default)]
    pub routes: Option<Vec<RawRoute>>,
    /// Name → backend, in file order.
    pub backends: Backends,
    /// Default 30s.
    #[serde(default)]
    pub shutdown_grace: Option<DurationSpec>,
    /// Absent: no access log.
    #[serde(default)]
    pub access_log: Option<RawAccessLog>,
    /// Absent: learned sids stay in this instance.
    #[serde(default)]
    pub registry: Option<RawRegistry>,
}

/// The shared sid registry (and fleet-wide admin) in Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// `redis://[user:password@]host[:port][/db]` or `redis+unix:///path/redis.sock`.
    #[serde(default)]
    pub redis: Option<String>,
    /// Instead of `redis`: some nodes of a Redis Cluster (`redis://host:port` each).
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// Key and channel namespace; default `tether`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// How long a request of a sid this instance does not know waits for Redis; default
    /// 250ms.
    #[serde(default)]
    pub lookup_timeout: Option<DurationSpec>,
    /// How long a handshake's answer waits for its sid to be written; default 250ms.
    #[serde(default)]
    pub write_timeout: Option<DurationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `stderr` (default) or a file path.
    #[serde(default)]
    pub path: Option<String>,
    /// Default `plain`.
    #[serde(default)]
    pub format: RawAccessFormat,
    /// Lines waiting for the writer at most; default 8192.
    #[serde(default)]
    pub queue: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawAccessFormat {
    #[default]
    Plain,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `ip:port`; port 0 picks a free port (tests).
    pub bind: String,
    /// Absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// A plain listener that answers every request with a redirect to `https://` on
    /// this port.
    #[serde(default)]
    pub redirect_https: Option<u64>,
    /// Absent: only the process-wide cap.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// Absent: connections carry no PROXY header.
    #[serde(default)]
    pub proxy_protocol: Option<RawProxyProtocol>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProxyProtocol {
    V1,
    V2,
    Any,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// At least one; chosen by SNI. Paths only: files are read by the listener.
    pub certificates: Vec<RawCertPair>,
    /// Absent: no Strict-Transport-Security header.
    #[serde(default)]
    pub hsts: Option<RawHsts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
    /// Serves clients without SNI and those naming a host no certificate covers.
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    /// Default 365 days.
    #[serde(default)]
    pub max_age: Option<DurationSpec>,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

/// TLS from tether to the servers of a backend.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA bundle; absent: the bundled Mozilla roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// Name to verify the servers' certificates against; absent: the host of `addr`.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `ip:port`.
    pub bind: String,
    /// Absent: no authentication (allowed on a loopback bind only).
    #[serde(default)]
    pub token: Option<String>,
    /// The name of an environment variable holding the token, for a token kept out of
    /// the file (a Kubernetes Secret, a compose `.env`). Not with `token`.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Host names the admin API answers to, besides IP addresses and `localhost`.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Default 16384; 1024..=1048576.
    #[serde(default)]
    pub max_header_bytes: Option<u64>,
    /// Default 10s.
    #[serde(default)]
    pub header_read_timeout: Option<DurationSpec>,
    /// Default 60s.
    #[serde(default)]
    pub idle_timeout: Option<DurationSpec>,
    /// Default 128; 1..=10000.
    #[serde(default)]
    pub h2_max_streams: Option<u64>,
    /// Default 10s.
    #[serde(default)]
    pub body_read_timeout: Option<DurationSpec>,
    /// Bytes. Default 1000000; 1024..=1073741824.
    #[serde(default)]
    pub max_payload: Option<u64>,
    /// Absent: derived from the open-file limit.
    #[serde(default)]
    pub max_connections: Option<u64>,
    #[serde(default)]
    pub per_client: Option<RawClientLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientLimits {
    /// Default 1024.
    #[serde(default)]
    pub connections: Option<u64>,
    /// Default { per_second: 100, burst: 1000 }.
    #[serde(default)]
    pub handshakes: Option<RawRate>,
    /// Default { per_second: 1000, burst: 2000 }.
    #[serde(default)]
    pub requests: Option<RawRate>,
    /// CIDRs or bare IPs.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub per_second: f64,
    pub burst: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Absent: any host. `*.example.com` matches subdomains only.
    #[serde(default)]
    pub host: Option<String>,
    /// Default `/`.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Name of a backend; absent only with `deny: true`.
    #[serde(default)]
    pub backend: Option<String>,
    /// Refuse matching requests with 403 (e.g. a node's own `/metrics`).
    #[serde(default)]
    pub deny: bool,
}

/// Backends in the order the file lists them: route indexes, the admin page and any
/// "first backend" tie-break all follow the file, never a hash map's order.
#[derive(Debug, Default)]
pub struct Backends(pub Vec<(String, RawBackend)>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// Default `sticky`.
    #[serde(default)]
    pub balance: RawBalance,
    /// Default `least_sessions`.
    #[serde(default)]
    pub placement: RawPlacement,
    /// Default `client_ip`.
    #[serde(default)]
    pub hash_key: RawHashKey,
    /// Default 1.25; > 1.0 and <= 10.
    #[serde(default = "default_load_factor")]
    pub load_factor: f64,
    /// Absent: no affinity cookie is set.
    #[serde(default)]
    pub cookie: Option<RawCookie>,
    #[serde(default)]
    pub sessions: Option<RawSessions>,
    #[serde(default)]
    pub timeouts: Option<RawTimeouts>,
    /// At least one, unless `discover` finds them.
    #[serde(default)]
    pub servers: Vec<RawServer>,
    /// Absent: no active health checks.
    #[serde(default)]
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// New sessions per second across all clients of the backend (a reconnect storm);
    /// absent: no cap beyond the per-client ones.
    #[serde(default)]
    pub handshakes: Option<RawRate>,
    #[serde(default)]
    pub slow_start: Option<DurationSpec>,
    /// Sessions a migration moves per second; default 50.
    #[serde(default)]
    pub migrate_rate: Option<f64>,
    #[serde(default)]
    pub discover: Option<RawDiscover>,
    /// Absent: plain HTTP to the servers.
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
    /// Absent: connections to the servers carry no PROXY header.
    #[serde(default)]
    pub proxy_protocol: Option<RawProxyProtocol>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscover {
    /// `name:port`.
    pub dns: String,
    /// Default 5s.
    #[serde(default)]
    pub interval: Option<DurationSpec>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawServerState {
    #[default]
    Ready,
    Draining,
    Maint,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawHealthMode {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    #[default]
    Sticky,
    RoundRobin,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawPlacement {
    #[default]
    LeastSessions,
    Hash,
}

/// `client_ip`, or a one-key map `{ header: NAME }`, `{ query: NAME }`, `{ cookie: NAME }`.
/// Hand-written because serde_yaml spells enum variants as tags (`!header X`), which
/// nobody would guess.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum RawHashKey {
    #[default]
    ClientIp,
    Header(String),
    Query(String),
    Cookie(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookie {
    /// Default `tether`.
    #[serde(default = "default_cookie_name")]
    pub name: String,
    /// Required; at least 16 bytes.
    pub secret: String,
    /// Default false.
    #[serde(default)]
    pub secure: bool,
    /// Default `lax`; `none` requires `secure: true`.
    #[serde(default)]
    pub same_site: RawSameSite,
    /// Default null: a session cookie.
    #[serde(default)]
    pub max_age: Option<DurationSpec>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawSameSite {
    #[default]
    Lax,
    Strict,
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    /// Default 1000000.
    #[serde(default)]
    pub capacity: Option<u64>,
    /// Default 5s.
    #[serde(default)]
    pub idle_margin: Option<DurationSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Default 2s.
    #[serde(default)]
    pub connect: Option<DurationSpec>,
    /// Default 60s.
    #[serde(default)]
    pub response: Option<DurationSpec>,
    /// Default `auto`.
    #[serde(default)]
    pub tunnel_idle: Option<DurationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Unique within the backend; `[A-Za-z0-9._-]`.
    pub id: String,
    /// `host:port`.
    pub addr: String,
    /// Default 1; 1..=1000.
    #[serde(default = "default_weight")]
    pub weight: u64,
    /// Default ready.
    #[serde(default)]
    pub state: RawServerState,
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// Every sid this server generates starts with it (`io.engine.generateId`).
    #[serde(default)]
    pub sid_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Default `http`.
    #[serde(default)]
    pub mode: RawHealthMode,
    /// Default 200 (http mode).
    #[serde(default = "default_expect_status")]
    pub expect_status: u64,
    /// Default `/health` (http mode).
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Default 2s.
    #[serde(default)]
    pub interval: Option<DurationSpec>,
    /// Default 1s.
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    /// Default 2: consecutive passes to mark a server up.
    #[serde(default = "default_rise")]
    pub rise: u64,
    /// Default 3: consecutive failures to mark it down.
    #[serde(default = "default_fall")]
    pub fall: u64,
}

/// A duration as written: a bare integer (seconds) or text such as `500ms`, `2s`, `1m`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationSpec {
    Seconds(u64),
    Text(String),
}

fn default_path_prefix() -> String {
    defaults::PATH_PREFIX.to_owned()
}
fn default_load_factor() -> f64 {
    defaults::LOAD_FACTOR
}
fn default_weight() -> u64 {
    defaults::WEIGHT
}
fn default_cookie_name() -> String {
    defaults::COOKIE_NAME.to_owned()
}
fn default_health_path() -> String {
    defaults::HEALTH_PATH.to_owned()
}
fn default_expect_status() -> u64 {
    200
}
fn default_rise() -> u64 {
    defaults::HEALTH_RISE
}
fn default_fall() -> u64 {
    defaults::HEALTH_FALL
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration such as 500ms, 1.5s, 2m, 1h30m or 365d, or a whole number of seconds",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Seconds(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationSpec, E> {
                u64::try_from(v)
                    .map(DurationSpec::Seconds)
                    .map_err(|_| E::custom(format!("invalid duration {v}: it cannot be negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationSpec, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: a number without a unit must be whole seconds; {}",
                    super::duration::FORMS
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationSpec, E> {
                Ok(DurationSpec::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawHashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHashKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`client_ip` or a mapping with one of `header`, `query`, `cookie`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawHashKey, E> {
                match v {
                    "client_ip" => Ok(RawHashKey::ClientIp),
                    other => Err(E::custom(format!(
                        "unknown hash_key `{other}`; expected `client_ip`, \
                         {{ header: NAME }}, {{ query: NAME }} or {{ cookie: NAME }}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHashKey, A::Error> {
                let Some((kind, name)) = map.next_entry::<String, String>()? else {
                    return Err(de::Error::custom(
                        "empty hash_key map; expected one of `header`, `query`, `cookie`",
                    ));
                };
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "hash_key takes exactly one of `header`, `query`, `cookie`",
                    ));
                }
                match kind.as_str() {
                    "header" => Ok(RawHashKey::Header(name)),
                    "query" => Ok(RawHashKey::Query(name)),
                    "cookie" => Ok(RawHashKey::Cookie(name)),
                    _ => Err(de::Error::unknown_field(
                        &kind,
                        &["header", "query", "cookie"],
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Backends {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Backends;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping (key: value lines) of backend names to their settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Backends, A::Error> {
                let mut out: Vec<(String, RawBackend)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "<<" {
                        // A merge key, not a backend's name: said so before its value
                        // is read as a backend's keys (`error.rs` words it).
                        return Err(de::Error::unknown_field("<<", &[]));
                    }
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("duplicate key `{name}`")));
                    }
                    let backend = map.next_value()?;
                    out.push((name, backend));
                }
                Ok(Backends(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Result<RawConfig, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    const HEAD: &str = "listeners: [{ bind: \"0.0.0.0:0\" }]\n";

    fn backend_with(extra: &str) -> RawBackend {
        let text = format!("{HEAD}backends:\n  b:\n    servers: []\n{extra}");
        let mut cfg = raw(&text).expect("parses");
        cfg.backends.0.remove(0).1
    }

    #[test]
    fn backends_keep_file_order() {
        let text = format!("{HEAD}backends:\n  zeta: {{ servers: [] }}\n  alpha: {{ servers: [] }}\n  mid: {{ servers: [] }}\n");
        let names: Vec<_> = raw(&text)
            .unwrap()
            .backends
            .0
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["zeta", "alpha", "mid"]);
    }

    #[test]
    fn hash_key_accepts_every_documented_form() {
        assert_eq!(backend_with("").hash_key, RawHashKey::ClientIp);
        assert_eq!(
            backend_with("    hash_key: client_ip\n").hash_key,
            RawHashKey::ClientIp
        );
        let h = backend_with("    hash_key: { header: X-User-Id }\n").hash_key;
        assert_eq!(h, RawHashKey::Header("X-User-Id".into()));
        let q = backend_with("    hash_key:\n      query: token\n").hash_key;
        assert_eq!(q, RawHashKey::Query("token".into()));
        let c = backend_with("    hash_key: { cookie: uid }\n").hash_key;
        assert_eq!(c, RawHashKey::Cookie("uid".into()));
    }

    #[test]
    fn durations_accept_integers_and_text() {
        let t = backend_with("    timeouts: { connect: 3, response: 1m, tunnel_idle: auto }\n")
            .timeouts
            .unwrap();
        assert_eq!(t.connect, Some(DurationSpec::Seconds(3)));
        assert_eq!(t.response, Some(DurationSpec::Text("1m".into())));
        assert_eq!(t.tunnel_idle, Some(DurationSpec::Text("auto".into())));
    }

    #[test]
    fn negative_and_fractional_durations_are_shape_errors() {
        let text =
            format!("{HEAD}backends:\n  b:\n    servers: []\n    timeouts: {{ connect: -1 }}\n");
        assert!(raw(&text).unwrap_err().contains("cannot be negative"));
        let text =
            format!("{HEAD}backends:\n  b:\n    servers: []\n    timeouts: {{ connect: 1.5 }}\n");
        assert!(raw(&text).unwrap_err().contains("1.5s"));
    }
}
