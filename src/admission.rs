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

use std::net::IpAddr;
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

    #[test]
    fn idle_clients_are_forgotten_and_busy_ones_kept() {
        let a = Arc::new(Admission::default());
        let l = limits(10, (1000.0, 1), (1000.0, 1));
        let _open = a.connect("10.0.0.1".parse().unwrap(), &l).unwrap();
        a.request("10.0.0.2".parse().unwrap(), false, &l).unwrap();
        assert_eq!(a.sweep(&l), 2, "both seen just now");
    }
}
