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
use crate::backends::{Backend, NoRoom, Server, SessionGuard};
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Miss {
    /// The request names a session no server here can serve: Engine.IO's `Session ID
    /// unknown`, which makes the client re-handshake at once.
    #[error("{0}")]
    SessionUnknown(Lost),
    /// No server of the backend can take a new session now.
    #[error("backend {backend}: no server can take a new session: {why}")]
    NoServer { backend: Arc<str>, why: NoRoom },
}

/// Why a request's session cannot be served: said in the log, and counted by cause
/// (`tether_engineio_sid_unknown_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    /// Neither learned here (tether restarted, another instance learned it, or it
    /// expired) nor named by a cookie.
    #[error("unknown sid: never learned here (or expired) and no cookie names its server")]
    Unknown,
    /// Its server left the config (or the cookie names a server the backend lacks).
    #[error("the session's server is no longer in the backend")]
    ServerGone,
    #[error("the session's server is down")]
    ServerDown,
    #[error("the session's server is in maintenance")]
    Maint,
}

impl Lost {
    /// The metric's `cause` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Lost::Unknown => "unknown",
            Lost::ServerGone => "server_gone",
            Lost::ServerDown => "server_down",
            Lost::Maint => "maint",
        }
    }
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
            let target = self.place_new(backend, 0, false, &[])?;
            placed(backend, target.server, backend.policy().as_str(), false);
            return Ok(target);
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
                    other => return Err(session_lost(backend, sid, other, Lost::ServerGone)),
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
                other => {
                    let otherwise = match cookie {
                        Some(_) => Lost::ServerGone,
                        None => Lost::Unknown,
                    };
                    return Err(session_lost(backend, sid, other, otherwise));
                }
            };
            return Ok(found(server));
        }

        // A cookie names a server for a new session only while nothing advises against it:
        // draining, maint, full, avoided, or over its share of load.
        let session = keys.eio.is_some();
        if let Some(server) = cookie_server.filter(|s| backend.welcomes(s)) {
            placed(backend, server, "cookie", session);
            return Ok(found(server));
        }
        // Only a new session needs its hash key: requests of known sessions (the vast
        // majority) never compute it.
        let key = hash_key(&self.hash_key, keys.uri, keys.headers, keys.client);
        let target = self.place_new(backend, key, session, &[])?;
        placed(backend, target.server, backend.policy().as_str(), session);
        Ok(target)
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
        let (i, server) = backend.place(key, tried).ok_or_else(|| Miss::NoServer {
            backend: Arc::clone(&backend.name),
            why: backend.no_room(),
        })?;
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

/// Says where a request without a session (a new one, when `session`) was placed, and
/// by what: `cookie`, or the backend's policy. At debug: a level check when off.
fn placed(backend: &Backend, server: &Server, policy: &'static str, session: bool) {
    if session {
        tracing::debug!(backend = %backend.name, server = %server.id, %policy, "new session placed");
    } else {
        tracing::debug!(backend = %backend.name, server = %server.id, %policy, "request placed");
    }
}

/// Counts and logs a request whose session cannot be served: its server is known but
/// cannot serve it (in maint, or down), or is not known at all (`otherwise`: it left the
/// config, or the sid was never learned here).
fn session_lost(backend: &Backend, sid: &str, server: Option<&Server>, otherwise: Lost) -> Miss {
    let lost = match server {
        Some(s) if s.stats.condition.state() == ServerState::Maint => Lost::Maint,
        Some(_) => Lost::ServerDown,
        None => otherwise,
    };
    metrics::counter!(telemetry::SID_UNKNOWN, "backend" => backend.name.to_string(), "cause" => lost.as_str())
        .increment(1);
    let server = server.map(|s| tracing::field::display(&s.id));
    tracing::debug!(backend = %backend.name, %sid, server, reason = %lost, "Session ID unknown");
    Miss::SessionUnknown(lost)
}
