//! The gateway as a member of the mesh: its identity from a stub `linkerd-identity` built from
//! `linkerd2-proxy-api` (Certify), renewed before expiry, refused when the answer is bad.

use std::{ffi::OsString, sync::Arc, time::Duration};

use bytes::Bytes;
use e2e::{control::*, *};
use http::{Request, StatusCode};
use http_body_util::Full;

/// The flags that make the gateway get its certificate from `stub`.
fn certify_args(
    fx: &Fixture,
    identity_addr: std::net::SocketAddr,
    extra: &[&str],
) -> Vec<OsString> {
    std::fs::write(fx.path("token"), TOKEN).unwrap();
    let mut args: Vec<OsString> = vec![
        "--identity-svc-addr".into(),
        identity_addr.to_string().into(),
        "--identity".into(),
        GATEWAY_ID.into(),
        "--identity-token-file".into(),
        fx.path("token").into(),
    ];
    args.extend(extra.iter().map(Into::into));
    args
}

/// The leaf the gateway presents on a fresh handshake.
async fn served_leaf(fx: &Fixture, gw: &Gateway) -> Vec<u8> {
    let io = connect(gw.listen, client_tls(fx, "vote-bot", &[b"h2"]))
        .await
        .expect("handshake with the gateway");
    io.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a server certificate")
}

async fn get_web(send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>) -> StatusCode {
    let req = Request::get(format!("http://{WEB_SVC}/echo"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.send_request(req)
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certified_at_start_and_renewed_at_70_percent_without_dropping_connections() {
    let fx = Fixture::new();
    let backend = backend().await;
    let pki = Arc::new(
        fx.pki
            .sibling("identity-east.linkerd.cluster.local")
            .unwrap(),
    );
    let stub =
        IdentityStub::start(pki, "127.0.0.1:0".parse().unwrap(), Duration::from_secs(10)).await;
    let route = format!("{WEB_SVC}:80={backend}");
    let mut gw = Gateway::launch(&fx, &certify_args(&fx, stub.addr, &["--route", &route]));
    tokio::task::block_in_place(|| gw.wait_ready(Duration::from_secs(15)));
    assert_eq!(stub.calls(), 1);
    let first = served_leaf(&fx, &gw).await;
    let info = identity::CertInfo::parse(&first).unwrap();
    assert!(info.sans.iter().any(|s| s.contains(GATEWAY_ID)), "{info:?}");

    // One connection kept busy across the renewal (a 10 s leaf is renewed at about 7 s).
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut renewed_at = None;
    while started.elapsed() < Duration::from_secs(9) {
        assert_eq!(
            get_web(&mut send).await,
            StatusCode::OK,
            "request failed at {:?}",
            started.elapsed()
        );
        if renewed_at.is_none() && stub.calls() >= 2 {
            renewed_at = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let renewed_at = renewed_at.expect("no renewal within 9 s");
    assert!(
        renewed_at > Duration::from_secs(4) && renewed_at < Duration::from_secs(9),
        "renewed at {renewed_at:?}"
    );
    // New handshakes get the new certificate; the old connection still works.
    assert_ne!(served_leaf(&fx, &gw).await, first);
    assert_eq!(get_web(&mut send).await, StatusCode::OK);
    let m = gw.metrics();
    assert!(
        m.contains("identity_cert_refreshes_total{result=\"ok\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("identity_cert_expiration_timestamp_seconds{"),
        "{m}"
    );
    assert!(m.contains("identity_cert_refresh_timestamp_seconds"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_identity_service_answers() {
    let fx = Fixture::new();
    let pki = Arc::new(
        fx.pki
            .sibling("identity-east.linkerd.cluster.local")
            .unwrap(),
    );
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut gw = Gateway::launch(&fx, &certify_args(&fx, addr, &[]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(http_get(gw.admin, "/ready").unwrap().0, 503);
    // No certificate yet: handshakes fail rather than present nothing useful.
    assert!(connect(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .is_err());
    let _stub = IdentityStub::start(pki, addr, Duration::from_secs(3600)).await;
    tokio::task::block_in_place(|| gw.wait_ready(Duration::from_secs(20)));
    served_leaf(&fx, &gw).await;
    let log = gw.log_text();
    assert!(
        log.contains("cannot get a certificate from the identity service")
            && log.contains("reason=\"unavailable\""),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_are_refused_and_logged() {
    let fx = Fixture::new();
    let pki = Arc::new(
        fx.pki
            .sibling("identity-east.linkerd.cluster.local")
            .unwrap(),
    );
    let stub = IdentityStub::start(
        pki,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(3600),
    )
    .await;
    let mut gw = Gateway::launch(&fx, &certify_args(&fx, stub.addr, &[]));
    for (answer, reason) in [
        (IdentityAnswer::Garbage, "reason=\"bad_certificate\""),
        (IdentityAnswer::ForeignAnchor, "reason=\"unknown_issuer\""),
        (IdentityAnswer::OtherWorkload, "reason=\"bad_certificate\""),
        // Refused by the size bound before it is decoded.
        (IdentityAnswer::Oversized, "reason=\"refused\""),
    ] {
        stub.answer(answer);
        let before = stub.calls();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while stub.calls() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no retry for {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!gw.is_ready(), "ready after {answer:?}");
        let log = gw.log_text();
        assert!(log.contains(reason), "{answer:?}: no {reason}\n{log}");
    }
    stub.answer(IdentityAnswer::Sign);
    tokio::task::block_in_place(|| gw.wait_ready(Duration::from_secs(40)));
    let m = gw.metrics();
    assert!(
        m.contains("identity_cert_refreshes_total{result=\"unknown_issuer\"}"),
        "{m}"
    );
}
