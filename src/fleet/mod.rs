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

mod conn;
pub mod keys;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use redis::{Cmd, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{migrate_rate_in_range, RedisAt, RegistryConfig, ServerState};
use crate::telemetry;
use conn::Conn;

/// Writes waiting for the writer at most; more are dropped and counted (a Redis that
/// cannot keep up must not grow tether's memory).
const OUTBOX: usize = 65_536;
/// Most commands in one pipeline.
const MAX_BATCH: usize = 512;
/// Lookups in flight at most: a flood of made-up sids costs Redis no more than this.
const MAX_LOOKUPS: usize = 256;
/// How long a batch of writes may take before it counts as failed.
const WRITE_BATCH_TIMEOUT: Duration = conn::RESPONSE_TIMEOUT;
/// How often the link is checked (and the admin channel subscribed while it is not).
const PING_EVERY: Duration = Duration::from_secs(1);

/// A server's operator state, set through some instance's admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    pub backend: String,
    pub server: String,
    pub state: ServerState,
    /// Set by `migrate` (state `draining`): every instance moves its own sessions of the
    /// server at this many per second, each at the full rate, as if `migrate?rate=` had
    /// been called on it. Each instance holds only the sessions it placed or learned, so
    /// they are what it can ask to move; and the instance count is not known reliably
    /// (an instance cut off from Redis, or one that starts late, never says), so a
    /// share of the rate would be a guess. The node therefore sees up to N × rate
    /// reconnections a second with N instances migrating: the README says so.
    ///
    /// Announced only, never stored: an instance that reads the stored states later
    /// (it started or reconnected) drains the server but does not migrate.
    pub migrate_rate: Option<f64>,
}

/// What the fleet tells this instance to apply.
#[derive(Debug, Clone, PartialEq)]
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
        // Random per process (and per store: tests run several in one process).
        let nonce = ahash::RandomState::new().hash_one(SystemTime::now()) as u32;
        Fleet {
            link: ArcSwapOption::empty(),
            counts: Arc::default(),
            instance: format!("{}-{nonce:08x}", std::process::id()).into(),
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
    conn: Conn,
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
            tracing::info!(redis = %where_(&l.cfg.redis), prefix = %l.cfg.prefix, "registry configured");
        }
        self.link.store(link);
        Ok(())
    }

    fn connect(&self, cfg: &RegistryConfig) -> Result<Link, redis::RedisError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let stop = CancellationToken::new();
        let conn = Conn::open(&cfg.redis, push_tx, &stop)?;
        let (outbox, rx) = mpsc::channel(OUTBOX);
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
            redis: where_(&link.cfg.redis),
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
        let get = redis::cmd("GET").arg(&key).to_owned();
        let answer = tokio::time::timeout(
            link.cfg.lookup_timeout,
            link.conn.query::<Option<String>>(&get),
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
    conn: Conn,
    prefix: String,
    health: Arc<Health>,
    counts: Arc<Counts>,
    instance: Arc<str>,
    events: mpsc::UnboundedSender<FleetEvent>,
}

/// Takes writes in batches and sends each batch at once (one pipeline to one server).
async fn write_loop(s: Shared, mut rx: mpsc::Receiver<Write>, stop: CancellationToken) {
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
        let mut cmds: Vec<Cmd> = Vec::with_capacity(batch.len() + 1);
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
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(keys::session(&s.prefix, backend, sid))
                        .arg(&**server)
                        .arg("PX")
                        .arg(ms);
                    cmds.push(cmd);
                }
                Write::Del { backend, sid } => {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(keys::session(&s.prefix, backend, sid));
                    cmds.push(cmd);
                }
                Write::State(c) => {
                    let field = keys::state_field(&c.backend, &c.server);
                    let mut cmd = match c.state {
                        ServerState::Ready => redis::cmd("HDEL"),
                        _ => redis::cmd("HSET"),
                    };
                    cmd.arg(keys::states(&s.prefix)).arg(field);
                    if c.state != ServerState::Ready {
                        cmd.arg(c.state.as_str());
                    }
                    cmds.push(cmd);
                    let mut message = serde_json::json!({
                        "from": &*s.instance,
                        "backend": c.backend,
                        "server": c.server,
                        "state": c.state.as_str(),
                    });
                    if let Some(rate) = c.migrate_rate {
                        message["migrate_rate"] = serde_json::json!(rate);
                    }
                    let mut publish = redis::cmd("PUBLISH");
                    publish
                        .arg(keys::channel(&s.prefix))
                        .arg(message.to_string());
                    cmds.push(publish);
                }
            }
        }
        let n = batch.len() as u64;
        let sent = tokio::time::timeout(WRITE_BATCH_TIMEOUT, s.conn.batch(cmds)).await;
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
    s: Shared,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    stop: CancellationToken,
) {
    let channel = keys::channel(&s.prefix);
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let ping = tokio::time::timeout(PING_EVERY, s.conn.query::<()>(&redis::cmd("PING"))).await;
                match ping {
                    Ok(Ok(())) => s.health.set(true, None),
                    Ok(Err(e)) => s.health.set(false, Some(e.to_string())),
                    Err(_) => s.health.set(false, Some("ping timed out".to_owned())),
                }
                // Made again after a lost connection (a single server's manager
                // resubscribes by itself too; subscribing twice is harmless).
                if s.health.is_up() && !s.health.subscribed.load(Ordering::Relaxed) {
                    match tokio::time::timeout(PING_EVERY, s.conn.subscribe(&channel)).await {
                        Ok(Ok(())) => {}
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
                        if let Some(all) = stored_states(&s).await {
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
///
/// Tolerant of other versions: a payload without `migrate_rate` (an older instance, or a
/// plain drain) is a state change; a `migrate_rate` that cannot pace a migration (not a
/// number, out of range) or that comes with a state other than `draining` is ignored,
/// and the state is still applied, as the state is what every version agrees on.
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
    let state = ServerState::parse(v.get("state")?.as_str()?)?;
    let migrate_rate = v
        .get("migrate_rate")
        .and_then(serde_json::Value::as_f64)
        .filter(|r| state == ServerState::Draining && migrate_rate_in_range(*r));
    Some(StateChange {
        backend: v.get("backend")?.as_str()?.to_owned(),
        server: v.get("server")?.as_str()?.to_owned(),
        state,
        migrate_rate,
    })
}

async fn stored_states(s: &Shared) -> Option<Vec<StateChange>> {
    let all = tokio::time::timeout(
        PING_EVERY,
        s.conn
            .query::<Vec<(String, String)>>(redis::cmd("HGETALL").arg(keys::states(&s.prefix))),
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
                    migrate_rate: None,
                })
            })
            .collect(),
    )
}

/// Where the registry is, passwords replaced, for logs and `/status`.
fn where_(at: &RedisAt) -> String {
    match at {
        RedisAt::Node(url) => redacted(url),
        RedisAt::Cluster(nodes) => {
            let nodes: Vec<String> = nodes.iter().map(|u| redacted(u)).collect();
            format!("cluster {}", nodes.join(", "))
        }
    }
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
                state: ServerState::Draining,
                migrate_rate: None,
            })
        );
        assert_eq!(announcement(&message(p), "7-a"), None);
    }

    /// The announcement of `state`, with `rate` as the raw JSON of `migrate_rate`.
    fn with_rate(state: &str, rate: &str) -> Option<StateChange> {
        let p = format!(
            r#"{{"from":"7-a","backend":"chat","server":"n1","state":"{state}","migrate_rate":{rate}}}"#
        );
        announcement(&message(&p), "9-b")
    }

    #[test]
    fn a_migration_is_read_with_its_rate() {
        for (raw, rate) in [
            ("50", 50.0),
            ("12.5", 12.5),
            ("1e5", 100_000.0),
            ("0.5", 0.5),
        ] {
            let c = with_rate("draining", raw).expect(raw);
            assert_eq!(c.state, ServerState::Draining, "{raw}");
            assert_eq!(c.migrate_rate, Some(rate), "{raw}");
        }
    }

    #[test]
    fn a_garbled_rate_is_no_migration_but_the_state_still_applies() {
        // JSON has no NaN or infinity: a sender would write them as a string or `null`.
        for raw in [
            "0", "-5", "-0.0", "100001", "\"NaN\"", "\"50\"", "null", "true", "[50]", "{}",
        ] {
            let c = with_rate("draining", raw).expect(raw);
            assert_eq!(c.state, ServerState::Draining, "{raw}");
            assert_eq!(c.migrate_rate, None, "{raw}");
        }
        // A number past f64 is refused by the JSON reader, the payload with it: as any
        // payload that is not JSON.
        assert_eq!(with_rate("draining", "1e309"), None);
    }

    #[test]
    fn a_rate_beside_another_state_than_draining_is_ignored() {
        for state in [ServerState::Ready, ServerState::Maint] {
            let c = with_rate(state.as_str(), "50").unwrap();
            assert_eq!((c.state, c.migrate_rate), (state, None));
        }
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
