//! The WebSocket tunnel: bytes both ways until either side is gone.
//!
//! A WebSocket session ends when either peer goes, so when one direction ends (close,
//! reset, error) the other is shut down at once: the client reconnects now instead of
//! waiting a ping timeout to notice. A tunnel silent for longer than the session's own
//! heartbeat (`pingInterval + pingTimeout`, plus a margin) is dead — Engine.IO pings
//! every `pingInterval` — so tether closes it without anyone tuning a read timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::engineio;

const BUF: usize = 8 * 1024;

/// How long the tunnel may stay silent.
#[derive(Debug, Clone, Copy)]
pub enum IdleLimit {
    /// Configured, or known from the session's handshake.
    Fixed(Duration),
    /// A WebSocket-only session: learn the heartbeat from the open packet in the
    /// server's first frame; until then (or if it cannot be read) use `fallback`.
    FromOpenPacket {
        margin: Duration,
        fallback: Duration,
    },
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    ClientClosed,
    ServerClosed,
    Idle,
    /// Shutdown, or the server may no longer carry sessions.
    Stopped,
}

/// Relays between the client and the server until one side ends or the tunnel idles.
pub async fn relay(
    client: Upgraded,
    server: Upgraded,
    idle: IdleLimit,
    stop: impl std::future::Future<Output = ()>,
) -> TunnelEnd {
    // Plain TCP on both sides (no TLS listener): relay without per-tunnel buffers.
    let client = match client.downcast::<TokioIo<TcpStream>>() {
        Ok(c) => c,
        Err(client) => {
            let (c, s) = (TokioIo::new(client), TokioIo::new(server));
            return relay_buffered(c, Bytes::new(), s, idle, stop).await;
        }
    };
    let server = match server.downcast::<TokioIo<TcpStream>>() {
        Ok(s) => s,
        Err(server) => {
            let c = client.io.into_inner();
            return relay_buffered(c, client.read_buf, TokioIo::new(server), idle, stop).await;
        }
    };
    relay_tcp(
        (client.io.into_inner(), client.read_buf),
        (server.io.into_inner(), server.read_buf),
        idle,
        stop,
    )
    .await
}

fn limits(idle: IdleLimit) -> (Limit, Option<Duration>) {
    let (limit_ms, learn_margin) = match idle {
        IdleLimit::Fixed(d) => (d, None),
        IdleLimit::FromOpenPacket { margin, fallback } => (fallback, Some(margin)),
    };
    let limit = Limit {
        ms: AtomicU64::new(limit_ms.as_millis() as u64),
        changed: Notify::new(),
    };
    (limit, learn_margin)
}

/// Size of the per-thread scratch buffer of plain-TCP tunnels.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// Shared by every tunnel on this thread: a read is written on at once, so the bytes
    /// never have to outlive the call, and an idle tunnel holds no buffer at all (two
    /// 8 KiB buffers per tunnel were most of the memory of an idle WebSocket).
    static SCRATCH_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SCRATCH]);
}

/// What one readiness step of a pump did.
enum Step {
    Again,
    Eof,
    /// Bytes read but not yet written (the peer's socket buffer was full).
    Rest(Bytes),
}

/// The buffer-free relay between two plain TCP sockets (plus what hyper had already
/// read past the upgrade on each).
async fn relay_tcp(
    (client, client_rest): (TcpStream, Bytes),
    (server, server_rest): (TcpStream, Bytes),
    idle: IdleLimit,
    stop: impl std::future::Future<Output = ()>,
) -> TunnelEnd {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (limit, learn_margin) = limits(idle);
    let end = {
        let up = pump(&client, &server, client_rest, start, &last, None);
        let down = pump(
            &server,
            &client,
            server_rest,
            start,
            &last,
            learn_margin.map(|m| (m, &limit)),
        );
        let watchdog = watchdog(start, &last, &limit);
        tokio::select! {
            _ = up => TunnelEnd::ClientClosed,
            _ = down => TunnelEnd::ServerClosed,
            _ = watchdog => TunnelEnd::Idle,
            _ = stop => TunnelEnd::Stopped,
        }
    };
    // A FIN to both sides now; dropping the sockets closes them.
    for s in [&client, &server] {
        let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
    }
    end
}

fn learn_from(chunk: &[u8], learn: &mut Option<(Duration, &Limit)>) {
    if let Some((margin, limit)) = learn.take() {
        if let Some(open) = engineio::parse_ws_open_frame(chunk) {
            let ms = (open.heartbeat() + margin).as_millis() as u64;
            limit.ms.store(ms, Ordering::Relaxed);
            limit.changed.notify_one();
        }
    }
}

/// Moves bytes from `from` to `to` until EOF or error, reading into the thread's
/// scratch buffer only when `from` is readable.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    rest: Bytes,
    start: Instant,
    last: &AtomicU64,
    mut learn: Option<(Duration, &Limit)>,
) {
    if !rest.is_empty() {
        learn_from(&rest, &mut learn);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if write_all(to, &rest).await.is_err() {
            return;
        }
    }
    // Even empty, `rest` is a view of hyper's whole read buffer: let it go now, or every
    // idle tunnel keeps two of them alive.
    drop(rest);
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let step = SCRATCH_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let n = match from.try_read(&mut buf[..]) {
                Ok(0) => return Step::Eof,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Step::Again,
                Err(_) => return Step::Eof,
            };
            learn_from(&buf[..n], &mut learn);
            last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            match to.try_write(&buf[..n]) {
                Ok(w) if w == n => Step::Again,
                Ok(w) => Step::Rest(Bytes::copy_from_slice(&buf[w..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    Step::Rest(Bytes::copy_from_slice(&buf[..n]))
                }
                Err(_) => Step::Eof,
            }
        });
        match step {
            Step::Again => {}
            Step::Eof => return,
            Step::Rest(bytes) => {
                if write_all(to, &bytes).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn write_all(to: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        to.writable().await?;
        match to.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The general relay (TLS on a side), with a buffer per direction. `client_rest`: bytes
/// the client sent past the upgrade that were already read.
async fn relay_buffered<C, S>(
    client: C,
    client_rest: Bytes,
    server: S,
    idle: IdleLimit,
    stop: impl std::future::Future<Output = ()>,
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut server_rd, mut server_wr) = tokio::io::split(server);
    if !client_rest.is_empty() && server_wr.write_all(&client_rest).await.is_err() {
        return TunnelEnd::ServerClosed;
    }
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (limit, learn_margin) = limits(idle);

    let end = {
        let up = copy(&mut client_rd, &mut server_wr, start, &last, None);
        let down = copy(
            &mut server_rd,
            &mut client_wr,
            start,
            &last,
            learn_margin.map(|m| (m, &limit)),
        );
        let watchdog = watchdog(start, &last, &limit);
        tokio::select! {
            _ = up => TunnelEnd::ClientClosed,
            _ = down => TunnelEnd::ServerClosed,
            _ = watchdog => TunnelEnd::Idle,
            _ = stop => TunnelEnd::Stopped,
        }
    };
    // Best effort: a FIN to both sides now, whatever state they are in; dropping the
    // halves afterwards closes the sockets.
    let grace = Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, client_wr.shutdown()).await;
    let _ = tokio::time::timeout(grace, server_wr.shutdown()).await;
    end
}

/// The idle limit, which the server's first frame may shorten while the watchdog sleeps.
struct Limit {
    ms: AtomicU64,
    changed: Notify,
}

/// Copies until EOF or error, stamping `last` with each chunk. With `learn`, the first
/// chunk is read for an open packet whose heartbeat (+ margin) becomes the idle limit.
async fn copy<R, W>(
    rd: &mut R,
    wr: &mut W,
    start: Instant,
    last: &AtomicU64,
    mut learn: Option<(Duration, &Limit)>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = [0u8; BUF];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some((margin, limit)) = learn.take() {
            if let Some(open) = engineio::parse_ws_open_frame(&buf[..n]) {
                let ms = (open.heartbeat() + margin).as_millis() as u64;
                limit.ms.store(ms, Ordering::Relaxed);
                limit.changed.notify_one();
            }
        }
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if wr.write_all(&buf[..n]).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
}

/// Returns once nothing has crossed the tunnel for the limit. Traffic only moves the
/// deadline later, so sleeping to the old deadline and re-checking is enough for it; a
/// shorter limit learnt meanwhile wakes the sleep.
async fn watchdog(start: Instant, last: &AtomicU64, limit: &Limit) {
    loop {
        let deadline = start
            + Duration::from_millis(
                last.load(Ordering::Relaxed) + limit.ms.load(Ordering::Relaxed),
            );
        if Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = limit.changed.notified() => {}
        }
    }
}
