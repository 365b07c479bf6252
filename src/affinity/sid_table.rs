//! The learned `sid → server` table: the heart of stickiness.
//!
//! Bounded (a flood of handshakes cannot grow it without limit) and self-cleaning: an
//! entry lives while a request or a WebSocket tunnel of its session is in flight, and
//! for one heartbeat (`pingInterval + pingTimeout` + margin) after the last one ends —
//! exactly how long the server itself keeps a silent session. Entries also carry the
//! session accounting (polling vs WebSocket) so placement sees live sessions, not
//! connections.
//!
//! An entry can outlive its session: it is kept a little after the session's WebSocket
//! closed (in case that was a failed upgrade probe) and while a request of a session
//! whose server no longer serves it is being refused. Such an entry is *ended*: it still
//! routes, but it no longer counts as a session, so the dashboard, `drained` and
//! placement see the session gone the moment it is, not when its entry expires.
//!
//! Sharded mutexes rather than a concurrent map crate: each operation is a short
//! critical section on one of 64 shards, and the key is borrowed as `&str` for lookups
//! so the request path does not allocate.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ahash::RandomState;
use tokio::time::Instant;

use super::sid_key::SidKey;
use crate::backends::{ServerStats, SessionEnd};
use crate::engineio::Transport;
use crate::fleet::{Ack, Fleet};
use crate::telemetry;

const SHARDS: usize = 64;

/// How long the entry of an ended session is kept (see `unpin`): long enough for a
/// client whose upgrade probe failed to resume polling.
pub const TUNNEL_END_LINGER: Duration = Duration::from_secs(2);

/// A moment as an entry keeps it: milliseconds since its table was made (signed: a
/// session handed over by a takeover was born before). 8 bytes where an `Instant` takes
/// 16, and an entry holds four: the table holds an entry per live session, in maps that
/// are up to half empty, so every byte of an entry costs nearly two per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ms(i64);

impl Ms {
    /// `published` of an entry never written to the registry.
    const NEVER: Ms = Ms(i64::MIN);

    /// How long after `earlier` this is (zero if it is not after it).
    fn since(self, earlier: Ms) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    fn plus(self, d: Duration) -> Ms {
        Ms(self.0.saturating_add(millis(d)))
    }

    fn minus(self, d: Duration) -> Ms {
        Ms(self.0.saturating_sub(millis(d)))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The table's clock: when it was made, by the monotonic clock (what [`Ms`] counts
/// from) and by the wall clock (for a session's start as operators read it).
#[derive(Debug, Clone, Copy)]
struct Epoch {
    at: Instant,
    wall: SystemTime,
}

impl Epoch {
    fn new() -> Epoch {
        Epoch {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn now(&self) -> Ms {
        self.of(Instant::now())
    }

    fn of(&self, t: Instant) -> Ms {
        if t >= self.at {
            Ms(millis(t.duration_since(self.at)))
        } else {
            Ms(-millis(self.at.duration_since(t)))
        }
    }

    fn wall_of(&self, t: Ms) -> SystemTime {
        let offset = Duration::from_millis(t.0.unsigned_abs());
        let wall = if t.0 >= 0 {
            self.wall.checked_add(offset)
        } else {
            self.wall.checked_sub(offset)
        };
        wall.unwrap_or(self.wall)
    }
}

/// A session's entry: 72 bytes (the key beside it 24), the fields laid out to leave no
/// padding.
#[derive(Debug)]
struct Entry {
    server: Arc<ServerStats>,
    expires: Ms,
    /// When the handshake was answered (for the session's duration; its wall-clock
    /// start, for operators, is the table's epoch plus this).
    born: Ms,
    /// When it ended, while `end` is set.
    ended_at: Ms,
    /// When the registry was last told of it ([`Ms::NEVER`]: never): refreshed at half
    /// its liveness window while the session is heard from.
    published: Ms,
    /// How long it may stay silent, in milliseconds (a heartbeat plus a margin; held to
    /// `u32::MAX`, 49 days).
    ttl_ms: u32,
    /// Requests and tunnels of this session in flight: while non-zero the entry never
    /// expires (a long poll may be held for a whole `pingInterval`).
    polls: u32,
    tunnels: u32,
    /// Whose session it is: an IPv4 client as its IPv4-mapped IPv6 address (16 bytes
    /// where an `IpAddr` takes 17, and so 24 with alignment).
    client: Ipv6Addr,
    /// The session is over as far as anyone can tell (see the module doc); a request of
    /// it that its server may take revives it.
    ended: bool,
    /// What this entry adds to its server's session counts now; kept apart from
    /// `ended` and `transport()` so that [`Entry::recount`] moves exactly what was added.
    counted: Option<Transport>,
    /// Why it ended, while `ended`.
    end: Option<SessionEnd>,
    /// Its end is counted in the metrics already.
    end_counted: bool,
}

/// A client address as an entry keeps it.
fn compact_ip(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

impl Entry {
    /// A session of `server` just learned (born `age` ago), counted as a live session of
    /// its server; ended at once when its server no longer serves it (a handshake
    /// answered by a server put in maintenance meanwhile: its requests will be refused).
    fn new(
        server: Arc<ServerStats>,
        ttl: Duration,
        client: IpAddr,
        age: Duration,
        now: Ms,
    ) -> Entry {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        let mut entry = Entry {
            server,
            expires: now.plus(Duration::from_millis(u64::from(ttl_ms))),
            born: now.minus(age),
            ended_at: now,
            published: Ms::NEVER,
            ttl_ms,
            polls: 0,
            tunnels: 0,
            client: compact_ip(client),
            ended: false,
            counted: None,
            end: None,
            end_counted: false,
        };
        entry.recount();
        if !entry.server.condition.serves_pinned() {
            let cause = entry.server.unserved_end();
            entry.end(cause, now);
        }
        entry
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_ms))
    }

    fn client(&self) -> IpAddr {
        self.client.to_canonical()
    }

    /// The session is over for `cause` (a later request its server takes revives it).
    fn end(&mut self, cause: SessionEnd, now: Ms) {
        if !self.ended {
            self.ended = true;
            self.end = Some(cause);
            self.ended_at = now;
            // Its server no longer serves it: over for good, whatever request of it is
            // still in flight (which would otherwise hold the entry, and the count,
            // until the server answers it). A closed WebSocket is counted when the
            // entry goes, since a failed upgrade probe's session resumes polling.
            if matches!(cause, SessionEnd::Maint | SessionEnd::ServerDown) && !self.end_counted {
                self.end_counted = true;
                self.server.session_ended(cause, now.since(self.born));
            }
        }
        self.recount();
    }

    fn revive(&mut self) {
        self.ended = false;
        self.end = None;
        self.recount();
    }

    /// The entry leaves the table: out of the counts, and its session's end counted —
    /// one that never ended otherwise went silent until its liveness window passed.
    fn finish(&mut self, now: Ms) {
        self.uncount();
        if self.end_counted {
            return;
        }
        let (cause, at) = match self.end {
            Some(cause) => (cause, self.ended_at),
            None => {
                let last_heard = self.expires.minus(self.ttl());
                (SessionEnd::IdleTimeout, last_heard.min(now))
            }
        };
        self.server.session_ended(cause, at.since(self.born));
    }

    /// Whether its end is certain (its client closed its WebSocket, its server said it
    /// does not know it): its registry key goes now rather than when its time runs out.
    fn ended_for_sure(&self) -> bool {
        matches!(
            self.end,
            Some(SessionEnd::ClientClosed | SessionEnd::ServerClosed)
        )
    }

    /// How long the registry should keep it now, if it is due a refresh: a session still
    /// heard from (pinned, or heard since it was last written) whose key is half way
    /// through its time. `None` otherwise.
    fn refresh_due(&self, now: Ms) -> Option<Duration> {
        if self.ended {
            return None;
        }
        let pinned = self.polls > 0 || self.tunnels > 0;
        let heard = self.expires.minus(self.ttl());
        let due = self.published == Ms::NEVER
            || ((pinned || heard > self.published) && now.since(self.published) >= self.ttl() / 2);
        match (due, pinned) {
            (false, _) => None,
            (true, true) => Some(self.ttl()),
            (true, false) => Some(self.expires.since(now)).filter(|d| !d.is_zero()),
        }
    }

    fn transport(&self) -> Transport {
        if self.tunnels > 0 {
            Transport::WebSocket
        } else {
            Transport::Polling
        }
    }

    /// Brings the server's counts in line with the entry's state after a change.
    fn recount(&mut self) {
        let want = (!self.ended).then(|| self.transport());
        if want != self.counted {
            if let Some(t) = self.counted {
                self.server.add_session(t, -1);
            }
            if let Some(t) = want {
                self.server.add_session(t, 1);
            }
            self.counted = want;
        }
    }

    /// Takes the entry out of the counts for good (it leaves the table).
    fn uncount(&mut self) {
        if let Some(t) = self.counted.take() {
            self.server.add_session(t, -1);
        }
    }
}

type Shard = ahash::AHashMap<SidKey, Entry>;

/// Why a sid could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("sid table is full ({0} sessions)")]
    Full(usize),
}

#[derive(Debug)]
pub struct SidTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
    /// Where learned sids are shared with other instances (when a registry is set).
    fleet: Option<Arc<Fleet>>,
    /// What the entries' moments count from.
    epoch: Epoch,
}

/// How a new entry is shared with the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Share {
    /// Written in the background.
    Quiet,
    /// Written, and the caller may wait until Redis has it.
    Acked,
    /// Not written: the registry is where it came from.
    Recalled,
}

/// What a lookup hands back: the session's server, pinned while the pin lives.
#[derive(Debug)]
pub struct SessionPin {
    table: Arc<SidTable>,
    sid: SidKey,
    server: Arc<ServerStats>,
    /// The session's `ttl` in milliseconds, as its entry keeps it: a WebSocket's pin is
    /// held in its tunnel's session for the tunnel's life.
    ttl_ms: u32,
    kind: PinKind,
    /// A tunnel of the session was open when this pin was taken.
    tunnel_open: bool,
    /// How the tunnel holding it ended, when it knows.
    end: Option<SessionEnd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinKind {
    Poll,
    Tunnel,
}

impl SessionPin {
    pub fn server(&self) -> &Arc<ServerStats> {
        &self.server
    }

    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// How long the session may stay silent (its heartbeat plus margin).
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_ms))
    }

    /// Whether a tunnel of the session was open when this pin was taken: for a polling
    /// request, the session is upgrading (or upgraded) to WebSocket.
    pub fn tunnel_open(&self) -> bool {
        self.tunnel_open
    }

    /// Says how the tunnel holding this pin ended: the session ends with it.
    pub fn ended_by(&mut self, cause: SessionEnd) {
        self.end = Some(cause);
    }
}

impl Drop for SessionPin {
    fn drop(&mut self) {
        self.table.unpin(&self.sid, self.kind, self.end);
    }
}

/// One session of the table, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub sid: Arc<str>,
    pub backend: Arc<str>,
    pub server: Arc<str>,
    pub transport: Transport,
    /// When its handshake was answered.
    pub started: SystemTime,
    pub client: IpAddr,
    /// False once it is over (its entry lingers a moment, or a refused request holds it).
    pub live: bool,
}

impl SessionInfo {
    fn of(sid: &SidKey, e: &Entry, epoch: &Epoch) -> SessionInfo {
        SessionInfo {
            sid: sid.to_arc(),
            backend: Arc::clone(&e.server.backend),
            server: Arc::clone(&e.server.id),
            transport: e.transport(),
            started: epoch.wall_of(e.born),
            client: e.client(),
            live: !e.ended,
        }
    }
}

impl SidTable {
    /// `capacity` sessions at most.
    pub fn new(capacity: usize) -> Self {
        SidTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            fleet: None,
            epoch: Epoch::new(),
        }
    }

    /// A table that shares what it learns through `fleet` (when a registry is set).
    pub fn with_fleet(capacity: usize, fleet: Arc<Fleet>) -> Self {
        SidTable {
            fleet: Some(fleet),
            ..SidTable::new(capacity)
        }
    }

    fn shard(&self, sid: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(sid) as usize) % SHARDS;
        // A panic while holding the lock cannot leave an entry half-updated in a way
        // that matters more than losing the table, so poisoning is ignored.
        tether_kit::lock(&self.shards[i])
    }

    /// Records a session learned from a handshake response; `ttl` is how long it may
    /// stay silent (its heartbeat plus a margin). A sid already present is re-pointed
    /// (a server that reuses sids after a restart).
    pub fn insert(
        &self,
        sid: &str,
        server: Arc<ServerStats>,
        ttl: Duration,
        client: IpAddr,
    ) -> Result<(), InsertError> {
        self.insert_entry(sid, server, ttl, client, 0, Share::Quiet)
            .map(drop)
    }

    /// Records a session learned from its handshake's answer; the registry write can be
    /// waited for (with the returned [`Ack`]) before the client gets the sid.
    pub fn insert_handshake(
        &self,
        sid: &str,
        server: Arc<ServerStats>,
        ttl: Duration,
        client: IpAddr,
    ) -> Result<Option<Ack>, InsertError> {
        self.insert_entry(sid, server, ttl, client, 0, Share::Acked)
            .map(|(_, _, ack)| ack)
    }

    /// Records a session another instance learned, as the registry names it; not written
    /// back, and not counted as a session started here.
    pub fn insert_recalled(
        &self,
        sid: &str,
        server: Arc<ServerStats>,
        ttl: Duration,
        client: IpAddr,
    ) -> Result<(), InsertError> {
        self.insert_entry(sid, server, ttl, client, 0, Share::Recalled)
            .map(drop)
    }

    /// The fleet this table shares with, if any.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Whether `sid` is in the table and alive (what [`pin_poll`](Self::pin_poll) would
    /// find).
    pub fn knows(&self, sid: &str) -> bool {
        let now = self.epoch.now();
        self.shard(sid)
            .get(sid)
            .is_some_and(|e| e.polls > 0 || e.tunnels > 0 || e.expires > now)
    }

    /// Records a WebSocket-only session, learned from the open packet its server sent
    /// down the tunnel, pinned for the tunnel's life. Nothing routes by it (such a client
    /// never sends a request with its sid), but the registry shows it and its end is
    /// counted like any other session's.
    pub fn insert_tunnel(
        self: &Arc<Self>,
        sid: &str,
        server: Arc<ServerStats>,
        ttl: Duration,
        client: IpAddr,
    ) -> Result<SessionPin, InsertError> {
        let (key, ttl_ms, _) =
            self.insert_entry(sid, Arc::clone(&server), ttl, client, 1, Share::Quiet)?;
        Ok(SessionPin {
            table: Arc::clone(self),
            sid: key,
            server,
            ttl_ms,
            kind: PinKind::Tunnel,
            tunnel_open: false,
            end: None,
        })
    }

    fn insert_entry(
        &self,
        sid: &str,
        server: Arc<ServerStats>,
        ttl: Duration,
        client: IpAddr,
        tunnels: u32,
        share: Share,
    ) -> Result<(SidKey, u32, Option<Ack>), InsertError> {
        let now = self.epoch.now();
        let mut shard = self.shard(sid);
        if shard.len() >= self.per_shard && !shard.contains_key(sid) {
            sweep_shard(&mut shard, now, None);
            if shard.len() >= self.per_shard {
                metrics::counter!(telemetry::SID_TABLE_FULL).increment(1);
                return Err(InsertError::Full(self.per_shard * SHARDS));
            }
        }
        let mut entry = Entry::new(server, ttl, client, Duration::ZERO, now);
        entry.tunnels = tunnels;
        entry.recount();
        if share == Share::Recalled {
            entry.published = now;
        } else {
            entry
                .server
                .metrics
                .tally
                .sessions_started
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let key = SidKey::new(sid);
        let mut ack = None;
        if let Some(fleet) = self.fleet.as_ref().filter(|_| share != Share::Recalled) {
            let stats = &entry.server;
            let sid = key.to_arc();
            ack = fleet.publish(&stats.backend, &sid, &stats.id, ttl, share == Share::Acked);
            entry.published = now;
        }
        let ttl_ms = entry.ttl_ms;
        if let Some(mut old) = shard.insert(key.clone(), entry) {
            old.finish(now);
        }
        Ok((key, ttl_ms, ack))
    }

    /// The session `sid`, if the table knows it.
    pub fn info(&self, sid: &str) -> Option<SessionInfo> {
        let shard = self.shard(sid);
        let (key, entry) = shard.get_key_value(sid)?;
        Some(SessionInfo::of(key, entry, &self.epoch))
    }

    /// Up to `limit` sessions, of `backend` and `server` when given, live ones only
    /// unless `ended` too. Scans the table shard by shard, so it is for operators, not
    /// for the request path.
    pub fn list(
        &self,
        backend: Option<&str>,
        server: Option<&str>,
        limit: usize,
    ) -> Vec<SessionInfo> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = tether_kit::lock(shard);
            for (key, e) in shard.iter() {
                if out.len() >= limit {
                    return out;
                }
                let wanted = !e.ended
                    && backend.is_none_or(|b| *e.server.backend == *b)
                    && server.is_none_or(|s| *e.server.id == *s);
                if wanted {
                    out.push(SessionInfo::of(key, e, &self.epoch));
                }
            }
        }
        out
    }

    /// Finds a session for a polling request and pins it until the pin drops.
    pub fn pin_poll(self: &Arc<Self>, sid: &str) -> Option<SessionPin> {
        self.pin(sid, PinKind::Poll)
    }

    /// Finds a session for a WebSocket upgrade and pins it for the tunnel's life; the
    /// session counts as WebSocket while any tunnel of it is open.
    pub fn pin_tunnel(self: &Arc<Self>, sid: &str) -> Option<SessionPin> {
        self.pin(sid, PinKind::Tunnel)
    }

    fn pin(self: &Arc<Self>, sid: &str, kind: PinKind) -> Option<SessionPin> {
        let now = self.epoch.now();
        let mut shard = self.shard(sid);
        let key = shard.get_key_value(sid)?.0.clone();
        let entry = shard.get_mut(sid)?;
        if entry.polls == 0 && entry.tunnels == 0 && entry.expires <= now {
            return None; // dead; the sweeper will take it out
        }
        let tunnel_open = entry.tunnels > 0;
        match kind {
            PinKind::Poll => entry.polls += 1,
            PinKind::Tunnel => entry.tunnels += 1,
        }
        // A request its server may take: the session goes on (a failed upgrade probe's
        // client resumes polling, a server is back from maintenance). One its server may
        // not take is refused: the session is lost.
        if entry.server.condition.serves_pinned() {
            entry.revive();
        } else {
            let cause = entry.server.unserved_end();
            entry.end(cause, now);
        }
        Some(SessionPin {
            table: Arc::clone(self),
            sid: key,
            server: Arc::clone(&entry.server),
            ttl_ms: entry.ttl_ms,
            kind,
            tunnel_open,
            end: None,
        })
    }

    fn unpin(&self, sid: &str, kind: PinKind, how: Option<SessionEnd>) {
        let now = self.epoch.now();
        let mut shard = self.shard(sid);
        let Some(entry) = shard.get_mut(sid) else {
            return;
        };
        match kind {
            PinKind::Poll => entry.polls = entry.polls.saturating_sub(1),
            PinKind::Tunnel => entry.tunnels = entry.tunnels.saturating_sub(1),
        }
        // A session whose WebSocket closed is over — Engine.IO never goes back from an
        // upgraded WebSocket to polling — unless the tunnel was a failed upgrade probe,
        // after which the client resumes polling within moments and re-pins it. So it
        // stops counting now, and its entry lingers briefly instead of a whole heartbeat
        // for the probe's sake. A session whose server no longer serves it is over too,
        // and the request just refused must not keep its entry for another heartbeat.
        let websocket_closed = kind == PinKind::Tunnel && entry.tunnels == 0 && entry.polls == 0;
        if !entry.server.condition.serves_pinned() {
            let cause = entry.server.unserved_end();
            entry.end(cause, now);
        } else if websocket_closed {
            entry.end(how.unwrap_or(SessionEnd::ClientClosed), now);
        }
        let linger = if entry.ended {
            entry.ttl().min(TUNNEL_END_LINGER)
        } else {
            entry.ttl()
        };
        entry.expires = now.plus(linger);
    }

    /// Ends a session moved elsewhere by a migration: over here at once, its entry kept a
    /// moment (as for a closed WebSocket) and then counted out as `migrated`.
    pub fn end_migrated(&self, sid: &str) {
        let now = self.epoch.now();
        if let Some(e) = self.shard(sid).get_mut(sid) {
            e.end(SessionEnd::Migrated, now);
            e.expires = e.expires.min(now.plus(e.ttl().min(TUNNEL_END_LINGER)));
        }
    }

    /// Forgets a session whose server answered that it does not know it.
    pub fn remove(&self, sid: &str) {
        let removed = self.shard(sid).remove_entry(sid);
        if let Some((key, mut entry)) = removed {
            let now = self.epoch.now();
            entry.end(SessionEnd::ServerClosed, now);
            entry.finish(now);
            if let Some(fleet) = &self.fleet {
                fleet.forget(&entry.server.backend, &key.to_arc());
            }
        }
    }

    /// The server a sid is pinned to, without pinning (for tests and status).
    pub fn server_of(&self, sid: &str) -> Option<Arc<ServerStats>> {
        self.shard(sid).get(sid).map(|e| Arc::clone(&e.server))
    }

    /// Most sessions the table holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| tether_kit::lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired, unpinned session and counts it out of its server, and ends
    /// the sessions of servers that no longer serve them (maintenance, down): tether
    /// refuses their requests and has closed their tunnels, so they are over.
    /// Returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let now = self.epoch.now();
        self.shards
            .iter()
            .map(|s| sweep_shard(&mut tether_kit::lock(s), now, self.fleet.as_deref()))
            .sum()
    }

    /// Sweeps every `every` until the table is dropped by everyone else.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(table) => {
                        table.sweep();
                    }
                    None => return,
                }
            }
        })
    }
}

/// Sweeps one shard; with a `fleet` on, also refreshes the registry keys of sessions
/// still heard from and deletes those of sessions that certainly ended.
fn sweep_shard(shard: &mut Shard, now: Ms, fleet: Option<&Fleet>) -> usize {
    let before = shard.len();
    let fleet = fleet.filter(|f| f.is_on());
    shard.retain(|key, e| {
        if !e.ended && !e.server.condition.serves_pinned() {
            let cause = e.server.unserved_end();
            e.end(cause, now);
        }
        let alive = e.polls > 0 || e.tunnels > 0 || e.expires > now;
        if !alive {
            e.finish(now);
        }
        if let Some(fleet) = fleet {
            if !alive && e.ended_for_sure() {
                fleet.forget(&e.server.backend, &key.to_arc());
            } else if let Some(keep) = e.refresh_due(now).filter(|_| alive) {
                fleet.publish(&e.server.backend, &key.to_arc(), &e.server.id, keep, false);
                e.published = now;
            }
        }
        alive
    });
    let dropped = before - shard.len();
    if dropped > 0 {
        metrics::counter!(telemetry::SID_TABLE_EXPIRED).increment(dropped as u64);
    }
    dropped
}

/// One live session as `tether run --takeover` hands it to the next process: enough
/// for that process to route the session's next request to the same server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedSession {
    pub backend: Arc<str>,
    pub sid: Arc<str>,
    pub server: Arc<str>,
    /// The session's heartbeat window (what each request re-arms).
    pub ttl: Duration,
    /// How long it may still stay silent from now (a session with a request in flight
    /// gets its whole `ttl`: the window starts again when that request ends).
    pub remaining: Duration,
    pub client: IpAddr,
    /// How long ago its handshake was answered.
    pub age: Duration,
}

/// The hand-over of a binary upgrade (`tether run --takeover`): kept apart from the
/// table's request-path code above.
impl SidTable {
    /// The live sessions whose handshake was answered at or after `since` (all when
    /// `None`) that a polling request may still name. A session on a WebSocket stays
    /// where its tunnel is (it never polls again), so it is left out, unless a poll
    /// of it is in flight too (an upgrade probe that may fail back to polling).
    pub fn export_live(&self, since: Option<Instant>) -> Vec<HandedSession> {
        let now = self.epoch.now();
        let since = since.map(|t| self.epoch.of(t));
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = tether_kit::lock(shard);
            for (sid, e) in shard.iter() {
                let pinned = e.polls > 0 || e.tunnels > 0;
                let wanted = !e.ended
                    && (e.tunnels == 0 || e.polls > 0)
                    && (pinned || e.expires > now)
                    && since.is_none_or(|t| e.born >= t);
                if !wanted {
                    continue;
                }
                out.push(HandedSession {
                    backend: Arc::clone(&e.server.backend),
                    sid: sid.to_arc(),
                    server: Arc::clone(&e.server.id),
                    ttl: e.ttl(),
                    remaining: if pinned {
                        e.ttl()
                    } else {
                        e.expires.since(now)
                    },
                    client: e.client(),
                    age: now.since(e.born),
                });
            }
        }
        out
    }

    /// Records a session handed over by the process this one took over from, on
    /// `server` (the caller found it in its own config). A sid this table already knows
    /// is left as it is (what this process learned itself is newer); returns whether it
    /// was added. Not counted as a started session: it started in the old process.
    pub fn import(&self, s: &HandedSession, server: Arc<ServerStats>) -> Result<bool, InsertError> {
        let now = self.epoch.now();
        let mut shard = self.shard(&s.sid);
        if shard.contains_key(&*s.sid) {
            return Ok(false);
        }
        if shard.len() >= self.per_shard {
            sweep_shard(&mut shard, now, None);
            if shard.len() >= self.per_shard {
                metrics::counter!(telemetry::SID_TABLE_FULL).increment(1);
                return Err(InsertError::Full(self.per_shard * SHARDS));
            }
        }
        let mut entry = Entry::new(server, s.ttl, s.client, s.age, now);
        // What was left of its window (shared with the fleet, if any, at the next sweep,
        // as a learned one).
        entry.expires = now.plus(s.remaining.min(s.ttl));
        shard.insert(SidKey::new(&s.sid), entry);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerState;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn stats(id: &str) -> Arc<ServerStats> {
        Arc::new(ServerStats::new("b".into(), id.into()))
    }

    fn table(capacity: usize) -> Arc<SidTable> {
        Arc::new(SidTable::new(capacity))
    }

    #[tokio::test(start_paused = true)]
    async fn learned_sid_finds_its_server_and_counts_as_polling() {
        let t = table(100);
        let s = stats("node-1");
        t.insert("abc", s.clone(), Duration::from_secs(3), LOCAL)
            .unwrap();
        let pin = t.pin_poll("abc").unwrap();
        assert_eq!(pin.server().id.as_ref(), "node-1");
        assert_eq!(s.sessions(Transport::Polling), 1);
        assert!(t.pin_poll("nope").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_registry_key_is_refreshed_while_its_session_is_heard_from_and_only_then() {
        let t = table(100);
        let s = stats("node-1");
        let ttl = Duration::from_secs(40);
        t.insert("abc", s.clone(), ttl, LOCAL).unwrap();
        let due = |t: &SidTable| {
            t.shard("abc")
                .get("abc")
                .unwrap()
                .refresh_due(t.epoch.now())
        };
        // Never written (no registry when it was learned): due at once, for what is left.
        assert_eq!(due(&t), Some(ttl));
        t.shard("abc").get_mut("abc").unwrap().published = t.epoch.now();
        // Heard from (a request came and went) but written less than half a window ago.
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(t.pin_poll("abc").unwrap());
        assert_eq!(due(&t), None);
        // Past half the window: due, for as long as the session has left here.
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(due(&t), Some(Duration::from_secs(25)));
        // Written again; then silent: never due again, the key runs out with the session.
        t.shard("abc").get_mut("abc").unwrap().published = t.epoch.now();
        tokio::time::advance(Duration::from_secs(24)).await;
        assert_eq!(due(&t), None);
        // A pinned session (a WebSocket) is due each half window, for a whole window.
        let pin = t.pin_tunnel("abc").unwrap();
        assert_eq!(due(&t), Some(ttl));
        drop(pin);
        // Its client closed its WebSocket: over for sure, no refresh, its key goes.
        let e = t.shard("abc");
        assert!(e.get("abc").unwrap().ended_for_sure());
        assert_eq!(e.get("abc").unwrap().refresh_due(t.epoch.now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_session_expires_after_its_ttl() {
        let t = table(100);
        let s = stats("node-1");
        t.insert("abc", s.clone(), Duration::from_secs(3), LOCAL)
            .unwrap();
        tokio::time::advance(Duration::from_millis(2900)).await;
        assert_eq!(t.sweep(), 0);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(t.pin_poll("abc").is_none());
        assert_eq!(t.sweep(), 1);
        assert_eq!(s.load(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_session_never_expires_and_heartbeat_restarts_at_unpin() {
        let t = table(100);
        let s = stats("node-1");
        t.insert("abc", s.clone(), Duration::from_secs(3), LOCAL)
            .unwrap();
        let pin = t.pin_poll("abc").unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(t.sweep(), 0);
        drop(pin);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(t.sweep(), 0, "a full ttl starts when the last request ends");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(t.sweep(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn tunnel_moves_the_session_to_websocket_and_back() {
        let t = table(100);
        let s = stats("node-1");
        t.insert("abc", s.clone(), Duration::from_secs(3), LOCAL)
            .unwrap();
        let tunnel = t.pin_tunnel("abc").unwrap();
        assert_eq!(s.sessions(Transport::WebSocket), 1);
        assert_eq!(s.sessions(Transport::Polling), 0);
        let poll = t.pin_poll("abc").unwrap();
        assert_eq!(s.sessions(Transport::WebSocket), 1, "still one session");
        drop(poll);
        drop(tunnel);
        assert_eq!(s.load(), 0, "its WebSocket closed: the session is over");
        // Unless the tunnel was a failed probe: polling resumes and counts again.
        let poll = t.pin_poll("abc").unwrap();
        assert_eq!(s.sessions(Transport::Polling), 1);
        drop(poll);
        assert_eq!(s.sessions(Transport::Polling), 1);
        assert_eq!(s.load(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_pin_says_whether_the_session_s_tunnel_is_open() {
        let t = table(100);
        let s = stats("node-1");
        t.insert("abc", s.clone(), Duration::from_secs(3), LOCAL)
            .unwrap();
        assert!(!t.pin_poll("abc").unwrap().tunnel_open(), "still polling");
        let tunnel = t.pin_tunnel("abc").unwrap();
        assert!(!tunnel.tunnel_open(), "no other tunnel before it");
        assert!(t.pin_poll("abc").unwrap().tunnel_open(), "upgrading");
        drop(tunnel);
        assert!(
            !t.pin_poll("abc").unwrap().tunnel_open(),
            "the probe failed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn session_ends_soon_after_its_websocket_closes() {
        let t = table(100);
        let s = stats("node-1");
        t.insert("ws", s.clone(), Duration::from_secs(60), LOCAL)
            .unwrap();
        drop(t.pin_tunnel("ws").unwrap());
        assert_eq!(s.load(), 0, "uncounted the moment its WebSocket closes");
        assert_eq!(t.len(), 1, "but kept a moment for a failed probe");
        tokio::time::advance(TUNNEL_END_LINGER + Duration::from_millis(10)).await;
        assert_eq!(t.sweep(), 1, "gone long before its 60 s heartbeat");
        assert_eq!(s.load(), 0);

        // A failed probe: polling resumes and the session lives on.
        t.insert("probe", s.clone(), Duration::from_secs(60), LOCAL)
            .unwrap();
        drop(t.pin_tunnel("probe").unwrap());
        drop(t.pin_poll("probe").unwrap());
        tokio::time::advance(TUNNEL_END_LINGER * 2).await;
        assert_eq!(t.sweep(), 0);
        assert_eq!(s.sessions(Transport::Polling), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_of_a_server_in_maint_stop_counting_and_come_back_with_it() {
        let t = table(100);
        let s = stats("node-1");
        t.insert("idle", s.clone(), Duration::from_secs(60), LOCAL)
            .unwrap();
        t.insert("polling", s.clone(), Duration::from_secs(60), LOCAL)
            .unwrap();
        let long_poll = t.pin_poll("polling").unwrap();
        t.insert("upgraded", s.clone(), Duration::from_secs(60), LOCAL)
            .unwrap();
        let tunnel = t.pin_tunnel("upgraded").unwrap();
        assert_eq!(s.load(), 3);

        s.condition.set_state(ServerState::Maint);
        assert_eq!(t.sweep(), 0, "nothing pinned is dropped");
        assert_eq!(s.load(), 0, "every session of a server in maint is over");
        assert_eq!(t.len(), 3, "their entries still route (to a refusal)");
        drop(tunnel);
        drop(long_poll);
        assert_eq!(s.load(), 0);
        // A refused request does not keep the entry for another heartbeat.
        drop(t.pin_poll("polling").unwrap());
        assert_eq!(s.load(), 0);
        tokio::time::advance(TUNNEL_END_LINGER + Duration::from_millis(10)).await;
        assert_eq!(t.sweep(), 2, "refused and closed: gone after the linger");

        // Back in service before its entry expired: a session that still polls counts.
        s.condition.set_state(ServerState::Ready);
        let poll = t.pin_poll("idle").unwrap();
        assert_eq!(s.sessions(Transport::Polling), 1);
        drop(poll);
        assert_eq!(s.load(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pinned_session_is_never_dropped_whatever_its_server_does() {
        let t = table(100);
        let s = stats("node-1");
        t.insert("abc", s.clone(), Duration::from_secs(1), LOCAL)
            .unwrap();
        let pin = t.pin_poll("abc").unwrap();
        s.condition.set_state(ServerState::Maint);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(t.sweep(), 0);
        assert_eq!(
            t.server_of("abc").map(|x| x.id.to_string()),
            Some("node-1".into())
        );
        s.condition.set_state(ServerState::Draining);
        drop(pin);
        assert_eq!(t.sweep(), 0, "a draining server keeps serving it");
        assert!(t.pin_poll("abc").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn full_table_refuses_new_sids_but_reclaims_expired_ones() {
        let t = table(SHARDS); // one per shard
        let s = stats("node-1");
        let mut refused = 0;
        for i in 0..(SHARDS * 4) {
            if t.insert(&format!("sid{i}"), s.clone(), Duration::from_secs(1), LOCAL)
                .is_err()
            {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert!(t.len() <= SHARDS);
        assert_eq!(s.sessions(Transport::Polling) as usize, t.len());
        tokio::time::advance(Duration::from_secs(5)).await;
        t.insert("late", s.clone(), Duration::from_secs(1), LOCAL)
            .unwrap();
        assert!(t.pin_poll("late").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn reinserting_a_sid_moves_it_without_double_counting() {
        let t = table(100);
        let (a, b) = (stats("a"), stats("b"));
        t.insert("x", a.clone(), Duration::from_secs(1), LOCAL)
            .unwrap();
        t.insert("x", b.clone(), Duration::from_secs(1), LOCAL)
            .unwrap();
        assert_eq!((a.load(), b.load()), (0, 1));
        t.remove("x");
        assert_eq!(b.load(), 0);
        assert!(t.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn handed_sessions_route_to_their_server_in_the_next_table() {
        let old = table(100);
        let s = stats("node-1");
        old.insert("idle", s.clone(), Duration::from_secs(10), LOCAL)
            .unwrap();
        old.insert("ws", s.clone(), Duration::from_secs(10), LOCAL)
            .unwrap();
        let _tunnel = old.pin_tunnel("ws").unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        let t0 = Instant::now();
        old.insert("late", s.clone(), Duration::from_secs(10), LOCAL)
            .unwrap();
        let all = old.export_live(None);
        let mut sids: Vec<_> = all.iter().map(|h| h.sid.to_string()).collect();
        sids.sort();
        assert_eq!(
            sids,
            ["idle", "late"],
            "a WebSocket session stays with its tunnel"
        );
        let idle = all.iter().find(|h| &*h.sid == "idle").unwrap();
        assert_eq!(idle.remaining, Duration::from_secs(6));
        assert_eq!(
            old.export_live(Some(t0)).len(),
            1,
            "only what was born since"
        );

        let new = table(100);
        let s2 = stats("node-1");
        for h in &all {
            assert!(new.import(h, s2.clone()).unwrap());
        }
        assert!(
            !new.import(idle, s2.clone()).unwrap(),
            "a known sid is kept"
        );
        assert_eq!(s2.sessions(Transport::Polling), 2);
        assert_eq!(new.pin_poll("idle").unwrap().server().id.as_ref(), "node-1");
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(new.pin_poll("late").is_some());
        assert_eq!(new.sweep(), 0, "the idle one was re-armed by its poll");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(new.sweep(), 2);
    }

    #[test]
    fn an_entry_and_its_key_take_96_bytes_of_a_shard() {
        // What a held session costs in its shard's map, bucket for bucket (maps run up
        // to half empty after growing): 160 bytes with `Instant`s, an `Arc<str>` key
        // (itself 48 bytes more on the heap) and the wall-clock start.
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<(SidKey, Entry)>(), 96);
        }
    }

    #[test]
    fn moments_before_the_epoch_and_far_after_it_are_kept() {
        let epoch = Epoch::new();
        let later = epoch.at + Duration::from_millis(1500);
        assert_eq!(epoch.of(later), Ms(1500));
        assert_eq!(epoch.of(later).since(Ms(500)), Duration::from_secs(1));
        assert_eq!(Ms(500).since(Ms(1500)), Duration::ZERO, "never negative");
        // A session handed over at a takeover was born before this table.
        let born = epoch.of(epoch.at).minus(Duration::from_secs(3600));
        assert_eq!(born, Ms(-3_600_000));
        assert_eq!(
            epoch.wall_of(born),
            epoch.wall - Duration::from_secs(3600),
            "its wall-clock start"
        );
        assert_eq!(Ms(i64::MAX - 1).plus(Duration::MAX), Ms(i64::MAX));
        assert_eq!(Ms(0).minus(Duration::MAX), Ms(-i64::MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_shows_its_client_and_start_as_they_were_given() {
        let t = table(100);
        let s = stats("node-1");
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        t.insert("six", s.clone(), Duration::from_secs(3), v6)
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        t.insert("four", s.clone(), Duration::from_secs(3), v4)
            .unwrap();
        let (six, four) = (t.info("six").unwrap(), t.info("four").unwrap());
        assert_eq!((six.client, four.client), (v6, v4));
        assert_eq!(
            four.started.duration_since(six.started).unwrap(),
            Duration::from_secs(2)
        );
        // A heartbeat beyond what an entry keeps (49 days) is held to it.
        let pin = t
            .insert_tunnel("long", s, Duration::from_secs(100 * 86_400), v4)
            .unwrap();
        assert_eq!(pin.ttl(), Duration::from_millis(u64::from(u32::MAX)));
    }
}
