//! Paced migration against real peers: Node `socket.io` 4.8 nodes with connection state
//! recovery and `@socket.io/redis-streams-adapter` on a real `redis-server`, real
//! `socket.io-client` 4.8 clients. Migrating a node moves each of its sessions to another
//! node in a way the node keeps for recovery: every moved client comes back elsewhere
//! with `socket.recovered`, its socket id unchanged, and clients of other nodes never
//! notice.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// Three recovery-enabled nodes on `redis`; node-3 broadcasts a numbered tick every 50 ms.
async fn recovery_nodes(redis: &TestRedis) -> Vec<NodeServer> {
    let mut v = Vec::new();
    for i in 1..=3 {
        let mut extra = vec!["--recovery"];
        if i == 3 {
            extra.extend(["--tick-ms", "50"]);
        }
        v.push(NodeServer::spawn(&format!("node-{i}"), Some(redis), &extra).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_node_s_clients_recover_their_sessions_on_the_other_nodes() {
    let _heavy = HEAVY.lock().await;
    let redis = TestRedis::start().await;
    let nodes = recovery_nodes(&redis).await;
    let mut b = ConfigBuilder::new().admin().backend("sockets");
    for n in &nodes {
        b = b.server(&n.id, n.addr);
    }
    let tether = TetherHandle::start(&b.build()).await;

    // WebSocket (polling, then upgraded) and polling-only clients.
    let (mut ws, ready_ws) =
        Soak::start_script("recover.js", json!({ "url": tether.url(), "clients": 30 })).await;
    let (mut poll, ready_poll) = Soak::start_script(
        "recover.js",
        json!({ "url": tether.url(), "clients": 30, "transports": ["polling"] }),
    )
    .await;
    println!("placed: websocket {ready_ws}, polling {ready_poll}");
    let on_node_1 = |r: &serde_json::Value| r["nodes"]["node-1"].as_u64().unwrap_or(0);
    let moving = on_node_1(&ready_ws) + on_node_1(&ready_poll);
    assert!(
        on_node_1(&ready_ws) > 0 && on_node_1(&ready_poll) > 0,
        "both kinds on node-1"
    );
    // Every client has had ticks (an offset to recover from).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rate = 20.0;
    let started = Instant::now();
    let r = admin_request(
        tether.admin.unwrap(),
        "POST",
        &format!("/backends/sockets/servers/node-1/migrate?rate={rate}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let limit = Duration::from_secs_f64(moving as f64 / rate) + Duration::from_secs(3);
    let mut status;
    loop {
        status = tether.server_status("sockets", "node-1").await;
        if status["migration"]["done"] == true {
            break;
        }
        assert!(
            started.elapsed() < limit + Duration::from_secs(20),
            "node-1 not drained: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    println!("{moving} sessions migrated at {rate}/s in {took:?} (promise: {limit:?}): {status}");
    assert!(took <= limit, "{took:?} > {limit:?}");
    assert_eq!(status["drained"], true, "{status}");
    assert_eq!(status["sessions"]["load"], 0, "{status}");

    // Let the moved clients settle (their reconnection waits 250–750 ms), then check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, soak) in [("websocket", &mut ws), ("polling", &mut poll)] {
        let report = soak.report().await;
        let clients = report["clients"].as_array().unwrap();
        let mut missed = 0;
        for c in clients {
            assert_eq!(c["connected"], true, "{name}: {c}");
            assert_ne!(c["node"], "node-1", "{name}: {c}");
            assert_eq!(c["id"], c["firstId"], "{name}: the socket id is kept: {c}");
            if c["firstNode"] == "node-1" {
                assert_eq!(c["reconnects"], 1, "{name}: {c}");
                assert_eq!(c["recovered"], true, "{name}: {c}");
                missed += c["missed"].as_u64().unwrap();
            } else {
                assert_eq!(c["reconnects"], 0, "{name}: others never notice: {c}");
            }
        }
        println!("{name}: moved clients missed {missed} ticks in all");
    }
    ws.finish().await;
    poll.finish().await;
}

#[tokio::test]
async fn a_migration_of_nothing_is_refused_clearly() {
    let yaml = ConfigBuilder::new()
        .admin()
        .backend("sockets")
        .server("node-1", "127.0.0.1:9")
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let admin = tether.admin.unwrap();
    for (path, status, says) in [
        (
            "/backends/nope/servers/node-1/migrate",
            404,
            "there is no backend nope; the backends are: sockets",
        ),
        (
            "/backends/sockets/servers/node-9/migrate",
            404,
            "backend sockets has no server node-9; its servers are: node-1",
        ),
        (
            "/backends/sockets/servers/node-1/migrate?rate=0",
            400,
            "rate=0",
        ),
        (
            "/backends/sockets/servers/node-1/migrate?rate=fast",
            400,
            "rate=fast",
        ),
        (
            "/backends/sockets/servers/node-1/move",
            404,
            "drain, ready, maint or migrate",
        ),
    ] {
        let r = admin_request(admin, "POST", path).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.text().contains(says), "{path}: {}", r.text());
    }
    // Nothing was started by a refused call.
    assert_eq!(
        tether.server_status("sockets", "node-1").await["state"],
        "ready"
    );
}
