//! The bench against an in-process `tether node`, and its argument handling.

use clap::Parser;

use super::*;
use tether_node::node::{self, NodeOptions};

fn args(extra: &[&str]) -> BenchArgs {
    let mut v = vec!["bench"];
    v.extend_from_slice(extra);
    BenchArgs::try_parse_from(v).expect("valid bench arguments")
}

#[test]
fn defaults_and_targets() {
    let a = args(&[]);
    assert_eq!(a.clients, 100);
    assert_eq!(a.concurrency, 64);
    assert_eq!(a.payload_bytes, 64);
    assert_eq!(a.duration, Duration::from_secs(10));
    assert_eq!((a.mode, a.transport), (Mode::Echo, Transport::Polling));
    assert_eq!(a.threads, 1);
    assert!(a.rate.is_none() && a.arrival_rate.is_none() && a.sources.is_none());

    let a = args(&[
        "--sources",
        "127.1.0.0/16",
        "--rate",
        "2.5",
        "--duration",
        "1m",
    ]);
    assert_eq!(a.sources.map(|s| s.len()), Some(65534));
    assert_eq!(a.rate, Some(2.5));
    assert_eq!(a.duration, Duration::from_secs(60));
    assert!(BenchArgs::try_parse_from(["bench", "--rate", "0"]).is_err());
    assert!(BenchArgs::try_parse_from(["bench", "--sources", "10.0.0.1"]).is_err());
    assert!(BenchArgs::try_parse_from(["bench", "--concurrency", "0"]).is_err());

    let t = target("http://127.0.0.1:3000", "/socket.io/").unwrap();
    assert_eq!(t.addr, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(
        (t.authority.as_str(), t.path.as_str()),
        ("127.0.0.1:3000", "/socket.io/")
    );
    let t = target("http://localhost:80/custom/", "/socket.io/").unwrap();
    assert_eq!((t.addr.port(), t.path.as_str()), (80, "/custom/"));
    assert_eq!(
        target("ws://127.9.8.7", "/socket.io/").unwrap().addr.port(),
        80
    );
    for bad in [
        "http://10.0.0.1:80",
        "http://example.com",
        "http://[::1]:80",
        "https://127.0.0.1:443",
        "127.0.0.1:80",
        "http://0.0.0.0:80",
    ] {
        assert!(target(bad, "/socket.io/").is_err(), "{bad} accepted");
    }
}

async fn bench_against_node(transport: &str, mode: &str) -> (Report, String) {
    let node = node::start(NodeOptions::new(([127, 0, 0, 1], 0).into(), "bench-n1"))
        .await
        .expect("node starts");
    let url = format!("http://{}", node.addr());
    let a = args(&[
        "--url",
        &url,
        "--clients",
        "20",
        "--duration",
        "2s",
        "--mode",
        mode,
        "--transport",
        transport,
        "--whoami",
        "--quiet",
        "--timeout",
        "5s",
    ]);
    let report = run(&a).await.expect("bench runs");
    node.stop().await;
    let id = "bench-n1".to_owned();
    (report, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_websockets_against_a_plain_node() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(tether_node::plain::serve(listener));
    let plain = ["--url", &url, "--transport", "plain-websocket", "--quiet"];
    let mut idle = plain.to_vec();
    idle.extend_from_slice(&["--clients", "20", "--mode", "idle", "--duration", "1s"]);
    let r = run(&args(&idle)).await.expect("bench runs");
    assert_clean(&r);
    // No Socket.IO to echo through or ask.
    for extra in [
        &["--mode", "echo"][..],
        &["--mode", "connect", "--whoami"][..],
    ] {
        let mut a = plain.to_vec();
        a.extend_from_slice(extra);
        assert!(matches!(run(&args(&a)).await, Err(BenchError::Options(_))));
    }
    server.abort();
}

fn assert_clean(r: &Report) {
    assert_eq!(r.established, 20, "{r:#?}");
    assert_eq!(r.failed_total, 0, "{r:#?}");
    assert_eq!(r.failed, report::Failed::default(), "{r:#?}");
    assert_eq!(r.dropped, 0, "{r:#?}");
    assert!(r.errors.is_empty(), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_polling_then_upgrade() {
    let (r, id) = bench_against_node("polling", "echo").await;
    assert_clean(&r);
    assert_eq!(r.upgraded, 20, "{r:#?}");
    assert!(r.messages_acked > 0, "{r:#?}");
    assert_eq!(r.messages_acked, r.messages_sent, "{r:#?}");
    assert!(r.rtt_us.p50 > 0 && r.rtt_us.p50 <= r.rtt_us.p99, "{r:#?}");
    assert!(r.setup_rate > 0.0 && r.setup_us.count == 20, "{r:#?}");
    assert_eq!(r.per_node.get(&id), Some(&20), "{r:#?}");
    assert_eq!(r.max_over_mean, Some(1.0));
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    for key in [
        "established",
        "upgraded",
        "failed",
        "messages_sent",
        "messages_acked",
        "messages_per_sec",
        "rtt_us",
        "setup_rate",
        "setup_us",
        "per_node",
        "max_over_mean",
        "elapsed_s",
    ] {
        assert!(json.get(key).is_some(), "no {key} in {json}");
    }
    assert_eq!(json["failed"]["session_unknown"], 0);
    assert!(r.table().contains("established 20"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_websocket() {
    let (r, id) = bench_against_node("websocket", "echo").await;
    // The node registers its handlers in the synchronous part of the connect handler,
    // before it reads the next packet: an emit right after the connect answer is never
    // dropped (it was, with an async connect handler).
    assert_eq!(r.failed_total, 0, "{r:#?}");
    assert_eq!(r.established, 20, "{r:#?}");
    assert_eq!(r.upgraded, 0, "{r:#?}");
    assert!(r.messages_acked > 0, "{r:#?}");
    assert_eq!(r.per_node.get(&id).copied().unwrap_or(0), 20, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_polling_only_counts_every_request() {
    let (r, id) = bench_against_node("polling-only", "echo").await;
    assert_clean(&r);
    assert_eq!(r.upgraded, 0, "{r:#?}");
    assert_eq!(r.per_node.get(&id), Some(&20), "{r:#?}");
    assert!(r.messages_acked > 0, "{r:#?}");
    assert_eq!(r.messages_acked, r.messages_sent, "{r:#?}");
    // Setup: handshake, POST 40, at least one GET poll; then whoami and every echo
    // take a POST, and the acks come back on GET polls (several per poll at most
    // when they pile up, so at least one poll per client is all that is certain).
    let posts = 20 * 2 + r.messages_sent;
    assert!(
        r.http_requests >= 20 * 3 + posts + 20,
        "{} requests for {} messages: {r:#?}",
        r.http_requests,
        r.messages_sent
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["transport"], "polling-only");
    assert_eq!(json["http_requests"], r.http_requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_mode_and_paced_echo() {
    let (r, _) = bench_against_node("polling", "connect").await;
    assert_clean(&r);
    assert_eq!((r.upgraded, r.messages_sent), (20, 0), "{r:#?}");
    // Per session: handshake, POST 40, GET poll, pending GET, WebSocket handshake.
    assert!(r.http_requests >= 20 * 5, "{r:#?}");

    let node = node::start(NodeOptions::new(([127, 0, 0, 1], 0).into(), "paced"))
        .await
        .expect("node starts");
    let url = format!("http://{}", node.addr());
    let a = args(&[
        "--url",
        &url,
        "--clients",
        "5",
        "--duration",
        "1s",
        "--rate",
        "20",
        "--quiet",
        "--transport",
        "polling",
        "--sources",
        "127.0.0.2-127.0.0.4",
    ]);
    let r = run(&a).await.expect("bench runs");
    node.stop().await;
    assert_clean_n(&r, 5);
    assert!(r.rtt_us.count > 0, "{r:#?}");
    // 5 clients × 20/s × 1 s, give or take a tick.
    assert!((90..=110).contains(&r.messages_acked), "{r:#?}");
}

fn assert_clean_n(r: &Report, n: u64) {
    assert_eq!(r.established, n, "{r:#?}");
    assert_eq!(r.failed_total, 0, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_a_connect_failure() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = args(&[
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--clients",
        "3",
        "--duration",
        "1s",
        "--quiet",
    ]);
    let r = run(&a).await.expect("bench runs");
    assert_eq!(
        (r.established, r.failed.connect, r.failed_total),
        (0, 3, 3),
        "{r:#?}"
    );
    assert!(!r.errors.is_empty());
}

#[tokio::test]
async fn storm_needs_a_pid_to_kill() {
    let a = args(&["--mode", "storm", "--url", "http://127.0.0.1:9"]);
    assert_eq!(a.mode, Mode::Storm);
    let e = run(&a).await.unwrap_err();
    assert!(e.to_string().contains("--kill-pid"), "{e}");
    let a = args(&[
        "--mode",
        "storm",
        "--kill-pid",
        "1",
        "--kill-node",
        "node-1",
    ]);
    assert_eq!(
        (a.kill_pid, a.kill_node.as_deref()),
        (Some(1), Some("node-1"))
    );
}
