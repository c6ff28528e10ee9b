//! TLS for the gateway, on the server's ed25519 master key (Mosaic wire spec §2).
//!
//! - [`TlsTerminator`] terminates client TLS: RFC 7250 raw public keys (RPK) to clients that
//!   ask for them, a self-signed X.509 certificate on the same key to the others, and optional
//!   or required client authentication with any ed25519 key (RPK or self-signed X.509). It
//!   returns the client's 32-byte ed25519 key, or `None` for an anonymous client.
//! - [`backend_connector`], [`backend_connector_x509`] and [`BackendConnector`] make client
//!   connections to `wss://` backends, optionally pinned to the backend's ed25519 key.
//!
//! Trust is in keys, not CAs or names: every certificate is accepted for its ed25519 key alone
//! (names, validity dates and issuers are ignored) and possession of the key is proven by the
//! handshake signature, which is always verified (Ed25519 only). rustls only negotiates raw
//! public keys in TLS 1.3, and a rustls client that wants a raw key offers *only* that type, so
//! a single rustls client configuration cannot talk to both RPK-only and X.509-only servers.

use std::future::Future;
use std::io;
use std::sync::Arc;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    Acceptor, AlwaysResolvesServerRawPublicKeys, CertificateType, ParsedCertificate,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::keys;

/// Which server certificate the terminator presents (`tls.certificate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateMode {
    /// Raw public key to clients that offer it, self-signed X.509 to the rest.
    #[default]
    Auto,
    /// Raw public key only (TLS 1.3); clients that do not offer it are refused.
    RawPublicKey,
    /// Self-signed X.509 certificate only.
    SelfSigned,
}

/// Whether the terminator asks clients for a certificate (`tls.client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// Never request a client certificate: every client is anonymous.
    None,
    /// Request a client certificate; clients without one are anonymous.
    #[default]
    Optional,
    /// Require a client certificate.
    Required,
}

/// Lowest TLS version accepted (`tls.min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum MinVersion {
    /// TLS 1.2 (X.509 only; raw public keys always need 1.3).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow (44 bytes in all).
pub const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The ALPN protocol offered and accepted on both sides.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The DER SubjectPublicKeyInfo of an ed25519 public key (an RFC 7250 raw public key).
pub fn ed25519_spki(key: &[u8; 32]) -> Vec<u8> {
    let mut spki = Vec::with_capacity(44);
    spki.extend_from_slice(&ED25519_SPKI_PREFIX);
    spki.extend_from_slice(key);
    spki
}

/// The 32-byte key of an ed25519 SubjectPublicKeyInfo, or `None` for anything else.
pub fn key_from_spki(spki: &[u8]) -> Option<[u8; 32]> {
    let rest = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    <[u8; 32]>::try_from(rest).ok()
}

/// The ed25519 key of a peer certificate: a raw public key (SPKI) or an X.509 certificate.
pub fn peer_key(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    if let Some(key) = key_from_spki(cert.as_ref()) {
        return Some(key);
    }
    let parsed = ParsedCertificate::try_from(cert).ok()?;
    key_from_spki(parsed.subject_public_key_info().as_ref())
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The ed25519 key could not be encoded as PKCS#8.
    #[error("cannot encode the ed25519 key as PKCS#8: {0}")]
    EncodeKey(#[source] ed25519_dalek::pkcs8::Error),
    /// rcgen refused the key.
    #[error("rcgen cannot use the ed25519 key: {0}")]
    CertificateKey(#[source] rcgen::Error),
    /// rcgen could not make the self-signed certificate.
    #[error("cannot make the self-signed certificate: {0}")]
    SelfSigned(#[source] rcgen::Error),
    /// rustls cannot sign with the key.
    #[error("rustls cannot load the ed25519 key: {0}")]
    LoadKey(#[source] rustls::Error),
    /// rustls refused the server configuration.
    #[error("TLS server configuration: {0}")]
    ServerConfig(#[source] rustls::Error),
    /// rustls refused the client configuration.
    #[error("TLS client configuration: {0}")]
    ClientConfig(#[source] rustls::Error),
    /// rustls refused the client certificate.
    #[error("TLS client certificate: {0}")]
    ClientCertificate(#[source] rustls::Error),
}

/// The ring provider used everywhere in this module.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pkcs8_der(key: &SigningKey) -> Result<PrivatePkcs8KeyDer<'static>, TlsError> {
    let doc = keys::pkcs8_v1(key)
        .to_pkcs8_der()
        .map_err(TlsError::EncodeKey)?;
    Ok(PrivatePkcs8KeyDer::from(doc.as_bytes().to_vec()))
}

/// A self-signed X.509 certificate (rcgen) on `key`, CN = its `mosrv0…` string.
pub fn self_signed_certificate(key: &SigningKey) -> Result<CertificateDer<'static>, TlsError> {
    let der = pkcs8_der(key)?;
    let key_pair = rcgen::KeyPair::try_from(&der).map_err(TlsError::CertificateKey)?;
    let mut params = rcgen::CertificateParams::default();
    let name = keys::server_key_string(&key.verifying_key().to_bytes());
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params
        .self_signed(&key_pair)
        .map_err(TlsError::SelfSigned)?;
    Ok(cert.der().clone())
}

/// A rustls `CertifiedKey` for `key` with `cert` (an SPKI for raw public keys, or X.509 DER).
fn certified_key(
    provider: &CryptoProvider,
    key: &SigningKey,
    cert: CertificateDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signer = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(pkcs8_der(key)?))
        .map_err(TlsError::LoadKey)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert], signer)))
}

fn bad_cert(reason: &str) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        io::Error::new(io::ErrorKind::InvalidData, reason.to_string()),
    ))))
}

/// Checks that `cert` carries an ed25519 key (as RPK or X.509) and returns it.
fn ed25519_key_of(cert: &CertificateDer<'_>, raw: bool) -> Result<[u8; 32], Error> {
    if raw {
        key_from_spki(cert.as_ref()).ok_or_else(|| bad_cert("raw public key is not ed25519"))
    } else {
        let parsed = ParsedCertificate::try_from(cert)?;
        key_from_spki(parsed.subject_public_key_info().as_ref())
            .ok_or_else(|| bad_cert("certificate key is not ed25519"))
    }
}

/// Verifies an Ed25519 handshake signature by the key in `cert`.
fn verify_signature(
    algs: &WebPkiSupportedAlgorithms,
    raw: bool,
    tls13: bool,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    match (raw, tls13) {
        (true, true) => rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            algs,
        ),
        (true, false) => Err(Error::General(
            "raw public keys require TLS 1.3".to_string(),
        )),
        (false, true) => rustls::crypto::verify_tls13_signature(message, cert, dss, algs),
        (false, false) => rustls::crypto::verify_tls12_signature(message, cert, dss, algs),
    }
}

/// Server-side verifier of client certificates: any ed25519 key, RPK or X.509.
#[derive(Debug)]
struct ClientKeyVerifier {
    raw: bool,
    offer: bool,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientKeyVerifier {
    fn offer_client_auth(&self) -> bool {
        self.offer
    }

    fn client_auth_mandatory(&self) -> bool {
        self.offer && self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        ed25519_key_of(end_entity, self.raw).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_signature(&self.algs, self.raw, false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_signature(&self.algs, self.raw, true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.raw
    }
}

/// Client-side verifier of a server's ed25519 key (RPK or X.509), optionally pinned.
///
/// Without a pin any ed25519 server key is accepted: the connection is encrypted but
/// **unauthenticated** (anyone in the path can impersonate the server); for labs only.
#[derive(Debug)]
pub struct ServerKeyVerifier {
    pin: Option<[u8; 32]>,
    raw: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerKeyVerifier {
    /// A verifier expecting a raw public key (`raw`, TLS 1.3) or an X.509 certificate.
    pub fn new(pin: Option<[u8; 32]>, raw: bool) -> Self {
        Self {
            pin,
            raw,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ServerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let key = ed25519_key_of(end_entity, self.raw)?;
        match self.pin {
            Some(pin) if pin != key => Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_signature(&self.algs, self.raw, false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_signature(&self.algs, self.raw, true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.raw
    }
}

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_AND_13: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Terminates client TLS on the server's ed25519 key; see the module docs.
pub struct TlsTerminator {
    mode: CertificateMode,
    public_key: [u8; 32],
    /// Indexed `[server uses RPK][client offered RPK client certificates]`.
    configs: [[Arc<ServerConfig>; 2]; 2],
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("mode", &self.mode)
            .field("server_key", &keys::server_key_string(&self.public_key))
            .finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// Prebuilds the four server configurations (server RPK/X.509 × client RPK/X.509).
    pub fn new(
        key: &SigningKey,
        mode: CertificateMode,
        client_auth: ClientAuth,
        min: MinVersion,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let public_key = key.verifying_key().to_bytes();
        let rpk = certified_key(
            &provider,
            key,
            CertificateDer::from(ed25519_spki(&public_key)),
        )?;
        let x509 = certified_key(&provider, key, self_signed_certificate(key)?)?;
        let x509_versions = match min {
            MinVersion::Tls12 => TLS12_AND_13,
            MinVersion::Tls13 => TLS13_ONLY,
        };
        let build = |server_rpk: bool, client_rpk: bool| -> Result<Arc<ServerConfig>, TlsError> {
            let verifier = Arc::new(ClientKeyVerifier {
                raw: client_rpk,
                offer: client_auth != ClientAuth::None,
                mandatory: client_auth == ClientAuth::Required,
                algs: provider.signature_verification_algorithms,
            });
            let versions = if server_rpk || client_rpk {
                TLS13_ONLY
            } else {
                x509_versions
            };
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(TlsError::ServerConfig)?
                .with_client_cert_verifier(verifier);
            let mut config = if server_rpk {
                builder.with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(
                    rpk.clone(),
                )))
            } else {
                builder.with_cert_resolver(Arc::new(SingleCert(x509.clone())))
            };
            config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
            Ok(Arc::new(config))
        };
        let configs = [
            [build(false, false)?, build(false, true)?],
            [build(true, false)?, build(true, true)?],
        ];
        Ok(Self {
            mode,
            public_key,
            configs,
        })
    }

    /// The server's ed25519 public key (the `mosrv0…` key).
    pub fn server_public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// Runs the TLS handshake on `io`; returns the stream and the client's ed25519 key
    /// (`None` = anonymous). Apply the handshake timeout around this call.
    ///
    /// Clients that offer ALPN without `http/1.1` are refused; clients without ALPN are not.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
    ) -> io::Result<(tokio_rustls::server::TlsStream<S>, Option<[u8; 32]>)> {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
        let hello = start.client_hello();
        let offers = |types: Option<&[CertificateType]>| {
            types.is_some_and(|t| t.contains(&CertificateType::RawPublicKey))
        };
        let server_offers_rpk = offers(hello.server_cert_types());
        let client_offers_rpk = offers(hello.client_cert_types());
        let server_rpk = match self.mode {
            CertificateMode::Auto => server_offers_rpk,
            CertificateMode::SelfSigned => false,
            // A client that did not offer RPK is refused by rustls with a proper alert.
            CertificateMode::RawPublicKey => true,
        };
        tracing::trace!(
            server_offers_rpk,
            client_offers_rpk,
            server_rpk,
            "TLS ClientHello"
        );
        let config = self.configs[usize::from(server_rpk)][usize::from(client_offers_rpk)].clone();
        let stream = start.into_stream(config).await?;
        let client_key = match stream.get_ref().1.peer_certificates() {
            None => None,
            Some(certs) => {
                let cert = certs.first().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "empty client certificate")
                })?;
                Some(peer_key(cert).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "client key is not ed25519")
                })?)
            }
        };
        Ok((stream, client_key))
    }
}

/// The `client_auth` label of `tls_handshakes_total` for a key returned by
/// [`TlsTerminator::accept`]: `"authenticated"` or `"anonymous"`.
pub fn client_auth_label(client_key: Option<&[u8; 32]>) -> &'static str {
    if client_key.is_some() {
        "authenticated"
    } else {
        "anonymous"
    }
}

/// Serves one X.509 certified key to every client.
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// How a client built by [`client_config`] authenticates itself.
#[derive(Debug, Clone, Copy)]
pub enum ClientIdentity<'a> {
    /// No client certificate (anonymous).
    Anonymous,
    /// An RFC 7250 raw public key (TLS 1.3 only).
    RawPublicKey(&'a SigningKey),
    /// A self-signed X.509 certificate made with rcgen.
    SelfSigned(&'a SigningKey),
}

/// A rustls client config that expects an RPK (`raw_server_key`) or X.509 server key,
/// pinned or not (see [`ServerKeyVerifier`]), with ALPN `http/1.1`.
pub fn client_config(
    pin: Option<[u8; 32]>,
    raw_server_key: bool,
    identity: ClientIdentity<'_>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let tls13_only = raw_server_key || matches!(identity, ClientIdentity::RawPublicKey(_));
    let versions = if tls13_only { TLS13_ONLY } else { TLS12_AND_13 };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(TlsError::ClientConfig)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerKeyVerifier::new(pin, raw_server_key)));
    let mut config = match identity {
        ClientIdentity::Anonymous => builder.with_no_client_auth(),
        ClientIdentity::RawPublicKey(key) => {
            let spki = ed25519_spki(&key.verifying_key().to_bytes());
            let ck = certified_key(&provider, key, CertificateDer::from(spki))?;
            builder.with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(ck)))
        }
        ClientIdentity::SelfSigned(key) => builder
            .with_client_auth_cert(
                vec![self_signed_certificate(key)?],
                PrivateKeyDer::Pkcs8(pkcs8_der(key)?),
            )
            .map_err(TlsError::ClientCertificate)?,
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}

/// Connector for `wss://` backends that asks for the server's raw public key (TLS 1.3):
/// works with servers in `auto` or `raw-public-key` mode, not X.509-only servers (see
/// [`BackendConnector`] for both). With `pin` the key must equal it; without a pin any
/// ed25519 key is accepted, which is unauthenticated and meant for labs.
pub fn backend_connector(pin: Option<[u8; 32]>) -> Result<TlsConnector, TlsError> {
    Ok(TlsConnector::from(Arc::new(client_config(
        pin,
        true,
        ClientIdentity::Anonymous,
    )?)))
}

/// Connector for `wss://` backends with a (self-signed) X.509 ed25519 certificate, TLS 1.2+:
/// works with servers in `auto` or `self-signed` mode and with OpenSSL-based servers; pinning
/// as in [`backend_connector`].
pub fn backend_connector_x509(pin: Option<[u8; 32]>) -> Result<TlsConnector, TlsError> {
    Ok(TlsConnector::from(Arc::new(client_config(
        pin,
        false,
        ClientIdentity::Anonymous,
    )?)))
}

/// Backend connector that tries a raw public key first and, if that handshake fails, an
/// X.509 certificate on a fresh connection, so it reaches servers in every mode.
#[derive(Clone)]
pub struct BackendConnector {
    rpk: TlsConnector,
    x509: TlsConnector,
}

impl std::fmt::Debug for BackendConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConnector").finish_non_exhaustive()
    }
}

impl BackendConnector {
    /// Both connectors, pinned to `pin` or (lab use only) accepting any ed25519 key.
    pub fn new(pin: Option<[u8; 32]>) -> Result<Self, TlsError> {
        Ok(Self {
            rpk: backend_connector(pin)?,
            x509: backend_connector_x509(pin)?,
        })
    }

    /// Connects over a transport from `open` (called once or twice); returns the stream
    /// and the server's ed25519 key. I/O errors of the first attempt are not retried.
    pub async fn connect<S, F, Fut>(
        &self,
        server_name: ServerName<'static>,
        mut open: F,
    ) -> io::Result<(tokio_rustls::client::TlsStream<S>, [u8; 32])>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<S>>,
    {
        let first = self.rpk.connect(server_name.clone(), open().await?).await;
        let stream = match first {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData
                        | io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::debug!(error = %e, "raw-public-key handshake failed, retrying with X.509");
                self.x509.connect(server_name, open().await?).await?
            }
            Err(e) => return Err(e),
        };
        let key = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(peer_key)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ed25519 server key"))?;
        Ok((stream, key))
    }
}
