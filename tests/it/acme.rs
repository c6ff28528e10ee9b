//! ACME scenarios against Debian's real Pebble: the gateway orders its certificate, Pebble
//! validates it by connecting to the gateway itself (TLS-ALPN-01 on the public port, HTTP-01
//! on `tls.acme.http_listen`), and verifying clients that trust only Pebble's issuing root
//! are served the result. Without /usr/bin/pebble the scenarios print
//! `skipped: pebble not installed` and pass (set `PEBBLE_REQUIRED=1` to fail instead).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use crate::support::pebble;
use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::tls::{self, ClientIdentity};
use pebble::{Pebble, PebbleOptions, ReservedPort};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

const DOMAIN: &str = "gw.mosaic.test";
const EXPIRY: &str =
    "mosaic_gateway_tls_certificate_expiry_timestamp_seconds{name=\"gw.mosaic.test\"}";
/// `tls.acme.challenge` values, as docs/tls.md documents them.
const TLS_ALPN_01: &str = "tls-alpn-01";
const HTTP_01: &str = "http-01";
/// How long a first issuance may take before the scenario fails with Pebble's logs.
const ISSUANCE: Duration = Duration::from_secs(30);

fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("warn,mosaic_gateway::tls::acme=info")
        });
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

// ---------- configuration ----------

/// The master key file (from `keygen`) and its public key, the pin of master-key clients.
struct MasterKey {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    public: [u8; 32],
}

fn master_key() -> MasterKey {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.pem");
    let mosrv = mosaic_gateway::keys::keygen(&path).unwrap();
    let public = mosaic_gateway::keys::parse_server_key(&mosrv).unwrap();
    MasterKey {
        _dir: dir,
        path,
        public,
    }
}

/// The gateway's YAML: Mosaic backend, nostr relay and `tls:` with ACME from `pebble`.
/// `listen` None = a free port; `challenge` is the `challenge:` line and what goes with it.
fn gateway_yaml(
    listen: Option<&str>,
    backend: &mosaic_gateway::dev::mosaic_backend::MosaicBackend,
    relay: &mosaic_gateway::dev::nostr_relay::NostrRelayServer,
    master: Option<&MasterKey>,
    pebble: &Pebble,
    cache: &Path,
    challenge: &str,
) -> String {
    let mut y = String::new();
    if let Some(l) = listen {
        y.push_str(&format!("listen: \"{l}\"\n"));
    }
    y.push_str(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{}\ntls:\n",
        backend.local_addr(),
        relay.local_addr()
    ));
    if let Some(m) = master {
        y.push_str(&format!("  key_file: \"{}\"\n", m.path.display()));
    }
    y.push_str(&format!(
        "  watch_interval: 200ms\n  acme:\n    domains: [{DOMAIN}]\n    contact: [\"mailto:ops@example.com\"]\n    directory: \"{}\"\n    cache_dir: \"{}\"\n    ca_file: \"{}\"\n{challenge}",
        pebble.directory_url(),
        cache.display(),
        pebble.ca_file().display(),
    ));
    y
}

// ---------- clients ----------

/// A client that trusts only Pebble's issuing root (what a browser is to Let's Encrypt).
fn verifying_client(issuing_root_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(issuing_root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![tls::ALPN_HTTP11.to_vec()];
    Arc::new(config)
}

/// A TLS handshake with `sni`; the error says what failed.
async fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    sni: &str,
) -> Result<TlsStream<TcpStream>, String> {
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        TlsConnector::from(config)
            .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err("tls: timed out".into()))
}

/// The served leaf certificate.
fn leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
        .into_owned()
}

/// The leaf's serial (hex) and notAfter (Unix seconds).
fn serial_and_expiry(leaf: &CertificateDer<'_>) -> (String, f64) {
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    (
        x.raw_serial_as_string(),
        x.validity().not_after.timestamp() as f64,
    )
}

/// A nostr subscription over the TLS stream: the relay's EOSE must come back.
async fn nostr_eose(stream: TlsStream<TcpStream>, authority: &str) -> Result<(), String> {
    let fut = async {
        let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{authority}/"), stream)
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        ws.send(Message::Text(
            r#"["REQ","acme",{"kinds":[1],"limit":1}]"#.into(),
        ))
        .await
        .map_err(|e| format!("send: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == r#"["EOSE","acme"]"# => return Ok(()),
                Some(Ok(Message::Text(t))) => return Err(format!("unexpected message {t}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed before EOSE".into()),
            }
        }
    };
    tokio::time::timeout(T, fut)
        .await
        .unwrap_or_else(|_| Err("no EOSE in time".into()))
}

/// The master key keeps being served: a raw-public-key client pinning it (SNI = the ACME
/// name) gets through to the nostr relay, and a pinning X.509 client gets the self-signed
/// certificate (SNI without an ACME certificate).
async fn master_key_clients_work(addr: SocketAddr, pin: [u8; 32]) {
    let raw = Arc::new(tls::client_config(Some(pin), true, ClientIdentity::Anonymous).unwrap());
    let s = handshake(addr, raw, DOMAIN)
        .await
        .unwrap_or_else(|e| panic!("raw-public-key client: {e}"));
    nostr_eose(s, DOMAIN)
        .await
        .unwrap_or_else(|e| panic!("raw-public-key client: {e}"));
    let x509 = Arc::new(tls::client_config(Some(pin), false, ClientIdentity::Anonymous).unwrap());
    let s = handshake(addr, x509, "localhost")
        .await
        .unwrap_or_else(|e| panic!("self-signed client: {e}"));
    assert_eq!(tls::peer_key(&leaf(&s)), Some(pin));
}

async fn metrics(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await.1
}

/// Waits until the expiry gauge shows `want` (it follows the served certificate every
/// `watch_interval`).
async fn wait_for_expiry_metric(admin: SocketAddr, want: f64) {
    let deadline = Instant::now() + T;
    loop {
        let got = metric(&metrics(admin).await, EXPIRY);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{EXPIRY} is {got}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a verified handshake until the ACME certificate is served; `between` runs before
/// every attempt. Returns the stream and how many attempts failed first.
async fn wait_for_acme_certificate<F, Fut>(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    pebble: &Pebble,
    mut between: F,
) -> (TlsStream<TcpStream>, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = Instant::now() + ISSUANCE;
    let mut failed = 0;
    loop {
        between().await;
        match handshake(addr, client.clone(), DOMAIN).await {
            Ok(s) => return (s, failed),
            Err(e) if Instant::now() > deadline => panic!(
                "no verifiable certificate served after {ISSUANCE:?} (last: {e})\n{}",
                pebble.logs()
            ),
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------- scenarios ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_gets_a_certificate_from_acme_with_tls_alpn_01_and_serves_it() {
    if Pebble::skip("tls_alpn_01") {
        return;
    }
    init_tracing();
    let started = Instant::now();
    let public = ReservedPort::new();
    let pebble = Pebble::start(PebbleOptions {
        tls_port: public.port,
        ..Default::default()
    })
    .await
    .unwrap();
    let (backend, relay) = (mosaic_backend().await, nostr_relay().await);
    let master = master_key();
    let cache = tempfile::tempdir().unwrap();
    let yaml = gateway_yaml(
        Some(&public.release()),
        &backend,
        &relay,
        Some(&master),
        &pebble,
        &cache.path().join("acme"),
        &format!("    challenge: {TLS_ALPN_01}\n"),
    );
    let gw = gateway(&yaml).await;
    let root = pebble.issuing_root_pem().await.unwrap();
    let verifying = verifying_client(&root);

    // Serving never stops while the order runs: the master key's clients get through on
    // every round, before and after the ACME certificate appears.
    let pin = master.public;
    let addr = gw.public_addr;
    let (stream, waited) = wait_for_acme_certificate(addr, &verifying, &pebble, || {
        master_key_clients_work(addr, pin)
    })
    .await;
    eprintln!(
        "tls-alpn-01: certificate served after {:?} ({waited} rounds without it)",
        started.elapsed()
    );
    assert!(
        waited >= 1,
        "the master key was served at least once while ordering"
    );
    let served = leaf(&stream);
    nostr_eose(stream, &format!("{DOMAIN}:{}", addr.port()))
        .await
        .unwrap();
    master_key_clients_work(addr, pin).await;
    // A verifying client asking for another name is not given the ACME certificate as if
    // it were for that name (it gets the self-signed one and refuses it).
    assert!(handshake(addr, verifying.clone(), "other.mosaic.test")
        .await
        .is_err());

    let (_, not_after) = serial_and_expiry(&served);
    assert!(
        not_after > unix_now() + 86400.0,
        "Pebble's default lifetime"
    );
    wait_for_expiry_metric(gw.admin_addr, not_after).await;
    eprintln!("tls-alpn-01 scenario took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issuance_and_plain_requests_redirect_to_https() {
    if Pebble::skip("http_01") {
        return;
    }
    init_tracing();
    let started = Instant::now();
    let public = ReservedPort::new();
    let http = ReservedPort::new();
    let pebble = Pebble::start(PebbleOptions {
        tls_port: public.port,
        http_port: http.port,
        ..Default::default()
    })
    .await
    .unwrap();
    let (backend, relay) = (mosaic_backend().await, nostr_relay().await);
    let cache = tempfile::tempdir().unwrap();
    let port = public.port;
    let http_addr: SocketAddr = http.release().parse().unwrap();
    // No master key: until the certificate comes there is nothing to serve.
    let yaml = gateway_yaml(
        Some(&public.release()),
        &backend,
        &relay,
        None,
        &pebble,
        &cache.path().join("acme"),
        &format!("    challenge: {HTTP_01}\n    http_listen: \"{http_addr}\"\n"),
    );
    let gw = gateway(&yaml).await;
    let verifying = verifying_client(&pebble.issuing_root_pem().await.unwrap());
    let (stream, _) =
        wait_for_acme_certificate(gw.public_addr, &verifying, &pebble, || async {}).await;
    eprintln!("http-01: certificate served after {:?}", started.elapsed());
    let served = leaf(&stream);
    nostr_eose(stream, &format!("{DOMAIN}:{port}"))
        .await
        .unwrap();
    wait_for_expiry_metric(gw.admin_addr, serial_and_expiry(&served).1).await;

    // Everything but challenges goes to https on the public port, path and query kept.
    for host in [DOMAIN.to_string(), format!("{DOMAIN}:80")] {
        let resp = raw_http(
            http_addr,
            &format!("GET /some/path?x=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 301"), "{resp}");
        let location = resp
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
            })
            .map(|(_, v)| v.trim().to_string());
        assert_eq!(
            location.as_deref(),
            Some(format!("https://{DOMAIN}:{port}/some/path?x=1").as_str()),
            "{resp}"
        );
    }
    // Finished or unknown challenges are not found (and not redirected).
    let resp = raw_http(
        http_addr,
        &format!("GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    eprintln!("http-01 scenario took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_replaces_the_certificate_and_a_restart_reuses_the_cache() {
    if Pebble::skip("renewal") {
        return;
    }
    init_tracing();
    let started = Instant::now();
    // Renewal comes at two thirds of the lifetime: 16 s after issuance.
    let validity = 24;
    let public = ReservedPort::new();
    let pebble = Pebble::start(PebbleOptions {
        tls_port: public.port,
        validity_secs: Some(validity),
        ..Default::default()
    })
    .await
    .unwrap();
    let (backend, relay) = (mosaic_backend().await, nostr_relay().await);
    let cache_root = tempfile::tempdir().unwrap();
    let cache = cache_root.path().join("acme");
    let yaml = |listen: Option<&str>| {
        gateway_yaml(
            listen,
            &backend,
            &relay,
            None,
            &pebble,
            &cache,
            &format!("    challenge: {TLS_ALPN_01}\n"),
        )
    };
    // The restart runs without Pebble (so nothing can be issued): keep its API's CA file.
    let ca_copy = cache_root.path().join("pebble-ca.pem");
    std::fs::copy(pebble.ca_file(), &ca_copy).unwrap();
    let restart_yaml = yaml(None).replace(
        &pebble.ca_file().display().to_string(),
        &ca_copy.display().to_string(),
    );
    let gw = gateway(&yaml(Some(&public.release()))).await;
    let root = pebble.issuing_root_pem().await.unwrap();
    let verifying = verifying_client(&root);
    let (stream, _) =
        wait_for_acme_certificate(gw.public_addr, &verifying, &pebble, || async {}).await;
    let first = leaf(&stream);
    drop(stream);
    let (first_serial, first_expiry) = serial_and_expiry(&first);
    let issued = Instant::now();
    eprintln!("renewal: first certificate after {:?}", started.elapsed());
    assert!(
        first_expiry <= unix_now() + validity as f64 + 1.0,
        "Pebble issued a {validity} s certificate"
    );
    wait_for_expiry_metric(gw.admin_addr, first_expiry).await;

    // Without a restart a new serial is served before the first certificate expires, and
    // every handshake meanwhile succeeds.
    let renewed = loop {
        let s = handshake(gw.public_addr, verifying.clone(), DOMAIN)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "verified handshake failed {:?} after issuance: {e}\n{}",
                    issued.elapsed(),
                    pebble.logs()
                )
            });
        let l = leaf(&s);
        if serial_and_expiry(&l).0 != first_serial {
            break l;
        }
        assert!(
            unix_now() < first_expiry,
            "no renewal before the first certificate expired\n{}",
            pebble.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (renewed_serial, renewed_expiry) = serial_and_expiry(&renewed);
    eprintln!(
        "renewal: new serial served {:?} after the first issuance",
        issued.elapsed()
    );
    assert!(
        issued.elapsed() >= Duration::from_secs(validity / 3),
        "renewed too early: {:?}",
        issued.elapsed()
    );
    assert!(renewed_expiry > first_expiry);
    wait_for_expiry_metric(gw.admin_addr, renewed_expiry).await;
    let cached = std::fs::read(cache.join("cert.pem")).unwrap();
    let cached_leaf = CertificateDer::pem_slice_iter(&cached)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(cached_leaf, renewed, "the renewed certificate is cached");

    // Restart on the same cache with the CA gone: the cached certificate is served from
    // the first handshake on.
    drop(pebble);
    gw.shutdown().await;
    let restarted_at = Instant::now();
    let gw = gateway(&restart_yaml).await;
    let s = handshake(gw.public_addr, verifying.clone(), DOMAIN)
        .await
        .unwrap_or_else(|e| panic!("restarted gateway, first handshake: {e}"));
    eprintln!(
        "restart: cached certificate served {:?} after the restart began",
        restarted_at.elapsed()
    );
    assert_eq!(serial_and_expiry(&leaf(&s)).0, renewed_serial);
    nostr_eose(s, &format!("{DOMAIN}:{}", gw.public_addr.port()))
        .await
        .unwrap();
    wait_for_expiry_metric(gw.admin_addr, renewed_expiry).await;
    eprintln!("renewal scenario took {:?}", started.elapsed());
}
