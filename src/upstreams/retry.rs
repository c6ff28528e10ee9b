//! The one retry loop across a pool's members, shared by WebSocket upgrades and plain
//! requests, and the rule of who failed: an attempt's error says whether the upstream is at
//! fault (it is marked down and the next member is tried) or whether the upstream answered
//! the client (a 4xx: passed on, the upstream stays healthy).
//!
//! One place decides this because a wrong answer is an outage: when any non-101 marked an
//! upstream down, three upgrades with an 8 KB header (nginx answers 400) took a relay out for
//! every client until the health checks brought it back.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use crate::upstreams::connect::UpstreamError;
use crate::upstreams::pool::{affinity, Backend, Pool};

/// Who an attempt's failure is blamed on.
pub(crate) enum Blame<E> {
    /// The upstream failed (connect error, timeout, 5xx, a broken 101): it is marked down
    /// and the next member is tried.
    Upstream(E),
    /// The upstream answered, and the answer is the client's (a 4xx): no other member is
    /// tried and none is marked.
    Client(E),
}

/// How a pool's members were tried without success.
pub(crate) enum Exhausted<E> {
    /// No healthy member to try: 503.
    NoneHealthy,
    /// Every member tried failed; the last one's error: 502.
    Failed(E),
    /// An upstream answered the client with a refusal that is passed on.
    Answered(E),
}

/// Whom a pool's balancer keeps on one member, and how often to try.
pub(crate) struct Tries<'a> {
    pub(crate) pool: &'a Pool,
    pub(crate) max_tries: u32,
    /// The TLS client's key, for `client-key-hash`.
    pub(crate) client_key: Option<&'a [u8; 32]>,
    /// The real client's address, for `client-ip-hash`.
    pub(crate) client_ip: IpAddr,
}

/// Calls `attempt` on up to `max_tries` healthy members of the pool, each at most once,
/// until one succeeds. A member blamed for its failure is marked down (`on_fault` sees the
/// error first, for logs and metrics); a failure blamed on the client ends the loop.
pub(crate) async fn across_pool<T, E, F, Fut>(
    t: Tries<'_>,
    mut attempt: F,
    on_fault: impl Fn(&Backend, &E),
) -> Result<(Arc<Backend>, T), Exhausted<E>>
where
    F: FnMut(Arc<Backend>) -> Fut,
    Fut: Future<Output = Result<T, Blame<E>>>,
{
    let pool = t.pool;
    let hash_key = affinity(pool.balance(), t.client_key, t.client_ip);
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut last = None;
    for _ in 0..t.max_tries {
        let Some(b) = pool.pick(&tried, hash_key.as_ref()) else {
            break;
        };
        match attempt(b.clone()).await {
            Ok(v) => return Ok((b, v)),
            Err(Blame::Client(e)) => return Err(Exhausted::Answered(e)),
            Err(Blame::Upstream(e)) => {
                on_fault(&b, &e);
                pool.mark_failed(&b);
                last = Some(e);
                tried.push(b);
            }
        }
    }
    Err(last.map_or(Exhausted::NoneHealthy, Exhausted::Failed))
}

/// The rule for an upstream's side of an upgrade: a 4xx is the upstream's answer to this
/// client (a header too large for it, a banned address, an unknown path, its own per-IP
/// limit), everything else (connect errors, timeouts, 5xx, a broken or missing 101) is the
/// upstream's failure.
pub(crate) fn blame(e: UpstreamError) -> Blame<UpstreamError> {
    match e {
        UpstreamError::Refused(code) if (400..500).contains(&code) => Blame::Client(e),
        _ => Blame::Upstream(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_4xx_is_the_clients_answer_and_the_rest_the_upstreams_fault() {
        for code in [400, 403, 404, 429, 431, 499] {
            assert!(matches!(
                blame(UpstreamError::Refused(code)),
                Blame::Client(_)
            ));
        }
        for e in [
            UpstreamError::Refused(500),
            UpstreamError::Refused(503),
            UpstreamError::Refused(200),
            UpstreamError::Refused(302),
            UpstreamError::Timeout,
            UpstreamError::BadResponse("unparseable response"),
            UpstreamError::Connect(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            assert!(matches!(blame(e), Blame::Upstream(_)));
        }
    }
}
