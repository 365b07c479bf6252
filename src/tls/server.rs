//! The listener side of TLS: one acceptor per TLS listener, its certificates chosen per
//! handshake by SNI.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::pem::{load_certs, load_key};
use super::{TlsError, SERVER_ALPN};
use crate::config::{CertPair, TlsConfig};
use crate::telemetry;

/// Builds the acceptor of a TLS listener: all its certificates, chosen by SNI.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    server_config(cfg).map(TlsAcceptor::from)
}

/// The rustls server config behind [`acceptor`]: TLS 1.2 and 1.3 with the provider's
/// safe suites, no client certificates, ALPN [`SERVER_ALPN`].
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = SniResolver::load(cfg, &provider)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}

/// Picks a listener certificate by SNI. Exact names beat wildcards; a wildcard covers
/// exactly one label, as browsers check it, so tether never serves a certificate the
/// client would reject for the name anyway.
#[derive(Debug)]
pub struct SniResolver {
    /// In config order.
    keys: Vec<Arc<CertifiedKey>>,
    /// Lower-case name → index of the first certificate carrying it.
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
    /// The pair marked `default`: answers unknown names as well as clients without SNI.
    default: Option<usize>,
}

impl SniResolver {
    /// Loads and checks every pair of `cfg`. A name carried by several certificates
    /// goes to the first, so config order settles overlaps predictably.
    pub fn load(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<SniResolver, TlsError> {
        if cfg.certificates.is_empty() {
            return Err(TlsError::Empty);
        }
        let mut resolver = SniResolver {
            keys: Vec::with_capacity(cfg.certificates.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: cfg.certificates.iter().position(|p| p.default),
        };
        // Without SNI a client gets this one, so it alone can do without a name.
        let no_sni = resolver.default.unwrap_or(0);
        for (index, pair) in cfg.certificates.iter().enumerate() {
            let (key, names) = load_pair(pair, provider)?;
            if let Some(not_after) = key.cert.first().and_then(|c| not_after(c)) {
                let name = names.first().cloned().unwrap_or_else(|| "-".to_owned());
                let path = pair.cert.display().to_string();
                metrics::gauge!(telemetry::TLS_NOT_AFTER,
                    "certificate" => path.clone(), "name" => name.clone())
                .set(not_after as f64);
                tether_kit::lock(&EXPIRIES).insert(path, (name, not_after));
            }
            if names.is_empty() && index != no_sni {
                tracing::warn!(
                    cert = %pair.cert.display(),
                    "certificate has no DNS names and is not the default: it is never served"
                );
            }
            for name in names {
                let (table, name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut resolver.wildcard, parent.to_owned()),
                    None => (&mut resolver.exact, name),
                };
                table.entry(name).or_insert(index);
            }
            resolver.keys.push(Arc::new(key));
        }
        Ok(resolver)
    }

    /// Index (in config order) of the certificate for a client that sent `server_name`
    /// as SNI, or `None` to refuse the handshake.
    pub fn choose(&self, server_name: Option<&str>) -> Option<usize> {
        let Some(name) = server_name else {
            return Some(self.default.unwrap_or(0));
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return Some(i);
        }
        let wildcard = name
            .split_once('.')
            .filter(|(label, parent)| !label.is_empty() && !parent.is_empty())
            .and_then(|(_, parent)| self.wildcard.get(parent));
        wildcard.copied().or(self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        let chosen = self.choose(sni);
        if chosen.is_none() {
            tracing::debug!(sni = sni.unwrap_or(""), "no certificate for SNI name");
        }
        chosen.and_then(|i| self.keys.get(i)).cloned()
    }
}

/// The DNS names of `chain`'s leaf (lower-case, wildcards as `*.example.com`), which
/// must parse as an X.509 end-entity certificate.
pub(super) fn leaf_names(
    path: &Path,
    chain: &[CertificateDer<'_>],
) -> Result<Vec<String>, TlsError> {
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate(path.to_owned()));
    };
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|cause| TlsError::BadCertificate {
        path: path.to_owned(),
        cause,
    })?;
    Ok(leaf
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect())
}

/// Every listener certificate loaded so far: file → (first DNS name, expiry in Unix
/// seconds), for `/status`. Kept by file, so a renewed certificate replaces its entry.
static EXPIRIES: Mutex<BTreeMap<String, (String, i64)>> = Mutex::new(BTreeMap::new());

/// The listener certificates loaded so far, by file: (file, first DNS name, expiry in
/// Unix seconds).
pub fn expiries() -> Vec<(String, String, i64)> {
    tether_kit::lock(&EXPIRIES)
        .iter()
        .map(|(path, (name, at))| (path.clone(), name.clone(), *at))
        .collect()
}

/// When a certificate expires (Unix seconds), for the expiry gauge.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// A pair's signing key and chain, and the leaf's DNS names (lower-case, wildcards as
/// `*.example.com`).
pub(super) fn load_pair(
    pair: &CertPair,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), TlsError> {
    let chain = load_certs(&pair.cert)?;
    let names = leaf_names(&pair.cert, &chain)?;
    let key = load_key(&pair.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|cause| TlsError::Rejected {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
            cause,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key that cannot tell its public half is taken on trust, as rustls does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
            })
        }
        Err(cause) => {
            return Err(TlsError::Rejected {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
                cause,
            })
        }
    }
    Ok((certified, names))
}
