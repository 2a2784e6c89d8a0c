//! `loadgen`: load a gateway (or anything HTTP) over mTLS with client certificates, HTTP/1.1,
//! HTTP/2 or Linkerd's transport header; closed or open loop; HDR latency; JSON and SVG out.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::Context;
use bench::{
    conn::{Proto, Target, TlsOptions},
    plot,
    procstat::Sampler,
    report::{Report, TargetProcess},
    run::{run, Progress, RunConfig},
};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "mTLS load generator for the gateway: HTTP/1.1, HTTP/2, Linkerd transport header; closed or constant-rate open loop"
)]
struct Cli {
    /// Target URL, e.g. https://127.0.0.1:4143/api/list or http://127.0.0.1:8080/.
    url: String,
    /// Request authority (`:authority`/`Host`), e.g. web-svc.emojivoto.svc.cluster.local:80.
    #[arg(long)]
    authority: Option<String>,
    /// Trust anchors for the server's certificate (https).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate (leaf + chain) for mTLS.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Identity the server's certificate must name [default: the URL's host].
    #[arg(long)]
    server_identity: Option<String>,
    /// Connections.
    #[arg(short = 'c', long = "connections", default_value_t = 10)]
    connections: usize,
    /// HTTP/2 (prior knowledge on http, ALPN h2 on https).
    #[arg(long)]
    h2: bool,
    /// Concurrent streams per HTTP/2 connection (with --h2 or --transport-header).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Constant request rate (requests/s over all connections): open loop, latency measured
    /// from each request's scheduled time.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to measure (after warm-up).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    duration: Option<Duration>,
    /// How many requests to measure (after warm-up).
    #[arg(short = 'n', long = "count")]
    count: Option<u64>,
    /// Warm-up, excluded from results.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// A new mTLS connection (full handshake) for every request.
    #[arg(long)]
    new_connection: bool,
    /// Talk as a Linkerd source proxy: ALPN transport.l5d.io/v1, the header naming the
    /// authority, then HTTP/2.
    #[arg(long)]
    transport_header: bool,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request body (or @FILE).
    #[arg(long)]
    body: Option<String>,
    /// Extra request header NAME:VALUE (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Write the report as JSON (schema loadgen/v1).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency-by-percentile plot (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Sample this process's CPU time and RSS during the run (the target's pid).
    #[arg(long)]
    pid: Option<u32>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Runtime worker threads [default: cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)` when every request failed.
async fn main_async(cli: Cli) -> anyhow::Result<bool> {
    let proto = if cli.h2 || cli.transport_header {
        Proto::Http2
    } else {
        Proto::Http1
    };
    let host = cli
        .url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_default();
    let server_identity = cli.server_identity.clone().unwrap_or(host);
    let tls = cli.cacert.as_deref().map(|cacert| TlsOptions {
        cacert,
        cert: cli.cert.as_deref(),
        key: cli.key.as_deref(),
        server_identity: &server_identity,
    });
    let target = Arc::new(
        Target::new(
            &cli.url,
            cli.authority.as_deref(),
            proto,
            tls,
            cli.transport_header,
            Duration::from_secs(5),
        )
        .await?,
    );
    let body = match &cli.body {
        Some(b) if b.starts_with('@') => std::fs::read(&b[1..])
            .with_context(|| format!("--body {b}"))?
            .into(),
        Some(b) => bytes::Bytes::from(b.clone()),
        None => bytes::Bytes::new(),
    };
    let headers = cli
        .headers
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("-H {h:?}: expected NAME:VALUE"))?;
            Ok((
                k.trim().parse::<http::HeaderName>()?,
                v.trim().parse::<http::HeaderValue>()?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let duration = match (cli.duration, cli.count) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let cfg = Arc::new(RunConfig {
        connections: cli.connections,
        streams: cli.streams,
        rate: cli.rate,
        duration,
        count: cli.count,
        warmup: cli.warmup,
        new_connection: cli.new_connection,
        timeout: cli.timeout,
        method: cli.method.parse().context("--method")?,
        body,
        headers,
    });
    let progress = Arc::new(Progress::default());
    let mut sampler = match cli.pid {
        Some(pid) => Some(Sampler::new(pid)?),
        None => None,
    };
    let live = !cli.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = live.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(250));
        b
    });
    let handle = tokio::spawn(run(target.clone(), cfg.clone(), progress.clone()));
    let mut started = false;
    let mut last = (std::time::Instant::now(), 0u64);
    while !handle.is_finished() {
        tokio::time::sleep(Sampler::INTERVAL).await;
        let measuring = progress.measuring.load(Ordering::Relaxed);
        if let Some(s) = sampler.as_mut() {
            if measuring && !started {
                s.start();
                started = true;
            }
            s.tick();
        }
        if let Some(b) = &bar {
            let done = progress.done.load(Ordering::Relaxed);
            let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
            last = (std::time::Instant::now(), done);
            b.set_message(format!(
                "{} {done} requests, {rate:.0} req/s, {} errors",
                if measuring {
                    "measuring:"
                } else {
                    "warming up:"
                },
                progress.errors.load(Ordering::Relaxed)
            ));
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let result = handle.await?;
    let stats = result.stats;
    let secs = result.measured.as_secs_f64().max(1e-9);
    let requests = stats.ok + stats.errors.total();
    let target_process = match (sampler.as_mut(), cli.pid) {
        (Some(s), Some(pid)) => {
            let (cpu, system, rss) = s.finish();
            Some(TargetProcess {
                pid,
                cpu_seconds: cpu,
                system_cpu_seconds: system,
                cpu_seconds_per_1000_requests: if stats.ok > 0 {
                    cpu / (stats.ok as f64 / 1000.0)
                } else {
                    0.0
                },
                peak_rss_bytes: rss,
            })
        }
        _ => None,
    };
    let report = Report {
        schema: "loadgen/v1",
        url: cli.url.clone(),
        protocol: if cli.transport_header {
            "transport-header+h2".into()
        } else if proto == Proto::Http2 {
            "h2".into()
        } else {
            "http/1.1".into()
        },
        mode: match (cli.rate, cli.new_connection) {
            (Some(_), true) => "open loop, new connection per request",
            (Some(_), false) => "open loop",
            (None, true) => "closed loop, new connection per request",
            (None, false) => "closed loop",
        }
        .into(),
        connections: cli.connections,
        streams: if proto == Proto::Http2 {
            cli.streams
        } else {
            1
        },
        rate: cli.rate,
        measured_seconds: secs,
        requests,
        ok: stats.ok,
        errors: stats.errors.clone(),
        requests_per_second: stats.ok as f64 / secs,
        bytes: stats.bytes,
        bytes_per_second: stats.bytes as f64 / secs,
        latency_us: Report::latency(&stats),
        latency_spectrum_ms: plot::spectrum(&stats),
        target_process,
    };
    print!("{}", report.text());
    if let Some(p) = &cli.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("--json {}", p.display()))?;
    }
    if let Some(p) = &cli.plot {
        let title = format!("{} {} ({})", report.protocol, cli.url, report.mode);
        std::fs::write(p, plot::svg(&title, &[("latency", &stats)]))
            .with_context(|| format!("--plot {}", p.display()))?;
    }
    Ok(stats.ok > 0)
}
