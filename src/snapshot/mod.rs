//! The routing snapshot: everything a request needs, immutable, behind one `ArcSwap`.
//!
//! A request does one `load()` and sees one consistent world (routes, backends with their
//! placement and server handles, each backend's affinity rules) however many reloads or
//! health flips happen while it runs. Building a snapshot happens off the request path,
//! in the [`Store`], which also keeps what must survive a swap (live counters, the sid
//! table, servers that left the config but still carry sessions).

pub mod store;

use ipnet::IpNet;

use crate::affinity::Affinity;
use crate::backends::Backend;
use crate::config::{Config, HostMatch, Limits};

pub use store::{Store, StoreError};

#[derive(Debug)]
pub struct Snapshot {
    routes: Vec<Route>,
    pub backends: Vec<Backend>,
    /// Each backend's affinity rules, by the same index as `backends`.
    affinity: Vec<Affinity>,
    pub trusted_proxies: Vec<IpNet>,
    pub limits: Limits,
}

#[derive(Debug)]
struct Route {
    host: Option<HostMatch>,
    path_prefix: String,
    /// `None`: a deny rule.
    backend: Option<usize>,
}

/// Why no backend serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// No route matches.
    NoRoute,
    /// A deny rule matches first.
    Denied,
}

impl Route {
    /// `host`: no port, no trailing dot. A prefix matches whole segments: `/a` matches
    /// `/a` and `/a/…`, not `/apple`.
    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let Some(rest) = path.strip_prefix(self.path_prefix.as_str()) else {
            return false;
        };
        let whole_segments =
            rest.is_empty() || self.path_prefix.ends_with('/') || rest.starts_with('/');
        if !whole_segments {
            return false;
        }
        match (&self.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(HostMatch::Exact(want)), Some(h)) => h.eq_ignore_ascii_case(want),
            (Some(HostMatch::Suffix(suffix)), Some(h)) => {
                h.len() > suffix.len()
                    && h.is_char_boundary(h.len() - suffix.len())
                    && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl Snapshot {
    /// `backends` are `config`'s backends, in its order, with their servers resolved.
    fn new(config: &Config, backends: Vec<Backend>) -> Snapshot {
        Snapshot {
            routes: config
                .routes
                .iter()
                .map(|r| Route {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    backend: r.backend,
                })
                .collect(),
            affinity: config.backends.iter().map(Affinity::new).collect(),
            backends,
            trusted_proxies: config.trusted_proxies.clone(),
            limits: config.limits.clone(),
        }
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| &*b.name == name)
    }

    /// The backend (and its affinity rules) of the first route matching `host` (port
    /// already stripped) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Result<(&Backend, &Affinity), Unrouted> {
        let route = self
            .routes
            .iter()
            .find(|r| r.matches(host, path))
            .ok_or(Unrouted::NoRoute)?;
        let i = route.backend.ok_or(Unrouted::Denied)?;
        match (self.backends.get(i), self.affinity.get(i)) {
            (Some(b), Some(a)) => Ok((b, a)),
            _ => Err(Unrouted::NoRoute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<HostMatch>, prefix: &str) -> Route {
        Route {
            host,
            path_prefix: prefix.into(),
            backend: Some(0),
        }
    }

    #[test]
    fn routes_match_host_and_prefix() {
        let r = route(Some(HostMatch::Exact("example.com".into())), "/socket.io/");
        assert!(r.matches(Some("EXAMPLE.com"), "/socket.io/?EIO=4"));
        assert!(!r.matches(Some("example.org"), "/socket.io/"));
        assert!(!r.matches(None, "/socket.io/"));
        assert!(!r.matches(Some("example.com"), "/other"));
        let w = route(Some(HostMatch::Suffix(".example.com".into())), "/");
        assert!(w.matches(Some("a.example.com"), "/x"));
        assert!(!w.matches(Some("example.com"), "/x"));
        assert!(!w.matches(Some("é.example.co"), "/x"));
        assert!(route(None, "/").matches(None, "/anything"));
        let a = route(None, "/a");
        assert!(a.matches(None, "/a") && a.matches(None, "/a/x") && a.matches(None, "/a/"));
        assert!(!a.matches(None, "/apple"), "prefixes match whole segments");
        assert!(route(None, "/socket.io/").matches(None, "/socket.io/"));
    }
}
