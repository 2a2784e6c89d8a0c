//! Stand-ins for Linkerd's control plane, built from the same API crate the real one speaks
//! (`linkerd2-proxy-api`'s tonic servers), served over plaintext HTTP/2 on loopback as a
//! Linkerd proxy expects for loopback control-plane addresses.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use identity::{Identity, LeafOptions, Pki, Validity};
use linkerd2_proxy_api::identity::{
    identity_server::{Identity as IdentityApi, IdentityServer},
    CertifyRequest, CertifyResponse,
};
use tokio::net::TcpListener;

/// The token the stub identity service accepts (what a projected token file holds).
pub const TOKEN: &str = "eyJ-test-token-for-linkerd-gateway";

/// What the stub identity service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityAnswer {
    /// Signs the request for the identity it names.
    Sign,
    /// A certificate for another workload (with another key).
    OtherWorkload,
    /// A certificate for the right name from a CA outside the mesh.
    ForeignAnchor,
    /// Bytes that are no certificate.
    Garbage,
    /// gRPC UNAVAILABLE.
    Unavailable,
}

struct IdentitySvc {
    pki: Arc<Pki>,
    foreign: Pki,
    leaf: LeafOptions,
    answer: Arc<Mutex<IdentityAnswer>>,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl IdentityApi for IdentitySvc {
    async fn certify(
        &self,
        req: tonic::Request<CertifyRequest>,
    ) -> Result<tonic::Response<CertifyResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let req = req.into_inner();
        if req.token != TOKEN.as_bytes() {
            return Err(tonic::Status::unauthenticated("bad token"));
        }
        let id = Identity::parse(&req.identity)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let answer = *self.answer.lock().unwrap_or_else(|p| p.into_inner());
        let issued = match answer {
            IdentityAnswer::Unavailable => return Err(tonic::Status::unavailable("stub is down")),
            IdentityAnswer::Garbage => {
                return Ok(tonic::Response::new(CertifyResponse {
                    leaf_certificate: b"garbage".to_vec(),
                    intermediate_certificates: vec![],
                    valid_until: None,
                }))
            }
            IdentityAnswer::Sign => identity::issue_for_request(
                self.pki.issuer_signer(),
                &req.certificate_signing_request,
                &id,
                self.leaf,
            ),
            IdentityAnswer::ForeignAnchor => identity::issue_for_request(
                self.foreign.issuer_signer(),
                &req.certificate_signing_request,
                &id,
                self.leaf,
            ),
            IdentityAnswer::OtherWorkload => {
                let other = Identity::parse(crate::VOTE_BOT_ID).expect("id");
                let g = identity::issue_leaf(self.pki.issuer_signer(), &other, self.leaf)
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                return Ok(tonic::Response::new(CertifyResponse {
                    leaf_certificate: g.cert_der.to_vec(),
                    intermediate_certificates: vec![],
                    valid_until: None,
                }));
            }
        }
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(CertifyResponse {
            leaf_certificate: issued.leaf.to_vec(),
            intermediate_certificates: issued.intermediates.iter().map(|c| c.to_vec()).collect(),
            valid_until: None,
        }))
    }
}

/// A stub `linkerd-identity` on loopback.
pub struct IdentityStub {
    pub addr: SocketAddr,
    answer: Arc<Mutex<IdentityAnswer>>,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl IdentityStub {
    /// Serves on `addr` (port 0 for any), signing with `pki`'s issuer leaves of `lifetime`
    /// (no clock-skew allowance, so short lifetimes are exact).
    pub async fn start(pki: Arc<Pki>, addr: SocketAddr, lifetime: Duration) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind identity stub");
        let addr = listener.local_addr().expect("addr");
        let answer = Arc::new(Mutex::new(IdentityAnswer::Sign));
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = IdentityServer::new(IdentitySvc {
            pki,
            foreign: Pki::with_names("root.other.example", "issuer.other.example").expect("pki"),
            leaf: LeafOptions {
                validity: Validity::from_now(lifetime),
                clock_skew: Duration::ZERO,
            },
            answer: answer.clone(),
            calls: calls.clone(),
        });
        let task = tokio::spawn(serve_grpc(listener, svc));
        Self {
            addr,
            answer,
            calls,
            task,
        }
    }

    pub fn answer(&self, a: IdentityAnswer) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = a;
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Stops accepting (connections already made stay until their peer goes).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for IdentityStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves a tonic service over plaintext HTTP/2 until the task is aborted.
pub async fn serve_grpc<S>(listener: TcpListener, svc: S)
where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        let svc = svc.clone();
        conns.spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc))
                .await;
        });
    }
}
