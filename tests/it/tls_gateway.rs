//! TLS end to end through the gateway (issue 3), as an operator sees it: a key file made by
//! `keygen`, a gateway started from YAML with `tls:`, real rustls / OpenSSL clients on
//! 127.0.0.1, and the in-repo Mosaic backend recording what reached it.
//!
//! Every client tags its upgrade with `X-Test-Id`, so what the backend recorded for it can
//! be told apart from the gateway's own health-check upgrades. Health checks run once at
//! start and then every 60s here, so they do not interfere beyond that first round.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::dev::mosaic_backend::{wire, MosaicBackend};
use mosaic_gateway::keys;
use mosaic_gateway::runtime::Running;
use mosaic_gateway::tls::{self, ClientIdentity, ServerKeyVerifier};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A WebSocket over a rustls client stream.
type TlsWs = WebSocketStream<TlsStream<TcpStream>>;

const MOSAIC: (&str, &str) = ("Sec-WebSocket-Protocol", "mosaic2024");
const AUTHENTICATED: &str = "mosaic_gateway_tls_handshakes_total{client_auth=\"authenticated\"}";
const ANONYMOUS: &str = "mosaic_gateway_tls_handshakes_total{client_auth=\"anonymous\"}";

// ---------- the operator's key and gateway ----------

/// The server's master key, written by `keygen` into a temporary directory.
pub(crate) struct MasterKey {
    _dir: tempfile::TempDir,
    path: PathBuf,
    pub(crate) public: [u8; 32],
    mosrv: String,
}

pub(crate) fn master_key() -> MasterKey {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.pem");
    let mosrv = keys::keygen(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "keygen must write the key file with mode 0600");
    let public = keys::parse_server_key(&mosrv).unwrap();
    MasterKey {
        _dir: dir,
        path,
        public,
        mosrv,
    }
}

impl MasterKey {
    /// The `tls:` section for this key.
    pub(crate) fn tls(&self, certificate: &str, client_auth: &str, min_version: &str) -> String {
        format!(
            "tls:\n  key_file: \"{}\"\n  certificate: {certificate}\n  client_auth: {client_auth}\n  min_version: \"{min_version}\"\n",
            self.path.display()
        )
    }
}

/// A `mosaic:` section over these ws:// backends, with health checks out of the way.
pub(crate) fn mosaic_section(
    backends: &[&MosaicBackend],
    authenticated: &[&MosaicBackend],
) -> String {
    let mut y = String::from("mosaic:\n  health_check: { interval: 60s }\n  backends:\n");
    for b in backends {
        y.push_str(&format!("    - url: ws://{}\n", b.local_addr()));
    }
    if !authenticated.is_empty() {
        y.push_str("  authenticated_backends:\n");
        for b in authenticated {
            y.push_str(&format!("    - url: ws://{}\n", b.local_addr()));
        }
    }
    y
}

/// A TLS gateway (`certificate`, `client_auth`, `min_version`) in front of one backend.
pub(crate) async fn tls_gateway(
    master: &MasterKey,
    tls: (&str, &str, &str),
    backend: &MosaicBackend,
    extra: &str,
) -> Running {
    gateway(&format!(
        "{}{}{extra}",
        master.tls(tls.0, tls.1, tls.2),
        mosaic_section(&[backend], &[])
    ))
    .await
}

// ---------- clients ----------

pub(crate) fn client_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub(crate) fn public(k: &SigningKey) -> [u8; 32] {
    k.verifying_key().to_bytes()
}

/// TLS 1.3 client presenting an RFC 7250 raw public key and asking for the server's raw key.
pub(crate) fn rpk_client(pin: [u8; 32], key: &SigningKey) -> ClientConfig {
    tls::client_config(Some(pin), true, ClientIdentity::RawPublicKey(key)).unwrap()
}

/// Client presenting a self-signed X.509 ed25519 certificate, expecting X.509 from the server.
pub(crate) fn x509_client(pin: [u8; 32], key: &SigningKey) -> ClientConfig {
    tls::client_config(Some(pin), false, ClientIdentity::SelfSigned(key)).unwrap()
}

/// Anonymous client; `raw` asks for the server's raw public key.
pub(crate) fn anonymous_client(pin: [u8; 32], raw: bool) -> ClientConfig {
    tls::client_config(Some(pin), raw, ClientIdentity::Anonymous).unwrap()
}

/// TLS 1.2-only client (X.509), anonymous or with a self-signed client certificate.
fn tls12_client(pin: [u8; 32], key: Option<&SigningKey>) -> ClientConfig {
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerKeyVerifier::new(Some(pin), false)));
    with_client_key(b, key)
}

/// TLS handshake, then a WebSocket upgrade with these headers. The error says which step
/// failed (`tls: …` or `upgrade: …`); a TLS 1.3 client-certificate rejection shows as an
/// upgrade failure because it only appears on the client's first read.
pub(crate) async fn tls_upgrade(
    addr: SocketAddr,
    config: ClientConfig,
    headers: &[(&str, &str)],
) -> Result<(TlsWs, Response), String> {
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        let stream = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let mut req = format!("wss://{addr}/").into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| format!("upgrade: {e}"))
    };
    tokio::time::timeout(T, fut)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

/// A Mosaic upgrade over TLS that must succeed; tagged with `X-Test-Id: id`.
pub(crate) async fn tls_mosaic(
    addr: SocketAddr,
    config: ClientConfig,
    id: &str,
    extra: &[(&str, &str)],
) -> TlsWs {
    let mut headers = vec![MOSAIC, ("X-Test-Id", id)];
    headers.extend_from_slice(extra);
    let (ws, resp) = tls_upgrade(addr, config, &headers)
        .await
        .unwrap_or_else(|e| panic!("client {id}: Mosaic upgrade over TLS failed: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mosaic2024")
    );
    ws
}

fn tls_version(ws: &TlsWs) -> rustls::ProtocolVersion {
    ws.get_ref().get_ref().1.protocol_version().unwrap()
}

/// Sends a Submission and expects its Submission Result (0x83) echoing the record's id bytes.
pub(crate) async fn submit<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    tag: u8,
) {
    let record: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(31) ^ tag).collect();
    ws.send(Message::Binary(wire::submission(&record).into()))
        .await
        .unwrap();
    let reply = loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("Submission Result in time")
            .expect("connection open")
            .expect("no WebSocket error");
        match m {
            Message::Binary(b) => break b.to_vec(),
            Message::Close(c) => panic!("closed instead of a Submission Result: {c:?}"),
            _ => continue,
        }
    };
    assert_eq!(reply[0], wire::SUBMISSION_RESULT, "reply {reply:02x?}");
    assert_eq!(reply.len(), 36);
    assert_eq!(
        &reply[4..36],
        &record[..32],
        "Submission Result names another record"
    );
}

// ---------- what the backend saw ----------

/// The upgrade request headers the backend recorded for the client tagged `id`.
pub(crate) fn seen_by(backend: &MosaicBackend, id: &str) -> HeaderMap {
    let found: Vec<HeaderMap> = backend
        .request_headers()
        .into_iter()
        .filter(|h| h.get("x-test-id").and_then(|v| v.to_str().ok()) == Some(id))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "backend saw client {id} {} times",
        found.len()
    );
    found.into_iter().next().unwrap()
}

fn never_seen(backend: &MosaicBackend, id: &str) -> bool {
    !backend
        .request_headers()
        .iter()
        .any(|h| h.get("x-test-id").and_then(|v| v.to_str().ok()) == Some(id))
}

/// Every `X-Mosaic-Client-Key` value in `h`.
fn client_keys(h: &HeaderMap) -> Vec<String> {
    h.get_all("x-mosaic-client-key")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn forwarded_proto(h: &HeaderMap) -> Option<&str> {
    h.get("x-forwarded-proto").and_then(|v| v.to_str().ok())
}

// ---------- admin ----------

async fn tls_handshakes(admin: SocketAddr) -> (f64, f64) {
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200, "/metrics answered {status}");
    (metric(&body, AUTHENTICATED), metric(&body, ANONYMOUS))
}

/// Polls `/metrics` until tls_handshakes_total is (authenticated, anonymous) = `want`.
async fn wait_for_handshakes(admin: SocketAddr, want: (f64, f64)) {
    let start = Instant::now();
    loop {
        let got = tls_handshakes(admin).await;
        if got == want {
            return;
        }
        if start.elapsed() > T {
            panic!("tls_handshakes_total (authenticated, anonymous) is {got:?}, expected {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------- 1. keyed clients ----------

#[tokio::test]
async fn keyed_clients_reach_mosaic_with_their_key_in_x_mosaic_client_key() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let gw = tls_gateway(&master, ("auto", "optional", "1.2"), &backend, "").await;

    // RFC 7250 raw public key on both sides (TLS 1.3).
    let rpk = client_key(11);
    let mut ws = tls_mosaic(gw.public_addr, rpk_client(master.public, &rpk), "rpk", &[]).await;
    assert_eq!(tls_version(&ws), rustls::ProtocolVersion::TLSv1_3);
    let server_cert = ws.get_ref().get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        server_cert.as_ref(),
        tls::ed25519_spki(&master.public).as_slice(),
        "an RPK client gets the key file's key as a raw public key"
    );
    let h = seen_by(&backend, "rpk");
    let expected = keys::user_key_string(&public(&rpk));
    assert!(expected.starts_with("mopub0"));
    assert_eq!(client_keys(&h), vec![expected]);
    assert_eq!(forwarded_proto(&h), Some("https"));
    submit(&mut ws, 1).await;

    // Self-signed X.509 ed25519 client certificate.
    let x509 = client_key(12);
    let mut ws = tls_mosaic(
        gw.public_addr,
        x509_client(master.public, &x509),
        "x509",
        &[],
    )
    .await;
    let server_cert = ws.get_ref().get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        tls::peer_key(&server_cert),
        Some(master.public),
        "an X.509 client gets a certificate on the key file's key"
    );
    assert_ne!(
        server_cert.as_ref(),
        tls::ed25519_spki(&master.public).as_slice()
    );
    let h = seen_by(&backend, "x509");
    assert_eq!(client_keys(&h), vec![keys::user_key_string(&public(&x509))]);
    assert_eq!(forwarded_proto(&h), Some("https"));
    submit(&mut ws, 2).await;
}

// ---------- 2. anonymous clients, forged headers ----------

#[tokio::test]
async fn anonymous_clients_carry_no_client_key_and_forged_keys_never_reach_the_backend() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let gw = tls_gateway(&master, ("auto", "optional", "1.2"), &backend, "").await;
    let forged = keys::user_key_string(&[7u8; 32]);

    // Anonymous over TLS (raw-key and X.509 server certificates).
    for (id, raw) in [("anon-rpk", true), ("anon-x509", false)] {
        let mut ws = tls_mosaic(
            gw.public_addr,
            anonymous_client(master.public, raw),
            id,
            &[],
        )
        .await;
        let h = seen_by(&backend, id);
        assert!(client_keys(&h).is_empty(), "{id}: {h:?}");
        assert_eq!(forwarded_proto(&h), Some("https"));
        submit(&mut ws, 3).await;
    }

    // Anonymous over TLS, claiming someone's key in the header.
    let _ws = tls_mosaic(
        gw.public_addr,
        anonymous_client(master.public, true),
        "anon-forger",
        &[("X-Mosaic-Client-Key", &forged)],
    )
    .await;
    let h = seen_by(&backend, "anon-forger");
    assert!(
        client_keys(&h).is_empty(),
        "forged key passed through: {h:?}"
    );

    // A keyed client that also sends a forged header: only its real key arrives.
    let real = client_key(21);
    let _ws = tls_mosaic(
        gw.public_addr,
        rpk_client(master.public, &real),
        "keyed-forger",
        &[
            ("X-Mosaic-Client-Key", &forged),
            ("x-mosaic-client-key", &forged),
        ],
    )
    .await;
    let h = seen_by(&backend, "keyed-forger");
    assert_eq!(client_keys(&h), vec![keys::user_key_string(&public(&real))]);

    // Plain ws:// gateway: a forged key and a forged X-Forwarded-Proto are both replaced.
    let plain = gateway(&mosaic_section(&[&backend], &[])).await;
    let (mut ws, _) = connect(
        plain.public_addr,
        &[
            MOSAIC,
            ("X-Test-Id", "plain-forger"),
            ("X-Mosaic-Client-Key", &forged),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    .await
    .expect("plain Mosaic upgrade");
    let h = seen_by(&backend, "plain-forger");
    assert!(
        client_keys(&h).is_empty(),
        "forged key passed through ws://: {h:?}"
    );
    assert_eq!(forwarded_proto(&h), Some("http"));
    submit(&mut ws, 4).await;
}

// ---------- 3. client_auth: required ----------

#[tokio::test]
async fn required_client_auth_refuses_anonymous_clients_and_accepts_keyed_ones() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let gw = tls_gateway(&master, ("auto", "required", "1.2"), &backend, "").await;

    // TLS 1.3 anonymous clients: connect() may return, the refusal shows on the first read.
    for (id, config) in [
        ("anon-rpk", anonymous_client(master.public, true)),
        ("anon-x509", anonymous_client(master.public, false)),
        ("anon-tls12", tls12_client(master.public, None)),
    ] {
        let r = tls_upgrade(gw.public_addr, config, &[MOSAIC, ("X-Test-Id", id)]).await;
        let err = r
            .err()
            .unwrap_or_else(|| panic!("{id}: anonymous client was accepted"));
        println!("{id} refused: {err}");
        assert!(never_seen(&backend, id), "{id} reached the backend");
    }

    // Keyed clients are accepted, over TLS 1.3 (RPK, X.509) and TLS 1.2 (X.509).
    let k = client_key(31);
    for (id, config) in [
        ("keyed-rpk", rpk_client(master.public, &k)),
        ("keyed-x509", x509_client(master.public, &k)),
        ("keyed-tls12", tls12_client(master.public, Some(&k))),
    ] {
        let mut ws = tls_mosaic(gw.public_addr, config, id, &[]).await;
        assert_eq!(
            client_keys(&seen_by(&backend, id)),
            vec![keys::user_key_string(&public(&k))]
        );
        submit(&mut ws, 5).await;
    }
    // Refused handshakes are not counted; the three keyed ones are.
    wait_for_handshakes(gw.admin_addr, (3.0, 0.0)).await;
}

// ---------- 4. authenticated_backends ----------

#[tokio::test]
async fn authenticated_backends_serve_keyed_clients_and_the_default_pool_serves_the_rest() {
    let master = master_key();
    let default = mosaic_backend().await;
    let authenticated = mosaic_backend().await;
    let gw = gateway(&format!(
        "{}{}",
        master.tls("auto", "optional", "1.2"),
        mosaic_section(&[&default], &[&authenticated])
    ))
    .await;

    // The gateway's own health checks also open short connections to both backends, so
    // connection counts are polled until they settle on the clients' connections.
    let k = client_key(41);
    let mut keyed = tls_mosaic(gw.public_addr, rpk_client(master.public, &k), "keyed", &[]).await;
    eventually(
        "the keyed client is on the authenticated backend only",
        || authenticated.connections() == 1 && default.connections() == 0,
    )
    .await;
    assert_eq!(
        client_keys(&seen_by(&authenticated, "keyed")),
        vec![keys::user_key_string(&public(&k))]
    );
    submit(&mut keyed, 6).await;

    let mut anon = tls_mosaic(
        gw.public_addr,
        anonymous_client(master.public, true),
        "anon",
        &[],
    )
    .await;
    eventually("the anonymous client is on the default backend", || {
        default.connections() == 1 && authenticated.connections() == 1
    })
    .await;
    assert!(client_keys(&seen_by(&default, "anon")).is_empty());
    assert!(never_seen(&authenticated, "anon"));
    assert!(never_seen(&default, "keyed"));
    submit(&mut anon, 7).await;

    // A keyed X.509 client goes to the authenticated pool as well.
    let k2 = client_key(42);
    let _x = tls_mosaic(
        gw.public_addr,
        x509_client(master.public, &k2),
        "keyed-x509",
        &[],
    )
    .await;
    eventually(
        "both keyed clients are on the authenticated backend",
        || authenticated.connections() == 2 && default.connections() == 1,
    )
    .await;
    assert_eq!(
        client_keys(&seen_by(&authenticated, "keyed-x509")),
        vec![keys::user_key_string(&public(&k2))]
    );
    assert!(never_seen(&default, "keyed-x509"));
}

// ---------- 5. pinning and TLS 1.2 ----------

#[tokio::test]
async fn clients_pinning_the_key_files_mosrv_key_connect_and_a_wrong_pin_fails() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let gw = tls_gateway(&master, ("auto", "optional", "1.2"), &backend, "").await;

    // The pin an operator hands out is what keygen printed; it is the terminator's key.
    let served = gw
        .app
        .gateway()
        .tls
        .as_ref()
        .unwrap()
        .server_public_key()
        .unwrap();
    assert_eq!(keys::server_key_string(&served), master.mosrv);
    let pin = keys::parse_server_key(&master.mosrv).unwrap();

    for raw in [true, false] {
        let mut ws = tls_mosaic(
            gw.public_addr,
            anonymous_client(pin, raw),
            &format!("pinned-{raw}"),
            &[],
        )
        .await;
        submit(&mut ws, 8).await;
    }

    let wrong = public(&client_key(51));
    for raw in [true, false] {
        let id = format!("wrong-pin-{raw}");
        let err = tls_upgrade(
            gw.public_addr,
            anonymous_client(wrong, raw),
            &[MOSAIC, ("X-Test-Id", &id)],
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{id}: connected despite a wrong pin"));
        assert!(
            err.starts_with("tls:"),
            "{id}: expected a TLS failure, got {err}"
        );
        assert!(never_seen(&backend, &id));
    }
    let Err(err) = tls_upgrade(gw.public_addr, tls12_client(wrong, None), &[MOSAIC]).await else {
        panic!("TLS 1.2 client connected despite a wrong pin");
    };
    assert!(err.starts_with("tls:"), "{err}");
}

#[tokio::test]
async fn tls12_with_the_self_signed_certificate_works_end_to_end_and_min_version_13_refuses_it() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let gw = tls_gateway(&master, ("self-signed", "optional", "1.2"), &backend, "").await;

    let mut ws = tls_mosaic(
        gw.public_addr,
        tls12_client(master.public, None),
        "tls12-anon",
        &[],
    )
    .await;
    assert_eq!(tls_version(&ws), rustls::ProtocolVersion::TLSv1_2);
    let h = seen_by(&backend, "tls12-anon");
    assert!(client_keys(&h).is_empty());
    assert_eq!(forwarded_proto(&h), Some("https"));
    submit(&mut ws, 9).await;

    let k = client_key(52);
    let mut ws = tls_mosaic(
        gw.public_addr,
        tls12_client(master.public, Some(&k)),
        "tls12-keyed",
        &[],
    )
    .await;
    assert_eq!(tls_version(&ws), rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(
        client_keys(&seen_by(&backend, "tls12-keyed")),
        vec![keys::user_key_string(&public(&k))]
    );
    submit(&mut ws, 10).await;

    let gw13 = tls_gateway(&master, ("self-signed", "optional", "1.3"), &backend, "").await;
    let Err(err) = tls_upgrade(
        gw13.public_addr,
        tls12_client(master.public, None),
        &[MOSAIC, ("X-Test-Id", "tls12-on-13")],
    )
    .await
    else {
        panic!("a TLS 1.2 client got through min_version 1.3");
    };
    assert!(err.starts_with("tls:"), "{err}");
    assert!(never_seen(&backend, "tls12-on-13"));
    // The same gateway still serves TLS 1.3 with its self-signed certificate.
    let mut ws = tls_mosaic(
        gw13.public_addr,
        anonymous_client(master.public, false),
        "tls13-on-13",
        &[],
    )
    .await;
    assert_eq!(tls_version(&ws), rustls::ProtocolVersion::TLSv1_3);
    submit(&mut ws, 11).await;
}

// ---------- 6. openssl s_client ----------

fn have_openssl() -> bool {
    let ok = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED: openssl is not installed");
    }
    ok
}

fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn first_pem_cert(text: &str) -> String {
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no server certificate in s_client output:\n{text}"));
    let end_marker = "-----END CERTIFICATE-----";
    let end = text[start..].find(end_marker).unwrap() + start + end_marker.len();
    format!("{}\n", &text[start..end])
}

#[tokio::test]
async fn openssl_s_client_sees_tls13_ed25519_and_the_key_files_public_key_and_upgrades() {
    if !have_openssl() {
        return;
    }
    let master = master_key();
    let backend = mosaic_backend().await;
    let gw = tls_gateway(&master, ("auto", "optional", "1.2"), &backend, "").await;

    let connect_to = gw.public_addr.to_string();
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &connect_to,
            "-tls1_3",
            "-ign_eof",
            "-nocommands",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let request =
        "GET / HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Protocol: mosaic2024\r\nX-Test-Id: s_client\r\n\r\n";
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request.as_bytes()).await.unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(T, async {
        loop {
            let n = stdout.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if let Some(at) = text.find("HTTP/1.1 101") {
                if text[at..].contains("\r\n\r\n") {
                    break;
                }
            }
        }
    })
    .await;
    let _ = child.start_kill();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        read.is_ok(),
        "no 101 from the gateway through s_client:\n{text}"
    );
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(
        text.to_lowercase().contains("peer signature type: ed25519"),
        "no Ed25519 peer signature:\n{text}"
    );
    let lower = text.to_lowercase();
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{text}"
    );
    assert!(
        lower.contains("sec-websocket-protocol: mosaic2024"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("server-cert.pem");
    std::fs::write(&cert_path, first_pem_cert(&text)).unwrap();
    let cert_pub = openssl(&[
        "x509",
        "-in",
        cert_path.to_str().unwrap(),
        "-pubkey",
        "-noout",
    ]);
    let key_pub = openssl(&["pkey", "-in", master.path.to_str().unwrap(), "-pubout"]);
    assert_eq!(
        cert_pub, key_pub,
        "the certificate's key is not the key file's"
    );

    let h = seen_by(&backend, "s_client");
    assert!(client_keys(&h).is_empty());
    assert_eq!(forwarded_proto(&h), Some("https"));
}

// ---------- 7. wss:// backends ----------

#[tokio::test]
async fn a_tls_gateway_serves_as_a_pinned_wss_backend_for_another_gateway() {
    let master = master_key();
    let backend = mosaic_backend().await;
    // The second gateway terminates TLS in front of the Mosaic backend: a wss:// backend.
    let inner = tls_gateway(&master, ("auto", "optional", "1.2"), &backend, "").await;
    let outer = gateway(&format!(
        "mosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: wss://{}\n      pin: {}\n",
        inner.public_addr, master.mosrv
    ))
    .await;

    let forged = keys::user_key_string(&[7u8; 32]);
    let (mut ws, resp) = connect(
        outer.public_addr,
        &[
            MOSAIC,
            ("X-Test-Id", "via-wss"),
            ("X-Mosaic-Client-Key", &forged),
        ],
    )
    .await
    .expect("Mosaic upgrade through a wss:// backend");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mosaic2024")
    );
    submit(&mut ws, 12).await;
    submit(&mut ws, 13).await;
    let h = seen_by(&backend, "via-wss");
    assert_eq!(
        forwarded_proto(&h),
        Some("https"),
        "the hop to the inner gateway was TLS"
    );
    assert!(client_keys(&h).is_empty(), "{h:?}");
    // The outer gateway connects as an anonymous TLS client (for the client above and for
    // its own health checks), never as an authenticated one.
    let start = Instant::now();
    loop {
        let (authenticated, anonymous) = tls_handshakes(inner.admin_addr).await;
        assert_eq!(authenticated, 0.0);
        if anonymous >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < T,
            "no anonymous TLS handshake counted on the inner gateway"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_wss_backend_with_the_wrong_pin_is_answered_502() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let inner = tls_gateway(&master, ("auto", "optional", "1.2"), &backend, "").await;
    let wrong = keys::server_key_string(&public(&client_key(71)));
    let outer = gateway(&format!(
        "mosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: wss://{}\n      pin: {wrong}\n",
        inner.public_addr
    ))
    .await;
    // 502 while the backend is still believed up; 503 only once it is marked down (the
    // gateway's own start-up health check also fails against it).
    for id in ["wrong-pin", "wrong-pin-2"] {
        let status = refused_status(outer.public_addr, &[MOSAIC, ("X-Test-Id", id)]).await;
        if status == 503 {
            let (_, body) = admin_get(outer.admin_addr, "/metrics").await;
            assert!(
                body.lines()
                    .any(|l| l.starts_with("mosaic_gateway_backend_up{")
                        && l.contains("pool=\"default\"")
                        && l.ends_with(" 0")),
                "503 but the backend is not marked down:\n{body}"
            );
        } else {
            assert_eq!(status, 502, "{id}: a wrongly pinned backend must not pass");
        }
    }
    assert!(never_seen(&backend, "wrong-pin"));
    assert!(never_seen(&backend, "wrong-pin-2"));
    // The inner gateway never completed a handshake with the outer one.
    assert_eq!(tls_handshakes(inner.admin_addr).await, (0.0, 0.0));
}

#[test]
fn check_config_accepts_pin_only_on_wss_backends() {
    let master = master_key();
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, yaml: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mosaic-gateway"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = check(
        "wss.yaml",
        format!(
            "{}mosaic:\n  backends:\n    - url: wss://127.0.0.1:9443\n      pin: {}\n",
            master.tls("auto", "optional", "1.2"),
            master.mosrv
        ),
    );
    assert_eq!(code, Some(0), "wss:// with a pin: {stdout}{stderr}");

    let (code, _, stderr) = check(
        "ws.yaml",
        format!(
            "mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\n      pin: {}\n",
            master.mosrv
        ),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("mosaic.backends[0].pin: only wss:// backends can be pinned"),
        "{stderr}"
    );

    let (code, _, stderr) = check(
        "bad-pin.yaml",
        "mosaic:\n  authenticated_backends:\n    - url: wss://127.0.0.1:9443\n      pin: mopub0nope\n  backends:\n    - url: ws://127.0.0.1:8081\n"
            .to_string(),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("mosaic.authenticated_backends[0].pin:"),
        "{stderr}"
    );
}

// ---------- 8. metrics ----------

#[tokio::test]
async fn tls_handshakes_total_counts_authenticated_and_anonymous_clients() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let gw = tls_gateway(&master, ("auto", "optional", "1.2"), &backend, "").await;
    assert_eq!(tls_handshakes(gw.admin_addr).await, (0.0, 0.0));

    // A client that gives up on a wrong pin completes no handshake.
    let wrong = public(&client_key(81));
    assert!(
        tls_upgrade(gw.public_addr, anonymous_client(wrong, true), &[MOSAIC])
            .await
            .is_err()
    );

    let k = client_key(82);
    let _a = tls_mosaic(
        gw.public_addr,
        anonymous_client(master.public, true),
        "a1",
        &[],
    )
    .await;
    wait_for_handshakes(gw.admin_addr, (0.0, 1.0)).await;
    let _b = tls_mosaic(gw.public_addr, rpk_client(master.public, &k), "k1", &[]).await;
    wait_for_handshakes(gw.admin_addr, (1.0, 1.0)).await;
    let _c = tls_mosaic(gw.public_addr, x509_client(master.public, &k), "k2", &[]).await;
    let _d = tls_mosaic(gw.public_addr, tls12_client(master.public, None), "a2", &[]).await;
    let _e = tls_mosaic(
        gw.public_addr,
        tls12_client(master.public, Some(&k)),
        "k3",
        &[],
    )
    .await;
    wait_for_handshakes(gw.admin_addr, (3.0, 2.0)).await;
}

// ---------- 9. slow and broken clients ----------

/// Reads until the peer closes (EOF or reset); returns how long that took, or None.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn garbage_and_silent_clients_do_not_block_others_and_silent_ones_are_cut_at_the_handshake_timeout(
) {
    let master = master_key();
    let backend = mosaic_backend().await;
    let gw = tls_gateway(
        &master,
        ("auto", "optional", "1.2"),
        &backend,
        "limits:\n  handshake_timeout: 500ms\n",
    )
    .await;

    // Opens TCP and says nothing.
    let mut silent = TcpStream::connect(gw.public_addr).await.unwrap();
    let silent_since = Instant::now();
    // Speaks plain HTTP (not a ClientHello) to the TLS port, then junk.
    let mut garbage = TcpStream::connect(gw.public_addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x16\x03\x01junk")
        .await
        .unwrap();
    // Finishes TLS, then sends no HTTP request.
    let tcp = TcpStream::connect(gw.public_addr).await.unwrap();
    let mut tls_silent = TlsConnector::from(Arc::new(anonymous_client(master.public, true)))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake of the HTTP-silent client");
    let tls_silent_since = Instant::now();

    // Meanwhile another client connects and works.
    let k = client_key(91);
    let mut ws = tls_mosaic(gw.public_addr, rpk_client(master.public, &k), "good", &[]).await;
    submit(&mut ws, 14).await;

    let took = closed_within(&mut garbage, T)
        .await
        .expect("the gateway closes a connection that sent garbage instead of a ClientHello");
    println!("garbage client closed after {took:?}");

    let _took = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("the gateway cuts a silent client at limits.handshake_timeout");
    let waited = silent_since.elapsed();
    println!("silent client cut after {waited:?}");
    assert!(
        waited >= Duration::from_millis(400),
        "cut before the handshake timeout: {waited:?}"
    );

    closed_within(&mut tls_silent, Duration::from_secs(5))
        .await
        .expect("the gateway cuts a client that finished TLS but sent no request");
    let waited = tls_silent_since.elapsed();
    println!("TLS-but-no-HTTP client cut after {waited:?}");
    assert!(
        waited >= Duration::from_millis(400),
        "cut before the handshake timeout: {waited:?}"
    );

    // The good client is unaffected, and a new one still gets in.
    submit(&mut ws, 15).await;
    let mut ws2 = tls_mosaic(
        gw.public_addr,
        anonymous_client(master.public, false),
        "late",
        &[],
    )
    .await;
    submit(&mut ws2, 16).await;
    // Only the completed handshakes count: "good", the HTTP-silent one and "late".
    wait_for_handshakes(gw.admin_addr, (1.0, 2.0)).await;
}

// ---------- certificate modes, key file ----------

#[tokio::test]
async fn raw_public_key_mode_serves_rpk_clients_only_and_self_signed_mode_x509_clients_only() {
    let master = master_key();
    let backend = mosaic_backend().await;
    let k = client_key(101);

    let rpk_only = tls_gateway(&master, ("raw-public-key", "optional", "1.3"), &backend, "").await;
    let mut ws = tls_mosaic(
        rpk_only.public_addr,
        rpk_client(master.public, &k),
        "rpk-mode-rpk",
        &[],
    )
    .await;
    assert_eq!(
        ws.get_ref().get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        tls::ed25519_spki(&master.public).as_slice()
    );
    submit(&mut ws, 17).await;
    for (id, config) in [
        ("rpk-mode-x509", x509_client(master.public, &k)),
        ("rpk-mode-x509-anon", anonymous_client(master.public, false)),
    ] {
        let r = tls_upgrade(rpk_only.public_addr, config, &[MOSAIC, ("X-Test-Id", id)]).await;
        let err = r
            .err()
            .unwrap_or_else(|| panic!("{id}: X.509-only client got through raw-public-key mode"));
        assert!(err.starts_with("tls:"), "{id}: {err}");
        assert!(never_seen(&backend, id));
    }

    let x509_only = tls_gateway(&master, ("self-signed", "optional", "1.2"), &backend, "").await;
    let mut ws = tls_mosaic(
        x509_only.public_addr,
        x509_client(master.public, &k),
        "x509-mode-x509",
        &[],
    )
    .await;
    assert_eq!(
        tls::peer_key(&ws.get_ref().get_ref().1.peer_certificates().unwrap()[0]),
        Some(master.public)
    );
    assert_eq!(
        client_keys(&seen_by(&backend, "x509-mode-x509")),
        vec![keys::user_key_string(&public(&k))]
    );
    submit(&mut ws, 18).await;
    // A client that accepts only a raw server key cannot talk to an X.509-only server.
    let r = tls_upgrade(
        x509_only.public_addr,
        anonymous_client(master.public, true),
        &[MOSAIC, ("X-Test-Id", "x509-mode-rpk")],
    )
    .await;
    assert!(r.is_err(), "RPK-only client got through self-signed mode");
    assert!(never_seen(&backend, "x509-mode-rpk"));
}

#[tokio::test]
async fn a_group_readable_key_file_stops_the_gateway_and_check_config_says_chmod_600() {
    let master = master_key();
    // Group-readable, the gateway's own file: refused like a world-readable one.
    std::fs::set_permissions(&master.path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\n{}mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\n",
        master.tls("auto", "optional", "1.2")
    );
    let cfg = mosaic_gateway::config::parse(&yaml).unwrap();
    let err = mosaic_gateway::runtime::start(cfg, None)
        .await
        .err()
        .expect("the gateway started with a group-readable key file");
    assert!(
        matches!(
            err,
            mosaic_gateway::runtime::StartError::Build(mosaic_gateway::BuildError::Key(_))
        ),
        "{err:?}"
    );
    // What the operator reads: the error and its causes, one line.
    let text = mosaic_gateway::error::Chain(&err).to_string();
    assert!(
        text.starts_with("tls.key_file: ") && text.contains("chmod 600") && text.contains("640"),
        "{text}"
    );
    assert!(text.contains(&master.path.display().to_string()), "{text}");

    let path = master.path.with_file_name("gateway.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mosaic-gateway"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tls.key_file") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&master.path.display().to_string()),
        "{stderr}"
    );
}
