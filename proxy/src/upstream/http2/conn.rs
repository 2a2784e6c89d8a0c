//! One HTTP/2 connection to an endpoint as protocol state, without I/O: the callers' tasks
//! open streams and send on them through it, the connection's task feeds it the endpoint's
//! frames and writes what it queued.
//!
//! The rules are the server's (`inbound/http2/conn.rs`) seen from the other side: stream ids
//! the gateway picks, the endpoint's SETTINGS_MAX_CONCURRENT_STREAMS honoured, flow control
//! both ways, header blocks over CONTINUATION, GOAWAY (streams above its last id were never
//! taken and may go elsewhere), push refused.

use std::{collections::VecDeque, sync::Arc, task::Waker};

use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode, Version};
use tokio::time::Instant;

use crate::h2codec::{
    flow::RecvWindow,
    frame::{self, flag, kind, setting, Head, Reason, DEFAULT_WINDOW, MAX_WINDOW},
    hpack::{self, is_connection_specific, Name, Pseudo},
    recv_body::{Http2BodyError, Inflow, RecvBody, Released},
    stream_map::{stream_map, StreamMap},
};

/// Fixed flow-control windows toward the endpoint, as the caller side's: what an endpoint may
/// send ahead of a caller that reads slowly is bounded by 1 MiB per stream, 4 MiB per
/// connection.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Response header lists taken from an endpoint, as the HTTP/1.1 client's head limit.
pub const MAX_HEADER_LIST: usize = 64 * 1024;
/// The most fields a response map is made room for ahead of its head.
const MAX_REMEMBERED_FIELDS: usize = 64;
/// Queued output beyond which request bodies wait for the connection's task to write.
pub const OUT_HIGH: usize = 64 * 1024;
/// Streams opened before the endpoint's SETTINGS say how many it takes (RFC 9113 §6.5.2
/// recommends at least 100).
const INITIAL_MAX_STREAMS: usize = 100;

/// A connection error: the connection ends with GOAWAY and this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub code: Reason,
    pub what: &'static str,
}

fn fault(code: Reason, what: &'static str) -> Fault {
    Fault { code, what }
}

/// Why a request got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFailure {
    /// The endpoint never took the stream (GOAWAY below its id, REFUSED_STREAM, or the
    /// connection already closing): the request may go to another endpoint.
    Unsent,
    /// The stream failed after the endpoint took it.
    Failed(&'static str),
}

enum Slot {
    Waiting(Option<Waker>),
    Ready(Result<Response<RecvBody>, StreamFailure>),
    Taken,
}

struct Stream {
    response: Slot,
    inflow: Option<Arc<Inflow>>,
    recv: RecvWindow,
    send_window: i64,
    /// The request body's sender, waiting for window or for the output to drain.
    send_waker: Option<Waker>,
    local_done: bool,
    remote_done: bool,
    head_request: bool,
    content_length: Option<u64>,
    received: u64,
}

struct PartialBlock {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
    frames: u32,
}

/// Whether a stream is still waiting for its response head.
fn awaits_head(s: Option<&Stream>) -> bool {
    matches!(
        s,
        Some(Stream {
            response: Slot::Waiting(_),
            ..
        })
    )
}

pub struct ClientConn {
    encoder: hpack::Encoder,
    decoder: hpack::Decoder,
    streams: StreamMap<Stream>,
    next_id: u32,
    peer_max_streams: usize,
    peer_stream_window: i64,
    peer_max_frame: usize,
    send_window: i64,
    recv: RecvWindow,
    partial: Option<PartialBlock>,
    /// The endpoint's GOAWAY, or the gateway's decision to stop: no new stream.
    closing: bool,
    /// The connection is over (the reason, for the log).
    pub failed: Option<&'static str>,
    /// Frames for the connection's task to write.
    pub out: Vec<u8>,
    /// The connection's task, woken when `out` has something or the state changed.
    driver: Option<Waker>,
    /// Callers waiting for a stream under the endpoint's limit.
    waiting: Vec<Waker>,
    /// Request bodies waiting for the output to drain.
    out_waiting: Vec<Waker>,
    pub released: Arc<Released>,
    /// A keep-alive PING is out; its payload.
    ping: Option<[u8; 8]>,
    pub pong: bool,
    scratch: Vec<u8>,
    /// Fields in the endpoint's last response head: the next one's map is made that size, as
    /// a service sends the same head response after response, instead of growing as it fills.
    last_fields: usize,
    /// Streams that may still be waiting for their response head, with their deadlines,
    /// earliest first: the connection's task keeps one timer for the front one. A timer per
    /// request went into the runtime's wheel and out of it under the wheel's lock (about 1k
    /// instructions); here a stream costs a push and, once answered, a pop.
    awaiting: VecDeque<(u32, Instant)>,
}

impl ClientConn {
    /// A connection, with the client preface, SETTINGS and connection window queued.
    pub fn new() -> ClientConn {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frame::put_settings(
            &mut out,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (setting::MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST as u32),
            ],
        );
        frame::put_window_update(&mut out, 0, CONNECTION_WINDOW - DEFAULT_WINDOW as u32);
        ClientConn {
            encoder: hpack::Encoder::default(),
            decoder: hpack::Decoder::default(),
            streams: stream_map(),
            next_id: 1,
            peer_max_streams: INITIAL_MAX_STREAMS,
            peer_stream_window: DEFAULT_WINDOW,
            peer_max_frame: frame::MIN_MAX_FRAME_SIZE as usize,
            send_window: DEFAULT_WINDOW,
            recv: RecvWindow::new(CONNECTION_WINDOW),
            partial: None,
            closing: false,
            failed: None,
            out,
            driver: None,
            waiting: Vec::new(),
            out_waiting: Vec::new(),
            released: Arc::new(Released::default()),
            ping: None,
            pong: false,
            scratch: Vec::new(),
            last_fields: 0,
            awaiting: VecDeque::new(),
        }
    }

    pub fn set_driver(&mut self, waker: &Waker) {
        match &self.driver {
            Some(w) if w.will_wake(waker) => {}
            _ => self.driver = Some(waker.clone()),
        }
    }

    fn wake_driver(&self) {
        if let Some(w) = &self.driver {
            w.wake_by_ref();
        }
    }

    /// Whether new requests may use this connection.
    pub fn usable(&self) -> bool {
        self.failed.is_none() && !self.closing
    }

    /// The connection's task may end: failed, or closing with no stream left.
    pub fn finished(&self) -> bool {
        self.failed.is_some() || (self.closing && self.streams.is_empty())
    }

    /// No new streams; the connection ends once the open ones are done.
    pub fn close_when_idle(&mut self) {
        if !self.closing {
            self.closing = true;
            self.wake_driver();
        }
    }

    /// Opens a stream for a request head, cancelled if its response head has not come by
    /// `deadline` (see [`ClientConn::expire`]). `Ok(None)`: the endpoint's stream limit is
    /// reached; the caller is woken when a stream closes.
    pub fn open(
        &mut self,
        parts: &http::request::Parts,
        end_stream: bool,
        waker: &Waker,
        deadline: Instant,
    ) -> Result<Option<u32>, StreamFailure> {
        if !self.usable() {
            return Err(StreamFailure::Unsent);
        }
        if self.streams.len() >= self.peer_max_streams {
            self.waiting.push(waker.clone());
            return Ok(None);
        }
        let id = self.next_id;
        if id > i32::MAX as u32 - 2 {
            // Stream ids run out: this connection takes no more.
            self.closing = true;
            return Err(StreamFailure::Unsent);
        }
        self.next_id += 2;
        let uri = &parts.uri;
        let scheme = uri.scheme_str().unwrap_or("http");
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        self.scratch.clear();
        self.encoder.encode_request(
            &parts.method,
            scheme,
            uri.authority().map(|a| a.as_str()),
            path,
            &parts.headers,
            &mut self.scratch,
        );
        frame::put_header_block(
            &mut self.out,
            id,
            &self.scratch,
            end_stream,
            self.peer_max_frame,
        );
        self.streams.insert(
            id,
            Stream {
                response: Slot::Waiting(None),
                inflow: None,
                recv: RecvWindow::new(STREAM_WINDOW),
                send_window: self.peer_stream_window,
                send_waker: None,
                local_done: end_stream,
                remote_done: false,
                head_request: parts.method == http::Method::HEAD,
                content_length: None,
                received: 0,
            },
        );
        // Deadlines come in the order requests started, nearly always after the last one.
        let at = self.awaiting.partition_point(|&(_, d)| d <= deadline);
        self.awaiting.insert(at, (id, deadline));
        if self.awaiting.len() > 2 * self.streams.len().max(64) {
            // A stream slow to answer holds those behind it in the queue: keep it to the
            // streams still waiting.
            let streams = &self.streams;
            self.awaiting.retain(|(id, _)| awaits_head(streams.get(id)));
        }
        self.wake_driver();
        Ok(Some(id))
    }

    /// The earliest response deadline of a stream still waiting for its head (streams
    /// answered or gone leave the queue on the way).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(id, at)) = self.awaiting.front() {
            if awaits_head(self.streams.get(&id)) {
                return Some(at);
            }
            self.awaiting.pop_front();
        }
        None
    }

    /// Cancels every stream whose response head is overdue at `now`: its caller, woken,
    /// finds the stream gone after its deadline.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(id, at)) = self.awaiting.front() {
            let waiting = awaits_head(self.streams.get(&id));
            if waiting && at > now {
                break;
            }
            self.awaiting.pop_front();
            if waiting {
                self.cancel(id);
            }
        }
    }

    /// The stream's response head, once it has come.
    pub fn poll_response(
        &mut self,
        id: u32,
        waker: &Waker,
    ) -> Option<Result<Response<RecvBody>, StreamFailure>> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Some(Err(StreamFailure::Failed("stream closed")));
        };
        match std::mem::replace(&mut s.response, Slot::Taken) {
            Slot::Ready(r) => {
                let done = s.local_done && s.remote_done;
                if done {
                    self.remove(id);
                }
                Some(r)
            }
            Slot::Waiting(_) => {
                s.response = Slot::Waiting(Some(waker.clone()));
                None
            }
            Slot::Taken => Some(Err(StreamFailure::Failed("response taken"))),
        }
    }

    /// Sends request body data on `id` as far as the windows and the output allow. Ready
    /// once all of `data` is queued (the stream ended with it if `end`); Err when the stream
    /// is gone.
    pub fn send_data(
        &mut self,
        id: u32,
        data: &mut Bytes,
        end: bool,
        waker: &Waker,
    ) -> std::task::Poll<Result<(), ()>> {
        use std::task::Poll;
        let max_frame = self.peer_max_frame;
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(()));
        };
        if s.local_done || self.failed.is_some() {
            return Poll::Ready(Err(()));
        }
        loop {
            if data.is_empty() && !end {
                self.wake_driver();
                return Poll::Ready(Ok(()));
            }
            if data.is_empty() {
                frame::put_head(&mut self.out, 0, kind::DATA, flag::END_STREAM, id);
                s.local_done = true;
                break;
            }
            if self.out.len() >= OUT_HIGH {
                self.out_waiting.push(waker.clone());
                self.wake_driver();
                return Poll::Pending;
            }
            let room = s.send_window.min(self.send_window).min(max_frame as i64);
            if room <= 0 {
                s.send_waker = Some(waker.clone());
                self.wake_driver();
                return Poll::Pending;
            }
            let chunk = data.split_to((room as usize).min(data.len()));
            let last = data.is_empty() && end;
            let flags = if last { flag::END_STREAM } else { 0 };
            frame::put_head(&mut self.out, chunk.len(), kind::DATA, flags, id);
            self.out.extend_from_slice(&chunk);
            s.send_window -= chunk.len() as i64;
            self.send_window -= chunk.len() as i64;
            if last {
                s.local_done = true;
                break;
            }
        }
        self.wake_driver();
        self.close_if_done(id);
        Poll::Ready(Ok(()))
    }

    /// Ends the request with trailers.
    pub fn send_trailers(&mut self, id: u32, trailers: &HeaderMap) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.local_done {
            return;
        }
        s.local_done = true;
        self.scratch.clear();
        self.encoder.encode(None, trailers, &mut self.scratch);
        frame::put_header_block(&mut self.out, id, &self.scratch, true, self.peer_max_frame);
        self.wake_driver();
        self.close_if_done(id);
    }

    /// The gateway gives up on a stream (the caller went, or the request body failed).
    pub fn cancel(&mut self, id: u32) {
        if let Some(s) = self.streams.get(&id) {
            if !(s.local_done && s.remote_done) {
                frame::put_rst_stream(&mut self.out, id, Reason::CANCEL);
            }
            self.remove(id);
            self.wake_driver();
        }
    }

    fn remove(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            if let Some(inflow) = &s.inflow {
                inflow.fail(Http2BodyError::Reset(Reason::CANCEL));
            }
            if let Slot::Waiting(Some(w)) = s.response {
                w.wake();
            }
            if let Some(w) = s.send_waker {
                w.wake();
            }
            for w in self.waiting.drain(..) {
                w.wake();
            }
        }
    }

    fn close_if_done(&mut self, id: u32) {
        if let Some(s) = self.streams.get(&id) {
            if s.local_done && s.remote_done && matches!(s.response, Slot::Taken) {
                self.remove(id);
            }
        }
    }

    /// Sends a keep-alive PING.
    pub fn ping(&mut self, payload: [u8; 8]) {
        self.ping = Some(payload);
        self.pong = false;
        frame::put_head(&mut self.out, 8, kind::PING, 0, 0);
        self.out.extend_from_slice(&payload);
    }

    /// Wakes request bodies waiting for the output to drain.
    pub fn drained(&mut self) {
        for w in self.out_waiting.drain(..) {
            w.wake();
        }
    }

    /// The connection ends: every stream learns why.
    pub fn fail(&mut self, why: &'static str, goaway: Option<Reason>) {
        if self.failed.is_some() {
            return;
        }
        self.failed = Some(why);
        if let Some(code) = goaway {
            let last = self.next_id.saturating_sub(2);
            frame::put_goaway(&mut self.out, last, code, why);
        }
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.fail_stream(
                id,
                StreamFailure::Failed(why),
                Http2BodyError::ConnectionClosed,
            );
        }
        for w in self.waiting.drain(..).chain(self.out_waiting.drain(..)) {
            w.wake();
        }
    }

    fn fail_stream(&mut self, id: u32, failure: StreamFailure, body: Http2BodyError) {
        if let Some(s) = self.streams.get_mut(&id) {
            if let Slot::Waiting(w) = &mut s.response {
                if let Some(w) = w.take() {
                    w.wake();
                }
                s.response = Slot::Ready(Err(failure));
                // The caller takes the failure, then the stream goes.
                s.local_done = true;
                s.remote_done = true;
                if let Some(w) = s.send_waker.take() {
                    w.wake();
                }
                return;
            }
            if let Some(inflow) = &s.inflow {
                inflow.fail(body);
            }
            self.remove(id);
        }
    }

    /// Takes one frame from the endpoint.
    pub fn recv(&mut self, head: Head, payload: Bytes) -> Result<(), Fault> {
        if head.len > frame::MIN_MAX_FRAME_SIZE as usize {
            return Err(fault(Reason::FRAME_SIZE_ERROR, "frame_too_large"));
        }
        if let Some(partial) = &mut self.partial {
            if head.kind != kind::CONTINUATION || head.stream != partial.stream {
                return Err(fault(Reason::PROTOCOL_ERROR, "header_block_interrupted"));
            }
            partial.frames += 1;
            partial.block.extend_from_slice(&payload);
            if partial.frames > 64 || partial.block.len() > 2 * MAX_HEADER_LIST {
                return Err(fault(Reason::ENHANCE_YOUR_CALM, "header_block_too_large"));
            }
            if head.has(flag::END_HEADERS) {
                let p = self.partial.take().expect("checked above");
                return self.headers(p.stream, p.end_stream, Bytes::from(p.block));
            }
            return Ok(());
        }
        match head.kind {
            kind::DATA => self.data(head, payload),
            kind::HEADERS => {
                let mut block = unpad(&head, payload)?;
                if head.has(flag::PRIORITY) {
                    if block.len() < 5 {
                        return Err(fault(Reason::FRAME_SIZE_ERROR, "short_priority"));
                    }
                    let _ = block.split_to(5);
                }
                let end = head.has(flag::END_STREAM);
                if head.has(flag::END_HEADERS) {
                    return self.headers(head.stream, end, block);
                }
                self.partial = Some(PartialBlock {
                    stream: head.stream,
                    end_stream: end,
                    block: block.to_vec(),
                    frames: 0,
                });
                Ok(())
            }
            kind::RST_STREAM => {
                let Ok(code) = <[u8; 4]>::try_from(&payload[..]) else {
                    return Err(fault(Reason::FRAME_SIZE_ERROR, "rst_stream_size"));
                };
                let reason = Reason(u32::from_be_bytes(code));
                let failure = if reason == Reason::REFUSED_STREAM {
                    StreamFailure::Unsent
                } else {
                    StreamFailure::Failed("stream reset by the endpoint")
                };
                self.fail_stream(head.stream, failure, Http2BodyError::Reset(reason));
                Ok(())
            }
            kind::SETTINGS => self.settings(head, &payload),
            kind::PUSH_PROMISE => Err(fault(Reason::PROTOCOL_ERROR, "push_promise_refused")),
            kind::PING => {
                let Ok(data) = <[u8; 8]>::try_from(&payload[..]) else {
                    return Err(fault(Reason::FRAME_SIZE_ERROR, "ping_size"));
                };
                if head.has(flag::ACK) {
                    if self.ping == Some(data) {
                        self.pong = true;
                    }
                } else {
                    frame::put_ping_ack(&mut self.out, &data);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if payload.len() < 8 {
                    return Err(fault(Reason::FRAME_SIZE_ERROR, "goaway_size"));
                }
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                self.closing = true;
                let above: Vec<u32> = self
                    .streams
                    .keys()
                    .copied()
                    .filter(|&id| id > last)
                    .collect();
                for id in above {
                    self.fail_stream(id, StreamFailure::Unsent, Http2BodyError::ConnectionClosed);
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let Ok(raw) = <[u8; 4]>::try_from(&payload[..]) else {
                    return Err(fault(Reason::FRAME_SIZE_ERROR, "window_update_size"));
                };
                let inc = (u32::from_be_bytes(raw) & 0x7fff_ffff) as i64;
                if head.stream == 0 {
                    if inc == 0 {
                        return Err(fault(Reason::PROTOCOL_ERROR, "zero_window_increment"));
                    }
                    self.send_window += inc;
                    if self.send_window > MAX_WINDOW {
                        return Err(fault(Reason::FLOW_CONTROL_ERROR, "window_overflow"));
                    }
                    for s in self.streams.values_mut() {
                        if let Some(w) = s.send_waker.take() {
                            w.wake();
                        }
                    }
                } else if let Some(s) = self.streams.get_mut(&head.stream) {
                    s.send_window += inc;
                    if inc == 0 || s.send_window > MAX_WINDOW {
                        frame::put_rst_stream(
                            &mut self.out,
                            head.stream,
                            Reason::FLOW_CONTROL_ERROR,
                        );
                        self.fail_stream(
                            head.stream,
                            StreamFailure::Failed("endpoint broke flow control"),
                            Http2BodyError::Reset(Reason::FLOW_CONTROL_ERROR),
                        );
                    } else if let Some(w) = s.send_waker.take() {
                        w.wake();
                    }
                }
                Ok(())
            }
            kind::CONTINUATION => Err(fault(
                Reason::PROTOCOL_ERROR,
                "continuation_without_headers",
            )),
            _ => Ok(()),
        }
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Fault> {
        if head.has(flag::ACK) {
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(fault(Reason::FRAME_SIZE_ERROR, "settings_size"));
        }
        for p in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([p[0], p[1]]);
            let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            match id {
                setting::HEADER_TABLE_SIZE => self.encoder.set_max_size(value as usize),
                setting::MAX_CONCURRENT_STREAMS => {
                    self.peer_max_streams = value as usize;
                    for w in self.waiting.drain(..) {
                        w.wake();
                    }
                }
                setting::INITIAL_WINDOW_SIZE => {
                    if value as i64 > MAX_WINDOW {
                        return Err(fault(
                            Reason::FLOW_CONTROL_ERROR,
                            "initial_window_size_value",
                        ));
                    }
                    let delta = value as i64 - self.peer_stream_window;
                    self.peer_stream_window = value as i64;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > MAX_WINDOW {
                            return Err(fault(Reason::FLOW_CONTROL_ERROR, "window_overflow"));
                        }
                        if let Some(w) = s.send_waker.take() {
                            w.wake();
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::MIN_MAX_FRAME_SIZE..=frame::MAX_MAX_FRAME_SIZE).contains(&value) {
                        return Err(fault(Reason::PROTOCOL_ERROR, "max_frame_size_value"));
                    }
                    self.peer_max_frame = value as usize;
                }
                _ => {}
            }
        }
        frame::put_settings_ack(&mut self.out);
        Ok(())
    }

    fn headers(&mut self, id: u32, end_stream: bool, block: Bytes) -> Result<(), Fault> {
        let mut status: Option<Bytes> = None;
        let mut headers = HeaderMap::with_capacity(self.last_fields);
        let mut size = 0;
        let mut malformed = None;
        self.decoder
            .decode(&block, |f| {
                size += f.size;
                if malformed.is_some() {
                    return;
                }
                if size > MAX_HEADER_LIST {
                    malformed = Some("response_headers_too_large");
                    return;
                }
                match &f.name {
                    Name::Pseudo(Pseudo::Status) if status.is_none() && headers.is_empty() => {
                        status = Some(f.value.clone())
                    }
                    Name::Pseudo(_) | Name::Invalid => malformed = Some("malformed_response_head"),
                    Name::Header(name) => match &f.header {
                        Some(v) if !is_connection_specific(name) => {
                            headers.append(name.clone(), v.clone());
                        }
                        _ => malformed = Some("malformed_response_head"),
                    },
                }
            })
            .map_err(|_| fault(Reason::COMPRESSION_ERROR, "hpack_decoding_failed"))?;
        if id.is_multiple_of(2) || id >= self.next_id {
            return Err(fault(
                Reason::PROTOCOL_ERROR,
                "headers_on_a_stream_not_opened",
            ));
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // A stream the gateway cancelled.
            return Ok(());
        };
        if s.remote_done {
            return self.reset(id, Reason::STREAM_CLOSED, "headers after the end");
        }
        if let Some(why) = malformed {
            return self.reset(id, Reason::PROTOCOL_ERROR, why);
        }
        if !matches!(s.response, Slot::Waiting(_)) {
            // Trailers.
            if status.is_some() || !end_stream {
                return self.reset(id, Reason::PROTOCOL_ERROR, "malformed trailers");
            }
            if s.content_length.is_some_and(|cl| cl != s.received) {
                return self.reset(
                    id,
                    Reason::PROTOCOL_ERROR,
                    "body does not match its content-length",
                );
            }
            s.remote_done = true;
            if let Some(inflow) = &s.inflow {
                inflow.trailers(headers);
            }
            self.close_if_done(id);
            return Ok(());
        }
        let Some(status) = status
            .as_deref()
            .and_then(|v| StatusCode::from_bytes(v).ok())
        else {
            return self.reset(id, Reason::PROTOCOL_ERROR, "malformed_response_head");
        };
        if status.is_informational() {
            // Interim responses (100 Continue, 103) are not handed on; a 101 is not HTTP/2.
            if end_stream || status == StatusCode::SWITCHING_PROTOCOLS {
                return self.reset(id, Reason::PROTOCOL_ERROR, "malformed_response_head");
            }
            return Ok(());
        }
        self.last_fields = headers.len().min(MAX_REMEMBERED_FIELDS);
        let content_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bodiless = s.head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let body = if end_stream {
            s.remote_done = true;
            RecvBody::empty()
        } else {
            let inflow = Inflow::new(id, self.released.clone());
            s.inflow = Some(inflow.clone());
            s.content_length = if bodiless { Some(0) } else { content_length };
            RecvBody::streamed(inflow, if bodiless { None } else { content_length })
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.version_mut() = Version::HTTP_2;
        *resp.headers_mut() = headers;
        if let Slot::Waiting(Some(w)) = std::mem::replace(&mut s.response, Slot::Ready(Ok(resp))) {
            w.wake();
        }
        Ok(())
    }

    /// A stream error: RST_STREAM to the endpoint, the request failed.
    fn reset(&mut self, id: u32, code: Reason, why: &'static str) -> Result<(), Fault> {
        frame::put_rst_stream(&mut self.out, id, code);
        self.fail_stream(id, StreamFailure::Failed(why), Http2BodyError::Reset(code));
        Ok(())
    }

    fn data(&mut self, head: Head, payload: Bytes) -> Result<(), Fault> {
        let len = payload.len();
        if !self.recv.take(len) {
            return Err(fault(
                Reason::FLOW_CONTROL_ERROR,
                "data_beyond_connection_window",
            ));
        }
        let data = unpad(&head, payload)?;
        let end = head.has(flag::END_STREAM);
        let padding = len - data.len();
        let n = data.len();
        let Some(s) = self.streams.get_mut(&head.stream) else {
            if head.stream == 0 || head.stream >= self.next_id {
                return Err(fault(Reason::PROTOCOL_ERROR, "data_on_a_stream_not_opened"));
            }
            self.release_connection(len);
            return Ok(());
        };
        let Some(inflow) = s.inflow.clone() else {
            let why = if s.remote_done {
                Reason::STREAM_CLOSED
            } else {
                Reason::PROTOCOL_ERROR
            };
            self.release_connection(len);
            return self.reset(head.stream, why, "data without a response head");
        };
        if !s.recv.take(len) {
            self.release_connection(len);
            return self.reset(
                head.stream,
                Reason::FLOW_CONTROL_ERROR,
                "data beyond the stream window",
            );
        }
        s.received += n as u64;
        if s.content_length
            .is_some_and(|cl| s.received > cl || (end && s.received != cl))
        {
            self.release_connection(len);
            return self.reset(
                head.stream,
                Reason::PROTOCOL_ERROR,
                "body does not match its content-length",
            );
        }
        if end {
            s.remote_done = true;
        }
        let delivered = inflow.push(data, end);
        let back = padding + if delivered { 0 } else { n };
        if back > 0 {
            self.release(head.stream, back);
        }
        if end {
            self.close_if_done(head.stream);
        }
        Ok(())
    }

    /// Response bytes read (or dropped) by their readers: WINDOW_UPDATEs once half a window
    /// is owed; a response dropped before its end cancels its stream.
    pub fn released(&mut self, events: &[(u32, usize, bool)]) {
        for &(id, n, dropped) in events {
            self.release(id, n);
            if dropped {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.inflow = None;
                    if !s.remote_done {
                        self.cancel(id);
                    } else {
                        self.close_if_done(id);
                    }
                }
            }
        }
    }

    fn release(&mut self, id: u32, n: usize) {
        if let Some(s) = self.streams.get_mut(&id) {
            if let Some(increment) = s.recv.release(n) {
                if !s.remote_done {
                    frame::put_window_update(&mut self.out, id, increment);
                }
            }
        }
        self.release_connection(n);
    }

    fn release_connection(&mut self, n: usize) {
        if let Some(increment) = self.recv.release(n) {
            frame::put_window_update(&mut self.out, 0, increment);
        }
    }
}

fn unpad(head: &Head, payload: Bytes) -> Result<Bytes, Fault> {
    frame::unpad(head, payload).map_err(|(code, what)| fault(code, what))
}

/// Fuzzing: arbitrary bytes as an endpoint's side of a connection with three requests open
/// (a GET, a POST whose body is sent as windows allow, a HEAD). Frames are taken as the
/// connection's task takes them; responses are read and their bodies drained, so flow-control
/// credit goes back. Nothing may panic, and the connection's windows stay within bounds.
pub fn fuzz_client(data: &[u8]) {
    use std::task::{Context, Poll};

    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut c = ClientConn::new();
    let mut ids = Vec::new();
    for (method, end) in [
        (http::Method::GET, true),
        (http::Method::POST, false),
        (http::Method::HEAD, true),
    ] {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = method;
        parts.uri = http::Uri::from_static("http://web-svc.emojivoto:8080/api/list");
        // The HEAD request's response is due at once: it is cancelled before the first frame.
        let deadline = match ids.len() {
            2 => Instant::now(),
            _ => Instant::now() + std::time::Duration::from_secs(3600),
        };
        if let Ok(Some(id)) = c.open(&parts, end, &waker, deadline) {
            ids.push(id);
        }
    }
    c.expire(Instant::now());
    let mut upload = Bytes::from_static(&[b'u'; 100_000]);
    let mut bodies = Vec::new();
    let mut rbuf = bytes::BytesMut::from(data);
    let mut releases = Vec::new();
    while rbuf.len() >= frame::HEAD_LEN && c.failed.is_none() {
        let Ok(raw) = <&[u8; frame::HEAD_LEN]>::try_from(&rbuf[..frame::HEAD_LEN]) else {
            break;
        };
        let head = Head::parse(raw);
        let len = head.len.min(rbuf.len() - frame::HEAD_LEN);
        let _ = rbuf.split_to(frame::HEAD_LEN);
        let payload = rbuf.split_to(len).freeze();
        let head = Head { len, ..head };
        if let Err(f) = c.recv(head, payload) {
            c.fail(f.what, Some(f.code));
        }
        if let Some(&post) = ids.get(1) {
            let _ = c.send_data(post, &mut upload, true, &waker);
        }
        for &id in &ids {
            if let Some(Ok(resp)) = c.poll_response(id, &waker) {
                bodies.push(resp.into_body());
            }
        }
        for b in &mut bodies {
            while let Poll::Ready(Some(Ok(_))) = b.poll_frame(&mut cx) {}
        }
        c.released.clone().take(&mut cx, &mut releases);
        c.released(&releases);
        releases.clear();
        assert!(c.recv.available() <= MAX_WINDOW && c.recv.available() >= 0);
        // Answered streams leave the deadline queue; none is left overdue.
        if let Some(next) = c.next_deadline() {
            assert!(next > Instant::now());
        }
        c.out.clear();
    }
    drop(bodies);
    c.released.clone().take(&mut cx, &mut releases);
    c.released(&releases);
    c.fail("fuzz input ended", None);
}
