//! Endpoints from a stub `linkerd-destination` (built from `linkerd2-proxy-api`): updates move
//! traffic with no failed request, a service with no endpoints fails fast with a reason, an
//! unknown one is a bad gateway domain, and the last endpoints keep serving while the control
//! plane is away or sends nonsense.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use e2e::{control::*, *};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

const WEB: &str = "web-svc.emojivoto.svc.cluster.local:80";

/// An HTTP server answering its own name to every request.
async fn named_backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(name.as_bytes()),
                    )))
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

/// A stub destination service that names one endpoint for web-svc: a backend answering "a".
async fn destination_of_backend_a() -> DestinationStub {
    let a = named_backend("a").await;
    let dst = DestinationStub::start("127.0.0.1:0".parse().unwrap()).await;
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![StubEndpoint::plain(a)]),
    );
    dst
}

fn gateway_with(fx: &Fixture, destination: SocketAddr) -> Gateway {
    Gateway::start(fx, &["--destination-svc-addr", &destination.to_string()])
}

async fn get(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
) -> (StatusCode, String, Option<String>) {
    let req = Request::get(format!("http://{WEB}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.expect("request");
    let status = resp.status();
    let reason = resp
        .headers()
        .get("l5d-proxy-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), reason)
}

/// Sends requests back to back until `stop`, counting answers by backend name and failures.
fn steady_load(
    mut send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize, usize)> {
    tokio::spawn(async move {
        let (mut a, mut b, mut failed) = (0, 0, 0);
        // Bounded in count as well as by `stop`.
        for _ in 0..200_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match get(&mut send).await {
                (StatusCode::OK, body, _) if body == "a" => a += 1,
                (StatusCode::OK, body, _) if body == "b" => b += 1,
                _ => failed += 1,
            }
        }
        (a, b, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_updates_move_traffic_with_no_failed_request() {
    let fx = Fixture::new();
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let dst = DestinationStub::start("127.0.0.1:0".parse().unwrap()).await;
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![StubEndpoint::plain(a)]),
    );
    let gw = gateway_with(&fx, dst.addr);
    let send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let phase = |stop: &Arc<AtomicBool>| stop.clone();
    // Only a.
    let load = steady_load(send.clone(), phase(&stop));
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let (on_a, on_b, failed) = load.await.unwrap();
    assert!(
        on_a > 0 && on_b == 0 && failed == 0,
        "a={on_a} b={on_b} failed={failed}"
    );
    // Add b: both serve. Then remove a: only b. All under one steady load.
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(send.clone(), phase(&stop));
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![StubEndpoint::plain(a), StubEndpoint::plain(b)]),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![StubEndpoint::plain(b)]),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (on_a, on_b, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "a={on_a} b={on_b}");
    assert!(on_a > 0 && on_b > 0, "a={on_a} b={on_b}");
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(send, phase(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (on_a, on_b, failed) = load.await.unwrap();
    assert!(
        on_a == 0 && on_b > 0 && failed == 0,
        "a={on_a} b={on_b} failed={failed}"
    );
    // One watch served every request.
    assert_eq!(dst.gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_fails_fast_with_a_reason_and_unknown_names_are_refused() {
    let fx = Fixture::new();
    let dst = DestinationStub::start("127.0.0.1:0".parse().unwrap()).await;
    dst.set(WEB, DestinationAnswer::NoEndpoints { exists: true });
    let gw = gateway_with(&fx, dst.addr);
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, _, reason) = get(&mut send).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reason.as_deref(),
        Some("no endpoints within the failfast timeout")
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let (status, _, reason) = get(&mut send).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason.as_deref(), Some("no endpoints"));
    assert!(started.elapsed() < Duration::from_millis(500));
    // Endpoints return: served again at once.
    let a = named_backend("a").await;
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![StubEndpoint::plain(a)]),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if get(&mut send).await.0 == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "endpoints never used");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A name the control plane does not know.
    let req = Request::get("http://nosuch.emojivoto.svc.cluster.local/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["l5d-proxy-error"], "bad gateway domain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_endpoints_keep_serving_through_bad_updates_and_a_dead_control_plane() {
    let fx = Fixture::new();
    let dst = destination_of_backend_a().await;
    let gw = gateway_with(&fx, dst.addr);
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(get(&mut send).await.1, "a");
    // Nonsense from the control plane: refused, logged, the endpoints stay.
    dst.set(WEB, DestinationAnswer::Invalid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        assert_eq!(get(&mut send).await.1, "a");
    }
    assert!(
        gw.log_text().contains("destination update refused"),
        "{}",
        gw.log_text()
    );
    // The control plane dies: known targets go on.
    dst.kill();
    let served = Arc::new(AtomicUsize::new(0));
    for _ in 0..50 {
        let (status, body, _) = get(&mut send).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
        served.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = gw.log_text();
    assert!(
        log.contains("destination watch broken; serving the last known endpoints"),
        "{log}"
    );
    let m = gw.metrics();
    assert!(m.contains("destination_stream_errors_total{"), "{m}");
    assert!(m.contains("destination_updates_refused_total"), "{m}");
}

/// A gateway on `dst`, called until backend a answers: fail-fast refusals (503) meanwhile,
/// nothing else. Bounded: a silent watch is given up after 5 s and reopened 0.5 s later.
async fn served_after_silence(fx: &Fixture, dst: &DestinationStub) -> Gateway {
    let gw = gateway_with(fx, dst.addr);
    let mut send = h2_sender(gw.listen, client_tls(fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    for _ in 0..150 {
        let (status, body, reason) = get(&mut send).await;
        if status == StatusCode::OK {
            assert_eq!(body, "a");
            return gw;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reason:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never served:\n{}", gw.log_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_the_control_plane_never_answers_is_reopened() {
    let fx = Fixture::new();
    let dst = destination_of_backend_a().await;
    // The first watch opens and hears nothing; the name must not stay unresolved for good.
    dst.leave_unanswered(1);
    let started = std::time::Instant::now();
    let gw = served_after_silence(&fx, &dst).await;
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(dst.gets(), 2);
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "destination_stream_errors_total",
            &[("reason", "no_answer")]
        ),
        1,
        "{m}"
    );
    let log = gw.log_text();
    assert!(log.contains("sent no update within 5s"), "{log}");
    assert!(log.contains("destination watch restored"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_control_plane_stopped_answering_on_is_replaced() {
    let fx = Fixture::new();
    let dst = destination_of_backend_a().await;
    // A wedged replica: its connection and PINGs stay healthy, no Get on it is answered.
    // Reopening the watch on the same connection would hear nothing forever.
    dst.silence_first_connections(1);
    let gw = served_after_silence(&fx, &dst).await;
    assert_eq!(dst.gets(), 2);
    let m = gw.metrics();
    assert_eq!(metric(&m, "destination_redials_total", &[]), 1, "{m}");
    let log = gw.log_text();
    assert!(
        log.contains("destination service connection replaced"),
        "{log}"
    );
}
