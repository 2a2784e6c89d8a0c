//! The one way the gateway opens a connection to a local endpoint, whatever rides on it
//! (pooled HTTP/1.1, multiplexed HTTP/2, an upgraded tunnel, an opaque stream).

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use crate::errors::ProxyError;

/// TCP keep-alive probes start after this much silence, so a peer that vanished without a
/// FIN (a node gone, a NAT entry dropped) is found and its pooled connection discarded.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct Dialer {
    pub connect_timeout: Duration,
}

impl Dialer {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connects_have_their_reason() {
        let dialer = Dialer {
            connect_timeout: Duration::from_secs(2),
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
    }
}
