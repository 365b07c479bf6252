//! The few Engine.IO v4 / Socket.IO v5 packet shapes the load generator reads and
//! writes: the open packet, the Socket.IO connect answer, acks, pings, and polling
//! payloads (packets separated by the record separator `\x1e`).

use serde::Deserialize;

/// What separates packets in one polling body.
pub const RECORD_SEPARATOR: char = '\u{1e}';

/// The Engine.IO open packet `0{"sid":...}` (the fields the client needs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Open {
    pub sid: String,
    #[serde(default)]
    pub upgrades: Vec<String>,
    #[serde(rename = "pingInterval", default)]
    pub ping_interval: u64,
    #[serde(rename = "pingTimeout", default)]
    pub ping_timeout: u64,
    #[serde(rename = "maxPayload", default)]
    pub max_payload: u64,
}

/// Why a packet could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PacketError(pub String);

fn bad(what: &str, text: &str) -> PacketError {
    let mut shown: String = text.chars().take(80).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    PacketError(format!("{what}: {shown:?}"))
}

/// Reads an Engine.IO open packet (`0{...}`).
pub fn parse_open(text: &str) -> Result<Open, PacketError> {
    let json = text
        .strip_prefix('0')
        .ok_or_else(|| bad("expected an open packet", text))?;
    serde_json::from_str(json).map_err(|_| bad("malformed open packet", text))
}

/// The packets of one polling body, in order (empty pieces skipped).
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(RECORD_SEPARATOR).filter(|p| !p.is_empty())
}

/// One Engine.IO packet, as far as the load generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine<'a> {
    Open(&'a str),
    Close,
    /// A ping, with its data (`probe` during an upgrade).
    Ping(&'a str),
    Pong(&'a str),
    /// A message: a Socket.IO packet.
    Message(&'a str),
    Upgrade,
    Noop,
}

/// Reads the Engine.IO packet type of one (text) packet.
pub fn parse_engine(text: &str) -> Result<Engine<'_>, PacketError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or_else(|| bad("empty packet", text))?;
    let rest = chars.as_str();
    Ok(match kind {
        '0' => Engine::Open(rest),
        '1' => Engine::Close,
        '2' => Engine::Ping(rest),
        '3' => Engine::Pong(rest),
        '4' => Engine::Message(rest),
        '5' => Engine::Upgrade,
        '6' => Engine::Noop,
        _ => return Err(bad("unknown Engine.IO packet type", text)),
    })
}

/// One Socket.IO packet (inside an Engine.IO message), default namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket<'a> {
    /// `0{...}`: the connect answer, with its JSON.
    Connect(&'a str),
    Disconnect,
    /// `2[<id>][...]`: an event from the server.
    Event(Option<u64>, &'a str),
    /// `3<id>[...]`: an ack.
    Ack(u64, &'a str),
    /// `4{...}`: the connection was refused.
    ConnectError(&'a str),
    /// `5`/`6`: binary packets (not used by the generator).
    Binary,
}

/// Reads a Socket.IO packet (the part after the Engine.IO `4`). A namespace other than
/// `/` is an error: the generator only talks to the default one.
pub fn parse_socket(text: &str) -> Result<Socket<'_>, PacketError> {
    let mut chars = text.chars();
    let kind = chars
        .next()
        .ok_or_else(|| bad("empty Socket.IO packet", text))?;
    let mut rest = chars.as_str();
    if rest.starts_with('/') {
        let (nsp, after) = rest
            .split_once(',')
            .ok_or_else(|| bad("malformed namespace", text))?;
        if nsp != "/" {
            return Err(bad("packet for another namespace", text));
        }
        rest = after;
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (id, data) = rest.split_at(digits);
    let id = if digits == 0 {
        None
    } else {
        Some(id.parse().map_err(|_| bad("ack id out of range", text))?)
    };
    Ok(match kind {
        '0' => Socket::Connect(rest),
        '1' => Socket::Disconnect,
        '2' => Socket::Event(id, data),
        '3' => Socket::Ack(id.ok_or_else(|| bad("ack without an id", text))?, data),
        '4' => Socket::ConnectError(rest),
        '5' | '6' => Socket::Binary,
        _ => return Err(bad("unknown Socket.IO packet type", text)),
    })
}

/// Reads the Socket.IO connect answer `40{"sid":...}` (whole Engine.IO packet) and
/// returns the Socket.IO sid.
pub fn parse_connect(text: &str) -> Result<String, PacketError> {
    #[derive(Deserialize)]
    struct Connected {
        sid: String,
    }
    match parse_engine(text)? {
        Engine::Message(m) => match parse_socket(m)? {
            Socket::Connect(json) => serde_json::from_str::<Connected>(json)
                .map(|c| c.sid)
                .map_err(|_| bad("malformed connect packet", text)),
            Socket::ConnectError(_) => Err(bad("connection refused", text)),
            _ => Err(bad("expected a connect packet", text)),
        },
        _ => Err(bad("expected a connect packet", text)),
    }
}

/// Reads the `node` field of a `whoami` ack's arguments (`[{"node": ...}]`).
pub fn whoami_node(args: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Who {
        node: String,
    }
    let mut v: Vec<serde_json::Value> = serde_json::from_str(args).ok()?;
    if v.is_empty() {
        return None;
    }
    serde_json::from_value::<Who>(v.swap_remove(0))
        .ok()
        .map(|w| w.node)
}

/// The Engine.IO text of `emit(event, ...args, ack)` with ack id `id`: `42<id>[...]`.
/// `args_json` is the JSON of the arguments after the event name, comma separated (may
/// be empty).
pub fn emit_with_ack(id: u64, event: &str, args_json: &str) -> String {
    let event = serde_json::to_string(event).unwrap_or_else(|_| "\"\"".to_owned());
    if args_json.is_empty() {
        format!("42{id}[{event}]")
    } else {
        format!("42{id}[{event},{args_json}]")
    }
}

/// The JSON string payload of `n` bytes the echo mode sends.
pub fn payload_json(n: usize) -> String {
    let mut s = String::with_capacity(n + 2);
    s.push('"');
    s.extend(std::iter::repeat_n('x', n));
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_packet() {
        let o = parse_open(
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
        )
        .unwrap();
        assert_eq!(o.sid, "lv_VI97HAXpY6yYWAAAC");
        assert_eq!(o.upgrades, vec!["websocket".to_owned()]);
        assert_eq!(o.ping_interval, 25000);
        assert_eq!(o.ping_timeout, 20000);
        assert_eq!(o.max_payload, 1_000_000);
        // Missing optional fields are fine; missing sid or junk is not.
        assert_eq!(parse_open(r#"0{"sid":"a"}"#).unwrap().ping_interval, 0);
        assert!(parse_open(r#"0{"upgrades":[]}"#).is_err());
        assert!(parse_open(r#"40{"sid":"a"}"#).is_err());
        assert!(parse_open("0not json").is_err());
        assert!(parse_open("").is_err());
    }

    #[test]
    fn connect_packet() {
        assert_eq!(parse_connect(r#"40{"sid":"xyz"}"#).unwrap(), "xyz");
        assert_eq!(parse_connect(r#"40/,{"sid":"xyz"}"#).unwrap(), "xyz");
        assert!(parse_connect(r#"44{"message":"nope"}"#).is_err());
        assert!(parse_connect(r#"42["welcome",{}]"#).is_err());
        assert!(parse_connect("40").is_err());
        assert!(parse_connect("2").is_err());
        assert!(parse_connect(r#"40/admin,{"sid":"x"}"#).is_err());
    }

    #[test]
    fn ack_packet() {
        let Engine::Message(m) = parse_engine(r#"4312["hello",{"a":1}]"#).unwrap() else {
            panic!("not a message");
        };
        assert_eq!(
            parse_socket(m).unwrap(),
            Socket::Ack(12, r#"["hello",{"a":1}]"#)
        );
        assert_eq!(parse_socket("30[]").unwrap(), Socket::Ack(0, "[]"));
        assert!(parse_socket("3[]").is_err());
        assert!(parse_socket("399999999999999999999999[]").is_err());
        assert_eq!(
            parse_socket(r#"2["welcome",{"node":"n1"}]"#).unwrap(),
            Socket::Event(None, r#"["welcome",{"node":"n1"}]"#)
        );
        assert_eq!(
            parse_socket(r#"27["x"]"#).unwrap(),
            Socket::Event(Some(7), r#"["x"]"#)
        );
        assert!(parse_socket("9").is_err());
        assert!(parse_socket("").is_err());
        assert_eq!(
            whoami_node(r#"[{"node":"n1","transport":"websocket","sid":"s"}]"#).as_deref(),
            Some("n1")
        );
        assert_eq!(whoami_node("[]"), None);
        assert_eq!(whoami_node(r#"[{"node":3}]"#), None);
        assert_eq!(whoami_node("junk"), None);
    }

    #[test]
    fn engine_packets() {
        assert_eq!(parse_engine("2").unwrap(), Engine::Ping(""));
        assert_eq!(parse_engine("3probe").unwrap(), Engine::Pong("probe"));
        assert_eq!(parse_engine("6").unwrap(), Engine::Noop);
        assert_eq!(parse_engine("5").unwrap(), Engine::Upgrade);
        assert_eq!(parse_engine("1").unwrap(), Engine::Close);
        assert!(parse_engine("").is_err());
        assert!(parse_engine("x").is_err());
    }

    #[test]
    fn polling_payloads() {
        let body = "40{\"sid\":\"abc\"}\u{1e}42[\"welcome\",{\"node\":\"n1\"}]\u{1e}2";
        let parts: Vec<&str> = split_payload(body).collect();
        assert_eq!(
            parts,
            vec![r#"40{"sid":"abc"}"#, r#"42["welcome",{"node":"n1"}]"#, "2"]
        );
        assert_eq!(parse_connect(parts[0]).unwrap(), "abc");
        assert_eq!(split_payload("6").collect::<Vec<_>>(), vec!["6"]);
        assert_eq!(split_payload("").count(), 0);
        assert_eq!(
            split_payload("\u{1e}\u{1e}3").collect::<Vec<_>>(),
            vec!["3"]
        );
    }

    #[test]
    fn emits() {
        assert_eq!(emit_with_ack(3, "whoami", ""), r#"423["whoami"]"#);
        assert_eq!(
            emit_with_ack(0, "echo", &payload_json(3)),
            r#"420["echo","xxx"]"#
        );
        assert_eq!(payload_json(0), r#""""#);
    }
}
