//! Development certificates: a throwaway CA and leaf certificates signed by it.
//!
//! A self-signed leaf would do for one handshake, but a CA the clients trust once lets
//! tests and operators rotate or add leaf certificates without touching the clients:
//! exactly what a reload of a TLS listener has to survive. `tether cert` writes one CA
//! and one leaf; tests issue as many leaves from one [`DevCa`] as they need.
//!
//! Keys are ECDSA P-256: small, fast to generate, and accepted by every TLS client.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::DnsName;

/// Common name of every development CA, so an operator can spot it in a trust store.
pub const CA_COMMON_NAME: &str = "tether development CA";

/// Leaf lifetime: Apple platforms reject server certificates valid for longer than
/// 825 days even under a locally trusted root.
const LEAF_DAYS: i64 = 825;
/// A dev CA outlives many leaves so a trusted root is not replaced every two years.
const CA_DAYS: i64 = 10 * 365;
/// Backdating absorbs clock skew between the machine that issues and the client.
const BACKDATE_DAYS: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no names given: a certificate needs at least one DNS name or IP address")]
    NoNames,
    #[error("{name:?} is neither a DNS name nor an IP address ({reason})")]
    InvalidName { name: String, reason: String },
    #[error("generating a certificate: {0}")]
    Generate(rcgen::Error),
}

// By hand rather than `#[from]`, which would also make the cause the error's `source()`
// while the message already carries it: printed as a chain, it would read twice.
impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> CertError {
        CertError::Generate(e)
    }
}

/// A CA whose private key never leaves memory: its certificates are trusted only by
/// clients told about [`DevCa::pem`], and only for as long as the process keeps it.
#[derive(Debug)]
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl DevCa {
    pub fn new() -> Result<DevCa, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "tether");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(CA_DAYS);
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        Ok(DevCa { issuer })
    }

    /// The CA certificate, for a client's trust store.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names`, signed by this CA: `(cert_pem, key_pem)`, the key
    /// PKCS#8. Names that parse as IP addresses become IP SANs, the rest DNS SANs
    /// (`*.example.com` included). No names gives a certificate without SANs, which
    /// only serves as a listener's default.
    pub fn issue<S: AsRef<str>>(&self, names: &[S]) -> Result<(String, String), CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let common_name = names.first().map_or("tether development", |n| n.as_ref());
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = names
            .iter()
            .map(|n| san(n.as_ref()))
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(LEAF_DAYS);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason: String| CertError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    // rcgen takes any ASCII; a name no client could ever ask for is a typo to report.
    let host = name.strip_prefix("*.").unwrap_or(name);
    DnsName::try_from(host).map_err(|e| invalid(e.to_string()))?;
    name.try_into()
        .map(SanType::DnsName)
        .map_err(|e: rcgen::Error| invalid(e.to_string()))
}

/// From a little before now to `days` after that.
fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let not_before = time::OffsetDateTime::from_unix_timestamp(now)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        - time::Duration::days(BACKDATE_DAYS);
    (not_before, not_before + time::Duration::days(days))
}

/// A development CA and one leaf signed by it, as PEM text.
#[derive(Debug, Clone)]
pub struct DevCert {
    /// What clients must trust.
    pub ca_pem: String,
    /// The leaf alone: the CA is deliberately not appended, since a client that trusts
    /// it already has it.
    pub cert_pem: String,
    /// PKCS#8.
    pub key_pem: String,
}

/// Where [`DevCert::write`] put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevCert {
    /// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir` (created if missing),
    /// replacing files of those names. The key is readable by its owner only.
    pub fn write(&self, dir: &Path) -> io::Result<DevCertPaths> {
        fs::create_dir_all(dir)?;
        let paths = DevCertPaths {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        fs::write(&paths.ca, &self.ca_pem)?;
        fs::write(&paths.cert, &self.cert_pem)?;
        write_private(&paths.key, self.key_pem.as_bytes())?;
        Ok(paths)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only when the file is created; an existing key keeps its old
    // permissions unless they are narrowed here, before the new key is written.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(data)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// A fresh CA and a leaf for `names` signed by it (see [`DevCa::issue`] for how names
/// are read).
pub fn generate_dev_cert<S: AsRef<str>>(names: &[S]) -> Result<DevCert, CertError> {
    if names.is_empty() {
        return Err(CertError::NoNames);
    }
    let ca = DevCa::new()?;
    let (cert_pem, key_pem) = ca.issue(names)?;
    Ok(DevCert {
        ca_pem: ca.pem(),
        cert_pem,
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::config::{CertPair, TlsConfig};
    use crate::tls;

    fn client_trusting(ca_pem: &str) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    #[test]
    fn dev_cert_has_names_and_a_ca() {
        let dev = generate_dev_cert(&["localhost", "127.0.0.1", "*.dev.test"]).unwrap();
        assert!(dev.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(dev.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(dev.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let der = rustls_pemfile::certs(&mut dev.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let leaf = webpki::EndEntityCert::try_from(&der).unwrap();
        let names: Vec<_> = leaf.valid_dns_names().collect();
        assert_eq!(names, ["localhost", "*.dev.test"]);
        let ip = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        leaf.verify_is_valid_for_subject_name(&ip).unwrap();
    }

    #[test]
    fn dev_cert_rejects_no_names_and_bad_names() {
        assert!(matches!(
            generate_dev_cert::<String>(&[]),
            Err(CertError::NoNames)
        ));
        for bad in ["bad\u{e9}name", "bad name", "a..b", "*", "a.*.b", ""] {
            let err = generate_dev_cert(&["ok.test", bad]).unwrap_err();
            assert!(matches!(err, CertError::InvalidName { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn write_creates_dir_and_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/certs");
        let dev = generate_dev_cert(&["localhost"]).unwrap();
        let paths = dev.write(&out).unwrap();
        assert_eq!(paths.ca, out.join("ca.pem"));
        assert_eq!(fs::read_to_string(&paths.cert).unwrap(), dev.cert_pem);
        assert_eq!(fs::read_to_string(&paths.key).unwrap(), dev.key_pem);
        assert_eq!(fs::read_to_string(&paths.ca).unwrap(), dev.ca_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&paths.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn client_trusting_only_the_ca_completes_a_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let dev = generate_dev_cert(&["localhost", "127.0.0.1"]).unwrap();
        let paths = dev.write(dir.path()).unwrap();
        let acceptor = tls::acceptor(&TlsConfig {
            certificates: vec![CertPair {
                cert: paths.cert,
                key: paths.key,
                default: false,
            }],
            hsts: None,
        })
        .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.unwrap();
                tls.write_all(&buf).await.unwrap();
                tls.shutdown().await.unwrap();
            }
        });

        let expected = rustls_pemfile::certs(&mut dev.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let connector = client_trusting(&dev.ca_pem);
        // By name (SNI sent), then by address (no SNI: the first certificate answers).
        for name in ["localhost", "127.0.0.1"] {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let server_name = ServerName::try_from(name.to_owned()).unwrap();
            let mut tls = connector.connect(server_name, tcp).await.unwrap();
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
            let leaf: &CertificateDer = &conn.peer_certificates().unwrap()[0];
            assert_eq!(leaf, &expected);
            tls.write_all(b"ping").await.unwrap();
            let mut back = Vec::new();
            tls.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"ping");
        }
        server.await.unwrap();
    }
}
