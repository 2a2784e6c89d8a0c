//! The fault suite: under steady open-loop load (HTTP/1.1 and HTTP/2 callers over mTLS),
//! things go wrong the way they do on a bad day, and nothing may be lost beyond what the
//! fault itself took:
//! - the gateway's certificate is rotated: no request fails, new handshakes see the new one;
//! - SIGTERM: every request already sent finishes, the process exits 0;
//! - one of two endpoints dies: no request fails beyond those in flight on it, and it is used
//!   again after it returns;
//! - a lone endpoint dies: requests fail fast (502) while it is down and it is used again
//!   within 50 ms of its return;
//! - the gateway is SIGKILLed: restarted, it is ready within a second.
//!
//! `cargo test -p e2e --test faults` runs a short version (a few seconds per fault, 150
//! requests/s per protocol); `cargo xtask faults` runs the full one (release build, 500
//! requests/s per protocol, longer) and prints the numbers README "Faults" records.

use std::{
    net::SocketAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use bytes::Bytes;
use e2e::{
    load::{failures, load, Backend, Outcome, Proto},
    *,
};
use http::{Request, StatusCode};
use http_body_util::Full;

/// Held for a whole test: the faults are timed, so one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Short by default; `FAULTS_FULL=1` for the full run.
fn full() -> bool {
    std::env::var("FAULTS_FULL").is_ok_and(|v| v == "1")
}

fn rate() -> u32 {
    if full() {
        500
    } else {
        150
    }
}

fn secs(short: u64, long: u64) -> Duration {
    Duration::from_secs(if full() { long } else { short })
}

/// One result line, collected by `cargo xtask faults`.
fn report(fault: &str, line: String) {
    println!("FAULT {fault}: {line}");
}

fn gateway(fx: &Fixture, backends: &[SocketAddr], extra: &[&str]) -> Gateway {
    let upstreams: Vec<String> = backends.iter().map(|a| a.to_string()).collect();
    let route = format!("{WEB_SVC}:80={}", upstreams.join(","));
    let mut args = vec!["--route", &route, "--cert-reload-interval", "100ms"];
    args.extend_from_slice(extra);
    Gateway::start(fx, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_loses_nothing() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let backend = Backend::start("127.0.0.1:0".parse().unwrap()).await;
    let gw = gateway(&fx, &[backend.addr], &[]);
    let t0 = Instant::now();
    let dur = secs(3, 10);
    let (h1, h2) = (
        load(&fx, gw.listen, Proto::H1, rate(), dur, "/", t0),
        load(&fx, gw.listen, Proto::H2, rate(), dur, "/", t0),
    );
    let rotate = async {
        tokio::time::sleep(dur / 3).await;
        // A new certificate for the same identity, written as cert-manager would.
        let fresh = fx.pki.leaf(GATEWAY_ID).unwrap();
        fresh.write(fx.path("").as_path(), "gateway").unwrap();
        let new_der = identity::Credentials::load(&fx.path("gateway.crt"), &fx.path("gateway.key"))
            .unwrap()
            .chain()[0]
            .clone();
        // New handshakes see it within a few reload intervals.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let io = connect(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
                .await
                .unwrap();
            let served = io.get_ref().1.peer_certificates().unwrap()[0].clone();
            if served == new_der {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "the new certificate is not served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (h1, h2, _) = tokio::join!(h1, h2, rotate);
    let failed: Vec<_> = failures(&h1).into_iter().chain(failures(&h2)).collect();
    report(
        "rotation",
        format!(
            "{} requests (HTTP/1.1 {}, HTTP/2 {}), {} failed",
            h1.len() + h2.len(),
            h1.len(),
            h2.len(),
            failed.len()
        ),
    );
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_what_was_sent_and_exits_0() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let backend = Backend::start("127.0.0.1:0".parse().unwrap()).await;
    let mut gw = gateway(&fx, &[backend.addr], &["--drain-timeout", "10s"]);
    let t0 = Instant::now();
    let dur = secs(3, 6);
    // Each request takes 100 ms at the backend, so many are in flight at the signal.
    let (h1, h2) = (
        load(&fx, gw.listen, Proto::H1, rate(), dur, "/slow?ms=100", t0),
        load(&fx, gw.listen, Proto::H2, rate(), dur, "/slow?ms=100", t0),
    );
    let signal_at = dur / 2;
    let term = async {
        tokio::time::sleep(signal_at).await;
        gw.signal("TERM");
        tokio::task::spawn_blocking(move || {
            let code = gw.wait(Duration::from_secs(20));
            (code, gw)
        })
        .await
        .unwrap()
    };
    let (h1, h2, (code, gw)) = tokio::join!(h1, h2, term);
    // Requests sent before the signal had to be served; after it, new ones are refused
    // (the listener is closed, HTTP/2 callers got GOAWAY).
    let before = |o: &&Outcome| o.sent + Duration::from_millis(20) < signal_at;
    let all: Vec<&Outcome> = h1.iter().chain(h2.iter()).collect();
    let sent_before: Vec<&Outcome> = all.iter().copied().filter(before).collect();
    let lost: Vec<&Outcome> = sent_before
        .iter()
        .copied()
        .filter(|o| o.failure.is_some())
        .collect();
    // The ones in flight at the signal: sent less than 100 ms before it.
    let in_flight = sent_before
        .iter()
        .filter(|o| o.sent + Duration::from_millis(100) > signal_at)
        .count();
    report(
        "sigterm",
        format!(
            "{} requests sent before SIGTERM ({} of them in flight), {} failed; exit code {:?}",
            sent_before.len(),
            in_flight,
            lost.len(),
            code
        ),
    );
    assert_eq!(code, Some(0), "{}", gw.log_text());
    assert!(in_flight > 0);
    assert!(lost.is_empty(), "{lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_endpoints_dies_and_only_its_requests_in_flight_fail() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let a = Backend::start("127.0.0.1:0".parse().unwrap()).await;
    let b = Backend::start("127.0.0.1:0".parse().unwrap()).await;
    let b_addr = b.addr;
    let gw = gateway(&fx, &[a.addr, b.addr], &[]);
    let t0 = Instant::now();
    let dur = secs(4, 12);
    let (h1, h2) = (
        load(&fx, gw.listen, Proto::H1, rate(), dur, "/slow?ms=20", t0),
        load(&fx, gw.listen, Proto::H2, rate(), dur, "/slow?ms=20", t0),
    );
    let chaos = async {
        tokio::time::sleep(dur / 4).await;
        let dying = t0.elapsed();
        let in_flight = b.die().await;
        let dead = t0.elapsed();
        // Back after a while, on the same address.
        tokio::time::sleep(dur / 4).await;
        let back_at = t0.elapsed();
        let b2 = Backend::start(b_addr).await;
        (dying, dead, in_flight, back_at, b2)
    };
    let (h1, h2, (dying, dead, in_flight, back_at, b2)) = tokio::join!(h1, h2, chaos);
    let failed: Vec<_> = failures(&h1).into_iter().chain(failures(&h2)).collect();
    let served_after_return = b2.served.load(Ordering::SeqCst);
    // In flight at its death: sent before it was dead, still unanswered when it began dying
    // (on either endpoint: an upper bound).
    let at_death = |o: &Outcome| o.sent < dead && o.sent + o.took >= dying;
    let outstanding = h1.iter().chain(h2.iter()).filter(|o| at_death(o)).count();
    report(
        "endpoint-dies",
        format!(
            "{} requests; it died at {:.3}s (over {:?}) with {} requests in its handlers and {} outstanding through the gateway; {} failed; after it came back at {:.1}s it served {}",
            h1.len() + h2.len(),
            dying.as_secs_f64(),
            dead - dying,
            in_flight,
            outstanding,
            failed.len(),
            back_at.as_secs_f64(),
            served_after_return
        ),
    );
    assert!(
        failed.iter().all(|o| at_death(o)),
        "a request failed that was not in flight as the endpoint died ({dying:?}..{dead:?}): {failed:?}"
    );
    assert!(
        served_after_return > 0,
        "the endpoint was not used again after it returned"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_endpoint_fails_fast_while_down_and_is_used_again_at_once() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let b = Backend::start("127.0.0.1:0".parse().unwrap()).await;
    let addr = b.addr;
    let gw = gateway(&fx, &[addr], &[]);
    let t0 = Instant::now();
    let dur = secs(3, 8);
    let (h1, h2) = (
        load(&fx, gw.listen, Proto::H1, rate(), dur, "/", t0),
        load(&fx, gw.listen, Proto::H2, rate(), dur, "/", t0),
    );
    let chaos = async {
        tokio::time::sleep(dur / 3).await;
        let down_at = t0.elapsed();
        b.die().await;
        tokio::time::sleep(dur / 3).await;
        let up_at = t0.elapsed();
        let b2 = Backend::start(addr).await;
        (down_at, up_at, b2)
    };
    let (h1, h2, (down_at, up_at, _b2)) = tokio::join!(h1, h2, chaos);
    let all: Vec<&Outcome> = h1.iter().chain(h2.iter()).collect();
    let failed: Vec<&&Outcome> = all.iter().filter(|o| o.failure.is_some()).collect();
    // Failures only while it was down (and the one in flight as it died), each fast, and the
    // last within 50 ms of its return.
    let slowest_failure = failed.iter().map(|o| o.took).max().unwrap_or_default();
    let last_failure = failed.iter().map(|o| o.sent).max().unwrap_or_default();
    let first_ok_after = all
        .iter()
        .filter(|o| o.failure.is_none() && o.sent >= up_at)
        .map(|o| o.sent)
        .min()
        .unwrap_or(Duration::MAX);
    report(
        "lone-endpoint",
        format!(
            "down {:.2}s..{:.2}s: {} failed (slowest failure {:?}); first success {:?} after its return, last failure {:?} after",
            down_at.as_secs_f64(),
            up_at.as_secs_f64(),
            failed.len(),
            slowest_failure,
            first_ok_after.saturating_sub(up_at),
            last_failure.saturating_sub(up_at),
        ),
    );
    assert!(!failed.is_empty());
    assert!(
        failed
            .iter()
            .all(|o| o.sent + Duration::from_millis(50) >= down_at
                && o.failure.as_deref() == Some("502")),
        "{failed:?}"
    );
    assert!(
        slowest_failure < Duration::from_millis(250),
        "{slowest_failure:?}"
    );
    assert!(
        last_failure < up_at + Duration::from_millis(50),
        "still failing {:?} after the endpoint returned",
        last_failure - up_at
    );
    assert!(first_ok_after < up_at + Duration::from_millis(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_gateway_is_ready_within_a_second_of_its_restart() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let b = Backend::start("127.0.0.1:0".parse().unwrap()).await;
    let route = format!("{WEB_SVC}:80={}", b.addr);
    let gw = Gateway::start(&fx, &["--route", &route]);
    let (listen, admin) = (gw.listen, gw.admin);
    gw.signal("KILL");
    drop(gw);
    // Same ports, as a restarted pod keeps them.
    let restarted = Instant::now();
    let args: Vec<std::ffi::OsString> = [
        "--cert",
        fx.path("gateway.crt").to_str().unwrap(),
        "--key",
        fx.path("gateway.key").to_str().unwrap(),
        "--route",
        &route,
    ]
    .iter()
    .map(Into::into)
    .collect();
    let mut gw = Gateway::launch_at(&fx, listen, admin, &args);
    gw.wait_ready(Duration::from_secs(10));
    let ready_after = restarted.elapsed();
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let req = Request::get(format!("http://{WEB_SVC}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    report(
        "sigkill",
        format!("ready {ready_after:?} after the restart"),
    );
    assert!(ready_after < Duration::from_secs(1), "{ready_after:?}");
}

/// A backend whose connections answer their first request and drop their second unanswered,
/// as a server whose keep-alive timeout fires just as a request arrives.
async fn closes_on_second_request() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut requests = 0;
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    requests += 1;
                    if requests > 1 {
                        return;
                    }
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                        .await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_on_a_connection_closed_as_it_arrived_is_sent_once_more() {
    let _turn = serial().await;
    let fx = Fixture::new();
    let backend = closes_on_second_request().await;
    let gw = gateway(&fx, &[backend], &[]);
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let mut call = |method: &str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{WEB_SVC}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fut = send.send_request(req);
        async move { fut.await.unwrap().status() }
    };
    assert_eq!(call("GET").await, StatusCode::OK);
    // Idle long enough for a server's keep-alive timeout to be the likely closer.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        call("GET").await,
        StatusCode::OK,
        "the GET was not sent again"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A POST may have had its effect: it is not sent twice.
    assert_eq!(call("POST").await, StatusCode::BAD_GATEWAY);
}
