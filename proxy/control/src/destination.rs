//! `io.linkerd.proxy.destination.Destination/Get`: a service's endpoints, and for each the
//! identity its proxy proves, its protocol hint and its weight. Every update is checked
//! whole before it is handed on: one bad entry refuses the update, and the caller keeps the
//! state it had.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use identity::Identity;
use linkerd2_proxy_api::destination::{
    destination_client::DestinationClient, protocol_hint, tls_identity, update, GetDestination,
    Update, WeightedAddr,
};
use tonic::transport::Channel;

use crate::channel::{Dial, Opened, Opening, Redialing, FIRST_ANSWER_WITHIN};

/// A large service's full endpoint set fits easily; this only stops a runaway message.
const MAX_UPDATE_BYTES: usize = 4 * 1024 * 1024;

/// One endpoint as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The identity the endpoint's proxy proves; `None` for unmeshed endpoints (plaintext).
    pub identity: Option<Identity>,
    /// The endpoint's proxy takes HTTP/1 upgraded to HTTP/2.
    pub http2: bool,
    /// Opaque streams go to this inbound port with a transport header.
    pub opaque_transport: Option<u16>,
    /// The set's labels overlaid with the endpoint's (`pod`, `serviceaccount`, ...).
    pub labels: BTreeMap<String, String>,
}

/// One checked update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(Vec<Discovered>),
    Remove(Vec<SocketAddr>),
    /// `exists: false`: the service is unknown to the control plane.
    NoEndpoints {
        exists: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("the destination service failed: {}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
    #[error("the destination service sent an invalid update: {0}")]
    Invalid(String),
    #[error("the destination stream ended")]
    Ended,
    #[error("the destination service sent no update within {within:?} of the watch opening; check linkerd-destination's health and logs")]
    NoAnswer {
        within: Duration,
        /// Later watches go on a new connection.
        redialed: bool,
    },
}

impl DestinationError {
    /// Stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DestinationError::Rpc(s) if s.code() == tonic::Code::Unavailable => "unavailable",
            DestinationError::Rpc(_) => "rpc",
            DestinationError::Invalid(_) => "invalid_update",
            DestinationError::Ended => "ended",
            DestinationError::NoAnswer { .. } => "no_answer",
        }
    }
}

/// A client of the destination service; cheap to clone (the channel is shared, and so is
/// its replacement when a watch goes unanswered).
#[derive(Clone)]
pub struct Resolver {
    clients: Redialing<DestinationClient<Channel>>,
    /// `LINKERD2_PROXY_DESTINATION_CONTEXT`: who is asking, for the controller's logs and
    /// topology decisions.
    context_token: String,
}

/// An open `Get` stream.
pub struct Watch {
    opened: Box<Opened<Update>>,
}

impl Resolver {
    pub fn new(dial: Dial, context_token: String) -> Result<Self, crate::ControlAddrError> {
        Ok(Self {
            clients: Redialing::new(dial, |channel| {
                DestinationClient::new(channel).max_decoding_message_size(MAX_UPDATE_BYTES)
            })?,
            context_token,
        })
    }

    /// Opens a watch on `authority` (`name:port`) and waits for its first update (see
    /// [`FIRST_ANSWER_WITHIN`]).
    pub async fn watch(&self, authority: &str) -> Result<Watch, DestinationError> {
        let request = GetDestination {
            scheme: "k8s".into(),
            path: authority.to_string(),
            context_token: self.context_token.clone(),
        };
        let opening = self
            .clients
            .watch(|mut client| async move { client.get(request).await })
            .await
            .map_err(DestinationError::Rpc)?;
        match opening {
            Opening::Answered(opened) => Ok(Watch { opened }),
            Opening::Silent { redialed } => Err(DestinationError::NoAnswer {
                within: FIRST_ANSWER_WITHIN,
                redialed,
            }),
        }
    }
}

impl Watch {
    /// The next checked update. An invalid update is reported and the stream stays usable;
    /// an RPC error or the end of the stream ends it.
    pub async fn next(&mut self) -> Result<Change, DestinationError> {
        match self.opened.message().await {
            Ok(Some(update)) => decode(update),
            Ok(None) => Err(DestinationError::Ended),
            Err(status) => Err(DestinationError::Rpc(status)),
        }
    }
}

/// Checks and converts one update.
pub fn decode(update: Update) -> Result<Change, DestinationError> {
    let invalid = |m: String| DestinationError::Invalid(m);
    match update.update {
        None => Err(invalid("an update with no content".into())),
        Some(update::Update::NoEndpoints(n)) => Ok(Change::NoEndpoints { exists: n.exists }),
        Some(update::Update::Remove(set)) => set
            .addrs
            .into_iter()
            .map(|a| SocketAddr::try_from(a).map_err(|_| invalid(format!("bad address {a:?}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Change::Remove),
        Some(update::Update::Add(set)) => {
            let common = set.metric_labels;
            set.addrs
                .into_iter()
                .map(|w| endpoint(w, &common))
                .collect::<Result<Vec<_>, _>>()
                .map(Change::Add)
        }
    }
}

fn endpoint(
    w: WeightedAddr,
    common: &std::collections::HashMap<String, String>,
) -> Result<Discovered, DestinationError> {
    let invalid = |m: String| DestinationError::Invalid(m);
    let tcp = w
        .addr
        .ok_or_else(|| invalid("an endpoint with no address".into()))?;
    let addr = SocketAddr::try_from(tcp).map_err(|_| invalid(format!("bad address {tcp:?}")))?;
    if addr.port() == 0 {
        return Err(invalid(format!("endpoint {addr} has port 0")));
    }
    let identity = match w.tls_identity.and_then(|t| t.strategy) {
        None => None,
        Some(tls_identity::Strategy::DnsLikeIdentity(d)) => Some(
            Identity::parse(&d.name)
                .map_err(|e| invalid(format!("endpoint {addr}: identity {:?}: {e}", d.name)))?,
        ),
        Some(tls_identity::Strategy::UriLikeIdentity(u)) => Some(
            Identity::parse(&u.uri)
                .map_err(|e| invalid(format!("endpoint {addr}: identity {:?}: {e}", u.uri)))?,
        ),
    };
    let (http2, opaque_transport) = match w.protocol_hint {
        None => (false, None),
        Some(hint) => {
            let port = match hint.opaque_transport {
                None => None,
                Some(t) => Some(
                    u16::try_from(t.inbound_port)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| {
                            invalid(format!(
                                "endpoint {addr}: opaque transport port {} is not a port",
                                t.inbound_port
                            ))
                        })?,
                ),
            };
            (
                matches!(hint.protocol, Some(protocol_hint::Protocol::H2(_))),
                port,
            )
        }
    };
    if opaque_transport.is_some() && identity.is_none() {
        return Err(invalid(format!(
            "endpoint {addr}: opaque transport without an identity to speak TLS to"
        )));
    }
    let mut labels: BTreeMap<String, String> =
        common.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.extend(w.metric_labels);
    Ok(Discovered {
        addr,
        weight: w.weight,
        identity,
        http2,
        opaque_transport,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use linkerd2_proxy_api::{
        destination::{AddrSet, NoEndpoints, ProtocolHint, TlsIdentity, WeightedAddrSet},
        net::TcpAddress,
    };

    use super::*;

    fn weighted(addr: &str, id: Option<&str>, h2: bool) -> WeightedAddr {
        WeightedAddr {
            addr: Some(TcpAddress::from(addr.parse::<SocketAddr>().unwrap())),
            weight: 10_000,
            tls_identity: id.map(|n| TlsIdentity {
                strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
                    tls_identity::DnsLikeIdentity { name: n.into() },
                )),
                server_name: None,
            }),
            protocol_hint: h2.then_some(ProtocolHint {
                protocol: Some(protocol_hint::Protocol::H2(protocol_hint::H2 {})),
                opaque_transport: None,
            }),
            metric_labels: [("pod".to_string(), "web-1".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_adds_removes_and_no_endpoints() {
        let id = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
        let add = Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs: vec![weighted("10.1.2.3:8080", Some(id), true)],
                metric_labels: [("namespace".to_string(), "emojivoto".to_string())].into(),
            })),
        };
        let Change::Add(eps) = decode(add).unwrap() else {
            panic!("not an add")
        };
        assert_eq!(eps[0].addr, "10.1.2.3:8080".parse().unwrap());
        assert_eq!(eps[0].identity.as_ref().unwrap().as_str(), id);
        assert!(eps[0].http2);
        assert_eq!(eps[0].labels["namespace"], "emojivoto");
        assert_eq!(eps[0].labels["pod"], "web-1");
        let remove = Update {
            update: Some(update::Update::Remove(AddrSet {
                addrs: vec![TcpAddress::from(
                    "10.1.2.3:8080".parse::<SocketAddr>().unwrap(),
                )],
            })),
        };
        assert_eq!(
            decode(remove).unwrap(),
            Change::Remove(vec!["10.1.2.3:8080".parse().unwrap()])
        );
        let none = Update {
            update: Some(update::Update::NoEndpoints(NoEndpoints { exists: false })),
        };
        assert_eq!(decode(none).unwrap(), Change::NoEndpoints { exists: false });
    }

    #[test]
    fn one_bad_entry_refuses_the_update() {
        let mut bad_id = weighted("10.1.2.3:8080", Some("not a name!"), false);
        let good = weighted("10.1.2.4:8080", None, false);
        let update = Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs: vec![good.clone(), bad_id.clone()],
                metric_labels: Default::default(),
            })),
        };
        assert_eq!(decode(update).unwrap_err().reason(), "invalid_update");
        bad_id.addr = None;
        let update = Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs: vec![bad_id],
                metric_labels: Default::default(),
            })),
        };
        assert!(decode(update).is_err());
        assert!(decode(Update { update: None }).is_err());
        let mut no_port = good;
        no_port.addr = Some(TcpAddress::from(
            "10.1.2.4:0".parse::<SocketAddr>().unwrap(),
        ));
        let update = Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                addrs: vec![no_port],
                metric_labels: Default::default(),
            })),
        };
        assert!(decode(update).is_err());
    }
}
