//! Zero-downtime binary upgrade (`tether run --takeover PATH`) of the real binary, in
//! front of real Node socket.io servers and socket.io-client swarms: the new process
//! takes the listening sockets and the learned sid table, the old one drains and exits
//! when its last WebSocket tunnel ends; no request fails, no sid is unknown.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;
use tokio::process::{Child, Command};

/// `tether run --config FILE --takeover SOCK` as a child process.
struct Proc {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    _stdout: StderrTail,
    log: StderrTail,
}

impl Proc {
    async fn start(name: &str, config: &Path, sock: &Path) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["run", "--config"])
            .arg(config)
            .arg("--takeover")
            .arg(sock)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the tether binary");
        let log = StderrTail::follow(name, child.stderr.take().expect("stderr"));
        let stdout = StderrTail::follow(
            &format!("{name} stdout"),
            child.stdout.take().expect("stdout"),
        );
        let line = stdout
            .wait_for(0, &["tether listening on "], Duration::from_secs(30))
            .await;
        let (addr, _) = listening_addr(&line).unwrap_or_else(|| panic!("{line:?}"));
        let line = stdout
            .wait_for(0, &["tether admin on "], Duration::from_secs(30))
            .await;
        let admin = line
            .trim_start_matches("tether admin on http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
        Proc {
            child,
            addr,
            admin,
            _stdout: stdout,
            log,
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("tether exits in time")
            .expect("waiting for tether")
    }

    fn signal(&self, sig: &str) {
        tether_kit::signal::send_signal(self.child.id().expect("running"), sig);
    }
}

/// The sum of a counter over all its label sets, from `/metrics`.
async fn counter(admin: SocketAddr, name: &str) -> f64 {
    let r = admin_request(admin, "GET", "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Statuses of the access log's request lines (both processes append to the same file),
/// and how many lines could not be read as JSON.
fn access_statuses(path: &Path) -> (std::collections::BTreeMap<u64, u64>, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by = std::collections::BTreeMap::new();
    let mut unreadable = 0;
    for line in text.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                if let Some(s) = v["status"].as_u64() {
                    *by.entry(s).or_default() += 1;
                }
            }
            Err(_) => unreadable += 1,
        }
    }
    (by, unreadable)
}

/// Reads one response (Content-Length or chunked) from a kept-alive connection.
async fn read_one(stream: &mut tokio::net::TcpStream) -> RawResponse {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let done = |buf: &[u8]| -> bool {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body = &buf[end + 4..];
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            return body.len() >= len;
        }
        body.ends_with(b"0\r\n\r\n")
    };
    while !done(&buf) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_response(&buf).expect("a response")
}

async fn handshake_on(stream: &mut tokio::net::TcpStream, addr: SocketAddr) -> RawResponse {
    use tokio::io::AsyncWriteExt;
    let req = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\n\r\n", eio_path(None));
    stream.write_all(req.as_bytes()).await.expect("write");
    read_one(stream).await
}

async fn wait_until<F: FnMut() -> bool>(within: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_under_a_swarm_loses_no_request_no_session_and_no_websocket() {
    let _heavy = HEAVY.lock().await;
    // Pings every 2 s end each long poll soon; a generous timeout keeps sessions alive on
    // a loaded machine.
    let opts = ["--ping-interval", "2000", "--ping-timeout", "20000"];
    let nodes = vec![
        NodeServer::spawn("node-1", None, &opts).await,
        NodeServer::spawn("node-2", None, &opts).await,
        NodeServer::spawn("node-3", None, &opts).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tether.sock");
    let access = dir.path().join("access.log");
    let config = dir.path().join("tether.yaml");
    // No cookie: only the learned sid table keeps a polling session on its node.
    let yaml = sockets(&nodes)
        .admin()
        .top("shutdown_grace: 30s")
        .top(&format!(
            "access_log: {{ path: \"{}\", format: json }}",
            access.display()
        ))
        .build();
    assert!(!yaml.contains("cookie"), "{yaml}");
    std::fs::write(&config, yaml).unwrap();

    let mut a = Proc::start("tether A", &config, &sock).await;
    a.log
        .wait_for(0, &["takeover socket listening"], Duration::from_secs(10))
        .await;
    assert!(
        sock.exists(),
        "A listens on the takeover socket from the start"
    );

    // An operator state set through A's admin API: node-3 takes no new sessions.
    let r = admin_request(a.admin, "POST", "/backends/sockets/servers/node-3/drain").await;
    assert_eq!(r.status, 200, "{}", r.text());

    let url = format!("http://{}", a.addr);
    // Clients come from 16 loopback addresses, as from many hosts: one address alone
    // would be held to one client's request rate (`limits.per_client`).
    let from = |first: u32| -> Vec<String> {
        (first..first + 8).map(|i| format!("127.0.0.{i}")).collect()
    };
    let soak = |transports: serde_json::Value, first: u32| {
        serde_json::json!({
            "url": url, "clients": 150, "durationMs": 90000, "emitEveryMs": 200,
            "ackTimeoutMs": 10000, "connectConcurrency": 30, "transports": transports,
            "localAddresses": from(first),
        })
    };
    let (mut polling, ready_p) = Soak::start(soak(serde_json::json!(["polling"]), 10)).await;
    let (mut ws, ready_w) =
        Soak::start(soak(serde_json::json!(["polling", "websocket"]), 20)).await;
    assert_eq!(ready_p["connected"], 150, "{ready_p}");
    assert_eq!(ready_w["connected"], 150, "{ready_w}");
    // Acks flow through A for a moment; every WebSocket client has upgraded.
    let mut before_w = ws.report().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while before_w["upgraded"] != 150 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        before_w = ws.report().await;
    }
    assert_eq!(before_w["upgraded"], 150, "{before_w}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_p = polling.report().await;
    let before_w = ws.report().await;
    assert!(before_p["acksOk"].as_u64().unwrap() > 0, "{before_p}");
    let unknown_a = counter(a.admin, "tether_engineio_sid_unknown_total").await;
    let handshakes_before = access_statuses(&access);
    // Keep-alive connections A accepted (one request answered on each), idle at the
    // hand-over: their clients' next request is a handshake that A answers.
    let mut kept = Vec::new();
    for i in 0..20u8 {
        let mut s = connect_from(a.addr, Some([127, 0, 0, 40 + i].into())).await;
        let r = handshake_on(&mut s, a.addr).await;
        assert_eq!(r.status, 200, "{}", r.text());
        kept.push(s);
    }

    // The upgrade: B with the same config and the same flag.
    let a_mark = a.log.mark();
    let t0 = Instant::now();
    let mut b = Proc::start("tether B", &config, &sock).await;
    let bound = t0.elapsed();
    assert_eq!(b.addr, a.addr, "B serves on A's port (the same socket)");
    assert_eq!(b.admin, a.admin, "and on A's admin port");
    a.log
        .wait_for(
            a_mark,
            &["the new process serves; this one stops accepting"],
            Duration::from_secs(10),
        )
        .await;
    let go = t0.elapsed();
    // A handshake on a connection A kept: answered by A, which closes the connection
    // after it; the client's next request, on a new connection, reaches B, which must
    // know the session already.
    let raced: Vec<_> = kept
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let hs = handshake_on(&mut s, a.addr).await;
                assert_eq!(hs.status, 200, "{}", hs.text());
                let close = hs
                    .header("connection")
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                assert_eq!(close, "close", "A answers with Connection: close");
                let sid = hs.sid();
                let next = get(a.addr, None, &eio_path(Some(&sid)), &[]).await;
                (next.status, next.text())
            })
        })
        .collect();
    for r in raced {
        let (status, text) = r.await.unwrap();
        assert_eq!(
            status, 200,
            "a session A started during the hand-over is known to B: {text}"
        );
    }
    let took = b
        .log
        .wait_for(
            0,
            &["received the listening sockets and sessions"],
            Duration::from_secs(5),
        )
        .await;
    a.log
        .wait_for(
            a_mark,
            &["HTTP connections drained; hand-over complete"],
            Duration::from_secs(20),
        )
        .await;
    let drained = t0.elapsed();
    b.log
        .wait_for(0, &["takeover socket listening"], Duration::from_secs(5))
        .await;
    assert_eq!(
        server_status_at(b.admin, "sockets", "node-3").await["state"],
        "draining",
        "the state set through A's admin API holds in B"
    );

    // New connections are B's: A accepts no more.
    let hs = get(b.addr, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "{}", hs.text());

    // Polling sessions cross to B (A closes their idle connections) and keep going.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_p = polling.report().await;
    let after_w = ws.report().await;
    let unknown_b = counter(b.admin, "tether_engineio_sid_unknown_total").await;
    assert!(a.running(), "A still holds the WebSocket tunnels");
    println!("B took over: {took}");
    println!(
        "hand-over: B bound after {bound:?}, A stopped accepting after {go:?}, A's HTTP connections drained after {drained:?}"
    );
    println!("polling swarm after the hand-over: {after_p}");
    println!("websocket swarm after the hand-over: {after_w}");
    for (name, before, after) in [
        ("polling", &before_p, &after_p),
        ("websocket", &before_w, &after_w),
    ] {
        assert_eq!(after["disconnects"], 0, "{name}: {after}");
        assert_eq!(after["sessionUnknown"], 0, "{name}: {after}");
        assert_eq!(after["connectErrors"], 0, "{name}: {after}");
        assert_eq!(after["ackFailures"], 0, "{name}: {after}");
        assert_eq!(
            after["moved"], 0,
            "{name}: every session on its node: {after}"
        );
        assert_eq!(after["connectedNow"], 150, "{name}: {after}");
        assert!(
            after["acksOk"].as_u64().unwrap() > before["acksOk"].as_u64().unwrap() + 150,
            "{name}: acks flow across the hand-over: {before} → {after}"
        );
    }
    assert_eq!(unknown_a, 0.0, "A: tether_engineio_sid_unknown_total");
    assert_eq!(unknown_b, 0.0, "B: tether_engineio_sid_unknown_total");

    // A exits when its last tunnel ends, not before: the WebSocket clients leave.
    assert!(a.running());
    let t_ws = Instant::now();
    let ws_final = ws.finish().await;
    let ws_gone = t_ws.elapsed();
    let status = a.wait(Duration::from_secs(10)).await;
    let a_exit = t_ws.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        a_exit < Duration::from_secs(5),
        "A exits once its tunnels end, well within its 30 s grace: {a_exit:?}"
    );
    assert_eq!(ws_final["disconnects"], 0, "{ws_final}");
    assert!(sock.exists(), "A left B's takeover socket in place");

    // After A is gone: the polling swarm goes on through B, and new clients connect.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fresh = swarm(serde_json::json!({
        "url": url, "clients": 30, "broadcast": false, "holdMs": 0, "timeoutMs": 20000,
        "localAddresses": from(30),
    }))
    .await;
    assert_eq!(fresh["connected"], 30, "{fresh}");
    let p_final = polling.finish().await;
    assert_eq!(p_final["disconnects"], 0, "{p_final}");
    assert_eq!(p_final["sessionUnknown"], 0, "{p_final}");
    assert_eq!(p_final["ackFailures"], 0, "{p_final}");
    assert_eq!(p_final["moved"], 0, "{p_final}");
    assert_eq!(
        counter(b.admin, "tether_engineio_sid_unknown_total").await,
        0.0
    );
    // Every request either tether answered, from its access log.
    wait_until(Duration::from_secs(5), "access log written", || {
        access_statuses(&access).0.values().sum::<u64>() > handshakes_before.0.values().sum::<u64>()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (statuses, unreadable) = access_statuses(&access);
    println!(
        "access log (both processes): {statuses:?}, {unreadable} unreadable line(s); A exited {a_exit:?} after the WebSocket swarm was told to stop ({ws_gone:?} for it to report and close); swarm totals: polling acks {}, websocket acks {}",
        p_final["acksOk"], ws_final["acksOk"]
    );
    let failed: u64 = statuses
        .iter()
        .filter(|(s, _)| **s >= 400)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(failed, 0, "no request failed: {statuses:?}");

    b.signal("TERM");
    let status = b.wait(Duration::from_secs(35)).await;
    assert!(status.success());
    assert!(!sock.exists(), "B removed its own takeover socket on exit");
}

/// A process that connects and never says `go` (here: hangs up after reading) changes
/// nothing: the old one keeps serving and can still be taken over; a stale socket file
/// is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_takeover_leaves_the_old_process_serving() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tether.sock");
    // A stale socket file: nothing listens on it.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let config = dir.path().join("tether.yaml");
    std::fs::write(
        &config,
        sockets(std::slice::from_ref(&node))
            .admin()
            .top("shutdown_grace: 2s")
            .build(),
    )
    .unwrap();
    let mut a = Proc::start("tether A", &config, &sock).await;
    a.log
        .wait_for(0, &["takeover socket listening"], Duration::from_secs(10))
        .await;

    // Connects, reads the start of the hand-over, hangs up without `go`.
    {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::UnixStream::connect(&sock)
            .await
            .expect("A replaced the stale file");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("hello")
            .unwrap();
        assert!(n > 4);
        assert!(String::from_utf8_lossy(&buf[4..n]).contains("hello"));
    }
    a.log
        .wait_for(0, &["still serving"], Duration::from_secs(10))
        .await;
    let hs = get(a.addr, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "A still serves: {}", hs.text());
    assert!(a.running());

    // And a real takeover afterwards still works.
    let mut b = Proc::start("tether B", &config, &sock).await;
    assert_eq!(b.addr, a.addr);
    let status = a.wait(Duration::from_secs(10)).await;
    assert!(status.success());
    let hs = get(b.addr, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "B serves: {}", hs.text());
    b.signal("TERM");
    assert!(b.wait(Duration::from_secs(10)).await.success());
    assert!(!sock.exists());
}
