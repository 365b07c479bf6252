//! Graceful shutdown of the real binary: SIGTERM stops new connections, lets in-flight
//! polling requests finish, gives WebSocket tunnels the grace, exits 0; a second signal
//! exits at once.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WS_ONLY: &str = "/socket.io/?EIO=4&transport=websocket";
const GRACE: Duration = Duration::from_secs(3);

/// `tether run` on a config file for `node`; returns the child, its listener address and
/// its stderr (shown if the test fails).
async fn run_binary(node: &NodeServer, dir: &std::path::Path) -> (Child, SocketAddr, StderrTail) {
    let file = dir.join("tether.yaml");
    let yaml = sockets(std::slice::from_ref(node))
        .top(&format!("shutdown_grace: {}s", GRACE.as_secs()))
        .build();
    std::fs::write(&file, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tether binary");
    let stderr = StderrTail::follow("tether", child.stderr.take().unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("tether printed its address")
        .unwrap()
        .unwrap();
    let (addr, _) =
        listening_addr(&line).unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, stderr)
}

fn signal(child: &Child, sig: &str) {
    tether_kit::signal::send_signal(child.id().expect("running"), sig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_polls_gives_tunnels_the_grace_and_exits_zero() {
    // Pings every 1.5 s end each long poll; a 10 s ping timeout keeps a silent WebSocket
    // open on the node's side for longer than the grace.
    let node = NodeServer::spawn(
        "node-1",
        None,
        &["--ping-interval", "1500", "--ping-timeout", "10000"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, stderr) = run_binary(&node, dir.path()).await;

    let mut ws = ws_connect(addr, WS_ONLY).await;
    assert!(ws_read_text(&mut ws).await.starts_with("0{"));
    let hs = get(addr, None, &eio_path(None), &[]).await;
    let sid = hs.sid();
    let poll = tokio::spawn(async move { get(addr, None, &eio_path(Some(&sid)), &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    signal(&child, "TERM");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections once shutdown starts"
    );
    let polled = poll.await.unwrap();
    let poll_done = t0.elapsed();
    assert_eq!(
        polled.status,
        200,
        "the in-flight poll completes: {}",
        polled.text()
    );
    assert_eq!(polled.text(), "2", "it carries the node's ping");

    // The grace is not silent: what is still open is logged as it goes.
    let wait = GRACE + Duration::from_secs(5);
    stderr
        .wait_for(
            0,
            &["shutting down: no new connections", "have 3s to finish"],
            wait,
        )
        .await;
    stderr
        .wait_for(
            0,
            &["shutting down: still open", "tunnels=1", "grace_left="],
            wait,
        )
        .await;
    let closed = wait_closed(&mut ws, GRACE + Duration::from_secs(5)).await;
    let ws_closed = t0.elapsed();
    assert!(closed.is_some(), "the tunnel is closed after the grace");
    assert!(
        ws_closed >= GRACE - Duration::from_millis(300),
        "the tunnel was cut before its grace: {ws_closed:?}"
    );
    let status = tokio::time::timeout(GRACE + Duration::from_secs(5), child.wait())
        .await
        .expect("exits after the grace")
        .unwrap();
    let exited = t0.elapsed();
    println!(
        "SIGTERM: poll finished after {poll_done:?}, tunnel closed after {ws_closed:?}, exit {status} after {exited:?} (grace {GRACE:?})"
    );
    assert_eq!(status.code(), Some(0));
    assert!(exited <= GRACE + Duration::from_secs(3), "{exited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _stderr) = run_binary(&node, dir.path()).await;
    let mut ws = ws_connect(addr, WS_ONLY).await;
    assert!(ws_read_text(&mut ws).await.starts_with("0{"));
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "INT");
    let t0 = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(2), child.wait())
        .await
        .expect("a second signal exits at once")
        .unwrap();
    assert_eq!(status.code(), Some(tether_kit::signal::FORCED_EXIT));
    assert!(t0.elapsed() < GRACE);
}
