//! The last fifteen minutes of every server's figures, sampled every five seconds, so the
//! dashboard shows a trend the moment it opens instead of drawing one from its own polls
//! (and an operator who opens it after an incident still sees the incident).
//!
//! Samples hold running totals; the page turns them into rates. A server that came or
//! went within the window has no figure (`null`) where it did not exist.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tether_kit::lock;

use crate::backends::{Tally, OWN_ANSWERS};
use crate::engineio::Transport;
use crate::snapshot::Snapshot;

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Fifteen minutes of samples.
pub const SAMPLES: usize = 180;

/// One server's figures at one instant: live sessions, then running totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Figures {
    polling: u64,
    websocket: u64,
    requests: u64,
    errors: u64,
    upgrades_ok: u64,
    upgrades_failed: u64,
    sessions_started: u64,
}

/// The column names of [`Figures`], in its order, as the JSON document names them.
const COLUMNS: [&str; 7] = [
    "polling",
    "websocket",
    "requests",
    "errors",
    "upgrades_ok",
    "upgrades_failed",
    "sessions_started",
];

impl Figures {
    fn columns(&self) -> [u64; 7] {
        [
            self.polling,
            self.websocket,
            self.requests,
            self.errors,
            self.upgrades_ok,
            self.upgrades_failed,
            self.sessions_started,
        ]
    }
}

/// A server by (backend, id).
type Key = (Arc<str>, Arc<str>);

#[derive(Debug)]
struct Sample {
    at_unix_ms: u64,
    /// Requests tether answered itself, and how many of them were 5xx.
    own: (u64, u64),
    servers: Vec<(Key, Figures)>,
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct History {
    ring: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Takes a sample of every server of `snapshot` (retired ones included: their
    /// sessions are still running down).
    pub fn record(&self, snapshot: &Snapshot) {
        let servers = snapshot
            .backends
            .iter()
            .flat_map(|b| b.servers.iter())
            .map(|s| {
                let st = &s.stats;
                let t = &st.metrics.tally;
                let figures = Figures {
                    polling: st.sessions(Transport::Polling),
                    websocket: st.sessions(Transport::WebSocket),
                    requests: Tally::get(&t.requests),
                    errors: Tally::get(&t.server_errors),
                    upgrades_ok: Tally::get(&t.upgrades_ok),
                    upgrades_failed: Tally::get(&t.upgrades_failed),
                    sessions_started: Tally::get(&t.sessions_started),
                };
                ((Arc::clone(&st.backend), Arc::clone(&st.id)), figures)
            })
            .collect();
        let sample = Sample {
            at_unix_ms: unix_ms(SystemTime::now()),
            own: (
                Tally::get(&OWN_ANSWERS.requests),
                Tally::get(&OWN_ANSWERS.server_errors),
            ),
            servers,
        };
        self.push(sample);
    }

    fn push(&self, sample: Sample) {
        let mut ring = lock(&self.ring);
        if ring.len() == SAMPLES {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// The samples as columns: `times` (Unix ms), `own.requests` / `own.errors`, and per
    /// server one array per figure, aligned with `times`.
    pub fn to_json(&self) -> Value {
        let ring = lock(&self.ring);
        // Every server seen in the window, in the order first seen.
        let mut keys: Vec<&Key> = Vec::new();
        for s in ring.iter() {
            for (k, _) in &s.servers {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        let servers: Vec<Value> = keys
            .iter()
            .map(|key| {
                let mut columns: Vec<Vec<Value>> = (0..COLUMNS.len())
                    .map(|_| Vec::with_capacity(ring.len()))
                    .collect();
                for s in ring.iter() {
                    let found = s.servers.iter().find(|(k, _)| k == *key);
                    for (i, col) in columns.iter_mut().enumerate() {
                        col.push(found.map_or(Value::Null, |(_, f)| f.columns()[i].into()));
                    }
                }
                let mut o = serde_json::Map::new();
                o.insert("backend".into(), (*key.0).into());
                o.insert("server".into(), (*key.1).into());
                for (name, col) in COLUMNS.iter().zip(columns) {
                    o.insert((*name).into(), Value::Array(col));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "interval_seconds": INTERVAL.as_secs(),
            "times": ring.iter().map(|s| s.at_unix_ms).collect::<Vec<_>>(),
            "own": {
                "requests": ring.iter().map(|s| s.own.0).collect::<Vec<_>>(),
                "errors": ring.iter().map(|s| s.own.1).collect::<Vec<_>>(),
            },
            "servers": servers,
        })
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, servers: &[(&str, u64)]) -> Sample {
        Sample {
            at_unix_ms: ms,
            own: (ms, 0),
            servers: servers
                .iter()
                .map(|(id, polling)| {
                    let f = Figures {
                        polling: *polling,
                        websocket: 0,
                        requests: 0,
                        errors: 0,
                        upgrades_ok: 0,
                        upgrades_failed: 0,
                        sessions_started: 0,
                    };
                    (("b".into(), (*id).into()), f)
                })
                .collect(),
        }
    }

    #[test]
    fn a_server_missing_from_a_sample_reads_null_there() {
        let h = History::default();
        h.push(sample(1, &[("a", 3)]));
        h.push(sample(2, &[("a", 4), ("b", 7)]));
        let doc = h.to_json();
        assert_eq!(doc["times"], json!([1, 2]));
        assert_eq!(doc["servers"][0]["server"], "a");
        assert_eq!(doc["servers"][0]["polling"], json!([3, 4]));
        assert_eq!(doc["servers"][1]["polling"], json!([null, 7]));
        assert_eq!(doc["own"]["requests"], json!([1, 2]));
    }

    #[test]
    fn the_ring_keeps_the_last_fifteen_minutes() {
        let h = History::default();
        for ms in 0..SAMPLES as u64 + 5 {
            h.push(sample(ms, &[("a", ms)]));
        }
        let doc = h.to_json();
        assert_eq!(doc["times"].as_array().map(Vec::len), Some(SAMPLES));
        assert_eq!(doc["times"][0], 5, "the oldest samples went first");
        assert_eq!(SAMPLES as u64 * INTERVAL.as_secs(), 15 * 60);
    }
}
