//! An IP address as text without `core::fmt`, for the paths that write one per request
//! (forwarding headers, access log lines).

use std::net::IpAddr;

/// An address as text, written without `core::fmt`, whose padding machinery cost more
/// than the rest of the proxy's header rewriting (it runs on every request, and once more
/// per access log line).
pub struct IpText {
    /// The longest IPv6 text is 45 bytes (`ffff:...:255.255.255.255`).
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut w = &mut t.buf[..];
                let room = w.len();
                // 48 bytes always hold it; on the impossible overflow the text is cut.
                let _ = write!(w, "{v6}");
                t.len = room - w.len();
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "::",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_address_text_matches_display(ip: IpAddr) {
            let text = IpText::new(ip);
            proptest::prop_assert_eq!(text.as_str(), ip.to_string());
        }
    }
}
