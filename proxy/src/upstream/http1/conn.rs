//! One HTTP/1.1 connection to a service and the two directions of an exchange on it: the
//! request going out ([`Outgoing`], head then body) and the response coming in (read into one
//! buffer, parsed by [`parse_response`](super::codec::parse_response)). Whoever holds the
//! connection polls it; there is no task of its own.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll, Waker},
};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use tokio::{
    io::AsyncWrite,
    time::{Instant, Sleep},
};

use super::{
    codec::{self, RequestFraming, ResponseTemplate},
    ReqBody,
};
use crate::upstream::UpstreamIo;

/// First read buffer of a connection; it grows (to [`READ_MAX`]) while reads fill it.
const READ_MIN: usize = 8 * 1024;
/// Largest read: what a slow caller can make the gateway hold per upstream connection is
/// this and the kernel's buffers.
const READ_MAX: usize = 64 * 1024;

pub(crate) struct Conn {
    io: UpstreamIo,
    /// What has been read and not yet parsed or handed on.
    pub(super) rbuf: BytesMut,
    /// How much the next read asks for: doubled each time a read fills it, so a large body
    /// travels in large reads and a small exchange keeps a small buffer.
    read_size: usize,
    /// The service closed its side (or the socket failed): nothing more will arrive.
    pub(super) eof: bool,
    /// The last response's header fields, from which the next one's are built.
    pub(super) template: ResponseTemplate,
    /// The response deadline of the request in flight. One timer lives with the connection
    /// and is moved later for each request, which for a timer still in the runtime's wheel
    /// is one atomic update; a timer made per request was put in the wheel and taken out of
    /// it under the wheel's lock, about 1k instructions a request. A timer that runs out
    /// while the connection idles in the pool wakes its last request's task once, for
    /// nothing; the next request puts it back in the wheel.
    pub(super) deadline: Pin<Box<Sleep>>,
}

impl Conn {
    pub(super) fn new(io: UpstreamIo) -> Self {
        Self {
            io,
            rbuf: BytesMut::new(),
            read_size: READ_MIN,
            eof: false,
            template: ResponseTemplate::default(),
            deadline: Box::pin(tokio::time::sleep_until(Instant::now())),
        }
    }

    /// Reads once more into the buffer. `Ok(0)`: the service closed its side.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.eof {
            return Poll::Ready(Ok(0));
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
            self.rbuf.reserve(self.read_size);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        match ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        )) {
            Ok(n) => {
                if n == 0 {
                    self.eof = true;
                } else if n == room {
                    self.read_size = (self.read_size * 2).min(READ_MAX);
                }
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                self.eof = true;
                Poll::Ready(Err(e))
            }
        }
    }

    /// Whether an idle connection can carry another request: checked without waiting, so a
    /// close (or stray bytes, which would be taken for the next response) that arrived while
    /// it sat in the pool is noticed before a request is written to it.
    pub(super) fn reusable(&mut self) -> bool {
        if self.eof || !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.poll_fill(&mut cx), Poll::Pending)
    }

    /// Lets a pooled connection give back the memory a large body made it take.
    pub(super) fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > READ_MIN {
            self.rbuf = BytesMut::new();
            self.read_size = READ_MIN;
        }
    }
}

/// Why a request could not be written.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error("writing to the service failed: {0}")]
    Io(io::Error),
    /// The caller's body failed (its connection broke, or it was reset).
    #[error("the caller's request body failed")]
    Body,
    /// The caller's body ended before the length it declared, or ran past it.
    #[error("the caller's request body did not match its length")]
    Length,
}

/// A request on its way out: the head, then the caller's body frames as they come, framed as
/// the head said. Up to four pieces wait to be written, and go in one vectored write.
pub(super) struct Outgoing {
    pieces: [Bytes; 4],
    /// Pieces `first..last` are still to be written.
    first: usize,
    last: usize,
    body: Option<ReqBody>,
    framing: RequestFraming,
    /// Bytes of body still owed under `Content-Length` framing.
    owed: u64,
    /// Whether any byte reached the socket (before that the request can go elsewhere).
    pub(super) wrote_any: bool,
    /// Head and body written and flushed.
    pub(super) done: bool,
    /// Writing stopped before the end (see [`Outgoing::abandon`]).
    pub(super) abandoned: bool,
}

impl Outgoing {
    pub(super) fn new(head: Bytes, body: Option<ReqBody>, framing: RequestFraming) -> Self {
        Self {
            pieces: [head, Bytes::new(), Bytes::new(), Bytes::new()],
            first: 0,
            last: 1,
            body,
            framing,
            owed: match framing {
                RequestFraming::Length(n) => n,
                _ => 0,
            },
            wrote_any: false,
            done: false,
            abandoned: false,
        }
    }

    /// The caller's body, if not a byte of it was taken yet (for another endpoint).
    pub(super) fn take_untouched_body(&mut self) -> Option<ReqBody> {
        (!self.wrote_any).then(|| self.body.take()).flatten()
    }

    /// Stops writing (after a write error): what was queued and the rest of the body go.
    pub(super) fn abandon(&mut self) {
        self.body = None;
        self.first = 0;
        self.last = 0;
        self.done = true;
        self.abandoned = true;
    }

    fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.pieces[self.last] = piece;
            self.last += 1;
        }
    }

    /// Writes what it can. Ready(Ok) once everything has been written and flushed.
    pub(super) fn poll_send(
        &mut self,
        io: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.first < self.last {
                let n = {
                    let mut slices = [IoSlice::new(&[]); 4];
                    for (s, p) in slices.iter_mut().zip(&self.pieces[self.first..self.last]) {
                        *s = IoSlice::new(p);
                    }
                    let count = self.last - self.first;
                    ready!(Pin::new(&mut io.io).poll_write_vectored(cx, &slices[..count]))
                        .map_err(WriteError::Io)?
                };
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.wrote_any = true;
                self.advance(n);
                continue;
            }
            // Everything queued is out: the head goes before the body is first polled, so a
            // request whose head could not be written still has its body for another try.
            let Some(body) = self.body.as_mut() else {
                ready!(Pin::new(&mut io.io).poll_flush(cx)).map_err(WriteError::Io)?;
                self.done = true;
                return Poll::Ready(Ok(()));
            };
            let frame = match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    ready!(Pin::new(&mut io.io).poll_flush(cx)).map_err(WriteError::Io)?;
                    return Poll::Pending;
                }
                Poll::Ready(f) => f,
            };
            self.first = 0;
            self.last = 0;
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.queue_data(data)?,
                    Err(frame) => {
                        // Trailers end the body; only the chunked coding can carry them.
                        if let (Ok(trailers), RequestFraming::Chunked) =
                            (frame.into_trailers(), self.framing)
                        {
                            self.push(codec::encode_trailers(&trailers));
                            self.framing = RequestFraming::None;
                        }
                        self.finish()?;
                    }
                },
                Some(Err(_)) => return Poll::Ready(Err(WriteError::Body)),
                None => self.finish()?,
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            RequestFraming::Chunked => {
                self.push(codec::chunk_size_line(data.len()));
                self.push(data);
                self.push(Bytes::from_static(b"\r\n"));
            }
            _ => {
                self.owed = self
                    .owed
                    .checked_sub(data.len() as u64)
                    .ok_or(WriteError::Length)?;
                self.push(data);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), WriteError> {
        self.body = None;
        match self.framing {
            RequestFraming::Chunked => self.push(Bytes::from_static(b"0\r\n\r\n")),
            _ if self.owed != 0 => return Err(WriteError::Length),
            _ => {}
        }
        Ok(())
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.first < self.last {
            let p = &mut self.pieces[self.first];
            let k = n.min(p.len());
            p.advance(k);
            n -= k;
            if p.is_empty() {
                *p = Bytes::new();
                self.first += 1;
            }
        }
    }
}
