//! Header lines, whichever parser read them: the upgrade fast path's httparse lines (read
//! in place, nothing copied) and hyper's `HeaderMap`, behind one trait, so the rules on
//! header values are written once.

use hyper::header::{HeaderMap, HeaderValue};

/// A request's or response's header lines, whichever parser produced them.
pub trait Fields {
    /// Every line in order: the name (in any case) and the value.
    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])>;

    /// Every value of the header `name` (given in lowercase), in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.lines()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of `name` as text, if it is visible ASCII.
    fn text<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.values(name).next().and_then(visible_ascii)
    }
}

impl Fields for HeaderMap {
    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

impl Fields for [httparse::Header<'_>] {
    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|h| (h.name.as_bytes(), h.value))
    }
}

/// A header value as text when it is visible ASCII (or tabs), the same test as
/// `HeaderValue::to_str`, so both parsers' values read alike.
pub fn visible_ascii(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t') {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}
