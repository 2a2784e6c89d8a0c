//! `cargo xtask bench`: one run, on this machine, of the same scenarios against our gateway,
//! nginx and haproxy configured as equivalent mTLS gateways, and the backend directly. Each
//! proxy runs alone, pinned to core 1; loadgen and the backend share core 0. Every scenario is
//! repeated and the median reported. Because two cores force loadgen and the backend to share
//! one, the table also gives requests per proxy CPU-second (measured from /proc), which holds
//! whichever side saturates first. Scenario (h) runs a second instance of each proxy toward a
//! meshed backend (mTLS, HTTP/2); (a) also runs with oha, a client on OpenSSL ([`oha`]).

pub mod cost;
mod oha;
pub mod servers;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::demo::{GATEWAY_ID, VOTE_BOT_ID, WEB_ID};

pub struct BenchOptions {
    pub out: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub repeats: usize,
    pub idle_connections: usize,
}

const AUTHORITY: &str = "web-svc.emojivoto.svc.cluster.local:80";

/// What every bench request carries besides its method, path and authority, as a browser's or
/// an instrumented service's request does: a proxy whose cost grows with each header it parses
/// and re-encodes must pay for them here as it does in production.
const REQUEST_HEADERS: &[&str] = &[
    "-H",
    "user-agent:Mozilla/5.0 (X11; Linux x86_64) vote-bot/1.0",
    "-H",
    "accept:application/json, text/plain, */*",
    "-H",
    "accept-language:en-US,en;q=0.9",
    "-H",
    "traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
];
// The contract's per-request work: what `linkerd-contract.md` asks of a gateway on every
// request beyond routing, which nginx and haproxy are configured to do as the gateway does,
// so that all three send the service the same head: a request whose `Forwarded` names this
// gateway (`by=`) is a loop and refused with 508; `l5d-client-id` set to the caller's
// identity; `Forwarded: by=<gateway>;for=<caller>;host=<name>;proto=https` appended; and
// `l5d-dst-canonical` set to the service's name and port. (Runs before 2026-12-07 left them
// out for the peers, which then sent the service 268 bytes per request against the gateway's
// 625.)
const PROXY_CORE: &str = "1";
const CLIENT_CORE: &str = "0";

/// Ports handed out in this run. The kernel may give one free port to two `bind(0)`s in a
/// row once the first socket is closed (measured here: about 1 in 100 sets of 20): the
/// process meant for the second would then fail to bind while the first's listener answered
/// for it.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn free_port() -> anyhow::Result<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    bail!("the kernel kept offering ports already handed out")
}

/// Waits until `child` itself listens on `addr`: a connection that succeeds proves only
/// that something does (a port taken by another process in the meantime).
fn wait_port(addr: SocketAddr, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listened_by(child.id(), addr.port()) || std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(s)) = child.try_wait() {
            bail!("{what} exited at start-up ({s})");
        }
        if Instant::now() > deadline {
            bail!("{what} (pid {}) did not listen on {addr}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether process `pid` holds a listening TCP socket on `port`: the socket's inode from
/// `/proc/net/tcp{,6}` among the process's open files.
fn listened_by(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A"), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

fn pinned(core: &str, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", core]).arg(program);
    c
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log)?)
        .stderr(std::fs::File::create(log.with_extension("err"))?)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    Ok(Proc(child))
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            t.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

type StartFn = fn(&Env) -> anyhow::Result<(Proc, u32)>;

/// One system under test.
struct Target {
    name: &'static str,
    url: String,
    tls: bool,
    start: StartFn,
    port: u16,
    /// The gateway's admin port (the others have none).
    admin_port: u16,
    upstream: Upstream,
}

/// How a proxy reaches the backend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// Plaintext on a configured address: the backend as a service outside the mesh.
    Plain,
    /// The backend as a meshed workload: mTLS with its identity, a client certificate
    /// presented, HTTP/2 where the proxy can (nginx speaks only HTTP/1.1 to upstreams). The
    /// gateway finds it through `linkerd-destination`, as in a cluster. Scenario (h).
    Meshed,
}

/// Where the backend listens, both ways, and the discovery service that names the meshed one.
#[derive(Clone, Copy)]
struct Backends {
    plain: SocketAddr,
    meshed: SocketAddr,
    destination: SocketAddr,
}

#[derive(Clone)]
struct Env {
    dir: PathBuf,
    bin: PathBuf,
    backends: Backends,
    port: u16,
    admin_port: u16,
    upstream: Upstream,
}

impl Env {
    /// The same environment, for `t`: its port and its way upstream.
    fn at(&self, t: &Target) -> Env {
        Env {
            port: t.port,
            admin_port: t.admin_port,
            upstream: t.upstream,
            ..self.clone()
        }
    }

    /// What a system's files are called: one instance per way upstream.
    fn name(&self, system: &str) -> String {
        match self.upstream {
            Upstream::Plain => system.to_string(),
            Upstream::Meshed => format!("{system}-meshed"),
        }
    }

    fn log(&self, system: &str) -> String {
        format!("{}.log", self.name(system))
    }
}

/// The gateway's flags for a bench: the bench PKI in `dir`, a route to the plaintext backend
/// or discovery of the meshed one, warnings only (an access line per request would be
/// measured too).
fn gateway_args(
    c: &mut Command,
    dir: &Path,
    port: u16,
    admin: u16,
    backends: Backends,
    upstream: Upstream,
) {
    c.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin}"),
    ])
    .arg("--trust-anchors")
    .arg(dir.join("root.crt"))
    .arg("--cert")
    .arg(dir.join("gateway.crt"))
    .arg("--key")
    .arg(dir.join("gateway.key"))
    // Two gateways run at once (one per way upstream): the probe port is not needed.
    .args(["--log-level", "warn", "--probe-listen", "off"])
    // One core, as haproxy (`nbthread 1`) and nginx (`worker_processes 1`) get: pinned, the
    // gateway would count one CPU anyway, but `bench-cost` runs it unpinned under valgrind
    // and must count the same runtime.
    .args(["--cores", "1"]);
    match upstream {
        Upstream::Plain => c.args(["--route", &format!("{AUTHORITY}={}", backends.plain)]),
        Upstream::Meshed => c.args(["--destination-svc-addr", &backends.destination.to_string()]),
    };
}

/// loadgen's flags to call as vote-bot with the bench PKI in `dir`.
fn caller_args(c: &mut Command, dir: &Path) {
    c.arg("--cacert")
        .arg(dir.join("root.crt"))
        .arg("--cert")
        .arg(dir.join("vote-bot.crt"))
        .arg("--key")
        .arg(dir.join("vote-bot.key"))
        .args(["--server-identity", GATEWAY_ID]);
}

fn start_gateway(e: &Env) -> anyhow::Result<(Proc, u32)> {
    let mut c = pinned(PROXY_CORE, &e.bin.join("gateway"));
    gateway_args(&mut c, &e.dir, e.port, e.admin_port, e.backends, e.upstream);
    c.args(["--max-connections", "15000"]);
    let mut p = spawn(c, &e.dir.join(e.log("gateway")))?;
    wait_port(
        SocketAddr::from(([127, 0, 0, 1], e.port)),
        &mut p.0,
        "gateway",
    )?;
    let pid = p.0.id();
    Ok((p, pid))
}

fn start_nginx(e: &Env) -> anyhow::Result<(Proc, u32)> {
    let d = e.dir.display();
    let name = e.name("nginx");
    let (upstream, pass) = match e.upstream {
        Upstream::Plain => (e.backends.plain, "proxy_pass http://backend;".to_string()),
        Upstream::Meshed => (
            e.backends.meshed,
            format!(
                "proxy_pass https://backend;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_certificate {d}/gateway.crt;
      proxy_ssl_certificate_key {d}/gateway.key;
      proxy_ssl_trusted_certificate {d}/root.crt;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 3;
      proxy_ssl_name {WEB_ID};
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;"
            ),
        ),
    };
    // `if` takes a regular expression: the identity's dots escaped.
    let loop_by = GATEWAY_ID.replace('.', "\\.");
    let conf = format!(
        r#"user root;
worker_processes 1;
worker_rlimit_nofile 19000;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{ worker_connections 15000; }}
http {{
  access_log off;
  client_body_temp_path {d}/{name}-body;
  proxy_temp_path {d}/{name}-proxy;
  fastcgi_temp_path {d}/{name}-fastcgi;
  uwsgi_temp_path {d}/{name}-uwsgi;
  scgi_temp_path {d}/{name}-scgi;
  # Idle upstream connections kept: as many as the gateway keeps per endpoint (256), more
  # than the 100 requests in flight of the HTTP/2 scenarios, so none is opened per request.
  upstream backend {{ server {upstream}; keepalive 256; }}
  # The caller's identity: the bench PKI names it in the leaf's CN as well as its SAN.
  map $ssl_client_s_dn $l5d_client_id {{ ~CN=(?<cn>[^,]+) $cn; default ""; }}
  map $http_forwarded $forwarded_before {{ "" ""; default "$http_forwarded, "; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    server_name web-svc.emojivoto.svc.cluster.local;
    ssl_protocols TLSv1.3;
    ssl_certificate {d}/gateway.crt;
    ssl_certificate_key {d}/gateway.key;
    ssl_client_certificate {d}/root.crt;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_session_tickets off;
    keepalive_requests 100000000;
    http2_max_requests 100000000;
    location / {{
      {pass}
      # The contract's per-request work, as the gateway does it (see xtask's bench module).
      if ($http_forwarded ~ "by={loop_by}") {{ return 508; }}
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header l5d-client-id $l5d_client_id;
      proxy_set_header l5d-dst-canonical {AUTHORITY};
      proxy_set_header Forwarded "${{forwarded_before}}by={GATEWAY_ID};for=$l5d_client_id;host=$host;proto=https";
      proxy_buffering off;
    }}
  }}
}}
"#,
        port = e.port
    );
    let conf_file = e.dir.join(format!("{name}.conf"));
    std::fs::write(&conf_file, conf)?;
    let mut c = pinned(PROXY_CORE, Path::new("nginx"));
    c.arg("-c").arg(&conf_file).args(["-g", "daemon off;"]);
    let mut p = spawn(c, &e.dir.join(format!("{name}.log")))?;
    wait_port(
        SocketAddr::from(([127, 0, 0, 1], e.port)),
        &mut p.0,
        "nginx",
    )?;
    // The worker does the work; sample it, not the master.
    let worker = Command::new("pgrep")
        .args(["-P", &p.0.id().to_string()])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(p.0.id());
    Ok((p, worker))
}

fn start_haproxy(e: &Env) -> anyhow::Result<(Proc, u32)> {
    let d = e.dir.display();
    let pem = std::fs::read_to_string(e.dir.join("gateway.crt"))?
        + &std::fs::read_to_string(e.dir.join("gateway.key"))?;
    std::fs::write(e.dir.join("haproxy.pem"), pem)?;
    let name = e.name("haproxy");
    let server = match e.upstream {
        Upstream::Plain => format!("{}", e.backends.plain),
        // Certificate, chain and name checked as the gateway checks them; HTTP/2 without ALPN,
        // as a Linkerd proxy speaks to a meshed endpoint with the `h2` hint.
        Upstream::Meshed => format!(
            "{} ssl ssl-min-ver TLSv1.3 crt {d}/haproxy.pem ca-file {d}/root.crt verify required \
             verifyhost {WEB_ID} sni str({WEB_ID}) proto h2",
            e.backends.meshed
        ),
    };
    let conf = format!(
        r#"global
  nbthread 1
  # haproxy wants 2 fds per connection plus spares: 9900 is the most the 20000-fd hard
  # limit of this machine allows, so the idle-connection scenario tops out there for it.
  maxconn 9900
  log stderr format raw local0 warning
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-request 30s
  timeout http-keep-alive 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port} ssl crt {d}/haproxy.pem ca-file {d}/root.crt verify required alpn h2,http/1.1 ssl-min-ver TLSv1.3
  http-request return status 404 content-type text/plain string "bad gateway domain" unless {{ req.hdr(host),field(1,:) -i web-svc.emojivoto.svc.cluster.local }}
  # The contract's per-request work, as the gateway does it (see xtask's bench module); the
  # bench PKI names the caller in the leaf's CN as well as its SAN.
  http-request return status 508 content-type text/plain string "gateway loop" if {{ req.hdr(forwarded) -m sub by={GATEWAY_ID} }}
  http-request set-var(txn.client_id) ssl_c_s_dn(CN)
  http-request set-header l5d-client-id %[var(txn.client_id)]
  http-request set-header l5d-dst-canonical {AUTHORITY}
  http-request add-header forwarded by={GATEWAY_ID};for=%[var(txn.client_id)];host=%[req.hdr(host),field(1,:)];proto=https
  default_backend be
backend be
  http-reuse always
  server s1 {server} maxconn 1000
"#,
        port = e.port
    );
    let conf_file = e.dir.join(format!("{name}.cfg"));
    std::fs::write(&conf_file, conf)?;
    let mut c = pinned(PROXY_CORE, Path::new("haproxy"));
    c.arg("-db").arg("-f").arg(&conf_file);
    let mut p = spawn(c, &e.dir.join(format!("{name}.log")))?;
    wait_port(
        SocketAddr::from(([127, 0, 0, 1], e.port)),
        &mut p.0,
        "haproxy",
    )?;
    let pid = p.0.id();
    Ok((p, pid))
}

fn start_ceiling(e: &Env) -> anyhow::Result<(Proc, u32)> {
    let mut c = pinned(PROXY_CORE, &e.bin.join("xtask"));
    c.args([
        "bench-tls-ceiling",
        "--listen",
        &format!("127.0.0.1:{}", e.port),
        "--dir",
    ])
    .arg(&e.dir);
    let mut p = spawn(c, &e.dir.join(e.log("ceiling")))?;
    wait_port(
        SocketAddr::from(([127, 0, 0, 1], e.port)),
        &mut p.0,
        "the rustls accept loop",
    )?;
    let pid = p.0.id();
    Ok((p, pid))
}

/// One loadgen run; returns its JSON report.
fn loadgen(
    e: &Env,
    opts: &BenchOptions,
    t: &Target,
    path: &str,
    args: &[&str],
    pid: Option<u32>,
) -> anyhow::Result<Value> {
    let json = e.dir.join("run.json");
    let _ = std::fs::remove_file(&json);
    let mut c = pinned(CLIENT_CORE, &e.bin.join("loadgen"));
    c.arg(format!("{}{path}", t.url))
        .args(["--authority", AUTHORITY, "--quiet", "--threads", "1"])
        .args([
            "--warmup",
            &humantime::format_duration(opts.warmup).to_string(),
        ])
        .args([
            "--duration",
            &humantime::format_duration(opts.duration).to_string(),
        ])
        .arg("--json")
        .arg(&json)
        .args(REQUEST_HEADERS)
        .args(args);
    if t.tls {
        caller_args(&mut c, &e.dir);
    }
    if let Some(pid) = pid {
        c.args(["--pid", &pid.to_string()]);
    }
    let out = c.output().context("running loadgen")?;
    let report: Value = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "loadgen gave no report: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok(report)
}

/// A gateway run that failed more requests than it served: what the gateway says about
/// them (its error counters and the end of its log), printed while it still runs, so the
/// cause is on record with the run instead of lost with the process.
fn explain_errors(e: &Env, report: &Value) {
    let served = f(report, &["requests_per_second"]) * f(report, &["measured_seconds"]);
    let errors: f64 = ["connect", "tls", "status", "timeout", "other"]
        .iter()
        .map(|k| f(report, &["errors", k]))
        .sum();
    if errors <= served {
        return;
    }
    println!("    !! {errors:.0} errors against {served:.0} served; the gateway's account:");
    let admin = SocketAddr::from(([127, 0, 0, 1], e.admin_port));
    match crate::demo::http_get(admin, "/metrics") {
        Ok((_, text)) => text
            .lines()
            .filter(|l| {
                [
                    "inbound_http_errors_total",
                    "outbound_http_errors_total",
                    "destination_",
                ]
                .iter()
                .any(|p| l.starts_with(p))
            })
            .for_each(|l| println!("       {l}")),
        Err(err) => println!("       /metrics: {err}"),
    }
    // Its log, and those of the processes it depends on.
    let logs = [
        e.dir.join(e.log("gateway")).with_extension("err"),
        e.dir.join("backend.err"),
        e.dir.join("destination.err"),
    ];
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        println!("       -- {} (last 10 lines)", log.display());
        for l in &lines[lines.len().saturating_sub(10)..] {
            println!("       {l}");
        }
    }
}

/// Microseconds of the proxy's CPU per request in one run: its kernel time (`system`) or the
/// rest (user space).
fn per_request_us(run: &Value, system: bool) -> f64 {
    let requests = f(run, &["requests_per_second"]) * f(run, &["measured_seconds"]);
    let all = f(run, &["target_process", "cpu_seconds"]);
    let sys = f(run, &["target_process", "system_cpu_seconds"]);
    let part = if system { sys } else { all - sys };
    if requests > 0.0 {
        part / requests * 1e6
    } else {
        0.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(0.0)
}

const H2_10X10: &[&str] = &["--h2", "-c", "10", "--streams", "10"];
const TRANSPORT_HEADER_10X10: &[&str] = &["--transport-header", "-c", "10", "--streams", "10"];

/// Scenarios: (id, what, path, loadgen args, applies to the plaintext direct baseline).
const SCENARIOS: &[(&str, &str, &str, &[&str], bool)] = &[
    (
        "a",
        "HTTP/1.1 keep-alive, 64 connections, max throughput",
        "/",
        &["-c", "64"],
        true,
    ),
    (
        "b",
        "HTTP/2, 10 connections x 10 streams",
        "/",
        H2_10X10,
        true,
    ),
    (
        "c",
        "new mTLS connection per request (8 at a time)",
        "/",
        &["--new-connection", "-c", "8"],
        false,
    ),
    (
        "d",
        "constant 2000 req/s (open loop, 32 connections)",
        "/",
        &["--rate", "2000", "-c", "32"],
        true,
    ),
    (
        "e",
        "1 MiB responses, HTTP/1.1, 8 connections",
        "/big",
        &["-c", "8"],
        true,
    ),
];

/// Builds the gateway, loadgen and xtask in release mode; returns their directory.
fn build_release() -> anyhow::Result<PathBuf> {
    println!("==> building release binaries");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(&cargo)
        .current_dir(crate::workspace_root())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "proxy",
            "--bin",
            "gateway",
            "-p",
            "bench",
            "--bin",
            "loadgen",
            "-p",
            "xtask",
            "--bin",
            "xtask",
        ])
        .status()?;
    if !st.success() {
        bail!("cargo build --release failed");
    }
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
        .join("release"))
}

/// A fresh PKI in `dir` (anchor; the gateway's, vote-bot's and web's leaves), the backend
/// (plaintext, and meshed for (h)) and the destination service that names the meshed one, all
/// pinned to the client core: what every bench starts from.
fn prepare(bin: &Path, dir: &Path) -> anyhow::Result<(Backends, Vec<Proc>)> {
    std::fs::create_dir_all(dir)?;
    let pki = identity::Pki::new()?;
    std::fs::write(dir.join("root.crt"), &pki.anchor.cert_pem)?;
    pki.leaf(GATEWAY_ID)?.write(dir, "gateway")?;
    pki.leaf(VOTE_BOT_ID)?.write(dir, "vote-bot")?;
    pki.leaf(WEB_ID)?.write(dir, "web")?;
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let backends = Backends {
        plain: loopback(free_port()?),
        meshed: loopback(free_port()?),
        destination: loopback(free_port()?),
    };
    let mut c = pinned(CLIENT_CORE, &bin.join("xtask"));
    c.args([
        "bench-backend",
        "--listen",
        &backends.plain.to_string(),
        "--mesh-listen",
        &backends.meshed.to_string(),
        "--dir",
    ])
    .arg(dir);
    let mut backend = spawn(c, &dir.join("backend.log"))?;
    wait_port(backends.plain, &mut backend.0, "the backend")?;
    wait_port(backends.meshed, &mut backend.0, "the meshed backend")?;
    let mut c = pinned(CLIENT_CORE, &bin.join("xtask"));
    c.args([
        "bench-destination",
        "--listen",
        &backends.destination.to_string(),
        "--endpoint",
        &backends.meshed.to_string(),
    ]);
    let mut destination = spawn(c, &dir.join("destination.log"))?;
    wait_port(
        backends.destination,
        &mut destination.0,
        "the destination service",
    )?;
    Ok((backends, vec![backend, destination]))
}

/// The commit being measured.
fn git_head() -> String {
    Command::new("git")
        .args([
            "-C",
            &crate::workspace_root().display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `cargo xtask bench-cost`: see [`cost`].
pub fn run_cost(opts: cost::CostOptions) -> anyhow::Result<()> {
    let bin = build_release()?;
    let md = cost::run(
        opts,
        &bin,
        &crate::workspace_root().join("target/bench-cost"),
    )?;
    println!("\n{md}");
    Ok(())
}

pub fn run(opts: BenchOptions) -> anyhow::Result<()> {
    if std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        < 2
    {
        bail!("the comparison pins proxy and load generator to disjoint cores: it needs 2");
    }
    for tool in ["taskset", "nginx", "haproxy"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            println!("==> installing nginx and haproxy (Debian packages)");
            let ok = Command::new("sh")
                .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy util-linux >/dev/null"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                bail!("{tool} is missing and could not be installed (apt-get needs root)");
            }
            break;
        }
    }
    let bin = build_release()?;
    let dir = crate::workspace_root().join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    let (backends, backend_procs) = prepare(&bin, &dir)?;

    let env = Env {
        dir: dir.clone(),
        bin: bin.clone(),
        backends,
        port: 0,
        admin_port: free_port()?,
        upstream: Upstream::Plain,
    };
    let target = |name, start, upstream| -> anyhow::Result<Target> {
        let port = free_port()?;
        Ok(Target {
            name,
            url: format!("https://127.0.0.1:{port}"),
            tls: true,
            start,
            port,
            admin_port: free_port()?,
            upstream,
        })
    };
    // Every system under load, each its own process on its own port: the three proxies to the
    // plaintext backend, the bare accept loop, and the three proxies again to the meshed one.
    let mut systems = Vec::new();
    for upstream in [Upstream::Plain, Upstream::Meshed] {
        systems.push(target("gateway", start_gateway as StartFn, upstream)?);
        systems.push(target("nginx", start_nginx, upstream)?);
        systems.push(target("haproxy", start_haproxy, upstream)?);
        if upstream == Upstream::Plain {
            systems.push(target("rustls-accept-loop", start_ceiling, upstream)?);
        }
    }
    let (proxies, ceiling, meshed) = (&systems[..3], &systems[3], &systems[4..]);
    let direct = Target {
        name: "direct",
        url: format!("http://{}", backends.plain),
        tls: false,
        start: |_| bail!("no process"),
        port: backends.plain.port(),
        admin_port: 0,
        upstream: Upstream::Plain,
    };

    let mut results: Vec<Value> = Vec::new();
    let mut record = |scenario: &str, target: &str, runs: Vec<Value>| {
        let m = |p: &[&str]| median(runs.iter().map(|r| f(r, p)).collect());
        let cpu = m(&["target_process", "cpu_seconds"]);
        // The median run's spectrum is enough to plot; per-run spectra would only bloat the file.
        let spectrum = runs
            .get(runs.len() / 2)
            .map(|r| r["latency_spectrum_ms"].clone())
            .unwrap_or(Value::Null);

        let secs = m(&["measured_seconds"]);
        let rps = m(&["requests_per_second"]);
        let mut summary = json!({
            "scenario": scenario, "target": target,
            "requests_per_second": rps,
            "bytes_per_second": m(&["bytes_per_second"]),
            "errors": m(&["errors", "connect"]) + m(&["errors", "tls"]) + m(&["errors", "status"]) + m(&["errors", "timeout"]) + m(&["errors", "other"]),
            "p50_us": m(&["latency_us", "p50"]), "p99_us": m(&["latency_us", "p99"]), "p999_us": m(&["latency_us", "p999"]),
            "proxy_cpu_cores": if secs > 0.0 { cpu / secs } else { 0.0 },
            "requests_per_proxy_cpu_second": if cpu > 0.0 { rps * secs / cpu } else { 0.0 },
            "bytes_per_proxy_cpu_second": if cpu > 0.0 { m(&["bytes_per_second"]) * secs / cpu } else { 0.0 },
            "cpu_seconds_per_1000_requests": m(&["target_process", "cpu_seconds_per_1000_requests"]),
            // Per request, medians of the runs' own ratios: user space, and the kernel.
            "user_us_per_request": median(runs.iter().map(|r| per_request_us(r, false)).collect()),
            "system_us_per_request": median(runs.iter().map(|r| per_request_us(r, true)).collect()),
            "spectrum": spectrum,
            "runs": runs,
        });
        for r in summary["runs"].as_array_mut().into_iter().flatten() {
            if let Some(o) = r.as_object_mut() {
                o.remove("latency_spectrum_ms");
            }
        }
        println!(
            "    {scenario} {target:>18}: {:>9.0} req/s  {:>7.1} MB/s  p50 {:>7.3} ms  p99 {:>7.3} ms  proxy {:.2} cores",
            rps,
            summary["bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
            summary["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
            summary["p99_us"].as_f64().unwrap_or(0.0) / 1000.0,
            summary["proxy_cpu_cores"].as_f64().unwrap_or(0.0)
        );
        results.push(summary);
    };

    // Throughput and latency. Every system runs at once (each on its own port, all pinned to
    // the proxy core, idle but for the one under load), and the runs go round-robin: repeat
    // 1 of a scenario on each system, then repeat 2 on each, and so on. A noisy minute on
    // this VM then spreads over all systems instead of skewing one system's median.
    println!(
        "==> starting gateway, nginx, haproxy and the bare rustls accept loop; and the three \
         proxies again, toward the meshed backend"
    );
    let mut running = Vec::new();
    for t in &systems {
        running.push((t.start)(&env.at(t))?);
    }
    let pid = |t: &Target| -> Option<u32> {
        systems
            .iter()
            .position(|s| std::ptr::eq(s, t))
            .map(|i| running[i].1)
    };
    std::thread::sleep(Duration::from_millis(500));
    // (scenario, target, loadgen arguments, path)
    let mut plan: Vec<(&str, &Target, &[&str], &str)> = Vec::new();
    for (id, _, path, args, on_direct) in SCENARIOS {
        for t in proxies {
            plan.push((id, t, args, path));
        }
        if *on_direct {
            plan.push((id, &direct, args, path));
        }
        if *id == "c" {
            plan.push((id, ceiling, args, path));
        }
    }
    plan.push(("g", &proxies[0], TRANSPORT_HEADER_10X10, "/"));
    // (h), the production path: the gateway called as Linkerd source proxies call it, the
    // peers (which cannot read the transport header) with HTTP/2, and the gateway with HTTP/2
    // too ("h-h2"), like for like with them.
    plan.push(("h", &meshed[0], TRANSPORT_HEADER_10X10, "/"));
    plan.push(("h-h2", &meshed[0], H2_10X10, "/"));
    for t in &meshed[1..] {
        plan.push(("h", t, H2_10X10, "/"));
    }
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); plan.len()];
    for rep in 1..=opts.repeats {
        println!("==> round {rep} of {}", opts.repeats);
        for (i, (id, t, args, path)) in plan.iter().enumerate() {
            let report = loadgen(&env, &opts, t, path, args, pid(t))?;
            println!(
                "    {id} {:>18}: {:>9.0} req/s",
                t.name,
                f(&report, &["requests_per_second"])
            );
            if t.name == "gateway" {
                explain_errors(&env.at(t), &report);
            }
            runs[i].push(report);
        }
    }
    // (a) again with the second client, round-robin as above.
    let mut oha_runs: Vec<Vec<Value>> = vec![Vec::new(); proxies.len()];
    if let Some(oha) = oha::ensure() {
        for rep in 1..=opts.repeats {
            println!("==> (a) with oha, round {rep} of {}", opts.repeats);
            for (i, t) in proxies.iter().enumerate() {
                let Some(pid) = pid(t) else { continue };
                let report = oha::run(&oha, &dir, t.port, pid, opts.warmup + opts.duration)?;
                println!(
                    "    a-oha {:>14}: {:>9.0} req/s",
                    t.name,
                    f(&report, &["requests_per_second"])
                );
                oha_runs[i].push(report);
            }
        }
    }
    drop(running);
    for ((id, t, _, _), r) in plan.iter().zip(runs) {
        record(id, t.name, r);
    }
    for (t, r) in proxies.iter().zip(oha_runs) {
        if !r.is_empty() {
            record("a-oha", t.name, r);
        }
    }

    // (f) memory: each proxy alone and freshly started, idle, then holding many idle mTLS
    // connections.
    let mut memory: Vec<Value> = Vec::new();
    for t in proxies {
        let port = t.port;
        let (proc_, pid) = (t.start)(&env.at(t))?;
        std::thread::sleep(Duration::from_millis(500));
        let fresh_rss = rss_bytes(pid);
        let mut c = pinned(CLIENT_CORE, &bin.join("xtask"));
        c.args([
            "bench-hold",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--count",
            &opts.idle_connections.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut holder = c.spawn()?;
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let held: u64 = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(1000));
        let loaded_rss = rss_bytes(pid);
        if let Some(mut stdin) = holder.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        let _ = holder.kill();
        let _ = holder.wait();
        drop(proc_);
        let per_conn = if held > 0 {
            loaded_rss.saturating_sub(fresh_rss) as f64 / held as f64
        } else {
            0.0
        };
        println!(
            "    f {:>18}: idle RSS {:.1} MiB; {held} idle mTLS connections: {:.1} MiB, {:.1} KiB each",
            t.name,
            fresh_rss as f64 / 1048576.0,
            loaded_rss as f64 / 1048576.0,
            per_conn / 1024.0
        );
        memory.push(json!({"target": t.name, "idle_rss_bytes": fresh_rss, "connections": held, "rss_with_connections_bytes": loaded_rss, "bytes_per_connection": per_conn}));
    }
    drop(backend_procs);

    let versions = json!({
        "gateway": git_head(),
        "nginx": version("nginx", "-v"),
        "haproxy": version("haproxy", "-v"),
        "kernel": version("uname", "-r"),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    std::fs::create_dir_all(&opts.out)?;
    let doc = json!({"versions": versions, "duration_s": opts.duration.as_secs_f64(), "warmup_s": opts.warmup.as_secs_f64(), "repeats": opts.repeats, "results": results, "memory": memory});
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    let md = table(&doc);
    std::fs::write(opts.out.join("results.md"), &md)?;
    let series: Vec<(String, Vec<(f64, f64)>)> = doc["results"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["scenario"] == "d")
                .map(|r| {
                    let pts = r["spectrum"]
                        .as_array()
                        .map(|p| {
                            p.iter()
                                .filter_map(|x| Some((x[0].as_f64()?, x[1].as_f64()?)))
                                .collect()
                        })
                        .unwrap_or_default();
                    (r["target"].as_str().unwrap_or("").to_string(), pts)
                })
                .collect()
        })
        .unwrap_or_default();
    let named: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, p)| (n.as_str(), p.clone()))
        .collect();
    std::fs::write(
        opts.out.join("latency-2000rps.svg"),
        bench::plot::svg_points("Latency at 2000 req/s (open loop, corrected)", &named),
    )?;
    println!("\n{md}");
    println!(
        "==> wrote {}/results.{{md,json}} and latency-2000rps.svg",
        opts.out.display()
    );
    Ok(())
}

fn get<'a>(doc: &'a Value, scenario: &str, target: &str) -> Option<&'a Value> {
    doc["results"]
        .as_array()?
        .iter()
        .find(|r| r["scenario"] == scenario && r["target"] == target)
}

fn table(doc: &Value) -> String {
    let v = |s: &str, t: &str, k: &str| get(doc, s, t).and_then(|r| r[k].as_f64()).unwrap_or(0.0);
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".into()
        }
    };
    // Where a proxy's CPU per request goes: its own code (user) and the kernel's TCP work on
    // its behalf (system); the ratios are the gateway's to the peer's, user / system.
    let split_row = |label: &str, id: &str| {
        let us = |t: &str| {
            (
                v(id, t, "user_us_per_request"),
                v(id, t, "system_us_per_request"),
            )
        };
        let (g, n, h) = (us("gateway"), us("nginx"), us("haproxy"));
        let cell = |(u, s): (f64, f64)| format!("{u:.2} + {s:.2}");
        let ratios = |(pu, ps): (f64, f64)| format!("{} / {}", ratio(g.0, pu), ratio(g.1, ps));
        format!(
            "| {label} | µs proxy CPU per request, user + system | {} | {} | {} | - | {} | {} |\n",
            cell(g),
            cell(n),
            cell(h),
            ratios(n),
            ratios(h)
        )
    };
    let mut md = String::new();
    let ver = &doc["versions"];
    md += &format!(
        "Machine: {} cores, Linux {}. Gateway {}; {}; {}. Proxy pinned to core 1; loadgen and backend on core 0. {} s measured after {} s warm-up, median of {}.\n\n",
        ver["cores"], ver["kernel"].as_str().unwrap_or(""), ver["gateway"].as_str().unwrap_or(""), ver["nginx"].as_str().unwrap_or(""), ver["haproxy"].as_str().unwrap_or(""),
        doc["duration_s"], doc["warmup_s"], doc["repeats"]
    );
    md += "| Scenario | Metric | gateway | nginx | haproxy | direct | gateway/nginx | gateway/haproxy |\n|---|---|---|---|---|---|---|---|\n";
    for (id, what, _, _, _) in SCENARIOS {
        let row = |metric: &str, key: &str, scale: f64, fmt: &dyn Fn(f64) -> String| {
            let (g, n, h, d) = (
                v(id, "gateway", key) * scale,
                v(id, "nginx", key) * scale,
                v(id, "haproxy", key) * scale,
                v(id, "direct", key) * scale,
            );
            format!(
                "| ({id}) {what} | {metric} | {} | {} | {} | {} | {} | {} |\n",
                fmt(g),
                fmt(n),
                fmt(h),
                if d > 0.0 { fmt(d) } else { "-".into() },
                ratio(g, n),
                ratio(g, h)
            )
        };
        let int = |x: f64| format!("{x:.0}");
        let ms = |x: f64| format!("{x:.3}");
        match *id {
            "d" => {
                for (metric, key) in [
                    ("p50 ms", "p50_us"),
                    ("p99 ms", "p99_us"),
                    ("p99.9 ms", "p999_us"),
                ] {
                    md += &row(metric, key, 0.001, &ms);
                }
                md += &row(
                    "CPU-s per 1000 req",
                    "cpu_seconds_per_1000_requests",
                    1.0,
                    &|x| format!("{x:.4}"),
                );
            }
            "e" => {
                md += &row("GB/s", "bytes_per_second", 1e-9, &|x| format!("{x:.2}"));
                md += &row(
                    "GB/s per proxy CPU-s",
                    "bytes_per_proxy_cpu_second",
                    1e-9,
                    &|x| format!("{x:.2}"),
                );
            }
            _ => {
                md += &row("req/s", "requests_per_second", 1.0, &int);
                md += &row(
                    "req/s per proxy CPU-s",
                    "requests_per_proxy_cpu_second",
                    1.0,
                    &int,
                );
                md += &split_row(&format!("({id}) {what}"), id);
            }
        }
    }
    let added = |t: &str, k: &str| (v("d", t, k) - v("d", "direct", k)) / 1000.0;
    md += &format!(
        "| (d) added over direct | p50 / p99 / p99.9 ms | {:+.3} / {:+.3} / {:+.3} | {:+.3} / {:+.3} / {:+.3} | {:+.3} / {:+.3} / {:+.3} | | | |\n",
        added("gateway", "p50_us"), added("gateway", "p99_us"), added("gateway", "p999_us"),
        added("nginx", "p50_us"), added("nginx", "p99_us"), added("nginx", "p999_us"),
        added("haproxy", "p50_us"), added("haproxy", "p99_us"), added("haproxy", "p999_us"),
    );
    let ceil = v("c", "rustls-accept-loop", "requests_per_second");
    let ceil_cpu = v("c", "rustls-accept-loop", "requests_per_proxy_cpu_second");
    md += &format!(
        "| (c) bare rustls mTLS accept loop | handshakes/s (per CPU-s) | {ceil:.0} ({ceil_cpu:.0}): the ceiling; the gateway reaches {} ({} per CPU-s) | | | | | |\n",
        ratio(v("c", "gateway", "requests_per_second"), ceil),
        ratio(v("c", "gateway", "requests_per_proxy_cpu_second"), ceil_cpu)
    );
    md += &format!(
        "| (g) transport-header mode, 10 x 10 streams | req/s | {:.0} (per proxy CPU-s: {:.0}) | | | | | |\n",
        v("g", "gateway", "requests_per_second"),
        v("g", "gateway", "requests_per_proxy_cpu_second")
    );
    // A row of the three proxies, without a direct baseline, for the scenarios after (e).
    let proxies_row = |id: &str, what: &str, metric: &str, key: &str| {
        let (g, n, h) = (
            v(id, "gateway", key),
            v(id, "nginx", key),
            v(id, "haproxy", key),
        );
        format!(
            "| {what} | {metric} | {g:.0} | {n:.0} | {h:.0} | - | {} | {} |\n",
            ratio(g, n),
            ratio(g, h)
        )
    };
    for (id, what) in [
        ("a-oha", "(a) with oha (OpenSSL client), 64 connections"),
        ("h", "(h) meshed upstream (mTLS, HTTP/2; nginx: HTTP/1.1), 10 x 10 streams in (gateway: transport header)"),
    ] {
        // oha is optional: without it, no row rather than a row of zeros.
        if get(doc, id, "gateway").is_none() && id == "a-oha" {
            continue;
        }
        md += &proxies_row(id, what, "req/s", "requests_per_second");
        md += &proxies_row(id, what, "req/s per proxy CPU-s", "requests_per_proxy_cpu_second");
        md += &split_row(what, id);
    }
    md += &format!(
        "| (h) the gateway with HTTP/2 in, like the peers | req/s | {:.0} (per proxy CPU-s: {:.0}: {} haproxy's) | | | | | |\n",
        v("h-h2", "gateway", "requests_per_second"),
        v("h-h2", "gateway", "requests_per_proxy_cpu_second"),
        ratio(
            v("h-h2", "gateway", "requests_per_proxy_cpu_second"),
            v("h", "haproxy", "requests_per_proxy_cpu_second")
        )
    );
    md += "\n| (f) Memory | idle RSS MiB | RSS with idle mTLS connections MiB | KiB per connection |\n|---|---|---|---|\n";
    for m in doc["memory"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {:.1} | {:.1} ({} connections) | {:.1} |\n",
            m["target"].as_str().unwrap_or(""),
            m["idle_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            m["rss_with_connections_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            m["connections"],
            m["bytes_per_connection"].as_f64().unwrap_or(0.0) / 1024.0
        );
    }
    md
}
