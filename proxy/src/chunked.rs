//! The chunked transfer coding (RFC 9112 §7.1), both ways, for the gateway's two HTTP/1.1
//! codecs: request bodies from callers, response bodies from services. Total over any bytes;
//! the `http1_response` and `http1_request` fuzz targets reach it.

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line, extensions included.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section.
const MAX_TRAILERS: usize = 64 * 1024;
/// Most fields in a trailer section.
const MAX_TRAILER_FIELDS: usize = 128;

/// What a chunked body may not contain.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("malformed chunked body")]
    Malformed,
    #[error("trailer section too large")]
    TrailersTooLarge,
    #[error("too many trailer fields")]
    TooManyTrailers,
}

/// The line that opens a chunk of `len` bytes.
pub fn chunk_size_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

/// The end of a chunked body: the last chunk and the trailer section.
pub fn encode_trailers(trailers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(b"0\r\n");
    for (name, value) in trailers {
        if is_framing_field(name) {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedState {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    Done,
}

/// What the chunked decoder took off the buffer.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// Takes the next piece of a chunked body off `buf`. `Ok(None)`: more bytes are needed.
/// After `End` (or `Trailers`, which ends the body too) the state is `Done`.
pub fn decode_chunk(
    state: &mut ChunkedState,
    buf: &mut BytesMut,
) -> Result<Option<Chunk>, ChunkError> {
    loop {
        match *state {
            ChunkedState::Size => {
                let Some(line_end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                    return Ok(None);
                };
                let size = parse_chunk_size(&buf[..line_end])?;
                let _ = buf.split_to(line_end + 2);
                *state = if size == 0 {
                    ChunkedState::Trailers
                } else {
                    ChunkedState::Data(size)
                };
            }
            ChunkedState::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                *state = if left == 0 {
                    ChunkedState::DataEnd
                } else {
                    ChunkedState::Data(left)
                };
                return Ok(Some(Chunk::Data(data)));
            }
            ChunkedState::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(ChunkError::Malformed);
                }
                let _ = buf.split_to(2);
                *state = ChunkedState::Size;
            }
            ChunkedState::Trailers => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] == b"\r\n" {
                    let _ = buf.split_to(2);
                    *state = ChunkedState::Done;
                    return Ok(Some(Chunk::End));
                }
                let Some(end) = find(buf, b"\r\n\r\n", MAX_TRAILERS)? else {
                    return Ok(None);
                };
                let section = buf.split_to(end + 4);
                *state = ChunkedState::Done;
                return Ok(Some(Chunk::Trailers(parse_trailers(&section)?)));
            }
            ChunkedState::Done => return Ok(Some(Chunk::End)),
        }
    }
}

/// The position of the first CRLF within `limit` bytes; a bare LF is an error.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, ChunkError> {
    match buf.iter().take(limit).position(|b| *b == b'\n') {
        Some(0) => Err(ChunkError::Malformed),
        Some(lf) if buf[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(ChunkError::Malformed),
        None if buf.len() >= limit => Err(ChunkError::Malformed),
        None => Ok(None),
    }
}

fn find(buf: &[u8], needle: &[u8], limit: usize) -> Result<Option<usize>, ChunkError> {
    match buf
        .windows(needle.len())
        .take(limit)
        .position(|w| w == needle)
    {
        Some(i) => Ok(Some(i)),
        None if buf.len() >= limit => Err(ChunkError::TrailersTooLarge),
        None => Ok(None),
    }
}

/// `1*HEXDIG [ BWS ";" ext ]` (RFC 9112 §7.1): at most 16 digits, extensions ignored but
/// free of control characters.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ChunkError::Malformed);
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty()
        && (rest[0] != b';'
            || rest
                .iter()
                .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f))
    {
        return Err(ChunkError::Malformed);
    }
    let mut n = 0u64;
    for d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n = (n << 4) | u64::from(v);
    }
    Ok(n)
}

fn parse_trailers(section: &[u8]) -> Result<HeaderMap, ChunkError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Ok(httparse::Status::Partial) => return Err(ChunkError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(ChunkError::TooManyTrailers),
        Err(_) => return Err(ChunkError::Malformed),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ChunkError::Malformed)?;
        // A trailer cannot reframe the message or speak for the connection.
        if is_framing_field(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(f.value).map_err(|_| ChunkError::Malformed)?;
        map.append(name, value);
    }
    Ok(map)
}

fn is_framing_field(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::HOST
        || name == "keep-alive"
}
