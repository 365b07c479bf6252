//! Logging setup. `RUST_LOG` overrides the default level (`info`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .try_init();
}

/// Colour only for a person at a terminal: escape codes in a log file or a pipe to a
/// collector are noise to grep and to every log shipper. `NO_COLOR` (no-color.org), when
/// set and not empty, turns it off at a terminal too.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Metric names, in one place so dashboards and code agree.
/// Counter: a server's health changed (`backend`, `server`, `to`).
pub const HEALTH_FLIPS: &str = "tether_health_flips_total";
/// Counter: servers avoided for new sessions by passive health (`backend`, `server`).
pub const PASSIVE_AVOIDS: &str = "tether_passive_avoids_total";
/// Counter: work that failed for want of a local resource (descriptors, memory, ports),
/// not held against any server (`what`).
pub const LOCAL_SHORTAGES: &str = "tether_local_shortages_total";
/// Counter: connections or requests turned away by per-client limits (`what` =
/// denied | connections | handshakes | requests).
pub const CLIENTS_LIMITED: &str = "tether_clients_limited_total";
/// Counter: connections closed for a missing, malformed or untrusted PROXY header.
pub const PROXY_HEADERS_REFUSED: &str = "tether_proxy_headers_refused_total";
/// Counter: config reloads (`result` = ok | error).
pub const RELOADS: &str = "tether_config_reloads_total";
/// Counter: requests answered (`backend`, `status` class).
pub const REQUESTS: &str = "tether_requests_total";
/// Counter: new sessions retried on another server after a failed connect.
pub const PLACEMENT_RETRIES: &str = "tether_placement_retries_total";
/// Counter: requests of a sid whose server is gone, answered `Session ID unknown`.
pub const SESSIONS_LOST: &str = "tether_sessions_lost_total";
/// Gauge: live sessions per server (`backend`, `server`, `transport`).
pub const SESSIONS: &str = "tether_sessions";
/// Gauge: server up (1) or not (0), by (`backend`, `server`).
pub const SERVER_UP: &str = "tether_server_up";

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn logs_are_coloured_only_at_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or a pipe");
        assert!(!colour(true, Some("1".as_ref())));
        assert!(colour(true, Some("".as_ref())), "NO_COLOR set but empty");
    }
}
