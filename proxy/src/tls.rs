//! Server-side TLS for both ports: tell TLS from plaintext by the first byte, read the
//! ClientHello first, terminate only what is meant for this gateway (SNI equal to its
//! identity, or no SNI for callers dialling an address), finish the handshake under the same
//! deadline, and read the caller's identity from its verified certificate.

use std::{sync::Arc, time::Duration};

use identity::Identity;
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};

use crate::errors::ConnError;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the caller's first byte says it speaks.
pub enum FirstByte {
    Tls,
    /// Anything else; the byte is kept for the plaintext hint.
    Plaintext(u8),
    /// The caller closed before sending anything.
    Closed,
}

/// Peeks at the first byte without consuming it, within `deadline`.
pub async fn first_byte(tcp: &TcpStream, deadline: Duration) -> Result<FirstByte, ConnError> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => Ok(FirstByte::Tls),
        Ok(Ok(1)) => Ok(FirstByte::Plaintext(first[0])),
        Ok(_) => Ok(FirstByte::Closed),
        Err(_) => Err(ConnError::HandshakeTimeout),
    }
}

/// The handshake, under `deadline` from the first byte to the last.
pub async fn accept<IO>(
    io: IO,
    config: Arc<ServerConfig>,
    own: &Identity,
    deadline: Duration,
) -> Result<TlsStream<IO>, ConnError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(|e| ConnError::from_tls_io(&e))?;
        if let Some(sni) = start.client_hello().server_name() {
            if !sni.trim_end_matches('.').eq_ignore_ascii_case(own.as_str()) {
                return Err(ConnError::SniMismatch(sni.to_string()));
            }
        }
        start
            .into_stream(config)
            .await
            .map_err(|e| ConnError::from_tls_io(&e))
    };
    tokio::time::timeout(deadline, handshake)
        .await
        .unwrap_or(Err(ConnError::HandshakeTimeout))
}

/// [`accept`], then the caller's identity: every mTLS port wants both.
pub async fn accept_caller<IO>(
    io: IO,
    config: Arc<ServerConfig>,
    own: &Identity,
    deadline: Duration,
) -> Result<(TlsStream<IO>, Identity), ConnError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = accept(io, config, own, deadline).await?;
    let caller = client_identity(stream.get_ref().1)?;
    Ok((stream, caller))
}

/// The caller's identity: the first DNS or URI name of the certificate the verifier accepted.
/// Read here, once per connection; the verifier checks only the chain.
pub fn client_identity(session: &rustls::ServerConnection) -> Result<Identity, ConnError> {
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(ConnError::Tls {
            reason: "no_client_cert",
            detail: "the caller presented no certificate".into(),
        })?;
    identity::peer_identity(leaf).map_err(ConnError::NoClientIdentity)
}
