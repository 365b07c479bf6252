//! Small builders for integration tests: a real `redis-server`, real Node `socket.io`
//! nodes, tether itself on ephemeral ports, a `socket.io-client` swarm, and a raw HTTP
//! client that can choose its source address. Every listener binds port 0 (Redis
//! listens on a unix socket only).

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn node_dir() -> PathBuf {
    repo().join("tests/node")
}

/// Fails loudly when the Node packages are missing: the test command installs them.
fn require_node_modules() {
    let dir = node_dir().join("node_modules/socket.io");
    assert!(
        dir.exists(),
        "Node test packages are not installed: run `bash tests/setup.sh` (the README's test command does)"
    );
}

/// Heavy real-peer scenarios share two cores; running them one at a time keeps their
/// timing honest.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub use tether_testkit::TestRedis as Redis;

/// One Node `socket.io` 4.8 server (tests/node/server.js), killed on drop.
pub struct NodeServer {
    pub id: String,
    pub addr: SocketAddr,
    child: Child,
    stdin: Option<tokio::process::ChildStdin>,
}

impl NodeServer {
    pub async fn spawn(id: &str, redis: Option<&Redis>, extra: &[&str]) -> NodeServer {
        require_node_modules();
        let mut cmd = Command::new("node");
        cmd.arg(node_dir().join("server.js")).args(["--id", id]);
        if let Some(r) = redis {
            cmd.arg("--redis-socket").arg(&r.socket);
        }
        cmd.args(extra);
        Self::spawn_cmd(id, cmd).await
    }

    /// A bundled Rust node (`tether node`) on a free port.
    pub async fn spawn_rust(id: &str, args: &[&str]) -> NodeServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.args(["node", "--port", "0", "--id", id]).args(args);
        Self::spawn_cmd(id, cmd).await
    }

    async fn spawn_cmd(id: &str, mut cmd: Command) -> NodeServer {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("node must be installed");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("node {id} did not start in 20 s"))
            .expect("reading node stdout")
            .unwrap_or_else(|| panic!("node {id} exited before listening"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("listening line is JSON");
        let port = v["port"].as_u64().expect("port") as u16;
        // Keep draining stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        NodeServer {
            id: id.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stdin,
        }
    }

    /// Sends a command line to the node (e.g. `health fail`, `health ok`).
    pub async fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("node stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to node");
        stdin.flush().await.expect("flush node stdin");
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends a signal to this node (by its pid) — `KILL`, `STOP`, `CONT`.
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// Three nodes sharing a real Redis through `@socket.io/redis-adapter`.
pub struct Cluster {
    pub redis: Redis,
    pub nodes: Vec<NodeServer>,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        let redis = Redis::start().await;
        let mut nodes = Vec::new();
        for i in 1..=n {
            nodes.push(NodeServer::spawn(&format!("node-{i}"), Some(&redis), &[]).await);
        }
        Cluster { redis, nodes }
    }

    /// A tether config for these nodes; `backend_extra` is YAML spliced into the
    /// backend (e.g. `"balance: round_robin"`), each line indented by the caller's
    /// text as given.
    pub fn config(&self, backend_extra: &str) -> String {
        config_for(&self.nodes, backend_extra)
    }
}

pub fn config_for(nodes: &[NodeServer], backend_extra: &str) -> String {
    let mut yaml = String::from("listeners:\n  - bind: \"127.0.0.1:0\"\nbackends:\n  sockets:\n");
    for line in backend_extra.lines().filter(|l| !l.trim().is_empty()) {
        yaml.push_str(&format!("    {line}\n"));
    }
    yaml.push_str("    servers:\n");
    for n in nodes {
        yaml.push_str(&format!(
            "      - {{ id: {}, addr: \"{}\" }}\n",
            n.id, n.addr
        ));
    }
    yaml
}

/// tether running in this process, stopped on drop.
pub struct TetherHandle {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub store: std::sync::Arc<tether::snapshot::Store>,
    pub runtime: std::sync::Arc<tether::server::Runtime>,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TetherHandle {
    pub async fn start(yaml: &str) -> TetherHandle {
        let config = tether::config::parse(yaml, Path::new("<test>"))
            .unwrap_or_else(|e| panic!("test config rejected: {e}\n{yaml}"));
        Self::start_config(config).await
    }

    /// From a file, as `tether run --config FILE` does: it reloads when the file changes.
    pub async fn start_file(path: &Path) -> TetherHandle {
        let config =
            tether::config::load(path).unwrap_or_else(|e| panic!("test config rejected: {e}"));
        Self::start_config(config).await
    }

    async fn start_config(config: tether::config::Config) -> TetherHandle {
        let server = tether::server::bind(config).await.expect("bind");
        let addr = server.local_addrs()[0];
        let admin = server.admin_addr();
        let token = server.shutdown_token();
        let store = server.store().clone();
        let runtime = server.runtime().clone();
        let task = tokio::spawn(server.run());
        TetherHandle {
            addr,
            admin,
            store,
            runtime,
            token,
            task: Some(task),
        }
    }

    /// `GET /status` of the admin API, as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let r = admin_request(self.admin.expect("admin listener"), "GET", "/status").await;
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_str(&r.text()).expect("status is JSON")
    }

    /// The `/status` entry of one server.
    pub async fn server_status(&self, backend: &str, id: &str) -> serde_json::Value {
        let status = self.status().await;
        status["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["name"] == backend)
            .flat_map(|b| b["servers"].as_array().cloned().unwrap_or_default())
            .find(|s| s["id"] == id)
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets connections finish, and waits for the end.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for TetherHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// One admin request with an empty body.
pub async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> RawResponse {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    raw_exchange(admin, None, req.as_bytes()).await
}

/// Writes `text` to `path` the way editors save: a new file renamed over the old one.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// tests/node/soak.js running: a long-lived swarm that keeps emitting, reconnects, and
/// reports on request.
pub struct Soak {
    child: Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Soak {
    /// Starts the soak and waits for its `ready` line.
    pub async fn start(options: serde_json::Value) -> (Soak, serde_json::Value) {
        Self::start_script("soak.js", options).await
    }

    /// Another long-running script of tests/node speaking the same line protocol
    /// (`ready` first; `report`/`stop` on stdin; `final` last), e.g. crossnode.js.
    pub async fn start_script(
        script: &str,
        options: serde_json::Value,
    ) -> (Soak, serde_json::Value) {
        Self::start_script_until(script, options, "ready").await
    }

    /// Starts a script and waits for its first `event` line.
    pub async fn start_script_until(
        script: &str,
        options: serde_json::Value,
        event: &str,
    ) -> (Soak, serde_json::Value) {
        require_node_modules();
        let mut child = Command::new("node")
            .arg(node_dir().join(script))
            .arg(options.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node soak");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut soak = Soak {
            child,
            stdin,
            lines,
        };
        let ready = soak.next_event(event, Duration::from_secs(90)).await;
        (soak, ready)
    }

    /// Sends a line to the script's stdin.
    pub async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("script stdin");
    }

    /// Waits for the next line whose `event` is `event`.
    pub async fn next_event(&mut self, event: &str, limit: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("soak: no {event} line in {limit:?}"))
                .expect("soak stdout")
                .unwrap_or_else(|| panic!("soak exited before its {event} line"));
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == event {
                    return v;
                }
            }
        }
    }

    /// The counters now.
    pub async fn report(&mut self) -> serde_json::Value {
        self.stdin.write_all(b"report\n").await.expect("soak stdin");
        self.next_event("report", Duration::from_secs(20)).await
    }

    /// Stops the soak and returns its final report.
    pub async fn finish(mut self) -> serde_json::Value {
        let _ = self.stdin.write_all(b"stop\n").await;
        let v = self.next_event("final", Duration::from_secs(30)).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        v
    }
}

/// Runs a one-shot script of tests/node (e.g. crossnode.js in `rooms` mode) and returns
/// its last JSON line.
pub async fn node_script(script: &str, options: serde_json::Value) -> serde_json::Value {
    require_node_modules();
    let out = Command::new("node")
        .arg(node_dir().join(script))
        .arg(options.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{script} printed no report ({:?}):\n{stdout}", out.status));
    serde_json::from_str(last).expect("report is JSON")
}

/// Runs tests/node/swarm.js with `options` and returns its JSON report.
pub async fn swarm(options: serde_json::Value) -> serde_json::Value {
    require_node_modules();
    let out = Command::new("node")
        .arg(node_dir().join("swarm.js"))
        .arg(options.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node swarm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "swarm printed no report (status {:?}):\n{stdout}",
                out.status
            )
        });
    serde_json::from_str(last).expect("swarm report is JSON")
}

/// max/mean of the per-node counts in a swarm report.
pub fn max_over_mean(report: &serde_json::Value, nodes: usize) -> f64 {
    let per: Vec<f64> = (1..=nodes)
        .map(|i| {
            report["perNode"][format!("node-{i}")]
                .as_f64()
                .unwrap_or(0.0)
        })
        .collect();
    let total: f64 = per.iter().sum();
    let max = per.iter().cloned().fold(0.0, f64::max);
    max / (total / nodes as f64)
}

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
