//! Reloads: the config file read again and put in force, or kept out with the reason
//! recorded; and TLS listeners' certificate files re-read when they change on disk.
//!
//! Everything a new config needs that can fail (new sockets, certificates, CA files) is
//! prepared before anything changes, so a bad file changes nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use ahash::AHashMap;
use arc_swap::ArcSwap;
use tether_kit::lock;
use tokio_util::sync::CancellationToken;

use super::changes::{self, Changes};
use super::watch::{self, Trigger};
use super::{bind_admin, bind_listener, listener_mode, AdminBound, Runtime, StartError};
use crate::config::{AdminConfig, Config, ConfigError, ListenerConfig};
use crate::listener::Mode;
use crate::snapshot::StoreError;
use crate::telemetry;

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

impl ReloadStatus {
    pub(super) fn first() -> ReloadStatus {
        ReloadStatus {
            generation: 1,
            at: SystemTime::now(),
            error: None,
            succeeded: 0,
            failed: 0,
        }
    }
}

/// Why a reload was refused; the config in force stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("tether was not started from a file")]
    NoSource,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Start(#[from] StartError),
    /// Certificates of one or more TLS listeners could not be loaded.
    #[error("{}", join(.0))]
    Certificates(Vec<StartError>),
}

fn join(errors: &[StartError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

/// The prefix of a certificate problem in `/status`, so a good certificate reload clears
/// its own error and no other.
const CERTIFICATES: &str = "certificates: ";

impl Runtime {
    pub(super) async fn reload_loop(self: Arc<Self>) {
        let Some(mut rx) = lock(&self.reload_rx).take() else {
            return;
        };
        let _watch = match &self.source {
            Some(path) => match watch::watch_file(path, self.reload_tx.clone()) {
                Ok(w) => {
                    tracing::info!(file = %path.display(), "config file watched: saving it reloads");
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP or the admin API");
                    None
                }
            },
            None => None,
        };
        tokio::spawn(watch::on_sighup(self.reload_tx.clone()));
        tokio::spawn(watch::on_sigusr1(Arc::downgrade(&self.proxy)));
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
                metrics::counter!(telemetry::TLS_RELOADS, "result" => "ok").increment(1);
                if status
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with(CERTIFICATES))
                {
                    status.error = None;
                }
            }
            Err(e) => {
                status.failed += 1;
                tracing::error!(error = %e, "new certificates rejected; the previous ones stay in force");
                status.error = Some(format!("{CERTIFICATES}{e}"));
                metrics::counter!(telemetry::TLS_RELOADS, "result" => "error").increment(1);
            }
        }
    }

    /// Reads the config file again and puts it in force, or keeps the current one and
    /// records why not.
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> Result<(), ReloadError> {
        let _one = self.reloading.lock().await;
        let Some(path) = &self.source else {
            return Err(ReloadError::NoSource);
        };
        let result = match super::load_config(path) {
            Ok(config) => self.apply(config).await,
            Err(e) => Err(e.into()),
        };
        let mut status = lock(&self.status);
        status.at = SystemTime::now();
        let result = match result {
            Ok(changes) => {
                status.succeeded += 1;
                status.error = None;
                match changes {
                    // A `touch`, or an editor saving what was there: nothing new to count.
                    None => tracing::info!(
                        %trigger,
                        generation = status.generation,
                        "config unchanged"
                    ),
                    Some(changes) => {
                        status.generation += 1;
                        tracing::info!(%trigger, generation = status.generation, "config reloaded: {changes}");
                    }
                }
                metrics::counter!(telemetry::RELOADS, "result" => "ok").increment(1);
                Ok(())
            }
            Err(e) => {
                status.failed += 1;
                status.error = Some(e.to_string());
                tracing::error!(%trigger, error = %e, "config rejected; the previous one stays in force");
                metrics::counter!(telemetry::RELOADS, "result" => "error").increment(1);
                Err(e)
            }
        };
        drop(status);
        if let Some(config) = result.is_ok().then(|| self.store.config()) {
            self.say_admin_held_states(&config);
        }
        result
    }

    /// Puts a parsed config in force: listeners first (they can fail), then routing.
    /// Returns what changed, or `None` when the file says what is in force already.
    async fn apply(self: &Arc<Self>, config: Config) -> Result<Option<Changes>, ReloadError> {
        let old = self.store.config();
        if old == config {
            // Nothing to put in force (and no new snapshot, whose new connection pools
            // would drop every kept-alive connection). Certificate files may have been
            // replaced under the same names, so the listeners read them again, as on any
            // reload.
            self.sync_listeners(&config.listeners).await?;
            return Ok(None);
        }
        super::log_warnings(&config);
        let changes = changes::between(&old, &config);
        let prepared = self.store.prepare(&config)?;
        self.sync_listeners(&config.listeners).await?;
        self.sync_admin(config.admin.as_ref()).await?;
        self.connections
            .set_max(super::connection_cap(&config.limits));
        let current = self.proxy.access_log();
        if current.as_ref().map(|l| l.config()) != config.access_log.as_ref() {
            self.proxy
                .set_access_log(super::start_access_log(config.access_log.as_ref())?);
        }
        self.store
            .fleet
            .configure(config.registry.as_ref())
            .map_err(|e| super::StartError::Registry(e.to_string()))?;
        let snapshot = self.store.commit(&config, prepared);
        self.routing_changed(&snapshot);
        self.discovery.sync(&config);
        // As the admin API logs its changes (states are logged where they are applied).
        for c in changes.servers.iter().filter(|c| c.what == "weight") {
            tracing::info!(backend = %c.backend, server = %c.server, from = %c.from, to = %c.to, "server weight set by the config file");
        }
        Ok(Some(changes))
    }

    /// Says which servers keep a state the admin API set although the file asks for
    /// another: by design the API's state holds until the file changes that server's
    /// `state:`, which surprises whoever just wrote `state: ready` after a drain.
    fn say_admin_held_states(&self, config: &Config) {
        for b in &config.backends {
            for s in &b.servers {
                let Some(stats) = self.store.server_stats(&b.name, &s.id) else {
                    continue;
                };
                let c = &stats.condition;
                if c.state_set_by_admin() && c.state() != s.state {
                    tracing::info!(backend = %b.name, server = %s.id, state = %c.state().as_str(), file_state = %s.state.as_str(), "server keeps the state the admin API set; the file's state applies once the file changes it (or set it with the API)");
                }
            }
        }
    }

    /// New binds start, removed ones stop accepting (their connections go on), and a
    /// changed certificate is swapped in for new handshakes. All new sockets and
    /// certificates are prepared before anything changes, so a failure changes nothing.
    async fn sync_listeners(&self, wanted: &[ListenerConfig]) -> Result<(), StartError> {
        let current: AHashMap<SocketAddr, Arc<ArcSwap<Mode>>> = lock(&self.listeners)
            .iter()
            .map(|b| (b.config.bind, Arc::clone(&b.mode)))
            .collect();
        let mut new_binds = Vec::new();
        let mut swaps = Vec::new();
        for (i, l) in wanted.iter().enumerate() {
            match current.get(&l.bind) {
                None => new_binds.push(
                    bind_listener(
                        l,
                        (self.source.as_deref(), i),
                        &self.life.stop_accepting,
                        None,
                    )
                    .await?,
                ),
                // Rebuilt even when unchanged: certificate files may have been replaced.
                Some(slot) => swaps.push((Arc::clone(slot), listener_mode(l)?, l.clone())),
            }
        }
        let mut listeners = lock(&self.listeners);
        for (slot, mode, cfg) in swaps {
            slot.store(Arc::new(mode));
            if let Some(b) = listeners.iter_mut().find(|b| b.config.bind == cfg.bind) {
                b.gate.set_max(super::listener_cap(&cfg));
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
    pub fn reload_certificates(&self) -> Result<(), ReloadError> {
        let listeners = lock(&self.listeners);
        let mut errors = Vec::new();
        for b in listeners.iter().filter(|b| b.config.tls.is_some()) {
            match listener_mode(&b.config) {
                Ok(mode) => {
                    b.mode.store(Arc::new(mode));
                    tracing::info!(addr = %b.local, "certificates reloaded");
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ReloadError::Certificates(errors))
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

    async fn sync_admin(self: &Arc<Self>, wanted: Option<&AdminConfig>) -> Result<(), StartError> {
        let same = lock(&self.admin).as_ref().map(|a| a.config.clone()) == wanted.cloned();
        if same {
            return Ok(());
        }
        let same_bind = lock(&self.admin).as_ref().map(|a| a.config.bind) == wanted.map(|w| w.bind);
        let socket = match wanted {
            Some(w) if !same_bind => Some(bind_admin(w.bind, self.source.as_deref()).await?),
            _ => None,
        };
        let mut admin = lock(&self.admin);
        if let (true, Some(w), Some(a)) = (same_bind, wanted, admin.as_mut()) {
            // Same socket, new token: the token is read per request, so keeping the
            // running server is enough.
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
                handover: super::handover_dup(&socket),
            };
            self.spawn_admin(socket, &a);
            *admin = Some(a);
        }
        Ok(())
    }
}
