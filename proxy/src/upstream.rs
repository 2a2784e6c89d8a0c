//! Pooled clients to local services: HTTP/1.1 keep-alive pools and multiplexed HTTP/2, one
//! pool per endpoint address, with connect and response-header timeouts.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use crate::{errors::ProxyError, routing::Protocol};

#[derive(Debug, Clone, Copy)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// How long to wait for response headers (bodies stream for as long as they last).
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

#[derive(Clone)]
pub struct Upstreams {
    http1: Client<HttpConnector, Incoming>,
    http2: Client<HttpConnector, Incoming>,
    response_timeout: Duration,
}

impl Upstreams {
    pub fn new(cfg: UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let mut h1 = Client::builder(TokioExecutor::new());
        h1.pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_timeout)
            .pool_max_idle_per_host(cfg.max_idle_per_endpoint)
            // The caller's Host is forwarded as is; never replace it with the endpoint address.
            .set_host(false)
            .retry_canceled_requests(true);
        let mut h2 = Client::builder(TokioExecutor::new());
        h2.pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_timeout)
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_timeout(Duration::from_secs(3))
            .http2_adaptive_window(true)
            .set_host(false);
        Self {
            http1: h1.build(connector.clone()),
            http2: h2.build(connector),
            response_timeout: cfg.response_timeout,
        }
    }

    /// Sends `req` (whose URI already names the endpoint) and waits for response headers.
    pub async fn send(
        &self,
        protocol: Protocol,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let fut = match protocol {
            Protocol::Http1 => self.http1.request(req),
            Protocol::Http2 => self.http2.request(req),
        };
        match tokio::time::timeout(self.response_timeout, fut).await {
            Err(_) => Err(ProxyError::ResponseTimeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut timed_out = false;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    match (e.is_connect(), timed_out) {
        (true, true) => ProxyError::ConnectTimeout,
        (true, false) => ProxyError::Connect,
        _ => ProxyError::Upstream,
    }
}
