//! What a stranger on the internet (or a noisy caller) can do to the gateway, and what it must
//! not achieve: connection floods that never finish a handshake, log floods, names by the
//! thousand, slow and idle peers, one caller taking everyone's share. Loopback only; every
//! flood is bounded in count and time.
//!
//! The tests here measure memory, latency and timing, so they take turns ([`serial`]) rather
//! than disturb each other's numbers.

use std::{collections::VecDeque, time::Duration};

use bytes::Bytes;
use e2e::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// Held for a whole test: one test of this file at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// The start of a TLS ClientHello record that never gets its body: a handshake that will
/// never finish.
const PARTIAL_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

/// Opens `count` connections to `addr`, one every `every`, each silent or with a partial
/// ClientHello; keeps the newest `keep` open on this side (the gateway sheds the others or
/// not, which is what is tested).
async fn flood(addr: std::net::SocketAddr, count: usize, every: Duration, keep: usize) -> usize {
    let mut open = VecDeque::new();
    let mut opened = 0;
    for i in 0..count {
        if let Ok(mut tcp) = TcpStream::connect(addr).await {
            if i % 2 == 0 {
                let _ = tcp.write_all(PARTIAL_HELLO).await;
            }
            open.push_back(tcp);
            opened += 1;
        }
        if open.len() > keep {
            open.pop_front();
        }
        tokio::time::sleep(every).await;
    }
    opened
}

async fn echo(send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>) -> StatusCode {
    let req = Request::get(format!("http://{WEB_SVC}/echo"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), send.send_request(req)).await {
        Ok(Ok(resp)) => resp.status(),
        other => panic!("request failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_handshakes_does_not_lock_out_authenticated_callers() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let backend = backend().await;
    // The main budget is small enough that the flood alone would fill it many times over
    // if connections took a main slot before authenticating.
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &format!("{WEB_SVC}:80={backend}"),
            "--max-connections",
            "100",
            "--max-pending-connections",
            "64",
            "--handshake-timeout",
            "60s",
        ],
    );
    let tls = client_tls(&fx, "vote-bot", &[b"h2"]);
    let mut established = h2_sender(gw.listen, tls.clone()).await.unwrap();
    assert_eq!(echo(&mut established).await, StatusCode::OK);

    // 600 connections that never authenticate, 300 of them held open at a time, arriving
    // faster than the 60 s handshake deadline could ever clear them.
    let flooding = tokio::spawn(flood(gw.listen, 600, Duration::from_millis(2), 300));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Meanwhile new callers authenticate and are served, and the old connection goes on.
    for _ in 0..5 {
        let mut fresh = h2_sender(gw.listen, tls.clone()).await.unwrap();
        assert_eq!(echo(&mut fresh).await, StatusCode::OK);
        assert_eq!(echo(&mut established).await, StatusCode::OK);
    }
    let opened = flooding.await.unwrap();
    assert_eq!(opened, 600, "the flood itself was refused at accept");

    let m = gw.metrics();
    let refused = "gateway_connections_refused_total";
    let shed = metric(&m, refused, &[("listener", "gateway"), ("reason", "shed")]);
    assert!(shed >= 400, "only {shed} connections shed:\n{m}");
    assert_eq!(
        metric(&m, refused, &[("listener", "gateway"), ("reason", "limit")]),
        0,
        "{m}"
    );
    // Each shed connection is counted, but the log holds a burst and a count, not one line
    // per connection.
    let log = gw.log_text();
    let lines = log.lines().filter(|l| l.contains("shed")).count();
    assert!(
        (1..=20).contains(&lines),
        "{lines} log lines about shedding:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_port_answers_through_a_flood_of_silent_connections() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let gw = Gateway::start(&fx, &["--handshake-timeout", "60s"]);
    // More silent connections than the probe port's whole budget (128), all held open.
    let opened = flood(gw.probe, 400, Duration::from_millis(1), 400).await;
    assert_eq!(opened, 400);
    for _ in 0..3 {
        assert_eq!(
            http_get(gw.probe, "/ready").unwrap(),
            (200, "ready\n".to_string())
        );
    }
    let m = gw.metrics();
    assert!(
        metric(
            &m,
            "gateway_connections_refused_total",
            &[("listener", "probe"), ("reason", "shed")]
        ) >= 250,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_logged_with_the_name_asked_for_and_thinned() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80={backend}")]);
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    // 200 requests for a name outside the cluster domain: each refused and counted, a few
    // logged, each of those naming what was asked for.
    for _ in 0..200 {
        let req = Request::get("http://nosuch.example.org:8080/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "inbound_http_errors_total",
            &[("error", "bad gateway domain")]
        ),
        200,
        "{m}"
    );
    let log = gw.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert!(
        (1..=10).contains(&refused.len()),
        "{} refusal lines:\n{log}",
        refused.len()
    );
    assert!(
        refused
            .iter()
            .all(|l| l.contains("nosuch.example.org:8080")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_never_answer_add_no_metric_series() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let backend = backend().await;
    // web-svc resolves (a fixed host entry stands in for cluster DNS); only one port of it
    // answers.
    let gw = Gateway::start(&fx, &["--host", &format!("{WEB_SVC}=127.0.0.1")]);
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let mut get = |port: u16| {
        let req = Request::get(format!("http://{WEB_SVC}:{port}/echo"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fut = send.send_request(req);
        async move { fut.await.unwrap().status() }
    };
    assert_eq!(get(backend.port()).await, StatusCode::OK);
    let before = gw.metrics().len();
    // 300 ports of the same name that nothing listens on: each resolves, each fails.
    for _ in 0..300 {
        assert_eq!(get(free_port()).await, StatusCode::BAD_GATEWAY);
    }
    let m = gw.metrics();
    let authorities: std::collections::BTreeSet<&str> = m
        .lines()
        .filter(|l| l.starts_with("request_total{"))
        .filter_map(|l| l.split("authority=\"").nth(1)?.split('"').next())
        .collect();
    let answered = format!("{WEB_SVC}:{}", backend.port());
    assert_eq!(
        authorities,
        ["", answered.as_str()].into_iter().collect(),
        "{m}"
    );
    assert!(
        m.lines()
            .filter(|l| l.starts_with("outbound_http_errors_total{"))
            .all(|l| l.contains("target_addr=\"\"")),
        "{m}"
    );
    assert_eq!(
        metric(&m, "request_total", &[("authority", "")]),
        300,
        "{m}"
    );
    // The page grew by the few new series, not by one per name.
    assert!(
        m.len() < before + 16 * 1024,
        "/metrics grew from {before} to {} bytes",
        m.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_cost_bounded_memory_over_http2_and_http1() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80={backend}")]);
    let pid = gw.pid();
    // Warm up: one of each kind, read to the end.
    let tls = client_tls(&fx, "vote-bot", &[b"h2"]);
    let mut warm = h2_sender(gw.listen, tls.clone()).await.unwrap();
    assert_eq!(echo(&mut warm).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(pid);

    // HTTP/2: 100 streams asking for 8 MiB each on one connection whose windows are small
    // and never read: only what flow control and the gateway's buffers hold moves.
    let io = connect(gw.listen, tls.clone()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 * 1024)
            .initial_connection_window_size(1024 * 1024)
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let mut held = Vec::new();
    for _ in 0..100 {
        let req = Request::get(format!("http://{WEB_SVC}/download?bytes={}", 8 << 20))
            .body(Full::new(Bytes::new()))
            .unwrap();
        held.push(send.send_request(req).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h2_peak = rss_kib(pid).saturating_sub(base);

    // HTTP/1.1: 50 connections, each a 64 MiB download read by nobody.
    let mut h1_conns = Vec::new();
    for _ in 0..50 {
        let mut io = connect(gw.listen, client_tls(&fx, "vote-bot", &[b"http/1.1"]))
            .await
            .unwrap();
        io.write_all(
            format!(
                "GET /download?bytes={} HTTP/1.1\r\nhost: {WEB_SVC}\r\n\r\n",
                64 << 20
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        h1_conns.push(io);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = rss_kib(pid).saturating_sub(base);

    // Slow uploads: 20 streams each sending 8 MiB to an upstream that does not read for 5 s.
    let io = connect(gw.listen, tls.clone()).await.unwrap();
    let (mut up_send, up_conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    let up_conn = tokio::spawn(up_conn);
    let mut uploads = Vec::new();
    for _ in 0..20 {
        let req = Request::post(format!("http://{WEB_SVC}/slow?ms=5000"))
            .body(Full::new(Bytes::from(vec![b'u'; 8 << 20])))
            .unwrap();
        uploads.push(tokio::spawn(up_send.send_request(req)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_uploads = rss_kib(pid).saturating_sub(base);
    eprintln!(
        "rss growth: http2 100 slow streams {h2_peak} KiB; plus 50 slow http/1.1 {peak} KiB; plus 20 slow uploads {with_uploads} KiB"
    );
    assert!(
        h2_peak < 16 * 1024,
        "100 slow HTTP/2 streams cost {h2_peak} KiB"
    );
    assert!(
        peak < 32 * 1024,
        "and 50 slow HTTP/1.1 connections {peak} KiB in all"
    );
    // 160 MiB offered; what the gateway holds is bounded by the connection's HTTP/2 window
    // (4 MiB) plus 20 upstream connections and the allocator's slack: 6.9-13 MiB in runs on
    // the 2-core machine (the same before and after issue 14's changes), so the bound is 16.
    assert!(
        with_uploads < peak + 16 * 1024,
        "20 stalled uploads cost {} KiB",
        with_uploads.saturating_sub(peak)
    );

    // The callers leave; the memory comes back within seconds while others keep calling (the
    // allocator returns freed pages as its threads run, not while the process sits idle).
    drop(held);
    drop(send);
    conn.abort();
    drop(h1_conns);
    for u in uploads {
        u.abort();
    }
    drop(up_send);
    up_conn.abort();
    let mut after = u64::MAX;
    for _ in 0..30 {
        for _ in 0..20 {
            assert_eq!(echo(&mut warm).await, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = rss_kib(pid).saturating_sub(base);
        if after <= with_uploads / 2 {
            break;
        }
    }
    eprintln!(
        "rss growth after they left: {after} KiB; open {}",
        metric(
            &gw.metrics(),
            "tcp_open_connections",
            &[("direction", "inbound")]
        )
    );
    // Every connection and stream they held is gone; how soon freed pages go back to the
    // kernel is the allocator's business (mimalloc returns them as its threads work, about
    // half within seconds in most runs), so only "no further growth" is asserted.
    assert_eq!(
        metric(
            &gw.metrics(),
            "tcp_open_connections",
            &[("direction", "inbound")]
        ),
        1
    );
    assert!(
        after <= with_uploads + 4 * 1024,
        "{after} KiB held after the callers left, {with_uploads} KiB at the peak"
    );
    // The gateway still serves.
    let mut fresh = h2_sender(gw.listen, tls).await.unwrap();
    assert_eq!(echo(&mut fresh).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_readers_that_stop_reading_are_closed_per_kind() {
    let _turn = serial().await;
    use tokio::io::AsyncReadExt;
    let fx = Fixture::new();
    let backend = backend().await;
    let echo_tcp = echo_after_eof().await;
    const ECHO: &str = "echo.emojivoto.svc.cluster.local";
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &format!("{WEB_SVC}:80={backend}"),
            "--route",
            &format!("{ECHO}:7={echo_tcp}"),
            "--http1-idle-timeout",
            "1s",
            "--http2-idle-timeout",
            "2s",
            "--opaque-idle-timeout",
            "1s",
            "--write-stall-timeout",
            "2s",
        ],
    );
    let closed = |m: &str, reason: &str, kind: &str| {
        metric(
            m,
            "gateway_connections_closed_total",
            &[("reason", reason), ("kind", kind)],
        )
    };

    // HTTP/2 with PINGs every 300 ms, as Linkerd peers PING: the PINGs do not keep it open,
    // but a response that takes longer than the idle timeout does.
    let io = connect(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(300))
            .keep_alive_while_idle(true)
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let slow = Request::get(format!("http://{WEB_SVC}/slow?ms=3000"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = std::time::Instant::now();
    let resp = send.send_request(slow).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_text(resp).await, "slow done\n");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection left open");
    let lifetime = started.elapsed();
    assert!(
        lifetime >= Duration::from_secs(5) && lifetime < Duration::from_secs(9),
        "closed after {lifetime:?}: 3 s of response, then 2 s idle"
    );

    // HTTP/1.1 keep-alive: one request, then silence.
    let mut io = connect(gw.listen, client_tls(&fx, "vote-bot", &[b"http/1.1"]))
        .await
        .unwrap();
    io.write_all(format!("GET /echo HTTP/1.1\r\nhost: {WEB_SVC}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("idle HTTP/1.1 connection left open"),
        }
    }
    assert!(got > 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // An opaque stream with no byte either way.
    let mut io = linkerd_connect(
        &fx,
        gw.listen,
        &transport_header::Header {
            port: 7,
            name: Some(ECHO.into()),
            protocol: None,
        },
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
        .await
        .expect("idle opaque stream left open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A reader that stops reading a large response.
    let mut io = connect(gw.listen, client_tls(&fx, "vote-bot", &[b"http/1.1"]))
        .await
        .unwrap();
    io.write_all(
        format!(
            "GET /download?bytes={} HTTP/1.1\r\nhost: {WEB_SVC}\r\n\r\n",
            256 << 20
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while closed(&gw.metrics(), "write stalled", "http") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled reader not cut off:\n{}",
            gw.metrics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(io);

    let m = gw.metrics();
    assert!(closed(&m, "idle", "http") >= 2, "{m}");
    assert_eq!(closed(&m, "idle", "opaque"), 1, "{m}");
    assert!(gw.log_text().contains("the caller stopped reading"));
}

/// A backend that serves at most 16 requests at once, 20 ms each: the shared capacity a
/// flooding caller would take from everyone else.
async fn narrow_backend() -> std::net::SocketAddr {
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let slots = slots.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let slots = slots.clone();
                    async move {
                        let _slot = slots.acquire().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok\n"),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
            });
        }
    });
    addr
}

/// The median latency of `n` sequential requests on `send`.
async fn median_latency(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    n: usize,
) -> Duration {
    let mut lat = Vec::new();
    for _ in 0..n {
        let started = std::time::Instant::now();
        assert_eq!(echo(send).await, StatusCode::OK);
        lat.push(started.elapsed());
    }
    lat.sort();
    lat[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_caller_is_throttled_and_others_keep_their_latency() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let backend = narrow_backend().await;
    const FLOOD_ID: &str = "flood.other.serviceaccount.identity.linkerd.cluster.local";
    fx.caller("flood", FLOOD_ID);
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &format!("{WEB_SVC}:80={backend}"),
            "--caller-max-concurrent-requests",
            "6",
            "--caller-max-connections",
            "4",
        ],
    );
    let mut victim = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let unloaded = median_latency(&mut victim, 15).await;

    // The flood: 64 requests kept open at once on one connection, for 3 s. A refused
    // request is sent again after 2 ms, as a client that honours 429 a little.
    let flood_tls = client_tls(&fx, "flood", &[b"h2"]);
    let flooder = h2_sender(gw.listen, flood_tls.clone()).await.unwrap();
    let stop = std::time::Instant::now() + Duration::from_secs(3);
    let mut loops = Vec::new();
    for _ in 0..64 {
        let mut send = flooder.clone();
        loops.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (0u32, 0u32);
            while std::time::Instant::now() < stop {
                let req = Request::get(format!("http://{WEB_SVC}/"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match send.send_request(req).await {
                    Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                        assert_eq!(r.headers()["l5d-proxy-error"], "too many requests");
                        limited += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Ok(r) => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                        ok += 1;
                    }
                    Err(_) => break,
                }
            }
            (ok, limited)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = median_latency(&mut victim, 30).await;
    let (mut ok, mut limited) = (0, 0);
    for l in loops {
        let (o, r) = l.await.unwrap();
        ok += o;
        limited += r;
    }
    eprintln!("victim median: {unloaded:?} unloaded, {loaded:?} under the flood; flooder: {ok} served, {limited} refused");
    assert!(limited > 0 && ok > 0, "{ok} served, {limited} refused");
    assert!(
        loaded <= unloaded * 2,
        "the victim's median went from {unloaded:?} to {loaded:?}"
    );
    // Its connections are capped too: 4 are served, a fifth is refused after its handshake.
    let mut extra = Vec::new();
    for _ in 0..3 {
        extra.push(h2_sender(gw.listen, flood_tls.clone()).await.unwrap());
    }
    for s in &mut extra {
        assert_eq!(echo(s).await, StatusCode::OK);
    }
    let fifth_served = match h2_sender(gw.listen, flood_tls.clone()).await {
        Err(_) => false,
        Ok(mut s) => {
            let req = Request::get(format!("http://{WEB_SVC}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            s.send_request(req).await.is_ok()
        }
    };
    assert!(!fifth_served, "a fifth connection of one caller was served");
    let m = gw.metrics();
    let limited_metric = |limit: &str| {
        metric(
            &m,
            "gateway_caller_limited_total",
            &[("client_id", FLOOD_ID), ("limit", limit)],
        )
    };
    assert_eq!(limited_metric("concurrent_requests"), limited as u64, "{m}");
    assert_eq!(limited_metric("connections"), 1, "{m}");
    assert_eq!(
        metric(
            &m,
            "gateway_caller_limited_total",
            &[("client_id", VOTE_BOT_ID)]
        ),
        0
    );
}
