//! Tasks that wait for a rare change for a long time: each registers its waker once,
//! checks the condition with plain loads on every poll, and is woken (with all the
//! others) when the change happens.
//!
//! A tunnel task is polled for every message it relays, and each poll would poll its
//! stop futures again. tokio's `Notify` and tokio-util's `CancellationToken` take a
//! mutex every time a waiting future is polled again, one shared by every tunnel of a
//! server (or of the process): a lock per relayed message, contended across worker
//! threads. Here the lock is taken when a task starts or stops waiting, and when the
//! change happens, and never in between.

use std::sync::Mutex;
use std::task::Waker;
use tether_kit::lock;

/// The wakers of the tasks waiting for one kind of change.
#[derive(Debug, Default)]
pub struct WakerSet {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    /// Indices of empty slots, reused first so the vector stays as long as the most
    /// tasks that ever waited at once.
    free: Vec<u32>,
}

impl WakerSet {
    /// Adds `waker`; the key is for [`WakerSet::update`] and [`WakerSet::remove`].
    pub fn insert(&self, waker: &Waker) -> u32 {
        let mut s = lock(&self.slots);
        match s.free.pop() {
            Some(key) => {
                s.wakers[key as usize] = Some(waker.clone());
                key
            }
            None => {
                s.wakers.push(Some(waker.clone()));
                // More than u32::MAX waiting tasks would need more memory than a
                // process has; saturate rather than wrap.
                u32::try_from(s.wakers.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    /// Replaces the waker under `key` (the task moved to another waker).
    pub fn update(&self, key: u32, waker: &Waker) {
        if let Some(slot) = lock(&self.slots).wakers.get_mut(key as usize) {
            *slot = Some(waker.clone());
        }
    }

    pub fn remove(&self, key: u32) {
        let mut s = lock(&self.slots);
        if let Some(slot) = s.wakers.get_mut(key as usize) {
            if slot.take().is_some() {
                s.free.push(key);
            }
        }
    }

    /// Wakes every registered task; each checks its condition when polled.
    pub fn wake_all(&self) {
        for w in lock(&self.slots).wakers.iter().flatten() {
            w.wake_by_ref();
        }
    }

    /// Tasks registered now.
    pub fn len(&self) -> usize {
        let s = lock(&self.slots);
        s.wakers.len() - s.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One task's place in one set: registered on its first poll, and again only when
/// polled with another waker; otherwise a poll costs one comparison.
#[derive(Debug, Default)]
pub struct Waiting {
    key: u32,
    waker: Option<Waker>,
}

impl Waiting {
    pub fn register(&mut self, set: &WakerSet, waker: &Waker) {
        match &self.waker {
            Some(w) if w.will_wake(waker) => return,
            Some(_) => set.update(self.key, waker),
            None => self.key = set.insert(waker),
        }
        self.waker = Some(waker.clone());
    }

    /// Leaves the set; the owner calls it when it stops waiting (or is dropped).
    pub fn deregister(&mut self, set: &WakerSet) {
        if self.waker.take().is_some() {
            set.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&c), Waker::from(c))
    }

    #[test]
    fn wake_all_wakes_every_registered_task_and_none_removed() {
        let set = WakerSet::default();
        let (a, wa) = counter();
        let (b, wb) = counter();
        let (c, wc) = counter();
        let ka = set.insert(&wa);
        let _kb = set.insert(&wb);
        let kc = set.insert(&wc);
        set.remove(kc);
        set.wake_all();
        set.wake_all();
        assert_eq!(a.0.load(Ordering::SeqCst), 2);
        assert_eq!(b.0.load(Ordering::SeqCst), 2);
        assert_eq!(c.0.load(Ordering::SeqCst), 0);
        assert_eq!(set.len(), 2);
        set.remove(ka);
        set.remove(ka); // twice is harmless
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn freed_slots_are_reused_and_updates_replace_the_waker() {
        let set = WakerSet::default();
        let (old, w_old) = counter();
        let (new, w_new) = counter();
        let k1 = set.insert(&w_old);
        let k2 = set.insert(&w_old);
        set.remove(k1);
        let k3 = set.insert(&w_old);
        assert_eq!(k3, k1, "the free slot is reused");
        set.update(k2, &w_new);
        set.update(99, &w_new); // an unknown key is ignored
        set.wake_all();
        assert_eq!(
            old.0.load(Ordering::SeqCst),
            1,
            "only k3 still holds the old waker"
        );
        assert_eq!(new.0.load(Ordering::SeqCst), 1);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn waiting_registers_once_per_waker_and_leaves_on_deregister() {
        let set = WakerSet::default();
        let (a, wa) = counter();
        let (b, wb) = counter();
        let mut waiting = Waiting::default();
        waiting.register(&set, &wa);
        waiting.register(&set, &wa);
        assert_eq!(set.len(), 1, "the same waker twice is one registration");
        waiting.register(&set, &wb);
        assert_eq!(set.len(), 1, "another waker replaces it");
        set.wake_all();
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        waiting.deregister(&set);
        waiting.deregister(&set);
        assert!(set.is_empty());
    }
}
