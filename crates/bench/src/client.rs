//! One simulated Socket.IO client: session setup (the polling handshake then the
//! WebSocket upgrade with its probe, a direct WebSocket, or polling for good) and the
//! session afterwards (emits with acks, answering the server's pings). Every server
//! behaviour ends in a value, never a panic: what goes wrong is a [`Failure`] with its
//! [`Cause`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::packet::{self, Engine, Socket};

/// Largest polling body read (Node's default `maxHttpBufferSize` is 1 MB).
const MAX_BODY: usize = 2_000_000;
/// How many GET polls may pass before the Socket.IO connect answer must have come.
const MAX_CONNECT_POLLS: usize = 5;
/// What the servers answer for a sid they do not hold (HTTP 400).
const SESSION_UNKNOWN: &str = "Session ID unknown";

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    /// The TCP address connected to.
    pub addr: SocketAddr,
    /// `host:port` as in the URL: the `Host` header.
    pub authority: String,
    /// The Socket.IO path, e.g. `/socket.io/`.
    pub path: String,
}

/// How a session is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Engine.IO polling handshake, Socket.IO connect over polling, then the WebSocket
    /// upgrade with its probe: what a default socket.io-client does.
    Polling,
    /// A WebSocket from the start (`transports: ["websocket"]`).
    Websocket,
    /// HTTP long-polling for good (`transports: ["polling"]`), as a browser does it:
    /// a GET always pending on one keep-alive connection, POSTs on another.
    #[serde(rename = "polling-only")]
    PollingOnly,
    /// A plain WebSocket to `--path`, no Engine.IO at all (a plain WebSocket upstream,
    /// such as `tether node --plain-websocket`): `--mode idle` or `connect` only.
    #[serde(rename = "plain-websocket")]
    PlainWebsocket,
}

/// Why a client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// HTTP 400 `Session ID unknown`: a request reached a server that does not hold
    /// the session (a routing failure, for a load balancer).
    SessionUnknown,
    /// TCP connect or HTTP / WebSocket handshake I/O failed.
    Connect,
    /// A step, or an ack, took longer than the timeout.
    Timeout,
    /// The server answered something unexpected.
    Protocol,
    /// The server closed an established session.
    Closed,
}

impl Cause {
    pub const ALL: [Cause; 5] = [
        Cause::SessionUnknown,
        Cause::Connect,
        Cause::Timeout,
        Cause::Protocol,
        Cause::Closed,
    ];

    /// The report's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Cause::SessionUnknown => "session_unknown",
            Cause::Connect => "connect",
            Cause::Timeout => "timeout",
            Cause::Protocol => "protocol",
            Cause::Closed => "closed",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A failure: its cause and what happened.
#[derive(Debug, Clone)]
pub struct Failure {
    pub cause: Cause,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.cause.name(), self.detail)
    }
}

pub fn fail(cause: Cause, detail: impl fmt::Display) -> Failure {
    Failure {
        cause,
        detail: detail.to_string(),
    }
}

impl From<packet::PacketError> for Failure {
    fn from(e: packet::PacketError) -> Failure {
        fail(Cause::Protocol, e)
    }
}

/// A small WebSocket config: per-client memory stays small with many clients.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_BODY))
        .max_frame_size(Some(MAX_BODY))
}

/// A TCP connection to the target, from `source` when given.
async fn tcp(target: &Target, source: Option<Ipv4Addr>) -> Result<TcpStream, Failure> {
    let socket = TcpSocket::new_v4().map_err(|e| fail(Cause::Connect, format!("socket: {e}")))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::from((ip, 0)))
            .map_err(|e| fail(Cause::Connect, format!("binding {ip}: {e}")))?;
    }
    let stream = socket.connect(target.addr).await.map_err(|e| {
        fail(
            Cause::Connect,
            format!("connecting to {}: {e}", target.addr),
        )
    })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The cookies the server set (a load balancer's affinity cookie), sent back as a
/// browser would.
#[derive(Default, Clone)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn take(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let pair = v.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
            match self.0.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => self.0.push((name, value)),
            }
        }
    }

    fn header(&self) -> Option<HeaderValue> {
        if self.0.is_empty() {
            return None;
        }
        let joined: Vec<String> = self.0.iter().map(|(n, v)| format!("{n}={v}")).collect();
        HeaderValue::from_str(&joined.join("; ")).ok()
    }
}

/// Aborts a task when dropped (a setup given up must not leave its tasks behind).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn http_request(
    target: &Target,
    jar: &Jar,
    method: Method,
    path_and_query: &str,
    body: Option<Bytes>,
) -> Result<Request<Full<Bytes>>, Failure> {
    let mut b = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(HOST, &target.authority);
    if let Some(c) = jar.header() {
        b = b.header(COOKIE, c);
    }
    let body = match body {
        Some(text) => {
            b = b.header(CONTENT_TYPE, "text/plain;charset=UTF-8");
            Full::new(text)
        }
        None => Full::new(Bytes::new()),
    };
    b.body(body)
        .map_err(|e| fail(Cause::Protocol, format!("building a request: {e}")))
}

/// Reads a polling response: its body, or the failure its status means.
async fn read_response(resp: Response<Incoming>, jar: &mut Jar) -> Result<String, Failure> {
    jar.take(resp.headers());
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| fail(Cause::Connect, format!("reading a polling body: {e}")))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    status_failure(status, &text)?;
    Ok(text)
}

/// The failure an HTTP status means (none for 2xx).
fn status_failure(status: StatusCode, body: &str) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let cause = if status == StatusCode::BAD_REQUEST && body.contains(SESSION_UNKNOWN) {
        Cause::SessionUnknown
    } else {
        Cause::Protocol
    };
    let shown: String = body.chars().take(100).collect();
    Err(fail(cause, format!("HTTP {status}: {shown}")))
}

/// One HTTP request on a keep-alive connection, counted in `requests`.
async fn exchange(
    conn: &mut KeepAlive,
    target: &Target,
    jar: &mut Jar,
    requests: &AtomicU64,
    method: Method,
    path_and_query: &str,
    body: Option<Bytes>,
) -> Result<String, Failure> {
    let req = http_request(target, jar, method, path_and_query, body)?;
    let send = conn.ready(target).await?;
    requests.fetch_add(1, Ordering::Relaxed);
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| fail(Cause::Connect, format!("polling request: {e}")))?;
    read_response(resp, jar).await
}

type Ws = WebSocketStream<TcpStream>;

async fn ws_handshake(
    target: &Target,
    requests: &AtomicU64,
    path_and_query: &str,
    cookie: Option<HeaderValue>,
    stream: TcpStream,
) -> Result<Ws, Failure> {
    requests.fetch_add(1, Ordering::Relaxed);
    let mut req = format!("ws://{}{}", target.authority, path_and_query)
        .into_client_request()
        .map_err(|e| fail(Cause::Protocol, format!("WebSocket request: {e}")))?;
    if let Some(c) = cookie {
        req.headers_mut().insert(COOKIE, c);
    }
    match tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config())).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            status_failure(resp.status(), &body)?;
            Err(fail(
                Cause::Protocol,
                format!("WebSocket handshake: HTTP {}", resp.status()),
            ))
        }
        Err(e) => Err(ws_failure("WebSocket handshake", e)),
    }
}

fn ws_failure(what: &str, e: tungstenite::Error) -> Failure {
    use tungstenite::Error as E;
    let cause = match &e {
        E::ConnectionClosed | E::AlreadyClosed => Cause::Closed,
        E::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => Cause::Closed,
        E::Io(_) => Cause::Connect,
        _ => Cause::Protocol,
    };
    fail(cause, format!("{what}: {e}"))
}

/// Sets up one session over `transport`; every HTTP request it makes, then and later,
/// is counted in `requests`.
pub async fn setup(
    target: &Target,
    transport: Transport,
    source: Option<Ipv4Addr>,
    requests: &Arc<AtomicU64>,
) -> Result<Session, Failure> {
    match transport {
        Transport::Polling => {
            let polling = polling_handshake(target, source, requests).await?;
            upgrade(target, source, requests, polling).await
        }
        Transport::PollingOnly => {
            let polling = polling_handshake(target, source, requests).await?;
            stay_polling(target, source, requests, polling).await
        }
        Transport::Websocket => setup_websocket(target, source, requests).await,
        Transport::PlainWebsocket => {
            let stream = tcp(target, source).await?;
            let ws = ws_handshake(target, requests, &target.path, None, stream).await?;
            Ok(Session::over(Link::Ws(ws)))
        }
    }
}

/// A session connected over polling: its keep-alive connection, cookies and path.
struct Handshaken {
    conn: KeepAlive,
    jar: Jar,
    sid: String,
    /// The polling path and query with the sid.
    with_sid: String,
    /// Whether the handshake listed `websocket` among the upgrades.
    offers_websocket: bool,
}

/// A keep-alive HTTP/1.1 connection, opened again when the server has closed it (nginx
/// closes one after `keepalive_requests`), as a browser does.
struct KeepAlive {
    send: SendRequest<Full<Bytes>>,
    _conn: AbortOnDrop<()>,
    source: Option<Ipv4Addr>,
}

impl KeepAlive {
    async fn open(target: &Target, source: Option<Ipv4Addr>) -> Result<KeepAlive, Failure> {
        let stream = tcp(target, source).await?;
        let (send, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| fail(Cause::Connect, format!("HTTP handshake: {e}")))?;
        let conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Ok(KeepAlive {
            send,
            _conn: conn,
            source,
        })
    }

    /// The connection, ready for a request: a new one if the server closed this one.
    async fn ready(&mut self, target: &Target) -> Result<&mut SendRequest<Full<Bytes>>, Failure> {
        if self.send.ready().await.is_err() {
            *self = KeepAlive::open(target, self.source).await?;
            self.send
                .ready()
                .await
                .map_err(|e| fail(Cause::Connect, format!("polling connection: {e}")))?;
        }
        Ok(&mut self.send)
    }
}

/// The Engine.IO polling handshake and the Socket.IO connect over polling.
async fn polling_handshake(
    target: &Target,
    source: Option<Ipv4Addr>,
    requests: &AtomicU64,
) -> Result<Handshaken, Failure> {
    let mut conn = KeepAlive::open(target, source).await?;
    let mut jar = Jar::default();
    let base = format!("{}?EIO=4&transport=polling", target.path);

    // Engine.IO handshake.
    let body = exchange(
        &mut conn,
        target,
        &mut jar,
        requests,
        Method::GET,
        &base,
        None,
    )
    .await?;
    let first = packet::split_payload(&body).next().unwrap_or_default();
    let open = packet::parse_open(first)?;
    let with_sid = format!("{base}&sid={}", open.sid);

    // Socket.IO connect: POST 40, then poll for the answer (40{"sid":...}).
    let ok = exchange(
        &mut conn,
        target,
        &mut jar,
        requests,
        Method::POST,
        &with_sid,
        Some(Bytes::from_static(b"40")),
    )
    .await?;
    if ok.trim() != "ok" {
        return Err(fail(Cause::Protocol, format!("POST answered {ok:?}")));
    }
    for _ in 0..MAX_CONNECT_POLLS {
        let body = exchange(
            &mut conn,
            target,
            &mut jar,
            requests,
            Method::GET,
            &with_sid,
            None,
        )
        .await?;
        let mut pong = false;
        let mut connected = false;
        for p in packet::split_payload(&body) {
            match packet::parse_engine(p)? {
                Engine::Message(m) => match packet::parse_socket(m)? {
                    Socket::Connect(_) => {
                        packet::parse_connect(p)?;
                        connected = true;
                    }
                    Socket::ConnectError(e) => {
                        return Err(fail(Cause::Protocol, format!("connect refused: {e}")))
                    }
                    _ => {}
                },
                Engine::Ping(_) => pong = true,
                Engine::Close => return Err(fail(Cause::Closed, "server closed the session")),
                _ => {}
            }
        }
        if pong {
            exchange(
                &mut conn,
                target,
                &mut jar,
                requests,
                Method::POST,
                &with_sid,
                Some(Bytes::from_static(b"3")),
            )
            .await?;
        }
        if connected {
            return Ok(Handshaken {
                conn,
                jar,
                offers_websocket: open.upgrades.iter().any(|u| u == "websocket"),
                sid: open.sid,
                with_sid,
            });
        }
    }
    Err(fail(
        Cause::Protocol,
        format!("no Socket.IO connect answer after {MAX_CONNECT_POLLS} polls"),
    ))
}

/// The WebSocket upgrade, as the real client does it: a GET poll stays pending while
/// the upgrade is probed; the server flushes it (noop) once the probe arrived.
async fn upgrade(
    target: &Target,
    source: Option<Ipv4Addr>,
    requests: &AtomicU64,
    polling: Handshaken,
) -> Result<Session, Failure> {
    let Handshaken {
        mut conn,
        jar,
        sid,
        with_sid,
        offers_websocket,
    } = polling;
    if !offers_websocket {
        return Err(fail(
            Cause::Protocol,
            "the server offers no WebSocket upgrade",
        ));
    }
    let req = http_request(target, &jar, Method::GET, &with_sid, None)?;
    let send = conn.ready(target).await?;
    requests.fetch_add(1, Ordering::Relaxed);
    let pending = send.send_request(req);
    let pending = AbortOnDrop(tokio::spawn(async move {
        let resp = pending
            .await
            .map_err(|e| fail(Cause::Connect, format!("pending poll: {e}")))?;
        read_response(resp, &mut Jar::default()).await
    }));

    let stream = tcp(target, source).await?;
    let ws_path = format!("{}?EIO=4&transport=websocket&sid={sid}", target.path);
    let ws = ws_handshake(target, requests, &ws_path, jar.header(), stream).await?;
    let mut session = Session::over(Link::Ws(ws));
    session.send_text("2probe").await?;
    loop {
        let text = session.next_text().await?;
        match packet::parse_engine(&text)? {
            Engine::Pong("probe") => break,
            Engine::Noop => {}
            _ => {
                return Err(fail(
                    Cause::Protocol,
                    format!("expected 3probe, got {:?}", short(&text)),
                ))
            }
        }
    }
    // Pause polling: wait for the pending poll to end. Its connection ending is fine
    // (servers may close it); a status error is not. What it carried counts: a server
    // that pings as soon as the session opens (socketioxide does) may have flushed the
    // ping to this poll, and a client that drops it is timed out 20 s later. The real
    // client answers such a ping, its pong going out over the new transport.
    let mut pending = pending;
    let mut pong = false;
    match (&mut pending.0).await {
        Ok(Err(f)) if f.cause != Cause::Connect => return Err(f),
        Ok(Ok(body)) => {
            for p in packet::split_payload(&body) {
                match packet::parse_engine(p)? {
                    Engine::Ping(_) => pong = true,
                    Engine::Close => return Err(fail(Cause::Closed, "server closed the session")),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    session.send_text("5").await?;
    if pong {
        session.send_text("3").await?;
    }
    session.upgraded = true;
    Ok(session)
}

/// Polling for good: the handshake connection carries the POSTs, a second keep-alive
/// connection the GETs, one always pending (a browser's two connections).
async fn stay_polling(
    target: &Target,
    source: Option<Ipv4Addr>,
    requests: &Arc<AtomicU64>,
    polling: Handshaken,
) -> Result<Session, Failure> {
    let get = KeepAlive::open(target, source).await?;
    // Bounded: the poller waits when the session falls 64 packets behind.
    let (tx, rx) = mpsc::channel(64);
    let poller = AbortOnDrop(tokio::spawn(poll_loop(
        get,
        target.clone(),
        polling.jar.clone(),
        polling.with_sid.clone(),
        tx,
        Arc::clone(requests),
    )));
    Ok(Session::over(Link::Polling(Polling {
        post: polling.conn,
        _poller: poller,
        target: target.clone(),
        jar: polling.jar,
        with_sid: polling.with_sid,
        packets: rx,
        requests: Arc::clone(requests),
    })))
}

/// GET polls back to back, each packet of each answer sent to the session; ends with
/// the first failure (sent too) or when the session is gone.
async fn poll_loop(
    mut get: KeepAlive,
    target: Target,
    mut jar: Jar,
    path: String,
    packets: mpsc::Sender<Result<Utf8Bytes, Failure>>,
    requests: Arc<AtomicU64>,
) {
    loop {
        let body = match exchange(
            &mut get,
            &target,
            &mut jar,
            &requests,
            Method::GET,
            &path,
            None,
        )
        .await
        {
            Ok(body) => body,
            Err(f) => {
                let _ = packets.send(Err(f)).await;
                return;
            }
        };
        for p in packet::split_payload(&body) {
            if packets.send(Ok(Utf8Bytes::from(p))).await.is_err() {
                return;
            }
        }
    }
}

async fn setup_websocket(
    target: &Target,
    source: Option<Ipv4Addr>,
    requests: &AtomicU64,
) -> Result<Session, Failure> {
    let stream = tcp(target, source).await?;
    let path = format!("{}?EIO=4&transport=websocket", target.path);
    let ws = ws_handshake(target, requests, &path, None, stream).await?;
    let mut session = Session::over(Link::Ws(ws));
    let open = session.next_text().await?;
    packet::parse_open(&open)?;
    session.send_text("40").await?;
    loop {
        let m = session.recv_message().await?;
        match packet::parse_socket(&m[1..])? {
            Socket::Connect(_) => {
                packet::parse_connect(&m)?;
                return Ok(session);
            }
            Socket::ConnectError(e) => {
                return Err(fail(Cause::Protocol, format!("connect refused: {e}")))
            }
            _ => {}
        }
    }
}

fn short(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The polling half of a polling-only session.
struct Polling {
    post: KeepAlive,
    _poller: AbortOnDrop<()>,
    target: Target,
    jar: Jar,
    with_sid: String,
    /// Packets the GET polls brought, in order.
    packets: mpsc::Receiver<Result<Utf8Bytes, Failure>>,
    requests: Arc<AtomicU64>,
}

impl Polling {
    /// POSTs one packet; the server answers `ok`.
    async fn post(&mut self, text: Utf8Bytes) -> Result<(), Failure> {
        let ok = exchange(
            &mut self.post,
            &self.target,
            &mut self.jar,
            &self.requests,
            Method::POST,
            &self.with_sid,
            Some(Bytes::from(text)),
        )
        .await?;
        if ok.trim() != "ok" {
            return Err(fail(Cause::Protocol, format!("POST answered {ok:?}")));
        }
        Ok(())
    }
}

/// How an established session talks.
enum Link {
    Ws(Ws),
    Polling(Polling),
}

/// An established session.
pub struct Session {
    link: Link,
    /// Whether it came from the polling handshake and upgraded.
    pub upgraded: bool,
    next_id: u64,
}

/// What one read gave: a text packet, nothing of interest (a control frame), or the
/// end of the session.
pub type Frame = Result<Option<Utf8Bytes>, Failure>;

impl Session {
    fn over(link: Link) -> Session {
        Session {
            link,
            upgraded: false,
            next_id: 0,
        }
    }

    /// The next ack id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), Failure> {
        match &mut self.link {
            Link::Ws(ws) => ws
                .send(Message::Text(text.into()))
                .await
                .map_err(|e| ws_failure("sending", e)),
            Link::Polling(p) => p.post(text.into()).await,
        }
    }

    /// Reads one packet (cancel safe: for `select!`).
    pub async fn read_frame(&mut self) -> Frame {
        match &mut self.link {
            Link::Ws(ws) => match ws.next().await {
                None => Err(fail(Cause::Closed, "connection closed")),
                Some(Err(e)) => Err(ws_failure("reading", e)),
                Some(Ok(Message::Text(t))) => Ok(Some(t)),
                Some(Ok(Message::Close(_))) => {
                    Err(fail(Cause::Closed, "server closed the WebSocket"))
                }
                Some(Ok(_)) => Ok(None),
            },
            Link::Polling(p) => match p.packets.recv().await {
                Some(r) => r.map(Some),
                None => Err(fail(Cause::Closed, "polling stopped")),
            },
        }
    }

    /// The next text packet, whatever it holds.
    async fn next_text(&mut self) -> Result<Utf8Bytes, Failure> {
        loop {
            if let Some(t) = self.read_frame().await? {
                return Ok(t);
            }
        }
    }

    /// Handles one packet: answers Engine.IO pings, returns an Engine.IO message (the
    /// whole text, `4...`) if that is what it was.
    pub async fn handle(&mut self, frame: Frame) -> Result<Option<Utf8Bytes>, Failure> {
        let Some(text) = frame? else {
            return Ok(None);
        };
        match packet::parse_engine(&text)? {
            Engine::Message(_) => Ok(Some(text)),
            Engine::Ping(data) => {
                let pong = format!("3{data}");
                self.send_text(pong).await?;
                Ok(None)
            }
            Engine::Close => Err(fail(Cause::Closed, "server closed the session")),
            _ => Ok(None),
        }
    }

    /// The next Engine.IO message (pings answered on the way).
    pub async fn recv_message(&mut self) -> Result<Utf8Bytes, Failure> {
        loop {
            let frame = self.read_frame().await;
            if let Some(m) = self.handle(frame).await? {
                return Ok(m);
            }
        }
    }

    /// Emits `whoami` and returns the `node` of its ack (`None` if the ack has none).
    pub async fn whoami(&mut self) -> Result<Option<String>, Failure> {
        let id = self.next_id();
        self.send_text(packet::emit_with_ack(id, "whoami", ""))
            .await?;
        loop {
            let m = self.recv_message().await?;
            if let Some((ack, args)) = ack_of(&m)? {
                if ack == id {
                    return Ok(packet::whoami_node(args));
                }
            }
        }
    }

    /// Closes the session (best effort): a WebSocket close, or the Engine.IO close
    /// packet over polling.
    pub async fn close(mut self) {
        let limit = std::time::Duration::from_secs(1);
        let _ = match &mut self.link {
            Link::Ws(ws) => tokio::time::timeout(limit, ws.close(None)).await.map(drop),
            Link::Polling(p) => tokio::time::timeout(limit, p.post(Utf8Bytes::from_static("1")))
                .await
                .map(drop),
        };
    }
}

/// The ack id and arguments of an Engine.IO message, if it is an ack.
pub fn ack_of(message: &str) -> Result<Option<(u64, &str)>, Failure> {
    let Some(sio) = message.strip_prefix('4') else {
        return Ok(None);
    };
    Ok(match packet::parse_socket(sio)? {
        Socket::Ack(id, args) => Some((id, args)),
        Socket::Disconnect => return Err(fail(Cause::Closed, "server disconnected the socket")),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert!(status_failure(StatusCode::OK, "").is_ok());
        let f = status_failure(
            StatusCode::BAD_REQUEST,
            r#"{"code":1,"message":"Session ID unknown"}"#,
        )
        .unwrap_err();
        assert_eq!(f.cause, Cause::SessionUnknown);
        let f = status_failure(StatusCode::BAD_REQUEST, "Transport unknown").unwrap_err();
        assert_eq!(f.cause, Cause::Protocol);
        let f = status_failure(StatusCode::BAD_GATEWAY, "Session ID unknown").unwrap_err();
        assert_eq!(f.cause, Cause::Protocol);
    }

    #[test]
    fn acks() {
        assert_eq!(ack_of(r#"435["x"]"#).unwrap(), Some((5, r#"["x"]"#)));
        assert_eq!(ack_of(r#"42["welcome",{}]"#).unwrap(), None);
        assert_eq!(ack_of("3").unwrap(), None);
        assert_eq!(ack_of("41").unwrap_err().cause, Cause::Closed);
        assert_eq!(ack_of("4x").unwrap_err().cause, Cause::Protocol);
    }

    #[test]
    fn cookies() {
        let mut jar = Jar::default();
        assert!(jar.header().is_none());
        let mut h = HeaderMap::new();
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("tether=abc; Path=/; HttpOnly"),
        );
        h.append(SET_COOKIE, HeaderValue::from_static("io=x"));
        jar.take(&h);
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("tether=def"));
        jar.take(&h);
        assert_eq!(jar.header().unwrap(), "tether=def; io=x");
    }
}
