//! What the gateway's own HTTP/1.1 client makes of a service's responses, byte for byte: every
//! body framing (length, chunked with trailers, until close, none for HEAD/204/304), interim
//! responses, and the responses it must refuse (both framings at once, a bad length, a folded
//! header, an oversized head, a cut-off body) with 502 `upstream response malformed` or a
//! failed body, never a forwarded ambiguity. Requests with bodies leave framed as the caller
//! sent them. The backend is a scripted raw-socket server: each path answers fixed bytes.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use e2e::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the scripted backend saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    /// Each request: its head and the body bytes as they arrived on the wire.
    requests: Mutex<Vec<(String, Vec<u8>)>>,
}

/// The bytes answered to `path`, and whether the connection closes after them.
fn script(path: &str, received_body: &[u8]) -> (Vec<u8>, bool) {
    let fixed = |s: &str, close: bool| (s.as_bytes().to_vec(), close);
    match path {
        "/chunked" => fixed(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
             6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nx-checksum: 42\r\n\r\n",
            false,
        ),
        "/until-close" => fixed("HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
        "/continue" => fixed(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
             HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
            false,
        ),
        "/no-content" => fixed(
            "HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n",
            false,
        ),
        "/head" => fixed("HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n", false),
        "/te-and-cl" => fixed(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            true,
        ),
        "/bad-length" => fixed("HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello", true),
        "/two-lengths" => fixed(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            true,
        ),
        "/folded" => fixed(
            "HTTP/1.1 200 OK\r\nx-a: one\r\n two\r\ncontent-length: 0\r\n\r\n",
            true,
        ),
        "/huge-head" => (
            format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            true,
        ),
        "/switch" => fixed(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            true,
        ),
        "/truncated" => fixed(
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b",
            true,
        ),
        "/bad-chunk" => fixed(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            true,
        ),
        "/garbage" => fixed("SSH-2.0-OpenSSH_9.2\r\n\r\n", true),
        "/echo" => {
            let body = format!("got {} bytes", received_body.len());
            (
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
                false,
            )
        }
        _ => fixed("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
    }
}

async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one request (head, then a body framed by content-length or chunked) off `buf`.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(tcp, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let body_end = if lower.contains("transfer-encoding: chunked") {
        loop {
            if let Some(i) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                break i + 5;
            }
            if !read_more(tcp, buf).await {
                return None;
            }
        }
    } else {
        let n = length.unwrap_or(0);
        while buf.len() < n {
            if !read_more(tcp, buf).await {
                return None;
            }
        }
        n
    };
    let body: Vec<u8> = buf.drain(..body_end).collect();
    Some((head, body))
}

async fn scripted_backend() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut tcp, &mut buf).await {
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (answer, close) = script(&path, &body);
                    s.requests.lock().expect("seen").push((head, body));
                    if tcp.write_all(&answer).await.is_err() || close {
                        break;
                    }
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    (addr, seen)
}

struct Setup {
    _fx: Fixture,
    gw: Gateway,
    seen: Arc<Seen>,
    tls: Arc<rustls::ClientConfig>,
    listen: SocketAddr,
}

async fn setup() -> Setup {
    let fx = Fixture::new();
    let (backend, seen) = scripted_backend().await;
    let gw = Gateway::start(&fx, &["--route", &format!("{WEB_SVC}:80={backend}")]);
    let tls = client_tls(&fx, "vote-bot", &[b"http/1.1"]);
    let listen = gw.listen;
    Setup {
        _fx: fx,
        gw,
        seen,
        tls,
        listen,
    }
}

type Answer = (StatusCode, String, Result<String, String>, Option<String>);

/// Status, `l5d-proxy-error`, the body (or the error reading it) and the trailers' x-checksum.
async fn call(s: &Setup, method: &str, path: &str) -> Answer {
    match try_call(s, method, path).await {
        Ok(a) => a,
        Err(e) => panic!("{method} {path}: {e}\n{}", s.gw.log_text()),
    }
}

/// As [`call`]; Err when the caller's connection failed before a response head.
async fn try_call(s: &Setup, method: &str, path: &str) -> Result<Answer, String> {
    let mut send = h1_sender(s.listen, s.tls.clone()).await.expect("connect");
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", WEB_SVC)
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("response in time")
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let reason = proxy_error(&resp);
    let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body in time");
    match collected {
        Ok(c) => {
            let checksum = c
                .trailers()
                .and_then(|t| t.get("x-checksum"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = String::from_utf8_lossy(&c.to_bytes()).into_owned();
            Ok((status, reason, Ok(body), checksum))
        }
        Err(e) => Ok((status, reason, Err(e.to_string()), None)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_framing_arrives_whole() {
    let s = setup().await;
    let (status, _, body, checksum) = call(&s, "GET", "/chunked").await;
    assert_eq!((status, body), (StatusCode::OK, Ok("hello world".into())));
    assert_eq!(checksum.as_deref(), Some("42"), "trailers are forwarded");

    let (status, _, body, _) = call(&s, "GET", "/until-close").await;
    assert_eq!((status, body), (StatusCode::OK, Ok("until the end".into())));

    let (status, _, body, _) = call(&s, "GET", "/continue").await;
    assert_eq!((status, body), (StatusCode::OK, Ok("final".into())));

    let (status, _, body, _) = call(&s, "GET", "/no-content").await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Ok(String::new())));

    let (status, _, body, _) = call(&s, "HEAD", "/head").await;
    assert_eq!((status, body), (StatusCode::OK, Ok(String::new())));

    // The connections that stayed open at a message boundary were reused: the until-close
    // response cost one connection of its own, the rest shared.
    let before = s.seen.accepted.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(call(&s, "GET", "/").await.0, StatusCode::OK);
    }
    assert_eq!(s.seen.accepted.load(Ordering::SeqCst), before);
    assert!(before <= 3, "{before} upstream connections for 5 exchanges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_that_break_the_protocol_are_refused() {
    let s = setup().await;
    for path in [
        "/te-and-cl",
        "/bad-length",
        "/two-lengths",
        "/folded",
        "/huge-head",
        "/switch",
        "/garbage",
    ] {
        let (status, reason, _, _) = call(&s, "GET", path).await;
        assert_eq!(
            (status, reason.as_str()),
            (StatusCode::BAD_GATEWAY, "upstream response malformed"),
            "{path}"
        );
    }
    // A body that breaks off after its head was read cannot become a 502: the caller's
    // exchange fails (its connection is cut, before or after the head) instead of ending as
    // if complete.
    for path in ["/truncated", "/bad-chunk"] {
        match try_call(&s, "GET", path).await {
            Err(_) => {}
            Ok((_, _, body, _)) => assert!(body.is_err(), "{path}: {body:?}"),
        }
    }
    // And the gateway serves the next request as if nothing happened.
    assert_eq!(call(&s, "GET", "/").await.2, Ok("ok".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_keep_their_framing() {
    let s = setup().await;
    let mut send = h1_sender(s.listen, s.tls.clone()).await.expect("connect");

    // A body of known length leaves with that length.
    let req = Request::post("/echo")
        .header("host", WEB_SVC)
        .body(Full::new(Bytes::from(vec![b'a'; 100_000])))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(body_text(resp).await, "got 100000 bytes");

    // A body of unknown length (chunked from the caller) leaves chunked, frame by frame.
    send.ready().await.expect("ready");
    let frames = (0..10).map(|i| Bytes::from(vec![b'0' + i; 1000])).collect();
    let req = Request::post("/echo")
        .header("host", WEB_SVC)
        .body(Frames(frames))
        .expect("request");
    let mut send2 = h1_sender_frames(s.listen, s.tls.clone()).await;
    let resp = send2.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);

    let requests = s.seen.requests.lock().expect("seen").clone();
    let (head, body) = &requests[0];
    assert!(head.contains("content-length: 100000\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body.len(), 100_000);
    let (head, body) = &requests[1];
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(body.starts_with(b"3e8\r\n0000"), "chunks of 1000 bytes");
    assert!(body.ends_with(b"\r\n0\r\n\r\n"));

    // A bodiless GET carries no framing headers at all; a bodiless POST says it is empty.
    let _ = call(&s, "GET", "/").await;
    let _ = call(&s, "POST", "/").await;
    let requests = s.seen.requests.lock().expect("seen").clone();
    let (get, _) = &requests[2];
    assert!(
        !get.contains("content-length") && !get.contains("transfer-encoding"),
        "{get}"
    );
    let (post, _) = &requests[3];
    assert!(post.contains("content-length: 0\r\n"), "{post}");
}

/// A request body of unknown length: its frames, one per poll.
struct Frames(std::collections::VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A caller connection whose request bodies are [`Frames`].
async fn h1_sender_frames(
    gw: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> hyper::client::conn::http1::SendRequest<Frames> {
    let io = connect(gw, tls).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    send
}
