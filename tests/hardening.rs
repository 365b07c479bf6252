//! What no client, and no passing trouble at a server, may do to the sessions of others:
//! the findings of the hostile-input probe (issue 12), one test each, real Node
//! `socket.io` servers behind tether on ephemeral ports.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const WS_ONLY: &str = "/socket.io/?EIO=4&transport=websocket";

/// A TCP forwarder in front of a server whose accepting can be stopped, with a backlog of
/// one: once stopped and its queue filled, connects to it time out — a server too busy to
/// take new connections while its established ones go on.
struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Connections parked in the full accept queue.
    parked: Vec<TcpStream>,
}

impl Gate {
    async fn before(server: SocketAddr) -> Gate {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let gate = Arc::clone(&open);
        tokio::spawn(async move {
            loop {
                if !gate.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(server).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Gate {
            addr,
            open,
            parked: Vec::new(),
        }
    }

    /// Stops accepting and fills the accept queue, so the next connects time out.
    async fn stall(&mut self) {
        self.open.store(false, Ordering::Release);
        // The acceptor may be inside one last accept: let it take a connection first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(self.addr))
                .await
            {
                Ok(Ok(s)) => self.parked.push(s),
                _ => return, // the queue is full: connects now hang
            }
        }
        panic!("the gate's accept queue never filled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_never_count_against_a_server() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let tether = TetherHandle::start(&sockets(std::slice::from_ref(&node)).admin().build()).await;
    let mut ws = ws_connect(tether.addr, WS_ONLY).await;
    assert!(ws_read_text(&mut ws).await.starts_with("0{"));
    let sid = get(tether.addr, None, &eio_path(None), &[]).await.sid();
    let path = eio_path(Some(&sid));

    // Malformed chunked bodies, five times (three used to mark the server down).
    for _ in 0..5 {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        );
        let r = raw_exchange(tether.addr, None, req.as_bytes()).await;
        assert_eq!(r.status, 400, "the client's own body: {}", r.text());
    }
    // Clients that give up half-way through a POST body, five times.
    for _ in 0..5 {
        let mut s = connect_from(tether.addr, None).await;
        let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n3");
        s.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let status = tether.server_status("sockets", "node-1").await;
    assert_eq!(status["health"], "up", "{status}");
    assert_eq!(status["avoided"], false, "{status}");
    assert!(
        wait_closed(&mut ws, Duration::from_millis(500))
            .await
            .is_none(),
        "a tunnel on the server was closed"
    );
    let hs = get(tether.addr, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "new sessions still placed: {}", hs.text());
    drop(ws);
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_slow_to_accept_keeps_its_sessions_and_only_loses_new_ones() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let mut gate = Gate::before(node.addr).await;
    let yaml = ConfigBuilder::new()
        .admin()
        .backend("sockets")
        .with("timeouts: { connect: 300ms }")
        .server("gated", gate.addr)
        .build();
    let tether = TetherHandle::start(&yaml).await;

    // Established before the trouble: a WebSocket tunnel and a polling session.
    let mut ws = ws_connect(tether.addr, WS_ONLY).await;
    assert!(ws_read_text(&mut ws).await.starts_with("0{"));
    let hs = get(tether.addr, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "{}", hs.text());
    let sid = hs.sid();

    // The server stops taking new connections: upgrades (each on a new connection) fail.
    gate.stall().await;
    let upgrade = format!(
        "GET {WS_ONLY} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    for _ in 0..4 {
        let r = raw_exchange(tether.addr, None, upgrade.as_bytes()).await;
        assert_eq!(r.status, 504, "{}", r.text());
    }
    let status = tether.server_status("sockets", "gated").await;
    assert_eq!(status["avoided"], true, "passive health noticed: {status}");
    assert_eq!(status["health"], "up", "but did not mark it down: {status}");

    // What was established goes on: the tunnel stays open, the polling session is served
    // over the connection tether already holds.
    assert!(
        wait_closed(&mut ws, Duration::from_millis(500))
            .await
            .is_none(),
        "the established tunnel was closed"
    );
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 1\r\n\r\n3",
        eio_path(Some(&sid))
    );
    let r = raw_exchange(tether.addr, None, req.as_bytes()).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok"),
        "the pinned session"
    );
    drop(ws);
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_cannot_be_driven_by_a_web_page_or_held_by_a_silent_client() {
    let yaml = ConfigBuilder::new()
        .admin()
        .top("limits: { header_read_timeout: 1s }")
        .backend("chat")
        .server("node-1", "127.0.0.1:1")
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let admin = tether.admin.unwrap();
    let send = |req: String| async move { raw_exchange(admin, None, req.as_bytes()).await };

    // A form a foreign page posts (the browser adds Origin / Sec-Fetch-Site).
    let r = send(format!(
        "POST /backends/chat/servers/node-1/maint HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\n\
         Connection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n"
    ))
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = send(format!(
        "POST /reload HTTP/1.1\r\nHost: {admin}\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ))
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        tether.server_status("chat", "node-1").await["state"],
        "ready",
        "nothing changed"
    );
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1.
    let r = send(format!(
        "GET /status HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n\r\n",
        admin.port()
    ))
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // The operator's own page and scripts still work.
    let r = send(format!(
        "POST /backends/chat/servers/node-1/drain HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://{admin}\r\n\
         Connection: close\r\nContent-Length: 0\r\n\r\n"
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        admin_request(admin, "POST", "/backends/chat/servers/node-1/ready")
            .await
            .status,
        200
    );

    // Half a request head, then silence: closed after the header timeout.
    let mut s = connect_from(admin, None).await;
    s.write_all(b"GET /status HTTP/1.1\r\nX-a: ").await.unwrap();
    assert!(
        wait_closed(&mut s, Duration::from_secs(10)).await.is_some(),
        "a silent half head holds an admin connection"
    );
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failing_requests_is_not_a_flood_of_log_lines() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    // A server nobody listens on: every request fails (502, then 503 once it is down).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tether.yaml");
    std::fs::write(
        &file,
        ConfigBuilder::new()
            .backend("sockets")
            .server("dead", dead_addr)
            .build(),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tether binary");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), stdout.next_line())
        .await
        .expect("tether printed its address")
        .unwrap()
        .unwrap();
    let (addr, _) =
        listening_addr(&line).unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        clients.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..50 {
                statuses.push(get(addr, None, &eio_path(None), &[]).await.status);
            }
            statuses
        });
    }
    let mut failed = 0;
    while let Some(statuses) = clients.join_next().await {
        failed += statuses
            .unwrap()
            .into_iter()
            .filter(|s| *s == 502 || *s == 503)
            .count();
    }
    assert_eq!(failed, 400, "every request failed");
    tether_kit::signal::send_signal(child.id().unwrap(), "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let log = log.await.unwrap();
    let lines = log.lines().filter(|l| l.contains("request failed")).count();
    println!("400 failed requests, {lines} log lines");
    assert!(
        (1..=20).contains(&lines),
        "{lines} 'request failed' lines for 400 failures:\n{log}"
    );
}

/// A raw WebSocket handshake with these header lines (after `Host`), answered as is.
async fn upgrade_with(addr: SocketAddr, lines: &str) -> RawResponse {
    let req = format!("GET {WS_ONLY} HTTP/1.1\r\nHost: t\r\n{lines}\r\n");
    raw_exchange(addr, None, req.as_bytes()).await
}

const GOOD_KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshakes_are_held_to_the_rfc_at_both_ends() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let tether = TetherHandle::start(&sockets(std::slice::from_ref(&node)).build()).await;
    let upgrade = "Connection: Upgrade, close\r\nUpgrade: websocket\r\n";

    let r = upgrade_with(
        tether.addr,
        &format!("{upgrade}Sec-WebSocket-Version: 8\r\n{GOOD_KEY}"),
    )
    .await;
    assert_eq!(r.status, 400, "version 8: {}", r.text());
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    for key in [
        "abc",
        "dGhlIHNhbXBsZSBub25jZQ",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let r = upgrade_with(
            tether.addr,
            &format!("{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"),
        )
        .await;
        assert_eq!(r.status, 400, "key {key:?}: {}", r.text());
    }
    let r = upgrade_with(
        tether.addr,
        &format!("Connection: Upgrade, close\r\nUpgrade: h2c, websocket\r\nSec-WebSocket-Version: 13\r\n{GOOD_KEY}"),
    )
    .await;
    assert_eq!(r.status, 400, "h2c smuggled along: {}", r.text());
    // A valid one still opens.
    let mut ws = ws_connect(tether.addr, WS_ONLY).await;
    assert!(ws_read_text(&mut ws).await.starts_with("0{"));
    drop(ws);
    tether.stop().await;

    // A server that "switches protocols" without completing the handshake gets no tunnel.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = fake.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: tcp\r\n\r\nraw bytes")
                    .await;
                let _ = tokio::io::copy(&mut tokio::io::empty(), &mut s).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let tether = TetherHandle::start(
        &ConfigBuilder::new()
            .backend("sockets")
            .server("fake", fake_addr)
            .build(),
    )
    .await;
    let r = upgrade_with(
        tether.addr,
        &format!("{upgrade}Sec-WebSocket-Version: 13\r\n{GOOD_KEY}"),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.text().contains("raw bytes"), "{}", r.text());
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_parameters_a_server_could_read_otherwise_are_refused() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let tether = TetherHandle::start(&sockets(std::slice::from_ref(&node)).build()).await;
    for (query, body) in [
        (
            "EIO=4&transport=polling&EIO=5",
            r#"{"code":3,"message":"Bad request"}"#,
        ),
        (
            "EIO=4&transport=polling&%45IO=4",
            r#"{"code":3,"message":"Bad request"}"#,
        ),
        (
            "EIO=4&transport=polling&transport=websocket",
            r#"{"code":3,"message":"Bad request"}"#,
        ),
        (
            "EIO=9&transport=polling",
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "EIO=4&transport=carrier-pigeon",
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
    ] {
        let r = get(tether.addr, None, &format!("/socket.io/?{query}"), &[]).await;
        assert_eq!((r.status, r.text().as_str()), (400, body), "{query}");
        assert_eq!(
            r.header("x-node-id"),
            None,
            "{query}: answered by tether, not the node"
        );
    }
    let stats = tether.store.load().backends[0].servers[0].stats.clone();
    assert_eq!(stats.load(), 0, "no session reached the node uncounted");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_or_oversized_message_is_cut_off_and_held_against_nobody() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let yaml = sockets(std::slice::from_ref(&node))
        .admin()
        .top("limits: { body_read_timeout: 1s, max_payload: 2048 }")
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let sid = get(tether.addr, None, &eio_path(None), &[]).await.sid();
    let path = eio_path(Some(&sid));

    // Says 2,000 bytes (within max_payload), sends one every 300 ms.
    let mut s = connect_from(tether.addr, None).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 2000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let trickle = async {
        loop {
            if s.write_all(b"4").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            _ = trickle => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    })
    .await;
    let cut_after = started.elapsed();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    println!("trickled message cut after {cut_after:?}");
    assert!(
        cut_after < Duration::from_secs(5),
        "a trickled body held its connection for {cut_after:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // Larger than max_payload, said up front: 413 before the node sees it.
    let big = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5000\r\n\r\n{}",
        "4".repeat(5000)
    );
    let r = raw_exchange(tether.addr, None, big.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text());
    // ... or found out on the way (chunked).
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n{}\r\n0\r\n\r\n",
        "4".repeat(4096)
    );
    let r = raw_exchange(tether.addr, None, chunked.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text());

    let status = tether.server_status("sockets", "node-1").await;
    assert_eq!(status["health"], "up", "{status}");
    assert_eq!(status["avoided"], false, "{status}");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_waits_at_the_cap_and_harms_no_server() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let yaml = sockets(std::slice::from_ref(&node))
        .admin()
        .with("health: { path: /health, interval: 200ms, timeout: 1s, rise: 1, fall: 2 }")
        .top("limits: { max_connections: 40, header_read_timeout: 1s }")
        .build();
    let tether = TetherHandle::start(&yaml).await;
    assert_eq!(tether.status().await["connections"]["max"], 40);

    // 100 connections that never send a byte, from one address.
    let flooder = Some(std::net::IpAddr::from([127, 0, 0, 66]));
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(connect_from(tether.addr, flooder).await);
    }
    let started = std::time::Instant::now();
    // Each is closed a header timeout after tether accepts it; at most 40 are accepted
    // at a time, so they close in rounds instead of all after one timeout.
    let mut closes = tokio::task::JoinSet::new();
    for mut s in flood {
        closes.spawn(async move {
            wait_closed(&mut s, Duration::from_secs(20)).await;
            started.elapsed()
        });
    }
    let r = get(tether.addr, None, &eio_path(None), &[]).await;
    let (status, served_after) = (r.status, started.elapsed());
    let mut closed = Vec::new();
    while let Some(t) = closes.join_next().await {
        closed.push(t.unwrap());
    }
    let first_round = closed
        .iter()
        .filter(|t| **t < Duration::from_millis(1700))
        .count();
    println!(
        "flood of 100 idle connections, cap 40: {first_round} closed in the first round, \
         the last after {:?}; a client behind them served after {served_after:?}",
        closed.iter().max().unwrap()
    );
    assert!(
        first_round <= 40,
        "{first_round} accepted at once past a cap of 40"
    );
    assert_eq!(status, 200, "the client behind the flood is served");
    let server = tether.server_status("sockets", "node-1").await;
    assert_eq!(server["health"], "up", "{server}");
    assert_eq!(server["avoided"], false, "{server}");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_what_belongs_to_everyone() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let yaml = sockets(std::slice::from_ref(&node))
        .route("{ path_prefix: /metrics, deny: true }")
        .route("{ backend: sockets }")
        .top(
            "limits:\n  per_client:\n    connections: 20\n    handshakes: { per_second: 5, burst: 10 }\n    deny: [127.0.0.99]",
        )
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let greedy = Some(std::net::IpAddr::from([127, 0, 0, 77]));
    let other = Some(std::net::IpAddr::from([127, 0, 0, 78]));

    // Handshakes: a burst of 10, then 5 a second.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = get(tether.addr, greedy, &eio_path(None), &[]).await;
        if r.status == 429 {
            assert!(r.header("retry-after").is_some(), "429 says when to retry");
        }
        statuses.push(r.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    println!("30 handshakes from one address: {ok} placed, {limited} told to wait");
    assert!((10..=13).contains(&ok), "{statuses:?}");
    assert_eq!(ok + limited, 30, "{statuses:?}");
    assert_eq!(
        get(tether.addr, other, &eio_path(None), &[]).await.status,
        200,
        "another address is not held to the first one's spending"
    );

    // Connections: 20 at once per address; of 21, one is closed at once (which one
    // depends on the order their tasks run in), the others stay.
    let hoarder = Some(std::net::IpAddr::from([127, 0, 0, 79]));
    let mut conns = tokio::task::JoinSet::new();
    for _ in 0..21 {
        let mut s = connect_from(tether.addr, hoarder).await;
        conns.spawn(async move {
            let closed = wait_closed(&mut s, Duration::from_secs(3)).await.is_some();
            (closed, s)
        });
    }
    let mut closed = 0;
    let mut held = Vec::new();
    while let Some(r) = conns.join_next().await {
        let (was_closed, s) = r.unwrap();
        closed += usize::from(was_closed);
        held.push(s);
    }
    assert_eq!(closed, 1, "21 connections from one address, a cap of 20");
    let r = get(tether.addr, other, &eio_path(None), &[]).await;
    assert_eq!(r.status, 200, "others still connect");
    drop(held);

    // Deny lists and deny rules.
    let mut denied = connect_from(tether.addr, Some(std::net::IpAddr::from([127, 0, 0, 99]))).await;
    assert!(wait_closed(&mut denied, Duration::from_secs(5))
        .await
        .is_some());
    assert_eq!(get(tether.addr, other, "/metrics", &[]).await.status, 403);
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stalls_its_body_does_not_hold_the_client() {
    // Answers every request with a head promising 100 bytes, sends 3, then nothing.
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stalling.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = stalling.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let tether = TetherHandle::start(
        &ConfigBuilder::new()
            .backend("b")
            .with("timeouts: { response: 1s }")
            .server("stalling", addr)
            .build(),
    )
    .await;
    let mut s = connect_from(tether.addr, None).await;
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let closed = wait_closed(&mut s, Duration::from_secs(10)).await;
    println!("a stalled body closed after {closed:?}");
    assert!(
        closed.is_some_and(|d| d < Duration::from_secs(5)),
        "the client was held by a stalled body: {closed:?}"
    );
    tether.stop().await;
}
