//! Stateless stickiness: Node `socket.io` servers whose `io.engine.generateId` prefixes
//! every sid with the node's own prefix, and tether's per-server `sid_prefix`, route a
//! session with no sid table at all, and through a tether instance that never saw its
//! handshake.

mod support;

use serde_json::json;
use support::*;

const PREFIXES: [&str; 3] = ["n1-", "n2-", "n3-"];

/// Three nodes, each generating sids that start with its prefix.
async fn prefixed_nodes(redis: Option<&TestRedis>) -> Vec<NodeServer> {
    let mut v = Vec::new();
    for (i, p) in PREFIXES.iter().enumerate() {
        v.push(NodeServer::spawn(&format!("node-{}", i + 1), redis, &["--sid-prefix", p]).await);
    }
    v
}

/// Backend `sockets` over `nodes`, each server with its `sid_prefix` when `prefixed`,
/// and the sid table off.
fn config(nodes: &[NodeServer], prefixed: bool) -> String {
    let mut b = ConfigBuilder::new()
        .backend("sockets")
        .with("sessions:\n  capacity: 0");
    for (n, p) in nodes.iter().zip(PREFIXES) {
        b = if prefixed {
            b.server_with(&n.id, n.addr, &format!("sid_prefix: \"{p}\""))
        } else {
            b.server(&n.id, n.addr)
        };
    }
    b.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_then_upgrade_swarm_sticks_by_sid_prefix_with_no_sid_table() {
    let _heavy = HEAVY.lock().await;
    let redis = TestRedis::start().await;
    let nodes = prefixed_nodes(Some(&redis)).await;
    let tether = TetherHandle::start(&config(&nodes, true)).await;
    let clients = 200u64;
    let report = swarm(json!({ "url": tether.url(), "clients": clients })).await;
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    // A request of a session sent to another node gets `Session ID unknown`, which the
    // client sees as a connect error or a disconnect: none here, so every request of
    // every session reached the node that created it.
    assert_eq!(n("connectErrors"), 0, "{report}");
    assert_eq!(n("connected"), clients, "{report}");
    assert_eq!(n("upgraded"), clients, "{report}");
    assert_eq!(n("acked"), clients, "{report}");
    assert_eq!(n("echoOk"), clients, "{report}");
    assert_eq!(n("disconnects"), 0, "{report}");
    println!(
        "sid_prefix swarm, no sid table: perNode {}",
        report["perNode"]
    );
    let spread = report["perNode"].as_object().map_or(0, |m| m.len());
    assert!(spread >= 2, "placement still spreads sessions: {report}");
    tether.stop().await;

    // Control: the same swarm without `sid_prefix` (and no table, no cookie) breaks.
    let control = TetherHandle::start(&config(&nodes, false)).await;
    let report = swarm(json!({ "url": control.url(), "clients": clients })).await;
    println!("control swarm: {report}");
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    let failed = n("connectErrors") > 0
        || n("connected") < clients
        || n("upgraded") < clients
        || n("disconnects") > 0;
    assert!(
        failed,
        "with no table and no prefix, sessions cannot stick: {report}"
    );
    control.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_serves_sessions_it_never_saw_by_sid_prefix() {
    let nodes = prefixed_nodes(None).await;
    let a = TetherHandle::start(&config(&nodes, true)).await;
    let mut sessions = Vec::new();
    for i in 0..12u8 {
        let hs = get(a.addr, loopback(10 + i), &eio_path(None), &[]).await;
        assert_eq!(hs.status, 200, "{}", hs.text());
        let node = hs.header("x-node-id").expect("x-node-id").to_owned();
        let sid = hs.sid();
        let k = nodes.iter().position(|n| n.id == node).unwrap();
        assert!(sid.starts_with(PREFIXES[k]), "{node} issued {sid}");
        sessions.push((sid, node));
    }
    let mut nodes_used: Vec<&str> = sessions.iter().map(|(_, n)| n.as_str()).collect();
    nodes_used.sort();
    nodes_used.dedup();
    assert!(nodes_used.len() >= 2, "sessions spread: {sessions:?}");

    // Instance B starts after every handshake and has no table: the prefix alone routes.
    let b = TetherHandle::start(&config(&nodes, true)).await;
    for (sid, node) in &sessions {
        for tether in [&b, &a] {
            let r = post_pong(tether.addr, sid).await;
            assert_eq!((r.status, r.text().as_str()), (200, "ok"), "sid {sid}");
            assert_eq!(r.header("x-node-id"), Some(node.as_str()), "sid {sid}");
        }
    }
    // A prefix no server has is unknown, never routed blindly.
    for sid in [
        "n4-AAAAAAAAAAAAAAAAAAAA",
        "n-AAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let r = post_pong(b.addr, sid).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (400, SID_UNKNOWN),
            "sid {sid}"
        );
        assert_eq!(
            r.header("x-node-id"),
            None,
            "tether answers, no node: {sid}"
        );
    }

    // Control: the same nodes without `sid_prefix` in tether's config, and no table:
    // the sessions are unknown to a fresh instance.
    let c = TetherHandle::start(&config(&nodes, false)).await;
    for (sid, _) in &sessions {
        let r = post_pong(c.addr, sid).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (400, SID_UNKNOWN),
            "sid {sid}"
        );
    }
    c.stop().await;
    b.stop().await;
    a.stop().await;
}
