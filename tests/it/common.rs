//! Shared pieces of the operator scenarios: a gateway started in-process on 127.0.0.1 with
//! real backends (the in-repo Mosaic backend, rust-nostr's relay) and real clients.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::dev::mosaic_backend::{MosaicBackend, MosaicBackendOptions};
use mosaic_gateway::dev::nostr_relay::NostrRelayServer;
use mosaic_gateway::runtime::Running;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous bound for anything that should happen "promptly".
pub const T: Duration = Duration::from_secs(10);

/// Any free port on loopback.
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A port nothing listens on right now (for processes that bind it themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosaic backend with default options.
pub async fn mosaic_backend() -> MosaicBackend {
    MosaicBackend::spawn(any_port(), MosaicBackendOptions::default())
        .await
        .unwrap()
}

/// A Mosaic backend that serves these features.
pub async fn mosaic_backend_with_features(features: &[&str]) -> MosaicBackend {
    MosaicBackend::spawn(
        any_port(),
        MosaicBackendOptions {
            features: features.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// rust-nostr's relay behind its HTTP front.
pub async fn nostr_relay() -> NostrRelayServer {
    NostrRelayServer::spawn(any_port()).await.unwrap()
}

/// Starts a gateway from YAML; `listen` and `admin.listen` default to free ports.
pub async fn gateway(yaml: &str) -> Running {
    let mut text = String::new();
    if !yaml.contains("\nlisten:") && !yaml.starts_with("listen:") {
        text.push_str("listen: \"127.0.0.1:0\"\n");
    }
    if !yaml.contains("admin:") {
        text.push_str("admin:\n  listen: \"127.0.0.1:0\"\n");
    }
    text.push_str(yaml);
    let cfg = mosaic_gateway::config::parse(&text)
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
    mosaic_gateway::runtime::start(cfg, None).await.unwrap()
}

/// A gateway in front of one Mosaic backend and, optionally, a nostr relay.
pub async fn gateway_for(
    backend: &MosaicBackend,
    relay: Option<&NostrRelayServer>,
    extra: &str,
) -> Running {
    let mut yaml = format!(
        "mosaic:\n  backends:\n    - url: ws://{}\n{extra}",
        backend.local_addr()
    );
    if let Some(r) = relay {
        yaml.push_str(&format!("nostr:\n  upstream: ws://{}\n", r.local_addr()));
    }
    gateway(&yaml).await
}

/// Connects with these extra request headers.
pub async fn connect(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake finished in time")
}

/// The headers of a Mosaic upgrade forwarded by a proxy for client `ip`.
pub fn mosaic_via(ip: &str) -> [(&str, &str); 2] {
    [
        ("Sec-WebSocket-Protocol", "mosaic2024"),
        ("X-Forwarded-For", ip),
    ]
}

/// A Mosaic client (`Sec-WebSocket-Protocol: mosaic2024`).
pub async fn mosaic_client(addr: SocketAddr) -> Ws {
    connect(addr, &[("Sec-WebSocket-Protocol", "mosaic2024")])
        .await
        .expect("Mosaic upgrade accepted")
        .0
}

/// The HTTP status the gateway answered an upgrade with, when it was not 101.
pub async fn refused_status(addr: SocketAddr, headers: &[(&str, &str)]) -> u16 {
    match connect(addr, headers).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got 101"),
    }
}

/// Sends a binary message.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, bytes: Vec<u8>) {
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

/// The next data message's bytes (pings and pongs skipped); panics on close or timeout.
pub async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Vec<u8> {
    loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("no error");
        match m {
            Message::Binary(b) => return b.to_vec(),
            Message::Text(t) => return t.as_bytes().to_vec(),
            Message::Close(c) => panic!("unexpected close: {c:?}"),
            _ => continue,
        }
    }
}

/// Reads until the close frame and returns its code (None if the stream ended without one).
pub async fn close_code<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<u16> {
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
            Some(Ok(Message::Close(None))) => return None,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// A raw HTTP/1.1 exchange: sends `request` and returns the whole response text.
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n")
                    && !request.contains("Connection: close")
                {
                    // Headers are in; give a body a moment to follow, then stop.
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
                    {
                        out.extend_from_slice(&buf[..n]);
                    }
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GETs an admin path and returns (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let text = raw_http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
    )
    .await;
    status_and_body(&text)
}

/// The status and body of a raw HTTP response.
pub fn status_and_body(text: &str) -> (u16, String) {
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `/readyz` on the admin listener at `addr` until it answers `want`, or panics after
/// `T`; returns the body of that answer.
pub async fn readyz_becomes(addr: SocketAddr, want: u16) -> String {
    let start = std::time::Instant::now();
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            let (status, body) = admin_get(addr, "/readyz").await;
            if status == want {
                return body;
            }
        }
        assert!(start.elapsed() < T, "/readyz never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one metric sample (exact label text, e.g. `{protocol="mosaic"}`), or 0.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Waits until `cond` holds (polling), or panics after `T`.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > T {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a [`RawWs`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum RawMessage {
    /// A binary message.
    Binary(Vec<u8>),
    /// A text message.
    Text(String),
    /// A close frame and its code.
    Close(Option<u16>),
    /// The socket ended without a close frame.
    Eof,
}

/// A minimal WebSocket client over a raw socket. tungstenite rewrites close codes it does
/// not know (1014 becomes 1002) and refuses a 101 without the offered subprotocol, both of
/// which these scenarios must observe as sent.
pub struct RawWs {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The 101's head.
    pub response: String,
    /// Whether pings are answered (a dead client would not).
    pub answer_pings: bool,
    /// Pings received so far.
    pub pings_seen: usize,
}

impl RawWs {
    /// Upgrades with these extra header lines (`Name: value`).
    pub async fn connect(addr: SocketAddr, extra: &[&str]) -> Result<RawWs, String> {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut req = String::from("GET / HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        for h in extra {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = tokio::time::timeout(T, s.read(&mut chunk))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed during handshake".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let response = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !response.starts_with("HTTP/1.1 101") {
            return Err(response);
        }
        buf.drain(..end);
        Ok(RawWs {
            stream: s,
            buf,
            response,
            answer_pings: true,
            pings_seen: 0,
        })
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mut out = Vec::new();
        mosaic_gateway::relay::frame::encode_frame(
            &mut out,
            opcode,
            payload,
            Some([0x11, 0x22, 0x33, 0x44]),
        );
        if !fin {
            out[0] &= 0x7F;
        }
        // The gateway may already have closed the socket (that is what some scenarios test).
        let _ = self.stream.write_all(&out).await;
    }

    /// Sends a binary message in one frame.
    pub async fn send_binary(&mut self, payload: &[u8]) {
        self.send_frame(true, 0x2, payload).await;
    }

    /// Sends a text message in one frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(true, 0x1, text.as_bytes()).await;
    }

    /// Reads the next data message or close (answers pings, skips pongs).
    pub async fn read(&mut self) -> RawMessage {
        let mut assembling: Option<(u8, Vec<u8>)> = None;
        loop {
            let h = loop {
                match mosaic_gateway::relay::frame::parse_header(&self.buf) {
                    Ok(Some(h)) if self.buf.len() as u64 >= h.header_len as u64 + h.payload_len => {
                        break h
                    }
                    Ok(_) => {}
                    Err(e) => panic!("bad frame from the gateway: {e:?}"),
                }
                let mut chunk = [0u8; 65536];
                let n = match tokio::time::timeout(T, self.stream.read(&mut chunk)).await {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => 0,
                    Err(_) => panic!("no frame in time"),
                };
                if n == 0 {
                    return RawMessage::Eof;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            };
            assert!(
                h.mask.is_none(),
                "frames towards the client must not be masked"
            );
            let start = h.header_len;
            let end = start + h.payload_len as usize;
            let payload = self.buf[start..end].to_vec();
            self.buf.drain(..end);
            use mosaic_gateway::relay::frame::Opcode;
            match h.opcode {
                Opcode::Close => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    // Complete the closing handshake as a well-behaved client does.
                    let echo = payload.get(..2).unwrap_or(&[]).to_vec();
                    self.send_frame(true, 0x8, &echo).await;
                    return RawMessage::Close(code);
                }
                Opcode::Ping => {
                    if self.answer_pings {
                        self.send_frame(true, 0xA, &payload).await;
                    }
                    self.pings_seen += 1;
                }
                Opcode::Pong => {}
                Opcode::Binary | Opcode::Text | Opcode::Continuation => {
                    let (op, mut data) = assembling
                        .take()
                        .unwrap_or((if h.opcode == Opcode::Text { 1 } else { 2 }, Vec::new()));
                    data.extend_from_slice(&payload);
                    if h.fin {
                        return if op == 1 {
                            RawMessage::Text(String::from_utf8(data).unwrap())
                        } else {
                            RawMessage::Binary(data)
                        };
                    }
                    assembling = Some((op, data));
                }
                Opcode::Reserved(b) => panic!("reserved opcode {b}"),
            }
        }
    }

    /// Reads until a close frame (or EOF) and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.read().await {
                RawMessage::Close(c) => return c,
                RawMessage::Eof => return None,
                _ => {}
            }
        }
    }
}

/// The sum of every sample of a metric family.
pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Finishes a rustls client config: anonymous, or presenting a self-signed X.509 certificate
/// on the ed25519 key `key`; ALPN `http/1.1`.
pub fn with_client_key(
    b: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    key: Option<&ed25519_dalek::SigningKey>,
) -> rustls::ClientConfig {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use mosaic_gateway::{keys, tls};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut config = match key {
        None => b.with_no_client_auth(),
        Some(k) => {
            let der = keys::pkcs8_v1(k).to_pkcs8_der().unwrap();
            b.with_client_auth_cert(
                vec![tls::self_signed_certificate(k).unwrap()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.as_bytes().to_vec())),
            )
            .unwrap()
        }
    };
    config.alpn_protocols = vec![tls::ALPN_HTTP11.to_vec()];
    config
}

/// The `mosaic-gateway` binary run as a child with a config file (JSON logs at info), as an
/// operator runs it; its stderr lines arrive on `logs`.
pub struct ChildGateway {
    /// The process.
    pub child: Child,
    /// The public listener.
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Log lines (stderr), as they come.
    pub logs: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

/// Starts the binary on free ports with `yaml_tail` after `listen`, `admin` and `log`.
pub fn spawn_child_gateway(yaml_tail: &str) -> ChildGateway {
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxy.yaml");
    std::fs::write(
        &cfg,
        format!("listen: \"{public}\"\nadmin:\n  listen: \"{admin}\"\nlog:\n  format: json\n  level: info\n{yaml_tail}"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mosaic-gateway"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    ChildGateway {
        child,
        public,
        admin,
        logs,
        _dir: dir,
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// A Mosaic backend on loopback that accepts `mosaic2024` upgrades and runs `serve` on each
/// connection: for backends that misbehave on purpose.
pub async fn scripted_mosaic_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(WebSocketStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    scripted_backend("mosaic2024", serve).await
}

/// A backend that accepts any upgrade answering `token`, sends `bad` (if any) to the client
/// at once, then reads and answers nothing.
pub async fn rogue_backend(token: &'static str, bad: Option<Vec<u8>>) -> SocketAddr {
    scripted_backend(token, move |mut ws| {
        let bad = bad.clone();
        async move {
            if let Some(bad) = bad {
                let _ = ws.send(Message::Binary(bad.into())).await;
            }
            // Read until the gateway closes us.
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await
}

/// A backend on loopback that accepts upgrades answering `token` and runs `serve` on each
/// connection.
pub async fn scripted_backend<F, Fut>(token: &'static str, serve: F) -> SocketAddr
where
    F: Fn(WebSocketStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let l = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let serve = serve.clone();
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)] // tungstenite's callback signature
                let cb = |_: &Request, mut r: Response| {
                    r.headers_mut()
                        .insert("sec-websocket-protocol", HeaderValue::from_static(token));
                    Ok(r)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(s, cb).await {
                    serve(ws).await;
                }
            });
        }
    });
    addr
}

/// The resident set of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}
