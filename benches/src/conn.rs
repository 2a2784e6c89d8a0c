//! Connections to the target: TCP, then (for https) mTLS with the server's identity checked,
//! then optionally Linkerd's transport header, then an HTTP/1.1 or HTTP/2 sender.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use identity::{CertStore, Credentials, Identity, TrustAnchors};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::stats::ErrorKind;

pub type Body = Full<Bytes>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Where and how to connect; built once, shared by every worker.
pub struct Target {
    pub addr: SocketAddr,
    pub proto: Proto,
    /// The request authority (`:authority` / `Host`).
    pub authority: String,
    pub path_and_query: String,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Written after the handshake in transport-header mode.
    header: Option<Vec<u8>>,
    pub connect_timeout: Duration,
}

pub struct TlsOptions<'a> {
    pub cacert: &'a std::path::Path,
    pub cert: Option<&'a std::path::Path>,
    pub key: Option<&'a std::path::Path>,
    /// The identity the server's certificate must name.
    pub server_identity: &'a str,
}

impl Target {
    /// `url` is `http(s)://host:port/path?query`; `authority` overrides the request authority.
    pub async fn new(
        url: &str,
        authority: Option<&str>,
        proto: Proto,
        tls: Option<TlsOptions<'_>>,
        transport_header: bool,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("URL {url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => anyhow::bail!("URL {url:?}: scheme must be http or https"),
        };
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("URL {url:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{host} resolved to nothing"))?;
        let authority = authority.map(str::to_string).unwrap_or_else(|| {
            uri.authority()
                .map(|a| a.to_string())
                .unwrap_or_else(|| format!("{host}:{port}"))
        });
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into());
        let proto = if transport_header {
            Proto::Http2
        } else {
            proto
        };
        let tls = match (https, tls) {
            (false, _) => None,
            (true, None) => anyhow::bail!("https needs --cacert (and --cert/--key for mTLS)"),
            (true, Some(t)) => {
                let anchors = TrustAnchors::load(t.cacert)?;
                let store = match (t.cert, t.key) {
                    (Some(c), Some(k)) => Some(CertStore::new(&Credentials::load(c, k)?)?),
                    (None, None) => None,
                    _ => anyhow::bail!("--cert and --key go together"),
                };
                let id = Identity::parse(t.server_identity)?;
                let alpn: &[&[u8]] = match (transport_header, proto) {
                    (true, _) => &[transport_header::ALPN],
                    (false, Proto::Http2) => &[b"h2"],
                    (false, Proto::Http1) => &[b"http/1.1"],
                };
                let config = identity::tls::client_config(store, &anchors, id.clone(), alpn)?;
                Some((Arc::new(config), identity::tls::server_name(&id)?))
            }
        };
        if transport_header && tls.is_none() {
            anyhow::bail!("--transport-header needs an https URL with mTLS");
        }
        let header = transport_header.then(|| {
            let (name, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().unwrap_or(80)),
                None => (authority.clone(), 80),
            };
            transport_header::Header {
                port,
                name: Some(name),
                protocol: Some(transport_header::SessionProtocol::Http2),
            }
            .encode()
        });
        Ok(Self {
            addr,
            proto,
            authority,
            path_and_query,
            tls,
            header,
            connect_timeout,
        })
    }
}

pub enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Sender {
    pub async fn ready(&mut self) -> Result<(), ErrorKind> {
        match self {
            Sender::H1(s) => s.ready().await.map_err(|_| ErrorKind::Other),
            Sender::H2(s) => s.ready().await.map_err(|_| ErrorKind::Other),
        }
    }

    pub fn clone_h2(&self) -> Option<Self> {
        match self {
            Sender::H2(s) => Some(Sender::H2(s.clone())),
            Sender::H1(_) => None,
        }
    }

    pub async fn send(
        &mut self,
        req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// A new connection and its HTTP sender; the connection task runs in the background.
pub async fn connect(t: &Target) -> Result<Sender, ErrorKind> {
    let tcp = match tokio::time::timeout(t.connect_timeout, TcpStream::connect(t.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return Err(ErrorKind::Connect),
        Err(_) => return Err(ErrorKind::Timeout),
    };
    let _ = tcp.set_nodelay(true);
    match &t.tls {
        None => handshake(t.proto, tcp).await,
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let mut tls =
                match tokio::time::timeout(t.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    // Whatever ends the handshake (an alert, our verifier, or a server that closes,
                    // as the gateway does for an SNI that is not its own) is a TLS failure.
                    Ok(Err(_)) => return Err(ErrorKind::Tls),
                    Err(_) => return Err(ErrorKind::Timeout),
                };
            if let Some(h) = &t.header {
                if tls.get_ref().1.alpn_protocol() != Some(transport_header::ALPN) {
                    return Err(ErrorKind::Tls);
                }
                tls.write_all(h).await.map_err(|_| ErrorKind::Other)?;
            }
            handshake(t.proto, tls).await
        }
    }
}

async fn handshake<IO>(proto: Proto, io: IO) -> Result<Sender, ErrorKind>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    match proto {
        Proto::Http1 => {
            let (send, conn) = http1::handshake(io).await.map_err(|_| ErrorKind::Other)?;
            tokio::spawn(conn);
            Ok(Sender::H1(send))
        }
        Proto::Http2 => {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(4 * 1024 * 1024)
                .initial_connection_window_size(16 * 1024 * 1024)
                .handshake(io)
                .await
                .map_err(|_| ErrorKind::Other)?;
            tokio::spawn(conn);
            Ok(Sender::H2(send))
        }
    }
}
