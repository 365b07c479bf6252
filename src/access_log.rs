//! The access log: one line per HTTP request and one per closed WebSocket tunnel, for
//! operators used to nginx's `access_log` and HAProxy's `option httplog`.
//!
//! The request path never waits for it: a record goes into a bounded queue with
//! `try_send`, and when the writer has fallen that far behind the record is dropped and
//! counted (`tether_access_log_dropped_total`). Records are formatted and written by one
//! task, which flushes whenever the queue runs empty, so lines reach the file within
//! moments under light load and in large writes under heavy load. A file is reopened
//! on [`AccessLog::reopen`] (SIGUSR1), after logrotate moved it away.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    pub at: SystemTime,
    pub client: IpAddr,
    pub method: http::Method,
    /// Without the query (which carries the sid, logged on its own).
    pub path: String,
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
    pub at: SystemTime,
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

/// The writer: formats into one buffer and writes it whenever the queue is empty (or the
/// buffer is large), so a burst becomes a few large writes.
async fn write(
    mut rx: mpsc::Receiver<Record>,
    mut sink: Sink,
    format: AccessFormat,
    reopen: Arc<Notify>,
) {
    const FLUSH_AT: usize = 64 * 1024;
    let mut buf = String::with_capacity(FLUSH_AT);
    loop {
        let record = tokio::select! {
            r = rx.recv() => r,
            _ = reopen.notified() => {
                if let Sink::File(path, _) = &sink {
                    match Sink::open(Some(&path.clone())) {
                        Ok(s) => sink = s,
                        Err(e) => tracing::warn!(path = %path.display(), error = %e, "access log not reopened; writing on to the old file"),
                    }
                }
                continue;
            }
        };
        let Some(record) = record else { break };
        format_record(&mut buf, &record, format);
        while buf.len() < FLUSH_AT {
            match rx.try_recv() {
                Ok(r) => format_record(&mut buf, &r, format),
                Err(_) => break,
            }
        }
        if let Err(e) = sink.write_all(buf.as_bytes()) {
            static LOG: tether_kit::throttle::Throttle =
                tether_kit::throttle::Throttle::new(Duration::from_secs(10));
            if let Some(suppressed) = LOG.allow() {
                tracing::warn!(error = %e, suppressed, "access log write failed");
            }
        }
        buf.clear();
    }
    let _ = sink.write_all(buf.as_bytes());
}

/// RFC 3339 in UTC with milliseconds, from the system clock.
fn timestamp(at: SystemTime, out: &mut String) {
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
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

fn format_record(out: &mut String, record: &Record, format: AccessFormat) {
    match format {
        AccessFormat::Plain => plain(out, record),
        AccessFormat::Json => json(out, record),
    }
    out.push('\n');
}

/// `TIME CLIENT "METHOD PATH" STATUS BACKEND SERVER SID TRANSPORT DURATION_MS IN OUT`, or
/// for a tunnel `TIME CLIENT "WEBSOCKET closed" CAUSE BACKEND SERVER SID websocket
/// DURATION_MS TO_SERVER TO_CLIENT`; `-` for what is not known. Paths are written with
/// control characters and quotes escaped, so a line is always one line.
fn plain(out: &mut String, record: &Record) {
    let dash = |o: Option<&str>| o.unwrap_or("-").to_owned();
    match record {
        Record::Request(r) => {
            timestamp(r.at, out);
            let _ = write!(out, " {} \"{} ", r.client, r.method);
            escape_into(out, &r.path);
            let _ = write!(
                out,
                "\" {} {} {} {} {} {:.3} {} {}",
                r.status,
                dash(r.backend.as_deref()),
                dash(r.server.as_deref()),
                dash(r.sid.as_deref()),
                r.transport.unwrap_or("-"),
                r.duration.as_secs_f64() * 1000.0,
                r.bytes_in.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                r.bytes_out
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            );
        }
        Record::Tunnel(t) => {
            timestamp(t.at, out);
            let _ = write!(
                out,
                " {} \"WEBSOCKET closed\" {} {} {} {} websocket {:.3} {} {}",
                t.client,
                t.cause,
                t.backend,
                t.server,
                dash(t.sid.as_deref()),
                t.duration.as_secs_f64() * 1000.0,
                t.bytes_to_server,
                t.bytes_to_client,
            );
        }
    }
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn json(out: &mut String, record: &Record) {
    let mut time = String::new();
    let value = match record {
        Record::Request(r) => {
            timestamp(r.at, &mut time);
            serde_json::json!({
                "time": time, "type": "request", "client": r.client.to_string(),
                "method": r.method.as_str(), "path": r.path, "status": r.status,
                "backend": r.backend.as_deref(), "server": r.server.as_deref(),
                "sid": r.sid, "transport": r.transport,
                "duration_ms": r.duration.as_secs_f64() * 1000.0,
                "bytes_in": r.bytes_in, "bytes_out": r.bytes_out,
            })
        }
        Record::Tunnel(t) => {
            timestamp(t.at, &mut time);
            serde_json::json!({
                "time": time, "type": "websocket_closed", "client": t.client.to_string(),
                "backend": &*t.backend, "server": &*t.server, "sid": t.sid.as_deref(),
                "transport": "websocket", "cause": t.cause,
                "duration_ms": t.duration.as_secs_f64() * 1000.0,
                "bytes_to_server": t.bytes_to_server, "bytes_to_client": t.bytes_to_client,
            })
        }
    };
    let _ = write!(out, "{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestRecord {
        RequestRecord {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_460_800_123),
            client: "203.0.113.7".parse().unwrap(),
            method: http::Method::GET,
            path: "/socket.io/".into(),
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

    #[test]
    fn a_request_is_one_plain_line_with_dashes_for_what_is_unknown() {
        let mut out = String::new();
        format_record(&mut out, &Record::Request(request()), AccessFormat::Plain);
        assert_eq!(
            out,
            "2025-11-30T00:00:00.123Z 203.0.113.7 \"GET /socket.io/\" 200 chat node-1 abc polling 1.500 - 97\n"
        );
    }

    #[test]
    fn a_hostile_path_cannot_break_the_line() {
        let mut r = request();
        r.path = "/a\"b\nc\\".into();
        let mut out = String::new();
        format_record(&mut out, &Record::Request(r), AccessFormat::Plain);
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        assert!(out.contains("\"GET /a\\\"b\\u{a}c\\\\\""), "{out}");
    }

    #[test]
    fn json_lines_parse_and_name_every_field() {
        let mut out = String::new();
        format_record(&mut out, &Record::Request(request()), AccessFormat::Json);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["sid"], "abc");
        assert_eq!(v["time"], "2025-11-30T00:00:00.123Z");
        assert!(v["bytes_in"].is_null());
    }
}
