//! A PROXY protocol header, v1 or v2.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tether::listener::proxy_protocol::parse_v1(data);
    let _ = tether::listener::proxy_protocol::parse_v2(data);
});
