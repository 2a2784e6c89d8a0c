//! HPACK (RFC 7541): the decoder for a caller's header blocks and the encoder for the
//! gateway's responses.
//!
//! The decoder keeps each dynamic-table entry as the caller will use it again: a parsed
//! [`HeaderName`] (or which pseudo-header it is) and, for regular fields, a validated
//! [`HeaderValue`]. A Linkerd proxy indexes every field it sends, so from its second request on
//! most fields are one-byte references, and decoding one is two reference-count increments.
//!
//! The encoder writes literals raw (no Huffman: cheaper to write, and the table makes most of
//! a repeated response one byte per field). It remembers the fields of the last block it wrote
//! and where each went in the dynamic table: a service answers with the same fields in the same
//! order, so a field equal to the one at the same position last time is a table reference.

use std::collections::VecDeque;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{huffman, HpackError};

/// The static table (RFC 7541 Appendix A), index 1..=61.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

const STATIC_LEN: usize = STATIC.len();

/// Per-entry overhead counted in a table's size (§4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The table size both sides start with (SETTINGS_HEADER_TABLE_SIZE's default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Which pseudo-header a field is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Scheme,
    Authority,
    Path,
    Status,
    Protocol,
    /// Any other name starting with ':'; never valid in a request.
    Unknown,
}

/// A field's name as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    Pseudo(Pseudo),
    Header(HeaderName),
    /// Not a valid lower-case field name (HTTP/2 forbids upper case, RFC 9113 §8.2.1); the
    /// block still decodes, so the table stays in step, and the request is malformed.
    Invalid,
}

impl Name {
    fn parse(raw: &[u8]) -> Name {
        if let Some(rest) = raw.strip_prefix(b":") {
            return Name::Pseudo(match rest {
                b"method" => Pseudo::Method,
                b"scheme" => Pseudo::Scheme,
                b"authority" => Pseudo::Authority,
                b"path" => Pseudo::Path,
                b"status" => Pseudo::Status,
                b"protocol" => Pseudo::Protocol,
                _ => Pseudo::Unknown,
            });
        }
        match HeaderName::from_lowercase(raw) {
            Ok(n) => Name::Header(n),
            Err(_) => Name::Invalid,
        }
    }
}

/// One decoded field. `header` is the value as a [`HeaderValue`] for a regular field whose
/// value is valid, `None` otherwise (pseudo-headers, or a value with forbidden bytes).
#[derive(Debug, Clone)]
pub struct Field {
    pub name: Name,
    pub value: Bytes,
    pub header: Option<HeaderValue>,
    /// Name and value length plus the overhead, as counted against SETTINGS_MAX_HEADER_LIST_SIZE.
    pub size: usize,
}

impl Field {
    fn new(name: Name, name_len: usize, value: Bytes) -> Field {
        let header = match name {
            Name::Header(_) => HeaderValue::from_maybe_shared(value.clone()).ok(),
            _ => None,
        };
        let size = name_len + value.len() + ENTRY_OVERHEAD;
        Field {
            name,
            value,
            header,
            size,
        }
    }
}

/// The static table's fields, decoded once.
fn static_fields() -> &'static [Field] {
    static FIELDS: std::sync::OnceLock<Vec<Field>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        STATIC
            .iter()
            .map(|(n, v)| {
                Field::new(
                    Name::parse(n.as_bytes()),
                    n.len(),
                    Bytes::from_static(v.as_bytes()),
                )
            })
            .collect()
    })
}

/// The decoding side of a connection's compression context.
pub struct Decoder {
    /// Newest first.
    table: VecDeque<Field>,
    size: usize,
    /// The size the peer last set with a size update (≤ `limit`).
    max_size: usize,
    /// What the gateway allows (its SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            limit: DEFAULT_TABLE_SIZE,
        }
    }
}

impl Decoder {
    /// Decodes one whole header block, showing each field to `field` in order. Any error
    /// leaves the context unusable: the connection must end (COMPRESSION_ERROR).
    ///
    /// By reference: a table entry is lent, and the reader clones what it keeps (a regular
    /// field's name and `HeaderValue`, a pseudo-header's bytes), not every part of it.
    pub fn decode(
        &mut self,
        block: &Bytes,
        mut field: impl FnMut(&Field),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields_seen = false;
        while pos < block.len() {
            let first = block[pos];
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = integer(block, &mut pos, 7)?;
                field(self.get(index)?);
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing (§6.2.1).
                let f = self.literal(block, &mut pos, 6)?;
                field(&f);
                self.insert(f);
            } else if first & 0x20 != 0 {
                // Dynamic table size update (§6.3): only before the block's first field.
                if fields_seen {
                    return Err(HpackError::SizeUpdateMisplaced);
                }
                let size = integer(block, &mut pos, 5)?;
                if size > self.limit {
                    return Err(HpackError::SizeUpdateTooLarge);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (§6.2.2) or never indexed (§6.2.3).
                let f = self.literal(block, &mut pos, 4)?;
                field(&f);
            }
            fields_seen = true;
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<&Field, HpackError> {
        match index {
            0 => Err(HpackError::BadIndex),
            i if i <= STATIC_LEN => Ok(&static_fields()[i - 1]),
            i => self
                .table
                .get(i - STATIC_LEN - 1)
                .ok_or(HpackError::BadIndex),
        }
    }

    fn literal(&self, block: &Bytes, pos: &mut usize, prefix: u8) -> Result<Field, HpackError> {
        let index = integer(block, pos, prefix)?;
        let (name, name_len) = if index == 0 {
            let raw = string(block, pos)?;
            (Name::parse(&raw), raw.len())
        } else {
            let f = self.get(index)?;
            (f.name.clone(), f.size - f.value.len() - ENTRY_OVERHEAD)
        };
        let value = string(block, pos)?;
        Ok(Field::new(name, name_len, value))
    }

    fn insert(&mut self, mut f: Field) {
        // Entries outlive the read buffer the block came in: keep copies, so the table
        // holds only its own bytes.
        f.value = Bytes::copy_from_slice(&f.value);
        if let Some(h) = &mut f.header {
            if let Ok(v) = HeaderValue::from_maybe_shared(f.value.clone()) {
                *h = v;
            }
        }
        if f.size > self.max_size {
            // Larger than the table: it empties it (§4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(f.size);
        self.size += f.size;
        self.table.push_front(f);
    }

    /// Evicts the oldest entries until `room` more fits within the table's size.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size,
                None => break,
            }
        }
    }
}

/// An HPACK integer with an N-bit prefix (§5.1), at most 2^28: no table, block or size the
/// gateway accepts comes near it.
fn integer(block: &[u8], pos: &mut usize, prefix: u8) -> Result<usize, HpackError> {
    let mask = (1u16 << prefix) as u8 - 1;
    let first = *block.get(*pos).ok_or(HpackError::Truncated)? & mask;
    *pos += 1;
    if first < mask {
        return Ok(first as usize);
    }
    let mut value = mask as usize;
    let mut shift = 0;
    loop {
        let b = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(HpackError::IntegerOverflow);
        }
    }
}

/// A string literal (§5.2): a slice of the block when raw, decoded when Huffman-coded.
fn string(block: &Bytes, pos: &mut usize) -> Result<Bytes, HpackError> {
    let huffman = *block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    if end > block.len() {
        return Err(HpackError::Truncated);
    }
    let raw = block.slice(*pos..end);
    *pos = end;
    if !huffman {
        return Ok(raw);
    }
    let mut out = Vec::new();
    huffman::decode(&raw, &mut out)?;
    Ok(Bytes::from(out))
}

/// Writes an integer with an N-bit prefix; `first` carries the representation's flag bits.
fn put_integer(out: &mut Vec<u8>, first: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(first | value as u8);
        return;
    }
    out.push(first | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// The static table's index for a field name, if it has one.
fn static_name_index(name: &HeaderName) -> Option<usize> {
    let n = name.as_str();
    STATIC[14..]
        .iter()
        .position(|(s, _)| *s == n)
        .map(|i| i + 15)
}

/// A field's name as the encoder keeps it: a request pseudo-header (by its static index) or
/// a regular field.
enum Key {
    Pseudo(usize),
    Header(HeaderName),
}

/// A field's name as the encoder is handed it: borrowed, so that a field written at the same
/// position as in the last block (nearly every field of a connection's heads) costs no clone
/// of its name, which for a custom name is a reference count taken and given back.
#[derive(Clone, Copy)]
enum KeyRef<'a> {
    Pseudo(usize),
    Header(&'a HeaderName),
}

impl KeyRef<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            KeyRef::Pseudo(i) => STATIC[i - 1].0.as_bytes(),
            KeyRef::Header(h) => h.as_str().as_bytes(),
        }
    }

    fn is(&self, key: &Key) -> bool {
        match (self, key) {
            (KeyRef::Pseudo(a), Key::Pseudo(b)) => a == b,
            (KeyRef::Header(a), Key::Header(b)) => *a == b,
            _ => false,
        }
    }

    fn to_owned(self) -> Key {
        match self {
            KeyRef::Pseudo(i) => Key::Pseudo(i),
            KeyRef::Header(h) => Key::Header(h.clone()),
        }
    }
}

/// A field the encoder wrote at some position of its last block.
struct Written {
    key: Key,
    value: Bytes,
    /// The entry's insertion number in the dynamic table, if it was added.
    entry: Option<u64>,
    /// The name's static index (0: none), so a changed value needs no lookup.
    static_name: usize,
}

/// The encoding side of a connection's compression context.
pub struct Encoder {
    /// Sizes of the entries in the peer's view of the table, newest first.
    sizes: VecDeque<usize>,
    size: usize,
    max_size: usize,
    /// Entries ever inserted: entry n is at dynamic index `inserted - n` (1-based) while present.
    inserted: u64,
    /// A table size change the peer's settings asked for, announced at the next block.
    pending_size: Option<usize>,
    /// The last block's fields (pseudo-headers of requests included), by position.
    last: Vec<Written>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            sizes: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            inserted: 0,
            pending_size: None,
            last: Vec::new(),
        }
    }
}

/// Fields never put in the table: secrets.
fn never_index(key: KeyRef<'_>, sensitive: bool) -> bool {
    sensitive
        || matches!(key, KeyRef::Header(n) if n == header::SET_COOKIE || n == header::AUTHORIZATION || n == header::COOKIE || n == header::PROXY_AUTHORIZATION)
}

/// Longest field the encoder adds to the table: larger ones would evict everything.
const MAX_INDEXED_FIELD: usize = 512;

/// The static indexes of the request pseudo-headers.
const AUTHORITY: usize = 1;
const METHOD: usize = 2;
const PATH: usize = 4;

impl Encoder {
    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the encoder shrinks (or may grow) its table
    /// and says so at the start of the next block.
    pub fn set_max_size(&mut self, size: usize) {
        // Growing past the default gains little; shrinking must be honoured.
        let size = size.min(DEFAULT_TABLE_SIZE);
        if size != self.max_size {
            self.max_size = size;
            self.pending_size = Some(size);
            self.evict(0);
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if let Some(size) = self.pending_size.take() {
            put_integer(out, 0x20, 5, size);
        }
    }

    /// Encodes a response head (`status` given) or trailers (`status` None) into `out`.
    pub fn encode(&mut self, status: Option<StatusCode>, headers: &HeaderMap, out: &mut Vec<u8>) {
        self.start(out);
        if let Some(status) = status {
            match status.as_u16() {
                200 => out.push(0x88),
                204 => out.push(0x89),
                206 => out.push(0x8a),
                304 => out.push(0x8b),
                400 => out.push(0x8c),
                404 => out.push(0x8d),
                500 => out.push(0x8e),
                _ => {
                    // Literal without indexing, the name :status (index 8).
                    out.push(0x08);
                    put_string(out, status.as_str().as_bytes());
                }
            }
        }
        let position = self.headers(0, headers, out);
        self.last.truncate(position);
    }

    /// Encodes a request head: the pseudo-headers, then `headers`.
    pub fn encode_request(
        &mut self,
        method: &http::Method,
        scheme: &str,
        authority: Option<&str>,
        path: &str,
        headers: &HeaderMap,
        out: &mut Vec<u8>,
    ) {
        self.start(out);
        let mut position = 0;
        match method.as_str() {
            "GET" => out.push(0x82),
            "POST" => out.push(0x83),
            m => {
                self.field(position, KeyRef::Pseudo(METHOD), m.as_bytes(), false, out);
                position += 1;
            }
        }
        match scheme {
            "https" => out.push(0x87),
            "http" => out.push(0x86),
            // Literal without indexing, the name :scheme (index 6).
            other => {
                out.push(0x06);
                put_string(out, other.as_bytes());
            }
        }
        if let Some(a) = authority {
            self.field(
                position,
                KeyRef::Pseudo(AUTHORITY),
                a.as_bytes(),
                false,
                out,
            );
            position += 1;
        }
        if path == "/" {
            out.push(0x84);
        } else {
            self.field(position, KeyRef::Pseudo(PATH), path.as_bytes(), false, out);
            position += 1;
        }
        let position = self.headers(position, headers, out);
        self.last.truncate(position);
    }

    /// The regular fields from `position` on; the position after them.
    fn headers(&mut self, mut position: usize, headers: &HeaderMap, out: &mut Vec<u8>) -> usize {
        for (name, value) in headers {
            if is_connection_specific(name) {
                continue;
            }
            self.field(
                position,
                KeyRef::Header(name),
                value.as_bytes(),
                value.is_sensitive(),
                out,
            );
            position += 1;
        }
        position
    }

    fn field(
        &mut self,
        position: usize,
        key: KeyRef<'_>,
        value: &[u8],
        sensitive: bool,
        out: &mut Vec<u8>,
    ) {
        let static_name = match self.last.get(position) {
            Some(w) if key.is(&w.key) => {
                if &w.value[..] == value {
                    if let Some(index) = w.entry.and_then(|e| self.index_of(e)) {
                        put_integer(out, 0x80, 7, index);
                        return;
                    }
                }
                // The same name as last time: its static index needs no lookup.
                w.static_name
            }
            _ => match key {
                KeyRef::Pseudo(i) => i,
                KeyRef::Header(name) => static_name_index(name).unwrap_or(0),
            },
        };
        let name = key.as_bytes();
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        let entry = if never_index(key, sensitive) {
            put_integer(out, 0x10, 4, static_name);
            None
        } else if size <= MAX_INDEXED_FIELD && size <= self.max_size {
            put_integer(out, 0x40, 6, static_name);
            Some(self.insert(size))
        } else {
            put_integer(out, 0x00, 4, static_name);
            None
        };
        if static_name == 0 {
            put_string(out, name);
        }
        put_string(out, value);
        let written = Written {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(value),
            entry,
            static_name,
        };
        if position < self.last.len() {
            self.last[position] = written;
        } else {
            self.last.push(written);
        }
    }

    fn insert(&mut self, size: usize) -> u64 {
        self.evict(size);
        self.sizes.push_front(size);
        self.size += size;
        self.inserted += 1;
        self.inserted
    }

    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.sizes.pop_back() {
                Some(s) => self.size -= s,
                None => break,
            }
        }
    }

    /// The dynamic index of entry `n`, if it is still in the table.
    fn index_of(&self, n: u64) -> Option<usize> {
        let age = (self.inserted - n) as usize;
        (age < self.sizes.len()).then_some(STATIC_LEN + 1 + age)
    }
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2); `te` is allowed in requests only as "trailers".
pub fn is_connection_specific(name: &HeaderName) -> bool {
    // Every field of every head passes here. The first three are standard names (compared as
    // enum values); the other two are custom names, held lower-case, compared as bytes.
    if name == header::CONNECTION || name == header::TRANSFER_ENCODING || name == header::UPGRADE {
        return true;
    }
    let s = name.as_str();
    match s.len() {
        10 => s == "keep-alive",
        16 => s == "proxy-connection",
        _ => false,
    }
}

/// Encodes a header list for tests and fuzzing: the given representation for each field.
/// (Used by tests and the fuzz targets: the gateway itself writes literals with its encoder.)
pub fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8], indexing: bool, huffman: bool) {
    put_integer(
        out,
        if indexing { 0x40 } else { 0x00 },
        if indexing { 6 } else { 4 },
        0,
    );
    for s in [name, value] {
        if huffman {
            let mut h = Vec::new();
            huffman::encode(s, &mut h);
            put_integer(out, 0x80, 7, h.len());
            out.extend_from_slice(&h);
        } else {
            put_string(out, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    fn decode(d: &mut Decoder, block: &str) -> Vec<(String, String)> {
        let mut got = Vec::new();
        d.decode(&hex(block), |f| {
            let name = match &f.name {
                Name::Pseudo(p) => format!("{p:?}"),
                Name::Header(h) => h.to_string(),
                Name::Invalid => "INVALID".into(),
            };
            got.push((name, String::from_utf8(f.value.to_vec()).unwrap()));
        })
        .unwrap();
        got
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn decodes_the_rfc_request_examples_with_huffman() {
        // RFC 7541 C.4: three requests on one connection.
        let mut d = Decoder::default();
        assert_eq!(
            decode(&mut d, "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
            pairs(&[
                ("Method", "GET"),
                ("Scheme", "http"),
                ("Path", "/"),
                ("Authority", "www.example.com")
            ])
        );
        assert_eq!(d.size, 57);
        assert_eq!(
            decode(&mut d, "8286 84be 5886 a8eb 1064 9cbf"),
            pairs(&[
                ("Method", "GET"),
                ("Scheme", "http"),
                ("Path", "/"),
                ("Authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(
            decode(
                &mut d,
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"
            ),
            pairs(&[
                ("Method", "GET"),
                ("Scheme", "https"),
                ("Path", "/index.html"),
                ("Authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164);
        assert_eq!(d.table.len(), 3);
    }

    #[test]
    fn refuses_bad_blocks() {
        let mut d = Decoder::default();
        for bad in [
            "80",
            "be",
            "8286 3fe1 1f",
            "82 20",
            "3fff ffff ff0f",
            "4003 6162",
        ] {
            assert!(d.decode(&hex(bad), |_| {}).is_err(), "{bad}");
        }
        // Upper case names decode (the table stays in step) and are marked invalid.
        let mut d = Decoder::default();
        let mut block = Vec::new();
        encode_literal(&mut block, b"X-Up", b"1", true, false);
        let mut names = Vec::new();
        d.decode(&block.into(), |f| names.push(f.name.clone()))
            .unwrap();
        assert_eq!(names, vec![Name::Invalid]);
        assert_eq!(d.table.len(), 1);
    }

    #[test]
    fn the_encoder_indexes_a_repeated_response_and_a_decoder_agrees() {
        let mut e = Encoder::default();
        let mut d = Decoder::default();
        let mut h = HeaderMap::new();
        h.insert(header::SERVER, HeaderValue::from_static("backend"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("x-custom", HeaderValue::from_static("v"));
        h.insert(header::SET_COOKIE, HeaderValue::from_static("secret"));
        let mut first = Vec::new();
        e.encode(Some(StatusCode::OK), &h, &mut first);
        let mut second = Vec::new();
        e.encode(Some(StatusCode::OK), &h, &mut second);
        // :status, three table references, and set-cookie again as a literal.
        assert!(second.len() < 4 + 2 + 10, "{second:?}");
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let mut third = Vec::new();
        e.encode(Some(StatusCode::from_u16(299).unwrap()), &h, &mut third);
        for block in [first, second, third] {
            let mut got = HeaderMap::new();
            let mut status = None;
            d.decode(&block.into(), |f| match &f.name {
                Name::Header(n) => {
                    got.append(n.clone(), f.header.clone().unwrap());
                }
                Name::Pseudo(Pseudo::Status) => status = Some(f.value.clone()),
                other => panic!("{other:?}"),
            })
            .unwrap();
            assert!(status.is_some());
            assert_eq!(got.len(), 4);
        }
        assert_eq!(d.size, e.size);
    }

    #[test]
    fn a_smaller_table_is_announced_and_kept() {
        let mut e = Encoder::default();
        let mut d = Decoder::default();
        e.set_max_size(0);
        let mut h = HeaderMap::new();
        h.insert(header::SERVER, HeaderValue::from_static("backend"));
        for _ in 0..2 {
            let mut out = Vec::new();
            e.encode(Some(StatusCode::OK), &h, &mut out);
            d.decode(&out.into(), |_| {}).unwrap();
            assert_eq!(d.size, 0);
        }
    }
}
