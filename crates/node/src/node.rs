//! One Socket.IO node: socketioxide behind a plain hyper 1 server, running the demo
//! application ([`super::app`]) and sharing rooms and broadcasts with the other nodes of
//! its cluster through an adapter.
//!
//! HTTP surface (every response, Engine.IO ones included, carries `x-node-id: <id>`):
//!
//! - `GET /health`: 200 `ok` while serving; 503 `unhealthy` after [`RunningNode::drain`],
//!   and while the adapter's Redis connection is down (Redis adapters only: the driver is
//!   probed through its own connection, see [`DriverHealth`]);
//! - `GET /metrics`: Prometheus text (the process-wide recorder of
//!   [`tether_kit::recorder::handle`]), with `tether_node_sockets{node}`,
//!   `tether_node_messages_total{node,event}` and, on Redis adapters,
//!   `tether_node_redis_up{node}`;
//! - `GET /`: the chat page; `GET /tether-client.js`: its client;
//!   `GET /whoami-http`: the node id (as the Node test fixture answers);
//! - `/socket.io/…`: Socket.IO (Engine.IO v4, polling and WebSocket), 1 MB payloads as
//!   Node's default `maxHttpBufferSize`.
//!
//! The Redis adapters are socketioxide-redis's, on channels prefixed [`REDIS_PREFIX`]: its
//! protocol is not `@socket.io/redis-adapter`'s, so Rust and Node nodes never share one
//! channel (they would misread each other's messages) and do not form one cluster.
//! socketioxide-redis subscribes through RESP3 push messages (Redis 7 or later); the URL's
//! protocol is forced to RESP3 whatever it says.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use socketioxide::adapter::{Emitter, LocalAdapter};
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;
use socketioxide::service::SocketIoService;
use socketioxide::SocketIo;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::app::{self, App};
use super::drivers::memory::{MemoryBus, MemoryDriver};
use super::drivers::pubsub::PubSubDriver;
use super::drivers::streams::StreamsDriver;
use super::drivers::{DriverHealth, LocalFirst};
use tether_kit::signal::Signal;

/// The header naming the node that answered.
pub const NODE_ID_HEADER: &str = "x-node-id";
/// The Socket.IO path.
pub const SOCKET_IO_PATH: &str = "/socket.io";
/// Largest Engine.IO payload (a polling body, a WebSocket message): 1 MB, Node's
/// `maxHttpBufferSize` default (socketioxide's own default is 100 kB).
pub const MAX_PAYLOAD: u64 = 1_000_000;
/// Prefix of the socketioxide-redis channels (its default, "socket.io", is what Node's
/// `@socket.io/redis-adapter` uses too, with another protocol).
pub const REDIS_PREFIX: &str = "tether-rs";
/// Gauge: 1 while the node's Redis connection works, else 0 (`node`; Redis adapters only).
pub const REDIS_UP: &str = "tether_node_redis_up";

/// How often the Redis connection is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long connecting to Redis may take at start.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits for socketioxide to close every socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `stop` waits for open HTTP connections to finish their requests.
const CONN_GRACE: Duration = Duration::from_secs(2);

/// Which adapter the node shares rooms and broadcasts through.
#[derive(Clone)]
pub enum AdapterChoice {
    /// None: a node on its own.
    Local,
    /// socketioxide-redis over Redis pub/sub (its stock driver).
    RedisPubSub { url: String },
    /// socketioxide-redis over Redis Streams ([`StreamsDriver`]).
    RedisStreams { url: String },
    /// An in-process bus shared by the nodes of one process ([`MemoryDriver`]).
    Memory(Arc<MemoryBus>),
}

impl fmt::Debug for AdapterChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterChoice::Local => f.write_str("Local"),
            AdapterChoice::RedisPubSub { url } => f
                .debug_struct("RedisPubSub")
                .field("url", &redact(url))
                .finish(),
            AdapterChoice::RedisStreams { url } => f
                .debug_struct("RedisStreams")
                .field("url", &redact(url))
                .finish(),
            AdapterChoice::Memory(_) => f.write_str("Memory"),
        }
    }
}

impl AdapterChoice {
    fn is_redis(&self) -> bool {
        matches!(
            self,
            AdapterChoice::RedisPubSub { .. } | AdapterChoice::RedisStreams { .. }
        )
    }
}

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Where to listen; port 0 picks a free port (see [`RunningNode::addr`]).
    pub bind: SocketAddr,
    /// The node id, sent in `x-node-id` and in the application's answers; empty means
    /// `node-<port>` (the port bound).
    pub id: String,
    pub adapter: AdapterChoice,
    /// Engine.IO ping interval (default 25 s).
    pub ping_interval: Option<Duration>,
    /// Engine.IO ping timeout (default 20 s).
    pub ping_timeout: Option<Duration>,
}

impl NodeOptions {
    /// A node with the local adapter and default pings.
    pub fn new(bind: SocketAddr, id: impl Into<String>) -> NodeOptions {
        NodeOptions {
            bind,
            id: id.into(),
            adapter: AdapterChoice::Local,
            ping_interval: None,
            ping_timeout: None,
        }
    }
}

/// Why a node could not start.
#[derive(thiserror::Error, Debug)]
pub enum NodeError {
    #[error("invalid node id {0:?}: 1 to 128 visible ASCII characters")]
    InvalidId(String),
    #[error("binding {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("redis URL {url}: {cause}")]
    RedisUrl {
        url: String,
        cause: redis::RedisError,
    },
    #[error("connecting to redis at {url}: {reason}")]
    RedisConnect { url: String, reason: String },
    #[error("starting the {adapter} adapter: {reason}")]
    AdapterInit {
        adapter: &'static str,
        reason: String,
    },
}

/// A node serving until [`RunningNode::stop`] (or until dropped, less gracefully).
pub struct RunningNode {
    addr: SocketAddr,
    shared: Arc<Shared>,
    app: Arc<App>,
    stop: CancellationToken,
    conns: TaskTracker,
    accept: Option<tokio::task::JoinHandle<()>>,
    close_io: Option<CloseIo>,
}

type CloseIo = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

impl fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningNode")
            .field("id", &self.shared.id)
            .field("addr", &self.addr)
            .finish()
    }
}

impl RunningNode {
    /// The address it listens on (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// From now on `/health` answers 503; sockets stay connected and are served.
    pub fn drain(&self) {
        if !self.shared.draining.swap(true, Ordering::Relaxed) {
            tracing::info!(node = %self.shared.id, "draining");
        }
    }

    /// Whether `/health` would answer 200 now.
    pub fn healthy(&self) -> bool {
        self.shared.healthy()
    }

    /// Whether the Redis connection works; `None` without a Redis adapter.
    pub fn redis_up(&self) -> Option<bool> {
        self.shared.redis_up()
    }

    /// Sockets connected to this node now.
    pub fn sockets(&self) -> i64 {
        self.app.socket_count()
    }

    /// Closes every client socket (they see the server close), stops listening, lets open
    /// HTTP requests finish (briefly) and returns.
    pub async fn stop(mut self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        if let Some(close) = self.close_io.take() {
            if tokio::time::timeout(CLOSE_TIMEOUT, close()).await.is_err() {
                let node = &self.shared.id;
                tracing::warn!(%node, "sockets still open after {CLOSE_TIMEOUT:?}");
            }
        }
        self.stop.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.conns.close();
        let _ =
            tokio::time::timeout(CONN_GRACE + Duration::from_millis(500), self.conns.wait()).await;
        tracing::info!(node = %self.shared.id, "stopped");
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        // Not stopped: at least stop listening and serving.
        self.stop.cancel();
    }
}

/// What the HTTP side of a node shares.
struct Shared {
    id: String,
    header: HeaderValue,
    draining: AtomicBool,
    /// Set for the Redis adapters.
    redis: OnceLock<RedisHealth>,
    redis_gauge: Option<metrics::Gauge>,
    metrics: &'static PrometheusHandle,
}

/// Whether the adapter's Redis connection works.
struct RedisHealth {
    /// `num_serv` through the driver's own connection, every `PROBE_INTERVAL`.
    probe: DriverHealth,
    /// What the driver itself knows, when it tells.
    also: Option<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl RedisHealth {
    fn up(&self) -> bool {
        self.probe.connected() && self.also.as_ref().is_none_or(|f| f())
    }
}

impl Shared {
    fn redis_up(&self) -> Option<bool> {
        let up = self.redis.get().map(RedisHealth::up);
        if let (Some(g), Some(up)) = (&self.redis_gauge, up) {
            g.set(if up { 1.0 } else { 0.0 });
        }
        up
    }

    fn healthy(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.redis_up() != Some(false)
    }

    /// The routes outside `/socket.io/`.
    fn page(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            return text(StatusCode::NOT_FOUND, "text/plain", "not found", false);
        }
        match req.uri().path() {
            "/health" => {
                if self.healthy() {
                    text(StatusCode::OK, "text/plain", "ok", head)
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "unhealthy",
                        head,
                    )
                }
            }
            "/metrics" => {
                self.redis_up();
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                    head,
                )
            }
            "/whoami-http" => text(StatusCode::OK, "text/plain", self.id.clone(), head),
            "/" | "/index.html" => text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                super::assets::INDEX_HTML,
                head,
            ),
            "/tether-client.js" => text(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                super::assets::CLIENT_JS,
                head,
            ),
            _ => text(StatusCode::NOT_FOUND, "text/plain", "not found", head),
        }
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
    head: bool,
) -> Response<Full<Bytes>> {
    let body = if head { Bytes::new() } else { body.into() };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The service behind socketioxide's: everything outside `/socket.io/`.
#[derive(Clone)]
struct Pages(Arc<Shared>);

impl Service<Request<Incoming>> for Pages {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(self.0.page(&req)))
    }
}

/// Starts a node: binds, connects the adapter, and serves in the background.
pub async fn start(mut opts: NodeOptions) -> Result<RunningNode, NodeError> {
    if !opts.id.is_empty() {
        node_header(&opts.id)?;
    }
    let metrics = tether_kit::recorder::handle();
    let listener = TcpListener::bind(opts.bind)
        .await
        .map_err(|cause| NodeError::Bind {
            addr: opts.bind,
            cause,
        })?;
    let addr = listener.local_addr().map_err(|cause| NodeError::Bind {
        addr: opts.bind,
        cause,
    })?;
    if opts.id.is_empty() {
        opts.id = format!("node-{}", addr.port());
    }
    let header = node_header(&opts.id)?;
    let redis_gauge = opts
        .adapter
        .is_redis()
        .then(|| metrics::gauge!(REDIS_UP, "node" => opts.id.clone()));
    let shared = Arc::new(Shared {
        id: opts.id.clone(),
        header,
        draining: AtomicBool::new(false),
        redis: OnceLock::new(),
        redis_gauge,
        metrics,
    });
    let app = App::new(&opts.id);
    let pages = Pages(Arc::clone(&shared));

    let mut builder = SocketIo::builder()
        .req_path(SOCKET_IO_PATH)
        .max_payload(MAX_PAYLOAD)
        .ws_max_message_size(MAX_PAYLOAD as usize)
        .ws_max_frame_size(MAX_PAYLOAD as usize);
    if let Some(d) = opts.ping_interval {
        builder = builder.ping_interval(d);
    }
    if let Some(d) = opts.ping_timeout {
        builder = builder.ping_timeout(d);
    }

    // Namespace `/`: events registered by the middleware, before the connect answer
    // goes out (see `app::register_events`).
    macro_rules! namespace {
        ($adapter:ty) => {{
            let (a, b) = (Arc::clone(&app), Arc::clone(&app));
            (move |s: SocketRef<$adapter>| app::on_connect(a, s))
                .with(move |s: SocketRef<$adapter>| app::register_events(b, s))
        }};
    }
    let (serving, close_io) = match &opts.adapter {
        AdapterChoice::Local => {
            let (svc, io) = builder.build_with_inner_svc(pages);
            io.ns("/", namespace!(LocalAdapter));
            (serve(listener, svc, &shared), closer(io))
        }
        AdapterChoice::Memory(bus) => {
            type A = CustomRedisAdapter<Emitter, MemoryDriver>;
            let driver = MemoryDriver::new(Arc::clone(bus));
            let ctr = RedisAdapterCtr::new_with_driver(driver, adapter_config());
            let (svc, io) = builder.with_adapter::<A>(ctr).build_with_inner_svc(pages);
            io.ns("/", namespace!(A))
                .await
                .map_err(|e| NodeError::AdapterInit {
                    adapter: "memory",
                    reason: e.to_string(),
                })?;
            (serve(listener, svc, &shared), closer(io))
        }
        AdapterChoice::RedisPubSub { url } => {
            // Our reconnecting pub/sub driver: the stock one never comes back after a
            // Redis restart (see drivers::pubsub).
            type A = CustomRedisAdapter<Emitter, PubSubDriver>;
            let resp3 = redis_client(url)?.get_connection_info().clone();
            let driver = within_connect_timeout(url, PubSubDriver::from_info(resp3)).await?;
            let probe = driver.clone();
            watch_redis(
                &shared,
                driver.clone(),
                Some(Box::new(move || probe.connected())),
            );
            let ctr = RedisAdapterCtr::new_with_driver(driver, adapter_config());
            let (svc, io) = builder.with_adapter::<A>(ctr).build_with_inner_svc(pages);
            io.ns("/", namespace!(A))
                .await
                .map_err(|e| NodeError::AdapterInit {
                    adapter: "redis",
                    reason: e.to_string(),
                })?;
            (serve(listener, svc, &shared), closer(io))
        }
        AdapterChoice::RedisStreams { url } => {
            type A = CustomRedisAdapter<Emitter, LocalFirst<StreamsDriver>>;
            // Stream keys and adapter channels share the prefix; the URL is given as is
            // (streams work over RESP2 and RESP3 alike).
            let driver = within_connect_timeout(url, StreamsDriver::new(url, REDIS_PREFIX)).await?;
            // Healthy when the probe gets through and the driver's reader is connected.
            let reader = driver.clone();
            watch_redis(
                &shared,
                driver.clone(),
                Some(Box::new(move || reader.connected())),
            );
            // A failed publish must not cost the node's own clients their message.
            let ctr =
                RedisAdapterCtr::new_with_driver(LocalFirst(driver.clone()), adapter_config());
            let (svc, io) = builder.with_adapter::<A>(ctr).build_with_inner_svc(pages);
            io.ns("/", namespace!(A))
                .await
                .map_err(|e| NodeError::AdapterInit {
                    adapter: "redis-streams",
                    reason: e.to_string(),
                })?;
            let close: CloseIo = Box::new(move || {
                Box::pin(async move {
                    io.close().await;
                    if let Err(e) = driver.close().await {
                        tracing::debug!(error = %e, "closing the streams driver");
                    }
                })
            });
            (serve(listener, svc, &shared), close)
        }
    };
    if let Some(health) = shared.redis.get() {
        // The driver just subscribed through its connection: wait for the first probe so
        // that `/health` does not start at 503.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !health.up() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shared.redis_up();
    }
    tracing::info!(node = %opts.id, %addr, adapter = ?opts.adapter, "node serving");
    Ok(RunningNode {
        addr,
        shared,
        app,
        stop: serving.stop,
        conns: serving.conns,
        accept: Some(serving.accept),
        close_io: Some(close_io),
    })
}

fn node_header(id: &str) -> Result<HeaderValue, NodeError> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| HeaderValue::from_str(id).ok())
        .flatten()
        .ok_or_else(|| NodeError::InvalidId(id.to_owned()))
}

fn adapter_config() -> RedisAdapterConfig {
    RedisAdapterConfig::new().with_prefix(REDIS_PREFIX)
}

fn closer<A: socketioxide::adapter::Adapter>(io: SocketIo<A>) -> CloseIo {
    Box::new(move || Box::pin(async move { io.close().await }))
}

/// A Redis client for `url`, speaking RESP3 whatever the URL says (socketioxide-redis's
/// driver subscribes through RESP3 push messages).
fn redis_client(url: &str) -> Result<redis::Client, NodeError> {
    use redis::IntoConnectionInfo;
    let err = |cause| NodeError::RedisUrl {
        url: redact(url),
        cause,
    };
    let info = url.into_connection_info().map_err(err)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings)).map_err(err)
}

async fn within_connect_timeout<T, E: fmt::Display>(
    url: &str,
    connect: impl Future<Output = Result<T, E>>,
) -> Result<T, NodeError> {
    match tokio::time::timeout(REDIS_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(NodeError::RedisConnect {
            url: redact(url),
            reason: e.to_string(),
        }),
        Err(_) => Err(NodeError::RedisConnect {
            url: redact(url),
            reason: format!("no answer within {REDIS_CONNECT_TIMEOUT:?}"),
        }),
    }
}

/// Probes the adapter's Redis connection (through the driver, so through the very
/// connection the adapter uses) and logs when it goes down or comes back.
fn watch_redis<D: socketioxide_redis::drivers::Driver>(
    shared: &Arc<Shared>,
    driver: D,
    also: Option<Box<dyn Fn() -> bool + Send + Sync>>,
) {
    let _ = shared.redis.set(RedisHealth {
        probe: DriverHealth::spawn(driver, PROBE_INTERVAL),
        also,
    });
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut last = true;
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            let Some(shared) = weak.upgrade() else { return };
            let up = shared.redis_up().unwrap_or(true);
            if up != last {
                if up {
                    tracing::info!(node = %shared.id, "redis connection is back");
                } else {
                    tracing::warn!(node = %shared.id, "redis connection lost: /health answers 503");
                }
                last = up;
            }
        }
    });
}

/// `redis://user:secret@host` → `redis://user:***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

struct Serving {
    stop: CancellationToken,
    conns: TaskTracker,
    accept: tokio::task::JoinHandle<()>,
}

/// Accepts connections and serves each with `svc` (socketioxide, `Pages` behind it),
/// stamping `x-node-id` on every response.
fn serve<A: socketioxide::adapter::Adapter>(
    listener: TcpListener,
    svc: SocketIoService<Pages, A>,
    shared: &Arc<Shared>,
) -> Serving {
    let stop = CancellationToken::new();
    let conns = TaskTracker::new();
    let header = shared.header.clone();
    let accept = {
        let stop = stop.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            tether_kit::accept::accept_loop(
                &listener,
                &stop.clone(),
                "node",
                &[],
                |stream, _, _| {
                    let svc = svc.clone();
                    let header = header.clone();
                    let stop = stop.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let fut = svc.call(req);
                            let header = header.clone();
                            async move {
                                let mut resp = fut.await?;
                                resp.headers_mut()
                                    .insert(HeaderName::from_static(NODE_ID_HEADER), header);
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let conn = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades();
                        let mut conn = std::pin::pin!(conn);
                        tokio::select! {
                            r = conn.as_mut() => {
                                if let Err(e) = r {
                                    tracing::debug!(error = %e, "node connection ended");
                                }
                            }
                            _ = stop.cancelled() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(CONN_GRACE, conn).await;
                            }
                        }
                    });
                },
            )
            .await
        })
    };
    Serving {
        stop,
        conns,
        accept,
    }
}

// ---- the `tether node` command ----

/// The line a node prints once it listens, which the supervisor and tests read its port
/// from; keys in the order tests/node/server.js prints them.
pub(crate) fn print_listening(port: u16, id: &str) {
    use std::io::Write;
    let line = format!(
        r#"{{"event":"listening","port":{port},"id":{}}}"#,
        serde_json::Value::from(id)
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// How `tether node` runs: [`start`], print the listening line, then on SIGTERM drain and
/// stop, on SIGINT stop; a second signal exits at once.
pub async fn run_until_signal(opts: NodeOptions) -> Result<(), NodeError> {
    let node = start(opts).await?;
    print_listening(node.addr().port(), node.id());
    match tether_kit::signal::first_signal().await {
        Some(Signal::Terminate) => {
            node.drain();
            node.stop().await;
        }
        Some(Signal::Interrupt) => node.stop().await,
        None => std::future::pending::<()>().await,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_testkit::TestRedis;

    #[test]
    fn ids_must_fit_a_header() {
        assert!(node_header("node-1").is_ok());
        assert!(node_header("").is_err());
        assert!(node_header("a b").is_err());
        assert!(node_header("nœud").is_err());
        assert!(node_header(&"x".repeat(129)).is_err());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://u:secret@127.0.0.1:6379/0?protocol=resp3"),
            "redis://u:***@127.0.0.1:6379/0?protocol=resp3"
        );
        assert_eq!(redact("redis://:pw@h"), "redis://:***@h");
        assert_eq!(
            redact("redis+unix:///tmp/r.sock"),
            "redis+unix:///tmp/r.sock"
        );
    }

    #[test]
    fn redis_urls_are_forced_to_resp3() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:6379?protocol=resp2",
            "redis+unix:///tmp/x.sock",
        ] {
            let c = redis_client(url).unwrap();
            assert_eq!(
                c.get_connection_info().redis_settings().protocol(),
                redis::ProtocolVersion::RESP3,
                "{url}"
            );
        }
        assert!(redis_client("http://nope").is_err());
    }

    // ---- end to end, with a minimal Engine.IO v4 polling client ----

    use http_body_util::BodyExt;

    fn local(id: &str) -> NodeOptions {
        NodeOptions::new("127.0.0.1:0".parse().unwrap(), id)
    }

    struct Reply {
        status: StatusCode,
        headers: http::HeaderMap,
        body: String,
    }

    async fn http(addr: SocketAddr, method: Method, path: &str, body: &str) -> Reply {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "text/plain;charset=UTF-8")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// One Socket.IO client over long polling.
    struct Client {
        addr: SocketAddr,
        sid: String,
        /// Packets received and not yet consumed.
        inbox: Vec<String>,
    }

    impl Client {
        async fn connect(addr: SocketAddr) -> Client {
            let r = http(addr, Method::GET, "/socket.io/?EIO=4&transport=polling", "").await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let open: serde_json::Value = serde_json::from_str(&r.body[1..]).unwrap();
            let mut c = Client {
                addr,
                sid: open["sid"].as_str().unwrap().to_owned(),
                inbox: Vec::new(),
            };
            assert_eq!(open["maxPayload"], MAX_PAYLOAD);
            c.send("40").await;
            c.expect(|p| p.starts_with("40")).await;
            c
        }

        async fn send(&self, packet: &str) {
            let path = format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid);
            let r = http(self.addr, Method::POST, &path, packet).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }

        /// Polls until a packet matching `want` arrives; returns it (others stay queued).
        async fn expect(&mut self, want: impl Fn(&str) -> bool) -> String {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(i) = self.inbox.iter().position(|p| want(p)) {
                    return self.inbox.remove(i);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no such packet; got {:?}",
                    self.inbox
                );
                let path = format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid);
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    http(self.addr, Method::GET, &path, ""),
                )
                .await
                .expect("poll timed out");
                assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                self.inbox.extend(r.body.split('\u{1e}').map(str::to_owned));
            }
        }

        /// Emits `event` with `args` (a JSON array's inside) and an ack id; returns the
        /// ack's arguments.
        async fn call(&mut self, id: u32, event: &str, args: &str) -> serde_json::Value {
            let sep = if args.is_empty() { "" } else { "," };
            self.send(&format!("42{id}[\"{event}\"{sep}{args}]")).await;
            let prefix = format!("43{id}[");
            let p = self.expect(|p| p.starts_with(&prefix)).await;
            serde_json::from_str(&p[prefix.len() - 1..]).unwrap()
        }

        /// Waits for event `event`; returns its arguments.
        async fn event(&mut self, event: &str) -> serde_json::Value {
            let prefix = format!("42[\"{event}\"");
            let p = self.expect(|p| p.starts_with(&prefix)).await;
            let mut v: serde_json::Value = serde_json::from_str(&p[2..]).unwrap();
            v.as_array_mut().unwrap().remove(0);
            v
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_surface_and_drain() {
        let node = start(local("n-http")).await.unwrap();
        let addr = node.addr();
        assert_ne!(addr.port(), 0);
        let r = http(addr, Method::GET, "/health", "").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
        assert_eq!(r.headers[NODE_ID_HEADER], "n-http");
        let r = http(addr, Method::GET, "/", "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let r = http(addr, Method::GET, "/tether-client.js", "").await;
        assert!(r.headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        assert_eq!(r.body, super::super::assets::CLIENT_JS);
        let r = http(addr, Method::GET, "/nope", "").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.headers[NODE_ID_HEADER], "n-http");
        // Engine.IO answers carry the header too, errors included.
        let r = http(addr, Method::GET, "/socket.io/?EIO=4&transport=polling", "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers[NODE_ID_HEADER], "n-http");
        let r = http(
            addr,
            Method::GET,
            "/socket.io/?EIO=4&transport=polling&sid=nope",
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.headers[NODE_ID_HEADER], "n-http");

        let _c = Client::connect(addr).await;
        let r = http(addr, Method::GET, "/metrics", "").await;
        assert!(
            r.body.contains("tether_node_sockets{node=\"n-http\"} 1"),
            "{}",
            r.body
        );
        assert!(
            !r.body.contains("tether_node_redis_up{node=\"n-http\"}"),
            "no redis, no redis gauge"
        );

        node.drain();
        let r = http(addr, Method::GET, "/health", "").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!node.healthy());
        node.stop().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn application_contract() {
        let node = start(local("n-app")).await.unwrap();
        let mut c = Client::connect(node.addr()).await;
        let welcome = c.event("welcome").await;
        assert_eq!(welcome[0]["node"], "n-app");
        assert_eq!(welcome[0]["sid"], c.sid.as_str());

        let who = c.call(1, "whoami", "").await;
        assert_eq!(
            who[0],
            serde_json::json!({ "node": "n-app", "transport": "polling", "sid": c.sid })
        );
        let payload = r#"{"i":1,"text":"héllo ☃","list":[1,2.5,null,true],"nested":{"a":[{}]}}"#;
        let echo = c.call(2, "echo", payload).await;
        assert_eq!(
            echo[0],
            serde_json::from_str::<serde_json::Value>(payload).unwrap()
        );

        assert_eq!(c.call(3, "join", r#""lobby""#).await[0], true);
        assert_eq!(c.call(4, "join", "{}").await[0], false);
        assert_eq!(
            c.call(5, "hello", r#"{"name":"  Ann "}"#).await[0]["node"],
            "n-app"
        );
        let presence = c.call(6, "presence", "").await;
        assert_eq!(
            presence[0],
            serde_json::json!([
                { "sid": c.sid, "name": "Ann", "node": "n-app", "rooms": ["lobby"] }
            ])
        );

        c.send(r#"42["to-room",{"room":"lobby","payload":{"x":1}}]"#)
            .await;
        assert_eq!(c.event("room").await[0]["x"], 1);
        c.send(r#"42["broadcast",{"token":"t"}]"#).await;
        assert_eq!(c.event("bcast").await[0]["token"], "t");

        assert_eq!(
            c.call(7, "chat", r#"{"text":"hi","room":"lobby"}"#).await[0],
            true
        );
        let chat = c.event("chat").await;
        assert_eq!(chat[0]["text"], "hi");
        assert_eq!(chat[0]["name"], "Ann");
        assert_eq!(chat[0]["room"], "lobby");
        assert_eq!(chat[0]["node"], "n-app");
        assert_eq!(chat[0]["sid"], c.sid.as_str());
        assert!(chat[0]["at"].as_u64().unwrap() > 1_600_000_000_000);

        assert_eq!(c.call(8, "leave", r#""lobby""#).await[0], true);
        let presence = c.call(9, "presence", "").await;
        assert_eq!(presence[0][0]["rooms"], serde_json::json!([]));

        // Malformed input: ignored, the socket stays usable.
        for bad in [
            r#"42["chat",5]"#,
            r#"42["chat",{"text":7}]"#,
            r#"42["hello",[]]"#,
            r#"42["to-room","x"]"#,
            r#"42["join"]"#,
            r#"42["nope",1]"#,
            r#"42["echo"]"#,
        ] {
            c.send(bad).await;
        }
        assert_eq!(
            c.call(10, "echo", "[1,[2]]").await[0],
            serde_json::json!([1, [2]])
        );
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_bus_cluster_shares_broadcasts_rooms_and_presence() {
        let bus = MemoryBus::new();
        let mut opts = local("m-1");
        opts.adapter = AdapterChoice::Memory(Arc::clone(&bus));
        let n1 = start(opts.clone()).await.unwrap();
        opts.id = "m-2".into();
        let n2 = start(opts).await.unwrap();
        let mut a = Client::connect(n1.addr()).await;
        let mut b = Client::connect(n2.addr()).await;
        assert_eq!(
            a.call(1, "hello", r#"{"name":"A"}"#).await[0]["node"],
            "m-1"
        );
        assert_eq!(
            b.call(1, "hello", r#"{"name":"B"}"#).await[0]["node"],
            "m-2"
        );
        assert_eq!(b.call(2, "join", r#""r""#).await[0], true);

        a.send(r#"42["broadcast",{"token":"x"}]"#).await;
        assert_eq!(a.event("bcast").await[0]["token"], "x");
        assert_eq!(b.event("bcast").await[0]["token"], "x");
        a.send(r#"42["to-room",{"room":"r","payload":2}]"#).await;
        assert_eq!(b.event("room").await[0], 2);
        assert_eq!(a.call(2, "chat", r#"{"text":"everyone"}"#).await[0], true);
        let chat = b.event("chat").await;
        assert_eq!(
            (chat[0]["name"].as_str(), chat[0]["node"].as_str()),
            (Some("A"), Some("m-1"))
        );

        let presence = a.call(3, "presence", "").await;
        assert_eq!(
            presence[0],
            serde_json::json!([
                { "sid": a.sid, "name": "A", "node": "m-1", "rooms": [] },
                { "sid": b.sid, "name": "B", "node": "m-2", "rooms": ["r"] },
            ])
        );
        n2.stop().await;
        let presence = a.call(4, "presence", "").await;
        assert_eq!(presence[0].as_array().unwrap().len(), 1);
        n1.stop().await;
    }

    #[tokio::test]
    async fn bad_ids_and_busy_ports_are_errors() {
        assert!(matches!(
            start(local("two words")).await,
            Err(NodeError::InvalidId(_))
        ));
        let node = start(local("")).await.unwrap();
        assert_eq!(node.id(), format!("node-{}", node.addr().port()));
        let taken = NodeOptions::new(node.addr(), "x");
        assert!(matches!(start(taken).await, Err(NodeError::Bind { .. })));
        node.stop().await;
    }

    async fn wait_health(node: &RunningNode, want: StatusCode) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = http(node.addr(), Method::GET, "/health", "").await;
            if r.status == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/health stayed {}",
                r.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Two nodes on one Redis: broadcasts, rooms and presence cross; losing Redis turns
    /// `/health` to 503, its return back to 200 and broadcasts cross again.
    async fn redis_cluster(streams: bool) {
        let mut redis = TestRedis::start().await;
        let url = redis.unix_url();
        let adapter = if streams {
            AdapterChoice::RedisStreams { url }
        } else {
            AdapterChoice::RedisPubSub { url }
        };
        // Ids of their own: the metrics recorder is process-wide and tests run at once.
        let (id1, id2) = if streams {
            ("rs-1", "rs-2")
        } else {
            ("rp-1", "rp-2")
        };
        let mut opts = local(id1);
        opts.adapter = adapter;
        let n1 = start(opts.clone()).await.unwrap();
        opts.id = id2.into();
        let n2 = start(opts).await.unwrap();
        assert_eq!(n1.redis_up(), Some(true));
        wait_health(&n1, StatusCode::OK).await;

        let mut a = Client::connect(n1.addr()).await;
        let mut b = Client::connect(n2.addr()).await;
        a.call(1, "hello", r#"{"name":"A"}"#).await;
        b.call(1, "hello", r#"{"name":"B"}"#).await;
        assert_eq!(b.call(2, "join", r#""r""#).await[0], true);
        a.send(r#"42["broadcast",{"token":"x"}]"#).await;
        assert_eq!(b.event("bcast").await[0]["token"], "x");
        a.send(r#"42["to-room",{"room":"r","payload":[1]}]"#).await;
        assert_eq!(b.event("room").await[0], serde_json::json!([1]));
        let presence = a.call(3, "presence", "").await;
        assert_eq!(
            presence[0],
            serde_json::json!([
                { "sid": a.sid, "name": "A", "node": id1, "rooms": [] },
                { "sid": b.sid, "name": "B", "node": id2, "rooms": ["r"] },
            ])
        );
        let metrics = http(n1.addr(), Method::GET, "/metrics", "").await.body;
        let want = format!("tether_node_redis_up{{node=\"{id1}\"}} 1");
        assert!(metrics.contains(&want), "{metrics}");

        redis.kill().await;
        wait_health(&n1, StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(n1.redis_up(), Some(false));
        let metrics = http(n1.addr(), Method::GET, "/metrics", "").await.body;
        let want = format!("tether_node_redis_up{{node=\"{id1}\"}} 0");
        assert!(metrics.contains(&want), "{metrics}");
        // Both drivers reconnect by themselves, and the cluster works again.
        redis.restart().await;
        wait_health(&n1, StatusCode::OK).await;
        wait_health(&n2, StatusCode::OK).await;
        // A broadcast sent while a subscriber is still re-subscribing may be lost (pub/sub
        // keeps nothing): `a` keeps sending until `b` gets one.
        let (addr, sid) = (a.addr, a.sid.clone());
        let sender = tokio::spawn(async move {
            for i in 0.. {
                let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
                let packet = format!(r#"42["broadcast",{{"token":"after-{i}"}}]"#);
                http(addr, Method::POST, &path, &packet).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        b.expect(|p| p.starts_with(r#"42["bcast",{"token":"after-"#))
            .await;
        sender.abort();
        tokio::time::timeout(Duration::from_secs(10), async {
            n1.stop().await;
            n2.stop().await;
        })
        .await
        .expect("stop hangs without redis");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_pubsub_cluster() {
        redis_cluster(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_streams_cluster() {
        redis_cluster(true).await;
    }
}
