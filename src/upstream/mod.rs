//! Talking to servers: each server's keep-alive pool ([`pool`]) for ordinary requests,
//! and a fresh connection per WebSocket upgrade (an upgraded connection never returns to
//! a pool).
//!
//! This layer knows a server only as a [`Peer`] (its id for messages, its address, its
//! TLS), not as a member of a backend: what a failure means for the server's health is
//! the business of `backends`, and what it means for the client that of `proxy`.

pub mod pool;
pub mod proxy_header;

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::body::ProxyBody;
use crate::tls::TlsUpstream;

pub use pool::ConnPool;
pub use proxy_header::ProxyLine;

/// A request on its way to a server (origin-form URI, `Host` set). Boxed: each async fn
/// on the way keeps its arguments twice, and a request by value is hundreds of bytes.
pub type UpstreamRequest = Box<Request<ProxyBody>>;

/// The server a connection goes to.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// For messages and logs.
    pub id: &'a str,
    pub addr: &'a Authority,
    /// The backend's TLS, when its servers speak only TLS.
    pub tls: Option<&'a TlsUpstream>,
    /// The PROXY header each connection opens with, when the backend sends one.
    pub proxy: Option<ProxyLine>,
    pub meters: &'a Meters,
}

/// What talking to one server is measured by (handles registered by the server's owner;
/// the default records nowhere).
#[derive(Debug)]
pub struct Meters {
    /// Time to open a connection (TCP, then TLS).
    pub connect_duration: metrics::Histogram,
    /// Requests sent on a kept-alive connection, and on a new one.
    pub reused: metrics::Counter,
    pub new: metrics::Counter,
}

impl Meters {
    /// Records nowhere (health probes, tests).
    pub const NONE: Meters = Meters {
        connect_duration: metrics::Histogram::noop(),
        reused: metrics::Counter::noop(),
        new: metrics::Counter::noop(),
    };
}

impl Default for Meters {
    fn default() -> Meters {
        Meters::NONE
    }
}

impl Peer<'_> {
    /// The same server, reached on behalf of a client: a PROXY header (when the backend
    /// sends one) names `client`, who connected to `local`.
    pub fn for_client(mut self, client: SocketAddr, local: SocketAddr) -> Self {
        if let Some(p) = &mut self.proxy {
            p.endpoints = Some((client, local));
        }
        self
    }
}

/// What went wrong on the way to a server. Each knows whether anything reached the
/// server ([`UpstreamError::is_connect`]: only a request that never left may be sent
/// elsewhere) and whose doing it was ([`UpstreamError::blame`]).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `addr` is said with the id: the log of a failed connect is read to find which
    /// address is wrong or has nothing listening.
    #[error("connecting to {server} at {addr}: {cause}")]
    Connect {
        server: String,
        addr: String,
        cause: std::io::Error,
    },
    #[error("connecting to {server} at {addr}: timed out")]
    ConnectTimeout { server: String, addr: String },
    #[error("{server} did not answer in time")]
    ResponseTimeout { server: String },
    #[error("talking to {server}: {}", with_causes(cause))]
    Exchange { server: String, cause: hyper::Error },
    /// A `101 Switching Protocols` that does not complete a WebSocket handshake: no
    /// tunnel is opened to whatever answered it.
    #[error("{server} switched protocols without completing the WebSocket handshake")]
    NotWebSocket { server: String },
    /// The client's request body failed while it was being sent on (malformed chunks,
    /// the client went away): nothing is wrong with the server.
    #[error("the client's request body: {}", with_causes(cause))]
    RequestBody { cause: hyper::Error },
}

/// Whose doing a failure on the way to a server was, which decides what it may say
/// about the server's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Nothing listens at the server's address: its process is gone.
    Gone,
    /// The server is slow to take connections or to answer, or broke an exchange.
    Unwell,
    /// The client's doing (a bad or aborted request body).
    Client,
    /// A shortage in this process (descriptors, memory, local ports): overload here,
    /// nothing to do with the server.
    Local,
}

/// hyper's error and what caused it, in one line: hyper's own text is only the kind of
/// failure ("connection error"), the part worth reading (`Connection reset by peer`) is
/// its source, and these errors are read through their `Display` (logs), never walked.
fn with_causes(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

impl UpstreamError {
    /// Whether the server could not be reached at all (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
        )
    }

    /// A failed exchange with `peer`: the server's side, unless it was the client's body
    /// that failed while being sent.
    pub fn exchange(peer: &str, e: hyper::Error) -> UpstreamError {
        if e.is_user() {
            UpstreamError::RequestBody { cause: e }
        } else {
            UpstreamError::Exchange {
                server: peer.to_owned(),
                cause: e,
            }
        }
    }

    /// For a connection that could not be opened: refused, timeout, tls, local or other.
    pub fn connect_kind(&self) -> Option<&'static str> {
        match self {
            UpstreamError::ConnectTimeout { .. } => Some("timeout"),
            UpstreamError::Connect { cause, .. } => Some(if is_local_shortage(cause) {
                "local"
            } else if cause.kind() == std::io::ErrorKind::ConnectionRefused {
                "refused"
            } else if cause.kind() == std::io::ErrorKind::InvalidData {
                "tls"
            } else {
                "other"
            }),
            _ => None,
        }
    }

    /// What the client is told: the kind of failure without the server's name or
    /// address, which are for tether's log.
    pub fn client_text(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. } => {
                "the server could not be reached"
            }
            UpstreamError::ResponseTimeout { .. } => "the server did not answer in time",
            UpstreamError::Exchange { .. } => "the exchange with the server failed",
            UpstreamError::NotWebSocket { .. } => {
                "the server did not complete the WebSocket handshake"
            }
            UpstreamError::RequestBody { .. } => "the request body failed",
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            UpstreamError::Connect { cause, .. } if is_local_shortage(cause) => Blame::Local,
            UpstreamError::Connect { cause, .. }
                if cause.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                Blame::Gone
            }
            UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::ResponseTimeout { .. }
            | UpstreamError::Exchange { .. }
            | UpstreamError::NotWebSocket { .. } => Blame::Unwell,
            UpstreamError::RequestBody { .. } => Blame::Client,
        }
    }
}

/// Whether a failed connect ran out of something of this process or host rather than
/// reaching the server: descriptors (EMFILE, ENFILE), memory (ENOMEM, ENOBUFS), local
/// ports (EADDRNOTAVAIL, and EAGAIN, which `connect` returns when they are exhausted).
pub fn is_local_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
            | Some(libc::EADDRNOTAVAIL | libc::EAGAIN)
    ) || e.kind() == std::io::ErrorKind::OutOfMemory
}

/// Sends `req` to `peer` over one of its pooled connections, within `response_timeout`.
pub async fn send(
    pool: &ConnPool,
    peer: Peer<'_>,
    req: UpstreamRequest,
    response_timeout: Duration,
) -> Result<Response<Incoming>, UpstreamError> {
    match tokio::time::timeout(response_timeout, pool.send(peer, req)).await {
        Err(_) => Err(UpstreamError::ResponseTimeout {
            server: peer.id.to_owned(),
        }),
        Ok(r) => r,
    }
}

/// Opens a dedicated connection to `peer` and sends the upgrade request on it. The
/// response's upgrade (on 101) yields the server side of the tunnel.
pub async fn send_upgrade(
    peer: Peer<'_>,
    req: UpstreamRequest,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<Response<Incoming>, UpstreamError> {
    peer.meters.new.increment(1);
    // Each side keeps its own type: a plain one is relayed without buffers.
    match dial(peer, connect_timeout).await? {
        Dialed::Plain(s) => upgrade_over(s, req, response_timeout, peer).await,
        Dialed::Tls(s) => upgrade_over(s, req, response_timeout, peer).await,
    }
}

/// A new connection to a server (a TLS session is a kilobyte: boxed).
pub enum Dialed {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connects to `peer`, then TLS when it speaks it, each step within `limit`.
pub async fn dial(peer: Peer<'_>, limit: Duration) -> Result<Dialed, UpstreamError> {
    let timed_out = || UpstreamError::ConnectTimeout {
        server: peer.id.to_owned(),
        addr: peer.addr.to_string(),
    };
    let failed = |cause| UpstreamError::Connect {
        server: peer.id.to_owned(),
        addr: peer.addr.to_string(),
        cause,
    };
    let started = std::time::Instant::now();
    let stream = tokio::time::timeout(limit, TcpStream::connect(peer.addr.as_str()))
        .await
        .map_err(|_| timed_out())?
        .map_err(failed)?;
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    if let Some(line) = peer.proxy {
        // Before TLS: the header is for the server's TCP layer. Sent whole in one write
        // (a fresh connection's send buffer takes it).
        tokio::time::timeout(limit, stream.write_all(&line.encode()))
            .await
            .map_err(|_| timed_out())?
            .map_err(failed)?;
    }
    let Some(t) = peer.tls else {
        peer.meters
            .connect_duration
            .record(started.elapsed().as_secs_f64());
        return Ok(Dialed::Plain(stream));
    };
    let stream = tokio::time::timeout(limit, t.connect(peer.addr, stream))
        .await
        .map_err(|_| timed_out())?
        .map_err(failed)?;
    peer.meters
        .connect_duration
        .record(started.elapsed().as_secs_f64());
    Ok(Dialed::Tls(Box::new(stream)))
}

/// Sends an upgrade request on a dedicated connection `io`.
async fn upgrade_over<IO>(
    io: IO,
    req: UpstreamRequest,
    response_timeout: Duration,
    peer: Peer<'_>,
) -> Result<Response<Incoming>, UpstreamError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut sender = handshake(peer, io).await?;
    match tokio::time::timeout(response_timeout, sender.send_request(*req)).await {
        Err(_) => Err(UpstreamError::ResponseTimeout {
            server: peer.id.to_owned(),
        }),
        Ok(r) => r.map_err(|e| UpstreamError::exchange(peer.id, e)),
    }
}

/// HTTP/1.1 over a new connection `io`, its connection task spawned. The task allows
/// upgrades: an upgrade request's connection becomes the tunnel's server side, and a
/// pooled one behaves as any (it never sees a `101`).
async fn handshake<IO>(peer: Peer<'_>, io: IO) -> Result<SendRequest<ProxyBody>, UpstreamError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::exchange(peer.id, e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}
