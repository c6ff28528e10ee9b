//! Client-side TLS: configurations for `wss://` backends (and test clients) that expect an
//! ed25519 server key, as a raw public key or in an X.509 certificate.

use std::future::Future;
use std::io;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::verify::ServerKeyVerifier;
use super::{
    certified_key, ed25519_spki, peer_key, pkcs8_der, provider, self_signed_certificate, TlsError,
    ALPN_HTTP11,
};

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_AND_13: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

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
