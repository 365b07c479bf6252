//! The tether cookie: names the server of a client's session, signed so a client
//! cannot pick a server by writing the cookie itself.
//!
//! Value: `<server id>.<tag>`, tag = first 16 bytes of HMAC-SHA256(secret,
//! backend NUL server id), hex. The backend is in the MAC so a cookie minted for one
//! backend is worthless on another. Stable across restarts as long as the secret is,
//! which is what lets polling clients stay put across a tether restart.

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
}

impl CookieSigner {
    pub fn new(cfg: &CookieConfig, backend: &str) -> Self {
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
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn mac(&self, server_id: &str) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(self.backend.as_bytes());
        mac.update(&[0]);
        mac.update(server_id.as_bytes());
        mac
    }

    /// The cookie value naming `server_id`.
    pub fn sign(&self, server_id: &str) -> String {
        let tag = self.mac(server_id).finalize().into_bytes();
        let mut out = String::with_capacity(server_id.len() + 1 + TAG_BYTES * 2);
        out.push_str(server_id);
        out.push('.');
        for b in &tag[..TAG_BYTES] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The server id a value names, if its tag is genuine (constant-time compare).
    pub fn verify<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (id, tag_hex) = value.rsplit_once('.')?;
        if tag_hex.len() != TAG_BYTES * 2 {
            return None;
        }
        let mut tag = [0u8; TAG_BYTES];
        for (i, byte) in tag.iter_mut().enumerate() {
            *byte = u8::from_str_radix(tag_hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        self.mac(id).verify_truncated_left(&tag).ok()?;
        Some(id)
    }

    /// A whole `Set-Cookie` header value for `server_id`.
    pub fn set_cookie(&self, server_id: &str) -> String {
        format!("{}={}{}", self.name, self.sign(server_id), self.attributes)
    }

    /// The server id named by a genuine tether cookie in the request.
    pub fn read<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
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
        CookieSigner::new(&cfg, backend)
    }

    #[test]
    fn signed_value_round_trips() {
        let s = signer("sockets");
        assert_eq!(s.verify(&s.sign("node-2")), Some("node-2"));
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
        assert_eq!(s.verify(""), None);
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
        assert_eq!(s.read(&h), Some("n3"));
        assert!(s
            .set_cookie("n3")
            .ends_with("; Path=/; HttpOnly; SameSite=None; Secure"));
    }
}
