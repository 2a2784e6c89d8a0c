//! A meshed workload as the gateway meets it behind discovery: a TLS 1.3 server with the
//! workload's certificate that requires a client certificate from the mesh, as a Linkerd
//! proxy's inbound side does, and reports what it saw.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use identity::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the workload answers with: `sni=<sni>;client=<client identity>;version=<HTTP
/// version>;orig_proto=<l5d-orig-proto>;l5d_client_id=<header>` for HTTP, and for an opaque
/// stream behind a transport header `port=<header port>;` followed by the echoed bytes.
pub struct MeshedWorkload {
    pub addr: SocketAddr,
}

impl MeshedWorkload {
    /// Serves with `identity`'s certificate from `pki`. With `transport_header`, it selects
    /// ALPN `transport.l5d.io/v1` and expects a header, then echoes opaque bytes.
    pub async fn start(pki: &Pki, identity: &str, transport_header: bool) -> Self {
        let creds = pki.credentials(identity).expect("workload credentials");
        let store = identity::CertStore::new(&creds).expect("store");
        let alpn: &[&[u8]] = if transport_header {
            &[transport_header::ALPN]
        } else {
            &[]
        };
        let config = Arc::new(
            identity::tls::server_config(store, &pki.anchors().expect("anchors"), alpn)
                .expect("server config"),
        );
        let listener = crate::server_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let config = config.clone();
                tokio::spawn(async move {
                    let Ok(start) = tokio_rustls::LazyConfigAcceptor::new(
                        rustls::server::Acceptor::default(),
                        tcp,
                    )
                    .await
                    else {
                        return;
                    };
                    let sni = start.client_hello().server_name().unwrap_or("").to_string();
                    let Ok(mut tls) = start.into_stream(config).await else {
                        return;
                    };
                    let client = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| identity::peer_identity(c).ok())
                        .map(|i| i.to_string())
                        .unwrap_or_default();
                    if transport_header {
                        echo_behind_header(&mut tls).await;
                        return;
                    }
                    let seen = format!("sni={sni};client={client}");
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let h = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let body = format!(
                                "{seen};version={:?};orig_proto={};l5d_client_id={}",
                                req.version(),
                                h("l5d-orig-proto"),
                                h("l5d-client-id"),
                            );
                            async move {
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from(body),
                                )))
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr }
    }
}

async fn echo_behind_header<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut IO) {
    let mut prefix = [0u8; transport_header::PREFACE.len() + 4];
    if io.read_exact(&mut prefix).await.is_err() {
        return;
    }
    let Ok(len) = transport_header::Header::message_len_from_prefix(&prefix) else {
        return;
    };
    let mut msg = vec![0u8; len];
    if io.read_exact(&mut msg).await.is_err() {
        return;
    }
    let Ok(header) = transport_header::Header::decode_message(&msg) else {
        return;
    };
    let mut got = Vec::new();
    let _ = io.read_to_end(&mut got).await;
    let mut out = format!("port={};", header.port).into_bytes();
    out.extend_from_slice(&got);
    let _ = io.write_all(&out).await;
    let _ = io.shutdown().await;
}
