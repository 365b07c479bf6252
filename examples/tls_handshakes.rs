//! Full TLS handshakes against a listener as fast as `--concurrency` loops can go, no
//! session resumption: what a reconnect storm costs the terminator.
//!
//!   cargo run --release --example tls_handshakes -- ADDR NAME CA_PEM [SECONDS] [CONCURRENCY]
//!
//! Prints one JSON line: handshakes, failures, seconds, handshakes per second.
//! Used by `benches/tls_handshakes.sh`, which divides by the server's CPU time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: tls_handshakes ADDR NAME CA_PEM [SECONDS] [CONCURRENCY]");
    }
    let addr: std::net::SocketAddr = args[0].parse().context("ADDR")?;
    let name = ServerName::try_from(args[1].clone()).context("NAME")?;
    let ca = std::fs::read(&args[2]).context("CA_PEM")?;
    let seconds: u64 = args.get(3).map_or(Ok(5), |s| s.parse())?;
    let concurrency: usize = args.get(4).map_or(Ok(32), |s| s.parse())?;

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(cfg));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ok, failed) = rt.block_on(async {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (connector, name) = (connector.clone(), name.clone());
            let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let done = async {
                        let tcp = TcpStream::connect(addr).await?;
                        connector.connect(name.clone(), tcp).await
                    };
                    match done.await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    });
    println!(
        "{{\"handshakes\":{ok},\"failed\":{failed},\"seconds\":{seconds},\"per_second\":{:.1}}}",
        ok as f64 / seconds as f64
    );
    Ok(())
}
