//! Test harness for end-to-end tests: a PKI on disk, a `gateway` process, a local backend
//! standing in for `web-svc`, and an mTLS client. Everything listens on 127.0.0.1 only.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use identity::{Identity, LeafOptions, Pki, Validity};
use tokio::net::TcpListener;

pub use control_plane as control;
pub mod browser;
pub mod h2raw;
pub mod load;
pub mod mesh;
pub mod viz;

pub const GATEWAY_ID: &str =
    "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local";
pub const VOTE_BOT_ID: &str = "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local";
pub const WEB_SVC: &str = "web-svc.emojivoto.svc.cluster.local";

/// Certificates on disk: the anchor, the gateway's leaf, and callers good and bad.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new().expect("pki");
        std::fs::write(dir.path().join("root.crt"), &pki.anchor.cert_pem).expect("write");
        pki.leaf(GATEWAY_ID)
            .expect("leaf")
            .write(dir.path(), "gateway")
            .expect("write");
        pki.leaf(VOTE_BOT_ID)
            .expect("leaf")
            .write(dir.path(), "vote-bot")
            .expect("write");
        // A caller from another mesh entirely.
        let other = Pki::with_names("root.other.example", "issuer.other.example").expect("pki");
        other
            .leaf(VOTE_BOT_ID)
            .expect("leaf")
            .write(dir.path(), "foreign")
            .expect("write");
        // A caller whose certificate expired yesterday.
        let expired = LeafOptions {
            validity: Validity {
                not_before: Some(time::OffsetDateTime::now_utc() - time::Duration::days(2)),
                lifetime: Duration::from_secs(3600),
            },
            clock_skew: Duration::from_secs(20),
        };
        pki.leaf_with(VOTE_BOT_ID, expired)
            .expect("leaf")
            .write(dir.path(), "expired")
            .expect("write");
        Self { dir, pki }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A leaf for `identity` written as `<stem>.crt/.key`.
    pub fn caller(&self, stem: &str, identity: &str) -> PathBuf {
        self.pki
            .leaf(identity)
            .expect("leaf")
            .write(self.dir.path(), stem)
            .expect("write");
        self.path(stem)
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// The `gateway` binary next to this test's executable, built once per test run so the
/// tests never exercise a stale one (`cargo test -p e2e` alone does not build other
/// packages' binaries).
pub fn gateway_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current_exe");
            let dir = exe.parent().and_then(Path::parent).expect("target dir");
            let profile_release = dir.file_name().is_some_and(|n| n == "release");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "proxy", "--bin", "gateway"]);
            if profile_release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build -p proxy failed");
            let bin = dir.join("gateway");
            assert!(bin.exists(), "{} missing after build", bin.display());
            bin
        })
        .clone()
}

/// A port nothing listens on now, chosen below the kernel's ephemeral range (32768 and up)
/// so that the many client sockets tests open cannot take it before the gateway binds it;
/// random, so parallel tests rarely pick the same.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Tests of one binary run at once in one process: a port handed to one is not handed to
    // another before the first has bound it.
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = 10_000 + (h.finish() % 20_000) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port in 10000-29999")
}

/// How a start fell short of `/ready`.
enum Early {
    Exited(std::process::ExitStatus),
    NotReady,
}

/// A running gateway process; killed on drop. Its log goes to `<dir>/gateway-<port>.log`.
pub struct Gateway {
    pub child: Option<Child>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The probe port (only `/ready`), the one admin port a LoadBalancer publishes.
    pub probe: SocketAddr,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts with the fixture's certificates plus `extra` flags and waits for /ready.
    pub fn start(fx: &Fixture, extra: &[&str]) -> Self {
        let mut args: Vec<std::ffi::OsString> =
            vec!["--cert".into(), fx.path("gateway.crt").into()];
        args.extend(["--key".into(), fx.path("gateway.key").into()]);
        args.extend(extra.iter().map(Into::into));
        // A port found free can be taken by another process before the gateway binds it;
        // that start is tried again on other ports, any other failure is the test's.
        let mut retries = 0;
        loop {
            let mut gw = Self::launch(fx, &args);
            match gw.ready_within(Duration::from_secs(20)) {
                Ok(()) => return gw,
                Err(Early::Exited(_))
                    if retries < 2 && gw.log_text().contains("Address already in use") =>
                {
                    retries += 1
                }
                Err(e) => gw.fail(e),
            }
        }
    }

    /// Starts with the fixture's trust anchors and `args`, without waiting for anything.
    pub fn launch(fx: &Fixture, args: &[std::ffi::OsString]) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::launch_at(fx, listen, admin, args)
    }

    /// [`Gateway::launch`] on given ports (a restart keeps its ports).
    pub fn launch_at(
        fx: &Fixture,
        listen: SocketAddr,
        admin: SocketAddr,
        args: &[std::ffi::OsString],
    ) -> Self {
        let mut cmd = Command::new(gateway_bin());
        cmd.args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .arg("--trust-anchors")
        .arg(fx.path("root.crt"))
        .args(args)
        .env("RUST_LOG", "info");
        Self::spawn(fx, cmd, listen, admin)
    }

    /// Runs `cmd` with its log in the fixture's directory.
    fn spawn(fx: &Fixture, mut cmd: Command, listen: SocketAddr, admin: SocketAddr) -> Self {
        let log = fx.path(&format!("gateway-{}.log", listen.port()));
        // Flags win over this, so a test can still name (or turn off) the probe port itself.
        let probe: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        cmd.env("GATEWAY_PROBE_LISTEN", probe.to_string());
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn gateway");
        Self {
            child: Some(child),
            listen,
            admin,
            probe,
            log,
        }
    }

    /// Starts with nothing but `env` (no flags), as a pod spec written by Linkerd's injector
    /// configures a proxy; `listen`/`admin` must match what `env` sets.
    pub fn launch_env(
        fx: &Fixture,
        listen: SocketAddr,
        admin: SocketAddr,
        env: &[(&str, String)],
    ) -> Self {
        let mut cmd = Command::new(gateway_bin());
        cmd.env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        Self::spawn(fx, cmd, listen, admin)
    }

    /// Whether `/ready` answers 200 now.
    pub fn is_ready(&self) -> bool {
        http_get(self.admin, "/ready")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    }

    /// Waits for `/ready`; panics with the log if the process exits or `limit` passes.
    pub fn wait_ready(&mut self, limit: Duration) {
        if let Err(e) = self.ready_within(limit) {
            self.fail(e)
        }
    }

    fn fail(&self, e: Early) -> ! {
        match e {
            Early::Exited(status) => {
                panic!("gateway exited early ({status}):\n{}", self.log_text())
            }
            Early::NotReady => panic!("gateway not ready:\n{}", self.log_text()),
        }
    }

    fn ready_within(&mut self, limit: Duration) -> Result<(), Early> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(Early::Exited(status));
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Early::NotReady);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The sum of the samples of `name` in a `/metrics` page whose labels include all of `labels`.
pub fn metric(m: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    m.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A process's resident memory in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The body of an HTTP/1.x response in `bytes` once all of it (by `Content-Length`, none
/// when absent) has arrived; `None` while the head or body is still short.
pub fn complete_response(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (body.len() >= len).then(|| body.to_string())
}

/// A blocking plaintext HTTP/1.1 GET (for the admin port).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// A test server's listener, with a server's accept queue rather than tokio's default of 128:
/// a test that sends 200 requests at once makes the gateway dial 200 connections, and a SYN
/// dropped from a full queue is retried only after a second, past the gateway's 1 s connect
/// timeout (a 504). Reuses the address, as `TcpListener::bind` does, so a restarted backend
/// gets its port back.
pub fn server_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The stand-in for `web-svc`: answers on HTTP/1.1 and HTTP/2 (prior knowledge).
/// - `/echo`: the request line and the headers the gateway is responsible for;
/// - `POST /upload`: the number of body bytes received (streamed, not buffered);
/// - `/download?bytes=N`: N bytes in 64 KiB chunks;
/// - `/slow?ms=N`: answers after N ms;
/// - `/ws`: a 101 upgrade that echoes bytes back.
pub async fn backend() -> SocketAddr {
    let listener = server_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(backend_handle);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn query_num(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads a request body to its end without keeping it; the number of bytes.
async fn body_len(body: &mut Incoming) -> u64 {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
            Err(_) => break,
        }
    }
    n
}

async fn backend_handle(
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/upload" => {
            let n = body_len(req.body_mut()).await;
            Response::new(full(format!("received {n}\n")))
        }
        "/download" => {
            let total = query_num(&req, "bytes");
            let chunks = (0..total.div_ceil(65536)).map(move |i| {
                let len = (total - i * 65536).min(65536) as usize;
                Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; len])))
            });
            Response::new(BodyExt::boxed(StreamBody::new(futures_iter(chunks))))
        }
        "/events" => {
            // Server-sent events, 150 ms apart: a buffering proxy would hold the first back.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                for i in 0..3 {
                    let ev = Frame::data(Bytes::from(format!("data: event {i}\n\n")));
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(ReceiverStream(rx))));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().expect("hv"));
            r
        }
        "/grpc" => {
            // A gRPC-shaped exchange: echo the request frames, end with trailers carrying
            // `?status=N` (0 by default); `?only=1` answers trailers-only (the status in
            // the headers, no body), as servers answer calls they refuse at once.
            let status = query_num(&req, "status");
            let only = query_num(&req, "only") == 1;
            let n = body_len(req.body_mut()).await;
            let mut r = if only {
                let mut r = Response::new(full(""));
                r.headers_mut()
                    .insert("grpc-status", status.to_string().parse().expect("hv"));
                r
            } else {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", status.to_string().parse().expect("hv"));
                trailers.insert(
                    "grpc-message",
                    format!("got {n} bytes").parse().expect("hv"),
                );
                let frames = vec![
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                    Ok(Frame::trailers(trailers)),
                ];
                let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_iter(
                    frames.into_iter(),
                ))));
                // Over HTTP/1.1 hyper sends only the trailer fields this announces.
                r.headers_mut()
                    .insert("trailer", "grpc-status, grpc-message".parse().expect("hv"));
                r
            };
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().expect("hv"));
            r
        }
        "/body-echo" => {
            // The request body back as it arrives, frame by frame: over HTTP/2 both bodies
            // stream at once, as in a bidirectional gRPC call.
            let body = req.into_body().map_err(std::io::Error::other);
            Response::new(BodyExt::boxed(body))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms"))).await;
            Response::new(full("slow done\n"))
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    let mut io = TokioIo::new(up);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", "upgrade".parse().expect("hv"));
            r.headers_mut()
                .insert("upgrade", "websocket".parse().expect("hv"));
            r
        }
        _ => {
            let h = |n: &str| {
                req.headers()
                    .get_all(n)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            let body = format!(
                "version={:?}\nhost={}\nl5d-client-id={}\nl5d-dst-canonical={}\nforwarded={}\nconnection={}\nx-secret={}\n",
                req.version(),
                h("host"),
                h("l5d-client-id"),
                h("l5d-dst-canonical"),
                h("forwarded"),
                h("connection"),
                h("x-secret"),
            );
            Response::new(full(body))
        }
    };
    Ok(resp)
}

/// Adapts an iterator into a `Stream` without pulling in a futures crate.
fn futures_iter<I: Iterator + Unpin>(iter: I) -> IterStream<I> {
    IterStream(iter)
}

pub struct IterStream<I>(I);

/// A channel receiver as a `Stream`.
pub use control_plane::ReceiverStream;

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// An mTLS client for the gateway with the given caller certificate (`<stem>.crt/.key`).
pub fn client_tls(fx: &Fixture, stem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let creds = identity::Credentials::load(
        &fx.path(&format!("{stem}.crt")),
        &fx.path(&format!("{stem}.key")),
    )
    .expect("caller credentials");
    let store = identity::CertStore::new(&creds).expect("store");
    let anchors = fx.pki.anchors().expect("anchors");
    Arc::new(
        identity::tls::client_config(
            Some(store),
            &anchors,
            Identity::parse(GATEWAY_ID).expect("id"),
            alpn,
        )
        .expect("client config"),
    )
}

pub type ClientTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens one mTLS connection with SNI = the gateway's identity.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<ClientTls> {
    connect_sni(addr, tls, GATEWAY_ID).await
}

pub async fn connect_sni(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    sni: &str,
) -> anyhow::Result<ClientTls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = identity::tls::server_name(&Identity::parse(sni)?)?;
    Ok(tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?)
}

/// Connects as a Linkerd source proxy does: ALPN `transport.l5d.io/v1` only, then the header.
pub async fn linkerd_connect(
    fx: &Fixture,
    addr: SocketAddr,
    header: &transport_header::Header,
) -> anyhow::Result<ClientTls> {
    use tokio::io::AsyncWriteExt;
    let mut io = connect(addr, client_tls(fx, "vote-bot", &[transport_header::ALPN])).await?;
    anyhow::ensure!(
        io.get_ref().1.alpn_protocol() == Some(transport_header::ALPN),
        "gateway did not select transport.l5d.io/v1"
    );
    io.write_all(&header.encode()).await?;
    Ok(io)
}

/// A Linkerd source proxy's HTTP/2 session: the transport header, then HTTP/2 prior knowledge.
pub async fn linkerd_h2(
    fx: &Fixture,
    addr: SocketAddr,
    header: &transport_header::Header,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
    h2_over(linkerd_connect(fx, addr, header).await?).await
}

/// An HTTP/2 client on an established stream (prior knowledge, as after a transport header).
pub async fn h2_over<IO>(
    io: IO,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// A TCP server that reads until the peer half-closes, then answers `echo:<what it read>` and
/// closes: it only answers if half-close travels through the gateway.
pub async fn echo_after_eof() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                if tcp.read_to_end(&mut got).await.is_ok() {
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(&got);
                    let _ = tcp.write_all(&out).await;
                    let _ = tcp.shutdown().await;
                }
            });
        }
    });
    addr
}

pub async fn h2_sender(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
    h2_over(connect(addr, tls).await?).await
}

pub async fn h1_sender(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let io = connect(addr, tls).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn.with_upgrades());
    Ok(send)
}

pub async fn body_text(resp: Response<Incoming>) -> String {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The gateway's refusal reason on a response (`l5d-proxy-error`), empty when there is none.
pub fn proxy_error<B>(resp: &Response<B>) -> String {
    resp.headers()
        .get("l5d-proxy-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Polls `done` every 20 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
