//! TLS: the one ECDSA P-256 key and certificate every TLS listener uses (what a browser-facing
//! deployment serves, and what nginx and HAProxy are set up with), and the rustls client and
//! server configs of the load generator and the backend.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::paths::which;

/// The key and certificate files in the run's directory.
pub struct TlsFiles {
    pub key: PathBuf,
    pub cert: PathBuf,
    /// Certificate and key in one file, as HAProxy reads them.
    pub pem: PathBuf,
}

impl TlsFiles {
    /// One ECDSA P-256 key and one self-signed certificate for `localhost`, for every TLS
    /// listener: the gateway serves it from `tls.certificates`, as for browsers.
    pub fn create(dir: &Path) -> TlsFiles {
        let key = dir.join("key.pem");
        let cert = dir.join("cert.pem");
        let pem = dir.join("haproxy.pem");
        run_ok(
            Command::new(which("openssl"))
                .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
                .arg("ec_paramgen_curve:P-256")
                .arg("-out")
                .arg(&key),
            "openssl genpkey",
        );
        // The gateway refuses a key file others can read.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod key");
        run_ok(
            Command::new(which("openssl"))
                .args([
                    "req",
                    "-new",
                    "-x509",
                    "-days",
                    "30",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost",
                ])
                .arg("-key")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            "openssl req -x509",
        );
        let combined = format!(
            "{}{}",
            std::fs::read_to_string(&cert).expect("cert"),
            std::fs::read_to_string(&key).expect("key")
        );
        std::fs::write(&pem, combined).expect("haproxy pem");
        TlsFiles { key, cert, pem }
    }
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn tls_connector() -> tokio_rustls::TlsConnector {
    connector(b"http/1.1")
}

/// [`tls_connector`] offering `h2` only: for the HTTP/2 figure, a proxy that cannot speak it
/// fails the handshake instead of quietly measuring HTTP/1.1.
pub fn tls_connector_h2() -> tokio_rustls::TlsConnector {
    connector(b"h2")
}

fn connector(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let p = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p)))
        .with_no_client_auth();
    // A full handshake every time: the figure is the cost of a new TLS connection.
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

pub fn tls_acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert.pem")
        .collect::<Result<_, _>>()
        .expect("cert.pem");
    let key = PrivateKeyDer::from_pem_file(key).expect("key.pem");
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}
