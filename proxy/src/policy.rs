//! Authorization from `linkerd-policy`: the gateway port's `Server` policy, watched and
//! applied to every connection (opaque streams) and every request (HTTP, per route), counted
//! as Linkerd counts it (`inbound_{http,tcp}_authz_{allow,deny}_total` with `srv_*`, `route_*`
//! and `authz_*` labels). Until the policy service answers, and for a port it knows no
//! server for, the configured default policy applies (`all-authenticated` unless set).

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use control::{
    policy::{Authn, Authorization, Network},
    PolicyClient, PolicyError, ServerPolicy,
};
use http::{HeaderMap, Method, Uri};
use identity::Identity;
use metrics::counter;

use crate::errors::ProxyError;

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// `LINKERD2_PROXY_INBOUND_DEFAULT_POLICY`'s values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultPolicy {
    AllAuthenticated,
    AllUnauthenticated,
    ClusterAuthenticated(Vec<Network>),
    ClusterUnauthenticated(Vec<Network>),
    Deny,
}

impl DefaultPolicy {
    /// Parses a policy name; `cluster_networks` are the cluster's pod and node ranges.
    pub fn parse(name: &str, cluster_networks: Vec<Network>) -> Result<Self, String> {
        Ok(match name.trim() {
            "all-authenticated" => Self::AllAuthenticated,
            "all-unauthenticated" => Self::AllUnauthenticated,
            "cluster-authenticated" => Self::ClusterAuthenticated(cluster_networks),
            "cluster-unauthenticated" => Self::ClusterUnauthenticated(cluster_networks),
            "deny" => Self::Deny,
            other => {
                return Err(format!(
                    "default policy {other:?}: expected all-authenticated, all-unauthenticated, cluster-authenticated, cluster-unauthenticated or deny"
                ))
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Self::AllAuthenticated => "all-authenticated",
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::ClusterAuthenticated(_) => "cluster-authenticated",
            Self::ClusterUnauthenticated(_) => "cluster-unauthenticated",
            Self::Deny => "deny",
        }
    }

    /// The policy a Linkerd proxy synthesises for it.
    fn server(&self) -> ServerPolicy {
        let any = || {
            vec![
                Network {
                    net: (IpAddr::from([0, 0, 0, 0]), 0),
                    except: vec![],
                },
                Network {
                    net: (IpAddr::from([0u16; 8]), 0),
                    except: vec![],
                },
            ]
        };
        let authz = |networks: Vec<Network>, authn: Authn| Authorization {
            kind: "default".into(),
            name: self.name().into(),
            networks,
            authn,
        };
        let authorizations = match self {
            Self::AllAuthenticated => vec![authz(any(), Authn::AnyIdentity)],
            Self::AllUnauthenticated => vec![authz(any(), Authn::Unauthenticated)],
            Self::ClusterAuthenticated(n) => vec![authz(n.clone(), Authn::AnyIdentity)],
            Self::ClusterUnauthenticated(n) => vec![authz(n.clone(), Authn::Unauthenticated)],
            Self::Deny => vec![],
        };
        ServerPolicy {
            kind: "default".into(),
            name: self.name().into(),
            authorizations,
            http_routes: vec![],
        }
    }
}

/// The gateway port's current policy.
pub struct Policy {
    current: RwLock<Arc<ServerPolicy>>,
    /// Bumped at every update, so open streams can check they are still authorized.
    version: tokio::sync::watch::Sender<u64>,
    /// The `srv_port` label.
    port: String,
}

impl Policy {
    /// Starts with `default`; with a client, watches `port` and follows the control plane.
    pub fn new(default: DefaultPolicy, client: Option<PolicyClient>, port: u16) -> Arc<Self> {
        let this = Arc::new(Self {
            current: RwLock::new(Arc::new(default.server())),
            version: tokio::sync::watch::Sender::new(0),
            port: port.to_string(),
        });
        if let Some(client) = client {
            tokio::spawn(watch(client, port, Arc::downgrade(&this)));
        }
        this
    }

    fn current(&self) -> Arc<ServerPolicy> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, p: ServerPolicy) {
        let p = Arc::new(p);
        match self.current.write() {
            Ok(mut g) => *g = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// Resolves when a policy update no longer authorizes an open stream from `client` at
    /// `ip`, counting it in `inbound_tcp_authz_terminate_total`; Linkerd's proxy closes such
    /// streams too.
    pub async fn revoked(&self, client: &Identity, ip: IpAddr) {
        let mut updates = self.version.subscribe();
        loop {
            if updates.changed().await.is_err() {
                return std::future::pending().await;
            }
            let p = self.current();
            if !p
                .authorizations
                .iter()
                .any(|a| a.permits(ip, Some(client.as_str())))
            {
                counter!(
                    "inbound_tcp_authz_terminate_total",
                    "srv_kind" => p.kind.clone(),
                    "srv_name" => p.name.clone(),
                    "srv_port" => self.port.clone(),
                    "tls" => "true",
                    "client_id" => client.to_string()
                )
                .increment(1);
                return;
            }
        }
    }

    /// An opaque stream from `client` at `ip`: allowed by one of the server's authorizations.
    pub fn check_tcp(&self, client: &Identity, ip: IpAddr) -> Result<(), ProxyError> {
        let p = self.current();
        let found = p
            .authorizations
            .iter()
            .find(|a| a.permits(ip, Some(client.as_str())));
        let srv = |extra: Vec<(&'static str, String)>| {
            let mut l = vec![
                ("srv_kind", p.kind.clone()),
                ("srv_name", p.name.clone()),
                ("srv_port", self.port.clone()),
            ];
            l.extend(extra);
            l.push(("tls", "true".into()));
            l.push(("client_id", client.to_string()));
            l
        };
        match found {
            Some(a) => {
                let l = srv(vec![
                    ("authz_kind", a.kind.clone()),
                    ("authz_name", a.name.clone()),
                ]);
                counter!("inbound_tcp_authz_allow_total", &l).increment(1);
                Ok(())
            }
            None => {
                counter!("inbound_tcp_authz_deny_total", &srv(vec![])).increment(1);
                Err(ProxyError::Unauthorized)
            }
        }
    }

    /// One HTTP request: its route (the first whose host and matches take it; with no routes,
    /// the default route), then one of that route's authorizations.
    pub fn check_http(
        &self,
        client: &Identity,
        ip: IpAddr,
        host: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(), ProxyError> {
        let p = self.current();
        let (route_kind, route_name, authorizations) = if p.http_routes.is_empty() {
            (
                "default".to_string(),
                "default".to_string(),
                &p.authorizations,
            )
        } else {
            match p
                .http_routes
                .iter()
                .find(|r| r.matches(host, method, uri, headers))
            {
                Some(r) => (r.kind.clone(), r.name.clone(), &r.authorizations),
                None => return Err(ProxyError::NoRoute),
            }
        };
        let mut l = vec![
            ("srv_kind", p.kind.clone()),
            ("srv_name", p.name.clone()),
            ("srv_port", self.port.clone()),
            ("route_kind", route_kind),
            ("route_name", route_name),
        ];
        match authorizations
            .iter()
            .find(|a| a.permits(ip, Some(client.as_str())))
        {
            Some(a) => {
                l.push(("authz_kind", a.kind.clone()));
                l.push(("authz_name", a.name.clone()));
                l.push(("tls", "true".into()));
                l.push(("client_id", client.to_string()));
                counter!("inbound_http_authz_allow_total", &l).increment(1);
                Ok(())
            }
            None => {
                l.push(("tls", "true".into()));
                l.push(("client_id", client.to_string()));
                counter!("inbound_http_authz_deny_total", &l).increment(1);
                Err(ProxyError::Unauthorized)
            }
        }
    }
}

/// Follows the control plane's policy for `port`; a broken stream keeps the last policy and
/// is reopened with backoff (on a new connection when it went unanswered); a bad answer is
/// refused and the last policy kept.
async fn watch(client: PolicyClient, port: u16, policy: std::sync::Weak<Policy>) {
    let mut retry = RETRY_MIN;
    loop {
        let failure = match client.watch_port(port).await {
            Err(e) => e,
            Ok(mut stream) => loop {
                let next = stream.next().await;
                let Some(p) = policy.upgrade() else { return };
                match next {
                    Ok(server) => {
                        retry = RETRY_MIN;
                        tracing::info!(
                            srv_kind = %server.kind, srv_name = %server.name,
                            authorizations = server.authorizations.len(), routes = server.http_routes.len(),
                            "inbound policy updated"
                        );
                        p.set(server);
                    }
                    Err(e @ PolicyError::Invalid(_)) => {
                        counter!("policy_updates_refused_total").increment(1);
                        tracing::warn!(reason = e.reason(), error = %e, "policy update refused; keeping the current policy");
                    }
                    Err(e) => break e,
                }
            },
        };
        if policy.strong_count() == 0 {
            return;
        }
        counter!("policy_stream_errors_total", "reason" => failure.reason()).increment(1);
        tracing::warn!(reason = failure.reason(), error = %failure, retry_in = ?retry, "policy watch broken; keeping the current policy");
        if let PolicyError::NoAnswer { redialed: true, .. } = failure {
            counter!("policy_redials_total").increment(1);
            tracing::info!("policy service connection replaced after a watch it left unanswered");
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}
