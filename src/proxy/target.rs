//! The request target (RFC 9112 §3.2): which host a request is for and which path, read
//! once and the way the server behind tether will read them, so that the route tether
//! picks and what the server serves cannot disagree.
//!
//! - The host: an absolute-form target's authority (HTTP/2's `:authority` too) replaces
//!   any `Host` header; otherwise exactly one valid `Host`, required on HTTP/1.1.
//! - The path: dot segments removed (RFC 3986 §5.2.4) before routing, and the
//!   normalised path is what the server receives. An escaped slash, backslash or dot
//!   (`%2F`, `%5C`, `%2E`) is refused rather than decoded: servers differ on whether they
//!   decode them, and one that does would see a path other than the one routed.

use std::borrow::Cow;

use http::{header, HeaderMap, HeaderValue, Uri, Version};

/// Why a request's target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadTarget {
    #[error("an HTTP/1.1 request needs a Host header")]
    NoHost,
    #[error("more than one Host header")]
    TwoHosts,
    #[error("the Host header is not a host[:port]")]
    BadHost,
    #[error("the path holds an escaped slash, backslash or dot")]
    EscapedSeparator,
    #[error("the request target cannot be sent on")]
    Unusable,
}

/// A request's host and normalised path.
#[derive(Debug)]
pub struct Target<'r> {
    /// What goes upstream as `Host` (a name or address, maybe with a port); `None` for an
    /// HTTP/1.0 request without one.
    pub host: Option<HeaderValue>,
    /// Whether `host` came from the request target rather than a `Host` header, so the
    /// header must be replaced.
    pub from_authority: bool,
    pub path: Cow<'r, str>,
}

impl Target<'_> {
    /// The host name routes match on: no port, no trailing dots.
    pub fn route_host(&self) -> Option<&str> {
        let host = self.host.as_ref()?.to_str().ok()?;
        let name = strip_port(host);
        Some(name.trim_end_matches('.'))
    }
}

/// Reads the target of a request.
pub fn read<'r>(
    version: Version,
    uri: &'r Uri,
    headers: &HeaderMap,
) -> Result<Target<'r>, BadTarget> {
    let (host, from_authority) = match uri.authority() {
        Some(a) => (
            Some(HeaderValue::from_str(a.as_str()).map_err(|_| BadTarget::BadHost)?),
            true,
        ),
        None => {
            let mut hosts = headers.get_all(header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(_), Some(_)) => return Err(BadTarget::TwoHosts),
                // What a client sends for a target without an authority (RFC 9112 §3.2).
                (Some(h), None) if h.is_empty() => (None, false),
                (Some(h), None) => {
                    if !valid_host(h.as_bytes()) {
                        return Err(BadTarget::BadHost);
                    }
                    // A shared view of the request's bytes, not a copy.
                    (Some(h.clone()), false)
                }
                (None, _) if version == Version::HTTP_11 => return Err(BadTarget::NoHost),
                (None, _) => (None, false),
            }
        }
    };
    Ok(Target {
        host,
        from_authority,
        path: normalize_path(uri.path())?,
    })
}

/// Rewrites `req` (whose URI was `uri`) to what the server gets: the target's host as
/// `Host`, and an origin-form URI with the normalised path.
pub fn apply<B>(
    target: &Target<'_>,
    uri: &Uri,
    req: &mut http::Request<B>,
) -> Result<(), BadTarget> {
    if target.from_authority {
        if let Some(host) = &target.host {
            req.headers_mut().insert(header::HOST, host.clone());
        }
    }
    let rewritten = matches!(target.path, Cow::Owned(_)) || uri.authority().is_some();
    if rewritten {
        let origin_form = match uri.query() {
            Some(q) => format!("{}?{q}", target.path),
            None => target.path.clone().into_owned(),
        };
        *req.uri_mut() = origin_form.parse().map_err(|_| BadTarget::Unusable)?;
    }
    Ok(())
}

/// Whether a `Host` value is `host[:port]` (RFC 3986 §3.2.2): a reg-name or IPv4
/// address, or an IPv6 literal in brackets, then an optional port. Checked by hand,
/// without allocating: it runs on every request.
fn valid_host(b: &[u8]) -> bool {
    let (host, port) = match b.first() {
        Some(b'[') => match b.iter().position(|&c| c == b']') {
            Some(end) => {
                let literal = &b[1..end];
                let ok = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'));
                if !ok {
                    return false;
                }
                (&b[..0], &b[end + 1..])
            }
            None => return false,
        },
        _ => match b.iter().rposition(|&c| c == b':') {
            Some(i) => (&b[..i], &b[i..]),
            None => (b, &b[..0]),
        },
    };
    let reg_name = host.iter().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    reg_name && port_ok
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `::1`.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The path with its dot segments removed; escaped separators refused.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadTarget> {
    let bytes = path.as_bytes();
    let escaped = bytes.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_uppercase()),
                (b'2', b'F' | b'E') | (b'5', b'C')
            )
    });
    if escaped || bytes.contains(&b'\\') {
        return Err(BadTarget::EscapedSeparator);
    }
    let has_dots = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if !has_dots || !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        // `/a/b/..` is `/a/`: a final dot segment leaves a directory.
        if i == last && (*segment == "." || *segment == "..") {
            out.push("");
        }
    }
    Ok(Cow::Owned(format!("/{}", out.join("/"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        let n = |p| normalize_path(p).unwrap().into_owned();
        assert_eq!(n("/socket.io/"), "/socket.io/");
        assert_eq!(n("/a/../b/x"), "/b/x");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/a/.../b"), "/a/.../b", "three dots are a name");
        assert_eq!(n("/"), "/");
        assert!(matches!(normalize_path("/x"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn escaped_separators_are_refused() {
        for p in ["/a%2f..%2fb", "/a%2F..", "/a/%2e%2e/b", "/a%5cb", "/a\\b"] {
            assert_eq!(normalize_path(p), Err(BadTarget::EscapedSeparator), "{p}");
        }
        assert!(normalize_path("/a%20b").is_ok());
    }

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

    #[test]
    fn the_target_authority_replaces_the_host_header() {
        let uri: Uri = "http://internal.example/x".parse().unwrap();
        let t = read(Version::HTTP_11, &uri, &headers(&[("host", "pub")])).unwrap();
        assert_eq!(t.host.unwrap(), "internal.example");
        assert!(t.from_authority);
    }

    #[test]
    fn http_1_1_needs_exactly_one_valid_host() {
        let uri: Uri = "/x".parse().unwrap();
        let read11 = |h: &[(&str, &str)]| read(Version::HTTP_11, &uri, &headers(h)).map(|t| t.host);
        assert_eq!(read11(&[]).unwrap_err(), BadTarget::NoHost);
        assert_eq!(
            read11(&[("host", "a"), ("host", "b")]).unwrap_err(),
            BadTarget::TwoHosts
        );
        for bad in [
            "a b",
            "a/b",
            "user@host",
            "a:b",
            "[::1",
            "[zz]:80",
            "a:123456",
            "é.test",
        ] {
            assert_eq!(
                read11(&[("host", bad)]).unwrap_err(),
                BadTarget::BadHost,
                "{bad:?}"
            );
        }
        for good in [
            "a.test:80",
            "a.test",
            "[::1]:8080",
            "[::1]",
            "10.0.0.1:443",
            "a.test:",
        ] {
            assert_eq!(read11(&[("host", good)]).unwrap().unwrap(), good);
        }
        assert_eq!(
            read11(&[("host", "")]).unwrap(),
            None,
            "an empty Host is allowed"
        );
        assert_eq!(
            read(Version::HTTP_10, &uri, &headers(&[])).unwrap().host,
            None
        );
    }

    #[test]
    fn routes_see_the_host_without_port_or_trailing_dot() {
        let uri: Uri = "/".parse().unwrap();
        for (host, name) in [
            ("api.test.", "api.test"),
            ("API.test:8080", "API.test"),
            ("[::1]:80", "::1"),
            ("a.test.:443", "a.test"),
        ] {
            let t = read(Version::HTTP_11, &uri, &headers(&[("host", host)])).unwrap();
            assert_eq!(t.route_host(), Some(name), "{host}");
        }
    }
}
