//! The gateway's own HTTP/2 server (streams driven by their connection, no task each): a
//! stream the caller resets stops its upstream request, and a burst of streams opened and
//! reset at once (the rapid-reset attack) starts next to no work upstream while other
//! callers are served.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use e2e::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct Counts {
    started: AtomicUsize,
    /// Requests whose handling was dropped before it finished: the gateway went away.
    cancelled: AtomicUsize,
}

/// Counts `started` when a request arrives; `/slow` then takes 10 s, and counts `cancelled`
/// if the connection under it goes first. Other paths answer at once.
async fn backend() -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let c = c.clone();
                    async move {
                        c.started.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path() == "/slow" {
                            struct Guard(Arc<Counts>, bool);
                            impl Drop for Guard {
                                fn drop(&mut self) {
                                    if !self.1 {
                                        self.0.cancelled.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            }
                            let mut g = Guard(c.clone(), false);
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            g.1 = true;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, counts)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://{WEB_SVC}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_stream_stops_its_upstream_request() {
    let fx = Fixture::new();
    let (backend, counts) = backend().await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80={backend}")]);
    let tls = client_tls(&fx, "vote-bot", &[b"h2"]);
    let mut send = h2_sender(gw.listen, tls).await.expect("connect");

    let slow = tokio::spawn(send.send_request(get("/slow")));
    wait_for(
        "the backend to start the request",
        Duration::from_secs(5),
        || counts.started.load(Ordering::SeqCst) == 1,
    )
    .await;
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    slow.abort();
    wait_for(
        "the upstream request to be dropped",
        Duration::from_secs(5),
        || counts.cancelled.load(Ordering::SeqCst) == 1,
    )
    .await;
    // The connection goes on.
    let resp = send.send_request(get("/")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_and_reset_in_a_burst_start_next_to_nothing() {
    let fx = Fixture::new();
    let (backend, counts) = backend().await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80={backend}")]);
    let tls = client_tls(&fx, "vote-bot", &[b"h2"]);

    let io = connect(gw.listen, tls.clone()).await.expect("connect");
    let (mut client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);
    const BURST: usize = 500;
    let mut sent = 0;
    for _ in 0..BURST {
        let req = Request::get(format!("https://{WEB_SVC}/slow"))
            .body(())
            .expect("request");
        let Ok((resp, _stream)) = client.send_request(req, true) else {
            break;
        };
        // Dropped at once: h2 sends RST_STREAM(CANCEL) right behind the HEADERS.
        drop(resp);
        sent += 1;
    }
    assert!(sent > 100, "only {sent} streams could be opened");
    // Whatever the gateway does with the burst (serve it or cut the connection), it settles.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = counts.started.load(Ordering::SeqCst);
    assert!(
        started * 10 < sent,
        "{started} of {sent} reset streams reached the backend"
    );
    // Another caller is served meanwhile.
    let mut other = h2_sender(gw.listen, tls).await.expect("connect");
    let resp = other.send_request(get("/")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    driver.abort();
}
