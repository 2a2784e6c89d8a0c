//! The processes the comparison needs besides the proxies: a backend standing in for web-svc,
//! a bare rustls mTLS accept loop (the ceiling for new-connection mode), and a holder of many
//! idle mTLS connections (for memory per connection).

use std::{convert::Infallible, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use identity::{CertStore, Credentials, Identity, TrustAnchors};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A fixed 1 KiB JSON document, like an emojivoto API answer.
pub fn json_1k() -> Bytes {
    let mut s = String::from("{\"emoji\":[");
    let mut i = 0;
    while s.len() < 1000 {
        s.push_str(&format!(
            "{}{{\"shortcode\":\":e{i:03}:\",\"votes\":{i}}}",
            if i > 0 { "," } else { "" }
        ));
        i += 1;
    }
    s.push_str("]}");
    while s.len() < 1024 {
        s.insert(s.len() - 1, ' ');
    }
    Bytes::from(s)
}

/// The response header set nginx sends for a static file (Server, Date, Content-Type,
/// Content-Length, Last-Modified, Connection, ETag, Accept-Ranges), so that proxies pay per
/// response for as many headers as they do in front of a real service. hyper adds Date and
/// Content-Length; `Connection` is HTTP/1's alone.
fn static_file_response(body: Bytes, h1: bool) -> Response<Full<Bytes>> {
    use http::HeaderValue;
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert("server", HeaderValue::from_static("nginx/1.22.1"));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert(
        "last-modified",
        HeaderValue::from_static("Tue, 01 Dec 2026 09:00:00 GMT"),
    );
    if h1 {
        h.insert("connection", HeaderValue::from_static("keep-alive"));
    }
    h.insert("etag", HeaderValue::from_static("\"692d5a50-400\""));
    h.insert("accept-ranges", HeaderValue::from_static("bytes"));
    r
}

/// `/` answers the 1 KiB document; `/big` 1 MiB. HTTP/1.1 and h2c on `listen`; with `mesh`,
/// also as a meshed workload on its own port: mTLS with the identity in `web.crt`, a client
/// certificate from the bench anchor required, HTTP/2 by prior knowledge or HTTP/1.1, as a
/// Linkerd inbound proxy takes what a gateway originates (scenario (h)).
pub async fn backend(listen: SocketAddr, mesh: Option<(SocketAddr, &Path)>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let bodies = Bodies {
        small: json_1k(),
        big: Bytes::from(vec![b'x'; 1 << 20]),
    };
    if let Some((addr, dir)) = mesh {
        let anchors = TrustAnchors::load(&dir.join("root.crt"))?;
        let creds = Credentials::load(&dir.join("web.crt"), &dir.join("web.key"))?;
        // No ALPN: the gateway, like a Linkerd proxy, offers none to a meshed HTTP/2 endpoint.
        let cfg = identity::tls::server_config(CertStore::new(&creds)?, &anchors, &[])?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let mesh_listener = TcpListener::bind(addr).await?;
        let bodies = bodies.clone();
        tokio::spawn(async move {
            loop {
                let tcp = accept(&mesh_listener, "meshed").await;
                let (acceptor, bodies) = (acceptor.clone(), bodies.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        bodies.serve(tls).await;
                    }
                });
            }
        });
    }
    loop {
        let tcp = accept(&listener, "plaintext").await;
        tokio::spawn(bodies.clone().serve(tcp));
    }
}

/// The next connection. A failed accept (a connection reset before it was taken, no fd
/// left) is that connection's, reported; the listener stays, so that one bad moment does
/// not fail every later scenario that uses it.
async fn accept(listener: &TcpListener, which: &str) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                return tcp;
            }
            Err(e) => {
                eprintln!("bench-backend: {which} accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The backend's two answers.
#[derive(Clone)]
struct Bodies {
    small: Bytes,
    big: Bytes,
}

impl Bodies {
    async fn serve<IO>(self, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let body = if req.uri().path() == "/big" {
                self.big.clone()
            } else {
                self.small.clone()
            };
            let h1 = req.version() < http::Version::HTTP_2;
            async move { Ok::<_, Infallible>(static_file_response(body, h1)) }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), svc)
            .await;
    }
}

fn server_tls(dir: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let anchors = TrustAnchors::load(&dir.join("root.crt"))?;
    let creds = Credentials::load(&dir.join("gateway.crt"), &dir.join("gateway.key"))?;
    let cfg = identity::tls::server_config(CertStore::new(&creds)?, &anchors, &[b"http/1.1"])?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The least a TLS server can do per connection: the same mTLS handshake as the gateway, read
/// one request, write the 1 KiB answer, close. Nothing is proxied.
pub async fn tls_ceiling(listen: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    let acceptor = server_tls(dir)?;
    let listener = TcpListener::bind(listen).await?;
    let body = json_1k();
    let mut head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).into_bytes();
    head.extend_from_slice(&body);
    let response = Bytes::from(head);
    // SIGINT ends it cleanly: `bench-cost` stops it that way, and under valgrind the default
    // disposition did not always take the process down.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let (acceptor, response) = (acceptor.clone(), response.clone());
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                match tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = tls.write_all(&response).await;
            let _ = tls.shutdown().await;
        });
    }
}

/// Opens `count` mTLS connections to `target` and keeps them idle; prints `ready <n>` once
/// they are open, then holds them until stdin closes.
pub async fn hold(
    target: SocketAddr,
    dir: &Path,
    server_identity: &str,
    count: usize,
) -> anyhow::Result<()> {
    let anchors = TrustAnchors::load(&dir.join("root.crt"))?;
    let creds = Credentials::load(&dir.join("vote-bot.crt"), &dir.join("vote-bot.key"))?;
    let id = Identity::parse(server_identity)?;
    let cfg = identity::tls::client_config(
        Some(CertStore::new(&creds)?),
        &anchors,
        id.clone(),
        &[b"http/1.1"],
    )?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = identity::tls::server_name(&id)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (connector, name, sem) = (connector.clone(), name.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let tcp = TcpStream::connect(target).await.ok()?;
            tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
                .await
                .ok()?
                .ok()
        }));
    }
    let mut held = Vec::with_capacity(count);
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            held.push(c);
        }
    }
    println!("ready {}", held.len());
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while !matches!(stdin.read(&mut sink).await, Ok(0) | Err(_)) {}
    drop(held);
    Ok(())
}

/// `linkerd-destination` for scenario (h): the bench's authority resolves to `endpoint`, a
/// meshed workload with web's identity and the `h2` hint, so the gateway originates mTLS
/// HTTP/2 to it as it does in a cluster. Runs until interrupted.
pub async fn destination(listen: SocketAddr, endpoint: SocketAddr) -> anyhow::Result<()> {
    use control_plane::{DestinationAnswer, DestinationStub, StubEndpoint};
    let stub = DestinationStub::start(listen).await;
    stub.set(
        super::AUTHORITY,
        DestinationAnswer::Endpoints(vec![StubEndpoint {
            addr: endpoint,
            identity: Some(crate::demo::WEB_ID.to_string()),
            http2: true,
            opaque_transport: None,
        }]),
    );
    eprintln!(
        "bench-destination: {} -> {endpoint} (h2, {}) on {}",
        super::AUTHORITY,
        crate::demo::WEB_ID,
        stub.addr
    );
    // Its account for a failed (h): whether the gateway reached it at all, and how often.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut told = 0;
    loop {
        tokio::select! {
            r = &mut interrupted => return Ok(r?),
            _ = tick.tick() => {
                let gets = stub.gets();
                if gets != told {
                    eprintln!("bench-destination: {gets} Get calls so far");
                    told = gets;
                }
            }
        }
    }
}
