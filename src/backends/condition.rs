//! What a server may do right now: its health (what probes and live traffic say) and its
//! operator state (ready, draining, maint), kept apart because they change for different
//! reasons — a drained server can be perfectly healthy, a ready one can be down.
//!
//! Both are atomics inside the server's [`ServerStats`](super::ServerStats), so a health
//! flip or an admin command takes effect on the next request without building a snapshot,
//! and both survive reloads with the server's counters.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tether_kit::clock::now_ms;

use crate::config::ServerState;
use crate::wakers::WakerSet;

/// A server's health as tether knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Added by a reload and not yet checked: no traffic until a probe passes.
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Unknown,
            1 => Health::Up,
            _ => Health::Down,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Health::Unknown => 0,
            Health::Up => 1,
            Health::Down => 2,
        }
    }
}

fn state_to_u8(s: ServerState) -> u8 {
    match s {
        ServerState::Ready => 0,
        ServerState::Draining => 1,
        ServerState::Maint => 2,
    }
}

fn state_from_u8(v: u8) -> ServerState {
    match v {
        0 => ServerState::Ready,
        1 => ServerState::Draining,
        _ => ServerState::Maint,
    }
}

/// How long a server whose process is gone (it refused connections on live traffic)
/// stays down when no active check will bring it back (nginx's `fail_timeout`).
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

/// How long a server found unwell on live traffic first takes no new sessions; each
/// further trip without a good exchange in between doubles it, up to
/// [`PASSIVE_AVOID_MAX`].
pub const PASSIVE_AVOID: Duration = Duration::from_secs(10);
pub const PASSIVE_AVOID_MAX: Duration = Duration::from_secs(160);

/// Consecutive failures on live traffic that trip passive health when the backend has no
/// active checks (with checks, their `fall` is used).
pub const PASSIVE_FALL: u32 = 3;

/// What live traffic concluded about a server when its failures tripped passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passive {
    /// It refuses connections: its process is gone, its sessions with it. Down until
    /// active checks bring it back, or for [`PASSIVE_COOLDOWN`] without them.
    Down,
    /// It is slow or broke exchanges: no new sessions for this long; its established
    /// sessions go on.
    Avoided(Duration),
}

#[derive(Debug)]
pub struct ServerCondition {
    health: AtomicU8,
    state: AtomicU8,
    /// No longer in the config: draining until its last session ends, then dropped.
    removed: AtomicBool,
    /// The state the config file last asked for; a reload applies the file's state only
    /// when it differs, so an admin `drain` survives a reload that did not touch it.
    config_state: Mutex<Option<ServerState>>,
    /// The state in force was set by the admin API (and holds until the file changes
    /// this server's state): `/status` says so, since the file then says otherwise.
    admin_state: AtomicBool,
    /// Consecutive failures on live traffic that say something about the server.
    failures: AtomicU32,
    /// Passive down without active checks lasts until this time (`now_ms`).
    down_until_ms: AtomicU64,
    /// Passive health advises against new sessions here until this time (`now_ms`).
    avoid_until_ms: AtomicU64,
    /// Times passive health tripped since the last good exchange, for the back-off.
    trips: AtomicU32,
    /// When the server last became able to take sessions, for slow start.
    up_since_ms: AtomicU64,
    /// When the health and the operator state last changed (or tether met the server),
    /// for the dashboard's "down for 3m".
    health_changed_ms: AtomicU64,
    state_changed_ms: AtomicU64,
    /// Tasks (tunnels) woken when the server may have stopped serving its pinned
    /// sessions, so each waits for it instead of polling the state on a timer
    /// (thousands of idle tunnels would otherwise wake every few hundred milliseconds
    /// for nothing).
    pinned_waiters: WakerSet,
}

impl Default for ServerCondition {
    fn default() -> Self {
        ServerCondition {
            health: AtomicU8::new(Health::Up.to_u8()),
            state: AtomicU8::new(state_to_u8(ServerState::Ready)),
            removed: AtomicBool::new(false),
            config_state: Mutex::new(None),
            admin_state: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            avoid_until_ms: AtomicU64::new(0),
            trips: AtomicU32::new(0),
            // Servers known at start are not ramped: nothing was flooding them.
            up_since_ms: AtomicU64::new(0),
            health_changed_ms: AtomicU64::new(now_ms()),
            state_changed_ms: AtomicU64::new(now_ms()),
            pinned_waiters: WakerSet::default(),
        }
    }
}

impl ServerCondition {
    pub fn health(&self) -> Health {
        let h = Health::from_u8(self.health.load(Ordering::Acquire));
        // Placement asks this of every server it walks: read the clock only while a
        // passive cooldown is set.
        let until = self.down_until_ms.load(Ordering::Acquire);
        if h == Health::Up && until != 0 && now_ms() < until {
            return Health::Down;
        }
        h
    }

    /// Sets the health; returns the previous value when it changed.
    pub fn set_health(&self, h: Health) -> Option<Health> {
        let old = Health::from_u8(self.health.swap(h.to_u8(), Ordering::AcqRel));
        if old == h {
            return None;
        }
        self.health_changed_ms.store(now_ms(), Ordering::Release);
        if h == Health::Up {
            self.failures.store(0, Ordering::Relaxed);
            self.down_until_ms.store(0, Ordering::Release);
            self.up_since_ms.store(now_ms(), Ordering::Release);
        }
        self.pinned_waiters.wake_all();
        Some(old)
    }

    pub fn state(&self) -> ServerState {
        state_from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the operator state; returns the previous one when it changed.
    pub fn set_state(&self, s: ServerState) -> Option<ServerState> {
        let old = state_from_u8(self.state.swap(state_to_u8(s), Ordering::AcqRel));
        if old == s {
            return None;
        }
        self.state_changed_ms.store(now_ms(), Ordering::Release);
        if s == ServerState::Ready {
            self.up_since_ms.store(now_ms(), Ordering::Release);
        }
        self.pinned_waiters.wake_all();
        Some(old)
    }

    /// Applies the state a config file asks for, unless it asked for the same last time.
    pub fn apply_config_state(&self, s: ServerState) -> Option<ServerState> {
        let mut last = tether_kit::lock(&self.config_state);
        if *last == Some(s) {
            return None;
        }
        *last = Some(s);
        self.admin_state.store(false, Ordering::Release);
        self.set_state(s)
    }

    /// Sets the operator state as the admin API asks; it holds until the config file
    /// changes this server's `state:`.
    pub fn set_state_by_admin(&self, s: ServerState) -> Option<ServerState> {
        self.admin_state.store(true, Ordering::Release);
        self.set_state(s)
    }

    /// How long the server has had the health [`ServerCondition::health`] reports: since
    /// the last change, or since tether met it. A passive cooldown (down without active
    /// checks) counts from when it began, and once over, from its end.
    pub fn health_for(&self) -> Duration {
        let now = now_ms();
        let mut since = self.health_changed_ms.load(Ordering::Acquire);
        let until = self.down_until_ms.load(Ordering::Acquire);
        if until != 0 && Health::from_u8(self.health.load(Ordering::Acquire)) == Health::Up {
            let began = until.saturating_sub(PASSIVE_COOLDOWN.as_millis() as u64);
            since = since.max(if now < until { began } else { until });
        }
        Duration::from_millis(now.saturating_sub(since))
    }

    /// How long the server has had its operator state: since the last change, or since
    /// tether met it.
    pub fn state_for(&self) -> Duration {
        let since = self.state_changed_ms.load(Ordering::Acquire);
        Duration::from_millis(now_ms().saturating_sub(since))
    }

    /// Whether the state in force was set by the admin API rather than the config file.
    pub fn state_set_by_admin(&self) -> bool {
        self.admin_state.load(Ordering::Acquire)
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn set_removed(&self, removed: bool) {
        self.removed.store(removed, Ordering::Release);
    }

    /// Whether a new session may be placed here (capacity aside).
    pub fn accepts_new_sessions(&self) -> bool {
        self.state() == ServerState::Ready && !self.is_removed() && self.health() == Health::Up
    }

    /// Whether requests of sessions pinned here may still go to it. A down server's
    /// sessions are lost; answering at once lets their clients re-handshake elsewhere.
    pub fn serves_pinned(&self) -> bool {
        self.state() != ServerState::Maint && self.health() != Health::Down
    }

    /// Woken whenever [`ServerCondition::serves_pinned`] may have turned false. A
    /// waiter registers before it checks, so a change between the two is not missed.
    pub fn pinned_waiters(&self) -> &WakerSet {
        &self.pinned_waiters
    }

    /// How long since the server last became able to take sessions (slow start ramps
    /// from then); `None` when it has been able to since tether started.
    pub fn up_for(&self) -> Option<Duration> {
        let since = self.up_since_ms.load(Ordering::Acquire);
        (since != 0).then(|| Duration::from_millis(now_ms().saturating_sub(since)))
    }

    /// Whether passive health advises against new sessions here for now: placement
    /// tries other servers first.
    pub fn is_avoided(&self) -> bool {
        let until = self.avoid_until_ms.load(Ordering::Acquire);
        until != 0 && now_ms() < until
    }

    /// A failure on live traffic that says something about the server: `gone` when it
    /// refused the connection. Returns what passive health concluded when this failure
    /// tripped it (at `active_fall` consecutive failures with active checks, else
    /// [`PASSIVE_FALL`]).
    ///
    /// Only a server that refuses connections loses its sessions: one that is slow to
    /// accept or answer may still be serving every established session, so it is only
    /// spared new ones, for a back-off that grows while it keeps failing.
    pub fn record_failure(&self, gone: bool, active_fall: Option<u32>) -> Option<Passive> {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let threshold = active_fall.unwrap_or(PASSIVE_FALL);
        if n < threshold || self.health() == Health::Down {
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        if gone {
            return match active_fall {
                Some(_) => self.set_health(Health::Down).map(|_| Passive::Down),
                None => {
                    let until = now_ms() + PASSIVE_COOLDOWN.as_millis() as u64;
                    self.down_until_ms.store(until, Ordering::Release);
                    // Coming back after the cooldown is a return: ramp it like one.
                    self.up_since_ms.store(until, Ordering::Release);
                    self.pinned_waiters.wake_all();
                    Some(Passive::Down)
                }
            };
        }
        let trips = self.trips.fetch_add(1, Ordering::AcqRel).min(16);
        let avoid = PASSIVE_AVOID
            .saturating_mul(1 << trips)
            .min(PASSIVE_AVOID_MAX);
        let until = now_ms() + avoid.as_millis() as u64;
        self.avoid_until_ms.store(until, Ordering::Release);
        self.up_since_ms.store(until, Ordering::Release);
        Some(Passive::Avoided(avoid))
    }

    /// A good exchange on live traffic: the streak of failures, and the back-off, are over.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.trips.load(Ordering::Relaxed) != 0 {
            self.trips.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_server_serves_its_sessions_but_takes_no_new_ones() {
        let c = ServerCondition::default();
        assert!(c.accepts_new_sessions() && c.serves_pinned());
        c.set_state(ServerState::Draining);
        assert!(!c.accepts_new_sessions());
        assert!(c.serves_pinned());
        c.set_state(ServerState::Maint);
        assert!(!c.serves_pinned());
    }

    #[test]
    fn down_server_loses_its_pinned_sessions() {
        let c = ServerCondition::default();
        assert_eq!(c.set_health(Health::Down), Some(Health::Up));
        assert!(!c.serves_pinned() && !c.accepts_new_sessions());
        assert_eq!(c.set_health(Health::Down), None, "a flip is reported once");
    }

    #[test]
    fn unknown_server_takes_nothing_new_until_checked() {
        let c = ServerCondition::default();
        c.set_health(Health::Unknown);
        assert!(!c.accepts_new_sessions());
        c.set_health(Health::Up);
        assert!(c.accepts_new_sessions());
    }

    #[test]
    fn refused_connections_mark_down_at_the_threshold_and_success_resets() {
        let c = ServerCondition::default();
        assert_eq!(c.record_failure(true, None), None);
        assert_eq!(c.record_failure(true, None), None);
        c.record_success();
        assert_eq!(c.record_failure(true, None), None);
        assert_eq!(c.record_failure(true, None), None);
        assert_eq!(
            c.record_failure(true, None),
            Some(Passive::Down),
            "third consecutive failure"
        );
        assert_eq!(c.health(), Health::Down);
        assert!(
            !c.serves_pinned(),
            "a gone process takes its sessions with it"
        );
        assert_eq!(
            c.record_failure(true, None),
            None,
            "already down: no second flip"
        );
    }

    #[test]
    fn how_long_a_health_and_a_state_have_held_restarts_at_each_change() {
        let c = ServerCondition::default();
        std::thread::sleep(Duration::from_millis(50));
        assert!(c.health_for() >= Duration::from_millis(50));
        assert!(c.state_for() >= Duration::from_millis(50));
        c.set_state(ServerState::Draining);
        assert!(
            c.state_for() < c.health_for(),
            "a new state, the same health"
        );
        assert_eq!(c.set_state(ServerState::Draining), None);
        std::thread::sleep(Duration::from_millis(20));
        // Down on live traffic without active checks: counted from the trip.
        for _ in 0..PASSIVE_FALL {
            c.record_failure(true, None);
        }
        assert_eq!(c.health(), Health::Down);
        assert!(
            c.health_for() < c.state_for(),
            "down since the trip, after the drain"
        );
    }

    #[test]
    fn refusal_with_active_checks_waits_for_a_probe() {
        let c = ServerCondition::default();
        assert_eq!(c.record_failure(true, Some(1)), Some(Passive::Down));
        assert_eq!(c.health(), Health::Down);
        c.set_health(Health::Up);
        assert_eq!(c.health(), Health::Up);
    }

    #[test]
    fn an_unwell_server_keeps_its_sessions_and_is_avoided_with_a_growing_back_off() {
        let c = ServerCondition::default();
        let trip = |c: &ServerCondition| {
            (0..PASSIVE_FALL)
                .filter_map(|_| c.record_failure(false, None))
                .last()
        };
        assert_eq!(trip(&c), Some(Passive::Avoided(PASSIVE_AVOID)));
        assert!(c.is_avoided());
        assert_eq!(c.health(), Health::Up, "health is not passive's to decide");
        assert!(c.serves_pinned() && c.accepts_new_sessions());
        assert_eq!(trip(&c), Some(Passive::Avoided(PASSIVE_AVOID * 2)));
        for _ in 0..8 {
            trip(&c);
        }
        assert_eq!(trip(&c), Some(Passive::Avoided(PASSIVE_AVOID_MAX)));
        c.record_success();
        assert_eq!(
            trip(&c),
            Some(Passive::Avoided(PASSIVE_AVOID)),
            "a good exchange resets the back-off"
        );
    }

    #[test]
    fn config_state_is_applied_only_when_the_file_changes_it() {
        let c = ServerCondition::default();
        c.apply_config_state(ServerState::Ready);
        assert!(!c.state_set_by_admin());
        c.set_state_by_admin(ServerState::Draining);
        assert!(c.state_set_by_admin());
        assert_eq!(c.apply_config_state(ServerState::Ready), None);
        assert_eq!(c.state(), ServerState::Draining);
        assert!(
            c.state_set_by_admin(),
            "the file did not change: the API's state holds"
        );
        c.apply_config_state(ServerState::Maint);
        assert_eq!(c.state(), ServerState::Maint);
        assert!(!c.state_set_by_admin());
    }

    #[test]
    fn slow_start_ramps_from_the_return() {
        use crate::balance::placer::ramp;
        let c = ServerCondition::default();
        assert_eq!(
            ramp(c.up_for(), Some(Duration::from_secs(10))),
            1.0,
            "known at start"
        );
        c.set_health(Health::Down);
        c.set_health(Health::Up);
        let r = ramp(c.up_for(), Some(Duration::from_secs(10)));
        assert!(r < 0.1, "just back: {r}");
        assert_eq!(ramp(c.up_for(), None), 1.0);
    }

    /// Waits as a tunnel does: checks only when woken through the set.
    async fn stopped_serving_pinned(c: &ServerCondition) {
        let mut waiting = crate::wakers::Waiting::default();
        std::future::poll_fn(|cx| {
            waiting.register(c.pinned_waiters(), cx.waker());
            if c.serves_pinned() {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        waiting.deregister(c.pinned_waiters());
    }

    #[tokio::test]
    async fn pinned_watchers_wake_on_maint_down_and_refused_connections_only() {
        use std::sync::Arc;
        let c = Arc::new(ServerCondition::default());
        let pending =
            |c: Arc<ServerCondition>| tokio::spawn(async move { stopped_serving_pinned(&c).await });
        let short = Duration::from_millis(50);

        let w = pending(Arc::clone(&c));
        c.set_state(ServerState::Draining);
        tokio::time::sleep(short).await;
        assert!(!w.is_finished(), "draining still serves pinned sessions");
        c.set_state(ServerState::Maint);
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap()
            .unwrap();
        // Already stopped: returns at once.
        stopped_serving_pinned(&c).await;
        assert!(c.pinned_waiters().is_empty(), "waiters leave the set");

        c.set_state(ServerState::Ready);
        let w = pending(Arc::clone(&c));
        tokio::time::sleep(short).await;
        assert!(!w.is_finished());
        c.set_health(Health::Down);
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap()
            .unwrap();

        c.set_health(Health::Up);
        let w = pending(Arc::clone(&c));
        for _ in 0..PASSIVE_FALL {
            c.record_failure(false, None);
        }
        tokio::time::sleep(short).await;
        assert!(!w.is_finished(), "an unwell server keeps its sessions");
        for _ in 0..PASSIVE_FALL {
            c.record_failure(true, None);
        }
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap()
            .unwrap();
    }
}
