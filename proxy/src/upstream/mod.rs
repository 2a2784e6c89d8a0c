//! Connections to local endpoints, by what they carry: pooled HTTP/1.1 ([`http1`]),
//! multiplexed HTTP/2 ([`http2`]), and raw streams for upgrades and opaque TCP, all opened by
//! one [`Dialer`] under one connect timeout. Response headers are awaited under the response
//! timeout; bodies stream for as long as they last.

mod dial;
mod http1;
mod http2;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use crate::body::CallerBody;
use http::{Request, Response};

#[doc(hidden)]
pub use self::http1::{fuzz_response as fuzz_http1_response, fuzz_template as fuzz_http1_template};
pub(crate) use self::http2::fuzz_client as fuzz_http2_client;
pub use self::{
    dial::{Alpn, Dialer, MeshTls, UpstreamIo},
    http1::UpstreamBody,
};
use crate::{errors::ProxyError, headers::GatewayFields, routing::Endpoint};

#[derive(Debug, Clone, Copy)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// How long to wait for response headers (bodies stream for as long as they last).
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

/// How often idle connections past their idle timeout are closed.
fn sweep_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

#[derive(Clone)]
pub struct Upstreams {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: UpstreamConfig,
    dialer: Dialer,
    http1: hyper::client::conn::http1::Builder,
    /// Every endpoint pool that has held a connection, for the sweeper.
    pools: Mutex<Vec<Weak<EndpointPool>>>,
}

/// The connections kept to one endpoint address.
#[derive(Default)]
pub struct EndpointPool {
    http1: http1::Http1Idle,
    http2: http2::Http2Slot,
    /// Set once the pool is on the sweeper's list.
    registered: AtomicBool,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPool")
            .field("http1_idle", &self.http1.len())
            .field("http2_open", &self.http2.is_open())
            .finish()
    }
}

impl EndpointPool {
    fn register(self: &Arc<Self>, shared: &Shared) {
        if !self.registered.swap(true, Ordering::Relaxed) {
            shared
                .pools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::downgrade(self));
        }
    }

    fn put_http1(self: &Arc<Self>, conn: Box<http1::Conn>, shared: &Shared) {
        self.register(shared);
        self.http1.put(conn, shared.cfg.max_idle_per_endpoint);
    }

    fn expire(&self, idle_timeout: Duration) {
        self.http1.expire(idle_timeout);
        self.http2.expire(idle_timeout);
    }
}

/// Why a request did not get response headers from an endpoint, and the request itself when
/// it never left (the connection could not be made, or closed before it was written), so it
/// can go to another endpoint.
#[derive(Debug)]
pub struct SendError {
    pub error: ProxyError,
    /// Boxed: it is rare, and a request inline would make every attempt's result (and the
    /// futures that hold one) the size of a request.
    pub unsent: Option<Box<Request<CallerBody>>>,
}

impl From<ProxyError> for SendError {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

/// An attempt under the response timeout: the timeout's `Elapsed` becomes the attempt's
/// error.
type WithinTimeout<F, T, E> = futures_util::future::Map<
    tokio::time::Timeout<F>,
    fn(Result<Result<T, E>, tokio::time::error::Elapsed>) -> Result<T, E>,
>;

/// Most bytes an upgrade's HTTP/1.1 connection buffers (read and write each) until the
/// switch: hyper's default lets the read buffer grow to 400 KB.
const HTTP1_MAX_BUF: usize = 64 * 1024;

fn http1_builder() -> hyper::client::conn::http1::Builder {
    let mut b = hyper::client::conn::http1::Builder::new();
    b.max_buf_size(HTTP1_MAX_BUF);
    b
}

impl Upstreams {
    /// Inside a Tokio runtime this also starts the task that closes expired idle connections.
    /// `tls` is what meshed endpoints are spoken to with; without it they are refused.
    pub fn new(cfg: UpstreamConfig, tls: Option<Arc<MeshTls>>) -> Self {
        let shared = Arc::new(Shared {
            cfg,
            dialer: Dialer {
                connect_timeout: cfg.connect_timeout,
                tls,
            },
            http1: http1_builder(),
            pools: Mutex::new(Vec::new()),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&shared)));
        }
        Self { shared }
    }

    /// A stream to `endpoint` for opaque TCP: to its proxy's inbound port with a transport
    /// header when discovery says so (the header names the endpoint's own port), else
    /// straight to it (mTLS when it has an identity).
    pub async fn connect_opaque(&self, endpoint: &Endpoint) -> Result<UpstreamIo, ProxyError> {
        use tokio::io::AsyncWriteExt;
        let Some(port) = endpoint.meta.opaque_transport else {
            return self
                .shared
                .dialer
                .connect_endpoint(endpoint, endpoint.addr, Alpn::None)
                .await;
        };
        let via = SocketAddr::new(endpoint.addr.ip(), port);
        let mut io = self
            .shared
            .dialer
            .connect_endpoint(endpoint, via, Alpn::TransportHeader)
            .await?;
        let header = transport_header::Header {
            port: endpoint.addr.port(),
            name: None,
            protocol: None,
        }
        .encode();
        io.write_all(&header).await.map_err(|e| {
            tracing::debug!(addr = %via, error = %e, "writing the transport header failed");
            ProxyError::Connect
        })?;
        Ok(io)
    }

    // These return combinators, not `async fn`s: an `async fn` wrapping a future keeps the
    // future both as its argument and as what it awaits, and each layer of that doubled the
    // request's future (5 KB for HTTP/2), which every request then copied on its way into
    // the stream's task (memcpy was a fifth of the gateway's own instructions per request).

    /// Sends `req` over the endpoint's multiplexed HTTP/2 connection (opened if need be) and
    /// waits for response headers.
    pub fn send_http2<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
        req: Request<CallerBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a {
        // Its deadline is kept by the connection's task (see `http2::conn::ClientConn`).
        http2::send(&self.shared, endpoint, req)
    }

    /// Sends `req` over a pooled HTTP/1.1 connection to the endpoint and waits for response
    /// headers; the response body returns the connection to the pool.
    pub fn send_http1<'a>(
        &'a self,
        endpoint: &'a Arc<Endpoint>,
        req: Request<CallerBody>,
        added: &'a GatewayFields,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a {
        // Its deadline is kept by the connection's own timer (see `http1::Conn`).
        http1::send(&self.shared, endpoint, req, added)
    }

    /// `attempt`'s result, or [`ProxyError::ResponseTimeout`] once the response headers took
    /// longer than the configured response timeout.
    fn within_response_timeout<T, E: From<ProxyError>, F: Future<Output = Result<T, E>>>(
        &self,
        attempt: F,
    ) -> WithinTimeout<F, T, E> {
        use futures_util::FutureExt;
        tokio::time::timeout(self.shared.cfg.response_timeout, attempt)
            .map(|r| r.unwrap_or_else(|_| Err(ProxyError::ResponseTimeout.into())))
    }

    /// An HTTP/1.1 upgrade request, on a connection of its own.
    pub fn send_upgrade<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        req: Request<CallerBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> + Send + 'a {
        self.within_response_timeout(http1::send_upgrade(&self.shared, endpoint, req))
    }
}

/// Closes idle connections past their timeout, so an endpoint that stops getting requests
/// does not hold sockets (and the server's half-closed ends) forever.
async fn sweep(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(s) => sweep_interval(s.cfg.idle_timeout),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let live: Vec<Arc<EndpointPool>> = {
            let mut pools = shared.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in live {
            pool.expire(shared.cfg.idle_timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::conn::auto::Builder,
    };
    use tokio::net::TcpListener;

    use super::*;

    /// A backend answering `ok`, counting the connections it accepted.
    async fn backend(h2: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let count = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // `x-delay-ms`: how long to wait before answering.
                    let svc = hyper::service::service_fn(|req: Request<_>| async move {
                        let delay = req
                            .headers()
                            .get("x-delay-ms")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let mut b = Builder::new(TokioExecutor::new());
                    if h2 {
                        b = b.http2_only();
                    } else {
                        b = b.http1_only();
                    }
                    let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        (addr, conns)
    }

    /// An in-process front end: the gateway's own caller-facing server hands each request it
    /// receives to `upstreams`, as the gateway does (`h2`: toward the endpoint).
    async fn front(upstreams: Upstreams, endpoint: Arc<Endpoint>, h2: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        let servers = Arc::new(crate::inbound::HttpServers::new(
            &crate::inbound::HttpLimits {
                header_read_timeout: Duration::from_secs(5),
                max_header_bytes: 64 * 1024,
                max_concurrent_streams: 100,
            },
        ));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (upstreams, endpoint) = (upstreams.clone(), endpoint.clone());
                let handler = move |req: Request<CallerBody>| {
                    let (upstreams, endpoint) = (upstreams.clone(), endpoint.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        parts.uri = "/".parse().unwrap();
                        let req = Request::from_parts(parts, body);
                        let resp = if h2 {
                            upstreams.send_http2(&endpoint, req).await
                        } else {
                            upstreams
                                .send_http1(&endpoint, req, &GatewayFields::default())
                                .await
                        };
                        match resp {
                            Ok(r) => r.map(http_body_util::Either::Left),
                            Err(e) => {
                                let mut r = Response::new(http_body_util::Either::Right(
                                    Full::new(Bytes::from(e.error.reason())),
                                ));
                                *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                                r
                            }
                        }
                    }
                };
                let served = servers.serve(tcp, crate::inbound::HttpVersion::Detect, handler);
                tokio::spawn(served);
            }
        });
        front
    }

    fn upstreams(idle: Duration) -> Upstreams {
        upstreams_timing_out(idle, Duration::from_secs(5))
    }

    fn upstreams_timing_out(idle: Duration, response_timeout: Duration) -> Upstreams {
        Upstreams::new(
            UpstreamConfig {
                connect_timeout: Duration::from_secs(2),
                response_timeout,
                idle_timeout: idle,
                max_idle_per_endpoint: 8,
            },
            None,
        )
    }

    async fn get(front: SocketAddr) -> String {
        get_after(front, 0).await.1
    }

    /// A request the backend answers after `delay_ms`: its status and body.
    async fn get_after(front: SocketAddr, delay_ms: u64) -> (u16, String) {
        let tcp = tokio::net::TcpStream::connect(front).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("x-delay-ms", delay_ms)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http1_connections_are_reused_once_their_response_is_read() {
        let (addr, conns) = backend(false).await;
        let endpoint = Arc::new(Endpoint::new(addr, Default::default()));
        let pool = endpoint.pool.clone();
        let front = front(upstreams(Duration::from_secs(30)), endpoint, false).await;
        for _ in 0..5 {
            assert_eq!(get(front).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(pool.http1.len(), 1);
    }

    const TEST_TIMEOUT: Duration = Duration::from_millis(300);

    /// A front end whose upstreams time out after [`TEST_TIMEOUT`], warmed the way both
    /// deadline tests need: one request, an idle spell past the timeout (the connection's
    /// timer runs out with nothing waiting), then two requests that take most of a timeout
    /// each and are answered, since each deadline is its own.
    async fn timing_out_front(h2: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let (addr, conns) = backend(h2).await;
        let endpoint = Arc::new(Endpoint::new(addr, Default::default()));
        let upstreams = upstreams_timing_out(Duration::from_secs(30), TEST_TIMEOUT);
        let front = front(upstreams, endpoint, h2).await;
        assert_eq!(get_after(front, 0).await, (200, "ok".into()));
        tokio::time::sleep(TEST_TIMEOUT + Duration::from_millis(200)).await;
        for _ in 0..2 {
            assert_eq!(get_after(front, 200).await, (200, "ok".into()));
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        (front, conns)
    }

    /// A request the backend answers too late: refused at the deadline, not before.
    async fn times_out(front: SocketAddr) {
        let started = std::time::Instant::now();
        let (status, body) = get_after(front, 2000).await;
        assert_eq!((status, body.as_str()), (502, "upstream response timeout"));
        let took = started.elapsed();
        assert!(
            took >= TEST_TIMEOUT && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }

    /// The response deadline rides on a timer kept with the pooled connection, and a
    /// connection that timed out is not pooled again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http1_response_deadline_is_per_request_on_a_pooled_connection() {
        let (front, conns) = timing_out_front(false).await;
        times_out(front).await;
        // The timed-out connection still owes a response: the next request dials anew.
        assert_eq!(get_after(front, 0).await, (200, "ok".into()));
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    /// The response deadlines of an HTTP/2 connection's streams ride on one timer of its
    /// task: an overdue stream is reset while the others and the connection go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http2_response_deadline_is_per_stream() {
        let (front, conns) = timing_out_front(true).await;
        // Slow and fast streams at once: the slow ones time out, the fast ones are answered.
        let slow: Vec<_> = (0..3).map(|_| tokio::spawn(times_out(front))).collect();
        let fast: Vec<_> = (0..3)
            .map(|_| tokio::spawn(get_after(front, 100)))
            .collect();
        for r in fast {
            assert_eq!(r.await.unwrap(), (200, "ok".into()));
        }
        for r in slow {
            r.await.unwrap();
        }
        // The connection goes on.
        assert_eq!(get_after(front, 0).await, (200, "ok".into()));
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http2_requests_share_one_connection_until_it_idles_out() {
        let (addr, conns) = backend(true).await;
        let endpoint = Arc::new(Endpoint::new(addr, Default::default()));
        let pool = endpoint.pool.clone();
        let front = front(upstreams(Duration::from_secs(30)), endpoint, true).await;
        // A burst of first requests opens one connection, not one each.
        let burst: Vec<_> = (0..10).map(|_| tokio::spawn(get(front))).collect();
        for r in burst {
            assert_eq!(r.await.unwrap(), "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert!(pool.http2.is_open());
        // Idle past the timeout: let go, and the next request dials again.
        pool.expire(Duration::ZERO);
        assert!(!pool.http2.is_open());
        assert_eq!(get(front).await, "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }
}
