//! A sid as the sid table keeps it: inline when it is short, as every Engine.IO server's
//! is (engine.io's `base64id` makes 20 characters, socketioxide's 16), shared otherwise.
//!
//! The table holds one key per live session, and every session's WebSocket tunnel holds
//! it again in its pin. As an `Arc<str>` each key was a heap allocation of its own
//! (48 bytes with the counts) besides the 16-byte pointer in the map; inline it is 24
//! bytes in the map and in the pin, and nothing on the heap.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The longest sid kept inline: with its length byte and the enum's tag, 24 bytes, the
/// size of the `Arc<str>` variant with its tag.
const INLINE: usize = 22;

/// A session id, compared and hashed as the `&str` it holds (so a map keyed by it is
/// looked up with a borrowed `&str`, without allocating).
#[derive(Clone)]
pub struct SidKey(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl SidKey {
    pub fn new(sid: &str) -> SidKey {
        match u8::try_from(sid.len()) {
            Ok(len) if sid.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..sid.len()].copy_from_slice(sid.as_bytes());
                SidKey(Repr::Inline { len, bytes })
            }
            _ => SidKey(Repr::Shared(sid.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always valid: the bytes are a whole `&str`, copied. The check costs a few
            // nanoseconds on 20 ASCII bytes, and keeps the workspace free of `unsafe`.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Shared(s) => s,
        }
    }

    /// The sid as a shared string (for what outlives the table's lock: the admin API,
    /// the registry, a takeover).
    pub fn to_arc(&self) -> Arc<str> {
        match &self.0 {
            Repr::Shared(s) => Arc::clone(s),
            Repr::Inline { .. } => Arc::from(self.as_str()),
        }
    }
}

impl std::ops::Deref for SidKey {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for SidKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// As `str` hashes, so that `Borrow<str>` lookups find it.
impl Hash for SidKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for SidKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SidKey {}

impl std::fmt::Debug for SidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for SidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_no_larger_than_the_shared_string_it_replaces_with_its_tag() {
        assert_eq!(std::mem::size_of::<SidKey>(), 24);
    }

    #[test]
    fn short_sids_are_inline_and_long_ones_shared_and_both_read_back() {
        let engine_io = "fUvk3y5PQy1b8aqfAAAB";
        let longest = "a".repeat(INLINE);
        let long = "b".repeat(INLINE + 1);
        for (sid, inline) in [
            ("", true),
            (engine_io, true),
            (longest.as_str(), true),
            (long.as_str(), false),
            ("é-not-ascii-but-valid", true),
        ] {
            let key = SidKey::new(sid);
            assert_eq!(key.as_str(), sid);
            assert_eq!(matches!(key.0, Repr::Inline { .. }), inline, "{sid}");
            assert_eq!(&*key.to_arc(), sid);
        }
    }

    #[test]
    fn a_key_hashes_and_compares_as_its_str_so_a_map_finds_it_by_str() {
        let h = ahash::RandomState::new();
        for sid in ["abc", &"x".repeat(40)] {
            assert_eq!(h.hash_one(SidKey::new(sid)), h.hash_one(sid));
        }
        let mut map = ahash::AHashMap::new();
        map.insert(SidKey::new("abc"), 1);
        map.insert(SidKey::new(&"x".repeat(40)), 2);
        assert_eq!(map.get("abc"), Some(&1));
        assert_eq!(map.get(&*"x".repeat(40)), Some(&2));
        assert_eq!(map.get("abd"), None);
        assert_eq!(SidKey::new("abc"), SidKey::new("abc"));
    }
}
