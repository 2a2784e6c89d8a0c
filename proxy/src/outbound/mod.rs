//! Outbound mode: what a Linkerd sidecar does for a workload in the source cluster, for
//! workloads that have none. It accepts plaintext HTTP from local clients, maps the authority
//! they use (the mirrored name, e.g. `web-svc-east`) to the remote service
//! (`web-svc.emojivoto.svc.cluster.local:80`), and sends the request to the remote gateway over
//! mTLS with ALPN `transport.l5d.io/v1`, a transport header and HTTP/2 carrying
//! `l5d-orig-proto`, exactly as a source proxy does. One multiplexed connection per remote.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use identity::{CertStore, Identity, TrustAnchors};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use transport_header::{Header, SessionProtocol};

use crate::{
    authority::Authority,
    drain::Drain,
    headers::{request_authority, retarget, strip_hop_by_hop, L5D_ORIG_PROTO, L5D_PROXY_ERROR},
    listener::{Accepted, Listener},
};

pub type Body = Either<Incoming, Full<Bytes>>;

/// A remote service reached through the gateway.
pub struct Remote {
    pub name: Authority,
    /// `name` parsed once for request URIs.
    uri_authority: http::uri::Authority,
    header: Vec<u8>,
    sender: Mutex<Option<SendRequest<Incoming>>>,
}

pub struct Outbound {
    pub gateway: SocketAddr,
    pub gateway_id: Identity,
    tls: Arc<rustls::ClientConfig>,
    remotes: HashMap<Authority, Arc<Remote>>,
    connect_timeout: Duration,
    next_id: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("connect to gateway {0} failed: {1}")]
    Connect(SocketAddr, String),
    #[error(
        "gateway {0} did not select transport.l5d.io/v1 (is it a Linkerd-compatible gateway?)"
    )]
    NoTransportAlpn(SocketAddr),
    #[error("gateway request failed: {0}")]
    Request(String),
}

impl Outbound {
    /// `remotes` maps a local authority to the remote one.
    pub fn new(
        gateway: SocketAddr,
        gateway_id: Identity,
        store: Arc<CertStore>,
        anchors: &TrustAnchors,
        remotes: Vec<(Authority, Authority)>,
        connect_timeout: Duration,
    ) -> identity::Result<Self> {
        let tls = identity::tls::client_config(
            Some(store),
            anchors,
            gateway_id.clone(),
            &[transport_header::ALPN],
        )?;
        let remotes = remotes
            .into_iter()
            .map(|(local, remote)| {
                let header = Header {
                    port: remote.port(),
                    name: Some(remote.host().to_string()),
                    protocol: Some(SessionProtocol::Http2),
                }
                .encode();
                let uri_authority = remote.as_str().parse().map_err(|_| {
                    identity::Error::Validity(format!("remote {remote} is not a valid authority"))
                })?;
                let r = Arc::new(Remote {
                    uri_authority,
                    name: remote,
                    header,
                    sender: Mutex::new(None),
                });
                Ok((local, r))
            })
            .collect::<identity::Result<_>>()?;
        Ok(Self {
            gateway,
            gateway_id,
            tls: Arc::new(tls),
            remotes,
            connect_timeout,
            next_id: AtomicU64::new(1),
        })
    }

    fn cached(&self, remote: &Remote) -> Option<SendRequest<Incoming>> {
        let guard = remote.sender.lock().ok()?;
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    async fn sender(&self, remote: &Remote) -> Result<SendRequest<Incoming>, OutboundError> {
        if let Some(s) = self.cached(remote) {
            return Ok(s);
        }
        let connect = async {
            let tcp = TcpStream::connect(self.gateway).await?;
            tcp.set_nodelay(true)?;
            let sni = identity::tls::server_name(&self.gateway_id)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(sni, tcp)
                .await
        };
        let mut tls = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| OutboundError::Connect(self.gateway, "timed out".into()))?
            .map_err(|e| OutboundError::Connect(self.gateway, e.to_string()))?;
        if tls.get_ref().1.alpn_protocol() != Some(transport_header::ALPN) {
            return Err(OutboundError::NoTransportAlpn(self.gateway));
        }
        tls.write_all(&remote.header)
            .await
            .map_err(|e| OutboundError::Connect(self.gateway, e.to_string()))?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // What Linkerd peers do: ping every 10 s, give up after 3 s, even when idle.
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .adaptive_window(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| OutboundError::Connect(self.gateway, e.to_string()))?;
        let gateway = self.gateway;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%gateway, error = %e, "gateway connection ended");
            }
        });
        if let Ok(mut g) = remote.sender.lock() {
            *g = Some(send.clone());
        }
        Ok(send)
    }

    /// One request from a local client.
    pub async fn handle(
        self: Arc<Self>,
        src: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let remote = request_authority(&req)
            .ok()
            .and_then(|a| self.remotes.get(&a).cloned());
        let Some(remote) = remote else {
            return Ok(error(
                StatusCode::NOT_FOUND,
                "no remote service for this authority",
            ));
        };
        tracing::info!(
            target: "tap",
            "req id={id} proxy=out src={src} dst={} tls=true :method={method} :authority={} :path={path}",
            self.gateway, remote.name
        );
        let resp = match self.forward(&remote, req).await {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => {
                tracing::warn!(%src, gateway = %self.gateway, error = %e, "outbound request failed");
                error(StatusCode::BAD_GATEWAY, "gateway unreachable")
            }
        };
        tracing::info!(
            target: "tap",
            "rsp id={id} proxy=out src={src} dst={} tls=true :status={} latency={}µs",
            self.gateway,
            resp.status().as_u16(),
            started.elapsed().as_micros()
        );
        Ok(resp)
    }

    async fn forward(
        &self,
        remote: &Remote,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, OutboundError> {
        let (mut parts, body) = req.into_parts();
        let orig = match parts.version {
            Version::HTTP_10 => Some("HTTP/1.0"),
            Version::HTTP_11 => Some("HTTP/1.1"),
            _ => None,
        };
        parts.uri = retarget(&parts.uri, remote.uri_authority.clone())
            .map_err(|e| OutboundError::Request(e.to_string()))?;
        parts.version = Version::HTTP_2;
        strip_hop_by_hop(&mut parts.headers, false);
        parts.headers.remove(header::HOST);
        if let Some(orig) = orig {
            parts
                .headers
                .insert(L5D_ORIG_PROTO, HeaderValue::from_static(orig));
        }
        let mut sender = self.sender(remote).await?;
        let result = sender.send_request(Request::from_parts(parts, body)).await;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                // Drop the connection so the next request dials afresh.
                if let Ok(mut g) = remote.sender.lock() {
                    *g = None;
                }
                return Err(OutboundError::Request(e.to_string()));
            }
        };
        resp.headers_mut().remove(L5D_ORIG_PROTO);
        if let Some(e) = resp.headers().get(L5D_PROXY_ERROR) {
            tracing::warn!(gateway = %self.gateway, error = ?e, status = resp.status().as_u16(), "gateway refused the request");
        }
        Ok(resp)
    }
}

fn error(status: StatusCode, reason: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!("{reason}\n")))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Serves local plaintext clients (HTTP/1.1 or h2c) until draining begins; their connections
/// then finish the requests in flight.
pub async fn serve(listener: Listener, outbound: Arc<Outbound>, drain: Drain) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    listener
        .run(drain.clone(), move |accepted: Accepted| {
            let outbound = outbound.clone();
            let builder = builder.clone();
            let drain = drain.clone();
            async move {
                let Accepted { tcp, peer, permit } = accepted;
                let svc = hyper::service::service_fn(move |req| outbound.clone().handle(peer, req));
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                if let Some(Err(e)) = drain
                    .serve_http("outbound", conn, |c| c.graceful_shutdown())
                    .await
                {
                    tracing::debug!(%peer, error = %e, "client connection error");
                }
                drop(permit);
            }
        })
        .await
}
