//! Who may talk to the admin API. The API can drain servers, put them in maintenance
//! (ending their sessions) and reload the config, and it usually listens on loopback, where every web page the operator's browser opens can
//! reach it too. So besides the bearer token (when one is set):
//!
//! - the request must name a host the API answers to: an IP address, `localhost`, or a
//!   name in `admin.hosts`. A page that makes its own name resolve to 127.0.0.1 (DNS
//!   rebinding) sends that name as `Host` and is refused;
//! - a state change (anything but GET, HEAD and OPTIONS) must come from the API's own
//!   origin: a browser marks a cross-site request with `Sec-Fetch-Site` and `Origin`, and a
//!   form a foreign page posts is refused. Clients that send neither (curl, deploy
//!   scripts) are not browsers and pass.
//!
//! The probes (`/healthz`, `/readyz`) are served without the token too: orchestrators
//! send none, and they say no more than whether to send tether traffic.
//!
//! The dashboard page itself is served without the token: it holds no data (it reads
//! everything through `/status`, with the token the user types into it), and a browser
//! cannot send a bearer token with a page load, so without this a user would have no
//! way in. The token then travels as a header set by the page's script, never as a
//! cookie, so no other site can make the browser send it.

use std::net::IpAddr;

use http::{header, HeaderMap, Method};

use crate::config::AdminConfig;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this admin API does not answer to that host name")]
    ForeignHost,
    #[error("a state change must come from the admin API's own origin")]
    CrossOrigin,
    /// No token was sent (or not as `Authorization: Bearer`).
    #[error("admin token required")]
    TokenMissing,
    /// A token was sent and it is not the one configured.
    #[error("admin token refused")]
    TokenRefused,
}

/// Whether a request needs the token (when one is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The dashboard page: static, no data in it.
    Public,
    Token,
}

/// Which requests are [`Access::Public`]: reading the dashboard page, and the liveness
/// and readiness probes (a kubelet or load balancer probe sends no token, and all they
/// say is whether tether should get traffic).
pub fn access(method: &Method, path: &str) -> Access {
    if matches!(*method, Method::GET | Method::HEAD) && matches!(path, "/" | "/healthz" | "/readyz")
    {
        Access::Public
    } else {
        Access::Token
    }
}

/// Checks a request's host, origin and token against the admin config in force.
pub fn check(
    cfg: &AdminConfig,
    access: Access,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or(Refusal::ForeignHost)?;
    if !host_allowed(cfg, host) {
        return Err(Refusal::ForeignHost);
    }
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !same_origin(headers, host) {
        return Err(Refusal::CrossOrigin);
    }
    match &cfg.token {
        None => Ok(()),
        Some(_) if access == Access::Public => Ok(()),
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or(Refusal::TokenMissing)?;
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(Refusal::TokenRefused)
            }
        }
    }
}

/// `host` is a `Host` header value: a name or address, maybe with a port.
fn host_allowed(cfg: &AdminConfig, host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || cfg.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a browser says the request comes from the page at `host` itself; non-browser
/// clients send neither header and pass.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|s| s != "same-origin" && s != "none") {
        return false;
    }
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => true,
        Some(Ok(origin)) => ["http://", "https://"].iter().any(|scheme| {
            origin
                .strip_prefix(scheme)
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
        }),
        Some(Err(_)) => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(token: Option<&str>, hosts: &[&str]) -> AdminConfig {
        AdminConfig {
            bind: "127.0.0.1:9900".parse().unwrap(),
            token: token.map(str::to_owned),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
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
    fn only_addresses_localhost_and_configured_names_are_answered() {
        let c = cfg(None, &["admin.example.com"]);
        for ok in [
            "127.0.0.1:9900",
            "[::1]:9900",
            "localhost:9900",
            "LOCALHOST",
            "10.0.0.5",
            "admin.example.com:9900",
            "Admin.Example.com.",
        ] {
            assert_eq!(
                check(&c, Access::Token, &Method::GET, &headers(&[("host", ok)])),
                Ok(()),
                "{ok}"
            );
        }
        for foreign in [
            "evil.example",
            "evil.example:9900",
            "127.0.0.1.evil.example",
        ] {
            assert_eq!(
                check(
                    &c,
                    Access::Public,
                    &Method::GET,
                    &headers(&[("host", foreign)])
                ),
                Err(Refusal::ForeignHost),
                "{foreign}"
            );
        }
        assert_eq!(
            check(&c, Access::Token, &Method::GET, &HeaderMap::new()),
            Err(Refusal::ForeignHost),
            "no Host"
        );
    }

    #[test]
    fn cross_origin_state_changes_are_refused_and_scripts_pass() {
        let c = cfg(None, &[]);
        let host = ("host", "127.0.0.1:9900");
        let post = |extra: &[(&str, &str)]| {
            let mut h = vec![host];
            h.extend_from_slice(extra);
            check(&c, Access::Token, &Method::POST, &headers(&h))
        };
        assert_eq!(post(&[]), Ok(()), "curl sends neither header");
        assert_eq!(post(&[("origin", "http://127.0.0.1:9900")]), Ok(()));
        assert_eq!(post(&[("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(
            post(&[("origin", "http://evil.example")]),
            Err(Refusal::CrossOrigin)
        );
        assert_eq!(post(&[("origin", "null")]), Err(Refusal::CrossOrigin));
        assert_eq!(
            post(&[("sec-fetch-site", "cross-site")]),
            Err(Refusal::CrossOrigin)
        );
        let get = headers(&[host, ("origin", "http://evil.example")]);
        assert_eq!(
            check(&c, Access::Token, &Method::GET, &get),
            Ok(()),
            "reads are not changes"
        );
    }

    #[test]
    fn a_token_is_required_when_set() {
        let c = cfg(Some("s3cret"), &[]);
        let with = |auth: &str| {
            check(
                &c,
                Access::Token,
                &Method::GET,
                &headers(&[("host", "127.0.0.1"), ("authorization", auth)]),
            )
        };
        assert_eq!(with("Bearer s3cret"), Ok(()));
        assert_eq!(with("Bearer s3cre"), Err(Refusal::TokenRefused));
        assert_eq!(with("Basic s3cret"), Err(Refusal::TokenMissing));
    }

    #[test]
    fn only_the_dashboard_page_is_served_without_the_token() {
        let c = cfg(Some("s3cret"), &[]);
        let local = headers(&[("host", "127.0.0.1:9900")]);
        let page = access(&Method::GET, "/");
        assert_eq!(page, Access::Public);
        assert_eq!(check(&c, page, &Method::GET, &local), Ok(()));
        for (method, path) in [
            (Method::GET, "/status"),
            (Method::GET, "/metrics"),
            (Method::POST, "/"),
            (Method::POST, "/reload"),
            (Method::POST, "/backends/b/servers/s/maint"),
        ] {
            let a = access(&method, path);
            assert_eq!(a, Access::Token, "{method} {path}");
            assert_eq!(check(&c, a, &method, &local), Err(Refusal::TokenMissing));
        }
        let rebound = headers(&[("host", "evil.example")]);
        assert_eq!(
            check(&c, page, &Method::GET, &rebound),
            Err(Refusal::ForeignHost),
            "the page still answers only to its own host names"
        );
    }
}
