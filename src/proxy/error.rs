//! Answers tether gives itself, and the typed errors that produce them.
//!
//! Each error knows whose fault it is (client, upstream, tether) so it maps to one
//! status code and one log level, and no network input ever turns into a panic.

use http::{header, HeaderValue, Response, StatusCode};

use super::{target, websocket};
use crate::admission::Refused;
use std::sync::Arc;

use crate::affinity::{Lost, Miss};
use crate::backends::NoRoom;
use crate::body::{BodyLimit, ProxyBody};
use crate::engineio::{self, EioError};
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("refused by a deny rule")]
    Forbidden,
    #[error("{why}")]
    Limited {
        why: Refused,
        retry_after: std::time::Duration,
    },
    /// Engine.IO's `Session ID unknown`, and why.
    #[error("Session ID unknown: {0}")]
    SessionUnknown(Lost),
    #[error("backend {backend}: no server can take a new session: {why}")]
    NoServer { backend: Arc<str>, why: NoRoom },
    /// A new session over the backend's `handshakes` cap (a reconnect storm): 503 with a
    /// jittered `Retry-After`, which Socket.IO clients answer by retrying after their
    /// own back-off.
    #[error("backend {backend}: new sessions over the handshakes cap; deferred")]
    Deferred {
        backend: Arc<str>,
        retry_after: std::time::Duration,
    },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("bad Engine.IO request: {0}")]
    EngineIo(EioError),
    #[error("bad WebSocket handshake: {0}")]
    WebSocket(websocket::Refusal),
    #[error("bad request target: {0}")]
    Target(target::BadTarget),
    #[error("an Engine.IO message larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// The request carries this tether's own `Via` mark: it went round a loop.
    #[error("loop detected: the request came back to this tether through backend {0} (is one of its servers tether itself, or a proxy in front of it?)")]
    Loop(Arc<str>),
}

impl From<Miss> for ProxyError {
    fn from(m: Miss) -> ProxyError {
        match m {
            Miss::SessionUnknown(lost) => ProxyError::SessionUnknown(lost),
            Miss::NoServer { backend, why } => ProxyError::NoServer { backend, why },
        }
    }
}

/// Whether a request body error is the body outgrowing its limit.
fn too_large(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if matches!(s.downcast_ref::<BodyLimit>(), Some(BodyLimit::TooLarge(_))) {
            return true;
        }
        source = s.source();
    }
    false
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Forbidden
            | ProxyError::Limited {
                why: Refused::Denied,
                ..
            } => StatusCode::FORBIDDEN,
            ProxyError::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::SessionUnknown(_)
            | ProxyError::BadRequest(_)
            | ProxyError::EngineIo(_)
            | ProxyError::WebSocket(_)
            | ProxyError::Target(_) => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Upstream(UpstreamError::RequestBody { cause }) if too_large(cause) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ProxyError::NoServer { .. } | ProxyError::Deferred { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Loop(_) => StatusCode::LOOP_DETECTED,
            ProxyError::Upstream(
                UpstreamError::Connect { .. }
                | UpstreamError::Exchange { .. }
                | UpstreamError::NotWebSocket { .. },
            ) => StatusCode::BAD_GATEWAY,
            ProxyError::Upstream(
                UpstreamError::ConnectTimeout { .. } | UpstreamError::ResponseTimeout { .. },
            ) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(UpstreamError::RequestBody { .. }) => StatusCode::BAD_REQUEST,
        }
    }

    /// How many [`ProxyError::cause`]s there are.
    pub const CAUSES: usize = 18;

    /// Which kind of failure it is, as an index below [`ProxyError::CAUSES`]: logs are
    /// throttled per cause.
    pub fn cause(&self) -> usize {
        match self {
            ProxyError::NoRoute => 0,
            ProxyError::SessionUnknown(_) => 1,
            ProxyError::NoServer { .. } => 2,
            ProxyError::BadRequest(_) => 3,
            ProxyError::EngineIo(_) => 9,
            ProxyError::WebSocket(_) => 10,
            ProxyError::Target(_) => 12,
            ProxyError::PayloadTooLarge(_) => 13,
            ProxyError::Forbidden => 14,
            ProxyError::Limited { .. } => 15,
            ProxyError::Loop(_) => 16,
            ProxyError::Deferred { .. } => 17,
            ProxyError::Upstream(u) => match u {
                UpstreamError::Connect { .. } => 4,
                UpstreamError::ConnectTimeout { .. } => 5,
                UpstreamError::ResponseTimeout { .. } => 6,
                UpstreamError::Exchange { .. } => 7,
                UpstreamError::RequestBody { .. } => 8,
                UpstreamError::NotWebSocket { .. } => 11,
            },
        }
    }

    /// Whether the client caused it (logged at debug) or something behind tether did
    /// (logged at warn).
    pub fn is_client_side(&self) -> bool {
        matches!(
            self,
            ProxyError::NoRoute
                | ProxyError::Forbidden
                | ProxyError::Limited { .. }
                | ProxyError::Deferred { .. }
                | ProxyError::SessionUnknown(_)
                | ProxyError::BadRequest(_)
                | ProxyError::EngineIo(_)
                | ProxyError::WebSocket(_)
                | ProxyError::Target(_)
                | ProxyError::PayloadTooLarge(_)
                | ProxyError::Upstream(UpstreamError::RequestBody { .. })
        )
    }

    /// The response the client gets. Engine.IO clients get Engine.IO's own JSON body
    /// for a lost session, because that is what makes them re-handshake at once.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        // Whole seconds, rounded up: when the client may try again.
        let retry_after = match &self {
            ProxyError::Limited { retry_after, .. } if status == StatusCode::TOO_MANY_REQUESTS => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            ProxyError::Deferred { retry_after, .. } => Some(deferred_retry_after(*retry_after)),
            _ => None,
        };
        // RFC 6455 §4.4: a refused version is answered with the one spoken.
        let refused_version = matches!(self, ProxyError::WebSocket(websocket::Refusal::Version));
        let (content_type, body) = match self {
            ProxyError::SessionUnknown(_) => (
                "application/json",
                engineio::SESSION_UNKNOWN_BODY.to_owned(),
            ),
            // The log says which backend and why; the client learns only what it can
            // act on (and nothing of the servers behind tether).
            ProxyError::NoServer { .. } => (
                "text/plain; charset=utf-8",
                "no server can take a new session\n".to_owned(),
            ),
            ProxyError::Deferred { .. } => (
                "text/plain; charset=utf-8",
                "too many new sessions at once; try again shortly\n".to_owned(),
            ),
            ProxyError::Loop(_) => (
                "text/plain; charset=utf-8",
                "loop detected: this request already passed through this proxy\n".to_owned(),
            ),
            ProxyError::Upstream(u) if !matches!(u, UpstreamError::RequestBody { .. }) => (
                "text/plain; charset=utf-8",
                format!("{}\n", u.client_text()),
            ),
            ProxyError::BadRequest(_) => {
                ("application/json", engineio::BAD_REQUEST_BODY.to_owned())
            }
            ProxyError::EngineIo(e) => ("application/json", e.body().to_owned()),
            other => ("text/plain; charset=utf-8", format!("{other}\n")),
        };
        let mut resp = Response::new(ProxyBody::text(body));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(wait) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        }
        if refused_version {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(websocket::VERSION),
            );
        }
        resp
    }
}

/// The `Retry-After` of a deferred new session, in whole seconds: the wait for the next
/// token (at least 1 s) plus 0 to 2 s at random, so clients deferred in the same instant
/// do not all come back in the same second. Socket.IO clients go by their own back-off
/// (also randomised); this is for those that read the header.
fn deferred_retry_after(wait: std::time::Duration) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let base = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).clamp(1, 3600);
    // A fresh std RandomState differs on each call: a random number with no RNG to own.
    let jitter = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 3;
    base + jitter
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn a_deferred_session_is_told_to_come_back_in_one_to_three_seconds() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let resp = ProxyError::Deferred {
                backend: "b".into(),
                retry_after: std::time::Duration::from_millis(5),
            }
            .into_response();
            assert_eq!(resp.status(), 503);
            let secs: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            seen.insert(secs);
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [1, 2, 3],
            "spread, never 0"
        );
        let later = deferred_retry_after(std::time::Duration::from_millis(4500));
        assert!((5..=7).contains(&later), "{later}");
    }

    #[tokio::test]
    async fn lost_session_gets_engine_io_own_error() {
        let resp = ProxyError::SessionUnknown(Lost::Unknown).into_response();
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"code":1,"message":"Session ID unknown"}"#);
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let resp = ProxyError::NoServer {
            backend: "b".into(),
            why: NoRoom::BackendFull(1),
        }
        .into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
    }
}
