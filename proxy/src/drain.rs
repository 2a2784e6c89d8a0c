//! Shutdown in two steps, shared by every listener and every connection kind.
//!
//! 1. *Draining* (SIGTERM): listeners stop accepting; HTTP connections finish the requests in
//!    flight and close (HTTP/2 callers get GOAWAY); opaque streams and upgraded tunnels go on,
//!    since they have no request boundary to stop at.
//! 2. *Closing* (the drain deadline): whatever is still open is closed cleanly, each side of a
//!    stream shut down (FIN, and TLS close_notify towards the caller), counted in
//!    `gateway_drain_closed_total{kind}`.
//!
//! Every connection task and every tunnel task is spawned through [`Drain::spawn`], so the
//! drain knows when the last one has ended.

use std::{
    future::Future,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio_util::{
    sync::{CancellationToken, WaitForCancellationFuture},
    task::TaskTracker,
};

use crate::watchdog::Verdict;

/// How long connections get to finish closing once the deadline has passed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The process-wide shutdown state. Cheap to clone: each clone is a handle to the same state.
#[derive(Clone, Default)]
pub struct Drain {
    /// Cancelled at SIGTERM.
    draining: CancellationToken,
    /// Cancelled at the drain deadline.
    closing: CancellationToken,
    /// Set just before each token is cancelled: read on every poll of a [`Signal`] instead of
    /// the token's own state, which sits behind a mutex that every connection would take on
    /// every wake-up.
    draining_set: Arc<AtomicBool>,
    closing_set: Arc<AtomicBool>,
    /// Every connection and tunnel task, so the drain can wait for the last.
    tasks: TaskTracker,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection ended by itself before the deadline.
    Clean,
    /// The deadline passed; this many tasks were still open and were closed.
    Closed { open: usize },
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `fut` as a tracked task: the drain waits for it.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// Resolves when draining has begun.
    pub fn draining(&self) -> Signal<'_> {
        Signal::new(&self.draining_set, self.draining.cancelled())
    }

    pub fn is_draining(&self) -> bool {
        self.draining_set.load(Ordering::Acquire)
    }

    /// Resolves when the drain deadline has passed and what is open must close now.
    pub fn closing(&self) -> Signal<'_> {
        Signal::new(&self.closing_set, self.closing.cancelled())
    }

    /// Drives an HTTP server connection: once draining begins, `graceful` asks it to finish
    /// the requests in flight and close; at the deadline it is dropped (and counted under
    /// `kind`). `None` when it was cut at the deadline.
    pub async fn serve_http<C, T>(
        &self,
        kind: &'static str,
        conn: C,
        graceful: impl FnOnce(Pin<&mut C>),
    ) -> Option<T>
    where
        C: Future<Output = T>,
    {
        match self
            .serve_http_watched(kind, conn, graceful, std::future::pending())
            .await
        {
            HttpServed::Finished(r) => Some(r),
            HttpServed::ClosedByDrain | HttpServed::Closed(_) => None,
        }
    }

    /// [`Drain::serve_http`] with a watchdog: an idle connection is closed gracefully (in
    /// flight nothing, so at once; given `IDLE_CLOSE_GRACE` at most), a stalled one dropped.
    pub async fn serve_http_watched<C, T>(
        &self,
        kind: &'static str,
        conn: C,
        graceful: impl FnOnce(Pin<&mut C>),
        watch: impl Future<Output = Verdict>,
    ) -> HttpServed<T>
    where
        C: Future<Output = T>,
    {
        let mut conn = pin!(conn);
        let idle = tokio::select! {
            r = conn.as_mut() => return HttpServed::Finished(r),
            _ = self.draining() => {
                graceful(conn.as_mut());
                false
            }
            v = watch => match v {
                Verdict::Idle => {
                    graceful(conn.as_mut());
                    true
                }
                Verdict::WriteStalled => return HttpServed::Closed(v),
            },
        };
        let grace = async {
            if idle {
                tokio::time::sleep(IDLE_CLOSE_GRACE).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            r = conn.as_mut() => if idle { HttpServed::Closed(Verdict::Idle) } else { HttpServed::Finished(r) },
            _ = self.closing() => {
                crate::metrics::drain_closed(kind);
                HttpServed::ClosedByDrain
            }
            _ = grace => HttpServed::Closed(Verdict::Idle),
        }
    }

    /// Tasks still running.
    pub fn open(&self) -> usize {
        self.tasks.len()
    }

    /// Begins draining, waits up to `deadline` for every task, then tells the rest to close
    /// and gives them a moment to do it cleanly.
    pub async fn run(self, deadline: Duration) -> Drained {
        self.draining_set.store(true, Ordering::Release);
        self.draining.cancel();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            return Drained::Clean;
        }
        let open = self.tasks.len();
        self.closing_set.store(true, Ordering::Release);
        self.closing.cancel();
        if tokio::time::timeout(CLOSE_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_open = self.tasks.len(),
                "connections did not close within {CLOSE_GRACE:?} of the drain deadline"
            );
        }
        Drained::Closed { open }
    }
}

/// How an HTTP connection served by [`Drain::serve_http_watched`] ended.
#[derive(Debug)]
pub enum HttpServed<T> {
    /// The connection ended by itself (or finished after draining began).
    Finished(T),
    /// Still open at the drain deadline, and dropped.
    ClosedByDrain,
    /// Closed by its watchdog: gracefully when idle, dropped when stalled.
    Closed(Verdict),
}

/// How long an idle connection asked to close may take to do it.
pub const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// A drain step as a future that costs one atomic load per poll once its task is registered
/// for the wake-up: connections and streams poll it beside their I/O on every wake-up.
pub struct Signal<'a> {
    set: &'a AtomicBool,
    wait: Pin<Box<WaitForCancellationFuture<'a>>>,
    /// The waker registered with `wait`; polled again only for a different one.
    registered: Option<Waker>,
}

impl<'a> Signal<'a> {
    fn new(set: &'a AtomicBool, wait: WaitForCancellationFuture<'a>) -> Self {
        Self {
            set,
            wait: Box::pin(wait),
            registered: None,
        }
    }
}

impl Future for Signal<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The flag is set before the token is cancelled, and cancelling wakes the registered
        // waker, so a poll after the wake-up sees the flag.
        if self.set.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let fresh = self
            .registered
            .as_ref()
            .is_none_or(|w| !w.will_wake(cx.waker()));
        if fresh {
            if self.wait.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.registered = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clean_when_tasks_end_and_closed_at_the_deadline() {
        let drain = Drain::new();
        let d = drain.clone();
        drain.spawn(async move { d.draining().await });
        assert_eq!(
            drain.clone().run(Duration::from_secs(5)).await,
            Drained::Clean
        );

        let drain = Drain::new();
        let d = drain.clone();
        // A tunnel: ignores draining, ends only when told to close.
        drain.spawn(async move { d.closing().await });
        let started = tokio::time::Instant::now();
        let outcome = drain.clone().run(Duration::from_millis(100)).await;
        assert_eq!(outcome, Drained::Closed { open: 1 });
        assert_eq!(drain.open(), 0);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_registered_signal_wakes_when_draining_begins() {
        let drain = Drain::new();
        let d = drain.clone();
        let waiter = tokio::spawn(async move {
            let mut signal = std::pin::pin!(d.draining());
            // Polled (and registered) many times before draining begins.
            for _ in 0..3 {
                assert!(futures_poll_once(signal.as_mut()).await.is_pending());
            }
            signal.await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drain.is_draining());
        tokio::time::timeout(Duration::from_secs(5), async {
            let run = drain.clone().run(Duration::from_millis(10));
            let (_, w) = tokio::join!(run, waiter);
            w.unwrap();
        })
        .await
        .expect("the signal never fired");
        assert!(drain.is_draining());
    }

    async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}
