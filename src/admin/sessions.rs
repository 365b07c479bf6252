//! The session registry: which server holds a session, since when, on which transport,
//! for which client. Answered from the sid table, so it knows every session tether has
//! seen a handshake for and nothing else.

use std::time::SystemTime;

use http::StatusCode;
use serde_json::{json, Value};

use crate::affinity::SessionInfo;
use crate::engineio::valid_sid;
use crate::runtime::history::unix_ms;
use crate::runtime::Runtime;

/// `GET /sessions` lists this many unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// And never more than this: the table is scanned under its shard locks.
const MAX_LIMIT: usize = 10_000;

fn session_json(s: &SessionInfo, now: SystemTime) -> Value {
    json!({
        "sid": &*s.sid,
        "backend": &*s.backend,
        "server": &*s.server,
        "transport": s.transport.as_str(),
        "client": s.client.to_string(),
        "started_unix_ms": unix_ms(s.started),
        "age_seconds": now.duration_since(s.started).map_or(0.0, |d| d.as_secs_f64()),
        "live": s.live,
    })
}

/// `GET /sessions/{sid}`: the session, or 404 with why not.
pub fn one(rt: &Runtime, sid: &str) -> (StatusCode, Value) {
    if !valid_sid(sid) {
        return (
            StatusCode::NOT_FOUND,
            json!({ "error": "not a session id: a sid is 1 to 64 characters of A-Z a-z 0-9 - _ . ~" }),
        );
    }
    match rt.store.sids.info(sid) {
        Some(s) => (StatusCode::OK, session_json(&s, SystemTime::now())),
        None => (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no session {sid}: tether never saw its handshake, or it ended") }),
        ),
    }
}

/// `GET /sessions?backend=B&server=S&limit=N`: live sessions, of one server or backend
/// when asked. `truncated` says there are more than `limit`.
pub fn list(rt: &Runtime, query: Option<&str>) -> (StatusCode, Value) {
    let (mut backend, mut server, mut limit) = (None, None, DEFAULT_LIMIT);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "backend" => backend = Some(value.into_owned()),
            "server" => server = Some(value.into_owned()),
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({ "error": format!("limit must be a number from 1 to {MAX_LIMIT}, not {value:?}") }),
                    )
                }
            },
            other => {
                return (
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("unknown parameter {other:?}: use backend, server and limit") }),
                )
            }
        }
    }
    let mut found = rt
        .store
        .sids
        .list(backend.as_deref(), server.as_deref(), limit + 1);
    let truncated = found.len() > limit;
    found.truncate(limit);
    let now = SystemTime::now();
    (
        StatusCode::OK,
        json!({
            "sessions": found.iter().map(|s| session_json(s, now)).collect::<Vec<_>>(),
            "count": found.len(),
            "truncated": truncated,
        }),
    )
}
