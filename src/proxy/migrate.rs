//! Moving a polling session (a migration asked it to): what each side must be told so
//! the node keeps the session for connection-state recovery and the client reconnects.
//!
//! - The node is sent, for the session's sid, an Engine.IO close packet (`1`) in a
//!   polling POST, as a client closing its session would send it: engine.io closes the
//!   transport ("transport close"), which socket.io keeps for recovery, and answers the
//!   pending long-poll with a noop. (Dropping tether's connection is not enough: a node
//!   that already wrote a poll response believes it delivered.)
//! - The client's long-poll is answered with a close packet of its own: engine.io-client
//!   closes its transport ("transport close") and socket.io-client reconnects, carrying
//!   its session id and offset, to another server.
//!
//! A WebSocket session is moved by its tunnel (`TunnelStop`): the node's side closed
//! first, then the client's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::backends::ServerStats;
use crate::body::ProxyBody;
use crate::upstream::UpstreamRequest;
use crate::wakers::Waiting;

/// Headers of the client's request that the close request carries too: a node that
/// checks cookies or credentials on every request (`allowRequest`) must accept it.
const CARRIED: [header::HeaderName; 4] = [
    header::HOST,
    header::COOKIE,
    header::AUTHORIZATION,
    header::USER_AGENT,
];

/// The node's copy of the client's poll `req` (its path, query and sid as sent on), as
/// the close packet a closing client would POST.
pub(super) fn close_request(req: &Request<impl Sized>) -> UpstreamRequest {
    let mut close = Request::new(ProxyBody::text(Bytes::from_static(b"1")));
    *close.method_mut() = Method::POST;
    *close.uri_mut() = req.uri().clone();
    let h = close.headers_mut();
    for name in CARRIED {
        if let Some(v) = req.headers().get(&name) {
            h.insert(name, v.clone());
        }
    }
    for (name, value) in req.headers() {
        if name.as_str().starts_with("x-forwarded-") || name == header::FORWARDED {
            h.append(name.clone(), value.clone());
        }
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain;charset=UTF-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
    Box::new(close)
}

/// The client's answer: its long-poll gets a close packet (Engine.IO 3 frames it).
pub(super) fn close_answer(eio_version: u8) -> Response<ProxyBody> {
    let body: &'static [u8] = if eio_version == 3 { b"1:1" } else { b"1" };
    let mut r = Response::new(ProxyBody::text(Bytes::from_static(body)));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Completes when a migration asks session `sid` of `stats`'s server to move: a poll in
/// flight then stops waiting for its node.
pub(super) struct Asked {
    stats: Arc<ServerStats>,
    sid: Arc<str>,
    waiting: Waiting,
}

impl Asked {
    pub(super) fn new(stats: Arc<ServerStats>, sid: Arc<str>) -> Asked {
        Asked {
            stats,
            sid,
            waiting: Waiting::default(),
        }
    }
}

impl Future for Asked {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.waiting
            .register(this.stats.condition.pinned_waiters(), cx.waker());
        match this.stats.migration.is_asked(&this.sid) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Drop for Asked {
    fn drop(&mut self) {
        self.waiting
            .deregister(self.stats.condition.pinned_waiters());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_close_request_is_the_poll_s_own_path_with_a_close_packet() {
        let req = Request::get("/socket.io/?EIO=4&transport=polling&sid=abc")
            .header("host", "chat.example")
            .header("cookie", "io=abc")
            .header("x-forwarded-for", "10.0.0.1")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let close = close_request(&req);
        assert_eq!(close.method(), Method::POST);
        assert_eq!(close.uri(), "/socket.io/?EIO=4&transport=polling&sid=abc");
        assert_eq!(close.headers()["cookie"], "io=abc");
        assert_eq!(close.headers()["x-forwarded-for"], "10.0.0.1");
        assert_eq!(close.headers()["content-type"], "text/plain;charset=UTF-8");
        assert!(close.headers().get("accept").is_none());
        assert_eq!(close_answer(4).status(), StatusCode::OK);
    }
}
