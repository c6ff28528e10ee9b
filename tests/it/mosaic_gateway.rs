//! A relay operator's view of Mosaic traffic through the gateway: real clients
//! (tokio-tungstenite), the in-repo Mosaic backend, real sockets on 127.0.0.1.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::dev::mosaic_backend::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn record(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag ^ (i as u8)).collect()
}

#[tokio::test]
async fn submission_gets_its_result_through_the_gateway() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    let (mut ws, resp) = connect(gw.public_addr, &[("Sec-WebSocket-Protocol", "mosaic2024")])
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mosaic2024");
    let rec = record(1, 100);
    send(&mut ws, wire::submission(&rec)).await;
    let res = recv(&mut ws).await;
    assert_eq!(res.len(), 36);
    assert_eq!(res[0], 0x83);
    assert_eq!(res[3], 0x01, "ok");
    assert_eq!(&res[4..36], &rec[..32]);
    // The same record again is a duplicate.
    send(&mut ws, wire::submission(&rec)).await;
    assert_eq!(recv(&mut ws).await[3], 0x02);
}

#[tokio::test]
async fn query_streams_stored_records_then_live_ones_until_closed() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    let mut writer = mosaic_client(gw.public_addr).await;
    let stored = record(2, 64);
    send(&mut writer, wire::submission(&stored)).await;
    assert_eq!(recv(&mut writer).await[0], 0x83);

    let mut reader = mosaic_client(gw.public_addr).await;
    send(&mut reader, wire::query([0xAB, 0xCD], b"")).await;
    let first = recv(&mut reader).await;
    assert_eq!(first, wire::record([0xAB, 0xCD], &stored));
    assert_eq!(recv(&mut reader).await, wire::query_complete([0xAB, 0xCD]));

    // A live record arrives on the open query after Query Complete.
    let live = record(3, 80);
    send(&mut writer, wire::submission(&live)).await;
    assert_eq!(recv(&mut writer).await[0], 0x83);
    assert_eq!(recv(&mut reader).await, wire::record([0xAB, 0xCD], &live));

    send(&mut reader, wire::close_query([0xAB, 0xCD])).await;
    assert_eq!(
        recv(&mut reader).await,
        wire::query_closed([0xAB, 0xCD], 0x01)
    );
}

#[tokio::test]
async fn fragmented_messages_with_interleaved_pings_pass_intact() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    let mut ws = mosaic_client(gw.public_addr).await;
    let rec = record(4, 3000);
    let msg = wire::submission(&rec);
    // Frames: binary (3 bytes, less than the message head), ping, continuation, continuation.
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::*, Frame, FrameHeader};
    let frame = |fin: bool, op: OpCode, payload: &[u8]| {
        let h = FrameHeader {
            is_final: fin,
            opcode: op,
            ..FrameHeader::default()
        };
        Message::Frame(Frame::from_payload(h, payload.to_vec().into()))
    };
    ws.send(frame(false, OpCode::Data(Data::Binary), &msg[..3]))
        .await
        .unwrap();
    ws.send(frame(true, OpCode::Control(Control::Ping), b"p"))
        .await
        .unwrap();
    ws.send(frame(false, OpCode::Data(Data::Continue), &msg[3..1000]))
        .await
        .unwrap();
    ws.send(frame(true, OpCode::Data(Data::Continue), &msg[1000..]))
        .await
        .unwrap();
    let res = recv(&mut ws).await;
    assert_eq!(res[0], 0x83);
    assert_eq!(res[3], 0x01);
    assert_eq!(&res[4..36], &rec[..32]);
}

#[tokio::test]
async fn token_lists_route_exactly_and_case_sensitively() {
    let backend = mosaic_backend().await;
    let relay = nostr_relay().await;
    let gw = gateway_for(&backend, Some(&relay), "").await;
    // A list with the Mosaic token in second place is Mosaic; the 101 names only that token.
    let (_ws, resp) = connect(
        gw.public_addr,
        &[("Sec-WebSocket-Protocol", "chat, mosaic2024")],
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mosaic2024");
    // Several header lines count as one list.
    let two_lines = RawWs::connect(
        gw.public_addr,
        &[
            "Sec-WebSocket-Protocol: chat",
            "Sec-WebSocket-Protocol: mosaic2024",
        ],
    )
    .await
    .unwrap();
    assert!(two_lines
        .response
        .contains("sec-websocket-protocol: mosaic2024\r\n"));
    eventually("two Mosaic connections at the backend", || {
        backend.connections() == 2
    })
    .await;
    // Another case is another token: nostr, which picks no subprotocol.
    let mut ws = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: Mosaic2024"])
        .await
        .unwrap();
    assert!(!ws
        .response
        .to_ascii_lowercase()
        .contains("sec-websocket-protocol"));
    ws.send_text(r#"["REQ","s",{"limit":1}]"#).await;
    match ws.read().await {
        RawMessage::Text(t) => assert!(t.contains("EOSE"), "{t}"),
        other => panic!("expected EOSE, got {other:?}"),
    }
}

#[tokio::test]
async fn without_nostr_non_mosaic_upgrades_get_400() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    assert_eq!(refused_status(gw.public_addr, &[]).await, 400);
    assert_eq!(
        refused_status(gw.public_addr, &[("Sec-WebSocket-Protocol", "Mosaic2024")]).await,
        400
    );
    // And plain HTTP has nowhere to go.
    let resp = raw_http(
        gw.public_addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

#[tokio::test]
async fn features_are_the_intersection_in_the_clients_order() {
    let backend = mosaic_backend_with_features(&["alpha", "beta", "gamma"]).await;
    let gw = gateway_for(&backend, None, "  features: [gamma, alpha, delta]\n").await;
    let feat = |v: &'static str| {
        [
            ("Sec-WebSocket-Protocol", "mosaic2024"),
            ("X-Mosaic-Features", v),
        ]
    };
    let cases: &[(&str, &str)] = &[
        ("alpha;beta;gamma;delta", "alpha;gamma"),
        (" gamma ; ;alpha;gamma", "gamma;alpha"),
        ("beta;delta", "-"),
        ("", "-"),
    ];
    for (asked, granted) in cases {
        let (_ws, resp) = connect(gw.public_addr, &feat(asked)).await.unwrap();
        assert_eq!(
            resp.headers()["x-mosaic-features"],
            *granted,
            "asked {asked:?}"
        );
        let seen = backend.last_request_headers().unwrap();
        assert_eq!(
            seen["x-mosaic-features"],
            asked.trim(),
            "the backend sees the client's list"
        );
    }
    // Repeated header lines are one list.
    let (_ws, resp) = connect(
        gw.public_addr,
        &[
            ("Sec-WebSocket-Protocol", "mosaic2024"),
            ("X-Mosaic-Features", "delta"),
            ("X-Mosaic-Features", "alpha"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["x-mosaic-features"], "alpha");
    // A client that asks nothing is told nothing.
    let (_ws, resp) = connect(gw.public_addr, &[("Sec-WebSocket-Protocol", "mosaic2024")])
        .await
        .unwrap();
    assert!(resp.headers().get("x-mosaic-features").is_none());
}

#[tokio::test]
async fn a_backend_that_grants_nothing_means_no_features() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "  features: [alpha]\n").await;
    let (_ws, resp) = connect(
        gw.public_addr,
        &[
            ("Sec-WebSocket-Protocol", "mosaic2024"),
            ("X-Mosaic-Features", "alpha"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["x-mosaic-features"], "-");
}

#[tokio::test]
async fn backend_sees_the_real_client_and_never_forged_identity() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    let (_ws, _) = connect(
        gw.public_addr,
        &[
            ("Sec-WebSocket-Protocol", "mosaic2024"),
            ("X-Mosaic-Client-Key", "mopub0forgedforgedforged"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ],
    )
    .await
    .unwrap();
    let h = backend.last_request_headers().unwrap();
    assert!(h.get("x-mosaic-client-key").is_none());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h.get("sec-websocket-extensions").is_none(),
        "Mosaic frames must stay inspectable"
    );
}

async fn violation_closes_with(client_sends: Message, expected: u16, extra: &str) {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, extra).await;
    let mut ws = mosaic_client(gw.public_addr).await;
    ws.send(client_sends).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(expected));
    // Leaving ends the client's side of the closing handshake.
    drop(ws);
    let m = gw.app.metrics.clone();
    eventually("the violation is counted", || {
        metric_sum(&m.render(), "mosaic_gateway_protocol_violations_total") == 1.0
    })
    .await;
    assert_eq!(
        backend.record_count(),
        0,
        "nothing malformed reached the backend"
    );
}

#[tokio::test]
async fn text_message_is_closed_with_1003() {
    violation_closes_with(Message::Text("[\"REQ\"]".into()), 1003, "").await;
}

#[tokio::test]
async fn client_sending_a_server_message_is_closed_with_1002() {
    violation_closes_with(
        Message::Binary(wire::query_complete([1, 2]).into()),
        1002,
        "",
    )
    .await;
}

#[tokio::test]
async fn malformed_message_is_closed_with_1002_in_strict_mode() {
    // A Query whose reserved byte is set.
    let mut q = wire::query([1, 2], b"x");
    q[3] = 7;
    violation_closes_with(Message::Binary(q.into()), 1002, "").await;
    // A Submission whose length field disagrees with the message.
    let mut s = wire::submission(&record(5, 40));
    s.push(0);
    violation_closes_with(Message::Binary(s.into()), 1002, "").await;
}

#[tokio::test]
async fn direction_mode_lets_later_era_types_through() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "  validate: direction\n").await;
    let mut ws = mosaic_client(gw.public_addr).await;
    // 0x05 is a later-era Submission; the seed-era backend answers it as malformed (1002),
    // which proves the gateway let it through rather than judging it.
    send(&mut ws, vec![0x05, 0, 0, 0, 0, 0, 0, 0]).await;
    assert_eq!(close_code(&mut ws).await, Some(1002));
    let (_, metrics) = admin_get(gw.admin_addr, "/metrics").await;
    assert_eq!(
        metric_sum(&metrics, "mosaic_gateway_protocol_violations_total"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn oversized_message_is_closed_with_1009_before_it_reaches_the_backend() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "  max_message_bytes: 1000\n").await;
    let mut ws = mosaic_client(gw.public_addr).await;
    send(&mut ws, wire::submission(&record(6, 2000))).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));
    assert_eq!(backend.record_count(), 0);
}

/// A misbehaving backend: accepts the Mosaic upgrade, then sends `bad` to the client.
async fn rogue_backend(bad: Vec<u8>) -> std::net::SocketAddr {
    crate::common::rogue_backend("mosaic2024", Some(bad)).await
}

#[tokio::test]
async fn backend_sending_a_client_message_gets_the_client_1014() {
    let addr = rogue_backend(wire::submission(&record(7, 40))).await;
    let gw = gateway(&format!("mosaic:\n  backends:\n    - url: ws://{addr}\n")).await;
    let mut ws = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    assert_eq!(ws.close_code().await, Some(1014));
}

#[tokio::test]
async fn backend_sending_a_malformed_result_gets_the_client_1014() {
    let addr = rogue_backend(vec![0x83, 0, 0, 1]).await;
    let gw = gateway(&format!("mosaic:\n  backends:\n    - url: ws://{addr}\n")).await;
    let mut ws = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    assert_eq!(ws.close_code().await, Some(1014));
}

#[tokio::test]
async fn backend_lost_mid_connection_gets_the_client_1014() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    let mut ws = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    ws.send_binary(&wire::submission(&record(8, 40))).await;
    match ws.read().await {
        RawMessage::Binary(b) => assert_eq!(b[0], 0x83),
        other => panic!("{other:?}"),
    }
    backend.shutdown();
    assert_eq!(ws.close_code().await, Some(1014));
}

#[tokio::test]
async fn backend_down_before_the_handshake_means_503_or_502_never_101() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    backend.shutdown();
    let addr = backend.local_addr();
    eventually("backend gone", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    let first = refused_status(gw.public_addr, &[("Sec-WebSocket-Protocol", "mosaic2024")]).await;
    assert_eq!(first, 502, "the only backend failed the upgrade");
    // It is now marked down: 503 with Retry-After.
    let resp = raw_http(
        gw.public_addr,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mosaic2024\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("retry-after:"), "{resp}");
}

#[tokio::test]
async fn malformed_upgrades_get_a_clear_http_answer() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    let base = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: mosaic2024\r\n";
    let no_key = raw_http(
        gw.public_addr,
        &format!("{base}Sec-WebSocket-Version: 13\r\n\r\n"),
    )
    .await;
    assert!(no_key.starts_with("HTTP/1.1 400"), "{no_key}");
    assert!(no_key.contains("Sec-WebSocket-Key"), "{no_key}");
    let v12 = raw_http(
        gw.public_addr,
        &format!("{base}Sec-WebSocket-Version: 12\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
    )
    .await;
    assert!(v12.starts_with("HTTP/1.1 426"), "{v12}");
    assert!(
        v12.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{v12}"
    );
    let post = raw_http(
        gw.public_addr,
        "POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 400"), "{post}");
    // Garbage on the socket is answered and the gateway keeps serving.
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut buf)).await;
    let _ok = mosaic_client(gw.public_addr).await;
}

#[tokio::test]
async fn metrics_count_mosaic_traffic() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    let mut ws = mosaic_client(gw.public_addr).await;
    let (_, during) = admin_get(gw.admin_addr, "/metrics").await;
    assert_eq!(
        metric(
            &during,
            "mosaic_gateway_connections_active{protocol=\"mosaic\",route=\"default\"}"
        ),
        1.0
    );
    for i in 0..3 {
        send(&mut ws, wire::submission(&record(10 + i, 50))).await;
        assert_eq!(recv(&mut ws).await[0], 0x83);
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let m = gw.app.metrics.clone();
    eventually("connection closed", || {
        m.connections_active
            .with_label_values(&["default", "mosaic"])
            .get()
            == 0
    })
    .await;
    let (_, after) = admin_get(gw.admin_addr, "/metrics").await;
    let up = "{direction=\"client_to_upstream\",protocol=\"mosaic\",route=\"default\"}";
    let down = "{direction=\"upstream_to_client\",protocol=\"mosaic\",route=\"default\"}";
    assert_eq!(
        metric(&after, &format!("mosaic_gateway_messages_total{up}")),
        3.0
    );
    assert_eq!(
        metric(&after, &format!("mosaic_gateway_messages_total{down}")),
        3.0
    );
    assert!(metric(&after, &format!("mosaic_gateway_bytes_total{up}")) >= 3.0 * 54.0);
    assert_eq!(
        metric(
            &after,
            "mosaic_gateway_connections_total{protocol=\"mosaic\",route=\"default\"}"
        ),
        1.0
    );
    assert!(
        after.contains("mosaic_gateway_backend_connect_duration_seconds_count{pool=\"default\"} 1")
    );
}

/// A backend that answers the upgrade by hand, then sends one Record frame in two halves
/// with a pause between them.
async fn slow_frame_backend(record: Vec<u8>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut b).await else { return };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&b[..n]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: mosaic2024\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
                // Only health checks close at once; a client connection gets the slow frame.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let mut frame = Vec::new();
                mosaic_gateway::relay::frame::encode_frame(
                    &mut frame,
                    0x2,
                    &wire::record([1, 1], &record),
                    None,
                );
                let half = frame.len() / 2;
                if s.write_all(&frame[..half]).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(600)).await;
                let _ = s.write_all(&frame[half..]).await;
                let mut sink = [0u8; 1024];
                while let Ok(n) = s.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_close_due_mid_frame_waits_for_the_frame_to_end() {
    let record = record(12, 5000);
    let addr = slow_frame_backend(record.clone()).await;
    let gw = gateway(&format!(
        "mosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: ws://{addr}\n"
    ))
    .await;
    let mut ws = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    // Break a rule while the backend's frame is half way through the gateway.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    ws.send_text("not binary").await;
    // The client still receives the whole frame, then the close.
    assert_eq!(
        ws.read().await,
        RawMessage::Binary(wire::record([1, 1], &record))
    );
    assert_eq!(ws.close_code().await, Some(1003));
}
