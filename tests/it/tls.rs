//! Integration tests for the TLS terminator, backend connectors and key files, over real
//! sockets on 127.0.0.1, with rustls clients and (when installed) the openssl command line.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use mosaic_gateway::keys::{self, KeyError};
use mosaic_gateway::tls::{
    self, BackendConnector, CertificateMode, ClientAuth, ClientIdentity, MinVersion,
    ServerKeyVerifier, TlsTerminator,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

const TIMEOUT: Duration = Duration::from_secs(10);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn pubkey(k: &SigningKey) -> [u8; 32] {
    k.verifying_key().to_bytes()
}

/// What the echo server's `accept` produced for one connection.
type Seen = Result<Option<[u8; 32]>, String>;

/// Starts an echo server that writes back the client key it saw (or `anonymous`), then closes.
async fn start_server(term: TlsTerminator) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let term = Arc::new(term);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let term = term.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(TIMEOUT, term.accept(tcp)).await {
                    Ok(Ok((mut stream, client_key))) => {
                        let line = match client_key {
                            Some(k) => keys::user_key_string(&k),
                            None => "anonymous".to_string(),
                        };
                        let _ = tx.send(Ok(client_key));
                        let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(mosaic_gateway::error::Chain(&e).to_string()));
                    }
                    Err(_) => {
                        let _ = tx.send(Err("server handshake timed out".to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn server_for(
    k: &SigningKey,
    mode: CertificateMode,
    auth: ClientAuth,
    min: MinVersion,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    start_server(TlsTerminator::new(k, mode, auth, min).unwrap()).await
}

/// What a client observed: the server's certificate bytes and the line the server wrote.
struct ClientSaw {
    server_cert: CertificateDer<'static>,
    line: String,
    version: rustls::ProtocolVersion,
}

async fn run_client(addr: SocketAddr, connector: TlsConnector) -> Result<ClientSaw, String> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut s = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // In TLS 1.3 a rejected client certificate only shows on the first read.
        let mut line = String::new();
        s.read_to_string(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let conn = s.get_ref().1;
        Ok(ClientSaw {
            server_cert: conn.peer_certificates().unwrap()[0].clone().into_owned(),
            line: line.trim_end().to_string(),
            version: conn.protocol_version().unwrap(),
        })
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err("client timed out".to_string()))
}

fn connector(config: ClientConfig) -> TlsConnector {
    TlsConnector::from(Arc::new(config))
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .expect("server reported nothing")
        .expect("server channel closed")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ident {
    Rpk,
    X509,
    None,
}

/// The outcome the contract asks for: `None` = refused, else (server sent RPK, key seen).
fn expected(
    mode: CertificateMode,
    auth: ClientAuth,
    offers_rpk_server: bool,
    ident: Ident,
    client_key: [u8; 32],
) -> Option<(bool, Option<[u8; 32]>)> {
    let server_rpk = match (mode, offers_rpk_server) {
        (CertificateMode::Auto, offer) => offer,
        (CertificateMode::RawPublicKey, true) => true,
        (CertificateMode::RawPublicKey, false) => return None,
        // A rustls client that wants a raw key offers only that type.
        (CertificateMode::SelfSigned, true) => return None,
        (CertificateMode::SelfSigned, false) => false,
    };
    if ident == Ident::None && auth == ClientAuth::Required {
        return None;
    }
    let seen = if ident == Ident::None || auth == ClientAuth::None {
        None
    } else {
        Some(client_key)
    };
    Some((server_rpk, seen))
}

#[tokio::test]
async fn matrix_modes_clients_auth() {
    let server_key = key(1);
    let client_key = key(2);
    let mut cases = 0;
    for mode in [
        CertificateMode::Auto,
        CertificateMode::RawPublicKey,
        CertificateMode::SelfSigned,
    ] {
        for auth in [ClientAuth::None, ClientAuth::Optional, ClientAuth::Required] {
            let (addr, mut rx) = server_for(&server_key, mode, auth, MinVersion::Tls12).await;
            for offers_rpk_server in [true, false] {
                for ident in [Ident::Rpk, Ident::X509, Ident::None] {
                    let identity = match ident {
                        Ident::Rpk => ClientIdentity::RawPublicKey(&client_key),
                        Ident::X509 => ClientIdentity::SelfSigned(&client_key),
                        Ident::None => ClientIdentity::Anonymous,
                    };
                    let config =
                        tls::client_config(Some(pubkey(&server_key)), offers_rpk_server, identity)
                            .unwrap();
                    let case = format!(
                        "mode={mode:?} auth={auth:?} client offers RPK server cert={offers_rpk_server} client key={ident:?}"
                    );
                    let got = run_client(addr, connector(config)).await;
                    let seen = next_seen(&mut rx).await;
                    match expected(mode, auth, offers_rpk_server, ident, pubkey(&client_key)) {
                        None => {
                            assert!(got.is_err(), "{case}: client should have failed");
                            assert!(seen.is_err(), "{case}: server should have failed");
                        }
                        Some((server_rpk, key_seen)) => {
                            let saw = got.unwrap_or_else(|e| panic!("{case}: client failed: {e}"));
                            let seen =
                                seen.unwrap_or_else(|e| panic!("{case}: server failed: {e}"));
                            assert_eq!(seen, key_seen, "{case}: key the server saw");
                            let line = match key_seen {
                                Some(k) => keys::user_key_string(&k),
                                None => "anonymous".to_string(),
                            };
                            assert_eq!(saw.line, line, "{case}");
                            let cert = saw.server_cert.as_ref();
                            assert_eq!(cert.len() == 44, server_rpk, "{case}: server cert type");
                            assert_eq!(
                                tls::peer_key(&saw.server_cert),
                                Some(pubkey(&server_key)),
                                "{case}"
                            );
                        }
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 54);
}

#[tokio::test]
async fn resumed_sessions_keep_the_client_key() {
    let server_key = key(12);
    let client_key = key(13);
    let (addr, mut rx) = server_for(
        &server_key,
        CertificateMode::Auto,
        ClientAuth::Optional,
        MinVersion::Tls12,
    )
    .await;
    for (raw, identity) in [
        (true, ClientIdentity::RawPublicKey(&client_key)),
        (false, ClientIdentity::SelfSigned(&client_key)),
    ] {
        let c = connector(tls::client_config(Some(pubkey(&server_key)), raw, identity).unwrap());
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut s = c
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let mut line = String::new();
            s.read_to_string(&mut line).await.unwrap();
            kinds.push(s.get_ref().1.handshake_kind());
            assert_eq!(line.trim_end(), keys::user_key_string(&pubkey(&client_key)));
            assert_eq!(next_seen(&mut rx).await.unwrap(), Some(pubkey(&client_key)));
            assert_eq!(
                tls::peer_key(&s.get_ref().1.peer_certificates().unwrap()[0]),
                Some(pubkey(&server_key))
            );
        }
        assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full), "raw={raw}");
        assert!(
            kinds[1..].contains(&Some(rustls::HandshakeKind::Resumed)),
            "raw={raw}: {kinds:?}"
        );
    }
}

#[test]
fn client_auth_labels() {
    assert_eq!(tls::client_auth_label(None), "anonymous");
    assert_eq!(tls::client_auth_label(Some(&[0; 32])), "authenticated");
}

#[tokio::test]
async fn wrong_pin_is_refused_by_client_config() {
    let server_key = key(3);
    let (addr, mut rx) = server_for(
        &server_key,
        CertificateMode::Auto,
        ClientAuth::Optional,
        MinVersion::Tls12,
    )
    .await;
    for raw in [true, false] {
        let config =
            tls::client_config(Some(pubkey(&key(4))), raw, ClientIdentity::Anonymous).unwrap();
        assert!(run_client(addr, connector(config)).await.is_err());
        assert!(next_seen(&mut rx).await.is_err());
    }
}

#[tokio::test]
async fn backend_connectors_pinned_and_unpinned() {
    let server_key = key(5);
    let right = pubkey(&server_key);
    let wrong = pubkey(&key(6));
    for mode in [
        CertificateMode::Auto,
        CertificateMode::RawPublicKey,
        CertificateMode::SelfSigned,
    ] {
        let (addr, mut rx) =
            server_for(&server_key, mode, ClientAuth::Optional, MinVersion::Tls12).await;
        let rpk_works = mode != CertificateMode::SelfSigned;
        let x509_works = mode != CertificateMode::RawPublicKey;
        for (name, works, right_c, wrong_c, open_c) in [
            (
                "backend_connector",
                rpk_works,
                tls::backend_connector(Some(right)).unwrap(),
                tls::backend_connector(Some(wrong)).unwrap(),
                tls::backend_connector(None).unwrap(),
            ),
            (
                "backend_connector_x509",
                x509_works,
                tls::backend_connector_x509(Some(right)).unwrap(),
                tls::backend_connector_x509(Some(wrong)).unwrap(),
                tls::backend_connector_x509(None).unwrap(),
            ),
        ] {
            let r = run_client(addr, right_c).await;
            assert_eq!(
                r.is_ok(),
                works,
                "{name} right pin, {mode:?}: {:?}",
                r.err()
            );
            assert_eq!(next_seen(&mut rx).await.is_ok(), works);
            if let Ok(saw) = r {
                assert_eq!(saw.line, "anonymous");
            }
            assert!(run_client(addr, wrong_c).await.is_err(), "{name} wrong pin");
            assert!(next_seen(&mut rx).await.is_err());
            let r = run_client(addr, open_c).await;
            assert_eq!(r.is_ok(), works, "{name} unpinned, {mode:?}");
            assert_eq!(next_seen(&mut rx).await.is_ok(), works);
        }

        // The fallback connector reaches every mode, and only with the right pin.
        let open = || TcpStream::connect(addr);
        let name = ServerName::try_from("backend.example").unwrap();
        let bc = BackendConnector::new(Some(right)).unwrap();
        let (mut s, k) = tokio::time::timeout(TIMEOUT, bc.connect(name.clone(), open))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("BackendConnector {mode:?}: {e}"));
        assert_eq!(k, right);
        let mut line = String::new();
        s.read_to_string(&mut line).await.unwrap();
        assert_eq!(line, "anonymous\n");
        // Drain the server reports (one failed RPK attempt first in self-signed mode).
        let mut reports = vec![next_seen(&mut rx).await];
        if mode == CertificateMode::SelfSigned {
            reports.push(next_seen(&mut rx).await);
        }
        assert_eq!(
            reports.iter().filter(|r| r.is_ok()).count(),
            1,
            "{reports:?}"
        );
        let bad = BackendConnector::new(Some(wrong)).unwrap();
        let r = tokio::time::timeout(TIMEOUT, bad.connect(name, open))
            .await
            .unwrap();
        assert!(r.is_err(), "BackendConnector wrong pin {mode:?}");
    }
}

fn tls12_client(pin: [u8; 32], client: Option<&SigningKey>) -> ClientConfig {
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerKeyVerifier::new(Some(pin), false)));
    match client {
        None => b.with_no_client_auth(),
        Some(k) => {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            let der = k.to_pkcs8_der().unwrap();
            b.with_client_auth_cert(
                vec![tls::self_signed_certificate(k).unwrap()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.as_bytes().to_vec())),
            )
            .unwrap()
        }
    }
}

#[tokio::test]
async fn tls12_min_version() {
    let server_key = key(7);
    let client_key = key(8);
    for mode in [CertificateMode::Auto, CertificateMode::SelfSigned] {
        let (addr, mut rx) =
            server_for(&server_key, mode, ClientAuth::Optional, MinVersion::Tls12).await;
        let saw = run_client(addr, connector(tls12_client(pubkey(&server_key), None)))
            .await
            .unwrap();
        assert_eq!(saw.version, rustls::ProtocolVersion::TLSv1_2);
        assert_eq!(saw.line, "anonymous");
        assert_eq!(next_seen(&mut rx).await.unwrap(), None);
        // TLS 1.2 with a self-signed client certificate: the server verifies its signature.
        let saw = run_client(
            addr,
            connector(tls12_client(pubkey(&server_key), Some(&client_key))),
        )
        .await
        .unwrap();
        assert_eq!(saw.version, rustls::ProtocolVersion::TLSv1_2);
        assert_eq!(saw.line, keys::user_key_string(&pubkey(&client_key)));
        assert_eq!(next_seen(&mut rx).await.unwrap(), Some(pubkey(&client_key)));

        let (addr, mut rx) =
            server_for(&server_key, mode, ClientAuth::Optional, MinVersion::Tls13).await;
        assert!(
            run_client(addr, connector(tls12_client(pubkey(&server_key), None)))
                .await
                .is_err()
        );
        assert!(next_seen(&mut rx).await.is_err());
        // A TLS 1.3 client still works.
        let saw = run_client(
            addr,
            tls::backend_connector_x509(Some(pubkey(&server_key))).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(saw.version, rustls::ProtocolVersion::TLSv1_3);
        assert!(next_seen(&mut rx).await.is_ok());
    }
}

// ---------- openssl interop ----------

fn have_openssl() -> bool {
    let ok = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED: openssl not installed");
    }
    ok
}

fn openssl(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `openssl s_client` against `addr`; returns (success, stdout + stderr).
async fn s_client(addr: SocketAddr, extra: &[&str]) -> (bool, String) {
    let connect = addr.to_string();
    let mut args = vec!["s_client", "-connect", connect.as_str(), "-ign_eof"];
    args.extend_from_slice(extra);
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new("openssl")
            .args(&args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn first_pem_cert(text: &str) -> String {
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end_marker = "-----END CERTIFICATE-----";
    let end = text[start..].find(end_marker).unwrap() + start + end_marker.len();
    format!("{}\n", &text[start..end])
}

fn write_key_pem(dir: &Path, name: &str, k: &SigningKey) -> std::path::PathBuf {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let path = dir.join(name);
    let pem = keys::pkcs8_v1(k).to_pkcs8_pem(LineEnding::LF).unwrap();
    std::fs::write(&path, pem.as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test]
async fn openssl_tls13_sees_ed25519_and_the_key_files_key() {
    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("master.pem");
    keys::keygen(&key_path).unwrap();
    let server_key = keys::load_signing_key(&key_path).unwrap();
    let key_pub = openssl(&["pkey", "-in", key_path.to_str().unwrap(), "-pubout"]).stdout;
    for mode in [CertificateMode::SelfSigned, CertificateMode::Auto] {
        for min in [MinVersion::Tls12, MinVersion::Tls13] {
            let (addr, mut rx) = server_for(&server_key, mode, ClientAuth::Optional, min).await;
            let (ok, text) = s_client(addr, &["-tls1_3"]).await;
            assert!(ok, "{mode:?}: s_client failed:\n{text}");
            assert!(text.contains("TLSv1.3"), "{text}");
            assert!(
                text.to_lowercase().contains("peer signature type: ed25519"),
                "no Ed25519 peer signature:\n{text}"
            );
            assert!(text.contains("anonymous"), "{text}");
            let cert_path = dir.path().join("server-cert.pem");
            std::fs::write(&cert_path, first_pem_cert(&text)).unwrap();
            let cert_pub = openssl(&[
                "x509",
                "-in",
                cert_path.to_str().unwrap(),
                "-pubkey",
                "-noout",
            ])
            .stdout;
            assert_eq!(
                cert_pub, key_pub,
                "certificate key differs from the key file's"
            );
            assert_eq!(next_seen(&mut rx).await.unwrap(), None);
        }
    }
}

#[tokio::test]
async fn openssl_client_certificate_and_tls12() {
    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server_key = key(9);
    let ck = dir.path().join("client.pem");
    let cc = dir.path().join("client-cert.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        ck.to_str().unwrap(),
    ]);
    std::fs::set_permissions(&ck, std::fs::Permissions::from_mode(0o600)).unwrap();
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        ck.to_str().unwrap(),
        "-subj",
        "/CN=client",
        "-days",
        "2",
        "-out",
        cc.to_str().unwrap(),
    ]);
    let client_pub = pubkey(&keys::load_signing_key(&ck).unwrap());
    let (addr, mut rx) = server_for(
        &server_key,
        CertificateMode::Auto,
        ClientAuth::Required,
        MinVersion::Tls12,
    )
    .await;
    for version in ["-tls1_3", "-tls1_2"] {
        let (ok, text) = s_client(
            addr,
            &[
                version,
                "-cert",
                cc.to_str().unwrap(),
                "-key",
                ck.to_str().unwrap(),
            ],
        )
        .await;
        assert!(ok, "{version}: {text}");
        assert!(text.contains(&keys::user_key_string(&client_pub)), "{text}");
        assert_eq!(next_seen(&mut rx).await.unwrap(), Some(client_pub));
    }
    // Without a certificate, required client auth refuses the client.
    let (_, text) = s_client(addr, &["-tls1_3"]).await;
    assert!(!text.contains("anonymous"), "{text}");
    assert!(next_seen(&mut rx).await.is_err());
}

#[tokio::test]
async fn openssl_tls11_is_refused() {
    if !have_openssl() {
        return;
    }
    let server_key = key(10);
    let (addr, mut rx) = server_for(
        &server_key,
        CertificateMode::Auto,
        ClientAuth::Optional,
        MinVersion::Tls12,
    )
    .await;
    // OpenSSL 3 only offers TLS 1.1 at security level 0.
    let (ok, text) = s_client(addr, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]).await;
    assert!(!ok, "TLS 1.1 handshake succeeded:\n{text}");
    assert!(!text.contains("anonymous"), "{text}");
    assert!(text.contains("Cipher is (NONE)"), "{text}");
    // rustls refuses the TLS 1.1 ClientHello (it lacks TLS 1.2+ extensions) with an alert.
    let err = next_seen(&mut rx).await.unwrap_err();
    println!("server error for TLS 1.1: {err}");
}

// ---------- key files ----------

#[test]
fn zbase32_known_vector_and_round_trip() {
    assert_eq!(keys::zbase32_encode(&[0xF0, 0xBF, 0xC7]), "6n9hq");
    assert_eq!(
        keys::zbase32_decode("6n9hq").unwrap(),
        vec![0xF0, 0xBF, 0xC7]
    );
    assert_eq!(keys::zbase32_encode(&[0xD4, 0x7A, 0x04]), "4t7ye");
    for seed in 0u8..=20 {
        let k: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(seed));
        let text = keys::encode_key(&k);
        assert_eq!(text.len(), 52);
        assert_eq!(keys::decode_key(&text).unwrap(), k);
        let srv = keys::server_key_string(&k);
        assert_eq!(srv.len(), 58);
        assert!(srv.starts_with("mosrv0"));
        assert_eq!(keys::parse_server_key(&srv).unwrap(), k);
        let user = keys::user_key_string(&k);
        assert!(user.starts_with("mopub0"));
        assert_eq!(user.len(), 58);
        assert!(keys::parse_server_key(&user).is_err());
        assert_eq!(keys::parse_user_key(&user).unwrap(), k);
    }
    assert_eq!(keys::encode_key(&[0; 32]), "y".repeat(52));
    assert!(keys::parse_server_key("mosrv0").is_err());
    assert!(keys::parse_server_key(&format!("mosrv0{}", "y".repeat(51))).is_err());
    assert!(keys::parse_server_key(&format!("mosrv0{}l", "y".repeat(51))).is_err());
    // 52 characters carry 260 bits: the last 4 must be zero.
    assert!(keys::parse_server_key(&format!("mosrv0{}b", "y".repeat(51))).is_err());
    assert!(keys::parse_server_key(&format!("mosrv0{}o", "y".repeat(51))).is_ok());
}

#[test]
fn keygen_writes_0600_and_refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.pem");
    let printed = keys::keygen(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
    let loaded = keys::load_signing_key(&path).unwrap();
    assert_eq!(keys::parse_server_key(&printed).unwrap(), pubkey(&loaded));
    let err = keys::keygen(&path).unwrap_err();
    assert!(matches!(err, KeyError::Exists(_)));
    assert!(err.to_string().contains("master.pem"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn openssl_generated_key_loads() {
    if !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ossl.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        path.to_str().unwrap(),
    ]);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let k = keys::load_signing_key(&path).unwrap();
    let der = openssl(&[
        "pkey",
        "-in",
        path.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ])
    .stdout;
    assert_eq!(der.len(), 44);
    assert_eq!(&der[..12], &tls::ED25519_SPKI_PREFIX);
    assert_eq!(&der[12..], &pubkey(&k));
    // Our own PEM output is also accepted by openssl.
    let ours = write_key_pem(dir.path(), "ours.pem", &k);
    let der2 = openssl(&[
        "pkey",
        "-in",
        ours.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ])
    .stdout;
    assert_eq!(der, der2);
}

#[test]
fn bad_key_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = keys::load_signing_key(&missing).unwrap_err();
    assert!(matches!(err, KeyError::Missing(_)), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let k = key(11);
    let open = write_key_pem(dir.path(), "open.pem", &k);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = keys::load_signing_key(&open).unwrap_err();
    assert!(matches!(err, KeyError::Exposed(..)), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    assert!(err.to_string().contains("open.pem"), "{err}");
    // The gateway's own key may not be shared with its group either.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = keys::load_signing_key(&open).unwrap_err();
    assert!(matches!(err, KeyError::Exposed(..)), "{err}");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(keys::load_signing_key(&open).unwrap(), k);

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello, not a key\n").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = keys::load_signing_key(&junk).unwrap_err();
    assert!(matches!(err, KeyError::NotPem(_)), "{err}");
    assert!(err.to_string().contains("junk.pem"), "{err}");

    let err = keys::load_signing_key(dir.path()).unwrap_err();
    assert!(matches!(err, KeyError::Unreadable(..)), "{err}");

    if !have_openssl() {
        return;
    }
    for (name, args, word) in [
        ("x25519.pem", vec!["-algorithm", "x25519"], "X25519"),
        ("ed448.pem", vec!["-algorithm", "ed448"], "Ed448"),
        (
            "rsa.pem",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
            "RSA",
        ),
        (
            "ec.pem",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "EC",
        ),
    ] {
        let path = dir.path().join(name);
        let mut a = vec!["genpkey"];
        a.extend(args);
        a.extend(["-out", path.to_str().unwrap()]);
        openssl(&a);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = keys::load_signing_key(&path).unwrap_err();
        assert!(matches!(err, KeyError::NotEd25519(..)), "{name}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains(word), "{msg}");
    }
    // A traditional "EC PRIVATE KEY" file.
    let ec = dir.path().join("ec.pem");
    let trad = dir.path().join("ec-trad.pem");
    openssl(&[
        "pkey",
        "-in",
        ec.to_str().unwrap(),
        "-out",
        trad.to_str().unwrap(),
        "-traditional",
    ]);
    std::fs::set_permissions(&trad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = keys::load_signing_key(&trad).unwrap_err();
    assert!(matches!(err, KeyError::NotEd25519(..)), "{err}");
}

// ---------- impostors: a certificate for one key, handshake signed with another ----------

fn signer(k: &SigningKey) -> Arc<dyn rustls::sign::SigningKey> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let der = keys::pkcs8_v1(k).to_pkcs8_der().unwrap();
    rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            der.as_bytes().to_vec(),
        )))
        .unwrap()
}

/// Claims `claimed`'s key (RPK or X.509) but signs with `actual`.
fn impostor_key(
    claimed: &SigningKey,
    actual: &SigningKey,
    raw: bool,
) -> Arc<rustls::sign::CertifiedKey> {
    let cert = if raw {
        CertificateDer::from(tls::ed25519_spki(&pubkey(claimed)))
    } else {
        tls::self_signed_certificate(claimed).unwrap()
    };
    Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signer(actual)))
}

#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>, bool);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn only_raw_public_keys(&self) -> bool {
        self.1
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct FixedServerCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn only_raw_public_keys(&self) -> bool {
        self.0.cert[0].len() == 44
    }
}

#[tokio::test]
async fn impostor_client_is_refused() {
    let server_key = key(14);
    let claimed = key(15);
    let actual = key(16);
    let (addr, mut rx) = server_for(
        &server_key,
        CertificateMode::Auto,
        ClientAuth::Optional,
        MinVersion::Tls12,
    )
    .await;
    for raw in [true, false] {
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ServerKeyVerifier::new(
                    Some(pubkey(&server_key)),
                    raw,
                )))
                .with_client_cert_resolver(Arc::new(FixedClientCert(
                    impostor_key(&claimed, &actual, raw),
                    raw,
                )));
        let r = run_client(addr, connector(config)).await;
        assert!(r.is_err(), "raw={raw}: impostor client accepted");
        let err = next_seen(&mut rx).await.unwrap_err();
        println!("raw={raw}: server refused the impostor: {err}");
    }
}

#[tokio::test]
async fn impostor_server_is_refused() {
    let claimed = key(17);
    let actual = key(18);
    for raw in [true, false] {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedServerCert(impostor_key(
            &claimed, &actual, raw,
        ))));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut s) = acceptor.accept(tcp).await {
                let _ = s.write_all(b"impostor\n").await;
                let _ = s.shutdown().await;
            }
        });
        let c = if raw {
            tls::backend_connector(Some(pubkey(&claimed))).unwrap()
        } else {
            tls::backend_connector_x509(Some(pubkey(&claimed))).unwrap()
        };
        let r = run_client(addr, c).await;
        let err = r
            .err()
            .unwrap_or_else(|| panic!("raw={raw}: impostor server accepted"));
        println!("raw={raw}: client refused the impostor: {err}");
        server.await.unwrap();
    }
}

#[test]
fn config_enums_deserialize_from_their_yaml_spellings() {
    use serde::de::value::{Error, StrDeserializer};
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    fn de<'a, T: Deserialize<'a>>(s: &'a str) -> Result<T, Error> {
        let d: StrDeserializer<'a, Error> = s.into_deserializer();
        T::deserialize(d)
    }
    assert_eq!(
        de::<CertificateMode>("auto").unwrap(),
        CertificateMode::Auto
    );
    assert_eq!(
        de::<CertificateMode>("raw-public-key").unwrap(),
        CertificateMode::RawPublicKey
    );
    assert_eq!(
        de::<CertificateMode>("self-signed").unwrap(),
        CertificateMode::SelfSigned
    );
    assert!(de::<CertificateMode>("x509").is_err());
    assert_eq!(de::<ClientAuth>("none").unwrap(), ClientAuth::None);
    assert_eq!(de::<ClientAuth>("optional").unwrap(), ClientAuth::Optional);
    assert_eq!(de::<ClientAuth>("required").unwrap(), ClientAuth::Required);
    assert_eq!(de::<MinVersion>("1.2").unwrap(), MinVersion::Tls12);
    assert_eq!(de::<MinVersion>("1.3").unwrap(), MinVersion::Tls13);
    assert!(de::<MinVersion>("1.1").is_err());
    assert_eq!(CertificateMode::default(), CertificateMode::Auto);
    assert_eq!(ClientAuth::default(), ClientAuth::Optional);
    assert_eq!(MinVersion::default(), MinVersion::Tls12);
}
