//! What a peer sent on one HTTP/2 stream, handed from the connection to whoever reads the
//! body: a caller's request body (the server), an endpoint's response body (the client).
//! Each chunk read returns its bytes to the peer's flow-control windows, so a body nobody
//! reads holds at most one stream window (and all of them one connection window) in memory.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::frame::Reason;

/// Why a received body stopped short.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum Http2BodyError {
    #[error("the peer reset the stream ({0})")]
    Reset(Reason),
    #[error("body does not match its content-length")]
    ContentLength,
    #[error("the connection closed before the body ended")]
    ConnectionClosed,
}

/// What a stream's incoming data and its reader share.
pub struct Inflow {
    state: Mutex<InflowState>,
    released: Arc<Released>,
    id: u32,
}

#[derive(Default)]
struct InflowState {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    end: bool,
    failed: Option<Http2BodyError>,
    /// The reader, waiting for more.
    waker: Option<Waker>,
    /// The reader is gone: the connection returns whatever arrives at once.
    dropped: bool,
}

/// Bytes readers have taken, to be given back to the caller as WINDOW_UPDATEs; kept by the
/// connection, which the readers wake.
#[derive(Default)]
pub struct Released {
    inner: Mutex<ReleasedInner>,
}

#[derive(Default)]
struct ReleasedInner {
    /// (stream, bytes, whether the stream's reader is gone).
    events: Vec<(u32, usize, bool)>,
    waker: Option<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A reader that panicked while holding the lock left consistent state: every update
    // is a single push or assignment.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Released {
    fn push(&self, id: u32, n: usize, dropped: bool) {
        let mut inner = lock(&self.inner);
        inner.events.push((id, n, dropped));
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }

    /// Takes what readers released since the last call, and registers the connection for
    /// the next release.
    pub fn take(&self, cx: &mut Context<'_>, into: &mut Vec<(u32, usize, bool)>) {
        let mut inner = lock(&self.inner);
        into.append(&mut inner.events);
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
    }
}

impl Inflow {
    pub fn new(id: u32, released: Arc<Released>) -> Arc<Inflow> {
        Arc::new(Inflow {
            state: Mutex::new(InflowState::default()),
            released,
            id,
        })
    }

    /// Data received on the stream. False when the reader is gone (the caller then gets
    /// the bytes back at once).
    pub fn push(&self, data: Bytes, end: bool) -> bool {
        let mut s = lock(&self.state);
        if s.dropped {
            return false;
        }
        if !data.is_empty() {
            s.chunks.push_back(data);
        }
        s.end |= end;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        true
    }

    pub fn trailers(&self, trailers: HeaderMap) {
        let mut s = lock(&self.state);
        s.trailers = Some(trailers);
        s.end = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    pub fn fail(&self, e: Http2BodyError) {
        let mut s = lock(&self.state);
        // A body that had ended is whole, whatever happens to the stream after.
        if !s.end {
            s.failed.get_or_insert(e);
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

/// The body a stream's reader gets.
pub struct RecvBody {
    inflow: Option<Arc<Inflow>>,
    /// The declared content-length still to come (the connection holds the stream to it).
    left: Option<u64>,
}

impl RecvBody {
    /// A stream that ended with its headers.
    pub fn empty() -> RecvBody {
        RecvBody {
            inflow: None,
            left: Some(0),
        }
    }

    pub fn streamed(inflow: Arc<Inflow>, content_length: Option<u64>) -> RecvBody {
        RecvBody {
            inflow: Some(inflow),
            left: content_length,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        match &self.inflow {
            None => true,
            Some(i) => {
                let s = lock(&i.state);
                s.end && s.chunks.is_empty() && s.trailers.is_none() && s.failed.is_none()
            }
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) if self.inflow.is_none() || n > 0 => SizeHint::with_exact(n),
            Some(_) if self.is_end_stream() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http2BodyError>>> {
        let Some(inflow) = &self.inflow else {
            return Poll::Ready(None);
        };
        let mut s = lock(&inflow.state);
        if let Some(data) = s.chunks.pop_front() {
            drop(s);
            inflow.released.push(inflow.id, data.len(), false);
            if let Some(left) = &mut self.left {
                *left = left.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(e) = s.failed {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(t) = s.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if s.end {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let Some(inflow) = self.inflow.take() {
            let mut s = lock(&inflow.state);
            s.dropped = true;
            let unread: usize = s.chunks.drain(..).map(|c| c.len()).sum();
            let ended = s.end;
            drop(s);
            if unread > 0 || !ended {
                inflow.released.push(inflow.id, unread, true);
            }
        }
    }
}
