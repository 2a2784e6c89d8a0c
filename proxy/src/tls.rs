//! Server-side TLS for both ports: read the ClientHello first, terminate only what is meant
//! for this gateway (SNI equal to its identity, or no SNI for callers dialling an address),
//! then finish the handshake under the same deadline.

use std::{sync::Arc, time::Duration};

use identity::Identity;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};

/// Why a TLS connection was not accepted; `reason` is the metric label.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub detail: String,
}

/// Linkerd's wording for connections to the gateway port that are not mTLS for it.
pub const NOT_FOR_US: &str = "direct connections must be mutually authenticated";

pub async fn accept<IO>(
    io: IO,
    config: Arc<ServerConfig>,
    own: &Identity,
    deadline: Duration,
) -> Result<TlsStream<IO>, Refused>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(|e| refused(&e))?;
        if let Some(sni) = start.client_hello().server_name() {
            if !sni.trim_end_matches('.').eq_ignore_ascii_case(own.as_str()) {
                return Err(Refused {
                    reason: "sni_mismatch",
                    detail: format!("{NOT_FOR_US}: SNI {sni:?} is not this gateway's identity"),
                });
            }
        }
        start.into_stream(config).await.map_err(|e| refused(&e))
    };
    match tokio::time::timeout(deadline, handshake).await {
        Ok(r) => r,
        Err(_) => Err(Refused {
            reason: "timeout",
            detail: "TLS handshake timed out".into(),
        }),
    }
}

fn refused(e: &std::io::Error) -> Refused {
    let reason = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(identity::tls::failure_reason)
        .unwrap_or("io");
    Refused {
        reason,
        detail: e.to_string(),
    }
}
