//! ACME (RFC 8555) certificate manager for the gateway's public TLS edge.
//!
//! What it does: keeps one ECDSA P-256 certificate for a fixed set of DNS names, obtained
//! from an ACME CA (Let's Encrypt, or Pebble in tests) with the TLS-ALPN-01 (RFC 8737) or
//! HTTP-01 challenge, answered by the gateway's own listeners:
//!
//! * [`AcmeManager::new`] loads a still-valid cached certificate from `cache_dir` at once,
//!   so serving can start before any order is placed.
//! * [`AcmeManager::run`] (spawn it) orders when there is no usable certificate and renews
//!   when a third of the lifetime is left, or inside the CA's ACME Renewal Information
//!   (ARI, RFC 9773) suggested window when the directory offers `renewalInfo`. Failures are
//!   retried with exponential backoff (5 s doubling, capped at 1 h).
//! * [`AcmeManager::certificate`] is a lock-free read (arc-swap) for the TLS resolver;
//!   [`AcmeManager::challenge_certificate`] gives the RFC 8737 `acmeIdentifier` certificate
//!   to a ClientHello whose ALPN offers [`super::ALPN_ACME_TLS`], and
//!   [`AcmeManager::http01_response`] answers `GET /.well-known/acme-challenge/<token>`.
//!
//! Serving TLS-ALPN-01: in the resolver, when `client_hello.alpn()` contains
//! [`super::ALPN_ACME_TLS`], return `challenge_certificate(sni)`; the `ServerConfig` must list
//! `acme-tls/1` in `alpn_protocols` so it is negotiated, and a connection that negotiated
//! it must be closed after the handshake (it carries no application data).
//!
//! Cache layout (`cache_dir`, mode 0700): `account-<hash of directory URL>.json` (account
//! key + id, 0600), `cert.pem` (issued chain), `key.pem` (PKCS#8 key, 0600). Files are
//! written to a temporary name and renamed. A cache whose key does not match its chain, or
//! whose names do not cover the configured domains, is ignored and a new order is placed.
//!
//! Why `instant-acme` (0.8, `ring` + `hyper-rustls` features, no aws-lc-rs): it is a
//! client-only library, so the gateway keeps its own listeners and its own cert resolver
//! (raw-key/X.509 selection stays where it is), it supports TLS-ALPN-01, HTTP-01 and ARI,
//! it retries `badNonce` itself (3 attempts per request; we retry whole orders on top),
//! and it builds on the same rustls 0.23 / hyper 1 / rcgen 0.14 stack with `ring` only.
//! `rustls-acme` would bring its own resolver and acceptor that would have to wrap ours.
//!
//! Proven against Debian's Pebble 2.4.0 (tests/pebble.rs): TLS-ALPN-01, HTTP-01, cache
//! reuse, renewal at two thirds of a short lifetime, heavy `badNonce` rejection. Pebble
//! 2.4.0 offers no `renewalInfo`, so the ARI path (window, `replaces`) is not exercised.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, CertificateIdentifier,
    ChallengeType, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::Chain;

/// First retry delay after a failed order; doubles per failure.
const RETRY_INITIAL: Duration = Duration::from_secs(5);
/// Cap of the retry delay.
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// Longest single sleep of the scheduler, so wall-clock jumps are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// Re-ask ARI at least this often, and after an ARI failure.
const ARI_RECHECK: Duration = Duration::from_secs(6 * 3600);
/// Bound on one whole order attempt (the HTTP client itself has no request timeout).
const ORDER_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on one ARI look-up (account load + GET renewalInfo).
const ARI_TIMEOUT: Duration = Duration::from_secs(60);
/// Polling of order state while the CA validates / issues.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(500))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// Which challenge the gateway answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// RFC 8737: a self-signed certificate on the TLS port, ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 8.3: `http://<domain>/.well-known/acme-challenge/<token>` on port 80.
    Http01,
}

/// Settings of one certificate.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// DNS names of the certificate (no wildcards: HTTP-01/TLS-ALPN-01 cannot prove them).
    pub domains: Vec<String>,
    /// Account contacts; a bare address gets `mailto:` prepended.
    pub contact: Vec<String>,
    /// ACME directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Where the account and certificate are kept (created with mode 0700).
    pub cache_dir: PathBuf,
    /// Challenge type to answer.
    pub challenge: Challenge,
    /// PEM roots to trust the ACME server with, instead of the platform's roots.
    pub ca_file: Option<PathBuf>,
}

/// Errors of the ACME manager.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("invalid ACME settings: {0}")]
    Settings(String),
    #[error("cache: cannot {op} {path}")]
    Cache {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read ACME server roots from {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot build the HTTPS client for the ACME server")]
    HttpClient(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("ACME {op} failed")]
    Acme {
        op: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    #[error("cache: refusing a private key file")]
    ExposedKey(#[source] crate::keys::ExposedKey),
    #[error("account credentials in {path} are unreadable")]
    Credentials {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("authorization for {domain} is {status} (expected pending or valid)")]
    Authorization { domain: String, status: String },
    #[error("the CA offers no {challenge:?} challenge for {domain}")]
    ChallengeNotOffered {
        domain: String,
        challenge: Challenge,
    },
    #[error("order {order} ended {status}: {detail}")]
    OrderFailed {
        order: String,
        status: String,
        detail: String,
    },
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("cannot generate {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} is unusable: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("{what}: key and chain do not form a usable TLS identity")]
    TlsKey {
        what: String,
        #[source]
        source: rustls::Error,
    },
}

fn acme_err(op: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    move |source| AcmeError::Acme { op, source }
}

fn cache_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AcmeError + 'a {
    move |source| AcmeError::Cache {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The certificate being served.
struct Issued {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// ARI identifier (AKI.serial), when the leaf has an AKI.
    cert_id: Option<CertificateIdentifier<'static>>,
    serial: String,
}

impl Issued {
    fn parse(
        what: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
        provider: &CryptoProvider,
    ) -> Result<(Self, Vec<String>), AcmeError> {
        let bad = |reason: String| AcmeError::BadCertificate {
            what: what.to_owned(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("certificate PEM: {e}")))?;
        let Some(leaf) = chain.first().cloned() else {
            return Err(bad("no certificate in chain".into()));
        };
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad(format!("key PEM: {e}")))?;
        let certified =
            CertifiedKey::from_der(chain, key, provider).map_err(|source| AcmeError::TlsKey {
                what: what.to_owned(),
                source,
            })?;

        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| bad(format!("leaf X.509: {e}")))?;
        let ts = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        let not_before = ts(x509.validity().not_before.timestamp());
        let not_after = ts(x509.validity().not_after.timestamp());
        let mut names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        let serial = x509.raw_serial_as_string();
        let cert_id = CertificateIdentifier::try_from(&leaf)
            .map(CertificateIdentifier::into_owned)
            .map_err(|e| debug!(error = %e, "no ARI identifier for certificate"))
            .ok();
        Ok((
            Self {
                key: Arc::new(certified),
                not_before,
                not_after,
                cert_id,
                serial,
            },
            names,
        ))
    }

    /// Two thirds into the lifetime.
    fn default_renewal(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_after
            .checked_sub(lifetime / 3)
            .unwrap_or(self.not_before)
    }
}

/// ARI answer kept between scheduler rounds, for one certificate.
struct AriState {
    serial: String,
    renew_at: SystemTime,
    recheck_at: SystemTime,
}

/// Keeps one ACME certificate issued, renewed and cached. Share it as `Arc`.
pub struct AcmeManager {
    settings: AcmeSettings,
    provider: Arc<CryptoProvider>,
    roots: Option<Arc<RootCertStore>>,
    current: ArcSwapOption<Issued>,
    /// TLS-ALPN-01 certificates by domain, only while an order is pending.
    alpn_certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 key authorizations by token, only while an order is pending.
    http_tokens: RwLock<HashMap<String, String>>,
}

impl AcmeManager {
    /// Checks the settings, prepares `cache_dir` and loads a cached certificate if it is
    /// still valid for the configured domains. No network access.
    pub fn new(mut settings: AcmeSettings) -> Result<Arc<Self>, AcmeError> {
        let mut domains: Vec<String> = Vec::with_capacity(settings.domains.len());
        for d in settings.domains.iter().map(|d| normalize(d)) {
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        settings.domains = domains;
        if settings.domains.is_empty() {
            return Err(AcmeError::Settings("no domains".into()));
        }
        for d in &settings.domains {
            if d.is_empty() || d.starts_with("*.") || d.parse::<IpAddr>().is_ok() {
                return Err(AcmeError::Settings(format!(
                    "{d:?} is not a DNS name this manager can validate (no wildcards, no IPs)"
                )));
            }
        }
        if settings.directory.is_empty() {
            return Err(AcmeError::Settings("empty directory URL".into()));
        }
        let roots = match &settings.ca_file {
            None => None,
            Some(path) => Some(Arc::new(load_roots(path)?)),
        };
        create_private_dir(&settings.cache_dir)?;

        let manager = Arc::new(Self {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            roots,
            current: ArcSwapOption::empty(),
            alpn_certs: RwLock::default(),
            http_tokens: RwLock::default(),
            settings,
        });
        match manager.load_cached() {
            Ok(Some(issued)) => {
                info!(
                    domains = ?manager.settings.domains,
                    serial = %issued.serial,
                    not_after = ?issued.not_after,
                    "ACME: serving cached certificate"
                );
                manager.current.store(Some(Arc::new(issued)));
            }
            Ok(None) => {}
            Err(e) => warn!(error = %Chain(&e), "ACME: ignoring cached certificate"),
        }
        Ok(manager)
    }

    /// The issued chain and key, `None` until the first issuance (or cache load).
    pub fn certificate(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|i| i.key.clone())
    }

    /// The certificate's metric label: its first domain.
    pub fn label(&self) -> String {
        self.settings.domains.first().cloned().unwrap_or_default()
    }

    /// Expiry of the current certificate, for the expiry metric.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.current.load().as_ref().map(|i| i.not_after)
    }

    /// TLS-ALPN-01: the `acmeIdentifier` certificate for `server_name` while its
    /// validation is pending. Call it when the ClientHello offers [`super::ALPN_ACME_TLS`].
    pub fn challenge_certificate(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.alpn_certs.read();
        map.get(&normalize(server_name)).cloned()
    }

    /// HTTP-01: the body for `GET /.well-known/acme-challenge/<token>` (serve it as
    /// `text/plain`, or `application/octet-stream`), `None` for unknown tokens (404).
    pub fn http01_response(&self, token: &str) -> Option<String> {
        let map = self.http_tokens.read();
        map.get(token).cloned()
    }

    /// Orders and renews until `shutdown` turns `true` (or its sender is dropped).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut account: Option<Account> = None;
        let mut ari: Option<AriState> = None;
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            let current = self.current.load_full();
            if let Some(issued) = &current {
                let renew_at = tokio::select! {
                    t = self.renewal_time(issued, &mut account, &mut ari) => t,
                    _ = shutdown_signal(&mut shutdown) => return,
                };
                let now = SystemTime::now();
                if renew_at > now {
                    let next = ari
                        .as_ref()
                        .map_or(renew_at, |a| a.recheck_at.min(renew_at));
                    let wait = next
                        .duration_since(now)
                        .unwrap_or(Duration::ZERO)
                        .clamp(Duration::from_secs(1), MAX_SLEEP);
                    debug!(?wait, ?renew_at, "ACME: next check");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = shutdown_signal(&mut shutdown) => return,
                    }
                }
            }

            let result = tokio::select! {
                r = tokio::time::timeout(ORDER_TIMEOUT, self.issue(&mut account, current.as_deref())) => {
                    r.unwrap_or(Err(AcmeError::Timeout { op: "ACME order", after: ORDER_TIMEOUT }))
                }
                _ = shutdown_signal(&mut shutdown) => return,
            };
            match result {
                Ok(()) => {
                    failures = 0;
                    ari = None;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(failures);
                    warn!(
                        error = %Chain(&e),
                        attempt = failures,
                        retry_in = ?delay,
                        domains = ?self.settings.domains,
                        "ACME: order failed"
                    );
                    let unknown_account = matches!(
                        &e,
                        AcmeError::Acme { source: instant_acme::Error::Api(p), .. }
                            if p.r#type.as_deref() == Some(ACCOUNT_DOES_NOT_EXIST)
                    );
                    if unknown_account {
                        let path = self.account_path();
                        warn!(path = %path.display(), "ACME: account unknown to the CA, discarding it");
                        let _ = fs::remove_file(&path);
                    }
                    // Reload the account from disk on the next try.
                    account = None;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown_signal(&mut shutdown) => return,
                    }
                }
            }
        }
    }

    /// When to renew `issued`: inside the ARI window if the CA offers ARI, else at two
    /// thirds of the lifetime. ARI answers are cached in `ari` until their Retry-After.
    async fn renewal_time(
        &self,
        issued: &Issued,
        account: &mut Option<Account>,
        ari: &mut Option<AriState>,
    ) -> SystemTime {
        let now = SystemTime::now();
        let default = issued.default_renewal();
        if let Some(state) = ari
            .as_ref()
            .filter(|a| a.serial == issued.serial && now < a.recheck_at)
        {
            return state.renew_at;
        }
        let Some(cert_id) = &issued.cert_id else {
            return default;
        };
        if default <= now {
            return default;
        }
        let lookup = async {
            let acct = self.account(account).await?;
            acct.renewal_info(cert_id)
                .await
                .map_err(acme_err("renewal info"))
        };
        let answer = tokio::time::timeout(ARI_TIMEOUT, lookup)
            .await
            .unwrap_or(Err(AcmeError::Timeout {
                op: "ACME renewal info",
                after: ARI_TIMEOUT,
            }));
        let (renew_at, recheck_at) = match answer {
            Ok((info, retry_after)) => {
                let start = from_unix(info.suggested_window.start.unix_timestamp());
                let end = from_unix(info.suggested_window.end.unix_timestamp());
                let renew_at = random_between(start, end.max(start));
                info!(
                    serial = %issued.serial,
                    ?start, ?end, ?renew_at,
                    "ACME: renewal window from ARI"
                );
                (
                    renew_at,
                    now + retry_after.clamp(Duration::from_secs(60), ARI_RECHECK),
                )
            }
            Err(AcmeError::Acme {
                source: instant_acme::Error::Unsupported(_),
                ..
            }) => {
                debug!("ACME: CA offers no ARI, renewing at 2/3 of the lifetime");
                (default, issued.not_after)
            }
            Err(e) => {
                warn!(error = %Chain(&e), "ACME: renewal info unavailable, using 2/3 of the lifetime");
                *account = None;
                (default, now + MAX_SLEEP)
            }
        };
        *ari = Some(AriState {
            serial: issued.serial.clone(),
            renew_at,
            recheck_at,
        });
        renew_at
    }

    /// One complete order: account, challenges, finalize, download, persist, swap.
    async fn issue(
        &self,
        account_slot: &mut Option<Account>,
        previous: Option<&Issued>,
    ) -> Result<(), AcmeError> {
        let started = Instant::now();
        let account = self.account(account_slot).await?;
        let mut order = self.new_order(&account, previous).await?;
        let mut guard = ChallengeGuard {
            manager: self,
            domains: Vec::new(),
            tokens: Vec::new(),
        };
        let challenged = self.answer_challenges(&mut order, &mut guard).await?;
        wait_ready(&mut order).await?;
        let (key_pair, csr) = self.csr()?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(acme_err("finalize"))?;
        let chain_pem = order
            .poll_certificate(&POLL)
            .await
            .map_err(acme_err("download certificate"))?;
        drop(guard);

        let key_pem = key_pair.serialize_pem();
        let (issued, names) = Issued::parse(
            "certificate from the CA",
            chain_pem.as_bytes(),
            key_pem.as_bytes(),
            &self.provider,
        )?;
        self.check_names(&names, "certificate from the CA")?;
        self.persist(chain_pem.as_bytes(), key_pem.as_bytes())?;
        info!(
            domains = ?self.settings.domains,
            serial = %issued.serial,
            not_after = ?issued.not_after,
            renewal = previous.is_some(),
            challenges = challenged,
            elapsed = ?started.elapsed(),
            "ACME: certificate {}", if previous.is_some() { "renewed" } else { "issued" }
        );
        self.current.store(Some(Arc::new(issued)));
        Ok(())
    }

    /// Places the order for the configured names; a renewal names the certificate it
    /// replaces (ARI), and is placed again without that if the CA refuses it.
    async fn new_order(
        &self,
        account: &Account,
        previous: Option<&Issued>,
    ) -> Result<instant_acme::Order, AcmeError> {
        let ids: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        if let Some(id) = previous.and_then(|p| p.cert_id.clone()) {
            match account.new_order(&NewOrder::new(&ids).replaces(id)).await {
                Ok(order) => return Ok(order),
                Err(e) => {
                    debug!(error = %Chain(&e), "ACME: order with `replaces` not accepted, ordering without it");
                }
            }
        }
        account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(acme_err("new order"))
    }

    /// Sets up the configured challenge for every pending authorization of `order` (held in
    /// `guard` until the order is done) and tells the CA it is ready; how many it set up.
    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        guard: &mut ChallengeGuard<'_>,
    ) -> Result<usize, AcmeError> {
        let mut challenged = 0usize;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(acme_err("fetch authorization"))?;
            let domain = normalize(&authz.identifier().to_string());
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Authorization {
                        domain,
                        status: format!("{other:?}"),
                    });
                }
            }
            let kind = match self.settings.challenge {
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                Challenge::Http01 => ChallengeType::Http01,
            };
            let mut challenge =
                authz
                    .challenge(kind)
                    .ok_or_else(|| AcmeError::ChallengeNotOffered {
                        domain: domain.clone(),
                        challenge: self.settings.challenge,
                    })?;
            let key_auth = challenge.key_authorization();
            match self.settings.challenge {
                Challenge::TlsAlpn01 => {
                    let cert =
                        alpn_challenge_cert(&domain, key_auth.digest().as_ref(), &self.provider)?;
                    guard.add_alpn(domain, Arc::new(cert));
                }
                Challenge::Http01 => {
                    guard.add_token(challenge.token.clone(), key_auth.as_str().to_owned());
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(acme_err("challenge ready"))?;
            challenged += 1;
        }
        Ok(challenged)
    }

    /// A new certificate key and the DER certificate request for the configured names.
    fn csr(&self) -> Result<(KeyPair, rcgen::CertificateSigningRequest), AcmeError> {
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            AcmeError::Generate {
                what: "certificate key",
                source,
            }
        })?;
        let mut params =
            CertificateParams::new(self.settings.domains.clone()).map_err(|source| {
                AcmeError::Generate {
                    what: "CSR parameters",
                    source,
                }
            })?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key_pair)
            .map_err(|source| AcmeError::Generate {
                what: "CSR",
                source,
            })?;
        Ok((key_pair, csr))
    }

    /// The account: in memory, else from the cache file, else newly registered.
    async fn account(&self, slot: &mut Option<Account>) -> Result<Account, AcmeError> {
        if let Some(account) = slot {
            return Ok(account.clone());
        }
        let path = self.account_path();
        let account = match read_private(&path)? {
            Some(bytes) => {
                let creds: AccountCredentials =
                    serde_json::from_slice(&bytes).map_err(|source| AcmeError::Credentials {
                        path: path.clone(),
                        source,
                    })?;
                Account::builder_with_http(self.http_client()?)
                    .from_credentials(creds)
                    .await
                    .map_err(acme_err("load account"))?
            }
            None => {
                let contact: Vec<String> = self
                    .settings
                    .contact
                    .iter()
                    .map(|c| match c.contains(':') {
                        true => c.clone(),
                        false => format!("mailto:{c}"),
                    })
                    .collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = Account::builder_with_http(self.http_client()?)
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(acme_err("register account"))?;
                let json = serde_json::to_vec(&creds).map_err(|source| AcmeError::Credentials {
                    path: path.clone(),
                    source,
                })?;
                write_file(&path, &json, true)?;
                info!(id = account.id(), directory = %self.settings.directory, "ACME: account registered");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    fn http_client(&self) -> Result<Box<dyn HttpClient>, AcmeError> {
        let builder = HttpsConnectorBuilder::new();
        let builder = match &self.roots {
            Some(roots) => builder.with_tls_config(
                ClientConfig::builder_with_provider(self.provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| AcmeError::HttpClient(e.into()))?
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth(),
            ),
            None => builder
                .with_provider_and_platform_verifier(self.provider.clone())
                .map_err(|e| AcmeError::HttpClient(e.into()))?,
        };
        let connector = builder.https_only().enable_http1().enable_http2().build();
        let client: HyperClient<_, BodyWrapper<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Box::new(client))
    }

    fn account_path(&self) -> PathBuf {
        // FNV-1a: a stable file name per directory URL, not a security measure.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.settings.directory.as_bytes() {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.settings
            .cache_dir
            .join(format!("account-{hash:016x}.json"))
    }

    fn load_cached(&self) -> Result<Option<Issued>, AcmeError> {
        let cert_path = self.settings.cache_dir.join("cert.pem");
        let key_path = self.settings.cache_dir.join("key.pem");
        let chain_pem = match fs::read(&cert_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cache_err("read", &cert_path)(e)),
        };
        let key_pem = read_private(&key_path)?
            .ok_or_else(|| cache_err("read", &key_path)(io::ErrorKind::NotFound.into()))?;
        let what = cert_path.display().to_string();
        let (issued, names) = Issued::parse(&what, &chain_pem, &key_pem, &self.provider)?;
        self.check_names(&names, &what)?;
        if issued.not_after <= SystemTime::now() {
            return Err(AcmeError::BadCertificate {
                what,
                reason: format!("expired at {:?}", issued.not_after),
            });
        }
        Ok(Some(issued))
    }

    fn check_names(&self, names: &[String], what: &str) -> Result<(), AcmeError> {
        let missing: Vec<&String> = self
            .settings
            .domains
            .iter()
            .filter(|d| !names.contains(d))
            .collect();
        match missing.is_empty() {
            true => Ok(()),
            false => Err(AcmeError::BadCertificate {
                what: what.to_owned(),
                reason: format!("does not cover {missing:?}"),
            }),
        }
    }

    fn persist(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), AcmeError> {
        create_private_dir(&self.settings.cache_dir)?;
        write_file(&self.settings.cache_dir.join("key.pem"), key_pem, true)?;
        write_file(&self.settings.cache_dir.join("cert.pem"), chain_pem, false)
    }
}

/// Removes the challenge responses of an order when it ends, however it ends.
struct ChallengeGuard<'a> {
    manager: &'a AcmeManager,
    domains: Vec<String>,
    tokens: Vec<String>,
}

impl ChallengeGuard<'_> {
    fn add_alpn(&mut self, domain: String, cert: Arc<CertifiedKey>) {
        let mut map = self.manager.alpn_certs.write();
        map.insert(domain.clone(), cert);
        self.domains.push(domain);
    }

    fn add_token(&mut self, token: String, key_authorization: String) {
        let mut map = self.manager.http_tokens.write();
        map.insert(token.clone(), key_authorization);
        self.tokens.push(token);
    }
}

impl Drop for ChallengeGuard<'_> {
    fn drop(&mut self) {
        let mut certs = self.manager.alpn_certs.write();
        for d in &self.domains {
            certs.remove(d);
        }
        drop(certs);
        let mut tokens = self.manager.http_tokens.write();
        for t in &self.tokens {
            tokens.remove(t);
        }
    }
}

/// RFC 8737 section 3: self-signed, SAN = the domain, critical acmeIdentifier extension
/// holding SHA-256(key authorization), ECDSA P-256.
fn alpn_challenge_cert(
    domain: &str,
    digest: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, AcmeError> {
    if digest.len() != 32 {
        return Err(AcmeError::BadCertificate {
            what: "TLS-ALPN-01 key authorization digest".into(),
            reason: format!("{} bytes, expected 32", digest.len()),
        });
    }
    let generate = |what| move |source| AcmeError::Generate { what, source };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(generate("TLS-ALPN-01 key"))?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])
        .map_err(generate("TLS-ALPN-01 parameters"))?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(generate("TLS-ALPN-01 certificate"))?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its `keys_match` parses the certificate with webpki,
    // which rejects the critical acmeIdentifier extension (UnsupportedCriticalExtension).
    // The key and certificate were made together just above.
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| AcmeError::TlsKey {
            what: format!("TLS-ALPN-01 key for {domain}"),
            source,
        })?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// Waits for the CA to validate every authorization of `order`; an order that ends any
/// other way than ready fails with what the authorizations say.
async fn wait_ready(order: &mut instant_acme::Order) -> Result<(), AcmeError> {
    let order_url = order.url().to_owned();
    let status = match order.poll_ready(&POLL).await {
        Ok(status) => status,
        Err(instant_acme::Error::Api(problem)) => {
            return Err(AcmeError::OrderFailed {
                order: order_url,
                status: "with an error".into(),
                detail: problem.to_string() + &authz_errors(order).await,
            });
        }
        Err(e) => return Err(acme_err("wait for validation")(e)),
    };
    if status != OrderStatus::Ready {
        return Err(AcmeError::OrderFailed {
            order: order_url,
            status: format!("{status:?}"),
            detail: authz_errors(order).await,
        });
    }
    Ok(())
}

/// Errors of the order's authorizations and challenges, for the log line.
async fn authz_errors(order: &mut instant_acme::Order) -> String {
    let mut out = String::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let domain = authz.identifier().to_string();
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        for ch in &state.challenges {
            if let Some(err) = &ch.error {
                out.push_str(&format!("; {domain} {:?}: {err}", ch.r#type));
            }
        }
    }
    out
}

fn load_roots(path: &Path) -> Result<RootCertStore, AcmeError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| AcmeError::CaFile {
        path: path.to_owned(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.into()))? {
        roots
            .add(cert.map_err(|e| err(e.into()))?)
            .map_err(|e| err(e.into()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in file".into()));
    }
    Ok(roots)
}

/// A cached private file (account credentials, the certificate's key), `None` if there is
/// none; refused under the rule of every private key file ([`crate::keys::check_private`]).
/// The mode is read from the open file, so it is the file that is then read.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, AcmeError> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cache_err("read", path)(e)),
    };
    let meta = file.metadata().map_err(cache_err("read", path))?;
    crate::keys::check_private(path, &meta).map_err(AcmeError::ExposedKey)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(cache_err("read", path))?;
    Ok(Some(bytes))
}

fn create_private_dir(dir: &Path) -> Result<(), AcmeError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).map_err(cache_err("create", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(cache_err("chmod", dir))
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(cache_err("create", dir))
}

/// Write to `<path>.tmp` (0600 when `private`), fsync, rename over `path`.
fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), AcmeError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(cache_err("create", &tmp))?;
    #[cfg(unix)]
    {
        // The mode above only applies to new files.
        use std::os::unix::fs::PermissionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(cache_err("chmod", &tmp))?;
    }
    file.write_all(data).map_err(cache_err("write", &tmp))?;
    file.sync_all().map_err(cache_err("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(cache_err("rename", path))
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn from_unix(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

/// Uniform point in `[start, end]` (RFC 9773 section 4.2), from std's random hash keys.
fn random_between(start: SystemTime, end: SystemTime) -> SystemTime {
    let span = end.duration_since(start).unwrap_or(Duration::ZERO);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    let r = hasher.finish();
    let millis = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
    start + Duration::from_millis(r.checked_rem(millis.saturating_add(1)).unwrap_or(0))
}

fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    RETRY_INITIAL.saturating_mul(1 << shift).min(RETRY_MAX)
}

/// Resolves when `rx` says `true` or its sender is gone.
async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(5), Duration::from_secs(80));
        assert_eq!(backoff(30), RETRY_MAX);
    }

    #[test]
    fn manager_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<AcmeManager>();
    }

    /// RFC 8737 section 3 shape; Pebble checks the digest itself in tests/pebble.rs.
    #[test]
    fn alpn_challenge_cert_is_rfc8737() {
        let provider = rustls::crypto::ring::default_provider();
        let digest = [7u8; 32];
        let ck = alpn_challenge_cert("gw.mosaic.test", &digest, &provider).unwrap();
        assert_eq!(ck.cert.len(), 1);
        assert_eq!(ck.key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
        let (_, x) = x509_parser::parse_x509_certificate(ck.cert[0].as_ref()).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        let mut expected = vec![0x04, 0x20];
        expected.extend_from_slice(&digest);
        assert_eq!(ext.value, expected.as_slice());
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert_eq!(
            san.value.general_names[0],
            x509_parser::extensions::GeneralName::DNSName("gw.mosaic.test")
        );
        assert_eq!(x.issuer(), x.subject());
        let spki = x.public_key();
        assert_eq!(spki.algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap();
        assert_eq!(curve.to_id_string(), "1.2.840.10045.3.1.7", "P-256");
    }

    #[test]
    fn random_point_stays_in_window() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let end = start + Duration::from_secs(3_600);
        for _ in 0..100 {
            let t = random_between(start, end);
            assert!(t >= start && t <= end);
        }
        assert_eq!(random_between(end, start), end);
    }
}
