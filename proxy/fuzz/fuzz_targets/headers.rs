//! The header rules a request meets before routing (`l5d-orig-proto`, `Forwarded`, the
//! RFC 9110/9112/9113 checks, hop-by-hop stripping, target forms) on arbitrary header lists.
//! Input: lines `name: value`; the first line is `METHOD URI VERSION`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(|b| *b == b' ');
    let method = http::Method::from_bytes(parts.next().unwrap_or(b"GET")).unwrap_or_default();
    let uri = parts
        .next()
        .and_then(|u| http::Uri::try_from(u).ok())
        .unwrap_or_else(|| http::Uri::from_static("/"));
    let version = match parts.next() {
        Some(b"2") => http::Version::HTTP_2,
        Some(b"1.0") => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
        .expect("parts from valid pieces");
    let mut forwarded = Vec::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            if n == "l5d-orig-proto" {
                let _ = proxy::fuzzing::orig_proto(value);
            }
            if n == "forwarded" {
                forwarded.push(value);
            }
            req.headers_mut().append(n, v);
        }
    }
    let _ = proxy::fuzzing::forwarded_by(
        &forwarded,
        "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local",
    );
    let _ = proxy::fuzzing::request(&mut req);
});
