//! The public edge under an anonymous attacker's requests: one client's refused upgrade
//! must not take a relay down for everyone, the request's Host, target and path mean one
//! thing to the gateway and to the relay behind it, headers that claim identity or belong to
//! one hop never pass, and connections that never upgrade still count against the limits.
//! Each upstream here is a logging upstream that records what it was sent.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::support::recorder::{Answer, Recorder};

/// The Mosaic side these scenarios do not use (a config needs one).
const UNUSED_MOSAIC: &str = "mosaic:\n  backends:\n    - url: ws://127.0.0.1:1\n";

/// A gateway whose nostr relay is at `relay`.
async fn nostr_gateway(relay: SocketAddr, extra: &str) -> mosaic_gateway::runtime::Running {
    gateway(&format!(
        "{UNUSED_MOSAIC}nostr:\n  upstream: ws://{relay}\n{extra}"
    ))
    .await
}

/// A nostr upgrade request's head for `target` with these extra lines (each ending CRLF).
fn upgrade(target: &str, lines: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\n{lines}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn metrics(gw: &mosaic_gateway::runtime::Running) -> String {
    admin_get(gw.admin_addr, "/metrics").await.1
}

// ---------- who failed decides what is marked ----------

#[tokio::test]
async fn a_relay_that_refuses_one_clients_large_header_stays_up_for_the_next_client() {
    // nginx in front of a relay answers 400 to a header over its 1 KB buffer: that is the
    // relay's answer to this client, not a sign the relay is down.
    let relay = Recorder::start(Answer::RefuseHeadsOver(4096)).await;
    let gw = nostr_gateway(relay.addr(), "").await;
    let big = format!("Host: relay.test\r\nX-Padding: {}\r\n", "a".repeat(8000));
    for _ in 0..5 {
        let answer = raw_http(gw.public_addr, &upgrade("/", &big)).await;
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(
            answer.contains("the upstream refused this upgrade"),
            "{answer}"
        );
    }
    let answer = raw_http(gw.public_addr, &upgrade("/", "Host: relay.test\r\n")).await;
    assert_eq!(status_of(&answer), 101, "the next client: {answer}");
    let m = metrics(&gw).await;
    let up = format!(
        "mosaic_gateway_backend_up{{backend=\"ws://{}/\",pool=\"nostr\",route=\"default\"}}",
        relay.addr()
    );
    assert_eq!(metric(&m, &up), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "mosaic_gateway_handshake_rejections_total{reason=\"upstream_refused\",route=\"default\"}"
        ),
        5.0
    );
}

#[tokio::test]
async fn a_relays_own_ban_and_rate_limit_statuses_reach_the_client_and_the_pool_stays_up() {
    for code in [403, 404, 429] {
        let relay = Recorder::start(Answer::Status(code)).await;
        let gw = nostr_gateway(relay.addr(), "").await;
        for _ in 0..4 {
            let answer = raw_http(gw.public_addr, &upgrade("/", "Host: r.test\r\n")).await;
            assert_eq!(status_of(&answer), code, "{answer}");
        }
        // Never a 503 "no healthy relay": nothing was marked down.
        assert_eq!(relay.seen().len(), 4);
    }
}

#[tokio::test]
async fn a_relay_answering_5xx_is_marked_down_and_the_next_relay_serves() {
    let broken = Recorder::start(Answer::Status(503)).await;
    let good = Recorder::start(Answer::Serve).await;
    let gw = gateway(&format!(
        "{UNUSED_MOSAIC}nostr:\n  upstreams:\n    - url: ws://{}\n    - url: ws://{}\n  balance: round-robin\n  max_tries: 2\n",
        broken.addr(),
        good.addr()
    ))
    .await;
    for _ in 0..3 {
        let answer = raw_http(gw.public_addr, &upgrade("/", "Host: r.test\r\n")).await;
        assert_eq!(status_of(&answer), 101, "{answer}");
    }
    let m = metrics(&gw).await;
    let down = format!(
        "mosaic_gateway_backend_up{{backend=\"ws://{}/\",pool=\"nostr\",route=\"default\"}}",
        broken.addr()
    );
    assert_eq!(metric(&m, &down), 0.0);
    assert!(broken.seen().len() <= 1, "tried again after it failed");
}

// ---------- Host and target (RFC 9112 3.2) ----------

#[tokio::test]
async fn a_request_without_host_or_with_two_is_refused_on_both_paths() {
    let relay = Recorder::start(Answer::Serve).await;
    let gw = nostr_gateway(relay.addr(), "").await;
    for (what, lines) in [
        ("no Host", ""),
        ("two Hosts", "Host: a.test\r\nHost: b.test\r\n"),
        (
            "two Hosts, one line each case",
            "Host: a.test\r\nhost: a.test\r\n",
        ),
    ] {
        let answer = raw_http(gw.public_addr, &upgrade("/", lines)).await;
        assert_eq!(status_of(&answer), 400, "upgrade with {what}: {answer}");
        let plain = raw_http(
            gw.public_addr,
            &format!("GET / HTTP/1.1\r\n{lines}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&plain), 400, "plain request with {what}: {plain}");
    }
    assert!(relay.seen().is_empty(), "{:?}", relay.seen());
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "mosaic_gateway_handshake_rejections_total{reason=\"bad_host\",route=\"\"}"
        ),
        6.0
    );
}

#[tokio::test]
async fn an_absolute_form_target_is_sent_on_in_origin_form_with_its_authority_as_host() {
    let relay = Recorder::start(Answer::Serve).await;
    let gw = nostr_gateway(relay.addr(), "").await;
    let answer = raw_http(
        gw.public_addr,
        &upgrade("http://a.test/x?y=1", "Host: a.test\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 101, "{answer}");
    let seen = relay.only();
    assert_eq!(seen.target, "/x?y=1");
    assert_eq!(seen.values("host"), ["a.test"]);
    // An authority that is not the Host: the router and the relay would read two names.
    let answer = raw_http(
        gw.public_addr,
        &upgrade("http://a.test/", "Host: b.test\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    let plain = raw_http(
        gw.public_addr,
        "GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&plain), 400, "{plain}");
    // `*` is for OPTIONS, authority form for CONNECT: neither on GET.
    for target in ["*", "a.test:80"] {
        let answer = raw_http(gw.public_addr, &upgrade(target, "Host: a.test\r\n")).await;
        assert_eq!(status_of(&answer), 400, "GET {target}: {answer}");
    }
    assert_eq!(relay.seen().len(), 1);
}

// ---------- routing on the normalised path ----------

#[tokio::test]
async fn path_routes_match_the_path_the_relay_will_read() {
    let inbox = Recorder::start(Answer::Serve).await;
    let main = Recorder::start(Answer::Serve).await;
    let gw = gateway(&format!(
        "{UNUSED_MOSAIC}nostr:\n  upstream: ws://{}\nroutes:\n  - name: inbox\n    hosts: [r.test]\n    path_prefix: /inbox\n    nostr:\n      upstream: ws://{}\n",
        main.addr(),
        inbox.addr()
    ))
    .await;
    for path in [
        "/%69nbox",
        "//inbox",
        "/./inbox",
        "/x/../inbox",
        "/%2e/inbox/",
    ] {
        let answer = raw_http(gw.public_addr, &upgrade(path, "Host: r.test\r\n")).await;
        assert_eq!(status_of(&answer), 101, "{path}: {answer}");
    }
    let targets: Vec<String> = inbox.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/inbox", "/inbox", "/inbox", "/inbox", "/inbox/"]);
    // Out of the prefix by dot segments: the default route, with the path it resolves to.
    let answer = raw_http(
        gw.public_addr,
        &upgrade("/inbox/../x?q", "Host: r.test\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 101, "{answer}");
    assert_eq!(main.only().target, "/x?q");
    // An escaped slash would split into other segments at a relay that decodes it.
    let answer = raw_http(
        gw.public_addr,
        &upgrade("/inbox%2F..%2Fx", "Host: r.test\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    let plain = raw_http(
        gw.public_addr,
        "GET /%69nbox HTTP/1.1\r\nHost: r.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&plain), 200, "{plain}");
    assert_eq!(inbox.seen().last().unwrap().target, "/inbox");
}

// ---------- headers that never pass ----------

#[tokio::test]
async fn identity_headers_spelled_with_underscores_never_reach_an_upstream() {
    let relay = Recorder::start(Answer::Serve).await;
    let gw = nostr_gateway(relay.addr(), "").await;
    let forged = "Host: r.test\r\nx-mosaic_client-key: mopub0forged\r\nx_forwarded_for: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Keep_This: no\r\n";
    let answer = raw_http(gw.public_addr, &upgrade("/", forged)).await;
    assert_eq!(status_of(&answer), 101, "{answer}");
    let plain = raw_http(
        gw.public_addr,
        &format!("GET / HTTP/1.1\r\n{forged}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&plain), 200, "{plain}");
    let seen = relay.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert!(
            s.headers.iter().all(|(n, _)| !n.contains('_')),
            "{:?}",
            s.headers
        );
        assert!(s.headers.iter().all(|(_, v)| !v.contains("6.6.6.6")));
        assert_eq!(s.values("x-real-ip"), ["127.0.0.1"]);
    }
    let m = metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "mosaic_gateway_headers_dropped_total{reason=\"underscore\"}"
        ),
        8.0
    );
}

#[tokio::test]
async fn plain_requests_lose_hop_by_hop_headers_both_ways() {
    let relay = Recorder::start(Answer::Serve).await;
    let gw = nostr_gateway(relay.addr(), "").await;
    let request = "GET /page HTTP/1.1\r\nHost: r.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=100\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /evil\r\nAccept: application/nostr+json\r\n\r\n";
    let answer = raw_http(gw.public_addr, request).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = relay.only();
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "x-forwarded-port",
        "x-forwarded-prefix",
    ] {
        assert!(!seen.has(gone), "{gone} passed: {:?}", seen.headers);
    }
    assert_eq!(seen.values("x-forwarded-host"), ["r.test"]);
    assert_eq!(seen.values("accept"), ["application/nostr+json"]);
    // The relay's own connection headers stay between it and the gateway.
    let lower = answer.to_ascii_lowercase();
    assert!(!lower.contains("keep-alive: timeout=5"), "{answer}");
    assert!(lower.contains("x-relay-hop: yes"), "{answer}");
    // End-to-end framing passes: a body and its length reach the relay.
    let post = raw_http(
        gw.public_addr,
        "POST /upload HTTP/1.1\r\nHost: r.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&post), 200, "{post}");
    let seen = relay.seen().pop().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("POST", "/upload")
    );
    assert_eq!(seen.values("content-length"), ["5"]);
}

// ---------- connections that never upgrade count ----------

/// A keep-alive connection that has been served one NIP-11 request and stays open.
async fn held_plain_connection(addr: SocketAddr) -> (TcpStream, u16) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: r.test\r\nAccept: application/nostr+json\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    (s, status_of(&text))
}

#[tokio::test]
async fn held_plain_connections_count_against_the_per_address_limit() {
    let relay = Recorder::start(Answer::Serve).await;
    let gw = nostr_gateway(relay.addr(), "limits:\n  max_connections_per_ip: 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (s, status) = held_plain_connection(gw.public_addr).await;
        assert_eq!(status, 200);
        held.push(s);
    }
    let (_, status) = held_plain_connection(gw.public_addr).await;
    assert_eq!(status, 429, "a fourth held connection from one address");
    let answer = raw_http(gw.public_addr, &upgrade("/", "Host: r.test\r\n")).await;
    assert_eq!(status_of(&answer), 429, "an upgrade beside them: {answer}");
    assert_eq!(gw.app.limits.total(), 3);
    held.pop();
    let limits = gw.app.limits.clone();
    eventually("a place freed", || limits.total() == 2).await;
    let (_again, status) = held_plain_connection(gw.public_addr).await;
    assert_eq!(status, 200);
}

// ---------- a relay under a path prefix ----------

#[tokio::test]
async fn a_route_that_strips_its_prefix_hands_the_relay_root_paths_and_says_what_it_removed() {
    let inbox = Recorder::start(Answer::Serve).await;
    let main = Recorder::start(Answer::Serve).await;
    let gw = gateway(&format!(
        "{UNUSED_MOSAIC}nostr:\n  upstream: ws://{}\nroutes:\n  - name: inbox\n    hosts: [r.test]\n    path_prefix: /inbox\n    strip_prefix: true\n    nostr:\n      upstream: ws://{}\n",
        main.addr(),
        inbox.addr()
    ))
    .await;
    let answer = raw_http(gw.public_addr, &upgrade("/inbox", "Host: r.test\r\n")).await;
    assert_eq!(status_of(&answer), 101, "{answer}");
    let answer = raw_http(
        gw.public_addr,
        &upgrade("/inbox/sub?x=1", "Host: r.test\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), 101, "{answer}");
    let plain = raw_http(
        gw.public_addr,
        "GET /inbox/.well-known/nostr.json HTTP/1.1\r\nHost: r.test\r\nX-Forwarded-Prefix: /evil\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&plain), 200, "{plain}");
    let seen = inbox.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/", "/sub?x=1", "/.well-known/nostr.json"]);
    for s in &seen {
        assert_eq!(
            s.values("x-forwarded-prefix"),
            ["/inbox"],
            "{:?}",
            s.headers
        );
        assert_eq!(s.values("x-forwarded-host"), ["r.test"]);
    }
    // The default route keeps its paths as they are.
    let answer = raw_http(gw.public_addr, &upgrade("/other", "Host: r.test\r\n")).await;
    assert_eq!(status_of(&answer), 101, "{answer}");
    assert_eq!(main.only().target, "/other");
    assert!(!main.only().has("x-forwarded-prefix"));
}
