//! An I/O wrapper that counts bytes each way into Prometheus counters and notes the
//! connection's [`Activity`] for its watchdog.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::watchdog::Activity;

/// Counts bytes read and written. Before counters are attached (the TLS handshake, when the
/// caller's identity, and so the labels, are not known yet) it keeps running totals.
pub struct CountingIo<T> {
    inner: T,
    counters: Option<(Counter, Counter)>,
    pending_read: u64,
    pending_write: u64,
    activity: Arc<Activity>,
}

impl<T> CountingIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            counters: None,
            pending_read: 0,
            pending_write: 0,
            activity,
        }
    }

    pub fn attach(&mut self, read: Counter, write: Counter) {
        read.increment(std::mem::take(&mut self.pending_read));
        write.increment(std::mem::take(&mut self.pending_write));
        self.counters = Some((read, write));
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

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.activity.moved(n as usize);
            match &self.counters {
                Some((r, _)) => r.increment(n),
                None => self.pending_read += n,
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&res);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&res);
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
