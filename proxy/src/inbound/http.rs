//! HTTP on a caller's connection: the hyper server for the session's version, and for each
//! request the admission checks, the route, header rewriting, forwarding (upgrades included),
//! synthetic errors and the access-log line.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration, time::Instant};

use bytes::Bytes;
use http::{
    header::{self, HeaderValue},
    Request, Response, StatusCode, Version,
};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::HttpVersion;
use crate::{
    admission,
    context::{ConnCtx, Gateway},
    errors::ProxyError,
    headers::{
        is_upgrade, origin_form, parse_orig_proto, request_authority, retarget, strip_hop_by_hop,
        FORWARDED, L5D_CLIENT_ID, L5D_ORIG_PROTO, L5D_PROXY_CONNECTION, L5D_PROXY_ERROR,
    },
    metrics,
    routing::{Protocol, Target},
    splice::{splice, Spliced},
    upstream::UpstreamBody,
};

pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// Limits on every caller's HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// HTTP/1 keep-alive connections must send the next request's headers within this.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_concurrent_streams: u32,
}

/// The three hyper servers a connection may get, built once.
pub struct HttpServers {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    detect: auto::Builder<TokioExecutor>,
}

impl HttpServers {
    pub fn new(limits: &HttpLimits) -> Self {
        Self {
            h1: builder(limits).http1_only(),
            h2: builder(limits).http2_only(),
            detect: builder(limits),
        }
    }

    fn get(&self, version: HttpVersion) -> &auto::Builder<TokioExecutor> {
        match version {
            HttpVersion::Http1 => &self.h1,
            HttpVersion::Http2 => &self.h2,
            HttpVersion::Detect => &self.detect,
        }
    }
}

fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        // Left at hyper's default of 100 headers: that array lives on the stack, while an
        // explicit limit makes hyper allocate and zero one for every request.
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        // Answering PINGs is automatic; our own detect callers that vanished.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10))
        .adaptive_window(true)
        .max_pending_accept_reset_streams(Some(64));
    b
}

/// A caller's HTTP connection: the connection context and, when a transport header named
/// one, the target every request goes to.
struct HttpConn {
    ctx: ConnCtx,
    target: Option<Arc<Target>>,
}

/// Serves HTTP on `io` until the caller closes, draining finishes it (requests in flight
/// complete; HTTP/2 callers get GOAWAY), or the drain deadline cuts it.
pub async fn serve<IO>(
    io: IO,
    servers: &HttpServers,
    version: HttpVersion,
    gw: Arc<Gateway>,
    ctx: ConnCtx,
    target: Option<Arc<Target>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(HttpConn { ctx, target });
    let service = {
        let conn = conn.clone();
        let gw = gw.clone();
        hyper::service::service_fn(move |req| handle(gw.clone(), conn.clone(), req))
    };
    let served = servers
        .get(version)
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    let Some(result) = gw
        .drain
        .serve_http("http", served, |c| c.graceful_shutdown())
        .await
    else {
        tracing::info!(peer = %conn.ctx.peer, client_id = %conn.ctx.client_id, "HTTP connection closed at the drain deadline");
        return;
    };
    if let Err(e) = result {
        conn.ctx.metrics.set_close_error("EIO");
        tracing::debug!(peer = %conn.ctx.peer, client_id = %conn.ctx.client_id, error = %e, "connection ended with an error");
    }
}

/// The hyper service body: never fails; errors become synthetic responses.
async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<HttpConn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    // A refcount bump, not a copy: the path is only read for log lines.
    let uri = req.uri().clone();
    let version = req.version();
    let mut routed: Option<Arc<Target>> = None;
    let mut upstream: Option<SocketAddr> = None;
    // Boxed: hyper moves the service future into a task per HTTP/2 stream, and this keeps
    // that move to a pointer instead of some 3 KB of state. Linkerd callers always speak
    // HTTP/2 to the gateway: -2.8% instructions per request on that path, +1% on direct
    // HTTP/1.1 callers (measured with `cargo xtask bench-cost`).
    let resp = match Box::pin(proxy(&gw, &conn, req, &mut routed, &mut upstream)).await {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(addr) = upstream {
                metrics::upstream_error(e.reason(), &addr.to_string());
            }
            metrics::http_error(e.reason());
            tracing::warn!(
                peer = %conn.ctx.peer, client_id = %conn.ctx.client_id, %method, path = uri.path(),
                authority = routed_name(&routed), error = %e, "request refused"
            );
            synthetic(&e, version)
        }
    };
    let latency = start.elapsed();
    let status = resp.status();
    conn.ctx
        .metrics
        .request(routed_name(&routed), status.as_u16(), latency);
    if gw.access_log {
        tracing::info!(
            target: "access",
            client_id = %conn.ctx.client_id,
            tls = true,
            authority = routed_name(&routed),
            method = %method,
            path = uri.path(),
            status = status.as_u16(),
            latency_us = latency.as_micros() as u64,
            upstream = %upstream.map(|a| a.to_string()).unwrap_or_default(),
            peer = %conn.ctx.peer,
        );
    }
    Ok(resp)
}

/// The routed service's name for logs and metrics; empty when the request was not routed.
fn routed_name(routed: &Option<Arc<Target>>) -> &str {
    routed.as_ref().map(|t| t.name.as_str()).unwrap_or("")
}

/// A response the gateway makes itself, carrying the reason for meshed callers to read.
fn synthetic(e: &ProxyError, version: Version) -> Response<Body> {
    let reason = e.reason();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!("{reason}\n")))));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(L5D_PROXY_ERROR, HeaderValue::from_static(reason));
    if e.closes_connection() {
        h.insert(L5D_PROXY_CONNECTION, HeaderValue::from_static("close"));
        if version < Version::HTTP_2 {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    resp
}

async fn proxy(
    gw: &Gateway,
    conn: &HttpConn,
    mut req: Request<Incoming>,
    routed: &mut Option<Arc<Target>>,
    upstream: &mut Option<SocketAddr>,
) -> Result<Response<Body>, ProxyError> {
    let ctx = &conn.ctx;
    admission::request(gw, ctx.admitted, req.headers())?;
    let target = match &conn.target {
        Some(t) => t.clone(),
        None => gw.router.route(&request_authority(&req)?).await?,
    };
    // A request a source proxy upgraded from HTTP/1 goes on as HTTP/1, and its response is
    // marked so that proxy can restore the version for its client.
    let orig_proto = req
        .headers_mut()
        .remove(L5D_ORIG_PROTO)
        .and_then(|v| parse_orig_proto(&v));
    *routed = Some(target.clone());
    let inflight = target.pick().await?;
    let endpoint = inflight.endpoint();
    *upstream = Some(endpoint.addr);

    let upgrading = target.protocol == Protocol::Http1 && is_upgrade(&req);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    parts.uri = match target.protocol {
        // HTTP/1.1 servers get origin-form (`/path?query`), whatever form the caller used.
        Protocol::Http1 => origin_form(&parts.uri),
        // HTTP/2 servers read the service's name from `:authority`.
        Protocol::Http2 => retarget(&parts.uri, target.uri_authority.clone())
            .map_err(|_| ProxyError::BadAuthority)?,
    };
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, upgrading);
    match target.protocol {
        Protocol::Http1 => {
            parts.version = orig_proto.unwrap_or(Version::HTTP_11);
            headers.insert(header::HOST, target.host_header.clone());
        }
        Protocol::Http2 => {
            parts.version = Version::HTTP_2;
            headers.remove(header::HOST);
        }
    }
    let client_id = ctx
        .client_id_header
        .clone()
        .ok_or(ProxyError::BadAuthority)?;
    headers.insert(L5D_CLIENT_ID, client_id);
    let mut forwarded = String::with_capacity(ctx.forwarded_prefix.len() + 80);
    forwarded.push_str(&ctx.forwarded_prefix);
    forwarded.push_str(target.name.as_str());
    forwarded.push_str(";proto=https");
    headers.append(
        FORWARDED,
        HeaderValue::from_maybe_shared(Bytes::from(forwarded))
            .map_err(|_| ProxyError::BadAuthority)?,
    );

    let req = Request::from_parts(parts, body);
    // Only the HTTP/1.1 path is awaited in place: the others are boxed to keep every
    // request's future (copied into a task per HTTP/2 stream) small.
    let mut resp = match target.protocol {
        Protocol::Http2 => {
            Box::pin(gw.upstreams.send_http2(&endpoint.pool, endpoint.addr, req)).await?
        }
        Protocol::Http1 if upgrading => {
            Box::pin(gw.upstreams.send_upgrade(endpoint.addr, req)).await?
        }
        Protocol::Http1 => {
            gw.upstreams
                .send_http1(&endpoint.pool, endpoint.addr, req)
                .await?
        }
    };
    drop(inflight);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let peer = ctx.peer;
            let drain = gw.drain.clone();
            gw.drain.spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        match splice(&mut c, &mut u, &drain, "upgrade").await {
                            Spliced::Done { .. } => {}
                            Spliced::Failed(e) => {
                                tracing::debug!(%peer, error = %e, "upgraded stream ended")
                            }
                            Spliced::ClosedByDrain => {
                                tracing::info!(%peer, "upgraded stream closed at the drain deadline")
                            }
                        }
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "upgrade failed"),
                }
            });
            return Ok(resp.map(Either::Left));
        }
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    if orig_proto.is_some() {
        let marker = if resp.version() == Version::HTTP_10 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        resp.headers_mut()
            .insert(L5D_ORIG_PROTO, HeaderValue::from_static(marker));
    }
    Ok(resp.map(Either::Left))
}
