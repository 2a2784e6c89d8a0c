//! The HTTP families both sides of the gateway report, as Linkerd's proxy names them:
//! `request_total`, `response_latency_ms` and `response_total` with `direction="inbound"`
//! (the caller's side, labelled with its `client_id`) and `direction="outbound"` (the
//! endpoint's side, labelled with its `server_id` and discovery's `dst_*` labels), so viz draws
//! the gateway's edges to the services it forwards to.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use identity::Identity;
use metrics::{Counter, Histogram, Label};

use super::series;

/// Labels one endpoint gives the outbound families: made once when the endpoint is named (by
/// discovery or a route), shared by every request and connection to it.
#[derive(Debug, Clone)]
pub struct EndpointLabels(Arc<[Label]>);

/// Discovery labels kept per endpoint at most, and their value lengths: the control plane
/// is trusted, but a runaway one must not grow every series without bound.
const MAX_DST_LABELS: usize = 16;
const MAX_LABEL_VALUE: usize = 253;

impl EndpointLabels {
    /// `dst`: discovery's metric labels (`namespace`, `service`, `pod`, ...), reported with a
    /// `dst_` prefix; keys that are not Prometheus label names are skipped.
    pub fn new(addr: SocketAddr, identity: Option<&Identity>, dst: &[(String, String)]) -> Self {
        let mut l = vec![
            Label::new("direction", "outbound"),
            Label::new("target_addr", addr.to_string()),
            Label::new("target_ip", addr.ip().to_string()),
            Label::new("target_port", addr.port().to_string()),
        ];
        match identity {
            Some(id) => {
                l.push(Label::new("tls", "true"));
                l.push(Label::new("server_id", id.as_str().to_string()));
            }
            None => {
                l.push(Label::new("tls", "no_identity"));
                l.push(Label::new(
                    "no_tls_reason",
                    "not_provided_by_service_discovery",
                ));
            }
        }
        for (k, v) in dst
            .iter()
            .filter(|(k, _)| is_label_name(k))
            .take(MAX_DST_LABELS)
        {
            let mut v = v.as_str();
            if v.len() > MAX_LABEL_VALUE {
                let mut cut = MAX_LABEL_VALUE;
                while !v.is_char_boundary(cut) {
                    cut -= 1;
                }
                v = &v[..cut];
            }
            l.push(Label::new(format!("dst_{k}"), v.to_string()));
        }
        Self(l.into())
    }

    pub(super) fn labels(&self) -> &[Label] {
        &self.0
    }

    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn is_label_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !k.as_bytes()[0].is_ascii_digit()
}

/// How an exchange ended, for `response_total`'s classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was sent to its end. `grpc_status`: the `grpc-status` it carried (in
    /// trailers, or in the headers of a trailers-only response) when the request was gRPC.
    Ended { grpc_status: Option<u32> },
    /// The response stopped short: the upstream's body failed, or the caller went away. The
    /// reason is the `error` label.
    Failed(&'static str),
}

impl Outcome {
    /// Linkerd's rule: 5xx, a gRPC status other than OK, or an error is a failure; a gRPC
    /// response that ends without a status is classified by its HTTP status.
    pub fn is_success(&self, status: u16) -> bool {
        match self {
            Outcome::Failed(_) => false,
            Outcome::Ended {
                grpc_status: Some(s),
            } => *s == 0 && status < 500,
            Outcome::Ended { grpc_status: None } => status < 500,
        }
    }
}

/// One side's handles for one (authority, status) pair.
struct Side {
    /// Up to and including `status_code`: the failure and gRPC series are made from these.
    labels: Vec<Label>,
    requests: Counter,
    latency: Histogram,
    /// `classification="success"` without a gRPC status: nearly every response.
    success: Counter,
    /// `classification="success", grpc_status="0"`, made on the first gRPC success.
    grpc_ok: OnceLock<Counter>,
    /// `classification="failure"` without a gRPC status or an error: a 5xx, made on the first.
    /// Kept because when a service fails, every one of its responses is one: each looking its
    /// series up would build its label set and take the series registry's lock.
    failure: OnceLock<Counter>,
}

impl Side {
    fn new(base: impl Iterator<Item = Label>, authority: &str, status: u16) -> Self {
        let mut base = base;
        let mut labels = Vec::with_capacity(16);
        // `direction` first, then `authority`, as Linkerd orders them.
        labels.extend(base.next());
        labels.push(Label::new("authority", authority.to_string()));
        labels.extend(base);
        let requests = series::counter("request_total", &labels);
        labels.push(Label::new("status_code", status.to_string()));
        let latency = series::latency("response_latency_ms", &labels);
        let success = series::counter(
            "response_total",
            &Self::classified(&labels, true, None, None),
        );
        Self {
            labels,
            requests,
            latency,
            success,
            grpc_ok: OnceLock::new(),
            failure: OnceLock::new(),
        }
    }

    fn classified(
        labels: &[Label],
        success: bool,
        grpc_status: Option<u32>,
        error: Option<&'static str>,
    ) -> Vec<Label> {
        let mut l = Vec::with_capacity(labels.len() + 3);
        l.extend_from_slice(labels);
        let class = if success { "success" } else { "failure" };
        l.push(Label::new("classification", class));
        if let Some(g) = grpc_status {
            l.push(Label::new("grpc_status", g.to_string()));
        }
        if let Some(e) = error {
            l.push(Label::new("error", e));
        }
        l
    }

    fn ended(&self, status: u16, outcome: Outcome) {
        let success = outcome.is_success(status);
        match outcome {
            Outcome::Ended { grpc_status: None } if success => self.success.increment(1),
            Outcome::Ended {
                grpc_status: Some(0),
            } if success => self
                .grpc_ok
                .get_or_init(|| {
                    series::counter(
                        "response_total",
                        &Self::classified(&self.labels, true, Some(0), None),
                    )
                })
                .increment(1),
            Outcome::Ended { grpc_status: None } => self
                .failure
                .get_or_init(|| {
                    series::counter(
                        "response_total",
                        &Self::classified(&self.labels, false, None, None),
                    )
                })
                .increment(1),
            // The rest (gRPC failures, broken bodies) look their series up each time.
            Outcome::Ended { grpc_status } => series::counter(
                "response_total",
                &Self::classified(&self.labels, success, grpc_status, None),
            )
            .increment(1),
            Outcome::Failed(error) => series::counter(
                "response_total",
                &Self::classified(&self.labels, false, None, Some(error)),
            )
            .increment(1),
        }
    }
}

/// Both sides' handles for a connection's requests to one authority and endpoint with one
/// status: a connection's requests nearly always share them, so they are resolved once and
/// reused rather than labels built, sorted and hashed per request.
pub struct ExchangeHandles {
    authority: Box<str>,
    status: u16,
    endpoint: Option<EndpointLabels>,
    inbound: Side,
    outbound: Option<Side>,
}

impl ExchangeHandles {
    pub(super) fn new(
        inbound_base: &[Label],
        authority: &str,
        status: u16,
        endpoint: Option<&EndpointLabels>,
    ) -> Self {
        Self {
            authority: authority.into(),
            status,
            endpoint: endpoint.cloned(),
            inbound: Side::new(inbound_base.iter().cloned(), authority, status),
            outbound: endpoint.map(|e| Side::new(e.labels().iter().cloned(), authority, status)),
        }
    }

    pub(super) fn matches(
        &self,
        authority: &str,
        status: u16,
        endpoint: Option<&EndpointLabels>,
    ) -> bool {
        self.status == status
            && *self.authority == *authority
            && match (&self.endpoint, endpoint) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same(b),
                _ => false,
            }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The response's head was sent, `latency` after the request's.
    pub fn responded(&self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        self.inbound.requests.increment(1);
        self.inbound.latency.record(ms);
        if let Some(o) = &self.outbound {
            o.requests.increment(1);
            o.latency.record(ms);
        }
    }

    /// The response ended (or failed): `response_total` on both sides.
    pub fn ended(&self, outcome: Outcome) {
        self.inbound.ended(self.status, outcome);
        if let Some(o) = &self.outbound {
            o.ended(self.status, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_linkerd() {
        let ok = Outcome::Ended { grpc_status: None };
        assert!(ok.is_success(200));
        assert!(ok.is_success(404));
        assert!(!ok.is_success(503));
        assert!(Outcome::Ended {
            grpc_status: Some(0)
        }
        .is_success(200));
        assert!(!Outcome::Ended {
            grpc_status: Some(14)
        }
        .is_success(200));
        assert!(!Outcome::Failed("upstream body failed").is_success(200));
    }

    #[test]
    fn discovery_labels_are_prefixed_and_bounded() {
        let dst: Vec<(String, String)> = vec![
            ("namespace".into(), "emojivoto".into()),
            ("bad-key".into(), "x".into()),
            ("9lives".into(), "x".into()),
            ("pod".into(), "é".repeat(200)),
        ];
        let l = EndpointLabels::new("10.0.0.1:8080".parse().unwrap(), None, &dst);
        let names: Vec<&str> = l.labels().iter().map(|l| l.key()).collect();
        assert!(names.contains(&"dst_namespace"));
        assert!(names.contains(&"no_tls_reason"));
        assert!(!names
            .iter()
            .any(|n| n.contains("bad") || n.contains("9lives")));
        let pod = l.labels().iter().find(|l| l.key() == "dst_pod").unwrap();
        assert!(pod.value().len() <= MAX_LABEL_VALUE);
    }
}
