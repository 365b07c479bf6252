//! DNS discovery: a backend's `discover: { dns: "name:port" }` is resolved on a clock and
//! every address found becomes a server with id `ip:port` — the way a Kubernetes headless
//! Service is consumed. A change in the answer is sent as a [`Discovered`] to whoever owns
//! the routing state (the runtime), which applies it like a reload (servers that stay keep
//! everything; vanished ones drain). A failed lookup sends nothing: a DNS hiccup must not
//! empty a backend.

use std::net::SocketAddr;
use std::sync::Mutex;

use ahash::AHashMap;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DiscoverConfig, ServerConfig, ServerState};

/// What DNS says a backend's servers are now (empty: discovery stopped for it).
#[derive(Debug, Clone)]
pub struct Discovered {
    pub backend: String,
    pub servers: Vec<ServerConfig>,
}

/// Owns one resolver task per backend that asks for discovery.
#[derive(Debug)]
pub struct Discovery {
    tasks: Mutex<AHashMap<String, (DiscoverConfig, CancellationToken)>>,
    found: UnboundedSender<Discovered>,
}

impl Discovery {
    /// Resolvers report their findings on `found`.
    pub fn new(found: UnboundedSender<Discovered>) -> Discovery {
        Discovery {
            tasks: Mutex::default(),
            found,
        }
    }

    /// Starts, restarts or stops resolvers to match `config`. A backend whose discovery
    /// stops gets an empty [`Discovered`], so its discovered servers leave.
    pub fn sync(&self, config: &Config) {
        let mut tasks = tether_kit::lock(&self.tasks);
        let mut wanted = Vec::new();
        for b in &config.backends {
            let Some(d) = &b.discover else { continue };
            wanted.push(b.name.clone());
            if let Some((old, _)) = tasks.get(&b.name) {
                if old == d {
                    continue;
                }
            }
            if let Some((_, stop)) = tasks.remove(&b.name) {
                stop.cancel();
            }
            let stop = CancellationToken::new();
            tokio::spawn(run(
                self.found.clone(),
                b.name.clone(),
                d.clone(),
                stop.clone(),
            ));
            tasks.insert(b.name.clone(), (d.clone(), stop));
        }
        tasks.retain(|name, (_, stop)| {
            let keep = wanted.contains(name);
            if !keep {
                stop.cancel();
                let _ = self.found.send(Discovered {
                    backend: name.clone(),
                    servers: Vec::new(),
                });
            }
            keep
        });
    }

    pub fn stop_all(&self) {
        let mut tasks = tether_kit::lock(&self.tasks);
        for (_, (_, stop)) in tasks.drain() {
            stop.cancel();
        }
    }
}

async fn run(
    found: UnboundedSender<Discovered>,
    backend: String,
    cfg: DiscoverConfig,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<SocketAddr>> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::net::lookup_host(cfg.dns.as_str()) => r,
        };
        let mut addrs: Vec<SocketAddr> = match answer {
            Ok(a) => a.collect(),
            Err(e) => {
                tracing::warn!(%backend, dns = %cfg.dns, error = %e, "DNS discovery failed; keeping the servers found before");
                continue;
            }
        };
        addrs.sort();
        addrs.dedup();
        if last.as_ref() == Some(&addrs) {
            continue;
        }
        tracing::info!(%backend, dns = %cfg.dns, servers = addrs.len(), "DNS discovery changed the servers");
        let news = Discovered {
            backend: backend.clone(),
            servers: servers_of(&addrs),
        };
        if found.send(news).is_err() {
            return; // nobody listens any more: tether is stopping
        }
        last = Some(addrs);
    }
}

/// One server per address, named by it.
pub fn servers_of(addrs: &[SocketAddr]) -> Vec<ServerConfig> {
    addrs
        .iter()
        .filter_map(|a| {
            let addr = a.to_string().parse().ok()?;
            Some(ServerConfig {
                id: a.to_string(),
                addr,
                weight: 1,
                state: ServerState::Ready,
                max_connections: None,
                sid_prefix: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_becomes_a_server_named_by_it() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:3001".parse().unwrap(),
            "[::1]:3001".parse().unwrap(),
        ];
        let servers = servers_of(&addrs);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].id, "127.0.0.1:3001");
        assert_eq!(servers[1].addr.as_str(), "[::1]:3001");
    }
}
