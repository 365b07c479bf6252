//! Everything TLS, with rustls (ring provider), in one place:
//!
//! - [`server`] the listener side: certificates chosen per handshake by SNI.
//! - [`upstream`] the client side, towards backend servers ([`TlsUpstream`]).
//! - [`pem`] reading certificates and keys from PEM files.
//! - [`dev_ca`] a throwaway CA and certificates it signs (`tether cert`, tests, the demo).
//!
//! Every file problem is found when an acceptor or a client is built, never during a
//! handshake, so a bad certificate fails `tether check`/startup/reload with the file's name
//! instead of failing clients later.

pub mod dev_ca;
pub mod pem;
pub mod server;
pub mod upstream;

pub use server::{acceptor, server_config, SniResolver};
pub use upstream::{client_config, TlsUpstream};

use std::path::PathBuf;

/// What the listener offers in ALPN, preferred first: HTTP/2 where the client can,
/// HTTP/1.1 (and with it WebSocket upgrades) otherwise.
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What tether offers a backend: the proxy speaks HTTP/1.1 upstream, so an h2-only
/// server must fail the handshake rather than be sent HTTP/1.1 it cannot read.
pub const UPSTREAM_ALPN: [&[u8]; 1] = [b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
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

#[cfg(test)]
mod tests;
