//! Opaque TCP to the target a transport header named: one endpoint, bytes both ways.

use std::{sync::Arc, time::Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    context::{ConnCtx, Gateway},
    errors::ConnError,
    metrics,
    routing::Target,
    splice::{splice, Spliced},
    watchdog::{self, Idle},
};

/// Connects to one of the target's endpoints and joins the caller's stream to it until both
/// sides are done (or the drain deadline closes them).
pub async fn serve<IO>(
    mut io: IO,
    gw: &Gateway,
    conn: &ConnCtx,
    target: Arc<Target>,
) -> Result<(), ConnError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut inflight = target.pick().await?;
    let mut retried = false;
    // A failed connect sent nothing: one more try on another endpoint.
    let mut upstream = loop {
        let endpoint = inflight.endpoint();
        match gw.upstreams.connect_opaque(endpoint).await {
            Ok(io) => {
                endpoint.succeeded();
                break io;
            }
            Err(e) => {
                tracing::debug!(peer = %conn.peer, client_id = %conn.client_id, target = %target.name, addr = %endpoint.addr, error = %e, "opaque upstream connect failed");
                if e.is_endpoint_failure() {
                    endpoint.failed();
                }
                match target.pick_other(endpoint).filter(|_| !retried) {
                    Some(other) => {
                        retried = true;
                        inflight = other;
                    }
                    None => return Err(e.into()),
                }
            }
        }
    };
    let addr = inflight.endpoint().addr;
    target.prove();
    let started = Instant::now();
    // With a policy, a stream it stops authorizing is closed, as Linkerd's proxy does; and a
    // stream idle too long, or whose caller stopped reading, is closed too.
    let revoked = async {
        match &gw.policy {
            Some(p) => p.revoked(&conn.client_id, conn.peer.ip()).await,
            None => std::future::pending().await,
        }
    };
    let t = gw.timeouts;
    let watch = watchdog::spawn(
        conn.activity.clone(),
        Idle::Bytes(t.opaque_idle),
        t.write_stall,
    );
    let stop = async {
        tokio::select! {
            _ = revoked => "unauthorized",
            v = watch => {
                metrics::watchdog_closed(v.reason(), "opaque");
                v.reason()
            }
        }
    };
    match splice(&mut io, &mut upstream, &gw.drain, "opaque", stop).await {
        Spliced::Done { a_to_b, b_to_a } => {
            if gw.access_log {
                tracing::info!(
                    target: "access",
                    client_id = %conn.client_id, tls = true, authority = %target.name, protocol = "opaque",
                    bytes_in = a_to_b, bytes_out = b_to_a, duration_ms = started.elapsed().as_millis() as u64,
                    upstream = %addr, peer = %conn.peer,
                );
            }
        }
        Spliced::Failed(e) => {
            conn.metrics.set_close_error("EIO");
            tracing::debug!(peer = %conn.peer, client_id = %conn.client_id, target = %target.name, error = %e, "opaque stream ended with an error");
        }
        Spliced::ClosedByDrain => {
            tracing::info!(peer = %conn.peer, client_id = %conn.client_id, target = %target.name, "opaque stream closed at the drain deadline");
        }
        Spliced::Stopped("unauthorized") => {
            tracing::warn!(peer = %conn.peer, client_id = %conn.client_id, target = %target.name, "opaque stream closed: the policy no longer authorizes the caller");
        }
        Spliced::Stopped(reason) => {
            tracing::debug!(peer = %conn.peer, client_id = %conn.client_id, target = %target.name, reason, "opaque stream closed");
        }
    }
    drop(inflight);
    Ok(())
}
