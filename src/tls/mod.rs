//! TLS for the gateway: one public port for every kind of client.
//!
//! - [`TlsTerminator`] terminates client TLS and decides, per ClientHello, what the client
//!   gets: the ACME challenge certificate, the raw public key of the server's ed25519 master
//!   key (RFC 7250), a CA-issued chain chosen by SNI ([`certs`]), or the self-signed
//!   certificate on the master key. It returns the client's ed25519 key when the client
//!   authenticated with one.
//! - [`client_config`] and [`BackendConnector`] make client connections to `wss://`
//!   backends, optionally pinned to the backend's ed25519 key ([`ServerKeyVerifier`]).
//!
//! Trust in Mosaic peers is in keys, not CAs or names: a client or backend certificate is
//! accepted for its ed25519 key alone, and possession of the key is proven by the handshake
//! signature, which is always verified. rustls only negotiates raw public keys in TLS 1.3.

use std::sync::Arc;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;

use crate::keys;

pub(crate) mod acme;
pub(crate) mod acme_http;
pub mod certs;
mod client;
mod terminator;
pub(crate) mod upkeep;
mod verify;

pub use client::{
    backend_connector, backend_connector_x509, client_config, BackendConnector, ClientIdentity,
};
pub use terminator::{
    client_auth_label, HandshakeError, TlsTerminator, ALPN_ACME_TLS, CLIENT_AUTH_LABELS,
    FAILURE_REASONS, TIMEOUT_REASON,
};
pub(crate) use terminator::{AcmeCertificates, TerminatorParts};
pub use verify::ServerKeyVerifier;

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

/// HTTP/2's ALPN protocol, accepted from clients when `http.http2` is on.
pub const ALPN_H2: &[u8] = b"h2";

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
    #[error("cannot encode the ed25519 key as PKCS#8")]
    EncodeKey(#[source] ed25519_dalek::pkcs8::Error),
    /// rcgen refused the key.
    #[error("rcgen cannot use the ed25519 key")]
    CertificateKey(#[source] rcgen::Error),
    /// rcgen could not make the self-signed certificate.
    #[error("cannot make the self-signed certificate")]
    SelfSigned(#[source] rcgen::Error),
    /// rustls cannot sign with the key.
    #[error("rustls cannot load the ed25519 key")]
    LoadKey(#[source] rustls::Error),
    /// rustls refused the server configuration.
    #[error("rustls refused the TLS server configuration")]
    ServerConfig(#[source] rustls::Error),
    /// rustls refused the client configuration.
    #[error("rustls refused the TLS client configuration")]
    ClientConfig(#[source] rustls::Error),
    /// An operator certificate cannot be served.
    #[error(transparent)]
    Certificate(#[from] certs::CertError),
    /// rustls refused the client certificate.
    #[error("rustls refused the TLS client certificate")]
    ClientCertificate(#[source] rustls::Error),
}

/// The ring provider used everywhere in this module.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn pkcs8_der(key: &SigningKey) -> Result<PrivatePkcs8KeyDer<'static>, TlsError> {
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
pub(crate) fn certified_key(
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
