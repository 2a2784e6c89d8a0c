//! Clients to local services, with connect and response-header timeouts.
//!
//! HTTP/1.1 upstream connections live in a small pool per endpoint and are driven by the task
//! of the request using them: the caller's connection task writes the request, reads the
//! response and streams its body, with no connection task of its own and no channel hop in
//! between. That is one task wake-up per request instead of three, and it keeps a request's
//! two sockets on one core. A connection goes back to the pool once its response body has been
//! read to the end; a body abandoned half-way closes it. HTTP/2 upstreams, which multiplex
//! many callers' requests over one connection, use hyper-util's pooled client and its
//! connection tasks.

use std::{
    future::Future,
    net::SocketAddr,
    pin::{pin, Pin},
    sync::{Arc, Mutex, Weak},
    task::{ready, Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::{http1, TrySendError},
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::TcpStream;

use crate::errors::ProxyError;

#[derive(Debug, Clone, Copy)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// How long to wait for response headers (bodies stream for as long as they last).
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

/// How often idle HTTP/1.1 connections past their idle timeout are closed.
fn sweep_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// A pooled connection re-used this many times in a row without getting a request through
/// (each closed by the server just before) makes the next attempt use a new connection.
const MAX_STALE_RETRIES: usize = 3;

#[derive(Clone)]
pub struct Upstreams {
    http2: Client<HttpConnector, Incoming>,
    shared: Arc<Shared>,
}

struct Shared {
    cfg: UpstreamConfig,
    http1: http1::Builder,
    /// Every pool that has held an idle connection, for the sweeper.
    pools: Mutex<Vec<Weak<Http1Pool>>>,
}

impl Upstreams {
    /// Inside a Tokio runtime this also starts the task that closes expired idle connections.
    pub fn new(cfg: UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let mut h2 = Client::builder(TokioExecutor::new());
        h2.pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_timeout)
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_timeout(Duration::from_secs(3))
            .http2_adaptive_window(true)
            .set_host(false);
        let shared = Arc::new(Shared {
            cfg,
            http1: http1::Builder::new(),
            pools: Mutex::new(Vec::new()),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&shared)));
        }
        Self {
            http2: h2.build(connector),
            shared,
        }
    }

    /// Sends `req` (its URI naming the endpoint) over a multiplexed HTTP/2 connection and
    /// waits for response headers.
    pub async fn send_http2(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        match tokio::time::timeout(self.shared.cfg.response_timeout, self.http2.request(req)).await
        {
            Err(_) => Err(ProxyError::ResponseTimeout),
            Ok(Ok(resp)) => Ok(resp.map(UpstreamBody::unpooled)),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }

    /// Sends `req` to `addr` over an idle connection from `pool` (or a new one) and waits for
    /// response headers. The body of the response drives the connection and returns it to the
    /// pool when it has been read to the end.
    pub async fn send_http1(
        &self,
        pool: &Arc<Http1Pool>,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let shared = &self.shared;
        let attempt = async {
            let mut req = req;
            let mut stale = 0;
            loop {
                let pooled = if stale < MAX_STALE_RETRIES {
                    pool.checkout(shared.cfg.idle_timeout)
                } else {
                    None
                };
                let reused = pooled.is_some();
                let mut conn = match pooled {
                    Some(c) => c,
                    // Boxed: connecting is the cold path, and its future would otherwise
                    // enlarge every request's future, which HTTP/2 callers' streams copy
                    // into a task each.
                    None => Box::pin(self.connect(addr)).await?,
                };
                let sent = conn.tx.try_send_request(req);
                match drive(&mut conn, sent).await {
                    Ok(resp) => {
                        let lease = Lease {
                            conn,
                            pool: pool.clone(),
                            shared: shared.clone(),
                        };
                        return Ok(resp.map(|b| UpstreamBody::pooled(b, lease)));
                    }
                    Err(mut e) => match e.take_message() {
                        // The server closed an idle connection as we picked it: the request
                        // never left, so it is safe to send on another.
                        Some(back) if reused => {
                            tracing::debug!(%addr, error = %e.error(), "pooled connection was closed; retrying");
                            req = back;
                            stale += 1;
                        }
                        _ => {
                            tracing::debug!(%addr, error = %e.error(), "upstream request failed");
                            return Err(ProxyError::Upstream);
                        }
                    },
                }
            }
        };
        match tokio::time::timeout(shared.cfg.response_timeout, attempt).await {
            Err(_) => Err(ProxyError::ResponseTimeout),
            Ok(r) => r,
        }
    }

    /// An HTTP/1.1 request asking to switch protocols gets a connection of its own, driven by
    /// its own task so it can hand over its socket once the upstream agrees.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let attempt = async {
            let stream = self.dial(addr).await?;
            let (mut tx, io) = self
                .shared
                .http1
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|_| ProxyError::Upstream)?;
            tokio::spawn(async move {
                if let Err(e) = io.with_upgrades().await {
                    tracing::debug!(%addr, error = %e, "upgraded upstream connection failed");
                }
            });
            tx.send_request(req).await.map_err(|e| {
                tracing::debug!(%addr, error = %e, "upstream upgrade request failed");
                ProxyError::Upstream
            })
        };
        match tokio::time::timeout(self.shared.cfg.response_timeout, attempt).await {
            Err(_) => Err(ProxyError::ResponseTimeout),
            Ok(r) => r.map(|resp| resp.map(UpstreamBody::unpooled)),
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<TcpStream, ProxyError> {
        let stream =
            match tokio::time::timeout(self.shared.cfg.connect_timeout, TcpStream::connect(addr))
                .await
            {
                Err(_) => return Err(ProxyError::ConnectTimeout),
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "upstream connect failed");
                    return Err(if e.kind() == std::io::ErrorKind::TimedOut {
                        ProxyError::ConnectTimeout
                    } else {
                        ProxyError::Connect
                    });
                }
                Ok(Ok(s)) => s,
            };
        // Requests are written whole; Nagle would only hold the last segment back.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(stream)
    }

    /// Boxed: hyper's connection state is large, and a connection moves between the pool, a
    /// request future and a response body several times per request.
    async fn connect(&self, addr: SocketAddr) -> Result<Box<Conn>, ProxyError> {
        let stream = self.dial(addr).await?;
        let (tx, io) = self
            .shared
            .http1
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ProxyError::Upstream)?;
        Ok(Box::new(Conn {
            tx,
            io,
            ended: false,
        }))
    }
}

type Http1Io = http1::Connection<TokioIo<TcpStream>, Incoming>;
type SendResult = Result<Response<Incoming>, TrySendError<Request<Incoming>>>;

/// One HTTP/1.1 connection to an endpoint: the request side and the state machine that
/// moves bytes, which whoever holds the connection polls.
struct Conn {
    tx: http1::SendRequest<Incoming>,
    io: Http1Io,
    /// Set once `io` has finished (closed or failed); it is never polled again.
    ended: bool,
}

impl Conn {
    /// Moves bytes; ready once the connection has ended.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ended {
            return Poll::Ready(());
        }
        let r = ready!(Pin::new(&mut self.io).poll(cx));
        self.ended = true;
        if let Err(e) = r {
            tracing::debug!(error = %e, "upstream connection failed");
        }
        Poll::Ready(())
    }

    /// Polls the connection once without being woken later: for a connection nobody is
    /// waiting on, this is how a close or an error that arrived meanwhile is noticed.
    /// True when the connection can carry another request.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_io(&mut cx).is_pending() && self.tx.is_ready()
    }
}

/// Polls the connection and the response together until response headers arrive. Both
/// run in the calling task; the connection wakes it when the socket is ready.
async fn drive(conn: &mut Conn, sent: impl Future<Output = SendResult>) -> SendResult {
    let mut sent = pin!(sent);
    std::future::poll_fn(|cx| {
        // The connection goes first: it writes the request and, with luck, reads the
        // response in the same turn, so `sent` is ready when polled next. Once the
        // connection has ended, hyper has answered `sent` (with its error, or with a
        // response it read before the server closed).
        let _ = conn.poll_io(cx);
        sent.as_mut().poll(cx)
    })
    .await
}

/// Idle HTTP/1.1 connections to one endpoint, most recently used last.
#[derive(Default)]
pub struct Http1Pool {
    idle: Mutex<Vec<Idle>>,
    registered: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("idle", &self.idle())
            .finish()
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Http1Pool {
    fn checkout(&self, idle_timeout: Duration) -> Option<Box<Conn>> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let c = idle.pop()?;
                if c.since.elapsed() > idle_timeout {
                    // Older entries sit below this one: all of them have expired too.
                    idle.clear();
                    return None;
                }
                c
            };
            let mut conn = candidate.conn;
            if conn.reusable() {
                return Some(conn);
            }
        }
    }

    fn put(self: &Arc<Self>, conn: Box<Conn>, shared: &Shared) {
        if !self
            .registered
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            shared
                .pools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::downgrade(self));
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < shared.cfg.max_idle_per_endpoint {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Idle connections now held.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    fn expire(&self, idle_timeout: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| c.since.elapsed() <= idle_timeout);
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
        let live: Vec<Arc<Http1Pool>> = {
            let mut pools = shared.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in live {
            pool.expire(shared.cfg.idle_timeout);
        }
    }
}

/// A pooled connection on loan to one response.
struct Lease {
    conn: Box<Conn>,
    pool: Arc<Http1Pool>,
    shared: Arc<Shared>,
}

/// A response body from an upstream. For HTTP/1.1 it also carries the connection the body
/// arrives on, polls it as the body is read, and returns it to its pool when done.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
    ended: bool,
}

impl UpstreamBody {
    fn unpooled(inner: Incoming) -> Self {
        Self {
            inner,
            lease: None,
            ended: false,
        }
    }

    fn pooled(inner: Incoming, lease: Lease) -> Self {
        Self {
            inner,
            lease: Some(lease),
            ended: false,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = &mut this.lease {
            // The connection fills `inner`; without this poll nothing would arrive. Once it
            // has ended, what it delivered is already queued in `inner`.
            if lease.conn.poll_io(cx).is_ready() {
                this.lease = None;
            }
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        // A body read to the end (hyper stops at the declared length without asking for the
        // end) leaves the connection at a message boundary; anything else closes it.
        if (self.ended || self.inner.is_end_stream()) && lease.conn.reusable() {
            lease.pool.put(lease.conn, &lease.shared);
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
