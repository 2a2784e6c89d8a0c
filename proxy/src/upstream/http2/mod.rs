//! HTTP/2 to an endpoint, the gateway's own client: one multiplexed connection, opened on
//! first use and shared by every request to that endpoint, replaced when it closes, dropped
//! when idle.
//!
//! The connection's state ([`conn::ClientConn`], the frames and HPACK of `crate::h2codec`) is
//! shared by the callers' tasks and one task for the connection's I/O. A request is encoded
//! and queued from the caller's task, which then waits for its response head there; a request
//! body already complete (every GET, most unary gRPC calls) goes with it, one still arriving
//! is piped by a task of its own under the endpoint's flow control. The connection's task
//! reads the endpoint's frames into the state, writes what the callers queued (one write for
//! all of them), and sends a keep-alive PING every 10 s, dropping the connection when one goes
//! unanswered for 3 s.

mod conn;

use std::{
    future::{poll_fn, Future},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use self::conn::fuzz_client;
use self::conn::{ClientConn, StreamFailure};
use super::{dial::Alpn, SendError, Shared, UpstreamBody};
use crate::{
    body::CallerBody,
    errors::ProxyError,
    h2codec::frame::{Head, Reason, HEAD_LEN},
    io::PendingFlush,
    routing::Endpoint,
};

/// How long a closing connection's TLS shutdown may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// What Linkerd peers do: a PING every 10 s, the connection given up 3 s after an unanswered one.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

type Conn = Arc<Mutex<ClientConn>>;

fn lock(c: &Conn) -> MutexGuard<'_, ClientConn> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// The endpoint's connection, if one is open.
#[derive(Default)]
pub(super) struct Http2Slot {
    open: Mutex<Option<Open>>,
    /// Held while dialling, so a burst of first requests opens one connection, not one each.
    dialing: tokio::sync::Mutex<()>,
}

struct Open {
    conn: Conn,
    last_used: Instant,
}

impl Drop for Open {
    /// A connection no longer offered to requests (idle, failed, or its endpoint gone) ends
    /// once the streams still on it are done; its task would otherwise ping on forever.
    fn drop(&mut self) {
        lock(&self.conn).close_when_idle();
    }
}

impl Http2Slot {
    /// The open connection, if it can still take requests.
    fn current(&self) -> Option<Conn> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.as_mut() {
            Some(o) if lock(&o.conn).usable() => {
                o.last_used = Instant::now();
                Some(o.conn.clone())
            }
            _ => {
                *open = None;
                None
            }
        }
    }

    async fn connection(&self, shared: &Shared, endpoint: &Endpoint) -> Result<Conn, ProxyError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let addr = endpoint.addr;
        let io = shared
            .dialer
            .connect_endpoint(endpoint, addr, Alpn::None)
            .await?;
        let conn = Arc::new(Mutex::new(ClientConn::new()));
        tokio::spawn(drive(io, conn.clone(), addr));
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(Open {
            conn: conn.clone(),
            last_used: Instant::now(),
        });
        Ok(conn)
    }

    /// Lets go of a connection unused for `idle_timeout`; it closes once the streams still on
    /// it are done.
    pub(super) fn expire(&self, idle_timeout: Duration) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let expired = open
            .as_ref()
            .is_some_and(|o| o.last_used.elapsed() > idle_timeout || !lock(&o.conn).usable());
        if expired {
            *open = None;
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.open
            .lock()
            .map(|o| o.as_ref().is_some_and(|o| lock(&o.conn).usable()))
            .unwrap_or(false)
    }
}

/// The connection's I/O until it ends: the endpoint's frames into the state, the state's
/// frames out, keep-alive PINGs.
async fn drive<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, conn: Conn, addr: SocketAddr) {
    let mut rbuf = BytesMut::new();
    let mut wbuf: Vec<u8> = Vec::new();
    let mut sent = 0;
    let mut flush = PendingFlush::default();
    let mut keepalive = Box::pin(tokio::time::sleep(KEEPALIVE_INTERVAL));
    let mut ping_out = false;
    let mut ping_count: u64 = 0;
    let mut releases = Vec::new();
    // The earliest response deadline among the streams waiting for their heads, and the
    // one timer for it (see `ClientConn::expire`).
    let mut response_timer = Box::pin(tokio::time::sleep_until(tokio::time::Instant::now()));
    let mut timer_at: Option<tokio::time::Instant> = None;
    let ended: Option<&'static str> = poll_fn(|cx| loop {
        let mut progress = false;
        let mut read_end: Option<&'static str> = None;
        if wbuf.len() - sent < conn::OUT_HIGH {
            if rbuf.capacity() - rbuf.len() < 4096 {
                rbuf.reserve(16 * 1024);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut rbuf) {
                Poll::Ready(Ok(0)) => read_end = Some("endpoint closed the connection"),
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(_)) => read_end = Some("connection read failed"),
                Poll::Pending => {}
            }
        }
        let keepalive_due = keepalive.as_mut().poll(cx).is_ready();
        let finished = {
            let mut c = lock(&conn);
            c.set_driver(cx.waker());
            while rbuf.len() >= HEAD_LEN && c.failed.is_none() {
                let Ok(raw) = <&[u8; HEAD_LEN]>::try_from(&rbuf[..HEAD_LEN]) else {
                    break;
                };
                let head = Head::parse(raw);
                if head.len > crate::h2codec::frame::MIN_MAX_FRAME_SIZE as usize {
                    c.fail("frame_too_large", Some(Reason::FRAME_SIZE_ERROR));
                    break;
                }
                if rbuf.len() < HEAD_LEN + head.len {
                    rbuf.reserve(HEAD_LEN + head.len - rbuf.len());
                    break;
                }
                rbuf.advance(HEAD_LEN);
                let payload = rbuf.split_to(head.len).freeze();
                if let Err(f) = c.recv(head, payload) {
                    tracing::debug!(%addr, code = %f.code, reason = f.what, "upstream HTTP/2 protocol error");
                    c.fail(f.what, Some(f.code));
                }
            }
            if let Some(why) = read_end {
                c.fail(why, None);
            }
            let released = c.released.clone();
            released.take(cx, &mut releases);
            if !releases.is_empty() {
                c.released(&releases);
                releases.clear();
            }
            if timer_at.is_some() && response_timer.as_mut().poll(cx).is_ready() {
                timer_at = None;
                c.expire(tokio::time::Instant::now());
            }
            if let Some(at) = c.next_deadline() {
                if timer_at != Some(at) {
                    // A later deadline than the timer's is one atomic update to it.
                    response_timer.as_mut().reset(at);
                    timer_at = Some(at);
                    if response_timer.as_mut().poll(cx).is_ready() {
                        progress = true;
                    }
                }
            }
            if c.pong && ping_out {
                ping_out = false;
                keepalive.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE_INTERVAL);
                progress = true;
            }
            if keepalive_due {
                if ping_out {
                    tracing::debug!(%addr, "upstream HTTP/2 connection unanswered PING: closing it");
                    c.fail("unanswered keep-alive PING", Some(Reason::NO_ERROR));
                } else {
                    ping_count += 1;
                    c.ping(ping_count.to_be_bytes());
                    ping_out = true;
                    keepalive.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE_TIMEOUT);
                }
                progress = true;
            }
            if !c.out.is_empty() {
                if wbuf.is_empty() {
                    std::mem::swap(&mut wbuf, &mut c.out);
                    sent = 0;
                } else {
                    wbuf.extend_from_slice(&c.out);
                    c.out.clear();
                }
            }
            c.finished().then(|| c.failed.unwrap_or("closed"))
        };
        let mut wrote = false;
        while sent < wbuf.len() {
            match Pin::new(&mut io).poll_write(cx, &wbuf[sent..]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    sent += n;
                    wrote = true;
                }
                Poll::Ready(_) => {
                    wbuf.clear();
                    sent = 0;
                    lock(&conn).fail("connection write failed", None);
                    return Poll::Ready(Some("connection write failed"));
                }
                Poll::Pending => break,
            }
        }
        if sent == wbuf.len() && !wbuf.is_empty() {
            wbuf.clear();
            sent = 0;
            lock(&conn).drained();
        }
        progress |= wrote;
        if let Poll::Ready(Err(_)) = flush.poll(&mut io, cx, wrote) {
            lock(&conn).fail("connection write failed", None);
            return Poll::Ready(Some("connection write failed"));
        }
        if let Some(why) = finished {
            if wbuf.is_empty() {
                return Poll::Ready((why != "closed").then_some(why));
            }
        }
        if !progress {
            return Poll::Pending;
        }
    })
    .await;
    // Bounded: after a failed write the socket may never report writability again, and a
    // shutdown (a TLS close_notify, a write) would hold this task and its socket for good.
    let _ = tokio::time::timeout(
        SHUTDOWN_GRACE,
        poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)),
    )
    .await;
    if let Some(why) = ended {
        tracing::debug!(%addr, reason = why, "upstream HTTP/2 connection ended");
    }
}

/// Cancels the stream if the caller goes before its response head arrives.
struct StreamGuard {
    conn: Conn,
    id: u32,
    armed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.conn).cancel(self.id);
        }
    }
}

/// Sends `req` on the endpoint's connection (opened if need be) and waits for its response
/// headers. A request that could not be sent at all comes back in the error, for another
/// endpoint.
///
/// Not an `async fn`, which would keep the request twice in its future (as passed, and taken
/// apart in its body): this future is part of every request's toward a meshed workload.
#[allow(clippy::manual_async_fn)]
pub(super) fn send<'a>(
    shared: &'a Shared,
    endpoint: &'a Arc<Endpoint>,
    req: Request<CallerBody>,
) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a {
    let (mut parts, body) = req.into_parts();
    async move {
        // The response head is due by then: the connection's task cancels the stream if not.
        let deadline = tokio::time::Instant::now() + shared.cfg.response_timeout;
        let slot = &endpoint.pool.http2;
        let opened = match slot.current() {
            Some(c) => Ok(c),
            // Boxed: dialing is the cold path, and its future (a TLS handshake's) would otherwise
            // be part of every request's.
            None => Box::pin(tokio::time::timeout_at(
                deadline,
                slot.connection(shared, endpoint),
            ))
            .await
            .unwrap_or(Err(ProxyError::ResponseTimeout)),
        };
        let conn = match opened {
            Ok(c) => c,
            Err(ProxyError::ResponseTimeout) => return Err(ProxyError::ResponseTimeout.into()),
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(Box::new(Request::from_parts(parts, body))),
                })
            }
        };
        endpoint.pool.register(shared);
        let end = body.is_end_stream();
        set_content_length(&mut parts, &body);
        // Waits for a stream under the endpoint's limit; fails only when the connection cannot
        // take the request, before anything of it was sent.
        let mut open =
            |cx: &mut Context<'_>| match lock(&conn).open(&parts, end, cx.waker(), deadline) {
                Ok(Some(id)) => Poll::Ready(Ok(id)),
                Ok(None) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            };
        let opened = match poll_fn(|cx| Poll::Ready(open(cx))).await {
            Poll::Ready(r) => r,
            // Every stream the endpoint takes is in use: waiting, on a timer of its own
            // (streams answered and sending their bodies are not under the deadline).
            Poll::Pending => {
                match Box::pin(tokio::time::timeout_at(deadline, poll_fn(&mut open))).await {
                    Ok(r) => r,
                    Err(_) => return Err(ProxyError::ResponseTimeout.into()),
                }
            }
        };
        let id = match opened {
            Ok(id) => id,
            Err(_) => {
                tracing::debug!(addr = %endpoint.addr, "upstream HTTP/2 connection cannot take the request");
                return Err(SendError {
                    error: ProxyError::Upstream,
                    unsent: Some(Box::new(Request::from_parts(parts, body))),
                });
            }
        };
        let mut guard = StreamGuard {
            conn: conn.clone(),
            id,
            armed: true,
        };
        let mut body = Some(body);
        if !end {
            if let Some(body) = body.take() {
                start_pipe(body, conn.clone(), id);
            }
        }
        let response = poll_fn(|cx| match lock(&conn).poll_response(id, cx.waker()) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        })
        .await;
        guard.armed = false;
        match response {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Ok(Response::from_parts(parts, UpstreamBody::http2(body)))
            }
            // The connection's task cancelled the stream at its deadline.
            Err(_) if tokio::time::Instant::now() >= deadline => {
                tracing::debug!(addr = %endpoint.addr, "upstream HTTP/2 response timed out");
                Err(ProxyError::ResponseTimeout.into())
            }
            Err(failure) => {
                tracing::debug!(addr = %endpoint.addr, ?failure, "upstream HTTP/2 request failed");
                // A stream the endpoint never took (GOAWAY below it, REFUSED_STREAM) may go to
                // another endpoint, if its body was not read: one that ended with its head.
                let unsent = match (failure, body) {
                    (StreamFailure::Unsent, Some(body)) => {
                        Some(Box::new(Request::from_parts(parts, body)))
                    }
                    _ => None,
                };
                Err(SendError {
                    error: ProxyError::Upstream,
                    unsent,
                })
            }
        }
    }
}

/// A body whose length is known is announced, as HTTP/1.1 callers' chunked bodies are not:
/// except an empty one on a method whose request carries no content.
fn set_content_length(parts: &mut http::request::Parts, body: &CallerBody) {
    if parts.headers.contains_key(header::CONTENT_LENGTH) {
        return;
    }
    if let Some(len) = body.size_hint().exact() {
        let has_content = !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::CONNECT
        );
        if len != 0 || has_content {
            parts.headers.insert(header::CONTENT_LENGTH, len.into());
        }
    }
}

/// Sends the rest of a request body: in the caller's task if it is all there already, else
/// in a task of its own, so that a body streaming alongside its response (gRPC streams) goes
/// on after the response headers are handed back.
fn start_pipe(body: CallerBody, conn: Conn, id: u32) {
    let mut pipe = Box::pin(pipe(body, conn, id));
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    // Polled once here with a no-op waker: whatever is pending after that is re-polled by
    // the task, which registers its own wakers.
    if pipe.as_mut().poll(&mut cx).is_pending() {
        tokio::spawn(pipe);
    }
}

/// Copies body frames to the stream under the endpoint's flow control; ends the stream with
/// the body, cancels it when the body fails, and stops when the stream is gone.
async fn pipe(mut body: CallerBody, conn: Conn, id: u32) {
    loop {
        let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => {
                let mut empty = Bytes::new();
                let _ = poll_fn(|cx| lock(&conn).send_data(id, &mut empty, true, cx.waker())).await;
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body failed: cancelling the upstream stream");
                lock(&conn).cancel(id);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let end = body.is_end_stream();
                    if data.is_empty() && !end {
                        continue;
                    }
                    let sent =
                        poll_fn(|cx| lock(&conn).send_data(id, &mut data, end, cx.waker())).await;
                    if sent.is_err() || end {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        lock(&conn).send_trailers(id, &trailers);
                    }
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncReadExt;

    use super::{conn::ClientConn, drive};
    use crate::io::testing::Buffering;

    /// The connection's first frames, taken whole by a stream that buffers (TLS) while its
    /// socket is full, reach the endpoint once the socket drains: the pending flush is retried
    /// on the connection's next pass, though nothing new is written then. (Retried only after
    /// a write, they stayed in the buffer until the next frame, and a last frame for good.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_pending_flush_is_retried_until_the_frames_are_out() {
        let (mut endpoint, ours) = tokio::io::duplex(1 << 16);
        let conn = Arc::new(Mutex::new(ClientConn::new()));
        let addr = "127.0.0.1:4143".parse().expect("addr");
        let task = tokio::spawn(drive(Buffering::new(ours), conn, addr));
        let mut preface = [0u8; 24];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            endpoint.read_exact(&mut preface),
        )
        .await
        .expect("the connection's preface never reached the endpoint")
        .expect("read");
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        task.abort();
    }
}
