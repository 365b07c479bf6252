//! One running tether: its listeners, its store, reloads, and the way it stops.
//!
//! Binding is separate from running so a caller (the CLI, or a test binding port 0)
//! learns the real addresses before traffic flows, and a bind failure is reported
//! before anything starts. After that, everything that changes while tether runs —
//! a reload, a listener added or removed, a certificate replaced — goes through
//! [`Runtime::reload`], and a bad file changes nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ahash::AHashMap;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::watch::{self, Trigger};
use crate::config::{self, AdminConfig, Config, ListenerConfig};
use crate::listener::{self, Lifecycle, Mode};
use crate::proxy::Proxy;
use crate::snapshot::Store;
use crate::tls;

/// How often expired sessions are swept out of the sid table, and drained servers
/// dropped.
const TICK: Duration = Duration::from_secs(1);

/// After the grace, how long closing what is left may take.
const HARD_STOP_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Upstream(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: Box<tls::TlsError>,
    },
}

/// The outcome of the last reload, for `/status`.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// Config versions put in force, the first included.
    pub generation: u64,
    pub at: SystemTime,
    /// `None`: the last attempt succeeded.
    pub error: Option<String>,
    pub succeeded: u64,
    pub failed: u64,
}

/// One bound listener and what controls it.
struct Bound {
    config: ListenerConfig,
    local: SocketAddr,
    mode: Arc<ArcSwap<Mode>>,
    stop_accepting: CancellationToken,
}

struct AdminBound {
    config: AdminConfig,
    local: SocketAddr,
    stop: CancellationToken,
}

/// Everything a running tether shares between its listeners, its reload loop and its
/// admin API.
pub struct Runtime {
    pub store: Arc<Store>,
    pub proxy: Arc<Proxy>,
    source: Option<PathBuf>,
    listeners: Mutex<Vec<Bound>>,
    admin: Mutex<Option<AdminBound>>,
    /// Sockets bound by `Tether::bind` and not yet serving.
    pending: Mutex<Vec<(usize, TcpListener)>>,
    pending_admin: Mutex<Option<TcpListener>>,
    status: Mutex<ReloadStatus>,
    life: Lifecycle,
    reload_tx: mpsc::Sender<Trigger>,
    reload_rx: Mutex<Option<mpsc::Receiver<Trigger>>>,
    /// One reload at a time, whoever asks.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A bound, not yet running tether.
pub struct Tether {
    runtime: Arc<Runtime>,
}

impl Tether {
    /// Binds every listener of `config` (port 0 picks a free port) and the admin
    /// listener. With `config.source` set, `run` also reloads from that file.
    pub async fn bind(config: Config) -> Result<Tether, StartError> {
        let stop_accepting = CancellationToken::new();
        let mut bound = Vec::with_capacity(config.listeners.len());
        let mut sockets = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let (socket, b) = bind_listener(l, &stop_accepting).await?;
            sockets.push((i, socket));
            bound.push(b);
        }
        let (admin, admin_socket) = match &config.admin {
            Some(a) => {
                let socket =
                    TcpListener::bind(a.bind)
                        .await
                        .map_err(|source| StartError::Bind {
                            addr: a.bind,
                            source,
                        })?;
                let local = socket.local_addr().unwrap_or(a.bind);
                (
                    Some(AdminBound {
                        config: a.clone(),
                        local,
                        stop: CancellationToken::new(),
                    }),
                    Some(socket),
                )
            }
            None => (None, None),
        };
        tether_kit::recorder::handle();
        let hard_stop = CancellationToken::new();
        let store = Arc::new(Store::new(&config).map_err(StartError::Upstream)?);
        let proxy = Arc::new(Proxy::new(Arc::clone(&store)));
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let runtime = Runtime {
            store,
            proxy,
            source: config.source.clone(),
            listeners: Mutex::new(bound),
            admin: Mutex::new(admin),
            pending: Mutex::new(sockets),
            pending_admin: Mutex::new(admin_socket),
            status: Mutex::new(ReloadStatus {
                generation: 1,
                at: SystemTime::now(),
                error: None,
                succeeded: 0,
                failed: 0,
            }),
            life: Lifecycle {
                stop_accepting,
                shutdown: CancellationToken::new(),
                hard_stop,
                connections: TaskTracker::new(),
            },
            reload_tx,
            reload_rx: Mutex::new(Some(reload_rx)),
            reloading: tokio::sync::Mutex::new(()),
        };
        Ok(Tether {
            runtime: Arc::new(runtime),
        })
    }

    /// The bound addresses, in the order of `listeners` in the config.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.runtime.local_addrs()
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.runtime.admin_addr()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.runtime.store
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Cancelling this token starts a graceful shutdown and ends [`Tether::run`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.runtime.life.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains: no new connections,
    /// requests in flight finish, tunnels get the grace, then everything closes.
    pub async fn run(self) {
        let rt = self.runtime;
        let sockets: Vec<_> = std::mem::take(&mut *lock(&rt.pending));
        {
            let listeners = lock(&rt.listeners);
            for (i, socket) in sockets {
                if let Some(b) = listeners.get(i) {
                    rt.spawn_listener(socket, b);
                }
            }
        }
        if let Some(socket) = lock(&rt.pending_admin).take() {
            if let Some(a) = lock(&rt.admin).as_ref() {
                rt.spawn_admin(socket, a);
            }
        }
        rt.store.discovery.sync(&rt.store, &rt.store.config());

        let tick = tokio::spawn({
            let rt = Arc::clone(&rt);
            async move {
                let mut every = tokio::time::interval(TICK);
                loop {
                    every.tick().await;
                    rt.store.sids.sweep();
                    rt.store.tick();
                }
            }
        });
        let reloads = tokio::spawn(Arc::clone(&rt).reload_loop());

        rt.life.shutdown.cancelled().await;
        let grace = rt.store.config().shutdown_grace;
        tracing::info!(
            ?grace,
            "shutting down: no new connections; in-flight requests and tunnels get the grace"
        );
        rt.life.stop_accepting.cancel();
        if let Some(a) = lock(&rt.admin).as_ref() {
            a.stop.cancel();
        }
        reloads.abort();
        rt.life.connections.close();
        rt.proxy.tunnels().close();
        let drained = async {
            rt.life.connections.wait().await;
            rt.proxy.tunnels().wait().await;
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::info!(
                connections = rt.life.connections.len(),
                tunnels = rt.proxy.tunnels().len(),
                "grace over; closing what is still open"
            );
            rt.life.hard_stop.cancel();
            rt.proxy.stop_tunnels();
            let _ = tokio::time::timeout(HARD_STOP_WAIT, async {
                rt.life.connections.wait().await;
                rt.proxy.tunnels().wait().await;
            })
            .await;
        }
        tick.abort();
        rt.store.health.stop_all();
        rt.store.discovery.stop_all();
        tracing::info!("stopped");
    }
}

async fn bind_listener(
    l: &ListenerConfig,
    stop_accepting: &CancellationToken,
) -> Result<(TcpListener, Bound), StartError> {
    let mode = listener_mode(l)?;
    let socket = TcpListener::bind(l.bind)
        .await
        .map_err(|source| StartError::Bind {
            addr: l.bind,
            source,
        })?;
    let local = socket.local_addr().unwrap_or(l.bind);
    Ok((
        socket,
        Bound {
            config: l.clone(),
            local,
            mode: Arc::new(ArcSwap::from_pointee(mode)),
            stop_accepting: stop_accepting.child_token(),
        },
    ))
}

fn listener_mode(l: &ListenerConfig) -> Result<Mode, StartError> {
    Mode::build(l).map_err(|source| StartError::Tls {
        addr: l.bind,
        source: Box::new(source),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runtime {
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.listeners).iter().map(|b| b.local).collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        lock(&self.admin).as_ref().map(|a| a.local)
    }

    pub fn reload_status(&self) -> ReloadStatus {
        lock(&self.status).clone()
    }

    fn spawn_listener(&self, socket: TcpListener, b: &Bound) {
        let life = Lifecycle {
            stop_accepting: b.stop_accepting.clone(),
            ..self.life.clone()
        };
        tracing::info!(addr = %b.local, tls = b.config.tls.is_some(), "listening");
        tokio::spawn(listener::serve(
            socket,
            Arc::clone(&b.mode),
            Arc::clone(&self.proxy),
            life,
        ));
    }

    fn spawn_admin(self: &Arc<Self>, socket: TcpListener, a: &AdminBound) {
        tracing::info!(addr = %a.local, "admin listening");
        tokio::spawn(admin::serve(socket, Arc::clone(self), a.stop.clone()));
    }

    async fn reload_loop(self: Arc<Self>) {
        let Some(mut rx) = lock(&self.reload_rx).take() else {
            return;
        };
        let _watch = match &self.source {
            Some(path) => match watch::watch_file(path, self.reload_tx.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP or the admin API");
                    None
                }
            },
            None => None,
        };
        tokio::spawn(watch::on_sighup(self.reload_tx.clone()));
        let mut certs = self.watch_certificates();
        while let Some(trigger) = watch::next(&mut rx).await {
            if trigger == Trigger::Certificates {
                self.certificates_changed();
                continue;
            }
            if self.reload(trigger).await.is_ok() {
                // The listeners' certificate paths may have changed with the file.
                drop(certs);
                certs = self.watch_certificates();
            }
        }
    }

    fn watch_certificates(&self) -> Option<watch::FileWatch> {
        let files = self.certificate_files();
        if files.is_empty() {
            return None;
        }
        match watch::watch_files(&files, Trigger::Certificates, self.reload_tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch certificate files; they are re-read on reload");
                None
            }
        }
    }

    /// New handshakes get the new certificates; a bad pair keeps the old one in force and
    /// is reported like a bad reload.
    fn certificates_changed(&self) {
        let result = self.reload_certificates();
        let mut status = lock(&self.status);
        status.at = SystemTime::now();
        match result {
            Ok(()) => {
                if status
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("certificates: "))
                {
                    status.error = None;
                }
            }
            Err(e) => {
                status.failed += 1;
                tracing::error!(error = %e, "new certificates rejected; the previous ones stay in force");
                status.error = Some(format!("certificates: {e}"));
                metrics::counter!(crate::telemetry::RELOADS, "result" => "error").increment(1);
            }
        }
    }

    /// Reads the config file again and puts it in force, or keeps the current one and
    /// records why not.
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> Result<(), String> {
        let _one = self.reloading.lock().await;
        let Some(path) = &self.source else {
            return Err("tether was not started from a file".to_owned());
        };
        let result = match config::load(path) {
            Ok(config) => self.apply(config).await,
            Err(e) => Err(e.to_string()),
        };
        let mut status = lock(&self.status);
        status.at = SystemTime::now();
        match &result {
            Ok(()) => {
                status.generation += 1;
                status.succeeded += 1;
                status.error = None;
                tracing::info!(?trigger, generation = status.generation, "config reloaded");
                metrics::counter!(crate::telemetry::RELOADS, "result" => "ok").increment(1);
            }
            Err(e) => {
                status.failed += 1;
                status.error = Some(e.clone());
                tracing::error!(?trigger, error = %e, "config rejected; the previous one stays in force");
                metrics::counter!(crate::telemetry::RELOADS, "result" => "error").increment(1);
            }
        }
        result
    }

    /// Puts a parsed config in force: listeners first (they can fail), then routing.
    async fn apply(self: &Arc<Self>, config: Config) -> Result<(), String> {
        let prepared = self.store.prepare(&config)?;
        self.sync_listeners(&config.listeners).await?;
        self.sync_admin(config.admin.as_ref()).await?;
        self.store.commit(&config, prepared);
        self.store.discovery.sync(&self.store, &config);
        Ok(())
    }

    /// New binds start, removed ones stop accepting (their connections go on), and a
    /// changed certificate is swapped in for new handshakes. All new sockets and
    /// certificates are prepared before anything changes, so a failure changes nothing.
    async fn sync_listeners(&self, wanted: &[ListenerConfig]) -> Result<(), String> {
        let current: AHashMap<SocketAddr, Arc<ArcSwap<Mode>>> = lock(&self.listeners)
            .iter()
            .map(|b| (b.config.bind, Arc::clone(&b.mode)))
            .collect();
        let mut new_binds = Vec::new();
        let mut swaps = Vec::new();
        for l in wanted {
            match current.get(&l.bind) {
                None => new_binds.push(
                    bind_listener(l, &self.life.stop_accepting)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                // Rebuilt even when unchanged: certificate files may have been replaced.
                Some(slot) => swaps.push((
                    Arc::clone(slot),
                    listener_mode(l).map_err(|e| e.to_string())?,
                    l.clone(),
                )),
            }
        }
        let mut listeners = lock(&self.listeners);
        for (slot, mode, cfg) in swaps {
            slot.store(Arc::new(mode));
            if let Some(b) = listeners.iter_mut().find(|b| b.config.bind == cfg.bind) {
                b.config = cfg;
            }
        }
        listeners.retain(|b| {
            let keep = wanted.iter().any(|w| w.bind == b.config.bind);
            if !keep {
                tracing::info!(addr = %b.local, "listener removed; its open connections go on");
                b.stop_accepting.cancel();
            }
            keep
        });
        for (socket, b) in new_binds {
            self.spawn_listener(socket, &b);
            listeners.push(b);
        }
        // Keep config order, so local_addrs()[i] is listeners[i].
        listeners.sort_by_key(|b| wanted.iter().position(|w| w.bind == b.config.bind));
        Ok(())
    }

    /// Re-reads the certificates of every TLS listener (their files changed). A bad
    /// pair keeps the listener's current certificate.
    pub fn reload_certificates(&self) -> Result<(), String> {
        let listeners = lock(&self.listeners);
        let mut errors = Vec::new();
        for b in listeners.iter().filter(|b| b.config.tls.is_some()) {
            match listener_mode(&b.config) {
                Ok(mode) => {
                    b.mode.store(Arc::new(mode));
                    tracing::info!(addr = %b.local, "certificates reloaded");
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Every certificate and key file the listeners read.
    pub fn certificate_files(&self) -> Vec<PathBuf> {
        lock(&self.listeners)
            .iter()
            .filter_map(|b| b.config.tls.as_ref())
            .flat_map(|t| t.certificates.iter())
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
            .collect()
    }

    async fn sync_admin(self: &Arc<Self>, wanted: Option<&AdminConfig>) -> Result<(), String> {
        let same = lock(&self.admin).as_ref().map(|a| a.config.clone()) == wanted.cloned();
        if same {
            return Ok(());
        }
        let same_bind = lock(&self.admin).as_ref().map(|a| a.config.bind) == wanted.map(|w| w.bind);
        let socket = match wanted {
            Some(w) if !same_bind => Some(
                TcpListener::bind(w.bind)
                    .await
                    .map_err(|e| format!("admin: cannot listen on {}: {e}", w.bind))?,
            ),
            _ => None,
        };
        let mut admin = lock(&self.admin);
        if let (true, Some(w), Some(a)) = (same_bind, wanted, admin.as_mut()) {
            // Same socket, new token: restart the server on a fresh accept loop would
            // need the socket back; the token is read per request instead.
            a.config = w.clone();
            return Ok(());
        }
        if let Some(old) = admin.take() {
            old.stop.cancel();
        }
        if let (Some(w), Some(socket)) = (wanted, socket) {
            let local = socket.local_addr().unwrap_or(w.bind);
            let a = AdminBound {
                config: w.clone(),
                local,
                stop: CancellationToken::new(),
            };
            self.spawn_admin(socket, &a);
            *admin = Some(a);
        }
        Ok(())
    }

    /// The admin token in force (read per request, so a reload changes it at once).
    pub fn admin_token(&self) -> Option<String> {
        lock(&self.admin)
            .as_ref()
            .and_then(|a| a.config.token.clone())
    }
}
