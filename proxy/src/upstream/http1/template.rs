//! The header fields of a connection's last response, kept to build the next response's.
//!
//! A service answers every request with the same header names in the same order, and most
//! values the same too (`Server`, `Content-Type`, `Connection`, often `Content-Length`); only a
//! few change (`Date` once a second, a request id). Turning a field's bytes into an
//! `http::HeaderName` and a validated `HeaderValue` and hashing it into a new `HeaderMap` cost
//! about 4k instructions for the eight fields of a typical response, the largest part of
//! reading one. When a response's field names are byte for byte those of the template, its map
//! is the template's map cloned, with the values that differ replaced: a name or value equal to
//! bytes that were validated before is valid, so nothing is given up but work. Framing
//! (`Content-Length`, `Transfer-Encoding`, `Connection`) is still read from each response's
//! own bytes by the parser.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::codec::{parse_response, Http1Error, Parsed, Span};

/// Heads longer than this are not kept: it bounds what an idle pooled connection holds.
const MAX_KEPT_HEAD: usize = 4096;
/// Responses of another shape in a row before the template is replaced by the latest: a
/// service alternating between two shapes keeps one of them instead of rebuilding every time.
const MISSES_BEFORE_REPLACE: u8 = 4;

#[derive(Default)]
pub struct HeadTemplate {
    /// A copy of the kept response's head (not a slice of the connection's read buffer, which
    /// would then never be reused in place).
    head: Bytes,
    /// Where each field lies in `head`, in the order they came.
    spans: Vec<Span>,
    /// Each field's name, parsed, in the same order.
    names: Vec<HeaderName>,
    /// The fields as a map, values pointing into `head`. Every name appears once: heads that
    /// repeat a name are not kept, so that replacing a value is one `insert`.
    headers: HeaderMap,
    /// Responses in a row whose names did not match.
    misses: u8,
}

impl HeadTemplate {
    /// The header map of the response whose head is `head`, fields at `spans`.
    pub(super) fn headers(
        &mut self,
        head: &Bytes,
        spans: &[Span],
    ) -> Result<HeaderMap, Http1Error> {
        if !self.spans.is_empty() && self.same_names(head, spans) {
            self.misses = 0;
            let mut headers = self.headers.clone();
            for ((now, was), name) in spans.iter().zip(&self.spans).zip(&self.names) {
                let value = &head[now.value.0..now.value.1];
                if value != &self.head[was.value.0..was.value.1] {
                    headers.insert(name.clone(), value_at(head, now)?);
                }
            }
            return Ok(headers);
        }
        let headers = build(head, spans)?;
        self.misses = self.misses.saturating_add(1);
        if self.spans.is_empty() || self.misses >= MISSES_BEFORE_REPLACE {
            self.keep(head, spans, &headers)?;
        }
        Ok(headers)
    }

    fn same_names(&self, head: &[u8], spans: &[Span]) -> bool {
        spans.len() == self.spans.len()
            && spans
                .iter()
                .zip(&self.spans)
                .all(|(now, was)| head[now.name.0..now.name.1] == self.head[was.name.0..was.name.1])
    }

    /// Keeps `head` as the template when it can serve as one, else keeps nothing.
    fn keep(
        &mut self,
        head: &Bytes,
        spans: &[Span],
        headers: &HeaderMap,
    ) -> Result<(), Http1Error> {
        *self = HeadTemplate::default();
        if spans.is_empty() || head.len() > MAX_KEPT_HEAD || headers.keys_len() != spans.len() {
            return Ok(());
        }
        let copy = Bytes::copy_from_slice(head);
        let kept = build(&copy, spans)?;
        self.names = kept.keys().cloned().collect();
        self.head = copy;
        self.spans = spans.to_vec();
        self.headers = kept;
        Ok(())
    }
}

/// The map of a head's fields, each parsed and validated.
pub(super) fn build(head: &Bytes, spans: &[Span]) -> Result<HeaderMap, Http1Error> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    for span in spans {
        let name = HeaderName::from_bytes(&head[span.name.0..span.name.1])
            .map_err(|_| Http1Error::BadHead)?;
        headers.append(name, value_at(head, span)?);
    }
    Ok(headers)
}

fn value_at(head: &Bytes, span: &Span) -> Result<HeaderValue, Http1Error> {
    HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
        .map_err(|_| Http1Error::BadHead)
}

/// Fuzzing entry: the heads in `data`, one after another as on one connection, parsed with
/// the connection's template and each with a fresh one must come out the same (status,
/// version, fields in order, framing, reuse) or fail the same way. Never panics otherwise.
#[doc(hidden)]
pub fn fuzz_template(data: &[u8]) {
    use bytes::BytesMut;
    use http::Method;

    let mut kept = HeadTemplate::default();
    let mut with = BytesMut::from(data);
    let mut without = with.clone();
    for _ in 0..64 {
        let a = parse_response(&mut with, &Method::GET, &mut kept);
        let b = parse_response(&mut without, &Method::GET, &mut HeadTemplate::default());
        match (a, b) {
            (Ok(Some(Parsed::Final(a))), Ok(Some(Parsed::Final(b)))) => {
                assert_eq!((a.status, a.version), (b.status, b.version));
                assert_eq!((a.framing, a.keep_alive), (b.framing, b.keep_alive));
                assert!(a.headers.iter().eq(b.headers.iter()), "{a:?} / {b:?}");
            }
            (Ok(Some(Parsed::Interim)), Ok(Some(Parsed::Interim))) => {}
            (Ok(None), Ok(None)) => return,
            (Err(a), Err(b)) => {
                assert_eq!(a, b);
                return;
            }
            (a, b) => panic!("the template changed the outcome: {a:?} / {b:?}"),
        }
        assert_eq!(with, without);
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use http::Method;

    use super::*;

    const A: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 11:00:00 GMT\r\n\
        Content-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n";
    const A_LATER: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 11:00:01 GMT\r\n\
        Content-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n";
    const B: &[u8] = b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\ncontent-length: 0\r\n\r\n";

    fn fields(bytes: &[u8], kept: &mut HeadTemplate) -> Vec<(String, String)> {
        match parse_response(&mut BytesMut::from(bytes), &Method::GET, kept) {
            Ok(Some(Parsed::Final(h))) => h
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_matching_head_gets_its_own_values_in_order() {
        let mut kept = HeadTemplate::default();
        let first = fields(A, &mut kept);
        assert_eq!(kept.spans.len(), 5, "the first head is kept");
        assert_eq!(fields(A, &mut kept), first);
        let later = fields(A_LATER, &mut kept);
        assert_eq!(later, fields(A_LATER, &mut HeadTemplate::default()));
        assert_eq!(later[1].1, "Wed, 02 Dec 2026 11:00:01 GMT");
        assert_eq!(later.len(), 5);
        // The map does not hold the connection's read buffer: the template has its own copy.
        assert_eq!(kept.head.len(), A.len());
    }

    #[test]
    fn another_shape_is_parsed_afresh_and_replaces_the_template_only_when_it_persists() {
        let mut kept = HeadTemplate::default();
        fields(A, &mut kept);
        for round in 1..=MISSES_BEFORE_REPLACE {
            assert_eq!(
                fields(B, &mut kept),
                fields(B, &mut HeadTemplate::default())
            );
            let replaced = round == MISSES_BEFORE_REPLACE;
            assert_eq!(
                kept.spans.len(),
                if replaced { 2 } else { 5 },
                "round {round}"
            );
        }
        // Alternating shapes keep the template: each match resets the count.
        fields(A, &mut kept);
        fields(B, &mut kept);
        fields(A, &mut kept);
        assert_eq!(kept.misses, 1);
    }

    #[test]
    fn names_differing_only_in_case_are_another_shape() {
        let mut kept = HeadTemplate::default();
        fields(B, &mut kept);
        let lower = b"HTTP/1.1 404 Not Found\r\nserver: nginx\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            fields(lower, &mut kept),
            fields(lower, &mut HeadTemplate::default())
        );
        assert_eq!(kept.misses, 1);
    }

    #[test]
    fn heads_repeating_a_name_or_too_large_are_not_kept() {
        let mut kept = HeadTemplate::default();
        let repeated = b"HTTP/1.1 200 OK\r\nVary: a\r\nVary: b\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(fields(repeated, &mut kept).len(), 3);
        assert!(kept.spans.is_empty());
        let big = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
            "v".repeat(MAX_KEPT_HEAD)
        );
        fields(big.as_bytes(), &mut kept);
        assert!(kept.spans.is_empty());
    }

    #[test]
    fn an_invalid_value_in_a_matching_head_is_refused() {
        let mut kept = HeadTemplate::default();
        fields(B, &mut kept);
        let bad = b"HTTP/1.1 404 Not Found\r\nServer: ng\x7fnx\r\ncontent-length: 0\r\n\r\n";
        let with = parse_response(&mut BytesMut::from(&bad[..]), &Method::GET, &mut kept);
        let without = parse_response(
            &mut BytesMut::from(&bad[..]),
            &Method::GET,
            &mut HeadTemplate::default(),
        );
        assert_eq!(with.unwrap_err(), without.unwrap_err());
    }

    #[test]
    fn differential_entry_point_holds_on_a_sequence() {
        let mut seq = Vec::new();
        for part in [A, A, A_LATER, B, A, B, B, B, B, A_LATER] {
            seq.extend_from_slice(part);
        }
        fuzz_template(&seq);
    }
}
