//! One request's record from its response's head to the response's end, carried by the
//! response body: `response_total` is counted when the response ends, because only then is
//! its gRPC status known (trailers) and whether it ended at all (an upstream that fails
//! midway, a caller that resets). The access-log line and the tap's response-end event are
//! written from the same place.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue};

use crate::{
    metrics::{ExchangeHandles, Outcome},
    tap::Tapped,
};

/// Why a response that started did not end: the `error` label on `response_total`.
pub const BODY_FAILED: &str = "response body failed";
pub const CALLER_CANCELLED: &str = "response cancelled";

/// What the access-log line needs beyond the record itself; kept only when access logging
/// is on.
pub struct AccessLine {
    pub client_id: identity::Identity,
    pub peer: SocketAddr,
    pub authority: String,
    pub method: http::Method,
    pub path: http::Uri,
    pub upstream: Option<SocketAddr>,
}

pub struct Exchange {
    handles: Arc<ExchangeHandles>,
    /// When the request arrived, and how long its response's head took.
    start: Instant,
    head_latency: Duration,
    /// The request was gRPC (`content-type: application/grpc...`): its outcome is the
    /// `grpc-status` the response carries.
    grpc: bool,
    grpc_status: Option<u32>,
    /// Response body bytes sent.
    bytes: u64,
    access: Option<Box<AccessLine>>,
    tap: Option<Box<Tapped>>,
    ended: bool,
}

/// `grpc-status` as a number; anything else is not a status.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// Whether a request is gRPC, by its content type.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Exchange {
    /// The response's head is being sent: `request_total` and the latency are counted now.
    /// `headers`: the response's, where a trailers-only gRPC response carries its status.
    pub fn responded(
        handles: Arc<ExchangeHandles>,
        start: Instant,
        grpc: bool,
        headers: &HeaderMap,
        access: Option<Box<AccessLine>>,
        mut tap: Option<Box<Tapped>>,
    ) -> Self {
        let head_latency = start.elapsed();
        handles.responded(head_latency);
        if let Some(t) = tap.as_mut() {
            t.response_init(handles.status(), headers);
        }
        Self {
            handles,
            start,
            head_latency,
            grpc,
            grpc_status: if grpc { grpc_status(headers) } else { None },
            bytes: 0,
            access,
            tap,
            ended: false,
        }
    }

    pub fn data(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    pub fn trailers(&mut self, trailers: &HeaderMap) {
        if self.grpc {
            if let Some(s) = grpc_status(trailers) {
                self.grpc_status = Some(s);
            }
        }
        if let Some(t) = self.tap.as_mut() {
            t.trailers(trailers);
        }
    }

    /// The response ended: sent whole, or cut short with `error`.
    pub fn end(&mut self, error: Option<&'static str>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let outcome = match error {
            Some(e) => Outcome::Failed(e),
            None => Outcome::Ended {
                grpc_status: self.grpc_status,
            },
        };
        self.handles.ended(outcome);
        if let Some(t) = self.tap.as_mut() {
            t.response_end(self.bytes, self.grpc_status, error);
        }
        if let Some(a) = &self.access {
            tracing::info!(
                target: "access",
                client_id = %a.client_id,
                tls = true,
                authority = a.authority.as_str(),
                method = %a.method,
                path = a.path.path(),
                status = self.handles.status(),
                grpc_status = self.grpc_status,
                latency_us = self.head_latency.as_micros() as u64,
                duration_us = self.start.elapsed().as_micros() as u64,
                bytes = self.bytes,
                error = error.unwrap_or(""),
                upstream = %a.upstream.map(|a| a.to_string()).unwrap_or_default(),
                peer = %a.peer,
            );
        }
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }
}
