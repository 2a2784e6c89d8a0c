//! The queries `linkerd viz stat` and `viz edges` run (contract section 5), run by a real
//! Prometheus (the Debian package, started here) that scrapes the gateway's `/metrics` with
//! the labels viz's scrape configuration adds to a `linkerd-gateway` pod; the answers are
//! checked against the traffic the test sent.
//!
//! `increase()` extrapolates to its window's edges, so each window is set to span exactly the
//! scrapes since Prometheus started (plus a millisecond): the answer is then the counted
//! difference to within rounding, and the test can hold it to the exact number sent.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{viz::*, *};
use serde_json::Value;

const NS: &str = "linkerd-multicluster";
const DEPLOY: &str = "linkerd-gateway";

/// A Prometheus process, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second, labelled as viz's `linkerd-proxy` job labels a pod of
    /// the gateway deployment.
    fn start(fx: &Fixture, target: SocketAddr) -> Self {
        let dir = fx.path("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: linkerd-proxy\n    static_configs:\n\
                 \x20     - targets: ['{target}']\n        labels:\n\
                 \x20         namespace: {NS}\n          pod: {DEPLOY}-7c9d8f-x2k4q\n\
                 \x20         deployment: {DEPLOY}\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`) runs");
        let p = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(p.addr, "/-/ready"), Ok((200, _))) {
            assert!(Instant::now() < deadline, "prometheus did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The scrapes so far: `up`'s sample times.
    fn scrapes(&self) -> Vec<f64> {
        self.samples("up{job=\"linkerd-proxy\"}")
            .into_iter()
            .map(|s| s.0)
            .collect()
    }

    /// A single-valued query's value at `time` (now if `None`).
    fn value(&self, promql: &str, time: Option<f64>) -> Option<f64> {
        self.query(promql, time)
            .first()
            .and_then(|r| r["value"][1].as_str()?.parse().ok())
    }

    /// `/api/v1/query`; the `data.result` array.
    fn query(&self, promql: &str, time: Option<f64>) -> Vec<Value> {
        let mut path = format!("/api/v1/query?query={}", urlencode(promql));
        if let Some(t) = time {
            path.push_str(&format!("&time={t:.3}"));
        }
        let (status, body) = http_get(self.addr, &path).expect("query");
        assert_eq!(status, 200, "{promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The raw samples of one series over the last hour: (time, value).
    fn samples(&self, selector: &str) -> Vec<(f64, f64)> {
        let r = self.query(&format!("{selector}[1h]"), None);
        let Some(series) = r.first() else {
            return Vec::new();
        };
        series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_f64().unwrap(),
                    p[1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the row whose labels include all of `labels`.
fn row(result: &[Value], labels: &[(&str, &str)]) -> Option<f64> {
    result
        .iter()
        .find(|r| {
            labels
                .iter()
                .all(|(k, v)| r["metric"][*k].as_str() == Some(*v))
        })
        .and_then(|r| r["value"][1].as_str()?.parse().ok())
}

fn count(result: &[Value], labels: &[(&str, &str)]) -> u64 {
    let v = row(result, labels).unwrap_or_else(|| panic!("no row {labels:?} in {result:#?}"));
    v.round() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viz_stat_and_edges_queries_count_what_was_sent() {
    let fx = Fixture::new();
    let (gw, _web, _dst) = mesh(&fx, &[]).await;
    let mut h2 = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    // One of each outcome before the first scrape, so every series exists from the start
    // and `increase` sees all of what follows.
    let warm = Traffic {
        web: 1,
        ok: 1,
        unavailable: 1,
        denied: 1,
    };
    send(&mut h2, &warm).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let prom = Prometheus::start(&fx, gw.admin);
    let inbound_total = "sum(response_total{direction=\"inbound\"})";
    wait_for("two scrapes", Duration::from_secs(30), || {
        prom.scrapes().len() >= 2
    })
    .await;

    let t = Traffic {
        web: 40,
        ok: 12,
        unavailable: 6,
        denied: 4,
    };
    send(&mut h2, &t).await;
    let all = (warm.total() + t.total()) as f64;
    wait_for("the traffic scraped", Duration::from_secs(30), || {
        prom.value(inbound_total, None) == Some(all)
    })
    .await;

    // The window: from the first scrape to the last, plus a millisecond.
    let scrapes = prom.scrapes();
    let (first, last) = (scrapes[0], scrapes[scrapes.len() - 1]);
    let window = format!("{}ms", ((last - first) * 1000.0).round() as u64 + 1);

    // `viz stat deploy/linkerd-gateway -n linkerd-multicluster`: the inbound side.
    let stat = prom.query(
        &format!(
            "sum(increase(response_total{{direction=\"inbound\", namespace=\"{NS}\", deployment=\"{DEPLOY}\"}}[{window}])) by (namespace, deployment, classification, tls)"
        ),
        Some(last),
    );
    let gw_row = [("namespace", NS), ("deployment", DEPLOY), ("tls", "true")];
    let with = |class: &'static str| {
        let mut l = gw_row.to_vec();
        l.push(("classification", class));
        l
    };
    assert_eq!(count(&stat, &with("success")), t.web + t.ok, "{stat:#?}");
    assert_eq!(
        count(&stat, &with("failure")),
        t.unavailable + t.denied,
        "{stat:#?}"
    );

    // `viz stat svc/web-svc -n emojivoto --from deploy/linkerd-gateway`: the outbound side by
    // dst_* labels.
    let svc = prom.query(
        &format!(
            "sum(increase(response_total{{direction=\"outbound\", namespace=\"{NS}\", deployment=\"{DEPLOY}\", dst_namespace=\"emojivoto\"}}[{window}])) by (dst_namespace, dst_service, classification, tls)"
        ),
        Some(last),
    );
    let svc_row = |service: &'static str, class: &'static str, tls: &'static str| {
        vec![
            ("dst_namespace", "emojivoto"),
            ("dst_service", service),
            ("classification", class),
            ("tls", tls),
        ]
    };
    assert_eq!(count(&svc, &svc_row("web-svc", "success", "true")), t.web);
    assert_eq!(
        count(&svc, &svc_row("emoji-svc", "success", "no_identity")),
        t.ok
    );
    assert_eq!(
        count(&svc, &svc_row("emoji-svc", "failure", "no_identity")),
        t.unavailable + t.denied
    );
    assert!(
        row(&svc, &svc_row("web-svc", "failure", "true")).is_none_or(|v| v == 0.0),
        "{svc:#?}"
    );

    // Requests: the same on both sides.
    for dir in ["inbound", "outbound"] {
        let req = prom.query(
            &format!(
                "sum(increase(request_total{{direction=\"{dir}\", deployment=\"{DEPLOY}\"}}[{window}])) by (deployment)"
            ),
            Some(last),
        );
        assert_eq!(count(&req, &[("deployment", DEPLOY)]), t.total(), "{dir}");
    }

    // Latency, as stat computes it: at the first scrape holding all the traffic, `irate`
    // sees its last part, served in well under a second on loopback.
    let at = *scrapes
        .iter()
        .find(|t| prom.value(inbound_total, Some(**t)) == Some(all))
        .unwrap();
    for q in ["0.5", "0.95", "0.99"] {
        let lat = prom.query(
            &format!(
                "histogram_quantile({q}, sum(irate(response_latency_ms_bucket{{direction=\"inbound\", namespace=\"{NS}\", deployment=\"{DEPLOY}\"}}[{window}])) by (le, namespace, deployment))"
            ),
            Some(at),
        );
        let ms = row(&lat, &[("deployment", DEPLOY)]).expect("a latency");
        assert!(ms > 0.0 && ms <= 1000.0, "p{q} = {ms} ms: {lat:#?}");
    }

    // `viz edges deploy -n linkerd-multicluster`: the gateway's open connections to the
    // services, with the server's identity or why there is none.
    let edges = prom.query(
        "sum(tcp_open_connections{direction=\"outbound\"}) by (deployment, dst_deployment, pod, server_id, namespace, dst_namespace, no_tls_reason)",
        Some(last),
    );
    let m = gw.metrics();
    let open_to = |service: &str| {
        metric(
            &m,
            "tcp_open_connections",
            &[("direction", "outbound"), ("dst_service", service)],
        )
    };
    assert_eq!(
        count(
            &edges,
            &[
                ("deployment", DEPLOY),
                ("dst_namespace", "emojivoto"),
                ("no_tls_reason", "not_provided_by_service_discovery"),
            ]
        ),
        open_to("emoji-svc")
    );
    assert!(open_to("emoji-svc") >= 1, "the pooled connection is open");
    assert!(
        row(
            &edges,
            &[
                ("deployment", DEPLOY),
                ("dst_deployment", "web"),
                ("server_id", WEB_ID)
            ]
        )
        .is_some(),
        "an edge to web with its identity: {edges:#?}"
    );

    // The caller's connection and the bytes both ways, as stat's TCP columns read them.
    let open = prom.query(
        &format!(
            "sum(tcp_open_connections{{direction=\"inbound\", deployment=\"{DEPLOY}\"}}) by (deployment)"
        ),
        Some(last),
    );
    assert_eq!(count(&open, &[("deployment", DEPLOY)]), 1);
    for (family, peer) in [
        ("tcp_read_bytes_total", "src"),
        ("tcp_write_bytes_total", "src"),
        ("tcp_read_bytes_total", "dst"),
        ("tcp_write_bytes_total", "dst"),
    ] {
        let bytes = prom.query(
            &format!(
                "sum(increase({family}{{peer=\"{peer}\", deployment=\"{DEPLOY}\"}}[{window}])) by (deployment)"
            ),
            Some(last),
        );
        assert!(
            count(&bytes, &[("deployment", DEPLOY)]) > 0,
            "{family} {peer}: {bytes:#?}"
        );
    }
}
