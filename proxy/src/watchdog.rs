//! Idle and stalled caller connections: each connection's [`Activity`] is updated where the
//! work happens (bytes in [`crate::io::CountingIo`], requests in the HTTP server) with a
//! relaxed atomic and no clock, and one timer per connection ([`watch`]) reads it now and
//! then, so the hot path pays nothing for the bound.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

/// How long a caller's connection may sit idle, per kind, and how long a write to it may
/// wait on a reader that does not read.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// HTTP/1.1 keep-alive connections between requests.
    pub http1_idle: Duration,
    /// HTTP/2 connections with no stream open (PINGs do not count).
    pub http2_idle: Duration,
    /// Opaque streams and upgraded tunnels with no byte either way.
    pub opaque_idle: Duration,
    /// A write to the caller that cannot proceed.
    pub write_stall: Duration,
}

/// What a connection has been doing.
#[derive(Debug)]
pub struct Activity {
    /// Base of `write_blocked_since`.
    epoch: Instant,
    /// Bytes moved either way on the caller's socket.
    bytes: AtomicU64,
    /// HTTP requests begun, and those not yet answered.
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// When a write to the caller first could not proceed (ms since `epoch`, plus one), or 0
    /// while writes go through.
    write_blocked_since: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            write_blocked_since: AtomicU64::new(0),
        }
    }
}

impl Activity {
    pub fn moved(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A write to the caller returned `Pending` (its receive window or socket buffer is
    /// full). Only the first of a run reads the clock.
    pub fn write_blocked(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) == 0 {
            let ms = self.epoch.elapsed().as_millis() as u64 + 1;
            self.write_blocked_since.store(ms, Ordering::Relaxed);
        }
    }

    /// A write went through.
    pub fn write_unblocked(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// A request begins; it is open until the returned guard is dropped, which the gateway
    /// does when the response body has been sent (or the request refused).
    pub fn open_request(self: &Arc<Self>) -> OpenRequest {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        OpenRequest(self.clone())
    }

    fn blocked_for(&self, now: Instant) -> Option<Duration> {
        match self.write_blocked_since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.epoch + Duration::from_millis(ms - 1))),
        }
    }
}

/// A request (with its response body) still being served.
#[derive(Debug)]
pub struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What counts as activity, and for how long its absence is tolerated.
#[derive(Debug, Clone, Copy)]
pub enum Idle {
    /// An HTTP connection is idle while no request is open and none begins (PINGs and other
    /// frames do not count: Linkerd peers PING every 10 s).
    Requests(Duration),
    /// A byte stream is idle while no byte moves either way.
    Bytes(Duration),
}

/// Why [`watch`] gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Idle,
    /// The caller has not taken a byte for the stall timeout while the gateway had some to
    /// send: a reader that does not read.
    WriteStalled,
}

impl Verdict {
    /// The `reason` label and log field.
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Idle => "idle",
            Verdict::WriteStalled => "write stalled",
        }
    }
}

/// Resolves when the connection has been idle (per `idle`) or its writes have been stalled
/// for `stall`. Checks a few times per timeout, never more than every 250 ms.
pub async fn watch(activity: &Activity, idle: Idle, stall: Duration) -> Verdict {
    let idle_for = match idle {
        Idle::Requests(d) | Idle::Bytes(d) => d,
    };
    let period = (idle_for.min(stall) / 4).max(Duration::from_millis(250));
    let progress = || match idle {
        Idle::Requests(_) => activity.requests.load(Ordering::Relaxed),
        Idle::Bytes(_) => activity.bytes.load(Ordering::Relaxed),
    };
    let busy = || match idle {
        Idle::Requests(_) => activity.in_flight.load(Ordering::Relaxed) > 0,
        Idle::Bytes(_) => false,
    };
    let mut seen = progress();
    // When quiet was first seen (a tick's time, so a connection is never closed before it
    // has been quiet for the whole timeout; at most one period after).
    let mut quiet_since = Some(Instant::now());
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if activity.blocked_for(now).is_some_and(|d| d >= stall) {
            return Verdict::WriteStalled;
        }
        let p = progress();
        if p != seen || busy() {
            seen = p;
            quiet_since = None;
            continue;
        }
        let since = *quiet_since.get_or_insert(now);
        if now.duration_since(since) >= idle_for {
            return Verdict::Idle;
        }
    }
}

/// [`watch`] in a task of its own, read through a one-shot: the connection's own loop then
/// polls a cheap receiver on every wake-up instead of a timer (which cost HTTP/1.1 requests
/// about a tenth more instructions). The task ends with the connection (when this is dropped).
pub fn spawn(activity: Arc<Activity>, idle: Idle, stall: Duration) -> Watch {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = tx;
        tokio::select! {
            v = watch(&activity, idle, stall) => {
                let _ = tx.send(v);
            }
            _ = tx.closed() => {}
        }
    });
    Watch(rx)
}

/// The verdict of a spawned watchdog; pending for ever if it has none.
pub struct Watch(tokio::sync::oneshot::Receiver<Verdict>);

impl std::future::Future for Watch {
    type Output = Verdict;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Verdict> {
        match std::pin::Pin::new(&mut self.0).poll(cx) {
            std::task::Poll::Ready(Ok(v)) => std::task::Poll::Ready(v),
            _ => std::task::Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_requests_not_frames_and_open_requests_keep_it_busy() {
        let a = Arc::new(Activity::default());
        let idle = Idle::Requests(Duration::from_secs(10));
        let stall = Duration::from_secs(60);
        let start = Instant::now();
        // Bytes alone (PINGs) do not keep an HTTP connection busy.
        a.moved(17);
        assert_eq!(watch(&a, idle, stall).await, Verdict::Idle);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(14),
            "{waited:?}"
        );
        // An open request does, however long it takes.
        let guard = a.open_request();
        let r = tokio::time::timeout(Duration::from_secs(100), watch(&a, idle, stall)).await;
        assert!(r.is_err(), "idle while a request was open");
        drop(guard);
        assert_eq!(watch(&a, idle, stall).await, Verdict::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_keep_a_stream_alive_and_a_blocked_writer_is_stalled() {
        let a = Activity::default();
        let idle = Idle::Bytes(Duration::from_secs(10));
        let stall = Duration::from_secs(5);
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                a.moved(1);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        tokio::select! {
            v = watch(&a, idle, stall) => panic!("gave up on a live stream: {v:?}"),
            _ = r => {}
        }
        a.write_blocked();
        let start = Instant::now();
        assert_eq!(watch(&a, idle, stall).await, Verdict::WriteStalled);
        assert!(start.elapsed() >= Duration::from_secs(5));
        a.write_unblocked();
        assert_eq!(a.blocked_for(Instant::now()), None);
    }
}
