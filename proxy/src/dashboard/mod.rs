//! The gateway's live dashboard on the admin port: `GET /dashboard` is one self-contained
//! page (no outside resources); `GET /dashboard/events` streams a snapshot a second as
//! server-sent events. A snapshot is the gateway's own metrics read back ([`scrape`],
//! [`view`]) plus the latest requests from a tap the stream holds open, so a dashboard
//! costs nothing while no browser has it open, and a bounded amount while one does.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use linkerd2_proxy_api::tap::{eos, tap_event, TapEvent};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::{drain::Drain, tap::Taps};

mod scrape;
mod view;

pub type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// The page: HTML, CSS and script in one file, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// Browsers streaming at once; each holds a tap and renders the metrics once a second.
pub const MAX_VIEWERS: usize = 4;
/// Requests kept for the "recent requests" table.
const RECENT: usize = 25;
/// Requests whose response has not ended yet, at most; past this the oldest are forgotten.
const PENDING: usize = 1024;
const TICK: Duration = Duration::from_secs(1);

pub struct Dashboard {
    pub metrics: PrometheusHandle,
    pub taps: Arc<Taps>,
    pub drain: Drain,
    pub identity: identity::Identity,
    pub viewers: Arc<Semaphore>,
    /// Shared with `/metrics`: a render holds the whole page in memory.
    pub renders: Arc<Semaphore>,
}

/// One finished request as the "recent" table shows it.
#[derive(Debug, Clone, Default, Serialize)]
struct RecentRequest {
    caller: String,
    authority: String,
    method: String,
    path: String,
    status: u32,
    grpc_status: Option<u32>,
    latency_ms: f64,
    /// Seconds since the Unix epoch.
    at: u64,
}

/// The latest requests, assembled from tap events.
#[derive(Default)]
struct Recent {
    pending: HashMap<(u32, u64), RecentRequest>,
    done: VecDeque<RecentRequest>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ms(d: &Option<prost_types::Duration>) -> f64 {
    d.as_ref()
        .map(|d| d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1e6)
        .map(|v| (v * 100.0).round() / 100.0)
        .unwrap_or(0.0)
}

impl Recent {
    fn add(&mut self, e: TapEvent) {
        use tap_event::http::Event;
        let Some(tap_event::Event::Http(h)) = e.event else {
            return;
        };
        match h.event {
            Some(Event::RequestInit(r)) => {
                let Some(id) = r.id else { return };
                if self.pending.len() >= PENDING {
                    self.pending.clear();
                }
                let caller = e
                    .source_meta
                    .and_then(|m| m.labels.get("client_id").cloned())
                    .unwrap_or_default();
                let method = r
                    .method
                    .and_then(|m| http::Method::try_from(m).ok())
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                self.pending.insert(
                    (id.base, id.stream),
                    RecentRequest {
                        caller,
                        authority: r.authority,
                        method,
                        path: r.path,
                        ..Default::default()
                    },
                );
            }
            Some(Event::ResponseInit(r)) => {
                if let Some(p) =
                    r.id.and_then(|id| self.pending.get_mut(&(id.base, id.stream)))
                {
                    p.status = r.http_status;
                }
            }
            Some(Event::ResponseEnd(r)) => {
                let Some(mut p) =
                    r.id.and_then(|id| self.pending.remove(&(id.base, id.stream)))
                else {
                    return;
                };
                p.latency_ms = ms(&r.since_request_init);
                p.grpc_status = match r.eos.and_then(|e| e.end) {
                    Some(eos::End::GrpcStatusCode(c)) => Some(c),
                    _ => None,
                };
                p.at = unix_now();
                if self.done.len() >= RECENT {
                    self.done.pop_front();
                }
                self.done.push_back(p);
            }
            None => {}
        }
    }
}

#[derive(Serialize)]
struct Snapshot<'a> {
    gateway: &'a str,
    time: u64,
    #[serde(flatten)]
    view: view::View,
    /// Newest first.
    recent: Vec<&'a RecentRequest>,
    /// Requests the dashboard's tap missed because this stream fell behind.
    recent_dropped: u64,
}

/// Counts a streaming dashboard in `gateway_dashboards_open` for as long as it lives,
/// however its stream ends.
struct Viewing(metrics::Gauge);

impl Viewing {
    fn new() -> Self {
        let open = metrics::gauge!("gateway_dashboards_open");
        open.increment(1.0);
        Self(open)
    }
}

impl Drop for Viewing {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

impl Dashboard {
    pub fn page() -> Response<AdminBody> {
        let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())).boxed_unsync());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        // The page may talk to this server and nothing else.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    /// `/dashboard/events`: a snapshot a second until the browser goes or the gateway drains.
    pub fn events(self: &Arc<Self>) -> Response<AdminBody> {
        let Ok(permit) = self.viewers.clone().try_acquire_owned() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many dashboards open\n",
            );
        };
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        tokio::spawn(self.clone().stream(tx, permit));
        let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        }));
        let mut r = Response::new(body.boxed_unsync());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    async fn stream(self: Arc<Self>, tx: mpsc::Sender<Bytes>, _permit: OwnedSemaphorePermit) {
        let _viewing = Viewing::new();
        // Requests are seen only while this stream is open; the tap closes with it.
        let (mut tapped, _guard) = match self.taps.open(None, None, false) {
            Ok((rx, guard)) => (Some(rx), Some(guard)),
            Err(e) => {
                tracing::debug!(error = %e, "dashboard without recent requests");
                (None, None)
            }
        };
        let mut history = view::History::default();
        let mut recent = Recent::default();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = self.drain.draining() => break,
                _ = tx.closed() => break,
                _ = tick.tick() => {}
            }
            if let Some(rx) = tapped.as_mut() {
                while let Ok(e) = rx.try_recv() {
                    recent.add(e);
                }
            }
            let rendered = {
                let _render = self.renders.acquire().await;
                crate::metrics::render(&self.metrics)
            };
            let samples = scrape::parse(&rendered);
            drop(rendered);
            let now = unix_now();
            let snapshot = Snapshot {
                gateway: self.identity.as_str(),
                time: now,
                view: history.view(&samples, Instant::now(), now as i64),
                recent: recent.done.iter().rev().collect(),
                recent_dropped: _guard.as_ref().map(|g| g.dropped()).unwrap_or(0),
            };
            let Ok(json) = serde_json::to_string(&snapshot) else {
                break;
            };
            let event = Bytes::from(format!("event: snapshot\ndata: {json}\n\n"));
            if tx.send(event).await.is_err() {
                break;
            }
        }
    }
}
