//! Per-server counters that must outlive any one routing snapshot.
//!
//! A reload or a health flip replaces the snapshot, but a server that stays must keep
//! its live session counts (placement reads them) and every session pinned to it. So
//! counters live in an `Arc<ServerStats>` owned by the [`Registry`], keyed by
//! (backend, server id), and each snapshot merely points at them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::AHashMap;
use metrics::{Counter, Gauge, Histogram};

use super::ServerCondition;
use crate::admission::SessionRate;
use crate::engineio::Transport;
use crate::telemetry;

/// Why a session ended, as the metrics say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client closed its WebSocket.
    ClientClosed,
    /// The server closed the WebSocket.
    ServerClosed,
    /// Nothing was heard within the session's liveness window: a polling client that
    /// went away, or a silent tunnel.
    IdleTimeout,
    /// Its server was found down.
    ServerDown,
    /// Its server was put in maintenance.
    Maint,
    /// tether shut down before it ended.
    Shutdown,
    /// Moved to another server by a migration (its node keeps it for recovery).
    Migrated,
}

impl SessionEnd {
    const ALL: [SessionEnd; 7] = [
        SessionEnd::ClientClosed,
        SessionEnd::ServerClosed,
        SessionEnd::IdleTimeout,
        SessionEnd::ServerDown,
        SessionEnd::Maint,
        SessionEnd::Shutdown,
        SessionEnd::Migrated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::ClientClosed => "client_closed",
            SessionEnd::ServerClosed => "server_closed",
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::ServerDown => "server_down",
            SessionEnd::Maint => "maint",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Migrated => "migrated",
        }
    }
}

/// Kinds of [`telemetry::CONNECT_ERRORS`], as `UpstreamError::connect_kind` names them.
const CONNECT_KINDS: [&str; 5] = ["refused", "timeout", "tls", "local", "other"];

/// Method classes and status classes of [`telemetry::HTTP_REQUESTS`].
const METHODS: [&str; 3] = ["GET", "POST", "other"];
const STATUSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The server's metric handles, registered once when tether first meets the server, so
/// the request path increments an atomic instead of building labels per request.
pub struct ServerMetrics {
    requests: [[Counter; 5]; 3],
    upgrades_ok: Counter,
    upgrades_failed: Counter,
    /// The same events, readable: the dashboard's history samples these.
    pub tally: Tally,
    pub tunnels: Gauge,
    pub bytes_to_server: Counter,
    pub bytes_to_client: Counter,
    pub frames_to_server: Counter,
    pub frames_to_client: Counter,
    /// Connections to the server and requests on them.
    pub upstream: crate::upstream::Meters,
    pub probe_duration: Histogram,
    ended: [Counter; 7],
    session_duration: Histogram,
    connect_errors: [Counter; 5],
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerMetrics")
    }
}

impl ServerMetrics {
    fn new(backend: &str, server: &str) -> ServerMetrics {
        let (b, s) = (backend.to_owned(), server.to_owned());
        let counter = |name: &'static str, label: &'static str, value: &'static str| metrics::counter!(name, "backend" => b.clone(), "server" => s.clone(), label => value);
        ServerMetrics {
            requests: METHODS.map(|m| {
                STATUSES.map(|st| {
                    metrics::counter!(telemetry::HTTP_REQUESTS, "backend" => b.clone(),
                        "server" => s.clone(), "method" => m, "status" => st)
                })
            }),
            upgrades_ok: counter(telemetry::UPGRADES, "result", "succeeded"),
            upgrades_failed: counter(telemetry::UPGRADES, "result", "failed"),
            tally: Tally::default(),
            tunnels: metrics::gauge!(telemetry::TUNNELS, "backend" => b.clone(), "server" => s.clone()),
            bytes_to_server: counter(telemetry::TUNNEL_BYTES, "direction", "to_server"),
            bytes_to_client: counter(telemetry::TUNNEL_BYTES, "direction", "to_client"),
            frames_to_server: counter(telemetry::TUNNEL_FRAMES, "direction", "to_server"),
            frames_to_client: counter(telemetry::TUNNEL_FRAMES, "direction", "to_client"),
            upstream: crate::upstream::Meters {
                connect_duration: metrics::histogram!(telemetry::CONNECT_DURATION, "backend" => b.clone()),
                reused: counter(telemetry::UPSTREAM_REQUESTS, "connection", "reused"),
                new: counter(telemetry::UPSTREAM_REQUESTS, "connection", "new"),
            },
            probe_duration: metrics::histogram!(telemetry::HEALTH_PROBE_DURATION,
                "backend" => b.clone(), "server" => s.clone()),
            ended: SessionEnd::ALL.map(|c| counter(telemetry::SESSIONS_ENDED, "cause", c.as_str())),
            // Counted where they happen (rare); registered here so they exist at 0.
            connect_errors: CONNECT_KINDS.map(|k| counter(telemetry::CONNECT_ERRORS, "kind", k)),
            session_duration: metrics::histogram!(telemetry::SESSION_DURATION, "backend" => b.clone()),
        }
    }

    /// Counts a connection to this server that could not be opened, by `kind`.
    pub fn connect_error(&self, kind: &str) {
        let i = CONNECT_KINDS.iter().position(|k| *k == kind).unwrap_or(4);
        self.connect_errors[i].increment(1);
    }

    /// Counts a request answered by this server with `status`.
    pub fn request(&self, method: &http::Method, status: http::StatusCode) {
        let class = status_class(status);
        self.requests[method_class(method)][class].increment(1);
        self.tally.request(class);
    }

    /// Counts a session's attempt to move from polling to a WebSocket on this server.
    pub fn upgrade(&self, succeeded: bool) {
        let (counter, tally) = match succeeded {
            true => (&self.upgrades_ok, &self.tally.upgrades_ok),
            false => (&self.upgrades_failed, &self.tally.upgrades_failed),
        };
        counter.increment(1);
        tally.fetch_add(1, Ordering::Relaxed);
    }
}

/// Running totals of the events the dashboard charts. The Prometheus handles are
/// write-only, so these few are kept a second time as plain atomics the history sampler
/// reads every few seconds.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: AtomicU64,
    /// Answers with a 5xx status.
    pub server_errors: AtomicU64,
    pub upgrades_ok: AtomicU64,
    pub upgrades_failed: AtomicU64,
    /// Sessions whose handshake this server answered.
    pub sessions_started: AtomicU64,
}

impl Tally {
    /// Counts a request whose status is of class `class` (an index in [`STATUSES`]).
    pub fn request(&self, class: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if class == 4 {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Requests tether answered itself (no server chosen: refused, limited, no server up),
/// for the dashboard's history.
pub static OWN_ANSWERS: Tally = Tally {
    requests: AtomicU64::new(0),
    server_errors: AtomicU64::new(0),
    upgrades_ok: AtomicU64::new(0),
    upgrades_failed: AtomicU64::new(0),
    sessions_started: AtomicU64::new(0),
};

/// Index of a method in [`METHODS`].
pub fn method_class(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::POST => 1,
        _ => 2,
    }
}

/// Index of a status in [`STATUSES`] (anything out of range counts as 5xx).
pub fn status_class(status: http::StatusCode) -> usize {
    match status.as_u16() / 100 {
        n @ 1..=5 => usize::from(n - 1),
        _ => 4,
    }
}

/// The label of a method class and of a status class.
pub fn class_labels(method: usize, status: usize) -> (&'static str, &'static str) {
    (METHODS[method.min(2)], STATUSES[status.min(4)])
}

/// Live counters of one server. Signed so that a decrement racing a reload can never
/// wrap around; readers clamp at zero.
#[derive(Debug)]
pub struct ServerStats {
    pub backend: Arc<str>,
    pub id: Arc<str>,
    polling: AtomicI64,
    websocket: AtomicI64,
    /// Handshakes placed on this server whose response has not come back yet. Counted
    /// as load so a burst of simultaneous handshakes spreads instead of piling onto the
    /// server that looked emptiest when the burst began.
    pending: AtomicI64,
    /// Health and operator state.
    pub condition: ServerCondition,
    /// Its sessions being moved elsewhere (`migrate`).
    pub migration: super::migration::Migration,
    pub metrics: ServerMetrics,
}

impl ServerStats {
    pub fn new(backend: Arc<str>, id: Arc<str>) -> Self {
        ServerStats {
            metrics: ServerMetrics::new(&backend, &id),
            backend,
            id,
            polling: AtomicI64::new(0),
            websocket: AtomicI64::new(0),
            pending: AtomicI64::new(0),
            condition: ServerCondition::default(),
            migration: Default::default(),
        }
    }

    /// Live sessions using `transport` now.
    pub fn sessions(&self, transport: Transport) -> u64 {
        self.counter(transport).load(Ordering::Relaxed).max(0) as u64
    }

    /// What placement compares: live sessions plus handshakes in flight.
    pub fn load(&self) -> u64 {
        let sum = self.polling.load(Ordering::Relaxed)
            + self.websocket.load(Ordering::Relaxed)
            + self.pending.load(Ordering::Relaxed);
        sum.max(0) as u64
    }

    /// Counts a session of this server that ended, after `lived`.
    pub fn session_ended(&self, cause: SessionEnd, lived: Duration) {
        let i = SessionEnd::ALL
            .iter()
            .position(|c| *c == cause)
            .unwrap_or(0);
        self.metrics.ended[i].increment(1);
        self.metrics.session_duration.record(lived.as_secs_f64());
    }

    /// Why a session of this server is over when its server no longer serves it.
    pub fn unserved_end(&self) -> SessionEnd {
        if self.condition.state() == crate::config::ServerState::Maint {
            SessionEnd::Maint
        } else {
            SessionEnd::ServerDown
        }
    }

    pub fn add_session(&self, transport: Transport, delta: i64) {
        self.counter(transport).fetch_add(delta, Ordering::Relaxed);
    }

    fn counter(&self, transport: Transport) -> &AtomicI64 {
        match transport {
            Transport::Polling => &self.polling,
            Transport::WebSocket => &self.websocket,
        }
    }
}

/// Counts a session against its server for as long as the guard lives (a WebSocket
/// tunnel without sid, a handshake in flight).
#[derive(Debug)]
pub struct SessionGuard {
    stats: Arc<ServerStats>,
    kind: GuardKind,
}

#[derive(Debug, Clone, Copy)]
enum GuardKind {
    Session(Transport),
    Pending,
}

impl SessionGuard {
    pub fn session(stats: Arc<ServerStats>, transport: Transport) -> Self {
        stats.add_session(transport, 1);
        SessionGuard {
            stats,
            kind: GuardKind::Session(transport),
        }
    }

    pub fn pending(stats: Arc<ServerStats>) -> Self {
        stats.pending.fetch_add(1, Ordering::Relaxed);
        SessionGuard {
            stats,
            kind: GuardKind::Pending,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        match self.kind {
            GuardKind::Session(t) => self.stats.add_session(t, -1),
            GuardKind::Pending => {
                self.stats.pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// (backend name, server id): a server's identity across config versions.
type ServerKey = (Arc<str>, Arc<str>);

/// Hands out the one `ServerStats` of each (backend, server id), so every snapshot built
/// from any config version shares them.
#[derive(Debug, Default)]
pub struct Registry {
    stats: Mutex<AHashMap<ServerKey, Arc<ServerStats>>>,
    /// Each backend's budget of new sessions (`handshakes:`), kept across snapshots so
    /// a reload in a storm does not hand out a fresh burst.
    session_rates: Mutex<AHashMap<Arc<str>, Arc<SessionRate>>>,
}

impl Registry {
    pub fn stats(&self, backend: &str, id: &str) -> Arc<ServerStats> {
        self.get_or_create(backend, id).0
    }

    /// The server's stats, and whether they were created by this call (a server tether
    /// has not seen before).
    pub fn get_or_create(&self, backend: &str, id: &str) -> (Arc<ServerStats>, bool) {
        let mut map = tether_kit::lock(&self.stats);
        if let Some(s) = map.get(&(Arc::from(backend), Arc::from(id))) {
            return (Arc::clone(s), false);
        }
        let key: ServerKey = (backend.into(), id.into());
        let stats = Arc::new(ServerStats::new(Arc::clone(&key.0), Arc::clone(&key.1)));
        map.insert(key, Arc::clone(&stats));
        (stats, true)
    }

    /// The backend's budget of new sessions, the same one for every snapshot.
    pub fn session_rate(&self, backend: &str) -> Arc<SessionRate> {
        let mut map = tether_kit::lock(&self.session_rates);
        Arc::clone(map.entry(Arc::from(backend)).or_default())
    }

    /// Forgets servers for which `keep` is false and that nothing references any more
    /// (no snapshot, no session), so DNS churn does not grow the map for ever.
    pub fn prune(&self, keep: impl Fn(&ServerStats) -> bool) {
        let mut map = tether_kit::lock(&self.stats);
        map.retain(|_, s| keep(s) || Arc::strong_count(s) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_returns_the_same_counters_for_the_same_server() {
        let reg = Registry::default();
        let a = reg.stats("sockets", "node-1");
        let _g = SessionGuard::session(a.clone(), Transport::WebSocket);
        assert_eq!(reg.stats("sockets", "node-1").load(), 1);
        assert_eq!(reg.stats("other", "node-1").load(), 0);
    }

    #[test]
    fn guards_count_while_alive() {
        let stats = Arc::new(ServerStats::new("b".into(), "s".into()));
        let p = SessionGuard::pending(stats.clone());
        let w = SessionGuard::session(stats.clone(), Transport::WebSocket);
        assert_eq!(stats.load(), 2);
        assert_eq!(stats.sessions(Transport::WebSocket), 1);
        drop(p);
        drop(w);
        assert_eq!(stats.load(), 0);
    }
}
