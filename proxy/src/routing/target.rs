//! A routable service and its endpoints. The endpoint set is fixed for static routes and DNS
//! answers, and changes under discovery (`linkerd-destination`): a request takes a snapshot of
//! the set when it picks, so an update never disturbs one in flight, and an endpoint that
//! stays in the set keeps its pooled connections.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, OnceLock, RwLock,
    },
    time::{Duration, Instant},
};

use identity::Identity;
use tokio::sync::Notify;

use super::{Balancer, Protocol};
use crate::{authority::Authority, errors::ProxyError};

/// What discovery says about an endpoint; empty for static and DNS endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// The workload's identity: connections to it are mTLS, its certificate must name this.
    pub identity: Option<Identity>,
    /// The endpoint's proxy takes HTTP/1 upgraded to HTTP/2 (`l5d-orig-proto`).
    pub http2: bool,
    /// Opaque streams go to this port of the endpoint's proxy with a transport header.
    pub opaque_transport: Option<u16>,
    /// Relative share of requests (discovery's weight; 0 for static and DNS endpoints, which
    /// all weigh the same).
    pub weight: u32,
    /// Discovery's metric labels for it (`namespace`, `service`, `pod`, ...), reported as
    /// `dst_*` on the outbound families.
    pub dst_labels: Vec<(String, String)>,
}

/// One address of a target, with its in-flight request count for balancing.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub meta: EndpointMeta,
    /// The connections kept open to this address.
    pub pool: Arc<crate::upstream::EndpointPool>,
    /// The outbound families' labels for it, made once.
    pub labels: crate::metrics::EndpointLabels,
    outstanding: AtomicUsize,
    health: Health,
}

/// Failure accrual: an endpoint that cannot be connected to (or drops requests) is passed
/// over by the balancer for a while, doubling from [`EJECT_MIN`] to [`EJECT_MAX`] while the
/// failures go on; once the time is up, the next request picked for it is the probe.
#[derive(Debug, Default)]
struct Health {
    /// Failures in a row.
    failures: AtomicU32,
    /// Until when it is passed over ([`clock_ms`]); 0: it is healthy.
    ejected_until: AtomicU64,
}

const EJECT_MIN: Duration = Duration::from_millis(500);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// Milliseconds since the first call, plus one (so 0 can mean "never").
fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Endpoint {
    pub fn new(addr: SocketAddr, meta: EndpointMeta) -> Self {
        Self {
            labels: crate::metrics::EndpointLabels::new(
                addr,
                meta.identity.as_ref(),
                &meta.dst_labels,
            ),
            addr,
            meta,
            pool: Arc::default(),
            outstanding: AtomicUsize::new(0),
            health: Health::default(),
        }
    }

    /// The endpoint failed a request (no connection, or the connection dropped): pass it
    /// over for a while.
    pub fn failed(&self) {
        // Failures of requests already under way when it was ejected (those in flight as it
        // died) say nothing new: only a failure while it was available (the first, or a
        // probe) lengthens the ejection.
        if !self.available() {
            return;
        }
        let n = self.health.failures.fetch_add(1, Ordering::Relaxed);
        let backoff = EJECT_MIN.saturating_mul(1 << n.min(16)).min(EJECT_MAX);
        self.health
            .ejected_until
            .store(clock_ms() + backoff.as_millis() as u64, Ordering::Relaxed);
        if n == 0 {
            tracing::info!(addr = %self.addr, ?backoff, "endpoint failing; passed over until it answers again");
        }
    }

    /// The endpoint answered: healthy again. Costs a load when it already was.
    pub fn succeeded(&self) {
        if self.health.failures.load(Ordering::Relaxed) != 0 {
            self.health.failures.store(0, Ordering::Relaxed);
            self.health.ejected_until.store(0, Ordering::Relaxed);
            tracing::info!(addr = %self.addr, "endpoint answering again");
        }
    }

    /// Whether the balancer may choose it now (reads the clock only while it is ejected).
    fn available(&self) -> bool {
        match self.health.ejected_until.load(Ordering::Relaxed) {
            0 => true,
            until => clock_ms() >= until,
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Whether this endpoint is less loaded than `other`, counting the request about to be
    /// placed and scaling by weight: (outstanding + 1) / weight, compared without division.
    fn lighter_than(&self, other: &Endpoint) -> bool {
        let w = |e: &Endpoint| u64::from(e.meta.weight.max(1));
        let load = |e: &Endpoint| e.outstanding() as u64 + 1;
        load(self) * w(other) < load(other) * w(self)
    }
}

/// Counts a request against its endpoint until dropped.
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a request waits for a discovered service with no endpoints to get some, before
/// it fails and the service goes into fail-fast (Linkerd's default queue failfast timeout).
const FAILFAST_TIMEOUT: Duration = Duration::from_secs(3);

/// Discovery state of a watched target.
#[derive(Debug, Default)]
struct Watched {
    /// Told when the endpoint set changes.
    changed: Notify,
    /// Set by the first update from the control plane.
    resolved: AtomicBool,
    /// The control plane does not know this service.
    missing: AtomicBool,
    /// Set after a request waited out [`FAILFAST_TIMEOUT`] with no endpoints: later requests
    /// fail at once until endpoints return.
    failfast: AtomicBool,
}

/// A routable service: its name, what it speaks and its addresses.
#[derive(Debug)]
pub struct Target {
    pub name: Authority,
    /// `name` as Linkerd's gateway writes it in `Host` and `Forwarded: host=`: without the
    /// port when it is HTTP's default (80), else `host:port`.
    pub host: Box<str>,
    /// `host` as the `Host` header HTTP/1.1 upstreams get.
    pub host_header: http::HeaderValue,
    /// `name:port`, the `l5d-dst-canonical` value.
    pub canonical_header: http::HeaderValue,
    /// `name` as the `:authority` HTTP/2 upstreams get.
    pub uri_authority: http::uri::Authority,
    pub protocol: Protocol,
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    balancer: Balancer,
    /// Present when discovery keeps the endpoint set current.
    watched: Option<Watched>,
    /// An upstream of this name has answered (or it is a configured route). Only then do
    /// metrics carry the name: a caller cycling through names or ports that resolve but
    /// never answer must not grow the label space ([`Target::metric_name`]).
    proven: AtomicBool,
}

impl Target {
    pub fn new(
        name: Authority,
        protocol: Protocol,
        addrs: &[SocketAddr],
        balancer: Balancer,
    ) -> Result<Self, ProxyError> {
        let endpoints = addrs
            .iter()
            .map(|a| Arc::new(Endpoint::new(*a, EndpointMeta::default())))
            .collect();
        Self::build(name, protocol, endpoints, balancer, None)
    }

    /// A target whose endpoints discovery will set (none yet).
    pub fn watched(
        name: Authority,
        protocol: Protocol,
        balancer: Balancer,
    ) -> Result<Self, ProxyError> {
        Self::build(
            name,
            protocol,
            Vec::new(),
            balancer,
            Some(Watched::default()),
        )
    }

    fn build(
        name: Authority,
        protocol: Protocol,
        endpoints: Vec<Arc<Endpoint>>,
        balancer: Balancer,
        watched: Option<Watched>,
    ) -> Result<Self, ProxyError> {
        let host: Box<str> = if name.port() == crate::authority::DEFAULT_PORT {
            name.host().into()
        } else {
            name.as_str().into()
        };
        Ok(Self {
            host_header: http::HeaderValue::from_str(&host)
                .map_err(|_| ProxyError::BadAuthority)?,
            canonical_header: http::HeaderValue::from_str(name.as_str())
                .map_err(|_| ProxyError::BadAuthority)?,
            host,
            uri_authority: name
                .as_str()
                .parse()
                .map_err(|_| ProxyError::BadAuthority)?,
            name,
            protocol,
            endpoints: RwLock::new(endpoints.into()),
            balancer,
            watched,
            proven: AtomicBool::new(false),
        })
    }

    /// Marks the name as one that answers: from now on metrics carry it.
    pub fn prove(&self) {
        // Read first: the store would dirty a cache line every request shares.
        if !self.proven.load(Ordering::Relaxed) {
            self.proven.store(true, Ordering::Relaxed);
        }
    }

    /// The name for metric labels: `None` until an upstream of it has answered.
    pub fn metric_name(&self) -> Option<&Authority> {
        self.proven.load(Ordering::Relaxed).then_some(&self.name)
    }

    /// The current endpoint set.
    pub fn endpoints(&self) -> Arc<[Arc<Endpoint>]> {
        match self.endpoints.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the endpoint set (discovery). Endpoints whose address and metadata are
    /// unchanged should be passed in as the same `Arc`s, so they keep their connections.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        let empty = endpoints.is_empty();
        match self.endpoints.write() {
            Ok(mut g) => *g = endpoints.into(),
            Err(p) => *p.into_inner() = endpoints.into(),
        }
        if let Some(w) = &self.watched {
            if !empty {
                w.failfast.store(false, Ordering::Relaxed);
            }
            w.changed.notify_waiters();
        }
    }

    /// Discovery has answered at least once (always true for fixed targets).
    pub fn is_resolved(&self) -> bool {
        self.watched
            .as_ref()
            .is_none_or(|w| w.resolved.load(Ordering::Acquire))
    }

    pub fn mark_resolved(&self) {
        if let Some(w) = &self.watched {
            w.resolved.store(true, Ordering::Release);
            w.changed.notify_waiters();
        }
    }

    /// Waits for discovery's first answer.
    pub async fn resolved(&self) {
        let Some(w) = &self.watched else { return };
        loop {
            let changed = w.changed.notified();
            if self.is_resolved() {
                return;
            }
            changed.await;
        }
    }

    /// The control plane says this service does not exist.
    pub fn mark_missing(&self) {
        if let Some(w) = &self.watched {
            w.missing.store(true, Ordering::Release);
        }
    }

    pub fn is_missing(&self) -> bool {
        self.watched
            .as_ref()
            .is_some_and(|w| w.missing.load(Ordering::Acquire))
    }

    /// Picks an endpoint for one request and counts it as outstanding. A discovered target
    /// with no endpoints makes the first request wait for some (up to the fail-fast timeout,
    /// then 504) and later ones fail at once with 503 until endpoints return.
    pub async fn pick(self: &Arc<Self>) -> Result<InFlight, ProxyError> {
        match self.try_pick() {
            // Boxed: the wait (and its timer) is the rare path, and would otherwise sit in
            // every request's future.
            Err(ProxyError::NoEndpoints) => Box::pin(self.wait_for_endpoints()).await,
            other => other,
        }
    }

    async fn wait_for_endpoints(&self) -> Result<InFlight, ProxyError> {
        let Some(w) = &self.watched else {
            return Err(ProxyError::NoEndpoints);
        };
        if w.failfast.load(Ordering::Relaxed) {
            return Err(ProxyError::NoEndpoints);
        }
        let wait = async {
            loop {
                let changed = w.changed.notified();
                match self.try_pick() {
                    Err(ProxyError::NoEndpoints) => changed.await,
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(FAILFAST_TIMEOUT, wait).await {
            Ok(r) => r,
            Err(_) => {
                w.failfast.store(true, Ordering::Relaxed);
                Err(ProxyError::FailFast)
            }
        }
    }

    /// [`pick`](Self::pick) without waiting: `NoEndpoints` when the set is empty.
    pub fn try_pick(&self) -> Result<InFlight, ProxyError> {
        let endpoints = self.endpoints();
        let n = endpoints.len();
        let i = match n {
            0 => return Err(ProxyError::NoEndpoints),
            1 => 0,
            _ => match self.balancer {
                Balancer::P2c => {
                    let r = fast_random();
                    let a = (r as usize) % n;
                    // A second, different index: offset by 1..n.
                    let b = (a + 1 + ((r >> 32) as usize) % (n - 1)) % n;
                    if endpoints[b].lighter_than(&endpoints[a]) {
                        b
                    } else {
                        a
                    }
                }
                Balancer::LeastOutstanding => {
                    let start = (fast_random() as usize) % n;
                    (0..n).map(|k| (start + k) % n).fold(start, |best, k| {
                        if endpoints[k].lighter_than(&endpoints[best]) {
                            k
                        } else {
                            best
                        }
                    })
                }
            },
        };
        // An ejected choice gives way to the next available endpoint; when none is, it is
        // used anyway (a lone endpoint is always tried, so it is used again as soon as it
        // answers).
        let i = if endpoints[i].available() {
            i
        } else {
            (1..n)
                .map(|k| (i + k) % n)
                .find(|&k| endpoints[k].available())
                .unwrap_or(i)
        };
        let endpoint = endpoints[i].clone();
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        Ok(InFlight(endpoint))
    }

    /// An endpoint other than `failed`, for a request that never reached it: the least
    /// loaded available one, else any other. `None` when there is no other.
    pub fn pick_other(&self, failed: &Endpoint) -> Option<InFlight> {
        let endpoints = self.endpoints();
        let others = || {
            endpoints
                .iter()
                .filter(|e| !std::ptr::eq(e.as_ref(), failed))
        };
        let best = |avail: bool| {
            others().filter(|e| !avail || e.available()).reduce(|a, b| {
                if b.lighter_than(a) {
                    b
                } else {
                    a
                }
            })
        };
        let endpoint = best(true).or_else(|| best(false))?.clone();
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(endpoint))
    }
}

/// xorshift64* seeded per thread: balancing needs spread, not cryptographic randomness.
fn fast_random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15);
            (t ^ (&t as *const u64 as u64)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn heavier_endpoints_take_more_of_the_load() {
        let name = Authority::parse("web-svc.emojivoto.svc.cluster.local:80").unwrap();
        let t = Arc::new(Target::watched(name, Protocol::Http1, Balancer::P2c).unwrap());
        let meta = |weight| EndpointMeta {
            weight,
            ..Default::default()
        };
        t.set_endpoints(vec![
            Arc::new(Endpoint::new(addr(1), meta(10_000))),
            Arc::new(Endpoint::new(addr(2), meta(30_000))),
        ]);
        // With two endpoints P2C compares both every time: loads stay in a 1:3 ratio (a tie
        // goes either way, so within one request of it).
        let held: Vec<_> = (0..40).map(|_| t.try_pick().unwrap()).collect();
        let eps = t.endpoints();
        let (light, heavy) = (eps[0].outstanding(), eps[1].outstanding());
        assert_eq!(light + heavy, 40);
        assert!((9..=11).contains(&light), "{light}:{heavy}");
        drop(held);
    }

    #[test]
    fn failing_endpoints_are_passed_over_until_their_time_is_up_and_a_lone_one_always_tried() {
        let name = Authority::parse("web-svc.emojivoto.svc.cluster.local:80").unwrap();
        let t = Target::new(
            name.clone(),
            Protocol::Http1,
            &[addr(1), addr(2)],
            Balancer::P2c,
        )
        .unwrap();
        let eps = t.endpoints();
        eps[0].failed();
        for _ in 0..50 {
            assert_eq!(t.try_pick().unwrap().endpoint().addr, addr(2));
        }
        // The other one for a request that never reached the first.
        assert_eq!(t.pick_other(&eps[0]).unwrap().endpoint().addr, addr(2));
        assert_eq!(t.pick_other(&eps[1]).unwrap().endpoint().addr, addr(1));
        // Both failing: used anyway.
        eps[1].failed();
        assert!(t.try_pick().is_ok());
        // Healthy again on success.
        eps[0].succeeded();
        eps[1].succeeded();
        let picks: std::collections::HashSet<_> = (0..50)
            .map(|_| t.try_pick().unwrap().endpoint().addr)
            .collect();
        assert_eq!(picks.len(), 2);
        let lone = Target::new(name, Protocol::Http1, &[addr(3)], Balancer::P2c).unwrap();
        lone.endpoints()[0].failed();
        assert_eq!(lone.try_pick().unwrap().endpoint().addr, addr(3));
        assert!(lone.pick_other(&lone.endpoints()[0]).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_target_waits_then_fails_fast_until_endpoints_return() {
        let name = Authority::parse("web-svc.emojivoto.svc.cluster.local:80").unwrap();
        let t = Arc::new(Target::watched(name, Protocol::Http1, Balancer::P2c).unwrap());
        // Endpoints arriving while a request waits serve it.
        let waiting = {
            let t = t.clone();
            tokio::spawn(async move { t.pick().await.map(|i| i.endpoint().addr) })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.set_endpoints(vec![Arc::new(Endpoint::new(
            addr(1),
            EndpointMeta::default(),
        ))]);
        assert_eq!(waiting.await.unwrap().unwrap(), addr(1));
        // Emptied: the first request waits out the failfast timeout, the next fails at once.
        t.set_endpoints(vec![]);
        assert_eq!(t.pick().await.err(), Some(ProxyError::FailFast));
        let before = tokio::time::Instant::now();
        assert_eq!(t.pick().await.err(), Some(ProxyError::NoEndpoints));
        assert_eq!(before.elapsed(), Duration::ZERO);
        t.set_endpoints(vec![Arc::new(Endpoint::new(
            addr(2),
            EndpointMeta::default(),
        ))]);
        assert_eq!(t.pick().await.unwrap().endpoint().addr, addr(2));
    }
}
