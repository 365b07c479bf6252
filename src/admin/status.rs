//! The `/status` document and the gauges exported with `/metrics`, both read from the
//! live snapshot and counters at request time.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::backends::{Health, Server, ServerStats};
use crate::config::ServerState;
use crate::engineio::Transport;
use crate::runtime::history::unix_ms;
use crate::runtime::Runtime;
use crate::telemetry;

/// A server that takes no new sessions (draining or removed) and carries none: safe to stop.
pub fn drained(stats: &ServerStats) -> bool {
    let c = &stats.condition;
    (c.state() != ServerState::Ready || c.is_removed()) && stats.load() == 0
}

/// One server as `/status` lists it. The admin actions answer with the same object, so
/// a deploy script reads one shape wherever it looks.
pub fn server_json(server: &Server) -> Value {
    let stats = &server.stats;
    let c = &stats.condition;
    json!({
        "id": &*stats.id,
        "addr": server.addr.as_str(),
        "weight": server.weight,
        "sid_prefix": server.sid_prefix.as_deref(),
        "state": if c.is_removed() { "removed" } else { c.state().as_str() },
        // Where the state comes from: after an admin drain the file may say `ready`, and
        // the API's state holds until the file changes this server's state.
        "state_source": if c.state_set_by_admin() { "admin" } else { "file" },
        "health": c.health().as_str(),
        // How long it has had that health and that state (since tether met it when
        // neither changed): "down for 3m", "draining for 40s".
        "health_for_seconds": c.health_for().as_secs(),
        "state_for_seconds": c.state_for().as_secs(),
        "avoided": c.is_avoided(),
        "drained": drained(stats),
        "migration": stats.migration.progress().map(|p| json!({
            "rate": p.rate,
            "asked": p.asked,
            "left": stats.load(),
            "for_seconds": p.finished.unwrap_or_else(std::time::Instant::now).duration_since(p.started).as_secs_f64(),
            "done": p.finished.is_some(),
        })),
        "sessions": {
            "polling": stats.sessions(Transport::Polling),
            "websocket": stats.sessions(Transport::WebSocket),
            "load": stats.load(),
        },
    })
}

/// Why tether should not be sent new clients now (empty: ready). Ready means it is not
/// shutting down, its listeners are bound, and every backend has a server that takes new
/// sessions (up, ready, in the config): a backend without one would answer 503 to every
/// new client. A server at its `max_connections` still counts: being full is load, and
/// taking the instance out of rotation for it would make it flap.
pub fn not_ready(rt: &Runtime) -> Vec<String> {
    let mut why = Vec::new();
    if rt.shutting_down() {
        why.push("shutting down".to_owned());
    }
    if rt.local_addrs().is_empty() {
        why.push("no listener is bound".to_owned());
    }
    let snap = rt.store.load();
    for b in &snap.backends {
        if !b
            .servers
            .iter()
            .any(|s| s.stats.condition.accepts_new_sessions())
        {
            why.push(format!(
                "backend {} has no server that takes new sessions",
                b.name
            ));
        }
    }
    why
}

pub fn status(rt: &Runtime) -> Value {
    let snap = rt.store.load();
    let reload = rt.reload_status();
    let backends: Vec<Value> = snap
        .backends
        .iter()
        .map(|b| {
            let servers: Vec<Value> = b.servers.iter().map(server_json).collect();
            // The backend's cap on new sessions per second, and what it has left now.
            let handshakes = b.session_budget().map(|(rate, tokens)| {
                json!({ "per_second": rate.per_second, "burst": rate.burst, "tokens": tokens.floor() })
            });
            json!({ "name": &*b.name, "servers": servers, "handshakes": handshakes })
        })
        .collect();
    let now = SystemTime::now();
    let certificates: Vec<Value> = crate::tls::server::expiries()
        .into_iter()
        .map(|(file, name, not_after)| {
            let left = not_after - now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            json!({ "file": file, "name": name, "not_after_unix": not_after, "expires_in_days": left as f64 / 86_400.0 })
        })
        .collect();
    let not_ready = not_ready(rt);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "registry": registry(rt),
        "started_unix_ms": unix_ms(rt.started),
        "uptime_seconds": now.duration_since(rt.started).map_or(0, |d| d.as_secs()),
        "ready": not_ready.is_empty(),
        "not_ready": not_ready,
        "backends": backends,
        "listeners": rt.local_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "sids": rt.store.sids.len(),
        "connections": { "open": rt.connections().0, "max": rt.connections().1 },
        "certificates": certificates,
        "reload": {
            "generation": reload.generation,
            "ok": reload.error.is_none(),
            "error": reload.error,
            "at_unix_ms": unix_ms(reload.at),
            "succeeded": reload.succeeded,
            "failed": reload.failed,
        },
    })
}

/// The fleet link: `null` without a registry.
fn registry(rt: &Runtime) -> Value {
    let fleet = &rt.store.fleet;
    let Some(link) = fleet.status() else {
        return Value::Null;
    };
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let c = &fleet.counts;
    json!({
        "redis": link.redis,
        "prefix": link.prefix,
        "up": link.up,
        "subscribed": link.subscribed,
        // Up (or down) for this long.
        "for_seconds": link.for_.as_secs(),
        "last_error": link.last_error,
        "queued": link.queued,
        "writes": { "ok": n(&c.writes_ok), "failed": n(&c.writes_failed), "dropped": n(&c.writes_dropped) },
        "lookups": {
            "found": n(&c.lookups_found),
            "missing": n(&c.lookups_missing),
            "foreign": n(&c.lookups_foreign),
            "failed": n(&c.lookups_failed),
            "skipped": n(&c.lookups_skipped),
        },
        "states": { "sent": n(&c.states_sent), "received": n(&c.states_received) },
    })
}

/// Sets the per-server gauges from the live counters, just before a scrape.
pub fn export_gauges(rt: &Runtime) {
    let snap = rt.store.load();
    for b in &snap.backends {
        for s in &b.servers {
            for (t, name) in [
                (Transport::Polling, "polling"),
                (Transport::WebSocket, "websocket"),
            ] {
                metrics::gauge!(telemetry::SESSIONS, "backend" => b.name.to_string(), "server" => s.id.to_string(), "transport" => name)
                    .set(s.stats.sessions(t) as f64);
            }
            metrics::gauge!(telemetry::SERVER_SESSIONS, "backend" => b.name.to_string(), "server" => s.id.to_string())
                .set(s.stats.load() as f64);
            let up = s.stats.condition.health() == Health::Up;
            metrics::gauge!(telemetry::SERVER_UP, "backend" => b.name.to_string(), "server" => s.id.to_string())
                .set(if up { 1.0 } else { 0.0 });
        }
    }
    let sids = &rt.store.sids;
    metrics::gauge!(telemetry::SID_TABLE_ENTRIES).set(sids.len() as f64);
    metrics::gauge!(telemetry::SID_TABLE_CAPACITY).set(sids.capacity() as f64);
    let (open, max) = rt.connections();
    metrics::gauge!(telemetry::CLIENT_CONNECTIONS).set(open as f64);
    metrics::gauge!(telemetry::CLIENT_CONNECTIONS_LIMIT).set(max as f64);
    metrics::gauge!(telemetry::CONFIG_GENERATION).set(rt.reload_status().generation as f64);
    telemetry::export_process();
}
