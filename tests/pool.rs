//! The bundled Rust nodes (`tether node`, socketioxide) behind tether: cross-node
//! broadcasts and rooms over Redis and over the in-process driver, Redis going away and
//! coming back, the Streams adapter against pub/sub, and `tether demo`.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn yaml_for(servers: &[(String, SocketAddr)]) -> String {
    servers
        .iter()
        .fold(ConfigBuilder::new().backend("chat"), |b, (id, addr)| {
            b.server(id, addr)
        })
        .build()
}

async fn rust_nodes(n: usize, args: &[&str]) -> Vec<NodeServer> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(NodeServer::spawn_rust(&format!("node-{i}"), args).await);
    }
    v
}

fn servers_of(nodes: &[NodeServer]) -> Vec<(String, SocketAddr)> {
    nodes.iter().map(|n| (n.id.clone(), n.addr)).collect()
}

fn assert_rooms(r: &Value, clients: u64) {
    assert_eq!(n(&r["connected"]), clients, "{r}");
    assert_eq!(
        r["perNode"].as_object().map_or(0, |m| m.len()),
        3,
        "spread over 3 nodes: {r}"
    );
    assert_eq!(n(&r["echoOk"]), clients, "acks: {r}");
    assert_eq!(
        n(&r["broadcastReceived"]),
        clients,
        "broadcast reached every node: {r}"
    );
    assert_eq!(
        n(&r["redReceived"]),
        n(&r["redMembers"]),
        "room members on every node: {r}"
    );
    assert!(
        r["redByNode"].as_object().map_or(0, |m| m.len()) >= 2,
        "{r}"
    );
    assert_eq!(
        n(&r["nonMembersReceived"]),
        0,
        "only the room's members: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_nodes_share_broadcasts_and_rooms_through_redis() {
    let _heavy = HEAVY.lock().await;
    let redis = TestRedis::start_tcp().await;
    let url = redis.url();
    let nodes = rust_nodes(3, &["--redis", &url]).await;
    let tether = TetherHandle::start(&yaml_for(&servers_of(&nodes))).await;
    let r = node_script(
        "crossnode.js",
        json!({ "url": tether.url(), "clients": 30, "mode": "rooms" }),
    )
    .await;
    println!("redis adapter: {r}");
    assert_rooms(&r, 30);
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_nodes_share_broadcasts_and_rooms_without_redis() {
    use tether_node::drivers::memory::MemoryBus;
    use tether_node::node::{self, AdapterChoice, NodeOptions};
    let _heavy = HEAVY.lock().await;
    let bus = MemoryBus::new();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(
            node::start(NodeOptions {
                bind: "127.0.0.1:0".parse().unwrap(),
                id: format!("node-{i}"),
                adapter: AdapterChoice::Memory(bus.clone()),
                ping_interval: None,
                ping_timeout: None,
            })
            .await
            .expect("in-process node"),
        );
    }
    let servers: Vec<_> = nodes
        .iter()
        .map(|n| (n.id().to_owned(), n.addr()))
        .collect();
    let tether = TetherHandle::start(&yaml_for(&servers)).await;
    let r = node_script(
        "crossnode.js",
        json!({ "url": tether.url(), "clients": 30, "mode": "rooms" }),
    )
    .await;
    println!("in-process driver: {r}");
    assert_rooms(&r, 30);
    tether.stop().await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_local_delivery_and_cross_node_delivery_resumes() {
    let _heavy = HEAVY.lock().await;
    let mut redis = TestRedis::start_tcp().await;
    let url = redis.url();
    let nodes = rust_nodes(3, &["--redis", &url]).await;
    let tether = TetherHandle::start(&yaml_for(&servers_of(&nodes))).await;
    let (mut s, ready) = Soak::start_script(
        "crossnode.js",
        json!({ "url": tether.url(), "clients": 30, "mode": "stream", "durationMs": 60000 }),
    )
    .await;
    assert_eq!(n(&ready["connected"]), 30, "{ready}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = s.report().await;
    let nodes_seen = before["nodes"].as_object().unwrap().len();
    assert_eq!(nodes_seen, 3, "{before}");
    for (node, v) in before["nodes"].as_object().unwrap() {
        assert!(
            n(&v["received"]) > 0,
            "{node} got broadcasts before the outage: {before}"
        );
    }

    redis.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Nodes say so in /health.
    let health = get(nodes[1].addr, None, "/health", &[]).await;
    assert_eq!(
        health.status,
        503,
        "a node without its Redis reports it: {}",
        health.text()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = s.report().await;

    redis.restart().await;
    s.send("mark").await;
    let restarted = std::time::Instant::now();
    let mut after = s.report().await;
    while after["nodes"]
        .as_object()
        .unwrap()
        .values()
        .any(|v| v["firstAfterMarkMs"].is_null())
        && restarted.elapsed() < Duration::from_secs(12)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = s.report().await;
    }
    let fin = s.finish().await;
    println!("redis outage: during {during}\nafter {after}\nfinal {fin}");
    for (node, v) in fin["nodes"].as_object().unwrap() {
        assert_eq!(n(&v["ackFail"]), 0, "{node}: local delivery stopped: {fin}");
        let resumed = v["firstAfterMarkMs"].as_u64();
        assert!(
            resumed.is_some_and(|ms| ms <= 5000),
            "{node}: cross-node delivery did not resume within 5 s: {after}"
        );
    }
    assert_eq!(n(&fin["connected"]), 30, "{fin}");
    let health = get(nodes[1].addr, None, "/health", &[]).await;
    assert_eq!(health.status, 200);
    drop(redis);
    tether.stop().await;
}

/// 1,000 numbered broadcasts, the nodes' Redis connections killed half-way.
async fn numbered_with_a_connection_kill(adapter: &str) -> Value {
    let redis = TestRedis::start_tcp().await;
    let url = redis.url();
    let nodes = rust_nodes(3, &["--redis", &url, "--adapter", adapter]).await;
    let tether = TetherHandle::start(&yaml_for(&servers_of(&nodes))).await;
    let (mut s, ready) = Soak::start_script(
        "crossnode.js",
        json!({ "url": tether.url(), "clients": 15, "mode": "numbered", "count": 1000, "intervalMs": 5 }),
    )
    .await;
    assert_eq!(n(&ready["connected"]), 15, "{ready}");
    s.next_event("half", Duration::from_secs(30)).await;
    let killed_normal = redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    let killed_pubsub = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let fin = s.next_event("final", Duration::from_secs(60)).await;
    println!(
        "{adapter}: killed {} normal + {} pub/sub connections half-way; {fin}",
        killed_normal.trim(),
        killed_pubsub.trim()
    );
    tether.stop().await;
    fin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_adapter_replays_what_a_dropped_connection_missed() {
    let _heavy = HEAVY.lock().await;
    let streams = numbered_with_a_connection_kill("redis-streams").await;
    for (node, v) in streams["nodes"].as_object().unwrap() {
        assert_eq!(
            n(&v["complete"]),
            n(&v["clients"]),
            "{node} lost broadcasts: {streams}"
        );
        assert_eq!(
            n(&v["inOrder"]),
            n(&v["clients"]),
            "{node} out of order: {streams}"
        );
    }
    // The same with pub/sub: what it loses is reported, which is why Streams exists.
    let pubsub = numbered_with_a_connection_kill("redis").await;
    let lost: u64 = pubsub["nodes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| n(&v["missing"]))
        .sum();
    println!("pub/sub adapter lost {lost} of 15,000 deliveries across the connection kill; streams lost 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_with_nothing_installed_and_its_page_and_cluster_work() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "demo",
            "--no-redis",
            "--port",
            "0",
            "--tls-port",
            "0",
            "--admin-port",
            "0",
        ])
        .arg("--cert-dir")
        .arg(dir.path())
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _stderr = StderrTail::follow("demo", child.stderr.take().unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let demo: Value = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("demo starts")
            .unwrap()
            .expect("demo printed its addresses");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["event"] == "demo" {
                break v;
            }
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http: SocketAddr = demo["http"].as_str().unwrap().parse().unwrap();
    let page = get(http, None, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("tether-client.js"), "{}", page.text());
    let js = get(http, None, "/tether-client.js", &[]).await;
    assert_eq!(js.status, 200);
    let r = node_script(
        "crossnode.js",
        json!({ "url": format!("http://{http}"), "clients": 30, "mode": "rooms" }),
    )
    .await;
    println!("demo: {r}");
    assert_rooms(&r, 30);
    tether_kit::signal::send_signal(child.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("demo stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// The pids of `tether node` processes listening on `port`, found in /proc (children of
/// the pool this test started).
fn node_pids(port: u16) -> Vec<u32> {
    let want = format!("node\0--port\0{port}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&want))
                .unwrap_or(false)
        })
        .collect()
}

/// A free port the kernel never hands out on its own. `tether pool` takes a fixed base
/// port; one found by binding port 0 and letting go could be given to another test's
/// port-0 listener before the pool's node binds it, and that listener would then answer
/// in the node's place.
fn port_outside_ephemeral_range() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let below = low.saturating_sub(10_000).max(1024);
    let span = low.saturating_sub(below).max(1);
    let start = std::process::id() as u16 % span;
    (0..span)
        .map(|i| below + (start + i) % span)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_restarts_a_node_that_dies() {
    let base = port_outside_ephemeral_range();
    let mut pool = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        // One node: its port was free a moment ago; a second, consecutive one might be
        // an ephemeral port in use by another test's connection.
        .args(["pool", "--nodes", "1", "--base-port", &base.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let node1: SocketAddr = ([127, 0, 0, 1], base).into();
    let healthy = |addr: SocketAddr| async move {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && get(addr, None, "/health", &[]).await.status == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(healthy(node1).await, "node-1 serving");
    let before = node_pids(base);
    assert_eq!(before.len(), 1, "{before:?}");
    tether_kit::signal::send_signal(before[0], "KILL");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(healthy(node1).await, "node-1 restarted");
    let after = node_pids(base);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before, "a new process");
    tether_kit::signal::send_signal(pool.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), pool.wait())
        .await
        .expect("pool stops")
        .unwrap();
    assert!(status.success());
    assert!(node_pids(base).is_empty(), "children stopped with the pool");
}

/// The pids of the processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid ...`; comm may hold spaces, so read after its `)`.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// The kernel's range for port-0 binds: a port picked "any free" is in it, and a fixed
/// default such as 3001 is not.
fn ephemeral_range() -> std::ops::RangeInclusive<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".to_owned());
    let mut ends = text.split_whitespace().map(|p| p.parse::<u16>().unwrap());
    ends.next().unwrap()..=ends.next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_base_port_0_gives_each_node_a_free_port_and_keeps_it_across_a_restart() {
    let _heavy = HEAVY.lock().await;
    let mut pool = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["pool", "--nodes", "3", "--base-port", "0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(pool.stderr.take().unwrap()).lines();
    // `node listening node=node-2 port=41234`, for each start of a node.
    let mut next_listening = async || loop {
        let line = tokio::time::timeout(Duration::from_secs(30), log.next_line())
            .await
            .expect("a node says it listens")
            .unwrap()
            .expect("the pool is running");
        if !line.contains("node listening") {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                .to_owned()
        };
        break (field("node="), field("port=").parse::<u16>().unwrap());
    };
    let mut ports = std::collections::BTreeMap::new();
    while ports.len() < 3 {
        let (node, port) = next_listening().await;
        ports.insert(node, port);
    }
    let distinct: std::collections::BTreeSet<u16> = ports.values().copied().collect();
    assert_eq!(distinct.len(), 3, "{ports:?}");
    for (node, &port) in &ports {
        assert!(ephemeral_range().contains(&port), "{node} on {port}");
        let answer = get(([127, 0, 0, 1], port).into(), None, "/health", &[]).await;
        assert_eq!(answer.status, 200, "{node} on {port}");
    }
    // A node that dies comes back on the port it had: whoever was told where it is
    // still finds it.
    let port = ports["node-1"];
    let pids = children_of(pool.id().unwrap());
    assert_eq!(pids.len(), 3, "{pids:?}");
    let node1 = pids
        .iter()
        .copied()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("node-1"))
        })
        .expect("node-1's process");
    tether_kit::signal::send_signal(node1, "KILL");
    assert_eq!(next_listening().await, ("node-1".to_owned(), port));
    tether_kit::signal::send_signal(pool.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), pool.wait())
        .await
        .expect("pool stops")
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_redis_and_base_port_0_puts_its_child_nodes_on_free_ports() {
    let _heavy = HEAVY.lock().await;
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["demo", "--redis", &redis.unix_url(), "--base-port", "0"])
        .args([
            "--port",
            "0",
            "--tls-port",
            "0",
            "--admin-port",
            "0",
            "--json",
        ])
        .arg("--cert-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _stderr = StderrTail::follow("demo", child.stderr.take().unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let demo: Value = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("demo starts")
            .unwrap()
            .expect("demo printed its addresses");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["event"] == "demo" {
                break v;
            }
        }
    };
    let nodes: Vec<SocketAddr> = demo["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["addr"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "{demo}");
    // Child processes of the demo, serving where it says.
    assert_eq!(children_of(child.id().unwrap()).len(), 3, "{demo}");
    for addr in &nodes {
        assert!(ephemeral_range().contains(&addr.port()), "{demo}");
        assert_eq!(get(*addr, None, "/health", &[]).await.status, 200, "{addr}");
    }
    // tether in front of them: a handshake through it is answered by one of them.
    let http: SocketAddr = demo["http"].as_str().unwrap().parse().unwrap();
    let open = get(http, None, "/socket.io/?EIO=4&transport=polling", &[]).await;
    assert_eq!(open.status, 200, "{}", open.text());
    tether_kit::signal::send_signal(child.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("demo stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
