//! Client TLS on the public port: which certificate each client gets, decided per
//! ClientHello before the handshake, and the handshake itself.
//!
//! | rule | the client … | gets |
//! |---|---|---|
//! | 1 | offers ALPN `acme-tls/1` (ACME on) | the TLS-ALPN-01 challenge certificate |
//! | 2 | offers `RawPublicKey` as server certificate type | the master key's raw public key |
//! | 3 | names a configured or ACME certificate in SNI and allows its key's scheme | that chain |
//! | 4 | allows Ed25519 (and 3 did not apply) | the self-signed certificate on the master key |
//! | 5 | anything else | the first configured (or the ACME) certificate; with none, an alert |
//!
//! `certificate: raw-public-key` turns rule 4 off, `self-signed` turns rule 2 off; without
//! a master key neither applies. A raw public key and an X.509 chain need different rustls
//! configurations, so the rule is applied twice: once on the ClientHello to pick the
//! configuration, and again by that configuration's certificate resolver.

use std::io;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rustls::pki_types::CertificateDer;
use rustls::server::{
    Acceptor, AlwaysResolvesServerRawPublicKeys, CertificateType, ClientHello, ResolvesServerCert,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureScheme, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use super::acme::AcmeManager;
use super::certs::{CertStore, NamePattern};
use super::verify::ClientKeyVerifier;
use super::{
    certified_key, ed25519_spki, peer_key, provider, self_signed_certificate, CertificateMode,
    ClientAuth, MinVersion, TlsError, ALPN_H2, ALPN_HTTP11,
};
use crate::keys;

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_AND_13: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The server's ed25519 master key in the two forms it is served in.
struct MasterKey {
    public_key: [u8; 32],
    raw: Arc<CertifiedKey>,
    self_signed: Arc<CertifiedKey>,
}

/// Certificates from ACME and the names they are served for.
pub(crate) struct AcmeCertificates {
    /// The manager that orders, renews and answers challenges.
    pub(crate) manager: Arc<AcmeManager>,
    /// `tls.acme.domains`.
    pub(crate) names: Vec<NamePattern>,
}

/// Everything a terminator may serve, and the rules that choose among it.
pub(crate) struct TerminatorParts {
    /// The master key, when `tls.key_file` is set.
    pub(crate) master: Option<SigningKey>,
    /// `tls.certificate`.
    pub(crate) mode: CertificateMode,
    /// `tls.client_auth`.
    pub(crate) client_auth: ClientAuth,
    /// `tls.min_version`.
    pub(crate) min_version: MinVersion,
    /// `tls.certificates`.
    pub(crate) certs: Arc<CertStore>,
    /// `tls.acme`.
    pub(crate) acme: Option<AcmeCertificates>,
    /// `http.http2`: offer `h2` by ALPN (preferred over `http/1.1`).
    pub(crate) http2: bool,
}

/// What one client gets, by the rules in the module docs.
enum Served {
    AcmeChallenge,
    RawPublicKey,
    Chain(Arc<CertifiedKey>),
    SelfSigned,
    Nothing,
}

/// What the rules look at in a ClientHello.
struct Hello<'a> {
    server_name: Option<&'a str>,
    acme_alpn: bool,
    wants_raw_key: bool,
    schemes: &'a [SignatureScheme],
}

/// The rules and what they choose from, shared by the acceptor and the resolvers.
struct Selector {
    mode: CertificateMode,
    master: Option<MasterKey>,
    certs: Arc<CertStore>,
    acme: Option<AcmeCertificates>,
}

impl Selector {
    fn choose(&self, h: &Hello<'_>) -> Served {
        if h.acme_alpn && self.acme.is_some() {
            return Served::AcmeChallenge;
        }
        let master = self.master.is_some();
        if h.wants_raw_key && master && self.mode != CertificateMode::SelfSigned {
            return Served::RawPublicKey;
        }
        if let Some(chain) = h.server_name.and_then(|n| self.chain_for(n, h.schemes)) {
            return Served::Chain(chain);
        }
        let ed25519 = h.schemes.contains(&SignatureScheme::ED25519);
        if ed25519 && master && self.mode != CertificateMode::RawPublicKey {
            return Served::SelfSigned;
        }
        match self.default_chain() {
            Some(chain) => Served::Chain(chain),
            None => Served::Nothing,
        }
    }

    /// Rule 3: a configured chain for `name` first, then the ACME one.
    fn chain_for(&self, name: &str, schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let served = self.certs.current();
        if let Some(c) = served.iter().find(|c| c.serves(name, schemes)) {
            return Some(c.key.clone());
        }
        let acme = self.acme.as_ref()?;
        if !acme.names.iter().any(|n| n.matches(name)) {
            return None;
        }
        acme.manager
            .certificate()
            .filter(|k| k.key.choose_scheme(schemes).is_some())
    }

    /// Rule 5: the first configured certificate, else the ACME one.
    fn default_chain(&self) -> Option<Arc<CertifiedKey>> {
        if let Some(c) = self.certs.current().first() {
            return Some(c.key.clone());
        }
        self.acme.as_ref()?.manager.certificate()
    }
}

/// The X.509 configurations' resolver: applies the rules again on rustls's ClientHello.
struct ChoosingResolver(Arc<Selector>);

impl std::fmt::Debug for ChoosingResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChoosingResolver")
    }
}

impl ResolvesServerCert for ChoosingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let h = Hello {
            server_name: hello.server_name(),
            acme_alpn: false,
            wants_raw_key: false,
            schemes: hello.signature_schemes(),
        };
        match self.0.choose(&h) {
            Served::Chain(chain) => Some(chain),
            Served::SelfSigned => self.0.master.as_ref().map(|m| m.self_signed.clone()),
            Served::AcmeChallenge | Served::RawPublicKey | Served::Nothing => None,
        }
    }
}

/// The challenge configuration's resolver: the TLS-ALPN-01 certificate for the SNI name.
struct ChallengeResolver(Arc<Selector>);

impl std::fmt::Debug for ChallengeResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeResolver")
    }
}

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = self.0.acme.as_ref()?;
        acme.manager.challenge_certificate(hello.server_name()?)
    }
}

/// Why a client's TLS handshake failed; [`HandshakeError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not a TLS ClientHello, or the peer went away before sending one.
    #[error("no usable ClientHello")]
    ClientHello(#[source] io::Error),
    /// Nothing to serve this client (no master key for it, no certificate).
    #[error("no certificate for this client (SNI {0:?}, no default certificate)")]
    NoCertificate(Option<String>),
    /// The handshake itself failed (alerts, unsupported parameters, client key refused).
    #[error(transparent)]
    Handshake(io::Error),
    /// Not a failure: the connection was an ACME TLS-ALPN-01 validation, answered with the
    /// challenge certificate and closed (it carries no application data).
    #[error("ACME TLS-ALPN-01 validation answered")]
    AcmeChallengeServed,
}

/// Every `tls_handshake_failures_total{reason}` label: [`HandshakeError::reason`] of each
/// failure (an answered ACME challenge is none) and [`TIMEOUT_REASON`].
pub const FAILURE_REASONS: [&str; 4] = [
    "client_hello",
    "no_certificate",
    "handshake",
    TIMEOUT_REASON,
];

/// The failure label of a handshake that did not finish within `limits.handshake_timeout`.
pub const TIMEOUT_REASON: &str = "timeout";

impl HandshakeError {
    /// The `tls_handshake_failures_total{reason}` label.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::ClientHello(_) => "client_hello",
            HandshakeError::NoCertificate(_) => "no_certificate",
            HandshakeError::Handshake(_) => "handshake",
            HandshakeError::AcmeChallengeServed => "acme_challenge",
        }
    }
}

/// The configurations, one per kind of answer, built once.
struct Configs {
    /// Raw public key, by whether the client offered a raw client key (with a master key).
    raw: Option<[Arc<ServerConfig>; 2]>,
    /// X.509, by whether the client offered a raw client key and whether client keys are
    /// asked for (only from clients that can sign with Ed25519: a browser asked for a
    /// client certificate may show its user a certificate picker).
    x509: [[Arc<ServerConfig>; 2]; 2],
    /// TLS-ALPN-01 answers, when ACME is on.
    challenge: Option<Arc<ServerConfig>>,
}

/// Terminates client TLS on the public port; see the module docs.
pub struct TlsTerminator {
    selector: Arc<Selector>,
    client_auth: ClientAuth,
    configs: Configs,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self
            .server_public_key()
            .map(|k| keys::server_key_string(&k));
        f.debug_struct("TlsTerminator")
            .field("mode", &self.selector.mode)
            .field("server_key", &key)
            .finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// A terminator on the master key alone (raw public key and self-signed certificate).
    pub fn new(
        key: &SigningKey,
        mode: CertificateMode,
        client_auth: ClientAuth,
        min: MinVersion,
    ) -> Result<Self, TlsError> {
        let (certs, _) = CertStore::load(Vec::new()).map_err(TlsError::Certificate)?;
        Self::build(TerminatorParts {
            master: Some(key.clone()),
            mode,
            client_auth,
            min_version: min,
            certs: Arc::new(certs),
            acme: None,
            http2: false,
        })
    }

    /// Builds every configuration from the parts.
    pub(crate) fn build(parts: TerminatorParts) -> Result<Self, TlsError> {
        let master = match &parts.master {
            Some(key) => Some(master_key(key)?),
            None => None,
        };
        let selector = Arc::new(Selector {
            mode: parts.mode,
            master,
            certs: parts.certs,
            acme: parts.acme,
        });
        let b = ConfigBuilder {
            selector: &selector,
            client_auth: parts.client_auth,
            x509_versions: match parts.min_version {
                MinVersion::Tls12 => TLS12_AND_13,
                MinVersion::Tls13 => TLS13_ONLY,
            },
            // The server's order decides: h2 first, so a client offering both gets h2.
            alpn: if parts.http2 {
                vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
            } else {
                vec![ALPN_HTTP11.to_vec()]
            },
        };
        let configs = Configs {
            raw: match &selector.master {
                Some(m) => Some([b.raw(&m.raw, false)?, b.raw(&m.raw, true)?]),
                None => None,
            },
            x509: [
                [b.x509(false, false)?, b.x509(false, true)?],
                [b.x509(true, false)?, b.x509(true, true)?],
            ],
            challenge: match selector.acme {
                Some(_) => Some(b.challenge()?),
                None => None,
            },
        };
        Ok(Self {
            client_auth: parts.client_auth,
            selector,
            configs,
        })
    }

    /// The server's ed25519 public key (the `mosrv0…` key), when a master key is set.
    pub fn server_public_key(&self) -> Option<[u8; 32]> {
        self.selector.master.as_ref().map(|m| m.public_key)
    }

    /// The operator certificates.
    pub fn certificates(&self) -> &Arc<CertStore> {
        &self.selector.certs
    }

    /// The ACME manager, when ACME is on.
    pub(crate) fn acme(&self) -> Option<&Arc<AcmeManager>> {
        self.selector.acme.as_ref().map(|a| &a.manager)
    }

    /// Runs the TLS handshake on `io`; returns the stream and the client's ed25519 key
    /// (`None` = anonymous). Apply the handshake timeout around this call.
    ///
    /// Clients that offer ALPN without `http/1.1` (or `h2`, when on) are refused; clients
    /// without ALPN are not.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
    ) -> Result<(tokio_rustls::server::TlsStream<S>, Option<[u8; 32]>), HandshakeError> {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io)
            .await
            .map_err(HandshakeError::ClientHello)?;
        let hello = start.client_hello();
        let offers_raw = |types: Option<&[CertificateType]>| {
            types.is_some_and(|t| t.contains(&CertificateType::RawPublicKey))
        };
        let h = Hello {
            server_name: hello.server_name(),
            acme_alpn: hello
                .alpn()
                .is_some_and(|mut a| a.any(|p| p == ALPN_ACME_TLS)),
            wants_raw_key: offers_raw(hello.server_cert_types()),
            schemes: hello.signature_schemes(),
        };
        let client_raw = usize::from(offers_raw(hello.client_cert_types()));
        let choice = self.selector.choose(&h);
        let ask_key = self.asks_for_key(&choice, &h, client_raw == 1);
        let challenge = matches!(choice, Served::AcmeChallenge);
        let x509 = || self.configs.x509[client_raw][usize::from(ask_key)].clone();
        let config = match choice {
            Served::AcmeChallenge => self.configs.challenge.clone(),
            Served::RawPublicKey => self.configs.raw.as_ref().map(|r| r[client_raw].clone()),
            Served::Chain(_) | Served::SelfSigned => Some(x509()),
            Served::Nothing => None,
        };
        let Some(config) = config else {
            let name = h.server_name.map(str::to_string);
            // The X.509 resolver finds nothing either, so rustls ends the handshake with an
            // alert: the client is told it is TLS, not the network.
            let _ = start.into_stream(x509()).await;
            return Err(HandshakeError::NoCertificate(name));
        };
        tracing::trace!(sni = ?h.server_name, "TLS ClientHello");
        let mut stream = start
            .into_stream(config)
            .await
            .map_err(HandshakeError::Handshake)?;
        if challenge {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            return Err(HandshakeError::AcmeChallengeServed);
        }
        let client_key = match stream.get_ref().1.peer_certificates() {
            None => None,
            Some(certs) => Some(certs.first().and_then(peer_key).ok_or_else(|| {
                HandshakeError::Handshake(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "client key is not ed25519",
                ))
            })?),
        };
        Ok((stream, client_key))
    }
}

impl TlsTerminator {
    /// Whether the handshake sends a CertificateRequest. `required` always does. With
    /// `optional`, a CA-chain certificate (a browser's or a Mosaic 2025 client's name) asks
    /// only a client that offered a raw-public-key client certificate (RFC 7250): 2025
    /// clients use no client certificates and some cannot answer the request at all; the
    /// raw-key and self-signed paths ask every client that can sign with Ed25519.
    fn asks_for_key(&self, choice: &Served, h: &Hello<'_>, client_raw: bool) -> bool {
        if self.client_auth == ClientAuth::Required {
            return true;
        }
        match choice {
            Served::Chain(_) => client_raw,
            _ => h.schemes.contains(&SignatureScheme::ED25519),
        }
    }
}

fn master_key(key: &SigningKey) -> Result<MasterKey, TlsError> {
    let provider = provider();
    let public_key = key.verifying_key().to_bytes();
    let raw = certified_key(
        &provider,
        key,
        CertificateDer::from(ed25519_spki(&public_key)),
    )?;
    let self_signed = certified_key(&provider, key, self_signed_certificate(key)?)?;
    Ok(MasterKey {
        public_key,
        raw,
        self_signed,
    })
}

/// Builds the server configurations of one terminator.
struct ConfigBuilder<'a> {
    selector: &'a Arc<Selector>,
    client_auth: ClientAuth,
    x509_versions: &'static [&'static SupportedProtocolVersion],
    /// The application protocols offered to clients (not to ACME's validation).
    alpn: Vec<Vec<u8>>,
}

impl ConfigBuilder<'_> {
    fn verifier(&self, client_raw: bool, ask: bool) -> Arc<ClientKeyVerifier> {
        Arc::new(ClientKeyVerifier {
            raw: client_raw,
            offer: ask && self.client_auth != ClientAuth::None,
            mandatory: self.client_auth == ClientAuth::Required,
            algs: provider().signature_verification_algorithms,
        })
    }

    fn raw(
        &self,
        key: &Arc<CertifiedKey>,
        client_raw: bool,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS13_ONLY)
            .map_err(TlsError::ServerConfig)?
            .with_client_cert_verifier(self.verifier(client_raw, true))
            .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(
                key.clone(),
            )));
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }

    fn x509(&self, client_raw: bool, ask: bool) -> Result<Arc<ServerConfig>, TlsError> {
        let versions = if client_raw {
            TLS13_ONLY
        } else {
            self.x509_versions
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(TlsError::ServerConfig)?
            .with_client_cert_verifier(self.verifier(client_raw, ask))
            .with_cert_resolver(Arc::new(ChoosingResolver(self.selector.clone())));
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }

    fn challenge(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS12_AND_13)
            .map_err(TlsError::ServerConfig)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ChallengeResolver(self.selector.clone())));
        config.alpn_protocols = vec![ALPN_ACME_TLS.to_vec()];
        Ok(Arc::new(config))
    }
}

/// Every `client_auth` label of `tls_handshakes_total`.
pub const CLIENT_AUTH_LABELS: [&str; 2] = ["anonymous", "authenticated"];

/// The `client_auth` label of `tls_handshakes_total` for a key returned by
/// [`TlsTerminator::accept`]: `"authenticated"` or `"anonymous"`.
pub fn client_auth_label(client_key: Option<&[u8; 32]>) -> &'static str {
    CLIENT_AUTH_LABELS[usize::from(client_key.is_some())]
}
