//! An in-process pub/sub bus for the socketioxide-redis adapter.
//!
//! Several Socket.IO nodes in one process, each with its own [`MemoryDriver`] over
//! the same [`MemoryBus`], exchange broadcasts, room changes and request/response
//! traffic (`fetch_sockets`, `rooms`, acks) exactly as they would over Redis pub/sub:
//!
//! - a channel is matched exactly, as with Redis `SUBSCRIBE` (the adapter never uses
//!   pattern subscriptions);
//! - each driver holds at most one subscription per channel, a second `subscribe`
//!   to the same channel replaces the first (as the socketioxide-redis drivers do);
//! - a publisher subscribed to the channel receives its own message (the adapter
//!   ignores its own requests by node id);
//! - [`Driver::num_serv`] counts the drivers subscribed to the channel, like
//!   `PUBSUB NUMSUB` counts connections, so request/response counting works;
//! - delivery never blocks the publisher: a subscriber whose buffer is full loses
//!   the message, with a warning, as with the Redis driver.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tether_kit::lock;
use tokio::sync::mpsc;

/// One subscription: the driver that made it and where its messages go.
struct Subscriber {
    driver: u64,
    tx: mpsc::Sender<ChanItem>,
}

/// Shared in-process pub/sub: channel name to the subscriptions on it.
pub struct MemoryBus {
    next_driver: AtomicU64,
    channels: Mutex<HashMap<String, Vec<Subscriber>>>,
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let channels = lock(&self.channels);
        f.debug_struct("MemoryBus")
            .field("channels", &channels.len())
            .finish()
    }
}

impl MemoryBus {
    /// A new, empty bus, to share between the drivers of the nodes of one process.
    pub fn new() -> Arc<MemoryBus> {
        Arc::new(MemoryBus {
            next_driver: AtomicU64::new(1),
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// Number of drivers subscribed to `chan`.
    pub fn subscribers(&self, chan: &str) -> usize {
        lock(&self.channels).get(chan).map_or(0, Vec::len)
    }

    /// Names of the channels with at least one subscription, sorted.
    pub fn channels(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.channels).keys().cloned().collect();
        names.sort();
        names
    }

    /// Delivers `val` to every subscription on `chan`; returns how many got it.
    fn publish(&self, chan: &str, val: Vec<u8>) -> usize {
        let mut channels = lock(&self.channels);
        let Some(subs) = channels.get_mut(chan) else {
            return 0;
        };
        let mut delivered = 0;
        subs.retain(
            |sub| match sub.tx.try_send((chan.to_owned(), val.clone())) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(chan, "memory bus: subscriber buffer full, message dropped");
                    true
                }
                // The stream was dropped without unsubscribing: forget the subscription.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        );
        if subs.is_empty() {
            channels.remove(chan);
        }
        delivered
    }

    fn subscribe(&self, driver: u64, chan: String, tx: mpsc::Sender<ChanItem>) {
        let mut channels = lock(&self.channels);
        let subs = channels.entry(chan).or_default();
        match subs.iter_mut().find(|sub| sub.driver == driver) {
            Some(sub) => sub.tx = tx,
            None => subs.push(Subscriber { driver, tx }),
        }
    }

    fn unsubscribe(&self, driver: u64, chan: &str) {
        let mut channels = lock(&self.channels);
        if let Some(subs) = channels.get_mut(chan) {
            subs.retain(|sub| sub.driver != driver);
            if subs.is_empty() {
                channels.remove(chan);
            }
        }
    }

    fn unsubscribe_all(&self, driver: u64) {
        lock(&self.channels).retain(|_, subs| {
            subs.retain(|sub| sub.driver != driver);
            !subs.is_empty()
        });
    }

    /// Counts live subscriptions only: a dropped stream no longer counts as a server.
    fn num_serv(&self, chan: &str) -> usize {
        let mut channels = lock(&self.channels);
        let Some(subs) = channels.get_mut(chan) else {
            return 0;
        };
        subs.retain(|sub| !sub.tx.is_closed());
        let n = subs.len();
        if n == 0 {
            channels.remove(chan);
        }
        n
    }
}

/// The state shared by the clones of one driver; dropping the last clone removes
/// the driver's subscriptions from the bus.
struct DriverInner {
    id: u64,
    bus: Arc<MemoryBus>,
}

impl Drop for DriverInner {
    fn drop(&mut self) {
        self.bus.unsubscribe_all(self.id);
    }
}

/// A socketioxide-redis [`Driver`] over a [`MemoryBus`]: one per node.
/// Clones share the node's subscriptions, as the trait requires.
#[derive(Clone)]
pub struct MemoryDriver {
    inner: Arc<DriverInner>,
}

impl fmt::Debug for MemoryDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDriver")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl MemoryDriver {
    /// A driver for one node on `bus`.
    pub fn new(bus: Arc<MemoryBus>) -> MemoryDriver {
        let id = bus.next_driver.fetch_add(1, Ordering::Relaxed);
        MemoryDriver {
            inner: Arc::new(DriverInner { id, bus }),
        }
    }

    /// The bus this driver publishes on.
    pub fn bus(&self) -> &Arc<MemoryBus> {
        &self.inner.bus
    }
}

impl Driver for MemoryDriver {
    type Error = Infallible;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.inner.bus.publish(&chan, val);
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        // mpsc::channel panics on 0; the Redis driver would too, be lenient instead.
        let (tx, rx) = mpsc::channel(size.max(1));
        self.inner.bus.subscribe(self.inner.id, chan, tx);
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.inner.bus.unsubscribe(self.inner.id, &chan);
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let n = self.inner.bus.num_serv(chan);
        Ok(u16::try_from(n).unwrap_or(u16::MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use futures_util::StreamExt;
    use socketioxide::adapter::Emitter;
    use socketioxide::extract::SocketRef;
    use socketioxide::SocketIo;
    use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

    use super::*;

    const WAIT: Duration = Duration::from_millis(500);

    async fn recv(stream: &mut MessageStream<ChanItem>) -> ChanItem {
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("no message in time")
            .expect("stream ended")
    }

    async fn nothing(stream: &mut MessageStream<ChanItem>) {
        let got = tokio::time::timeout(Duration::from_millis(30), stream.next()).await;
        assert!(got.is_err(), "unexpected message: {got:?}");
    }

    #[tokio::test]
    async fn publish_reaches_subscribers_of_other_drivers_and_self() {
        let bus = MemoryBus::new();
        let a = MemoryDriver::new(bus.clone());
        let b = MemoryDriver::new(bus.clone());
        let mut sa = a.subscribe("chan".into(), 8).await.unwrap();
        let mut sb = b.subscribe("chan".into(), 8).await.unwrap();

        b.publish("chan".into(), b"hello".to_vec()).await.unwrap();
        assert_eq!(recv(&mut sa).await, ("chan".to_string(), b"hello".to_vec()));
        // Like Redis pub/sub, the publisher's own subscription gets the message too.
        assert_eq!(recv(&mut sb).await, ("chan".to_string(), b"hello".to_vec()));

        // Order is kept per channel.
        for i in 0..5u8 {
            a.publish("chan".into(), vec![i]).await.unwrap();
        }
        for i in 0..5u8 {
            assert_eq!(recv(&mut sb).await.1, vec![i]);
        }
    }

    /// Channels match exactly: the adapter's global request channel is a prefix of
    /// its per-node request channel, and neither may see the other's messages.
    #[tokio::test]
    async fn channels_match_exactly() {
        let bus = MemoryBus::new();
        let a = MemoryDriver::new(bus.clone());
        let b = MemoryDriver::new(bus.clone());
        let global = "socket.io-request#/#".to_string();
        let specific = "socket.io-request#/#abc#".to_string();
        let mut sg = a.subscribe(global.clone(), 8).await.unwrap();
        let mut ss = a.subscribe(specific.clone(), 8).await.unwrap();

        b.publish(specific.clone(), b"one".to_vec()).await.unwrap();
        assert_eq!(recv(&mut ss).await, (specific.clone(), b"one".to_vec()));
        nothing(&mut sg).await;

        b.publish(global.clone(), b"all".to_vec()).await.unwrap();
        assert_eq!(recv(&mut sg).await, (global, b"all".to_vec()));
        nothing(&mut ss).await;

        b.publish("socket.io-request#/#*".into(), b"x".to_vec())
            .await
            .unwrap();
        nothing(&mut sg).await;
        nothing(&mut ss).await;
    }

    #[tokio::test]
    async fn num_serv_counts_subscribed_drivers() {
        let bus = MemoryBus::new();
        let a = MemoryDriver::new(bus.clone());
        let b = MemoryDriver::new(bus.clone());
        let c = MemoryDriver::new(bus.clone());
        assert_eq!(a.num_serv("req").await.unwrap(), 0);

        let _sa = a.subscribe("req".into(), 8).await.unwrap();
        let _sb = b.subscribe("req".into(), 8).await.unwrap();
        let _other = c.subscribe("other".into(), 8).await.unwrap();
        assert_eq!(c.num_serv("req").await.unwrap(), 2);
        assert_eq!(c.num_serv("other").await.unwrap(), 1);

        // A second subscription by the same driver (a clone) replaces the first.
        let _sa2 = a.clone().subscribe("req".into(), 8).await.unwrap();
        assert_eq!(c.num_serv("req").await.unwrap(), 2);

        // Dropping every clone of a driver removes its subscriptions.
        drop(b);
        assert_eq!(c.num_serv("req").await.unwrap(), 1);
        assert_eq!(bus.subscribers("req"), 1);
    }

    #[tokio::test]
    async fn unsubscribe_ends_the_stream_and_stops_delivery() {
        let bus = MemoryBus::new();
        let a = MemoryDriver::new(bus.clone());
        let b = MemoryDriver::new(bus.clone());
        let mut sa = a.subscribe("chan".into(), 8).await.unwrap();
        let mut sb = b.subscribe("chan".into(), 8).await.unwrap();

        a.unsubscribe("chan".into()).await.unwrap();
        assert_eq!(a.num_serv("chan").await.unwrap(), 1);
        b.publish("chan".into(), b"after".to_vec()).await.unwrap();
        let end = tokio::time::timeout(WAIT, sa.next()).await.unwrap();
        assert_eq!(end, None, "the unsubscribed stream ends");
        assert_eq!(recv(&mut sb).await.1, b"after".to_vec());

        b.unsubscribe("chan".into()).await.unwrap();
        assert_eq!(bus.channels(), Vec::<String>::new());
        // Unsubscribing twice, or from an unknown channel, is fine.
        b.unsubscribe("chan".into()).await.unwrap();
        b.unsubscribe("nope".into()).await.unwrap();
    }

    #[tokio::test]
    async fn dropped_stream_no_longer_counts() {
        let bus = MemoryBus::new();
        let a = MemoryDriver::new(bus.clone());
        let sa = a.subscribe("chan".into(), 8).await.unwrap();
        assert_eq!(a.num_serv("chan").await.unwrap(), 1);
        drop(sa);
        assert_eq!(a.num_serv("chan").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn full_subscriber_does_not_block_the_publisher() {
        let bus = MemoryBus::new();
        let a = MemoryDriver::new(bus.clone());
        let b = MemoryDriver::new(bus.clone());
        let mut slow = a.subscribe("chan".into(), 1).await.unwrap();
        let mut fast = b.subscribe("chan".into(), 8).await.unwrap();
        b.publish("chan".into(), b"1".to_vec()).await.unwrap();
        b.publish("chan".into(), b"2".to_vec()).await.unwrap();
        assert_eq!(recv(&mut fast).await.1, b"1".to_vec());
        assert_eq!(recv(&mut fast).await.1, b"2".to_vec());
        assert_eq!(recv(&mut slow).await.1, b"1".to_vec());
        nothing(&mut slow).await;
    }

    type Io = SocketIo<CustomRedisAdapter<Emitter, MemoryDriver>>;

    fn node(bus: &Arc<MemoryBus>, timeout: Duration) -> Io {
        let config = RedisAdapterConfig::new().with_request_timeout(timeout);
        let ctr = RedisAdapterCtr::new_with_driver(MemoryDriver::new(bus.clone()), config);
        let (_svc, io) = SocketIo::builder()
            .with_adapter::<CustomRedisAdapter<_, _>>(ctr)
            .build_svc();
        io
    }

    /// Three socketioxide nodes over one bus: every request/response round trip
    /// (`rooms`, `fetch_sockets`) gets its answers from the two others well before
    /// the request timeout, which only happens if `num_serv` counts exactly.
    #[tokio::test]
    async fn socketioxide_nodes_answer_each_other_over_the_bus() {
        let bus = MemoryBus::new();
        let timeout = Duration::from_secs(5);
        let nodes = [
            node(&bus, timeout),
            node(&bus, timeout),
            node(&bus, timeout),
        ];
        for io in &nodes {
            io.ns(
                "/",
                |_: SocketRef<CustomRedisAdapter<Emitter, MemoryDriver>>| async {},
            )
            .await
            .unwrap();
        }
        let req_chan = "socket.io-request#/#";
        assert_eq!(bus.subscribers(req_chan), 3);
        // Each node has its global, specific request and response channels.
        assert_eq!(bus.channels().len(), 7);

        for io in &nodes {
            let started = Instant::now();
            assert!(io.rooms().await.unwrap().is_empty());
            assert!(io.fetch_sockets().await.unwrap().is_empty());
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "requests waited for a timeout: {:?}",
                started.elapsed()
            );
        }
    }
}
