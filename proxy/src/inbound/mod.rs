//! The gateway port (4143): one caller's connection from accept to close.
//!
//! plaintext refusal → TLS ([`crate::tls`]) → caller identity → [`Session::detect`] → the
//! kind's serving function: [`http::serve`] or [`opaque::serve`]. A refusal at any step is a
//! [`ConnError`]: logged once with the caller's address (and identity, once known), counted,
//! and the connection closed.

mod http;
mod http1;
mod http2;
mod opaque;
mod session;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub use self::http::{HttpLimits, HttpServers};
pub(crate) use self::http1::{fuzz_request, Http1Body, Http1BodyError};
pub(crate) use self::http2::{Http2BodyError, RequestBody};
pub(crate) use self::session::HttpVersion;
use self::session::Session;
use crate::{
    context::{ConnCtx, Gateway},
    errors::{ConnError, ConnErrorFamily, ProxyError},
    io::CountingIo,
    listener::{Accepted, ConnPermit},
    log_limit,
    metrics::{self, ConnMetrics},
    socket::Socket,
    tls::{self, FirstByte},
    watchdog::Activity,
};

/// What the gateway port needs besides the shared [`Gateway`].
pub struct Inbound {
    pub gw: Arc<Gateway>,
    pub tls: Arc<rustls::ServerConfig>,
    pub servers: HttpServers,
    pub handshake_timeout: Duration,
    /// Deadline for a Linkerd transport header after the handshake.
    pub header_timeout: Duration,
}

impl Inbound {
    /// Serves one accepted connection to its end.
    pub async fn serve(self: Arc<Self>, accepted: Accepted) {
        let Accepted {
            tcp,
            peer,
            mut permit,
        } = accepted;
        let mut caller = None;
        if let Err(e) = self.connection(tcp, peer, &mut permit, &mut caller).await {
            metrics::conn_error(&e, "gateway");
            if !log_limit::allow("gateway", e.reason()) {
                return;
            }
            let client_id = caller.as_ref().map(|c: &identity::Identity| c.as_str());
            match e.family() {
                ConnErrorFamily::Tcp => {
                    tracing::warn!(%peer, client_id, reason = e.reason(), error = %e, "transport header refused; connection closed")
                }
                ConnErrorFamily::Handshake => {
                    tracing::warn!(%peer, client_id, reason = e.reason(), error = %e, "TLS handshake failed")
                }
                ConnErrorFamily::Refused => {
                    tracing::warn!(%peer, client_id, reason = e.reason(), error = %e, "connection refused")
                }
            }
        }
        drop(permit);
    }

    async fn connection(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: &mut ConnPermit,
        caller: &mut Option<identity::Identity>,
    ) -> Result<(), ConnError> {
        let local = tcp.local_addr().ok();
        let gw = &self.gw;
        let activity = Arc::new(Activity::default());
        // Until the caller has proven who it is, it holds a pending slot and may be shed to
        // make room for a newer connection. Boxed: the handshake's state (4.5 KB) is needed
        // only until it ends, and kept inline it would leave that much written, and resident,
        // in every connection's future for as long as the connection lives.
        let authenticate = Box::pin(async {
            match tls::first_byte(&tcp, self.handshake_timeout).await? {
                FirstByte::Tls => {}
                FirstByte::Closed => return Ok(None),
                FirstByte::Plaintext(b) => {
                    refuse_plaintext(tcp, b).await;
                    return Err(ConnError::Plaintext);
                }
            }
            tls::accept_caller(
                CountingIo::new(Socket::from(tcp), activity.clone()),
                self.tls.clone(),
                &gw.identity,
                self.handshake_timeout,
            )
            .await
            .map(Some)
        });
        // The TLS stream (1.3 KB) is boxed as it comes out of the handshake, and nothing
        // unboxed is named: every place a future keeps it on the way to its server (this
        // future while the session is detected, the server's arguments) would otherwise be a
        // 1.3 KB slot of its own, written once and resident for the connection's life.
        let (mut stream, client_id) = match tokio::select! {
            a = authenticate => a?,
            _ = permit.shed() => return Err(ConnError::Shed),
        } {
            Some((stream, client_id)) => (Box::new(stream), client_id),
            None => return Ok(()),
        };
        *caller = Some(client_id.clone());
        permit.admit()?;
        let quota = gw.quotas.connect(&client_id).map_err(|e| {
            metrics::caller_limited(client_id.as_str(), e.label());
            ProxyError::from(e)
        })?;
        let (io, session) = stream.get_mut();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let conn_metrics = ConnMetrics::accepted(client_id.as_str(), local);
        io.attach(
            conn_metrics.read_bytes.clone(),
            conn_metrics.write_bytes.clone(),
        );
        let ctx = ConnCtx::new(gw, peer, client_id, conn_metrics, activity, quota);
        if let Err(e) = ctx.admitted {
            if log_limit::allow("caller", e.reason()) {
                tracing::warn!(%peer, client_id = %ctx.client_id, reason = e.reason(), "caller refused; its requests get {}", e.status());
            }
        }
        tracing::debug!(%peer, client_id = %ctx.client_id, alpn = ?alpn.as_deref().map(String::from_utf8_lossy), "connection accepted");
        match Session::detect(&mut stream, alpn.as_deref(), gw, &ctx, self.header_timeout).await? {
            Session::Http { version, target } => {
                http::serve(stream, &self.servers, version, gw.clone(), ctx, target).await;
                Ok(())
            }
            // Boxed for the same reason: an opaque stream's state (5.3 KB) would otherwise
            // size, and fill, every HTTP connection's future too.
            Session::Opaque { target } => Box::pin(opaque::serve(stream, gw, &ctx, target)).await,
        }
    }
}

/// Answers HTTP clients that pointed plain HTTP at the mTLS port with a hint, then closes.
async fn refuse_plaintext(mut tcp: TcpStream, first: u8) {
    if first.is_ascii_alphabetic() {
        let _ = tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 31\r\n\r\nthis port requires mutual TLS\r\n")
            .await;
    }
    let _ = tcp.shutdown().await;
    // Closing with the caller's bytes unread would send RST and could destroy the response in
    // flight; read (bounded in size and time) until the caller closes.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        for _ in 0..16 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::Inbound;

    /// The size of what `f` returns, from its type alone.
    fn output_size<A, B, Fut>(_: impl FnOnce(A, B) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// A connection's task lives as long as the connection, and every byte of it written
    /// once (the handshake writes most) stays resident: 10,000 idle connections pay it 10,000
    /// times. The handshake, the TLS stream and the opaque path are boxed to keep it small
    /// (8.8 KB before); this holds it there.
    #[test]
    fn a_connection_task_stays_small() {
        let size = output_size(Inbound::serve);
        assert!(size <= 2048, "a connection's future is {size} bytes");
    }
}
