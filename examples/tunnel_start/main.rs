//! Tunnel start latency: how soon a client's first WebSocket frame, written right after
//! the `101`, reaches the node behind a proxy, and whether a polling request sent at once
//! on another connection overtakes it.
//!
//!   cargo run --release --example tunnel_start -- NODE_PORTS PROXY_ADDR [RUNS] [solo]
//!
//! One process plays both ends, so both timestamps come from one clock: a raw Engine.IO
//! node listening on each of `NODE_PORTS` (comma-separated; they share one table of
//! sessions), and the client. Each run: a polling handshake on connection A (kept
//! alive), the WebSocket upgrade on connection B, then, as soon as B's `101` has been
//! read, the frames `2probe` and `5` written on B and at once a polling GET with the
//! same sid on A. The node stamps the frames' first bytes as they arrive (a blocking read
//! returns the moment the kernel has them), and when the poll arrives it looks whether
//! those bytes are in its socket yet: "the poll first" is read from the kernel, not from
//! which of the node's threads happened to wake first.
//!
//! `solo`: the poll waits 5 ms after the frames, so the frame's latency is the tunnel's
//! alone, with no request competing with it.
//!
//! Prints one JSON line: runs, frame latency (client write -> node read) p50/p99/max in
//! µs, and how many runs the node saw the poll before the frame. Used by
//! `benches/tunnel_start.sh`, which runs it through tether and nginx. The node and the
//! client are in `probe.rs`.

mod probe;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use probe::{one_run, serve_node};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: tunnel_start NODE_PORTS PROXY_ADDR [RUNS] [solo]");
    }
    let mut listeners = Vec::new();
    for p in args[0].split(',') {
        let port: u16 = p.parse().context("NODE_PORTS")?;
        listeners.push(TcpListener::bind(("127.0.0.1", port)).context("binding a node port")?);
    }
    let node = serve_node(listeners);
    let proxy: SocketAddr = args[1].parse().context("PROXY_ADDR")?;
    let runs: usize = args.get(2).map_or(Ok(200), |s| s.parse())?;
    let race = args.get(3).map(String::as_str) != Some("solo");
    // The proxy may still be starting.
    let up = Instant::now();
    while TcpStream::connect(proxy).is_err() {
        if up.elapsed() > Duration::from_secs(10) {
            bail!("nothing listens at {proxy}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Warm up (first connections, pools), then measure.
    for _ in 0..5 {
        one_run(&node, proxy, race)?;
    }
    let mut lat = Vec::with_capacity(runs);
    let mut poll_first = 0;
    for _ in 0..runs {
        let r = one_run(&node, proxy, race)?;
        lat.push(r.latency.as_micros() as u64);
        poll_first += usize::from(r.poll_first);
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "{{\"runs\":{runs},\"race\":{race},\"frame_us\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\"poll_first\":{poll_first}}}",
        q(0.5),
        q(0.99),
        lat[lat.len() - 1]
    );
    Ok(())
}
