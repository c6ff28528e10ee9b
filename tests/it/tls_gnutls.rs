//! Another TLS stack against the gateway: GnuTLS's `gnutls-cli`, for the X.509 certificate
//! (TLS 1.3 and 1.2) and for RFC 7250 raw public keys both ways. Skips with a note when
//! gnutls-cli is not installed (`.ci/run` installs it).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::*;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey;

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mosaic2024\r\n\r\n";

fn have_gnutls() -> bool {
    let ok = Command::new("gnutls-cli").arg("--version").output().is_ok();
    if !ok {
        eprintln!("note: gnutls-cli not installed; skipping the GnuTLS interop scenarios");
    }
    ok
}

/// Runs gnutls-cli with `args`, sends the upgrade, returns everything it printed.
async fn gnutls(port: u16, args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("timeout")
            .arg("10")
            .arg("gnutls-cli")
            .args(&args)
            .args(["--port", &port.to_string(), "127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(UPGRADE.as_bytes()).unwrap();
        // Keep stdin open a moment so the 101 arrives before gnutls-cli says goodbye.
        std::thread::sleep(std::time::Duration::from_millis(700));
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn gnutls_clients_get_ed25519_over_x509_and_raw_public_keys() {
    if !have_gnutls() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server_key = dir.path().join("master.pem");
    mosaic_gateway::keys::keygen(&server_key).unwrap();
    let backend = mosaic_backend().await;
    let gw = gateway(&format!(
        "tls:\n  key_file: \"{}\"\n  certificate: auto\n  client_auth: optional\n  min_version: \"1.2\"\nmosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: ws://{}\n",
        server_key.display(),
        backend.local_addr()
    ))
    .await;
    let port = gw.public_addr.port();

    // X.509, TLS 1.3, anonymous.
    let out = gnutls(port, vec!["--insecure".into()]).await;
    assert!(out.contains("(TLS1.3-X.509)"), "{out}");
    assert!(out.contains("EdDSA-Ed25519"), "{out}");
    assert!(out.contains("HTTP/1.1 101"), "{out}");
    let h = backend.last_request_headers().unwrap();
    assert_eq!(h["x-forwarded-proto"], "https");
    assert!(h.get("x-mosaic-client-key").is_none());

    // X.509, TLS 1.2.
    let out = gnutls(
        port,
        vec![
            "--insecure".into(),
            "--priority".into(),
            "NORMAL:-VERS-ALL:+VERS-TLS1.2".into(),
        ],
    )
    .await;
    assert!(out.contains("(TLS1.2-X.509)"), "{out}");
    assert!(out.contains("HTTP/1.1 101"), "{out}");

    // Raw public keys both ways: the client proves its key, the backend hears it.
    let client_key = dir.path().join("client.pem");
    mosaic_gateway::keys::keygen(&client_key).unwrap();
    let signing = mosaic_gateway::keys::load_signing_key(&client_key).unwrap();
    let public = signing.verifying_key();
    let client_pub = dir.path().join("client.pub");
    std::fs::write(
        &client_pub,
        public.to_public_key_pem(LineEnding::LF).unwrap(),
    )
    .unwrap();
    let out = gnutls(
        port,
        vec![
            "--insecure".into(),
            "--priority".into(),
            "NORMAL:+CTYPE-CLI-RAWPK:-CTYPE-SRV-ALL:+CTYPE-SRV-RAWPK".into(),
            "--rawpkkeyfile".into(),
            client_key.display().to_string(),
            "--rawpkfile".into(),
            client_pub.display().to_string(),
        ],
    )
    .await;
    assert!(out.contains("(TLS1.3-Raw Public Key)"), "{out}");
    assert!(out.contains("HTTP/1.1 101"), "{out}");
    let h = backend.last_request_headers().unwrap();
    assert_eq!(
        h["x-mosaic-client-key"],
        mosaic_gateway::keys::user_key_string(&public.to_bytes()).as_str()
    );
}
