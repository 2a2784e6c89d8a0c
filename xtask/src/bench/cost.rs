//! `cargo xtask bench-cost`: what one request costs the gateway, counted rather than timed.
//!
//! Wall-clock throughput on a shared VM moves by ±30 % from minute to minute; instruction and
//! system-call counts do not. For each scenario the gateway runs twice under callgrind and
//! twice under `strace -c`, serving `small` and then `large` requests; the difference divided
//! by `large - small` is the marginal cost of one request, with start-up, handshakes of the
//! long-lived connections and shutdown cancelled out. Callgrind counts user-space
//! instructions only; the system calls stand in for the kernel's share.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{
    caller_args, free_port, gateway_args, prepare, spawn, Backends, Upstream, AUTHORITY,
    REQUEST_HEADERS,
};

pub struct CostOptions {
    pub out: PathBuf,
    pub small: u64,
    pub large: u64,
    /// Only the scenarios whose name contains this (all when `None`).
    pub only: Option<String>,
    /// Keep the larger run's callgrind profile of each scenario here, for
    /// `callgrind_annotate --inclusive=yes`: where the instructions go, not only how many.
    pub profiles: Option<PathBuf>,
}

/// (name, server, loadgen arguments, divisor for the request counts: handshakes cost about
/// 80 times more than requests).
const SCENARIOS: &[(&str, Server, &[&str], u64)] = &[
    (
        "HTTP/1.1 keep-alive, 16 connections",
        Server::Gateway(Upstream::Plain),
        &["-c", "16"],
        1,
    ),
    (
        "HTTP/2, 4 connections x 10 streams",
        Server::Gateway(Upstream::Plain),
        &["--h2", "-c", "4", "--streams", "10"],
        1,
    ),
    (
        "transport header + HTTP/2, 4 x 10 streams",
        Server::Gateway(Upstream::Plain),
        &["--transport-header", "-c", "4", "--streams", "10"],
        1,
    ),
    (
        "transport header + HTTP/2 to a meshed workload (mTLS, HTTP/2), 4 x 10 streams",
        Server::Gateway(Upstream::Meshed),
        &["--transport-header", "-c", "4", "--streams", "10"],
        1,
    ),
    (
        "new mTLS connection per request",
        Server::Gateway(Upstream::Plain),
        &["--new-connection", "-c", "4"],
        50,
    ),
    (
        "new mTLS connection per request: bare rustls accept loop, no proxying",
        Server::AcceptLoop,
        &["--new-connection", "-c", "4"],
        50,
    ),
];

struct Env {
    dir: PathBuf,
    bin: PathBuf,
    backends: Backends,
}

/// What serves the requests.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    /// The gateway, toward the backend as given.
    Gateway(Upstream),
    /// The bare rustls accept loop of `cargo xtask bench`: the floor for handshakes.
    AcceptLoop,
}

/// Runs the gateway under `wrapper` (a command prefix), sends `n` requests, stops it with
/// SIGINT so the wrapper writes its report, and returns once it has exited.
fn serve(
    env: &Env,
    wrapper: &[String],
    server: Server,
    args: &[&str],
    n: u64,
) -> anyhow::Result<()> {
    let port = free_port()?;
    let admin = free_port()?;
    let mut c = Command::new(&wrapper[0]);
    c.args(&wrapper[1..]);
    match server {
        Server::Gateway(upstream) => {
            c.arg(env.bin.join("gateway"));
            gateway_args(&mut c, &env.dir, port, admin, env.backends, upstream);
        }
        Server::AcceptLoop => {
            c.arg(env.bin.join("xtask"))
                .args([
                    "bench-tls-ceiling",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                ])
                .arg("--dir")
                .arg(&env.dir);
        }
    }
    let mut gw = spawn(c, &env.dir.join("server.log"))?;
    // Under valgrind start-up takes seconds.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(s)) = gw.0.try_wait() {
            bail!("the gateway exited at start-up ({s})");
        }
        if Instant::now() > deadline {
            bail!("the gateway did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut load = Command::new(env.bin.join("loadgen"));
    load.arg(format!("https://127.0.0.1:{port}/"))
        .args(["--authority", AUTHORITY, "--quiet", "--threads", "1"])
        .args(["--warmup", "0s", "-n", &n.to_string(), "--timeout", "60s"])
        .args(REQUEST_HEADERS);
    caller_args(&mut load, &env.dir);
    let out = load.args(args).output().context("running loadgen")?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !text.contains(&format!("{n} ok")) {
        bail!("loadgen did not complete {n} requests:\n{text}");
    }
    // valgrind runs the gateway in its own process; strace runs it as a child, and must
    // itself be left to write its summary when the child exits.
    let pid = gw.0.id().to_string();
    let _ = if wrapper[0] == "strace" {
        Command::new("pkill").args(["-INT", "-P", &pid]).status()
    } else {
        Command::new("kill").args(["-INT", &pid]).status()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while gw.0.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("the gateway did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn instructions(env: &Env, server: Server, args: &[&str], n: u64) -> anyhow::Result<f64> {
    let file = env.dir.join("callgrind.out");
    let _ = std::fs::remove_file(&file);
    let wrapper = vec![
        "valgrind".to_string(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", file.display()),
        // The metrics recorder's clock calibrates itself at start-up until its readings
        // settle: 10.6M to 17.7M instructions from one run to the next, which was most of
        // the ±1k spread of a marginal cost taken from two runs. Not counted: it is start-up.
        "--toggle-collect=quanta::Clock::new".into(),
        // Naming a function to toggle turns collection off at start unless told after it.
        "--collect-atstart=yes".into(),
    ];
    serve(env, &wrapper, server, args, n)?;
    let text = std::fs::read_to_string(&file).context("reading the callgrind output")?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no totals in {}", file.display()))
}

fn syscalls(
    env: &Env,
    server: Server,
    args: &[&str],
    n: u64,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let file = env.dir.join("strace.out");
    let _ = std::fs::remove_file(&file);
    let wrapper = vec![
        "strace".to_string(),
        "-f".into(),
        "-c".into(),
        "-o".into(),
        file.display().to_string(),
    ];
    serve(env, &wrapper, server, args, n)?;
    Ok(parse_strace(&std::fs::read_to_string(&file)?))
}

/// `strace -c` rows: `% time  seconds  usecs/call  calls  [errors]  syscall`.
fn parse_strace(text: &str) -> BTreeMap<String, f64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || cols[0].parse::<f64>().is_err() {
            continue;
        }
        if let (Ok(n), Some(&name)) = (cols[3].parse::<f64>(), cols.last()) {
            if name != "total" {
                calls.insert(name.to_string(), n);
            }
        }
    }
    calls
}

pub fn run(opts: CostOptions, bin: &Path, dir: &Path) -> anyhow::Result<String> {
    for tool in ["valgrind", "strace"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("{tool} is needed (apt-get install {tool})");
        }
    }
    if opts.large <= opts.small {
        bail!("--large must be more than --small");
    }
    let (backends, backend_procs) = prepare(bin, dir)?;
    let env = Env {
        dir: dir.to_path_buf(),
        bin: bin.to_path_buf(),
        backends,
    };

    let mut md = format!(
        "Marginal cost of one request through the gateway (commit {}): user-space instructions \
         (callgrind) and system calls (strace -c), from runs of {} and {} requests.\n\n\
         | Scenario | instructions / request | system calls / request | of which |\n|---|---|---|---|\n",
        super::git_head(),
        opts.small,
        opts.large
    );
    if let Some(dir) = &opts.profiles {
        std::fs::create_dir_all(dir)?;
    }
    let chosen = SCENARIOS
        .iter()
        .enumerate()
        .filter(|(_, (name, ..))| opts.only.as_deref().is_none_or(|o| name.contains(o)));
    for (i, (name, server, args, divisor)) in chosen {
        let (small, large) = (opts.small / divisor, opts.large / divisor);
        let span = (large - small) as f64;
        println!("==> {name}: callgrind, {small} and {large} requests");
        let ir_large = instructions(&env, *server, args, large)?;
        if let Some(dir) = &opts.profiles {
            let kept = dir.join(format!("callgrind.{}.out", i + 1));
            std::fs::copy(env.dir.join("callgrind.out"), &kept)?;
            println!("    profile of {large} requests: {}", kept.display());
        }
        let ir = (ir_large - instructions(&env, *server, args, small)?) / span;
        println!("==> {name}: strace, {small} and {large} requests");
        let (a, b) = (
            syscalls(&env, *server, args, small)?,
            syscalls(&env, *server, args, large)?,
        );
        let mut per: Vec<(String, f64)> = b
            .iter()
            .map(|(k, v)| (k.clone(), (v - a.get(k).copied().unwrap_or(0.0)) / span))
            .filter(|(_, v)| *v >= 0.05)
            .collect();
        per.sort_by(|x, y| y.1.total_cmp(&x.1));
        let total: f64 = per.iter().map(|(_, v)| v).sum();
        let detail = per
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!("    {ir:.0} instructions, {total:.2} system calls ({detail})");
        md += &format!("| {name} | {ir:.0} | {total:.2} | {detail} |\n");
    }
    drop(backend_procs);
    // A partial table would overwrite the recorded one: only a full run writes it.
    if opts.only.is_none() {
        std::fs::create_dir_all(&opts.out)?;
        std::fs::write(opts.out.join("cost.md"), &md)?;
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strace_summaries() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
            ------ ----------- ----------- --------- --------- ----------------\n\
             72.97    0.223429           5     39503           writev\n\
             24.08    0.073728           1     39504      12   recvfrom\n\
            ------ ----------- ----------- --------- --------- ----------------\n\
            100.00    0.306196           3     79671        12 total\n";
        let calls = parse_strace(text);
        assert_eq!(calls.get("writev"), Some(&39503.0));
        assert_eq!(calls.get("recvfrom"), Some(&39504.0));
        assert_eq!(calls.len(), 2, "{calls:?}");
    }
}
