//! The PROXY protocol header tether opens a server connection with, for servers that
//! sit behind it but want the client's address at the TCP level (HAProxy's
//! `send-proxy`, nginx's `proxy_protocol on`).
//!
//! A connection that names a client carries only that client's requests: the pool keeps
//! such connections per client connection (see [`super::pool`]), as HAProxy keeps them
//! private. Health probes and any connection without a client send LOCAL (v2) or UNKNOWN
//! (v1), which a receiver treats as the balancer's own connection.

use std::net::{IpAddr, SocketAddr};

use crate::config::SendProxy;

/// What a server connection's PROXY header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLine {
    pub version: SendProxy,
    /// The client and the address it connected to; `None`: tether's own connection.
    pub endpoints: Option<(SocketAddr, SocketAddr)>,
}

impl ProxyLine {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let endpoints = self.endpoints.map(same_family);
        match self.version {
            SendProxy::V1 => {
                let addresses = endpoints.map_or(ppp::v1::Addresses::Unknown, Into::into);
                addresses.to_string().into_bytes()
            }
            SendProxy::V2 => {
                use ppp::v2::{Builder, Command, Protocol, Version};
                let (command, addresses) = match endpoints {
                    Some(e) => (Command::Proxy, ppp::v2::Addresses::from(e)),
                    None => (Command::Local, ppp::v2::Addresses::Unspecified),
                };
                let protocol = if endpoints.is_some() {
                    Protocol::Stream
                } else {
                    Protocol::Unspecified
                };
                Builder::with_addresses(Version::Two | command, protocol, addresses)
                    .build()
                    // Writing into a Vec of addresses of fixed size cannot fail.
                    .unwrap_or_default()
            }
        }
    }
}

/// Both addresses in one family, as the header requires: an IPv4 one beside an IPv6 one
/// is written IPv4-mapped.
fn same_family((src, dst): (SocketAddr, SocketAddr)) -> (SocketAddr, SocketAddr) {
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(src), v6(dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(version: SendProxy, endpoints: Option<(&str, &str)>) -> ProxyLine {
        ProxyLine {
            version,
            endpoints: endpoints.map(|(s, d)| (s.parse().unwrap(), d.parse().unwrap())),
        }
    }

    #[test]
    fn v1_names_the_client_or_says_unknown() {
        let l = line(SendProxy::V1, Some(("203.0.113.7:51234", "10.0.0.1:443")));
        assert_eq!(l.encode(), b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n");
        assert_eq!(line(SendProxy::V1, None).encode(), b"PROXY UNKNOWN\r\n");
        let mixed = line(SendProxy::V1, Some(("203.0.113.7:1", "[::1]:443")));
        assert_eq!(
            mixed.encode(),
            b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 443\r\n"
        );
    }

    #[test]
    fn v2_headers_read_back_as_sent() {
        use ppp::v2::{Addresses, Command, Header};
        let sent = line(SendProxy::V2, Some(("[2001:db8::7]:51234", "[::1]:443"))).encode();
        let h = Header::try_from(&sent[..]).expect("a valid v2 header");
        assert_eq!(h.command, Command::Proxy);
        let Addresses::IPv6(a) = h.addresses else {
            panic!("{:?}", h.addresses)
        };
        assert_eq!(
            a.source_address,
            "2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(a.source_port, 51234);
        let local = line(SendProxy::V2, None).encode();
        let h = Header::try_from(&local[..]).expect("a valid v2 header");
        assert_eq!(h.command, Command::Local);
        assert_eq!(local.len(), 16, "LOCAL carries no addresses");
    }
}
