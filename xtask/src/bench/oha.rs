//! A second, independent client for scenario (a): oha, built against OpenSSL (native-tls), so
//! the keep-alive HTTP/1.1 comparison does not rest on loadgen and rustls alone. oha reaches
//! the gateway as loadgen does: SNI and certificate checks for the gateway's identity (the
//! address mapped with `--connect-to`), vote-bot's client certificate, `Host` naming web-svc,
//! and the same four request headers. It speaks HTTP/2 too, but takes `:authority` from the
//! URL, which must name the gateway for SNI, so it cannot route an HTTP/2 request.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context};
use serde_json::Value;

use super::{pinned, AUTHORITY, CLIENT_CORE, GATEWAY_ID, REQUEST_HEADERS};

/// Finds oha, installing it from crates.io (with OpenSSL) when missing; `None` when that
/// fails, so the rest of the bench still runs.
pub fn ensure() -> Option<String> {
    let found = |p: &str| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let home_bin = std::env::var("CARGO_HOME")
        .map(|h| format!("{h}/bin/oha"))
        .or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cargo/bin/oha")))
        .unwrap_or_else(|_| "oha".into());
    for candidate in ["oha", home_bin.as_str()] {
        if found(candidate) {
            return Some(candidate.to_string());
        }
    }
    println!("==> installing oha (crates.io, native-tls: OpenSSL); a few minutes");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args([
            "install",
            "oha",
            "--locked",
            "--quiet",
            "--no-default-features",
            "--features",
            "native-tls",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if ok && found(&home_bin) {
        Some(home_bin)
    } else {
        println!("    oha could not be installed (needs libssl-dev and pkg-config): skipped");
        None
    }
}

/// One oha run of `duration` against the proxy on `port` (whose worker is `pid`), 64
/// keep-alive connections; returns a report shaped like loadgen's where the bench reads it.
pub fn run(
    oha: &str,
    dir: &Path,
    port: u16,
    pid: u32,
    duration: Duration,
) -> anyhow::Result<Value> {
    let mut c = pinned(CLIENT_CORE, Path::new(oha));
    c.arg(format!("https://{GATEWAY_ID}:{port}/"))
        .args(["--no-tui", "--output-format", "json", "-c", "64"])
        .args(["-z", &format!("{}ms", duration.as_millis())])
        .args([
            "--connect-to",
            &format!("{GATEWAY_ID}:{port}:127.0.0.1:{port}"),
        ])
        .args(["--host", AUTHORITY])
        .arg("--cacert")
        .arg(dir.join("root.crt"))
        .arg("--cert")
        .arg(dir.join("vote-bot.crt"))
        .arg("--key")
        .arg(dir.join("vote-bot.key"));
    for pair in REQUEST_HEADERS.chunks(2) {
        if let [flag, header] = pair {
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            c.args([*flag, &format!("{name}: {value}")]);
        }
    }
    let mut sampler = bench::procstat::Sampler::new(pid)?;
    sampler.start();
    let out = c.output().context("running oha")?;
    let (cpu, system, _) = sampler.finish();
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "oha gave no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let summary = &report["summary"];
    let rps = summary["requestsPerSec"].as_f64().unwrap_or(0.0);
    let total = summary["total"].as_f64().unwrap_or(0.0);
    let success = summary["successRate"].as_f64().unwrap_or(0.0);
    if rps <= 0.0 || success < 0.99 {
        bail!(
            "oha: {rps:.0} req/s, success rate {success}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ms = |k: &str| report["latencyPercentiles"][k].as_f64().unwrap_or(0.0) * 1e6;
    Ok(serde_json::json!({
        "requests_per_second": rps,
        "measured_seconds": total,
        "bytes_per_second": summary["sizePerSec"].as_f64().unwrap_or(0.0),
        "latency_us": {"p50": ms("p50"), "p99": ms("p99"), "p999": ms("p99.9")},
        "target_process": {"cpu_seconds": cpu, "system_cpu_seconds": system},
        "errors": {"status": ((1.0 - success) * rps * total).round()},
    }))
}
