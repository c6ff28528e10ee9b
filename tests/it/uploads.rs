//! Large plain requests (Blossom uploads, NIP-86 calls, anything not a WebSocket) through the
//! gateway to the relay: bodies stream without being held whole, however long the client
//! takes to send them; the relay's answer is awaited from the end of the body; bodies over
//! `http.max_body_bytes` are refused with 413.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::support::recorder::{Answer, Recorder};

const UNUSED_MOSAIC: &str = "mosaic:\n  backends:\n    - url: ws://127.0.0.1:1\n";

async fn answer_of(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_30_mb_upload_at_a_few_mb_per_second_streams_through_without_being_held() {
    const SIZE: usize = 30 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let relay = Recorder::start(Answer::Serve).await;
    // The relay's answer has 1 s from the end of the body; the upload itself takes ~6 s,
    // longer than the 5 s connect timeout that once covered the whole request.
    let gw = spawn_child_gateway(&format!(
        "{UNUSED_MOSAIC}nostr:\n  upstream: ws://{}\nhttp:\n  response_timeout: 1s\n",
        relay.addr()
    ));
    let pid = gw.child.id();
    let mut s = None;
    for _ in 0..100 {
        if let Ok(c) = TcpStream::connect(gw.public).await {
            s = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = s.expect("the gateway listens");
    let before = rss_kib(pid);
    let started = Instant::now();
    s.write_all(
        format!("PUT /upload HTTP/1.1\r\nHost: r.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![0x5a_u8; CHUNK];
    let mut peak = before;
    for _ in 0..SIZE / CHUNK {
        s.write_all(&chunk).await.unwrap();
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = answer_of(&mut s).await;
    let took = started.elapsed();
    peak = peak.max(rss_kib(pid));
    println!(
        "30 MB upload: {:.1} s ({:.1} MB/s), gateway RSS {} KiB before, peak {} KiB (+{} KiB)",
        took.as_secs_f64(),
        SIZE as f64 / 1e6 / took.as_secs_f64(),
        before,
        peak,
        peak - before
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = relay.only();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.values("content-length"), [SIZE.to_string()]);
    // Streamed: the gateway holds a few reads' worth of the body, never the body.
    assert!(
        peak - before < 8 * 1024,
        "RSS grew by {} KiB for a 30 MB body",
        peak - before
    );
    let mut child = gw.child;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_refused_with_413_announced_or_streamed() {
    let relay = Recorder::start(Answer::Serve).await;
    let gw = gateway(&format!(
        "{UNUSED_MOSAIC}nostr:\n  upstream: ws://{}\nhttp:\n  max_body_bytes: 1000\n",
        relay.addr()
    ))
    .await;
    // Announced by Content-Length: refused before the relay hears of it.
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: r.test\r\nContent-Length: 5000\r\n\r\n")
        .await
        .unwrap();
    let answer = answer_of(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(relay.seen().is_empty());
    // Chunked: counted while it streams, cut once over.
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: r.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        s.write_all(format!("{:x}\r\n{}\r\n", 600, "a".repeat(600)).as_bytes())
            .await
            .unwrap();
    }
    let answer = answer_of(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Within the limit, a chunked body passes.
    let body = "a".repeat(900);
    let ok = raw_http(
        gw.public_addr,
        &format!("POST /upload HTTP/1.1\r\nHost: r.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n384\r\n{body}\r\n0\r\n\r\n"),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test]
async fn a_relay_that_never_answers_gets_504_after_the_response_timeout() {
    let relay = Recorder::start(Answer::Never).await;
    let gw = gateway(&format!(
        "{UNUSED_MOSAIC}nostr:\n  upstream: ws://{}\n  health_check: {{ interval: 1h }}\nhttp:\n  response_timeout: 300ms\n",
        relay.addr()
    ))
    .await;
    let answer = raw_http(
        gw.public_addr,
        "POST /rpc HTTP/1.1\r\nHost: r.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408_after_the_response_timeout() {
    let relay = Recorder::start(Answer::Serve).await;
    let gw = gateway(&format!(
        "{UNUSED_MOSAIC}nostr:\n  upstream: ws://{}\nhttp:\n  response_timeout: 300ms\n",
        relay.addr()
    ))
    .await;
    let mut s = TcpStream::connect(gw.public_addr).await.unwrap();
    s.write_all(b"PUT /upload HTTP/1.1\r\nHost: r.test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // 90 bytes never come: without a timer, this held both connections for good.
    let answer = answer_of(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}
