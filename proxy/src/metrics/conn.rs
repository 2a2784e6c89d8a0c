//! Per-connection families: `tcp_*` for a caller's connection (`peer="src"`) and for the
//! gateway's connections to endpoints (`peer="dst"`), and the cache of a caller connection's
//! HTTP handles.

use std::sync::{Arc, Mutex};

use metrics::{counter, gauge, Counter, Gauge, Label};

use super::http::{EndpointLabels, ExchangeHandles};

/// A caller's connection: handles and labels made once after the handshake.
pub struct ConnMetrics {
    base: Vec<Label>,
    pub read_bytes: Counter,
    pub write_bytes: Counter,
    open: Gauge,
    close_errno: Mutex<&'static str>,
    cache: Mutex<Option<Arc<ExchangeHandles>>>,
}

/// `tcp_open_total` once, and the other `tcp_*` handles, for one connection's labels.
/// `base` starts with `direction`; `peer` goes right after it.
fn tcp_handles(base: &[Label], peer: &'static str) -> (Gauge, Counter, Counter) {
    let tcp = |name: &'static str| {
        let mut l = base.to_vec();
        l.insert(1, Label::new("peer", peer));
        (name, l)
    };
    let (n, l) = tcp("tcp_open_total");
    counter!(n, l).increment(1);
    let (n, l) = tcp("tcp_open_connections");
    let open = gauge!(n, l);
    open.increment(1.0);
    // Updated on every read and write: see `series`.
    let (n, l) = tcp("tcp_read_bytes_total");
    let read = super::series::counter(n, &l);
    let (n, l) = tcp("tcp_write_bytes_total");
    let write = super::series::counter(n, &l);
    (open, read, write)
}

fn tcp_closed(base: &[Label], peer: &'static str, errno: &'static str) {
    let mut l = base.to_vec();
    l.insert(1, Label::new("peer", peer));
    l.push(Label::new("errno", errno));
    counter!("tcp_close_total", l).increment(1);
}

impl ConnMetrics {
    /// `local` is the address the caller dialled: Linkerd's `target_addr`.
    pub fn accepted(client_id: &str, local: Option<std::net::SocketAddr>) -> Self {
        let base = vec![
            Label::new("direction", "inbound"),
            Label::new(
                "target_addr",
                local.map(|a| a.to_string()).unwrap_or_default(),
            ),
            Label::new("tls", "true"),
            Label::new("client_id", client_id.to_string()),
        ];
        let (open, read_bytes, write_bytes) = tcp_handles(&base, "src");
        Self {
            base,
            read_bytes,
            write_bytes,
            open,
            close_errno: Mutex::new(""),
            cache: Mutex::new(None),
        }
    }

    /// Notes why the connection failed; reported as `errno` when it closes.
    pub fn set_close_error(&self, errno: &'static str) {
        if let Ok(mut e) = self.close_errno.lock() {
            *e = errno;
        }
    }

    /// The handles for a request on this connection. `authority`: the routed name once it
    /// has answered, else empty; `endpoint`: the endpoint it went to, counted on the
    /// outbound side.
    pub fn exchange(
        &self,
        authority: &str,
        status: u16,
        endpoint: Option<&EndpointLabels>,
    ) -> Arc<ExchangeHandles> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.as_ref() {
            Some(h) if h.matches(authority, status, endpoint) => h.clone(),
            _ => {
                let h = Arc::new(ExchangeHandles::new(
                    &self.base, authority, status, endpoint,
                ));
                *cache = Some(h.clone());
                h
            }
        }
    }
}

/// Closing is recorded on drop so a cancelled connection task still balances the gauge.
impl Drop for ConnMetrics {
    fn drop(&mut self) {
        self.open.decrement(1.0);
        let errno = self.close_errno.lock().map(|e| *e).unwrap_or("");
        tcp_closed(&self.base, "src", errno);
    }
}

/// One of the gateway's connections to an endpoint (`direction="outbound", peer="dst"`).
pub struct UpstreamConnMetrics {
    labels: EndpointLabels,
    pub read_bytes: Counter,
    pub write_bytes: Counter,
    open: Gauge,
}

impl UpstreamConnMetrics {
    pub fn opened(labels: &EndpointLabels) -> Self {
        let (open, read_bytes, write_bytes) = tcp_handles(labels.labels(), "dst");
        Self {
            labels: labels.clone(),
            read_bytes,
            write_bytes,
            open,
        }
    }
}

impl Drop for UpstreamConnMetrics {
    fn drop(&mut self) {
        self.open.decrement(1.0);
        tcp_closed(self.labels.labels(), "dst", "");
    }
}
