//! The query string of a request that may be Engine.IO.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = std::str::from_utf8(data) {
        if let Ok(Some(eio)) = tether::engineio::parse_query(q) {
            assert!(eio.version == 3 || eio.version == 4);
            assert!(eio.sid.is_none_or(|s| s.len() <= 64));
        }
    }
});
