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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tether::telemetry::init();
    let result = match cli.command {
        Command::Check { config } => check(config),
        Command::Run { config } => run(config),
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
