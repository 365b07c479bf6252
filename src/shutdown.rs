//! Signals → one cancellation token: the single path by which tether stops.
//!
//! The first SIGINT or SIGTERM starts a graceful shutdown (see `server::Tether::run`);
//! a second one means the operator will not wait, so the process exits at once.

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal, as shells report an interrupted command.
pub const FORCED_EXIT: i32 = 130;

/// Cancels `token` on the first SIGINT or SIGTERM; exits the process on the second.
pub async fn on_signal(token: CancellationToken) {
    if !next_signal().await {
        return;
    }
    tracing::info!("shutting down (a second signal exits at once)");
    token.cancel();
    if next_signal().await {
        tracing::warn!("second signal: exiting now");
        std::process::exit(FORCED_EXIT);
    }
}

/// Waits for SIGINT or SIGTERM; false if signals cannot be watched at all.
async fn next_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot watch SIGTERM/SIGINT");
            return false;
        };
        tokio::select! {
            _ = int.recv() => true,
            _ = term.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
