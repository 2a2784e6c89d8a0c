//! A caller's connection after a protocol switch (101): handed from the HTTP/1 server to the
//! request's handler, which splices it to the upstream's.

use std::{
    future::Future,
    sync::{Arc, Mutex},
};

use http::Request;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::oneshot,
};

use crate::io::Rewind;

/// The caller's connection once switched, as any byte stream.
pub trait UpgradedIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpgradedIo for T {}

/// The caller's side of a switched connection: what it sent after the request head first,
/// then the connection.
pub type Upgraded = Rewind<Box<dyn UpgradedIo>>;

/// Why no switched connection came: the server answered something else, or the caller went
/// before the 101 was written.
#[derive(Debug, thiserror::Error)]
#[error("the caller's connection was not switched")]
pub struct NotUpgraded;

/// Put in an upgrade request's extensions by the server; [`on`] takes it out. (Extensions
/// must be `Clone`; the receiver is taken once.)
#[derive(Clone)]
pub(super) struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    pub(super) fn new(rx: oneshot::Receiver<Upgraded>) -> Self {
        Self(Arc::new(Mutex::new(Some(rx))))
    }

    fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The caller's connection once the server has written the 101 the handler returns.
pub fn on<B>(
    req: &mut Request<B>,
) -> impl Future<Output = Result<Upgraded, NotUpgraded>> + Send + 'static {
    let pending = req.extensions_mut().remove::<PendingUpgrade>();
    async move {
        match pending.and_then(|p| p.take()) {
            Some(rx) => rx.await.map_err(|_| NotUpgraded),
            None => Err(NotUpgraded),
        }
    }
}
