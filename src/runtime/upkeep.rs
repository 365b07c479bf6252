//! The runtime's clockwork: expired sessions swept out of the sid table and drained
//! servers dropped every second, the dashboard's history sampled every few seconds, and
//! what DNS discovery finds and what the fleet's other instances set applied as it
//! arrives.
//! Each change of the routing snapshot is followed by the health checks.

use std::sync::Arc;
use std::time::Duration;

use tether_kit::lock;
use tokio::task::JoinHandle;

use super::Runtime;
use crate::config::ServerState;
use crate::fleet::FleetEvent;

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
        let Some(mut fleet) = rt.store.fleet.take_events() else {
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
                Some(event) = fleet.recv() => apply_fleet(&rt, event),
            }
        }
    })
}

/// Applies server states set through another instance's admin API, as that API would;
/// a migration announced by another instance is started here too, on this instance's
/// own sessions of the server (the other instance can move only the sessions it holds).
fn apply_fleet(rt: &Arc<Runtime>, event: FleetEvent) {
    let snap = rt.store.load();
    let mut changed = false;
    let mut set = |backend: &str, server: &str, state: ServerState, why: &'static str| {
        let Some(found) = snap.backend(backend).and_then(|b| b.server(server)) else {
            tracing::debug!(%backend, %server, "fleet state for a server this config lacks; ignored");
            return;
        };
        if let Some(old) = found.stats.condition.set_state_by_admin(state) {
            tracing::info!(%backend, %server, from = %old.as_str(), to = %state.as_str(), "server state set by {why}");
            changed = true;
        }
    };
    match event {
        FleetEvent::State(c) => {
            rt.store.fleet.count_received();
            match c.migrate_rate {
                Some(rate) => {
                    let Some(found) = snap.backend(&c.backend).and_then(|b| b.server(&c.server))
                    else {
                        tracing::debug!(backend = %c.backend, server = %c.server, "fleet migration of a server this config lacks; ignored");
                        return;
                    };
                    tracing::info!(backend = %c.backend, server = %c.server, rate, "migration announced by another instance of the fleet");
                    // Sets draining itself; nothing to sweep, as draining ends no session.
                    super::migrate::start(rt, Arc::clone(&found.stats), rate);
                }
                None => set(
                    &c.backend,
                    &c.server,
                    c.state,
                    "another instance of the fleet",
                ),
            }
        }
        FleetEvent::Sync(all) => {
            // What Redis holds is the fleet's truth: a server the admin API set here and
            // absent there was set ready meanwhile (or never shared).
            for b in snap.backends.iter() {
                for s in b.servers.iter() {
                    let stored = all
                        .iter()
                        .find(|c| *c.backend == *b.name && *c.server == *s.id)
                        .map(|c| c.state);
                    match stored {
                        Some(state) => set(&b.name, &s.id, state, "the fleet's stored states"),
                        None if s.stats.condition.state_set_by_admin() => set(
                            &b.name,
                            &s.id,
                            ServerState::Ready,
                            "the fleet's stored states",
                        ),
                        None => {}
                    }
                }
            }
        }
    }
    if changed {
        // As the admin API does: maintenance ends sessions now, not at the next tick.
        rt.store.sids.sweep();
    }
}
