//! A cluster that changes under tether: a node killed, the config rewritten under load, a
//! node drained. Real Node `socket.io` servers on a real Redis, a long-running
//! `socket.io-client` swarm (tests/node/soak.js) that keeps emitting and reconnects.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const HEALTH: &str = "health: { interval: 500ms, timeout: 400ms, rise: 2, fall: 2 }";
/// `fall × interval` of [`HEALTH`].
const DETECTION: Duration = Duration::from_millis(1000);

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A config for `servers` (id, addr, weight) with an admin listener and health checks.
fn live(servers: &[(&str, String, u32)]) -> ConfigBuilder {
    servers.iter().fold(
        ConfigBuilder::new().admin().backend("sockets").with(HEALTH),
        |b, (id, addr, weight)| b.server_with(id, addr, &format!("weight: {weight}")),
    )
}

fn live_config(servers: &[(&str, String, u32)]) -> String {
    live(servers).build()
}

fn servers_of(nodes: &[&NodeServer]) -> Vec<(&'static str, String, u32)> {
    nodes
        .iter()
        .map(|n| {
            let id: &'static str = Box::leak(n.id.clone().into_boxed_str());
            (id, n.addr.to_string(), 1)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_clients_move_to_survivors_and_nobody_else_notices() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3).await;
    let all: Vec<&NodeServer> = cluster.nodes.iter().collect();
    let tether = TetherHandle::start(&live_config(&servers_of(&all))).await;
    let (mut soak, ready) =
        Soak::start(json!({ "url": tether.url(), "clients": 300, "durationMs": 60000 })).await;
    assert_eq!(n(&ready["connected"]), 300, "{ready}");
    let victim = &cluster.nodes[0];
    let on_victim = n(&ready["perNode"][&victim.id]);
    assert!(on_victim > 0, "{ready}");

    victim.signal("KILL");
    let killed = Instant::now();
    let limit = DETECTION + Duration::from_secs(3);
    let mut report = soak.report().await;
    let settled = |r: &Value| {
        n(&r["disconnects"]) >= on_victim
            && n(&r["connectedNow"]) == 300
            && n(&r["notReconnected"]) == 0
    };
    while !settled(&report) && killed.elapsed() < limit + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        report = soak.report().await;
    }
    let back_after = killed.elapsed();
    // Let the survivors keep talking a little longer before the verdict.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fin = soak.finish().await;
    println!(
        "kill -9 {}: {on_victim} clients on it, all 300 connected again after {back_after:?}; \
         reconnectMs {}; final perNode {}",
        victim.id, fin["reconnectMs"], fin["perNodeFinal"]
    );
    assert_eq!(n(&fin["connectedNow"]), 300, "{fin}");
    assert_eq!(n(&fin["notReconnected"]), 0, "{fin}");
    assert!(
        fin["perNodeFinal"][&victim.id].is_null() || n(&fin["perNodeFinal"][&victim.id]) == 0,
        "{fin}"
    );
    let worst = Duration::from_millis(n(&fin["reconnectMs"]["max"]));
    assert!(
        worst <= limit,
        "a client took {worst:?} (> {limit:?}): {fin}"
    );
    for survivor in &cluster.nodes[1..] {
        assert_eq!(
            n(&fin["clientsDisconnectedByStartNode"][&survivor.id]),
            0,
            "clients on {} were disturbed: {fin}",
            survivor.id
        );
    }
    assert_eq!(n(&fin["ackFailures"]), 0, "{fin}");
    let status = tether.server_status("sockets", &victim.id).await;
    assert_eq!(status["health"], "down", "{status}");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_under_load_loses_nobody() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3).await;
    let n4 = NodeServer::spawn("node-4", Some(&cluster.redis), &[]).await;
    let n5 = NodeServer::spawn("node-5", Some(&cluster.redis), &[]).await;
    let base = servers_of(&cluster.nodes.iter().collect::<Vec<_>>());
    let extra = |ids: &[&NodeServer]| servers_of(ids);
    let variant = |i: usize| -> String {
        let mut s = base.clone();
        match i % 4 {
            0 => s.extend(extra(&[&n4])),
            1 => s.extend(extra(&[&n4, &n5])),
            2 => {
                s[1].2 = 2;
                s.extend(extra(&[&n5]));
            }
            _ => {}
        }
        live_config(&s)
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tether.yaml");
    write_atomically(&file, &live_config(&base));
    let tether = TetherHandle::start_file(&file).await;
    let admin = tether.admin.unwrap();
    let (soak, ready) =
        Soak::start(json!({ "url": tether.url(), "clients": 300, "durationMs": 60000 })).await;
    assert_eq!(n(&ready["connected"]), 300, "{ready}");

    let started = Instant::now();
    let mut rejected = None;
    for i in 0..49 {
        if i == 25 {
            // One bad file in the middle: refused, reported, nothing changes.
            write_atomically(&file, &variant(i).replace("weight: 1", "weight: 0"));
            let r = admin_request(admin, "POST", "/reload").await;
            assert_eq!(r.status, 422, "{}", r.text());
            rejected = Some(r.text());
            let status = tether.status().await;
            assert_eq!(status["reload"]["ok"], false, "{status}");
        } else {
            write_atomically(&file, &variant(i));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The last word: node-4 gone, node-5 in, node-2 heavier.
    let mut last = base.clone();
    last[1].2 = 3;
    last.extend(extra(&[&n5]));
    write_atomically(&file, &live_config(&last));
    let storm = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let status = tether.status().await;
    let servers = &status["backends"][0]["servers"];
    let find = |id: &str| {
        servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(find("node-2")["weight"], 3, "{status}");
    assert_eq!(find("node-5")["state"], "ready", "{status}");
    assert_eq!(find("node-5")["health"], "up", "{status}");
    assert!(
        find("node-4").is_null() || find("node-4")["state"] == "removed",
        "{status}"
    );
    assert_eq!(status["reload"]["ok"], true, "{status}");
    assert!(n(&status["reload"]["failed"]) >= 1, "{status}");

    // New sessions use the final set: node-5 (added, checked healthy) but never node-4.
    let fresh = swarm(json!({ "url": tether.url(), "clients": 60, "broadcast": false })).await;
    assert_eq!(n(&fresh["connected"]), 60, "{fresh}");
    assert!(fresh["perNode"]["node-4"].is_null(), "{fresh}");
    assert!(n(&fresh["perNode"]["node-5"]) > 0, "{fresh}");

    let fin = soak.finish().await;
    println!(
        "reload storm: 50 writes in {storm:?}, generation {}, {} rejected ({}); soak: {} acks, {} disconnects, {} session-unknown",
        status["reload"]["generation"],
        status["reload"]["failed"],
        rejected.unwrap_or_default(),
        fin["acksOk"],
        fin["disconnects"],
        fin["sessionUnknown"]
    );
    assert_eq!(n(&fin["disconnects"]), 0, "{fin}");
    assert_eq!(n(&fin["sessionUnknown"]), 0, "{fin}");
    assert_eq!(n(&fin["ackFailures"]), 0, "{fin}");
    assert_eq!(n(&fin["connectedNow"]), 300, "{fin}");
    assert!(n(&status["reload"]["generation"]) >= 10, "{status}");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_node_keeps_its_sessions_takes_no_new_ones_and_reports_drained() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3).await;
    let all: Vec<&NodeServer> = cluster.nodes.iter().collect();
    let tether = TetherHandle::start(&live_config(&servers_of(&all))).await;
    let admin = tether.admin.unwrap();
    let (mut soak, ready) =
        Soak::start(json!({ "url": tether.url(), "clients": 150, "durationMs": 60000 })).await;
    let on_drained = n(&ready["perNode"]["node-1"]);
    assert!(on_drained > 0, "{ready}");

    let r = admin_request(admin, "POST", "/backends/sockets/servers/node-1/drain").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = soak.report().await;
    let fresh = swarm(json!({ "url": tether.url(), "clients": 60, "broadcast": false })).await;
    assert_eq!(n(&fresh["connected"]), 60, "{fresh}");
    assert!(
        fresh["perNode"]["node-1"].is_null(),
        "a draining node got new sessions: {fresh}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = soak.report().await;
    assert!(
        n(&during["acksOk"]) > n(&before["acksOk"]),
        "sessions kept working"
    );
    let mid = tether.server_status("sockets", "node-1").await;
    assert_eq!(mid["state"], "draining", "{mid}");
    assert_eq!(mid["drained"], false, "{mid}");
    assert!(n(&mid["sessions"]["load"]) >= on_drained, "{mid}");

    // Clients leave: the gauge falls to zero and the node says it may be stopped.
    let fin = soak.finish().await;
    assert_eq!(
        n(&fin["clientsDisconnectedByStartNode"]["node-1"]),
        0,
        "{fin}"
    );
    let left = Instant::now();
    let mut status = tether.server_status("sockets", "node-1").await;
    while status["drained"] != true && left.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = tether.server_status("sockets", "node-1").await;
    }
    println!(
        "drain: {on_drained} sessions on node-1 kept working; drained {:?} after its clients left",
        left.elapsed()
    );
    assert_eq!(status["drained"], true, "{status}");
    assert_eq!(n(&status["sessions"]["load"]), 0, "{status}");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_cuts_a_server_off_and_ready_brings_it_back() {
    let nodes = [
        NodeServer::spawn("node-1", None, &[]).await,
        NodeServer::spawn("node-2", None, &[]).await,
    ];
    let all: Vec<&NodeServer> = nodes.iter().collect();
    let tether = TetherHandle::start(&live_config(&servers_of(&all))).await;
    let admin = tether.admin.unwrap();
    let hs = get(tether.addr, None, &eio_path(None), &[]).await;
    let node = hs.header("x-node-id").unwrap().to_owned();
    let sid = hs.sid();
    let path = format!("/backends/sockets/servers/{node}/maint");
    let r = admin_request(admin, "POST", &path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The answer is the server as /status shows it: address and weight included (the
    // seconds it has held its health and state may tick between the two reads).
    let answer: Value = serde_json::from_str(&r.text()).expect("JSON");
    let shown = tether.server_status("sockets", &node).await;
    let timeless = |v: &Value| {
        let mut v = v.clone();
        for k in ["health_for_seconds", "state_for_seconds"] {
            v.as_object_mut().expect("a server object").remove(k);
        }
        v
    };
    assert_eq!(
        timeless(&answer),
        timeless(&shown),
        "the action's answer is the /status entry"
    );
    assert_eq!(answer["state"], "maint", "{answer}");
    assert_eq!(answer["state_for_seconds"], 0, "a state just set: {answer}");
    assert!(answer["health_for_seconds"].is_u64(), "{answer}");
    let addr = nodes.iter().find(|n| n.id == node).unwrap().addr;
    assert_eq!(answer["addr"], addr.to_string(), "{answer}");
    assert_eq!(answer["weight"], 1, "{answer}");
    let r = get(tether.addr, None, &eio_path(Some(&sid)), &[]).await;
    assert_eq!(
        r.status, 400,
        "a session on a server in maint is lost at once"
    );
    assert_eq!(r.text(), r#"{"code":1,"message":"Session ID unknown"}"#);
    for _ in 0..6 {
        let hs = get(tether.addr, None, &eio_path(None), &[]).await;
        assert_ne!(hs.header("x-node-id"), Some(node.as_str()));
    }
    let path = format!("/backends/sockets/servers/{node}/ready");
    assert_eq!(admin_request(admin, "POST", &path).await.status, 200);
    let mut seen = false;
    for _ in 0..6 {
        let hs = get(tether.addr, None, &eio_path(None), &[]).await;
        seen |= hs.header("x-node-id") == Some(node.as_str());
    }
    assert!(seen, "back in ready, {node} takes new sessions again");
    let r = admin_request(admin, "POST", "/backends/sockets/servers/nope/drain").await;
    assert_eq!(r.status, 404);
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_urls_answer_other_methods_with_405_and_allow() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let tether = TetherHandle::start(&live_config(&servers_of(&[&node]))).await;
    let admin = tether.admin.unwrap();
    for action in ["drain", "ready", "maint"] {
        let path = format!("/backends/sockets/servers/node-1/{action}");
        for method in ["GET", "HEAD", "PUT", "DELETE"] {
            let r = admin_request(admin, method, &path).await;
            assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
            assert_eq!(r.header("allow"), Some("POST"), "{method} {path}");
        }
    }
    assert_eq!(
        tether.server_status("sockets", "node-1").await["state"],
        "ready",
        "a GET changed nothing"
    );
    for (method, path, allow) in [
        ("GET", "/reload", "POST"),
        ("POST", "/status", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
    ] {
        let r = admin_request(admin, method, path).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    let r = admin_request(admin, "GET", "/backends/sockets/servers/node-1/explode").await;
    assert_eq!(r.status, 404, "an unknown action is not a resource");
    tether.stop().await;
}

/// `(polling, websocket)` sessions of a server in `/status`.
fn sessions(server: &Value) -> (u64, u64) {
    (
        n(&server["sessions"]["polling"]),
        n(&server["sessions"]["websocket"]),
    )
}

/// Every server's `(polling, websocket)` sessions in `/status`, summed.
async fn all_sessions(tether: &TetherHandle) -> (u64, u64) {
    let status = tether.status().await;
    status["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["servers"].as_array().cloned().unwrap_or_default())
        .map(|s| sessions(&s))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Polls `/status` until `done` holds for what `read` returns, or `limit` passes;
/// returns the last reading and when it was taken.
async fn settle<T, F, Fut>(limit: Duration, mut read: F, done: impl Fn(&T) -> bool) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let t0 = Instant::now();
    loop {
        let now = read().await;
        if done(&now) || t0.elapsed() > limit {
            return (now, t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WebSocket session that closes is counted out at once, not after its table entry
/// (kept a moment for failed upgrade probes) expires, and never as "polling".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_websocket_sessions_leave_the_counts_at_once() {
    let _heavy = HEAVY.lock().await;
    let nodes = [
        NodeServer::spawn_rust("node-1", &[]).await,
        NodeServer::spawn_rust("node-2", &[]).await,
    ];
    let tether = TetherHandle::start(&sockets(&nodes).admin().build()).await;
    let (soak, ready) =
        Soak::start(json!({ "url": tether.url(), "clients": 20, "durationMs": 60000 })).await;
    assert_eq!(n(&ready["connected"]), 20, "{ready}");
    let (upgraded, _) = settle(
        Duration::from_secs(10),
        || all_sessions(&tether),
        |s| *s == (0, 20),
    )
    .await;
    assert_eq!(
        upgraded,
        (0, 20),
        "all 20 upgraded and counted as websocket"
    );

    let fin = soak.finish().await; // the clients disconnect and the script exits
    assert_eq!(n(&fin["connectedNow"]), 20, "{fin}");
    // An entry is kept TUNNEL_END_LINGER after its tunnel closes; the session must not
    // be counted meanwhile. The limit leaves a wide margin under it, and catches the
    // old counting (as polling until the entry expired) every time.
    let limit = tether::affinity::sid_table::TUNNEL_END_LINGER * 3 / 4;
    let (left, after) = settle(limit, || all_sessions(&tether), |s| *s == (0, 0)).await;
    println!("20 upgraded sessions closed: counted out after {after:?}");
    assert_eq!(
        left,
        (0, 0),
        "closed sessions still counted after {after:?}"
    );
    tether.stop().await;
}

/// Maintenance ends a server's sessions: its counts fall to zero with the admin call,
/// polling and upgraded sessions alike, and it reports itself drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_maint_counts_no_sessions() {
    let _heavy = HEAVY.lock().await;
    let nodes = [
        NodeServer::spawn_rust("node-1", &[]).await,
        NodeServer::spawn_rust("node-2", &[]).await,
    ];
    let tether = TetherHandle::start(&sockets(&nodes).admin().build()).await;
    let admin = tether.admin.unwrap();
    let url = tether.url();
    let (mut polling, ready_p) = Soak::start(
        json!({ "url": url, "clients": 10, "durationMs": 60000, "transports": ["polling"] }),
    )
    .await;
    let (mut upgrading, ready_u) =
        Soak::start(json!({ "url": url, "clients": 10, "durationMs": 60000 })).await;
    assert_eq!(n(&ready_p["connected"]) + n(&ready_u["connected"]), 20);
    let on_node1 = n(&ready_p["perNode"]["node-1"]) + n(&ready_u["perNode"]["node-1"]);
    let (before, _) = settle(
        Duration::from_secs(10),
        || tether.server_status("sockets", "node-1"),
        |s| sessions(s).0 > 0 && sessions(s).1 > 0,
    )
    .await;
    assert!(
        sessions(&before).0 > 0 && sessions(&before).1 > 0,
        "node-1 carries both kinds: {before}"
    );

    let r = admin_request(admin, "POST", "/backends/sockets/servers/node-1/maint").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(
        sessions(&answer),
        (0, 0),
        "the answer shows them ended: {answer}"
    );
    // Clients notice and reconnect to node-2; node-1 stays at zero (before, its polling
    // sessions stayed counted for a heartbeat and more, each refused request renewing it).
    let t0 = Instant::now();
    let back = loop {
        let (p, u) = (polling.report().await, upgrading.report().await);
        let connected = n(&p["connectedNow"]) + n(&u["connectedNow"]);
        let moved = n(&p["reconnects"]) + n(&u["reconnects"]);
        if (connected == 20 && moved >= on_node1) || t0.elapsed() > Duration::from_secs(20) {
            break (connected, moved);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(back, (20, on_node1), "node-1's clients all reconnected");
    let (other, _) = settle(
        Duration::from_secs(5),
        || tether.server_status("sockets", "node-2"),
        |s| sessions(s).0 + sessions(s).1 == 20,
    )
    .await;
    let status = tether.server_status("sockets", "node-1").await;
    println!(
        "maint: node-1 had {:?}; {:?} after its clients moved to node-2 ({:?}), drained {}; node-2 {:?}",
        sessions(&before),
        sessions(&status),
        t0.elapsed(),
        status["drained"],
        sessions(&other)
    );
    assert_eq!(sessions(&status), (0, 0), "{status}");
    assert_eq!(status["drained"], true, "{status}");
    assert_eq!(
        sessions(&other).0 + sessions(&other).1,
        20,
        "node-2 counts every client: {other}"
    );
    polling.finish().await;
    upgrading.finish().await;
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_takes_a_node_out_and_rise_brings_it_back() {
    let mut nodes = [
        NodeServer::spawn("node-1", None, &[]).await,
        NodeServer::spawn("node-2", None, &[]).await,
    ];
    let all: Vec<&NodeServer> = nodes.iter().collect();
    let tether = TetherHandle::start(&live_config(&servers_of(&all))).await;
    nodes[0].command("health fail").await;
    let t0 = Instant::now();
    while tether.server_status("sockets", "node-1").await["health"] != "down" {
        assert!(t0.elapsed() < Duration::from_secs(5), "not marked down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down_after = t0.elapsed();
    for _ in 0..6 {
        let hs = get(tether.addr, None, &eio_path(None), &[]).await;
        assert_eq!(hs.header("x-node-id"), Some("node-2"));
    }
    nodes[0].command("health ok").await;
    let t1 = Instant::now();
    while tether.server_status("sockets", "node-1").await["health"] != "up" {
        assert!(t1.elapsed() < Duration::from_secs(5), "not marked up again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "health: down {down_after:?} after /health failed, up {:?} after it recovered",
        t1.elapsed()
    );
    assert!(
        down_after >= Duration::from_millis(400),
        "fall=2 needs two probes"
    );
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_finds_servers_by_name() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let yaml = live(&[])
        .with(&format!(
            "discover: {{ dns: \"localhost:{}\", interval: 200ms }}",
            node.addr.port()
        ))
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let id = format!("127.0.0.1:{}", node.addr.port());
    let t0 = Instant::now();
    while tether.server_status("sockets", &id).await["health"] != "up" {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{}",
            tether.status().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hs = get(tether.addr, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "{}", hs.text());
    assert_eq!(hs.header("x-node-id"), Some("node-1"));
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners_without_dropping_open_connections() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tether.yaml");
    let servers = servers_of(&[&node]);
    let with_listeners = |binds: &[&str]| live(&servers).listeners(binds).build();
    write_atomically(&file, &with_listeners(&["127.0.0.1:0"]));
    let tether = TetherHandle::start_file(&file).await;
    let admin = tether.admin.unwrap();
    let first = tether.addr;
    let mut ws = ws_connect(first, "/socket.io/?EIO=4&transport=websocket").await;
    assert!(ws_read_text(&mut ws).await.starts_with("0{"));

    // Add a listener on another loopback address.
    write_atomically(&file, &with_listeners(&["127.0.0.1:0", "127.0.0.2:0"]));
    let r = admin_request(admin, "POST", "/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listeners = tether.status().await["listeners"].clone();
    let second: std::net::SocketAddr = listeners[1].as_str().unwrap().parse().unwrap();
    assert_eq!(second.ip().to_string(), "127.0.0.2", "{listeners}");
    let hs = get(second, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200, "the new listener serves");

    // Remove the first: it stops accepting, its open tunnel goes on.
    write_atomically(&file, &with_listeners(&["127.0.0.2:0"]));
    let r = admin_request(admin, "POST", "/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(first).await.is_err(),
        "the removed listener no longer accepts"
    );
    use tokio::io::AsyncWriteExt;
    // A masked text frame "3" (pong) still crosses the old connection's tunnel: the
    // node answers nothing to it, but the connection must still be open.
    ws.write_all(&[0x81, 0x81, 1, 2, 3, 4, b'3' ^ 1])
        .await
        .unwrap();
    assert!(
        wait_closed(&mut ws, Duration::from_millis(500))
            .await
            .is_none(),
        "the open tunnel was dropped by the listener's removal"
    );
    let hs = get(second, None, &eio_path(None), &[]).await;
    assert_eq!(hs.status, 200);
    let metrics = admin_request(admin, "GET", "/metrics").await.text();
    assert!(metrics.contains("tether_config_reloads_total"), "{metrics}");
    assert!(metrics.contains("tether_sessions"), "{metrics}");
    drop(ws);
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_are_retried_past_an_unreachable_server() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    // A port nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let yaml = ConfigBuilder::new()
        .admin()
        .backend("sockets")
        .server("dead", dead_addr)
        .server("node-1", node.addr)
        .build();
    let tether = TetherHandle::start(&yaml).await;
    // Sources spread over 127.0.0.x so the hash tie-break puts the dead server first
    // for some of them.
    for last in 10..40u8 {
        let from = Some(std::net::IpAddr::from([127, 0, 0, last]));
        let hs = get(tether.addr, from, &eio_path(None), &[]).await;
        assert_eq!(hs.status, 200, "handshake from .{last}: {}", hs.text());
        assert_eq!(hs.header("x-node-id"), Some("node-1"));
    }
    let dead = tether.server_status("sockets", "dead").await;
    assert_eq!(dead["health"], "down", "passive detection: {dead}");
    // A request that carries a sid is never retried elsewhere.
    let r = get(tether.addr, None, &eio_path(Some("unknown-sid")), &[]).await;
    assert_eq!(r.status, 400);
    tether.stop().await;
}
