//! The client's upgrade request: validation, subprotocol tokens, X-Mosaic-Features
//! negotiation and the headers sent upstream.
//!
//! Everything here is a pure function of header values, so the rules that decide what a
//! client is told can be tested without sockets. The values come through [`Fields`]: the
//! upgrade fast path reads them straight from httparse's lines, hyper's path from its
//! `HeaderMap`, and both go through the same rules.

use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode, Version};

pub use crate::protocol::fields::{visible_ascii, Fields};
use crate::protocol::reason::Reason;
pub use crate::protocol::reason::Rejection;

/// `X-Mosaic-Features`.
pub const X_MOSAIC_FEATURES: &str = "x-mosaic-features";
/// `X-Mosaic-Client-Key`: only the gateway may set it.
pub const X_MOSAIC_CLIENT_KEY: &str = "x-mosaic-client-key";

/// Whether a request asks for a WebSocket upgrade at all (otherwise it is plain HTTP).
pub fn wants_websocket(headers: &(impl Fields + ?Sized)) -> bool {
    header_tokens(headers, "upgrade").any(|t| t.eq_ignore_ascii_case("websocket"))
}

fn header_tokens<'a>(
    headers: &'a (impl Fields + ?Sized),
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .values(name)
        .filter_map(visible_ascii)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Checks an upgrade request against RFC 6455 §4.2.1; returns the client's key.
pub fn validate_upgrade<B>(req: &Request<B>) -> Result<String, Rejection> {
    check_upgrade(
        req.method() == Method::GET,
        req.version() == Version::HTTP_11,
        req.headers(),
    )
    .map(str::to_string)
}

/// [`validate_upgrade`] on the parts of a request: whether it is a GET, whether it is
/// HTTP/1.1, and its headers. Returns the key, borrowed from the headers.
pub fn check_upgrade(
    get: bool,
    http11: bool,
    h: &(impl Fields + ?Sized),
) -> Result<&str, Rejection> {
    if !get {
        return Err(Rejection::bad(
            "WebSocket upgrades must use GET",
            Reason::BAD_METHOD,
        ));
    }
    if !http11 {
        return Err(Rejection::bad(
            "WebSocket upgrades need HTTP/1.1",
            Reason::BAD_VERSION,
        ));
    }
    if !header_tokens(h, "connection").any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(Rejection::bad(
            "Connection header must include Upgrade",
            Reason::NO_CONNECTION_UPGRADE,
        ));
    }
    check_version(h)?;
    let mut keys = h.values("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => visible_ascii(k).unwrap_or("").trim(),
        _ => "",
    };
    if !valid_key(key) {
        return Err(Rejection::bad(
            "Sec-WebSocket-Key must be 16 base64-encoded bytes",
            Reason::BAD_KEY,
        ));
    }
    Ok(key)
}

/// Checks an HTTP/2 extended CONNECT (RFC 8441 §5) whose `:protocol` is `websocket`:
/// RFC 6455's rules less the ones HTTP/2 replaces (no key, no `Connection: Upgrade`).
pub fn check_extended_connect(h: &(impl Fields + ?Sized)) -> Result<(), Rejection> {
    check_version(h)
}

fn check_version(h: &(impl Fields + ?Sized)) -> Result<(), Rejection> {
    if h.text("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "Sec-WebSocket-Version must be 13",
            Reason::BAD_WS_VERSION,
        ));
    }
    Ok(())
}

/// A key is the base64 of 16 bytes: 22 base64 characters and `==`.
fn valid_key(k: &str) -> bool {
    k.len() == 24
        && k.ends_with("==")
        && k[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Every offered subprotocol token, across all `Sec-WebSocket-Protocol` lines, in order.
pub fn offered_protocols(headers: &(impl Fields + ?Sized)) -> Vec<String> {
    offered_tokens(headers).map(str::to_string).collect()
}

/// [`offered_protocols`], borrowed from the headers.
pub fn offered_tokens(headers: &(impl Fields + ?Sized)) -> impl Iterator<Item = &str> {
    header_tokens(headers, "sec-websocket-protocol")
}

/// Most features one header list keeps; items past it are ignored. Mosaic features are
/// application names: a real client asks for a handful.
pub const MAX_FEATURES: usize = 64;

/// Most items of one header list looked at, duplicates and empty ones included: past it the
/// rest of the header is not read.
pub const MAX_FEATURE_ITEMS: usize = 1024;

/// A parsed feature list, and how many items were looked at to build it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FeatureList {
    /// Trimmed, non-empty, distinct items in first-seen order; at most [`MAX_FEATURES`].
    pub items: Vec<String>,
    /// Items looked at (at most [`MAX_FEATURE_ITEMS`]).
    pub examined: usize,
}

/// The items of every line of a header whose items `sep` separates (`;` in the seed, `,`
/// in 2025): trimmed, empty items and duplicates dropped, first-seen order kept. `None`
/// when the header is absent.
///
/// Linear in the header's length, whatever it holds: each item is compared with at most
/// [`MAX_FEATURES`] kept ones, and at most [`MAX_FEATURE_ITEMS`] items are looked at.
pub fn feature_list(headers: &(impl Fields + ?Sized), name: &str, sep: u8) -> Option<Vec<String>> {
    let mut lines = headers.values(name).peekable();
    lines.peek()?;
    Some(parse_features(lines, sep).items)
}

/// [`feature_list`] on header values.
pub fn parse_features<'a>(lines: impl Iterator<Item = &'a [u8]>, sep: u8) -> FeatureList {
    let mut out = FeatureList::default();
    // A header value that is not visible ASCII cannot name a feature the gateway knows.
    let items = lines
        .filter_map(visible_ascii)
        .flat_map(|text| text.split(char::from(sep)));
    for item in items {
        if out.examined == MAX_FEATURE_ITEMS || out.items.len() == MAX_FEATURES {
            break;
        }
        out.examined += 1;
        let item = item.trim();
        if !item.is_empty() && !out.items.iter().any(|x| x == item) {
            out.items.push(item.to_string());
        }
    }
    out
}

/// The `X-Mosaic-Features` answer: client's list ∩ backend's list ∩ the gateway's, in the
/// client's order, joined by `sep`, or `-` when nothing is left.
///
/// `None` when the client did not ask (no header is sent back). A backend that does not
/// answer the header grants nothing: features need the backend's support.
pub fn negotiate_features(
    client: Option<&[String]>,
    backend: Option<&[String]>,
    gateway: &[String],
    sep: u8,
) -> Option<String> {
    let client = client?;
    let backend = backend.unwrap_or(&[]);
    let granted: Vec<&str> = client
        .iter()
        .filter(|f| backend.contains(f) && gateway.contains(f))
        .map(String::as_str)
        .collect();
    Some(if granted.is_empty() {
        "-".to_string()
    } else {
        granted.join(&char::from(sep).to_string())
    })
}

/// Which of a client's header lines never reach an upstream, on every path (upgrades and
/// plain requests): hop-by-hop headers (RFC 9110 7.6.1: `Connection`, what it names,
/// `Keep-Alive`, `TE`, `Proxy-*`, ...), every header that claims identity or origin, names
/// with `_` (CGI-style servers read `x_real_ip` as `X-Real-IP`: the class of
/// CVE-2024-45614), and `Host` (the gateway writes the one it routed on).
pub struct UpstreamFilter {
    /// The names the client's `Connection` header lists, in lowercase.
    named: Vec<Vec<u8>>,
    /// A plain request: its body framing (`Content-Length`) is end to end and passes;
    /// on an upgrade there is no body and the WebSocket mechanics are the gateway's.
    plain: bool,
}

impl UpstreamFilter {
    /// The filter for this request's headers.
    pub fn new(headers: &(impl Fields + ?Sized), plain: bool) -> Self {
        let named = header_tokens(headers, "connection")
            .map(|t| t.to_ascii_lowercase().into_bytes())
            .collect();
        UpstreamFilter { named, plain }
    }

    /// Whether the header `name` (in lowercase) stays behind.
    pub fn drops(&self, name: &[u8]) -> bool {
        let mechanics = matches!(
            name,
            b"upgrade"
                | b"sec-websocket-key"
                | b"sec-websocket-version"
                | b"sec-websocket-protocol"
                | b"sec-websocket-extensions"
        );
        matches!(
            name,
            b"host"
                | b"connection"
                | b"keep-alive"
                | b"te"
                | b"trailer"
                | b"transfer-encoding"
                | X_MOSAIC_CLIENT_KEY_BYTES
                | b"x-real-ip"
                | b"x-forwarded-for"
                | b"x-forwarded-proto"
                | b"x-forwarded-host"
                | b"x-forwarded-port"
                | b"x-forwarded-prefix"
                | b"forwarded"
        ) || name.starts_with(b"proxy-")
            || name.contains(&b'_')
            || mechanics
            || (name == b"content-length" && !self.plain)
            || self.named.iter().any(|n| n == name)
    }
}

const X_MOSAIC_CLIENT_KEY_BYTES: &[u8] = X_MOSAIC_CLIENT_KEY.as_bytes();

/// What the gateway asserts about the client upstream (X-Forwarded-For, X-Real-IP,
/// X-Forwarded-Proto, X-Mosaic-Client-Key).
#[derive(Debug, Clone)]
pub struct ForwardedClient {
    /// The real client address (after trusted proxies).
    pub addr: std::net::IpAddr,
    /// The X-Forwarded-For chain believed from trusted proxies, oldest first.
    pub forwarded_chain: Vec<std::net::IpAddr>,
    /// Whether the client reached the gateway over TLS.
    pub tls: bool,
    /// The TLS client key, `mopub0…`, for authenticated clients.
    pub client_key: Option<String>,
}

impl ForwardedClient {
    /// The `X-Forwarded-For` value: the believed chain, then the real client.
    pub fn forwarded_for(&self) -> String {
        let mut out = Vec::with_capacity(16 * (self.forwarded_chain.len() + 1));
        self.write_forwarded_for(&mut out);
        // Only digits, dots, colons, hex letters and ", ".
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Appends the `X-Forwarded-For` value to `out`.
    fn write_forwarded_for(&self, out: &mut Vec<u8>) {
        for a in &self.forwarded_chain {
            write_ip(out, *a);
            out.extend_from_slice(b", ");
        }
        write_ip(out, self.addr);
    }
}

/// Appends an address in its usual text form. IPv4, the common case, is written digit by
/// digit: `Display` went through the formatting machinery and cost more than the rest of
/// the upstream request head.
fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends one `name: value` header line.
fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `Host` an upstream request carries.
#[derive(Debug, Clone, Copy)]
pub enum HostLine<'a> {
    /// The host the client's request named (its absolute-form authority or its one
    /// `Host`): sent as `Host` and as `X-Forwarded-Host`.
    Client(&'a str),
    /// The client named none (HTTP/1.0), or the gateway asks on its own (health checks):
    /// the upstream's own authority.
    Upstream(&'a str),
}

/// Where an upstream request goes: its target (origin form), its `Host`, and the path
/// prefix a route stripped from the target.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The path and query sent.
    pub target: &'a str,
    /// The `Host` line.
    pub host: HostLine<'a>,
    /// Removed by `strip_prefix`: sent as `X-Forwarded-Prefix`.
    pub prefix: Option<&'a str>,
}

/// Serializes the upstream upgrade request head.
///
/// `protocols` is what the upstream is offered; `extensions` is passed only on nostr
/// connections (Mosaic frames must stay inspectable).
pub fn upstream_request_head(
    to: &Destination<'_>,
    client_headers: &(impl Fields + ?Sized),
    key: &str,
    protocols: &[impl AsRef<str>],
    pass_extensions: bool,
    who: &ForwardedClient,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(to.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match to.host {
        HostLine::Client(h) => {
            push_header(&mut out, b"Host", h.as_bytes());
            push_header(&mut out, b"X-Forwarded-Host", h.as_bytes());
        }
        HostLine::Upstream(h) => push_header(&mut out, b"Host", h.as_bytes()),
    }
    if let Some(p) = to.prefix {
        push_header(&mut out, b"X-Forwarded-Prefix", p.as_bytes());
    }
    let filter = UpstreamFilter::new(client_headers, false);
    for (name, value) in client_headers.lines() {
        // Names go upstream in lowercase, whichever parser read them; written first and
        // taken back when the header is one the gateway drops.
        let start = out.len();
        out.extend_from_slice(name);
        out[start..].make_ascii_lowercase();
        if filter.drops(&out[start..]) {
            out.truncate(start);
            continue;
        }
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    push_header(&mut out, b"Connection", b"Upgrade");
    push_header(&mut out, b"Upgrade", b"websocket");
    push_header(&mut out, b"Sec-WebSocket-Version", b"13");
    push_header(&mut out, b"Sec-WebSocket-Key", key.as_bytes());
    if let Some((first, rest)) = protocols.split_first() {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(first.as_ref().as_bytes());
        for p in rest {
            out.extend_from_slice(b", ");
            out.extend_from_slice(p.as_ref().as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if pass_extensions {
        for v in client_headers.values("sec-websocket-extensions") {
            push_header(&mut out, b"Sec-WebSocket-Extensions", v);
        }
    }
    // Written in place: the addresses are the only values the gateway formats itself.
    out.extend_from_slice(b"X-Forwarded-For: ");
    who.write_forwarded_for(&mut out);
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    write_ip(&mut out, who.addr);
    out.extend_from_slice(b"\r\n");
    push_header(
        &mut out,
        b"X-Forwarded-Proto",
        if who.tls { b"https" } else { b"http" },
    );
    if let Some(k) = &who.client_key {
        push_header(&mut out, b"X-Mosaic-Client-Key", k.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Builds a header value from text the gateway produced (always visible ASCII).
pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hyper::header::{HeaderMap, HeaderName};

    /// A header map of these pairs, in order (for the tests of header rules).
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn s(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.100.199",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
        let who = ForwardedClient {
            addr: "203.0.113.7".parse().unwrap(),
            forwarded_chain: vec!["198.51.100.1".parse().unwrap(), "::1".parse().unwrap()],
            tls: false,
            client_key: None,
        };
        assert_eq!(who.forwarded_for(), "198.51.100.1, ::1, 203.0.113.7");
    }

    #[test]
    fn protocols_across_lines() {
        let h = headers(&[
            ("sec-websocket-protocol", "chat,  mosaic2024"),
            ("sec-websocket-protocol", " ,x"),
        ]);
        assert_eq!(offered_protocols(&h), s(&["chat", "mosaic2024", "x"]));
    }

    #[test]
    fn feature_lists_are_capped_and_read_once() {
        // 100,000 distinct items: the list stops at MAX_FEATURES, having looked at no more.
        let many: String = (0..100_000).map(|i| format!("f{i},")).collect();
        let l = parse_features(std::iter::once(many.as_bytes()), b',');
        assert_eq!(l.items.len(), MAX_FEATURES);
        assert_eq!(l.examined, MAX_FEATURES);
        // 100,000 copies of a few items: at most MAX_FEATURE_ITEMS are looked at.
        let dup = "a,b,c,".repeat(100_000);
        let l = parse_features(std::iter::once(dup.as_bytes()), b',');
        assert_eq!(l.items, ["a", "b", "c"]);
        assert_eq!(l.examined, MAX_FEATURE_ITEMS);
        // Item counts, not bytes, bound the work: a 64-item and a 100,000-item header cost
        // the same number of items.
        let few: String = (0..64).map(|i| format!("f{i},")).collect();
        let l64 = parse_features(std::iter::once(few.as_bytes()), b',');
        assert_eq!(l64.examined, 64);
        // 2024's separator is `;`: a comma is part of a name there.
        let seed = parse_features(std::iter::once(&b"a,b;c"[..]), b';');
        assert_eq!(seed.items, ["a,b", "c"]);
    }

    #[test]
    fn feature_edge_cases() {
        let h = headers(&[
            ("x-mosaic-features", " a ; ;b;a"),
            ("X-Mosaic-Features", "c;b"),
        ]);
        let client = feature_list(&h, X_MOSAIC_FEATURES, b';').unwrap();
        assert_eq!(client, s(&["a", "b", "c"]));
        assert_eq!(
            feature_list(&HeaderMap::new(), X_MOSAIC_FEATURES, b';'),
            None
        );
        let empty = feature_list(
            &headers(&[("x-mosaic-features", "")]),
            X_MOSAIC_FEATURES,
            b';',
        );
        assert_eq!(empty, Some(vec![]));
        let gw = s(&["c", "a", "b"]);
        assert_eq!(
            negotiate_features(Some(&client), Some(&s(&["b", "a"])), &gw, b';').as_deref(),
            Some("a;b")
        );
        assert_eq!(
            negotiate_features(Some(&client), None, &gw, b';').as_deref(),
            Some("-")
        );
        assert_eq!(
            negotiate_features(Some(&[]), Some(&gw), &gw, b';').as_deref(),
            Some("-")
        );
        assert_eq!(negotiate_features(None, Some(&gw), &gw, b';'), None);
        assert_eq!(
            negotiate_features(Some(&client), Some(&gw), &s(&["b"]), b';').as_deref(),
            Some("b")
        );
    }

    #[test]
    fn keys() {
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25jZ!=="));
    }

    #[test]
    fn upstream_head_rebuilds_identity() {
        let h = headers(&[
            ("host", "relay.example"),
            ("x-mosaic-client-key", "mopub0forged"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("x-mosaic-features", "a;b"),
        ]);
        let who = ForwardedClient {
            addr: "10.1.2.3".parse().unwrap(),
            forwarded_chain: vec![],
            tls: false,
            client_key: None,
        };
        let to = Destination {
            target: "/",
            host: HostLine::Upstream("x"),
            prefix: None,
        };
        let head = upstream_request_head(
            &to,
            &h,
            "dGhlIHNhbXBsZSBub25jZQ==",
            &s(&["mosaic2024"]),
            false,
            &who,
        );
        let text = String::from_utf8(head).unwrap();
        assert!(!text.contains("forged"));
        assert!(!text.contains("6.6.6.6"));
        assert!(!text.contains("permessage-deflate"));
        assert!(text.contains("X-Forwarded-For: 10.1.2.3\r\n"));
        assert!(text.contains("X-Real-IP: 10.1.2.3\r\n"));
        assert!(text.contains("X-Forwarded-Proto: http\r\n"));
        assert!(text.contains("x-mosaic-features: a;b\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: mosaic2024\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
