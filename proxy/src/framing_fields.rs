//! The header fields that decide an HTTP/1.1 message's framing and its connection's reuse,
//! noted while a head is parsed: the same rules for a caller's requests and a service's
//! responses (RFC 9110 §8.6, RFC 9112 §6, §9.3). What each codec makes of them differs, and
//! stays in the codec.

/// A `Content-Length` that is not one length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadContentLength;

#[derive(Debug, Default, Clone, Copy)]
pub struct FramingFields {
    pub content_length: Option<u64>,
    pub transfer_encoding: bool,
    /// The last coding applied is chunked, across all the fields of that name.
    pub chunked_last: bool,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive` (what keeps an HTTP/1.0 connection open).
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expects_continue: bool,
}

impl FramingFields {
    pub fn note(&mut self, name: &[u8], value: &[u8]) -> Result<(), BadContentLength> {
        // Every field of every head passes here and few are framing fields: the length rules
        // out most before any bytes are compared.
        if !matches!(name.len(), 6 | 10 | 14 | 17) {
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // A list of one repeated value is one value (RFC 9110 §8.6); anything else is not
            // a length.
            for part in value.split(|b| *b == b',') {
                let n = parse_decimal(part.trim_ascii()).ok_or(BadContentLength)?;
                if self.content_length.is_some_and(|m| m != n) {
                    return Err(BadContentLength);
                }
                self.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            // Only the last coding applied matters: chunked must be it for the body to end
            // anywhere but at the connection's close.
            if let Some(last) = value
                .split(|b| *b == b',')
                .map(|t| t.trim_ascii())
                .rfind(|t| !t.is_empty())
            {
                self.chunked_last = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            self.expects_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }
}

/// 1 to 19 digits: every such number fits a u64, and no body is longer.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}
