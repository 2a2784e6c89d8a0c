//! Byte streams joined end to end (opaque TCP, upgraded HTTP/1.1 connections): copied both
//! ways with half-closes passed through, until both sides are done or the drain deadline.

use std::{io, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{drain::Drain, metrics};

/// How long each side gets to take its shutdown (FIN, and close_notify on TLS) at the
/// deadline; a peer that stopped reading must not hold the drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How a spliced stream ended.
#[derive(Debug)]
pub enum Spliced {
    /// Both sides closed their writing half; bytes copied each way.
    Done {
        a_to_b: u64,
        b_to_a: u64,
    },
    Failed(io::Error),
    /// Still open at the drain deadline; both sides were shut down.
    ClosedByDrain,
    /// Ended by `stop` (an authorization revoked, the stream idle or its reader stalled),
    /// for the reason it gave; both sides were shut down.
    Stopped(&'static str),
}

/// Copies between `a` and `b` until both have finished, or until the drain deadline (the
/// close counted under `kind`) or `stop` resolves; then both are shut down cleanly.
pub async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    drain: &Drain,
    kind: &'static str,
    stop: impl std::future::Future<Output = &'static str>,
) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let ended = tokio::select! {
        r = tokio::io::copy_bidirectional(a, b) => return match r {
            Ok((a_to_b, b_to_a)) => Spliced::Done { a_to_b, b_to_a },
            Err(e) => Spliced::Failed(e),
        },
        _ = drain.closing() => {
            metrics::drain_closed(kind);
            Spliced::ClosedByDrain
        }
        reason = stop => Spliced::Stopped(reason),
    };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, a.shutdown()).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, b.shutdown()).await;
    ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn passes_half_closes_and_closes_at_the_deadline() {
        let drain = Drain::new();
        // a_outer <-> a | splice | b <-> b_outer
        let (mut a_outer, mut a) = tokio::io::duplex(1024);
        let (mut b, mut b_outer) = tokio::io::duplex(1024);
        let d = drain.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        drain.spawn(async move {
            let _ = tx.send(
                splice(
                    &mut a,
                    &mut b,
                    &d,
                    "test",
                    std::future::pending::<&'static str>(),
                )
                .await,
            );
        });
        a_outer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b_outer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // One side done writing: the other still gets through.
        a_outer.shutdown().await.unwrap();
        b_outer.write_all(b"pong").await.unwrap();
        a_outer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // The deadline closes what is left, and both outer ends see EOF.
        let outcome = drain.clone().run(Duration::from_millis(50)).await;
        assert_eq!(outcome, crate::drain::Drained::Closed { open: 1 });
        assert!(matches!(rx.await.unwrap(), Spliced::ClosedByDrain));
        assert_eq!(a_outer.read(&mut buf).await.unwrap(), 0);
        assert_eq!(b_outer.read(&mut buf).await.unwrap(), 0);
    }
}
