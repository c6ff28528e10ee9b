//! Running the real binary as an operator does: JSON logs, probes, metrics, and a SIGTERM
//! drain with an open Mosaic query and an open nostr subscription.

use std::time::{Duration, Instant};

use crate::common::*;
use mosaic_gateway::dev::mosaic_backend::wire;

#[tokio::test]
async fn sigterm_closes_open_queries_with_shutting_down_then_1001_and_exits_0() {
    let backend = mosaic_backend().await;
    let relay = nostr_relay().await;
    let mut gw = spawn_child_gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{}\nshutdown:\n  drain_timeout: 8s\n",
        backend.local_addr(),
        relay.local_addr()
    ));
    readyz_becomes(gw.admin, 200).await;

    // An open Mosaic query (past Query Complete) and a second one, and a nostr subscription.
    let mut mosaic = RawWs::connect(gw.public, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .unwrap();
    for id in [[0, 1], [0, 2]] {
        mosaic.send_binary(&wire::query(id, b"")).await;
        assert_eq!(
            mosaic.read().await,
            RawMessage::Binary(wire::query_complete(id))
        );
    }
    let mut nostr = RawWs::connect(gw.public, &[]).await.unwrap();
    nostr.send_text(r#"["REQ","live",{"kinds":[1]}]"#).await;
    assert!(matches!(nostr.read().await, RawMessage::Text(t) if t.contains("EOSE")));

    let started = Instant::now();
    sigterm(&gw.child);
    // Readiness turns 503 at once while the admin listener keeps answering.
    let (status, body) = tokio::time::timeout(T, async {
        loop {
            let (s, b) = admin_get(gw.admin, "/readyz").await;
            if s != 200 {
                return (s, b);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    // New clients are no longer accepted.
    let refused = RawWs::connect(gw.public, &["Sec-WebSocket-Protocol: mosaic2024"]).await;
    assert!(refused.is_err());

    // The Mosaic client hears Query Closed 0x30 for both queries, then 1001.
    let mut closed = Vec::new();
    let code = loop {
        match mosaic.read().await {
            RawMessage::Binary(m) => closed.push(m),
            RawMessage::Close(c) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    closed.sort();
    assert_eq!(
        closed,
        vec![
            wire::query_closed([0, 1], 0x30),
            wire::query_closed([0, 2], 0x30)
        ]
    );
    assert_eq!(code, Some(1001));
    assert_eq!(nostr.close_code().await, Some(1001));

    // The process exits 0 well before the drain timeout.
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            if let Some(s) = gw.child.try_wait().unwrap() {
                return (s, gw.logs);
            }
            if Instant::now() > deadline {
                let _ = gw.child.kill();
                panic!("gateway did not exit within drain_timeout");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let (exit, logs) = status;
    assert_eq!(exit.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(8));

    // Every log line is JSON; open and close lines carry the fields operators need.
    let lines: Vec<serde_json::Value> = logs
        .try_iter()
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let closes: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "connection closed")
        .collect();
    assert_eq!(closes.len(), 2, "{lines:?}");
    for c in &closes {
        for field in [
            "conn",
            "client",
            "protocol",
            "subprotocol",
            "upstream",
            "close_code",
            "closed_by",
            "duration_ms",
            "bytes_up",
            "bytes_down",
        ] {
            assert!(!c[field].is_null(), "missing {field} in {c}");
        }
        assert_eq!(c["close_code"], 1001);
        assert_eq!(c["closed_by"], "gateway");
        assert_eq!(c["client"], "127.0.0.1");
    }
    assert!(closes
        .iter()
        .any(|c| c["protocol"] == "mosaic" && c["subprotocol"] == "mosaic2024"));
    assert!(closes.iter().any(|c| c["protocol"] == "nostr"));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["message"] == "connection opened")
            .count(),
        2
    );
    assert!(lines.iter().any(|l| l["message"] == "draining"));
}

#[tokio::test]
async fn probes_answer_healthy_all_backends_down_and_recovered() {
    let backend = mosaic_backend().await;
    let port = backend.local_addr().port();
    let mut gw = spawn_child_gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\n  health_check: {{ interval: 200ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1 }}\n",
        backend.local_addr()
    ));
    readyz_becomes(gw.admin, 200).await;
    assert_eq!(admin_get(gw.admin, "/livez").await.0, 200);
    assert_eq!(admin_get(gw.admin, "/healthz").await.0, 200);
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    assert!(
        metrics.contains("mosaic_gateway_build_info{version=\""),
        "{metrics}"
    );
    backend.shutdown();
    drop(backend);
    let body = readyz_becomes(gw.admin, 503).await;
    assert!(body.contains("no healthy backend"), "{body}");
    assert_eq!(
        admin_get(gw.admin, "/livez").await.0,
        200,
        "alive even when not ready"
    );
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    assert!(
        metrics.contains("mosaic_gateway_backend_up{backend=\"ws://127.0.0.1:"),
        "{metrics}"
    );
    // A backend on the same port brings readiness back.
    let _back = mosaic_gateway::dev::mosaic_backend::MosaicBackend::spawn(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    readyz_becomes(gw.admin, 200).await;
    sigterm(&gw.child);
    let exit = tokio::task::spawn_blocking(move || gw.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
