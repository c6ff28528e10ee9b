//! Verifiers that trust ed25519 keys, not CAs or names: client keys on the server side
//! (RPK or X.509) and a backend's key on the client side, optionally pinned.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::key_from_spki;

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
pub(crate) struct ClientKeyVerifier {
    pub(crate) raw: bool,
    pub(crate) offer: bool,
    pub(crate) mandatory: bool,
    pub(crate) algs: WebPkiSupportedAlgorithms,
}

/// The signature half of both verifiers (client keys and server keys): ed25519 only, over
/// a raw public key or an X.509 certificate as `self.raw` says. rustls asks for it through
/// two traits with the same methods, so the methods are written once here.
macro_rules! ed25519_signatures {
    () => {
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
    };
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

    ed25519_signatures!();
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

    ed25519_signatures!();
}
