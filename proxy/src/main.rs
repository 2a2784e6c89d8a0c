//! `gateway`: parse configuration, start, run until SIGTERM/SIGINT, drain, exit.

use std::process::ExitCode;

mod allocator;

use clap::Parser;
use proxy::config::{Cli, Config, LogFormat};

// Each proxied request makes and frees a few dozen small buffers (headers, TLS records, body
// chunks); mimalloc's per-thread free lists serve them with about half the instructions of
// glibc's malloc, and keep a long-running process's RSS flat under churn.
#[global_allocator]
static ALLOC: allocator::Mimalloc = allocator::Mimalloc;

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only for people: log files and collectors get plain text.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).init(),
        LogFormat::Plain => fmt.init(),
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let metrics = proxy::metrics::install()?;
    let running = proxy::start(cfg, metrics).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
    running.drain().await
}

/// One core: a runtime on the main thread alone. A task woken by another on the same thread
/// is queued without atomics or a check for idle workers to wake, and no thread waits on a
/// futex for another: about 3 % more requests per CPU-second on HTTP/1.1 and HTTP/2 side by
/// side, and toward meshed HTTP/2 endpoints 0.83 system calls per request instead of 1.46
/// (`benches/HISTORY.md`, "Issue 13, eleventh round"). More: that many worker threads, each
/// taking work from the others when idle.
fn runtime(cores: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cores);
        b
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    let cfg = match Config::load(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&cfg);
    let rt = match runtime(cfg.cores) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        threads = cfg.cores,
        "runtime: {}",
        if cfg.cores == 1 {
            "one thread"
        } else {
            "worker threads"
        }
    );
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gateway: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
