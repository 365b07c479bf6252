//! Accepting client connections and serving HTTP/1.1 on them.
//!
//! `serve` takes an already-bound listener so tests bind port 0 and read the address
//! back. Each connection is one hyper HTTP/1.1 connection with upgrades enabled; the
//! proxy routes each request on it independently.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tether_kit::clock::now_ms;
use tether_kit::gate::Gate;
use tether_kit::throttle::Throttle;

use crate::admission::Refused;
use crate::affinity::client_ip;
use crate::config::ProxyProtocol;
use crate::telemetry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::config::ListenerConfig;
use crate::proxy::{ClientRequest, ConnInfo, Proxy};
use crate::tls;

pub mod proxy_protocol;

/// What a listener does with a connection. Swapped whole by a reload, read once per
/// connection, so a new certificate or option applies to new connections only.
#[derive(Debug, Default)]
pub struct Mode {
    /// The PROXY protocol header each connection opens with, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    pub serve: Serve,
}

/// How a listener serves a connection.
#[derive(Default)]
pub enum Serve {
    /// Plain HTTP, proxied.
    #[default]
    Plain,
    /// TLS, then HTTP/1.1 or HTTP/2 as ALPN decides.
    Tls {
        acceptor: TlsAcceptor,
        /// `Strict-Transport-Security` value added to every response.
        hsts: Option<HeaderValue>,
    },
    /// Plain HTTP answering every request with a redirect to `https://host:port`.
    RedirectHttps { port: u16 },
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Serve::Plain => f.write_str("Plain"),
            Serve::Tls { hsts, .. } => f
                .debug_struct("Tls")
                .field("hsts", hsts)
                .finish_non_exhaustive(),
            Serve::RedirectHttps { port } => {
                f.debug_struct("RedirectHttps").field("port", port).finish()
            }
        }
    }
}

impl Mode {
    /// Builds the mode a listener config asks for (reads certificate files).
    pub fn build(l: &ListenerConfig) -> Result<Mode, tls::TlsError> {
        let serve = match (l.redirect_https, &l.tls) {
            (Some(port), _) => Serve::RedirectHttps { port },
            (None, None) => Serve::Plain,
            (None, Some(t)) => Serve::Tls {
                acceptor: tls::acceptor(t)?,
                hsts: t
                    .hsts
                    .as_ref()
                    .and_then(|h| HeaderValue::from_str(&h.header_value()).ok()),
            },
        };
        Ok(Mode {
            proxy_protocol: l.proxy_protocol,
            serve,
        })
    }
}

/// hyper refuses a read buffer below this; smaller configured limits are raised to it.
pub const MIN_HEADER_BUF: usize = 8192;

/// The tokens and tracker a listener's connections answer to.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// Stops this listener accepting (its removal by a reload; shutdown cancels its
    /// parent). Open connections are not touched by it.
    pub stop_accepting: CancellationToken,
    /// Process shutdown: finish the request in flight on each connection, then close.
    pub shutdown: CancellationToken,
    /// The grace is over: close whatever is still open.
    pub hard_stop: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// The hand-over of the listening sockets to a new process (`--takeover`).
    pub handover: Arc<Handover>,
}

/// A hand-over of this process's listening sockets to a successor (`--takeover`), as
/// the connections see it. Once it has begun, the successor serves every new
/// connection: an idle keep-alive connection is kept for its client's next request
/// rather than closed under it, and the answer to a request that may have started a
/// session waits until the successor knows that session, since the client's next
/// request may reach the successor before the session would otherwise.
#[derive(Debug)]
pub struct Handover {
    begun: CancellationToken,
    /// Every session learned before this instant has been sent to the successor.
    flushed: tokio::sync::watch::Sender<tokio::time::Instant>,
    /// Asks whoever sends sessions to the successor to send now.
    wanted: tokio::sync::Notify,
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            begun: CancellationToken::new(),
            flushed: tokio::sync::watch::Sender::new(tokio::time::Instant::now()),
            wanted: tokio::sync::Notify::new(),
        }
    }
}

/// How long an answer waits at most for its session to reach the successor.
const HANDOVER_SYNC_LIMIT: Duration = Duration::from_millis(200);

impl Handover {
    /// A successor serves from now on.
    pub fn begin(&self) {
        self.begun.cancel();
    }

    pub fn has_begun(&self) -> bool {
        self.begun.is_cancelled()
    }

    /// Says that every session learned before `at` has been sent.
    pub fn flushed_through(&self, at: tokio::time::Instant) {
        self.flushed.send_if_modified(|t| {
            let later = at > *t;
            if later {
                *t = at;
            }
            later
        });
    }

    /// Resolves when an answer waits for sessions to be sent.
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }

    /// Waits (a moment at most) until every session learned so far has been sent.
    async fn sync(&self) {
        let now = tokio::time::Instant::now();
        let mut rx = self.flushed.subscribe();
        self.wanted.notify_one();
        let _ = tokio::time::timeout(HANDOVER_SYNC_LIMIT, rx.wait_for(|t| *t >= now)).await;
    }
}

/// Whether a request may start a session: it names no sid. Asked of every request (a
/// hand-over may begin while it is answered).
fn may_start_session<B>(req: &Request<B>) -> bool {
    !req.uri().query().is_some_and(crate::engineio::names_sid)
}

/// The handler's answer; after a hand-over has begun, one that may have started a session
/// waits until the successor knows that session.
async fn answer_handing_over(
    handler: &Handler,
    proxy: &Proxy,
    req: ClientRequest,
    conn: ConnInfo,
    handover: &Handover,
) -> Response<ProxyBody> {
    let starts = may_start_session(&req);
    let resp = handler.answer(proxy, req, conn).await;
    if starts && handover.has_begun() {
        handover.sync().await;
    }
    resp
}

/// Accepts until `stop_accepting` fires, holding a place in each of `gates` (the
/// process-wide connection cap, the listener's own) per connection. The mode is read per
/// connection, so a reload that swaps it (a new certificate) changes new connections only.
pub async fn serve(
    listener: TcpListener,
    mode: Arc<ArcSwap<Mode>>,
    proxy: Arc<Proxy>,
    life: Lifecycle,
    gates: Vec<Arc<Gate>>,
) {
    let stop = life.stop_accepting.clone();
    tether_kit::accept::accept_loop(&listener, &stop, "proxy", &gates, |stream, peer, passes| {
        let mode = mode.load_full();
        let proxy = Arc::clone(&proxy);
        let l = life.clone();
        life.connections.spawn(async move {
            let _passes = passes;
            serve_accepted(stream, peer, mode, proxy, l).await
        });
    })
    .await;
}

/// One accepted connection: its PROXY header (if the listener expects one), its client's
/// admission, its TLS handshake, then HTTP.
async fn serve_accepted(
    mut stream: TcpStream,
    peer: SocketAddr,
    mode: Arc<Mode>,
    proxy: Arc<Proxy>,
    l: Lifecycle,
) {
    let snapshot = proxy.store().load_full();
    let client = match mode.proxy_protocol {
        None => peer,
        Some(expected) => {
            let header = if client_ip::is_trusted(peer.ip(), &snapshot.trusted_proxies) {
                proxy_protocol::read_header(
                    &mut stream,
                    expected,
                    snapshot.limits.header_read_timeout,
                )
                .await
            } else {
                Err(proxy_protocol::HeaderError::Untrusted)
            };
            match header {
                Ok(named) => named.unwrap_or(peer),
                Err(e) => {
                    static LOG: Throttle = Throttle::new(Duration::from_secs(1));
                    if let Some(suppressed) = LOG.allow() {
                        tracing::info!(%peer, error = %e, suppressed, "connection refused");
                    }
                    metrics::counter!(telemetry::PROXY_HEADERS_REFUSED).increment(1);
                    return;
                }
            }
        }
    };
    // Held until the connection closes (a tunnel it becomes is counted on its own).
    let _client = match proxy
        .store()
        .clients
        .connect(client.ip(), &snapshot.limits.per_client)
    {
        Ok(counted) => counted,
        Err(why) => return refuse(client, why),
    };
    drop(snapshot);
    let tls = matches!(mode.serve, Serve::Tls { .. });
    let conn = ConnInfo {
        peer: client,
        local: stream.local_addr().unwrap_or(peer),
        tls,
    };
    match &mode.serve {
        Serve::Plain => serve_conn(stream, conn, proxy, l, Handler::Proxy(None), false).await,
        Serve::RedirectHttps { port } => {
            serve_conn(stream, conn, proxy, l, Handler::Redirect(*port), false).await
        }
        // Boxed: a TLS session and its handshake are kilobytes that plain
        // connections' tasks need not carry.
        Serve::Tls { acceptor, hsts } => {
            Box::pin(async move {
                let timeout = proxy.store().load().limits.header_read_timeout;
                let listener = conn.local.to_string();
                let failed = || {
                    metrics::counter!(telemetry::TLS_HANDSHAKES, "listener" => listener.clone(),
                        "version" => "-", "alpn" => "-", "result" => "failed")
                    .increment(1);
                };
                let deadline = tokio::time::Instant::now() + timeout;
                match tokio::time::timeout_at(deadline, first_byte(&stream)).await {
                    // A TLS record starts with its type (22 for a handshake); a request
                    // line starts with a method in capitals: plain HTTP was sent to a
                    // TLS port, which TLS would answer with an alert that browsers and
                    // curl report as gibberish. nginx answers it in HTTP; so does tether.
                    Ok(Some(b)) if b.is_ascii_uppercase() => {
                        static LOG: Throttle = Throttle::new(Duration::from_secs(1));
                        if let Some(suppressed) = LOG.allow() {
                            tracing::info!(peer = %client, local = %conn.local, suppressed, "plain HTTP on a TLS listener: answered 400, use https://");
                        }
                        failed();
                        let handler = Handler::PlainOnTls;
                        return serve_conn(stream, conn, proxy, l, handler, false).await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(_) => {
                        failed();
                        tracing::debug!(peer = %client, "TLS handshake timed out");
                        return;
                    }
                }
                match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let session = tls_stream.get_ref().1;
                        let alpn = session.alpn_protocol();
                        let h2 = alpn == Some(b"h2");
                        let version = match session.protocol_version() {
                            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                            _ => "other",
                        };
                        let alpn = match alpn {
                            Some(b"h2") => "h2",
                            Some(b"http/1.1") => "http/1.1",
                            Some(_) => "other",
                            None => "none",
                        };
                        metrics::counter!(telemetry::TLS_HANDSHAKES, "listener" => listener,
                            "version" => version, "alpn" => alpn, "result" => "ok")
                        .increment(1);
                        let handler = Handler::Proxy(hsts.clone());
                        serve_conn(tls_stream, conn, proxy, l, handler, h2).await
                    }
                    Ok(Err(e)) => {
                        failed();
                        tracing::debug!(peer = %client, error = %e, "TLS handshake failed")
                    }
                    Err(_) => {
                        failed();
                        tracing::debug!(peer = %client, "TLS handshake timed out")
                    }
                }
            })
            .await
        }
    }
}

/// The first byte the client sent, left unread; `None` if it closed (or failed) first.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match stream.peek(&mut b).await {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

/// Closes a connection its client may not open (the stream is dropped unread).
fn refuse(peer: SocketAddr, why: Refused) {
    metrics::counter!(telemetry::CLIENTS_LIMITED, "what" => why.as_str()).increment(1);
    static LOG: Throttle = Throttle::new(Duration::from_secs(1));
    if let Some(suppressed) = LOG.allow() {
        tracing::info!(%peer, reason = %why, suppressed, "connection refused");
    }
}

/// What answers the requests of a connection.
#[derive(Clone)]
enum Handler {
    /// The proxy, adding an HSTS header when given.
    Proxy(Option<HeaderValue>),
    /// A redirect to HTTPS on this port.
    Redirect(u16),
    /// Plain HTTP sent to a TLS listener: told to use https://, then closed.
    PlainOnTls,
}

impl Handler {
    async fn answer(
        &self,
        proxy: &Proxy,
        req: ClientRequest,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        match self {
            Handler::Proxy(hsts) => {
                let mut resp = proxy.handle(req, conn).await;
                if let Some(v) = hsts {
                    resp.headers_mut()
                        .insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
                }
                resp
            }
            Handler::Redirect(port) => redirect_https(&req, *port),
            Handler::PlainOnTls => plain_on_tls(&req),
        }
    }
}

/// `400` for a plain HTTP request on a TLS port, saying so (nginx: "The plain HTTP
/// request was sent to HTTPS port"), with the URL to use when the request names its
/// host; the connection closes after it.
fn plain_on_tls(req: &Request<Incoming>) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()));
    let body = match host {
        Some(h) => format!("plain HTTP was sent to a TLS port: use https://{h}/\n"),
        None => "plain HTTP was sent to a TLS port: use https://\n".to_owned(),
    };
    let mut resp = Response::new(ProxyBody::text(body));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// `example.com:80` → `example.com`; `[::1]:80` → `[::1]` (brackets kept for a URL).
fn host_without_port(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    }
}

/// `308` to the same host and path over HTTPS: 308 keeps the method and body, so a
/// POST is not silently turned into a GET.
fn redirect_https(req: &Request<Incoming>, port: u16) -> Response<ProxyBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            Some(h.to_owned())
        });
    let host = host.as_deref().map(host_without_port);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = host.map(|h| {
        if port == 443 {
            format!("https://{h}{path}")
        } else {
            format!("https://{h}:{port}{path}")
        }
    });
    let mut resp = Response::new(ProxyBody::empty());
    match target.and_then(|t| HeaderValue::from_str(&t).ok()) {
        Some(location) => {
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(header::LOCATION, location);
        }
        None => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

async fn serve_conn<IO>(
    io: IO,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    life: Lifecycle,
    handler: Handler,
    h2: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Limits in force when the connection opened apply to all of it.
    let limits = proxy.store().load().limits.clone();
    let io = TokioIo::new(io);
    let result = if h2 {
        // HTTP/2 carries polling requests of many sessions on one connection; each is
        // routed by its own sid, like HTTP/1.1 keep-alive requests.
        // Boxed: only TLS connections that chose h2 need HTTP/2's state.
        Box::pin(serve_h2(io, conn, proxy, life.clone(), handler, &limits)).await
    } else {
        let requests = Arc::new(Requests::default());
        let service = {
            let requests = Arc::clone(&requests);
            let handover = Arc::clone(&life.handover);
            service_fn(move |req| {
                let proxy = Arc::clone(&proxy);
                let handler = handler.clone();
                let handover = Arc::clone(&handover);
                let req = Box::new(req);
                let busy = requests.begin();
                async move {
                    let resp = answer_handing_over(&handler, &proxy, req, conn, &handover).await;
                    drop(busy);
                    Ok::<_, Infallible>(resp)
                }
            })
        };
        let mut http = std::pin::pin!(http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BUF))
            .keep_alive(true)
            .serve_connection(io, service)
            .with_upgrades());
        tokio::select! {
            r = http.as_mut() => r,
            _ = life.shutdown.cancelled() => {
                // Finish the request in flight, then close; idle keep-alives close now,
                // unless a successor took the sockets over: then an idle one is not
                // closed at once, as its client may be sending its next request this
                // very moment and would see the connection reset ("socket hang up")
                // instead of an answer. It is closed after its next response
                // (`Connection: close`), or once idle for SHUTDOWN_IDLE_LINGER.
                let next = async {
                    if life.handover.has_begun() && requests.in_flight() == 0 {
                        let _ = tokio::time::timeout(SHUTDOWN_IDLE_LINGER, requests.next()).await;
                    }
                };
                let ended = tokio::select! {
                    r = http.as_mut() => Some(r),
                    () = next => None,
                    _ = life.hard_stop.cancelled() => Some(Ok(())),
                };
                match ended {
                    Some(r) => r,
                    None => {
                        http.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = http.as_mut() => r,
                            _ = life.hard_stop.cancelled() => Ok(()),
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// At shutdown after a takeover, how long an idle HTTP/1.1 keep-alive connection is kept
/// for its client's next request (answered with `Connection: close`) before it is closed under the
/// client: longer than the 5 s Node's and most clients' agents keep an idle connection,
/// so they close it themselves first and never race the close with a request.
pub const SHUTDOWN_IDLE_LINGER: Duration = Duration::from_secs(6);

/// The requests of one HTTP/1.1 connection: how many are in flight, and a wake-up when
/// the next one begins.
#[derive(Default)]
struct Requests {
    in_flight: AtomicUsize,
    started: AtomicU64,
    began: tokio::sync::Notify,
}

/// A request of [`Requests`] in flight while it lives.
struct InFlight(Arc<Requests>);

impl Requests {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.began.notify_waiters();
        InFlight(Arc::clone(self))
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves when a request begins after this is called.
    async fn next(&self) {
        let seen = self.started.load(Ordering::Acquire);
        loop {
            let began = self.began.notified();
            tokio::pin!(began);
            began.as_mut().enable();
            if self.started.load(Ordering::Acquire) != seen {
                return;
            }
            began.await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often an HTTP/2 connection is pinged, and how long an answer may take: a peer
/// that vanished without a word is noticed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves HTTP/2 on `io`. hyper closes a connection whose peer stops answering pings,
/// but not one that answers them and sends nothing else (a preface and SETTINGS, then
/// silence, would hold a connection for ever), so requests in flight are counted here
/// and a connection without any is closed: after `header_read_timeout` if none ever
/// came, after `idle_timeout` once one has.
async fn serve_h2<IO>(
    io: TokioIo<IO>,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    life: Lifecycle,
    handler: Handler,
    limits: &crate::config::Limits,
) -> hyper::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = Arc::clone(&activity);
        let handover = Arc::clone(&life.handover);
        service_fn(move |req| {
            let proxy = Arc::clone(&proxy);
            let handler = handler.clone();
            let handover = Arc::clone(&handover);
            let req = Box::new(req);
            let busy = Activity::begin(&activity);
            async move {
                let resp = answer_handing_over(&handler, &proxy, req, conn, &handover).await;
                drop(busy);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let mut http = std::pin::pin!(http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(limits.h2_max_streams)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .serve_connection(io, service));
    let opened = now_ms();
    let check = limits.header_read_timeout.min(limits.idle_timeout) / 4;
    let mut watchdog = tokio::time::interval(check.max(Duration::from_millis(50)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle = loop {
        tokio::select! {
            r = http.as_mut() => return r,
            _ = life.shutdown.cancelled() => break false,
            _ = watchdog.tick() => {
                let limit = if activity.ever() { limits.idle_timeout } else { limits.header_read_timeout };
                if activity.idle_for(opened) >= limit {
                    tracing::debug!(peer = %conn.peer, "idle HTTP/2 connection closed");
                    break true;
                }
            }
        }
    };
    // GOAWAY: streams in flight finish, no new ones start. An idle connection has none;
    // its peer gets a moment to acknowledge, not more (one that never answers would
    // otherwise hold it until the ping timeout).
    http.as_mut().graceful_shutdown();
    let patience = if idle {
        H2_IDLE_CLOSE_WAIT
    } else {
        Duration::MAX
    };
    tokio::select! {
        r = http.as_mut() => r,
        _ = life.hard_stop.cancelled() => Ok(()),
        _ = tokio::time::sleep(patience) => Ok(()),
    }
}

/// How long an idle HTTP/2 connection told to go away may take to close by itself.
const H2_IDLE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// `now_ms` when the last request ended; 0: none has started yet.
    last_ms: AtomicU64,
}

impl Activity {
    fn begin(this: &Arc<Activity>) -> Busy {
        this.in_flight.fetch_add(1, Ordering::AcqRel);
        this.last_ms.store(now_ms(), Ordering::Release);
        Busy(Arc::clone(this))
    }

    fn ever(&self) -> bool {
        self.last_ms.load(Ordering::Acquire) != 0
    }

    /// How long the connection has carried no request (since `opened`, if none yet).
    fn idle_for(&self, opened: u64) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = match self.last_ms.load(Ordering::Acquire) {
            0 => opened,
            t => t,
        };
        Duration::from_millis(now_ms().saturating_sub(since))
    }
}

/// A request in flight; ends it when dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_ms.store(now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_keeps_host_and_path_and_names_the_https_port() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("example.com"), "example.com");
    }
}
