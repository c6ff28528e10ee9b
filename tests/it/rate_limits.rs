//! Abuse control as an operator sees it (issue 14): floods held to the configured rates
//! while well-behaved clients keep being served, throttling that loses and reorders
//! nothing, Mosaic answers from the gateway itself (Submission Result 0x12, Query Closed
//! 0x11) for what never reaches the backend, 429 beyond `connections_per_ip`, IPv6 clients
//! counted per /64, and access lists applied to the real client address before TLS.
//!
//! Rates are measured at the upstream (what reached the in-repo Mosaic backend or a
//! counting nostr relay) over about two seconds, against `burst + rate × time`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::hardening::{proxy_v2, upgrade_after};
use crate::nostr_gateway::{deflate_client, deflate_server};
use crate::tls_gateway::{
    anonymous_client, client_key, master_key, rpk_client, tls_gateway, tls_mosaic,
};
use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::dev::mosaic_backend::{wire, MosaicBackend};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A 40-byte record whose first bytes (its id, as far as Submission Results go) say who
/// sent it and its place in that sender's sequence.
fn numbered(tag: u8, n: usize) -> Vec<u8> {
    let mut r = vec![tag, n as u8, (n >> 8) as u8];
    r.extend((3..40u8).map(|i| i ^ tag));
    r
}

/// Says whether `got` is within 20 % of `burst + rate × secs`, and prints the measure.
fn within_a_fifth(what: &str, got: f64, burst: f64, rate: f64, secs: f64) {
    let expected = burst + rate * secs;
    eprintln!(
        "{what}: {got} at the upstream after {secs:.2} s; burst + rate × time = {expected:.0} \
         ({:+.1} %)",
        (got / expected - 1.0) * 100.0
    );
    assert!(
        (got - expected).abs() <= 0.2 * expected,
        "{what}: {got} reached the upstream in {secs:.2} s, expected {expected:.0} ± 20 %"
    );
}

/// Sends a Submission of `record` and returns the code of its Submission Result, checking
/// that the result names the record.
async fn submit<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    record: &[u8],
) -> u8 {
    ws.send(Message::Binary(wire::submission(record).into()))
        .await
        .unwrap();
    let res = next_binary(ws).await;
    assert_eq!(
        (res.len(), res[0]),
        (36, wire::SUBMISSION_RESULT),
        "{res:02x?}"
    );
    assert_eq!(&res[4..36], &record[..32], "the result names the record");
    res[3]
}

async fn next_binary<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Vec<u8> {
    loop {
        match tokio::time::timeout(T, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return b.to_vec(),
            Ok(Some(Ok(Message::Close(c)))) => panic!("closed: {c:?}"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no message: {other:?}"),
        }
    }
}

async fn metrics_text(gw: &mosaic_gateway::runtime::Running) -> String {
    admin_get(gw.admin_addr, "/metrics").await.1
}

/// The metrics once `series` has reached `want` (a closed connection's counters are folded
/// in when its task ends, which may be just after the client saw the close).
async fn metrics_once(gw: &mosaic_gateway::runtime::Running, series: &str, want: f64) -> String {
    let start = std::time::Instant::now();
    loop {
        let m = metrics_text(gw).await;
        if metric(&m, series) >= want || start.elapsed() > T {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn limited(text: &str, protocol: &str, limit: &str) -> f64 {
    metric(
        text,
        &format!("mosaic_gateway_rate_limited_total{{limit=\"{limit}\",protocol=\"{protocol}\"}}"),
    )
}

#[tokio::test]
async fn floods_on_both_protocols_are_held_to_the_rate_lose_nothing_and_others_are_served() {
    const RATE: f64 = 100.0;
    const BURST: f64 = 50.0;
    const SENT: usize = 300;
    let backend = mosaic_backend().await;
    // A nostr relay that counts what reaches it and answers only pings.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let counted = seen.clone();
    let relay = deflate_server(move |text| {
        if text.starts_with("[\"PING\"") {
            return Some(text.to_string());
        }
        counted.lock().unwrap().push(text.to_string());
        None
    })
    .await;
    let gw = gateway(&format!(
        "mosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: ws://{}\n\
         nostr:\n  upstream: ws://{relay}\n\
         rate_limits:\n  messages_per_connection: {{ rate: {RATE}, per: 1s, burst: {BURST} }}\n",
        backend.local_addr()
    ))
    .await;
    let addr = gw.public_addr;
    let (mut mosaic_tx, mut mosaic_rx) = mosaic_client(addr).await.split();
    tokio::spawn(async move { while let Some(Ok(_)) = mosaic_rx.next().await {} });
    let (mut nostr_tx, _nostr_rx) = deflate_client(addr).await;
    let records: Vec<Vec<u8>> = (0..SENT).map(|n| numbered(0xF1, n)).collect();
    let texts: Vec<String> = (0..SENT)
        .map(|n| format!(r#"["EVENT",{{"content":"flood","n":{n}}}]"#))
        .collect();
    let (mosaic_flood, nostr_flood) = (records.clone(), texts.clone());
    let start = Instant::now();
    // Each flooder writes as fast as its socket takes it.
    tokio::spawn(async move {
        for r in mosaic_flood {
            let m = Message::Binary(wire::submission(&r).into());
            if mosaic_tx.send(m).await.is_err() {
                return;
            }
        }
        std::mem::forget(mosaic_tx);
    });
    tokio::spawn(async move {
        for t in nostr_flood {
            if nostr_tx.send_text(&t).await.is_err() || nostr_tx.flush().await.is_err() {
                return;
            }
        }
        std::mem::forget(nostr_tx);
    });
    // Meanwhile a well-behaved client of each protocol keeps being served promptly.
    let mut polite = mosaic_client(addr).await;
    let (mut ping_tx, mut ping_rx) = deflate_client(addr).await;
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(2) {
        let asked = Instant::now();
        assert_eq!(submit(&mut polite, &numbered(0xB0, served)).await, 0x01);
        let ping = format!(r#"["PING",{served}]"#);
        ping_tx.send_text(&ping).await.unwrap();
        ping_tx.flush().await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(T, ping_rx.receive_data(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, ping.as_bytes());
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "a polite client waited {took:?}"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let mosaic_got = backend.received(wire::SUBMISSION) - served;
    let nostr_got = seen.lock().unwrap().len();
    within_a_fifth("Mosaic flood", mosaic_got as f64, BURST, RATE, secs);
    within_a_fifth("nostr flood (deflate)", nostr_got as f64, BURST, RATE, secs);
    assert!(served >= 10, "polite clients were served {served} times");
    // Throttled, not dropped: everything arrives, in order.
    eventually("every flooded Submission reached the backend", || {
        backend.received(wire::SUBMISSION) == SENT + served
    })
    .await;
    let flood: Vec<Vec<u8>> = backend
        .records()
        .into_iter()
        .filter(|r| r[0] == 0xF1)
        .collect();
    assert!(flood == records, "the backend stored the flood in order");
    eventually("every flooded nostr message reached the relay", || {
        seen.lock().unwrap().len() == SENT
    })
    .await;
    assert!(
        *seen.lock().unwrap() == texts,
        "the relay got the flood in order"
    );
    let m = metrics_text(&gw).await;
    assert!(limited(&m, "mosaic", "messages") >= 1.0, "{m}");
    assert!(limited(&m, "nostr", "messages") >= 1.0);
    assert_eq!(limited(&m, "mosaic", "submissions"), 0.0);
}

#[tokio::test]
async fn over_the_message_rate_with_action_close_the_client_gets_1008() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(
        &backend,
        None,
        "rate_limits:\n  messages_per_connection: { rate: 1, per: 10s, burst: 3, action: close }\n",
    )
    .await;
    let mut ws = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    for n in 0..5 {
        ws.send_binary(&wire::submission(&numbered(0xC0, n))).await;
    }
    assert_eq!(ws.close_code().await, Some(1008));
    eventually("the three within the burst reached the backend", || {
        backend.received(wire::SUBMISSION) == 3
    })
    .await;
    let m = metrics_once(&gw, "mosaic_gateway_closes_sent_total{code=\"1008\"}", 1.0).await;
    assert_eq!(limited(&m, "mosaic", "messages"), 1.0);
    assert_eq!(
        metric(&m, "mosaic_gateway_closes_sent_total{code=\"1008\"}"),
        1.0
    );
    // The next connection is served again.
    let mut ws = mosaic_client(gw.public_addr).await;
    assert_eq!(submit(&mut ws, &numbered(0xC1, 0)).await, 0x01);
}

#[tokio::test]
async fn bytes_per_connection_holds_a_client_to_the_byte_rate_in_order() {
    const RATE: f64 = 20_000.0;
    const BURST: f64 = 10_000.0;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let counted = seen.clone();
    let relay = deflate_server(move |text| {
        counted.lock().unwrap().push(text.to_string());
        None
    })
    .await;
    let backend = mosaic_backend().await;
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{relay}\n\
         rate_limits:\n  bytes_per_connection: {{ rate: {RATE}, per: 1s, burst: {BURST} }}\n",
        backend.local_addr()
    ))
    .await;
    let (ws, _) = connect(gw.public_addr, &[]).await.unwrap();
    let (mut tx, _rx) = ws.split();
    // 45 messages of 1000 bytes (1008 on the wire, masked, with a 16-bit length).
    let texts: Vec<String> = (0..45)
        .map(|n| format!("{n:04}{}", "x".repeat(996)))
        .collect();
    let flood = texts.clone();
    let start = Instant::now();
    tokio::spawn(async move {
        for t in flood {
            if tx.send(Message::Text(t.into())).await.is_err() {
                return;
            }
        }
        std::mem::forget(tx);
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let secs = start.elapsed().as_secs_f64();
    let bytes = seen.lock().unwrap().len() as f64 * 1008.0;
    within_a_fifth("bytes", bytes, BURST, RATE, secs);
    eventually("every message arrived", || seen.lock().unwrap().len() == 45).await;
    assert!(*seen.lock().unwrap() == texts, "in order and intact");
    assert!(limited(&metrics_text(&gw).await, "nostr", "bytes") >= 1.0);
}

#[tokio::test]
async fn over_rate_submissions_are_answered_0x12_by_the_gateway_and_never_reach_the_backend() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(
        &backend,
        None,
        "rate_limits:\n  mosaic_submissions: { rate: 1, per: 60s, burst: 3, scope: connection }\n",
    )
    .await;
    let (mut tx, mut rx) = mosaic_client(gw.public_addr).await.split();
    let records: Vec<Vec<u8>> = (0..5).map(|n| numbered(0xD0, n)).collect();
    for r in &records {
        tx.send(Message::Binary(wire::submission(r).into()))
            .await
            .unwrap();
    }
    // The gateway's answers may overtake the backend's: match them by record id.
    let mut codes = std::collections::HashMap::new();
    while codes.len() < records.len() {
        let res = match tokio::time::timeout(T, rx.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            Some(Ok(_)) => continue,
            other => panic!("no Submission Result: {other:?}"),
        };
        assert_eq!((res.len(), res[0]), (36, wire::SUBMISSION_RESULT));
        let who = records.iter().position(|r| r[..32] == res[4..36]).unwrap();
        codes.insert(who, res[3]);
    }
    let codes: Vec<u8> = (0..5).map(|i| codes[&i]).collect();
    assert_eq!(codes, [0x01, 0x01, 0x01, 0x12, 0x12]);
    assert_eq!(backend.received(wire::SUBMISSION), 3);
    assert_eq!(backend.record_count(), 3);
    let m = metrics_text(&gw).await;
    assert_eq!(limited(&m, "mosaic", "submissions"), 2.0);
    // A Submission split over frames, with a ping between them, is answered the same way.
    let mut raw = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    for n in 0..3 {
        raw.send_binary(&wire::submission(&numbered(0xD1, n))).await;
        assert!(matches!(raw.read().await, RawMessage::Binary(b) if b[3] == 0x01));
    }
    let over = wire::submission(&numbered(0xD2, 0));
    raw.send_frame(false, 0x2, &over[..6]).await;
    raw.send_frame(true, 0x9, b"still there?").await;
    raw.send_frame(true, 0x0, &over[6..]).await;
    match raw.read().await {
        RawMessage::Binary(b) => assert_eq!((b[3], &b[4..36]), (0x12, &over[4..36])),
        other => panic!("expected a Submission Result, got {other:?}"),
    }
    assert_eq!(backend.received(wire::SUBMISSION), 6);
}

#[tokio::test]
async fn the_33rd_open_query_is_closed_0x11_by_the_gateway_and_never_reaches_the_backend() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "rate_limits:\n  mosaic_open_queries: 32\n").await;
    let mut ws = mosaic_client(gw.public_addr).await;
    for id in 0..32u8 {
        send(&mut ws, wire::query([id, 0], b"")).await;
        assert_eq!(recv(&mut ws).await, wire::query_complete([id, 0]));
    }
    send(&mut ws, wire::query([32, 0], b"")).await;
    assert_eq!(recv(&mut ws).await, wire::query_closed([32, 0], 0x11));
    assert_eq!(backend.received(wire::QUERY), 32);
    // Reusing an open query's id replaces it: not a 33rd query.
    send(&mut ws, wire::query([5, 0], b"again")).await;
    assert_eq!(recv(&mut ws).await, wire::query_complete([5, 0]));
    // Closing one makes room for another.
    send(&mut ws, wire::close_query([0, 0])).await;
    assert_eq!(recv(&mut ws).await, wire::query_closed([0, 0], 0x01));
    send(&mut ws, wire::query([40, 0], b"")).await;
    assert_eq!(recv(&mut ws).await, wire::query_complete([40, 0]));
    assert_eq!(backend.received(wire::QUERY), 34);
    send(&mut ws, wire::query([41, 0], b"")).await;
    assert_eq!(recv(&mut ws).await, wire::query_closed([41, 0], 0x11));
    assert_eq!(backend.received(wire::QUERY), 34);
    let m = metrics_text(&gw).await;
    assert_eq!(limited(&m, "mosaic", "open_queries"), 2.0);
}

#[tokio::test]
async fn client_key_scope_counts_one_key_across_two_connections() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let limits =
        "rate_limits:\n  mosaic_submissions: { rate: 1, per: 60s, burst: 2, scope: client_key }\n";
    let gw = tls_gateway(&master, ("auto", "optional", "1.3"), &backend, limits).await;
    let key = client_key(61);
    let addr = gw.public_addr;
    let mut a = tls_mosaic(addr, rpk_client(master.public, &key), "a", &[]).await;
    let mut b = tls_mosaic(addr, rpk_client(master.public, &key), "b", &[]).await;
    assert_eq!(submit(&mut a, &numbered(0xE0, 0)).await, 0x01);
    assert_eq!(submit(&mut b, &numbered(0xE0, 1)).await, 0x01);
    // The key's burst is spent, whichever connection asks.
    assert_eq!(submit(&mut a, &numbered(0xE0, 2)).await, 0x12);
    assert_eq!(submit(&mut b, &numbered(0xE0, 3)).await, 0x12);
    // Another key, and an anonymous client (counted by its address), have their own.
    let mut other = tls_mosaic(addr, rpk_client(master.public, &client_key(62)), "o", &[]).await;
    assert_eq!(submit(&mut other, &numbered(0xE1, 0)).await, 0x01);
    let mut anon = tls_mosaic(addr, anonymous_client(master.public, true), "anon", &[]).await;
    assert_eq!(submit(&mut anon, &numbered(0xE2, 0)).await, 0x01);
    assert_eq!(backend.received(wire::SUBMISSION), 4);
    let m = metrics_text(&gw).await;
    assert_eq!(
        metric(
            &m,
            "mosaic_gateway_rate_limiter_entries{table=\"submissions\"}"
        ),
        3.0
    );
}

/// The `Retry-After` of a 429 answer, in seconds.
fn retry_after(answer: &str) -> u64 {
    answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {answer}"))
}

#[tokio::test]
async fn connections_beyond_connections_per_ip_get_429_with_retry_after() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(
        &backend,
        None,
        "rate_limits:\n  connections_per_ip: { rate: 1, per: 60s, burst: 2 }\n",
    )
    .await;
    let _a = mosaic_client(gw.public_addr).await;
    let _b = mosaic_client(gw.public_addr).await;
    let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Protocol: mosaic2024\r\n\r\n";
    let answer = raw_http(gw.public_addr, upgrade).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    let wait = retry_after(&answer);
    assert!((55..=60).contains(&wait), "Retry-After: {wait}");
    let m = metrics_text(&gw).await;
    assert_eq!(limited(&m, "mosaic", "connections"), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "mosaic_gateway_handshake_rejections_total{reason=\"connections_per_ip\",route=\"\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "mosaic_gateway_rate_limiter_entries{table=\"connections\"}"
        ),
        1.0
    );
    // Open connections are not affected, and the backend never saw the refused one.
    assert_eq!(backend.connections(), 2);
}

/// A gateway behind a trusted balancer that sends PROXY headers.
async fn behind_a_balancer(
    backend: &MosaicBackend,
    extra: &str,
) -> mosaic_gateway::runtime::Running {
    gateway_for(
        backend,
        None,
        &format!("forwarded:\n  trusted_proxies: [127.0.0.1/32]\n  proxy_protocol: true\n{extra}"),
    )
    .await
}

/// The first line the gateway answers an upgrade with after a PROXY v2 header from each
/// source (empty: closed without an answer).
async fn first_lines(addr: SocketAddr, sources: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for src in sources {
        out.push(upgrade_after(addr, &from(src)).await);
    }
    out
}

fn from(src: &str) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = if src.is_ipv6() {
        "[2001:db8::443]:443"
    } else {
        "10.0.0.1:443"
    }
    .parse()
    .unwrap();
    proxy_v2(src, dst)
}

#[tokio::test]
async fn ipv6_clients_in_one_64_share_a_bucket() {
    let backend = mosaic_backend().await;
    let gw = behind_a_balancer(
        &backend,
        "rate_limits:\n  connections_per_ip: { rate: 1, per: 60s, burst: 2 }\n  ipv6_prefix: 64\n",
    )
    .await;
    let answers = first_lines(
        gw.public_addr,
        &[
            "[2001:db8:1:2::1]:4000",
            "[2001:db8:1:2:ffff:ffff:ffff:fffe]:4000",
            "[2001:db8:1:2:aaaa::3]:4000",
            "[2001:db8:1:3::1]:4000",
            "198.51.100.1:4000",
        ],
    )
    .await;
    let statuses: Vec<&str> = answers.iter().map(|a| a.get(9..12).unwrap_or(a)).collect();
    // Two in the burst, the third from the same /64 refused; the next /64 is another client.
    assert_eq!(statuses, ["101", "101", "429", "101", "101"], "{answers:?}");
}

#[tokio::test]
async fn deny_and_allow_apply_to_the_real_client_address_from_proxy_v2() {
    let backend = mosaic_backend().await;
    let gw = behind_a_balancer(
        &backend,
        "access:\n  allow: [198.51.100.0/22, \"2001:db8::/32\"]\n  deny: [198.51.100.0/24, \"2001:db8:bad::/48\"]\n",
    )
    .await;
    let answers = first_lines(
        gw.public_addr,
        &[
            "198.51.101.7:1",
            "[2001:db8:1::9]:1",
            "198.51.100.7:1",
            "[2001:db8:bad::1]:1",
            "203.0.113.5:1",
        ],
    )
    .await;
    // Allowed; then denied or outside the allow list: closed without a word, before HTTP.
    assert!(
        answers[..2].iter().all(|a| a.starts_with("HTTP/1.1 101")),
        "{answers:?}"
    );
    assert!(answers[2..].iter().all(String::is_empty), "{answers:?}");
    let m = metrics_text(&gw).await;
    assert_eq!(limited(&m, "unknown", "denied"), 3.0);
    let served: Vec<String> = backend
        .request_headers()
        .iter()
        .filter_map(|h| Some(h.get("x-real-ip")?.to_str().ok()?.to_string()))
        .filter(|ip| ip != "127.0.0.1") // the gateway's own health check
        .collect();
    assert_eq!(
        served,
        ["198.51.101.7", "2001:db8:1::9"],
        "the backend saw only these"
    );
}

#[tokio::test]
async fn a_refused_address_is_closed_before_tls() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let extra = "forwarded:\n  trusted_proxies: [127.0.0.1/32]\n  proxy_protocol: true\n\
                 access:\n  deny: [203.0.113.0/24]\n";
    let gw = tls_gateway(&master, ("auto", "optional", "1.3"), &backend, extra).await;
    let handshake = |src: &'static str| {
        let config = anonymous_client(master.public, true);
        async move {
            let mut tcp = TcpStream::connect(gw.public_addr).await.unwrap();
            tcp.write_all(&from(src)).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map(|_| ())
        }
    };
    assert!(
        handshake("203.0.113.9:1").await.is_err(),
        "refused before TLS"
    );
    assert!(handshake("192.0.2.9:1").await.is_ok());
    let m = metrics_text(&gw).await;
    assert_eq!(limited(&m, "unknown", "denied"), 1.0);
    // The gateway never started a TLS handshake with the refused client.
    assert_eq!(
        metric_sum(&m, "mosaic_gateway_tls_handshake_failures_total"),
        0.0
    );
}

#[tokio::test]
async fn behind_a_trusted_http_proxy_refused_addresses_get_403() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(
        &backend,
        None,
        "forwarded:\n  trusted_proxies: [127.0.0.0/8]\naccess:\n  deny: [198.51.100.0/24]\n",
    )
    .await;
    assert_eq!(
        refused_status(gw.public_addr, &mosaic_via("198.51.100.9")).await,
        403
    );
    let (_ok, _) = connect(gw.public_addr, &mosaic_via("192.0.2.9"))
        .await
        .unwrap();
    let page = raw_http(
        gw.public_addr,
        "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.9\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 403"), "{page}");
    let m = metrics_text(&gw).await;
    assert_eq!(limited(&m, "mosaic", "denied"), 1.0);
    assert_eq!(limited(&m, "nostr", "denied"), 1.0);
}

#[tokio::test]
async fn every_rate_limit_series_exists_from_the_first_scrape() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "").await;
    let m = metrics_text(&gw).await;
    for limit in [
        "connections",
        "messages",
        "bytes",
        "submissions",
        "open_queries",
        "denied",
    ] {
        assert!(
            m.contains(&format!(
                "mosaic_gateway_rate_limited_total{{limit=\"{limit}\",protocol=\"mosaic\"}} 0"
            )),
            "{limit}: {m}"
        );
    }
    assert!(
        m.contains("mosaic_gateway_rate_limited_total{limit=\"denied\",protocol=\"unknown\"} 0")
    );
    assert!(m.contains("mosaic_gateway_rate_limiter_entries{table=\"connections\"} 0"));
    // Without limits the relay has nothing to apply: traffic flows as before.
    let mut ws = mosaic_client(gw.public_addr).await;
    assert_eq!(submit(&mut ws, &numbered(0xA0, 0)).await, 0x01);
}

#[tokio::test]
async fn a_routes_own_rate_limits_apply_to_its_connections_only() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(
        &backend,
        None,
        &format!(
            "routes:\n  - name: strict\n    path_prefix: /strict\n    mosaic:\n      health_check: {{ interval: 60s }}\n      backends:\n        - url: ws://{}\n    rate_limits:\n      messages_per_connection: {{ rate: 1, per: 10s, burst: 3, action: close }}\n",
            backend.local_addr()
        ),
    )
    .await;
    // On the strict route the fourth message is over the limit: 1008.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/strict/feed", gw.public_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "mosaic2024".parse().unwrap());
    let (mut strict, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    for n in 0..3 {
        assert_eq!(submit(&mut strict, &numbered(0xD0, n)).await, 0x01);
    }
    strict
        .send(Message::Binary(wire::submission(&numbered(0xD0, 3)).into()))
        .await
        .unwrap();
    let code = loop {
        match tokio::time::timeout(T, strict.next()).await {
            Ok(Some(Ok(Message::Close(c)))) => break c.map(|c| u16::from(c.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close: {other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    // The default route has no rate limits: ten messages pass on one connection.
    let mut free = mosaic_client(gw.public_addr).await;
    for n in 0..10 {
        assert_eq!(submit(&mut free, &numbered(0xD1, n)).await, 0x01);
    }
}

#[test]
fn a_routes_rate_limit_mistakes_name_the_route_key() {
    let cfg = mosaic_gateway::config::parse(
        "mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\nroutes:\n  - name: r\n    path_prefix: /r\n    mosaic:\n      validate: direction\n      backends:\n        - url: ws://127.0.0.1:8082\n    rate_limits:\n      messages_per_connection: { rate: 0 }\n      mosaic_open_queries: 8\n",
    );
    let err = cfg.expect_err("invalid route rate limits").to_string();
    assert!(
        err.contains("routes[0].rate_limits.messages_per_connection.rate:"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].rate_limits.mosaic_open_queries: needs mosaic.validate: strict"),
        "{err}"
    );
}
