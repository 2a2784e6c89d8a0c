//! mTLS to meshed endpoints: the workload sees SNI = its identity and the gateway as its
//! client; a wrong identity is refused with 502; `h2`-hinted endpoints get HTTP/2 with
//! `l5d-orig-proto`; opaque streams reach the endpoint's proxy behind a transport header.

use std::time::Duration;

use bytes::Bytes;
use e2e::{control::*, mesh::MeshedWorkload, *};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB: &str = "web-svc.emojivoto.svc.cluster.local:80";
const WEB_ID: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

fn meshed(addr: std::net::SocketAddr, identity: &str, http2: bool) -> StubEndpoint {
    StubEndpoint {
        addr,
        identity: Some(identity.to_string()),
        http2,
        opaque_transport: None,
    }
}

async fn get_over_h1(fx: &Fixture, gw: &Gateway) -> (StatusCode, String, http::HeaderMap) {
    let mut send = h1_sender(gw.listen, client_tls(fx, "vote-bot", &[b"http/1.1"]))
        .await
        .unwrap();
    let req = Request::get("/")
        .header("host", WEB)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, body_text(resp).await, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_endpoints_get_mtls_as_the_gateway_and_h2_hints_are_honoured() {
    let fx = Fixture::new();
    let web = MeshedWorkload::start(&fx.pki, WEB_ID, false).await;
    let dst = DestinationStub::start("127.0.0.1:0".parse().unwrap()).await;
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![meshed(web.addr, WEB_ID, false)]),
    );
    let gw = Gateway::start(&fx, &["--destination-svc-addr", &dst.addr.to_string()]);

    let (status, body, _) = get_over_h1(&fx, &gw).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(&format!("sni={WEB_ID};client={GATEWAY_ID}")),
        "{body}"
    );
    assert!(body.contains("version=HTTP/1.1"), "{body}");

    // The same endpoint, now hinted h2: HTTP/1.1 rides HTTP/2 with l5d-orig-proto, and the
    // caller gets a plain HTTP/1.1 answer.
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![meshed(web.addr, WEB_ID, true)]),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body, headers) = get_over_h1(&fx, &gw).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("version=HTTP/2.0;orig_proto=HTTP/1.1"),
        "{body}"
    );
    assert!(body.contains(&format!("client={GATEWAY_ID}")), "{body}");
    assert!(!headers.contains_key("l5d-orig-proto"), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_cannot_prove_the_discovered_identity_is_refused() {
    let fx = Fixture::new();
    // Discovery says one workload, the certificate says another.
    let web = MeshedWorkload::start(&fx.pki, WEB_ID, false).await;
    let dst = DestinationStub::start("127.0.0.1:0".parse().unwrap()).await;
    let other = "emoji.emojivoto.serviceaccount.identity.linkerd.cluster.local";
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![meshed(web.addr, other, false)]),
    );
    let gw = Gateway::start(&fx, &["--destination-svc-addr", &dst.addr.to_string()]);
    let (status, body, headers) = get_over_h1(&fx, &gw).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers["l5d-proxy-error"], "upstream TLS handshake failed");
    assert!(
        gw.log_text().contains("upstream TLS handshake failed"),
        "{}",
        gw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_streams_reach_the_endpoint_proxy_behind_a_transport_header() {
    let fx = Fixture::new();
    let proxy_inbound = MeshedWorkload::start(&fx.pki, WEB_ID, true).await;
    let dst = DestinationStub::start("127.0.0.1:0".parse().unwrap()).await;
    // The application port (7777) is not listened on: only the proxy's inbound port is.
    let app: std::net::SocketAddr = "127.0.0.1:7777".parse().unwrap();
    let name = "web-svc.emojivoto.svc.cluster.local";
    dst.set(
        &format!("{name}:7777"),
        DestinationAnswer::Endpoints(vec![StubEndpoint {
            addr: app,
            identity: Some(WEB_ID.into()),
            http2: false,
            opaque_transport: Some(proxy_inbound.addr.port()),
        }]),
    );
    let gw = Gateway::start(&fx, &["--destination-svc-addr", &dst.addr.to_string()]);
    let header = transport_header::Header {
        port: 7777,
        name: Some(name.into()),
        protocol: None,
    };
    let mut io = linkerd_connect(&fx, gw.listen, &header).await.unwrap();
    io.write_all(b"opaque bytes").await.unwrap();
    io.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut got))
        .await
        .unwrap()
        .ok();
    assert_eq!(String::from_utf8_lossy(&got), "port=7777;opaque bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_only_by_linkerd_proxy_variables_it_joins_the_mesh() {
    use std::sync::Arc;
    let fx = Fixture::new();
    let pki = Arc::new(
        fx.pki
            .sibling("identity-east.linkerd.cluster.local")
            .unwrap(),
    );
    let identity = IdentityStub::start(
        pki,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(3600),
    )
    .await;
    let web = MeshedWorkload::start(&fx.pki, WEB_ID, false).await;
    let dst = DestinationStub::start("127.0.0.1:0".parse().unwrap()).await;
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![meshed(web.addr, WEB_ID, true)]),
    );
    let policy = PolicyStub::start(PolicyAnswer::Identities {
        exact: vec![],
        suffixes: vec!["emojivoto.serviceaccount.identity.linkerd.cluster.local".into()],
    })
    .await;
    std::fs::write(fx.path("token"), TOKEN).unwrap();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cp = |svc: &str| format!("{svc}.linkerd.serviceaccount.identity.linkerd.cluster.local");
    // The variables Linkerd's injector writes for the gateway pod's proxy.
    let env = [
        ("LINKERD2_PROXY_LOG", "info".to_string()),
        // The injector's value for a proxy limited to one CPU: every control-plane client,
        // the meshed HTTP/2 connection and the callers share one thread.
        ("LINKERD2_PROXY_CORES", "1".to_string()),
        ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", listen.to_string()),
        ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", admin.to_string()),
        (
            "LINKERD2_PROXY_CONTROL_LISTEN_ADDR",
            "127.0.0.1:0".to_string(),
        ),
        (
            "LINKERD2_PROXY_INBOUND_GATEWAY_SUFFIXES",
            "svc.cluster.local.".to_string(),
        ),
        (
            "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY",
            "all-authenticated".to_string(),
        ),
        (
            "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS",
            fx.pki.anchor.cert_pem.clone(),
        ),
        (
            "LINKERD2_PROXY_IDENTITY_DIR",
            "/var/run/linkerd/identity/end-entity".to_string(),
        ),
        (
            "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
            fx.path("token").display().to_string(),
        ),
        ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", GATEWAY_ID.to_string()),
        (
            "LINKERD2_PROXY_IDENTITY_SVC_ADDR",
            identity.addr.to_string(),
        ),
        ("LINKERD2_PROXY_IDENTITY_SVC_NAME", cp("linkerd-identity")),
        ("LINKERD2_PROXY_DESTINATION_SVC_ADDR", dst.addr.to_string()),
        (
            "LINKERD2_PROXY_DESTINATION_SVC_NAME",
            cp("linkerd-destination"),
        ),
        (
            "LINKERD2_PROXY_DESTINATION_CONTEXT",
            r#"{"ns":"linkerd-multicluster","nodeName":"node-1","pod":"linkerd-gateway-0"}"#
                .to_string(),
        ),
        ("LINKERD2_PROXY_POLICY_SVC_ADDR", policy.addr.to_string()),
        ("LINKERD2_PROXY_POLICY_SVC_NAME", cp("linkerd-destination")),
        (
            "LINKERD2_PROXY_POLICY_WORKLOAD",
            r#"{"ns":"linkerd-multicluster","pod":"linkerd-gateway-0"}"#.to_string(),
        ),
        (
            "LINKERD2_PROXY_TAP_SVC_NAME",
            "tap.linkerd-viz.serviceaccount.identity.linkerd.cluster.local".to_string(),
        ),
    ];
    let mut gw = Gateway::launch_env(&fx, listen, admin, &env);
    tokio::task::block_in_place(|| gw.wait_ready(Duration::from_secs(20)));
    assert_eq!(identity.calls(), 1);
    assert!(
        gw.log_text().contains("runtime: one thread"),
        "{}",
        gw.log_text()
    );
    // vote-bot's proxy in west, as Linkerd sends it: transport header, HTTP/2, orig-proto.
    let header = transport_header::Header {
        port: 80,
        name: Some("web-svc.emojivoto.svc.cluster.local".into()),
        protocol: Some(transport_header::SessionProtocol::Http2),
    };
    let mut send = linkerd_h2(&fx, gw.listen, &header).await.unwrap();
    let req = Request::get(format!("http://{WEB}/api/list"))
        .header("l5d-orig-proto", "HTTP/1.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["l5d-orig-proto"], "HTTP/1.1");
    let body = body_text(resp).await;
    // The in-cluster hop is mTLS with the certificate the gateway got from Certify.
    assert!(
        body.contains(&format!("sni={WEB_ID};client={GATEWAY_ID}")),
        "{body}"
    );
    assert!(
        body.contains("version=HTTP/2.0;orig_proto=HTTP/1.1"),
        "{body}"
    );
    assert_eq!(policy.watches()[0].1, listen.port() as u32);
    let m = gw.metrics();
    assert!(m.contains("inbound_http_authz_allow_total{"), "{m}");
}

/// The address form a pod uses (not loopback, so spoken to over TLS) that still reaches this
/// machine's 127.0.0.1: an IPv4-mapped IPv6 address.
fn non_loopback(addr: std::net::SocketAddr) -> String {
    format!("[::ffff:127.0.0.1]:{}", addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_off_loopback_is_spoken_to_over_tls_checked_by_identity() {
    use std::sync::Arc;
    let fx = Fixture::new();
    let cp = |svc: &str| format!("{svc}.linkerd.serviceaccount.identity.linkerd.cluster.local");
    let pki = Arc::new(
        fx.pki
            .sibling("identity-east.linkerd.cluster.local")
            .unwrap(),
    );
    // linkerd-identity asks no client certificate; linkerd-destination requires the gateway's.
    let identity = IdentityStub::start_with(
        pki,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(3600),
        Some(control_tls(&fx.pki, &cp("linkerd-identity"), false)),
    )
    .await;
    let dst = DestinationStub::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Some(control_tls(&fx.pki, &cp("linkerd-destination"), true)),
    )
    .await;
    let web = MeshedWorkload::start(&fx.pki, WEB_ID, false).await;
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![meshed(web.addr, WEB_ID, false)]),
    );
    std::fs::write(fx.path("token"), TOKEN).unwrap();
    let mut gw = Gateway::launch(
        &fx,
        &[
            "--identity-svc-addr".into(),
            non_loopback(identity.addr).into(),
            "--identity-svc-name".into(),
            cp("linkerd-identity").into(),
            "--identity".into(),
            GATEWAY_ID.into(),
            "--identity-token-file".into(),
            fx.path("token").into(),
            "--destination-svc-addr".into(),
            non_loopback(dst.addr).into(),
            "--destination-svc-name".into(),
            cp("linkerd-destination").into(),
        ],
    );
    tokio::task::block_in_place(|| gw.wait_ready(Duration::from_secs(20)));
    let (status, body, _) = get_over_h1(&fx, &gw).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", gw.log_text());
    assert!(body.contains(&format!("client={GATEWAY_ID}")), "{body}");
    assert_eq!(dst.gets(), 1);

    // A destination service that cannot prove its name is not believed.
    let impostor = DestinationStub::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Some(control_tls(&fx.pki, &cp("linkerd-impostor"), true)),
    )
    .await;
    impostor.set(
        WEB,
        DestinationAnswer::Endpoints(vec![meshed(web.addr, WEB_ID, false)]),
    );
    let gw2 = Gateway::start(
        &fx,
        &[
            "--destination-svc-addr",
            &non_loopback(impostor.addr),
            "--destination-svc-name",
            &cp("linkerd-destination"),
        ],
    );
    let (status, _, headers) = get_over_h1(&fx, &gw2).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        headers["l5d-proxy-error"],
        "no endpoints within the failfast timeout"
    );
    assert_eq!(impostor.gets(), 0);
    assert!(
        gw2.log_text().contains("destination watch broken"),
        "{}",
        gw2.log_text()
    );
}
