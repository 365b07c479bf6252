//! The access log: one line per HTTP request and one per closed WebSocket tunnel, for
//! operators used to nginx's `access_log` and HAProxy's `option httplog`.
//!
//! The request path never waits for it: a record goes into a bounded queue with
//! `try_send`, and when the writer has fallen that far behind the record is dropped and
//! counted (`tether_access_log_dropped_total`). Records are formatted and written by one
//! task, which flushes whenever the queue runs empty, so lines reach the file within
//! moments under light load and in large writes under heavy load. A file is reopened
//! on [`AccessLog::reopen`] (SIGUSR1), after logrotate moved it away.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, Notify};

use crate::config::{AccessFormat, AccessLogConfig};
use crate::telemetry;

/// One line of the log.
#[derive(Debug, Clone)]
pub enum Record {
    Request(RequestRecord),
    Tunnel(TunnelRecord),
}

/// An HTTP request and its answer (a WebSocket upgrade's is its `101`).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// When the response head went.
    pub at: Instant,
    pub client: IpAddr,
    pub method: http::Method,
    /// The request target: its path is logged, without the query (which carries the
    /// sid, logged on its own).
    pub uri: http::Uri,
    pub status: u16,
    pub backend: Option<Arc<str>>,
    pub server: Option<Arc<str>>,
    pub sid: Option<String>,
    pub transport: Option<&'static str>,
    /// To the response head.
    pub duration: Duration,
    /// From `Content-Length`, when the message had one.
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
}

/// A WebSocket tunnel that closed.
#[derive(Debug, Clone)]
pub struct TunnelRecord {
    /// When it closed.
    pub at: Instant,
    pub client: IpAddr,
    pub backend: Arc<str>,
    pub server: Arc<str>,
    pub sid: Option<Arc<str>>,
    /// How it ended (a `tether_sessions_ended_total` cause).
    pub cause: &'static str,
    pub duration: Duration,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
}

impl Record {
    fn at(&self) -> Instant {
        match self {
            Record::Request(r) => r.at,
            Record::Tunnel(t) => t.at,
        }
    }
}

/// The sending side, held by the request path; the writer task ends when it is dropped
/// (after writing what is queued).
#[derive(Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<Record>,
    reopen: Arc<Notify>,
    config: AccessLogConfig,
}

impl AccessLog {
    /// Opens the log (a file is created if missing, appended to) and starts its writer.
    pub fn start(config: &AccessLogConfig) -> std::io::Result<AccessLog> {
        let sink = Sink::open(config.path.as_ref())?;
        let (tx, rx) = mpsc::channel(config.queue);
        let reopen = Arc::new(Notify::new());
        tokio::spawn(write(rx, sink, config.format, Arc::clone(&reopen)));
        Ok(AccessLog {
            tx,
            reopen,
            config: config.clone(),
        })
    }

    /// What it was started with (a reload starts a new one only when this changes).
    pub fn config(&self) -> &AccessLogConfig {
        &self.config
    }

    /// Queues `record`, or drops and counts it when the writer is behind.
    pub fn log(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            metrics::counter!(telemetry::ACCESS_LOG_DROPPED).increment(1);
        }
    }

    /// Reopens the file (it was rotated away); nothing for stderr.
    pub fn reopen(&self) {
        self.reopen.notify_one();
    }
}

enum Sink {
    Stderr,
    File(PathBuf, std::fs::File),
}

impl Sink {
    fn open(path: Option<&PathBuf>) -> std::io::Result<Sink> {
        Ok(match path {
            None => Sink::Stderr,
            Some(p) => Sink::File(
                p.clone(),
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stderr => std::io::stderr().lock().write_all(bytes),
            Sink::File(_, f) => f.write_all(bytes),
        }
    }
}

/// The writer: takes what is queued in batches, formats it into one buffer and writes
/// that whenever the queue is empty (or the buffer is large), so a burst becomes a few
/// large writes.
async fn write(
    mut rx: mpsc::Receiver<Record>,
    mut sink: Sink,
    format: AccessFormat,
    reopen: Arc<Notify>,
) {
    const FLUSH_AT: usize = 64 * 1024;
    const BATCH: usize = 256;
    let mut buf = Vec::with_capacity(FLUSH_AT);
    let mut batch = Vec::with_capacity(BATCH);
    let mut stamp = Stamp::default();
    // One wait for a reopen, kept across batches: made anew for each, it cost a lock and
    // an unlock per wake-up.
    let mut reopened = std::pin::pin!(reopen.notified());
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = &mut reopened => {
                reopened.set(reopen.notified());
                if let Sink::File(path, _) = &sink {
                    match Sink::open(Some(&path.clone())) {
                        Ok(s) => sink = s,
                        Err(e) => tracing::warn!(path = %path.display(), error = %e, "access log not reopened; writing on to the old file"),
                    }
                }
                continue;
            }
        };
        if n == 0 {
            break; // every sender is gone and the queue is empty
        }
        // Records carry the monotonic clock (the request path reads no other): one
        // reading of both clocks per batch puts them on the wall clock.
        let (wall, mono) = (SystemTime::now(), Instant::now());
        for record in batch.drain(..) {
            let at = wall
                .checked_sub(mono.saturating_duration_since(record.at()))
                .unwrap_or(wall);
            format_record(&mut buf, &record, stamp.of(at), format);
        }
        if buf.len() < FLUSH_AT && !rx.is_empty() {
            continue;
        }
        if let Err(e) = sink.write_all(&buf) {
            static LOG: tether_kit::throttle::Throttle =
                tether_kit::throttle::Throttle::new(Duration::from_secs(10));
            if let Some(suppressed) = LOG.allow() {
                tracing::warn!(error = %e, suppressed, "access log write failed");
            }
        }
        buf.clear();
    }
    let _ = sink.write_all(&buf);
}

/// The text of the last timestamp: the lines of one second differ only in their
/// milliseconds.
struct Stamp {
    secs: u64,
    text: [u8; 24],
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp {
            secs: u64::MAX,
            text: [0; 24],
        }
    }
}

impl Stamp {
    fn of(&mut self, at: SystemTime) -> &[u8; 24] {
        let d = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if d.as_secs() == self.secs {
            digits(&mut self.text[20..23], d.subsec_millis().into());
        } else {
            self.secs = d.as_secs();
            self.text = timestamp(at);
        }
        &self.text
    }
}

/// RFC 3339 in UTC with milliseconds (years past 9999 read 9999). Lines are formatted
/// byte by byte: through `write!` and `format!` a line cost about three times as much.
fn timestamp(at: SystemTime) -> [u8; 24] {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let fields = [
        (0..4, year.min(9999)),
        (5..7, month),
        (8..10, day),
        (11..13, rem / 3600),
        (14..16, rem % 3600 / 60),
        (17..19, rem % 60),
        (20..23, i64::from(d.subsec_millis())),
    ];
    for (at, n) in fields {
        digits(&mut b[at], n as u64);
    }
    b
}

/// `n` in decimal, right-aligned in `slot` with leading zeros (higher digits are lost).
fn digits(slot: &mut [u8], mut n: u64) {
    for d in slot.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `n` in decimal.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut b = [0u8; 20];
    let mut at = b.len();
    loop {
        at -= 1;
        b[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&b[at..]);
}

/// Milliseconds with three decimals (to the nearest microsecond).
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_nanos().saturating_add(500) / 1000).unwrap_or(u64::MAX);
    push_u64(out, micros / 1000);
    let mut b = *b".000";
    digits(&mut b[1..], micros % 1000);
    out.extend_from_slice(&b);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.extend_from_slice(tether_kit::IpText::new(ip).as_str().as_bytes());
}

/// One line; `at` is the record's time, from [`timestamp`].
fn format_record(out: &mut Vec<u8>, record: &Record, at: &[u8; 24], format: AccessFormat) {
    match format {
        AccessFormat::Plain => plain(out, record, at),
        AccessFormat::Json => json(out, record, at),
    }
    out.push(b'\n');
}

/// `TIME CLIENT "METHOD PATH" STATUS BACKEND SERVER SID TRANSPORT DURATION_MS IN OUT`, or
/// for a tunnel `TIME CLIENT "WEBSOCKET closed" CAUSE BACKEND SERVER SID websocket
/// DURATION_MS TO_SERVER TO_CLIENT`; `-` for what is not known. Paths are written with
/// control characters and quotes escaped, so a line is always one line.
fn plain(out: &mut Vec<u8>, record: &Record, at: &[u8; 24]) {
    fn field(out: &mut Vec<u8>, s: Option<&str>) {
        out.push(b' ');
        out.extend_from_slice(s.unwrap_or("-").as_bytes());
    }
    fn number(out: &mut Vec<u8>, n: Option<u64>) {
        out.push(b' ');
        match n {
            Some(n) => push_u64(out, n),
            None => out.push(b'-'),
        }
    }
    out.extend_from_slice(at);
    out.push(b' ');
    match record {
        Record::Request(r) => {
            push_ip(out, r.client);
            out.extend_from_slice(b" \"");
            out.extend_from_slice(r.method.as_str().as_bytes());
            out.push(b' ');
            escape_into(out, r.uri.path());
            out.push(b'"');
            number(out, Some(r.status.into()));
            field(out, r.backend.as_deref());
            field(out, r.server.as_deref());
            field(out, r.sid.as_deref());
            field(out, r.transport);
            out.push(b' ');
            push_ms(out, r.duration);
            number(out, r.bytes_in);
            number(out, r.bytes_out);
        }
        Record::Tunnel(t) => {
            push_ip(out, t.client);
            out.extend_from_slice(b" \"WEBSOCKET closed\"");
            field(out, Some(t.cause));
            field(out, Some(&t.backend));
            field(out, Some(&t.server));
            field(out, t.sid.as_deref());
            out.extend_from_slice(b" websocket ");
            push_ms(out, t.duration);
            number(out, Some(t.bytes_to_server));
            number(out, Some(t.bytes_to_client));
        }
    }
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    // Paths are printable ASCII nearly always: copied whole.
    if !s
        .bytes()
        .any(|b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\')
    {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

/// One JSON object: the plain line's fields by name, in the same order.
fn json(out: &mut Vec<u8>, record: &Record, at: &[u8; 24]) {
    fn key(out: &mut Vec<u8>, name: &str) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    }
    fn text(out: &mut Vec<u8>, name: &str, s: Option<&str>) {
        key(out, name);
        match s {
            Some(s) => json_str(out, s),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn number(out: &mut Vec<u8>, name: &str, n: Option<u64>) {
        key(out, name);
        match n {
            Some(n) => push_u64(out, n),
            None => out.extend_from_slice(b"null"),
        }
    }
    let (kind, client) = match record {
        Record::Request(r) => ("request", r.client),
        Record::Tunnel(t) => ("websocket_closed", t.client),
    };
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(at);
    out.extend_from_slice(b"\",\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"client\":\"");
    push_ip(out, client);
    out.push(b'"');
    match record {
        Record::Request(r) => {
            text(out, "method", Some(r.method.as_str()));
            text(out, "path", Some(r.uri.path()));
            number(out, "status", Some(r.status.into()));
            text(out, "backend", r.backend.as_deref());
            text(out, "server", r.server.as_deref());
            text(out, "sid", r.sid.as_deref());
            text(out, "transport", r.transport);
            key(out, "duration_ms");
            push_ms(out, r.duration);
            number(out, "bytes_in", r.bytes_in);
            number(out, "bytes_out", r.bytes_out);
        }
        Record::Tunnel(t) => {
            text(out, "cause", Some(t.cause));
            text(out, "backend", Some(&t.backend));
            text(out, "server", Some(&t.server));
            text(out, "sid", t.sid.as_deref());
            text(out, "transport", Some("websocket"));
            key(out, "duration_ms");
            push_ms(out, t.duration);
            number(out, "bytes_to_server", Some(t.bytes_to_server));
            number(out, "bytes_to_client", Some(t.bytes_to_client));
        }
    }
    out.push(b'}');
}

/// `s` as a JSON string: quotes, backslashes and control characters escaped.
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    let mut unicode = *b"\\u0000";
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                unicode[4] = HEX[usize::from(b >> 4)];
                unicode[5] = HEX[usize::from(b & 0xf)];
                &unicode
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(short);
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestRecord {
        RequestRecord {
            at: Instant::now(),
            client: "203.0.113.7".parse().unwrap(),
            method: http::Method::GET,
            uri: "/socket.io/?EIO=4&transport=polling&sid=abc"
                .parse()
                .unwrap(),
            status: 200,
            backend: Some("chat".into()),
            server: Some("node-1".into()),
            sid: Some("abc".into()),
            transport: Some("polling"),
            duration: Duration::from_micros(1500),
            bytes_in: None,
            bytes_out: Some(97),
        }
    }

    fn tunnel() -> TunnelRecord {
        TunnelRecord {
            at: Instant::now(),
            client: "2001:db8::7".parse().unwrap(),
            backend: "chat".into(),
            server: "node-2".into(),
            sid: None,
            cause: "client_closed",
            duration: Duration::from_nanos(61_000_000_499),
            bytes_to_server: 0,
            bytes_to_client: 1_234_567_890_123,
        }
    }

    /// The line for `record` at `ms` after the epoch.
    fn line(record: Record, ms: u64, format: AccessFormat) -> String {
        let mut out = Vec::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        format_record(&mut out, &record, &timestamp(at), format);
        String::from_utf8(out).unwrap()
    }
    const REQUEST_AT: u64 = 1_764_460_800_123;
    const TUNNEL_AT: u64 = 951_782_400_000;

    #[test]
    fn a_request_is_one_plain_line_with_dashes_for_what_is_unknown() {
        assert_eq!(
            line(Record::Request(request()), REQUEST_AT, AccessFormat::Plain),
            "2025-11-30T00:00:00.123Z 203.0.113.7 \"GET /socket.io/\" 200 chat node-1 abc polling 1.500 - 97\n"
        );
    }

    #[test]
    fn a_tunnel_is_one_plain_line() {
        assert_eq!(
            line(Record::Tunnel(tunnel()), TUNNEL_AT, AccessFormat::Plain),
            "2000-02-29T00:00:00.000Z 2001:db8::7 \"WEBSOCKET closed\" client_closed chat node-2 - websocket 61000.000 0 1234567890123\n"
        );
    }

    #[test]
    fn times_and_durations_are_written_digit_by_digit_as_format_would() {
        for (ms, nanos) in [
            (0, 0),
            (1_764_460_800_123, 499),
            (4_102_444_799_999, 1_000_600),
            (1_709_164_800_000, 999_999_999),
        ] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            // humantime's RFC 3339 text: an independent reference.
            assert_eq!(
                std::str::from_utf8(&timestamp(at)).unwrap(),
                humantime::format_rfc3339_millis(at).to_string()
            );
            let d = Duration::from_nanos(nanos);
            let mut ms_text = Vec::new();
            push_ms(&mut ms_text, d);
            assert_eq!(
                String::from_utf8(ms_text).unwrap(),
                format!("{:.3}", d.as_nanos() as f64 / 1e6),
                "{nanos} ns"
            );
        }
        for ip in [
            "10.99.255.0",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
        for n in [0, 7, 10, 99, 100, 65_535, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    #[test]
    fn a_timestamp_of_the_same_second_only_changes_its_milliseconds() {
        let mut stamp = Stamp::default();
        for ms in [
            1_764_460_799_998,
            1_764_460_799_999,
            1_764_460_800_000,
            1_764_460_800_001,
            5,
            1_764_460_800_999,
        ] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(stamp.of(at), &timestamp(at), "{ms}");
        }
    }

    #[test]
    fn a_hostile_path_cannot_break_the_line() {
        let mut out = Vec::new();
        escape_into(&mut out, "/a\"b\nc\\\u{7f}é");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "/a\\\"b\\u{a}c\\\\\\u{7f}é"
        );
        // What `http` lets through in a path is written as it is.
        let mut r = request();
        r.uri = "/a{b}|c^%22".parse().unwrap();
        let out = line(Record::Request(r), REQUEST_AT, AccessFormat::Plain);
        assert!(out.contains("\"GET /a{b}|c^%22\" 200"), "{out}");
    }

    #[test]
    fn json_lines_parse_and_name_every_field() {
        let out = line(Record::Request(request()), REQUEST_AT, AccessFormat::Json);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        let expected = serde_json::json!({
            "time": "2025-11-30T00:00:00.123Z", "type": "request", "client": "203.0.113.7",
            "method": "GET", "path": "/socket.io/", "status": 200, "backend": "chat",
            "server": "node-1", "sid": "abc", "transport": "polling", "duration_ms": 1.5,
            "bytes_in": null, "bytes_out": 97,
        });
        assert_eq!(v, expected);

        let out = line(Record::Tunnel(tunnel()), TUNNEL_AT, AccessFormat::Json);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        let expected = serde_json::json!({
            "time": "2000-02-29T00:00:00.000Z", "type": "websocket_closed",
            "client": "2001:db8::7", "backend": "chat", "server": "node-2", "sid": null,
            "transport": "websocket", "cause": "client_closed", "duration_ms": 61000.0,
            "bytes_to_server": 0, "bytes_to_client": 1_234_567_890_123u64,
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        let nasty = "q\"b\\s\n\r\t\u{1}\u{1f}\u{7f}é/";
        let mut out = Vec::new();
        json_str(&mut out, nasty);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, nasty);
        assert!(!out.iter().any(|&b| b < 0x20), "{out:?}");
    }
}
