//! `tether pool`: N nodes as supervised child processes, the way Node's cluster mode
//! runs workers. A node that dies is started again after a back-off that grows while it
//! keeps dying and resets once it has stayed up; signals are forwarded; on exit every
//! child is stopped.
//!
//! A node given port 0 binds a free port itself and says which on its first line; the
//! supervisor reads it, announces it, and starts the node on that port again after a
//! death, so whoever was told where it is (the demo's tether) still finds it.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_kit::signal::send_signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
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

/// Ports that `n` nodes cannot have.
#[derive(Debug, thiserror::Error)]
#[error("{n} nodes on consecutive ports from {base} would run past port 65535; give a lower first port, or 0 for any free ports")]
pub struct PortsError {
    pub n: usize,
    pub base: u16,
}

/// The ports of `n` nodes: consecutive from `base`, or every one 0 (a free port each)
/// when `base` is 0 — not `1, 2, ...`, which are other services' ports.
pub fn node_ports(n: usize, base: u16) -> Result<Vec<u16>, PortsError> {
    (0..n)
        .map(|i| match base {
            0 => Some(0),
            _ => u16::try_from(i).ok().and_then(|i| base.checked_add(i)),
        })
        .collect::<Option<Vec<u16>>>()
        .ok_or(PortsError { n, base })
}

impl PoolOptions {
    /// `n` nodes, ids `node-1`..., on [`node_ports`]`(n, base_port)`.
    pub fn consecutive(
        exe: PathBuf,
        n: usize,
        base_port: u16,
        args: &[String],
    ) -> Result<PoolOptions, PortsError> {
        Ok(PoolOptions {
            exe,
            nodes: node_ports(n, base_port)?
                .into_iter()
                .enumerate()
                .map(|(i, port)| NodeSpec {
                    id: format!("node-{}", i + 1),
                    port,
                    args: args.to_vec(),
                })
                .collect(),
        })
    }
}

/// A node serving: its id and the port it listens on (the one it picked, if given 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub id: String,
    pub port: u16,
}

/// Runs the pool until `stop` is cancelled, then stops every child.
pub async fn run(opts: PoolOptions, stop: CancellationToken) {
    run_announcing(opts, stop, None).await
}

/// [`run`], sending a [`Listening`] to `announce` each time a node starts serving.
pub async fn run_announcing(
    opts: PoolOptions,
    stop: CancellationToken,
    announce: Option<mpsc::UnboundedSender<Listening>>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for spec in opts.nodes {
        tasks.spawn(supervise(
            opts.exe.clone(),
            spec,
            stop.clone(),
            announce.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

async fn supervise(
    exe: PathBuf,
    spec: NodeSpec,
    stop: CancellationToken,
    announce: Option<mpsc::UnboundedSender<Listening>>,
) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    // The port the node is started on: the one asked for, then the one it picked.
    let port = Arc::new(AtomicU16::new(spec.port));
    loop {
        let started = tokio::time::Instant::now();
        let spec = NodeSpec {
            port: port.load(Ordering::Relaxed),
            ..spec.clone()
        };
        let mut child = match spawn(&exe, &spec, &port, announce.clone()) {
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

fn spawn(
    exe: &PathBuf,
    spec: &NodeSpec,
    port: &Arc<AtomicU16>,
    announce: Option<mpsc::UnboundedSender<Listening>>,
) -> std::io::Result<Child> {
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
        let port = Arc::clone(port);
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(p) = listening_port(&line) else {
                    tracing::info!(node = %id, says = %line, "node output");
                    continue;
                };
                port.store(p, Ordering::Relaxed);
                tracing::info!(node = %id, port = p, "node listening");
                if let Some(tx) = &announce {
                    let _ = tx.send(Listening {
                        id: id.clone(),
                        port: p,
                    });
                }
            }
        });
    }
    Ok(child)
}

/// The port of a node's `{"event":"listening","port":N,...}` line.
fn listening_port(line: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["event"] != "listening" {
        return None;
    }
    v["port"].as_u64().and_then(|p| u16::try_from(p).ok())
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
        let p = PoolOptions::consecutive("tether".into(), 3, 3001, &["--redis".into(), "x".into()])
            .unwrap();
        let ids: Vec<_> = p.nodes.iter().map(|n| (n.id.as_str(), n.port)).collect();
        assert_eq!(ids, [("node-1", 3001), ("node-2", 3002), ("node-3", 3003)]);
        assert_eq!(p.nodes[2].args, ["--redis", "x"]);
    }

    #[test]
    fn base_port_0_gives_every_node_a_free_port_and_the_end_of_the_range_is_refused() {
        assert_eq!(node_ports(3, 0).unwrap(), [0, 0, 0]);
        assert_eq!(node_ports(2, 65534).unwrap(), [65534, 65535]);
        assert_eq!(
            node_ports(3, 65534).unwrap_err().to_string(),
            "3 nodes on consecutive ports from 65534 would run past port 65535; give a lower first port, or 0 for any free ports"
        );
        assert!(node_ports(0, 3001).unwrap().is_empty());
    }

    #[test]
    fn a_node_s_listening_line_gives_its_port() {
        assert_eq!(
            listening_port(r#"{"event":"listening","port":40123,"id":"node-1"}"#),
            Some(40123)
        );
        assert_eq!(listening_port(r#"{"event":"draining"}"#), None);
        assert_eq!(listening_port("listening on 3001"), None);
        assert_eq!(
            listening_port(r#"{"event":"listening","port":70000}"#),
            None
        );
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
            PoolOptions::consecutive(script.clone(), 1, 1, &[]).unwrap(),
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
