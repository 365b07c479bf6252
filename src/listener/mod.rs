//! Accepting client connections and serving HTTP/1.1 on them.
//!
//! `serve` takes an already-bound listener so tests bind port 0 and read the address
//! back. Each connection is one hyper HTTP/1.1 connection with upgrades enabled; the
//! proxy routes each request on it independently.

pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{ConnInfo, Proxy};

/// hyper refuses a read buffer below this; smaller configured limits are raised to it.
const MIN_HEADER_BUF: usize = 8192;

/// The tokens and tracker a listener's connections answer to.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// Stops this listener accepting (its removal by a reload, or shutdown). Open
    /// connections are not touched by it.
    pub stop_accepting: CancellationToken,
    /// Process shutdown: finish the request in flight on each connection, then close.
    pub shutdown: CancellationToken,
    /// The grace is over: close whatever is still open.
    pub hard_stop: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
}

/// Accepts until `stop_accepting` fires. The TLS acceptor is read per connection, so a
/// reload that swaps it changes new handshakes only; `None` means plain HTTP.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
    proxy: Arc<Proxy>,
    life: Lifecycle,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = life.stop_accepting.cancelled() => break,
            _ = life.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors or a reset during accept: log, breathe, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = tls.load_full();
        let conn = ConnInfo {
            peer,
            tls: acceptor.is_some(),
        };
        let proxy = Arc::clone(&proxy);
        let l = life.clone();
        match acceptor {
            None => {
                life.connections.spawn(serve_conn(stream, conn, proxy, l));
            }
            Some(acceptor) => {
                life.connections.spawn(async move {
                    let timeout = proxy.store().load().limits.header_read_timeout;
                    let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls_stream)) => serve_conn(tls_stream, conn, proxy, l).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

async fn serve_conn<IO>(io: IO, conn: ConnInfo, proxy: Arc<Proxy>, life: Lifecycle)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Limits in force when the connection opened apply to all of it.
    let limits = proxy.store().load().limits.clone();
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        async move { Ok::<_, Infallible>(proxy.handle(req, conn).await) }
    });
    let mut http = std::pin::pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BUF))
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades());
    let result = tokio::select! {
        r = http.as_mut() => r,
        _ = life.shutdown.cancelled() => {
            // Finish the request in flight, then close; idle keep-alives close now.
            http.as_mut().graceful_shutdown();
            tokio::select! {
                r = http.as_mut() => r,
                _ = life.hard_stop.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}
