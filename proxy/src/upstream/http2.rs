//! HTTP/2 to an endpoint, on the h2 crate directly: one multiplexed connection, opened on
//! first use and shared by every request to that endpoint, replaced when it closes, dropped
//! when idle.
//!
//! Only the connection's I/O runs in a task of its own. A request is sent from the caller's
//! task and its response awaited there, and a request body that is already complete (every
//! GET, most unary gRPC calls) is sent with it; only a body still arriving gets a task to pipe
//! it. hyper's client, used before, handed each request through a channel to the connection's
//! task and spawned a task per request to await its response: two channels, a task and three
//! wake-ups per request (`benches/results/`, issue 13).

use std::{
    future::{poll_fn, Future},
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::Poll,
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use http::{header, Method, Request, Response};
use http_body::Body;

use super::{dial::Alpn, SendError, Shared, UpstreamBody, UpstreamIo};
use crate::body::{CallerBody, H2Body};
use crate::{errors::ProxyError, routing::Endpoint};

/// What Linkerd peers do: a PING every 10 s, the connection given up 3 s after an unanswered one.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Fixed flow-control windows, the same as the caller side's: what an endpoint may send ahead
/// of a caller that reads slowly is bounded by 1 MiB per stream and 4 MiB per connection.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Request bytes queued per stream beyond the endpoint's window.
const SEND_BUF_PER_STREAM: usize = 64 * 1024;
/// Response headers taken from an endpoint, as the HTTP/1.1 client's head limit.
const MAX_HEADER_LIST: u32 = 64 * 1024;

pub(super) fn builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUF_PER_STREAM)
        .max_header_list_size(MAX_HEADER_LIST)
        // A gateway has no use for pushed responses; refusing them is one less thing to bound.
        .enable_push(false);
    b
}

/// The endpoint's connection, if one is open.
#[derive(Default)]
pub(super) struct Http2Slot {
    open: Mutex<Option<Open>>,
    /// Held while dialling, so a burst of first requests opens one connection, not one each.
    dialing: tokio::sync::Mutex<()>,
}

struct Open {
    sender: SendRequest<Bytes>,
    closed: Closed,
    last_used: Instant,
}

/// Set by the connection's task when the connection has ended, or by a request that found it
/// going away (a GOAWAY from the endpoint, which lets the streams it already took finish): no
/// new request is sent on it after that.
type Closed = Arc<AtomicBool>;

impl Open {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

impl Http2Slot {
    /// A handle to the open connection, if it can still take requests.
    fn current(&self) -> Option<(SendRequest<Bytes>, Closed)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.as_mut() {
            Some(o) if !o.is_closed() => {
                o.last_used = Instant::now();
                Some((o.sender.clone(), o.closed.clone()))
            }
            _ => {
                *open = None;
                None
            }
        }
    }

    async fn sender(
        &self,
        shared: &Shared,
        endpoint: &Endpoint,
    ) -> Result<(SendRequest<Bytes>, Closed), ProxyError> {
        let addr = endpoint.addr;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let io = shared
            .dialer
            .connect_endpoint(endpoint, addr, Alpn::None)
            .await?;
        let (sender, conn) = shared.http2.handshake(io).await.map_err(|e| {
            tracing::debug!(%addr, error = %e, "upstream HTTP/2 handshake failed");
            ProxyError::Upstream
        })?;
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(conn, addr, closed.clone()));
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(Open {
            sender: sender.clone(),
            closed: closed.clone(),
            last_used: Instant::now(),
        });
        Ok((sender, closed))
    }

    /// Lets go of a connection unused for `idle_timeout`; it closes once the streams still on
    /// it are done.
    pub(super) fn expire(&self, idle_timeout: Duration) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open
            .as_ref()
            .is_some_and(|o| o.last_used.elapsed() > idle_timeout || o.is_closed())
        {
            *open = None;
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.open
            .lock()
            .map(|o| o.as_ref().is_some_and(|o| !o.is_closed()))
            .unwrap_or(false)
    }
}

/// Drives the connection's I/O until it ends, and keeps it honest: a PING every
/// [`KEEPALIVE_INTERVAL`], and the connection dropped when one goes unanswered for
/// [`KEEPALIVE_TIMEOUT`] (an endpoint that vanished without a reset would otherwise hold its
/// requests until their response timeout). The connection also ends once every sender and
/// stream is gone.
async fn drive(mut conn: Connection<UpstreamIo, Bytes>, addr: SocketAddr, closed: Arc<AtomicBool>) {
    let mut ping_pong = conn.ping_pong();
    let mut conn = std::pin::pin!(conn);
    let ended = loop {
        let idle = tokio::time::sleep(KEEPALIVE_INTERVAL);
        tokio::select! {
            biased;
            r = &mut conn => break r.err(),
            _ = idle => {}
        }
        let Some(ping_pong) = ping_pong.as_mut() else {
            continue;
        };
        if ping_pong.send_ping(h2::Ping::opaque()).is_err() {
            break None;
        }
        let pong = tokio::time::timeout(KEEPALIVE_TIMEOUT, poll_fn(|cx| ping_pong.poll_pong(cx)));
        tokio::select! {
            biased;
            r = &mut conn => break r.err(),
            answered = pong => if !matches!(answered, Ok(Ok(_))) {
                tracing::debug!(%addr, "upstream HTTP/2 connection unanswered PING: closing it");
                break None;
            },
        }
    };
    closed.store(true, Ordering::Relaxed);
    if let Some(e) = ended {
        tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
    }
}

/// Sends `req` on the endpoint's connection (opened if need be) and waits for its response
/// headers. A request that could not be sent at all comes back in the error, for another
/// endpoint.
pub(super) async fn send(
    shared: &Shared,
    endpoint: &Arc<Endpoint>,
    req: Request<CallerBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    let (sender, closed) = match endpoint.pool.http2.sender(shared, endpoint).await {
        Ok(s) => s,
        Err(error) => {
            return Err(SendError {
                error,
                unsent: Some(req),
            })
        }
    };
    endpoint.pool.register(shared);
    // Waits for a stream under the endpoint's concurrency limit; fails only when the
    // connection is gone, before anything of the request was sent.
    let mut sender = match sender.ready().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(addr = %endpoint.addr, error = %e, "upstream HTTP/2 connection gone");
            closed.store(true, Ordering::Relaxed);
            return Err(SendError {
                error: ProxyError::Upstream,
                unsent: Some(req),
            });
        }
    };
    let (mut parts, body) = req.into_parts();
    let end = body.is_end_stream();
    set_content_length(&mut parts, &body);
    let (response, send_stream) = sender
        .send_request(Request::from_parts(parts, ()), end)
        .map_err(|e| {
            tracing::debug!(addr = %endpoint.addr, error = %e, "upstream HTTP/2 request failed");
            close_if_gone(&closed, &e);
            SendError::from(ProxyError::Upstream)
        })?;
    if !end {
        start_pipe(body, send_stream);
    }
    let response = response.await.map_err(|e| {
        tracing::debug!(addr = %endpoint.addr, error = %e, "upstream HTTP/2 response failed");
        close_if_gone(&closed, &e);
        SendError::from(ProxyError::Upstream)
    })?;
    let (parts, recv) = response.into_parts();
    let body = H2Body::new(recv, &parts.headers);
    Ok(Response::from_parts(parts, UpstreamBody::http2(body)))
}

/// Marks the connection as taking no new request when `e` says it is going away: a GOAWAY,
/// an I/O error, or a stream refused past the endpoint's GOAWAY.
fn close_if_gone(closed: &Closed, e: &h2::Error) {
    if e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        closed.store(true, Ordering::Relaxed);
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
fn start_pipe(body: CallerBody, tx: h2::SendStream<Bytes>) {
    let mut pipe = Box::pin(pipe(body, tx));
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    // Polled once here with a no-op waker: whatever is pending after that is re-polled by
    // the task, which registers its own wakers.
    if pipe.as_mut().poll(&mut cx).is_pending() {
        tokio::spawn(pipe);
    }
}

/// Copies body frames to the stream under the endpoint's flow control; ends the stream with
/// the body, resets it when the body fails, and stops when the endpoint resets it.
async fn pipe(mut body: CallerBody, mut tx: h2::SendStream<Bytes>) {
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(reason) = tx.poll_reset(cx) {
                return Poll::Ready(Err(reason));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await;
        let frame = match frame {
            Err(_) => return,
            Ok(None) => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body failed: resetting the upstream stream");
                tx.send_reset(h2::Reason::CANCEL);
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(mut data) => {
                let end = body.is_end_stream();
                if data.is_empty() {
                    if end {
                        let _ = tx.send_data(data, true);
                        return;
                    }
                    continue;
                }
                while !data.is_empty() {
                    tx.reserve_capacity(data.len());
                    let granted = match poll_fn(|cx| tx.poll_capacity(cx)).await {
                        Some(Ok(n)) => n,
                        _ => return,
                    };
                    if granted == 0 {
                        continue;
                    }
                    let chunk = data.split_to(granted.min(data.len()));
                    if tx.send_data(chunk, end && data.is_empty()).is_err() {
                        return;
                    }
                }
                if end {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = tx.send_trailers(trailers);
                }
                return;
            }
        }
    }
}
