//! Engine.IO protocol facts tether relies on, kept in one place so the proxy never
//! guesses: how a request says it is Engine.IO, where its sid is, how the open packet
//! names the sid and the heartbeat, and the exact error body a client understands.
//!
//! Everything here parses untrusted bytes, so it borrows, never allocates on the
//! request path, and returns `None` rather than failing loudly on anything odd.

use std::time::Duration;

/// Engine.IO's own answer for a session the server does not know. A client receiving it
/// starts a fresh handshake, which is exactly what tether wants after a server is lost.
pub const SESSION_UNKNOWN_BODY: &str = r#"{"code":1,"message":"Session ID unknown"}"#;

/// Engine.IO's answer to a request it cannot classify (`code` 3 is "Bad request").
pub const BAD_REQUEST_BODY: &str = r#"{"code":3,"message":"Bad request"}"#;

/// Which transport an Engine.IO request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::WebSocket => "websocket",
        }
    }
}

/// What the query string says about an Engine.IO request. Recognised by the query
/// (`EIO` and `transport`), never by the path: `/socket.io/`, `/engine.io/` and custom
/// paths all exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EioQuery<'a> {
    pub version: u8,
    pub transport: Transport,
    /// `None` for a handshake.
    pub sid: Option<&'a str>,
}

/// Why a request that says it is Engine.IO (it carries `EIO`) is refused by tether itself.
///
/// tether and the server must read a request alike: if tether took the last of two `EIO`
/// parameters and the server the first, the server could create sessions tether never
/// counts. So anything the two could read differently is refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EioError {
    #[error("Engine.IO parameter `{0}` given more than once")]
    Duplicate(&'static str),
    #[error("unsupported Engine.IO protocol version")]
    Version,
    #[error("unknown Engine.IO transport")]
    Transport,
}

impl EioError {
    /// Engine.IO's own error body for it, so clients react as they would to the server.
    pub fn body(self) -> &'static str {
        match self {
            EioError::Transport => TRANSPORT_UNKNOWN_BODY,
            EioError::Version => UNSUPPORTED_VERSION_BODY,
            EioError::Duplicate(_) => BAD_REQUEST_BODY,
        }
    }
}

/// Engine.IO's answer to an unknown transport (`code` 0).
pub const TRANSPORT_UNKNOWN_BODY: &str = r#"{"code":0,"message":"Transport unknown"}"#;

/// Engine.IO's answer to an unsupported protocol version (`code` 5).
pub const UNSUPPORTED_VERSION_BODY: &str = r#"{"code":5,"message":"Unsupported protocol version"}"#;

/// Whether a query names a sid (any value), without parsing it: one substring search,
/// for a question asked of every request, where a walk over the parameters costs several
/// times as much (`benches/hot_paths.rs`). A parameter is `sid` when it opens the query
/// or follows `&`.
pub fn names_sid(query: &str) -> bool {
    query.starts_with("sid=") || query.contains("&sid=")
}

/// Parses the query of a request: `Ok(None)` when it is not Engine.IO (no `EIO`), `Err`
/// when it says it is but could be read two ways or names what no server speaks.
///
/// Only versions 3 and 4 are accepted (v3's polling payload differs, but the sid and
/// the error body are the same). A parameter name written with percent-escapes
/// (`%45IO`) counts as the name, as a server decoding it would read it; values are taken
/// as they are, so an escaped version or transport is refused. An empty or oversized sid
/// is reported as present-but-bad via `Some("")`, so the caller can answer "Session ID
/// unknown" rather than place a new session.
pub fn parse_query(query: &str) -> Result<Option<EioQuery<'_>>, EioError> {
    let mut version = None;
    let mut transport = None;
    let mut sid = None;
    let mut duplicate = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(name) = param_name(key) else {
            continue;
        };
        let slot = match name {
            "EIO" => &mut version,
            "transport" => &mut transport,
            _ => &mut sid,
        };
        if slot.replace(value).is_some() {
            duplicate = duplicate.or(Some(name));
        }
    }
    let Some(version) = version else {
        return Ok(None);
    };
    if let Some(name) = duplicate {
        return Err(EioError::Duplicate(name));
    }
    let version = match version {
        "3" => 3,
        "4" => 4,
        _ => return Err(EioError::Version),
    };
    let transport = match transport {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::WebSocket,
        _ => return Err(EioError::Transport),
    };
    Ok(Some(EioQuery {
        version,
        transport,
        sid: sid.map(|s| if valid_sid(s) { s } else { "" }),
    }))
}

/// Which of the three Engine.IO parameters `key` names, escaped or not.
fn param_name(key: &str) -> Option<&'static str> {
    const NAMES: [&str; 3] = ["EIO", "transport", "sid"];
    if let Some(n) = NAMES.iter().find(|n| **n == key) {
        return Some(n);
    }
    if !key.contains('%') || key.len() > 3 * 9 {
        return None;
    }
    let decoded = percent_decode(key)?;
    NAMES.iter().find(|n| **n == decoded).copied()
}

/// `%XX` escapes of a short ASCII text decoded; `None` when malformed or not ASCII.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let b = u8::from_str_radix(hex, 16).ok()?;
            if !b.is_ascii() {
                return None;
            }
            out.push(b as char);
            i += 3;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    Some(out)
}

/// Sids in the wild are base64id (20 chars, Node), 16 alphanumerics (socketioxide),
/// or URL-safe base64 of other servers. Anything else cannot be a sid tether learned,
/// and must not reach the sid table (bounded key size, no percent-decoding games).
pub fn valid_sid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// Engine.IO's default ping interval and timeout.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_millis(25_000);
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_millis(20_000);

/// Engine.IO's default heartbeat (`pingInterval + pingTimeout`), for a session whose
/// open packet tether has not read.
pub const DEFAULT_HEARTBEAT: Duration = DEFAULT_PING_INTERVAL.saturating_add(DEFAULT_PING_TIMEOUT);

/// What tether learns from a session's open packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenPacket<'a> {
    pub sid: &'a str,
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Option<Duration>,
}

impl OpenPacket<'_> {
    /// How long a healthy session may stay silent: the server pings every
    /// `pingInterval` and waits `pingTimeout` for the pong, so a session quiet for longer
    /// than both is dead. Engine.IO's defaults (25 s + 20 s) when the packet omits them.
    pub fn heartbeat(&self) -> Duration {
        self.ping_interval.unwrap_or(DEFAULT_PING_INTERVAL)
            + self.ping_timeout.unwrap_or(DEFAULT_PING_TIMEOUT)
    }
}

/// Finds the open packet in a polling handshake body and reads it.
///
/// The body is one or more packets separated by `\x1e` (v4) or length-prefixed
/// `96:0{...}` (v3); the open packet is the first, type `0`, with a JSON object. Only
/// the three fields tether needs are read, with a small scanner instead of a JSON
/// library: the object is produced by the server, is flat, and its values are plain
/// strings, numbers and an array of strings.
pub fn parse_open_packet(body: &[u8]) -> Option<OpenPacket<'_>> {
    let first = body.split(|b| *b == 0x1e).next()?;
    let start = memchr_open(first)?;
    let json = std::str::from_utf8(&first[start + 1..]).ok()?;
    parse_open_json(json)
}

/// Reads an open packet that is the whole text (a WebSocket text frame's payload `0{..}`).
pub fn parse_open_text(payload: &[u8]) -> Option<OpenPacket<'_>> {
    let rest = payload.strip_prefix(b"0")?;
    parse_open_json(std::str::from_utf8(rest).ok()?)
}

/// Position of the `0` that starts the open packet: at 0 for v4, after `<len>:` for v3.
fn memchr_open(packet: &[u8]) -> Option<usize> {
    if packet.starts_with(b"0{") {
        return Some(0);
    }
    let colon = packet.iter().take(12).position(|b| *b == b':')?;
    if packet[..colon].iter().all(u8::is_ascii_digit) && packet[colon + 1..].starts_with(b"0{") {
        Some(colon + 1)
    } else {
        None
    }
}

fn parse_open_json(json: &str) -> Option<OpenPacket<'_>> {
    let json = json.trim_end();
    if !json.starts_with('{') || !json.ends_with('}') {
        return None;
    }
    let sid = json_string_field(json, "sid").filter(|s| valid_sid(s))?;
    Some(OpenPacket {
        sid,
        ping_interval: json_number_field(json, "pingInterval").map(Duration::from_millis),
        ping_timeout: json_number_field(json, "pingTimeout").map(Duration::from_millis),
    })
}

/// The raw text right after `"name":` (spaces allowed), if the key occurs as a key.
fn json_value_after<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(at) = json[from..].find(name) {
        let key_start = from + at;
        let key_end = key_start + name.len();
        from = key_end;
        let quoted = json[..key_start].ends_with('"') && json[key_end..].starts_with('"');
        if !quoted {
            continue;
        }
        let rest = json[key_end + 1..].trim_start();
        if let Some(value) = rest.strip_prefix(':') {
            return Some(value.trim_start());
        }
    }
    None
}

fn json_string_field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let value = json_value_after(json, name)?.strip_prefix('"')?;
    let end = value.find('"')?;
    Some(&value[..end])
}

fn json_number_field(json: &str, name: &str) -> Option<u64> {
    let value = json_value_after(json, name)?;
    let end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    value[..end].parse().ok().filter(|v| *v <= 86_400_000)
}

/// Looks at the start of a server-to-client WebSocket stream for the first frame and,
/// if it is a complete unmasked text frame carrying the open packet, reads it. Used for
/// WebSocket-only sessions, whose heartbeat tether learns from that first frame.
pub fn parse_ws_open_frame(buf: &[u8]) -> Option<OpenPacket<'_>> {
    let (&b0, rest) = buf.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    // FIN set, opcode 1 (text), not masked (server frames never are).
    if b0 != 0x81 || b1 & 0x80 != 0 {
        return None;
    }
    let (len, rest) = match b1 & 0x7f {
        126 => {
            let (len, rest) = rest.split_at_checked(2)?;
            (u16::from_be_bytes([len[0], len[1]]) as usize, rest)
        }
        127 => return None, // an open packet is never that long
        n => (n as usize, rest),
    };
    parse_open_text(rest.get(..len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The substring search says what a walk over the parameters would.
        #[test]
        fn a_query_names_a_sid_exactly_when_one_of_its_parameters_is_sid(
            q in "[sid=&a-z%0-9]{0,24}"
        ) {
            let walked = q.split('&').any(|kv| kv.starts_with("sid="));
            proptest::prop_assert_eq!(names_sid(&q), walked);
        }
    }

    #[test]
    fn config_warnings_assume_this_ping_interval() {
        assert_eq!(
            crate::config::advice::ENGINEIO_PING_INTERVAL,
            DEFAULT_PING_INTERVAL
        );
    }

    #[test]
    fn handshake_query_has_no_sid() {
        let q = parse_query("EIO=4&transport=polling&t=OzKx1")
            .unwrap()
            .unwrap();
        assert_eq!(q.version, 4);
        assert_eq!(q.transport, Transport::Polling);
        assert_eq!(q.sid, None);
    }

    #[test]
    fn sid_is_read_in_any_position() {
        let q = parse_query("sid=abc_DEF-123&transport=websocket&EIO=4")
            .unwrap()
            .unwrap();
        assert_eq!(q.transport, Transport::WebSocket);
        assert_eq!(q.sid, Some("abc_DEF-123"));
    }

    #[test]
    fn requests_without_eio_are_not_engine_io() {
        assert_eq!(parse_query("transport=polling"), Ok(None));
        assert_eq!(
            parse_query("sid=x&sid=y"),
            Ok(None),
            "no EIO: not ours to judge"
        );
        assert_eq!(parse_query(""), Ok(None));
        assert_eq!(parse_query("&&&==&"), Ok(None));
    }

    #[test]
    fn engine_io_requests_a_server_could_read_otherwise_are_refused() {
        assert_eq!(parse_query("EIO=4"), Err(EioError::Transport));
        assert_eq!(
            parse_query("EIO=5&transport=polling"),
            Err(EioError::Version)
        );
        assert_eq!(
            parse_query("EIO=%34&transport=polling"),
            Err(EioError::Version)
        );
        assert_eq!(
            parse_query("EIO=4&transport=carrier-pigeon"),
            Err(EioError::Transport)
        );
        assert_eq!(
            parse_query("EIO=4&transport=polling&EIO=5"),
            Err(EioError::Duplicate("EIO"))
        );
        assert_eq!(
            parse_query("EIO=4&transport=polling&%45IO=4"),
            Err(EioError::Duplicate("EIO")),
            "an escaped name is the name"
        );
        assert_eq!(
            parse_query("EIO=4&transport=polling&transport=websocket"),
            Err(EioError::Duplicate("transport"))
        );
        assert_eq!(
            parse_query("EIO=4&transport=polling&sid=a&s%69d=b"),
            Err(EioError::Duplicate("sid"))
        );
        assert_eq!(EioError::Version.body(), UNSUPPORTED_VERSION_BODY);
    }

    #[test]
    fn malformed_sid_is_present_but_empty() {
        let q = parse_query("EIO=4&transport=polling&sid=%00%2F..")
            .unwrap()
            .unwrap();
        assert_eq!(q.sid, Some(""));
        let long = format!("EIO=4&transport=polling&sid={}", "a".repeat(65));
        assert_eq!(parse_query(&long).unwrap().unwrap().sid, Some(""));
    }

    #[test]
    fn open_packet_sid_and_heartbeat_are_read() {
        let body = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        let open = parse_open_packet(body).unwrap();
        assert_eq!(open.sid, "lv_VI97HAXpY6yYWAAAC");
        assert_eq!(open.ping_interval, Some(Duration::from_secs(25)));
        assert_eq!(open.heartbeat(), Duration::from_secs(45));
    }

    #[test]
    fn open_packet_followed_by_more_packets() {
        let body = b"0{\"sid\":\"abcdefgh12345678\",\"pingInterval\":300,\"pingTimeout\":200}\x1e40{\"sid\":\"other\"}";
        let open = parse_open_packet(body).unwrap();
        assert_eq!(open.sid, "abcdefgh12345678");
        assert_eq!(open.heartbeat(), Duration::from_millis(500));
    }

    #[test]
    fn v3_length_prefixed_open_packet() {
        let body =
            br#"96:0{"sid":"xyz","upgrades":[],"pingInterval":25000,"pingTimeout":5000}2:40"#;
        // v3 puts the next packet right after the JSON; the scanner stops at the object.
        let open = parse_open_packet(&body[..body.len() - 4]).unwrap();
        assert_eq!(open.sid, "xyz");
    }

    #[test]
    fn key_named_like_a_value_is_not_confused() {
        let body = br#"0{"upgrades":["sid"],"sid":"real"}"#;
        assert_eq!(parse_open_packet(body).unwrap().sid, "real");
    }

    #[test]
    fn not_an_open_packet() {
        assert_eq!(parse_open_packet(b""), None);
        assert_eq!(parse_open_packet(b"4hello"), None);
        assert_eq!(parse_open_packet(b"0{\"sid\":12}"), None);
        assert_eq!(parse_open_packet(b"0{\"sid\":\"unterminated}"), None);
        assert_eq!(parse_open_packet(b"0{\"sid\":\"a b\"}"), None);
        assert_eq!(parse_open_packet(&[0xff, 0xfe, 0x30]), None);
    }

    #[test]
    fn first_websocket_frame_carries_the_open_packet() {
        let payload = br#"0{"sid":"AAAAAAAAAAAAAAAA","pingInterval":1000,"pingTimeout":500}"#;
        let mut frame = vec![0x81, payload.len() as u8];
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\x81\x0240");
        let open = parse_ws_open_frame(&frame).unwrap();
        assert_eq!(open.heartbeat(), Duration::from_millis(1500));
        // Truncated, masked, binary: not read.
        assert_eq!(parse_ws_open_frame(&frame[..10]), None);
        let mut masked = frame.clone();
        masked[1] |= 0x80;
        assert_eq!(parse_ws_open_frame(&masked), None);
        let mut binary = frame.clone();
        binary[0] = 0x82;
        assert_eq!(parse_ws_open_frame(&binary), None);
    }
}
