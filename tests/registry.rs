//! The admin API's session registry (`/sessions`, `/sessions/{sid}`) and its probes
//! (`/healthz`, `/readyz`), against real Node socket.io servers: each session's server
//! is checked against the `x-node-id` header the server itself put on its handshake.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::*;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "registry-test-token-0123456789";

/// One admin request, with the token when `auth`.
async fn admin(admin: SocketAddr, method: &str, path: &str, auth: bool) -> RawResponse {
    let token = match auth {
        true => format!("Authorization: Bearer {TOKEN}\r\n"),
        false => String::new(),
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\n{token}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    raw_exchange(admin, None, req.as_bytes()).await
}

async fn admin_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = admin(addr, "GET", path, true).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{path}: {}",
        r.text()
    );
    let doc =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {:?}", r.text()));
    (r.status, doc)
}

/// Polls `path` until `done` holds for its answer, or fails after `limit` with the last.
async fn until(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
    done: impl Fn(&RawResponse) -> bool,
) -> RawResponse {
    let start = tokio::time::Instant::now();
    loop {
        let r = admin(addr, "GET", path, false).await;
        if done(&r) {
            return r;
        }
        if start.elapsed() > limit {
            panic!(
                "{path} still answers {} {:?} after {limit:?}",
                r.status,
                r.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// tether (its own process) in front of `nodes`, with an admin token; its admin address,
/// and the directory of its config (kept while the test runs).
async fn tether_with_token(nodes: &[NodeServer]) -> (TetherProcess, SocketAddr, tempfile::TempDir) {
    let yaml = sockets(nodes)
        .admin_yaml(&format!("bind: \"127.0.0.1:0\"\n  token: \"{TOKEN}\""))
        .build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.yaml");
    std::fs::write(&path, yaml).unwrap();
    let t = TetherProcess::start(&path, "warn").await;
    let admin = t.admin().await;
    (t, admin, dir)
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_says_which_server_holds_each_session_and_since_when() {
    let nodes = [
        NodeServer::spawn("node-1", None, &[]).await,
        NodeServer::spawn("node-2", None, &[]).await,
        NodeServer::spawn("node-3", None, &[]).await,
    ];
    let (t, admin_addr, _dir) = tether_with_token(&nodes).await;
    let before = unix_ms_now();

    // Twelve polling sessions from four client addresses; each server says who it is.
    let mut truth: BTreeMap<String, (String, IpAddr)> = BTreeMap::new();
    for i in 0..12u8 {
        let from: IpAddr = format!("127.0.0.{}", 2 + i % 4).parse().unwrap();
        let hs = get(t.addr, Some(from), &eio_path(None), &[]).await;
        assert_eq!(hs.status, 200, "{}", hs.text());
        let node = hs.header("x-node-id").expect("x-node-id").to_owned();
        truth.insert(hs.sid(), (node, from));
    }
    // And one session that starts on a WebSocket (its open packet is the first frame).
    let mut ws = ws_connect(t.addr, "/socket.io/?EIO=4&transport=websocket").await;
    let open = ws_read_text(&mut ws).await;
    let open: Value = serde_json::from_str(open.trim_start_matches('0')).expect("open packet");
    let ws_sid = open["sid"].as_str().expect("sid").to_owned();

    for (sid, (node, from)) in &truth {
        let (status, s) = admin_json(admin_addr, &format!("/sessions/{sid}")).await;
        assert_eq!(status, 200, "{s}");
        assert_eq!(s["sid"], *sid);
        assert_eq!(s["backend"], "sockets");
        assert_eq!(s["server"], *node, "{s}");
        assert_eq!(s["transport"], "polling");
        assert_eq!(s["client"], from.to_string());
        assert_eq!(s["live"], true);
        let started = s["started_unix_ms"].as_u64().unwrap();
        assert!(
            (before..=unix_ms_now()).contains(&started),
            "{started} not within the test ({before}..)"
        );
        assert!(s["age_seconds"].as_f64().unwrap() >= 0.0);
    }
    let (status, s) = admin_json(admin_addr, &format!("/sessions/{ws_sid}")).await;
    assert_eq!((status, &s["transport"]), (200, &Value::from("websocket")));
    let ws_node = s["server"].as_str().unwrap().to_owned();

    // Each server's list holds exactly its own sessions.
    for node in ["node-1", "node-2", "node-3"] {
        let (status, list) = admin_json(
            admin_addr,
            &format!("/sessions?backend=sockets&server={node}&limit=100"),
        )
        .await;
        assert_eq!(status, 200, "{list}");
        let mut listed: Vec<&str> = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sid"].as_str().unwrap())
            .collect();
        listed.sort_unstable();
        let mut expected: Vec<&str> = truth
            .iter()
            .filter(|(_, (n, _))| n == node)
            .map(|(sid, _)| sid.as_str())
            .collect();
        if ws_node == node {
            expected.push(&ws_sid);
        }
        expected.sort_unstable();
        assert_eq!(listed, expected, "{node}: {list}");
        assert_eq!(list["count"], expected.len());
        assert_eq!(list["truncated"], false);
    }
    let (_, all) = admin_json(admin_addr, "/sessions").await;
    assert_eq!(all["count"], truth.len() + 1, "{all}");
    let (_, some) = admin_json(admin_addr, "/sessions?limit=5").await;
    assert_eq!(
        (&some["count"], &some["truncated"]),
        (&5.into(), &true.into())
    );

    // The WebSocket session closed by its client: the registry says it is over.
    ws.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await.unwrap();
    drop(ws);
    let start = tokio::time::Instant::now();
    loop {
        let r = admin(admin_addr, "GET", &format!("/sessions/{ws_sid}"), true).await;
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        if r.status == 404 || doc["live"] == false {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still live: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registry_requests_are_answered_with_json_and_probes_need_no_token() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let (_t, a, _dir) = tether_with_token(std::slice::from_ref(&node)).await;

    let long = "a".repeat(65);
    for (sid, says) in [
        ("AAAAAAAAAAAAAAAAAAAA", "no session AAAAAAAAAAAAAAAAAAAA"),
        ("bad%20sid", "not a session id"),
        ("sid!", "not a session id"),
        (long.as_str(), "not a session id"),
    ] {
        let (status, doc) = admin_json(a, &format!("/sessions/{sid}")).await;
        assert_eq!(status, 404, "{sid}: {doc}");
        assert!(
            doc["error"].as_str().unwrap().contains(says),
            "{sid}: {doc}"
        );
    }
    for query in ["limit=0", "limit=many", "limit=10001", "sever=node-1"] {
        let (status, doc) = admin_json(a, &format!("/sessions?{query}")).await;
        assert_eq!(status, 400, "{query}: {doc}");
        assert!(doc["error"].is_string());
    }
    // The registry is the operator's: no token, no answer.
    for path in [
        "/sessions",
        "/sessions/AAAAAAAAAAAAAAAAAAAA",
        "/history",
        "/status",
    ] {
        let r = admin(a, "GET", path, false).await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let r = admin(a, "DELETE", "/sessions/AAAAAAAAAAAAAAAAAAAA", true).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));

    // Probes: alive at once; ready while a server takes sessions, not ready (and saying
    // why) once none does, ready again after.
    let r = admin(a, "GET", "/healthz", false).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    until(a, "/readyz", Duration::from_secs(20), |r| r.status == 200).await;
    let r = admin(a, "POST", "/backends/sockets/servers/node-1/drain", true).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(a, "GET", "/readyz", false).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            503,
            "not ready: backend sockets has no server that takes new sessions\n"
        )
    );
    let (_, status) = admin_json(a, "/status").await;
    assert_eq!(status["ready"], false);
    let r = admin(a, "POST", "/backends/sockets/servers/node-1/ready", true).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(a, "GET", "/readyz", false).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));

    // The history has its first sample from the start: one server, zero sessions.
    let (status, h) = admin_json(a, "/history").await;
    assert_eq!(status, 200);
    assert_eq!(h["interval_seconds"], 5);
    assert!(!h["times"].as_array().unwrap().is_empty(), "{h}");
    assert_eq!(h["servers"][0]["server"], "node-1", "{h}");
}
