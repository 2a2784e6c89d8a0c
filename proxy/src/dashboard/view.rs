//! What the dashboard shows, made from one read of the gateway's metrics and the ones kept
//! from the last seconds: callers × services (rate, success, latency quantiles, totals),
//! callers' connections and bytes, endpoints with their TLS identity, refusals by reason,
//! the gateway's certificate. Rows are capped ([`TOP`]) with the rest summed as "other", so
//! the page and this state stay small whatever the number of callers.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::scrape::Sample;
use crate::metrics::LATENCY_BUCKETS_MS;

/// Rows per table at most; the rest are summed into one "other" row.
pub const TOP: usize = 20;
/// Rates, success and latency are over this much of the past.
pub const WINDOW: Duration = Duration::from_secs(10);
/// The row that sums what did not make the top.
pub const OTHER: &str = "(other)";
/// The service of requests that were not routed.
pub const NOT_ROUTED: &str = "(not routed)";

/// Cumulative counts of one caller × service pair.
#[derive(Debug, Clone, Default)]
struct Counts {
    requests: f64,
    failures: f64,
    /// Cumulative per bucket of [`LATENCY_BUCKETS_MS`], then +Inf.
    buckets: Vec<f64>,
}

type FlowKey = (String, String);

#[derive(Debug, Serialize, PartialEq)]
pub struct Flow {
    pub caller: String,
    pub service: String,
    /// Since the gateway started.
    pub requests: u64,
    pub failures: u64,
    /// Over the window.
    pub rps: f64,
    /// Over the window, or since start when the window saw nothing; `None`: no requests.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Caller {
    pub caller: String,
    pub open_connections: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Endpoint {
    pub service: String,
    pub addr: String,
    /// `true` (mTLS to the workload) or `no_identity`.
    pub tls: String,
    /// The workload's identity, or why there is none.
    pub identity: String,
    pub requests: u64,
    pub open_connections: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Refusal {
    pub kind: &'static str,
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Certificate {
    pub identity: String,
    pub expires_unix: i64,
    pub seconds_left: i64,
}

#[derive(Debug, Serialize)]
pub struct View {
    pub flows: Vec<Flow>,
    pub callers: Vec<Caller>,
    pub endpoints: Vec<Endpoint>,
    pub refusals: Vec<Refusal>,
    pub certificates: Vec<Certificate>,
}

/// One dashboard's memory of the last [`WINDOW`].
#[derive(Default)]
pub struct History {
    past: VecDeque<(Instant, HashMap<FlowKey, Counts>)>,
}

fn bucket_index(le: &str) -> usize {
    match le.parse::<f64>() {
        Ok(v) if v.is_finite() => LATENCY_BUCKETS_MS
            .iter()
            .position(|b| (*b - v).abs() < 1e-9)
            .unwrap_or(LATENCY_BUCKETS_MS.len()),
        _ => LATENCY_BUCKETS_MS.len(),
    }
}

/// The `q` quantile of cumulative `buckets`, interpolated within its bucket as Prometheus's
/// `histogram_quantile` does.
fn quantile(q: f64, buckets: &[f64]) -> Option<f64> {
    let total = *buckets.last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|c| *c >= rank)?;
    if i >= LATENCY_BUCKETS_MS.len() {
        return LATENCY_BUCKETS_MS.last().copied();
    }
    let (lo, below) = match i {
        0 => (0.0, 0.0),
        _ => (LATENCY_BUCKETS_MS[i - 1], buckets[i - 1]),
    };
    let hi = LATENCY_BUCKETS_MS[i];
    let inside = buckets[i] - below;
    if inside <= 0.0 {
        return Some(hi);
    }
    Some(lo + (hi - lo) * (rank - below) / inside)
}

/// The refusal families: what the table calls each, and the label holding the reason.
fn refusal_kind(family: &str) -> Option<(&'static str, &'static str)> {
    Some(match family {
        "gateway_connections_refused_total" => ("connection", "reason"),
        "gateway_tls_handshake_failures_total" => ("handshake", "reason"),
        "inbound_tcp_errors_total" => ("transport", "error"),
        "inbound_http_errors_total" => ("request", "error"),
        _ => return None,
    })
}

fn caller_entry<'a>(callers: &'a mut HashMap<String, Caller>, id: &str) -> &'a mut Caller {
    callers.entry(id.to_string()).or_insert_with(|| Caller {
        caller: id.to_string(),
        open_connections: 0,
        bytes_in: 0,
        bytes_out: 0,
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl History {
    /// The view from one read of the metrics at `now`; `now_unix` for the certificate.
    pub fn view(&mut self, samples: &[Sample], now: Instant, now_unix: i64) -> View {
        let mut counts: HashMap<FlowKey, Counts> = HashMap::new();
        let mut callers: HashMap<String, Caller> = HashMap::new();
        let mut endpoints: HashMap<(String, String), Endpoint> = HashMap::new();
        let mut open_to: HashMap<String, u64> = HashMap::new();
        let mut refusals: Vec<Refusal> = Vec::new();
        let mut certificates = Vec::new();
        for s in samples {
            let inbound = s.label("direction") == "inbound";
            let outbound = s.label("direction") == "outbound";
            match s.name.as_str() {
                "response_total" if inbound => {
                    let c = counts
                        .entry((s.label("client_id").into(), s.label("authority").into()))
                        .or_default();
                    c.requests += s.value;
                    if s.label("classification") == "failure" {
                        c.failures += s.value;
                    }
                }
                "response_latency_ms_bucket" if inbound => {
                    let c = counts
                        .entry((s.label("client_id").into(), s.label("authority").into()))
                        .or_default();
                    c.buckets.resize(LATENCY_BUCKETS_MS.len() + 1, 0.0);
                    c.buckets[bucket_index(s.label("le"))] += s.value;
                }
                "tcp_open_connections" if inbound => {
                    caller_entry(&mut callers, s.label("client_id")).open_connections +=
                        s.value as u64;
                }
                "tcp_read_bytes_total" if inbound => {
                    caller_entry(&mut callers, s.label("client_id")).bytes_in += s.value as u64;
                }
                "tcp_write_bytes_total" if inbound => {
                    caller_entry(&mut callers, s.label("client_id")).bytes_out += s.value as u64;
                }
                "request_total" if outbound => {
                    let addr = s.label("target_addr").to_string();
                    let e = endpoints
                        .entry((s.label("authority").to_string(), addr.clone()))
                        .or_insert_with(|| Endpoint {
                            service: s.label("authority").to_string(),
                            addr,
                            tls: s.label("tls").to_string(),
                            identity: match s.label("server_id") {
                                "" => s.label("no_tls_reason").to_string(),
                                id => id.to_string(),
                            },
                            requests: 0,
                            open_connections: 0,
                        });
                    e.requests += s.value as u64;
                }
                "tcp_open_connections" if outbound => {
                    *open_to
                        .entry(s.label("target_addr").to_string())
                        .or_default() += s.value as u64;
                }
                name if refusal_kind(name).is_some() => {
                    let (kind, label) = refusal_kind(name).unwrap_or(("", ""));
                    refusals.push(Refusal {
                        kind,
                        reason: s.label(label).to_string(),
                        count: s.value as u64,
                    })
                }
                "identity_cert_expiration_timestamp_seconds" => certificates.push(Certificate {
                    identity: s.label("identity").to_string(),
                    expires_unix: s.value as i64,
                    seconds_left: s.value as i64 - now_unix,
                }),
                _ => {}
            }
        }
        // Rates against the oldest reading still inside the window.
        while self
            .past
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            self.past.pop_front();
        }
        let then = self.past.front();
        let mut flows: Vec<Flow> = counts
            .iter()
            .map(|((caller, service), c)| {
                let before = then.and_then(|(_, m)| m.get(&(caller.clone(), service.clone())));
                let dt = then
                    .map(|(t, _)| now.duration_since(*t).as_secs_f64())
                    .unwrap_or(0.0);
                let d_req = c.requests - before.map(|b| b.requests).unwrap_or(0.0);
                let d_fail = c.failures - before.map(|b| b.failures).unwrap_or(0.0);
                // The window's latencies when it saw requests, else since start.
                let windowed: Vec<f64> = match before {
                    Some(b) if d_req > 0.0 && b.buckets.len() == c.buckets.len() => c
                        .buckets
                        .iter()
                        .zip(&b.buckets)
                        .map(|(n, o)| n - o)
                        .collect(),
                    _ => c.buckets.clone(),
                };
                let (succ_n, succ_d) = if d_req > 0.0 && before.is_some() {
                    (d_req - d_fail, d_req)
                } else {
                    (c.requests - c.failures, c.requests)
                };
                Flow {
                    caller: caller.clone(),
                    // Refused before routing, or answered by the gateway itself (probes).
                    service: if service.is_empty() {
                        NOT_ROUTED.to_string()
                    } else {
                        service.clone()
                    },
                    requests: c.requests as u64,
                    failures: c.failures as u64,
                    rps: if dt > 0.0 { round2(d_req / dt) } else { 0.0 },
                    success_rate: (succ_d > 0.0).then(|| round2(100.0 * succ_n / succ_d)),
                    p50_ms: quantile(0.5, &windowed).map(round2),
                    p95_ms: quantile(0.95, &windowed).map(round2),
                    p99_ms: quantile(0.99, &windowed).map(round2),
                }
            })
            .collect();
        self.past.push_back((now, counts));
        flows.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.caller.cmp(&b.caller)));
        if flows.len() > TOP {
            let rest = flows.split_off(TOP - 1);
            let requests: u64 = rest.iter().map(|f| f.requests).sum();
            let failures: u64 = rest.iter().map(|f| f.failures).sum();
            flows.push(Flow {
                caller: OTHER.into(),
                service: format!("{} more", rest.len()),
                requests,
                failures,
                rps: round2(rest.iter().map(|f| f.rps).sum()),
                success_rate: (requests > 0)
                    .then(|| round2(100.0 * (requests - failures) as f64 / requests as f64)),
                p50_ms: None,
                p95_ms: None,
                p99_ms: None,
            });
        }
        let mut callers: Vec<Caller> = callers.into_values().collect();
        callers.sort_by(|a, b| b.bytes_in.cmp(&a.bytes_in).then(a.caller.cmp(&b.caller)));
        if callers.len() > TOP {
            let rest = callers.split_off(TOP - 1);
            callers.push(Caller {
                caller: format!("{OTHER} {} more", rest.len()),
                open_connections: rest.iter().map(|c| c.open_connections).sum(),
                bytes_in: rest.iter().map(|c| c.bytes_in).sum(),
                bytes_out: rest.iter().map(|c| c.bytes_out).sum(),
            });
        }
        let mut endpoints: Vec<Endpoint> = endpoints
            .into_values()
            .map(|mut e| {
                e.open_connections = open_to.get(&e.addr).copied().unwrap_or(0);
                e
            })
            .collect();
        endpoints.sort_by(|a, b| (&a.service, &a.addr).cmp(&(&b.service, &b.addr)));
        endpoints.truncate(4 * TOP);
        refusals.retain(|r| r.count > 0);
        refusals.sort_by_key(|r| std::cmp::Reverse(r.count));
        refusals.truncate(TOP);
        View {
            flows,
            callers,
            endpoints,
            refusals,
            certificates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    #[test]
    fn quantiles_interpolate_as_prometheus_does() {
        let mut b = vec![0.0; LATENCY_BUCKETS_MS.len() + 1];
        // 10 requests: all between 1 and 2 ms.
        for c in b.iter_mut().skip(1) {
            *c = 10.0;
        }
        assert_eq!(quantile(0.5, &b), Some(1.5));
        assert_eq!(quantile(0.5, &vec![0.0; 26]), None);
    }

    #[test]
    fn flows_are_capped_with_the_rest_summed() {
        let mut samples = Vec::new();
        let ids: Vec<String> = (0..TOP + 5).map(|i| format!("caller-{i:02}")).collect();
        for (i, id) in ids.iter().enumerate() {
            samples.push(sample(
                "response_total",
                &[
                    ("direction", "inbound"),
                    ("client_id", id),
                    ("authority", "web:80"),
                    ("classification", "success"),
                ],
                (100 + i) as f64,
            ));
        }
        samples.push(sample(
            "response_total",
            &[
                ("direction", "inbound"),
                ("client_id", &ids[0]),
                ("authority", "web:80"),
                ("classification", "failure"),
            ],
            100.0,
        ));
        let mut h = History::default();
        let v = h.view(&samples, Instant::now(), 0);
        assert_eq!(v.flows.len(), TOP);
        let other = v.flows.last().unwrap();
        assert_eq!(other.caller, OTHER);
        assert_eq!(other.service, "6 more");
        // caller-00 has 100 successes and 100 failures: the largest, at 50 %.
        assert_eq!(v.flows[0].caller, "caller-00");
        assert_eq!(v.flows[0].success_rate, Some(50.0));
        let all: u64 = v.flows.iter().map(|f| f.requests).sum();
        assert_eq!(all, (0..TOP + 5).map(|i| 100 + i as u64).sum::<u64>() + 100);
    }
}
