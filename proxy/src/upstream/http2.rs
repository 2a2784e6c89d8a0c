//! HTTP/2 to an endpoint: one multiplexed connection, opened on first use and shared by every
//! request to that endpoint, replaced when it closes, dropped when idle.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{dial::Alpn, Shared};
use crate::body::CallerBody;
use crate::{errors::ProxyError, routing::Endpoint};

/// What Linkerd peers do: a PING every 10 s, the connection given up 3 s after an unanswered one.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) fn builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .adaptive_window(true);
    b
}

/// The endpoint's connection, if one is open.
#[derive(Default)]
pub(super) struct Http2Slot {
    open: Mutex<Option<Open>>,
    /// Held while dialling, so a burst of first requests opens one connection, not one each.
    dialing: tokio::sync::Mutex<()>,
}

struct Open {
    sender: SendRequest<CallerBody>,
    last_used: Instant,
}

impl Http2Slot {
    /// A handle to the open connection, if it can still take requests.
    fn current(&self) -> Option<SendRequest<CallerBody>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.as_mut() {
            Some(o) if !o.sender.is_closed() => {
                o.last_used = Instant::now();
                Some(o.sender.clone())
            }
            _ => {
                *open = None;
                None
            }
        }
    }

    pub(super) async fn sender(
        &self,
        shared: &Shared,
        endpoint: &Endpoint,
    ) -> Result<SendRequest<CallerBody>, ProxyError> {
        let addr = endpoint.addr;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let io = shared
            .dialer
            .connect_endpoint(endpoint, addr, Alpn::None)
            .await?;
        let (sender, conn) = shared
            .http2
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 handshake failed");
                ProxyError::Upstream
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(Open {
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        Ok(sender)
    }

    /// Lets go of a connection unused for `idle_timeout`; it closes once the streams still on
    /// it are done.
    pub(super) fn expire(&self, idle_timeout: Duration) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open
            .as_ref()
            .is_some_and(|o| o.last_used.elapsed() > idle_timeout || o.sender.is_closed())
        {
            *open = None;
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.open
            .lock()
            .map(|o| o.as_ref().is_some_and(|o| !o.sender.is_closed()))
            .unwrap_or(false)
    }
}
