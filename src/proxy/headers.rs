//! Header rewriting between client and server: hop-by-hop headers (RFC 9110 §7.6.1)
//! are the connection's business, not the message's, and the `X-Forwarded-*` /
//! `Forwarded` family tells the server who the client is — believing the incoming
//! values only from trusted proxies, so nobody can forge their own address.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether a request asks to become a WebSocket (`Connection: upgrade` + `Upgrade: websocket`).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    upgrade && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those the `Connection` header names. With
/// `keep_upgrade`, a WebSocket upgrade's `Connection: upgrade` / `Upgrade` survive,
/// because forwarding the upgrade is the point.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    match upgrade {
        Some(value) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, value);
        }
        None => {
            headers.remove(header::UPGRADE);
        }
    }
}

/// Who sent the request and how, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub peer: IpAddr,
    pub client: IpAddr,
    pub peer_trusted: bool,
    pub proto: &'static str,
    pub host: Option<&'a str>,
}

/// Sets `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host` and
/// `Forwarded` (RFC 7239). Incoming values are kept and appended to only when the peer
/// is a trusted proxy; from anyone else they are replaced.
pub fn set_forwarded(headers: &mut HeaderMap, o: &Origin<'_>) {
    let keep = o.peer_trusted;
    let peer = o.peer.to_string();

    let xff = match joined(headers, &X_FORWARDED_FOR).filter(|_| keep) {
        Some(prev) => format!("{prev}, {peer}"),
        None => peer.clone(),
    };
    put(headers, &X_FORWARDED_FOR, &xff);
    put(headers, &X_REAL_IP, &o.client.to_string());
    if !(keep && headers.contains_key(&X_FORWARDED_PROTO)) {
        put(headers, &X_FORWARDED_PROTO, o.proto);
    }
    if !(keep && headers.contains_key(&X_FORWARDED_HOST)) {
        match o.host {
            Some(h) => put(headers, &X_FORWARDED_HOST, h),
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }

    let node = match o.peer {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={}", o.proto);
    if let Some(h) = o.host.filter(|h| !h.contains(['"', '\\'])) {
        element.push_str(&format!(";host=\"{h}\""));
    }
    let forwarded = match joined(headers, &FORWARDED).filter(|_| keep) {
        Some(prev) => format!("{prev}, {element}"),
        None => element,
    };
    put(headers, &FORWARDED, &forwarded);
}

/// All values of a header joined by ", " (the list form), if any is valid text.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn put(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name.clone(), v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn websocket_upgrade_survives_stripping() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_websocket_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!is_websocket_upgrade(&map(&[("upgrade", "websocket")])));
    }

    fn origin(trusted: bool) -> Origin<'static> {
        Origin {
            peer: "10.0.0.2".parse().unwrap(),
            client: "5.5.5.5".parse().unwrap(),
            peer_trusted: trusted,
            proto: "https",
            host: Some("example.com:8443"),
        }
    }

    #[test]
    fn untrusted_peer_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "gopher"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        set_forwarded(&mut h, &origin(false));
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-real-ip"], "5.5.5.5");
        assert_eq!(h["x-forwarded-host"], "example.com:8443");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.2;proto=https;host=\"example.com:8443\""
        );
    }

    #[test]
    fn trusted_peer_forwarding_headers_are_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "5.5.5.5"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=5.5.5.5"),
        ]);
        set_forwarded(&mut h, &origin(true));
        assert_eq!(h["x-forwarded-for"], "5.5.5.5, 6.6.6.6, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=5.5.5.5, for=10.0.0.2;"));
    }

    #[test]
    fn ipv6_peer_is_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        let mut o = origin(false);
        o.peer = "::1".parse().unwrap();
        o.host = None;
        set_forwarded(&mut h, &o);
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https");
    }
}
