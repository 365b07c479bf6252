//! The tether cookie: names the server of a client's session, signed so a client
//! cannot pick a server by writing the cookie itself, and dated so a copied cookie
//! cannot steer sessions for ever.
//!
//! Value: `<server id>.<issued>.<tag>`: `issued` is the issue time in seconds since the
//! Unix epoch, in hex; tag = first 16 bytes of HMAC-SHA256(secret, backend NUL server id
//! NUL issued), hex. The backend is in the MAC so a cookie minted for one backend is
//! worthless on another. A cookie is honoured for `validity` after it was issued (the
//! configured `max_age`, else the session's liveness window) and refreshed on a pinned
//! session's requests once half of that has passed. Stable across restarts as long as
//! the secret is, which is what lets polling clients stay put across a tether restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::config::CookieConfig;

const TAG_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone)]
pub struct CookieSigner {
    name: String,
    key: HmacSha256,
    backend: String,
    attributes: String,
    /// How long after issue a cookie is honoured.
    validity: Duration,
}

/// A genuine cookie read from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cookie<'a> {
    pub server: &'a str,
    /// Issued long enough ago that a fresh one should replace it.
    pub stale: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CookieSigner {
    /// `liveness`: how long a silent session lives, the validity when `max_age` is unset.
    pub fn new(cfg: &CookieConfig, backend: &str, liveness: Duration) -> Self {
        let key = HmacSha256::new_from_slice(&cfg.secret).expect("HMAC accepts any key length");
        let mut attributes = format!("; Path=/; HttpOnly; SameSite={}", cfg.same_site.as_str());
        if cfg.secure {
            attributes.push_str("; Secure");
        }
        if let Some(age) = cfg.max_age {
            attributes.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        CookieSigner {
            name: cfg.name.clone(),
            key,
            backend: backend.to_owned(),
            attributes,
            validity: cfg.max_age.unwrap_or(liveness).max(Duration::from_secs(1)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn mac(&self, server_id: &str, issued: &str) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(self.backend.as_bytes());
        mac.update(&[0]);
        mac.update(server_id.as_bytes());
        mac.update(&[0]);
        mac.update(issued.as_bytes());
        mac
    }

    /// The cookie value naming `server_id`, issued now.
    pub fn sign(&self, server_id: &str) -> String {
        self.sign_at(server_id, now_secs())
    }

    fn sign_at(&self, server_id: &str, issued: u64) -> String {
        let issued = format!("{issued:x}");
        let tag = self.mac(server_id, &issued).finalize().into_bytes();
        let mut out = String::with_capacity(server_id.len() + issued.len() + 2 + TAG_BYTES * 2);
        out.push_str(server_id);
        out.push('.');
        out.push_str(&issued);
        out.push('.');
        for b in &tag[..TAG_BYTES] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// What a value says, if its tag is genuine (constant-time compare) and it is still
    /// valid.
    pub fn verify<'a>(&self, value: &'a str) -> Option<Cookie<'a>> {
        self.verify_at(value, now_secs())
    }

    fn verify_at<'a>(&self, value: &'a str, now: u64) -> Option<Cookie<'a>> {
        let (rest, tag_hex) = value.rsplit_once('.')?;
        let (id, issued_hex) = rest.rsplit_once('.')?;
        if tag_hex.len() != TAG_BYTES * 2 || issued_hex.is_empty() || issued_hex.len() > 16 {
            return None;
        }
        let mut tag = [0u8; TAG_BYTES];
        for (i, byte) in tag.iter_mut().enumerate() {
            *byte = u8::from_str_radix(tag_hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        self.mac(id, issued_hex).verify_truncated_left(&tag).ok()?;
        let issued = u64::from_str_radix(issued_hex, 16).ok()?;
        // A little slack for clocks of other instances running ahead.
        let age = now
            .checked_sub(issued)
            .or_else(|| (issued - now <= 60).then_some(0))?;
        let validity = self.validity.as_secs();
        (age <= validity).then_some(Cookie {
            server: id,
            stale: age * 2 >= validity,
        })
    }

    /// A whole `Set-Cookie` header value for `server_id`.
    pub fn set_cookie(&self, server_id: &str) -> String {
        format!("{}={}{}", self.name, self.sign(server_id), self.attributes)
    }

    /// The genuine, still valid tether cookie in the request.
    pub fn read<'a>(&self, headers: &'a HeaderMap) -> Option<Cookie<'a>> {
        cookie_value(headers, &self.name).and_then(|v| self.verify(v))
    }
}

/// The value of cookie `name` across all `Cookie` headers (first occurrence wins).
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SameSite;

    fn signer(backend: &str) -> CookieSigner {
        let cfg = CookieConfig {
            name: "tether".into(),
            secret: b"0123456789abcdef-secret".to_vec(),
            secure: true,
            same_site: SameSite::None,
            max_age: None,
        };
        CookieSigner::new(&cfg, backend, Duration::from_secs(100))
    }

    #[test]
    fn signed_value_round_trips() {
        let s = signer("sockets");
        assert_eq!(
            s.verify(&s.sign("node-2")).map(|c| c.server),
            Some("node-2")
        );
        assert_eq!(
            s.verify(&s.sign("node.2")).map(|c| c.server),
            Some("node.2"),
            "dots in an id"
        );
    }

    #[test]
    fn a_cookie_is_honoured_for_its_validity_and_refreshed_past_half_of_it() {
        let s = signer("sockets");
        let v = s.sign_at("node-2", 1_000);
        let at = |now| s.verify_at(&v, now);
        assert_eq!(
            at(1_000),
            Some(Cookie {
                server: "node-2",
                stale: false
            })
        );
        assert_eq!(at(1_049).map(|c| c.stale), Some(false));
        assert_eq!(at(1_050).map(|c| c.stale), Some(true), "half-way: refresh");
        assert_eq!(at(1_100).map(|c| c.server), Some("node-2"));
        assert_eq!(at(1_101), None, "replayed past its validity");
        assert!(at(990).is_some(), "a clock a little behind the issuer's");
        assert_eq!(at(900), None, "issued in the future");
        let forged_time = v.replacen(".3e8.", ".3e9.", 1);
        assert_ne!(forged_time, v);
        assert_eq!(s.verify_at(&forged_time, 1_000), None, "the time is signed");
    }

    #[test]
    fn forged_or_tampered_values_are_refused() {
        let s = signer("sockets");
        let good = s.sign("node-2");
        let forged = good.replacen("node-2", "node-1", 1);
        assert_eq!(s.verify(&forged), None);
        assert_eq!(s.verify("node-1"), None);
        assert_eq!(s.verify("node-1.zz"), None);
        assert_eq!(s.verify("node-1.ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ"), None);
        assert_eq!(s.verify("node-1.1.ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ"), None);
        assert_eq!(s.verify(""), None);
        assert_eq!(s.verify(".."), None);
    }

    #[test]
    fn a_cookie_for_one_backend_is_worthless_on_another() {
        let value = signer("a").sign("node-1");
        assert_eq!(signer("b").verify(&value), None);
    }

    #[test]
    fn cookie_is_found_among_others_in_several_headers() {
        let s = signer("sockets");
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; b=2".parse().unwrap());
        h.append(
            "cookie",
            format!("x=y; tether={}", s.sign("n3")).parse().unwrap(),
        );
        assert_eq!(s.read(&h).map(|c| c.server), Some("n3"));
        assert!(s
            .set_cookie("n3")
            .ends_with("; Path=/; HttpOnly; SameSite=None; Secure"));
    }
}
