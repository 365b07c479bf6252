//! The one body type the proxy hands to hyper, both ways: no boxing per response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// What a body can fail with: hyper's errors, and [`BodyLimit`]s.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum ProxyBody {
    /// A body made here (errors, small answers).
    Full(Option<Bytes>),
    /// The server's body, streamed as it comes.
    Stream(Incoming),
    /// A server body whose first bytes were read to learn the sid; they go out first.
    Prefixed(Option<Bytes>, Incoming),
    /// A body streamed as it comes within [`Rules`]: a client's request body, a server's
    /// response body. Boxed: a body that needs no timer does not carry one.
    Guarded(Pin<Box<Guarded>>),
}

/// How a body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// The longest silence between two pieces.
    pub gap: Duration,
    /// All of it within this long, if set.
    pub total: Option<Duration>,
    /// At most this many bytes, if set.
    pub max_bytes: Option<u64>,
}

/// Why a body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyLimit {
    #[error("the body stalled")]
    Stalled,
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
}

pin_project_lite::pin_project! {
    /// A body held to its [`Rules`]: a peer that trickles a body (or never finishes one)
    /// would otherwise hold a client's connection and a server's for as long as it likes.
    #[derive(Debug)]
    pub struct Guarded {
        inner: Incoming,
        #[pin]
        timer: Sleep,
        rules: Rules,
        deadline: Option<Instant>,
        seen: u64,
    }
}

impl Guarded {
    pub fn new(inner: Incoming, rules: Rules) -> Pin<Box<Guarded>> {
        let now = Instant::now();
        let deadline = rules.total.map(|t| now + t);
        let first = deadline.map_or(now + rules.gap, |d| d.min(now + rules.gap));
        Box::pin(Guarded {
            inner,
            timer: tokio::time::sleep_until(first),
            rules,
            deadline,
            seen: 0,
        })
    }

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        match Pin::new(&mut *this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if let Some(max) = this.rules.max_bytes.filter(|m| *this.seen > *m) {
                        return Poll::Ready(Some(Err(BodyLimit::TooLarge(max).into())));
                    }
                }
                let next = Instant::now() + this.rules.gap;
                let next = this.deadline.map_or(next, |d| d.min(next));
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyLimit::Stalled.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl ProxyBody {
    pub fn text(s: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(s.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let incoming = |inner: &mut Incoming, cx: &mut Context<'_>| {
            Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into)))
        };
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Stream(inner) => incoming(inner, cx),
            ProxyBody::Prefixed(prefix, rest) => match prefix.take() {
                Some(d) if !d.is_empty() => Poll::Ready(Some(Ok(Frame::data(d)))),
                _ => incoming(rest, cx),
            },
            ProxyBody::Guarded(guarded) => guarded.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Stream(inner) => inner.is_end_stream(),
            ProxyBody::Prefixed(prefix, rest) => prefix.is_none() && rest.is_end_stream(),
            ProxyBody::Guarded(g) => g.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Stream(inner) => inner.size_hint(),
            ProxyBody::Prefixed(prefix, rest) => {
                let extra = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            ProxyBody::Guarded(g) => g.inner.size_hint(),
        }
    }
}
