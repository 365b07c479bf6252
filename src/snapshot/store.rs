//! The store of routing state: the current [`Snapshot`] behind one `ArcSwap`, and what
//! outlives every snapshot — the per-server counters ([`Registry`]), the sid table, and
//! the sources a snapshot is built from (the last good config, what DNS discovery found,
//! servers that left the config but still carry sessions).
//!
//! Every change (a reload, a discovery answer, a drained server dropped) rebuilds the
//! snapshot under one lock and swaps it in; the new snapshot is returned, so the caller
//! (the runtime) can bring what watches servers (health checks) in line with it.

use std::sync::{Arc, Mutex};

use ahash::AHashMap;
use arc_swap::ArcSwap;
use tether_kit::lock;

use super::Snapshot;
use crate::admission::Admission;
use crate::affinity::SidTable;
use crate::backends::{Backend, Health, Registry, ServerStats};
use crate::config::{BackendConfig, Config, ServerConfig, ServerState};
use crate::fleet::Fleet;
use crate::tls::{TlsError, TlsUpstream};

/// Why a config could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("backend {backend}: upstream TLS: {cause}")]
    UpstreamTls {
        backend: String,
        cause: Box<TlsError>,
    },
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
fn tls_clients(config: &Config) -> Result<AHashMap<String, Arc<TlsUpstream>>, StoreError> {
    let mut out = AHashMap::new();
    for b in &config.backends {
        if let Some(t) = &b.tls {
            let client = TlsUpstream::new(t).map_err(|cause| StoreError::UpstreamTls {
                backend: b.name.clone(),
                cause: Box::new(cause),
            })?;
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

    /// The snapshot these sources describe now.
    fn snapshot(&self, registry: &Registry) -> Snapshot {
        let backends = self
            .config
            .backends
            .iter()
            .map(|b| {
                let retired: Vec<ServerConfig> = self
                    .retired
                    .iter()
                    .filter(|(name, _)| *name == b.name)
                    .map(|(_, s)| s.clone())
                    .collect();
                let tls = self.tls.get(&b.name).cloned();
                Backend::build(b, &self.servers_of(b), &retired, registry, tls)
            })
            .collect();
        Snapshot::new(&self.config, backends)
    }
}

/// What outlives every snapshot: the current one, the counters, the sid table, the
/// per-client state.
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<Snapshot>,
    registry: Registry,
    pub sids: Arc<SidTable>,
    /// The link to the other instances of the fleet (idle without `registry:`).
    pub fleet: Arc<Fleet>,
    /// What each client address holds and has spent (its limits are the snapshot's).
    pub clients: Arc<Admission>,
    sources: Mutex<Sources>,
}

impl Store {
    /// Fails only when the config's upstream TLS cannot be set up (a CA file).
    pub fn new(config: &Config) -> Result<Store, StoreError> {
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
        let snapshot = sources.snapshot(&registry);
        let capacity = config.backends.iter().map(|b| b.sessions.capacity).sum();
        let fleet = Arc::new(Fleet::default());
        Ok(Store {
            current: ArcSwap::from_pointee(snapshot),
            registry,
            sids: Arc::new(SidTable::with_fleet(capacity, Arc::clone(&fleet))),
            fleet,
            clients: Arc::default(),
            sources: Mutex::new(sources),
        })
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
        lock(&self.sources).config.clone()
    }

    /// Puts a new config in force. Servers that stay keep their counters, health and
    /// sessions; new ones with health checks wait for their first good probe; removed
    /// ones drain.
    pub fn apply(&self, config: &Config) -> Result<Arc<Snapshot>, StoreError> {
        let prepared = self.prepare(config)?;
        Ok(self.commit(config, prepared))
    }

    /// The part of applying a config that can fail (reading CA files), done before
    /// anything changes.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, StoreError> {
        Ok(Prepared(tls_clients(config)?))
    }

    /// Puts a prepared config in force; cannot fail.
    pub fn commit(&self, config: &Config, prepared: Prepared) -> Arc<Snapshot> {
        let tls = prepared.0;
        let mut sources = lock(&self.sources);
        sources.config = config.clone();
        sources.tls = tls;
        self.rebuild(&mut sources)
    }

    /// Replaces what DNS discovery found for `backend`.
    pub fn set_discovered(&self, backend: &str, servers: Vec<ServerConfig>) -> Arc<Snapshot> {
        let mut sources = lock(&self.sources);
        if servers.is_empty() {
            sources.discovered.remove(backend);
        } else {
            sources.discovered.insert(backend.to_owned(), servers);
        }
        self.rebuild(&mut sources)
    }

    /// Drops retired servers whose last session has ended; the new snapshot if any
    /// was. Cheap when there are none.
    pub fn tick(&self) -> Option<Arc<Snapshot>> {
        let mut sources = lock(&self.sources);
        let idle = |(b, s): &(String, ServerConfig)| self.registry.stats(b, &s.id).load() == 0;
        sources
            .retired
            .iter()
            .any(idle)
            .then(|| self.rebuild(&mut sources))
    }

    fn rebuild(&self, sources: &mut Sources) -> Arc<Snapshot> {
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
                if let Some(old) = stats.condition.apply_config_state(s.state) {
                    tracing::info!(backend = %b.name, server = %s.id, from = %old.as_str(), to = %s.state.as_str(), "server state set by the config file");
                }
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
                        state: ServerState::Draining,
                        max_connections: None,
                        // Its sessions' sids still carry it.
                        sid_prefix: s.sid_prefix.as_deref().map(str::to_owned),
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
        let snapshot = Arc::new(sources.snapshot(&self.registry));
        self.current.store(Arc::clone(&snapshot));
        self.registry.prune(|s| {
            snapshot
                .backend(&s.backend)
                .is_some_and(|b| b.server(&s.id).is_some())
        });
        snapshot
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
    use crate::backends::SessionGuard;
    use crate::engineio::Transport;

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
        let session = SessionGuard::session(Arc::clone(&b_stats), Transport::WebSocket);
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
        let _s = SessionGuard::session(Arc::clone(&before), Transport::Polling);
        store.apply(&config(&["a"])).unwrap();
        store.apply(&config(&["a", "b"])).unwrap();
        let snap = store.load();
        let b = snap.backends[0].server("b").unwrap();
        assert!(Arc::ptr_eq(&b.stats, &before));
        assert!(b.accepts_new_sessions());
        assert_eq!(b.stats.load(), 1);
    }
}
