//! A caller's HTTP/1 request body as the handler sees it: nothing, the whole body when it came
//! with the head (most requests that have one), or frames the connection reads on while the
//! request is being handled, through a channel of one frame so that a caller can get no
//! further ahead of the upstream than that.

use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// Why a request body stopped short.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum Http1BodyError {
    #[error("request body cut short")]
    Incomplete,
    #[error("malformed chunked request body")]
    BadChunk,
}

/// What the connection hands on, in order: data and trailers, then the end or a failure.
/// The end is said explicitly: a closed channel without it means the connection went away.
#[derive(Debug)]
pub(super) enum Piece {
    Frame(Frame<Bytes>),
    End,
    Failed(Http1BodyError),
}

pub(super) type Frames = mpsc::Receiver<Piece>;

pub struct Http1Body(Inner);

enum Inner {
    Empty,
    /// All of it, already read.
    Full(Option<Bytes>),
    Streamed {
        frames: Frames,
        /// Bytes still to come when the caller declared a length.
        left: Option<u64>,
        done: bool,
    },
}

impl Http1Body {
    pub(super) fn empty() -> Self {
        Http1Body(Inner::Empty)
    }

    pub(super) fn full(data: Bytes) -> Self {
        Http1Body(Inner::Full(Some(data)))
    }

    pub(super) fn streamed(frames: Frames, left: Option<u64>) -> Self {
        Http1Body(Inner::Streamed {
            frames,
            left,
            done: false,
        })
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1BodyError>>> {
        match &mut self.0 {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Streamed { frames, left, done } => {
                if *done {
                    return Poll::Ready(None);
                }
                let piece = match frames.poll_recv(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(p) => p,
                };
                match piece {
                    Some(Piece::Frame(f)) => {
                        if let (Some(data), Some(left)) = (f.data_ref(), left.as_mut()) {
                            *left = left.saturating_sub(data.len() as u64);
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Some(Piece::End) => {
                        *done = true;
                        Poll::Ready(None)
                    }
                    Some(Piece::Failed(e)) => {
                        *done = true;
                        Poll::Ready(Some(Err(e)))
                    }
                    // The connection went away without ending the body: as good as cut short.
                    None => {
                        *done = true;
                        Poll::Ready(Some(Err(Http1BodyError::Incomplete)))
                    }
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Empty => true,
            Inner::Full(data) => data.is_none(),
            Inner::Streamed { done, .. } => *done,
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Streamed { left: Some(n), .. } => SizeHint::with_exact(*n),
            Inner::Streamed { left: None, .. } => SizeHint::default(),
        }
    }
}
