//! `cargo xtask demo`: the tutorial's two regions on this machine. East runs a small Linkerd
//! control plane, `web-svc` behind a meshed inbound that requires mTLS, and our gateway as a
//! member of that mesh (its identity from Certify, `web-svc`'s endpoint from discovery, its
//! callers authorized by policy); west runs `vote-bot` and the outbound proxy that plays its
//! Linkerd sidecar; a user-space WAN link between them adds the SFO–Sydney round trip.

pub mod control;
pub mod emojivoto;
pub mod netns;
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
/// web-svc's workload identity, which its meshed inbound proves to the gateway.
pub const WEB_ID: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
/// The mirrored name west's workloads use for east's web-svc.
pub const WEB_SVC_EAST: &str = "web-svc-east.emojivoto.svc.cluster.local:80";

/// Whether west and east get network namespaces of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetnsMode {
    /// When root with iproute2; else loopback.
    Auto,
    On,
    Off,
}

pub struct LocalOptions {
    pub netns: NetnsMode,
    pub duration: Option<Duration>,
    pub rtt: Duration,
    pub keep: bool,
    pub release: bool,
    pub dir: PathBuf,
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
    println!(
        "==> building gateway and outbound{}",
        if release { " (release)" } else { "" }
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // `-p xtask` as well: the same package set as the build that made this binary, so the
    // dependencies it compiled are reused (see xtask/Cargo.toml).
    cmd.current_dir(crate::workspace_root()).args([
        "build", "-p", "xtask", "-p", "proxy", "--bin", "gateway", "--bin", "outbound",
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
        .unwrap_or_else(|| crate::workspace_root().join("target"));
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
    // East's identity service signs with this; the gateway gets its certificate from it.
    std::fs::write(dir.join("issuer-east.crt"), &east.issuer.cert_pem)?;
    std::fs::write(dir.join("issuer-east.key"), &east.issuer.key_pem)?;
    std::fs::write(dir.join("gateway-token"), control_plane::TOKEN)?;
    east.leaf(WEB_ID)?.write(dir, "web")?;
    west.leaf(VOTE_BOT_ID)?.write(dir, "vote-bot")?;
    println!("    trust anchor root.linkerd.cluster.local, issuers identity-east / identity-west");
    println!("    east: {GATEWAY_ID} (from east's identity service), {WEB_ID}");
    println!("    west: {VOTE_BOT_ID}");
    Ok(())
}

/// `--trust-anchors`, `--cert`, `--key` for the `<stem>.crt/.key` pair in `dir`.
fn credentials(dir: &Path, stem: &str) -> [std::ffi::OsString; 6] {
    let p = |f: String| dir.join(f).into_os_string();
    [
        "--trust-anchors".into(),
        p("root.crt".into()),
        "--cert".into(),
        p(format!("{stem}.crt")),
        "--key".into(),
        p(format!("{stem}.key")),
    ]
}

/// Where each part runs: on this host's loopback, or in west/east namespaces.
struct Layout {
    netns: Option<netns::Netns>,
    web: SocketAddr,
    /// web-svc's meshed inbound (its proxy) and that proxy's admin port.
    web_inbound: SocketAddr,
    web_admin: SocketAddr,
    /// East's control plane: identity, destination, policy.
    control: [SocketAddr; 3],
    gw: SocketAddr,
    admin: SocketAddr,
    /// The gateway's probe port: `/ready` alone, what a LoadBalancer publishes.
    probe: SocketAddr,
    /// Where the WAN link listens (east side) and where west dials: east's "public" address.
    wan: SocketAddr,
    outbound: SocketAddr,
}

impl Layout {
    fn west(&self) -> Option<&str> {
        self.netns.as_ref().map(|n| n.west.as_str())
    }

    fn east(&self) -> Option<&str> {
        self.netns.as_ref().map(|n| n.east.as_str())
    }

    fn loopback() -> anyhow::Result<Self> {
        let gw = port(4143)?;
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
        Ok(Self {
            netns: None,
            web: port(8080)?,
            web_inbound: port(4144)?,
            web_admin: port(4192)?,
            control: [port(8081)?, port(8086)?, port(8090)?],
            gw,
            admin: port(4191)?,
            probe: port(4181)?,
            wan,
            outbound: port(4140)?,
        })
    }

    fn namespaces() -> anyhow::Result<Self> {
        let ns = netns::Netns::create()?;
        let a = |s: &str| -> anyhow::Result<SocketAddr> { Ok(s.parse()?) };
        Ok(Self {
            netns: Some(ns),
            web: a("127.0.0.1:8080")?,
            web_inbound: a("127.0.0.1:4144")?,
            web_admin: a("127.0.0.1:4192")?,
            control: [
                a("127.0.0.1:8081")?,
                a("127.0.0.1:8086")?,
                a("127.0.0.1:8090")?,
            ],
            gw: a("127.0.0.1:4143")?,
            admin: a("127.0.0.1:4191")?,
            probe: a("127.0.0.1:4181")?,
            wan: a(&format!("{}:4143", netns::EAST_IP))?,
            outbound: a("127.0.0.1:4140")?,
        })
    }

    /// A GET from inside `ns` (through this binary's `http-get` there), or from here.
    fn get(&self, ns: Option<&str>, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
        match ns {
            None => http_get(addr, path).ok(),
            Some(_) => {
                let me = std::env::current_exe().ok()?;
                let out = netns::command(ns, &me)
                    .args(["http-get", &addr.to_string(), path])
                    .output()
                    .ok()?;
                if !out.status.success() {
                    return None;
                }
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let (status, body) = text.split_once('\n')?;
                Some((status.trim().parse().ok()?, body.to_string()))
            }
        }
    }

    /// How a person reaches `addr` in `ns` from a shell.
    fn shell_prefix(&self, ns: Option<&str>) -> String {
        ns.map(|n| format!("ip netns exec {n} "))
            .unwrap_or_default()
    }
}

fn wait_until(
    procs: &mut Procs,
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((name, status)) = procs.exited() {
            bail!("{name} exited during start-up ({status})");
        }
        if ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not come up within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
fn label<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(&format!("{key}=\""))
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
}

/// `request_total` summed by `key`, over the series of one `direction`.
fn requests_by(metrics: &str, direction: &str, key: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("request_total{") && label(l, "direction") == direction)
    {
        let id = label(l, key);
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

    let layout = match opts.netns {
        NetnsMode::Off => Layout::loopback()?,
        NetnsMode::On => Layout::namespaces()?,
        NetnsMode::Auto if netns::Netns::available() => Layout::namespaces().or_else(|e| {
            println!("    (network namespaces unavailable: {e:#}; staying on loopback)");
            Layout::loopback()
        })?,
        NetnsMode::Auto => Layout::loopback()?,
    };
    match &layout.netns {
        Some(n) => step(&format!(
            "network: namespaces {} ({}) and {} ({}) joined by a veth pair",
            n.west,
            netns::WEST_IP,
            n.east,
            netns::EAST_IP
        )),
        None => step("network: loopback (run as root with iproute2 for separate namespaces)"),
    }
    let (west, east) = (layout.west(), layout.east());
    let me = std::env::current_exe()?;
    // Declared after the layout so processes stop before the namespaces go.
    let mut procs = Procs::new();
    let (web, gw, admin, wan, outbound) = (
        layout.web,
        layout.gw,
        layout.admin,
        layout.wan,
        layout.outbound,
    );

    let (web_inbound, web_admin) = (layout.web_inbound, layout.web_admin);
    let [identity_svc, destination_svc, policy_svc] = layout.control;
    step(&format!(
        "east (syd1): control plane (identity {identity_svc}, destination {destination_svc}, policy {policy_svc})"
    ));
    let mut c = netns::command(east, &me);
    c.args([
        "control-plane",
        "--identity",
        &identity_svc.to_string(),
        "--destination",
        &destination_svc.to_string(),
        "--policy",
        &policy_svc.to_string(),
        "--web-endpoint",
        &web_inbound.to_string(),
    ])
    .arg("--dir")
    .arg(&dir);
    procs.spawn("control-plane", c, &dir.join("control-plane.log"), false)?;
    // It says so on stderr once all three services listen.
    let cp_log = dir.join("control-plane.log");
    wait_until(
        &mut procs,
        "the control plane",
        Duration::from_secs(20),
        || std::fs::read_to_string(&cp_log).is_ok_and(|l| l.contains("control plane:")),
    )?;
    step(&format!(
        "east: web-svc on {web} behind its meshed inbound on {web_inbound} (mTLS required)"
    ));
    let mut c = netns::command(east, &me);
    c.args(["web-svc", "--listen", &web.to_string()]);
    procs.spawn("web-svc", c, &dir.join("web-svc.log"), false)?;
    // web-svc's proxy: the gateway binary serving as a workload's inbound, which requires a
    // mesh client certificate and passes requests to the app in plaintext.
    let mut c = netns::command(east, &bin.join("gateway"));
    c.args([
        "--listen",
        &web_inbound.to_string(),
        "--admin-listen",
        &web_admin.to_string(),
        "--probe-listen",
        "off",
    ])
    .args(credentials(&dir, "web"))
    .args(["--route", &format!("{WEB_SVC}={web}")])
    .env("RUST_LOG", "info");
    procs.spawn("web-inbound", c, &dir.join("web-inbound.log"), false)?;
    step(&format!(
        "east: the gateway on {gw} (admin {admin}), a member of east's mesh"
    ));
    let root_pem = std::fs::read_to_string(dir.join("root.crt"))?;
    let mut c = netns::command(east, &bin.join("gateway"));
    // Configured as Linkerd's injector configures its proxy.
    for (k, v) in [
        ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", gw.to_string()),
        ("LINKERD2_PROXY_ADMIN_LISTEN_ADDR", admin.to_string()),
        ("GATEWAY_PROBE_LISTEN", layout.probe.to_string()),
        (
            "LINKERD2_PROXY_INBOUND_GATEWAY_SUFFIXES",
            "svc.cluster.local.".to_string(),
        ),
        ("LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS", root_pem),
        ("LINKERD2_PROXY_IDENTITY_LOCAL_NAME", GATEWAY_ID.to_string()),
        (
            "LINKERD2_PROXY_IDENTITY_TOKEN_FILE",
            dir.join("gateway-token").display().to_string(),
        ),
        ("LINKERD2_PROXY_IDENTITY_SVC_ADDR", identity_svc.to_string()),
        (
            "LINKERD2_PROXY_DESTINATION_SVC_ADDR",
            destination_svc.to_string(),
        ),
        ("LINKERD2_PROXY_POLICY_SVC_ADDR", policy_svc.to_string()),
        (
            "LINKERD2_PROXY_POLICY_WORKLOAD",
            r#"{"ns":"linkerd-multicluster","pod":"linkerd-gateway-0"}"#.to_string(),
        ),
    ] {
        c.env(k, v);
    }
    c.args([
        "--allow-client",
        "*.emojivoto.serviceaccount.identity.linkerd.cluster.local",
    ])
    .args(["--export", "web-svc.emojivoto.svc.cluster.local"])
    .env("RUST_LOG", "info");
    procs.spawn("gateway", c, &dir.join("gateway.log"), false)?;
    wait_until(&mut procs, "web-svc", Duration::from_secs(20), || {
        layout
            .get(east, web, "/api/list")
            .is_some_and(|(s, _)| s == 200)
    })?;
    wait_until(
        &mut procs,
        "web-svc's inbound",
        Duration::from_secs(20),
        || {
            layout
                .get(east, web_admin, "/ready")
                .is_some_and(|(s, _)| s == 200)
        },
    )?;
    // Ready as the remote service mirror sees it: on the probe port.
    wait_until(&mut procs, "the gateway", Duration::from_secs(20), || {
        layout
            .get(east, layout.probe, "/ready")
            .is_some_and(|(s, _)| s == 200)
    })?;

    step(&format!(
        "WAN link sfo3 <-> syd1 on {wan}: {} round trip",
        humantime::format_duration(opts.rtt)
    ));
    let mut c = netns::command(east, &me);
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
    // The gateway answers plaintext with 400: enough to know the link is up, from west's side.
    wait_until(&mut procs, "the WAN link", Duration::from_secs(20), || {
        layout.get(west, wan, "/").is_some()
    })?;

    step(&format!(
        "west (sfo3): vote-bot -> web-svc-east via the outbound proxy on {outbound}"
    ));
    let mut c = netns::command(west, &bin.join("outbound"));
    c.args([
        "--listen",
        &outbound.to_string(),
        "--gateway",
        &wan.to_string(),
        "--gateway-identity",
        GATEWAY_ID,
    ])
    .args(credentials(&dir, "vote-bot"))
    .args(["--remote", &format!("{WEB_SVC_EAST}={WEB_SVC}")])
    .args(["--remote", &format!("web-svc-east:80={WEB_SVC}")])
    .env("RUST_LOG", "info");
    procs.spawn("outbound", c, &dir.join("outbound.log"), false)?;
    wait_until(
        &mut procs,
        "the outbound proxy",
        Duration::from_secs(20),
        || layout.get(west, outbound, "/").is_some(),
    )?;

    let stop_tap = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tap = follow_tap(dir.join("outbound.log"), stop_tap.clone());
    let run_for = opts
        .duration
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let mut c = netns::command(west, &me);
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
    let metrics = layout
        .get(east, admin, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let web_metrics = layout
        .get(east, web_admin, "/metrics")
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
    for (id, n) in requests_by(&metrics, "inbound", "client_id") {
        println!("      client_id={id} tls=true requests={n}");
    }
    println!("    gateway forwarded (viz's edge: direction=outbound, by the workload's identity):");
    for (id, n) in requests_by(&metrics, "outbound", "server_id") {
        println!("      server_id={id} requests={n}");
    }
    println!("    web-svc's proxy saw (the in-cluster hop, mTLS):");
    for (id, n) in requests_by(&web_metrics, "inbound", "client_id") {
        println!("      client_id={id} tls=true requests={n}");
    }
    println!(
        "    metrics:       {}curl http://{admin}/metrics",
        layout.shell_prefix(east)
    );
    println!(
        "    dashboard:     http://{admin}/dashboard{}",
        if layout.netns.is_some() {
            format!(
                " (east's namespace: {}chromium --no-sandbox http://{admin}/dashboard)",
                layout.shell_prefix(east)
            )
        } else {
            String::new()
        }
    );
    println!("    logs:          {}", dir.display());

    if opts.keep && failure.is_none() {
        let (w, e) = (layout.shell_prefix(west), layout.shell_prefix(east));
        println!();
        println!("==> still running (--keep); explore, then Ctrl-C to tear down:");
        println!("    {w}curl -H 'Host: web-svc-east' http://{outbound}/api/leaderboard");
        println!(
            "    {w}curl --cacert {d}/root.crt --cert {d}/vote-bot.crt --key {d}/vote-bot.key \\",
            d = dir.display()
        );
        println!("      --resolve {GATEWAY_ID}:{}:{} -H 'Host: {WEB_SVC}' https://{GATEWAY_ID}:{}/api/list", wan.port(), wan.ip(), wan.port());
        println!(
            "    {e}curl http://{}/ready   # the probe port: /ready and nothing else",
            layout.probe
        );
        println!("    {e}curl -s http://{admin}/metrics | grep ^request_total");
        println!(
            "    {e}curl -sN http://{admin}/dashboard/events   # what the dashboard page streams"
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
    drop(layout);
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
    println!("==> done: every request crossed the WAN and the cluster over mutual TLS");
    Ok(())
}
