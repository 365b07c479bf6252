//! Redis pub/sub for socketioxide-redis, surviving Redis going away.
//!
//! socketioxide-redis's own driver holds one connection that never comes back once it
//! breaks, and a failed publish makes the adapter skip the local half of a broadcast —
//! so a Redis restart would silence a node for good, even towards its own clients. This
//! driver publishes through a reconnecting connection and never fails a publish (a
//! message Redis cannot take is lost for the other nodes only, which is pub/sub's
//! contract anyway), and its subscriber task reconnects with back-off and subscribes to
//! every channel again, so cross-node delivery resumes when Redis returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{Client, RedisError};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{mpsc, Notify};

use tether_kit::lock;
use tether_kit::Backoff;

/// First wait before reconnecting the subscriber.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest a publish may take before the message is given up for other nodes.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

struct Inner {
    client: Client,
    publisher: ConnectionManager,
    /// channel → where its messages go.
    subs: Mutex<HashMap<String, mpsc::Sender<ChanItem>>>,
    /// Poked when the set of channels changes, so the subscriber task re-subscribes.
    changed: Notify,
    subscriber_up: AtomicBool,
    publisher_up: AtomicBool,
    closed: AtomicBool,
}

/// A reconnecting Redis pub/sub driver; clones share one node's connections.
#[derive(Clone)]
pub struct PubSubDriver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PubSubDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubDriver")
            .field("connected", &self.connected())
            .finish()
    }
}

impl PubSubDriver {
    /// Connects (the first connection must succeed, so a wrong URL is an error at start).
    pub async fn new(url: &str) -> Result<PubSubDriver, RedisError> {
        Self::from_info(redis::IntoConnectionInfo::into_connection_info(url)?).await
    }

    /// Same, from parsed connection details (e.g. forced to RESP3).
    pub async fn from_info(info: redis::ConnectionInfo) -> Result<PubSubDriver, RedisError> {
        let client = Client::open(info)?;
        let publisher = ConnectionManager::new(client.clone()).await?;
        let inner = Arc::new(Inner {
            client,
            publisher,
            subs: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            subscriber_up: AtomicBool::new(false),
            publisher_up: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(subscriber(Arc::downgrade(&inner)));
        Ok(PubSubDriver { inner })
    }

    /// Whether both connections are up now.
    pub fn connected(&self) -> bool {
        self.inner.subscriber_up.load(Ordering::Relaxed)
            && self.inner.publisher_up.load(Ordering::Relaxed)
    }

    /// Stops the subscriber task.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.changed.notify_one();
    }
}

/// Keeps one subscriber connection alive and subscribed to every wanted channel.
async fn subscriber(weak: std::sync::Weak<Inner>) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let pubsub = match inner.client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                inner.subscriber_up.store(false, Ordering::Relaxed);
                let delay = backoff.next_delay();
                tracing::debug!(error = %e, retry_in = ?delay, "redis pub/sub: cannot connect");
                drop(inner);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed: Vec<String> = Vec::new();
        let mut healthy = true;
        loop {
            // Subscribe to what is wanted and not yet subscribed; drop what is not.
            let wanted: Vec<String> = {
                let subs = lock(&inner.subs);
                subs.keys().cloned().collect()
            };
            let missing: Vec<String> = wanted
                .iter()
                .filter(|c| !subscribed.contains(c))
                .cloned()
                .collect();
            for chan in missing {
                if sink.subscribe(&chan).await.is_err() {
                    healthy = false;
                    break;
                }
                subscribed.push(chan);
            }
            if !healthy {
                break;
            }
            for chan in subscribed.iter().filter(|c| !wanted.contains(c)) {
                let _ = sink.unsubscribe(chan).await;
            }
            subscribed.retain(|c| wanted.contains(c));
            if !inner.subscriber_up.swap(true, Ordering::Relaxed) {
                tracing::info!(channels = subscribed.len(), "redis pub/sub: subscribed");
            }
            backoff.reset();
            tokio::select! {
                _ = inner.changed.notified() => {
                    if inner.closed.load(Ordering::Relaxed) {
                        return;
                    }
                }
                msg = stream.next() => match msg {
                    None => break, // connection lost
                    Some(msg) => {
                        let chan = msg.get_channel_name().to_owned();
                        let data = msg.get_payload_bytes().to_vec();
                        let tx = lock(&inner.subs).get(&chan).cloned();
                        if let Some(tx) = tx {
                            if tx.try_send((chan, data)).is_err() {
                                tracing::warn!("redis pub/sub: a subscriber is full; message dropped");
                            }
                        }
                    }
                },
            }
        }
        inner.subscriber_up.store(false, Ordering::Relaxed);
        let delay = backoff.next_delay();
        tracing::warn!(retry_in = ?delay, "redis pub/sub: connection lost; reconnecting");
        drop(inner);
        tokio::time::sleep(delay).await;
    }
}

impl Driver for PubSubDriver {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let mut conn = self.inner.publisher.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&chan).arg(val);
        let publish = cmd.query_async::<i64>(&mut conn);
        // A Redis that does not answer must not hold up the node's own delivery.
        let sent = match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "publish timed out",
            ))),
        };
        match sent {
            Ok(_) => {
                self.inner.publisher_up.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                // See the module docs: the local half of the broadcast must still happen.
                self.inner.publisher_up.store(false, Ordering::Relaxed);
                tracing::debug!(chan, error = %e, "redis pub/sub: publish failed; delivered locally only");
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size.max(1));
        lock(&self.inner.subs).insert(chan, tx);
        self.inner.changed.notify_one();
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        lock(&self.inner.subs).remove(&chan);
        self.inner.changed.notify_one();
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let mut conn = self.inner.publisher.clone();
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(chan);
        let query = cmd.query_async::<(String, u64)>(&mut conn);
        // Without Redis there is no other server to wait for.
        let reply = tokio::time::timeout(PUBLISH_TIMEOUT, query).await;
        Ok(match reply {
            Ok(Ok((_, n))) => n.min(u16::MAX as u64) as u16,
            _ => 0,
        })
    }
}
