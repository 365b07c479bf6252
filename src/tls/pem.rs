//! Certificates and keys read from PEM files, each problem reported with the file's name.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|cause| TlsError::Read {
            path: path.to_owned(),
            relative_to: path
                .is_relative()
                .then(std::env::current_dir)
                .and_then(Result::ok),
            cause,
        })
}

/// Every certificate of a PEM file, in file order (for a chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| TlsError::Read {
            path: path.to_owned(),
            cause,
            relative_to: None,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|cause| TlsError::Read {
            path: path.to_owned(),
            cause,
            relative_to: None,
        })?
        .ok_or_else(|| TlsError::NoKey(path.to_owned()))
}
