//! Source addresses for the generator's connections: a range `127.0.0.2-127.0.0.250`,
//! a CIDR `127.1.0.0/16` or one address, all inside 127.0.0.0/8. Client `i` binds to
//! address `i mod len` of the range, so each address carries its own ~28k ephemeral
//! ports and the target sees many client IPs.

use std::net::Ipv4Addr;
use std::str::FromStr;

/// A contiguous range of IPv4 loopback source addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRange {
    first: u32,
    len: u32,
}

/// Whether `ip` is in 127.0.0.0/8.
pub fn is_loopback(ip: Ipv4Addr) -> bool {
    ip.octets()[0] == 127
}

impl SourceRange {
    /// The range `first..=last`.
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Result<SourceRange, String> {
        let (a, b) = (u32::from(first), u32::from(last));
        if a > b {
            return Err(format!("{first} comes after {last}"));
        }
        for ip in [first, last] {
            if !is_loopback(ip) {
                return Err(format!("{ip} is not a loopback address (127.0.0.0/8)"));
            }
        }
        Ok(SourceRange {
            first: a,
            len: b - a + 1,
        })
    }

    /// How many addresses.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Never: a range has at least one address.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of client `i` (round-robin over the range).
    pub fn nth(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.first + (i % u64::from(self.len)) as u32)
    }
}

impl FromStr for SourceRange {
    type Err = String;

    fn from_str(s: &str) -> Result<SourceRange, String> {
        let s = s.trim();
        let ip = |t: &str| {
            Ipv4Addr::from_str(t.trim()).map_err(|_| format!("{t:?} is not an IPv4 address"))
        };
        if let Some((a, b)) = s.split_once('-') {
            return SourceRange::new(ip(a)?, ip(b)?);
        }
        if s.contains('/') {
            let net = ipnet::Ipv4Net::from_str(s)
                .map_err(|_| format!("{s:?} is not a CIDR like 127.1.0.0/16"))?;
            let (first, last) = if net.prefix_len() >= 31 {
                (net.network(), net.broadcast())
            } else {
                // The network and broadcast addresses are left out, as hosts() does.
                (
                    Ipv4Addr::from(u32::from(net.network()) + 1),
                    Ipv4Addr::from(u32::from(net.broadcast()) - 1),
                )
            };
            return SourceRange::new(first, last);
        }
        let one = ip(s)?;
        SourceRange::new(one, one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r: SourceRange = "127.0.0.2-127.0.0.250".parse().unwrap();
        assert_eq!(r.len(), 249);
        assert_eq!(r.nth(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(r.nth(248), Ipv4Addr::new(127, 0, 0, 250));
        assert_eq!(r.nth(249), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(r.nth(250), Ipv4Addr::new(127, 0, 0, 3));
        let r: SourceRange = " 127.0.0.9 - 127.0.0.9 ".parse().unwrap();
        assert_eq!(r.len(), 1);
        assert!(!r.is_empty());
    }

    #[test]
    fn cidrs() {
        let r: SourceRange = "127.1.0.0/16".parse().unwrap();
        assert_eq!(r.len(), 65534);
        assert_eq!(r.nth(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(r.nth(65533), Ipv4Addr::new(127, 1, 255, 254));
        let r: SourceRange = "127.0.0.4/31".parse().unwrap();
        assert_eq!((r.len(), r.nth(1)), (2, Ipv4Addr::new(127, 0, 0, 5)));
        let r: SourceRange = "127.0.0.7/32".parse().unwrap();
        assert_eq!((r.len(), r.nth(5)), (1, Ipv4Addr::new(127, 0, 0, 7)));
        // Host bits set are fine (ipnet keeps the address, network() masks it).
        assert_eq!(
            "127.2.3.4/24".parse::<SourceRange>().unwrap().nth(0),
            Ipv4Addr::new(127, 2, 3, 1)
        );
    }

    #[test]
    fn single_and_errors() {
        let r: SourceRange = "127.0.0.5".parse().unwrap();
        assert_eq!((r.len(), r.nth(7)), (1, Ipv4Addr::new(127, 0, 0, 5)));
        for bad in [
            "",
            "127.0.0.9-127.0.0.2",
            "10.0.0.1-10.0.0.5",
            "127.0.0.1-128.0.0.1",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "127.0.0.0/33",
            "localhost",
            "::1",
            "127.0.0.1-",
        ] {
            assert!(bad.parse::<SourceRange>().is_err(), "{bad:?} accepted");
        }
    }
}
