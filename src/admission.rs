//! Per-client limits: no single address may take more than its share of a tether.
//!
//! Keyed by the client's address — the TCP peer for connections, the address believed
//! through `trusted_proxies` for requests — with IPv6 clients keyed by their /64, since
//! one host commonly holds a whole /64 and could otherwise rotate through it. Each client
//! has a count of open connections and two token buckets: new sessions (Engine.IO
//! handshakes and WebSocket-only sessions) and requests. Allow and deny lists by CIDR are
//! checked first.
//!
//! The table is sharded like the sid table and bounded: past [`MAX_CLIENTS`] tracked
//! addresses, new ones share one entry, so a flood from many addresses is limited as
//! one client instead of growing the table.
//!
//! Beside the per-client state, [`SessionRate`] is a backend's budget of new sessions
//! across all its clients (a reconnect storm after a node died), one atomic per
//! handshake.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::{AHashMap, RandomState};
use ipnet::IpNet;
use tether_kit::clock::now_ms;
use tether_kit::lock;

use crate::config::{ClientLimits, Rate};

/// Most client addresses tracked at once.
pub const MAX_CLIENTS: usize = 262_144;

const SHARDS: usize = 64;

/// An entry untouched this long, with no connection open and full buckets, is dropped.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the client's address is not allowed")]
    Denied,
    #[error("the client has too many connections open")]
    Connections,
    #[error("the client starts sessions too fast")]
    Handshakes,
    #[error("the client sends requests too fast")]
    Requests,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Denied => "denied",
            Refused::Connections => "connections",
            Refused::Handshakes => "handshakes",
            Refused::Requests => "requests",
        }
    }
}

/// The key of a client: IPv4 as is, IPv6 by its /64.
fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64 << 64) | (1 << 32),
        },
    }
}

/// The key all clients share once the table is full.
const OVERFLOW: u128 = u128::MAX;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    fn full(rate: &Rate, now: u64) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            last_ms: now,
        }
    }

    /// Takes a token if there is one; else how long until there is.
    fn take(&mut self, rate: &Rate, now: u64) -> Result<(), Duration> {
        let elapsed = now.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.last_ms = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate.per_second.max(f64::MIN_POSITIVE);
            Err(Duration::from_secs_f64(wait.min(3600.0)))
        }
    }

    fn is_full(&self, rate: &Rate, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens + elapsed * rate.per_second >= f64::from(rate.burst)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    connections: u32,
    handshakes: Bucket,
    requests: Bucket,
    touched_ms: u64,
}

type Shard = AHashMap<u128, Entry>;

/// The live per-client state; the rules come from the config in force at each call.
#[derive(Debug)]
pub struct Admission {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
        }
    }
}

/// A connection counted against its client until dropped.
#[derive(Debug)]
pub struct Connection {
    admission: Arc<Admission>,
    key: u128,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut shard = self.admission.shard(self.key);
        if let Some(e) = shard.get_mut(&self.key) {
            e.connections = e.connections.saturating_sub(1);
        }
    }
}

impl Admission {
    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, Shard> {
        lock(&self.shards[(self.hasher.hash_one(key) as usize) % SHARDS])
    }

    /// Runs `f` on the client's entry, creating it (or using the shared overflow entry
    /// when the table is full).
    fn with_entry<T>(
        &self,
        ip: IpAddr,
        limits: &ClientLimits,
        f: impl FnOnce(u128, &mut Entry) -> T,
    ) -> T {
        let now = now_ms();
        let fresh = || Entry {
            connections: 0,
            handshakes: Bucket::full(&limits.handshakes, now),
            requests: Bucket::full(&limits.requests, now),
            touched_ms: now,
        };
        let mut k = key(ip);
        let mut shard = self.shard(k);
        if !shard.contains_key(&k) && shard.len() >= MAX_CLIENTS / SHARDS {
            drop(shard);
            k = OVERFLOW;
            shard = self.shard(k);
        }
        let entry = shard.entry(k).or_insert_with(fresh);
        entry.touched_ms = now;
        f(k, entry)
    }

    /// Admits a new connection from `ip`, counted until the returned guard drops.
    pub fn connect(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &ClientLimits,
    ) -> Result<Connection, Refused> {
        if !allowed(ip, limits) {
            return Err(Refused::Denied);
        }
        self.with_entry(ip, limits, |k, e| {
            if e.connections >= limits.connections {
                return Err(Refused::Connections);
            }
            e.connections += 1;
            Ok(Connection {
                admission: Arc::clone(self),
                key: k,
            })
        })
    }

    /// Admits a request from `ip` (a new session when `starts_session`); `Err` says why
    /// not and when to try again.
    pub fn request(
        &self,
        ip: IpAddr,
        starts_session: bool,
        limits: &ClientLimits,
    ) -> Result<(), (Refused, Duration)> {
        if !allowed(ip, limits) {
            return Err((Refused::Denied, Duration::ZERO));
        }
        let now = now_ms();
        self.with_entry(ip, limits, |_, e| {
            if starts_session {
                e.handshakes
                    .take(&limits.handshakes, now)
                    .map_err(|wait| (Refused::Handshakes, wait))?;
            }
            e.requests
                .take(&limits.requests, now)
                .map_err(|wait| (Refused::Requests, wait))
        })
    }

    /// Forgets clients with nothing open, full buckets and no recent visit. Returns how
    /// many are still tracked.
    pub fn sweep(&self, limits: &ClientLimits) -> usize {
        let now = now_ms();
        let forget = FORGET_AFTER.as_millis() as u64;
        self.shards
            .iter()
            .map(|s| {
                let mut shard = lock(s);
                shard.retain(|_, e| {
                    e.connections > 0
                        || now.saturating_sub(e.touched_ms) < forget
                        || !e.handshakes.is_full(&limits.handshakes, now)
                        || !e.requests.is_full(&limits.requests, now)
                });
                shard.len()
            })
            .sum()
    }
}

/// A backend's budget of new sessions across all its clients: a token bucket of `burst`
/// tokens refilled at `per_second`, kept as GCRA's one "theoretical arrival time" in an
/// atomic, so a handshake costs one compare-and-swap and nothing else waits on it.
///
/// It outlives routing snapshots (a reload or a discovery answer does not hand out a
/// fresh burst in the middle of a storm); the rate in force is passed to each call, so a
/// reload that changes it applies to the next handshake.
#[derive(Debug)]
pub struct SessionRate {
    /// When the bucket will be full again, in nanoseconds since `epoch` (the bucket is
    /// full whenever this is not after now).
    tat_ns: AtomicU64,
    epoch: tokio::time::Instant,
}

impl Default for SessionRate {
    fn default() -> Self {
        SessionRate {
            tat_ns: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl SessionRate {
    /// Takes a token for a new session if there is one; else how long until there is.
    pub fn admit(&self, rate: &Rate) -> Result<(), Duration> {
        let now = self.epoch.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        let interval = (1e9 / rate.per_second.max(f64::MIN_POSITIVE)).clamp(1.0, 1e18) as u64;
        // A full bucket lets `burst` handshakes through at one instant: the arrival time
        // may run this far ahead of now.
        let tolerance = interval.saturating_mul(u64::from(rate.burst.max(1)) - 1);
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > tolerance {
                return Err(Duration::from_nanos(start - now - tolerance));
            }
            match self.tat_ns.compare_exchange_weak(
                tat,
                start.saturating_add(interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Tokens in the bucket now (fractional), for status and tests.
    pub fn tokens(&self, rate: &Rate) -> f64 {
        let now = self.epoch.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        let tat = self.tat_ns.load(Ordering::Relaxed).max(now);
        let interval = 1e9 / rate.per_second.max(f64::MIN_POSITIVE);
        (f64::from(rate.burst) - (tat - now) as f64 / interval).max(0.0)
    }
}

fn allowed(ip: IpAddr, limits: &ClientLimits) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let listed = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ip));
    (limits.allow.is_empty() || listed(&limits.allow)) && !listed(&limits.deny)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, handshakes: (f64, u32), requests: (f64, u32)) -> ClientLimits {
        ClientLimits {
            connections,
            handshakes: Rate {
                per_second: handshakes.0,
                burst: handshakes.1,
            },
            requests: Rate {
                per_second: requests.0,
                burst: requests.1,
            },
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    #[test]
    fn connections_are_capped_per_client_and_given_back() {
        let a = Arc::new(Admission::default());
        let l = limits(2, (1.0, 1), (1.0, 1));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let c1 = a.connect(ip, &l).unwrap();
        let _c2 = a.connect(ip, &l).unwrap();
        assert_eq!(a.connect(ip, &l).unwrap_err(), Refused::Connections);
        assert!(
            a.connect("10.0.0.2".parse().unwrap(), &l).is_ok(),
            "another client"
        );
        drop(c1);
        assert!(a.connect(ip, &l).is_ok(), "a place given back");
    }

    #[test]
    fn bursts_pass_and_a_sustained_flood_is_held_to_the_rate() {
        let a = Admission::default();
        let l = limits(10, (10.0, 5), (1000.0, 1000));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let passed = (0..100).filter(|_| a.request(ip, true, &l).is_ok()).count();
        assert_eq!(passed, 5, "the burst, then nothing until tokens come back");
        let (why, wait) = a.request(ip, true, &l).unwrap_err();
        assert_eq!(why, Refused::Handshakes);
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(
            a.request(ip, false, &l).is_ok(),
            "requests have their own bucket"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert!(a.request(ip, true, &l).is_ok(), "refilled at the rate");
    }

    #[test]
    fn ipv6_clients_are_one_client_per_64() {
        let a = Arc::new(Admission::default());
        let l = limits(1, (1.0, 1), (1.0, 1));
        let _c = a.connect("2001:db8::1".parse().unwrap(), &l).unwrap();
        assert_eq!(
            a.connect("2001:db8::ffff:1".parse().unwrap(), &l)
                .unwrap_err(),
            Refused::Connections
        );
        assert!(a.connect("2001:db8:0:1::1".parse().unwrap(), &l).is_ok());
        let _mapped = a
            .connect("::ffff:10.0.0.1".parse().unwrap(), &l)
            .expect("mapped IPv4 is IPv4");
        assert_eq!(
            a.connect("10.0.0.1".parse().unwrap(), &l).unwrap_err(),
            Refused::Connections
        );
    }

    #[test]
    fn allow_and_deny_lists_come_first() {
        let a = Arc::new(Admission::default());
        let mut l = limits(10, (1.0, 1), (1.0, 1));
        l.deny = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            a.connect("10.1.2.3".parse().unwrap(), &l).unwrap_err(),
            Refused::Denied
        );
        l.deny.clear();
        l.allow = vec!["192.168.0.0/16".parse().unwrap()];
        assert_eq!(
            a.connect("10.1.2.3".parse().unwrap(), &l).unwrap_err(),
            Refused::Denied
        );
        assert!(a.connect("192.168.1.1".parse().unwrap(), &l).is_ok());
    }

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_budget_passes_its_burst_then_its_rate() {
        let bucket = SessionRate::default();
        let r = rate(100.0, 50);
        let passed = (0..500).filter(|_| bucket.admit(&r).is_ok()).count();
        assert_eq!(passed, 50, "the burst at one instant, nothing more");
        let wait = bucket.admit(&r).unwrap_err();
        assert_eq!(wait, Duration::from_millis(10), "one token every 10 ms");
        // 10 ms later: exactly one more.
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(bucket.admit(&r).is_ok());
        assert!(bucket.admit(&r).is_err());
        // A steady storm: over 10 s, the rate and nothing else.
        let mut admitted = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            admitted += (0..20).filter(|_| bucket.admit(&r).is_ok()).count();
        }
        assert_eq!(admitted, 1000, "100/s for 10 s");
        // Idle for long: the bucket fills up to its burst, never beyond.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!((bucket.tokens(&r) - 50.0).abs() < 1e-9);
        let passed = (0..500).filter(|_| bucket.admit(&r).is_ok()).count();
        assert_eq!(passed, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_budget_refills_fractionally_and_follows_a_new_rate() {
        let bucket = SessionRate::default();
        let slow = rate(0.5, 1);
        assert!(bucket.admit(&slow).is_ok());
        assert_eq!(bucket.admit(&slow).unwrap_err(), Duration::from_secs(2));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(bucket.admit(&slow).unwrap_err(), Duration::from_millis(500));
        assert!((bucket.tokens(&slow) - 0.75).abs() < 1e-9);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(bucket.admit(&slow).is_ok());
        // A reload to a faster rate: the debt is kept, the new pace applies from now.
        let fast = rate(1000.0, 10);
        tokio::time::advance(Duration::from_secs(2)).await;
        let passed = (0..100).filter(|_| bucket.admit(&fast).is_ok()).count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn a_backend_budget_is_never_overspent_by_racing_threads() {
        let bucket = Arc::new(SessionRate::default());
        // A rate so slow that no token comes back while the threads race.
        let r = rate(0.001, 64);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let bucket = Arc::clone(&bucket);
                std::thread::spawn(move || (0..1000).filter(|_| bucket.admit(&r).is_ok()).count())
            })
            .collect();
        let passed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(passed, 64);
    }

    #[test]
    fn idle_clients_are_forgotten_and_busy_ones_kept() {
        let a = Arc::new(Admission::default());
        let l = limits(10, (1000.0, 1), (1000.0, 1));
        let _open = a.connect("10.0.0.1".parse().unwrap(), &l).unwrap();
        a.request("10.0.0.2".parse().unwrap(), false, &l).unwrap();
        assert_eq!(a.sweep(&l), 2, "both seen just now");
    }
}
