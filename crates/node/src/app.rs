//! The demo application every pool node runs on the default namespace `/`.
//!
//! The event contract is the one of the Node test fixture (`tests/node/server.js`), so
//! the swarms drive a Rust node and a Node node alike:
//!
//! - `whoami(ack)` → `ack({ node, transport: "polling" or "websocket", sid })`;
//! - `echo(payload, ack)` → `ack(payload)` (binary attachments included);
//! - `broadcast(payload)` → `bcast` with `payload` to every socket of the cluster;
//! - `join(room, ack)` / `leave(room, ack)` → join / leave `room`, `ack(true)`
//!   (`ack(false)` if `room` is neither a string nor a number);
//! - `to-room({room, payload})` → `room` with `payload` to that room, on every node;
//! - `hello({name}, ack?)` → remember the display name, `ack({ node })`;
//! - `chat({text, room?}, ack?)` → `chat { text, name, room, node, sid, at }` to the
//!   room, or to everyone (sender included) without one; `ack(true)`;
//! - `presence(ack)` → `ack([{ sid, name, node, rooms }])`, every socket of the cluster;
//!
//! and on connect the node emits `welcome { node, sid }` to the new socket.
//!
//! Malformed payloads are ignored: nothing that comes off the network can panic a node.
//!
//! # Presence across nodes
//!
//! socketioxide's remote-socket data is only `{ id, server_id, ns }`, so a node cannot ask
//! another node for a socket's name. Each socket therefore carries its own description in
//! one hidden *presence room*, `PRESENCE_PREFIX + json({sid, name, node, rooms})`, kept up to
//! date by this module whenever the name or the rooms change. `presence` then asks the
//! adapter two cluster-wide questions — `fetch_sockets()` (which sockets exist) and
//! `rooms()` (which rooms exist, presence rooms included) — and every node answers both for
//! its own sockets; that works over every adapter (local, Redis pub/sub, Redis Streams, the
//! in-process bus). Presence rooms never appear in the `rooms` lists given to clients, and
//! clients cannot join or leave them.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::json;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::{SocketIo, TransportType};
use tether_kit::lock;

/// Counter: Socket.IO events handled by a pool node (`node`, `event`).
pub const MESSAGES: &str = "tether_node_messages_total";
/// Gauge: sockets connected to a pool node (`node`).
pub const SOCKETS: &str = "tether_node_sockets";

/// The start of every hidden presence room (see the module doc). A control character, so
/// no sensible room name collides with it; client room names starting with it are refused.
pub const PRESENCE_PREFIX: &str = "\u{1}tether-presence:";

/// The longest display name kept (in characters); longer names are cut.
const MAX_NAME_CHARS: usize = 64;

/// What one node's application shares between its sockets.
pub struct App {
    node: Arc<str>,
    sockets: AtomicI64,
    sockets_gauge: metrics::Gauge,
    /// Keeps emits to other sockets in the order their packets arrived.
    order: Sequencer,
}

/// Hands out turns in arrival order. socketioxide runs every event handler as its own
/// task, so two broadcasts from one client could reach the adapter — and each other
/// node — in either order, especially while a publish waits on a reconnecting Redis.
/// A handler takes its ticket in the synchronous part of the handler (called in packet
/// order) and emits when its turn comes.
struct Sequencer {
    next: std::sync::atomic::AtomicU64,
    turn: tokio::sync::watch::Sender<u64>,
}

/// A turn being served; the next one starts when it drops, however the handler ends.
struct Turn<'a>(&'a Sequencer, u64);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.turn.send_replace(self.1 + 1);
    }
}

impl Sequencer {
    fn new() -> Sequencer {
        Sequencer {
            next: std::sync::atomic::AtomicU64::new(0),
            turn: tokio::sync::watch::Sender::new(0),
        }
    }

    fn ticket(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    async fn wait(&self, ticket: u64) -> Turn<'_> {
        let mut rx = self.turn.subscribe();
        let _ = rx.wait_for(|t| *t == ticket).await;
        Turn(self, ticket)
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("node", &self.node)
            .field("sockets", &self.sockets.load(Ordering::Relaxed))
            .finish()
    }
}

impl App {
    /// The application of node `node`. Install the metrics recorder first
    /// (`crate::admin::install_metrics`), or the metrics go nowhere.
    pub fn new(node: &str) -> Arc<App> {
        let gauge = metrics::gauge!(SOCKETS, "node" => node.to_owned());
        gauge.set(0.0);
        Arc::new(App {
            node: Arc::from(node),
            sockets: AtomicI64::new(0),
            sockets_gauge: gauge,
            order: Sequencer::new(),
        })
    }

    /// The node id this application answers with.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sockets connected to this node now.
    pub fn socket_count(&self) -> i64 {
        self.sockets.load(Ordering::Relaxed)
    }

    fn count(&self, event: &'static str) {
        metrics::counter!(MESSAGES, "node" => self.node.to_string(), "event" => event).increment(1);
    }
}

/// The connect handler of namespace `/`, with [`register_events`] as its middleware:
/// `io.ns("/", (move |s| app::on_connect(app, s)).with(move |s| app::register_events(app, s)))`.
pub fn on_connect<A: Adapter>(app: Arc<App>, socket: SocketRef<A>) -> std::future::Ready<()> {
    socket
        .extensions
        .insert(SharedProfile::new(Mutex::new(Profile::default())));
    update_profile(&socket, &app.node, |_, _| {});
    let n = app.sockets.fetch_add(1, Ordering::Relaxed) + 1;
    app.sockets_gauge.set(n as f64);

    let a = Arc::clone(&app);
    socket.on_disconnect(move |_s: SocketRef<A>| async move {
        let n = a.sockets.fetch_sub(1, Ordering::Relaxed) - 1;
        a.sockets_gauge.set(n as f64);
    });
    // After the connect answer: a packet sent from the middleware would go before it.
    let _ = socket.emit(
        "welcome",
        &json!({ "node": &*app.node, "sid": socket.id.to_string() }),
    );
    std::future::ready(())
}

/// Registers every event handler, as the namespace's connect middleware.
///
/// socketioxide (0.18, `Namespace::connect`) sends the connect answer *before* it calls
/// the connect handler, in a task of its own: a client's first event, sent as soon as
/// the answer arrives, could be read before handlers registered in the connect handler
/// existed, and was dropped (a bench client saw its `whoami` go unanswered, once, under
/// load). Middlewares run before the answer is sent.
pub fn register_events<A: Adapter>(
    app: Arc<App>,
    socket: SocketRef<A>,
) -> std::future::Ready<Result<(), std::convert::Infallible>> {
    let a = Arc::clone(&app);
    socket.on(
        "whoami",
        move |s: SocketRef<A>, ack: AckSender<A>| async move {
            a.count("whoami");
            let transport = match s.transport_type() {
                TransportType::Polling => "polling",
                TransportType::Websocket => "websocket",
            };
            let _ = ack.send(
                &json!({ "node": &*a.node, "transport": transport, "sid": s.id.to_string() }),
            );
        },
    );

    let a = Arc::clone(&app);
    socket.on(
        "echo",
        move |TryData(payload): TryData<Payload>, ack: AckSender<A>| async move {
            a.count("echo");
            let _ = ack.send(&payload.unwrap_or(Payload::Null));
        },
    );

    let a = Arc::clone(&app);
    socket.on(
        "broadcast",
        move |io: SocketIo<A>, TryData(payload): TryData<Payload>| {
            let ticket = a.order.ticket();
            async move {
                let _turn = a.order.wait(ticket).await;
                a.count("broadcast");
                let payload = payload.unwrap_or(Payload::Null);
                if let Err(e) = io.emit("bcast", &payload).await {
                    tracing::debug!(node = %a.node, error = %e, "bcast failed");
                }
            }
        },
    );

    let a = Arc::clone(&app);
    socket.on(
        "join",
        move |s: SocketRef<A>, TryData(room): TryData<RoomName>, ack: AckSender<A>| async move {
            a.count("join");
            let ok = match room.ok().and_then(RoomName::user_room) {
                Some(room) => {
                    update_profile(&s, &a.node, |s, _| s.join(room));
                    true
                }
                None => false,
            };
            let _ = ack.send(&ok);
        },
    );

    let a = Arc::clone(&app);
    socket.on(
        "leave",
        move |s: SocketRef<A>, TryData(room): TryData<RoomName>, ack: AckSender<A>| async move {
            a.count("leave");
            let ok = match room.ok().and_then(RoomName::user_room) {
                Some(room) => {
                    update_profile(&s, &a.node, |s, _| s.leave(room));
                    true
                }
                None => false,
            };
            let _ = ack.send(&ok);
        },
    );

    let a = Arc::clone(&app);
    socket.on(
        "to-room",
        move |io: SocketIo<A>, TryData(msg): TryData<ToRoom>| {
            let ticket = a.order.ticket();
            async move {
                let _turn = a.order.wait(ticket).await;
                a.count("to-room");
                let Ok(msg) = msg else { return };
                let Some(room) = msg.room.user_room() else {
                    return;
                };
                if let Err(e) = io.to(room).emit("room", &msg.payload).await {
                    tracing::debug!(node = %a.node, error = %e, "to-room failed");
                }
            }
        },
    );

    let a = Arc::clone(&app);
    socket.on(
        "hello",
        move |s: SocketRef<A>, TryData(hello): TryData<Hello>, ack: AckSender<A>| async move {
            a.count("hello");
            let Some(name) = hello.ok().and_then(|h| clean_name(&h.name)) else {
                return;
            };
            update_profile(&s, &a.node, |_, p| p.name = Some(name));
            let _ = ack.send(&json!({ "node": &*a.node }));
        },
    );

    let a = Arc::clone(&app);
    socket.on(
        "chat",
        move |s: SocketRef<A>, io: SocketIo<A>, c: TryData<Chat>, ack: AckSender<A>| {
            let ticket = a.order.ticket();
            on_chat(a, ticket, s, io, c.0, ack)
        },
    );

    let a = Arc::clone(&app);
    socket.on(
        "presence",
        move |io: SocketIo<A>, ack: AckSender<A>| async move {
            a.count("presence");
            let list = presence(&io, &a.node).await;
            let _ = ack.send(&list);
        },
    );

    std::future::ready(Ok(()))
}

async fn on_chat<A: Adapter>(
    a: Arc<App>,
    ticket: u64,
    s: SocketRef<A>,
    io: SocketIo<A>,
    chat: Result<Chat, socketioxide::ParserError>,
    ack: AckSender<A>,
) {
    let _turn = a.order.wait(ticket).await;
    a.count("chat");
    let Ok(chat) = chat else { return };
    let room = match chat.room {
        None => None,
        Some(r) => match r.user_room() {
            Some(r) => Some(r),
            None => return,
        },
    };
    let name = profile_of(&s).and_then(|p| lock(&p).name.clone());
    let msg = ChatOut {
        text: chat.text,
        name,
        room: room.clone(),
        node: a.node.to_string(),
        sid: s.id.to_string(),
        at: now_ms(),
    };
    let sent = match room {
        Some(room) => io.to(room).emit("chat", &msg).await,
        None => io.emit("chat", &msg).await,
    };
    if let Err(e) = sent {
        tracing::debug!(node = %a.node, error = %e, "chat failed");
    }
    let _ = ack.send(&true);
}

/// Every socket of the cluster, as `presence` answers: sorted by node, then sid.
pub async fn presence<A: Adapter>(io: &SocketIo<A>, node: &str) -> Vec<PresenceEntry> {
    let (sockets, rooms) = tokio::join!(io.fetch_sockets(), io.rooms());
    let described: std::collections::HashMap<String, PresenceEntry> = match rooms {
        Ok(rooms) => rooms
            .iter()
            .filter_map(|r| PresenceEntry::from_room(r))
            .map(|e| (e.sid.clone(), e))
            .collect(),
        Err(e) => {
            tracing::debug!(%node, error = %e, "presence: rooms failed");
            Default::default()
        }
    };
    let sids: Vec<String> = match sockets {
        Ok(s) => s.iter().map(|s| s.data().id.to_string()).collect(),
        Err(e) => {
            tracing::debug!(%node, error = %e, "presence: fetch_sockets failed");
            // What this node knows for sure: its own sockets.
            io.sockets().iter().map(|s| s.id.to_string()).collect()
        }
    };
    let mut list: Vec<PresenceEntry> = sids
        .into_iter()
        .map(|sid| {
            described.get(&sid).cloned().unwrap_or(PresenceEntry {
                sid,
                name: None,
                node: None,
                rooms: Vec::new(),
            })
        })
        .collect();
    list.sort_by(|a, b| (&a.node, &a.sid).cmp(&(&b.node, &b.sid)));
    list.dedup_by(|a, b| a.sid == b.sid);
    list
}

/// One socket in the answer to `presence`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceEntry {
    pub sid: String,
    pub name: Option<String>,
    pub node: Option<String>,
    pub rooms: Vec<String>,
}

impl PresenceEntry {
    /// The hidden room describing this socket.
    fn room(&self) -> String {
        // Serializing a struct of strings cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{PRESENCE_PREFIX}{json}")
    }

    /// Reads a presence room back; `None` for any other room.
    fn from_room(room: &str) -> Option<PresenceEntry> {
        serde_json::from_str(room.strip_prefix(PRESENCE_PREFIX)?).ok()
    }
}

/// What a node remembers of one of its sockets (in the socket's extensions).
#[derive(Debug, Default)]
pub struct Profile {
    /// The display name given with `hello`.
    pub name: Option<String>,
    /// The presence room the socket is in now.
    presence_room: Option<String>,
}

type SharedProfile = Arc<Mutex<Profile>>;

fn profile_of<A: Adapter>(s: &SocketRef<A>) -> Option<SharedProfile> {
    s.extensions.get::<SharedProfile>()
}

/// Applies `change` (a join, a leave, a rename) and moves the socket into the presence
/// room that describes it afterwards, all under the profile's lock, so concurrent handlers
/// of one socket cannot leave a stale description behind.
fn update_profile<A: Adapter>(
    s: &SocketRef<A>,
    node: &str,
    change: impl FnOnce(&SocketRef<A>, &mut Profile),
) {
    let Some(profile) = profile_of(s) else {
        return;
    };
    let mut g = lock(&profile);
    change(s, &mut g);
    let mut rooms: Vec<String> = s
        .rooms()
        .into_iter()
        .map(|r| r.into_owned())
        .filter(|r| !r.starts_with(PRESENCE_PREFIX))
        .collect();
    rooms.sort();
    let entry = PresenceEntry {
        sid: s.id.to_string(),
        name: g.name.clone(),
        node: Some(node.to_owned()),
        rooms,
    };
    let room = entry.room();
    if g.presence_room.as_deref() == Some(room.as_str()) {
        return;
    }
    // Join first: a presence query in between sees the socket twice, never not at all.
    s.join(room.clone());
    if let Some(old) = g.presence_room.replace(room) {
        s.leave(old);
    }
}

/// A room name as a client gives it: a string, or a number (used as its decimal text,
/// as socket.io's `String(room)` does for integers).
#[derive(Debug, Clone, PartialEq)]
pub enum RoomName {
    Text(String),
    Number(serde_json::Number),
}

impl<'de> Deserialize<'de> for RoomName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RoomName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a room name (string or number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RoomName, E> {
                Ok(RoomName::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RoomName, E> {
                Ok(RoomName::Text(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RoomName, E> {
                Ok(RoomName::Number(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RoomName, E> {
                Ok(RoomName::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RoomName, E> {
                serde_json::Number::from_f64(v)
                    .map(RoomName::Number)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
        }
        d.deserialize_any(V)
    }
}

impl RoomName {
    /// The room this names, unless it is one a client may not use (a presence room).
    pub fn user_room(self) -> Option<String> {
        let room = match self {
            RoomName::Text(s) => s,
            // JavaScript's String(3.0) is "3".
            RoomName::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
                _ => n.to_string(),
            },
        };
        (!room.starts_with('\u{1}')).then_some(room)
    }
}

#[derive(Debug, serde::Deserialize)]
struct ToRoom {
    room: RoomName,
    #[serde(default)]
    payload: Payload,
}

#[derive(Debug, serde::Deserialize)]
struct Hello {
    name: String,
}

#[derive(Debug, serde::Deserialize)]
struct Chat {
    text: String,
    #[serde(default)]
    room: Option<RoomName>,
}

/// The `chat` event as every client receives it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatOut {
    pub text: String,
    pub name: Option<String>,
    pub room: Option<String>,
    pub node: String,
    pub sid: String,
    /// Milliseconds since the Unix epoch, when the node relayed the message.
    pub at: u64,
}

/// A display name as kept: trimmed, control characters removed, at most
/// `MAX_NAME_CHARS` characters; `None` if nothing is left.
fn clean_name(raw: &str) -> Option<String> {
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let name = name.trim().to_owned();
    (!name.is_empty()).then_some(name)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Any Socket.IO payload, binary attachments included: what `echo`, `broadcast` and
/// `to-room` hand back untouched. (`serde_json::Value` would turn a binary attachment
/// into an error; this keeps it as bytes, which the parser sends back as an attachment.)
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Payload {
    #[default]
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Bytes(Bytes),
    Array(Vec<Payload>),
    /// Keys in the order received.
    Object(Vec<(String, Payload)>),
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Null => s.serialize_unit(),
            Payload::Bool(b) => s.serialize_bool(*b),
            Payload::Number(n) => n.serialize(s),
            Payload::String(v) => s.serialize_str(v),
            Payload::Bytes(b) => s.serialize_bytes(b),
            Payload::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Payload::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PayloadVisitor)
    }
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any Socket.IO payload")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Payload, E> {
        Ok(Payload::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Payload, E> {
        Ok(Payload::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Payload, D::Error> {
        Payload::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Payload, E> {
        Ok(Payload::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Payload, E> {
        Ok(Payload::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Payload, E> {
        Ok(Payload::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Payload, E> {
        // JSON has no NaN or infinity; should one come, it travels as null, as in JSON.stringify.
        Ok(serde_json::Number::from_f64(v)
            .map(Payload::Number)
            .unwrap_or(Payload::Null))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
        Ok(Payload::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Payload, E> {
        Ok(Payload::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
        Ok(Payload::Bytes(Bytes::copy_from_slice(v)))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
        Ok(Payload::Bytes(Bytes::from(v)))
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Payload, S::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<Payload>()? {
            items.push(item);
        }
        Ok(Payload::Array(items))
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Payload, M::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some((k, v)) = map.next_entry::<String, Payload>()? {
            entries.push((k, v));
        }
        Ok(Payload::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_json_in_order() {
        let text = concat!(
            r#"{"i":3,"text":"héllo ☃","list":[1,2.5,-3,null,true,false,""],"#,
            r#""nested":{"a":{"b":[1,{"d":"e"}]}}}"#
        );
        let p: Payload = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), text);
    }

    #[test]
    fn payload_keeps_bytes() {
        let p = Payload::Object(vec![(
            "bin".into(),
            Payload::Bytes(Bytes::from_static(b"\x00\x01")),
        )]);
        // serde_json writes bytes as an array of numbers; the socket.io parser makes them
        // an attachment instead. Either way the value is serialized, never an error.
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"bin":[0,1]}"#);
        let back = PayloadVisitor
            .visit_byte_buf::<serde_json::Error>(vec![0, 1])
            .unwrap();
        assert_eq!(back, Payload::Bytes(Bytes::from_static(b"\x00\x01")));
    }

    #[test]
    fn payload_survives_deep_nesting_without_panic() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        // serde_json's recursion limit refuses it: an error, not a stack overflow.
        assert!(serde_json::from_str::<Payload>(&deep).is_err());
    }

    #[test]
    fn room_names() {
        let r = |s: &str| {
            serde_json::from_str::<RoomName>(s)
                .ok()
                .and_then(RoomName::user_room)
        };
        assert_eq!(r(r#""lobby""#).as_deref(), Some("lobby"));
        assert_eq!(r("42").as_deref(), Some("42"));
        assert_eq!(r("-7").as_deref(), Some("-7"));
        assert_eq!(r("3.0").as_deref(), Some("3"));
        assert_eq!(r("1.5").as_deref(), Some("1.5"));
        assert_eq!(r("null"), None);
        assert_eq!(r("{}"), None);
        assert_eq!(r("[1]"), None);
        let hidden = serde_json::to_string(&format!("{PRESENCE_PREFIX}x")).unwrap();
        assert_eq!(r(&hidden), None);
    }

    #[test]
    fn presence_room_round_trip() {
        let e = PresenceEntry {
            sid: "abc".into(),
            name: Some("Ann \"the\" #1".into()),
            node: Some("node-1".into()),
            rooms: vec!["a".into(), "b#c".into()],
        };
        let room = e.room();
        assert!(room.starts_with(PRESENCE_PREFIX));
        assert_eq!(PresenceEntry::from_room(&room), Some(e));
        assert_eq!(PresenceEntry::from_room("lobby"), None);
        assert_eq!(PresenceEntry::from_room(PRESENCE_PREFIX), None);
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("  Ann  ").as_deref(), Some("Ann"));
        assert_eq!(clean_name("a\u{0}b\nc").as_deref(), Some("abc"));
        assert_eq!(clean_name("   "), None);
        assert_eq!(
            clean_name(&"x".repeat(500)).map(|n| n.len()),
            Some(MAX_NAME_CHARS)
        );
    }

    #[test]
    fn malformed_events_do_not_parse() {
        assert!(serde_json::from_str::<Hello>(r#"{"name":5}"#).is_err());
        assert!(serde_json::from_str::<Chat>(r#"{"room":"a"}"#).is_err());
        assert!(serde_json::from_str::<ToRoom>(r#"{"payload":1}"#).is_err());
        let c: Chat = serde_json::from_str(r#"{"text":"hi","room":null}"#).unwrap();
        assert_eq!(c.room, None);
        let t: ToRoom = serde_json::from_str(r#"{"room":"r"}"#).unwrap();
        assert_eq!(t.payload, Payload::Null);
    }
}
