//! `tether demo`: a Socket.IO cluster on a laptop with one command — three nodes, tether
//! in front of them (plain and TLS, with a generated certificate), the admin dashboard,
//! and the chat page. With a Redis (given, or answering on 127.0.0.1:6379) the nodes are
//! child processes sharing it, so one can be killed to watch clients move; without one
//! they run in this process over an in-process bus, needing nothing installed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use tether_node::drivers::memory::MemoryBus;
use tether_node::node::{self, AdapterChoice, NodeError, NodeOptions, RunningNode};
use tether_node::supervisor::{self, PoolOptions, PortsError};

use crate::config::ConfigError;
use crate::server::{self, StartError};
use crate::tls::dev_ca::{self, CertError};

/// Where a local Redis is looked for when none is given.
pub const LOCAL_REDIS: &str = "127.0.0.1:6379";

/// How long child-process nodes get to start serving before the demo gives up on them:
/// tether's config names their ports, which a node given port 0 only says once serving.
const NODES_START: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Redis URL; `None`: try [`LOCAL_REDIS`], else run in-process.
    pub redis: Option<String>,
    /// Never look for a local Redis (tests).
    pub no_redis: bool,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// First node port (0: any free ports).
    pub base_port: u16,
    pub nodes: usize,
    /// Where the generated certificate goes; `None`: [`default_cert_dir`].
    pub cert_dir: Option<PathBuf>,
    /// The `tether` executable, for child-process nodes.
    pub exe: PathBuf,
    /// Announce the addresses as one JSON line (scripts, tests) instead of text.
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("generating the demo certificate: {0}")]
    Cert(CertError),
    #[error("writing the demo certificate into {dir}: {cause}")]
    CertWrite { dir: PathBuf, cause: std::io::Error },
    #[error("starting a node: {0}")]
    Node(NodeError),
    #[error("the nodes' ports: {0}")]
    Ports(PortsError),
    #[error("{} did not start serving within {}s (the log above says why)", .0.join(", "), NODES_START.as_secs())]
    NodesSlow(Vec<String>),
    #[error("the demo config: {0}")]
    Config(ConfigError),
    #[error("starting tether: {0}")]
    Tether(StartError),
    /// A port the demo was told to use (or its default) is taken: say which option
    /// moves it, and that 0 takes any free one.
    #[error("cannot listen on {addr}: {cause}; choose another with {flag} N, or {flag} 0 for any free {what}")]
    PortTaken {
        addr: SocketAddr,
        flag: &'static str,
        what: &'static str,
        cause: std::io::Error,
    },
}

impl DemoError {
    /// tether's own start error, a taken port named by the option that sets it.
    fn starting_tether(e: StartError, opts: &DemoOptions) -> DemoError {
        let (addr, flag, cause) = match e {
            StartError::Bind { addr, cause, .. } if addr == opts.https => {
                (addr, "--tls-port", cause)
            }
            StartError::Bind { addr, cause, .. } => (addr, "--port", cause),
            StartError::AdminBind { addr, cause, .. } => (addr, "--admin-port", cause),
            other => return DemoError::Tether(other),
        };
        DemoError::PortTaken {
            addr,
            flag,
            what: "port",
            cause,
        }
    }

    /// A node's start error, a taken port named by the option that sets it.
    fn starting_node(e: NodeError) -> DemoError {
        match e {
            NodeError::Bind { addr, cause } => DemoError::PortTaken {
                addr,
                flag: "--base-port",
                what: "ports",
                cause,
            },
            other => DemoError::Node(other),
        }
    }
}

// By hand rather than `#[from]`, which would also make each cause the error's `source()`
// while the message already carries it: printed as a chain, it would read twice.
macro_rules! from_cause {
    ($($variant:ident($cause:ty)),*) => {$(
        impl From<$cause> for DemoError {
            fn from(e: $cause) -> DemoError {
                DemoError::$variant(e)
            }
        }
    )*};
}
from_cause!(
    Cert(CertError),
    Node(NodeError),
    Ports(PortsError),
    Config(ConfigError),
    Tether(StartError)
);

/// Whether something answers PING like a Redis at `addr`.
async fn redis_answers(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), probe).await,
        Ok(Some(true))
    )
}

/// Where the demo writes its certificate unless told: a directory of this user's own, so
/// that two users of one machine neither clobber each other's CA nor meet a directory the
/// other made and they cannot write (a fixed `/tmp/tether-demo` did both).
/// `$XDG_CACHE_HOME/tether/demo`, else `~/.cache/tether/demo`, else (no home, as under
/// some service managers) `tether-demo-<uid>` in the temp directory.
pub fn default_cert_dir() -> PathBuf {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    match absolute("XDG_CACHE_HOME").or_else(|| absolute("HOME").map(|h| h.join(".cache"))) {
        Some(cache) => cache.join("tether").join("demo"),
        None => {
            let user = own_uid()
                .map(|u| u.to_string())
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_default();
            std::env::temp_dir().join(format!("tether-demo-{user}"))
        }
    }
}

/// This process's user id, read without `unsafe` (the owner of `/proc/self`).
#[cfg(unix)]
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

#[cfg(not(unix))]
fn own_uid() -> Option<u32> {
    None
}

/// Makes `dir` a directory only this user can enter (it will hold a private key):
/// created with mode 0700, or, found already, checked to be this user's and narrowed to
/// 0700 — in the temp directory another user could have made it first.
#[cfg(unix)]
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(
            "it is not a directory (a symbolic link?); choose another with --cert-dir",
        ));
    }
    if let Some(uid) = own_uid().filter(|&u| u != meta.uid()) {
        return Err(std::io::Error::other(format!(
            "it belongs to another user (uid {}, not {uid}); choose another with --cert-dir",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// The port each of `ids` first says it serves on, in the order of `ids`; or, after
/// [`NODES_START`], the ids still silent.
async fn first_ports(
    ids: &[String],
    mut announced: tokio::sync::mpsc::UnboundedReceiver<supervisor::Listening>,
) -> Result<Vec<u16>, Vec<String>> {
    let mut ports: Vec<Option<u16>> = vec![None; ids.len()];
    let all = async {
        while ports.iter().any(Option::is_none) {
            let Some(l) = announced.recv().await else {
                return;
            };
            if let Some(i) = ids.iter().position(|id| *id == l.id) {
                ports[i].get_or_insert(l.port);
            }
        }
    };
    let _ = tokio::time::timeout(NODES_START, all).await;
    match ports.iter().copied().collect::<Option<Vec<u16>>>() {
        Some(ports) => Ok(ports),
        None => Err(ids
            .iter()
            .zip(&ports)
            .filter(|(_, p)| p.is_none())
            .map(|(id, _)| id.clone())
            .collect()),
    }
}

/// Runs the demo until `stop`; prints what to open.
pub async fn run(opts: DemoOptions, stop: CancellationToken) -> Result<(), DemoError> {
    let redis = match (&opts.redis, opts.no_redis) {
        (Some(url), _) => Some(url.clone()),
        (None, false) if redis_answers(LOCAL_REDIS).await => {
            Some(format!("redis://{LOCAL_REDIS}/?protocol=resp3"))
        }
        _ => None,
    };

    // Nodes: child processes sharing Redis, or in-process over one bus.
    let mut in_process: Vec<RunningNode> = Vec::new();
    let mut pool = None;
    let servers: Vec<(String, SocketAddr)> = match &redis {
        Some(url) => {
            let args = vec!["--redis".to_owned(), url.clone()];
            let pool_opts =
                PoolOptions::consecutive(opts.exe.clone(), opts.nodes, opts.base_port, &args)?;
            let ids: Vec<String> = pool_opts.nodes.iter().map(|n| n.id.clone()).collect();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let pool_stop = stop.child_token();
            let running = tokio::spawn(supervisor::run_announcing(
                pool_opts,
                pool_stop.clone(),
                Some(tx),
            ));
            let ports = tokio::select! {
                ports = first_ports(&ids, rx) => ports,
                _ = stop.cancelled() => {
                    let _ = running.await;
                    return Ok(());
                }
            };
            let ports = match ports {
                Ok(ports) => ports,
                Err(missing) => {
                    pool_stop.cancel();
                    let _ = running.await;
                    return Err(DemoError::NodesSlow(missing));
                }
            };
            pool = Some(running);
            ids.into_iter()
                .zip(ports)
                .map(|(id, port)| (id, SocketAddr::from(([127, 0, 0, 1], port))))
                .collect()
        }
        None => {
            let bus = MemoryBus::new();
            for (i, port) in supervisor::node_ports(opts.nodes, opts.base_port)?
                .into_iter()
                .enumerate()
            {
                let n = node::start(NodeOptions {
                    bind: SocketAddr::from(([127, 0, 0, 1], port)),
                    id: format!("node-{}", i + 1),
                    adapter: AdapterChoice::Memory(Arc::clone(&bus)),
                    ping_interval: None,
                    ping_timeout: None,
                })
                .await
                .map_err(DemoError::starting_node)?;
                in_process.push(n);
            }
            in_process
                .iter()
                .map(|n| (n.id().to_owned(), n.addr()))
                .collect()
        }
    };

    let cert = dev_ca::generate_dev_cert(&["localhost", "127.0.0.1"])?;
    let cert_dir = match &opts.cert_dir {
        Some(dir) => dir.clone(),
        None => default_cert_dir(),
    };
    let written = match opts.cert_dir {
        Some(_) => cert.write(&cert_dir),
        None => private_dir(&cert_dir).and_then(|()| cert.write(&cert_dir)),
    };
    let paths = written.map_err(|cause| DemoError::CertWrite {
        dir: cert_dir.clone(),
        cause,
    })?;

    let mut yaml = format!(
        "listeners:\n  - bind: \"{}\"\n  - bind: \"{}\"\n    tls:\n      certificates:\n        - {{ cert: \"{}\", key: \"{}\", default: true }}\n\
         admin:\n  bind: \"{}\"\nbackends:\n  chat:\n    health: {{ path: /health, interval: 1s, timeout: 1s, rise: 1, fall: 2 }}\n    servers:\n",
        opts.http,
        opts.https,
        paths.cert.display(),
        paths.key.display(),
        opts.admin
    );
    for (id, addr) in &servers {
        yaml.push_str(&format!("      - {{ id: {id}, addr: \"{addr}\" }}\n"));
    }
    let config = crate::config::parse(&yaml, std::path::Path::new("<demo>"))?;
    let tether = server::bind(config)
        .await
        .map_err(|e| DemoError::starting_tether(e, &opts))?;
    let addrs = tether.local_addrs();
    let admin = tether.admin_addr();
    let (http, https) = (addrs[0], addrs[1]);
    if opts.json {
        println!(
            "{}",
            serde_json::json!({ "event": "demo", "http": http.to_string(), "https": https.to_string(),
                "admin": admin.map(|a| a.to_string()), "ca": paths.ca.display().to_string(),
                "nodes": servers.iter().map(|(i, a)| serde_json::json!({"id": i, "addr": a.to_string()})).collect::<Vec<_>>() })
        );
    } else {
        println!();
        println!(
            "  tether demo: {} Socket.IO nodes behind tether ({})",
            servers.len(),
            if redis.is_some() {
                "Redis adapter, child processes"
            } else {
                "in-process adapter, no Redis needed"
            }
        );
        println!("  chat page    http://localhost:{}/", http.port());
        println!(
            "  over TLS     https://localhost:{}/   (trust {} or accept the warning)",
            https.port(),
            paths.ca.display()
        );
        if let Some(a) = admin {
            println!("  dashboard    http://{a}/");
        }
        for (id, addr) in &servers {
            println!("  {id}       http://{addr}/");
        }
        if redis.is_some() {
            println!("  kill a node's process (its pid is in the log) and watch its clients move; the pool restarts it");
        } else {
            println!(
                "  take a node out: curl -X POST http://{}/backends/chat/servers/node-2/maint",
                admin.map_or(opts.admin, |a| a)
            );
        }
    }
    let token = tether.shutdown_token();
    let run = tokio::spawn(tether.run());
    stop.cancelled().await;
    token.cancel();
    let _ = run.await;
    for n in in_process {
        n.stop().await;
    }
    if let Some(p) = pool {
        let _ = p.await;
    }
    Ok(())
}
