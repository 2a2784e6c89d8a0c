//! Entry points for the cargo-fuzz targets in `proxy/fuzz/`: the parsers and header rules a
//! caller's bytes reach, and the gateway's HTTP servers driven in memory, without starting a
//! gateway. Not an API: hidden from the docs, kept only for the fuzzers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    body::CallerBody,
    headers,
    inbound::{HttpLimits, HttpServers, HttpVersion},
    message,
};

/// A caller's HPACK header blocks on one connection, each written again by literals and by
/// the gateway's encoder and decoded back to the same fields.
pub fn hpack(data: &[u8]) {
    crate::h2codec::fuzz_hpack(data)
}

/// An endpoint's side of an HTTP/2 connection, as the gateway's client takes it, with
/// requests open and their responses read.
pub fn upstream_http2(data: &[u8]) {
    crate::upstream::fuzz_http2_client(data)
}

/// A service's HTTP/1.1 response as the gateway's upstream codec reads it; the first byte
/// picks the request method and how the rest is split into reads.
pub fn upstream_response(data: &[u8]) {
    crate::upstream::fuzz_http1_response(data)
}

/// A caller's bytes as the gateway's HTTP/1.1 server parses them: request heads one after
/// another, each body taken off by its framing.
pub fn caller_request(data: &[u8]) {
    crate::inbound::fuzz_request(data)
}

/// Service response heads one after another on one connection: built from the connection's
/// template of the last response's fields, each comes out exactly as parsed afresh.
pub fn upstream_response_template(data: &[u8]) {
    crate::upstream::fuzz_http1_template(data)
}

/// A tap request as the tap controller sends it (protobuf): the match is compiled and, when
/// accepted, evaluated against requests from IPv4 and IPv6 callers to a labelled endpoint.
/// Returns whether it compiled.
pub fn tap_match(data: &[u8]) -> bool {
    use prost::Message;
    let Ok(req) = linkerd2_proxy_api::tap::ObserveRequest::decode(data) else {
        return false;
    };
    let Ok(Some(m)) = crate::tap::Match::compile(req.r#match) else {
        return false;
    };
    let endpoint = std::sync::Arc::new(crate::routing::Endpoint::new(
        "10.1.2.3:8080".parse().expect("addr"),
        crate::routing::EndpointMeta {
            dst_labels: vec![
                ("namespace".into(), "emojivoto".into()),
                ("service".into(), "web-svc".into()),
            ],
            ..Default::default()
        },
    ));
    let client_id = identity::Identity::parse(
        "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local",
    )
    .expect("identity");
    let headers = HeaderMap::new();
    let uri: http::Uri = "http://web-svc.emojivoto.svc.cluster.local/api/list?x=1"
        .parse()
        .expect("uri");
    for source in [
        "192.0.2.1:40000",
        "[2001:db8::1]:40000",
        "[::ffff:192.0.2.1]:1",
    ] {
        let r = crate::tap::TapRequest {
            source: source.parse().expect("addr"),
            client_id: &client_id,
            endpoint: &endpoint,
            authority: "web-svc.emojivoto.svc.cluster.local:80",
            method: &http::Method::GET,
            uri: &uri,
            headers: &headers,
        };
        let _ = m.matches(&r);
    }
    true
}

/// `l5d-orig-proto`'s value as the gateway reads it.
pub fn orig_proto(value: &[u8]) -> Option<Version> {
    HeaderValue::from_bytes(value)
        .ok()
        .and_then(|v| headers::parse_orig_proto(&v))
}

/// Whether `Forwarded` field values say `own` forwarded the request already.
pub fn forwarded_by(values: &[&[u8]], own: &str) -> bool {
    let Ok(own) = identity::Identity::parse(own) else {
        return false;
    };
    let mut map = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            map.append(headers::FORWARDED, v);
        }
    }
    headers::forwarded_by(&map, &own)
}

/// The request rules and rewrites one request goes through before routing: the message
/// checks, the authority it names, hop-by-hop stripping and the target forms. Returns the
/// status the gateway would answer with itself, if any.
pub fn request<B>(req: &mut Request<B>) -> Option<StatusCode> {
    if let Err(e) = message::check(req, true) {
        return Some(e.status());
    }
    let authority = match headers::request_authority(req) {
        Ok(a) => a,
        Err(e) => return Some(e.status()),
    };
    let upgrading = headers::is_upgrade(req);
    headers::strip_hop_by_hop(req.headers_mut(), upgrading);
    let _ = headers::origin_form(req.uri());
    if let Ok(a) = authority.as_str().parse() {
        let _ = headers::retarget(req.uri(), a);
    }
    None
}

/// Serves one connection on `io` with the gateway's caller-facing HTTP server (its limits and
/// settings), each request going through [`request`] and answered locally.
pub async fn serve<IO>(io: IO, http2: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let servers = HttpServers::new(&HttpLimits {
        header_read_timeout: Duration::from_secs(1),
        max_header_bytes: 64 * 1024,
        max_concurrent_streams: 100,
    });
    let version = if http2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    };
    let handler = |mut req: Request<CallerBody>| async move {
        let status = request(&mut req).unwrap_or(StatusCode::OK);
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(b"ok"))));
        *resp.status_mut() = status;
        resp
    };
    let _ = servers.serve(io, version, handler).await;
}
