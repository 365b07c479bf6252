//! Keep-alive connections to one server, for ordinary (polling) requests.
//!
//! One pool per server, held by the server's handle in the routing snapshot, so a
//! request finds its server's idle connections without hashing anything (a general client
//! keys its pool by authority and builds an absolute URI per request only to take it apart
//! again); a reload starts new pools and the old ones close as the last requests of the
//! old snapshot finish.
//!
//! A connection goes back to the pool as soon as the response head is in; it is only
//! taken again once hyper says it is ready, i.e. once that response's body is over, so
//! no request ever waits behind another response's body.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Response;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tether_kit::lock;

use super::{dial, handshake, Dialed, Peer, UpstreamError, UpstreamRequest};
use crate::body::ProxyBody;

/// How long an idle connection is kept: less than the 5 s Node's HTTP server
/// (`keepAliveTimeout`) keeps one, so tether never sends a request on a connection the
/// server is closing at that moment (a POST lost that way cannot be retried: the client
/// got a 502 "connection closed before message completed").
pub const IDLE: Duration = Duration::from_secs(4);
/// Connections kept per server (busy ones finishing their body included).
pub const MAX_KEPT: usize = 256;
/// TCP (and TLS) connect limit of pooled connections; upgrades use the backend's
/// `timeouts.connect`.
pub const CONNECT: Duration = Duration::from_secs(2);

struct Kept {
    send: SendRequest<ProxyBody>,
    since: Instant,
    /// The client connection it was opened for, when its PROXY header names one: such a
    /// connection carries that client's requests only.
    owner: Option<SocketAddr>,
}

/// The keep-alive connections to one server.
#[derive(Default)]
pub struct ConnPool {
    kept: Mutex<Vec<Kept>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("kept", &self.len())
            .finish()
    }
}

impl ConnPool {
    /// Connections kept now (idle or finishing a response body).
    pub fn len(&self) -> usize {
        lock(&self.kept).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recently used ready connection of `owner`. Closed and expired ones met
    /// on the way are dropped; busy ones (finishing a response body) stay.
    fn take(&self, owner: Option<SocketAddr>) -> Option<SendRequest<ProxyBody>> {
        let now = Instant::now();
        let mut kept = lock(&self.kept);
        while let Some(i) = kept
            .iter()
            .rposition(|k| k.owner == owner && (k.send.is_ready() || k.send.is_closed()))
        {
            let k = kept.remove(i);
            if !k.send.is_closed() && now.duration_since(k.since) < IDLE {
                return Some(k.send);
            }
        }
        None
    }

    fn put(&self, send: SendRequest<ProxyBody>, owner: Option<SocketAddr>) {
        if send.is_closed() {
            return;
        }
        let mut kept = lock(&self.kept);
        if kept.len() < MAX_KEPT {
            kept.push(Kept {
                send,
                since: Instant::now(),
                owner,
            });
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `peer`: on a kept connection, or
    /// a new one. A request that a kept connection closed under could not have been
    /// written, so it goes again on a new connection.
    pub async fn send(
        &self,
        peer: Peer<'_>,
        mut req: UpstreamRequest,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let owner = peer
            .proxy
            .and_then(|p| p.endpoints)
            .map(|(client, _)| client);
        if let Some(mut send) = self.take(owner) {
            match send.try_send_request(*req).await {
                Ok(resp) => {
                    peer.meters.reused.increment(1);
                    self.put(send, owner);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: it goes again on a new connection.
                    Some(unsent) => *req = unsent,
                    None => {
                        peer.meters.reused.increment(1);
                        return Err(UpstreamError::exchange(peer.id, e.into_error()));
                    }
                },
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) is kilobytes of future, which every
        // request's future would otherwise carry and copy.
        peer.meters.new.increment(1);
        let mut send = Box::pin(connect(peer)).await?;
        match send.send_request(*req).await {
            Ok(resp) => {
                self.put(send, owner);
                Ok(resp)
            }
            Err(e) => Err(UpstreamError::exchange(peer.id, e)),
        }
    }
}

/// A new keep-alive connection to `peer`, its connection task spawned.
async fn connect(peer: Peer<'_>) -> Result<SendRequest<ProxyBody>, UpstreamError> {
    match dial(peer, CONNECT).await? {
        Dialed::Plain(s) => handshake(peer, s).await,
        Dialed::Tls(s) => handshake(peer, s).await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use http::Request;

    use http::uri::Authority;

    use super::*;

    /// A server's address and its pool, as a backend's server handle holds them.
    struct Server {
        addr: Authority,
        pool: ConnPool,
        meters: crate::upstream::Meters,
    }

    impl Server {
        fn peer(&self) -> Peer<'_> {
            Peer {
                id: "s",
                addr: &self.addr,
                tls: None,
                proxy: None,
                meters: &self.meters,
            }
        }
    }

    /// A server answering `per_conn` requests on each connection, then closing it.
    async fn server(per_conn: usize) -> (Server, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_conn {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                    // Closes after `per_conn` answers, as a keep-alive timeout would.
                });
            }
        });
        let server = Server {
            addr: addr.to_string().parse().unwrap(),
            pool: ConnPool::default(),
            meters: Default::default(),
        };
        (server, accepted)
    }

    async fn get(server: &Server) -> Result<(), UpstreamError> {
        let req = Request::builder()
            .uri("/x")
            .header("host", "t")
            .body(ProxyBody::empty())
            .unwrap();
        let resp = server.pool.send(server.peer(), Box::new(req)).await?;
        use http_body_util::BodyExt;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"ok");
        Ok(())
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (server, accepted) = server(usize::MAX).await;
        for _ in 0..20 {
            get(&server).await.expect("answered");
            // The connection turns ready once hyper has seen the body end.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(server.pool.len(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_not_an_error() {
        let (server, accepted) = server(1).await;
        for i in 1..=5 {
            get(&server).await.expect("answered on a new connection");
            assert_eq!(accepted.load(Ordering::SeqCst), i);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_connections() {
        let (server, accepted) = server(usize::MAX).await;
        let server = Arc::new(server);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = Arc::clone(&server);
            tasks.push(tokio::spawn(async move { get(&s).await }));
        }
        for t in tasks {
            t.await.unwrap().expect("answered");
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=8).contains(&opened), "{opened}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Then all of them serve again without new connections.
        for _ in 0..8 {
            get(&server).await.expect("answered");
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened);
    }
}
