//! The fleet: several tether instances in front of the same servers that route as one,
//! agreeing through Redis (`registry:` in the config) rather than a protocol of ours.
//!
//! - Learned sids are written `sid → server` ([`keys`] is the format, a contract), so an
//!   instance that meets a sid it never saw asks Redis before answering `Session ID
//!   unknown`. A handshake's answer waits (briefly, `write_timeout`) for its sid to be
//!   written: the client cannot send that sid to another instance before it has the
//!   answer, so no alternate request can race the write. Refreshes and deletes are
//!   batched into pipelines off the request path.
//! - Operator states set through one instance's admin API are stored and announced on a
//!   pub/sub channel of the same connection (RESP3 pushes), and applied by every other
//!   instance as they arrive; an instance that (re)connects reads them all.
//! - Redis down or slow never stops routing: each instance goes on with what it knows,
//!   lookups give up after `lookup_timeout` (and are not tried while Redis is known to
//!   be down), writes that cannot be made are dropped and counted, and a ping every
//!   second notices the way back.

pub mod keys;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{RegistryConfig, ServerState};
use crate::telemetry;

/// Writes waiting for the writer at most; more are dropped and counted (a Redis that
/// cannot keep up must not grow tether's memory).
const OUTBOX: usize = 65_536;
/// Most commands in one pipeline.
const MAX_BATCH: usize = 512;
/// Lookups in flight at most: a flood of made-up sids costs Redis no more than this.
const MAX_LOOKUPS: usize = 256;
/// How long a pipeline of writes may take before it counts as failed.
const WRITE_BATCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the link is checked (and the admin channel subscribed while it is not).
const PING_EVERY: Duration = Duration::from_secs(1);

/// A server's operator state, set through some instance's admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub backend: String,
    pub server: String,
    pub state: ServerState,
}

/// What the fleet tells this instance to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetEvent {
    /// Another instance set a server's state.
    State(StateChange),
    /// Every state stored in Redis, read on (re)connecting: servers set by the admin API
    /// and absent here are `ready` in the fleet.
    Sync(Vec<StateChange>),
}

/// The answer to "which server holds this sid?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recall {
    /// Redis names a server (by id; the caller checks it exists).
    Found(String),
    /// Redis does not know the sid.
    Missing,
    /// No answer: no registry, Redis down or slow, or too many lookups in flight.
    Unavailable,
}

/// Waits for a write to reach Redis.
pub type Ack = oneshot::Receiver<()>;

enum Write {
    Set {
        backend: Arc<str>,
        sid: Arc<str>,
        server: Arc<str>,
        ttl: Duration,
        ack: Option<oneshot::Sender<()>>,
    },
    Del {
        backend: Arc<str>,
        sid: Arc<str>,
    },
    State(StateChange),
}

/// Counts for `/status` (the metrics are recorded beside them).
#[derive(Debug, Default)]
pub struct Counts {
    pub writes_ok: AtomicU64,
    pub writes_failed: AtomicU64,
    pub writes_dropped: AtomicU64,
    pub lookups_found: AtomicU64,
    pub lookups_missing: AtomicU64,
    pub lookups_foreign: AtomicU64,
    pub lookups_failed: AtomicU64,
    pub lookups_skipped: AtomicU64,
    pub states_sent: AtomicU64,
    pub states_received: AtomicU64,
}

/// The fleet link of one process: none until a config names a registry.
pub struct Fleet {
    link: ArcSwapOption<Link>,
    pub counts: Arc<Counts>,
    /// Tells this instance's own announcements from others'.
    instance: Arc<str>,
    events: mpsc::UnboundedSender<FleetEvent>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<FleetEvent>>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("instance", &self.instance)
            .field("on", &self.is_on())
            .finish_non_exhaustive()
    }
}

impl Default for Fleet {
    fn default() -> Self {
        let (events, rx) = mpsc::unbounded_channel();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Fleet {
            link: ArcSwapOption::empty(),
            counts: Arc::default(),
            instance: format!("{}-{:08x}", std::process::id(), nanos).into(),
            events,
            events_rx: Mutex::new(Some(rx)),
        }
    }
}

/// The state of the link, for `/status`.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    /// The URL without its password.
    pub redis: String,
    pub prefix: String,
    pub up: bool,
    /// Announcements of other instances reach this one.
    pub subscribed: bool,
    /// How long it has been up (or down).
    pub for_: Duration,
    pub last_error: Option<String>,
    pub queued: usize,
}

struct Link {
    cfg: RegistryConfig,
    conn: ConnectionManager,
    outbox: mpsc::Sender<Write>,
    lookups: Semaphore,
    health: Arc<Health>,
    _stop: DropGuard,
}

#[derive(Default)]
struct Health {
    up: AtomicBool,
    /// The last attempt failed: handshakes do not wait for writes and lookups are not
    /// tried until one succeeds (before the first attempt, Redis is assumed reachable,
    /// so the first handshakes after a start wait for their writes like the others).
    down: AtomicBool,
    /// Subscribed to the admin channel (announcements reach this instance).
    subscribed: AtomicBool,
    since: Mutex<Option<std::time::Instant>>,
    last_error: Mutex<Option<String>>,
}

impl Health {
    fn set(&self, up: bool, error: Option<String>) {
        self.down.store(!up, Ordering::Relaxed);
        if self.up.swap(up, Ordering::Relaxed) != up || tether_kit::lock(&self.since).is_none() {
            *tether_kit::lock(&self.since) = Some(std::time::Instant::now());
            metrics::gauge!(telemetry::REGISTRY_UP).set(if up { 1.0 } else { 0.0 });
            match (&error, up) {
                (_, true) => tracing::info!("registry: Redis reachable"),
                (Some(e), false) => {
                    tracing::warn!(error = %e, "registry: Redis unreachable; routing goes on with what this instance knows")
                }
                (None, false) => {}
            }
        }
        if let Some(e) = error {
            *tether_kit::lock(&self.last_error) = Some(e);
        }
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn usable(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }
}

impl Fleet {
    /// Puts `cfg` in force: a new link when it changed (the old one's tasks end when it
    /// drops), none when `None`. Must run inside the tokio runtime.
    pub fn configure(&self, cfg: Option<&RegistryConfig>) -> Result<(), redis::RedisError> {
        let current = self.link.load();
        if current.as_ref().map(|l| &l.cfg) == cfg {
            return Ok(());
        }
        let link = match cfg {
            None => None,
            Some(cfg) => Some(Arc::new(self.connect(cfg)?)),
        };
        if let Some(l) = &link {
            tracing::info!(redis = %redacted(&l.cfg.redis), prefix = %l.cfg.prefix, "registry configured");
        }
        self.link.store(link);
        Ok(())
    }

    fn connect(&self, cfg: &RegistryConfig) -> Result<Link, redis::RedisError> {
        let info = cfg.redis.as_str().into_connection_info()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(WRITE_BATCH_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_push_sender(push_tx)
            .set_automatic_resubscription();
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let stop = CancellationToken::new();
        let health = Arc::new(Health::default());
        metrics::gauge!(telemetry::REGISTRY_UP).set(0.0);
        let shared = Shared {
            conn: conn.clone(),
            prefix: cfg.prefix.clone(),
            health: Arc::clone(&health),
            counts: Arc::clone(&self.counts),
            instance: Arc::clone(&self.instance),
            events: self.events.clone(),
        };
        tokio::spawn(write_loop(shared.clone(), rx, stop.clone()));
        tokio::spawn(push_loop(shared, push_rx, stop.clone()));
        Ok(Link {
            cfg: cfg.clone(),
            conn,
            outbox,
            lookups: Semaphore::new(MAX_LOOKUPS),
            health,
            _stop: stop.drop_guard(),
        })
    }

    /// Whether a registry is configured.
    pub fn is_on(&self) -> bool {
        self.link.load().is_some()
    }

    /// The link's state; `None` without a registry.
    pub fn status(&self) -> Option<LinkStatus> {
        let link = self.link.load_full()?;
        let since = *tether_kit::lock(&link.health.since);
        let last_error = tether_kit::lock(&link.health.last_error).clone();
        Some(LinkStatus {
            redis: redacted(&link.cfg.redis),
            prefix: link.cfg.prefix.clone(),
            up: link.health.is_up(),
            subscribed: link.health.subscribed.load(Ordering::Relaxed),
            for_: since.map_or(Duration::ZERO, |s| s.elapsed()),
            last_error,
            queued: OUTBOX - link.outbox.capacity(),
        })
    }

    /// The events the fleet sends this instance; taken once, by the runtime.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<FleetEvent>> {
        tether_kit::lock(&self.events_rx).take()
    }

    /// Records `sid → server` for the session's liveness window `ttl`. With `ack`, the
    /// returned receiver completes when Redis has it (never, when it cannot be written,
    /// and `None` when Redis is known to be down: nothing to wait for).
    pub fn publish(
        &self,
        backend: &Arc<str>,
        sid: &Arc<str>,
        server: &Arc<str>,
        ttl: Duration,
        ack: bool,
    ) -> Option<Ack> {
        let link = self.link.load();
        let link = link.as_ref()?;
        let (tx, rx) = match ack && link.health.usable() {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let w = Write::Set {
            backend: Arc::clone(backend),
            sid: Arc::clone(sid),
            server: Arc::clone(server),
            ttl,
            ack: tx,
        };
        self.send(link, w).then_some(rx).flatten()
    }

    /// Deletes a session that ended.
    pub fn forget(&self, backend: &Arc<str>, sid: &Arc<str>) {
        if let Some(link) = self.link.load().as_ref() {
            let w = Write::Del {
                backend: Arc::clone(backend),
                sid: Arc::clone(sid),
            };
            self.send(link, w);
        }
    }

    /// Announces a server's new operator state to the fleet; `false` when it could not
    /// even be queued (no registry, or the queue is full).
    pub fn announce(&self, change: StateChange) -> bool {
        let link = self.link.load();
        let Some(link) = link.as_ref() else {
            return false;
        };
        let sent = self.send(link, Write::State(change));
        if sent {
            self.counts.states_sent.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::FLEET_STATES, "direction" => "sent").increment(1);
        }
        sent
    }

    /// The fleet's timeout for a handshake's write.
    pub fn write_timeout(&self) -> Duration {
        self.link
            .load()
            .as_ref()
            .map_or(Duration::ZERO, |l| l.cfg.write_timeout)
    }

    fn send(&self, link: &Link, w: Write) -> bool {
        match link.outbox.try_send(w) {
            Ok(()) => true,
            Err(_) => {
                self.counts.writes_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::REGISTRY_WRITES, "result" => "dropped").increment(1);
                false
            }
        }
    }

    /// Asks Redis which server holds `sid` of `backend`: one round trip, bounded by
    /// `lookup_timeout`, not tried while Redis is known to be down.
    pub async fn recall(&self, backend: &str, sid: &str) -> Recall {
        let Some(link) = self.link.load_full() else {
            return Recall::Unavailable;
        };
        let skip = |c: &Counts| {
            c.lookups_skipped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::REGISTRY_LOOKUPS, "result" => "skipped").increment(1);
            Recall::Unavailable
        };
        if !link.health.usable() {
            return skip(&self.counts);
        }
        let Ok(_permit) = link.lookups.try_acquire() else {
            return skip(&self.counts);
        };
        let key = keys::session(&link.cfg.prefix, backend, sid);
        let mut conn = link.conn.clone();
        let get = redis::cmd("GET").arg(&key).to_owned();
        let answer = tokio::time::timeout(
            link.cfg.lookup_timeout,
            get.query_async::<Option<String>>(&mut conn),
        )
        .await;
        let (result, recall) = match answer {
            Ok(Ok(Some(server))) => ("found", Recall::Found(server)),
            Ok(Ok(None)) => ("missing", Recall::Missing),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "registry lookup failed");
                ("failed", Recall::Unavailable)
            }
            Err(_) => ("failed", Recall::Unavailable),
        };
        let c = match result {
            "found" => &self.counts.lookups_found,
            "missing" => &self.counts.lookups_missing,
            _ => &self.counts.lookups_failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::REGISTRY_LOOKUPS, "result" => result).increment(1);
        recall
    }

    /// A lookup named a server this instance's config lacks: treated as unknown.
    pub fn count_foreign(&self) {
        self.counts.lookups_foreign.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::REGISTRY_LOOKUPS, "result" => "foreign").increment(1);
    }

    /// Counts a received state change.
    pub fn count_received(&self) {
        self.counts.states_received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::FLEET_STATES, "direction" => "received").increment(1);
    }
}

/// What the link's tasks share.
#[derive(Clone)]
struct Shared {
    conn: ConnectionManager,
    prefix: String,
    health: Arc<Health>,
    counts: Arc<Counts>,
    instance: Arc<str>,
    events: mpsc::UnboundedSender<FleetEvent>,
}

/// Takes writes in batches and sends each batch as one pipeline.
async fn write_loop(mut s: Shared, mut rx: mpsc::Receiver<Write>, stop: CancellationToken) {
    let mut batch: Vec<Write> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            w = rx.recv() => match w {
                None => return,
                Some(w) => w,
            },
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for w in &batch {
            match w {
                Write::Set {
                    backend,
                    sid,
                    server,
                    ttl,
                    ..
                } => {
                    let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
                    pipe.cmd("SET")
                        .arg(keys::session(&s.prefix, backend, sid))
                        .arg(&**server)
                        .arg("PX")
                        .arg(ms)
                        .ignore();
                }
                Write::Del { backend, sid } => {
                    pipe.cmd("DEL")
                        .arg(keys::session(&s.prefix, backend, sid))
                        .ignore();
                }
                Write::State(c) => {
                    let field = keys::state_field(&c.backend, &c.server);
                    match c.state {
                        ServerState::Ready => {
                            pipe.cmd("HDEL").arg(keys::states(&s.prefix)).arg(field)
                        }
                        other => pipe
                            .cmd("HSET")
                            .arg(keys::states(&s.prefix))
                            .arg(field)
                            .arg(other.as_str()),
                    }
                    .ignore();
                    let message = serde_json::json!({
                        "from": &*s.instance,
                        "backend": c.backend,
                        "server": c.server,
                        "state": c.state.as_str(),
                    });
                    pipe.cmd("PUBLISH")
                        .arg(keys::channel(&s.prefix))
                        .arg(message.to_string())
                        .ignore();
                }
            }
        }
        let n = batch.len() as u64;
        let sent =
            tokio::time::timeout(WRITE_BATCH_TIMEOUT, pipe.query_async::<()>(&mut s.conn)).await;
        let result = match sent {
            Ok(Ok(())) => {
                s.health.set(true, None);
                for w in batch.drain(..) {
                    if let Write::Set { ack: Some(ack), .. } = w {
                        let _ = ack.send(());
                    }
                }
                "ok"
            }
            Ok(Err(e)) => {
                s.health.set(false, Some(e.to_string()));
                "failed"
            }
            Err(_) => {
                s.health.set(false, Some("timed out".to_owned()));
                "failed"
            }
        };
        batch.clear();
        let c = match result {
            "ok" => &s.counts.writes_ok,
            _ => &s.counts.writes_failed,
        };
        c.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(telemetry::REGISTRY_WRITES, "result" => result).increment(n);
    }
}

/// Pings Redis every second (subscribing to the admin channel until that works), and
/// turns pushes into events: announcements of others, and a full read of the stored
/// states each time the subscription is (re)made.
async fn push_loop(
    mut s: Shared,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    stop: CancellationToken,
) {
    let channel = keys::channel(&s.prefix);
    let mut subscribed = false;
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let ping = tokio::time::timeout(PING_EVERY, redis::cmd("PING").query_async::<()>(&mut s.conn)).await;
                match ping {
                    Ok(Ok(())) => s.health.set(true, None),
                    Ok(Err(e)) => s.health.set(false, Some(e.to_string())),
                    Err(_) => s.health.set(false, Some("ping timed out".to_owned())),
                }
                if s.health.is_up() && !subscribed {
                    match tokio::time::timeout(PING_EVERY, s.conn.subscribe(&channel)).await {
                        Ok(Ok(())) => subscribed = true,
                        Ok(Err(e)) => tracing::debug!(error = %e, "registry: subscribe failed"),
                        Err(_) => tracing::debug!("registry: subscribe timed out"),
                    }
                }
            }
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    PushKind::Message => {
                        if let Some(change) = announcement(&push.data, &s.instance) {
                            let _ = s.events.send(FleetEvent::State(change));
                        }
                    }
                    PushKind::Subscribe => {
                        s.health.subscribed.store(true, Ordering::Relaxed);
                        if let Some(all) = stored_states(&mut s).await {
                            let _ = s.events.send(FleetEvent::Sync(all));
                        }
                    }
                    PushKind::Disconnection => {
                        s.health.subscribed.store(false, Ordering::Relaxed);
                        s.health.set(false, Some("connection lost".to_owned()));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// An announcement of another instance, from a `message` push (`[channel, payload]`).
fn announcement(data: &[Value], me: &str) -> Option<StateChange> {
    let payload = match data.get(1)? {
        Value::BulkString(b) => b.as_slice(),
        Value::SimpleString(s) => s.as_bytes(),
        _ => return None,
    };
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if v.get("from")?.as_str()? == me {
        return None;
    }
    Some(StateChange {
        backend: v.get("backend")?.as_str()?.to_owned(),
        server: v.get("server")?.as_str()?.to_owned(),
        state: ServerState::parse(v.get("state")?.as_str()?)?,
    })
}

async fn stored_states(s: &mut Shared) -> Option<Vec<StateChange>> {
    let all = tokio::time::timeout(
        PING_EVERY,
        redis::cmd("HGETALL")
            .arg(keys::states(&s.prefix))
            .query_async::<Vec<(String, String)>>(&mut s.conn),
    )
    .await
    .ok()?
    .ok()?;
    Some(
        all.into_iter()
            .filter_map(|(field, state)| {
                let (backend, server) = keys::parse_state_field(&field)?;
                Some(StateChange {
                    backend,
                    server,
                    state: ServerState::parse(&state)?,
                })
            })
            .collect(),
    )
}

/// A Redis URL with its password replaced, for logs and `/status`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let user = auth.split_once(':').map_or(auth, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &str) -> Vec<Value> {
        vec![
            Value::BulkString(b"tether:admin".to_vec()),
            Value::BulkString(payload.as_bytes().to_vec()),
        ]
    }

    #[test]
    fn an_announcement_of_another_instance_is_read_and_ones_own_ignored() {
        let p = r#"{"from":"7-a","backend":"chat","server":"n1","state":"draining"}"#;
        assert_eq!(
            announcement(&message(p), "9-b"),
            Some(StateChange {
                backend: "chat".into(),
                server: "n1".into(),
                state: ServerState::Draining
            })
        );
        assert_eq!(announcement(&message(p), "7-a"), None);
    }

    #[test]
    fn a_malformed_announcement_is_ignored() {
        for p in [
            "",
            "not json",
            "[]",
            r#"{"from":"x"}"#,
            r#"{"from":"x","backend":"b","server":"s","state":"melted"}"#,
            r#"{"from":1,"backend":"b","server":"s","state":"ready"}"#,
        ] {
            assert_eq!(announcement(&message(p), "me"), None, "{p}");
        }
        assert_eq!(announcement(&[], "me"), None);
        assert_eq!(announcement(&[Value::Nil, Value::Int(3)], "me"), None);
    }

    #[test]
    fn a_password_never_shows() {
        assert_eq!(
            redacted("redis://:s3cret@redis.internal:6379/0"),
            "redis://:***@redis.internal:6379/0"
        );
        assert_eq!(
            redacted("redis://app:s3cret@r:6379"),
            "redis://app:***@r:6379"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
