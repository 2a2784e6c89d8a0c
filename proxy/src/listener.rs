//! One accept loop for every server the binaries run (4143, 4191, 4181, the outbound proxy):
//! bind, accept with a connection permit, back off on resource exhaustion, stop when draining.
//!
//! A listener that faces the internet also keeps a second, smaller budget for connections that
//! have not proven who they are yet ([`Listener::with_pending`]). Whoever can open TCP
//! connections can fill any budget with silence; this one is never full: the oldest pending
//! connection is shed to make room. A caller that authenticates moves to the main budget
//! ([`ConnPermit::admit`]), which only authenticated callers can fill.

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore},
};

use crate::{drain::Drain, errors::ConnError, log_limit, metrics};

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
    /// Connections not yet authenticated, when this listener tells them apart.
    pending: Option<Arc<Pending>>,
}

/// The connections that have not authenticated yet, oldest first, each with the means to
/// shed it.
struct Pending {
    max: usize,
    /// Arrival number → the shed signal; the first entry is the oldest.
    slots: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Pending {
    /// A slot for a new connection, shedding the oldest pending one when all are taken.
    fn take(self: &Arc<Self>) -> PendingSlot {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            // Never held across an await; a poisoned lock only means a panic elsewhere
            // mid-insert, and the map is still a map.
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() >= self.max {
                if let Some((_, oldest)) = slots.pop_first() {
                    // The receiver may be gone already (that connection just ended).
                    let _ = oldest.send(());
                }
            }
            slots.insert(id, tx);
        }
        PendingSlot {
            id,
            pending: self.clone(),
            shed: rx,
        }
    }

    fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One pending connection's place; leaving it (drop) frees it.
struct PendingSlot {
    id: u64,
    pending: Arc<Pending>,
    shed: oneshot::Receiver<()>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// A connection that got a permit; the permit goes back when this (or the task it moved
/// into) is dropped.
pub struct Accepted {
    pub tcp: TcpStream,
    pub peer: SocketAddr,
    pub permit: ConnPermit,
}

/// Holds one of the listener's connection slots: a place in the main budget, or (on a
/// listener with a pending budget, until [`ConnPermit::admit`]) a pending one.
pub struct ConnPermit {
    slot: Slot,
    /// For [`ConnPermit::admit`]: the main budget and its size.
    permits: Arc<Semaphore>,
    max_connections: usize,
    released: Arc<Notify>,
}

enum Slot {
    Admitted(#[allow(dead_code)] OwnedSemaphorePermit),
    Pending(PendingSlot),
}

impl ConnPermit {
    /// The caller has authenticated: move it from the pending budget to the main one, or
    /// refuse it when the main one is full. Idempotent.
    pub fn admit(&mut self) -> Result<(), ConnError> {
        if let Slot::Pending(_) = self.slot {
            let permit = self
                .permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| ConnError::AtLimit(self.max_connections))?;
            // Dropping the pending slot gives it back.
            self.slot = Slot::Admitted(permit);
        }
        Ok(())
    }

    /// Resolves when this connection is shed to make room for a newer one; never, once
    /// admitted (or on a listener without a pending budget).
    pub async fn shed(&mut self) {
        match &mut self.slot {
            Slot::Pending(p) => {
                // Sent on shedding; an error means the listener is gone, not a shed.
                if (&mut p.shed).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Slot::Admitted(_) => std::future::pending().await,
        }
    }
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
            pending: None,
        })
    }

    /// Connections start in a pending budget of `max_pending`, shed oldest first when it is
    /// full, and take a main slot only when the server calls `ConnPermit::admit`. A server
    /// that never admits keeps every connection sheddable.
    pub fn with_pending(mut self, max_pending: usize) -> Self {
        self.pending = Some(Arc::new(Pending {
            max: max_pending.max(1),
            slots: Mutex::new(BTreeMap::new()),
            next: Default::default(),
        }));
        self
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
            let slot = match &self.pending {
                // The shed connection's own task counts and logs it, with its address.
                Some(pending) => Slot::Pending(pending.take()),
                None => match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => Slot::Admitted(permit),
                    Err(_) => {
                        let refused = ConnError::AtLimit(self.max_connections);
                        metrics::conn_error(&refused, self.name);
                        if log_limit::allow(self.name, refused.reason()) {
                            tracing::warn!(listener = self.name, %peer, reason = refused.reason(), "{refused}");
                        }
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            drain.spawn(serve(Accepted {
                tcp,
                peer,
                permit: ConnPermit {
                    slot,
                    permits: self.permits.clone(),
                    max_connections: self.max_connections,
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
                pending = self.pending.as_ref().map(|p| p.len()),
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

    #[tokio::test]
    async fn pending_connections_are_shed_oldest_first_and_admitted_into_the_main_budget() {
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), "test", 1)
            .await
            .unwrap()
            .with_pending(2);
        let addr = listener.local_addr().unwrap();
        let drain = Drain::new();
        // Each connection reports (its client port, whether it was shed or admitted).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let served = tokio::spawn(listener.run(drain.clone(), move |a: Accepted| {
            let tx = tx.clone();
            async move {
                use tokio::io::AsyncReadExt;
                let Accepted {
                    mut tcp,
                    peer,
                    mut permit,
                } = a;
                let mut byte = [0u8; 1];
                // A byte from the client stands for "authenticated".
                tokio::select! {
                    _ = permit.shed() => { let _ = tx.send((peer.port(), "shed")); }
                    _ = tcp.read(&mut byte) => {
                        let outcome = if permit.admit().is_ok() { "admitted" } else { "limit" };
                        let _ = tx.send((peer.port(), outcome));
                        let _ = tcp.read(&mut byte).await;
                    }
                }
            }
        }));
        let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u16, &'static str)>| {
            let got = rx.try_recv();
            got.ok()
        };
        let c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let mut c3 = TcpStream::connect(addr).await.unwrap();
        // The third arrival sheds the first, which never authenticated.
        let (port, outcome) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((port, outcome), (c1.local_addr().unwrap().port(), "shed"));
        use tokio::io::AsyncWriteExt;
        c3.write_all(b"x").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (c3.local_addr().unwrap().port(), "admitted"));
        // The main budget (1) is taken: the next to authenticate is refused.
        let mut c4 = TcpStream::connect(addr).await.unwrap();
        c4.write_all(b"x").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (c4.local_addr().unwrap().port(), "limit"));
        // An admitted connection is never shed: three more arrivals shed only pending ones.
        let _more: Vec<TcpStream> = futures_join(addr, 3).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Some((port, outcome)) = next(&mut rx) {
            assert_ne!(port, c3.local_addr().unwrap().port(), "{outcome}");
        }
        drop((c1, c3, c4));
        let _ = drain.run(Duration::from_millis(100)).await;
        served.await.unwrap();
    }

    async fn futures_join(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(TcpStream::connect(addr).await.unwrap());
        }
        v
    }
}
