//! The status page on the admin listener (issue 15), looked at as an operator does: in a
//! browser (headless Chromium over the DevTools protocol), on a desktop and a phone-sized
//! screen, and as JSON, while real clients use a TLS gateway in front of two real Mosaic
//! backends and a real nostr relay, and after one backend is killed.
//!
//! `STATUS_SCREENSHOT=docs/status-page.png cargo test --test it status_page::` writes the
//! screenshot in docs/operations.md.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::chromium::{Chromium, LaunchOptions, Page};
use crate::tls_edge::{master_key, tls_section, TestCa};
use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::dev::mosaic_backend::wire;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A TLS connection to the gateway as a Mosaic client that pins nothing (raw public key).
async fn tls(addr: SocketAddr) -> TlsStream<TcpStream> {
    let connector = mosaic_gateway::tls::backend_connector(None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    connector.connect(name, tcp).await.unwrap()
}

async fn wss(addr: SocketAddr, protocol: Option<&'static str>) -> Wss {
    let mut req = format!("wss://{addr}/").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::client_async(req, tls(addr).await))
        .await
        .unwrap()
        .unwrap();
    ws
}

/// An upgrade request the gateway refuses; returns the status line.
async fn refused(addr: SocketAddr, version: &str) -> String {
    let mut s = tls(addr).await;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 512];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

async fn status_json(admin: SocketAddr) -> Value {
    let (code, body) = admin_get(admin, "/status.json").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn backend_state(status: &Value, backend: &MosaicBackend) -> String {
    let url = format!("ws://{}/", backend.local_addr());
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == url.as_str())
        .unwrap_or_else(|| panic!("{url} not on the status page: {status}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

type MosaicBackend = mosaic_gateway::dev::mosaic_backend::MosaicBackend;

/// The backends table as the browser rendered it: `[backend, data-state, badge text]`.
const ROWS_JS: &str = "Array.from(document.querySelectorAll('tr[data-backend]')).map(r => \
    [r.dataset.backend, r.dataset.state, r.querySelector('.b').textContent])";

/// Loads `url` in a `width`-wide viewport, grows the viewport to the page's height and
/// returns the page (for `eval` and `screenshot_png`).
async fn open(browser: &Chromium, url: &str, width: u32, mobile: bool) -> Page {
    let mut page = browser.new_page().await.unwrap();
    let metrics = |height: u64| json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile});
    page.call("Emulation.setDeviceMetricsOverride", metrics(300))
        .await
        .unwrap();
    page.goto(url).await.unwrap();
    let height = page
        .eval("document.documentElement.scrollHeight")
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(300);
    page.call("Emulation.setDeviceMetricsOverride", metrics(height))
        .await
        .unwrap();
    page
}

#[tokio::test]
async fn status_page_shows_traffic_pools_and_certificates_and_a_killed_backend_as_down() {
    let ca = TestCa::new();
    let main = ca.issue("relay", &["relay.example.com"], 62);
    let old = ca.issue("old", &["old.example.com"], 9);
    let keys = tempfile::tempdir().unwrap();
    let (master, _) = master_key(keys.path());
    let (a, b) = (mosaic_backend().await, mosaic_backend().await);
    let relay = nostr_relay().await;
    let gw = gateway(&format!(
        "{}mosaic:\n  health_check: {{ interval: 200ms, timeout: 1s, unhealthy_threshold: 1 }}\n  \
         backends:\n    - url: ws://{}\n    - url: ws://{}\nnostr:\n  upstream: ws://{}\n",
        tls_section(Some(&master), &[&main, &old], ""),
        a.local_addr(),
        b.local_addr(),
        relay.local_addr()
    ))
    .await;
    let (public, admin) = (gw.public_addr, gw.admin_addr);

    // Traffic: Mosaic queries (one client stays, one leaves so its counters are folded in),
    // a nostr subscription, two refused upgrades and one failed TLS handshake.
    let mut stay = wss(public, Some("mosaic2024")).await;
    let mut leave = wss(public, Some("mosaic2024")).await;
    for (i, ws) in [&mut stay, &mut leave].into_iter().enumerate() {
        for n in 0..20u8 {
            let id = [i as u8, n];
            ws.send(Message::Binary(wire::query(id, b"").into()))
                .await
                .unwrap();
            let reply = tokio::time::timeout(T, ws.next()).await.unwrap().unwrap();
            assert_eq!(
                reply.unwrap().into_data().to_vec(),
                wire::query_complete(id)
            );
        }
    }
    leave.close(None).await.unwrap();
    let mut nostr = wss(public, None).await;
    nostr
        .send(Message::Text(r#"["REQ","s",{"kinds":[1]}]"#.into()))
        .await
        .unwrap();
    let eose = tokio::time::timeout(T, nostr.next())
        .await
        .unwrap()
        .unwrap();
    assert!(eose.unwrap().to_text().unwrap().contains("EOSE"));
    assert!(refused(public, "12").await.contains(" 426 "));
    assert!(refused(public, "12").await.contains(" 426 "));
    let mut plain = TcpStream::connect(public).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::time::timeout(T, plain.read(&mut [0; 64])).await;

    // The JSON view once the counters are in.
    let mut status = Value::Null;
    let start = Instant::now();
    while start.elapsed() < T {
        status = status_json(admin).await;
        let folded = status["traffic"].as_array().unwrap().iter().any(|t| {
            t["labels"]["protocol"] == "mosaic"
                && t["messages_total_up"].as_u64() >= Some(20)
                && t["messages_per_second_up"].is_number()
        });
        if folded && backend_state(&status, &a) == "up" && backend_state(&status, &b) == "up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["draining"], false);
    let connections = status["connections"].as_array().unwrap();
    let conns = |p: &str| {
        connections
            .iter()
            .find(|c| c["labels"]["protocol"] == p)
            .map(|c| (c["active"].as_i64().unwrap(), c["total"].as_u64().unwrap()))
    };
    assert_eq!(conns("mosaic"), Some((1, 2)), "{status}");
    assert_eq!(conns("nostr"), Some((1, 1)), "{status}");
    let mosaic = status["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["protocol"] == "mosaic")
        .unwrap();
    assert!(mosaic["messages_total_up"].as_u64() >= Some(20), "{status}");
    assert!(mosaic["messages_per_second_up"].as_f64().unwrap() > 0.0);
    let pool = &status["pools"][0];
    assert_eq!(pool["pool"], "default");
    assert_eq!(pool["healthy"], 2);
    for backend in pool["backends"].as_array().unwrap() {
        assert_eq!(backend["last_check"]["ok"], true, "{backend}");
    }
    let relays = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == "nostr")
        .unwrap();
    assert_eq!(relays["route"], "default");
    assert_eq!(
        relays["backends"][0]["backend"],
        format!("ws://{}/", relay.local_addr())
    );
    let rejected = status["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["labels"]["reason"] == "bad_ws_version")
        .unwrap();
    assert_eq!(
        (&rejected["recent"], &rejected["total"]),
        (&json!(2), &json!(2))
    );
    let days: Vec<(String, f64)> = status["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            (name, c["days_left"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(days.len(), 2, "{status}");
    assert_eq!(days[0].0, "relay.example.com");
    assert!((61.0..62.1).contains(&days[0].1), "{days:?}");
    assert!((8.0..9.1).contains(&days[1].1), "{days:?}");
    // Two Mosaic clients, one nostr client, two refused upgrades; plain HTTP on the TLS port.
    assert_eq!(status["tls_handshakes"]["anonymous"], 5, "{status}");
    assert_eq!(
        status["tls_handshake_failures"]["client_hello"], 1,
        "{status}"
    );

    let (code, html) = admin_get(admin, "/").await;
    assert_eq!(code, 200);
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(!html.contains("<script"), "no script on the page");
    assert!(admin_get(admin, "/status")
        .await
        .1
        .contains("<title>mosaic-gateway status</title>"));

    let Some(browser) = Chromium::launch(LaunchOptions::default()).await else {
        return;
    };
    let url = format!("http://{admin}/");
    let page = open(&browser, &url, 1000, false).await;
    let rows = page_eval(page, ROWS_JS).await;
    // The Mosaic pool's two backends, then the nostr relay (a pool of one).
    let expected = |state_b: &str| {
        json!([
            [format!("ws://{}/", a.local_addr()), "up", "up"],
            [format!("ws://{}/", b.local_addr()), state_b, state_b],
            [format!("ws://{}/", relay.local_addr()), "up", "up"],
        ])
    };
    assert_eq!(rows, expected("up"));

    // Kill backend b: the health checks mark it down and the page says so.
    b.shutdown();
    let start = Instant::now();
    while backend_state(&status_json(admin).await, &b) != "down" {
        assert!(start.elapsed() < T, "killed backend never shown as down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut page = open(&browser, &url, 1000, false).await;
    let rows = page.eval(ROWS_JS).await.unwrap();
    assert_eq!(rows, expected("down"));
    let check = page
        .eval("document.querySelector('tr[data-state=down] td:last-child').textContent")
        .await
        .unwrap();
    assert!(
        check.as_str().unwrap().contains("connect failed"),
        "last check of the killed backend: {check}"
    );
    let title = page.eval("document.title").await.unwrap();
    assert_eq!(title, "mosaic-gateway status");
    let png = page.screenshot_png().await.unwrap();
    page.close().await;
    assert_eq!(&png[1..4], b"PNG");
    if let Ok(path) = std::env::var("STATUS_SCREENSHOT") {
        std::fs::write(&path, &png).unwrap();
        eprintln!(
            "[status_page] screenshot written to {path} ({} bytes)",
            png.len()
        );
    }

    // On a phone-sized screen nothing is wider than the screen: wide tables scroll inside
    // their section.
    let mut page = open(&browser, &url, 390, true).await;
    let fits = page
        .eval("document.documentElement.scrollWidth <= window.innerWidth")
        .await
        .unwrap();
    assert_eq!(fits, true);
    if let Ok(path) = std::env::var("STATUS_SCREENSHOT_PHONE") {
        std::fs::write(&path, page.screenshot_png().await.unwrap()).unwrap();
    }
    page.close().await;
    drop(stay);
    drop(nostr);
}

async fn page_eval(mut page: Page, js: &str) -> Value {
    let v = page.eval(js).await.unwrap();
    page.close().await;
    v
}

#[tokio::test]
async fn status_page_follows_the_drain() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "shutdown:\n  drain_timeout: 20s\n").await;
    let admin = gw.admin_addr;
    // Open connections keep the drain (and the admin listener) going until they close.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(mosaic_client(gw.public_addr).await);
    }
    assert_eq!(status_json(admin).await["draining"], false);
    let drain = tokio::spawn(gw.shutdown());
    let start = Instant::now();
    loop {
        let s = status_json(admin).await;
        if s["draining"] == true {
            assert_eq!(s["ready"], false);
            assert_eq!(s["not_ready"], "draining");
            let left = s["drain_seconds_left"].as_f64().unwrap();
            assert!((0.0..=20.0).contains(&left), "{s}");
            let (_, html) = admin_get(admin, "/").await;
            assert!(
                html.contains("id=\"not-ready\">not ready: draining</p>"),
                "{html}"
            );
            break;
        }
        assert!(
            start.elapsed() < T,
            "the status page never showed the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(clients);
    tokio::time::timeout(T, drain).await.unwrap().unwrap();
}

/// What an operator or a peer writes reaches the page as text, whatever markup it holds:
/// a ban's reason (from `bans.file` here; NIP-86 `blockip` fills the same field) and a
/// backend URL's query, which also lands in an attribute.
#[tokio::test]
async fn status_page_shows_markup_in_a_ban_reason_and_a_backend_url_as_text() {
    const REASON: &str =
        r#"</td></tr></table><script>document.title="owned"</script><b title='t'>&amp; & "quoted""#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bans.json");
    let bans = json!({"bans": [{"net": "192.0.2.7/32", "until_ms": null, "reason": REASON}]});
    std::fs::write(&file, bans.to_string()).unwrap();
    let backend = mosaic_backend().await;
    let url = format!("ws://{}/?tenant=a&name='o'", backend.local_addr());
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: \"{url}\"\nbans: {{ file: {} }}\n",
        file.display()
    ))
    .await;
    let admin = gw.admin_addr;

    let status = status_json(admin).await;
    assert_eq!(status["bans"][0]["reason"], REASON, "{status}");
    assert_eq!(status["pools"][0]["backends"][0]["backend"], url.as_str());
    let (code, html) = admin_get(admin, "/").await;
    assert_eq!(code, 200);
    for raw in ["<script", "<b title", "& \"quoted", "&name"] {
        assert!(
            !html.contains(raw),
            "`{raw}` reached the page as markup: {html}"
        );
    }
    assert!(
        html.contains(
            "&lt;/table&gt;&lt;script&gt;document.title=&quot;owned&quot;&lt;/script&gt;"
        ),
        "{html}"
    );
    assert!(
        html.contains("&amp;amp; &amp; &quot;quoted&quot;"),
        "{html}"
    );
    assert!(html.contains("?tenant=a&amp;name='o'\""), "{html}");

    // As a browser parses it: the reason is one cell's text, the bans table keeps its two
    // rows, the backend's attribute holds the URL, and no script exists or ran.
    let Some(browser) = Chromium::launch(LaunchOptions::default()).await else {
        return;
    };
    let page = open(&browser, &format!("http://{admin}/"), 1000, false).await;
    let seen = page_eval(
        page,
        "[document.querySelector('#bans tr[data-ban] td:last-child').textContent, \
          document.querySelectorAll('#bans tr').length, \
          document.querySelector('tr[data-backend]').dataset.backend, \
          document.scripts.length, document.title]",
    )
    .await;
    assert_eq!(seen, json!([REASON, 2, url, 0, "mosaic-gateway status"]));
}
