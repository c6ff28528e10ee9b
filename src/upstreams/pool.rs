//! A pool of upstreams, Mosaic backends or nostr relays alike: balancing, passive and active
//! health, reconfiguration.
//!
//! A pool holds its config entries (`url:` and `dns:`), the addresses last resolved for
//! each `dns:` name, and the current backend list built from both. Picking a backend takes
//! no lock but a read of the list; what changes at run time (open connections, health)
//! lives in atomics on each backend. A reload or a DNS change builds a new list in which
//! backends that stay keep their state and removed ones drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::{BackendConfig, Balance, HealthCheckConfig, Scheme, UpstreamUrl};
use crate::metrics::Metrics;
use crate::tls::BackendConnector;

/// The last health check of a backend (active, or a client's upgrade that failed).
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    /// When it finished.
    pub at: SystemTime,
    /// Whether it passed.
    pub ok: bool,
    /// What happened, in a few words (`upgrade ok`, the error).
    pub detail: String,
}

/// One backend and its run-time state.
pub struct Backend {
    /// Where it is.
    pub url: UpstreamUrl,
    /// Its metric label and log name: the URL, plus ` (dns NAME:PORT)` for discovered ones.
    pub label: String,
    /// The `dns:` entry it was discovered from, if any.
    pub dns: Option<String>,
    /// Relative share of new connections.
    pub weight: u32,
    /// Pinned server key for wss://.
    pub pin: Option<[u8; 32]>,
    /// TLS client for wss:// backends.
    pub tls: Option<BackendConnector>,
    active: AtomicUsize,
    healthy: AtomicBool,
    draining: AtomicBool,
    fails: AtomicU32,
    oks: AtomicU32,
    last_check: Mutex<Option<CheckOutcome>>,
}

impl Backend {
    /// A backend, healthy until proven otherwise.
    pub fn new(url: UpstreamUrl, weight: u32, pin: Option<[u8; 32]>) -> Self {
        // Building a connector cannot fail for our fixed ring provider and Ed25519 schemes;
        // if it ever did, connects to this wss:// backend fail and it is marked down.
        let tls = (url.scheme == Scheme::Wss)
            .then(|| BackendConnector::new(pin).ok())
            .flatten();
        Backend {
            label: url.to_string(),
            dns: None,
            url,
            weight: weight.max(1),
            pin,
            tls,
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            last_check: Mutex::new(None),
        }
    }

    /// A backend at a resolved address of the `dns:` entry `entry` (`name:port`).
    pub fn discovered(addr: SocketAddr, entry: &str, weight: u32) -> Self {
        let url = UpstreamUrl {
            scheme: Scheme::Ws,
            host: addr.ip().to_string(),
            port: addr.port(),
            path: "/".into(),
        };
        let mut b = Backend::new(url, weight, None);
        b.label = format!("{} (dns {entry})", b.url);
        b.dns = Some(entry.to_string());
        b
    }

    /// Open proxied connections.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether it takes new connections.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether it was removed from the config or DNS and only finishes open connections.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Stops sending it new connections (open ones keep running).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Records the outcome of a check (for the status page).
    pub fn note_check(&self, ok: bool, detail: impl Into<String>) {
        *self.last_check.lock() = Some(CheckOutcome {
            at: SystemTime::now(),
            ok,
            detail: detail.into(),
        });
    }

    /// The last check's outcome, if one finished yet.
    pub fn last_check(&self) -> Option<CheckOutcome> {
        self.last_check.lock().clone()
    }

    /// Whether `other` describes the same backend (so a rebuilt list may keep this one).
    fn same_as(&self, other: &Backend) -> bool {
        self.label == other.label && self.pin == other.pin && self.weight == other.weight
    }
}

/// Counts a proxied connection on a backend for as long as it lives.
pub struct BackendGuard(Arc<Backend>);

impl BackendGuard {
    /// The backend's label (metrics, logs).
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// Counts one more connection on `b`.
    pub fn new(b: Arc<Backend>) -> Self {
        b.active.fetch_add(1, Ordering::Relaxed);
        BackendGuard(b)
    }
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a pool was configured with: its entries and the last good DNS answers.
#[derive(Default)]
struct Spec {
    entries: Vec<BackendConfig>,
    resolved: HashMap<String, Vec<SocketAddr>>,
}

/// A named set of backends and how to choose among them.
pub struct Pool {
    /// The route it serves: the `route` metric label.
    pub route: Arc<str>,
    /// `default`, `authenticated` or `nostr`: the `pool` metric label.
    pub name: &'static str,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    balance: RwLock<Balance>,
    spec: Mutex<Spec>,
    rr: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Removed backends whose open connections still run (for the status page).
    removed: Mutex<Vec<Weak<Backend>>>,
}

/// The backends `spec` describes right now: every `url:` entry, and every last resolved
/// address of every `dns:` entry, in config order.
fn desired(spec: &Spec) -> Vec<Arc<Backend>> {
    let mut out = Vec::new();
    for e in &spec.entries {
        if let Some(u) = e.url.as_deref() {
            let Ok(url) = UpstreamUrl::parse(u) else {
                continue;
            };
            let pin = e
                .pin
                .as_deref()
                .and_then(|p| crate::keys::parse_server_key(p).ok());
            out.push(Arc::new(Backend::new(url, e.weight, pin)));
        } else if let Some(d) = e.dns.as_deref() {
            for a in spec.resolved.get(d).into_iter().flatten() {
                out.push(Arc::new(Backend::discovered(*a, d, e.weight)));
            }
        }
    }
    out
}

impl Pool {
    /// A pool over a fixed list of `backends` (no config entries behind it).
    pub fn new(
        route: Arc<str>,
        name: &'static str,
        backends: Vec<Arc<Backend>>,
        balance: Balance,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.preset_pool(name);
        for b in &backends {
            metrics
                .backend_up
                .with_label_values(&[&route, name, &b.label])
                .set(1);
        }
        Pool {
            route,
            name,
            backends: RwLock::new(Arc::new(backends)),
            balance: RwLock::new(balance),
            spec: Mutex::new(Spec::default()),
            rr: AtomicUsize::new(0),
            metrics,
            removed: Mutex::new(Vec::new()),
        }
    }

    /// A pool for config `entries`; `dns:` entries contribute backends once
    /// [`Pool::update_dns`] has an answer for them.
    pub fn from_config(
        route: Arc<str>,
        name: &'static str,
        entries: &[BackendConfig],
        balance: Balance,
        metrics: Arc<Metrics>,
    ) -> Self {
        let spec = Spec {
            entries: entries.to_vec(),
            resolved: HashMap::new(),
        };
        let pool = Pool::new(route, name, desired(&spec), balance, metrics);
        *pool.spec.lock() = spec;
        pool
    }

    /// The current backends (draining ones are no longer listed).
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.read().clone()
    }

    /// Removed backends that still carry open connections (they take no new ones).
    pub fn draining_backends(&self) -> Vec<Arc<Backend>> {
        let mut removed = self.removed.lock();
        let alive: Vec<Arc<Backend>> = removed
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|b| b.active() > 0)
            .collect();
        *removed = alive.iter().map(Arc::downgrade).collect();
        alive
    }

    /// The balancing algorithm in force.
    pub fn balance(&self) -> Balance {
        *self.balance.read()
    }

    /// Whether any backend takes new connections.
    pub fn has_healthy(&self) -> bool {
        self.backends()
            .iter()
            .any(|b| b.is_healthy() && !b.is_draining())
    }

    /// Picks a backend for a new connection, skipping `exclude` (already tried). `affinity`
    /// is the hash key of the `client-*-hash` balancers ([`affinity`]).
    pub fn pick(
        &self,
        exclude: &[Arc<Backend>],
        client_key: Option<&[u8; 32]>,
    ) -> Option<Arc<Backend>> {
        let all = self.backends();
        let cands: Vec<&Arc<Backend>> = all
            .iter()
            .filter(|b| b.is_healthy() && !b.is_draining())
            .filter(|b| !exclude.iter().any(|e| Arc::ptr_eq(e, b)))
            .collect();
        let first = *cands.first()?;
        let chosen = match (self.balance(), client_key) {
            (Balance::RoundRobin, _) => {
                let total: u64 = cands.iter().map(|b| u64::from(b.weight)).sum();
                let mut n = (self.rr.fetch_add(1, Ordering::Relaxed) as u64) % total.max(1);
                let mut pick = first;
                for b in &cands {
                    if n < u64::from(b.weight) {
                        pick = b;
                        break;
                    }
                    n -= u64::from(b.weight);
                }
                pick
            }
            (Balance::ClientKeyHash | Balance::ClientIpHash, Some(key)) => {
                // Weighted rendezvous hashing: a user keeps its backend while that backend
                // lives, and losing one backend moves only that backend's users.
                let score = |b: &Backend| {
                    let h = fnv1a(key, b.label.as_bytes());
                    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
                    let unit = unit.max(f64::MIN_POSITIVE);
                    -f64::from(b.weight) / unit.ln()
                };
                cands
                    .iter()
                    .copied()
                    .max_by(|a, b| score(a).total_cmp(&score(b)))
                    .unwrap_or(first)
            }
            (Balance::LeastConnections, _)
            | (Balance::ClientKeyHash | Balance::ClientIpHash, None) => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % cands.len();
                // Start the scan at a rotating point so ties spread instead of piling on the first.
                let mut best = cands[start];
                for i in 0..cands.len() {
                    let b = cands[(start + i) % cands.len()];
                    let lhs = b.active() as u64 * u64::from(best.weight);
                    let rhs = best.active() as u64 * u64::from(b.weight);
                    if lhs < rhs {
                        best = b;
                    }
                }
                best
            }
        };
        Some(chosen.clone())
    }

    fn set_health(&self, b: &Backend, healthy: bool) {
        // Serialised with list changes so a late check cannot resurrect a removed label.
        let _spec = self.spec.lock();
        let was = b.healthy.swap(healthy, Ordering::Relaxed);
        if b.is_draining() {
            return;
        }
        self.metrics
            .backend_up
            .with_label_values(&[&self.route, self.name, &b.label])
            .set(i64::from(healthy));
        if was != healthy {
            if healthy {
                tracing::info!(route = %self.route, pool = self.name, backend = %b.label, "backend is healthy again");
            } else {
                tracing::warn!(route = %self.route, pool = self.name, backend = %b.label, "backend marked down");
            }
        }
    }

    /// Passive health: a failed connect or upgrade takes the backend out at once; it comes
    /// back after `healthy_threshold` passing active checks.
    pub fn mark_failed(&self, b: &Backend) {
        b.oks.store(0, Ordering::Relaxed);
        b.fails.store(u32::MAX / 2, Ordering::Relaxed);
        self.set_health(b, false);
    }

    /// Records an active check result against the thresholds.
    pub fn record_check(&self, b: &Backend, ok: bool, hc: &HealthCheckConfig) {
        if ok {
            b.fails.store(0, Ordering::Relaxed);
            let oks = b.oks.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if !b.is_healthy() && oks >= hc.healthy_threshold {
                self.set_health(b, true);
            }
        } else {
            b.oks.store(0, Ordering::Relaxed);
            let fails = b.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if b.is_healthy() && fails >= hc.unhealthy_threshold {
                self.set_health(b, false);
            }
        }
    }

    /// Replaces the backend list: entries describing a current backend (same label, pin
    /// and weight) keep its state, removed ones drain (open connections continue, no new
    /// ones).
    pub fn replace(&self, new: Vec<Arc<Backend>>) {
        let _spec = self.spec.lock();
        self.install(new);
    }

    /// [`Pool::replace`] with the spec lock already held.
    fn install(&self, new: Vec<Arc<Backend>>) {
        let old = self.backends();
        let mut kept = vec![false; old.len()];
        let merged: Vec<Arc<Backend>> = new
            .into_iter()
            .map(|n| {
                let found = old
                    .iter()
                    .enumerate()
                    .find(|(i, o)| !kept[*i] && !o.is_draining() && o.same_as(&n));
                match found {
                    Some((i, o)) => {
                        kept[i] = true;
                        o.clone()
                    }
                    None => n,
                }
            })
            .collect();
        for (o, _) in old.iter().zip(&kept).filter(|(_, k)| !**k) {
            o.set_draining();
            if o.active() > 0 {
                // Pruned here too, not only when the status page reads it: DNS churn with
                // nobody looking must not grow the list.
                let mut removed = self.removed.lock();
                removed.retain(|w| w.strong_count() > 0);
                removed.push(Arc::downgrade(o));
                drop(removed);
                tracing::info!(route = %self.route, pool = self.name, backend = %o.label, open = o.active(),
                    "backend removed: draining its open connections");
            } else {
                tracing::info!(route = %self.route, pool = self.name, backend = %o.label, "backend removed");
            }
            let _ =
                self.metrics
                    .backend_up
                    .remove_label_values(&[&self.route, self.name, &o.label]);
        }
        for m in &merged {
            if !old.iter().any(|o| Arc::ptr_eq(o, m)) {
                tracing::info!(route = %self.route, pool = self.name, backend = %m.label, weight = m.weight, "backend added");
            }
            self.metrics
                .backend_up
                .with_label_values(&[&self.route, self.name, &m.label])
                .set(i64::from(m.is_healthy()));
        }
        *self.backends.write() = Arc::new(merged);
    }

    /// Applies a reloaded config: new entries and balancing; backends that stay keep
    /// their health and connection counts, DNS answers for names still listed are kept.
    pub fn reconfigure(&self, entries: &[BackendConfig], balance: Balance) {
        let mut spec = self.spec.lock();
        spec.entries = entries.to_vec();
        let listed: Vec<String> = dns_names(&spec.entries);
        spec.resolved.retain(|k, _| listed.contains(k));
        *self.balance.write() = balance;
        self.install(desired(&spec));
    }

    /// The distinct `dns:` entries (`name:port`) this pool resolves.
    pub fn dns_entries(&self) -> Vec<String> {
        dns_names(&self.spec.lock().entries)
    }

    /// Records the addresses `entry` resolves to now; returns whether the backend list
    /// changed. Vanished addresses drain, new ones join healthy.
    pub fn update_dns(&self, entry: &str, addrs: &[SocketAddr]) -> bool {
        let mut addrs = addrs.to_vec();
        addrs.sort();
        addrs.dedup();
        let mut spec = self.spec.lock();
        if !spec.entries.iter().any(|e| e.dns.as_deref() == Some(entry)) {
            return false;
        }
        if spec.resolved.get(entry) == Some(&addrs) {
            return false;
        }
        spec.resolved.insert(entry.to_string(), addrs);
        self.install(desired(&spec));
        true
    }
}

fn dns_names(entries: &[BackendConfig]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for d in entries.iter().filter_map(|e| e.dns.clone()) {
        if !v.contains(&d) {
            v.push(d);
        }
    }
    v
}

/// The hash key a `client-key-hash` or `client-ip-hash` pool keeps a client on one
/// upstream with: the TLS client key, or the address (IPv4 as IPv4-mapped IPv6).
pub fn affinity(
    balance: Balance,
    client_key: Option<&[u8; 32]>,
    ip: std::net::IpAddr,
) -> Option<[u8; 32]> {
    match balance {
        Balance::ClientKeyHash => client_key.copied(),
        Balance::ClientIpHash => {
            let v6 = match ip {
                std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
                std::net::IpAddr::V6(a) => a,
            };
            let mut k = [0u8; 32];
            k[..16].copy_from_slice(&v6.octets());
            Some(k)
        }
        Balance::RoundRobin | Balance::LeastConnections => None,
    }
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in a.iter().chain(b"|").chain(b) {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so similar labels spread over the whole range.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Builds the static (URL) backends of a config list; `dns:` entries are resolved by the
/// discovery task.
#[cfg(test)]
fn static_backends(list: &[BackendConfig]) -> Vec<Arc<Backend>> {
    let spec = Spec {
        entries: list.iter().filter(|b| b.url.is_some()).cloned().collect(),
        resolved: HashMap::new(),
    };
    desired(&spec)
}

/// How long an active check may wait for the socket to close politely.
pub const CHECK_CLOSE_WAIT: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    fn url_backend(port: u16, weight: u32) -> Arc<Backend> {
        Arc::new(Backend::new(
            UpstreamUrl::parse(&format!("ws://127.0.0.1:{port}")).unwrap(),
            weight,
            None,
        ))
    }

    fn pool_weighted(balance: Balance, weights: &[u32]) -> Pool {
        let bs = weights
            .iter()
            .enumerate()
            .map(|(i, w)| url_backend(9000 + i as u16, *w))
            .collect();
        Pool::new(
            "default".into(),
            "default",
            bs,
            balance,
            Arc::new(Metrics::new()),
        )
    }

    fn pool(balance: Balance, n: usize) -> Pool {
        pool_weighted(balance, &vec![1; n])
    }

    fn entry_url(u: &str, weight: u32) -> BackendConfig {
        BackendConfig {
            url: Some(u.into()),
            dns: None,
            weight,
            pin: None,
        }
    }

    fn entry_dns(d: &str, weight: u32) -> BackendConfig {
        BackendConfig {
            url: None,
            dns: Some(d.into()),
            weight,
            pin: None,
        }
    }

    fn counts(
        p: &Pool,
        picks: usize,
        key: impl Fn(usize) -> Option<[u8; 32]>,
    ) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for i in 0..picks {
            let k = key(i);
            let b = p.pick(&[], k.as_ref()).unwrap();
            *c.entry(b.label.clone()).or_insert(0) += 1;
        }
        c
    }

    fn labels(p: &Pool) -> Vec<String> {
        p.backends().iter().map(|b| b.label.clone()).collect()
    }

    fn key_of(i: usize) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&(i as u64).to_le_bytes());
        k
    }

    #[test]
    fn round_robin_cycles() {
        let p = pool(Balance::RoundRobin, 3);
        let picks: Vec<String> = (0..6)
            .map(|_| p.pick(&[], None).unwrap().label.clone())
            .collect();
        assert_eq!(picks[0..3], picks[3..6]);
        assert_ne!(picks[0], picks[1]);
    }

    #[test]
    fn round_robin_respects_weights() {
        let p = pool_weighted(Balance::RoundRobin, &[3, 1]);
        let c = counts(&p, 400, |_| None);
        assert_eq!(c["ws://127.0.0.1:9000/"], 300);
        assert_eq!(c["ws://127.0.0.1:9001/"], 100);
    }

    #[test]
    fn least_connections_prefers_idle() {
        let p = pool(Balance::LeastConnections, 2);
        let a = p.pick(&[], None).unwrap();
        let _g = BackendGuard::new(a.clone());
        let b = p.pick(&[], None).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn least_connections_balances_open_connections_by_weight() {
        let p = pool_weighted(Balance::LeastConnections, &[3, 1]);
        let guards: Vec<BackendGuard> = (0..40)
            .map(|_| BackendGuard::new(p.pick(&[], None).unwrap()))
            .collect();
        let bs = p.backends();
        assert_eq!((bs[0].active(), bs[1].active()), (30, 10));
        drop(guards);
        assert_eq!(bs[0].active() + bs[1].active(), 0);
    }

    #[test]
    fn key_hash_is_sticky_and_failover_moves_only_that_key() {
        let p = pool(Balance::ClientKeyHash, 4);
        let key = [7u8; 32];
        let first = p.pick(&[], Some(&key)).unwrap();
        for _ in 0..10 {
            assert!(Arc::ptr_eq(&first, &p.pick(&[], Some(&key)).unwrap()));
        }
        p.mark_failed(&first);
        let second = p.pick(&[], Some(&key)).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn key_hash_spreads_keys_and_losing_a_backend_moves_only_its_keys() {
        let p = pool(Balance::ClientKeyHash, 4);
        let before: Vec<Arc<Backend>> = (0..2000)
            .map(|i| p.pick(&[], Some(&key_of(i))).unwrap())
            .collect();
        let c = counts(&p, 2000, |i| Some(key_of(i)));
        for (label, n) in &c {
            assert!((400..=600).contains(n), "{label} got {n} of 2000 keys");
        }
        let gone = p.backends()[2].clone();
        p.mark_failed(&gone);
        for (i, was) in before.iter().enumerate() {
            let now = p.pick(&[], Some(&key_of(i))).unwrap();
            if Arc::ptr_eq(was, &gone) {
                assert!(!Arc::ptr_eq(&now, &gone));
            } else {
                assert!(
                    Arc::ptr_eq(&now, was),
                    "key {i} moved although its backend lives"
                );
            }
        }
        // Back up: every key returns to where it was.
        p.record_check(
            &gone,
            true,
            &HealthCheckConfig {
                healthy_threshold: 1,
                ..Default::default()
            },
        );
        for (i, was) in before.iter().enumerate() {
            assert!(Arc::ptr_eq(&p.pick(&[], Some(&key_of(i))).unwrap(), was));
        }
    }

    #[test]
    fn key_hash_respects_weights_and_anonymous_falls_back() {
        let p = pool_weighted(Balance::ClientKeyHash, &[3, 1]);
        let c = counts(&p, 4000, |i| Some(key_of(i)));
        let heavy = c["ws://127.0.0.1:9000/"];
        assert!(
            (2800..=3200).contains(&heavy),
            "weight 3 got {heavy} of 4000 keys"
        );
        // Anonymous clients use least-connections.
        let a = p.pick(&[], None).unwrap();
        let _g = BackendGuard::new(a.clone());
        let b = p.pick(&[], None).unwrap();
        assert!(
            !Arc::ptr_eq(&a, &b),
            "the idle backend takes the anonymous client"
        );
    }

    #[test]
    fn client_ip_hash_keeps_an_address_on_one_backend() {
        let p = pool(Balance::ClientIpHash, 4);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let key = |s: &str| affinity(Balance::ClientIpHash, None, ip(s));
        let first = p.pick(&[], key("192.0.2.7").as_ref()).unwrap();
        for _ in 0..10 {
            let again = p.pick(&[], key("192.0.2.7").as_ref()).unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        assert_eq!(key("192.0.2.7"), key("::ffff:192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        let spread: std::collections::HashSet<String> = (0..64)
            .map(|i| {
                let k = key(&format!("198.51.100.{i}"));
                p.pick(&[], k.as_ref()).unwrap().label.clone()
            })
            .collect();
        assert_eq!(spread.len(), 4, "addresses spread over every backend");
        assert_eq!(
            affinity(Balance::RoundRobin, Some(&[1; 32]), ip("::1")),
            None
        );
        assert_eq!(
            affinity(Balance::ClientKeyHash, Some(&[1; 32]), ip("::1")),
            Some([1; 32])
        );
    }

    #[test]
    fn down_backends_are_skipped_and_excluded_ones_too() {
        let p = pool(Balance::RoundRobin, 2);
        let bs = p.backends();
        let first = p.pick(&[], None).unwrap();
        for _ in 0..5 {
            assert!(!Arc::ptr_eq(
                &p.pick(std::slice::from_ref(&first), None).unwrap(),
                &first
            ));
        }
        for b in bs.iter() {
            p.mark_failed(b);
        }
        assert!(p.pick(&[], None).is_none());
        assert!(!p.has_healthy());
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let p = pool(Balance::RoundRobin, 1);
        let b = p.backends()[0].clone();
        let hc = HealthCheckConfig {
            unhealthy_threshold: 2,
            healthy_threshold: 3,
            ..Default::default()
        };
        p.record_check(&b, false, &hc);
        assert!(b.is_healthy());
        p.record_check(&b, true, &hc);
        p.record_check(&b, false, &hc);
        assert!(b.is_healthy(), "failures must be consecutive");
        p.record_check(&b, false, &hc);
        assert!(!b.is_healthy());
        p.record_check(&b, true, &hc);
        p.record_check(&b, true, &hc);
        assert!(!b.is_healthy());
        p.record_check(&b, true, &hc);
        assert!(b.is_healthy());
        // A passive failure takes it out at once; the rise threshold still applies.
        p.mark_failed(&b);
        assert!(!b.is_healthy());
        p.record_check(&b, true, &hc);
        p.record_check(&b, true, &hc);
        assert!(!b.is_healthy());
        p.record_check(&b, true, &hc);
        assert!(b.is_healthy());
    }

    #[test]
    fn reconfigure_keeps_state_and_drains_removed() {
        let m = Arc::new(Metrics::new());
        let p = Pool::from_config(
            "default".into(),
            "default",
            &[
                entry_url("ws://127.0.0.1:9000", 1),
                entry_url("ws://127.0.0.1:9001", 1),
            ],
            Balance::RoundRobin,
            m.clone(),
        );
        let old = p.backends();
        let _open = BackendGuard::new(old[1].clone());
        p.mark_failed(&old[0]);
        p.reconfigure(
            &[
                entry_url("ws://127.0.0.1:9000", 1),
                entry_url("ws://127.0.0.1:9002", 1),
            ],
            Balance::LeastConnections,
        );
        let now = p.backends();
        assert!(
            Arc::ptr_eq(&now[0], &old[0]),
            "kept backend keeps its state"
        );
        assert!(!now[0].is_healthy());
        assert!(old[1].is_draining());
        assert_eq!(old[1].active(), 1, "open connection still counted");
        assert_eq!(p.balance(), Balance::LeastConnections);
        let text = m.render();
        assert!(
            text.contains(
                "backend_up{backend=\"ws://127.0.0.1:9000/\",pool=\"default\",route=\"default\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "backend_up{backend=\"ws://127.0.0.1:9002/\",pool=\"default\",route=\"default\"} 1"
            ),
            "{text}"
        );
        assert!(
            !text.contains("9001"),
            "removed backend's gauge is gone: {text}"
        );
        // A weight change is a new backend (fresh state).
        p.reconfigure(&[entry_url("ws://127.0.0.1:9000", 5)], Balance::RoundRobin);
        assert!(!Arc::ptr_eq(&p.backends()[0], &old[0]));
        assert!(p.backends()[0].is_healthy());
        // Identical entries stay two backends.
        p.reconfigure(
            &[
                entry_url("ws://127.0.0.1:9000", 5),
                entry_url("ws://127.0.0.1:9000", 5),
            ],
            Balance::RoundRobin,
        );
        let bs = p.backends();
        assert_eq!(bs.len(), 2);
        assert!(!Arc::ptr_eq(&bs[0], &bs[1]));
    }

    #[test]
    fn dns_answers_add_and_drain_backends() {
        let p = Pool::from_config(
            "default".into(),
            "default",
            &[
                entry_url("ws://10.0.0.9:80", 1),
                entry_dns("mosaic.svc:8081", 2),
            ],
            Balance::RoundRobin,
            Arc::new(Metrics::new()),
        );
        assert_eq!(p.dns_entries(), vec!["mosaic.svc:8081".to_string()]);
        assert_eq!(labels(&p), vec!["ws://10.0.0.9:80/"]);
        let a: SocketAddr = "10.0.0.1:8081".parse().unwrap();
        let b: SocketAddr = "[fd00::2]:8081".parse().unwrap();
        assert!(p.update_dns("mosaic.svc:8081", &[b, a, a]));
        assert_eq!(
            labels(&p),
            vec![
                "ws://10.0.0.9:80/",
                "ws://10.0.0.1:8081/ (dns mosaic.svc:8081)",
                "ws://[fd00::2]:8081/ (dns mosaic.svc:8081)",
            ]
        );
        assert_eq!(p.backends()[1].weight, 2);
        assert_eq!(p.backends()[2].url.authority(), "[fd00::2]:8081");
        assert!(
            !p.update_dns("mosaic.svc:8081", &[a, b]),
            "same answer, no change"
        );
        assert!(
            !p.update_dns("other:1", &[a]),
            "names not configured are ignored"
        );
        let kept = p.backends()[1].clone();
        let vanished = p.backends()[2].clone();
        assert!(p.update_dns("mosaic.svc:8081", &[a]));
        assert!(Arc::ptr_eq(&p.backends()[1], &kept));
        assert!(vanished.is_draining());
        // A reload keeps the answer for names still listed and drops the rest.
        p.reconfigure(&[entry_dns("mosaic.svc:8081", 2)], Balance::RoundRobin);
        assert_eq!(
            labels(&p),
            vec!["ws://10.0.0.1:8081/ (dns mosaic.svc:8081)"]
        );
        assert!(Arc::ptr_eq(&p.backends()[0], &kept));
        p.reconfigure(&[entry_dns("other.svc:8081", 1)], Balance::RoundRobin);
        assert!(p.backends().is_empty());
        assert!(kept.is_draining());
        assert!(!p.has_healthy());
    }

    #[test]
    fn static_backends_skip_dns_entries() {
        let bs = static_backends(&[entry_url("ws://127.0.0.1:1", 1), entry_dns("x:1", 1)]);
        assert_eq!(bs.len(), 1);
    }
}
