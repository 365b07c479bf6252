//! The routing snapshot: everything a request needs, immutable, behind one `ArcSwap`.
//!
//! A request does one `load()` and sees one consistent world (routes, backends,
//! placement rings, server handles) however many reloads or health flips happen while
//! it runs. Building a snapshot happens off the request path; what must survive a swap
//! (live counters, the sid table) lives outside it, in the [`Store`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ahash::AHashMap;
use arc_swap::ArcSwap;
use http::uri::Authority;
use ipnet::IpNet;

use crate::affinity::{CookieSigner, SidTable};
use crate::backends::{Registry, ServerStats};
use crate::balance::{pick_hash_bounded, pick_least, Ring};
use crate::config::{
    BackendConfig, Balance, Config, HashKey, HostMatch, Limits, Placement, Timeouts,
};

#[derive(Debug)]
pub struct Snapshot {
    pub routes: Vec<Route>,
    pub backends: Vec<Backend>,
    pub trusted_proxies: Vec<IpNet>,
    pub limits: Limits,
}

#[derive(Debug)]
pub struct Route {
    host: Option<HostMatch>,
    path_prefix: String,
    backend: usize,
}

#[derive(Debug)]
pub struct Server {
    pub id: Arc<str>,
    pub addr: Authority,
    pub weight: u32,
    pub stats: Arc<ServerStats>,
}

impl Server {
    /// Whether new sessions may be placed here. Health and drain states come with the
    /// health-check work; static servers always accept.
    pub fn accepts_new_sessions(&self) -> bool {
        true
    }

    /// Whether requests of sessions already pinned here may still be sent.
    pub fn serves_pinned(&self) -> bool {
        true
    }
}

#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    pub servers: Vec<Server>,
    by_id: AHashMap<Arc<str>, usize>,
    ring: Ring,
    weights: Vec<u32>,
    pub balance: Balance,
    pub placement: Placement,
    pub hash_key: HashKey,
    load_factor: f64,
    pub cookie: Option<CookieSigner>,
    pub timeouts: Timeouts,
    pub idle_margin: Duration,
    round_robin: AtomicUsize,
}

impl Backend {
    fn build(cfg: &BackendConfig, registry: &Registry) -> Backend {
        let name: Arc<str> = cfg.name.as_str().into();
        let servers: Vec<Server> = cfg
            .servers
            .iter()
            .map(|s| {
                let stats = registry.stats(&name, &s.id);
                Server {
                    id: Arc::clone(&stats.id),
                    addr: s.addr.clone(),
                    weight: s.weight.max(1),
                    stats,
                }
            })
            .collect();
        let ids: Vec<(&str, u32)> = servers.iter().map(|s| (&*s.id, s.weight)).collect();
        Backend {
            by_id: servers
                .iter()
                .enumerate()
                .map(|(i, s)| (Arc::clone(&s.id), i))
                .collect(),
            ring: Ring::new(&ids),
            weights: servers.iter().map(|s| s.weight).collect(),
            servers,
            name,
            balance: cfg.balance,
            placement: cfg.placement,
            hash_key: cfg.hash_key.clone(),
            load_factor: cfg.load_factor,
            cookie: cfg.cookie.as_ref().map(|c| CookieSigner::new(c, &cfg.name)),
            timeouts: cfg.timeouts.clone(),
            idle_margin: cfg.sessions.idle_margin,
            round_robin: AtomicUsize::new(0),
        }
    }

    pub fn server(&self, id: &str) -> Option<&Server> {
        self.by_id.get(id).map(|i| &self.servers[*i])
    }

    /// The server for a new session with placement hash `key`.
    pub fn place(&self, key: u64) -> Option<&Server> {
        let eligible = |i: usize| self.servers[i].accepts_new_sessions();
        let load = |i: usize| self.servers[i].stats.load();
        let i = match self.placement {
            Placement::LeastSessions => pick_least(&self.ring, key, &self.weights, eligible, load),
            Placement::Hash => pick_hash_bounded(
                &self.ring,
                key,
                &self.weights,
                self.load_factor,
                eligible,
                load,
            ),
        }?;
        self.servers.get(i)
    }

    /// The next server in turn, for `balance: round_robin`.
    pub fn next_round_robin(&self) -> Option<&Server> {
        let n = self.servers.len();
        (0..n)
            .map(|_| self.round_robin.fetch_add(1, Ordering::Relaxed) % n)
            .map(|i| &self.servers[i])
            .find(|s| s.accepts_new_sessions())
    }
}

impl Route {
    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if !path.starts_with(&self.path_prefix) {
            return false;
        }
        match (&self.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(HostMatch::Exact(want)), Some(h)) => h.eq_ignore_ascii_case(want),
            (Some(HostMatch::Suffix(suffix)), Some(h)) => {
                h.len() > suffix.len()
                    && h.is_char_boundary(h.len() - suffix.len())
                    && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl Snapshot {
    pub fn build(config: &Config, registry: &Registry) -> Snapshot {
        Snapshot {
            routes: config
                .routes
                .iter()
                .map(|r| Route {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    backend: r.backend,
                })
                .collect(),
            backends: config
                .backends
                .iter()
                .map(|b| Backend::build(b, registry))
                .collect(),
            trusted_proxies: config.trusted_proxies.clone(),
            limits: config.limits.clone(),
        }
    }

    /// First route matching `host` (port already stripped) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Backend> {
        self.routes
            .iter()
            .find(|r| r.matches(host, path))
            .and_then(|r| self.backends.get(r.backend))
    }
}

/// What outlives every snapshot: the current one, the counters, the sid table.
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<Snapshot>,
    registry: Registry,
    pub sids: Arc<SidTable>,
}

impl Store {
    pub fn new(config: &Config) -> Store {
        let registry = Registry::default();
        let snapshot = Snapshot::build(config, &registry);
        let capacity = config.backends.iter().map(|b| b.sessions.capacity).sum();
        Store {
            current: ArcSwap::from_pointee(snapshot),
            registry,
            sids: Arc::new(SidTable::new(capacity)),
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for work that spans awaits (a guard
    /// held across awaits would pin arc-swap's debt slots).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot from `config` (sharing counters with the old one) and swaps it in.
    pub fn apply(&self, config: &Config) {
        let snapshot = Snapshot::build(config, &self.registry);
        self.current.store(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<HostMatch>, prefix: &str) -> Route {
        Route {
            host,
            path_prefix: prefix.into(),
            backend: 0,
        }
    }

    #[test]
    fn routes_match_host_and_prefix() {
        let r = route(Some(HostMatch::Exact("example.com".into())), "/socket.io/");
        assert!(r.matches(Some("EXAMPLE.com"), "/socket.io/?EIO=4"));
        assert!(!r.matches(Some("example.org"), "/socket.io/"));
        assert!(!r.matches(None, "/socket.io/"));
        assert!(!r.matches(Some("example.com"), "/other"));
        let w = route(Some(HostMatch::Suffix(".example.com".into())), "/");
        assert!(w.matches(Some("a.example.com"), "/x"));
        assert!(!w.matches(Some("example.com"), "/x"));
        assert!(!w.matches(Some("é.example.co"), "/x"));
        assert!(route(None, "/").matches(None, "/anything"));
    }
}
