//! `io.linkerd.proxy.inbound.InboundServerPolicies/WatchPort`: who may use a port, as
//! Linkerd's policy controller computes it from `Server`, `AuthorizationPolicy`,
//! `MeshTLSAuthentication`, `NetworkAuthentication` and `HTTPRoute` resources. Each answer is
//! checked and converted whole into a [`ServerPolicy`] that can be evaluated without the API
//! types; a bad answer is refused whole.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use linkerd2_proxy_api::{
    http_route as pb_route,
    inbound::{
        authn, inbound_server_policies_client::InboundServerPoliciesClient, proxy_protocol, Authz,
        HttpRoute as PbHttpRoute, PortSpec, Server,
    },
    meta::{metadata, Metadata},
    net::{ip_address, IpNetwork},
};
use tonic::transport::Channel;

use crate::channel::{Opened, Opening, Redialing, FIRST_ANSWER_WITHIN};

/// Regexes from the control plane are compiled with this size limit, so a hostile or broken
/// route cannot make the gateway build an enormous automaton.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;
const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

/// A port's policy.
#[derive(Debug, Clone)]
pub struct ServerPolicy {
    /// `srv_kind` / `srv_name` metric labels (`server`/`linkerd-gateway`, or `default`/...).
    pub kind: String,
    pub name: String,
    pub authorizations: Vec<Authorization>,
    /// HTTP routes; empty means one default route with the server's authorizations.
    pub http_routes: Vec<HttpRoute>,
}

#[derive(Debug, Clone)]
pub struct Authorization {
    /// `authz_kind` / `authz_name` metric labels.
    pub kind: String,
    pub name: String,
    pub networks: Vec<Network>,
    pub authn: Authn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authn {
    /// Any client, with or without TLS.
    Unauthenticated,
    /// Any client that presented a mesh identity.
    AnyIdentity,
    /// Clients whose identity is one of these, or ends with one of the suffixes.
    Identities {
        exact: Vec<String>,
        /// `.emojivoto.serviceaccount.identity.linkerd.cluster.local`-style, with the dot.
        suffixes: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub net: (IpAddr, u8),
    pub except: Vec<(IpAddr, u8)>,
}

#[derive(Debug, Clone)]
pub struct HttpRoute {
    pub kind: String,
    pub name: String,
    pub hosts: Vec<HostMatch>,
    /// Any one of these matching selects the route; none means every request.
    pub matches: Vec<RouteMatch>,
    pub authorizations: Vec<Authorization>,
}

#[derive(Debug, Clone)]
pub enum HostMatch {
    Exact(String),
    /// `.example.com`
    Suffix(String),
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<http::Method>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(Vec<u8>),
    Regex(regex::Regex),
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy service failed: {}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
    #[error("the policy service sent an invalid policy: {0}")]
    Invalid(String),
    #[error("the policy stream ended")]
    Ended,
    #[error("the policy service sent no policy within {within:?} of the watch opening; check linkerd-policy's health and logs")]
    NoAnswer {
        within: std::time::Duration,
        /// Later watches go on a new connection.
        redialed: bool,
    },
}

impl PolicyError {
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyError::Rpc(s) if s.code() == tonic::Code::Unavailable => "unavailable",
            PolicyError::Rpc(_) => "rpc",
            PolicyError::Invalid(_) => "invalid_policy",
            PolicyError::Ended => "ended",
            PolicyError::NoAnswer { .. } => "no_answer",
        }
    }
}

/// A client of the policy service.
#[derive(Clone)]
pub struct PolicyClient {
    clients: Redialing<InboundServerPoliciesClient<Channel>>,
    /// `LINKERD2_PROXY_POLICY_WORKLOAD`: which pod is asking.
    workload: String,
}

pub struct PolicyWatch {
    opened: Box<Opened<Server>>,
}

impl PolicyClient {
    pub fn new(dial: crate::Dial, workload: String) -> Result<Self, crate::ControlAddrError> {
        Ok(Self {
            clients: Redialing::new(dial, |channel| {
                InboundServerPoliciesClient::new(channel)
                    .max_decoding_message_size(MAX_POLICY_BYTES)
            })?,
            workload,
        })
    }

    /// Opens the port's watch and waits for its first policy (see [`FIRST_ANSWER_WITHIN`]).
    pub async fn watch_port(&self, port: u16) -> Result<PolicyWatch, PolicyError> {
        let spec = PortSpec {
            workload: self.workload.clone(),
            port: port.into(),
        };
        let opening = self
            .clients
            .watch(|mut client| async move { client.watch_port(spec).await })
            .await
            .map_err(PolicyError::Rpc)?;
        match opening {
            Opening::Answered(opened) => Ok(PolicyWatch { opened }),
            Opening::Silent { redialed } => Err(PolicyError::NoAnswer {
                within: FIRST_ANSWER_WITHIN,
                redialed,
            }),
        }
    }
}

impl PolicyWatch {
    pub async fn next(&mut self) -> Result<ServerPolicy, PolicyError> {
        match self.opened.message().await {
            Ok(Some(server)) => decode(server),
            Ok(None) => Err(PolicyError::Ended),
            Err(s) => Err(PolicyError::Rpc(s)),
        }
    }
}

fn invalid(m: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(m.into())
}

/// `kind`/`name` from a resource's metadata, as Linkerd labels its metrics.
fn meta(
    m: Option<Metadata>,
    labels: &HashMap<String, String>,
    default_kind: &str,
) -> (String, String) {
    match m.and_then(|m| m.kind) {
        Some(metadata::Kind::Default(name)) => ("default".into(), name),
        Some(metadata::Kind::Resource(r)) => (r.kind.to_ascii_lowercase(), r.name),
        None => (
            labels
                .get("kind")
                .cloned()
                .unwrap_or_else(|| default_kind.into()),
            labels.get("name").cloned().unwrap_or_default(),
        ),
    }
}

/// Checks and converts one `Server`.
pub fn decode(server: Server) -> Result<ServerPolicy, PolicyError> {
    let (kind, name) = meta(None, &server.labels, "server");
    let authorizations = authorizations(server.authorizations)?;
    let routes = match server.protocol.and_then(|p| p.kind) {
        None => return Err(invalid("a server with no protocol")),
        Some(proxy_protocol::Kind::Detect(d)) => d.http_routes,
        Some(proxy_protocol::Kind::Http1(h)) => h.routes,
        Some(proxy_protocol::Kind::Http2(h)) => h.routes,
        Some(proxy_protocol::Kind::Grpc(g)) => {
            let http_routes = g
                .routes
                .into_iter()
                .map(grpc_route)
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(ServerPolicy {
                kind,
                name,
                authorizations,
                http_routes,
            });
        }
        // Opaque and TLS servers: the server's authorizations apply.
        Some(_) => Vec::new(),
    };
    let http_routes = routes
        .into_iter()
        .map(route)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServerPolicy {
        kind,
        name,
        authorizations,
        http_routes,
    })
}

fn authorizations(all: Vec<Authz>) -> Result<Vec<Authorization>, PolicyError> {
    all.into_iter().map(authorization).collect()
}

fn authorization(a: Authz) -> Result<Authorization, PolicyError> {
    let (kind, name) = meta(a.metadata, &a.labels, "authorizationpolicy");
    let networks = a
        .networks
        .into_iter()
        .map(|n| {
            let net = n.net.ok_or_else(|| {
                invalid(format!("authorization {name}: a network with no address"))
            })?;
            Ok(Network {
                net: ip_net(net)?,
                except: n.except.into_iter().map(ip_net).collect::<Result<_, _>>()?,
            })
        })
        .collect::<Result<Vec<_>, PolicyError>>()?;
    let authn = match a.authentication.and_then(|a| a.permit) {
        None => return Err(invalid(format!("authorization {name}: no authentication"))),
        Some(authn::Permit::Unauthenticated(_)) => Authn::Unauthenticated,
        Some(authn::Permit::MeshTls(m)) => match m.clients {
            None => {
                return Err(invalid(format!(
                    "authorization {name}: mesh TLS with no clients"
                )))
            }
            Some(authn::permit_mesh_tls::Clients::Unauthenticated(_)) => Authn::AnyIdentity,
            Some(authn::permit_mesh_tls::Clients::Identities(ids)) => {
                let mut any = false;
                let suffixes = ids
                    .suffixes
                    .into_iter()
                    .filter_map(|s| {
                        if s.parts.is_empty() {
                            any = true;
                            None
                        } else {
                            Some(format!(".{}", s.parts.join(".").to_ascii_lowercase()))
                        }
                    })
                    .collect();
                if any {
                    Authn::AnyIdentity
                } else {
                    Authn::Identities {
                        exact: ids
                            .identities
                            .into_iter()
                            .map(|i| i.name.to_ascii_lowercase())
                            .collect(),
                        suffixes,
                    }
                }
            }
        },
    };
    Ok(Authorization {
        kind,
        name,
        networks,
        authn,
    })
}

fn ip_net(n: IpNetwork) -> Result<(IpAddr, u8), PolicyError> {
    let ip = match n.ip.and_then(|i| i.ip) {
        Some(ip_address::Ip::Ipv4(v4)) => IpAddr::V4(Ipv4Addr::from(v4)),
        Some(ip_address::Ip::Ipv6(v6)) => IpAddr::V6(Ipv6Addr::from(v6)),
        None => return Err(invalid("a network with no address")),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = u8::try_from(n.prefix_len)
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| invalid(format!("prefix length {} for {ip}", n.prefix_len)))?;
    Ok((ip, len))
}

fn regex(r: &str) -> Result<regex::Regex, PolicyError> {
    regex::RegexBuilder::new(r)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| invalid(format!("regex {r:?}: {e}")))
}

fn route(r: PbHttpRoute) -> Result<HttpRoute, PolicyError> {
    let (kind, name) = meta(r.metadata, &HashMap::new(), "httproute");
    let hosts = hosts(r.hosts);
    let mut matches = Vec::new();
    for rule in r.rules {
        for m in rule.matches {
            matches.push(route_match(m)?);
        }
    }
    let authorizations = authorizations(r.authorizations)?;
    Ok(HttpRoute {
        kind,
        name,
        hosts,
        matches,
        authorizations,
    })
}

/// A gRPC route as the HTTP route it is on the wire: `/<service>/<method>` paths.
fn grpc_route(r: linkerd2_proxy_api::inbound::GrpcRoute) -> Result<HttpRoute, PolicyError> {
    let (kind, name) = meta(r.metadata, &HashMap::new(), "grpcroute");
    let hosts = hosts(r.hosts);
    let mut matches = Vec::new();
    for rule in r.rules {
        for m in rule.matches {
            let path = match m.rpc {
                None => None,
                Some(rpc) => match (rpc.service.as_str(), rpc.method.as_str()) {
                    ("", "") => None,
                    (svc, "") => Some(PathMatch::Prefix(format!("/{svc}"))),
                    ("", method) => Some(PathMatch::Regex(regex(&format!(
                        "^/[^/]+/{}$",
                        regex::escape(method)
                    ))?)),
                    (svc, method) => Some(PathMatch::Exact(format!("/{svc}/{method}"))),
                },
            };
            matches.push(RouteMatch {
                path,
                headers: header_matches(m.headers)?,
                query: Vec::new(),
                method: Some(http::Method::POST),
            });
        }
    }
    let authorizations = authorizations(r.authorizations)?;
    Ok(HttpRoute {
        kind,
        name,
        hosts,
        matches,
        authorizations,
    })
}

fn hosts(hosts: Vec<pb_route::HostMatch>) -> Vec<HostMatch> {
    hosts
        .into_iter()
        .filter_map(|h| h.r#match)
        .map(|m| match m {
            pb_route::host_match::Match::Exact(e) => HostMatch::Exact(e.to_ascii_lowercase()),
            pb_route::host_match::Match::Suffix(s) => {
                let mut labels = s.reverse_labels;
                labels.reverse();
                HostMatch::Suffix(format!(".{}", labels.join(".").to_ascii_lowercase()))
            }
        })
        .collect()
}

fn header_matches(
    headers: Vec<pb_route::HeaderMatch>,
) -> Result<Vec<(http::HeaderName, ValueMatch)>, PolicyError> {
    headers
        .into_iter()
        .map(|h| {
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| invalid(format!("header name {:?}", h.name)))?;
            let value = match h.value {
                Some(pb_route::header_match::Value::Exact(v)) => ValueMatch::Exact(v),
                Some(pb_route::header_match::Value::Regex(r)) => ValueMatch::Regex(regex(&r)?),
                None => return Err(invalid(format!("header match {name} with no value"))),
            };
            Ok((name, value))
        })
        .collect()
}

fn route_match(m: pb_route::HttpRouteMatch) -> Result<RouteMatch, PolicyError> {
    let path = match m.path.and_then(|p| p.kind) {
        None => None,
        Some(pb_route::path_match::Kind::Exact(p)) => Some(PathMatch::Exact(p)),
        Some(pb_route::path_match::Kind::Prefix(p)) => Some(PathMatch::Prefix(p)),
        Some(pb_route::path_match::Kind::Regex(r)) => Some(PathMatch::Regex(regex(&r)?)),
    };
    let headers = header_matches(m.headers)?;
    let query = m
        .query_params
        .into_iter()
        .map(|q| {
            let value = match q.value {
                Some(pb_route::query_param_match::Value::Exact(v)) => {
                    ValueMatch::Exact(v.into_bytes())
                }
                Some(pb_route::query_param_match::Value::Regex(r)) => ValueMatch::Regex(regex(&r)?),
                None => return Err(invalid(format!("query match {} with no value", q.name))),
            };
            Ok((q.name, value))
        })
        .collect::<Result<_, PolicyError>>()?;
    let method = match m.method {
        None => None,
        Some(m) => {
            Some(http::Method::try_from(m).map_err(|_| invalid("an HTTP method that is not one"))?)
        }
    };
    Ok(RouteMatch {
        path,
        headers,
        query,
        method,
    })
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        in_net(self.net, ip) && !self.except.iter().any(|e| in_net(*e, ip))
    }
}

fn in_net((net, len): (IpAddr, u8), ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            (u32::from(n) & mask) == (u32::from(i) & mask)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            (u128::from(n) & mask) == (u128::from(i) & mask)
        }
        // An IPv4 client seen through an IPv6 socket.
        (IpAddr::V4(_), IpAddr::V6(i)) => i
            .to_ipv4_mapped()
            .is_some_and(|v4| in_net((net, len), IpAddr::V4(v4))),
        _ => false,
    }
}

impl Authorization {
    /// Whether a client at `ip` with `identity` (None: no TLS identity) is authorized.
    pub fn permits(&self, ip: IpAddr, identity: Option<&str>) -> bool {
        if !self.networks.is_empty() && !self.networks.iter().any(|n| n.contains(ip)) {
            return false;
        }
        match (&self.authn, identity) {
            (Authn::Unauthenticated, _) => true,
            (Authn::AnyIdentity, id) => id.is_some(),
            (Authn::Identities { exact, suffixes }, Some(id)) => {
                let id = id.to_ascii_lowercase();
                exact.contains(&id) || suffixes.iter().any(|s| id.ends_with(s.as_str()))
            }
            (Authn::Identities { .. }, None) => false,
        }
    }
}

impl HttpRoute {
    /// Whether this route takes a request for `host` (no port) with these parts.
    pub fn matches(
        &self,
        host: &str,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> bool {
        let host_ok = self.hosts.is_empty()
            || self.hosts.iter().any(|h| match h {
                HostMatch::Exact(e) => host.eq_ignore_ascii_case(e),
                HostMatch::Suffix(s) => host.to_ascii_lowercase().ends_with(s.as_str()),
            });
        host_ok
            && (self.matches.is_empty()
                || self.matches.iter().any(|m| m.matches(method, uri, headers)))
    }
}

impl RouteMatch {
    fn matches(&self, method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let path = uri.path();
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => path == p,
            Some(PathMatch::Prefix(p)) => {
                // Gateway API prefixes match whole segments: `/api` takes `/api` and `/api/x`.
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || path == p
                    || path
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            Some(PathMatch::Regex(r)) => r.is_match(path),
        };
        if !path_ok {
            return false;
        }
        let value_ok = |m: &ValueMatch, v: &[u8]| match m {
            ValueMatch::Exact(e) => e.as_slice() == v,
            ValueMatch::Regex(r) => std::str::from_utf8(v).is_ok_and(|s| r.is_match(s)),
        };
        self.headers.iter().all(|(name, m)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| value_ok(m, v.as_bytes()))
        }) && self.query.iter().all(|(name, m)| {
            uri.query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .any(|(k, v)| k == name && value_ok(m, v.as_bytes()))
        })
    }
}

#[cfg(test)]
mod tests {
    use linkerd2_proxy_api::inbound::{self as pb, ProxyProtocol};

    use super::*;

    fn mesh_ids(ids: &[&str], suffixes: &[&[&str]]) -> Authz {
        Authz {
            networks: vec![pb::Network {
                net: Some(IpNetwork {
                    ip: Some(IpAddr::from([0, 0, 0, 0]).into()),
                    prefix_len: 0,
                }),
                except: vec![],
            }],
            authentication: Some(pb::Authn {
                permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
                    clients: Some(authn::permit_mesh_tls::Clients::Identities(
                        authn::permit_mesh_tls::PermitClientIdentities {
                            identities: ids
                                .iter()
                                .map(|i| pb::Identity {
                                    name: i.to_string(),
                                })
                                .collect(),
                            suffixes: suffixes
                                .iter()
                                .map(|p| pb::IdentitySuffix {
                                    parts: p.iter().map(|s| s.to_string()).collect(),
                                })
                                .collect(),
                        },
                    )),
                })),
            }),
            labels: [
                ("kind".to_string(), "authorizationpolicy".to_string()),
                ("name".to_string(), "gw".to_string()),
            ]
            .into(),
            metadata: None,
        }
    }

    #[test]
    fn identities_suffixes_and_networks() {
        let server = Server {
            protocol: Some(ProxyProtocol {
                kind: Some(proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {})),
            }),
            server_ips: vec![],
            authorizations: vec![mesh_ids(
                &["probe.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local"],
                &[&[
                    "emojivoto",
                    "serviceaccount",
                    "identity",
                    "linkerd",
                    "cluster",
                    "local",
                ]],
            )],
            labels: [("name".to_string(), "linkerd-gateway".to_string())].into(),
        };
        let p = decode(server).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.name.as_str()),
            ("server", "linkerd-gateway")
        );
        let a = &p.authorizations[0];
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert!(a.permits(
            ip,
            Some("vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local")
        ));
        assert!(a.permits(
            ip,
            Some("probe.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local")
        ));
        assert!(!a.permits(
            ip,
            Some("web.other.serviceaccount.identity.linkerd.cluster.local")
        ));
        assert!(!a.permits(ip, None));
        let net = Network {
            net: (IpAddr::from([10, 1, 0, 0]), 16),
            except: vec![(IpAddr::from([10, 1, 2, 0]), 24)],
        };
        assert!(net.contains(IpAddr::from([10, 1, 9, 9])));
        assert!(!net.contains(IpAddr::from([10, 1, 2, 9])));
        assert!(!net.contains(IpAddr::from([10, 2, 0, 1])));
    }

    #[test]
    fn bad_policies_are_refused_whole() {
        let mut authz = mesh_ids(&[], &[]);
        authz.networks[0].net.as_mut().unwrap().prefix_len = 33;
        let server = Server {
            protocol: Some(ProxyProtocol {
                kind: Some(proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {})),
            }),
            server_ips: vec![],
            authorizations: vec![authz],
            labels: Default::default(),
        };
        assert_eq!(decode(server).unwrap_err().reason(), "invalid_policy");
        let no_protocol = Server {
            protocol: None,
            server_ips: vec![],
            authorizations: vec![],
            labels: Default::default(),
        };
        assert!(decode(no_protocol).is_err());
        assert!(regex("(a+)+{99999999}").is_err());
    }

    #[test]
    fn grpc_routes_match_service_and_method_paths() {
        use linkerd2_proxy_api::grpc_route::{GrpcRouteMatch, GrpcRpcMatch};
        let r = pb::GrpcRoute {
            metadata: None,
            hosts: vec![],
            authorizations: vec![mesh_ids(&[], &[&["emojivoto", "serviceaccount"]])],
            rules: vec![pb::grpc_route::Rule {
                matches: vec![GrpcRouteMatch {
                    rpc: Some(GrpcRpcMatch {
                        service: "emojivoto.v1.VotingService".into(),
                        method: "".into(),
                    }),
                    headers: vec![],
                }],
                filters: vec![],
            }],
        };
        let route = grpc_route(r).unwrap();
        let h = http::HeaderMap::new();
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        let host = "voting-svc.emojivoto.svc.cluster.local";
        assert!(route.matches(
            host,
            &http::Method::POST,
            &uri("/emojivoto.v1.VotingService/VoteDoughnut"),
            &h
        ));
        assert!(!route.matches(
            host,
            &http::Method::POST,
            &uri("/emojivoto.v1.EmojiService/ListAll"),
            &h
        ));
        assert!(!route.matches(
            host,
            &http::Method::GET,
            &uri("/emojivoto.v1.VotingService/VoteDoughnut"),
            &h
        ));
    }

    #[test]
    fn route_matches_follow_gateway_api_rules() {
        let m = RouteMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            method: Some(http::Method::GET),
            ..Default::default()
        };
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        let h = http::HeaderMap::new();
        assert!(m.matches(&http::Method::GET, &uri("/api/list"), &h));
        assert!(m.matches(&http::Method::GET, &uri("/api"), &h));
        assert!(!m.matches(&http::Method::GET, &uri("/apix"), &h));
        assert!(!m.matches(&http::Method::POST, &uri("/api/vote"), &h));
    }
}
