//! Prometheus metrics under Linkerd proxy names (`request_total`, `response_total`,
//! `response_latency_ms`, `tcp_*`) so viz-style queries read the gateway like a proxy, plus
//! gateway-specific families. Label values come from verified identities and routed names only,
//! never from raw request input, so callers cannot grow the label space at will.

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::errors::{ConnError, ConnErrorFamily};

mod conn;
mod http;
mod series;

pub use conn::{ConnMetrics, UpstreamConnMetrics};
pub use http::{EndpointLabels, ExchangeHandles, Outcome};

/// Linkerd's `response_latency_ms` bucket bounds.
pub const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

/// Installs the global recorder; the returned handle renders `/metrics` with [`render`].
///
/// The exporter holds no histogram (the one latency family lives in `series.rs`), so it needs
/// no upkeep task to fold samples.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new().install_recorder()?)
}

/// Everything `/metrics` shows: the exporter's families, then those the data plane updates
/// per request and per read and write.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    series::render_into(&mut text);
    text
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
