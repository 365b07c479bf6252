//! Drivers of our own for the socketioxide-redis adapter
//! ([`socketioxide_redis::drivers::Driver`]): the adapter speaks pub/sub — publish to a
//! channel, subscribe to a channel as a stream of messages, unsubscribe, and count the
//! servers subscribed to a channel — and a driver carries it.
//!
//! - [`memory`]: an in-process bus, for several nodes in one process with no Redis.
//! - [`streams`]: Redis Streams instead of pub/sub, so a node whose connection drops
//!   replays what it missed when it comes back instead of losing it.
//! - [`pubsub`]: Redis pub/sub that reconnects and resubscribes, used instead of the
//!   stock driver, which stays broken after Redis restarts.
//!
//! The stock pub/sub driver is `socketioxide_redis::drivers::redis::RedisDriver`; it
//! exposes no connection state, so [`DriverHealth`] probes any driver through its
//! own connection to report it.

pub mod memory;
pub mod pubsub;
pub mod streams;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socketioxide_redis::drivers::Driver;

pub use memory::{MemoryBus, MemoryDriver};
pub use pubsub::PubSubDriver;
pub use streams::{StreamsDriver, StreamsOptions};

/// Connection health of any [`Driver`], found by calling [`Driver::num_serv`] every
/// `interval` (for the Redis pub/sub driver, a `PUBSUB NUMSUB` on the driver's own
/// connection). The probing task stops when this is dropped.
#[derive(Debug)]
pub struct DriverHealth {
    connected: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl DriverHealth {
    /// The channel the probe counts subscribers of; nothing is published to it.
    pub const PROBE_CHANNEL: &'static str = "tether-health-probe";

    /// Probes `driver` now and then every `interval`. Must be called inside a Tokio
    /// runtime. [`DriverHealth::connected`] is false until the first probe succeeds.
    pub fn spawn<D: Driver>(driver: D, interval: Duration) -> DriverHealth {
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ok = match tokio::time::timeout(
                    interval.max(Duration::from_secs(1)),
                    driver.num_serv(Self::PROBE_CHANNEL),
                )
                .await
                {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        tracing::debug!("adapter driver probe failed: {e}");
                        false
                    }
                    Err(_) => false,
                };
                flag.store(ok, Ordering::Relaxed);
            }
        });
        DriverHealth { connected, task }
    }

    /// Whether the last probe succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

impl Drop for DriverHealth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn driver_health_reports_a_working_driver() {
        let driver = MemoryDriver::new(MemoryBus::new());
        let health = DriverHealth::spawn(driver, Duration::from_millis(20));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !health.connected() {
            assert!(tokio::time::Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A driver whose failed publishes are logged and swallowed. socketioxide-redis skips
/// the local half of a broadcast when its publish fails, so without this a node whose
/// Redis is gone would stop delivering even to its own clients; with it, a message Redis
/// cannot take is lost for the other nodes only.
#[derive(Debug, Clone)]
pub struct LocalFirst<D>(pub D);

impl<D: Driver> Driver for LocalFirst<D> {
    type Error = D::Error;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        if let Err(e) = self.0.publish(chan, val).await {
            tracing::warn!(error = %e, "publish failed; delivered on this node only");
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<
        socketioxide_redis::drivers::MessageStream<socketioxide_redis::drivers::ChanItem>,
        Self::Error,
    > {
        self.0.subscribe(chan, size).await
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.0.unsubscribe(chan).await
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        self.0.num_serv(chan).await
    }
}
