//! The bench report: what `--json` prints (one object), or a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::{Cause, Transport};
use super::storm::StormReport;
use super::{Ctx, Mode};
use tether_kit::lock;

/// Failed clients by cause (a client counts once, at its first failure).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Failed {
    /// HTTP 400 `Session ID unknown`: a request reached a server without the session.
    pub session_unknown: u64,
    /// TCP connect or handshake I/O failed.
    pub connect: u64,
    /// A setup, `whoami` or ack took longer than `--timeout`.
    pub timeout: u64,
    /// An unexpected answer.
    pub protocol: u64,
    /// The server closed an established session.
    pub closed: u64,
}

/// Latency percentiles, in microseconds (0 when nothing was measured).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub(super) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: round2(h.mean()),
        }
    }
}

/// The result of a bench run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub mode: Mode,
    pub transport: Transport,
    /// Clients asked for.
    pub clients: u64,
    /// Sessions set up (Socket.IO connected).
    pub established: u64,
    /// Of those, sessions that upgraded from polling to WebSocket.
    pub upgraded: u64,
    pub failed: Failed,
    pub failed_total: u64,
    /// Failed clients whose session had been established (counted in `failed` too).
    pub dropped: u64,
    pub messages_sent: u64,
    pub messages_acked: u64,
    /// Acks per second over the traffic phase.
    pub messages_per_sec: f64,
    /// Echo round trips.
    pub rtt_us: Latency,
    /// HTTP requests made, setup included: polling requests and WebSocket handshakes.
    pub http_requests: u64,
    /// Sessions established per second over the setup phase.
    pub setup_rate: f64,
    /// Session setup times.
    pub setup_us: Latency,
    /// Sessions per node (`--whoami`; empty otherwise).
    pub per_node: BTreeMap<String, u64>,
    /// The busiest node's sessions over the mean per node (`--whoami`; null otherwise).
    pub max_over_mean: Option<f64>,
    /// Setup phase: from the start until every setup finished.
    pub setup_elapsed_s: f64,
    /// Traffic phase: until every client finished.
    pub traffic_elapsed_s: f64,
    pub elapsed_s: f64,
    /// A few distinct failure messages.
    pub errors: Vec<String>,
    /// `--mode storm`: the kill and the reconnections (null otherwise).
    pub storm: Option<StormReport>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rate(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        round2(n as f64 / s)
    }
}

/// The imbalance of a per-node count: max over mean (None without nodes).
pub fn max_over_mean(per_node: &BTreeMap<String, u64>) -> Option<f64> {
    let total: u64 = per_node.values().sum();
    let max = *per_node.values().max()?;
    if total == 0 {
        return None;
    }
    let mean = total as f64 / per_node.len() as f64;
    Some((max as f64 / mean * 1000.0).round() / 1000.0)
}

pub(super) fn build(
    ctx: &Ctx,
    setup: Duration,
    traffic: Duration,
    elapsed: Duration,
    storm: Option<StormReport>,
) -> Report {
    let n = |c: Cause| ctx.failed[c.index()].load(Ordering::Relaxed);
    let per_node: BTreeMap<String, u64> = lock(&ctx.nodes)
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let established = ctx.established.load(Ordering::Relaxed);
    let acked = ctx.acked.load(Ordering::Relaxed);
    Report {
        url: ctx.args.url.clone(),
        mode: ctx.args.mode,
        transport: ctx.args.transport,
        clients: ctx.args.clients,
        established,
        upgraded: ctx.upgraded.load(Ordering::Relaxed),
        failed: Failed {
            session_unknown: n(Cause::SessionUnknown),
            connect: n(Cause::Connect),
            timeout: n(Cause::Timeout),
            protocol: n(Cause::Protocol),
            closed: n(Cause::Closed),
        },
        failed_total: ctx.failed_total(),
        dropped: ctx.dropped.load(Ordering::Relaxed),
        messages_sent: ctx.sent.load(Ordering::Relaxed),
        messages_acked: acked,
        messages_per_sec: if ctx.args.mode == Mode::Echo {
            rate(acked, traffic)
        } else {
            0.0
        },
        rtt_us: Latency::of(&lock(&ctx.rtt)),
        http_requests: ctx.requests.load(Ordering::Relaxed),
        setup_rate: rate(established, setup),
        setup_us: Latency::of(&lock(&ctx.setup)),
        max_over_mean: max_over_mean(&per_node),
        per_node,
        setup_elapsed_s: round3(setup.as_secs_f64()),
        traffic_elapsed_s: round3(traffic.as_secs_f64()),
        elapsed_s: round3(elapsed.as_secs_f64()),
        errors: lock(&ctx.errors).clone(),
        storm,
    }
}

impl Report {
    /// The human-readable report.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let f = &self.failed;
        let _ = writeln!(
            s,
            "tether bench: {} clients, {:?} mode, {:?} transport, {}",
            self.clients, self.mode, self.transport, self.url
        );
        let _ = writeln!(
            s,
            "  sessions      established {} (upgraded {}), failed {} (dropped after setup {})",
            self.established, self.upgraded, self.failed_total, self.dropped
        );
        let _ = writeln!(
            s,
            "  failures      session_unknown {}, connect {}, timeout {}, protocol {}, closed {}",
            f.session_unknown, f.connect, f.timeout, f.protocol, f.closed
        );
        let _ = writeln!(
            s,
            "  setup         {:.1} sessions/s over {:.3} s; latency p50 {} µs, p99 {} µs, max {} µs",
            self.setup_rate,
            self.setup_elapsed_s,
            self.setup_us.p50,
            self.setup_us.p99,
            self.setup_us.max
        );
        if self.mode == Mode::Echo {
            let _ = writeln!(
                s,
                "  messages      sent {}, acked {}, {:.1}/s over {:.3} s",
                self.messages_sent,
                self.messages_acked,
                self.messages_per_sec,
                self.traffic_elapsed_s
            );
            let r = &self.rtt_us;
            let _ = writeln!(
                s,
                "  round trip    p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, mean {:.1} µs",
                r.p50, r.p99, r.p999, r.max, r.mean
            );
        }
        if !self.per_node.is_empty() {
            let nodes: Vec<String> = self
                .per_node
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                s,
                "  per node      {} (max/mean {:.3})",
                nodes.join(", "),
                self.max_over_mean.unwrap_or(0.0)
            );
        }
        if let Some(st) = &self.storm {
            let _ = writeln!(
                s,
                "  storm         killed {}{}: dropped {} (expected {}), recovered {}, unrecovered {}, attempts {} (failed {})",
                st.killed_pid,
                st.killed_node.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
                st.dropped,
                st.orphans_expected,
                st.recovered,
                st.unrecovered,
                st.attempts,
                st.failed_attempts
            );
            let r = &st.recovered_us;
            let _ = writeln!(
                s,
                "  recovered     p50 {} µs, p99 {} µs, max {} µs after the kill; all in {:.3} s; noticed p99 {} µs",
                r.p50, r.p99, r.max, st.all_recovered_s, st.notice_us.p99
            );
            let landed: Vec<String> = st.landed.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "  landed on     {}", landed.join(", "));
            if let Some(c) = st.cpu_s {
                let _ = writeln!(
                    s,
                    "  proxy cpu     {:.3} s over the storm, {:.1} µs per recovered session",
                    c,
                    st.cpu_us_per_recovered.unwrap_or(0.0)
                );
            }
        }
        let _ = writeln!(s, "  http requests {}", self.http_requests);
        let _ = writeln!(s, "  elapsed       {:.3} s", self.elapsed_s);
        for e in &self.errors {
            let _ = writeln!(s, "  error         {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imbalance() {
        let mut m = BTreeMap::new();
        assert_eq!(max_over_mean(&m), None);
        m.insert("a".to_owned(), 10);
        m.insert("b".to_owned(), 20);
        m.insert("c".to_owned(), 30);
        assert_eq!(max_over_mean(&m), Some(1.5));
        assert_eq!(rate(10, Duration::from_secs(4)), 2.5);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
    }
}
