//! `mosaic-gateway dev`: a complete local stack from one command.
//!
//! A real nostr relay (rust-nostr's relay with an HTTP front for NIP-11), an in-memory Mosaic
//! backend speaking the seed-era messages, and the gateway in front of both, on ws:// and on
//! wss:// with an ephemeral ed25519 key for Mosaic clients and an ephemeral self-signed
//! ECDSA certificate for `localhost`, so a browser can connect once its user accepts it.

pub mod mosaic2025;
pub mod mosaic_backend;
pub mod nostr_relay;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::tls::certs::{CertStore, NamePattern, ServedCertificate};
use crate::tls::{CertificateMode, ClientAuth, MinVersion, TerminatorParts, TlsTerminator};

/// Addresses for the dev stack.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Plain WebSocket listener.
    pub listen: SocketAddr,
    /// TLS WebSocket listener.
    pub tls_listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// Why the dev stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The embedded nostr relay could not start.
    #[error("cannot start the embedded nostr relay")]
    Relay(#[source] std::io::Error),
    /// The embedded Mosaic backend could not start.
    #[error("cannot start the embedded Mosaic backend")]
    Backend(#[source] std::io::Error),
    /// The generated config is invalid (a bug, or a bad address on the command line).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    /// No randomness for the ephemeral key.
    #[error("no OS randomness for the dev key")]
    Random(#[source] getrandom::Error),
    /// The TLS listener's terminator could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The gateway did not start.
    #[error(transparent)]
    Start(#[from] crate::runtime::StartError),
    /// Signal handlers could not be installed.
    #[error("cannot install the signal handlers")]
    Signals(#[source] std::io::Error),
    /// The browser certificate could not be made.
    #[error("dev certificate for localhost: {0}")]
    Certificate(String),
}

/// An ephemeral self-signed ECDSA P-256 certificate for `localhost` and 127.0.0.1: what
/// browsers get on the dev stack's wss:// port (rule 5), as Caddy serves local sites.
fn localhost_certificate() -> Result<ServedCertificate, DevError> {
    let failed = |e: &dyn std::fmt::Display| DevError::Certificate(e.to_string());
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| failed(&e))?;
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| failed(&e))?;
    let not_after = std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(params.not_after.unix_timestamp().max(0) as u64);
    let cert = params.self_signed(&key).map_err(|e| failed(&e))?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| failed(&e))?;
    Ok(ServedCertificate {
        label: "localhost".into(),
        names: vec![NamePattern::parse("localhost").map_err(|e| failed(&e))?],
        key: Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            signer,
        )),
        not_after,
    })
}

/// Runs the dev stack until SIGTERM or Ctrl-C.
pub async fn run(opts: DevOptions) -> Result<(), DevError> {
    let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let relay = nostr_relay::NostrRelayServer::spawn(local(0))
        .await
        .map_err(DevError::Relay)?;
    let backend = mosaic_backend::MosaicBackend::spawn(
        local(0),
        mosaic_backend::MosaicBackendOptions::default(),
    )
    .await
    .map_err(DevError::Backend)?;
    let yaml = format!(
        "listen: \"{}\"\nadmin:\n  listen: \"{}\"\nmosaic:\n  backends:\n    - url: ws://{}\n  health_check: {{ interval: 2s, timeout: 1s }}\nnostr:\n  upstream: ws://{}\nshutdown:\n  drain_timeout: 5s\n",
        opts.listen,
        opts.admin,
        backend.local_addr(),
        relay.local_addr()
    );
    let config = crate::config::parse(&yaml)?;
    crate::logging::init(config.log.format, &config.log.level);
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(DevError::Random)?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let tls = TlsTerminator::build(TerminatorParts {
        master: Some(key.clone()),
        mode: CertificateMode::Auto,
        client_auth: ClientAuth::Optional,
        min_version: MinVersion::Tls12,
        certs: Arc::new(CertStore::fixed(vec![localhost_certificate()?])),
        acme: None,
        http2: config.http.http2,
    })?;
    let server_key = crate::keys::server_key_string(&key.verifying_key().to_bytes());
    let running = crate::runtime::start(config, Some((opts.tls_listen, Arc::new(tls)))).await?;
    let tls_addr = running.extra_tls_addr.unwrap_or(opts.tls_listen);
    println!("mosaic-gateway dev stack is up\n");
    println!(
        "  Mosaic   ws://{}   (Sec-WebSocket-Protocol: mosaic2025 or mosaic2024)",
        running.public_addr
    );
    println!("  Mosaic   wss://{tls_addr}  (TLS, ed25519; pin the server key below)");
    println!(
        "  browsers wss://localhost:{}  (self-signed ECDSA certificate for localhost; accept it once)",
        tls_addr.port()
    );
    println!(
        "  nostr    ws://{}   (any other subprotocol, or none)",
        running.public_addr
    );
    println!(
        "  NIP-11   curl -H 'Accept: application/nostr+json' http://{}/",
        running.public_addr
    );
    println!(
        "  metrics  http://{}/metrics   probes: /livez /readyz",
        running.admin_addr
    );
    println!(
        "  status   http://{}/   (as JSON: /status.json)",
        running.admin_addr
    );
    println!("\n  server key (ephemeral): {server_key}");
    println!("  embedded nostr relay:   ws://{}", relay.local_addr());
    println!("  embedded Mosaic backend: ws://{}\n", backend.local_addr());
    println!("Ctrl-C drains and stops.\n");
    // The container image runs this stack by default: say how to serve real relays.
    println!(
        "  To serve your own relays, write a config (every key: proxy.yaml.example, in the\n  \
         image at /usr/share/doc/mosaic-gateway/) and run\n    \
         mosaic-gateway run --config FILE\n  \
         in a container: mount it at /etc/mosaic-gateway/proxy.yaml and pass\n    \
         run --config /etc/mosaic-gateway/proxy.yaml"
    );
    let _ = crate::ops::shutdown::wait_for_stop(running.app.clone(), None)
        .await
        .map_err(DevError::Signals)?;
    running.shutdown().await;
    drop(backend);
    drop(relay);
    Ok(())
}
