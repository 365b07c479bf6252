//! Zero-downtime binary upgrade: `tether run --takeover PATH`.
//!
//! A tether started with `--takeover PATH` listens on the Unix socket `PATH`. The next
//! one started with the same flag connects to it and receives, over that socket:
//!
//! 1. the listening sockets (each proxy listener and the admin listener) as file
//!    descriptors (`SCM_RIGHTS`), each tagged with the address the old config gave it,
//!    so a listener of the new config bound to the same address takes it over, port 0
//!    included, as HAProxy does: the port is never closed, no connection is refused;
//! 2. the learned sid table (and the server states set through the admin API), so a
//!    polling session whose next request reaches the new process goes to the same
//!    server even without a cookie or a shared registry;
//! 3. `ready`. The new process binds everything (TLS and every other setting from its
//!    own config), imports the sessions, starts serving, and sends `go`. The old one
//!    stops accepting at once and drains as on SIGTERM, sending the sessions learned
//!    meanwhile (a handshake that was in flight) until its last HTTP connection is
//!    gone; then `done`. The new process then listens on `PATH` for the next upgrade.
//!
//! Failure handling, so that an upgrade never leaves the port with nobody accepting:
//! the old process keeps serving until it reads `go`; if the new one hangs up or says
//! nothing for [`GO_TIMEOUT`], the old one carries on. The new one, when the hand-over
//! breaks before `ready` (the old one died, a bad message), drops what it received and
//! binds normally; if that fails too, both causes are in the error.
//!
//! The wire format is length-prefixed JSON frames (`u32` big-endian length, at most
//! [`MAX_FRAME`] bytes): small, versioned, and read without trusting anything in it.

use std::collections::HashSet;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tether_kit::lock;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

use super::{AdminApi, Inherited, InheritedSocket, Runtime, SocketKind, StartError, Tether};
use crate::affinity::sid_table::HandedSession;
use crate::config::{Config, ServerState};

/// The version of the wire format; a peer speaking another one is refused.
pub const VERSION: u32 = 1;

/// Largest frame either side reads: a length above it is a bad message, not an
/// allocation.
pub const MAX_FRAME: usize = 8 << 20;

/// Sessions per frame, well under [`MAX_FRAME`] whatever their sids.
const SESSIONS_PER_FRAME: usize = 2000;

/// How long the old process waits for `go` after `ready` before it gives up on the new
/// one and carries on serving.
pub const GO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the new process waits for each message of the hand-over before giving up.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// After `go`, how often the old process looks for sessions learned since it last sent
/// (an answer that may have started one asks at once).
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// Why a takeover did not happen, or not all of it.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("cannot listen on {path}: {cause}")]
    Listen {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot connect to {path}: {cause}")]
    Connect {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Io(std::io::Error),
    #[error("the other process hung up")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("bad message: {0}")]
    Wire(WireError),
    #[error("unexpected message {got} (expected {expected})")]
    Unexpected {
        got: &'static str,
        expected: &'static str,
    },
    #[error("the other process speaks version {0}, this one {VERSION}")]
    Version(u32),
    #[error("the peer runs as uid {peer}, this process as uid {own}")]
    Uid { peer: u32, own: u32 },
}

impl From<std::io::Error> for TakeoverError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset => TakeoverError::Closed,
            _ => TakeoverError::Io(e),
        }
    }
}

impl From<WireError> for TakeoverError {
    fn from(e: WireError) -> Self {
        TakeoverError::Wire(e)
    }
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes, more than the {MAX_FRAME} allowed")]
    TooLong(usize),
    #[error("{0}")]
    Json(String),
    #[error("{msg} came with {fds} file descriptor(s), expected {expected}")]
    Fds {
        msg: &'static str,
        fds: usize,
        expected: usize,
    },
    #[error("file descriptors were cut off (too many sent)")]
    FdsTruncated,
}

/// One message of the hand-over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Message {
    /// Old → new, first: who is handing over.
    Hello { version: u32, pid: u32 },
    /// Old → new, with exactly one file descriptor: a listening socket and the address
    /// its config bound it to.
    Listener { kind: WireKind, addr: SocketAddr },
    /// Old → new: live sessions of the sid table.
    Sessions { sessions: Vec<WireSession> },
    /// Old → new: server states set through the admin API.
    States { servers: Vec<WireState> },
    /// Old → new: everything needed to start has been sent.
    Ready,
    /// New → old: serving; stop accepting and drain.
    Go,
    /// New → old, after `go`: the sessions of the last `sessions` are in its table (an
    /// answer of the old process that started a session waits for this).
    Imported,
    /// Old → new: drained, nothing more will come.
    Done,
}

impl Message {
    fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Listener { .. } => "listener",
            Message::Sessions { .. } => "sessions",
            Message::States { .. } => "states",
            Message::Ready => "ready",
            Message::Go => "go",
            Message::Imported => "imported",
            Message::Done => "done",
        }
    }

    fn fds_expected(&self) -> usize {
        usize::from(matches!(self, Message::Listener { .. }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireKind {
    Proxy,
    Admin,
}

impl From<SocketKind> for WireKind {
    fn from(k: SocketKind) -> Self {
        match k {
            SocketKind::Proxy => WireKind::Proxy,
            SocketKind::Admin => WireKind::Admin,
        }
    }
}

impl From<WireKind> for SocketKind {
    fn from(k: WireKind) -> Self {
        match k {
            WireKind::Proxy => SocketKind::Proxy,
            WireKind::Admin => SocketKind::Admin,
        }
    }
}

/// A [`HandedSession`] on the wire (durations in milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSession {
    pub backend: String,
    pub sid: String,
    pub server: String,
    pub ttl_ms: u64,
    pub remaining_ms: u64,
    pub client: IpAddr,
    #[serde(default)]
    pub age_ms: u64,
}

impl From<&HandedSession> for WireSession {
    fn from(s: &HandedSession) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        WireSession {
            backend: s.backend.to_string(),
            sid: s.sid.to_string(),
            server: s.server.to_string(),
            ttl_ms: ms(s.ttl),
            remaining_ms: ms(s.remaining),
            client: s.client,
            age_ms: ms(s.age),
        }
    }
}

impl From<&WireSession> for HandedSession {
    fn from(s: &WireSession) -> Self {
        HandedSession {
            backend: s.backend.as_str().into(),
            sid: s.sid.as_str().into(),
            server: s.server.as_str().into(),
            ttl: Duration::from_millis(s.ttl_ms),
            remaining: Duration::from_millis(s.remaining_ms),
            client: s.client,
            age: Duration::from_millis(s.age_ms),
        }
    }
}

/// A server's operator state as the admin API set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireState {
    pub backend: String,
    pub server: String,
    /// `ready`, `draining` or `maint`; anything else is ignored.
    pub state: String,
}

/// A message as one frame: its length, then its JSON.
pub fn encode(msg: &Message) -> Vec<u8> {
    // Serializing these plain types cannot fail.
    let json = serde_json::to_vec(msg).unwrap_or_default();
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&json);
    frame
}

/// The length a frame header announces, refused above [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, WireError> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLong(n));
    }
    Ok(n)
}

/// A frame's body, with how many file descriptors came with it.
pub fn decode(body: &[u8], fds: usize) -> Result<Message, WireError> {
    let msg: Message = serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    let expected = msg.fds_expected();
    if fds != expected {
        return Err(WireError::Fds {
            msg: msg.name(),
            fds,
            expected,
        });
    }
    Ok(msg)
}

/// Sends one frame, with `fd` attached to its first byte.
async fn send(
    stream: &UnixStream,
    msg: &Message,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), TakeoverError> {
    let frame = encode(msg);
    let mut off = 0;
    while off < frame.len() {
        let n = stream
            .async_io(Interest::WRITABLE, || {
                let fds: Vec<BorrowedFd<'_>> = if off == 0 {
                    fd.into_iter().collect()
                } else {
                    Vec::new()
                };
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() {
                    control.push(SendAncillaryMessage::ScmRights(&fds));
                }
                Ok(sendmsg(
                    stream,
                    &[IoSlice::new(&frame[off..])],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )?)
            })
            .await?;
        if n == 0 {
            return Err(TakeoverError::Closed);
        }
        off += n;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, keeping any file descriptors that came with them.
async fn recv_exact(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), TakeoverError> {
    let mut off = 0;
    while off < buf.len() {
        let (n, flags) = stream
            .async_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let r = recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut buf[off..])],
                    &mut control,
                    recv_flags(),
                )?;
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(got) = m {
                        fds.extend(got);
                    }
                }
                Ok((r.bytes, r.flags))
            })
            .await?;
        if flags.contains(ReturnFlags::CTRUNC) {
            return Err(WireError::FdsTruncated.into());
        }
        if n == 0 {
            return Err(TakeoverError::Closed);
        }
        off += n;
    }
    Ok(())
}

/// Received descriptors are not to leak into anything this process starts.
fn recv_flags() -> RecvFlags {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    return RecvFlags::CMSG_CLOEXEC;
    #[allow(unreachable_code)]
    RecvFlags::empty()
}

/// Reads one message and the descriptors it carries.
async fn recv(stream: &UnixStream) -> Result<(Message, Vec<OwnedFd>), TakeoverError> {
    let mut fds = Vec::new();
    let mut header = [0u8; 4];
    recv_exact(stream, &mut header, &mut fds).await?;
    let mut body = vec![0u8; frame_len(header)?];
    recv_exact(stream, &mut body, &mut fds).await?;
    let msg = decode(&body, fds.len())?;
    Ok((msg, fds))
}

async fn recv_within(
    stream: &UnixStream,
    limit: Duration,
) -> Result<(Message, Vec<OwnedFd>), TakeoverError> {
    tokio::time::timeout(limit, recv(stream))
        .await
        .map_err(|_| TakeoverError::Timeout(limit))?
}

/// The takeover socket of this process: bound at a private name first, moved to `PATH`
/// once this process is the one serving, removed on exit if still ours.
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
    /// Its file, while under its private name.
    temp: Option<PathBuf>,
    /// Its file's identity (device, inode) once at `path`.
    ours: Option<(u64, u64)>,
}

impl std::fmt::Debug for ControlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSocket")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ControlSocket {
    /// Binds beside `path` under a name of this process, readable by its user only (the
    /// socket hands out listening sockets and can stop this process).
    fn bind(path: &Path) -> Result<ControlSocket, TakeoverError> {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}.new", std::process::id()));
        let temp = PathBuf::from(name);
        let listen_err = |cause| TakeoverError::Listen {
            path: path.to_owned(),
            cause,
        };
        let _ = std::fs::remove_file(&temp);
        let listener = UnixListener::bind(&temp).map_err(listen_err)?;
        if let Err(e) = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(&temp);
            return Err(listen_err(e));
        }
        Ok(ControlSocket {
            path: path.to_owned(),
            listener: Some(listener),
            temp: Some(temp),
            ours: None,
        })
    }

    /// Puts the socket at `path`, replacing whatever file is there (a stale socket, or
    /// that of the process just taken over, which serves no more takeovers).
    fn publish(&mut self) -> Result<(), std::io::Error> {
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        if let Err(e) = std::fs::rename(&temp, &self.path) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        self.ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(())
    }

    /// Removes the socket file if it is still this process's (the next process may have
    /// put its own there).
    fn remove_if_ours(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
        if let Some(id) = self.ours.take() {
            let still = std::fs::symlink_metadata(&self.path)
                .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == id);
            if still {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.remove_if_ours();
    }
}

/// What the new process received from the old one before `ready`.
struct Received {
    stream: UnixStream,
    pid: u32,
    inherited: Inherited,
    sessions: Vec<WireSession>,
    states: Vec<WireState>,
}

/// Connects to the tether listening on `path` and receives its sockets, sessions and
/// states. `None` when nobody listens there (no file, or a stale one).
async fn receive(path: &Path) -> Result<Option<Received>, TakeoverError> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                tracing::info!(path = %path.display(), "takeover: nobody listens on the socket (stale file); binding normally");
            }
            return Ok(None);
        }
        Err(cause) => {
            return Err(TakeoverError::Connect {
                path: path.to_owned(),
                cause,
            })
        }
    };
    check_peer(&stream)?;
    let pid = match recv_within(&stream, FRAME_TIMEOUT).await?.0 {
        Message::Hello { version, pid } if version == VERSION => pid,
        Message::Hello { version, .. } => return Err(TakeoverError::Version(version)),
        other => {
            return Err(TakeoverError::Unexpected {
                got: other.name(),
                expected: "hello",
            })
        }
    };
    let mut r = Received {
        stream,
        pid,
        inherited: Inherited::default(),
        sessions: Vec::new(),
        states: Vec::new(),
    };
    loop {
        let (msg, mut fds) = recv_within(&r.stream, FRAME_TIMEOUT).await?;
        match msg {
            Message::Listener { kind, addr } => {
                let Some(fd) = fds.pop() else {
                    return Err(WireError::Fds {
                        msg: "listener",
                        fds: 0,
                        expected: 1,
                    }
                    .into());
                };
                r.inherited.sockets.push(InheritedSocket {
                    kind: kind.into(),
                    configured: addr,
                    socket: std::net::TcpListener::from(fd),
                });
            }
            Message::Sessions { sessions } => r.sessions.extend(sessions),
            Message::States { servers } => r.states.extend(servers),
            Message::Ready => return Ok(Some(r)),
            other => {
                return Err(TakeoverError::Unexpected {
                    got: other.name(),
                    expected: "listener, sessions, states or ready",
                })
            }
        }
    }
}

/// Only a process of this user may take over (or hand over): the socket file's mode
/// says so already; this holds even if the file was made readable by others.
fn check_peer(stream: &UnixStream) -> Result<(), TakeoverError> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let peer = rustix::net::sockopt::socket_peercred(stream)
            .map_err(|e| TakeoverError::Io(e.into()))?;
        let own = rustix::process::getuid();
        if peer.uid != own {
            return Err(TakeoverError::Uid {
                peer: peer.uid.as_raw(),
                own: own.as_raw(),
            });
        }
    }
    let _ = stream;
    Ok(())
}

/// Sessions of `sessions` whose backend and server this process's config knows go into
/// its sid table; returns (imported, skipped).
fn import_sessions(rt: &Runtime, sessions: &[WireSession]) -> (usize, usize) {
    let (mut imported, mut skipped) = (0, 0);
    let snap = rt.store.load();
    for s in sessions {
        let stats = snap
            .backend(&s.backend)
            .and_then(|b| b.server(&s.server))
            .map(|srv| Arc::clone(&srv.stats));
        match stats.map(|st| rt.store.sids.import(&HandedSession::from(s), st)) {
            Some(Ok(true)) => imported += 1,
            _ => skipped += 1,
        }
    }
    (imported, skipped)
}

/// States set through the admin API in the old process apply here too, for servers
/// this config has.
fn import_states(rt: &Runtime, states: &[WireState]) -> usize {
    let snap = rt.store.load();
    let mut applied = 0;
    for w in states {
        let server = snap.backend(&w.backend).and_then(|b| b.server(&w.server));
        if let (Some(server), Some(state)) = (server, ServerState::parse(&w.state)) {
            server.stats.condition.set_state_by_admin(state);
            tracing::info!(backend = %w.backend, server = %w.server, state = %w.state, "takeover: server state set by the admin API carried over");
            applied += 1;
        }
    }
    applied
}

/// The states set through the admin API, to hand over.
fn export_states(rt: &Runtime) -> Vec<WireState> {
    let snap = rt.store.load();
    snap.backends
        .iter()
        .flat_map(|b| b.servers.iter())
        .filter(|s| s.stats.condition.state_set_by_admin())
        .map(|s| WireState {
            backend: s.stats.backend.to_string(),
            server: s.stats.id.to_string(),
            state: s.stats.condition.state().as_str().to_owned(),
        })
        .collect()
}

/// A bound tether's side of `--takeover`: the takeover socket, and the old process when
/// it took over from one.
#[derive(Debug)]
pub struct Takeover {
    control: ControlSocket,
    from: Option<(UnixStream, u32)>,
}

/// Binds `config` for `tether run --takeover path`: takes the listening sockets of the
/// tether listening on `path` if there is one, else binds them; see the module doc.
pub async fn bind(
    config: Config,
    admin_api: Arc<dyn AdminApi>,
    path: &Path,
) -> Result<(Tether, Takeover), StartError> {
    let control = ControlSocket::bind(path).map_err(|cause| StartError::Takeover {
        path: path.to_owned(),
        cause: Box::new(cause),
    })?;
    let received = match receive(path).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "takeover failed; binding normally");
            return match Tether::bind(config, admin_api).await {
                Ok(t) => Ok((
                    t,
                    Takeover {
                        control,
                        from: None,
                    },
                )),
                Err(bind) => Err(StartError::TakeoverThenBind {
                    path: path.to_owned(),
                    why: Box::new(e),
                    bind: Box::new(bind),
                }),
            };
        }
    };
    let Some(r) = received else {
        let t = Tether::bind(config, admin_api).await?;
        return Ok((
            t,
            Takeover {
                control,
                from: None,
            },
        ));
    };
    let sockets = r.inherited.sockets.len();
    let t = Tether::bind_inheriting(config, admin_api, r.inherited).await?;
    let (imported, skipped) = import_sessions(&t.runtime, &r.sessions);
    let states = import_states(&t.runtime, &r.states);
    tracing::info!(
        from = r.pid,
        sockets,
        sessions = imported,
        skipped,
        states,
        "takeover: received the listening sockets and sessions"
    );
    Ok((
        t,
        Takeover {
            control,
            from: Some((r.stream, r.pid)),
        },
    ))
}

impl Tether {
    /// [`Tether::run`] for `--takeover`: once serving, tells the process taken over (if
    /// any) to go and takes the sessions it still learns while it drains; listens on
    /// the takeover socket for the next process, and hands over to it when it asks.
    pub async fn run_taking_over(self, mut takeover: Takeover) {
        let running = self.start();
        let rt = Arc::clone(&self.runtime);
        let follow = takeover
            .from
            .take()
            .map(|(stream, pid)| tokio::spawn(follow_old(Arc::clone(&rt), stream, pid)));
        let serving = match takeover.control.publish() {
            Ok(()) => {
                tracing::info!(path = %takeover.control.path.display(), "takeover socket listening");
                takeover
                    .control
                    .listener
                    .take()
                    .map(|l| tokio::spawn(serve_takeovers(Arc::clone(&rt), l)))
            }
            Err(e) => {
                tracing::error!(path = %takeover.control.path.display(), error = %e, "cannot put the takeover socket in place; this process cannot be taken over");
                None
            }
        };
        rt.life.shutdown.cancelled().await;
        if let Some(f) = follow {
            f.abort();
        }
        let grace = rt.store.config().shutdown_grace;
        self.drain(running).await;
        // The last sessions and `done` to the next process, if it was handed over to.
        if let Some(s) = serving {
            let _ = tokio::time::timeout(Duration::from_secs(1).min(grace), s).await;
        }
        takeover.control.remove_if_ours();
    }
}

/// The new process's side after `go`: imports the sessions the old one learns while it
/// drains, until `done` or it hangs up.
async fn follow_old(rt: Arc<Runtime>, stream: UnixStream, pid: u32) {
    if let Err(e) = send(&stream, &Message::Go, None).await {
        tracing::warn!(from = pid, error = %e, "takeover: could not tell the old process to go");
        return;
    }
    tracing::info!(
        from = pid,
        "takeover: serving; the old process stops accepting and drains"
    );
    let mut imported = 0;
    loop {
        match recv(&stream).await {
            Ok((Message::Sessions { sessions }, _)) => {
                imported += import_sessions(&rt, &sessions).0;
                if let Err(e) = send(&stream, &Message::Imported, None).await {
                    tracing::info!(from = pid, error = %e, sessions = imported, "takeover: the old process is gone");
                    return;
                }
            }
            Ok((Message::States { servers }, _)) => {
                import_states(&rt, &servers);
            }
            Ok((Message::Done, _)) => {
                tracing::info!(
                    from = pid,
                    sessions = imported,
                    "takeover: the old process has drained its HTTP connections"
                );
                return;
            }
            Ok((other, _)) => {
                tracing::warn!(
                    from = pid,
                    msg = other.name(),
                    "takeover: unexpected message; no more sessions taken from the old process"
                );
                return;
            }
            Err(e) => {
                tracing::info!(from = pid, error = %e, sessions = imported, "takeover: the old process is gone");
                return;
            }
        }
    }
}

/// Accepts takeovers on the control socket until one is handed over to (or shutdown).
async fn serve_takeovers(rt: Arc<Runtime>, listener: UnixListener) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = rt.life.shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "takeover socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match hand_over(&rt, &stream).await {
            Ok(Handed::Gone) => return,
            Ok(Handed::Abandoned(why)) => {
                tracing::warn!(reason = %why, "takeover abandoned by the new process; still serving");
            }
            Err(e) => {
                if rt.life.shutdown.is_cancelled() {
                    return;
                }
                tracing::warn!(error = %e, "takeover failed; still serving");
            }
        }
    }
}

enum Handed {
    /// `go` came: this process is draining, the new one serves.
    Gone,
    /// The new process never said `go`.
    Abandoned(TakeoverError),
}

/// The old process's side: sockets, sessions, states, `ready`; then, on `go`, drains as
/// on SIGTERM while sending the sessions it still learns, then `done`.
async fn hand_over(rt: &Arc<Runtime>, stream: &UnixStream) -> Result<Handed, TakeoverError> {
    check_peer(stream)?;
    send(
        stream,
        &Message::Hello {
            version: VERSION,
            pid: std::process::id(),
        },
        None,
    )
    .await?;
    for (kind, addr, socket) in handover_sockets(rt) {
        let msg = Message::Listener {
            kind: kind.into(),
            addr,
        };
        send(stream, &msg, Some(socket.as_fd())).await?;
    }
    let mut sent = HashSet::new();
    let sessions = rt.store.sids.export_live(None);
    send_sessions(stream, &sessions, &mut sent).await?;
    send(
        stream,
        &Message::States {
            servers: export_states(rt),
        },
        None,
    )
    .await?;
    send(stream, &Message::Ready, None).await?;
    let go = tokio::select! {
        r = recv_within(stream, GO_TIMEOUT) => r,
        () = rt.life.shutdown.cancelled() => return Ok(Handed::Abandoned(TakeoverError::Closed)),
    };
    match go {
        Ok((Message::Go, _)) => {}
        Ok((other, _)) => {
            return Ok(Handed::Abandoned(TakeoverError::Unexpected {
                got: other.name(),
                expected: "go",
            }))
        }
        Err(e) => return Ok(Handed::Abandoned(e)),
    }
    let started = tokio::time::Instant::now();
    let handover = Arc::clone(&rt.life.handover);
    handover.begin();
    rt.life.shutdown.cancel();
    tracing::info!(
        sessions = sent.len(),
        "takeover: the new process serves; this one stops accepting and drains"
    );
    // Sessions whose handshake was in flight go on learning here: the new process
    // gets them within moments, until no HTTP connection is left to learn from.
    let limit = rt.store.config().shutdown_grace + Duration::from_secs(1);
    // An answer that may have started a session waits for it to be sent (see
    // `listener::Handover`), and asks for it: the loop runs at once then.
    let mut since = started;
    let sent_all = loop {
        let drained = rt.life.connections.is_empty() || started.elapsed() > limit;
        let scan_from = since.checked_sub(Duration::from_secs(1)).unwrap_or(since);
        since = tokio::time::Instant::now();
        let new = rt.store.sids.export_live(Some(scan_from));
        if let Err(e) = send_imported(stream, &new, &mut sent).await {
            tracing::warn!(error = %e, "takeover: the new process takes no more sessions");
            break false;
        }
        handover.flushed_through(since);
        if drained {
            break true;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            () = handover.wanted() => {}
        }
    };
    // Nobody waits for a successor that is gone or was told everything.
    handover.flushed_through(tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
    if !sent_all {
        return Ok(Handed::Gone);
    }
    let _ = send(stream, &Message::Done, None).await;
    tracing::info!(
        sessions = sent.len(),
        after = ?started.elapsed(),
        "takeover: HTTP connections drained; hand-over complete"
    );
    Ok(Handed::Gone)
}

/// Sends the sessions of `sessions` not sent yet, in frames of a bounded size; returns
/// how many frames.
async fn send_sessions(
    stream: &UnixStream,
    sessions: &[HandedSession],
    sent: &mut HashSet<Arc<str>>,
) -> Result<usize, TakeoverError> {
    let fresh: Vec<WireSession> = sessions
        .iter()
        .filter(|s| sent.insert(Arc::clone(&s.sid)))
        .map(WireSession::from)
        .collect();
    let mut frames = 0;
    for chunk in fresh.chunks(SESSIONS_PER_FRAME) {
        let msg = Message::Sessions {
            sessions: chunk.to_vec(),
        };
        send(stream, &msg, None).await?;
        frames += 1;
    }
    Ok(frames)
}

/// After `go`: sends the new sessions of `sessions` and waits until the new process
/// has them in its table.
async fn send_imported(
    stream: &UnixStream,
    sessions: &[HandedSession],
    sent: &mut HashSet<Arc<str>>,
) -> Result<(), TakeoverError> {
    for _ in 0..send_sessions(stream, sessions, sent).await? {
        match recv_within(stream, FRAME_TIMEOUT).await?.0 {
            Message::Imported => {}
            other => {
                return Err(TakeoverError::Unexpected {
                    got: other.name(),
                    expected: "imported",
                })
            }
        }
    }
    Ok(())
}

/// Copies of the listening sockets, tagged with their configured addresses.
fn handover_sockets(rt: &Runtime) -> Vec<(SocketKind, SocketAddr, std::net::TcpListener)> {
    let mut out = Vec::new();
    for b in lock(&rt.listeners).iter() {
        if let Some(s) = b.handover.as_ref().and_then(|s| s.try_clone().ok()) {
            out.push((SocketKind::Proxy, b.config.bind, s));
        }
    }
    if let Some(a) = lock(&rt.admin).as_ref() {
        if let Some(s) = a.handover.as_ref().and_then(|s| s.try_clone().ok()) {
            out.push((SocketKind::Admin, a.config.bind, s));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(msg: &Message) -> (Vec<u8>, Vec<u8>) {
        let f = encode(msg);
        (f[..4].to_vec(), f[4..].to_vec())
    }

    #[test]
    fn every_message_survives_the_wire() {
        let msgs = [
            Message::Hello {
                version: 1,
                pid: 42,
            },
            Message::Listener {
                kind: WireKind::Admin,
                addr: "127.0.0.1:0".parse().unwrap(),
            },
            Message::Sessions {
                sessions: vec![WireSession {
                    backend: "b".into(),
                    sid: "abc".into(),
                    server: "node-1".into(),
                    ttl_ms: 45_000,
                    remaining_ms: 12_000,
                    client: "::1".parse().unwrap(),
                    age_ms: 7,
                }],
            },
            Message::States {
                servers: vec![WireState {
                    backend: "b".into(),
                    server: "s".into(),
                    state: "maint".into(),
                }],
            },
            Message::Ready,
            Message::Go,
            Message::Imported,
            Message::Done,
        ];
        for m in msgs {
            let (h, body) = frame_of(&m);
            assert_eq!(frame_len(h.try_into().unwrap()).unwrap(), body.len());
            assert_eq!(decode(&body, m.fds_expected()).unwrap(), m);
        }
    }

    #[test]
    fn a_listener_needs_exactly_one_descriptor_and_nothing_else_takes_one() {
        let l = Message::Listener {
            kind: WireKind::Proxy,
            addr: "127.0.0.1:8080".parse().unwrap(),
        };
        let (_, body) = frame_of(&l);
        assert!(matches!(decode(&body, 0), Err(WireError::Fds { .. })));
        assert!(matches!(decode(&body, 2), Err(WireError::Fds { .. })));
        let (_, body) = frame_of(&Message::Go);
        assert!(matches!(decode(&body, 1), Err(WireError::Fds { .. })));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_any_allocation() {
        assert_eq!(
            frame_len(u32::MAX.to_be_bytes()),
            Err(WireError::TooLong(u32::MAX as usize))
        );
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()).is_err());
        assert_eq!(frame_len((MAX_FRAME as u32).to_be_bytes()), Ok(MAX_FRAME));
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        let bad: &[&[u8]] = &[
            b"",
            b"{",
            b"null",
            b"[]",
            b"{\"msg\":\"nope\"}",
            b"{\"msg\":\"hello\"}",
            b"{\"msg\":\"hello\",\"version\":-1,\"pid\":1}",
            b"{\"msg\":\"listener\",\"kind\":\"proxy\",\"addr\":\"not an address\"}",
            b"{\"msg\":\"sessions\",\"sessions\":[{\"sid\":1}]}",
            b"{\"msg\":\"sessions\",\"sessions\":[{\"backend\":\"b\",\"sid\":\"s\",\"server\":\"x\",\"ttl_ms\":1,\"remaining_ms\":1,\"client\":\"999.1.1.1\"}]}",
            b"\xff\xfe\x00",
        ];
        for b in bad {
            assert!(decode(b, 0).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn huge_durations_and_unknown_states_are_taken_in_stride() {
        let w = WireSession {
            backend: "b".into(),
            sid: "s".into(),
            server: "x".into(),
            ttl_ms: u64::MAX,
            remaining_ms: u64::MAX,
            client: "127.0.0.1".parse().unwrap(),
            age_ms: u64::MAX,
        };
        let h = HandedSession::from(&w);
        assert_eq!(WireSession::from(&h), w);
        assert_eq!(ServerState::parse("maint"), Some(ServerState::Maint));
        assert_eq!(ServerState::parse("draining"), Some(ServerState::Draining));
        assert_eq!(ServerState::parse("sideways"), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512), fds in 0usize..3) {
            let _ = decode(&body, fds);
        }

        #[test]
        fn arbitrary_headers_never_panic(h in proptest::array::uniform4(proptest::num::u8::ANY)) {
            if let Ok(n) = frame_len(h) {
                proptest::prop_assert!(n <= MAX_FRAME);
            }
        }
    }

    /// A real socket pair: a descriptor sent with a frame arrives with it; a peer that
    /// hangs up mid-frame is `Closed`; garbage is a `Wire` error.
    #[tokio::test]
    async fn frames_and_descriptors_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap();
        let msg = Message::Listener {
            kind: WireKind::Proxy,
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        send(&a, &msg, Some(l.as_fd())).await.unwrap();
        send(&a, &Message::Ready, None).await.unwrap();
        let (got, mut fds) = recv(&b).await.unwrap();
        assert_eq!(got, msg);
        let received = std::net::TcpListener::from(fds.pop().unwrap());
        assert_eq!(received.local_addr().unwrap(), local);
        assert_eq!(recv(&b).await.unwrap().0, Message::Ready);

        // Garbage, then half a frame and a hang-up.
        use tokio::io::AsyncWriteExt;
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[0, 0, 0, 3, b'x', b'y', b'z']).await.unwrap();
        assert!(matches!(recv(&b).await, Err(TakeoverError::Wire(_))));
        a.write_all(&[0, 0, 0, 9, b'{']).await.unwrap();
        drop(a);
        assert!(matches!(recv(&b).await, Err(TakeoverError::Closed)));
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(
            recv(&b).await,
            Err(TakeoverError::Wire(WireError::TooLong(_)))
        ));
    }

    #[tokio::test]
    async fn a_stale_socket_file_or_none_means_bind_normally() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        assert!(receive(&path).await.unwrap().is_none(), "no file");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(receive(&path).await.unwrap().is_none(), "stale file");
        let mut c = ControlSocket::bind(&path).unwrap();
        c.publish().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        c.remove_if_ours();
        assert!(!path.exists(), "removed: it was ours");
        let mut c = ControlSocket::bind(&path).unwrap();
        c.publish().unwrap();
        // Another process's socket took its place: left alone.
        std::fs::remove_file(&path).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        drop(c);
        assert!(path.exists());
    }
}
