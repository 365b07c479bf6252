//! A real browser (headless Debian chromium, driven by playwright-core from
//! tests/node/browser.js) on the demo chat page through tether over TLS, the real
//! socket.io-client bundle in a blank page, and the admin dashboard behind a token.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// Three Rust nodes sharing a Redis, behind a TLS listener.
struct TlsCluster {
    _redis: TestRedis,
    nodes: Vec<NodeServer>,
    tether: TetherHandle,
    _certs: tempfile::TempDir,
}

/// A development certificate for `localhost`, in a directory kept while it is held.
fn dev_cert() -> (tempfile::TempDir, tether::tls::dev_ca::DevCertPaths) {
    let certs = tempfile::tempdir().unwrap();
    let paths = tether::tls::dev_ca::generate_dev_cert(&["localhost"])
        .unwrap()
        .write(certs.path())
        .unwrap();
    (certs, paths)
}

async fn tls_cluster() -> TlsCluster {
    let redis = TestRedis::start_tcp().await;
    let url = redis.url();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(NodeServer::spawn_rust(&format!("node-{i}"), &["--redis", &url]).await);
    }
    let (certs, paths) = dev_cert();
    let yaml = nodes
        .iter()
        .fold(
            ConfigBuilder::new()
                .tls_listener(paths.cert.display(), paths.key.display())
                .backend("chat")
                .with("health: { path: /health, interval: 500ms, timeout: 400ms, fall: 2 }"),
            |b, n| b.server(&n.id, n.addr),
        )
        .build();
    let tether = TetherHandle::start(&yaml).await;
    TlsCluster {
        _redis: redis,
        nodes,
        tether,
        _certs: certs,
    }
}

fn https(addr: SocketAddr) -> String {
    format!("https://localhost:{}", addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_crosses_nodes_and_survives_a_killed_node_in_a_real_browser() {
    let _heavy = HEAVY.lock().await;
    let c = tls_cluster().await;
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("browser-chat.png");
    let _ = std::fs::remove_file(&shot);
    let (mut b, kill) = Soak::start_script_until(
        "browser.js",
        json!({ "mode": "chat", "url": format!("{}/", https(c.tether.addr)), "screenshot": shot }),
        "kill",
    )
    .await;
    let victim = kill["node"].as_str().expect("node to kill").to_owned();
    let node = c
        .nodes
        .iter()
        .find(|n| n.id == victim)
        .unwrap_or_else(|| panic!("unknown node {victim}"));
    node.signal("KILL");
    b.send("killed").await;
    let fin = b.next_event("final", Duration::from_secs(60)).await;
    println!("browser chat: {fin}");
    let nodes: Vec<&str> = fin["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(nodes.len(), 2, "{fin}");
    assert_ne!(
        nodes[0], nodes[1],
        "the two contexts on different nodes: {fin}"
    );
    assert_eq!(fin["delivered"], true, "{fin}");
    // A first-time user is told what to do with an empty pane; the hint goes with the
    // first message.
    assert_eq!(fin["hintBefore"]["visible"], true, "{fin}");
    assert!(
        fin["hintBefore"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("second window"),
        "{fin}"
    );
    assert_eq!(fin["hintAfter"], json!([false, false]), "{fin}");
    // "(you)" is whole after a long name in both who's-online lists.
    for you in fin["you"].as_array().expect("you") {
        assert_eq!(you["found"], true, "{fin}");
        assert!(
            you["text"].as_str().unwrap_or("").contains("-long-name-"),
            "{you}"
        );
        assert_eq!(you["clippedBy"], json!([]), "\"(you)\" is cut off: {you}");
        assert_eq!(you["overflowing"], json!([]), "{you}");
    }
    let moved = fin["reconnectedTo"].as_str().unwrap_or("");
    assert!(!moved.is_empty() && moved != victim, "{fin}");
    assert_eq!(fin["deliveredAfter"], true, "{fin}");
    assert!(shot.exists(), "screenshot written to {}", shot.display());
    println!("screenshot: {}", shot.display());
    c.tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_socket_io_client_bundle_upgrades_through_tether_in_a_browser() {
    let _heavy = HEAVY.lock().await;
    let c = tls_cluster().await;
    let bundle = repo().join("tests/node/node_modules/socket.io-client/dist/socket.io.min.js");
    let r = node_script(
        "browser.js",
        json!({ "mode": "socketio-client", "url": https(c.tether.addr), "bundle": bundle }),
    )
    .await;
    println!("socket.io-client in chromium: {r}");
    assert_eq!(r["connected"], true, "{r}");
    assert_eq!(r["upgraded"], true, "{r}");
    assert_eq!(r["transport"], "websocket", "{r}");
    assert_eq!(r["echoOk"], true, "{r}");
    c.tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_behind_a_token_lets_a_browser_user_sign_in() {
    let _heavy = HEAVY.lock().await;
    let token = "dash-board-t0ken";
    let node = NodeServer::spawn_rust("node-1", &[]).await;
    let yaml = ConfigBuilder::new()
        .admin_yaml(&format!("bind: \"127.0.0.1:0\"\n  token: \"{token}\""))
        .backend("chat")
        .server(&node.id, node.addr)
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let admin = tether.admin.expect("admin listener");
    // The API itself still wants the token.
    let r = admin_request(admin, "GET", "/status").await;
    assert_eq!(r.status, 401, "{}", r.text());
    let shot = repo().join("target/test-artifacts/browser-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let r = node_script(
        "browser.js",
        json!({ "mode": "dashboard", "url": format!("http://{admin}/"), "token": token, "screenshot": shot }),
    )
    .await;
    println!("dashboard in chromium: {r}");
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(
        r["pageStatus"], 200,
        "the page loads without the token: {r}"
    );
    assert_eq!(r["loginShown"], true, "{r}");
    assert!(
        r["wrongMessage"].as_str().unwrap_or("").contains("refused"),
        "{r}"
    );
    assert_eq!(r["retryPossible"], true, "{r}");
    assert_eq!(r["servers"], json!(["node-1"]), "{r}");
    assert_eq!(r["addresses"], json!([node.addr.to_string()]), "{r}");
    assert_eq!(r["loginHiddenAfter"], true, "{r}");
    assert_eq!(r["serversLater"], json!(["node-1"]), "{r}");
    assert_eq!(r["loginHiddenLater"], true, "{r}");
    assert_eq!(r["serversAfterReload"], json!(["node-1"]), "{r}");
    assert_eq!(r["cookies"], 0, "the token is never a cookie: {r}");
    assert_eq!(r["tokenInUrl"], false, "{r}");
    assert_eq!(r["pageErrors"], json!([]), "{r}");
    tether.stop().await;
}

/// `GET /status` with the token, as JSON.
async fn status_with_token(admin: SocketAddr, token: &str) -> Value {
    let r = admin_request_with_token(admin, "GET", "/status", token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).expect("status is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_three_live_servers_with_charts_and_drains_one_in_a_real_browser() {
    let _heavy = HEAVY.lock().await;
    let token = "dash-board-live-t0ken";
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(NodeServer::spawn_rust(&format!("node-{i}"), &[]).await);
    }
    // A TLS listener beside the plain one, for the certificates' expiry.
    let (_certs, paths) = dev_cert();
    let yaml = nodes
        .iter()
        .fold(
            ConfigBuilder::new()
                .listeners(&["127.0.0.1:0"])
                .tls_listener(paths.cert.display(), paths.key.display())
                .admin_yaml(&format!("bind: \"127.0.0.1:0\"\n  token: \"{token}\""))
                .backend("chat"),
            |b, n| b.server(&n.id, n.addr),
        )
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let admin = tether.admin.expect("admin listener");
    assert_eq!(
        tether.url(),
        format!("http://{}", tether.addr),
        "the plain listener first"
    );

    // Real Socket.IO sessions of every kind: polling only, WebSocket only, and the default
    // (polling, then an upgrade), kept open and emitting while the browser looks.
    let mut clients = 0;
    let mut swarms = Vec::new();
    for (n, transports) in [
        (6, json!(["polling"])),
        (6, json!(["websocket"])),
        (3, json!(["polling", "websocket"])),
    ] {
        let (soak, ready) = Soak::start(json!({
            "url": tether.url(), "clients": n, "transports": transports,
            "durationMs": 120000, "emitEveryMs": 500,
        }))
        .await;
        assert_eq!(ready["connected"], n, "{ready}");
        clients += n;
        swarms.push(soak);
    }

    let artifacts = repo().join("target/test-artifacts");
    let laptop = artifacts.join("dashboard-laptop.png");
    let phone = artifacts.join("dashboard-phone.png");
    let dark = artifacts.join("dashboard-laptop-dark.png");
    for shot in [&laptop, &phone, &dark] {
        let _ = std::fs::remove_file(shot);
    }
    let r = node_script(
        "browser.js",
        json!({ "mode": "dashboard-live", "url": format!("http://{admin}/"), "token": token,
                "servers": 3, "maintCancel": "node-3", "drain": "node-2",
                "laptopShot": laptop, "phoneShot": phone, "darkShot": dark }),
    )
    .await;
    println!("live dashboard in chromium: {r}");
    assert!(r["error"].is_null(), "{r}");

    // Three cards whose counts are those of /status, all sessions accounted for.
    assert_eq!(r["servers"], json!(["node-1", "node-2", "node-3"]), "{r}");
    let mut total = 0;
    for id in ["node-1", "node-2", "node-3"] {
        let (shown, want) = (&r["shown"][id], &r["statusShown"][id]);
        assert_eq!(shown["polling"], want["polling"], "{id}: {r}");
        assert_eq!(shown["websocket"], want["websocket"], "{id}: {r}");
        let load = shown["load"].as_u64().unwrap_or(0);
        assert!(load > 0, "{id} has sessions: {r}");
        total += load;
    }
    assert_eq!(total, clients, "every client's session is on a card: {r}");
    // The overview and every card drew a sessions chart.
    for chart in [
        "overview-sessions",
        "node-1/sessions",
        "node-2/sessions",
        "node-3/sessions",
    ] {
        assert!(
            r["charts"][chart].as_u64().unwrap_or(0) >= 2,
            "{chart}: {r}"
        );
    }
    for (chart, points) in r["chartsAtShot"].as_object().expect("chartsAtShot") {
        assert!(points.as_u64().unwrap_or(0) >= 2, "{chart} drawn: {r}");
    }
    assert!(
        r["hover"].as_str().unwrap_or("").contains("WebSocket"),
        "{r}"
    );
    assert_eq!(
        r["lookup"]["shown"].as_str().map(|s| s.split(' ').next()),
        Some(r["lookup"]["server"].as_str()),
        "{r}"
    );

    // Maint asks first (it ends sessions); cancelling changes nothing.
    assert!(
        r["maintConfirm"].as_str().unwrap_or("").contains("node-3"),
        "{r}"
    );
    assert_eq!(r["maintCancelledState"], "ready", "{r}");
    // The drain click, seen by the page and by the API.
    assert_eq!(r["drainShown"], "draining", "{r}");
    assert_eq!(r["drainButtonDisabled"], true, "{r}");
    let status = status_with_token(admin, token).await;
    let server = |id: &str| {
        status["backends"][0]["servers"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == id).cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(server("node-2")["state"], "draining", "{status}");
    assert_eq!(server("node-2")["state_source"], "admin", "{status}");
    assert_eq!(server("node-3")["state"], "ready", "{status}");
    assert_eq!(server("node-1")["state"], "ready", "{status}");
    assert_eq!(r["serversAfterReload"], r["servers"], "{r}");

    // The phone layout: the same cards and charts, nothing wider than the screen.
    assert_eq!(r["phone"]["servers"], r["servers"], "{r}");
    assert_eq!(r["phone"]["overflowing"], json!([]), "{r}");
    assert!(
        r["phone"]["scrollWidth"].as_u64() <= r["phone"]["innerWidth"].as_u64(),
        "no horizontal scroll on a phone: {r}"
    );

    // No script error; the only console errors are the API's 401s before signing in.
    assert_eq!(r["pageErrors"], json!([]), "{r}");
    for e in r["consoleErrors"].as_array().expect("consoleErrors") {
        assert!(
            e["signedIn"] == false && e["text"].as_str().unwrap_or("").contains("401"),
            "console error: {e}"
        );
    }
    // The TLS listener's certificate, with its expiry. (The list is the process's: other
    // tests' tethers in this binary may add theirs.)
    let cert = paths.cert.display().to_string();
    let listed = r["certificates"].as_array().expect("certificates");
    assert!(
        listed
            .iter()
            .filter_map(Value::as_str)
            .any(|c| c.contains(&cert) && c.contains("days")),
        "{cert} with its days left: {r}"
    );
    for shot in [&laptop, &phone, &dark] {
        assert!(shot.exists(), "screenshot written to {}", shot.display());
        println!("screenshot: {}", shot.display());
    }
    for soak in swarms {
        soak.finish().await;
    }
    tether.stop().await;
}
