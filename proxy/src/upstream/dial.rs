//! The one way the gateway opens a connection to a local endpoint, whatever rides on it
//! (pooled HTTP/1.1, multiplexed HTTP/2, an upgraded tunnel, an opaque stream): TCP under the
//! connect timeout, then, for an endpoint discovery gave an identity, mTLS as the gateway
//! (its own certificate, SNI = the endpoint's identity, the server's certificate checked
//! against the trust anchors and that identity).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use identity::{CertStore, Identity, TrustAnchors};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::{errors::ProxyError, io::MeteredTcp, metrics::UpstreamConnMetrics, routing::Endpoint};

/// TCP keep-alive probes start after this much silence, so a peer that vanished without a
/// FIN (a node gone, a NAT entry dropped) is found and its pooled connection discarded.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// A connection to an endpoint: plaintext, or mTLS to a meshed workload.
pub type UpstreamIo = Either<MeteredTcp, TlsStream<MeteredTcp>>;

/// The ALPN a connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// None: the endpoint's proxy detects the protocol, as between Linkerd proxies.
    None,
    /// `transport.l5d.io/v1`: a transport header follows the handshake.
    TransportHeader,
}

/// The gateway's client side of mesh TLS: its certificate (renewed in place) and the
/// anchors, with one rustls config per server identity and ALPN, made on first use.
pub struct MeshTls {
    store: Arc<CertStore>,
    anchors: TrustAnchors,
    configs: Mutex<HashMap<(Identity, Alpn), Arc<rustls::ClientConfig>>>,
}

/// Configs kept at most; a gateway talks to a bounded set of workloads, and a control plane
/// naming endless identities must not grow this without end.
const MAX_CONFIGS: usize = 4096;

impl MeshTls {
    pub fn new(store: Arc<CertStore>, anchors: TrustAnchors) -> Self {
        Self {
            store,
            anchors,
            configs: Mutex::new(HashMap::new()),
        }
    }

    fn config(
        &self,
        server: &Identity,
        alpn: Alpn,
    ) -> Result<Arc<rustls::ClientConfig>, ProxyError> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = configs.get(&(server.clone(), alpn)) {
            return Ok(c.clone());
        }
        let protocols: &[&[u8]] = match alpn {
            Alpn::None => &[],
            Alpn::TransportHeader => &[transport_header::ALPN],
        };
        let config = identity::tls::client_config(
            Some(self.store.clone()),
            &self.anchors,
            server.clone(),
            protocols,
        )
        .map(Arc::new)
        .map_err(|e| {
            tracing::warn!(server = %server, error = %e, "cannot make a TLS client configuration");
            ProxyError::UpstreamTls
        })?;
        if configs.len() >= MAX_CONFIGS {
            configs.clear();
        }
        configs.insert((server.clone(), alpn), config.clone());
        Ok(config)
    }
}

#[derive(Clone)]
pub struct Dialer {
    pub connect_timeout: Duration,
    /// `None` when the gateway has no mesh identity to originate TLS with (tests, benches).
    pub tls: Option<Arc<MeshTls>>,
}

impl Dialer {
    /// TCP to `addr`, under the connect timeout.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ProxyError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
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
        let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(stream)
    }

    /// A connection to `endpoint` (at `addr`, which differs from the endpoint's own for an
    /// opaque-transport port): mTLS when discovery named its identity, else plaintext.
    pub async fn connect_endpoint(
        &self,
        endpoint: &Endpoint,
        addr: SocketAddr,
        alpn: Alpn,
    ) -> Result<UpstreamIo, ProxyError> {
        let tcp = MeteredTcp::new(
            self.connect(addr).await?,
            UpstreamConnMetrics::opened(&endpoint.labels),
        );
        let Some(server) = &endpoint.meta.identity else {
            return Ok(Either::Left(tcp));
        };
        let Some(tls) = &self.tls else {
            tracing::warn!(%addr, %server, "endpoint is meshed but the gateway has no mesh TLS");
            return Err(ProxyError::UpstreamTls);
        };
        let config = tls.config(server, alpn)?;
        let sni = identity::tls::server_name(server).map_err(|_| ProxyError::UpstreamTls)?;
        let handshake = tokio_rustls::TlsConnector::from(config).connect(sni, tcp);
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(stream)) => {
                if alpn == Alpn::TransportHeader
                    && stream.get_ref().1.alpn_protocol() != Some(transport_header::ALPN)
                {
                    tracing::warn!(%addr, %server, "endpoint did not accept the transport header ALPN");
                    return Err(ProxyError::UpstreamTls);
                }
                Ok(Either::Right(stream))
            }
            Ok(Err(e)) => {
                tracing::warn!(%addr, %server, error = %e, "upstream TLS handshake failed");
                Err(ProxyError::UpstreamTls)
            }
            Err(_) => {
                tracing::warn!(%addr, %server, "upstream TLS handshake timed out");
                Err(ProxyError::ConnectTimeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connects_have_their_reason() {
        let dialer = Dialer {
            connect_timeout: Duration::from_secs(2),
            tls: None,
        };
        // A port that was just free: nothing listens there.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(dialer.connect(free).await.unwrap_err(), ProxyError::Connect);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ok = dialer
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        assert!(ok.nodelay().unwrap());
        // A meshed endpoint without mesh TLS configured is refused, not sent plaintext.
        let meshed = Endpoint::new(
            listener.local_addr().unwrap(),
            crate::routing::EndpointMeta {
                identity: Some(
                    Identity::parse("web.emojivoto.serviceaccount.identity.linkerd.cluster.local")
                        .unwrap(),
                ),
                ..Default::default()
            },
        );
        assert_eq!(
            dialer
                .connect_endpoint(&meshed, meshed.addr, Alpn::None)
                .await
                .err(),
            Some(ProxyError::UpstreamTls)
        );
    }
}
