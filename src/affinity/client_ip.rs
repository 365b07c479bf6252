//! Who the client is, when proxies stand in front of tether.
//!
//! `X-Forwarded-For` is believed only when the peer that sent it is a configured
//! trusted proxy; otherwise any client could choose its own hash key (and its own
//! server) by writing the header.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, what a dual-stack listener reports) as IPv4, so
/// one client has one identity.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client address: the peer, or — when the peer is trusted — the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>();
    for hop in hops.iter().rev().flat_map(|v| v.rsplit(',')) {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(client, trusted) {
                    break;
                }
            }
            Err(_) => break, // garbage: stop believing the chain here
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_cannot_choose_its_address() {
        let ip = resolve("1.2.3.4".parse().unwrap(), &headers(&["9.9.9.9"]), &[]);
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_chain_yields_rightmost_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&["6.6.6.6, 5.5.5.5", "10.1.1.1"]);
        let ip = resolve("10.0.0.2".parse().unwrap(), &h, &trusted);
        assert_eq!(ip, "5.5.5.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_in_the_chain_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&["5.5.5.5, not-an-ip, 10.9.9.9"]);
        let ip = resolve("10.0.0.2".parse().unwrap(), &h, &trusted);
        assert_eq!(ip, "10.9.9.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let ip = resolve("::ffff:127.0.0.9".parse().unwrap(), &HeaderMap::new(), &[]);
        assert_eq!(ip, "127.0.0.9".parse::<IpAddr>().unwrap());
    }
}
