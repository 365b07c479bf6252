//! A backend's servers and everything about them that changes while tether runs.
//!
//! - [`Backend`] and [`Server`]: one backend's servers as one routing snapshot sees them,
//!   with the backend's placement ([`crate::balance::Placer`]) and capacity.
//! - [`stats`]: each server's live counters, kept across snapshots by the [`Registry`].
//! - [`condition`]: each server's health and operator state (ready, draining, maint).
//! - [`health`]: active checks on a clock, and passive health from live traffic.
//! - [`discovery`]: servers found in DNS, reported to whoever owns the routing state.
//!
//! Nothing here holds the routing state: checks move a server's condition atomics, and
//! discovery sends what it found down a channel.

pub mod condition;
pub mod discovery;
pub mod health;
pub mod migration;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use ahash::AHashMap;
use http::uri::Authority;

use crate::admission::SessionRate;
use crate::balance::{Candidate, Placer, Policy};
use crate::config::{
    BackendConfig, Balance, HealthConfig, Placement, Rate, SendProxy, ServerConfig, ServerState,
    Timeouts,
};
use crate::engineio::Transport;
use crate::telemetry;
use crate::tls::TlsUpstream;
use crate::upstream::{ConnPool, Peer, ProxyLine};

pub use condition::{Health, ServerCondition};
pub use stats::{Registry, ServerStats, SessionEnd, SessionGuard, Tally, OWN_ANSWERS};

/// One server of a backend, as one routing snapshot sees it.
#[derive(Debug)]
pub struct Server {
    pub id: Arc<str>,
    pub addr: Authority,
    pub weight: u32,
    pub max_connections: Option<u64>,
    /// Live counters, health and state: shared by every snapshot that has this server.
    pub stats: Arc<ServerStats>,
    /// Keep-alive connections for ordinary requests (new with each snapshot).
    pub pool: ConnPool,
    /// The backend's TLS, when its servers speak only TLS.
    pub tls: Option<Arc<TlsUpstream>>,
    /// The PROXY header the backend sends its servers.
    pub send_proxy: Option<SendProxy>,
    /// Every sid it generates starts with this (`sid_prefix`).
    pub sid_prefix: Option<Arc<str>>,
}

impl Server {
    /// Whether a new session may be placed here now: ready, healthy, not removed, not
    /// full.
    pub fn accepts_new_sessions(&self) -> bool {
        self.stats.condition.accepts_new_sessions()
            && self.max_connections.is_none_or(|m| self.stats.load() < m)
    }

    /// Whether requests of sessions already pinned here may still be sent.
    pub fn serves_pinned(&self) -> bool {
        self.stats.condition.serves_pinned()
    }

    /// How to reach it.
    pub fn peer(&self) -> Peer<'_> {
        Peer {
            id: &self.id,
            addr: &self.addr,
            tls: self.tls.as_deref(),
            proxy: self.send_proxy.map(|version| ProxyLine {
                version,
                endpoints: None,
            }),
            meters: &self.stats.metrics.upstream,
        }
    }
}

impl Candidate for Server {
    fn accepts_new_sessions(&self) -> bool {
        Server::accepts_new_sessions(self)
    }

    fn load(&self) -> u64 {
        self.stats.load()
    }

    fn up_for(&self) -> Option<Duration> {
        self.stats.condition.up_for()
    }

    fn avoided(&self) -> bool {
        self.stats.condition.is_avoided()
    }
}

/// One backend's servers and how new sessions are placed on them.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    /// The configured (and discovered) servers placement chooses from, then retired
    /// ones, kept only for the sessions still pinned to them.
    pub servers: Vec<Server>,
    by_id: AHashMap<Arc<str>, usize>,
    /// `(sid_prefix, index in servers)`, configured servers first: empty unless some
    /// server has one, so a backend without prefixes pays one length check.
    prefixes: Vec<(Arc<str>, usize)>,
    placer: Placer,
    pub timeouts: Timeouts,
    pub health: Option<HealthConfig>,
    max_connections: Option<u64>,
    /// The cap on new sessions per second (`handshakes:`) and its bucket, when set.
    session_rate: Option<(Rate, Arc<SessionRate>)>,
    /// TLS to the servers, when the backend asks for it.
    pub tls: Option<Arc<TlsUpstream>>,
    /// The PROXY header each connection to a server opens with.
    pub send_proxy: Option<SendProxy>,
    pub metrics: BackendMetrics,
}

/// The backend's metric handles (see [`stats::ServerMetrics`] for why handles).
pub struct BackendMetrics {
    pub request_duration: metrics::Histogram,
    /// By transport (polling, websocket), then result (ok, refused, limited, failed).
    handshakes: [[metrics::Counter; 4]; 2],
    /// New sessions through the backend's `handshakes` cap: admitted, deferred.
    admission: [metrics::Counter; 2],
}

impl std::fmt::Debug for BackendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendMetrics")
    }
}

const HANDSHAKE_RESULTS: [&str; 4] = ["ok", "refused", "limited", "failed"];

impl BackendMetrics {
    fn new(backend: &str) -> BackendMetrics {
        let b = backend.to_owned();
        // Counted where they happen (rare); registered here so they exist at 0.
        for cause in ["unknown", "server_gone", "server_down", "maint"] {
            metrics::counter!(telemetry::SID_UNKNOWN, "backend" => b.clone(), "cause" => cause)
                .increment(0);
        }
        BackendMetrics {
            request_duration: metrics::histogram!(telemetry::HTTP_REQUEST_DURATION, "backend" => b.clone()),
            handshakes: [Transport::Polling, Transport::WebSocket].map(|t| {
                HANDSHAKE_RESULTS.map(|r| {
                    metrics::counter!(telemetry::HANDSHAKES, "backend" => b.clone(),
                        "transport" => t.as_str(), "result" => r)
                })
            }),
            admission: ["admitted", "deferred"].map(|r| {
                metrics::counter!(telemetry::SESSION_ADMISSION, "backend" => b.clone(), "result" => r)
            }),
        }
    }

    /// Counts a new session asked for on `transport`, with its `result`.
    pub fn handshake(&self, transport: Transport, result: &str) {
        let t = usize::from(transport == Transport::WebSocket);
        let r = HANDSHAKE_RESULTS
            .iter()
            .position(|x| *x == result)
            .unwrap_or(3);
        self.handshakes[t][r].increment(1);
    }
}

impl Backend {
    /// `servers`: those in the config (and discovery), then `retired` ones, which left
    /// the config but still carry sessions: reachable for those, never placed on.
    pub fn build(
        cfg: &BackendConfig,
        servers: &[ServerConfig],
        retired: &[ServerConfig],
        registry: &Registry,
        tls: Option<Arc<TlsUpstream>>,
    ) -> Backend {
        let name: Arc<str> = cfg.name.as_str().into();
        let to_server = |s: &ServerConfig| {
            let stats = registry.stats(&name, &s.id);
            Server {
                id: Arc::clone(&stats.id),
                addr: s.addr.clone(),
                weight: s.weight.max(1),
                max_connections: s.max_connections,
                stats,
                pool: ConnPool::default(),
                tls: tls.clone(),
                send_proxy: cfg.proxy_protocol,
                sid_prefix: s.sid_prefix.as_deref().map(Arc::from),
            }
        };
        let mut list: Vec<Server> = servers.iter().map(to_server).collect();
        let ids: Vec<(&str, u32)> = list.iter().map(|s| (&*s.id, s.weight)).collect();
        let policy = match (cfg.balance, cfg.placement) {
            (Balance::RoundRobin, _) => Policy::RoundRobin,
            (Balance::Sticky, Placement::LeastSessions) => Policy::LeastSessions,
            (Balance::Sticky, Placement::Hash) => Policy::Hash {
                load_factor: cfg.load_factor,
            },
        };
        let placer = Placer::new(&ids, policy, cfg.slow_start);
        list.extend(retired.iter().map(to_server));
        let prefixes = list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((Arc::clone(s.sid_prefix.as_ref()?), i)))
            .collect();
        Backend {
            prefixes,
            by_id: list
                .iter()
                .enumerate()
                .map(|(i, s)| (Arc::clone(&s.id), i))
                .collect(),
            servers: list,
            name,
            placer,
            timeouts: cfg.timeouts.clone(),
            health: cfg.health.clone(),
            max_connections: cfg.max_connections,
            session_rate: cfg
                .handshakes
                .map(|r| (r, registry.session_rate(&cfg.name))),
            tls,
            send_proxy: cfg.proxy_protocol,
            metrics: BackendMetrics::new(&cfg.name),
        }
    }

    /// The server whose `sid_prefix` starts `sid`. A sid with a prefix no server here
    /// has is not matched (it is then as unknown as any sid never learned).
    pub fn by_sid_prefix(&self, sid: &str) -> Option<&Server> {
        self.prefixes
            .iter()
            .find(|(p, _)| sid.starts_with(&**p))
            .map(|(_, i)| &self.servers[*i])
    }

    /// Lets a new session (a handshake: a polling request or a WebSocket upgrade without
    /// sid) through the backend's `handshakes` cap, or says how long until one may come.
    /// One compare-and-swap and one counter; requests of existing sessions never come
    /// here.
    pub fn admit_session(&self) -> Result<(), Duration> {
        let verdict = match &self.session_rate {
            Some((rate, bucket)) => bucket.admit(rate),
            None => Ok(()),
        };
        self.metrics.admission[usize::from(verdict.is_err())].increment(1);
        verdict
    }

    /// The cap on new sessions per second and the tokens its bucket holds now.
    pub fn session_budget(&self) -> Option<(Rate, f64)> {
        self.session_rate
            .as_ref()
            .map(|(rate, bucket)| (*rate, bucket.tokens(rate)))
    }

    /// How new sessions are placed here.
    pub fn policy(&self) -> Policy {
        self.placer.policy()
    }

    /// Why no server can take a new session now, for the log of a request refused for
    /// it. Walks the servers: called only when placement found none.
    pub fn no_room(&self) -> NoRoom {
        if let Some(max) = self.max_connections.filter(|_| self.is_full()) {
            return NoRoom::BackendFull(max);
        }
        let mut tally = [0usize; Reason::ALL.len()];
        let servers = self.placeable();
        for s in servers {
            let c = &s.stats.condition;
            let why = match (c.state(), c.health()) {
                (ServerState::Maint, _) => Reason::Maint,
                (ServerState::Draining, _) => Reason::Draining,
                _ if c.is_removed() => Reason::Draining,
                (_, Health::Down) => Reason::Down,
                (_, Health::Unknown) => Reason::Unchecked,
                _ if !s.accepts_new_sessions() => Reason::Full,
                // It could take one: it was just tried and failed (a retry), or it
                // changed while placement walked.
                _ => Reason::Tried,
            };
            tally[why as usize] += 1;
        }
        NoRoom::Servers {
            total: servers.len(),
            tally,
        }
    }

    /// The servers placement may choose from (retired ones excluded).
    pub fn placeable(&self) -> &[Server] {
        &self.servers[..self.placer.server_count().min(self.servers.len())]
    }

    /// Whether the backend as a whole is at its `max_connections`.
    pub fn is_full(&self) -> bool {
        self.max_connections
            .is_some_and(|m| self.servers.iter().map(|s| s.stats.load()).sum::<u64>() >= m)
    }

    pub fn server(&self, id: &str) -> Option<&Server> {
        self.by_id.get(id).map(|i| &self.servers[*i])
    }

    /// Whether `server` may take a new session a key (a cookie) names: open, not avoided,
    /// below its share under bounded-load hashing, and the backend not full.
    pub fn welcomes(&self, server: &Server) -> bool {
        let Some(&i) = self.by_id.get(&server.id) else {
            return false;
        };
        !self.is_full()
            && server.accepts_new_sessions()
            && !server.stats.condition.is_avoided()
            && self.placer.under_cap(&self.servers, i)
    }

    /// The server for a new session with placement hash `key`, skipping servers in
    /// `exclude` (tried already and failed).
    pub fn place(&self, key: u64, exclude: &[usize]) -> Option<(usize, &Server)> {
        if self.is_full() {
            return None;
        }
        self.placer
            .place(&self.servers, key, exclude)
            .map(|i| (i, &self.servers[i]))
    }
}

/// Why a backend could place no new session (see [`Backend::no_room`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// The backend as a whole is at its `max_connections`.
    BackendFull(u64),
    /// Each server's reason, counted: `tally[r as usize]` servers for [`Reason`] `r`.
    Servers {
        total: usize,
        tally: [usize; Reason::ALL.len()],
    },
}

/// Why one server could take no new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Down,
    Unchecked,
    Draining,
    Maint,
    Full,
    Tried,
}

impl Reason {
    const ALL: [Reason; 6] = [
        Reason::Down,
        Reason::Unchecked,
        Reason::Draining,
        Reason::Maint,
        Reason::Full,
        Reason::Tried,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Reason::Down => "down",
            Reason::Unchecked => "awaiting a first good health check",
            Reason::Draining => "draining",
            Reason::Maint => "in maintenance",
            Reason::Full => "at max_connections",
            Reason::Tried => "tried and unreachable",
        }
    }
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (total, tally) = match self {
            NoRoom::BackendFull(max) => {
                return write!(f, "the backend is at its max_connections ({max})")
            }
            NoRoom::Servers { total: 0, .. } => return f.write_str("the backend has no servers"),
            NoRoom::Servers { total, tally } => (*total, tally),
        };
        let present: Vec<(Reason, usize)> = Reason::ALL
            .iter()
            .map(|r| (*r, tally[*r as usize]))
            .filter(|(_, n)| *n > 0)
            .collect();
        match present.as_slice() {
            [(r, n)] if *n == total && total == 1 => write!(f, "its one server is {}", r.as_str()),
            [(r, n)] if *n == total => write!(f, "all {total} servers are {}", r.as_str()),
            _ => {
                write!(f, "of {total} servers, ")?;
                for (i, (r, n)) in present.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{n} {}", r.as_str())?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(yaml: &str) -> Backend {
        let config = crate::config::parse(yaml, std::path::Path::new("<t>")).unwrap();
        let b = &config.backends[0];
        Backend::build(b, &b.servers, &[], &Registry::default(), None)
    }

    #[test]
    fn sid_prefixes_find_their_server_retired_ones_included() {
        let y = "listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n    servers:\n      - { id: a, addr: \"127.0.0.1:1\", sid_prefix: \"n1-\" }\n      - { id: c, addr: \"127.0.0.1:2\" }\n";
        let config = crate::config::parse(y, std::path::Path::new("<t>")).unwrap();
        let cfg = &config.backends[0];
        let mut retired = cfg.servers[0].clone();
        retired.id = "old".into();
        retired.sid_prefix = Some("n0-".into());
        let b = Backend::build(cfg, &cfg.servers, &[retired], &Registry::default(), None);
        let id = |sid: &str| b.by_sid_prefix(sid).map(|s| s.id.to_string());
        assert_eq!(id("n1-abc").as_deref(), Some("a"));
        assert_eq!(id("n0-abc").as_deref(), Some("old"));
        assert_eq!(id("n2-abc"), None);
        assert_eq!(id("n1"), None);
        assert_eq!(id(""), None);
    }

    #[test]
    fn full_servers_and_a_full_backend_take_no_new_sessions() {
        let backend = backend("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n    max_connections: 3\n    servers:\n      - { id: a, addr: \"127.0.0.1:1\", max_connections: 1 }\n      - { id: c, addr: \"127.0.0.1:2\" }\n");
        let mut held = Vec::new();
        for _ in 0..3 {
            let (_, s) = backend.place(7, &[]).expect("room left");
            held.push(SessionGuard::pending(Arc::clone(&s.stats)));
        }
        assert_eq!(
            backend.server("a").unwrap().stats.load(),
            1,
            "a is full at 1"
        );
        assert!(backend.place(7, &[]).is_none(), "backend full at 3");
        held.pop();
        assert_eq!(&*backend.place(7, &[]).unwrap().1.id, "c");
    }

    #[test]
    fn a_backend_without_room_says_why() {
        let two = "listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n    servers:\n      - { id: a, addr: \"127.0.0.1:1\" }\n      - { id: c, addr: \"127.0.0.1:2\" }\n";
        let b = backend(two);
        let (a, c) = (b.server("a").unwrap(), b.server("c").unwrap());
        a.stats.condition.set_health(Health::Down);
        c.stats.condition.set_health(Health::Down);
        assert!(b.place(1, &[]).is_none());
        assert_eq!(b.no_room().to_string(), "all 2 servers are down");
        let b = backend(two);
        let (a, c) = (b.server("a").unwrap(), b.server("c").unwrap());
        a.stats.condition.set_state(ServerState::Draining);
        c.stats.condition.set_state(ServerState::Maint);
        assert_eq!(
            b.no_room().to_string(),
            "of 2 servers, 1 draining, 1 in maintenance"
        );
        let b = backend("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n    max_connections: 1\n    servers:\n      - { id: a, addr: \"127.0.0.1:1\" }\n");
        let _held = SessionGuard::pending(Arc::clone(&b.server("a").unwrap().stats));
        assert_eq!(
            b.no_room().to_string(),
            "the backend is at its max_connections (1)"
        );
    }

    #[test]
    fn returning_server_slow_starts() {
        let backend = backend("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n    slow_start: 60s\n    servers:\n      - { id: a, addr: \"127.0.0.1:1\" }\n      - { id: c, addr: \"127.0.0.1:2\" }\n");
        let on_c = |backend: &Backend| {
            (0..400u64)
                .filter(|k| {
                    &*backend
                        .place(k.wrapping_mul(0x9e3779b97f4a7c15), &[])
                        .unwrap()
                        .1
                        .id
                        == "c"
                })
                .count()
        };
        let before = on_c(&backend);
        assert!(before > 100, "both take sessions at first: {before}/400");
        let c = &backend.server("c").unwrap().stats.condition;
        c.set_health(Health::Down);
        c.set_health(Health::Up);
        let after = on_c(&backend);
        assert!(after < 20, "just back, c gets a trickle: {after}/400");
    }
}
