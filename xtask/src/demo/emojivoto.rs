//! A small stand-in for emojivoto: `web-svc` with the web API's shape, and `vote-bot`, which
//! lists and votes continuously, as the tutorial's vote-bot does.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};

const EMOJI: &[(&str, &str)] = &[
    (":joy:", "😂"),
    (":sunglasses:", "😎"),
    (":doughnut:", "🍩"),
    (":stuck_out_tongue_winking_eye:", "😜"),
    (":money_mouth_face:", "🤑"),
    (":flushed:", "😳"),
    (":mask:", "😷"),
    (":nerd_face:", "🤓"),
    (":ghost:", "👻"),
    (":skull_and_crossbones:", "☠️"),
    (":heart_eyes_cat:", "😻"),
    (":hear_no_evil:", "🙉"),
    (":see_no_evil:", "🙈"),
    (":speak_no_evil:", "🙊"),
    (":boy:", "👦"),
    (":girl:", "👧"),
    (":man:", "👨"),
    (":woman:", "👩"),
    (":older_man:", "👴"),
    (":policeman:", "👮"),
    (":guardsman:", "💂"),
    (":construction_worker:", "👷"),
    (":prince:", "🤴"),
    (":princess:", "👸"),
    (":pizza:", "🍕"),
    (":taco:", "🌮"),
    (":ramen:", "🍜"),
    (":rocket:", "🚀"),
];

#[derive(Serialize, Deserialize)]
pub struct Emoji {
    pub shortcode: String,
    pub unicode: String,
}

#[derive(Serialize)]
struct Score {
    shortcode: String,
    unicode: String,
    votes: u64,
}

/// Serves `/api/list`, `/api/vote?choice=:shortcode:` and `/api/leaderboard`.
pub async fn web_svc(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let votes: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    eprintln!("web-svc listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let votes = votes.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let votes = votes.clone();
                async move { Ok::<_, Infallible>(api(&req, &votes)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn api<B>(req: &Request<B>, votes: &Mutex<HashMap<String, u64>>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/api/list" => {
            let list: Vec<Emoji> = EMOJI
                .iter()
                .map(|(s, u)| Emoji {
                    shortcode: s.to_string(),
                    unicode: u.to_string(),
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::to_string(&list).unwrap_or_default(),
            )
        }
        "/api/vote" => {
            let choice = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("choice=")))
                .map(|c| c.replace("%3A", ":").replace("%3a", ":"));
            match choice {
                Some(c) if EMOJI.iter().any(|(s, _)| *s == c) => {
                    if let Ok(mut v) = votes.lock() {
                        *v.entry(c).or_default() += 1;
                    }
                    json(StatusCode::OK, "{}".into())
                }
                _ => json(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"unknown choice"}"#.into(),
                ),
            }
        }
        "/api/leaderboard" => {
            let v = votes.lock().map(|v| v.clone()).unwrap_or_default();
            let mut board: Vec<Score> = EMOJI
                .iter()
                .map(|(s, u)| Score {
                    shortcode: s.to_string(),
                    unicode: u.to_string(),
                    votes: *v.get(*s).unwrap_or(&0),
                })
                .collect();
            board.sort_by(|a, b| b.votes.cmp(&a.votes).then(a.shortcode.cmp(&b.shortcode)));
            json(
                StatusCode::OK,
                serde_json::to_string(&board).unwrap_or_default(),
            )
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    }
}

/// What vote-bot reports when it stops (one JSON line on stdout).
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct BotReport {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Lists and votes until `duration` passes or `stop` is set, then reports.
pub async fn vote_bot(
    target: SocketAddr,
    host: String,
    duration: Duration,
    pause: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<BotReport> {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + duration;
    let mut latencies = Vec::new();
    let mut report = BotReport::default();
    let mut pick = 0usize;
    let get = |path: String| {
        let req = Request::get(format!("http://{target}{path}"))
            .header("host", host.as_str())
            .body(Empty::<Bytes>::new());
        let client = client.clone();
        async move {
            let started = Instant::now();
            let resp = client.request(req?).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body, started.elapsed()))
        }
    };
    while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut record = |r: &anyhow::Result<(StatusCode, Bytes, Duration)>| {
            report.requests += 1;
            match r {
                Ok((s, _, d)) if s.is_success() => {
                    report.ok += 1;
                    latencies.push(d.as_secs_f64() * 1000.0);
                }
                Ok((s, b, _)) => {
                    report.failed += 1;
                    eprintln!("vote-bot: {s} {}", String::from_utf8_lossy(b).trim());
                }
                Err(e) => {
                    report.failed += 1;
                    eprintln!("vote-bot: {e:#}");
                }
            }
        };
        let listed = get("/api/list".into()).await;
        record(&listed);
        let choice = listed
            .ok()
            .and_then(|(_, b, _)| serde_json::from_slice::<Vec<Emoji>>(&b).ok())
            .and_then(|list| {
                pick = (pick * 7 + 3) % list.len().max(1);
                list.into_iter().nth(pick)
            });
        if let Some(e) = choice {
            let voted = get(format!("/api/vote?choice={}", e.shortcode)).await;
            record(&voted);
        }
        tokio::time::sleep(pause).await;
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((latencies.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    report.p50_ms = q(0.5);
    report.p99_ms = q(0.99);
    report.max_ms = latencies.last().copied().unwrap_or(0.0);
    Ok(report)
}
