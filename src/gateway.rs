//! The gateway's shared state: one configuration generation ([`Gateway`]) and what lives
//! as long as the process ([`App`]): metrics, limits, the drain, the relayed connections.
//!
//! Every stage of the connection pipeline reads it; it depends on no stage.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use tokio::sync::watch;

use crate::config::{AcmeChallenge, AcmeConfig, Config, ServerAuthentication, TlsConfig};
use crate::drain::{DrainSignal, DrainState, Kick};
use crate::keys::KeyError;
use crate::metrics::Metrics;
use crate::protocol::hello::ServerSigner;
use crate::rate_limit::admission::{Caps, LimitHit, Limits, Permit};
use crate::rate_limit::client_addr::TrustedProxies;
use crate::rate_limit::{BanKind, Standing, Verdict};
use crate::routing::Routes;
use crate::tls::acme::{AcmeError, AcmeManager, AcmeSettings, Challenge};
use crate::tls::certs::{CertStore, CertificateSource, NamePattern};
use crate::tls::{AcmeCertificates, TerminatorParts, TlsError, TlsTerminator};
use crate::upstreams::discovery::DnsTargets;
use crate::upstreams::pool::Pool;

/// One configuration generation: what new connections use. A reload builds a new one;
/// open connections keep the one they started with.
pub struct Gateway {
    /// The validated config.
    pub config: Config,
    /// The default route (the top-level `mosaic` / `nostr`) and `routes:`, each with its
    /// pools.
    pub routes: Routes,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted: TrustedProxies,
    /// TLS termination, when configured.
    pub tls: Option<Arc<TlsTerminator>>,
    /// Rate limits and access lists.
    pub(crate) rate: crate::rate_limit::Policy,
    /// The master key 2025 HELLOs are answered with, when a Mosaic section says
    /// `server_authentication: gateway`.
    pub server_signer: Option<Arc<ServerSigner>>,
}

impl Gateway {
    /// The connection limits in force.
    pub fn caps(&self) -> Caps {
        let l = &self.config.limits;
        Caps {
            max_total: l.max_connections,
            max_per_ip: l.max_connections_per_ip,
            ipv6_prefix: self.config.rate_limits.ipv6_prefix,
        }
    }

    /// Builds a generation from a validated config (loads the key, builds the pools).
    /// `dns:` backends join once the discovery task resolves them (`runtime::start` does a
    /// first lookup before serving).
    pub fn build(config: Config, metrics: &Arc<Metrics>) -> Result<Gateway, BuildError> {
        Gateway::assemble(config, None, metrics)
    }

    /// Builds the next generation on reload. The pools of routes that stay are kept and
    /// reconfigured with the new backend list and balancing, so backends that stay keep
    /// their health and connection counts, DNS answers for names still listed stay, and
    /// removed backends (and routes) drain (open connections keep running, no new ones).
    /// Nothing changes if it fails.
    pub fn rebuild(
        config: Config,
        old: &Gateway,
        metrics: &Arc<Metrics>,
    ) -> Result<Gateway, BuildError> {
        Gateway::assemble(config, Some(old), metrics)
    }

    fn assemble(
        config: Config,
        old: Option<&Gateway>,
        metrics: &Arc<Metrics>,
    ) -> Result<Gateway, BuildError> {
        // Everything that can fail comes first: the old generation must stay untouched
        // when a reload is refused.
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(build_tls(t, config.http.http2, old)?)),
            None => None,
        };
        // The table of standing outlives generations: bans and trips survive a reload.
        let standing = match old {
            Some(o) => o.rate.standing.clone(),
            None => Standing::new(&config, metrics),
        };
        let routes = Routes::build(&config, old.map(|o| &o.routes), metrics, &standing);
        let server_signer = load_server_signer(&config)?;
        Ok(Gateway {
            server_signer,
            rate: crate::rate_limit::Policy::new(&config, metrics, standing),
            trusted: TrustedProxies::new(&config.forwarded.trusted_proxies),
            tls,
            routes,
            config,
        })
    }

    /// What the certificate upkeep needs of this generation: its TLS and how often to look
    /// at the certificate files.
    pub(crate) fn tls_upkeep(&self) -> Option<crate::tls::upkeep::Current> {
        let every = self
            .config
            .tls
            .as_ref()
            .map_or(std::time::Duration::from_secs(10), |t| t.watch_interval.0);
        Some((self.tls.clone()?, every))
    }

    /// What the ACME HTTP listener needs of this generation.
    pub(crate) fn acme_http(&self) -> crate::tls::acme_http::Current {
        crate::tls::acme_http::Current {
            acme: self.tls.as_ref().and_then(|t| t.acme()).cloned(),
            https_port: self.config.listen_addr().port(),
        }
    }

    /// Every pool of every route, for health checks, discovery and readiness.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.routes.pools()
    }
}

impl DnsTargets for Gateway {
    fn pools(&self) -> Vec<Arc<Pool>> {
        Gateway::pools(self)
    }

    fn dns_refresh(&self) -> std::time::Duration {
        self.routes.dns_refresh(self.config.mosaic.dns_refresh.0)
    }
}

/// The key `server_authentication: gateway` signs with: `mosaic.server_key_file`, else
/// `tls.key_file`; loaded only when some Mosaic section asks for it.
fn load_server_signer(config: &Config) -> Result<Option<Arc<ServerSigner>>, BuildError> {
    let wanted = std::iter::once(&config.mosaic)
        .chain(config.routes.iter().filter_map(|r| r.mosaic.as_ref()))
        .any(|m| m.server_authentication == ServerAuthentication::Gateway);
    let path = config
        .mosaic
        .server_key_file
        .as_ref()
        .or(config.tls.as_ref().and_then(|t| t.key_file.as_ref()));
    match (wanted, path) {
        (true, Some(p)) => Ok(Some(Arc::new(ServerSigner::new(
            crate::keys::load_signing_key(p)?,
        )))),
        _ => Ok(None),
    }
}

/// The terminator for `tls:`. An ACME manager whose settings did not change is carried
/// over from the old generation, so a reload neither re-orders nor drops its certificate.
fn build_tls(
    t: &TlsConfig,
    http2: bool,
    old: Option<&Gateway>,
) -> Result<TlsTerminator, BuildError> {
    let master = match &t.key_file {
        Some(path) => Some(crate::keys::load_signing_key(path)?),
        None => None,
    };
    let (certs, warnings) = CertStore::load(certificate_sources(t)).map_err(TlsError::from)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let acme = match &t.acme {
        Some(a) => {
            let kept = old
                .filter(|o| o.config.tls.as_ref().and_then(|t| t.acme.as_ref()) == Some(a))
                .and_then(|o| o.tls.as_ref())
                .and_then(|tls| tls.acme().cloned());
            let manager = match kept {
                Some(m) => m,
                None => AcmeManager::new(acme_settings(a))?,
            };
            let names = a
                .domains
                .iter()
                .filter_map(|d| NamePattern::parse(d).ok())
                .collect();
            Some(AcmeCertificates { manager, names })
        }
        None => None,
    };
    Ok(TlsTerminator::build(TerminatorParts {
        master,
        mode: t.certificate,
        client_auth: t.client_auth,
        min_version: t.min_version,
        certs: Arc::new(certs),
        acme,
        http2,
    })?)
}

/// `tls.certificates` as the certificate store reads them.
pub(crate) fn certificate_sources(t: &TlsConfig) -> Vec<CertificateSource> {
    t.certificates
        .iter()
        .enumerate()
        .map(|(i, c)| CertificateSource {
            key: format!("tls.certificates[{i}]"),
            cert_file: c.cert_file.clone(),
            key_file: c.key_file.clone(),
            names: c.names.clone(),
        })
        .collect()
}

fn acme_settings(a: &AcmeConfig) -> AcmeSettings {
    AcmeSettings {
        domains: a.domains.clone(),
        contact: a.contact.clone(),
        directory: a.directory.clone(),
        cache_dir: a.cache_dir.clone(),
        challenge: match a.challenge {
            AcmeChallenge::TlsAlpn01 => Challenge::TlsAlpn01,
            AcmeChallenge::Http01 => Challenge::Http01,
        },
        ca_file: a.ca_file.clone(),
    }
}

/// Why a configuration generation could not be built; a reload keeps the old one.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `tls.key_file` could not be loaded (the message names the file).
    #[error("tls.key_file")]
    Key(#[from] KeyError),
    /// The TLS terminator could not be set up.
    #[error("tls")]
    Tls(#[from] TlsError),
    /// The ACME manager could not start (its cache or the ACME server's roots).
    #[error("tls.acme")]
    Acme(#[from] AcmeError),
}

/// Why `/readyz` answers 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// SIGTERM started the drain.
    #[error("draining")]
    Draining,
    /// The public listener is not bound yet.
    #[error("listener not bound yet")]
    NotListening,
    /// A pool has no backend that passes its health check.
    #[error("no healthy backend in pool {pool} of route {route}")]
    NoHealthyBackend {
        /// The route's name.
        route: Arc<str>,
        /// The pool's name.
        pool: &'static str,
    },
}

/// At most one info line per this for failed TLS handshakes; the others go to debug.
const TLS_FAILURE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Process-wide state shared by the listeners, the admin endpoints and shutdown.
pub struct App {
    current: RwLock<Arc<Gateway>>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Connection counters.
    pub limits: Arc<Limits>,
    /// Drain broadcast to every relayed connection.
    pub drain: watch::Sender<DrainState>,
    /// Set once the public listener is bound.
    pub listening: AtomicBool,
    /// Drain signals of the relayed connections.
    pub relayed: Relayed,
    pub(crate) next_id: AtomicU64,
    /// The rate limiters' buckets shared between connections (kept across reloads).
    pub(crate) rate_tables: crate::rate_limit::Tables,
    /// Failed TLS handshakes' log lines (anyone can cause them; the metric counts all).
    pub(crate) tls_failure_log: crate::logging::LogBudget,
}

impl App {
    /// Wraps a first generation.
    pub fn new(gateway: Gateway, metrics: Arc<Metrics>) -> Arc<App> {
        gateway.rate.adopt();
        let (drain, _) = watch::channel(DrainState::Running);
        let rate_tables = crate::rate_limit::Tables::new(&metrics);
        Arc::new(App {
            rate_tables,
            current: RwLock::new(Arc::new(gateway)),
            metrics,
            limits: Arc::new(Limits::default()),
            drain,
            listening: AtomicBool::new(false),
            relayed: Relayed::default(),
            next_id: AtomicU64::new(1),
            tls_failure_log: crate::logging::LogBudget::new(TLS_FAILURE_LOG_EVERY),
        })
    }

    /// A place in the connection limits for a connection from `peer`, taken at accept
    /// and held until it closes. A trusted proxy's connection is counted for its client
    /// only once a request names the client (X-Forwarded-For).
    pub fn admit(&self, gw: &Gateway, peer: std::net::IpAddr) -> Result<Permit, LimitHit> {
        let per_client = !gw.trusted.contains(peer);
        self.limits.try_acquire(peer, per_client, gw.caps())
    }

    /// The generation new connections use.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.current.read().clone()
    }

    /// Makes `g` the generation for new connections; its access lists and exemptions
    /// apply to open connections too (the enforcer closes the ones now refused).
    pub fn swap(&self, g: Gateway) {
        let mut cur = self.current.write();
        g.rate.adopt();
        *cur = Arc::new(g);
    }

    /// The table of standing (access lists, exemptions, bans), shared by every generation.
    pub(crate) fn standing(&self) -> Arc<Standing> {
        self.gateway().rate.standing.clone()
    }

    /// Closes (1008) every relayed connection whose client the standing refuses now;
    /// how many.
    pub(crate) fn close_refused(&self) -> usize {
        let standing = self.standing();
        self.relayed.kick_where(|ip| kick_for(standing.verdict(ip)))
    }

    /// Registers a relayed connection of `client`, closing it at once if its address was
    /// refused while its upgrade was under way (after accept, before this): a sweep that
    /// ran meanwhile did not see it, and none may come.
    pub(crate) fn register(&self, client: std::net::IpAddr) -> Arc<DrainSignal> {
        let signal = self.relayed.register(client);
        // After inserting: a change from here on is seen by its sweep.
        if let Some(k) = kick_for(self.standing().verdict(client)) {
            signal.kick(k);
        }
        signal
    }

    /// Whether SIGTERM started the drain.
    pub fn is_draining(&self) -> bool {
        matches!(*self.drain.borrow(), DrainState::Draining { .. })
    }

    /// Readiness: listening, a healthy backend in every pool of every route, not draining.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        if !self.listening.load(Ordering::Relaxed) {
            return Err(NotReady::NotListening);
        }
        for p in self.gateway().pools() {
            if !p.has_healthy() {
                return Err(NotReady::NoHealthyBackend {
                    route: p.route.clone(),
                    pool: p.name,
                });
            }
        }
        Ok(())
    }
}

/// Why an open connection with this standing is closed, if it is.
fn kick_for(verdict: Verdict) -> Option<Kick> {
    match verdict {
        Verdict::Served => None,
        Verdict::Denied => Some(Kick::Denied),
        Verdict::Banned(BanKind::Temporary) => Some(Kick::TempBanned),
        Verdict::Banned(BanKind::Permanent) => Some(Kick::PermBanned),
    }
}

/// The drain signal of every relayed connection, so the drain reaches each one without the
/// connections polling anything shared.
#[derive(Default)]
pub struct Relayed {
    draining: Mutex<Option<tokio::time::Instant>>,
    conns: Mutex<HashSet<Registered>>,
}

/// A connection's drain signal in the registry, known by its address: 8 bytes a slot where
/// a map from connection ids took 16 (about 15 bytes per open connection, with the table's
/// spare slots).
struct Registered(Arc<DrainSignal>);

impl PartialEq for Registered {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Registered {}

impl Hash for Registered {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

impl Relayed {
    pub(crate) fn register(&self, client: std::net::IpAddr) -> Arc<DrainSignal> {
        let signal = Arc::new(DrainSignal::new(client));
        self.conns.lock().insert(Registered(signal.clone()));
        // Checked after inserting: a drain that started meanwhile has either seen this
        // connection in the set or is seen here.
        if let Some(close_by) = *self.draining.lock() {
            signal.fire(close_by);
        }
        signal
    }

    pub(crate) fn unregister(&self, signal: &Arc<DrainSignal>) {
        self.conns.lock().remove(&Registered(signal.clone()));
    }

    /// Kicks every relayed connection `why` has a reason for (by its client's address);
    /// how many were kicked now.
    pub(crate) fn kick_where(&self, why: impl Fn(std::net::IpAddr) -> Option<Kick>) -> usize {
        let conns = self.conns.lock();
        conns
            .iter()
            .filter(|s| why(s.0.client()).is_some_and(|k| s.0.kick(k)))
            .count()
    }

    /// Tells every relayed connection, present and future, to drain by `close_by`.
    pub fn drain_all(&self, close_by: tokio::time::Instant) {
        *self.draining.lock() = Some(close_by);
        for s in self.conns.lock().iter() {
            s.0.fire(close_by);
        }
    }
}

/// What the gateway knows about one accepted connection before HTTP starts.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) client_key: Option<[u8; 32]>,
    /// The TLS server name (SNI) the client asked for: requests on the connection must
    /// belong to the route it leads to.
    pub(crate) sni: Option<Arc<str>>,
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll};

    use super::Relayed;

    #[tokio::test]
    async fn the_drain_reaches_registered_connections_and_later_ones_only() {
        let relayed = Relayed::default();
        let ip = std::net::IpAddr::from([192, 0, 2, 1]);
        let (kept, gone) = (relayed.register(ip), relayed.register(ip));
        relayed.unregister(&gone);
        assert_eq!(relayed.conns.lock().len(), 1);
        let close_by = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        relayed.drain_all(close_by);
        // Told, with the deadline (kept to the millisecond).
        let fired = |s: &super::DrainSignal| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match s.poll_fired(&mut cx) {
                Poll::Ready(at) => close_by.duration_since(at).as_millis() < 1,
                Poll::Pending => false,
            }
        };
        assert!(fired(&kept));
        assert!(!fired(&gone), "an unregistered connection is not told");
        // A connection that registers during the drain is told at once.
        assert!(fired(&relayed.register(ip)));
    }
}
