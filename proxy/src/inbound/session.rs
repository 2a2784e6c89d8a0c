//! What a caller's connection carries, decided once, right after the handshake: by ALPN, and
//! for Linkerd peers (ALPN `transport.l5d.io/v1`) by the transport header they send first.

use std::{sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt};
use transport_header::{DecodeError, Header, SessionProtocol, PREFACE};

use crate::{
    admission,
    authority::Authority,
    context::ConnCtx,
    context::Gateway,
    errors::{ConnError, ProxyError},
    metrics,
    routing::Target,
};

/// The kind of a caller's connection; each kind has one serving function.
pub enum Session {
    /// HTTP. With a `target` (named by a transport header) every request goes there whatever
    /// its authority says; without one, each request is routed by its authority.
    Http {
        version: HttpVersion,
        target: Option<Arc<Target>>,
    },
    /// Opaque TCP to the target a transport header named.
    Opaque { target: Arc<Target> },
}

/// Which HTTP server the connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
    /// No ALPN: HTTP/2 if the caller opens with its preface, else HTTP/1.1.
    Detect,
}

impl Session {
    /// Decides the kind from the negotiated ALPN, reading the transport header when the caller
    /// announced one. Nothing past the header is read.
    pub async fn detect<IO: AsyncRead + Unpin>(
        io: &mut IO,
        alpn: Option<&[u8]>,
        gw: &Gateway,
        conn: &ConnCtx,
        header_timeout: Duration,
    ) -> Result<Self, ConnError> {
        let version = match alpn {
            Some(transport_header::ALPN) => {
                return Self::from_transport_header(io, gw, conn, header_timeout).await
            }
            Some(b"h2") => HttpVersion::Http2,
            Some(b"http/1.1") => HttpVersion::Http1,
            _ => HttpVersion::Detect,
        };
        Ok(Session::Http {
            version,
            target: None,
        })
    }

    async fn from_transport_header<IO: AsyncRead + Unpin>(
        io: &mut IO,
        gw: &Gateway,
        conn: &ConnCtx,
        deadline: Duration,
    ) -> Result<Self, ConnError> {
        let header = tokio::time::timeout(deadline, read_header(io))
            .await
            .map_err(|_| ConnError::TransportHeaderTimeout)??;
        let name = header.name.as_deref().ok_or(ConnError::NoTargetName)?;
        // The decoder checked the name is a DNS name and the port is not 0; what is left to
        // refuse here (an over-long name) is a name the gateway cannot serve.
        let authority =
            Authority::from_parts(name, header.port).map_err(|_| ProxyError::BadDomain)?;
        let target = admission::header_target(gw, conn.admitted, &authority).await?;
        metrics::transport_header_connection(
            SessionProtocol::label(header.protocol),
            target.metric_name(),
            conn.client_id.as_str(),
        );
        tracing::debug!(peer = %conn.peer, client_id = %conn.client_id, target = %target.name, protocol = SessionProtocol::label(header.protocol), "transport header accepted");
        Ok(match header.protocol {
            Some(SessionProtocol::Http2) => Session::Http {
                version: HttpVersion::Http2,
                target: Some(target),
            },
            Some(SessionProtocol::Http1) => Session::Http {
                version: HttpVersion::Http1,
                target: Some(target),
            },
            None => {
                admission::authorize_stream(gw, conn)?;
                Session::Opaque { target }
            }
        })
    }
}

/// Reads exactly the header, never the application bytes after it.
async fn read_header<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<Header, DecodeError> {
    let mut prefix = [0u8; PREFACE.len() + 4];
    io.read_exact(&mut prefix)
        .await
        .map_err(|_| DecodeError::Truncated)?;
    let len = Header::message_len_from_prefix(&prefix)?;
    let mut msg = vec![0u8; len];
    io.read_exact(&mut msg)
        .await
        .map_err(|_| DecodeError::Truncated)?;
    Header::decode_message(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_the_header_and_nothing_after_it() {
        let header = Header {
            port: 80,
            name: Some("web-svc.emojivoto.svc.cluster.local".into()),
            protocol: Some(SessionProtocol::Http2),
        };
        let (mut tx, mut rx) = tokio::io::duplex(4096);
        let mut bytes = header.encode();
        bytes.extend_from_slice(b"PRI * HTTP/2.0");
        tx.write_all(&bytes).await.unwrap();
        assert_eq!(read_header(&mut rx).await.unwrap(), header);
        let mut rest = [0u8; 14];
        rx.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"PRI * HTTP/2.0");
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_header() {
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (
                b"GET / HTTP/1.1\r\nhost: x\r\n\r\n\0\0\0\0".to_vec(),
                DecodeError::BadPreface,
            ),
            (PREFACE[..10].to_vec(), DecodeError::Truncated),
            (
                [PREFACE, &(1u32 << 20).to_be_bytes()[..]].concat(),
                DecodeError::TooLarge(1 << 20),
            ),
            (
                [PREFACE, &5u32.to_be_bytes()[..], &[0x08, 0x00]].concat(),
                DecodeError::Truncated,
            ),
        ];
        for (bytes, want) in cases {
            let (mut tx, mut rx) = tokio::io::duplex(4096);
            tx.write_all(&bytes).await.unwrap();
            drop(tx);
            let got = read_header(&mut rx).await.unwrap_err();
            assert_eq!(got.reason(), want.reason(), "{bytes:?}");
        }
    }
}
