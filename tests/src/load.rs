//! Load and backends for fault and soak runs: an open-loop load generator over mTLS (HTTP/1.1
//! and HTTP/2) that records every request's outcome, and a backend that can die and return.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{client_tls, h1_sender, h2_sender, Fixture, WEB_SVC};

/// A backend that can die (every socket closed at once, like a killed process) and come back
/// on the same address.
pub struct Backend {
    pub addr: SocketAddr,
    kill: tokio::sync::watch::Sender<bool>,
    in_flight: Arc<AtomicUsize>,
    pub served: Arc<AtomicUsize>,
    /// Its accept loop and connection tasks still running: dead once 0.
    live: Arc<AtomicUsize>,
}

/// Counts a backend task as live until dropped.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self(live.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    pub async fn start(addr: SocketAddr) -> Self {
        let listener = crate::server_listener(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let (kill, killed) = tokio::sync::watch::channel(false);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (flight, count) = (in_flight.clone(), served.clone());
        let mut on_kill = killed.clone();
        let live = Arc::new(AtomicUsize::new(0));
        let accept_live = Live::new(&live);
        let live_conns = live.clone();
        tokio::spawn(async move {
            let _live = accept_live;
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = on_kill.changed() => return,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let (flight, count, mut on_kill) = (flight.clone(), count.clone(), killed.clone());
                let conn_live = Live::new(&live_conns);
                tokio::spawn(async move {
                    let _live = conn_live;
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (flight, count) = (flight.clone(), count.clone());
                        async move {
                            flight.fetch_add(1, Ordering::SeqCst);
                            let ms = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("ms="))
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            flight.fetch_sub(1, Ordering::SeqCst);
                            count.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok\n"),
                            )))
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = on_kill.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            kill,
            in_flight,
            served,
            live,
        }
    }

    /// Closes the listener and every connection, and returns once all are closed (a killed
    /// process's sockets close at once; here each task closes its own, within milliseconds).
    /// Returns the requests it was serving.
    pub async fn die(&self) -> usize {
        let n = self.in_flight.load(Ordering::SeqCst);
        let _ = self.kill.send(true);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.live.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// One request of the load: when it was sent and how it ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sent: Duration,
    pub took: Duration,
    /// `None`: 2xx. Else the status or error.
    pub failure: Option<String>,
}

/// Open-loop load: `rate` requests per second for `dur`, each sent on schedule whether or not
/// earlier ones have answered. HTTP/2 multiplexes on one connection (reopened if it closes);
/// HTTP/1.1 keeps a pool of connections, one per request in flight.
pub async fn load(
    fx: &Fixture,
    addr: SocketAddr,
    proto: Proto,
    rate: u32,
    dur: Duration,
    path: &'static str,
    t0: Instant,
) -> Vec<Outcome> {
    let alpn: &[&[u8]] = match proto {
        Proto::H1 => &[b"http/1.1"],
        Proto::H2 => &[b"h2"],
    };
    let tls = client_tls(fx, "vote-bot", alpn);
    let h2: Arc<tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>>> =
        Arc::default();
    let h1_pool: Arc<Mutex<Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>> =
        Arc::default();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + dur;
    let mut tasks = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let (tls, h2, h1_pool, outcomes) =
            (tls.clone(), h2.clone(), h1_pool.clone(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            let sent = t0.elapsed();
            let started = Instant::now();
            let req = Request::get(format!("http://{WEB_SVC}{path}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let result: Result<StatusCode, String> = match proto {
                Proto::H2 => {
                    let sender = {
                        let mut slot = h2.lock().await;
                        if slot.as_ref().is_none_or(|s| s.is_closed()) {
                            *slot = h2_sender(addr, tls.clone()).await.ok();
                        }
                        slot.clone()
                    };
                    match sender {
                        None => Err("connect".into()),
                        Some(mut s) => match s.send_request(req).await {
                            Ok(r) => {
                                let status = r.status();
                                r.into_body()
                                    .collect()
                                    .await
                                    .map(|_| status)
                                    .map_err(|e| format!("body: {e}"))
                            }
                            Err(e) => Err(format!("h2: {e}")),
                        },
                    }
                }
                Proto::H1 => {
                    let pooled = h1_pool.lock().unwrap().pop();
                    let sender = match pooled {
                        Some(s) if s.is_ready() => Some(s),
                        _ => h1_sender(addr, tls.clone()).await.ok(),
                    };
                    match sender {
                        None => Err("connect".into()),
                        Some(mut s) => match s.send_request(req).await {
                            Ok(r) => {
                                let status = r.status();
                                let body = r.into_body().collect().await;
                                if body.is_ok() {
                                    h1_pool.lock().unwrap().push(s);
                                }
                                body.map(|_| status).map_err(|e| format!("body: {e}"))
                            }
                            Err(e) => Err(format!("h1: {e}")),
                        },
                    }
                }
            };
            let failure = match result {
                Ok(s) if s.is_success() => None,
                Ok(s) => Some(s.as_u16().to_string()),
                Err(e) => Some(e),
            };
            outcomes.lock().unwrap().push(Outcome {
                sent,
                took: started.elapsed(),
                failure,
            });
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let mut v = outcomes.lock().unwrap().clone();
    v.sort_by_key(|o| o.sent);
    v
}

pub fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.failure.is_some()).collect()
}
