//! The families the data plane updates on every request (`request_total`, `response_total`,
//! `response_latency_ms`) and on every read and write (`tcp_read_bytes_total`,
//! `tcp_write_bytes_total`): held here, apart from the Prometheus exporter's registry, and
//! rendered after the exporter's text by [`render_into`].
//!
//! The exporter keeps every histogram sample, a value and a clock reading, in a queue that
//! only its upkeep (every 5 s) or a scrape folds into buckets. Under 50k requests a second the
//! gateway's resident memory grew by 2 MB a second between upkeeps (a 10-15 MB sawtooth on a
//! 10 MB process, and larger with more load), and reading the clock, the queue's epoch guard
//! and the folding cost about 1.5 % of a request's CPU. Its counters take two atomic
//! operations per increment (one for idle tracking the gateway does not use). Here a histogram
//! is its buckets and a sum, a counter one word: fixed memory, one atomic add per counter
//! update and two per latency.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use metrics::{Counter, CounterFn, Histogram, HistogramFn, Label};

use super::LATENCY_BUCKETS_MS;

/// A monotonic count.
#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

/// The longest latency added to a sum (a year): the sum of any count of them that a process
/// could record stays far from overflowing 64 bits of microseconds.
const MAX_MS: f64 = 365.0 * 24.0 * 3600.0 * 1000.0;

/// Latencies in milliseconds, in Linkerd's `response_latency_ms` buckets.
struct Latency {
    /// Per bucket (not cumulative; summed when rendered), the last one `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    /// In microseconds, so that adding needs no compare-and-swap loop on a float.
    sum_us: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl HistogramFn for Latency {
    fn record(&self, ms: f64) {
        // Latencies come from `Duration`s; anything else counts as nothing, not as a poison.
        let ms = if ms.is_finite() {
            ms.clamp(0.0, MAX_MS)
        } else {
            0.0
        };
        // Nearly every latency falls in the first buckets: a scan from the bottom is shorter
        // than a binary search in practice.
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((ms * 1000.0) as u64, Ordering::Relaxed);
    }
}

enum Series {
    Count(Arc<Count>),
    Latency(Arc<Latency>),
}

/// Every series of these families, by family name then rendered label set. A series lives as
/// long as the process, as in the exporter: the label values come from verified identities,
/// routed names and endpoints (see the module above), which bounds them.
#[derive(Default)]
struct Registry {
    families: Mutex<BTreeMap<&'static str, BTreeMap<String, Series>>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The handle of counter `name` with `labels`, made on first use.
pub fn counter(name: &'static str, labels: &[Label]) -> Counter {
    with_series(
        name,
        labels,
        || Series::Count(Arc::default()),
        |s| match s {
            Series::Count(c) => Counter::from_arc(c.clone()),
            // A name is only ever used with one kind; were it not, the update goes nowhere
            // rather than into a series of the wrong type.
            Series::Latency(_) => Counter::noop(),
        },
    )
}

/// The handle of latency histogram `name` with `labels`, made on first use.
pub fn latency(name: &'static str, labels: &[Label]) -> Histogram {
    with_series(
        name,
        labels,
        || Series::Latency(Arc::default()),
        |s| match s {
            Series::Latency(h) => Histogram::from_arc(h.clone()),
            Series::Count(_) => Histogram::noop(),
        },
    )
}

/// Looks series `name` with `labels` up (making it with `make` if it is new) and hands it to
/// `handle`, under the registry's lock.
fn with_series<T>(
    name: &'static str,
    labels: &[Label],
    make: fn() -> Series,
    handle: impl FnOnce(&Series) -> T,
) -> T {
    let key = label_set(labels);
    let mut families = registry()
        .families
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    handle(
        families
            .entry(name)
            .or_default()
            .entry(key)
            .or_insert_with(make),
    )
}

/// `k="v",...` in the order given, values escaped as the text format asks.
fn label_set(labels: &[Label]) -> String {
    let mut s = String::new();
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(l.key());
        s.push_str("=\"");
        for c in l.value().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s
}

/// Appends every family in the Prometheus text format (version 0.0.4).
pub fn render_into(out: &mut String) {
    let families = registry()
        .families
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for (name, series) in families.iter() {
        let Some(first) = series.values().next() else {
            continue;
        };
        let kind = match first {
            Series::Count(_) => "counter",
            Series::Latency(_) => "histogram",
        };
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, s) in series {
            match s {
                Series::Count(c) => {
                    let value = c.0.load(Ordering::Relaxed);
                    let _ = writeln!(out, "{name}{} {value}", braced(labels));
                }
                Series::Latency(h) => render_latency(out, name, labels, h),
            }
        }
        out.push('\n');
    }
}

fn render_latency(out: &mut String, name: &str, labels: &str, h: &Latency) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut total = 0u64;
    for (i, bucket) in h.buckets.iter().enumerate() {
        total += bucket.load(Ordering::Relaxed);
        let le = match LATENCY_BUCKETS_MS.get(i) {
            Some(le) => le.to_string(),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {total}");
    }
    let sum_ms = h.sum_us.load(Ordering::Relaxed) as f64 / 1000.0;
    let _ = writeln!(out, "{name}_sum{} {sum_ms}", braced(labels));
    let _ = writeln!(out, "{name}_count{} {total}", braced(labels));
}

fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        let mut s = String::new();
        render_into(&mut s);
        s
    }

    #[test]
    fn counters_render_with_their_labels_in_order_and_escaped() {
        let labels = [
            Label::new("direction", "inbound"),
            Label::new("authority", "a\"b\\c\nd"),
        ];
        let c = counter("series_test_counter_total", &labels);
        c.increment(2);
        // The same labels reach the same series.
        counter("series_test_counter_total", &labels).increment(3);
        let text = rendered();
        assert!(
            text.contains("# TYPE series_test_counter_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "series_test_counter_total{direction=\"inbound\",authority=\"a\\\"b\\\\c\\nd\"} 5\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn latencies_render_as_cumulative_buckets_with_sum_and_count() {
        let h = latency(
            "series_test_latency_ms",
            &[Label::new("status_code", "200")],
        );
        for ms in [0.4, 0.9, 1.5, 7.0, 60_000.0] {
            h.record(ms);
        }
        let text = rendered();
        let line = |suffix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("series_test_latency_ms{suffix}")))
                .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
                .unwrap_or_else(|| panic!("no {suffix} line in\n{text}"))
        };
        assert!(text.contains("# TYPE series_test_latency_ms histogram\n"));
        assert_eq!(line("_bucket{status_code=\"200\",le=\"1\"}"), "2");
        assert_eq!(line("_bucket{status_code=\"200\",le=\"2\"}"), "3");
        assert_eq!(line("_bucket{status_code=\"200\",le=\"10\"}"), "4");
        assert_eq!(line("_bucket{status_code=\"200\",le=\"50000\"}"), "4");
        assert_eq!(line("_bucket{status_code=\"200\",le=\"+Inf\"}"), "5");
        assert_eq!(line("_count{status_code=\"200\"}"), "5");
        assert_eq!(line("_sum{status_code=\"200\"}"), "60009.8");
    }

    #[test]
    fn odd_latencies_are_counted_not_lost() {
        let h = latency("series_test_odd_ms", &[]);
        h.record(f64::NAN);
        h.record(-1.0);
        h.record(f64::INFINITY);
        h.record(1e300);
        let text = rendered();
        assert!(
            text.contains("series_test_odd_ms_bucket{le=\"1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("series_test_odd_ms_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("series_test_odd_ms_count 4\n"), "{text}");
        assert!(
            text.contains("series_test_odd_ms_sum 31536000000\n"),
            "{text}"
        );
    }
}
