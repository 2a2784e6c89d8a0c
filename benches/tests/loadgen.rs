//! A seconds-long smoke of `loadgen` against a real gateway: every mode works, the JSON report
//! follows its schema, the target's CPU and memory are sampled, and failures are classified.
//! (Throughput and latency numbers belong to `cargo xtask bench`, never to tests.)

use std::process::Command;

use e2e::{backend, Fixture, Gateway, GATEWAY_ID, WEB_SVC};
use serde_json::Value;

fn loadgen(fx: &Fixture, url: &str, extra: &[&str]) -> (i32, Value, String) {
    let json = fx.path("report.json");
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    if !extra.contains(&"--server-identity") {
        cmd.args(["--server-identity", GATEWAY_ID]);
    }
    let out = cmd
        .arg(url)
        .args(["--authority", &format!("{WEB_SVC}:80")])
        .arg("--cacert")
        .arg(fx.path("root.crt"))
        .arg("--cert")
        .arg(fx.path("vote-bot.crt"))
        .arg("--key")
        .arg(fx.path("vote-bot.key"))
        .args(["--warmup", "200ms", "--duration", "1s", "--quiet", "--json"])
        .arg(&json)
        .args(extra)
        .output()
        .expect("run loadgen");
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), report, text)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn every_mode_against_the_gateway() {
    // The backend runs on this runtime's workers while the test thread runs loadgen.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(backend());
    let fx = Fixture::new();
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &format!("{WEB_SVC}:80={backend}"),
            "--log-level",
            "warn",
        ],
    );
    let url = format!("https://127.0.0.1:{}/echo", gw.listen.port());
    let pid = gw.pid().to_string();
    let modes: Vec<(&str, Vec<&str>)> = vec![
        ("http/1.1", vec!["-c", "4"]),
        ("h2", vec!["--h2", "-c", "2", "--streams", "4"]),
        (
            "transport-header+h2",
            vec!["--transport-header", "-c", "2", "--streams", "4"],
        ),
        ("http/1.1", vec!["--new-connection", "-c", "2"]),
        ("http/1.1", vec!["--rate", "200", "-c", "4", "--pid", &pid]),
    ];
    for (protocol, args) in modes {
        let (code, r, text) = loadgen(&fx, &url, &args);
        assert_eq!(code, 0, "{args:?}: {text}");
        assert_eq!(r["schema"], "loadgen/v1");
        assert_eq!(r["protocol"], protocol, "{text}");
        assert!(n(&r["ok"]) > 0, "{text}");
        assert_eq!(
            n(&r["errors"]["connect"]) + n(&r["errors"]["tls"]) + n(&r["errors"]["status"]),
            0,
            "{text}"
        );
        let (p50, p99) = (n(&r["latency_us"]["p50"]), n(&r["latency_us"]["p99"]));
        assert!(p50 > 0 && p50 <= p99, "{text}");
        assert!(n(&r["bytes"]) > 0);
        if r["rate"].is_number() {
            // Open loop at 200/s for 1 s: the schedule, not the server, sets the count.
            assert!((150..=260).contains(&n(&r["ok"])), "{text}");
            assert!(
                r["target_process"]["cpu_seconds"].as_f64().unwrap_or(0.0) > 0.0,
                "{text}"
            );
            assert!(
                n(&r["target_process"]["peak_rss_bytes"]) > 1_000_000,
                "{text}"
            );
        }
    }
    // The plot is an SVG with one line.
    let svg = fx.path("plot.svg");
    let (code, _, text) = loadgen(&fx, &url, &["-c", "2", "--plot", svg.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("<polyline"),
        "{plot}"
    );

    // Failures are classified: a server identity the gateway does not have is a TLS error, a
    // closed port a connect error; with nothing succeeding, the exit status says so.
    let (code, r, text) = loadgen(
        &fx,
        &url,
        &[
            "-c",
            "2",
            "--server-identity",
            "someone-else.ns.serviceaccount.identity.linkerd.cluster.local",
        ],
    );
    assert_eq!(code, 2, "{text}");
    assert!(n(&r["errors"]["tls"]) > 0 && n(&r["ok"]) == 0, "{text}");
    let closed = format!("https://127.0.0.1:{}/echo", e2e::free_port());
    let (code, r, text) = loadgen(&fx, &closed, &["-c", "2"]);
    assert_eq!(code, 2, "{text}");
    assert!(n(&r["errors"]["connect"]) > 0, "{text}");
}
