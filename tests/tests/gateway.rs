//! The gateway as a user meets it: a real process, real mTLS, curl and a Rust client, a local
//! backend standing in for web-svc. Loopback only; every loop is bounded.

use std::{process::Command, time::Duration};

use bytes::Bytes;
use e2e::*;
use http::{Request, StatusCode};
use http_body_util::Full;

fn web_route(backend: std::net::SocketAddr) -> String {
    format!("{WEB_SVC}:80={backend}")
}

/// curl through the gateway as `stem`; returns (exit ok, http code, body).
async fn curl(
    fx: &Fixture,
    gw: &Gateway,
    stem: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(fx.path("root.crt"))
        .args([
            "--resolve",
            &format!("{GATEWAY_ID}:{}:127.0.0.1", gw.listen.port()),
        ]);
    if let Some(stem) = stem {
        cmd.arg("--cert").arg(fx.path(&format!("{stem}.crt")));
        cmd.arg("--key").arg(fx.path(&format!("{stem}.key")));
    }
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (out.status.success(), code.to_string(), body.to_string())
}

fn url(gw: &Gateway, path: &str) -> String {
    format!("https://{GATEWAY_ID}:{}{path}", gw.listen.port())
}

fn host() -> String {
    format!("Host: {WEB_SVC}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http1_and_http2_through_the_gateway() {
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(&fx, &["--route", &web_route(backend), "--access-log"]);

    for proto in ["--http1.1", "--http2"] {
        let (ok, code, body) = curl(
            &fx,
            &gw,
            Some("vote-bot"),
            &[
                proto,
                "-H",
                &host(),
                "-H",
                "Connection: x-secret",
                "-H",
                "x-secret: 1",
                "-H",
                "l5d-client-id: forged",
                "-H",
                "l5d-dst-canonical: forged",
                "-H",
                "Forwarded: for=192.0.2.7",
                &url(&gw, "/echo"),
            ],
        )
        .await;
        assert!(
            ok && code == "200",
            "{proto}: {code} {body}\n{}",
            gw.log_text()
        );
        // The backend gets HTTP/1.1 with the caller's verified identity, never the forged one.
        assert!(body.contains("version=HTTP/1.1"), "{body}");
        // As Linkerd's gateway writes them: Host and Forwarded host without the default
        // port, and the service's canonical name.
        assert!(body.contains(&format!("host={WEB_SVC}\n")), "{body}");
        assert!(
            body.contains(&format!("l5d-client-id={VOTE_BOT_ID}\n")),
            "{body}"
        );
        // The caller's `Forwarded` first, then the gateway's; the forged fields replaced.
        assert!(
            body.contains(&format!(
                "forwarded=for=192.0.2.7 | by={GATEWAY_ID};for={VOTE_BOT_ID};host={WEB_SVC};proto=https\n"
            )),
            "{body}"
        );
        assert!(
            body.contains(&format!("l5d-dst-canonical={WEB_SVC}:80\n")),
            "{body}"
        );
        // Hop-by-hop headers, and the ones Connection names, stop at the gateway. (HTTP/2 has
        // no Connection header: curl drops it, so x-secret is end-to-end there.)
        assert!(body.contains("connection=\n"), "{body}");
        if proto == "--http1.1" {
            assert!(body.contains("x-secret=\n"), "{body}");
        }
    }

    // A 10 MB upload, streamed both ways.
    let upload = fx.path("upload.bin");
    std::fs::write(&upload, vec![7u8; 10 * 1024 * 1024]).unwrap();
    for proto in ["--http1.1", "--http2"] {
        let data = format!("@{}", upload.display());
        let (ok, code, body) = curl(
            &fx,
            &gw,
            Some("vote-bot"),
            &[
                proto,
                "-H",
                &host(),
                "--data-binary",
                &data,
                &url(&gw, "/upload"),
            ],
        )
        .await;
        assert!(ok && code == "200", "{proto}: {code} {body}");
        assert_eq!(
            body.trim(),
            format!("received {}", 10 * 1024 * 1024),
            "{proto}"
        );
    }
    // And a 10 MB download.
    let (ok, code, _) = curl(
        &fx,
        &gw,
        Some("vote-bot"),
        &[
            "--http2",
            "-H",
            &host(),
            "-o",
            "/dev/null",
            &url(&gw, &format!("/download?bytes={}", 10 * 1024 * 1024)),
        ],
    )
    .await;
    assert!(ok && code == "200");

    // The access log has the request with the caller, like `viz tap`.
    let log = gw.log_text();
    assert!(
        log.lines().any(|l| l.contains("access")
            && l.contains(VOTE_BOT_ID)
            && l.contains("tls=true")
            && l.contains("/upload")
            && l.contains("status=200")),
        "{log}"
    );
    // /metrics counts those requests with the caller identity.
    let m = gw.metrics();
    let line = m
        .lines()
        .find(|l| {
            l.starts_with("request_total{")
                && l.contains(&format!("authority=\"{WEB_SVC}:80\""))
                && l.contains(&format!("client_id=\"{VOTE_BOT_ID}\""))
        })
        .unwrap_or_else(|| panic!("no request_total line:\n{m}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n, 5.0, "{line}");
    assert!(m.contains("response_latency_ms_bucket{"), "{m}");
    assert!(
        m.contains("identity_cert_expiration_timestamp_seconds{"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_over_both_protocols() {
    concurrent_requests(&Fixture::new(), &[]).await;
}

/// The runtime on one thread (`--cores 1`, what a pod limited to one CPU gets): the same
/// load, and a drain on SIGTERM, with every connection, timer and signal on that thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_on_one_thread() {
    let fx = Fixture::new();
    let gw = concurrent_requests(&fx, &["--cores", "1"]).await;
    assert!(
        gw.log_text().contains("runtime: one thread"),
        "{}",
        gw.log_text()
    );
    gw.signal("TERM");
    let code = exit_and_log(gw).await;
    assert_eq!(code.0, Some(0), "{}", code.1);
}

/// The gateway's exit code once it has stopped (within 10 s), and its log.
async fn exit_and_log(mut gw: Gateway) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let code = gw.wait(Duration::from_secs(10));
        (code, gw.log_text())
    })
    .await
    .unwrap()
}

async fn concurrent_requests(fx: &Fixture, extra: &[&str]) -> Gateway {
    let backend = backend().await;
    let route = web_route(backend);
    let mut args = vec!["--route", &route];
    args.extend_from_slice(extra);
    let gw = Gateway::start(fx, &args);

    // HTTP/2: 200 concurrent streams on one connection.
    let h2 = h2_sender(gw.listen, client_tls(fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut send = h2.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://{WEB_SVC}/echo?i={i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            (resp.status(), body_text(resp).await)
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(VOTE_BOT_ID));
    }

    // HTTP/1.1: 8 keep-alive connections × 25 sequential requests, concurrently.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let tls = client_tls(fx, "vote-bot", &[b"http/1.1"]);
        let addr = gw.listen;
        tasks.push(tokio::spawn(async move {
            let mut send = h1_sender(addr, tls).await.unwrap();
            for _ in 0..25 {
                send.ready().await.unwrap();
                let req = Request::get("/echo")
                    .header("host", WEB_SVC)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                body_text(resp).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = gw.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("request_total{") && l.ends_with(" 400")),
        "{m}"
    );
    // No access lines unless asked for (--access-log).
    let log = gw.log_text();
    assert!(!log.lines().any(|l| l.contains(" access:")), "{log}");
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals() {
    let fx = Fixture::new();
    let backend = backend().await;
    let dead = free_port();
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &web_route(backend),
            "--route",
            &format!("down.emojivoto.svc.cluster.local:80=127.0.0.1:{dead}"),
            "--response-timeout",
            "500ms",
        ],
    );

    // No client certificate, one under another anchor, an expired one: the handshake fails.
    for stem in [None, Some("foreign"), Some("expired")] {
        let (ok, code, _) = curl(&fx, &gw, stem, &["-H", &host(), &url(&gw, "/echo")]).await;
        assert!(!ok && code == "000", "{stem:?} got through: {code}");
    }
    // Plaintext on the mTLS port.
    let (status, body) = http_get(gw.listen, "/").unwrap_or((0, String::new()));
    assert_eq!(status, 400);
    assert!(body.contains("requires mutual TLS"), "{body}");

    // Unknown authority, upstream down, upstream too slow.
    let cases = [
        ("Host: example.com", "/echo", "404", "bad gateway domain"),
        (
            "Host: nosuch.emojivoto.svc.example.org",
            "/echo",
            "404",
            "bad gateway domain",
        ),
        (
            "Host: down.emojivoto.svc.cluster.local",
            "/echo",
            "502",
            "upstream connect failed",
        ),
        (
            "Host: web-svc.emojivoto.svc.cluster.local",
            "/slow?ms=3000",
            "504",
            "upstream response timeout",
        ),
    ];
    for (h, path, want, reason) in cases {
        let (ok, code, body) = curl(
            &fx,
            &gw,
            Some("vote-bot"),
            &["-i", "-H", h, &url(&gw, path)],
        )
        .await;
        assert!(ok && code == want, "{h} {path}: {code} {body}");
        assert!(
            body.contains(&format!("l5d-proxy-error: {reason}")),
            "{body}"
        );
    }

    // A loop: the caller is the gateway itself, or the request already passed through it.
    fx.caller("self", GATEWAY_ID);
    let (_, code, body) = curl(&fx, &gw, Some("self"), &["-H", &host(), &url(&gw, "/echo")]).await;
    assert_eq!(code, "508", "{body}");
    let fwd = format!("Forwarded: by={GATEWAY_ID};for=x");
    let (_, code, body) = curl(
        &fx,
        &gw,
        Some("vote-bot"),
        &["-H", &host(), "-H", &fwd, &url(&gw, "/echo")],
    )
    .await;
    assert_eq!(code, "508", "{body}");

    // Each refusal was counted and logged with the peer.
    let m = gw.metrics();
    for reason in ["no_client_cert", "unknown_issuer", "expired", "plaintext"] {
        assert!(
            m.contains(&format!(
                "gateway_tls_handshake_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason}:\n{m}"
        );
    }
    for e in [
        "bad gateway domain",
        "upstream connect failed",
        "upstream response timeout",
        "gateway loop",
    ] {
        assert!(
            m.contains(&format!("inbound_http_errors_total{{error=\"{e}\"}}")),
            "{e}:\n{m}"
        );
    }
    let log = gw.log_text();
    assert!(
        log.contains("TLS handshake failed") && log.contains("peer=127.0.0.1:"),
        "{log}"
    );
    // Still serving after all that.
    let (ok, code, _) = curl(
        &fx,
        &gw,
        Some("vote-bot"),
        &["-H", &host(), &url(&gw, "/echo")],
    )
    .await;
    assert!(ok && code == "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_and_export_allow_lists() {
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &web_route(backend),
            "--route",
            &format!("emoji-svc.emojivoto.svc.cluster.local:80={backend}"),
            "--allow-client",
            "*.emojivoto.serviceaccount.identity.linkerd.cluster.local",
            "--export",
            WEB_SVC,
        ],
    );
    let (_, code, _) = curl(
        &fx,
        &gw,
        Some("vote-bot"),
        &["-H", &host(), &url(&gw, "/echo")],
    )
    .await;
    assert_eq!(code, "200");
    let (_, code, body) = curl(
        &fx,
        &gw,
        Some("vote-bot"),
        &[
            "-H",
            "Host: emoji-svc.emojivoto.svc.cluster.local",
            &url(&gw, "/echo"),
        ],
    )
    .await;
    assert_eq!(code, "403", "{body}");
    assert_eq!(body.trim(), "service not exported");
    fx.caller(
        "intruder",
        "intruder.other-ns.serviceaccount.identity.linkerd.cluster.local",
    );
    let (_, code, body) = curl(
        &fx,
        &gw,
        Some("intruder"),
        &["-H", &host(), &url(&gw, "/echo")],
    )
    .await;
    assert_eq!(code, "403", "{body}");
    assert_eq!(body.trim(), "caller not allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(&fx, &["--route", &web_route(backend)]);
    let mut io = connect(gw.listen, client_tls(&fx, "vote-bot", &[b"http/1.1"]))
        .await
        .unwrap();
    io.write_all(format!("GET /ws HTTP/1.1\r\nhost: {WEB_SVC}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
        assert!(head.len() < 4096);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"through the gateway"] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(
        &fx,
        &["--route", &web_route(backend), "--drain-timeout", "10s"],
    );
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let slow = tokio::spawn(async move {
        let req = Request::get(format!("http://{WEB_SVC}/slow?ms=1500"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        (resp.status(), body_text(resp).await)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    // Readiness drops at once, and the listener stops accepting.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let refused = std::net::TcpStream::connect(gw.listen).is_err();
        let ready = http_get(gw.admin, "/ready").map(|(s, _)| s).unwrap_or(0);
        if refused && ready != 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting (ready={ready})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "slow done\n");
    let code = exit_and_log(gw).await;
    assert_eq!(code.0, Some(0), "{}", code.1);
    assert!(code.1.contains("drained"), "{}", code.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_and_server_sent_events_stream_through() {
    use http_body_util::BodyExt;
    let fx = Fixture::new();
    let backend = backend().await;
    let grpc = "grpc.emojivoto.svc.cluster.local:8080";
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &web_route(backend),
            "--route",
            &format!("{grpc}=h2://{backend}"),
        ],
    );
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();

    // gRPC over an HTTP/2 upstream: TE: trailers kept, response trailers delivered.
    let req = Request::post(format!("http://{grpc}/grpc"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "got 10 bytes");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");

    // Server-sent events arrive one by one, not when the stream ends.
    let req = Request::get(format!("http://{WEB_SVC}/events"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = std::time::Instant::now();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: event 0\n\n");
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "first event held back {:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    while let Some(f) = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
    {
        if let Ok(d) = f.unwrap().into_data() {
            rest.extend_from_slice(&d);
        }
    }
    assert_eq!(rest, b"data: event 1\n\ndata: event 2\n\n");
}

/// An HTTP/2 upstream (`h2://` route, as for meshed endpoints with the `h2` hint): a request
/// body that keeps streaming after the response has begun, uploads and downloads larger than
/// every flow-control window, and a caller that gives up mid-body, after which the shared
/// upstream connection still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_streams_bodies_both_ways_under_flow_control() {
    use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
    type Body = BoxBody<Bytes, std::io::Error>;
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80=h2://{backend}")]);
    let io = connect(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let full = |b: Bytes| Full::new(b).map_err(|never| match never {}).boxed();

    // Bidirectional: each message comes back before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    let req = Request::post(format!("http://{WEB_SVC}/body-echo"))
        .body(StreamBody::new(ReceiverStream(rx)).boxed())
        .unwrap();
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"message 0"))))
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("response headers while the request body is open")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    for i in 0..3 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the echo of the last message")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("message {i}"));
        if i < 2 {
            let next = Bytes::from(format!("message {}", i + 1));
            tx.send(Ok(http_body::Frame::data(next))).await.unwrap();
        }
    }
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .unwrap();
    assert!(rest.to_bytes().is_empty());

    // 6 MiB up (the gateway's window toward the caller is 1 MiB per stream, the backend's
    // toward the gateway hyper's default) and 9 MiB down (over the 4 MiB connection window
    // the gateway opens to its endpoint, so it must hand capacity back as the caller reads).
    let up = Bytes::from(vec![b'u'; 6 << 20]);
    let req = Request::post(format!("http://{WEB_SVC}/upload"))
        .body(full(up))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(body_text(resp).await, format!("received {}\n", 6 << 20));
    let req = Request::get(format!("http://{WEB_SVC}/download?bytes={}", 9 << 20))
        .body(full(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.to_bytes().len(), 9 << 20);

    // A download dropped after its first frame: the upstream stream is reset, and the
    // connection, shared by what follows, carries on.
    for _ in 0..3 {
        let req = Request::get(format!("http://{WEB_SVC}/download?bytes={}", 32 << 20))
            .body(full(Bytes::new()))
            .unwrap();
        let mut body = send.send_request(req).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
    }
    let req = Request::post(format!("http://{WEB_SVC}/upload"))
        .body(full(Bytes::from_static(b"after")))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body_text(resp).await, "received 5\n");
}

/// An HTTP/2 endpoint that takes a request and then goes silent (a host gone without a reset):
/// its unanswered keep-alive PING ends the connection after about 13 s (10 s to the PING, 3 s
/// for the answer), so the request fails then, with a 502, instead of waiting out the 30 s
/// response timeout, and the next request dials afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_http2_endpoint_is_dropped_by_its_unanswered_ping() {
    let fx = Fixture::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut conn) = h2::server::handshake(tcp).await else {
                continue;
            };
            // Takes the request, then never polls the connection again: no answer, no PONG.
            if let Some(Ok(stream)) = conn.accept().await {
                let _ = accepted_tx.send(()).await;
                held.push((conn, stream));
            }
        }
    });
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80=h2://{silent}")]);
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let req = Request::get(format!("http://{WEB_SVC}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(40), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "{}", gw.log_text());
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(25),
        "failed after {waited:?}"
    );
    assert!(accepted.recv().await.is_some());
    // The connection was given up: the next request opens another one.
    let req = Request::get(format!("http://{WEB_SVC}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let pending = tokio::spawn(async move { send.send_request(req).await });
    tokio::time::timeout(Duration::from_secs(10), accepted.recv())
        .await
        .expect("a second connection to the endpoint")
        .unwrap();
    pending.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_deadline_and_connection_cap() {
    use tokio::io::AsyncReadExt;
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &web_route(backend),
            "--handshake-timeout",
            "300ms",
            "--max-connections",
            "2",
        ],
    );

    // A caller that starts a handshake and stalls is cut off at the deadline.
    let mut stalled = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0x16, 0x03, 0x01])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "stalled handshake not closed");
    drop(stalled);
    // Its slot is given back when its task ends, just after the close we saw.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Two connections are served; a third is closed as soon as it has authenticated
    // (the main budget counts authenticated callers) while they are open.
    let get = || {
        Request::get(format!("http://{WEB_SVC}/echo"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut a = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let mut b = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    for s in [&mut a, &mut b] {
        assert_eq!(
            s.send_request(get()).await.unwrap().status(),
            StatusCode::OK
        );
    }
    let third_served = match h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"])).await {
        Err(_) => false,
        Ok(mut s) => s.send_request(get()).await.is_ok(),
    };
    assert!(!third_served, "third connection was served");
    for s in [&mut a, &mut b] {
        assert_eq!(
            s.send_request(get()).await.unwrap().status(),
            StatusCode::OK
        );
    }
    let m = gw.metrics();
    assert!(
        m.contains("gateway_tls_handshake_failures_total{reason=\"timeout\"}"),
        "{m}"
    );
    assert!(
        m.contains("gateway_connections_refused_total{reason=\"limit\",listener=\"gateway\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_is_served_without_restart_and_a_bad_one_is_refused() {
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &web_route(backend),
            "--cert-reload-interval",
            "200ms",
        ],
    );
    let serial = |fx: &Fixture| {
        let tls = client_tls(fx, "vote-bot", &[b"h2"]);
        let addr = gw.listen;
        async move {
            let io = connect(addr, tls).await.unwrap();
            identity::CertInfo::parse(&io.get_ref().1.peer_certificates().unwrap()[0])
                .unwrap()
                .serial
        }
    };
    let first = serial(&fx).await;
    // A renewal under another anchor does not verify: it is logged and not used.
    let other = identity::Pki::with_names("root.other.example", "issuer.other.example").unwrap();
    other
        .leaf(GATEWAY_ID)
        .unwrap()
        .write(fx.dir.path(), "gateway")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(serial(&fx).await, first);
    assert!(
        gw.log_text()
            .contains("certificate changed but cannot be used"),
        "{}",
        gw.log_text()
    );
    // A good renewal is served on the next handshake.
    let renewed = fx.pki.leaf(GATEWAY_ID).unwrap();
    let want = identity::CertInfo::parse(&renewed.cert_der).unwrap().serial;
    renewed.write(fx.dir.path(), "gateway").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if serial(&fx).await == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "renewed certificate not served:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.log_text().contains("reloaded certificate"));
}

/// User plus system CPU time of `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_gateway_waits_instead_of_spinning_and_recovers() {
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(&fx, &["--route", &web_route(backend)]);
    let pid = gw.pid();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Room for a few more descriptors, then none.
    let limit = open_fds + 8;
    let ok = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "prlimit failed");
    // Plain TCP connections that never handshake: the first few take the last descriptors,
    // the rest wait in the kernel's backlog while accept fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(std::net::TcpStream::connect(gw.listen).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(pid) - before;
    // A spinning accept loop would burn most of the second (about 100 ticks).
    assert!(
        spent < 20,
        "{spent} ticks of CPU in one second while out of descriptors"
    );
    // Freeing descriptors lets it accept again at once, and real callers are served.
    drop(held);
    let started = std::time::Instant::now();
    let mut send = loop {
        match h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"])).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "no recovery: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let req = Request::get(format!("http://{WEB_SVC}/echo"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    let log = gw.log_text();
    assert!(log.contains("cannot accept: out of resources"), "{log}");
    assert!(
        gw.metrics()
            .contains("gateway_accept_backoffs_total{listener=\"gateway\"}"),
        "{}",
        gw.metrics()
    );
}
