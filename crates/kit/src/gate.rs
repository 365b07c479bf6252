//! A cap on open connections that makes the accept loop wait instead of failing.
//!
//! A process out of file descriptors fails everything at once: accepts (EMFILE), its own
//! connections to servers, health probes. Capping connections below the descriptor
//! limit, and not accepting while at the cap, keeps room for the work that serves the
//! connections already open; new clients wait in the listen backlog until one closes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct Gate {
    max: AtomicUsize,
    open: AtomicUsize,
    freed: Notify,
}

/// One place held in a [`Gate`], given back when dropped.
#[derive(Debug)]
pub struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Gate {
    pub fn new(max: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Changes the cap; places already held stay held.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
        self.freed.notify_waiters();
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A place, if one is free now.
    pub fn try_enter(self: &Arc<Self>) -> Option<Pass> {
        let mut n = self.open.load(Ordering::Acquire);
        while n < self.max() {
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Pass(Arc::clone(self))),
                Err(now) => n = now,
            }
        }
        None
    }

    /// A place, waiting for one to be given back when all are held.
    pub async fn enter(self: &Arc<Self>) -> Pass {
        loop {
            let freed = self.freed.notified();
            if let Some(pass) = self.try_enter() {
                return pass;
            }
            freed.await;
        }
    }

    /// A place whether or not one is free: for what an open connection turns into (a
    /// WebSocket tunnel outlives its HTTP connection) and must stay counted.
    pub fn force_enter(self: &Arc<Self>) -> Pass {
        self.open.fetch_add(1, Ordering::AcqRel);
        Pass(Arc::clone(self))
    }
}

/// Raises this process's soft limit on open files to its hard limit (once) and returns
/// the limit in force: what connection caps are derived from.
pub fn open_files_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn at_the_cap_entering_waits_for_a_place_to_be_given_back() {
        let gate = Gate::new(2);
        let a = gate.enter().await;
        let _b = gate.enter().await;
        assert!(gate.try_enter().is_none());
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.enter().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "full: waits");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a freed place is taken")
            .unwrap();
        assert_eq!(gate.open(), 2);
        let forced = gate.force_enter();
        assert_eq!(gate.open(), 3, "forced past the cap");
        drop((c, forced));
        assert_eq!(gate.open(), 1);
        gate.set_max(1);
        assert!(gate.try_enter().is_none());
    }
}
