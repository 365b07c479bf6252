//! The `socket.io-client` scripts of tests/node: a long-running swarm speaking a line
//! protocol on stdin/stdout (soak.js, crossnode.js), and one-shot ones (swarm.js).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::nodes::{node_dir, require_node_modules};
use super::StderrTail;

/// tests/node/soak.js running: a long-lived swarm that keeps emitting, reconnects, and
/// reports on request.
pub struct Soak {
    child: Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _stderr: StderrTail,
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
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node soak");
        let stdin = child.stdin.take().expect("stdin");
        let stderr = StderrTail::follow(script, child.stderr.take().expect("stderr"));
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut soak = Soak {
            child,
            stdin,
            lines,
            _stderr: stderr,
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
        .kill_on_drop(true)
        .output()
        .await
        .expect("node script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "{script} printed no report ({:?}):\n{stdout}\nstderr:\n{stderr}",
                out.status
            )
        });
    serde_json::from_str(last).expect("report is JSON")
}

/// Runs tests/node/swarm.js with `options` and returns its JSON report.
pub async fn swarm(options: serde_json::Value) -> serde_json::Value {
    node_script("swarm.js", options).await
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
