//! `outbound`: lets a workload without a mesh sidecar reach a service in another cluster
//! through that cluster's gateway, speaking to the gateway as a Linkerd source proxy does.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use identity::{CertStore, Credentials, Identity, TrustAnchors};
use proxy::{authority::Authority, outbound::Outbound, Drain, Listener};

#[derive(Parser)]
#[command(
    name = "outbound",
    version,
    about = "Reach a remote cluster's services through its gateway, as a Linkerd source proxy does"
)]
struct Cli {
    /// Where local clients connect (plaintext HTTP/1.1 or h2c).
    #[arg(long, env = "OUTBOUND_LISTEN", default_value = "127.0.0.1:4140")]
    listen: SocketAddr,
    /// The remote gateway's address (its 4143 port).
    #[arg(long, env = "OUTBOUND_GATEWAY")]
    gateway: String,
    /// The remote gateway's identity (its certificate must name it).
    #[arg(
        long,
        env = "OUTBOUND_GATEWAY_IDENTITY",
        default_value = "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local"
    )]
    gateway_identity: String,
    /// Trust anchor(s) shared with the remote cluster.
    #[arg(long, env = "OUTBOUND_TRUST_ANCHORS")]
    trust_anchors: PathBuf,
    /// This workload's certificate (leaf + chain).
    #[arg(long, env = "OUTBOUND_CERT")]
    cert: PathBuf,
    /// This workload's key.
    #[arg(long, env = "OUTBOUND_KEY")]
    key: PathBuf,
    /// LOCAL=REMOTE authorities, e.g. web-svc-east:80=web-svc.emojivoto.svc.cluster.local:80 (repeatable).
    #[arg(long = "remote", required = true)]
    remotes: Vec<String>,
    /// Deadline for connecting to the gateway.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Most concurrent local client connections.
    #[arg(long, env = "OUTBOUND_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// How long requests in flight may finish after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

fn parse_remote(s: &str) -> anyhow::Result<(Authority, Authority)> {
    let (l, r) = s
        .split_once('=')
        .with_context(|| format!("--remote {s:?}: expected LOCAL=REMOTE"))?;
    let local = Authority::parse(l).map_err(|e| anyhow::anyhow!("--remote {s:?}: local: {e}"))?;
    let remote = Authority::parse(r).map_err(|e| anyhow::anyhow!("--remote {s:?}: remote: {e}"))?;
    Ok((local, remote))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let anchors = TrustAnchors::load(&cli.trust_anchors)?;
    let creds = Credentials::load(&cli.cert, &cli.key)?;
    creds.verify(&anchors).with_context(|| {
        format!(
            "{} is not valid under {}",
            cli.cert.display(),
            cli.trust_anchors.display()
        )
    })?;
    let gateway = tokio::net::lookup_host(&cli.gateway)
        .await
        .with_context(|| format!("cannot resolve --gateway {}", cli.gateway))?
        .next()
        .with_context(|| format!("--gateway {} resolved to nothing", cli.gateway))?;
    let remotes = cli
        .remotes
        .iter()
        .map(|r| parse_remote(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outbound = Arc::new(Outbound::new(
        gateway,
        Identity::parse(&cli.gateway_identity)?,
        CertStore::new(&creds)?,
        &anchors,
        remotes,
        cli.connect_timeout,
    )?);
    let listener = Listener::bind(cli.listen, "outbound", cli.max_connections).await?;
    tracing::info!(listen = %listener.local_addr()?, %gateway, identity = %creds.identity(), "outbound ready");
    let drain = Drain::new();
    let serving = tokio::spawn(proxy::outbound::serve(listener, outbound, drain.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
    drain.clone().run(cli.drain_timeout).await;
    let _ = serving.await;
    Ok(())
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outbound: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbound: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
