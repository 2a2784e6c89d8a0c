//! `cargo xtask test`: everything CI checks, runnable on a fresh machine. It installs what the
//! tests need and is missing (Debian packages, a PyPI tool, cargo components and cargo-fuzz),
//! then runs fmt, clippy, rustdoc, the whole test suite and a short fuzz smoke, and ends with
//! one summed `tests: N passed, N failed` line. `.ci/run` runs exactly this.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

use crate::{cargo, workspace_root};

pub struct TestOptions {
    /// Skip installing missing tools (fail instead when one is needed).
    pub no_install: bool,
    /// Seconds of fuzzing the transport-header decoder; 0 skips it.
    pub fuzz_seconds: u64,
}

/// Commands the tests run, and the Debian package that brings each.
const DEBIAN: &[(&str, &str)] = &[
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("cc", "gcc"),
    ("c++", "g++"),
    ("pgrep", "procps"),
    ("prlimit", "util-linux"),
    ("ip", "iproute2"),
    ("kubectl", "kubectl"),
    // The viz queries run by a real Prometheus; the dashboard loads in a real browser.
    ("prometheus", "prometheus"),
    ("chromium", "chromium"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn install_missing() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        println!("==> installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(&missing))?;
    }
    if !have("kubernetes-validate") {
        println!("==> installing kubernetes-validate (PyPI)");
        run(Command::new("pip").args(["install", "--quiet", "kubernetes-validate"]))?;
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for comp in ["rustfmt", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(comp)) {
            run(Command::new("rustup").args(["component", "add", comp]))?;
        }
    }
    if !have("cargo-fuzz") {
        println!("==> installing cargo-fuzz");
        cargo(&["install", "cargo-fuzz", "--locked", "--quiet"])?;
    }
    Ok(())
}

/// Runs `cargo test --workspace`, echoing its output, and sums its per-binary result lines.
fn test_workspace() -> anyhow::Result<(u64, u64)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(workspace_root())
        // Every test binary runs even after one fails, so the count is whole.
        .args(["test", "--workspace", "--no-fail-fast"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                for pair in words.windows(2) {
                    let n: u64 = pair[0].parse().unwrap_or(0);
                    match pair[1].trim_end_matches([';', ',']) {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        // A build failure, or a test binary that crashed before reporting.
        failed += 1;
    }
    Ok((passed, failed))
}

fn fuzz_smoke(seconds: u64) -> anyhow::Result<()> {
    println!("==> fuzz smoke: transport-header decode, {seconds}s");
    let dir = workspace_root().join("proxy/transport-header");
    // The generated corpus is not committed (only fuzz/seeds is); libFuzzer needs its directory.
    std::fs::create_dir_all(dir.join("fuzz/corpus/decode"))?;
    // cargo-fuzz builds libFuzzer with the C++ compiler; `-s none` keeps it on stable.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(&dir).args([
        "fuzz",
        "run",
        "-s",
        "none",
        "decode",
        "fuzz/corpus/decode",
        "fuzz/seeds/decode",
        "--",
        &format!("-max_total_time={seconds}"),
        "-print_final_stats=1",
    ]))
}

/// What a cold test build writes under `target/` with [`lean_build`] (measured: 2.7 GiB, and
/// 0.2 GiB for the fuzz build); below this much free space the run warns before it starts.
const DISK_NEEDED_GIB: u64 = 5;

/// A one-shot run gains nothing from incremental compilation, whose caches were 2.5 GiB of a
/// cold test build's 5.7 GiB, and line tables are all a failing test's backtrace needs; full
/// debug info made every one of the two dozen test binaries about 50 MB. A CI machine with a
/// few GiB free ran out of disk before either change. (What is left of `incremental/` is the
/// xtask binary's own build, which `cargo xtask` makes before this runs.)
fn lean_build() {
    std::env::set_var("CARGO_INCREMENTAL", "0");
    std::env::set_var("CARGO_PROFILE_DEV_DEBUG", "line-tables-only");
}

/// Free space where the build writes, in GiB, from `df` (absent or unreadable: unknown).
fn free_gib(dir: &std::path::Path) -> Option<u64> {
    let out = Command::new("df").args(["-Pk"]).arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib / (1024 * 1024))
}

pub fn run_all(opts: TestOptions) -> anyhow::Result<()> {
    if !opts.no_install {
        install_missing()?;
    }
    lean_build();
    if let Some(free) = free_gib(&workspace_root()) {
        if free < DISK_NEEDED_GIB {
            println!(
                "==> warning: {free} GiB free under {}; a cold test build needs about \
                 {DISK_NEEDED_GIB} GiB (remove old target/ directories)",
                workspace_root().display()
            );
        }
    }
    println!("==> cargo fmt --check");
    cargo(&["fmt", "--all", "--", "--check"])?;
    println!("==> cargo clippy");
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Twice: the public docs must not link to private items, and the internals (what a
    // newcomer reads, with --document-private-items) must have no broken links either.
    println!("==> cargo doc");
    std::env::set_var("RUSTDOCFLAGS", "-D warnings");
    cargo(&["doc", "--workspace", "--no-deps", "--quiet"])?;
    cargo(&[
        "doc",
        "--workspace",
        "--no-deps",
        "--document-private-items",
        "--quiet",
    ])?;
    std::env::remove_var("RUSTDOCFLAGS");
    println!("==> cargo test --workspace");
    let (passed, failed) = test_workspace()?;
    let fuzz = if opts.fuzz_seconds > 0 {
        fuzz_smoke(opts.fuzz_seconds)
    } else {
        Ok(())
    };
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} test(s) failed");
    }
    fuzz
}
