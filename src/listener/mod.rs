//! Accepting client connections and serving HTTP/1.1 on them.
//!
//! `serve` takes an already-bound listener so tests bind port 0 and read the address
//! back. Each connection is one hyper HTTP/1.1 connection with upgrades enabled; the
//! proxy routes each request on it independently.

pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::proxy::{ConnInfo, Proxy};

/// hyper refuses a read buffer below this; smaller configured limits are raised to it.
const MIN_HEADER_BUF: usize = 8192;

/// How long open connections get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts until `shutdown` fires, then lets open connections finish (bounded).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
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
        let conn = ConnInfo {
            peer,
            tls: tls.is_some(),
        };
        let proxy = Arc::clone(&proxy);
        let limits = limits.clone();
        let stop = shutdown.clone();
        match &tls {
            None => {
                tracker.spawn(serve_conn(stream, conn, proxy, limits, stop));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tracker.spawn(async move {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls_stream)) => {
                            serve_conn(tls_stream, conn, proxy, limits, stop).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::info!("connections still open after the shutdown grace; closing them");
    }
}

async fn serve_conn<IO>(
    io: IO,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    limits: Limits,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
        _ = shutdown.cancelled() => {
            // Finish the request in flight, then close; idle keep-alives close now.
            http.as_mut().graceful_shutdown();
            http.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}
