//! One running tether: its listeners, its routing store, the tasks that keep them up to
//! date, and the way it stops.
//!
//! Binding is separate from running so a caller (the CLI, or a test binding port 0)
//! learns the real addresses before traffic flows, and a bind failure is reported
//! before anything starts. After that, everything that changes while tether runs goes
//! through the runtime: a reload ([`reload`]), a discovery answer or a drained server
//! dropped ([`upkeep`]); each new routing snapshot is followed by the health checks.
//!
//! The admin API reads the runtime, so it sits a layer above it; the runtime owns only
//! the admin *listener* (a reload may move it) and hands it to the [`AdminApi`] it was
//! given.

pub mod changes;
pub mod history;
pub mod migrate;
pub mod reload;
#[cfg(unix)]
pub mod takeover;
mod upkeep;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tether_kit::gate::Gate;
use tether_kit::lock;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backends::discovery::{Discovered, Discovery};
use crate::backends::health::HealthChecks;
use crate::config::{self, AdminConfig, Config, ConfigError, Limits, ListenerConfig};
use crate::listener::{self, Lifecycle, Mode};
use crate::proxy::Proxy;
use crate::snapshot::{Snapshot, Store, StoreError};
use crate::tls::TlsError;

pub use reload::{ReloadError, ReloadStatus};
use watch::Trigger;

/// After the grace, how long closing what is left may take.
const HARD_STOP_WAIT: Duration = Duration::from_secs(2);

/// During the shutdown grace, how often what is still open is logged at most (a third
/// of the grace when that is shorter, but not more than once a second).
const SHUTDOWN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Serves the admin API on a bound listener until `stop`.
pub trait AdminApi: Send + Sync + 'static {
    fn serve(
        &self,
        listener: TcpListener,
        rt: Arc<Runtime>,
        stop: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Why tether could not start (or a reload could not open what it asked for).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `at`: where the file asks for it (`file:line:column: listeners[N].bind`).
    #[error("{at}: cannot listen on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        at: String,
        cause: std::io::Error,
    },
    /// `at`: where the file asks for it (`file:line:column: admin.bind`).
    #[error("{at}: cannot listen on {addr}: {cause}")]
    AdminBind {
        addr: SocketAddr,
        at: String,
        cause: std::io::Error,
    },
    #[error("TLS listener {addr}: {cause}")]
    Tls {
        addr: SocketAddr,
        cause: Box<TlsError>,
    },
    /// The registry's link could not be set up (the URL passed `check`, so this is
    /// rare: a setting the client refuses).
    #[error("registry: {0}")]
    Registry(String),
    #[error("access_log: cannot open {path}: {cause}")]
    AccessLog {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    /// `--takeover PATH`: its socket cannot be set up.
    #[cfg(unix)]
    #[error("--takeover {path}: {cause}")]
    Takeover {
        path: PathBuf,
        cause: Box<takeover::TakeoverError>,
    },
    /// `--takeover PATH`: the hand-over broke, and binding normally failed too (the old
    /// process, if alive, serves on).
    #[cfg(unix)]
    #[error(
        "--takeover {path}: the hand-over failed ({why}), and binding normally failed too: {bind}"
    )]
    TakeoverThenBind {
        path: PathBuf,
        why: Box<takeover::TakeoverError>,
        bind: Box<StartError>,
    },
}

/// Starts the access log `config` asks for.
pub(crate) fn start_access_log(
    config: Option<&crate::config::AccessLogConfig>,
) -> Result<Option<Arc<crate::access_log::AccessLog>>, StartError> {
    let Some(c) = config else { return Ok(None) };
    crate::access_log::AccessLog::start(c)
        .map(|log| Some(Arc::new(log)))
        .map_err(|cause| StartError::AccessLog {
            path: c.path.clone().unwrap_or_else(|| "stderr".into()),
            cause,
        })
}

/// Reads and validates a config file together with every certificate, key and CA bundle
/// it names, so a bad one is reported at the key naming it (`file:line:column`) alike by
/// `tether check`, at start-up and by a reload, which then changes nothing.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    config::load_checked(path, |file| {
        crate::tls::check_file(file).map_err(|e| e.to_string())
    })
}

/// One bound listener and what controls it.
struct Bound {
    config: ListenerConfig,
    local: SocketAddr,
    mode: Arc<ArcSwap<Mode>>,
    stop_accepting: CancellationToken,
    /// The listener's own connection cap (unbounded when the config sets none).
    gate: Arc<Gate>,
    /// A duplicate of the listening socket, for a takeover to hand to the next process
    /// (the accept loop owns the other). Dropped when shutdown begins, so a stopped
    /// tether's port refuses connections instead of queueing them.
    handover: Option<std::net::TcpListener>,
}

struct AdminBound {
    config: AdminConfig,
    local: SocketAddr,
    stop: CancellationToken,
    /// As [`Bound::handover`].
    handover: Option<std::net::TcpListener>,
}

/// What kind of listening socket a takeover hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// A proxy listener (`listeners[]`).
    Proxy,
    /// The admin listener (`admin.bind`).
    Admin,
}

/// A listening socket received from the process this one took over from, tagged with
/// the address that process's config gave it (so a config binding port 0 finds its
/// socket again, as HAProxy matches them).
#[derive(Debug)]
pub struct InheritedSocket {
    pub kind: SocketKind,
    pub configured: SocketAddr,
    pub socket: std::net::TcpListener,
}

/// The sockets a takeover received and `bind` has not used yet. Each listener of the
/// new config takes the one configured with its address (else one bound at exactly
/// that address); the rest are closed when this is dropped.
#[derive(Debug, Default)]
pub struct Inherited {
    pub sockets: Vec<InheritedSocket>,
}

impl Inherited {
    fn take(&mut self, kind: SocketKind, addr: SocketAddr) -> Option<tokio::net::TcpListener> {
        let i = self
            .sockets
            .iter()
            .position(|s| s.kind == kind && s.configured == addr)
            .or_else(|| {
                self.sockets
                    .iter()
                    .position(|s| s.kind == kind && s.socket.local_addr().ok() == Some(addr))
            })?;
        let s = self.sockets.swap_remove(i);
        match s
            .socket
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(s.socket))
        {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "a socket handed over cannot be used; binding anew");
                None
            }
        }
    }
}

/// A duplicate of a listening socket, kept for a takeover.
fn handover_dup(socket: &TcpListener) -> Option<std::net::TcpListener> {
    match socket2::SockRef::from(socket).try_clone() {
        Ok(s) => Some(s.into()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep a copy of a listening socket; a takeover will bind it anew");
            None
        }
    }
}

/// Everything a running tether shares between its listeners, its upkeep tasks and its
/// admin API.
pub struct Runtime {
    pub store: Arc<Store>,
    pub proxy: Arc<Proxy>,
    /// The process-wide cap on client connections, WebSocket tunnels included.
    connections: Arc<Gate>,
    health: HealthChecks,
    discovery: Discovery,
    source: Option<PathBuf>,
    listeners: Mutex<Vec<Bound>>,
    admin: Mutex<Option<AdminBound>>,
    admin_api: Arc<dyn AdminApi>,
    /// Sockets bound by `Tether::bind` and not yet serving.
    pending: Mutex<Vec<(usize, TcpListener)>>,
    pending_admin: Mutex<Option<TcpListener>>,
    status: Mutex<ReloadStatus>,
    /// The dashboard's fifteen minutes of samples, taken by the upkeep task.
    pub history: history::History,
    /// When `bind` finished: the dashboard's uptime.
    pub started: std::time::SystemTime,
    life: Lifecycle,
    reload_tx: mpsc::Sender<Trigger>,
    reload_rx: Mutex<Option<mpsc::Receiver<Trigger>>>,
    discovered_rx: Mutex<Option<mpsc::UnboundedReceiver<Discovered>>>,
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
    /// listener, which `admin` will serve. With `config.source` set, `run` also reloads
    /// from that file.
    pub async fn bind(config: Config, admin_api: Arc<dyn AdminApi>) -> Result<Tether, StartError> {
        Self::bind_inheriting(config, admin_api, Inherited::default()).await
    }

    /// As [`Tether::bind`], taking each listening socket from `inherited` when one was
    /// handed over for its address (its TLS and other settings still come from
    /// `config`); the sockets left over are closed.
    pub async fn bind_inheriting(
        config: Config,
        admin_api: Arc<dyn AdminApi>,
        mut inherited: Inherited,
    ) -> Result<Tether, StartError> {
        // First: what is built below (certificates, servers) takes metric handles.
        crate::telemetry::install_recorder();
        log_warnings(&config);
        let stop_accepting = CancellationToken::new();
        let mut bound = Vec::with_capacity(config.listeners.len());
        let mut sockets = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let (socket, b) = bind_listener(
                l,
                (config.source.as_deref(), i),
                &stop_accepting,
                Some(&mut inherited),
            )
            .await?;
            sockets.push((i, socket));
            bound.push(b);
        }
        let (admin, admin_socket) = match &config.admin {
            Some(a) => {
                let socket = match inherited.take(SocketKind::Admin, a.bind) {
                    Some(socket) => socket,
                    None => bind_admin(a.bind, config.source.as_deref()).await?,
                };
                let local = socket.local_addr().unwrap_or(a.bind);
                (
                    Some(AdminBound {
                        config: a.clone(),
                        local,
                        stop: CancellationToken::new(),
                        handover: handover_dup(&socket),
                    }),
                    Some(socket),
                )
            }
            None => (None, None),
        };
        for s in &inherited.sockets {
            tracing::info!(addr = %s.configured, "a socket handed over is not in this config; closed");
        }
        drop(inherited);
        let store = Arc::new(Store::new(&config)?);
        let connections = Gate::new(connection_cap(&config.limits));
        let proxy = Arc::new(Proxy::new(Arc::clone(&store), Arc::clone(&connections)));
        proxy.set_access_log(start_access_log(config.access_log.as_ref())?);
        store
            .fleet
            .configure(config.registry.as_ref())
            .map_err(|e| StartError::Registry(e.to_string()))?;
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let (discovered_tx, discovered_rx) = mpsc::unbounded_channel();
        let runtime = Runtime {
            connections,
            health: HealthChecks::default(),
            discovery: Discovery::new(discovered_tx),
            store,
            proxy,
            source: config.source.clone(),
            listeners: Mutex::new(bound),
            admin: Mutex::new(admin),
            admin_api,
            pending: Mutex::new(sockets),
            pending_admin: Mutex::new(admin_socket),
            status: Mutex::new(ReloadStatus::first()),
            history: history::History::default(),
            started: std::time::SystemTime::now(),
            life: Lifecycle {
                stop_accepting,
                shutdown: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
                connections: TaskTracker::new(),
                handover: Arc::default(),
            },
            reload_tx,
            reload_rx: Mutex::new(Some(reload_rx)),
            discovered_rx: Mutex::new(Some(discovered_rx)),
            reloading: tokio::sync::Mutex::new(()),
        };
        runtime.routing_changed(&runtime.store.load_full());
        Ok(Tether {
            runtime: Arc::new(runtime),
        })
    }

    /// The bound addresses, in the order of `listeners` in the config.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.runtime.local_addrs()
    }

    /// The bound listeners as URLs (`http://127.0.0.1:8080`, `https://...` for TLS), in
    /// config order: what to print for a person, who would otherwise find out by trying
    /// which scheme a port speaks.
    pub fn listener_urls(&self) -> Vec<String> {
        lock(&self.runtime.listeners)
            .iter()
            .map(|b| {
                let tls = b.config.tls.is_some() && b.config.redirect_https.is_none();
                format!("{}://{}", if tls { "https" } else { "http" }, b.local)
            })
            .collect()
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
        let running = self.start();
        self.runtime.life.shutdown.cancelled().await;
        self.drain(running).await;
    }

    /// Starts serving: every listener accepts, the upkeep and reload tasks run.
    fn start(&self) -> Running {
        let rt = &self.runtime;
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
        rt.discovery.sync(&rt.store.config());
        Running {
            upkeep: upkeep::spawn(rt),
            reloads: tokio::spawn(Arc::clone(rt).reload_loop()),
        }
    }

    /// The graceful shutdown, once the shutdown token is cancelled.
    async fn drain(self, Running { upkeep, reloads }: Running) {
        let rt = self.runtime;
        let grace = rt.store.config().shutdown_grace;
        tracing::info!(
            "shutting down: no new connections; requests in flight and tunnels have {} to finish",
            humantime::format_duration(grace)
        );
        rt.life.stop_accepting.cancel();
        if let Some(a) = lock(&rt.admin).as_mut() {
            a.stop.cancel();
            a.handover = None;
        }
        for b in lock(&rt.listeners).iter_mut() {
            b.handover = None;
        }
        reloads.abort();
        rt.life.connections.close();
        rt.proxy.tunnels().close();
        let drained = async {
            rt.life.connections.wait().await;
            rt.proxy.tunnels().wait().await;
        };
        // A grace of minutes would otherwise be silence: the operator sees what is left
        // and that it shrinks.
        let started = tokio::time::Instant::now();
        let every = (grace / 3).clamp(Duration::from_secs(1), SHUTDOWN_PROGRESS_EVERY);
        let progress = async {
            let mut tick = tokio::time::interval_at(started + every, every);
            loop {
                tick.tick().await;
                let left = grace.saturating_sub(started.elapsed());
                tracing::info!(
                    connections = rt.life.connections.len(),
                    tunnels = rt.proxy.tunnels().len(),
                    grace_left = %humantime::format_duration(Duration::from_secs(left.as_secs())),
                    "shutting down: still open"
                );
            }
        };
        let waited = tokio::time::timeout(grace, async {
            tokio::select! {
                () = drained => {}
                () = progress => {}
            }
        });
        if waited.await.is_err() {
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
        upkeep.abort();
        rt.health.stop_all();
        rt.discovery.stop_all();
        tracing::info!("stopped");
    }
}

/// The tasks of a running tether that its shutdown stops.
struct Running {
    upkeep: tokio::task::JoinHandle<()>,
    reloads: tokio::task::JoinHandle<()>,
}

/// The config's values that cannot work as meant, where an operator looks: they change
/// nothing, so nothing else would show them.
fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
}

/// Binds listener `l`, the `index`th of the file `source` (named in a failure), or takes
/// the socket handed over for its address.
async fn bind_listener(
    l: &ListenerConfig,
    (source, index): (Option<&Path>, usize),
    stop_accepting: &CancellationToken,
    inherited: Option<&mut Inherited>,
) -> Result<(TcpListener, Bound), StartError> {
    let mode = listener_mode(l)?;
    let socket = match inherited.and_then(|i| i.take(SocketKind::Proxy, l.bind)) {
        Some(socket) => socket,
        None => TcpListener::bind(l.bind)
            .await
            .map_err(|cause| StartError::Bind {
                addr: l.bind,
                at: config::bind_key(source, Some(index)),
                cause,
            })?,
    };
    let local = socket.local_addr().unwrap_or(l.bind);
    let handover = handover_dup(&socket);
    Ok((
        socket,
        Bound {
            config: l.clone(),
            local,
            mode: Arc::new(ArcSwap::from_pointee(mode)),
            stop_accepting: stop_accepting.child_token(),
            gate: Gate::new(listener_cap(l)),
            handover,
        },
    ))
}

fn listener_cap(l: &ListenerConfig) -> usize {
    l.max_connections
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// File descriptors kept free of client connections, beyond a share of the limit: for
/// connections to servers (kept-alive pools, each tunnel's server side is counted in the
/// halving below), health probes, DNS, the admin API, logs.
const RESERVED_FILES: u64 = 256;

/// The process-wide cap on client connections: the configured one, else what the open-file
/// limit allows, each connection counted with the server connection it may need, less a
/// reserve so that the work of connections already open never runs out of descriptors.
fn connection_cap(limits: &Limits) -> usize {
    let files = tether_kit::gate::open_files_limit();
    let reserve = RESERVED_FILES + files / 20;
    let fits = (files.saturating_sub(reserve) / 2).max(1);
    let cap = match limits.max_connections {
        None => fits,
        Some(n) if n > fits => {
            tracing::warn!(
                configured = n,
                open_files = files,
                cap = fits,
                "limits.max_connections does not fit in the open-file limit; capped lower"
            );
            fits
        }
        Some(n) => n,
    };
    usize::try_from(cap).unwrap_or(usize::MAX)
}

async fn bind_admin(addr: SocketAddr, source: Option<&Path>) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| StartError::AdminBind {
            addr,
            at: config::bind_key(source, None),
            cause,
        })
}

fn listener_mode(l: &ListenerConfig) -> Result<Mode, StartError> {
    Mode::build(l).map_err(|cause| StartError::Tls {
        addr: l.bind,
        cause: Box::new(cause),
    })
}

impl Runtime {
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.listeners).iter().map(|b| b.local).collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        lock(&self.admin).as_ref().map(|a| a.local)
    }

    /// Whether a graceful shutdown has begun: not ready for new clients any more.
    pub fn shutting_down(&self) -> bool {
        self.life.shutdown.is_cancelled()
    }

    pub fn reload_status(&self) -> ReloadStatus {
        lock(&self.status).clone()
    }

    /// Client connections open now (WebSocket tunnels included), and the cap.
    pub fn connections(&self) -> (usize, usize) {
        (self.connections.open(), self.connections.max())
    }

    /// The admin config in force (read per request, so a reload changes its token and
    /// host names at once).
    pub fn admin_config(&self) -> Option<AdminConfig> {
        lock(&self.admin).as_ref().map(|a| a.config.clone())
    }

    /// Brings what watches servers in line with a new routing snapshot: health checks
    /// start for new servers and stop for gone ones.
    fn routing_changed(&self, snapshot: &Snapshot) {
        self.health.sync(&snapshot.backends);
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
            vec![Arc::clone(&self.connections), Arc::clone(&b.gate)],
        ));
    }

    fn spawn_admin(self: &Arc<Self>, socket: TcpListener, a: &AdminBound) {
        tracing::info!(addr = %a.local, "admin listening");
        tokio::spawn(
            self.admin_api
                .serve(socket, Arc::clone(self), a.stop.clone()),
        );
    }
}
