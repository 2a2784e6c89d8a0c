//! I/O wrappers: [`Metered`] counts bytes each way, for a caller's connection
//! ([`CountingIo`]: Prometheus counters and the connection's [`Activity`] for its watchdog) or
//! a connection to an endpoint ([`MeteredTcp`]);
//! [`Rewind`] gives back bytes read ahead; [`PendingFlush`] keeps a flush going until it
//! completes.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{metrics::UpstreamConnMetrics, socket::Socket, watchdog::Activity};

/// What a [`Metered`] stream reports its bytes to.
pub trait Meter {
    fn read(&mut self, n: usize);
    /// Every write's outcome, pending included (the watchdog notes blocked writers).
    fn wrote(&mut self, res: &Poll<io::Result<usize>>);
}

/// A stream whose bytes each way go to its [`Meter`].
pub struct Metered<T, M> {
    inner: T,
    meter: M,
}

/// A caller's connection: bytes counted into its `tcp_*` counters and noted as activity for
/// its watchdog.
pub type CountingIo<T> = Metered<T, CallerMeter>;

/// A connection to an endpoint, counted in the outbound `tcp_*` families for as long as it
/// lives (its gauge and close count are kept by the metrics it owns).
pub type MeteredTcp = Metered<Socket, UpstreamConnMetrics>;

/// Before counters are attached (the TLS handshake, when the caller's identity, and so the
/// labels, are not known yet) it keeps running totals.
pub struct CallerMeter {
    counters: Option<(Counter, Counter)>,
    pending_read: u64,
    pending_write: u64,
    activity: Arc<Activity>,
}

impl<T> CountingIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            meter: CallerMeter {
                counters: None,
                pending_read: 0,
                pending_write: 0,
                activity,
            },
        }
    }

    pub fn attach(&mut self, read: Counter, write: Counter) {
        let m = &mut self.meter;
        read.increment(std::mem::take(&mut m.pending_read));
        write.increment(std::mem::take(&mut m.pending_write));
        m.counters = Some((read, write));
    }
}

impl Meter for CallerMeter {
    fn read(&mut self, n: usize) {
        self.activity.moved(n);
        match &self.counters {
            Some((r, _)) => r.increment(n as u64),
            None => self.pending_read += n as u64,
        }
    }

    fn wrote(&mut self, res: &Poll<io::Result<usize>>) {
        match res {
            Poll::Ready(Ok(n)) => {
                self.activity.moved(*n);
                self.activity.write_unblocked();
                let n = *n as u64;
                match &self.counters {
                    Some((_, w)) => w.increment(n),
                    None => self.pending_write += n,
                }
            }
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl MeteredTcp {
    pub fn new(inner: tokio::net::TcpStream, metrics: UpstreamConnMetrics) -> Self {
        Self {
            inner: Socket::from(inner),
            meter: metrics,
        }
    }
}

impl Meter for UpstreamConnMetrics {
    fn read(&mut self, n: usize) {
        self.read_bytes.increment(n as u64);
    }

    fn wrote(&mut self, res: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = res {
            self.write_bytes.increment(*n as u64);
        }
    }
}

impl<T: AsyncRead + Unpin, M: Meter + Unpin> AsyncRead for Metered<T, M> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.meter.read(n);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin, M: Meter + Unpin> AsyncWrite for Metered<T, M> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.meter.wrote(&res);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.meter.wrote(&res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream that first reads `ahead` again: what was read to decide how to serve it.
pub struct Rewind<T> {
    ahead: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(ahead: Bytes, inner: T) -> Self {
        Self { ahead, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether a stream holds written bytes a flush has yet to put on the wire. A TLS stream takes a
/// write into its own buffer while the socket is full and reports it written; only a flush
/// sends those records. A flush left pending must be retried on every poll until it completes,
/// not only after the next write: the last frames of a response, with nothing written after
/// them, would otherwise stay in the buffer for good.
#[derive(Debug, Default)]
pub struct PendingFlush(bool);

impl PendingFlush {
    /// Flushes `io` if anything was written (`wrote`, or before and not yet flushed).
    pub fn poll<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        wrote: bool,
    ) -> Poll<io::Result<()>> {
        self.0 |= wrote;
        if self.0 {
            std::task::ready!(Pin::new(io).poll_flush(cx))?;
            self.0 = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// In-memory streams for tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        io,
        pin::Pin,
        task::{ready, Context, Poll},
    };

    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

    /// One end of an in-memory connection that buffers as a TLS stream does: a write is taken
    /// whole into its buffer and reported written, and the bytes reach the wire only with a
    /// flush, which after each write finds the socket full once (waking the task, as the
    /// socket's readiness would) before it delivers.
    pub(crate) struct Buffering {
        io: DuplexStream,
        held: Vec<u8>,
        full_once: bool,
    }

    impl Buffering {
        pub(crate) fn new(io: DuplexStream) -> Self {
            Self {
                io,
                held: Vec::new(),
                full_once: false,
            }
        }
    }

    impl AsyncRead for Buffering {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Buffering {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.held.extend_from_slice(buf);
            self.full_once = true;
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if std::mem::take(&mut self.full_once) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let this = &mut *self;
            while !this.held.is_empty() {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, &this.held))?;
                this.held.drain(..n);
            }
            Pin::new(&mut this.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            ready!(self.as_mut().poll_flush(cx))?;
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }
}
