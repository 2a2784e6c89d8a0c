//! HTTP/2 callers, served on the h2 crate directly: one future per connection drives the
//! connection and every stream on it, with no task and no service stack per stream.
//!
//! Every Linkerd source proxy speaks HTTP/2 to the gateway, so this is the path most requests
//! take. Streams are futures in a set the connection polls: a stream woken by its upstream
//! runs, queues its response frames, and the connection writes what all streams queued in one
//! TLS write when it is polled next. h2 keeps its protocol checks (pseudo-headers,
//! connection-specific fields, content-length, flow control, the rapid-reset and
//! error-reset budgets); `message.rs` adds the rest. Writes are gathered until h2 flushes
//! ([`WriteBatch`]): responses that became ready together leave in one TLS record.

use std::{
    fmt::Display,
    future::{poll_fn, Future},
    pin::{pin, Pin},
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::{
    server::{Connection, Handshake, SendResponse},
    Reason, RecvStream, SendStream,
};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    body::{CallerBody, H2Body},
    io::{write_batch, BatchFlusher, WriteBatch},
};

/// A stream: its request through the handler, and its response back.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One caller's HTTP/2 connection being served. Resolves when the connection has closed
/// (the caller went, or a graceful shutdown finished) or failed.
pub struct Served<IO, F> {
    state: State<IO>,
    streams: FuturesUnordered<StreamFuture>,
    handler: F,
    /// Ends each turn: what h2 wrote during it goes out in one write.
    flusher: BatchFlusher<IO>,
    /// A graceful shutdown was asked for (before the handshake finished, it applies after).
    shutdown: bool,
}

enum State<IO> {
    Handshaking(Pin<Box<Handshake<WriteBatch<IO>, Bytes>>>),
    Serving {
        conn: Box<Connection<WriteBatch<IO>, Bytes>>,
        /// False once no new stream can arrive: the connection is only driven to its end.
        accepting: bool,
    },
    /// Closed (or failed, with the error to report) once the last writes are out.
    Closing(Option<h2::Error>),
    Done,
}

impl<IO, F, Fut, B> Served<IO, F>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<CallerBody>) -> Fut + Clone + Send + Unpin + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Display,
{
    pub fn new(io: IO, builder: &h2::server::Builder, handler: F) -> Self {
        let (io, flusher) = write_batch(io);
        Self {
            state: State::Handshaking(Box::pin(builder.handshake(io))),
            streams: FuturesUnordered::new(),
            handler,
            flusher,
            shutdown: false,
        }
    }

    /// Sends GOAWAY: streams already open finish, no new one is taken.
    pub fn graceful_shutdown(&mut self) {
        self.shutdown = true;
        if let State::Serving { conn, .. } = &mut self.state {
            conn.graceful_shutdown();
        }
    }

    /// One turn: every stream that was woken runs (queueing its frames), then the connection
    /// takes the queued frames and reads the caller's, until no new stream arrives. Ready
    /// once the connection has closed (the state is then `Closing`).
    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.state {
                State::Handshaking(h) => match h.as_mut().poll(cx) {
                    Poll::Ready(Ok(mut conn)) => {
                        if self.shutdown {
                            conn.graceful_shutdown();
                        }
                        self.state = State::Serving {
                            conn: Box::new(conn),
                            accepting: true,
                        };
                    }
                    Poll::Ready(Err(e)) => self.state = State::Closing(Some(e)),
                    Poll::Pending => return Poll::Pending,
                },
                State::Serving { conn, accepting } => {
                    while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {}
                    let mut accepted = false;
                    while *accepting {
                        match conn.poll_accept(cx) {
                            Poll::Ready(Some(Ok((req, respond)))) => {
                                let handler = self.handler.clone();
                                self.streams.push(Box::pin(stream(handler, req, respond)));
                                accepted = true;
                            }
                            Poll::Ready(Some(Err(e))) => {
                                self.state = State::Closing(Some(e));
                                break;
                            }
                            Poll::Ready(None) => *accepting = false,
                            Poll::Pending => break,
                        }
                    }
                    let State::Serving { conn, accepting } = &mut self.state else {
                        continue;
                    };
                    if !*accepting {
                        match conn.poll_closed(cx) {
                            // Once the connection is closed nothing more can reach the
                            // caller: streams still waiting are dropped, cancelling what they
                            // had upstream.
                            Poll::Ready(r) => {
                                self.state = State::Closing(r.err());
                                continue;
                            }
                            Poll::Pending => {}
                        }
                    }
                    if !accepted {
                        return Poll::Pending;
                    }
                }
                State::Closing(_) | State::Done => return Poll::Ready(()),
            }
        }
    }
}

impl<IO, F, Fut, B> Future for Served<IO, F>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<CallerBody>) -> Fut + Clone + Send + Unpin + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Display,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let turn = this.turn(cx);
        // Whatever the turn wrote leaves now, in one write (a failed write shows up as a
        // connection error on h2's next turn).
        let flushed = this.flusher.poll_flush(cx);
        match (turn, &mut this.state) {
            (Poll::Ready(()), State::Closing(error)) => {
                if flushed.is_pending() {
                    return Poll::Pending;
                }
                let error = error.take();
                this.state = State::Done;
                Poll::Ready(error.map_or(Ok(()), Err))
            }
            _ => Poll::Pending,
        }
    }
}

/// One stream: the request through `handler`, the response back. A caller that resets the
/// stream cancels the request, and whatever it had started upstream.
async fn stream<F, Fut, B>(handler: F, req: Request<RecvStream>, mut respond: SendResponse<Bytes>)
where
    F: Fn(Request<CallerBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let (parts, recv) = req.into_parts();
    let head_request = parts.method == Method::HEAD;
    let body = CallerBody::Http2(H2Body::new(recv, &parts.headers));
    let mut answer = pin!(handler(Request::from_parts(parts, body)));
    // The reset is looked at first: a stream opened and reset in one burst (rapid reset)
    // is dropped before it starts any work upstream.
    let resp = poll_fn(|cx| {
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(None);
        }
        answer.as_mut().poll(cx).map(Some)
    })
    .await;
    let Some(resp) = resp else {
        return;
    };
    let (mut head, body) = resp.into_parts();
    head.version = Version::HTTP_2;
    // A body of known length says so, as HTTP/1.1 callers are told; not for answers that
    // carry no body by definition.
    if let Some(n) = body.size_hint().exact() {
        let bodiless = head_request
            || head.status.is_informational()
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED;
        if !bodiless && !head.headers.contains_key(header::CONTENT_LENGTH) {
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    let end = body.is_end_stream();
    let mut send = match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "sending response headers failed");
            return;
        }
    };
    if !end {
        pipe(body, &mut send).await;
    }
}

/// Sends a response body. The first frame goes at once (a small response is then one write
/// with its headers); each later frame waits for flow-control room, so a caller that reads
/// slowly holds at most one frame beyond its window per stream.
async fn pipe<B>(body: B, send: &mut SendStream<Bytes>)
where
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let mut body = pin!(body);
    let mut first = true;
    poll_fn(|cx| loop {
        if !first {
            send.reserve_capacity(1);
            if send.capacity() == 0 {
                loop {
                    match ready!(send.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        // Reset or closed: nobody is reading any more.
                        Some(Err(_)) | None => return Poll::Ready(()),
                    }
                }
            }
        }
        if send.poll_reset(cx).is_ready() {
            return Poll::Ready(());
        }
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    first = false;
                    let end = body.is_end_stream();
                    if send.send_data(data, end).is_err() || end {
                        return Poll::Ready(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = send.send_trailers(trailers);
                    }
                    return Poll::Ready(());
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                send.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(());
            }
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return Poll::Ready(());
            }
        }
    })
    .await
}
