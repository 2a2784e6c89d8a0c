//! The gateway: accepts cross-cluster mTLS on 4143, authenticates the calling workload by its
//! certificate, and forwards each request to the local service its authority names.
//!
//! Layers, one module each: [`listener`] (accept, TLS, serve) → [`http`] (policy, headers,
//! forwarding) → [`routing`] (authority → target, balancing) → [`upstream`] (pooled clients).
//! Beside them: [`admin`] (4191), [`metrics`], [`config`]. [`run`] wires them together.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod authority;
pub mod config;
pub mod errors;
pub mod http;
pub mod io;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod routing;
pub mod tls;
pub mod transport;
pub mod upstream;

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use hyper_util::server::graceful::GracefulShutdown;
use identity::{tls as mtls, CertStore, Credentials, TrustAnchors};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    admin::{Admin, Readiness},
    authority::Authority,
    config::Config,
    policy::{CallerPattern, CallerPolicy},
    routing::{Resolver, Router, RouterConfig, Target},
    upstream::{UpstreamConfig, Upstreams},
};

/// A started gateway: its bound addresses and the means to stop it.
pub struct Running {
    pub listen: std::net::SocketAddr,
    pub admin_listen: std::net::SocketAddr,
    readiness: Arc<Readiness>,
    shutdown: watch::Sender<bool>,
    graceful: Arc<GracefulShutdown>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drain_timeout: Duration,
}

fn load_credentials(cfg: &Config, anchors: &TrustAnchors) -> anyhow::Result<Credentials> {
    let creds = Credentials::load(&cfg.cert, &cfg.key)?;
    creds.verify(anchors).with_context(|| {
        format!(
            "{} is not valid under {}",
            cfg.cert.display(),
            cfg.trust_anchors.display()
        )
    })?;
    Ok(creds)
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
        targets.push(Arc::new(t));
    }
    Ok(targets)
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Loads credentials, binds both ports and starts serving; ready when this returns.
pub async fn start(
    cfg: Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<Running> {
    let anchors = TrustAnchors::load(&cfg.trust_anchors)?;
    let creds = load_credentials(&cfg, &anchors)?;
    let own_id = creds.identity().clone();
    let store = CertStore::new(&creds)?;
    crate::metrics::cert_expiry(creds.info().not_after_unix(), own_id.as_str());

    let callers = cfg
        .allow_clients
        .iter()
        .map(|p| CallerPattern::parse(p).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let router = Router::new(RouterConfig {
        routes: build_targets(&cfg).await?,
        cluster_domain: cfg.cluster_domain.clone(),
        exported: cfg.exported.clone(),
        resolver: Resolver::new(cfg.hosts.clone()),
        balancer: cfg.balancer,
        dns_ttl: cfg.dns_ttl,
    });
    let gw = Arc::new(http::Gateway {
        identity: own_id.clone(),
        router,
        upstreams: Upstreams::new(UpstreamConfig {
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            idle_timeout: cfg.idle_timeout,
            max_idle_per_endpoint: 256,
        }),
        callers: CallerPolicy::new(callers),
        connect_timeout: cfg.connect_timeout,
        access_log: cfg.access_log,
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

    let listener = bind(cfg.listen, "gateway").await?;
    let admin_listener = bind(cfg.admin_listen, "admin").await?;
    let listen = listener.local_addr()?;
    let admin_listen = admin_listener.local_addr()?;

    let readiness = Arc::new(Readiness::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let limits = listener::ConnLimits {
        max_connections: cfg.max_connections,
        handshake_timeout: cfg.handshake_timeout,
        header_read_timeout: cfg.header_read_timeout,
        max_header_bytes: cfg.max_header_bytes,
        max_concurrent_streams: cfg.max_concurrent_streams,
        header_timeout: cfg.header_timeout,
    };
    let mut tasks = Vec::new();
    let admin = Arc::new(Admin {
        readiness: readiness.clone(),
        metrics,
        tls: admin_tls,
        identity: own_id.clone(),
        handshake_timeout: cfg.handshake_timeout,
    });
    tasks.push(tokio::spawn(admin::serve(
        admin_listener,
        admin,
        shutdown_rx.clone(),
    )));
    let watcher_source = graceful.clone();
    tasks.push(tokio::spawn(listener::serve(
        listener,
        server_tls,
        gw,
        limits,
        shutdown_rx.clone(),
        move || watcher_source.watcher(),
    )));
    tokio::spawn(reload_credentials(cfg.clone(), anchors, store, shutdown_rx));
    readiness.set(true);
    tracing::info!(%listen, %admin_listen, identity = %own_id, "gateway ready");
    Ok(Running {
        listen,
        admin_listen,
        readiness,
        shutdown,
        graceful,
        tasks,
        drain_timeout: cfg.drain_timeout,
    })
}

/// Picks up renewed certificates (cert-manager or a sidecar rewriting the files) without a
/// restart; a renewal that does not verify is logged and ignored.
async fn reload_credentials(
    cfg: Config,
    anchors: TrustAnchors,
    store: Arc<CertStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stamp = |cfg: &Config| {
        let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (m(&cfg.cert), m(&cfg.key))
    };
    let mut last = stamp(&cfg);
    let mut tick = tokio::time::interval(cfg.cert_reload_interval.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = stamp(&cfg);
        if now == last {
            continue;
        }
        match load_credentials(&cfg, &anchors).and_then(|c| {
            store.set(&c)?;
            Ok(c)
        }) {
            Ok(c) => {
                last = now;
                crate::metrics::cert_expiry(c.info().not_after_unix(), c.identity().as_str());
                tracing::info!(not_after = %c.info().not_after, "reloaded certificate");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "certificate changed but cannot be used; keeping the current one")
            }
        }
    }
}

impl Running {
    /// Not ready, stop accepting, let in-flight requests finish (HTTP/2 callers get GOAWAY)
    /// up to the drain timeout.
    pub async fn drain(self) -> anyhow::Result<()> {
        self.readiness.set(false);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // The listener task held the other reference; it has finished.
        let graceful = Arc::try_unwrap(self.graceful)
            .map_err(|_| anyhow::anyhow!("listener still running after shutdown"))?;
        tracing::info!(connections = graceful.count(), timeout = ?self.drain_timeout, "draining");
        if tokio::time::timeout(self.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            bail!(
                "drain timeout: connections still open after {:?}",
                self.drain_timeout
            );
        }
        tracing::info!("drained");
        Ok(())
    }
}
