//! The route table: which `routes:` entry a request belongs to, from its host name and path.
//!
//! Pure and total, like [`crate::route`]: host and path in, route index out (`None` for the
//! default route). The most specific match wins: an exact host over a wildcard (a longer
//! wildcard suffix over a shorter one) over a route without hosts, then a longer path
//! prefix over a shorter one. Host names compare without the port and in any case; a
//! wildcard `*.example.com` covers every name below `example.com`, as nginx and Envoy match.

use std::fmt;
use std::net::IpAddr;

use crate::tls::certs::NamePattern;

/// The `route` label of the top-level (default) route; no entry of `routes:` may take it.
pub const RESERVED_NAME: &str = "default";

/// An entry of `routes[i].hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One name (lowercase) or address.
    Exact(String),
    /// `*.suffix`: any name ending in `.suffix` (the suffix is stored lowercase).
    Wildcard(String),
}

/// Why a `hosts` entry can never match a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHost {
    /// `name:port`.
    #[error("`{0}` cannot match: hosts are compared without the port; write the name alone")]
    Port(String),
    /// `name/path`.
    #[error("`{0}` cannot match: a host has no path (use path_prefix)")]
    Path(String),
    /// Anything else that is not a name, `*.name` or an address.
    #[error("`{0}` cannot match any host: not a host name (like relay.example.com or *.example.com) or an IP address")]
    NotAName(String),
}

impl HostPattern {
    /// Parses `relay.example.com`, `*.example.com`, `127.0.0.1` or `::1` / `[::1]`.
    pub fn parse(s: &str) -> Result<Self, BadHost> {
        let t = s.trim();
        let bare = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        if let Ok(ip) = bare.unwrap_or(t).parse::<IpAddr>() {
            return Ok(HostPattern::Exact(ip.to_string()));
        }
        if t.contains('/') {
            return Err(BadHost::Path(s.to_string()));
        }
        if t.contains(':') {
            return Err(BadHost::Port(s.to_string()));
        }
        let p = NamePattern::parse(t).map_err(|_| BadHost::NotAName(s.to_string()))?;
        let text = p.to_string();
        Ok(match text.strip_prefix("*.") {
            Some(suffix) if p.is_wildcard() => HostPattern::Wildcard(suffix.to_string()),
            _ => HostPattern::Exact(text),
        })
    }

    /// Whether `host` (already without its port) is covered.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(n) => host.eq_ignore_ascii_case(n),
            HostPattern::Wildcard(suffix) => {
                // Bytes, not str slices: a peer's host name never makes this panic.
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                h.len() > s.len() + 1
                    && h[h.len() - s.len() - 1] == b'.'
                    && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    /// How specific a match is: exact names beat every wildcard, longer suffixes beat
    /// shorter ones, and any pattern beats "any host" (0).
    fn rank(&self) -> usize {
        match self {
            HostPattern::Exact(_) => usize::MAX,
            HostPattern::Wildcard(s) => 1 + s.len(),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// A `path_prefix`: `/inbox` takes `/inbox`, `/inbox/…` and `/inbox?…`, not `/inboxes`;
/// `/inbox/` takes only what is below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix(String);

/// Why a `path_prefix` is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` must start with `/` and hold no `?`, `#` or spaces")]
pub struct BadPrefix(pub String);

impl PathPrefix {
    /// Parses a path prefix.
    pub fn parse(s: &str) -> Result<Self, BadPrefix> {
        let ok = s.starts_with('/')
            && !s
                .bytes()
                .any(|b| b == b'?' || b == b'#' || b.is_ascii_whitespace() || b.is_ascii_control());
        if ok {
            Ok(PathPrefix(s.to_string()))
        } else {
            Err(BadPrefix(s.to_string()))
        }
    }

    /// The prefix as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `target` (a path this prefix matches, and its query) without the prefix: `/inbox/x?q`
    /// is `/x?q` and `/inbox` is `/` under `/inbox` or `/inbox/`.
    pub fn strip<'a>(&self, target: &'a str) -> std::borrow::Cow<'a, str> {
        let p = self.0.trim_end_matches('/');
        let rest = target.get(p.len()..).unwrap_or("");
        if rest.starts_with('/') {
            std::borrow::Cow::Borrowed(rest)
        } else {
            std::borrow::Cow::Owned(format!("/{rest}"))
        }
    }

    /// Whether `path` (without its query) is this prefix or below it.
    pub fn matches(&self, path: &str) -> bool {
        let p = &self.0;
        path.starts_with(p.as_str())
            && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
    }
}

/// One (host pattern, path prefix) a route claims.
#[derive(Debug, Clone)]
struct Entry {
    host: Option<HostPattern>,
    prefix: Option<PathPrefix>,
    route: usize,
}

/// Every route's claims, in config order.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

impl RouteTable {
    /// A table over `routes` (their `hosts` and `path_prefix`, in config order); the index
    /// of each is what [`RouteTable::lookup`] returns. Entries that do not parse are left
    /// out (validation reported them).
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a [String], Option<&'a str>)>) -> Self {
        let mut entries = Vec::new();
        for (route, (hosts, prefix)) in routes.into_iter().enumerate() {
            let prefix = prefix.and_then(|p| PathPrefix::parse(p).ok());
            if hosts.is_empty() {
                entries.push(Entry {
                    host: None,
                    prefix: prefix.clone(),
                    route,
                });
            }
            for h in hosts.iter().filter_map(|h| HostPattern::parse(h).ok()) {
                entries.push(Entry {
                    host: Some(h),
                    prefix: prefix.clone(),
                    route,
                });
            }
        }
        RouteTable { entries }
    }

    /// Whether there are no routes (every request takes the default route).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The route for a request to `host` (a `Host` header or SNI name, port allowed) and
    /// `path` (without the query); `None`: the default route.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let host = host.map(bare_host);
        let mut best: Option<((usize, usize), usize)> = None;
        for e in &self.entries {
            let host_rank = match (&e.host, host) {
                (None, _) => 0,
                (Some(p), Some(h)) if p.matches(h) => p.rank(),
                _ => continue,
            };
            let prefix_rank = match &e.prefix {
                None => 0,
                Some(p) if p.matches(path) => p.0.len(),
                Some(_) => continue,
            };
            let rank = (host_rank, prefix_rank);
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, e.route));
            }
        }
        best.map(|(_, r)| r)
    }

    /// Over TLS: whether a request for `host` would go to another route than the SNI name
    /// the connection was opened for (421 Misdirected Request).
    pub fn misdirected(&self, sni: &str, host: Option<&str>, path: &str) -> bool {
        !self.entries.is_empty() && self.lookup(Some(sni), path) != self.lookup(host, path)
    }
}

/// `host` without its port, brackets or trailing dot.
pub(crate) fn bare_host(host: &str) -> &str {
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
    fn a_stripped_prefix_leaves_an_absolute_path() {
        for (prefix, target, want) in [
            ("/inbox", "/inbox", "/"),
            ("/inbox", "/inbox/x?q=1", "/x?q=1"),
            ("/inbox", "/inbox?q", "/?q"),
            ("/inbox/", "/inbox/x", "/x"),
            ("/inbox/", "/inbox/", "/"),
            ("/", "/x", "/x"),
        ] {
            let p = PathPrefix::parse(prefix).unwrap();
            assert_eq!(p.strip(target), want, "{prefix} {target}");
        }
    }

    fn table(routes: &[(&[&str], Option<&str>)]) -> RouteTable {
        let owned: Vec<(Vec<String>, Option<String>)> = routes
            .iter()
            .map(|(h, p)| {
                (
                    h.iter().map(|s| s.to_string()).collect(),
                    p.map(str::to_string),
                )
            })
            .collect();
        RouteTable::new(owned.iter().map(|(h, p)| (h.as_slice(), p.as_deref())))
    }

    #[test]
    fn patterns_parse_and_refuse_what_cannot_match() {
        assert_eq!(
            HostPattern::parse("Relay.Example.COM").unwrap(),
            HostPattern::Exact("relay.example.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.example.com").unwrap(),
            HostPattern::Wildcard("example.com".into())
        );
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Exact("::1".into())
        );
        assert!(matches!(
            HostPattern::parse("relay.example.com:443"),
            Err(BadHost::Port(_))
        ));
        assert!(matches!(
            HostPattern::parse("relay.example.com/x"),
            Err(BadHost::Path(_))
        ));
        for bad in [
            "",
            "*",
            "*.com",
            "a.*.com",
            "exa mple.com",
            "-a.com",
            "a..com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(PathPrefix::parse("inbox").is_err());
        assert!(PathPrefix::parse("/a?b").is_err());
    }

    #[test]
    fn hosts_match_without_port_and_case() {
        let t = table(&[(&["a.example.com"], None), (&["*.example.com"], None)]);
        assert_eq!(t.lookup(Some("A.Example.Com:8443"), "/"), Some(0));
        assert_eq!(t.lookup(Some("a.example.com."), "/"), Some(0));
        assert_eq!(t.lookup(Some("b.example.com"), "/"), Some(1));
        assert_eq!(t.lookup(Some("x.y.example.com"), "/"), Some(1));
        assert_eq!(t.lookup(Some("example.com"), "/"), None);
        assert_eq!(t.lookup(Some("badexample.com"), "/"), None);
        assert_eq!(t.lookup(Some("é.example.com"), "/"), Some(1));
        assert_eq!(t.lookup(Some("aé"), "/é"), None);
        assert_eq!(t.lookup(None, "/"), None);
        let ip = table(&[(&["127.0.0.1", "::1"], None)]);
        assert_eq!(ip.lookup(Some("127.0.0.1:80"), "/"), Some(0));
        assert_eq!(ip.lookup(Some("[::1]:80"), "/"), Some(0));
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = table(&[
            (&["*.example.com"], None),
            (&["*.relay.example.com"], None),
            (&["a.relay.example.com"], None),
            (&["a.relay.example.com"], Some("/inbox")),
            (&[], Some("/paid")),
            (&["a.relay.example.com"], Some("/inbox/vip/")),
        ]);
        assert_eq!(t.lookup(Some("x.example.com"), "/"), Some(0));
        assert_eq!(t.lookup(Some("b.relay.example.com"), "/"), Some(1));
        assert_eq!(t.lookup(Some("a.relay.example.com"), "/"), Some(2));
        assert_eq!(t.lookup(Some("a.relay.example.com"), "/inbox"), Some(3));
        assert_eq!(t.lookup(Some("a.relay.example.com"), "/inbox/x"), Some(3));
        assert_eq!(t.lookup(Some("a.relay.example.com"), "/inboxes"), Some(2));
        assert_eq!(t.lookup(Some("a.relay.example.com"), "/inbox/vip"), Some(3));
        assert_eq!(
            t.lookup(Some("a.relay.example.com"), "/inbox/vip/1"),
            Some(5)
        );
        // A host match beats a route for any host (nginx: server first, then location).
        assert_eq!(t.lookup(Some("a.relay.example.com"), "/paid"), Some(2));
        assert_eq!(t.lookup(Some("other.org"), "/paid/x"), Some(4));
        assert_eq!(t.lookup(None, "/paid"), Some(4));
        assert_eq!(t.lookup(Some("other.org"), "/"), None);
    }

    #[test]
    fn sni_and_host_must_name_one_route() {
        let t = table(&[
            (&["a.example.com", "*.a.example.com"], None),
            (&["b.example.com"], None),
        ]);
        assert!(!t.misdirected("a.example.com", Some("www.a.example.com"), "/"));
        assert!(t.misdirected("a.example.com", Some("b.example.com"), "/"));
        assert!(t.misdirected("a.example.com", Some("unknown.org"), "/"));
        assert!(t.misdirected("unknown.org", Some("a.example.com"), "/"));
        assert!(!t.misdirected("unknown.org", Some("other.org"), "/"));
        assert!(!RouteTable::default().misdirected("x", Some("y"), "/"));
    }
}
