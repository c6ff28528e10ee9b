//! DNS discovery: `dns: name:port` backend entries, each resolved address being a backend.
//!
//! Names are resolved once before the gateway serves, then every `mosaic.dns_refresh`
//! and right after a reload. A new address joins the pool (healthy until a check says
//! otherwise); a vanished one drains: no new connections, open ones keep running. A failed
//! lookup keeps the last answer (and logs a warning), so a DNS hiccup never empties a pool.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::upstreams::pool::Pool;

/// What discovery reads of one configuration generation. The gateway's generation
/// implements it: the hub owns the pools, so discovery takes it as a trait instead of
/// importing the hub.
pub(crate) trait DnsTargets: Send + Sync {
    /// Every pool of the generation.
    fn pools(&self) -> Vec<Arc<Pool>>;
    /// How often to resolve again: the shortest `mosaic.dns_refresh` of any route.
    fn dns_refresh(&self) -> Duration;
}

/// The future a [`Resolve`] returns.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a `name:port` entry into addresses; injectable so tests can serve changing answers.
pub trait Resolve: Send + Sync {
    /// Resolves `entry` (`name:port`, as written in the config).
    fn resolve<'a>(&'a self, entry: &'a str) -> Lookup<'a>;
}

/// The system resolver (`getaddrinfo` through `tokio::net::lookup_host`).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, entry: &'a str) -> Lookup<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host(entry).await?.collect()) })
    }
}

/// Longest wait for one lookup before the last answer is kept.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the task notices a reload while it waits for the next refresh.
const GENERATION_POLL: Duration = Duration::from_millis(100);

/// Resolves every `dns:` entry of every pool of `gw` once (each name once) and applies
/// the answers. Returns how many pools changed.
pub(crate) async fn refresh(gw: &dyn DnsTargets, resolver: &dyn Resolve) -> usize {
    let pools = gw.pools();
    let mut names: Vec<String> = Vec::new();
    for p in &pools {
        for n in p.dns_entries() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    let timeout = LOOKUP_TIMEOUT.min(gw.dns_refresh().max(Duration::from_millis(500)));
    let mut changed = 0;
    for name in names {
        let answer = match tokio::time::timeout(timeout, resolver.resolve(&name)).await {
            Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
            Ok(Ok(_)) => {
                tracing::warn!(dns = %name, "DNS lookup returned no address; keeping the last answer");
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(dns = %name, error = %e, "DNS lookup failed; keeping the last answer");
                continue;
            }
            Err(_) => {
                tracing::warn!(dns = %name, "DNS lookup timed out; keeping the last answer");
                continue;
            }
        };
        for p in &pools {
            if p.update_dns(&name, &answer) {
                changed += 1;
                tracing::info!(route = %p.route, pool = p.name, dns = %name, addresses = ?answer, "DNS answer changed");
            }
        }
    }
    changed
}

/// Re-resolves every `mosaic.dns_refresh` (of the current generation) and right after
/// each reload (`current` returns the generation new connections use), until the process
/// ends.
pub(crate) async fn run<G: DnsTargets>(current: impl Fn() -> Arc<G>, resolver: Arc<dyn Resolve>) {
    loop {
        let gw = current();
        refresh(gw.as_ref(), resolver.as_ref()).await;
        let next = tokio::time::Instant::now() + gw.dns_refresh();
        loop {
            let now = tokio::time::Instant::now();
            if now >= next {
                break;
            }
            tokio::time::sleep((next - now).min(GENERATION_POLL)).await;
            if !Arc::ptr_eq(&current(), &gw) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn system_resolver_finds_localhost() {
        let addrs = SystemResolver.resolve("localhost:8081").await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8081));
    }
}
