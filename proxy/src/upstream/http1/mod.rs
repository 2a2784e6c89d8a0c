//! HTTP/1.1 to an endpoint: a small pool of connections, each driven by the task of the
//! request using it, speaking the gateway's own codec ([`codec`]) over the socket ([`conn`]).
//!
//! The caller's connection task writes the request, reads the response and streams its body,
//! with no connection task of its own and no channel hop in between: one task wake-up per
//! request, and a request's two sockets stay on one core. The request head is written from
//! the caller's parsed request in one piece; the response head is parsed in the connection's
//! read buffer and its header values point into it. A connection goes back to the pool as
//! soon as its response body has been read to the end; a body abandoned half-way closes it.
//! Upgrades (WebSocket and the like) take hyper's client on a connection of their own.

mod codec;
mod conn;
mod template;

pub(super) use self::conn::Conn;

use std::{
    future::{poll_fn, Future},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use self::{
    codec::{BodyFraming, Chunk, ChunkedState, Http1Error, Parsed, RequestFraming, ResponseHead},
    conn::{Outgoing, WriteError},
};
use super::{dial::Alpn, SendError, Shared};
use crate::{
    body::CallerBody,
    errors::ProxyError,
    exchange::{self, Exchange},
    headers::GatewayFields,
    routing::Endpoint,
};

#[doc(hidden)]
pub use self::{codec::fuzz_response, template::fuzz_template};

/// A pooled connection re-used this many times in a row without getting a request through
/// (each closed by the server just before) makes the next attempt use a new connection.
const MAX_STALE_RETRIES: usize = 3;

/// What an upstream HTTP/1.1 request carries after its head: the caller's body.
type ReqBody = CallerBody;

/// Sends `req` to the endpoint over an idle connection from its pool (or a new one) and waits
/// for response headers. The body of the response drives the connection and returns it to
/// the pool when it has been read to the end.
///
/// Not an `async fn`, which would keep the request twice in its future (as passed, and taken
/// apart in its body); this future is part of every request's on its way to a service.
#[allow(clippy::manual_async_fn)]
pub(super) fn send<'a>(
    shared: &'a Arc<Shared>,
    endpoint: &'a Arc<Endpoint>,
    req: Request<CallerBody>,
    added: &'a GatewayFields,
) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a {
    let (parts, body) = req.into_parts();
    async move {
        let started = tokio::time::Instant::now();
        let deadline = started + shared.cfg.response_timeout;
        let (pool, addr) = (&endpoint.pool, endpoint.addr);
        let bodiless = body.is_end_stream();
        let framing = RequestFraming::choose(
            &parts.method,
            &parts.headers,
            bodiless,
            body.size_hint().exact(),
        );
        // The caller's body, until an attempt takes it to write.
        let mut body = Some(body);
        let mut stale = 0;
        let mut replayed = false;
        loop {
            let pooled = if stale < MAX_STALE_RETRIES {
                pool.http1
                    .checkout(shared.cfg.idle_timeout, started.into_std())
            } else {
                None
            };
            let reused = pooled.is_some();
            let (mut conn, idle) = match pooled {
                Some(c) => c,
                // Boxed: connecting is the cold path, and its future would otherwise enlarge
                // every request's future, which HTTP/2 callers' streams copy into a task each.
                None => {
                    match Box::pin(tokio::time::timeout_at(deadline, connect(shared, endpoint)))
                        .await
                    {
                        Ok(Ok(c)) => (c, Duration::ZERO),
                        // Nothing was sent: the request may go to another endpoint.
                        Ok(Err(error)) => {
                            return Err(SendError {
                                error,
                                unsent: body.map(|b| Box::new(Request::from_parts(parts, b))),
                            })
                        }
                        Err(_) => return Err(ProxyError::ResponseTimeout.into()),
                    }
                }
            };
            // A connection idle for a while may be closed by the server just as the request is
            // written to it; an idempotent request without a body is then sent once more.
            let replayable = !replayed
                && reused
                && idle >= REPLAY_AFTER_IDLE
                && bodiless
                && idempotent(&parts.method);
            let mut out = Outgoing::new(
                codec::encode_request_head(&parts, framing, added),
                if bodiless { None } else { body.take() },
                framing,
            );
            match exchange(&mut conn, &mut out, &parts.method, deadline).await {
                Ok(mut resp) => {
                    // A request cut short cannot leave the connection at a message boundary.
                    resp.keep_alive &= !out.abandoned;
                    let lease = Lease {
                        conn,
                        pool: pool.clone(),
                        shared: shared.clone(),
                    };
                    let request_left = (!out.done).then(|| Box::new(out));
                    return Ok(response(resp, lease, request_left));
                }
                Err(e) => {
                    if body.is_none() {
                        body = out.take_untouched_body();
                    }
                    match e {
                        // The server closed an idle connection as we picked it: the request never
                        // left, so it is safe to send on another.
                        ExchangeError::Unsent(_) if reused => {
                            tracing::debug!(%addr, error = %e, "pooled connection was closed; retrying");
                            stale += 1;
                        }
                        // It left, and the connection closed before an answer: an idempotent
                        // request goes once more, on another connection.
                        ExchangeError::NoResponse if replayable => {
                            tracing::debug!(%addr, "idle connection closed under an idempotent request; sending it once more");
                            replayed = true;
                            stale += 1;
                        }
                        _ => {
                            tracing::debug!(%addr, error = %e, reason = e.reason(), "upstream request failed");
                            let unsent = match e {
                                ExchangeError::Unsent(_) => {
                                    body.map(|b| Box::new(Request::from_parts(parts, b)))
                                }
                                _ => None,
                            };
                            return Err(SendError {
                                error: e.proxy_error(),
                                unsent,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// How long a pooled connection must have been idle before a request on it may be replayed:
/// a server's keep-alive timeout closes idle connections, not busy ones.
const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Idempotent (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    m == Method::GET
        || m == Method::HEAD
        || m == Method::OPTIONS
        || m == Method::DELETE
        || m == Method::PUT
}

/// Why an exchange ended without a response head.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// Not a byte of the request reached the socket.
    #[error("request not sent: {0}")]
    Unsent(WriteError),
    /// The service closed the connection before a byte of response.
    #[error("connection closed before a response")]
    NoResponse,
    #[error("connection closed in the middle of the response head")]
    Truncated,
    #[error("reading the response failed: {0}")]
    Read(std::io::Error),
    #[error("the caller's request body failed")]
    CallerBody,
    #[error("{}", .0.reason())]
    Protocol(Http1Error),
    /// No final response head before the request's response deadline.
    #[error("no response head within the response timeout")]
    TimedOut,
}

impl ExchangeError {
    fn reason(&self) -> &'static str {
        match self {
            ExchangeError::Unsent(_) => "request not sent",
            ExchangeError::NoResponse => "connection closed before a response",
            ExchangeError::Truncated => "response head truncated",
            ExchangeError::Read(_) => "read failed",
            ExchangeError::CallerBody => "caller body failed",
            ExchangeError::Protocol(e) => e.reason(),
            ExchangeError::TimedOut => ProxyError::ResponseTimeout.reason(),
        }
    }

    fn proxy_error(&self) -> ProxyError {
        match self {
            ExchangeError::Protocol(_) => ProxyError::UpstreamProtocol,
            ExchangeError::TimedOut => ProxyError::ResponseTimeout,
            _ => ProxyError::Upstream,
        }
    }
}

/// Writes the request and reads until a final response head, both in the calling task: the
/// response may start before the request body has all gone (it goes on with the body).
/// Gives up at `deadline`, on the connection's own timer.
async fn exchange(
    conn: &mut Conn,
    out: &mut Outgoing,
    method: &Method,
    deadline: tokio::time::Instant,
) -> Result<ResponseHead, ExchangeError> {
    let mut interim = 0;
    // A request whose writing failed after it started is no longer written; a response the
    // service sent anyway (413 before reading the body, say) is still read and forwarded.
    let mut writing = true;
    conn.deadline.as_mut().reset(deadline);
    poll_fn(|cx| {
        if conn.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(ExchangeError::TimedOut));
        }
        if writing {
            if let Poll::Ready(Err(e)) = out.poll_send(conn, cx) {
                if !out.wrote_any {
                    return Poll::Ready(Err(ExchangeError::Unsent(e)));
                }
                if matches!(e, WriteError::Body) {
                    return Poll::Ready(Err(ExchangeError::CallerBody));
                }
                tracing::debug!(error = %e, "writing the request failed; reading what the service sent");
                writing = false;
                out.abandon();
            }
        }
        loop {
            match codec::parse_response(&mut conn.rbuf, method, &mut conn.template) {
                Ok(Some(Parsed::Final(head))) => return Poll::Ready(Ok(head)),
                Ok(Some(Parsed::Interim)) => {
                    interim += 1;
                    if interim > codec::MAX_INTERIM {
                        return Poll::Ready(Err(ExchangeError::Protocol(
                            Http1Error::TooManyInterim,
                        )));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(ExchangeError::Protocol(e))),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if conn.rbuf.is_empty() => {
                    return Poll::Ready(Err(ExchangeError::NoResponse))
                }
                Ok(0) => return Poll::Ready(Err(ExchangeError::Truncated)),
                Ok(_) => {}
                Err(e) if !out.wrote_any => {
                    return Poll::Ready(Err(ExchangeError::Unsent(WriteError::Io(e))))
                }
                Err(_) if conn.rbuf.is_empty() => {
                    return Poll::Ready(Err(ExchangeError::NoResponse))
                }
                Err(e) => return Poll::Ready(Err(ExchangeError::Read(e))),
            }
        }
    })
    .await
}

/// The response as the gateway's server takes it, with a body that reads the rest from the
/// connection.
fn response(
    head: ResponseHead,
    lease: Lease,
    request_left: Option<Box<Outgoing>>,
) -> Response<UpstreamBody> {
    let reader = match head.framing {
        BodyFraming::Empty | BodyFraming::Length(0) => Reader::Done,
        BodyFraming::Length(n) => Reader::Length(n),
        BodyFraming::Chunked => Reader::Chunked(ChunkedState::Size),
        BodyFraming::UntilClose => Reader::UntilClose,
    };
    let mut body = Http1Body {
        lease: Some(lease),
        reader,
        request_left,
        keep_alive: head.keep_alive,
    };
    if body.reader == Reader::Done {
        body.release();
    }
    let mut resp = Response::new(UpstreamBody::new(Inner::Http1(body)));
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp
}

/// An HTTP/1.1 request asking to switch protocols gets a connection of its own, driven by its
/// own task so it can hand over its socket once the upstream agrees.
pub(super) async fn send_upgrade(
    shared: &Shared,
    endpoint: &Endpoint,
    req: Request<CallerBody>,
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

/// Boxed: a connection (a TLS one especially) is large, and moves between the pool, a
/// request future and a response body.
async fn connect(shared: &Shared, endpoint: &Endpoint) -> Result<Box<Conn>, ProxyError> {
    let stream = shared
        .dialer
        .connect_endpoint(endpoint, endpoint.addr, Alpn::None)
        .await?;
    Ok(Box::new(Conn::new(stream)))
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
    /// The most recently used live connection, and how long it sat idle by `now` (the
    /// request's start, read once for its deadline too).
    fn checkout(&self, idle_timeout: Duration, now: Instant) -> Option<(Box<Conn>, Duration)> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let c = idle.pop()?;
                // No clock read of its own: on this VM a request's clock reads (about
                // seven) cost 1.7 % of its CPU.
                let idle_for = now.saturating_duration_since(c.since);
                if idle_for > idle_timeout {
                    // Older entries sit below this one: all of them have expired too.
                    idle.clear();
                    return None;
                }
                (c, idle_for)
            };
            let (candidate, idle_for) = candidate;
            let mut conn = candidate.conn;
            if conn.reusable() {
                return Some((conn, idle_for));
            }
        }
    }

    pub(super) fn put(&self, mut conn: Box<Conn>, max_idle: usize) {
        conn.shrink();
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

/// A pooled connection on loan to one exchange.
struct Lease {
    conn: Box<Conn>,
    pool: Arc<super::EndpointPool>,
    shared: Arc<Shared>,
}

/// Where the body of an HTTP/1.1 response is.
#[derive(Debug, PartialEq, Eq)]
enum Reader {
    /// Bytes still to come under `Content-Length`.
    Length(u64),
    Chunked(ChunkedState),
    /// Until the service closes.
    UntilClose,
    Done,
}

/// Why a response body from an HTTP/1.1 service stopped short.
#[derive(Debug, thiserror::Error)]
pub enum Http1BodyError {
    #[error("the service closed the connection before the response body ended")]
    Truncated,
    #[error("reading the response body failed: {0}")]
    Read(std::io::Error),
    #[error("{}", .0.reason())]
    Protocol(Http1Error),
}

/// A response body read from the connection it arrives on.
struct Http1Body {
    /// The connection, until the body ends (it then goes back to the pool) or fails.
    lease: Option<Lease>,
    reader: Reader,
    /// The rest of a request whose response started before its body had all gone.
    request_left: Option<Box<Outgoing>>,
    /// The response allows another request on the connection.
    keep_alive: bool,
}

impl Http1Body {
    /// The body has ended: the connection goes back to the pool if it can carry more.
    fn release(&mut self) {
        self.reader = Reader::Done;
        let Some(lease) = self.lease.take() else {
            return;
        };
        if self.keep_alive && self.request_left.is_none() && lease.conn.rbuf.is_empty() {
            lease.pool.put_http1(lease.conn, &lease.shared);
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1BodyError>>> {
        let Some(lease) = self.lease.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(out) = self.request_left.as_mut() {
            match out.poll_send(&mut lease.conn, cx) {
                Poll::Ready(Ok(())) => self.request_left = None,
                Poll::Ready(Err(e)) => {
                    // The response goes on; the connection will not be reused.
                    tracing::debug!(error = %e, "writing the rest of the request failed");
                    self.keep_alive = false;
                    self.request_left = None;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let conn = &mut lease.conn;
            match &mut self.reader {
                Reader::Done => {
                    self.release();
                    return Poll::Ready(None);
                }
                Reader::Length(left) => {
                    if !conn.rbuf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.rbuf.len());
                        let data = conn.rbuf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Reader::UntilClose => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if conn.eof {
                        self.keep_alive = false;
                        self.release();
                        return Poll::Ready(None);
                    }
                }
                Reader::Chunked(state) => match codec::decode_chunk(state, &mut conn.rbuf) {
                    Ok(Some(Chunk::Data(d))) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Ok(Some(Chunk::Trailers(t))) => {
                        // The message is whole: the connection goes back now, and the
                        // body reports its end (a server may not poll again).
                        self.release();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Some(Chunk::End)) => {
                        self.release();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Poll::Ready(Some(Err(self.fail(Http1BodyError::Protocol(e)))))
                    }
                },
            }
            match ready!(lease.conn.poll_fill(cx)) {
                Ok(0) if self.reader == Reader::UntilClose => {}
                Ok(0) => return Poll::Ready(Some(Err(self.fail(Http1BodyError::Truncated)))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(self.fail(Http1BodyError::Read(e))))),
            }
        }
    }

    /// The body cannot go on: the connection is closed, and the error goes to the caller's
    /// side (which resets its stream or closes its connection).
    fn fail(&mut self, e: Http1BodyError) -> Http1BodyError {
        tracing::debug!(error = %e, "upstream response body failed");
        self.lease = None;
        self.reader = Reader::Done;
        e
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.reader, Reader::Done | Reader::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.reader {
            Reader::Done => SizeHint::with_exact(0),
            Reader::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

enum Inner {
    /// Upgrades: hyper's body.
    Hyper(Incoming),
    Http1(Http1Body),
    Http2(crate::h2codec::recv_body::RecvBody),
}

/// Why a response body from an upstream stopped short.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Http1(#[from] Http1BodyError),
    #[error(transparent)]
    Http2(#[from] crate::h2codec::recv_body::Http2BodyError),
}

/// A response body from an upstream: read from a pooled HTTP/1.1 connection (which it
/// returns to its pool once read to the end), from an HTTP/2 stream, or hyper's (upgrades).
pub struct UpstreamBody {
    inner: Inner,
    /// The caller's request stays open (for its connection's idle watchdog) until this body
    /// has been sent or dropped.
    held: Option<crate::context::Held>,
    /// The request's record, ended with the body: bytes, trailers, how it ended.
    record: Option<Exchange>,
}

impl UpstreamBody {
    fn new(inner: Inner) -> Self {
        Self {
            inner,
            held: None,
            record: None,
        }
    }

    pub(crate) fn unpooled(inner: Incoming) -> Self {
        Self::new(Inner::Hyper(inner))
    }

    pub(crate) fn http2(inner: crate::h2codec::recv_body::RecvBody) -> Self {
        Self::new(Inner::Http2(inner))
    }

    /// Keeps the caller's request open (and its place in the caller's budget) while this
    /// body is being sent.
    pub fn hold(&mut self, held: crate::context::Held) {
        self.held = Some(held);
    }

    /// Ends `record` when this body ends, or is dropped before its end.
    pub fn record(&mut self, record: Exchange) {
        self.record = Some(record);
    }

    fn observe(&mut self, frame: &Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>>) {
        let end = self.inner_end();
        let Some(record) = self.record.as_mut() else {
            return;
        };
        match frame {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    record.data(d.len());
                } else if let Some(t) = f.trailers_ref() {
                    record.trailers(t);
                }
                if end {
                    record.end(None);
                }
            }
            Poll::Ready(Some(Err(_))) => record.end(Some(exchange::BODY_FAILED)),
            Poll::Ready(None) => record.end(None),
        }
    }

    fn inner_end(&self) -> bool {
        match &self.inner {
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::Http1(b) => b.is_end_stream(),
            Inner::Http2(b) => b.is_end_stream(),
        }
    }
}

/// A body dropped before its end (the caller went away, or the server gave up on it) ends
/// its record as failed.
impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let end = self.inner_end();
        if let Some(record) = self.record.as_mut() {
            if !record.is_ended() {
                let error = (!end).then_some(exchange::CALLER_CANCELLED);
                record.end(error);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = self.get_mut();
        let frame = match &mut this.inner {
            Inner::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Http1(b) => b.poll_frame(cx).map_err(Into::into),
            Inner::Http2(b) => b.poll_frame(cx).map_err(Into::into),
        };
        this.observe(&frame);
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner_end()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.size_hint(),
            Inner::Http1(b) => b.size_hint(),
            Inner::Http2(b) => b.size_hint(),
        }
    }
}
