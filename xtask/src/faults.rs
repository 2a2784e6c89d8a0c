//! `cargo xtask faults` and `cargo xtask soak`: the fault suite at full length and the soak,
//! both in release, printing (and for the soak, recording) their numbers. The tests behind
//! them live in `tests/tests/faults.rs` and `tests/tests/soak.rs`; the test suite runs the
//! faults' short version.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

/// Runs one test binary of the `e2e` package in release, echoing its output, and returns the
/// lines starting with `prefix`.
fn run_e2e(
    test: &str,
    extra: &[&str],
    env: &[(&str, String)],
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--release", "-p", "e2e", "--test", test, "--"])
        .args(["--nocapture", "--test-threads", "1"])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("cargo test")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut found = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        // libtest may print `test name ... ` on the same line first.
        if let Some(at) = line.find(prefix) {
            found.push(line[at + prefix.len()..].trim().to_string());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{test} failed ({status})");
    }
    Ok(found)
}

pub fn faults() -> anyhow::Result<()> {
    let lines = run_e2e("faults", &[], &[("FAULTS_FULL", "1".into())], "FAULT ")?;
    println!("\n==> faults (full run, release, 500 requests/s per protocol)");
    for l in lines {
        println!("    {l}");
    }
    Ok(())
}

pub fn soak(secs: u64, rate: u32, out: &Path) -> anyhow::Result<()> {
    let lines = run_e2e(
        "soak",
        &["--ignored"],
        &[
            ("SOAK_SECS", secs.to_string()),
            ("SOAK_RATE", rate.to_string()),
        ],
        "SOAK ",
    )?;
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut md = format!(
        "# Soak\n\n`cargo xtask soak --secs {secs} --rate {rate}` on {date}: HTTP/1.1 (`/`) and HTTP/2 (`/slow?ms=5`) callers, {rate} requests/s each, open loop, release build, this 2-core machine. One row per minute.\n\n"
    );
    for l in &lines {
        md.push_str(l);
        md.push('\n');
    }
    std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
    println!("\n==> soak recorded in {}", out.display());
    Ok(())
}
