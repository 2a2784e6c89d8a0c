//! The gateway as real Linkerd peers meet it: source proxies (SNI = gateway identity, ALPN
//! `transport.l5d.io/v1` only, a transport header, then HTTP/2 with orig-proto, HTTP/1, or
//! opaque TCP) and the service mirror's probe (mTLS, no ALPN, HTTP/2 prior knowledge).

use std::time::Duration;

use bytes::Bytes;
use e2e::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport_header::{Header, SessionProtocol, PREFACE};

const GRPC: &str = "grpc.emojivoto.svc.cluster.local";
const ECHO: &str = "echo.emojivoto.svc.cluster.local";

fn header(name: &str, port: u16, protocol: Option<SessionProtocol>) -> Header {
    Header {
        port,
        name: Some(name.to_string()),
        protocol,
    }
}

async fn gateway(fx: &Fixture) -> Gateway {
    let backend = backend().await;
    let echo = echo_after_eof().await;
    Gateway::start(
        fx,
        &[
            "--route",
            &format!("{WEB_SVC}:80={backend}"),
            "--route",
            &format!("{GRPC}:8080=h2://{backend}"),
            "--route",
            &format!("{ECHO}:7={echo}"),
            "--transport-header-timeout",
            "500ms",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_orig_proto_reaches_an_http1_backend_and_is_marked() {
    let fx = Fixture::new();
    let gw = gateway(&fx).await;
    let mut send = linkerd_h2(
        &fx,
        gw.listen,
        &header(WEB_SVC, 80, Some(SessionProtocol::Http2)),
    )
    .await
    .unwrap();
    for orig in ["HTTP/1.1", "HTTP/1.1; absolute-form", "HTTP/1.0"] {
        // As a source proxy sends it: Host removed, :authority from the override.
        let req = Request::get(format!("http://{WEB_SVC}:80/api/list"))
            .header("l5d-orig-proto", orig)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{orig}");
        // The marker names the version the backend answered in, for the caller to restore.
        let version = if orig.starts_with("HTTP/1.0") {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        assert_eq!(resp.headers()["l5d-orig-proto"], version, "{orig}");
        let body = body_text(resp).await;
        assert!(
            body.contains(&format!("version={version}")),
            "{orig}: {body}"
        );
        assert!(body.contains(&format!("host={WEB_SVC}\n")), "{body}");
        assert!(
            body.contains(&format!("l5d-client-id={VOTE_BOT_ID}")),
            "{body}"
        );
        assert!(body.contains(&format!("by={GATEWAY_ID}")), "{body}");
    }
    // The transport header is counted by session protocol.
    let m = gw.metrics();
    assert!(
        m.lines().any(
            |l| l.starts_with("inbound_tcp_transport_header_connections_total{")
                && l.contains("session_protocol=\"http/2\"")
                && l.contains(&format!("target_name=\"{WEB_SVC}\""))
                && l.contains("target_port=\"80\"")
                && l.contains(&format!("client_id=\"{VOTE_BOT_ID}\""))
        ),
        "{m}"
    );
    assert!(
        m.lines().any(|l| l.starts_with("request_total{")
            && l.contains(&format!("target_addr=\"{}\"", gw.listen))),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_http2_and_grpc_pass_through() {
    let fx = Fixture::new();
    let gw = gateway(&fx).await;
    // gRPC to an HTTP/2 upstream keeps its trailers.
    let mut send = linkerd_h2(
        &fx,
        gw.listen,
        &header(GRPC, 8080, Some(SessionProtocol::Http2)),
    )
    .await
    .unwrap();
    let req = Request::post(format!("http://{GRPC}:8080/grpc"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x01x")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("l5d-orig-proto"));
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    // Native HTTP/2 to an HTTP/1 upstream is translated, and not marked.
    let resp = echo_over_header(&fx, &gw).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("l5d-orig-proto"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_is_spliced_with_half_close() {
    let fx = Fixture::new();
    let gw = gateway(&fx).await;
    let mut io = linkerd_connect(&fx, gw.listen, &header(ECHO, 7, None))
        .await
        .unwrap();
    io.write_all(b"hello over opaque TCP").await.unwrap();
    // Half-close: the echo server answers only once it sees EOF.
    io.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut got))
        .await
        .unwrap()
        .ok();
    assert_eq!(got, b"echo:hello over opaque TCP");
    let m = gw.metrics();
    assert!(m.contains("session_protocol=\"\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_session_with_websocket_upgrade_and_no_host() {
    let fx = Fixture::new();
    let gw = gateway(&fx).await;
    // A plain request first: a real source proxy sends no Host; the header names the target.
    let mut io = linkerd_connect(
        &fx,
        gw.listen,
        &header(WEB_SVC, 80, Some(SessionProtocol::Http1)),
    )
    .await
    .unwrap();
    io.write_all(b"GET /echo HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let text = read_head_and_some(&mut io).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(&format!("host={WEB_SVC}\n")), "{text}");
    // Then an upgrade on a fresh connection.
    let mut io = linkerd_connect(
        &fx,
        gw.listen,
        &header(WEB_SVC, 80, Some(SessionProtocol::Http1)),
    )
    .await
    .unwrap();
    io.write_all(b"GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head_and_some(&mut io).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
}

/// GET /echo on web-svc over a fresh transport-header connection (http2 session).
async fn echo_over_header(fx: &Fixture, gw: &Gateway) -> http::Response<hyper::body::Incoming> {
    let mut send = linkerd_h2(
        fx,
        gw.listen,
        &header(WEB_SVC, 80, Some(SessionProtocol::Http2)),
    )
    .await
    .unwrap();
    send.send_request(
        Request::get(format!("http://{WEB_SVC}:80/echo"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap()
}

async fn read_head_and_some(io: &mut ClientTls) -> String {
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n")
        || (got.starts_with(b"HTTP/1.1 200")
            && !String::from_utf8_lossy(&got).contains("x-secret="))
    {
        let n = tokio::time::timeout_at(deadline, io.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends raw bytes after the handshake and reports whether the gateway closed the connection
/// without answering.
async fn closed_without_answer(fx: &Fixture, gw: &Gateway, bytes: &[u8], half_close: bool) -> bool {
    let mut io = connect(
        gw.listen,
        client_tls(fx, "vote-bot", &[transport_header::ALPN]),
    )
    .await
    .unwrap();
    io.write_all(bytes).await.unwrap();
    if half_close {
        let _ = io.shutdown().await;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_are_refused_and_the_gateway_keeps_serving() {
    let fx = Fixture::new();
    let gw = gateway(&fx).await;
    let with_msg = |msg: &[u8]| {
        let mut v = PREFACE.to_vec();
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    };
    let good = header(WEB_SVC, 80, Some(SessionProtocol::Http2)).encode();
    let mut oversized = PREFACE.to_vec();
    oversized.extend_from_slice(&(1u32 << 20).to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "bad preface",
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n\0\0\0\0".to_vec(),
            false,
            "bad preface",
        ),
        (
            "truncated",
            good[..good.len() - 3].to_vec(),
            true,
            "truncated header",
        ),
        ("oversized", oversized, false, "header too large"),
        (
            "bad protobuf",
            with_msg(&[0x08, 0x50, 0x12, 0x7f, b'a']),
            false,
            "invalid protobuf",
        ),
        (
            "port 0",
            with_msg(&[0x12, 0x03, b'a', b'.', b'b']),
            false,
            "invalid port",
        ),
        (
            "foreign name",
            header("example.com", 80, Some(SessionProtocol::Http2)).encode(),
            false,
            "bad gateway domain",
        ),
        (
            "unrouted",
            header("nosuch.emojivoto.svc.example.org", 80, None).encode(),
            false,
            "bad gateway domain",
        ),
        (
            "no name",
            Header {
                port: 80,
                name: None,
                protocol: None,
            }
            .encode(),
            false,
            "transport header name required",
        ),
        ("silence", Vec::new(), false, "transport header timeout"),
    ];
    for (what, bytes, half_close, _) in &cases {
        assert!(
            closed_without_answer(&fx, &gw, bytes, *half_close).await,
            "{what}: connection not closed"
        );
    }
    let m = gw.metrics();
    for (what, _, _, label) in &cases {
        assert!(
            m.contains(&format!("inbound_tcp_errors_total{{error=\"{label}\"}}")),
            "{what}: no {label} metric\n{m}"
        );
    }
    let log = gw.log_text();
    assert!(
        log.contains("transport header refused") && log.contains(VOTE_BOT_ID),
        "{log}"
    );
    // Nothing reached the backend, and good connections are still served.
    assert!(!m.contains("request_total{"), "{m}");
    let resp = echo_over_header(&fx, &gw).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_for_someone_else_is_refused() {
    let fx = Fixture::new();
    let gw = gateway(&fx).await;
    let other = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
    let r = connect_sni(
        gw.listen,
        client_tls(&fx, "vote-bot", &[transport_header::ALPN]),
        other,
    )
    .await;
    assert!(r.is_err(), "a connection for {other} was terminated");
    let m = gw.metrics();
    assert!(
        m.contains("gateway_tls_handshake_failures_total{reason=\"sni_mismatch\"}"),
        "{m}"
    );
    assert!(gw
        .log_text()
        .contains("direct connections must be mutually authenticated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_mirror_probe_gets_200_over_mtls_http2_and_plaintext() {
    let fx = Fixture::new();
    let gw = gateway(&fx).await;
    // The probe as it arrives from the source cluster's service mirror proxy, at the probe
    // port the LoadBalancer publishes.
    fx.caller("mirror", "linkerd-service-mirror-east.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local");
    let io = connect(gw.probe, client_tls(&fx, "mirror", &[]))
        .await
        .unwrap();
    assert_eq!(io.get_ref().1.alpn_protocol(), None);
    let mut send = h2_over(io).await.unwrap();
    let get = |path: &str| {
        Request::get(format!(
            "http://probe-gateway-east.linkerd-multicluster.svc.cluster.local:4191{path}"
        ))
        .header("l5d-orig-proto", "HTTP/1.1")
        .body(Full::new(Bytes::new()))
        .unwrap()
    };
    let resp = send.send_request(get("/ready")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["l5d-orig-proto"], "HTTP/1.1");
    assert_eq!(body_text(resp).await, "ready\n");
    // Nothing else is readable there, over mTLS or in plaintext: what the admin port tells
    // (identities, services, volumes) stays inside the cluster.
    for path in ["/metrics", "/live", "/", "/ready/../metrics", "/dashboard"] {
        let resp = send.send_request(get(path)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path} over mTLS");
        assert_eq!(body_text(resp).await, "", "{path}");
        let (status, body) = http_get(gw.probe, path).unwrap();
        assert_eq!((status, body.as_str()), (404, ""), "{path} in plaintext");
    }
    // kubelet's plaintext probe, on the probe port and on the admin port.
    assert_eq!(
        http_get(gw.probe, "/ready").unwrap(),
        (200, "ready\n".to_string())
    );
    assert_eq!(
        http_get(gw.admin, "/ready").unwrap(),
        (200, "ready\n".to_string())
    );
    assert!(http_get(gw.admin, "/metrics").unwrap().1.contains("# TYPE"));
    // An mTLS client for another SNI is refused on both.
    for port in [gw.probe, gw.admin] {
        assert!(
            connect_sni(port, client_tls(&fx, "mirror", &[]), VOTE_BOT_ID)
                .await
                .is_err()
        );
    }
}

/// A TCP server that keeps each connection open until the peer closes its side, and reports
/// on `saw_eof` when that happens: a stand-in for a long-lived opaque stream's upstream.
async fn holding_server() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut sink = Vec::new();
                if tcp.read_to_end(&mut sink).await.is_ok() {
                    let _ = tx.send(());
                }
            });
        }
    });
    (addr, rx)
}

/// Reads until EOF (or an error after close_notify), within five seconds.
async fn sees_eof(io: &mut ClientTls) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(0)) => return true,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return e.kind() == std::io::ErrorKind::UnexpectedEof,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_opaque_and_upgraded_streams_at_the_deadline_and_exits_0() {
    let fx = Fixture::new();
    let backend = backend().await;
    let (hold, mut upstream_eof) = holding_server().await;
    const HOLD: &str = "hold.emojivoto.svc.cluster.local";
    let mut gw = Gateway::start(
        &fx,
        &[
            "--route",
            &format!("{WEB_SVC}:80={backend}"),
            "--route",
            &format!("{HOLD}:7={hold}"),
            "--drain-timeout",
            "1s",
        ],
    );
    // An opaque stream that stays open and idle.
    let mut opaque = linkerd_connect(&fx, gw.listen, &header(HOLD, 7, None))
        .await
        .unwrap();
    opaque.write_all(b"hello").await.unwrap();
    // A websocket tunnel, open and idle after one exchange.
    let mut ws = linkerd_connect(
        &fx,
        gw.listen,
        &header(WEB_SVC, 80, Some(SessionProtocol::Http1)),
    )
    .await
    .unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head_and_some(&mut ws).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    ws.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();

    let started = std::time::Instant::now();
    gw.signal("TERM");
    // Both streams are closed cleanly after the 1 s deadline, each side getting its FIN.
    assert!(sees_eof(&mut opaque).await, "opaque stream not closed");
    assert!(sees_eof(&mut ws).await, "websocket tunnel not closed");
    tokio::time::timeout(Duration::from_secs(5), upstream_eof.recv())
        .await
        .expect("the opaque upstream saw no FIN")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed before the deadline: {waited:?}"
    );
    let (code, log) = tokio::task::spawn_blocking(move || {
        let code = gw.wait(Duration::from_secs(10));
        (code, gw.log_text())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("opaque stream closed at the drain deadline"),
        "{log}"
    );
    assert!(
        log.contains("upgraded stream closed at the drain deadline"),
        "{log}"
    );
    assert!(
        log.contains("drained: closed the connections still open"),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}
