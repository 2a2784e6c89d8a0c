//! A WAN link in user space: a TCP relay that holds every chunk for half the round-trip time in
//! each direction, since this kernel has no netem. Ordering and half-closes are kept.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Instant,
};

pub async fn run(listen: SocketAddr, to: SocketAddr, rtt: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let one_way = rtt / 2;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(to).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::join!(delayed_copy(cr, sw, one_way), delayed_copy(sr, cw, one_way));
        });
    }
}

/// Copies `r` to `w`, each chunk leaving `delay` after it arrived; EOF is delayed the same.
async fn delayed_copy<R, W>(mut r: R, mut w: W, delay: Duration)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Bounded, so a slow writer pushes back on the reader like a real link's buffers.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(256);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).await.unwrap_or(0);
            let item = (n > 0).then(|| buf[..n].to_vec());
            let eof = item.is_none();
            if tx.send((Instant::now() + delay, item)).await.is_err() || eof {
                return;
            }
        }
    });
    while let Some((due, item)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        match item {
            Some(bytes) => {
                if w.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            None => {
                let _ = w.shutdown().await;
                break;
            }
        }
    }
    reader.abort();
}
