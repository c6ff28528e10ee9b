//! A public endpoint under misuse: connection caps, slow and silent clients, oversized
//! requests, idle and dead clients, a client that stops reading, and forwarded addresses.

use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::dev::mosaic_backend::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mosaic2024\r\n";

/// Reads until the gateway closes the socket; returns what it said and how long it took.
async fn until_closed(s: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[tokio::test]
async fn global_cap_answers_503_and_recovers_when_connections_close() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "limits:\n  max_connections: 2\n").await;
    let a = mosaic_client(gw.public_addr).await;
    let _b = mosaic_client(gw.public_addr).await;
    assert_eq!(
        refused_status(gw.public_addr, &[("Sec-WebSocket-Protocol", "mosaic2024")]).await,
        503
    );
    drop(a);
    let m = gw.app.limits.clone();
    eventually("a place freed", || m.total() == 1).await;
    let _c = mosaic_client(gw.public_addr).await;
    let (_, metrics) = admin_get(gw.admin_addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "mosaic_gateway_handshake_rejections_total{reason=\"max_connections\",route=\"default\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn per_address_cap_answers_429_counted_on_the_real_client_address() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(
        &backend,
        None,
        "limits:\n  max_connections_per_ip: 1\nforwarded:\n  trusted_proxies: [127.0.0.0/8]\n",
    )
    .await;
    let via = mosaic_via;
    let (first, _) = connect(gw.public_addr, &via("198.51.100.1")).await.unwrap();
    assert_eq!(
        refused_status(gw.public_addr, &via("198.51.100.1")).await,
        429
    );
    // Another real client behind the same proxy is not affected.
    let (_other, _) = connect(gw.public_addr, &via("198.51.100.2")).await.unwrap();
    drop(first);
    let limits = gw.app.limits.clone();
    eventually("the first client's place freed", || limits.total() == 1).await;
    let (_again, _) = connect(gw.public_addr, &via("198.51.100.1")).await.unwrap();
}

#[tokio::test]
async fn slowloris_clients_are_cut_at_the_handshake_timeout_while_others_connect() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "limits:\n  handshake_timeout: 500ms\n").await;
    // One client trickles its headers a byte at a time, another never says anything.
    let mut trickler = TcpStream::connect(gw.public_addr).await.unwrap();
    let mut silent = TcpStream::connect(gw.public_addr).await.unwrap();
    let addr = gw.public_addr;
    let trickle = tokio::spawn(async move {
        let start = Instant::now();
        for b in UPGRADE.as_bytes() {
            if trickler.write_all(&[*b]).await.is_err() {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the gateway let a client take {:?} over its headers",
            start.elapsed()
        );
    });
    // Meanwhile an honest client gets through.
    let mut ok = mosaic_client(addr).await;
    send(&mut ok, wire::submission(&[9u8; 40])).await;
    assert_eq!(recv(&mut ok).await[0], 0x83);
    let (said, took) = until_closed(&mut silent).await;
    assert!(
        took < Duration::from_secs(5),
        "silent client held for {took:?}"
    );
    assert!(!said.contains("101"), "{said}");
    let trickled = trickle.await.unwrap();
    assert!(
        trickled < Duration::from_secs(5),
        "trickling client held for {trickled:?}"
    );
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(
        &backend,
        None,
        "limits:\n  max_request_header_bytes: 8192\n",
    )
    .await;
    let big = format!("{UPGRADE}X-Padding: {}\r\n\r\n", "a".repeat(20_000));
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    let _ = s.write_all(big.as_bytes()).await;
    let (said, _) = until_closed(&mut s).await;
    assert!(said.starts_with("HTTP/1.1 431"), "{said}");
    let _still_serving = mosaic_client(gw.public_addr).await;
}

#[tokio::test]
async fn quiet_clients_that_answer_pings_stay_and_dead_ones_idle_out_with_1001() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(&backend, None, "limits:\n  idle_timeout: 400ms\n").await;
    // A live client: tungstenite answers the gateway's pings while it is being read.
    let live = mosaic_client(gw.public_addr).await;
    let (mut tx, mut rx) = live.split();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            let _ = got_tx.send(m);
        }
    });
    // A dead client: connected, never answers anything.
    let mut dead = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    dead.answer_pings = false;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The live one still works after almost four idle timeouts.
    tx.send(Message::Binary(wire::submission(&[3u8; 40]).into()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(T, async {
        loop {
            match got_rx.recv().await {
                Some(Message::Binary(b)) => return b,
                Some(Message::Close(c)) => panic!("live client was closed: {c:?}"),
                Some(_) => continue,
                None => panic!("live client's stream ended"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(answer[0], 0x83);
    // The dead one was pinged, then closed with 1001.
    assert_eq!(dead.close_code().await, Some(1001));
    assert!(dead.pings_seen >= 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_backpressure_not_buffering() {
    // A backend that pushes records as fast as the gateway takes them, counting bytes.
    let pushed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = pushed.clone();
    let backend_addr = scripted_mosaic_backend(move |mut ws| {
        let counter = counter.clone();
        async move {
            let rec = wire::record([0, 1], &[7u8; 60_000]);
            while ws.send(Message::Binary(rec.clone().into())).await.is_ok() {
                counter.fetch_add(rec.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
    .await;
    let gw = gateway(&format!("mosaic:\n  backends:\n    - url: ws://{backend_addr}\n  health_check: {{ interval: 60s }}\n")).await;
    let stalled = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    // Let the backend push into a client that never reads until the pushing stops. Up to
    // 10 s: a stable count ends the wait at once; the limit only matters while nothing has
    // arrived yet (a loaded test machine, where other tests start Chromium) or while the
    // count keeps growing, which the bound below then catches.
    let mut last = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = pushed.load(std::sync::atomic::Ordering::Relaxed);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let total = pushed.load(std::sync::atomic::Ordering::Relaxed);
    // Kernel socket buffers on both hops plus the gateway's read chunk: a few MB at most.
    // Unbounded buffering would have taken hundreds of MB by now.
    assert!(
        total < 32 * 1024 * 1024,
        "backend pushed {total} bytes into a stalled client"
    );
    assert!(total > 0);
    drop(stalled);
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let backend = mosaic_backend().await;
    // Untrusted peer: its X-Forwarded-For is ignored.
    let gw = gateway_for(
        &backend,
        None,
        "forwarded:\n  trusted_proxies: [10.0.0.0/8]\n",
    )
    .await;
    let (_ws, _) = connect(
        gw.public_addr,
        &[
            ("Sec-WebSocket-Protocol", "mosaic2024"),
            ("X-Forwarded-For", "203.0.113.7"),
        ],
    )
    .await
    .unwrap();
    let h = backend.last_request_headers().unwrap();
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");

    // Trusted peer, several hops: the rightmost address that is not a trusted proxy wins.
    let backend2 = mosaic_backend().await;
    let gw2 = gateway_for(
        &backend2,
        None,
        "forwarded:\n  trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]\n",
    )
    .await;
    let (_ws, _) = connect(
        gw2.public_addr,
        &[
            ("Sec-WebSocket-Protocol", "mosaic2024"),
            ("X-Forwarded-For", "192.0.2.1, 2001:db8::7, 10.1.2.3"),
        ],
    )
    .await
    .unwrap();
    let h = backend2.last_request_headers().unwrap();
    assert_eq!(h["x-real-ip"], "2001:db8::7");
    assert_eq!(h["x-forwarded-for"], "192.0.2.1, 2001:db8::7");
    // Malformed chains from a trusted proxy are not believed at all.
    let (_ws, _) = connect(
        gw2.public_addr,
        &[
            ("Sec-WebSocket-Protocol", "mosaic2024"),
            ("X-Forwarded-For", "not-an-ip, 192.0.2.9"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        backend2.last_request_headers().unwrap()["x-real-ip"],
        "127.0.0.1"
    );
}

#[tokio::test]
async fn ipv6_clients_are_served_and_reported() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("note: no IPv6 loopback here; skipping");
        return;
    };
    drop(probe);
    let backend = mosaic_backend().await;
    let gw = gateway(&format!(
        "listen: \"[::1]:0\"\nmosaic:\n  backends:\n    - url: ws://{}\n",
        backend.local_addr()
    ))
    .await;
    let (_ws, _) = connect(gw.public_addr, &[("Sec-WebSocket-Protocol", "mosaic2024")])
        .await
        .unwrap();
    assert_eq!(backend.last_request_headers().unwrap()["x-real-ip"], "::1");
}

/// Opens a connection, sends `prefix` (a PROXY header) and then a Mosaic upgrade; returns
/// the gateway's first answer line.
pub(crate) async fn upgrade_after(addr: std::net::SocketAddr, prefix: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(UPGRADE.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    s.write_all(&bytes).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    // Keep the upgraded connection open until the caller has looked at the backend.
    std::mem::forget(s);
    text.lines().next().unwrap_or("").to_string()
}

pub(crate) fn proxy_v2(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    match (src, dst) {
        (std::net::SocketAddr::V6(s), std::net::SocketAddr::V6(d)) => {
            h.push(0x21); // AF_INET6, STREAM
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        (std::net::SocketAddr::V4(s), std::net::SocketAddr::V4(d)) => {
            h.push(0x11); // AF_INET, STREAM
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => unreachable!("same family"),
    }
    h
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_balancer_gives_the_real_client_address() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(
        &backend,
        None,
        "forwarded:\n  trusted_proxies: [127.0.0.1/32]\n  proxy_protocol: true\nlimits:\n  handshake_timeout: 1s\n",
    )
    .await;
    let v1 = upgrade_after(
        gw.public_addr,
        b"PROXY TCP4 198.51.100.23 10.0.0.1 40000 443\r\n",
    )
    .await;
    assert!(v1.starts_with("HTTP/1.1 101"), "{v1}");
    assert_eq!(
        backend.last_request_headers().unwrap()["x-real-ip"],
        "198.51.100.23"
    );

    let src: std::net::SocketAddr = "[2001:db8::42]:5555".parse().unwrap();
    let dst: std::net::SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let v2 = upgrade_after(gw.public_addr, &proxy_v2(src, dst)).await;
    assert!(v2.starts_with("HTTP/1.1 101"), "{v2}");
    assert_eq!(
        backend.last_request_headers().unwrap()["x-real-ip"],
        "2001:db8::42"
    );

    // UNKNOWN: the balancer's own address stands.
    let unknown = upgrade_after(gw.public_addr, b"PROXY UNKNOWN\r\n").await;
    assert!(unknown.starts_with("HTTP/1.1 101"), "{unknown}");
    assert_eq!(
        backend.last_request_headers().unwrap()["x-real-ip"],
        "127.0.0.1"
    );

    // A malformed header gets the connection closed; the gateway keeps serving.
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let (said, _) = until_closed(&mut s).await;
    assert!(said.is_empty(), "{said}");
    let (_, metrics) = admin_get(gw.admin_addr, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "mosaic_gateway_handshake_rejections_total{reason=\"bad_proxy_header\",route=\"\"}"
        ),
        1.0
    );
    // A client that never completes its header is cut at the handshake timeout.
    let mut slow = TcpStream::connect(gw.public_addr).await.unwrap();
    slow.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
    let (_, took) = until_closed(&mut slow).await;
    assert!(took < Duration::from_secs(5));
    let ok = upgrade_after(gw.public_addr, b"PROXY TCP4 192.0.2.5 10.0.0.1 1 2\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
}

#[tokio::test]
async fn proxy_headers_from_untrusted_peers_are_not_believed() {
    let backend = mosaic_backend().await;
    let gw = gateway_for(
        &backend,
        None,
        "forwarded:\n  trusted_proxies: [10.0.0.0/8]\n  proxy_protocol: true\n",
    )
    .await;
    let answer = upgrade_after(
        gw.public_addr,
        b"PROXY TCP4 198.51.100.23 10.0.0.1 40000 443\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(backend.request_headers().iter().all(|h| h
        .get("x-real-ip")
        .map(|v| v != "198.51.100.23")
        .unwrap_or(true)));
    // Without a header, the untrusted peer is simply the client.
    let (_ws, _) = connect(gw.public_addr, &[("Sec-WebSocket-Protocol", "mosaic2024")])
        .await
        .unwrap();
    assert_eq!(
        backend.last_request_headers().unwrap()["x-real-ip"],
        "127.0.0.1"
    );
}
