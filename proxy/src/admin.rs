//! The admin server on 4191 (`/ready` and `/live` for kubelet, `/metrics` for Prometheus) and
//! the probe server on 4181, the only one the LoadBalancer publishes besides 4143: it answers
//! `/ready` to the remote service mirror's probe and nothing else, so what the cluster sees
//! (identities, service names, volumes) is not readable from the internet.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::{
    dashboard::{AdminBody, Dashboard},
    drain::Drain,
    errors::ConnError,
    listener::{Accepted, Listener},
    metrics::{ConnMetrics, Outcome},
    tls::{self, FirstByte},
};

/// Ready once credentials are loaded and listeners bound; not ready again while draining.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Which paths a server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Every admin path; for the cluster only (kubelet, Prometheus).
    Admin,
    /// `/ready` alone; published through the LoadBalancer for the remote probe.
    Probe,
}

impl Surface {
    /// The listener name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Surface::Admin => "admin",
            Surface::Probe => "probe",
        }
    }

    fn serves(self, path: &str) -> bool {
        match self {
            Surface::Admin => matches!(
                path,
                "/ready" | "/live" | "/metrics" | "/dashboard" | "/dashboard/events"
            ),
            Surface::Probe => path == "/ready",
        }
    }
}

pub struct Admin {
    pub surface: Surface,
    pub readiness: Arc<Readiness>,
    pub metrics: PrometheusHandle,
    /// mTLS for meshed callers (the remote service mirror's probe), beside plaintext.
    pub tls: Arc<rustls::ServerConfig>,
    pub identity: identity::Identity,
    pub handshake_timeout: std::time::Duration,
    /// Renders of `/metrics` at once: each holds the whole page in memory, so concurrent
    /// scrapes must not multiply it.
    pub renders: Arc<tokio::sync::Semaphore>,
    /// The live dashboard; `None` on the probe surface.
    pub dashboard: Option<Arc<Dashboard>>,
}

/// Concurrent `/metrics` renders per process.
pub const MAX_RENDERS: usize = 2;

impl Admin {
    /// The response, marked with `l5d-orig-proto` when a meshed caller's proxy upgraded the
    /// request from HTTP/1 (the probe arrives that way), so it can restore the version.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<AdminBody> {
        let mut resp = self.route(req);
        if req.headers().contains_key("l5d-orig-proto") {
            resp.headers_mut().insert(
                "l5d-orig-proto",
                header::HeaderValue::from_static("HTTP/1.1"),
            );
        }
        resp
    }

    fn route<B>(&self, req: &Request<B>) -> Response<AdminBody> {
        let text = |status: StatusCode, body: &'static str| {
            let mut r =
                Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain"),
            );
            r
        };
        let path = req.uri().path();
        if !self.surface.serves(path) {
            return text(StatusCode::NOT_FOUND, "");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match path {
            "/ready" if self.readiness.is_ready() => text(StatusCode::OK, "ready\n"),
            "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/live" => text(StatusCode::OK, "live\n"),
            "/dashboard" | "/dashboard/events" => match &self.dashboard {
                Some(_) if path == "/dashboard" => Dashboard::page(),
                Some(d) => d.events(),
                None => text(StatusCode::NOT_FOUND, ""),
            },
            _ => {
                let mut r = Response::new(
                    Full::new(Bytes::from(crate::metrics::render(&self.metrics))).boxed_unsync(),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
        }
    }
}

/// The admin server's HTTP settings: small requests, a few streams.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .max_buf_size(16 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(16)
        .keep_alive_interval(Some(std::time::Duration::from_secs(20)))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    builder
}

/// Serves the admin (or probe) port until draining begins. Each connection is told apart by its first
/// byte: a TLS handshake gets mTLS for this gateway's identity, anything else plaintext;
/// either way HTTP/1.1 or HTTP/2 prior knowledge follows.
pub async fn serve(listener: Listener, admin: Arc<Admin>, drain: Drain) {
    let builder = Arc::new(builder());
    listener
        .run(drain.clone(), move |accepted: Accepted| {
            let admin = admin.clone();
            let builder = builder.clone();
            let drain = drain.clone();
            async move {
                let peer = accepted.peer;
                let listener = admin.surface.name();
                if let Err(e) = admin.connection(accepted, &builder, &drain).await {
                    crate::metrics::conn_error(&e, listener);
                    if crate::log_limit::allow(listener, e.reason()) {
                        tracing::warn!(listener, %peer, reason = e.reason(), error = %e, "connection refused");
                    }
                }
            }
        })
        .await
}

impl Admin {
    async fn connection(
        self: Arc<Self>,
        accepted: Accepted,
        builder: &auto::Builder<TokioExecutor>,
        drain: &Drain,
    ) -> Result<(), ConnError> {
        let Accepted {
            tcp,
            peer,
            mut permit,
        } = accepted;
        // Meshed callers (the service mirror's probe) are counted like any caller of the
        // gateway: `request_total`/`response_total` with their identity.
        let svc = |counted: Option<Arc<ConnMetrics>>| {
            let admin = self.clone();
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let admin = admin.clone();
                let counted = counted.clone();
                async move {
                    let start = std::time::Instant::now();
                    let _render = if req.uri().path() == "/metrics" {
                        admin.renders.clone().acquire_owned().await.ok()
                    } else {
                        None
                    };
                    let resp = admin.respond(&req);
                    if let Some(m) = counted {
                        let h = m.exchange("", resp.status().as_u16(), None);
                        h.responded(start.elapsed());
                        h.ended(Outcome::Ended { grpc_status: None });
                    }
                    Ok::<_, Infallible>(resp)
                }
            })
        };
        // On the probe port every connection stays sheddable: a flood of silent connections
        // pushes out the oldest, not the next probe.
        let serve = async {
            let served = match tls::first_byte(&tcp, self.handshake_timeout).await? {
                FirstByte::Closed => return Ok(None),
                FirstByte::Tls => {
                    let (stream, caller) = tls::accept_caller(
                        tcp,
                        self.tls.clone(),
                        &self.identity,
                        self.handshake_timeout,
                    )
                    .await?;
                    let local = stream.get_ref().0.local_addr().ok();
                    let counted = Arc::new(ConnMetrics::accepted(caller.as_str(), local));
                    let conn = builder.serve_connection(TokioIo::new(stream), svc(Some(counted)));
                    drain
                        .serve_http(self.surface.name(), conn, |c| c.graceful_shutdown())
                        .await
                }
                FirstByte::Plaintext(_) => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc(None));
                    drain
                        .serve_http(self.surface.name(), conn, |c| c.graceful_shutdown())
                        .await
                }
            };
            Ok::<_, ConnError>(served)
        };
        let result = tokio::select! {
            r = serve => r?,
            _ = permit.shed() => return Err(ConnError::Shed),
        };
        if let Some(Err(e)) = result {
            tracing::debug!(%peer, error = %e, "admin connection error");
        }
        drop(permit);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_and_paths() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let pki = identity::Pki::new().unwrap();
        let gw = "gw.ns.serviceaccount.identity.linkerd.cluster.local";
        let store = identity::CertStore::new(&pki.credentials(gw).unwrap()).unwrap();
        let mut admin = Admin {
            surface: Surface::Admin,
            readiness: Arc::new(Readiness::default()),
            metrics: recorder.handle(),
            tls: Arc::new(
                identity::tls::server_config(store, &pki.anchors().unwrap(), &[]).unwrap(),
            ),
            identity: identity::Identity::parse(gw).unwrap(),
            handshake_timeout: std::time::Duration::from_secs(1),
            renders: Arc::new(tokio::sync::Semaphore::new(MAX_RENDERS)),
            dashboard: None,
        };
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(
            admin.respond(&get("/ready")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        admin.readiness.set(true);
        assert_eq!(admin.respond(&get("/ready")).status(), StatusCode::OK);
        assert_eq!(admin.respond(&get("/live")).status(), StatusCode::OK);
        assert_eq!(admin.respond(&get("/metrics")).status(), StatusCode::OK);
        assert_eq!(admin.respond(&get("/nope")).status(), StatusCode::NOT_FOUND);
        let post = Request::post("/ready").body(()).unwrap();
        assert_eq!(
            admin.respond(&post).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        admin.readiness.set(false);
        assert_eq!(
            admin.respond(&get("/ready")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // The probe surface answers /ready and nothing else.
        admin.surface = Surface::Probe;
        admin.readiness.set(true);
        assert_eq!(admin.respond(&get("/ready")).status(), StatusCode::OK);
        for path in [
            "/live",
            "/metrics",
            "/",
            "/ready/",
            "/dashboard",
            "/dashboard/events",
        ] {
            assert_eq!(
                admin.respond(&get(path)).status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }
}
