//! What a server's answer teaches, on a sticky backend:
//!
//! - a handshake's open packet names the new session's sid: `sid → server` is recorded;
//! - a session found only through its cookie (tether restarted, or another instance
//!   learned it) and accepted by the server is recorded again, so its later requests
//!   need no cookie;
//! - a session placed by this request gets a cookie naming its server.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::response::Parts;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Affinity, SidTable, Target};
use crate::body::ProxyBody;
use crate::engineio::{self, EioQuery, Transport};

/// The most of a handshake response read before giving up on finding the open packet
/// (it is the first packet and a few hundred bytes; the rest streams through untouched).
const OPEN_PACKET_SCAN: usize = 64 * 1024;

impl Affinity {
    /// Learns from a response to a request sent to `target` (its head in `parts`, which
    /// may gain a `Set-Cookie`) and returns the body to send on. Only a handshake's body
    /// is read here, and only as far as its open packet; the bytes read go out first.
    pub async fn learn(
        &self,
        sids: &SidTable,
        target: &Target<'_>,
        (eio, client): (Option<EioQuery<'_>>, IpAddr),
        parts: &mut Parts,
        body: Incoming,
    ) -> Result<ProxyBody, hyper::Error> {
        if !self.sticky {
            return Ok(ProxyBody::Stream(body));
        }
        let accepted = parts.status == StatusCode::OK;
        let stats = &target.server.stats;
        if let Some(sid) = eio.and_then(|q| q.sid) {
            if target.pin.is_none() && accepted && self.learns {
                let ttl = engineio::DEFAULT_HEARTBEAT + self.idle_margin;
                if sids.insert(sid, Arc::clone(stats), ttl, client).is_ok() {
                    tracing::debug!(%sid, backend = %stats.backend, server = %stats.id, "sid re-learned from the cookie");
                }
            }
        }
        // A session placed by this request gets a cookie, and one whose cookie grows old
        // a fresh one; requests of a pinned session from a client that keeps no cookies
        // would otherwise be told again and again.
        if (!target.cookie_current && target.pin.is_none()) || target.cookie_refresh {
            if let Some(signer) = &self.cookie {
                if let Ok(v) = HeaderValue::from_str(&signer.set_cookie(&target.server.id)) {
                    parts.headers.append(header::SET_COOKIE, v);
                }
            }
        }
        let handshake = eio.is_some_and(|q| q.sid.is_none() && q.transport == Transport::Polling);
        if handshake && accepted && self.learns {
            self.learn_sid(sids, target, client, body).await
        } else {
            Ok(ProxyBody::Stream(body))
        }
    }

    /// Reads the start of a handshake response for the open packet and records
    /// `sid → server`.
    async fn learn_sid(
        &self,
        sids: &SidTable,
        target: &Target<'_>,
        client: IpAddr,
        mut body: Incoming,
    ) -> Result<ProxyBody, hyper::Error> {
        let mut buf = BytesMut::new();
        while buf.len() < OPEN_PACKET_SCAN && engineio::parse_open_packet(&buf).is_none() {
            match body.frame().await {
                None => break,
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
        let prefix: Bytes = buf.freeze();
        let server = target.server;
        match engineio::parse_open_packet(&prefix) {
            Some(open) => {
                let ttl = open.heartbeat() + self.idle_margin;
                match sids.insert_handshake(open.sid, Arc::clone(&server.stats), ttl, client) {
                    Ok(ack) => {
                        tracing::debug!(sid = %open.sid, backend = %server.stats.backend, server = %server.id, "sid learned");
                        // With a registry, the answer waits for the write (bounded): the
                        // client's next request, which may reach another instance, cannot
                        // be sent before the client has this answer.
                        if let (Some(ack), Some(fleet)) = (ack, sids.fleet()) {
                            if tokio::time::timeout(fleet.write_timeout(), ack)
                                .await
                                .is_err()
                            {
                                tracing::debug!(sid = %open.sid, "registry write not confirmed in time; answering anyway");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "session not recorded; it relies on cookie or hash")
                    }
                }
            }
            None => tracing::debug!(server = %server.id, "handshake response without open packet"),
        }
        Ok(ProxyBody::Prefixed(Some(prefix), body))
    }
}
