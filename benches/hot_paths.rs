//! The request path's per-request work besides placement: recognising an Engine.IO
//! request and finding its sid (or only whether it names one), reading the sid out of a handshake answer, and the sid
//! table's lookup (pin + unpin) and insert.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tether::affinity::SidTable;
use tether::backends::ServerStats;
use tether::engineio::{names_sid, parse_open_packet, parse_query};

/// The client every benchmark session belongs to.
const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn engineio(c: &mut Criterion) {
    let mut g = c.benchmark_group("engineio");
    let query = "EIO=4&transport=polling&t=PZ3cQ8f&sid=fUvk3y5PQy1b8aqfAAAB";
    g.bench_function("sid_from_query", |b| {
        b.iter(|| {
            parse_query(black_box(query))
                .ok()
                .flatten()
                .and_then(|q| q.sid)
        })
    });
    // Asked of every request (may it start a session?): one substring search, against
    // the walk over the parameters it replaced.
    let handshake = "EIO=4&transport=polling&t=PZ3cQ8f";
    for (name, q) in [
        ("names_sid/with_sid", query),
        ("names_sid/handshake", handshake),
    ] {
        g.bench_function(name, |b| b.iter(|| names_sid(black_box(q))));
    }
    g.bench_function("names_sid/walk_replaced", |b| {
        b.iter(|| black_box(query).split('&').any(|kv| kv.starts_with("sid=")))
    });
    let open = br#"0{"sid":"fUvk3y5PQy1b8aqfAAAB","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
    g.bench_function("open_packet", |b| {
        b.iter(|| parse_open_packet(black_box(open)).map(|p| p.sid.len()))
    });
    g.finish();
}

fn sid_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("sid_table");
    let table = Arc::new(SidTable::new(1_000_000));
    let stats = Arc::new(ServerStats::new("b".into(), "node-1".into()));
    let sids: Vec<String> = (0..100_000).map(|i| format!("sid{i:017}AAAB")).collect();
    for s in &sids {
        let _ = table.insert(s, Arc::clone(&stats), Duration::from_secs(3600), LOCAL);
    }
    let mut i = 0usize;
    g.bench_function("pin_and_unpin_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % sids.len();
            drop(table.pin_poll(black_box(&sids[i])))
        })
    });
    let mut n = 0u64;
    g.bench_function("insert_then_remove", |b| {
        b.iter(|| {
            n += 1;
            let sid = format!("new{n:017}AAAB");
            let _ = table.insert(&sid, Arc::clone(&stats), Duration::from_secs(60), LOCAL);
            table.remove(&sid);
        })
    });
    g.finish();
}

criterion_group!(benches, engineio, sid_table);
criterion_main!(benches);
