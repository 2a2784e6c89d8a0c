//! The gateway's own HTTP/2 client against endpoints written with raw frames: a request the
//! endpoint never took (GOAWAY below its stream, or REFUSED_STREAM) goes to another endpoint
//! and is served, and a response head HTTP/2 forbids gets the caller a 502 without breaking
//! the connection to the endpoint.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use e2e::{
    h2raw::{frame, literal},
    *,
};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// What the raw endpoint does with each request.
#[derive(Clone, Copy)]
enum Mode {
    /// GOAWAY saying it took no stream, then it closes.
    GoAwayBeforeTaking,
    /// RST_STREAM(REFUSED_STREAM).
    Refuse,
    /// A 200 carrying `connection: close`, which HTTP/2 forbids.
    ConnectionHeader,
}

const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;

/// An HTTP/2 endpoint (prior knowledge) that does `mode` to every request; counts the
/// requests it saw.
async fn raw_endpoint(mode: Mode) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = counter.clone();
            tokio::spawn(async move {
                let _ = tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await;
                let mut got = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                let mut preface = false;
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if !preface {
                        if got.len() < 24 {
                            continue;
                        }
                        got.drain(..24);
                        preface = true;
                    }
                    while got.len() >= 9 {
                        let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
                        if got.len() < 9 + len {
                            break;
                        }
                        let (kind, flags) = (got[3], got[4]);
                        let stream =
                            u32::from_be_bytes([got[5], got[6], got[7], got[8]]) & 0x7fff_ffff;
                        let payload = got[9..9 + len].to_vec();
                        got.drain(..9 + len);
                        let answer = match (kind, flags & 1) {
                            (SETTINGS, 0) => frame(SETTINGS, 1, 0, &[]),
                            (PING, 0) => frame(PING, 1, 0, &payload),
                            (HEADERS, _) => {
                                seen.fetch_add(1, Ordering::SeqCst);
                                match mode {
                                    Mode::GoAwayBeforeTaking => {
                                        let _ = tcp.write_all(&frame(7, 0, 0, &[0; 8])).await;
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                        return;
                                    }
                                    Mode::Refuse => frame(3, 0, stream, &7u32.to_be_bytes()),
                                    Mode::ConnectionHeader => {
                                        let mut block = vec![0x88];
                                        literal(&mut block, b"connection", b"close");
                                        frame(HEADERS, 0x5, stream, &block)
                                    }
                                }
                            }
                            _ => continue,
                        };
                        if tcp.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn statuses(fx: &Fixture, gw: &Gateway, n: usize) -> Vec<StatusCode> {
    let mut send = h2_sender(gw.listen, client_tls(fx, "vote-bot", &[b"h2"]))
        .await
        .expect("connect");
    let mut out = Vec::new();
    for _ in 0..n {
        let req = Request::get(format!("http://{WEB_SVC}/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("an answer")
            .expect("a response");
        out.push(resp.status());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_an_endpoint_never_took_go_to_another() {
    let fx = Fixture::new();
    let good = backend().await;
    for mode in [Mode::GoAwayBeforeTaking, Mode::Refuse] {
        let (bad, seen) = raw_endpoint(mode).await;
        let gw = Gateway::start(
            &fx,
            &["--route", &format!("{WEB_SVC}:80=h2://{bad},{good}")],
        );
        let got = statuses(&fx, &gw, 20).await;
        assert!(
            got.iter().all(|s| *s == StatusCode::OK),
            "every request is served by the other endpoint: {got:?}"
        );
        assert!(
            seen.load(Ordering::SeqCst) >= 1,
            "the endpoint that never takes a request was never tried"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_http2_forbids_is_a_502_and_the_connection_goes_on() {
    let fx = Fixture::new();
    let (bad, seen) = raw_endpoint(Mode::ConnectionHeader).await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80=h2://{bad}")]);
    let got = statuses(&fx, &gw, 3).await;
    assert_eq!(got, vec![StatusCode::BAD_GATEWAY; 3]);
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}
