//! The WebSocket tunnel: bytes both ways until either side is gone.
//!
//! A WebSocket session ends when either peer goes, so when one direction ends (close,
//! reset, error) the other is shut down at once: the client reconnects now instead of
//! waiting a ping timeout to notice. A tunnel silent for longer than the session's own
//! heartbeat (`pingInterval + pingTimeout`, plus a margin) is dead — Engine.IO pings
//! every `pingInterval` — so tether closes it without anyone tuning a read timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::either::Either;

use super::tcp_relay;
use crate::backends::ServerStats;
use crate::engineio;
use crate::wakers::{Waiting, WakerSet};

const BUF: usize = 8 * 1024;

/// Fired when the shutdown grace is over: every tunnel still open ends.
#[derive(Debug, Default)]
pub struct HardStop {
    fired: AtomicBool,
    waiters: WakerSet,
}

impl HardStop {
    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.waiters.wake_all();
    }
}

/// Completes when a tunnel must end before either side closes it: the process's grace
/// is over, its server was put in maintenance or found down (its client then
/// reconnects elsewhere at once), or a migration asked its session to move.
///
/// The tunnel polls it with every message it relays, so a poll is two loads and two
/// waker comparisons; it takes a lock only on its first poll and when dropped.
#[derive(Debug)]
pub struct TunnelStop {
    hard: Arc<HardStop>,
    stats: Arc<ServerStats>,
    on_hard: Waiting,
    on_server: Waiting,
    /// The tunnel's session, whose sid a migration may name (read only while one runs).
    session: Arc<Mutex<super::TunnelSession>>,
    migrated: bool,
}

impl TunnelStop {
    pub(super) fn new(
        hard: Arc<HardStop>,
        stats: Arc<ServerStats>,
        session: Arc<Mutex<super::TunnelSession>>,
    ) -> TunnelStop {
        TunnelStop {
            hard,
            stats,
            on_hard: Waiting::default(),
            on_server: Waiting::default(),
            session,
            migrated: false,
        }
    }

    /// Whether it completed because a migration asked its session to move.
    pub fn migrated(&self) -> bool {
        self.migrated
    }

    fn asked_to_move(&self) -> bool {
        self.stats.migration.is_active()
            && match &*tether_kit::lock(&self.session) {
                super::TunnelSession::Pinned(pin) => self.stats.migration.is_asked(pin.sid()),
                super::TunnelSession::Counted(_) => false,
            }
    }
}

impl Future for TunnelStop {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Registered before the checks, so a change between the two is not missed.
        this.on_hard.register(&this.hard.waiters, cx.waker());
        this.on_server
            .register(this.stats.condition.pinned_waiters(), cx.waker());
        if this.hard.fired.load(Ordering::Acquire) || !this.stats.condition.serves_pinned() {
            Poll::Ready(())
        } else if this.asked_to_move() {
            this.migrated = true;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for TunnelStop {
    fn drop(&mut self) {
        self.on_hard.deregister(&self.hard.waiters);
        self.on_server
            .deregister(self.stats.condition.pinned_waiters());
    }
}

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

/// Told a WebSocket-only session's sid and heartbeat when its open packet crosses the
/// tunnel (to record the session).
pub type OnOpen = Box<dyn FnOnce(&str, Duration) + Send>;

/// What the server's first frame is read for, once: a WebSocket-only session's open
/// packet, for its heartbeat (the idle limit, unless one is fixed) and its sid.
pub(super) struct Learn {
    margin: Option<Duration>,
    opened: Option<OnOpen>,
}

impl Learn {
    /// Reads the server's first chunk; returns the idle limit its open packet sets.
    pub(super) fn first_frame(self, chunk: &[u8]) -> Option<Duration> {
        let open = engineio::parse_ws_open_frame(chunk)?;
        let heartbeat = open.heartbeat();
        if let Some(opened) = self.opened {
            opened(open.sid, heartbeat);
        }
        self.margin.map(|m| heartbeat + m)
    }
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

/// Bytes one direction of a tunnel relayed, added to its server's counter in batches:
/// one shared atomic per message would be contended by every tunnel of the server.
/// What is left is added when the tunnel ends (on drop).
#[derive(Debug)]
pub struct ByteTally {
    pending: u64,
    counter: metrics::Counter,
    /// The tunnel's own total, for the access log (added to with the counter).
    total: Option<Arc<AtomicU64>>,
    /// WebSocket frames, added with the bytes.
    frames: FrameScan,
    pending_frames: u64,
    frame_counter: metrics::Counter,
}

impl ByteTally {
    /// Bytes held back before they are added: dozens of small messages per shared
    /// atomic add, and a busy tunnel's figure is never more than this behind.
    const BATCH: u64 = 4 * 1024;

    pub fn new(
        (counter, frame_counter): (metrics::Counter, metrics::Counter),
        total: Option<Arc<AtomicU64>>,
    ) -> ByteTally {
        ByteTally {
            pending: 0,
            counter,
            total,
            frames: FrameScan::default(),
            pending_frames: 0,
            frame_counter,
        }
    }

    /// Counts a chunk relayed: its bytes, and the frames whose header it holds.
    #[inline]
    pub(super) fn add(&mut self, chunk: &[u8]) {
        self.pending += chunk.len() as u64;
        self.pending_frames += self.frames.scan(chunk);
        if self.pending >= Self::BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let n = std::mem::take(&mut self.pending);
        self.counter.increment(n);
        if let Some(t) = &self.total {
            t.fetch_add(n, Ordering::Relaxed);
        }
        self.frame_counter
            .increment(std::mem::take(&mut self.pending_frames));
    }
}

impl Drop for ByteTally {
    fn drop(&mut self) {
        if self.pending > 0 {
            self.flush();
        }
    }
}

/// Counts WebSocket frames in a byte stream cut anywhere. Only headers are read (2 to 14
/// bytes a frame); payloads are skipped by their length, so a message costs a few
/// instructions whatever its size. It never judges the stream: a tunnel that is not
/// WebSocket framing at all just yields a meaningless count.
#[derive(Debug, Default)]
struct FrameScan {
    /// Payload bytes of the current frame still to come.
    skip: u64,
    /// The start of a header cut by the end of the last chunk.
    head: [u8; MAX_HEADER],
    have: u8,
}

/// The longest frame header: 2 bytes, a 64-bit length, a masking key.
const MAX_HEADER: usize = 14;

impl FrameScan {
    /// The frames whose header ends in `chunk`.
    #[inline]
    fn scan(&mut self, chunk: &[u8]) -> u64 {
        // The usual chunk: one whole frame, nothing of another before it. A few
        // instructions, where the general walk below costs a function call and a loop.
        if self.skip == 0 && self.have == 0 {
            if let Some((len, payload)) = frame_header(chunk) {
                if len as u64 + payload == chunk.len() as u64 {
                    return 1;
                }
            }
        }
        self.walk(chunk)
    }

    /// [`FrameScan::scan`] for any chunk: frames cut anywhere, several in one chunk.
    #[inline(never)]
    fn walk(&mut self, mut chunk: &[u8]) -> u64 {
        let mut frames = 0;
        loop {
            let skipped = self.skip.min(chunk.len() as u64);
            self.skip -= skipped;
            chunk = &chunk[skipped as usize..];
            if chunk.is_empty() {
                return frames;
            }
            if self.have == 0 {
                if let Some((len, payload)) = frame_header(chunk) {
                    frames += 1;
                    self.skip = payload;
                    chunk = &chunk[len..];
                    continue;
                }
            }
            // A header cut by a chunk's end: gather it.
            let have = usize::from(self.have);
            let take = (MAX_HEADER - have).min(chunk.len());
            self.head[have..have + take].copy_from_slice(&chunk[..take]);
            match frame_header(&self.head[..have + take]) {
                Some((len, payload)) => {
                    frames += 1;
                    self.skip = payload;
                    self.have = 0;
                    chunk = &chunk[len - have..];
                }
                None => {
                    // Only when the chunk ran out: no header is longer than the buffer.
                    self.have = (have + take) as u8;
                    return frames;
                }
            }
        }
    }
}

/// The frame header at the start of `b`: its length and its payload's, or `None` when `b`
/// ends inside it.
#[inline]
fn frame_header(b: &[u8]) -> Option<(usize, u64)> {
    let b1 = *b.get(1)?;
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (payload, ext) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)),
            2,
        ),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?), 8),
        n => (u64::from(n), 0),
    };
    let len = 2 + ext + mask;
    (b.len() >= len).then_some((len, payload))
}

/// Relays between the client and the server until one side ends or the tunnel idles.
///
/// A plain function choosing a future, not an `async fn`: an async fn would carry its
/// arguments (and `stop` twice) in every tunnel's task for the tunnel's whole life.
pub fn relay<'a, S>(
    client: Upgraded,
    server: Upgraded,
    (idle, opened, tally): (IdleLimit, Option<OnOpen>, [ByteTally; 2]),
    stop: S,
) -> impl Future<Output = TunnelEnd> + Send + 'a
where
    S: Future<Output = ()> + Send + 'a,
{
    type Buffered<'a> = Pin<Box<dyn Future<Output = TunnelEnd> + Send + 'a>>;
    // Plain TCP on both sides (no TLS listener): relay without per-tunnel buffers. The
    // buffered relay is boxed: its buffers would otherwise be part of every tunnel
    // task's future, plain ones included, whichever branch runs.
    let client = match client.downcast::<TokioIo<TcpStream>>() {
        Ok(c) => c,
        Err(client) => {
            let (c, s) = (TokioIo::new(client), TokioIo::new(server));
            let f: Buffered<'a> = Box::pin(relay_buffered(
                c,
                Bytes::new(),
                s,
                (idle, opened, tally),
                stop,
            ));
            return Either::Left(f);
        }
    };
    let server = match server.downcast::<TokioIo<TcpStream>>() {
        Ok(s) => s,
        Err(server) => {
            let c = client.io.into_inner();
            let s = TokioIo::new(server);
            let f: Buffered<'a> = Box::pin(relay_buffered(
                c,
                client.read_buf,
                s,
                (idle, opened, tally),
                stop,
            ));
            return Either::Left(f);
        }
    };
    let (limit, learn) = idle.split(opened);
    Either::Right(tcp_relay::relay_tcp(
        (client.io.into_inner(), client.read_buf),
        (server.io.into_inner(), server.read_buf),
        (limit, learn),
        tally,
        stop,
    ))
}

impl IdleLimit {
    /// The limit in force at first, and what the server's first frame is to be read
    /// for, if anything.
    pub(super) fn split(self, opened: Option<OnOpen>) -> (Duration, Option<Learn>) {
        let (limit, margin) = match self {
            IdleLimit::Fixed(d) => (d, None),
            IdleLimit::FromOpenPacket { margin, fallback } => (fallback, Some(margin)),
        };
        let learn = (margin.is_some() || opened.is_some()).then_some(Learn { margin, opened });
        (limit, learn)
    }
}

fn limits(idle: IdleLimit, opened: Option<OnOpen>) -> (Limit, Option<Learn>) {
    let (limit_ms, learn) = idle.split(opened);
    let limit = Limit {
        ms: AtomicU64::new(limit_ms.as_millis() as u64),
        changed: Notify::new(),
    };
    (limit, learn)
}

/// The general relay (TLS on a side), with a buffer per direction. `client_rest`: bytes
/// the client sent past the upgrade that were already read.
async fn relay_buffered<C, S>(
    client: C,
    client_rest: Bytes,
    server: S,
    (idle, opened, [mut to_server, mut to_client]): (IdleLimit, Option<OnOpen>, [ByteTally; 2]),
    stop: impl Future<Output = ()>,
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
    to_server.add(&client_rest);
    // A view of hyper's whole read buffer, even empty: not for the tunnel's lifetime.
    drop(client_rest);
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (limit, learn) = limits(idle, opened);

    let end = {
        let client_closing = std::sync::atomic::AtomicBool::new(false);
        let up = copy(
            (&mut client_rd, &mut server_wr),
            start,
            &last,
            None,
            (&mut to_server, Some(&client_closing)),
        );
        let down = copy(
            (&mut server_rd, &mut client_wr),
            start,
            &last,
            learn.map(|l| (l, &limit)),
            (&mut to_client, None),
        );
        let watchdog = watchdog(start, &last, &limit);
        // Each direction says whether its reader ended (that side closed) or its writer
        // failed (the other side did).
        tokio::select! {
            reader = up => if reader { TunnelEnd::ClientClosed } else { TunnelEnd::ServerClosed },
            // A client that sent a close frame started the closing handshake, after
            // which the server closes first (RFC 6455 §7.1.1).
            reader = down => if reader && !client_closing.load(Ordering::Relaxed) { TunnelEnd::ServerClosed } else { TunnelEnd::ClientClosed },
            _ = watchdog => TunnelEnd::Idle,
            _ = stop => TunnelEnd::Stopped,
        }
    };
    // Best effort: a FIN to both sides now, whatever state they are in; dropping the
    // halves afterwards closes the sockets. The server first: a node that sees its
    // transport close before the client can reconnect elsewhere has stored the session
    // for recovery by then.
    let grace = Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, server_wr.shutdown()).await;
    let _ = tokio::time::timeout(grace, client_wr.shutdown()).await;
    end
}

/// The idle limit, which the server's first frame may shorten while the watchdog sleeps.
struct Limit {
    ms: AtomicU64,
    changed: Notify,
}

/// Copies until EOF or error, stamping `last` with each chunk; true when the reader ended,
/// false when writing failed. With `learn`, the first
/// chunk is read for an open packet whose heartbeat (+ margin) becomes the idle limit.
async fn copy<R, W>(
    (rd, wr): (&mut R, &mut W),
    start: Instant,
    last: &AtomicU64,
    mut learn: Option<(Learn, &Limit)>,
    (tally, closing): (&mut ByteTally, Option<&std::sync::atomic::AtomicBool>),
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = [0u8; BUF];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => n,
        };
        if let Some((learn, limit)) = learn.take() {
            if let Some(learnt) = learn.first_frame(&buf[..n]) {
                limit.ms.store(learnt.as_millis() as u64, Ordering::Relaxed);
                limit.changed.notify_one();
            }
        }
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Some(c) = closing {
            c.store(
                super::tcp_relay::is_close_frame(&buf[..n]),
                Ordering::Relaxed,
            );
        }
        if wr.write_all(&buf[..n]).await.is_err() || wr.flush().await.is_err() {
            return false;
        }
        tally.add(&buf[..n]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A server's first frame: an open packet as a text frame.
    fn open_frame(json: &str) -> Vec<u8> {
        let text = format!("0{json}");
        let mut f = vec![0x81, text.len() as u8];
        f.extend_from_slice(text.as_bytes());
        f
    }

    #[test]
    fn the_open_packet_names_the_session_even_when_the_idle_limit_is_fixed() {
        let seen = Arc::new(Mutex::new(None));
        let record = Arc::clone(&seen);
        let opened: OnOpen = Box::new(move |sid, heartbeat| {
            *record.lock().unwrap() = Some((sid.to_owned(), heartbeat));
        });
        let (limit, learn) = IdleLimit::Fixed(Duration::from_secs(7)).split(Some(opened));
        assert_eq!(limit, Duration::from_secs(7));
        let frame = open_frame(r#"{"sid":"abc123","pingInterval":1000,"pingTimeout":500}"#);
        assert_eq!(learn.expect("something to learn").first_frame(&frame), None);
        assert_eq!(
            *seen.lock().unwrap(),
            Some(("abc123".to_owned(), Duration::from_millis(1500)))
        );
    }

    /// A frame of `payload` bytes, masked when `masked` (as clients send them).
    fn frame(payload: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match payload {
            0..=125 => f.push(m | payload as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x7f, payload));
        f
    }

    #[test]
    fn frames_are_counted_however_the_stream_is_cut() {
        let sizes = [0, 1, 125, 126, 300, 65535, 65536, 70000, 5];
        let frames: Vec<Vec<u8>> = (sizes.iter().enumerate())
            .map(|(i, size)| frame(*size, i % 2 == 0))
            .collect();
        // One frame a chunk (the usual case, counted without the walk).
        let mut scan = FrameScan::default();
        let counted: u64 = frames.iter().map(|f| scan.scan(f)).sum();
        assert_eq!(counted, sizes.len() as u64, "a frame a chunk");
        let stream = frames.concat();
        for cut in [1, 2, 3, 7, 13, 14, 100, 4096, stream.len()] {
            let mut scan = FrameScan::default();
            let counted: u64 = stream.chunks(cut).map(|c| scan.scan(c)).sum();
            assert_eq!(counted, sizes.len() as u64, "chunks of {cut}");
            assert_eq!((scan.skip, scan.have), (0, 0), "chunks of {cut}");
        }
    }

    #[test]
    fn a_tally_adds_frames_with_the_bytes() {
        let mut tally = ByteTally::new((metrics::Counter::noop(), metrics::Counter::noop()), None);
        tally.add(&frame(10, true));
        let second = frame(10, false);
        tally.add(&second[..2]);
        assert_eq!(
            tally.pending_frames, 2,
            "a frame counts once its header is in"
        );
        tally.add(&second[2..]);
        assert_eq!(tally.pending_frames, 2, "its payload is skipped");
        tally.add(&frame(5000, false));
        assert_eq!(tally.pending_frames, 0, "flushed with the bytes");
    }

    #[test]
    fn a_fixed_limit_without_a_listener_reads_nothing() {
        assert!(IdleLimit::Fixed(Duration::from_secs(7))
            .split(None)
            .1
            .is_none());
        let (_, learn) = IdleLimit::FromOpenPacket {
            margin: Duration::from_secs(1),
            fallback: Duration::from_secs(60),
        }
        .split(None);
        let frame = open_frame(r#"{"sid":"abc123","pingInterval":1000,"pingTimeout":500}"#);
        assert_eq!(
            learn.expect("the heartbeat").first_frame(&frame),
            Some(Duration::from_millis(2500))
        );
    }
}
