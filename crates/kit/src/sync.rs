//! The one way to take a `std::sync::Mutex` in tether.
//!
//! Every critical section in tether is a short read or write of plain data, so a panic
//! in another holder cannot leave the data half-changed in a way that matters more than
//! losing it would. Poisoning is therefore ignored rather than turned into a second panic.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data if a previous holder panicked.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_hands_out_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
