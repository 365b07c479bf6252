//! Real Node `socket.io` 4.8 servers (tests/node/server.js) and the bundled Rust nodes
//! (`tether node`), as child processes killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::{repo, ConfigBuilder, StderrTail, TestRedis};

pub(super) fn node_dir() -> PathBuf {
    repo().join("tests/node")
}

/// Fails loudly when the Node packages are missing: the test command installs them.
pub(super) fn require_node_modules() {
    let dir = node_dir().join("node_modules/socket.io");
    assert!(
        dir.exists(),
        "Node test packages are not installed: run `bash tests/setup.sh` (the README's test command does)"
    );
}

/// One Node `socket.io` 4.8 server (tests/node/server.js), killed on drop.
pub struct NodeServer {
    pub id: String,
    pub addr: SocketAddr,
    child: Child,
    stdin: Option<tokio::process::ChildStdin>,
    _stderr: StderrTail,
}

impl NodeServer {
    pub async fn spawn(id: &str, redis: Option<&TestRedis>, extra: &[&str]) -> NodeServer {
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
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("node must be installed");
        let stdin = child.stdin.take();
        let stderr = StderrTail::follow(id, child.stderr.take().expect("piped stderr"));
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
            _stderr: stderr,
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
    pub redis: TestRedis,
    pub nodes: Vec<NodeServer>,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        let redis = TestRedis::start().await;
        let mut nodes = Vec::new();
        for i in 1..=n {
            nodes.push(NodeServer::spawn(&format!("node-{i}"), Some(&redis), &[]).await);
        }
        Cluster { redis, nodes }
    }

    /// A tether config for these nodes: backend `sockets`, one plain listener.
    pub fn config(&self) -> ConfigBuilder {
        sockets(&self.nodes)
    }
}

/// A tether config with one backend, `sockets`, holding `nodes` (more can be added to
/// the builder), and one plain listener on a free port.
pub fn sockets(nodes: &[NodeServer]) -> ConfigBuilder {
    nodes
        .iter()
        .fold(ConfigBuilder::new().backend("sockets"), |b, n| {
            b.server(&n.id, n.addr)
        })
}
