//! `mosaic-gateway dev`, as a newcomer runs it: one command serves Mosaic (ws:// and wss://
//! with the printed key) and nostr, and prints where everything is.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::SinkExt;
use mosaic_gateway::dev::mosaic_backend::wire;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn dev_serves_mosaic_over_ws_and_wss_and_nostr_from_one_command() {
    let (ws_port, tls_port, admin_port) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_mosaic-gateway"))
        .arg("dev")
        .args(["--listen", &format!("127.0.0.1:{ws_port}")])
        .args(["--tls-listen", &format!("127.0.0.1:{tls_port}")])
        .args(["--admin", &format!("127.0.0.1:{admin_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Collect the banner up to the key line.
    let mut banner = Vec::new();
    let start = Instant::now();
    let key = loop {
        let line = rx.recv_timeout(T).expect("dev prints its banner");
        banner.push(line.clone());
        if let Some(k) = line.split("server key (ephemeral):").nth(1) {
            break k.trim().to_string();
        }
        assert!(start.elapsed() < T);
    };
    let text = banner.join("\n");
    assert!(
        text.contains(&format!("ws://127.0.0.1:{ws_port}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("wss://127.0.0.1:{tls_port}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("http://127.0.0.1:{admin_port}/metrics")),
        "{text}"
    );
    assert!(key.starts_with("mosrv0") && key.len() == 58, "{key}");
    let ws_addr: std::net::SocketAddr = format!("127.0.0.1:{ws_port}").parse().unwrap();

    // Mosaic over ws://.
    let mut m = mosaic_client(ws_addr).await;
    send(&mut m, wire::submission(&[5u8; 64])).await;
    let res = recv(&mut m).await;
    assert_eq!((res[0], res[3]), (0x83, 0x01));

    // A Mosaic 2025 client on the same port, as docs/mosaic.md's example: Submission → ACCEPTED.
    let mut m25 = RawWs::connect(ws_addr, &["Sec-WebSocket-Protocol: mosaic2025"])
        .await
        .unwrap();
    let record: Vec<u8> = (0u8..64).collect();
    m25.send_binary(&mosaic_gateway::dev::mosaic2025::wire::submission(&record))
        .await;
    match m25.read().await {
        RawMessage::Binary(r) => assert_eq!(r[..8], [0x83, 40, 0, 0, 2, 0, 0, 0]),
        other => panic!("expected a Submission Result, got {other:?}"),
    }

    // nostr over the same port.
    let (mut n, _) = connect(ws_addr, &[]).await.unwrap();
    n.send(Message::Text(r#"["REQ","a",{"limit":1}]"#.into()))
        .await
        .unwrap();
    assert!(String::from_utf8(recv(&mut n).await)
        .unwrap()
        .contains("EOSE"));

    // Mosaic over wss://, pinning the printed key (raw public key, TLS 1.3).
    let pin = mosaic_gateway::keys::parse_server_key(&key).unwrap();
    let cfg = mosaic_gateway::tls::client_config(
        Some(pin),
        true,
        mosaic_gateway::tls::ClientIdentity::Anonymous,
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut req = format!("ws://127.0.0.1:{tls_port}/")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mosaic2024".parse().unwrap());
    let (mut s, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    s.send(Message::Binary(wire::submission(&[6u8; 64]).into()))
        .await
        .unwrap();
    let res = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(T, s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Binary(b) => break b,
            _ => continue,
        }
    };
    assert_eq!((res[0], res[3]), (0x83, 0x01));

    // A browser-like client (no Ed25519, no raw keys) gets the dev ECDSA certificate for
    // localhost on the same wss:// port.
    let browser = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(EcdsaOnly))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(browser))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("a browser-like client completes the handshake");
    assert!(tls.get_ref().1.peer_certificates().is_some());

    // Ctrl-C drains and exits 0.
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    drop((m, n, s));
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("dev did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Accepts any certificate but signs like a browser: ECDSA and RSA only, never Ed25519.
#[derive(Debug)]
struct EcdsaOnly;

impl rustls::client::danger::ServerCertVerifier for EcdsaOnly {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![
            rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
            rustls::SignatureScheme::RSA_PSS_SHA256,
        ]
    }
}
