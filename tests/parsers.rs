//! Everything that parses input from outside, fed arbitrary bytes: none may panic, and
//! each keeps the promises the request path relies on. These are the fuzz targets of
//! `fuzz/` (cargo-fuzz, nightly) run as property tests on stable, in the normal test run;
//! `bash fuzz/run.sh` runs either for longer. `PROPTEST_CASES` sets how many inputs.

use std::path::Path;

use http::{HeaderMap, HeaderValue, Uri, Version};
use proptest::prelude::*;

use tether::affinity::cookie::{cookie_value, CookieSigner};
use tether::config::{CookieConfig, ProxyProtocol, SameSite};
use tether::engineio::{parse_open_packet, parse_query, parse_ws_open_frame};
use tether::import::{import, Format, ImportError, Options};
use tether::listener::proxy_protocol::{parse_v1, parse_v2};
use tether::proxy::target::{self, normalize_path};

/// Bytes that look like the input they stand for often enough to get past the first
/// check: plain arbitrary bytes, and texts built from the input's own vocabulary.
fn text_from(vocabulary: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vocabulary).prop_map(str::to_owned),
            "[ -~]{0,6}",
            any::<char>().prop_map(String::from),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

fn signer() -> CookieSigner {
    let cfg = CookieConfig {
        name: "tether".into(),
        secret: b"0123456789abcdef-secret".to_vec(),
        secure: false,
        same_site: SameSite::Lax,
        max_age: None,
    };
    CookieSigner::new(&cfg, "sockets", std::time::Duration::from_secs(60))
}

/// 512 inputs a target in the normal run; `PROPTEST_CASES` for more.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn engine_io_query(q in text_from(&["EIO=", "4", "3", "&", "transport=", "polling", "websocket", "sid=", "%45", "%", "="])) {
        if let Ok(Some(eio)) = parse_query(&q) {
            prop_assert!(eio.version == 3 || eio.version == 4);
            if let Some(sid) = eio.sid {
                prop_assert!(sid.len() <= 64);
            }
        }
    }

    #[test]
    fn open_packet(body in prop_oneof![
        any::<Vec<u8>>(),
        text_from(&["0", "{", "}", "\"sid\":", "\"pingInterval\":", "\"pingTimeout\":", "\"", ",", "25000", "\u{1e}", ":"]).prop_map(String::into_bytes),
    ]) {
        if let Some(open) = parse_open_packet(&body) {
            prop_assert!(!open.sid.is_empty());
        }
        let _ = parse_ws_open_frame(&body);
    }

    #[test]
    fn cookie(value in text_from(&["node-1", ".", "0123456789abcdef", "ff", "tether=", ";", " "])) {
        let s = signer();
        if let Some(c) = s.verify(&value) {
            // Only what the signer signed verifies.
            prop_assert!(value.starts_with(c.server));
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            let mut h = HeaderMap::new();
            h.insert(http::header::COOKIE, v);
            let _ = cookie_value(&h, "tether");
            let _ = s.read(&h);
        }
    }

    #[test]
    fn proxy_header(bytes in prop_oneof![
        any::<Vec<u8>>(),
        text_from(&["PROXY ", "TCP4 ", "TCP6 ", "UNKNOWN", "1.2.3.4 ", "::1 ", "80 ", "\r\n", " "]).prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|tail| {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend(tail);
            h
        }),
    ]) {
        let _ = parse_v1(&bytes);
        let _ = parse_v2(&bytes);
        let _ = ProxyProtocol::Any;
    }

    #[test]
    fn path_normalisation(path in text_from(&["/", ".", "..", "%2e", "%2F", "a", "\\", "%"])) {
        if let Ok(normal) = normalize_path(&path) {
            if path.starts_with('/') {
                prop_assert!(normal.starts_with('/'));
                prop_assert!(!normal.split('/').any(|s| s == "." || s == ".."), "{normal}");
            }
            prop_assert!(!normal.to_ascii_lowercase().contains("%2f"));
        }
    }

    #[test]
    fn request_target(host in any::<Vec<u8>>(), path in "[ -~]{0,40}") {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&host) {
            headers.insert(http::header::HOST, v);
        }
        let uri: Uri = match format!("/{path}").parse() {
            Ok(u) => u,
            Err(_) => return Ok(()),
        };
        if let Ok(t) = target::read(Version::HTTP_11, &uri, &headers) {
            if let Some(h) = t.route_host() {
                prop_assert!(!h.ends_with('.'));
            }
        }
    }

    #[test]
    fn config_loader(text in prop_oneof![
        any::<String>(),
        text_from(&["listeners:", "\n", "  - bind: ", "\"127.0.0.1:0\"", "backends:", "  b:", "    servers:", "      - { id: a, addr: \"127.0.0.1:1\" }", "{", "}", "[", "]", ": ", "- ", "&a ", "*a", "!!", "  ", "limits:", "routes:", "1s", "-1"]),
    ]) {
        let _ = tether::config::parse(&text, Path::new("<fuzz>"));
    }

    /// `tether import`'s readers (fuzz target `import`): any text, or text of each
    /// format's own words, is imported or refused, never a panic, and never YAML that
    /// tether's own check refuses.
    #[test]
    fn import_readers(text in prop_oneof![
        any::<String>(),
        text_from(&["upstream u ", "{", "}", ";", "\n", " server ", "a:1", "listen 80", "location / ", "proxy_pass http://u", "ip_hash", "server_name .x.y",
            "backend b\n", "frontend f\n", " bind :80 ssl crt c.pem", " bind *:80", " default_backend b", " cookie C insert", " option httpchk GET /h", " timeout server 40s", " check", " weight 2", "\"", "'", "#",
            "kind: Ingress\n", "spec:\n", "  rules:\n", "  - host: x\n", "    http: { paths: [ { path: /, backend: { service: { name: s, port: { number: 80 } } } } ] }\n"]),
    ]) {
        for f in [None, Some(Format::Nginx), Some(Format::Haproxy), Some(Format::Ingress)] {
            let r = import(&text, f, &Options::default(), Path::new("<fuzz>"));
            prop_assert!(!matches!(r, Err(ImportError::Invalid(_))), "{:?}", r);
        }
    }

    /// The values the config reads by hand (durations, binds, server addresses), where
    /// random whole files seldom reach: any text there is refused or accepted, never a
    /// panic, and an accepted duration is what the grammar says.
    #[test]
    fn config_values(value in text_from(&["0", "1", "99999", "65536", ".", "5", "ms", "s", "m", "h", "d", ":", "[", "]", "::1", "127.0.0.1", "localhost", "-", "+", " ", "http://", "@", "µ"])) {
        let q = value.replace('\'', "''");
        let tail = "listeners: [{ bind: \"127.0.0.1:0\" }]\nbackends: { b: { servers: [{ id: a, addr: \"127.0.0.1:1\" }] } }\n";
        let duration = tether::config::parse(&format!("shutdown_grace: '{q}'\n{tail}"), Path::new("<fuzz>"));
        if duration.is_ok() {
            prop_assert!(value.bytes().all(|b| b.is_ascii_digit() || b".mshd".contains(&b)), "{value:?} accepted");
        }
        let addresses = format!("listeners: [{{ bind: '{q}' }}]\nadmin: {{ bind: '{q}' }}\nbackends: {{ b: {{ servers: [{{ id: a, addr: '{q}' }}], discover: {{ dns: '{q}' }} }} }}\n");
        let _ = tether::config::parse(&addresses, Path::new("<fuzz>"));
    }
}
