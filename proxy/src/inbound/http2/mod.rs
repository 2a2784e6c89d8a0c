//! The gateway's own HTTP/2 server for callers: one future per connection reads the caller's
//! frames, runs each stream's handler and writes every response, with no task, channel or
//! service stack per stream.
//!
//! Every Linkerd source proxy speaks HTTP/2 to the gateway, so this is the path most requests
//! take. One turn of the connection: take every whole frame read ([`conn::Conn`] applies
//! them: requests start, resets abort their handler before it first runs), run the handlers
//! and response bodies that were woken, give back flow-control credit for request bodies
//! read, and write everything queued in one write. The caller's frames are not read while
//! more than [`conn::OUT_HIGH`] bytes wait to be written to it.
//!
//! `request.rs` holds a head to RFC 9113 §8, `body.rs` is the request body, and the wire
//! format (frames, HPACK) is in `crate::h2codec`.

mod conn;
mod request;

use std::{
    fmt::Display,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{
    future::Abortable,
    stream::{FuturesUnordered, StreamExt},
};
use http::{Request, Response};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};

pub use self::conn::Settings;
use self::conn::{Conn, NewRequest, OUT_HIGH};
use crate::h2codec::recv_body::Released;
pub use crate::h2codec::recv_body::{Http2BodyError, RecvBody as RequestBody};
use crate::{
    body::CallerBody,
    h2codec::{
        frame::{self, Head, Reason, HEAD_LEN},
        HpackError,
    },
    io::PendingFlush,
    metrics,
};

/// Why a caller's HTTP/2 connection ended in error. After a protocol error the caller gets
/// GOAWAY with the code and the reason.
#[derive(Debug, thiserror::Error)]
pub enum Http2Error {
    #[error("the caller broke HTTP/2 ({code}): {what}")]
    Protocol { code: Reason, what: &'static str },
    #[error("the caller went over an HTTP/2 budget (ENHANCE_YOUR_CALM): {0}")]
    Calm(&'static str),
    #[error("the caller's header block does not decode (COMPRESSION_ERROR): {0}")]
    Hpack(#[from] HpackError),
    #[error("connection i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

impl Http2Error {
    fn protocol(code: Reason, what: &'static str) -> Http2Error {
        Http2Error::Protocol { code, what }
    }

    fn code(&self) -> Reason {
        match self {
            Http2Error::Protocol { code, .. } => *code,
            Http2Error::Calm(_) => Reason::ENHANCE_YOUR_CALM,
            Http2Error::Hpack(_) => Reason::COMPRESSION_ERROR,
            Http2Error::Io(_) => Reason::INTERNAL_ERROR,
        }
    }

    /// Stable reason for logs, metrics and the GOAWAY's debug data.
    pub fn reason(&self) -> &'static str {
        match self {
            Http2Error::Protocol { what, .. } => what,
            Http2Error::Calm(what) => what,
            Http2Error::Hpack(_) => "hpack_decoding_failed",
            Http2Error::Io(_) => "connection_io_failed",
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read buffer room ensured before each read.
const READ_ROOM: usize = 16 * 1024;

/// One caller's HTTP/2 connection being served. Resolves when the connection has closed
/// (the caller went, or a graceful shutdown finished) or failed.
pub struct Served<IO, F, Fut, B>
where
    Fut: Future,
{
    io: IO,
    /// Bytes read and not yet taken as frames.
    rbuf: BytesMut,
    /// Frames to write; `sent` of them are written.
    out: Vec<u8>,
    sent: usize,
    /// Written and not yet flushed (TLS buffers a write while the socket is full).
    flush: PendingFlush,
    conn: Conn<B>,
    handlers: FuturesUnordered<Handling<Fut>>,
    bodies: FuturesUnordered<NextFrame<B>>,
    handler: F,
    released: Arc<Released>,
    /// Scratch lists, kept to reuse their allocations.
    releases: Vec<(u32, usize, bool)>,
    new_requests: Vec<NewRequest>,
    preface_seen: bool,
    /// Asked to shut down gracefully (GOAWAY goes with the next turn).
    shutdown: bool,
    /// The write now due waited for one pass of the runtime (see [`Served::hold_write`]).
    held: bool,
    state: State,
}

enum State {
    Open,
    /// Closing once the last writes are out, with the error to report.
    Closing(Option<Http2Error>),
    Done,
}

impl<IO, F, Fut, B> Served<IO, F, Fut, B>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<CallerBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    pub fn new(io: IO, settings: Settings, handler: F) -> Self {
        let released = Arc::new(Released::default());
        let mut out = Vec::new();
        let conn = Conn::new(settings, released.clone(), &mut out);
        Self {
            io,
            rbuf: BytesMut::new(),
            out,
            sent: 0,
            flush: PendingFlush::default(),
            conn,
            handlers: FuturesUnordered::new(),
            bodies: FuturesUnordered::new(),
            handler,
            released,
            releases: Vec::new(),
            new_requests: Vec::new(),
            preface_seen: false,
            shutdown: false,
            held: false,
            state: State::Open,
        }
    }

    /// Sends GOAWAY: streams already open finish, no new one is taken.
    pub fn graceful_shutdown(&mut self) {
        self.shutdown = true;
    }

    fn room(&self) -> bool {
        self.out.len() - self.sent < OUT_HIGH
    }

    /// Applies every whole frame in the read buffer, while there is room to answer.
    fn take_frames(&mut self) -> Result<(), Http2Error> {
        if !self.preface_seen {
            let n = self.rbuf.len().min(PREFACE.len());
            if self.rbuf[..n] != PREFACE[..n] {
                return Err(Http2Error::protocol(Reason::PROTOCOL_ERROR, "bad_preface"));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.rbuf.advance(PREFACE.len());
            self.preface_seen = true;
        }
        while self.rbuf.len() >= HEAD_LEN && self.room() {
            let Ok(raw) = <&[u8; HEAD_LEN]>::try_from(&self.rbuf[..HEAD_LEN]) else {
                break;
            };
            let head = Head::parse(raw);
            if head.len > frame::MIN_MAX_FRAME_SIZE as usize {
                return Err(Http2Error::protocol(
                    Reason::FRAME_SIZE_ERROR,
                    "frame_too_large",
                ));
            }
            if self.rbuf.len() < HEAD_LEN + head.len {
                // The rest of the frame is still to come; make room for it at once.
                self.rbuf.reserve(HEAD_LEN + head.len - self.rbuf.len());
                break;
            }
            self.rbuf.advance(HEAD_LEN);
            let payload = self.rbuf.split_to(head.len).freeze();
            self.conn
                .recv(head, payload, &mut self.out, &mut self.new_requests)?;
        }
        Ok(())
    }

    /// Starts the handlers of the requests the last frames opened.
    fn start_requests(&mut self) {
        for r in self.new_requests.drain(..) {
            let req = Request::from_parts(r.head, CallerBody::Http2(r.body));
            self.handlers.push(Handling {
                id: r.id,
                answer: Abortable::new((self.handler)(req), r.abort),
            });
        }
    }

    /// A handler's response: its head now, and its body's first frame with it when ready.
    fn respond(&mut self, id: u32, resp: Response<B>, cx: &mut Context<'_>) {
        let (head, mut body) = resp.into_parts();
        let end = body.is_end_stream();
        let len = body.size_hint().exact();
        if !self.conn.respond(id, head, len, end, &mut self.out) || end {
            return;
        }
        match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => self.body_frame(id, frame, body),
            Poll::Pending => self.bodies.push(NextFrame {
                id,
                body: Some(body),
            }),
        }
    }

    fn body_frame(&mut self, id: u32, frame: Option<Result<Frame<Bytes>, B::Error>>, body: B) {
        match frame {
            None => self
                .conn
                .send_data(id, Bytes::new(), true, body, &mut self.out),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    self.conn.send_data(id, data, end, body, &mut self.out)
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.conn.send_trailers(id, trailers, &mut self.out);
                    }
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                self.conn.body_failed(id, &mut self.out);
            }
        }
        self.resume_bodies();
    }

    /// Bodies whose last frame has gone out are polled for their next.
    fn resume_bodies(&mut self) {
        for (id, body) in self.conn.resumed.drain(..) {
            self.bodies.push(NextFrame {
                id,
                body: Some(body),
            });
        }
    }

    /// Whether to let what is queued wait one pass of the runtime before it is written: while
    /// other streams still wait for their responses, the services' answers that arrive during
    /// this pass (the runtime looks for new events before it comes back) go out in the same
    /// write. The wait is a yield, not a timer: the runtime runs every other ready task, reads
    /// its events without blocking, and polls this connection again.
    fn hold_write(&mut self, cx: &mut Context<'_>) -> bool {
        if self.held || self.sent == self.out.len() || self.handlers.is_empty() || !self.room() {
            self.held = false;
            return false;
        }
        self.held = true;
        let mut yielded = std::pin::pin!(tokio::task::yield_now());
        yielded.as_mut().poll(cx).is_pending()
    }

    /// Writes what is queued. Ready(true) when something was written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut wrote = false;
        while self.sent < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    self.sent += n;
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if wrote => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.sent == self.out.len() && self.sent > 0 {
            self.out.clear();
            self.sent = 0;
            // A large body's burst leaves a large buffer; an idle connection keeps little.
            if self.out.capacity() > 4 * OUT_HIGH {
                self.out.shrink_to(OUT_HIGH);
            }
        }
        ready!(self.flush.poll(&mut self.io, cx, wrote))?;
        Poll::Ready(Ok(wrote))
    }

    /// Ends the connection: a connection error is sent as GOAWAY; every stream stops.
    fn close(&mut self, error: Option<Http2Error>) {
        if let Some(e) = &error {
            metrics::http_error(e.reason());
            if matches!(e, Http2Error::Io(_)) {
                // The socket failed: nothing queued can reach the caller, and waiting to
                // write it would wait for a readiness the dead socket never reports again
                // (a caller that left with streams blocked on flow control kept its
                // connection, and everything the connection held, for good).
                self.out.clear();
                self.sent = 0;
            } else {
                frame::put_goaway(&mut self.out, self.conn.last_stream(), e.code(), e.reason());
            }
        }
        self.conn.close_all();
        self.handlers = FuturesUnordered::new();
        self.bodies = FuturesUnordered::new();
        self.state = State::Closing(error);
    }

    /// One pass over everything that may have work; true if any did.
    fn turn(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        if self.shutdown && !self.conn.shutting_down() {
            self.conn.go_away(&mut self.out);
            progress = true;
        }
        if let Err(e) = self.take_frames() {
            self.close(Some(e));
            return true;
        }
        if self.room() {
            if self.rbuf.capacity() - self.rbuf.len() < READ_ROOM / 4 {
                self.rbuf.reserve(READ_ROOM);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) => {
                    // The caller closed: nothing more can reach it.
                    self.close(None);
                    return true;
                }
                Poll::Ready(Ok(_)) => {
                    progress = true;
                    if let Err(e) = self.take_frames() {
                        self.close(Some(e));
                        return true;
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.close(Some(e.into()));
                    return true;
                }
                Poll::Pending => {}
            }
        }
        if !self.new_requests.is_empty() {
            self.start_requests();
            progress = true;
        }
        while let Poll::Ready(Some((id, answer))) = self.handlers.poll_next_unpin(cx) {
            progress = true;
            if let Some(resp) = answer {
                self.respond(id, resp, cx);
            }
        }
        // Data held back while the output was full goes once it has drained (however the
        // drain was noticed: a write, or a flush that completed later).
        if self.room() && self.conn.send_blocked(&mut self.out) {
            progress = true;
        }
        if !self.conn.resumed.is_empty() {
            self.resume_bodies();
            progress = true;
        }
        while let Poll::Ready(Some((id, frame, body))) = self.bodies.poll_next_unpin(cx) {
            progress = true;
            self.body_frame(id, frame, body);
        }
        self.released.take(cx, &mut self.releases);
        if !self.releases.is_empty() {
            self.conn.released(&self.releases, &mut self.out);
            self.releases.clear();
            progress = true;
        }
        let finished = self.conn.going_away() || self.conn.peer_goaway;
        if finished && self.conn.open_streams() == 0 && self.handlers.is_empty() {
            self.close(None);
            return true;
        }
        progress
    }
}

impl<IO, F, Fut, B> Future for Served<IO, F, Fut, B>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<CallerBody>) -> Fut + Unpin,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    type Output = Result<(), Http2Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let mut progress = match this.state {
                State::Open => this.turn(cx),
                State::Closing(_) => false,
                State::Done => return Poll::Ready(Ok(())),
            };
            if matches!(this.state, State::Open) && this.hold_write(cx) {
                return Poll::Pending;
            }
            match this.poll_write(cx) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(e)) => {
                    if matches!(this.state, State::Open) {
                        this.close(Some(e.into()));
                        progress = true;
                    } else {
                        // Closing anyway; what could not be written is lost with the caller.
                        this.out.clear();
                        this.sent = 0;
                    }
                }
                Poll::Pending => {}
            }
            if let State::Closing(error) = &mut this.state {
                if this.sent < this.out.len() {
                    return Poll::Pending;
                }
                // A failed socket is not shut down (that is a write too): dropping it closes it.
                if !matches!(error, Some(Http2Error::Io(_))) {
                    let _ = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
                }
                let error = error.take();
                this.state = State::Done;
                return Poll::Ready(error.map_or(Ok(()), Err));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream's handler, stopped (before its first poll, if need be) when the caller
    /// resets the stream.
    struct Handling<Fut> {
        id: u32,
        #[pin]
        answer: Abortable<Fut>,
    }
}

impl<Fut: Future> Future for Handling<Fut> {
    type Output = (u32, Option<Fut::Output>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.answer.poll(cx).map(|r| (*this.id, r.ok()))
    }
}

/// A response body waiting for its next frame.
struct NextFrame<B> {
    id: u32,
    body: Option<B>,
}

impl<B: Body + Unpin> Future for NextFrame<B> {
    type Output = (u32, Option<Result<Frame<B::Data>, B::Error>>, B);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Pending;
        };
        let frame = ready!(Pin::new(body).poll_frame(cx));
        match self.body.take() {
            Some(body) => Poll::Ready((self.id, frame, body)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        io,
        pin::Pin,
        sync::{Arc, Mutex},
        task::{Context, Poll},
    };

    use bytes::Bytes;
    use http::{HeaderMap, Method, Request, Response};
    use http_body_util::Full;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

    use super::{Served, Settings, PREFACE};
    use crate::{
        body::CallerBody,
        h2codec::{
            frame::{self, flag, kind, Head, HEAD_LEN},
            hpack::Encoder,
        },
        io::testing::Buffering,
    };

    /// The server's end of an in-memory connection, keeping what each write carried.
    struct Recorded {
        io: DuplexStream,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl AsyncRead for Recorded {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorded {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = written {
                self.writes.lock().expect("writes").push(buf[..n].to_vec());
            }
            written
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// The streams whose HEADERS each write carried, in order.
    fn headers_by_write(writes: &[Vec<u8>]) -> Vec<Vec<u32>> {
        let mut found = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for w in writes {
            let mut streams = Vec::new();
            pending.extend_from_slice(w);
            while let Some(raw) = pending.get(..HEAD_LEN) {
                let head = Head::parse(raw.try_into().expect("nine bytes"));
                if pending.len() < HEAD_LEN + head.len {
                    break;
                }
                if head.kind == kind::HEADERS {
                    streams.push(head.stream);
                }
                pending.drain(..HEAD_LEN + head.len);
            }
            found.push(streams);
        }
        found
    }

    type Answer = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

    /// The defaults' windows, and limits no test here reaches.
    fn settings() -> Settings {
        Settings {
            max_concurrent_streams: 100,
            max_header_list_size: 16 * 1024,
            stream_window: 65_535,
            connection_window: 65_535,
        }
    }

    /// A GET of `path` on `stream`, its request ended with its headers.
    fn put_get(out: &mut Vec<u8>, encoder: &mut Encoder, stream: u32, path: &str) {
        let mut block = Vec::new();
        encoder.encode_request(
            &Method::GET,
            "https",
            Some("web"),
            path,
            &HeaderMap::new(),
            &mut block,
        );
        frame::put_header_block(out, stream, &block, true, 16_384);
    }

    /// Two streams answered in the same pass of the runtime, one by its handler at once, the
    /// other woken by a task that runs after the connection's turn: both responses leave in
    /// one write. (Written as they came, the first would go alone.)
    #[tokio::test(flavor = "current_thread")]
    async fn answers_ready_in_one_pass_share_a_write() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let io = Recorded {
            io: server,
            writes: writes.clone(),
        };
        let (wake_tx, wake_rx) = tokio::sync::oneshot::channel::<()>();
        let wake_tx = Mutex::new(Some(wake_tx));
        let wake_rx = Mutex::new(Some(wake_rx));
        let handler = move |req: Request<CallerBody>| -> Answer {
            let ok = || Response::new(Full::new(Bytes::from_static(b"ok")));
            if req.uri().path() == "/now" {
                let tx = wake_tx.lock().expect("tx").take();
                // Runs once the connection's turn has ended: a service answering meanwhile.
                tokio::spawn(async move {
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                });
                Box::pin(async move { ok() })
            } else {
                let rx = wake_rx.lock().expect("rx").take();
                Box::pin(async move {
                    if let Some(rx) = rx {
                        let _ = rx.await;
                    }
                    ok()
                })
            }
        };
        let settings = settings();
        let served = tokio::spawn(Served::new(io, settings, handler));

        let mut out = PREFACE.to_vec();
        frame::put_settings(&mut out, &[]);
        let mut encoder = Encoder::default();
        for (stream, path) in [(1, "/now"), (3, "/later")] {
            put_get(&mut out, &mut encoder, stream, path);
        }
        client.write_all(&out).await.expect("write");

        // Read until both responses' bodies ended.
        let mut got = Vec::new();
        let mut ended = 0;
        let mut buf = [0u8; 4096];
        while ended < 2 {
            let n = client.read(&mut buf).await.expect("read");
            assert!(n > 0, "the server closed early");
            got.extend_from_slice(&buf[..n]);
            ended = 0;
            let mut at = 0;
            while let Some(raw) = got.get(at..at + HEAD_LEN) {
                let head = Head::parse(raw.try_into().expect("nine bytes"));
                if got.len() < at + HEAD_LEN + head.len {
                    break;
                }
                if head.stream != 0 && head.has(flag::END_STREAM) {
                    ended += 1;
                }
                at += HEAD_LEN + head.len;
            }
        }
        drop(client);
        let _ = served.await;

        let by_write = headers_by_write(&writes.lock().expect("writes"));
        let with_headers: Vec<_> = by_write.into_iter().filter(|s| !s.is_empty()).collect();
        assert_eq!(with_headers, vec![vec![1, 3]], "responses by write");
    }

    /// A response taken whole by a stream that buffers (TLS) while its socket is full reaches
    /// the caller once the socket drains: the pending flush is retried when the connection is
    /// next polled, though nothing new is written then. (Retried only after a write, the
    /// response's last frames stayed in the buffer for good: a download through the gateway
    /// stalled a few bytes short of its end.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_pending_flush_is_retried_until_the_response_is_out() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let io = Buffering::new(server);
        let handler = |_req: Request<CallerBody>| -> Answer {
            Box::pin(async { Response::new(Full::new(Bytes::from_static(b"ok"))) })
        };
        let settings = settings();
        let served = tokio::spawn(Served::new(io, settings, handler));
        let mut out = PREFACE.to_vec();
        frame::put_settings(&mut out, &[]);
        put_get(&mut out, &mut Encoder::default(), 1, "/");
        client.write_all(&out).await.expect("write");

        let (mut pending, mut seen) = (Vec::new(), Vec::new());
        read_until(&mut client, &mut pending, &mut seen, |seen| {
            seen.iter().any(|(h, _)| {
                h.stream == 1 && h.kind == kind::DATA && h.flags & flag::END_STREAM != 0
            })
        })
        .await;
        drop(client);
        let _ = served.await;
    }

    /// Reads frames from `client` until `done` says so; every frame seen, payload included.
    async fn read_until(
        client: &mut DuplexStream,
        pending: &mut Vec<u8>,
        seen: &mut Vec<(Head, Vec<u8>)>,
        done: impl Fn(&[(Head, Vec<u8>)]) -> bool,
    ) {
        let mut buf = [0u8; 4096];
        while !done(seen) {
            while let Some(raw) = pending.get(..HEAD_LEN) {
                let head = Head::parse(raw.try_into().expect("nine bytes"));
                if pending.len() < HEAD_LEN + head.len {
                    break;
                }
                let payload = pending[HEAD_LEN..HEAD_LEN + head.len].to_vec();
                pending.drain(..HEAD_LEN + head.len);
                seen.push((head, payload));
            }
            if done(seen) {
                return;
            }
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf))
                .await
                .expect("the server went quiet")
                .expect("read");
            assert!(n > 0, "the server closed early: {seen:?}");
            pending.extend_from_slice(&buf[..n]);
        }
    }

    fn last_stream_of(payload: &[u8]) -> u32 {
        u32::from_be_bytes(payload[..4].try_into().expect("four bytes")) & 0x7fff_ffff
    }

    /// Graceful shutdown while a request is on the wire: the first GOAWAY names the highest
    /// stream id and a PING follows; the stream the caller opened before it saw them is
    /// answered, and the final GOAWAY names it once the caller has answered the PING. (A
    /// single GOAWAY naming the last stream received would leave it unanswered.)
    #[tokio::test(flavor = "current_thread")]
    async fn graceful_shutdown_takes_the_streams_already_on_the_wire() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let handler = |_req: Request<CallerBody>| -> Answer {
            Box::pin(async { Response::new(Full::new(Bytes::from_static(b"ok"))) })
        };
        let settings = settings();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let mut served = std::pin::pin!(Served::new(server, settings, handler));
            tokio::select! {
                r = served.as_mut() => return r.map_err(|e| e.to_string()),
                _ = stop_rx => served.as_mut().get_mut().graceful_shutdown(),
            }
            served.await.map_err(|e| e.to_string())
        });
        let mut encoder = Encoder::default();
        let mut request = |stream: u32, out: &mut Vec<u8>| put_get(out, &mut encoder, stream, "/");
        let ended = |stream: u32| {
            move |seen: &[(Head, Vec<u8>)]| {
                seen.iter().any(|(h, _)| {
                    h.stream == stream && h.kind == kind::DATA && h.flags & flag::END_STREAM != 0
                })
            }
        };
        let (mut pending, mut seen) = (Vec::new(), Vec::new());

        let mut out = PREFACE.to_vec();
        frame::put_settings(&mut out, &[]);
        request(1, &mut out);
        client.write_all(&out).await.expect("write");
        read_until(&mut client, &mut pending, &mut seen, ended(1)).await;

        stop_tx.send(()).expect("stop");
        let ping = |seen: &[(Head, Vec<u8>)]| {
            seen.iter()
                .find(|(h, _)| h.kind == kind::PING && h.flags & flag::ACK == 0)
                .map(|(_, p)| p.clone())
        };
        read_until(&mut client, &mut pending, &mut seen, |s| ping(s).is_some()).await;
        let goaways = |seen: &[(Head, Vec<u8>)]| -> Vec<u32> {
            seen.iter()
                .filter(|(h, _)| h.kind == kind::GOAWAY)
                .map(|(_, p)| last_stream_of(p))
                .collect()
        };
        assert_eq!(goaways(&seen), vec![(1 << 31) - 1], "the announcement");

        // A request sent before the caller read the GOAWAY, then the PING's answer.
        let payload: [u8; 8] = ping(&seen).expect("ping").try_into().expect("eight bytes");
        let mut out = Vec::new();
        request(3, &mut out);
        frame::put_ping_ack(&mut out, &payload);
        client.write_all(&out).await.expect("write");
        read_until(&mut client, &mut pending, &mut seen, |s| {
            ended(3)(s) && goaways(s).len() == 2
        })
        .await;
        assert_eq!(goaways(&seen), vec![(1 << 31) - 1, 3], "the final GOAWAY");
        // Nothing open: the connection ends cleanly.
        assert_eq!(served.await.expect("task"), Ok(()));
    }
}
