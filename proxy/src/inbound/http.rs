//! HTTP on a caller's connection: the gateway's server for the session's version, and for each
//! request the admission checks, the route, header rewriting, forwarding (upgrades included),
//! synthetic errors and the access-log line.

use std::{
    future::Future,
    pin::{pin, Pin},
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures_util::future::FutureExt;
use http::{
    header::{self, HeaderValue},
    Request, Response, StatusCode, Version,
};
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::{http1, http2, session::HttpVersion};
use crate::{
    admission,
    authority::{Authority, LastAuthority},
    body::CallerBody,
    context::{ConnCtx, Gateway, Held},
    drain::HttpServed,
    errors::ProxyError,
    exchange::{self, AccessLine, Exchange},
    headers::{
        is_upgrade, origin_form, parse_orig_proto, raw_authority, retarget, strip_hop_by_hop,
        GatewayFields, L5D_ORIG_PROTO, L5D_PROXY_CONNECTION, L5D_PROXY_ERROR,
    },
    io::Rewind,
    log_limit, message, metrics,
    routing::{Endpoint, Protocol, Target},
    splice::{splice, Spliced},
    tap::{TapRequest, Tapped},
    upstream::{SendError, UpstreamBody},
    watchdog::{self, Idle, OpenRequest, Verdict},
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

/// The servers a connection may get, built once: the gateway's own HTTP/1 and HTTP/2
/// servers' settings.
pub struct HttpServers {
    h1: http1::Limits,
    h2: http2::Settings,
}

impl HttpServers {
    pub fn new(limits: &HttpLimits) -> Self {
        Self {
            h1: http1::Limits {
                header_read_timeout: limits.header_read_timeout,
                max_head: limits.max_header_bytes,
            },
            h2: h2_settings(limits),
        }
    }

    /// Serves one connection with the server for its version; without ALPN, HTTP/2 when the
    /// caller opens with the HTTP/2 preface.
    pub(crate) fn serve<IO, F, Fut>(
        &self,
        io: IO,
        version: HttpVersion,
        handler: F,
    ) -> Serving<IO, F, Fut>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(Request<CallerBody>) -> Fut + Clone + Send + Sync + Unpin + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let shutdown = Arc::new(http1::Shutdown::default());
        let served = match version {
            HttpVersion::Http2 => {
                return Serving::H2(Box::new(http2::Served::new(io, self.h2, handler)))
            }
            HttpVersion::Http1 => Box::pin(
                http1::serve(io, BytesMut::new(), self.h1, handler, shutdown.clone())
                    .map(|r| r.map_err(|e| e.to_string())),
            ) as ServingFuture,
            HttpVersion::Detect => Box::pin(detect_and_serve(
                io,
                self.h1,
                self.h2,
                handler,
                shutdown.clone(),
            )),
        };
        Serving::Boxed { served, shutdown }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A caller that negotiated no protocol: HTTP/2 if its first bytes are the HTTP/2 preface,
/// else HTTP/1.1. The bytes looked at are given back to whichever server reads on.
async fn detect_and_serve<IO, F, Fut>(
    mut io: IO,
    h1: http1::Limits,
    h2: http2::Settings,
    handler: F,
    shutdown: Arc<http1::Shutdown>,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<CallerBody>) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    // Small, as for an HTTP/1 connection's first read: the preface is 24 bytes.
    let mut buf = BytesMut::with_capacity(1024);
    let looked = tokio::time::timeout(h1.header_read_timeout, async {
        while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
            if io.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    match looked {
        Err(_) => return Err("no request within the header read timeout".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(())) => {}
    }
    if !buf.starts_with(H2_PREFACE) {
        return http1::serve(io, buf, h1, handler, shutdown)
            .await
            .map_err(|e| e.to_string());
    }
    let mut served = pin!(http2::Served::new(
        Rewind::new(buf.freeze(), io),
        h2,
        handler
    ));
    tokio::select! {
        r = served.as_mut() => return r.map_err(|e| e.to_string()),
        _ = shutdown.wait() => served.as_mut().get_mut().graceful_shutdown(),
    }
    served.await.map_err(|e| e.to_string())
}

type ServingFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A connection being served.
pub(crate) enum Serving<IO, F, Fut>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<CallerBody>) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    /// Boxed: the connection's state is large, and an HTTP/1 connection's future should
    /// not be sized for it.
    H2(Box<http2::Served<IO, F, Fut, Body>>),
    /// HTTP/1, or not yet known: graceful shutdown goes through `shutdown`.
    Boxed {
        served: ServingFuture,
        shutdown: Arc<http1::Shutdown>,
    },
}

impl<IO, F, Fut> Future for Serving<IO, F, Fut>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<CallerBody>) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    type Output = Result<(), String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Serving::H2(s) => Pin::new(&mut **s).poll(cx).map_err(|e| e.to_string()),
            Serving::Boxed { served, .. } => served.as_mut().poll(cx),
        }
    }
}

impl<IO, F, Fut> Serving<IO, F, Fut>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<CallerBody>) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    /// HTTP/2 callers get GOAWAY, HTTP/1 ones `Connection: close` on the response in flight.
    pub(crate) fn graceful_shutdown(&mut self) {
        match self {
            Serving::H2(s) => s.graceful_shutdown(),
            Serving::Boxed { shutdown, .. } => shutdown.ask(),
        }
    }
}

/// The HTTP/2 server's settings: the caller's limits and fixed windows.
fn h2_settings(limits: &HttpLimits) -> http2::Settings {
    http2::Settings {
        max_concurrent_streams: limits.max_concurrent_streams,
        max_header_list_size: limits.max_header_bytes,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
    }
}

const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// A caller's HTTP connection: the connection context and, when a transport header named
/// one, the target every request goes to.
struct HttpConn {
    ctx: ConnCtx,
    target: Option<Arc<Target>>,
    /// The authority of the connection's last routed request: callers name the same service
    /// request after request.
    last_authority: LastAuthority,
    /// The `Forwarded` value of the last request's target: it depends only on the connection
    /// and the target, and building and validating it cost ~500 instructions a request. The
    /// target is held weakly, so its address cannot be another target's while kept here.
    last_forwarded: Mutex<Option<(Weak<Target>, HeaderValue)>>,
}

impl HttpConn {
    /// `Forwarded: by=<gateway>;for=<caller>;host=<service>;proto=https`.
    fn forwarded(&self, target: &Arc<Target>) -> Result<HeaderValue, ProxyError> {
        let mut last = self
            .last_forwarded
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((t, v)) = &*last {
            if std::ptr::eq(t.as_ptr(), Arc::as_ptr(target)) {
                return Ok(v.clone());
            }
        }
        let prefix = &self.ctx.forwarded_prefix;
        let mut value = String::with_capacity(prefix.len() + target.host.len() + 12);
        value.push_str(prefix);
        value.push_str(&target.host);
        value.push_str(";proto=https");
        let value = HeaderValue::from_maybe_shared(Bytes::from(value))
            .map_err(|_| ProxyError::BadAuthority)?;
        *last = Some((Arc::downgrade(target), value.clone()));
        Ok(value)
    }
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
    let conn = Arc::new(HttpConn {
        ctx,
        target,
        last_authority: LastAuthority::default(),
        last_forwarded: Mutex::new(None),
    });
    let handler = {
        let conn = conn.clone();
        let gw = gw.clone();
        move |req| handle(gw.clone(), conn.clone(), req)
    };
    let served = servers.serve(io, version, handler);
    let t = gw.timeouts;
    let idle = match version {
        HttpVersion::Http2 => Idle::Requests(t.http2_idle),
        HttpVersion::Http1 | HttpVersion::Detect => Idle::Requests(t.http1_idle),
    };
    let watch = watchdog::spawn(conn.ctx.activity.clone(), idle, t.write_stall);
    let (peer, client_id) = (conn.ctx.peer, &conn.ctx.client_id);
    match gw
        .drain
        .serve_http_watched("http", served, |c| c.get_mut().graceful_shutdown(), watch)
        .await
    {
        HttpServed::Finished(Ok(())) => {}
        HttpServed::Finished(Err(e)) => {
            conn.ctx.metrics.set_close_error("EIO");
            tracing::debug!(%peer, %client_id, error = %e, "connection ended with an error");
        }
        HttpServed::ClosedByDrain => {
            tracing::info!(%peer, %client_id, "HTTP connection closed at the drain deadline");
        }
        HttpServed::Closed(v) => {
            metrics::watchdog_closed(v.reason(), "http");
            match v {
                Verdict::Idle => tracing::debug!(%peer, %client_id, "idle HTTP connection closed"),
                Verdict::WriteStalled => {
                    if log_limit::allow("http", v.reason()) {
                        tracing::warn!(%peer, %client_id, reason = v.reason(), stall = ?t.write_stall, "HTTP connection closed: the caller stopped reading");
                    }
                }
            }
        }
    }
}

/// One request, whichever server read it: errors become synthetic responses.
///
/// Not an `async fn`, which would keep the request twice in its future (as passed, and as
/// moved into its body): the future is copied into its stream's place on HTTP/2, and was
/// 752 bytes with the second copy.
#[allow(clippy::manual_async_fn)]
fn handle(
    gw: Arc<Gateway>,
    conn: Arc<HttpConn>,
    req: Request<CallerBody>,
) -> impl Future<Output = Response<Body>> + Send {
    async move {
        let start = Instant::now();
        let method = req.method().clone();
        // A refcount bump, not a copy: the path is only read for log lines.
        let uri = req.uri().clone();
        let version = req.version();
        let grpc = exchange::is_grpc(req.headers());
        let mut routed: Option<Arc<Target>> = None;
        let mut upstream: Option<Arc<Endpoint>> = None;
        let mut tapped: Option<Box<Tapped>> = None;
        // The name asked for, kept only when the request is refused before it is routed.
        let mut asked: Option<String> = None;
        let open = conn.ctx.activity.open_request();
        // Boxed: hyper moves the service future into a task per HTTP/2 stream, and this keeps
        // that move to a pointer instead of some 3 KB of state. Linkerd callers always speak
        // HTTP/2 to the gateway: -2.8% instructions per request on that path, +1% on direct
        // HTTP/1.1 callers (measured with `cargo xtask bench-cost`).
        let mut resp = match Box::pin(proxy(
            &gw,
            &conn,
            req,
            Outcomes {
                routed: &mut routed,
                upstream: &mut upstream,
                asked: &mut asked,
                tapped: &mut tapped,
            },
            open,
        ))
        .await
        {
            Ok(resp) => resp,
            Err(e) => {
                if let Some(endpoint) = &upstream {
                    let proven = routed.as_ref().is_some_and(|t| t.metric_name().is_some());
                    let addr = if proven {
                        endpoint.addr.to_string()
                    } else {
                        String::new()
                    };
                    metrics::upstream_error(e.reason(), addr);
                }
                metrics::http_error(e.reason());
                if log_limit::allow("request", e.reason()) {
                    // Debug-formatted: the name and path are the caller's bytes, and must not
                    // be able to start a log line of their own.
                    let authority = match &routed {
                        Some(t) => t.name.as_str(),
                        None => asked.as_deref().unwrap_or(""),
                    };
                    tracing::warn!(
                        peer = %conn.ctx.peer, client_id = %conn.ctx.client_id, %method, path = ?uri.path(),
                        authority = ?authority, error = %e, "request refused"
                    );
                }
                synthetic(&e, version)
            }
        };
        // Named in metrics only once the name has answered; until then (and for refusals) the
        // authority label is empty.
        let metric_name = routed
            .as_ref()
            .and_then(|t| t.metric_name())
            .map(Authority::as_str)
            .unwrap_or("");
        // The outbound side is labelled with the endpoint, so it follows the same rule: no
        // series for a name that has not answered (a caller could otherwise mint them by port).
        let endpoint = upstream
            .as_ref()
            .filter(|_| !metric_name.is_empty())
            .map(|e| &e.labels);
        let handles = conn
            .ctx
            .metrics
            .exchange(metric_name, resp.status().as_u16(), endpoint);
        let access = gw.access_log.then(|| {
            Box::new(AccessLine {
                client_id: conn.ctx.client_id.clone(),
                peer: conn.ctx.peer,
                authority: routed_name(&routed).to_string(),
                method,
                path: uri,
                upstream: upstream.as_ref().map(|e| e.addr),
            })
        });
        let mut record = Exchange::responded(handles, start, grpc, resp.headers(), access, tapped);
        match resp.body_mut() {
            Either::Left(body) if !http_body::Body::is_end_stream(body) => body.record(record),
            _ => record.end(None),
        }
        resp
    }
}

/// What a request's handling learned, for its metrics and log lines whatever the outcome.
struct Outcomes<'a> {
    routed: &'a mut Option<Arc<Target>>,
    upstream: &'a mut Option<Arc<Endpoint>>,
    asked: &'a mut Option<String>,
    tapped: &'a mut Option<Box<Tapped>>,
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

/// The checks and the route, before anything is forwarded; `None`: the gateway answers the
/// request itself.
async fn admit(
    gw: &Gateway,
    conn: &HttpConn,
    req: &mut Request<CallerBody>,
) -> Result<Option<Arc<Target>>, ProxyError> {
    let next = message::check(req, conn.target.is_some())?;
    admission::request(gw, conn.ctx.admitted, req.headers())?;
    if next == message::Next::AnswerHere {
        return Ok(None);
    }
    let target = match &conn.target {
        Some(t) => t.clone(),
        None => {
            let authority = conn.last_authority.parse(raw_authority(req)?)?;
            gw.router.route(&authority).await?
        }
    };
    Ok(Some(target))
}

/// The name a refused request asked for, for the log line: the transport header's target,
/// else `:authority` or `Host` as sent (cut to a bounded length).
fn asked_name<B>(conn: &HttpConn, req: &Request<B>) -> String {
    const MAX: usize = 256;
    if let Some(t) = &conn.target {
        return t.name.as_str().to_string();
    }
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().as_bytes(),
        None => req
            .headers()
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default(),
    };
    String::from_utf8_lossy(&raw[..raw.len().min(MAX)]).into_owned()
}

/// Not an `async fn`, for the reason given at `handle`: the request would be kept twice.
#[allow(clippy::manual_async_fn)]
fn proxy<'a>(
    gw: &'a Gateway,
    conn: &'a HttpConn,
    mut req: Request<CallerBody>,
    out: Outcomes<'a>,
    open: OpenRequest,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a {
    async move {
        let Outcomes {
            routed,
            upstream,
            asked,
            tapped,
        } = out;
        let ctx = &conn.ctx;
        // The caller's budget first: a caller over it costs the gateway as little as possible.
        let quota = ctx.quota.request().map_err(|e| {
            metrics::caller_limited(ctx.client_id.as_str(), e.label());
            ProxyError::from(e)
        })?;
        let held = Held::new(open, quota);
        let target = match admit(gw, conn, &mut req).await {
            Ok(Some(target)) => target,
            Ok(None) => return Ok(Response::new(Either::Right(Full::new(Bytes::new())))),
            Err(e) => {
                *asked = Some(asked_name(conn, &req));
                return Err(e);
            }
        };
        admission::authorize_request(gw, ctx, &target, &req)?;
        // A request a source proxy upgraded from HTTP/1 goes on as HTTP/1, and its response is
        // marked so that proxy can restore the version for its client.
        let orig_proto = req
            .headers_mut()
            .remove(L5D_ORIG_PROTO)
            .and_then(|v| parse_orig_proto(&v));
        *routed = Some(target.clone());
        let inflight = target.pick().await?;
        let endpoint = inflight.endpoint();
        *upstream = Some(endpoint.clone());
        if !gw.taps.is_idle() {
            *tapped = gw.taps.observe(&TapRequest {
                source: ctx.peer,
                client_id: &ctx.client_id,
                endpoint,
                authority: target.name.as_str(),
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
            });
        }

        let upgrading = target.protocol == Protocol::Http1 && is_upgrade(&req);
        let wire = Wire::choose(
            target.protocol,
            endpoint.meta.http2,
            upgrading,
            req.version(),
            orig_proto,
        );
        let client_upgrade = upgrading.then(|| http1::upgrade::on(&mut req));

        let added = rewrite(&mut req, wire, upgrading, &target, conn)?;

        let mut inflight = inflight;
        let mut retried = false;
        let mut resp = loop {
            match send(gw, wire, upgrading, inflight.endpoint(), req, &added).await {
                Ok(resp) => {
                    inflight.endpoint().succeeded();
                    break resp;
                }
                Err(SendError { error, unsent }) => {
                    let endpoint = inflight.endpoint();
                    if error.is_endpoint_failure() {
                        endpoint.failed();
                    }
                    // A request that never left may go to another endpoint, once, if that one
                    // takes it on the same wire.
                    let next = match unsent {
                        Some(back) if !retried => target
                            .pick_other(endpoint)
                            .filter(|o| o.endpoint().meta.http2 == endpoint.meta.http2)
                            .map(|o| (o, back)),
                        _ => None,
                    };
                    let Some((other, back)) = next else {
                        return Err(error);
                    };
                    tracing::debug!(failed = %endpoint.addr, next = %other.endpoint().addr, reason = error.reason(), "request sent to another endpoint");
                    retried = true;
                    *upstream = Some(other.endpoint().clone());
                    inflight = other;
                    req = *back;
                }
            }
        };
        drop(inflight);
        target.prove();

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                let client_upgrade = async { client_upgrade.await.map_err(|e| e.to_string()) };
                let upstream_upgrade = async { upstream_upgrade.await.map_err(|e| e.to_string()) };
                let peer = ctx.peer;
                let drain = gw.drain.clone();
                // From here the tunnel is a byte stream, watched as one.
                drop(held);
                let activity = ctx.activity.clone();
                let t = gw.timeouts;
                gw.drain.spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (c, TokioIo::new(u));
                        let watch =
                            watchdog::spawn(activity, Idle::Bytes(t.opaque_idle), t.write_stall);
                        let stop = async {
                            let v = watch.await;
                            metrics::watchdog_closed(v.reason(), "upgrade");
                            v.reason()
                        };
                        match splice(&mut c, &mut u, &drain, "upgrade", stop).await {
                            Spliced::Done { .. } => {}
                            Spliced::Failed(e) => {
                                tracing::debug!(%peer, error = %e, "upgraded stream ended")
                            }
                            Spliced::ClosedByDrain => {
                                tracing::info!(%peer, "upgraded stream closed at the drain deadline")
                            }
                            Spliced::Stopped(reason) => {
                                tracing::debug!(%peer, reason, "upgraded stream closed")
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
        // The endpoint's proxy marks what it restored; that marker is for us, not the caller.
        let restored = match wire {
            Wire::Http1OverHttp2(_) => resp.headers_mut().remove(L5D_ORIG_PROTO),
            _ => None,
        };
        if orig_proto.is_some() {
            let marker = match restored {
                Some(m) => m,
                None if resp.version() == Version::HTTP_10 => HeaderValue::from_static("HTTP/1.0"),
                None => HeaderValue::from_static("HTTP/1.1"),
            };
            resp.headers_mut().insert(L5D_ORIG_PROTO, marker);
        }
        resp.body_mut().hold(held);
        Ok(resp.map(Either::Left))
    }
}

/// Rewrites `req` in place for `wire`, and returns the fields the gateway adds that the HTTP/1
/// codec writes itself (none when they went into the map). Not part of `proxy`'s future: its
/// locals would be kept there across every await that follows.
fn rewrite(
    req: &mut Request<CallerBody>,
    wire: Wire,
    upgrading: bool,
    target: &Arc<Target>,
    conn: &HttpConn,
) -> Result<GatewayFields, ProxyError> {
    // Rewritten in place: taking the request apart and putting it back moved its 264 bytes
    // twice, a tenth of the copying a request cost.
    strip_hop_by_hop(req.headers_mut(), upgrading);
    let mut added = GatewayFields::default();
    match wire {
        Wire::Http1(version) => {
            // HTTP/1.1 servers get origin-form (`/path?query`), whatever form the caller used.
            *req.uri_mut() = origin_form(req.uri());
            *req.version_mut() = version;
            added.host = Some(target.host_header.clone());
        }
        Wire::Http2 | Wire::Http1OverHttp2(_) => {
            // HTTP/2 servers (and Linkerd proxies) read the service's name from `:authority`.
            *req.uri_mut() = retarget(req.uri(), target.uri_authority.clone())
                .map_err(|_| ProxyError::BadAuthority)?;
            *req.version_mut() = Version::HTTP_2;
            let headers = req.headers_mut();
            headers.remove(header::HOST);
            if let Wire::Http1OverHttp2(v) = wire {
                headers.insert(L5D_ORIG_PROTO, orig_proto_marker(v));
            }
        }
    }
    added.client_id = Some(
        conn.ctx
            .client_id_header
            .clone()
            .ok_or(ProxyError::BadAuthority)?,
    );
    // As Linkerd's gateway does on its outbound side: the service's fully qualified name.
    added.canonical = Some(target.canonical_header.clone());
    added.forwarded = Some(conn.forwarded(target)?);
    // Toward an HTTP/1 service (but for upgrades, which hyper's client writes) the codec writes
    // these fields itself; everywhere else they go into the map.
    Ok(match wire {
        Wire::Http1(_) if !upgrading => added,
        _ => {
            added.insert_into(req.headers_mut());
            GatewayFields::default()
        }
    })
}

/// One attempt at `endpoint`. Only the HTTP/1.1 path is held in place: the others are boxed
/// to keep every request's future (copied into its stream's place on HTTP/2) small. Not an
/// `async fn`, which would hold the attempt's future besides its own arguments.
fn send<'a>(
    gw: &'a Gateway,
    wire: Wire,
    upgrading: bool,
    endpoint: &'a Arc<Endpoint>,
    req: Request<CallerBody>,
    added: &'a GatewayFields,
) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a {
    use futures_util::future::Either;
    type Attempt<'a> =
        Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a>>;
    match wire {
        Wire::Http2 | Wire::Http1OverHttp2(_) => {
            Either::Left(Box::pin(gw.upstreams.send_http2(endpoint, req)) as Attempt<'a>)
        }
        Wire::Http1(_) if upgrading => Either::Left(Box::pin(
            gw.upstreams
                .send_upgrade(endpoint, req)
                .map(|r| r.map_err(SendError::from)),
        ) as Attempt<'a>),
        Wire::Http1(_) => Either::Right(gw.upstreams.send_http1(endpoint, req, added)),
    }
}

/// How a request travels to the endpoint it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// HTTP/1.x to the service (or to an endpoint whose proxy takes no HTTP/2 upgrade).
    Http1(Version),
    /// HTTP/2 as such: an HTTP/2 service, or a native HTTP/2 request to an `h2`-hinted proxy.
    Http2,
    /// An HTTP/1.x request carried over HTTP/2 to an `h2`-hinted endpoint's proxy, which
    /// restores it from `l5d-orig-proto`, as a Linkerd proxy sends it.
    Http1OverHttp2(Version),
}

impl Wire {
    fn choose(
        protocol: Protocol,
        hinted_h2: bool,
        upgrading: bool,
        version: Version,
        orig_proto: Option<Version>,
    ) -> Self {
        // An HTTP/1 request (directly, or upgraded by the caller's proxy) and its version.
        let h1 = match orig_proto {
            Some(v) => Some(v),
            None if version < Version::HTTP_2 => Some(Version::HTTP_11),
            None => None,
        };
        match (protocol, h1) {
            (Protocol::Http2, _) => Wire::Http2,
            // Upgrades need an HTTP/1.1 connection of their own.
            (Protocol::Http1, _) if upgrading => Wire::Http1(Version::HTTP_11),
            (Protocol::Http1, Some(v)) if hinted_h2 => Wire::Http1OverHttp2(v),
            (Protocol::Http1, None) if hinted_h2 => Wire::Http2,
            (Protocol::Http1, v) => Wire::Http1(v.unwrap_or(Version::HTTP_11)),
        }
    }
}

fn orig_proto_marker(v: Version) -> HeaderValue {
    if v == Version::HTTP_10 {
        HeaderValue::from_static("HTTP/1.0")
    } else {
        HeaderValue::from_static("HTTP/1.1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_follows_the_service_and_the_endpoint_hint() {
        use Version as V;
        let h1 = |v| Wire::Http1(v);
        // Plain service, unhinted endpoint: HTTP/1.1, whatever the caller spoke.
        assert_eq!(
            Wire::choose(Protocol::Http1, false, false, V::HTTP_11, None),
            h1(V::HTTP_11)
        );
        assert_eq!(
            Wire::choose(Protocol::Http1, false, false, V::HTTP_2, None),
            h1(V::HTTP_11)
        );
        assert_eq!(
            Wire::choose(Protocol::Http1, false, false, V::HTTP_2, Some(V::HTTP_10)),
            h1(V::HTTP_10)
        );
        // h2-hinted: HTTP/1 rides HTTP/2 with its version; native HTTP/2 stays HTTP/2.
        assert_eq!(
            Wire::choose(Protocol::Http1, true, false, V::HTTP_11, None),
            Wire::Http1OverHttp2(V::HTTP_11)
        );
        assert_eq!(
            Wire::choose(Protocol::Http1, true, false, V::HTTP_2, Some(V::HTTP_10)),
            Wire::Http1OverHttp2(V::HTTP_10)
        );
        assert_eq!(
            Wire::choose(Protocol::Http1, true, false, V::HTTP_2, None),
            Wire::Http2
        );
        // Upgrades and HTTP/2 services.
        assert_eq!(
            Wire::choose(Protocol::Http1, true, true, V::HTTP_11, None),
            h1(V::HTTP_11)
        );
        assert_eq!(
            Wire::choose(Protocol::Http2, false, false, V::HTTP_11, None),
            Wire::Http2
        );
    }
}
