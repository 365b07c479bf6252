//! WebSocket tunnels: when one side goes the other follows at once, and a silent
//! tunnel is closed after the session's own heartbeat instead of a tuned timeout.

mod support;

use std::time::Duration;

use support::*;
use tether::engineio::Transport;

const WS_ONLY: &str = "/socket.io/?EIO=4&transport=websocket";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_death_closes_the_client_side_at_once() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let tether = TetherHandle::start(&sockets(std::slice::from_ref(&node)).build()).await;
    let mut ws = ws_connect(tether.addr, WS_ONLY).await;
    let open = ws_read_text(&mut ws).await;
    assert!(open.starts_with("0{\"sid\""), "{open}");
    node.signal("KILL");
    // Engine.IO's default heartbeat is 45 s; the client must learn far sooner.
    let closed = wait_closed(&mut ws, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "client side still open 5 s after the server died"
    );
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_ends_the_session_on_its_server() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let tether = TetherHandle::start(&sockets(std::slice::from_ref(&node)).build()).await;
    let mut ws = ws_connect(tether.addr, WS_ONLY).await;
    ws_read_text(&mut ws).await;
    let stats = tether.store.load().backends[0].servers[0].stats.clone();
    assert_eq!(
        stats.sessions(Transport::WebSocket),
        1,
        "a WebSocket-only session is counted"
    );
    drop(ws);
    let mut waited = Duration::ZERO;
    while stats.sessions(Transport::WebSocket) > 0 && waited < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert_eq!(
        stats.sessions(Transport::WebSocket),
        0,
        "tunnel not torn down after the client left"
    );
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tunnel_closes_after_the_sessions_own_heartbeat() {
    let node = NodeServer::spawn(
        "node-1",
        None,
        &["--ping-interval", "300", "--ping-timeout", "200"],
    )
    .await;
    let yaml = sockets(std::slice::from_ref(&node))
        .with("sessions:\n  idle_margin: 200ms")
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let mut ws = ws_connect(tether.addr, WS_ONLY).await;
    let open = ws_read_text(&mut ws).await;
    assert!(open.contains("\"pingInterval\":300"), "{open}");
    // A frozen server sends nothing: no pings, no close.
    node.signal("STOP");
    let closed = wait_closed(&mut ws, Duration::from_secs(10)).await;
    node.signal("CONT");
    let after =
        closed.expect("a silent tunnel must be closed after pingInterval + pingTimeout + margin");
    assert!(
        after >= Duration::from_millis(500),
        "closed too early: {after:?}"
    );
    println!("silent tunnel closed after {after:?} (heartbeat 500 ms + margin 200 ms)");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_closes_open_tunnels_at_once_and_draining_does_not() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let tether = TetherHandle::start(&sockets(std::slice::from_ref(&node)).build()).await;
    let mut ws = ws_connect(tether.addr, WS_ONLY).await;
    ws_read_text(&mut ws).await;
    let stats = tether.store.load().backends[0].servers[0].stats.clone();
    stats
        .condition
        .set_state(tether::config::ServerState::Draining);
    assert!(
        wait_closed(&mut ws, Duration::from_millis(700))
            .await
            .is_none(),
        "a draining server keeps its tunnels"
    );
    stats
        .condition
        .set_state(tether::config::ServerState::Maint);
    let closed = wait_closed(&mut ws, Duration::from_secs(2)).await;
    let after = closed.expect("a tunnel to a server in maint must be closed");
    println!("tunnel closed {after:?} after maint");
    tether.stop().await;
}

/// Sends one masked text frame (clients must mask), split in two writes so the relay
/// sees a header cut across reads as well as whole ones.
async fn ws_send_text(ws: &mut tokio::net::TcpStream, text: &str, split: bool) {
    use tokio::io::AsyncWriteExt;
    let key = [0x11, 0x22, 0x33, 0x44];
    assert!(text.len() < 126);
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    if split {
        ws.write_all(&frame[..3]).await.unwrap();
        ws.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        ws.write_all(&frame[3..]).await.unwrap();
    } else {
        ws.write_all(&frame).await.unwrap();
    }
}

/// The value of one series in a `/metrics` scrape (0 when absent).
async fn scraped(admin: std::net::SocketAddr, series: &str) -> f64 {
    let r = admin_request(admin, "GET", "/metrics").await;
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_counted_each_way() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.yaml");
    std::fs::write(&path, sockets(std::slice::from_ref(&node)).admin().build()).unwrap();
    // Its own process: the metrics recorder is process-wide.
    let t = TetherProcess::start(&path, "warn").await;
    let admin = t.admin().await;

    let mut ws = ws_connect(t.addr, WS_ONLY).await;
    let open = ws_read_text(&mut ws).await;
    assert!(open.starts_with("0{\"sid\""), "{open}");
    ws_send_text(&mut ws, "40", false).await;
    assert!(ws_read_text(&mut ws).await.starts_with("40"));
    const ECHOES: usize = 25;
    for i in 0..ECHOES {
        ws_send_text(&mut ws, &format!("42{i}[\"echo\",{i}]"), i % 5 == 0).await;
        assert_eq!(ws_read_text(&mut ws).await, format!("43{i}[{i}]"));
    }
    // A close frame, then the server's close ends the tunnel.
    {
        use tokio::io::AsyncWriteExt;
        ws.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await.unwrap();
    }
    assert!(wait_closed(&mut ws, Duration::from_secs(10))
        .await
        .is_some());

    let labels = |dir: &str| {
        format!("tether_websocket_frames_total{{backend=\"sockets\",server=\"node-1\",direction=\"{dir}\"}}")
    };
    // Counted when the tunnel ends (its last batch): wait for it.
    let to_server = labels("to_server");
    let start = tokio::time::Instant::now();
    while scraped(admin, &to_server).await == 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no frames counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 40, the echoes and the close frame; the open packet, the connect answer, the acks
    // and the server's close (a ping may come too, though not in 25 s by default).
    assert_eq!(scraped(admin, &to_server).await, (1 + ECHOES + 1) as f64);
    let down = scraped(admin, &labels("to_client")).await;
    assert!(
        ((2 + ECHOES) as f64..=(2 + ECHOES + 2) as f64).contains(&down),
        "{down} frames to the client"
    );
}
