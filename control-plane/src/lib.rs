//! A small stand-in for Linkerd's control plane, built from the same API crate the real one
//! speaks (`linkerd2-proxy-api`'s tonic servers): `linkerd-identity` (Certify, signing with an
//! issuer), `linkerd-destination` (Get, endpoints set by the caller) and `linkerd-policy`
//! (WatchPort). Served over plaintext HTTP/2 on loopback, as a Linkerd proxy expects for
//! loopback control-plane addresses, or over TLS. The end-to-end tests drive it to test the
//! gateway against each service's behaviours, good and bad; `cargo xtask demo` runs it in east.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

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
use identity::{Identity, LeafOptions, Pki, Signer, Validity};
use linkerd2_proxy_api::identity::{
    identity_server::{Identity as IdentityApi, IdentityServer},
    CertifyRequest, CertifyResponse,
};
use tokio::net::TcpListener;

/// A workload identity the identity service can wrongly answer with.
const OTHER_WORKLOAD: &str = "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local";

/// A channel receiver as a `Stream` (what tonic's streaming responses take).
pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

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
    /// An answer of several megabytes.
    Oversized,
}

struct IdentitySvc {
    issuer: Signer,
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
            IdentityAnswer::Oversized => {
                return Ok(tonic::Response::new(CertifyResponse {
                    leaf_certificate: vec![0x30; 3 * 1024 * 1024],
                    intermediate_certificates: vec![],
                    valid_until: None,
                }))
            }
            IdentityAnswer::Garbage => {
                return Ok(tonic::Response::new(CertifyResponse {
                    leaf_certificate: b"garbage".to_vec(),
                    intermediate_certificates: vec![],
                    valid_until: None,
                }))
            }
            IdentityAnswer::Sign => identity::issue_for_request(
                &self.issuer,
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
                let other = Identity::parse(OTHER_WORKLOAD).expect("id");
                let g = identity::issue_leaf(&self.issuer, &other, self.leaf)
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
        Self::start_with(pki, addr, lifetime, None).await
    }

    /// As [`start`](Self::start), over TLS with `tls` (the identity service asks no client
    /// certificate: its callers have none yet).
    pub async fn start_with(
        pki: Arc<Pki>,
        addr: SocketAddr,
        lifetime: Duration,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let issuer = Signer::from_pem(
            pki.issuer.cert_pem.as_bytes(),
            pki.issuer.key_pem.as_bytes(),
            "issuer",
        )
        .expect("issuer");
        Self::with_issuer(issuer, addr, lifetime, tls).await
    }

    /// Signs with `issuer` (a mesh's issuer, loaded from its files).
    pub async fn with_issuer(
        issuer: Signer,
        addr: SocketAddr,
        lifetime: Duration,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind identity stub");
        let addr = listener.local_addr().expect("addr");
        let answer = Arc::new(Mutex::new(IdentityAnswer::Sign));
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = IdentityServer::new(IdentitySvc {
            issuer,
            foreign: Pki::with_names("root.other.example", "issuer.other.example").expect("pki"),
            leaf: LeafOptions {
                validity: Validity::from_now(lifetime),
                clock_skew: Duration::ZERO,
            },
            answer: answer.clone(),
            calls: calls.clone(),
        });
        let task = tokio::spawn(serve_grpc_with(listener, svc, tls));
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
    serve_grpc_with(listener, svc, None).await
}

/// A server TLS config for a control-plane service: `identity`'s certificate from `pki`,
/// TLS 1.3, with or without requiring a mesh client certificate.
pub fn control_tls(pki: &Pki, identity: &str, require_client: bool) -> Arc<rustls::ServerConfig> {
    let store =
        identity::CertStore::new(&pki.credentials(identity).expect("credentials")).expect("store");
    if require_client {
        return Arc::new(
            identity::tls::server_config(store, &pki.anchors().expect("anchors"), &[])
                .expect("server config"),
        );
    }
    Arc::new(
        rustls::ServerConfig::builder_with_provider(identity::tls::provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_cert_resolver(store),
    )
}

/// Which of a stub's accepted connections (counted from 0) a call came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionNumber(pub usize);

/// Serves a tonic service over HTTP/2, over TLS when `tls` is given, until aborted.
pub async fn serve_grpc_with<S>(
    listener: TcpListener,
    svc: S,
    tls: Option<Arc<rustls::ServerConfig>>,
) where
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
    let mut accepted = 0;
    loop {
        // A failed accept (a connection reset before it was taken, no fd left) is that
        // connection's; the service goes on.
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let svc = svc.clone();
        let tls = tls.clone();
        let number = ConnectionNumber(accepted);
        accepted += 1;
        conns.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new()).http2_only();
            let svc = TowerToHyperService::new(svc);
            // Each call knows its connection, so a stub can misbehave on one and not others.
            let svc =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(number);
                    hyper::service::Service::call(&svc, req)
                });
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                }
                Some(config) => {
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                    else {
                        return;
                    };
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
        });
    }
}

/// What the stub destination service says about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationAnswer {
    Endpoints(Vec<StubEndpoint>),
    NoEndpoints {
        exists: bool,
    },
    /// An update that no client should accept (an endpoint whose identity is no name).
    Invalid,
}

/// One endpoint as the stub announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StubEndpoint {
    pub addr: SocketAddr,
    pub identity: Option<String>,
    pub http2: bool,
    pub opaque_transport: Option<u16>,
}

impl StubEndpoint {
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
            http2: false,
            opaque_transport: None,
        }
    }

    fn weighted(&self) -> linkerd2_proxy_api::destination::WeightedAddr {
        use linkerd2_proxy_api::destination::{
            protocol_hint, tls_identity, ProtocolHint, TlsIdentity,
        };
        linkerd2_proxy_api::destination::WeightedAddr {
            addr: Some(self.addr.into()),
            weight: 10_000,
            tls_identity: self.identity.as_ref().map(|n| TlsIdentity {
                strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
                    tls_identity::DnsLikeIdentity { name: n.clone() },
                )),
                server_name: None,
            }),
            protocol_hint: (self.http2 || self.opaque_transport.is_some()).then(|| ProtocolHint {
                protocol: if self.http2 {
                    Some(protocol_hint::Protocol::H2(protocol_hint::H2 {}))
                } else {
                    Some(protocol_hint::Protocol::Opaque(protocol_hint::Opaque {}))
                },
                opaque_transport: self
                    .opaque_transport
                    .map(|p| protocol_hint::OpaqueTransport {
                        inbound_port: p as u32,
                    }),
            }),
            // As Linkerd's destination controller labels a pod of a Deployment; the service
            // account is the identity's first label.
            metric_labels: [
                ("pod".to_string(), format!("pod-{}", self.addr.port())),
                ("deployment".to_string(), "web".to_string()),
                (
                    "serviceaccount".to_string(),
                    self.identity
                        .as_deref()
                        .and_then(|i| i.split('.').next())
                        .unwrap_or("default")
                        .to_string(),
                ),
            ]
            .into(),
            ..Default::default()
        }
    }
}

type Answers = std::collections::HashMap<String, DestinationAnswer>;

/// The set's labels as the destination controller sends them: the service and its namespace,
/// read from the name asked for (`web-svc.emojivoto.svc.cluster.local:80`).
fn set_labels(path: &str) -> std::collections::HashMap<String, String> {
    let mut parts = path.split(['.', ':']);
    let service = parts.next().unwrap_or_default().to_string();
    let namespace = parts.next().unwrap_or_default().to_string();
    [
        ("namespace".to_string(), namespace),
        ("service".to_string(), service),
    ]
    .into()
}

struct DestinationSvc {
    answers: tokio::sync::watch::Receiver<Answers>,
    gets: Arc<AtomicUsize>,
    /// Gets still to leave unanswered (see [`DestinationStub::leave_unanswered`]).
    unanswered: Arc<AtomicUsize>,
    /// Connections whose Gets are all left unanswered: those numbered below this.
    silent_connections: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl linkerd2_proxy_api::destination::destination_server::Destination for DestinationSvc {
    type GetStream = ReceiverStream<Result<linkerd2_proxy_api::destination::Update, tonic::Status>>;
    type GetProfileStream =
        ReceiverStream<Result<linkerd2_proxy_api::destination::DestinationProfile, tonic::Status>>;

    async fn get(
        &self,
        req: tonic::Request<linkerd2_proxy_api::destination::GetDestination>,
    ) -> Result<tonic::Response<Self::GetStream>, tonic::Status> {
        use linkerd2_proxy_api::destination::{
            update, AddrSet, NoEndpoints, Update, WeightedAddrSet,
        };
        self.gets.fetch_add(1, Ordering::SeqCst);
        let on_silent_connection = req
            .extensions()
            .get::<ConnectionNumber>()
            .is_some_and(|n| n.0 < self.silent_connections.load(Ordering::SeqCst));
        let path = req.into_inner().path;
        let mut answers = self.answers.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let hang = self
            .unanswered
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hang || on_silent_connection {
            // The stream is open and says nothing, for as long as the caller keeps it.
            tokio::spawn(async move { tx.closed().await });
            return Ok(tonic::Response::new(ReceiverStream(rx)));
        }
        tokio::spawn(async move {
            // What this stream has announced so far, to send differences as Linkerd does.
            let mut sent: Vec<StubEndpoint> = Vec::new();
            loop {
                let answer = answers.borrow_and_update().get(&path).cloned();
                let updates: Vec<Update> = match answer {
                    None => vec![Update {
                        update: Some(update::Update::NoEndpoints(NoEndpoints { exists: false })),
                    }],
                    Some(DestinationAnswer::NoEndpoints { exists }) => {
                        sent.clear();
                        vec![Update {
                            update: Some(update::Update::NoEndpoints(NoEndpoints { exists })),
                        }]
                    }
                    Some(DestinationAnswer::Invalid) => vec![Update {
                        update: Some(update::Update::Add(WeightedAddrSet {
                            addrs: vec![StubEndpoint {
                                addr: "10.9.9.9:80".parse().expect("addr"),
                                identity: Some("not a name!".into()),
                                http2: false,
                                opaque_transport: None,
                            }
                            .weighted()],
                            metric_labels: Default::default(),
                        })),
                    }],
                    Some(DestinationAnswer::Endpoints(now)) => {
                        // By address: an endpoint whose metadata changed is re-added,
                        // not removed.
                        let removed: Vec<_> = sent
                            .iter()
                            .filter(|e| !now.iter().any(|n| n.addr == e.addr))
                            .map(|e| e.addr.into())
                            .collect();
                        let added: Vec<_> = now
                            .iter()
                            .filter(|e| !sent.contains(e))
                            .map(StubEndpoint::weighted)
                            .collect();
                        sent = now;
                        let mut u = Vec::new();
                        if !added.is_empty() {
                            u.push(Update {
                                update: Some(update::Update::Add(WeightedAddrSet {
                                    addrs: added,
                                    metric_labels: set_labels(&path),
                                })),
                            });
                        }
                        if !removed.is_empty() {
                            u.push(Update {
                                update: Some(update::Update::Remove(AddrSet { addrs: removed })),
                            });
                        }
                        u
                    }
                };
                for u in updates {
                    if tx.send(Ok(u)).await.is_err() {
                        return;
                    }
                }
                if answers.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream(rx)))
    }

    async fn get_profile(
        &self,
        _req: tonic::Request<linkerd2_proxy_api::destination::GetDestination>,
    ) -> Result<tonic::Response<Self::GetProfileStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "profiles are not served by this stub",
        ))
    }
}

/// A stub `linkerd-destination` on loopback; the test sets what it answers per name.
pub struct DestinationStub {
    pub addr: SocketAddr,
    answers: tokio::sync::watch::Sender<Answers>,
    gets: Arc<AtomicUsize>,
    unanswered: Arc<AtomicUsize>,
    silent_connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DestinationStub {
    pub async fn start(addr: SocketAddr) -> Self {
        Self::start_with(addr, None).await
    }

    /// As [`start`](Self::start), over TLS with `tls`.
    pub async fn start_with(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind destination stub");
        let addr = listener.local_addr().expect("addr");
        let (answers, rx) = tokio::sync::watch::channel(Answers::new());
        let gets = Arc::new(AtomicUsize::new(0));
        let unanswered = Arc::new(AtomicUsize::new(0));
        let silent_connections = Arc::new(AtomicUsize::new(0));
        let svc = linkerd2_proxy_api::destination::destination_server::DestinationServer::new(
            DestinationSvc {
                answers: rx,
                gets: gets.clone(),
                unanswered: unanswered.clone(),
                silent_connections: silent_connections.clone(),
            },
        );
        let task = tokio::spawn(serve_grpc_with(listener, svc, tls));
        Self {
            addr,
            answers,
            gets,
            unanswered,
            silent_connections,
            task,
        }
    }

    /// The next `n` `Get` calls open their stream and never send an update: a controller
    /// that accepted the watch and went quiet.
    pub fn leave_unanswered(&self, n: usize) {
        self.unanswered.store(n, Ordering::SeqCst);
    }

    /// Every `Get` on the first `n` connections the stub accepts opens and hears nothing,
    /// while the connection itself (HTTP/2, PINGs) stays healthy: a wedged replica.
    pub fn silence_first_connections(&self, n: usize) {
        self.silent_connections.store(n, Ordering::SeqCst);
    }

    /// Sets the answer for `authority` (`name:port`); open streams get the difference.
    pub fn set(&self, authority: &str, answer: DestinationAnswer) {
        self.answers.send_modify(|a| {
            a.insert(authority.to_string(), answer);
        });
    }

    /// `Get` calls so far.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// Kills the service and every stream it serves.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for DestinationStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The gateway server's policy as the stub policy service serves it: who may call.
#[derive(Debug, Clone)]
pub enum PolicyAnswer {
    /// Mesh identities: exact names and suffixes (e.g. `emojivoto.serviceaccount...`).
    Identities {
        exact: Vec<String>,
        suffixes: Vec<String>,
    },
    /// Bytes the client must refuse (a prefix length no network has).
    Invalid,
}

fn policy_server(answer: &PolicyAnswer) -> linkerd2_proxy_api::inbound::Server {
    use linkerd2_proxy_api::{
        inbound::{self as pb, authn, proxy_protocol, ProxyProtocol},
        net::IpNetwork,
    };
    let (exact, suffixes, prefix_len) = match answer {
        PolicyAnswer::Identities { exact, suffixes } => (exact.clone(), suffixes.clone(), 0),
        PolicyAnswer::Invalid => (vec![], vec![], 99),
    };
    pb::Server {
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: None,
                http_routes: vec![],
                http_local_rate_limit: None,
            })),
        }),
        server_ips: vec![],
        authorizations: vec![pb::Authz {
            networks: vec![pb::Network {
                net: Some(IpNetwork {
                    ip: Some(std::net::IpAddr::from([0, 0, 0, 0]).into()),
                    prefix_len,
                }),
                except: vec![],
            }],
            authentication: Some(pb::Authn {
                permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
                    clients: Some(authn::permit_mesh_tls::Clients::Identities(
                        authn::permit_mesh_tls::PermitClientIdentities {
                            identities: exact
                                .into_iter()
                                .map(|name| pb::Identity { name })
                                .collect(),
                            suffixes: suffixes
                                .into_iter()
                                .map(|s| pb::IdentitySuffix {
                                    parts: s.split('.').map(String::from).collect(),
                                })
                                .collect(),
                        },
                    )),
                })),
            }),
            labels: [
                ("kind".to_string(), "authorizationpolicy".to_string()),
                ("name".to_string(), "linkerd-gateway".to_string()),
            ]
            .into(),
            metadata: None,
        }],
        labels: [
            ("kind".to_string(), "server".to_string()),
            ("name".to_string(), "linkerd-gateway".to_string()),
        ]
        .into(),
    }
}

struct PolicySvc {
    answer: tokio::sync::watch::Receiver<PolicyAnswer>,
    watches: Arc<Mutex<Vec<(String, u32)>>>,
    /// Connections whose watches are all left unanswered: those numbered below this.
    silent_connections: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl linkerd2_proxy_api::inbound::inbound_server_policies_server::InboundServerPolicies
    for PolicySvc
{
    async fn get_port(
        &self,
        _req: tonic::Request<linkerd2_proxy_api::inbound::PortSpec>,
    ) -> Result<tonic::Response<linkerd2_proxy_api::inbound::Server>, tonic::Status> {
        Ok(tonic::Response::new(policy_server(&self.answer.borrow())))
    }

    type WatchPortStream =
        ReceiverStream<Result<linkerd2_proxy_api::inbound::Server, tonic::Status>>;

    async fn watch_port(
        &self,
        req: tonic::Request<linkerd2_proxy_api::inbound::PortSpec>,
    ) -> Result<tonic::Response<Self::WatchPortStream>, tonic::Status> {
        let silent = req
            .extensions()
            .get::<ConnectionNumber>()
            .is_some_and(|n| n.0 < self.silent_connections.load(Ordering::SeqCst));
        let spec = req.into_inner();
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((spec.workload, spec.port));
        let mut answer = self.answer.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        if silent {
            // The stream is open and says nothing, for as long as the caller keeps it.
            tokio::spawn(async move { tx.closed().await });
            return Ok(tonic::Response::new(ReceiverStream(rx)));
        }
        tokio::spawn(async move {
            loop {
                let server = policy_server(&answer.borrow_and_update());
                if tx.send(Ok(server)).await.is_err() || answer.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream(rx)))
    }
}

/// A stub `linkerd-policy` on loopback serving one policy for every port.
pub struct PolicyStub {
    pub addr: SocketAddr,
    answer: tokio::sync::watch::Sender<PolicyAnswer>,
    watches: Arc<Mutex<Vec<(String, u32)>>>,
    silent_connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyStub {
    pub async fn start(answer: PolicyAnswer) -> Self {
        Self::start_at("127.0.0.1:0".parse().expect("addr"), answer).await
    }

    /// As [`start`](Self::start), on `addr`.
    pub async fn start_at(addr: SocketAddr, answer: PolicyAnswer) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind policy stub");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::watch::channel(answer);
        let watches = Arc::new(Mutex::new(Vec::new()));
        let silent_connections = Arc::new(AtomicUsize::new(0));
        let svc = linkerd2_proxy_api::inbound::inbound_server_policies_server::InboundServerPoliciesServer::new(
            PolicySvc {
                answer: rx,
                watches: watches.clone(),
                silent_connections: silent_connections.clone(),
            },
        );
        let task = tokio::spawn(serve_grpc(listener, svc));
        Self {
            addr,
            answer: tx,
            watches,
            silent_connections,
            task,
        }
    }

    /// Every watch on the first `n` connections the stub accepts opens and hears nothing,
    /// while the connection itself (HTTP/2, PINGs) stays healthy: a wedged replica.
    pub fn silence_first_connections(&self, n: usize) {
        self.silent_connections.store(n, Ordering::SeqCst);
    }

    pub fn set(&self, answer: PolicyAnswer) {
        let _ = self.answer.send(answer);
    }

    /// `(workload, port)` of every WatchPort call so far.
    pub fn watches(&self) -> Vec<(String, u32)> {
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for PolicyStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}
