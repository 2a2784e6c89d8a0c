//! The gateway: accepts cross-cluster mTLS on 4143, authenticates the calling workload by its
//! certificate, and forwards each request (or stream) to the local service it names. The same
//! crate holds the `outbound` binary's proxy ([`outbound`]), the client side of that hop.
//!
//! A caller's connection goes through one layer per module: `listener`
//! (accept, permits) → `tls` (handshake, caller identity) → `inbound` (the connection's kind:
//! HTTP or opaque, from ALPN and the transport header) → `admission` (caller, loop, target) →
//! [`routing`] (authority → target, balancing) → `upstream` (one dialer; HTTP/1.1 pools,
//! HTTP/2 multiplexing, raw streams; mTLS to meshed endpoints). Beside them: `admin` (4191),
//! `metrics`, [`config`], `drain` (shutdown), and the gateway's membership of the mesh:
//! `cert_source` (its certificate, from files or `linkerd-identity`), `discovery`
//! (`linkerd-destination`) and `policy` (`linkerd-policy`). [`start`] wires them together;
//! ARCHITECTURE.md has the map.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod admin;
mod admission;
pub mod authority;
mod body;
mod cert_source;
mod chunked;
pub mod config;
mod context;
mod dashboard;
mod decimal;
mod discovery;
mod drain;
mod errors;
mod exchange;
mod framing_fields;
#[doc(hidden)]
pub mod fuzzing;
mod h2codec;
mod head_template;
mod headers;
mod inbound;
mod io;
mod listener;
mod log_limit;
mod message;
pub mod metrics;
pub mod outbound;
mod policy;
mod quota;
pub mod routing;
mod socket;
mod splice;
pub mod tap;
mod tls;
mod upstream;
mod watchdog;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use identity::tls as mtls;

use crate::{
    admin::{Admin, Readiness},
    admission::{CallerPattern, CallerPolicy},
    authority::Authority,
    config::Config,
    context::Gateway,
    drain::Drained,
    inbound::{HttpLimits, HttpServers, Inbound},
    routing::{Resolver, Router, RouterConfig, Target},
    upstream::{UpstreamConfig, Upstreams},
};
pub use crate::{drain::Drain, errors::ProxyError, listener::Listener};

/// A started gateway: its bound addresses and the means to stop it.
pub struct Running {
    pub listen: std::net::SocketAddr,
    pub admin_listen: std::net::SocketAddr,
    pub probe_listen: Option<std::net::SocketAddr>,
    readiness: Arc<Readiness>,
    drain: Drain,
    /// The accept loops; they end when draining begins.
    listeners: Vec<tokio::task::JoinHandle<()>>,
    drain_timeout: Duration,
}

async fn build_targets(cfg: &Config) -> anyhow::Result<Vec<Arc<Target>>> {
    let mut targets = Vec::new();
    for r in &cfg.routes {
        let name = Authority::parse(&r.authority)
            .map_err(|e| anyhow::anyhow!("route {:?}: {e}", r.authority))?;
        let mut addrs = Vec::new();
        for u in &r.upstreams {
            let resolved = tokio::net::lookup_host(u.as_str())
                .await
                .with_context(|| format!("route {}: cannot resolve upstream {u:?}", r.authority))?;
            addrs.extend(resolved);
        }
        addrs.sort();
        addrs.dedup();
        let t = Target::new(name, r.protocol, &addrs, cfg.balancer)
            .map_err(|e| anyhow::anyhow!("route {}: {e}", r.authority))?;
        // Configured by the operator: named in metrics from the start.
        t.prove();
        targets.push(Arc::new(t));
    }
    Ok(targets)
}

/// `a.b.c.d/n` or `x::/n`.
fn parse_network(s: &str) -> anyhow::Result<control::policy::Network> {
    let (ip, len) = s
        .split_once('/')
        .with_context(|| format!("network {s:?}: expected ADDRESS/PREFIX"))?;
    let ip: std::net::IpAddr = ip.parse().with_context(|| format!("network {s:?}"))?;
    let len: u8 = len.parse().with_context(|| format!("network {s:?}"))?;
    anyhow::ensure!(
        len <= if ip.is_ipv4() { 32 } else { 128 },
        "network {s:?}: prefix too long"
    );
    Ok(control::policy::Network {
        net: (ip, len),
        except: vec![],
    })
}

/// The gateway port's authorization: from the policy service when one is configured (the
/// default policy applies until it answers), or a default policy alone when one was named.
fn build_policy(
    cfg: &Config,
    store: &Arc<identity::CertStore>,
    anchors: &identity::TrustAnchors,
) -> anyhow::Result<Option<Arc<policy::Policy>>> {
    if cfg.policy.is_none() && cfg.default_inbound_policy.is_none() {
        return Ok(None);
    }
    let networks = cfg
        .cluster_networks
        .iter()
        .map(|n| parse_network(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let default = policy::DefaultPolicy::parse(
        cfg.default_inbound_policy
            .as_deref()
            .unwrap_or("all-authenticated"),
        networks,
    )
    .map_err(anyhow::Error::msg)?;
    let client = match &cfg.policy {
        None => None,
        Some(p) => {
            let addr = control::ControlAddr::parse(&p.svc_addr, p.svc_name.as_deref())?;
            tracing::info!(service = %addr.addr, workload = %p.workload, "authorization from the policy service");
            let dial = addr.dialer(Some(store.clone()), anchors)?;
            Some(control::PolicyClient::new(dial, p.workload.clone())?)
        }
    };
    Ok(Some(policy::Policy::new(
        default,
        client,
        cfg.listen.port(),
    )))
}

/// Most concurrent admin connections: kubelet and Prometheus, a handful at a time.
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Most concurrent probe connections: the probe port faces the internet, and each linked
/// cluster's service mirror holds one.
const PROBE_MAX_CONNECTIONS: usize = 128;

/// Loads credentials, binds both ports and starts serving; ready when this returns.
pub async fn start(
    cfg: Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<Running> {
    let anchors = cert_source::load_anchors(&cfg.trust_anchors)?;
    let certs = cert_source::start(&cfg, &anchors)?;
    let own_id = certs.identity.clone();
    let store = certs.store.clone();

    let callers = cfg
        .allow_clients
        .iter()
        .map(|p| CallerPattern::parse(p).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let discovery = match &cfg.destination {
        None => None,
        Some(d) => {
            let addr = control::ControlAddr::parse(&d.svc_addr, d.svc_name.as_deref())?;
            tracing::info!(service = %addr.addr, "cluster services are discovered from the destination service");
            // Over mTLS with the gateway's own certificate, as Linkerd's proxy does.
            let dial = addr.dialer(Some(store.clone()), &anchors)?;
            Some(discovery::Discovery::new(
                control::Resolver::new(dial, d.context.clone())?,
                cfg.balancer,
            ))
        }
    };
    let router = Router::new(RouterConfig {
        routes: build_targets(&cfg).await?,
        cluster_domain: cfg.cluster_domain.clone(),
        exported: cfg.exported.clone(),
        resolver: Resolver::new(cfg.hosts.clone()),
        balancer: cfg.balancer,
        dns_ttl: cfg.dns_ttl,
        discovery,
    });
    let policy = build_policy(&cfg, &store, &anchors)?;
    let drain = Drain::new();
    let taps = Arc::new(tap::Taps::default());
    let gw = Arc::new(Gateway {
        identity: own_id.clone(),
        router,
        upstreams: Upstreams::new(
            UpstreamConfig {
                connect_timeout: cfg.connect_timeout,
                response_timeout: cfg.response_timeout,
                idle_timeout: cfg.idle_timeout,
                max_idle_per_endpoint: 256,
            },
            // Meshed endpoints are spoken to as this gateway, with the certificate it serves.
            Some(Arc::new(upstream::MeshTls::new(
                store.clone(),
                anchors.clone(),
            ))),
        ),
        callers: CallerPolicy::new(callers),
        policy,
        drain: drain.clone(),
        access_log: cfg.access_log,
        timeouts: cfg.timeouts,
        quotas: Arc::new(quota::Quotas::new(
            cfg.caller_limits,
            cfg.caller_overrides
                .iter()
                .map(|o| {
                    CallerPattern::parse(&o.identity)
                        .map(|p| (p, o.limits()))
                        .map_err(anyhow::Error::msg)
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        )),
        taps: taps.clone(),
    });
    // Server preference: a caller offering the transport header gets it.
    let server_tls = Arc::new(mtls::server_config(
        store.clone(),
        &anchors,
        &[
            mtls::ALPN_TRANSPORT_HEADER,
            mtls::ALPN_H2,
            mtls::ALPN_HTTP11,
        ],
    )?);
    // The admin port's mTLS side: the service mirror's probe offers no ALPN.
    let admin_tls = Arc::new(mtls::server_config(store.clone(), &anchors, &[])?);

    let listener = Listener::bind(cfg.listen, "gateway", cfg.max_connections)
        .await?
        .with_pending(cfg.max_pending_connections);
    let admin_listener = Listener::bind(cfg.admin_listen, "admin", ADMIN_MAX_CONNECTIONS).await?;
    let probe_listener = match cfg.probe_listen {
        Some(addr) => Some(
            Listener::bind(addr, "probe", PROBE_MAX_CONNECTIONS)
                .await?
                .with_pending(PROBE_MAX_CONNECTIONS),
        ),
        None => None,
    };
    let listen = listener.local_addr()?;
    let admin_listen = admin_listener.local_addr()?;
    let probe_listen = probe_listener
        .as_ref()
        .map(Listener::local_addr)
        .transpose()?;

    let readiness = Arc::new(Readiness::default());
    let renders = Arc::new(tokio::sync::Semaphore::new(admin::MAX_RENDERS));
    let dashboard = Arc::new(dashboard::Dashboard {
        metrics: metrics.clone(),
        taps: taps.clone(),
        drain: drain.clone(),
        identity: own_id.clone(),
        viewers: Arc::new(tokio::sync::Semaphore::new(dashboard::MAX_VIEWERS)),
        renders: renders.clone(),
    });
    let admin_on = |surface| {
        Arc::new(Admin {
            surface,
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            tls: admin_tls.clone(),
            identity: own_id.clone(),
            handshake_timeout: cfg.handshake_timeout,
            renders: renders.clone(),
            dashboard: (surface == admin::Surface::Admin).then(|| dashboard.clone()),
        })
    };
    let admin = admin_on(admin::Surface::Admin);
    let probe = admin_on(admin::Surface::Probe);
    let inbound = Arc::new(Inbound {
        gw,
        tls: server_tls,
        servers: HttpServers::new(&HttpLimits {
            header_read_timeout: cfg.header_read_timeout,
            max_header_bytes: cfg.max_header_bytes,
            max_concurrent_streams: cfg.max_concurrent_streams,
        }),
        handshake_timeout: cfg.handshake_timeout,
        header_timeout: cfg.header_timeout,
    });
    let mut listeners = vec![
        tokio::spawn(admin::serve(admin_listener, admin, drain.clone())),
        tokio::spawn(listener.run(drain.clone(), move |accepted| {
            inbound.clone().serve(accepted)
        })),
    ];
    listeners.push(tokio::spawn(log_limit::run(drain.clone())));
    if let Some(l) = probe_listener {
        listeners.push(tokio::spawn(admin::serve(l, probe, drain.clone())));
    }
    let control_listen = match cfg.tap_svc_name.clone() {
        Some(tap_client) => {
            let l =
                Listener::bind(cfg.control_listen, "control", tap::server::MAX_CONNECTIONS).await?;
            let addr = l.local_addr()?;
            let control = tap::server::ControlServer {
                taps: taps.clone(),
                tls: admin_tls.clone(),
                identity: own_id.clone(),
                tap_client,
                handshake_timeout: cfg.handshake_timeout,
            };
            listeners.push(tokio::spawn(control.run(l, drain.clone())));
            Some(addr)
        }
        None => None,
    };
    cert_source::maintain(
        cfg.clone(),
        anchors,
        &certs,
        readiness.clone(),
        drain.clone(),
    )
    .await?;
    if certs.ready {
        readiness.set(true);
        tracing::info!(%listen, %admin_listen, probe_listen = ?probe_listen, control_listen = ?control_listen, identity = %own_id, "gateway ready");
    } else {
        tracing::info!(%listen, %admin_listen, probe_listen = ?probe_listen, control_listen = ?control_listen, identity = %own_id, "listening; ready once certified");
    }
    Ok(Running {
        listen,
        admin_listen,
        probe_listen,
        readiness,
        drain,
        listeners,
        drain_timeout: cfg.drain_timeout,
    })
}

impl Running {
    /// Not ready, stop accepting, let in-flight requests finish (HTTP/2 callers get GOAWAY)
    /// and streams run on up to the drain timeout, then close what is left. Either way the
    /// gateway has stopped when this returns.
    pub async fn drain(self) -> anyhow::Result<()> {
        self.readiness.set(false);
        let drain = self.drain.clone();
        let timeout = self.drain_timeout;
        let outcome = tokio::spawn(async move { drain.run(timeout).await });
        for l in self.listeners {
            let _ = l.await;
        }
        tracing::info!(connections = self.drain.open(), ?timeout, "draining");
        match outcome.await.context("drain task failed")? {
            Drained::Clean => tracing::info!("drained"),
            Drained::Closed { open } => tracing::info!(
                closed = open,
                "drained: closed the connections still open at the drain deadline"
            ),
        }
        Ok(())
    }
}
