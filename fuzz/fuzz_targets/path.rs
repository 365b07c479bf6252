//! A request path, normalised for routing.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        if let Ok(normal) = tether::proxy::target::normalize_path(path) {
            if path.starts_with('/') {
                assert!(normal.starts_with('/'));
                assert!(!normal.split('/').any(|s| s == "." || s == ".."));
            }
        }
    }
});
