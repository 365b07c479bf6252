//! The request path: route → pick a server → forward, per request.
//!
//! Routing is per request, never per client connection: one keep-alive connection
//! carries requests of different sessions, and one session's requests arrive on
//! different connections. Which server is `affinity`'s call (learned sid, then the
//! signed cookie, then placement of a new session); this module routes, rewrites
//! headers, sends (retrying a new session elsewhere when its server cannot be reached),
//! and relays WebSocket tunnels.

pub mod error;
pub mod headers;
mod migrate;
mod retry;
pub mod target;
mod tcp_relay;
pub mod tunnel;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tether_kit::gate::Gate;
use tether_kit::throttle::Throttle;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessLog, Record, RequestRecord, TunnelRecord};
use crate::affinity::{client_ip, Affinity, Keys, SessionPin, SidTable, Target};
use crate::backends::health::{note_failure, note_success};
use crate::backends::{stats, Backend, Server, ServerStats, SessionEnd, SessionGuard};
use crate::body::{Guarded, ProxyBody, Rules};
use crate::config::Limits;
use crate::engineio::{self, Transport};
use crate::snapshot::{Snapshot, Store, Unrouted};
use crate::telemetry;
use crate::upstream::{self, UpstreamError, UpstreamRequest};

pub use error::ProxyError;
use retry::{into_upstream, Replay};
use tunnel::{ByteTally, HardStop, IdleLimit, TunnelEnd, TunnelStop};

/// One warning per second per cause of failed requests at most: a flood of failing
/// requests must not become a flood of log lines (the rest are counted in the next line).
static FAILURE_LOG: [Throttle; ProxyError::CAUSES] =
    [const { Throttle::new(Duration::from_secs(1)) }; ProxyError::CAUSES];

/// A request as the client sent it. Boxed: every step of the request path is an
/// `async fn`, and an async fn keeps each argument twice (as passed, and as moved into
/// its body), so a request by value would be copied, hundreds of bytes at a time, as
/// each step started the next.
pub type ClientRequest = Box<Request<Incoming>>;

/// What the listener knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The address the client connected to (a PROXY header towards servers names it).
    pub local: SocketAddr,
    pub tls: bool,
}

/// Shared by every connection of every listener.
#[derive(Debug)]
pub struct Proxy {
    store: Arc<Store>,
    /// The process-wide connection cap: a tunnel holds a place of its own for its life
    /// (it outlives the HTTP connection it came from).
    connections: Arc<Gate>,
    /// Every tunnel task, so shutdown can wait for them.
    tunnels: TaskTracker,
    /// Fired when the shutdown grace is over: tunnels still open are closed.
    hard_stop: Arc<HardStop>,
    /// The mark this tether puts on what it forwards, and knows again.
    via: headers::Via,
    /// `None`: no access log.
    access: arc_swap::ArcSwapOption<AccessLog>,
}

impl Proxy {
    pub fn new(store: Arc<Store>, connections: Arc<Gate>) -> Self {
        Proxy {
            store,
            connections,
            tunnels: TaskTracker::new(),
            hard_stop: Arc::default(),
            via: headers::Via::default(),
            access: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Puts an access log in force (`None`: none).
    pub fn set_access_log(&self, log: Option<Arc<AccessLog>>) {
        self.access.store(log);
    }

    /// The access log in force.
    pub fn access_log(&self) -> Option<Arc<AccessLog>> {
        self.access.load_full()
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
        let arrived = std::time::Instant::now();
        let method = req.method().clone();
        // What the access log needs of the request, taken before it is consumed (a cheap
        // clone of shared bytes), only when there is one.
        let log = self.access.load_full();
        let logged = log.as_ref().map(|_| {
            let bytes_in = content_length(req.headers());
            (req.uri().clone(), bytes_in)
        });
        let snapshot = self.store.load_full();
        let mut seen = Seen {
            log_eio: log.is_some(),
            ..Seen::default()
        };
        // Boxed, once per request: hyper keeps a box the size of the service's future
        // for each client connection's whole life, idle keep-alives included, and
        // `forward`'s future is kilobytes.
        let forward = Box::pin(self.forward(&snapshot, req, conn, &mut seen));
        let (resp, handshake) = match forward.await {
            Ok(resp) => {
                let ok =
                    resp.status().is_success() || resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                (resp, if ok { "ok" } else { "refused" })
            }
            Err(e) => {
                if matches!(e, ProxyError::SessionUnknown(_)) {
                    // Logged where it was decided, with the sid.
                } else if e.is_client_side() {
                    tracing::debug!(peer = %conn.peer, error = %e, "request refused");
                } else if let Some(suppressed) = FAILURE_LOG[e.cause()].allow() {
                    tracing::warn!(peer = %conn.peer, error = %e, suppressed, "request failed");
                }
                let handshake = match e {
                    ProxyError::Limited { .. } | ProxyError::Deferred { .. } => "limited",
                    _ => "failed",
                };
                (e.into_response(), handshake)
            }
        };
        let took = arrived.elapsed();
        seen.record(&method, resp.status(), took, handshake);
        if let (Some(log), Some((uri, bytes_in))) = (log, logged) {
            // As `forward` parsed it; parsed here only when it did not get that far (or
            // found no Engine.IO query, which is quick to find again).
            let (transport, sid) = match seen.eio.take() {
                Some(q) => (Some(q.transport), q.sid),
                None => uri
                    .query()
                    .and_then(|q| engineio::parse_query(q).ok().flatten())
                    .map_or((None, None), |q| {
                        (Some(q.transport), q.sid.map(str::to_owned))
                    }),
            };
            log.log(Record::Request(RequestRecord {
                at: arrived + took,
                client: seen
                    .client
                    .unwrap_or_else(|| client_ip::canonical(conn.peer.ip())),
                method,
                uri,
                status: resp.status().as_u16(),
                backend: seen.backend.map(|b| Arc::clone(&b.name)),
                server: seen.server.map(|s| Arc::clone(&s.id)),
                sid,
                transport: transport.map(Transport::as_str),
                duration: took,
                bytes_in,
                bytes_out: content_length(resp.headers()),
            }));
        }
        resp
    }

    /// Route, pick, rewrite, send, learn; what it learns on the way goes into `seen`.
    async fn forward<'s>(
        &self,
        snap: &'s Snapshot,
        mut req: ClientRequest,
        conn: ConnInfo,
        seen: &mut Seen<'s>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // A cheap clone (shared bytes), so the target and the parsed query can borrow it
        // while the request is rewritten.
        let uri = req.uri().clone();
        let aim = target::read(req.version(), &uri, req.headers()).map_err(ProxyError::Target)?;
        let host = aim.route_host();
        let (backend, affinity) = snap.route(host, &aim.path).map_err(|u| match u {
            Unrouted::NoRoute => ProxyError::NoRoute,
            Unrouted::Denied => ProxyError::Forbidden,
        })?;
        seen.backend = Some(backend);
        if self.via.seen_in(req.headers()) {
            return Err(ProxyError::Loop(Arc::clone(&backend.name)));
        }
        let client = client_ip::resolve(conn.peer.ip(), req.headers(), &snap.trusted_proxies);
        seen.client = Some(client);
        let upgrade =
            websocket::check_request(req.method(), req.headers()).map_err(ProxyError::WebSocket)?;
        let upgrading = matches!(upgrade, websocket::Upgrade::WebSocket(_));
        let eio = uri
            .query()
            .map(engineio::parse_query)
            .transpose()
            .map_err(ProxyError::EngineIo)?
            .flatten();
        if seen.log_eio {
            seen.eio = eio.map(|q| LoggedEio {
                transport: q.transport,
                sid: q.sid.map(str::to_owned),
            });
        }
        let starts_session = eio.is_some_and(|q| q.sid.is_none());
        if starts_session {
            seen.handshake = eio.map(|q| q.transport);
        }
        if let Err((why, retry_after)) =
            self.store
                .clients
                .request(client, starts_session, &snap.limits.per_client)
        {
            metrics::counter!(telemetry::CLIENTS_LIMITED, "what" => why.as_str()).increment(1);
            return Err(ProxyError::Limited { why, retry_after });
        }
        // The backend's own cap on new sessions, after the client's: one address cannot
        // spend the budget of all. Requests with a sid never come here.
        if starts_session {
            backend
                .admit_session()
                .map_err(|retry_after| ProxyError::Deferred {
                    backend: Arc::clone(&backend.name),
                    retry_after,
                })?;
        }

        let keys = Keys {
            uri: req.uri(),
            headers: req.headers(),
            client,
            eio,
            upgrade: upgrading,
        };
        if self.store.fleet.is_on() {
            affinity.recall(backend, &self.store.sids, keys).await;
        }
        let mut target = affinity.pick(backend, &self.store.sids, keys)?;
        seen.server = Some(target.server);

        let origin = headers::Origin {
            peer: client_ip::canonical(conn.peer.ip()),
            client,
            peer_trusted: client_ip::is_trusted(conn.peer.ip(), &snap.trusted_proxies),
            proto: if conn.tls { "https" } else { "http" },
            host,
        };
        target::apply(&aim, &uri, &mut req).map_err(ProxyError::Target)?;
        headers::strip_hop_by_hop(req.headers_mut(), upgrading);
        headers::set_forwarded(req.headers_mut(), &origin);
        let received = req.version();
        self.via.append(req.headers_mut(), received);
        *req.version_mut() = Version::HTTP_11;

        let rules = body_rules(&snap.limits, &req, eio)?;
        // For a PROXY header towards the server: the client's port is known only when
        // the client is the connection's peer (not named by a forwarding header).
        let port = if client == client_ip::canonical(conn.peer.ip()) {
            conn.peer.port()
        } else {
            0
        };
        let endpoints = (SocketAddr::new(client, port), conn.local);
        if let websocket::Upgrade::WebSocket(key) = upgrade {
            // Boxed, like the upgrade's connect: the rarer path keeps its size to itself.
            return Box::pin(self.tunnel(backend, affinity, req, target, key, (rules, endpoints)))
                .await;
        }
        let delivery = Delivery {
            engine_io: eio.is_some(),
            upgrade: false,
            rules,
            endpoints,
        };
        // A long-poll of a session that a migration is (or may soon be) moving: see
        // `migrate`. Only while a migration of its server runs.
        let moving = match (&target.pin, eio) {
            (Some(pin), Some(q))
                if q.transport == Transport::Polling
                    && req.method() == http::Method::GET
                    && target.server.stats.migration.is_active() =>
            {
                Some((Arc::<str>::from(pin.sid()), q.version))
            }
            _ => None,
        };
        if let Some(moving) = moving {
            // Boxed: this path holds a send and an answer at once, which would nearly
            // double the size of every request's future.
            return Box::pin(self.forward_moving(
                (backend, affinity, target),
                req,
                delivery,
                (eio, client, moving),
                seen,
            ))
            .await;
        }
        // A poll of a session whose tunnel is open: the client may have written its
        // first frames (`2probe`, `5`) on the tunnel just before this request, and the
        // server must see them first, or it answers this poll as if the session were
        // still polling. When their bytes reached this process first, tokio's LIFO slot
        // still ran the task woken last first: this request's, then the pooled
        // connection's it wakes, both before the tunnel's. One yield puts this request
        // behind every task already woken, the tunnel's included (measured: the poll
        // went first in 8 runs of 600 before, 1 after; `benches/tunnel_start.sh`). Only
        // these polls pay for it.
        if target.pin.as_ref().is_some_and(SessionPin::tunnel_open) {
            tokio::task::yield_now().await;
        }
        // A new session's bodiless request can be sent again elsewhere if its server
        // cannot be reached: no session exists yet, so nothing can be duplicated.
        let resp = self
            .send(backend, affinity, &mut target, req, delivery)
            .await?;
        self.answered(backend, affinity, target, (eio, client), resp, seen)
            .await
    }

    /// A long-poll of a session that a migration of its server is moving (or may soon
    /// move): sent as usual, unless the migration asks for its session first; then it
    /// is answered as the session's end (see [`Proxy::move_poll`]).
    async fn forward_moving<'s>(
        &self,
        (backend, affinity, mut target): (&'s Backend, &Affinity, Target<'s>),
        req: ClientRequest,
        delivery: Delivery,
        (eio, client, (sid, version)): (
            Option<engineio::EioQuery<'_>>,
            std::net::IpAddr,
            (Arc<str>, u8),
        ),
        seen: &mut Seen<'s>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let close = migrate::close_request(&req);
        let stats = Arc::clone(&target.server.stats);
        if !stats.migration.is_asked(&sid) {
            let asked = migrate::Asked::new(Arc::clone(&stats), Arc::clone(&sid));
            let sending = self.send(backend, affinity, &mut target, req, delivery);
            let sent = tokio::select! {
                sent = sending => Some(sent),
                _ = asked => None,
            };
            if let Some(sent) = sent {
                return self
                    .answered(backend, affinity, target, (eio, client), sent?, seen)
                    .await;
            }
        }
        self.move_poll(backend, &target, close, (&sid, version), delivery.endpoints)
            .await
    }

    /// Learns from a server's answer to a request and turns it into the client's.
    async fn answered<'s>(
        &self,
        backend: &'s Backend,
        affinity: &Affinity,
        target: Target<'s>,
        (eio, client): (Option<engineio::EioQuery<'_>>, std::net::IpAddr),
        resp: Response<Incoming>,
        seen: &mut Seen<'s>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        seen.server = Some(target.server);
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        let body = affinity
            .learn(&self.store.sids, &target, (eio, client), &mut parts, body)
            .await
            .map_err(|e| UpstreamError::exchange(&target.server.id, e))?;
        // A server that sends a head and then stalls its body would hold the client's
        // connection as long as it likes: its body gets the response timeout between
        // pieces, as its head had.
        let body = match body {
            ProxyBody::Stream(b) => ProxyBody::Guarded(Guarded::new(
                b,
                Rules {
                    gap: backend.timeouts.response,
                    total: None,
                    max_bytes: None,
                },
            )),
            other => other,
        };
        drop(target);
        Ok(Response::from_parts(parts, body))
    }

    /// Moves a polling session: the node is told the client closed it, the client that
    /// its transport closed (see `migrate`), and the session ends here as migrated.
    async fn move_poll(
        &self,
        backend: &Backend,
        target: &Target<'_>,
        mut close: UpstreamRequest,
        (sid, version): (&str, u8),
        (client, local): (SocketAddr, SocketAddr),
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let server = target.server;
        headers::origin_form(&mut close, &server.addr).map_err(ProxyError::BadRequest)?;
        let peer = server.peer().for_client(client, local);
        match upstream::send(&server.pool, peer, close, backend.timeouts.response).await {
            Ok(resp) => {
                tracing::debug!(%sid, server = %server.id, status = %resp.status(), "polling session migrated");
            }
            Err(e) => {
                // The client reconnects anyway; the node keeps the session until its
                // ping timeout, and recovery then depends on the client's timing.
                tracing::debug!(%sid, server = %server.id, error = %e, "close packet to the node failed");
            }
        }
        self.store.sids.end_migrated(sid);
        Ok(migrate::close_answer(version))
    }

    /// Sends `req` to the target's server (pooled, or on a fresh connection for an
    /// upgrade). A new session's bodiless request whose server cannot be reached is
    /// sent to the next server in placement order, `target` updated to match; nothing
    /// else is ever retried.
    async fn send<'b>(
        &self,
        backend: &'b Backend,
        affinity: &Affinity,
        target: &mut Target<'b>,
        req: ClientRequest,
        how: Delivery,
    ) -> Result<Response<Incoming>, ProxyError> {
        let Delivery {
            engine_io,
            upgrade,
            rules,
            endpoints: (client, local),
        } = how;
        let replay = target.placed.is_some().then(|| Replay::of(&req)).flatten();
        let mut first = Some(into_upstream(*req, replay.is_some(), rules));
        let mut tried = Vec::new();
        loop {
            let mut req: UpstreamRequest = first.take().unwrap_or_else(|| {
                Box::new(
                    replay
                        .as_ref()
                        .map_or_else(|| Request::new(ProxyBody::empty()), Replay::request),
                )
            });
            headers::origin_form(&mut req, &target.server.addr).map_err(ProxyError::BadRequest)?;
            let t = &backend.timeouts;
            let server = target.server;
            let peer = server.peer().for_client(client, local);
            // Boxed: connecting (and a TLS handshake) makes this future kilobytes, and it
            // would otherwise be part of every request's future, copied on each request.
            let sent = if upgrade {
                Box::pin(upstream::send_upgrade(peer, req, t.connect, t.response)).await
            } else {
                upstream::send(&server.pool, peer, req, t.response).await
            };
            let e = match sent {
                Ok(resp) => {
                    note_success(server);
                    return Ok(resp);
                }
                Err(e) => e,
            };
            note_failure(backend, server, &e);
            match (target.placed, &replay) {
                (Some((i, key)), Some(_)) if e.is_connect() => {
                    tried.push(i);
                    // Nowhere else to go: the client learns why the last try failed.
                    let Ok(next) = affinity.place_new(backend, key, engine_io, &tried) else {
                        return Err(e.into());
                    };
                    tracing::info!(backend = %backend.name, from = %server.id, to = %next.server.id, policy = %"retry", error = %e, "new session placed again: its server could not be reached");
                    metrics::counter!(telemetry::PLACEMENT_RETRIES, "backend" => backend.name.to_string())
                        .increment(1);
                    *target = next;
                }
                _ => return Err(e.into()),
            }
        }
    }

    /// Forwards a WebSocket upgrade and, on 101, relays the tunnel in its own task.
    async fn tunnel(
        &self,
        backend: &Backend,
        affinity: &Affinity,
        mut req: ClientRequest,
        mut target: Target<'_>,
        key: HeaderValue,
        (rules, endpoints): (Rules, (SocketAddr, SocketAddr)),
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client_side = hyper::upgrade::on(&mut *req);
        // A polling session moving to WebSocket (a WebSocket-only session is no upgrade).
        let upgrading_session = target.pin.is_some();
        let sent = self
            .send(
                backend,
                affinity,
                &mut target,
                req,
                Delivery {
                    engine_io: true,
                    upgrade: true,
                    rules,
                    endpoints,
                },
            )
            .await;
        let failed = |target: &Target<'_>| {
            if upgrading_session {
                target.server.stats.metrics.upgrade(false);
            }
        };
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                failed(&target);
                return Err(e);
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            failed(&target);
            let (parts, body) = resp.into_parts();
            return Ok(Response::from_parts(parts, ProxyBody::Stream(body)));
        }
        if !websocket::completes(resp.headers(), &key) {
            failed(&target);
            let e = UpstreamError::NotWebSocket {
                server: target.server.id.to_string(),
            };
            note_failure(backend, target.server, &e);
            return Err(e.into());
        }
        if upgrading_session {
            target.server.stats.metrics.upgrade(true);
        }
        let server_side = hyper::upgrade::on(&mut resp);
        let idle = match (backend.timeouts.tunnel_idle, &target.pin) {
            (Some(fixed), _) => IdleLimit::Fixed(fixed),
            (None, Some(pin)) => IdleLimit::Fixed(pin.ttl()),
            (None, None) => IdleLimit::FromOpenPacket {
                margin: affinity.idle_margin,
                fallback: engineio::DEFAULT_HEARTBEAT + affinity.idle_margin,
            },
        };
        // A tunnel without sid is a WebSocket-only session: counted while it lives, and
        // recorded in the sid table once its open packet names it (on a sticky backend),
        // after which its table entry counts it. One with a sid is counted through its
        // pinned table entry.
        let (session, on_open) = match target.pin {
            Some(pin) => (Arc::new(Mutex::new(TunnelSession::Pinned(pin))), None),
            None => {
                let session = Arc::new(Mutex::new(TunnelSession::Counted(SessionGuard::session(
                    Arc::clone(&target.server.stats),
                    Transport::WebSocket,
                ))));
                let on_open = affinity.sticky.then(|| {
                    record_opened(
                        Arc::clone(&self.store.sids),
                        Arc::clone(&target.server.stats),
                        (endpoints.0.ip(), affinity.idle_margin),
                        Arc::clone(&session),
                    )
                });
                (session, on_open)
            }
        };
        drop(target.pending);
        let server_id = Arc::clone(&target.server.id);
        let stats = Arc::clone(&target.server.stats);
        let mut stop = TunnelStop::new(
            Arc::clone(&self.hard_stop),
            Arc::clone(&stats),
            Arc::clone(&session),
        );
        let hard_stop = Arc::clone(&self.hard_stop);
        let log = self.access.load_full();
        let client_addr = endpoints.0;
        let backend_name = Arc::clone(&backend.name);
        let place = self.connections.force_enter();
        self.tunnels.spawn(async move {
            let _place = place;
            let (client, server) = match tokio::join!(client_side, server_side) {
                (Ok(c), Ok(s)) => (c, s),
                (c, s) => {
                    tracing::debug!(server = %server_id, client_ok = c.is_ok(), server_ok = s.is_ok(), "upgrade did not complete");
                    // The side that failed to complete it is the one that went away.
                    if let TunnelSession::Pinned(pin) = &mut *tether_kit::lock(&session) {
                        pin.ended_by(if s.is_err() {
                            SessionEnd::ServerClosed
                        } else {
                            SessionEnd::ClientClosed
                        });
                    }
                    return;
                }
            };
            let m = &stats.metrics;
            let totals = log.as_ref().map(|_| {
                (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)))
            });
            let tally = [
                ByteTally::new((m.bytes_to_server.clone(), m.frames_to_server.clone()), totals.as_ref().map(|t| Arc::clone(&t.0))),
                ByteTally::new((m.bytes_to_client.clone(), m.frames_to_client.clone()), totals.as_ref().map(|t| Arc::clone(&t.1))),
            ];
            m.tunnels.increment(1.0);
            let opened = std::time::Instant::now();
            // By reference: moved into the relay, the task would keep it twice (as
            // captured, and in the relay) for the tunnel's whole life.
            let end = tunnel::relay(client, server, (idle, on_open, tally), &mut stop).await;
            m.tunnels.decrement(1.0);
            tracing::debug!(server = %server_id, ?end, "tunnel closed");
            let cause = match end {
                TunnelEnd::ClientClosed => SessionEnd::ClientClosed,
                TunnelEnd::ServerClosed => SessionEnd::ServerClosed,
                TunnelEnd::Idle => SessionEnd::IdleTimeout,
                TunnelEnd::Stopped if hard_stop.is_fired() => SessionEnd::Shutdown,
                TunnelEnd::Stopped if stop.migrated() => SessionEnd::Migrated,
                TunnelEnd::Stopped => stats.unserved_end(),
            };
            let mut session = tether_kit::lock(&session);
            if let (Some(log), Some((up, down))) = (&log, &totals) {
                let sid = match &*session {
                    TunnelSession::Pinned(pin) => Some(Arc::from(pin.sid())),
                    TunnelSession::Counted(_) => None,
                };
                log.log(Record::Tunnel(TunnelRecord {
                    at: std::time::Instant::now(),
                    client: client_ip::canonical(client_addr.ip()),
                    backend: backend_name,
                    server: Arc::clone(&server_id),
                    sid,
                    cause: cause.as_str(),
                    duration: opened.elapsed(),
                    bytes_to_server: up.load(Ordering::Relaxed),
                    bytes_to_client: down.load(Ordering::Relaxed),
                }));
            }
            match &mut *session {
                TunnelSession::Pinned(pin) => pin.ended_by(cause),
                TunnelSession::Counted(_) => {
                    // Its guard is dropped with the last reference to `session`, now.
                    stats.session_ended(cause, opened.elapsed());
                }
            }
        });
        let (mut parts, _) = resp.into_parts();
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }
}

/// A message's `Content-Length`, when it has one.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// What the request path learnt about a request, for its metrics.
#[derive(Default)]
struct Seen<'s> {
    backend: Option<&'s Backend>,
    server: Option<&'s Server>,
    /// A new session was asked for, on this transport.
    handshake: Option<Transport>,
    /// The client, after trusted proxies.
    client: Option<std::net::IpAddr>,
    /// There is an access log: `forward` keeps what it needs of the Engine.IO query in
    /// `eio`, so it is parsed once.
    log_eio: bool,
    eio: Option<LoggedEio>,
}

/// An Engine.IO query as the access log needs it.
struct LoggedEio {
    transport: Transport,
    sid: Option<String>,
}

impl Seen<'_> {
    /// Counts the request (by the server that answered it, or as tether's own answer),
    /// its time to the response head, and the new session it asked for.
    fn record(
        &self,
        method: &http::Method,
        status: StatusCode,
        took: Duration,
        handshake: &'static str,
    ) {
        match (self.backend, self.server) {
            (Some(b), Some(s)) => {
                s.stats.metrics.request(method, status);
                b.metrics.request_duration.record(took.as_secs_f64());
            }
            (backend, _) => {
                let name = backend.map_or_else(|| "-".to_owned(), |b| b.name.to_string());
                let class = stats::status_class(status);
                stats::OWN_ANSWERS.request(class);
                let (m, st) = stats::class_labels(stats::method_class(method), class);
                metrics::counter!(telemetry::HTTP_REQUESTS, "backend" => name.clone(), "server" => "-",
                    "method" => m, "status" => st)
                .increment(1);
                metrics::histogram!(telemetry::HTTP_REQUEST_DURATION, "backend" => name)
                    .record(took.as_secs_f64());
            }
        }
        if let (Some(b), Some(t)) = (self.backend, self.handshake) {
            b.metrics.handshake(t, handshake);
        }
    }
}

/// Records a WebSocket-only session when its open packet names it: its table entry
/// takes over counting it from the tunnel's guard (dropped as the entry is pinned, so
/// the session is counted once throughout). A full table leaves it counted by the guard.
fn record_opened(
    sids: Arc<SidTable>,
    stats: Arc<ServerStats>,
    (client, margin): (std::net::IpAddr, Duration),
    session: Arc<Mutex<TunnelSession>>,
) -> tunnel::OnOpen {
    Box::new(move |sid, heartbeat| {
        if !engineio::valid_sid(sid) {
            return;
        }
        let mut session = tether_kit::lock(&session);
        match sids.insert_tunnel(sid, stats, heartbeat + margin, client) {
            Ok(pin) => {
                tracing::debug!(%sid, "sid of a WebSocket-only session learned");
                *session = TunnelSession::Pinned(pin);
            }
            Err(e) => tracing::debug!(error = %e, %sid, "WebSocket-only session not recorded"),
        }
    })
}

/// Keeps a tunnel's session counted for as long as the tunnel task owns it.
#[allow(dead_code)] // held for its Drop
#[derive(Debug)]
enum TunnelSession {
    Pinned(SessionPin),
    Counted(SessionGuard),
}

/// How [`Proxy::send`] sends a request.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    /// An Engine.IO request: a new session placed by a retry counts as pending.
    engine_io: bool,
    /// A WebSocket upgrade: on a connection of its own, which becomes the tunnel.
    upgrade: bool,
    /// How its body must arrive.
    rules: Rules,
    /// The client and the address it connected to.
    endpoints: (SocketAddr, SocketAddr),
}

/// How the request's body must arrive: never silent for longer than
/// `body_read_timeout`; an Engine.IO polling POST (a message) also whole within it and no
/// larger than `max_payload`, refused at once when it says it is larger.
fn body_rules(
    limits: &Limits,
    req: &Request<Incoming>,
    eio: Option<engineio::EioQuery<'_>>,
) -> Result<Rules, ProxyError> {
    let message = eio.is_some_and(|q| q.transport == Transport::Polling)
        && req.method() == http::Method::POST;
    if message {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limits.max_payload) {
            return Err(ProxyError::PayloadTooLarge(limits.max_payload));
        }
    }
    Ok(Rules {
        gap: limits.body_read_timeout,
        total: message.then_some(limits.body_read_timeout),
        max_bytes: message.then_some(limits.max_payload),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// hyper keeps a box the size of a request's future for each client connection's
    /// life, and each level from its dispatcher down to `forward` moves the future
    /// whole: a rare path's state once nearly doubled `forward`'s, and unboxed it made
    /// every connection hold 3.6 KB. Measured on the debug build, whose futures are
    /// larger than the release build's.
    #[tokio::test]
    async fn a_request_s_future_stays_small() {
        let config = crate::config::parse(
            "listeners:\n  - bind: \"127.0.0.1:0\"\nbackends:\n  b:\n    servers:\n      - { id: n1, addr: \"127.0.0.1:9\" }\n",
            Path::new("t.yaml"),
        )
        .expect("config");
        let store = Arc::new(Store::new(&config).expect("store"));
        let proxy = Arc::new(Proxy::new(store, Gate::new(16)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (size_tx, mut size_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let conn = ConnInfo {
                peer,
                local: addr,
                tls: false,
            };
            let first = std::sync::atomic::AtomicBool::new(true);
            let service = service_fn(move |req| {
                // The first request measures `handle`, the second `forward`.
                let size = if first.swap(false, Ordering::Relaxed) {
                    std::mem::size_of_val(&proxy.handle(Box::new(req), conn))
                } else {
                    let snapshot = proxy.store.load_full();
                    let mut seen = Seen::default();
                    let forward = proxy.forward(&snapshot, Box::new(req), conn, &mut seen);
                    std::mem::size_of_val(&forward)
                };
                let _ = size_tx.send(size);
                async { Ok::<_, std::convert::Infallible>(Response::new(ProxyBody::empty())) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut sizes = Vec::new();
        for _ in 0..2 {
            client
                .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nhost: t\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 256];
            let _ = client.read(&mut buf).await.unwrap();
            sizes.push(size_rx.recv().await.expect("measured"));
        }
        let (handle, forward) = (sizes[0], sizes[1]);
        eprintln!("handle {handle} forward {forward}");
        assert!(handle <= 1024, "a request's future is {handle} bytes");
        assert!(forward <= 3072, "forward's future is {forward} bytes");
    }
}
