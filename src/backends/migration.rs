//! A server's sessions moved to other servers at a bounded rate (`migrate`), each ended
//! in the way that lets a Socket.IO node keep it for connection-state recovery: the node
//! sees its transport close (never a server-initiated disconnect, which it would not
//! store), and the client, seeing its own transport close, reconnects, through tether,
//! to another server, where it recovers its id, rooms and missed packets.
//!
//! This holds which sessions have been asked to move and how far the migration is; the
//! tunnels and polling requests of those sessions act on it (`proxy`), and the pacing
//! task lives in the runtime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ahash::AHashSet;

/// How far a migration is, for `/status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Sessions asked to move per second.
    pub rate: f64,
    pub started: Instant,
    /// Sessions asked to move so far.
    pub asked: u64,
    /// When the server had no session left.
    pub finished: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Migration {
    /// A migration is under way: the only thing the request path reads when none is.
    active: AtomicBool,
    /// Counts starts: a pacing task runs only while the start that made it is the
    /// latest, so starting again (a new rate, or the same migration announced by another
    /// instance of the fleet) replaces the pacing instead of adding to it.
    generation: AtomicU64,
    asked: Mutex<AHashSet<Arc<str>>>,
    progress: Mutex<Option<Progress>>,
}

impl Migration {
    /// Starts (or restarts, at a new rate) a migration; returns the start's generation,
    /// which [`Migration::paces`] checks.
    pub fn start(&self, rate: f64) -> u64 {
        let mut p = tether_kit::lock(&self.progress);
        let asked = match &*p {
            Some(old) if old.finished.is_none() => old.asked,
            _ => {
                tether_kit::lock(&self.asked).clear();
                0
            }
        };
        *p = Some(Progress {
            rate,
            started: Instant::now(),
            asked,
            finished: None,
        });
        self.active.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether the pacing of start `generation` should go on: a migration is under way
    /// and no later start replaced it.
    pub fn paces(&self, generation: u64) -> bool {
        self.is_active() && self.generation.load(Ordering::Acquire) == generation
    }

    /// Whether a migration is under way.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Asks session `sid` to move; `false` when it was asked already.
    pub fn ask(&self, sid: Arc<str>) -> bool {
        let new = tether_kit::lock(&self.asked).insert(sid);
        if new {
            if let Some(p) = tether_kit::lock(&self.progress).as_mut() {
                p.asked += 1;
            }
        }
        new
    }

    /// Whether session `sid` has been asked to move (cheap while no migration runs).
    pub fn is_asked(&self, sid: &str) -> bool {
        self.is_active() && tether_kit::lock(&self.asked).contains(sid)
    }

    /// The server has no session left (or the migration was called off by another
    /// state): later sessions of it are left alone.
    pub fn finish(&self) {
        self.active.store(false, Ordering::Release);
        tether_kit::lock(&self.asked).clear();
        if let Some(p) = tether_kit::lock(&self.progress).as_mut() {
            p.finished.get_or_insert_with(Instant::now);
        }
    }

    pub fn progress(&self) -> Option<Progress> {
        tether_kit::lock(&self.progress).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_asked_once_and_only_while_the_migration_runs() {
        let m = Migration::default();
        assert!(!m.is_asked("a"));
        m.start(50.0);
        assert!(m.ask("a".into()));
        assert!(!m.ask("a".into()), "asked once");
        assert!(m.is_asked("a") && !m.is_asked("b"));
        assert_eq!(m.progress().unwrap().asked, 1);
        m.finish();
        assert!(!m.is_asked("a"), "over: nothing is asked any more");
        let p = m.progress().unwrap();
        assert!(p.finished.is_some() && p.asked == 1);
        // A new migration starts from nothing.
        m.start(10.0);
        assert_eq!(m.progress().unwrap().asked, 0);
        assert!(!m.is_asked("a"));
    }

    #[test]
    fn a_restart_replaces_the_pacing_of_the_earlier_start() {
        let m = Migration::default();
        let first = m.start(50.0);
        assert!(m.paces(first));
        let second = m.start(20.0);
        assert!(!m.paces(first), "the first pacing stops");
        assert!(m.paces(second));
        assert_eq!(m.progress().unwrap().rate, 20.0);
        m.finish();
        assert!(!m.paces(second), "over");
    }
}
