//! Where a new session lands when nothing (sid, cookie) pins it to a server yet: the
//! pick functions below, and [`Placer`], one backend's placement (policy, slow start,
//! round robin) over servers it knows only as [`Candidate`]s.
//!
//! Placement hangs off a consistent-hash ring, not `hash % n` or a random pick, because
//! tether runs as several instances that restart independently and never talk to each other:
//! all of them must send a given key to the same server, and a server leaving or joining must
//! move only the keys that have to move, so a client reconnecting after a blip finds the
//! server that still holds its state.
//!
//! Pure consistent hashing lets one hot key (many clients behind one NAT address) pile onto a
//! single server, so hash placement bounds each server's load to a multiple of its fair share
//! and passes the overflow along the ring. Least-sessions placement still walks the ring, only
//! to break ties: instances that start empty would otherwise all send their first clients to
//! the first server in config order.

pub mod placer;
pub mod ring;
pub use placer::{Candidate, Placer, Policy};
pub use ring::{Ring, Walk};

#[cfg(test)]
mod golden;

use ring::effective_weight;

/// Seed of [`placement_hash`]: arbitrary ("tether" in ASCII), but fixed forever, because
/// changing it re-routes every key.
const SEED: u64 = 0x7465_7468_6572;

/// Fixed-seed, platform-independent 64-bit hash for placement: xxh3_64_with_seed(key, SEED)
/// with a const SEED. Never ahash / RandomState (they differ across CPUs, versions, processes):
/// every tether instance and every restart must route the same key to the same server.
pub fn placement_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, SEED)
}

/// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2016):
/// walk the ring from the key; take the first eligible server whose load is below its cap,
/// cap_i = ceil(factor * (L + 1) * w_i / W) where L = sum of loads of eligible servers and W = sum
/// of weights of eligible servers. factor > 1.0 (default 1.25). Returns None only if no server is eligible.
///
/// With `factor >= 1` the caps add up to more than `L`, so some eligible server is always
/// below its cap. Should a bad factor (NaN, below 1) get through, the key goes to its first
/// eligible server, as plain consistent hashing would, rather than nowhere.
pub fn pick_hash_bounded(
    ring: &Ring,
    key: u64,
    weights: &[u32],
    factor: f64,
    eligible: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> u64,
) -> Option<usize> {
    let totals = Totals::of_eligible(ring.server_count(), weights, &eligible, &load);
    let mut candidates = ring.walk(key).filter(|&s| eligible(s));
    let first = candidates.next()?;
    std::iter::once(first)
        .chain(candidates)
        .find(|&s| load(s) < totals.cap(factor, weight(weights, s)))
        .or(Some(first))
}

/// Least load per unit of weight among eligible servers (compare load_a * w_b vs load_b * w_a, no floats);
/// ties broken by ring walk order from `key` (the first in walk order wins). None if none eligible.
pub fn pick_least(
    ring: &Ring,
    key: u64,
    weights: &[u32],
    eligible: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> u64,
) -> Option<usize> {
    ring.walk(key)
        .filter(|&s| eligible(s))
        .map(|s| Weighed {
            server: s,
            load: load(s),
            weight: weight(weights, s),
        })
        .reduce(|best, next| {
            if next.is_lighter_than(&best) {
                next
            } else {
                best
            }
        })
        .map(|best| best.server)
}

/// Weight of server `s`; a missing or zero weight counts as 1 rather than panicking or
/// hiding the server.
pub(crate) fn weight(weights: &[u32], s: usize) -> u64 {
    effective_weight(weights.get(s).copied().unwrap_or(1))
}

/// Load and weight summed over eligible servers: the "whole" that fair shares are cut from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Totals {
    load: u64,
    weight: u64,
}

impl Totals {
    pub(crate) fn of_eligible(
        servers: usize,
        weights: &[u32],
        eligible: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> u64,
    ) -> Totals {
        (0..servers)
            .filter(|&s| eligible(s))
            .fold(Totals { load: 0, weight: 0 }, |t, s| Totals {
                load: t.load.saturating_add(load(s)),
                weight: t.weight.saturating_add(weight(weights, s)),
            })
    }

    /// `ceil(factor * (L + 1) * w / W)`: the `+ 1` counts the session being placed, so that
    /// an empty cluster still has room.
    pub(crate) fn cap(self, factor: f64, weight: u64) -> u64 {
        let incoming = self.load.saturating_add(1) as f64;
        (factor * incoming * weight as f64 / self.weight.max(1) as f64).ceil() as u64
    }
}

struct Weighed {
    server: usize,
    load: u64,
    weight: u64,
}

impl Weighed {
    /// Strictly lighter per unit of weight, cross-multiplied in u128 so it is exact and
    /// cannot overflow; strictness keeps the earlier candidate on a tie.
    fn is_lighter_than(&self, other: &Weighed) -> bool {
        u128::from(self.load) * u128::from(other.weight)
            < u128::from(other.load) * u128::from(self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(n: usize) -> (Vec<String>, Ring) {
        let ids: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        let servers: Vec<(&str, u32)> = ids.iter().map(|id| (id.as_str(), 1)).collect();
        let ring = Ring::new(&servers);
        (ids, ring)
    }

    fn key(name: &str) -> u64 {
        placement_hash(name.as_bytes())
    }

    /// The order the picks must follow for `k`.
    fn walk_of(ring: &Ring, k: u64) -> Vec<usize> {
        ring.walk(k).collect()
    }

    #[test]
    fn placement_hash_is_seeded_not_plain_xxh3() {
        assert_ne!(
            placement_hash(b"tether"),
            xxhash_rust::xxh3::xxh3_64(b"tether")
        );
    }

    #[test]
    fn bounded_pick_takes_the_keys_owner_while_under_cap() {
        let (_, ring) = ring(5);
        for name in ["a", "b", "c", "d", "e", "f"] {
            let k = key(name);
            let pick = pick_hash_bounded(&ring, k, &[1; 5], 1.25, |_| true, |_| 3);
            assert_eq!(pick, ring.walk(k).next());
        }
    }

    #[test]
    fn bounded_pick_passes_a_full_server_to_the_next_in_walk_order() {
        let (_, ring) = ring(5);
        let k = key("hot");
        let order = walk_of(&ring, k);
        let full = order[0];
        // L = 100, cap = ceil(1.25 * 101 / 5) = 26: the owner at 100 is full, the rest at 0 are not.
        let load = |s: usize| if s == full { 100 } else { 0 };
        assert_eq!(
            pick_hash_bounded(&ring, k, &[1; 5], 1.25, |_| true, load),
            Some(order[1])
        );
    }

    #[test]
    fn bounded_cap_counts_only_eligible_servers() {
        let (_, ring) = ring(3);
        let k = key("cap");
        let order = walk_of(&ring, k);
        let (owner, down) = (order[0], order[2]);
        // Eligible: owner (load 4) and order[1] (load 0). L = 4, W = 2, cap = ceil(1.25 * 5 / 2) = 4,
        // so the owner is full. Counting the down server's weight would make the cap 3 but would
        // not change that; counting its load (1000) would raise the cap to 629 and keep the owner.
        let load = |s: usize| match s {
            s if s == owner => 4,
            s if s == down => 1000,
            _ => 0,
        };
        let pick = pick_hash_bounded(&ring, k, &[1; 3], 1.25, |s| s != down, load);
        assert_eq!(pick, Some(order[1]));
    }

    #[test]
    fn bounded_pick_skips_ineligible_servers() {
        let (_, ring) = ring(4);
        let k = key("skip");
        let order = walk_of(&ring, k);
        let pick = pick_hash_bounded(&ring, k, &[1; 4], 1.25, |s| s != order[0], |_| 0);
        assert_eq!(pick, Some(order[1]));
    }

    #[test]
    fn bounded_pick_with_a_bad_factor_falls_back_to_the_first_eligible() {
        let (_, ring) = ring(3);
        let k = key("bad");
        let order = walk_of(&ring, k);
        for factor in [0.0, 0.5, -1.0, f64::NAN] {
            let pick = pick_hash_bounded(&ring, k, &[1; 3], factor, |_| true, |_| 1_000);
            assert_eq!(pick, Some(order[0]), "factor {factor}");
        }
    }

    #[test]
    fn picks_with_no_eligible_server_return_none() {
        let (_, ring) = ring(3);
        assert_eq!(
            pick_hash_bounded(&ring, 1, &[1; 3], 1.25, |_| false, |_| 0),
            None
        );
        assert_eq!(pick_least(&ring, 1, &[1; 3], |_| false, |_| 0), None);
    }

    #[test]
    fn picks_on_an_empty_ring_return_none() {
        let ring = Ring::new(&[]);
        assert_eq!(
            pick_hash_bounded(&ring, 1, &[], 1.25, |_| true, |_| 0),
            None
        );
        assert_eq!(pick_least(&ring, 1, &[], |_| true, |_| 0), None);
    }

    #[test]
    fn picks_on_a_single_server_ring_always_take_it() {
        let (_, ring) = ring(1);
        for k in [0, 1, u64::MAX, key("x")] {
            assert_eq!(
                pick_hash_bounded(&ring, k, &[1], 1.1, |_| true, |_| u64::MAX),
                Some(0)
            );
            assert_eq!(pick_least(&ring, k, &[1], |_| true, |_| u64::MAX), Some(0));
        }
    }

    #[test]
    fn picks_tolerate_missing_and_zero_weights() {
        let (_, ring) = ring(4);
        let k = key("w");
        assert!(pick_hash_bounded(&ring, k, &[], 1.25, |_| true, |_| 0).is_some());
        assert!(pick_hash_bounded(&ring, k, &[0, 0], 1.25, |_| true, |_| 0).is_some());
        // Only server 0 has a weight (4): 6/4 beats the others' 2/1, as long as missing means 1.
        assert_eq!(
            pick_least(&ring, k, &[4], |_| true, |s| if s == 0 { 6 } else { 2 }),
            Some(0)
        );
    }

    #[test]
    fn least_picks_fewest_sessions() {
        let (_, ring) = ring(4);
        let loads = [10, 3, 7, 4];
        for name in ["a", "b", "c"] {
            assert_eq!(
                pick_least(&ring, key(name), &[1; 4], |_| true, |s| loads[s]),
                Some(1)
            );
        }
    }

    #[test]
    fn least_compares_sessions_per_unit_of_weight() {
        let (_, ring) = ring(3);
        // Per weight: 10/1, 3/1, 7/3 — server 2 has the most sessions but the least per weight.
        let loads = [10, 3, 7];
        assert_eq!(
            pick_least(&ring, key("a"), &[1, 1, 3], |_| true, |s| loads[s]),
            Some(2)
        );
        // Equal per weight (4/2 == 2/1) is a tie, not a win for either.
        let tied = [4, 2, 100];
        let k = key("t");
        let first = ring.walk(k).find(|&s| s < 2);
        assert_eq!(
            pick_least(&ring, k, &[2, 1, 1], |_| true, |s| tied[s]),
            first
        );
    }

    #[test]
    fn least_breaks_ties_by_walk_order() {
        let (_, ring) = ring(6);
        let mut picked = std::collections::BTreeSet::new();
        for i in 0..50 {
            let k = key(&format!("client-{i}"));
            let pick = pick_least(&ring, k, &[1; 6], |_| true, |_| 0);
            assert_eq!(pick, ring.walk(k).next());
            picked.extend(pick);
        }
        assert!(picked.len() > 1, "ties always went to {picked:?}");
    }

    #[test]
    fn least_breaks_partial_ties_by_walk_order_among_the_lightest() {
        let (_, ring) = ring(6);
        let loads = [5, 1, 9, 1, 1, 7];
        for i in 0..50 {
            let k = key(&format!("c{i}"));
            let first_light = ring.walk(k).find(|&s| loads[s] == 1);
            assert_eq!(
                pick_least(&ring, k, &[1; 6], |_| true, |s| loads[s]),
                first_light
            );
        }
    }

    #[test]
    fn least_skips_ineligible_servers() {
        let (_, ring) = ring(3);
        let loads = [0, 5, 9];
        assert_eq!(
            pick_least(&ring, key("a"), &[1; 3], |s| s != 0, |s| loads[s]),
            Some(1)
        );
    }

    /// Hot keys (few distinct values, as many clients behind one address) are what plain
    /// consistent hashing cannot spread; mixing them in makes the cap do real work.
    fn key_stream() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(prop_oneof![3 => 0u64..6, 1 => any::<u64>()], 400).prop_map(|ks| {
            ks.into_iter()
                .map(|k| placement_hash(&k.to_le_bytes()))
                .collect()
        })
    }

    fn weighted_ring(weights: &[u32]) -> Ring {
        let ids: Vec<String> = (0..weights.len()).map(|i| format!("s{i}")).collect();
        let servers: Vec<(&str, u32)> = ids
            .iter()
            .zip(weights)
            .map(|(id, &w)| (id.as_str(), w))
            .collect();
        Ring::new(&servers)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn bounded_load_never_exceeds_cap(
            weights in prop::collection::vec(1u32..=4, 2..=20),
            equal in any::<bool>(),
            factor in prop::sample::select(vec![1.1, 1.25, 2.0]),
            keys in key_stream(),
        ) {
            let weights: Vec<u32> = if equal { vec![1; weights.len()] } else { weights };
            let ring = weighted_ring(&weights);
            let total_weight: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let mut counts = vec![0u64; weights.len()];
            for (placed, &k) in keys.iter().enumerate() {
                let pick = pick_hash_bounded(&ring, k, &weights, factor, |_| true, |s| counts[s]);
                let Some(s) = pick else { return Err(TestCaseError::fail("no pick")) };
                counts[s] += 1;
                let total = placed as f64 + 1.0;
                for (i, &c) in counts.iter().enumerate() {
                    let bound = (factor * total * f64::from(weights[i]) / total_weight as f64 + 1e-9).ceil();
                    prop_assert!(c as f64 <= bound, "server {} has {} > {} after {}", i, c, bound, total);
                }
            }
        }
    }
}
