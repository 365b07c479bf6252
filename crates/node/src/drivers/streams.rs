//! A socketioxide-redis [`Driver`] over Redis Streams instead of pub/sub, so that a
//! node whose connection to Redis drops replays what it missed when it reconnects.
//!
//! # Mapping the pub/sub calls onto streams
//!
//! Keys, with `P` the prefix given to [`StreamsDriver::new`] and `C` an adapter channel
//! (the adapter names them `{adapter prefix}-request#{ns}#`,
//! `{adapter prefix}-request#{ns}#{uid}#` and `{adapter prefix}-response#{ns}#{uid}#`):
//!
//! | key            | type   | what                                                  |
//! |----------------|--------|-------------------------------------------------------|
//! | `P:stream:C`   | stream | the messages of channel `C`, one field `data`         |
//! | `P:srv:C`      | zset   | presence: node id → Redis time (ms) of its heartbeat  |
//! | `P:wake:NODE`  | stream | pokes a node's reader to re-plan its `XREAD`          |
//!
//! - **publish**: `XADD P:stream:C MAXLEN ~ 10000 * data <payload>` then
//!   `PEXPIRE P:stream:C <stream_ttl>` (1 h), so streams of nodes that are gone
//!   disappear. On a connection error the publish is retried (three times, with the
//!   back-off), so delivery is at least once: if the connection dies after Redis ran
//!   the `XADD` but before the reply came back, the message is added twice.
//! - **subscribe**: the start position is `$` resolved to an id at once
//!   (`XREVRANGE key + - COUNT 1`, or `0-0` for a stream that does not exist yet), so
//!   a new node does not replay history but gets everything published after
//!   `subscribe` returns; [`StreamsDriver::subscription`] reports that start id and
//!   the last id delivered. One reader task per driver, on a connection of its own,
//!   runs `XREAD COUNT n BLOCK ms STREAMS <keys...> <last ids...>` over every
//!   subscription, from the last id each one has delivered. When the connection fails
//!   it reconnects with back-off (100 ms doubling to 2 s) and resumes from those ids,
//!   so what was published meanwhile is replayed in order, not lost (as long as it
//!   was not trimmed by `MAXLEN`). A subscribe also `XADD`s to the node's wake stream,
//!   which the reader always reads, so a blocked `XREAD` returns and the new key is
//!   read at once. A subscriber whose buffer is full is left out of the next reads
//!   until it has room again and its id is not advanced: a slow namespace loses
//!   nothing and does not hold up the others.
//! - **num_serv**: streams have no subscriber count, so each node keeps a presence
//!   entry per subscribed channel in the zset `P:srv:C`, scored with the Redis
//!   server's clock (`TIME` in a script, so node clocks do not matter), refreshed
//!   every 3 s; `num_serv` counts the entries younger than 10 s (`ZCOUNT`, one round
//!   trip, no `SCAN`). `unsubscribe` and [`StreamsDriver::close`] remove the entry at
//!   once; a node that dies stops counting 10 s later (with pub/sub it would stop at
//!   once, when its connection closes), until then a request waits for it up to the
//!   adapter's request timeout.
//! - **pattern subscriptions**: the adapter never uses them (its `Driver` trait has
//!   only `subscribe(chan)`, and socketioxide-redis 0.4 subscribes to the three exact
//!   channels above), so channels are matched exactly and no pattern support exists.
//!
//! One Redis server (or a primary), not Redis Cluster: one `XREAD` reads keys that
//! would live in different slots.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, RedisError};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tether_kit::lock;
use tether_kit::Backoff;
use tokio::sync::mpsc;

/// Tunables of a [`StreamsDriver`]; [`Default`] gives the documented values.
#[derive(Debug, Clone)]
pub struct StreamsOptions {
    /// Approximate length each stream is trimmed to (`MAXLEN ~`): how much a node
    /// that was away can replay. Default 10,000.
    pub maxlen: usize,
    /// How long one `XREAD` blocks. Default 2 s.
    pub block: Duration,
    /// Entries read per stream per `XREAD`. Default 512.
    pub read_count: usize,
    /// A node stops counting in `num_serv` this long after its last heartbeat.
    /// Default 10 s.
    pub presence_ttl: Duration,
    /// How often presence is refreshed. Default 3 s.
    pub heartbeat: Duration,
    /// First reconnect delay, doubled on each failure. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest reconnect delay. Default 2 s.
    pub backoff_max: Duration,
    /// Longest wait for a reply to a command (the reader adds `block` to it).
    /// Default 2 s.
    pub response_timeout: Duration,
    /// Streams expire this long after their last message; `None` keeps them.
    /// Default 1 h.
    pub stream_ttl: Option<Duration>,
}

impl Default for StreamsOptions {
    fn default() -> Self {
        StreamsOptions {
            maxlen: 10_000,
            block: Duration::from_secs(2),
            read_count: 512,
            presence_ttl: Duration::from_secs(10),
            heartbeat: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            stream_ttl: Some(Duration::from_secs(3600)),
        }
    }
}

/// Where a subscription stands, from [`StreamsDriver::subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The stream key read for the channel.
    pub key: String,
    /// The id the subscription started after (`$` resolved when subscribing).
    pub start_id: String,
    /// The id of the last message delivered (the start id if none yet).
    pub last_id: String,
}

/// Refreshes this node's presence in `KEYS[1]` with the server's clock and drops
/// the entries older than `ARGV[2]` ms.
const HEARTBEAT_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
";

/// Counts the entries of `KEYS[1]` refreshed in the last `ARGV[1]` ms.
const COUNT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
";

/// Publish/subscribe attempts after a connection error, on top of the first one.
const RETRIES: u32 = 3;
/// How long the reader blocks while a subscriber is full, before looking again.
const THROTTLED_BLOCK: Duration = Duration::from_millis(50);

struct Subscription {
    tx: mpsc::Sender<ChanItem>,
    key: String,
    start_id: String,
    last_id: String,
    /// Publish sequence numbers seen, per publishing node: a publish retried after its
    /// reply was lost adds the entry twice; the copy is dropped here, so delivery is
    /// exactly once and in stream order.
    seen: HashMap<String, Recent>,
}

/// The most recent sequence numbers of one publisher (a bounded window).
#[derive(Default)]
struct Recent {
    set: std::collections::BTreeSet<u64>,
}

impl Recent {
    /// Sequence numbers remembered per publisher; far more than can be in flight.
    const WINDOW: usize = 65_536;

    fn record(&mut self, n: u64) {
        self.set.insert(n);
        while self.set.len() > Self::WINDOW {
            self.set.pop_first();
        }
    }
}

struct Inner {
    uid: String,
    prefix: String,
    opts: StreamsOptions,
    client: Client,
    conn: ConnectionManager,
    subs: Mutex<HashMap<String, Subscription>>,
    control_up: AtomicBool,
    reader_up: AtomicBool,
    reader_client_id: AtomicI64,
    closed: AtomicBool,
    /// Sequence number of this node's next publish (see `Subscription::seen`).
    seq: std::sync::atomic::AtomicU64,
}

/// A socketioxide-redis [`Driver`] over Redis Streams; see the [module docs](self).
/// Clones share one node's connections and subscriptions.
#[derive(Clone)]
pub struct StreamsDriver {
    inner: Arc<Inner>,
}

impl fmt::Debug for StreamsDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamsDriver")
            .field("node", &self.inner.uid)
            .field("prefix", &self.inner.prefix)
            .field("connected", &self.connected())
            .finish()
    }
}

impl StreamsDriver {
    /// Connects to the Redis at `url` (`redis://`, `rediss://`, `redis+unix://`) and
    /// starts the reader and heartbeat tasks; keys are prefixed with `prefix:`.
    pub async fn new(url: &str, prefix: &str) -> Result<StreamsDriver, RedisError> {
        StreamsDriver::with_options(url, prefix, StreamsOptions::default()).await
    }

    /// [`StreamsDriver::new`] with tunables.
    pub async fn with_options(
        url: &str,
        prefix: &str,
        opts: StreamsOptions,
    ) -> Result<StreamsDriver, RedisError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_min_delay(opts.backoff_min)
            .set_max_delay(opts.backoff_max)
            .set_exponent_base(2.0)
            .set_response_timeout(Some(opts.response_timeout))
            .set_connection_timeout(Some(opts.response_timeout));
        let conn = client.get_connection_manager_with_config(config).await?;
        let inner = Arc::new(Inner {
            uid: node_uid(),
            prefix: prefix.to_owned(),
            opts,
            client,
            conn,
            subs: Mutex::new(HashMap::new()),
            control_up: AtomicBool::new(true),
            reader_up: AtomicBool::new(false),
            reader_client_id: AtomicI64::new(-1),
            closed: AtomicBool::new(false),
            seq: std::sync::atomic::AtomicU64::new(1),
        });
        tokio::spawn(reader_task(Arc::downgrade(&inner)));
        tokio::spawn(heartbeat_task(Arc::downgrade(&inner)));
        Ok(StreamsDriver { inner })
    }

    /// Whether both connections are up: the reader's, and the one that publishes
    /// (as of its last command; heartbeats run one every 3 s).
    pub fn connected(&self) -> bool {
        self.inner.control_up.load(Ordering::Relaxed)
            && self.inner.reader_up.load(Ordering::Relaxed)
    }

    /// This node's id in presence entries and in its reader's client name.
    pub fn node_id(&self) -> &str {
        &self.inner.uid
    }

    /// The stream key that carries `chan`.
    pub fn stream_key(&self, chan: &str) -> String {
        self.inner.stream_key(chan)
    }

    /// The Redis client name of the reader connection.
    pub fn reader_client_name(&self) -> String {
        self.inner.reader_name()
    }

    /// The Redis `CLIENT ID` of the reader connection, when connected.
    pub fn reader_client_id(&self) -> Option<i64> {
        let id = self.inner.reader_client_id.load(Ordering::Relaxed);
        (id >= 0 && self.inner.reader_up.load(Ordering::Relaxed)).then_some(id)
    }

    /// Where the subscription to `chan` stands, if there is one.
    pub fn subscription(&self, chan: &str) -> Option<SubscriptionInfo> {
        lock(&self.inner.subs)
            .get(chan)
            .map(|sub| SubscriptionInfo {
                key: sub.key.clone(),
                start_id: sub.start_id.clone(),
                last_id: sub.last_id.clone(),
            })
    }

    /// Ends every subscription (their streams end), withdraws this node's presence
    /// and stops the reader and heartbeat tasks. Later calls fail.
    pub async fn close(&self) -> Result<(), RedisError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let chans: Vec<String> = lock(&self.inner.subs)
            .drain()
            .map(|(chan, _)| chan)
            .collect();
        let mut pipe = redis::pipe();
        for chan in &chans {
            pipe.cmd("ZREM")
                .arg(self.inner.presence_key(chan))
                .arg(&self.inner.uid)
                .ignore();
        }
        // Let the blocked XREAD return so the reader sees `closed`.
        self.inner.add_wake_cmds(&mut pipe);
        let pipe = &pipe;
        self.inner
            .run(|mut c| async move { pipe.exec_async(&mut c).await })
            .await
    }
}

impl Inner {
    fn stream_key(&self, chan: &str) -> String {
        format!("{}:stream:{chan}", self.prefix)
    }

    fn presence_key(&self, chan: &str) -> String {
        format!("{}:srv:{chan}", self.prefix)
    }

    fn wake_key(&self) -> String {
        format!("{}:wake:{}", self.prefix, self.uid)
    }

    fn reader_name(&self) -> String {
        format!("tether-streams-reader-{}", self.uid)
    }

    fn check_open(&self) -> Result<(), RedisError> {
        if self.closed.load(Ordering::Relaxed) {
            Err((ErrorKind::Client, "streams driver closed").into())
        } else {
            Ok(())
        }
    }

    /// Runs `op` on the shared connection, retrying connection errors with back-off
    /// (the connection manager reconnects in the background meanwhile).
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let mut backoff = Backoff::new(self.opts.backoff_min, self.opts.backoff_max);
        let mut attempt = 0;
        loop {
            match op(self.conn.clone()).await {
                Ok(v) => {
                    self.control_up.store(true, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if is_connection_error(&e) => {
                    self.control_up.store(false, Ordering::Relaxed);
                    if attempt >= RETRIES {
                        return Err(e);
                    }
                    attempt += 1;
                    tracing::debug!(attempt, "redis streams: retrying after: {e}");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn add_wake_cmds(&self, pipe: &mut redis::Pipeline) {
        let key = self.wake_key();
        pipe.cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg(1)
            .arg("*")
            .arg("w")
            .arg(1)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(60_000).ignore();
    }

    fn heartbeat_cmd(&self, pipe: &mut redis::Pipeline, chan: &str) {
        pipe.cmd("EVAL")
            .arg(HEARTBEAT_SCRIPT)
            .arg(1)
            .arg(self.presence_key(chan))
            .arg(&self.uid)
            .arg(millis(self.opts.presence_ttl))
            .ignore();
    }

    /// The id of the newest entry of `key`, `0-0` when it has none.
    async fn last_id(&self, key: &str) -> Result<String, RedisError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(key).arg("+").arg("-").arg("COUNT").arg(1);
        let cmd = &cmd;
        let reply: StreamRangeReply = self
            .run(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |entry| entry.id))
    }

    /// The next `XREAD`, and which channel each of its stream keys carries.
    fn read_plan(&self, wake_id: &str) -> (Cmd, HashMap<String, String>) {
        let mut keys = vec![self.wake_key()];
        let mut ids = vec![wake_id.to_owned()];
        let mut chans = HashMap::new();
        let mut throttled = false;
        for (chan, sub) in lock(&self.subs).iter() {
            if sub.tx.is_closed() {
                continue;
            }
            if sub.tx.capacity() == 0 {
                throttled = true;
                continue;
            }
            keys.push(sub.key.clone());
            ids.push(sub.last_id.clone());
            chans.insert(sub.key.clone(), chan.clone());
        }
        let block = if throttled {
            THROTTLED_BLOCK.min(self.opts.block)
        } else {
            self.opts.block
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(self.opts.read_count.max(1))
            .arg("BLOCK")
            .arg(millis(block).max(1))
            .arg("STREAMS")
            .arg(keys)
            .arg(ids);
        (cmd, chans)
    }

    /// Hands what an `XREAD` returned to the subscribers, advancing their last ids.
    fn dispatch(
        &self,
        reply: StreamReadReply,
        chans: &HashMap<String, String>,
        wake_id: &mut String,
    ) {
        let wake_key = self.wake_key();
        let mut subs = lock(&self.subs);
        for stream in reply.keys {
            if stream.key == wake_key {
                if let Some(entry) = stream.ids.last() {
                    wake_id.clone_from(&entry.id);
                }
                continue;
            }
            let Some(chan) = chans.get(&stream.key) else {
                continue;
            };
            // Unsubscribed since the read was planned.
            let Some(sub) = subs.get_mut(chan) else {
                continue;
            };
            let mut last = parse_id(&sub.last_id);
            for entry in stream.ids {
                let id = parse_id(&entry.id);
                // A subscription replaced since the read was planned starts later.
                if id.is_some() && id <= last {
                    continue;
                }
                let Some(data) = entry.get::<Vec<u8>>("data") else {
                    tracing::warn!(key = stream.key, id = entry.id, "stream entry without data");
                    sub.last_id = entry.id;
                    last = id;
                    continue;
                };
                let origin = entry.get::<String>("from").zip(entry.get::<u64>("n"));
                if let Some((from, n)) = &origin {
                    if sub.seen.get(from).is_some_and(|r| r.set.contains(n)) {
                        sub.last_id = entry.id;
                        last = id;
                        continue; // a retried publish's second copy
                    }
                }
                match sub.tx.try_send((chan.clone(), data)) {
                    Ok(()) => {
                        // Recorded only once delivered: an entry re-read because the
                        // subscriber was full must not pass for a copy.
                        if let Some((from, n)) = origin {
                            sub.seen.entry(from).or_default().record(n);
                        }
                        sub.last_id = entry.id;
                        last = id;
                    }
                    // Read again from the last id delivered once there is room.
                    Err(mpsc::error::TrySendError::Full(_)) => break,
                    // Dropped without unsubscribing: the heartbeat task cleans it up.
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
    }

    /// Refreshes the presence of every live subscription, and withdraws the ones
    /// whose stream was dropped without unsubscribing.
    async fn heartbeat(&self) {
        let (live, dropped) = {
            let mut subs = lock(&self.subs);
            let dropped: Vec<String> = subs
                .iter()
                .filter(|(_, sub)| sub.tx.is_closed())
                .map(|(chan, _)| chan.clone())
                .collect();
            for chan in &dropped {
                subs.remove(chan);
            }
            (subs.keys().cloned().collect::<Vec<_>>(), dropped)
        };
        let mut pipe = redis::pipe();
        for chan in &live {
            self.heartbeat_cmd(&mut pipe, chan);
        }
        for chan in &dropped {
            pipe.cmd("ZREM")
                .arg(self.presence_key(chan))
                .arg(&self.uid)
                .ignore();
        }
        if live.is_empty() && dropped.is_empty() {
            pipe.cmd("PING").ignore();
        }
        let mut conn = self.conn.clone();
        match pipe.exec_async(&mut conn).await {
            Ok(()) => self.control_up.store(true, Ordering::Relaxed),
            Err(e) => {
                if is_connection_error(&e) {
                    self.control_up.store(false, Ordering::Relaxed);
                }
                tracing::warn!("redis streams: heartbeat failed: {e}");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        // Best effort: withdraw presence now rather than when it times out.
        let chans: Vec<String> = lock(&self.subs).keys().cloned().collect();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if chans.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for chan in &chans {
            pipe.cmd("ZREM")
                .arg(self.presence_key(chan))
                .arg(&self.uid)
                .ignore();
        }
        let mut conn = self.conn.clone();
        rt.spawn(async move {
            let _ = pipe.exec_async(&mut conn).await;
        });
    }
}

impl Driver for StreamsDriver {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = inner.stream_key(&chan);
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(inner.opts.maxlen)
            .arg("*")
            .arg("data")
            .arg(val)
            .arg("from")
            .arg(&inner.uid)
            .arg("n")
            .arg(inner.seq.fetch_add(1, Ordering::Relaxed))
            .ignore();
        if let Some(ttl) = inner.opts.stream_ttl {
            pipe.cmd("PEXPIRE").arg(&key).arg(millis(ttl)).ignore();
        }
        let pipe = &pipe;
        inner
            .run(|mut c| async move { pipe.exec_async(&mut c).await })
            .await
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = inner.stream_key(&chan);
        let start_id = inner.last_id(&key).await?;
        tracing::debug!(chan, key, start_id, "redis streams: subscribing");
        let (tx, rx) = mpsc::channel(size.max(1));
        lock(&inner.subs).insert(
            chan.clone(),
            Subscription {
                tx,
                key,
                start_id: start_id.clone(),
                last_id: start_id,
                seen: HashMap::new(),
            },
        );
        // Count as a server at once, and have the reader pick the new key up now.
        let mut pipe = redis::pipe();
        inner.heartbeat_cmd(&mut pipe, &chan);
        inner.add_wake_cmds(&mut pipe);
        let pipe = &pipe;
        if let Err(e) = inner
            .run(|mut c| async move { pipe.exec_async(&mut c).await })
            .await
        {
            lock(&inner.subs).remove(&chan);
            return Err(e);
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        let inner = &self.inner;
        lock(&inner.subs).remove(&chan);
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(inner.presence_key(&chan)).arg(&inner.uid);
        let cmd = &cmd;
        inner
            .run(|mut c| async move { cmd.exec_async(&mut c).await })
            .await
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let inner = &self.inner;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(COUNT_SCRIPT)
            .arg(1)
            .arg(inner.presence_key(chan))
            .arg(millis(inner.opts.presence_ttl));
        let cmd = &cmd;
        let n: i64 = inner
            .run(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(u16::try_from(n.max(0)).unwrap_or(u16::MAX))
    }
}

/// Reads every subscription's stream on a connection of its own, reconnecting with
/// back-off and resuming from the last ids delivered. Holds the driver only between
/// reads, so it ends once the driver is dropped or closed.
async fn reader_task(weak: Weak<Inner>) {
    let (client, opts, name) = match weak.upgrade() {
        Some(inner) => (
            inner.client.clone(),
            inner.opts.clone(),
            inner.reader_name(),
        ),
        None => return,
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(opts.response_timeout))
        .set_response_timeout(Some(opts.block + opts.response_timeout));
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    let mut wake_id = "0-0".to_owned();
    let mut failed = false;
    loop {
        if failed {
            tokio::time::sleep(backoff.next_delay()).await;
        }
        failed = true;
        if !alive(&weak) {
            return;
        }
        let mut conn = match connect_reader(&client, &config, &name).await {
            Ok((conn, id)) => {
                let Some(inner) = weak.upgrade() else { return };
                inner.reader_client_id.store(id, Ordering::Relaxed);
                inner.reader_up.store(true, Ordering::Relaxed);
                let resume: Vec<(String, String)> = lock(&inner.subs)
                    .iter()
                    .map(|(chan, sub)| (chan.clone(), sub.last_id.clone()))
                    .collect();
                tracing::debug!(client_id = id, ?resume, "redis streams: reader connected");
                conn
            }
            Err(e) => {
                if let Some(inner) = weak.upgrade() {
                    inner.reader_up.store(false, Ordering::Relaxed);
                }
                tracing::warn!("redis streams: reader cannot connect: {e}");
                continue;
            }
        };
        loop {
            let (cmd, chans) = match weak.upgrade() {
                Some(inner) if !inner.closed.load(Ordering::Relaxed) => inner.read_plan(&wake_id),
                _ => return,
            };
            match cmd.query_async::<Option<StreamReadReply>>(&mut conn).await {
                Ok(reply) => {
                    backoff.reset();
                    let Some(inner) = weak.upgrade() else { return };
                    if let Some(reply) = reply {
                        inner.dispatch(reply, &chans, &mut wake_id);
                    }
                }
                Err(e) => {
                    if let Some(inner) = weak.upgrade() {
                        inner.reader_up.store(false, Ordering::Relaxed);
                        inner.reader_client_id.store(-1, Ordering::Relaxed);
                    }
                    tracing::warn!("redis streams: reader lost its connection: {e}");
                    break;
                }
            }
        }
    }
}

async fn connect_reader(
    client: &Client,
    config: &AsyncConnectionConfig,
    name: &str,
) -> Result<(MultiplexedConnection, i64), RedisError> {
    let mut conn = client
        .get_multiplexed_async_connection_with_config(config)
        .await?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .exec_async(&mut conn)
        .await?;
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await?;
    Ok((conn, id))
}

async fn heartbeat_task(weak: Weak<Inner>) {
    let period = match weak.upgrade() {
        Some(inner) => inner.opts.heartbeat,
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::Relaxed) {
            return;
        }
        inner.heartbeat().await;
    }
}

fn alive(weak: &Weak<Inner>) -> bool {
    weak.upgrade()
        .is_some_and(|inner| !inner.closed.load(Ordering::Relaxed))
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// A stream id as `(ms, seq)`, to compare.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A node id unique enough across processes and hosts sharing one Redis.
fn node_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{}:{}:{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use futures_util::StreamExt;
    use socketioxide::adapter::Emitter;
    use socketioxide::extract::SocketRef;
    use socketioxide::SocketIo;
    use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

    use super::*;
    use tether_testkit::TestRedis;

    /// A connection for commands the test sends itself (CLIENT KILL, XLEN, ...).
    async fn admin(server: &TestRedis) -> MultiplexedConnection {
        Client::open(server.unix_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The `CLIENT ID` of the connection named `name`, from `CLIENT LIST`.
    async fn client_id_by_name(admin: &mut MultiplexedConnection, name: &str) -> Option<i64> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(admin)
            .await
            .unwrap();
        list.lines().find_map(|line| {
            let fields: HashMap<&str, &str> =
                line.split(' ').filter_map(|f| f.split_once('=')).collect();
            (fields.get("name") == Some(&name))
                .then(|| fields.get("id")?.parse().ok())
                .flatten()
        })
    }

    async fn recv(stream: &mut MessageStream<ChanItem>) -> ChanItem {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("no message in time")
            .expect("stream ended")
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Publishes 0..1000 from one driver while the other's reader connection is
    /// killed (twice); returns the numbers received, in order.
    async fn publish_through_kills(server: &TestRedis, kill_all: bool) -> Vec<u32> {
        const N: u32 = 1000;
        let publisher = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        // A first reconnect delay long enough that the publishes right after a kill
        // is noticed certainly fall while the reader is away, even on a busy machine.
        let opts = StreamsOptions {
            backoff_min: Duration::from_millis(400),
            ..StreamsOptions::default()
        };
        let subscriber = StreamsDriver::with_options(&server.unix_url(), "t", opts)
            .await
            .unwrap();
        let mut admin = admin(server).await;
        let mut stream = subscriber.subscribe("numbers".into(), 64).await.unwrap();
        wait_until("reader connected", || subscriber.connected()).await;

        let consumer = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.last() != Some(&(N - 1)) {
                let (chan, data) = recv(&mut stream).await;
                assert_eq!(chan, "numbers");
                got.push(u32::from_be_bytes(data.try_into().unwrap()));
            }
            got
        });

        let mut killed = Vec::new();
        let mut published_while_down = 0;
        for i in 0..N {
            if i == 300 || i == 700 {
                wait_until("reader connected", || subscriber.connected()).await;
                let name = subscriber.reader_client_name();
                let id = client_id_by_name(&mut admin, &name)
                    .await
                    .expect("reader connection in CLIENT LIST");
                assert_eq!(subscriber.reader_client_id(), Some(id));
                let mut kill = redis::cmd("CLIENT");
                if kill_all {
                    kill.arg("KILL").arg("TYPE").arg("normal");
                } else {
                    kill.arg("KILL").arg("ID").arg(id);
                }
                let n: i64 = kill.query_async(&mut admin).await.unwrap();
                assert!(n >= 1, "nothing killed");
                killed.push(id);
                wait_until("reader noticed the kill", || {
                    subscriber.reader_client_id() != Some(id)
                })
                .await;
            }
            if !killed.is_empty() && !subscriber.connected() {
                published_while_down += 1;
            }
            publisher
                .publish("numbers".into(), i.to_be_bytes().to_vec())
                .await
                .unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(30), consumer)
            .await
            .expect("subscriber did not get everything")
            .unwrap();

        // Some were published while the reader was away, and were replayed.
        assert!(published_while_down > 0, "the kills went unnoticed");
        // The reader came back on new connections.
        wait_until("reader reconnected", || subscriber.connected()).await;
        let now = subscriber.reader_client_id().unwrap();
        assert!(!killed.contains(&now));
        let info = subscriber.subscription("numbers").unwrap();
        assert_eq!(info.start_id, "0-0");
        assert_ne!(info.last_id, info.start_id);
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscriber_killed_midway_still_gets_all_in_order() {
        let server = TestRedis::start().await;
        let got = publish_through_kills(&server, false).await;
        assert_eq!(got, (0..1000).collect::<Vec<u32>>());
        server.stop().await;
    }

    /// `CLIENT KILL TYPE normal` also drops the publisher's connection: publishing
    /// retries, so nothing is lost and order holds; a publish whose reply was lost
    /// may be added twice (at least once), which shows as an adjacent duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn all_connections_killed_midway_nothing_lost() {
        let server = TestRedis::start().await;
        let mut got = publish_through_kills(&server, true).await;
        got.dedup();
        assert_eq!(got, (0..1000).collect::<Vec<u32>>());
        server.stop().await;
    }

    #[tokio::test]
    async fn new_subscriber_starts_at_the_end_and_records_it() {
        let server = TestRedis::start().await;
        let a = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        let b = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        for i in 0..3u8 {
            a.publish("c".into(), vec![i]).await.unwrap();
        }
        let mut admin = admin(&server).await;
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(a.stream_key("c"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut admin)
            .await
            .unwrap();
        let last = reply.ids[0].id.clone();

        let mut s = b.subscribe("c".into(), 8).await.unwrap();
        let info = b.subscription("c").unwrap();
        assert_eq!(info.key, "t:stream:c");
        assert_eq!(info.start_id, last);
        assert_eq!(info.last_id, last);

        a.publish("c".into(), b"new".to_vec()).await.unwrap();
        assert_eq!(recv(&mut s).await, ("c".to_string(), b"new".to_vec()));
        let got = tokio::time::timeout(Duration::from_millis(100), s.next()).await;
        assert!(got.is_err(), "history replayed: {got:?}");
        assert_ne!(b.subscription("c").unwrap().last_id, last);
        server.stop().await;
    }

    #[tokio::test]
    async fn publish_subscribe_across_drivers_exact_channels() {
        let server = TestRedis::start().await;
        let a = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        let b = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        let global = "socket.io-request#/#".to_string();
        let specific = format!("{global}abc#");
        let mut sg = a.subscribe(global.clone(), 8).await.unwrap();
        let mut ss = a.subscribe(specific.clone(), 8).await.unwrap();
        let mut own = b.subscribe(global.clone(), 8).await.unwrap();

        b.publish(specific.clone(), b"one".to_vec()).await.unwrap();
        b.publish(global.clone(), b"all".to_vec()).await.unwrap();
        assert_eq!(recv(&mut ss).await, (specific, b"one".to_vec()));
        assert_eq!(recv(&mut sg).await, (global.clone(), b"all".to_vec()));
        // As with pub/sub, the publisher's own subscription gets its message.
        assert_eq!(recv(&mut own).await, (global, b"all".to_vec()));
        let extra = tokio::time::timeout(Duration::from_millis(100), ss.next()).await;
        assert!(extra.is_err(), "prefix channel leaked: {extra:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn num_serv_counts_present_nodes() {
        let server = TestRedis::start().await;
        let a = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        let b = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        let c = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        assert_eq!(c.num_serv("req").await.unwrap(), 0);
        let _sa = a.subscribe("req".into(), 8).await.unwrap();
        let _sb = b.subscribe("req".into(), 8).await.unwrap();
        let _sb2 = b.clone().subscribe("req".into(), 8).await.unwrap();
        assert_eq!(c.num_serv("req").await.unwrap(), 2);
        assert_eq!(c.num_serv("other").await.unwrap(), 0);

        // An entry older than the presence TTL (a node that died) does not count.
        let mut admin = admin(&server).await;
        redis::cmd("ZADD")
            .arg("t:srv:req")
            .arg(0)
            .arg("ghost")
            .exec_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(c.num_serv("req").await.unwrap(), 2);

        b.unsubscribe("req".into()).await.unwrap();
        assert_eq!(c.num_serv("req").await.unwrap(), 1);
        a.close().await.unwrap();
        assert_eq!(c.num_serv("req").await.unwrap(), 0);
        assert!(a.publish("req".into(), vec![]).await.is_err());
        server.stop().await;
    }

    #[tokio::test]
    async fn presence_is_kept_by_heartbeats_and_withdrawn_for_dropped_streams() {
        let server = TestRedis::start().await;
        let opts = StreamsOptions {
            presence_ttl: Duration::from_millis(400),
            heartbeat: Duration::from_millis(100),
            ..StreamsOptions::default()
        };
        let a = StreamsDriver::with_options(&server.unix_url(), "t", opts)
            .await
            .unwrap();
        let s = a.subscribe("req".into(), 8).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(a.num_serv("req").await.unwrap(), 1, "heartbeats keep it");

        // A stream dropped without unsubscribing is withdrawn by the next heartbeat.
        drop(s);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.num_serv("req").await.unwrap(), 0);
        assert!(a.subscription("req").is_none());
        server.stop().await;
    }

    #[tokio::test]
    async fn unsubscribe_ends_the_stream() {
        let server = TestRedis::start().await;
        let a = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        let mut s = a.subscribe("c".into(), 8).await.unwrap();
        a.unsubscribe("c".into()).await.unwrap();
        assert!(a.subscription("c").is_none());
        a.publish("c".into(), b"x".to_vec()).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(1), s.next())
            .await
            .unwrap();
        assert_eq!(end, None);
        server.stop().await;
    }

    #[tokio::test]
    async fn streams_are_trimmed_and_expire() {
        let server = TestRedis::start().await;
        let opts = StreamsOptions {
            maxlen: 10,
            stream_ttl: Some(Duration::from_secs(60)),
            ..StreamsOptions::default()
        };
        let a = StreamsDriver::with_options(&server.unix_url(), "t", opts)
            .await
            .unwrap();
        for i in 0..500u32 {
            a.publish("c".into(), i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
        let mut admin = admin(&server).await;
        let len: u64 = redis::cmd("XLEN")
            .arg("t:stream:c")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!((10..500).contains(&len), "XLEN {len}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg("t:stream:c")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(ttl > 50_000 && ttl <= 60_000, "PTTL {ttl}");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_full_subscriber_loses_nothing_and_holds_up_no_one() {
        let server = TestRedis::start().await;
        let a = StreamsDriver::new(&server.unix_url(), "t").await.unwrap();
        let mut slow = a.subscribe("slow".into(), 2).await.unwrap();
        let mut fast = a.subscribe("fast".into(), 64).await.unwrap();
        for i in 0..20u8 {
            a.publish("slow".into(), vec![i]).await.unwrap();
        }
        a.publish("fast".into(), b"f".to_vec()).await.unwrap();
        assert_eq!(recv(&mut fast).await.1, b"f".to_vec());
        for i in 0..20u8 {
            assert_eq!(recv(&mut slow).await.1, vec![i]);
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn unreachable_redis_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("redis+unix://{}", dir.path().join("none.sock").display());
        let opts = StreamsOptions {
            backoff_max: Duration::from_millis(100),
            ..StreamsOptions::default()
        };
        assert!(StreamsDriver::with_options(&url, "t", opts).await.is_err());
    }

    type Io = SocketIo<CustomRedisAdapter<Emitter, StreamsDriver>>;

    async fn node(url: &str) -> Io {
        let driver = StreamsDriver::new(url, "t").await.unwrap();
        let config = RedisAdapterConfig::new().with_request_timeout(Duration::from_secs(5));
        let ctr = RedisAdapterCtr::new_with_driver(driver, config);
        let (_svc, io) = SocketIo::builder()
            .with_adapter::<CustomRedisAdapter<_, _>>(ctr)
            .build_svc();
        io.ns(
            "/",
            |_: SocketRef<CustomRedisAdapter<Emitter, StreamsDriver>>| async {},
        )
        .await
        .unwrap();
        io
    }

    /// Three socketioxide nodes over Redis Streams: `rooms` and `fetch_sockets` get
    /// the answers of the two others well before the request timeout, which only
    /// happens if `num_serv` counts the nodes exactly.
    #[tokio::test]
    async fn socketioxide_nodes_answer_each_other_over_streams() {
        let server = TestRedis::start().await;
        let nodes = [
            node(&server.unix_url()).await,
            node(&server.unix_url()).await,
            node(&server.unix_url()).await,
        ];
        for io in &nodes {
            let started = Instant::now();
            assert!(io.rooms().await.unwrap().is_empty());
            assert!(io.fetch_sockets().await.unwrap().is_empty());
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "requests waited for a timeout: {:?}",
                started.elapsed()
            );
        }
        server.stop().await;
    }
}
