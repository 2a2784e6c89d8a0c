//! [`Socket`]: a TCP stream whose writes skip `writev(2)`.
//!
//! tokio's `TcpStream` sends a gathered write (every TLS record rustls flushes, every HTTP/1.1
//! head and body written together) with `writev(2)`, which enters through the file layer: the
//! file position lock, `rw_verify_area`, the security hook and fsnotify, none of which a socket
//! needs. `send(2)` and `sendmsg(2)` go straight to the socket. Under `perf` at saturation on
//! the HTTP/1.1 keep-alive bench, the path above `tcp_sendmsg` was 2.9 % of the gateway's CPU
//! with `writev`, 1.2 % of haproxy's with `sendto`; see `benches/HISTORY.md`, "Issue 13,
//! seventh round".

use std::{
    io::{self, IoSlice},
    ops::Deref,
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};

/// A connected TCP stream (a caller's or one to an endpoint). Reads and single-buffer writes
/// are tokio's (`recv`/`send` already); gathered writes of more than one buffer use `sendmsg`.
#[derive(Debug)]
pub struct Socket(TcpStream);

impl From<TcpStream> for Socket {
    fn from(tcp: TcpStream) -> Self {
        Self(tcp)
    }
}

impl Deref for Socket {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Most gathered writes hold one buffer (a flushed TLS record, a head and its body
        // copied together): `send` takes it without `sendmsg`'s copy of a header and an iovec
        // array from user space.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            return Pin::new(&mut self.0).poll_write(cx, only);
        }
        let tcp = &self.0;
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            // `try_io` clears the cached readiness when the kernel says it would block, so
            // the next `poll_write_ready` registers for the wakeup.
            match tcp.try_io(Interest::WRITABLE, || {
                // MSG_NOSIGNAL: a peer that closed its end is an EPIPE error here, not a
                // SIGPIPE to the process.
                socket2::SockRef::from(tcp).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => return Poll::Ready(res),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::Socket;

    async fn pair() -> (Socket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Socket::from(ours.unwrap()), theirs.unwrap().0)
    }

    #[tokio::test]
    async fn gathered_writes_arrive_whole_and_in_order() {
        let (mut sock, mut peer) = pair().await;
        // One buffer among empties (the `send` path), then several (`sendmsg`).
        let n = sock
            .write_vectored(&[IoSlice::new(b""), IoSlice::new(b"head "), IoSlice::new(b"")])
            .await
            .unwrap();
        assert_eq!(n, 5);
        let bufs = [IoSlice::new(b"a "), IoSlice::new(b""), IoSlice::new(b"b c")];
        let n = sock.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 5);
        sock.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"head a b c");
    }

    #[tokio::test]
    async fn more_than_the_send_buffer_waits_for_the_reader() {
        let (mut sock, mut peer) = pair().await;
        let chunk = vec![7u8; 256 * 1024];
        let total = 8 * chunk.len();
        let writer = async {
            let mut sent = 0;
            while sent < total {
                let left = (total - sent).min(chunk.len());
                let half = left / 2;
                let bufs = [
                    IoSlice::new(&chunk[..half]),
                    IoSlice::new(&chunk[half..left]),
                ];
                sent += sock.write_vectored(&bufs).await.unwrap();
            }
            sock.shutdown().await.unwrap();
            sent
        };
        let reader = async {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        };
        let (sent, got) = tokio::join!(writer, reader);
        assert_eq!(sent, total);
        assert_eq!(got.len(), total);
        assert!(got.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn a_closed_peer_is_an_error() {
        let (mut sock, peer) = pair().await;
        drop(peer);
        let bufs = [IoSlice::new(b"x"), IoSlice::new(b"y")];
        // The first write may still be taken; the RST it draws makes a later one fail.
        let mut failed = None;
        for _ in 0..50 {
            if let Err(e) = sock.write_vectored(&bufs).await {
                failed = Some(e);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let e = failed.expect("writes to a closed peer kept succeeding");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
    }
}
