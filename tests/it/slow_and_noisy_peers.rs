//! Peers that cost the gateway without using it: a flood of garbage TLS handshakes (the log
//! stays short, the metric counts every one), and a client, or an upstream, that stops
//! reading while the other side sends (cut after `limits.write_timeout`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::dev::mosaic_backend::wire;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::*;

/// Garbage handshakes the flood sends.
const GARBAGE: usize = 300;

#[tokio::test]
async fn a_flood_of_garbage_tls_handshakes_is_counted_in_full_and_logged_in_a_few_lines() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.pem");
    mosaic_gateway::keys::keygen(&key).unwrap();
    let mut gw = spawn_child_gateway(&format!(
        "tls:\n  key_file: \"{}\"\n  certificate: self-signed\nmosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: ws://127.0.0.1:9\n",
        key.display()
    ));
    readyz_or_listening(gw.admin).await;
    let started = Instant::now();
    for _ in 0..GARBAGE {
        // Plain HTTP on the TLS port: not a ClientHello.
        let mut s = TcpStream::connect(gw.public).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut [0u8; 64]).await;
    }
    let failures = |text: &str| metric_sum(text, "mosaic_gateway_tls_handshake_failures_total");
    let mut text = String::new();
    let start = Instant::now();
    while failures(&text) < GARBAGE as f64 {
        assert!(start.elapsed() < T, "failures counted: {}", failures(&text));
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = admin_get(gw.admin, "/metrics").await.1;
    }
    assert_eq!(failures(&text), GARBAGE as f64, "every failure is counted");
    let elapsed = started.elapsed();

    // The log: one line per 10 s at most (plus the first), whatever the flood.
    let mut lines = Vec::new();
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        lines.extend(gw.logs.try_iter());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("TLS handshake failed"))
        .collect();
    let allowed = 1 + elapsed.as_secs() as usize / 10 + 1;
    assert!(!failed.is_empty(), "no failure logged at all:\n{lines:#?}");
    assert!(
        failed.len() <= allowed,
        "{} lines for {GARBAGE} failures in {elapsed:?}:\n{failed:#?}",
        failed.len()
    );
    assert!(
        failed[0].contains("\"not_logged_since_last\":0"),
        "{}",
        failed[0]
    );
    assert!(
        !lines.iter().any(|l| l.contains("\"TLS handshake\"")),
        "successful handshakes are not logged at info"
    );
}

/// Waits until the admin listener answers (the public one is bound before it).
async fn readyz_or_listening(admin: std::net::SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect(admin).await.is_err() {
        assert!(start.elapsed() < T, "the gateway never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Mosaic backend that pushes records as fast as it may on every connection, and keeps
/// the close codes the gateway sent it.
async fn pushing_backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<u16>>>) {
    let closes = Arc::new(Mutex::new(Vec::new()));
    let seen = closes.clone();
    let addr = scripted_mosaic_backend(move |ws| push(ws, seen.clone())).await;
    (addr, closes)
}

async fn push(ws: WebSocketStream<TcpStream>, closes: Arc<Mutex<Vec<u16>>>) {
    let (mut tx, mut rx) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Close(Some(c)) = m {
                closes.lock().unwrap().push(u16::from(c.code));
            }
        }
    });
    let rec = wire::record([0, 1], &[7u8; 60_000]);
    while tx.send(Message::Binary(rec.clone().into())).await.is_ok() {}
}

#[tokio::test]
async fn a_client_that_stops_reading_but_trickles_pings_is_cut_after_the_write_timeout() {
    let (backend, backend_close) = pushing_backend().await;
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{backend}\n  health_check: {{ interval: 60s }}\nlimits:\n  write_timeout: 1s\n"
    ))
    .await;
    let mut stalled = RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    // The client reads nothing while the backend pushes, and sends a ping now and then:
    // traffic enough to keep the idle timeout away, progress none.
    let cut = |text: &str| metric(text, "mosaic_gateway_write_timeouts_total{side=\"client\"}");
    let start = Instant::now();
    let mut pings = 0;
    loop {
        let text = admin_get(gw.admin_addr, "/metrics").await.1;
        if cut(&text) >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < 3 * T,
            "a client that reads nothing still held after {pings} pings"
        );
        stalled.send_frame(true, 0x9, b"still here").await;
        pings += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = admin_get(gw.admin_addr, "/metrics").await.1;
    assert_eq!(cut(&text), 1.0);
    assert_eq!(
        metric_sum(&text, "mosaic_gateway_connections_active"),
        0.0,
        "the connection is gone"
    );
    // What the kernel still held reaches the client, then the socket ends without a close
    // frame (none could be written past the stalled data); the backend heard 1001.
    let end = loop {
        match stalled.read().await {
            RawMessage::Binary(_) => continue,
            other => break other,
        }
    };
    assert_eq!(end, RawMessage::Eof);
    eventually("the backend hears 1001", || {
        backend_close.lock().unwrap().contains(&1001)
    })
    .await;
}

/// A Mosaic backend that completes the upgrade and then never reads again.
async fn deaf_backend() -> std::net::SocketAddr {
    scripted_mosaic_backend(|ws| async move {
        // Held, never polled: nothing more is read from the socket.
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(ws);
    })
    .await
}

#[tokio::test]
async fn an_upstream_that_stops_reading_is_cut_and_its_client_hears_1001() {
    let backend = deaf_backend().await;
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{backend}\n  health_check: {{ interval: 60s }}\nlimits:\n  write_timeout: 1s\n"
    ))
    .await;
    let (mut tx, mut rx) = mosaic_client(gw.public_addr).await.split();
    // The client submits as fast as the gateway takes it; the backend takes nothing.
    let pusher = tokio::spawn(async move {
        let submission = wire::submission(&[5u8; 30_000]);
        while tx
            .send(Message::Binary(submission.clone().into()))
            .await
            .is_ok()
        {}
    });
    let code = tokio::time::timeout(3 * T, async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
                Some(Ok(_)) => continue,
                other => panic!("the stream ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("an upstream that reads nothing still held the client");
    assert_eq!(code, Some(1001));
    pusher.abort();
    // Counted when the connection ends, after the close linger.
    let start = Instant::now();
    loop {
        let text = admin_get(gw.admin_addr, "/metrics").await.1;
        if metric(
            &text,
            "mosaic_gateway_write_timeouts_total{side=\"upstream\"}",
        ) == 1.0
        {
            assert_eq!(
                metric(
                    &text,
                    "mosaic_gateway_write_timeouts_total{side=\"client\"}"
                ),
                0.0
            );
            break;
        }
        assert!(start.elapsed() < T, "the cut was not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
