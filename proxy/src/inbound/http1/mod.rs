//! HTTP/1.1 callers, served by the gateway's own codec ([`codec`]) in the connection's task:
//! read a head, hand the request to the handler, write its response, repeat.
//!
//! A request without a body, or whose body came with its head, is handled while the
//! connection only watches for the caller going away (which drops the handler, and with it the
//! upstream request). A body still arriving is read on by the same task, one frame ahead of
//! the handler at most ([`body`]), while the response is written. The response head and its
//! first body bytes leave in one write when the body has them ready, and the connection is
//! kept for the next request only when both sides allow it and the request was read to its
//! end. A protocol switch hands the connection to the handler ([`upgrade`]).
//!
//! What hyper's server checked, this one checks the same way (README "Security: the request
//! rules enforced"); what it did not, `message.rs` still does.

mod body;
mod codec;
pub mod upgrade;

use std::{
    future::{poll_fn, Future},
    io,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::{task::AtomicWaker, FutureExt};
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, oneshot},
};

pub use self::{
    body::{Http1Body, Http1BodyError},
    codec::{fuzz_request, RequestError},
};

use self::{
    body::Piece,
    codec::{encode_response_head, BodyFraming, RequestHead, ResponseFraming},
    upgrade::{PendingUpgrade, Upgraded},
};
use super::http::Body;
use crate::{body::CallerBody, chunked, head_template::HeadTemplate, metrics};

/// How much is read at a time.
const READ_CHUNK: usize = 8 * 1024;
/// How much a connection's first read takes (on the stack, then into a buffer of this size):
/// most request heads fit.
const FIRST_READ: usize = 1024;
/// Response data up to this size is copied behind the head (or the previous frame) to leave
/// in the same write; larger frames are written as they are.
const COALESCE: usize = 16 * 1024;

/// The server's bounds, from [`super::HttpLimits`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From a head's first byte to its end.
    pub header_read_timeout: Duration,
    pub max_head: usize,
}

/// Asked of a connection by draining or the idle watchdog: finish the response in flight
/// with `Connection: close`, take no new request.
#[derive(Default)]
pub struct Shutdown {
    asked: AtomicBool,
    /// The connection's task, the one waiter there ever is, waits here between requests. A
    /// `Notify` cost a waiter list entry made and removed under its lock on every request
    /// (about 300 instructions); the flag and one registered waker do the same job.
    waiter: AtomicWaker,
}

impl Shutdown {
    pub fn ask(&self) {
        self.asked.store(true, Ordering::Release);
        self.waiter.wake();
    }

    fn asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    fn poll_asked(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.asked() {
            return Poll::Ready(());
        }
        self.waiter.register(cx.waker());
        // Asked between the check and the registration: that wake went to the waker before.
        if self.asked() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Resolves once a shutdown has been asked.
    pub async fn wait(&self) {
        poll_fn(|cx| self.poll_asked(cx)).await
    }
}

/// Why a connection ended other than cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{}", .0.reason())]
    Refused(RequestError),
    #[error("request head not complete within the header read timeout")]
    HeaderTimeout,
    #[error("connection closed in the middle of a request head")]
    IncompleteHead,
    #[error("response body failed: {0}")]
    ResponseBody(String),
    #[error("response body length differs from its content-length")]
    ResponseLength,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Serves HTTP/1.1 on `io` until the caller closes, a shutdown is asked and the response in
/// flight is written, or the connection fails. `buf` holds what was read before (the bytes
/// HTTP/2 detection looked at).
///
/// Not an `async fn`: its arguments would be kept twice in the connection's future (once as
/// passed, once as moved into the body), and the caller's TLS stream is 1.3 KB of it.
#[allow(clippy::manual_async_fn)]
pub fn serve<IO, F, Fut>(
    mut io: IO,
    mut buf: BytesMut,
    limits: Limits,
    handler: F,
    shutdown: Arc<Shutdown>,
) -> impl Future<Output = Result<(), ServeError>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<CallerBody>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    async move {
        // Grown by the first response and kept: an idle connection that never asked holds none.
        let mut out = Vec::new();
        // The caller's last request's fields: its next request most likely has the same names.
        let mut template = HeadTemplate::default();
        loop {
            let head = match read_head(&mut io, &mut buf, &limits, &shutdown, &mut template).await?
            {
                None => return Ok(()),
                Some(Ok(head)) => head,
                Some(Err(e)) => {
                    metrics::http_error(e.reason());
                    Box::pin(refuse(&mut io, &mut out, e)).await;
                    return Err(ServeError::Refused(e));
                }
            };
            let RequestHead {
                method,
                uri,
                version,
                headers,
                framing,
                keep_alive,
                expects_continue,
            } = head;
            let mut pump = None;
            let body = match framing {
                BodyFraming::Empty => Http1Body::empty(),
                BodyFraming::Length(n) if buf.len() as u64 >= n => {
                    // Within the buffer, so within usize.
                    Http1Body::full(buf.split_to(n as usize).freeze())
                }
                BodyFraming::Length(n) => {
                    let (tx, rx) = mpsc::channel(1);
                    pump = Some((Reading::Length(n), tx));
                    Http1Body::streamed(rx, Some(n))
                }
                BodyFraming::Chunked => {
                    let (tx, rx) = mpsc::channel(1);
                    pump = Some((Reading::Chunked(chunked::ChunkedState::Size), tx));
                    Http1Body::streamed(rx, None)
                }
            };
            let mut req = Request::new(CallerBody::Http1(body));
            *req.method_mut() = method;
            *req.uri_mut() = uri;
            *req.version_mut() = version;
            *req.headers_mut() = headers;
            let switch = crate::headers::is_upgrade(&req).then(|| {
                let (tx, rx) = oneshot::channel();
                req.extensions_mut().insert(PendingUpgrade::new(rx));
                tx
            });
            let asked = Asked {
                head: req.method() == Method::HEAD,
                version,
                keep_alive,
            };
            // Pinned here and lent out, so that the connection's future holds it once.
            let mut handling = pin!(handler(req));

            let (written, body_read) = match pump {
                None => {
                    let Some(resp) =
                        answer_or_caller_gone(&mut io, &mut buf, handling.as_mut(), &limits).await
                    else {
                        return Ok(());
                    };
                    (
                        respond(&mut io, &mut out, resp, asked, &shutdown).await?,
                        true,
                    )
                }
                Some((reading, frames)) => {
                    // Boxed: few requests stream a body, and this state would otherwise sit in
                    // every connection's future, idle ones included.
                    let (back, result) = Box::pin(respond_while_reading(
                        io,
                        &mut buf,
                        &mut out,
                        (reading, frames, expects_continue),
                        handling.as_mut(),
                        asked,
                        &shutdown,
                    ))
                    .await;
                    io = back;
                    result?
                }
            };
            match written {
                Written::Switched => {
                    if let Some(tx) = switch {
                        let _ = tx.send(Upgraded::new(buf.split().freeze(), Box::new(io)));
                    }
                    return Ok(());
                }
                Written::KeepAlive if body_read => {}
                Written::KeepAlive | Written::Close => {
                    let _ = io.shutdown().await;
                    return Ok(());
                }
            }
        }
    }
}

/// The response to a request whose body is still arriving, written while the body is read on
/// to the handler. Gives back the connection, and whether the body was read to its end.
async fn respond_while_reading<IO, Fut>(
    io: IO,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    (reading, frames, expects_continue): (Reading, mpsc::Sender<Piece>, bool),
    handling: Pin<&mut Fut>,
    asked: Asked,
    shutdown: &Shutdown,
) -> (IO, Result<(Written, bool), ServeError>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    Fut: Future<Output = Response<Body>>,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let result = async {
        if expects_continue {
            wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            wr.flush().await?;
        }
        // Set when the body's last byte has left the connection's buffer, which is what lets
        // the connection carry another request, whether or not the handler took the end yet.
        let ended = AtomicBool::new(false);
        let mut read = pin!(read_body(&mut rd, buf, reading, frames, &ended));
        let mut answer = pin!(async {
            let resp = handling.await;
            respond(&mut wr, out, resp, asked, shutdown).await
        });
        let mut body_read = false;
        loop {
            tokio::select! {
                biased;
                written = &mut answer => break written.map(|w| (w, body_read || ended.load(Ordering::Relaxed))),
                complete = &mut read, if !body_read => {
                    if !complete {
                        // The caller's body failed: the handler learns it from its body; the
                        // connection cannot be reused.
                        break answer.await.map(|w| (w, false));
                    }
                    body_read = true;
                }
            }
        }
    }
    .await;
    (rd.unsplit(wr), result)
}

/// What the caller's request line and fields allow of the response.
#[derive(Debug, Clone, Copy)]
struct Asked {
    head: bool,
    version: Version,
    keep_alive: bool,
}

/// How a response left.
enum Written {
    KeepAlive,
    Close,
    /// A 101: the connection now belongs to the handler.
    Switched,
}

/// Reads until a request head is complete. `None`: the caller closed between requests, or a
/// shutdown was asked while no request was open. The header read timeout runs from a head's
/// first byte: between requests the connection is the idle watchdog's.
async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    limits: &Limits,
    shutdown: &Shutdown,
    template: &mut HeadTemplate,
) -> Result<Option<Result<RequestHead, RequestError>>, ServeError> {
    let mut deadline = None;
    loop {
        match codec::parse_request(buf, limits.max_head, template) {
            Ok(Some(head)) => return Ok(Some(Ok(head))),
            Err(e) => return Ok(Some(Err(e))),
            Ok(None) => {}
        }
        // A connection's first read lands on the stack (see `poll_first_read`); later ones
        // go straight into the buffer.
        let first = buf.capacity() == 0;
        if !first {
            buf.reserve(READ_CHUNK);
        }
        let n = if buf.is_empty() {
            let read = poll_fn(|cx| {
                if first {
                    poll_first_read(&mut *io, buf, cx)
                } else {
                    tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)
                }
            });
            tokio::select! {
                biased;
                _ = shutdown.wait() => return Ok(None),
                read = read => read?,
            }
        } else {
            let deadline = *deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + limits.header_read_timeout);
            match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
                Ok(read) => read?,
                Err(_) => return Err(ServeError::HeaderTimeout),
            }
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ServeError::IncompleteHead)
            };
        }
        if first && n == FIRST_READ {
            // The caller sent more than the small first read took: what has already arrived
            // is read now, so that the head and the body's start are taken as one.
            buf.reserve(READ_CHUNK);
            let _ = io.read_buf(buf).now_or_never();
        }
    }
}

/// A connection's first read: onto the stack, then into a buffer sized for what came. The
/// buffer is made only once bytes have arrived, so an idle connection that has not sent a
/// request (thousands of them, in a flood or a pool a caller keeps warm) holds none: 1 KiB
/// less per idle connection. The landing array lives only for one poll, not in the
/// connection's future.
fn poll_first_read<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<usize>> {
    let mut landing = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
    let mut read = tokio::io::ReadBuf::uninit(&mut landing);
    std::task::ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let got = read.filled();
    if !got.is_empty() {
        buf.reserve(FIRST_READ);
        buf.extend_from_slice(got);
    }
    Poll::Ready(Ok(got.len()))
}

/// Waits for the handler's response while reading on, so that a caller who goes away drops
/// the request (and its upstream exchange) instead of leaving it to finish for nobody. What a
/// caller pipelines meanwhile is kept, up to one head's worth. `None`: the caller went.
async fn answer_or_caller_gone<IO, Fut>(
    io: &mut IO,
    buf: &mut BytesMut,
    mut handling: Pin<&mut Fut>,
    limits: &Limits,
) -> Option<Response<Body>>
where
    IO: AsyncRead + Unpin,
    Fut: Future<Output = Response<Body>>,
{
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            resp = &mut handling => return Some(resp),
            read = io.read_buf(buf), if buf.len() < limits.max_head => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// How the rest of a request body is delimited.
enum Reading {
    Length(u64),
    Chunked(chunked::ChunkedState),
}

/// Reads a request body on to the handler. True when it was read to its end, as the caller's
/// framing delimits it.
async fn read_body<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    mut reading: Reading,
    frames: mpsc::Sender<Piece>,
    ended: &AtomicBool,
) -> bool {
    loop {
        let piece = match &mut reading {
            Reading::Length(0) => Piece::End,
            Reading::Length(left) if !buf.is_empty() => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                Piece::Frame(Frame::data(buf.split_to(n).freeze()))
            }
            Reading::Length(_) => match read_more(rd, buf).await {
                true => continue,
                false => Piece::Failed(Http1BodyError::Incomplete),
            },
            Reading::Chunked(state) => match chunked::decode_chunk(state, buf) {
                Ok(Some(chunked::Chunk::Data(d))) => Piece::Frame(Frame::data(d)),
                Ok(Some(chunked::Chunk::Trailers(t))) => {
                    // Trailers end the body; the end follows them on the next turn.
                    reading = Reading::Length(0);
                    Piece::Frame(Frame::trailers(t))
                }
                Ok(Some(chunked::Chunk::End)) => Piece::End,
                Ok(None) => match read_more(rd, buf).await {
                    true => continue,
                    false => Piece::Failed(Http1BodyError::Incomplete),
                },
                Err(_) => Piece::Failed(Http1BodyError::BadChunk),
            },
        };
        let end = match &piece {
            Piece::End => {
                ended.store(true, Ordering::Relaxed);
                Some(true)
            }
            Piece::Failed(_) => Some(false),
            Piece::Frame(_) => None,
        };
        // The handler dropped the body: it will not be read on, and the connection cannot be
        // reused with the rest of it unread.
        if frames.send(piece).await.is_err() {
            return end == Some(true);
        }
        if let Some(complete) = end {
            return complete;
        }
    }
}

/// False at the end of the connection (or on an error, which the body reports as cut short).
async fn read_more<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> bool {
    buf.reserve(READ_CHUNK);
    matches!(rd.read_buf(buf).await, Ok(n) if n > 0)
}

/// Writes a response: the head, then the body framed as the request and the body allow.
async fn respond<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    asked: Asked,
    shutdown: &Shutdown,
) -> Result<Written, ServeError> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        out.clear();
        encode_response_head(
            out,
            status,
            &parts.headers,
            ResponseFraming::None,
            false,
            None,
        );
        wr.write_all(out).await?;
        wr.flush().await?;
        return Ok(Written::Switched);
    }
    let bodiless = asked.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut close = !asked.keep_alive || shutdown.asked() || says_close(&parts.headers);
    let framing = if bodiless {
        ResponseFraming::None
    } else if body.is_end_stream() {
        ResponseFraming::Length(0)
    } else if let Some(n) = body.size_hint().exact() {
        ResponseFraming::Length(n)
    } else if asked.version == Version::HTTP_10 {
        close = true;
        ResponseFraming::UntilClose
    } else {
        ResponseFraming::Chunked
    };
    let date = (!parts.headers.contains_key(header::DATE)).then(date::now);
    out.clear();
    encode_response_head(
        out,
        status,
        &parts.headers,
        framing,
        close,
        date.as_ref().map(|d| d.as_bytes()),
    );
    let mut left = match framing {
        ResponseFraming::Length(n) => Some(n),
        _ => None,
    };
    let mut trailers: Option<HeaderMap> = None;
    if framing != ResponseFraming::None {
        loop {
            // What the body has ready goes behind what is already queued; the queue is
            // written only when the body would wait.
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if !out.is_empty() {
                        wr.write_all(out).await?;
                        wr.flush().await?;
                        out.clear();
                    }
                    poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let frame = match frame {
                None => break,
                Some(Err(e)) => return Err(ServeError::ResponseBody(e.to_string())),
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            if let Some(left) = &mut left {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or(ServeError::ResponseLength)?;
            }
            if framing == ResponseFraming::Chunked {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            put_data(wr, out, data).await?;
            if framing == ResponseFraming::Chunked {
                out.extend_from_slice(b"\r\n");
            }
        }
        if left.is_some_and(|l| l > 0) {
            return Err(ServeError::ResponseLength);
        }
        if framing == ResponseFraming::Chunked {
            out.extend_from_slice(&chunked::encode_trailers(&trailers.unwrap_or_default()));
        }
    }
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    wr.flush().await?;
    Ok(if close {
        Written::Close
    } else {
        Written::KeepAlive
    })
}

/// Queues `data` behind `out`, or writes both when it is large.
async fn put_data<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Vec<u8>,
    data: Bytes,
) -> io::Result<()> {
    if data.len() <= COALESCE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    wr.write_all(&data).await
}

fn says_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// A refused head's answer: its status and reason, then the connection closes.
async fn refuse<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut Vec<u8>, e: RequestError) {
    let reason = e.reason();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    headers.insert(
        crate::headers::L5D_PROXY_ERROR,
        http::HeaderValue::from_static(reason),
    );
    out.clear();
    let date = date::now();
    encode_response_head(
        out,
        e.status(),
        &headers,
        ResponseFraming::Length(reason.len() as u64 + 1),
        true,
        Some(date.as_bytes()),
    );
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
    if io.write_all(out).await.is_ok() {
        let _ = io.flush().await;
        let _ = io.shutdown().await;
    }
}

/// The `Date` field for responses the gateway makes itself (RFC 9110 §6.6.1), formatted once
/// a second per thread.
mod date {
    use std::{cell::RefCell, time::SystemTime};

    pub struct Date(String);

    impl Date {
        pub fn as_bytes(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }

    thread_local! {
        static LAST: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub fn now() -> Date {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if last.0 != secs || last.1.is_empty() {
                *last = (secs, httpdate::fmt_http_date(now));
            }
            Date(last.1.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_shutdown_reaches_a_connection_waiting_or_not_yet_waiting() {
        // Asked while the connection waits between requests: it wakes.
        let shutdown = Arc::new(Shutdown::default());
        let waiting = tokio::spawn({
            let s = shutdown.clone();
            async move { s.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        shutdown.ask();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting connection was not woken")
            .expect("the waiting task failed");
        // Asked while it was busy with a request: the next wait returns at once, every time.
        let shutdown = Shutdown::default();
        shutdown.ask();
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
                .await
                .expect("a shutdown asked before the wait was lost");
        }
    }
}
