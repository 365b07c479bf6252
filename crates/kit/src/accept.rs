//! The accept loop every listener in the process runs (proxy listeners, the admin API,
//! the bundled nodes).
//!
//! A failed `accept` is almost always passing (a connection reset while still in the
//! backlog) or a shortage that other connections closing will end (out of descriptors).
//! Neither may end the loop, and retrying at once would spin on the shortage, so the
//! loop logs, pauses briefly and goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::gate::{Gate, Pass};
use crate::throttle::Throttle;

/// Counter: times an accept loop waited at a connection cap (`listener`).
pub const CAP_WAITS: &str = "tether_connection_cap_waits_total";

/// How long to wait after a failed accept before the next.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `stop` is cancelled, handing each connection (with
/// `TCP_NODELAY` set: every peer here speaks request/response or WebSocket frames) to
/// `on_conn`, with a place in each of `gates`: while one is full, nothing is accepted
/// (clients wait in the listen backlog). `name` says whose listener it is in the log.
pub async fn accept_loop<F>(
    listener: &TcpListener,
    stop: &CancellationToken,
    name: &'static str,
    gates: &[Arc<Gate>],
    mut on_conn: F,
) where
    F: FnMut(TcpStream, SocketAddr, Vec<Pass>),
{
    loop {
        let mut passes = Vec::with_capacity(gates.len());
        for gate in gates {
            let pass = match gate.try_enter() {
                Some(pass) => pass,
                None => {
                    static LOG: Throttle = Throttle::new(Duration::from_secs(1));
                    if let Some(suppressed) = LOG.allow() {
                        tracing::warn!(
                            listener = name,
                            open = gate.open(),
                            max = gate.max(),
                            suppressed,
                            "at the connection cap: not accepting until a connection closes"
                        );
                    }
                    metrics::counter!(CAP_WAITS, "listener" => name).increment(1);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        pass = gate.enter() => pass,
                    }
                }
            };
            passes.push(pass);
        }
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                on_conn(stream, peer, passes);
            }
            Err(e) => {
                // Out of descriptors, this fails as fast as connections arrive.
                static LOG: Throttle = Throttle::new(Duration::from_secs(1));
                if let Some(suppressed) = LOG.allow() {
                    tracing::warn!(listener = name, error = %e, suppressed, "accept failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_over_each_connection_and_stops_when_told() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                accept_loop(&listener, &stop, "test", &[], |s, peer, _| {
                    let _ = tx.send((s.nodelay().unwrap(), peer));
                })
                .await
            }
        });
        let client = TcpStream::connect(addr).await.unwrap();
        let (nodelay, peer) = rx.recv().await.unwrap();
        assert!(nodelay);
        assert_eq!(peer, client.local_addr().unwrap());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop ends once stopped")
            .unwrap();
    }
}
