//! Placement costs: one lookup per new session, one ring rebuild per config reload.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tether::balance::{pick_hash_bounded, pick_least, placement_hash, Ring};

fn servers(n: usize) -> Vec<(String, u32)> {
    (1..=n).map(|i| (format!("node-{i}"), 1)).collect()
}

fn borrowed(servers: &[(String, u32)]) -> Vec<(&str, u32)> {
    servers.iter().map(|(id, w)| (id.as_str(), *w)).collect()
}

/// Distinct hashed client addresses, cycled through so the ring's cache behaviour resembles
/// real traffic rather than one hot key.
struct Keys {
    keys: Vec<u64>,
    next: usize,
}

impl Keys {
    fn new() -> Keys {
        let keys = (0..1024u32)
            .map(|i| placement_hash(format!("10.0.{}.{}", i >> 8, i & 255).as_bytes()))
            .collect();
        Keys { keys, next: 0 }
    }

    fn next(&mut self) -> u64 {
        self.next = (self.next + 1) % self.keys.len();
        self.keys[self.next]
    }
}

fn lookup(c: &mut Criterion) {
    let servers = servers(10);
    let ring = Ring::new(&borrowed(&servers));
    let weights = [1u32; 10];
    let loads: Vec<u64> = (0..10).map(|i| 100 + i * 7).collect();
    let mut group = c.benchmark_group("lookup_10_servers");
    let mut keys = Keys::new();
    group.bench_function("pick_hash_bounded", |b| {
        b.iter(|| {
            let k = black_box(keys.next());
            pick_hash_bounded(&ring, k, &weights, 1.25, |_| true, |s| loads[s])
        })
    });
    let mut keys = Keys::new();
    group.bench_function("pick_least", |b| {
        b.iter(|| {
            pick_least(
                &ring,
                black_box(keys.next()),
                &weights,
                |_| true,
                |s| loads[s],
            )
        })
    });
    group.finish();
}

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_new");
    for n in [10, 100] {
        let servers = servers(n);
        let servers = borrowed(&servers);
        group.bench_function(format!("{n}_servers"), |b| {
            b.iter(|| Ring::new(black_box(&servers)))
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, rebuild);
criterion_main!(benches);
