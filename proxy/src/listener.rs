//! One accept loop for every server the binaries run (4143, 4191, the outbound proxy): bind,
//! accept with a connection permit, back off on resource exhaustion, stop when draining.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
};

use crate::{drain::Drain, errors::ConnError, metrics};

/// First and longest pause after the kernel refuses an accept for lack of resources.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A bound server socket with its connection budget.
pub struct Listener {
    tcp: TcpListener,
    /// For logs and the `listener` metric label: `gateway`, `admin`, `outbound`.
    name: &'static str,
    max_connections: usize,
    permits: Arc<Semaphore>,
    /// Told whenever a connection ends: after running out of file descriptors, a connection
    /// closing is what frees one, so the loop retries then rather than only after a timer.
    released: Arc<Notify>,
}

/// A connection that got a permit; the permit goes back when this (or the task it moved
/// into) is dropped.
pub struct Accepted {
    pub tcp: TcpStream,
    pub peer: SocketAddr,
    pub permit: ConnPermit,
}

/// Holds one of the listener's connection slots.
pub struct ConnPermit {
    _permit: OwnedSemaphorePermit,
    released: Arc<Notify>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.released.notify_one();
    }
}

impl Listener {
    pub async fn bind(
        addr: SocketAddr,
        name: &'static str,
        max_connections: usize,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({name})"))?;
        Ok(Self {
            tcp,
            name,
            max_connections,
            permits: Arc::new(Semaphore::new(max_connections)),
            released: Arc::new(Notify::new()),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts until draining begins, running `serve` for each connection as a task the drain
    /// tracks. A connection over the budget is closed at once and counted.
    pub async fn run<S, F>(self, drain: Drain, serve: S)
    where
        S: Fn(Accepted) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let mut backoff = Backoff::default();
        loop {
            let accepted = tokio::select! {
                _ = drain.draining() => break,
                a = self.tcp.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => {
                    backoff.reset();
                    a
                }
                Err(e) => {
                    self.accept_failed(&e, &mut backoff, &drain).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                let refused = ConnError::AtLimit(self.max_connections);
                metrics::conn_error(&refused, self.name);
                tracing::warn!(listener = self.name, %peer, reason = refused.reason(), "{refused}");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            drain.spawn(serve(Accepted {
                tcp,
                peer,
                permit: ConnPermit {
                    _permit: permit,
                    released: self.released.clone(),
                },
            }));
        }
        tracing::info!(listener = self.name, "stopped accepting");
    }

    async fn accept_failed(&self, e: &io::Error, backoff: &mut Backoff, drain: &Drain) {
        let Some(pause) = backoff.after(e) else {
            // The failure belonged to one connection (aborted before we took it, and the
            // like): the next accept is unaffected.
            tracing::debug!(listener = self.name, error = %e, "accept failed");
            return;
        };
        if backoff.episode_start() {
            metrics::accept_backoff(self.name);
            tracing::warn!(
                listener = self.name, error = %e, open = self.max_connections - self.permits.available_permits(),
                "cannot accept: out of resources; retrying when a connection closes"
            );
        }
        tokio::select! {
            _ = self.released.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = drain.draining() => {}
        }
    }
}

/// The accept loop's pause after a resource error: doubling from [`BACKOFF_MIN`] to
/// [`BACKOFF_MAX`] while the errors last, cut short when a connection closes.
#[derive(Debug, Default)]
struct Backoff {
    current: Option<Duration>,
    since: Option<Instant>,
}

impl Backoff {
    /// The pause before the next accept, or `None` when `e` does not call for one.
    fn after(&mut self, e: &io::Error) -> Option<Duration> {
        if !is_resource_exhaustion(e) {
            return None;
        }
        let next = match self.current {
            None => BACKOFF_MIN,
            Some(d) => (d * 2).min(BACKOFF_MAX),
        };
        self.current = Some(next);
        Some(next)
    }

    /// True for the first error of a run of them (logged once, not per retry).
    fn episode_start(&mut self) -> bool {
        self.since
            .replace(self.since.unwrap_or_else(Instant::now))
            .is_none()
    }

    fn reset(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(after = ?since.elapsed(), "accepting again");
        }
        self.current = None;
    }
}

/// Errors that say the process or the system is out of something (descriptors, buffers,
/// memory), where accepting again at once would fail again.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_on_resource_errors_only() {
        let mut b = Backoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        let aborted = io::Error::from_raw_os_error(103);
        assert_eq!(b.after(&aborted), None);
        assert_eq!(b.after(&emfile), Some(BACKOFF_MIN));
        assert!(b.episode_start());
        assert_eq!(b.after(&emfile), Some(BACKOFF_MIN * 2));
        assert!(!b.episode_start());
        for _ in 0..20 {
            b.after(&emfile);
        }
        assert_eq!(b.after(&emfile), Some(BACKOFF_MAX));
        b.reset();
        assert_eq!(
            b.after(&io::Error::from_raw_os_error(23)),
            Some(BACKOFF_MIN)
        );
        assert!(b.episode_start());
    }

    #[tokio::test]
    async fn permits_bound_connections_and_return_on_close() {
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), "test", 1)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let drain = Drain::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let served = tokio::spawn(listener.run(drain.clone(), move |a: Accepted| {
            let tx = tx.clone();
            async move {
                use tokio::io::AsyncReadExt;
                let _ = tx.send(a.peer);
                let mut tcp = a.tcp;
                let mut buf = [0u8; 1];
                // Holds the permit until the client closes.
                let _ = tcp.read(&mut buf).await;
                drop(a.permit);
            }
        }));
        let first = TcpStream::connect(addr).await.unwrap();
        rx.recv().await.unwrap();
        // Over the budget: accepted by the kernel, closed by the listener.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        assert!(rx.try_recv().is_err());
        drop(first);
        // The slot is free again.
        let _third = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        drop(_third);
        let outcome = drain.run(Duration::from_secs(5)).await;
        assert_eq!(outcome, crate::drain::Drained::Clean);
        served.await.unwrap();
    }
}
