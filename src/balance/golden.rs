//! Golden vectors: the routing contract between tether versions and instances.
//!
//! Instances never coordinate, so they agree on placement only because they compute it the
//! same way. These values were generated once and pasted in. If one of these tests fails, the
//! hash, its seed, the point labels, the points per weight, the point budget or the walk has
//! changed, and a mixed fleet (or an upgrade) would send the same client to different servers.
//! Do not "fix" the expected values; fix the change, or ship it knowingly as a routing break.

use super::{pick_hash_bounded, pick_least, placement_hash, Ring};

const SERVERS: [(&str, u32); 5] = [
    ("node-1", 1),
    ("node-2", 1),
    ("node-3", 2),
    ("node-4", 1),
    ("node-5", 3),
];

/// Key → the server it lands on with every server up and idle.
const OWNERS: [(&str, &str); 31] = [
    ("127.0.0.1", "node-5"),
    ("10.0.0.7", "node-5"),
    ("user-42", "node-2"),
    ("", "node-5"),
    ("::1", "node-3"),
    ("192.168.1.1", "node-5"),
    ("192.168.1.2", "node-3"),
    ("2001:db8::1", "node-3"),
    ("172.16.0.1", "node-3"),
    ("8.8.8.8", "node-5"),
    ("203.0.113.9", "node-3"),
    ("198.51.100.23", "node-4"),
    ("0.0.0.0", "node-5"),
    ("255.255.255.255", "node-5"),
    ("tether", "node-3"),
    ("socket.io", "node-2"),
    ("a", "node-5"),
    ("b", "node-5"),
    ("A", "node-3"),
    ("user-1", "node-5"),
    ("user-2", "node-1"),
    ("user-43", "node-3"),
    ("session-0", "node-2"),
    ("session-1", "node-5"),
    ("Bearer abc", "node-5"),
    ("café", "node-5"),
    ("ключ", "node-5"),
    ("🦀", "node-5"),
    ("with space", "node-2"),
    ("node-1", "node-2"),
    // Hashes exactly to node-1's point 0, so it pins "first point >= key", not "> key".
    ("node-1#0", "node-1"),
];

/// Full walks: the fallback order when servers are down or full, and the tie-break order of
/// least-sessions placement.
const WALKS: [(&str, [&str; 5]); 4] = [
    (
        "127.0.0.1",
        ["node-5", "node-4", "node-2", "node-1", "node-3"],
    ),
    ("", ["node-5", "node-4", "node-2", "node-1", "node-3"]),
    (
        "user-42",
        ["node-2", "node-5", "node-1", "node-3", "node-4"],
    ),
    (
        "10.0.0.7",
        ["node-5", "node-3", "node-2", "node-1", "node-4"],
    ),
];

fn ring() -> Ring {
    Ring::new(&SERVERS)
}

fn id(server: usize) -> &'static str {
    SERVERS.get(server).map_or("<none>", |s| s.0)
}

fn key(k: &str) -> u64 {
    placement_hash(k.as_bytes())
}

#[test]
fn placement_hash_matches_golden_values() {
    assert_eq!(placement_hash(b"tether"), 0x9593_cb62_d796_4c47);
    assert_eq!(placement_hash(b""), 0x7204_16ee_4693_d2e4);
}

#[test]
fn keys_land_on_their_golden_servers() {
    let ring = ring();
    let weights = SERVERS.map(|s| s.1);
    for (k, expected) in OWNERS {
        assert_eq!(
            ring.walk(key(k)).next().map(id),
            Some(expected),
            "key {k:?}"
        );
        let bounded = pick_hash_bounded(&ring, key(k), &weights, 1.25, |_| true, |_| 0);
        assert_eq!(bounded.map(id), Some(expected), "bounded, key {k:?}");
        let least = pick_least(&ring, key(k), &weights, |_| true, |_| 0);
        assert_eq!(least.map(id), Some(expected), "least, key {k:?}");
    }
    // A 300-character key takes xxh3's long-input path.
    assert_eq!(
        ring.walk(key(&"x".repeat(300))).next().map(id),
        Some("node-3")
    );
}

#[test]
fn walks_follow_their_golden_order() {
    let ring = ring();
    for (k, expected) in WALKS {
        let walk: Vec<&str> = ring.walk(key(k)).map(id).collect();
        assert_eq!(walk, expected, "key {k:?}");
    }
}

/// Pins the point budget too: with these weights the ring runs at reduced density.
#[test]
fn heavy_weight_walks_follow_their_golden_order() {
    let ring = Ring::new(&[("big-1", 200), ("big-2", 100), ("big-3", 1)]);
    // Total weight 301 at 2048 points per weight (4096 halved once) fits the 2^20 budget.
    assert_eq!(format!("{ring:?}"), "Ring { servers: 3, points: 616448 }");
    for (k, expected) in [
        ("127.0.0.1", [0, 1, 2]),
        ("e", [1, 0, 2]),
        ("user-42", [0, 1, 2]),
        ("client-27", [2, 0, 1]),
    ] {
        assert_eq!(ring.walk(key(k)).collect::<Vec<_>>(), expected, "key {k:?}");
    }
}
