//! Endpoints from `linkerd-destination`: one watch per service name, shared by every request
//! and connection that routes there, kept current by updates, reopened with backoff when it
//! breaks (the last endpoints keep serving, marked stale), and closed once nobody has used the
//! service for a while.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use control::{Change, DestinationError, Discovered, Resolver};
use metrics::{counter, gauge};

use crate::{
    authority::Authority,
    errors::ProxyError,
    routing::{Balancer, Endpoint, EndpointMeta, Protocol, Target},
};

/// How long a new name's first answer may take before the request gives up.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Reopening a broken watch: the first pause and the longest.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A watch nobody has used for about this long is closed.
const IDLE_SWEEP: Duration = Duration::from_secs(30);
/// Most names watched at once: each is a stream from the control plane and a target.
const MAX_WATCHES: usize = 4096;

/// The watched services.
pub struct Discovery {
    resolver: Resolver,
    balancer: Balancer,
    watches: Mutex<HashMap<Authority, Entry>>,
}

struct Entry {
    target: Arc<Target>,
    /// Sweeps in a row that found the target used by nobody but this map.
    idle_sweeps: u8,
    task: tokio::task::AbortHandle,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery {
    /// Inside a Tokio runtime this also starts the sweeper that closes unused watches.
    pub fn new(resolver: Resolver, balancer: Balancer) -> Arc<Self> {
        let this = Arc::new(Self {
            resolver,
            balancer,
            watches: Mutex::new(HashMap::new()),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&this)));
        }
        this
    }

    /// The target for a cluster service name, watched from now on. A name asked for the
    /// first time waits for the control plane's first answer: a service it does not know is
    /// `bad gateway domain`, as with Linkerd's gateway.
    pub async fn target(&self, authority: &Authority) -> Result<Arc<Target>, ProxyError> {
        let (target, new) = {
            let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            match watches.get_mut(authority) {
                Some(e) => {
                    e.idle_sweeps = 0;
                    (e.target.clone(), false)
                }
                None => {
                    if watches.len() >= MAX_WATCHES {
                        // Make room from names nobody holds that never answered; names that
                        // did, or that requests are using, stay.
                        watches.retain(|_, e| {
                            Arc::strong_count(&e.target) > 1 || e.target.metric_name().is_some()
                        });
                        if watches.len() >= MAX_WATCHES {
                            return Err(ProxyError::NameLimit);
                        }
                    }
                    let target = Arc::new(Target::watched(
                        authority.clone(),
                        Protocol::Http1,
                        self.balancer,
                    )?);
                    let task = tokio::spawn(watch(
                        self.resolver.clone(),
                        authority.clone(),
                        Arc::downgrade(&target),
                    ))
                    .abort_handle();
                    watches.insert(
                        authority.clone(),
                        Entry {
                            target: target.clone(),
                            idle_sweeps: 0,
                            task,
                        },
                    );
                    gauge!("destination_watches").set(watches.len() as f64);
                    (target, true)
                }
            }
        };
        if new {
            // No answer in time: the watch goes on, and the request is subject to the
            // target's fail-fast like any other.
            let _ = tokio::time::timeout(FIRST_ANSWER_TIMEOUT, target.resolved()).await;
        }
        if target.is_missing() {
            self.forget(authority);
            return Err(ProxyError::BadDomain);
        }
        Ok(target)
    }

    fn forget(&self, authority: &Authority) {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.remove(authority);
        gauge!("destination_watches").set(watches.len() as f64);
    }
}

/// Closes watches whose target only this map holds, two sweeps in a row.
async fn sweep(discovery: Weak<Discovery>) {
    let mut tick = tokio::time::interval(IDLE_SWEEP / 2);
    loop {
        tick.tick().await;
        let Some(d) = discovery.upgrade() else {
            return;
        };
        let mut watches = d.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.retain(|name, e| {
            if Arc::strong_count(&e.target) > 1 {
                e.idle_sweeps = 0;
                return true;
            }
            e.idle_sweeps += 1;
            let keep = e.idle_sweeps < 2;
            if !keep {
                tracing::debug!(target = %name, "closing an unused destination watch");
            }
            keep
        });
        gauge!("destination_watches").set(watches.len() as f64);
    }
}

/// Keeps `target`'s endpoints current until the target is gone.
async fn watch(resolver: Resolver, name: Authority, target: Weak<Target>) {
    let mut retry = RETRY_MIN;
    let mut stale = false;
    loop {
        let failure = match resolver.watch(name.as_str()).await {
            Err(e) => e,
            Ok(mut stream) => loop {
                let change = stream.next().await;
                let Some(t) = target.upgrade() else {
                    return;
                };
                match change {
                    Ok(change) => {
                        if stale {
                            tracing::info!(target = %name, "destination watch restored");
                            stale = false;
                        }
                        retry = RETRY_MIN;
                        apply(&t, change);
                    }
                    Err(e @ DestinationError::Invalid(_)) => {
                        counter!("destination_updates_refused_total").increment(1);
                        tracing::warn!(target = %name, reason = e.reason(), error = %e, "destination update refused; keeping the endpoints known so far");
                    }
                    Err(e) => break e,
                }
            },
        };
        let Some(t) = target.upgrade() else {
            return;
        };
        counter!("destination_stream_errors_total", "reason" => failure.reason()).increment(1);
        if let DestinationError::NoAnswer { redialed: true, .. } = failure {
            counter!("destination_redials_total").increment(1);
            tracing::info!(target = %name, "destination service connection replaced after a watch it left unanswered");
        }
        stale = true;
        tracing::warn!(
            target = %name, reason = failure.reason(), error = %failure, retry_in = ?retry,
            endpoints = t.endpoints().len(),
            "destination watch broken; serving the last known endpoints (stale) meanwhile"
        );
        drop(t);
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

fn meta(d: &Discovered) -> EndpointMeta {
    EndpointMeta {
        identity: d.identity.clone(),
        http2: d.http2,
        opaque_transport: d.opaque_transport,
        weight: d.weight,
        dst_labels: d
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Applies one update: endpoints whose address and metadata are unchanged keep their `Arc`
/// (and so their connections).
fn apply(target: &Target, change: Change) {
    let current = target.endpoints();
    let mut by_addr: HashMap<SocketAddr, Arc<Endpoint>> =
        current.iter().map(|e| (e.addr, e.clone())).collect();
    match change {
        Change::Add(added) => {
            for d in added {
                let m = meta(&d);
                let keep = by_addr.get(&d.addr).is_some_and(|e| e.meta == m);
                if !keep {
                    by_addr.insert(d.addr, Arc::new(Endpoint::new(d.addr, m)));
                }
            }
        }
        Change::Remove(removed) => {
            for a in removed {
                by_addr.remove(&a);
            }
        }
        Change::NoEndpoints { exists } => {
            by_addr.clear();
            if !exists {
                target.mark_missing();
            }
        }
    }
    let mut next: Vec<Arc<Endpoint>> = by_addr.into_values().collect();
    next.sort_by_key(|e| e.addr);
    tracing::debug!(target = %target.name, endpoints = next.len(), "endpoints updated");
    target.set_endpoints(next);
    target.mark_resolved();
}
