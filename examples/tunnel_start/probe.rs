//! A raw Engine.IO node and a raw client, to see in which order a proxy delivers a new
//! tunnel's first frame and a polling request sent at once on another connection (see
//! `main.rs`, which measures it).
//! Blocking threads, no async runtime: a read returns the moment the kernel has the
//! bytes, and both ends' timestamps come from one clock.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// What the node saw of one session.
#[derive(Default)]
struct Seen {
    /// When the tunnel's first bytes were seen (the WebSocket connection's thread woke).
    frame: Option<Instant>,
    /// Decided when the poll arrived: whether the frame had not arrived yet.
    poll_first: Option<bool>,
    /// The node's end of the session's WebSocket, to look into when the poll arrives.
    ws: Option<TcpStream>,
}

/// The order is read from the kernel, not from which of the node's threads wakes first
/// (on a busy machine either may lag by milliseconds): when the poll's thread has the
/// poll, it looks whether the WebSocket's bytes are already in the node's socket
/// (`MSG_PEEK`), or were already taken (its thread takes them only after stamping). "The
/// poll first" is then exact: the frame was not there when the poll was. A poll thread
/// that wakes late can only hide an overtaking, never invent one.
#[derive(Default)]
pub struct Node {
    sessions: Mutex<HashMap<String, Seen>>,
    changed: Condvar,
    next_sid: AtomicU64,
}

impl Node {
    fn websocket_opened(&self, sid: &str, ws: TcpStream) {
        let mut s = self.sessions.lock().unwrap();
        s.entry(sid.to_owned()).or_default().ws = Some(ws);
    }

    fn frame_arrived(&self, sid: &str) {
        let now = Instant::now();
        let mut s = self.sessions.lock().unwrap();
        s.entry(sid.to_owned())
            .or_default()
            .frame
            .get_or_insert(now);
        self.changed.notify_all();
    }

    fn poll_arrived(&self, sid: &str) {
        let mut s = self.sessions.lock().unwrap();
        let seen = s.entry(sid.to_owned()).or_default();
        if seen.poll_first.is_none() {
            let frame_in = seen.frame.is_some() || seen.ws.as_ref().is_some_and(has_bytes);
            seen.poll_first = Some(!frame_in);
        }
        self.changed.notify_all();
    }

    /// Waits until the node has seen both the frame and the poll of `sid`.
    fn wait_both(&self, sid: &str, limit: Duration) -> Option<Seen> {
        let deadline = Instant::now() + limit;
        let mut s = self.sessions.lock().unwrap();
        loop {
            if let Some(seen) = s.get(sid) {
                if seen.frame.is_some() && seen.poll_first.is_some() {
                    return s.remove(sid);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            s = self.changed.wait_timeout(s, left).unwrap().0;
        }
    }
}

/// Whether bytes wait in `s`'s receive queue (without taking them or blocking).
fn has_bytes(s: &TcpStream) -> bool {
    let mut one = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    socket2::SockRef::from(s)
        .recv_with_flags(&mut one, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        .is_ok_and(|n| n > 0)
}

/// Reads a request or response head (through the blank line).
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut head = String::new();
    loop {
        let n = r.read_line(&mut head)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if head.ends_with("\r\n\r\n") {
            return Ok(head);
        }
    }
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn query<'h>(head: &'h str, key: &str) -> Option<&'h str> {
    let target = head.split_whitespace().nth(1)?;
    let (_, q) = target.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Serves the node on `listeners` (they share one table of sessions), each on a thread of
/// its own, for as long as the process lives.
pub fn serve_node(listeners: Vec<TcpListener>) -> Arc<Node> {
    let node = Arc::new(Node::default());
    for listener in listeners {
        let node = Arc::clone(&node);
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let node = Arc::clone(&node);
                std::thread::spawn(move || serve(node, s));
            }
        });
    }
    node
}

/// One node connection: polling requests (kept alive) or a WebSocket.
fn serve(node: Arc<Node>, stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let head = read_head(&mut r)?;
        let sid = query(&head, "sid").map(str::to_owned);
        if let Some(len) = header(&head, "content-length").and_then(|v| v.parse().ok()) {
            let mut body = vec![0; len];
            r.read_exact(&mut body)?;
        }
        if header(&head, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            let key = header(&head, "sec-websocket-key").unwrap_or_default();
            let accept = base64::engine::general_purpose::STANDARD.encode(
                Sha1::new()
                    .chain_update(key.as_bytes())
                    .chain_update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                    .finalize(),
            );
            let sid = sid.unwrap_or_default();
            node.websocket_opened(&sid, r.get_ref().try_clone()?);
            write!(
                w,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )?;
            // Bytes read with the head (none expected: the client waits for the 101),
            // or the first to come, looked at but left in the socket until stamped.
            let mut buf = [0u8; 4096];
            if r.buffer().is_empty() && r.get_ref().peek(&mut buf)? == 0 {
                return Ok(());
            }
            node.frame_arrived(&sid);
            while r.read(&mut buf)? > 0 {}
            return Ok(());
        }
        let body = match (&sid, query(&head, "transport")) {
            (None, Some("polling")) => {
                let n = node.next_sid.fetch_add(1, Ordering::Relaxed);
                format!(
                    "0{{\"sid\":\"probe{n:012}\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}}"
                )
            }
            (Some(sid), _) => {
                node.poll_arrived(sid);
                "6".to_owned()
            }
            _ => "ok".to_owned(),
        };
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

/// A masked client text frame.
fn text_frame(text: &str) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one response (head and `Content-Length` body); returns the head and the body.
fn read_response(r: &mut BufReader<TcpStream>) -> anyhow::Result<(String, String)> {
    let head = read_head(r)?;
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((head, String::from_utf8_lossy(&body).into_owned()))
}

pub struct Run {
    /// From the frame's write to its first bytes' arrival at the node.
    pub latency: Duration,
    /// The node saw the poll before the frame.
    pub poll_first: bool,
}

/// One run; with `race` false the poll is written 5 ms after the frames instead of at
/// once, which measures the tunnel's own latency, with no request competing with it.
pub fn one_run(node: &Node, proxy: SocketAddr, race: bool) -> anyhow::Result<Run> {
    let a = TcpStream::connect(proxy).context("connecting to the proxy")?;
    a.set_nodelay(true)?;
    let mut a_w = a.try_clone()?;
    let mut a_r = BufReader::new(a);
    write!(
        a_w,
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: probe\r\n\r\n"
    )?;
    let (head, body) = read_response(&mut a_r)?;
    let sid = body
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .with_context(|| format!("no sid in the handshake: {head}{body}"))?
        .to_owned();

    let b = TcpStream::connect(proxy)?;
    b.set_nodelay(true)?;
    let mut b_w = b.try_clone()?;
    let mut b_r = BufReader::new(b);
    write!(
        b_w,
        "GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\nHost: probe\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )?;
    let head = read_head(&mut b_r)?;
    if !head.starts_with("HTTP/1.1 101") {
        bail!("the upgrade was answered {head}");
    }
    let probe = text_frame("2probe");
    let upgrade = text_frame("5");
    let poll = format!(
        "GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: probe\r\n\r\n"
    );
    let written = Instant::now();
    b_w.write_all(&probe)?;
    b_w.write_all(&upgrade)?;
    if !race {
        std::thread::sleep(Duration::from_millis(5));
    }
    a_w.write_all(poll.as_bytes())?;
    let seen = node
        .wait_both(&sid, Duration::from_secs(5))
        .with_context(|| format!("the node did not see both the frame and the poll of {sid}"))?;
    let _ = read_response(&mut a_r)?;
    Ok(Run {
        latency: seen.frame.unwrap().saturating_duration_since(written),
        poll_first: seen.poll_first.unwrap(),
    })
}
