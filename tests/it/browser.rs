//! A web browser at the gateway's public TLS edge, as a nostr web client's user meets it.
//!
//! The operator has a certificate for `relay.test` from a CA (a test CA made with rcgen: an
//! ECDSA P-256 leaf, the chain in a PEM file, the key in a 0600 file) and the gateway's own
//! ed25519 master key from `keygen`. The gateway runs in-process in front of rust-nostr's
//! relay (and the in-repo Mosaic backend). The browser is Debian's headless Chromium driven
//! over the DevTools protocol (`support/chromium.rs`): it trusts the test CA through an NSS
//! database in a temporary HOME and resolves `relay.test` to 127.0.0.1, so it verifies the
//! chain for real (no `--ignore-certificate-errors`).
//!
//! Each scenario launches one browser. Without `/usr/bin/chromium` a scenario prints
//! `skipped: chromium not installed (…)` and passes; CI installs `chromium` and
//! `libnss3-tools` (`.ci/run`).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use crate::support::chromium;
use chromium::{nip11_probe, nostr_wss_probe, CdpError, Chromium, LaunchOptions};
use mosaic_gateway::dev::mosaic_backend::MosaicBackend;
use mosaic_gateway::dev::nostr_relay::NostrRelayServer;
use mosaic_gateway::runtime::Running;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use serde_json::json;

const HOST: &str = "relay.test";
const CA_NAME: &str = "mosaic-gateway browser test CA";
const HANDSHAKES: &str = "mosaic_gateway_tls_handshakes_total";
const NO_CERTIFICATE: &str =
    "mosaic_gateway_tls_handshake_failures_total{reason=\"no_certificate\"}";

// ---------- the operator's files ----------

/// What the operator holds, in a temporary directory: the CA's certificate (for the
/// browser), the server chain and its key (for `tls.certificates`), the master key.
struct OperatorFiles {
    _dir: tempfile::TempDir,
    ca_pem: String,
    chain: PathBuf,
    chain_key: PathBuf,
    master_key: PathBuf,
}

fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    1970 + (secs / 31_556_952) as i32
}

/// A test CA and an ECDSA P-256 leaf for `relay.test` it signed, written as an operator
/// would install them (chain leaf first; key mode 0600), plus a master key from `keygen`.
fn operator_files() -> OperatorFiles {
    let year = this_year();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, CA_NAME);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    ca.not_after = rcgen::date_time_ymd(year + 1, 12, 31);
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec![HOST.to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, HOST);
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(year + 1, 12, 31);
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("relay.pem");
    std::fs::write(&chain, format!("{}{}", leaf_cert.pem(), ca_cert.pem())).unwrap();
    let chain_key = dir.path().join("relay.key");
    write_secret(&chain_key, &leaf_key.serialize_pem());
    let master_key = dir.path().join("master.pem");
    mosaic_gateway::keys::keygen(&master_key).unwrap();
    OperatorFiles {
        ca_pem: ca_cert.pem(),
        _dir: dir,
        chain,
        chain_key,
        master_key,
    }
}

/// A private key file, created with mode 0600 as the gateway demands.
fn write_secret(path: &Path, pem: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(pem.as_bytes()).unwrap();
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

impl OperatorFiles {
    /// `tls:` with the CA-issued chain (names from its SANs) and the master key.
    fn tls_with_certificate(&self) -> String {
        format!(
            "tls:\n  key_file: \"{}\"\n  certificates:\n    - cert_file: \"{}\"\n      key_file: \"{}\"\n",
            self.master_key.display(),
            self.chain.display(),
            self.chain_key.display()
        )
    }

    /// `tls:` with nothing but the master key (the raw public key and the self-signed
    /// ed25519 certificate).
    fn tls_master_key_only(&self) -> String {
        format!(
            "tls:\n  key_file: \"{}\"\n  certificate: auto\n",
            self.master_key.display()
        )
    }
}

/// A gateway with this `tls:` section in front of the Mosaic backend and the nostr relay.
async fn gateway_with(tls: &str, backend: &MosaicBackend, relay: &NostrRelayServer) -> Running {
    gateway(&format!(
        "{tls}mosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{}\n",
        backend.local_addr(),
        relay.local_addr()
    ))
    .await
}

async fn metrics(admin: SocketAddr) -> String {
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body
}

// ---------- the browser ----------

/// One Chromium trusting the test CA, with `relay.test` resolved to 127.0.0.1; `None`
/// (after a `skipped:` line) when Chromium is not installed.
async fn browser(files: &OperatorFiles) -> Option<Chromium> {
    let t = Instant::now();
    let c = Chromium::launch(
        LaunchOptions::default()
            .hosts([HOST])
            .trust_ca(&files.ca_pem),
    )
    .await?;
    eprintln!(
        "[browser] {} up in {:?}",
        c.version().await.unwrap_or_default(),
        t.elapsed()
    );
    Some(c)
}

/// What a nostr web app's page does on load: open the relay's WebSocket, REQ until EOSE,
/// and fetch the relay's NIP-11 document. One promise resolving to `{title, origin, wss,
/// nip11}` (see `nostr_wss_probe`, `nip11_probe`).
fn web_client(wss_url: &str, https_url: &str) -> String {
    format!(
        "(async () => ({{title: document.title, origin: location.origin, wss: await {}, nip11: await {}}}))()",
        nostr_wss_probe(wss_url),
        nip11_probe(https_url)
    )
}

// ---------- scenarios ----------

#[tokio::test]
async fn a_browser_opens_wss_to_the_gateway_and_gets_eose_from_the_relay() {
    let files = operator_files();
    let Some(browser) = browser(&files).await else {
        return;
    };
    let relay = nostr_relay().await;
    let backend = mosaic_backend().await;
    let gw = gateway_with(&files.tls_with_certificate(), &backend, &relay).await;
    let port = gw.public_addr.port();
    let before = metric_sum(&metrics(gw.admin_addr).await, HANDSHAKES);

    // The user opens https://relay.test:PORT/: the relay's own page, passed through by the
    // gateway, over TLS the browser verified up to the trusted CA. The page's script opens
    // the relay's WebSocket and fetches its NIP-11 document, both same-origin.
    let page = format!("https://{HOST}:{port}/");
    let t = Instant::now();
    let (seen, tls) = browser
        .eval_with_tls(&page, &web_client(&format!("wss://{HOST}:{port}/"), &page))
        .await
        .unwrap_or_else(|e| panic!("the browser could not use the gateway: {e}"));
    eprintln!("[page] {:?}\n  tls: {tls}\n  seen: {seen}", t.elapsed());

    assert_eq!(seen["title"], "nostr relay", "the relay's page: {seen}");
    assert_eq!(seen["origin"], format!("https://{HOST}:{port}"));
    // The chain it verified is the operator's, not the master key's self-signed certificate.
    assert_eq!(tls["subjectName"], HOST, "{tls}");
    assert_eq!(tls["issuer"], CA_NAME, "{tls}");
    assert_eq!(tls["sanList"], json!([HOST]), "{tls}");
    assert_eq!(tls["protocol"], "TLS 1.3", "{tls}");
    assert_eq!(
        tls["serverSignatureAlgorithm"], 0x0403,
        "ecdsa_secp256r1_sha256: {tls}"
    );

    // wss:// REQ → EOSE from rust-nostr's relay, as a nostr connection (no subprotocol).
    let wss = &seen["wss"];
    assert_eq!(wss["ok"], true, "WebSocket through the gateway: {wss}");
    assert_eq!(wss["eose"], true, "{wss}");
    assert_eq!(wss["protocol"], "", "{wss}");

    // NIP-11 over https:// with `Accept: application/nostr+json`.
    let nip11 = &seen["nip11"];
    assert_eq!(nip11["ok"], true, "NIP-11 through the gateway: {nip11}");
    assert_eq!(nip11["status"], 200, "{nip11}");
    assert_eq!(nip11["contentType"], "application/nostr+json", "{nip11}");
    assert_eq!(nip11["json"]["name"], "mosaic-gateway dev relay", "{nip11}");
    assert!(
        nip11["json"]["supported_nips"]
            .as_array()
            .is_some_and(|n| n.contains(&json!(11))),
        "{nip11}"
    );

    // The gateway counted the browser's handshakes (page, WebSocket, fetch may share one).
    let text = metrics(gw.admin_addr).await;
    let after = metric_sum(&text, HANDSHAKES);
    assert!(
        after > before,
        "{HANDSHAKES}: {before} before, {after} after"
    );
    assert_eq!(metric(&text, NO_CERTIFICATE), 0.0, "{text}");
}

#[tokio::test]
async fn a_gateway_with_only_its_master_key_is_refused_by_the_browser() {
    let files = operator_files();
    let Some(browser) = browser(&files).await else {
        return;
    };
    let relay = nostr_relay().await;
    let backend = mosaic_backend().await;
    // The operator forgot `tls.certificates`: only the master key, which gives the raw
    // public key and a self-signed ed25519 certificate — neither of which a browser takes.
    let bare = gateway_with(&files.tls_master_key_only(), &backend, &relay).await;
    // The same browser's page comes from a gateway that has the CA-issued chain.
    let edge = gateway_with(&files.tls_with_certificate(), &backend, &relay).await;
    let page = format!("https://{HOST}:{}/", edge.public_addr.port());
    let bare_https = format!("https://{HOST}:{}/", bare.public_addr.port());
    let bare_wss = format!("wss://{HOST}:{}/", bare.public_addr.port());
    let edge_wss = format!("wss://{HOST}:{}/", edge.public_addr.port());
    let before = metrics(bare.admin_addr).await;

    let t = Instant::now();
    let seen = browser
        .eval(
            &page,
            &format!(
                "(async () => ({{bare: {{wss: await {}, nip11: await {}}}, edge: await {}}}))()",
                nostr_wss_probe(&bare_wss),
                nip11_probe(&bare_https),
                nostr_wss_probe(&edge_wss)
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("the page on the gateway with a certificate: {e}"));
    eprintln!("[probes] {:?}: {seen}", t.elapsed());
    assert_eq!(seen["bare"]["wss"]["ok"], false, "{seen}");
    assert_eq!(seen["bare"]["nip11"]["ok"], false, "{seen}");
    assert_eq!(
        seen["bare"]["nip11"]["error"], "TypeError: Failed to fetch",
        "{seen}"
    );
    // Control: from the same page, the same browser reaches the gateway with the chain.
    assert_eq!(seen["edge"]["ok"], true, "{seen}");
    assert_eq!(seen["edge"]["eose"], true, "{seen}");

    // Opened directly, the bare gateway's address is an error page in the browser. Today
    // the gateway drops the connection after the ClientHello without an alert
    // (`net::ERR_CONNECTION_CLOSED`); a handshake_failure alert would read
    // `net::ERR_SSL_PROTOCOL_ERROR`. Either way no page, no certificate.
    let t = Instant::now();
    let err = browser.eval(&bare_https, "1").await.unwrap_err();
    eprintln!("[navigate] {:?}: {err}", t.elapsed());
    assert!(
        matches!(&err, CdpError::Navigate { error_text, .. }
            if error_text == "net::ERR_CONNECTION_CLOSED" || error_text.starts_with("net::ERR_SSL_")),
        "{err:?}"
    );

    // The gateway knows why: it had no certificate for this client, and completed nothing.
    let after = metrics(bare.admin_addr).await;
    assert!(
        metric(&after, NO_CERTIFICATE) >= metric(&before, NO_CERTIFICATE) + 3.0,
        "one refusal per attempt (WebSocket, fetch, navigation):\n{after}"
    );
    assert_eq!(
        metric_sum(&after, HANDSHAKES),
        metric_sum(&before, HANDSHAKES),
        "{after}"
    );
}

#[tokio::test]
async fn a_browser_on_an_h2_page_opens_its_websocket_as_an_h2_stream() {
    let files = operator_files();
    let Some(browser) = browser(&files).await else {
        return;
    };
    let relay = nostr_relay().await;
    let backend = mosaic_backend().await;
    let gw = gateway_with(&files.tls_with_certificate(), &backend, &relay).await;
    let port = gw.public_addr.port();
    let h2_nostr = "mosaic_gateway_http2_websockets_total{protocol=\"nostr\"}";
    let before = metrics(gw.admin_addr).await;
    assert_eq!(
        metric(&before, h2_nostr),
        0.0,
        "exists from the first scrape"
    );

    // The page comes over h2 (ALPN), and the WebSocket to the same origin rides on that
    // connection as an extended CONNECT stream (RFC 8441) instead of a new TLS connection.
    let page = format!("https://{HOST}:{port}/");
    let js = format!(
        "(async () => ({{page: performance.getEntriesByType('navigation')[0].nextHopProtocol, wss: await {}}}))()",
        nostr_wss_probe(&format!("wss://{HOST}:{port}/")),
    );
    let seen = browser
        .eval(&page, &js)
        .await
        .unwrap_or_else(|e| panic!("the browser could not use the gateway: {e}"));
    eprintln!("[h2 page] {seen}");
    assert_eq!(seen["page"], "h2", "{seen}");
    assert_eq!(seen["wss"]["ok"], true, "{seen}");
    assert_eq!(seen["wss"]["eose"], true, "{seen}");

    let text = metrics(gw.admin_addr).await;
    assert_eq!(
        metric(&text, h2_nostr),
        1.0,
        "the WebSocket came as an h2 stream: {text}"
    );
    let nostr_total = "mosaic_gateway_connections_total{protocol=\"nostr\",route=\"default\"}";
    assert_eq!(metric(&text, nostr_total), 1.0, "and no other: {text}");
}
