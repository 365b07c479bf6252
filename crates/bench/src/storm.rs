//! `--mode storm`: a reconnect storm, as a proxy meets it when a node dies.
//!
//! Every client sets up its session (the `--transport` way; the real client's polling
//! then upgrade by default) and asks `whoami`, so the bench knows which node holds it.
//! Once every setup is over the bench SIGKILLs `--kill-pid` itself: doing the kill here
//! gives the one instant every time is measured from, without a second process or clock
//! between the harness and the clients. Each client then holds its session, and when the
//! session drops (the proxy closes it once the node is gone), reconnects the way
//! socket.io-client's `Manager` does: a delay of `reconnectionDelay` 1 s × 2^attempt, capped
//! at `reconnectionDelayMax` 5 s, with `randomizationFactor` 0.5 ([`Backoff`]), a whole
//! new session each attempt, the back-off reset once connected. It counts as recovered
//! when its new session is set up again (Socket.IO connected and, for the default
//! transport, upgraded) and answers `whoami` from a live node.
//!
//! The storm ends when every dropped session recovered (and at least the sessions the
//! killed node held dropped), or after `--duration`. With `--cpu-pid` the bench reads
//! that process's CPU time (utime+stime, /proc) at the kill and at the end: the proxy's
//! cost of the storm.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tether_kit::lock;
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{self, fail, Cause, Failure, Session};
use super::report::Latency;
use super::{histogram, micros, Ctx, Phase};

/// socket.io-client's reconnection back-off (its `Backoff` with the `Manager`'s
/// defaults): `min(1000 × 2^attempt ± jitter, 5000)` ms, the jitter a uniform fraction
/// of up to half the delay, added or taken away by the same random draw.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempts: u32,
    rng: u64,
}

impl Backoff {
    const MS: f64 = 1000.0;
    const MAX_MS: f64 = 5000.0;
    const JITTER: f64 = 0.5;

    /// A back-off whose draws come from `seed` (any value).
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            attempts: 0,
            // splitmix64 of the seed: never 0, so the xorshift below never sticks.
            rng: splitmix(seed) | 1,
        }
    }

    /// Back to the first delay (after a successful reconnection).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// A uniform draw in [0, 1) (xorshift64*).
    fn random(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next delay, as `Backoff.prototype.duration` computes it.
    pub fn next_delay(&mut self) -> Duration {
        let mut ms = Self::MS * 2f64.powi(self.attempts.min(30) as i32);
        self.attempts += 1;
        let rand = self.random();
        let deviation = (rand * Self::JITTER * ms).floor();
        if ((rand * 10.0).floor() as u64) & 1 == 0 {
            ms -= deviation;
        } else {
            ms += deviation;
        }
        Duration::from_millis(ms.min(Self::MAX_MS) as u64)
    }
}

fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The storm's shared counters.
pub(super) struct State {
    /// Sessions that dropped after the kill (each client counted at each drop).
    dropped: AtomicU64,
    /// Clients between a drop and their recovery.
    reconnecting: AtomicU64,
    recovered: AtomicU64,
    attempts: AtomicU64,
    failed_attempts: AtomicU64,
    /// Sessions that dropped before the kill (should be none).
    dropped_before_kill: AtomicU64,
    /// Drops of sessions on a node other than the killed one.
    elsewhere: AtomicU64,
    /// From the kill to each drop noticed by its client.
    notice: Mutex<Histogram<u64>>,
    /// From the kill to each recovery.
    recovery: Mutex<Histogram<u64>>,
    /// Each recovery: µs after the kill, and the node it landed on.
    orphans: Mutex<Vec<(u64, String)>>,
    last_recovery: Mutex<Option<Instant>>,
}

impl State {
    pub(super) fn new() -> State {
        State {
            dropped: AtomicU64::new(0),
            reconnecting: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            dropped_before_kill: AtomicU64::new(0),
            elsewhere: AtomicU64::new(0),
            notice: Mutex::new(histogram()),
            recovery: Mutex::new(histogram()),
            orphans: Mutex::new(Vec::new()),
            last_recovery: Mutex::new(None),
        }
    }
}

/// What the storm report says.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StormReport {
    /// The process killed (`--kill-pid`).
    pub killed_pid: u32,
    /// The node it was (`--kill-node`), if given.
    pub killed_node: Option<String>,
    /// Sessions that node held at the kill, by `whoami` (0 without `--kill-node`).
    pub orphans_expected: u64,
    /// Sessions that dropped after the kill: the orphans (and any other casualty).
    pub dropped: u64,
    pub recovered: u64,
    /// Dropped sessions not connected again when the storm ended.
    pub unrecovered: u64,
    /// Sessions that dropped before the kill (a broken setup, not the storm).
    pub dropped_before_kill: u64,
    /// Drops (after the kill) of sessions held by another node than the killed one:
    /// casualties the kill should not have made (counted in `dropped` too).
    pub dropped_elsewhere: u64,
    /// Reconnection attempts, and those that failed (each one a whole new session).
    pub attempts: u64,
    pub failed_attempts: u64,
    /// From the kill until each client noticed its session was gone.
    pub notice_us: Latency,
    /// From the kill until each client was connected again: time to recovered.
    pub recovered_us: Latency,
    /// From the kill until the last recovery (or the end, if some never recovered).
    pub all_recovered_s: f64,
    /// Where the recovered sessions landed.
    pub landed: BTreeMap<String, u64>,
    /// CPU seconds (user+system) `--cpu-pid` used from the kill to the storm's end.
    pub cpu_s: Option<f64>,
    /// That CPU over recovered sessions, in µs.
    pub cpu_us_per_recovered: Option<f64>,
    /// Every recovery: µs after the kill, and the node it landed on.
    pub orphans: Vec<(u64, String)>,
}

/// CPU seconds (utime + stime) of `pid`, from /proc (None where it cannot be read).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3, so utime (14) and stime (15) are the 12th and 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    (hz > 0).then(|| (utime + stime) as f64 / hz as f64)
}

/// SIGKILLs `pid` (a node the harness started).
fn kill(pid: u32) -> Result<(), String> {
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    let pid = rustix::process::Pid::from_raw(raw).ok_or_else(|| format!("pid {raw}"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .map_err(|e| format!("kill -9 {raw}: {e}"))
}

/// The storm once every setup is over: kills the node, waits for the storm to pass,
/// then ends the traffic phase. Returns the report's storm part.
pub(super) async fn drive(ctx: &Ctx, phase_tx: &watch::Sender<Option<Phase>>) -> StormReport {
    let args = &ctx.args;
    let pid = args.kill_pid.unwrap_or(0);
    let orphans_expected = args
        .kill_node
        .as_ref()
        .and_then(|n| lock(&ctx.nodes).get(n).copied())
        .unwrap_or(0);
    let cpu0 = args.cpu_pid.and_then(cpu_seconds);
    // The phase goes out first, so that no client sees its drop before the phase.
    let start = Instant::now();
    let end = start + args.duration;
    let _ = phase_tx.send(Some(Phase { start, end }));
    let killed = kill(pid);
    if let Err(e) = killed {
        ctx.fail(&fail(Cause::Protocol, e), false);
    }
    let s = &ctx.storm;
    // The drops arrive within milliseconds; the grace covers a proxy that is slower to
    // pass the close on, and --kill-node's count makes sure every orphan dropped.
    let grace = Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let done = now >= start + grace
            && s.reconnecting.load(Ordering::Acquire) == 0
            && s.dropped.load(Ordering::Acquire) >= orphans_expected;
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu1 = args.cpu_pid.and_then(cpu_seconds);
    let stopped = Instant::now();
    let _ = phase_tx.send(Some(Phase {
        start,
        end: stopped,
    }));
    let dropped = s.dropped.load(Ordering::Acquire);
    let recovered = s.recovered.load(Ordering::Acquire);
    let last = lock(&s.last_recovery).unwrap_or(start);
    let unrecovered = dropped.saturating_sub(recovered);
    let cpu_s = cpu0.zip(cpu1).map(|(a, b)| round4(b - a));
    let mut orphans = lock(&s.orphans).clone();
    orphans.sort();
    let mut landed = BTreeMap::new();
    for (_, node) in &orphans {
        *landed.entry(node.clone()).or_insert(0) += 1;
    }
    StormReport {
        killed_pid: pid,
        killed_node: args.kill_node.clone(),
        orphans_expected,
        dropped,
        recovered,
        unrecovered,
        dropped_before_kill: s.dropped_before_kill.load(Ordering::Acquire),
        dropped_elsewhere: s.elsewhere.load(Ordering::Acquire),
        attempts: s.attempts.load(Ordering::Acquire),
        failed_attempts: s.failed_attempts.load(Ordering::Acquire),
        notice_us: Latency::of(&lock(&s.notice)),
        recovered_us: Latency::of(&lock(&s.recovery)),
        all_recovered_s: round4(
            if unrecovered > 0 { stopped } else { last }
                .saturating_duration_since(start)
                .as_secs_f64(),
        ),
        landed,
        cpu_us_per_recovered: cpu_s
            .filter(|_| recovered > 0)
            .map(|c| (c * 1e6 / recovered as f64 * 10.0).round() / 10.0),
        cpu_s,
        orphans,
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Whether the storm is over for this client (the phase's end reached or moved up).
fn over(phase: &watch::Receiver<Option<Phase>>) -> Option<Instant> {
    phase.borrow().map(|p| p.end)
}

/// One client through the storm, once its session is set up: holds it, and each time
/// it drops, reconnects with socket.io-client's back-off until connected again.
pub(super) async fn client(
    i: u64,
    ctx: &Ctx,
    mut session: Session,
    mut node: String,
    mut since: Instant,
    mut phase: watch::Receiver<Option<Phase>>,
) {
    // A drop that races the phase's start is the storm's (the phase is sent before the
    // kill), not a drop before the kill.
    let (p, mut first_drop) = match super::wait_phase(&mut session, phase.clone()).await {
        Ok(p) => (p, None),
        Err(f) => match *phase.borrow() {
            Some(p) => (p, Some(f)),
            None => {
                ctx.storm
                    .dropped_before_kill
                    .fetch_add(1, Ordering::Relaxed);
                ctx.sample(&fail(
                    f.cause,
                    format!("dropped before the kill ({node}): {f}"),
                ));
                return;
            }
        },
    };
    let kill = p.start;
    let mut backoff = Backoff::new(i ^ u64::from(std::process::id()).rotate_left(32));
    let source = ctx.args.sources.map(|r| r.nth(i));
    let s = &ctx.storm;
    loop {
        // Hold until the session drops or the storm ends.
        let drop = if let Some(f) = first_drop.take() {
            f
        } else {
            loop {
                let end = over(&phase).unwrap_or(p.end);
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => {
                        session.close().await;
                        return;
                    }
                    changed = phase.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    frame = session.read_frame() => {
                        if let Err(f) = session.handle(frame).await {
                            break f;
                        }
                    }
                }
            }
        };
        drop_noted(ctx, &drop, kill, &node, since);
        // Reconnect as socket.io-client does, until connected or the storm is over.
        backoff.reset();
        let (new, landed, at) = loop {
            let delay = backoff.next_delay();
            let end = over(&phase).unwrap_or(p.end);
            if Instant::now() + delay >= end {
                // Unrecovered: the storm is over before the next attempt.
                return;
            }
            tokio::time::sleep(delay).await;
            s.attempts.fetch_add(1, Ordering::Relaxed);
            match attempt(ctx, source).await {
                Ok(done) => break done,
                Err(f) => {
                    s.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    ctx.sample(&f);
                }
            }
        };
        session = new;
        since = at;
        node = landed;
        let after = micros(at.saturating_duration_since(kill));
        lock(&s.recovery).saturating_record(after);
        lock(&s.orphans).push((after, node.clone()));
        {
            let mut last = lock(&s.last_recovery);
            if last.is_none_or(|l| l < at) {
                *last = Some(at);
            }
        }
        s.recovered.fetch_add(1, Ordering::Relaxed);
        s.reconnecting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a drop (after the kill: the storm's; before it: a broken session).
fn drop_noted(ctx: &Ctx, f: &Failure, kill: Instant, node: &str, since: Instant) {
    let s = &ctx.storm;
    if ctx.args.kill_node.as_deref().is_some_and(|k| k != node) {
        s.elsewhere.fetch_add(1, Ordering::Relaxed);
    }
    s.reconnecting.fetch_add(1, Ordering::AcqRel);
    s.dropped.fetch_add(1, Ordering::AcqRel);
    let after = kill.elapsed();
    lock(&s.notice).saturating_record(micros(after));
    ctx.sample(&fail(
        f.cause,
        format!(
            "dropped {:.0} s after the kill ({node}, session {:.0} s old): {f}",
            after.as_secs_f64(),
            since.elapsed().as_secs_f64()
        ),
    ));
}

/// One reconnection: a whole new session, then `whoami` to learn where it landed. The
/// recovery time is when the session was set up; `whoami` only confirms a live node.
async fn attempt(
    ctx: &Ctx,
    source: Option<std::net::Ipv4Addr>,
) -> Result<(Session, String, Instant), Failure> {
    let limit = ctx.args.timeout;
    let timed_out = || fail(Cause::Timeout, format!("reconnect took over {limit:?}"));
    let mut session = tokio::time::timeout(
        limit,
        client::setup(&ctx.target, ctx.args.transport, source, &ctx.requests),
    )
    .await
    .map_err(|_| timed_out())??;
    let at = Instant::now();
    let node = tokio::time::timeout(limit, session.whoami())
        .await
        .map_err(|_| timed_out())??
        .unwrap_or_else(|| "unknown".to_owned());
    Ok((session, node, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_socket_io_client() {
        let mut b = Backoff::new(7);
        let mut firsts = Vec::new();
        for _ in 0..2000 {
            b.reset();
            let d = b.next_delay().as_millis();
            assert!((500..=1500).contains(&d), "{d}");
            firsts.push(d);
            let d = b.next_delay().as_millis();
            assert!((1000..=3000).contains(&d), "{d}");
            let d = b.next_delay().as_millis();
            assert!((2000..=5000).contains(&d), "{d}");
            for _ in 0..5 {
                assert!(b.next_delay().as_millis() <= 5000);
            }
        }
        // Spread over the whole window, both sides of 1 s.
        let mean = firsts.iter().sum::<u128>() as f64 / firsts.len() as f64;
        assert!((900.0..1100.0).contains(&mean), "{mean}");
        assert!(firsts.iter().any(|&d| d < 600) && firsts.iter().any(|&d| d > 1400));
    }

    #[test]
    fn cpu_of_this_process() {
        let c = cpu_seconds(std::process::id()).expect("/proc/self/stat");
        assert!(c >= 0.0);
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
