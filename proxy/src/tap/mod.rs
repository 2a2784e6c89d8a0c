//! Tap: live events for the requests a tapper selects, as Linkerd's proxies give them to
//! `linkerd viz tap` (`io.linkerd.proxy.tap.Tap/Observe`, served by [`server`]) and to the
//! gateway's own dashboard.
//!
//! Cost: a request pays one relaxed atomic load while nobody taps ([`Taps::is_idle`]). Events
//! go through a bounded queue per tap: a tapper that reads slowly loses events (counted in
//! `gateway_tap_events_dropped_total`), it never slows traffic.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use http::HeaderMap;
use identity::Identity;
use linkerd2_proxy_api::{
    http_types,
    net::TcpAddress,
    tap::{
        eos,
        tap_event::{self, http as th},
        Eos, TapEvent,
    },
};
use tokio::sync::mpsc;

use crate::routing::Endpoint;

mod matcher;
pub mod server;

pub use matcher::{Match, MatchError};

/// Events queued per tap before new ones are dropped.
pub const QUEUE: usize = 1024;
/// Taps open at once; the tap controller opens one per `viz tap` command.
pub const MAX_TAPS: usize = 64;

/// A request the tap sees, after it was routed and given an endpoint.
pub struct TapRequest<'a> {
    pub source: SocketAddr,
    pub client_id: &'a Identity,
    pub endpoint: &'a Arc<Endpoint>,
    /// The routed service's name.
    pub authority: &'a str,
    /// The request as the caller sent it.
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
}

/// The open taps.
#[derive(Default)]
pub struct Taps {
    /// How many are open: the one thing a request reads while none is.
    active: AtomicUsize,
    sessions: Mutex<Vec<Arc<Session>>>,
    next_id: AtomicU32,
}

/// One tapper's selection and queue.
pub struct Session {
    id: u32,
    matcher: Option<Match>,
    /// Whether events carry request and response headers (`extract`).
    headers: bool,
    /// Requests still to select; `None`: until the tapper goes (the dashboard).
    remaining: Option<AtomicU32>,
    streams: AtomicU64,
    tx: mpsc::Sender<TapEvent>,
    /// Shared with the tapper's guard, which reports it.
    dropped: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("tap limit must be at least 1")]
    NoLimit,
    #[error("{MAX_TAPS} taps are open already")]
    TooMany,
}

impl Session {
    /// Takes one of the remaining selections, if any are left.
    fn take(&self) -> bool {
        match &self.remaining {
            None => true,
            Some(r) => r
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    fn exhausted(&self) -> bool {
        self.remaining
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Acquire) == 0)
    }

    fn send(&self, event: TapEvent) {
        if self.tx.try_send(event).is_err() {
            self.lost(1);
        }
    }

    /// Whether the queue has no room: the event is not even built.
    fn full(&self) -> bool {
        self.tx.capacity() == 0
    }

    fn lost(&self, events: u64) {
        self.dropped.fetch_add(events, Ordering::Relaxed);
        metrics::counter!("gateway_tap_events_dropped_total").increment(events);
    }
}

/// Events one request gives a tap: request init, response init, response end.
const EVENTS_PER_REQUEST: usize = 3;

/// Closes its tap when the tapper's stream goes away.
pub struct TapGuard {
    taps: Arc<Taps>,
    id: u32,
    dropped: Arc<AtomicU64>,
}

impl TapGuard {
    /// Events this tap lost to a full queue.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        self.taps.close(self.id);
    }
}

impl Taps {
    /// Whether no tap is open: the request path's only cost while nobody taps.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0
    }

    /// Opens a tap selecting `limit` requests (`None`: without end) that `matcher` selects.
    /// Its events arrive on the receiver; dropping the guard closes it.
    pub fn open(
        self: &Arc<Self>,
        limit: Option<u32>,
        matcher: Option<Match>,
        headers: bool,
    ) -> Result<(mpsc::Receiver<TapEvent>, TapGuard), OpenError> {
        if limit == Some(0) {
            return Err(OpenError::NoLimit);
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= MAX_TAPS {
            return Err(OpenError::TooMany);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        sessions.push(Arc::new(Session {
            id,
            matcher,
            headers,
            remaining: limit.map(AtomicU32::new),
            streams: AtomicU64::new(0),
            tx,
            dropped: dropped.clone(),
        }));
        self.active.store(sessions.len(), Ordering::Relaxed);
        Ok((
            rx,
            TapGuard {
                taps: self.clone(),
                id,
                dropped,
            },
        ))
    }

    fn close(&self, id: u32) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|s| s.id != id);
        self.active.store(sessions.len(), Ordering::Relaxed);
    }

    /// Offers a request to the open taps; `Some` when one selected it (its request-init
    /// event has been queued).
    pub fn observe(&self, r: &TapRequest<'_>) -> Option<Box<Tapped>> {
        let open: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut sinks = Vec::new();
        for s in open {
            if !s.matcher.as_ref().is_none_or(|m| m.matches(r)) {
                continue;
            }
            // A tap without a limit (the dashboard) whose reader is behind skips the request
            // whole: while it catches up, requests cost it nothing but this check.
            if s.remaining.is_none() && s.tx.capacity() < EVENTS_PER_REQUEST {
                s.lost(EVENTS_PER_REQUEST as u64);
                continue;
            }
            if s.take() {
                let stream = s.streams.fetch_add(1, Ordering::Relaxed);
                if s.exhausted() {
                    // Its last request: no new ones, and its stream ends once the requests
                    // it holds have ended (they hold the last references to its queue).
                    self.close(s.id);
                }
                sinks.push((s, stream));
            }
        }
        if sinks.is_empty() {
            return None;
        }
        let tapped = Box::new(Tapped::new(r, sinks));
        tapped.request_init(r);
        Some(tapped)
    }
}

/// A request some taps selected: what their later events need.
pub struct Tapped {
    sinks: Vec<(Arc<Session>, u64)>,
    /// Addresses and labels, the same on each of the request's events.
    base: TapEvent,
    request_init: Instant,
    response_init: Option<Instant>,
    trailers: Option<HeaderMap>,
}

fn tcp(addr: SocketAddr) -> TcpAddress {
    TcpAddress {
        ip: Some(addr.ip().into()),
        port: u32::from(addr.port()),
    }
}

fn header_list(h: &HeaderMap) -> http_types::Headers {
    http_types::Headers {
        headers: h
            .iter()
            .map(|(k, v)| http_types::headers::Header {
                name: k.as_str().to_string(),
                value: v.as_bytes().to_vec(),
            })
            .collect(),
    }
}

fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

impl Tapped {
    fn new(r: &TapRequest<'_>, sinks: Vec<(Arc<Session>, u64)>) -> Self {
        let source_meta = HashMap::from([
            ("tls".to_string(), "true".to_string()),
            ("client_id".to_string(), r.client_id.as_str().to_string()),
        ]);
        let mut dst: HashMap<String, String> = r.endpoint.meta.dst_labels.iter().cloned().collect();
        match &r.endpoint.meta.identity {
            Some(id) => {
                dst.insert("tls".into(), "true".into());
                dst.insert("server_id".into(), id.as_str().to_string());
            }
            None => {
                dst.insert("tls".into(), "no_identity".into());
                dst.insert(
                    "no_tls_reason".into(),
                    "not_provided_by_service_discovery".into(),
                );
            }
        }
        Self {
            sinks,
            base: TapEvent {
                source: Some(tcp(r.source)),
                source_meta: Some(tap_event::EndpointMeta {
                    labels: source_meta,
                }),
                route_meta: None,
                destination: Some(tcp(r.endpoint.addr)),
                destination_meta: Some(tap_event::EndpointMeta { labels: dst }),
                // The gateway's forwarding side: the event describes its call to the service.
                proxy_direction: tap_event::ProxyDirection::Outbound as i32,
                event: None,
            },
            request_init: Instant::now(),
            response_init: None,
            trailers: None,
        }
    }

    /// Sends one event to every tap that selected the request; `with_headers` builds the
    /// event for a tap that asked for headers, `without` for one that did not.
    fn emit(&self, make: impl Fn(th::StreamId, bool) -> th::Event) {
        for (s, stream) in &self.sinks {
            if s.full() {
                s.lost(1);
                continue;
            }
            let id = th::StreamId {
                base: s.id,
                stream: *stream,
            };
            let mut ev = self.base.clone();
            ev.event = Some(tap_event::Event::Http(tap_event::Http {
                event: Some(make(id, s.headers)),
            }));
            s.send(ev);
        }
    }

    fn request_init(&self, r: &TapRequest<'_>) {
        let scheme = r
            .uri
            .scheme()
            .map(http_types::Scheme::from)
            .unwrap_or_else(|| http_types::Scheme::from("https"));
        let path = r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        self.emit(|id, headers| {
            th::Event::RequestInit(th::RequestInit {
                id: Some(id),
                method: Some(r.method.clone().into()),
                scheme: Some(scheme.clone()),
                authority: r.authority.to_string(),
                path: path.to_string(),
                headers: headers.then(|| header_list(r.headers)),
            })
        });
    }

    pub fn response_init(&mut self, status: u16, headers: &HeaderMap) {
        let now = Instant::now();
        self.response_init = Some(now);
        let since = duration(now - self.request_init);
        self.emit(|id, with| {
            th::Event::ResponseInit(th::ResponseInit {
                id: Some(id),
                since_request_init: Some(since),
                http_status: u32::from(status),
                headers: with.then(|| header_list(headers)),
            })
        });
    }

    pub fn trailers(&mut self, trailers: &HeaderMap) {
        if self.sinks.iter().any(|(s, _)| s.headers) {
            self.trailers = Some(trailers.clone());
        }
    }

    /// `error`: the response stopped short (reported as a stream reset).
    pub fn response_end(&mut self, bytes: u64, grpc_status: Option<u32>, error: Option<&str>) {
        let now = Instant::now();
        let since_req = duration(now - self.request_init);
        let since_resp = duration(now - self.response_init.unwrap_or(now));
        let eos = match (error, grpc_status) {
            // INTERNAL_ERROR for a failed body, CANCEL for a caller that went away.
            (Some(e), _) if e == crate::exchange::CALLER_CANCELLED => Some(Eos {
                end: Some(eos::End::ResetErrorCode(0x8)),
            }),
            (Some(_), _) => Some(Eos {
                end: Some(eos::End::ResetErrorCode(0x2)),
            }),
            (None, Some(g)) => Some(Eos::from_grpc_status(g)),
            (None, None) => None,
        };
        let trailers = self.trailers.take();
        self.emit(|id, with| {
            th::Event::ResponseEnd(th::ResponseEnd {
                id: Some(id),
                since_request_init: Some(since_req),
                since_response_init: Some(since_resp),
                response_bytes: bytes,
                eos,
                trailers: if with {
                    trailers.as_ref().map(header_list)
                } else {
                    None
                },
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::EndpointMeta;
    use linkerd2_proxy_api::tap::observe_request::{
        self,
        r#match::{self as pm, http as ph},
    };

    fn endpoint() -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            "10.1.2.3:8080".parse().unwrap(),
            EndpointMeta {
                dst_labels: vec![("service".into(), "web-svc".into())],
                ..Default::default()
            },
        ))
    }

    fn offer(taps: &Taps, endpoint: &Arc<Endpoint>, path: &str) -> Option<Box<Tapped>> {
        let id =
            Identity::parse("vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local")
                .unwrap();
        let uri: http::Uri = path.parse().unwrap();
        taps.observe(&TapRequest {
            source: "192.0.2.1:40000".parse().unwrap(),
            client_id: &id,
            endpoint,
            authority: "web-svc.emojivoto.svc.cluster.local:80",
            method: &http::Method::GET,
            uri: &uri,
            headers: &HeaderMap::new(),
        })
    }

    fn m(inner: pm::Match) -> observe_request::Match {
        observe_request::Match {
            r#match: Some(inner),
        }
    }

    #[tokio::test]
    async fn matches_select_and_the_limit_is_exact() {
        let taps = Arc::new(Taps::default());
        let ep = endpoint();
        assert!(taps.is_idle());
        let label = m(pm::Match::DestinationLabel(pm::Label {
            key: "service".into(),
            value: "web-svc".into(),
        }));
        let not_api = m(pm::Match::Not(Box::new(m(pm::Match::Http(pm::Http {
            r#match: Some(ph::Match::Path(ph::StringMatch {
                r#match: Some(ph::string_match::Match::Prefix("/api".into())),
            })),
        })))));
        let both = m(pm::Match::All(pm::Seq {
            matches: vec![label, not_api],
        }));
        let (mut rx, guard) = taps
            .open(Some(2), Match::compile(Some(both)).unwrap(), false)
            .unwrap();
        assert!(!taps.is_idle());
        assert!(offer(&taps, &ep, "/api/list").is_none(), "excluded by path");
        let a = offer(&taps, &ep, "/a").expect("selected");
        let b = offer(&taps, &ep, "/b").expect("selected");
        // The limit is reached: the tap takes nothing more and no longer costs requests.
        assert!(offer(&taps, &ep, "/c").is_none());
        assert!(taps.is_idle());
        drop((a, b));
        let mut inits = 0;
        while let Some(e) = rx.recv().await {
            inits += 1;
            assert_eq!(e.destination_meta.unwrap().labels["service"], "web-svc");
        }
        assert_eq!(inits, 2, "one request-init each, then the stream ends");
        assert_eq!(guard.dropped(), 0);
    }

    #[test]
    fn a_slow_tapper_loses_events_and_nothing_waits() {
        let taps = Arc::new(Taps::default());
        let ep = endpoint();
        let (_rx, guard) = taps.open(None, None, false).unwrap();
        let mut selected = 0;
        for _ in 0..QUEUE + 100 {
            if let Some(mut t) = offer(&taps, &ep, "/") {
                selected += 1;
                t.response_init(200, &HeaderMap::new());
                t.response_end(10, None, None);
            }
        }
        // Three events a request, nobody reading: the whole requests that fit in the queue
        // are kept; once it is full, requests are skipped before any event is built.
        assert_eq!(selected, QUEUE / EVENTS_PER_REQUEST);
        assert_eq!(
            guard.dropped(),
            (EVENTS_PER_REQUEST * (QUEUE + 100 - selected)) as u64
        );
        drop(guard);
        assert!(taps.is_idle());
        assert!(offer(&taps, &ep, "/").is_none());
    }
}
