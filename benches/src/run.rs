//! The load loop. Closed loop: every slot sends as soon as its previous response is in. Open
//! loop (`rate`): each slot owns `rate / slots` of the schedule and latency is measured from
//! when a request was *due*, not when it went out, so a stalled server is charged for the
//! requests it delayed (the coordinated-omission correction wrk2 made well known).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use crate::{
    conn::{connect, Proto, Sender, Target},
    stats::{ErrorKind, Stats},
};

pub struct RunConfig {
    pub connections: usize,
    /// Concurrent streams per HTTP/2 connection (1 for HTTP/1.1).
    pub streams: usize,
    /// Total requests per second (open loop); `None` is closed loop.
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub warmup: Duration,
    pub new_connection: bool,
    pub timeout: Duration,
    pub method: Method,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Live counters for the progress line.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
    pub measuring: AtomicBool,
}

pub struct RunResult {
    pub stats: Stats,
    /// From the end of warm-up to the last response.
    pub measured: Duration,
}

struct Shared {
    target: Arc<Target>,
    cfg: Arc<RunConfig>,
    progress: Arc<Progress>,
    start: Instant,
    warm_end: Instant,
    end: Option<Instant>,
    /// Measured requests still to send, in count mode.
    remaining: AtomicI64,
    slots: usize,
}

pub async fn run(target: Arc<Target>, cfg: Arc<RunConfig>, progress: Arc<Progress>) -> RunResult {
    let start = Instant::now();
    let warm_end = start + cfg.warmup;
    let streams = if target.proto == Proto::Http2 && !cfg.new_connection {
        cfg.streams.max(1)
    } else {
        1
    };
    let slots = cfg.connections.max(1) * streams;
    let shared = Arc::new(Shared {
        target,
        cfg: cfg.clone(),
        progress: progress.clone(),
        start,
        warm_end,
        end: cfg.duration.map(|d| warm_end + d),
        remaining: AtomicI64::new(cfg.count.map(|c| c as i64).unwrap_or(i64::MAX)),
        slots,
    });
    {
        let p = progress.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(warm_end).await;
            p.measuring.store(true, Ordering::Relaxed);
        });
    }
    let mut tasks = Vec::with_capacity(slots);
    for c in 0..cfg.connections.max(1) {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut first = if shared.cfg.new_connection {
                None
            } else {
                open(&shared).await
            };
            let mut subtasks = Vec::new();
            for s in 1..streams {
                let sender = first.as_ref().and_then(Sender::clone_h2);
                let shared = shared.clone();
                subtasks.push(tokio::spawn(async move {
                    slot(&shared, c * streams + s, sender).await
                }));
            }
            let mut stats = slot(&shared, c * streams, first.take()).await;
            for t in subtasks {
                if let Ok(s) = t.await {
                    stats.merge(&s);
                }
            }
            stats
        }));
    }
    let mut stats = Stats::new();
    for t in tasks {
        if let Ok(s) = t.await {
            stats.merge(&s);
        }
    }
    let last = Instant::now();
    RunResult {
        stats,
        measured: last.saturating_duration_since(warm_end),
    }
}

/// The connection an HTTP/2 connection's streams share. One attempt: if it fails, each slot
/// connects on its own on its first request, where the failure is recorded like any other.
async fn open(sh: &Shared) -> Option<Sender> {
    connect(&sh.target).await.ok()
}

fn finished(sh: &Shared, now: Instant) -> bool {
    sh.end.is_some_and(|e| now >= e) || sh.remaining.load(Ordering::Relaxed) <= 0
}

fn request(sh: &Shared) -> Request<Full<Bytes>> {
    let t = &sh.target;
    let mut b = Request::builder().method(sh.cfg.method.clone());
    b = match t.proto {
        Proto::Http2 => b
            .uri(format!("https://{}{}", t.authority, t.path_and_query))
            .version(http::Version::HTTP_2),
        Proto::Http1 => b
            .uri(t.path_and_query.as_str())
            .header(http::header::HOST, t.authority.as_str()),
    };
    if sh.cfg.new_connection && t.proto == Proto::Http1 {
        b = b.header(http::header::CONNECTION, "close");
    }
    let mut req = b.body(Full::new(sh.cfg.body.clone())).unwrap_or_default();
    for (k, v) in &sh.cfg.headers {
        req.headers_mut().append(k.clone(), v.clone());
    }
    req
}

/// One slot's loop.
async fn slot(sh: &Shared, index: usize, mut sender: Option<Sender>) -> Stats {
    let mut stats = Stats::new();
    // In the open loop this slot's requests are due every `interval`, offset so slots interleave.
    let interval = sh
        .cfg
        .rate
        .map(|r| Duration::from_secs_f64(sh.slots as f64 / r.max(0.001)));
    let mut k: u64 = 0;
    loop {
        let due = match interval {
            Some(iv) => sh.start + iv.mul_f64(k as f64 + index as f64 / sh.slots as f64),
            None => Instant::now(),
        };
        k += 1;
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let now = Instant::now();
        if finished(sh, now.max(due)) {
            break;
        }
        let measured = due >= sh.warm_end;
        if measured && sh.remaining.fetch_sub(1, Ordering::Relaxed) <= 0 {
            break;
        }
        // Closed loop times from the send; open loop from when it was due.
        let from = if interval.is_some() { due } else { now };
        let result = tokio::time::timeout(sh.cfg.timeout, once(sh, &mut sender)).await;
        let outcome = match result {
            Ok(r) => r,
            Err(_) => {
                sender = None;
                Err(ErrorKind::Timeout)
            }
        };
        match outcome {
            Ok(bytes) if measured => {
                stats.record_ok(from.elapsed().as_micros() as u64, bytes);
                sh.progress.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(kind) => {
                if measured {
                    stats.errors.add(kind);
                }
                sh.progress.errors.fetch_add(1, Ordering::Relaxed);
                if kind != ErrorKind::Status {
                    // Don't spin on a target that refuses everything.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    stats
}

/// One request; opens a connection first when there is none (or always, per request, in
/// new-connection mode). Returns the body bytes read.
async fn once(sh: &Shared, sender: &mut Option<Sender>) -> Result<u64, ErrorKind> {
    if sh.cfg.new_connection {
        *sender = None;
    }
    let s = match sender {
        Some(s) => s,
        None => sender.insert(connect(&sh.target).await?),
    };
    if s.ready().await.is_err() {
        *sender = None;
        return Err(ErrorKind::Other);
    }
    let resp = match s.send(request(sh)).await {
        Ok(r) => r,
        Err(_) => {
            *sender = None;
            return Err(ErrorKind::Other);
        }
    };
    let status = resp.status();
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => bytes += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
            Err(_) => {
                *sender = None;
                return Err(ErrorKind::Other);
            }
        }
    }
    if sh.cfg.new_connection {
        *sender = None;
    }
    if status.is_success() || status.is_redirection() {
        Ok(bytes)
    } else {
        Err(ErrorKind::Status)
    }
}
