//! Hostile input and floods while real clients work: a 300-client `socket.io-client` swarm
//! (tests/node/soak.js, from 127.0.0.2–11) keeps acking echoes through tether in front of
//! three Node `socket.io` servers on a real Redis, while other addresses (127.0.1.x) try
//! everything issue 12 lists. The swarm must see no failure and no server may be marked
//! down or avoided.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn attacker(last: u8) -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, 1, last]))
}

fn swarm_addresses() -> Vec<String> {
    (2..12).map(|i| format!("127.0.0.{i}")).collect()
}

/// The swarm saw nothing go wrong, and every server is up and not avoided.
async fn assert_unharmed(fin: &Value, tether: &TetherHandle) {
    assert_eq!(n(&fin["connectedNow"]), 300, "{fin}");
    assert_eq!(n(&fin["disconnects"]), 0, "{fin}");
    assert_eq!(n(&fin["connectErrors"]), 0, "{fin}");
    assert_eq!(n(&fin["sessionUnknown"]), 0, "{fin}");
    assert_eq!(n(&fin["ackFailures"]), 0, "{fin}");
    assert!(n(&fin["acksOk"]) > 0, "{fin}");
    let status = tether.status().await;
    for server in status["backends"][0]["servers"].as_array().unwrap() {
        assert_eq!(server["health"], "up", "{status}");
        assert_eq!(server["avoided"], false, "{status}");
    }
}

/// One request on a fresh connection from `from`; its status, or 0 when the connection
/// closed without an answer.
async fn status_of(addr: SocketAddr, from: Option<IpAddr>, request: &[u8]) -> u16 {
    let mut s = connect_from(addr, from).await;
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    parse_response(&buf).map_or(0, |r| r.status)
}

/// How long a connection that sends `bytes` (then, every `every`, one more byte of
/// `drip`) stays open, up to `limit`.
async fn held_open(
    addr: SocketAddr,
    from: Option<IpAddr>,
    bytes: &[u8],
    drip: Option<(Duration, u8)>,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut s = connect_from(addr, from).await;
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 4096];
    loop {
        let wait = drip.map_or(limit, |(every, _)| every);
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {} // an answer (400, 408): the close follows
            Err(_) => {
                if started.elapsed() >= limit {
                    return started.elapsed();
                }
                if let Some((_, byte)) = drip {
                    if s.write_all(&[byte]).await.is_err() {
                        return started.elapsed();
                    }
                }
            }
        }
    }
}

async fn h2_idle(addr: SocketAddr, ca_pem: &str, limit: Duration) -> Duration {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = connect_from(addr, attacker(3)).await;
    let mut tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let started = Instant::now();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_keeps_working_through_every_kind_of_bad_input() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3).await;
    let certs = tempfile::tempdir().unwrap();
    let paths = tether::tls::dev_ca::generate_dev_cert(&["localhost"])
        .unwrap()
        .write(certs.path())
        .unwrap();
    let ca_pem = std::fs::read_to_string(&paths.ca).unwrap();
    let yaml = cluster
        .config()
        .admin()
        .tls_listener(paths.cert.display(), paths.key.display())
        .listener("bind: \"127.0.0.1:0\"\n    proxy_protocol: v1")
        .listener("bind: \"127.0.0.1:0\"")
        .top("trusted_proxies: [127.0.0.1]\nlimits: { header_read_timeout: 2s, body_read_timeout: 2s, max_payload: 100000 }")
        .with("cookie:\n  secret: \"matrix-test-secret-0123456789\"\n  max_age: 1s")
        .with("health: { path: /health, interval: 500ms, timeout: 2s, rise: 1, fall: 3 }")
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let addrs = tether.runtime.local_addrs();
    let (tls_addr, proxied, plain) = (addrs[0], addrs[1], addrs[2]);
    let (soak, ready) = Soak::start(json!({
        "url": format!("http://{plain}"), "clients": 300, "durationMs": 60000,
        "localAddresses": swarm_addresses(),
    }))
    .await;
    assert_eq!(n(&ready["connected"]), 300, "{ready}");

    let sid = get(plain, attacker(9), &eio_path(None), &[]).await.sid();
    let post_head = |len: usize| {
        format!(
            "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {len}\r\n\r\n",
            eio_path(Some(&sid))
        )
    };
    let handshake = format!(
        "GET {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n",
        eio_path(None)
    );
    let limit = Duration::from_secs(8);

    // Everything at once, from attacker addresses.
    let slowloris = async {
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(held_open(
                plain,
                attacker(1),
                b"GET / HTTP/1.1\r\nHost: t\r\nX-a: ",
                Some((Duration::from_millis(300), b'a')),
                limit,
            ));
        }
        let times = futures_join(held).await;
        times.into_iter().max().unwrap()
    };
    let trickle_head = post_head(50);
    let trickle = held_open(
        plain,
        attacker(2),
        trickle_head.as_bytes(),
        Some((Duration::from_millis(300), b'4')),
        limit,
    );
    let h2 = h2_idle(tls_addr, &ca_pem, limit);
    let big_head = async {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-big: {}\r\n\r\n",
            "x".repeat(1 << 20)
        );
        status_of(plain, attacker(4), head.as_bytes()).await
    };
    let many_headers = async {
        let mut head = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
        for i in 0..10_000 {
            head.push_str(&format!("X-{i}: y\r\n"));
        }
        head.push_str("\r\n");
        status_of(plain, attacker(5), head.as_bytes()).await
    };
    let (slowloris, trickle, h2, big_head, many_headers) =
        tokio::join!(slowloris, trickle, h2, big_head, many_headers);
    println!(
        "slowloris held {slowloris:?}, trickled body {trickle:?}, idle HTTP/2 {h2:?}, \
         1 MB head {big_head}, 10,000 headers {many_headers}"
    );
    assert!(slowloris < limit, "slowloris heads held {slowloris:?}");
    assert!(trickle < limit, "a trickled body held {trickle:?}");
    assert!(h2 < limit, "an idle HTTP/2 connection held {h2:?}");
    assert_eq!(big_head, 431);
    assert_eq!(many_headers, 431);

    let cl_te = status_of(
        plain,
        attacker(6),
        format!("{handshake}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await;
    let two_cl = status_of(
        plain,
        attacker(6),
        format!("{handshake}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab").as_bytes(),
    )
    .await;
    let oversized = status_of(
        plain,
        attacker(7),
        format!("{}{}", post_head(200_000), "4".repeat(1000)).as_bytes(),
    )
    .await;
    let dup_eio = status_of(
        plain,
        attacker(7),
        b"GET /socket.io/?EIO=4&transport=polling&EIO=5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let bad_key = status_of(
        plain,
        attacker(8),
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, close\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\n\r\n",
    )
    .await;
    let proxy_on_plain = status_of(
        plain,
        attacker(8),
        format!("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n{handshake}\r\n").as_bytes(),
    )
    .await;
    let plain_on_proxy = status_of(
        proxied,
        Some(IpAddr::from([127, 0, 0, 1])),
        format!("{handshake}\r\n").as_bytes(),
    )
    .await;
    println!(
        "CL+TE {cl_te}, two Content-Lengths {two_cl}, oversized POST {oversized}, duplicate EIO \
         {dup_eio}, bad WebSocket key {bad_key}, PROXY on a plain listener {proxy_on_plain}, \
         none on a PROXY listener {plain_on_proxy}"
    );
    assert_eq!(two_cl, 400);
    assert!(cl_te == 400 || cl_te == 200, "{cl_te}");
    assert_eq!(oversized, 413);
    assert_eq!(dup_eio, 400);
    assert_eq!(bad_key, 400);
    assert_eq!(proxy_on_plain, 400);
    assert_eq!(plain_on_proxy, 0, "closed unanswered");

    // A forged cookie steers nothing; a stale genuine one neither.
    let forged = get(
        plain,
        attacker(10),
        &eio_path(None),
        &[(
            "Cookie",
            "tether=node-1.6750a3e4.00000000000000000000000000000000",
        )],
    )
    .await;
    assert_eq!(forged.status, 200);
    let genuine = get(plain, attacker(11), &eio_path(None), &[]).await;
    let cookie = genuine
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stale = post_with_cookie(plain, &genuine.sid(), &cookie).await;
    println!("forged cookie: placed normally; a stale cookie on a pinned session: {stale}");
    assert_eq!(
        stale, 200,
        "the sid still finds its session; the cookie adds nothing"
    );

    let fin = soak.finish().await;
    println!(
        "swarm through it all: {} acks, {} disconnects, {} ack failures",
        fin["acksOk"], fin["disconnects"], fin["ackFailures"]
    );
    assert_unharmed(&fin, &tether).await;
    tether.stop().await;
}

async fn post_with_cookie(addr: SocketAddr, sid: &str, cookie: &str) -> u16 {
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nCookie: {cookie}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 1\r\n\r\n3",
        eio_path(Some(sid))
    );
    status_of(addr, attacker(11), req.as_bytes()).await
}

async fn futures_join<F: std::future::Future<Output = Duration> + Send + 'static>(
    futures: Vec<F>,
) -> Vec<Duration> {
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The value of a counter in Prometheus text, summed over the series that match `labels`.
fn metric(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_held_to_their_address_and_leave_no_trace() {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tether.yaml");
    std::fs::write(&file, cluster.config().admin().build()).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tether binary");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr: Option<SocketAddr> = None;
    let mut admin: Option<SocketAddr> = None;
    while addr.is_none() || admin.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some((a, _)) = listening_addr(&line) {
            addr = Some(a);
        } else if let Some(a) = line.strip_prefix("tether admin on http://") {
            admin = a.parse().ok();
        }
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    let pid = child.id().unwrap();

    let (soak, ready) = Soak::start(json!({
        "url": format!("http://{addr}"), "clients": 300, "durationMs": 90000,
        "localAddresses": swarm_addresses(),
        // The floods and the swarm share two cores with tether: an ack may be slow, and
        // what must not happen is one lost (an echo stalled 10 s is one).
        "ackTimeoutMs": 10_000,
    }))
    .await;
    assert_eq!(n(&ready["connected"]), 300, "{ready}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);

    let flood_for = Duration::from_secs(10);
    // One address opens connections as fast as it can (keeping up to 3,000 of them).
    let connections = async {
        let started = Instant::now();
        let mut opened = 0u64;
        let mut held = std::collections::VecDeque::new();
        while started.elapsed() < flood_for {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(attacker(20).unwrap(), 0))
                .unwrap();
            if let Ok(s) = socket.connect(addr).await {
                opened += 1;
                held.push_back(s);
                if held.len() > 3000 {
                    held.pop_front();
                }
            }
        }
        opened
    };
    // Another does handshakes as fast as it can, eight at a time.
    let handshakes = async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            set.spawn(async move {
                let started = Instant::now();
                let (mut ok, mut limited) = (0u64, 0u64);
                while started.elapsed() < flood_for {
                    match status_of(
                        addr,
                        attacker(21),
                        format!(
                            "GET {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                            eio_path(None)
                        )
                        .as_bytes(),
                    )
                    .await
                    {
                        200 => ok += 1,
                        429 => limited += 1,
                        _ => {}
                    }
                }
                (ok, limited)
            });
        }
        let (mut ok, mut limited) = (0, 0);
        while let Some(r) = set.join_next().await {
            let (o, l) = r.unwrap();
            ok += o;
            limited += l;
        }
        (ok, limited)
    };
    let peak = async {
        let mut peak = 0;
        let started = Instant::now();
        while started.elapsed() < flood_for {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    };
    let (opened, (placed, told_to_wait), peak) = tokio::join!(connections, handshakes, peak);

    // Memory back within 20 % of what it was, within 30 s.
    let settled = Instant::now();
    let mut after = rss_kib(pid);
    while after as f64 > before as f64 * 1.2 && settled.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = rss_kib(pid);
    }
    let metrics = admin_request(admin, "GET", "/metrics").await.text();
    let refused = metric(
        &metrics,
        "tether_clients_limited_total",
        "what=\"connections\"",
    );
    println!(
        "flood: {opened} connections opened by one address, {refused} refused by its cap; \
         {placed} handshakes placed and {told_to_wait} told to wait (429) for another; \
         tether RSS {before} KiB before, {peak} KiB at peak, {after} KiB {:?} after",
        settled.elapsed()
    );
    let fin = soak.finish().await;
    println!(
        "swarm through the floods: {} acks, {} disconnects, {} ack failures",
        fin["acksOk"], fin["disconnects"], fin["ackFailures"]
    );
    assert_eq!(n(&fin["connectedNow"]), 300, "{fin}");
    assert_eq!(n(&fin["disconnects"]), 0, "{fin}");
    assert_eq!(n(&fin["connectErrors"]), 0, "{fin}");
    assert_eq!(n(&fin["ackFailures"]), 0, "{fin}");
    let status: Value =
        serde_json::from_str(&admin_request(admin, "GET", "/status").await.text()).unwrap();
    for server in status["backends"][0]["servers"].as_array().unwrap() {
        assert_eq!(server["health"], "up", "{status}");
        assert_eq!(server["avoided"], false, "{status}");
    }
    assert!(refused > 0, "the connection flood was not limited");
    assert!(told_to_wait > 0, "the handshake flood was not limited");
    assert!(
        placed <= 1000 + 100 * 12,
        "{placed} handshakes placed: more than the bucket allows"
    );
    assert!(
        after as f64 <= before as f64 * 1.2,
        "RSS {after} KiB 30 s after the flood, {before} KiB before"
    );
    tether_kit::signal::send_signal(pid, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}
