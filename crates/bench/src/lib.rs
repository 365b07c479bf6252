//! `tether bench`: a Socket.IO-aware load generator that does what a real client does.
//!
//! Each simulated client sets up a session the way socket.io-client does — the
//! Engine.IO polling handshake, the Socket.IO connect over polling, then the WebSocket
//! upgrade with its `2probe`/`3probe` (a GET poll pending meanwhile), a WebSocket
//! from the start with `--transport websocket`, or long-polling for good with
//! `--transport polling-only` (a GET always pending on one keep-alive connection, POSTs
//! on another: the polling request path, measured per request) — answers the server's
//! pings, and then, by `--mode`:
//!
//! - `echo`: emits `echo` with an ack and measures the round trip, back to back (one
//!   in flight) or paced at `--rate` per client (latency then measured from the
//!   intended send time, so a slow server cannot hide queueing);
//! - `idle`: holds the sessions open for `--duration` (memory measurements);
//! - `connect`: only sets sessions up (setup rate), closing each once set up;
//! - `storm`: kills a node (`--kill-pid`) once every session is set up and measures how
//!   long each orphan takes to reconnect with socket.io-client's back-off ([`storm`]).
//!
//! Sessions are started as fast as `--concurrency` setups in flight allow, or at
//! `--arrival-rate` per second; the traffic phase starts once every setup finished.
//! Targets are loopback only (127.0.0.0/8). `--sources` spreads the clients' TCP
//! connections over many loopback source addresses (round-robin), for more than ~28k
//! connections and to look like many client IPs.
//!
//! Every server behaviour ends in a counted failure ([`client::Cause`]), never a panic.
//! The report is a table, or one JSON object with `--json` ([`report::Report`]).

pub mod client;
pub mod packet;
pub mod report;
pub mod sources;
pub mod storm;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tether_kit::lock;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use client::Transport;
use client::{fail, Cause, Failure, Session, Target};
pub use report::Report;
pub use sources::SourceRange;

/// What the clients do once set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Emit `echo` with an ack, measure the round trip.
    Echo,
    /// Hold the sessions open, answering pings.
    Idle,
    /// Only set sessions up, then close them.
    Connect,
    /// Set sessions up, SIGKILL `--kill-pid`, time every orphan's reconnection.
    Storm,
}

/// The options of `tether bench`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "bench")]
pub struct BenchArgs {
    /// The target, loopback only: http://127.x.y.z:PORT (a path other than / replaces
    /// --path).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The Socket.IO path.
    #[arg(long, default_value = "/socket.io/")]
    pub path: String,
    /// How many clients (sessions).
    #[arg(long, default_value_t = 100)]
    pub clients: u64,
    /// How sessions are set up and talk: polling then upgrade (the default client), a
    /// WebSocket from the start, or polling for good.
    #[arg(long, value_enum, default_value = "polling")]
    pub transport: Transport,
    /// What the clients do once set up.
    #[arg(long, value_enum, default_value = "echo")]
    pub mode: Mode,
    /// Length of the traffic phase (echo, idle), e.g. 10s, 2m.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Echo messages per second per client (default: back to back, one in flight).
    #[arg(long, value_parser = positive)]
    pub rate: Option<f64>,
    /// Echo payload size: a JSON string of this many bytes.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Sessions started per second (default: as fast as --concurrency allows).
    #[arg(long, value_parser = positive)]
    pub arrival_rate: Option<f64>,
    /// Session setups in flight at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Source addresses for the clients' connections, round-robin: a range
    /// 127.0.0.2-127.0.0.250, a CIDR 127.1.0.0/16 or one address (default: the
    /// kernel's choice, 127.0.0.1).
    #[arg(long)]
    pub sources: Option<SourceRange>,
    /// After setup, each client emits `whoami`; the report counts sessions per node.
    #[arg(long)]
    pub whoami: bool,
    /// Timeout of a session setup, of a `whoami` and of each ack.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Storm: the node process to SIGKILL once every session is set up.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Storm: the id that node answers `whoami` with (to count its sessions, the
    /// orphans).
    #[arg(long)]
    pub kill_node: Option<String>,
    /// Storm: the proxy's pid, whose CPU time over the storm the report gives.
    #[arg(long)]
    pub cpu_pid: Option<u32>,
    /// Runtime worker threads (pin the generator with taskset).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// Why a bench could not run. Everything a target does once the bench runs is a counted
/// failure in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// `--url` or `--path` is not a loopback target.
    #[error("{0}")]
    Target(String),
    /// Options that cannot go together.
    #[error("{0}")]
    Options(&'static str),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("writing the report: {0}")]
    Report(serde_json::Error),
}

// By hand rather than `#[from]`, which would also make the cause the error's `source()`
// while the message already carries it: printed as a chain, it would read twice.
impl From<serde_json::Error> for BenchError {
    fn from(e: serde_json::Error) -> BenchError {
        BenchError::Report(e)
    }
}

fn bad_target(message: String) -> BenchError {
    BenchError::Target(message)
}

/// `tether bench`: runs on its own runtime, prints the report.
pub fn main(args: BenchArgs) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let report = runtime.block_on(run(&args))?;
    runtime.shutdown_timeout(Duration::from_millis(100));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Resolves `--url` (and `--path`) to a loopback target.
pub fn target(url: &str, path: &str) -> Result<Target, BenchError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad_target(format!("--url {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("ws") => {}
        Some(s) => {
            return Err(bad_target(format!(
                "--url {url}: scheme {s} not supported (http:// only, no TLS)"
            )))
        }
        None => {
            return Err(bad_target(format!(
                "--url {url}: give a URL like http://127.0.0.1:8080"
            )))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad_target(format!("--url {url}: no host")))?;
    let host = authority.host();
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|e| {
                bad_target(format!(
                    "--url {url}: the host must be a 127.x.y.z address: {e}"
                ))
            })?
    };
    let IpAddr::V4(v4) = ip else {
        return Err(bad_target(format!(
            "--url {url}: only 127.0.0.0/8 targets are allowed"
        )));
    };
    if !sources::is_loopback(v4) {
        return Err(bad_target(format!(
            "--url {url}: only 127.0.0.0/8 targets are allowed (this is a load generator)"
        )));
    }
    let port = authority.port_u16().unwrap_or(80);
    let path = match uri.path() {
        "" | "/" => path,
        p => p,
    };
    if !path.starts_with('/') {
        return Err(bad_target(format!("--path {path:?} must start with /")));
    }
    Ok(Target {
        addr: SocketAddr::from((v4, port)),
        authority: authority.as_str().to_owned(),
        path: path.to_owned(),
    })
}

/// What the clients share: settings and counters.
struct Ctx {
    target: Target,
    args: BenchArgs,
    /// The echo argument, as JSON.
    payload: String,
    established: AtomicU64,
    upgraded: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    /// HTTP requests made (polling requests and WebSocket handshakes).
    requests: Arc<AtomicU64>,
    failed: [AtomicU64; Cause::ALL.len()],
    dropped: AtomicU64,
    /// Clients whose setup (and whoami) is over, one way or the other.
    setups_finished: AtomicU64,
    setups_done: Notify,
    rtt: Mutex<Histogram<u64>>,
    setup: Mutex<Histogram<u64>>,
    nodes: Mutex<HashMap<String, u64>>,
    errors: Mutex<Vec<String>>,
    storm: storm::State,
}

/// Distinct error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 16;

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Ctx {
    fn fail(&self, f: &Failure, after_setup: bool) {
        self.failed[f.cause.index()].fetch_add(1, Ordering::Relaxed);
        if after_setup {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.sample(f);
    }

    /// Keeps the failure's message among the report's samples (not counted).
    fn sample(&self, f: &Failure) {
        let mut errors = lock(&self.errors);
        if errors.len() < MAX_ERROR_SAMPLES {
            let text = f.to_string();
            if !errors.contains(&text) {
                errors.push(text);
            }
        }
    }

    fn failed_total(&self) -> u64 {
        self.failed.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Counts a client's setup as finished when dropped (whatever way the client ends).
struct SetupFinished(Arc<Ctx>);

impl Drop for SetupFinished {
    fn drop(&mut self) {
        let n = self.0.setups_finished.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.0.args.clients {
            self.0.setups_done.notify_one();
        }
    }
}

/// The traffic phase: when it started, when it ends.
#[derive(Clone, Copy)]
struct Phase {
    start: Instant,
    end: Instant,
}

/// Runs a bench and returns its report.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let target = target(&args.url, &args.path)?;
    if args.mode == Mode::Storm && args.kill_pid.is_none() {
        return Err(bad_target("--mode storm needs --kill-pid".to_owned()));
    }
    // A plain WebSocket carries no Socket.IO: nothing to echo or ask.
    if args.transport == Transport::PlainWebsocket
        && (matches!(args.mode, Mode::Echo | Mode::Storm) || args.whoami)
    {
        return Err(BenchError::Options(
            "--transport plain-websocket takes --mode idle or connect, without --whoami",
        ));
    }
    let ctx = Arc::new(Ctx {
        target,
        args: args.clone(),
        payload: packet::payload_json(args.payload_bytes),
        established: AtomicU64::new(0),
        upgraded: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        requests: Arc::new(AtomicU64::new(0)),
        failed: Default::default(),
        dropped: AtomicU64::new(0),
        setups_finished: AtomicU64::new(0),
        setups_done: Notify::new(),
        rtt: Mutex::new(histogram()),
        setup: Mutex::new(histogram()),
        nodes: Mutex::new(HashMap::new()),
        errors: Mutex::new(Vec::new()),
        storm: storm::State::new(),
    });
    let started = Instant::now();
    let progress = (!args.quiet).then(|| tokio::spawn(progress(Arc::clone(&ctx), started)));

    let (phase_tx, phase_rx) = watch::channel(None::<Phase>);
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut tasks = JoinSet::new();
    let mut arrivals = args.arrival_rate.map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    for i in 0..args.clients {
        if let Some(a) = arrivals.as_mut() {
            a.tick().await;
        }
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let finished = SetupFinished(Arc::clone(&ctx));
        tasks.spawn(one_client(
            i,
            Arc::clone(&ctx),
            permit,
            finished,
            phase_rx.clone(),
        ));
        // Reap the clients already done (connect mode), so nothing piles up.
        while tasks.try_join_next().is_some() {}
    }
    while ctx.setups_finished.load(Ordering::Acquire) < args.clients {
        tokio::select! {
            _ = ctx.setups_done.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let setup_elapsed = started.elapsed();
    let traffic_start = Instant::now();
    let storm = if args.mode == Mode::Storm {
        Some(storm::drive(&ctx, &phase_tx).await)
    } else {
        let _ = phase_tx.send(Some(Phase {
            start: traffic_start,
            end: traffic_start + args.duration,
        }));
        None
    };
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            ctx.fail(
                &fail(Cause::Protocol, format!("client task died: {e}")),
                true,
            );
        }
    }
    let traffic_elapsed = traffic_start.elapsed();
    if let Some(p) = progress {
        p.abort();
    }
    Ok(report::build(
        &ctx,
        setup_elapsed,
        traffic_elapsed,
        started.elapsed(),
        storm,
    ))
}

async fn progress(ctx: Arc<Ctx>, started: Instant) {
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let mut last_acked = 0;
    loop {
        tick.tick().await;
        let acked = ctx.acked.load(Ordering::Relaxed);
        eprintln!(
            "bench {:>4}s: established {}/{} failed {} upgraded {} acked {} ({}/s)",
            started.elapsed().as_secs(),
            ctx.established.load(Ordering::Relaxed),
            ctx.args.clients,
            ctx.failed_total(),
            ctx.upgraded.load(Ordering::Relaxed),
            acked,
            acked - last_acked,
        );
        last_acked = acked;
    }
}

async fn one_client(
    i: u64,
    ctx: Arc<Ctx>,
    permit: tokio::sync::OwnedSemaphorePermit,
    finished: SetupFinished,
    phase: watch::Receiver<Option<Phase>>,
) {
    let source = ctx.args.sources.map(|r| r.nth(i));
    let t0 = Instant::now();
    let setup = tokio::time::timeout(
        ctx.args.timeout,
        client::setup(&ctx.target, ctx.args.transport, source, &ctx.requests),
    )
    .await;
    drop(permit);
    let mut session = match setup {
        Ok(Ok(s)) => s,
        Ok(Err(f)) => return ctx.fail(&f, false),
        Err(_) => {
            let f = fail(
                Cause::Timeout,
                format!("setup took over {:?}", ctx.args.timeout),
            );
            return ctx.fail(&f, false);
        }
    };
    lock(&ctx.setup).saturating_record(micros(t0.elapsed()));
    ctx.established.fetch_add(1, Ordering::Relaxed);
    if session.upgraded {
        ctx.upgraded.fetch_add(1, Ordering::Relaxed);
    }
    let mut on_node = String::new();
    if ctx.args.whoami || ctx.args.mode == Mode::Storm {
        match tokio::time::timeout(ctx.args.timeout, session.whoami()).await {
            Ok(Ok(node)) => {
                let node = node.unwrap_or_else(|| "unknown".to_owned());
                *lock(&ctx.nodes).entry(node.clone()).or_insert(0) += 1;
                on_node = node;
            }
            Ok(Err(f)) => return ctx.fail(&f, true),
            Err(_) => {
                return ctx.fail(&fail(Cause::Timeout, "no whoami ack"), true);
            }
        }
    }
    drop(finished);
    let result = match ctx.args.mode {
        Mode::Storm => return storm::client(i, &ctx, session, on_node, t0, phase).await,
        Mode::Connect => Ok(()),
        Mode::Idle => match wait_phase(&mut session, phase).await {
            Ok(p) => hold(&mut session, p.end).await,
            Err(f) => Err(f),
        },
        Mode::Echo => match wait_phase(&mut session, phase).await {
            Ok(p) => match ctx.args.rate {
                None => echo(&mut session, &ctx, p.end).await,
                Some(rate) => echo_paced(&mut session, &ctx, p, rate, i).await,
            },
            Err(f) => Err(f),
        },
    };
    match result {
        Ok(()) => session.close().await,
        Err(f) => ctx.fail(&f, true),
    }
}

/// Holds the session (answering pings) until the traffic phase starts.
async fn wait_phase(
    session: &mut Session,
    mut phase: watch::Receiver<Option<Phase>>,
) -> Result<Phase, Failure> {
    loop {
        if let Some(p) = *phase.borrow_and_update() {
            return Ok(p);
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return Err(fail(Cause::Protocol, "the bench stopped"));
                }
            }
            frame = session.read_frame() => {
                session.handle(frame).await?;
            }
        }
    }
}

/// Holds the session open until `end`, answering pings.
async fn hold(session: &mut Session, end: Instant) -> Result<(), Failure> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => return Ok(()),
            frame = session.read_frame() => {
                session.handle(frame).await?;
            }
        }
    }
}

/// Back-to-back echo: one in flight until `end`.
async fn echo(session: &mut Session, ctx: &Ctx, end: Instant) -> Result<(), Failure> {
    while Instant::now() < end {
        let id = session.next_id();
        let t0 = Instant::now();
        session
            .send_text(packet::emit_with_ack(id, "echo", &ctx.payload))
            .await?;
        ctx.sent.fetch_add(1, Ordering::Relaxed);
        let limit = t0 + ctx.args.timeout;
        loop {
            let m = tokio::time::timeout_at(limit, session.recv_message())
                .await
                .map_err(|_| {
                    fail(
                        Cause::Timeout,
                        format!("no ack within {:?}", ctx.args.timeout),
                    )
                })??;
            if let Some((ack, _)) = client::ack_of(&m)? {
                if ack == id {
                    lock(&ctx.rtt).saturating_record(micros(t0.elapsed()));
                    ctx.acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Echo at `rate` per second: sends on schedule whatever is in flight; each round trip
/// counts from the scheduled send time.
async fn echo_paced(
    session: &mut Session,
    ctx: &Ctx,
    phase: Phase,
    rate: f64,
    i: u64,
) -> Result<(), Failure> {
    enum Event {
        Send(Instant),
        Frame(client::Frame),
        TimedOut,
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    // Spread the clients' schedules over one period (golden-ratio offsets).
    let offset = period.mul_f64((i as f64 * 0.618_033_988_749_895).fract());
    let mut tick = tokio::time::interval_at(phase.start + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight: std::collections::VecDeque<(u64, Instant)> = Default::default();
    loop {
        let sending = Instant::now() < phase.end;
        if !sending && in_flight.is_empty() {
            return Ok(());
        }
        let oldest = in_flight.front().map(|&(_, t)| t + ctx.args.timeout);
        let event = tokio::select! {
            t = tick.tick(), if sending => Event::Send(t),
            frame = session.read_frame() => Event::Frame(frame),
            _ = tokio::time::sleep_until(oldest.unwrap_or(phase.end)), if oldest.is_some() => Event::TimedOut,
            _ = tokio::time::sleep_until(phase.end), if sending && in_flight.is_empty() => continue,
        };
        match event {
            Event::Send(t) => {
                if t >= phase.end {
                    continue;
                }
                let id = session.next_id();
                session
                    .send_text(packet::emit_with_ack(id, "echo", &ctx.payload))
                    .await?;
                ctx.sent.fetch_add(1, Ordering::Relaxed);
                in_flight.push_back((id, t));
            }
            Event::Frame(frame) => {
                let Some(m) = session.handle(frame).await? else {
                    continue;
                };
                if let Some((ack, _)) = client::ack_of(&m)? {
                    if let Some(pos) = in_flight.iter().position(|&(id, _)| id == ack) {
                        if let Some((_, t)) = in_flight.remove(pos) {
                            lock(&ctx.rtt).saturating_record(micros(t.elapsed()));
                            ctx.acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Event::TimedOut => {
                return Err(fail(
                    Cause::Timeout,
                    format!("no ack within {:?}", ctx.args.timeout),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests;
