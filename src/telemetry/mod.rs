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
