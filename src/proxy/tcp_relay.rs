//! The relay between two plain TCP sockets, polled by hand.
//!
//! An idle proxied WebSocket should cost next to nothing, so this relay holds no buffer
//! while idle (reads go through a per-thread scratch buffer and are written on at once)
//! and is one small state machine rather than a tree of async blocks (a `readable()` /
//! `writable()` future per direction plus a watchdog would each keep their state in
//! every idle tunnel's task).

use std::future::Future;
use std::io::Read as _;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::tunnel::{ByteTally, Learn, TunnelEnd};

/// Size of the per-thread scratch buffer.
const SCRATCH: usize = 16 * 1024;

/// Reads one direction makes in a poll before yielding, so a busy tunnel cannot starve
/// the other tasks of its thread.
const READS_PER_POLL: usize = 16;

thread_local! {
    /// Shared by every tunnel on this thread: a read is written on at once, so the bytes
    /// never have to outlive the call, and an idle tunnel holds no buffer at all.
    static SCRATCH_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SCRATCH]);
}

/// What a tunnel needs between polls.
struct Relay {
    client: TcpStream,
    server: TcpStream,
    /// Bytes read but not yet written, client → server (the peer's socket was full).
    up: Option<Bytes>,
    /// The same, server → client.
    down: Option<Bytes>,
    start: Instant,
    /// Milliseconds after `start` of the last traffic either way.
    last_ms: u64,
    /// How long the tunnel may stay silent.
    limit_ms: u64,
    /// What the server's first frame (an open packet) is read for.
    learn: Option<Learn>,
    /// Bytes read, client → server and server → client.
    tally: [ByteTally; 2],
    /// The client's last chunk began with a WebSocket close frame: it started the closing
    /// handshake, after which the server closes the TCP connection first (RFC 6455
    /// §7.1.1), so the end is the client's doing whoever's FIN came first.
    client_closing: bool,
}

/// Relays between `client` and `server` until one side ends, the tunnel stays silent
/// for `limit` (shortened to the session's heartbeat + margin when `learn` is given and
/// the server's first frame is an open packet), or `stop` completes. `*_rest`: bytes
/// hyper had already read past the upgrade on each side.
pub(super) fn relay_tcp<S: Future<Output = ()>>(
    (client, client_rest): (TcpStream, Bytes),
    (server, server_rest): (TcpStream, Bytes),
    (limit, learn): (Duration, Option<Learn>),
    tally: [ByteTally; 2],
    stop: S,
) -> TcpRelay<S> {
    let mut relay = Relay {
        client,
        server,
        up: None,
        down: None,
        start: Instant::now(),
        last_ms: 0,
        limit_ms: limit.as_millis() as u64,
        learn,
        tally,
        client_closing: false,
    };
    // Even empty, a rest is a view of hyper's whole read buffer (8 KiB): keep it only if
    // it holds bytes, or every idle tunnel keeps two of them alive.
    if !client_rest.is_empty() {
        relay.tally[0].add(&client_rest);
        relay.up = Some(client_rest);
    }
    if !server_rest.is_empty() {
        relay.tally[1].add(&server_rest);
        relay.learn_from(&server_rest);
        relay.down = Some(server_rest);
    }
    TcpRelay {
        watchdog: tokio::time::sleep_until(relay.deadline()),
        relay,
        stop,
    }
}

pin_project_lite::pin_project! {
    /// The tunnel's future. A struct rather than an `async` block, which would hold its
    /// captured `stop` twice (as captured and as pinned).
    pub(super) struct TcpRelay<S> {
        relay: Relay,
        #[pin]
        stop: S,
        #[pin]
        watchdog: Sleep,
    }
}

impl<S: Future<Output = ()>> Future for TcpRelay<S> {
    type Output = TunnelEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelEnd> {
        let this = self.project();
        let relay = this.relay;
        let end = if this.stop.poll(cx).is_ready() {
            TunnelEnd::Stopped
        } else if let Poll::Ready(reader) = relay.poll_direction(cx, true) {
            if reader {
                TunnelEnd::ClientClosed
            } else {
                TunnelEnd::ServerClosed
            }
        } else if let Poll::Ready(reader) = relay.poll_direction(cx, false) {
            if reader && !relay.client_closing {
                TunnelEnd::ServerClosed
            } else {
                TunnelEnd::ClientClosed
            }
        } else {
            ready!(relay.poll_watchdog(cx, this.watchdog))
        };
        // A FIN to both sides now, the server first (see `relay_buffered`); dropping the
        // sockets closes them.
        for s in [&relay.server, &relay.client] {
            let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
        }
        Poll::Ready(end)
    }
}

impl Relay {
    fn deadline(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms + self.limit_ms)
    }

    /// Reads the server's first chunk for the open packet's heartbeat, once.
    fn learn_from(&mut self, chunk: &[u8]) {
        if let Some(learn) = self.learn.take() {
            self.apply_learnt(learn.first_frame(chunk));
        }
    }

    fn apply_learnt(&mut self, limit: Option<Duration>) {
        if let Some(limit) = limit {
            self.limit_ms = limit.as_millis() as u64;
        }
    }

    /// Traffic only moves the deadline later, so the timer sleeps to the old deadline
    /// and is re-armed only when it fires early: busy tunnels do not touch the timer
    /// wheel on every read. A limit shortened by the open packet is caught here too,
    /// since this runs after every read.
    fn poll_watchdog(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut Sleep>,
    ) -> Poll<TunnelEnd> {
        loop {
            let deadline = self.deadline();
            if deadline < sleep.deadline() {
                sleep.as_mut().reset(deadline);
            }
            ready!(sleep.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(TunnelEnd::Idle);
            }
            sleep.as_mut().reset(deadline);
        }
    }

    /// Moves what is readable in one direction (`up`: client → server). Ready when that
    /// direction has ended: `true` when its reading side ended (EOF or an error), `false`
    /// when writing to the other side failed (that side is the one that went away).
    fn poll_direction(&mut self, cx: &mut Context<'_>, up: bool) -> Poll<bool> {
        for _ in 0..READS_PER_POLL {
            let (from, to, pending) = if up {
                (&self.client, &self.server, &mut self.up)
            } else {
                (&self.server, &self.client, &mut self.down)
            };
            if let Some(rest) = pending {
                if ready!(to.poll_write_ready(cx)).is_err() {
                    return Poll::Ready(false);
                }
                match to.try_write(rest) {
                    Ok(0) => return Poll::Ready(false),
                    Ok(n) => {
                        rest.advance(n);
                        if rest.is_empty() {
                            *pending = None;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(false),
                }
                continue;
            }
            if ready!(from.poll_read_ready(cx)).is_err() {
                return Poll::Ready(true);
            }
            // Only the server's first chunk is read for the open packet.
            let mut learn = if up { None } else { self.learn.take() };
            let tally = &mut self.tally[usize::from(!up)];
            let read = SCRATCH_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                let n = match read_once(from, &mut buf[..]) {
                    Ok(0) => return Read::Eof,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Read::Nothing,
                    Err(_) => return Read::Eof,
                };
                let learnt = learn.take().and_then(|l| l.first_frame(&buf[..n]));
                tally.add(&buf[..n]);
                let rest = match to.try_write(&buf[..n]) {
                    Ok(w) if w == n => None,
                    Ok(w) => Some(Bytes::copy_from_slice(&buf[w..n])),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        Some(Bytes::copy_from_slice(&buf[..n]))
                    }
                    Err(_) => return Read::WriteFailed,
                };
                Read::Moved {
                    rest,
                    learnt,
                    close_frame: is_close_frame(&buf[..n]),
                }
            });
            // Nothing read: the first chunk is still to come.
            if learn.is_some() {
                self.learn = learn;
            }
            match read {
                Read::Nothing => {}
                Read::Eof => return Poll::Ready(true),
                Read::WriteFailed => return Poll::Ready(false),
                Read::Moved {
                    rest,
                    learnt,
                    close_frame,
                } => {
                    if up {
                        self.client_closing = close_frame;
                    }
                    self.apply_learnt(learnt);
                    self.last_ms = self.start.elapsed().as_millis() as u64;
                    *(if up { &mut self.up } else { &mut self.down }) = rest;
                }
            }
        }
        // Still busy: let the thread's other tasks run, then carry on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Reads once. A read that does not fill `buf` emptied the socket's receive queue, so
/// the socket's readiness is cleared with it: the usual extra read that only returns
/// `WouldBlock` is one system call of the two a small WebSocket message costs each way.
/// The readiness is cleared against the event seen *before* the read, so data arriving
/// meanwhile raises a new event and is not missed.
fn read_once(from: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    let r = from.try_io(Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(from)).read(buf)?;
        got = n;
        if n > 0 && n < buf.len() {
            Err(std::io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

/// What one read did.
enum Read {
    /// Not readable after all (the readiness is cleared; the next poll waits again).
    Nothing,
    Eof,
    /// The chunk read could not be written on: the other side is gone.
    WriteFailed,
    /// Bytes read and written on; `rest` is what the peer could not take yet, `learnt`
    /// the idle limit the chunk set (the server's open packet).
    Moved {
        rest: Option<Bytes>,
        learnt: Option<Duration>,
        close_frame: bool,
    },
}

/// Whether a chunk starts with a WebSocket close frame (FIN + opcode 8).
pub(super) fn is_close_frame(chunk: &[u8]) -> bool {
    chunk.first() == Some(&0x88)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::tunnel::IdleLimit;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected sockets: (ours, the peer's).
    async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (b, a)
    }

    fn tallies() -> [ByteTally; 2] {
        [
            ByteTally::new((metrics::Counter::noop(), metrics::Counter::noop()), None),
            ByteTally::new((metrics::Counter::noop(), metrics::Counter::noop()), None),
        ]
    }

    #[tokio::test]
    async fn an_idle_tunnel_is_a_small_future() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ((c, _cp), (s, _sp)) = (pair(&l).await, pair(&l).await);
        let f = relay_tcp(
            (c, Bytes::new()),
            (s, Bytes::new()),
            (Duration::from_secs(1), None),
            tallies(),
            async {},
        );
        let size = std::mem::size_of_val(&f);
        assert!(size <= 512, "the relay future is {size} bytes");
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_with_the_rests_first_and_eof_ends_it() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ((c, mut client), (s, mut server)) = (pair(&l).await, pair(&l).await);
        let relay = tokio::spawn(relay_tcp(
            (c, Bytes::from_static(b"early-up ")),
            (s, Bytes::from_static(b"early-down ")),
            (Duration::from_secs(10), None),
            tallies(),
            std::future::pending(),
        ));
        // More than the scratch buffer and the sockets hold, so writes back up.
        let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| i as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        let mut got = vec![0; b"early-up ".len() + big.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..9], b"early-up ");
        assert!(got[9..] == big[..], "up direction corrupted");
        let mut client = writer.await.unwrap();
        server.write_all(b"pong").await.unwrap();
        let mut down = [0u8; 15];
        client.read_exact(&mut down).await.unwrap();
        assert_eq!(&down, b"early-down pong");
        drop(server);
        let end = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, TunnelEnd::ServerClosed);
        // The client side got a FIN.
        assert_eq!(client.read(&mut down).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn silence_ends_it_after_the_limit_learnt_from_the_open_packet() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ((c, _client), (s, mut server)) = (pair(&l).await, pair(&l).await);
        let started = std::time::Instant::now();
        let relay = tokio::spawn(relay_tcp(
            (c, Bytes::new()),
            (s, Bytes::new()),
            IdleLimit::FromOpenPacket {
                margin: Duration::from_millis(100),
                fallback: Duration::from_secs(30),
            }
            .split(None),
            tallies(),
            std::future::pending(),
        ));
        // An unmasked text frame with the open packet: heartbeat 200 + 100 ms.
        let open = br#"0{"sid":"abc","upgrades":[],"pingInterval":200,"pingTimeout":100,"maxPayload":1000000}"#;
        let mut frame = vec![0x81, open.len() as u8];
        frame.extend_from_slice(open);
        server.write_all(&frame).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, TunnelEnd::Idle);
        let after = started.elapsed();
        assert!(after >= Duration::from_millis(400), "{after:?}");
        assert!(after < Duration::from_secs(5), "{after:?}");
    }

    #[tokio::test]
    async fn stop_ends_it() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ((c, _client), (s, _server)) = (pair(&l).await, pair(&l).await);
        let end = relay_tcp(
            (c, Bytes::new()),
            (s, Bytes::new()),
            (Duration::from_secs(30), None),
            tallies(),
            tokio::time::sleep(Duration::from_millis(50)),
        )
        .await;
        assert_eq!(end, TunnelEnd::Stopped);
    }
}
