//! Active health checks: a real Mosaic WebSocket upgrade to every backend on an interval.
//!
//! A check passes when the backend answers 101 with the Mosaic subprotocol; the gateway
//! then closes the WebSocket politely (close 1000) so the backend logs nothing alarming.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::gateway::{App, Gateway};
use crate::handshake::{upstream_request_head, ForwardedClient};
use crate::pool::Backend;
use crate::relay::frame::encode_close;
use crate::upstream::{connect_and_upgrade, UpstreamStream};

fn random_key() -> String {
    let mut raw = [0u8; 16];
    // A weak key only matters to caches between us and the backend; there are none.
    let _ = getrandom::fill(&mut raw);
    base64_16(&raw)
}

/// Base64 of exactly 16 bytes (a Sec-WebSocket-Key).
fn base64_16(raw: &[u8; 16]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(24);
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out.push_str("==");
    out
}

/// Checks one backend once; `Err` says why it failed.
pub async fn check(b: &Backend, token: &str, timeout: std::time::Duration) -> Result<(), String> {
    let key = random_key();
    let who = ForwardedClient {
        addr: std::net::IpAddr::from([127, 0, 0, 1]),
        forwarded_chain: Vec::new(),
        tls: false,
        client_key: None,
    };
    let mut headers = hyper::HeaderMap::new();
    headers.insert(
        "user-agent",
        hyper::header::HeaderValue::from_static("mosaic-gateway-health-check"),
    );
    let head = upstream_request_head(
        &b.url.path,
        &headers,
        &key,
        &[token.to_string()],
        false,
        &who,
        &b.url.authority(),
    );
    let up = connect_and_upgrade(&b.url, b.tls.as_ref(), &head, &key, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let chosen = up
        .headers
        .get(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let ok = if chosen == Some(token) {
        Ok(())
    } else {
        Err("101 without the Mosaic subprotocol".to_string())
    };
    let mut close = Vec::new();
    encode_close(
        &mut close,
        1000,
        "health check",
        Some([0x5a, 0x17, 0x33, 0xc1]),
    );
    let _ = tokio::time::timeout(crate::pool::CHECK_CLOSE_WAIT, async {
        match up.stream {
            UpstreamStream::Tcp(mut s) => {
                let _ = s.write_all(&close).await;
                let _ = s.shutdown().await;
            }
            UpstreamStream::Tls(mut s) => {
                let _ = s.write_all(&close).await;
                let _ = s.shutdown().await;
            }
        }
    })
    .await;
    ok
}

/// How often a wait between rounds looks for a reload (which may shorten the interval).
const GENERATION_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Checks every backend of every pool of `gw` once, concurrently, and records the results
/// against that generation's thresholds.
pub async fn check_all(gw: &Gateway) {
    let hc = gw.config.mosaic.health_check.clone();
    let token = gw
        .config
        .mosaic
        .subprotocols
        .first()
        .cloned()
        .unwrap_or_else(|| "mosaic2024".into());
    let mut checks = Vec::new();
    for pool in gw.pools() {
        for b in pool.backends().iter().filter(|b| !b.is_draining()) {
            let (pool, b, token, hc) = (pool.clone(), b.clone(), token.clone(), hc.clone());
            checks.push(tokio::spawn(async move {
                let outcome = check(&b, &token, hc.timeout.0).await;
                match &outcome {
                    Ok(()) => b.note_check(true, "upgrade ok"),
                    Err(e) => {
                        tracing::debug!(pool = pool.name, backend = %b.label, error = %e, "health check failed");
                        b.note_check(false, e.as_str());
                    }
                }
                pool.record_check(&b, outcome.is_ok(), &hc);
            }));
        }
    }
    for c in checks {
        let _ = c.await;
    }
}

/// Runs a round of checks at start and then every `health_check.interval` (counted from
/// the start of the previous round), always with the current generation's pools and
/// settings, until the process ends.
pub async fn run(app: Arc<App>) {
    loop {
        let gw = app.gateway();
        let started = tokio::time::Instant::now();
        check_all(&gw).await;
        drop(gw);
        // Wait out the interval of whatever generation is current, so a reload that
        // shortens it takes effect at once.
        loop {
            let interval = app.gateway().config.mosaic.health_check.interval.0;
            let now = tokio::time::Instant::now();
            if now >= started + interval {
                break;
            }
            tokio::time::sleep((started + interval - now).min(GENERATION_POLL)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_shape() {
        assert_eq!(super::base64_16(&[0u8; 16]), "AAAAAAAAAAAAAAAAAAAAAA==");
        let k = super::random_key();
        assert_eq!(k.len(), 24);
        assert!(k.ends_with("=="));
    }
}
