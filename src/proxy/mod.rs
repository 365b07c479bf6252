//! The request path: route → pick a server → forward, per request.
//!
//! Routing is per request, never per client connection: one keep-alive connection
//! carries requests of different sessions, and one session's requests arrive on
//! different connections. The order of keys follows DESIGN.md: learned sid, then the
//! signed cookie, then placement of a new session.

pub mod body;
pub mod headers;
pub mod pool;
pub mod respond;
mod tcp_relay;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::affinity::{self, client_ip, SessionPin};
use crate::backends::SessionGuard;
use crate::config::Balance;
use crate::engineio::{self, EioQuery, Transport};
use crate::snapshot::{Backend, Server, Snapshot, Store};

mod retry;
use retry::{into_upstream, note_failure, session_lost, Replay};

pub use body::ProxyBody;
use respond::ProxyError;
use tunnel::{HardStop, IdleLimit, TunnelStop};

/// The most of a handshake response read before giving up on finding the open packet
/// (it is the first packet and a few hundred bytes; the rest streams through untouched).
const OPEN_PACKET_SCAN: usize = 64 * 1024;

/// Engine.IO's default heartbeat (25 s + 20 s), used until a session says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(45);

/// A request as the client sent it. Boxed: every step of the request path is an
/// `async fn`, and an async fn keeps each argument twice (as passed, and as moved into
/// its body), so a 264-byte request by value made a polling request's future 4.9 KB,
/// copied on every request as each step started the next.
pub type ClientRequest = Box<Request<Incoming>>;

/// A request on its way to a server; boxed for the same reason.
pub type UpstreamRequest = Box<Request<ProxyBody>>;

/// What the listener knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Shared by every connection of every listener.
#[derive(Debug)]
pub struct Proxy {
    store: Arc<Store>,
    /// Every tunnel task, so shutdown can wait for them.
    tunnels: TaskTracker,
    /// Fired when the shutdown grace is over: tunnels still open are closed.
    hard_stop: Arc<HardStop>,
}

/// Where a request goes, and what it holds while it runs.
struct Target<'s> {
    server: &'s Server,
    /// The session's table entry, pinned while the request (or tunnel) runs.
    pin: Option<SessionPin>,
    /// A new session placed here: counted as load until its handshake answers.
    pending: Option<SessionGuard>,
    /// Whether the client already holds a cookie naming this server.
    cookie_current: bool,
    /// Set when placement chose the server for a new session (its index in the
    /// backend, and the placement hash key): such a request may be retried on the next
    /// server in placement order if the connect fails.
    placed: Option<(usize, u64)>,
}

impl Proxy {
    pub fn new(store: Arc<Store>) -> Self {
        Proxy {
            store,
            tunnels: TaskTracker::new(),
            hard_stop: Arc::default(),
        }
    }

    /// Ends every tunnel still open (the shutdown grace is over).
    pub fn stop_tunnels(&self) {
        self.hard_stop.fire();
    }

    /// The tracker of live WebSocket tunnels.
    pub fn tunnels(&self) -> &TaskTracker {
        &self.tunnels
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Handles one request; every failure becomes a response, never a panic or a
    /// dropped connection.
    pub async fn handle(&self, req: ClientRequest, conn: ConnInfo) -> Response<ProxyBody> {
        let snapshot = self.store.load_full();
        match self.forward(&snapshot, req, conn).await {
            Ok(resp) => resp,
            Err(e) => {
                if e.is_client_side() {
                    tracing::debug!(peer = %conn.peer, error = %e, "request refused");
                } else {
                    tracing::warn!(peer = %conn.peer, error = %e, "request failed");
                }
                e.into_response()
            }
        }
    }

    async fn forward(
        &self,
        snap: &Snapshot,
        mut req: ClientRequest,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let host_value = request_host(&req);
        let host = host_value
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(strip_port);
        let backend = snap
            .route(host, req.uri().path())
            .ok_or(ProxyError::NoRoute)?;
        let client = client_ip::resolve(conn.peer.ip(), req.headers(), &snap.trusted_proxies);
        let upgrade = headers::is_websocket_upgrade(req.headers());
        // A cheap clone (shared bytes), so the parsed query can borrow it while the
        // request's headers are rewritten.
        let uri = req.uri().clone();
        let eio = uri.query().and_then(engineio::parse_query);

        let mut target = self.pick(backend, &req, client, eio, upgrade)?;

        let origin = headers::Origin {
            peer: client_ip::canonical(conn.peer.ip()),
            client,
            peer_trusted: client_ip::is_trusted(conn.peer.ip(), &snap.trusted_proxies),
            proto: if conn.tls { "https" } else { "http" },
            host,
        };
        headers::strip_hop_by_hop(req.headers_mut(), upgrade);
        headers::set_forwarded(req.headers_mut(), &origin);
        *req.version_mut() = Version::HTTP_11;

        if upgrade {
            // Boxed, like the upgrade's connect: the rarer path keeps its size to itself.
            return Box::pin(self.tunnel(backend, req, target)).await;
        }
        let handshake = eio.is_some_and(|q| q.sid.is_none() && q.transport == Transport::Polling);
        // A new session's bodiless request can be sent again elsewhere if its server
        // cannot be reached: no session exists yet, so nothing can be duplicated.
        let resp = self
            .send(backend, &mut target, req, eio.is_some(), false)
            .await?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        // A session found through its cookie (tether restarted, or another instance
        // learned it) and accepted by the server is learned again here, so its later
        // requests need no cookie.
        if let Some(sid) = eio.and_then(|q| q.sid) {
            let sticky = backend.balance == Balance::Sticky;
            if sticky && target.pin.is_none() && parts.status == StatusCode::OK {
                let ttl = DEFAULT_HEARTBEAT + backend.idle_margin;
                let _ = self
                    .store
                    .sids
                    .insert(sid, Arc::clone(&target.server.stats), ttl);
            }
        }
        let body =
            if handshake && parts.status == StatusCode::OK && backend.balance == Balance::Sticky {
                self.learn_sid(backend, target.server, body).await?
            } else {
                ProxyBody::Stream(body)
            };
        // Only a session placed by this request gets a cookie: requests of a pinned
        // session from a client that keeps no cookies would otherwise be told again and
        // again.
        if backend.balance == Balance::Sticky && !target.cookie_current && target.pin.is_none() {
            if let Some(signer) = &backend.cookie {
                if let Ok(v) = HeaderValue::from_str(&signer.set_cookie(&target.server.id)) {
                    parts.headers.append(header::SET_COOKIE, v);
                }
            }
        }
        drop(target);
        Ok(Response::from_parts(parts, body))
    }

    /// Chooses the server: learned sid, then cookie, then placement of a new session.
    fn pick<'b>(
        &self,
        backend: &'b Backend,
        req: &Request<Incoming>,
        client: std::net::IpAddr,
        eio: Option<EioQuery<'_>>,
        upgrade: bool,
    ) -> Result<Target<'b>, ProxyError> {
        let new_target = |server: &'b Server, cookie_current| Target {
            server,
            pin: None,
            pending: None,
            cookie_current,
            placed: None,
        };
        if backend.balance == Balance::RoundRobin {
            // Round robin has no key to hash.
            return self.place_new(backend, 0, false, &[]);
        }
        let cookie_server = backend
            .cookie
            .as_ref()
            .and_then(|c| c.read(req.headers()))
            .and_then(|id| backend.server(id));

        if let Some(sid) = eio.and_then(|q| q.sid) {
            let pinned = if upgrade {
                self.store.sids.pin_tunnel(sid)
            } else {
                self.store.sids.pin_poll(sid)
            };
            if let Some(pin) = pinned {
                let stats = pin.server();
                let server = (*stats.backend == *backend.name)
                    .then(|| backend.server(&stats.id))
                    .flatten()
                    .filter(|s| s.serves_pinned())
                    .ok_or_else(|| session_lost(backend))?;
                let cookie_current = cookie_server.is_some_and(|c| c.id == server.id);
                return Ok(Target {
                    server,
                    pin: Some(pin),
                    pending: None,
                    cookie_current,
                    placed: None,
                });
            }
            // Not learned here (tether restarted, or another instance learned it): the
            // cookie still knows the server. Without one, the session is lost to us.
            let server = cookie_server
                .filter(|s| s.serves_pinned())
                .ok_or_else(|| session_lost(backend))?;
            return Ok(new_target(server, true));
        }

        if let Some(server) = cookie_server.filter(|s| s.accepts_new_sessions()) {
            return Ok(new_target(server, true));
        }
        // Only a new session needs its hash key: requests of known sessions (the vast
        // majority) never compute it.
        let key = affinity::hash_key(&backend.hash_key, req.uri(), req.headers(), client);
        self.place_new(backend, key, eio.is_some(), &[])
    }

    /// Places a new session (or a stateless request), avoiding `tried` servers.
    fn place_new<'b>(
        &self,
        backend: &'b Backend,
        key: u64,
        engine_io: bool,
        tried: &[usize],
    ) -> Result<Target<'b>, ProxyError> {
        let placed = match backend.balance {
            Balance::RoundRobin => backend.next_round_robin(tried),
            Balance::Sticky => backend.place(key, tried),
        };
        let (i, server) = placed.ok_or(ProxyError::NoServer)?;
        let sticky = backend.balance == Balance::Sticky;
        Ok(Target {
            server,
            pin: None,
            pending: (engine_io && sticky)
                .then(|| SessionGuard::pending(Arc::clone(&server.stats))),
            // Round robin sets no cookie.
            cookie_current: !sticky,
            placed: Some((i, key)),
        })
    }

    /// Sends `req` to the target's server (pooled, or on a fresh connection for an
    /// upgrade). A new session's bodiless request whose server cannot be reached is
    /// sent to the next server in placement order, `target` updated to match; nothing
    /// else is ever retried.
    async fn send<'b>(
        &self,
        backend: &'b Backend,
        target: &mut Target<'b>,
        req: ClientRequest,
        engine_io: bool,
        upgrade: bool,
    ) -> Result<Response<Incoming>, ProxyError> {
        let replay = target.placed.is_some().then(|| Replay::of(&req)).flatten();
        let mut first = Some(into_upstream(*req, replay.is_some()));
        let mut tried = Vec::new();
        loop {
            let req = first.take().unwrap_or_else(|| {
                Box::new(
                    replay
                        .as_ref()
                        .map_or_else(|| Request::new(ProxyBody::empty()), Replay::request),
                )
            });
            let t = &backend.timeouts;
            // Boxed: connecting (and a TLS handshake) makes this future kilobytes, and it
            // would otherwise be part of every request's future, copied on each request.
            let sent = if upgrade {
                Box::pin(upstream::send_upgrade(
                    target.server,
                    req,
                    t.connect,
                    t.response,
                    backend.tls.as_deref(),
                ))
                .await
            } else {
                upstream::send(target.server, req, t.response, backend.tls.as_deref()).await
            };
            let e = match sent {
                Ok(resp) => {
                    target.server.stats.condition.record_success();
                    return Ok(resp);
                }
                Err(e) => e,
            };
            note_failure(backend, target.server, &e);
            match (target.placed, &replay) {
                (Some((i, key)), Some(_)) if e.is_connect() => {
                    tried.push(i);
                    // Nowhere else to go: the client learns why the last try failed.
                    let Ok(next) = self.place_new(backend, key, engine_io, &tried) else {
                        return Err(e);
                    };
                    tracing::info!(from = %target.server.id, to = %next.server.id, error = %e, "new session retried on another server");
                    metrics::counter!(crate::telemetry::PLACEMENT_RETRIES, "backend" => backend.name.to_string())
                        .increment(1);
                    *target = next;
                }
                _ => return Err(e),
            }
        }
    }

    /// Reads the start of a handshake response for the open packet and records
    /// `sid → server`. The bytes read go out first; the rest streams.
    async fn learn_sid(
        &self,
        backend: &Backend,
        server: &Server,
        mut body: Incoming,
    ) -> Result<ProxyBody, ProxyError> {
        let mut buf = BytesMut::new();
        while buf.len() < OPEN_PACKET_SCAN && engineio::parse_open_packet(&buf).is_none() {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ProxyError::Upstream {
                        server: server.id.to_string(),
                        source: Box::new(e),
                    })
                }
            }
        }
        let prefix: Bytes = buf.freeze();
        match engineio::parse_open_packet(&prefix) {
            Some(open) => {
                let ttl = open.heartbeat() + backend.idle_margin;
                if let Err(e) = self
                    .store
                    .sids
                    .insert(open.sid, Arc::clone(&server.stats), ttl)
                {
                    tracing::warn!(error = %e, "session not recorded; it relies on cookie or hash");
                }
            }
            None => tracing::debug!(server = %server.id, "handshake response without open packet"),
        }
        Ok(ProxyBody::Prefixed(Some(prefix), body))
    }

    /// Forwards a WebSocket upgrade and, on 101, relays the tunnel in its own task.
    async fn tunnel(
        &self,
        backend: &Backend,
        mut req: ClientRequest,
        mut target: Target<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client_side = hyper::upgrade::on(&mut *req);
        let mut resp = self.send(backend, &mut target, req, true, true).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = resp.into_parts();
            return Ok(Response::from_parts(parts, ProxyBody::Stream(body)));
        }
        let server_side = hyper::upgrade::on(&mut resp);
        let idle = match (backend.timeouts.tunnel_idle, &target.pin) {
            (Some(fixed), _) => IdleLimit::Fixed(fixed),
            (None, Some(pin)) => IdleLimit::Fixed(pin.ttl()),
            (None, None) => IdleLimit::FromOpenPacket {
                margin: backend.idle_margin,
                fallback: DEFAULT_HEARTBEAT + backend.idle_margin,
            },
        };
        // A tunnel without sid is a WebSocket-only session: count it while it lives.
        // One with a sid is counted through its pinned table entry.
        let session = match target.pin {
            Some(pin) => TunnelSession::Pinned(pin),
            None => TunnelSession::Counted(SessionGuard::session(
                Arc::clone(&target.server.stats),
                Transport::WebSocket,
            )),
        };
        drop(target.pending);
        let server_id = Arc::clone(&target.server.id);
        let stats = Arc::clone(&target.server.stats);
        let mut stop = TunnelStop::new(Arc::clone(&self.hard_stop), stats);
        self.tunnels.spawn(async move {
            let (client, server) = match tokio::join!(client_side, server_side) {
                (Ok(c), Ok(s)) => (c, s),
                (c, s) => {
                    tracing::debug!(server = %server_id, client_ok = c.is_ok(), server_ok = s.is_ok(), "upgrade did not complete");
                    return;
                }
            };
            // By reference: moved into the relay, the task would keep it twice (as
            // captured, and in the relay) for the tunnel's whole life.
            let end = tunnel::relay(client, server, idle, &mut stop).await;
            tracing::debug!(server = %server_id, ?end, "tunnel closed");
            drop(session);
        });
        let (mut parts, _) = resp.into_parts();
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }
}

/// Keeps a tunnel's session counted for as long as the tunnel task owns it.
#[allow(dead_code)] // held for its Drop
enum TunnelSession {
    Pinned(SessionPin),
    Counted(SessionGuard),
}

/// The request's host (with any port): from the absolute URI, else the `Host` header.
/// A `Host` header is returned as a shared view of the request's bytes, not a copy: the
/// request is rewritten while the host is still needed.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a:b"), "a:b");
    }
}
