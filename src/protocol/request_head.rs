//! Reading a connection's first request head off the socket, without any HTTP machinery:
//! the upgrade fast path decides from httparse's lines as they lie in the bytes read, and
//! anything else is handed to hyper together with those bytes.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use std::borrow::Cow;

use crate::protocol::fields::{visible_ascii, Fields};

/// Why a request head could not be read.
pub(crate) enum HeadError {
    /// Longer than `limits.max_request_header_bytes` (or too many header lines).
    TooLarge,
    /// Not HTTP/1.x.
    Malformed,
    /// The client went away.
    Closed,
}

/// Header lines accepted in one request head.
pub(crate) const MAX_HEADERS: usize = 96;

/// Where one piece of a parsed head lies in the bytes read.
type Span = std::ops::Range<usize>;

/// Where a complete head's pieces lie in the bytes read: httparse's answer, kept as
/// positions so it outlives the borrow of the buffer the reads grew. Reading the pieces
/// back is a slice each; parsing the head a second time cost ~1,700 instructions.
pub(crate) struct HeadIndex {
    /// The head's length: bytes after it are the client's first frames, or a body.
    pub(crate) len: usize,
    method: Span,
    target: Span,
    http11: bool,
    /// Each header line's name and value.
    lines: Vec<(Span, Span)>,
}

/// Reads until one request head is complete. Returns every byte read so far and where
/// the head's pieces lie in them.
pub(crate) async fn read_request_head<S: AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
) -> Result<(BytesMut, HeadIndex), HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        buf.reserve(1024);
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(_) => {}
        }
        if let Some(index) = index_head(&buf, max)? {
            return Ok((buf, index));
        }
    }
}

/// Parses what has been read: `None` while the head is incomplete.
fn index_head(buf: &[u8], max: usize) -> Result<Option<HeadIndex>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < max => return Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooLarge)
        }
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    let at = |piece: &[u8]| {
        let start = piece.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + piece.len()
    };
    Ok(Some(HeadIndex {
        len,
        method: at(method.as_bytes()),
        target: at(target.as_bytes()),
        http11: version == 1,
        lines: req
            .headers
            .iter()
            .map(|h| (at(h.name.as_bytes()), at(h.value)))
            .collect(),
    }))
}

/// A request head, borrowed from the bytes it was read from.
pub(crate) struct Head<'a> {
    /// The method, as sent.
    pub(crate) method: &'a str,
    /// HTTP/1.1 (otherwise HTTP/1.0).
    pub(crate) http11: bool,
    /// The request target.
    pub(crate) target: Target<'a>,
    /// The header lines, in order, names as sent.
    pub(crate) headers: &'a [httparse::Header<'a>],
}

/// A hyper request's header lines, in the form the upgrade reads (the hyper doors: a
/// keep-alive connection's later upgrade, an HTTP/2 extended CONNECT).
pub(crate) fn header_lines(h: &hyper::HeaderMap) -> Vec<httparse::Header<'_>> {
    h.iter()
        .map(|(n, v)| httparse::Header {
            name: n.as_str(),
            value: v.as_bytes(),
        })
        .collect()
}

/// The head `index` found in `buf`, its lines put in `lines`. Refuses what hyper's types
/// would refuse: a method token they reject, or a target that is not a URI.
pub(crate) fn parse_head<'a>(
    buf: &'a [u8],
    index: &HeadIndex,
    lines: &'a mut [httparse::Header<'a>; MAX_HEADERS],
) -> Result<Head<'a>, HeadError> {
    // httparse checked every piece is a token or visible text: these do not fail.
    let text = |span: &Span| {
        buf.get(span.clone())
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or(HeadError::Malformed)
    };
    let method = text(&index.method)?;
    if method != "GET" && hyper::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(HeadError::Malformed);
    }
    let target = Target::parse(text(&index.target)?).ok_or(HeadError::Malformed)?;
    for (line, (name, value)) in lines.iter_mut().zip(&index.lines) {
        *line = httparse::Header {
            name: text(name)?,
            value: buf.get(value.clone()).ok_or(HeadError::Malformed)?,
        };
    }
    Ok(Head {
        method,
        http11: index.http11,
        target,
        headers: &lines[..index.lines.len().min(MAX_HEADERS)],
    })
}

/// A request target: the common `/path?query` as sent, anything else as hyper parses it.
pub enum Target<'a> {
    /// An origin-form target of characters that need no checks beyond the scan in
    /// [`plain_origin`].
    Origin(&'a str),
    /// Any other target (absolute form, `*`, unusual characters), parsed by `http`.
    Uri(hyper::Uri),
}

impl<'a> Target<'a> {
    /// `None` when `http` would not take the target as a URI.
    pub fn parse(t: &'a str) -> Option<Target<'a>> {
        if plain_origin(t) {
            Some(Target::Origin(t))
        } else {
            t.parse().ok().map(Target::Uri)
        }
    }

    /// The authority of an absolute-form target.
    pub fn authority(&self) -> Option<&str> {
        match self {
            Target::Origin(_) => None,
            Target::Uri(u) => u.authority().map(|a| a.as_str()),
        }
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        match self {
            Target::Origin(t) => t.split_once('?').map_or(t, |(p, _)| p),
            Target::Uri(u) => u.path(),
        }
    }

    /// The query, without the `?`.
    pub fn query(&self) -> Option<&str> {
        match self {
            Target::Origin(t) => t.split_once('?').map(|(_, q)| q),
            Target::Uri(u) => u.query(),
        }
    }
}

/// Whether `t` is `/` followed by characters `http` accepts unchanged in a path and a
/// query, no fragment, within its length limit: then the target means what it says and
/// parsing it into a `Uri` (a copy and a scan) would only confirm that.
fn plain_origin(t: &str) -> bool {
    /// `http`'s limit on a URI's length.
    const MAX_URI: usize = u16::MAX as usize - 1;
    t.starts_with('/')
        && t.len() <= MAX_URI
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%?".contains(&b))
}

/// Why a request's target or Host is refused (400): RFC 9112 3.2 and 3.2.2, and paths that
/// would route one way here and another way at the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misread {
    /// HTTP/1.1 without `Host`.
    NoHost,
    /// More than one `Host` line.
    TwoHosts,
    /// A `Host` that is not visible ASCII (routing would read it as no name at all).
    HostValue,
    /// An absolute-form target whose authority is not the `Host`.
    HostMismatch,
    /// `*` on a method other than OPTIONS, or an authority-form target.
    TargetForm,
    /// An escape that is not two hex digits, or one that decodes to `/`, `\` or NUL.
    BadPath,
}

impl Misread {
    /// The one-line reason sent with the 400.
    pub fn reason(self) -> &'static str {
        match self {
            Misread::NoHost => "HTTP/1.1 request without a Host header",
            Misread::TwoHosts => "more than one Host header",
            Misread::HostValue => "the Host header is not visible ASCII",
            Misread::HostMismatch => "the request target's authority is not the Host header",
            Misread::TargetForm => "this request target form is not served",
            Misread::BadPath => "the request path has an escape that is not allowed here",
        }
    }
}

/// What a request means, decided once at the front: the host it is for, the path routes
/// are matched on, and the target sent upstream. Routing, limits and the upstream request
/// all read this one result, so no two of them can read the request differently.
#[derive(Debug, PartialEq, Eq)]
pub struct Settled<'a> {
    /// The absolute-form target's authority, else the one `Host` (absent on HTTP/1.0
    /// without one).
    pub host: Option<&'a str>,
    /// The normalised path ([`normalise_path`]); `/` for `OPTIONS *`.
    pub path: Cow<'a, str>,
    /// The target sent upstream: the normalised path and the query as sent (origin form).
    pub upstream_target: Cow<'a, str>,
    /// Header names with `_`: dropped towards every upstream (CGI-style servers read them
    /// as `-`, so `x_forwarded_for` would pass for `x-forwarded-for`).
    pub underscored: usize,
}

/// Applies the front's request rules to a head, whichever parser read it.
pub fn settle<'a>(
    method: &str,
    http11: bool,
    target: &'a Target<'_>,
    headers: &'a (impl Fields + ?Sized),
) -> Result<Settled<'a>, Misread> {
    let mut hosts = headers.values("host");
    let host = match hosts.next() {
        Some(v) => Some(visible_ascii(v).ok_or(Misread::HostValue)?.trim()),
        None => None,
    };
    if hosts.next().is_some() {
        return Err(Misread::TwoHosts);
    }
    let underscored = headers.lines().filter(|(n, _)| n.contains(&b'_')).count();
    let (host, path, query) = match target {
        Target::Uri(u) if u.scheme().is_some() => {
            let authority = target.authority();
            let lower = |h: &str| h.to_ascii_lowercase();
            if host.is_some_and(|h| Some(lower(h)) != authority.map(lower)) {
                return Err(Misread::HostMismatch);
            }
            (authority, target.path(), target.query())
        }
        Target::Uri(u) if u.authority().is_some() => return Err(Misread::TargetForm),
        Target::Uri(u) if u.path() == "*" => {
            if method != "OPTIONS" {
                return Err(Misread::TargetForm);
            }
            let upstream_target = Cow::Borrowed("*");
            return settled(
                host,
                http11,
                Cow::Borrowed("/"),
                upstream_target,
                underscored,
            );
        }
        _ => (host, target.path(), target.query()),
    };
    let path = normalise_path(path)?;
    let upstream_target = match (&path, query) {
        (Cow::Borrowed(p), None) => Cow::Borrowed(*p),
        (p, None) => Cow::Owned(p.to_string()),
        (p, Some(q)) => Cow::Owned(format!("{p}?{q}")),
    };
    settled(host, http11, path, upstream_target, underscored)
}

fn settled<'a>(
    host: Option<&'a str>,
    http11: bool,
    path: Cow<'a, str>,
    upstream_target: Cow<'a, str>,
    underscored: usize,
) -> Result<Settled<'a>, Misread> {
    if http11 && host.is_none() {
        return Err(Misread::NoHost);
    }
    Ok(Settled {
        host,
        path,
        upstream_target,
        underscored,
    })
}

/// The path routes are matched on, as the relay behind will read it: escapes of unreserved
/// characters decoded (`%69` is `i`), other escapes with upper-case hex, `.` and `..`
/// segments removed (RFC 3986 5.2.4), runs of `/` merged. Escapes of `/`, `\` and NUL are
/// refused: a relay that decodes them would see other segments than the route did. A path
/// that needs none of this (the usual case) is returned as it is, without a copy.
pub fn normalise_path(path: &str) -> Result<Cow<'_, str>, Misread> {
    let b = path.as_bytes();
    let clean = b.first() == Some(&b'/')
        && !b.iter().any(|&c| c == b'%' || c == b'\\')
        && !b.windows(2).any(|w| w == b"//" || w == b"/.");
    if clean {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(b)?;
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = decoded.split('/').collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in parts.iter().enumerate() {
        trailing = i == last && (seg.is_empty() || *seg == "." || *seg == "..");
        match *seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Decodes `%XX` escapes of unreserved characters (RFC 3986 2.3) and upper-cases the hex
/// of the others.
fn decode_unreserved(b: &[u8]) -> Result<String, Misread> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Bytes are copied as they are (a path may hold UTF-8); escapes add ASCII only.
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'%' {
            if c == b'\\' {
                return Err(Misread::BadPath);
            }
            out.push(c);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(Misread::BadPath);
        };
        let v = hi << 4 | lo;
        match v {
            b'/' | b'\\' | 0 => return Err(Misread::BadPath),
            _ if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(v),
            _ => out.extend_from_slice(&[b'%', HEX[usize::from(hi)], HEX[usize::from(lo)]]),
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| Misread::BadPath)
}

/// `host` without its port, brackets or trailing dot.
pub fn bare_host(host: &str) -> &str {
    let h = host.trim();
    let h = match h.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(inside, _)| inside),
        None => match h.split_once(':') {
            // One colon: name:port. More: a bare IPv6 address (not valid in Host, but an
            // address all the same).
            Some((name, port)) if !port.contains(':') => name,
            _ => h,
        },
    };
    h.strip_suffix('.').unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_targets_read_as_hyper_reads_them() {
        for t in [
            "/",
            "/a/b?c=d&e",
            "/a?",
            "/a?b?c",
            "/%41:@!$&'()*+,;=-._~",
            "/a#frag",
            "/a b",
            "/a{b}",
            "http://h.test:8080/x?y",
            "*",
            "//x",
        ] {
            let uri: hyper::Uri = match t.parse() {
                Ok(u) => u,
                Err(_) => {
                    assert!(Target::parse(t).is_none(), "{t}");
                    continue;
                }
            };
            let target = Target::parse(t).unwrap();
            assert_eq!(target.path(), uri.path(), "{t}");
            assert_eq!(target.query(), uri.query(), "{t}");
            assert_eq!(target.authority(), uri.authority().map(|a| a.as_str()));
        }
    }

    #[test]
    fn heads_parse_or_are_malformed() {
        let raw = b"GET /x?y HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n\r\nrest";
        assert!(index_head(&raw[..20], 1024).ok().unwrap().is_none());
        let index = index_head(raw, 1024).ok().flatten().unwrap();
        assert_eq!(index.len, raw.len() - 4);
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = parse_head(raw, &index, &mut lines).ok().unwrap();
        assert_eq!(head.method, "GET");
        assert!(head.http11);
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.headers[1].value, b"1");
        assert_eq!(head.target.path(), "/x");
        let bad = b"GET http://[x/ HTTP/1.1\r\n\r\n";
        let index = index_head(bad, 1024).ok().flatten().unwrap();
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(parse_head(bad, &index, &mut lines).is_err());
        assert!(index_head(b"GET / HTTP/1.1\r\nX", 10).is_err());
    }

    fn norm(p: &str) -> Result<String, Misread> {
        normalise_path(p).map(|c| c.into_owned())
    }

    #[test]
    fn paths_are_routed_as_the_relay_behind_reads_them() {
        for (raw, want) in [
            ("/", "/"),
            ("/inbox", "/inbox"),
            ("/inbox/", "/inbox/"),
            ("/%69nbox", "/inbox"),
            ("//inbox", "/inbox"),
            ("/./inbox", "/inbox"),
            ("/x/../inbox", "/inbox"),
            ("/inbox/../x", "/x"),
            ("/inbox/..", "/"),
            ("/../../inbox", "/inbox"),
            ("/a/./b/.", "/a/b/"),
            ("/a%2e%2E/b", "/a../b"),
            ("/%2e%2e/inbox", "/inbox"),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/a%7e", "/a~"),
            ("/.\u{ef}\u{bf}/x", "/.\u{ef}\u{bf}/x"),
            ("//caf\u{e9}/./", "/caf\u{e9}/"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
            // Normalising twice changes nothing.
            assert_eq!(norm(want).as_deref(), Ok(want), "{want}");
        }
        for bad in [
            "/a%2fb", "/a%2F..", "/a%5c", "/a%00", "/a%zz", "/a%4", "/a\\b",
        ] {
            assert_eq!(norm(bad), Err(Misread::BadPath), "{bad}");
        }
        assert!(matches!(
            normalise_path("/plain/path"),
            Ok(Cow::Borrowed(_))
        ));
    }

    fn settle_raw(raw: &str) -> Result<(Option<String>, String, String, usize), Misread> {
        let bytes = raw.as_bytes();
        let index = index_head(bytes, 4096).ok().flatten().unwrap();
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = parse_head(bytes, &index, &mut lines).ok().unwrap();
        settle(head.method, head.http11, &head.target, head.headers).map(|s| {
            (
                s.host.map(str::to_string),
                s.path.into_owned(),
                s.upstream_target.into_owned(),
                s.underscored,
            )
        })
    }

    #[test]
    fn host_and_target_follow_rfc_9112() {
        let ok = |raw: &str| settle_raw(raw).unwrap();
        assert_eq!(
            ok("GET /a/../b?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n"),
            (Some("a.test".into()), "/b".into(), "/b?q=1".into(), 0)
        );
        // Absolute form: the authority is the host, and the target goes on in origin form.
        assert_eq!(
            ok("GET http://A.test/x?y HTTP/1.1\r\nHost: a.test\r\n\r\n"),
            (Some("A.test".into()), "/x".into(), "/x?y".into(), 0)
        );
        assert_eq!(
            ok("GET http://a.test/x HTTP/1.0\r\n\r\n").0.as_deref(),
            Some("a.test")
        );
        assert_eq!(ok("GET / HTTP/1.0\r\n\r\n").0, None);
        assert_eq!(
            ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").2,
            "*".to_string()
        );
        assert_eq!(
            ok("GET / HTTP/1.1\r\nHost: a\r\nx_real_ip: 1\r\nX_Forwarded_For: 2\r\n\r\n").3,
            2
        );
        let bad = |raw: &str| settle_raw(raw).unwrap_err();
        assert_eq!(bad("GET / HTTP/1.1\r\n\r\n"), Misread::NoHost);
        assert_eq!(
            bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Misread::TwoHosts
        );
        assert_eq!(
            bad("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
            Misread::TwoHosts
        );
        assert_eq!(
            bad("GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n"),
            Misread::HostMismatch
        );
        assert_eq!(
            bad("GET / HTTP/1.1\r\nHost: a\u{e9}.test\r\n\r\n"),
            Misread::HostValue
        );
        assert_eq!(
            bad("GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            Misread::TargetForm
        );
        assert_eq!(
            bad("GET a.test:80 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Misread::TargetForm
        );
        assert_eq!(
            bad("GET /a%2f HTTP/1.1\r\nHost: a\r\n\r\n"),
            Misread::BadPath
        );
    }
}
