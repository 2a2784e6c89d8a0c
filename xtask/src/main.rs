//! `cargo xtask ...`: the project's automation as a plain Rust binary.

mod bench;
mod demo;
mod doks;
mod faults;
mod test;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The fault suite at full length (release): rotation, SIGTERM, endpoints dying and
    /// returning, SIGKILL, each under open-loop load; prints the numbers.
    Faults,
    /// The soak: steady mixed load for a while, memory, descriptors and latency per minute;
    /// records benches/results/soak.md.
    Soak {
        /// How long, in seconds.
        #[arg(long, default_value_t = 600)]
        secs: u64,
        /// Requests per second per protocol (HTTP/1.1 and HTTP/2).
        #[arg(long, default_value_t = 250)]
        rate: u32,
        #[arg(long, default_value = "benches/results/soak.md")]
        out: PathBuf,
    },
    /// Stand up the two-region demo: vote-bot in west calls web-svc in east through the gateway.
    Demo {
        /// How long traffic runs, e.g. 30 or 30s or 2m (a bare number is seconds) [default:
        /// 30s]; without it, until Ctrl-C with --keep.
        #[arg(long, value_parser = seconds_or_duration)]
        duration: Option<Duration>,
        /// Round-trip time of the simulated WAN link (SFO–Sydney is about 150 ms).
        #[arg(long, default_value = "150ms", value_parser = humantime::parse_duration)]
        rtt: Duration,
        /// Leave everything running after the summary, until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Build and run optimised binaries.
        #[arg(long)]
        release: bool,
        /// West and east in network namespaces joined by a veth pair (needs root and iproute2).
        #[arg(long, value_enum, default_value_t = demo::NetnsMode::Auto)]
        netns: demo::NetnsMode,
        /// Where certificates and logs go [default: target/demo, or target/doks with --doks].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Do the tutorial for real on DigitalOcean Kubernetes (needs doctl, kubectl, linkerd).
        #[arg(long)]
        doks: bool,
        /// With --doks: print every command without running any.
        #[arg(long, requires = "doks")]
        dry_run: bool,
        /// With --doks: remove what it made.
        #[arg(long, requires = "doks")]
        cleanup: bool,
        /// With --doks --cleanup: delete the clusters too.
        #[arg(long, requires = "cleanup")]
        delete_clusters: bool,
        /// With --doks: nodes per cluster.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// With --doks: droplet size.
        #[arg(long, default_value = "s-8vcpu-16gb")]
        size: String,
        /// With --doks: the gateway image the clusters can pull (see `cargo xtask image`).
        #[arg(long, default_value = "meshgate/gateway:0.1.0")]
        image: String,
        /// With --doks: verification attempts, 10 s apart.
        #[arg(long, default_value_t = 30)]
        verify_attempts: u32,
    },
    /// Build the gateway image from deploy/gateway/Dockerfile (needs a Docker engine).
    Image {
        /// Image name and tag.
        #[arg(long, default_value = "meshgate/gateway:0.1.0")]
        tag: String,
        /// Push it after building (e.g. to `registry.digitalocean.com/<registry>/gateway:0.1.0`).
        #[arg(long)]
        push: bool,
    },
    /// Compare the gateway with nginx and haproxy (and no proxy) on this machine; writes
    /// benches/results/results.{md,json} and a latency plot.
    Bench {
        /// Measured time per run.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Warm-up per run, excluded.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Runs per scenario; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Idle mTLS connections for the memory scenario.
        #[arg(long, default_value_t = 10_000)]
        idle_connections: usize,
        #[arg(long, default_value = "benches/results")]
        out: PathBuf,
    },
    /// What one request costs the gateway, counted: user-space instructions (callgrind) and
    /// system calls (strace) per request, per scenario; writes benches/results/cost.md.
    BenchCost {
        /// Requests in the smaller run (new-connection scenario: a fiftieth).
        #[arg(long, default_value_t = 5_000)]
        small: u64,
        /// Requests in the larger run; the difference is what is measured.
        #[arg(long, default_value_t = 20_000)]
        large: u64,
        #[arg(long, default_value = "benches/results")]
        out: PathBuf,
        /// Only the scenarios whose name contains this text (e.g. `HTTP/1.1`, `meshed`).
        #[arg(long)]
        only: Option<String>,
        /// Keep each scenario's callgrind profile of the larger run in this directory
        /// (`callgrind.N.out`, N the scenario's row) for `callgrind_annotate`.
        #[arg(long)]
        profiles: Option<PathBuf>,
    },
    /// Everything CI runs, on a fresh machine too: installs what the tests need, then fmt,
    /// clippy, rustdoc, the test suite and a fuzz smoke; ends with `tests: N passed, N failed`.
    Test {
        /// Do not install missing tools.
        #[arg(long)]
        no_install: bool,
        /// Seconds of fuzzing the transport-header decoder (0: none).
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
    },
    #[command(hide = true)]
    BenchBackend {
        #[arg(long)]
        listen: SocketAddr,
        /// Also serve as a meshed workload (mTLS, `web.crt` from `--dir`) here.
        #[arg(long, requires = "dir")]
        mesh_listen: Option<SocketAddr>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Answers `linkerd-destination` lookups of the bench's authority with one meshed HTTP/2
    /// endpoint (scenario (h)).
    #[command(hide = true)]
    BenchDestination {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        endpoint: SocketAddr,
    },
    #[command(hide = true)]
    BenchTlsCeiling {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        dir: PathBuf,
    },
    #[command(hide = true)]
    BenchHold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        dir: PathBuf,
    },
    #[command(hide = true)]
    ControlPlane {
        #[arg(long)]
        identity: SocketAddr,
        #[arg(long)]
        destination: SocketAddr,
        #[arg(long)]
        policy: SocketAddr,
        #[arg(long)]
        web_endpoint: SocketAddr,
        #[arg(long)]
        dir: PathBuf,
    },
    #[command(hide = true)]
    WebSvc {
        #[arg(long)]
        listen: SocketAddr,
    },
    #[command(hide = true)]
    VoteBot {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        host: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
        pause: Duration,
    },
    #[command(hide = true)]
    HttpGet { addr: SocketAddr, path: String },
    #[command(hide = true)]
    Wan {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_parser = humantime::parse_duration)]
        rtt: Duration,
    },
}

/// `10` is ten seconds; `10s`, `1m30s`, `500ms` as humantime reads them.
fn seconds_or_duration(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s).map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace's top directory, whatever directory xtask was started from.
fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs cargo (the one that started xtask) in the workspace root.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(args)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn image(tag: &str, push: bool) -> anyhow::Result<()> {
    let root = workspace_root();
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !engine {
        bail!("no Docker engine reachable (`docker info` failed): `docker build` needs one");
    }
    let dockerfile = root.join("deploy/gateway/Dockerfile");
    let status = Command::new("docker")
        .env("DOCKER_BUILDKIT", "1")
        .arg("build")
        .arg("-f")
        .arg(&dockerfile)
        .args(["-t", tag])
        .arg(&root)
        .status()
        .context("running docker build")?;
    if !status.success() {
        bail!("docker build failed ({status})");
    }
    if push {
        let status = Command::new("docker")
            .args(["push", tag])
            .status()
            .context("running docker push")?;
        if !status.success() {
            bail!("docker push {tag} failed ({status})");
        }
    }
    println!("built {tag}{}", if push { " and pushed it" } else { "" });
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Demo {
            duration,
            rtt,
            keep,
            release,
            netns,
            dir,
            doks,
            dry_run,
            cleanup,
            delete_clusters,
            nodes,
            size,
            image,
            verify_attempts,
        } => {
            if doks {
                return doks::run(doks::DoksOptions {
                    dry_run,
                    cleanup,
                    delete_clusters,
                    nodes,
                    size,
                    west_region: "sfo3".into(),
                    east_region: "syd1".into(),
                    image,
                    dir: std::env::current_dir()?.join(dir.unwrap_or_else(|| "target/doks".into())),
                    verify_attempts,
                    // Tests shorten the wait between verification attempts.
                    verify_interval: Duration::from_secs(
                        std::env::var("XTASK_VERIFY_INTERVAL_SECS")
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(10),
                    ),
                });
            }
            demo::run_local(demo::LocalOptions {
                netns,
                duration: if keep {
                    duration
                } else {
                    Some(duration.unwrap_or(Duration::from_secs(30)))
                },
                rtt,
                keep,
                release,
                dir: dir.unwrap_or_else(|| "target/demo".into()),
            })
        }
        Cmd::Image { tag, push } => image(&tag, push),
        Cmd::Faults => faults::faults(),
        Cmd::Soak { secs, rate, out } => faults::soak(secs, rate, &out),
        Cmd::Bench {
            duration,
            warmup,
            repeats,
            idle_connections,
            out,
        } => bench::run(bench::BenchOptions {
            out: std::env::current_dir()?.join(out),
            duration,
            warmup,
            repeats: repeats.max(1),
            idle_connections,
        }),
        Cmd::BenchCost {
            small,
            large,
            out,
            only,
            profiles,
        } => {
            let cwd = std::env::current_dir()?;
            bench::run_cost(bench::cost::CostOptions {
                out: cwd.join(out),
                small,
                large,
                only,
                profiles: profiles.map(|p| cwd.join(p)),
            })
        }
        Cmd::BenchBackend {
            listen,
            mesh_listen,
            dir,
        } => runtime()?.block_on(bench::servers::backend(
            listen,
            mesh_listen.zip(dir.as_deref()),
        )),
        Cmd::BenchDestination { listen, endpoint } => {
            runtime()?.block_on(bench::servers::destination(listen, endpoint))
        }
        Cmd::BenchTlsCeiling { listen, dir } => {
            // One worker: the ceiling is one core's worth, like the pinned proxies.
            runtime()?.block_on(bench::servers::tls_ceiling(listen, &dir))
        }
        Cmd::BenchHold { target, count, dir } => {
            runtime()?.block_on(bench::servers::hold(target, &dir, demo::GATEWAY_ID, count))
        }
        Cmd::Test {
            no_install,
            fuzz_seconds,
        } => test::run_all(test::TestOptions {
            no_install,
            fuzz_seconds,
        }),
        Cmd::ControlPlane {
            identity,
            destination,
            policy,
            web_endpoint,
            dir,
        } => runtime()?.block_on(demo::control::run(
            demo::control::ControlPlaneOptions {
                identity,
                destination,
                policy,
                web_endpoint,
            },
            &dir,
        )),
        Cmd::WebSvc { listen } => runtime()?.block_on(demo::emojivoto::web_svc(listen)),
        Cmd::VoteBot {
            target,
            host,
            duration,
            pause,
        } => {
            let rt = runtime()?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let report = rt.block_on(async {
                let flag = stop.clone();
                // Interrupted: finish the iteration in flight and report what was done.
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                });
                demo::emojivoto::vote_bot(target, host, duration, pause, stop).await
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::HttpGet { addr, path } => {
            let (status, body) = demo::http_get(addr, &path)?;
            print!("{status}\n{body}");
            Ok(())
        }
        Cmd::Wan { listen, to, rtt } => runtime()?.block_on(demo::wan::run(listen, to, rtt)),
    }
}
