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
use tether_node::supervisor::{self, PoolOptions};

use crate::config::ConfigError;
use crate::server::{self, StartError};
use crate::tls::dev_ca::{self, CertError};

/// Where a local Redis is looked for when none is given.
pub const LOCAL_REDIS: &str = "127.0.0.1:6379";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Redis URL; `None`: try [`LOCAL_REDIS`], else run in-process.
    pub redis: Option<String>,
    /// Never look for a local Redis (tests).
    pub no_redis: bool,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// First node port (0: any free ports; in-process only).
    pub base_port: u16,
    pub nodes: usize,
    /// Where the generated certificate goes.
    pub cert_dir: PathBuf,
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
            let base = if opts.base_port == 0 {
                3001
            } else {
                opts.base_port
            };
            let args = vec!["--redis".to_owned(), url.clone()];
            let pool_opts = PoolOptions::consecutive(opts.exe.clone(), opts.nodes, base, &args);
            let list = pool_opts
                .nodes
                .iter()
                .map(|n| (n.id.clone(), SocketAddr::from(([127, 0, 0, 1], n.port))))
                .collect();
            pool = Some(tokio::spawn(supervisor::run(pool_opts, stop.child_token())));
            list
        }
        None => {
            let bus = MemoryBus::new();
            for i in 0..opts.nodes {
                let port = if opts.base_port == 0 {
                    0
                } else {
                    opts.base_port + i as u16
                };
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
    let paths = cert
        .write(&opts.cert_dir)
        .map_err(|cause| DemoError::CertWrite {
            dir: opts.cert_dir.clone(),
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
