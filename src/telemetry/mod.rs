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
    handle
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

pub fn init() {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(directives(rust_log.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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
