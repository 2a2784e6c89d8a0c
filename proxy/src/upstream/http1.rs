//! HTTP/1.1 to an endpoint: a small pool of connections, each driven by the task of the
//! request using it.
//!
//! The caller's connection task writes the request, reads the response and streams its body,
//! with no connection task of its own and no channel hop in between: one task wake-up per
//! request instead of three, and a request's two sockets stay on one core. A connection goes
//! back to the pool once its response body has been read to the end; a body abandoned half-way
//! closes it.

use std::{
    future::Future,
    pin::{pin, Pin},
    sync::{Arc, Mutex},
    task::{ready, Context, Poll, Waker},
    time::{Duration, Instant},
};

use super::{dial::Alpn, dial::UpstreamIo, SendError, Shared};
use crate::{errors::ProxyError, routing::Endpoint};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::{
    body::Incoming,
    client::conn::{http1, TrySendError},
};
use hyper_util::rt::TokioIo;

/// A pooled connection re-used this many times in a row without getting a request through
/// (each closed by the server just before) makes the next attempt use a new connection.
const MAX_STALE_RETRIES: usize = 3;

/// Sends `req` to `addr` over an idle connection from `pool` (or a new one) and waits for
/// response headers. The body of the response drives the connection and returns it to the
/// pool when it has been read to the end.
pub(super) async fn send(
    shared: &Arc<Shared>,
    endpoint: &Arc<Endpoint>,
    req: Request<Incoming>,
) -> Result<Response<UpstreamBody>, SendError> {
    let (pool, addr) = (&endpoint.pool, endpoint.addr);
    let mut req: Request<ReqBody> = req.map(Either::Left);
    let mut stale = 0;
    let mut replayed = false;
    loop {
        let pooled = if stale < MAX_STALE_RETRIES {
            pool.http1.checkout(shared.cfg.idle_timeout)
        } else {
            None
        };
        let reused = pooled.is_some();
        let (mut conn, idle) = match pooled {
            Some(c) => c,
            // Boxed: connecting is the cold path, and its future would otherwise enlarge
            // every request's future, which HTTP/2 callers' streams copy into a task each.
            None => match Box::pin(connect(shared, endpoint)).await {
                Ok(c) => (c, Duration::ZERO),
                // Nothing was sent: the request may go to another endpoint.
                Err(error) => {
                    return Err(SendError {
                        error,
                        unsent: incoming(req),
                    })
                }
            },
        };
        // A connection idle for a while may be closed by the server just as the request is
        // written to it; an idempotent request without a body is then sent once more, so
        // its head is kept, for those requests only (a busy pool pays nothing).
        let replay = (!replayed && reused && idle >= REPLAY_AFTER_IDLE && replayable(&req))
            .then(|| head(&req));
        let sent = conn.tx.try_send_request(req);
        match drive(&mut conn, sent).await {
            Ok(resp) => {
                let lease = Lease {
                    conn,
                    pool: pool.clone(),
                    shared: shared.clone(),
                };
                return Ok(resp.map(|b| UpstreamBody::pooled(b, lease)));
            }
            Err(mut e) => match (e.take_message(), replay) {
                // The server closed an idle connection as we picked it: the request never
                // left, so it is safe to send on another.
                (Some(back), _) if reused => {
                    tracing::debug!(%addr, error = %e.error(), "pooled connection was closed; retrying");
                    req = back;
                    stale += 1;
                }
                // It left, and the connection closed before an answer: an idempotent request
                // goes once more, on another connection.
                (None, Some(parts)) => {
                    tracing::debug!(%addr, error = %e.error(), "idle connection closed under an idempotent request; sending it once more");
                    req = Request::from_parts(parts, Either::Right(Empty::new()));
                    replayed = true;
                    stale += 1;
                }
                (unsent, _) => {
                    tracing::debug!(%addr, error = %e.error(), "upstream request failed");
                    return Err(SendError {
                        error: ProxyError::Upstream,
                        unsent: unsent.and_then(incoming),
                    });
                }
            },
        }
    }
}

/// What an upstream HTTP/1.1 request carries: the caller's body, or nothing (a replay).
type ReqBody = Either<Incoming, Empty<Bytes>>;

/// How long a pooled connection must have been idle before a request on it keeps its head
/// for a replay: a server's keep-alive timeout closes idle connections, not busy ones.
const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The caller's request again, for another endpoint (a replay has no caller body to give).
fn incoming(req: Request<ReqBody>) -> Option<Request<Incoming>> {
    let (parts, body) = req.into_parts();
    match body {
        Either::Left(body) => Some(Request::from_parts(parts, body)),
        Either::Right(_) => None,
    }
}

/// Idempotent (RFC 9110 §9.2.2) and without a body.
fn replayable(req: &Request<ReqBody>) -> bool {
    use http::Method;
    let m = req.method();
    (m == Method::GET
        || m == Method::HEAD
        || m == Method::OPTIONS
        || m == Method::DELETE
        || m == Method::PUT)
        && req.body().is_end_stream()
}

fn head(req: &Request<ReqBody>) -> http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy.into_parts().0
}

/// An HTTP/1.1 request asking to switch protocols gets a connection of its own, driven by its
/// own task so it can hand over its socket once the upstream agrees.
pub(super) async fn send_upgrade(
    shared: &Shared,
    endpoint: &Endpoint,
    req: Request<Incoming>,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let addr = endpoint.addr;
    let stream = shared
        .dialer
        .connect_endpoint(endpoint, addr, Alpn::None)
        .await?;
    let (mut tx, io) = shared
        .http1
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ProxyError::Upstream)?;
    tokio::spawn(async move {
        if let Err(e) = io.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upgraded upstream connection failed");
        }
    });
    let resp = tx.send_request(req).await.map_err(|e| {
        tracing::debug!(%addr, error = %e, "upstream upgrade request failed");
        ProxyError::Upstream
    })?;
    Ok(resp.map(UpstreamBody::unpooled))
}

/// Boxed: hyper's connection state is large, and a connection moves between the pool, a
/// request future and a response body several times per request.
async fn connect(shared: &Shared, endpoint: &Endpoint) -> Result<Box<Conn>, ProxyError> {
    let stream = shared
        .dialer
        .connect_endpoint(endpoint, endpoint.addr, Alpn::None)
        .await?;
    let (tx, io) = shared
        .http1
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ProxyError::Upstream)?;
    Ok(Box::new(Conn {
        tx,
        io,
        ended: false,
    }))
}

type Http1Io = http1::Connection<TokioIo<UpstreamIo>, ReqBody>;
type SendResult = Result<Response<Incoming>, TrySendError<Request<ReqBody>>>;

/// One HTTP/1.1 connection to an endpoint: the request side and the state machine that
/// moves bytes, which whoever holds the connection polls.
pub(super) struct Conn {
    tx: http1::SendRequest<ReqBody>,
    io: Http1Io,
    /// Set once `io` has finished (closed or failed); it is never polled again.
    ended: bool,
}

impl Conn {
    /// Moves bytes; ready once the connection has ended.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ended {
            return Poll::Ready(());
        }
        let r = ready!(Pin::new(&mut self.io).poll(cx));
        self.ended = true;
        if let Err(e) = r {
            tracing::debug!(error = %e, "upstream connection failed");
        }
        Poll::Ready(())
    }

    /// Polls the connection once without being woken later: for a connection nobody is
    /// waiting on, this is how a close or an error that arrived meanwhile is noticed.
    /// True when the connection can carry another request.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_io(&mut cx).is_pending() && self.tx.is_ready()
    }
}

/// Polls the connection and the response together until response headers arrive. Both
/// run in the calling task; the connection wakes it when the socket is ready.
async fn drive(conn: &mut Conn, sent: impl Future<Output = SendResult>) -> SendResult {
    let mut sent = pin!(sent);
    std::future::poll_fn(|cx| {
        // The connection goes first: it writes the request and, with luck, reads the
        // response in the same turn, so `sent` is ready when polled next. Once the
        // connection has ended, hyper has answered `sent` (with its error, or with a
        // response it read before the server closed).
        let _ = conn.poll_io(cx);
        sent.as_mut().poll(cx)
    })
    .await
}

/// Idle HTTP/1.1 connections to one endpoint, most recently used last.
#[derive(Default)]
pub(super) struct Http1Idle {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Http1Idle {
    /// The most recently used live connection, and how long it sat idle.
    fn checkout(&self, idle_timeout: Duration) -> Option<(Box<Conn>, Duration)> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let c = idle.pop()?;
                if c.since.elapsed() > idle_timeout {
                    // Older entries sit below this one: all of them have expired too.
                    idle.clear();
                    return None;
                }
                c
            };
            let mut conn = candidate.conn;
            if conn.reusable() {
                return Some((conn, candidate.since.elapsed()));
            }
        }
    }

    pub(super) fn put(&self, conn: Box<Conn>, max_idle: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Idle connections now held.
    pub(super) fn len(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    pub(super) fn expire(&self, idle_timeout: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| c.since.elapsed() <= idle_timeout);
    }
}

/// A pooled connection on loan to one response.
struct Lease {
    conn: Box<Conn>,
    pool: Arc<super::EndpointPool>,
    shared: Arc<Shared>,
}

/// A response body from an upstream. For HTTP/1.1 it also carries the connection the body
/// arrives on, polls it as the body is read, and returns it to its pool when done.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
    ended: bool,
    /// The caller's request stays open (for its connection's idle watchdog) until this body
    /// has been sent or dropped.
    held: Option<crate::context::Held>,
}

impl UpstreamBody {
    pub(super) fn unpooled(inner: Incoming) -> Self {
        Self {
            inner,
            lease: None,
            ended: false,
            held: None,
        }
    }

    fn pooled(inner: Incoming, lease: Lease) -> Self {
        Self {
            inner,
            lease: Some(lease),
            ended: false,
            held: None,
        }
    }

    /// Keeps the caller's request open (and its place in the caller's budget) while this
    /// body is being sent.
    pub fn hold(&mut self, held: crate::context::Held) {
        self.held = Some(held);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = &mut this.lease {
            // The connection fills `inner`; without this poll nothing would arrive. Once it
            // has ended, what it delivered is already queued in `inner`.
            if lease.conn.poll_io(cx).is_ready() {
                this.lease = None;
            }
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        // A body read to the end (hyper stops at the declared length without asking for the
        // end) leaves the connection at a message boundary; anything else closes it.
        if (self.ended || self.inner.is_end_stream()) && lease.conn.reusable() {
            lease.pool.put_http1(lease.conn, &lease.shared);
        }
    }
}
