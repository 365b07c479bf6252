//! The validated runtime configuration: what the rest of tether reads.
//!
//! Every value here has already been checked, defaulted and resolved (route → backend
//! index, durations parsed, CIDRs parsed), so the request path never re-validates and
//! never meets a string it has to interpret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::Authority;
use ipnet::IpNet;

/// One whole, valid configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, for messages (`None` when parsed from a string).
    pub source: Option<PathBuf>,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    pub limits: Limits,
    /// First match wins. Never empty: a file without `routes` and one backend gets a
    /// catch-all route to it.
    pub routes: Vec<RouteConfig>,
    /// In file order; `RouteConfig::backend` indexes this.
    pub backends: Vec<BackendConfig>,
    /// On SIGTERM/SIGINT: how long in-flight requests and WebSocket tunnels get before
    /// they are closed. Default 30 s.
    pub shutdown_grace: Duration,
    /// Values that are valid but cannot work as meant, for whoever loaded the file to
    /// show: `tether check` prints them, start-up and reloads log them.
    pub warnings: Vec<super::ConfigWarning>,
    /// One line per request and per closed WebSocket tunnel; `None`: off.
    pub access_log: Option<AccessLogConfig>,
    /// The shared sid registry; `None`: sids stay in this instance.
    pub registry: Option<RegistryConfig>,
}

/// Where instances of a fleet share learned sids and admin states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    pub redis: RedisAt,
    /// Namespace of every key and channel (see `fleet::keys`).
    pub prefix: String,
    pub lookup_timeout: Duration,
    pub write_timeout: Duration,
}

/// Where the registry's Redis is; every URL checked to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisAt {
    /// One server (a primary: writes go to it).
    Node(String),
    /// Some nodes of a Redis Cluster; the rest are found from them.
    Cluster(Vec<String>),
}

/// Defaults of [`RegistryConfig`].
pub const DEFAULT_REGISTRY_PREFIX: &str = "tether";
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);
pub const DEFAULT_REGISTRY_WRITE_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// `None`: stderr.
    pub path: Option<PathBuf>,
    pub format: AccessFormat,
    /// Lines waiting for the writer at most; more are dropped and counted.
    pub queue: usize,
}

/// Default of [`AccessLogConfig::queue`].
pub const DEFAULT_ACCESS_QUEUE: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// Space-separated fields, `-` for an unknown one, like nginx's `combined` format.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Default of [`BackendConfig::migrate_rate`]: a node's 1,000 sessions moved in 20 s,
/// their reconnections a load the other nodes take in their stride.
pub const DEFAULT_MIGRATE_RATE: f64 = 50.0;

/// Most sessions a migration may ask to move per second: far above what a node takes,
/// low enough that the pacing interval (`1 / rate`) stays a usable duration.
pub const MAX_MIGRATE_RATE: f64 = 100_000.0;

/// Whether `rate` can pace a migration: more than 0, at most [`MAX_MIGRATE_RATE`] (a NaN
/// or an infinity cannot). One check for the config file, the admin API and the fleet's
/// announcements, so a rate one accepts is never refused by another.
pub fn migrate_rate_in_range(rate: f64) -> bool {
    rate.is_finite() && rate > 0.0 && rate <= MAX_MIGRATE_RATE
}

/// Default of [`Config::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Plain listener that only redirects to `https://host:PORT/...` (308).
    pub redirect_https: Option<u16>,
    /// Connections this listener holds open at most; absent: only the process-wide cap.
    pub max_connections: Option<u64>,
    /// Each connection opens with a PROXY protocol header naming the client.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// Which PROXY protocol header a listener expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Chosen by SNI against each certificate's DNS names (exact or wildcard).
    pub certificates: Vec<CertPair>,
    pub hsts: Option<Hsts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Serves clients without SNI and unknown names. At most one per listener; with
    /// none, clients without SNI get the first certificate and unknown names are refused.
    pub default: bool,
}

/// `Strict-Transport-Security` on every response of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

/// TLS from tether to a backend's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM CA bundle; `None`: the bundled Mozilla roots.
    pub ca: Option<PathBuf>,
    /// Name the servers' certificates must carry; `None`: the host of each `addr`.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// When set, every admin request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Host names (lower case, no port) the API answers to besides IP addresses and
    /// `localhost`: a request naming another host is refused, so a web page cannot reach
    /// the API through a name that resolves to it (DNS rebinding).
    pub hosts: Vec<String>,
}

/// Limits applied to client connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request head accepted; larger gets 431. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head (and, on HTTP/1.1, to start its
    /// next request on a kept-alive connection; on HTTP/2, its first). Default 10 s.
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection with no request in flight this long is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once. Default 128.
    pub h2_max_streams: u32,
    /// Longest silence within a request body, and the longest an Engine.IO polling POST
    /// may take to arrive whole. Default 10 s.
    pub body_read_timeout: Duration,
    /// Largest Engine.IO polling POST body; larger gets 413 before a server sees it.
    /// Default 1 MB, Node's `maxHttpBufferSize`.
    pub max_payload: u64,
    /// Client connections (WebSocket tunnels included) the process holds open at most;
    /// `None`: derived from the open-file limit at start.
    pub max_connections: Option<u64>,
    /// What one client address may take.
    pub per_client: ClientLimits,
}

/// What one client address (an IPv6 /64) may take.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimits {
    /// Connections open at once. Default 1,024.
    pub connections: u32,
    /// New sessions (Engine.IO handshakes, WebSocket-only sessions). Default 100/s,
    /// bursts of 1,000.
    pub handshakes: Rate,
    /// Requests of any kind. Default 1,000/s, bursts of 2,000.
    pub requests: Rate,
    /// When not empty, only these may connect.
    pub allow: Vec<IpNet>,
    /// These may not connect.
    pub deny: Vec<IpNet>,
}

/// A token bucket: `burst` at once, then `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            connections: 1024,
            handshakes: Rate {
                per_second: 100.0,
                burst: 1000,
            },
            requests: Rate {
                per_second: 1000.0,
                burst: 2000,
            },
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_max_streams: 128,
            body_read_timeout: Duration::from_secs(10),
            max_payload: 1_000_000,
            max_connections: None,
            per_client: ClientLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub host: Option<HostMatch>,
    /// `"/"` when the file gives none.
    pub path_prefix: String,
    /// Index into `Config::backends`; `None`: a deny rule (403).
    pub backend: Option<usize>,
}

/// How a route matches the request's host (port stripped, compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `example.com`, stored lower-case.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches `a.example.com`, not `example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub name: String,
    pub servers: Vec<ServerConfig>,
    pub balance: Balance,
    pub placement: Placement,
    pub hash_key: HashKey,
    /// Bounded-load factor `c` of consistent hashing with bounded loads (> 1.0).
    pub load_factor: f64,
    pub cookie: Option<CookieConfig>,
    pub sessions: SessionConfig,
    pub timeouts: Timeouts,
    /// Active health checks; `None`: none (passive detection still applies).
    pub health: Option<HealthConfig>,
    /// Most live sessions (handshakes in flight included) over the whole backend.
    pub max_connections: Option<u64>,
    /// New sessions (Engine.IO handshakes, WebSocket-only sessions) per second across all
    /// clients, as a token bucket: a reconnect storm reaches the servers at this pace, the
    /// excess answered 503 with `Retry-After`. `None` (the default): no such cap.
    pub handshakes: Option<Rate>,
    /// A server coming (back) up gets a share of new sessions ramping from ~0 to its
    /// full share over this time, so a reconnect storm does not all land on it.
    pub slow_start: Option<Duration>,
    /// Sessions per second a migration (`POST …/migrate`) moves off a server.
    pub migrate_rate: f64,
    /// Servers found in DNS, beside the static ones.
    pub discover: Option<DiscoverConfig>,
    /// TLS to the servers; `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
    /// Each connection to a server opens with a PROXY header naming the client.
    pub proxy_protocol: Option<SendProxy>,
}

/// Which PROXY protocol header tether sends its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub mode: HealthMode,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes to mark a down server up.
    pub rise: u32,
    /// Consecutive failures to mark an up server down.
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthMode {
    /// `GET path`, healthy when the status is `expect_status`.
    Http { path: String, expect_status: u16 },
    /// Healthy when a TCP connect succeeds.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    /// `name:port`, resolved every `interval`; each address becomes a server whose id is
    /// its `ip:port`.
    pub dns: Authority,
    pub interval: Duration,
}

/// What an operator allows a server to do, apart from its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerState {
    /// Takes new sessions when healthy.
    #[default]
    Ready,
    /// No new sessions; pinned sessions go on until they end.
    Draining,
    /// No traffic at all.
    Maint,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Draining => "draining",
            ServerState::Maint => "maint",
        }
    }

    /// The state [`as_str`](Self::as_str) names.
    pub fn parse(s: &str) -> Option<ServerState> {
        match s {
            "ready" => Some(ServerState::Ready),
            "draining" => Some(ServerState::Draining),
            "maint" => Some(ServerState::Maint),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Stable identity: hashing, cookies and counters are keyed by it, never by address.
    pub id: String,
    /// `host:port`; a host name is resolved at connect time.
    pub addr: Authority,
    /// Relative share of new sessions, 1..=1000. Default 1.
    pub weight: u32,
    /// The state the file asks for (default ready); the admin API can change it at run time.
    pub state: ServerState,
    /// Most live sessions on this server; a full server takes no new ones.
    pub max_connections: Option<u64>,
    /// Every sid this server generates starts with it (Node: `io.engine.generateId`), so
    /// a sid carrying it routes here with no table entry: sessions survive a tether
    /// restart and are served by any tether instance. Non-empty, sid characters only,
    /// and no prefix of another server's prefix in the same backend.
    pub sid_prefix: Option<String>,
}

/// Whether the backend keeps sessions on their server at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Engine.IO-aware affinity (sid, cookie, placement). The default.
    Sticky,
    /// Every request to the next server in turn, no affinity. Only for stateless HTTP
    /// backends: Engine.IO polling breaks under it (kept so tests can prove they can tell).
    RoundRobin,
}

/// How a new session (no sid, no valid cookie) chooses its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Fewest live sessions (handshakes in flight included) per unit of weight; ties
    /// broken by the consistent-hash order of the hash key. The default.
    LeastSessions,
    /// Consistent hash of the hash key with bounded load.
    Hash,
}

/// What a new session is hashed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client address (after trusted-proxy resolution). The default.
    ClientIp,
    /// A request header's value (lower-case name).
    Header(http::HeaderName),
    /// A query parameter's value.
    Query(String),
    /// A cookie's value.
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieConfig {
    /// Default `tether`.
    pub name: String,
    /// HMAC key; at least 16 bytes.
    pub secret: Vec<u8>,
    pub secure: bool,
    pub same_site: SameSite,
    /// `None`: a session cookie.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most sids remembered at once. Default 1,000,000. 0: none; sessions stay by their
    /// servers' `sid_prefix` or the cookie.
    pub capacity: usize,
    /// Added to the session's `pingInterval + pingTimeout` to decide when a silent
    /// session (or tunnel) is dead. Default 5 s.
    pub idle_margin: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a server. Default 2 s.
    pub connect: Duration,
    /// Wait for a server's response head. Must outlast a long poll (`pingInterval`,
    /// 25 s by default). Default 60 s.
    pub response: Duration,
    /// Idle limit of a WebSocket tunnel. `None` (the default, `auto`): the session's own
    /// `pingInterval + pingTimeout + idle_margin`.
    pub tunnel_idle: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            capacity: 1_000_000,
            idle_margin: Duration::from_secs(5),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(60),
            tunnel_idle: None,
        }
    }
}
