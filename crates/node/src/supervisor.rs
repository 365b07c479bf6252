//! `tether pool`: N nodes as supervised child processes, the way Node's cluster mode
//! runs workers. A node that dies is started again after a back-off that grows while it
//! keeps dying and resets once it has stayed up; signals are forwarded; on exit every
//! child is stopped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tether_kit::signal::send_signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use tether_kit::Backoff;

/// First wait before restarting a node that died.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest wait between restarts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A node up this long is healthy again: its next death restarts it at once.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long children get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What one supervised node is started with.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: String,
    pub port: u16,
    /// Extra arguments for `tether node` (adapter, Redis URL, bind).
    pub args: Vec<String>,
}

/// A pool of `tether node` children.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// The `tether` executable (normally `std::env::current_exe()`).
    pub exe: PathBuf,
    pub nodes: Vec<NodeSpec>,
}

impl PoolOptions {
    /// `n` nodes on consecutive ports from `base_port`, ids `node-1`...
    pub fn consecutive(exe: PathBuf, n: usize, base_port: u16, args: &[String]) -> PoolOptions {
        PoolOptions {
            exe,
            nodes: (0..n)
                .map(|i| NodeSpec {
                    id: format!("node-{}", i + 1),
                    port: base_port.saturating_add(i as u16),
                    args: args.to_vec(),
                })
                .collect(),
        }
    }
}

/// Runs the pool until `stop` is cancelled, then stops every child.
pub async fn run(opts: PoolOptions, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for spec in opts.nodes {
        tasks.spawn(supervise(opts.exe.clone(), spec, stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn supervise(exe: PathBuf, spec: NodeSpec, stop: CancellationToken) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    loop {
        let started = tokio::time::Instant::now();
        let mut child = match spawn(&exe, &spec) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(node = %spec.id, error = %e, "cannot start node");
                if wait_or_stop(backoff.next_delay(), &stop).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(node = %spec.id, port = spec.port, pid = child.id(), "node started");
        let status = tokio::select! {
            s = child.wait() => s,
            _ = stop.cancelled() => {
                terminate(&mut child).await;
                return;
            }
        };
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(node = %spec.id, status = ?status.ok(), retry_in = ?delay, "node exited; restarting");
        if wait_or_stop(delay, &stop).await {
            return;
        }
    }
}

fn spawn(exe: &PathBuf, spec: &NodeSpec) -> std::io::Result<Child> {
    let mut child = Command::new(exe)
        .arg("node")
        .args(["--port", &spec.port.to_string(), "--id", &spec.id])
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    // The node announces itself on stdout (a JSON line for whoever started it): into the
    // log, labelled, not onto the pool's own stdout, where it would land in the middle of
    // the demo's text for people.
    if let Some(out) = child.stdout.take() {
        let id = spec.id.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(node = %id, says = %line, "node output");
            }
        });
    }
    Ok(child)
}

/// Sleeps `d`; true if `stop` fired first.
async fn wait_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`].
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        send_signal(pid, "TERM");
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_nodes_get_ids_and_ports_in_order() {
        let p = PoolOptions::consecutive("tether".into(), 3, 3001, &["--redis".into(), "x".into()]);
        let ids: Vec<_> = p.nodes.iter().map(|n| (n.id.as_str(), n.port)).collect();
        assert_eq!(ids, [("node-1", 3001), ("node-2", 3002), ("node-3", 3003)]);
        assert_eq!(p.nodes[2].args, ["--redis", "x"]);
    }

    #[tokio::test]
    async fn a_dying_child_is_restarted_and_stop_ends_the_pool() {
        // A script stands in for `tether node`: it records each start and exits 1 at
        // once, over and over — a crashing node.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("starts");
        let script = dir.path().join("fake-tether");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho x >> {}\nexit 1\n", marker.display()),
        )
        .unwrap();
        let _ = std::process::Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status();
        let stop = CancellationToken::new();
        let pool = tokio::spawn(run(
            PoolOptions::consecutive(script.clone(), 1, 1, &[]),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(3), pool)
            .await
            .expect("pool stops")
            .unwrap();
        let starts = std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .count();
        // 0 ms, +200, +400 (then +800 is past 1.2 s): three starts, back-off growing.
        assert!((2..=4).contains(&starts), "{starts} starts");
    }
}
