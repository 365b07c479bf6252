//! Everything TLS, with rustls (ring provider), in one place:
//!
//! - [`server`] the listener side: certificates chosen per handshake by SNI.
//! - [`upstream`] the client side, towards backend servers ([`TlsUpstream`]).
//! - [`pem`] reading certificates and keys from PEM files.
//! - [`dev_ca`] a throwaway CA and certificates it signs (`tether cert`, tests, the demo).
//!
//! Every file problem is found before a handshake: by [`check_file`] as the config is
//! loaded (`tether check`, start-up, reload), reported at the key naming the file, and
//! again when an acceptor or a client is built, so a bad certificate never fails clients
//! later.

pub mod dev_ca;
pub mod pem;
pub mod server;
pub mod upstream;

pub use server::{acceptor, server_config, SniResolver};
pub use upstream::{client_config, TlsUpstream};

use std::path::PathBuf;

use crate::config::{looked_for, CertPair, NamedFile};

/// What the listener offers in ALPN, preferred first: HTTP/2 where the client can,
/// HTTP/1.1 (and with it WebSocket upgrades) otherwise.
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What tether offers a backend: the proxy speaks HTTP/1.1 upstream, so an h2-only
/// server must fail the handshake rather than be sent HTTP/1.1 it cannot read.
pub const UPSTREAM_ALPN: [&[u8]; 1] = [b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {cause}{}", path.display(), looked_for(.path, .relative_to))]
    Read {
        path: PathBuf,
        cause: std::io::Error,
        /// The working directory, when a relative path could not be opened: the file
        /// may sit beside the config, which is not where relative paths are read from.
        relative_to: Option<PathBuf>,
    },
    #[error("{0}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificate(PathBuf),
    #[error("{0}: no private key found (expected a PEM PKCS#8, RSA or EC key)")]
    NoKey(PathBuf),
    #[error("{path}: not a usable X.509 certificate: {cause}")]
    BadCertificate { path: PathBuf, cause: webpki::Error },
    #[error("{cert} / {key}: {cause}")]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
    #[error(
        "{key}: private key does not match the certificate in {cert} \
         (the first certificate there must be the server's own)"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{0}: no usable CA certificate found")]
    NoRoots(PathBuf),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("no certificates configured")]
    Empty,
}

/// Reads a file the config names and checks it is what its key promises, so that a
/// bad one is refused with the config (at the key naming it) before anything starts or
/// a reload changes anything.
pub fn check_file(file: NamedFile<'_>) -> Result<(), TlsError> {
    match file {
        NamedFile::Certificate(path) => server::leaf_names(path, &pem::load_certs(path)?).map(drop),
        NamedFile::PrivateKey { key, cert } => {
            let pair = CertPair {
                cert: cert.to_owned(),
                key: key.to_owned(),
                default: false,
            };
            server::load_pair(&pair, &rustls::crypto::ring::default_provider()).map(drop)
        }
        NamedFile::CaBundle(path) => upstream::load_roots(path).map(drop),
    }
}

#[cfg(test)]
mod tests;
