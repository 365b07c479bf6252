//! Talking to servers: each server's keep-alive pool ([`super::pool`]) for ordinary
//! requests, and a fresh connection per WebSocket upgrade (an upgraded connection never
//! returns to a pool).

use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::body::ProxyBody;
use super::respond::ProxyError;
use super::UpstreamRequest;
use crate::snapshot::Server;
use crate::tls::TlsUpstream;

/// Sends `req` to `server` over one of its pooled connections, in origin form and with
/// a `Host`.
pub async fn send(
    server: &Server,
    mut req: UpstreamRequest,
    response_timeout: Duration,
    tls: Option<&TlsUpstream>,
) -> Result<Response<Incoming>, ProxyError> {
    origin_form(&mut req, &server.addr)?;
    match tokio::time::timeout(response_timeout, server.pool.send(server, req, tls)).await {
        Err(_) => Err(ProxyError::ResponseTimeout {
            server: server.id.to_string(),
        }),
        Ok(r) => r,
    }
}

/// Opens a dedicated connection to `server` and sends the upgrade request on it. The
/// response's upgrade (on 101) yields the server side of the tunnel.
pub async fn send_upgrade(
    server: &Server,
    req: UpstreamRequest,
    connect_timeout: Duration,
    response_timeout: Duration,
    tls: Option<&TlsUpstream>,
) -> Result<Response<Incoming>, ProxyError> {
    // Each side keeps its own type: a plain one is relayed without buffers.
    match dial(server, tls, connect_timeout).await? {
        Dialed::Plain(s) => upgrade_over(s, req, response_timeout, server).await,
        Dialed::Tls(s) => upgrade_over(s, req, response_timeout, server).await,
    }
}

/// A new connection to a server (a TLS session is a kilobyte: boxed).
pub(super) enum Dialed {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connects to `server`, then TLS when the backend speaks it, each step within `limit`.
pub(super) async fn dial(
    server: &Server,
    tls: Option<&TlsUpstream>,
    limit: Duration,
) -> Result<Dialed, ProxyError> {
    let timed_out = || ProxyError::ConnectTimeout {
        server: server.id.to_string(),
    };
    let failed = |source| ProxyError::Connect {
        server: server.id.to_string(),
        source,
    };
    let stream = tokio::time::timeout(limit, TcpStream::connect(server.addr.as_str()))
        .await
        .map_err(|_| timed_out())?
        .map_err(failed)?;
    let _ = stream.set_nodelay(true);
    let Some(t) = tls else {
        return Ok(Dialed::Plain(stream));
    };
    let stream = tokio::time::timeout(limit, t.connect(&server.addr, stream))
        .await
        .map_err(|_| timed_out())?
        .map_err(failed)?;
    Ok(Dialed::Tls(Box::new(stream)))
}

/// What a failed exchange with `server` is.
pub(super) fn upstream_error(server: &Server, e: hyper::Error) -> ProxyError {
    ProxyError::Upstream {
        server: server.id.to_string(),
        source: Box::new(e),
    }
}

/// Sends an upgrade request on a dedicated connection `io`.
async fn upgrade_over<IO>(
    io: IO,
    req: UpstreamRequest,
    response_timeout: Duration,
    server: &Server,
) -> Result<Response<Incoming>, ProxyError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut sender = handshake(server, io).await?;
    match tokio::time::timeout(response_timeout, sender.send_request(*req)).await {
        Err(_) => Err(ProxyError::ResponseTimeout {
            server: server.id.to_string(),
        }),
        Ok(r) => r.map_err(|e| upstream_error(server, e)),
    }
}

/// HTTP/1.1 over a new connection `io`, its connection task spawned. The task allows
/// upgrades: an upgrade request's connection becomes the tunnel's server side, and a
/// pooled one behaves as any (it never sees a `101`).
pub(super) async fn handshake<IO>(
    server: &Server,
    io: IO,
) -> Result<SendRequest<ProxyBody>, ProxyError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| upstream_error(server, e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}

/// Makes an absolute-form URI (HTTP/2 requests carry one) origin-form, and gives a
/// request without `Host` (HTTP/2, or an HTTP/1.0 client) the URI's authority, else the
/// server's address: it goes upstream as HTTP/1.1, where `Host` is required.
fn origin_form(req: &mut Request<ProxyBody>, server: &Authority) -> Result<(), ProxyError> {
    let authority = req.uri().authority().cloned();
    if authority.is_some() {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = path
            .parse()
            .map_err(|_| ProxyError::BadRequest("unusable request target"))?;
        *req.uri_mut() = uri;
    }
    if !req.headers().contains_key(http::header::HOST) {
        let host = authority.as_ref().unwrap_or(server).as_str();
        let host = http::HeaderValue::from_str(host)
            .map_err(|_| ProxyError::BadRequest("unusable request authority"))?;
        req.headers_mut().insert(http::header::HOST, host);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<ProxyBody> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(ProxyBody::empty()).unwrap()
    }

    #[test]
    fn requests_go_upstream_in_origin_form_with_a_host() {
        let server: Authority = "127.0.0.1:3001".parse().unwrap();
        // HTTP/2: the authority becomes Host.
        let mut r = request("https://chat.example:8443/socket.io/?EIO=4", None);
        origin_form(&mut r, &server).unwrap();
        assert_eq!(r.uri(), "/socket.io/?EIO=4");
        assert_eq!(r.headers()["host"], "chat.example:8443");
        // HTTP/1.1 as it came.
        let mut r = request("/socket.io/?EIO=4", Some("chat.example"));
        origin_form(&mut r, &server).unwrap();
        assert_eq!(r.uri(), "/socket.io/?EIO=4");
        assert_eq!(r.headers()["host"], "chat.example");
        // HTTP/1.0 without Host: the server's address, as HTTP/1.1 requires one.
        let mut r = request("/x", None);
        origin_form(&mut r, &server).unwrap();
        assert_eq!(r.headers()["host"], "127.0.0.1:3001");
    }
}
