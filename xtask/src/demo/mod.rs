//! `cargo xtask demo`: the tutorial's two regions on this machine. East runs our gateway in
//! front of `web-svc`; west runs `vote-bot` and the outbound proxy that plays its Linkerd
//! sidecar; a user-space WAN link between them adds the SFO–Sydney round trip.

pub mod emojivoto;
pub mod procs;
pub mod wan;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use identity::Pki;

use self::procs::Procs;

pub const GATEWAY_ID: &str =
    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local";
pub const VOTE_BOT_ID: &str = "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local";
pub const WEB_SVC: &str = "web-svc.emojivoto.svc.cluster.local:80";
/// The mirrored name west's workloads use for east's web-svc.
pub const WEB_SVC_EAST: &str = "web-svc-east.emojivoto.svc.cluster.local:80";

pub struct LocalOptions {
    pub duration: Option<Duration>,
    pub rtt: Duration,
    pub keep: bool,
    pub release: bool,
    pub dir: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn step(msg: &str) {
    println!("==> {msg}");
}

/// `preferred` if free on 127.0.0.1, else any free port.
fn port(preferred: u16) -> anyhow::Result<SocketAddr> {
    for p in [preferred, 0] {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", p)) {
            return Ok(l.local_addr()?);
        }
    }
    bail!("no free port on 127.0.0.1")
}

fn build(release: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build", "--quiet", "-p", "proxy", "--bin", "gateway", "--bin", "outbound",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p proxy failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join(if release { "release" } else { "debug" }))
}

/// The shared anchor, an issuer per region, and the workload certificates.
fn make_pki(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let east = Pki::with_names(
        "root.linkerd.cluster.local",
        "identity-east.linkerd.cluster.local",
    )?;
    let west = east.sibling("identity-west.linkerd.cluster.local")?;
    std::fs::write(dir.join("root.crt"), &east.anchor.cert_pem)?;
    east.leaf(GATEWAY_ID)?.write(dir, "gateway")?;
    west.leaf(VOTE_BOT_ID)?.write(dir, "vote-bot")?;
    println!("    trust anchor root.linkerd.cluster.local, issuers identity-east / identity-west");
    println!("    east: {GATEWAY_ID}");
    println!("    west: {VOTE_BOT_ID}");
    Ok(())
}

fn wait_ready(admin: SocketAddr, procs: &mut Procs, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((name, status)) = procs.exited() {
            bail!("{name} exited during start-up ({status})");
        }
        if http_get(admin, "/ready")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the gateway did not become ready within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_port(addr: SocketAddr, procs: &mut Procs, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some((name, status)) = procs.exited() {
            bail!("{name} exited during start-up ({status})");
        }
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Prints the outbound proxy's tap lines as they come.
fn follow_tap(
    log: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut printed = 0u64;
        let Ok(file) = std::fs::File::open(&log) else {
            return 0;
        };
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return printed;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(_) => {
                    if let Some(i) = line.find("tap: ") {
                        print!("{}", &line[i + 5..]);
                        printed += 1;
                    }
                }
                Err(_) => return printed,
            }
        }
    })
}

/// Caller identities and request counts from the gateway's `request_total` series.
fn callers_seen(metrics: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for l in metrics.lines().filter(|l| l.starts_with("request_total{")) {
        let id = l
            .split("client_id=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let n = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        match out.iter_mut().find(|(i, _)| i == id) {
            Some(e) => e.1 += n,
            None => out.push((id.to_string(), n)),
        }
    }
    out
}

pub fn run_local(opts: LocalOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    step("building gateway and outbound");
    let bin = build(opts.release)?;
    // Absolute, so every process's command line names it (and can be found and stopped).
    let dir = std::env::current_dir()?.join(&opts.dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).ok();
    }
    step(&format!("making a fresh PKI in {}", dir.display()));
    make_pki(&dir)?;

    let gw = port(4143)?;
    let admin = port(4191)?;
    let web = port(8080)?;
    // West reaches east's gateway at its "public" address: the WAN link's end, on another
    // loopback address but the same port, as a LoadBalancer would present it.
    let wan = ["127.0.0.2", "127.0.0.1"]
        .iter()
        .find_map(|ip| {
            std::net::TcpListener::bind((*ip, gw.port()))
                .ok()?
                .local_addr()
                .ok()
        })
        .map(Ok)
        .unwrap_or_else(|| port(0))?;
    let outbound = port(4140)?;
    let me = std::env::current_exe()?;
    let mut procs = Procs::new();

    step(&format!(
        "east (syd1): web-svc on {web}, gateway on {gw} (admin {admin})"
    ));
    let mut c = Command::new(&me);
    c.args(["web-svc", "--listen", &web.to_string()]);
    procs.spawn("web-svc", c, &dir.join("web-svc.log"), false)?;
    let mut c = Command::new(bin.join("gateway"));
    c.current_dir(&dir)
        .args([
            "--listen",
            &gw.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .arg("--trust-anchors")
        .arg(dir.join("root.crt"))
        .arg("--cert")
        .arg(dir.join("gateway.crt"))
        .arg("--key")
        .arg(dir.join("gateway.key"))
        .args(["--route", &format!("{WEB_SVC}={web}")])
        .args([
            "--allow-client",
            "*.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        ])
        .args(["--export", "web-svc.emojivoto.svc.cluster.local"])
        .env("RUST_LOG", "info");
    procs.spawn("gateway", c, &dir.join("gateway.log"), false)?;
    wait_port(web, &mut procs, "web-svc")?;
    wait_ready(admin, &mut procs, Duration::from_secs(20))?;

    step(&format!(
        "WAN link sfo3 <-> syd1 on {wan}: {} round trip",
        humantime::format_duration(opts.rtt)
    ));
    let mut c = Command::new(&me);
    c.args([
        "wan",
        "--listen",
        &wan.to_string(),
        "--to",
        &gw.to_string(),
        "--rtt",
        &humantime::format_duration(opts.rtt).to_string(),
    ]);
    procs.spawn("wan", c, &dir.join("wan.log"), false)?;
    wait_port(wan, &mut procs, "the WAN link")?;

    step(&format!(
        "west (sfo3): vote-bot -> web-svc-east via the outbound proxy on {outbound}"
    ));
    let mut c = Command::new(bin.join("outbound"));
    c.current_dir(&dir)
        .args([
            "--listen",
            &outbound.to_string(),
            "--gateway",
            &wan.to_string(),
            "--gateway-identity",
            GATEWAY_ID,
        ])
        .arg("--trust-anchors")
        .arg(dir.join("root.crt"))
        .arg("--cert")
        .arg(dir.join("vote-bot.crt"))
        .arg("--key")
        .arg(dir.join("vote-bot.key"))
        .args(["--remote", &format!("{WEB_SVC_EAST}={WEB_SVC}")])
        .args(["--remote", &format!("web-svc-east:80={WEB_SVC}")])
        .env("RUST_LOG", "info");
    procs.spawn("outbound", c, &dir.join("outbound.log"), false)?;
    wait_port(outbound, &mut procs, "the outbound proxy")?;

    let stop_tap = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tap = follow_tap(dir.join("outbound.log"), stop_tap.clone());
    let run_for = opts
        .duration
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let mut c = Command::new(&me);
    c.args([
        "vote-bot",
        "--target",
        &outbound.to_string(),
        "--host",
        WEB_SVC_EAST,
    ])
    .args([
        "--duration",
        &humantime::format_duration(run_for).to_string(),
    ]);
    let bot_out = procs.spawn("vote-bot", c, &dir.join("vote-bot.log"), true)?;
    println!("==> traffic (tap from west's proxy; Ctrl-C to stop):");

    // Wait for vote-bot to finish, Ctrl-C, or a component to die.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let failure = loop {
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some(pid) = procs.pid("vote-bot") {
                let _ = Command::new("kill")
                    .args(["-INT", &pid.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        match procs.exited() {
            Some((name, status)) if name == "vote-bot" => {
                break (!status.success()).then(|| format!("vote-bot exited with {status}"));
            }
            Some((name, status)) => {
                break Some(format!(
                    "{name} died ({status}); see {}",
                    dir.join(format!("{name}.log")).display()
                ))
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let report: Option<emojivoto::BotReport> = bot_out.and_then(|out| {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| serde_json::from_str(&l).ok())
    });
    let metrics = http_get(admin, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    std::thread::sleep(Duration::from_millis(200));
    stop_tap.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tap.join();

    println!();
    println!("==> summary after {:.1}s", started.elapsed().as_secs_f64());
    let report = report.unwrap_or_default();
    let rate = if report.requests > 0 {
        100.0 * report.ok as f64 / report.requests as f64
    } else {
        0.0
    };
    println!(
        "    requests:      {} ({} ok, {} failed, {rate:.1}% success)",
        report.requests, report.ok, report.failed
    );
    println!(
        "    latency:       p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (RTT {})",
        report.p50_ms,
        report.p99_ms,
        report.max_ms,
        humantime::format_duration(opts.rtt)
    );
    println!("    gateway saw:");
    for (id, n) in callers_seen(&metrics) {
        println!("      client_id={id} tls=true requests={n}");
    }
    println!("    metrics:       curl http://{admin}/metrics");
    println!("    logs:          {}", dir.display());

    if opts.keep && failure.is_none() {
        println!();
        println!("==> still running (--keep); explore, then Ctrl-C to tear down:");
        println!("    curl -H 'Host: web-svc-east' http://{outbound}/api/leaderboard");
        println!(
            "    curl --cacert {d}/root.crt --cert {d}/vote-bot.crt --key {d}/vote-bot.key \\",
            d = dir.display()
        );
        println!("      --resolve {GATEWAY_ID}:{}:127.0.0.1 -H 'Host: {WEB_SVC}' https://{GATEWAY_ID}:{}/api/list", gw.port(), gw.port());
        println!(
            "    curl http://{admin}/ready; curl -s http://{admin}/metrics | grep ^request_total"
        );
        while !interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some((name, status)) = procs.exited() {
                if name != "vote-bot" {
                    println!("{name} exited ({status})");
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    step("tearing down");
    procs.stop(Duration::from_secs(5));
    if let Some(f) = failure {
        bail!(f);
    }
    if report.requests == 0 {
        bail!("no requests were made");
    }
    if report.failed > 0 {
        bail!(
            "{} of {} requests failed (see {})",
            report.failed,
            report.requests,
            dir.join("vote-bot.log").display()
        );
    }
    println!("==> done: every request crossed the WAN over mutual TLS");
    Ok(())
}
