//! I/O wrappers: [`Metered`] counts bytes each way, for a caller's connection
//! ([`CountingIo`]: Prometheus counters and the connection's [`Activity`] for its watchdog) or
//! a connection to an endpoint ([`MeteredTcp`]); [`WriteBatch`] gathers writes until a flush;
//! [`Rewind`] gives back bytes read ahead.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{metrics::UpstreamConnMetrics, watchdog::Activity};

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
pub type MeteredTcp = Metered<tokio::net::TcpStream, UpstreamConnMetrics>;

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
            inner,
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

/// Gathers writes until whoever drives the writer says the turn is over, so that what was
/// produced in one turn reaches the socket in one write. The HTTP/2 server needs it: h2
/// flushes after every DATA frame over 256 bytes (it chains such frames instead of copying
/// them), which over TLS made each response a record and a system call of its own, however
/// many responses were ready at once. The writer's flushes are deferred; [`BatchFlusher`]
/// writes everything out at the end of the turn. Shutdown is never deferred.
pub struct WriteBatch<T> {
    shared: Arc<Mutex<Batch<T>>>,
}

/// The other handle on a [`WriteBatch`]: ends a turn.
pub struct BatchFlusher<T> {
    shared: Arc<Mutex<Batch<T>>>,
}

struct Batch<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
}

/// Most bytes gathered before they are written without waiting for the end of the turn;
/// larger writes go straight through.
const BATCH_MAX: usize = 64 * 1024;
/// A buffer grown past this is let go once written, so an idle connection holds none.
const BATCH_KEEP: usize = 16 * 1024;

/// `inner` as a batching writer, and the handle that ends each turn.
pub fn write_batch<T>(inner: T) -> (WriteBatch<T>, BatchFlusher<T>) {
    let shared = Arc::new(Mutex::new(Batch {
        inner,
        buf: Vec::new(),
        sent: 0,
    }));
    (
        WriteBatch {
            shared: shared.clone(),
        },
        BatchFlusher { shared },
    )
}

fn lock<T>(m: &Mutex<Batch<T>>) -> std::sync::MutexGuard<'_, Batch<T>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: AsyncWrite + Unpin> Batch<T> {
    /// Writes out what was gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        if self.buf.capacity() > BATCH_KEEP {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_drain_and_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<T: AsyncWrite + Unpin> BatchFlusher<T> {
    /// Ends the turn: everything gathered is written and flushed.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.shared).poll_drain_and_flush(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteBatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteBatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut b = lock(&self.shared);
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if !b.buf.is_empty() && b.buf.len() + total > BATCH_MAX {
            ready!(b.poll_drain(cx))?;
        }
        if b.buf.is_empty() && total >= BATCH_MAX {
            return Pin::new(&mut b.inner).poll_write_vectored(cx, bufs);
        }
        for s in bufs {
            b.buf.extend_from_slice(s);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Deferred to the end of the turn ([`BatchFlusher::poll_flush`]).
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut b = lock(&self.shared);
        ready!(b.poll_drain_and_flush(cx))?;
        Pin::new(&mut b.inner).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A writer that records each write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<usize>>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(data.len());
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_turn_of_writes_and_flushes_leaves_in_one_write() {
        let rec = Recorder::default();
        let writes = rec.writes.clone();
        let (mut w, flusher) = write_batch(rec);
        for _ in 0..5 {
            // As h2 does per response: a frame, then a flush.
            w.write_all(&[0u8; 1000]).await.unwrap();
            w.flush().await.unwrap();
        }
        assert!(writes.lock().unwrap().is_empty(), "flushes are deferred");
        poll_fn(|cx| flusher.poll_flush(cx)).await.unwrap();
        assert_eq!(*writes.lock().unwrap(), vec![5000]);
        // Past the bound, what was gathered goes first, and a large write straight through.
        w.write_all(&[0u8; 100]).await.unwrap();
        w.write_all(&vec![0u8; BATCH_MAX]).await.unwrap();
        assert_eq!(*writes.lock().unwrap(), vec![5000, 100, BATCH_MAX]);
        // Shutdown is never deferred.
        w.write_all(&[0u8; 10]).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(*writes.lock().unwrap(), vec![5000, 100, BATCH_MAX, 10]);
    }
}
