//! One caller's HTTP/2 connection as protocol state, without I/O: frames in, frames out (into
//! a buffer the server writes), requests and stream events handed back to the server.
//!
//! Every rule of RFC 9113 the gateway relies on is here: stream states and identifiers, flow
//! control both ways, SETTINGS, header blocks spread over CONTINUATION, and the budgets that
//! keep a caller from making the gateway work for nothing (streams reset before they are
//! answered, frames that do nothing, streams the gateway has to refuse).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::future::{AbortHandle, AbortRegistration};
use http::{header, response, HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::{
    request::{HeadBuilder, Refusal},
    Http2Error,
};
use crate::{
    h2codec::{
        flow::RecvWindow,
        frame::{self, flag, kind, setting, Head, Reason, DEFAULT_WINDOW, MAX_WINDOW},
        hpack,
        recv_body::{Http2BodyError, Inflow, RecvBody as RequestBody, Released},
        stream_map::{stream_map, StreamMap},
    },
    headers::L5D_PROXY_ERROR,
    metrics,
};

/// The connection's limits and windows.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: usize,
    /// Each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    pub connection_window: u32,
}

/// A budget of events per period: past it, the caller is told to calm down and the
/// connection ends.
struct Budget {
    limit: u32,
    used: u32,
    since: Instant,
}

const BUDGET_PERIOD: Duration = Duration::from_secs(10);

impl Budget {
    fn new(limit: u32) -> Budget {
        Budget {
            limit,
            used: 0,
            since: Instant::now(),
        }
    }

    /// Counts one; false once the period's budget is spent.
    fn spend(&mut self) -> bool {
        self.used += 1;
        if self.used <= self.limit {
            return true;
        }
        let now = Instant::now();
        if now.duration_since(self.since) >= BUDGET_PERIOD {
            self.since = now;
            self.used = 1;
            return true;
        }
        false
    }
}

/// Frames that change nothing (PING, SETTINGS, PRIORITY, empty DATA, frames for closed
/// streams, unknown types) allowed per period: far above any client's keep-alive.
const NOOP_FRAMES: u32 = 2_000;
/// Streams the caller may reset before their response per period (the rapid-reset attack
/// opens and resets streams to make the server start work it then throws away).
const EARLY_RESETS: u32 = 1_000;
/// Streams the gateway may have to reset or refuse per period for the caller's errors.
const LOCAL_RESETS: u32 = 1_000;
/// Header block bytes (HEADERS and CONTINUATION) beyond the advertised list size: HPACK
/// makes a block smaller than its list, so twice the list is generous.
const BLOCK_FACTOR: usize = 2;
/// Most CONTINUATION frames in one header block: a block of 1-byte frames is an attack.
const MAX_CONTINUATIONS: u32 = 64;
/// The highest stream id (RFC 9113 §5.1.1): the first GOAWAY of a graceful shutdown.
const MAX_STREAM_ID: u32 = (1 << 31) - 1;
/// The payload of the PING that follows it, to know when the caller has seen the GOAWAY.
const SHUTDOWN_PING: [u8; 8] = *b"goaway\0\0";

/// A new request, for the server to start its handler; aborting `abort`'s handle (kept
/// by the stream) stops the handler, before its first poll if the caller reset the stream
/// in the same read.
pub struct NewRequest {
    pub id: u32,
    pub head: http::request::Parts,
    pub body: RequestBody,
    pub abort: AbortRegistration,
}

/// A stream's response side.
enum Local<B> {
    /// The handler is at work; aborting it stops whatever it started upstream.
    Handling(AbortHandle),
    /// Headers sent; body data waiting for flow-control room or the next frame.
    Sending {
        /// Data not yet sent, and whether it ends the stream.
        pending: Option<(Bytes, bool)>,
        /// Trailers to send once `pending` is out.
        trailers: Option<HeaderMap>,
        /// The body, while it waits for `pending` to go (the server polls it otherwise).
        parked: Option<B>,
    },
    Done,
}

struct Stream<B> {
    local: Local<B>,
    /// END_STREAM received.
    remote_done: bool,
    inflow: Option<Arc<Inflow>>,
    /// What the caller may still send on this stream.
    recv: RecvWindow,
    send_window: i64,
    /// The declared content-length, and what arrived so far.
    content_length: Option<u64>,
    received: u64,
    head_request: bool,
}

/// A header block spread over CONTINUATION frames.
struct PartialBlock {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
    frames: u32,
}

pub struct Conn<B> {
    settings: Settings,
    decoder: hpack::Decoder,
    encoder: hpack::Encoder,
    streams: StreamMap<Stream<B>>,
    /// The highest stream the caller opened.
    last_stream: u32,
    partial: Option<PartialBlock>,
    /// Whether the caller's first SETTINGS has arrived (it must come first).
    saw_settings: bool,
    /// What the caller may still send on the connection.
    recv: RecvWindow,
    send_window: i64,
    /// The caller's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    peer_stream_window: i64,
    peer_max_frame: usize,
    /// Streams with data waiting for flow-control room or for the output to drain.
    blocked: Vec<u32>,
    /// GOAWAY sent (graceful): streams above this are not served.
    goaway: Option<u32>,
    /// Graceful shutdown announced (GOAWAY naming the highest stream id, then a PING) and its
    /// PING not yet answered: streams the caller opened before it saw the announcement are
    /// still on their way, and are still taken.
    announced: bool,
    /// GOAWAY received: the caller opens no more streams.
    pub peer_goaway: bool,
    noop: Budget,
    early_resets: Budget,
    local_resets: Budget,
    released: Arc<Released>,
    scratch: Vec<u8>,
    /// The last request's `:authority` (parsed) and number of fields, see [`HeadBuilder`].
    last_authority: Option<(Bytes, http::uri::Authority)>,
    last_fields: usize,
    /// Bodies whose pending data went: the server polls them for their next frame.
    pub resumed: Vec<(u32, B)>,
}

/// Output beyond which the connection stops taking the caller's frames and sending body
/// data until the caller has read some: a caller that sends but never reads (PING or
/// SETTINGS floods included) is held to this much memory.
pub const OUT_HIGH: usize = 64 * 1024;

impl<B> Conn<B> {
    /// The connection, with the gateway's SETTINGS and connection window already in `out`.
    pub fn new(settings: Settings, released: Arc<Released>, out: &mut Vec<u8>) -> Conn<B> {
        frame::put_settings(
            out,
            &[
                (
                    setting::MAX_CONCURRENT_STREAMS,
                    settings.max_concurrent_streams,
                ),
                (setting::INITIAL_WINDOW_SIZE, settings.stream_window),
                (
                    setting::MAX_HEADER_LIST_SIZE,
                    settings.max_header_list_size as u32,
                ),
                (setting::ENABLE_PUSH, 0),
            ],
        );
        let extra = settings.connection_window as i64 - DEFAULT_WINDOW;
        if extra > 0 {
            frame::put_window_update(out, 0, extra as u32);
        }
        Conn {
            settings,
            decoder: hpack::Decoder::default(),
            encoder: hpack::Encoder::default(),
            streams: stream_map(),
            last_stream: 0,
            partial: None,
            saw_settings: false,
            recv: RecvWindow::new(settings.connection_window),
            send_window: DEFAULT_WINDOW,
            peer_stream_window: DEFAULT_WINDOW,
            peer_max_frame: frame::MIN_MAX_FRAME_SIZE as usize,
            blocked: Vec::new(),
            goaway: None,
            announced: false,
            peer_goaway: false,
            noop: Budget::new(NOOP_FRAMES),
            early_resets: Budget::new(EARLY_RESETS),
            local_resets: Budget::new(LOCAL_RESETS),
            released,
            scratch: Vec::new(),
            last_authority: None,
            last_fields: 0,
            resumed: Vec::new(),
        }
    }

    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    pub fn last_stream(&self) -> u32 {
        self.last_stream
    }

    /// Graceful shutdown, in two steps (RFC 9113 §6.8): a GOAWAY naming the highest stream id
    /// tells the caller to open no more, and a PING follows it; once the caller answers the
    /// PING it has seen the GOAWAY, so every stream it opened before is in, and a second GOAWAY
    /// names the last of them. A single GOAWAY with the last stream received would refuse the
    /// requests already on the wire. A caller that never answers is closed at the drain
    /// deadline.
    pub fn go_away(&mut self, out: &mut Vec<u8>) {
        if !self.shutting_down() {
            self.announced = true;
            frame::put_goaway(out, MAX_STREAM_ID, Reason::NO_ERROR, "");
            frame::put_ping(out, &SHUTDOWN_PING);
        }
    }

    /// The caller answered the shutdown's PING: the final GOAWAY.
    fn last_go_away(&mut self, out: &mut Vec<u8>) {
        if self.announced && self.goaway.is_none() {
            self.goaway = Some(self.last_stream);
            frame::put_goaway(out, self.last_stream, Reason::NO_ERROR, "");
        }
    }

    /// The final GOAWAY is sent: the connection ends when its streams do.
    pub fn going_away(&self) -> bool {
        self.goaway.is_some()
    }

    /// Graceful shutdown has begun (announced, or done).
    pub fn shutting_down(&self) -> bool {
        self.announced || self.goaway.is_some()
    }

    /// Takes one frame. Errors are connection errors: the server sends GOAWAY and closes.
    pub fn recv(
        &mut self,
        head: Head,
        payload: Bytes,
        out: &mut Vec<u8>,
        events: &mut Vec<NewRequest>,
    ) -> Result<(), Http2Error> {
        if head.len > frame::MIN_MAX_FRAME_SIZE as usize {
            return Err(Http2Error::protocol(
                Reason::FRAME_SIZE_ERROR,
                "frame_too_large",
            ));
        }
        if !self.saw_settings {
            if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                return Err(Http2Error::protocol(
                    Reason::PROTOCOL_ERROR,
                    "preface_not_followed_by_settings",
                ));
            }
            self.saw_settings = true;
        }
        if let Some(partial) = &mut self.partial {
            if head.kind != kind::CONTINUATION || head.stream != partial.stream {
                return Err(Http2Error::protocol(
                    Reason::PROTOCOL_ERROR,
                    "header_block_interrupted",
                ));
            }
            partial.frames += 1;
            partial.block.extend_from_slice(&payload);
            if partial.frames > MAX_CONTINUATIONS
                || partial.block.len() > self.settings.max_header_list_size * BLOCK_FACTOR
            {
                return Err(Http2Error::Calm("header_block_too_large"));
            }
            if head.has(flag::END_HEADERS) {
                let p = self.partial.take().expect("checked above");
                return self.headers(p.stream, p.end_stream, Bytes::from(p.block), out, events);
            }
            return Ok(());
        }
        match head.kind {
            kind::DATA => self.data(head, payload, out),
            kind::HEADERS => {
                if head.stream == 0 {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "headers_on_stream_0",
                    ));
                }
                let mut block = unpad(&head, payload)?;
                if head.has(flag::PRIORITY) {
                    if block.len() < 5 {
                        return Err(Http2Error::protocol(
                            Reason::FRAME_SIZE_ERROR,
                            "short_priority",
                        ));
                    }
                    let _ = block.split_to(5);
                }
                let end_stream = head.has(flag::END_STREAM);
                if head.has(flag::END_HEADERS) {
                    return self.headers(head.stream, end_stream, block, out, events);
                }
                if block.len() > self.settings.max_header_list_size * BLOCK_FACTOR {
                    return Err(Http2Error::Calm("header_block_too_large"));
                }
                self.partial = Some(PartialBlock {
                    stream: head.stream,
                    end_stream,
                    block: block.to_vec(),
                    frames: 0,
                });
                Ok(())
            }
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "priority_on_stream_0",
                    ));
                }
                if head.len != 5 {
                    self.reset(head.stream, Reason::FRAME_SIZE_ERROR, out)?;
                }
                self.noop()
            }
            kind::RST_STREAM => self.rst_stream(head, &payload),
            kind::SETTINGS => self.settings(head, &payload, out),
            kind::PUSH_PROMISE => Err(Http2Error::protocol(
                Reason::PROTOCOL_ERROR,
                "push_promise_from_client",
            )),
            kind::PING => {
                if head.stream != 0 {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "ping_on_stream",
                    ));
                }
                let Ok(data) = <[u8; 8]>::try_from(&payload[..]) else {
                    return Err(Http2Error::protocol(Reason::FRAME_SIZE_ERROR, "ping_size"));
                };
                if !head.has(flag::ACK) {
                    frame::put_ping_ack(out, &data);
                } else if data == SHUTDOWN_PING && self.announced {
                    self.last_go_away(out);
                    return Ok(());
                }
                self.noop()
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "goaway_on_stream",
                    ));
                }
                if payload.len() < 8 {
                    return Err(Http2Error::protocol(
                        Reason::FRAME_SIZE_ERROR,
                        "goaway_size",
                    ));
                }
                self.peer_goaway = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.window_update(head, &payload, out),
            kind::CONTINUATION => Err(Http2Error::protocol(
                Reason::PROTOCOL_ERROR,
                "continuation_without_headers",
            )),
            // Unknown types are ignored (§4.1), within the budget.
            _ => self.noop(),
        }
    }

    fn noop(&mut self) -> Result<(), Http2Error> {
        if self.noop.spend() {
            Ok(())
        } else {
            Err(Http2Error::Calm("too_many_frames_without_effect"))
        }
    }

    fn headers(
        &mut self,
        id: u32,
        end_stream: bool,
        block: Bytes,
        out: &mut Vec<u8>,
        events: &mut Vec<NewRequest>,
    ) -> Result<(), Http2Error> {
        if let Some(s) = self.streams.get(&id) {
            // Trailers: a second block on an open stream must end it.
            let mut b = HeadBuilder::trailers(self.settings.max_header_list_size);
            self.decoder.decode(&block, |f| b.field(f))?;
            if s.remote_done {
                return self.reset(id, Reason::STREAM_CLOSED, out);
            }
            if !end_stream {
                return self.reset(id, Reason::PROTOCOL_ERROR, out);
            }
            let trailers = match b.finish_trailers() {
                Ok(t) => t,
                Err(r) => {
                    metrics::http_error(r.reason());
                    return self.reset(id, Reason::PROTOCOL_ERROR, out);
                }
            };
            let s = self.streams.get_mut(&id).expect("looked up above");
            if s.content_length.is_some_and(|cl| cl != s.received) {
                return self.malformed_body(id, out);
            }
            s.remote_done = true;
            if let Some(inflow) = &s.inflow {
                inflow.trailers(trailers);
            }
            self.close_if_done(id, out);
            return Ok(());
        }
        let mut b = HeadBuilder::request(self.settings.max_header_list_size, self.last_fields);
        self.decoder.decode(&block, |f| b.field(f))?;
        if id.is_multiple_of(2) {
            return Err(Http2Error::protocol(
                Reason::PROTOCOL_ERROR,
                "even_stream_id",
            ));
        }
        if id <= self.last_stream {
            // A stream already closed (perhaps reset by the gateway while the caller was
            // still sending): nothing to do but keep the compression context, done above.
            return self.noop();
        }
        self.last_stream = id;
        if self.goaway.is_some_and(|last| id > last) {
            return Ok(());
        }
        if self.streams.len() >= self.settings.max_concurrent_streams as usize {
            metrics::http_error("too_many_concurrent_streams");
            self.count_local_reset()?;
            frame::put_rst_stream(out, id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        let (head, content_length) = match b.finish_request(&mut self.last_authority) {
            Ok(h) => h,
            Err(r) => return self.refuse(id, r, end_stream, out),
        };
        self.last_fields = head.headers.len();
        if end_stream && content_length.is_some_and(|cl| cl != 0) {
            return self.refuse(id, Refusal::Malformed("invalid_content_length"), true, out);
        }
        let head_request = head.method == http::Method::HEAD;
        let (inflow, body) = if end_stream {
            (None, RequestBody::empty())
        } else {
            let inflow = Inflow::new(id, self.released.clone());
            (
                Some(inflow.clone()),
                RequestBody::streamed(inflow, content_length),
            )
        };
        let (abort, registration) = AbortHandle::new_pair();
        self.streams.insert(
            id,
            Stream {
                local: Local::Handling(abort),
                remote_done: end_stream,
                inflow,
                recv: RecvWindow::new(self.settings.stream_window),
                send_window: self.peer_stream_window,
                content_length,
                received: 0,
                head_request,
            },
        );
        events.push(NewRequest {
            id,
            head,
            body,
            abort: registration,
        });
        Ok(())
    }

    /// Answers a refused request head itself: 400 or 431 with the reason in
    /// `l5d-proxy-error`; a caller still sending is then told to stop.
    fn refuse(
        &mut self,
        id: u32,
        r: Refusal,
        end_stream: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Http2Error> {
        metrics::http_error(r.reason());
        self.count_local_reset()?;
        let status = match r {
            Refusal::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        headers.insert(L5D_PROXY_ERROR, HeaderValue::from_static(r.reason()));
        self.scratch.clear();
        self.encoder
            .encode(Some(status), &headers, &mut self.scratch);
        frame::put_header_block(out, id, &self.scratch, true, self.peer_max_frame);
        if !end_stream {
            frame::put_rst_stream(out, id, Reason::NO_ERROR);
        }
        Ok(())
    }

    fn count_local_reset(&mut self) -> Result<(), Http2Error> {
        if self.local_resets.spend() {
            Ok(())
        } else {
            Err(Http2Error::Calm("too_many_streams_refused"))
        }
    }

    /// A stream error: RST_STREAM, the stream's handler and body stopped.
    fn reset(&mut self, id: u32, reason: Reason, out: &mut Vec<u8>) -> Result<(), Http2Error> {
        self.count_local_reset()?;
        frame::put_rst_stream(out, id, reason);
        if let Some(s) = self.streams.remove(&id) {
            self.stop(s, Http2BodyError::Reset(reason));
        }
        Ok(())
    }

    fn stop(&mut self, s: Stream<B>, why: Http2BodyError) {
        if let Local::Handling(abort) = &s.local {
            abort.abort();
        }
        if let Some(inflow) = &s.inflow {
            inflow.fail(why);
        }
    }

    fn malformed_body(&mut self, id: u32, out: &mut Vec<u8>) -> Result<(), Http2Error> {
        metrics::http_error("request_body_content_length_mismatch");
        if let Some(s) = self.streams.get(&id) {
            if let Some(inflow) = &s.inflow {
                inflow.fail(Http2BodyError::ContentLength);
            }
        }
        self.reset(id, Reason::PROTOCOL_ERROR, out)
    }

    fn data(&mut self, head: Head, payload: Bytes, out: &mut Vec<u8>) -> Result<(), Http2Error> {
        if head.stream == 0 {
            return Err(Http2Error::protocol(
                Reason::PROTOCOL_ERROR,
                "data_on_stream_0",
            ));
        }
        let len = payload.len();
        if !self.recv.take(len) {
            return Err(Http2Error::protocol(
                Reason::FLOW_CONTROL_ERROR,
                "data_beyond_connection_window",
            ));
        }
        let data = unpad(&head, payload)?;
        let end = head.has(flag::END_STREAM);
        let padding = len - data.len();
        let Some(s) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(Http2Error::protocol(
                    Reason::PROTOCOL_ERROR,
                    "data_on_idle_stream",
                ));
            }
            // A stream already closed: its bytes go back to the connection's window.
            self.release_connection(len, out);
            return self.noop();
        };
        if s.remote_done {
            self.release_connection(len, out);
            return self.reset(head.stream, Reason::STREAM_CLOSED, out);
        }
        if !s.recv.take(len) {
            self.release_connection(len, out);
            return self.reset(head.stream, Reason::FLOW_CONTROL_ERROR, out);
        }
        s.received += data.len() as u64;
        let length_ok = match s.content_length {
            Some(cl) => s.received <= cl && (!end || s.received == cl),
            None => true,
        };
        if !length_ok {
            self.release_connection(len, out);
            return self.malformed_body(head.stream, out);
        }
        if end {
            s.remote_done = true;
        }
        let n = data.len();
        let empty = n == 0 && !end;
        let delivered = match &s.inflow {
            Some(inflow) => inflow.push(data, end),
            None => false,
        };
        // Padding, and whatever nobody will read, goes back at once.
        let back = padding + if delivered { 0 } else { n };
        if back > 0 {
            self.release(head.stream, back, out);
        }
        if end {
            self.close_if_done(head.stream, out);
        }
        if empty {
            return self.noop();
        }
        Ok(())
    }

    fn rst_stream(&mut self, head: Head, payload: &[u8]) -> Result<(), Http2Error> {
        let Ok(code) = <[u8; 4]>::try_from(payload) else {
            return Err(Http2Error::protocol(
                Reason::FRAME_SIZE_ERROR,
                "rst_stream_size",
            ));
        };
        if head.stream == 0 || head.stream > self.last_stream {
            return Err(Http2Error::protocol(
                Reason::PROTOCOL_ERROR,
                "rst_stream_on_idle_stream",
            ));
        }
        let reason = Reason(u32::from_be_bytes(code));
        match self.streams.remove(&head.stream) {
            Some(s) => {
                let answered = !matches!(s.local, Local::Handling(_));
                self.stop(s, Http2BodyError::Reset(reason));
                self.blocked.retain(|&b| b != head.stream);
                if !answered && !self.early_resets.spend() {
                    return Err(Http2Error::Calm("too_many_streams_reset_early"));
                }
                Ok(())
            }
            None => self.noop(),
        }
    }

    fn settings(
        &mut self,
        head: Head,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Http2Error> {
        if head.stream != 0 {
            return Err(Http2Error::protocol(
                Reason::PROTOCOL_ERROR,
                "settings_on_stream",
            ));
        }
        if head.has(flag::ACK) {
            if !payload.is_empty() {
                return Err(Http2Error::protocol(
                    Reason::FRAME_SIZE_ERROR,
                    "settings_ack_size",
                ));
            }
            return self.noop();
        }
        if !payload.len().is_multiple_of(6) {
            return Err(Http2Error::protocol(
                Reason::FRAME_SIZE_ERROR,
                "settings_size",
            ));
        }
        for p in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([p[0], p[1]]);
            let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            match id {
                setting::HEADER_TABLE_SIZE => self.encoder.set_max_size(value as usize),
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "enable_push_value",
                    ))
                }
                setting::INITIAL_WINDOW_SIZE => {
                    if value as i64 > MAX_WINDOW {
                        return Err(Http2Error::protocol(
                            Reason::FLOW_CONTROL_ERROR,
                            "initial_window_size_value",
                        ));
                    }
                    let delta = value as i64 - self.peer_stream_window;
                    self.peer_stream_window = value as i64;
                    for (id, s) in self.streams.iter_mut() {
                        s.send_window += delta;
                        if s.send_window > MAX_WINDOW {
                            return Err(Http2Error::protocol(
                                Reason::FLOW_CONTROL_ERROR,
                                "window_overflow",
                            ));
                        }
                        if delta > 0
                            && matches!(
                                s.local,
                                Local::Sending {
                                    pending: Some(_),
                                    ..
                                }
                            )
                        {
                            self.blocked.push(*id);
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::MIN_MAX_FRAME_SIZE..=frame::MAX_MAX_FRAME_SIZE).contains(&value) {
                        return Err(Http2Error::protocol(
                            Reason::PROTOCOL_ERROR,
                            "max_frame_size_value",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                _ => {}
            }
        }
        frame::put_settings_ack(out);
        self.noop()?;
        self.send_blocked(out);
        Ok(())
    }

    fn window_update(
        &mut self,
        head: Head,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Http2Error> {
        let Ok(raw) = <[u8; 4]>::try_from(payload) else {
            return Err(Http2Error::protocol(
                Reason::FRAME_SIZE_ERROR,
                "window_update_size",
            ));
        };
        let increment = (u32::from_be_bytes(raw) & 0x7fff_ffff) as i64;
        if head.stream == 0 {
            if increment == 0 {
                return Err(Http2Error::protocol(
                    Reason::PROTOCOL_ERROR,
                    "zero_window_increment",
                ));
            }
            self.send_window += increment;
            if self.send_window > MAX_WINDOW {
                return Err(Http2Error::protocol(
                    Reason::FLOW_CONTROL_ERROR,
                    "window_overflow",
                ));
            }
            for (id, s) in &self.streams {
                if matches!(
                    s.local,
                    Local::Sending {
                        pending: Some(_),
                        ..
                    }
                ) {
                    self.blocked.push(*id);
                }
            }
            self.send_blocked(out);
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(Http2Error::protocol(
                    Reason::PROTOCOL_ERROR,
                    "window_update_on_idle_stream",
                ));
            }
            return self.noop();
        };
        if increment == 0 {
            return self.reset(head.stream, Reason::PROTOCOL_ERROR, out);
        }
        s.send_window += increment;
        if s.send_window > MAX_WINDOW {
            return self.reset(head.stream, Reason::FLOW_CONTROL_ERROR, out);
        }
        if matches!(
            s.local,
            Local::Sending {
                pending: Some(_),
                ..
            }
        ) {
            self.blocked.push(head.stream);
            self.send_blocked(out);
        }
        Ok(())
    }

    /// Bytes the caller's request bodies were read of (or dropped with): back into the
    /// windows, a WINDOW_UPDATE once half a window is owed, so one goes per many frames.
    pub fn released(&mut self, events: &[(u32, usize, bool)], out: &mut Vec<u8>) {
        for &(id, n, dropped) in events {
            self.release(id, n, out);
            if dropped {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.inflow = None;
                }
                self.close_if_done(id, out);
            }
        }
    }

    fn release(&mut self, id: u32, n: usize, out: &mut Vec<u8>) {
        if let Some(s) = self.streams.get_mut(&id) {
            if let Some(increment) = s.recv.release(n) {
                // A stream the caller has ended needs no more credit.
                if !s.remote_done {
                    frame::put_window_update(out, id, increment);
                }
            }
        }
        self.release_connection(n, out);
    }

    fn release_connection(&mut self, n: usize, out: &mut Vec<u8>) {
        if let Some(increment) = self.recv.release(n) {
            frame::put_window_update(out, 0, increment);
        }
    }

    /// The handler's response head. False when the stream is gone (the caller reset it):
    /// the response is dropped.
    pub fn respond(
        &mut self,
        id: u32,
        mut head: response::Parts,
        body_len: Option<u64>,
        end: bool,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(s) = self.streams.get_mut(&id) else {
            return false;
        };
        // A body of known length says so, as HTTP/1.1 callers are told; not for answers
        // that carry no body by definition.
        if let Some(n) = body_len {
            let bodiless = s.head_request
                || head.status.is_informational()
                || head.status == StatusCode::NO_CONTENT
                || head.status == StatusCode::NOT_MODIFIED;
            if !bodiless && !head.headers.contains_key(header::CONTENT_LENGTH) {
                head.headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        s.local = if end {
            Local::Done
        } else {
            Local::Sending {
                pending: None,
                trailers: None,
                parked: None,
            }
        };
        self.scratch.clear();
        self.encoder
            .encode(Some(head.status), &head.headers, &mut self.scratch);
        frame::put_header_block(out, id, &self.scratch, end, self.peer_max_frame);
        if end {
            self.close_if_done(id, out);
        }
        true
    }

    /// A data frame of the response body, sent as far as the windows allow. Once it has
    /// gone, the body is handed back through `resumed` to be polled for its next frame
    /// (unless it ended); until then it stays parked with the stream.
    pub fn send_data(&mut self, id: u32, data: Bytes, end: bool, body: B, out: &mut Vec<u8>) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Local::Sending {
            pending, parked, ..
        } = &mut s.local
        else {
            return;
        };
        *pending = Some((data, end));
        *parked = Some(body);
        self.send_stream(id, out);
    }

    /// The response body's trailers: sent once its data is out, ending the stream.
    pub fn send_trailers(&mut self, id: u32, trailers: HeaderMap, out: &mut Vec<u8>) {
        if let Some(s) = self.streams.get_mut(&id) {
            if let Local::Sending { trailers: t, .. } = &mut s.local {
                *t = Some(trailers);
                self.send_stream(id, out);
            }
        }
    }

    /// The response body failed: the caller is told with RST_STREAM(INTERNAL_ERROR).
    pub fn body_failed(&mut self, id: u32, out: &mut Vec<u8>) {
        if let Some(s) = self.streams.remove(&id) {
            frame::put_rst_stream(out, id, Reason::INTERNAL_ERROR);
            if let Some(inflow) = &s.inflow {
                inflow.fail(Http2BodyError::Reset(Reason::INTERNAL_ERROR));
            }
        }
    }

    /// Sends what blocked streams can, now that windows opened or the output drained.
    /// True if anything was written.
    pub fn send_blocked(&mut self, out: &mut Vec<u8>) -> bool {
        if self.blocked.is_empty() {
            return false;
        }
        let before = out.len();
        let blocked = std::mem::take(&mut self.blocked);
        for id in blocked {
            self.send_stream(id, out);
        }
        out.len() != before
    }

    /// Sends a stream's pending data as far as the windows, the caller's frame size and the
    /// output allow, then its trailers or end.
    fn send_stream(&mut self, id: u32, out: &mut Vec<u8>) {
        let max_frame = self.peer_max_frame;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Local::Sending {
            pending,
            trailers,
            parked,
        } = &mut s.local
        else {
            return;
        };
        if let Some((data, end)) = pending {
            let finish_here = *end && trailers.is_none();
            let mut ended = false;
            while !data.is_empty() {
                let room = s.send_window.min(self.send_window).min(max_frame as i64);
                if room <= 0 || out.len() >= OUT_HIGH {
                    if !self.blocked.contains(&id) {
                        self.blocked.push(id);
                    }
                    return;
                }
                let n = (room as usize).min(data.len());
                let chunk = data.split_to(n);
                ended = data.is_empty() && finish_here;
                let flags = if ended { flag::END_STREAM } else { 0 };
                frame::put_head(out, n, kind::DATA, flags, id);
                out.extend_from_slice(&chunk);
                s.send_window -= n as i64;
                self.send_window -= n as i64;
            }
            *pending = None;
            if finish_here {
                if !ended {
                    // Empty data that ends the stream: a frame of its own.
                    frame::put_head(out, 0, kind::DATA, flag::END_STREAM, id);
                }
                s.local = Local::Done;
                self.close_if_done(id, out);
                return;
            }
            if let Some(body) = parked.take() {
                self.resumed.push((id, body));
                return;
            }
        }
        if let Some(t) = trailers.take() {
            self.scratch.clear();
            self.encoder.encode(None, &t, &mut self.scratch);
            frame::put_header_block(out, id, &self.scratch, true, max_frame);
            s.local = Local::Done;
            self.close_if_done(id, out);
        }
    }

    /// A stream whose both sides are done is forgotten; one whose response is done while the
    /// caller still sends a body nobody reads is reset (NO_ERROR: §8.1 lets a server stop a
    /// request body it does not need).
    fn close_if_done(&mut self, id: u32, out: &mut Vec<u8>) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !matches!(s.local, Local::Done) {
            return;
        }
        if s.remote_done {
            self.streams.remove(&id);
        } else if s.inflow.is_none() {
            frame::put_rst_stream(out, id, Reason::NO_ERROR);
            self.streams.remove(&id);
        }
    }

    /// The connection is ending: readers of unfinished bodies learn so.
    pub fn close_all(&mut self) {
        for (_, s) in self.streams.drain() {
            if let Some(inflow) = &s.inflow {
                inflow.fail(Http2BodyError::ConnectionClosed);
            }
            if let Local::Handling(abort) = &s.local {
                abort.abort();
            }
        }
    }
}

fn unpad(head: &Head, payload: Bytes) -> Result<Bytes, Http2Error> {
    frame::unpad(head, payload).map_err(|(code, what)| Http2Error::protocol(code, what))
}
