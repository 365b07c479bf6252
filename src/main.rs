//! The `tether` command: parse arguments, load the config, run. Everything else lives
//! in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

const DEFAULT_CONFIG: &str = "conf/tether.yaml";

/// jemalloc rather than the system allocator: glibc keeps what a burst of connections
/// (a flood, a reconnect storm) allocated in its per-thread arenas long after they are
/// gone, while jemalloc's background thread returns unused pages to the system within
/// a second or two (its decay: 1 s, set in `main` through `tether-alloc`, where
/// jemalloc's own 10 s kept a burst's set-up buffers resident that long), so a tether's
/// memory follows the connections it holds.
#[cfg(all(unix, not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "A sticky-session load balancer for Socket.IO / Engine.IO clusters"
)]
struct Cli {
    /// How logs are written on stderr: lines for people, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormatArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Upgrade without downtime: take over the listening sockets and sessions of the
        /// tether listening on this Unix socket (if any), tell it to drain, and listen
        /// there for the next one (Unix only).
        #[arg(long, value_name = "PATH")]
        takeover: Option<PathBuf>,
    },
    /// Validate a config file: exit 0 if it is good, else print file:line:column and why.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Read an nginx, HAProxy or Kubernetes ingress-nginx config and print an equivalent,
    /// commented tether config on stdout; what cannot be carried over is listed on stderr,
    /// each with the reason.
    Import {
        /// The config to import.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Its format [default: guessed from the content].
        #[arg(long, value_enum)]
        from: Option<ImportFormat>,
        /// Replace an address, host or file of the imported config (a server, a
        /// listen/bind address, a discovered Service name:port, a route's host name, a
        /// certificate) with another, e.g.
        /// `--rewrite server1:3000=10.0.0.5:3000`; repeat for more.
        #[arg(long, value_name = "FROM=TO")]
        rewrite: Vec<String>,
    },
    /// Write a development CA (ca.pem) and a certificate signed by it (cert.pem,
    /// key.pem), for trying TLS locally.
    Cert {
        /// Directory to write into; created if missing.
        #[arg(long, short)]
        out: PathBuf,
        /// A DNS name (`*.example.test` allowed) or IP address the certificate is for;
        /// repeat for more. Default: localhost and 127.0.0.1.
        #[arg(long = "name", short = 'n', value_name = "NAME")]
        names: Vec<String>,
        /// Replace ca.pem, cert.pem and key.pem if they already exist.
        #[arg(long)]
        force: bool,
    },
    /// Ask a running tether's admin API whether it serves (GET /healthz): exit 0 on 200,
    /// 1 otherwise. For a container's HEALTHCHECK, where there is no curl.
    Health {
        /// The admin API's address.
        #[arg(long, default_value = "127.0.0.1:9900")]
        admin: std::net::SocketAddr,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    #[cfg(feature = "bundled")]
    /// Run one Socket.IO node (socketioxide) with the demo chat application. Prints
    /// {"event":"listening","port":N,"id":"..."} once serving; SIGTERM drains then stops.
    Node {
        /// Port to listen on (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Node id, sent in `x-node-id` (default node-<port>).
        #[arg(long)]
        id: Option<String>,
        /// Share rooms and broadcasts through this Redis (>= 7), e.g.
        /// redis://127.0.0.1:6379 or redis+unix:///path/redis.sock; default: no adapter.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// How to use Redis.
        #[arg(long, value_enum, requires = "redis", default_value = "redis")]
        adapter: NodeAdapter,
        /// Engine.IO ping interval in milliseconds (default 25000).
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        ping_interval: Option<u64>,
        /// Engine.IO ping timeout in milliseconds (default 20000).
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        ping_timeout: Option<u64>,
        /// Serve plain WebSockets instead (no Socket.IO): any path, every message echoed.
        /// A non-Socket.IO upstream for benchmarks (`tether bench --transport
        /// plain-websocket`).
        #[arg(long, conflicts_with_all = ["redis", "ping_interval", "ping_timeout"])]
        plain_websocket: bool,
    },
    #[cfg(feature = "bundled")]
    /// Run N nodes as supervised child processes (restarted with back-off when they
    /// die); signals are forwarded and all of them stop with the pool.
    Pool {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Port of the first node; the others follow (0: any free port for each).
        #[arg(long, default_value_t = 3001)]
        base_port: u16,
        /// Redis (>= 7) the nodes share; default: none (each node alone).
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        #[arg(long, value_enum, requires = "redis", default_value = "redis")]
        adapter: NodeAdapter,
    },
    #[cfg(feature = "bundled")]
    /// A Socket.IO cluster on this machine in one command: 3 nodes, tether in front
    /// (plain and TLS), the admin dashboard, the chat page.
    Demo {
        /// Redis the nodes share (as child processes); default: a Redis answering on
        /// 127.0.0.1:6379, else in-process nodes over an in-process adapter.
        #[arg(long, value_name = "URL", conflicts_with = "no_redis")]
        redis: Option<String>,
        /// Never use a Redis, even one running locally.
        #[arg(long)]
        no_redis: bool,
        /// Plain HTTP port of tether (0: any).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// TLS port of tether (0: any).
        #[arg(long, default_value_t = 8443)]
        tls_port: u16,
        /// Admin port on 127.0.0.1 (0: any).
        #[arg(long, default_value_t = 9900)]
        admin_port: u16,
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Port of the first node; the others follow (0: any free port for each).
        #[arg(long, default_value_t = 3001)]
        base_port: u16,
        /// Where to write the generated certificate [default: a directory of your own,
        /// mode 0700: $XDG_CACHE_HOME/tether/demo or ~/.cache/tether/demo].
        #[arg(long)]
        cert_dir: Option<PathBuf>,
        /// Print the addresses as one JSON line instead of the text for people (for
        /// scripts and tests).
        #[arg(long)]
        json: bool,
    },
    #[cfg(feature = "bundled")]
    /// A Socket.IO-aware load generator against a loopback target: real client
    /// sessions (polling then upgrade, or WebSocket), echo round trips, sessions per node.
    Bench(tether_bench::BenchArgs),
}

/// The config file of `run` and `check`, named either way: `tether check FILE` is the
/// habit nginx -t and haproxy -c users bring, `--config FILE` the older spelling.
#[derive(clap::Args)]
struct ConfigArg {
    /// The YAML config file [default: conf/tether.yaml, in the working directory].
    #[arg(value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
    /// The same, as an option.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file named, or the default; and whether it is the default.
    fn path(self) -> (PathBuf, bool) {
        match self.file.or(self.config) {
            Some(path) => (path, false),
            None => (PathBuf::from(DEFAULT_CONFIG), true),
        }
    }
}

/// [`tether::server::load_config`], saying so when the file that cannot be read is the
/// default one: a user who named no file may not know that one was looked for.
fn load_config(command: &str, arg: ConfigArg) -> anyhow::Result<(PathBuf, tether::config::Config)> {
    let (path, default) = arg.path();
    match tether::server::load_config(&path) {
        Ok(config) => Ok((path, config)),
        Err(e @ tether::config::ConfigError::Read { .. }) if default => Err(anyhow::anyhow!(
            "{e}; no config file was named, and this is the default: name one, as in `tether {command} path/to/tether.yaml`"
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFormat {
    /// `upstream` blocks, `server { listen; location { proxy_pass } }`.
    Nginx,
    /// `frontend`, `backend` and `listen` sections.
    Haproxy,
    /// A Kubernetes `Ingress` with ingress-nginx annotations.
    Ingress,
}

#[cfg(feature = "bundled")]
#[derive(Clone, Copy, clap::ValueEnum)]
enum NodeAdapter {
    /// Redis pub/sub (socketioxide-redis).
    Redis,
    /// Redis Streams.
    RedisStreams,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tether::telemetry::init(match cli.log_format {
        LogFormatArg::Human => tether::telemetry::LogFormat::Human,
        LogFormatArg::Json => tether::telemetry::LogFormat::Json,
    });
    // Before any node or tether part takes a metric handle (the demo starts nodes first).
    tether::telemetry::install_recorder();
    // Purge freed pages on jemalloc's clock, not only when a thread next allocates.
    #[cfg(all(unix, not(target_env = "msvc")))]
    {
        if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
            tracing::debug!(error = %e, "jemalloc background thread not started");
        }
        // An operator's own jemalloc settings win.
        if std::env::var_os("_RJEM_MALLOC_CONF").is_none() {
            if let Err(e) = tether_alloc::set_dirty_decay(1000) {
                tracing::debug!(error = %e, "jemalloc decay left at its default");
            }
        }
    }
    let result = match cli.command {
        Command::Check { config } => check(config),
        Command::Run { config, takeover } => run(config, takeover),
        Command::Cert { out, names, force } => cert(out, names, force),
        Command::Health { admin, timeout } => health(admin, timeout),
        Command::Import {
            file,
            from,
            rewrite,
        } => import(file, from, rewrite),
        #[cfg(feature = "bundled")]
        Command::Node {
            port,
            bind,
            id,
            redis,
            adapter,
            ping_interval,
            ping_timeout,
            plain_websocket,
        } => node(
            std::net::SocketAddr::new(bind, port),
            plain_websocket,
            id,
            redis.map(|url| match adapter {
                NodeAdapter::Redis => tether_node::node::AdapterChoice::RedisPubSub { url },
                NodeAdapter::RedisStreams => tether_node::node::AdapterChoice::RedisStreams { url },
            }),
            ping_interval.map(std::time::Duration::from_millis),
            ping_timeout.map(std::time::Duration::from_millis),
        ),
        #[cfg(feature = "bundled")]
        Command::Pool {
            nodes,
            base_port,
            redis,
            adapter,
        } => pool(nodes, base_port, redis, adapter),
        #[cfg(feature = "bundled")]
        Command::Demo {
            redis,
            no_redis,
            port,
            tls_port,
            admin_port,
            nodes,
            base_port,
            cert_dir,
            json,
        } => demo(tether::demo::DemoOptions {
            redis,
            no_redis,
            http: ([127, 0, 0, 1], port).into(),
            https: ([127, 0, 0, 1], tls_port).into(),
            admin: ([127, 0, 0, 1], admin_port).into(),
            base_port,
            nodes,
            cert_dir,
            json,
            exe: std::env::current_exe().unwrap_or_else(|_| "tether".into()),
        }),
        #[cfg(feature = "bundled")]
        Command::Bench(args) => tether_bench::main(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {}", said_once(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once. The library's errors carry
/// their cause in their own message and expose no `source()`, so this is the context
/// chain; a cause whose text is already in the line (an error of another crate that
/// both prints and exposes its cause) is not repeated.
fn said_once(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn check(arg: ConfigArg) -> anyhow::Result<()> {
    // Certificates, keys and CA bundles too: what `run` would read besides the file.
    let (path, config) = load_config("check", arg)?;
    for w in &config.warnings {
        eprintln!("tether: warning: {w}");
    }
    let warned = match config.warnings.len() {
        0 => String::new(),
        n => format!(", {n} warning(s)"),
    };
    println!(
        "{}: ok ({} listener(s), {} route(s), {} backend(s), {} server(s)){warned}",
        path.display(),
        config.listeners.len(),
        config.routes.len(),
        config.backends.len(),
        config
            .backends
            .iter()
            .map(|b| b.servers.len())
            .sum::<usize>()
    );
    Ok(())
}

/// `GET /healthz` over a plain blocking socket (the probe needs no token): one request,
/// the status line read back.
fn health(admin: std::net::SocketAddr, timeout: std::time::Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect_timeout(&admin, timeout)
        .with_context(|| format!("connecting to the admin API at {admin}"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    write!(
        conn,
        "GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all we need.
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let n = conn
            .read(&mut buf)
            .with_context(|| format!("reading the answer of {admin}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or("");
    anyhow::ensure!(
        status.split(' ').nth(1) == Some("200"),
        "GET http://{admin}/healthz answered {status:?}"
    );
    println!("ok");
    Ok(())
}

fn import(file: PathBuf, from: Option<ImportFormat>, rewrite: Vec<String>) -> anyhow::Result<()> {
    use tether::import;
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let options = import::Options {
        rewrites: rewrite
            .iter()
            .map(|r| import::Options::parse_rewrite(r))
            .collect::<Result<_, _>>()?,
        cookie_secret: None,
    };
    let format = from.map(|f| match f {
        ImportFormat::Nginx => import::Format::Nginx,
        ImportFormat::Haproxy => import::Format::Haproxy,
        ImportFormat::Ingress => import::Format::Ingress,
    });
    let out = import::import(&text, format, &options, &file).map_err(|e| match e.at() {
        // Positions are the input file's: name it, as `check` does.
        Some(_) => anyhow::anyhow!("{}:{e}", file.display()),
        None => anyhow::anyhow!("{}: {e}", file.display()),
    })?;
    for d in &out.dropped {
        eprintln!("tether: {}:{d}", file.display());
    }
    eprintln!(
        "tether: imported {} ({}): {} directive(s) dropped; check the result with `tether check`",
        file.display(),
        out.format.name(),
        out.dropped.len()
    );
    print!("{}", out.yaml);
    Ok(())
}

fn cert(out: PathBuf, mut names: Vec<String>, force: bool) -> anyhow::Result<()> {
    if names.is_empty() {
        names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    }
    if !force {
        // A key already there may be the one a running listener serves.
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            let path = out.join(file);
            anyhow::ensure!(
                !path.exists(),
                "{} exists (use --force to replace it)",
                path.display()
            );
        }
    }
    let dev = tether::tls::dev_ca::generate_dev_cert(&names)?;
    let paths = dev
        .write(&out)
        .with_context(|| format!("writing certificates into {}", out.display()))?;
    println!("CA:          {}", paths.ca.display());
    println!("certificate: {}", paths.cert.display());
    println!("key:         {}", paths.key.display());
    println!(
        "clients must trust {} (e.g. NODE_EXTRA_CA_CERTS={}) to accept the certificate",
        paths.ca.display(),
        paths.ca.display()
    );
    Ok(())
}

/// A bound tether's takeover side (`--takeover`): Unix only, so elsewhere a value that
/// cannot exist.
#[cfg(unix)]
type Takeover = tether::runtime::takeover::Takeover;
#[cfg(not(unix))]
type Takeover = std::convert::Infallible;

fn run(arg: ConfigArg, takeover: Option<PathBuf>) -> anyhow::Result<()> {
    #[cfg(not(unix))]
    anyhow::ensure!(
        takeover.is_none(),
        "--takeover passes sockets over a Unix socket: Unix only"
    );
    let (_, config) = load_config("run", arg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (tether, takeover): (_, Option<Takeover>) = match takeover {
            #[cfg(unix)]
            Some(path) => {
                let (t, over) = tether::server::bind_taking_over(config, &path).await?;
                (t, Some(over))
            }
            _ => (tether::server::bind(config).await?, None),
        };
        for url in tether.listener_urls() {
            println!("tether listening on {url}");
        }
        if let Some(addr) = tether.admin_addr() {
            println!("tether admin on http://{addr}");
        }
        tokio::spawn(tether_kit::signal::on_signal(tether.shutdown_token()));
        match takeover {
            #[cfg(unix)]
            Some(over) => tether.run_taking_over(over).await,
            #[cfg(not(unix))]
            Some(never) => match never {},
            None => tether.run().await,
        }
        Ok::<(), anyhow::Error>(())
    })?;
    // Tasks still parked (a health probe mid-connect) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

#[cfg(feature = "bundled")]
fn node(
    bind: std::net::SocketAddr,
    plain_websocket: bool,
    id: Option<String>,
    adapter: Option<tether_node::node::AdapterChoice>,
    ping_interval: Option<std::time::Duration>,
    ping_timeout: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let opts = tether_node::node::NodeOptions {
        bind,
        // Empty: node-<port>, once the port is known.
        id: id.unwrap_or_default(),
        adapter: adapter.unwrap_or(tether_node::node::AdapterChoice::Local),
        ping_interval,
        ping_timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if plain_websocket {
        runtime.block_on(tether_node::plain::run_until_signal(bind, opts.id))?;
    } else {
        runtime.block_on(tether_node::node::run_until_signal(opts))?;
    }
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

#[cfg(feature = "bundled")]
fn adapter_args(redis: Option<String>, adapter: NodeAdapter) -> Vec<String> {
    match redis {
        None => Vec::new(),
        Some(url) => {
            let kind = match adapter {
                NodeAdapter::Redis => "redis",
                NodeAdapter::RedisStreams => "redis-streams",
            };
            vec!["--redis".into(), url, "--adapter".into(), kind.into()]
        }
    }
}

#[cfg(feature = "bundled")]
/// A runtime whose work stops on the first SIGINT/SIGTERM (a second exits at once).
fn with_signals<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(tether_kit::signal::on_signal(stop.clone()));
        f(stop).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

#[cfg(feature = "bundled")]
fn pool(
    nodes: usize,
    base_port: u16,
    redis: Option<String>,
    adapter: NodeAdapter,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the tether executable")?;
    let opts = tether_node::supervisor::PoolOptions::consecutive(
        exe,
        nodes,
        base_port,
        &adapter_args(redis, adapter),
    )?;
    with_signals(|stop| async move {
        tether_node::supervisor::run(opts, stop).await;
        Ok(())
    })
}

#[cfg(feature = "bundled")]
fn demo(opts: tether::demo::DemoOptions) -> anyhow::Result<()> {
    with_signals(|stop| async move {
        tether::demo::run(opts, stop).await?;
        Ok(())
    })
}
