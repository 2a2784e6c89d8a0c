//! A small mesh for the observability tests (viz's queries, tap, the dashboard): the gateway
//! behind a destination stub that names two services, and traffic with known outcomes.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::{backend, control::*, mesh::MeshedWorkload, Fixture, Gateway};

pub const WEB: &str = "web-svc.emojivoto.svc.cluster.local:80";
pub const WEB_ID: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
pub const EMOJI: &str = "emoji-svc.emojivoto.svc.cluster.local:8080";

/// web-svc: one meshed endpoint; emoji-svc: one plaintext endpoint answering gRPC-shaped
/// calls with the status asked for.
pub async fn mesh(fx: &Fixture, extra: &[&str]) -> (Gateway, MeshedWorkload, DestinationStub) {
    let web = MeshedWorkload::start(&fx.pki, WEB_ID, false).await;
    let emoji = backend().await;
    let dst = DestinationStub::start("127.0.0.1:0".parse().unwrap()).await;
    dst.set(
        WEB,
        DestinationAnswer::Endpoints(vec![StubEndpoint {
            addr: web.addr,
            identity: Some(WEB_ID.to_string()),
            http2: false,
            opaque_transport: None,
        }]),
    );
    dst.set(
        EMOJI,
        DestinationAnswer::Endpoints(vec![StubEndpoint::plain(emoji)]),
    );
    let mut args = vec!["--destination-svc-addr".to_string(), dst.addr.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start(fx, &args);
    (gw, web, dst)
}

pub type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

pub async fn call(send: &mut H2, authority: &str, path: &str, grpc: bool) -> StatusCode {
    let mut req = Request::post(format!("http://{authority}{path}"));
    if grpc {
        req = req
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    let resp = send
        .send_request(
            req.body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
                .unwrap(),
        )
        .await
        .expect("response");
    let status = resp.status();
    resp.into_body().collect().await.expect("body");
    status
}

/// Traffic with known outcomes: `web` plain requests to web-svc, and to emoji-svc gRPC calls:
/// `ok` with status 0, `unavailable` with 14 in trailers, `denied` trailers-only with 7.
pub struct Traffic {
    pub web: u64,
    pub ok: u64,
    pub unavailable: u64,
    pub denied: u64,
}

pub async fn send(send: &mut H2, t: &Traffic) {
    for _ in 0..t.web {
        assert_eq!(call(send, WEB, "/", false).await, StatusCode::OK);
    }
    for _ in 0..t.ok {
        assert_eq!(call(send, EMOJI, "/grpc", true).await, StatusCode::OK);
    }
    for _ in 0..t.unavailable {
        assert_eq!(
            call(send, EMOJI, "/grpc?status=14", true).await,
            StatusCode::OK
        );
    }
    for _ in 0..t.denied {
        assert_eq!(
            call(send, EMOJI, "/grpc?status=7&only=1", true).await,
            StatusCode::OK
        );
    }
}

impl Traffic {
    /// Requests in all.
    pub fn total(&self) -> u64 {
        self.web + self.ok + self.unavailable + self.denied
    }
}
