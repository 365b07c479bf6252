//! Header rewriting between client and server: hop-by-hop headers (RFC 9110 §7.6.1)
//! are the connection's business, not the message's, and the `X-Forwarded-*` /
//! `Forwarded` family tells the server who the client is — believing the incoming
//! values only from trusted proxies, so nobody can forge their own address.

use std::net::IpAddr;
use tether_kit::IpText;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Uri};

const HOP_BY_HOP_COUNT: usize = 8;
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
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

/// Whether the `Connection` header lists `token`.
pub(super) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
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
    // Most messages carry none of these but `Connection`: one pass over the names finds
    // which are there, so only those are hashed and removed (this runs twice for every
    // request).
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut has_upgrade = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        } else if name == header::UPGRADE {
            has_upgrade = true;
        }
    }
    let upgrade = if keep_upgrade && has_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // `present[0]`: HOP_BY_HOP starts with `Connection`.
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in &named {
            if *name == header::UPGRADE {
                has_upgrade = false;
            }
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    match upgrade {
        Some(value) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, value);
        }
        None if has_upgrade => {
            headers.remove(header::UPGRADE);
        }
        None => {}
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
    // Room for the five at once: a map grown one insert at a time rehashes each time.
    headers.reserve(5);
    let keep = o.peer_trusted;
    let peer = IpText::new(o.peer);
    let peer_value = header_value(&peer);

    // Earlier values only count from a trusted peer: from anyone else (most requests)
    // they are not even read.
    match keep.then(|| joined(headers, &X_FORWARDED_FOR)).flatten() {
        Some(prev) => put(
            headers,
            &X_FORWARDED_FOR,
            format!("{prev}, {}", peer.as_str()),
        ),
        None => set(headers, &X_FORWARDED_FOR, peer_value.clone()),
    }
    if o.client == o.peer {
        set(headers, &X_REAL_IP, peer_value);
    } else {
        set(headers, &X_REAL_IP, header_value(&IpText::new(o.client)));
    }
    if !(keep && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(o.proto));
    }
    if !(keep && headers.contains_key(&X_FORWARDED_HOST)) {
        match o.host.map(HeaderValue::from_str) {
            Some(Ok(h)) => {
                headers.insert(X_FORWARDED_HOST.clone(), h);
            }
            _ => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }

    let prev = keep.then(|| joined(headers, &FORWARDED)).flatten();
    let mut forwarded = String::with_capacity(64 + prev.as_ref().map_or(0, String::len));
    if let Some(prev) = &prev {
        forwarded.push_str(prev);
        forwarded.push_str(", ");
    }
    forwarded.push_str("for=");
    match o.peer {
        IpAddr::V4(_) => forwarded.push_str(peer.as_str()),
        IpAddr::V6(_) => {
            forwarded.push_str("\"[");
            forwarded.push_str(peer.as_str());
            forwarded.push_str("]\"");
        }
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(o.proto);
    if let Some(h) = o.host.filter(|h| !h.contains(['"', '\\'])) {
        forwarded.push_str(";host=\"");
        forwarded.push_str(h);
        forwarded.push('"');
    }
    put(headers, &FORWARDED, forwarded);
}

/// An address as a header value, written without `core::fmt` (see [`IpText`]).
fn header_value(ip: &IpText) -> HeaderValue {
    HeaderValue::from_str(ip.as_str()).unwrap_or(HeaderValue::from_static(""))
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

/// Sets a header from text that may be invalid (forwarded values): removed if so.
fn put(headers: &mut HeaderMap, name: &HeaderName, value: String) {
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        Ok(v) => set(headers, name, v),
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// This tether's entry in `Via` (RFC 9110 §7.6.3), which marks every request it forwards
/// so that one coming back is recognised: a config whose server is tether itself (or a
/// proxy in front of it) would otherwise send each request round until a limit broke the
/// loop, about a thousand hops later. The received-by name is a pseudonym drawn at
/// random for each running tether (RFC 9110 allows one in place of a host name), so two
/// tethers in a chain, even in one process, tell each other apart, and the name says
/// nothing about the host.
#[derive(Debug)]
pub struct Via {
    pseudonym: String,
    /// The entry for a request received over HTTP/1.1 and over HTTP/2.
    http1: HeaderValue,
    http2: HeaderValue,
}

impl Default for Via {
    fn default() -> Self {
        use std::hash::BuildHasher;
        // RandomState's keys come from the OS's randomness; a clock and the pid mixed
        // in make two instances of one process differ too.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let random =
            std::collections::hash_map::RandomState::new().hash_one((now, std::process::id()));
        let pseudonym = format!("tether-{random:016x}");
        let entry = |protocol: &str| {
            HeaderValue::from_str(&format!("{protocol} {pseudonym}"))
                .unwrap_or(HeaderValue::from_static("1.1 tether"))
        };
        Via {
            http1: entry("1.1"),
            http2: entry("2"),
            pseudonym,
        }
    }
}

impl Via {
    /// Whether the request already passed through this tether.
    pub fn seen_in(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|entry| entry.split_whitespace().nth(1) == Some(self.pseudonym.as_str()))
    }

    /// Appends this tether's entry for a request received as `version`.
    pub fn append(&self, headers: &mut HeaderMap, version: http::Version) {
        let entry = if version == http::Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        };
        headers.append(header::VIA, entry.clone());
    }
}

/// Makes an absolute-form URI (HTTP/2 requests carry one) origin-form, and gives a
/// request without `Host` (HTTP/2, or an HTTP/1.0 client) the URI's authority, else the
/// server's address: it goes upstream as HTTP/1.1, where `Host` is required. `Err` says
/// what about the request cannot be sent on.
pub fn origin_form<B>(req: &mut Request<B>, server: &Authority) -> Result<(), &'static str> {
    let authority = req.uri().authority().cloned();
    if authority.is_some() {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = path.parse().map_err(|_| "unusable request target")?;
        *req.uri_mut() = uri;
    }
    if !req.headers().contains_key(header::HOST) {
        let host = authority.as_ref().unwrap_or(server).as_str();
        let host = HeaderValue::from_str(host).map_err(|_| "unusable request authority")?;
        req.headers_mut().insert(header::HOST, host);
    }
    Ok(())
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    headers.insert(name.clone(), value);
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
    fn via_marks_a_request_and_knows_its_own_mark_only() {
        let (ours, theirs) = (Via::default(), Via::default());
        let mut h = map(&[("via", "1.0 fred, 1.1 p.example.net (Apache/1.1)")]);
        assert!(!ours.seen_in(&h));
        theirs.append(&mut h, http::Version::HTTP_11);
        assert!(!ours.seen_in(&h), "another tether's mark is not ours");
        ours.append(&mut h, http::Version::HTTP_2);
        assert!(ours.seen_in(&h) && theirs.seen_in(&h));
        let values: Vec<&str> = h
            .get_all("via")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            values.len(),
            3,
            "appended, earlier entries kept: {values:?}"
        );
        assert!(values[1].starts_with("1.1 tether-") && values[2].starts_with("2 tether-"));
        // Our pseudonym as a comment or a prefix is not our mark.
        let name = ours.pseudonym.clone();
        let fake = map(&[("via", &format!("1.1 x ({name}), 1.1 {name}x") as &str)]);
        assert!(!ours.seen_in(&fake));
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
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
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

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn requests_go_upstream_in_origin_form_with_a_host() {
        let server: Authority = "127.0.0.1:3001".parse().unwrap();
        // HTTP/2: the authority becomes Host.
        let mut r = request("https://chat.example:8443/socket.io/?EIO=4", None);
        origin_form(&mut r, &server).unwrap();
        assert_eq!(r.uri(), "/socket.io/?EIO=4");
        assert_eq!(r.headers()["host"], "chat.example:8443");
        // HTTP/1.1 as it came.
        let mut r = request("/socket.io/?EIO=4", Some("chat.example"));
        origin_form(&mut r, &server).unwrap();
        assert_eq!(r.uri(), "/socket.io/?EIO=4");
        assert_eq!(r.headers()["host"], "chat.example");
        // HTTP/1.0 without Host: the server's address, as HTTP/1.1 requires one.
        let mut r = request("/x", None);
        origin_form(&mut r, &server).unwrap();
        assert_eq!(r.headers()["host"], "127.0.0.1:3001");
    }
}
