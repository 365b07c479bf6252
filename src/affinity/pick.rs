//! Which server a request goes to, in the order DESIGN.md gives: the learned sid, then
//! its server's `sid_prefix`, then the signed cookie, then placement of a new session.
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
use crate::fleet::Recall;
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
    /// expired), nor carrying a server's `sid_prefix`, nor named by a cookie.
    #[error("unknown sid: never learned here (or expired), no server's sid_prefix starts it and no cookie names its server")]
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
    /// Chooses the server: learned sid, then the sid's prefix, then cookie, then placement
    /// of a new session.
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
            // Not learned here (no table, tether restarted, or another instance learned
            // it). A sid carrying a server's `sid_prefix` was generated by that server:
            // it is asked before the cookie, which names the server the client was last
            // placed on and may be older than this session (a client re-placed after its
            // server went down keeps its old cookie until the answer replaces it), while
            // the prefix cannot disagree with where the session lives. Its server unable
            // to serve it means the session is lost: no other server has it.
            if let Some(server) = backend.by_sid_prefix(sid) {
                if !server.serves_pinned() {
                    return Err(session_lost(backend, sid, Some(server), Lost::ServerGone));
                }
                return Ok(found(server));
            }
            // Otherwise the cookie still knows the server. Without one, the session is
            // lost to us.
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

    /// Before [`pick`](Self::pick), for a request naming a sid this instance does not
    /// know: asks the fleet's registry (when there is one) and records the server it
    /// names, so `pick` finds the session as if it had been learned here. A sid carrying
    /// a server's `sid_prefix` needs no question. A server this config lacks is never
    /// routed to: the sid stays unknown (and the cookie, if any, decides).
    pub async fn recall(&self, backend: &Backend, sids: &SidTable, keys: Keys<'_>) {
        let Some(sid) = keys.eio.and_then(|q| q.sid) else {
            return;
        };
        let Some(fleet) = sids.fleet().filter(|f| f.is_on()) else {
            return;
        };
        if !self.sticky
            || !self.learns
            || sid.is_empty()
            || sids.knows(sid)
            || backend.by_sid_prefix(sid).is_some()
        {
            return;
        }
        let Recall::Found(id) = fleet.recall(&backend.name, sid).await else {
            return;
        };
        match backend.server(&id) {
            Some(server) => {
                let ttl = crate::engineio::DEFAULT_HEARTBEAT + self.idle_margin;
                let stats = Arc::clone(&server.stats);
                if sids.insert_recalled(sid, stats, ttl, keys.client).is_ok() {
                    tracing::debug!(%sid, backend = %backend.name, server = %id, "sid recalled from the registry");
                }
            }
            None => {
                fleet.count_foreign();
                tracing::debug!(%sid, backend = %backend.name, server = %id, "the registry names a server this config lacks; the sid stays unknown here");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::backends::Registry;
    use crate::engineio::Transport;

    const YAML: &str = "listeners:\n  - bind: 127.0.0.1:0\nbackends:\n  b:\n    cookie:\n      secret: \"unit-test-secret-0123456789\"\n    servers:\n      - { id: a, addr: \"127.0.0.1:1\", sid_prefix: \"a-\" }\n      - { id: c, addr: \"127.0.0.1:2\", sid_prefix: \"c-\" }\n      - { id: d, addr: \"127.0.0.1:3\" }\n";

    fn setup() -> (Affinity, Backend) {
        let config = crate::config::parse(YAML, std::path::Path::new("<t>")).unwrap();
        let cfg = &config.backends[0];
        let backend = Backend::build(cfg, &cfg.servers, &[], &Registry::default(), None);
        for s in &backend.servers {
            s.stats.condition.set_health(crate::backends::Health::Up);
        }
        (Affinity::new(cfg), backend)
    }

    fn pick<'b>(
        aff: &Affinity,
        backend: &'b Backend,
        sids: &Arc<SidTable>,
        sid: &str,
        cookie_for: Option<&str>,
    ) -> Result<&'b str, Miss> {
        let uri: Uri = "/socket.io/?EIO=4&transport=polling".parse().unwrap();
        let mut headers = HeaderMap::new();
        if let Some(server) = cookie_for {
            let set = aff.cookie.as_ref().unwrap().set_cookie(server);
            let pair = set.split(';').next().unwrap().to_owned();
            headers.insert(http::header::COOKIE, pair.parse().unwrap());
        }
        let keys = Keys {
            uri: &uri,
            headers: &headers,
            client: "127.0.0.1".parse().unwrap(),
            eio: Some(EioQuery {
                version: 4,
                transport: Transport::Polling,
                sid: Some(sid),
            }),
            upgrade: false,
        };
        aff.pick(backend, sids, keys).map(|t| &*t.server.id)
    }

    #[test]
    fn a_sid_prefix_routes_an_unlearned_sid_before_the_cookie() {
        let (aff, backend) = setup();
        let sids = Arc::new(SidTable::new(16));
        // No table entry, no cookie: the prefix alone.
        assert_eq!(pick(&aff, &backend, &sids, "a-XYZ", None), Ok("a"));
        assert_eq!(pick(&aff, &backend, &sids, "c-XYZ", None), Ok("c"));
        // The prefix outranks a cookie naming another server (an older placement).
        assert_eq!(pick(&aff, &backend, &sids, "c-XYZ", Some("a")), Ok("c"));
        // A prefix no server has: the cookie, then unknown; never a blind guess.
        assert_eq!(pick(&aff, &backend, &sids, "z-XYZ", Some("d")), Ok("d"));
        assert_eq!(
            pick(&aff, &backend, &sids, "z-XYZ", None),
            Err(Miss::SessionUnknown(Lost::Unknown))
        );
        // The learned table still comes first.
        let d = Arc::clone(&backend.server("d").unwrap().stats);
        let ip = "127.0.0.1".parse().unwrap();
        sids.insert("a-LEARNED", d, Duration::from_secs(60), ip)
            .unwrap();
        assert_eq!(pick(&aff, &backend, &sids, "a-LEARNED", None), Ok("d"));
        // The prefix's server down: the session is lost, not sent to the cookie's.
        backend
            .server("a")
            .unwrap()
            .stats
            .condition
            .set_health(crate::backends::Health::Down);
        assert_eq!(
            pick(&aff, &backend, &sids, "a-XYZ", Some("c")),
            Err(Miss::SessionUnknown(Lost::ServerDown))
        );
    }
}
