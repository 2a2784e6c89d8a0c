//! The gateway's HTTP/2 server against raw frames: each protocol error ends the connection
//! with GOAWAY and its code (RFC 9113 §5.4.1), each flood is cut with ENHANCE_YOUR_CALM, each
//! stream-level refusal answers or resets that stream only, and the gateway keeps serving.

use std::time::Duration;

use e2e::{h2raw::frame, *};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HPACK: a literal field without indexing, new name, no Huffman.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    e2e::h2raw::literal(block, name.as_bytes(), value.as_bytes());
}

/// A GET of `/` on web-svc.
fn get_block() -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", "GET");
    literal(&mut b, ":scheme", "https");
    literal(&mut b, ":path", "/");
    literal(&mut b, ":authority", &format!("{WEB_SVC}:80"));
    b
}

fn web_route(backend: std::net::SocketAddr) -> String {
    format!("{WEB_SVC}:80={backend}")
}

/// A POST to the backend's `/upload`, which answers once the body has ended.
fn request_block(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", "POST");
    literal(&mut b, ":scheme", "https");
    literal(&mut b, ":path", "/upload");
    literal(&mut b, ":authority", &format!("{WEB_SVC}:80"));
    for (n, v) in extra {
        literal(&mut b, n, v);
    }
    b
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// What the gateway sent, frame by frame, until GOAWAY, the end of the connection, or 10 s.
#[derive(Debug, Default)]
struct Seen {
    /// (stream, first byte of the header block, whole block) for each HEADERS.
    headers: Vec<(u32, Vec<u8>)>,
    resets: Vec<(u32, u32)>,
    goaway: Option<(u32, String)>,
    pings: usize,
}

/// Opens a connection (preface and empty SETTINGS already sent), sends `bytes`, and
/// collects what comes back until `until` says enough or the gateway closes.
async fn exchange(fx: &Fixture, gw: &Gateway, bytes: &[u8], until: impl Fn(&Seen) -> bool) -> Seen {
    let mut io = connect(gw.listen, client_tls(fx, "vote-bot", &[b"h2"]))
        .await
        .expect("connect");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend_from_slice(bytes);
    // Written in pieces while reading, so a gateway that stops reading (its output is
    // full) cannot deadlock the test.
    let (mut rd, mut wr) = tokio::io::split(&mut io);
    let writer = async {
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            for chunk in out.chunks(16 * 1024) {
                if wr.write_all(chunk).await.is_err() {
                    break;
                }
            }
        })
        .await;
    };
    let reader = async {
        let mut seen = Seen::default();
        let mut got: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while got.len() >= 9 {
                let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
                if got.len() < 9 + len {
                    break;
                }
                let kind = got[3];
                let stream = u32::from_be_bytes([got[5], got[6], got[7], got[8]]) & 0x7fff_ffff;
                let payload = got[9..9 + len].to_vec();
                got.drain(..9 + len);
                match kind {
                    HEADERS => seen.headers.push((stream, payload)),
                    RST_STREAM => seen
                        .resets
                        .push((stream, u32::from_be_bytes(payload[..4].try_into().unwrap()))),
                    GOAWAY => {
                        seen.goaway = Some((
                            u32::from_be_bytes(payload[4..8].try_into().unwrap()),
                            String::from_utf8_lossy(&payload[8..]).into_owned(),
                        ));
                        return seen;
                    }
                    PING => seen.pings += 1,
                    _ => {}
                }
                if until(&seen) {
                    return seen;
                }
            }
            match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return seen,
            }
        }
    };
    let (_, seen) = tokio::join!(writer, reader);
    seen
}

/// A plain GET is still served: nothing above broke the gateway.
async fn still_serves(fx: &Fixture, gw: &Gateway) {
    let b = get_block();
    let seen = exchange(
        fx,
        gw,
        &frame(HEADERS, END_STREAM | END_HEADERS, 1, &b),
        |s| !s.headers.is_empty(),
    )
    .await;
    assert_eq!(
        seen.headers.first().map(|h| h.1[0]),
        Some(0x88),
        "no 200 after the cases: {seen:?}"
    );
}

fn code_of(seen: &Seen) -> Option<u32> {
    seen.goaway.as_ref().map(|g| g.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_end_the_connection_with_goaway_and_their_code() {
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(&fx, &["--route", &web_route(backend)]);
    let block = request_block(&[]);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "a frame over 16 KiB",
            frame(0, 0, 1, &vec![0; 16 * 1024 + 1]),
            0x6,
        ),
        (
            "an HPACK index into nothing",
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0x20]),
            0x9,
        ),
        (
            "the connection window past 2^31-1",
            [
                frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
                frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            ]
            .concat(),
            0x3,
        ),
        ("DATA on a stream never opened", frame(0, 0, 5, b"x"), 0x1),
        (
            "CONTINUATION without HEADERS",
            frame(CONTINUATION, END_HEADERS, 1, &block),
            0x1,
        ),
        (
            "PUSH_PROMISE from a client",
            frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]),
            0x1,
        ),
        (
            "an even stream id",
            frame(HEADERS, END_HEADERS, 2, &block),
            0x1,
        ),
        (
            "another frame inside a header block",
            [frame(HEADERS, 0, 1, &block), frame(PING, 0, 0, &[0; 8])].concat(),
            0x1,
        ),
        ("a PING of 7 bytes", frame(PING, 0, 0, &[0; 7]), 0x6),
    ];
    let mut failed = Vec::new();
    for (what, bytes, code) in cases {
        let seen = exchange(&fx, &gw, &bytes, |_| false).await;
        if code_of(&seen) != Some(code) {
            failed.push(format!("{what}: expected GOAWAY {code:#x}, got {seen:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    still_serves(&fx, &gw).await;
    let m = gw.metrics();
    assert!(
        m.contains("inbound_http_errors_total{error=\"frame_too_large\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_cut_with_enhance_your_calm() {
    let fx = Fixture::new();
    let backend = backend().await;
    let gw = Gateway::start(&fx, &["--route", &web_route(backend)]);
    let block = request_block(&[]);

    // CONTINUATION: a header block in a hundred 1-byte frames.
    let mut cont = frame(HEADERS, 0, 1, &block[..1]);
    for i in 1..100 {
        cont.extend(frame(CONTINUATION, 0, 1, &block[i % block.len()..][..1]));
    }
    // PING, SETTINGS and empty DATA: 3,000 frames that ask for work and change nothing.
    let pings: Vec<u8> = (0..3000u32)
        .flat_map(|i| frame(PING, 0, 0, &u64::from(i).to_be_bytes()))
        .collect();
    let settings: Vec<u8> = (0..3000).flat_map(|_| frame(SETTINGS, 0, 0, &[])).collect();
    let mut empty_data = frame(HEADERS, END_HEADERS, 1, &block);
    for _ in 0..3000 {
        empty_data.extend(frame(0, 0, 1, &[]));
    }
    // Rapid reset: streams opened and reset at once, far more than ever get answered.
    let get = get_block();
    let mut resets = Vec::new();
    for i in 0..3000u32 {
        let id = 2 * i + 1;
        resets.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &get));
        resets.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    for (what, bytes, reason) in [
        ("CONTINUATION flood", cont, "header_block_too_large"),
        ("PING flood", pings, "too_many_frames_without_effect"),
        ("SETTINGS flood", settings, "too_many_frames_without_effect"),
        (
            "empty DATA flood",
            empty_data,
            "too_many_frames_without_effect",
        ),
        ("rapid reset", resets, "too_many_streams_reset_early"),
    ] {
        let seen = exchange(&fx, &gw, &bytes, |_| false).await;
        assert_eq!(
            seen.goaway,
            Some((0xb, reason.to_string())),
            "{what}: {} PING acks, {} resets",
            seen.pings,
            seen.resets.len()
        );
    }
    still_serves(&fx, &gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refusals_touch_only_their_stream() {
    let fx = Fixture::new();
    let backend = backend().await;
    let config = fx.path("limits.toml");
    std::fs::write(
        &config,
        "max_concurrent_streams = 2\nmax_header_bytes = 2048\n",
    )
    .unwrap();
    let gw = Gateway::start(
        &fx,
        &[
            "--route",
            &web_route(backend),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let get = get_block();

    // Over the header list size: 431 with the reason, and the next stream is served.
    let mut big = get.clone();
    for i in 0..30 {
        literal(&mut big, &format!("x-field-{i}"), &"v".repeat(100));
    }
    let bytes = [
        frame(HEADERS, END_STREAM | END_HEADERS, 1, &big),
        frame(HEADERS, END_STREAM | END_HEADERS, 3, &get),
    ]
    .concat();
    let seen = exchange(&fx, &gw, &bytes, |s| s.headers.len() == 2).await;
    assert_eq!(seen.goaway, None, "{seen:?}");
    let status = |id: u32| {
        seen.headers
            .iter()
            .find(|h| h.0 == id)
            .map(|h| h.1.clone())
            .unwrap_or_default()
    };
    // :status 431 is not in the static table: a literal with the name :status (index 8).
    assert_eq!(&status(1)[..5], &[0x08, 3, b'4', b'3', b'1'], "{seen:?}");
    assert!(
        String::from_utf8_lossy(&status(1)).contains("request_header_fields_too_large"),
        "{seen:?}"
    );
    assert_eq!(status(3).first(), Some(&0x88), "{seen:?}");

    // Three streams open at once with a limit of two: the third is refused (REFUSED_STREAM,
    // safe to retry), the first two keep their bodies open and are answered once they end.
    let post = request_block(&[]);
    let bytes = [
        frame(HEADERS, END_HEADERS, 1, &post),
        frame(HEADERS, END_HEADERS, 3, &post),
        frame(HEADERS, END_HEADERS, 5, &post),
        frame(0, END_STREAM, 1, b"a"),
        frame(0, END_STREAM, 3, b"b"),
    ]
    .concat();
    let seen = exchange(&fx, &gw, &bytes, |s| s.headers.len() == 2).await;
    assert_eq!(seen.resets, vec![(5, 0x7)], "{seen:?}");
    assert_eq!(seen.headers.len(), 2, "{seen:?}");

    // A body longer than its content-length: that stream is reset (PROTOCOL_ERROR), the
    // connection goes on.
    let bytes = [
        frame(
            HEADERS,
            END_HEADERS,
            1,
            &request_block(&[("content-length", "2")]),
        ),
        frame(0, END_STREAM, 1, b"abc"),
        frame(HEADERS, END_STREAM | END_HEADERS, 3, &get),
    ]
    .concat();
    let seen = exchange(&fx, &gw, &bytes, |s| s.headers.iter().any(|h| h.0 == 3)).await;
    assert_eq!(seen.resets, vec![(1, 0x1)], "{seen:?}");
    let answers: Vec<(u32, u8)> = seen.headers.iter().map(|h| (h.0, h.1[0])).collect();
    assert_eq!(answers, vec![(3, 0x88)], "{seen:?}");
    assert_eq!(seen.goaway, None);
    still_serves(&fx, &gw).await;
}
