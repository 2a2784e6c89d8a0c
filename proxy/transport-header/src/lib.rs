//! Linkerd's transport header: what a source proxy writes first on a connection whose ALPN is
//! `transport.l5d.io/v1`, naming the target and the session protocol.
//!
//! ```text
//! PREFACE  "transport.l5d.io/v1\r\n\r\n"   23 bytes
//! LEN      u32, big-endian                  length of MESSAGE
//! MESSAGE  protobuf transport.l5d.io.Header {
//!            int32 port = 1; string name = 2;
//!            SessionProtocol session_protocol = 3;  // oneof { Http1 http1 = 1; Http2 http2 = 2; }
//!          }
//! ```
//!
//! The protobuf is decoded by hand: three fields do not justify a code generator, and a small
//! decoder is easy to bound and to fuzz. Unknown fields are skipped as proto3 requires.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

/// ALPN protocol id that announces a transport header.
pub const ALPN: &[u8] = b"transport.l5d.io/v1";
pub const PREFACE: &[u8] = b"transport.l5d.io/v1\r\n\r\n";
/// Largest message accepted (Linkerd's server buffer).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionProtocol {
    Http1,
    Http2,
}

impl SessionProtocol {
    /// The metric label value Linkerd uses.
    pub fn label(p: Option<Self>) -> &'static str {
        match p {
            Some(SessionProtocol::Http1) => "http/1",
            Some(SessionProtocol::Http2) => "http/2",
            None => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub port: u16,
    /// `None` when the sender left it empty (Linkerd's local-forwarding case).
    pub name: Option<String>,
    /// `None` means opaque TCP.
    pub protocol: Option<SessionProtocol>,
}

/// Why a header was refused: the message tells an operator what was wrong, and
/// [`reason`](DecodeError::reason) is the short stable string for metric labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad transport header preface")]
    BadPreface,
    #[error("transport header length {0} exceeds the 64 KiB limit")]
    TooLarge(usize),
    #[error("truncated transport header")]
    Truncated,
    #[error("invalid transport header protobuf: {0}")]
    Protobuf(&'static str),
    #[error("transport header port {0} is outside 1..=65535")]
    BadPort(i64),
    #[error("transport header name is not a DNS name")]
    BadName,
}

impl DecodeError {
    /// A short, stable reason for metrics and structured logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadPreface => "bad preface",
            DecodeError::TooLarge(_) => "header too large",
            DecodeError::Truncated => "truncated header",
            DecodeError::Protobuf(_) => "invalid protobuf",
            DecodeError::BadPort(_) => "invalid port",
            DecodeError::BadName => "invalid name",
        }
    }
}

impl Header {
    /// The whole header: preface, length, message.
    pub fn encode(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(64);
        if self.port != 0 {
            msg.push(0x08);
            put_varint(&mut msg, u64::from(self.port));
        }
        if let Some(name) = &self.name {
            msg.push(0x12);
            put_varint(&mut msg, name.len() as u64);
            msg.extend_from_slice(name.as_bytes());
        }
        if let Some(p) = self.protocol {
            // SessionProtocol { oneof kind { Http1 http1 = 1; Http2 http2 = 2; } }, each empty.
            let inner_tag = match p {
                SessionProtocol::Http1 => 0x0a,
                SessionProtocol::Http2 => 0x12,
            };
            msg.extend_from_slice(&[0x1a, 0x02, inner_tag, 0x00]);
        }
        let mut out = Vec::with_capacity(PREFACE.len() + 4 + msg.len());
        out.extend_from_slice(PREFACE);
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        out
    }

    /// Decodes a header from the start of `buf`, returning it and the bytes it used. Bytes after
    /// it belong to the application. `Truncated` means more input is needed.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let len = message_len(buf)?;
        let start = PREFACE.len() + 4;
        let msg = buf.get(start..start + len).ok_or(DecodeError::Truncated)?;
        Ok((Self::decode_message(msg)?, start + len))
    }

    /// Reads the preface and length: how long the message that follows is.
    /// Needs `PREFACE.len() + 4` bytes.
    pub fn message_len_from_prefix(prefix: &[u8]) -> Result<usize, DecodeError> {
        message_len(prefix)
    }

    /// Decodes the protobuf message alone.
    pub fn decode_message(mut msg: &[u8]) -> Result<Self, DecodeError> {
        let mut port: i64 = 0;
        let mut name = String::new();
        let mut protocol = None;
        while !msg.is_empty() {
            let key = get_varint(&mut msg)?;
            let (field, wire) = (key >> 3, (key & 7) as u8);
            match (field, wire) {
                (1, 0) => {
                    // int32 on the wire is a varint sign-extended to 64 bits.
                    port = get_varint(&mut msg)? as i64 as i32 as i64;
                }
                (2, 2) => {
                    let bytes = get_len_delimited(&mut msg)?;
                    name = std::str::from_utf8(bytes)
                        .map_err(|_| DecodeError::Protobuf("name is not UTF-8"))?
                        .to_string();
                }
                (3, 2) => protocol = decode_session_protocol(get_len_delimited(&mut msg)?)?,
                (0, _) => return Err(DecodeError::Protobuf("field number 0")),
                (1..=3, _) => {
                    return Err(DecodeError::Protobuf("wrong wire type for a known field"))
                }
                (_, w) => skip_field(&mut msg, w)?,
            }
        }
        if !(1..=65535).contains(&port) {
            return Err(DecodeError::BadPort(port));
        }
        let name = if name.is_empty() {
            None
        } else {
            Some(validate_name(&name)?)
        };
        Ok(Self {
            port: port as u16,
            name,
            protocol,
        })
    }
}

fn message_len(buf: &[u8]) -> Result<usize, DecodeError> {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        return Err(DecodeError::BadPreface);
    }
    let len_bytes = buf
        .get(PREFACE.len()..PREFACE.len() + 4)
        .ok_or(DecodeError::Truncated)?;
    let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLarge(len));
    }
    Ok(len)
}

fn decode_session_protocol(mut msg: &[u8]) -> Result<Option<SessionProtocol>, DecodeError> {
    let mut protocol = None;
    while !msg.is_empty() {
        let key = get_varint(&mut msg)?;
        match (key >> 3, (key & 7) as u8) {
            (1, 2) => {
                get_len_delimited(&mut msg)?;
                protocol = Some(SessionProtocol::Http1);
            }
            (2, 2) => {
                get_len_delimited(&mut msg)?;
                protocol = Some(SessionProtocol::Http2);
            }
            (0, _) => return Err(DecodeError::Protobuf("field number 0")),
            (_, w) => skip_field(&mut msg, w)?,
        }
    }
    Ok(protocol)
}

/// A DNS name (`web-svc.emojivoto.svc.cluster.local`, trailing dot allowed), lower-cased.
fn validate_name(name: &str) -> Result<String, DecodeError> {
    let n = name.strip_suffix('.').unwrap_or(name);
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(n.to_ascii_lowercase())
    } else {
        Err(DecodeError::BadName)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf
            .split_first()
            .ok_or(DecodeError::Protobuf("truncated varint"))?;
        *buf = rest;
        if i == 9 && b > 1 {
            return Err(DecodeError::Protobuf("varint overflows 64 bits"));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::Protobuf("varint too long"))
}

fn get_len_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = get_varint(buf)?;
    let len = usize::try_from(len).map_err(|_| DecodeError::Protobuf("length overflow"))?;
    if len > buf.len() {
        return Err(DecodeError::Protobuf("length past the end of the message"));
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Ok(field)
}

fn skip_field(buf: &mut &[u8], wire: u8) -> Result<(), DecodeError> {
    let skip = |buf: &mut &[u8], n: usize| {
        if n > buf.len() {
            return Err(DecodeError::Protobuf("fixed-width field past the end"));
        }
        *buf = &buf[n..];
        Ok(())
    };
    match wire {
        0 => get_varint(buf).map(drop),
        1 => skip(buf, 8),
        2 => get_len_delimited(buf).map(drop),
        5 => skip(buf, 4),
        _ => Err(DecodeError::Protobuf("unsupported wire type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "web-svc.emojivoto.svc.cluster.local";

    /// The contract's worked example, byte for byte.
    #[test]
    fn worked_example() {
        let h = Header {
            port: 80,
            name: Some(WEB.into()),
            protocol: Some(SessionProtocol::Http2),
        };
        let mut want = PREFACE.to_vec();
        want.extend_from_slice(&[0x00, 0x00, 0x00, 0x2b, 0x08, 0x50, 0x12, 0x23]);
        want.extend_from_slice(WEB.as_bytes());
        want.extend_from_slice(&[0x1a, 0x02, 0x12, 0x00]);
        assert_eq!(WEB.len(), 35);
        assert_eq!(h.encode(), want);
        assert_eq!(Header::decode(&want).unwrap(), (h.clone(), want.len()));
        // Http1 ends 1a 02 0a 00; opaque has no field 3.
        let h1 = Header {
            protocol: Some(SessionProtocol::Http1),
            ..h.clone()
        };
        assert!(h1.encode().ends_with(&[0x1a, 0x02, 0x0a, 0x00]));
        let opaque = Header {
            protocol: None,
            ..h
        };
        let enc = opaque.encode();
        assert!(enc.ends_with(WEB.as_bytes()));
        assert_eq!(Header::decode(&enc).unwrap().0, opaque);
    }

    #[test]
    fn application_bytes_after_the_header_are_left() {
        let h = Header {
            port: 8080,
            name: Some(WEB.into()),
            protocol: None,
        };
        let mut buf = h.encode();
        let used = buf.len();
        buf.extend_from_slice(b"PRI * HTTP/2.0");
        assert_eq!(Header::decode(&buf).unwrap(), (h, used));
    }

    #[test]
    fn every_truncation_is_truncated() {
        let full = Header {
            port: 80,
            name: Some(WEB.into()),
            protocol: Some(SessionProtocol::Http2),
        }
        .encode();
        for n in 0..full.len() {
            assert_eq!(
                Header::decode(&full[..n]).unwrap_err(),
                DecodeError::Truncated,
                "{n}"
            );
        }
    }

    #[test]
    fn refusals() {
        let enc = |msg: &[u8]| {
            let mut v = PREFACE.to_vec();
            v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            v.extend_from_slice(msg);
            v
        };
        assert_eq!(
            Header::decode(b"GET / HTTP/1.1\r\n\r\n\0\0\0\0").unwrap_err(),
            DecodeError::BadPreface
        );
        let mut big = PREFACE.to_vec();
        big.extend_from_slice(&(65 * 1024u32).to_be_bytes());
        assert_eq!(
            Header::decode(&big).unwrap_err(),
            DecodeError::TooLarge(65 * 1024)
        );
        // Port 0 (absent), negative, too large.
        assert_eq!(
            Header::decode(&enc(&[0x12, 0x01, b'a'])).unwrap_err(),
            DecodeError::BadPort(0)
        );
        let mut neg = vec![0x08];
        put_varint(&mut neg, (-5i64) as u64);
        assert_eq!(
            Header::decode(&enc(&neg)).unwrap_err(),
            DecodeError::BadPort(-5)
        );
        let mut big_port = vec![0x08];
        put_varint(&mut big_port, 70000);
        assert_eq!(
            Header::decode(&enc(&big_port)).unwrap_err(),
            DecodeError::BadPort(70000)
        );
        // Bad protobuf: length past the end, wrong wire type, bad varint, bad UTF-8.
        assert!(matches!(
            Header::decode(&enc(&[0x08, 0x50, 0x12, 0x09, b'a'])),
            Err(DecodeError::Protobuf(_))
        ));
        assert!(matches!(
            Header::decode(&enc(&[0x0a, 0x00])),
            Err(DecodeError::Protobuf(_))
        ));
        assert!(matches!(
            Header::decode(&enc(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])),
            Err(DecodeError::Protobuf(_))
        ));
        assert!(matches!(
            Header::decode(&enc(&[0x08, 0x50, 0x12, 0x01, 0xff])),
            Err(DecodeError::Protobuf(_))
        ));
        assert!(matches!(
            Header::decode(&enc(&[0x08, 0x50, 0x07])),
            Err(DecodeError::Protobuf(_))
        ));
        // Names that are not DNS names.
        for bad in ["a..b", "-a.b", "a b", "a/b", "*.x"] {
            let mut m = vec![0x08, 0x50, 0x12, bad.len() as u8];
            m.extend_from_slice(bad.as_bytes());
            assert_eq!(
                Header::decode(&enc(&m)).unwrap_err(),
                DecodeError::BadName,
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_empty_name_is_none() {
        // field 15 varint, field 9 fixed64, field 10 fixed32, field 11 bytes, then port.
        let mut m = vec![
            0x78, 0x01, 0x49, 0, 0, 0, 0, 0, 0, 0, 0, 0x55, 0, 0, 0, 0, 0x5a, 0x01, 0x00,
        ];
        m.extend_from_slice(&[0x08, 0x50, 0x12, 0x00]);
        let mut v = PREFACE.to_vec();
        v.extend_from_slice(&(m.len() as u32).to_be_bytes());
        v.extend_from_slice(&m);
        let (h, _) = Header::decode(&v).unwrap();
        assert_eq!(
            h,
            Header {
                port: 80,
                name: None,
                protocol: None
            }
        );
    }

    #[test]
    fn round_trip_many() {
        for port in [1u16, 80, 127, 128, 16383, 16384, 65535] {
            for name in [
                None,
                Some("a.svc.cluster.local".to_string()),
                Some("x".repeat(63)),
            ] {
                for protocol in [
                    None,
                    Some(SessionProtocol::Http1),
                    Some(SessionProtocol::Http2),
                ] {
                    let h = Header {
                        port,
                        name: name.clone(),
                        protocol,
                    };
                    let e = h.encode();
                    assert_eq!(Header::decode(&e).unwrap(), (h, e.len()));
                }
            }
        }
    }
}
