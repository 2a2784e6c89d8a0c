//! The control port (4190): `io.linkerd.proxy.tap.Tap/Observe` over mTLS, for viz's tap
//! controller alone. Any other identity completes the handshake (its certificate chains to
//! the trust anchors) and is answered `UNAUTHENTICATED "Unauthorized client"` on every call,
//! as Linkerd's proxy answers; a caller without a certificate is refused in the handshake.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use identity::Identity;
use linkerd2_proxy_api::tap::{
    observe_request::extract,
    tap_server::{Tap, TapServer},
    ObserveRequest, TapEvent,
};
use tokio::sync::mpsc;

use super::{Match, TapGuard, Taps};
use crate::{
    drain::Drain,
    errors::ConnError,
    listener::{Accepted, Listener},
    tls,
};

/// Concurrent connections to the control port: the tap controller's replicas, a few each.
pub const MAX_CONNECTIONS: usize = 32;

/// Observe requests larger than this are refused: a match is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub struct ControlServer {
    pub taps: Arc<Taps>,
    pub tls: Arc<rustls::ServerConfig>,
    pub identity: Identity,
    /// The one identity that may tap.
    pub tap_client: Identity,
    pub handshake_timeout: Duration,
}

/// The gRPC service behind an authorized connection.
struct TapApi {
    taps: Arc<Taps>,
    drain: Drain,
}

/// One tap's events, as the response stream; the tap closes when the stream is dropped.
/// Draining ends it, so an open tap does not hold the gateway until the drain deadline.
pub struct Events {
    rx: mpsc::Receiver<TapEvent>,
    _guard: TapGuard,
    draining: BoxFuture<'static, ()>,
}

impl futures_util::Stream for Events {
    type Item = Result<TapEvent, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.draining.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|e| e.map(Ok))
    }
}

#[tonic::async_trait]
impl Tap for TapApi {
    type ObserveStream = Events;

    async fn observe(
        &self,
        req: tonic::Request<ObserveRequest>,
    ) -> Result<tonic::Response<Events>, tonic::Status> {
        let req = req.into_inner();
        let matcher = Match::compile(req.r#match)
            .map_err(|e| tonic::Status::invalid_argument(format!("invalid match: {e}")))?;
        let headers = matches!(
            req.extract.and_then(|e| e.extract),
            Some(extract::Extract::Http(extract::Http {
                extract: Some(extract::http::Extract::Headers(_))
            }))
        );
        let (rx, guard) =
            self.taps
                .open(Some(req.limit), matcher, headers)
                .map_err(|e| match e {
                    super::OpenError::NoLimit => tonic::Status::invalid_argument(e.to_string()),
                    super::OpenError::TooMany => tonic::Status::resource_exhausted(e.to_string()),
                })?;
        tracing::info!(limit = req.limit, headers, "tap opened");
        let drain = self.drain.clone();
        Ok(tonic::Response::new(Events {
            rx,
            _guard: guard,
            draining: Box::pin(async move { drain.draining().await }),
        }))
    }
}

/// What a connection is served: the tap API, or a refusal naming the caller.
#[derive(Clone)]
enum ControlService {
    Tap(TapServer<TapApi>),
    Denied(Arc<str>),
}

impl tower_service::Service<http::Request<hyper::body::Incoming>> for ControlService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        match self {
            ControlService::Tap(api) => api.call(req),
            ControlService::Denied(caller) => {
                tracing::debug!(client_id = %caller, "tap call refused");
                let status = tonic::Status::unauthenticated("Unauthorized client");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http2()
        .max_concurrent_streams(16)
        .max_header_list_size(16 * 1024);
    b.http2_only()
}

impl ControlServer {
    /// Serves the control port until draining begins.
    pub async fn run(self, listener: Listener, drain: Drain) {
        let this = Arc::new(self);
        let api = TapServer::new(TapApi {
            taps: this.taps.clone(),
            drain: drain.clone(),
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        let builder = Arc::new(builder());
        listener
            .run(drain.clone(), move |accepted: Accepted| {
                let this = this.clone();
                let api = api.clone();
                let builder = builder.clone();
                let drain = drain.clone();
                async move {
                    let peer = accepted.peer;
                    if let Err(e) = this.connection(accepted, api, &builder, &drain).await {
                        crate::metrics::conn_error(&e, "control");
                        if crate::log_limit::allow("control", e.reason()) {
                            tracing::warn!(listener = "control", %peer, reason = e.reason(), error = %e, "connection refused");
                        }
                    }
                }
            })
            .await
    }

    async fn connection(
        &self,
        accepted: Accepted,
        api: TapServer<TapApi>,
        builder: &auto::Builder<TokioExecutor>,
        drain: &Drain,
    ) -> Result<(), ConnError> {
        let Accepted { tcp, peer, permit } = accepted;
        let (stream, caller) = tls::accept_caller(
            tcp,
            self.tls.clone(),
            &self.identity,
            self.handshake_timeout,
        )
        .await?;
        let allowed = caller == self.tap_client;
        if !allowed {
            tracing::warn!(%peer, client_id = %caller, "tap refused: not the tap controller's identity");
            metrics::counter!("gateway_tap_refused_total").increment(1);
        }
        let svc = if allowed {
            ControlService::Tap(api)
        } else {
            ControlService::Denied(caller.as_str().into())
        };
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        if let Some(Err(e)) = drain
            .serve_http("control", conn, |c| c.graceful_shutdown())
            .await
        {
            tracing::debug!(%peer, error = %e, "control connection error");
        }
        drop(permit);
        Ok(())
    }
}
