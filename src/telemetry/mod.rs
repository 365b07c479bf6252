//! What tether tells operators: process logs (`RUST_LOG` overrides the default level,
//! `info`) and the metrics, every one of them named in [`catalogue`].

pub mod catalogue;

pub use catalogue::*;

use tracing_subscriber::EnvFilter;

/// Installs the process-wide Prometheus recorder with tether's histogram buckets and help
/// texts. Called before anything records (a handle taken before would record nowhere).
pub fn install_recorder() -> &'static tether_kit::recorder::PrometheusHandle {
    let histograms: Vec<(&str, &[f64])> = ALL
        .iter()
        .filter(|m| m.kind == Kind::Histogram)
        .map(|m| (m.name, buckets(m.name)))
        .collect();
    let handle = tether_kit::recorder::install(&histograms);
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Counters of rare events exist at 0 from the start, so `rate()` and alerts on them
    // work before the first event.
    for result in ["ok", "error"] {
        metrics::counter!(RELOADS, "result" => result).increment(0);
        metrics::counter!(TLS_RELOADS, "result" => result).increment(0);
    }
    for what in ["denied", "connections", "handshakes", "requests"] {
        metrics::counter!(CLIENTS_LIMITED, "what" => what).increment(0);
    }
    for name in [
        PROXY_HEADERS_REFUSED,
        SID_TABLE_EXPIRED,
        SID_TABLE_FULL,
        ACCESS_LOG_DROPPED,
    ] {
        metrics::counter!(name).increment(0);
    }
    handle
}

/// The process figures every Prometheus client exports, read from `/proc` at scrape time
/// (nothing is recorded where it is not Linux).
pub fn export_process() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime, fields 14 and 15 of the file (11 and 12 after the name), are in
    // USER_HZ ticks, which Linux fixes at 100 for every user-space interface.
    if let (Some(user), Some(system)) = (field(11), field(12)) {
        metrics::counter!(CPU_SECONDS).absolute(((user + system) / 100.0) as u64);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    if let Some(kib) = rss_kib {
        metrics::gauge!(RESIDENT_MEMORY).set(kib * 1024.0);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(OPEN_FDS).set(fds.count() as f64);
    }
    metrics::gauge!(MAX_FDS).set(tether_kit::gate::open_files_limit() as f64);
}

/// How process logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message, fields.
    #[default]
    Human,
    /// One JSON object per line for collectors (Loki, Elasticsearch, CloudWatch): the
    /// event's fields as fields, nothing to parse out of a message.
    Json,
}

/// Crates whose debug and trace output is about their own machinery (each inotify event,
/// each socket readiness, each HTTP frame): kept at info when `RUST_LOG` asks for debug
/// or trace in general, unless it names them. Besides drowning tether's own lines, with a
/// log file in the config's directory `notify` would log each write of its own log line
/// as a new event, for ever.
const MACHINERY: &[&str] = &[
    "notify",
    "mio",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tokio_rustls",
    "want",
];

/// The filter directives for `RUST_LOG` (`None`: unset): as given, plus `crate=info` for
/// each of [`MACHINERY`] it does not name when it turns debug or trace on for everything.
fn directives(rust_log: Option<&str>) -> String {
    let given = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    let parts: Vec<&str> = given.split(',').map(str::trim).collect();
    let verbose = parts.iter().any(|d| {
        d.parse::<tracing::level_filters::LevelFilter>()
            .is_ok_and(|l| l > tracing::level_filters::LevelFilter::INFO)
    });
    let mut out = given.to_owned();
    if verbose {
        for name in MACHINERY {
            let named = parts.iter().any(|d| {
                let target = d.split(['=', '[']).next().unwrap_or("");
                target == *name || target.starts_with(&format!("{name}::"))
            });
            if !named {
                out.push_str(&format!(",{name}=info"));
            }
        }
    }
    out
}

/// Sets up process logs on stderr, in `format`.
pub fn init(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(directives(rust_log.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(colour(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Colour only for a person at a terminal: escape codes in a log file or a pipe to a
/// collector are noise to grep and to every log shipper. `NO_COLOR` (no-color.org), when
/// set and not empty, turns it off at a terminal too.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{colour, directives};

    #[test]
    fn debug_and_trace_leave_other_crates_machinery_at_info_unless_named() {
        assert_eq!(directives(None), "info");
        assert_eq!(directives(Some("warn")), "warn", "never raised");
        assert_eq!(directives(Some("tether=trace")), "tether=trace");
        let all = directives(Some("trace"));
        assert!(
            all.starts_with("trace,")
                && all.contains(",notify=info")
                && all.contains(",hyper=info"),
            "{all}"
        );
        let named = directives(Some("debug,hyper=trace,notify::inotify=debug"));
        assert!(
            !named.contains("hyper=info") && !named.contains("notify=info"),
            "{named}"
        );
        assert!(named.contains(",mio=info"), "{named}");
        for d in [directives(Some("trace")), named] {
            assert!(tracing_subscriber::EnvFilter::try_new(&d).is_ok(), "{d}");
        }
    }

    #[test]
    fn logs_are_coloured_only_at_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or a pipe");
        assert!(!colour(true, Some("1".as_ref())));
        assert!(colour(true, Some("".as_ref())), "NO_COLOR set but empty");
    }
}
