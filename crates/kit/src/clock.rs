//! A coarse monotonic clock that fits an atomic.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call, from 1: a clock that fits an atomic, where 0 is
/// free to mean "never".
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}
