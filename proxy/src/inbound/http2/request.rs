//! A caller's header block as a request head, with the checks RFC 9113 §8 asks of a server:
//! pseudo-headers (which, how many, where), field names and values, connection-specific
//! fields, and the list's size against SETTINGS_MAX_HEADER_LIST_SIZE.

use bytes::Bytes;
use http::{
    header,
    request::Parts,
    uri::{Authority, PathAndQuery, Scheme},
    HeaderMap, Method, Request, Uri, Version,
};

use crate::h2codec::hpack::{is_connection_specific, Field, Name, Pseudo};

/// Why a request head was not taken. Each is answered on its stream; the connection goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed (§8.1.1), with the stable reason sent in `l5d-proxy-error`.
    Malformed(&'static str),
    /// Over the header list size the gateway advertised.
    TooLarge,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed(r) => r,
            Refusal::TooLarge => "request_header_fields_too_large",
        }
    }
}

/// Collects one header block's fields.
pub struct HeadBuilder {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    headers: HeaderMap,
    size: usize,
    limit: usize,
    /// Trailers: no pseudo-header allowed.
    trailers: bool,
    regular_seen: bool,
    refusal: Option<Refusal>,
    content_length: Option<u64>,
}

impl HeadBuilder {
    /// `fields`: how many regular fields to make room for (a caller's requests look alike:
    /// its last request's count saves the map growing field by field).
    pub fn request(limit: usize, fields: usize) -> HeadBuilder {
        HeadBuilder::new(limit, false, fields)
    }

    pub fn trailers(limit: usize) -> HeadBuilder {
        HeadBuilder::new(limit, true, 0)
    }

    fn new(limit: usize, trailers: bool, fields: usize) -> HeadBuilder {
        HeadBuilder {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            headers: HeaderMap::with_capacity(fields),
            size: 0,
            limit,
            trailers,
            regular_seen: false,
            refusal: None,
            content_length: None,
        }
    }

    fn refuse(&mut self, why: &'static str) {
        self.refusal.get_or_insert(Refusal::Malformed(why));
    }

    /// Takes the block's next field. Once the head is refused the rest are only counted:
    /// the block is still decoded to its end, so the compression context stays in step.
    pub fn field(&mut self, f: &Field) {
        self.size += f.size;
        if self.size > self.limit {
            self.refusal = Some(Refusal::TooLarge);
        }
        if self.refusal.is_some() {
            return;
        }
        match &f.name {
            Name::Invalid => self.refuse("invalid_header_name"),
            Name::Pseudo(p) => {
                if self.trailers {
                    return self.refuse("pseudo_header_in_trailers");
                }
                if self.regular_seen {
                    return self.refuse("pseudo_header_after_regular_field");
                }
                let slot = match p {
                    Pseudo::Method => &mut self.method,
                    Pseudo::Scheme => &mut self.scheme,
                    Pseudo::Authority => &mut self.authority,
                    Pseudo::Path => &mut self.path,
                    Pseudo::Status | Pseudo::Protocol | Pseudo::Unknown => {
                        return self.refuse("pseudo_header_not_allowed_in_request")
                    }
                };
                if slot.is_some() {
                    return self.refuse("repeated_pseudo_header");
                }
                *slot = Some(f.value.clone());
            }
            Name::Header(name) => {
                self.regular_seen = true;
                let Some(value) = &f.header else {
                    return self.refuse("invalid_header_value");
                };
                let bytes = value.as_bytes();
                if matches!(bytes.first(), Some(b' ' | b'\t'))
                    || matches!(bytes.last(), Some(b' ' | b'\t'))
                {
                    return self.refuse("header_value_surrounded_by_whitespace");
                }
                if is_connection_specific(name) {
                    return self.refuse("connection_specific_header");
                }
                if name == header::TE && bytes != b"trailers" {
                    return self.refuse("te_other_than_trailers");
                }
                if name == header::CONTENT_LENGTH {
                    let n = std::str::from_utf8(bytes)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok());
                    match (n, self.content_length) {
                        (None, _) => return self.refuse("invalid_content_length"),
                        (Some(n), Some(m)) if n != m => {
                            return self.refuse("invalid_content_length")
                        }
                        (Some(n), _) => self.content_length = Some(n),
                    }
                }
                self.headers.append(name.clone(), value.clone());
            }
        }
    }

    /// The request head, and the declared body length if any. `last_authority` is the
    /// connection's last `:authority`, parsed: a caller names the same one request after
    /// request, and the same bytes need no parsing again.
    pub fn finish_request(
        self,
        last_authority: &mut Option<(Bytes, Authority)>,
    ) -> Result<(Parts, Option<u64>), Refusal> {
        if let Some(r) = self.refusal {
            return Err(r);
        }
        let method = self
            .method
            .ok_or(Refusal::Malformed("missing_method"))
            .and_then(|m| {
                Method::from_bytes(&m).map_err(|_| Refusal::Malformed("invalid_method"))
            })?;
        let mut uri = http::uri::Parts::default();
        uri.authority = match self.authority {
            Some(a) => match last_authority {
                Some((raw, parsed)) if *raw == a => Some(parsed.clone()),
                _ => {
                    let parsed = Authority::from_maybe_shared(a.clone())
                        .map_err(|_| Refusal::Malformed("invalid_authority"))?;
                    // Kept as its own copy: `a` may be a slice of a whole read.
                    *last_authority = Some((Bytes::copy_from_slice(&a), parsed.clone()));
                    Some(parsed)
                }
            },
            None => None,
        };
        if method == Method::CONNECT {
            // Plain CONNECT (§8.5): the authority only.
            if self.scheme.is_some() || self.path.is_some() || uri.authority.is_none() {
                return Err(Refusal::Malformed("malformed_connect"));
            }
        } else {
            let scheme = self.scheme.ok_or(Refusal::Malformed("missing_scheme"))?;
            let path = self.path.ok_or(Refusal::Malformed("missing_path"))?;
            uri.scheme = Some(match &scheme[..] {
                b"https" => Scheme::HTTPS,
                b"http" => Scheme::HTTP,
                other => {
                    Scheme::try_from(other).map_err(|_| Refusal::Malformed("invalid_scheme"))?
                }
            });
            if path.is_empty() {
                return Err(Refusal::Malformed("empty_path"));
            }
            if path[0] != b'/' && !(&path[..] == b"*" && method == Method::OPTIONS) {
                return Err(Refusal::Malformed("invalid_path"));
            }
            uri.path_and_query = Some(
                PathAndQuery::from_maybe_shared(path)
                    .map_err(|_| Refusal::Malformed("invalid_path"))?,
            );
        }
        let uri = Uri::from_parts(uri).map_err(|_| Refusal::Malformed("invalid_uri"))?;
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = Version::HTTP_2;
        parts.headers = self.headers;
        Ok((parts, self.content_length))
    }

    pub fn finish_trailers(self) -> Result<HeaderMap, Refusal> {
        match self.refusal {
            Some(r) => Err(r),
            None => Ok(self.headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn field(name: &str, value: &str) -> Field {
        let n = match name {
            ":method" => Name::Pseudo(Pseudo::Method),
            ":scheme" => Name::Pseudo(Pseudo::Scheme),
            ":authority" => Name::Pseudo(Pseudo::Authority),
            ":path" => Name::Pseudo(Pseudo::Path),
            ":status" => Name::Pseudo(Pseudo::Status),
            n => match http::HeaderName::from_lowercase(n.as_bytes()) {
                Ok(h) => Name::Header(h),
                Err(_) => Name::Invalid,
            },
        };
        Field {
            header: matches!(n, Name::Header(_))
                .then(|| HeaderValue::from_str(value).ok())
                .flatten(),
            name: n,
            value: Bytes::copy_from_slice(value.as_bytes()),
            size: name.len() + value.len() + 32,
        }
    }

    fn build(fields: &[(&str, &str)]) -> Result<(Parts, Option<u64>), Refusal> {
        let mut b = HeadBuilder::request(1024, 0);
        for (n, v) in fields {
            b.field(&field(n, v));
        }
        b.finish_request(&mut None)
    }

    const BASE: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "web-svc.emojivoto:80"),
        (":path", "/api/list?x=1"),
    ];

    #[test]
    fn a_plain_request_becomes_a_head() {
        let mut fields = BASE.to_vec();
        fields.push(("content-length", "0"));
        fields.push(("te", "trailers"));
        let (parts, cl) = build(&fields).unwrap();
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri, "https://web-svc.emojivoto:80/api/list?x=1");
        assert_eq!(parts.version, Version::HTTP_2);
        assert_eq!(parts.headers.len(), 2);
        assert_eq!(cl, Some(0));
    }

    #[test]
    fn malformed_heads_are_refused_with_their_reason() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = BASE.to_vec();
            v.extend_from_slice(extra);
            build(&v).unwrap_err().reason()
        };
        assert_eq!(with(&[("X-Up", "1")]), "invalid_header_name");
        assert_eq!(
            with(&[("connection", "close")]),
            "connection_specific_header"
        );
        assert_eq!(with(&[("te", "gzip")]), "te_other_than_trailers");
        assert_eq!(
            with(&[("x-a", " v")]),
            "header_value_surrounded_by_whitespace"
        );
        assert_eq!(
            with(&[("x-a", "v"), (":path", "/")]),
            "pseudo_header_after_regular_field"
        );
        assert_eq!(
            with(&[(":status", "200")]),
            "pseudo_header_not_allowed_in_request"
        );
        assert_eq!(with(&[(":method", "GET")]), "repeated_pseudo_header");
        assert_eq!(
            with(&[("content-length", "1"), ("content-length", "2")]),
            "invalid_content_length"
        );
        assert_eq!(build(&BASE[..3]).unwrap_err().reason(), "missing_path");
        assert_eq!(
            build(&[
                (":method", "CONNECT"),
                (":authority", "a:1"),
                (":path", "/")
            ])
            .unwrap_err()
            .reason(),
            "malformed_connect"
        );
        let mut big = HeadBuilder::request(100, 0);
        for (n, v) in BASE {
            big.field(&field(n, v));
        }
        big.field(&field("x-long", &"a".repeat(100)));
        assert_eq!(
            big.finish_request(&mut None).unwrap_err(),
            Refusal::TooLarge
        );
    }
}
