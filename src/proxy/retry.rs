//! When a request may be sent again elsewhere.
//!
//! Only a request that starts a session may be retried, and only when its server could
//! not be reached: then no session exists anywhere and the request has no body, so
//! sending it to the next server in placement order is invisible to the client. A
//! request carrying a sid is never retried — its session lives on exactly one server.

use http::{header, HeaderMap, Method, Request, Uri, Version};
use hyper::body::Incoming;

use crate::body::{Guarded, ProxyBody, Rules};
use crate::upstream::UpstreamRequest;

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
/// first attempt and any retry are alike, and a body is held to `rules` on its way.
pub fn into_upstream(req: Request<Incoming>, replayable: bool, rules: Rules) -> UpstreamRequest {
    use http_body::Body as _;
    Box::new(if replayable {
        req.map(|_| ProxyBody::empty())
    } else {
        req.map(|body| {
            if body.is_end_stream() {
                ProxyBody::Stream(body)
            } else {
                ProxyBody::Guarded(Guarded::new(body, rules))
            }
        })
    })
}
