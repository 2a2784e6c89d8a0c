//! Reaching a control-plane service. Like linkerd2-proxy, a service on a loopback address is
//! spoken to in plaintext (HTTP/2 prior knowledge); any other address over TLS 1.3 with SNI =
//! the service's identity, whose certificate must chain to the trust anchors and name it.

use std::{
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use identity::Identity;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tonic::{
    codec::Streaming,
    transport::{Channel, Endpoint},
};

/// Opens a new channel to a control-plane service (a new connection on first use).
pub type Dial = Arc<dyn Fn() -> Result<Channel, ControlAddrError> + Send + Sync>;

/// How long a watch may take to open and bring its first message before it counts as
/// unanswered. Linkerd's controllers answer at once (`NoEndpoints` and the default server
/// included), so this only bounds a service that accepted the call and went quiet.
pub const FIRST_ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A gRPC client whose channel is swapped for a new one when a watch goes unanswered. tonic's
/// channel reconnects only when its connection fails; a service that keeps the connection and
/// its PINGs alive but answers nothing (a wedged replica behind the service's address) would
/// otherwise keep every new watch on it. Clones share the current client.
pub(crate) struct Redialing<C> {
    current: Arc<Mutex<(C, Instant)>>,
    dial: Dial,
    make: fn(Channel) -> C,
}

impl<C> Clone for Redialing<C> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
            dial: self.dial.clone(),
            make: self.make,
        }
    }
}

/// A watch's stream, with its first message (read while opening) handed on first.
pub(crate) struct Opened<T> {
    stream: Streaming<T>,
    first: Option<Result<Option<T>, tonic::Status>>,
}

impl<T> Opened<T> {
    /// The next message; `None` at the end of the stream.
    pub(crate) async fn message(&mut self) -> Result<Option<T>, tonic::Status> {
        match self.first.take() {
            Some(first) => first,
            None => self.stream.message().await,
        }
    }
}

/// How a watch's opening went.
pub(crate) enum Opening<T> {
    /// Boxed: the silent variant would otherwise be as large, and a watch opens once.
    Answered(Box<Opened<T>>),
    /// Nothing within [`FIRST_ANSWER_WITHIN`]; `redialed`: later watches go on a new
    /// connection.
    Silent { redialed: bool },
}

impl<C: Clone> Redialing<C> {
    /// `make` builds the client on a channel (its message limits, for one).
    pub(crate) fn new(dial: Dial, make: fn(Channel) -> C) -> Result<Self, ControlAddrError> {
        let first = make(dial()?);
        Ok(Self {
            current: Arc::new(Mutex::new((first, Instant::now()))),
            dial,
            make,
        })
    }

    /// Opens a watch with `call` on the current client and waits for its first message, both
    /// within [`FIRST_ANSWER_WITHIN`]. When nothing comes, the client is replaced, unless it
    /// is younger than that (watches that went quiet together redial once); streams open on
    /// the old connection go on there.
    pub(crate) async fn watch<T, F, Fut>(&self, call: F) -> Result<Opening<T>, tonic::Status>
    where
        F: FnOnce(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Streaming<T>>, tonic::Status>>,
    {
        let client = self.lock().0.clone();
        let opening = async {
            let mut stream = call(client).await?.into_inner();
            let first = stream.message().await;
            Ok::<_, tonic::Status>((stream, first))
        };
        match tokio::time::timeout(FIRST_ANSWER_WITHIN, opening).await {
            Ok(Ok((stream, first))) => Ok(Opening::Answered(Box::new(Opened {
                stream,
                first: Some(first),
            }))),
            Ok(Err(status)) => Err(status),
            Err(_) => Ok(Opening::Silent {
                redialed: self.redial(),
            }),
        }
    }

    fn redial(&self) -> bool {
        let mut current = self.lock();
        if current.1.elapsed() < FIRST_ANSWER_WITHIN {
            return false;
        }
        match (self.dial)() {
            Ok(channel) => {
                *current = ((self.make)(channel), Instant::now());
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "control-plane connection could not be replaced");
                false
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (C, Instant)> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a control-plane service listens and who it must prove to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlAddr {
    /// `host:port`, as the `LINKERD2_PROXY_*_SVC_ADDR` variables give it.
    pub addr: String,
    /// The service's identity (`*_SVC_NAME`); required unless the address is loopback.
    pub name: Option<Identity>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlAddrError {
    #[error("control-plane address {0:?} is not host:port")]
    BadAddr(String),
    #[error("control-plane address {0} is not loopback, so its identity (the matching *_SVC_NAME) must be set")]
    NoName(String),
    #[error("control-plane TLS configuration: {0}")]
    Tls(String),
    #[error("control-plane service name {0:?}: {1}")]
    BadName(String, identity::Error),
}

impl ControlAddr {
    pub fn new(addr: &str, name: Option<Identity>) -> Result<Self, ControlAddrError> {
        let addr = addr.trim().to_string();
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            return Err(ControlAddrError::BadAddr(addr));
        }
        let this = Self { addr, name };
        if !this.is_loopback() && this.name.is_none() {
            return Err(ControlAddrError::NoName(this.addr));
        }
        Ok(this)
    }

    /// From the `*_SVC_ADDR` / `*_SVC_NAME` pair as configuration gives it.
    pub fn parse(addr: &str, name: Option<&str>) -> Result<Self, ControlAddrError> {
        let name = name
            .map(|n| Identity::parse(n).map_err(|e| ControlAddrError::BadName(n.to_string(), e)))
            .transpose()?;
        Self::new(addr, name)
    }

    /// A channel as a mesh member speaks to the control plane: TLS 1.3 verifying the
    /// service's identity under `anchors`, presenting `client_cert` when given (the identity
    /// service is called before there is one); plaintext on loopback.
    pub fn connect(
        &self,
        client_cert: Option<Arc<identity::CertStore>>,
        anchors: &identity::TrustAnchors,
    ) -> Result<Channel, ControlAddrError> {
        self.channel(self.client_tls(client_cert, anchors)?)
    }

    /// As [`connect`](Self::connect), each call a new channel (its own connection): for a
    /// client that must leave a connection that stopped answering.
    pub fn dialer(
        &self,
        client_cert: Option<Arc<identity::CertStore>>,
        anchors: &identity::TrustAnchors,
    ) -> Result<Dial, ControlAddrError> {
        let tls = self.client_tls(client_cert, anchors)?;
        let this = self.clone();
        Ok(Arc::new(move || this.channel(tls.clone())))
    }

    fn client_tls(
        &self,
        client_cert: Option<Arc<identity::CertStore>>,
        anchors: &identity::TrustAnchors,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, ControlAddrError> {
        Ok(match (&self.name, self.is_loopback()) {
            (Some(name), false) => Some(Arc::new(
                identity::tls::client_config(client_cert, anchors, name.clone(), &[])
                    .map_err(|e| ControlAddrError::Tls(e.to_string()))?,
            )),
            _ => None,
        })
    }

    fn host(&self) -> &str {
        let host = self.addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Loopback: an IP literal in 127.0.0.0/8 or ::1, or `localhost`.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// A channel that connects on first use and reconnects after failures; `client_tls` is
    /// used for a non-loopback address.
    fn channel(
        &self,
        client_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Channel, ControlAddrError> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|_| ControlAddrError::BadAddr(self.addr.clone()))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .http2_keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_timeout(std::time::Duration::from_secs(3));
        let tls = if self.is_loopback() {
            None
        } else {
            let name = self
                .name
                .clone()
                .ok_or_else(|| ControlAddrError::NoName(self.addr.clone()))?;
            let config = client_tls.ok_or_else(|| {
                ControlAddrError::Tls(format!("no TLS client configuration for {}", self.addr))
            })?;
            let sni = identity::tls::server_name(&name)
                .map_err(|e| ControlAddrError::Tls(e.to_string()))?;
            Some((tokio_rustls::TlsConnector::from(config), sni))
        };
        let addr = self.addr.clone();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let addr = addr.clone();
            let tls = tls.clone();
            async move {
                let tcp = TcpStream::connect(addr.as_str()).await?;
                tcp.set_nodelay(true)?;
                let io = match tls {
                    None => Either::Left(tcp),
                    Some((connector, sni)) => Either::Right(connector.connect(sni, tcp).await?),
                };
                Ok::<_, std::io::Error>(TokioIo::new(io))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_needs_no_name_and_others_do() {
        assert!(ControlAddr::new("127.0.0.1:8080", None)
            .unwrap()
            .is_loopback());
        assert!(ControlAddr::new("[::1]:8086", None).unwrap().is_loopback());
        assert!(ControlAddr::new("localhost:8090", None)
            .unwrap()
            .is_loopback());
        assert!(matches!(
            ControlAddr::new(
                "linkerd-identity-headless.linkerd.svc.cluster.local.:8080",
                None
            ),
            Err(ControlAddrError::NoName(_))
        ));
        let name = Identity::parse(
            "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local",
        )
        .unwrap();
        let a = ControlAddr::new(
            "linkerd-identity-headless.linkerd.svc.cluster.local.:8080",
            Some(name),
        )
        .unwrap();
        assert!(!a.is_loopback());
        for bad in ["nohost", ":80", "host:0", "host:x"] {
            assert!(matches!(
                ControlAddr::new(bad, None),
                Err(ControlAddrError::BadAddr(_))
            ));
        }
    }
}
