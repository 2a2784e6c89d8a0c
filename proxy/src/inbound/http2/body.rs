//! A caller's HTTP/2 request body: what the connection received on the stream, handed to
//! whoever reads the body (the handler, or a task piping it upstream). Each chunk read
//! returns its bytes to the caller's flow-control windows, so a body nobody reads holds at
//! most one stream window (and all of them one connection window) in memory.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use crate::h2codec::frame::Reason;

/// Why a request body stopped short.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum Http2BodyError {
    #[error("the caller reset the stream ({0})")]
    Reset(Reason),
    #[error("request body does not match its content-length")]
    ContentLength,
    #[error("the connection closed before the request body ended")]
    ConnectionClosed,
}

/// What a stream's incoming data and its reader share.
pub(super) struct Inflow {
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
pub(super) struct Released {
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
    pub(super) fn take(&self, cx: &mut Context<'_>, into: &mut Vec<(u32, usize, bool)>) {
        let mut inner = lock(&self.inner);
        into.append(&mut inner.events);
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
    }
}

impl Inflow {
    pub(super) fn new(id: u32, released: Arc<Released>) -> Arc<Inflow> {
        Arc::new(Inflow {
            state: Mutex::new(InflowState::default()),
            released,
            id,
        })
    }

    /// Data received on the stream. False when the reader is gone (the caller then gets
    /// the bytes back at once).
    pub(super) fn push(&self, data: Bytes, end: bool) -> bool {
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

    pub(super) fn trailers(&self, trailers: HeaderMap) {
        let mut s = lock(&self.state);
        s.trailers = Some(trailers);
        s.end = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    pub(super) fn fail(&self, e: Http2BodyError) {
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

/// The request body the handler gets.
pub struct RequestBody {
    inflow: Option<Arc<Inflow>>,
    /// The declared content-length still to come (the connection holds the stream to it).
    left: Option<u64>,
}

impl RequestBody {
    /// A request that ended with its headers.
    pub(super) fn empty() -> RequestBody {
        RequestBody {
            inflow: None,
            left: Some(0),
        }
    }

    pub(super) fn streamed(inflow: Arc<Inflow>, content_length: Option<u64>) -> RequestBody {
        RequestBody {
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

impl Drop for RequestBody {
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
