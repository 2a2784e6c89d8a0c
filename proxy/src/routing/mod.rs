//! Where a request goes: static routes first, then cluster names (discovered from
//! `linkerd-destination` when one is configured, else resolved by DNS and cached), then
//! nothing ([`ProxyError::BadDomain`]). Built once at start-up; the request path only reads it.

mod target;

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

pub use self::target::{Endpoint, EndpointMeta, InFlight, Target};
use crate::{authority::Authority, errors::ProxyError};

/// What the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    Http2,
}

/// How a target picks an endpoint per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Balancer {
    /// Power of two choices: the less loaded of two random endpoints.
    P2c,
    /// The endpoint with the fewest outstanding requests.
    LeastOutstanding,
}

/// Resolves names to addresses: the system resolver, with optional fixed entries (like
/// /etc/hosts) from the config.
#[derive(Debug, Default, Clone)]
pub struct Resolver {
    hosts: HashMap<String, Vec<std::net::IpAddr>>,
}

impl Resolver {
    pub fn new(hosts: HashMap<String, Vec<std::net::IpAddr>>) -> Self {
        Self {
            hosts: hosts
                .into_iter()
                .map(|(k, v)| (k.trim_end_matches('.').to_ascii_lowercase(), v))
                .collect(),
        }
    }

    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ProxyError> {
        if let Some(ips) = self.hosts.get(host) {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| ProxyError::Resolve)?
            .collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(ProxyError::Resolve);
        }
        Ok(addrs)
    }
}

/// How long a failed lookup is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);

/// A map built from configuration and only read afterwards (static routes, exported names).
///
/// Keyed hashing (std's SipHash, ~430 instructions for a service's 40-byte name, paid by every
/// routed request) protects a table from keys chosen to collide as they are inserted; these
/// tables take no key from a caller. A caller's name only looks one up, and a name built to
/// collide walks one probe sequence of a table of configured names, as any other miss does.
/// Maps that callers fill (the DNS caches) keep SipHash.
type FixedMap<K, V> = HashMap<K, V, BuildHasherDefault<FixedTableHasher>>;
type FixedSet<K> = HashSet<K, BuildHasherDefault<FixedTableHasher>>;

/// Eight bytes per step: a rotate, an xor and a multiply.
#[derive(Default, Clone, Copy)]
pub struct FixedTableHasher(u64);

impl FixedTableHasher {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for FixedTableHasher {
    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits, which the last multiply leaves the
        // least mixed: fold the high half in.
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// Routing policy and state.
pub struct Router {
    routes: FixedMap<Authority, Arc<Target>>,
    cluster_domain: String,
    /// When set, only these hosts (any port) may be reached.
    exported: Option<FixedSet<String>>,
    resolver: Resolver,
    balancer: Balancer,
    dns_ttl: Duration,
    dns_cache: RwLock<HashMap<Authority, (Instant, Arc<Target>)>>,
    /// Names DNS had no answer for, and when: asked again only after [`NEGATIVE_TTL`], so a
    /// caller cycling through made-up names costs one lookup per name, not one per request.
    negative: RwLock<HashMap<Authority, Instant>>,
    /// Bounds both caches against callers cycling through names.
    dns_cache_max: usize,
    /// With a destination service configured, cluster names are discovered, not resolved.
    discovery: Option<Arc<crate::discovery::Discovery>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.len())
            .field("cluster_domain", &self.cluster_domain)
            .finish()
    }
}

pub struct RouterConfig {
    pub routes: Vec<Arc<Target>>,
    pub cluster_domain: String,
    pub exported: Option<Vec<String>>,
    pub resolver: Resolver,
    pub balancer: Balancer,
    pub dns_ttl: Duration,
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Self {
        Self {
            routes: cfg
                .routes
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
            cluster_domain: cfg.cluster_domain.trim_matches('.').to_ascii_lowercase(),
            exported: cfg.exported.map(|v| {
                v.into_iter()
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                    .collect()
            }),
            resolver: cfg.resolver,
            balancer: cfg.balancer,
            dns_ttl: cfg.dns_ttl,
            dns_cache: RwLock::new(HashMap::new()),
            negative: RwLock::new(HashMap::new()),
            dns_cache_max: 4096,
            discovery: cfg.discovery,
        }
    }

    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    /// The target for `authority`, or why there is none.
    pub async fn route(&self, authority: &Authority) -> Result<Arc<Target>, ProxyError> {
        if let Some(exported) = &self.exported {
            if !exported.contains(authority.host()) {
                return Err(
                    if self.routes.contains_key(authority)
                        || authority.is_cluster_service(&self.cluster_domain)
                    {
                        ProxyError::NotExported
                    } else {
                        ProxyError::BadDomain
                    },
                );
            }
        }
        if let Some(t) = self.routes.get(authority) {
            return Ok(t.clone());
        }
        if !authority.is_cluster_service(&self.cluster_domain) {
            return Err(ProxyError::BadDomain);
        }
        if let Some(discovery) = &self.discovery {
            return discovery.target(authority).await;
        }
        let now = Instant::now();
        if let Some(t) = self.cached(authority, now) {
            return Ok(t);
        }
        if self.recently_failed(authority, now) {
            return Err(ProxyError::Resolve);
        }
        let addrs = match self
            .resolver
            .resolve(authority.host(), authority.port())
            .await
        {
            Ok(addrs) => addrs,
            Err(e) => {
                self.remember_failure(authority, now);
                return Err(e);
            }
        };
        let target = Arc::new(Target::new(
            authority.clone(),
            Protocol::Http1,
            &addrs,
            self.balancer,
        )?);
        let mut cache = match self.dns_cache.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if cache.len() >= self.dns_cache_max {
            // Expired answers go first, then names that never answered; names that did (real
            // services, with their pooled connections) are kept, and when only those fill the
            // cache the new target serves this request uncached.
            cache.retain(|_, (at, t)| {
                now.duration_since(*at) < self.dns_ttl && t.metric_name().is_some()
            });
        }
        if cache.len() < self.dns_cache_max {
            cache.insert(authority.clone(), (now, target.clone()));
        }
        Ok(target)
    }

    fn recently_failed(&self, authority: &Authority, now: Instant) -> bool {
        let negative = match self.negative.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        negative
            .get(authority)
            .is_some_and(|at| now.duration_since(*at) < NEGATIVE_TTL)
    }

    fn remember_failure(&self, authority: &Authority, now: Instant) {
        let mut negative = match self.negative.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if negative.len() >= self.dns_cache_max {
            negative.retain(|_, at| now.duration_since(*at) < NEGATIVE_TTL);
        }
        if negative.len() < self.dns_cache_max {
            negative.insert(authority.clone(), now);
        }
    }

    fn cached(&self, authority: &Authority, now: Instant) -> Option<Arc<Target>> {
        let cache = match self.dns_cache.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (at, t) = cache.get(authority)?;
        (now.duration_since(*at) < self.dns_ttl).then(|| t.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn fixed_tables_find_names_that_differ_in_one_byte_or_in_length() {
        let mut m: FixedMap<Authority, usize> = FixedMap::default();
        let mut names = Vec::new();
        for i in 0..500 {
            names.push(format!("svc-{i}.ns.svc.cluster.local:80"));
            names.push(format!("svc-{i}.ns.svc.cluster.local:8080"));
            names.push(format!("s{i}:80"));
        }
        for (i, n) in names.iter().enumerate() {
            m.insert(Authority::parse(n).unwrap(), i);
        }
        assert_eq!(m.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(m.get(&Authority::parse(n).unwrap()), Some(&i), "{n}");
        }
        assert_eq!(
            m.get(&Authority::parse("svc-0.ns.svc.cluster.local:81").unwrap()),
            None
        );
        // Spread: names one digit apart land in many buckets of a 1024-slot table.
        let build = BuildHasherDefault::<FixedTableHasher>::default();
        let buckets: HashSet<u64> = names
            .iter()
            .map(|n| std::hash::BuildHasher::hash_one(&build, n) & 1023)
            .collect();
        assert!(buckets.len() > 600, "{} buckets", buckets.len());
    }

    fn router(exported: Option<Vec<String>>) -> Router {
        let web = Authority::parse("web-svc.emojivoto.svc.cluster.local:80").unwrap();
        let t = Arc::new(Target::new(web, Protocol::Http1, &[addr(1)], Balancer::P2c).unwrap());
        let mut hosts = HashMap::new();
        hosts.insert(
            "emoji-svc.emojivoto.svc.cluster.local".to_string(),
            vec!["127.0.0.2".parse().unwrap()],
        );
        Router::new(RouterConfig {
            routes: vec![t],
            cluster_domain: "cluster.local".into(),
            exported,
            resolver: Resolver::new(hosts),
            balancer: Balancer::P2c,
            dns_ttl: Duration::from_secs(5),
            discovery: None,
        })
    }

    #[tokio::test]
    async fn static_then_cluster_dns_then_refused() {
        let r = router(None);
        let t = r
            .route(&Authority::parse("WEB-SVC.emojivoto.svc.cluster.local.").unwrap())
            .await
            .unwrap();
        assert_eq!(t.endpoints()[0].addr, addr(1));
        let t = r
            .route(&Authority::parse("emoji-svc.emojivoto.svc.cluster.local:8080").unwrap())
            .await
            .unwrap();
        assert_eq!(t.endpoints()[0].addr, "127.0.0.2:8080".parse().unwrap());
        // Cached: same Arc.
        let again = r
            .route(&Authority::parse("emoji-svc.emojivoto.svc.cluster.local:8080").unwrap())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&t, &again));
        assert_eq!(
            r.route(&Authority::parse("example.com").unwrap())
                .await
                .unwrap_err(),
            ProxyError::BadDomain
        );
    }

    #[tokio::test]
    async fn failed_lookups_are_remembered_briefly_and_the_caches_stay_bounded() {
        let mut r = router(None);
        r.dns_cache_max = 4;
        let name = |i: u32| Authority::parse(&format!("n{i}.ns.svc.cluster.local:80")).unwrap();
        // ".invalid" is never resolvable (RFC 6761); no lookup leaves this host for it.
        let bad = Authority::parse("x.invalid.svc.cluster.local").unwrap();
        let t0 = Instant::now();
        r.remember_failure(&bad, t0);
        assert!(r.recently_failed(&bad, t0));
        assert!(!r.recently_failed(&bad, t0 + NEGATIVE_TTL));
        for i in 100..110 {
            r.remember_failure(&name(i), t0);
        }
        assert!(r.negative.read().unwrap().len() <= 4);
        // Names served from fixed hosts fill the positive cache; unproven ones make room.
        let mut hosts = HashMap::new();
        for i in 0..10 {
            hosts.insert(
                format!("n{i}.ns.svc.cluster.local"),
                vec!["127.0.0.9".parse().unwrap()],
            );
        }
        r.resolver = Resolver::new(hosts);
        let proven = r.route(&name(0)).await.unwrap();
        proven.prove();
        for i in 1..10 {
            r.route(&name(i)).await.unwrap();
        }
        let cache = r.dns_cache.read().unwrap();
        assert!(cache.len() <= 4);
        assert!(cache.contains_key(&name(0)), "the proven name was evicted");
    }

    #[tokio::test]
    async fn export_allowlist() {
        let r = router(Some(vec!["web-svc.emojivoto.svc.cluster.local".into()]));
        assert!(r
            .route(&Authority::parse("web-svc.emojivoto.svc.cluster.local").unwrap())
            .await
            .is_ok());
        assert_eq!(
            r.route(&Authority::parse("emoji-svc.emojivoto.svc.cluster.local").unwrap())
                .await
                .unwrap_err(),
            ProxyError::NotExported
        );
        assert_eq!(
            r.route(&Authority::parse("example.com").unwrap())
                .await
                .unwrap_err(),
            ProxyError::BadDomain
        );
    }

    #[test]
    fn p2c_prefers_the_idle_endpoint_and_releases_on_drop() {
        let name = Authority::parse("x.svc.cluster.local").unwrap();
        let t = Arc::new(
            Target::new(name, Protocol::Http1, &[addr(1), addr(2)], Balancer::P2c).unwrap(),
        );
        let held = t.try_pick().unwrap();
        let busy = held.endpoint().addr;
        // With two endpoints both are always sampled: every pick goes to the idle one.
        for _ in 0..20 {
            let p = t.try_pick().unwrap();
            assert_ne!(p.endpoint().addr, busy);
        }
        drop(held);
        assert!(t.endpoints().iter().all(|e| e.outstanding() == 0));
    }

    #[test]
    fn least_outstanding_spreads_load() {
        let name = Authority::parse("x.svc.cluster.local").unwrap();
        let addrs: Vec<_> = (1..=4).map(addr).collect();
        let t = Arc::new(
            Target::new(name, Protocol::Http1, &addrs, Balancer::LeastOutstanding).unwrap(),
        );
        let held: Vec<_> = (0..8).map(|_| t.try_pick().unwrap()).collect();
        assert!(t.endpoints().iter().all(|e| e.outstanding() == 2));
        drop(held);
    }
}
