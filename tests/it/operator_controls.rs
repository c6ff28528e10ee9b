//! Acting on abuse while the gateway runs (issue 25), as an operator sees it: trusted
//! addresses exempt from every limit beside ordinary ones, temporary bans after repeated
//! trips that close the address's open connections, end on time and survive a restart in
//! `bans.file`, NIP-86 management on the admin listener authorised by real NIP-98 events,
//! a reload whose deny list reaches connections already open, and `bytes_per_connection`
//! throttling the upstream's direction.
//!
//! Clients come from distinct loopback addresses (Linux routes all of 127/8 to `lo`), so
//! the gateway sees several clients side by side.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::nostr_gateway::deflate_server;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::runtime::Running;
use nostr::hashes::Hash as _;
use nostr::nips::nip98::{HttpData, HttpMethod};
use nostr::{EventBuilder, JsonUtil, Keys, Timestamp, ToBech32};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// A nostr WebSocket from `from`; `Err` carries what went wrong (an HTTP status as
/// `http NNN`, anything else as the connection ending).
async fn ws_from(from: &str, to: SocketAddr) -> Result<Ws, String> {
    ws_as(from, to, None).await
}

/// A WebSocket from `from`, offering `subprotocol`.
async fn ws_as(from: &str, to: SocketAddr, subprotocol: Option<&str>) -> Result<Ws, String> {
    let stream = tcp_from(from, to).await;
    let mut req = format!("ws://{to}/").into_client_request().unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let r = tokio::time::timeout(
        T,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("handshake ended in time");
    match r {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            Err(format!("http {}", resp.status().as_u16()))
        }
        Err(e) => Err(format!("closed: {e}")),
    }
}

/// Whether the gateway closed a connection from `from` right after accept (no answer at
/// all, like `access.deny`).
async fn closed_at_accept(from: &str, to: SocketAddr) -> bool {
    let mut s = tcp_from(from, to).await;
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(T, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Sends `text` and expects it back from the echoing relay.
async fn echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_string().into()))
        .await
        .unwrap();
    assert_eq!(recv(ws).await, text.as_bytes());
}

/// A gateway in front of a Mosaic backend and an echoing nostr relay, with `extra` config.
async fn echo_gateway(extra: &str) -> Running {
    let backend = mosaic_backend().await;
    let relay = deflate_server(|t| Some(t.to_string())).await;
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{relay}\n{extra}",
        backend.local_addr()
    ))
    .await;
    std::mem::forget(backend);
    gw
}

async fn metrics(gw: &Running) -> String {
    admin_get(gw.admin_addr, "/metrics").await.1
}

#[tokio::test]
async fn exempt_addresses_are_never_limited_nor_banned_while_others_are_banned_after_repeated_trips(
) {
    let gw = echo_gateway(
        "rate_limits:\n  connections_per_ip: { rate: 1, per: 60s, burst: 1 }\n  exempt: [127.0.0.2/32]\n\
         bans: { after: 2, within: 1m, for: 10m }\n",
    )
    .await;
    // The trusted monitor opens as many connections as it likes.
    let mut trusted = Vec::new();
    for _ in 0..5 {
        trusted.push(ws_from("127.0.0.2", gw.public_addr).await.unwrap());
    }
    // An ordinary client gets its one connection, then 429 twice: two trips ban it.
    let mut open = ws_from("127.0.0.3", gw.public_addr).await.unwrap();
    echoes(&mut open, "before").await;
    assert_eq!(
        ws_from("127.0.0.3", gw.public_addr).await.unwrap_err(),
        "http 429"
    );
    assert_eq!(
        ws_from("127.0.0.3", gw.public_addr).await.unwrap_err(),
        "http 429"
    );
    let banned_at = Instant::now();
    // The ban closes the connection it already had (1008), and new ones right after accept.
    assert_eq!(close_code(&mut open).await, Some(1008));
    eprintln!(
        "ban → open connection closed 1008 in {:?}",
        banned_at.elapsed()
    );
    assert!(closed_at_accept("127.0.0.3", gw.public_addr).await);
    // The trusted client was never touched, and another client is served as before.
    for ws in &mut trusted {
        echoes(ws, "still here").await;
    }
    let mut other = ws_from("127.0.0.4", gw.public_addr).await.unwrap();
    echoes(&mut other, "hello").await;
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "mosaic_gateway_bans_active"), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "mosaic_gateway_rate_limited_total{limit=\"banned\",protocol=\"unknown\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "mosaic_gateway_rate_limited_total{limit=\"connections\",protocol=\"nostr\"}"
        ),
        2.0
    );
    // The status page lists the ban, in HTML and JSON.
    let (_, page) = admin_get(gw.admin_addr, "/").await;
    assert!(page.contains("data-ban=\"127.0.0.3\""), "{page}");
    let (_, json) = admin_get(gw.admin_addr, "/status.json").await;
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["bans_active"], 1);
    assert_eq!(report["bans"][0]["address"], "127.0.0.3");
    assert_eq!(report["bans"][0]["kind"], "temporary");
}

#[tokio::test]
async fn a_ban_is_kept_across_a_restart_in_the_bans_file_and_ends_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bans.json");
    let config = format!(
        "rate_limits:\n  connections_per_ip: {{ rate: 1, per: 60s, burst: 1 }}\n\
         bans: {{ after: 1, for: 3s, file: {} }}\n",
        file.display()
    );
    let gw = echo_gateway(&config).await;
    let _first = ws_from("127.0.0.5", gw.public_addr).await.unwrap();
    assert_eq!(
        ws_from("127.0.0.5", gw.public_addr).await.unwrap_err(),
        "http 429"
    );
    eventually("the ban is written to bans.file", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("127.0.0.5/32"))
    })
    .await;
    drop(_first);
    drop(gw);
    // A new process reads the file: the address is still refused right after accept.
    let gw = echo_gateway(&config).await;
    assert!(closed_at_accept("127.0.0.5", gw.public_addr).await);
    assert_eq!(
        metric(&metrics(&gw).await, "mosaic_gateway_bans_active"),
        1.0
    );
    // Three seconds after it began, the ban is over and the client is served again.
    let start = Instant::now();
    loop {
        if let Ok(mut ws) = ws_from("127.0.0.5", gw.public_addr).await {
            echoes(&mut ws, "back").await;
            break;
        }
        assert!(start.elapsed() < T, "the ban never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("the ended ban is forgotten", || {
        std::fs::read_to_string(&file).is_ok_and(|t| !t.contains("127.0.0.5"))
    })
    .await;
}

#[tokio::test]
async fn a_clients_protocol_violations_count_towards_a_ban() {
    let gw = echo_gateway("bans: { after: 2, within: 1m, for: 10m }\n").await;
    for _ in 0..2 {
        // A text message on a Mosaic connection: 1003, a violation by the client.
        let mut ws = ws_as("127.0.0.10", gw.public_addr, Some("mosaic2024"))
            .await
            .unwrap();
        ws.send(Message::Text("not binary".into())).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(1003));
    }
    let start = Instant::now();
    while !closed_at_accept("127.0.0.10", gw.public_addr).await {
        // The trip is counted when the closed connection's task ends.
        assert!(
            start.elapsed() < T,
            "two violations never banned the address"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut other = ws_from("127.0.0.11", gw.public_addr).await.unwrap();
    echoes(&mut other, "served").await;
}

/// A NIP-86 call signed by `keys`, `created_at` moved by `age` seconds into the past, with
/// the payload hash of `signed_body` (the body sent may differ).
fn nip98(keys: &Keys, url: &str, signed_body: &[u8], age: u64) -> String {
    let data = HttpData::new(url.parse().unwrap(), HttpMethod::POST)
        .payload(nostr::hashes::sha256::Hash::hash(signed_body));
    let event = EventBuilder::http_auth(data)
        .custom_created_at(Timestamp::from_secs(Timestamp::now().as_secs() - age))
        .sign_with_keys(keys)
        .unwrap();
    format!(
        "Nostr {}",
        base64::engine::general_purpose::STANDARD.encode(event.as_json())
    )
}

/// POSTs a NIP-86 call to `addr` and returns (status, body).
async fn rpc(addr: SocketAddr, auth: Option<&str>, body: &str) -> (u16, String) {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let text = raw_http(
        addr,
        &format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/nostr+json+rpc\r\n\
             {auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    status_and_body(&text)
}

/// A NIP-86 call to the admin listener at `admin`, authorised now by `keys`.
async fn signed_rpc(admin: SocketAddr, keys: &Keys, body: &str) -> (u16, String) {
    let auth = nip98(keys, &format!("http://{admin}/"), body.as_bytes(), 0);
    rpc(admin, Some(&auth), body).await
}

#[tokio::test]
async fn nip86_blockip_with_a_real_nip98_event_closes_the_address_and_only_the_right_key_may() {
    let operator = Keys::generate();
    let stranger = Keys::generate();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bans.json");
    let gw = echo_gateway(&format!(
        "admin:\n  listen: 127.0.0.1:0\n  nip86_pubkeys: [{}]\nbans: {{ file: {} }}\n",
        operator.public_key().to_bech32().unwrap(),
        file.display()
    ))
    .await;
    let admin = gw.admin_addr;
    let url = format!("http://{admin}/");
    let mut victim = ws_from("127.0.0.6", gw.public_addr).await.unwrap();
    let mut bystander = ws_from("127.0.0.7", gw.public_addr).await.unwrap();
    echoes(&mut victim, "hi").await;
    let block = r#"{"method":"blockip","params":["127.0.0.6","spam"]}"#;
    // Refused: no authorization, a key not listed, a stale event, another body's hash.
    let refusals = [
        (None, "NIP-98"),
        (
            Some(nip98(&stranger, &url, block.as_bytes(), 0)),
            "not in admin.nip86_pubkeys",
        ),
        (
            Some(nip98(&operator, &url, block.as_bytes(), 600)),
            "within 60 s",
        ),
        (Some(nip98(&operator, &url, b"{}", 0)), "payload"),
        (
            Some(nip98(&operator, "http://elsewhere/", block.as_bytes(), 0)),
            "authorizes",
        ),
    ];
    for (auth, why) in &refusals {
        let (status, body) = rpc(admin, auth.as_deref(), block).await;
        assert_eq!(status, 401, "{why}: {body}");
        assert!(body.contains(why), "{why}: {body}");
    }
    echoes(&mut victim, "still served").await;
    // Accepted: the address's open connection is closed with 1008, new ones after accept.
    let (status, body) = signed_rpc(admin, &operator, block).await;
    let blocked_at = Instant::now();
    assert_eq!((status, body.as_str()), (200, r#"{"result":true}"#));
    assert_eq!(close_code(&mut victim).await, Some(1008));
    eprintln!(
        "blockip answered → open connection closed 1008 in {:?}",
        blocked_at.elapsed()
    );
    assert!(closed_at_accept("127.0.0.6", gw.public_addr).await);
    echoes(&mut bystander, "unaffected").await;
    let list = r#"{"method":"listblockedips","params":[]}"#;
    let (_, body) = signed_rpc(admin, &operator, list).await;
    assert_eq!(body, r#"{"result":[{"ip":"127.0.0.6","reason":"spam"}]}"#);
    let methods = r#"{"method":"supportedmethods","params":[]}"#;
    let (_, body) = signed_rpc(admin, &operator, methods).await;
    assert!(
        body.contains("\"blockip\"") && body.contains("\"unblockip\""),
        "{body}"
    );
    // The block persists with the bans file; unblocking serves the address again.
    eventually("the block is in bans.file", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("127.0.0.6/32"))
    })
    .await;
    let unblock = r#"{"method":"unblockip","params":["127.0.0.6"]}"#;
    let (status, _) = signed_rpc(admin, &operator, unblock).await;
    assert_eq!(status, 200);
    let mut back = ws_from("127.0.0.6", gw.public_addr).await.unwrap();
    echoes(&mut back, "welcome back").await;
}

/// A relay front that logs the plain requests it gets and answers each with a small JSON
/// document of its own; (its address, what it saw).
async fn http_relay() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = TcpListener::bind(any_port()).await.unwrap();
    let relay = l.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let body = r#"{"result":"the relay's own"}"#;
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    (relay, seen)
}

/// One plain request on an open connection `s`; the status of its answer.
async fn keep_alive_get(s: &mut TcpStream) -> u16 {
    s.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\nAccept: application/nostr+json\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "the connection ended: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    status_and_body(&head).0
}

#[tokio::test]
async fn a_blocked_clients_open_keep_alive_connection_gets_403_on_its_next_request() {
    let operator = Keys::generate();
    let (relay, _) = http_relay().await;
    let backend = mosaic_backend().await;
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{relay}\n\
         admin:\n  listen: 127.0.0.1:0\n  nip86_pubkeys: [{}]\n",
        backend.local_addr(),
        operator.public_key().to_hex()
    ))
    .await;
    let mut plain = tcp_from("127.0.0.12", gw.public_addr).await;
    assert_eq!(keep_alive_get(&mut plain).await, 200);
    let block = r#"{"method":"blockip","params":["127.0.0.12"]}"#;
    assert_eq!(signed_rpc(gw.admin_addr, &operator, block).await.0, 200);
    assert_eq!(keep_alive_get(&mut plain).await, 403);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "mosaic_gateway_rate_limited_total{limit=\"banned\",protocol=\"nostr\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn nip86_is_off_without_keys_and_the_public_port_passes_the_relays_own_nip86_on() {
    let (relay, seen) = http_relay().await;
    let backend = mosaic_backend().await;
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{relay}\n",
        backend.local_addr()
    ))
    .await;
    let call = r#"{"method":"banpubkey","params":["00"]}"#;
    let (status, body) = rpc(gw.admin_addr, Some("Nostr e30="), call).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("admin.nip86_pubkeys"), "{body}");
    let (status, body) = rpc(gw.public_addr, Some("Nostr e30="), call).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"result":"the relay's own"}"#)
    );
    let logged = seen.lock().unwrap().join("\n");
    assert!(logged.contains("banpubkey"), "{logged}");
}

/// Writes `yaml` (after the listeners) to `path` and reloads the gateway from it.
fn reload(gw: &Running, path: &std::path::Path, yaml: &str) {
    std::fs::write(
        path,
        format!("listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\n{yaml}"),
    )
    .unwrap();
    mosaic_gateway::shutdown::reload(&gw.app, path);
}

#[tokio::test]
async fn a_reload_that_denies_an_address_closes_its_open_websockets_while_another_keeps_relaying() {
    let backend = mosaic_backend().await;
    let relay = deflate_server(|t| Some(t.to_string())).await;
    let base = format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{relay}\n",
        backend.local_addr()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let gw = gateway(&base).await;
    let mut denied = ws_from("127.0.0.8", gw.public_addr).await.unwrap();
    let mut denied_mosaic = ws_as("127.0.0.8", gw.public_addr, Some("mosaic2024"))
        .await
        .unwrap();
    let mut denied_2025 = ws_as("127.0.0.8", gw.public_addr, Some("mosaic2025"))
        .await
        .unwrap();
    let mut kept = ws_from("127.0.0.9", gw.public_addr).await.unwrap();
    echoes(&mut denied, "one").await;
    echoes(&mut kept, "one").await;
    let reloaded_at = Instant::now();
    reload(
        &gw,
        &path,
        &format!("{base}access:\n  deny: [127.0.0.8/32]\n"),
    );
    assert_eq!(close_code(&mut denied).await, Some(1008));
    eprintln!(
        "reload → denied connection closed 1008 in {:?}",
        reloaded_at.elapsed()
    );
    assert_eq!(close_code(&mut denied_mosaic).await, Some(1008));
    // A Mosaic 2025 client hears why first: Closing 0xFE with IP_PERM_BANNED 49.
    assert_eq!(recv(&mut denied_2025).await, [0xFE, 49, 0, 0, 0, 0, 0, 0]);
    assert_eq!(close_code(&mut denied_2025).await, Some(1008));
    echoes(&mut kept, "two").await;
    assert!(closed_at_accept("127.0.0.8", gw.public_addr).await);
    // Counted once the closed connection's task ends.
    let start = Instant::now();
    while metric(
        &metrics(&gw).await,
        "mosaic_gateway_closes_sent_total{code=\"1008\"}",
    ) < 3.0
    {
        assert!(
            start.elapsed() < T,
            "closes_sent_total{{code=\"1008\"}} never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bytes_per_connection_with_direction_upstream_holds_the_relays_answers_to_the_rate() {
    const RATE: f64 = 20_000.0;
    const BURST: f64 = 10_000.0;
    // Each short request is answered with 1000 bytes.
    let relay = deflate_server(|t| Some(format!("{:04}{}", t, "y".repeat(996)))).await;
    let backend = mosaic_backend().await;
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{relay}\n\
         rate_limits:\n  bytes_per_connection: {{ rate: {RATE}, per: 1s, burst: {BURST}, direction: upstream }}\n",
        backend.local_addr()
    ))
    .await;
    let (ws, _) = connect(gw.public_addr, &[]).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let start = Instant::now();
    // The client's own 45 requests are not held back.
    for n in 0..45 {
        tx.send(Message::Text(format!("{n:04}").into()))
            .await
            .unwrap();
    }
    let got = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Text(t) = m {
                sink.lock().unwrap().push(t.to_string());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let secs = start.elapsed().as_secs_f64();
    // 1004 bytes on the wire each (unmasked, 16-bit length).
    let bytes = got.lock().unwrap().len() as f64 * 1004.0;
    let expected = BURST + RATE * secs;
    eprintln!("upstream direction: {bytes} bytes to the client in {secs:.2} s, burst + rate × time = {expected:.0}");
    assert!(
        (bytes - expected).abs() <= 0.2 * expected,
        "{bytes} vs {expected}"
    );
    eventually("every answer arrived", || got.lock().unwrap().len() == 45).await;
    let got = got.lock().unwrap().clone();
    let want: Vec<String> = (0..45)
        .map(|n| format!("{n:04}{}", "y".repeat(996)))
        .collect();
    assert!(got == want, "in order and intact");
    let m = metrics(&gw).await;
    assert!(
        metric(
            &m,
            "mosaic_gateway_rate_limited_total{limit=\"bytes\",protocol=\"nostr\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn operator_control_mistakes_name_their_keys() {
    let e = mosaic_gateway::config::parse(
        "mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\n\
         admin:\n  nip86_pubkeys: [npub1nope]\n\
         rate_limits:\n  exempt: [10.0.0.0/33]\n  messages_per_connection: { rate: 1, direction: both }\n\
         bans: { after: 0, within: 0s, max_entries: 1, file: /nonexistent-dir/bans.json }\n",
    )
    .unwrap_err();
    let keys: Vec<&str> = e.0.iter().map(|l| l.split(':').next().unwrap()).collect();
    for k in [
        "admin.nip86_pubkeys[0]",
        "rate_limits.exempt[0]",
        "rate_limits.messages_per_connection.direction",
        "bans.after",
        "bans.within",
        "bans.max_entries",
        "bans.file",
    ] {
        assert!(keys.contains(&k), "{k} missing from {e}");
    }
}
