//! Mosaic 2025 (`mosaic2025`, specification 0.8.0) and the seed (`mosaic2024`) side by side
//! on one gateway with the default configuration: every client message of each version
//! relayed and answered, HELLO headers both ways, direction violations, the `"0.8"` profile,
//! and the gateway's own messages (rate answers, drain) in 2025 layouts, byte for byte.

use std::time::Duration;

use mosaic_gateway::dev::mosaic2025::wire as w25;
use mosaic_gateway::dev::mosaic_backend::{wire, MosaicBackend, MosaicBackendOptions};

use crate::common::*;

const V2025: &str = "Sec-WebSocket-Protocol: mosaic2025";
const V2024: &str = "Sec-WebSocket-Protocol: mosaic2024";

/// A record of `len` bytes (at least 48: its id) starting with `tag`.
fn record(tag: u8, len: usize) -> Vec<u8> {
    let mut r: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect();
    r[0] = tag;
    r
}

async fn bin(ws: &mut RawWs) -> Vec<u8> {
    match ws.read().await {
        RawMessage::Binary(m) => m,
        other => panic!("expected a binary message, got {other:?}"),
    }
}

async fn default_gateway(backend: &MosaicBackend, extra: &str) -> mosaic_gateway::runtime::Running {
    gateway_for(
        backend,
        None,
        &format!("  health_check: {{ interval: 60s }}\n{extra}"),
    )
    .await
}

#[tokio::test]
async fn both_versions_side_by_side_every_client_message_relayed_and_answered() {
    let backend = mosaic_backend().await;
    // No subprotocols or validate configured: both tokens by default.
    let gw = default_gateway(&backend, "").await;
    let mut c25 = RawWs::connect(gw.public_addr, &[V2025]).await.unwrap();
    let mut c24 = RawWs::connect(gw.public_addr, &[V2024]).await.unwrap();
    assert!(c25.response.contains("mosaic2025"), "{}", c25.response);
    assert!(c24.response.contains("mosaic2024"), "{}", c24.response);

    let r1 = record(0xA1, 100);
    // Boxed: the whole scenario as one future overflows a test thread's stack in debug.
    Box::pin(queries_2025(&mut c25, &r1)).await;
    Box::pin(seed_beside_2025(&mut c24, &mut c25, &r1)).await;
    Box::pin(the_rest_of_2025(&mut c25, &backend)).await;

    // The metrics tell the versions apart.
    let (_, text) = admin_get(gw.admin_addr, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "mosaic_gateway_mosaic_connections_total{version=\"2025\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "mosaic_gateway_mosaic_connections_total{version=\"2024\"}"
        ),
        1.0
    );
}

/// 2025: Submission, Subscribe, Get, Query, each answered.
async fn queries_2025(c25: &mut RawWs, r1: &[u8]) {
    // Submission → Submission Result ACCEPTED with the id prefix.
    c25.send_binary(&w25::submission(r1)).await;
    assert_eq!(bin(c25).await, w25::submission_result(w25::ACCEPTED, r1));
    // Subscribe → the stored record, Locally Complete; stays open.
    c25.send_binary(&w25::subscribe([0, 7], 0, b"")).await;
    assert_eq!(bin(c25).await, w25::record([0, 7], r1));
    assert_eq!(bin(c25).await, w25::locally_complete([0, 7]));
    // Get by id and Query → records, Query Closed SUCCESS.
    let mut id = [0u8; 48];
    id.copy_from_slice(&r1[..48]);
    c25.send_binary(&w25::get([0, 8], &[id])).await;
    assert_eq!(bin(c25).await, w25::record([0, 8], r1));
    assert_eq!(bin(c25).await, w25::query_closed([0, 8], w25::SUCCESS));
    c25.send_binary(&w25::query([0, 9], 0, b"")).await;
    assert_eq!(bin(c25).await, w25::record([0, 9], r1));
    assert_eq!(bin(c25).await, w25::query_closed([0, 9], w25::SUCCESS));
}

/// 2024 beside 2025 on the same backend.
async fn seed_beside_2025(c24: &mut RawWs, c25: &mut RawWs, r1: &[u8]) {
    // 2024 beside it: Query, Submission, Close Query; its record reaches the 2025
    // subscription live, in 2025's layout.
    c24.send_binary(&wire::query([1, 1], b"")).await;
    assert_eq!(bin(c24).await, wire::record([1, 1], r1));
    assert_eq!(bin(c24).await, wire::query_complete([1, 1]));
    let r2 = record(0xB2, 64);
    c24.send_binary(&wire::submission(&r2)).await;
    let answers = [bin(c24).await, bin(c24).await];
    assert!(answers.contains(&wire::submission_result(wire::CODE_OK, &r2[..32])));
    assert!(answers.contains(&wire::record([1, 1], &r2)));
    assert_eq!(bin(c25).await, w25::record([0, 7], &r2));
    c24.send_binary(&wire::close_query([1, 1])).await;
    assert_eq!(bin(c24).await, wire::query_closed([1, 1], wire::CODE_OK));
}

/// 2025: Unsubscribe, BLOBs, DHT Lookup, Unrecognized; every client type reached the backend.
async fn the_rest_of_2025(c25: &mut RawWs, backend: &MosaicBackend) {
    // 2025 Unsubscribe, BLOBs, DHT Lookup (TBD: answered Unrecognized), Unrecognized.
    c25.send_binary(&w25::unsubscribe([0, 7])).await;
    assert_eq!(bin(c25).await, w25::query_closed([0, 7], w25::SUCCESS));
    let blob = b"a blob of bytes".to_vec();
    let hash = *blake3::hash(&blob).as_bytes();
    c25.send_binary(&w25::blob_submission(&blob)).await;
    assert_eq!(
        bin(c25).await,
        w25::blob_submission_result(w25::ACCEPTED, hash)
    );
    c25.send_binary(&w25::blob_get(hash)).await;
    assert_eq!(bin(c25).await, w25::blob_result(w25::SUCCESS, hash, &blob));
    c25.send_binary(&w25::message(w25::DHT_LOOKUP, [0; 4], b"k"))
        .await;
    assert_eq!(bin(c25).await, w25::unrecognized());
    c25.send_binary(&w25::unrecognized()).await;
    c25.send_binary(&w25::blob_get([9; 32])).await;
    assert_eq!(
        bin(c25).await,
        w25::blob_result(w25::NOT_FOUND, [9; 32], &[])
    );
    for kind in [
        w25::GET,
        w25::QUERY,
        w25::SUBSCRIBE,
        w25::UNSUBSCRIBE,
        w25::SUBMISSION,
        w25::DHT_LOOKUP,
        w25::BLOB_SUBMISSION,
        w25::BLOB_GET,
        w25::UNRECOGNIZED,
    ] {
        assert!(backend.received(kind) >= 1, "type {kind:#x} never relayed");
    }
}

#[tokio::test]
async fn a_client_offering_both_gets_2025_and_every_hello_header_passes_both_ways() {
    let backend = MosaicBackend::spawn(
        any_port(),
        MosaicBackendOptions {
            features: vec!["chat".into(), "sync".into(), "blobs".into()],
            service_url: Some("https://relay.example/".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The gateway lets `chat` and `sync` be accepted, not `blobs`.
    let gw = default_gateway(&backend, "  features: [chat, sync]\n").await;
    let ws = RawWs::connect(
        gw.public_addr,
        &[
            "Sec-WebSocket-Protocol: mosaic2024, mosaic2025",
            "X-Mosaic-Versions: 0, 1",
            "X-Mosaic-Features: sync, blobs,chat",
            "X-Mosaic-Authenticate-As: mopub0example",
            "X-Mosaic-Server-Authenticate-Nonce: n0nce-123",
        ],
    )
    .await
    .unwrap();
    let resp = ws.response.to_ascii_lowercase();
    assert!(
        resp.contains("sec-websocket-protocol: mosaic2025\r\n"),
        "{resp}"
    );
    assert!(resp.contains("x-mosaic-version: 0\r\n"), "{resp}");
    assert!(
        resp.contains("x-mosaic-features-accepted: sync,chat\r\n"),
        "{resp}"
    );
    assert!(
        resp.contains("x-mosaic-client-authenticate-nonce: "),
        "{resp}"
    );
    assert!(
        resp.contains("x-mosaic-service-url: https://relay.example/\r\n"),
        "{resp}"
    );
    // The backend's own signature passes (server_authentication: backend).
    let sig = header(&ws.response, "x-mosaic-server-authentication").expect("signature");
    assert_ne!(
        verify_independently(&backend.public_key(), b"n0nce-123", &sig),
        Some(false),
        "the backend's signature does not verify"
    );
    let h = backend.last_request_headers().unwrap();
    assert_eq!(h["x-mosaic-versions"], "0, 1");
    assert_eq!(h["x-mosaic-features"], "sync, blobs,chat");
    assert_eq!(h["x-mosaic-authenticate-as"], "mopub0example");
    assert_eq!(h["x-mosaic-server-authenticate-nonce"], "n0nce-123");

    // A 2024 client keeps the seed's `;` features answer.
    let ws = RawWs::connect(
        gw.public_addr,
        &[V2024, "X-Mosaic-Features: sync;blobs;chat"],
    )
    .await
    .unwrap();
    let resp = ws.response.to_ascii_lowercase();
    assert!(resp.contains("x-mosaic-features: sync;chat\r\n"), "{resp}");
    assert!(!resp.contains("x-mosaic-version:"), "{resp}");

    // A nonce that is not ASCII text is refused before any backend is asked.
    let status = refused_status(
        gw.public_addr,
        &[
            ("Sec-WebSocket-Protocol", "mosaic2025"),
            ("X-Mosaic-Server-Authenticate-Nonce", &"n".repeat(300)),
        ],
    )
    .await;
    assert_eq!(status, 400);
}

/// The value of header `name` in a raw response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

#[tokio::test]
async fn direction_violations_close_1002_towards_the_client_and_1014_from_the_backend() {
    let backend = mosaic_backend().await;
    let gw = default_gateway(&backend, "").await;
    let mut ws = RawWs::connect(gw.public_addr, &[V2025]).await.unwrap();
    ws.send_binary(&w25::query_closed([0, 1], 1)).await;
    assert_eq!(ws.close_code().await, Some(1002));
    assert_eq!(backend.received(w25::QUERY_CLOSED), 0);

    let rogue = rogue_backend("mosaic2025", Some(w25::submission(&record(1, 60)))).await;
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{rogue}\n  health_check: {{ interval: 60s }}\n"
    ))
    .await;
    let mut ws = RawWs::connect(gw.public_addr, &[V2025]).await.unwrap();
    assert_eq!(ws.close_code().await, Some(1014));
}

/// The framing an implementation in use writes: zeros at [1:4], u32 length at [4:8].
fn other_framing(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    m
}

#[tokio::test]
async fn the_other_framing_passes_by_default_and_the_0_8_profile_refuses_it_and_wrong_lengths() {
    let backend = mosaic_backend().await;
    let gw = default_gateway(&backend, "").await;
    let mut ws = RawWs::connect(gw.public_addr, &[V2025]).await.unwrap();
    // By default (direction) it reaches the backend (which, speaking 0.8.0, refuses it).
    ws.send_binary(&other_framing(w25::SUBSCRIBE, b"f")).await;
    assert_eq!(ws.close_code().await, Some(1002));
    assert_eq!(backend.received(w25::SUBSCRIBE), 1);

    let gw = default_gateway(&backend, "  validate:\n    mosaic2025: \"0.8\"\n").await;
    // Exact layouts pass.
    let mut ws = RawWs::connect(gw.public_addr, &[V2025]).await.unwrap();
    ws.send_binary(&w25::query([0, 1], 0, b"")).await;
    assert_eq!(bin(&mut ws).await, w25::query_closed([0, 1], w25::SUCCESS));
    // A length field that is not the message's length: 1002, never relayed.
    let mut wrong = w25::query([0, 2], 0, b"abc");
    wrong[1] += 1;
    ws.send_binary(&wrong).await;
    assert_eq!(ws.close_code().await, Some(1002));
    // The other framing: 1002, never relayed.
    let mut ws = RawWs::connect(gw.public_addr, &[V2025]).await.unwrap();
    ws.send_binary(&other_framing(w25::SUBSCRIBE, b"f")).await;
    assert_eq!(ws.close_code().await, Some(1002));
    assert_eq!(backend.received(w25::SUBSCRIBE), 1);
    assert_eq!(backend.received(w25::QUERY), 1);
    // The seed keeps its own strict layouts on the same gateway.
    let mut ws = RawWs::connect(gw.public_addr, &[V2024]).await.unwrap();
    ws.send_binary(&[wire::CLOSE_QUERY, 1, 1, 0, 0]).await;
    assert_eq!(ws.close_code().await, Some(1002));
}

#[tokio::test]
async fn rate_limit_answers_come_in_2025_layouts_byte_for_byte() {
    let backend = mosaic_backend().await;
    let gw = default_gateway(
        &backend,
        "rate_limits:\n  mosaic_submissions: { rate: 1, per: 60s, burst: 1, scope: connection }\n  mosaic_open_queries: 1\n",
    )
    .await;
    let mut ws = RawWs::connect(gw.public_addr, &[V2025]).await.unwrap();
    let first = record(0x11, 80);
    ws.send_binary(&w25::submission(&first)).await;
    assert_eq!(
        bin(&mut ws).await,
        w25::submission_result(w25::ACCEPTED, &first)
    );
    // Over the rate: Submission Result 0x83, 40 bytes, TOO_FAST 39 and the id prefix.
    let second = record(0x22, 80);
    ws.send_binary(&w25::submission(&second)).await;
    let mut want = vec![0x83, 40, 0, 0, 39, 0, 0, 0];
    want.extend_from_slice(&second[..32]);
    assert_eq!(bin(&mut ws).await, want);
    assert_eq!(backend.record_count(), 1, "never forwarded");
    // Over mosaic_open_queries: Query Closed 0x82 with 39 at [6].
    ws.send_binary(&w25::subscribe([0, 1], 0, b"nothing")).await;
    assert_eq!(bin(&mut ws).await, w25::locally_complete([0, 1]));
    ws.send_binary(&w25::subscribe([0, 2], 0, b"nothing")).await;
    assert_eq!(bin(&mut ws).await, vec![0x82, 8, 0, 0, 0, 2, 39, 0]);
    assert_eq!(backend.received(w25::SUBSCRIBE), 1);
    // Unsubscribe closes the id: a new query fits again.
    ws.send_binary(&w25::unsubscribe([0, 1])).await;
    assert_eq!(bin(&mut ws).await, w25::query_closed([0, 1], w25::SUCCESS));
    ws.send_binary(&w25::subscribe([0, 3], 0, b"nothing")).await;
    assert_eq!(bin(&mut ws).await, w25::locally_complete([0, 3]));
}

#[tokio::test]
async fn drain_sends_query_closed_shutting_down_per_query_then_closing_then_1001() {
    let backend = mosaic_backend().await;
    let gw = default_gateway(&backend, "shutdown:\n  drain_timeout: 2s\n").await;
    let mut c25 = RawWs::connect(gw.public_addr, &[V2025]).await.unwrap();
    let mut c24 = RawWs::connect(gw.public_addr, &[V2024]).await.unwrap();
    for id in [[0, 1], [0, 2]] {
        c25.send_binary(&w25::subscribe(id, 0, b"")).await;
        assert_eq!(bin(&mut c25).await, w25::locally_complete(id));
    }
    c24.send_binary(&wire::query([0, 3], b"")).await;
    assert_eq!(bin(&mut c24).await, wire::query_complete([0, 3]));
    let stop = tokio::spawn(gw.shutdown());
    let mut closed = vec![bin(&mut c25).await, bin(&mut c25).await];
    closed.sort();
    assert_eq!(
        closed,
        [
            vec![0x82, 8, 0, 0, 0, 1, 64, 0],
            vec![0x82, 8, 0, 0, 0, 2, 64, 0]
        ]
    );
    assert_eq!(bin(&mut c25).await, vec![0xFE, 64, 0, 0, 0, 0, 0, 0]);
    assert_eq!(c25.close_code().await, Some(1001));
    // The seed keeps its own: Query Closed 0x30, no Closing.
    assert_eq!(bin(&mut c24).await, wire::query_closed([0, 3], 0x30));
    assert_eq!(c24.close_code().await, Some(1001));
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap();
}

/// Verifies Mosaic's signature scheme (Ed25519ph, 64-byte BLAKE3 pre-hash, context
/// "Mosaic") with an implementation that shares no code with the gateway: @noble/curves
/// and @noble/hashes under Node.js (installed by `.ci/run`).
/// `None` where the verifier is not installed (outside CI, which installs it).
fn verify_independently(public: &[u8; 32], message: &[u8], sig_b64: &str) -> Option<bool> {
    let Some(dir) = noble_dir() else {
        eprintln!("skipped: @noble/curves not installed (npm install in tests/it/support/noble)");
        return None;
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let out = std::process::Command::new("node")
        .arg(dir.join("verify.mjs"))
        .args([hex(public), hex(message), sig_b64.to_string()])
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verifier failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(text.trim() == "valid")
}

/// Where the independent verifier lives, when its packages are installed.
fn noble_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/noble");
    let installed = dir.join("node_modules/@noble/curves").is_dir()
        && dir.join("node_modules/@noble/hashes").is_dir();
    if !installed && std::env::var_os("CI").is_some() {
        panic!("@noble/curves must be installed by .ci/run on CI");
    }
    installed.then_some(dir)
}

#[tokio::test]
async fn the_gateway_proves_the_server_identity_verified_by_an_independent_implementation() {
    let backend = mosaic_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.pem");
    let public = mosaic_gateway::keys::keygen(&key_file).unwrap();
    let key = mosaic_gateway::keys::parse_server_key(&public).unwrap();
    let gw = default_gateway(
        &backend,
        &format!(
            "  server_authentication: gateway\n  server_key_file: {}\n",
            key_file.display()
        ),
    )
    .await;
    let ws = RawWs::connect(
        gw.public_addr,
        &[
            V2025,
            "X-Mosaic-Server-Authenticate-Nonce: a-client-nonce-42",
        ],
    )
    .await
    .unwrap();
    let sigs: Vec<&str> = ws
        .response
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-mosaic-server-authentication:")
        })
        .collect();
    assert_eq!(
        sigs.len(),
        1,
        "only the gateway's signature: {}",
        ws.response
    );
    let sig = header(&ws.response, "x-mosaic-server-authentication").unwrap();
    assert_ne!(
        verify_independently(&key, b"a-client-nonce-42", &sig),
        Some(false)
    );
    assert_ne!(
        verify_independently(&key, b"another-nonce", &sig),
        Some(true)
    );
    assert_ne!(
        verify_independently(&backend.public_key(), b"a-client-nonce-42", &sig),
        Some(true),
        "signed with the backend's key"
    );
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Issue 22, item 8: with no `mosaic_open_queries` configured, 32 connections each opening
/// all 65,536 query ids keep the gateway's memory bounded: past 1,024 ids per connection
/// every Subscribe is answered with Query Closed 39 and never forwarded.
///
/// Measured (debug build, RSS growth of the gateway process over the run, 32 connections
/// included): every id tracked, no cap: +14,400 KiB (about 450 KiB a connection); with the
/// built-in cap: +1,388 KiB.
#[tokio::test]
async fn open_query_tracking_stays_bounded_under_65536_queries_per_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CONNECTIONS: usize = 32;
    let backend = rogue_backend("mosaic2025", None).await;
    let mut gw = spawn_child_gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{backend}\n  health_check: {{ interval: 60s }}\n"
    ));
    readyz_becomes(gw.admin, 200).await;
    // Every Subscribe of every id, as masked frames (zero mask: the payload as is).
    let mut flood = Vec::with_capacity(65_536 * 14);
    for id in 0..=u16::MAX {
        let m = w25::subscribe(id.to_le_bytes(), 0, b"");
        flood.extend_from_slice(&[0x82, 0x80 | m.len() as u8, 0, 0, 0, 0]);
        flood.extend_from_slice(&m);
    }
    let mut held = Vec::new();
    let before = rss_kib(gw.child.id());
    for _ in 0..CONNECTIONS {
        let ws = RawWs::connect(gw.public, &[V2025]).await.unwrap();
        let (mut rd, mut wr) = ws.stream.into_split();
        let writer = {
            let flood = flood.clone();
            tokio::spawn(async move {
                wr.write_all(&flood).await.unwrap();
                wr
            })
        };
        // The gateway's answers: Query Closed (8 bytes, 2-byte frame header) for every id
        // past the cap, in order.
        let refused = 65_536 - 1024;
        let mut answers = vec![0u8; refused * 10];
        tokio::time::timeout(Duration::from_secs(120), rd.read_exact(&mut answers))
            .await
            .expect("every refusal arrives")
            .unwrap();
        assert_eq!(&answers[..10], &[0x82, 8, 0x82, 8, 0, 0, 0, 4, 39, 0]);
        let last = &answers[answers.len() - 10..];
        assert_eq!(last, &[0x82, 8, 0x82, 8, 0, 0, 0xFF, 0xFF, 39, 0]);
        held.push((rd, writer.await.unwrap()));
    }
    let after = rss_kib(gw.child.id());
    let grown = after.saturating_sub(before);
    eprintln!(
        "gateway RSS {before} KiB -> {after} KiB (+{grown} KiB) for {CONNECTIONS} x 65,536 queries"
    );
    assert!(
        grown < 6 * 1024,
        "open-query tracking grew the gateway by {grown} KiB"
    );
    let _ = gw.child.kill();
    let _ = gw.child.wait();
}

/// A backend that speaks only the seed stays usable with the default token list: a client
/// offering both versions is relayed in the one the backend picked, judged by its rules.
#[tokio::test]
async fn a_backend_speaking_only_2024_serves_clients_that_offer_both() {
    let backend = MosaicBackend::spawn(
        any_port(),
        MosaicBackendOptions {
            subprotocols: vec!["mosaic2024".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let gw = default_gateway(&backend, "").await;
    let mut ws = RawWs::connect(
        gw.public_addr,
        &["Sec-WebSocket-Protocol: mosaic2025, mosaic2024"],
    )
    .await
    .unwrap();
    assert!(
        ws.response
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: mosaic2024\r\n"),
        "{}",
        ws.response
    );
    let offered = backend.last_request_headers().unwrap();
    assert_eq!(offered["sec-websocket-protocol"], "mosaic2025, mosaic2024");
    ws.send_binary(&wire::query([0, 5], b"")).await;
    assert_eq!(bin(&mut ws).await, wire::query_complete([0, 5]));
    // The seed's strict rules apply: a 2025 Subscribe is malformed there.
    ws.send_binary(&w25::subscribe([0, 6], 0, b"")).await;
    assert_eq!(ws.close_code().await, Some(1002));
    // A client offering only 2025 is refused by such a backend (502 here; a 4xx passed on
    // once upstream answers are classified, issue 22).
    let status = refused_status(gw.public_addr, &[("Sec-WebSocket-Protocol", "mosaic2025")]).await;
    assert!(status == 502 || status == 400, "{status}");
}
