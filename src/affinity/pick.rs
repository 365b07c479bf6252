//! Which server a request goes to, in the order DESIGN.md gives: the learned sid, then
//! the signed cookie, then placement of a new session.
//!
//! Sticky fallback is explicit: a sid's server that can no longer serve it means the
//! session is lost (the client must re-handshake, which Engine.IO's own error makes it
//! do at once); a cookie's server that cannot take new sessions is passed over and the
//! session placed anew.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Uri};

use super::{hash_key, Affinity, SessionPin, SidTable};
use crate::backends::{Backend, Server, SessionGuard};
use crate::config::ServerState;
use crate::engineio::EioQuery;
use crate::telemetry;

/// Where a request goes, and what it holds while it runs.
#[derive(Debug)]
pub struct Target<'s> {
    pub server: &'s Server,
    /// The session's table entry, pinned while the request (or tunnel) runs.
    pub pin: Option<SessionPin>,
    /// A new session placed here: counted as load until its handshake answers.
    pub pending: Option<SessionGuard>,
    /// Whether the client already holds a fresh cookie naming this server.
    pub cookie_current: bool,
    /// Whether it holds one that is growing old: a new one replaces it, pinned or not.
    pub cookie_refresh: bool,
    /// Set when placement chose the server for a new session (its index in the
    /// backend, and the placement hash key): such a request may be retried on the next
    /// server in placement order if the connect fails.
    pub placed: Option<(usize, u64)>,
}

/// Why no server was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Miss {
    /// The request names a session whose server is gone (or that no key can find).
    #[error("the session's server is gone")]
    SessionUnknown,
    /// No server can take a new session now.
    #[error("no server can take a new session")]
    NoServer,
}

/// A request's keys, as [`Affinity::pick`] reads them.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'r> {
    pub uri: &'r Uri,
    pub headers: &'r HeaderMap,
    /// The client's address (after trusted proxies).
    pub client: IpAddr,
    pub eio: Option<EioQuery<'r>>,
    /// A WebSocket upgrade: its sid is pinned for the tunnel's life.
    pub upgrade: bool,
}

impl Affinity {
    /// Chooses the server: learned sid, then cookie, then placement of a new session.
    pub fn pick<'b>(
        &self,
        backend: &'b Backend,
        sids: &Arc<SidTable>,
        keys: Keys<'_>,
    ) -> Result<Target<'b>, Miss> {
        let cookie = self.cookie.as_ref().and_then(|c| c.read(keys.headers));
        let cookie_server = cookie.and_then(|c| backend.server(c.server));
        let stale = cookie.is_some_and(|c| c.stale);
        let found = |server: &'b Server| {
            let names_it = cookie_server.is_some_and(|c| c.id == server.id);
            Target {
                server,
                pin: None,
                pending: None,
                cookie_current: names_it && !stale,
                cookie_refresh: names_it && stale,
                placed: None,
            }
        };
        if !self.sticky {
            // Round robin has no key to hash.
            return self.place_new(backend, 0, false, &[]);
        }

        if let Some(sid) = keys.eio.and_then(|q| q.sid) {
            let pinned = if keys.upgrade {
                sids.pin_tunnel(sid)
            } else {
                sids.pin_poll(sid)
            };
            if let Some(pin) = pinned {
                let stats = pin.server();
                let server = (*stats.backend == *backend.name)
                    .then(|| backend.server(&stats.id))
                    .flatten();
                let server = match server {
                    Some(s) if s.serves_pinned() => s,
                    other => return Err(session_lost(backend, other, "server_gone")),
                };
                return Ok(Target {
                    pin: Some(pin),
                    ..found(server)
                });
            }
            // Not learned here (tether restarted, or another instance learned it): the
            // cookie still knows the server. Without one, the session is lost to us.
            let server = match cookie_server {
                Some(s) if s.serves_pinned() => s,
                other => return Err(session_lost(backend, other, "unknown")),
            };
            return Ok(found(server));
        }

        // A cookie names a server for a new session only while nothing advises against it:
        // draining, maint, full, avoided, or over its share of load.
        if let Some(server) = cookie_server.filter(|s| backend.welcomes(s)) {
            return Ok(found(server));
        }
        // Only a new session needs its hash key: requests of known sessions (the vast
        // majority) never compute it.
        let key = hash_key(&self.hash_key, keys.uri, keys.headers, keys.client);
        self.place_new(backend, key, keys.eio.is_some(), &[])
    }

    /// Places a new session (or a stateless request), avoiding `tried` servers. An
    /// Engine.IO handshake on a sticky backend counts as load until it is answered.
    pub fn place_new<'b>(
        &self,
        backend: &'b Backend,
        key: u64,
        engine_io: bool,
        tried: &[usize],
    ) -> Result<Target<'b>, Miss> {
        let (i, server) = backend.place(key, tried).ok_or(Miss::NoServer)?;
        Ok(Target {
            server,
            pin: None,
            pending: (engine_io && self.sticky)
                .then(|| SessionGuard::pending(Arc::clone(&server.stats))),
            // Round robin sets no cookie.
            cookie_current: !self.sticky,
            cookie_refresh: false,
            placed: Some((i, key)),
        })
    }
}

/// Counts a request whose session cannot be served: its server is known but cannot serve
/// it (in maint, or down), or is not known at all (`otherwise`: it left the config, or
/// the sid was never learned here).
fn session_lost(backend: &Backend, server: Option<&Server>, otherwise: &'static str) -> Miss {
    let cause = match server {
        Some(s) if s.stats.condition.state() == ServerState::Maint => "maint",
        Some(_) => "server_down",
        None => otherwise,
    };
    metrics::counter!(telemetry::SID_UNKNOWN, "backend" => backend.name.to_string(), "cause" => cause)
        .increment(1);
    Miss::SessionUnknown
}
