//! A request's Host header and target.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (host, path) = data.split_at(data.len() / 2);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(host) {
        headers.insert(http::header::HOST, v);
    }
    let Ok(uri) = http::Uri::try_from(path) else {
        return;
    };
    if let Ok(t) = tether::proxy::target::read(http::Version::HTTP_11, &uri, &headers) {
        assert!(t.route_host().is_none_or(|h| !h.ends_with('.')));
    }
});
