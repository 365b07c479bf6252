//! One backend's placement: its ring and weights, its policy, slow start and the round
//! robin turn, built once per routing snapshot.
//!
//! The placer never looks at a server's internals. It asks each [`Candidate`] three
//! questions (may it take a session now, how loaded is it, how long has it been able to
//! take sessions) so that health, capacity and operator state stay the business of the
//! layer that owns servers, and placement can be tested with plain numbers.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{pick_hash_bounded, pick_least, placement_hash, weight, Ring, Totals};

/// What placement needs to know of a server.
pub trait Candidate {
    /// Whether a new session may be placed here now (healthy, ready, not full).
    fn accepts_new_sessions(&self) -> bool;
    /// Live sessions plus handshakes in flight.
    fn load(&self) -> u64;
    /// How long since it last became able to take sessions; `None` when it has been able
    /// to since tether started (nothing to ramp up from).
    fn up_for(&self) -> Option<Duration>;
    /// Whether live traffic advises against it for now (slow or failing): others are
    /// tried first, and it is chosen only when no other can take the session.
    fn avoided(&self) -> bool {
        false
    }
}

/// How a new session's server is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Fewest live sessions per unit of weight; ties go along the ring from the key.
    LeastSessions,
    /// Consistent hash of the key, no server above `load_factor` × its fair share.
    Hash { load_factor: f64 },
    /// Each server in turn, whatever the key (stateless upstreams).
    RoundRobin,
}

impl Policy {
    /// As the config names it, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::LeastSessions => "least_sessions",
            Policy::Hash { .. } => "hash",
            Policy::RoundRobin => "round_robin",
        }
    }
}

#[derive(Debug)]
pub struct Placer {
    ring: Ring,
    weights: Vec<u32>,
    policy: Policy,
    /// A returning server's share ramps from 0 to full over this window.
    slow_start: Option<Duration>,
    turn: AtomicUsize,
}

impl Placer {
    /// `servers`: (id, weight) of every server placement may choose, in the order the
    /// candidates will be given.
    pub fn new(servers: &[(&str, u32)], policy: Policy, slow_start: Option<Duration>) -> Placer {
        Placer {
            ring: Ring::new(servers),
            weights: servers.iter().map(|(_, w)| *w).collect(),
            policy,
            slow_start: slow_start.filter(|w| !w.is_zero()),
            turn: AtomicUsize::new(0),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// How many servers placement chooses from.
    pub fn server_count(&self) -> usize {
        self.ring.server_count()
    }

    /// The index in `servers` of the server for a new session with placement hash `key`,
    /// skipping `exclude` (tried already and failed). `servers` may be longer than the
    /// placer's servers (servers kept only for their pinned sessions); those are never
    /// chosen.
    pub fn place<C: Candidate>(&self, servers: &[C], key: u64, exclude: &[usize]) -> Option<usize> {
        let n = self.server_count().min(servers.len());
        let servers = &servers[..n];
        let open = |i: usize| !exclude.contains(&i) && servers[i].accepts_new_sessions();
        let trusted = |i: usize| open(i) && !servers[i].avoided();
        match self.policy {
            Policy::RoundRobin => {
                let mut turn = (0..n).map(|_| self.turn.fetch_add(1, Ordering::Relaxed) % n);
                let first = turn.next()?;
                std::iter::once(first)
                    .chain(turn)
                    .find(|&i| trusted(i))
                    .or_else(|| (0..n).map(|k| (first + k) % n).find(|&i| open(i)))
            }
            Policy::LeastSessions | Policy::Hash { .. } => {
                // Slow start: a returning server takes each new session with probability
                // equal to its ramp, so its share grows from ~0 to full over the window.
                // Should that leave nobody (every server just returned), ramps are
                // ignored; should avoided servers be all that is left, they are used.
                let ramped = |i: usize| {
                    trusted(i) && {
                        let r = ramp(servers[i].up_for(), self.slow_start);
                        r >= 1.0 || lottery() < r
                    }
                };
                self.pick(servers, key, ramped)
                    .or_else(|| self.pick(servers, key, trusted))
                    .or_else(|| self.pick(servers, key, open))
            }
        }
    }

    /// Whether server `i` may take one more session without breaking the bound on load
    /// (hash placement); other policies have no bound. A session a cookie names is held to
    /// it like any other.
    pub fn under_cap<C: Candidate>(&self, servers: &[C], i: usize) -> bool {
        let Policy::Hash { load_factor } = self.policy else {
            return true;
        };
        let n = self.server_count().min(servers.len());
        if i >= n {
            return false;
        }
        let totals = Totals::of_eligible(
            n,
            &self.weights,
            |s| servers[s].accepts_new_sessions(),
            |s| servers[s].load(),
        );
        servers[i].load() < totals.cap(load_factor, weight(&self.weights, i))
    }

    fn pick<C: Candidate>(
        &self,
        servers: &[C],
        key: u64,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let load = |i: usize| servers[i].load();
        match self.policy {
            Policy::Hash { load_factor } => {
                pick_hash_bounded(&self.ring, key, &self.weights, load_factor, eligible, load)
            }
            _ => pick_least(&self.ring, key, &self.weights, eligible, load),
        }
    }
}

/// Share of its full weight a server gets while it slow-starts, in `0.0..=1.0`: how far
/// it is into the window since it came (back) up.
pub fn ramp(up_for: Option<Duration>, window: Option<Duration>) -> f64 {
    match (up_for, window.filter(|w| !w.is_zero())) {
        (Some(up), Some(window)) => (up.as_secs_f64() / window.as_secs_f64()).min(1.0),
        _ => 1.0,
    }
}

/// A uniform draw in `[0, 1)` from a per-thread xorshift: slow start needs a cheap
/// coin, not a good one.
fn lottery() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            placement_hash(format!("{:?}", std::thread::current().id()).as_bytes()) | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S {
        open: bool,
        load: u64,
        up_for: Option<Duration>,
        avoided: bool,
    }

    fn s(load: u64) -> S {
        S {
            open: true,
            load,
            up_for: None,
            avoided: false,
        }
    }

    impl Candidate for S {
        fn accepts_new_sessions(&self) -> bool {
            self.open
        }
        fn load(&self) -> u64 {
            self.load
        }
        fn up_for(&self) -> Option<Duration> {
            self.up_for
        }
        fn avoided(&self) -> bool {
            self.avoided
        }
    }

    fn placer(n: usize, policy: Policy, slow_start: Option<Duration>) -> Placer {
        let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let servers: Vec<(&str, u32)> = ids.iter().map(|id| (id.as_str(), 1)).collect();
        Placer::new(&servers, policy, slow_start)
    }

    #[test]
    fn least_sessions_takes_the_lightest_open_server() {
        let p = placer(3, Policy::LeastSessions, None);
        let mut servers = vec![s(5), s(1), s(3)];
        assert_eq!(p.place(&servers, 42, &[]), Some(1));
        assert_eq!(p.place(&servers, 42, &[1]), Some(2), "excluded");
        servers[1].open = false;
        assert_eq!(p.place(&servers, 42, &[]), Some(2), "closed");
    }

    #[test]
    fn round_robin_takes_each_open_server_in_turn() {
        let p = placer(3, Policy::RoundRobin, None);
        let mut servers = vec![s(0), s(0), s(0)];
        let picks: Vec<_> = (0..6).map(|_| p.place(&servers, 0, &[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        servers[1].open = false;
        assert!((0..6).all(|_| p.place(&servers, 0, &[]) != Some(1)));
    }

    #[test]
    fn servers_beyond_the_placer_are_never_chosen() {
        let p = placer(1, Policy::LeastSessions, None);
        let servers = vec![s(100), s(0)];
        assert_eq!(p.place(&servers, 7, &[]), Some(0));
        assert_eq!(p.place(&servers, 7, &[0]), None);
    }

    #[test]
    fn hash_placement_is_bounded_by_the_load_factor() {
        let p = placer(2, Policy::Hash { load_factor: 1.25 }, None);
        let first = p.place(&[s(0), s(0)], 99, &[]).unwrap();
        let mut servers = vec![s(0), s(0)];
        servers[first].load = 10;
        assert_eq!(p.place(&servers, 99, &[]), Some(1 - first), "over its cap");
    }

    #[test]
    fn slow_start_ramps_a_returning_server_and_never_blocks_placement() {
        let window = Some(Duration::from_secs(60));
        assert_eq!(ramp(None, window), 1.0, "there since the start");
        assert_eq!(ramp(Some(Duration::from_secs(6)), None), 1.0, "no window");
        assert!((ramp(Some(Duration::from_secs(6)), window) - 0.1).abs() < 1e-9);
        assert_eq!(ramp(Some(Duration::from_secs(600)), window), 1.0);

        let p = placer(2, Policy::LeastSessions, window);
        let mut servers = vec![s(50), s(0)];
        servers[1].up_for = Some(Duration::ZERO);
        let on_new = (0..400u64)
            .filter(|k| p.place(&servers, k.wrapping_mul(0x9e37), &[]) == Some(1))
            .count();
        assert!(on_new < 20, "just back: a trickle, {on_new}/400");
        servers[0].open = false;
        assert_eq!(p.place(&servers, 1, &[]), Some(1), "alone: takes it all");
    }

    #[test]
    fn avoided_servers_are_used_only_when_no_other_can_take_the_session() {
        for policy in [
            Policy::LeastSessions,
            Policy::Hash { load_factor: 1.25 },
            Policy::RoundRobin,
        ] {
            let p = placer(3, policy, None);
            let mut servers = vec![s(0), s(9), s(9)];
            servers[0].avoided = true;
            for k in 0..50u64 {
                let i = p.place(&servers, k.wrapping_mul(0x9e37_79b9), &[]);
                assert!(matches!(i, Some(1 | 2)), "{policy:?}: {i:?}");
            }
            servers[1].open = false;
            servers[2].open = false;
            assert_eq!(
                p.place(&servers, 5, &[]),
                Some(0),
                "{policy:?}: last resort"
            );
        }
    }
}
