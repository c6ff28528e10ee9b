//! Several relays behind one gateway (issue 13), as an operator runs them: routes by host
//! name and path to two different real relay implementations (rust-nostr's relay in
//! process, and `nostr-relay` from PyPI, a Python/SQLite relay, as a child process) and a
//! Mosaic pool; the default route or 404/400 for unknown hosts; a nostr relay pool that
//! keeps serving when one relay dies and takes it back; 421 when `Host` and SNI disagree;
//! routes added and removed by SIGHUP while connections stay up; the `route` label in
//! metrics and logs; per-route connection limits.
//!
//! `.ci/run` installs `nostr-relay` and sets `NOSTR_RELAY_BIN`; without it the scenarios
//! print `note: nostr-relay (PyPI) not installed` and put a second rust-nostr relay in its
//! place (then the two relays are of one implementation).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use mosaic_gateway::dev::nostr_relay::NostrRelayServer;
use mosaic_gateway::runtime::Running;
use nostr_sdk::JsonUtil;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

// ---------- the second relay implementation ----------

/// `nostr-relay` (PyPI) serving one SQLite file on a fixed port, as a child process.
struct PyRelay {
    child: Child,
    port: u16,
    name: String,
    dir: tempfile::TempDir,
}

impl PyRelay {
    /// The installed `nostr-relay` command: `NOSTR_RELAY_BIN` (set by `.ci/run`, then it
    /// must be there), or the virtualenv `.ci/run` makes under target/.
    fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("NOSTR_RELAY_BIN") {
            let p = PathBuf::from(p);
            assert!(p.exists(), "NOSTR_RELAY_BIN={} does not exist", p.display());
            return Some(p);
        }
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/nostr-relay-venv/bin/nostr-relay");
        p.exists().then_some(p)
    }

    /// Starts a relay whose NIP-11 `name` is `name`; `None` when it is not installed.
    async fn start(name: &str) -> Option<PyRelay> {
        Self::binary()?;
        let dir = tempfile::tempdir().unwrap();
        let mut r = PyRelay {
            child: Self::spawn(dir.path(), name, free_port()),
            port: 0,
            name: name.to_string(),
            dir,
        };
        r.port = Self::read_port(&r.dir);
        r.wait_up().await;
        Some(r)
    }

    fn spawn(dir: &std::path::Path, name: &str, port: u16) -> Child {
        let cfg = dir.join("relay.yaml");
        std::fs::write(dir.join("port"), port.to_string()).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "DEBUG: false\nrelay_name: \"{name}\"\nrelay_description: a second relay implementation\nstorage:\n  sqlalchemy.url: sqlite+aiosqlite:///{}/nostr.sqlite3\ngunicorn:\n  bind: 127.0.0.1:{port}\n  workers: 1\n  loglevel: warning\n  reload: false\n",
                dir.display()
            ),
        )
        .unwrap();
        let Some(bin) = Self::binary() else {
            panic!("nostr-relay vanished");
        };
        Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .args(["serve", "--use-uvicorn"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn read_port(dir: &tempfile::TempDir) -> u16 {
        std::fs::read_to_string(dir.path().join("port"))
            .unwrap()
            .parse()
            .unwrap()
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn wait_up(&mut self) {
        let start = Instant::now();
        loop {
            if TcpStream::connect(self.addr()).await.is_ok() {
                let (status, body) = nip11(self.addr(), "relay", "/").await;
                if status == 200 && body.contains(&self.name) {
                    return;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("nostr-relay exited at start: {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nostr-relay did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: the relay dies with its connections, as a crashed process does.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and database.
    async fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.dir.path(), &self.name, self.port);
        self.wait_up().await;
    }
}

impl Drop for PyRelay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A relay of either implementation.
enum Relay {
    Rust(Box<NostrRelayServer>),
    Py(PyRelay),
}

impl Relay {
    fn addr(&self) -> SocketAddr {
        match self {
            Relay::Rust(r) => r.local_addr(),
            Relay::Py(r) => r.addr(),
        }
    }

    /// What its NIP-11 document says its name is.
    fn nip11_name(&self) -> String {
        match self {
            Relay::Rust(_) => "mosaic-gateway dev relay".into(),
            Relay::Py(r) => r.name.clone(),
        }
    }
}

/// The Python relay, or (with a note) a second rust-nostr relay when it is not installed.
async fn second_relay(name: &str) -> Relay {
    match PyRelay::start(name).await {
        Some(r) => Relay::Py(r),
        None => {
            eprintln!(
                "note: nostr-relay (PyPI) not installed (.ci/run installs it); a second rust-nostr relay stands in"
            );
            Relay::Rust(Box::new(nostr_relay().await))
        }
    }
}

// ---------- clients ----------

/// A NIP-11 request for `host` and `path`: (status, body).
async fn nip11(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    http_get(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n"),
    )
    .await
}

async fn http_get(addr: SocketAddr, request: &str) -> (u16, String) {
    status_and_body(&raw_http(addr, request).await)
}

type Client<S> = WebSocketStream<S>;

/// A WebSocket upgrade for `host` and `path` over `stream`, with these extra headers.
async fn upgrade_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<Client<S>, u16> {
    let mut req = format!("ws://{host}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("host", HeaderValue::from_str(host).unwrap());
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    match tokio::time::timeout(T, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("handshake in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// A nostr client for `host` and `path` (`Err`: the refusal's status).
async fn ws(addr: SocketAddr, host: &str, path: &str) -> Result<Client<TcpStream>, u16> {
    upgrade_over(TcpStream::connect(addr).await.unwrap(), host, path, &[]).await
}

/// The next text message (pings skipped).
async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>) -> String {
    loop {
        let m = tokio::time::timeout(T, c.next())
            .await
            .expect("message in time")
            .expect("open")
            .expect("no error");
        match m {
            Message::Text(t) => return t.to_string(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Publishes a new signed note; returns its id once the relay said OK.
async fn publish<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>, text: &str) -> String {
    let keys = nostr_sdk::Keys::generate();
    let ev = nostr_sdk::EventBuilder::text_note(text)
        .sign_with_keys(&keys)
        .unwrap();
    let id = ev.id.to_hex();
    c.send(Message::Text(
        format!("[\"EVENT\",{}]", ev.as_json()).into(),
    ))
    .await
    .unwrap();
    loop {
        let t = next_text(c).await;
        if t.starts_with("[\"OK\"") && t.contains(&id) {
            assert!(t.contains("true"), "event refused: {t}");
            return id;
        }
    }
}

/// Whether the relay behind `c` has the event `id`.
async fn has_event<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>, id: &str) -> bool {
    c.send(Message::Text(
        format!("[\"REQ\",\"q\",{{\"ids\":[\"{id}\"]}}]").into(),
    ))
    .await
    .unwrap();
    let mut found = false;
    loop {
        let t = next_text(c).await;
        if t.starts_with("[\"EVENT\"") && t.contains(id) {
            found = true;
        }
        if t.starts_with("[\"EOSE\"") {
            let _ = c
                .send(Message::Text("[\"CLOSE\",\"q\"]".to_string().into()))
                .await;
            return found;
        }
    }
}

/// Whether the relay at `addr` (asked directly) has the event `id`.
async fn relay_has(addr: SocketAddr, id: &str) -> bool {
    let mut c = ws(addr, &addr.to_string(), "/").await.unwrap();
    has_event(&mut c, id).await
}

/// Open nostr connections on `route`, as the gateway counts them.
fn nostr_open(gw: &Running, route: &str) -> i64 {
    gw.app
        .metrics
        .connections_active
        .with_label_values(&[route, "nostr"])
        .get()
}

async fn metrics(gw: &Running) -> String {
    admin_get(gw.admin_addr, "/metrics").await.1
}

/// A gateway started from a config file (so it can be reloaded).
async fn gateway_from_file(yaml: &str) -> (Running, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let text = format!("listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\n{yaml}");
    std::fs::write(&path, &text).unwrap();
    let cfg = mosaic_gateway::config::load(&path)
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"));
    let gw = mosaic_gateway::runtime::start(cfg, None).await.unwrap();
    (gw, dir, path)
}

fn reload(gw: &Running, path: &std::path::Path, yaml: &str) {
    let text = format!("listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\n{yaml}");
    std::fs::write(path, text).unwrap();
    mosaic_gateway::shutdown::reload(&gw.app, path);
}

/// A route with one nostr relay.
fn nostr_route(name: &str, hosts: &str, extra: &str, relay: SocketAddr) -> String {
    format!(
        "  - name: {name}\n    hosts: {hosts}\n{extra}    nostr:\n      upstream: ws://{relay}\n"
    )
}

// ---------- the scenarios ----------

#[tokio::test]
async fn each_host_reaches_its_own_relay_a_path_prefix_a_third_and_mosaic_its_pool() {
    let alpha = nostr_relay().await;
    let beta = second_relay("beta python relay").await;
    let inbox = nostr_relay().await;
    let community_mosaic = mosaic_backend().await;
    let default_mosaic = mosaic_backend().await;
    let yaml = format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nroutes:\n{}{}{}  - name: community\n    hosts: [mosaic.example.org]\n    mosaic:\n      backends:\n        - url: ws://{}\n",
        default_mosaic.local_addr(),
        nostr_route("alpha", "[alpha.example.org, \"*.alpha.example.org\"]", "", alpha.local_addr()),
        nostr_route("beta", "[Beta.Example.Org]", "", beta.addr()),
        nostr_route("inbox", "[alpha.example.org]", "    path_prefix: /inbox\n", inbox.local_addr()),
        community_mosaic.local_addr(),
    );
    let gw = gateway(&yaml).await;
    let a = gw.public_addr;

    // NIP-11: each host name answers with its own relay's document, port and case aside.
    let (s, body) = nip11(a, "alpha.example.org", "/").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("mosaic-gateway dev relay"), "{body}");
    let (s, body) = nip11(a, "beta.example.org:443", "/").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(&beta.nip11_name()), "{body}");
    let (s, body) = nip11(a, "www.alpha.example.org", "/").await;
    assert_eq!((s, body.contains("dev relay")), (200, true), "{body}");

    // WebSocket: an event published for one host is on that relay only.
    let mut to_alpha = ws(a, "alpha.example.org", "/").await.unwrap();
    let on_alpha = publish(&mut to_alpha, "for alpha").await;
    let mut to_beta = ws(a, "beta.example.org", "/?x=1").await.unwrap();
    let on_beta = publish(&mut to_beta, "for beta").await;
    let mut to_inbox = ws(a, "alpha.example.org", "/inbox").await.unwrap();
    let on_inbox = publish(&mut to_inbox, "for the inbox").await;
    assert!(relay_has(alpha.local_addr(), &on_alpha).await);
    assert!(relay_has(beta.addr(), &on_beta).await);
    assert!(relay_has(inbox.local_addr(), &on_inbox).await);
    for (id, other) in [
        (&on_alpha, beta.addr()),
        (&on_alpha, inbox.local_addr()),
        (&on_beta, alpha.local_addr()),
        (&on_inbox, alpha.local_addr()),
        (&on_inbox, beta.addr()),
    ] {
        assert!(!relay_has(other, id).await, "{id} leaked to {other}");
    }
    // Through the gateway, each route sees its own relay's events (path below the prefix,
    // and a path that only starts like it, which is not below it).
    let mut inbox_sub = ws(a, "alpha.example.org", "/inbox/sub").await.unwrap();
    assert!(has_event(&mut inbox_sub, &on_inbox).await);
    let mut not_inbox = ws(a, "ALPHA.example.org", "/inboxes").await.unwrap();
    assert!(has_event(&mut not_inbox, &on_alpha).await);
    assert!(!has_event(&mut not_inbox, &on_inbox).await);

    // Mosaic: the route's own pool, and the default route's pool for unknown hosts.
    for (host, backend) in [
        ("mosaic.example.org", &community_mosaic),
        ("unknown.example.org", &default_mosaic),
    ] {
        let tcp = TcpStream::connect(a).await.unwrap();
        let mut m = upgrade_over(tcp, host, "/", &[("sec-websocket-protocol", "mosaic2024")])
            .await
            .unwrap();
        // The upstream request keeps the client's Host (health checks name the backend).
        let seen = backend
            .request_headers()
            .iter()
            .any(|h| h.get("host").is_some_and(|v| v == host));
        assert!(seen, "{host} did not reach its Mosaic pool");
        let _ = m.close(None).await;
    }
    // The default route serves no nostr: a nostr upgrade for an unknown host is refused,
    // and a plain request there is not found.
    assert_eq!(ws(a, "unknown.example.org", "/").await.err(), Some(400));
    assert_eq!(nip11(a, "unknown.example.org", "/").await.0, 404);
    drop((to_alpha, to_beta, to_inbox));
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_hosts_take_the_default_route_or_get_404_and_400_without_one() {
    let default_relay = nostr_relay().await;
    let alpha = nostr_relay().await;
    let backend = mosaic_backend().await;
    let routes = format!(
        "routes:\n{}",
        nostr_route("alpha", "[alpha.example.org]", "", alpha.local_addr())
    );
    // With a default route: an unknown host reaches it.
    let gw = gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{}\n{routes}",
        backend.local_addr(),
        default_relay.local_addr()
    ))
    .await;
    let mut c = ws(gw.public_addr, "elsewhere.example.net", "/")
        .await
        .unwrap();
    let id = publish(&mut c, "to the default relay").await;
    assert!(relay_has(default_relay.local_addr(), &id).await);
    assert!(!relay_has(alpha.local_addr(), &id).await);
    assert_eq!(
        nip11(gw.public_addr, "elsewhere.example.net", "/").await.0,
        200
    );
    // No Host at all (HTTP/1.0) is the default route too.
    let (s, _) = http_get(
        gw.public_addr,
        "GET / HTTP/1.0\r\nAccept: application/nostr+json\r\n\r\n",
    )
    .await;
    assert_eq!(s, 200);
    drop(c);
    gw.shutdown().await;

    // Without one: 404 for plain HTTP, 400 with a one-line reason for an upgrade.
    let gw = gateway(&routes).await;
    let (s, body) = nip11(gw.public_addr, "elsewhere.example.net", "/").await;
    assert_eq!(s, 404, "{body}");
    let resp = raw_http(
        gw.public_addr,
        "GET / HTTP/1.1\r\nHost: elsewhere.example.net\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let (s, body) = status_and_body(&resp);
    assert_eq!(s, 400, "{resp}");
    assert_eq!(body.lines().count(), 1, "{body}");
    assert!(body.contains("no route"), "{body}");
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "mosaic_gateway_handshake_rejections_total{reason=\"unknown_route\",route=\"\"}"
        ),
        1.0,
        "{text}"
    );
    // The named route still works.
    assert!(ws(gw.public_addr, "alpha.example.org", "/").await.is_ok());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_relay_pool_keeps_serving_new_clients_when_one_relay_dies_and_takes_it_back() {
    let steady = nostr_relay().await;
    let mut flaky = match second_relay("flaky python relay").await {
        Relay::Py(r) => Some(r),
        Relay::Rust(_) => None,
    };
    // Without the Python relay, an in-process relay is stopped and started on its port.
    let mut flaky_rust = match flaky {
        Some(_) => None,
        None => Some(nostr_relay().await),
    };
    let flaky_addr = flaky
        .as_ref()
        .map(|r| r.addr())
        .or(flaky_rust.as_ref().map(|r| r.local_addr()))
        .unwrap();
    let gw = gateway(&format!(
        "routes:\n  - name: pooled\n    hosts: [relay.example.org]\n    nostr:\n      balance: round-robin\n      health_check: {{ interval: 200ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }}\n      upstreams:\n        - url: ws://{}\n        - url: ws://{flaky_addr}\n",
        steady.local_addr()
    ))
    .await;
    let a = gw.public_addr;
    let up = |addr: SocketAddr| {
        format!(
            "mosaic_gateway_backend_up{{backend=\"ws://{addr}/\",pool=\"nostr\",route=\"pooled\"}}"
        )
    };
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, &up(flaky_addr)), 1.0, "{text}");

    // Both relays take clients.
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut c = ws(a, "relay.example.org", "/").await.unwrap();
        ids.push(publish(&mut c, &format!("before {i}")).await);
    }
    let mut on_flaky = 0;
    for id in &ids {
        on_flaky += usize::from(relay_has(flaky_addr, id).await);
    }
    assert_eq!(on_flaky, 2, "round-robin over two relays");

    // One dies: every new client is still served (retried within its handshake), and
    // plain HTTP goes to the live relay.
    let open = ws(a, "relay.example.org", "/").await.unwrap();
    match (&mut flaky, &flaky_rust) {
        (Some(p), _) => p.kill(),
        (None, Some(r)) => r.shutdown(),
        _ => unreachable!(),
    }
    eventually("the dead relay refuses connections", || {
        std::net::TcpStream::connect(flaky_addr).is_err()
    })
    .await;
    for i in 0..6 {
        let mut c = ws(a, "relay.example.org", "/")
            .await
            .unwrap_or_else(|s| panic!("client {i} refused with {s} while one relay lives"));
        let id = publish(&mut c, &format!("during {i}")).await;
        assert!(relay_has(steady.local_addr(), &id).await);
        assert_eq!(nip11(a, "relay.example.org", "/").await.0, 200);
    }
    let start = Instant::now();
    while metric(&metrics(&gw).await, &up(flaky_addr)) != 0.0 {
        assert!(start.elapsed() < T, "the dead relay is never marked down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin_get(gw.admin_addr, "/readyz").await.0, 200);
    drop(open);

    // It comes back: the health check takes it back and new clients reach it again.
    match (&mut flaky, &mut flaky_rust) {
        (Some(p), _) => p.restart().await,
        (None, slot) => *slot = Some(NostrRelayServer::spawn(flaky_addr).await.unwrap()),
    }
    let start = Instant::now();
    while metric(&metrics(&gw).await, &up(flaky_addr)) != 1.0 {
        assert!(start.elapsed() < T, "the relay is never taken back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut back = 0;
    for i in 0..4 {
        let mut c = ws(a, "relay.example.org", "/").await.unwrap();
        let id = publish(&mut c, &format!("after {i}")).await;
        back += usize::from(relay_has(flaky_addr, &id).await);
    }
    assert_eq!(back, 2, "the returned relay takes its share again");

    // Both down: 503 with Retry-After, and /readyz names the route and the pool.
    steady.shutdown();
    match (&mut flaky, &flaky_rust) {
        (Some(p), _) => p.kill(),
        (None, Some(r)) => r.shutdown(),
        _ => unreachable!(),
    }
    let body = readyz_becomes(gw.admin_addr, 503).await;
    assert!(body.contains("pool nostr of route pooled"), "{body}");
    let resp = raw_http(
        a,
        "GET / HTTP/1.1\r\nHost: relay.example.org\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("retry-after"), "{resp}");
    assert_eq!(ws(a, "relay.example.org", "/").await.err(), Some(503));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_host_naming_another_route_than_the_sni_is_421_over_tls() {
    let alpha = nostr_relay().await;
    let beta = nostr_relay().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.pem");
    let mosrv = mosaic_gateway::keys::keygen(&key).unwrap();
    let pin = mosaic_gateway::keys::parse_server_key(&mosrv).unwrap();
    let gw = gateway(&format!(
        "tls:\n  key_file: \"{}\"\nroutes:\n{}{}",
        key.display(),
        nostr_route("alpha", "[alpha.example.org]", "", alpha.local_addr()),
        nostr_route("beta", "[beta.example.org]", "", beta.local_addr()),
    ))
    .await;
    let config = Arc::new(
        mosaic_gateway::tls::client_config(
            Some(pin),
            false,
            mosaic_gateway::tls::ClientIdentity::Anonymous,
        )
        .unwrap(),
    );
    let tls = |sni: &'static str| {
        let config = config.clone();
        let addr = gw.public_addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(rustls::pki_types::ServerName::try_from(sni).unwrap(), tcp)
                .await
                .unwrap()
        }
    };
    /// One request and its whole response (head and `content-length` body).
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, req: &str) -> String {
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    let plain = |host: &str| {
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nAccept: application/nostr+json\r\n\r\n")
    };

    // Same route as the SNI: served (plain HTTP and upgrade).
    let mut s = tls("alpha.example.org").await;
    let resp = exchange(&mut s, &plain("alpha.example.org:443")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // Then, on the same TLS session, a request for the other route: 421.
    let resp = exchange(&mut s, &plain("beta.example.org")).await;
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
    // An upgrade as the first request (the fast path), for another route: 421.
    let mut s = tls("alpha.example.org").await;
    let resp = exchange(
        &mut s,
        "GET / HTTP/1.1\r\nHost: beta.example.org\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
    // An absolute-form target names the host: its authority is what the 421 check reads,
    // and a Host line that contradicts it is refused outright.
    let mut s = tls("alpha.example.org").await;
    let resp = exchange(
        &mut s,
        "GET https://beta.example.org/ HTTP/1.1\r\nHost: beta.example.org\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
    let mut s = tls("alpha.example.org").await;
    let resp = exchange(
        &mut s,
        "GET https://beta.example.org/ HTTP/1.1\r\nHost: alpha.example.org\r\nAccept: application/nostr+json\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // A host no route takes is not the SNI's route either.
    let mut s = tls("beta.example.org").await;
    let resp = exchange(&mut s, &plain("elsewhere.example.org")).await;
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
    // Matching SNI and Host: a WebSocket reaches the SNI's relay.
    let s = tls("beta.example.org").await;
    let mut c = upgrade_over(s, "beta.example.org", "/", &[]).await.unwrap();
    let id = publish(&mut c, "over TLS").await;
    assert!(relay_has(beta.local_addr(), &id).await);
    assert!(!relay_has(alpha.local_addr(), &id).await);
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            "mosaic_gateway_handshake_rejections_total{reason=\"misdirected\",route=\"\"}"
        ),
        2.0,
        "{text}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn routes_added_and_removed_by_sighup_while_other_connections_stay_up() {
    let alpha = nostr_relay().await;
    let beta = second_relay("beta python relay").await;
    let alpha_route = nostr_route("alpha", "[alpha.example.org]", "", alpha.local_addr());
    let beta_route = nostr_route("beta", "[beta.example.org]", "", beta.addr());
    let (gw, _dir, path) = gateway_from_file(&format!("routes:\n{alpha_route}")).await;
    let a = gw.public_addr;
    let mut on_alpha = ws(a, "alpha.example.org", "/").await.unwrap();
    let first = publish(&mut on_alpha, "before the reloads").await;
    assert_eq!(nip11(a, "beta.example.org", "/").await.0, 404);

    // Added: the new host reaches its relay; the open connection is untouched.
    reload(&gw, &path, &format!("routes:\n{alpha_route}{beta_route}"));
    let (s, body) = nip11(a, "beta.example.org", "/").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(&beta.nip11_name()), "{body}");
    let mut on_beta = ws(a, "beta.example.org", "/").await.unwrap();
    let second = publish(&mut on_beta, "on the added route").await;
    assert!(relay_has(beta.addr(), &second).await);
    assert!(
        has_event(&mut on_alpha, &first).await,
        "alpha's client lives on"
    );

    // Removed: alpha's open connection drains on its own time (still served); new
    // requests for it find no route; beta's connection, on a route that stays, is untouched.
    reload(&gw, &path, &format!("routes:\n{beta_route}"));
    assert_eq!(ws(a, "alpha.example.org", "/").await.err(), Some(400));
    assert_eq!(nip11(a, "alpha.example.org", "/").await.0, 404);
    assert!(
        has_event(&mut on_alpha, &first).await,
        "the removed route's client drains"
    );
    let third = publish(&mut on_alpha, "after its route went away").await;
    assert!(relay_has(alpha.local_addr(), &third).await);
    assert!(has_event(&mut on_beta, &second).await);
    let text = metrics(&gw).await;
    assert!(
        !text.contains(&format!("backend=\"ws://{}/\"", alpha.local_addr())),
        "the removed route's backend_up is gone: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "mosaic_gateway_connections_active{protocol=\"nostr\",route=\"alpha\"}"
        ),
        1.0,
        "{text}"
    );
    // A route changed in place (another host added) keeps its connections too.
    reload(
        &gw,
        &path,
        &format!(
            "routes:\n{}",
            nostr_route("beta", "[beta.example.org, b.example.org]", "", beta.addr())
        ),
    );
    assert!(has_event(&mut on_beta, &second).await);
    let mut via_b = ws(a, "b.example.org", "/").await.unwrap();
    assert!(has_event(&mut via_b, &second).await);
    drop(on_alpha);
    eventually("alpha's connection is gone", || {
        nostr_open(&gw, "alpha") == 0
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn each_route_has_its_own_connection_limit_within_the_global_one() {
    let alpha = nostr_relay().await;
    let beta = nostr_relay().await;
    let gw = gateway(&format!(
        "limits:\n  max_connections: 3\nroutes:\n{}{}",
        nostr_route(
            "alpha",
            "[alpha.example.org]",
            "    limits: { max_connections: 1 }\n",
            alpha.local_addr()
        ),
        nostr_route("beta", "[beta.example.org]", "", beta.local_addr()),
    ))
    .await;
    let a = gw.public_addr;
    let first = ws(a, "alpha.example.org", "/").await.unwrap();
    assert_eq!(ws(a, "alpha.example.org", "/").await.err(), Some(503));
    let b1 = ws(a, "beta.example.org", "/").await.unwrap();
    let b2 = ws(a, "beta.example.org", "/").await.unwrap();
    // The global limit (3) is full now, whatever the route.
    assert_eq!(ws(a, "beta.example.org", "/").await.err(), Some(503));
    let text = metrics(&gw).await;
    let rejected = |reason: &str, route: &str| {
        metric(
            &text,
            &format!(
                "mosaic_gateway_handshake_rejections_total{{reason=\"{reason}\",route=\"{route}\"}}"
            ),
        )
    };
    assert_eq!(rejected("route_max_connections", "alpha"), 1.0, "{text}");
    assert_eq!(rejected("max_connections", "beta"), 1.0, "{text}");
    drop(first);
    eventually("alpha's place is free", || nostr_open(&gw, "alpha") == 0).await;
    assert!(ws(a, "alpha.example.org", "/").await.is_ok());
    drop((b1, b2));
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_and_logs_carry_the_route() {
    let alpha = nostr_relay().await;
    let beta = nostr_relay().await;
    let backend = mosaic_backend().await;
    let mut gw = spawn_child_gateway(&format!(
        "mosaic:\n  backends:\n    - url: ws://{}\nroutes:\n{}{}",
        backend.local_addr(),
        nostr_route("alpha", "[alpha.example.org]", "", alpha.local_addr()),
        nostr_route("beta", "[beta.example.org]", "", beta.local_addr()),
    ));
    let (public, admin) = (gw.public, gw.admin);
    readyz_becomes(admin, 200).await;
    // Every route's series exist from the first scrape.
    let text = admin_get(admin, "/metrics").await.1;
    for route in ["default", "alpha", "beta"] {
        assert!(
            text.contains(&format!(
                "mosaic_gateway_connections_total{{protocol=\"nostr\",route=\"{route}\"}} 0"
            )),
            "{text}"
        );
    }
    let mut c = ws(public, "alpha.example.org", "/").await.unwrap();
    publish(&mut c, "counted on alpha").await;
    let _ = c.close(None).await;
    drop(c);
    let c = ws(public, "beta.example.org", "/").await.unwrap();
    drop(c);
    let sample = |text: &str, name: &str, labels: &str| {
        metric(text, &format!("mosaic_gateway_{name}{{{labels}}}"))
    };
    let start = Instant::now();
    let text = loop {
        let text = admin_get(admin, "/metrics").await.1;
        if sample(
            &text,
            "connections_active",
            "protocol=\"nostr\",route=\"alpha\"",
        ) == 0.0
            && sample(
                &text,
                "connections_active",
                "protocol=\"nostr\",route=\"beta\"",
            ) == 0.0
        {
            break text;
        }
        assert!(start.elapsed() < T, "connections never closed: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(
            &text,
            "connections_total",
            "protocol=\"nostr\",route=\"alpha\""
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "connections_total",
            "protocol=\"nostr\",route=\"beta\""
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "connections_total",
            "protocol=\"nostr\",route=\"default\""
        ),
        0.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "messages_total",
            "direction=\"client_to_upstream\",protocol=\"nostr\",route=\"alpha\""
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "bytes_total",
            "direction=\"upstream_to_client\",protocol=\"nostr\",route=\"alpha\""
        ) > 0.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "messages_total",
            "direction=\"client_to_upstream\",protocol=\"nostr\",route=\"beta\""
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "backend_up",
            &format!(
                "backend=\"ws://{}/\",pool=\"nostr\",route=\"alpha\"",
                alpha.local_addr()
            )
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "backend_up",
            &format!(
                "backend=\"ws://{}/\",pool=\"default\",route=\"default\"",
                backend.local_addr()
            )
        ),
        1.0,
        "{text}"
    );

    sigterm(&gw.child);
    let _ = gw.child.wait();
    let lines: Vec<String> = gw.logs.iter().collect();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (message, route) in [
        ("connection opened", "alpha"),
        ("connection closed", "alpha"),
        ("connection opened", "beta"),
        ("connection closed", "beta"),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["message"] == message && e["route"] == route),
            "no `{message}` line with route {route}:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn check_config_names_the_key_of_every_route_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(
        &path,
        "routes:
  - name: a
    hosts: [a.example.org]
    nostr: { upstream: ws://127.0.0.1:7777 }
  - name: a
    hosts: [\"a.example.org:443\", \"*.com\", \"a.*.example.org\", a.example.org/x]
    nostr: { upstream: ws://127.0.0.1:7777 }
  - name: nothing
    hosts: [b.example.org]
  - name: default
    hosts: [A.Example.Org]
    path_prefix: inbox
    mosaic: { backends: [], health_check: { kind: nip11 } }
  - name: twice
    hosts: [a.example.org]
    strip_prefix: true
    nostr: { upstreams: [ { url: ws://127.0.0.1:1 } ], upstream: ws://127.0.0.1:2, max_tries: 0 }
    limits: { max_connections: 0 }
  - name: bad name!
    path_prefix: /paid
    nostr: { upstreams: [ { url: \"wss://127.0.0.1:1\" } ], health_check: { kind: websocket, interval: 0s } }
  - name: empty
    nostr: {}
",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mosaic-gateway"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        "routes[1].name: `a` is already the name of routes[0]",
        "routes[1].hosts[0]: `a.example.org:443` cannot match: hosts are compared without the port",
        "routes[1].hosts[1]: `*.com` cannot match any host",
        "routes[1].hosts[2]: `a.*.example.org` cannot match any host",
        "routes[1].hosts[3]: `a.example.org/x` cannot match: a host has no path",
        "routes[2]: give a nostr or a mosaic section (or both)",
        "routes[3].name: `default` is the name of the top-level (default) route",
        "routes[3].path_prefix: `inbox` must start with `/`",
        "routes[3].mosaic.backends: list at least one backend",
        "routes[3].mosaic.health_check.kind: only nostr relays have a kind",
        "routes[4].hosts[0]: `a.example.org` is already routes[0]'s",
        "routes[4].nostr.upstreams: give either nostr.upstream (one relay) or nostr.upstreams, not both",
        "routes[4].nostr.max_tries: must be at least 1",
        "routes[4].limits.max_connections: must be at least 1",
        "routes[4].strip_prefix: needs a path_prefix to strip",
        "routes[5].name: `bad name!` must be 1 to 64 letters",
        "routes[5].nostr.upstreams[0].url: wss:// relays are not supported yet",
        "routes[5].nostr.health_check.interval: must be more than 0",
        "routes[6].hosts: give hosts or a path_prefix",
        "routes[6].nostr.upstreams: list at least one relay",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    // Every line names a key; without a default route no top-level section is required.
    for line in stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !l.is_empty())
    {
        assert!(
            line.contains("routes[") || line.starts_with("mosaic-gateway:"),
            "{line}"
        );
        assert!(
            !line.contains("mosaic.backends: list") || line.contains("routes["),
            "{line}"
        );
    }
}
