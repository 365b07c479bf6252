//! A raw HTTP/1.1 and WebSocket client that chooses its source address and connection
//! per request, and reads responses off the wire as they are.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A response read off the wire by [`raw_request`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The sid of an Engine.IO handshake response body.
    pub fn sid(&self) -> String {
        let body = self.text();
        let json = body.split('\x1e').next().unwrap().trim_start_matches('0');
        let v: serde_json::Value = serde_json::from_str(json).expect("open packet");
        v["sid"].as_str().expect("sid").to_owned()
    }
}

/// Opens a TCP connection to `addr`, optionally from source address `from`.
pub async fn connect_from(addr: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
    }
    socket.connect(addr).await.expect("connect")
}

/// Sends raw bytes as one request on a fresh connection (`Connection: close` is the
/// caller's business) and reads the response to EOF.
pub async fn raw_exchange(addr: SocketAddr, from: Option<IpAddr>, request: &[u8]) -> RawResponse {
    let mut stream = connect_from(addr, from).await;
    stream.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    parse_response(&buf)
        .unwrap_or_else(|| panic!("unparsable response: {:?}", String::from_utf8_lossy(&buf)))
}

/// `GET path` with extra header lines, from `from`.
pub async fn get(
    addr: SocketAddr,
    from: Option<IpAddr>,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_exchange(addr, from, req.as_bytes()).await
}

pub fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = std::str::from_utf8(&data[..nl]).unwrap_or("0");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || data.len() < nl + 2 + size {
            break;
        }
        out.extend_from_slice(&data[nl + 2..nl + 2 + size]);
        data = &data[(nl + 4 + size).min(data.len())..];
    }
    out
}

/// The path of an Engine.IO polling request.
pub fn eio_path(sid: Option<&str>) -> String {
    match sid {
        Some(s) => format!("/socket.io/?EIO=4&transport=polling&sid={s}"),
        None => "/socket.io/?EIO=4&transport=polling".to_owned(),
    }
}

/// Engine.IO's answer to a request of a session its server (or tether) does not know.
pub const SID_UNKNOWN: &str = r#"{"code":1,"message":"Session ID unknown"}"#;

/// `127.0.0.last`, a client address of its own for a raw request.
pub fn loopback(last: u8) -> Option<std::net::IpAddr> {
    Some(std::net::IpAddr::from([127, 0, 0, last]))
}

/// POSTs a pong packet (`3`) for `sid` through `addr`: 200 `ok` only from the server
/// that holds the session.
pub async fn post_pong(addr: SocketAddr, sid: &str) -> RawResponse {
    let path = eio_path(Some(sid));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 1\r\n\r\n3"
    );
    raw_exchange(addr, None, req.as_bytes()).await
}

/// Opens a WebSocket through `addr` at `path` by hand and returns the stream after
/// the 101 response head.
pub async fn ws_connect(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = connect_from(addr, None).await;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .expect("write upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read head");
        assert!(
            n == 1,
            "connection closed during upgrade: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    stream
}

/// Reads one unmasked server frame's payload (small frames only).
pub async fn ws_read_text(stream: &mut TcpStream) -> String {
    let mut hdr = [0u8; 2];
    stream.read_exact(&mut hdr).await.expect("frame header");
    let len = match hdr[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await.expect("ext len");
            u16::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.expect("payload");
    String::from_utf8_lossy(&payload).into_owned()
}

/// Waits until the peer closes the stream (EOF or reset); returns how long it took,
/// or `None` if it stayed open for `limit`.
pub async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(start + limit, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue, // pings and other traffic
        }
    }
}
