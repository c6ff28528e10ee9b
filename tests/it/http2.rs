//! HTTP/2 on the public TLS port (issue 26), as an h2 client meets it: one TLS connection
//! that chose `h2` by ALPN carries WebSockets as extended CONNECT streams (RFC 8441) and
//! plain requests, next to HTTP/1.1 clients on the same port.
//!
//! The client is hyper's HTTP/2 client (extended CONNECT with `:protocol websocket`, the
//! stream then framed by tungstenite as a client), over rustls pinning the gateway's key.
//! Behind the gateway: the in-repo Mosaic backend and rust-nostr's relay, on HTTP/1.1.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mosaic_gateway::dev::mosaic_backend::{wire, MosaicBackend};
use mosaic_gateway::dev::nostr_relay::NostrRelayServer;
use mosaic_gateway::runtime::Running;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::*;
use crate::tls_gateway::{
    anonymous_client, client_key, master_key, mosaic_section, public, seen_by, submit, tls_mosaic,
    x509_client, MasterKey,
};

/// A WebSocket carried by one HTTP/2 stream.
type H2Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

const H2_MOSAIC: &str = "mosaic_gateway_http2_websockets_total{protocol=\"mosaic\"}";
const H2_NOSTR: &str = "mosaic_gateway_http2_websockets_total{protocol=\"nostr\"}";

/// The operator's key, and a TLS gateway (self-signed certificate on it, client keys
/// optional) in front of a Mosaic backend and a nostr relay.
struct Edge {
    master: MasterKey,
    backend: MosaicBackend,
    relay: NostrRelayServer,
    gw: Running,
}

async fn edge(extra: &str) -> Edge {
    let master = master_key();
    let backend = mosaic_backend().await;
    let relay = nostr_relay().await;
    let gw = gateway(&format!(
        "{}{}nostr:\n  upstream: ws://{}\n{extra}",
        master.tls("self-signed", "optional", "1.2"),
        mosaic_section(&[&backend], &[]),
        relay.local_addr()
    ))
    .await;
    Edge {
        master,
        backend,
        relay,
        gw,
    }
}

/// One client TLS connection offering `h2` and `http/1.1`; the protocol the gateway chose.
async fn tls_connect(
    addr: SocketAddr,
    mut config: ClientConfig,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let alpn = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    (tls, alpn)
}

/// What the gateway's SETTINGS said: extended CONNECT allowed, concurrent streams.
type Settings = tokio::sync::watch::Receiver<(bool, usize)>;

/// An HTTP/2 connection to the gateway, once its SETTINGS allowed extended CONNECT.
async fn h2_connect(
    addr: SocketAddr,
    config: ClientConfig,
) -> (SendRequest<Empty<Bytes>>, Settings) {
    let (tls, alpn) = tls_connect(addr, config).await;
    assert_eq!(alpn, b"h2", "the gateway chose h2 from h2 and http/1.1");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    // hyper reads the server's SETTINGS in a task of its own and tells no one: the task
    // driving the connection looks every few milliseconds.
    let (tx, mut settings) = tokio::sync::watch::channel((false, 0));
    tokio::spawn(async move {
        let mut conn = Box::pin(conn);
        loop {
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
            }
            tx.send_replace((
                conn.is_extended_connect_protocol_enabled(),
                conn.current_max_send_streams(),
            ));
        }
    });
    tokio::time::timeout(T, settings.wait_for(|s| s.0))
        .await
        .expect("the gateway announces SETTINGS_ENABLE_CONNECT_PROTOCOL")
        .unwrap();
    (send, settings)
}

/// A plain GET over the connection; the status and body.
async fn get(
    send: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = Request::get(format!("https://localhost{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send.ready().await.unwrap();
    let resp = tokio::time::timeout(T, send.send_request(req.body(Empty::new()).unwrap()))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An extended CONNECT for a WebSocket at `path`: the WebSocket and the 200, or the
/// refusal's status and body.
async fn h2_websocket(
    send: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(H2Ws, Response<hyper::body::Incoming>), (StatusCode, String)> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://localhost{path}"))
        .extension(hyper::ext::Protocol::from_static("websocket"));
    if !headers.iter().any(|(k, _)| *k == "sec-websocket-version") {
        req = req.header("sec-websocket-version", "13");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send.ready().await.unwrap();
    let mut resp = tokio::time::timeout(T, send.send_request(req.body(Empty::new()).unwrap()))
        .await
        .expect("answer in time")
        .expect("answer");
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        return Err((status, String::from_utf8_lossy(&body).into_owned()));
    }
    let stream = hyper::upgrade::on(&mut resp)
        .await
        .expect("the stream opens");
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(stream), Role::Client, None).await;
    Ok((ws, resp))
}

fn header<'a, B>(resp: &'a Response<B>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn nostr_and_mosaic_websockets_share_one_h2_connection_with_the_clients_key() {
    let Edge {
        master,
        backend,
        relay: _relay,
        gw,
    } = edge("").await;
    let key = client_key(7);
    let (mut h2, _) = h2_connect(gw.public_addr, x509_client(master.public, &key)).await;

    let (mut mosaic, resp) = h2_websocket(
        &mut h2,
        "/",
        &[
            ("sec-websocket-protocol", "mosaic2024"),
            ("x-test-id", "h2-mosaic"),
            ("x-mosaic-client-key", "mopub0forged"),
        ],
    )
    .await
    .expect("Mosaic over h2 accepted");
    assert_eq!(header(&resp, "sec-websocket-protocol"), Some("mosaic2024"));
    assert!(
        header(&resp, "sec-websocket-accept").is_none(),
        "h2 has no accept key"
    );
    let (mut nostr, resp) = h2_websocket(&mut h2, "/", &[])
        .await
        .expect("nostr over h2 accepted");
    assert!(header(&resp, "sec-websocket-protocol").is_none());

    // Both streams carry traffic at once, each to its own upstream.
    submit(&mut mosaic, 1).await;
    nostr
        .send(Message::Text(r#"["REQ","s1",{"limit":1}]"#.into()))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(recv(&mut nostr).await).unwrap(),
        r#"["EOSE","s1"]"#
    );
    submit(&mut mosaic, 2).await;

    // The backend heard an ordinary HTTP/1.1 upgrade about this client.
    let h = seen_by(&backend, "h2-mosaic");
    let want = mosaic_gateway::keys::user_key_string(&public(&key));
    let keys: Vec<_> = h.get_all("x-mosaic-client-key").iter().collect();
    assert_eq!(keys, [want.as_str()], "the TLS key, never the forged one");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["host"], "localhost", "Host from :authority");
    assert_eq!(h["sec-websocket-version"], "13");

    let text = gw.app.metrics.render();
    assert_eq!(metric(&text, H2_MOSAIC), 1.0, "{text}");
    assert_eq!(metric(&text, H2_NOSTR), 1.0, "{text}");
    assert_eq!(
        metric_sum(&text, "mosaic_gateway_tls_handshakes_total"),
        1.0,
        "one TLS connection carried both"
    );
    let active = "mosaic_gateway_connections_active{protocol=\"mosaic\",route=\"default\"}";
    assert_eq!(metric(&text, active), 1.0, "{text}");

    // Closing one stream leaves the other, and the connection, open.
    mosaic.close(None).await.unwrap();
    assert_eq!(close_code(&mut mosaic).await, None);
    nostr
        .send(Message::Text(r#"["REQ","s2",{"limit":1}]"#.into()))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(recv(&mut nostr).await).unwrap(),
        r#"["EOSE","s2"]"#
    );
    let m = gw.app.metrics.clone();
    eventually("the Mosaic stream is no longer active", || {
        metric(&m.render(), active) == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_mosaic_rule_violation_on_an_h2_stream_is_closed_with_1002_and_the_connection_stays() {
    let Edge {
        master,
        backend,
        relay: _relay,
        gw,
    } = edge("").await;
    let (mut h2, _) = h2_connect(gw.public_addr, anonymous_client(master.public, false)).await;
    let mosaic = [("sec-websocket-protocol", "mosaic2024")];

    let (mut bad, _) = h2_websocket(&mut h2, "/", &mosaic).await.unwrap();
    // A server message (Query Complete) from the client.
    send(&mut bad, wire::query_complete([1, 2])).await;
    assert_eq!(close_code(&mut bad).await, Some(1002));
    drop(bad);
    let m = gw.app.metrics.clone();
    eventually("the violation is counted", || {
        metric_sum(&m.render(), "mosaic_gateway_protocol_violations_total") == 1.0
    })
    .await;
    assert_eq!(
        backend.record_count(),
        0,
        "nothing malformed reached the backend"
    );

    // The same HTTP/2 connection opens the next WebSocket as if nothing happened.
    let (mut good, _) = h2_websocket(&mut h2, "/", &mosaic).await.unwrap();
    submit(&mut good, 3).await;
    let text = m.render();
    assert_eq!(
        metric(&text, "mosaic_gateway_closes_sent_total{code=\"1002\"}"),
        1.0
    );
    assert_eq!(metric(&text, H2_MOSAIC), 2.0);
}

#[tokio::test]
async fn nip11_and_refusals_over_h2_and_http11_unchanged_on_the_same_port() {
    let Edge {
        master,
        backend: _backend,
        relay: _relay,
        gw,
    } = edge("").await;
    let (mut h2, _) = h2_connect(gw.public_addr, anonymous_client(master.public, false)).await;

    // NIP-11 from the relay, over h2 to the gateway and HTTP/1.1 behind it.
    let (status, body) = get(&mut h2, "/", &[("accept", "application/nostr+json")]).await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&body).expect("a NIP-11 document");
    assert!(doc["supported_nips"].is_array(), "{body}");

    // The HTTP/1.1 refusals, as HTTP/2 statuses.
    let (status, body) = h2_websocket(&mut h2, "/", &[("sec-websocket-version", "8")])
        .await
        .expect_err("refused");
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED, "{body}");
    let mut plain_connect = Request::builder()
        .method(Method::CONNECT)
        .uri("localhost:443")
        .body(Empty::new())
        .unwrap();
    plain_connect.headers_mut().clear();
    let resp = h2.send_request(plain_connect).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let refused =
        "mosaic_gateway_handshake_rejections_total{reason=\"bad_ws_version\",route=\"default\"}";
    assert_eq!(metric(&gw.app.metrics.render(), refused), 1.0);

    // HTTP/1.1 on the same port: a client offering only http/1.1 upgrades with 101.
    let mut ws = tls_mosaic(
        gw.public_addr,
        anonymous_client(master.public, false),
        "h1",
        &[],
    )
    .await;
    submit(&mut ws, 4).await;
    let (_, alpn) = tls_connect(gw.public_addr, anonymous_client(master.public, false)).await;
    assert_eq!(alpn, b"h2");
    let text = gw.app.metrics.render();
    assert_eq!(
        metric(&text, H2_MOSAIC),
        0.0,
        "the HTTP/1.1 WebSocket is not counted as h2"
    );
}

#[tokio::test]
async fn each_h2_websocket_is_a_connection_for_the_limits_and_streams_are_capped() {
    let extra = "limits:\n  max_connections_per_ip: 2\nhttp:\n  http2_max_streams: 3\n";
    let Edge {
        master,
        backend: _backend,
        relay: _relay,
        gw,
    } = edge(extra).await;
    let (mut h2, settings) =
        h2_connect(gw.public_addr, anonymous_client(master.public, false)).await;
    assert_eq!(settings.borrow().1, 3, "SETTINGS_MAX_CONCURRENT_STREAMS");

    let (_a, _) = h2_websocket(&mut h2, "/", &[]).await.unwrap();
    let (_b, _) = h2_websocket(&mut h2, "/", &[]).await.unwrap();
    let (status, body) = h2_websocket(&mut h2, "/", &[])
        .await
        .expect_err("a third is over the limit");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

#[tokio::test]
async fn with_http2_off_the_gateway_speaks_http11_only() {
    let Edge {
        master,
        backend: _backend,
        relay: _relay,
        gw,
    } = edge("http:\n  http2: false\n").await;
    let (_, alpn) = tls_connect(gw.public_addr, anonymous_client(master.public, false)).await;
    assert_eq!(alpn, b"http/1.1");
    let mut ws = tls_mosaic(
        gw.public_addr,
        anonymous_client(master.public, false),
        "h1",
        &[],
    )
    .await;
    submit(&mut ws, 5).await;
}

#[tokio::test]
async fn a_drain_closes_h2_websockets_as_on_http11_and_refuses_new_ones() {
    let Edge {
        master,
        backend: _backend,
        relay: _relay,
        gw,
    } = edge("shutdown:\n  drain_timeout: 8s\n").await;
    let (mut h2, _) = h2_connect(gw.public_addr, anonymous_client(master.public, false)).await;

    // An open Mosaic query and a live nostr subscription, on one connection.
    let mosaic = [("sec-websocket-protocol", "mosaic2024")];
    let (mut m, _) = h2_websocket(&mut h2, "/", &mosaic).await.unwrap();
    send(&mut m, wire::query([0, 1], b"")).await;
    assert_eq!(recv(&mut m).await, wire::query_complete([0, 1]));
    let (mut n, _) = h2_websocket(&mut h2, "/", &[]).await.unwrap();
    n.send(Message::Text(r#"["REQ","live",{"kinds":[1]}]"#.into()))
        .await
        .unwrap();
    assert!(String::from_utf8(recv(&mut n).await)
        .unwrap()
        .contains("EOSE"));

    let app = gw.app.clone();
    let drained = tokio::spawn(gw.shutdown());
    // Query Closed 0x30 (shutting down), then 1001, as over HTTP/1.1.
    assert_eq!(recv(&mut m).await, wire::query_closed([0, 1], 0x30));
    assert_eq!(close_code(&mut m).await, Some(1001));
    assert_eq!(close_code(&mut n).await, Some(1001));
    drop((m, n));
    tokio::time::timeout(T, drained)
        .await
        .expect("the drain ends once both streams closed")
        .unwrap();
    let text = app.metrics.render();
    assert_eq!(
        metric(&text, "mosaic_gateway_closes_sent_total{code=\"1001\"}"),
        2.0
    );

    // The connection was told GOAWAY: it is closed (or, were it open, would refuse).
    let closed = h2.ready().await.is_err();
    assert!(
        closed || h2_websocket(&mut h2, "/", &mosaic).await.is_err(),
        "a WebSocket opened after the drain"
    );
}

#[tokio::test]
async fn an_h2_connection_without_streams_is_closed_and_one_with_a_websocket_is_kept() {
    let extra = "limits:\n  handshake_timeout: 1s\n";
    let Edge {
        master,
        backend: _backend,
        relay: _relay,
        gw,
    } = edge(extra).await;
    let client = || anonymous_client(master.public, false);
    let (mut idle, _) = h2_connect(gw.public_addr, client()).await;
    let (mut busy, _) = h2_connect(gw.public_addr, client()).await;
    let (mut ws, _) = h2_websocket(&mut busy, "/", &[("sec-websocket-protocol", "mosaic2024")])
        .await
        .unwrap();

    // The idle one is closed after a quiet period or two (GOAWAY, then the socket).
    let closed = tokio::time::timeout(T, async {
        loop {
            if idle.ready().await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "an h2 connection with no stream stayed open"
    );
    // The one carrying a WebSocket outlived it, and its WebSocket still works.
    submit(&mut ws, 6).await;
    assert!(
        busy.ready().await.is_ok(),
        "the connection with a WebSocket was closed"
    );
}

#[tokio::test]
async fn mosaic_hello_headers_pass_both_ways_on_an_h2_stream() {
    let backend = MosaicBackend::spawn(
        any_port(),
        mosaic_gateway::dev::mosaic_backend::MosaicBackendOptions {
            features: vec!["alpha".into()],
            subprotocols: vec!["mosaic2025".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let master = master_key();
    let gw = gateway(&format!(
        "{}{}  subprotocols: [mosaic2024, mosaic2025]\n",
        master.tls("self-signed", "optional", "1.2"),
        mosaic_section(&[&backend], &[])
    ))
    .await;
    let (mut h2, _) = h2_connect(gw.public_addr, anonymous_client(master.public, false)).await;
    let (_ws, resp) = h2_websocket(
        &mut h2,
        "/",
        &[
            ("sec-websocket-protocol", "mosaic2025"),
            ("x-mosaic-versions", "2025"),
            ("x-mosaic-features", "alpha,beta"),
        ],
    )
    .await
    .expect("mosaic2025 over h2 accepted");
    assert_eq!(header(&resp, "sec-websocket-protocol"), Some("mosaic2025"));
    assert_eq!(header(&resp, "x-mosaic-features-accepted"), Some("alpha"));
    let h = backend.last_request_headers().unwrap();
    assert_eq!(h["x-mosaic-versions"], "2025");
    assert_eq!(h["x-mosaic-features"], "alpha,beta");
}
