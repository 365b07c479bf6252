//! Keeping a client on its server: the learned sid table (first), the signed cookie
//! (second), and the hash key of a new session (last), plus the trusted-proxy rules that
//! decide which client address those keys may believe.
//!
//! - [`Affinity`]: one backend's rules, built with each routing snapshot.
//! - [`pick`]: which server a request goes to, key by key (sid, cookie, placement).
//! - [`learn`]: what a response teaches (a new sid, a session found by its cookie) and
//!   the cookie it sets.
//! - [`sid_table`], [`cookie`], [`client_ip`]: the keys themselves.

pub mod client_ip;
pub mod cookie;
pub mod learn;
pub mod pick;
pub mod sid_key;
pub mod sid_table;

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, Uri};

use crate::balance::placement_hash;
use crate::config::{BackendConfig, Balance, HashKey};

pub use cookie::CookieSigner;
pub use pick::{Keys, Lost, Miss, Target};
pub use sid_table::{SessionInfo, SessionPin, SidTable};

/// One backend's affinity rules.
#[derive(Debug)]
pub struct Affinity {
    /// Sessions stay on their server (`balance: sticky`); `false` for round robin, where
    /// nothing is learned and no cookie is set.
    pub sticky: bool,
    pub hash_key: HashKey,
    pub cookie: Option<CookieSigner>,
    /// How long past its heartbeat a silent session is kept.
    pub idle_margin: Duration,
    /// Whether sids are recorded in the table (`sessions.capacity` above 0).
    pub learns: bool,
}

impl Affinity {
    pub fn new(cfg: &BackendConfig) -> Affinity {
        let liveness = crate::engineio::DEFAULT_HEARTBEAT + cfg.sessions.idle_margin;
        Affinity {
            sticky: cfg.balance == Balance::Sticky,
            hash_key: cfg.hash_key.clone(),
            cookie: cfg
                .cookie
                .as_ref()
                .map(|c| CookieSigner::new(c, &cfg.name, liveness)),
            idle_margin: cfg.sessions.idle_margin,
            learns: cfg.sessions.capacity > 0,
        }
    }
}

/// The placement hash of a new session's key. A request that lacks the configured
/// header / query parameter / cookie falls back to its client address, so it is still
/// placed deterministically.
pub fn hash_key(key: &HashKey, uri: &Uri, headers: &HeaderMap, client: IpAddr) -> u64 {
    let found = match key {
        HashKey::ClientIp => None,
        HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
        HashKey::Query(name) => uri
            .query()
            .and_then(|q| query_value(q, name))
            .map(str::as_bytes),
        HashKey::Cookie(name) => cookie::cookie_value(headers, name).map(str::as_bytes),
    };
    match found {
        Some(bytes) => placement_hash(bytes),
        None => ip_hash(client),
    }
}

/// Hash of an address's octets, so `10.0.0.1` hashes the same whatever its spelling.
pub fn ip_hash(ip: IpAddr) -> u64 {
    match client_ip::canonical(ip) {
        IpAddr::V4(v4) => placement_hash(&v4.octets()),
        IpAddr::V6(v6) => placement_hash(&v6.octets()),
    }
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> (Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (uri.parse().unwrap(), h)
    }

    #[test]
    fn configured_key_is_hashed_and_missing_key_falls_back_to_the_ip() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (u, h) = parts("/s/?EIO=4&transport=polling&token=abc", &[("x-user", "u1")]);
        let key = |k: HashKey| hash_key(&k, &u, &h, ip);
        assert_eq!(key(HashKey::Query("token".into())), placement_hash(b"abc"));
        assert_eq!(
            key(HashKey::Header("x-user".parse().unwrap())),
            placement_hash(b"u1")
        );
        assert_eq!(key(HashKey::Cookie("uid".into())), ip_hash(ip));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(ip_hash(mapped), ip_hash(ip));
    }
}
