//! The TLS module's tests: listener certificates by SNI, key formats and refusals,
//! handshakes in memory, and the upstream client config.

use std::fs;

use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio_rustls::TlsAcceptor;

use super::pem::load_certs;
use super::*;
use crate::config::{CertPair, TlsConfig, UpstreamTls};
use crate::tls::dev_ca::DevCa;

/// PKCS#1 RSA key and SEC1 EC key with self-signed certificates (`rsa.test`,
/// `ec.test`), made once with openssl: rcgen only writes PKCS#8.
const RSA_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAxEEVSLhc2qbuGCEPPiZHIxjztF597PXjZg43Y/J7d6q62Do0
3cJ673BvtFZFN9FH08jiGtwYOfTGp6sGheA6SdfgOz84Rojcod8C5kvNhsXUzsti
pKL5HR2HN7U8HiR+ZybRjjnCPt83ia+gXy6aaQyA71RSMRXjKlAunIYaJYjZnfK3
MVRsB/Oy3U3SVhBmcLoAG++o+5qrA6lMQTxxhncoH2D32UwelFroYFkVtHfW3IEr
43wnKxuPBsPqVrjglHxbegtyPVlfpZ1qTIdcshR36t3/cOq3LIdTD+erfp5/tSuF
RadNUK8wIhKlE5l3cmXQMS18UOIJEPV8tQ6pZwIDAQABAoIBAFce4TjwBuBVvFpf
yql3SpsNB5qpW9NmcHUsmHA5A5Bi7SDx7egH3pUOX7g5l+6oa+9bPOxZijOoMsvZ
w0KJALcpKvSCIxREy1TccCgVvH44sji+1uJpKpc/NXiIbtCeuLJH7Dzr7QwGAVyQ
52t5f7hkgZQ85WO+6KIvCBIaAd9o8YAWKxNoQFPjZm202vF26MWT/uptU07yZgGW
zVGveBvbR2l0Cmw37bjDfA6pmbK1IFbFABPrRWkis+SM0GwW5f9zdFTEvxQ3ZPxb
OoY2bgUxu5ndd5po92blmIs/iiJNUI5J0/piS3PrMTpw+KNAeh4twJJBGHlTOSTa
fSmIUBECgYEA+8ItR30Yz8FxIi3PM1C2Cv/Z88gvIplLCBn9JiiIqYxetTVSv0ve
Zc2bEASgZEcHkHcLHX3iPYXB0vnFP6cfkZ18mcRIMGsU/uc4554cOCqcT1EMMJW0
3nvuW/jQqKmVVLUNAbN3i/GUhZOy9SfAJTKqQpE1D+Sr87ho/TuTRpkCgYEAx4+E
0jd4+ISZyu+3/MH8fgSlH4zQVvh70YOsAAIvwdvHPLZod+NVb6FDJF/uOapXLcSP
zfW21VMX0XmZYuJKCMBpn7CPxfq48PwyjrlJQRhhKKp+Z0wwb72w5UXZV3vFZYCN
J6RmGgg0aXGtYomlnyrRUzbxr4OhCRr027oXb/8CgYAozdoE4jOpSJMLlR0mFgjL
U5iBuIpbMzlEAOJU0vEDeerHt/LHaoaLPX3KZNWSKykAsyqsBwEqM4mspirgHDgz
o7DUQ0nn/xMSFWvVrnyoZc+b02kEXt9HyBJj+bnn/ERlzEplYi8YEXmfBMdWkLDF
1qZdz6coAkoUYGkz0foW0QKBgFPgtPkOq9/5DBNKMtEgUBo/pY/fRepoQtLLP045
nQ0kbVfNa5eIi+6Bn5D4aU7/k+j+x1rQPmrnpAk9zQTNDEUlar/eHHAgc/+GYVGv
+2RK9Pt8veh5E5rD5khX1YR513xUTgAtj2S9shnn1/Kk3GJMQvNxEqCs+NC07do1
G4jNAoGBAIv17HST4kXp0sSZFsjlXE+uu7SWAO8t1smMn+DjfNilG+MPQifHjpmT
pXpO5VoriBKVSsiW1RgT8Eb9LjNeoYC1/0e0en7t2Ou93V2AqjK6+y5OfSOlBOrn
FlT96PbuWvGJQ1OhmaDiY6DcKm5GZy7s84hVYiF5RQMySVzpq3uo
-----END RSA PRIVATE KEY-----
";
const RSA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIDHjCCAgagAwIBAgIUaxx6sJUMmXH8HgXp9EG/qsbj5FQwDQYJKoZIhvcNAQEL
BQAwEzERMA8GA1UEAwwIcnNhLnRlc3QwIBcNMjYxMTIzMTExMzUwWhgPMjEyNjEw
MzAxMTEzNTBaMBMxETAPBgNVBAMMCHJzYS50ZXN0MIIBIjANBgkqhkiG9w0BAQEF
AAOCAQ8AMIIBCgKCAQEAxEEVSLhc2qbuGCEPPiZHIxjztF597PXjZg43Y/J7d6q6
2Do03cJ673BvtFZFN9FH08jiGtwYOfTGp6sGheA6SdfgOz84Rojcod8C5kvNhsXU
zstipKL5HR2HN7U8HiR+ZybRjjnCPt83ia+gXy6aaQyA71RSMRXjKlAunIYaJYjZ
nfK3MVRsB/Oy3U3SVhBmcLoAG++o+5qrA6lMQTxxhncoH2D32UwelFroYFkVtHfW
3IEr43wnKxuPBsPqVrjglHxbegtyPVlfpZ1qTIdcshR36t3/cOq3LIdTD+erfp5/
tSuFRadNUK8wIhKlE5l3cmXQMS18UOIJEPV8tQ6pZwIDAQABo2gwZjAdBgNVHQ4E
FgQU/7IPW0hKD9CeDnFkS14+35LvidEwHwYDVR0jBBgwFoAU/7IPW0hKD9CeDnFk
S14+35LvidEwDwYDVR0TAQH/BAUwAwEB/zATBgNVHREEDDAKgghyc2EudGVzdDAN
BgkqhkiG9w0BAQsFAAOCAQEAP7JyCYEFXVmDbl8dsEDWb/yl7gL9EOea4114rXNL
Hzz33qOkKsEP0L30Jpwp0q6tRojQXT716B6SOhLNdx1r9/99sItCtBgaPnKShbAJ
8/FEjR3x0Dcl7y8NwcpJvyNUKIGwraH45qGYbl57ynH+yyOrFxUBGNvAlu/MxCJe
QobfldMGE5IjwLOZ512bilk1mTQg5ZJ9n++TPOJgxneNsWV9EHbgmQHRTOoi+duU
n5oIEqkFcJZOgEFHmLtYvt4uaN1p+FQ7W4YnjyWh2uz8liEDaWuJmAq0u4p3X6WK
4Dwo/Trp22ZNjDTe9JQfgKiyYtzI5mO7TQ1FrQRcEwpkLA==
-----END CERTIFICATE-----
";
const EC_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIIHb8Dk5UYlFibRmS4je8BpWTcpbK6K9+cwn0DUmtNPXoAoGCCqGSM49
AwEHoUQDQgAEs2AnSIXSo0E9nbmWRxBvNAge+AMSTxuD7zI2EqGEq2c2982rifBe
hYua7DQfzK2aXMYxQVJVVPAcPi4bmf3hhQ==
-----END EC PRIVATE KEY-----
";
const EC_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBjzCCATWgAwIBAgIUC0Zaln916ySUNENUdvzoK8JkLXgwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHZWMudGVzdDAgFw0yNjExMjMxMTEzNTBaGA8yMTI2MTAzMDEx
MTM1MFowEjEQMA4GA1UEAwwHZWMudGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABLNgJ0iF0qNBPZ25lkcQbzQIHvgDEk8bg+8yNhKhhKtnNvfNq4nwXoWLmuw0
H8ytmlzGMUFSVVTwHD4uG5n94YWjZzBlMB0GA1UdDgQWBBQMrOK30GXXemh6QX4u
PLzE9CohMzAfBgNVHSMEGDAWgBQMrOK30GXXemh6QX4uPLzE9CohMzAPBgNVHRMB
Af8EBTADAQH/MBIGA1UdEQQLMAmCB2VjLnRlc3QwCgYIKoZIzj0EAwIDSAAwRQIg
O524W7Z53Nt3yR6YMNLYx8wCcw7Hwm+8DQYCmDafgIgCIQCdM3c7ShrmOUnph/Xc
BGmgOjFFE/2loATHy3AW6uYjsg==
-----END CERTIFICATE-----
";

/// A temp dir holding PEM files, and the pairs written into it.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, contents).unwrap();
        path
    }

    fn pair(&self, name: &str, cert: &str, key: &str, default: bool) -> CertPair {
        CertPair {
            cert: self.file(&format!("{name}.crt"), cert),
            key: self.file(&format!("{name}.key"), key),
            default,
        }
    }

    fn issue(&self, ca: &DevCa, name: &str, names: &[&str], default: bool) -> CertPair {
        let (cert, key) = ca.issue(names).unwrap();
        self.pair(name, &cert, &key, default)
    }
}

fn tls(certificates: Vec<CertPair>) -> TlsConfig {
    TlsConfig {
        certificates,
        hsts: None,
    }
}

/// Why loading `certificates` failed (it must fail).
fn refused(certificates: Vec<CertPair>) -> TlsError {
    match acceptor(&tls(certificates)) {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    }
}

fn resolver(certificates: Vec<CertPair>) -> Result<SniResolver, TlsError> {
    SniResolver::load(
        &tls(certificates),
        &rustls::crypto::ring::default_provider(),
    )
}

/// Pairs 0: `example.com`, `www.example.com`; 1: `*.example.com`;
/// 2: `api.example.com`; 3: `*.other.test`, with `default` on the one asked for.
fn four(files: &Files, ca: &DevCa, default: Option<usize>) -> Vec<CertPair> {
    let d = |i| default == Some(i);
    vec![
        files.issue(ca, "apex", &["example.com", "www.example.com"], d(0)),
        files.issue(ca, "wild", &["*.example.com"], d(1)),
        files.issue(ca, "api", &["API.example.com"], d(2)),
        files.issue(ca, "other", &["*.other.test"], d(3)),
    ]
}

#[test]
fn exact_names_beat_wildcards_and_ignore_case() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let r = resolver(four(&files, &ca, None)).unwrap();
    assert_eq!(r.choose(Some("example.com")), Some(0));
    assert_eq!(r.choose(Some("WWW.Example.COM")), Some(0));
    assert_eq!(r.choose(Some("www.example.com.")), Some(0));
    assert_eq!(r.choose(Some("api.example.com")), Some(2));
    assert_eq!(r.choose(Some("Api.Example.Com")), Some(2));
}

#[test]
fn wildcard_covers_exactly_one_label() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let r = resolver(four(&files, &ca, None)).unwrap();
    assert_eq!(r.choose(Some("a.example.com")), Some(1));
    assert_eq!(r.choose(Some("chat.example.com")), Some(1));
    assert_eq!(r.choose(Some("x.other.test")), Some(3));
    assert_eq!(r.choose(Some("a.b.example.com")), None);
    assert_eq!(r.choose(Some("other.test")), None);
    assert_eq!(r.choose(Some(".example.com")), None);
}

#[test]
fn without_a_default_unknown_names_are_refused_and_no_sni_gets_the_first() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let r = resolver(four(&files, &ca, None)).unwrap();
    assert_eq!(r.choose(Some("unknown.test")), None);
    assert_eq!(r.choose(Some("com")), None);
    assert_eq!(r.choose(None), Some(0));
}

#[test]
fn the_default_answers_unknown_names_and_no_sni() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let r = resolver(four(&files, &ca, Some(3))).unwrap();
    assert_eq!(r.choose(Some("unknown.test")), Some(3));
    assert_eq!(r.choose(Some("a.b.example.com")), Some(3));
    assert_eq!(r.choose(None), Some(3));
    // Known names still go to their own certificate.
    assert_eq!(r.choose(Some("a.example.com")), Some(1));
    assert_eq!(r.choose(Some("example.com")), Some(0));
}

#[test]
fn a_name_on_two_certificates_goes_to_the_first() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let r = resolver(vec![
        files.issue(&ca, "one", &["*.example.com", "a.example.com"], false),
        files.issue(&ca, "two", &["a.example.com", "*.example.com"], false),
    ])
    .unwrap();
    assert_eq!(r.choose(Some("a.example.com")), Some(0));
    assert_eq!(r.choose(Some("b.example.com")), Some(0));
}

#[test]
fn a_certificate_without_dns_names_serves_as_default() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let r = resolver(vec![
        files.issue(&ca, "named", &["example.com"], false),
        files.issue(&ca, "bare", &[] as &[&str], true),
    ])
    .unwrap();
    assert_eq!(r.choose(None), Some(1));
    assert_eq!(r.choose(Some("elsewhere.test")), Some(1));
    assert_eq!(r.choose(Some("example.com")), Some(0));
}

#[test]
fn pkcs1_rsa_and_sec1_ec_keys_load() {
    let files = Files::new();
    let r = resolver(vec![
        files.pair("rsa", RSA_CERT, RSA_KEY, false),
        files.pair("ec", EC_CERT, EC_KEY, false),
    ])
    .unwrap();
    assert_eq!(r.choose(Some("rsa.test")), Some(0));
    assert_eq!(r.choose(Some("ec.test")), Some(1));
}

#[test]
fn mismatched_key_is_rejected_naming_both_files() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let (cert_a, _) = ca.issue(&["a.test"]).unwrap();
    let (_, key_b) = ca.issue(&["b.test"]).unwrap();
    let pair = files.pair("mixed", &cert_a, &key_b, false);
    let err = refused(vec![pair.clone()]);
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&pair.cert.display().to_string()), "{msg}");
    assert!(msg.contains(&pair.key.display().to_string()), "{msg}");
    assert!(msg.contains("does not match"), "{msg}");

    // Different key types: an RSA key for an EC certificate.
    let pair = files.pair("cross", EC_CERT, RSA_KEY, false);
    let err = refused(vec![pair]);
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn empty_and_garbage_pem_are_rejected() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let (cert, key) = ca.issue(&["a.test"]).unwrap();

    let err = refused(vec![files.pair("empty", "", &key, false)]);
    assert!(matches!(err, TlsError::NoCertificate(_)), "{err:?}");
    assert!(err.to_string().contains("empty.crt"), "{err}");

    let err = refused(vec![files.pair("text", "hello\n", &key, false)]);
    assert!(matches!(err, TlsError::NoCertificate(_)), "{err:?}");

    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    let err = refused(vec![files.pair("b64", bad_base64, &key, false)]);
    assert!(err.to_string().contains("b64.crt"), "{err}");

    let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    let err = refused(vec![files.pair("der", not_der, &key, false)]);
    assert!(matches!(err, TlsError::BadCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("der.crt"), "{err}");

    let err = refused(vec![files.pair("nokey", &cert, "", false)]);
    assert!(matches!(err, TlsError::NoKey(_)), "{err:?}");
    assert!(err.to_string().contains("nokey.key"), "{err}");

    let bad_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
    let err = refused(vec![files.pair("badkey", &cert, bad_key, false)]);
    assert!(matches!(err, TlsError::Rejected { .. }), "{err:?}");

    let missing = CertPair {
        cert: files.dir.path().join("missing.crt"),
        key: files.dir.path().join("missing.key"),
        default: false,
    };
    let err = refused(vec![missing]);
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.crt"), "{err}");

    assert!(matches!(acceptor(&tls(vec![])), Err(TlsError::Empty)));
}

fn connector(ca_pem: &str, sni: bool) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls_pemfile::certs(&mut ca_pem.as_bytes()).map(Result::unwrap),
    );
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.enable_sni = sni;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A whole in-memory handshake; the leaf the client verified, or why it failed.
async fn handshake(
    acceptor: &TlsAcceptor,
    connector: &TlsConnector,
    name: &str,
) -> Result<(CertificateDer<'static>, Option<Vec<u8>>), String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let (server, client) = tokio::join!(
        acceptor.accept(server_io),
        connector.connect(name, client_io)
    );
    let client = client.map_err(|e| e.to_string())?;
    server.map_err(|e| e.to_string())?;
    let (_, conn) = client.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone().into_owned();
    Ok((leaf, conn.alpn_protocol().map(<[u8]>::to_vec)))
}

fn leaf_of(pair: &CertPair) -> CertificateDer<'static> {
    load_certs(&pair.cert).unwrap().remove(0)
}

#[tokio::test]
async fn handshakes_get_the_certificate_for_their_name() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let pairs = vec![
        files.issue(&ca, "a", &["a.example.com"], false),
        files.issue(&ca, "wild", &["*.example.com"], false),
    ];
    let acceptor = acceptor(&tls(pairs.clone())).unwrap();
    let with_sni = connector(&ca.pem(), true);

    let (leaf, alpn) = handshake(&acceptor, &with_sni, "a.example.com")
        .await
        .unwrap();
    assert_eq!(leaf, leaf_of(&pairs[0]));
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (leaf, _) = handshake(&acceptor, &with_sni, "b.example.com")
        .await
        .unwrap();
    assert_eq!(leaf, leaf_of(&pairs[1]));

    // Nothing configured for the name and no default: the handshake is refused.
    let err = handshake(&acceptor, &with_sni, "a.b.example.com")
        .await
        .unwrap_err();
    assert!(err.contains("fatal alert"), "{err}");

    // No SNI and no default: the first certificate.
    let no_sni = connector(&ca.pem(), false);
    let (leaf, _) = handshake(&acceptor, &no_sni, "a.example.com")
        .await
        .unwrap();
    assert_eq!(leaf, leaf_of(&pairs[0]));
}

#[tokio::test]
async fn handshake_without_sni_gets_the_default() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let pairs = vec![
        files.issue(&ca, "a", &["a.example.com"], false),
        files.issue(&ca, "fallback", &["fallback.example.net"], true),
    ];
    let acceptor = acceptor(&tls(pairs.clone())).unwrap();
    let no_sni = connector(&ca.pem(), false);
    let (leaf, _) = handshake(&acceptor, &no_sni, "fallback.example.net")
        .await
        .unwrap();
    assert_eq!(leaf, leaf_of(&pairs[1]));
}

#[test]
fn server_config_offers_h2_then_http1_over_tls12_and_13() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let config = server_config(&tls(vec![files.issue(&ca, "a", &["a.test"], false)])).unwrap();
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let mut versions: Vec<_> = config
        .crypto_provider()
        .cipher_suites
        .iter()
        .map(|s| s.version().version)
        .collect();
    versions.dedup();
    assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_3));
    assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_2));
}

#[test]
fn client_config_loads_a_ca_bundle() {
    let files = Files::new();
    let one = DevCa::new().unwrap();
    let two = DevCa::new().unwrap();
    let bundle = files.file("bundle.pem", &format!("{}{}", one.pem(), two.pem()));
    let config = client_config(&UpstreamTls {
        ca: Some(bundle),
        server_name: None,
    })
    .unwrap();
    assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);

    let mozilla = client_config(&UpstreamTls {
        ca: None,
        server_name: None,
    });
    assert!(mozilla.is_ok());
}

#[test]
fn client_config_names_a_missing_or_empty_ca_file() {
    let files = Files::new();
    let missing = files.dir.path().join("nope.pem");
    let err = client_config(&UpstreamTls {
        ca: Some(missing),
        server_name: None,
    })
    .unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.pem"), "{err}");

    let empty = files.file("empty.pem", "");
    let err = client_config(&UpstreamTls {
        ca: Some(empty),
        server_name: None,
    })
    .unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate(_)), "{err:?}");
}

#[tokio::test]
async fn upstream_client_trusts_its_ca_file() {
    let files = Files::new();
    let ca = DevCa::new().unwrap();
    let server = acceptor(&tls(vec![files.issue(
        &ca,
        "up",
        &["backend.internal"],
        false,
    )]))
    .unwrap();
    let trusted = TlsConnector::from(
        client_config(&UpstreamTls {
            ca: Some(files.file("ca.pem", &ca.pem())),
            server_name: None,
        })
        .unwrap(),
    );
    let (_, alpn) = handshake(&server, &trusted, "backend.internal")
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

    // The Mozilla roots do not know a dev CA.
    let public = TlsConnector::from(
        client_config(&UpstreamTls {
            ca: None,
            server_name: None,
        })
        .unwrap(),
    );
    let err = handshake(&server, &public, "backend.internal")
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown"),
        "{err}"
    );
}
