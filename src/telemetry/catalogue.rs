//! Every metric tether exports: its name, kind, labels and help text, in one list.
//!
//! One list so that names, the `# HELP` lines of a scrape, the README's table, the
//! Grafana dashboard and the tests cannot drift apart: each is checked against [`ALL`].
//! Names follow Prometheus conventions: base units (`_seconds`, `_bytes`), counters end
//! in `_total`, the process figures use the names every Prometheus client library uses.

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $id:ident = $kind:ident $name:literal [$($label:literal),*] $help:literal; )*) => {
        $( $(#[$doc])* #[doc = concat!("`", $name, "`: ", $help)] pub const $id: &str = $name; )*
        /// Every metric, in the order the README lists them.
        pub const ALL: &[Metric] = &[
            $( Metric { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help } ),*
        ];
    };
}

catalogue! {
    // Requests.
    HTTP_REQUESTS = Counter "tether_http_requests_total" ["backend", "server", "method", "status"]
        "HTTP requests answered, by backend and server (\"-\": answered by tether itself), method (GET, POST, other) and status class (1xx to 5xx).";
    HTTP_REQUEST_DURATION = Histogram "tether_http_request_duration_seconds" ["backend"]
        "Time from a request's arrival to its response head (a long-poll GET waits here for as long as the server holds it).";

    // Engine.IO sessions.
    HANDSHAKES = Counter "tether_engineio_handshakes_total" ["backend", "transport", "result"]
        "New Engine.IO sessions asked for: ok (a server opened one), refused (a server answered without one), limited (a per-client or backend limit), failed (no server could be reached).";
    SESSION_ADMISSION = Counter "tether_session_admission_total" ["backend", "result"]
        "New sessions through the backend's handshakes cap (reconnect-storm admission): admitted (every one when the backend has no cap), or deferred (answered 503 with Retry-After; the client retries by itself).";
    UPGRADES = Counter "tether_engineio_upgrades_total" ["backend", "server", "result"]
        "Polling sessions upgrading to WebSocket: succeeded (101 and a tunnel) or failed.";
    SESSIONS = Gauge "tether_sessions" ["backend", "server", "transport"]
        "Live sessions per server and transport (polling, websocket).";
    SERVER_SESSIONS = Gauge "tether_server_sessions" ["backend", "server"]
        "Live sessions per server, every transport: the signal to scale servers on (HorizontalPodAutoscaler through prometheus-adapter).";
    SESSIONS_ENDED = Counter "tether_sessions_ended_total" ["backend", "server", "cause"]
        "Sessions ended, by cause: client_closed, server_closed, idle_timeout (nothing heard for its heartbeat), server_down, maint, shutdown, migrated (moved by a migration).";
    SESSION_DURATION = Histogram "tether_session_duration_seconds" ["backend"]
        "How long sessions lived, from the handshake (or the WebSocket upgrade of a WebSocket-only session) to their end.";
    SID_UNKNOWN = Counter "tether_engineio_sid_unknown_total" ["backend", "cause"]
        "Requests answered Engine.IO's 400 Session ID unknown by tether: unknown (a sid never learned or long expired), server_gone (its server left the config), server_down, maint.";
    SID_TABLE_ENTRIES = Gauge "tether_sid_table_entries" []
        "Sessions in the sid table (learned sids, live or lingering).";
    SID_TABLE_CAPACITY = Gauge "tether_sid_table_capacity" []
        "Most sids the table holds (sessions.capacity).";
    SID_TABLE_EXPIRED = Counter "tether_sid_table_expired_total" []
        "Sids dropped from the table after their session's liveness window passed with no request or tunnel.";
    SID_TABLE_FULL = Counter "tether_sid_table_refused_total" []
        "New sids not recorded because the table was full (their sessions then rely on the cookie or WebSocket).";

    // The fleet (a shared registry in Redis).
    REGISTRY_UP = Gauge "tether_registry_up" []
        "1 while the registry's Redis answers, else 0 (absent without a registry).";
    REGISTRY_WRITES = Counter "tether_registry_writes_total" ["result"]
        "Registry writes (learned sids, refreshes, deletes, states): ok, failed (Redis down or slow), dropped (the queue was full).";
    REGISTRY_LOOKUPS = Counter "tether_registry_lookups_total" ["result"]
        "Sids this instance did not know, asked of Redis: found, missing, foreign (names a server this config lacks: treated as unknown), failed (error or timeout), skipped (Redis down, or too many in flight).";
    FLEET_STATES = Counter "tether_fleet_states_total" ["direction"]
        "Server states set through an admin API and shared with the fleet: sent by this instance, received from others.";

    // WebSocket tunnels.
    TUNNELS = Gauge "tether_websocket_tunnels" ["backend", "server"]
        "WebSocket tunnels open.";
    TUNNEL_BYTES = Counter "tether_websocket_bytes_total" ["backend", "server", "direction"]
        "Bytes relayed through WebSocket tunnels, to_server or to_client (added every 4 KiB of a tunnel, and when it closes).";
    TUNNEL_FRAMES = Counter "tether_websocket_frames_total" ["backend", "server", "direction"]
        "WebSocket frames relayed, to_server or to_client: Socket.IO packets and Engine.IO pings and pongs (added with the bytes).";

    // Servers: connections, health.
    CONNECT_DURATION = Histogram "tether_upstream_connect_duration_seconds" ["backend"]
        "Time to open a connection to a server (TCP, and TLS when the backend speaks it).";
    CONNECT_ERRORS = Counter "tether_upstream_connect_errors_total" ["backend", "server", "kind"]
        "Connections to servers that could not be opened: refused, timeout, tls, local (a shortage here: descriptors, memory, ports), other.";
    UPSTREAM_REQUESTS = Counter "tether_upstream_requests_total" ["backend", "server", "connection"]
        "Requests sent to servers, on a kept-alive connection (reused) or a new one (new; upgrades always).";
    PLACEMENT_RETRIES = Counter "tether_placement_retries_total" ["backend"]
        "New sessions sent to another server after their first could not be reached.";
    SERVER_UP = Gauge "tether_server_up" ["backend", "server"]
        "1 when the server is up by its health checks, else 0.";
    HEALTH_PROBE_DURATION = Histogram "tether_health_probe_duration_seconds" ["backend", "server"]
        "Time an active health probe took, failed ones included.";
    HEALTH_FLIPS = Counter "tether_health_flips_total" ["backend", "server", "to"]
        "A server's health changed (to up or down).";
    PASSIVE_AVOIDS = Counter "tether_passive_avoids_total" ["backend", "server"]
        "A server set aside for new sessions because live traffic to it failed.";

    // Clients.
    CLIENT_CONNECTIONS = Gauge "tether_client_connections" []
        "Client connections held open, WebSocket tunnels included.";
    CLIENT_CONNECTIONS_LIMIT = Gauge "tether_client_connections_limit" []
        "The process-wide cap on client connections (limits.max_connections).";
    CONNECTION_CAP_WAITS = Counter "tether_connection_cap_waits_total" ["listener"]
        "Times a listener stopped accepting because a connection cap was reached.";
    CLIENTS_LIMITED = Counter "tether_clients_limited_total" ["what"]
        "Connections or requests turned away by per-client limits: denied, connections, handshakes, requests.";
    PROXY_HEADERS_REFUSED = Counter "tether_proxy_headers_refused_total" []
        "Connections closed for a missing, malformed or untrusted PROXY protocol header.";
    LOCAL_SHORTAGES = Counter "tether_local_shortages_total" ["what"]
        "Work that failed for want of a resource of this process (descriptors, memory, local ports); never held against a server.";

    // TLS.
    TLS_HANDSHAKES = Counter "tether_tls_handshakes_total" ["listener", "version", "alpn", "result"]
        "TLS handshakes on listeners: result ok or failed; version and ALPN protocol of the ok ones.";
    TLS_NOT_AFTER = Gauge "tether_tls_certificate_not_after_timestamp_seconds" ["certificate", "name"]
        "When each listener certificate expires (Unix time), by its file and its first DNS name.";
    TLS_RELOADS = Counter "tether_tls_certificate_reloads_total" ["result"]
        "Certificate files re-read after they changed on disk: ok or error (the old ones stay).";

    // The process.
    BUILD_INFO = Gauge "tether_build_info" ["version"]
        "Always 1; its label says which tether this is.";
    CONFIG_GENERATION = Gauge "tether_config_generation" []
        "Config versions put in force: 1 at start, one more per applied reload.";
    RELOADS = Counter "tether_config_reloads_total" ["result"]
        "Config reloads: ok or error (the old config stays).";
    ACCESS_LOG_DROPPED = Counter "tether_access_log_dropped_total" []
        "Access log lines dropped because the writer fell behind (logging never holds a request).";
    OPEN_FDS = Gauge "process_open_fds" []
        "Open file descriptors.";
    MAX_FDS = Gauge "process_max_fds" []
        "The open file descriptor limit (soft, after tether raised it).";
    RESIDENT_MEMORY = Gauge "process_resident_memory_bytes" []
        "Resident memory.";
    CPU_SECONDS = Counter "process_cpu_seconds_total" []
        "CPU time used, user and system.";
}

/// The histograms' buckets, in seconds: a request's head is answered in microseconds to
/// (long-polling) tens of seconds, a session lives seconds to days.
pub fn buckets(name: &str) -> &'static [f64] {
    match name {
        SESSION_DURATION => &[
            1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
        ],
        HTTP_REQUEST_DURATION => &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ],
        _ => &[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ],
    }
}

/// Tells the recorder each metric's help text, so a scrape carries `# HELP` lines.
pub fn describe() {
    for m in ALL {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(
                m.name.starts_with("tether_") || m.name.starts_with("process_"),
                "{}",
                m.name
            );
            assert!(
                m.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                m.name
            );
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => assert!(
                    m.name.ends_with("_seconds") || m.name.ends_with("_bytes"),
                    "{}: a histogram in base units",
                    m.name
                ),
            }
            assert!(m.help.ends_with('.'), "{}: help is a sentence", m.name);
        }
    }

    #[test]
    fn every_histogram_has_rising_buckets() {
        for m in ALL.iter().filter(|m| m.kind == Kind::Histogram) {
            let b = buckets(m.name);
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
        }
    }
}
