//! What one worker measured; workers' results are merged at the end.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed or was refused.
    Connect,
    /// The TLS handshake failed (certificate refused, wrong identity, no ALPN...).
    Tls,
    /// A response arrived with a status outside 2xx/3xx.
    Status,
    /// No response within the request timeout.
    Timeout,
    /// The connection broke mid-request, or another protocol error.
    Other,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Errors {
    pub connect: u64,
    pub tls: u64,
    pub status: u64,
    pub timeout: u64,
    pub other: u64,
}

impl Errors {
    pub fn add(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Tls => self.tls += 1,
            ErrorKind::Status => self.status += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Other => self.other += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.connect + self.tls + self.status + self.timeout + self.other
    }

    fn merge(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.tls += o.tls;
        self.status += o.status;
        self.timeout += o.timeout;
        self.other += o.other;
    }
}

pub struct Stats {
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: Errors,
    pub bytes: u64,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            // 1 µs to 100 s at 3 significant figures: a few hundred KiB per worker.
            latency: Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| {
                Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
            }),
            ok: 0,
            errors: Errors::default(),
            bytes: 0,
        }
    }

    pub fn record_ok(&mut self, micros: u64, bytes: u64) {
        // Saturate rather than drop a sample larger than the bound.
        let v = micros.clamp(1, self.latency.high());
        let _ = self.latency.record(v);
        self.ok += 1;
        self.bytes += bytes;
    }

    pub fn merge(&mut self, o: &Stats) {
        let _ = self.latency.add(&o.latency);
        self.ok += o.ok;
        self.errors.merge(&o.errors);
        self.bytes += o.bytes;
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}
