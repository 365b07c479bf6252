//! One running tether: its bound listeners, its store, and the tasks that serve them.
//!
//! Binding is separate from running so a caller (the CLI, or a test binding port 0)
//! learns the real addresses before traffic flows, and a bind failure is reported
//! before anything starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::listener::{self, tls};
use crate::proxy::Proxy;
use crate::snapshot::Store;

/// How often expired sessions are swept out of the sid table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: tls::TlsError,
    },
}

pub struct Tether {
    config: Config,
    store: Arc<Store>,
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    shutdown: CancellationToken,
}

impl Tether {
    /// Binds every listener of `config` (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Tether, StartError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let tls = match &l.tls {
                Some(t) => Some(tls::acceptor(t).map_err(|source| StartError::Tls {
                    addr: l.bind,
                    source,
                })?),
                None => None,
            };
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| StartError::Bind {
                    addr: l.bind,
                    source,
                })?;
            listeners.push((socket, tls));
        }
        Ok(Tether {
            store: Arc::new(Store::new(&config)),
            config,
            listeners,
            shutdown: CancellationToken::new(),
        })
    }

    /// The bound addresses, in the order of `listeners` in the config.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Cancelling this token stops the listeners and ends [`Tether::run`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled and open connections finished.
    pub async fn run(self) {
        let proxy = Arc::new(Proxy::new(Arc::clone(&self.store)));
        let sweeper = self.store.sids.spawn_sweeper(SWEEP_EVERY);
        let mut tasks = tokio::task::JoinSet::new();
        for (addr, (socket, tls)) in self.local_addrs().into_iter().zip(self.listeners) {
            tracing::info!(%addr, tls = tls.is_some(), "listening");
            tasks.spawn(listener::serve(
                socket,
                tls,
                Arc::clone(&proxy),
                self.config.limits.clone(),
                self.shutdown.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
        sweeper.abort();
    }
}
