//! `cargo xtask demo` end to end, shortened: it must finish green, show tap lines with tls=true
//! and the caller's identity as the gateway saw it, and leave no process behind.

use std::process::Command;

/// One test, both layouts in turn: run side by side, each would see the other's processes.
/// As root with iproute2 (as CI runs), `auto` gives west and east namespaces of their own;
/// elsewhere it falls back to loopback and repeats the first run.
#[test]
fn local_demo_runs_green_and_cleans_up() {
    run_demo("off");
    let stdout = run_demo("auto");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        assert!(stdout.contains("joined by a veth pair"), "{stdout}");
        assert!(stdout.contains("dst=192.0.2.2:4143"), "{stdout}");
        let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&ns.stdout).contains("mgdemo"),
            "namespaces left behind"
        );
    }
}

fn run_demo(netns: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "demo",
            "--duration",
            "4",
            "--rtt",
            "20ms",
            "--netns",
            netns,
            "--dir",
        ])
        .arg(&demo_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("req id=")
            && l.contains("tls=true")
            && l.contains(":authority=web-svc.emojivoto.svc.cluster.local:80")
            && l.contains(":path=/api/list")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("rsp id=") && l.contains(":status=200")),
        "{stdout}"
    );
    assert!(stdout.contains("0 failed, 100.0% success"), "{stdout}");
    assert!(
        stdout.contains(
            "client_id=vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local tls=true"
        ),
        "{stdout}"
    );
    // The in-cluster hop: web-svc's meshed inbound saw the gateway, by the identity it got
    // from east's identity service.
    let web_side = stdout
        .split("web-svc's proxy saw")
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        web_side.contains(
            "client_id=linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local tls=true"
        ),
        "{stdout}"
    );
    // viz's edge from the gateway to the workload, and where the dashboard is.
    let forwarded = stdout
        .split("gateway forwarded")
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        forwarded.contains(
            "server_id=web.emojivoto.serviceaccount.identity.linkerd.cluster.local requests="
        ),
        "{stdout}"
    );
    assert!(stdout.contains("/dashboard"), "{stdout}");
    // Every process the demo started was stopped.
    assert_none_running(&demo_dir.display().to_string());
    assert_none_running("xtask (web-svc|vote-bot|wan|control-plane) ");
    stdout.into_owned()
}

fn assert_none_running(pattern: &str) {
    let left = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "left behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
