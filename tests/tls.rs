//! TLS termination: real socket.io clients over TLS with a private CA, HTTP/2 polling,
//! SNI, certificate rotation under load, hostile TLS input, redirect and HSTS, and TLS
//! to upstream servers.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::*;
use tether::tls::dev_ca::DevCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A CA, and certificate files it issued, in a temp dir.
struct Pki {
    ca: DevCa,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            ca: DevCa::new().expect("dev CA"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Issues a certificate for `names` into `<stem>.crt` / `<stem>.key`.
    fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let (cert, key) = self.ca.issue(&names).expect("issue");
        let c = self.dir.path().join(format!("{stem}.crt"));
        let k = self.dir.path().join(format!("{stem}.key"));
        write_atomically(&c, &cert);
        write_atomically(&k, &key);
        (c, k)
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.ca_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(cfg))
    }
}

fn pem_der(path: &Path) -> CertificateDer<'static> {
    let text = std::fs::read(path).unwrap();
    let der = rustls_pemfile::certs(&mut text.as_slice())
        .next()
        .unwrap()
        .unwrap();
    der.into_owned()
}

async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// The certificate the server presented.
fn presented(s: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// A TLS listener's entry for [`ConfigBuilder::listener`]: `certs` (cert, key, default)
/// and `extra` keys of its `tls` section.
fn tls_listener(certs: &[(&Path, &Path, bool)], extra: &str) -> String {
    let mut yaml = String::from("bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n");
    for (c, k, default) in certs {
        yaml.push_str(&format!(
            "        - {{ cert: \"{}\", key: \"{}\", default: {default} }}\n",
            c.display(),
            k.display()
        ));
    }
    for line in extra.lines() {
        yaml.push_str(&format!("      {line}\n"));
    }
    yaml
}

/// A config for `nodes` behind one TLS listener.
fn behind_tls(nodes: &[NodeServer], listener: &str) -> String {
    sockets(nodes).listener(listener).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_swarm_passes_over_tls_with_a_private_ca() {
    let _heavy = HEAVY.lock().await;
    let pki = Pki::new();
    let (c, k) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let cluster = Cluster::start(3).await;
    let yaml = behind_tls(&cluster.nodes, &tls_listener(&[(&c, &k, false)], ""));
    let tether = TetherHandle::start(&yaml).await;
    let url = format!("https://localhost:{}", tether.addr.port());
    let report = swarm(json!({
        "url": url, "clients": 300, "ioOptions": { "ca": pki.ca_pem() }
    }))
    .await;
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    assert_eq!(n("connectErrors"), 0, "{report}");
    assert_eq!(n("connected"), 300, "{report}");
    assert_eq!(n("upgraded"), 300, "{report}");
    assert_eq!(n("acked"), 300, "{report}");
    assert_eq!(n("broadcastReceived"), 300, "{report}");
    let ratio = max_over_mean(&report, 3);
    println!("TLS swarm: {} max/mean {ratio:.3}", report["perNode"]);
    assert!(ratio <= 1.15, "{report}");

    // The same client without the CA is refused: the certificate really is checked.
    let untrusting = swarm(json!({
        "url": format!("https://localhost:{}", tether.addr.port()), "clients": 3,
        "broadcast": false, "timeoutMs": 5000,
    }))
    .await;
    assert_eq!(untrusting["connected"], 0, "{untrusting}");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_polling_keeps_each_multiplexed_session_on_its_server() {
    let pki = Pki::new();
    let (c, k) = pki.issue("server", &["localhost"]);
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(NodeServer::spawn(&format!("node-{i}"), None, &[]).await);
    }
    let yaml = behind_tls(&nodes, &tls_listener(&[(&c, &k, false)], ""));
    let tether = TetherHandle::start(&yaml).await;
    let tls = tls_connect(&pki.client(&[b"h2"]), tether.addr, "localhost")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);

    let request = |method: &str, path: String, body: &'static str| {
        hyper::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .header("content-type", "text/plain;charset=UTF-8")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    // 30 handshakes at once, all on the one connection.
    let handshakes = futures_join(
        (0..30)
            .map(|_| {
                let mut s = sender.clone();
                let req = request("GET", eio_path(None), "");
                async move {
                    let resp = s.send_request(req).await.expect("h2 handshake request");
                    let node = resp.headers()["x-node-id"].to_str().unwrap().to_owned();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let sid = text
                        .split("\"sid\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or_else(|| panic!("no sid in {text}"))
                        .to_owned();
                    (node, sid)
                }
            })
            .collect(),
    )
    .await;
    let nodes_used: std::collections::BTreeSet<_> = handshakes.iter().map(|(n, _)| n).collect();
    assert_eq!(nodes_used.len(), 3, "sessions spread over the nodes");
    // Then every session's request, interleaved on the same connection: each one must
    // reach its own node (only that node answers `ok` to its sid).
    let answers = futures_join(
        handshakes
            .iter()
            .map(|(node, sid)| {
                let mut s = sender.clone();
                let req = request("POST", eio_path(Some(sid)), "3");
                let node = node.clone();
                async move {
                    let resp = s.send_request(req).await.expect("h2 poll");
                    let status = resp.status();
                    let answered_by = resp.headers()["x-node-id"].to_str().unwrap().to_owned();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    (node, answered_by, status, body)
                }
            })
            .collect(),
    )
    .await;
    for (node, answered_by, status, body) in answers {
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
        assert_eq!(node, answered_by);
    }
    tether.stop().await;
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_by_name() {
    let pki = Pki::new();
    let (ac, ak) = pki.issue("a", &["a.test"]);
    let (bc, bk) = pki.issue("b", &["*.b.test"]);
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let nodes = [node];
    let yaml = behind_tls(
        &nodes,
        &tls_listener(&[(&ac, &ak, false), (&bc, &bk, false)], ""),
    );
    let tether = TetherHandle::start(&yaml).await;
    let client = pki.client(&[b"http/1.1"]);
    let a = tls_connect(&client, tether.addr, "a.test").await.unwrap();
    assert_eq!(presented(&a), pem_der(&ac));
    let b = tls_connect(&client, tether.addr, "x.b.test").await.unwrap();
    assert_eq!(presented(&b), pem_der(&bc));
    assert!(
        tls_connect(&client, tether.addr, "nobody.test")
            .await
            .is_err(),
        "a name no certificate covers is refused when there is no default"
    );
    assert!(tls_connect(&client, tether.addr, "b.test").await.is_err());
    tether.stop().await;

    // With a default, unknown names and clients without SNI get it.
    let yaml = behind_tls(
        &nodes,
        &tls_listener(&[(&ac, &ak, false), (&bc, &bk, true)], ""),
    );
    let tether = TetherHandle::start(&yaml).await;
    // The client checks the name it sent; "nobody.test" is not in B's certificate, so
    // the handshake fails on the client's side — after the server offered B, instead
    // of refusing as it did above.
    let r = tls_connect(&client, tether.addr, "nobody.test").await;
    let err = r.err().map(|e| format!("{e:?}")).unwrap_or_default();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for"),
        "the default certificate was offered (and the client disliked its name): {err}"
    );
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_dropping_anyone() {
    let _heavy = HEAVY.lock().await;
    let pki = Pki::new();
    let (c, k) = pki.issue("server", &["localhost"]);
    let cluster = Cluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tether.yaml");
    let yaml = behind_tls(&cluster.nodes, &tls_listener(&[(&c, &k, false)], ""));
    write_atomically(&file, &yaml);
    let tether = TetherHandle::start_file(&file).await;
    let url = format!("https://localhost:{}", tether.addr.port());
    let (soak, ready) = Soak::start(json!({
        "url": url, "clients": 150, "durationMs": 60000, "ioOptions": { "ca": pki.ca_pem() }
    }))
    .await;
    assert_eq!(ready["connected"], 150, "{ready}");
    let client = pki.client(&[b"http/1.1"]);
    let before = presented(
        &tls_connect(&client, tether.addr, "localhost")
            .await
            .unwrap(),
    );
    assert_eq!(before, pem_der(&c));

    // Replace the files in place (same paths), as a certificate renewal does.
    let (new_c, new_k) = pki.issue("renewed", &["localhost"]);
    write_atomically(&k, &std::fs::read_to_string(&new_k).unwrap());
    write_atomically(&c, &std::fs::read_to_string(&new_c).unwrap());
    let mut after = before.clone();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = presented(
            &tls_connect(&client, tether.addr, "localhost")
                .await
                .unwrap(),
        );
        if after != before {
            break;
        }
    }
    assert_eq!(
        after,
        pem_der(&new_c),
        "new handshakes get the new certificate"
    );

    // A mismatched pair is refused; the renewed certificate stays in force.
    let (_, other_k) = pki.issue("other", &["localhost"]);
    write_atomically(&k, &std::fs::read_to_string(&other_k).unwrap());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = presented(
        &tls_connect(&client, tether.addr, "localhost")
            .await
            .unwrap(),
    );
    assert_eq!(still, pem_der(&new_c));
    let status = tether.runtime.reload_status();
    assert!(
        status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("certificates")),
        "{status:?}"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let fin = soak.finish().await;
    println!(
        "rotation: {} acks, {} disconnects over TLS",
        fin["acksOk"], fin["disconnects"]
    );
    assert_eq!(fin["disconnects"], 0, "{fin}");
    assert_eq!(fin["connectedNow"], 150, "{fin}");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tls_input_is_refused_and_harms_nobody_else() {
    let pki = Pki::new();
    let (c, k) = pki.issue("server", &["localhost"]);
    let nodes = [NodeServer::spawn("node-1", None, &[]).await];
    let yaml = behind_tls(&nodes, &tls_listener(&[(&c, &k, false)], ""));
    let tether = TetherHandle::start(&yaml).await;
    let client = pki.client(&[b"http/1.1"]);
    // A healthy connection open throughout.
    let mut good = tls_connect(&client, tether.addr, "localhost")
        .await
        .unwrap();
    let ask = |s: String| format!("GET {s} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    async fn exchange(s: &mut tokio_rustls::client::TlsStream<TcpStream>, req: &str) -> String {
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    assert!(exchange(&mut good, &ask(eio_path(None)))
        .await
        .starts_with("HTTP/1.1 200"));

    // Plain HTTP to the TLS port.
    let mut plain = TcpStream::connect(tether.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "closed promptly");
    assert!(!String::from_utf8_lossy(&buf).contains("200"));

    // A truncated ClientHello: a record header promising more than is sent.
    let mut trunc = TcpStream::connect(tether.addr).await.unwrap();
    trunc
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await
        .unwrap();
    trunc.shutdown().await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), trunc.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "closed promptly");

    // An unknown SNI.
    assert!(tls_connect(&client, tether.addr, "unknown.example")
        .await
        .is_err());

    // The healthy connection never noticed.
    assert!(exchange(&mut good, &ask(eio_path(None)))
        .await
        .starts_with("HTTP/1.1 200"));
    let fresh = tls_connect(&client, tether.addr, "localhost").await;
    assert!(fresh.is_ok());
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_redirects_to_https_and_tls_answers_carry_hsts() {
    let pki = Pki::new();
    let (c, k) = pki.issue("server", &["localhost"]);
    let nodes = [NodeServer::spawn("node-1", None, &[]).await];
    let yaml = sockets(&nodes)
        .listener(&tls_listener(
            &[(&c, &k, false)],
            "hsts: { max_age: 1d, include_subdomains: true }",
        ))
        .listener("bind: \"127.0.0.2:0\"\n    redirect_https: 8443")
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let redirect_addr = tether.runtime.local_addrs()[1];
    let req = "POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: chat.example:80\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    let r = raw_exchange(redirect_addr, None, req.as_bytes()).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://chat.example:8443/socket.io/?EIO=4&transport=polling")
    );

    let mut s = tls_connect(&pki.client(&[b"http/1.1"]), tether.addr, "localhost")
        .await
        .unwrap();
    s.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            eio_path(None)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let resp = parse_response(&buf).expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("strict-transport-security"),
        Some("max-age=86400; includeSubDomains")
    );
    tether.stop().await;
}

/// A TLS-only upstream: answers every request with `tls-upstream <path>`.
async fn tls_upstream(pki: &Pki) -> SocketAddr {
    let (c, k) = pki.issue("upstream", &["localhost"]);
    let cfg = tether::config::TlsConfig {
        certificates: vec![tether::config::CertPair {
            cert: c,
            key: k,
            default: true,
        }],
        hsts: None,
    };
    let acceptor = tether::tls::acceptor(&cfg).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("tls-upstream {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_upstream_servers_verifies_them_with_the_configured_ca() {
    let pki = Pki::new();
    let upstream = tls_upstream(&pki).await;
    let ca = pki.dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let yaml = |ca: &Path| {
        ConfigBuilder::new()
            .backend("secure")
            .with(&format!(
                "tls: {{ ca: \"{}\", server_name: localhost }}",
                ca.display()
            ))
            .with("health: { path: /health, interval: 200ms, timeout: 500ms }")
            .server("s1", upstream)
            .build()
    };
    let tether = TetherHandle::start(&yaml(&ca)).await;
    let r = get(tether.addr, None, "/hello", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "tls-upstream /hello"));
    // Health probes speak TLS too: the server stays up.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let snap = tether.store.load();
    let s1 = snap.backends[0].server("s1").unwrap();
    assert_eq!(s1.stats.condition.health(), tether::backends::Health::Up);
    tether.stop().await;

    // A CA that did not issue the upstream's certificate: refused.
    let other = Pki::new();
    let other_ca = other.dir.path().join("ca.pem");
    std::fs::write(&other_ca, other.ca_pem()).unwrap();
    let tether = TetherHandle::start(&yaml(&other_ca)).await;
    let r = get(tether.addr, None, "/hello", &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_sends_no_request_is_closed() {
    let pki = Pki::new();
    let (c, k) = pki.issue("server", &["localhost"]);
    let nodes = [NodeServer::spawn("node-1", None, &[]).await];
    let yaml = sockets(&nodes)
        .listener(&tls_listener(&[(&c, &k, false)], ""))
        .top("limits: { header_read_timeout: 1s }")
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let client = pki.client(&[b"h2"]);

    // The preface and SETTINGS, then silence (pings would be answered by a real client;
    // the point is that no request ever comes).
    let mut idle = tls_connect(&client, tether.addr, "localhost")
        .await
        .unwrap();
    assert_eq!(idle.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // SETTINGS, SETTINGS ACK, GOAWAY
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "an HTTP/2 connection without a request stayed open"
    );
    println!(
        "silent HTTP/2 connection closed after {:?}",
        started.elapsed()
    );
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_listener_is_told_to_use_https_and_stdout_says_which_is_which() {
    let pki = Pki::new();
    let (c, k) = pki.issue("server", &["localhost"]);
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = sockets(std::slice::from_ref(&node))
        .listeners(&["127.0.0.1:0"])
        .listener(&tls_listener(&[(&c, &k, false)], ""))
        .build();
    let file = dir.path().join("tether.yaml");
    std::fs::write(&file, yaml).unwrap();
    let t = TetherProcess::start(&file, "info").await;
    let tls_line = t
        .stdout
        .wait_for(
            0,
            &["tether listening on https://"],
            Duration::from_secs(20),
        )
        .await;
    let (tls_addr, tls) = listening_addr(&tls_line).expect("a URL");
    assert!(tls);
    assert_eq!(
        listening_addr(&t.stdout.matching(0, &["listening"])[0]),
        Some((t.addr, false))
    );

    // What curl http:// and a browser send: told, in HTTP, to use https://.
    let r = get(tls_addr, None, "/", &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.text(),
        format!("plain HTTP was sent to a TLS port: use https://{tls_addr}/\n")
    );
    t.log
        .wait_for(
            0,
            &["plain HTTP on a TLS listener", "use https://"],
            Duration::from_secs(20),
        )
        .await;

    // TLS on the same port is untouched.
    let client = pki.client(&[b"http/1.1"]);
    let mut s = tls_connect(&client, tls_addr, "localhost").await.unwrap();
    s.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            eio_path(None)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}
