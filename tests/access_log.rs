//! The access log of a real socket.io-client session (polling, then the upgrade, then
//! the client leaving), read back line by line from the file tether wrote.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// The log's lines so far, each parsed.
fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_then_upgrade_session_is_logged_line_by_line() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = sockets(std::slice::from_ref(&node))
        .top(&format!(
            "access_log: {{ path: \"{}\", format: json }}",
            log.display()
        ))
        .build();
    let tether = TetherHandle::start(&yaml).await;

    let report = swarm(json!({
        "url": format!("http://{}", tether.addr),
        "clients": 1,
        "broadcast": false,
        "holdMs": 200,
    }))
    .await;
    assert_eq!(report["connected"], 1, "{report}");
    assert_eq!(report["upgraded"], 1, "{report}");

    // The client has gone: its tunnel's line comes when tether sees the close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let entries = loop {
        let entries = lines(&log);
        if entries.iter().any(|e| e["type"] == "websocket_closed") {
            break entries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tunnel line: {entries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for e in &entries {
        println!("{e}");
    }

    // The handshake: a polling GET without sid, answered by node-1.
    let first = &entries[0];
    assert_eq!(first["type"], "request");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/socket.io/");
    assert_eq!(first["transport"], "polling");
    assert!(first["sid"].is_null(), "{first}");
    assert_eq!(first["status"], 200);
    assert_eq!(first["backend"], "sockets");
    assert_eq!(first["server"], "node-1");
    assert_eq!(first["client"], "127.0.0.1");
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);

    // Every later request names the session the handshake opened, on the same server.
    let requests: Vec<&Value> = entries.iter().filter(|e| e["type"] == "request").collect();
    let sid = requests[1]["sid"]
        .as_str()
        .expect("a sid after the handshake");
    for r in &requests[1..] {
        assert_eq!(r["sid"], sid, "{r}");
        assert_eq!(r["server"], "node-1", "{r}");
    }
    // The Socket.IO connect packet goes up in a polling POST.
    assert!(
        requests
            .iter()
            .any(|r| r["method"] == "POST" && r["transport"] == "polling" && r["status"] == 200),
        "{requests:#?}"
    );
    // The upgrade: a WebSocket GET with the sid, answered 101.
    let upgrade = requests
        .iter()
        .find(|r| r["transport"] == "websocket")
        .expect("the upgrade request");
    assert_eq!(upgrade["status"], 101, "{upgrade}");

    // Then the tunnel's end: the client closed it, with bytes both ways.
    let tunnel = entries.last().unwrap();
    assert_eq!(tunnel["type"], "websocket_closed", "{tunnel}");
    assert_eq!(tunnel["sid"], sid);
    assert_eq!(tunnel["server"], "node-1");
    assert_eq!(tunnel["cause"], "client_closed");
    assert!(tunnel["bytes_to_server"].as_u64().unwrap() > 0, "{tunnel}");
    assert!(tunnel["bytes_to_client"].as_u64().unwrap() > 0, "{tunnel}");
    tether.stop().await;
}
