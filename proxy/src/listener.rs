//! The 4143 listener: bounded accept, plaintext refusal, the mTLS handshake under a timeout,
//! then HTTP/1.1 or HTTP/2 (by ALPN) served with hyper until the connection ends or drains.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::Watcher},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};
use transport_header::SessionProtocol;

use crate::{
    http::{handle, ConnCtx, Gateway},
    io::CountingIo,
    metrics::{self, ConnMetrics},
    transport,
};

/// Limits on every connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// HTTP/1 keep-alive connections must send the next request's headers within this.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_concurrent_streams: u32,
    /// Deadline for reading a Linkerd transport header after the handshake.
    pub header_timeout: Duration,
}

/// The three hyper servers a connection may get, chosen by ALPN.
struct Servers {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    either: auto::Builder<TokioExecutor>,
}

fn builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        // Left at hyper's default of 100 headers: that array lives on the stack, while an
        // explicit limit makes hyper allocate and zero one for every request.
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        // Answering PINGs is automatic; our own detect callers that vanished.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10))
        .adaptive_window(true)
        .max_pending_accept_reset_streams(Some(64));
    b
}

/// Accepts until `shutdown` flips, handing each connection to its own task.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    gw: Arc<Gateway>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
    watcher: impl Fn() -> Watcher,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let servers = Arc::new(Servers {
        h1: builder(&limits).http1_only(),
        h2: builder(&limits).http2_only(),
        either: builder(&limits),
    });
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::connection_refused("limit");
            tracing::warn!(%peer, max = limits.max_connections, "connection refused: at the connection limit");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            peer,
            config.clone(),
            gw.clone(),
            servers.clone(),
            limits,
            watcher(),
            permit,
        ));
    }
    tracing::info!("listener closed");
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    gw: Arc<Gateway>,
    servers: Arc<Servers>,
    limits: ConnLimits,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
) {
    // A TLS connection starts with a handshake record (0x16); anything else is refused before
    // rustls sees it, with a hint for humans who pointed plain HTTP here.
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.handshake_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => return refuse_plaintext(tcp, peer, first[0]).await,
        Ok(_) => return,
        Err(_) => {
            metrics::handshake_failure("timeout");
            tracing::warn!(%peer, "connection closed: no TLS handshake within the timeout");
            return;
        }
    }
    let local = tcp.local_addr().ok();
    let mut tls = match crate::tls::accept(
        CountingIo::new(tcp),
        config,
        &gw.identity,
        limits.handshake_timeout,
    )
    .await
    {
        Ok(tls) => tls,
        Err(refused) => {
            metrics::handshake_failure(refused.reason);
            tracing::warn!(%peer, reason = refused.reason, error = %refused.detail, "TLS handshake failed");
            return;
        }
    };
    let (io, session) = tls.get_mut();
    let client_id = match session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| identity::peer_identity(c))
    {
        Some(Ok(id)) => id,
        other => {
            let reason = match other {
                Some(Err(e)) => e.reason(),
                _ => "no_client_cert",
            };
            metrics::handshake_failure(reason);
            tracing::warn!(%peer, reason, "connection refused: no usable client identity");
            return;
        }
    };
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let conn_metrics = ConnMetrics::accepted(client_id.as_str(), local);
    io.attach(
        conn_metrics.read_bytes.clone(),
        conn_metrics.write_bytes.clone(),
    );
    let allowed = gw.callers.allows(&client_id);
    if !allowed {
        tracing::warn!(%peer, %client_id, "caller not in the allow-list; its requests get 403");
    }
    tracing::debug!(%peer, %client_id, alpn = ?alpn.as_deref().map(String::from_utf8_lossy), "connection accepted");
    let mut ctx = ConnCtx::new(&gw, peer, client_id, allowed, conn_metrics);
    let server = match alpn.as_deref() {
        Some(transport_header::ALPN) => {
            let Some(session) =
                transport::accept(&mut tls, &gw, &mut ctx, limits.header_timeout).await
            else {
                return;
            };
            match session {
                Some(SessionProtocol::Http2) => &servers.h2,
                Some(SessionProtocol::Http1) => &servers.h1,
                None => return transport::splice(tls, &gw, &ctx).await,
            }
        }
        Some(b"h2") => &servers.h2,
        Some(b"http/1.1") => &servers.h1,
        _ => &servers.either,
    };
    let ctx = Arc::new(ctx);
    let service = {
        let ctx = ctx.clone();
        hyper::service::service_fn(move |req| handle(gw.clone(), ctx.clone(), req))
    };
    let conn = server.serve_connection_with_upgrades(TokioIo::new(tls), service);
    if let Err(e) = watcher.watch(conn).await {
        ctx.metrics.set_close_error("EIO");
        tracing::debug!(%peer, client_id = %ctx.client_id, error = %e, "connection ended with an error");
    }
}

async fn refuse_plaintext(mut tcp: TcpStream, peer: SocketAddr, first: u8) {
    metrics::handshake_failure("plaintext");
    tracing::warn!(%peer, "connection refused: plaintext on the mTLS port");
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
