//! Talking to servers: a pooled keep-alive client for ordinary requests, and a fresh
//! connection per WebSocket upgrade (an upgraded connection never returns to a pool).

use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;

use super::body::ProxyBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::respond::ProxyError;
use crate::snapshot::Server;

#[derive(Clone, Debug)]
pub struct Upstream {
    pool: Client<HttpConnector, ProxyBody>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.enforce_http(true);
        let pool = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Upstream { pool }
    }

    /// Sends `req` (whose URI is origin-form) to `server` over a pooled connection.
    pub async fn send(
        &self,
        server: &Server,
        mut req: Request<ProxyBody>,
        response_timeout: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        *req.uri_mut() = absolute_uri(server, req.uri())?;
        match tokio::time::timeout(response_timeout, self.pool.request(req)).await {
            Err(_) => Err(ProxyError::ResponseTimeout {
                server: server.id.to_string(),
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(ProxyError::Connect {
                server: server.id.to_string(),
                source: std::io::Error::other(e),
            }),
            Ok(Err(e)) => Err(ProxyError::Upstream {
                server: server.id.to_string(),
                source: Box::new(e),
            }),
        }
    }

    /// Opens a dedicated connection to `server` and sends the upgrade request on it.
    /// The response's upgrade (on 101) yields the server side of the tunnel.
    pub async fn send_upgrade(
        &self,
        server: &Server,
        req: Request<ProxyBody>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let id = || server.id.to_string();
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(server.addr.as_str()))
                .await
            {
                Err(_) => return Err(ProxyError::ConnectTimeout { server: id() }),
                Ok(Err(source)) => {
                    return Err(ProxyError::Connect {
                        server: id(),
                        source,
                    })
                }
                Ok(Ok(s)) => s,
            };
        let _ = stream.set_nodelay(true);
        let upstream_err = |e: hyper::Error| ProxyError::Upstream {
            server: id(),
            source: Box::new(e),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(upstream_err)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        match tokio::time::timeout(response_timeout, sender.send_request(req)).await {
            Err(_) => Err(ProxyError::ResponseTimeout { server: id() }),
            Ok(r) => r.map_err(upstream_err),
        }
    }
}

fn absolute_uri(server: &Server, uri: &Uri) -> Result<Uri, ProxyError> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(server.addr.clone())
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::BadRequest("unusable request target"))
}
