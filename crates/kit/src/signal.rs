//! Signals → one cancellation token: the single path by which a tether process stops.
//!
//! The first SIGINT or SIGTERM starts a graceful shutdown (the proxy's runtime, a node's
//! drain); a second one means the operator will not wait, so the process exits at once.

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal, as shells report an interrupted command.
pub const FORCED_EXIT: i32 = 130;

/// Which signal asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
}

/// Cancels `token` on the first SIGINT or SIGTERM; exits the process on the second.
pub async fn on_signal(token: CancellationToken) {
    if first_signal().await.is_none() {
        return;
    }
    tracing::info!("shutting down (a second signal exits at once)");
    token.cancel();
}

/// Waits for the first SIGINT or SIGTERM (`None` if signals cannot be watched), and from
/// then on exits the process at once on a second one.
pub async fn first_signal() -> Option<Signal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot watch SIGTERM/SIGINT");
            return None;
        };
        let first = tokio::select! {
            _ = term.recv() => Signal::Terminate,
            _ = int.recv() => Signal::Interrupt,
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting now");
            std::process::exit(FORCED_EXIT);
        });
        Some(first)
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .ok()
            .map(|_| Signal::Interrupt)
    }
}

/// Sends a signal by pid through kill(1): the workspace forbids `unsafe`, and the pool
/// supervisor (and tests) need signals other than SIGKILL.
pub fn send_signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}
