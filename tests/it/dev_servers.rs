//! Real-socket tests for the development servers: the nostr relay front end (driven by
//! nostr-sdk, a raw WebSocket client and plain HTTP) and the in-memory Mosaic backend.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use mosaic_gateway::dev::mosaic_backend::{wire, MosaicBackend, MosaicBackendOptions};
use mosaic_gateway::dev::nostr_relay::NostrRelayServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const T: Duration = Duration::from_secs(5);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Waits until nothing listens on `addr` any more.
async fn wait_refused(addr: SocketAddr) {
    timeout(T, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("listener closed");
}

// ---------------------------------------------------------------- nostr

#[tokio::test]
async fn nostr_sdk_publish_fetch_and_live_event() {
    let relay = NostrRelayServer::spawn(any_port()).await.unwrap();
    let url = format!("ws://{}", relay.local_addr());

    let keys = nostr_sdk::Keys::generate();
    let writer = nostr_sdk::Client::new(keys.clone());
    writer.add_relay(&url).await.unwrap();
    writer.try_connect(T).await;

    let sent = writer
        .send_event_builder(nostr_sdk::EventBuilder::text_note(
            "hello from the gateway tests",
        ))
        .await
        .unwrap();
    assert!(sent.failed.is_empty(), "{:?}", sent.failed);
    assert_eq!(sent.success.len(), 1);

    let events = writer
        .fetch_events(nostr_sdk::Filter::new().id(sent.val), T)
        .await
        .unwrap();
    let fetched = events.first().expect("event fetched back");
    assert_eq!(fetched.id, sent.val);
    assert_eq!(fetched.content, "hello from the gateway tests");

    // Live delivery: a second client subscribes, the first publishes. (nostr-sdk never
    // notifies a client about its own events, hence two clients.)
    let reader = nostr_sdk::Client::new(nostr_sdk::Keys::generate());
    reader.add_relay(&url).await.unwrap();
    reader.try_connect(T).await;
    let mut notifications = reader.notifications();
    reader
        .subscribe(
            nostr_sdk::Filter::new()
                .author(keys.public_key())
                .kind(nostr_sdk::Kind::TextNote)
                // Only the event published after subscribing carries this tag, so a
                // match proves live delivery rather than the stored snapshot.
                .hashtag("live"),
            None,
        )
        .await
        .unwrap();
    // Let the REQ reach the relay before the event does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live = writer
        .send_event_builder(
            nostr_sdk::EventBuilder::text_note("live one").tag(nostr_sdk::Tag::hashtag("live")),
        )
        .await
        .unwrap();
    let got = timeout(T, async {
        loop {
            if let Ok(nostr_sdk::RelayPoolNotification::Event { event, .. }) =
                notifications.recv().await
            {
                return event;
            }
        }
    })
    .await
    .expect("live event within timeout");
    assert_eq!(got.id, live.val);
    assert_eq!(got.content, "live one");

    writer.shutdown().await;
    reader.shutdown().await;
}

#[tokio::test]
async fn nostr_raw_req_gets_eose_without_subprotocol() {
    let relay = NostrRelayServer::spawn(any_port()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/", relay.local_addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().get("sec-websocket-protocol").is_none());

    ws.send(Message::text(r#"["REQ","sub1",{"limit":5}]"#))
        .await
        .unwrap();
    let eose = timeout(T, async {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if v[0] == "EOSE" {
                        return v;
                    }
                }
                _ => continue,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(eose[1], "sub1");
}

/// Sends a hand-written HTTP/1.1 request and returns the response head, lowercased.
async fn raw_head(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    timeout(T, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&buf).to_ascii_lowercase()
}

#[tokio::test]
async fn nostr_upgrade_never_picks_subprotocol_or_extension() {
    let relay = NostrRelayServer::spawn(any_port()).await.unwrap();
    let head = raw_head(
        relay.local_addr(),
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mosaic2024, nostr\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="));
    assert!(!head.contains("sec-websocket-protocol"));
    assert!(!head.contains("sec-websocket-extensions"));

    let head = raw_head(
        relay.local_addr(),
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 426"), "{head}");
    assert!(head.contains("sec-websocket-version: 13"));
}

/// One request over a fresh hyper client connection; returns status, headers, body.
async fn http(
    addr: SocketAddr,
    method: Method,
    accept: Option<&str>,
) -> (StatusCode, hyper::HeaderMap, Bytes) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", addr.to_string());
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn nostr_nip11_cors_options_and_others() {
    let relay = NostrRelayServer::spawn(any_port()).await.unwrap();
    let addr = relay.local_addr();

    let (status, headers, body) = http(addr, Method::GET, Some("application/nostr+json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/nostr+json");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(headers["access-control-allow-headers"], "*");
    assert_eq!(headers["access-control-allow-methods"], "GET, OPTIONS");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for key in ["name", "description", "software", "version"] {
        assert!(doc[key].is_string(), "{key} in {doc}");
    }
    let nips = doc["supported_nips"].as_array().unwrap();
    assert!(nips.contains(&serde_json::json!(1)) && nips.contains(&serde_json::json!(11)));

    let (status, _, body) = http(
        addr,
        Method::GET,
        Some("text/html, application/nostr+json;q=0.9"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"{"));

    let (status, headers, body) = http(addr, Method::OPTIONS, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(headers["access-control-allow-methods"], "GET, OPTIONS");

    let (status, headers, _) = http(addr, Method::GET, Some("text/html")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    let (status, _, _) = http(addr, Method::POST, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn nostr_shutdown_stops_listening() {
    let relay = NostrRelayServer::spawn(any_port()).await.unwrap();
    let addr = relay.local_addr();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    drop(relay);
    let end = timeout(T, ws.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    wait_refused(addr).await;
}

// ---------------------------------------------------------------- mosaic

fn features(list: &[&str]) -> MosaicBackendOptions {
    MosaicBackendOptions {
        features: list.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A record of at least 32 bytes whose first 32 bytes are unique to `tag`.
fn rec(tag: &str) -> Vec<u8> {
    format!("{tag:<32}|payload of {tag}").into_bytes()
}

async fn connect(addr: SocketAddr, headers: &[(&'static str, &str)]) -> Ws {
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("mosaic2024"),
    );
    for (name, value) in headers {
        req.headers_mut()
            .append(*name, HeaderValue::from_str(value).unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mosaic2024");
    ws
}

async fn send(ws: &mut Ws, msg: Vec<u8>) {
    ws.send(Message::binary(msg)).await.unwrap();
}

/// Next binary message, skipping control frames.
async fn recv(ws: &mut Ws) -> Vec<u8> {
    timeout(T, async {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => return b.to_vec(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("message within timeout")
}

/// Expects the server to close with `code`.
async fn expect_close(ws: &mut Ws, code: CloseCode) {
    let msg = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
    match msg {
        Message::Close(Some(frame)) => assert_eq!(frame.code, code),
        other => panic!("expected close {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn mosaic_submission_results() {
    let backend = MosaicBackend::spawn(any_port(), Default::default())
        .await
        .unwrap();
    let mut ws = connect(backend.local_addr(), &[]).await;
    let r = rec("first");

    send(&mut ws, wire::submission(&r)).await;
    let res = recv(&mut ws).await;
    assert_eq!(res, wire::submission_result(0x01, &r[..32]));
    assert_eq!(&res[..4], &[0x83, 0, 0, 0x01]);
    assert_eq!(&res[4..36], &r[..32]);

    send(&mut ws, wire::submission(&r)).await;
    assert_eq!(recv(&mut ws).await, wire::submission_result(0x02, &r[..32]));

    // Too short: invalid, id zero-padded.
    send(&mut ws, wire::submission(b"tiny")).await;
    let res = recv(&mut ws).await;
    assert_eq!(res[3], 0x10);
    assert_eq!(&res[4..8], b"tiny");
    assert!(res[8..].iter().all(|b| *b == 0));

    // Length field disagreeing with the payload: invalid.
    let mut bad = wire::submission(&rec("second"));
    bad[1] = bad[1].wrapping_add(1);
    send(&mut ws, bad).await;
    assert_eq!(recv(&mut ws).await[3], 0x10);
    assert_eq!(backend.record_count(), 1);
}

#[tokio::test]
async fn mosaic_query_snapshot_live_and_close() {
    let backend = MosaicBackend::spawn(any_port(), Default::default())
        .await
        .unwrap();
    let mut a = connect(backend.local_addr(), &[]).await;
    let mut b = connect(backend.local_addr(), &[]).await;
    let (r1, r2, r3, r4) = (
        rec("alpha 1"),
        rec("beta 2"),
        rec("alpha 3"),
        rec("alpha 4"),
    );
    for r in [&r1, &r2] {
        send(&mut a, wire::submission(r)).await;
        assert_eq!(recv(&mut a).await[3], 0x01);
    }

    let (qa, qall) = ([0, 7], [1, 8]);
    send(&mut a, wire::query(qa, b"alpha")).await;
    assert_eq!(recv(&mut a).await, wire::record(qa, &r1));
    assert_eq!(recv(&mut a).await, wire::query_complete(qa));
    send(&mut a, wire::query(qall, b"")).await;
    assert_eq!(recv(&mut a).await, wire::record(qall, &r1));
    assert_eq!(recv(&mut a).await, wire::record(qall, &r2));
    assert_eq!(recv(&mut a).await, wire::query_complete(qall));

    // A submission from another connection reaches both open queries live.
    send(&mut b, wire::submission(&r3)).await;
    assert_eq!(recv(&mut b).await, wire::submission_result(0x01, &r3[..32]));
    let live: HashSet<Vec<u8>> = [recv(&mut a).await, recv(&mut a).await].into();
    assert_eq!(
        live,
        [wire::record(qa, &r3), wire::record(qall, &r3)].into()
    );

    send(&mut a, wire::close_query(qa)).await;
    let closed = recv(&mut a).await;
    assert_eq!(closed, wire::query_closed(qa, 0x01));
    assert_eq!(closed, [0x82, 0, 7, 0x01]);

    // After closing, only the remaining query sees new records.
    send(&mut b, wire::submission(&r4)).await;
    assert_eq!(recv(&mut b).await[3], 0x01);
    assert_eq!(recv(&mut a).await, wire::record(qall, &r4));
    send(&mut a, wire::close_query(qall)).await;
    assert_eq!(recv(&mut a).await, wire::query_closed(qall, 0x01));
}

#[tokio::test]
async fn mosaic_records_request_headers_and_counts_connections() {
    let backend = MosaicBackend::spawn(any_port(), Default::default())
        .await
        .unwrap();
    assert_eq!(backend.connections(), 0);
    let ws = connect(
        backend.local_addr(),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-mosaic-client-key", "mopub0example"),
        ],
    )
    .await;
    assert_eq!(backend.connections(), 1);
    let h = backend.last_request_headers().unwrap();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9");
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-mosaic-client-key"], "mopub0example");
    assert_eq!(backend.request_headers().len(), 1);

    drop(ws);
    timeout(T, async {
        while backend.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("connection count drops after the client leaves");
}

#[tokio::test]
async fn mosaic_feature_negotiation() {
    let backend = MosaicBackend::spawn(any_port(), features(&["a", "b", "c"]))
        .await
        .unwrap();
    let addr = backend.local_addr();
    let negotiated = |headers: &'static [(&'static str, &'static str)]| async move {
        let mut req = format!("ws://{addr}/").into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("mosaic2024"),
        );
        for (n, v) in headers {
            req.headers_mut().append(*n, HeaderValue::from_static(v));
        }
        let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        resp.headers()
            .get("x-mosaic-features")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(negotiated(&[]).await, None);
    assert_eq!(
        negotiated(&[("X-Mosaic-Features", "b; a ;;b; z")])
            .await
            .as_deref(),
        Some("b;a")
    );
    assert_eq!(
        negotiated(&[("x-mosaic-features", "z;y")]).await.as_deref(),
        Some("-")
    );
    assert_eq!(
        negotiated(&[("x-mosaic-features", "")]).await.as_deref(),
        Some("-")
    );
    assert_eq!(
        negotiated(&[("x-mosaic-features", "A")]).await.as_deref(),
        Some("-")
    );
    assert_eq!(
        negotiated(&[("x-mosaic-features", "c"), ("x-mosaic-features", "a;x;c")])
            .await
            .as_deref(),
        Some("c;a")
    );
    let h = backend.last_request_headers().unwrap();
    assert_eq!(h.get_all("x-mosaic-features").iter().count(), 2);
}

fn upgrade_request(protocol_lines: &[&str]) -> String {
    let mut r = String::from(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    for p in protocol_lines {
        r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    r
}

#[tokio::test]
async fn mosaic_subprotocol_token_rules() {
    let backend = MosaicBackend::spawn(any_port(), Default::default())
        .await
        .unwrap();
    let addr = backend.local_addr();

    let rejected: [&[&str]; 4] = [
        &[],
        &["Mosaic2024"],
        &["Mosaic2025"],
        &["nostr, mosaic2024x"],
    ];
    for rejected in rejected {
        let head = raw_head(addr, &upgrade_request(rejected)).await;
        assert!(head.starts_with("http/1.1 400"), "{rejected:?}: {head}");
    }
    let accepted: [&[&str]; 3] = [
        &["mosaic2024"],
        &["foo , mosaic2024,bar"],
        &["foo", "bar, mosaic2024"],
    ];
    for accepted in accepted {
        let head = raw_head(addr, &upgrade_request(accepted)).await;
        assert!(head.starts_with("http/1.1 101"), "{accepted:?}: {head}");
        assert!(
            head.contains("\r\nsec-websocket-protocol: mosaic2024\r\n"),
            "{head}"
        );
    }
    // Both versions: its own order decides, 2025 first.
    for both in [&["mosaic2024, mosaic2025"][..], &["mosaic2025"]] {
        let head = raw_head(addr, &upgrade_request(both)).await;
        assert!(
            head.contains("\r\nsec-websocket-protocol: mosaic2025\r\n"),
            "{head}"
        );
    }

    // The same through a real client: the handshake error carries the 400.
    let err = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap_err();
    match err {
        tungstenite::Error::Http(resp) => assert_eq!(resp.status(), StatusCode::BAD_REQUEST),
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    assert_eq!(backend.request_headers().len(), 5);
}

#[tokio::test]
async fn mosaic_protocol_violations_close_the_connection() {
    let backend = MosaicBackend::spawn(any_port(), Default::default())
        .await
        .unwrap();
    let addr = backend.local_addr();

    let mut ws = connect(addr, &[]).await;
    ws.send(Message::text("[\"REQ\",\"x\",{}]")).await.unwrap();
    expect_close(&mut ws, CloseCode::Unsupported).await;

    let mut ws = connect(addr, &[]).await;
    send(&mut ws, wire::query_complete([0, 1])).await;
    expect_close(&mut ws, CloseCode::Protocol).await;

    let mut ws = connect(addr, &[]).await;
    let mut q = wire::query([0, 1], b"abc");
    q.pop();
    send(&mut ws, q).await;
    expect_close(&mut ws, CloseCode::Protocol).await;

    let mut ws = connect(addr, &[]).await;
    send(&mut ws, vec![0x02, 0, 1]).await;
    expect_close(&mut ws, CloseCode::Protocol).await;

    // 0xF0 is allowed in both directions and is ignored; pings are answered.
    let mut ws = connect(addr, &[]).await;
    send(&mut ws, vec![0xF0, 0, 0, 0]).await;
    ws.send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .unwrap();
    let pong = timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"hi")));
}

#[tokio::test]
async fn mosaic_shutdown_drops_open_connections() {
    let backend = MosaicBackend::spawn(any_port(), Default::default())
        .await
        .unwrap();
    let addr = backend.local_addr();
    let mut ws = connect(addr, &[]).await;
    send(&mut ws, wire::query([0, 1], b"")).await;
    assert_eq!(recv(&mut ws).await, wire::query_complete([0, 1]));

    backend.shutdown();
    // Abrupt: the stream ends or errors, and no close frame arrives first.
    let end = timeout(T, ws.next()).await.expect("stream ends promptly");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    timeout(T, async {
        while backend.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    wait_refused(addr).await;

    // Dropping has the same effect.
    let backend = MosaicBackend::spawn(any_port(), Default::default())
        .await
        .unwrap();
    let mut ws = connect(backend.local_addr(), &[]).await;
    drop(backend);
    let end = timeout(T, ws.next()).await.expect("stream ends promptly");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
}
