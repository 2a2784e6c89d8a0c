//! Authorization from a stub `linkerd-policy` (built from `linkerd2-proxy-api`): an
//! unauthorized caller gets 403 per request with its connection kept (HTTP) or a closed
//! connection (opaque), updates take effect without a restart, bad policies are refused.

use std::time::Duration;

use bytes::Bytes;
use e2e::{control::*, *};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WORKLOAD: &str = r#"{"ns":"linkerd-multicluster","pod":"linkerd-gateway-0"}"#;
const ECHO: &str = "echo.emojivoto.svc.cluster.local";

fn only(identity: &str) -> PolicyAnswer {
    PolicyAnswer::Identities {
        exact: vec![identity.to_string()],
        suffixes: vec![],
    }
}

/// A gateway with `routes` (`name:port=addr`) under `policy`, as the gateway workload.
fn gateway_under(fx: &Fixture, policy: &PolicyStub, routes: &[String]) -> Gateway {
    let mut args: Vec<&str> = routes.iter().flat_map(|r| ["--route", r]).collect();
    let addr = policy.addr.to_string();
    args.extend(["--policy-svc-addr", &addr, "--policy-workload", WORKLOAD]);
    Gateway::start(fx, &args)
}

async fn status(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
) -> (StatusCode, String) {
    let req = Request::get(format!("http://{WEB_SVC}/echo"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .expect("the connection stays open");
    let reason = proxy_error(&resp);
    (resp.status(), reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_callers_get_403_per_request_and_updates_apply_without_restart() {
    let fx = Fixture::new();
    let backend = backend().await;
    let echo = echo_after_eof().await;
    let policy = PolicyStub::start(only(GATEWAY_ID)).await;
    let gw = gateway_under(
        &fx,
        &policy,
        &[
            format!("{WEB_SVC}:80={backend}"),
            format!("{ECHO}:7={echo}"),
        ],
    );
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    // The policy has arrived once the first watch is open and answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(&mut send).await.0 != StatusCode::FORBIDDEN {
        assert!(std::time::Instant::now() < deadline, "policy never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 403 per request, on the same connection.
    for _ in 0..3 {
        assert_eq!(
            status(&mut send).await,
            (StatusCode::FORBIDDEN, "unauthorized".into())
        );
    }
    assert_eq!(
        policy.watches()[0],
        (WORKLOAD.to_string(), gw.listen.port() as u32)
    );
    // Opaque: the stream is closed without forwarding.
    let header = transport_header::Header {
        port: 7,
        name: Some(ECHO.into()),
        protocol: None,
    };
    let mut io = linkerd_connect(&fx, gw.listen, &header).await.unwrap();
    let _ = io.write_all(b"hello").await;
    let _ = io.shutdown().await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // Allow vote-bot's namespace by suffix: the same connection is served from now on.
    policy.set(PolicyAnswer::Identities {
        exact: vec![],
        suffixes: vec!["emojivoto.serviceaccount.identity.linkerd.cluster.local".into()],
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(&mut send).await.0 != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "update never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut io = linkerd_connect(&fx, gw.listen, &header).await.unwrap();
    io.write_all(b"hello").await.unwrap();
    io.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut got))
        .await
        .unwrap()
        .ok();
    assert_eq!(got, b"echo:hello");

    // A broken policy is refused and the last good one kept.
    policy.set(PolicyAnswer::Invalid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&mut send).await.0, StatusCode::OK);
    // An open opaque stream the policy stops authorizing is closed.
    let mut io = linkerd_connect(&fx, gw.listen, &header).await.unwrap();
    io.write_all(b"held open").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    policy.set(only(GATEWAY_ID));
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    // The gateway logs just after closing both sides: give the line a moment to land.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !gw
        .log_text()
        .contains("the policy no longer authorizes the caller")
    {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = gw.metrics();
    assert!(m.contains("inbound_tcp_authz_terminate_total{"), "{m}");
    assert!(
        m.contains(
            "inbound_http_authz_deny_total{srv_kind=\"server\",srv_name=\"linkerd-gateway\""
        ),
        "{m}"
    );
    assert!(m.contains("inbound_http_authz_allow_total{"), "{m}");
    assert!(m.contains("authz_name=\"linkerd-gateway\""), "{m}");
    assert!(m.contains("inbound_tcp_authz_deny_total{"), "{m}");
    assert!(m.contains("policy_updates_refused_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_default_policy_refuses_everyone() {
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &format!("{WEB_SVC}:80={backend}"),
            "--default-inbound-policy",
            "deny",
        ],
    );
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(
        status(&mut send).await,
        (StatusCode::FORBIDDEN, "unauthorized".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_watch_left_unanswered_is_reopened_on_a_new_connection() {
    let fx = Fixture::new();
    let backend = backend().await;
    let policy = PolicyStub::start(only(GATEWAY_ID)).await;
    // A wedged replica: the connection and its PINGs stay healthy, no watch on it is
    // answered. Until a policy arrives the default (all-authenticated) lets vote-bot in; a
    // gateway that waited on that connection would never apply the policy that refuses it.
    policy.silence_first_connections(1);
    let gw = gateway_under(&fx, &policy, &[format!("{WEB_SVC}:80={backend}")]);
    let mut send = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(status(&mut send).await.0, StatusCode::OK);
    // Bounded: 5 s for the silent watch, 0.5 s of backoff, then the new connection's answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while status(&mut send).await.0 != StatusCode::FORBIDDEN {
        assert!(
            std::time::Instant::now() < deadline,
            "policy never applied:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(policy.watches().len(), 2);
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "policy_stream_errors_total", &[("reason", "no_answer")]),
        1,
        "{m}"
    );
    assert_eq!(metric(&m, "policy_redials_total", &[]), 1, "{m}");
    let log = gw.log_text();
    assert!(log.contains("sent no policy within 5s"), "{log}");
}
