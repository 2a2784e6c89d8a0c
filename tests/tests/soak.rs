//! The soak: a steady mixed load (HTTP/1.1 and HTTP/2 callers, quick and slower requests)
//! for `SOAK_SECS` seconds (600 by default), with the gateway's memory, file descriptors and
//! latency percentiles sampled every minute. It passes if nothing fails, RSS grows less than
//! 10 % after the first minute, descriptors stay flat and p99 stays within 2x (+5 ms).
//!
//! Ignored in the test suite (it takes minutes); `cargo xtask soak` runs it in release and
//! records the table in `benches/results/soak.md`.

use std::time::{Duration, Instant};

use e2e::{
    load::{failures, load, Backend, Outcome, Proto},
    *,
};

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: cargo xtask soak"]
async fn soak() {
    let total = Duration::from_secs(
        std::env::var("SOAK_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    );
    let rate: u32 = std::env::var("SOAK_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let minute = Duration::from_secs(60).min(total);
    let fx = Fixture::new();
    let backend = Backend::start("127.0.0.1:0".parse().unwrap()).await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80={}", backend.addr)]);
    let pid = gw.pid();
    println!("SOAK | minute | requests | failed | p50 ms | p99 ms | max ms | RSS MiB | fds |");
    println!("SOAK |---|---|---|---|---|---|---|---|");
    let t0 = Instant::now();
    let mut rows = Vec::new();
    let mut all_failed = 0;
    let mut i = 0;
    while t0.elapsed() + minute / 2 < total {
        i += 1;
        let (h1, h2) = tokio::join!(
            load(&fx, gw.listen, Proto::H1, rate, minute, "/", t0),
            load(&fx, gw.listen, Proto::H2, rate, minute, "/slow?ms=5", t0),
        );
        let outcomes: Vec<&Outcome> = h1.iter().chain(h2.iter()).collect();
        let failed = failures(&h1).len() + failures(&h2).len();
        all_failed += failed;
        let mut lat: Vec<Duration> = outcomes.iter().map(|o| o.took).collect();
        lat.sort();
        let (rss, fd) = (rss_kib(pid), fds(pid));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "SOAK | {i} | {} | {failed} | {:.2} | {:.2} | {:.2} | {:.1} | {fd} |",
            outcomes.len(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&lat, 1.0)),
            rss as f64 / 1024.0
        );
        rows.push((rss, fd, percentile(&lat, 0.99)));
    }
    assert_eq!(all_failed, 0, "requests failed during the soak");
    if rows.len() >= 3 {
        // After the first minute (warm-up): flat memory, descriptors and tail latency.
        let (warm_rss, warm_fd, warm_p99) = rows[1];
        let (last_rss, last_fd, last_p99) = rows[rows.len() - 1];
        let growth = last_rss as f64 / warm_rss as f64 - 1.0;
        println!(
            "SOAK result: RSS {:+.1} % after warm-up, descriptors {warm_fd} -> {last_fd}, p99 {warm_p99:?} -> {last_p99:?}",
            growth * 100.0
        );
        assert!(growth < 0.10, "RSS grew {:.1} %", growth * 100.0);
        assert!(last_fd <= warm_fd + 8, "descriptors {warm_fd} -> {last_fd}");
        assert!(
            last_p99 <= warm_p99 * 2 + Duration::from_millis(5),
            "p99 {warm_p99:?} -> {last_p99:?}"
        );
    }
}
