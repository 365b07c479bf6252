//! The pace of a migration (`POST /backends/{b}/servers/{id}/migrate`): the server is
//! set draining, so no new session goes to it, and its sessions are then asked to move
//! one at a time at the migration's rate, which bounds the reconnections the other
//! servers receive. The tunnels and polls of the asked sessions do the moving (`proxy`).
//! The migration ends when the server has no session left, or when an operator sets
//! another state (ready or maint).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::backends::ServerStats;
use crate::config::ServerState;

use super::Runtime;

/// Starts moving the sessions of `stats`'s server at `rate` per second.
///
/// Starting again (a new rate, or the fleet announcing a migration this instance runs
/// already) replaces the pacing under way rather than adding a second one.
pub fn start(rt: &Arc<Runtime>, stats: Arc<ServerStats>, rate: f64) {
    let generation = stats.migration.start(rate);
    if let Some(old) = stats.condition.set_state_by_admin(ServerState::Draining) {
        tracing::info!(backend = %stats.backend, server = %stats.id, from = %old.as_str(), to = "draining", "server state set by a migration");
    }
    tracing::info!(backend = %stats.backend, server = %stats.id, rate, sessions = stats.load(), "migration started");
    let rt = Arc::clone(rt);
    tokio::spawn(async move {
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut queue: VecDeque<Arc<str>> = VecDeque::new();
        loop {
            tick.tick().await;
            let called_off =
                stats.condition.state() != ServerState::Draining || stats.condition.is_removed();
            if !stats.migration.paces(generation) || called_off {
                // Another state was set (or a newer migration took over): stop here.
                if called_off {
                    stats.migration.finish();
                }
                return;
            }
            if queue.is_empty() {
                if stats.load() == 0 {
                    stats.migration.finish();
                    tracing::info!(backend = %stats.backend, server = %stats.id, "migration finished: no session left");
                    return;
                }
                queue.extend(
                    rt.store
                        .sids
                        .list(Some(&stats.backend), Some(&stats.id), usize::MAX)
                        .into_iter()
                        .map(|s| s.sid)
                        .filter(|sid| !stats.migration.is_asked(sid)),
                );
            }
            if let Some(sid) = queue.pop_front() {
                if stats.migration.ask(sid) {
                    // Its tunnel or its poll in flight is waiting on the server's set.
                    stats.condition.pinned_waiters().wake_all();
                }
            }
        }
    });
}
