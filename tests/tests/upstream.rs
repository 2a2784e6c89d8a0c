//! The gateway's HTTP/1.1 upstream connections: re-used across requests, replaced when the
//! server closes them (with or without saying so), closed when a response is abandoned or
//! when they have been idle too long. The backend is a hand-written HTTP/1.1 server that
//! counts the connections it accepts and sees close, so reuse is observed, not assumed.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use e2e::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// What the backend does after each response.
#[derive(Clone, Copy)]
enum After {
    /// Waits for the next request.
    KeepAlive,
    /// Closes 50 ms later without having said so: what a server's keep-alive timeout does.
    SilentClose,
    /// Sends `connection: close` and closes.
    AnnouncedClose,
}

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
    request_lines: std::sync::Mutex<Vec<String>>,
}

/// `GET /` answers `ok`; `GET /big` announces 1 GiB and trickles it (64 KiB every 5 ms, for
/// at most 20 s), so only a caller giving up ends it early.
async fn counting_backend(after: After) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                'conn: loop {
                    // Read one request head (the gateway sends GETs without bodies here).
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    buf.drain(..head_end);
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    if let (Some(line), Ok(mut lines)) =
                        (head.lines().next(), c.request_lines.lock())
                    {
                        lines.push(line.to_string());
                    }
                    let close = matches!(after, After::AnnouncedClose);
                    let conn_hdr = if close { "connection: close\r\n" } else { "" };
                    let ok = if head.starts_with("GET /big ") {
                        let total: usize = 1 << 30;
                        let start =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n{conn_hdr}\r\n");
                        let mut ok = tcp.write_all(start.as_bytes()).await.is_ok();
                        let chunk = vec![b'x'; 64 << 10];
                        let until = Instant::now() + Duration::from_secs(20);
                        while ok && Instant::now() < until {
                            ok = tcp.write_all(&chunk).await.is_ok();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        // Never completes normally: the connection is unusable either way.
                        false
                    } else {
                        let resp =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{conn_hdr}\r\nok");
                        tcp.write_all(resp.as_bytes()).await.is_ok()
                    };
                    if !ok {
                        break;
                    }
                    match after {
                        After::KeepAlive => {}
                        After::SilentClose => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break;
                        }
                        After::AnnouncedClose => break,
                    }
                }
                let _ = tcp.shutdown().await;
                c.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

fn route(backend: SocketAddr) -> String {
    format!("{WEB_SVC}:80={backend}")
}

async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> (StatusCode, String) {
    send.ready().await.expect("caller connection ready");
    let req = Request::get(path)
        .header("host", WEB_SVC)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status();
    (status, body_text(resp).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_share_one_upstream_connection() {
    let fx = Fixture::new();
    let (backend, counts) = counting_backend(After::KeepAlive).await;
    let gw = Gateway::start(&fx, &["--route", &route(backend)]);
    let tls = client_tls(&fx, "vote-bot", &[b"http/1.1"]);

    let mut send = h1_sender(gw.listen, tls.clone()).await.expect("connect");
    for i in 0..50 {
        assert_eq!(
            get(&mut send, "/").await,
            (StatusCode::OK, "ok".into()),
            "#{i}"
        );
    }
    // Absolute-form from the caller still reaches the server in origin-form.
    send.ready().await.expect("ready");
    let req = Request::get(format!("http://{WEB_SVC}/abs?q=1"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(
        send.send_request(req).await.expect("response").status(),
        StatusCode::OK
    );
    let lines = counts.request_lines.lock().expect("lines").clone();
    assert_eq!(lines[0], "GET / HTTP/1.1");
    assert_eq!(lines[50], "GET /abs?q=1 HTTP/1.1");
    assert_eq!(counts.requests.load(Ordering::SeqCst), 51);
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        1,
        "sequential requests should ride one upstream connection"
    );

    // Another caller connection, later, picks up the same idle upstream connection.
    let mut other = h1_sender(gw.listen, tls).await.expect("connect");
    assert_eq!(get(&mut other, "/").await.0, StatusCode::OK);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_closes_are_replaced_without_errors() {
    let fx = Fixture::new();
    for after in [After::SilentClose, After::AnnouncedClose] {
        let (backend, counts) = counting_backend(after).await;
        let gw = Gateway::start(&fx, &["--route", &route(backend)]);
        let mut send = h1_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"http/1.1"]))
            .await
            .expect("connect");
        for i in 0..10 {
            assert_eq!(
                get(&mut send, "/").await,
                (StatusCode::OK, "ok".into()),
                "#{i}"
            );
            // Long enough for a silent close to have happened before the next request.
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
        assert_eq!(counts.requests.load(Ordering::SeqCst), 10);
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 10);
        assert!(
            !gw.log_text().contains("upstream request failed"),
            "{}",
            gw.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_response_closes_its_upstream_connection() {
    let fx = Fixture::new();
    let (backend, counts) = counting_backend(After::KeepAlive).await;
    let gw = Gateway::start(&fx, &["--route", &route(backend)]);
    let tls = client_tls(&fx, "vote-bot", &[b"http/1.1"]);

    let mut send = h1_sender(gw.listen, tls.clone()).await.expect("connect");
    send.ready().await.expect("ready");
    let req = Request::get("/big")
        .header("host", WEB_SVC)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("response head");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    // The caller goes away mid-body: the gateway must not pool a connection that is still
    // delivering the rest of that body.
    drop(body);
    drop(send);
    wait_for(
        "the upstream connection to close",
        Duration::from_secs(10),
        || counts.closed.load(Ordering::SeqCst) == 1,
    )
    .await;

    let mut send = h1_sender(gw.listen, tls).await.expect("connect");
    assert_eq!(get(&mut send, "/").await, (StatusCode::OK, "ok".into()));
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let fx = Fixture::new();
    let (backend, counts) = counting_backend(After::KeepAlive).await;
    let config = fx.path("idle.toml");
    std::fs::write(&config, "idle_timeout = \"1s\"\n").expect("config");
    let gw = Gateway::start(
        &fx,
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--route",
            &route(backend),
        ],
    );
    let mut send = h1_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"http/1.1"]))
        .await
        .expect("connect");
    assert_eq!(get(&mut send, "/").await.0, StatusCode::OK);
    // The caller's connection stays open; only the pooled upstream connection expires.
    wait_for(
        "the idle upstream connection to close",
        Duration::from_secs(10),
        || counts.closed.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert_eq!(get(&mut send, "/").await.0, StatusCode::OK);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
}
