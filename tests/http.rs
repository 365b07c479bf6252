//! Plain HTTP through tether: routing by host and path, forwarding headers, hop-by-hop
//! removal and pooled upstream connections, against a small real HTTP server that
//! answers with the request it received.

mod support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers every request with `name: value` lines of the headers it got,
/// and counts the TCP connections it accepted.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start(id: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| async move {
                            let mut text = format!("upstream: {id}\npath: {}\n", req.uri());
                            for (k, v) in req.headers() {
                                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                            }
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, connections }
    }
}

fn ip(last: u8) -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, 0, last]))
}

/// Lines `name: value` of the upstream's echo whose name is `name`.
fn seen<'a>(echo: &'a str, name: &str) -> Vec<&'a str> {
    echo.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .collect()
}

async fn start(extra_top: &str, a: &Upstream, b: &Upstream) -> TetherHandle {
    let mut config = ConfigBuilder::new();
    if !extra_top.is_empty() {
        config = config.top(extra_top);
    }
    let yaml = config
        .route("{ host: \"*.b.test\", backend: b }")
        .route("{ host: api.test, path_prefix: /v2/, backend: b }")
        .route("{ host: seg.test, path_prefix: /a, backend: b }")
        .route("{ backend: a }")
        .backend("a")
        .with("balance: round_robin")
        .server("a1", a.addr)
        .backend("b")
        .with("balance: round_robin")
        .server("b1", b.addr)
        .build();
    TetherHandle::start(&yaml).await
}

async fn get_host(tether: &TetherHandle, host: &str, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let r = raw_exchange(tether.addr, None, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{host}{path}: {}", r.text());
    seen(&r.text(), "upstream")[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_then_path_prefix_first_match_wins() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let tether = start("", &a, &b).await;
    assert_eq!(get_host(&tether, "x.b.test", "/").await, "b");
    assert_eq!(get_host(&tether, "X.B.TEST:8080", "/").await, "b");
    assert_eq!(
        get_host(&tether, "b.test", "/").await,
        "a",
        "a suffix needs a subdomain"
    );
    assert_eq!(get_host(&tether, "api.test", "/v2/users").await, "b");
    assert_eq!(get_host(&tether, "api.test", "/v1/users").await, "a");
    assert_eq!(get_host(&tether, "other.test", "/v2/users").await, "a");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_replaced_for_clients_and_appended_for_trusted_proxies() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let tether = start("trusted_proxies: [127.0.0.50]\n", &a, &b).await;
    let forged = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
    ];

    // An ordinary client cannot claim another address.
    let r = get(tether.addr, ip(9), "/", &forged).await;
    let echo = r.text();
    assert_eq!(seen(&echo, "x-forwarded-for"), ["127.0.0.9"], "{echo}");
    assert_eq!(seen(&echo, "x-real-ip"), ["127.0.0.9"], "{echo}");
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["http"], "{echo}");
    let fwd = seen(&echo, "forwarded");
    assert!(
        fwd.len() == 1 && fwd[0].starts_with("for=127.0.0.9;proto=http"),
        "{echo}"
    );

    // A trusted proxy's chain is kept and extended; the client is the hop it names.
    let r = get(tether.addr, ip(50), "/", &forged).await;
    let echo = r.text();
    assert_eq!(
        seen(&echo, "x-forwarded-for"),
        ["6.6.6.6, 127.0.0.50"],
        "{echo}"
    );
    assert_eq!(seen(&echo, "x-real-ip"), ["6.6.6.6"], "{echo}");
    let fwd = seen(&echo, "forwarded");
    assert!(
        fwd.len() == 1 && fwd[0].starts_with("for=6.6.6.6, for=127.0.0.50"),
        "{echo}"
    );
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_do_not_cross_the_proxy() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let tether = start("", &a, &b).await;
    let r = get(
        tether.addr,
        None,
        "/",
        &[
            ("Connection", "close, x-secret"),
            ("X-Secret", "for this hop only"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("X-Kept", "yes"),
        ],
    )
    .await;
    let echo = r.text();
    for gone in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(seen(&echo, gone).is_empty(), "{gone} forwarded: {echo}");
    }
    assert_eq!(seen(&echo, "x-kept"), ["yes"], "{echo}");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_across_client_connections() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let tether = start("", &a, &b).await;
    const REQUESTS: usize = 50;
    for _ in 0..REQUESTS {
        let r = get(tether.addr, None, "/", &[]).await;
        assert_eq!(r.status, 200);
    }
    // And on one keep-alive client connection.
    let mut s = connect_from(tether.addr, None).await;
    for i in 0..REQUESTS {
        let close = if i + 1 == REQUESTS {
            "close"
        } else {
            "keep-alive"
        };
        let req = format!("GET / HTTP/1.1\r\nHost: t\r\nConnection: {close}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let answered = buf.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert_eq!(answered, REQUESTS);
    let opened = a.connections.load(Ordering::SeqCst);
    println!("{} requests, {opened} upstream connection(s)", 2 * REQUESTS);
    assert!(
        opened <= 2,
        "{opened} upstream connections for sequential requests"
    );
    tether.stop().await;
}

/// One raw request (its head lines after the request line), answered to EOF.
async fn raw(tether: &TetherHandle, line: &str, head: &str) -> RawResponse {
    let req = format!("{line}\r\n{head}Connection: close\r\n\r\n");
    raw_exchange(tether.addr, None, req.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_path_are_read_as_the_server_will_read_them() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let tether = start("", &a, &b).await;

    // An absolute-form target names the host: routed by it, and forwarded with it.
    let r = raw(&tether, "GET http://x.b.test/x HTTP/1.1", "Host: pub\r\n").await;
    let echo = r.text();
    assert_eq!(seen(&echo, "upstream"), ["b"], "{echo}");
    assert_eq!(seen(&echo, "host"), ["x.b.test"], "{echo}");
    assert_eq!(seen(&echo, "path"), ["/x"], "{echo}");

    // HTTP/1.1 needs exactly one Host.
    let r = raw(
        &tether,
        "GET / HTTP/1.1",
        "Host: a.test\r\nHost: x.b.test\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "two Host headers: {}", r.text());
    let r = raw(&tether, "GET / HTTP/1.1", "").await;
    assert_eq!(r.status, 400, "no Host: {}", r.text());

    // Dot segments are resolved before routing, and the server gets the resolved path.
    let r = raw(
        &tether,
        "GET /v2/../v1/users HTTP/1.1",
        "Host: api.test\r\n",
    )
    .await;
    let echo = r.text();
    assert_eq!(seen(&echo, "upstream"), ["a"], "{echo}");
    assert_eq!(seen(&echo, "path"), ["/v1/users"], "{echo}");
    let r = raw(
        &tether,
        "GET /v1/..%2fv2/users HTTP/1.1",
        "Host: api.test\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "escaped slash: {}", r.text());

    // Prefixes match whole segments; a trailing dot does not lose the host's route.
    assert_eq!(get_host(&tether, "seg.test", "/a/x").await, "b");
    assert_eq!(get_host(&tether, "seg.test", "/apple").await, "a");
    assert_eq!(get_host(&tether, "api.test.", "/v2/users").await, "b");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_listener_takes_the_client_from_a_trusted_balancer_only() {
    let a = Upstream::start("a").await;
    let yaml = ConfigBuilder::new()
        .listener("bind: \"127.0.0.1:0\"\n    proxy_protocol: any")
        .listener("bind: \"127.0.0.1:0\"")
        .top("trusted_proxies: [127.0.0.1]")
        .backend("a")
        .server("a1", a.addr)
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let plain = tether.runtime.local_addrs()[1];
    let request = "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    // v1 from the balancer: the client is the one it names.
    let r = raw_exchange(
        tether.addr,
        ip(1),
        format!("PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n{request}").as_bytes(),
    )
    .await;
    let echo = r.text();
    assert_eq!(seen(&echo, "x-forwarded-for"), ["203.0.113.7"], "{echo}");
    // v2, the same.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 1, 0x30, 0x39, 0, 80]);
    v2.extend_from_slice(request.as_bytes());
    let echo = raw_exchange(tether.addr, ip(1), &v2).await.text();
    assert_eq!(seen(&echo, "x-forwarded-for"), ["198.51.100.9"], "{echo}");

    // No header, or one from a peer that is not a trusted proxy: closed unanswered.
    for (from, bytes) in [
        (ip(1), request.to_owned()),
        (
            ip(2),
            format!("PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n{request}"),
        ),
    ] {
        let mut s = connect_from(tether.addr, from).await;
        s.write_all(bytes.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("closed");
        assert!(
            buf.is_empty(),
            "{from:?}: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }

    // A PROXY header on a listener that expects none is not HTTP.
    let r = raw_exchange(
        plain,
        ip(1),
        format!("PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n{request}").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    tether.stop().await;
}

/// An upstream behind tether that wants a PROXY header on every connection: it records
/// what each header said ("v1 203.0.113.7:51234", "v2 LOCAL", ...) and answers each
/// request with the source its connection's header named; it accepts WebSocket upgrades.
struct ProxiedUpstream {
    addr: SocketAddr,
    headers: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ProxiedUpstream {
    async fn start() -> ProxiedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let headers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&headers);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let Some(said) = read_proxy_header(&mut stream).await else {
                        return;
                    };
                    log.lock().unwrap().push(said.clone());
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let said = said.clone();
                        async move {
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(said.clone())));
                            if let Some(key) = req.headers().get("sec-websocket-key") {
                                use base64::Engine;
                                use sha1::Digest;
                                let mut h = sha1::Sha1::new();
                                h.update(key.as_bytes());
                                h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                                let accept =
                                    base64::engine::general_purpose::STANDARD.encode(h.finalize());
                                *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                                let hs = resp.headers_mut();
                                hs.insert("upgrade", "websocket".parse().unwrap());
                                hs.insert("connection", "upgrade".parse().unwrap());
                                hs.insert("sec-websocket-accept", accept.parse().unwrap());
                                *resp.body_mut() = Full::new(Bytes::new());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        ProxiedUpstream { addr, headers }
    }

    fn said(&self) -> Vec<String> {
        self.headers.lock().unwrap().clone()
    }
}

/// Reads a PROXY v1 or v2 header (parsed by `ppp`, not by tether's code) and says what
/// it named; `None` when the connection does not open with one.
async fn read_proxy_header(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 16];
    stream.read_exact(&mut buf[..6]).await.ok()?;
    if &buf[..6] == b"PROXY " {
        buf.truncate(6);
        while !buf.ends_with(b"\r\n") && buf.len() < 108 {
            buf.push(stream.read_u8().await.ok()?);
        }
        let h = ppp::v1::Header::try_from(&buf[..]).ok()?;
        return Some(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => format!("v1 {}:{}", a.source_address, a.source_port),
            ppp::v1::Addresses::Tcp6(a) => format!("v1 [{}]:{}", a.source_address, a.source_port),
            ppp::v1::Addresses::Unknown => "v1 UNKNOWN".to_owned(),
        });
    }
    stream.read_exact(&mut buf[6..]).await.ok()?;
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    buf.resize(16 + len, 0);
    stream.read_exact(&mut buf[16..]).await.ok()?;
    let h = ppp::v2::Header::try_from(&buf[..]).ok()?;
    Some(match (h.command, h.addresses) {
        (ppp::v2::Command::Local, _) => "v2 LOCAL".to_owned(),
        (_, ppp::v2::Addresses::IPv4(a)) => format!("v2 {}:{}", a.source_address, a.source_port),
        (_, other) => format!("v2 {other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_behind_a_proxy_protocol_backend_learn_each_client() {
    let (v2, v1) = (
        ProxiedUpstream::start().await,
        ProxiedUpstream::start().await,
    );
    let yaml = ConfigBuilder::new()
        .admin()
        .route("{ host: v1.test, backend: v1 }")
        .route("{ backend: v2 }")
        .backend("v2")
        .with("proxy_protocol: v2")
        .with("health: { interval: 200ms, timeout: 1s, path: / }")
        .server("s2", v2.addr)
        .backend("v1")
        .with("proxy_protocol: v1")
        .server("s1", v1.addr)
        .build();
    let tether = TetherHandle::start(&yaml).await;

    // Health probes say LOCAL: they are tether's own connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !v2.said().iter().any(|s| s == "v2 LOCAL") {
        assert!(
            std::time::Instant::now() < deadline,
            "no probe: {:?}",
            v2.said()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Two clients, three requests each on one keep-alive connection: each request reaches
    // the server on a connection whose header names its own client, never the other's.
    for last in [2, 3] {
        let mut s = connect_from(tether.addr, ip(last)).await;
        let me = s.local_addr().unwrap();
        for i in 0..3 {
            let close = if i == 2 { "close" } else { "keep-alive" };
            let req = format!("GET /{i} HTTP/1.1\r\nHost: t\r\nConnection: {close}\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
        }
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
        assert_eq!(text.matches(&format!("v2 {me}")).count(), 3, "{text}");
    }
    let named: Vec<String> = v2.said().into_iter().filter(|s| s != "v2 LOCAL").collect();
    assert_eq!(
        named.len(),
        2,
        "one server connection per client connection: {named:?}"
    );

    // A WebSocket upgrade's connection names its client too.
    let ws = ws_connect(tether.addr, "/ws").await;
    let me = ws.local_addr().unwrap();
    assert!(v2.said().contains(&format!("v2 {me}")), "{:?}", v2.said());

    // v1, the same.
    let mut s = connect_from(tether.addr, ip(4)).await;
    let me = s.local_addr().unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: v1.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with(&format!("v1 {me}")), "{text}");
    assert_eq!(tether.server_status("v2", "s2").await["health"], "up");
    tether.stop().await;
}
