//! Active health checks of every pool of every route, each on its own interval: a real
//! Mosaic WebSocket upgrade to Mosaic backends; a NIP-11 request (or a WebSocket upgrade)
//! to nostr relays.
//!
//! A Mosaic check passes when the backend answers 101 with the Mosaic subprotocol; the
//! gateway then closes the WebSocket politely (close 1000) so the backend logs nothing
//! alarming. A NIP-11 check passes on a 2xx answer to `GET` with
//! `Accept: application/nostr+json`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::HealthCheckConfig;
use crate::error::Chain;
use crate::protocol::handshake::{upstream_request_head, Destination, ForwardedClient, HostLine};
use crate::relay::frame::encode_close;
use crate::upstreams::connect::{connect_and_upgrade, UpstreamError, UpstreamStream};
use crate::upstreams::pool::{Backend, Pool};

fn random_key() -> String {
    let mut raw = [0u8; 16];
    // A weak key only matters to caches between us and the backend; there are none.
    let _ = getrandom::fill(&mut raw);
    base64_16(&raw)
}

/// How a pool's members are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A Mosaic upgrade offering these tokens; the 101 must select one of them.
    Mosaic(Vec<String>),
    /// A NIP-11 `GET`.
    Nip11,
    /// A WebSocket upgrade with no subprotocol; any 101 passes.
    WebSocket,
}

/// A pool, how its members are probed, and the interval and thresholds that apply.
pub(crate) struct HealthTarget {
    pub(crate) pool: Arc<Pool>,
    pub(crate) probe: Probe,
    pub(crate) hc: HealthCheckConfig,
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

/// Why a check failed, as the log and the status page say it.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    /// The connect or the upgrade failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The backend answered 101 without the Mosaic subprotocol.
    #[error("101 without the Mosaic subprotocol")]
    WrongSubprotocol,
    /// The NIP-11 request got no answer in time.
    #[error("NIP-11 request failed or timed out")]
    Nip11Unanswered,
    /// The NIP-11 request got an answer other than 2xx.
    #[error("NIP-11 answered HTTP {0}")]
    Nip11Status(u16),
}

/// Probes one member once.
async fn probe(b: &Backend, probe: &Probe, timeout: Duration) -> Result<(), CheckFailure> {
    match probe {
        Probe::Mosaic(tokens) => check(b, tokens, timeout).await,
        Probe::WebSocket => check(b, &[], timeout).await,
        Probe::Nip11 => nip11(b, timeout).await,
    }
}

/// A NIP-11 request to a relay: passes on 2xx.
async fn nip11(b: &Backend, timeout: Duration) -> Result<(), CheckFailure> {
    let request = hyper::Request::get(b.url.path.as_str())
        .header(hyper::header::HOST, b.url.authority())
        .header(hyper::header::ACCEPT, "application/nostr+json")
        .header(hyper::header::USER_AGENT, "mosaic-gateway-health-check")
        .body(Empty::<bytes::Bytes>::new());
    let Ok(request) = request else {
        return Err(CheckFailure::Nip11Unanswered);
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((b.url.host.as_str(), b.url.port))
            .await
            .ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(request).await.ok()?;
        Some(resp.status())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Some(s)) if s.is_success() => Ok(()),
        Ok(Some(s)) => Err(CheckFailure::Nip11Status(s.as_u16())),
        _ => Err(CheckFailure::Nip11Unanswered),
    }
}

/// Checks one backend once with a WebSocket upgrade; with `token`, the 101 must select it.
pub async fn check(b: &Backend, tokens: &[String], timeout: Duration) -> Result<(), CheckFailure> {
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
    let authority = b.url.authority();
    let to = Destination {
        target: &b.url.path,
        host: HostLine::Upstream(&authority),
        prefix: None,
    };
    let head = upstream_request_head(&to, &headers, &key, tokens, false, &who);
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let up = connect_and_upgrade(&b.url, b.tls.as_ref(), &head, &accept, timeout).await?;
    // A backend is healthy speaking any of the route's Mosaic versions.
    let ok = if tokens.is_empty() || tokens.iter().any(|t| up.selected(t)) {
        Ok(())
    } else {
        Err(CheckFailure::WrongSubprotocol)
    };
    let mut close = Vec::new();
    encode_close(
        &mut close,
        1000,
        "health check",
        Some([0x5a, 0x17, 0x33, 0xc1]),
    );
    let _ = tokio::time::timeout(crate::upstreams::pool::CHECK_CLOSE_WAIT, async {
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

/// How often the scheduler looks for a reload (which may add pools or shorten intervals).
const GENERATION_POLL: Duration = Duration::from_millis(100);

/// Checks every member of `target`'s pool once, concurrently, and records the results
/// against its thresholds.
async fn check_pool(target: HealthTarget) {
    let HealthTarget { pool, probe: p, hc } = target;
    let mut checks = Vec::new();
    for b in pool.backends().iter().filter(|b| !b.is_draining()) {
        let (pool, b, p, hc) = (pool.clone(), b.clone(), p.clone(), hc.clone());
        checks.push(tokio::spawn(async move {
            let outcome = probe(&b, &p, hc.timeout.0).await;
            match &outcome {
                Ok(()) => b.note_check(true, "ok"),
                Err(e) => {
                    tracing::debug!(route = %pool.route, pool = pool.name, backend = %b.label, error = %Chain(e), "health check failed");
                    b.note_check(false, Chain(e).to_string());
                }
            }
            pool.record_check(&b, outcome.is_ok(), &hc);
        }));
    }
    for c in checks {
        let _ = c.await;
    }
}

/// One pool's schedule: when its last round started, and that round while it runs. It
/// holds the pool, so no other pool can take its address (the key) meanwhile.
struct Schedule {
    _pool: Arc<Pool>,
    started: Instant,
    round: JoinHandle<()>,
}

/// Checks each pool at start and then every `health_check.interval` of its own section
/// (counted from the start of its previous round, and never two rounds of one pool at
/// once), always with the current generation's pools and settings (`targets` reads them),
/// until the process ends.
pub async fn run(targets: impl Fn() -> Vec<HealthTarget>) {
    // Keyed by the pool's address: a pool kept across reloads keeps its schedule.
    let mut schedules: HashMap<usize, Schedule> = HashMap::new();
    loop {
        let targets = targets();
        let now = Instant::now();
        let mut next = now + GENERATION_POLL;
        let mut live = Vec::with_capacity(targets.len());
        for t in targets {
            let id = Arc::as_ptr(&t.pool) as usize;
            live.push(id);
            let interval = t.hc.interval.0;
            let s = schedules.get_mut(&id);
            let due = match &s {
                None => true,
                Some(s) => s.round.is_finished() && now >= s.started + interval,
            };
            if due {
                let pool = t.pool.clone();
                let round = tokio::spawn(check_pool(t));
                schedules.insert(
                    id,
                    Schedule {
                        _pool: pool,
                        started: now,
                        round,
                    },
                );
                next = next.min(now + interval);
            } else if let Some(s) = s {
                // A round still running past its interval: look again shortly.
                let at = if s.round.is_finished() {
                    s.started + interval
                } else {
                    now + Duration::from_millis(20)
                };
                next = next.min(at.max(now + Duration::from_millis(1)));
            }
        }
        schedules.retain(|id, _| live.contains(id));
        tokio::time::sleep_until(next).await;
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
