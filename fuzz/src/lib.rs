//! The bodies of the fuzz targets, one function per target, shared by the libFuzzer binaries
//! in `fuzz_targets/` and by the stable-toolchain corpus replay in
//! `tests/it/fuzz_regression.rs` (which includes this file with `#[path]`).
//!
//! Each function takes arbitrary bytes, drives the gateway's pure parsers and decisions with
//! them and panics only when an invariant fails; the parsers themselves must never panic.
//! This file must stay free of crate-level attributes so it can be included as a module.

use std::net::{IpAddr, SocketAddr};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};

use mosaic_gateway::config::HostPattern;
use mosaic_gateway::handshake;
use mosaic_gateway::protocol::subprotocol::{self, Choice};
use mosaic_gateway::proxy_protocol::{self, Command, Parsed, ProxyError};
use mosaic_gateway::relay::frame;
use mosaic_gateway::relay::mosaic::{self, Direction, HeadVerdict, QueryEvent, Validation};
use mosaic_gateway::relay::mosaic2025::Check;
use mosaic_gateway::relay::profile::{Closed, Profile};
use mosaic_gateway::relay::tracker::{
    Admit, Gate, Limited, MosaicRules, Tracker, HEAD_BYTES, HEAD_REST,
};
use mosaic_gateway::request_head::{normalise_path, settle, Misread, Target};
use mosaic_gateway::routing::table::RouteTable;

/// The names of every target, as used for `fuzz/corpus/<name>/` and the fuzz binaries.
pub const TARGETS: [&str; 8] = [
    "upgrade_route",
    "request_rules",
    "features",
    "frame_tracker",
    "tracker_2025",
    "mosaic_head",
    "proxy_protocol",
    "config_parse",
];

/// Runs the target called `name` on `data` (for replaying corpora); false for unknown names.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "upgrade_route" => upgrade_route(data),
        "request_rules" => request_rules(data),
        "features" => features(data),
        "frame_tracker" => frame_tracker(data),
        "tracker_2025" => tracker_2025(data),
        "mosaic_head" => mosaic_head(data),
        "proxy_protocol" => proxy_protocol(data),
        "config_parse" => config_parse(data),
        _ => return false,
    }
    true
}

/// A tiny deterministic generator so one input also decides chunking and choices.
struct Rng(u64);

impl Rng {
    fn new(seed: &[u8]) -> Self {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for &b in seed {
            s = (s ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        Rng(s | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Splits `data` at its first `sep`; everything is the head when there is none.
fn split_once<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], &'a [u8]) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&data[..i], &data[i + sep.len()..]),
        None => (data, &[]),
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Builds a header map from `Name: value` lines; lines hyper would refuse are skipped, as
/// hyper's own parser would have refused the request.
fn header_lines(text: &[u8], map: &mut HeaderMap) {
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(trim(&line[..colon])),
            HeaderValue::from_bytes(trim(&line[colon + 1..])),
        ) else {
            continue;
        };
        map.append(name, value);
    }
}

/// Target `upgrade_route`: an upgrade request (request line, headers, then after a blank
/// line the operator's Mosaic tokens and a nostr on/off line) through validation, token
/// extraction, routing and the upstream request head.
pub fn upgrade_route(data: &[u8]) {
    let (head, tail) = split_once(data, b"\r\n\r\n");
    let (request_line, header_text) = split_once(head, b"\r\n");
    let mut parts = request_line.split(|&b| b == b' ');
    let method = Method::from_bytes(parts.next().unwrap_or(b"GET")).unwrap_or(Method::GET);
    let target = parts.next().unwrap_or(b"/");
    let version = match parts.next() {
        Some(b"HTTP/1.0") => Version::HTTP_10,
        Some(b"HTTP/2" | b"HTTP/2.0") => Version::HTTP_2,
        Some(b"HTTP/0.9") => Version::HTTP_09,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder().method(method).version(version);
    if let Ok(uri) = hyper::Uri::try_from(target) {
        builder = builder.uri(uri);
    }
    let Ok(mut req) = builder.body(()) else {
        return;
    };
    header_lines(header_text, req.headers_mut());

    let (token_line, nostr_line) = split_once(tail, b"\n");
    let mosaic_tokens: Vec<String> = if token_line.is_empty() {
        vec!["mosaic2024".into(), "mosaic2025".into()]
    } else {
        String::from_utf8_lossy(token_line)
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let nostr = nostr_line.first() != Some(&b'0');

    let headers = req.headers();
    let _ = handshake::wants_websocket(headers);
    match handshake::validate_upgrade(&req) {
        Ok(key) => {
            assert_eq!(key.len(), 24, "accepted key {key:?}");
            assert!(key.ends_with("=="));
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.version(), Version::HTTP_11);
        }
        Err(r) => {
            assert!(
                r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UPGRADE_REQUIRED,
                "{r:?}"
            );
            assert!(!r.reason.contains('\n') && !r.label.is_empty());
        }
    }

    let offered = handshake::offered_protocols(headers);
    for t in &offered {
        assert!(
            !t.is_empty() && !t.contains(',') && t.trim() == t,
            "token {t:?}"
        );
    }
    match subprotocol::choose(&offered, &mosaic_tokens, nostr) {
        Choice::Mosaic(t) => {
            // The operator's first listed token among those offered.
            let first = mosaic_tokens.iter().find(|m| offered.contains(m));
            assert_eq!(Some(t.as_str()), first.map(String::as_str));
        }
        Choice::Nostr => {
            assert!(nostr && !offered.iter().any(|o| mosaic_tokens.contains(o)));
        }
        Choice::Refuse => {
            assert!(!nostr && !offered.iter().any(|o| mosaic_tokens.contains(o)));
        }
    }

    // What a backend receives: the client can never inject identity or framing headers.
    let who = handshake::ForwardedClient {
        addr: IpAddr::from([203, 0, 113, 7]),
        forwarded_chain: vec![IpAddr::from([198, 51, 100, 1])],
        tls: data.len() & 1 == 0,
        client_key: None,
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let to = handshake::Destination {
        target: path,
        host: handshake::HostLine::Upstream("backend.invalid:80"),
        prefix: None,
    };
    let out = handshake::upstream_request_head(
        &to,
        headers,
        "dGhlIHNhbXBsZSBub25jZQ==",
        &offered,
        data.first() == Some(&b'G'),
        &who,
    );
    assert!(out.ends_with(b"\r\n\r\n"));
    let body = &out[..out.len() - 2];
    let mut lines = body.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or(b"");
    assert!(first.starts_with(b"GET ") && first.ends_with(b" HTTP/1.1\r"));
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for line in lines.filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "bare LF in upstream head: {line:?}");
        let line = &line[..line.len() - 1];
        assert!(!line.contains(&b'\r'), "bare CR in upstream head: {line:?}");
        let (name, _) = split_once(line, b": ");
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        *counts.entry(name).or_default() += 1;
    }
    for gateway_only in [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
    ] {
        assert_eq!(
            counts.get(gateway_only),
            Some(&1),
            "{gateway_only} in {counts:?}"
        );
    }
    for never in ["x-mosaic-client-key", "forwarded", "x-forwarded-host"] {
        assert_eq!(counts.get(never), None, "{never} reached the backend");
    }
    route_by_host(&req, token_line);
}

/// The route table on a peer's `Host` and path (and the token line as a host pattern): total,
/// and a host always names the route its own SNI would.
fn route_by_host(req: &Request<()>, pattern: &[u8]) {
    let owned: Vec<(Vec<String>, Option<String>)> = vec![
        (vec!["relay.example.com".into()], None),
        (vec!["*.example.com".into()], Some("/inbox".into())),
        (vec!["[::1]".into(), "127.0.0.1".into()], Some("/x/".into())),
        (Vec::new(), Some("/paid".into())),
        (
            vec![String::from_utf8_lossy(pattern).into_owned()],
            Some("/".into()),
        ),
    ];
    let table = RouteTable::new(owned.iter().map(|(h, p)| (h.as_slice(), p.as_deref())));
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok());
    let path = req.uri().path();
    if let Some(i) = table.lookup(host, path) {
        assert!(i < owned.len());
    }
    if let Some(h) = host {
        assert!(!table.misdirected(h, Some(h), path));
        let _ = table.misdirected(h, None, path);
    }
    if let Ok(p) = HostPattern::parse(&String::from_utf8_lossy(pattern)) {
        let text = p.to_string();
        assert!(
            !text.contains(':') || text.parse::<IpAddr>().is_ok(),
            "{text}"
        );
        assert_eq!(HostPattern::parse(&text).as_ref(), Ok(&p), "{text}");
    }
}

/// Target `request_rules`: the front's request rules (RFC 9112 Host and target forms, the
/// normalised path) on a request line and `Name: value` lines, as either parser would hand
/// them over, and the route table's choice on the result.
pub fn request_rules(data: &[u8]) {
    let (line, rest) = split_once(data, b"\n");
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let method = words.next().unwrap_or("GET");
    let raw_target = words.next().unwrap_or("/");
    let http11 = words.next() != Some("HTTP/1.0");
    let mut headers = HeaderMap::new();
    header_lines(rest, &mut headers);
    // The path rules alone, on any text.
    if let Ok(p) = normalise_path(raw_target) {
        assert_normalised(&p);
    }
    let Some(target) = Target::parse(raw_target) else {
        return;
    };
    let hosts = headers.get_all(hyper::header::HOST).iter().count();
    match settle(method, http11, &target, &headers) {
        Ok(s) => {
            assert!(hosts <= 1, "{hosts} Host lines accepted");
            assert!(!(http11 && s.host.is_none()), "HTTP/1.1 without a host");
            assert_normalised(&s.path);
            if s.upstream_target != "*" {
                assert!(
                    s.upstream_target.starts_with(&*s.path),
                    "{}",
                    s.upstream_target
                );
                let rest = &s.upstream_target[s.path.len()..];
                assert!(
                    rest.is_empty() || rest.starts_with('?'),
                    "{}",
                    s.upstream_target
                );
            } else {
                assert_eq!(method, "OPTIONS");
            }
            let underscored = headers.keys().filter(|n| n.as_str().contains('_')).count();
            assert!(s.underscored >= underscored);
            let owned: Vec<(Vec<String>, Option<String>)> = vec![
                (vec!["relay.example.com".into()], Some("/inbox".into())),
                (Vec::new(), Some("/paid".into())),
            ];
            let table = RouteTable::new(owned.iter().map(|(h, p)| (h.as_slice(), p.as_deref())));
            // The route is the one the relay's own reading of the path would pick.
            let again = normalise_path(&s.path).map(|p| p.into_owned());
            assert_eq!(
                table.lookup(s.host, &s.path),
                table.lookup(s.host, again.as_deref().unwrap_or("")),
            );
        }
        Err(Misread::TwoHosts) => assert!(hosts > 1),
        Err(Misread::NoHost) => assert!(http11 && hosts == 0),
        Err(Misread::HostMismatch) => assert!(target.authority().is_some() && hosts == 1),
        Err(m) => assert!(!m.reason().is_empty()),
    }
}

/// A normalised path: absolute, no empty, `.` or `..` segment, no escape of `/`, `\\` or
/// NUL, unchanged by normalising it again.
fn assert_normalised(p: &str) {
    assert!(p.starts_with('/'), "{p}");
    assert!(!p.contains("//"), "{p}");
    for seg in p.split('/') {
        assert!(seg != "." && seg != "..", "{p}");
    }
    let upper = p.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%00"] {
        assert!(!upper.contains(bad), "{p}");
    }
    let again = normalise_path(p).map(|c| c.into_owned());
    assert_eq!(again.as_deref(), Ok(p), "normalising {p} again changed it");
}

/// Target `features`: `X-Mosaic-Features` lists (lines starting `c` are client header lines,
/// `b` backend header lines, `g` gateway features) through parsing and negotiation.
pub fn features(data: &[u8]) {
    let mut client = HeaderMap::new();
    let mut backend = HeaderMap::new();
    let mut gateway: Vec<String> = Vec::new();
    let mut sep = b';';
    for line in data.split(|&b| b == b'\n') {
        let Some((&who, rest)) = line.split_first() else {
            continue;
        };
        match who {
            b'c' | b'b' => {
                let Ok(v) = HeaderValue::from_bytes(rest) else {
                    continue;
                };
                let map = if who == b'c' {
                    &mut client
                } else {
                    &mut backend
                };
                // The name's case does not matter to the map; both spellings are exercised.
                let name = if rest.len() & 1 == 0 {
                    "x-mosaic-features"
                } else {
                    "X-Mosaic-Features"
                };
                map.append(HeaderName::from_bytes(name.as_bytes()).expect("static"), v);
            }
            b'g' => gateway.push(String::from_utf8_lossy(rest).into_owned()),
            // A line `s` switches to 2025's comma lists.
            b's' => sep = b',',
            _ => {}
        }
    }
    let c = handshake::feature_list(&client, handshake::X_MOSAIC_FEATURES, sep);
    let b = handshake::feature_list(&backend, handshake::X_MOSAIC_FEATURES, sep);
    assert_eq!(
        c.is_some(),
        client.contains_key(handshake::X_MOSAIC_FEATURES)
    );
    for list in [&c, &b].into_iter().flatten() {
        assert!(list.len() <= handshake::MAX_FEATURES);
        for (i, item) in list.iter().enumerate() {
            assert!(!item.is_empty() && !item.contains(char::from(sep)) && item.trim() == item);
            assert!(!list[..i].contains(item), "duplicate {item:?} in {list:?}");
        }
    }
    let answer = handshake::negotiate_features(c.as_deref(), b.as_deref(), &gateway, sep);
    assert_eq!(answer.is_some(), c.is_some());
    let Some(answer) = answer else { return };
    assert!(HeaderValue::from_str(&answer).is_ok(), "{answer:?}");
    assert_eq!(handshake::header_value(&answer), answer.as_str());
    if answer == "-" {
        return;
    }
    let (c, b) = (c.unwrap_or_default(), b.unwrap_or_default());
    let granted: Vec<&str> = answer.split(char::from(sep)).collect();
    let mut last = None;
    for g in &granted {
        let at = c
            .iter()
            .position(|x| x == g)
            .expect("granted what the client never asked");
        assert!(b.iter().any(|x| x == g) && gateway.iter().any(|x| x == g));
        assert!(last.is_none_or(|l| l < at), "client order lost: {answer:?}");
        last = Some(at);
    }
}

/// One direction's complete run: chunks fed as the pump does, every safe prefix consumed.
#[derive(Debug, PartialEq, Eq)]
struct TrackerRun {
    forwarded: usize,
    violation: Option<mosaic::Violation>,
    messages: u64,
    queries: Vec<QueryEvent>,
    close_seen: bool,
}

/// Feeds `stream` to a tracker in chunks of the given sizes, modelling the pump's
/// `forward` loop: scan, forward and consume `safe`, stop at a violation or (with
/// `closing_after`) go on with the tracker made transparent, discarding bytes until the
/// peer's close frame or another violation. `partial` consumes a random part of each safe
/// prefix instead of all of it (a short write), which the bookkeeping must also survive.
fn run_tracker(
    dir: Direction,
    rules: Option<MosaicRules>,
    stream: &[u8],
    chunks: &mut dyn FnMut() -> usize,
    mut partial: Option<&mut Rng>,
    closing_after: bool,
) -> TrackerRun {
    let mut t = Tracker::new(dir, rules);
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut run = TrackerRun {
        forwarded: 0,
        violation: None,
        messages: 0,
        queries: Vec::new(),
        close_seen: false,
    };
    let mut closing = false;
    'feed: while fed < stream.len() {
        let n = chunks().clamp(1, stream.len() - fed);
        pending.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        // One chunk may need two scans: the one that finds a violation, then the first
        // scan in closing mode over what is still buffered.
        loop {
            let scan = t.scan(&pending, |q| run.queries.push(q));
            assert!(
                scan.safe <= pending.len(),
                "safe {} > buffered {}",
                scan.safe,
                pending.len()
            );
            let _ = (t.at_frame_boundary(), t.at_message_boundary());
            if closing {
                pending.drain(..scan.safe);
                t.consumed(scan.safe);
                if t.close_seen() || scan.violation.is_some() {
                    break 'feed;
                }
                break;
            }
            let take = match partial.as_deref_mut() {
                Some(rng) if scan.violation.is_none() => rng.below(scan.safe + 1),
                _ => scan.safe,
            };
            pending.drain(..take);
            t.consumed(take);
            run.forwarded += take;
            let Some(v) = scan.violation else { break };
            run.violation = Some(v);
            let _ = (
                v.label(),
                v.client_close_code(dir),
                v.upstream_close_code(dir),
            );
            // What the connection did is settled here; closing mode only drains.
            run.messages = t.messages();
            run.close_seen = t.close_seen();
            if !closing_after {
                break 'feed;
            }
            closing = true;
            t.make_transparent();
            if pending.is_empty() {
                break;
            }
        }
    }
    if !closing && run.violation.is_none() {
        // Everything consumed so far: a scan over what is left must still be sane.
        let scan = t.scan(&pending, |q| run.queries.push(q));
        assert!(scan.safe <= pending.len() && scan.violation.is_none());
    }
    if run.violation.is_none() {
        run.messages = t.messages();
        run.close_seen = t.close_seen();
    }
    run
}

/// Target `frame_tracker`: the frame-header parser on raw bytes, and the tracker on a
/// stream split into random chunks, both directions, with and without Mosaic rules.
///
/// Input: `[cfg, seed, stream...]`; `cfg` picks direction, rules, validation, size cap and
/// consumption policy; `seed` drives the chunk sizes.
pub fn frame_tracker(data: &[u8]) {
    // The header parser alone, on the raw bytes and on every prefix of its header.
    match frame::parse_header(data) {
        Ok(Some(h)) => {
            assert!((2..=14).contains(&h.header_len) && h.header_len <= data.len());
            assert_eq!(frame::parse_header(&data[..h.header_len]), Ok(Some(h)));
            for k in 0..h.header_len {
                assert_eq!(frame::parse_header(&data[..k]), Ok(None), "prefix {k}");
            }
            assert!(h.payload_len >> 63 == 0);
            // Re-encoding a header's fields gives a header that parses to the same values.
            if h.payload_len <= 4096 && h.fin && !h.opcode.is_control() {
                let mut out = Vec::new();
                let payload = vec![0u8; h.payload_len as usize];
                frame::encode_frame(&mut out, data[0] & 0x0F, &payload, h.mask);
                let again = frame::parse_header(&out);
                let again = again.ok().flatten().expect("own frame must parse");
                assert_eq!((again.payload_len, again.mask), (h.payload_len, h.mask));
                assert_eq!(out.len(), again.header_len + payload.len());
            }
        }
        Ok(None) => assert!(data.len() < 14),
        Err(_) => {}
    }

    tracker_runs(data, |cfg| match (cfg & 0x40 != 0, cfg & 4 != 0) {
        (false, false) => Profile::Seed(Validation::Strict),
        (false, true) => Profile::Seed(Validation::Direction),
        (true, false) => Profile::V2025(Check::Direction),
        (true, true) => Profile::V2025(Check::Spec08),
    });
}

/// Target `tracker_2025`: the tracker of [`frame_tracker`] on Mosaic 2025 connections
/// (`cfg & 4` picks `direction` or `"0.8"`), and the 2025 head rules on the stream's bytes
/// taken as one message's head.
///
/// Input: `[cfg, seed, stream...]` as for [`frame_tracker`].
pub fn tracker_2025(data: &[u8]) {
    let profile = |cfg: u8| {
        if cfg & 4 == 0 {
            Profile::V2025(Check::Direction)
        } else {
            Profile::V2025(Check::Spec08)
        }
    };
    if let [cfg, _, head @ ..] = data {
        head_invariants(profile(*cfg), *cfg, head);
    }
    tracker_runs(data, profile);
}

/// The tracker runs of [`frame_tracker`] and [`tracker_2025`]; `profile` maps `cfg` to the
/// Mosaic profile of the run.
fn tracker_runs(data: &[u8], profile: impl Fn(u8) -> Profile) {
    let [cfg, seed, stream @ ..] = data else {
        return;
    };
    let dir = if cfg & 1 == 0 {
        Direction::ClientToUpstream
    } else {
        Direction::UpstreamToClient
    };
    let rules = (cfg & 2 != 0).then(|| MosaicRules {
        profile: profile(*cfg),
        max_message_bytes: match (cfg >> 3) & 3 {
            0 => mosaic::DEFAULT_MAX_MESSAGE_BYTES,
            1 => 16,
            2 => 300,
            _ => u64::MAX,
        },
    });
    let closing_after = cfg & 0x20 != 0;

    // The whole stream at once, then the same stream in random chunks: the tracker's
    // decisions must not depend on how the bytes arrived.
    let whole = run_tracker(dir, rules, stream, &mut || usize::MAX, None, closing_after);
    assert!(whole.forwarded <= stream.len());
    let mut rng = Rng::new(&[*seed, *cfg]);
    let max_chunk = [1, 3, 17, 200][usize::from(seed & 3)];
    let mut sizes = Rng::new(&[*seed]);
    let chunked = run_tracker(
        dir,
        rules,
        stream,
        &mut || 1 + sizes.below(max_chunk),
        None,
        closing_after,
    );
    assert_eq!(whole, chunked, "chunking changed the outcome");
    // Consuming less than `safe` (a short write) must never break the bookkeeping.
    let mut sizes = Rng::new(&[seed.wrapping_add(1)]);
    let short = run_tracker(
        dir,
        rules,
        stream,
        &mut || 1 + sizes.below(max_chunk),
        Some(&mut rng),
        false,
    );
    assert_eq!(short.violation.is_some(), whole.violation.is_some());

    // The rate limits' gate: throttling (asking again later) changes nothing that is
    // forwarded; skipping drops whole messages and never breaks the bookkeeping.
    let plain = run_tracker(dir, rules, stream, &mut || usize::MAX, None, false);
    let mut sizes = Rng::new(&[seed.wrapping_add(2)]);
    let mut gate = FuzzGate::new(*seed, false);
    let (forwarded, violation) = run_gated(dir, rules, stream, &mut gate, &mut || {
        1 + sizes.below(max_chunk)
    });
    assert_eq!(
        (forwarded, violation),
        (plain.forwarded, plain.violation),
        "throttling changed what was forwarded"
    );
    let mut sizes = Rng::new(&[seed.wrapping_add(3)]);
    let mut gate = FuzzGate::new(*seed, true);
    let (forwarded, _) = run_gated(dir, rules, stream, &mut gate, &mut || {
        1 + sizes.below(max_chunk)
    });
    assert!(forwarded <= stream.len());
}

/// A gate that throttles every third message start once and, when `skips`, skips every
/// other Query and Submission (asking for the record id first).
struct FuzzGate {
    rest: [u8; HEAD_REST],
    calls: u32,
    seed: u8,
    skips: bool,
}

impl FuzzGate {
    fn new(seed: u8, skips: bool) -> Self {
        FuzzGate {
            rest: [0; HEAD_REST],
            calls: 0,
            seed,
            skips,
        }
    }
}

impl Gate for FuzzGate {
    const HEAD_LEN: usize = HEAD_BYTES;

    fn head_rest(&mut self) -> Option<&mut [u8; HEAD_REST]> {
        Some(&mut self.rest)
    }

    fn message_start(&mut self) -> Admit {
        self.calls += 1;
        if self.calls % 3 == 1 {
            Admit::Wait(std::time::Duration::ZERO)
        } else {
            Admit::Pass
        }
    }

    fn mosaic_head(
        &mut self,
        profile: Profile,
        head: &[u8],
        ended: bool,
        query: Option<QueryEvent>,
    ) -> Admit {
        assert!(!head.is_empty() && head.len() <= HEAD_BYTES);
        if !self.skips {
            return Admit::Pass;
        }
        let submission = profile.submission_head(head[0]);
        if submission.is_some_and(|n| head.len() < n) && !ended {
            return Admit::NeedMore;
        }
        self.calls += 1;
        if (self.calls + u32::from(self.seed)).is_multiple_of(2) {
            return Admit::Pass;
        }
        match query {
            Some(QueryEvent::Opened(id)) => Admit::Skip(profile.query_closed(id, Closed::TooMany)),
            _ if submission.is_some() => Admit::Skip(profile.too_fast(head)),
            _ => Admit::Pass,
        }
    }
}

/// Feeds `stream` in chunks to a tracker consulting `gate`, as the pump's rate-limited pass
/// does; returns the bytes forwarded and the violation that stopped it, if any.
fn run_gated(
    dir: Direction,
    rules: Option<MosaicRules>,
    stream: &[u8],
    gate: &mut FuzzGate,
    chunks: &mut dyn FnMut() -> usize,
) -> (usize, Option<mosaic::Violation>) {
    let mut t = Tracker::new(dir, rules);
    let mut pending: Vec<u8> = Vec::new();
    let (mut fed, mut forwarded) = (0, 0);
    while fed < stream.len() {
        let n = chunks().clamp(1, stream.len() - fed);
        pending.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let scan = t.scan_gated(&mut pending, gate);
            assert!(scan.safe + scan.drop <= pending.len(), "{scan:?}");
            forwarded += scan.safe;
            pending.drain(..scan.safe + scan.drop);
            t.consumed(scan.safe + scan.drop);
            if scan.violation.is_some() {
                return (forwarded, scan.violation);
            }
            match scan.limited {
                Some(Limited::Wait(_)) => continue,
                Some(Limited::Close) => return (forwarded, None),
                None if scan.drop > 0 => continue,
                None => break,
            }
        }
    }
    (forwarded, None)
}

/// Target `mosaic_head`: the Mosaic message validator on a message head, checking that a
/// verdict never changes as more of the same message arrives.
///
/// Input: `[cfg, head...]`; `cfg` picks direction, validation and whether the head is the
/// whole message.
pub fn mosaic_head(data: &[u8]) {
    let Some((&cfg, head)) = data.split_first() else {
        return;
    };
    let dir = if cfg & 1 == 0 {
        Direction::ClientToUpstream
    } else {
        Direction::UpstreamToClient
    };
    let validation = if cfg & 2 == 0 {
        Validation::Strict
    } else {
        Validation::Direction
    };
    let ended = cfg & 4 != 0;
    let verdict = mosaic::judge_head(dir, validation, head, ended);
    match verdict {
        Ok(HeadVerdict::NeedMore(n)) => {
            assert!(
                !ended && n > head.len() && n <= 8,
                "NeedMore({n}) for {head:?}"
            );
        }
        Ok(HeadVerdict::Accept {
            expected_len,
            query,
        }) => {
            accepted(dir, head, (expected_len, query), 4, 1);
            if validation == Validation::Direction {
                assert_eq!((expected_len, query), (None, None));
            }
        }
        Err(mosaic::Violation::TooLarge | mosaic::Violation::TextMessage) => {
            panic!("judge_head reported a frame-level violation")
        }
        Err(_) => {}
    }
    // A verdict on a prefix that did not end the message stands for the longer head.
    for k in 0..head.len() {
        match mosaic::judge_head(dir, validation, &head[..k], false) {
            Ok(HeadVerdict::NeedMore(n)) => assert!(n > k),
            Ok(accept @ HeadVerdict::Accept { .. }) => {
                assert_eq!(
                    mosaic::judge_head(dir, validation, head, false),
                    Ok(accept),
                    "prefix {k}"
                );
            }
            Err(v) => {
                assert_eq!(
                    mosaic::judge_head(dir, validation, head, false),
                    Err(v),
                    "prefix {k}"
                );
            }
        }
    }
    let _ = mosaic::query_closed([head.first().copied().unwrap_or(0), 0], cfg);
}

/// What holds for every accepted head: the direction rule, a fixed length of at least
/// `min_len` (the layout's own header), query ids from `head[id_at..id_at + 2]`.
fn accepted(
    dir: Direction,
    head: &[u8],
    (expected_len, query): (Option<u64>, Option<QueryEvent>),
    min_len: u64,
    id_at: usize,
) {
    let t = head[0];
    assert!(t == 0xF0 || (t >= 0x80) == (dir == Direction::UpstreamToClient));
    if let Some(e) = expected_len {
        assert!(e >= min_len, "a layout shorter than its own header: {e}");
    }
    if let Some(QueryEvent::Opened(id) | QueryEvent::Closed(id)) = query {
        assert_eq!(id, [head[id_at], head[id_at + 1]]);
    }
}

/// A profile's head verdicts: direction first, NeedMore only before 8 bytes, query ids
/// from [4:6] (2025), and a verdict on a prefix stands for the longer head.
fn head_invariants(profile: Profile, cfg: u8, head: &[u8]) {
    let dir = if cfg & 1 == 0 {
        Direction::ClientToUpstream
    } else {
        Direction::UpstreamToClient
    };
    let ended = cfg & 8 != 0;
    match profile.judge(dir, head, ended) {
        Ok(HeadVerdict::NeedMore(n)) => assert!(!ended && n > head.len() && n <= 8),
        Ok(HeadVerdict::Accept {
            expected_len,
            query,
        }) => accepted(dir, head, (expected_len, query), 8, 4),
        Err(mosaic::Violation::TooLarge | mosaic::Violation::TextMessage) => {
            panic!("judge reported a frame-level violation")
        }
        Err(_) => {}
    }
    let full = profile.judge(dir, head, false);
    for k in 0..head.len() {
        match profile.judge(dir, &head[..k], false) {
            Ok(HeadVerdict::NeedMore(n)) => assert!(n > k),
            other => assert_eq!(full, other, "prefix {k}"),
        }
    }
    let msg = profile.query_closed([cfg, 0], Closed::ShuttingDown);
    assert_eq!(
        profile.judge(Direction::UpstreamToClient, msg.as_bytes(), true),
        Ok(HeadVerdict::Accept {
            expected_len: matches!(profile, Profile::V2025(Check::Spec08)).then_some(8),
            query: matches!(profile, Profile::V2025(_)).then_some(QueryEvent::Closed([cfg, 0])),
        })
    );
}

/// Writes a v1 line for a header with addresses (for the round trip check).
fn v1_line(src: SocketAddr, dst: SocketAddr) -> Option<String> {
    let fam = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        _ => return None,
    };
    Some(format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    ))
}

/// Target `proxy_protocol`: the PROXY header parser on every prefix of the input and on
/// the input fed in random chunks, as a listener reads it.
pub fn proxy_protocol(data: &[u8]) {
    let whole = proxy_protocol::parse(data);
    let looks = proxy_protocol::looks_like_proxy(data);
    match whole {
        Ok(Parsed::Incomplete) => {
            assert!(data.len() < proxy_protocol::MAX_HEADER_LEN);
            assert_ne!(looks, Some(false));
        }
        Ok(Parsed::Complete { header, consumed }) => {
            assert_eq!(looks, Some(true));
            assert!(consumed <= data.len());
            let max = if header.version == 1 {
                proxy_protocol::V1_MAX_LEN
            } else {
                proxy_protocol::V2_MAX_LEN
            };
            assert!(consumed <= max && consumed >= 8);
            assert_eq!(header.source.is_some(), header.destination.is_some());
            if header.command == Command::Local {
                assert_eq!((header.version, header.source), (2, None));
            }
            // A header with addresses survives a v1 round trip.
            if let (Some(src), Some(dst)) = (header.source, header.destination) {
                if let Some(line) = v1_line(src, dst) {
                    let again = proxy_protocol::parse(line.as_bytes());
                    let Ok(Parsed::Complete {
                        header: h2,
                        consumed: n2,
                    }) = again
                    else {
                        panic!("own line {line:?} did not parse: {again:?}");
                    };
                    assert_eq!(
                        (h2.source, h2.destination, n2),
                        (Some(src), Some(dst), line.len())
                    );
                }
            }
        }
        Err(ProxyError::NotProxy) => assert_eq!(looks, Some(false)),
        Err(e) => {
            assert_eq!(looks, Some(true));
            assert!(!e.label().is_empty() && !e.to_string().is_empty());
        }
    }
    // Every prefix: Complete only with the same answer as the whole, errors stay errors.
    for k in 0..data.len().min(proxy_protocol::MAX_HEADER_LEN + 2) {
        match proxy_protocol::parse(&data[..k]) {
            Ok(Parsed::Incomplete) => {}
            Ok(done @ Parsed::Complete { consumed, .. }) => {
                assert!(consumed <= k);
                assert_eq!(whole, Ok(done), "prefix {k}");
            }
            Err(e) => assert!(
                whole.is_err(),
                "prefix {k} failed with {e:?}, whole {whole:?}"
            ),
        }
    }
    // Fed in random chunks, stopping at the first answer, as a listener would.
    let mut rng = Rng::new(data.get(..4).unwrap_or(data));
    let mut have = 0;
    let incremental = loop {
        have = (have + 1 + rng.below(24)).min(data.len());
        let r = proxy_protocol::parse(&data[..have]);
        if r != Ok(Parsed::Incomplete) || have == data.len() {
            break r;
        }
    };
    match incremental {
        Ok(Parsed::Incomplete) => assert_eq!(whole, Ok(Parsed::Incomplete)),
        Ok(done) => assert_eq!(whole, Ok(done)),
        Err(_) => assert!(whole.is_err()),
    }
}

/// Target `config_parse`: `config::parse` on arbitrary UTF-8.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match mosaic_gateway::config::parse(text) {
        Ok(cfg) => {
            assert!(cfg.validate().is_ok());
            let _ = (cfg.listen_addr(), cfg.admin_addr(), cfg.nostr_upstream());
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "an error without a line");
            for line in &errs.0 {
                assert!(!line.is_empty());
            }
        }
    }
}
