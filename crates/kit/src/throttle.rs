//! Log lines that a flood cannot multiply: at most one line per cause per interval, the
//! next one saying how many were left out in between.
//!
//! A hostile client can make a proxy fail thousands of requests a second, each of which
//! would otherwise write a warning; the log then costs more than the requests and drowns
//! what matters. Each call site that logs per request (or per connection) keeps a
//! `Throttle` per cause and logs only when [`Throttle::allow`] says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ms;

/// One cause's allowance: a line per `interval`.
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// When the last line was allowed (`now_ms`), 0 before the first.
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval_ms: interval.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were left out since
    /// the last one; `None` (counted) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_count_of_what_was_left_out() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.allow(), Some(0), "the first line is written");
        for _ in 0..1000 {
            assert_eq!(t.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            t.allow(),
            Some(1000),
            "the next says how many were left out"
        );
        assert_eq!(t.allow(), None);
    }
}
