//! A caller's request body, from whichever of the gateway's servers read the request
//! (HTTP/1 or HTTP/2); upstreams take either without knowing which.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
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
