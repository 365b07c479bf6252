//! The shared tables of the request path, hit from 1 and from 2 threads at once: what a
//! runtime with more worker threads pays for sharing them (benches/compare.sh's multicore
//! scenario measures the whole proxy).
//!
//! Each benchmark runs the same operations from every thread together and reports the
//! wall time over all operations done (every thread's): with perfect scaling 2 threads
//! halve it; lock or cache-line contention shows as less, or more. On a machine whose
//! cores are busy with other work the 2-thread figures mean little.
//!
//! - `sid_pin_unpin`: a request of a known session (pin + unpin), each thread on its
//!   own sids (the 64 shards' mutexes; the server's counts do not change).
//! - `sid_insert_remove`: a session learned and forgotten, all on one server: the shard
//!   mutex, and the server's session counters, one set of atomics every thread writes.
//! - `admission_one_client` / `admission_many_clients`: the per-client limits of a
//!   request, every request from one address (one entry, one mutex: clients behind one
//!   NAT, or a load test) or from an address of each thread's own.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use tether::admission::Admission;
use tether::affinity::SidTable;
use tether::backends::ServerStats;
use tether::config::{ClientLimits, Rate};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const THREADS: [usize; 2] = [1, 2];

/// Runs `op(thread, i)` `iters` times on each of `threads` threads, started together;
/// the wall time over all operations (first start to last end, each read by its thread),
/// as criterion's time for `iters` of them.
fn together<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    let start = Barrier::new(threads);
    let (op, start) = (&op, &start);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    start.wait();
                    let t0 = Instant::now();
                    for i in 0..iters {
                        op(t, i);
                    }
                    (t0, Instant::now())
                })
            })
            .collect();
        let spans: Vec<(Instant, Instant)> = handles
            .into_iter()
            .map(|h| h.join().expect("a bench thread panicked"))
            .collect();
        let first = spans.iter().map(|s| s.0).min().expect("a thread");
        let last = spans.iter().map(|s| s.1).max().expect("a thread");
        last.duration_since(first) / threads as u32
    })
}

fn sid_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("multicore");
    let table = Arc::new(SidTable::new(1_000_000));
    let stats = Arc::new(ServerStats::new("b".into(), "node-1".into()));
    // Each thread its own 50,000 sids.
    let per_thread = 50_000usize;
    let sids: Vec<Vec<String>> = (0..THREADS.len())
        .map(|t| {
            (0..per_thread)
                .map(|i| format!("t{t}sid{i:015}AAAB"))
                .collect()
        })
        .collect();
    for s in sids.iter().flatten() {
        let _ = table.insert(s, Arc::clone(&stats), Duration::from_secs(3600), LOCAL);
    }
    for threads in THREADS {
        g.bench_with_input(
            BenchmarkId::new("sid_pin_unpin", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    together(n, iters, |t, i| {
                        let sid = &sids[t][(i as usize * 7919) % per_thread];
                        drop(table.pin_poll(black_box(sid)))
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("sid_insert_remove", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    together(n, iters, |t, i| {
                        let sid = format!("new{t}x{i:015}AAAB");
                        let _ =
                            table.insert(&sid, Arc::clone(&stats), Duration::from_secs(60), LOCAL);
                        table.remove(&sid);
                    })
                })
            },
        );
    }
    g.finish();
}

fn admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("multicore");
    let unlimited = Rate {
        per_second: 1e12,
        burst: u32::MAX,
    };
    let limits = ClientLimits {
        requests: unlimited,
        handshakes: unlimited,
        ..ClientLimits::default()
    };
    let admission = Admission::default();
    for threads in THREADS {
        for (name, one) in [
            ("admission_one_client", true),
            ("admission_many_clients", false),
        ] {
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &n| {
                b.iter_custom(|iters| {
                    together(n, iters, |t, _| {
                        let ip = if one {
                            LOCAL
                        } else {
                            IpAddr::V4(Ipv4Addr::new(127, 0, 1, t as u8 + 1))
                        };
                        let _ = black_box(admission.request(ip, false, &limits));
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, sid_table, admission);
criterion_main!(benches);
