//! HTTP/1.1 as the gateway speaks it to a service, without I/O: a request head written
//! straight from the caller's `http::request::Parts`, a response head parsed in place with
//! httparse (header values are slices of the bytes read, not copies), and the three ways a
//! response body can be framed (RFC 9112 §6.3), including the chunked coding.
//!
//! The connection layer feeds bytes in and takes frames out; every function here is total over
//! whatever bytes a service sends, which the `http1_response` fuzz target holds it to.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};

pub use crate::chunked::{chunk_size_line, encode_trailers, Chunk, ChunkedState};
use crate::{
    chunked::{self, ChunkError},
    decimal::Decimal,
    framing_fields::FramingFields,
    head_template::{field_spans, HeadTemplate},
    headers::{strip_hop_by_hop, GatewayFields},
};

/// Longest response head (status line and headers), and longest trailer section, taken from
/// a service: as much as the connection's read buffer holds.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one response head or trailer section.
pub const MAX_HEADERS: usize = 128;
/// Most interim (1xx) responses before the final one.
pub const MAX_INTERIM: usize = 16;

/// What a service sent that HTTP/1.1 does not allow, or that the gateway will not forward.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Http1Error {
    #[error("malformed response head")]
    BadHead,
    #[error("response head too large")]
    HeadTooLarge,
    #[error("too many response headers")]
    TooManyHeaders,
    #[error("invalid content-length")]
    BadContentLength,
    /// Both framings at once: the signature of response splitting (RFC 9112 §6.1).
    #[error("both transfer-encoding and content-length")]
    AmbiguousLength,
    #[error("transfer-encoding on an HTTP/1.0 response")]
    TransferEncodingOnHttp10,
    #[error("malformed chunked body")]
    BadChunk,
    #[error("too many interim responses")]
    TooManyInterim,
    /// 101 to a request that asked for no upgrade (upgrades travel on connections of their own).
    #[error("unexpected protocol switch")]
    UnexpectedSwitch,
}

impl From<ChunkError> for Http1Error {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::Malformed => Http1Error::BadChunk,
            ChunkError::TrailersTooLarge => Http1Error::HeadTooLarge,
            ChunkError::TooManyTrailers => Http1Error::TooManyHeaders,
        }
    }
}

impl Http1Error {
    /// The stable reason string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Http1Error::BadHead => "malformed response head",
            Http1Error::HeadTooLarge => "response head too large",
            Http1Error::TooManyHeaders => "too many response headers",
            Http1Error::BadContentLength => "invalid content-length",
            Http1Error::AmbiguousLength => "both transfer-encoding and content-length",
            Http1Error::TransferEncodingOnHttp10 => "transfer-encoding on an HTTP/1.0 response",
            Http1Error::BadChunk => "malformed chunked body",
            Http1Error::TooManyInterim => "too many interim responses",
            Http1Error::UnexpectedSwitch => "unexpected protocol switch",
        }
    }
}

/// How a request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body, and no `Content-Length` either.
    None,
    Length(u64),
    Chunked,
}

impl RequestFraming {
    /// From what the caller's body says of itself: a body of known length keeps it (hyper has
    /// already held the caller to a `Content-Length` it sent), an open-ended one is chunked.
    /// An empty body on a method that normally carries one says so with `Content-Length: 0`,
    /// as do requests whose caller sent that header.
    pub fn choose(method: &Method, headers: &HeaderMap, end: bool, exact: Option<u64>) -> Self {
        if end {
            let says_empty = headers.contains_key(header::CONTENT_LENGTH)
                || *method == Method::POST
                || *method == Method::PUT
                || *method == Method::PATCH;
            return if says_empty {
                RequestFraming::Length(0)
            } else {
                RequestFraming::None
            };
        }
        match exact {
            Some(n) => RequestFraming::Length(n),
            None => RequestFraming::Chunked,
        }
    }
}

/// Writes a request head: request line, the caller's headers as rewritten by the gateway
/// (hop-by-hop fields already gone) but those `added` replaces, then `added`, and the framing
/// the gateway chose. `Content-Length` is always the gateway's own, so the framing and the
/// header cannot disagree.
pub fn encode_request_head(
    parts: &http::request::Parts,
    framing: RequestFraming,
    added: &GatewayFields,
) -> Bytes {
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    // Chunked needs HTTP/1.1; an HTTP/1.0 caller's body of unknown length goes as one.
    let http10 = parts.version == Version::HTTP_10 && framing != RequestFraming::Chunked;
    let mut len = parts.method.as_str().len() + target.len() + 80;
    for (name, value) in &parts.headers {
        len += name.as_str().len() + value.len() + 4;
    }
    for (name, value) in added.lines() {
        len += name.len() + value.len() + 4;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(if http10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || added.replaces(name) {
            continue;
        }
        put_field(&mut out, name.as_str(), value);
    }
    for (name, value) in added.lines() {
        put_field(&mut out, name, value);
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(Decimal::new(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

fn put_field(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Takes the next piece of a chunked response body off `buf` (see [`chunked::decode_chunk`]).
pub fn decode_chunk(
    state: &mut ChunkedState,
    buf: &mut BytesMut,
) -> Result<Option<Chunk>, Http1Error> {
    chunked::decode_chunk(state, buf).map_err(Into::into)
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// HEAD, 204 and 304 responses carry none, whatever their headers say.
    Empty,
    Length(u64),
    Chunked,
    /// Until the service closes the connection, which then cannot be reused.
    UntilClose,
}

/// A final response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    /// Whether the connection can carry another request once this response has been read.
    pub keep_alive: bool,
}

/// One parsed response head.
#[derive(Debug)]
pub enum Parsed {
    /// A 1xx other than 101, taken off the buffer: the final response is still to come.
    Interim,
    Final(ResponseHead),
}

/// What a response head parsed to besides its fields: kept with a connection's template, so
/// that a head repeating the kept one byte for byte is not parsed again.
#[derive(Debug, Clone, Copy)]
pub struct StatusLine {
    code: u16,
    minor: u8,
    fields: FramingFields,
}

/// A connection's response template (see [`HeadTemplate`]).
pub type ResponseTemplate = HeadTemplate<StatusLine>;

/// Parses the response head at the start of `buf` and takes its bytes off the buffer.
/// A head repeating the template's byte for byte comes with its hop-by-hop fields already
/// removed (the caller removes them from every response); others come as sent.
/// `Ok(None)`: the head is not complete yet. `method` is the request's (a response to HEAD
/// has no body). `template` is the connection's: the last response's fields, from which this
/// one's map is built when the names match.
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    template: &mut ResponseTemplate,
) -> Result<Option<Parsed>, Http1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    if let Some((len, line, headers)) = template.repeat(buf) {
        buf.advance(len);
        return final_head(line, headers, method).map(Some);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut fields = FramingFields::default();
    let (len, code, minor, spans) = {
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            &buf[..],
            &mut slots,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(Http1Error::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Http1Error::TooManyHeaders),
            Err(_) => return Err(Http1Error::BadHead),
        };
        if len > MAX_HEAD {
            return Err(Http1Error::HeadTooLarge);
        }
        // Where each field lies, so that its value can point into the head once the head is
        // split off the buffer.
        let spans =
            field_spans(buf, res.headers, &mut fields).map_err(|_| Http1Error::BadContentLength)?;
        let code = res.code.ok_or(Http1Error::BadHead)?;
        let minor = res.version.ok_or(Http1Error::BadHead)?;
        (len, code, minor, spans)
    };
    let head = buf.split_to(len).freeze();
    if (100..200).contains(&code) {
        if code == 101 {
            return Err(Http1Error::UnexpectedSwitch);
        }
        return Ok(Some(Parsed::Interim));
    }
    let headers = template
        .headers(&head, &spans)
        .map_err(|_| Http1Error::BadHead)?;
    let line = StatusLine {
        code,
        minor,
        fields,
    };
    let parsed = final_head(line, headers, method)?;
    // Only a head that parsed to the end is noted, so a repeat of it parses the same way. Its
    // map is kept without the hop-by-hop fields every response loses before it is forwarded
    // (`Connection: keep-alive` in nearly every one), so a repeat does not pay to remove them.
    template.note_outcome(&head, line, |fields| {
        let mut forwarded = fields.clone();
        strip_hop_by_hop(&mut forwarded, false);
        forwarded
    });
    Ok(Some(parsed))
}

/// A final (non-1xx) response head from its status line, framing fields and map.
fn final_head(line: StatusLine, headers: HeaderMap, method: &Method) -> Result<Parsed, Http1Error> {
    let StatusLine {
        code,
        minor,
        fields,
    } = line;
    let status = StatusCode::from_u16(code).map_err(|_| Http1Error::BadHead)?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let body = response_framing(&fields, version)?;
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        BodyFraming::Empty
    } else {
        body
    };
    // HTTP/1.1 stays open unless told to close; HTTP/1.0 closes unless told to stay.
    let closes = fields.close || (version == Version::HTTP_10 && !fields.keep_alive);
    let keep_alive = framing != BodyFraming::UntilClose && !closes;
    Ok(Parsed::Final(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// A response's framing from its fields (RFC 9112 §6.3).
fn response_framing(fields: &FramingFields, version: Version) -> Result<BodyFraming, Http1Error> {
    if fields.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(Http1Error::TransferEncodingOnHttp10);
        }
        if fields.content_length.is_some() {
            return Err(Http1Error::AmbiguousLength);
        }
        return Ok(if fields.chunked_last {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        });
    }
    Ok(match fields.content_length {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::UntilClose,
    })
}

/// For the `http1_response` fuzz target: `data` as a service's bytes, fed in pieces of
/// varying size through the head parser and the body framing it chose, as the connection
/// layer does. Never panics; nothing decoded is longer than what came in.
#[doc(hidden)]
pub fn fuzz_response(data: &[u8]) {
    let (&first, data) = match data.split_first() {
        Some(x) => x,
        None => return,
    };
    let method = if first & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let step = usize::from(first >> 1).max(1);
    let mut buf = BytesMut::new();
    let mut pieces = data.chunks(step);
    let mut interim = 0;
    let head = loop {
        match parse_response(&mut buf, &method, &mut HeadTemplate::default()) {
            Ok(Some(Parsed::Final(h))) => break h,
            Ok(Some(Parsed::Interim)) => {
                interim += 1;
                if interim > MAX_INTERIM {
                    return;
                }
            }
            Ok(None) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return,
            },
            Err(_) => return,
        }
    };
    assert!(head.headers.len() <= MAX_HEADERS);
    let mut decoded = 0usize;
    if head.framing == BodyFraming::Chunked {
        let mut state = ChunkedState::Size;
        loop {
            match decode_chunk(&mut state, &mut buf) {
                Ok(Some(Chunk::Data(d))) => {
                    assert!(!d.is_empty());
                    decoded += d.len();
                }
                Ok(Some(Chunk::Trailers(t))) => {
                    assert!(!t.contains_key(header::CONTENT_LENGTH));
                    assert_eq!(state, ChunkedState::Done);
                }
                Ok(Some(Chunk::End)) => break,
                Ok(None) => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => break,
                },
                Err(_) => break,
            }
        }
    }
    assert!(decoded <= data.len());
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::chunked::MAX_CHUNK_LINE;

    fn parse(bytes: &[u8]) -> Result<Option<Parsed>, Http1Error> {
        parse_response(
            &mut BytesMut::from(bytes),
            &Method::GET,
            &mut HeadTemplate::default(),
        )
    }

    fn head(bytes: &[u8]) -> ResponseHead {
        match parse(bytes) {
            Ok(Some(Parsed::Final(h))) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_head_carries_the_gateways_framing() {
        let (mut parts, ()) = http::Request::post("/vote?x=1")
            .header("host", "web-svc:80")
            .header("content-length", "999")
            .body(())
            .unwrap()
            .into_parts();
        parts.version = Version::HTTP_11;
        let out = encode_request_head(
            &parts,
            RequestFraming::Length(12),
            &GatewayFields::default(),
        );
        assert_eq!(
            &out[..],
            b"POST /vote?x=1 HTTP/1.1\r\nhost: web-svc:80\r\ncontent-length: 12\r\n\r\n"
        );
        let out = encode_request_head(&parts, RequestFraming::Chunked, &GatewayFields::default());
        assert!(out.ends_with(b"host: web-svc:80\r\ntransfer-encoding: chunked\r\n\r\n"));
        parts.version = Version::HTTP_10;
        let out = encode_request_head(&parts, RequestFraming::None, &GatewayFields::default());
        assert!(out.starts_with(b"POST /vote?x=1 HTTP/1.0\r\n"));
        assert!(out.ends_with(b"connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn framing_follows_the_request() {
        let h = HeaderMap::new();
        assert_eq!(
            RequestFraming::choose(&Method::GET, &h, true, Some(0)),
            RequestFraming::None
        );
        assert_eq!(
            RequestFraming::choose(&Method::POST, &h, true, Some(0)),
            RequestFraming::Length(0)
        );
        assert_eq!(
            RequestFraming::choose(&Method::POST, &h, false, Some(5)),
            RequestFraming::Length(5)
        );
        assert_eq!(
            RequestFraming::choose(&Method::POST, &h, false, None),
            RequestFraming::Chunked
        );
    }

    #[test]
    fn response_heads_and_their_framing() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.headers["x-a"], "b");
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::UntilClose);
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::UntilClose);
        let h = head(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Empty);
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(3));
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
        match parse_response(
            &mut BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"[..]),
            &Method::HEAD,
            &mut HeadTemplate::default(),
        ) {
            Ok(Some(Parsed::Final(h))) => assert_eq!(h.framing, BodyFraming::Empty),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn interim_responses_are_skipped_and_switches_refused() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_response(&mut buf, &Method::GET, &mut HeadTemplate::default()),
            Ok(Some(Parsed::Interim))
        ));
        assert!(matches!(
            parse_response(&mut buf, &Method::GET, &mut HeadTemplate::default()),
            Ok(Some(Parsed::Final(_)))
        ));
        assert!(buf.is_empty());
        assert_eq!(
            parse(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n").unwrap_err(),
            Http1Error::UnexpectedSwitch
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for (bytes, want) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
                Http1Error::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                Http1Error::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
                Http1Error::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Http1Error::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Http1Error::AmbiguousLength,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Http1Error::TransferEncodingOnHttp10,
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
                Http1Error::BadHead,
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", Http1Error::BadHead),
            (
                b"HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
                Http1Error::BadHead,
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", Http1Error::BadHead),
        ] {
            assert_eq!(
                parse(bytes).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let many: String = (0..200).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            parse(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()).unwrap_err(),
            Http1Error::TooManyHeaders
        );
        let big = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(big.as_bytes()).unwrap_err(), Http1Error::HeadTooLarge);
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\nx: a"), Ok(None)));
    }

    fn decode_all(bytes: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), Http1Error> {
        let mut state = ChunkedState::Size;
        let mut buf = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), None);
        // One byte at a time: every state must cope with a split anywhere.
        for b in bytes {
            buf.put_u8(*b);
            while let Some(c) = decode_chunk(&mut state, &mut buf)? {
                match c {
                    Chunk::Data(d) => body.extend_from_slice(&d),
                    Chunk::Trailers(t) => trailers = Some(t),
                    Chunk::End => return Ok((body, trailers)),
                }
                if state == ChunkedState::Done {
                    return Ok((body, trailers));
                }
            }
        }
        Err(Http1Error::BadChunk)
    }

    #[test]
    fn chunked_bodies_decode_wherever_they_are_split() {
        let (body, t) = decode_all(b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"hello0123456789");
        assert!(t.is_none());
        let (body, t) =
            decode_all(b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\ncontent-length: 9\r\n\r\n").unwrap();
        assert_eq!(body, b"abc");
        let t = t.unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert!(!t.contains_key("content-length"));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bytes in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello",
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
            b"5;\x01\r\n",
            b"5 x\r\n",
        ] {
            assert!(
                decode_all(bytes).is_err(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let long = format!("5;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(
            decode_all(long.as_bytes()).unwrap_err(),
            Http1Error::BadChunk
        );
    }
}
