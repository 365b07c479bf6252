//! A throwaway `redis-server` for tests: on a unix socket in a temporary directory (and,
//! when asked, on a free loopback port too, for clients that speak TCP only), killed on
//! drop, and able to be killed and started again on the same socket and port — what an
//! outage test needs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

/// How long a starting server may take to answer PING.
const START_LIMIT: Duration = Duration::from_secs(10);

pub struct TestRedis {
    child: Option<Child>,
    /// The unix socket it listens on.
    pub socket: PathBuf,
    /// Loopback TCP port, or 0 when it listens on the unix socket only.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// On a unix socket only.
    pub async fn start() -> TestRedis {
        Self::start_on(0).await
    }

    /// On a free loopback port as well.
    pub async fn start_tcp() -> TestRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        Self::start_on(port).await
    }

    async fn start_on(port: u16) -> TestRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = TestRedis {
            child: None,
            socket: dir.path().join("redis.sock"),
            port,
            dir,
        };
        r.restart().await;
        r
    }

    /// `redis+unix://…/redis.sock`, for clients that speak unix sockets.
    pub fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// The loopback URL in RESP3 (what socketioxide-redis needs); the server must have
    /// been started with [`TestRedis::start_tcp`].
    pub fn url(&self) -> String {
        assert!(self.port != 0, "start the Redis with start_tcp()");
        format!("redis://127.0.0.1:{}/?protocol=resp3", self.port)
    }

    /// Starts the server (again, after [`TestRedis::kill`]) on the same socket and port,
    /// and waits until it answers PING.
    pub async fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&self.socket)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed: run `bash tests/setup.sh`");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        while !self.answers_ping().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer on {} within {START_LIMIT:?}",
                self.socket.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn answers_ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(&self.socket).await else {
            return false;
        };
        let mut reply = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut reply).await.is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub async fn stop(mut self) {
        self.kill().await;
    }

    /// Runs `redis-cli` against this server and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("redis-cli (installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A throwaway Redis Cluster: `n` primaries (no replicas) on free loopback ports, slots
/// spread by `redis-cli --cluster create`; every server killed on drop.
pub struct TestCluster {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start(n: usize) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ports = Vec::with_capacity(n);
        // Bound and released together, so no two of them get the same port.
        let holders: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
            .collect();
        for h in &holders {
            ports.push(h.local_addr().expect("local addr").port());
        }
        drop(holders);
        let mut children = Vec::with_capacity(n);
        for port in &ports {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server must be installed: run `bash tests/setup.sh`");
            children.push(child);
        }
        let c = TestCluster {
            children,
            ports,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        for port in &c.ports {
            while c.cli(*port, &["PING"]).trim() != "PONG" {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cluster node {port} did not start"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for port in &c.ports {
            while !c
                .cli(*port, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cluster never became ok on {port}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        c
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Runs `redis-cli` against one node (`-c`: following redirections).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-c", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.kill().await;
        }
    }
}
