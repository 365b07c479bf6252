//! Failures on the way to a server: what they say about the server (passive health),
//! and when a request may be sent again elsewhere.
//!
//! Only a request that starts a session may be retried, and only when its server could
//! not be reached: then no session exists anywhere and the request has no body, so
//! sending it to the next server in placement order is invisible to the client. A
//! request carrying a sid is never retried — its session lives on exactly one server.

use http::{header, HeaderMap, Method, Request, Uri, Version};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::respond::ProxyError;
use super::UpstreamRequest;
use crate::backends::Health;
use crate::snapshot::{Backend, Server};

/// What is needed to send a bodiless request again.
pub struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// `Some` when `req` has no body (GET/HEAD/OPTIONS without content), so it can be
    /// sent again as is.
    pub fn of(req: &Request<Incoming>) -> Option<Replay> {
        let bodiless_method = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let h = req.headers();
        let no_content = !h.contains_key(header::TRANSFER_ENCODING)
            && h.get(header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0");
        (bodiless_method && no_content).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    pub fn request(&self) -> Request<ProxyBody> {
        let mut r = Request::new(ProxyBody::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// The request as sent upstream; a replayable one drops its (empty) body stream so the
/// first attempt and any retry are alike.
pub fn into_upstream(req: Request<Incoming>, replayable: bool) -> UpstreamRequest {
    Box::new(if replayable {
        req.map(|_| ProxyBody::empty())
    } else {
        req.map(ProxyBody::Stream)
    })
}

/// Counts a failure to reach `server` towards marking it down (passive health).
pub fn note_failure(backend: &Backend, server: &Server, e: &ProxyError) {
    if !e.is_connect() && !matches!(e, ProxyError::Upstream { .. }) {
        return; // a slow answer (long poll) says nothing about health
    }
    let condition = &server.stats.condition;
    if condition.record_failure(backend.health.as_ref().map(|h| h.fall)) {
        tracing::warn!(backend = %backend.name, server = %server.id, error = %e, "server marked down by live traffic");
        metrics::counter!(
            crate::telemetry::HEALTH_FLIPS,
            "backend" => backend.name.to_string(),
            "server" => server.id.to_string(),
            "to" => Health::Down.as_str(),
        )
        .increment(1);
    }
}

/// The answer for a request whose session's server is gone.
pub fn session_lost(backend: &Backend) -> ProxyError {
    metrics::counter!(crate::telemetry::SESSIONS_LOST, "backend" => backend.name.to_string())
        .increment(1);
    ProxyError::SessionUnknown
}
