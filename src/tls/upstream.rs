//! The client side of TLS, towards a backend's servers: the rustls client config and the
//! connector that pooled connections, upgrades and health probes share.

use std::path::Path;
use std::sync::Arc;

use http::uri::Authority;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::pem::load_certs;
use super::{TlsError, UPSTREAM_ALPN};
use crate::config::UpstreamTls;

/// The client config for TLS to a backend's servers: trusts the CA bundle `cfg.ca`, or
/// the Mozilla roots when none is given. Which name the server's certificate must
/// carry (`cfg.server_name`) is the connector's business, not the config's.
pub fn client_config(cfg: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = match &cfg.ca {
        Some(path) => load_roots(path)?,
        None => rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = UPSTREAM_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(client))
}

/// The trust anchors of a PEM CA bundle: at least one usable.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, skipped) = roots.add_parsable_certificates(load_certs(path)?);
    if added == 0 {
        return Err(TlsError::NoRoots(path.to_owned()));
    }
    // System bundles carry a few certificates webpki cannot parse; they are unusable as
    // anchors either way, and refusing the whole file would be worse.
    if skipped > 0 {
        tracing::warn!(file = %path.display(), skipped, "CA certificates skipped as unparsable");
    }
    Ok(roots)
}

/// TLS to a backend's servers: the connector for pooled connections, upgrades and
/// health probes.
pub struct TlsUpstream {
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
        let client_config = client_config(cfg)?;
        // Validated with the config; an unusable name falls back to each address's host.
        let server_name = cfg
            .server_name
            .as_ref()
            .and_then(|n| ServerName::try_from(n.clone()).ok());
        Ok(TlsUpstream {
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
