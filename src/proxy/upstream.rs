//! Talking to servers: a pooled keep-alive client for ordinary requests, and a fresh
//! connection per WebSocket upgrade (an upgraded connection never returns to a pool).

use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::ProxyBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::respond::ProxyError;
use crate::config::UpstreamTls;
use crate::listener::tls::{self, TlsError};
use crate::snapshot::Server;

/// How long an idle pooled connection to a server is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Idle pooled connections kept per server.
const POOL_MAX_IDLE: usize = 256;
/// TCP connect limit of pooled connections (upgrades use the backend's `timeouts.connect`).
const POOL_CONNECT: Duration = Duration::from_secs(2);

fn http_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(POOL_CONNECT));
    connector
}

/// TLS to a backend's servers: a pooled client for ordinary requests and a connector
/// for upgrades and health probes, sharing one rustls config.
pub struct TlsUpstream {
    pool: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsUpstream")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsUpstream {
    /// Reads the CA file now, so a bad one fails the reload instead of a request.
    pub fn new(cfg: &UpstreamTls) -> Result<TlsUpstream, TlsError> {
        let client_config = tls::client_config(cfg)?;
        // Validated with the config; an unusable name falls back to each address's host.
        let server_name = cfg
            .server_name
            .as_ref()
            .and_then(|n| ServerName::try_from(n.clone()).ok());
        // hyper-rustls sets ALPN itself (HTTP/1.1 here) and refuses a config that has it.
        let mut for_pool = (*client_config).clone();
        for_pool.alpn_protocols.clear();
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(for_pool)
            .https_only();
        let builder = match &server_name {
            Some(name) => {
                builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
            }
            None => builder,
        };
        let mut http = http_connector();
        http.enforce_http(false);
        let https = builder.enable_http1().wrap_connector(http);
        Ok(TlsUpstream {
            pool: pool_builder().build(https),
            connector: TlsConnector::from(client_config),
            server_name,
        })
    }

    /// A TLS session over `tcp` to `addr`, verified against the configured name or the
    /// address's host.
    pub async fn connect<IO>(&self, addr: &Authority, tcp: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = addr.host().trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?
            }
        };
        self.connector.connect(name, tcp).await
    }
}

fn pool_builder() -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    b
}

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
        Upstream {
            pool: pool_builder().build(http_connector()),
        }
    }

    /// Sends `req` (whose URI is origin-form) to `server` over a pooled connection.
    pub async fn send(
        &self,
        server: &Server,
        mut req: Request<ProxyBody>,
        response_timeout: Duration,
        tls: Option<&TlsUpstream>,
    ) -> Result<Response<Incoming>, ProxyError> {
        *req.uri_mut() = absolute_uri(server, req.uri(), tls.is_some())?;
        let sent = match tls {
            Some(t) => t.pool.request(req),
            None => self.pool.request(req),
        };
        match tokio::time::timeout(response_timeout, sent).await {
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
        tls: Option<&TlsUpstream>,
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
        match tls {
            None => upgrade_over(stream, req, response_timeout, server).await,
            Some(t) => {
                let handshake = t.connect(&server.addr, stream);
                let stream = match tokio::time::timeout(connect_timeout, handshake).await {
                    Err(_) => return Err(ProxyError::ConnectTimeout { server: id() }),
                    Ok(Err(source)) => {
                        return Err(ProxyError::Connect {
                            server: id(),
                            source,
                        })
                    }
                    Ok(Ok(s)) => s,
                };
                upgrade_over(stream, req, response_timeout, server).await
            }
        }
    }
}

/// Sends an upgrade request on a dedicated connection `io`.
async fn upgrade_over<IO>(
    io: IO,
    req: Request<ProxyBody>,
    response_timeout: Duration,
    server: &Server,
) -> Result<Response<Incoming>, ProxyError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = || server.id.to_string();
    let upstream_err = |e: hyper::Error| ProxyError::Upstream {
        server: id(),
        source: Box::new(e),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
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

fn absolute_uri(server: &Server, uri: &Uri, tls: bool) -> Result<Uri, ProxyError> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(server.addr.clone())
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::BadRequest("unusable request target"))
}
