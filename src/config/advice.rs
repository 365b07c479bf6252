//! Values that are valid but cannot work as meant with Engine.IO as it is usually run.
//!
//! They are warnings, not errors: tether cannot know the servers' own `pingInterval`
//! before their first handshake, and a cluster whose servers ping more often may mean
//! exactly what it wrote. Each threshold is where a value stops working with Engine.IO's
//! defaults, and each message says why and which value would work. `tether check` prints
//! them; start-up and every reload log them at WARN.

use std::time::Duration;

use super::locate::KeyPath;
use super::model::{Config, Limits};
use super::validate::Problem;

/// Engine.IO's default `pingInterval` (Node's engine.io and socketioxide alike). A server
/// holds a polling GET until it has something to send, at the latest its next ping, so a
/// long poll lasts up to this long; on a quiet WebSocket the ping and its pong are the
/// only traffic, this often.
pub const ENGINEIO_PING_INTERVAL: Duration = Duration::from_secs(25);

/// Room on top of a ping interval for the server's timer, the network and scheduling.
const SLACK: Duration = Duration::from_secs(5);

/// Shortest `timeouts.response` and fixed `timeouts.tunnel_idle` that outlast a ping
/// interval.
pub const MIN_LONG_POLL: Duration = ENGINEIO_PING_INTERVAL.saturating_add(SLACK);

/// Shortest time a client can be given to send something whole: a TLS handshake and a
/// request head take several round trips, and a mobile client's round trip can take
/// hundreds of milliseconds.
pub const MIN_CLIENT_READ: Duration = Duration::from_secs(1);

/// Every value of `config` that cannot work as meant, each at the key that sets it.
pub(super) fn warnings(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut warn = |key: KeyPath, message: String| {
        out.push(Problem {
            key,
            message,
            at: None,
        })
    };
    let root = KeyPath::root();
    limits(&config.limits, &root.key("limits"), &mut warn);
    for b in &config.backends {
        let path = root.key("backends").key(&b.name);
        let t = &b.timeouts;
        if t.response < MIN_LONG_POLL {
            warn(
                path.key("timeouts").key("response"),
                format!(
                    "{} is too short for a long poll: an Engine.IO server holds a polling GET for up to its pingInterval ({} by default) before it answers, so idle polling clients would get 504 and lose their session; use at least {} (the default is 60s), unless every server pings more often",
                    show(t.response),
                    show(ENGINEIO_PING_INTERVAL),
                    show(MIN_LONG_POLL)
                ),
            );
        }
        if let Some(idle) = t.tunnel_idle.filter(|d| *d < MIN_LONG_POLL) {
            warn(
                path.key("timeouts").key("tunnel_idle"),
                format!(
                    "{} would close quiet WebSocket sessions: their only traffic is Engine.IO's ping, every pingInterval ({} by default); use at least {}, or auto (the default: each session's own pingInterval + pingTimeout + idle_margin)",
                    show(idle),
                    show(ENGINEIO_PING_INTERVAL),
                    show(MIN_LONG_POLL)
                ),
            );
        }
        if let Some(h) = b.health.as_ref().filter(|h| h.timeout > h.interval) {
            warn(
                path.key("health").key("timeout"),
                format!(
                    "{} is longer than the interval ({}): a probe waiting out its timeout delays the next one, so a hung server is checked every {} instead and marked down only after fall × {}; make the timeout at most the interval",
                    show(h.timeout),
                    show(h.interval),
                    show(h.timeout),
                    show(h.timeout)
                ),
            );
        }
    }
    out
}

fn limits(l: &Limits, path: &KeyPath, warn: &mut impl FnMut(KeyPath, String)) {
    if l.header_read_timeout < MIN_CLIENT_READ {
        warn(
            path.key("header_read_timeout"),
            format!(
                "{} is too short for clients on slow networks: a request head (on a TLS listener, the handshake before it too) must arrive within it, several round trips that take hundreds of milliseconds each on a mobile network; use at least {} (the default is 10s)",
                show(l.header_read_timeout),
                show(MIN_CLIENT_READ)
            ),
        );
    }
    if l.body_read_timeout < MIN_CLIENT_READ {
        warn(
            path.key("body_read_timeout"),
            format!(
                "{} is too short for clients on slow networks: an Engine.IO polling POST must arrive whole within it; use at least {} (the default is 10s)",
                show(l.body_read_timeout),
                show(MIN_CLIENT_READ)
            ),
        );
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn warnings(backend: &str, limits: &str) -> Vec<String> {
        let yaml = format!(
            "listeners: [{{ bind: \"127.0.0.1:0\" }}]\n{limits}backends:\n  chat:\n    servers: [{{ id: a, addr: \"127.0.0.1:1\" }}]\n{backend}"
        );
        crate::config::parse(&yaml, Path::new("w.yaml"))
            .expect("valid")
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn defaults_and_sound_values_warn_of_nothing() {
        assert_eq!(warnings("", ""), Vec::<String>::new());
        let sound = "    timeouts: { response: 30s, tunnel_idle: 30s }\n    health: { interval: 2s, timeout: 2s }\n";
        let limits = "limits: { header_read_timeout: 1s, body_read_timeout: 1s }\n";
        assert_eq!(warnings(sound, limits), Vec::<String>::new());
        let auto = "    timeouts: { tunnel_idle: auto }\n";
        assert_eq!(warnings(auto, ""), Vec::<String>::new());
    }

    #[test]
    fn a_response_timeout_shorter_than_a_long_poll_is_named_at_its_key() {
        let w = warnings("    timeouts: { response: 10ms }\n", "");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "w.yaml:5:27: backends.chat.timeouts.response: 10ms is too short for a long poll"
            ),
            "{}",
            w[0]
        );
        assert!(w[0].contains("use at least 30s"), "{}", w[0]);
        assert_eq!(warnings("    timeouts: { response: 29s }\n", "").len(), 1);
    }

    #[test]
    fn each_value_that_cannot_work_is_warned_of() {
        let backend =
            "    timeouts: { tunnel_idle: 10s }\n    health: { interval: 1s, timeout: 3s }\n";
        let limits = "limits: { header_read_timeout: 100ms, body_read_timeout: 999ms }\n";
        let w = warnings(backend, limits);
        let keys: Vec<&str> = w
            .iter()
            .map(|w| w.split(": ").nth(1).unwrap_or(""))
            .collect();
        assert_eq!(
            keys,
            [
                "limits.header_read_timeout",
                "limits.body_read_timeout",
                "backends.chat.timeouts.tunnel_idle",
                "backends.chat.health.timeout",
            ],
            "{w:#?}"
        );
        assert!(
            w[2].contains("10s would close quiet WebSocket sessions"),
            "{}",
            w[2]
        );
        assert!(
            w[3].contains("3s is longer than the interval (1s)"),
            "{}",
            w[3]
        );
    }
}
