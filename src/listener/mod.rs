//! Accepting client connections and serving HTTP/1.1 on them.
//!
//! `serve` takes an already-bound listener so tests bind port 0 and read the address
//! back. Each connection is one hyper HTTP/1.1 connection with upgrades enabled; the
//! proxy routes each request on it independently.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::ProxyBody;
use crate::config::{ListenerConfig, TlsConfig};
use crate::proxy::{ClientRequest, ConnInfo, Proxy};
use crate::tls;

/// What a listener does with a connection. Swapped whole by a reload, read once per
/// connection, so a new certificate or option applies to new connections only.
#[derive(Default)]
pub enum Mode {
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

impl std::fmt::Debug for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Plain => f.write_str("Plain"),
            Mode::Tls { hsts, .. } => f
                .debug_struct("Tls")
                .field("hsts", hsts)
                .finish_non_exhaustive(),
            Mode::RedirectHttps { port } => {
                f.debug_struct("RedirectHttps").field("port", port).finish()
            }
        }
    }
}

impl Mode {
    /// Builds the mode a listener config asks for (reads certificate files).
    pub fn build(l: &ListenerConfig) -> Result<Mode, tls::TlsError> {
        if let Some(port) = l.redirect_https {
            return Ok(Mode::RedirectHttps { port });
        }
        match &l.tls {
            None => Ok(Mode::Plain),
            Some(t) => Mode::tls(t),
        }
    }

    fn tls(t: &TlsConfig) -> Result<Mode, tls::TlsError> {
        Ok(Mode::Tls {
            acceptor: tls::acceptor(t)?,
            hsts: t
                .hsts
                .as_ref()
                .and_then(|h| HeaderValue::from_str(&h.header_value()).ok()),
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
}

/// Accepts until `stop_accepting` fires. The mode is read per connection, so a reload
/// that swaps it (a new certificate) changes new connections only.
pub async fn serve(
    listener: TcpListener,
    mode: Arc<ArcSwap<Mode>>,
    proxy: Arc<Proxy>,
    life: Lifecycle,
) {
    let stop = life.stop_accepting.clone();
    tether_kit::accept::accept_loop(&listener, &stop, "proxy", |stream, peer| {
        let mode = mode.load_full();
        let proxy = Arc::clone(&proxy);
        let l = life.clone();
        let tls = matches!(*mode, Mode::Tls { .. });
        let conn = ConnInfo { peer, tls };
        life.connections.spawn(async move {
            match &*mode {
                Mode::Plain => {
                    serve_conn(stream, conn, proxy, l, Handler::Proxy(None), false).await
                }
                Mode::RedirectHttps { port } => {
                    serve_conn(stream, conn, proxy, l, Handler::Redirect(*port), false).await
                }
                // Boxed: a TLS session and its handshake are kilobytes that plain
                // connections' tasks need not carry.
                Mode::Tls { acceptor, hsts } => {
                    Box::pin(async move {
                        let timeout = proxy.store().load().limits.header_read_timeout;
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => {
                                let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                                let handler = Handler::Proxy(hsts.clone());
                                serve_conn(tls_stream, conn, proxy, l, handler, h2).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                        }
                    })
                    .await
                }
            }
        });
    })
    .await;
}

/// What answers the requests of a connection.
#[derive(Clone)]
enum Handler {
    /// The proxy, adding an HSTS header when given.
    Proxy(Option<HeaderValue>),
    /// A redirect to HTTPS on this port.
    Redirect(u16),
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
        }
    }
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
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        let handler = handler.clone();
        let req = Box::new(req);
        async move { Ok::<_, Infallible>(handler.answer(&proxy, req, conn).await) }
    });
    let io = TokioIo::new(io);
    let result = if h2 {
        // HTTP/2 carries polling requests of many sessions on one connection; each is
        // routed by its own sid, like HTTP/1.1 keep-alive requests.
        // Boxed: only TLS connections that chose h2 need HTTP/2's state.
        let mut http = Box::pin(
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
                .serve_connection(io, service),
        );
        tokio::select! {
            r = http.as_mut() => r,
            _ = life.shutdown.cancelled() => {
                http.as_mut().graceful_shutdown();
                tokio::select! {
                    r = http.as_mut() => r,
                    _ = life.hard_stop.cancelled() => Ok(()),
                }
            }
        }
    } else {
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
                // Finish the request in flight, then close; idle keep-alives close now.
                http.as_mut().graceful_shutdown();
                tokio::select! {
                    r = http.as_mut() => r,
                    _ = life.hard_stop.cancelled() => Ok(()),
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
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
