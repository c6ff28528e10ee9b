//! The route table: which `routes:` entry a request belongs to, from its host name and path.
//!
//! Pure and total, like [`crate::protocol::subprotocol`]: host and path in, route index out
//! (`None` for the default route); the patterns are `config`'s [`HostPattern`] and
//! [`PathPrefix`]. The most specific match wins: an exact host over a wildcard (a longer
//! wildcard suffix over a shorter one) over a route without hosts, then a longer path
//! prefix over a shorter one. Host names compare without the port and in any case; a
//! wildcard `*.example.com` covers every name below `example.com`, as nginx and Envoy match.

use crate::config::{HostPattern, PathPrefix};

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
        let host = host.map(crate::protocol::request_head::bare_host);
        let mut best: Option<((usize, usize), usize)> = None;
        for e in &self.entries {
            let host_rank = match (&e.host, host) {
                (None, _) => 0,
                (Some(p), Some(h)) if p.matches(h) => p.rank(),
                _ => continue,
            };
            let prefix_rank = match &e.prefix {
                None => 0,
                Some(p) if p.matches(path) => p.as_str().len(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BadHost;

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
