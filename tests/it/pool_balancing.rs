//! How the pool spreads real client connections: round-robin (even and weighted),
//! least-connections (by open connections, weighted) and client-key-hash (sticky per TLS
//! client key, over a real TLS connection).

use std::collections::HashMap;
use std::sync::Arc;

use crate::common::*;
use mosaic_gateway::dev::mosaic_backend::MosaicBackend;
use mosaic_gateway::runtime::Running;

/// Active checks run once at start and then not again during a test.
const QUIET_CHECKS: &str = "  health_check: { interval: 10m, timeout: 1s }\n";

async fn setup(weights: &[u32], balance: &str, extra: &str) -> (Vec<MosaicBackend>, Running) {
    let mut backends = Vec::new();
    for _ in weights {
        backends.push(mosaic_backend().await);
    }
    let mut y = format!(
        "shutdown:\n  drain_timeout: 1s\n{extra}mosaic:\n  balance: {balance}\n{QUIET_CHECKS}  backends:\n"
    );
    for (b, w) in backends.iter().zip(weights) {
        y.push_str(&format!(
            "    - url: ws://{}\n      weight: {w}\n",
            b.local_addr()
        ));
    }
    let gw = gateway(&y).await;
    // Let the check at start come and go so it does not count as a client.
    for b in &backends {
        let what = format!("the first health check of {}", b.local_addr());
        eventually(&what, || {
            !b.request_headers().is_empty() && b.connections() == 0
        })
        .await;
    }
    (backends, gw)
}

fn counts(backends: &[MosaicBackend]) -> Vec<usize> {
    backends.iter().map(|b| b.connections()).collect()
}

async fn wait_counts(backends: &[MosaicBackend], want: &[usize]) {
    let what = format!("open connections per backend to be {want:?}");
    eventually(&what, || counts(backends) == want).await;
}

/// Opens a Mosaic client and tells which backend took it.
async fn open(gw: &Running, backends: &[MosaicBackend]) -> (Ws, usize) {
    let before = counts(backends);
    let ws = mosaic_client(gw.public_addr).await;
    let mut which = None;
    eventually("the new connection to show up on a backend", || {
        let now = counts(backends);
        which = now.iter().zip(&before).position(|(n, b)| n > b);
        which.is_some()
    })
    .await;
    (ws, which.unwrap_or(usize::MAX))
}

#[tokio::test]
async fn round_robin_splits_evenly() {
    let (backends, gw) = setup(&[1, 1, 1], "round-robin", "").await;
    let mut clients = Vec::new();
    for _ in 0..30 {
        clients.push(mosaic_client(gw.public_addr).await);
    }
    wait_counts(&backends, &[10, 10, 10]).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn round_robin_respects_weights() {
    let (backends, gw) = setup(&[3, 1], "round-robin", "").await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(mosaic_client(gw.public_addr).await);
    }
    wait_counts(&backends, &[30, 10]).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn least_connections_fills_the_emptiest_backend() {
    let (backends, gw) = setup(&[1, 1], "least-connections", "").await;
    let mut clients: Vec<(Ws, usize)> = Vec::new();
    for _ in 0..6 {
        clients.push(open(&gw, &backends).await);
    }
    wait_counts(&backends, &[3, 3]).await;
    // Everyone on backend 0 leaves; the next three clients must all go there.
    clients.retain(|(_, b)| *b != 0);
    wait_counts(&backends, &[0, 3]).await;
    for _ in 0..3 {
        let (ws, b) = open(&gw, &backends).await;
        assert_eq!(b, 0, "least-connections picks the emptier backend");
        clients.push((ws, b));
    }
    wait_counts(&backends, &[3, 3]).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn least_connections_respects_weights() {
    let (backends, gw) = setup(&[3, 1], "least-connections", "").await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(open(&gw, &backends).await);
    }
    wait_counts(&backends, &[6, 2]).await;
    gw.shutdown().await;
}

/// A WebSocket client over TLS that presents `key` as its client key.
async fn tls_client(
    gw: &Running,
    key: &ed25519_dalek::SigningKey,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use mosaic_gateway::tls::{client_config, ClientIdentity};
    let cfg = client_config(None, false, ClientIdentity::SelfSigned(key)).unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.public_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("gateway.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = "wss://gateway.test/".into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mosaic2024".parse().unwrap());
    let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::client_async(req, tls))
        .await
        .unwrap()
        .unwrap();
    ws
}

#[tokio::test]
async fn client_key_hash_keeps_each_key_on_one_backend() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.pem");
    mosaic_gateway::keys::keygen(&key_file).unwrap();
    let tls = format!(
        "tls:\n  key_file: {}\n  client_auth: optional\n",
        key_file.display()
    );
    let (backends, gw) = setup(&[1, 1, 1], "client-key-hash", &tls).await;
    let mut home: HashMap<usize, usize> = HashMap::new();
    for round in 0..3 {
        for k in 0..12u8 {
            let key = ed25519_dalek::SigningKey::from_bytes(&[k + 1; 32]);
            let before = counts(&backends);
            let mut ws = tls_client(&gw, &key).await;
            let mut which = None;
            eventually("the TLS client to show up on a backend", || {
                which = counts(&backends)
                    .iter()
                    .zip(&before)
                    .position(|(n, b)| n > b);
                which.is_some()
            })
            .await;
            let b = which.unwrap_or(usize::MAX);
            // The backend saw the client's key.
            let headers = backends[b].last_request_headers().unwrap();
            let seen = headers
                .get("x-mosaic-client-key")
                .unwrap()
                .to_str()
                .unwrap();
            assert!(seen.starts_with("mopub0"), "{seen}");
            match home.get(&(k as usize)) {
                Some(h) => assert_eq!(*h, b, "key {k} moved in round {round}"),
                None => {
                    home.insert(k as usize, b);
                }
            }
            let _ = ws.close(None).await;
            let what = "the client to leave";
            eventually(what, || counts(&backends) == before).await;
        }
    }
    let mut used: Vec<usize> = home.values().copied().collect();
    used.sort();
    used.dedup();
    eprintln!("12 keys over 3 backends: homes {home:?}");
    assert!(
        used.len() >= 2,
        "12 keys all hashed to one backend: {home:?}"
    );
    gw.shutdown().await;
}
