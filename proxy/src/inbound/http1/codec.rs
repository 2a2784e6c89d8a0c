//! HTTP/1.1 as a caller speaks it to the gateway, without I/O: a request head parsed in place
//! with httparse (the request's path and header values are slices of the bytes read, not
//! copies), the framing of its body (RFC 9112 §6), and a response head written straight from
//! the handler's `http::response::Parts`.
//!
//! Every function here is total over whatever bytes a caller sends; the `http1` fuzz target
//! drives it through the whole server and `http1_request` on its own.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Method, StatusCode, Uri, Version};

use crate::{
    decimal::Decimal,
    framing_fields::FramingFields,
    head_template::{field_spans, HeadTemplate},
};

/// Most header fields in one request head (hyper's default, which the gateway kept).
pub const MAX_HEADERS: usize = 100;

/// Why a request head was refused. Each is answered with its status and `l5d-proxy-error`
/// carrying [`RequestError::reason`], and the connection is closed: after a malformed head
/// the caller's framing cannot be trusted.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("malformed request head")]
    BadHead,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("too many request headers")]
    TooManyHeaders,
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("invalid request target")]
    BadTarget,
    #[error("invalid content-length")]
    BadContentLength,
    /// The final coding is not chunked: the body's end could not be found (RFC 9112 §6.3).
    #[error("unsupported transfer-encoding")]
    BadTransferEncoding,
    #[error("transfer-encoding on an HTTP/1.0 request")]
    TransferEncodingOnHttp10,
}

impl RequestError {
    /// The stable reason string for logs, metrics and the `l5d-proxy-error` field.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::BadHead => "malformed request head",
            RequestError::HeadTooLarge => "request head too large",
            RequestError::TooManyHeaders => "too many request headers",
            RequestError::BadVersion => "unsupported HTTP version",
            RequestError::BadTarget => "invalid request target",
            RequestError::BadContentLength => "invalid content-length",
            RequestError::BadTransferEncoding => "unsupported transfer-encoding",
            RequestError::TransferEncodingOnHttp10 => "transfer-encoding on an HTTP/1.0 request",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::HeadTooLarge | RequestError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            RequestError::BadVersion => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// How a request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    /// Whether the caller lets the connection carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body.
    pub expects_continue: bool,
}

/// Parses the request head at the start of `buf` and takes its bytes off the buffer.
/// `Ok(None)`: the head is not complete yet. `max_head` bounds the request line and fields
/// together. `template` is the connection's: the last request's fields, from which this one's
/// map is built when the names match.
pub fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
    template: &mut HeadTemplate,
) -> Result<Option<RequestHead>, RequestError> {
    // Empty lines before a request line are skipped (RFC 9112 §2.2 says a server SHOULD).
    let blank = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if blank > 0 {
        let _ = buf.split_to(blank);
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut fields = FramingFields::default();
    // Where the method, target and each field lie, so that they can point into the head once
    // it is split off the buffer.
    let (len, method, target, minor, spans) = {
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            &buf[..],
            &mut slots,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= max_head => {
                return Err(RequestError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
            Err(httparse::Error::Version) => return Err(RequestError::BadVersion),
            Err(_) => return Err(RequestError::BadHead),
        };
        if len > max_head {
            return Err(RequestError::HeadTooLarge);
        }
        let base = buf.as_ptr() as usize;
        let method = Method::from_bytes(req.method.ok_or(RequestError::BadHead)?.as_bytes())
            .map_err(|_| RequestError::BadHead)?;
        let path = req.path.ok_or(RequestError::BadHead)?;
        let target = (path.as_ptr() as usize - base, path.len());
        let minor = req.version.ok_or(RequestError::BadHead)?;
        let spans = field_spans(buf, req.headers, &mut fields)
            .map_err(|_| RequestError::BadContentLength)?;
        (len, method, target, minor, spans)
    };
    let head = buf.split_to(len).freeze();
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let uri = parse_target(&method, head.slice(target.0..target.0 + target.1))?;
    let mut headers = template
        .headers(&head, &spans)
        .map_err(|_| RequestError::BadHead)?;
    let framing = request_framing(&fields, version)?;
    if fields.transfer_encoding && fields.content_length.is_some() {
        // RFC 9112 §6.1: framed by Transfer-Encoding; the length is removed before forwarding
        // and the connection closed after the response (below).
        headers.remove(header::CONTENT_LENGTH);
    }
    let keep_alive = !fields.close
        && (version == Version::HTTP_11 || fields.keep_alive)
        && !(fields.transfer_encoding && fields.content_length.is_some());
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expects_continue: fields.expects_continue && framing != BodyFraming::Empty,
    }))
}

/// The request target in one of its four forms (RFC 9112 §3.2). CONNECT's authority-form is
/// parsed so that the request can be refused with its reason further on.
fn parse_target(method: &Method, raw: Bytes) -> Result<Uri, RequestError> {
    if raw.as_ref() == b"*" && *method != Method::OPTIONS {
        return Err(RequestError::BadTarget);
    }
    Uri::from_maybe_shared(raw).map_err(|_| RequestError::BadTarget)
}

/// A request's framing from its fields (RFC 9112 §6.3).
fn request_framing(fields: &FramingFields, version: Version) -> Result<BodyFraming, RequestError> {
    if fields.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(RequestError::TransferEncodingOnHttp10);
        }
        // A request body read until close would leave no way to answer (RFC 9112 §6.3).
        if !fields.chunked_last {
            return Err(RequestError::BadTransferEncoding);
        }
        return Ok(BodyFraming::Chunked);
    }
    Ok(match fields.content_length {
        Some(0) | None => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
    })
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: HEAD, 1xx, 204, 304. `Content-Length` as the handler's map has it, if any.
    None,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 caller and a body of unknown length: until the connection closes.
    UntilClose,
}

/// Writes a response head into `out`: status line, the handler's fields but the framing and
/// connection ones, which the server writes itself from `framing` and `close`. A protocol
/// switch (101) keeps the handler's `Connection` and `Upgrade`.
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    close: bool,
    date: Option<&[u8]>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in headers {
        let framing_field = name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && framing != ResponseFraming::None)
            || (name == header::CONNECTION && !switching);
        if framing_field {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(date) = date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::None | ResponseFraming::UntilClose => {}
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(Decimal::new(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close && !switching {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// For the `http1_request` fuzz target: `data` as a caller's bytes, parsed head after head
/// as the connection does, each body taken off by its framing (chunked ones decoded), and a
/// response head written from each request's fields. Never panics.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut template = HeadTemplate::default();
    while !buf.is_empty() {
        // The connection's template must change nothing: the same head parsed afresh agrees.
        let mut fresh = buf.clone();
        let alone = parse_request(&mut fresh, 8 * 1024, &mut HeadTemplate::default());
        let parsed = parse_request(&mut buf, 8 * 1024, &mut template);
        match (&parsed, &alone) {
            (Ok(Some(a)), Ok(Some(b))) => {
                assert_eq!(
                    (&a.method, &a.uri, a.version),
                    (&b.method, &b.uri, b.version)
                );
                assert_eq!((a.framing, a.keep_alive), (b.framing, b.keep_alive));
                assert!(a.headers.iter().eq(b.headers.iter()), "{a:?} / {b:?}");
                assert_eq!(buf, fresh);
            }
            (Ok(None), Ok(None)) => {}
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("the template changed the outcome: {a:?} / {b:?}"),
        }
        match parsed {
            Ok(Some(head)) => {
                let mut out = Vec::new();
                encode_response_head(
                    &mut out,
                    StatusCode::OK,
                    &head.headers,
                    ResponseFraming::Chunked,
                    !head.keep_alive,
                    None,
                );
                match head.framing {
                    BodyFraming::Length(n) => {
                        let n = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                        let _ = buf.split_to(n);
                    }
                    BodyFraming::Chunked => {
                        let mut state = crate::chunked::ChunkedState::Size;
                        loop {
                            match crate::chunked::decode_chunk(&mut state, &mut buf) {
                                Ok(Some(crate::chunked::Chunk::Data(d))) => assert!(!d.is_empty()),
                                Ok(Some(_)) => break,
                                Ok(None) | Err(_) => return,
                            }
                        }
                    }
                    BodyFraming::Empty => {}
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parse(raw: &str) -> Result<Option<RequestHead>, RequestError> {
        parse_request(
            &mut BytesMut::from(raw.as_bytes()),
            64 * 1024,
            &mut HeadTemplate::default(),
        )
    }

    #[test]
    fn a_plain_get_keeps_alive_with_its_fields_in_order() {
        let head = parse("GET /a?b=1 HTTP/1.1\r\nhost: web\r\nx-a: 1\r\nx-a: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri, "/a?b=1");
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.framing, BodyFraming::Empty);
        assert!(head.keep_alive);
        let xa: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
    }

    #[test]
    fn framing_follows_rfc_9112_section_6() {
        let framing = |raw: &str| parse(raw).map(|h| h.map(|h| (h.framing, h.keep_alive)));
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n"),
            Ok(Some((BodyFraming::Length(5), true)))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"),
            Err(RequestError::BadContentLength)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n"),
            Err(RequestError::BadContentLength)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Ok(Some((BodyFraming::Chunked, true)))
        );
        assert_eq!(
            framing(
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n"
            ),
            Err(RequestError::BadTransferEncoding)
        );
        assert_eq!(
            framing("POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(RequestError::TransferEncodingOnHttp10)
        );
        // Both: chunked, the length dropped, and the connection closed afterwards.
        let head =
            parse("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(
            (head.framing, head.keep_alive),
            (BodyFraming::Chunked, false)
        );
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn connection_reuse_follows_the_version() {
        let keep = |raw: &str| parse(raw).unwrap().unwrap().keep_alive;
        assert!(!keep("GET / HTTP/1.1\r\nconnection: foo, close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn malformed_heads_are_refused_with_their_reason() {
        assert_eq!(
            parse("GET / HTTP/1.1\r\nhost : a\r\n\r\n").unwrap_err(),
            RequestError::BadHead
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nx: a\r\n  b\r\n\r\n").unwrap_err(),
            RequestError::BadHead
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nx: a\0b\r\n\r\n").unwrap_err(),
            RequestError::BadHead
        );
        assert_eq!(
            parse("GET / HTTP/2.0\r\n\r\n").unwrap_err(),
            RequestError::BadVersion
        );
        assert_eq!(
            parse("GET * HTTP/1.1\r\n\r\n").unwrap_err(),
            RequestError::BadTarget
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            RequestError::TooManyHeaders
        );
        let mut big =
            BytesMut::from(format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(100)).as_bytes());
        assert_eq!(
            parse_request(&mut big, 64, &mut HeadTemplate::default()).unwrap_err(),
            RequestError::HeadTooLarge
        );
    }

    #[test]
    fn a_partial_head_waits_and_leading_blank_lines_are_skipped() {
        let mut buf = BytesMut::from(&b"\r\nGET / HTTP/1.1\r\nhost: a\r\n"[..]);
        assert!(parse_request(&mut buf, 1024, &mut HeadTemplate::default())
            .unwrap()
            .is_none());
        buf.extend_from_slice(b"\r\nnext");
        assert!(parse_request(&mut buf, 1024, &mut HeadTemplate::default())
            .unwrap()
            .is_some());
        assert_eq!(&buf[..], b"next");
    }

    #[test]
    fn the_response_head_carries_the_servers_framing_only() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &h,
            ResponseFraming::Length(2),
            true,
            None,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &h,
            ResponseFraming::None,
            false,
            Some(b"d"),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-length: 99\r\nx-a: 1\r\ndate: d\r\n\r\n"
        );
    }

    #[test]
    fn requests_of_one_shape_agree_with_and_without_the_template() {
        let a = "GET / HTTP/1.1\r\nhost: web\r\nuser-agent: x\r\ntraceparent: 00-1\r\n\r\n";
        let a2 = "GET /b HTTP/1.1\r\nhost: web\r\nuser-agent: x\r\ntraceparent: 00-2\r\n\r\n";
        let b = "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 2\r\n\r\nok";
        let bad = "GET / HTTP/1.1\r\nhost: web\r\nuser-agent: \x7f\r\ntraceparent: 00-2\r\n\r\n";
        let seq = [a, a2, a, b, a2, b, b, b, b, a, bad].concat();
        fuzz_request(seq.as_bytes());
        let mut kept = HeadTemplate::default();
        for raw in [a, a2] {
            let head = parse_request(&mut BytesMut::from(raw), 1024, &mut kept)
                .unwrap()
                .unwrap();
            let trace = raw
                .split("traceparent: ")
                .nth(1)
                .unwrap()
                .split('\r')
                .next()
                .unwrap();
            assert_eq!(head.headers["traceparent"], trace);
        }
        assert_eq!(kept.spans.len(), 3, "the first request's fields are kept");
    }
}
