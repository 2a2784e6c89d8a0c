//! The upstream codec's use of [`HeadTemplate`](crate::head_template::HeadTemplate): its differential fuzz entry and tests.

use super::codec::{parse_response, Parsed, ResponseTemplate};
#[cfg(test)]
use crate::head_template::{MAX_KEPT_HEAD, MISSES_BEFORE_REPLACE, STALE_BEFORE_REFRESH};

/// Fuzzing entry: the heads in `data`, one after another as on one connection, parsed with
/// the connection's template and each with a fresh one must come out the same (status,
/// version, fields in order, framing, reuse) or fail the same way. Never panics otherwise.
#[doc(hidden)]
pub fn fuzz_template(data: &[u8]) {
    use bytes::BytesMut;
    use http::Method;

    let mut kept = ResponseTemplate::default();
    let mut with = BytesMut::from(data);
    let mut without = with.clone();
    for _ in 0..64 {
        let a = parse_response(&mut with, &Method::GET, &mut kept);
        let b = parse_response(&mut without, &Method::GET, &mut ResponseTemplate::default());
        match (a, b) {
            (Ok(Some(Parsed::Final(a))), Ok(Some(Parsed::Final(b)))) => {
                assert_eq!((a.status, a.version), (b.status, b.version));
                assert_eq!((a.framing, a.keep_alive), (b.framing, b.keep_alive));
                // A repeated head comes without its hop-by-hop fields, which the gateway
                // removes from every response before forwarding it.
                assert!(
                    forwarded(&a.headers)
                        .iter()
                        .eq(forwarded(&b.headers).iter()),
                    "{a:?} / {b:?}"
                );
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

/// A response's fields as the gateway forwards them.
fn forwarded(fields: &http::HeaderMap) -> http::HeaderMap {
    let mut fields = fields.clone();
    crate::headers::strip_hop_by_hop(&mut fields, false);
    fields
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use http::Method;

    use super::*;
    use crate::upstream::http1::codec::BodyFraming;

    const A: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 11:00:00 GMT\r\n\
        Content-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n";
    const A_LATER: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 11:00:01 GMT\r\n\
        Content-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n";
    const B: &[u8] = b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\ncontent-length: 0\r\n\r\n";

    fn fields(bytes: &[u8], kept: &mut ResponseTemplate) -> Vec<(String, String)> {
        match parse_response(&mut BytesMut::from(bytes), &Method::GET, kept) {
            // As forwarded: a repeated head comes without its hop-by-hop fields.
            Ok(Some(Parsed::Final(h))) => forwarded(&h.headers)
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_matching_head_gets_its_own_values_in_order() {
        let mut kept = ResponseTemplate::default();
        let first = fields(A, &mut kept);
        assert_eq!(kept.spans.len(), 5, "the first head is kept");
        assert_eq!(fields(A, &mut kept), first);
        let later = fields(A_LATER, &mut kept);
        assert_eq!(later, fields(A_LATER, &mut ResponseTemplate::default()));
        assert_eq!(later[1].1, "Wed, 02 Dec 2026 11:00:01 GMT");
        assert_eq!(later.len(), 4, "five fields, connection not forwarded");
        // The map does not hold the connection's read buffer: the template has its own copy.
        assert_eq!(kept.head.len(), A.len());
    }

    #[test]
    fn a_value_that_moved_on_is_taken_into_the_template_and_one_that_always_moves_less_often() {
        let mut kept = ResponseTemplate::default();
        fields(A, &mut kept);
        let date =
            |kept: &ResponseTemplate| String::from_utf8_lossy(&kept.head).contains("11:00:01");
        for _ in 1..STALE_BEFORE_REFRESH {
            fields(A_LATER, &mut kept);
            assert!(!date(&kept));
        }
        fields(A_LATER, &mut kept);
        assert!(
            date(&kept),
            "the later Date is kept after {STALE_BEFORE_REFRESH} heads"
        );
        assert_eq!(kept.since_kept, 0);
        // A value differing in every head: each refresh soon after the last doubles the wait.
        let mut refreshes = Vec::new();
        for i in 0..400u32 {
            let head = format!(
                "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 11:00:01 GMT\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\nx-request-id: {i:08}\r\n\r\n"
            );
            let got = fields(head.as_bytes(), &mut kept);
            assert_eq!(
                got,
                fields(head.as_bytes(), &mut ResponseTemplate::default())
            );
            if kept.since_kept == 0 && i >= u32::from(MISSES_BEFORE_REPLACE) {
                refreshes.push(i);
            }
        }
        // The new shape (with x-request-id) is kept after its misses, then refreshed at
        // doubling gaps.
        let gaps: Vec<u32> = refreshes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] == 2 * g[0]), "{refreshes:?}");
        assert!(refreshes.len() <= 7, "{refreshes:?}");
    }

    #[test]
    fn a_head_repeated_byte_for_byte_is_taken_whole_and_its_framing_follows_the_method() {
        let mut kept = ResponseTemplate::default();
        let parse = |kept: &mut ResponseTemplate, buf: &mut BytesMut, method: &Method| {
            match parse_response(buf, method, kept) {
                Ok(Some(Parsed::Final(h))) => h,
                other => panic!("{other:?}"),
            }
        };
        let mut buf = BytesMut::from(A);
        buf.extend_from_slice(b"{}");
        buf.extend_from_slice(A);
        buf.extend_from_slice(b"{}");
        buf.extend_from_slice(A);
        let first = parse(&mut kept, &mut buf, &Method::GET);
        assert_eq!(&buf[..2], b"{}");
        let _ = buf.split_to(2);
        assert!(kept.repeat(&buf).is_some(), "the kept head is noted");
        let again = parse(&mut kept, &mut buf, &Method::GET);
        assert_eq!(&buf[..2], b"{}", "exactly the head was taken off");
        let _ = buf.split_to(2);
        assert_eq!(again.framing, first.framing);
        assert!(again.headers.iter().eq(forwarded(&first.headers).iter()));
        assert!(
            !again.headers.contains_key(http::header::CONNECTION),
            "a repeat comes as forwarded"
        );
        assert_eq!((again.status, again.version), (first.status, first.version));
        // The same head answering HEAD has no body.
        let head = parse(&mut kept, &mut buf, &Method::HEAD);
        assert_eq!(head.framing, BodyFraming::Empty);
        assert!(buf.is_empty());
        // A head that is not the kept one byte for byte is parsed.
        assert!(kept.repeat(A_LATER).is_none());
        let mut truncated = BytesMut::from(&A[..A.len() - 1]);
        assert!(kept.repeat(&truncated).is_none());
        assert!(matches!(
            parse_response(&mut truncated, &Method::GET, &mut kept),
            Ok(None)
        ));
    }

    #[test]
    fn another_shape_is_parsed_afresh_and_replaces_the_template_only_when_it_persists() {
        let mut kept = ResponseTemplate::default();
        fields(A, &mut kept);
        for round in 1..=MISSES_BEFORE_REPLACE {
            assert_eq!(
                fields(B, &mut kept),
                fields(B, &mut ResponseTemplate::default())
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
        let mut kept = ResponseTemplate::default();
        fields(B, &mut kept);
        let lower = b"HTTP/1.1 404 Not Found\r\nserver: nginx\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            fields(lower, &mut kept),
            fields(lower, &mut ResponseTemplate::default())
        );
        assert_eq!(kept.misses, 1);
    }

    #[test]
    fn heads_repeating_a_name_or_too_large_are_not_kept() {
        let mut kept = ResponseTemplate::default();
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
        let mut kept = ResponseTemplate::default();
        fields(B, &mut kept);
        let bad = b"HTTP/1.1 404 Not Found\r\nServer: ng\x7fnx\r\ncontent-length: 0\r\n\r\n";
        let with = parse_response(&mut BytesMut::from(&bad[..]), &Method::GET, &mut kept);
        let without = parse_response(
            &mut BytesMut::from(&bad[..]),
            &Method::GET,
            &mut ResponseTemplate::default(),
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
