//! Fair sharing between callers: the gateway serves every workload of every linked cluster,
//! and one caller identity must not be able to take all of it. Each identity gets a budget of
//! connections, of requests open at once and (optionally) of requests per second, set for
//! everyone and overridable per identity pattern. A connection over budget is refused after
//! its handshake; a request over budget gets 429 with `l5d-proxy-error`.
//!
//! State lives per identity only while it has connections, so the map is bounded by the
//! connections the gateway holds.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use identity::Identity;

use crate::{admission::CallerPattern, errors::ProxyError};

/// One caller identity's budget. `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
    pub requests_per_second: Option<f64>,
}

impl Limits {
    /// `self` where set, else `base`.
    fn over(self, base: Limits) -> Limits {
        Limits {
            max_connections: self.max_connections.or(base.max_connections),
            max_concurrent_requests: self
                .max_concurrent_requests
                .or(base.max_concurrent_requests),
            requests_per_second: self.requests_per_second.or(base.requests_per_second),
        }
    }
}

/// The budgets: the default, and overrides by identity pattern (first match wins).
#[derive(Debug)]
pub struct Quotas {
    default: Limits,
    overrides: Vec<(CallerPattern, Limits)>,
    callers: Mutex<HashMap<Identity, Arc<CallerState>>>,
}

/// What one identity is using now.
#[derive(Debug)]
pub struct CallerState {
    limits: Limits,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    /// Tokens and when they were last topped up; only with a rate.
    bucket: Option<Mutex<(f64, Instant)>>,
}

/// Which budget a refusal came from: the `limit` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Connections,
    ConcurrentRequests,
    Rate,
}

impl Exceeded {
    pub fn label(self) -> &'static str {
        match self {
            Exceeded::Connections => "connections",
            Exceeded::ConcurrentRequests => "concurrent_requests",
            Exceeded::Rate => "rate",
        }
    }
}

impl Quotas {
    pub fn new(default: Limits, overrides: Vec<(CallerPattern, Limits)>) -> Self {
        Self {
            default,
            overrides,
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// A new connection from `id`, or why it is over budget.
    pub fn connect(self: &Arc<Self>, id: &Identity) -> Result<CallerQuota, Exceeded> {
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        let state = callers
            .entry(id.clone())
            .or_insert_with(|| Arc::new(CallerState::new(self.limits_for(id))))
            .clone();
        let open = state.connections.load(Ordering::Relaxed);
        if state.limits.max_connections.is_some_and(|max| open >= max) {
            return Err(Exceeded::Connections);
        }
        state.connections.fetch_add(1, Ordering::Relaxed);
        Ok(CallerQuota {
            quotas: self.clone(),
            id: id.clone(),
            state,
        })
    }

    fn limits_for(&self, id: &Identity) -> Limits {
        self.overrides
            .iter()
            .find(|(p, _)| p.matches(id))
            .map(|(_, l)| l.over(self.default))
            .unwrap_or(self.default)
    }

    /// Identities with connections now.
    #[cfg(test)]
    fn callers(&self) -> usize {
        self.callers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl CallerState {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            bucket: limits
                .requests_per_second
                .map(|rps| Mutex::new((rps.max(1.0), Instant::now()))),
        }
    }
}

/// One connection's share of its caller's budget; dropping it gives the connection back.
#[derive(Debug)]
pub struct CallerQuota {
    quotas: Arc<Quotas>,
    id: Identity,
    state: Arc<CallerState>,
}

impl CallerQuota {
    /// A request begins; the permit is returned when the response has been sent.
    pub fn request(&self) -> Result<Option<RequestPermit>, Exceeded> {
        let s = &self.state;
        if let (Some(bucket), Some(rps)) = (&s.bucket, s.limits.requests_per_second) {
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Refilled at the rate, holding at most one second's worth.
            let burst = rps.max(1.0);
            b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rps).min(burst);
            b.1 = now;
            if b.0 < 1.0 {
                return Err(Exceeded::Rate);
            }
            b.0 -= 1.0;
        }
        let Some(max) = s.limits.max_concurrent_requests else {
            return Ok(None);
        };
        // Taken, then checked: concurrent requests of one caller may overshoot by the
        // number racing here, never undershoot.
        if s.in_flight.fetch_add(1, Ordering::Relaxed) >= max {
            s.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(Exceeded::ConcurrentRequests);
        }
        Ok(Some(RequestPermit(s.clone())))
    }
}

impl Drop for CallerQuota {
    fn drop(&mut self) {
        let mut callers = self
            .quotas
            .callers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.state.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
            // The caller's last connection: forget it, unless a new one raced in.
            if callers
                .get(&self.id)
                .is_some_and(|s| s.connections.load(Ordering::Relaxed) == 0)
            {
                callers.remove(&self.id);
            }
        }
    }
}

/// One open request of a caller.
#[derive(Debug)]
pub struct RequestPermit(Arc<CallerState>);

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl From<Exceeded> for ProxyError {
    fn from(e: Exceeded) -> Self {
        match e {
            Exceeded::Connections => ProxyError::CallerConnections,
            Exceeded::ConcurrentRequests | Exceeded::Rate => ProxyError::TooManyRequests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        Identity::parse(&format!(
            "{s}.ns.serviceaccount.identity.linkerd.cluster.local"
        ))
        .unwrap()
    }

    #[test]
    fn budgets_per_identity_with_overrides_and_state_only_while_connected() {
        let quotas = Arc::new(Quotas::new(
            Limits {
                max_connections: Some(2),
                max_concurrent_requests: Some(1),
                requests_per_second: None,
            },
            vec![(
                CallerPattern::parse("*.ns.serviceaccount.identity.linkerd.cluster.local").unwrap(),
                Limits {
                    max_connections: None,
                    max_concurrent_requests: Some(3),
                    requests_per_second: None,
                },
            )],
        ));
        let a = id("a");
        let c1 = quotas.connect(&a).unwrap();
        let c2 = quotas.connect(&a).unwrap();
        assert_eq!(quotas.connect(&a).unwrap_err(), Exceeded::Connections);
        // Another caller has its own budget.
        let b = quotas.connect(&id("b")).unwrap();
        // The override raised concurrent requests to 3 and kept the default connections.
        let held: Vec<_> = (0..3).map(|_| c1.request().unwrap()).collect();
        assert_eq!(c2.request().unwrap_err(), Exceeded::ConcurrentRequests);
        assert!(b.request().is_ok());
        drop(held);
        assert!(c2.request().is_ok());
        assert_eq!(quotas.callers(), 2);
        drop((c1, c2, b));
        assert_eq!(quotas.callers(), 0);
    }

    #[test]
    fn rate_is_a_token_bucket_of_one_second() {
        let quotas = Arc::new(Quotas::new(
            Limits {
                requests_per_second: Some(5.0),
                ..Limits::default()
            },
            vec![],
        ));
        let c = quotas.connect(&id("a")).unwrap();
        let ok = (0..20).filter(|_| c.request().is_ok()).count();
        assert_eq!(ok, 5);
        std::thread::sleep(std::time::Duration::from_millis(450));
        let ok = (0..20).filter(|_| c.request().is_ok()).count();
        assert!((2..=3).contains(&ok), "{ok}");
    }
}
