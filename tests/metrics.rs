//! The metrics say what the clients saw: 300 socket.io-client clients on three Node
//! socket.io servers through tether, then a server put in maint and another killed, with
//! every figure read from a real `/metrics` scrape. One test in its own binary: the
//! recorder is process-wide, so no other test's traffic may mix into the counts.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// A scrape: `name{labels}` → value, labels in the exporter's order.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    async fn take(admin: SocketAddr) -> Scrape {
        let r = admin_request(admin, "GET", "/metrics").await;
        assert_eq!(r.status, 200);
        let mut series = BTreeMap::new();
        for line in r.text().lines().filter(|l| !l.starts_with('#')) {
            if let Some((key, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    series.insert(key.to_owned(), v);
                }
            }
        }
        Scrape(series)
    }

    /// Sum of the series of `name` whose labels include every `label="value"` given.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .filter(|(k, _)| {
                labels
                    .iter()
                    .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|k| k.split('{').next() == Some(name) || k.starts_with(&format!("{name}_")))
    }
}

fn n(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Scrapes until `check` holds, for up to `limit`; returns the last scrape.
async fn until(admin: SocketAddr, limit: Duration, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = Scrape::take(admin).await;
        if check(&s) || tokio::time::Instant::now() >= deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the clients' own report (live sessions per node, from `whoami`) and a
/// scrape agree, both settled; returns both. Panics with the two when they never do.
async fn checkpoint(soak: &mut Soak, admin: SocketAddr, ids: &[String]) -> (Value, Scrape) {
    // A client whose long poll was in flight at a maint keeps waiting on it until the
    // server next pings (pingInterval, 25 s), then is refused and reconnects.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let report = soak.report().await;
        let s = Scrape::take(admin).await;
        let agree = ids.iter().all(|id| {
            n(&report["perNodeFinal"][id]) == s.sum("tether_server_sessions", &[("server", id)])
        }) && n(&report["connectedNow"]) == s.sum("tether_server_sessions", &[])
            && n(&report["transportsNow"]["websocket"])
                == s.sum("tether_sessions", &[("transport", "websocket")]);
        if agree {
            return (report, s);
        }
        if tokio::time::Instant::now() >= deadline {
            let ours: Vec<_> = ids
                .iter()
                .map(|id| (id, s.sum("tether_server_sessions", &[("server", id)])))
                .collect();
            panic!(
                "the clients say {} / {} / {}, the scrape {ours:?}, websocket {}",
                report["perNodeFinal"],
                report["connectedNow"],
                report["transportsNow"],
                s.sum("tether_sessions", &[("transport", "websocket")])
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_equal_what_the_clients_saw() {
    let _heavy = HEAVY.lock().await;
    const CLIENTS: usize = 300;
    let cluster = Cluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let paths = tether::tls::dev_ca::generate_dev_cert(&["localhost"])
        .unwrap()
        .write(dir.path())
        .unwrap();
    let yaml = cluster
        .config()
        .with("health: { path: /health, interval: 500ms, timeout: 400ms, fall: 2 }")
        .admin()
        .listener("bind: \"127.0.0.1:0\"")
        .tls_listener(paths.cert.display(), paths.key.display())
        .build();
    let tether = TetherHandle::start(&yaml).await;
    let admin = tether.admin.expect("admin listener");

    let (mut soak, ready) = Soak::start(json!({
        "url": format!("http://{}", tether.addr),
        "clients": CLIENTS,
        "durationMs": 120_000,
    }))
    .await;
    assert_eq!(n(&ready["connected"]) as usize, CLIENTS, "{ready}");
    let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();

    // Every client upgrades to WebSocket; then the live sessions per server are the
    // clients' own whoami counts.
    until(admin, Duration::from_secs(30), |s| {
        s.sum("tether_sessions", &[("transport", "websocket")]) == CLIENTS as f64
    })
    .await;
    // The clients' own report at a moment both sides agree (a client whose ping timed out
    // on a loaded machine reconnects meanwhile, so `ready` may be stale).
    let (report, s) = checkpoint(&mut soak, admin, &ids).await;
    for id in &ids {
        let saw = n(&report["perNodeFinal"][id]);
        let live = s.sum("tether_server_sessions", &[("server", id)]);
        let by_transport = s.sum("tether_sessions", &[("server", id)]);
        println!(
            "{id}: clients {saw}, tether_server_sessions {live}, tether_sessions {by_transport}"
        );
        assert_eq!(live, saw, "{id}: tether_server_sessions against whoami");
        assert_eq!(by_transport, saw, "{id}: tether_sessions against whoami");
        assert_eq!(
            s.sum("tether_websocket_tunnels", &[("server", id)]),
            saw,
            "{id}"
        );
    }
    let upgrades = s.sum("tether_engineio_upgrades_total", &[("result", "succeeded")]);
    let handshakes = s.sum(
        "tether_engineio_handshakes_total",
        &[("transport", "polling"), ("result", "ok")],
    );
    println!("handshakes ok {handshakes}, upgrades {upgrades}");
    assert_eq!(handshakes, CLIENTS as f64);
    assert_eq!(upgrades, CLIENTS as f64);
    assert_eq!(
        s.sum("tether_engineio_upgrades_total", &[("result", "failed")]),
        0.0
    );
    assert!(s.sum("tether_http_requests_total", &[("status", "2xx")]) >= 2.0 * CLIENTS as f64);
    for name in [
        "tether_http_request_duration_seconds",
        "tether_upstream_connect_duration_seconds",
        "tether_build_info",
        "process_open_fds",
        "process_resident_memory_bytes",
    ] {
        assert!(s.has(name), "{name} missing from the scrape");
    }

    // node-1 to maint: each of its sessions ends with cause maint.
    let on_first = s.sum("tether_server_sessions", &[("server", &ids[0])]);
    let r = admin_request(
        admin,
        "POST",
        &format!("/backends/sockets/servers/{}/maint", ids[0]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = until(admin, Duration::from_secs(20), |s| {
        s.sum(
            "tether_sessions_ended_total",
            &[("server", &ids[0]), ("cause", "maint")],
        ) >= on_first
    })
    .await;
    let ended_maint = s.sum(
        "tether_sessions_ended_total",
        &[("server", &ids[0]), ("cause", "maint")],
    );
    println!(
        "maint: {on_first} sessions on {}, {ended_maint} ended by maint",
        ids[0]
    );
    // Every session that was there ended by maint (a client whose ping timed out on a
    // loaded machine may have joined it since the scrape, and ended the same way).
    assert!(ended_maint >= on_first, "{ended_maint} < {on_first}");
    // Tunnels add their bytes in batches, and what is left when they close.
    for direction in ["to_client", "to_server"] {
        let bytes = s.sum(
            "tether_websocket_bytes_total",
            &[("server", &ids[0]), ("direction", direction)],
        );
        println!("{} {direction}: {bytes} bytes", ids[0]);
        assert!(bytes > 0.0, "{direction}");
    }
    // The clients moved. (A client whose long poll was already at node-1 believes it is
    // there until node-1 next answers that poll, up to a pingInterval later, so the
    // clients' view is compared only where it is settled: before the maint.)
    let s = until(admin, Duration::from_secs(30), |s| {
        s.sum("tether_server_sessions", &[("server", &ids[1])]) > 0.0
            && s.sum("tether_server_sessions", &[("server", &ids[0])]) == 0.0
    })
    .await;
    assert_eq!(s.sum("tether_server_sessions", &[("server", &ids[0])]), 0.0);

    // node-2 killed: its sessions end as the server closed them (their tunnels read the
    // close), or as server_down for those whose tunnel health stopped first (a client
    // reconnecting to it found the port closed, which marks it down at once).
    let on_second = s.sum("tether_server_sessions", &[("server", &ids[1])]);
    let before = s.sum("tether_sessions_ended_total", &[("server", &ids[1])]);
    let ended_as = |s: &Scrape| {
        s.sum(
            "tether_sessions_ended_total",
            &[("server", &ids[1]), ("cause", "server_closed")],
        ) + s.sum(
            "tether_sessions_ended_total",
            &[("server", &ids[1]), ("cause", "server_down")],
        )
    };
    let closed_before = ended_as(&s);
    cluster.nodes[1].signal("KILL");
    let s = until(admin, Duration::from_secs(30), |s| {
        s.sum("tether_sessions_ended_total", &[("server", &ids[1])]) - before >= on_second
    })
    .await;
    for (k, v) in s.0.iter().filter(|(k, _)| {
        (k.starts_with("tether_sessions_ended_total") || k.starts_with("tether_sessions{"))
            && k.contains(&ids[1])
            || k.starts_with("tether_sid_table_entries")
    }) {
        println!("  {k} {v}");
    }
    let closed = ended_as(&s) - closed_before;
    let all = s.sum("tether_sessions_ended_total", &[("server", &ids[1])]) - before;
    println!(
        "kill -9: {on_second} sessions on {}, {all} ended, {closed} as server_closed or server_down",
        ids[1]
    );
    // Every session it held ended (a client whose ping timed out on a loaded machine may
    // have joined it since the scrape), and each as the server's doing.
    assert!(all >= on_second, "{all} < {on_second}");
    assert_eq!(closed, all);
    assert!(
        s.sum("tether_session_duration_seconds_count", &[]) >= on_first + on_second,
        "durations recorded"
    );

    // Every name the Grafana dashboard, the HPA example and the README use is in a real
    // scrape (histograms by their _bucket/_sum/_count series).
    let mut referenced = std::collections::BTreeSet::new();
    for file in [
        "examples/grafana/tether.json",
        "examples/kubernetes/hpa.yaml",
        "README.md",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("tether_").or_else(|| rest.find("process_")) {
            let at = [rest.find("tether_"), rest.find("process_")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(at);
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let name = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .to_owned();
            if name.contains("_") && !name.ends_with('_') {
                referenced.insert((file, name));
            }
        }
    }
    let s = Scrape::take(admin).await;
    let catalogue: std::collections::BTreeSet<&str> =
        tether::telemetry::ALL.iter().map(|m| m.name).collect();
    let mut checked = 0;
    for (file, name) in &referenced {
        if !catalogue.contains(name.as_str()) {
            continue; // a crate, a module or a node's own metric named in prose
        }
        // Counters of events this test never causes (TLS reloads, refused PROXY headers,
        // ...) appear with their first event; the dashboard's and the HPA's must be here.
        if file.ends_with(".md") && !s.has(name) {
            continue;
        }
        assert!(
            s.has(name),
            "{file} uses {name}, missing from a real scrape"
        );
        checked += 1;
    }
    println!(
        "{checked} metric names of the dashboard, the HPA example and the README found in a scrape"
    );
    assert!(checked >= 15, "{checked}");

    let fin = soak.finish().await;
    assert_eq!(n(&fin["whoamiFailures"]), 0.0, "{fin}");
    tether.stop().await;
}
