//! A caller's request body, from whichever of the gateway's servers read the request
//! (HTTP/1 or HTTP/2); upstreams take either without knowing which. Also the h2 crate's
//! body, as the gateway's HTTP/2 client receives an endpoint's response.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body::{Body, Frame, SizeHint};

use crate::inbound::{Http1Body, Http1BodyError, Http2BodyError, RequestBody as Http2Body};

pub enum CallerBody {
    Http1(Http1Body),
    Http2(Http2Body),
}

impl std::fmt::Debug for CallerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallerBody::Http1(_) => f.write_str("CallerBody::Http1"),
            CallerBody::Http2(_) => f.write_str("CallerBody::Http2"),
        }
    }
}

/// Why a caller's request body stopped short.
#[derive(Debug, thiserror::Error)]
pub enum CallerBodyError {
    #[error(transparent)]
    Http1(#[from] Http1BodyError),
    #[error(transparent)]
    Http2(#[from] Http2BodyError),
}

/// An HTTP/2 body as the h2 crate receives it: an endpoint's response body. Flow-control capacity goes back to the sender as each frame is handed on,
/// so the sender's window tracks what the other side has taken.
pub struct H2Body {
    recv: h2::RecvStream,
    /// Bytes still to come when the caller declared a length (h2 holds the stream to it).
    left: Option<u64>,
    data_done: bool,
}

impl H2Body {
    pub fn new(recv: h2::RecvStream, headers: &HeaderMap) -> Self {
        let left = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        Self {
            recv,
            left,
            data_done: false,
        }
    }
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = CallerBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CallerBodyError>>> {
        match self.get_mut() {
            CallerBody::Http1(b) => b.poll_frame(cx).map_err(Into::into),
            CallerBody::Http2(b) => b.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CallerBody::Http1(b) => b.is_end_stream(),
            CallerBody::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CallerBody::Http1(b) => b.size_hint(),
            CallerBody::Http2(b) => b.size_hint(),
        }
    }
}

impl H2Body {
    pub fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() {
            return SizeHint::with_exact(0);
        }
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.left {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}
