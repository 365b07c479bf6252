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
