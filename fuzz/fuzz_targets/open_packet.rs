//! A server's answer to a handshake (polling body, first WebSocket frame).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(open) = tether::engineio::parse_open_packet(data) {
        assert!(!open.sid.is_empty());
    }
    let _ = tether::engineio::parse_ws_open_frame(data);
});
