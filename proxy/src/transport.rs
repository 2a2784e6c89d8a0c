//! Connections that carry Linkerd's transport header (ALPN `transport.l5d.io/v1`): read the
//! header under a deadline, check and route its target, then hand the stream to an HTTP server
//! or splice it to the target as opaque TCP.

use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpStream,
};
use transport_header::{DecodeError, Header, SessionProtocol, PREFACE};

use crate::{
    authority::Authority,
    errors::ProxyError,
    http::{ConnCtx, Gateway},
    metrics,
};

/// Reads exactly the header, never the application bytes after it.
pub async fn read_header<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<Header, DecodeError> {
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

/// Reads, checks and routes the header; on success `ctx.target` is set and the session
/// protocol returned. On failure the refusal is logged and counted and `None` returned: the
/// caller closes the connection without forwarding anything.
pub async fn accept<IO: AsyncRead + Unpin>(
    io: &mut IO,
    gw: &Gateway,
    ctx: &mut ConnCtx,
    deadline: Duration,
) -> Option<Option<SessionProtocol>> {
    let refuse = |error: &'static str, detail: String| {
        metrics::tcp_error(error);
        tracing::warn!(peer = %ctx.peer, client_id = %ctx.client_id, error, detail, "transport header refused; connection closed");
    };
    let header = match tokio::time::timeout(deadline, read_header(io)).await {
        Err(_) => {
            refuse(
                "transport header timeout",
                "no header within the deadline".into(),
            );
            return None;
        }
        Ok(Err(e)) => {
            refuse(e.label(), e.to_string());
            return None;
        }
        Ok(Ok(h)) => h,
    };
    let Some(name) = header.name.as_deref() else {
        refuse(
            "transport header name required",
            "the header names no target".into(),
        );
        return None;
    };
    let authority = match Authority::from_parts(name, header.port) {
        Ok(a) if a.is_cluster_service(gw.router.cluster_domain()) => a,
        _ => {
            refuse(
                "gateway domain invalid",
                format!("{name} is not under svc.{}", gw.router.cluster_domain()),
            );
            return None;
        }
    };
    if !ctx.allowed {
        refuse(
            ProxyError::CallerDenied.as_str(),
            format!("target {authority}"),
        );
        return None;
    }
    if ctx.client_id == gw.identity {
        refuse(ProxyError::Loop.as_str(), format!("target {authority}"));
        return None;
    }
    let target = match gw.router.route(&authority).await {
        Ok(t) => t,
        Err(e) => {
            refuse(e.as_str(), format!("target {authority}"));
            return None;
        }
    };
    metrics::transport_header_connection(
        SessionProtocol::label(header.protocol),
        header.port,
        target.name.host(),
        ctx.client_id.as_str(),
    );
    tracing::debug!(peer = %ctx.peer, client_id = %ctx.client_id, target = %target.name, protocol = SessionProtocol::label(header.protocol), "transport header accepted");
    ctx.target = Some(target);
    Some(header.protocol)
}

/// Opaque TCP: connects to one of the target's endpoints and copies both ways until both
/// sides are done, passing half-closes through.
pub async fn splice<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, gw: &Gateway, ctx: &ConnCtx) {
    let Some(target) = ctx.target.clone() else {
        return;
    };
    let inflight = match target.pick() {
        Ok(i) => i,
        Err(e) => {
            metrics::tcp_error(e.as_str());
            return;
        }
    };
    let addr = inflight.endpoint().addr;
    let mut upstream = match tokio::time::timeout(gw.connect_timeout, TcpStream::connect(addr))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics::tcp_error(ProxyError::Connect.as_str());
            tracing::warn!(peer = %ctx.peer, client_id = %ctx.client_id, target = %target.name, %addr, error = %e, "opaque upstream connect failed");
            return;
        }
        Err(_) => {
            metrics::tcp_error(ProxyError::ConnectTimeout.as_str());
            tracing::warn!(peer = %ctx.peer, client_id = %ctx.client_id, target = %target.name, %addr, "opaque upstream connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let started = std::time::Instant::now();
    match tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
        Ok((up, down)) => {
            if gw.access_log {
                tracing::info!(
                    target: "access",
                    client_id = %ctx.client_id, tls = true, authority = %target.name, protocol = "opaque",
                    bytes_in = up, bytes_out = down, duration_ms = started.elapsed().as_millis() as u64,
                    upstream = %addr, peer = %ctx.peer,
                );
            }
        }
        Err(e) => {
            ctx.metrics.set_close_error("EIO");
            tracing::debug!(peer = %ctx.peer, client_id = %ctx.client_id, target = %target.name, error = %e, "opaque stream ended with an error");
        }
    }
    drop(inflight);
}
