//! Backend health as operators see it: active checks, passive failover within one client
//! handshake, 503/502 when the pool cannot serve, `/readyz`, and `backend_up` in /metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use mosaic_gateway::dev::mosaic_backend::{wire, MosaicBackend, MosaicBackendOptions};
use mosaic_gateway::runtime::Running;

const FAST_CHECKS: &str =
    "  health_check: { interval: 200ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1 }\n";
/// Active checks that effectively never run again after the first round.
const SLOW_CHECKS: &str =
    "  health_check: { interval: 10m, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }\n";

fn backends_yaml(addrs: &[SocketAddr], balance: &str, health: &str) -> String {
    let mut y = format!(
        "shutdown:\n  drain_timeout: 1s\nmosaic:\n  balance: {balance}\n{health}  backends:\n"
    );
    for a in addrs {
        y.push_str(&format!("    - url: ws://{a}\n"));
    }
    y
}

fn up_metric(addr: SocketAddr) -> String {
    format!(
        "mosaic_gateway_backend_up{{backend=\"ws://{addr}/\",pool=\"default\",route=\"default\"}}"
    )
}

async fn metrics(gw: &Running) -> String {
    admin_get(gw.admin_addr, "/metrics").await.1
}

/// `backend_up` for `addr`, or None when the series is absent.
async fn backend_up(gw: &Running, addr: SocketAddr) -> Option<f64> {
    let text = metrics(gw).await;
    let key = up_metric(addr);
    text.lines().find_map(|l| {
        l.strip_prefix(key.as_str())
            .map(|v| v.trim().parse().unwrap_or(-1.0))
    })
}

/// Polls `backend_up` until it equals `want`; returns how long that took.
async fn wait_up(gw: &Running, addr: SocketAddr, want: f64) -> Duration {
    let start = Instant::now();
    loop {
        if backend_up(gw, addr).await == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < T,
            "backend_up for {addr} never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Binds a Mosaic backend on exactly `addr` (the port a killed one used), retrying while
/// the old listener is still being torn down.
async fn respawn(addr: SocketAddr) -> MosaicBackend {
    let start = Instant::now();
    loop {
        match MosaicBackend::spawn(addr, MosaicBackendOptions::default()).await {
            Ok(b) => return b,
            Err(e) if start.elapsed() < T => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

/// A submission exchange on an open client: proves the connection still relays.
async fn submit_ok(ws: &mut Ws, seed: u8) {
    send(ws, wire::submission(&[seed; 40])).await;
    let answer = recv(ws).await;
    assert_eq!(answer[0], wire::SUBMISSION_RESULT);
}

/// The same over the raw client (which reports close codes exactly as sent).
async fn raw_submit_ok(ws: &mut RawWs, seed: u8) {
    ws.send_binary(&wire::submission(&[seed; 40])).await;
    match ws.read().await {
        RawMessage::Binary(b) => assert_eq!(b[0], wire::SUBMISSION_RESULT),
        other => panic!("expected a Submission Result, got {other:?}"),
    }
}

async fn raw_client(gw: &Running) -> RawWs {
    RawWs::connect(gw.public_addr, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .expect("Mosaic upgrade accepted")
}

async fn wait_connections(b: &MosaicBackend, n: usize) {
    let what = format!("backend {} to hold {n} connections", b.local_addr());
    eventually(&what, || b.connections() == n).await;
}

/// Waits until the gateway's check at start has reached `b` and closed again.
async fn wait_checked(b: &MosaicBackend) {
    let what = format!("the first health check of {}", b.local_addr());
    eventually(&what, || {
        !b.request_headers().is_empty() && b.connections() == 0
    })
    .await;
    // The result is recorded right after the check's socket closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn active_checks_mark_a_killed_backend_down_and_a_restarted_one_up() {
    let b1 = mosaic_backend().await;
    let b2 = mosaic_backend().await;
    let (a1, a2) = (b1.local_addr(), b2.local_addr());
    let gw = gateway(&backends_yaml(&[a1, a2], "round-robin", FAST_CHECKS)).await;
    wait_up(&gw, a1, 1.0).await;
    wait_up(&gw, a2, 1.0).await;
    assert_eq!(admin_get(gw.admin_addr, "/readyz").await.0, 200);

    b1.shutdown();
    drop(b1);
    let down = wait_up(&gw, a1, 0.0).await;
    eprintln!("killed backend reported down after {down:?}");
    // Interval 200ms + timeout 200ms, plus scheduling slack on a busy machine.
    assert!(down < Duration::from_millis(1500), "took {down:?}");
    assert_eq!(backend_up(&gw, a2).await, Some(1.0));
    assert_eq!(
        admin_get(gw.admin_addr, "/readyz").await.0,
        200,
        "one pool member is enough"
    );

    // New clients only reach the live backend while the other is down.
    for _ in 0..4 {
        let mut ws = mosaic_client(gw.public_addr).await;
        submit_ok(&mut ws, 1).await;
    }

    let b1 = respawn(a1).await;
    let up = wait_up(&gw, a1, 1.0).await;
    eprintln!("restarted backend reported up after {up:?}");
    assert!(up < Duration::from_millis(1500), "took {up:?}");
    // Round-robin sends it new clients again.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(mosaic_client(gw.public_addr).await);
    }
    wait_connections(&b1, 2).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn the_first_check_runs_right_after_start() {
    let live = mosaic_backend().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // A 10 minute interval: only a check at start can notice the dead backend.
    let gw = gateway(&backends_yaml(
        &[live.local_addr(), dead],
        "round-robin",
        SLOW_CHECKS,
    ))
    .await;
    let took = wait_up(&gw, dead, 0.0).await;
    eprintln!("dead backend marked down {took:?} after start");
    assert!(took < Duration::from_secs(3));
    assert_eq!(backend_up(&gw, live.local_addr()).await, Some(1.0));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_dying_backend_costs_its_own_clients_1014_and_nobody_else_anything() {
    let b1 = mosaic_backend().await;
    let b2 = mosaic_backend().await;
    let (a1, a2) = (b1.local_addr(), b2.local_addr());
    // Slow active checks: only passive health can notice the death during this test.
    let gw = gateway(&backends_yaml(&[a1, a2], "round-robin", SLOW_CHECKS)).await;
    wait_checked(&b1).await;
    wait_checked(&b2).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(raw_client(&gw).await);
    }
    wait_connections(&b1, 3).await;
    wait_connections(&b2, 3).await;
    // Which clients sit on b1? Send a submission from each: b1 stores records it saw.
    let mut on_b1 = Vec::new();
    let mut on_b2 = Vec::new();
    for (i, mut ws) in clients.into_iter().enumerate() {
        let before = b1.record_count();
        raw_submit_ok(&mut ws, i as u8 + 10).await;
        if b1.record_count() > before {
            on_b1.push(ws);
        } else {
            on_b2.push(ws);
        }
    }
    assert_eq!((on_b1.len(), on_b2.len()), (3, 3));

    let killed = Instant::now();
    b1.shutdown();
    for ws in on_b1.iter_mut() {
        assert_eq!(ws.close_code().await, Some(1014));
    }
    let closed = killed.elapsed();
    eprintln!("clients of the killed backend got 1014 within {closed:?}");
    assert!(closed < Duration::from_secs(2), "took {closed:?}");

    // Every new handshake succeeds: the one that picks the dead backend is retried on the
    // live one within the same client handshake.
    let mut fresh = Vec::new();
    for i in 0..6 {
        let mut ws = raw_client(&gw).await;
        raw_submit_ok(&mut ws, 50 + i).await;
        fresh.push(ws);
    }
    assert_eq!(
        backend_up(&gw, a1).await,
        Some(0.0),
        "passive health marked it down"
    );
    let m = metrics(&gw).await;
    assert!(
        metric(
            &m,
            "mosaic_gateway_upstream_failures_total{kind=\"connect\",pool=\"default\"}"
        ) >= 1.0,
        "{m}"
    );
    wait_connections(&b2, 3 + 6).await;
    // The survivors' connections never noticed.
    for (i, ws) in on_b2.iter_mut().enumerate() {
        raw_submit_ok(ws, 90 + i as u8).await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn every_backend_down_means_502_then_503_with_retry_after_and_readyz_follows() {
    let b1 = mosaic_backend().await;
    let b2 = mosaic_backend().await;
    let (a1, a2) = (b1.local_addr(), b2.local_addr());
    let gw = gateway(&backends_yaml(&[a1, a2], "least-connections", SLOW_CHECKS)).await;
    wait_checked(&b1).await;
    wait_checked(&b2).await;
    assert_eq!(admin_get(gw.admin_addr, "/readyz").await.0, 200);
    b1.shutdown();
    b2.shutdown();
    drop((b1, b2));
    // Both still count as healthy (slow checks): the handshake tries both, both fail.
    let proto = [("Sec-WebSocket-Protocol", "mosaic2024")];
    assert_eq!(refused_status(gw.public_addr, &proto).await, 502);
    // Now both are marked down: no try at all.
    match connect(gw.public_addr, &proto).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert!(resp.headers().get("retry-after").is_some(), "{resp:?}");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    let (status, body) = admin_get(gw.admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no healthy backend"), "{body}");
    gw.shutdown().await;
}

#[tokio::test]
async fn readyz_recovers_when_a_backend_comes_back() {
    let b1 = mosaic_backend().await;
    let a1 = b1.local_addr();
    let gw = gateway(&backends_yaml(&[a1], "round-robin", FAST_CHECKS)).await;
    wait_up(&gw, a1, 1.0).await;
    b1.shutdown();
    drop(b1);
    wait_up(&gw, a1, 0.0).await;
    assert_eq!(admin_get(gw.admin_addr, "/readyz").await.0, 503);
    let proto = [("Sec-WebSocket-Protocol", "mosaic2024")];
    assert_eq!(refused_status(gw.public_addr, &proto).await, 503);
    let _b1 = respawn(a1).await;
    wait_up(&gw, a1, 1.0).await;
    assert_eq!(admin_get(gw.admin_addr, "/readyz").await.0, 200);
    let mut ws = mosaic_client(gw.public_addr).await;
    submit_ok(&mut ws, 7).await;
    gw.shutdown().await;
}
