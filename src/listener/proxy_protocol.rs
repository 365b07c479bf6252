//! The PROXY protocol (v1 text, v2 binary) on a listener behind an L4 balancer: the
//! balancer opens each connection with a header naming the client, which tether then
//! treats as the client (per-client limits, forwarding headers, hash keys).
//!
//! Only a peer in `trusted_proxies` may send one: from anyone else the header would let
//! a client claim any address. On a listener that expects it, a connection without a
//! valid header is closed. The header is read exactly, never a byte beyond it, so the
//! connection that follows is untouched (and stays a plain TCP stream for the relay).
//! Parsing is `ppp`'s.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ProxyProtocol;

/// The v2 signature (12 bytes).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the spec's 107).
const V1_MAX: usize = 107;
/// Longest v2 address block and TLVs accepted: addresses take at most 216 bytes; TLVs
/// beyond a few hundred bytes are not something a balancer sends tether.
const V2_MAX_PAYLOAD: usize = 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("PROXY header from a peer that is not a trusted proxy")]
    Untrusted,
    #[error("no PROXY header within the time allowed")]
    Timeout,
    #[error("the connection ended inside the PROXY header ({0})")]
    Io(std::io::Error),
    #[error("not a PROXY {0} header")]
    Malformed(&'static str),
}

// By hand rather than `#[from]`, which would also make the cause the error's `source()`
// while the message already carries it: printed as a chain, it would read twice.
impl From<std::io::Error> for HeaderError {
    fn from(e: std::io::Error) -> HeaderError {
        HeaderError::Io(e)
    }
}

/// Reads the PROXY header `expected` on `stream` and returns the client it names (`None`
/// for a LOCAL / UNKNOWN header: the connection is the balancer's own, e.g. a health
/// check).
pub async fn read_header(
    stream: &mut TcpStream,
    expected: ProxyProtocol,
    limit: Duration,
) -> Result<Option<SocketAddr>, HeaderError> {
    tokio::time::timeout(limit, read(stream, expected))
        .await
        .map_err(|_| HeaderError::Timeout)?
}

async fn read(
    stream: &mut TcpStream,
    expected: ProxyProtocol,
) -> Result<Option<SocketAddr>, HeaderError> {
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf).await?;
    if buf == V2_SIGNATURE {
        if expected == ProxyProtocol::V1 {
            return Err(HeaderError::Malformed("v1"));
        }
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        buf.extend_from_slice(&fixed);
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if len > V2_MAX_PAYLOAD {
            return Err(HeaderError::Malformed("v2"));
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        stream.read_exact(&mut buf[start..]).await?;
        return parse_v2(&buf);
    }
    if expected == ProxyProtocol::V2 || !buf.starts_with(b"PROXY ") {
        return Err(HeaderError::Malformed(if expected == ProxyProtocol::V2 {
            "v2"
        } else {
            "v1"
        }));
    }
    // v1 ends at CRLF: read a byte at a time so nothing past it is taken.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(HeaderError::Malformed("v1"));
        }
        buf.push(stream.read_u8().await?);
    }
    parse_v1(&buf)
}

/// The source a complete v1 header names.
pub fn parse_v1(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    use ppp::v1::{Addresses, Header};
    let parsed = Header::try_from(header).map_err(|_| HeaderError::Malformed("v1"))?;
    Ok(match parsed.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unknown => None,
    })
}

/// The source a complete v2 header names.
pub fn parse_v2(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    use ppp::v2::{Addresses, Command, Header};
    let parsed = Header::try_from(header).map_err(|_| HeaderError::Malformed("v2"))?;
    if parsed.command == Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unix(_) | Addresses::Unspecified => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Sends `bytes` to a fresh connection and reads a header on the other end; returns
    /// what it said and the bytes left on the connection after it.
    async fn exchange(
        bytes: &[u8],
        expected: ProxyProtocol,
    ) -> (Result<Option<SocketAddr>, HeaderError>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let got = read_header(&mut server, expected, Duration::from_secs(5)).await;
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        (got, rest)
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_rest_untouched() {
        let (got, rest) = exchange(
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n\r\n",
            ProxyProtocol::Any,
        )
        .await;
        assert_eq!(got.unwrap(), Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");
        let (got, _) = exchange(b"PROXY UNKNOWN\r\n", ProxyProtocol::V1).await;
        assert_eq!(got.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_names_the_client_and_local_names_nobody() {
        let mut addresses = vec![203, 0, 113, 7, 10, 0, 0, 1];
        addresses.extend_from_slice(&51234u16.to_be_bytes());
        addresses.extend_from_slice(&443u16.to_be_bytes());
        let mut bytes = v2(1, 0x11, &addresses);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (got, rest) = exchange(&bytes, ProxyProtocol::V2).await;
        assert_eq!(got.unwrap(), Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(
            rest, b"\x16\x03\x01",
            "a TLS hello right behind it is left alone"
        );
        let (got, _) = exchange(&v2(0, 0, &[]), ProxyProtocol::Any).await;
        assert_eq!(got.unwrap(), None);
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for (bytes, expected) in [
            (
                &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                ProxyProtocol::Any,
            ),
            (
                &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..],
                ProxyProtocol::V2,
            ),
            (
                &b"PROXY TCP4 999.2.3.4 5.6.7.8 1 2\r\n"[..],
                ProxyProtocol::V1,
            ),
            (&b"PROXY TCP4 1.2.3.4"[..], ProxyProtocol::V1),
            (&[b'P'; 200][..], ProxyProtocol::V1),
        ] {
            let (got, _) = exchange(bytes, expected).await;
            assert!(
                got.is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bytes)
            );
        }
        let (got, _) = exchange(&v2(1, 0x11, &[0; 4000]), ProxyProtocol::V2).await;
        assert!(got.is_err(), "an oversized v2 block");
    }
}
