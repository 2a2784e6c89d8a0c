//! The request-message rules of RFC 9110, 9112 and 9113 that a proxy must enforce, each sent
//! as raw bytes (HTTP/1.1 over mTLS, and hand-built HTTP/2 frames) so that no client library
//! tidies the message first. A refused request must never reach the backend.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use e2e::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that counts what reaches it and echoes the headers the rules are about.
async fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let h = |n: &str| {
                            req.headers()
                                .get_all(n)
                                .iter()
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                .collect::<Vec<_>>()
                                .join(" | ")
                        };
                        let text = format!(
                            "method={} host={} max-forwards={}\n",
                            req.method(),
                            h("host"),
                            h("max-forwards")
                        );
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            text,
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// What came back for one raw HTTP/1 request.
#[derive(Debug)]
struct H1Reply {
    status: u16,
    head: String,
    body: String,
    /// The gateway closed the connection after the response.
    closed: bool,
}

/// Sends `raw` on a fresh direct HTTP/1.1 mTLS connection and reads one response.
async fn h1(fx: &Fixture, gw: &Gateway, raw: &str) -> H1Reply {
    let mut io = connect(gw.listen, client_tls(fx, "vote-bot", &[b"http/1.1"]))
        .await
        .unwrap();
    io.write_all(raw.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut closed = false;
    loop {
        if complete_response(&got).is_some() {
            break;
        }
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "no response to {raw:?}: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    if !closed {
        // Closed right after the response, or kept open for the next request?
        closed = matches!(
            tokio::time::timeout(Duration::from_millis(500), io.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    H1Reply {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
        closed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_that_break_the_framing_rules_get_400_and_never_reach_the_backend() {
    let fx = Fixture::new();
    let (backend, seen) = counting_backend().await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80={backend}")]);
    let host = format!("host: {WEB_SVC}\r\n");
    // (what, request, status, must the connection close)
    let cases: Vec<(&str, String, u16, bool)> = vec![
        (
            "two Host fields (RFC 9112 §3.2)",
            format!("GET / HTTP/1.1\r\n{host}{host}\r\n"),
            400,
            false,
        ),
        (
            "no Host in HTTP/1.1 (RFC 9112 §3.2)",
            "GET / HTTP/1.1\r\n\r\n".to_string(),
            400,
            false,
        ),
        (
            "Host with an invalid value (RFC 9112 §3.2)",
            "GET / HTTP/1.1\r\nhost: web svc\r\n\r\n".to_string(),
            400,
            false,
        ),
        (
            "Host with userinfo (RFC 9110 §4.2.4)",
            format!("GET / HTTP/1.1\r\nhost: user@{WEB_SVC}\r\n\r\n"),
            400,
            false,
        ),
        (
            "chunked not the final coding (RFC 9112 §6.3)",
            format!("POST / HTTP/1.1\r\n{host}transfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
            400,
            true,
        ),
        (
            "Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1)",
            format!("POST / HTTP/1.0\r\n{host}transfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
            400,
            true,
        ),
        (
            "two different Content-Length values (RFC 9112 §6.3)",
            format!("POST / HTTP/1.1\r\n{host}content-length: 3\r\ncontent-length: 4\r\n\r\nabcd"),
            400,
            true,
        ),
        (
            "Content-Length not a number (RFC 9112 §6.3)",
            format!("POST / HTTP/1.1\r\n{host}content-length: +3\r\n\r\nabc"),
            400,
            true,
        ),
        (
            "whitespace between field name and colon (RFC 9112 §5.1)",
            format!("GET / HTTP/1.1\r\nhost : {WEB_SVC}\r\n\r\n"),
            400,
            true,
        ),
        (
            "obsolete line folding (RFC 9112 §5.2)",
            format!("GET / HTTP/1.1\r\n{host}x-a: 1\r\n  2\r\n\r\n"),
            400,
            true,
        ),
        (
            "NUL in a field value (RFC 9110 §5.5)",
            format!("GET / HTTP/1.1\r\n{host}x-a: a\0b\r\n\r\n"),
            400,
            true,
        ),
        (
            "bare CR (RFC 9112 §2.2)",
            format!("GET / HTTP/1.1\r\n{host}x-a: a\rb\r\n\r\n"),
            400,
            true,
        ),
        (
            "CONNECT: no tunnels through the gateway",
            format!("CONNECT {WEB_SVC}:80 HTTP/1.1\r\n{host}\r\n"),
            501,
            false,
        ),
        (
            "TRACE: would reflect what the gateway adds",
            format!("TRACE / HTTP/1.1\r\n{host}\r\n"),
            501,
            false,
        ),
    ];
    let mut failed = Vec::new();
    for (what, raw, status, closes) in &cases {
        let reply = h1(&fx, &gw, raw).await;
        if reply.status != *status || (*closes && !reply.closed) {
            failed.push(format!("{what}: {reply:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a malformed request reached the backend"
    );

    // The gateway's own refusals say why, for meshed callers to read.
    let reply = h1(&fx, &gw, &format!("GET / HTTP/1.1\r\n{host}{host}\r\n")).await;
    assert!(
        reply.head.contains("l5d-proxy-error: duplicate host"),
        "{reply:?}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    // So do the HTTP/1.1 server's, which also close the connection.
    let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
    for (raw, status, reason) in [
        (
            format!("POST / HTTP/1.1\r\n{host}content-length: 3\r\ncontent-length: 4\r\n\r\nabcd"),
            400,
            "invalid content-length",
        ),
        (
            format!("GET / HTTP/3.0\r\n{host}\r\n"),
            505,
            "unsupported HTTP version",
        ),
        (
            format!("GET / HTTP/1.1\r\n{host}{many}\r\n"),
            431,
            "too many request headers",
        ),
    ] {
        let reply = h1(&fx, &gw, &raw).await;
        assert_eq!(reply.status, status, "{reply:?}");
        assert!(
            reply.head.contains(&format!("l5d-proxy-error: {reason}")),
            "{reply:?}"
        );
        assert!(reply.closed, "{reply:?}");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0);

    // Transfer-Encoding with Content-Length (RFC 9112 §6.1): framed by the former alone, the
    // latter dropped, and the connection closed after the response.
    let reply = h1(
        &fx,
        &gw,
        &format!("POST / HTTP/1.1\r\n{host}transfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.closed, "{reply:?}");

    // Absolute-form: the target URI wins, the Host field is ignored and replaced (RFC 9112
    // §3.2.2).
    let reply = h1(
        &fx,
        &gw,
        &format!("GET http://{WEB_SVC}/ HTTP/1.1\r\nhost: elsewhere.example\r\n\r\n"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.contains(&format!("host={WEB_SVC}\n"))
            || reply.body.contains(&format!("host={WEB_SVC} ")),
        "{reply:?}"
    );
    // Max-Forwards (RFC 9110 §7.6.2): decremented on the way, answered here at 0.
    let reply = h1(
        &fx,
        &gw,
        &format!("OPTIONS / HTTP/1.1\r\n{host}max-forwards: 3\r\n\r\n"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("max-forwards=2"), "{reply:?}");
    let before = seen.load(Ordering::SeqCst);
    let reply = h1(
        &fx,
        &gw,
        &format!("OPTIONS / HTTP/1.1\r\n{host}max-forwards: 0\r\n\r\n"),
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""), "{reply:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        before,
        "Max-Forwards: 0 was forwarded"
    );

    // Every refusal was counted by reason, and the gateway still serves.
    let m = gw.metrics();
    for reason in [
        "duplicate host",
        "invalid content-length",
        "unsupported HTTP version",
        "method not supported",
        "invalid authority",
        "missing authority",
    ] {
        assert!(
            m.contains(&format!("inbound_http_errors_total{{error=\"{reason}\"}}")),
            "no {reason} in metrics:\n{m}"
        );
    }
    let reply = h1(&fx, &gw, &format!("GET / HTTP/1.1\r\n{host}\r\n")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

use e2e::h2raw::{frame, literal};

/// How the gateway answered one raw HTTP/2 request.
#[derive(Debug, PartialEq, Eq)]
enum H2Reply {
    /// A response with this status (only the statically indexed ones are decoded).
    Status(u16),
    /// A response whose status this test does not decode.
    OtherStatus,
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
}

/// Sends one request on a fresh direct `h2` mTLS connection, as a header list written
/// verbatim, and reports the first answer for stream 1.
async fn h2_raw(fx: &Fixture, gw: &Gateway, fields: &[(&str, &str)]) -> H2Reply {
    let mut io = connect(gw.listen, client_tls(fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let mut block = Vec::new();
    for (n, v) in fields {
        literal(&mut block, n.as_bytes(), v.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    // END_STREAM | END_HEADERS
    out.extend(frame(1, 0x5, 1, &block));
    io.write_all(&out).await.unwrap();
    let mut got: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Parse whole frames from the front.
        while got.len() >= 9 {
            let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
            if got.len() < 9 + len {
                break;
            }
            let (kind, stream) = (
                got[3],
                u32::from_be_bytes([got[5], got[6], got[7], got[8]]) & 0x7fff_ffff,
            );
            let payload = got[9..9 + len].to_vec();
            got.drain(..9 + len);
            match (kind, stream) {
                (1, 1) => {
                    return match payload.first() {
                        Some(0x88) => H2Reply::Status(200),
                        Some(0x8c) => H2Reply::Status(400),
                        Some(0x8d) => H2Reply::Status(404),
                        _ => H2Reply::OtherStatus,
                    }
                }
                (3, 1) => {
                    return H2Reply::Reset(u32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]))
                }
                (7, 0) => {
                    return H2Reply::GoAway(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]))
                }
                _ => {}
            }
        }
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no answer to {fields:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_requests_are_refused_and_never_reach_the_backend() {
    let fx = Fixture::new();
    let (backend, seen) = counting_backend().await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80={backend}")]);
    let authority = format!("{WEB_SVC}:80");
    let base = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(String, String)> = vec![
            (":method".into(), "GET".into()),
            (":scheme".into(), "https".into()),
            (":path".into(), "/".into()),
            (":authority".into(), authority.clone()),
        ];
        v.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        v
    };
    let send = |fields: Vec<(String, String)>| {
        let fx = &fx;
        let gw = &gw;
        async move {
            let refs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            h2_raw(fx, gw, &refs).await
        }
    };
    // The baseline is served.
    assert_eq!(send(base(&[])).await, H2Reply::Status(200));
    let count = seen.load(Ordering::SeqCst);
    let refused = |r: &H2Reply| {
        matches!(
            r,
            H2Reply::Status(400) | H2Reply::Reset(1) | H2Reply::GoAway(1)
        )
    };
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "Host differs from :authority (RFC 9113 §8.3.1)",
            base(&[("host", "other.example")]),
        ),
        ("upper-case field name (§8.2.1)", base(&[("X-Upper", "1")])),
        (
            "connection-specific field (§8.2.2)",
            base(&[("connection", "close")]),
        ),
        (
            "transfer-encoding (§8.2.2)",
            base(&[("transfer-encoding", "chunked")]),
        ),
        ("TE other than trailers (§8.2.2)", base(&[("te", "gzip")])),
        ("leading space in a value (§8.2.1)", base(&[("x-a", " v")])),
        ("trailing tab in a value (§8.2.1)", base(&[("x-a", "v\t")])),
        (
            "pseudo-header after a regular field (§8.3)",
            base(&[("x-a", "v"), (":foo", "bar")]),
        ),
        (
            "no :path (§8.3.1)",
            vec![
                (":method".into(), "GET".into()),
                (":scheme".into(), "https".into()),
                (":authority".into(), authority.clone()),
            ],
        ),
    ];
    let mut failed = Vec::new();
    for (what, fields) in cases {
        let reply = send(fields).await;
        if !refused(&reply) {
            failed.push(format!("{what}: {reply:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // CONNECT (no extended CONNECT here): not a tunnel.
    let reply = send(vec![
        (":method".into(), "CONNECT".into()),
        (":authority".into(), authority.clone()),
    ])
    .await;
    assert!(
        refused(&reply) || reply == H2Reply::OtherStatus,
        "CONNECT: {reply:?}"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        count,
        "a malformed HTTP/2 request reached the backend"
    );
    // The same Host as :authority is fine; the gateway still serves.
    assert_eq!(
        send(base(&[("host", "web-svc.emojivoto.svc.cluster.local:80")])).await,
        H2Reply::Status(200)
    );
}
