//! The run's summary as text and as JSON (schema `loadgen/v1`, documented in README.md).

use serde::Serialize;

use crate::stats::{Errors, Stats};

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
    pub stdev: f64,
}

#[derive(Debug, Serialize)]
pub struct TargetProcess {
    pub pid: u32,
    pub cpu_seconds: f64,
    /// The system (kernel) part of `cpu_seconds`.
    pub system_cpu_seconds: f64,
    pub cpu_seconds_per_1000_requests: f64,
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub url: String,
    pub protocol: String,
    pub mode: String,
    pub connections: usize,
    pub streams: usize,
    pub rate: Option<f64>,
    pub measured_seconds: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: Errors,
    pub requests_per_second: f64,
    pub bytes: u64,
    pub bytes_per_second: f64,
    /// Microseconds; in open-loop mode measured from each request's scheduled time.
    pub latency_us: Latency,
    /// (nines, milliseconds) from p0 to p99.999, for plotting runs together.
    pub latency_spectrum_ms: Vec<(f64, f64)>,
    pub target_process: Option<TargetProcess>,
}

impl Report {
    pub fn latency(stats: &Stats) -> Latency {
        let h = &stats.latency;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        Latency {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            max: if h.is_empty() { 0 } else { h.max() },
            mean: if h.is_empty() { 0.0 } else { h.mean() },
            stdev: if h.is_empty() { 0.0 } else { h.stdev() },
        }
    }

    pub fn text(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let l = &self.latency_us;
        let mut s = format!(
            "{} {} ({}), {} connections x {} streams{}\n",
            self.protocol,
            self.url,
            self.mode,
            self.connections,
            self.streams,
            self.rate
                .map(|r| format!(", {r} req/s scheduled"))
                .unwrap_or_default()
        );
        s += &format!(
            "  requests  {} in {:.2}s: {:.1} req/s, {} ok, {} errors\n",
            self.requests,
            self.measured_seconds,
            self.requests_per_second,
            self.ok,
            self.errors.total()
        );
        if self.errors.total() > 0 {
            let e = &self.errors;
            s += &format!(
                "  errors    connect {}, tls {}, status {}, timeout {}, other {}\n",
                e.connect, e.tls, e.status, e.timeout, e.other
            );
        }
        s += &format!(
            "  bytes     {} ({:.1} MB/s)\n",
            self.bytes,
            self.bytes_per_second / 1e6
        );
        s += &format!(
            "  latency   p50 {:.3} ms  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}\n",
            ms(l.p50), ms(l.p90), ms(l.p99), ms(l.p999), ms(l.p9999), ms(l.max)
        );
        if let Some(t) = &self.target_process {
            s += &format!(
                "  target    pid {}: {:.3} CPU-s, {:.4} CPU-s per 1000 requests, peak RSS {:.1} MiB\n",
                t.pid, t.cpu_seconds, t.cpu_seconds_per_1000_requests, t.peak_rss_bytes as f64 / 1048576.0
            );
        }
        s
    }
}
