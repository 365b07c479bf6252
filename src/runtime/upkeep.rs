//! The runtime's clockwork: expired sessions swept out of the sid table and drained
//! servers dropped every second, the dashboard's history sampled every few seconds, and
//! what DNS discovery finds applied as it arrives.
//! Each change of the routing snapshot is followed by the health checks.

use std::sync::Arc;
use std::time::Duration;

use tether_kit::lock;
use tokio::task::JoinHandle;

use super::Runtime;

/// How often expired sessions are swept out of the sid table, and drained servers
/// dropped.
const TICK: Duration = Duration::from_secs(1);

/// Starts the upkeep task; aborting the handle stops it.
pub(super) fn spawn(rt: &Arc<Runtime>) -> JoinHandle<()> {
    let rt = Arc::clone(rt);
    tokio::spawn(async move {
        let Some(mut discovered) = lock(&rt.discovered_rx).take() else {
            return;
        };
        let mut every = tokio::time::interval(TICK);
        let mut sample = tokio::time::interval(super::history::INTERVAL);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    rt.store.sids.sweep();
                    rt.store.clients.sweep(&rt.store.load().limits.per_client);
                    if let Some(snapshot) = rt.store.tick() {
                        rt.routing_changed(&snapshot);
                    }
                }
                _ = sample.tick() => rt.history.record(&rt.store.load()),
                Some(found) = discovered.recv() => {
                    let snapshot = rt.store.set_discovered(&found.backend, found.servers);
                    rt.routing_changed(&snapshot);
                }
            }
        }
    })
}
