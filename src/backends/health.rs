//! Health: what active probes and live traffic say about a server.
//!
//! Active checks are one small task per checked server, probing on its own clock. A
//! probe's verdict only moves the server's [`Health`] atomic, which the request path
//! reads on its next placement; nothing is rebuilt on a flip. Tasks are keyed by
//! (backend, server id), so a reload that keeps a server keeps its task, its streak of
//! passes or failures and its health; only a changed address or check config restarts
//! the task (still keeping the health).
//!
//! Passive health ([`note_failure`]) counts failed exchanges on live traffic, so a server
//! nobody probes is still taken out when it stops answering.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ahash::AHashMap;
use http::uri::Authority;
use tether_kit::throttle::Throttle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::condition::Passive;
use super::{Backend, Health, Server, ServerStats};
use crate::config::{HealthConfig, HealthMode, SendProxy};
use crate::telemetry;
use crate::tls::TlsUpstream;
use crate::upstream::{dial, Blame, Dialed, Meters, Peer, ProxyLine, UpstreamError};

/// The most of a health response read: the status line is all that matters.
const MAX_RESPONSE_HEAD: usize = 1024;

type Key = (Arc<str>, Arc<str>);

struct Running {
    config: HealthConfig,
    addr: Authority,
    tls: Option<Arc<TlsUpstream>>,
    send_proxy: Option<SendProxy>,
    stop: CancellationToken,
}

fn same_tls(a: &Option<Arc<TlsUpstream>>, b: &Option<Arc<TlsUpstream>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Owns the probe tasks; [`HealthChecks::sync`] after every snapshot change.
#[derive(Default)]
pub struct HealthChecks {
    tasks: Mutex<AHashMap<Key, Running>>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.tasks.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("HealthChecks").field("tasks", &n).finish()
    }
}

impl HealthChecks {
    /// Starts checks for servers that need one, stops those no longer wanted: called
    /// with the backends of every new routing snapshot.
    pub fn sync(&self, backends: &[Backend]) {
        let mut tasks = tether_kit::lock(&self.tasks);
        let mut wanted: AHashMap<Key, ()> = AHashMap::new();
        for backend in backends {
            let Some(cfg) = &backend.health else { continue };
            for server in &backend.servers {
                let key: Key = (Arc::clone(&backend.name), Arc::clone(&server.id));
                wanted.insert(key.clone(), ());
                if let Some(r) = tasks.get(&key) {
                    if r.config == *cfg
                        && r.addr == server.addr
                        && same_tls(&r.tls, &backend.tls)
                        && r.send_proxy == backend.send_proxy
                    {
                        continue;
                    }
                    r.stop.cancel();
                }
                let stop = CancellationToken::new();
                let probe = Probe {
                    config: cfg.clone(),
                    id: Arc::clone(&server.id),
                    addr: server.addr.clone(),
                    tls: backend.tls.clone(),
                    send_proxy: backend.send_proxy,
                };
                tokio::spawn(run(probe, Arc::clone(&server.stats), stop.clone()));
                tasks.insert(
                    key,
                    Running {
                        config: cfg.clone(),
                        addr: server.addr.clone(),
                        tls: backend.tls.clone(),
                        send_proxy: backend.send_proxy,
                        stop,
                    },
                );
            }
        }
        tasks.retain(|key, r| {
            let keep = wanted.contains_key(key);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
    }

    pub fn stop_all(&self) {
        let mut tasks = tether_kit::lock(&self.tasks);
        for (_, r) in tasks.drain() {
            r.stop.cancel();
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// One server's check: what to probe and how to reach it.
pub struct Probe {
    pub config: HealthConfig,
    pub id: Arc<str>,
    pub addr: Authority,
    /// The backend's TLS, when its servers speak only TLS.
    pub tls: Option<Arc<TlsUpstream>>,
    /// A probe's PROXY header says LOCAL (v2) or UNKNOWN (v1): the connection is
    /// tether's own.
    pub send_proxy: Option<SendProxy>,
}

impl Probe {
    fn peer(&self) -> Peer<'_> {
        Peer {
            id: &self.id,
            addr: &self.addr,
            tls: self.tls.as_deref(),
            proxy: self.send_proxy.map(|version| ProxyLine {
                version,
                endpoints: None,
            }),
            // A probe's connections are not traffic: measured as the probe's time.
            meters: &NO_METERS,
        }
    }
}

static NO_METERS: Meters = Meters::NONE;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("write: {0}")]
    Write(std::io::Error),
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("status {got}, expected {expected}{}", not_found_hint(*.got, .path))]
    Status {
        got: u16,
        expected: u16,
        /// The path probed, for the hint a 404 gets.
        path: String,
    },
    #[error("not an HTTP response")]
    NotHttp,
}

/// A 404 is most often a server without a health route at all: a stock socket.io server
/// serves `/socket.io/` and nothing else. Said in the log line that marks it down, since
/// that is where a first-time user meets it, with every new session answered 503.
fn not_found_hint(got: u16, path: &str) -> String {
    if got == 404 {
        format!(" (does the server answer GET {path}? use health.mode: tcp otherwise)")
    } else {
        String::new()
    }
}

async fn run(p: Probe, stats: Arc<ServerStats>, stop: CancellationToken) {
    let cfg = &p.config;
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let started = std::time::Instant::now();
        let verdict = tokio::select! {
            _ = stop.cancelled() => return,
            v = probe(&p) => v,
        };
        stats
            .metrics
            .probe_duration
            .record(started.elapsed().as_secs_f64());
        let condition = &stats.condition;
        match verdict {
            Ok(()) => {
                passes += 1;
                fails = 0;
                // A server never checked needs one pass; one that was down needs `rise`.
                let needed = match condition.health() {
                    Health::Unknown => 1,
                    _ => cfg.rise,
                };
                if condition.health() != Health::Up && passes >= needed {
                    flip(&stats, Health::Up, "probe passed");
                }
            }
            Err(ProbeError::Connect(e)) if e.blame() == Blame::Local => {
                // Out of descriptors or memory here: says nothing about the server.
                metrics::counter!(telemetry::LOCAL_SHORTAGES, "what" => "health probe")
                    .increment(1);
                tracing::debug!(backend = %stats.backend, server = %stats.id, error = %e, "health probe skipped: local shortage");
            }
            Err(why) => {
                fails += 1;
                passes = 0;
                if condition.health() != Health::Down && fails >= cfg.fall {
                    flip(&stats, Health::Down, &why.to_string());
                }
            }
        }
    }
}

/// Records a health change once: log line, metric.
pub fn flip(stats: &ServerStats, to: Health, why: &str) {
    let Some(from) = stats.condition.set_health(to) else {
        return;
    };
    match to {
        Health::Up => {
            tracing::info!(backend = %stats.backend, server = %stats.id, from = from.as_str(), "server up")
        }
        _ => {
            tracing::warn!(backend = %stats.backend, server = %stats.id, from = from.as_str(), reason = why, "server down")
        }
    }
    count_flip(stats, to);
}

fn count_flip(stats: &ServerStats, to: Health) {
    metrics::counter!(
        telemetry::HEALTH_FLIPS,
        "backend" => stats.backend.to_string(),
        "server" => stats.id.to_string(),
        "to" => to.as_str(),
    )
    .increment(1);
}

/// Weighs a failed exchange with `server` on live traffic (passive health). What it can
/// say depends on whose doing it was: nothing when it was the client's or a shortage in
/// this process; a refused connection counts towards marking the server down (its
/// process is gone); anything else slow or broken on the server's side towards avoiding
/// it for new sessions, its established sessions untouched.
pub fn note_failure(backend: &Backend, server: &Server, e: &UpstreamError) {
    if let Some(kind) = e.connect_kind() {
        metrics::counter!(telemetry::CONNECT_ERRORS, "backend" => backend.name.to_string(),
            "server" => server.id.to_string(), "kind" => kind)
        .increment(1);
    }
    let blame = e.blame();
    match blame {
        Blame::Client => return,
        Blame::Local => {
            metrics::counter!(telemetry::LOCAL_SHORTAGES, "what" => "upstream connect")
                .increment(1);
            static LOG: Throttle = Throttle::new(Duration::from_secs(1));
            if let Some(suppressed) = LOG.allow() {
                tracing::warn!(backend = %backend.name, server = %server.id, error = %e, suppressed, "out of a local resource; not held against the server");
            }
            return;
        }
        Blame::Gone | Blame::Unwell => {}
    }
    let stats = &server.stats;
    let fall = backend.health.as_ref().map(|h| h.fall);
    match stats.condition.record_failure(blame == Blame::Gone, fall) {
        None => {}
        Some(Passive::Down) => {
            tracing::warn!(backend = %backend.name, server = %server.id, error = %e, "server marked down by live traffic: it refuses connections");
            count_flip(stats, Health::Down);
        }
        Some(Passive::Avoided(for_)) => {
            tracing::warn!(backend = %backend.name, server = %server.id, error = %e, avoid_for = ?for_, "server avoided for new sessions by live traffic; its sessions go on");
            metrics::counter!(
                telemetry::PASSIVE_AVOIDS,
                "backend" => backend.name.to_string(),
                "server" => server.id.to_string(),
            )
            .increment(1);
        }
    }
}

/// A good exchange with `server`: its streak of failures is over.
pub fn note_success(server: &Server) {
    server.stats.condition.record_success();
}

/// One probe, bounded by the check's timeout.
pub async fn probe(p: &Probe) -> Result<(), ProbeError> {
    let cfg = &p.config;
    match tokio::time::timeout(cfg.timeout, probe_inner(p)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(cfg.timeout)),
    }
}

async fn probe_inner(p: &Probe) -> Result<(), ProbeError> {
    match dial(p.peer(), p.config.timeout).await? {
        Dialed::Plain(s) => probe_over(s, &p.config.mode, &p.addr).await,
        Dialed::Tls(s) => probe_over(s, &p.config.mode, &p.addr).await,
    }
}

async fn probe_over<IO>(
    mut stream: IO,
    mode: &HealthMode,
    addr: &Authority,
) -> Result<(), ProbeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (path, expect) = match mode {
        HealthMode::Tcp => return Ok(()),
        HealthMode::Http {
            path,
            expect_status,
        } => (path, *expect_status),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tether-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(ProbeError::Write)?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_RESPONSE_HEAD {
        let n = stream.read(&mut buf).await.map_err(ProbeError::Read)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    match status_of(&head) {
        Some(s) if s == expect => Ok(()),
        Some(got) => Err(ProbeError::Status {
            got,
            expected: expect,
            path: path.clone(),
        }),
        None => Err(ProbeError::NotHttp),
    }
}

/// The status code of an HTTP/1.x status line.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_line_is_read_and_garbage_is_refused() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_of(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b""), None);
    }

    fn cfg(mode: HealthMode) -> HealthConfig {
        HealthConfig {
            mode,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 2,
        }
    }

    async fn answer_with(status: &'static str) -> Authority {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        addr.to_string().parse().unwrap()
    }

    #[tokio::test]
    async fn http_probe_checks_the_status() {
        let http = |p: &str| {
            cfg(HealthMode::Http {
                path: p.into(),
                expect_status: 200,
            })
        };
        let p = |config, addr| Probe {
            config,
            id: "s".into(),
            addr,
            tls: None,
            send_proxy: None,
        };
        assert!(probe(&p(http("/health"), answer_with("200 OK").await))
            .await
            .is_ok());
        let err = probe(&p(http("/health"), answer_with("503 Nope").await)).await;
        assert_eq!(err.unwrap_err().to_string(), "status 503, expected 200");
    }

    #[tokio::test]
    async fn a_404_asks_whether_the_server_has_the_path_and_points_at_tcp_checks() {
        let p = Probe {
            config: cfg(HealthMode::Http {
                path: "/healthz".into(),
                expect_status: 200,
            }),
            id: "s".into(),
            addr: answer_with("404 Not Found").await,
            tls: None,
            send_proxy: None,
        };
        assert_eq!(
            probe(&p).await.unwrap_err().to_string(),
            "status 404, expected 200 (does the server answer GET /healthz? use health.mode: tcp otherwise)"
        );
    }

    #[tokio::test]
    async fn tcp_probe_fails_on_a_closed_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Authority = l.local_addr().unwrap().to_string().parse().unwrap();
        let p = Probe {
            config: cfg(HealthMode::Tcp),
            id: "s".into(),
            addr,
            tls: None,
            send_proxy: None,
        };
        assert!(probe(&p).await.is_ok());
        drop(l);
        assert!(probe(&p).await.is_err());
    }

    #[tokio::test]
    async fn checker_flips_down_after_fall_and_up_after_rise() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Authority = l.local_addr().unwrap().to_string().parse().unwrap();
        let port = l.local_addr().unwrap();
        drop(l);
        let stats = Arc::new(ServerStats::new("b".into(), "s".into()));
        let stop = CancellationToken::new();
        let p = Probe {
            config: cfg(HealthMode::Tcp),
            id: "s".into(),
            addr,
            tls: None,
            send_proxy: None,
        };
        tokio::spawn(run(p, Arc::clone(&stats), stop.clone()));
        let wait_for = |want: Health| {
            let stats = Arc::clone(&stats);
            async move {
                for _ in 0..100 {
                    if stats.condition.health() == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                false
            }
        };
        assert!(wait_for(Health::Down).await, "closed port marks it down");
        let _l = TcpListener::bind(port).await.unwrap();
        assert!(wait_for(Health::Up).await, "open again: up after rise");
        stop.cancel();
    }
}
