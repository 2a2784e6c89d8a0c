//! The gateway's live dashboard in a real browser: headless Chromium (the Debian package)
//! loads `/dashboard` from the admin port while the gateway is under load; the rendered
//! tables are checked against the traffic sent, a caller that appears after the page loaded
//! shows up without a reload, and a screenshot is kept as a test artifact.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use e2e::{browser::Browser, viz::*, *};

const EMOJI_BOT_ID: &str = "emoji-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local";

/// Where the screenshot is kept: `target/test-artifacts/` (the test's temporary directory
/// is removed when it ends).
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The cells of the row with these `data-*` attributes, by column key.
fn row(dom: &str, attrs: &str) -> Option<HashMap<String, String>> {
    let start = dom.find(attrs)?;
    let end = start + dom[start..].find("</tr>")?;
    let mut cells = HashMap::new();
    let mut rest = &dom[start..end];
    while let Some(i) = rest.find("data-key=\"") {
        rest = &rest[i + 10..];
        let key_end = rest.find('"')?;
        let key = rest[..key_end].to_string();
        let text_start = rest.find('>')? + 1;
        let text_end = text_start + rest[text_start..].find('<')?;
        cells.insert(key, rest[text_start..text_end].to_string());
        rest = &rest[text_end..];
    }
    Some(cells)
}

fn flow(dom: &str, caller: &str, service: &str) -> HashMap<String, String> {
    let attrs = format!("data-caller=\"{caller}\" data-service=\"{service}\"");
    row(dom, &attrs).unwrap_or_else(|| panic!("no row for {caller} → {service} in:\n{dom}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_who_calls_what_in_a_real_browser() {
    let fx = Fixture::new();
    fx.caller("emoji-bot", EMOJI_BOT_ID);
    let (gw, web, _dst) = mesh(&fx, &[]).await;
    let mut h2 = h2_sender(gw.listen, client_tls(&fx, "vote-bot", &[b"h2"]))
        .await
        .unwrap();
    // Known traffic first: 30 good calls and 10 failing ones to emoji-svc (75 % success).
    send(
        &mut h2,
        &Traffic {
            web: 0,
            ok: 30,
            unavailable: 10,
            denied: 0,
        },
    )
    .await;

    // Then load on web-svc for as long as the browser looks (bounded in count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let mut h2 = h2.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                call(&mut h2, WEB, "/", false).await;
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let url = format!("http://{}/dashboard", gw.admin);
    let browser = Browser::launch(&fx.path("chromium"), &url);
    let mut page = browser.page(&url).await;
    let snapshots = "Number(document.body.dataset.snapshots)";
    let deadline = Instant::now() + Duration::from_secs(30);
    while page.eval(snapshots).await.as_u64().unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "the page renders no snapshot");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A caller the page has not seen yet arrives while it is open.
    let mut newcomer = h2_sender(gw.listen, client_tls(&fx, "emoji-bot", &[b"h2"]))
        .await
        .unwrap();
    for _ in 0..5 {
        call(&mut newcomer, EMOJI, "/grpc", true).await;
    }
    let appeared = format!("!!document.querySelector('tr[data-caller=\"{EMOJI_BOT_ID}\"]')");
    let deadline = Instant::now() + Duration::from_secs(15);
    while page.eval(&appeared).await != serde_json::Value::Bool(true) {
        assert!(Instant::now() < deadline, "the new caller never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One more snapshot, so every table reflects the newcomer's calls.
    let seen = page.eval(snapshots).await.as_u64().unwrap_or(0);
    while page.eval(snapshots).await.as_u64().unwrap_or(0) < seen + 2 {
        assert!(Instant::now() < deadline, "the page stopped updating");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dom = page.html().await;
    assert!(dom.contains(GATEWAY_ID), "the gateway's identity as text");
    assert!(dom.contains("left (expires"), "the certificate's time left");

    // The numbers sent: 40 calls to emoji-svc, 10 failing.
    let emoji = flow(&dom, VOTE_BOT_ID, EMOJI);
    assert_eq!(emoji["requests"], "40", "{emoji:?}");
    assert_eq!(emoji["failures"], "10", "{emoji:?}");
    // web-svc under load: counted, all successful, with latencies.
    let web_row = flow(&dom, VOTE_BOT_ID, WEB);
    let web_requests: u64 = web_row["requests"].parse().unwrap();
    assert!(web_requests > 0, "{web_row:?}");
    assert!(
        web_requests <= sent.load(Ordering::Relaxed) + 1,
        "{web_row:?}"
    );
    assert_eq!(web_row["success_rate"], "100.0 %", "{web_row:?}");
    assert_ne!(web_row["p50_ms"], "–", "{web_row:?}");

    // The newcomer appeared without a reload: absent from the first snapshot, present now.
    let first = dom
        .split("data-first-callers=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("");
    assert!(
        first.contains(VOTE_BOT_ID) && !first.contains(EMOJI_BOT_ID),
        "{first}"
    );
    let newcomer_row = flow(&dom, EMOJI_BOT_ID, EMOJI);
    assert_eq!(newcomer_row["requests"], "5", "{newcomer_row:?}");

    // Recent requests tap-style, endpoints with their identity, callers as copyable text.
    let recent = dom.split("id=\"recent\"").nth(1).unwrap_or("");
    let recent = &recent[..recent.find("</table>").unwrap_or(0)];
    let rows = recent.matches("<tr class=\"row\"").count();
    assert!((1..=25).contains(&rows), "{rows} recent rows: {recent}");
    for cell in [
        format!("data-key=\"caller\">{VOTE_BOT_ID}</td>"),
        format!("data-key=\"authority\">{WEB}</td>"),
        "data-key=\"path\">/</td>".to_string(),
        "data-key=\"status\">200</td>".to_string(),
    ] {
        assert!(recent.contains(&cell), "{cell} in {recent}");
    }
    assert!(
        dom.contains(&format!("data-key=\"addr\">{}</td>", web.addr)),
        "endpoint listed: {dom}"
    );
    assert!(dom.contains(&format!("data-key=\"identity\">{WEB_ID}</td>")));

    // A screenshot for people to look at.
    let png = page.screenshot().await;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
    std::fs::write(artifacts().join("dashboard.png"), &png).unwrap();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    drop(page);
    drop(browser);

    // The browser gone, its stream and tap close: no cost left behind.
    wait_for("the dashboard to close", Duration::from_secs(10), || {
        metric(&gw.metrics(), "gateway_dashboards_open", &[]) == 0
    })
    .await;
}
