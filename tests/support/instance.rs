//! tether itself, in this process, on ephemeral ports; and its admin API.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{raw_exchange, RawResponse};

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
        server_status_at(self.admin.expect("admin listener"), backend, id).await
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

/// The `/status` entry of one server, from the admin API at `admin` (`Null` when it has
/// no such server).
pub async fn server_status_at(admin: SocketAddr, backend: &str, id: &str) -> serde_json::Value {
    let r = admin_request(admin, "GET", "/status").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let status: serde_json::Value = serde_json::from_str(&r.text()).expect("status is JSON");
    status["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["name"] == backend)
        .flat_map(|b| b["servers"].as_array().cloned().unwrap_or_default())
        .find(|s| s["id"] == id)
        .unwrap_or(serde_json::Value::Null)
}

/// One admin request with an empty body.
pub async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> RawResponse {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    raw_exchange(admin, None, req.as_bytes()).await
}

/// One admin request with an empty body and `Authorization: Bearer token`.
pub async fn admin_request_with_token(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> RawResponse {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    raw_exchange(admin, None, req.as_bytes()).await
}

/// Writes `text` to `path` the way editors save: a new file renamed over the old one.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// The address in a `tether listening on http://ADDR` (or `https://`) line of the
/// binary's stdout, and whether it is a TLS listener.
pub fn listening_addr(line: &str) -> Option<(SocketAddr, bool)> {
    let url = line.strip_prefix("tether listening on ")?;
    let (tls, addr) = match url.split_once("://")? {
        ("http", a) => (false, a),
        ("https", a) => (true, a),
        _ => return None,
    };
    Some((addr.trim_end_matches('/').parse().ok()?, tls))
}

/// `tether run` as a child process, as an operator runs it: its stdout and stderr
/// followed line by line (shown if the test fails); killed on drop.
pub struct TetherProcess {
    /// The first listener.
    pub addr: SocketAddr,
    pub stdout: super::StderrTail,
    /// Its log.
    pub log: super::StderrTail,
    child: tokio::process::Child,
}

impl TetherProcess {
    /// Starts `tether run --config path` with `RUST_LOG=rust_log` and waits for its first
    /// listener.
    pub async fn start(path: &Path, rust_log: &str) -> TetherProcess {
        use std::process::Stdio;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["run", "--config"])
            .arg(path)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the tether binary");
        let log = super::StderrTail::follow("tether", child.stderr.take().expect("stderr"));
        let stdout =
            super::StderrTail::follow("tether stdout", child.stdout.take().expect("stdout"));
        let line = stdout
            .wait_for(0, &["tether listening on "], Duration::from_secs(30))
            .await;
        let (addr, _) = listening_addr(&line).unwrap_or_else(|| panic!("{line:?}"));
        TetherProcess {
            addr,
            stdout,
            log,
            child,
        }
    }

    /// The admin listener's address (the config must have one).
    pub async fn admin(&self) -> SocketAddr {
        let line = self
            .stdout
            .wait_for(0, &["tether admin on "], Duration::from_secs(30))
            .await;
        line.trim_start_matches("tether admin on http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Sends `sig` (`TERM`, `INT`, `HUP`) to it, by its pid.
    pub fn signal(&self, sig: &str) {
        tether_kit::signal::send_signal(self.child.id().expect("running"), sig);
    }

    /// Waits for it to exit.
    pub async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("tether exits in time")
            .expect("waiting for tether")
    }
}
