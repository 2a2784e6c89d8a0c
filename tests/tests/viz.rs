//! What `linkerd viz` reads from the gateway: the outbound families with discovery's `dst_*`
//! labels beside the inbound ones, gRPC statuses classified as Linkerd's proxy classifies
//! them, the mTLS probe counted, and tap on the control port for viz's tap controller only.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use e2e::{viz::*, *};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use linkerd2_proxy_api::tap::{
    observe_request::{self, r#match as pm},
    tap_client::TapClient,
    tap_event, ObserveRequest, TapEvent,
};

const TAP_ID: &str = "tap.linkerd-viz.serviceaccount.identity.linkerd.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_families_carry_discovery_labels_and_grpc_failures_count_as_failures() {
    let fx = Fixture::new();
    let (gw, web, _dst) = mesh(&fx, &[]).await;
    let mut h2 = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let t = Traffic {
        web: 7,
        ok: 5,
        unavailable: 3,
        denied: 2,
    };
    send(&mut h2, &t).await;
    // The last response's end is counted as its body is sent: give the gateway a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = gw.metrics();

    // The edge to web-svc, as viz's service stats read it: outbound, by dst_* labels, with
    // the workload's identity.
    let web_out = [
        ("direction", "outbound"),
        ("authority", WEB),
        ("tls", "true"),
        ("server_id", WEB_ID),
        ("dst_namespace", "emojivoto"),
        ("dst_service", "web-svc"),
        ("dst_deployment", "web"),
        ("dst_serviceaccount", "web"),
    ];
    let pod = format!("pod-{}", web.addr.port());
    let mut labels = web_out.to_vec();
    labels.push(("dst_pod", &pod));
    assert_eq!(metric(&m, "request_total", &labels), t.web, "{m}");
    labels.push(("classification", "success"));
    assert_eq!(metric(&m, "response_total", &labels), t.web, "{m}");
    let target = web.addr.to_string();
    // The workload stand-in closes after each response: every connection the gateway
    // opened to it is counted open and closed.
    let tcp = |name: &str| {
        metric(
            &m,
            name,
            &[
                ("direction", "outbound"),
                ("peer", "dst"),
                ("server_id", WEB_ID),
                ("target_addr", &target),
                ("dst_service", "web-svc"),
            ],
        )
    };
    assert!(tcp("tcp_open_total") >= 1, "{m}");
    assert_eq!(
        tcp("tcp_open_total"),
        tcp("tcp_close_total") + tcp("tcp_open_connections"),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "tcp_write_bytes_total",
            &[
                ("direction", "outbound"),
                ("peer", "dst"),
                ("server_id", WEB_ID)
            ]
        ) > 0,
        "{m}"
    );

    // gRPC: HTTP 200 with grpc-status != 0 is a failure, by status, on both sides.
    for dir in ["inbound", "outbound"] {
        let emoji = [("direction", dir), ("authority", EMOJI)];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut l = emoji.to_vec();
            l.extend_from_slice(extra);
            metric(&m, "response_total", &l)
        };
        assert_eq!(
            with(&[("classification", "success"), ("grpc_status", "0")]),
            t.ok,
            "{dir}: {m}"
        );
        assert_eq!(
            with(&[("classification", "failure"), ("grpc_status", "14")]),
            t.unavailable,
            "{dir}: {m}"
        );
        assert_eq!(
            with(&[("classification", "failure"), ("grpc_status", "7")]),
            t.denied,
            "{dir}: trailers-only: {m}"
        );
        assert_eq!(
            with(&[("status_code", "200")]),
            t.ok + t.unavailable + t.denied,
            "{dir}: {m}"
        );
    }
    // The plaintext endpoint is labelled as such, with the reason.
    assert_eq!(
        metric(
            &m,
            "request_total",
            &[
                ("direction", "outbound"),
                ("authority", EMOJI),
                ("tls", "no_identity"),
                ("no_tls_reason", "not_provided_by_service_discovery"),
                ("dst_service", "emoji-svc"),
            ]
        ),
        t.ok + t.unavailable + t.denied,
        "{m}"
    );
    // Counts agree between the two sides, and the inbound side keeps its caller.
    let sum = |dir: &str| metric(&m, "response_total", &[("direction", dir)]);
    assert_eq!(sum("inbound"), sum("outbound"), "{m}");
    assert_eq!(
        metric(
            &m,
            "request_total",
            &[("direction", "inbound"), ("client_id", VOTE_BOT_ID)]
        ),
        t.web + t.ok + t.unavailable + t.denied,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mtls_probe_is_counted_like_any_request() {
    let fx = Fixture::new();
    let gw = Gateway::start(&fx, &[]);
    let mut send = h1_sender(gw.admin, client_tls(&fx, "vote-bot", &[]))
        .await
        .unwrap();
    for _ in 0..3 {
        send.ready().await.unwrap();
        let resp = send
            .send_request(
                Request::get("/ready")
                    .header("host", "gateway")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }
    let m = gw.metrics();
    let probe = [
        ("direction", "inbound"),
        ("client_id", VOTE_BOT_ID),
        ("status_code", "200"),
        ("classification", "success"),
    ];
    assert_eq!(metric(&m, "response_total", &probe), 3, "{m}");
}

/// A tonic client for the control port over mTLS with `stem`'s certificate.
async fn tap_client(
    fx: &Fixture,
    control: SocketAddr,
    stem: &str,
) -> TapClient<tonic::transport::Channel> {
    let tls = client_tls(fx, stem, &[b"h2"]);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let stream = connect(control, tls).await.map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{control}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .expect("control port connects");
    TapClient::new(channel)
}

fn path_prefix(prefix: &str) -> observe_request::Match {
    use observe_request::r#match::http as ph;
    observe_request::Match {
        r#match: Some(pm::Match::Http(pm::Http {
            r#match: Some(ph::Match::Path(ph::StringMatch {
                r#match: Some(ph::string_match::Match::Prefix(prefix.to_string())),
            })),
        })),
    }
}

fn http_event(e: &TapEvent) -> Option<&tap_event::http::Event> {
    match &e.event {
        Some(tap_event::Event::Http(h)) => h.event.as_ref(),
        None => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_serves_the_tap_controller_exactly_what_it_selected() {
    let fx = Fixture::new();
    fx.caller("tap", TAP_ID);
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (gw, _web, _dst) = mesh(
        &fx,
        &[
            "--control-listen",
            &control.to_string(),
            "--tap-svc-name",
            TAP_ID,
            "--access-log",
        ],
    )
    .await;

    // Another mesh identity completes the handshake and is refused per call.
    let mut stranger = tap_client(&fx, control, "vote-bot").await;
    let err = stranger
        .observe(ObserveRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect_err("only the tap controller may tap");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert_eq!(err.message(), "Unauthorized client");

    let mut tapper = tap_client(&fx, control, "tap").await;
    let bad = tapper
        .observe(ObserveRequest {
            limit: 0,
            ..Default::default()
        })
        .await
        .expect_err("a limit of 0 is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // Three gRPC calls selected by path; traffic to web-svc is not selected.
    let mut events = tapper
        .observe(ObserveRequest {
            limit: 3,
            r#match: Some(path_prefix("/grpc")),
            extract: Some(observe_request::Extract {
                extract: Some(observe_request::extract::Extract::Http(
                    observe_request::extract::Http {
                        extract: Some(observe_request::extract::http::Extract::Headers(
                            Default::default(),
                        )),
                    },
                )),
            }),
        })
        .await
        .expect("the tap controller may tap")
        .into_inner();
    let mut h2 = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    let t = Traffic {
        web: 4,
        ok: 2,
        unavailable: 3,
        denied: 0,
    };
    send(&mut h2, &t).await;

    let mut got = Vec::new();
    let read = async {
        while let Some(e) = events.message().await.expect("event") {
            got.push(e);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the stream ends once its limit is served");
    // Exactly three exchanges, each with its three events, none for web-svc.
    assert_eq!(got.len(), 9, "{got:#?}");
    let mut ends = Vec::new();
    for e in &got {
        let src = e.source.as_ref().expect("source");
        assert!(src.port > 0);
        let src_meta = &e.source_meta.as_ref().expect("source meta").labels;
        assert_eq!(
            src_meta.get("client_id").map(String::as_str),
            Some(VOTE_BOT_ID)
        );
        assert_eq!(src_meta.get("tls").map(String::as_str), Some("true"));
        let dst_meta = &e.destination_meta.as_ref().expect("dst meta").labels;
        assert_eq!(
            dst_meta.get("service").map(String::as_str),
            Some("emoji-svc")
        );
        match http_event(e).expect("http event") {
            tap_event::http::Event::RequestInit(r) => {
                assert_eq!(r.authority, EMOJI);
                assert!(r.path.starts_with("/grpc"), "{}", r.path);
                let headers = r.headers.as_ref().expect("headers were asked for");
                assert!(headers
                    .headers
                    .iter()
                    .any(|h| h.name == "content-type" && h.value == b"application/grpc"));
            }
            tap_event::http::Event::ResponseInit(r) => assert_eq!(r.http_status, 200),
            tap_event::http::Event::ResponseEnd(r) => {
                assert!(r.response_bytes > 0);
                ends.push(r.eos.and_then(|e| e.end));
            }
        }
    }
    use linkerd2_proxy_api::tap::eos::End;
    let statuses: Vec<u32> = ends
        .iter()
        .map(|e| match e {
            Some(End::GrpcStatusCode(c)) => *c,
            other => panic!("a gRPC end carries its status: {other:?}"),
        })
        .collect();
    assert_eq!(statuses, vec![0, 0, 14], "in the order sent");

    // A tap whose match selects nothing holds no request, and closing it leaves the
    // gateway idle again: traffic goes on unaffected.
    let idle = tapper
        .observe(ObserveRequest {
            limit: 10,
            r#match: Some(path_prefix("/nothing-here")),
            extract: None,
        })
        .await
        .expect("tap")
        .into_inner();
    send(
        &mut h2,
        &Traffic {
            web: 3,
            ok: 1,
            unavailable: 0,
            denied: 0,
        },
    )
    .await;
    drop(idle);

    // The access log carries the gRPC status, written when the response ended.
    let log = gw.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("access") && l.contains("grpc_status=14")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_taps_and_dashboards_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::new();
    fx.caller("tap", TAP_ID);
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // A drain deadline far longer than the test waits: only streams that end on their own
    // let the gateway exit in time.
    let (mut gw, _web, _dst) = mesh(
        &fx,
        &[
            "--control-listen",
            &control.to_string(),
            "--tap-svc-name",
            TAP_ID,
            "--drain-timeout",
            "60s",
        ],
    )
    .await;
    let mut tapper = tap_client(&fx, control, "tap").await;
    let mut events = tapper
        .observe(ObserveRequest {
            limit: 100,
            r#match: Some(path_prefix("/nothing-here")),
            extract: None,
        })
        .await
        .expect("tap")
        .into_inner();
    // A dashboard streaming its snapshots.
    let mut sse = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    sse.write_all(b"GET /dashboard/events HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: snapshot") {
        let n = tokio::time::timeout(Duration::from_secs(10), sse.read(&mut buf))
            .await
            .expect("a snapshot")
            .unwrap();
        assert!(n > 0, "stream closed early");
        seen.extend_from_slice(&buf[..n]);
    }

    let asked = std::time::Instant::now();
    gw.signal("TERM");
    let ended = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("the tap stream ends when the gateway drains");
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    let code = tokio::task::spawn_blocking(move || gw.wait(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "exit status");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "exited {:?} after SIGTERM",
        asked.elapsed()
    );
}
