//! A `Cookie` header, and a tether cookie value in it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether::affinity::cookie::{cookie_value, CookieSigner};
use tether::config::{CookieConfig, SameSite};

fuzz_target!(|data: &[u8]| {
    let cfg = CookieConfig {
        name: "tether".into(),
        secret: b"0123456789abcdef-secret".to_vec(),
        secure: false,
        same_site: SameSite::Lax,
        max_age: None,
    };
    let signer = CookieSigner::new(&cfg, "sockets", std::time::Duration::from_secs(60));
    if let Ok(v) = std::str::from_utf8(data) {
        if let Some(c) = signer.verify(v) {
            assert!(v.starts_with(c.server));
        }
    }
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, v);
        let _ = cookie_value(&h, "tether");
        let _ = signer.read(&h);
    }
});
