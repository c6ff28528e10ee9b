//! Reading a connection's first request head off the socket, without any HTTP machinery:
//! the upgrade fast path decides from httparse's lines as they lie in the bytes read, and
//! anything else is handed to hyper together with those bytes.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::fields::Fields;

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

impl Head<'_> {
    /// The host the request names: the target's authority, else the `Host` header.
    pub(crate) fn host(&self) -> Option<&str> {
        self.target
            .authority()
            .or_else(|| self.headers.text("host"))
    }
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
pub(crate) enum Target<'a> {
    /// An origin-form target of characters that need no checks beyond the scan in
    /// [`plain_origin`].
    Origin(&'a str),
    /// Any other target (absolute form, `*`, unusual characters), parsed by `http`.
    Uri(hyper::Uri),
}

impl<'a> Target<'a> {
    /// `None` when `http` would not take the target as a URI.
    pub(crate) fn parse(t: &'a str) -> Option<Target<'a>> {
        if plain_origin(t) {
            Some(Target::Origin(t))
        } else {
            t.parse().ok().map(Target::Uri)
        }
    }

    /// The authority of an absolute-form target.
    pub(crate) fn authority(&self) -> Option<&str> {
        match self {
            Target::Origin(_) => None,
            Target::Uri(u) => u.authority().map(|a| a.as_str()),
        }
    }

    /// The path, without the query.
    pub(crate) fn path(&self) -> &str {
        match self {
            Target::Origin(t) => t.split_once('?').map_or(t, |(p, _)| p),
            Target::Uri(u) => u.path(),
        }
    }

    /// The path and query passed on upstream; "/" when the target has none.
    pub(crate) fn path_and_query(&self) -> &str {
        match self {
            Target::Origin(t) => t,
            Target::Uri(u) => u.path_and_query().map_or("/", |p| p.as_str()),
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
            assert_eq!(
                target.path_and_query(),
                uri.path_and_query().map_or("/", |p| p.as_str()),
                "{t}"
            );
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
        assert_eq!(head.host(), Some("a.test"));
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.headers[1].value, b"1");
        assert_eq!(head.target.path(), "/x");
        let bad = b"GET http://[x/ HTTP/1.1\r\n\r\n";
        let index = index_head(bad, 1024).ok().flatten().unwrap();
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(parse_head(bad, &index, &mut lines).is_err());
        assert!(index_head(b"GET / HTTP/1.1\r\nX", 10).is_err());
    }
}
