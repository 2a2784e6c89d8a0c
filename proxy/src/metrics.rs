//! Prometheus metrics under Linkerd proxy names (`request_total`, `response_total`,
//! `response_latency_ms`, `tcp_*`) so viz-style queries read the gateway like a proxy, plus
//! gateway-specific families. Label values come from verified identities and routed names only,
//! never from raw request input, so callers cannot grow the label space at will.

use metrics::{counter, gauge, histogram, Counter, Gauge, Label};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::errors::{ConnError, ConnErrorFamily};

/// Linkerd's `response_latency_ms` bucket bounds.
pub const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

/// Installs the global recorder; the returned handle renders `/metrics`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("response_latency_ms".into()),
            &LATENCY_BUCKETS_MS,
        )?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Per-connection handles and labels, made once after the handshake.
pub struct ConnMetrics {
    base: Vec<Label>,
    pub read_bytes: Counter,
    pub write_bytes: Counter,
    open: Gauge,
    close_errno: std::sync::Mutex<&'static str>,
    cache: std::sync::Mutex<Option<RequestHandles>>,
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
        let tcp = |name: &'static str| {
            let mut l = base.clone();
            l.insert(1, Label::new("peer", "src"));
            (name, l)
        };
        let (n, l) = tcp("tcp_open_total");
        counter!(n, l).increment(1);
        let (n, l) = tcp("tcp_open_connections");
        let open = gauge!(n, l);
        open.increment(1.0);
        let (n, l) = tcp("tcp_read_bytes_total");
        let read_bytes = counter!(n, l);
        let (n, l) = tcp("tcp_write_bytes_total");
        let write_bytes = counter!(n, l);
        Self {
            base,
            read_bytes,
            write_bytes,
            open,
            close_errno: std::sync::Mutex::new(""),
            cache: std::sync::Mutex::new(None),
        }
    }

    /// Notes why the connection failed; reported as `errno` when it closes.
    pub fn set_close_error(&self, errno: &'static str) {
        if let Ok(mut e) = self.close_errno.lock() {
            *e = errno;
        }
    }

    /// One proxied (or refused) request. `authority` is the routed name, or empty.
    pub fn request(&self, authority: &str, status: u16, latency: std::time::Duration) {
        // A connection's requests nearly always share authority and status: reuse the handles
        // rather than build, sort and hash labels for every request.
        let mut cache = match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let hit = cache
            .as_ref()
            .is_some_and(|h| h.status == status && &*h.authority == authority);
        if !hit {
            *cache = Some(self.handles(authority, status));
        }
        if let Some(h) = cache.as_ref() {
            h.requests.increment(1);
            h.latency.record(latency.as_secs_f64() * 1000.0);
            h.responses.increment(1);
        }
    }

    fn handles(&self, authority: &str, status: u16) -> RequestHandles {
        let mut l = Vec::with_capacity(self.base.len() + 3);
        l.push(self.base[0].clone());
        l.push(Label::new("authority", authority.to_string()));
        l.extend(self.base[1..].iter().cloned());
        let requests = counter!("request_total", l.clone());
        l.push(Label::new("status_code", status.to_string()));
        let latency = histogram!("response_latency_ms", l.clone());
        let class = if status >= 500 { "failure" } else { "success" };
        l.push(Label::new("classification", class));
        let responses = counter!("response_total", l);
        RequestHandles {
            authority: authority.into(),
            status,
            requests,
            responses,
            latency,
        }
    }
}

struct RequestHandles {
    authority: Box<str>,
    status: u16,
    requests: Counter,
    responses: Counter,
    latency: metrics::Histogram,
}

/// Closing is recorded on drop so a cancelled connection task still balances the gauge.
impl Drop for ConnMetrics {
    fn drop(&mut self) {
        self.open.decrement(1.0);
        let errno = self.close_errno.lock().map(|e| *e).unwrap_or("");
        let mut l = std::mem::take(&mut self.base);
        l.insert(1, Label::new("peer", "src"));
        l.push(Label::new("errno", errno));
        counter!("tcp_close_total", l).increment(1);
    }
}

pub fn http_error(error: &'static str) {
    counter!("inbound_http_errors_total", "error" => error).increment(1);
}

/// `target_addr`: empty unless the target is proven to answer (see
/// [`crate::routing::Target::metric_name`]), so unanswered addresses add no series.
pub fn upstream_error(error: &'static str, target_addr: String) {
    counter!("outbound_http_errors_total", "error" => error, "target_addr" => target_addr)
        .increment(1);
}

/// A connection that named its target in a transport header. `target`: `None` for a name
/// not yet proven to answer, which is counted with empty name and port labels.
pub fn transport_header_connection(
    protocol: &'static str,
    target: Option<&crate::authority::Authority>,
    client_id: &str,
) {
    let (name, port) = match target {
        Some(t) => (t.host().to_string(), t.port().to_string()),
        None => (String::new(), String::new()),
    };
    counter!(
        "inbound_tcp_transport_header_connections_total",
        "session_protocol" => protocol,
        "target_port" => port,
        "target_name" => name,
        "client_id" => client_id.to_string()
    )
    .increment(1);
}

/// A connection closed before anything was proxied on it, in the family its layer reports to.
pub fn conn_error(e: &ConnError, listener: &'static str) {
    let reason = e.reason();
    match e.family() {
        ConnErrorFamily::Refused => {
            counter!("gateway_connections_refused_total", "reason" => reason, "listener" => listener)
                .increment(1)
        }
        ConnErrorFamily::Handshake => {
            counter!("gateway_tls_handshake_failures_total", "reason" => reason).increment(1)
        }
        ConnErrorFamily::Tcp => counter!("inbound_tcp_errors_total", "error" => reason).increment(1),
    }
}

/// A caller over one of its budgets (`limit`: `connections`, `concurrent_requests`, `rate`).
pub fn caller_limited(client_id: &str, limit: &'static str) {
    counter!("gateway_caller_limited_total", "client_id" => client_id.to_string(), "limit" => limit)
        .increment(1);
}

/// A connection (`http`) or stream (`opaque`, `upgrade`) closed by its watchdog; `reason`:
/// `idle` or `write stalled`.
pub fn watchdog_closed(reason: &'static str, kind: &'static str) {
    counter!("gateway_connections_closed_total", "reason" => reason, "kind" => kind).increment(1);
}

/// The accept loop ran out of resources (descriptors, buffers) and paused.
pub fn accept_backoff(listener: &'static str) {
    counter!("gateway_accept_backoffs_total", "listener" => listener).increment(1);
}

/// A connection or tunnel still open at the drain deadline, closed by the gateway.
/// `kind`: `http`, `opaque`, `upgrade`, `admin` or `outbound`.
pub fn drain_closed(kind: &'static str) {
    counter!("gateway_drain_closed_total", "kind" => kind).increment(1);
}

pub fn cert_expiry(not_after_unix: i64, identity: &str) {
    gauge!("identity_cert_expiration_timestamp_seconds", "identity" => identity.to_string())
        .set(not_after_unix as f64);
}

/// One attempt to get or reload the certificate; `result` is `ok` or the failure's reason.
pub fn cert_refreshed(result: &'static str) {
    counter!("identity_cert_refreshes_total", "result" => result).increment(1);
    if result == "ok" {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        gauge!("identity_cert_refresh_timestamp_seconds").set(now);
    }
}
