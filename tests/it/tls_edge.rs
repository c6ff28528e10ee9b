//! The public TLS edge (issue 12), as an operator puts the gateway on the internet: CA-issued
//! ECDSA chains in `tls.certificates`, chosen by SNI, next to the ed25519 master key, with
//! real verifying clients (rustls with the test CA as its only root, OpenSSL's s_client),
//! raw-key Mosaic clients on the same port, and certificate files replaced while a
//! WebSocket stays open.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::keys;
use mosaic_gateway::runtime::Running;
use mosaic_gateway::tls::{self, ClientIdentity};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

// ---------- the operator's files ----------

/// A test CA issuing ECDSA P-256 leaves into one directory, as a real CA's files would be.
pub(crate) struct TestCa {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A chain and key on disk.
pub(crate) struct Issued {
    cert_file: PathBuf,
    key_file: PathBuf,
    leaf: CertificateDer<'static>,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mosaic-gateway test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            dir: tempfile::tempdir().unwrap(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn ca_file(&self) -> PathBuf {
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    /// Issues a leaf for `names`, valid for `days` from now, into `<file>.pem` / `<file>.key`
    /// (key mode 0600, chain = leaf then CA).
    pub(crate) fn issue(&self, file: &str, names: &[&str], days: i64) -> Issued {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.path().join(format!("{file}.pem"));
        let key_file = self.dir.path().join(format!("{file}.key"));
        write_private(&key_file, &key.serialize_pem());
        std::fs::write(&cert_file, format!("{}{}", cert.pem(), self.pem)).unwrap();
        Issued {
            cert_file,
            key_file,
            leaf: cert.der().clone(),
        }
    }
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A `tls:` section: the certificates, and the master key when given.
pub(crate) fn tls_section(master: Option<&Path>, certs: &[&Issued], extra: &str) -> String {
    let mut y = String::from("tls:\n  watch_interval: 100ms\n");
    if let Some(k) = master {
        y.push_str(&format!("  key_file: \"{}\"\n", k.display()));
    }
    if !certs.is_empty() {
        y.push_str("  certificates:\n");
        for c in certs {
            y.push_str(&format!(
                "    - cert_file: \"{}\"\n      key_file: \"{}\"\n",
                c.cert_file.display(),
                c.key_file.display()
            ));
        }
    }
    y.push_str(extra);
    y
}

/// A gateway with this `tls:` section in front of a real nostr relay and a Mosaic backend.
async fn edge_gateway(tls: &str) -> (Running, NostrRelay, MosaicBackend) {
    let relay = nostr_relay().await;
    let backend = mosaic_backend().await;
    let gw = gateway(&format!(
        "{tls}mosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{}\n",
        backend.local_addr(),
        relay.local_addr()
    ))
    .await;
    (gw, relay, backend)
}

type NostrRelay = mosaic_gateway::dev::nostr_relay::NostrRelayServer;
type MosaicBackend = mosaic_gateway::dev::mosaic_backend::MosaicBackend;

pub(crate) fn master_key(dir: &Path) -> (PathBuf, [u8; 32]) {
    let path = dir.join("master.pem");
    let mosrv = keys::keygen(&path).unwrap();
    (path, keys::parse_server_key(&mosrv).unwrap())
}

// ---------- clients ----------

/// A client that trusts only the test CA, as a browser trusts the public CAs.
fn verifying_client(ca: &TestCa, identity: Option<&SigningKey>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap();
    roots.add(ca_der).unwrap();
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    with_client_key(b, identity)
}

use rustls::pki_types::pem::PemObject;

/// A TLS handshake naming `name` in SNI (an IP address sends no SNI).
async fn handshake(
    addr: SocketAddr,
    config: ClientConfig,
    name: &str,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    tokio::time::timeout(
        T,
        TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())
}

/// The leaf certificate the server presented.
fn served_leaf(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// A nostr REQ over an established TLS stream, answered with EOSE by the relay.
async fn nostr_eose(
    stream: TlsStream<TcpStream>,
    host: &str,
) -> WebSocketStream<TlsStream<TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{host}/"), stream)
        .await
        .expect("nostr upgrade over TLS");
    expect_eose(&mut ws, "first").await;
    ws
}

async fn expect_eose(ws: &mut WebSocketStream<TlsStream<TcpStream>>, sub: &str) {
    ws.send(Message::Text(
        format!(r#"["REQ","{sub}",{{"limit":1}}]"#).into(),
    ))
    .await
    .unwrap();
    loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("EOSE in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = m {
            if t.contains("EOSE") {
                assert!(t.contains(sub), "{t}");
                return;
            }
        }
    }
}

// ---------- scenarios ----------

#[tokio::test]
async fn verifying_clients_get_the_ca_chain_for_each_name_and_reach_the_relay() {
    let ca = TestCa::new();
    let relay_cert = ca.issue("relay", &["relay.test"], 90);
    let other_cert = ca.issue("other", &["other.test", "*.other.test"], 90);
    let (master, pin) = master_key(ca.dir.path());
    let (gw, _relay, _backend) =
        edge_gateway(&tls_section(Some(&master), &[&relay_cert, &other_cert], "")).await;

    let s = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
        .await
        .expect("relay.test verifies against the CA");
    assert_eq!(served_leaf(&s), relay_cert.leaf);
    nostr_eose(s, "relay.test").await;

    for name in ["other.test", "a.other.test"] {
        let s = handshake(gw.public_addr, verifying_client(&ca, None), name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(served_leaf(&s), other_cert.leaf, "{name}");
    }
    // A name no certificate covers: this client can verify Ed25519, so it gets the
    // self-signed certificate on the master key (rule 4), which no CA vouches for.
    let err = handshake(gw.public_addr, verifying_client(&ca, None), "nobody.test")
        .await
        .expect_err("an unknown name must not verify");
    assert!(err.contains("UnknownIssuer"), "{err}");
    let pinned = tls::client_config(Some(pin), false, ClientIdentity::Anonymous).unwrap();
    let s = handshake(gw.public_addr, pinned, "nobody.test")
        .await
        .unwrap();
    assert_eq!(tls::peer_key(&served_leaf(&s)), Some(pin));
}

#[tokio::test]
async fn openssl_verifies_the_chain_and_the_host_name_per_sni() {
    if openssl_missing() {
        return;
    }
    let ca = TestCa::new();
    let relay_cert = ca.issue("relay", &["relay.test"], 90);
    let other_cert = ca.issue("other", &["other.test"], 90);
    let ca_file = ca.ca_file();
    let (gw, _relay, _backend) =
        edge_gateway(&tls_section(None, &[&relay_cert, &other_cert], "")).await;
    for (name, cert) in [("relay.test", &relay_cert), ("other.test", &other_cert)] {
        let out = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(gw.public_addr.to_string())
            .args([
                "-servername",
                name,
                "-verify_hostname",
                name,
                "-verify_return_error",
            ])
            .arg("-CAfile")
            .arg(&ca_file)
            .args(["-alpn", "http/1.1", "-brief"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Verification: OK"), "{name}: {text}");
        let subject = format!("DNS:{name}");
        let pem_leaf = x509_text(&cert.leaf);
        assert!(pem_leaf.contains(&subject), "{pem_leaf}");
        assert!(
            text.contains("ECDSA") || text.contains("ecdsa"),
            "{name}: {text}"
        );
    }
}

/// `openssl x509 -text` of a DER certificate.
fn x509_text(der: &CertificateDer<'_>) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(der.as_ref()).unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
}

#[tokio::test]
async fn mosaic_clients_keep_the_raw_key_and_the_self_signed_master_certificate() {
    let ca = TestCa::new();
    let relay_cert = ca.issue("relay", &["relay.test"], 90);
    let (master, pin) = master_key(ca.dir.path());
    let (gw, _relay, backend) = edge_gateway(&tls_section(
        Some(&master),
        &[&relay_cert],
        "  client_auth: optional\n",
    ))
    .await;
    let me = SigningKey::from_bytes(&[7; 32]);
    let mopub = keys::user_key_string(&me.verifying_key().to_bytes());

    // Rule 2: a raw-key client gets the master key's raw public key, even with SNI.
    let raw = tls::client_config(Some(pin), true, ClientIdentity::RawPublicKey(&me)).unwrap();
    let s = handshake(gw.public_addr, raw, "relay.test")
        .await
        .expect("raw-key handshake");
    let seen = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(tls::key_from_spki(seen.as_ref()), Some(pin));
    mosaic_upgrade(s, "raw").await;
    assert_eq!(client_key_seen(&backend, "raw"), Some(mopub.clone()));

    // Rule 4: an Ed25519 client dialing the address (no SNI) gets the self-signed
    // certificate on the master key, and its own key still reaches the backend.
    let x509 = tls::client_config(Some(pin), false, ClientIdentity::SelfSigned(&me)).unwrap();
    let s = handshake(gw.public_addr, x509, "127.0.0.1")
        .await
        .expect("self-signed handshake");
    assert_eq!(tls::peer_key(&served_leaf(&s)), Some(pin));
    mosaic_upgrade(s, "self-signed").await;
    assert_eq!(
        client_key_seen(&backend, "self-signed"),
        Some(mopub.clone())
    );

    // Rule 3 with a client key: the CA chain for the name, and no CertificateRequest under
    // `optional` (Mosaic 2025 clients use none, some cannot answer one): the client stays
    // anonymous there; raw keys (above) and `required` still carry its key.
    let s = handshake(
        gw.public_addr,
        verifying_client(&ca, Some(&me)),
        "relay.test",
    )
    .await
    .expect("CA chain with a client key");
    assert_eq!(served_leaf(&s), relay_cert.leaf);
    mosaic_upgrade(s, "ca-chain").await;
    assert_eq!(client_key_seen(&backend, "ca-chain"), None);

    // A browser-like client (no Ed25519) gets the chain and is not asked for a key.
    let s = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
        .await
        .unwrap();
    mosaic_upgrade(s, "anonymous").await;
    assert_eq!(client_key_seen(&backend, "anonymous"), None);
}

async fn mosaic_upgrade(stream: TlsStream<TcpStream>, id: &str) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = "wss://gateway/".into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "mosaic2024".parse().unwrap());
    req.headers_mut().insert("x-test-id", id.parse().unwrap());
    let (_ws, resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .unwrap_or_else(|e| panic!("{id}: Mosaic upgrade over TLS: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
}

fn client_key_seen(backend: &MosaicBackend, id: &str) -> Option<String> {
    let seen: Vec<_> = backend
        .request_headers()
        .into_iter()
        .filter(|h| h.get("x-test-id").and_then(|v| v.to_str().ok()) == Some(id))
        .collect();
    assert_eq!(seen.len(), 1, "backend saw {id} {} times", seen.len());
    seen[0]
        .get("x-mosaic-client-key")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test]
async fn a_client_nothing_can_be_served_to_gets_an_alert_and_a_counted_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _) = master_key(dir.path());
    let (gw, _relay, _backend) = edge_gateway(&format!(
        "tls:\n  key_file: \"{}\"\n  certificate: raw-public-key\n  min_version: \"1.3\"\n",
        master.display()
    ))
    .await;
    // A browser-like client: no raw keys, no Ed25519, no certificate configured for it.
    let ca = TestCa::new();
    let err = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
        .await
        .expect_err("nothing to serve a browser");
    assert!(
        err.contains("received fatal alert"),
        "a TLS alert, not a dropped socket: {err}"
    );
    let admin = gw.admin_addr;
    let mut seen = 0.0;
    for _ in 0..100 {
        let (_, body) = admin_get(admin, "/metrics").await;
        seen = metric(
            &body,
            "mosaic_gateway_tls_handshake_failures_total{reason=\"no_certificate\"}",
        );
        if seen >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1.0);
}

#[tokio::test]
async fn a_renewed_certificate_file_reaches_new_handshakes_while_an_open_websocket_stays() {
    let ca = TestCa::new();
    let first = ca.issue("relay", &["relay.test"], 90);
    let (gw, _relay, _backend) = edge_gateway(&tls_section(None, &[&first], "")).await;
    let s = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
        .await
        .unwrap();
    assert_eq!(served_leaf(&s), first.leaf);
    let mut open = nostr_eose(s, "relay.test").await;

    // certbot writes the renewed files over the old ones.
    let renewed = ca.issue("relay", &["relay.test"], 60);
    assert_ne!(renewed.leaf, first.leaf);
    let mut served = first.leaf.clone();
    for _ in 0..100 {
        let s = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
            .await
            .unwrap();
        served = served_leaf(&s);
        if served == renewed.leaf {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, renewed.leaf, "the renewed chain was not picked up");
    expect_eose(&mut open, "still-open").await;

    // A broken write keeps the last good chain.
    std::fs::write(&renewed.cert_file, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
        .await
        .expect("the last good chain is still served");
    assert_eq!(served_leaf(&s), renewed.leaf);
    expect_eose(&mut open, "after-broken-file").await;
}

#[tokio::test]
async fn the_expiry_of_each_certificate_is_a_metric() {
    let ca = TestCa::new();
    let relay_cert = ca.issue("relay", &["relay.test"], 30);
    let (gw, _relay, _backend) = edge_gateway(&tls_section(None, &[&relay_cert], "")).await;
    let want = (time::OffsetDateTime::now_utc() + time::Duration::days(30)).unix_timestamp() as f64;
    let name = "mosaic_gateway_tls_certificate_expiry_timestamp_seconds{name=\"relay.test\"}";
    let mut got = 0.0;
    for _ in 0..100 {
        let (_, body) = admin_get(gw.admin_addr, "/metrics").await;
        got = metric(&body, name);
        if got > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        (got - want).abs() < 120.0,
        "expiry {got}, expected about {want}"
    );
}

#[test]
fn check_config_names_the_key_of_each_certificate_problem() {
    let ca = TestCa::new();
    let good = ca.issue("good", &["relay.test"], 90);
    let soon = ca.issue("soon", &["soon.test"], 3);
    let other = ca.issue("other", &["other.test"], 90);
    let run = |tls: String| {
        let path = ca.dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            format!("{tls}mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mosaic-gateway"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, err) = run(tls_section(None, &[&good], ""));
    assert_eq!(code, Some(0), "{err}");

    // Expiring soon: a warning, still valid.
    let (code, err) = run(tls_section(None, &[&good, &soon], ""));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: tls.certificates[1]: the certificate expires in"),
        "{err}"
    );

    // The key of another certificate.
    let mismatched = Issued {
        cert_file: good.cert_file.clone(),
        key_file: other.key_file.clone(),
        leaf: good.leaf.clone(),
    };
    let (code, err) = run(tls_section(None, &[&mismatched], ""));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tls.certificates[0].key_file: the private key does not match"),
        "{err}"
    );

    // A key file others can read.
    std::fs::set_permissions(&other.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run(tls_section(None, &[&other], ""));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tls.certificates[0].key_file:") && err.contains("chmod 600"),
        "{err}"
    );

    // A missing chain file, and a name that is not a host name.
    let (code, err) = run(
        "tls:\n  certificates:\n    - cert_file: /nonexistent/chain.pem\n      key_file: /nonexistent/key.pem\n"
            .to_string(),
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tls.certificates[0].cert_file: cannot read"),
        "{err}"
    );
    let (code, err) = run(format!(
        "tls:\n  certificates:\n    - cert_file: \"{}\"\n      key_file: \"{}\"\n      names: [\"bad name\"]\n",
        good.cert_file.display(),
        good.key_file.display()
    ));
    assert_eq!(code, Some(1));
    assert!(err.contains("tls.certificates[0].names[0]:"), "{err}");

    // Neither a master key, certificates nor ACME.
    let (code, err) = run("tls:\n  client_auth: optional\n".to_string());
    assert_eq!(code, Some(1));
    assert!(err.contains("tls.key_file: required unless"), "{err}");
}

#[tokio::test]
async fn sighup_rereads_the_certificate_files_at_once() {
    let ca = TestCa::new();
    let first = ca.issue("relay", &["relay.test"], 90);
    // Files are not watched within the test's time: only the reload can pick them up.
    let tls =
        tls_section(None, &[&first], "").replace("watch_interval: 100ms", "watch_interval: 1h");
    let (gw, relay, backend) = edge_gateway(&tls).await;
    let s = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
        .await
        .unwrap();
    let mut open = nostr_eose(s, "relay.test").await;

    let renewed = ca.issue("relay", &["relay.test"], 60);
    let path = ca.dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\n{tls}mosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{}\n",
            backend.local_addr(),
            relay.local_addr()
        ),
    )
    .unwrap();
    mosaic_gateway::shutdown::reload(&gw.app, &path);
    let s = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
        .await
        .unwrap();
    assert_eq!(served_leaf(&s), renewed.leaf);
    expect_eose(&mut open, "after-sighup").await;

    // A reload with a broken chain file keeps the last good certificates.
    std::fs::write(&renewed.cert_file, "not a certificate").unwrap();
    mosaic_gateway::shutdown::reload(&gw.app, &path);
    let s = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
        .await
        .unwrap();
    assert_eq!(served_leaf(&s), renewed.leaf);
}

/// The handshake messages `openssl s_client -msg` saw, connecting with `args`.
async fn openssl_handshake_messages(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(addr.to_string())
        .args(args)
        .args(["-msg", "-alpn", "http/1.1"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Mosaic 2025 clients use no client certificates, and one built on Zig's TLS library fails
/// the handshake on a CertificateRequest: on a CA-chain name the default `client_auth:
/// optional` sends none, even to a client that offers Ed25519 (OpenSSL does). The
/// self-signed master certificate (no SNI) still asks, for 2024 clients' keys.
#[tokio::test]
async fn a_ca_chain_name_sends_no_certificate_request_with_the_default_client_auth() {
    if openssl_missing() {
        return;
    }
    let ca = TestCa::new();
    let relay_cert = ca.issue("relay", &["relay.test"], 90);
    let (master, _pin) = master_key(ca.dir.path());
    let (gw, _relay, _backend) =
        edge_gateway(&tls_section(Some(&master), &[&relay_cert], "")).await;
    let ca_file = ca.ca_file();
    let ca_file = ca_file.to_string_lossy();
    for version in ["-tls1_3", "-tls1_2"] {
        let chain = openssl_handshake_messages(
            gw.public_addr,
            &[version, "-servername", "relay.test", "-CAfile", &ca_file],
        )
        .await;
        assert!(chain.contains("ServerHello"), "{version}: {chain}");
        assert!(
            chain.contains("Verify return code: 0"),
            "{version}: {chain}"
        );
        assert!(
            !chain.contains("CertificateRequest"),
            "{version}: a CertificateRequest on the CA-chain name: {chain}"
        );
    }
    // A 2025 client over wss:// on the CA-chain name, with the default config: served.
    let s = handshake(gw.public_addr, verifying_client(&ca, None), "relay.test")
        .await
        .expect("CA chain");
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
        let mut req = "wss://relay.test/".into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", "mosaic2025".parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::client_async(req, s).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], "mosaic2025");
        let record: Vec<u8> = (0u8..64).collect();
        let sub = mosaic_gateway::dev::mosaic2025::wire::submission(&record);
        ws.send(Message::Binary(sub.into())).await.unwrap();
        let answer = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(answer.into_data()[..8], [0x83, 40, 0, 0, 2, 0, 0, 0]);
    }
    let master_path =
        openssl_handshake_messages(gw.public_addr, &["-tls1_3", "-noservername"]).await;
    assert!(
        master_path.contains("CertificateRequest"),
        "the self-signed path asks Ed25519 clients for their key: {master_path}"
    );
}

/// Whether `openssl` cannot be run (said once, as a skip).
fn openssl_missing() -> bool {
    let missing = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err();
    if missing {
        eprintln!("skipped: openssl not installed (.ci/run installs it)");
    }
    missing
}
