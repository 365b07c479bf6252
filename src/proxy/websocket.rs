//! The WebSocket opening handshake, held to RFC 6455 at both ends.
//!
//! A request that asks for a WebSocket must be one (§4.2.1): GET, `Upgrade: websocket`,
//! `Connection: upgrade`, a `Sec-WebSocket-Key` of 16 base64-encoded bytes, version 13.
//! Anything else is refused here rather than passed to a server that might accept it.
//! And only a server answer that completes the handshake (§4.2.2: `101`,
//! `Upgrade: websocket`, `Connection: upgrade`, the `Sec-WebSocket-Accept` derived from
//! the key) opens a tunnel: a `101` without it would make tether a raw TCP relay to
//! whatever the server is.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue, Method};
use sha1::{Digest, Sha1};

use super::headers::connection_has;

/// The only version RFC 6455 defines.
pub const VERSION: &str = "13";

/// Appended to the key before hashing (RFC 6455 §1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a request's `Upgrade` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// No upgrade, or one tether does not offer (h2c, TLS): handled as a plain request,
    /// the `Upgrade` header removed.
    None,
    /// A valid WebSocket opening handshake; its key, for checking the server's answer.
    WebSocket(HeaderValue),
}

/// Why a WebSocket handshake is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a WebSocket handshake must be a GET")]
    Method,
    #[error("`Upgrade` must be exactly `websocket` and `Connection` must include `upgrade`")]
    Headers,
    #[error("`Sec-WebSocket-Key` must be 16 bytes in base64")]
    Key,
    #[error("`Sec-WebSocket-Version` must be 13")]
    Version,
}

/// Classifies a request's upgrade. `Err`: it asks for a WebSocket but is not a valid
/// opening handshake.
pub fn check_request(method: &Method, headers: &HeaderMap) -> Result<Upgrade, Refusal> {
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let Some(first) = upgrades.next() else {
        return Ok(Upgrade::None);
    };
    let asks_websocket = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
    if !asks_websocket {
        return Ok(Upgrade::None);
    }
    let exactly_websocket = upgrades.next().is_none()
        && first
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if !exactly_websocket || !connection_has(headers, "upgrade") {
        return Err(Refusal::Headers);
    }
    if method != Method::GET {
        return Err(Refusal::Method);
    }
    let versions: Vec<&HeaderValue> = headers
        .get_all(header::SEC_WEBSOCKET_VERSION)
        .iter()
        .collect();
    if versions.len() != 1 || versions[0].as_bytes().trim_ascii() != VERSION.as_bytes() {
        return Err(Refusal::Version);
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) if valid_key(key.as_bytes()) => Ok(Upgrade::WebSocket(key.clone())),
        _ => Err(Refusal::Key),
    }
}

fn valid_key(key: &[u8]) -> bool {
    key.len() == 24 && BASE64.decode(key).is_ok_and(|bytes| bytes.len() == 16)
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub fn accept_for(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    BASE64.encode(sha.finalize())
}

/// Whether a `101` answer completes the handshake started with `key`.
pub fn completes(headers: &HeaderMap, key: &HeaderValue) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let accept = headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == accept_for(key.as_bytes()).as_bytes());
    upgrade && accept && connection_has(headers, "upgrade")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn handshake(extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
        let mut h: Vec<(&'static str, String)> = vec![
            ("upgrade", "websocket".into()),
            ("connection", "Upgrade".into()),
            ("sec-websocket-version", "13".into()),
            ("sec-websocket-key", KEY.into()),
        ];
        for (k, v) in extra {
            h.retain(|(n, _)| n != k);
            if !v.is_empty() {
                h.push((Box::leak(k.to_string().into_boxed_str()), v.to_string()));
            }
        }
        h
    }

    fn check(extra: &[(&str, &str)]) -> Result<Upgrade, Refusal> {
        let h = handshake(extra);
        let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        check_request(&Method::GET, &headers(&pairs))
    }

    #[test]
    fn the_rfc_example_is_accepted_and_answered_with_its_accept_value() {
        assert_eq!(
            check(&[]),
            Ok(Upgrade::WebSocket(HeaderValue::from_static(KEY)))
        );
        // RFC 6455 §1.3.
        assert_eq!(accept_for(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn anything_short_of_a_valid_handshake_is_refused() {
        assert_eq!(
            check(&[("sec-websocket-version", "8")]),
            Err(Refusal::Version)
        );
        assert_eq!(
            check(&[("sec-websocket-version", "")]),
            Err(Refusal::Version)
        );
        assert_eq!(check(&[("sec-websocket-key", "short")]), Err(Refusal::Key));
        assert_eq!(
            check(&[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ")]),
            Err(Refusal::Key),
            "unpadded"
        );
        assert_eq!(check(&[("sec-websocket-key", "")]), Err(Refusal::Key));
        assert_eq!(
            check(&[("upgrade", "h2c, websocket")]),
            Err(Refusal::Headers)
        );
        assert_eq!(
            check(&[("connection", "keep-alive")]),
            Err(Refusal::Headers)
        );
        let h = handshake(&[]);
        let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            check_request(&Method::POST, &headers(&pairs)),
            Err(Refusal::Method)
        );
    }

    #[test]
    fn other_upgrades_are_plain_requests() {
        assert_eq!(
            check_request(&Method::GET, &HeaderMap::new()),
            Ok(Upgrade::None)
        );
        let h2c = headers(&[
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
        ]);
        assert_eq!(check_request(&Method::GET, &h2c), Ok(Upgrade::None));
    }

    #[test]
    fn only_an_answer_with_the_right_accept_completes_the_handshake() {
        let key = HeaderValue::from_static(KEY);
        let good = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(completes(&headers(&good), &key));
        assert!(!completes(&headers(&good[..2]), &key), "no accept");
        assert!(!completes(
            &headers(&[good[0], good[1], ("sec-websocket-accept", "AAAA")]),
            &key
        ));
        assert!(!completes(&headers(&good[1..]), &key), "no Upgrade");
        assert!(!completes(
            &headers(&[("upgrade", "tcp"), good[1], good[2]]),
            &key
        ));
    }
}
