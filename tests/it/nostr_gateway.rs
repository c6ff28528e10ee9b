//! A relay operator's view of nostr traffic through the gateway: rust-nostr's relay behind
//! it, nostr-sdk and raw WebSocket clients in front, and permessage-deflate negotiated end
//! to end between a deflate-capable client and server (soketto on both sides).

use std::time::Duration;

use crate::common::*;
use futures_util::SinkExt;
use soketto::extension::deflate::Deflate;
use soketto::handshake::{self, Server};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::compat::TokioAsyncReadCompatExt;

async fn nostr_gateway(
    relay: &mosaic_gateway::dev::nostr_relay::NostrRelayServer,
) -> mosaic_gateway::runtime::Running {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, Some(relay), "").await;
    // The backend is not used by these scenarios; keeping it alive keeps the gateway ready.
    std::mem::forget(backend);
    gw
}

#[tokio::test]
async fn nostr_sdk_client_publishes_fetches_and_gets_live_events_through_the_gateway() {
    let relay = nostr_relay().await;
    let gw = nostr_gateway(&relay).await;
    let url = format!("ws://{}", gw.public_addr);

    let writer = nostr_sdk::Client::new(nostr_sdk::Keys::generate());
    writer.add_relay(&url).await.unwrap();
    writer.try_connect(T).await;
    let sent = writer
        .send_event_builder(nostr_sdk::EventBuilder::text_note("through the gateway"))
        .await
        .unwrap();
    assert!(sent.failed.is_empty(), "{:?}", sent.failed);
    let events = writer
        .fetch_events(nostr_sdk::Filter::new().id(sent.val), T)
        .await
        .unwrap();
    assert_eq!(
        events.first().map(|e| e.content.as_str()),
        Some("through the gateway")
    );

    let reader = nostr_sdk::Client::new(nostr_sdk::Keys::generate());
    reader.add_relay(&url).await.unwrap();
    reader.try_connect(T).await;
    let mut notes = reader.notifications();
    reader
        .subscribe(nostr_sdk::Filter::new().hashtag("gatewaylive"), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live = writer
        .send_event_builder(
            nostr_sdk::EventBuilder::text_note("live #gatewaylive")
                .tag(nostr_sdk::Tag::hashtag("gatewaylive")),
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(T, async {
        loop {
            if let Ok(nostr_sdk::RelayPoolNotification::Event { event, .. }) = notes.recv().await {
                if event.id == live.val {
                    return event;
                }
            }
        }
    })
    .await
    .expect("live event through the gateway");
    assert_eq!(got.content, "live #gatewaylive");

    let m = gw.app.metrics.clone();
    assert_eq!(
        m.connections_active
            .with_label_values(&["default", "nostr"])
            .get(),
        2
    );
    writer.disconnect().await;
    reader.disconnect().await;
    eventually("nostr connections closed", || {
        m.connections_active
            .with_label_values(&["default", "nostr"])
            .get()
            == 0
    })
    .await;
    let text = m.render();
    let up = "{direction=\"client_to_upstream\",protocol=\"nostr\",route=\"default\"}";
    assert!(
        metric(&text, &format!("mosaic_gateway_messages_total{up}")) >= 3.0,
        "{text}"
    );
    assert!(metric(&text, &format!("mosaic_gateway_bytes_total{up}")) > 100.0);
}

#[tokio::test]
async fn raw_json_subscription_ends_with_eose() {
    let relay = nostr_relay().await;
    let gw = nostr_gateway(&relay).await;
    let (mut ws, resp) = connect(gw.public_addr, &[]).await.unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    ws.send(Message::Text(
        r#"["REQ","sub1",{"kinds":[1],"limit":5}]"#.into(),
    ))
    .await
    .unwrap();
    let eose = String::from_utf8(recv(&mut ws).await).unwrap();
    assert_eq!(eose, r#"["EOSE","sub1"]"#);
}

#[tokio::test]
async fn nip11_cors_preflight_and_page_pass_through_unchanged() {
    let relay = nostr_relay().await;
    let gw = nostr_gateway(&relay).await;
    let nip11 = raw_http(
        gw.public_addr,
        "GET / HTTP/1.1\r\nHost: relay.example\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(nip11.starts_with("HTTP/1.1 200"), "{nip11}");
    let lower = nip11.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/nostr+json"),
        "{nip11}"
    );
    assert!(lower.contains("access-control-allow-origin: *"), "{nip11}");
    let body = nip11.split_once("\r\n\r\n").unwrap().1;
    let doc: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert!(doc["supported_nips"]
        .as_array()
        .unwrap()
        .contains(&11.into()));

    let preflight = raw_http(
        gw.public_addr,
        "OPTIONS / HTTP/1.1\r\nHost: relay.example\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(preflight.starts_with("HTTP/1.1 204"), "{preflight}");
    assert!(preflight
        .to_ascii_lowercase()
        .contains("access-control-allow-methods"));

    let page = raw_http(
        gw.public_addr,
        "GET / HTTP/1.1\r\nHost: relay.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.to_ascii_lowercase().contains("text/html"), "{page}");
}

/// A deflate-capable echo server (soketto): echoes every text message.
async fn deflate_echo_server() -> std::net::SocketAddr {
    deflate_server(|text| Some(text.to_string())).await
}

/// A deflate-capable server (soketto) that answers each text message with what `answer`
/// returns for it (nothing: no answer).
pub(crate) async fn deflate_server<F>(answer: F) -> std::net::SocketAddr
where
    F: Fn(&str) -> Option<String> + Clone + Send + Sync + 'static,
{
    let l = TcpListener::bind(any_port()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut server = Server::new(s.compat());
                server.add_extension(Box::new(Deflate::new(soketto::Mode::Server)));
                let key = match server.receive_request().await {
                    Ok(req) => req.key(),
                    Err(_) => return,
                };
                let accept = handshake::server::Response::Accept {
                    key,
                    protocol: None,
                };
                if server.send_response(&accept).await.is_err() {
                    return;
                }
                let (mut tx, mut rx) = server.into_builder().finish();
                let mut buf = Vec::new();
                while let Ok(soketto::Data::Text(_)) = rx.receive_data(&mut buf).await {
                    let text = String::from_utf8(std::mem::take(&mut buf)).unwrap();
                    let Some(reply) = answer(&text) else {
                        continue;
                    };
                    if tx.send_text(reply).await.is_err() || tx.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A soketto client through the gateway at `addr` that offers permessage-deflate and
/// checks that it was negotiated end to end.
pub(crate) async fn deflate_client(
    addr: std::net::SocketAddr,
) -> (
    soketto::connection::Sender<tokio_util::compat::Compat<TcpStream>>,
    soketto::connection::Receiver<tokio_util::compat::Compat<TcpStream>>,
) {
    let socket = TcpStream::connect(addr).await.unwrap();
    let host = addr.to_string();
    let mut client = handshake::Client::new(socket.compat(), &host, "/");
    client.add_extension(Box::new(Deflate::new(soketto::Mode::Client)));
    match client.handshake().await.unwrap() {
        handshake::ServerResponse::Accepted { .. } => {}
        other => panic!("upgrade refused: {other:?}"),
    }
    let exts: Vec<_> = client.drain_extensions().collect();
    assert!(
        exts.iter().any(|e| e.is_enabled()),
        "deflate was negotiated through the gateway"
    );
    let mut builder = client.into_builder();
    builder.add_extensions(exts);
    builder.finish()
}

#[tokio::test]
async fn permessage_deflate_negotiated_end_to_end_passes_through_intact() {
    let echo = deflate_echo_server().await;
    let backend = mosaic_backend().await;
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{echo}\n",
        backend.local_addr()
    ))
    .await;
    let (mut tx, mut rx) = deflate_client(gw.public_addr).await;
    // Very compressible, and large enough to span many TCP reads.
    let text =
        r#"["EVENT",{"content":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}]"#.repeat(4000);
    tx.send_text(&text).await.unwrap();
    tx.flush().await.unwrap();
    let mut buf = Vec::new();
    let data = tokio::time::timeout(T, rx.receive_data(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(data, soketto::Data::Text(_)));
    assert_eq!(
        String::from_utf8(buf).unwrap(),
        text,
        "the echo came back intact"
    );
    tx.close().await.unwrap();
    let m = gw.app.metrics.clone();
    eventually("the connection is folded into metrics", || {
        m.connections_active
            .with_label_values(&["default", "nostr"])
            .get()
            == 0
    })
    .await;
    let up = m
        .bytes_total
        .with_label_values(&["default", "nostr", "client_to_upstream"])
        .get();
    assert!(
        up > 0 && (up as usize) < text.len() / 10,
        "compressed frames crossed the gateway as they were ({up} bytes)"
    );
}

#[tokio::test]
async fn relay_down_means_502_then_503_and_relay_lost_mid_session_means_1014() {
    let relay = nostr_relay().await;
    let gw = nostr_gateway(&relay).await;
    let mut ws = RawWs::connect(gw.public_addr, &[]).await.unwrap();
    ws.send_text(r#"["REQ","s",{"limit":1}]"#).await;
    assert!(matches!(ws.read().await, RawMessage::Text(_)));
    relay.shutdown();
    assert_eq!(ws.close_code().await, Some(1014));
    let addr = relay.local_addr();
    eventually("relay gone", || std::net::TcpStream::connect(addr).is_err()).await;
    assert_eq!(refused_status(gw.public_addr, &[]).await, 502);
    // The failed upgrade marked the only relay down: 503 with Retry-After until a health
    // check finds it back, for upgrades and plain requests alike.
    assert_eq!(refused_status(gw.public_addr, &[]).await, 503);
    let resp = raw_http(
        gw.public_addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 5"),
        "{resp}"
    );
}

#[tokio::test]
async fn an_upgrade_after_a_plain_request_on_the_same_connection_works() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = nostr_relay().await;
    let gw = nostr_gateway(&relay).await;
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    // First a NIP-11 request on a keep-alive connection...
    s.write_all(b"GET / HTTP/1.1\r\nHost: relay.example\r\nAccept: application/nostr+json\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("supported_nips") {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed after the first request");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    // ...then a Mosaic upgrade on the same connection.
    s.write_all(b"GET / HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mosaic2024\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(
        text.contains("sec-websocket-protocol: mosaic2024"),
        "{text}"
    );
    // A Submission goes through and its result comes back.
    let mut frame = Vec::new();
    mosaic_gateway::relay::frame::encode_frame(
        &mut frame,
        0x2,
        &mosaic_gateway::dev::mosaic_backend::wire::submission(&[4u8; 40]),
        Some([1, 2, 3, 4]),
    );
    s.write_all(&frame).await.unwrap();
    let mut reply = Vec::new();
    while reply.len() < 2 + 36 {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        reply.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&reply[..3], &[0x82, 36, 0x83]);
}
