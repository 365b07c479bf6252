//! The routing snapshot: everything a request needs, immutable, behind one `ArcSwap`.
//!
//! A request does one `load()` and sees one consistent world (routes, backends,
//! placement rings, server handles) however many reloads or health flips happen while
//! it runs. Building a snapshot happens off the request path; what must survive a swap
//! (live counters, the sid table) lives outside it, in the [`Store`].

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::AHashMap;
use arc_swap::ArcSwap;
use http::uri::Authority;
use ipnet::IpNet;

use crate::affinity::{CookieSigner, SidTable};
use crate::backends::discovery::Discovery;
use crate::backends::health::HealthChecks;
use crate::backends::{Health, Registry, ServerStats};
use crate::balance::{pick_hash_bounded, pick_least, Ring};
use crate::config::{
    BackendConfig, Balance, Config, HashKey, HealthConfig, HostMatch, Limits, Placement,
    ServerConfig, Timeouts,
};
use crate::proxy::pool::ConnPool;
use crate::tls::TlsUpstream;

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
    pub max_connections: Option<u64>,
    pub stats: Arc<ServerStats>,
    /// Keep-alive connections for ordinary requests (new with each snapshot).
    pub pool: ConnPool,
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
    pub health: Option<HealthConfig>,
    max_connections: Option<u64>,
    slow_start: Option<Duration>,
    /// TLS to the servers, when the backend asks for it.
    pub tls: Option<Arc<TlsUpstream>>,
    round_robin: AtomicUsize,
}

impl Backend {
    /// `servers`: those in the config (the ring is theirs), then `retired` ones, which
    /// left the config but still carry sessions: reachable for those, never placed on.
    fn build(
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
            }
        };
        let mut list: Vec<Server> = servers.iter().map(to_server).collect();
        let ids: Vec<(&str, u32)> = list.iter().map(|s| (&*s.id, s.weight)).collect();
        let ring = Ring::new(&ids);
        let weights = list.iter().map(|s| s.weight).collect();
        list.extend(retired.iter().map(to_server));
        Backend {
            by_id: list
                .iter()
                .enumerate()
                .map(|(i, s)| (Arc::clone(&s.id), i))
                .collect(),
            ring,
            weights,
            servers: list,
            name,
            balance: cfg.balance,
            placement: cfg.placement,
            hash_key: cfg.hash_key.clone(),
            load_factor: cfg.load_factor,
            cookie: cfg.cookie.as_ref().map(|c| CookieSigner::new(c, &cfg.name)),
            timeouts: cfg.timeouts.clone(),
            idle_margin: cfg.sessions.idle_margin,
            health: cfg.health.clone(),
            max_connections: cfg.max_connections,
            slow_start: cfg.slow_start,
            tls,
            round_robin: AtomicUsize::new(0),
        }
    }

    /// The servers placement may choose from (retired ones excluded).
    pub fn placeable(&self) -> &[Server] {
        &self.servers[..self.ring.server_count().min(self.servers.len())]
    }

    /// Whether the backend as a whole is at its `max_connections`.
    pub fn is_full(&self) -> bool {
        self.max_connections
            .is_some_and(|m| self.servers.iter().map(|s| s.stats.load()).sum::<u64>() >= m)
    }

    pub fn server(&self, id: &str) -> Option<&Server> {
        self.by_id.get(id).map(|i| &self.servers[*i])
    }

    /// The server for a new session with placement hash `key`, skipping servers in
    /// `exclude` (tried already and failed).
    pub fn place(&self, key: u64, exclude: &[usize]) -> Option<(usize, &Server)> {
        if self.is_full() {
            return None;
        }
        let base = |i: usize| !exclude.contains(&i) && self.servers[i].accepts_new_sessions();
        // Slow start: a returning server takes each new session with probability equal
        // to its ramp, so its share grows from ~0 to full over the window.
        let ramped = |i: usize| {
            base(i) && {
                let r = self.servers[i].stats.condition.ramp(self.slow_start);
                r >= 1.0 || lottery() < r
            }
        };
        self.place_with(key, ramped)
            .or_else(|| self.place_with(key, base))
            .map(|i| (i, &self.servers[i]))
    }

    fn place_with(&self, key: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let load = |i: usize| self.servers[i].stats.load();
        match self.placement {
            Placement::LeastSessions => pick_least(&self.ring, key, &self.weights, eligible, load),
            Placement::Hash => pick_hash_bounded(
                &self.ring,
                key,
                &self.weights,
                self.load_factor,
                eligible,
                load,
            ),
        }
    }

    /// The next server in turn, for `balance: round_robin`.
    pub fn next_round_robin(&self, exclude: &[usize]) -> Option<(usize, &Server)> {
        let n = self.placeable().len();
        if n == 0 || self.is_full() {
            return None;
        }
        (0..n)
            .map(|_| self.round_robin.fetch_add(1, Ordering::Relaxed) % n)
            .find(|&i| !exclude.contains(&i) && self.servers[i].accepts_new_sessions())
            .map(|i| (i, &self.servers[i]))
    }
}

/// A uniform draw in `[0, 1)` from a per-thread xorshift: slow start needs a cheap
/// coin, not a good one.
fn lottery() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            crate::balance::placement_hash(format!("{:?}", std::thread::current().id()).as_bytes()) | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
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
    fn build(sources: &Sources, registry: &Registry) -> Snapshot {
        let config = &sources.config;
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
                .map(|b| {
                    let servers = sources.servers_of(b);
                    let retired: Vec<ServerConfig> = sources
                        .retired
                        .iter()
                        .filter(|(name, _)| *name == b.name)
                        .map(|(_, s)| s.clone())
                        .collect();
                    let tls = sources.tls.get(&b.name).cloned();
                    Backend::build(b, &servers, &retired, registry, tls)
                })
                .collect(),
            trusted_proxies: config.trusted_proxies.clone(),
            limits: config.limits.clone(),
        }
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| &*b.name == name)
    }

    /// First route matching `host` (port already stripped) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Backend> {
        self.routes
            .iter()
            .find(|r| r.matches(host, path))
            .and_then(|r| self.backends.get(r.backend))
    }
}

/// What a snapshot is built from: the last good config, what DNS discovery found, and
/// servers that left the config but still carry sessions.
#[derive(Debug)]
struct Sources {
    config: Config,
    /// backend name → servers found in DNS.
    discovered: AHashMap<String, Vec<ServerConfig>>,
    /// (backend name, server): removed from the config, draining until their last session
    /// ends.
    retired: Vec<(String, ServerConfig)>,
    /// backend name → its TLS client, built when the config was applied.
    tls: AHashMap<String, Arc<TlsUpstream>>,
}

/// What [`Store::prepare`] built for [`Store::commit`].
#[derive(Debug)]
pub struct Prepared(AHashMap<String, Arc<TlsUpstream>>);

/// Builds the TLS clients a config needs (reading CA files), before anything changes.
fn tls_clients(config: &Config) -> Result<AHashMap<String, Arc<TlsUpstream>>, String> {
    let mut out = AHashMap::new();
    for b in &config.backends {
        if let Some(t) = &b.tls {
            let client = TlsUpstream::new(t)
                .map_err(|e| format!("backend {}: upstream TLS: {e}", b.name))?;
            out.insert(b.name.clone(), Arc::new(client));
        }
    }
    Ok(out)
}

impl Sources {
    /// The servers a backend has now: the file's, then discovered ones with new ids.
    fn servers_of(&self, b: &BackendConfig) -> Vec<ServerConfig> {
        let mut servers = b.servers.clone();
        for s in self.discovered.get(&b.name).into_iter().flatten() {
            if !servers.iter().any(|o| o.id == s.id) {
                servers.push(s.clone());
            }
        }
        servers
    }
}

/// What outlives every snapshot: the current one, the counters, the sid table, and the
/// tasks that watch servers.
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<Snapshot>,
    registry: Registry,
    pub sids: Arc<SidTable>,
    sources: Mutex<Sources>,
    pub health: HealthChecks,
    pub discovery: Discovery,
}

impl Store {
    /// Fails only when the config's upstream TLS cannot be set up (a CA file).
    pub fn new(config: &Config) -> Result<Store, String> {
        let registry = Registry::default();
        let sources = Sources {
            config: config.clone(),
            discovered: AHashMap::new(),
            retired: Vec::new(),
            tls: tls_clients(config)?,
        };
        for b in &config.backends {
            for s in &b.servers {
                registry
                    .stats(&b.name, &s.id)
                    .condition
                    .apply_config_state(s.state);
            }
        }
        let snapshot = Snapshot::build(&sources, &registry);
        let capacity = config.backends.iter().map(|b| b.sessions.capacity).sum();
        let store = Store {
            current: ArcSwap::from_pointee(snapshot),
            registry,
            sids: Arc::new(SidTable::new(capacity)),
            sources: Mutex::new(sources),
            health: HealthChecks::default(),
            discovery: Discovery::default(),
        };
        store.health.sync(&store.load());
        Ok(store)
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for work that spans awaits (a guard
    /// held across awaits would pin arc-swap's debt slots).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a new config in force. Servers that stay keep their counters, health and
    /// sessions; new ones with health checks wait for their first good probe; removed
    /// ones drain.
    pub fn apply(&self, config: &Config) -> Result<(), String> {
        let prepared = self.prepare(config)?;
        self.commit(config, prepared);
        Ok(())
    }

    /// The part of applying a config that can fail (reading CA files), done before
    /// anything changes.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, String> {
        Ok(Prepared(tls_clients(config)?))
    }

    /// Puts a prepared config in force; cannot fail.
    pub fn commit(&self, config: &Config, prepared: Prepared) {
        let tls = prepared.0;
        let mut sources = self.lock();
        sources.config = config.clone();
        sources.tls = tls;
        self.rebuild(&mut sources);
    }

    /// Replaces what DNS discovery found for `backend`.
    pub fn set_discovered(&self, backend: &str, servers: Vec<ServerConfig>) {
        let mut sources = self.lock();
        if servers.is_empty() {
            sources.discovered.remove(backend);
        } else {
            sources.discovered.insert(backend.to_owned(), servers);
        }
        self.rebuild(&mut sources);
    }

    /// Drops retired servers whose last session has ended. Cheap when there are none.
    pub fn tick(&self) {
        let mut sources = self.lock();
        let idle = |(b, s): &(String, ServerConfig)| self.registry.stats(b, &s.id).load() == 0;
        if sources.retired.iter().any(idle) {
            self.rebuild(&mut sources);
        }
    }

    fn rebuild(&self, sources: &mut Sources) {
        let old = self.current.load_full();
        // Who is in the new config (and discovery), per backend.
        let mut present: AHashMap<(String, String), ServerConfig> = AHashMap::new();
        for b in &sources.config.backends {
            for s in sources.servers_of(b) {
                let (stats, created) = self.registry.get_or_create(&b.name, &s.id);
                if created && b.health.is_some() {
                    stats.condition.set_health(Health::Unknown);
                }
                stats.condition.set_removed(false);
                stats.condition.apply_config_state(s.state);
                present.insert((b.name.clone(), s.id.clone()), s);
            }
        }
        // Servers that left: retire them while they carry sessions.
        for b in &old.backends {
            for s in b.placeable() {
                let key = (b.name.to_string(), s.id.to_string());
                let backend_stays = sources.config.backends.iter().any(|c| *c.name == *b.name);
                if present.contains_key(&key) || !backend_stays {
                    continue;
                }
                if sources
                    .retired
                    .iter()
                    .any(|(n, r)| *n == key.0 && r.id == key.1)
                {
                    continue;
                }
                s.stats.condition.set_removed(true);
                tracing::info!(backend = %b.name, server = %s.id, sessions = s.stats.load(), "server removed from the config; draining");
                sources.retired.push((
                    key.0,
                    ServerConfig {
                        id: key.1,
                        addr: s.addr.clone(),
                        weight: s.weight,
                        state: crate::config::ServerState::Draining,
                        max_connections: None,
                    },
                ));
            }
        }
        let registry = &self.registry;
        sources.retired.retain(|(b, s)| {
            if present.contains_key(&(b.clone(), s.id.clone())) {
                return false; // back in the config
            }
            let stats = registry.stats(b, &s.id);
            let carrying = stats.load() > 0;
            if !carrying {
                tracing::info!(backend = %b, server = %s.id, "removed server drained; dropped");
            }
            carrying
        });
        let snapshot = Arc::new(Snapshot::build(sources, &self.registry));
        self.current.store(Arc::clone(&snapshot));
        self.health.sync(&snapshot);
        self.registry.prune(|s| {
            snapshot
                .backend(&s.backend)
                .is_some_and(|b| b.server(&s.id).is_some())
        });
    }

    /// The live state of a server, if the backend has it now.
    pub fn server_stats(&self, backend: &str, id: &str) -> Option<Arc<ServerStats>> {
        let snap = self.load();
        snap.backend(backend)
            .and_then(|b| b.server(id))
            .map(|s| Arc::clone(&s.stats))
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

    fn config(servers: &[&str]) -> Config {
        let mut yaml =
            String::from("listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n    servers:\n");
        for (i, id) in servers.iter().enumerate() {
            yaml.push_str(&format!(
                "      - {{ id: {id}, addr: \"127.0.0.1:{}\" }}\n",
                3000 + i
            ));
        }
        crate::config::parse(&yaml, std::path::Path::new("<test>")).unwrap()
    }

    #[test]
    fn removed_server_drains_its_sessions_then_disappears() {
        let store = Store::new(&config(&["a", "b"])).unwrap();
        let b_stats = Arc::clone(&store.load().backends[0].server("b").unwrap().stats);
        let session = crate::backends::SessionGuard::session(
            Arc::clone(&b_stats),
            crate::engineio::Transport::WebSocket,
        );
        store.apply(&config(&["a"])).unwrap();
        {
            let snap = store.load();
            let backend = &snap.backends[0];
            let b = backend
                .server("b")
                .expect("still reachable for its session");
            assert!(b.serves_pinned() && !b.accepts_new_sessions());
            assert_eq!(backend.placeable().len(), 1);
            for key in 0..50u64 {
                assert_eq!(
                    &*backend.place(key.wrapping_mul(0x9e37), &[]).unwrap().1.id,
                    "a"
                );
            }
        }
        store.tick();
        assert!(store.load().backends[0].server("b").is_some(), "busy: kept");
        drop(session);
        store.tick();
        assert!(
            store.load().backends[0].server("b").is_none(),
            "drained: dropped"
        );
    }

    #[test]
    fn server_back_in_the_config_is_ready_again_with_its_counters() {
        let store = Store::new(&config(&["a", "b"])).unwrap();
        let before = Arc::clone(&store.load().backends[0].server("b").unwrap().stats);
        let _s = crate::backends::SessionGuard::session(
            Arc::clone(&before),
            crate::engineio::Transport::Polling,
        );
        store.apply(&config(&["a"])).unwrap();
        store.apply(&config(&["a", "b"])).unwrap();
        let snap = store.load();
        let b = snap.backends[0].server("b").unwrap();
        assert!(Arc::ptr_eq(&b.stats, &before));
        assert!(b.accepts_new_sessions());
        assert_eq!(b.stats.load(), 1);
    }

    #[test]
    fn full_servers_and_a_full_backend_take_no_new_sessions() {
        let yaml = "listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n    max_connections: 3\n    servers:\n      - { id: a, addr: \"127.0.0.1:1\", max_connections: 1 }\n      - { id: c, addr: \"127.0.0.1:2\" }\n";
        let store =
            Store::new(&crate::config::parse(yaml, std::path::Path::new("<t>")).unwrap()).unwrap();
        let snap = store.load();
        let backend = &snap.backends[0];
        let mut held = Vec::new();
        for _ in 0..3 {
            let (_, s) = backend.place(7, &[]).expect("room left");
            held.push(crate::backends::SessionGuard::pending(Arc::clone(&s.stats)));
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
    fn returning_server_slow_starts() {
        let yaml = "listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n    slow_start: 60s\n    servers:\n      - { id: a, addr: \"127.0.0.1:1\" }\n      - { id: c, addr: \"127.0.0.1:2\" }\n";
        let store =
            Store::new(&crate::config::parse(yaml, std::path::Path::new("<t>")).unwrap()).unwrap();
        let snap = store.load();
        let backend = &snap.backends[0];
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
        let before = on_c(backend);
        assert!(before > 100, "both take sessions at first: {before}/400");
        let c = &backend.server("c").unwrap().stats.condition;
        c.set_health(Health::Down);
        c.set_health(Health::Up);
        let after = on_c(backend);
        assert!(after < 20, "just back, c gets a trickle: {after}/400");
    }
}
