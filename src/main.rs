//! The `tether` command: parse arguments, load the config, run. Everything else lives
//! in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

const DEFAULT_CONFIG: &str = "conf/tether.yaml";

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "A sticky-session load balancer for Socket.IO / Engine.IO clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The YAML config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 if it is good, else print file:line:column and why.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tether::telemetry::init();
    let result = match cli.command {
        Command::Check { config } => check(config),
        Command::Run { config } => run(config),
        Command::Cert { out, names, force } => cert(out, names, force),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = tether::config::load(&path)?;
    // What `run` would read besides the file: certificates, keys, CA bundles.
    for l in &config.listeners {
        if let Some(t) = &l.tls {
            tether::listener::tls::acceptor(t).with_context(|| format!("listener {}", l.bind))?;
        }
    }
    for b in &config.backends {
        if let Some(t) = &b.tls {
            tether::proxy::upstream::TlsUpstream::new(t)
                .with_context(|| format!("backend {}: upstream TLS", b.name))?;
        }
    }
    println!(
        "{}: ok ({} listener(s), {} route(s), {} backend(s), {} server(s))",
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
    let dev = tether::certs::generate_dev_cert(&names)?;
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

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = tether::config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let tether = tether::server::Tether::bind(config).await?;
        for addr in tether.local_addrs() {
            println!("tether listening on {addr}");
        }
        if let Some(addr) = tether.admin_addr() {
            println!("tether admin on {addr}");
        }
        tokio::spawn(tether::shutdown::on_signal(tether.shutdown_token()));
        tether.run().await;
        Ok::<(), anyhow::Error>(())
    })?;
    // Tasks still parked (a health probe mid-connect) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}
