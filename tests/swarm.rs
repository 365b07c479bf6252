//! Real peers end to end: three Node `socket.io` 4.8 servers sharing a real Redis
//! through `@socket.io/redis-adapter`, a `socket.io-client` 4.8 swarm, tether between.

mod support;

use serde_json::json;
use support::*;

const CLIENTS: u64 = 300;

fn assert_all_passed(report: &serde_json::Value, clients: u64, upgraded: bool) {
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connectErrors"), 0, "connect errors: {report}");
    assert_eq!(n("connected"), clients, "{report}");
    if upgraded {
        assert_eq!(n("upgraded"), clients, "{report}");
    }
    assert_eq!(n("acked"), clients, "{report}");
    assert_eq!(n("echoOk"), clients, "{report}");
    assert_eq!(n("broadcastReceived"), clients, "{report}");
    assert_eq!(n("disconnects"), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_first_swarm_passes_and_spreads_evenly_from_one_ip() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3).await;
    let tether = TetherHandle::start(&cluster.config().build()).await;
    let report = swarm(json!({ "url": tether.url(), "clients": CLIENTS })).await;
    assert_all_passed(&report, CLIENTS, true);
    let ratio = max_over_mean(&report, 3);
    println!(
        "default placement, {CLIENTS} clients from 127.0.0.1: perNode {} max/mean {ratio:.3}",
        report["perNode"]
    );
    assert!(ratio <= 1.15, "max/mean {ratio} > 1.15: {report}");
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_config_breaks_the_same_swarm() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3).await;
    let tether = TetherHandle::start(&cluster.config().with("balance: round_robin").build()).await;
    let report = swarm(json!({ "url": tether.url(), "clients": CLIENTS })).await;
    println!("round-robin swarm: {report}");
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    let failed = n("connectErrors") > 0
        || n("connected") < CLIENTS
        || n("upgraded") < CLIENTS
        || n("disconnects") > 0;
    assert!(
        failed,
        "a non-sticky proxy must break polling-first Socket.IO: {report}"
    );
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_only_polling_only_and_cookie_clients_pass() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3).await;
    let cookie = "cookie:\n  secret: \"integration-test-secret-0123456789\"";
    let tether = TetherHandle::start(&cluster.config().with(cookie).build()).await;

    let ws =
        swarm(json!({ "url": tether.url(), "clients": 100, "transports": ["websocket"] })).await;
    assert_all_passed(&ws, 100, true);
    assert_eq!(ws["finalTransports"]["websocket"], 100, "{ws}");

    let polling = swarm(json!({
        "url": tether.url(), "clients": 100, "transports": ["polling"], "upgrade": false
    }))
    .await;
    assert_all_passed(&polling, 100, false);
    assert_eq!(polling["finalTransports"]["polling"], 100, "{polling}");

    let creds =
        swarm(json!({ "url": tether.url(), "clients": 100, "withCredentials": true })).await;
    assert_all_passed(&creds, 100, true);
    // Clients that keep cookies got tether's and send it on (here on the WebSocket).
    assert_eq!(creds["cookieSeen"], 100, "{creds}");
    tether.stop().await;
}
