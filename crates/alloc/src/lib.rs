//! Run-time settings of tether's allocator, jemalloc.
//!
//! jemalloc keeps freed ("dirty") pages for 10 s by default, decaying on a curve. After
//! a burst of connection set-ups (a reconnect storm, a flood) the set-up buffers of
//! thousands of connections then stay resident for seconds after the burst: measured by
//! `benches/compare.sh --only burst`, about 0.35 KB per held WebSocket 10 s after 9,000
//! set-ups with 2,048 in flight. With a 1 s decay the background thread hands them back
//! within a second or two, and steady traffic, which reuses its pages within
//! milliseconds, does not notice (a ws64 run measured the same CPU per message).
//!
//! The safe API of `tikv-jemalloc-ctl` has no setter for the decay, and setting it at
//! build time needs an environment variable for `tikv-jemalloc-sys`'s build script (a
//! `.cargo/config.toml` the repository does not keep). So the write is made here, through
//! `mallctl`, behind one small safe function; the workspace forbids unsafe code
//! everywhere else.

/// What [`set_dirty_decay`] could not do: the setting named, and jemalloc's answer.
#[derive(Debug, thiserror::Error)]
#[error("jemalloc's dirty-page decay not set: {0}")]
pub struct DecayError(String);

/// Sets how long jemalloc keeps freed pages before handing them back to the system, in
/// milliseconds (0: at once; -1: never), for the arenas made from now on and for those
/// that exist; returns how many existing arenas took it. An operator's
/// `_RJEM_MALLOC_CONF` is the caller's to respect (the binary skips this call then).
#[cfg(all(unix, not(target_env = "msvc")))]
pub fn set_dirty_decay(ms: isize) -> Result<u32, DecayError> {
    let err = |what: &str, e: tikv_jemalloc_ctl::Error| DecayError(format!("{what}: {e}"));
    write_decay(b"arenas.dirty_decay_ms\0", ms).map_err(|e| err("arenas.dirty_decay_ms", e))?;
    let arenas =
        tikv_jemalloc_ctl::arenas::narenas::read().map_err(|e| err("arenas.narenas", e))?;
    // Arenas not yet initialized refuse the write; they take the default set above
    // when they are.
    Ok((0..arenas)
        .filter(|i| write_decay(format!("arena.{i}.dirty_decay_ms\0").as_bytes(), ms).is_ok())
        .count() as u32)
}

/// Without jemalloc there is nothing to set.
#[cfg(not(all(unix, not(target_env = "msvc"))))]
pub fn set_dirty_decay(_ms: isize) -> Result<u32, DecayError> {
    Ok(0)
}

/// Writes one `ssize_t` decay setting.
#[cfg(all(unix, not(target_env = "msvc")))]
#[allow(unsafe_code)]
fn write_decay(name: &[u8], ms: isize) -> Result<(), tikv_jemalloc_ctl::Error> {
    // SAFETY: both `arenas.dirty_decay_ms` and `arena.<i>.dirty_decay_ms` are `ssize_t`
    // (jemalloc's mallctl documentation), which is `isize` on every target jemalloc
    // builds for, and `raw::write` checks the name is NUL-terminated. Nothing else reads
    // the value as another type.
    unsafe { tikv_jemalloc_ctl::raw::write(name, ms) }
}

#[cfg(all(test, unix, not(target_env = "msvc")))]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    #[test]
    fn the_decay_is_set_for_existing_and_new_arenas() {
        let set = set_dirty_decay(1000).unwrap();
        assert!(set >= 1, "arena 0 at least");
        let read = |name: &[u8]| {
            #[allow(unsafe_code)]
            // SAFETY: the same `ssize_t` settings, read.
            unsafe {
                tikv_jemalloc_ctl::raw::read::<isize>(name).unwrap()
            }
        };
        assert_eq!(read(b"arenas.dirty_decay_ms\0"), 1000);
        assert_eq!(read(b"arena.0.dirty_decay_ms\0"), 1000);
        set_dirty_decay(10_000).unwrap();
        assert_eq!(read(b"arena.0.dirty_decay_ms\0"), 10_000);
    }
}
